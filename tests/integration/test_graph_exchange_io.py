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
from coexist.sandbox.graph.exchange_io import io_id, store_id
from coexist.sandbox.model import App, User, new_guid
from coexist.tenants.mailbox_governor import mailbox_of
from tests.clients import graph_client, graph_http, tls

PS_INTERNET_HEADERS = "{00020386-0000-0000-C000-000000000046}"
IDENTITY_PROPS = "$expand=singleValueExtendedProperties($filter=id eq 'String 0x1035' or id eq 'Binary 0x300B' or id eq 'String 0x0037')"

# Message properties that legitimately differ between a source item and its imported copy
# (createdDateTime: Exchange stamps a new item's creation when it is imported).
IDENTITY = {"@odata.context", "@odata.etag", "id", "changeKey", "parentFolderId", "conversationId",
            "conversationIndex", "webLink", "createdDateTime"}  # fmt: skip


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


def io_items(http: httpx.Client, mbx: str, folder: str = "inbox", query: str = "") -> list[Any]:
    """Every item of a folder through the import/export API (its own ids)."""
    url: str | None = f"admin/exchange/mailboxes/{mbx}/folders/{folder}/items?$top=1000{query}"
    out: list[Any] = []
    while url:
        r = http.get(url)
        assert r.status_code == 200, r.text
        out += r.json()["value"]
        url = r.json().get("@odata.nextLink")
    return out


def delta_round(http: httpx.Client, url: str) -> tuple[list[Any], str]:
    """One delta round followed to its deltaLink: (values, deltaLink)."""
    values: list[Any] = []
    link: str | None = url
    while True:
        r = http.get(link)
        assert r.status_code == 200, r.text
        values += r.json()["value"]
        link = r.json().get("@odata.nextLink")
        if link is None:
            return values, str(r.json()["@odata.deltaLink"])


def props_of(obj: dict[str, Any]) -> dict[str, str]:
    return {p["id"].lower(): p["value"] for p in obj.get("singleValueExtendedProperties") or []}


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
        inbox_id = (
            await source.admin.exchange.mailboxes.by_mailbox_id(src_mbx)
            .folders.by_mailbox_folder_id("inbox")
            .get()
        ).id
        items = (
            await source.admin.exchange.mailboxes.by_mailbox_id(src_mbx)
            .folders.by_mailbox_folder_id(inbox_id)
            .items.get()
        )
        assert len(items.value) == len(ids) and not set(ids) & {i.id for i in items.value}
        assert all(i.type == "IPM.Note" and i.size > 10_000 for i in items.value)
        exported = await source.admin.exchange.mailboxes.by_mailbox_id(src_mbx).export_items.post(
            ExportItemsPostRequestBody(item_ids=[i.id for i in items.value])
        )
        session = await target.admin.exchange.mailboxes.by_mailbox_id(
            dst_mbx
        ).create_import_session.post()
        return [(e.item_id, e.data) for e in exported.value], session.import_url

    exported, import_url = asyncio.run(run())
    dst_inbox = dst_http.get(f"admin/exchange/mailboxes/{dst_mbx}/folders/inbox").json()["id"]
    pairs = {}
    with httpx.Client(verify=tls(conn)) as raw:
        for item_id, data in exported:
            r = raw.post(import_url, json={"FolderId": dst_inbox, "Mode": "create",
                                           "Data": base64.b64encode(data).decode()})  # fmt: skip
            assert r.status_code == 200, r.text
            assert r.json()["changeKey"]
            pairs[item_id] = r.json()["itemId"]
    for io_src, io_dst in pairs.items():
        src_id, dst_id = store_id(io_src), store_id(io_dst)
        assert src_id in ids and dst_id is not None
        assert sandbox.mail.mime(src_id) == sandbox.mail.mime(dst_id)
        a = src_http.get(f"users/{src.id}/messages/{src_id}").json()
        b = dst_http.get(f"users/{dst.id}/messages/{dst_id}").json()
        assert {k: v for k, v in a.items() if k not in IDENTITY} == {
            k: v for k, v in b.items() if k not in IDENTITY
        }
        assert b["isDraft"] is False and b["receivedDateTime"] == a["receivedDateTime"]


def test_export_limits_and_unknown_ids(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """exportItems: 21 ids is a 400; an unknown id, and the mail API's id of the same item, get a per-item error next to the exported one."""
    src = mailboxes(sandbox, "source")[0]
    mail_ids = seed(sandbox, src, 1)
    http = graph_http(conn, "source")
    mbx = mailbox_id(http, src)
    ids = [i["id"] for i in io_items(http, mbx)]

    async def too_many() -> None:
        client = graph_client(conn, "source")
        with pytest.raises(ODataError) as err:
            await client.admin.exchange.mailboxes.by_mailbox_id(mbx).export_items.post(
                ExportItemsPostRequestBody(item_ids=ids * 21)
            )
        assert err.value.response_status_code == 400

    asyncio.run(too_many())
    missing = io_id(mail_ids[0][:-8] + "AAAAAAA=")
    r = http.post(
        f"admin/exchange/mailboxes/{mbx}/exportItems",
        json={"itemIds": [ids[0], missing, mail_ids[0]]},
    )
    assert r.status_code == 200, r.text
    first, second, third = r.json()["value"]
    assert first["itemId"] == ids[0] and first["data"] and "error" not in first
    assert second["itemId"] == missing and second["error"]["code"] == "ErrorItemNotFound"
    assert third["itemId"] == mail_ids[0] and third["error"]["code"] == "ErrorItemNotFound"


def test_ids_of_each_api_are_unknown_to_the_other(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """Import/export ids are refused by the mail and calendar APIs, and their ids by import/export, as unknown ids (404 ErrorItemNotFound)."""
    src = mailboxes(sandbox, "source")[0]
    (mail_id,) = seed(sandbox, src, 1)
    http = graph_http(conn, "source")
    mbx = mailbox_id(http, src)
    (item,) = io_items(http, mbx)
    inbox = http.get(f"admin/exchange/mailboxes/{mbx}/folders/inbox").json()
    calendar = http.get(f"admin/exchange/mailboxes/{mbx}/folders/calendar").json()
    mail_inbox = http.get(f"users/{src.id}/mailFolders/inbox").json()["id"]
    mail_calendar = http.get(f"users/{src.id}/calendar").json()["id"]
    assert item["id"] != mail_id and inbox["id"] != mail_inbox
    assert calendar["type"] == "IPF.Appointment" and calendar["id"] != mail_calendar
    refused = [
        http.get(f"users/{src.id}/messages/{item['id']}"),
        http.get(f"users/{src.id}/mailFolders/{inbox['id']}"),
        http.get(f"users/{src.id}/calendars/{calendar['id']}"),
        http.get(f"admin/exchange/mailboxes/{mbx}/folders/{mail_inbox}"),
        http.get(f"admin/exchange/mailboxes/{mbx}/folders/{inbox['id']}/items/{mail_id}"),
        http.get(f"admin/exchange/mailboxes/{mbx}/folders/{mail_calendar}/items"),
    ]
    for r in refused:
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "ErrorItemNotFound"
    ok = http.get(f"admin/exchange/mailboxes/{mbx}/folders/{inbox['id']}/items/{item['id']}")
    assert ok.status_code == 200 and ok.json()["id"] == item["id"]


def test_folders_created_renamed_and_deleted(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """POST folders / childFolders (displayName + type), PATCH displayName, DELETE (with or without /$ref); duplicates, missing type, type changes and default folders are refused."""
    dst = mailboxes(sandbox, "target")[0]
    http = graph_http(conn, "target")
    base = f"admin/exchange/mailboxes/{mailbox_id(http, dst)}/folders"
    made = http.post(base, json={"displayName": "Projects", "type": "IPF.Note"})
    assert made.status_code == 201, made.text
    top = made.json()
    assert top["type"] == "IPF.Note" and "wellKnownName" not in top
    child = http.post(f"{base}/{top['id']}/childFolders",
                      json={"displayName": "2024", "type": "IPF.Note"})  # fmt: skip
    assert child.status_code == 201 and child.json()["parentFolderId"] == top["id"]
    cal = http.post(f"{base}/calendar/childFolders",
                    json={"displayName": "Team", "type": "IPF.Appointment"})  # fmt: skip
    assert cal.status_code == 201 and cal.json()["type"] == "IPF.Appointment"
    assert "Team" in {c["name"] for c in http.get(f"users/{dst.id}/calendars").json()["value"]}
    assert http.post(base, json={"displayName": "projects", "type": "IPF.Note"}).status_code == 409
    assert http.post(base, json={"displayName": "No type"}).status_code == 400
    renamed = http.patch(f"{base}/{top['id']}", json={"displayName": "Projekte"})
    assert renamed.status_code == 200 and renamed.json()["displayName"] == "Projekte"
    assert http.patch(f"{base}/{top['id']}", json={"type": "IPF.Task"}).status_code == 400
    names = {f["displayName"] for f in http.get(f"users/{dst.id}/mailFolders").json()["value"]}
    assert "Projekte" in names
    nested = http.get(f"{base}/{top['id']}/childFolders/{child.json()['id']}")
    assert nested.status_code == 200 and nested.json()["displayName"] == "2024"
    assert http.delete(f"{base}/{top['id']}/$ref").status_code == 204
    assert http.get(f"{base}/{top['id']}").status_code == 404
    assert http.get(f"{base}/{child.json()['id']}").status_code == 404
    inbox = http.get(f"{base}/inbox").json()["id"]
    assert http.delete(f"{base}/{inbox}/$ref").status_code == 400
    # The page's other form, without `/$ref`, deletes too.
    other = http.post(base, json={"displayName": "Old", "type": "IPF.Note"}).json()
    assert http.delete(f"{base}/{other['id']}").status_code == 204
    assert http.get(f"{base}/{other['id']}").status_code == 404


def test_item_delete_needs_a_disposal_type(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """DELETE .../items/{id} takes disposalType softDelete or hardDelete; the item is gone from both APIs."""
    src = mailboxes(sandbox, "source")[0]
    (mail_id,) = seed(sandbox, src, 1)
    http = graph_http(conn, "source")
    mbx = mailbox_id(http, src)
    (item,) = io_items(http, mbx)
    url = f"admin/exchange/mailboxes/{mbx}/folders/inbox/items/{item['id']}"
    assert http.delete(url).status_code == 400
    assert http.delete(url + "?disposalType=softDelete").status_code == 204
    assert http.get(url).status_code == 404
    assert http.get(f"users/{src.id}/messages/{mail_id}").status_code == 404
    assert http.delete(url + "?disposalType=hardDelete").status_code == 404


def test_search_and_system_folders_are_listed(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """The folder list includes search folders and non-IPM system folders outside the IPM subtree; PidTagFolderType tells a search folder; it shows the mailbox's items under their own ids."""
    src = mailboxes(sandbox, "source")[0]
    seed(sandbox, src, 3)
    sandbox.mail.create_search_folder("source", src.id, "Numbers", "numbers")
    http = graph_http(conn, "source")
    mbx = mailbox_id(http, src)
    r = http.get(f"admin/exchange/mailboxes/{mbx}/folders?$top=100&$expand="
                 "singleValueExtendedProperties($filter=id eq 'Integer 0x3601')")  # fmt: skip
    assert r.status_code == 200, r.text
    folders = {f["displayName"]: f for f in r.json()["value"]}
    inbox = folders["Inbox"]
    root = inbox["parentFolderId"]
    search = folders["Numbers"]
    assert {"Recoverable Items", "Finder", "Numbers", "Calendar"} <= set(folders)
    assert props_of(search) == {"integer 0x3601": "2"} and props_of(inbox) == {
        "integer 0x3601": "1"
    }
    assert (
        search["parentFolderId"] != root and folders["Recoverable Items"]["parentFolderId"] != root
    )
    assert search["totalItemCount"] == 3
    found = sorted(i["id"] for i in io_items(http, mbx, search["id"]))
    assert found == sorted(i["id"] for i in io_items(http, mbx))
    mail_names = {f["displayName"] for f in
                  http.get(f"users/{src.id}/mailFolders?$top=100").json()["value"]}  # fmt: skip
    assert "Numbers" not in mail_names and "Finder" not in mail_names


def test_import_url_is_the_v1_form(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """createImportSession hands out .../api/gv1.0/Mailboxes('MBX:...')/importItem?authtoken=..., charged to that mailbox."""
    dst = mailboxes(sandbox, "target")[0]
    http = graph_http(conn, "target")
    mbx = mailbox_id(http, dst)
    url = http.post(f"admin/exchange/mailboxes/{mbx}/createImportSession").json()["importUrl"]
    assert f"/api/gv1.0/Mailboxes('{mbx}')/importItem?authtoken=" in url
    assert mailbox_of(url) == mbx


def test_extended_properties_identify_an_item_across_import(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """Message-ID, search key and subject come back through $expand on both sides; the copy gets a new createdDateTime and size; content-type is readable for the IRM/S-MIME check."""
    src = mailboxes(sandbox, "source")[0]
    dst = mailboxes(sandbox, "target")[0]
    seed(sandbox, src, 1)
    src_http, dst_http = graph_http(conn, "source"), graph_http(conn, "target")
    src_mbx, dst_mbx = mailbox_id(src_http, src), mailbox_id(dst_http, dst)
    (item,) = io_items(src_http, src_mbx, query="&" + IDENTITY_PROPS)
    props = props_of(item)
    assert props["string 0x1035"] == "<io-0@partner.example>"
    assert props["string 0x0037"] == "Quarterly «numbers» 0" and props["binary 0x300b"]
    one = src_http.get(
        f"admin/exchange/mailboxes/{src_mbx}/folders/inbox/items/{item['id']}?$expand="
        f"singleValueExtendedProperties($filter=id eq 'String {PS_INTERNET_HEADERS} Name "
        "content-type')"
    ).json()
    assert next(iter(props_of(one).values())).startswith("multipart/mixed")
    exported = src_http.post(f"admin/exchange/mailboxes/{src_mbx}/exportItems",
                             json={"itemIds": [item["id"]]}).json()["value"][0]  # fmt: skip
    url = dst_http.post(f"admin/exchange/mailboxes/{dst_mbx}/createImportSession").json()
    inbox = dst_http.get(f"admin/exchange/mailboxes/{dst_mbx}/folders/inbox").json()["id"]
    with httpx.Client(verify=tls(conn)) as raw:
        made = raw.post(url["importUrl"], json={"FolderId": inbox, "Mode": "create",
                                                "Data": exported["data"]})  # fmt: skip
    assert made.status_code == 200, made.text
    (copy_,) = io_items(dst_http, dst_mbx, query="&" + IDENTITY_PROPS)
    assert copy_["id"] == made.json()["itemId"] and props_of(copy_) == props
    assert copy_["createdDateTime"] != item["createdDateTime"] and copy_["size"] != item["size"]


@pytest.mark.parametrize(
    "setting",
    ["400 ErrorInvalidRequest", "409 ErrorIrresolvableConflict", "412 PreconditionFailed"],
)
def test_update_with_a_stale_change_key(
    sandbox: Sandbox, conn: dict[str, Any], setting: str
) -> None:
    """importItem Mode: update with a stale ChangeKey answers the configured 4xx (undocumented: a sandbox setting)."""
    sandbox.world.settings.io_update_conflict = setting
    src = mailboxes(sandbox, "source")[0]
    seed(sandbox, src, 1)
    http = graph_http(conn, "source")
    mbx = mailbox_id(http, src)
    (item,) = io_items(http, mbx)
    data = http.post(f"admin/exchange/mailboxes/{mbx}/exportItems",
                     json={"itemIds": [item["id"]]}).json()["value"][0]["data"]  # fmt: skip
    url = http.post(f"admin/exchange/mailboxes/{mbx}/createImportSession").json()["importUrl"]
    inbox = http.get(f"admin/exchange/mailboxes/{mbx}/folders/inbox").json()["id"]
    body = {"FolderId": inbox, "Mode": "update", "Data": data, "ItemId": item["id"]}
    with httpx.Client(verify=tls(conn)) as raw:
        fresh = raw.post(url, json={**body, "ChangeKey": item["changeKey"]})
        assert fresh.status_code == 200, fresh.text
        stale = raw.post(url, json={**body, "ChangeKey": item["changeKey"]})
    status, _, code = setting.partition(" ")
    assert stale.status_code == int(status) and stale.json()["error"]["code"] == code


def test_import_url_rejects_a_bad_token(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """A tampered import URL is refused and stores nothing."""
    dst = mailboxes(sandbox, "target")[0]
    http = graph_http(conn, "target")
    mbx = mailbox_id(http, dst)
    r = http.post(f"admin/exchange/mailboxes/{mbx}/createImportSession")
    assert r.status_code == 200, r.text
    url = r.json()["importUrl"]
    assert "authtoken=" in url and r.json()["expirationDateTime"].endswith("Z")
    inbox_id = http.get(f"admin/exchange/mailboxes/{mbx}/folders/inbox").json()["id"]
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
    values, link = delta_round(http, f"admin/exchange/mailboxes/{mbx}/folders/delta()")
    names = {f["displayName"] for f in values}
    assert {"Inbox", "Sent Items", "Contacts", "Calendar", "Finder", "Deletions"} <= names
    again = http.get(link).json()
    assert again["value"] == [] and "@odata.deltaLink" in again
    below, _ = delta_round(http, f"admin/exchange/mailboxes/{mbx}/folders/inbox/childFolders/delta")
    assert below == []
    http.post(f"admin/exchange/mailboxes/{mbx}/folders/inbox/childFolders",
              json={"displayName": "Sub", "type": "IPF.Note"})  # fmt: skip
    below, _ = delta_round(http, f"admin/exchange/mailboxes/{mbx}/folders/inbox/childFolders/delta")
    assert [f["displayName"] for f in below] == ["Sub"]
    assert "Sub" in {f["displayName"] for f in http.get(link).json()["value"]}

    inbox = http.get(f"admin/exchange/mailboxes/{mbx}/folders/inbox").json()["id"]
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
    assert [store_id(i["id"]) for i in after["value"]] == new


@pytest.mark.parametrize("code", ["SyncStateNotFound", "SyncStateInvalid", "resyncRequired"])
def test_delta_state_expires(sandbox: Sandbox, conn: dict[str, Any], code: str) -> None:
    """Item and folder delta tokens expire on demand and after the configured age: 410 with the configured code, and a new round starts over."""
    sandbox.world.settings.io_sync_state_code = code
    src = mailboxes(sandbox, "source")[0]
    seed(sandbox, src, 2)
    http = graph_http(conn, "source")
    mbx = mailbox_id(http, src)
    items = f"admin/exchange/mailboxes/{mbx}/folders/inbox/items/delta"
    folders = f"admin/exchange/mailboxes/{mbx}/folders/delta"
    links = [delta_round(http, u)[1] for u in (items, folders)]
    sandbox.world.expire_sync_states()
    for link in links:
        r = http.get(link)
        assert r.status_code == 410 and r.json()["error"]["code"] == code
    fresh = http.get(items).json()
    assert len(fresh["value"]) == 2
    sandbox.world.settings.sync_state_max_age_s = 0.0
    r = http.get(fresh["@odata.deltaLink"])
    assert r.status_code == 410 and r.json()["error"]["code"] == code
    assert http.get(items.rsplit("/", 1)[0] + "/delta?$deltatoken=nonsense").status_code == 410


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
