"""Items deleted at the source since they were copied: reported, or mirrored into the target.

`[migration] deletions = "keep"` (default) only counts them; `"mirror"` deletes each copy
through the API its mover copied it with (the Graph API of its kind for graph-items, the
import/export API's item delete for graph-import-export). Both movers record a copied item's kind: the fallback
mover as mail/contact/event/task, the import/export mover as the item class.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any

from coexist.engine.context import Context
from coexist.errors import NotFound
from coexist.tenants.graph import GraphAdapter

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


# Each item family's item URL (user id, folder id, item id): the one place it is spelled;
# the fallback mover's kinds (items.CONTACTS/EVENTS/TASKS) use these too.
# *unverified* for To Do: that a task's list id is the id of the mailbox folder it sits in
# (the sandbox serves one id space).
ITEM_PATHS: dict[str, Callable[[str, str, str], str]] = {
    "mail": lambda u, f, i: f"users/{u}/messages/{i}",
    "contact": lambda u, f, i: f"users/{u}/contacts/{i}",
    "event": lambda u, f, i: f"users/{u}/events/{i}",
    "task": lambda u, f, i: f"users/{u}/todo/lists/{f}/tasks/{i}",
}


def delete_path(row: dict[str, Any], user: str) -> str | None:
    """The Graph URL that deletes the target copy of `row`, or None for an unknown kind."""
    path = ITEM_PATHS.get(kind_of(str(row["kind"] or "mail")))
    if path is None:
        return None
    return path(user, str(row["target_folder_id"]), str(row["target_item_id"]))


async def handle_deletions(
    ctx: Context,
    key: str,
    graph: GraphAdapter,
    user: str,
    counts: Counter[str],
    path_of: Callable[[dict[str, Any]], str | None] | None = None,
) -> None:
    """Source deletions: reported (keep) or mirrored into the target (mirror).

    `path_of` gives the URL that deletes a row's copy; by default the Graph API of its kind
    (the graph-items mover's ids). The import/export mover passes its own: its copies have
    that API's ids, which the mail/contacts/calendar/To Do APIs do not know."""
    gone = ctx.journal.mapped_items(key, status="gone")
    counts["deleted_at_source"] = len(gone)
    if ctx.project.migration.deletions != "mirror":
        return
    for r in gone:
        path = None
        if r["target_item_id"]:
            path = path_of(r) if path_of is not None else delete_path(r, user)
        if path is None:
            counts["not_mirrored"] += 1  # stays `gone` in the item map: visible, not lost
            continue
        with contextlib.suppress(NotFound):  # already gone in the target
            await graph.send("DELETE", path)
        if not ctx.planning:
            ctx.journal.unmap_item(key, r["source_item_id"])
            counts["deleted_in_target"] += 1
