"""The EWS store's and adapter's pure parts: typed state <-> properties, the folder tree,
change records, error mapping, the settings, and the requests exchangelib builds from them
checked against Exchange's schema (coexist/data/ews)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import requests
from exchangelib import Message
from exchangelib import errors as ews_errors
from exchangelib.folders import Folder as ExFolder
from exchangelib.folders.roots import Root
from exchangelib.properties import ItemId
from exchangelib.services import CreateItem, SyncFolderItems, UpdateItem
from lxml import etree

from coexist.errors import (
    AuthenticationError,
    ConfigError,
    NotFound,
    PermissionDenied,
    TLSError,
    TransientError,
)
from coexist.migrate.stores import ews as store
from coexist.settings import load_project
from coexist.tenants import ews
from coexist.tenants.protocols import MAIL_FOLDER, MessageState

DATA = Path(__file__).resolve().parents[2] / "coexist" / "data" / "ews"
EP = ews.EwsEndpoint("https://mail.example.net/EWS/Exchange.asmx", side="source")
IMP = ews.EwsEndpoint(
    "https://mail.example.net/EWS/Exchange.asmx", access="impersonation", side="target"
)


def _account(access: ews.Access = "delegation") -> Any:
    cfg = ews.build_config(EP, ews.AdminLogin("svc@example.net", "s3cret!"), 1)
    return ews.build_account(cfg, "ann@example.net", access)


# -- state ------------------------------------------------------------------------------------


def test_state_is_set_at_creation_as_not_a_draft_with_its_dates() -> None:
    """A MIME import's properties: PR_MESSAGE_FLAGS read and not unsent, delivery and submit
    times, flag, verb, categories, importance."""
    state = MessageState(
        read=True,
        flag={"flagStatus": "flagged"},
        categories=("Blue", "Red"),
        importance="high",
        received="2024-03-01T10:00:00+00:00",
        sent="2024-03-01T09:59:00Z",
        answered=True,
    )
    props = store.state_properties(state, create=True)
    assert props["coexist_message_flags"] == store.MSGFLAG_READ
    assert props["coexist_flag_status"] == store.FLAG_FLAGGED
    assert props["coexist_last_verb"] == store.VERB_REPLY
    assert props["categories"] == ["Blue", "Red"]
    assert props["importance"] == "High"
    assert props["coexist_delivery_time"].isoformat().startswith("2024-03-01T10:00:00")
    assert props["coexist_submit_time"].isoformat().startswith("2024-03-01T09:59:00")


def test_a_draft_keeps_the_unsent_flag_and_an_update_leaves_creation_only_properties() -> None:
    """MSGFLAG_UNSENT only for a draft; an update never sets PR_MESSAGE_FLAGS or the dates."""
    draft = store.state_properties(MessageState(draft=True), create=True)
    assert draft["coexist_message_flags"] == store.MSGFLAG_UNSENT
    update = store.state_properties(MessageState(read=True, forwarded=True), create=False)
    assert "coexist_message_flags" not in update and "coexist_delivery_time" not in update
    assert update["coexist_last_verb"] == store.VERB_FORWARD and update["is_read"] is True


def test_message_state_reads_back_what_state_properties_set() -> None:
    """The export side reads the same properties into the same MessageState."""
    state = MessageState(
        read=True,
        flag={"flagStatus": "complete"},
        categories=("x",),
        importance="low",
        received="2024-03-01T10:00:00+00:00",
        sent="2024-03-01T09:00:00+00:00",
        forwarded=True,
    )
    item = Message(**store.state_properties(state, create=True))
    back = store.message_state(item)
    assert back.read and not back.draft and back.forwarded and not back.answered
    assert back.flag == {"flagStatus": "complete"}
    assert back.categories == ("x",) and back.importance == "low"
    assert back.received == "2024-03-01T10:00:00+00:00"
    assert back.sent == "2024-03-01T09:00:00+00:00"


# -- folders and changes ------------------------------------------------------------------------


def test_folder_tree_keeps_mail_folders_with_paths_and_well_known_names() -> None:
    """Mail folders under the IPM root, parents first, paths by name; distinguished
    top-level folders named; search folders and calendars left out and counted."""
    listed = [
        {"id": "c", "parent": "b", "name": "Projects", "folder_class": "IPF.Note", "total": 3},
        {"id": "b", "parent": "root", "name": "Posteingang", "folder_class": "IPF.Note"},
        {"id": "d", "parent": "root", "name": "Archive", "folder_class": None, "total": 1},
        {"id": "e", "parent": "root", "name": "Calendar", "folder_class": "IPF.Appointment"},
        {"id": "f", "parent": "root", "name": "Finder", "folder_class": "IPF.Note", "search": True},
    ]
    tree = store.folder_tree("root", listed, {"b": "inbox"})
    assert [(f.id, f.path, f.well_known) for f in tree.folders] == [
        ("b", ("Posteingang",), "inbox"),
        ("d", ("Archive",), None),
        ("c", ("Posteingang", "Projects"), None),
    ]
    assert {f.folder_class for f in tree.folders} == {MAIL_FOLDER}
    assert tree.left_out == 2


def test_sync_changes_become_protocol_changes() -> None:
    """Create (with Message-ID, size, date), delete and read-flag changes."""
    item = Message(
        id="ID1", changekey="CK1", message_id="<a@b>", size=120, subject="Hi", item_class="IPM.Note"
    )
    made = store.change_of("create", item)
    assert made is not None
    assert (made.id, made.change_key, made.identity, made.size, made.subject) == (
        "ID1",
        "CK1",
        "mid:<a@b>",
        120,
        "Hi",
    )
    gone = store.change_of("delete", ItemId("ID2", "CK2"))
    assert gone is not None and gone.removed and gone.id == "ID2"
    read = store.change_of("read_flag_change", (ItemId("ID3", "CK3"), True))
    assert read is not None and read.id == "ID3" and not read.removed


# -- errors -------------------------------------------------------------------------------------


def test_access_denied_under_delegation_names_full_access_and_the_command() -> None:
    """ErrorAccessDenied: PermissionDenied naming the user, FullAccess and the cmdlet."""
    err = ews.map_error(
        ews_errors.ErrorAccessDenied("Access is denied."),
        EP,
        admin="svc@example.net",
        user="ann@example.net",
        what="GetFolder",
    )
    assert isinstance(err, PermissionDenied)
    assert "ann@example.net" in err.message and "FullAccess" in err.message
    assert err.next_step is not None
    assert "Add-MailboxPermission -Identity ann@example.net -User svc@example.net" in (
        err.next_step
    )


def test_impersonation_denied_names_the_role_and_the_command() -> None:
    """ErrorImpersonateUserDenied: PermissionDenied naming ApplicationImpersonation."""
    err = ews.map_error(
        ews_errors.ErrorImpersonateUserDenied("The account does not have permission"),
        IMP,
        admin="svc@example.net",
        user="ann@example.net",
    )
    assert isinstance(err, PermissionDenied)
    assert "ApplicationImpersonation" in err.message and err.code == "ErrorImpersonateUserDenied"
    assert err.next_step is not None and "New-ManagementRoleAssignment" in err.next_step


def test_server_busy_is_transient_with_its_back_off() -> None:
    """ErrorServerBusy: a TransientError whose retry_after is BackOffMilliseconds in s."""
    err = ews.map_error(
        ews_errors.ErrorServerBusy("busy", back_off=2.5), EP, admin="svc", user="ann@x"
    )
    assert isinstance(err, TransientError) and err.retry_after == 2.5


def test_other_errors_map_to_the_tree() -> None:
    """401, a missing item, a stale sync state, a TLS failure."""
    auth = ews.map_error(ews_errors.UnauthorizedError("401"), EP, admin="svc")
    assert isinstance(auth, AuthenticationError) and auth.status == 401
    missing = ews.map_error(ews_errors.ErrorItemNotFound("gone"), EP, admin="svc", user="a@x")
    assert isinstance(missing, NotFound)
    stale = ews.map_error(ews_errors.ErrorInvalidSyncStateData("bad"), EP, admin="svc")
    assert ews.sync_state_lost(stale)
    with pytest.raises(ews_errors.TransportError) as got:
        _tls_failure()
    tls = ews.map_error(got.value, EP, admin="svc")
    assert isinstance(tls, TLSError)


def _tls_failure() -> None:
    """What exchangelib raises on an untrusted certificate (util.post_ratelimited: requests'
    SSLError re-raised as TransportError, the original as its context)."""
    try:
        try:
            raise ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed")
        except ssl.SSLError as exc:
            raise requests.exceptions.SSLError(exc) from exc
    except requests.exceptions.SSLError as exc:
        raise ews_errors.TransportError(str(exc)) from exc


def test_the_admin_password_is_never_in_a_repr() -> None:
    """AdminLogin and the server show the login, never the password."""
    admin = ews.AdminLogin("svc@example.net", "s3cret!")
    assert "s3cret!" not in repr(admin)
    assert "s3cret!" not in repr(ews.build_config(EP, admin, 1))


def test_a_ca_bundle_is_used_for_its_host_only() -> None:
    """`trust` installs the documented adapter class and maps the host to its bundle."""
    from exchangelib.protocol import BaseProtocol

    ews.trust("https://ews.test:8443/EWS/Exchange.asmx", "/tmp/ca.pem")
    assert BaseProtocol.HTTP_ADAPTER_CLS is ews._CaBundleAdapter
    assert ews._CA_BUNDLES["ews.test:8443"] == "/tmp/ca.pem"
    ews.trust("https://ews.test:8443/EWS/Exchange.asmx", None)
    assert "ews.test:8443" not in ews._CA_BUNDLES


# -- requests against the schema --------------------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> Any:
    import xmlschema

    return xmlschema.XMLSchema(str(DATA / "messages.xsd"))


def _valid(schema: Any, payload: Any) -> None:
    schema.validate(etree.tostring(payload))


def test_create_item_with_mime_and_state_is_schema_valid(schema: Any) -> None:
    """The CreateItem a MIME import sends (MimeContent + extended properties) validates."""
    account = _account()
    folder = ExFolder(root=Root(account=account, id="ROOT", changekey="ck"), id="FID")
    props = store.state_properties(
        MessageState(read=True, received="2024-01-01T00:00:00Z", sent="2024-01-01T00:00:00Z",
                     flag={"flagStatus": "flagged"}, categories=("a",), answered=True),
        create=True,
    )  # fmt: skip
    item = Message(account=account, folder=folder, mime_content=b"Subject: x\r\n\r\nhi", **props)
    payload = CreateItem(account=account).get_payload(
        items=[item],
        folder=folder,
        message_disposition="SaveOnly",
        send_meeting_invitations="SendToNone",
    )
    _valid(schema, payload)


def test_sync_folder_items_with_the_change_fields_is_schema_valid(schema: Any) -> None:
    """SyncFolderItems with the store's fields and 512 changes a call validates."""
    account = _account("impersonation")
    folder = ExFolder(root=Root(account=account, id="ROOT", changekey="ck"), id="FID")
    fields = set(folder.normalize_fields(fields=store.CHANGE_FIELDS))
    payload = SyncFolderItems(account=account).get_payload(
        folder=folder,
        shape="IdOnly",
        additional_fields=fields,
        sync_state="STATE",
        ignore=None,
        max_changes_returned=store.SYNC_PAGE,
        sync_scope=None,
    )
    _valid(schema, payload)


def test_update_item_of_state_is_schema_valid(schema: Any) -> None:
    """The UpdateItem an update of a MIME copy sends validates."""
    account = _account()
    props = store.state_properties(MessageState(read=True, categories=("b",)), create=False)
    item = Message(account=account, id="IID", changekey="CK", **props)
    payload = UpdateItem(account=account).get_payload(
        items=[(item, list(props))],
        conflict_resolution="AutoResolve",
        message_disposition="SaveOnly",
        send_meeting_invitations_or_cancellations="SendToNone",
        suppress_read_receipts=True,
    )
    _valid(schema, payload)


# -- settings ---------------------------------------------------------------------------------


def _project(tmp_path: Path, body: str) -> Path:
    (tmp_path / "project.toml").write_text(body)
    return tmp_path


EXCHANGE_PAIR = """
[source]
kind = "exchange"
[source.ews]
url = "https://mail.hoster-a.example/EWS/Exchange.asmx"
admin = "HOSTA\\\\svc-migrate"
version = "Exchange2016"
[target]
kind = "workmail"
[target.ews]
region = "eu-west-1"
auth = "basic"
admin = "migrator@corp.example"
"""


def test_an_exchange_to_workmail_project_loads_with_the_ews_mover(tmp_path: Path) -> None:
    """[S.ews] tables load; WorkMail's URL comes from its region; ews-sync is the default."""
    project = load_project(_project(tmp_path, EXCHANGE_PAIR), env={})
    assert project.source.kind == "exchange" and project.target.kind == "workmail"
    assert project.target.ews.service_url() == (
        "https://ews.mail.eu-west-1.awsapps.com/EWS/Exchange.asmx"
    )
    assert project.source.ews.mailboxes == 20
    assert project.migration.mover == "ews-sync"


def test_an_exchange_side_without_url_or_with_an_imap_table_is_refused(tmp_path: Path) -> None:
    """A missing url names [source.ews] url; an [imap] table on an exchange side is refused."""
    body = '[source]\nkind = "exchange"\n[source.ews]\nadmin = "svc"\n' + EXCHANGE_PAIR.split(
        "[target]", 1
    )[1].join(["[target]", ""])
    with pytest.raises(ConfigError, match="url"):
        load_project(_project(tmp_path, body), env={})
    body = EXCHANGE_PAIR + '[source.imap]\nhost = "imap.example"\n'
    with pytest.raises(ConfigError, match=r"source\.imap"):
        load_project(_project(tmp_path, body), env={})


def test_item_reads_and_writes_of_the_store_are_schema_valid(schema: Any) -> None:
    """GetItem (inspect, state, MIME), ExportItems, UploadItems (create and update),
    MoveItem and DeleteItem as the store asks exchangelib for them validate."""
    from exchangelib.fields import FieldPath
    from exchangelib.properties import FolderId
    from exchangelib.services import DeleteItem, ExportItems, GetItem, MoveItem, UploadItems

    account = _account()
    ids = [ItemId("IID", "CK")]
    for names in (store.INSPECT_FIELDS, ("mime_content", *store.STATE_FIELDS)):
        fields = {FieldPath(field=Message.get_field_by_fieldname(n)) for n in names}
        _valid(
            schema,
            GetItem(account=account).get_payload(
                items=ids, additional_fields=fields, shape="IdOnly"
            ),
        )
    _valid(schema, ExportItems(account=account).get_payload(items=ids))
    for entry in ((None, False, "QUJD"), (ItemId("IID", "CK"), False, "QUJD")):
        _valid(schema, UploadItems(account=account).get_payload(items=[(FolderId("F"), entry)]))
    _valid(schema, MoveItem(account=account).get_payload(items=ids, to_folder=FolderId("F")))
    _valid(
        schema,
        DeleteItem(account=account).get_payload(
            items=ids,
            delete_type="SoftDelete",
            send_meeting_cancellations="SendToNone",
            affected_task_occurrences="AllOccurrences",
            suppress_read_receipts=True,
        ),
    )


# -- retries and bounds -------------------------------------------------------------------------


def _server() -> ews.EwsServer:
    from coexist.retry import RetryPolicy

    retry = RetryPolicy(max_attempts=3, max_wait_s=5, base_s=0.001, cap_s=0.001)
    return ews.EwsServer(EP, ews.AdminLogin("svc", "pw"), ews.EwsLimits(2, 1), retry=retry)


def _flaky(first: BaseException) -> tuple[list[int], Any]:
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise first
        return "done"

    return calls, fn


def _dropped() -> BaseException:
    """What exchangelib raises for a connection lost mid-request (util.post_ratelimited)."""
    try:
        try:
            raise requests.exceptions.ConnectionError(ConnectionResetError(104, "reset"))
        except requests.exceptions.ConnectionError as exc:
            raise ews_errors.ErrorTimeoutExpired(f"Reraised from {exc!r}") from exc
    except ews_errors.ErrorTimeoutExpired as outer:
        return outer


def test_server_busy_is_retried_for_reads_and_writes_with_its_back_off() -> None:
    """ErrorServerBusy was refused before it ran: retried (a write too), after its back-off."""
    import asyncio

    for write in (False, True):
        calls, fn = _flaky(ews_errors.ErrorServerBusy("busy", back_off=0.01))
        srv = _server()
        got = asyncio.run(srv.call(fn, user="a@x", what="CreateItem", write=write))
        assert got == "done" and len(calls) == 2


def test_a_write_whose_connection_dropped_is_not_sent_again() -> None:
    """A connection lost mid-request may have made the item: a read is retried, a write is
    not (the next pass adopts such a copy by its identity)."""
    import asyncio

    calls, fn = _flaky(_dropped())
    assert asyncio.run(_server().call(fn, user="a@x", what="GetItem")) == "done"
    assert len(calls) == 2
    calls, fn = _flaky(_dropped())
    with pytest.raises(TransientError) as err:
        asyncio.run(_server().call(fn, user="a@x", what="CreateItem", write=True))
    assert len(calls) == 1 and not err.value.retryable


def test_delegation_keeps_the_admin_below_ews_max_concurrency() -> None:
    """Delegation: 20 mailboxes, 20 requests at once (EwsMaxConcurrency 27); impersonation:
    50 mailboxes, each its own budget; a project's mailboxes_at_once wins."""
    assert ews.EwsLimits.for_access("delegation").in_flight == 20
    assert ews.EwsLimits.for_access("delegation").mailboxes == 20
    assert ews.EwsLimits.for_access("impersonation").mailboxes == 50
    assert ews.EwsLimits.for_access("impersonation", 8).mailboxes == 8


def test_a_refused_admin_login_names_a_command_that_exists() -> None:
    """The 401 message's next step is `coexist credentials set --master --side S`, an option
    the CLI has (it said `--admin`, which does not exist)."""
    from coexist.cli import credentials_set_cmd

    auth = ews.map_error(ews_errors.UnauthorizedError("401"), EP, admin="svc")
    assert "credentials set --master --side" in str(auth.next_step)
    assert "master" in {p.name for p in credentials_set_cmd.params}
