"""Reconciliation: per folder, what the source holds against what the target holds.

After every pass, per target folder: the source items that map to it (the source store's
total of each source folder), the target store's total, and what the journal explains
(items skipped and reported, items still pending outside the pass window, copies kept
after a source deletion). Whatever is left is an unexplained difference; the cutover pass
waits on one beyond `[migration] reconcile_tolerance`. Skipped items are listed with their
folder, subject and reason.

Bytes too, where both stores report a folder's size (CodeTwo's step 7 compares counts and
sizes): `source_bytes` and `target_bytes` per target folder, None where a store cannot
say. An IMAP store can (STATUS SIZE, RFC 8438, or the sum of RFC822.SIZE:
`ImapStore.folder_totals`); Microsoft Graph v1.0 cannot: its `mailFolder` and
`mailboxFolder` have item counts but no size property (graph-v1.0 CSDL, /work/shared/spec),
and the product relies on nothing the contract lacks. Bytes are shown, never gated on:
the same message is a different number of bytes in another store (Exchange re-renders
MIME), so only counts decide the cutover gate.

Once a user has cut over, the target mailbox is the live one: mail delivered there is new,
not a difference, so a surplus in the target is then reported as `arrived_in_target` and
left out of the unexplained count (a shortfall still counts). A rolled-back user's target
keeps what it received while it was live (rollback moves no mail), so the same holds after
a rollback. Before its first cutover the target keeps nothing of its own (it forwards back
to the source), so a surplus there would mean a copy made twice and counts in full.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from coexist.engine.context import Context
from coexist.migrate.folders import join_path
from coexist.migrate.sync import NOT_KEPT
from coexist.model import Phase
from coexist.settings import toml_value

if TYPE_CHECKING:
    from collections import Counter

    from coexist.migrate.passes import PassResult
    from coexist.migrate.sync import Plan


class Sized(Protocol):
    """What a folder total of a store that reports sizes has (`stores.imap.FolderTotal`)."""

    @property
    def size(self) -> int: ...


@runtime_checkable
class SizedStore(Protocol):
    """A store that reports each folder's bytes (the IMAP store), beside the protocol's
    `totals` (counts only)."""

    async def folder_totals(self) -> Mapping[str, Sized]: ...


# Bytes per folder id, of the source and the target store: None where a store cannot say.
Sizes = tuple[dict[str, int] | None, dict[str, int] | None]


async def folder_bytes(store: object) -> dict[str, int] | None:
    """Bytes per folder id where the store reports them (`SizedStore`), else None."""
    if not isinstance(store, SizedStore):
        return None
    return {folder: int(t.size) for folder, t in (await store.folder_totals()).items()}


async def sizes(src: object, tgt: object) -> Sizes:
    """Both stores' bytes per folder (each None where that store cannot say)."""
    return await folder_bytes(src), await folder_bytes(tgt)


async def reconcile(
    ctx: Context,
    key: str,
    plan: Plan,
    target_totals: dict[str, int],
    folder_sizes: Sizes = (None, None),
) -> dict[str, Any]:
    """Compare both sides, store the result on the user's item detail and return it.

    `target_totals` (target folder id -> item count) comes from the target store, through
    the API whose ids the plan holds; `folder_sizes` the bytes of both stores' folders,
    where they report them (`sizes`)."""
    source_sizes, target_sizes = folder_sizes
    journal = ctx.journal.item_map_counts(key)
    user = ctx.journal.get_item("user", key) or {}
    live = user.get("phase") in (Phase.CUTOVER.value, Phase.ROLLED_BACK.value)
    groups: dict[str, dict[str, Any]] = {}
    for f in plan.source:
        dest = plan.target_of.get(f.id)
        if dest is None:
            continue
        per = journal.get(f.id, {})
        g = groups.setdefault(
            dest,
            {
                "folders": [],
                "source": 0,
                "skipped": 0,
                "pending": 0,
                "gone": 0,
                "bytes": 0,
                "source_bytes": 0,
            },
        )
        g["folders"].append("/".join(f.path))
        g["source"] += f.total
        g["skipped"] += per.get("skipped", 0)
        g["pending"] += per.get("pending", 0) + per.get("importing", 0)
        g["gone"] += per.get("gone", 0)
        g["bytes"] += per.get("copied_bytes", 0) + per.get("changed_bytes", 0)
        if source_sizes is not None:
            g["source_bytes"] += source_sizes.get(f.id, 0)
    rows = []
    for dest, g in groups.items():
        target = target_totals.get(dest, 0)
        expected = g["source"] - g["skipped"] - g["pending"] + g["gone"]
        arrived = max(0, target - expected) if live else 0
        rows.append(
            {
                "source_folders": g["folders"],
                "source_items": g["source"],
                "target_items": target,
                "skipped": g["skipped"],
                "pending": g["pending"],
                "deleted_at_source": g["gone"],
                "copied_bytes": g["bytes"],
                "source_bytes": g["source_bytes"] if source_sizes is not None else None,
                "target_bytes": target_sizes.get(dest, 0) if target_sizes is not None else None,
                "arrived_in_target": arrived,
                "difference": target - expected - arrived,
            }
        )
    report = {
        "folders": rows,
        "unexplained": sum(abs(r["difference"]) for r in rows),
        "skipped_items": [
            {
                "folder": _folder_name(plan, s["source_folder_id"]),
                "subject": s["subject"],
                "reason": s["reason"],
            }
            for s in ctx.journal.skipped_items(key)
        ],
        # Copied, but without part of their state (the replied/forwarded state a target
        # refused or ignored: sync.NOT_KEPT): not skipped, listed the same way.
        "not_kept_items": [
            {
                "folder": _folder_name(plan, s["source_folder_id"]),
                "subject": s["subject"],
                "reason": s["reason"],
            }
            for s in ctx.journal.mapped_items(key, status="copied", reason_prefix=NOT_KEPT)
        ],
    }
    # A planned pass's journal keeps this in its scratch copy of the user (`planpass`).
    ctx.journal.merge_item("user", key, detail={"reconciliation": report})
    return report


def pass_result(
    ctx: Context,
    kind: str,
    plan: Plan,
    report: dict[str, Any],
    counts: Counter[str],
    notes: list[str],
    *,
    subject: str | None = None,
) -> PassResult:
    """A mover's pass outcome from its counts and reconciliation: the detail line (with the
    mover's own `notes`, and how to move a folder the target refused) and the cutover gate,
    the same for every mover."""
    from coexist.migrate.passes import PassResult

    counts["pending"] = sum(f["pending"] for f in report["folders"])
    counts["difference"] = report["unexplained"]
    detail = (
        f"{kind} pass: {counts['copied']} copied, {counts['updated']} updated, "
        f"{counts['skipped']} skipped, {counts['moved']} moved"
    )
    if plan.skipped_folders:
        detail += f"; folders not moved: {', '.join(plan.skipped_folders)}"
        if plan.by_rules:
            detail += f" ({refused_folders_hint(ctx, kind, plan, subject)})"
    detail += "".join(f"; {n}" for n in notes)
    folders = {f.id: "/".join(f.path) for f in plan.source}
    if kind == "cutover" and report["unexplained"] > ctx.project.migration.reconcile_tolerance:
        # Cutover gate: an unexplained difference keeps the user on the source.
        detail += f"; reconciliation: {report['unexplained']} items unexplained"
        return PassResult("waiting", detail, counts=dict(counts), folders=folders)
    return PassResult("ok", detail, counts=dict(counts), folders=folders)


# What the example rename of a refused folder replaces: hierarchy delimiters of common
# servers ("/" and "."), and "\\", which a rule's replacement would read as an escape.
_UNSAFE_IN_NAME = re.compile(r"[/.\\]+")
# The command that runs a pass of each kind again (journal PASS_KINDS).
PASS_COMMANDS = {"prestage": "prestage", "cutover": "cutover", "trial": "prestage --trial"}


def refused_folders_hint(ctx: Context, kind: str, plan: Plan, subject: str | None) -> str:
    """What to do about source folders the target refused to create (a name it cannot
    hold, e.g. its hierarchy delimiter inside a name: "a/b" on a "/" server): a
    `[migration] folder_rules` entry renaming each (the first one's as the example: a regex
    matching its path text exactly, folders.join_path, with "/", "\\" and "." made "-"),
    then the pass again. Their items stay in the source meanwhile: nothing is lost."""
    first = plan.skipped_folders[0]
    path = next((f.path for f in plan.source if "/".join(f.path) == first), (first,))
    text = join_path(path)
    renamed = _UNSAFE_IN_NAME.sub("-", "/".join(path))
    example = toml_value(f"^{re.escape(text)}$->{renamed}")
    item = ctx.journal.get_item("user", subject) if subject else None
    who = str((item or {}).get("source_address") or subject or "USER")
    where = getattr(ctx.project, "file", "project.toml")
    them, their = ("them", "their") if len(plan.skipped_folders) > 1 else ("it", "its")
    return (
        f"the target refused {them}; {their} mail stays in the source: rename each with a "
        f"[migration] folder_rules entry in {where}, e.g. folder_rules = [{example}] (keep "
        f"the rules already there), then run coexist {PASS_COMMANDS.get(kind, kind)} "
        f"--users {who}"
    )


def _folder_name(plan: Plan, folder_id: str) -> str:
    found = next((f for f in plan.source if f.id == folder_id), None)
    return "/".join(found.path) if found else folder_id
