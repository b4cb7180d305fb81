"""A planned data pass: the real sync, its writes captured and its journal a scratch copy.

`coexist prestage --plan` (and `cutover --plan`, `prestage --trial --plan`) on a project
whose mover plans passes (`passes.PLANNED_MOVERS`) opens both stores and runs the mover as a
real pass would: folders listed and mapped, each folder's changes read from the cursor the
last real pass saved, moves paired, items inspected and exported. Only two things differ:

- Writes are never sent. The stores are in plan mode (`ctx.plan`: an IMAP store records
  CREATE/APPEND/STORE/MOVE/EXPUNGE, Graph records its POST/PATCH/DELETE) and what they
  record goes to this pass's own list (`tenants.plan.captured`), not to the command's plan:
  one line per message (a Graph POST holds the message's whole body) would bury the plan,
  and mail content has no place in it. The plan shows the pass summed up instead
  (`summary`): per user, the folders it would create, the messages it would copy from each
  source folder to each target folder with their count and bytes, and how many it would
  update (flags), move and delete.
- The journal the pass sees is a `PlanJournal`: its item map and folder cursors are an
  in-memory copy of the user's (the pass starts where the real one would), and whatever
  the pass writes there is dropped with it (the user's reconciliation too: the scratch
  holds a copy of the user's item). Nothing a real pass trusts (item map rows, cursors, a
  pass row, the user's reconciliation) is written to the project's journal;
  any other journal write is refused, so a change to the sync that would write one fails
  loudly here rather than leaking into the project.

Reads cost what the real pass's do: every message the pass would copy is exported (its
bytes read from the source), which is what makes the plan the real code's; a plan of many
large mailboxes is best made for a few users (`--users`) or as a trial (`--trial`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from coexist import progress
from coexist.engine.context import Context
from coexist.journal import Journal, schema
from coexist.journal.db import make_engine
from coexist.tenants.plan import MAIL, PlannedWrite, captured, current_step

PLANNED = "planned:"  # id prefix of a folder a plan-mode store did not create (both stores)
MOVE_MARK = "moving the copy of "  # sync.MOVE_MARK: a moved item's copy, counted as moved

# What a planned pass reads of the project's journal; it writes nothing there.
READS = frozenset(
    {"get_item", "items", "get_setting", "passes", "get_step", "get_steps", "steps", "runs"}
)
# What it reads and writes in its scratch copy: the user's item map and folder cursors, and
# the user's own item (its reconciliation goes into the item's detail, `reconcile`).
SCRATCH = frozenset(
    {
        "merge_item",
        "map_item",
        "map_items",
        "map_items_of",
        "unmap_item",
        "mapped",
        "mapped_many",
        "mapped_items",
        "skipped_items",
        "item_map_counts",
        "get_checkpoint",
        "save_checkpoint",
        "delete_checkpoint",
        "checkpoints",
    }
)


class PlanJournal:
    """The journal as a planned pass of one user sees it (module docstring)."""

    def __init__(self, real: Any, subject: str) -> None:
        self.real = real
        engine = make_engine("sqlite://")
        tables = [schema.items, schema.item_map, schema.folder_state]
        schema.metadata.create_all(engine, tables=tables)
        self.scratch = Journal(engine)
        self.before = {str(r["source_item_id"]): r for r in real.mapped_items(subject)}
        cursors = real.checkpoints(subject)
        user = real.get_item("user", subject)
        with engine.begin() as conn:
            if user is not None:
                conn.execute(sa.insert(schema.items), [user])
            # Ids kept: `mapped_items` answers in insertion order, as the real journal does.
            if self.before:
                conn.execute(sa.insert(schema.item_map), list(self.before.values()))
            if cursors:
                conn.execute(sa.insert(schema.folder_state), cursors)

    def __getattr__(self, name: str) -> Any:
        if name in SCRATCH:
            return getattr(self.scratch, name)
        if name in READS:
            return getattr(self.real, name)
        raise AttributeError(
            f"a planned pass does not call Journal.{name}: it writes nothing a real pass "
            "would trust (migrate.planpass)"
        )

    def close(self) -> None:
        self.scratch.close()


@dataclasses.dataclass(frozen=True)
class Summary:
    """What a planned pass of one user would do."""

    lines: list[PlannedWrite]
    counts: dict[str, int]
    detail: str


async def plan_pass(
    ctx: Context,
    subject: str,
    run: Callable[[Context], Any],
    target_kind: str,
    source_kind: str = "imap",
) -> Summary:
    """Run the pass `run(ctx)` planned (module docstring) and sum up what it would do."""
    journal = PlanJournal(ctx.journal, subject)
    writes: list[PlannedWrite] = []
    token = captured.set(writes)
    try:
        # The pass's progress events (sized, advanced) reach no view: a planned pass moves
        # nothing, and the sync emits them as any pass does (one algorithm, no plan branch).
        with progress.listening(None):
            result = await run(dataclasses.replace(ctx, journal=journal))
        after = journal.scratch.mapped_items(subject)
    finally:
        captured.reset(token)
        journal.close()
    item = ctx.journal.get_item("user", subject) or {}
    who = str(item.get("source_address") or subject)
    # A source folder is named by its id where that is its name (IMAP), else by its path.
    names = {} if source_kind == "imap" else dict(getattr(result, "folders", None) or {})
    return summary(who, journal.before, after, writes, dict(result.counts), target_kind, names)


def _action(w: PlannedWrite) -> tuple[str, str | None]:
    """(what the write does, the folder it creates) for a store's planned write."""
    if w.system == "imap":
        verb = w.operation.rsplit(" ", 1)[0]
        action = {
            "CREATE": "create",
            "APPEND": "copy",
            "UID STORE FLAGS": "update",
            "UID MOVE": "move",
            "UID EXPUNGE": "delete",
        }.get(verb, "other")
        return action, str(w.params.get("folder")) if action == "create" else None
    if w.system == "ews":  # migrate.stores.ews: "<EWS operation> <user>"
        op = w.operation.split(" ", 1)[0]
        if op == "UploadItems":
            return ("update" if w.params.get("mode") == "Update" else "copy"), None
        action = {
            "CreateFolder": "create",
            "CreateItem": "copy",
            "UpdateItem": "update",
            "MoveItem": "move",
            "DeleteItem": "delete",
        }.get(op, "other")
        return action, str(w.params.get("folder")) if action == "create" else None
    method, _, path = w.operation.partition(" ")
    if path.endswith("/createImportSession"):
        return "session", None  # graph_io: the session its imports go through (not said)
    if path == "{importUrl}":  # graph_io: importItem, a new copy or over an existing one
        return ("update" if w.params.get("Mode") == "update" else "copy"), None
    if method == "POST" and path.endswith(("/mailFolders", "/childFolders")):
        return "create", str(w.params.get("displayName") or w.params.get("name"))
    if method == "POST" and path.endswith("/move"):
        return "move", None
    if method == "POST" and path.endswith("/messages"):
        return "copy", None
    if method == "PATCH":
        return "update", None
    if method == "DELETE":
        return "delete", None
    return "other", None


def _n(count: int) -> str:
    return f"{count} message" if count == 1 else f"{count} messages"


def _size(n: int) -> str:
    """Bytes as a reader takes them in (1024 per step)."""
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KB", "MB", "GB"):
        value /= 1024
        if value < 1024 or unit == "GB":
            break
    return f"{value:.1f} {unit}"


def _folder(folder_id: str, target_kind: str) -> str | None:
    """A target folder as the plan names it: a new one by its name, an IMAP one by its name,
    an existing Microsoft 365 one not at all (its id means nothing to a reader)."""
    if folder_id.startswith(PLANNED):
        return folder_id[len(PLANNED) :]
    return folder_id if target_kind == "imap" else None


def summary(
    who: str,
    before: dict[str, dict[str, Any]],
    after: list[dict[str, Any]],
    writes: list[PlannedWrite],
    counts: dict[str, int],
    target_kind: str,
    names: dict[str, str] | None = None,
) -> Summary:
    """The plan lines of one user's pass: folders created, messages copied per (source
    folder, target folder) with their bytes (the item map rows the pass marked copied that
    were not copied before, with a copy the plan made: a planned write answers no item id,
    where a copy the pass adopted, after a move or an interrupted import, has its own), and
    how many updates, moves and deletions its writes hold."""
    copies: dict[tuple[str, str], list[int]] = {}
    # What the pass would skip (size limit, protected mail), per source folder and reason:
    # the real pass lists each with its subject (status's skipped items), the plan counts.
    skips: Counter[tuple[str, str]] = Counter()
    for r in after:
        was = before.get(str(r["source_item_id"]))
        if r["status"] == "skipped" and not (was and was["status"] == "skipped"):
            skips[(str(r["source_folder_id"]), str(r["reason"] or ""))] += 1
        if r["status"] != "copied" or (was and was["status"] in ("copied", "changed")):
            continue
        if r.get("target_item_id") is not None:
            continue  # an existing copy adopted (and updated): said with the updates
        if str(r["reason"] or "").startswith(MOVE_MARK):
            continue  # a moved item: said with the moves
        per = copies.setdefault((str(r["source_folder_id"]), str(r["target_folder_id"])), [0, 0])
        per[0] += 1
        per[1] += int(r["size"] or 0)
    actions: Counter[str] = Counter()
    created: list[str] = []
    for w in writes:
        action, folder = _action(w)
        actions[action] += 1
        if folder is not None:
            created.append(folder)

    lines: list[PlannedWrite] = []
    step = current_step.get()

    def line(text: str, **params: Any) -> None:
        lines.append(PlannedWrite(MAIL, "target", f"{who}: {text}", {"user": who, **params}, step))

    for folder in created:
        line(f"create folder {folder}", action="create folder", folder=folder)
    for (src_id, dest), (n, size) in copies.items():
        src = (names or {}).get(src_id, src_id)
        to = _folder(dest, target_kind)
        line(
            f"copy {_n(n)} ({_size(size)}) from {src}" + (f" to {to}" if to else ""),
            action="copy",
            messages=n,
            bytes=size,
            source_folder=src,
            target_folder=to,
        )
    for (src_id, reason), n in skips.items():
        src = (names or {}).get(src_id, src_id)
        line(
            f"skip {_n(n)} from {src}: {reason}",
            action="skip",
            messages=n,
            source_folder=src,
            reason=reason,
        )
    said = {"update": "update the flags of", "move": "move", "delete": "delete"}
    for action, verb in said.items():
        if actions[action]:
            line(f"{verb} {_n(actions[action])}", action=action, messages=actions[action])
    if actions["other"]:
        line(f"{actions['other']} other writes", action="other", writes=actions["other"])
    copied = sum(n for n, _ in copies.values())
    size = sum(s for _, s in copies.values())
    out = {
        "folders_created": len(created),
        "copied": copied,
        "bytes": size,
        "updated": actions["update"],
        "moved": actions["move"],
        "deleted_in_target": actions["delete"],
        "skipped": int(counts.get("skipped", 0)),
    }
    detail = (
        f"would create {len(created)} folders, copy {_n(copied)} ({_size(size)}), "
        f"update {out['updated']}, move {out['moved']}, delete {out['deleted_in_target']}"
        f"; {out['skipped']} skipped"
    )
    if not_kept := int(counts.get("not_kept", 0)):
        # What the target would not keep of their state (an IMAP folder's PERMANENTFLAGS,
        # read in plan mode too): the real pass lists them; the plan says how many.
        out["not_kept"] = not_kept
        detail += f"; {not_kept} would be copied without part of their state"
    return Summary(lines, out, detail)
