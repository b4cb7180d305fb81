"""The mailbox import/export API over HTTPS: folders, items, delta, exportItems, import sessions."""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from msgraph.generated.admin.exchange.mailboxes.item.export_items.export_items_post_request_body import (
    ExportItemsPostRequestBody,
)
from msgraph.generated.models.o_data_errors.o_data_error import ODataError

from coexist.sandbox import Sandbox
from coexist.sandbox.model import App, User, new_guid
from tests.clients import graph_client, graph_http, tls

# Message properties that legitimately differ between a source item and its imported copy.
IDENTITY = {"@odata.context", "@odata.etag", "id", "changeKey", "parentFolderId", "conversationId",
            "conversationIndex", "webLink"}  # fmt: skip


def mailboxes(sandbox: Sandbox, key: str) -> list[User]:
    with sandbox.world.lock:
        return [
            u
            for u in sandbox.world.tenants[key].users.values()
            if u.recipient_type_details == "UserMailbox"
        ]


def mailbox_id(http: httpx.Client, user: User) -> str:
    r = http.get(f"users/{user.id}/settings/exchange")
    assert r.status_code == 200, r.text
    value: str = r.json()["primaryMailboxId"]
    return value


def rich_mime(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Zoë Außen <zoe@partner.example>"
    msg["To"] = "someone@contoso.example"
    msg["Subject"] = f"Quarterly «numbers» {n}"
    msg["Date"] = "Tue, 02 Jan 2024 10:00:00 +0000"
    msg["Message-ID"] = f"<io-{n}@partner.example>"
    msg["Importance"] = "high"
    msg.set_content(f"Body {n} — ünïcode\n")
    msg.add_attachment(bytes(range(256)) * 40, maintype="application", subtype="octet-stream",
                       filename="blob.bin")  # fmt: skip
    return bytes(msg)


def seed(sandbox: Sandbox, user: User, count: int) -> list[str]:
    ids = []
    for n in range(count):
        item = sandbox.mail.deliver(
            "source", user.id, rich_mime(n), "inbox",
            received=dt.datetime(2024, 1, 2, 10, n, tzinfo=dt.UTC), is_read=n % 2 == 0,
        )  # fmt: skip
        ids.append(item.id)
    return ids


def test_export_then_import_reproduces_items_exactly(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """msgraph-sdk export from a source mailbox, import (no Authorization) into a target mailbox: MIME and properties identical."""
    src = mailboxes(sandbox, "source")[0]
    dst = mailboxes(sandbox, "target")[0]
    ids = seed(sandbox, src, 3)
    src_http, dst_http = graph_http(conn, "source"), graph_http(conn, "target")
    src_mbx, dst_mbx = mailbox_id(src_http, src), mailbox_id(dst_http, dst)

    async def run() -> tuple[list[tuple[str, bytes]], str]:
        source = graph_client(conn, "source")
        target = graph_client(conn, "target")
        inbox = (await source.admin.exchange.mailboxes.by_mailbox_id(src_mbx).folders.get()).value
        inbox_id = next(f.id for f in inbox if f.well_known_name == "inbox")
        items = (
            await source.admin.exchange.mailboxes.by_mailbox_id(src_mbx)
            .folders.by_mailbox_folder_id(inbox_id)
            .items.get()
        )
        assert sorted(i.id for i in items.value) == sorted(ids)
        assert all(i.type == "IPM.Note" and i.size > 10_000 for i in items.value)
        exported = await source.admin.exchange.mailboxes.by_mailbox_id(src_mbx).export_items.post(
            ExportItemsPostRequestBody(item_ids=ids)
        )
        session = await target.admin.exchange.mailboxes.by_mailbox_id(
            dst_mbx
        ).create_import_session.post()
        return [(e.item_id, e.data) for e in exported.value], session.import_url

    exported, import_url = asyncio.run(run())
    folders = dst_http.get(f"admin/exchange/mailboxes/{dst_mbx}/folders").json()["value"]
    dst_inbox = next(f["id"] for f in folders if f["wellKnownName"] == "inbox")
    pairs = {}
    with httpx.Client(verify=tls(conn)) as raw:
        for item_id, data in exported:
            r = raw.post(import_url, json={"FolderId": dst_inbox, "Mode": "create",
                                           "Data": base64.b64encode(data).decode()})  # fmt: skip
            assert r.status_code == 200, r.text
            assert r.json()["changeKey"]
            pairs[item_id] = r.json()["itemId"]
    for src_id, dst_id in pairs.items():
        assert sandbox.mail.mime(src_id) == sandbox.mail.mime(dst_id)
        a = src_http.get(f"users/{src.id}/messages/{src_id}").json()
        b = dst_http.get(f"users/{dst.id}/messages/{dst_id}").json()
        assert {k: v for k, v in a.items() if k not in IDENTITY} == {
            k: v for k, v in b.items() if k not in IDENTITY
        }
        assert b["isDraft"] is False and b["receivedDateTime"] == a["receivedDateTime"]


def test_export_limits_and_unknown_ids(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """exportItems: 21 ids is a 400; an unknown id gets a per-item error next to the exported one."""
    src = mailboxes(sandbox, "source")[0]
    ids = seed(sandbox, src, 1)
    http = graph_http(conn, "source")
    mbx = mailbox_id(http, src)

    async def too_many() -> None:
        client = graph_client(conn, "source")
        with pytest.raises(ODataError) as err:
            await client.admin.exchange.mailboxes.by_mailbox_id(mbx).export_items.post(
                ExportItemsPostRequestBody(item_ids=ids * 21)
            )
        assert err.value.response_status_code == 400

    asyncio.run(too_many())
    missing = ids[0][:-8] + "AAAAAAA="
    r = http.post(
        f"admin/exchange/mailboxes/{mbx}/exportItems", json={"itemIds": [ids[0], missing]}
    )
    assert r.status_code == 200, r.text
    first, second = r.json()["value"]
    assert first["itemId"] == ids[0] and first["data"] and "error" not in first
    assert second["itemId"] == missing and second["error"]["code"] == "ErrorItemNotFound"


def test_import_url_rejects_a_bad_token(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """A tampered import URL is refused and stores nothing."""
    dst = mailboxes(sandbox, "target")[0]
    http = graph_http(conn, "target")
    mbx = mailbox_id(http, dst)
    r = http.post(f"admin/exchange/mailboxes/{mbx}/createImportSession")
    assert r.status_code == 200, r.text
    url = r.json()["importUrl"]
    assert "authtoken=" in url and r.json()["expirationDateTime"].endswith("Z")
    inbox = http.get(f"admin/exchange/mailboxes/{mbx}/folders").json()["value"]
    inbox_id = next(f["id"] for f in inbox if f["wellKnownName"] == "inbox")
    with httpx.Client(verify=tls(conn)) as raw:
        bad = raw.post(
            url[:-4] + "xxxx", json={"FolderId": inbox_id, "Mode": "create", "Data": "AAAA"}
        )
        assert bad.status_code == 401
        garbage = raw.post(url, json={"FolderId": inbox_id, "Mode": "create", "Data": "AAAA"})
        assert garbage.status_code == 400
    assert sandbox.mail.count("target", dst.id) == 0


def test_folder_and_item_delta(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """Folder delta lists the tree then nothing; item delta pages, then reports only new items."""
    src = mailboxes(sandbox, "source")[0]
    seed(sandbox, src, 3)
    http = graph_http(conn, "source")
    mbx = mailbox_id(http, src)
    r = http.get(f"admin/exchange/mailboxes/{mbx}/folders/delta()")
    assert r.status_code == 200, r.text
    names = {f["displayName"] for f in r.json()["value"]}
    assert {"Inbox", "Sent Items", "Contacts", "Calendar"} <= names
    again = http.get(r.json()["@odata.deltaLink"]).json()
    assert again["value"] == [] and "@odata.deltaLink" in again

    inbox = next(f["id"] for f in r.json()["value"] if f.get("wellKnownName") == "inbox")
    url: str | None = f"admin/exchange/mailboxes/{mbx}/folders/{inbox}/items/delta()"
    seen: list[str] = []
    delta_link = ""
    while url:
        page = http.get(url, headers={"Prefer": "odata.maxpagesize=2"}).json()
        seen += [i["id"] for i in page["value"]]
        url = page.get("@odata.nextLink")
        delta_link = page.get("@odata.deltaLink", delta_link)
    assert len(seen) == 3 == len(set(seen))
    new = seed(sandbox, src, 1)
    after = http.get(delta_link).json()
    assert [i["id"] for i in after["value"]] == new


def test_without_import_export_permission_is_403(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """An app without MailboxItem.ImportExport.All gets Exchange's 403 on export and import sessions."""
    src = mailboxes(sandbox, "source")[0]
    mbx = mailbox_id(graph_http(conn, "source"), src)
    app = App(client_id=new_guid(), display_name="no-io", client_secret="s-" + new_guid(),
              graph_roles=["User.Read.All", "Mail.Read"])  # fmt: skip
    with sandbox.world.lock:
        sandbox.world.source.apps.append(app)
        sandbox.world.source.touch()
    limited = copy.deepcopy(conn)
    limited["tenants"]["source"].update(client_id=app.client_id, client_secret=app.client_secret)
    http = graph_http(limited, "source")
    for r in (
        http.post(f"admin/exchange/mailboxes/{mbx}/exportItems", json={"itemIds": ["x"]}),
        http.post(f"admin/exchange/mailboxes/{mbx}/createImportSession"),
        http.get(f"admin/exchange/mailboxes/{mbx}/folders"),
    ):
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "ErrorAccessDenied"
