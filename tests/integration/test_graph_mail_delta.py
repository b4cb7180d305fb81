"""Graph message delta over HTTPS: first round in pages, then exactly the changes since."""

from __future__ import annotations

import asyncio
from typing import Any

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
