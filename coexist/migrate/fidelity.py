"""The full-fidelity mover: Microsoft Graph's mailbox import/export API (M365 -> M365).

resources/mailbox-import-export-api-overview (v1.0): items are exported as an opaque
full-fidelity stream (`exportItems`, at most 20 ids per call) and imported through an import
session whose `importUrl` is pre-authenticated (`createImportSession`); folders are listed,
created and deleted, items listed and deleted, through the same API. The stream is never
opened here: what it holds reaches the target unchanged (MIME byte-identical, every property
kept). This mover speaks only that API for folders and items; its folder and item ids are
its own (never handed to the mail/calendar/contacts/To Do APIs, which would not know them).

What v1.0 does not expose, and what is used instead:

- Well-known folders (mailboxFolder has no wellKnownName in v1.0): each API's own way to name
  its default folder is read once per pass and matched by display name to the import/export
  folders directly under the IPM root (`well_known_names`): the mail API's well-known names
  (`users/{id}/mailFolders/inbox` ... resources/mailfolder), the primary calendar
  (`users/{id}/calendar`, user-get-calendar), the To Do list whose `wellknownListName` is
  `defaultList` (todotasklist) and the default contact folder (`contactFolders/contacts`,
  *unverified*: not on a Graph page, used by public clients). So a German "Posteingang" is
  the Inbox on either side.
- Search folders and non-IPM system folders (mailbox-list-folders lists them: "including any
  search folders") are never copied: only folders under the IPM root (the parent of the
  folders the well-known names found) are, and of those none whose PidTagFolderType
  (`Integer 0x3601`, MS-OXCFOLD) is FOLDER_SEARCH (`$expand=singleValueExtendedProperties`).
- Identity (`identity_of`): the message's Internet Message-ID (PR_INTERNET_MESSAGE_ID,
  `String 0x1035`) or, for items without one (contacts, events, tasks, drafts),
  PR_SEARCH_KEY (`Binary 0x300B`), read through the same API's extended properties at scan
  time and kept in the item map. Crash recovery and move detection match by it; never by
  createdDateTime or size, which an import re-stamps.

A pass over one mailbox, and why in this order:

1. Scan: per source folder, follow the items delta (from the saved deltaLink) and record
   every reported item in the journal's `item_map` (new -> pending with its identity,
   changed -> changed, removed -> gone); only then save the deltaLink (a checkpoint never
   runs ahead of the data it covers). An expired sync state (410, `SyncStateNotFound`,
   `SyncStateInvalid`, `resyncRequired`) restarts that folder's round; what the fresh round
   no longer reports is gone. Items outside the pass window stay `pending`.
2. Moves: an item moved at the source gets a new id (Exchange ids are per folder); a pending
   item whose identity matches exactly one gone, copied item is that item moved. The API has
   no move: the item is imported into its new folder like any other, and the old copy is
   deleted through the API once the new one is journaled (`finish_moves`); a pass killed in
   between finishes it on the next run.
3. Copy: pending items in the window, in export batches of <= 20, each imported into the
   mapped target folder and recorded right after; an `importing` mark written before the
   import lets a pass that was killed in between adopt the copy (same identity in the target
   folder) instead of duplicating it.
4. Update: changed items are re-exported and imported with `Mode: update` over their copy;
   any 4xx is that item's conflict (reported; the pass goes on).
5. Deletions: gone items are reported (`deletions = keep`) or deleted in the target through
   the API (mirror).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from coexist.engine.context import Context
from coexist.errors import AuthenticationError, Conflict, InvalidRequest, NotFound, RemoteError
from coexist.migrate.deletions import handle_deletions
from coexist.migrate.folders import Destination, FolderRules, SourceFolder, map_folder
from coexist.migrate.passes import MOVERS, PassResult, Window
from coexist.provisioning.convert import target_id
from coexist.tenants.graph import GraphAdapter

EXPORT_BATCH = 20  # mailbox-exportitems: "The maximum size of this collection is 20 strings."
# Bytes of items per exportItems call: the answer is held whole (base64 in JSON), so large
# items are exported a few at a time and memory stays flat whatever the mailbox holds.
EXPORT_BYTES = 6 * 1024 * 1024
PREFETCH_BATCHES = 1  # exported batches waiting for import (the next one is being exported)
IMPORTS_IN_FLIGHT = 4  # graph/throttling-limits: 4 concurrent requests per app per mailbox
DELTA_PAGE = 200  # Prefer: odata.maxpagesize (graph/delta-query-messages)
LIST_PAGE = 1000  # $top for item and folder listings (the API's largest page here)
BATCH = 20  # requests per JSON $batch (graph/json-batching)
CHECKPOINT_KIND = "io-items"
MAIL_CLASS = "IPM.Note"  # item class of mail (resources/mailboxitem `type`)
MAIL_FOLDER = "IPF.Note"  # folder class of mail folders (resources/mailboxfolder `type`)
# Content types of protected mail: S/MIME (RFC 8551) and IRM (MS-OXORMMS: the rights-managed
# body travels as an application/x-microsoft-rpmsg-message attachment/part).
ENCRYPTED_TYPES = (
    "application/pkcs7-mime",
    "application/x-pkcs7-mime",
    "application/x-microsoft-rpmsg-message",
)
# Sessions are renewed a little before Microsoft's expirationDateTime.
SESSION_MARGIN_S = 60.0
DISPOSAL = "softDelete"  # mailboxfolder-delete-items: Exchange's soft delete (recoverable)

# Extended properties read through the API (MS-OXPROPS ids, as Graph spells them).
PS_INTERNET_HEADERS = "{00020386-0000-0000-C000-000000000046}"
PR_SUBJECT = "String 0x0037"
PR_INTERNET_MESSAGE_ID = "String 0x1035"
PR_SEARCH_KEY = "Binary 0x300B"
PID_TAG_FOLDER_TYPE = "Integer 0x3601"
CONTENT_CLASS = f"String {PS_INTERNET_HEADERS} Name content-class"
CONTENT_TYPE = f"String {PS_INTERNET_HEADERS} Name content-type"
FOLDER_SEARCH = "2"  # PidTagFolderType of a search folder (MS-OXCFOLD 2.2.2.2.1.2)
# Codes by which Graph says it forgot a delta sync state, for both movers (graph/errors "Code
# property": resyncRequired, syncStateNotFound; SyncStateNotFound / SyncStateInvalid as
# Outlook sends them, microsoft-graph-docs#2350; delta-query-overview), compared without
# case; any 410 Gone too.
SYNC_STATE_LOST = frozenset({"syncstatenotfound", "syncstateinvalid", "resyncrequired"})
# Each API's own name for the default folders, as the folder mapping calls them (the mail
# API's well-known names, resources/mailfolder; plus the PIM defaults).
MAIL_WELL_KNOWN = ("inbox", "sentitems", "drafts", "deleteditems", "junkemail", "archive",
                   "outbox")  # fmt: skip


MESSAGE_IDENTITY = "mid:"  # item_map.source_identity of a message: "mid:<Message-ID>"


def message_identity(message_id: str | None) -> str | None:
    """The item_map identity of a message with this Internet Message-ID (both movers)."""
    return f"{MESSAGE_IDENTITY}{message_id}" if message_id else None


def message_id_of(identity: str | None) -> str | None:
    """The Internet Message-ID an item_map identity names, if it names one."""
    if identity and identity.startswith(MESSAGE_IDENTITY):
        return identity[len(MESSAGE_IDENTITY) :]
    return None


def identity_of(props: dict[str, str]) -> str | None:
    """What identifies an item across export/import, from its extended properties.

    *unverified* (the one place): that Exchange keeps an item's PR_INTERNET_MESSAGE_ID and
    PR_SEARCH_KEY on a full-fidelity import (both are properties of the item that the stream
    carries; the search key is Exchange's own "same item" key, MS-OXCMSG 2.2.1.9, which a copy
    keeps). The Message-ID is preferred; PR_SEARCH_KEY covers contacts, events, tasks and
    drafts (no Message-ID).
    """
    mid = props.get(PR_INTERNET_MESSAGE_ID.lower())
    if mid:
        return message_identity(mid)
    key = props.get(PR_SEARCH_KEY.lower())
    return f"sk:{key}" if key else None


def expand(*prop_ids: str) -> str:
    """`$expand` of the given single-value extended properties (singlevaluelegacyextended-
    property-get: `$filter=id eq '...'`; *unverified*: several joined with `or`)."""
    return (
        "singleValueExtendedProperties($filter="
        + " or ".join(f"id eq '{p}'" for p in prop_ids)
        + ")"
    )


def props_of(obj: dict[str, Any]) -> dict[str, str]:
    """An answer's single-value extended properties, keyed by lower-case id."""
    out: dict[str, str] = {}
    for p in obj.get("singleValueExtendedProperties") or []:
        if isinstance(p, dict) and p.get("id") is not None and p.get("value") is not None:
            out[" ".join(str(p["id"]).split()).lower()] = str(p["value"])
    return out


def sync_state_lost(exc: RemoteError) -> bool:
    """A delta answer saying the saved state is gone: start the round over."""
    return exc.status == 410 or str(exc.code or "").lower() in SYNC_STATE_LOST


@dataclass(frozen=True)
class Box:
    """One mailbox on one side: the Graph adapter, user id and import/export mailbox id."""

    graph: GraphAdapter
    user_id: str
    mailbox_id: str

    def path(self, suffix: str) -> str:
        return f"admin/exchange/mailboxes/{self.mailbox_id}/{suffix}"


@dataclass(frozen=True)
class Folder:
    id: str
    path: tuple[str, ...]
    well_known: str | None
    folder_class: str
    total: int


@dataclass
class Plan:
    """The mapped folders of one pass: source folder id -> target folder id."""

    source: list[Folder]
    target_of: dict[str, str] = field(default_factory=dict)
    skipped_folders: list[str] = field(default_factory=list)
    not_ipm: int = 0  # search and system folders seen and left alone


async def mailbox_id(graph: GraphAdapter, user_id: str) -> str:
    # mailbox-import-export-api-overview: the API takes `primaryMailboxId` from
    # GET /users/{id}/settings/exchange, not the user id.
    data = await graph.send("GET", f"users/{user_id}/settings/exchange")
    return str(data["primaryMailboxId"])


# -- the folder tree -------------------------------------------------------------------------------


async def well_known_names(box: Box) -> dict[str, tuple[str, str]]:
    """Each default folder's display name as its own API names it: well-known name ->
    (folder class, display name). One $batch; a default its API does not answer is left out
    (an archive folder that does not exist, a missing permission...)."""
    u = box.user_id
    asks: list[tuple[str, str, str]] = [
        (wk, MAIL_FOLDER, f"/users/{u}/mailFolders/{wk}?$select=displayName")
        for wk in MAIL_WELL_KNOWN
    ]
    asks += [
        ("calendar", "IPF.Appointment", f"/users/{u}/calendar?$select=name"),
        ("contacts", "IPF.Contact", f"/users/{u}/contactFolders/contacts?$select=displayName"),
        ("tasks", "IPF.Task", f"/users/{u}/todo/lists"),
    ]
    answers = await box.graph.batch_get([url for _, _, url in asks])
    out: dict[str, tuple[str, str]] = {}
    for (wk, folder_class, _), body in zip(asks, answers, strict=True):
        if not isinstance(body, dict):
            continue
        if wk == "tasks":
            # todotasklist: the default list is `wellknownListName: defaultList`; it is the
            # mailbox's Tasks folder (*unverified*: not stated on a Graph page).
            body = next(
                (x for x in body.get("value") or [] if x.get("wellknownListName") == "defaultList"),
                {},
            )
        name = body.get("displayName") or body.get("name")
        if name:
            out[wk] = (folder_class, str(name))
    return out


def _ipm_root(listed: list[dict[str, Any]], names: dict[str, tuple[str, str]]) -> str | None:
    """The IPM root's id: the parent shared by most folders that a default folder's own API
    names (the import/export API does not name the root itself)."""
    votes: Counter[str] = Counter()
    for folder_class, name in names.values():
        for f in listed:
            if (
                str(f.get("displayName", "")).casefold() == name.casefold()
                and (f.get("type") or "") == folder_class
                and f.get("parentFolderId")
            ):
                votes[str(f["parentFolderId"])] += 1
    if not votes:  # no default folder answered: the most common parent is the top
        votes.update(str(f["parentFolderId"]) for f in listed if f.get("parentFolderId"))
    return votes.most_common(1)[0][0] if votes else None


async def _all_folders(box: Box) -> dict[str, dict[str, Any]]:
    """Every folder the API lists, at any depth (the top list and each childFolders)."""
    params = {"$top": LIST_PAGE, "$expand": expand(PID_TAG_FOLDER_TYPE)}
    found: dict[str, dict[str, Any]] = {}
    queue = await box.graph.list_all(box.path("folders"), params)
    while queue:
        f = queue.pop(0)
        if str(f["id"]) in found:
            continue
        found[str(f["id"])] = f
        if f.get("childFolderCount"):
            queue += await box.graph.list_all(box.path(f"folders/{f['id']}/childFolders"), params)
    return found


async def folder_tree(box: Box, plan: Plan | None = None) -> list[Folder]:
    """Every IPM folder of the mailbox, parents before children, with its path of names from
    the IPM root; top-level defaults carry their well-known name. Search folders and folders
    outside the IPM subtree are left out (counted on `plan`)."""
    found = await _all_folders(box)
    names = await well_known_names(box)
    root = _ipm_root(list(found.values()), names)
    out: list[Folder] = []
    queue: list[tuple[str, tuple[str, ...]]] = [(root or "", ())]
    kept: set[str] = set()
    while queue:
        parent, path = queue.pop(0)
        for f in found.values():
            if str(f.get("parentFolderId") or "") != parent or str(f["id"]) in kept:
                continue
            if props_of(f).get(PID_TAG_FOLDER_TYPE.lower()) == FOLDER_SEARCH:
                continue
            kept.add(str(f["id"]))
            here = (*path, str(f["displayName"]))
            folder_class = str(f.get("type") or MAIL_FOLDER)
            well_known = None
            if not path:
                well_known = next(
                    (wk for wk, (c, n) in names.items()
                     if c == folder_class and n.casefold() == here[0].casefold()),
                    None,
                )  # fmt: skip
            out.append(Folder(str(f["id"]), here, well_known, folder_class,
                              int(f.get("totalItemCount") or 0)))  # fmt: skip
            queue.append((str(f["id"]), here))
    if plan is not None:
        plan.not_ipm += len(found) - len(kept)
    return out


# -- folders ---------------------------------------------------------------------------------------


def _rules(ctx: Context) -> FolderRules:
    m = ctx.project.migration
    return FolderRules.parse(m.folder_rules, m.include_folders, m.exclude_folders)


# (box, parent or None for the top, name, path, folder class) -> the made folder, or None when
# the target cannot hold a folder of that class there.
FolderCreator = Callable[
    [Box, "Folder | None", str, tuple[str, ...], str], Awaitable["Folder | None"]
]


async def _ensure_path(
    box: Box,
    tree: list[Folder],
    dest: Destination,
    folder_class: str = MAIL_FOLDER,
    create: FolderCreator | None = None,
) -> str | None:
    """The target folder id for `dest`, creating missing folders of `folder_class` on the
    way; None when the target cannot hold it (e.g. a calendar under a mail folder)."""
    make = create or _create_folder
    by_path = {f.path: f for f in tree}
    anchor: Folder | None = None
    if dest.anchor is not None:
        anchor = next((f for f in tree if f.well_known == dest.anchor and len(f.path) == 1), None)
        if anchor is None:
            return None
    prefix = anchor.path if anchor else ()
    parent = anchor
    for name in dest.path:
        prefix = (*prefix, name)
        found = next((f for p, f in by_path.items() if same_path(p, prefix)), None)
        if found is None:
            made = await make(box, parent, name, prefix, folder_class)
            if made is None:
                return None
            found = made
            tree.append(found)
            by_path[found.path] = found
        parent = found
    return parent.id if parent else None


def same_path(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    # Exchange folder names are unique per parent regardless of case (ErrorFolderExists).
    return len(a) == len(b) and all(x.casefold() == y.casefold() for x, y in zip(a, b, strict=True))


async def create_io_folder(
    box: Box, parent: Folder | None, name: str, path: tuple[str, ...], folder_class: str
) -> Folder | None:
    """Create a folder of any class through the import/export API (mailbox-post-folders:
    `displayName` and `type`, under the IPM root or as a child folder); None where the
    target refuses a folder of that class (400)."""
    where = box.path(f"folders/{parent.id}/childFolders" if parent else "folders")
    try:
        made = await box.graph.send("POST", where, json={"displayName": name, "type": folder_class})
    except (Conflict, InvalidRequest) as exc:
        # Made by an earlier, interrupted pass (or refused): look for it by name.
        siblings = await box.graph.list_all(where, {"$top": LIST_PAGE})
        made = next(
            (s for s in siblings if str(s["displayName"]).casefold() == name.casefold()), None
        )
        if made is None:
            if isinstance(exc, Conflict):
                raise
            return None
    if made is None:  # plan mode
        return Folder(f"planned:{'/'.join(path)}", path, None, folder_class, 0)
    return Folder(str(made["id"]), path, None, folder_class, 0)


# The graph-items mover creates folders through the Graph API of each class (its ids are those
# APIs' ids). Graph creates secondary calendars and To Do lists only beside the default one
# (user-post-calendars, todo-post-lists); contact folders nest (contactfolder-post-childfolders).
_DEFAULT_OF_CLASS = {
    "IPF.Contact": "contacts",
    "IPF.Appointment": "calendar",
    "IPF.Task": "tasks",
}


def _create_request(
    user: str, parent: Folder | None, name: str, folder_class: str
) -> tuple[str, dict[str, str]] | None:
    """(URL, body) that creates a folder of this class under `parent` through the class's own
    API, or None if Graph cannot put one there."""
    base = f"users/{user}"
    if folder_class == MAIL_FOLDER:
        if parent is not None and parent.folder_class != MAIL_FOLDER:
            return None  # a mail folder inside a calendar/contacts/tasks folder
        where = f"{base}/mailFolders" + (f"/{parent.id}/childFolders" if parent else "")
        return where, {"displayName": name}
    default = _DEFAULT_OF_CLASS.get(folder_class)
    if parent is None or default is None:
        return None
    at_default = parent.well_known == default and len(parent.path) == 1
    if folder_class == "IPF.Contact" and parent.folder_class == folder_class:
        where = f"{base}/contactFolders" + ("" if at_default else f"/{parent.id}/childFolders")
        return where, {"displayName": name}
    if not at_default:
        return None
    if folder_class == "IPF.Appointment":
        return f"{base}/calendars", {"name": name}
    return f"{base}/todo/lists", {"displayName": name}


async def _create_folder(
    box: Box, parent: Folder | None, name: str, path: tuple[str, ...], folder_class: str
) -> Folder | None:
    """Create a folder through the Graph API of its class (the graph-items mover's folders);
    None if it cannot exist there."""
    request = _create_request(box.user_id, parent, name, folder_class)
    if request is None:
        return None
    try:
        made = await box.graph.send("POST", request[0], json=request[1])
    except Conflict:  # made by an earlier, interrupted pass: look it up
        siblings = await box.graph.list_all(request[0])
        made = next(
            s
            for s in siblings
            if str(s.get("displayName") or s.get("name")).casefold() == name.casefold()
        )
    if made is None:  # plan mode
        return Folder(f"planned:{'/'.join(path)}", path, None, folder_class, 0)
    return Folder(str(made["id"]), path, None, folder_class, 0)


async def plan_folders(ctx: Context, src: Box, tgt: Box) -> Plan:
    plan = Plan([])
    source = await folder_tree(src, plan)
    mapped = await map_folders(ctx, tgt, source, await folder_tree(tgt), create=create_io_folder)
    mapped.not_ipm = plan.not_ipm
    return mapped


async def map_folders(
    ctx: Context,
    tgt: Box,
    source: list[Folder],
    target: list[Folder],
    create: FolderCreator | None = None,
) -> Plan:
    """Map each source folder to a target folder (created when missing, by `create`: the
    class's own Graph API unless given) by the rules."""
    rules = _rules(ctx)
    top = {f.path[0].casefold(): f.well_known for f in source if f.well_known and len(f.path) == 1}
    plan = Plan(source)
    for f in source:
        dest = map_folder(SourceFolder(f.path, f.well_known), top, rules)
        if dest is None:
            continue
        target_id_ = await _ensure_path(tgt, target, dest, f.folder_class, create)
        if target_id_ is None:
            plan.skipped_folders.append("/".join(f.path))
            continue
        plan.target_of[f.id] = target_id_
    return plan


# -- scan (delta -> item_map) -------------------------------------------------------------------------


async def scan_folder(ctx: Context, key: str, src: Box, folder_id: str, total: int = 0) -> None:
    """Record the folder's changes since the saved deltaLink, then save the new deltaLink.

    An expired sync state restarts the folder's round from scratch: the item map keeps what
    was copied from being copied again, and whatever the fresh round no longer reports has
    left the folder since (a fresh round reports no removals)."""
    saved = ctx.journal.get_checkpoint(key, folder_id, CHECKPOINT_KIND)
    first = src.path(f"folders/{folder_id}/items/delta")
    try:
        await _follow(ctx, key, src, folder_id, (saved or {}).get("token") or first, total)
    except RemoteError as exc:
        if saved is None or not sync_state_lost(exc):
            raise
        ctx.journal.delete_checkpoint(key, folder_id, CHECKPOINT_KIND)
        seen = await _follow(ctx, key, src, folder_id, first, total)
        forget_unseen(ctx, key, folder_id, seen)


async def _follow(
    ctx: Context, key: str, src: Box, folder_id: str, link: str, total: int
) -> set[str]:
    """Follow one delta round, journaling each page before the next; the ids it reported."""
    headers = {"Prefer": f"odata.maxpagesize={DELTA_PAGE}"}
    seen: set[str] = set()
    known = Identities(src, folder_id, total)
    async for values, delta in src.graph.delta_pages(link, headers):
        rows, forget = _page_rows(ctx, key, folder_id, values)
        await known.fill([r for r in rows if "source_folder_id" in r])
        for source_id in forget:
            ctx.journal.unmap_item(key, source_id)
        ctx.journal.map_items(key, rows)
        seen.update(str(v["id"]) for v in values if "@removed" not in v)
        if delta:
            ctx.journal.save_checkpoint(key, folder_id, CHECKPOINT_KIND, token=delta)
    return seen


def forget_unseen(
    ctx: Context, key: str, folder_id: str, seen: set[str], kind: str | None = None
) -> None:
    """After a full round (a restarted one reports what is there, not what was removed):
    rows of the folder (of `kind`, if given) it did not report left the folder — gone if
    copied, forgotten if never copied. A row mid-copy (`importing`) is left to the crash
    recovery. Both movers."""
    rows: list[dict[str, Any]] = []
    for r in ctx.journal.mapped_items(key, folder_id=folder_id):
        if r["source_item_id"] in seen or (kind is not None and r["kind"] != kind):
            continue
        if r["status"] in ("copied", "changed"):
            rows.append({"source_item_id": r["source_item_id"], "status": "gone"})
        elif r["status"] in ("pending", "skipped"):
            ctx.journal.unmap_item(key, r["source_item_id"])
    ctx.journal.map_items(key, rows)


class Identities:
    """Identity and subject of a source folder's new items, read through the API's extended
    properties: by listing the folder (one request per 1,000 items of `total`) when that
    costs fewer requests than reading them one by one (each inner request of a $batch counts
    against the mailbox's budget), else item by item."""

    def __init__(self, src: Box, folder_id: str, total: int) -> None:
        self.src, self.folder_id, self.total = src, folder_id, total
        self.listed: dict[str, dict[str, str]] | None = None

    async def fill(self, rows: list[dict[str, Any]]) -> None:
        ids = [str(r["source_item_id"]) for r in rows]
        if not ids:
            return
        if self.listed is None and -(-self.total // LIST_PAGE) < len(ids):
            self.listed = await self._list()
        found = {i: self.listed[i] for i in ids if i in self.listed} if self.listed else {}
        missing = [i for i in ids if i not in found]
        found.update(await item_props(self.src, self.folder_id, missing, IDENTITY_PROPS))
        for r in rows:
            props = found.get(str(r["source_item_id"]), {})
            r["source_identity"] = identity_of(props)
            r["subject"] = props.get(PR_SUBJECT.lower())

    async def _list(self) -> dict[str, dict[str, str]]:
        params = {"$top": LIST_PAGE, "$expand": expand(*IDENTITY_PROPS)}
        path = self.src.path(f"folders/{self.folder_id}/items")
        return {str(i["id"]): props_of(i) for i in await self.src.graph.list_all(path, params)}


IDENTITY_PROPS = (PR_INTERNET_MESSAGE_ID, PR_SEARCH_KEY, PR_SUBJECT)


async def item_props(
    box: Box, folder_id: str, ids: list[str], prop_ids: tuple[str, ...]
) -> dict[str, dict[str, str]]:
    """Extended properties of items of one folder (mailboxitem-get with $expand), 20 per
    JSON $batch; an item that could not be read (gone since) is left out."""
    query = "$expand=" + quote(expand(*prop_ids), safe="")
    out: dict[str, dict[str, str]] = {}
    for n in range(0, len(ids), BATCH):
        chunk = ids[n : n + BATCH]
        urls = [f"/{box.path(f'folders/{folder_id}/items/{i}')}?{query}" for i in chunk]
        for item_id, body in zip(chunk, await box.graph.batch_get(urls), strict=True):
            if isinstance(body, dict):
                out[item_id] = props_of(body)
    return out


def _page_rows(
    ctx: Context, key: str, folder_id: str, values: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    forget: list[str] = []
    for v in values:
        item_id = str(v["id"])
        known = ctx.journal.mapped(key, item_id)
        if "@removed" in v:
            if known is None:
                continue
            if known["status"] in ("copied", "changed"):
                rows.append({"source_item_id": item_id, "status": "gone"})
            elif known["status"] in ("pending", "skipped"):
                forget.append(item_id)
            continue
        change_key = v.get("changeKey")
        if known is None:
            rows.append(
                {
                    "source_item_id": item_id,
                    "source_folder_id": folder_id,
                    "source_change_key": change_key,
                    "source_created": v.get("createdDateTime"),
                    "size": int(v.get("size") or 0),
                    "kind": v.get("type") or MAIL_CLASS,
                    "status": "pending",
                }
            )
        elif known["source_change_key"] != change_key:
            status = "changed" if known["status"] in ("copied", "changed") else known["status"]
            rows.append(
                {"source_item_id": item_id, "source_change_key": change_key, "status": status}
            )
    return rows, forget


# -- moves -----------------------------------------------------------------------------------------

MOVE_MARK = "moving the copy of "  # reason of a row whose old copy is still to be removed


def plan_moves(ctx: Context, key: str, plan: Plan, counts: Counter[str]) -> None:
    """Pair pending items with the gone copy of the same item (a move at the source).

    A copy already in the item's new target folder is adopted as it is; otherwise the item
    is marked (`reason` names the gone row) and copied by the pipeline like any pending item,
    whatever the window, and `finish_moves` deletes the old copy once the new one is journaled.
    A pass killed anywhere in between resumes from these marks.
    """
    gone: dict[str, list[dict[str, Any]]] = {}
    for g in ctx.journal.mapped_items(key, status="gone"):
        if g["target_item_id"] and g["source_identity"]:
            gone.setdefault(str(g["source_identity"]), []).append(g)
    if not gone or ctx.planning:
        return
    for p in ctx.journal.mapped_items(key, status="pending"):
        match = gone.get(str(p["source_identity"])) if p["source_identity"] else None
        dest = plan.target_of.get(p["source_folder_id"])
        if not match or len(match) != 1 or dest is None or str(p["reason"] or ""):
            continue
        old = match.pop()
        if old["kind"] != p["kind"]:
            continue
        if old["target_folder_id"] == dest:  # e.g. two source folders mapped to one
            ctx.journal.unmap_item(key, old["source_item_id"])
            ctx.journal.map_item(
                key,
                p["source_item_id"],
                status="changed",  # re-sync its state with Mode: update
                target_folder_id=dest,
                target_item_id=old["target_item_id"],
                target_change_key=old["target_change_key"],
            )
            counts["moved"] += 1
            continue
        ctx.journal.map_item(key, p["source_item_id"], reason=MOVE_MARK + old["source_item_id"])


def _moving(row: dict[str, Any]) -> bool:
    return str(row.get("reason") or "").startswith(MOVE_MARK)


async def finish_moves(ctx: Context, key: str, tgt: Box, counts: Counter[str]) -> None:
    """Moved items whose new copy is journaled: delete the old copy, forget its row."""
    for p in ctx.journal.mapped_items(key):
        if p["status"] not in ("copied", "changed") or not _moving(p):
            continue
        old = ctx.journal.mapped(key, str(p["reason"])[len(MOVE_MARK) :])
        if old is not None and old["status"] == "gone" and old["target_item_id"]:
            with contextlib.suppress(NotFound):  # deleted by a pass that died after it
                await tgt.graph.send("DELETE", io_item_path(tgt, old))
        if ctx.planning:
            continue
        if old is not None and old["status"] == "gone":
            ctx.journal.unmap_item(key, old["source_item_id"])
        ctx.journal.map_item(key, p["source_item_id"], reason=None)
        counts["moved"] += 1


def copy_path(box: Box, row: dict[str, Any]) -> str:
    """A row's target copy (mailboxitem-get)."""
    return box.path(f"folders/{row['target_folder_id']}/items/{row['target_item_id']}")


def io_item_path(box: Box, row: dict[str, Any]) -> str:
    """The URL that deletes a row's target copy (mailboxfolder-delete-items)."""
    return f"{copy_path(box, row)}?disposalType={DISPOSAL}"


# -- moves of the graph-items mover (mail API ids) --------------------------------------------------


async def resolve_moves(
    ctx: Context,
    key: str,
    tgt: Box,
    plan: Plan,
    counts: Counter[str],
    signature: Callable[[dict[str, Any]], tuple[Any, ...]],
) -> None:
    """The graph-items mover's moves: pair pending items with gone copies by `signature`
    (the mover's own notion of the same item) and move the copy with the mail API.

    Crash safety: the pending row is marked `importing` with `reason` naming the gone row
    before the move is sent, the gone row is dropped after it, and the pending row is
    recorded last. A pass that died anywhere in between is finished by
    `_finish_interrupted_moves` on the next pass instead of copying the item again.
    """
    await _finish_interrupted_moves(ctx, key, tgt, counts)
    gone = ctx.journal.mapped_items(key, status="gone")
    if not gone:
        return
    by_sig: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for g in gone:
        by_sig.setdefault(signature(g), []).append(g)
    for p in ctx.journal.mapped_items(key, status="pending"):
        match = by_sig.get(signature(p)) or []
        dest = plan.target_of.get(p["source_folder_id"])
        if len(match) != 1 or dest is None or p["kind"] != MAIL_CLASS:
            continue
        old = match.pop()
        if not ctx.planning:
            ctx.journal.map_item(
                key,
                p["source_item_id"],
                status="importing",
                target_folder_id=dest,
                reason=MOVE_MARK + str(old["source_item_id"]),
            )
        await _move_copy(ctx, key, tgt, p, old, dest, counts)


async def _move_copy(
    ctx: Context,
    key: str,
    tgt: Box,
    p: dict[str, Any],
    old: dict[str, Any],
    dest: str,
    counts: Counter[str],
) -> None:
    moved = await tgt.graph.send(
        "POST",
        f"users/{tgt.user_id}/messages/{old['target_item_id']}/move",
        json={"destinationId": dest},
    )
    if moved is None:  # plan mode
        return
    ctx.journal.unmap_item(key, old["source_item_id"])
    ctx.journal.map_item(
        key,
        p["source_item_id"],
        status="changed",  # re-sync state (read/flag) with an update below
        target_folder_id=dest,
        target_item_id=moved["id"],
        target_change_key=moved.get("changeKey"),
        reason=None,
    )
    counts["moved"] += 1


async def _finish_interrupted_moves(ctx: Context, key: str, tgt: Box, counts: Counter[str]) -> None:
    """Rows a dead pass left mid-move: redo the move, or leave the row to the mover's own
    recovery of interrupted copies."""
    for p in ctx.journal.mapped_items(key, status="importing"):
        if not _moving(p):
            continue
        old = ctx.journal.mapped(key, str(p["reason"])[len(MOVE_MARK) :])
        if old is not None and old["status"] == "gone" and old["target_item_id"]:
            try:
                await _move_copy(ctx, key, tgt, p, old, str(p["target_folder_id"]), counts)
                continue
            except NotFound:
                # Moved by the pass that died (Exchange gave it a new id), or deleted in the
                # target since: either way the old row no longer names a target item.
                ctx.journal.unmap_item(key, old["source_item_id"])
        ctx.journal.map_item(key, p["source_item_id"], reason=None)


# -- copy and update -------------------------------------------------------------------------------


@dataclass
class ImportSession:
    url: str
    expires: datetime

    def fresh(self, now: datetime) -> bool:
        return (self.expires - now).total_seconds() > SESSION_MARGIN_S


class Importer:
    """One import session per target mailbox, renewed when it is about to expire."""

    def __init__(self, box: Box) -> None:
        self.box = box
        self.session: ImportSession | None = None
        self._renewing = asyncio.Lock()  # concurrent imports share one new session

    async def url(self) -> str:
        async with self._renewing:
            now = datetime.now().astimezone()
            if self.session is None or not self.session.fresh(now):
                data = await self.box.graph.send(
                    "POST", self.box.path("createImportSession"), json={}
                )
                if data is None:  # plan mode
                    return "planned:importUrl"
                stamp = str(data["expirationDateTime"]).replace("Z", "+00:00")
                self.session = ImportSession(str(data["importUrl"]), datetime.fromisoformat(stamp))
            return self.session.url

    async def put(
        self, folder_id: str, data: str, update: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        # graph/import-exchange-mailbox-item: ItemId/ChangeKey only (and both) in update mode.
        body: dict[str, Any] = {
            "FolderId": folder_id,
            "Mode": "update" if update else "create",
            "Data": data,
        }
        if update is not None:
            body["ItemId"], body["ChangeKey"] = update
        url = await self.url()
        try:
            return await self.box.graph.post_import(url, body)
        except AuthenticationError:
            # The URL is the credential: one the service no longer honours (expired early,
            # *unverified* when) is replaced once; a refused import created nothing.
            async with self._renewing:
                if self.session is not None and self.session.url == url:
                    self.session = None
            return await self.box.graph.post_import(await self.url(), body)


@dataclass(frozen=True)
class Job:
    """One item to import: its item_map row, the target folder, and for an update the
    copy's (ItemId, ChangeKey)."""

    row: dict[str, Any]
    dest: str
    update: tuple[str, str] | None = None

    @property
    def source_id(self) -> str:
        return str(self.row["source_item_id"])


def _batches(jobs: list[Job]) -> Iterator[list[Job]]:
    """Export batches: <= 20 ids and <= EXPORT_BYTES of items (one larger item goes alone),
    so what a batch holds in memory does not depend on the mailbox."""
    batch: list[Job] = []
    size = 0
    for job in jobs:
        item = int(job.row.get("size") or 0)
        if batch and (len(batch) == EXPORT_BATCH or size + item > EXPORT_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(job)
        size += item
    if batch:
        yield batch


def _in_window(row: dict[str, Any], window: Window, now: datetime) -> bool:
    """mailboxItem has no receivedDateTime (resources/mailboxitem): createdDateTime is used,
    which for delivered mail is the delivery time."""
    raw = row.get("source_created")
    created = datetime.fromisoformat(str(raw).replace("Z", "+00:00")) if raw else None
    return window.contains(created, now)


async def _content_info(src: Box, jobs: list[Job]) -> dict[str, dict[str, Any]]:
    """Subject and top-level content type/class of mail items, through the import/export
    API's extended properties (PR_SUBJECT and the PS_INTERNET_HEADERS named properties
    content-type and content-class, MS-OXPROPS); an item that could not be read is left out."""
    by_folder: dict[str, list[str]] = {}
    for j in jobs:
        by_folder.setdefault(str(j.row["source_folder_id"]), []).append(j.source_id)
    out: dict[str, dict[str, Any]] = {}
    for folder_id, ids in by_folder.items():
        found = await item_props(src, folder_id, ids, (PR_SUBJECT, CONTENT_CLASS, CONTENT_TYPE))
        for item_id, props in found.items():
            out[item_id] = {
                "subject": props.get(PR_SUBJECT.lower()),
                "content_type": props.get(CONTENT_TYPE.lower(), "").lower(),
                "content_class": props.get(CONTENT_CLASS.lower(), "").lower(),
            }
    return out


def _skip_reason(ctx: Context, row: dict[str, Any], info: dict[str, Any] | None) -> str | None:
    m = ctx.project.migration
    if int(row.get("size") or 0) > m.max_item_mb * 1024 * 1024:
        return f"larger than {m.max_item_mb} MB"
    if m.encrypted == "skip" and _encrypted(str(row.get("kind") or ""), info or {}):
        return "encrypted (S/MIME or IRM)"
    return None


def _encrypted(item_class: str, info: dict[str, Any]) -> bool:
    # MS-OXOSMIME: encrypted and opaque-signed mail is "IPM.Note.SMIME" (clear-signed mail,
    # "IPM.Note.SMIME.MultipartSigned", is readable and moves). IRM mail is "IPM.Note" with
    # PidNameContentClass "rpmsg.message" (MS-OXBBODY 2.1.3.4), the rights-managed body in an
    # application/x-microsoft-rpmsg-message attachment (MS-OXORMMS): only headers show it.
    if item_class.lower() == "ipm.note.smime":
        return True
    ctype = str(info.get("content_type", ""))
    return any(t in ctype for t in ENCRYPTED_TYPES) or "rpmsg" in str(info.get("content_class"))


async def copy_pending(
    ctx: Context,
    key: str,
    src: Box,
    importer: Importer,
    plan: Plan,
    window: Window,
    counts: Counter[str],
) -> None:
    now = datetime.now().astimezone()
    jobs: list[Job] = []
    for folder_id, dest in plan.target_of.items():
        await _adopt_interrupted(ctx, key, importer.box, folder_id)
        jobs += [
            Job(r, dest)
            for r in ctx.journal.mapped_items(key, folder_id=folder_id, status="pending")
            if _moving(r) or _in_window(r, window, now)  # a moved item's copy exists already
        ]
    await _pipeline(ctx, key, src, importer, jobs, counts)


async def update_changed(
    ctx: Context, key: str, src: Box, importer: Importer, counts: Counter[str]
) -> None:
    """Bring copies in line with their changed source (read/flag state, categories...).

    Crash safety: a copy's change key is forgotten in the journal before its update is sent
    and recorded after it; a row without one (the pass died in between, and the update may
    have landed) is updated over the copy's current change key, read from the target."""
    rows = [r for r in ctx.journal.mapped_items(key, status="changed") if r["target_item_id"]]
    unknown = [r for r in rows if not r["target_change_key"]]
    current = await change_keys(importer.box, unknown) if unknown and not ctx.planning else {}
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
    await _pipeline(ctx, key, src, importer, jobs, counts)


async def change_keys(box: Box, rows: list[dict[str, Any]]) -> dict[str, str]:
    """Current change key of each row's target copy (mailboxitem-get, 20 per $batch)."""
    out: dict[str, str] = {}
    for n in range(0, len(rows), BATCH):
        chunk = rows[n : n + BATCH]
        urls = [f"/{copy_path(box, r)}?$select=changeKey" for r in chunk]
        for r, body in zip(chunk, await box.graph.batch_get(urls), strict=True):
            if isinstance(body, dict) and body.get("changeKey"):
                out[str(r["target_item_id"])] = str(body["changeKey"])
    return out


def _kept_reason(row: dict[str, Any], reason: str) -> str:
    """A row's new reason, unless it is mid-move: that mark must survive until the old copy
    is removed (`finish_moves`)."""
    return str(row["reason"]) if _moving(row) else reason


Exported = list[tuple[Job, tuple[str, str]]]  # (job, (changeKey, base64 stream))


async def _pipeline(
    ctx: Context,
    key: str,
    src: Box,
    importer: Importer,
    jobs: list[Job],
    counts: Counter[str],
) -> None:
    """Export batch n+1 from the source while batch n is imported into the target, with up to
    IMPORTS_IN_FLIGHT imports at once (Outlook admits 4 concurrent requests per mailbox).

    Source and target are different mailboxes with their own budgets, so overlapping them is
    what lets the target's upload budget be spent without gaps. Memory is bounded: one batch
    queued, one being exported, one being imported (each <= EXPORT_BYTES); every stream is
    dropped as soon as its import answers.
    """
    if not jobs:
        return
    queue: asyncio.Queue[Exported | None] = asyncio.Queue(maxsize=PREFETCH_BATCHES)

    async def produce() -> None:
        for batch in _batches(jobs):
            ready = await _export_batch(ctx, key, src, batch, counts)
            if ready:
                await queue.put(ready)
        await queue.put(None)

    slots = asyncio.Semaphore(IMPORTS_IN_FLIGHT)
    sink = Sink(ctx, key, importer, counts)

    async def consume(tg: asyncio.TaskGroup) -> None:
        while (ready := await queue.get()) is not None:
            while ready:
                job, data = ready.pop(0)
                await slots.acquire()
                tg.create_task(_import_one(sink, job, data, slots))
            del ready

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(produce())
            tg.create_task(consume(tg))
    except BaseExceptionGroup as group:
        # One error tree for callers: the first failure, not asyncio's group of them.
        raise group.exceptions[0] from None


async def _export_batch(
    ctx: Context, key: str, src: Box, batch: list[Job], counts: Counter[str]
) -> Exported:
    """Skip what must not be imported (reported with its subject), export the rest."""
    creates = [j for j in batch if j.update is None]
    mail = [j for j in creates if str(j.row["kind"]).startswith(MAIL_CLASS)]
    check = ctx.project.migration.encrypted == "skip"
    info = await _content_info(src, mail) if mail and check else {}
    mail_ids = {j.source_id for j in mail}
    wanted: list[Job] = []
    for job in batch:
        if job.update is None and check and job.source_id in mail_ids and job.source_id not in info:
            # Its properties could not be read (gone since the scan, or an answer that is not
            # a throttle: those are retried in batch_get): its class alone decides (S/MIME
            # is a class; IRM shows only in headers). Counted, so it is visible.
            counts["irm_unchecked"] += 1
        reason = None if job.update else _skip_reason(ctx, job.row, info.get(job.source_id))
        if reason is None:
            wanted.append(job)
            continue
        subject = (info.get(job.source_id) or {}).get("subject") or job.row.get("subject")
        ctx.journal.map_item(key, job.source_id, status="skipped", reason=reason, subject=subject)
        counts["skipped"] += 1
    if not wanted:
        return []
    exported = await _export(src, [j.source_id for j in wanted])
    # An id missing from the answer is gone since the scan: the next delta reports it.
    return [(j, exported.pop(j.source_id)) for j in wanted if j.source_id in exported]


@dataclass(frozen=True)
class Sink:
    """Where one mailbox's imports go and are recorded."""

    ctx: Context
    key: str
    importer: Importer
    counts: Counter[str]

    def record(self, job: Job, **fields: Any) -> None:
        self.ctx.journal.map_item(self.key, job.source_id, **fields)


async def _import_one(
    sink: Sink, job: Job, data: tuple[str, str], slots: asyncio.Semaphore
) -> None:
    try:
        if job.update is None:
            await _create(sink, job, data)
        else:
            await _update(sink, job, data)
    finally:
        slots.release()


async def _create(sink: Sink, job: Job, data: tuple[str, str]) -> None:
    sink.record(job, status="importing", target_folder_id=job.dest)
    try:
        made = await sink.importer.put(job.dest, data[1])
    except InvalidRequest as exc:
        # e.g. "The item does not fit the destination folder": skipped, never dropped.
        sink.record(job, status="skipped", reason=exc.message)
        sink.counts["skipped"] += 1
        return
    # A moved item keeps its mark until `finish_moves` has removed the old copy.
    reason = job.row["reason"] if _moving(job.row) else None
    _copied(sink, job, data, made, target_folder_id=job.dest, reason=reason)
    if reason is None:  # a moved item is counted once, as moved, by `finish_moves`
        sink.counts["copied"] += 1
    sink.counts["bytes"] += int(job.row.get("size") or 0)


async def _update(sink: Sink, job: Job, data: tuple[str, str]) -> None:
    assert job.update is not None
    sink.record(job, target_change_key=None)  # the copy is about to change (crash safety)
    try:
        made = await sink.importer.put(job.dest, data[1], job.update)
    except RemoteError as exc:
        if not update_refused(exc):
            sink.record(job, target_change_key=job.update[1])  # nothing was changed
            raise
        # Changed in the target too, gone there, or refused: that item's conflict, reported
        # (the target wins); the pass goes on.
        reason = _kept_reason(job.row, f"not updated: {exc.message}")
        sink.record(job, status="copied", target_change_key=job.update[1], reason=reason)
        sink.counts["update_conflicts"] += 1
        return
    _copied(sink, job, data, {**made, "itemId": made.get("itemId") or job.update[0]})
    sink.counts["updated"] += 1


def update_refused(exc: RemoteError) -> bool:
    """Any 4xx answer to an update import is that item's conflict: the service documents no
    code for a stale ChangeKey (the sandbox's is a setting), so none is relied on. A 401
    (the import URL) was already retried with a new session; a 429 by the governor."""
    return exc.status is not None and 400 <= exc.status < 500 and exc.status not in (401, 429)


def _copied(
    sink: Sink, job: Job, data: tuple[str, str], made: dict[str, Any], **extra: Any
) -> None:
    """Record the copy the import answered with (its id and change key, the source's)."""
    sink.record(
        job,
        status="copied",
        source_change_key=data[0],
        target_item_id=made.get("itemId"),
        target_change_key=made.get("changeKey"),
        **extra,
    )


async def _export(src: Box, ids: list[str]) -> dict[str, tuple[str, str]]:
    """id -> (changeKey, base64 data) for up to 20 items; failures are left out.

    exportItems changes nothing, so it is sent as a safe POST: retried like a read."""
    data = await src.graph.send("POST", src.path("exportItems"), json={"itemIds": ids}, safe=True)
    out: dict[str, tuple[str, str]] = {}
    for v in (data or {}).get("value", []):
        if "data" in v and "error" not in v:
            out[str(v["itemId"])] = (str(v.get("changeKey")), str(v["data"]))
    return out


async def _adopt_interrupted(ctx: Context, key: str, tgt: Box, folder_id: str) -> None:
    """Items marked `importing` by a pass that died: adopt the copy if the import landed.

    The copy is recognised by its identity (`identity_of`: Message-ID or search key, which
    the stream carries), among the target folder's items no row maps yet: one copy per stuck
    row, so nothing is adopted twice and nothing imported twice. A row without an identity
    (the source item had neither) goes back to pending.
    """
    stuck = ctx.journal.mapped_items(key, folder_id=folder_id, status="importing")
    if not stuck or ctx.planning:
        return
    taken = {r["target_item_id"] for r in ctx.journal.mapped_items(key) if r["target_item_id"]}
    params = {"$top": LIST_PAGE, "$expand": expand(PR_INTERNET_MESSAGE_ID, PR_SEARCH_KEY)}
    copies: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in stuck:
        dest = str(r["target_folder_id"])
        if dest in copies or dest.startswith("planned:"):
            continue
        copies[dest] = {}
        for t in await tgt.graph.list_all(tgt.path(f"folders/{dest}/items"), params):
            ident = identity_of(props_of(t))
            if ident is not None and t["id"] not in taken:
                copies[dest].setdefault(ident, []).append(t)
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
            status="changed",  # re-sync its state with Mode: update, to be sure
            target_item_id=found["id"],
            target_change_key=found.get("changeKey"),
        )


# -- the mover -------------------------------------------------------------------------------------


class ImportExportMover:
    """`[migration] mover = "graph-import-export"`."""

    async def run(self, ctx: Context, subject: str, kind: str, window: Window) -> PassResult:
        from coexist.migrate import reconcile

        if kind == "cutover":
            window = Window()  # the cutover pass moves everything not yet moved
        src_graph, tgt_graph = ctx.source.graph, ctx.target.graph
        tgt_user = target_id(ctx, subject)
        src = Box(src_graph, subject, await mailbox_id(src_graph, subject))
        tgt = Box(tgt_graph, tgt_user, await mailbox_id(tgt_graph, tgt_user))
        plan = await plan_folders(ctx, src, tgt)
        counts: Counter[str] = Counter()
        totals = {f.id: f.total for f in plan.source}
        for folder_id in plan.target_of:
            await scan_folder(ctx, subject, src, folder_id, totals.get(folder_id, 0))
        plan_moves(ctx, subject, plan, counts)
        importer = Importer(tgt)
        await copy_pending(ctx, subject, src, importer, plan, window, counts)
        await update_changed(ctx, subject, src, importer, counts)
        await finish_moves(ctx, subject, tgt, counts)
        await handle_deletions(
            ctx, subject, tgt.graph, tgt.user_id, counts, path_of=lambda r: io_item_path(tgt, r)
        )
        report = await reconcile.reconcile(ctx, subject, src, tgt, plan)
        notes = []
        if counts["irm_unchecked"]:
            notes.append(
                f"{counts['irm_unchecked']} messages checked by item class only "
                "(their headers could not be read: IRM not detectable)"
            )
        if plan.not_ipm:
            notes.append(f"{plan.not_ipm} search and system folders left out")
        return reconcile.pass_result(ctx, kind, plan, report, counts, notes)


MOVERS["graph-import-export"] = ImportExportMover()
