"""Graph message delta over HTTPS: first round in pages, then exactly the changes since."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import httpx
import pytest
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.models.mail_folder import MailFolder
from msgraph.generated.models.message import Message
from msgraph.generated.users.item.mail_folders.item.messages.delta.delta_get_response import (
    DeltaGetResponse,
)
from msgraph.generated.users.item.mail_folders.item.messages.delta.delta_request_builder import (
    DeltaRequestBuilder,
)
from msgraph.generated.users.item.messages.item.move.move_post_request_body import (
    MovePostRequestBody,
)

from coexist.sandbox import Sandbox
from coexist.sandbox.graph.mail_delta import EXPIRED_ANSWERS, expire_after_pages
from coexist.sandbox.mailstore import iso
from coexist.sandbox.model import User
from tests.clients import graph_client, graph_http
from tests.integration.test_graph_mail_write import mailbox, sample_mime


async def delta_round(
    builder: DeltaRequestBuilder, page_size: int, select: str | None = None
) -> tuple[list[Message], str, int]:
    """Follow nextLinks to the deltaLink: (items, deltaLink, pages)."""
    config: RequestConfiguration[Any] = RequestConfiguration()
    config.headers.add("Prefer", f"odata.maxpagesize={page_size}")
    if select:
        config.query_parameters = DeltaRequestBuilder.DeltaRequestBuilderGetQueryParameters(
            select=[select]
        )
    items: list[Message] = []
    pages = 0
    page: DeltaGetResponse | None = await builder.get(config)
    while True:
        assert page is not None
        pages += 1
        items += page.value or []
        if page.odata_delta_link:
            return items, page.odata_delta_link, pages
        assert page.odata_next_link and "$skiptoken=" in page.odata_next_link
        nxt: RequestConfiguration[Any] = RequestConfiguration()
        nxt.headers.add("Prefer", f"odata.maxpagesize={page_size}")
        page = await builder.with_url(page.odata_next_link).get(nxt)


def removed(m: Message) -> bool:
    return "@removed" in (m.additional_data or {})


def test_delta_initial_then_incremental(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """First round pages all items; later rounds return exactly adds, updates, moves, deletes."""
    user: User = mailbox(sandbox)
    items = [sandbox.mail.deliver("source", user.id, sample_mime(f"d{n}")) for n in range(5)]

    async def run() -> None:
        client = graph_client(conn, "source")
        folders = client.users.by_user_id(user.id).mail_folders
        inbox = folders.by_mail_folder_id("inbox").messages.delta
        archive = folders.by_mail_folder_id("archive").messages.delta
        first, link, pages = await delta_round(inbox, 2, select="subject,isRead")
        assert pages == 3 and "$deltatoken=" in link
        assert sorted(m.id or "" for m in first) == sorted(i.id for i in items)
        assert all(m.subject and m.body is None for m in first)  # $select kept in the links
        _, archive_link, _ = await delta_round(archive, 10)
        quiet = await inbox.with_url(link).get()
        assert quiet is not None and quiet.value == [] and quiet.odata_delta_link

        added = sandbox.mail.deliver("source", user.id, sample_mime("late"))
        messages = client.users.by_user_id(user.id).messages
        await messages.by_message_id(items[0].id).patch(Message(is_read=True))
        moved = await messages.by_message_id(items[1].id).move.post(
            MovePostRequestBody(destination_id="archive")
        )
        await messages.by_message_id(items[2].id).delete()
        assert moved is not None

        changed = await inbox.with_url(link).get()
        assert changed is not None and changed.odata_delta_link
        got = {(m.id, removed(m)) for m in changed.value or []}
        assert got == {
            (added.id, False),
            (items[0].id, False),
            (items[1].id, True),
            (items[2].id, True),
        }
        (update,) = [m for m in changed.value or [] if m.id == items[0].id]
        assert update.is_read is True and update.subject == "d0"
        gone = [m for m in changed.value or [] if removed(m)]
        assert all(m.additional_data["@removed"] == {"reason": "deleted"} for m in gone)

        arrived = await archive.with_url(archive_link).get()
        assert arrived is not None and [m.id for m in arrived.value or []] == [moved.id]
        again = await inbox.with_url(changed.odata_delta_link).get()
        assert again is not None and again.value == []

    asyncio.run(run())


def test_bad_delta_token_is_sync_state_not_found(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """A token Graph never issued (or one for another folder) is 410 SyncStateNotFound."""
    user = mailbox(sandbox)
    with graph_http(conn, "source") as http:
        base = f"users/{user.id}/mailFolders"
        r = http.get(f"{base}/inbox/messages/delta")
        assert r.status_code == 200, r.text
        link = r.json()["@odata.deltaLink"]
        bad = http.get(f"{base}/inbox/messages/delta", params={"$deltatoken": "bm90LWEtdG9rZW4"})
        assert bad.status_code == 410
        assert bad.json()["error"]["code"] == "SyncStateNotFound"
        token = link.split("$deltatoken=")[1]
        other = http.get(f"{base}/archive/messages/delta", params={"$deltatoken": token})
        assert other.status_code == 410


def test_folder_delta_reports_new_folders(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """mailFolders/delta lists the top-level folders, then only folders created since."""
    user = mailbox(sandbox)

    async def run() -> None:
        client = graph_client(conn, "source")
        folders = client.users.by_user_id(user.id).mail_folders
        first = await folders.delta.get()
        assert first is not None and first.odata_delta_link
        names = {f.display_name for f in first.value or []}
        assert {"Inbox", "Sent Items", "Drafts", "Deleted Items", "Archive"} <= names
        top = await folders.post(MailFolder(display_name="Clients/2024"))
        assert top is not None and top.id
        child_round = await folders.by_mail_folder_id(top.id).child_folders.delta.get()
        assert child_round is not None and child_round.value == []
        assert child_round.odata_delta_link
        await folders.by_mail_folder_id(top.id).child_folders.post(MailFolder(display_name="Ä"))
        later = await folders.delta.with_url(first.odata_delta_link).get()
        assert later is not None and [f.display_name for f in later.value or []] == ["Clients/2024"]
        kids = (
            await folders.by_mail_folder_id(top.id)
            .child_folders.delta.with_url(child_round.odata_delta_link)
            .get()
        )
        assert kids is not None and [f.display_name for f in kids.value or []] == ["Ä"]

    asyncio.run(run())


# -- $filter, the 5,000 cap, $top, expiry ---------------------------------------------------------

T0 = dt.datetime(2024, 3, 1, 8, 0, tzinfo=dt.UTC)


def follow(
    http: httpx.Client, url: str, params: dict[str, str] | None = None, page: int | None = None
) -> tuple[list[dict[str, Any]], str, int]:
    """One delta round over raw HTTPS: (values, deltaLink, pages)."""
    headers = {"Prefer": f"odata.maxpagesize={page}"} if page else {}
    r = http.get(url, params=params, headers=headers)
    values: list[dict[str, Any]] = []
    pages = 0
    while True:
        assert r.status_code == 200, r.text
        body = r.json()
        values += body["value"]
        pages += 1
        if "@odata.deltaLink" in body:
            return values, body["@odata.deltaLink"], pages
        r = http.get(body["@odata.nextLink"], headers=headers)


def test_delta_filter_is_received_ge_or_gt_only(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """Only `receivedDateTime ge|gt <time>` is a delta filter (others: 400 ErrorInvalidUrlQuery);
    it keeps what arrived from then on, in the first round and the later ones."""
    user = mailbox(sandbox)
    times = [T0 + dt.timedelta(hours=n) for n in range(4)]
    made = [
        sandbox.mail.insert_message("source", user.id, "inbox", sample_mime(f"f{n}"), received=t)
        for n, t in enumerate(times)
    ]
    url = f"users/{user.id}/mailFolders/inbox/messages/delta"
    with graph_http(conn, "source") as http:
        for bad in (
            "isRead eq false",
            "receivedDateTime lt 2024-03-01T10:00:00Z",
            "receivedDateTime ge 2024-03-01T10:00:00Z and isRead eq false",
            "subject eq 'f1'",
        ):
            r = http.get(url, params={"$filter": bad})
            assert r.status_code == 400, (bad, r.text)
            error = r.json()["error"]
            assert error["code"] == "ErrorInvalidUrlQuery"
            assert "only a value of 'receivedDateTime ge value' is supported" in error["message"]
        ge, _, _ = follow(http, url, {"$filter": "receivedDateTime ge 2024-03-01T10:00:00Z"})
        assert {m["id"] for m in ge} == {made[2].id, made[3].id}
        gt, link, _ = follow(http, url, {"$filter": "receivedDateTime gt 2024-03-01T10:00:00Z"})
        assert {m["id"] for m in gt} == {made[3].id}
        late = sandbox.mail.insert_message(
            "source", user.id, "inbox", sample_mime("late"), received=T0 + dt.timedelta(days=1)
        )
        early = sandbox.mail.insert_message(
            "source", user.id, "inbox", sample_mime("early"), received=T0
        )
        sandbox.mail.delete_message("source", user.id, made[3].id)
        changes, _, _ = follow(http, link)
        assert {(m["id"], "@removed" in m) for m in changes} == {
            (late.id, False),
            (made[3].id, True),
        }, early.id


def test_filtered_round_stops_at_5000_and_never_reports_the_rest(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """A filtered first round returns 5,000 messages (the newest) and a deltaLink; the
    matching ones it left out are not reported later. Unfiltered, every message comes."""
    user = mailbox(sandbox)
    newer, older = T0 + dt.timedelta(days=2), T0 + dt.timedelta(days=1)
    store = sandbox.mail
    store.insert_copies("source", user.id, "inbox", sample_mime("older"), 3000, received=older)
    store.insert_copies("source", user.id, "inbox", sample_mime("newer"), 3000, received=newer)
    store.insert_copies("source", user.id, "inbox", sample_mime("before"), 20, received=T0)
    url = f"users/{user.id}/mailFolders/inbox/messages/delta"
    select = {"$select": "receivedDateTime"}
    flt = {**select, "$filter": "receivedDateTime ge 2024-03-01T12:00:00Z"}
    with graph_http(conn, "source") as http:
        capped, link, pages = follow(http, url, flt, page=1000)
        assert len(capped) == 5000 and pages == 5
        by_time: dict[str, int] = {}
        for m in capped:
            by_time[m["receivedDateTime"]] = by_time.get(m["receivedDateTime"], 0) + 1
        assert by_time == {iso(newer): 3000, iso(older): 2000}
        fresh = store.insert_message(
            "source", user.id, "inbox", sample_mime("fresh"), received=newer
        )
        later, _, _ = follow(http, link, page=1000)
        assert [m["id"] for m in later] == [fresh.id]
        everything, _, _ = follow(http, url, select, page=1000)
        assert len(everything) == 6021


def test_top_does_not_size_delta_pages(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """`$top` is accepted and ignored: pages are the default size unless Prefer sets one."""
    user = mailbox(sandbox)
    for n in range(12):
        sandbox.mail.deliver("source", user.id, sample_mime(f"t{n}"))
    url = f"users/{user.id}/mailFolders/inbox/messages/delta"
    with graph_http(conn, "source") as http:
        first = http.get(url, params={"$top": "2"})
        assert first.status_code == 200, first.text
        assert len(first.json()["value"]) == 10 and "@odata.nextLink" in first.json()
        sized = http.get(url, params={"$top": "2"}, headers={"Prefer": "odata.maxpagesize=5"})
        assert len(sized.json()["value"]) == 5
        assert sized.headers["Preference-Applied"] == "odata.maxpagesize=5"


def expired_answer(r: httpx.Response, answer: str, initial: str) -> None:
    """`r` is the sandbox's expiry answer `answer` (Settings.mail_delta_expired_answer)."""
    assert r.status_code == 410, r.text
    assert r.json()["error"]["code"] == answer
    if answer == "resyncRequired":
        # delta-query-overview, "Synchronization reset": the initial query, empty $deltatoken.
        location = r.headers["Location"]
        assert location.startswith(initial) and location.endswith("$deltatoken=")
    if answer == "SyncStateNotFound":
        assert r.json()["error"]["message"].startswith("The sync state generation is not found")


@pytest.mark.parametrize("answer", EXPIRED_ANSWERS)
def test_sync_state_expires_on_demand_by_age_and_mid_round(
    sandbox: Sandbox, conn: dict[str, Any], answer: str
) -> None:
    """Delta and folder-delta links expire on demand, by age, and mid-round, each answered as
    the setting says; a fresh round (or the resync Location) starts over with everything."""
    sandbox.world.settings.mail_delta_expired_answer = answer
    user = mailbox(sandbox)
    items = [sandbox.mail.deliver("source", user.id, sample_mime(f"e{n}")) for n in range(5)]
    url = f"users/{user.id}/mailFolders/inbox/messages/delta"
    initial = f"{conn['tenants']['source']['graph_url'].rstrip('/')}/{url}"
    with graph_http(conn, "source") as http:
        _, link, _ = follow(http, url, {"$select": "subject"})
        folders = http.get(f"users/{user.id}/mailFolders/delta").json()["@odata.deltaLink"]
        sandbox.world.expire_sync_states()
        expired_answer(http.get(link), answer, initial)
        expired_answer(http.get(folders), answer, initial.replace("/inbox/messages", ""))
        if answer == "resyncRequired":
            restart = http.get(link).headers["Location"]
            again, _, _ = follow(http, restart)
            assert sorted(m["id"] for m in again) == sorted(i.id for i in items)
            assert all(set(m) - {"@odata.type", "@odata.etag"} == {"id", "subject"} for m in again)

        _, link, _ = follow(http, url)
        sandbox.world.settings.sync_state_max_age_s = 0.2
        time.sleep(0.3)
        expired_answer(http.get(link), answer, initial)
        sandbox.world.settings.sync_state_max_age_s = 7 * 86400.0

        assert sandbox.ctx is not None
        expire_after_pages(sandbox.ctx.extra, 1)
        first = http.get(url, headers={"Prefer": "odata.maxpagesize=2"})
        assert first.status_code == 200 and len(first.json()["value"]) == 2
        expired_answer(http.get(first.json()["@odata.nextLink"]), answer, initial)
        whole, _, _ = follow(http, url, page=2)
        assert sorted(m["id"] for m in whole) == sorted(i.id for i in items)
