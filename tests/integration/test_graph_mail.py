"""Graph mail over HTTPS: sendMail delivery through the routing model, messages and mailFolders reads."""

from __future__ import annotations

import asyncio
import base64
import copy
from typing import Any

import httpx
import pytest
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.models.body_type import BodyType
from msgraph.generated.models.email_address import EmailAddress
from msgraph.generated.models.item_body import ItemBody
from msgraph.generated.models.message import Message
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.recipient import Recipient
from msgraph.generated.users.item.mail_folders.item.messages.messages_request_builder import (
    MessagesRequestBuilder as FolderMessagesRequestBuilder,
)
from msgraph.generated.users.item.messages.messages_request_builder import MessagesRequestBuilder
from msgraph.generated.users.item.send_mail.send_mail_post_request_body import (
    SendMailPostRequestBody,
)

from coexist.sandbox import Sandbox, seed
from coexist.sandbox.model import App, User, new_guid
from coexist.sandbox.routing import route
from tests.clients import graph_client, graph_http


def mailboxes(sandbox: Sandbox, key: str = "source") -> list[User]:
    with sandbox.world.lock:
        return [
            u
            for u in sandbox.world.tenants[key].users.values()
            if u.recipient_type_details == "UserMailbox"
        ]


def send(http: httpx.Client, sender: User, to: list[str], subject: str, **extra: Any) -> None:
    body = {
        "message": {
            "subject": subject,
            "body": {"contentType": "Text", "content": f"probe {subject}"},
            "toRecipients": [{"emailAddress": {"address": a}} for a in to],
            **extra,
        }
    }
    r = http.post(f"users/{sender.id}/sendMail", json=body)
    assert r.status_code == 202, r.text
    assert r.content == b""


def inbox(http: httpx.Client, user: User, flt: str, **params: str) -> list[dict[str, Any]]:
    r = http.get(f"users/{user.id}/mailFolders/inbox/messages", params={"$filter": flt, **params})
    assert r.status_code == 200, r.text
    values: list[dict[str, Any]] = r.json()["value"]
    return values


def imceaex(dn: str, domain: str) -> str:
    """IMCEAEX form of an X500 DN: '/' as '_', other non-SMTP-safe characters as +XX."""
    out = []
    for ch in dn:
        if ch == "/":
            out.append("_")
        elif ch.isascii() and (ch.isalnum() or ch in "=.-"):
            out.append(ch)
        else:
            out.extend(f"+{b:02X}" for b in ch.encode())
    return f"IMCEAEX-{''.join(out)}@{domain}"


def limited_app(sandbox: Sandbox, conn: dict[str, Any], roles: list[str]) -> dict[str, Any]:
    """Register an app holding only `roles` in the source tenant; its connection dict."""
    app = App(
        client_id=new_guid(), display_name="limited-mail", client_secret="s-" + new_guid(),
        graph_roles=roles,
    )  # fmt: skip
    with sandbox.world.lock:
        sandbox.world.source.apps.append(app)
        sandbox.world.source.touch()
    limited = copy.deepcopy(conn)
    limited["tenants"]["source"].update(client_id=app.client_id, client_secret=app.client_secret)
    return limited


def test_sdk_send_lands_once_in_inbox_and_in_sent_items(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """msgraph-sdk sendMail to a colleague (twice, To and Cc) gives one Inbox copy and one Sent copy."""
    alice, bob = mailboxes(sandbox)[:2]
    assert bob.primary_smtp and alice.primary_smtp

    async def run() -> None:
        client = graph_client(conn, "source")
        to = Recipient(email_address=EmailAddress(address=bob.primary_smtp, name="Bob"))
        message = Message(
            subject="Mailflow probe 1",
            body=ItemBody(content_type=BodyType.Text, content="hello"),
            to_recipients=[to],
            cc_recipients=[to],
        )
        await client.users.by_user_id(alice.id).send_mail.post(
            SendMailPostRequestBody(message=message, save_to_sent_items=True)
        )
        query = MessagesRequestBuilder.MessagesRequestBuilderGetQueryParameters(
            filter="subject eq 'Mailflow probe 1'", top=5
        )
        got = await client.users.by_user_id(bob.id).messages.get(
            RequestConfiguration(query_parameters=query)
        )
        assert got is not None and got.value is not None and len(got.value) == 1
        msg = got.value[0]
        assert msg.from_ is not None and msg.from_.email_address is not None
        assert msg.from_.email_address.address == alice.primary_smtp
        assert msg.is_read is False and msg.body is not None and msg.body.content == "hello"
        assert msg.internet_message_id and msg.received_date_time is not None
        sent_q = FolderMessagesRequestBuilder.MessagesRequestBuilderGetQueryParameters(
            filter="subject eq 'Mailflow probe 1'"
        )
        sent = await (
            client.users.by_user_id(alice.id)
            .mail_folders.by_mail_folder_id("sentitems")
            .messages.get(RequestConfiguration(query_parameters=sent_q))
        )
        assert sent is not None and sent.value is not None and len(sent.value) == 1
        assert sent.value[0].internet_message_id == msg.internet_message_id
        assert sent.value[0].is_read is True

    asyncio.run(run())


def test_target_mailuser_routes_to_source_mailbox(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """Mail from a target mailbox to a target MailUser (targetAddress = source) lands in the source mailbox."""
    world = sandbox.world
    src = mailboxes(sandbox)[2]
    sender = mailboxes(sandbox, "target")[0]
    with world.lock:
        mu = User(
            id=new_guid(),
            display_name=src.display_name,
            user_principal_name=f"probe-mu@{seed.TARGET_DOMAIN}",
            recipient_type_details="MailUser",
            email_addresses=[f"SMTP:probe-mu@{seed.TARGET_DOMAIN}"],
            external_email_address=f"SMTP:{src.primary_smtp}",
        )
        world.target.users[mu.id] = mu
        world.target.touch(mu)
    with graph_http(conn, "target") as target:
        send(target, sender, [f"probe-mu@{seed.TARGET_DOMAIN}"], "Coexistence probe")
    with graph_http(conn, "source") as source:
        got = inbox(source, src, "subject eq 'Coexistence probe'")
    assert len(got) == 1
    assert got[0]["from"]["emailAddress"]["address"] == sender.primary_smtp


def test_unknown_address_gives_ndr_in_sender_inbox(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """A recipient nobody owns in an accepted domain: 202, then an NDR with 5.1.10 in the sender's Inbox."""
    alice = mailboxes(sandbox)[0]
    with graph_http(conn, "source") as http:
        send(http, alice, [f"nobody-here@{seed.SOURCE_DOMAIN}"], "Lost probe")
        ndrs = inbox(http, alice, "subject eq 'Undeliverable: Lost probe'")
        assert len(ndrs) == 1
        full = http.get(f"users/{alice.id}/messages/{ndrs[0]['id']}").json()
    assert "5.1.10" in full["body"]["content"]
    assert "RESOLVER.ADR.RecipientNotFound" in full["body"]["content"]
    assert full["from"]["emailAddress"]["address"] == f"postmaster@{seed.SOURCE_INITIAL_DOMAIN}"


def test_imceaex_legacy_dn_lands_in_owner(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """A reply to an old item (IMCEAEX-encapsulated LegacyExchangeDN) reaches the DN's owner."""
    alice, _, carol = mailboxes(sandbox)[:3]
    assert carol.legacy_exchange_dn
    address = imceaex(carol.legacy_exchange_dn, seed.SOURCE_DOMAIN)
    with graph_http(conn, "source") as http:
        send(http, alice, [address], "Reply to old item")
        assert len(inbox(http, carol, "subject eq 'Reply to old item'")) == 1


def test_distribution_list_fans_out_once_per_member(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """All Staff (nested DLs, a duplicate member) puts exactly one copy in each member mailbox."""
    world = sandbox.world
    dl = seed.group_by_name(world.source, seed.DL_ALL_STAFF)
    expected = {obj for tenant, obj in _delivered_objects(world, dl.primary_smtp)}
    assert len(expected) > 3
    sender = mailboxes(sandbox, "target")[0]  # every source mailbox is on All Staff
    with graph_http(conn, "target") as target:
        send(target, sender, [dl.primary_smtp or ""], "All hands")
    with graph_http(conn, "source") as http:
        for oid in sorted(expected):
            user = world.source.users[oid]
            assert len(inbox(http, user, "subject eq 'All hands'")) == 1, user.primary_smtp


def _delivered_objects(world: Any, address: str | None) -> list[tuple[str, str]]:
    d = route(world, address or "")
    return [(leg.tenant, leg.object) for leg in d.deliveries if leg.outcome == "delivered"]


def test_filters_and_paging(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """$filter on internetMessageId / isRead / receivedDateTime, $top + @odata.nextLink ($skip) paging."""
    alice, bob = mailboxes(sandbox)[:2]
    with graph_http(conn, "source") as http:
        for i in range(5):
            send(http, alice, [bob.primary_smtp or ""], f"Page probe {i}")
        seen: list[str] = []
        url: str | None = f"users/{bob.primary_smtp}/messages"
        params: dict[str, str] | None = {"$top": "2", "$select": "subject,internetMessageId"}
        while url:
            page = http.get(url, params=params).json()
            assert len(page["value"]) <= 2
            assert set(page["value"][0]) == {"@odata.etag", "id", "subject", "internetMessageId"}
            seen += [m["subject"] for m in page["value"]]
            url, params = page.get("@odata.nextLink"), None
        assert seen == [f"Page probe {i}" for i in (4, 3, 2, 1, 0)]  # newest first
        first = inbox(http, bob, "subject eq 'Page probe 3'")[0]
        by_id = inbox(http, bob, f"internetMessageId eq '{first['internetMessageId']}'")
        assert [m["id"] for m in by_id] == [first["id"]]
        unread = inbox(http, bob, "isRead eq false and startswith(subject,'Page probe')")
        assert len(unread) == 5
        since = first["receivedDateTime"]
        recent = inbox(
            http,
            bob,
            f"receivedDateTime ge {since} and startswith(subject,'Page probe')",
            **{"$orderby": "receivedDateTime desc", "$count": "true", "$top": "1"},
        )
        assert recent and recent[0]["subject"] == "Page probe 4"
        bad = http.get(
            f"users/{bob.id}/messages",
            params={"$filter": "subject eq 'x'", "$orderby": "receivedDateTime desc"},
        )
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "InefficientFilter"
        assert http.get(f"users/{bob.id}/messages", params={"$top": "1001"}).status_code == 400


def test_folders_and_message_shapes(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """mailFolders lists the well-known folders with counts; a message has Graph's shape."""
    alice, bob = mailboxes(sandbox)[:2]
    with graph_http(conn, "source") as http:
        send(http, alice, [bob.primary_smtp or ""], "Shape probe")
        folders = http.get(f"users/{bob.id}/mailFolders").json()
        names = {f["displayName"] for f in folders["value"]}
        assert names == {
            "Inbox", "Sent Items", "Drafts", "Deleted Items", "Junk Email", "Archive", "Outbox"
        }  # fmt: skip
        box = http.get(f"users/{bob.id}/mailFolders/Inbox").json()
        assert (box["totalItemCount"], box["unreadItemCount"]) == (1, 1)
        msg = http.get(f"users/{bob.id}/mailFolders/{box['id']}/messages").json()["value"][0]
        for key in (
            "id", "createdDateTime", "lastModifiedDateTime", "receivedDateTime", "sentDateTime",
            "hasAttachments", "internetMessageId", "subject", "bodyPreview", "importance",
            "parentFolderId", "conversationId", "isRead", "isDraft", "from", "sender",
            "toRecipients", "ccRecipients", "body",
        ):  # fmt: skip
            assert key in msg, key
        assert msg["parentFolderId"] == box["id"] and msg["importance"] == "normal"
        assert msg["toRecipients"][0]["emailAddress"]["address"] == bob.primary_smtp
        missing = http.get(f"users/{bob.id}/messages/{msg['id'][:-8]}AAAAAAA=")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "ErrorItemNotFound"
        assert http.get(f"users/{bob.id}/mailFolders/nonsense").status_code == 400


def test_permissions_are_enforced(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """Without Mail.Send / Mail.Read the app gets Outlook's 403 ErrorAccessDenied."""
    alice, bob = mailboxes(sandbox)[:2]
    limited = limited_app(sandbox, conn, ["User.Read.All"])

    async def run() -> None:
        client = graph_client(limited, "source")
        with pytest.raises(ODataError) as err:
            await client.users.by_user_id(alice.id).send_mail.post(
                SendMailPostRequestBody(
                    message=Message(
                        subject="x",
                        to_recipients=[
                            Recipient(email_address=EmailAddress(address=bob.primary_smtp))
                        ],
                    )
                )
            )
        assert err.value.response_status_code == 403
        assert err.value.error is not None and err.value.error.code == "ErrorAccessDenied"
        with pytest.raises(ODataError) as err:
            await client.users.by_user_id(bob.id).messages.get()
        assert err.value.response_status_code == 403

    asyncio.run(run())


def test_non_mailbox_and_bad_recipients(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """A user without a mailbox is 404 MailboxNotEnabledForRESTAPI; unknown users and bad addresses fail."""
    world = sandbox.world
    alice = mailboxes(sandbox)[0]
    with world.lock:
        plain = User(
            id=new_guid(),
            display_name="Entra Only",
            user_principal_name=f"entra-only@{seed.SOURCE_DOMAIN}",
        )
        world.source.users[plain.id] = plain
        world.source.touch(plain)
    with graph_http(conn, "source") as http:
        r = http.get(f"users/{plain.id}/messages")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "MailboxNotEnabledForRESTAPI"
        r = http.post(f"users/{plain.user_principal_name}/sendMail", json={"message": {}})
        assert r.status_code == 404
        r = http.get(f"users/{new_guid()}/messages")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "ErrorInvalidUser")
        r = http.post(
            f"users/{alice.id}/sendMail",
            json={
                "message": {"subject": "x", "toRecipients": [{"emailAddress": {"address": "bad"}}]}
            },
        )
        assert (r.status_code, r.json()["error"]["code"]) == (400, "ErrorInvalidRecipients")
        r = http.post(f"users/{alice.id}/sendMail", json={"message": {"subject": "x"}})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "ErrorInvalidRecipients")


def test_sandbox_deliver_and_reset(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """Sandbox.deliver() reports each copy; reset() empties every mailbox."""
    bob = mailboxes(sandbox)[1]
    report = sandbox.deliver(
        [bob.primary_smtp or "", f"ghost@{seed.SOURCE_DOMAIN}"],
        sender="partner@northwind.example",
        subject="From outside",
    )
    assert [(c.kind, c.mailbox) for c in report.copies] == [("inbox", bob.id)]
    assert [leg.ndr_code for leg in report.ndrs] == ["5.1.10"]  # external sender: not stored
    with graph_http(conn, "source") as http:
        assert len(inbox(http, bob, "subject eq 'From outside'")) == 1
        sandbox.reset()
        assert inbox(http, bob, "subject eq 'From outside'") == []


STAMP = "String {5b1c2a8e-7f3d-4c61-9a0e-c0e715e0ce11} Name coexistSourceId"


def test_identity_filters_and_expand_on_a_folder(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """A named extended property set on a JSON create is found with `singleValueExtendedProperties
    /Any(...)` and shown by `$expand=...($filter=id eq ...)`; `internetMessageId eq` finds the
    copy; the copy's createdDateTime is its own, not the delivery time it carries."""
    alice = mailboxes(sandbox)[0]
    received = "2024-02-03T04:05:06Z"
    body = {
        "subject": "stamped",
        "body": {"contentType": "text", "content": "x"},
        "internetMessageId": "<it's.stamped@example.org>",
        "singleValueExtendedProperties": [
            {"id": "Integer 0x0E07", "value": "1"},
            {"id": "SystemTime 0x0E06", "value": received},
            {"id": STAMP, "value": "source-id-1"},
        ],
    }
    base = f"users/{alice.id}/mailFolders/inbox/messages"
    expand = f"singleValueExtendedProperties($filter=id eq '{STAMP}')"
    with graph_http(conn, "source") as http:
        made = http.post(base, json=body)
        assert made.status_code == 201, made.text
        plain = http.post(base, json={**body, "singleValueExtendedProperties": []}).json()
        copy_ = made.json()
        assert copy_["receivedDateTime"] == received and copy_["createdDateTime"] != received
        assert "singleValueExtendedProperties" not in copy_  # never listed unasked
        stamped = (
            f"singleValueExtendedProperties/Any(ep: ep/id eq '{STAMP}' and ep/value eq "
            "'source-id-1')"
        )
        found = inbox(http, alice, stamped, **{"$select": "id", "$expand": expand})
        assert [(m["id"], m["singleValueExtendedProperties"]) for m in found] == [
            (copy_["id"], [{"id": STAMP, "value": "source-id-1"}])
        ]
        other = stamped.replace("source-id-1", "source-id-2")
        assert inbox(http, alice, other) == []
        by_id = inbox(http, alice, "internetMessageId eq '<it''s.stamped@example.org>'")
        assert sorted(m["id"] for m in by_id) == sorted([copy_["id"], plain["id"]])
        one = http.get(f"users/{alice.id}/messages/{copy_['id']}", params={"$expand": expand})
        assert one.json()["singleValueExtendedProperties"] == [
            {"id": STAMP, "value": "source-id-1"}
        ]
        bare = http.get(f"users/{alice.id}/messages/{plain['id']}", params={"$expand": expand})
        assert "singleValueExtendedProperties" not in bare.json()
        named_case = http.get(
            f"users/{alice.id}/messages/{copy_['id']}",
            params={"$expand": expand.replace("coexistSourceId", "COEXISTSOURCEID")},
        )
        assert "singleValueExtendedProperties" not in named_case.json()  # Name is case-sensitive


def test_search_folder_is_a_typed_view_of_other_folders(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """A mailSearchFolder created under Inbox is listed with its derived @odata.type and
    definition, holds nothing of its own, and shows the matching messages of its sources."""
    alice = mailboxes(sandbox)[0]
    me = f"users/{alice.id}"
    with graph_http(conn, "source") as http:
        child = http.post(f"{me}/mailFolders/inbox/childFolders", json={"displayName": "Deep"})
        for folder, subject in (("inbox", "digest one"), (child.json()["id"], "digest two")):
            made = http.post(f"{me}/mailFolders/{folder}/messages", json={"subject": subject})
            assert made.status_code == 201, made.text
        http.post(f"{me}/mailFolders/inbox/messages", json={"subject": "other"})
        search = http.post(
            f"{me}/mailFolders/inbox/childFolders",
            json={
                "@odata.type": "microsoft.graph.mailSearchFolder",
                "displayName": "Digests",
                "includeNestedFolders": True,
                "sourceFolderIds": ["inbox"],
                "filterQuery": "startswith(subject, 'digest')",
            },
        )
        assert search.status_code == 201, search.text
        body = search.json()
        assert body["@odata.type"] == "#microsoft.graph.mailSearchFolder"
        assert body["isSupported"] is True and body["includeNestedFolders"] is True
        inbox_id = http.get(f"{me}/mailFolders/inbox").json()["id"]
        assert body["sourceFolderIds"] == [inbox_id]
        children = http.get(f"{me}/mailFolders/inbox/childFolders").json()["value"]
        typed = {c["displayName"]: c.get("@odata.type") for c in children}
        assert typed == {"Deep": None, "Digests": "#microsoft.graph.mailSearchFolder"}
        shown = http.get(f"{me}/mailFolders/{body['id']}/messages").json()["value"]
        assert sorted(m["subject"] for m in shown) == ["digest one", "digest two"]
        assert {m["parentFolderId"] for m in shown} == {inbox_id, child.json()["id"]}
        bad = http.post(
            f"{me}/mailFolders/inbox/childFolders",
            json={"@odata.type": "microsoft.graph.mailSearchFolder", "displayName": "No source"},
        )
        assert bad.status_code == 400


def test_sendmail_keeps_file_attachments_and_refuses_what_the_contract_lacks(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """A sendMail built by coexist's mailer (HTML part, a report attached) is a v1.0 message
    by the CSDL; it arrives with the attachment's name, type and bytes. A fileAttachment
    property the contract does not declare, or a non-boolean isInline, is a 400."""
    from email.message import EmailMessage

    from coexist import csdl, mailer

    alice, bob = mailboxes(sandbox)[:2]
    msg: EmailMessage = mailer.new_message(
        alice.primary_smtp or "", [bob.primary_smtp or ""], "report attached", "the text part\n"
    )
    msg.add_alternative("<p>the html part</p>", subtype="html")
    report = b"user,items\nann,3\n"
    msg.add_attachment(report, maintype="text", subtype="csv", filename="report.csv")
    payload = mailer.graph_payload(msg)
    assert csdl.violations(payload["message"], "microsoft.graph.message") == []
    with graph_http(conn, "source") as http:
        r = http.post(f"users/{alice.id}/sendMail", json=payload)
        assert r.status_code == 202, r.text
        [got] = inbox(http, bob, "subject eq 'report attached'")
        assert got["hasAttachments"] is True
        r = http.get(f"users/{bob.id}/messages/{got['id']}/attachments")
        assert r.status_code == 200, r.text
        [att] = r.json()["value"]
        assert (att["name"], att["contentType"]) == ("report.csv", "text/csv")
        assert base64.b64decode(att["contentBytes"]) == report

        bad = copy.deepcopy(payload)
        bad["message"]["attachments"][0]["sizeInBytes"] = 3
        r = http.post(f"users/{alice.id}/sendMail", json=bad)
        assert r.status_code == 400 and r.json()["error"]["code"] == "RequestBodyRead", r.text
        bad = copy.deepcopy(payload)
        bad["message"]["attachments"][0]["isInline"] = "no"
        r = http.post(f"users/{alice.id}/sendMail", json=bad)
        assert r.status_code == 400, r.text
        # The refused requests delivered nothing.
        assert len(inbox(http, bob, "subject eq 'report attached'")) == 1
