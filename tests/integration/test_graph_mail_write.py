"""Graph mail writes over HTTPS: folders, message create (JSON / MIME), $value, attachments,
upload sessions, PATCH / move / DELETE, request and upload limits."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email
import email.policy
import time
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from msgraph.generated.models.body_type import BodyType
from msgraph.generated.models.followup_flag import FollowupFlag
from msgraph.generated.models.followup_flag_status import FollowupFlagStatus
from msgraph.generated.models.importance import Importance
from msgraph.generated.models.item_body import ItemBody
from msgraph.generated.models.mail_folder import MailFolder
from msgraph.generated.models.message import Message
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.single_value_legacy_extended_property import (
    SingleValueLegacyExtendedProperty,
)
from msgraph.generated.users.item.messages.item.move.move_post_request_body import (
    MovePostRequestBody,
)

from coexist.sandbox import Sandbox, seed
from coexist.sandbox.model import User
from coexist.sandbox.server import profile_settings
from tests.clients import graph_client, graph_http, tls

MB = 1024 * 1024


def mailbox(sandbox: Sandbox) -> User:
    with sandbox.world.lock:
        return next(
            u
            for u in sandbox.world.source.users.values()
            if u.recipient_type_details == "UserMailbox"
        )


def sample_mime(subject: str, attachment: bytes | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Ann Example <ann@fabrikam.example>"
    msg["To"] = "bob@fabrikam.example"
    msg["Subject"] = subject
    msg["Date"] = "Tue, 07 May 2024 09:30:00 +0000"
    msg["Message-ID"] = f"<{subject.replace(' ', '.')}@fabrikam.example>"
    msg["Sensitivity"] = "Private"
    msg.set_content("MIME body\n")
    if attachment is not None:
        msg.add_attachment(attachment, maintype="application", subtype="pdf", filename="r.pdf")
    return msg.as_bytes()


def post_mime(http: httpx.Client, user: User, folder: str, mime: bytes) -> httpx.Response:
    return http.post(
        f"users/{user.id}/mailFolders/{folder}/messages",
        content=base64.b64encode(mime),
        headers={"Content-Type": "text/plain"},
    )


def test_folder_tree_deep_and_odd_names(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """Folders nest deeply, take quotes/slashes/non-ASCII, and duplicates are 409 ErrorFolderExists."""
    user = mailbox(sandbox)
    names = ["a/b", "Quote \"x\" 'y'", "Ünïcødé 日本語", "level 4", "level 5"]

    async def run() -> None:
        client = graph_client(conn, "source")
        folders = client.users.by_user_id(user.id).mail_folders
        top = await folders.post(MailFolder(display_name="Projects"))
        assert top is not None and top.id and top.parent_folder_id
        parent = top.id
        chain = [top.id]
        for name in names:
            made = await folders.by_mail_folder_id(parent).child_folders.post(
                MailFolder(display_name=name)
            )
            assert made is not None and made.display_name == name
            assert made.parent_folder_id == parent and made.child_folder_count == 0
            parent = made.id or ""
            chain.append(parent)
        got = await folders.by_mail_folder_id(chain[1]).get()
        assert got is not None and got.display_name == "a/b" and got.child_folder_count == 1
        assert got.total_item_count == 0 and got.unread_item_count == 0 and got.is_hidden is False
        kids = await folders.by_mail_folder_id(chain[2]).child_folders.get()
        assert kids is not None and [f.display_name for f in kids.value or []] == [names[2]]
        with pytest.raises(ODataError) as err:
            await folders.by_mail_folder_id(top.id).child_folders.post(
                MailFolder(display_name="A/B")
            )
        assert err.value.response_status_code == 409
        assert err.value.error is not None and err.value.error.code == "ErrorFolderExists"
        with pytest.raises(ODataError) as err:
            await folders.post(MailFolder(display_name="inbox"))
        assert err.value.response_status_code == 409

    asyncio.run(run())


def test_json_create_with_extended_properties_is_not_a_draft(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """PR_MESSAGE_FLAGS/delivery/submit-time properties give a read, dated, non-draft item."""
    user = mailbox(sandbox)
    received, sent = "2021-03-04T05:06:07Z", "2021-03-04T05:00:00Z"

    async def run() -> None:
        client = graph_client(conn, "source")
        props = [
            SingleValueLegacyExtendedProperty(id="Integer 0x0E07", value="1"),
            SingleValueLegacyExtendedProperty(id="SystemTime 0x0E06", value=received),
            SingleValueLegacyExtendedProperty(id="SystemTime 0x0039", value=sent),
            SingleValueLegacyExtendedProperty(id="Integer 0x0036", value="3"),
        ]
        body = Message(
            subject="Imported",
            body=ItemBody(content_type=BodyType.Html, content="<p>hi</p>"),
            flag=FollowupFlag(flag_status=FollowupFlagStatus.Flagged),
            categories=["Red category"],
            importance=Importance.High,
            single_value_extended_properties=props,
        )
        folder = client.users.by_user_id(user.id).mail_folders.by_mail_folder_id("inbox")
        made = await folder.messages.post(body)
        assert made is not None and made.is_draft is False and made.is_read is True
        assert made.received_date_time == dt.datetime.fromisoformat(received)
        assert made.sent_date_time == dt.datetime.fromisoformat(sent)
        assert made.flag is not None and made.flag.flag_status == FollowupFlagStatus.Flagged
        assert made.categories == ["Red category"] and made.importance == Importance.High
        draft = await client.users.by_user_id(user.id).messages.post(Message(subject="draft"))
        assert draft is not None and draft.is_draft is True
        drafts = (
            await client.users.by_user_id(user.id).mail_folders.by_mail_folder_id("drafts").get()
        )
        assert draft.parent_folder_id == (drafts.id if drafts else None)

    asyncio.run(run())
    with graph_http(conn, "source") as http:
        inbox = http.get(f"users/{user.id}/mailFolders/inbox/messages").json()["value"]
        (item,) = [m for m in inbox if m["subject"] == "Imported"]
        raw = http.get(f"users/{user.id}/messages/{item['id']}/$value").content
    assert b"Sensitivity: Company-Confidential" in raw


def test_mime_create_round_trips_byte_for_byte(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """A MIME-created message is a draft whose $value is the posted MIME, attachments included."""
    user = mailbox(sandbox)
    mime = sample_mime("mime probe", attachment=b"%PDF-1.4 tiny")
    with graph_http(conn, "source") as http:
        r = post_mime(http, user, "inbox", mime)
        assert r.status_code == 201, r.text
        made = r.json()
        assert made["isDraft"] is True and made["hasAttachments"] is True
        assert made["subject"] == "mime probe"
        assert made["sentDateTime"] == "2024-05-07T09:30:00Z"
        value = http.get(f"users/{user.id}/messages/{made['id']}/$value")
        assert value.status_code == 200 and value.content == mime
        listed = http.get(f"users/{user.id}/messages/{made['id']}/attachments").json()["value"]
        assert [(a["name"], base64.b64decode(a["contentBytes"])) for a in listed] == [
            ("r.pdf", b"%PDF-1.4 tiny")
        ]
        bad = http.post(
            f"users/{user.id}/messages",
            content=b"@@not base64@@",
            headers={"Content-Type": "text/plain"},
        )
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "ErrorMimeContentInvalidBase64String"
        big = http.post(
            f"users/{user.id}/messages",
            content=b"A" * (4 * MB + 4),
            headers={"Content-Type": "text/plain"},
        )
        assert big.status_code == 413


def test_small_and_large_attachments(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """A small fileAttachment POST and a 3.5 MB upload session in ranges both land in $value."""
    user = mailbox(sandbox)
    small = b"small attachment"
    large = bytes(range(256)) * (14 * 1024)  # 3.5 MB
    with graph_http(conn, "source") as http:
        made = http.post(f"users/{user.id}/messages", json={"subject": "with files"}).json()
        mid = made["id"]
        att = {
            "@odata.type": "#microsoft.graph.fileAttachment",
            "name": "note.txt",
            "contentType": "text/plain",
            "contentBytes": base64.b64encode(small).decode(),
        }
        r = http.post(f"users/{user.id}/messages/{mid}/attachments", json=att)
        assert r.status_code == 201, r.text
        assert r.json()["size"] == len(small) and r.json()["name"] == "note.txt"
        too_small = http.post(
            f"users/{user.id}/messages/{mid}/attachments/createUploadSession",
            json={"AttachmentItem": {"attachmentType": "file", "name": "x", "size": 10}},
        )
        assert too_small.status_code == 400
        too_big = http.post(
            f"users/{user.id}/messages/{mid}/attachments/createUploadSession",
            json={"AttachmentItem": {"attachmentType": "file", "name": "x", "size": 151 * MB}},
        )
        assert too_big.status_code == 413
        assert too_big.json()["error"]["code"] == "ErrorMessageSizeExceeded"
        spec = {"attachmentType": "file", "name": "big.bin", "size": len(large)}
        r = http.post(
            f"users/{user.id}/messages/{mid}/attachments/createUploadSession",
            json={"AttachmentItem": spec},
        )
        assert r.status_code == 201, r.text
        session = r.json()
        assert session["nextExpectedRanges"] == ["0-"]
    # The upload URL is pre-authenticated: a client without any Authorization header.
    with httpx.Client(verify=tls(conn), timeout=30) as anon:
        step = MB
        for start in range(0, len(large), step):
            chunk = large[start : start + step]
            end = start + len(chunk) - 1
            r = anon.put(
                session["uploadUrl"],
                content=chunk,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"bytes {start}-{end}/{len(large)}",
                },
            )
            if end + 1 < len(large):
                assert r.status_code == 200, r.text
                assert r.json()["nextExpectedRanges"] == [str(end + 1)]
            else:
                assert r.status_code == 201, r.text
                assert r.content == b"" and "/Attachments('" in r.headers["location"]
    with graph_http(conn, "source") as http:
        listed = http.get(f"users/{user.id}/messages/{mid}/attachments").json()["value"]
        assert [(a["name"], a["size"]) for a in listed] == [
            ("note.txt", len(small)),
            ("big.bin", len(large)),
        ]
        raw = http.get(f"users/{user.id}/messages/{mid}/$value").content
        assert http.get(f"users/{user.id}/messages/{mid}").json()["hasAttachments"] is True
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    payloads = [p.get_payload(decode=True) for p in parsed.iter_attachments()]
    assert payloads == [small, large]


def test_patch_move_delete(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """PATCH returns the updated message; move gives a new id in the target; DELETE removes it."""
    user = mailbox(sandbox)
    item = sandbox.mail.deliver("source", user.id, sample_mime("to change"))

    async def run() -> None:
        client = graph_client(conn, "source")
        messages = client.users.by_user_id(user.id).messages
        patched = await messages.by_message_id(item.id).patch(
            Message(
                is_read=True,
                categories=["Green"],
                flag=FollowupFlag(flag_status=FollowupFlagStatus.Complete),
                importance=Importance.Low,
            )
        )
        assert patched is not None and patched.is_read is True and patched.categories == ["Green"]
        assert patched.flag is not None and patched.flag.flag_status == FollowupFlagStatus.Complete
        assert patched.change_key != item.change_key
        moved = await messages.by_message_id(item.id).move.post(
            MovePostRequestBody(destination_id="archive")
        )
        assert moved is not None and moved.id and moved.id != item.id
        archive = (
            await client.users.by_user_id(user.id).mail_folders.by_mail_folder_id("archive").get()
        )
        assert archive is not None and moved.parent_folder_id == archive.id
        assert moved.is_read is True and moved.categories == ["Green"]
        with pytest.raises(ODataError) as err:
            await messages.by_message_id(item.id).get()
        assert err.value.response_status_code == 404
        await messages.by_message_id(moved.id).delete()
        with pytest.raises(ODataError) as err:
            await messages.by_message_id(moved.id).get()
        assert err.value.error is not None and err.value.error.code == "ErrorItemNotFound"

    asyncio.run(run())


def test_upload_budget_is_enforced_under_published(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """Under `published`, bytes uploaded beyond the 150 MB/5 min budget get 429 + Retry-After."""
    settings = profile_settings("published", 7, time_scale=10.0)
    sandbox.reset(seed.generate(7, 40, settings))
    user = mailbox(sandbox)
    client_id = conn["tenants"]["source"]["client_id"]
    assert sandbox.ctx is not None
    mime = sample_mime("budget", attachment=b"x" * MB)
    with graph_http(conn, "source") as http:
        mid = http.post(f"users/{user.id}/messages", json={"subject": "s"}).json()["id"]
        spec = {"attachmentType": "file", "name": "big.bin", "size": 4 * MB}
        url = http.post(
            f"users/{user.id}/messages/{mid}/attachments/createUploadSession",
            json={"AttachmentItem": spec},
        ).json()["uploadUrl"]
    # Arrange: another uploader of the same app used this mailbox's whole upload budget.
    assert sandbox.ctx.limiter.admit("outlook_upload_bytes", (client_id, user.id), 150 * MB) is None
    with httpx.Client(verify=tls(conn), timeout=30) as anon:
        headers = {"Content-Range": f"bytes 0-{MB - 1}/{4 * MB}"}
        put = anon.put(url, content=b"y" * MB, headers=headers)
        assert put.status_code == 429 and float(put.headers["Retry-After"]) > 0
    with graph_http(conn, "source") as http:
        r = post_mime(http, user, "inbox", mime)
        assert r.status_code == 429, r.text
        retry_after = float(r.headers["Retry-After"])
        assert retry_after > 0
        for _ in range(50):
            time.sleep(retry_after)
            r = post_mime(http, user, "inbox", mime)
            if r.status_code != 429:
                break
            retry_after = float(r.headers["Retry-After"])
        assert r.status_code == 201, r.text
