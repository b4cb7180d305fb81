"""The one sync algorithm: a data pass from a source MailboxStore into a target MailboxStore.

Stores (`coexist.tenants.protocols.MailboxStore`, one module per data plane in
`migrate/stores/`) say what a mailbox holds and move bytes; this module decides what to copy
and keeps the journal's item map and per-folder cursors. It never spells a URL.

A pass over one mailbox, and why in this order:

1. Folders: each source folder is mapped to a target folder by the project's rules
   (`migrate.folders`), created in the target when missing.
2. Scan: per mapped source folder, follow the store's change feed from the saved cursor and
   record every reported item in the journal's `item_map` (new -> pending with its identity,
   changed -> changed, removed -> gone); only then save the cursor (a checkpoint never runs
   ahead of the data it covers). A cursor the store says is lost restarts that folder's
   round, mid-round too; what a full round no longer reports is gone. The scan never
   filters by date (a filtered Graph message delta stops at 5,000 messages,
   delta-query-messages): items outside the pass window stay `pending`.
3. Moves: an item moved at the source gets a new id (Exchange ids are per folder, IMAP UIDs
   per mailbox); a pending item whose identity matches exactly one gone, copied item is that
   item moved. It is imported into its new folder like any other, and the old copy deleted
   once the new one is journaled (`finish_moves`); a pass killed in between finishes it on
   the next run.
4. Copy: pending items in the window, in export batches (the source store's `caps`), each
   imported into the mapped target folder (several per call where the target offers
   `BatchImport`) and recorded after (outcomes journaled together, `Sink`); an `importing` mark written for the whole batch before any of its imports is
   sent lets a pass that was killed in between adopt the copy (same identity in the target
   folder) instead of duplicating it. A mailbox the journal holds nothing of yet has nothing
   to move, adopt or settle: its pages are copied as the scan journals them
   (`_scan_and_copy`), steps 2 and 4 overlapping.
5. Update: changed items are re-exported and imported over their copy; a refusal the target
   store calls the item's conflict is reported and the pass goes on.
6. Deletions: gone items are reported (`deletions = keep`) or deleted in the target (mirror).
7. Reconcile: per target folder, source totals against target totals and the journal.

Re-created mailboxes (new mailbox, folder and item ids): a source whose saved cursors name a
mailbox or folders gone (one answers 404, or none of their folders is listed) has them dropped
and is scanned in full; rows of folders no longer listed are settled as gone first, so the
same messages under new ids are matched to their copies by identity (`drop_gone_cursors`,
`settle_vanished`). A target found re-created (`FolderTree.replaced`) has the journal's copies
looked for again by identity; those not found are copied again (`reverify_copies`).

Format: the richest both stores share (`negotiate`): the opaque full-fidelity stream when
both are Exchange, MIME plus typed properties otherwise (`Payload.mime` and `.state`, a
`MessageState`: read, draft, flag, categories, importance, delivery and submit time). An
update exports the state only where the format carries it apart (`export(state_only=True)`:
an IMAP FETCH FLAGS, a Graph GET of the message's state), and the target brings its copy's
state in line; the opaque stream is exported whole and imported over the copy.

What a store can do changes the path, never the algorithm's steps: `caps.moves` (the target
moves a copy, else import + delete), `caps.atomic_import` (an interrupted import's copy is
adopted, else deleted and made again, or, with `caps.completes_on_update`, adopted and
completed by an update), `caps.inspect_before_export` (the skip rules read `inspect` before
the export, else the exported payload's `info` and `size`), `caps.cursor` "listing" (no
change feed: every round lists the folder in full, no cursor is saved, and what a round no
longer lists is gone), `caps.folder_rules` (False: the project's folder rules do not apply;
default folder to default folder, others by path).

Plan mode (`--plan`, `migrate.planpass`) runs this code as it is, with no branch of its own:
the stores record their writes instead of sending them (a planned copy or move answers no
item id, a planned folder a `planned:` id) and read as usual, and the journal the pass
writes is a scratch copy of the user's item map and cursors, dropped after the plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.policy
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.parser import BytesHeaderParser
from typing import Any

from coexist import progress, schedule
from coexist.engine.context import Context
from coexist.errors import ConfigError, InvalidRequest, NotFound, RemoteError
from coexist.migrate.folders import Destination, FolderRules, SourceFolder, map_folder
from coexist.migrate.passes import PassResult, Window
from coexist.tenants.protocols import (
    CONTACT_JSON,
    EVENT_JSON,
    EXCHANGE_STREAM,
    MAIL_CLASS,
    MAIL_FOLDER,
    MIME,
    REPLACED_KIND,
    TASK_JSON,
    BatchImport,
    Change,
    ChangeFeed,
    Folder,
    Imported,
    ItemInfo,
    ItemRef,
    MailboxStore,
    NamesFolders,
    Payload,
    Warms,
)

# A lost cursor starts a folder's round over this often per pass before the error is raised.
RESTARTS = 2
PREFETCH_BATCHES = 1  # exported batches waiting for import (the next one is being exported)
# Bytes of payloads being imported at once, in export batches (`export_bytes`) of the source:
# the count bound (`imports_in_flight`) alone let an IMAP target hold hundreds of large
# messages (a 2 GB mailbox of 512 KB ones: 258 MB resident, with this bound ...).
IMPORT_BATCHES = 2
# The outcomes of finished imports are journaled together (`Sink`): at most this many wait,
# for at most this long. One transaction per import cost about as much as the import itself
# against a local IMAP server; a slow target still gets each outcome written within FLUSH_S.
FLUSH_ROWS = 256
FLUSH_S = 0.25
# Content types of protected mail: S/MIME (RFC 8551) and IRM (MS-OXORMMS: the rights-managed
# body travels as an application/x-microsoft-rpmsg-message attachment/part).
ENCRYPTED_TYPES = (
    "application/pkcs7-mime",
    "application/x-pkcs7-mime",
    "application/x-microsoft-rpmsg-message",
)
# Richest first; the PIM formats are one class each (only one of them fits a store pair).
FORMATS = (EXCHANGE_STREAM, MIME, CONTACT_JSON, EVENT_JSON, TASK_JSON)

MESSAGE_IDENTITY = "mid:"  # item_map.source_identity of a message: "mid:<Message-ID>"


def message_identity(message_id: str | None) -> str | None:
    """The item_map identity of a message with this Internet Message-ID (every store)."""
    return f"{MESSAGE_IDENTITY}{message_id}" if message_id else None


def message_id_of(identity: str | None) -> str | None:
    """The Internet Message-ID an item_map identity names, if it names one."""
    if identity and identity.startswith(MESSAGE_IDENTITY):
        return identity[len(MESSAGE_IDENTITY) :]
    return None


def negotiate(src: MailboxStore, tgt: MailboxStore, file: str = "project.toml") -> str:
    """The richest payload format the source exports and the target accepts."""
    for fmt in FORMATS:
        if fmt in src.caps.exports and fmt in tgt.caps.accepts:
            return fmt
    raise ConfigError(
        f"no payload format both stores speak (source exports {sorted(src.caps.exports)}, "
        f"target accepts {sorted(tgt.caps.accepts)})",
        file=file,
        key="migration.mover",
    )


# -- folders -----------------------------------------------------------------------------------


@dataclass
class Plan:
    """The mapped folders of one pass: source folder id -> target folder id."""

    source: list[Folder]
    target_of: dict[str, str] = field(default_factory=dict)
    skipped_folders: list[str] = field(default_factory=list)
    not_ipm: int = 0  # search and system folders seen and left alone
    # Whether the project's folder rules mapped this plan (`map_folders`), so a folder the
    # target refused can be renamed by one (reconcile.refused_folders_hint).
    by_rules: bool = False
    # The target store found its mailbox re-created (`FolderTree.replaced`).
    target_replaced: bool = False


# (parent or None for the top, name, path, folder class) -> the made folder, or None when the
# target cannot hold a folder of that class there (MailboxStore.create_folder).
FolderCreator = Callable[["Folder | None", str, tuple[str, ...], str], Awaitable["Folder | None"]]


def same_path(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    # Exchange folder names are unique per parent regardless of case (ErrorFolderExists).
    return len(a) == len(b) and all(x.casefold() == y.casefold() for x, y in zip(a, b, strict=True))


def _rules(ctx: Context) -> FolderRules:
    m = ctx.project.migration
    return FolderRules.parse(m.folder_rules, m.include_folders, m.exclude_folders)


async def ensure_path(
    create: FolderCreator,
    tree: list[Folder],
    dest: Destination,
    folder_class: str = MAIL_FOLDER,
    anchor_names: Mapping[str, str] | None = None,
) -> str | None:
    """The target folder id for `dest`, creating missing folders of `folder_class` on the
    way; None when the target cannot hold it (e.g. a calendar under a mail folder).

    A well-known anchor the target lacks (an IMAP server without a Sent or Drafts folder,
    or without RFC 6154 special-use attributes) is made at the top under the source's name
    for it (`anchor_names`: well-known name -> name), or found there by that name: its
    items are copied, not skipped. Exchange always has its well-known folders."""
    by_path = {f.path: f for f in tree}
    anchor: Folder | None = None
    if dest.anchor is not None:
        anchor = next((f for f in tree if f.well_known == dest.anchor and len(f.path) == 1), None)
        if anchor is None:
            name = (anchor_names or {}).get(dest.anchor)
            anchor = await _make_anchor(create, tree, dest.anchor, name, folder_class)
        if anchor is None:
            return None
    prefix = anchor.path if anchor else ()
    parent = anchor
    for name in dest.path:
        prefix = (*prefix, name)
        found = next((f for p, f in by_path.items() if same_path(p, prefix)), None)
        if found is None:
            made = await create(parent, name, prefix, folder_class)
            if made is None:
                return None
            found = made
            tree.append(found)
            by_path[found.path] = found
        parent = found
    return parent.id if parent else None


async def _make_anchor(
    create: FolderCreator, tree: list[Folder], well_known: str, name: str | None, cls: str
) -> Folder | None:
    """The top folder standing for a well-known folder the target lacks: the one named
    `name` there, else made (None: no name known, or the target cannot make it)."""
    if name is None:
        return None
    found = next((f for f in tree if same_path(f.path, (name,))), None)
    if found is None:
        found = await create(None, name, (name,), cls)
        if found is None:
            return None
    anchor = dataclasses.replace(found, well_known=well_known)
    tree.append(anchor)
    return anchor


async def map_folders(
    ctx: Context, source: list[Folder], target: list[Folder], create: FolderCreator
) -> Plan:
    """Map each source folder to a target folder (made by `create` when missing) by the
    project's folder rules."""
    rules = _rules(ctx)
    tops = [f for f in source if f.well_known and len(f.path) == 1]
    top = {f.path[0].casefold(): str(f.well_known) for f in tops}
    names = {str(f.well_known): f.path[0] for f in tops}
    plan = Plan(source, by_rules=True)
    for f in source:
        dest = map_folder(SourceFolder(f.path, f.well_known), top, rules)
        if dest is None:
            continue
        target_id_ = await ensure_path(create, target, dest, f.folder_class, names)
        if target_id_ is None:
            plan.skipped_folders.append("/".join(f.path))
            continue
        plan.target_of[f.id] = target_id_
    return plan


async def map_defaults(source: list[Folder], target: list[Folder], create: FolderCreator) -> Plan:
    """Map folders the project's rules do not apply to (`caps.folder_rules` False): a
    well-known folder to the target's of the same well-known name (a default to the default,
    whatever either is called), every other to the target's folder at the same path among
    those that are not well known, made by `create` when missing."""
    plan = Plan(source)
    others = [t for t in target if not t.well_known]
    for f in source:
        if f.well_known:
            dest = next((t.id for t in target if t.well_known == f.well_known), None)
        else:
            dest = await ensure_path(create, others, Destination(None, f.path), f.folder_class)
        if dest is None:
            plan.skipped_folders.append("/".join(f.path))
            continue
        plan.target_of[f.id] = dest
    return plan


async def plan_folders(ctx: Context, src: MailboxStore, tgt: MailboxStore) -> Plan:
    # Two mailboxes, two connections: the target's listing (a fresh IMAP user's first LIST
    # with STATUS makes every folder's index) need not wait for the source's.
    # The mapping needs no target totals: a store that lists without them does (`NamesFolders`).
    target_tree = tgt.folder_names() if isinstance(tgt, NamesFolders) else tgt.list_folders()
    async with asyncio.TaskGroup() as tg:
        listing = tg.create_task(src.list_folders()), tg.create_task(target_tree)
    source, target = listing[0].result(), listing[1].result()
    if src.caps.folder_rules:
        plan = await map_folders(ctx, source.folders, target.folders, tgt.create_folder)
    else:
        plan = await map_defaults(source.folders, target.folders, tgt.create_folder)
    plan.not_ipm = source.left_out
    plan.target_replaced = target.replaced
    return plan


# -- scan (change feed -> item_map) ------------------------------------------------------------


async def scan_folder(
    ctx: Context,
    key: str,
    src: ChangeFeed,
    folder: Folder,
    kind: str | None = None,
    found: Callable[[list[dict[str, Any]]], None] | None = None,
    cursors: Mapping[str, str] | None = None,
) -> None:
    """Record the folder's changes since the saved cursor, then save the new cursor.

    A lost cursor (the store says so: `cursor_lost`) starts the folder's round over from
    the start, mid-round too, at most RESTARTS times. A full round (the first, or such a
    restart) reports what is there, not what was removed: the item map keeps what was
    copied from being copied again, and rows of the folder (of `kind`, if given) it did not
    report have left the folder since (`forget_unseen`, before the cursor is saved).
    `found` gets each page's new rows once they are journaled (`_scan_and_copy`); a lost
    cursor is then raised, not restarted: the rows found may be mid-copy; and as the journal
    held no row of the mailbox then (`_scan_and_copy`), every row of the folder comes from
    this round, so there is nothing unseen to forget (not read). `cursors`: the mailbox's
    saved cursors by folder id, read for all its folders at once (`saved_cursors`); else
    this folder's is read here."""
    checkpoint = src.caps.checkpoint_kind
    if cursors is not None:
        cursor: str | None = cursors.get(folder.id)
    else:
        saved = ctx.journal.get_checkpoint(key, folder.id, checkpoint)
        cursor = (saved or {}).get("token") or None
    for attempt in range(RESTARTS + 1):
        try:
            await _follow(ctx, key, src, folder, cursor, kind, found, unseen=found is None)
            return
        except NotFound as exc:
            if cursor is None:
                raise  # no saved cursor: the folder itself is gone since it was listed
            raise CursorGone(folder) from exc
        except RemoteError as exc:
            if found is not None or not src.cursor_lost(exc) or attempt == RESTARTS:
                raise
            ctx.journal.delete_checkpoint(key, folder.id, checkpoint)
            cursor = None


class CursorGone(Exception):
    """A saved cursor answered 404 (`scan_folder`): it names a mailbox or folder that no
    longer exists under that id. A Graph deltaLink is an absolute URL holding the mailbox id
    (import/export API) or the folder id, and a re-created mailbox (license removed and given
    back after the retention, a soft-deleted mailbox replaced) has new ones; such a link then
    answers 404 on every pass (*unverified*: Graph documents 410 / syncStateNotFound for a
    forgotten sync state, delta-query-overview, not what a link of a mailbox that no longer
    exists answers; the sandbox's 404 ErrorMailboxNotFound / ErrorItemNotFound is itself
    marked unverified). `sync_mailbox` drops the mailbox's cursors (`drop_gone_cursors`)
    and scans it again."""

    def __init__(self, folder: Folder) -> None:
        super().__init__(f"the saved cursor of {'/'.join(folder.path)} names nothing")
        self.folder = folder


def saved_cursors(
    ctx: Context, key: str, src: ChangeFeed, kept: list[dict[str, Any]] | None = None
) -> dict[str, str]:
    """The mailbox's saved cursors of `src`'s kind, by folder id: one read for a pass's
    folders instead of one per folder (`kept`: that read, made by the caller)."""
    kind = src.caps.checkpoint_kind
    return {
        str(c["folder_id"]): str(c["token"])
        for c in (ctx.journal.checkpoints(key) if kept is None else kept)
        if c["kind"] == kind and c.get("token")
    }


def unscanned(
    src: ChangeFeed, folder: Folder, cursors: Mapping[str, str], recorded: Mapping[str, Any]
) -> bool:
    """Whether the pass can leave this folder unscanned: its store lists it empty
    (`caps.empty_means_nothing`), it has no saved cursor and the journal holds no row of it.
    Nothing is lost: a scan would report nothing and save a cursor; without one, the next
    pass that lists the folder with items reads it in full (an item that arrives between the
    listing and here is read then, like one that arrives after a scan). A folder with a
    cursor keeps its scan (its deletions and moves out), and one with rows too (a full round
    settles them, `forget_unseen`)."""
    return (
        src.caps.empty_means_nothing
        and folder.total == 0
        and folder.id not in cursors
        and folder.id not in recorded
    )


async def _follow(
    ctx: Context,
    key: str,
    src: ChangeFeed,
    folder: Folder,
    cursor: str | None,
    kind: str | None,
    found: Callable[[list[dict[str, Any]]], None] | None = None,
    unseen: bool = True,
) -> None:
    """Follow one round, journaling each page before the next (`forget_unseen` after a
    full one, unless `unseen` is False: the folder had no row before it)."""
    present: set[str] = set()
    feed = src.changes(folder, cursor)
    async for page in feed.pages():
        rows, forget = page_rows(ctx, key, folder.id, page.changes)
        new = {str(r["source_item_id"]) for r in rows if "source_folder_id" in r}
        described = await feed.describe([c for c in page.changes if c.id in new])
        fill_identities(rows, described)
        for source_id in forget:
            ctx.journal.unmap_item(key, source_id)
        ctx.journal.map_items(key, rows)
        if found is not None and new:
            made = ctx.journal.mapped_many(key, new)  # the rows as journaled, whole
            found([made[i] for i in (str(r["source_item_id"]) for r in rows) if i in made])
        present.update(c.id for c in page.changes if not c.removed)
        if page.cursor:
            if cursor is None and unseen:
                forget_unseen(ctx, key, folder.id, present, kind)
            ctx.journal.save_checkpoint(key, folder.id, src.caps.checkpoint_kind, token=page.cursor)
    if src.caps.cursor == "listing" and unseen:  # no cursor: every round is full
        forget_unseen(ctx, key, folder.id, present, kind)


def fill_identities(rows: list[dict[str, Any]], described: list[Change]) -> None:
    """New rows get the identity and subject their store described."""
    by_id = {c.id: c for c in described}
    for r in rows:
        if "source_folder_id" not in r:
            continue
        c = by_id.get(str(r["source_item_id"]))
        r["source_identity"] = c.identity if c else None
        r["subject"] = c.subject if c else None


def forget_unseen(
    ctx: Context, key: str, folder_id: str, seen: set[str], kind: str | None = None
) -> None:
    """After a full round (a restarted one reports what is there, not what was removed):
    rows of the folder (of `kind`, if given) it did not report left the folder — gone if
    copied, forgotten if never copied. A row mid-copy (`importing`) is marked for
    `settle_left` (its copy, if the import landed, is what is left of it)."""
    rows: list[dict[str, Any]] = []
    for r in ctx.journal.mapped_items(key, folder_id=folder_id):
        if r["source_item_id"] in seen or (kind is not None and r["kind"] != kind):
            continue
        if r["status"] in ("copied", "changed"):
            rows.append({"source_item_id": r["source_item_id"], "status": "gone"})
        elif r["status"] in ("pending", "skipped"):
            ctx.journal.unmap_item(key, r["source_item_id"])
        elif left_mid_copy(r):
            rows.append({"source_item_id": r["source_item_id"], "reason": LEFT_MARK})
    ctx.journal.map_items(key, rows)


def page_rows(
    ctx: Context, key: str, folder_id: str, changes: list[Change]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The item_map rows one page of changes makes, and the ids to forget (removed before
    they were copied). A new item's row holds `source_folder_id`."""
    rows: list[dict[str, Any]] = []
    forget: list[str] = []
    rows_of = ctx.journal.mapped_many(key, [c.id for c in changes])
    for c in changes:
        known = rows_of.get(c.id)
        if c.removed:
            if known is None:
                continue
            if known["status"] in ("copied", "changed"):
                rows.append({"source_item_id": c.id, "status": "gone"})
            elif known["status"] in ("pending", "skipped"):
                forget.append(c.id)
            elif left_mid_copy(known):
                rows.append({"source_item_id": c.id, "reason": LEFT_MARK})
            continue
        if known is None:
            rows.append(
                {
                    "source_item_id": c.id,
                    "source_folder_id": folder_id,
                    "source_change_key": c.change_key,
                    "source_created": c.created,
                    "size": c.size,
                    "kind": c.kind,
                    "status": "pending",
                }
            )
        elif known["source_change_key"] != c.change_key:
            status = "changed" if known["status"] in ("copied", "changed") else known["status"]
            rows.append(
                {"source_item_id": c.id, "source_change_key": c.change_key, "status": status}
            )
    return rows, forget


# -- moves -------------------------------------------------------------------------------------

MOVE_MARK = "moving the copy of "  # reason of a row whose old copy is still to be removed
# Reason of a copied row whose copy lacks part of the item's state the target refused or
# ignored (`Imported.lost`: the replied/forwarded state): copied, counted `not_kept`, and
# listed with folder and subject by the reconciliation (`reconcile.not_kept_items`).
NOT_KEPT = "copied without "


async def resolve_moves(
    ctx: Context,
    key: str,
    tgt: MailboxStore,
    plan: Plan,
    counts: Counter[str],
    kind: str | None = None,
) -> None:
    """Pair pending items (of `kind`, if given) with the gone copy of the same item (a move
    at the source): same identity, same kind, exactly one gone copy.

    A copy already in the item's new target folder is adopted as it is. Otherwise, where the
    target store moves items (`caps.moves`), the copy is moved: the pending row is marked
    `importing` with `reason` naming the gone row before the move is sent, the gone row is
    dropped after it and the pending row recorded last (`_move_copy`), and a pass killed in
    between redoes the move (`_finish_interrupted_moves`). Where it does not, the item is
    marked (`reason` names the gone row) and copied by the pipeline like any pending item,
    whatever the window, and `finish_moves` deletes the old copy once the new one is
    journaled. A pass killed anywhere in between resumes from these marks.
    """
    if tgt.caps.moves:
        await _finish_interrupted_moves(ctx, key, tgt, counts)
    gone: dict[str, list[dict[str, Any]]] = {}
    for g in ctx.journal.mapped_items(key, status="gone"):
        if g["target_item_id"] and g["source_identity"]:
            gone.setdefault(str(g["source_identity"]), []).append(g)
    if not gone:
        return
    for p in ctx.journal.mapped_items(key, status="pending"):
        if not _of_kind(p, kind):
            continue
        match = gone.get(str(p["source_identity"])) if p["source_identity"] else None
        dest = plan.target_of.get(p["source_folder_id"])
        if not match or len(match) != 1 or dest is None or str(p["reason"] or ""):
            continue
        old = match.pop()
        if old["kind"] != p["kind"]:
            continue
        if old["target_folder_id"] == dest:  # e.g. two source folders mapped to one
            _adopt_moved(ctx, key, p, old, dest, old["target_item_id"], old["target_change_key"])
            counts["moved"] += 1
        elif tgt.caps.moves:
            ctx.journal.map_item(
                key,
                p["source_item_id"],
                status="importing",
                target_folder_id=dest,
                reason=MOVE_MARK + str(old["source_item_id"]),
            )
            await _move_copy(ctx, key, tgt, p, old, dest, counts)
        else:
            ctx.journal.map_item(key, p["source_item_id"], reason=MOVE_MARK + old["source_item_id"])


def _adopt_moved(
    ctx: Context,
    key: str,
    p: dict[str, Any],
    old: dict[str, Any],
    dest: str,
    item_id: Any,
    change_key: Any,
    lost: str | None = None,
) -> None:
    """The moved item's row takes over the copy (in `dest`); the gone row is dropped. What
    the copy lacks goes with it: `lost` (what the move dropped), else the gone row's
    `NOT_KEPT` reason (the same copy); the update that follows sets it again or clears it."""
    old_reason = str(old.get("reason") or "")
    reason = NOT_KEPT + lost if lost else old_reason if old_reason.startswith(NOT_KEPT) else None
    ctx.journal.unmap_item(key, old["source_item_id"])
    ctx.journal.map_item(
        key,
        p["source_item_id"],
        status="changed",  # re-sync its state with an update
        target_folder_id=dest,
        target_item_id=item_id,
        target_change_key=change_key,
        reason=reason,
        **({"subject": old.get("subject") or p.get("subject")} if reason else {}),
    )


async def _move_copy(
    ctx: Context,
    key: str,
    tgt: MailboxStore,
    p: dict[str, Any],
    old: dict[str, Any],
    dest: str,
    counts: Counter[str],
) -> None:
    # A store in plan mode answers a move it only recorded without the copy's new id (as a
    # planned import): the row takes over a copy with no id yet, which no later step reads
    # (`update_changed` takes rows that name their copy). A real move always names it.
    moved = await tgt.move(copy_of(old), dest)
    _adopt_moved(ctx, key, p, old, dest, moved.item_id, moved.change_key, moved.lost)
    counts["moved"] += 1


async def _finish_interrupted_moves(
    ctx: Context, key: str, tgt: MailboxStore, counts: Counter[str]
) -> None:
    """Rows a dead pass left mid-move: redo the move, or leave the row to the recovery of
    interrupted imports (`adopt_interrupted`)."""
    for p in ctx.journal.mapped_items(key, status="importing"):
        if not moving(p):
            continue
        old = ctx.journal.mapped(key, moved_from(str(p["reason"])))
        if old is not None and old["status"] == "gone" and old["target_item_id"]:
            try:
                await _move_copy(ctx, key, tgt, p, old, str(p["target_folder_id"]), counts)
                continue
            except NotFound:
                # Moved by the pass that died (the store gave it a new id), or deleted in the
                # target since: either way the old row no longer names a target item.
                ctx.journal.unmap_item(key, old["source_item_id"])
        ctx.journal.map_item(key, p["source_item_id"], reason=None)


def moving(row: dict[str, Any]) -> bool:
    """Whether a row is a moved item whose old copy is still to be removed."""
    return str(row.get("reason") or "").startswith(MOVE_MARK)


# Between a move mark and what the moved item's new copy lacks (`NOT_KEPT`), in one reason:
# no item id holds a line break (Graph's are base64, IMAP's UIDVALIDITY:UID:folder name).
AFTER_MOVE = "\n"


def moved_from(reason: str) -> str:
    """The source item id a move mark names (`MOVE_MARK` + id [+ `AFTER_MOVE` + ...])."""
    return reason[len(MOVE_MARK) :].split(AFTER_MOVE, 1)[0]


def moved_reason(mark: str, lost: str | None) -> str:
    """A moved row's reason: its move mark, and what its new copy lacks if anything."""
    return mark.split(AFTER_MOVE, 1)[0] + (AFTER_MOVE + lost if lost else "")


def after_move(reason: str) -> str | None:
    """The reason a moved row keeps once its move is done: what its copy lacks, or None."""
    return reason.split(AFTER_MOVE, 1)[1] if AFTER_MOVE in reason else None


# Reason of a row whose source item left its folder (removed, moved, or voided by a new IMAP
# UIDVALIDITY: RFC 3501 2.3.1.1) while a pass that died was importing it.
LEFT_MARK = "left its source folder while being copied"


def left_mid_copy(row: dict[str, Any]) -> bool:
    """Whether a row the scan no longer finds was mid-copy (not mid-move: that is redone)."""
    return row["status"] == "importing" and not moving(row)


async def settle_left(ctx: Context, key: str, tgt: MailboxStore, kind: str | None = None) -> None:
    """Rows marked `LEFT_MARK`: their source item is gone, so the import cannot be redone
    (re-pending it would leave a row no export finds, pending for ever and unexplained by
    reconciliation). A copy the dead import left becomes a `gone` copied item, which
    `resolve_moves` pairs with the same message under its new id (a new UIDVALIDITY, a
    move): adopted, not copied twice. Where imports are not atomic the copy may be partial:
    it is deleted (`copies_of` finds only this tool's stamped copies) and the message, if
    still at the source, copied again. No copy: the row is forgotten. Rows of `kind` if given."""
    left = [
        r
        for r in ctx.journal.mapped_items(key, status="importing")
        if r["reason"] == LEFT_MARK
        and _of_kind(r, kind)
        and str(r["target_folder_id"] or "")
        # A folder a plan-mode store only planned holds no copy to look for (in any mode:
        # such a row is no plan branch, only a folder that never existed).
        and not str(r["target_folder_id"]).startswith("planned:")
    ]
    if not left:
        return  # the usual pass: no need to read every row for `taken`
    taken = {r["target_item_id"] for r in ctx.journal.mapped_items(key) if r["target_item_id"]}
    for r in left:
        dest = str(r["target_folder_id"])
        source_id, identity = str(r["source_item_id"]), r["source_identity"]
        found = await tgt.copies_of(dest, source_id, identity, taken)
        # An atomic target's copies are found by identity alone (an IMAP copy carries no
        # stamp): the first is adopted, none deleted (another may be the user's own).
        keep = found[:1] if tgt.caps.atomic_import else []
        for ref in [] if keep else found:
            with contextlib.suppress(NotFound):
                await tgt.delete(ref)
        if not keep:
            ctx.journal.unmap_item(key, source_id)
            continue
        taken.add(keep[0].item_id)
        ctx.journal.map_item(
            key,
            source_id,
            status="gone",
            target_item_id=keep[0].item_id,
            target_change_key=keep[0].change_key,
            reason=None,
        )


def copy_of(row: dict[str, Any]) -> ItemRef:
    """A row's target copy."""
    return ItemRef(str(row["target_folder_id"]), str(row["target_item_id"]))


async def finish_moves(
    ctx: Context, key: str, tgt: MailboxStore, counts: Counter[str], kind: str | None = None
) -> None:
    """Moved items (of `kind`, if given) whose new copy is journaled: delete the old copy,
    forget its row. Only rows marked as moved are read (every pass ends here: reading every
    row of the mailbox was O(mailbox) per pass)."""
    for p in ctx.journal.mapped_items(key, reason_prefix=MOVE_MARK):
        if p["status"] not in ("copied", "changed") or not moving(p) or not _of_kind(p, kind):
            continue
        old = ctx.journal.mapped(key, moved_from(str(p["reason"])))
        if old is not None and old["status"] == "gone" and old["target_item_id"]:
            with contextlib.suppress(NotFound):  # deleted by a pass that died after it
                await tgt.delete(copy_of(old))
        if old is not None and old["status"] == "gone":
            ctx.journal.unmap_item(key, old["source_item_id"])
        ctx.journal.map_item(key, p["source_item_id"], reason=after_move(str(p["reason"])))
        counts["moved"] += 1


# -- copy and update ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One item to import: its item_map row, the target folder, and for an update the
    copy's (item id, change key)."""

    row: dict[str, Any]
    dest: str
    update: tuple[str, str] | None = None

    @property
    def source_id(self) -> str:
        return str(self.row["source_item_id"])

    @property
    def source(self) -> ItemRef:
        return ItemRef(str(self.row.get("source_folder_id") or ""), self.source_id)


def batches(jobs: list[Job], count: int, size_cap: int) -> Iterator[list[Job]]:
    """Export batches: <= `count` items and <= `size_cap` bytes of items (one larger item
    goes alone), so what a batch holds in memory does not depend on the mailbox."""
    batch: list[Job] = []
    size = 0
    for job in jobs:
        item = int(job.row.get("size") or 0)
        if batch and (len(batch) == count or size + item > size_cap):
            yield batch
            batch, size = [], 0
        batch.append(job)
        size += item
    if batch:
        yield batch


def created_of(row: dict[str, Any]) -> datetime | None:
    """The arrival time a row's store recorded (`source_created`), if any."""
    raw = row.get("source_created")
    return datetime.fromisoformat(str(raw).replace("Z", "+00:00")) if raw else None


def in_window(row: dict[str, Any], window: Window, now: datetime) -> bool:
    """Whether a row's item belongs to the pass, by the arrival time its store recorded
    (`source_created`)."""
    return window.contains(created_of(row), now)


def trial_share(
    ctx: Context,
    key: str,
    folder_id: str,
    pending: list[dict[str, Any]],
    window: Window,
    now: datetime,
    kind: str | None = None,
) -> list[dict[str, Any]]:
    """The pending rows among a folder's newest `window.per_folder` items in the window (a
    trial pass). Items a pass copied already count (so a trial run twice copies nothing
    new), and so do skipped ones (reported, like any skip); a moved item is always kept."""
    assert window.per_folder
    rows = [
        r
        for r in ctx.journal.mapped_items(key, folder_id=folder_id)
        if r["status"] != "gone" and _of_kind(r, kind) and in_window(r, window, now)
    ]
    oldest = datetime.min.replace(tzinfo=now.tzinfo)
    rows.sort(key=lambda r: created_of(r) or oldest, reverse=True)
    chosen = {r["source_item_id"] for r in rows[: window.per_folder]}
    return [r for r in pending if moving(r) or r["source_item_id"] in chosen]


def skip_reason(ctx: Context, row: dict[str, Any], info: ItemInfo | None) -> str | None:
    """Why an item must not be copied (the project's size limit, protected mail), or None."""
    m = ctx.project.migration
    if int(row.get("size") or 0) > m.max_item_mb * 1024 * 1024:
        return f"larger than {m.max_item_mb} MB"
    if m.encrypted == "skip" and _encrypted(str(row.get("kind") or ""), info or ItemInfo()):
        return "encrypted (S/MIME or IRM)"
    return None


def _encrypted(item_class: str, info: ItemInfo) -> bool:
    # MS-OXOSMIME: encrypted and opaque-signed mail is "IPM.Note.SMIME" (clear-signed mail,
    # "IPM.Note.SMIME.MultipartSigned", is readable and moves). IRM mail is "IPM.Note" with
    # PidNameContentClass "rpmsg.message" (MS-OXBBODY 2.1.3.4), the rights-managed body in an
    # application/x-microsoft-rpmsg-message attachment (MS-OXORMMS): only headers show it.
    if item_class.lower() == "ipm.note.smime":
        return True
    return any(t in info.content_type for t in ENCRYPTED_TYPES) or "rpmsg" in info.content_class


@dataclass(frozen=True)
class Stores:
    """The two stores of one pass, the format items travel in between them, and the names
    (subjects) of items whose update the target refused (for the pass detail)."""

    src: MailboxStore
    tgt: MailboxStore
    fmt: str
    conflicts: list[str] = field(default_factory=list)
    # Copies made without part of their state, by what they lack (`Imported.lost`; an IMAP
    # target names the folder): each said once in the pass detail (`not_kept_note`).
    not_kept: Counter[str] = field(default_factory=Counter)
    # Lines for the pass's events (the run log) and short notes for its detail: a
    # re-created source (`gone_said`) or target (`reverify_copies`) mailbox.
    events: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _of_kind(row: dict[str, Any], kind: str | None) -> bool:
    return kind is None or row["kind"] == kind


async def copy_pending(
    ctx: Context,
    key: str,
    stores: Stores,
    plan: Plan,
    window: Window,
    counts: Counter[str],
    kind: str | None = None,
) -> None:
    """Pending items (of `kind`, if given) in the window, after the recovery of imports a
    dead pass left (`adopt_interrupted`).

    The mailbox's `importing` rows, then its `pending` rows, are read once and taken folder
    by folder (two reads per pass, not two per folder): a folder's recovery changes only
    that folder's rows, so every folder's recovery runs before the pending rows are read."""
    now = datetime.now().astimezone()
    jobs: list[Job] = []
    stuck = _by_folder(ctx.journal.mapped_items(key, status="importing"))
    for folder_id in plan.target_of:
        await adopt_interrupted(ctx, key, stores.tgt, folder_id, stuck.get(folder_id, []))
    waiting = _by_folder(ctx.journal.mapped_items(key, status="pending"))
    for folder_id, dest in plan.target_of.items():
        pending = [
            r
            for r in waiting.get(folder_id, [])
            if _of_kind(r, kind)
            and (moving(r) or in_window(r, window, now))  # a moved item's copy exists already
        ]
        if window.per_folder:
            pending = trial_share(ctx, key, folder_id, pending, window, now, kind)
        jobs += [Job(r, dest) for r in pending]
    if not await _pipeline(ctx, key, stores, jobs, counts):
        raise schedule.WindowClosed(counts)


def _by_folder(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows by source folder, each folder's in the order read."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(str(r["source_folder_id"]), []).append(r)
    return out


async def update_changed(
    ctx: Context, key: str, stores: Stores, counts: Counter[str], kind: str | None = None
) -> None:
    """Bring copies (of `kind`, if given) in line with their changed source (read/flag
    state, categories...).

    Crash safety: a copy's change key is forgotten in the journal before its update is sent
    and recorded after it; a row without one (the pass died in between, and the update may
    have landed) is updated over the copy's current change key, read from the target."""
    rows = [
        r
        for r in ctx.journal.mapped_items(key, status="changed")
        if r["target_item_id"] and _of_kind(r, kind)
    ]
    unknown = [copy_of(r) for r in rows if not r["target_change_key"]]
    current = await stores.tgt.change_keys(unknown) if unknown else {}
    jobs = []
    for r in rows:
        change_key = r["target_change_key"] or current.get(str(r["target_item_id"]))
        if change_key is None:
            # The copy could not be read: gone in the target since (deleted there).
            ctx.journal.map_item(
                key,
                r["source_item_id"],
                status="copied",
                reason=_kept_reason(r, "not updated: the copy is no longer in the target"),
            )
            counts["update_conflicts"] += 1
            continue
        jobs.append(Job(r, str(r["target_folder_id"]), (str(r["target_item_id"]), change_key)))
    if not await _pipeline(ctx, key, stores, jobs, counts):
        raise schedule.WindowClosed(counts)


def _kept_reason(row: dict[str, Any], reason: str) -> str:
    """A row's new reason, unless it is mid-move: that mark must survive until the old copy
    is removed (`finish_moves`)."""
    return str(row["reason"]) if moving(row) else reason


Exported = list[tuple[Job, Payload]]


async def _pipeline(
    ctx: Context,
    key: str,
    stores: Stores,
    jobs: list[Job] | AsyncIterator[list[Job]],
    counts: Counter[str],
) -> bool:
    """Export batch n+1 from the source while batch n is imported into the target, with up to
    the source's `exports_in_flight` exports and the target's `imports_in_flight` imports
    at once.

    Source and target are different mailboxes with their own budgets, so overlapping them is
    what lets the target's upload budget be spent without gaps. Memory is bounded: one batch
    queued, `exports_in_flight` being exported (each <= the source's `export_bytes`), and
    IMPORT_BATCHES x `export_bytes` of payloads being imported; every payload is dropped as
    soon as its import answers. `jobs` may come in parts as the scan finds them
    (`_scan_and_copy`).

    False when the pass's run window closed (`schedule`) before every batch was exported:
    no further batch is exported, and those exported are imported and journaled first.
    """
    if isinstance(jobs, list) and not jobs:
        return True
    queue: asyncio.Queue[Exported | None] = asyncio.Queue(maxsize=PREFETCH_BATCHES)
    caps = stores.src.caps
    exporting = asyncio.Semaphore(caps.exports_in_flight)
    closed = False

    async def export_one(batch: list[Job]) -> None:
        try:
            ready = await _export_batch(ctx, key, stores, batch, counts)
            if ready:
                await queue.put(ready)
        finally:
            exporting.release()

    async def produce(tg: asyncio.TaskGroup) -> None:
        # Up to the source's `exports_in_flight` batches at once, queued as they are ready.
        nonlocal closed
        warmed = False
        bounds = caps.export_batch, caps.export_bytes, caps.first_batch_share
        async for batch in _batched(jobs, *bounds):
            await exporting.acquire()
            # A safe point: nothing of this batch is marked or sent yet.
            if schedule.window_closed():
                closed = True
                exporting.release()
                break
            if not warmed:
                _warm(stores, batch)
                warmed = True
            tg.create_task(export_one(batch))
        for _ in range(caps.exports_in_flight):  # every export queued its batch
            await exporting.acquire()
        await queue.put(None)

    # A target that takes several items per call (`BatchImport`) gets one task per batch of
    # creates: a task, a future and a slot per item cost the client more than the item's
    # own import once the target writes many in one command. The slots then count batches.
    per_call = stores.tgt.caps.import_batch if isinstance(stores.tgt, BatchImport) else 1
    slots = asyncio.Semaphore(max(1, stores.tgt.caps.imports_in_flight // per_call))
    held = _Held(IMPORT_BATCHES * caps.export_bytes)
    sink = Sink(ctx, key, stores.tgt, counts, stores.conflicts, stores.not_kept)

    async def consume(tg: asyncio.TaskGroup) -> None:
        while (ready := await queue.get()) is not None:
            sink.mark([job for job, _ in ready])  # the whole batch, before any import is sent
            groups = _import_groups(ready, per_call)
            del ready
            while groups:
                group = groups.pop(0)  # each payload is dropped once its import answers
                size = sum(len(data.mime) + len(data.data) for _, data in group)
                await held.take(size)
                await slots.acquire()
                tg.create_task(_import_group(sink, group, per_call, slots, held, size))
                del group

    try:
        async with asyncio.TaskGroup() as outer:
            flusher = outer.create_task(sink.flush_every(FLUSH_S))
            async with asyncio.TaskGroup() as tg:
                tg.create_task(produce(tg))
                tg.create_task(consume(tg))
            flusher.cancel()
    except BaseExceptionGroup as group:
        raise _first_error(group) from None
    finally:
        sink.flush()  # what finished is journaled, whatever else failed
    return not closed


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """One error tree for callers: the first failure, not asyncio's group(s) of them."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


def _warm(stores: Stores, batch: list[Job]) -> None:
    """Let the stores get ready for the copy (`Warms`) as its first batch is exported: the
    source for its exports, the target for imports into the batch's folders."""
    if isinstance(stores.src, Warms):
        stores.src.warm(export=True)
    into = {job.dest for job in batch if job.update is None}
    if into and isinstance(stores.tgt, Warms):
        stores.tgt.warm(imports=True, into=into)


async def _batched(
    jobs: list[Job] | AsyncIterator[list[Job]], count: int, size_cap: int, share: int = 1
) -> AsyncIterator[list[Job]]:
    """`batches` of a list, or of jobs coming in parts: a part's last batch short of
    `count` waits for the next part (it may fill up), the end of the stream sends it.
    The first batch holds 1/`share` of the bounds (`caps.first_batch_share`) and goes with
    the first part."""
    first = (max(1, count // share), max(1, size_cap // share))
    if isinstance(jobs, list):
        head = next(batches(jobs, *first), []) if share > 1 else []
        if head:
            yield head
        for batch in batches(jobs[len(head) :], count, size_cap):
            yield batch
        return
    rest: list[Job] = []
    started = share <= 1
    async for part in jobs:
        if not started and part:
            head = next(batches(part, *first))
            yield head
            part, started = part[len(head) :], True
        made = list(batches(rest + part, count, size_cap))
        rest = made.pop() if made and len(made[-1]) < count else []
        for batch in made:
            yield batch
    if rest:
        yield rest


async def _export_batch(
    ctx: Context, key: str, stores: Stores, batch: list[Job], counts: Counter[str]
) -> Exported:
    """Skip what must not be imported (reported with its subject), export the rest.

    A source whose `inspect` costs what its export does (`inspect_before_export` False)
    is checked after the export, by the payload's own `info` and `size`."""
    if not stores.src.caps.inspect_before_export:
        return _skip_exported(ctx, key, await _export(stores, batch), counts)
    creates = [j for j in batch if j.update is None]
    mail = [j for j in creates if str(j.row["kind"]).startswith(MAIL_CLASS)]
    check = ctx.project.migration.encrypted == "skip"
    info = await stores.src.inspect([j.source for j in mail]) if mail and check else {}
    mail_ids = {j.source_id for j in mail}
    wanted: list[Job] = []
    skipped: list[tuple[Job, str]] = []
    for job in batch:
        if job.update is None and check and job.source_id in mail_ids and job.source_id not in info:
            # Its properties could not be read (gone since the scan, or an answer that is not
            # a throttle: stores retry those): its class alone decides (S/MIME is a class;
            # IRM shows only in headers). Counted, so it is visible.
            counts["irm_unchecked"] += 1
        reason = None if job.update else skip_reason(ctx, job.row, info.get(job.source_id))
        if reason is None:
            wanted.append(job)
        else:
            skipped.append((job, reason))
    await _record_skipped(ctx, key, stores.src, skipped, info, counts)
    return await _export(stores, wanted)


async def _record_skipped(
    ctx: Context,
    key: str,
    src: MailboxStore,
    skipped: list[tuple[Job, str]],
    info: dict[str, ItemInfo],
    counts: Counter[str],
) -> None:
    """Journal skipped items with their subject (a skip is reported by folder and subject):
    a subject neither the scan nor the batch's inspection gave (an IMAP change round carries
    none; `encrypted = "copy"` inspects nothing) is read from the source (`inspect`)."""
    unnamed = [j.source for j, _ in skipped if j.source_id not in info and not j.row.get("subject")]
    if unnamed:
        info = {**info, **await src.inspect(unnamed)}
    for job, reason in skipped:
        seen = info.get(job.source_id)
        subject = (seen.subject if seen else None) or job.row.get("subject")
        ctx.journal.map_item(key, job.source_id, status="skipped", reason=reason, subject=subject)
        counts["skipped"] += 1


async def _export(stores: Stores, jobs: list[Job]) -> Exported:
    """Export the jobs' items (an update batch: their state only, where the format can)."""
    if not jobs:
        return []
    # A target that completes copies on update (`completes_on_update`) takes the whole item.
    whole = stores.tgt.caps.completes_on_update
    state_only = not whole and all(j.update is not None for j in jobs)
    exported = await stores.src.export([j.source for j in jobs], stores.fmt, state_only)
    # An id missing from the answer is gone since the scan: the next scan reports it.
    return [(j, exported.pop(j.source_id)) for j in jobs if j.source_id in exported]


def _skip_exported(ctx: Context, key: str, ready: Exported, counts: Counter[str]) -> Exported:
    """The skip rules over exported items, by their payload's size and `info`."""
    out: Exported = []
    for job, data in ready:
        row = job.row if data.size is None else {**job.row, "size": data.size}
        reason = None if job.update else skip_reason(ctx, row, data.info)
        if reason is None:
            out.append((job, data))
            continue
        subject = (data.info.subject if data.info else None) or job.row.get("subject")
        fields: dict[str, Any] = {"status": "skipped", "reason": reason, "subject": subject}
        if data.size is not None:
            fields["size"] = data.size
        ctx.journal.map_item(key, job.source_id, **fields)
        counts["skipped"] += 1
    return out


@dataclass
class Sink:
    """Where one mailbox's imports go and are recorded.

    Crash safety is kept with fewer transactions: `mark` journals a whole batch's marks
    (`importing`; an update's forgotten change key) in one, before any of its imports is
    sent; `done` keeps an import's outcome until `flush` writes the waiting ones in one
    (every FLUSH_ROWS outcomes, every FLUSH_S, and when the pipeline ends, failed or not).
    A pass killed before a flush leaves those rows marked, as one killed mid-import does:
    the next pass recovers them (`adopt_interrupted`). Nothing is read back in between:
    a row gets one outcome per pipeline, and the scan's cursors are not saved here. The
    waiting outcomes are the journal's (`_Outcomes`): every mailbox copied at once through
    that journal writes its outcomes in the same flushes."""

    ctx: Context
    key: str
    tgt: MailboxStore
    counts: Counter[str]
    conflicts: list[str]
    not_kept: Counter[str] = field(default_factory=Counter)

    @property
    def outcomes(self) -> _Outcomes:
        return _outcomes(self.ctx.journal)

    def record(self, job: Job, **fields: Any) -> None:
        """Journal one row now (a path that raises after it)."""
        self.ctx.journal.map_item(self.key, job.source_id, **fields)

    def mark(self, jobs: list[Job]) -> None:
        """Mark a batch's rows as about to be imported, in one durable transaction: the
        mark is what lets a later pass find a copy whose outcome was never recorded, so
        it must outlive an OS crash too (the outcomes need not: one lost leaves its row
        marked, and the copy is adopted). One sync of the journal per export batch."""
        self.ctx.journal.map_items(self.key, [_mark_of(job) for job in jobs], durable=True)

    def done(self, job: Job, **fields: Any) -> None:
        """An import's outcome, journaled with the next flush."""
        self.outcomes.add(self.key, {"source_item_id": job.source_id, **fields})

    def flush(self) -> None:
        """Journal the waiting outcomes (this mailbox's among them) in one transaction."""
        self.outcomes.flush()

    async def flush_every(self, seconds: float) -> None:
        """Flush the waiting outcomes every `seconds` until cancelled (unless another
        mailbox's pipeline flushed them less than `seconds` ago)."""
        outcomes = self.outcomes
        while True:
            await asyncio.sleep(seconds)
            if outcomes.due(seconds):
                outcomes.flush()


class _Outcomes:
    """Import outcomes waiting to be journaled, of every mailbox whose pipeline writes to
    one journal (`Sink`): one transaction for all of them, where each mailbox's own timer
    wrote one of a row or two (20 small mailboxes at once: ~500 transactions for 800 items).
    Each outcome is written after its import answered, as before, only maybe sooner; a
    pipeline that ends flushes, so its rows are journaled before its pass reads them."""

    def __init__(self, journal: Any) -> None:
        self.journal = journal
        self.waiting: dict[str, list[dict[str, Any]]] = {}
        self.count = 0
        self.last = time.monotonic()

    def add(self, key: str, row: dict[str, Any]) -> None:
        self.waiting.setdefault(key, []).append(row)
        self.count += 1
        if self.count >= FLUSH_ROWS:
            self.flush()

    def due(self, seconds: float) -> bool:
        return time.monotonic() - self.last >= seconds

    def flush(self) -> None:
        waiting, self.waiting, self.count = self.waiting, {}, 0
        self.last = time.monotonic()
        # One mailbox's too (`map_items` is `map_items_of` for one); a planned pass's
        # scratch journal serves it as well (`planpass.SCRATCH`).
        if waiting:
            self.journal.map_items_of(waiting)


# One `_Outcomes` per journal object (a session's, or a planned pass's own scratch journal),
# dropped with it.
_OUTCOMES: weakref.WeakKeyDictionary[Any, _Outcomes] = weakref.WeakKeyDictionary()


def _outcomes(journal: Any) -> _Outcomes:
    found = _OUTCOMES.get(journal)
    if found is None:
        found = _OUTCOMES[journal] = _Outcomes(journal)
    return found


def _mark_of(job: Job) -> dict[str, Any]:
    """A job's row before its import: a copy `importing` into its folder (`adopt_interrupted`
    looks for it there), an update's copy without a change key (`update_changed`)."""
    if job.update is None:
        return {
            "source_item_id": job.source_id,
            "status": "importing",
            "target_folder_id": job.dest,
        }
    return {"source_item_id": job.source_id, "target_change_key": None}


class _Held:
    """Bytes of payloads being imported, bounded: `take` waits until they fit (one payload
    larger than the bound goes alone). One taker, the pipeline's consumer."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._freed = asyncio.Event()

    async def take(self, size: int) -> None:
        while self.used and self.used + size > self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.used += size

    def give(self, size: int) -> None:
        self.used -= size
        self._freed.set()


def _import_groups(ready: Exported, per_call: int) -> list[Exported]:
    """An exported batch in import calls: with `per_call` 1 each item alone; else runs of
    creates into one folder, up to `per_call` each (an update goes alone: `import_item`)."""
    groups: list[Exported] = []
    for job, data in ready:
        last = groups[-1] if groups else None
        if (
            per_call > 1
            and job.update is None
            and last is not None
            and last[0][0].update is None
            and last[0][0].dest == job.dest
            and len(last) < per_call
        ):
            last.append((job, data))
        else:
            groups.append([(job, data)])
    return groups


async def _import_group(
    sink: Sink,
    group: Exported,
    per_call: int,
    slots: asyncio.Semaphore,
    held: _Held,
    size: int,
) -> None:
    try:
        job, data = group[0]
        if job.update is not None:
            await _update(sink, job, data)
        elif per_call > 1:
            importer = sink.tgt
            assert isinstance(importer, BatchImport)  # `per_call` is 1 otherwise
            made = await importer.import_items(job.dest, [payload for _, payload in group])
            for (each, payload), outcome in zip(group, made, strict=True):
                _created(sink, each, payload, outcome)
        else:
            await _create(sink, job, data)
    finally:
        slots.release()
        held.give(size)
    c = sink.counts
    # A planned pass's events reach no view (`planpass.plan_pass`): it imports nothing.
    progress.emit(progress.PassAdvanced(sink.key, c["copied"] + c["updated"], c["bytes"]))


async def _create(sink: Sink, job: Job, data: Payload) -> None:
    made: Imported | InvalidRequest
    try:
        made = await sink.tgt.import_item(job.dest, data)
    except InvalidRequest as exc:
        made = exc
    _created(sink, job, data, made)


def _created(sink: Sink, job: Job, data: Payload, made: Imported | InvalidRequest) -> None:
    """Record a create's outcome: the copy, or the target's refusal of that item."""
    if isinstance(made, InvalidRequest):
        # e.g. "The item does not fit the destination folder": skipped, never dropped.
        sized = {} if data.size is None else {"size": data.size}
        sink.done(job, status="skipped", reason=made.message, **sized)
        sink.counts["skipped"] += 1
        return
    # A moved item keeps its mark until `finish_moves` has removed the old copy; what its
    # new copy lacks rides behind the mark (`moved_reason`) and replaces it there.
    moved = moving(job.row)
    lost = _not_kept(sink, job, data, made)
    reason = moved_reason(job.row["reason"], lost) if moved else lost
    extra = {"subject": _subject(job, data)} if lost else {}
    _copied(sink, job, data, made, target_folder_id=job.dest, reason=reason, **extra)
    if not moved:  # a moved item is counted once, as moved, by `finish_moves`
        sink.counts["copied"] += 1
    sink.counts["bytes"] += data.size if data.size is not None else int(job.row.get("size") or 0)


async def _update(sink: Sink, job: Job, data: Payload) -> None:
    assert job.update is not None  # `Sink.mark` forgot the copy's change key (crash safety)
    replace = ItemRef(job.dest, job.update[0], job.update[1])
    try:
        made = await sink.tgt.import_item(job.dest, data, replace)
    except RemoteError as exc:
        if not sink.tgt.update_refused(exc):
            sink.record(job, target_change_key=job.update[1])  # nothing was changed
            raise
        # Changed in the target too, gone there, or refused: that item's conflict, reported
        # (the target wins); the pass goes on.
        reason = _kept_reason(job.row, f"not updated: {exc.message}")
        sink.done(job, status="copied", target_change_key=job.update[1], reason=reason)
        sink.counts["update_conflicts"] += 1
        sink.conflicts.append(str(job.row.get("subject") or job.source_id))
        return
    extra: dict[str, Any] = {}
    if not moving(job.row):
        # A state the update could not set is reported; one it set clears the old report.
        lost = _not_kept(sink, job, data, made)
        if lost is not None:
            extra = {"reason": lost, "subject": _subject(job, data)}
        elif str(job.row.get("reason") or "").startswith(NOT_KEPT):
            extra = {"reason": None}
    _copied(sink, job, data, Imported(made.item_id or job.update[0], made.change_key), **extra)
    sink.counts["updated"] += 1


def _not_kept(sink: Sink, job: Job, data: Payload, made: Imported) -> str | None:
    """The row's reason when the target made the copy without part of the item's state
    (`Imported.lost`), counted `not_kept`; None when it kept it all."""
    if not made.lost:
        return None
    sink.counts["not_kept"] += 1
    sink.not_kept[made.lost] += 1
    return NOT_KEPT + made.lost


def _subject(job: Job, data: Payload) -> str | None:
    """The item's subject for a report line: the row's, the export's `info`, else the
    MIME header (an IMAP change round carries no subject; only reported items pay this)."""
    if job.row.get("subject"):
        return str(job.row["subject"])
    if data.info is not None and data.info.subject:
        return data.info.subject
    if data.mime:
        with contextlib.suppress(Exception):  # a header it cannot parse names nothing
            head = BytesHeaderParser(policy=email.policy.default).parsebytes(data.mime)
            if (subject := head.get("Subject")) is not None:
                return str(subject)
    return None


def _copied(sink: Sink, job: Job, data: Payload, made: Imported, **extra: Any) -> None:
    """Record the copy the import answered with (its id and change key, the source's, and
    the item's size where the export measured it)."""
    if data.size is not None:
        extra["size"] = data.size
    sink.done(
        job,
        status="copied",
        source_change_key=data.change_key,
        target_item_id=made.item_id,
        target_change_key=made.change_key,
        **extra,
    )


async def adopt_interrupted(
    ctx: Context,
    key: str,
    tgt: MailboxStore,
    folder_id: str,
    stuck: list[dict[str, Any]] | None = None,
) -> None:
    """Items marked `importing` by a pass that died: adopt the copy if the import landed.

    The copy is recognised by its identity among the target folder's items no row maps yet:
    one copy per stuck row, so nothing is adopted twice and nothing imported twice. A row
    without an identity (the source item had none) goes back to pending. A target whose
    import is not atomic (`caps.atomic_import` False) may hold a partial copy: it is
    deleted and the item copied again, or, where an update completes a copy
    (`caps.completes_on_update`), adopted and completed (`_recover_partial`). `stuck`: the
    folder's `importing` rows, when the caller read them already.
    """
    if stuck is None:
        stuck = ctx.journal.mapped_items(key, folder_id=folder_id, status="importing")
    if not stuck:
        return
    taken = {r["target_item_id"] for r in ctx.journal.mapped_items(key) if r["target_item_id"]}
    if not tgt.caps.atomic_import:
        await _recover_partial(ctx, key, tgt, stuck, taken)
        return
    copies: dict[str, dict[str, list[ItemRef]]] = {}
    for r in stuck:
        dest = str(r["target_folder_id"])
        if dest in copies or dest.startswith("planned:"):  # a planned folder: no copies
            continue
        copies[dest] = await tgt.copies(dest, taken)
    for r in stuck:
        found_in = copies.get(str(r["target_folder_id"])) or {}
        candidates = found_in.get(str(r["source_identity"])) if r["source_identity"] else None
        if not candidates:  # the import never landed (or cannot be told): import it again
            ctx.journal.map_item(key, r["source_item_id"], status="pending")
            continue
        found = candidates.pop(0)
        ctx.journal.map_item(
            key,
            r["source_item_id"],
            status="changed",  # re-sync its state with an update, to be sure
            target_item_id=found.item_id,
            target_change_key=found.change_key,
        )


async def _recover_partial(
    ctx: Context, key: str, tgt: MailboxStore, stuck: list[dict[str, Any]], taken: set[Any]
) -> None:
    """The copies (found by the store, `copies_of`) interrupted non-atomic imports left:
    deleted and their rows put back to pending; or, where an update completes a copy
    (`caps.completes_on_update`), the first adopted (its row `changed`, its change key to be
    read: `update_changed` completes it) and any other deleted (made twice over)."""
    adopt = 1 if tgt.caps.completes_on_update else 0
    for r in stuck:
        dest, source_id = str(r["target_folder_id"]), str(r["source_item_id"])
        found = await tgt.copies_of(dest, source_id, r["source_identity"], taken)
        for ref in found[adopt:]:
            with contextlib.suppress(NotFound):
                await tgt.delete(ref)
        if not found[:adopt]:
            ctx.journal.map_item(key, source_id, status="pending", reason=None)
            continue
        taken.add(found[0].item_id)
        ctx.journal.map_item(
            key,
            source_id,
            status="changed",
            target_item_id=found[0].item_id,
            target_change_key=None,
            reason=None,
        )


# -- deletions ---------------------------------------------------------------------------------

# Deletes a row's target copy; False when it cannot (a kind its store has no delete for).
CopyDeleter = Callable[[dict[str, Any]], Awaitable[bool]]


async def handle_deletions(
    ctx: Context, key: str, counts: Counter[str], delete: CopyDeleter
) -> None:
    """Items deleted at the source since they were copied: reported, or mirrored.

    `[migration] deletions = "keep"` (default) only counts them; `"mirror"` deletes each copy
    through `delete` (the target store's, which knows the ids its imports made)."""
    gone = ctx.journal.mapped_items(key, status="gone")
    counts["deleted_at_source"] = len(gone)
    if ctx.project.migration.deletions != "mirror":
        return
    for r in gone:
        deleted = False
        if r["target_item_id"]:
            try:
                deleted = await delete(r)
            except NotFound:
                deleted = True  # already gone in the target
        if not deleted:
            counts["not_mirrored"] += 1  # stays `gone` in the item map: visible, not lost
            continue
        ctx.journal.unmap_item(key, r["source_item_id"])
        counts["deleted_in_target"] += 1


# -- the pass ----------------------------------------------------------------------------------

# Opens a pass's two stores for one user: (ctx, subject) -> an async context manager of
# (source store, target store). Leaving it closes them, on error and cancellation too: an
# IMAP store holds a logged-in connection and a slot of its server's connection bound.
StoreOpener = Callable[
    [Context, str], contextlib.AbstractAsyncContextManager[tuple[MailboxStore, MailboxStore]]
]


async def _scan_and_copy(
    ctx: Context,
    key: str,
    stores: Stores,
    plan: Plan,
    by_id: dict[str, Folder],
    window: Window,
    counts: Counter[str],
    kind: str | None,
) -> bool:
    """Scan a mailbox the journal holds no row of, copying each page's pending items (in
    the window, of `kind`) while the scan reads the next page and folder; False if a
    folder's cursor was lost (a new IMAP UIDVALIDITY) on the way: the copies under way
    are finished and recorded, and the caller scans again in the usual order (the lost
    folder's round restarts there, and what was copied is matched as after any pass).

    With nothing recorded there is no copy to move (`resolve_moves`), adopt
    (`adopt_interrupted`) or settle (`settle_left`), so starting the copy before the scan
    ends copies exactly what the usual order would. Each page is journaled `pending` before
    its items reach the pipeline, and its cursor saved after it, as in `scan_folder`; the
    pipeline marks and records them as `copy_pending`'s would. A per-folder trial share
    needs the folder's whole scan first: that window takes the usual order. A run window
    that closes (`schedule`) stops the scan between folders, as `_between` does, and the
    copy at a batch boundary as `copy_pending`'s does (`WindowClosed`)."""
    now = datetime.now().astimezone()
    found: asyncio.Queue[list[Job] | None] = asyncio.Queue()
    lost = False
    cursors = saved_cursors(ctx, key, stores.src)

    async def scan() -> None:
        nonlocal lost
        try:
            for folder_id, dest in plan.target_of.items():
                if schedule.window_closed():
                    return  # a safe point; the pass ends at the next `_between`
                if unscanned(stores.src, by_id[folder_id], cursors, {}):
                    continue  # the journal holds no row of this mailbox (the caller's check)

                def to_copy(rows: list[dict[str, Any]], dest: str = dest) -> None:
                    jobs = [
                        Job(r, dest)
                        for r in rows
                        if r["status"] == "pending"
                        and _of_kind(r, kind)
                        and in_window(r, window, now)
                    ]
                    if jobs:
                        found.put_nowait(jobs)

                try:
                    await scan_folder(
                        ctx, key, stores.src, by_id[folder_id], kind, to_copy, cursors
                    )
                except CursorGone:
                    lost = True  # the caller's scan drops the mailbox's cursors
                    return
                except RemoteError as exc:
                    if not stores.src.cursor_lost(exc):
                        raise
                    lost = True
                    return
        finally:
            found.put_nowait(None)

    async def pages() -> AsyncIterator[list[Job]]:
        while (jobs := await found.get()) is not None:
            yield jobs

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(scan())
            copying = tg.create_task(_pipeline(ctx, key, stores, pages(), counts))
    except BaseExceptionGroup as group:
        raise _first_error(group) from None
    if not copying.result():
        raise schedule.WindowClosed(counts)
    return not lost


async def sync_mailbox(
    ctx: Context,
    subject: str,
    src: MailboxStore,
    tgt: MailboxStore,
    window: Window,
    counts: Counter[str],
    kind: str | None = None,
) -> tuple[Plan, Stores]:
    """Steps 1-5 of a pass (folders, scan, moves, copy, update) for one mailbox, over items
    of `kind` if given (a mover that copies other kinds its own way leaves their rows be)."""
    file = str(getattr(ctx.project, "file", "project.toml"))
    stores = Stores(src, tgt, negotiate(src, tgt, file))
    recorded = ctx.journal.item_map_counts(subject)
    if not recorded:
        # A first pass copies what the mailbox holds: the stores get ready for it while
        # the folders are listed (`Warms`; a mailbox found empty wasted that).
        if isinstance(src, Warms):
            src.warm(export=True)
        if isinstance(tgt, Warms):
            tgt.warm(imports=True)
    plan = await plan_folders(ctx, src, tgt)
    by_id = {f.id: f for f in plan.source}
    if plan.target_replaced:
        await reverify_copies(ctx, subject, tgt, plan, kind, stores)
        recorded = ctx.journal.item_map_counts(subject)  # copies it found gone are pending
    if not recorded and isinstance(tgt, Warms):  # now the folders the copy goes to are known
        tgt.warm(imports=True, into={d for f, d in plan.target_of.items() if by_id[f].total})
    # The progress view's bar: the source's items not yet copied (a planned pass's events
    # reach no view: `planpass.plan_pass`).
    total = sum(by_id[f].total for f in plan.target_of if f in by_id)
    per = recorded.values()
    moved = sum(c.get(s, 0) for c in per for s in ("copied", "changed", "gone", "skipped"))
    progress.emit(progress.PassSized(subject, max(0, total - moved)))
    fresh = not recorded and not window.per_folder
    copied = fresh and await _scan_and_copy(ctx, subject, stores, plan, by_id, window, counts, kind)
    if not copied:
        if fresh:  # a lost cursor ended the scan above: read what it journaled
            recorded = ctx.journal.item_map_counts(subject)
        said = await _scan_all(ctx, subject, src, plan, by_id, recorded, kind, counts)
    else:  # a fresh mailbox's scan: only a pass killed after `drop_gone_cursors` left one
        row = ctx.journal.get_checkpoint(subject, src.caps.checkpoint_kind, GONE_KIND)
        said = gone_said(row)
    if said is not None:
        stores.events.append(said)
        stores.notes.append("source mailbox re-created: scanned again in full")
    if copied:
        # The mailbox's first pass copied what its scan found: every row is this pass's,
        # and none is left to settle, move, adopt, update or finish (no earlier copy
        # exists). A row still pending is one the export no longer found (gone since the
        # scan): the next pass takes it up as it would any pending row. The steps below
        # read the journal for nothing then (0.02-0.06 s at a 2,000-message move's end).
        _between(counts)
    else:
        await settle_left(ctx, subject, tgt, kind)
        await resolve_moves(ctx, subject, tgt, plan, counts, kind)
        _between(counts)
        await copy_pending(ctx, subject, stores, plan, window, counts, kind)
        await update_changed(ctx, subject, stores, counts, kind)
        await finish_moves(ctx, subject, tgt, counts, kind)
    if counts["not_kept"]:
        await name_not_kept(ctx, subject, src, kind)
    return plan, stores


async def _scan_all(
    ctx: Context,
    subject: str,
    src: MailboxStore,
    plan: Plan,
    by_id: dict[str, Folder],
    recorded: Mapping[str, Any],
    kind: str | None,
    counts: Counter[str],
) -> str | None:
    """Scan every mapped folder from its saved cursor. Cursors that name a mailbox or
    folders gone (a re-created mailbox: every saved cursor's folder is no longer listed, or
    one answers 404) are dropped first (`drop_gone_cursors`) and the mailbox is scanned in
    full; its item map keeps what was copied from being copied again. Returns what
    `drop_gone_cursors` journaled, once that full scan has ended (`gone_said`)."""
    kept = ctx.journal.checkpoints(subject)  # one read: the cursors and a fact left
    cursors = saved_cursors(ctx, subject, src, kept)
    feed = src.caps.checkpoint_kind
    # Whether a `GONE_KIND` fact is to be said after this scan: one a killed pass left, or
    # one `drop_gone_cursors` journals below.
    noted = any(c["kind"] == GONE_KIND and c["folder_id"] == feed for c in kept)
    vanished = [f for f in cursors if f not in by_id]
    if cursors and len(vanished) == len(cursors):
        drop_gone_cursors(ctx, subject, src, plan, by_id, recorded, cursors, kind, None)
        cursors, noted = {}, True
    elif vanished:
        cursors = settle_vanished(ctx, subject, src, cursors, vanished, kind)
    while True:
        try:
            for folder_id in plan.target_of:
                _between(counts)  # safe points: between folders, between steps
                if unscanned(src, by_id[folder_id], cursors, recorded):
                    continue
                await scan_folder(ctx, subject, src, by_id[folder_id], kind, cursors=cursors)
            if not noted:
                return None
            return gone_said(ctx.journal.get_checkpoint(subject, feed, GONE_KIND))
        except CursorGone as gone:
            if not cursors:
                raise  # pragma: no cover - scan_folder raises it only from a saved cursor
            drop_gone_cursors(ctx, subject, src, plan, by_id, recorded, cursors, kind, gone)
            cursors, noted = {}, True


# folder_state kind (folder_id: the feed's checkpoint kind) of what a pass found when its
# source cursors named a mailbox or folders gone: journaled before they are dropped, said in
# the events of the pass that scanned the mailbox again (`gone_said`) and removed when that
# pass's result is made (`events_said`): a pass killed before says it on the next one.
GONE_KIND = "cursors-gone"


def drop_gone_cursors(
    ctx: Context,
    key: str,
    src: ChangeFeed,
    plan: Plan,
    by_id: Mapping[str, Folder],
    recorded: Mapping[str, Any],
    cursors: Mapping[str, str],
    kind: str | None,
    gone: CursorGone | None,
) -> None:
    """The source mailbox's cursors name a mailbox or folders that no longer exist (it was
    re-created: new mailbox, folder and item ids). In this order, each step idempotent, so
    a pass killed anywhere in between redoes the rest:

    1. the fact, journaled (`GONE_KIND`), with the user's address and folder paths;
    2. rows of folders no longer listed are what a full round of them would leave
       (`forget_unseen` with nothing seen: copied -> gone, never copied -> forgotten); a
       message that is still in the mailbox comes back under its new id as pending with the
       same identity, and `resolve_moves` gives it the gone row's copy (no second copy);
    3. the cursors (all of the kind: they name the old mailbox) and what the store keeps
       per side (`caps.side_state`: mailbox id, default names) are dropped. The pass then
       scans every folder in full (a full round forgets what it no longer reports).

    Dropped only after 1 and 2: a kill before 3 finds the same cursors and does it again.
    A re-created *target* is not this: its copies are gone with it (see NOTES-deltaid.md)."""
    user = ctx.journal.get_item("user", key) or {}
    address = str(user.get("source_address") or key)
    vanished = [f for f in {*cursors, *recorded} if f and f not in by_id]
    path_of = {tgt: "/".join(by_id[s].path) for s, tgt in plan.target_of.items() if s in by_id}
    paths: set[str] = set()
    if gone is not None:
        paths.add("/".join(gone.folder.path))
    for folder_id in vanished:
        for r in ctx.journal.mapped_items(key, folder_id=folder_id):
            if kind is None or r["kind"] == kind:  # another feed's rows are its own
                paths.add(path_of.get(str(r["target_folder_id"] or ""), "a folder gone"))
                break
    named = ", ".join(sorted(paths)) or "its folders"
    said = (
        f"{address}: the source mailbox was re-created or its folders replaced (the saved"
        f" change cursors of {named} name a mailbox or folders that no longer exist); its"
        " cursors were dropped and it is scanned again in full: the item map keeps what was"
        " copied from being copied again"
    )
    ctx.journal.save_checkpoint(key, src.caps.checkpoint_kind, GONE_KIND, token=said)
    for folder_id in vanished:
        forget_unseen(ctx, key, folder_id, set(), kind)
    for folder_id in cursors:
        ctx.journal.delete_checkpoint(key, folder_id, src.caps.checkpoint_kind)
    for side_kind in src.caps.side_state:
        ctx.journal.delete_checkpoint(key, "source", side_kind)


def settle_vanished(
    ctx: Context,
    key: str,
    src: ChangeFeed,
    cursors: Mapping[str, str],
    vanished: list[str],
    kind: str | None,
) -> dict[str, str]:
    """Folders with a saved cursor that the source no longer lists (deleted, or renamed
    where a store's folder id is its name, or re-made under a new id): their rows are what
    a full round that saw nothing leaves (`forget_unseen`: copied -> gone, so a message now
    in another folder under a new id is matched to its copy by `resolve_moves`, not copied
    twice), then their cursors are dropped (after: a pass killed between does it again).
    Returns the cursors left."""
    for folder_id in vanished:
        forget_unseen(ctx, key, folder_id, set(), kind)
        ctx.journal.delete_checkpoint(key, folder_id, src.caps.checkpoint_kind)
    return {f: c for f, c in cursors.items() if f not in vanished}


async def reverify_copies(
    ctx: Context,
    key: str,
    tgt: MailboxStore,
    plan: Plan,
    kind: str | None,
    stores: Stores,
) -> None:
    """The target mailbox was re-created (new mailbox id; `FolderTree.replaced`): the copies
    the journal names lived in the old one. A new mailbox is empty, a restored one holds them
    under new ids, so each copied row's copy is looked for by identity (`tgt.copies`) in the
    folder its source folder maps to now: found, the row names it; not found (or the row has
    no identity), the row is pending again and this pass copies it. The fact
    (REPLACED_KIND, journaled by the store before it kept the new id) is dropped after the
    rows are: a pass killed in between checks them again (idempotent: a row already pending
    stays so, one already pointing at a found copy finds it again)."""
    rows = [
        r
        for r in ctx.journal.mapped_items(key)
        if r["status"] in ("copied", "changed") and _of_kind(r, kind)
    ]
    by_dest: dict[str | None, list[dict[str, Any]]] = {}
    for r in rows:
        by_dest.setdefault(plan.target_of.get(str(r["source_folder_id"] or "")), []).append(r)
    found = again = 0
    updates: list[dict[str, Any]] = []
    for dest, group in by_dest.items():
        there = await tgt.copies(dest, set()) if dest else {}
        for r in group:
            refs = there.get(str(r["source_identity"])) if r["source_identity"] else None
            if refs and dest:
                ref = refs.pop(0)
                found += 1
                updates.append({"source_item_id": r["source_item_id"], "target_folder_id": dest,
                                "target_item_id": ref.item_id,
                                "target_change_key": ref.change_key})  # fmt: skip
            else:
                again += 1
                updates.append({"source_item_id": r["source_item_id"], "status": "pending",
                                "target_folder_id": None, "target_item_id": None,
                                "target_change_key": None, "reason": None})  # fmt: skip
    ctx.journal.map_items(key, updates)
    ctx.journal.delete_checkpoint(key, "target", REPLACED_KIND)
    user = ctx.journal.get_item("user", key) or {}
    address = str(user.get("target_address") or user.get("source_address") or key)
    stores.events.append(
        f"{address}: the target mailbox was re-created (it has a new mailbox id): of the"
        f" {found + again} copies the journal named there, {found} were found again by"
        f" identity and {again} are copied again"
    )
    stores.notes.append(f"target mailbox re-created: {again} copies to make again")


def gone_said(row: Mapping[str, Any] | None) -> str | None:
    """What `drop_gone_cursors` journaled (`row`), for the events of the pass whose scan
    followed it (`Stores.events`)."""
    return str(row["token"]) if row and row.get("token") else None


def events_said(ctx: Context, key: str, *stores: Stores) -> tuple[str, ...]:
    """The events of a pass's stores, for its result (`PassResult.events`); what they
    say of gone cursors leaves the journal now, with the pass's end: a pass killed before
    this point says it again on the next one."""
    out: list[str] = []
    for s in stores:
        if s.events:
            out += s.events
            ctx.journal.delete_checkpoint(key, s.src.caps.checkpoint_kind, GONE_KIND)
    return tuple(out)


async def name_not_kept(ctx: Context, key: str, src: MailboxStore, kind: str | None) -> None:
    """Give a subject to the `NOT_KEPT` rows that have none, for their report line: an
    update or a move exports no MIME to read it from (an IMAP source's state-only export),
    so it is read from the source as a skipped item's is (`inspect`)."""
    rows = [
        r
        for r in ctx.journal.mapped_items(key, status="copied", reason_prefix=NOT_KEPT)
        if not r.get("subject") and _of_kind(r, kind)
    ]
    refs = [ItemRef(str(r["source_folder_id"] or ""), str(r["source_item_id"])) for r in rows]
    info = await src.inspect(refs) if refs else {}
    named = [
        {"source_item_id": i, "subject": seen.subject} for i, seen in info.items() if seen.subject
    ]
    if named:
        ctx.journal.map_items(key, named)


def _between(counts: Counter[str]) -> None:
    """End the pass here (`schedule.WindowClosed`) if its run window has closed."""
    if schedule.window_closed():
        raise schedule.WindowClosed(counts)


CONFLICTS_NAMED = 5  # update conflicts named in a pass detail (all are on their rows)


def conflicts_note(refused: list[str]) -> str | None:
    """The pass detail's line about refused updates, naming the first few items."""
    if not refused:
        return None
    named = ", ".join(repr(n) for n in refused[:CONFLICTS_NAMED])
    more = f" and {len(refused) - CONFLICTS_NAMED} more" if len(refused) > CONFLICTS_NAMED else ""
    return (
        f"{len(refused)} changes not applied (the copy was changed or removed in the"
        f" target, which wins): {named}{more}"
    )


def not_kept_note(count: int, lacks: Counter[str]) -> str | None:
    """The pass detail's line about copies made without part of their state: each thing
    they lack said once (an IMAP target's names its folder), with how many."""
    if not count:
        return None
    said = "; ".join(f"{n} without {lost}" for lost, n in sorted(lacks.items()))
    return (
        f"{count} messages copied without part of their state (the target refused or "
        f"ignored it; listed in the report): {said}"
    )


class StoreMover:
    """A mover made of two stores and this algorithm (`passes.MOVERS` holds one per name)."""

    def __init__(self, open_stores: StoreOpener) -> None:
        self.open_stores = open_stores

    async def run(self, ctx: Context, subject: str, kind: str, window: Window) -> PassResult:
        if kind == "cutover":
            window = Window()  # the cutover pass moves everything not yet moved
        async with self.open_stores(ctx, subject) as (src, tgt):
            return await self._run(ctx, subject, kind, window, src, tgt)

    async def _run(
        self,
        ctx: Context,
        subject: str,
        kind: str,
        window: Window,
        src: MailboxStore,
        tgt: MailboxStore,
    ) -> PassResult:
        from coexist.migrate import reconcile

        counts: Counter[str] = Counter()
        plan, stores = await sync_mailbox(ctx, subject, src, tgt, window, counts)
        await handle_deletions(ctx, subject, counts, lambda r: _delete_copy(tgt, r))
        folder_sizes = await reconcile.sizes(src, tgt)
        report = await reconcile.reconcile(ctx, subject, plan, await tgt.totals(), folder_sizes)
        notes = []
        if counts["irm_unchecked"]:
            notes.append(
                f"{counts['irm_unchecked']} messages checked by item class only "
                "(their headers could not be read: IRM not detectable)"
            )
        if plan.not_ipm:
            notes.append(f"{plan.not_ipm} search and system folders left out")
        if note := conflicts_note(stores.conflicts):
            notes.append(note)
        if note := not_kept_note(counts["not_kept"], stores.not_kept):
            notes.append(note)
        notes += stores.notes
        result = reconcile.pass_result(ctx, kind, plan, report, counts, notes, subject=subject)
        return dataclasses.replace(result, events=events_said(ctx, subject, stores))


async def _delete_copy(tgt: MailboxStore, row: dict[str, Any]) -> bool:
    await tgt.delete(copy_of(row))
    return True
