"""`coexist.csdl`: the v1.0 model as the CSDL publishes it, and the JSON check built on it."""

from __future__ import annotations

import pytest

from coexist import csdl
from coexist.csdl import TypeRef, model, violations


def test_only_the_microsoft_graph_schema_is_read() -> None:
    """`user` is microsoft.graph's, not microsoft.graph.security's type of the same name."""
    user = model().structured("user")
    assert user.name == "microsoft.graph.user"
    assert user.base == "microsoft.graph.directoryObject"
    assert "userPrincipalName" in model().properties("user")
    assert "microsoft.graph.security.user" not in model().types


def test_base_type_chains_are_resolved() -> None:
    """A message has its own, outlookItem's and entity's properties, and outlookItem is abstract."""
    props = model().properties("message")
    assert {"id", "changeKey", "createdDateTime", "subject"} <= set(props)
    assert [t.name.rsplit(".", 1)[1] for t in model().chain("message")] == [
        "message",
        "outlookItem",
        "entity",
    ]
    assert model().structured("outlookItem").abstract
    assert props["isRead"].type == TypeRef("Edm.Boolean")


def test_navigation_properties_carry_their_target_and_restrictions() -> None:
    """Navigation targets, collection-ness and the CSDL's read restrictions are kept."""
    nav = model().navigation("event")
    assert nav["instances"].type == TypeRef("microsoft.graph.event", collection=True)
    assert nav["instances"].required_query_options == ("startDateTime", "endDateTime")
    assert not nav["instances"].indexable_by_key
    assert not nav["singleValueExtendedProperties"].navigable
    assert nav["calendar"].type == TypeRef("microsoft.graph.calendar")


def test_enums_and_flags() -> None:
    """Enum members are kept; IsFlags enums accept comma-separated members."""
    assert model().enums["microsoft.graph.bodyType"].members == ("text", "html")
    assert model().enums["microsoft.graph.authenticationMethodModes"].is_flags
    assert csdl.model().violations("password,sms", "authenticationMethodModes") == []
    assert csdl.model().violations("password,letter", "authenticationMethodModes") != []
    assert violations({"contentType": "markdown"}, "itemBody") == [
        "$.contentType: 'markdown' is not a member of microsoft.graph.bodyType ['text', 'html']"
    ]


def test_bound_operations_are_found_by_name_and_binding() -> None:
    """Overloads resolve by binding type (base types included), with their return types."""
    m = model()
    delta = m.bound("delta", TypeRef.parse("Collection(graph.message)"))
    assert delta is not None and delta.kind == "function"
    assert delta.returns == TypeRef("microsoft.graph.message", collection=True)
    export = m.bound("exportItems", TypeRef.parse("graph.mailbox"))
    assert export is not None and export.returns == TypeRef.parse(
        "Collection(graph.exportItemResponse)"
    )
    assert m.bound("assignLicense", TypeRef.parse("graph.user")) is not None
    assert m.bound("exportItems", TypeRef.parse("graph.user")) is None
    assert m.container["users"] == TypeRef("microsoft.graph.user", collection=True)
    assert m.container["admin"] == TypeRef("microsoft.graph.admin")


def test_a_property_the_type_lacks_is_a_violation() -> None:
    """`mailFolder.sizeInBytes` is not v1.0 (FACTS.md); neither is an unknown annotation."""
    folder = {"id": "f", "displayName": "Inbox", "sizeInBytes": 10, "@sandbox.note": 1}
    assert violations(folder, "mailFolder") == [
        "$.sizeInBytes: not a property of microsoft.graph.mailFolder in Graph v1.0",
        "$.@sandbox.note: an annotation that is neither @odata.* nor @removed",
    ]


def test_odata_annotations_and_removed_are_allowed() -> None:
    """Control information, property annotations and delta's @removed pass."""
    obj = {
        "@odata.context": "x",
        "@odata.etag": 'W/"1"',
        "@removed": {"reason": "deleted"},
        "id": "m",
        "attachments@odata.navigationLink": "y",
    }
    assert violations(obj, "message") == []
    assert violations({"nothing@odata.type": "#x"}, "message") != []


def test_concrete_type_must_derive_from_the_declared_one() -> None:
    """`@odata.type` picks the concrete type's properties, and must derive from the declared."""
    attachment = {
        "@odata.type": "#microsoft.graph.fileAttachment",
        "id": "a",
        "isInline": False,
        "size": 3,
        "contentBytes": "aGk=",
    }
    assert violations(attachment, "attachment") == []
    assert violations({**attachment, "@odata.type": "#microsoft.graph.user"}, "attachment") == [
        "$: @odata.type '#microsoft.graph.user' does not derive from microsoft.graph.attachment"
    ]
    member = {"@odata.type": "#microsoft.graph.user", "id": "u", "userPrincipalName": "a@b"}
    assert violations(member, "directoryObject") == []


def test_primitive_shapes() -> None:
    """DateTimeOffset needs an offset or Z; Date, Int32, Guid, Binary and Boolean are checked."""
    ok = {
        "receivedDateTime": "2024-05-01T10:00:00Z",
        "sentDateTime": "2024-05-01T10:00:00.1234567+02:00",
        "isRead": True,
        "conversationIndex": "AQHa",
    }
    assert violations(ok, "message") == []
    bad = {
        "receivedDateTime": "2024-05-01T10:00:00",
        "sentDateTime": "2024-13-01T10:00:00Z",
        "isRead": "true",
        "conversationIndex": "not base64!",
    }
    assert len(violations(bad, "message")) == 4
    assert violations({"startDate": "2024-02-30"}, "recurrenceRange") != []
    assert violations({"numberOfOccurrences": 2**31}, "recurrenceRange") != []
    assert violations({"numberOfOccurrences": True}, "recurrenceRange") != []
    assert violations({"skuId": "nope"}, "assignedLicense") != []
    assert violations({"accuracy": 1, "latitude": 1.5}, "outlookGeoCoordinates") == []


def test_complex_collections_and_navigation_contents_are_checked_recursively() -> None:
    """Nested complex values, collections and expanded navigation properties are checked."""
    task = {
        "id": "t",
        "body": {"content": "x", "contentType": "text"},
        "dueDateTime": {"dateTime": "2024-01-01T00:00:00", "timeZone": "UTC", "zone": 1},
        "categories": "not a list",
        "checklistItems": [{"id": "c", "displayName": "a", "isChecked": "no"}],
    }
    assert violations(task, "todoTask") == [
        "$.dueDateTime.zone: not a property of microsoft.graph.dateTimeTimeZone in Graph v1.0",
        "$.categories: expected a JSON array (Collection(Edm.String)), got str",
        "$.checklistItems[0].isChecked: expected Edm.Boolean, got 'no'",
    ]
    assert violations({"id": "e", "instances": {"id": "x"}}, "event") != []


def test_nullable_false_is_enforced() -> None:
    """A null where the CSDL says Nullable=false is a violation; elsewhere null is fine."""
    assert violations({"importance": None}, "todoTask") == [
        "$.importance: null, but the CSDL declares it Nullable=false (microsoft.graph.importance)"
    ]
    assert violations({"title": None}, "todoTask") == []


def test_collection_responses() -> None:
    """A collection type checks every element."""
    assert violations([{"id": "a"}, {"id": 1}], "Collection(graph.contact)") == [
        "$[1].id: expected Edm.String (a string), got 1"
    ]


def test_url_paths_resolve_to_their_csdl_types() -> None:
    """Paths resolve through entity sets, keys, navigation properties, casts and operations."""
    r = csdl.resolve_path
    assert r("users/x/mailFolders/inbox/messages") == TypeRef.parse("Collection(graph.message)")
    assert r("/v1.0/users/x/mailFolders/i/messages/delta()") == TypeRef.parse(
        "Collection(graph.message)"
    )
    assert r("groups/g/members/u/microsoft.graph.user") == TypeRef("microsoft.graph.user")
    assert r("admin/exchange/mailboxes/m/createImportSession") == TypeRef(
        "microsoft.graph.mailboxItemImportSession"
    )
    assert r("users/x/sendMail") is None
    for bad in ("nothing", "users/x/sizeInBytes", "users/x/messages/m/$value"):
        with pytest.raises(ValueError):
            r(bad)
