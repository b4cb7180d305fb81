"""The fallback mover: Microsoft Graph's mail, contacts, calendar and To Do APIs.

For tenants where the mailbox import/export API (`migrate.stores.graph_io`) is not available.

Mail is the sync algorithm (`migrate.sync`) between two mail API stores
(`migrate.stores.graph_items.GraphItemsStore`): scan by message delta, moves by the mail
API's move, copy as MIME plus the state MIME does not carry in one JSON create, update by
PATCH of that state, recovery of an interrupted copy by deleting the partial copy (found by
its stamp) and copying again; see that module for each Graph spelling. Deletions are
reported (`deletions = keep`) or mirrored, for every kind below too.

Contacts, calendar events and To Do tasks: the same sync algorithm, once per class, between
two stores of that class (`migrate.stores.graph_pim.GraphPimStore`): every folder/calendar/
list is listed in full each pass (these APIs have no per-folder delta in the sandbox's
faces: cursor style "listing"); new items are created in the matching target folder
(default -> default, others by name, created when missing: `caps.folder_rules` False) and
recorded in item_map with kind contact / event / task; changed ones are PATCHed; vanished
ones are reported as deletions. A recurring series is created from its master (with its
recurrence), then each exception is PATCHed onto the matching occurrence and each cancelled
occurrence is deleted; a copy an interrupted pass left is adopted by its stamp and
completed (`caps.completes_on_update`). The pass window applies to mail only: PIM items
move in full with the pre-stage pass, so the calendar is complete before cutover.

Identity (what recognises a copy a killed pass left behind; never delivery time, subject or
size, which Microsoft does not promise to keep): every copy carries its source item's id,
stamped in its create request, as the named extended property IDENTITY_PROP on messages,
contacts and events, and as a linkedResource (applicationName TASK_APP, externalId) on To Do
tasks, which have no extended properties (resources/todotask). A message copy also carries
the source's Internet Message-ID (`internetMessageId`, set on create). An interrupted copy
is found with `$filter` on the target folder (by Message-ID and by stamp), and an item is
taken as ours only if its own stamp says so when read back; items other rows map are never
touched. Filters Graph does not document (contacts, a calendar's events, task links:
sandbox/graph/outlook_items.UNVERIFIED_FILTERS) fall back, when refused, to reading the
stamp of every unmapped item in the folder.

Not reproduced (documented gaps of this API surface, which the full-fidelity mover keeps):
MIME byte identity (Exchange renders its own MIME from the properties), internet headers
other than `x-` ones (resources/internetmessageheader), attendees of events (creating an
event with attendees sends them invitations, user-post-events). Events copied without their
attendees are counted (`events_without_attendees`) and named in the pass detail, never
dropped silently. To Do checklists are copied entry by entry.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from typing import Any

from coexist.engine.context import Context
from coexist.migrate import sync
from coexist.migrate.passes import MOVERS, PassResult, Window
from coexist.migrate.stores.graph import Box
from coexist.migrate.stores.graph_items import (
    DELTA_PAGE as DELTA_PAGE,  # re-exported: tests/e2e/test_items_mover.py reads it here
)
from coexist.migrate.stores.graph_items import (
    IDENTITY_PROP as IDENTITY_PROP,  # re-exported with the helpers below (unit tests)
)
from coexist.migrate.stores.graph_items import (
    GraphItemsStore,
)
from coexist.migrate.stores.graph_items import odata_string as odata_string
from coexist.migrate.stores.graph_items import stamp_filter as stamp_filter
from coexist.migrate.stores.graph_items import stamp_of as stamp_of
from coexist.migrate.stores.graph_items import update_conflict as update_conflict
from coexist.migrate.stores.graph_pim import PIM_CLASSES, GraphPimStore, PimClass
from coexist.migrate.sync import handle_deletions
from coexist.provisioning.convert import target_id
from coexist.tenants.graph import GraphAdapter
from coexist.tenants.protocols import MAIL_CLASS

# -- deletions -------------------------------------------------------------------------------------

# Item class (mailboxItem.type, MS-OXCMSG PidTagMessageClass) -> the fallback mover's kind.
_KIND_OF_CLASS = {"ipm.contact": "contact", "ipm.appointment": "event", "ipm.task": "task"}


def kind_of(kind: str) -> str:
    """The item family of a recorded kind: mail, contact, event or task."""
    low = kind.lower()
    if low in ("mail", "contact", "event", "task"):
        return low
    if low.startswith("ipm.note"):
        return "mail"  # IPM.Note and its subclasses (S/MIME, voicemail...)
    return _KIND_OF_CLASS.get(low, low)


# Each item family's item URL (user id, folder id, item id); the PIM classes' are spelled
# in stores/graph_pim.
ITEM_PATHS: dict[str, Callable[[str, str, str], str]] = {
    "mail": lambda u, f, i: f"users/{u}/messages/{i}",
    **{c.kind: c.item for c in PIM_CLASSES},
}


def delete_path(row: dict[str, Any], user: str) -> str | None:
    """The Graph URL that deletes the target copy of `row`, or None for an unknown kind."""
    path = ITEM_PATHS.get(kind_of(str(row["kind"] or "mail")))
    if path is None:
        return None
    return path(user, str(row["target_folder_id"]), str(row["target_item_id"]))


async def delete_copy(graph: GraphAdapter, user: str, row: dict[str, Any]) -> bool:
    """Delete a row's target copy through the Graph API of its kind (False: an unknown kind,
    left `gone` in the item map)."""
    path = delete_path(row, user)
    if path is None:
        return False
    await graph.send("DELETE", path)
    return True


# -- the mover -------------------------------------------------------------------------------------


class ItemsMover:
    """`[migration] mover = "graph-items"`."""

    async def run(self, ctx: Context, subject: str, kind: str, window: Window) -> PassResult:
        from coexist.migrate import reconcile

        if kind == "cutover":
            window = Window()  # the cutover pass moves everything not yet moved
        src = GraphItemsStore(Box(ctx.source.graph, subject, ""), planning=ctx.planning)
        tgt = GraphItemsStore(Box(ctx.target.graph, target_id(ctx, subject), ""))
        counts: Counter[str] = Counter()
        # Mail rows only here: contacts, events and tasks are moved by their own stores.
        plan, stores = await sync.sync_mailbox(ctx, subject, src, tgt, window, counts, MAIL_CLASS)
        conflicts = list(stores.conflicts)
        every = [stores]
        for cls in PIM_CLASSES:
            every.append(await _move_pim(ctx, subject, (src.box, tgt.box), cls, counts))
            conflicts += every[-1].conflicts
        await handle_deletions(
            ctx, subject, counts, lambda r: delete_copy(tgt.box.graph, tgt.box.user_id, r)
        )
        report = await reconcile.reconcile(ctx, subject, plan, await tgt.totals())
        notes = []
        if counts["events_without_attendees"]:
            notes.append(
                f"{counts['events_without_attendees']} events copied without their attendees"
                " (Graph would invite them; graph-import-export keeps them)"
            )
        if note := sync.conflicts_note(conflicts):
            notes.append(note)
        notes += [n for s in every for n in dict.fromkeys(s.notes)]
        result = reconcile.pass_result(ctx, kind, plan, report, counts, notes, subject=subject)
        return dataclasses.replace(result, events=sync.events_said(ctx, subject, *every))


async def _move_pim(
    ctx: Context, subject: str, boxes: tuple[Box, Box], cls: PimClass, counts: Counter[str]
) -> sync.Stores:
    """One PIM class with the sync algorithm, over its rows only (kind contact, event or
    task) and without a pass window (PIM items move in full with the pre-stage pass, so the
    calendar is complete before cutover); its copies counted as `<kind>s_copied` too.
    Returns its stores (the names of the items whose update the target refused, events)."""
    src, tgt = GraphPimStore(boxes[0], cls), GraphPimStore(boxes[1], cls)
    got: Counter[str] = Counter()
    _, stores = await sync.sync_mailbox(ctx, subject, src, tgt, Window(), got, cls.kind)
    counts.update(got + tgt.counts)
    counts[f"{cls.kind}s_copied"] += got["copied"]
    return stores


MOVERS["graph-items"] = ItemsMover()
