"""The imap-graph mover: an IMAP account into a Microsoft 365 mailbox (issue 11, D3).

The one sync algorithm (`migrate.sync`) between the user's IMAP mailbox on the source
(`stores.imap.imap_store`: login from the credential vault or the master user) and the
target mailbox through Graph's mail API (`stores.graph_items.GraphItemsStore`). The payload
is MIME plus the IMAP state: \\Seen, \\Flagged and keywords become isRead, the follow-up
flag and categories, INTERNALDATE the delivery time and the Date header the submit time,
and each message is created as a non-draft item (graph_items' JSON create with
PR_MESSAGE_FLAGS; a \\Draft message stays a draft); attachments over 3 MB go through upload
sessions.

Mail only, as the seed guides say (MigrationWiz and CodeTwo IMAP migrations move mail): an
IMAP account holds no contacts, calendars or tasks, so none are moved, and every pass's
detail says so (`MAIL_ONLY`), so that no operator reads an empty calendar as a failure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

from coexist.engine.context import SOURCE_KIND_MOVES, Context
from coexist.errors import InputError, NotFound
from coexist.migrate.passes import MOVERS, PassResult, Window
from coexist.migrate.stores.graph import Box
from coexist.migrate.stores.graph_items import GraphItemsStore
from coexist.migrate.stores.imap import imap_store
from coexist.migrate.sync import StoreMover, StoreOpener
from coexist.tenants.graph import GraphAdapter
from coexist.tenants.protocols import MailboxStore

MOVER = "imap-graph"
MAIL_ONLY = SOURCE_KIND_MOVES["imap"]  # one text: `coexist status` says it too


async def check_target(graph: GraphAdapter, mailbox: str, address: str) -> None:
    """Stop a user whose target mailbox the tenant does not have (a wrong Destination Email)
    with that said, before any folder is read or made: Graph answers 404 ErrorInvalidUser
    for an unknown user (graph/errors); a mailbox still being made up answers
    MailboxNotEnabledForRESTAPI, the adapter's NotReady (the pass waits)."""
    try:
        await graph.send("GET", f"users/{mailbox}/mailFolders/inbox", params={"$select": "id"})
    except NotFound as exc:
        raise InputError(
            f"user {address}: the target tenant has no mailbox {mailbox} ({exc.message})",
            user=address,
            next_step="correct the user's Destination Email in the batch file, run coexist "
            "batch import FILE again, then coexist retry",
        ) from exc


def target_mailbox(ctx: Context, subject: str) -> str:
    """How Graph addresses the user's target mailbox: its object id once known (matched or
    provisioned), else the batch file's destination address as its userPrincipalName
    (user-get: `/users/{id | userPrincipalName}`). *unverified* that the two agree: a
    tenant whose UPNs are not the mail addresses answers 404 for that user, who then waits
    with the error (the mailbox store of a user not in the target at all does the same)."""
    item = ctx.journal.get_item("user", subject) or {}
    found = item.get("target_id") or item.get("target_address")
    if not found:
        address = item.get("source_address") or subject
        raise InputError(
            f"user {address} has no target mailbox: the batch file names no destination "
            "address and no target user is matched",
            user=str(address),
            next_step="coexist batch import FILE (with a Destination Email column), then "
            "run this command again",
        )
    return str(found)


@asynccontextmanager
async def open_stores(
    ctx: Context, subject: str
) -> AsyncIterator[tuple[MailboxStore, MailboxStore]]:
    """A pass's stores for one user: the IMAP source mailbox (closed after the pass) and
    the target mailbox through Graph's mail API."""
    mailbox = target_mailbox(ctx, subject)
    item = ctx.journal.get_item("user", subject) or {}
    await check_target(ctx.target.graph, mailbox, str(item.get("source_address") or subject))
    async with imap_store(ctx, "source", subject) as src:
        yield src, GraphItemsStore(Box(ctx.target.graph, mailbox, ""))


class MailOnlyMover:
    """A `StoreMover` whose every pass says what it does not move (`MAIL_ONLY`)."""

    def __init__(self, open_stores: StoreOpener, note: str = MAIL_ONLY) -> None:
        self.mover = StoreMover(open_stores)
        self.note = note

    async def run(self, ctx: Context, subject: str, kind: str, window: Window) -> PassResult:
        result = await self.mover.run(ctx, subject, kind, window)
        return replace(result, detail=f"{result.detail}; {self.note}")


MOVERS[MOVER] = MailOnlyMover(open_stores)
