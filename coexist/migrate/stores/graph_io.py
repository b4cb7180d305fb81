"""The full-fidelity store: Microsoft Graph's mailbox import/export API (M365 -> M365).

resources/mailbox-import-export-api-overview (v1.0): items are exported as an opaque
full-fidelity stream (`exportItems`, at most 20 ids per call) and imported through an import
session whose `importUrl` is pre-authenticated (`createImportSession`); folders are listed,
created and deleted, items listed and deleted, through the same API. The stream is never
opened here: what it holds reaches the target unchanged (MIME byte-identical, every property
kept). This store speaks only that API for folders and items; its folder and item ids are
its own (never handed to the mail/calendar/contacts/To Do APIs, which would not know them).
The sync algorithm (`migrate.sync`) decides what to copy; `[migration] mover =
"graph-import-export"` is that algorithm between two of these stores.

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
- Moves: the API has none; the sync algorithm imports the moved item into its new folder
  and deletes the old copy.
- Updates: a changed item is re-exported and imported with `Mode: update` over its copy.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from coexist.engine.context import Context
from coexist.errors import AuthenticationError, Conflict, InvalidRequest, NotFound, RemoteError
from coexist.migrate.passes import MOVERS
from coexist.migrate.stores.graph import (
    MAIL_WELL_KNOWN,
    MAILBOX_KIND,
    NAMES_KIND,
    Box,
    mailbox_id,
    sync_state_lost,
)
from coexist.migrate.sync import StoreMover, message_identity
from coexist.provisioning.convert import target_id
from coexist.tenants.graph import BATCH_REQUESTS, GraphAdapter
from coexist.tenants.protocols import (
    EXCHANGE_STREAM,
    MAIL_CLASS,
    MAIL_FOLDER,
    REPLACED_KIND,
    Capabilities,
    Change,
    ChangePage,
    Folder,
    FolderTree,
    Imported,
    ItemInfo,
    ItemRef,
    MailboxStore,
    Payload,
)

EXPORT_BATCH = 20  # mailbox-exportitems: "The maximum size of this collection is 20 strings."
# Bytes of items per exportItems call: the answer is held whole (base64 in JSON), so large
# items are exported a few at a time and memory stays flat whatever the mailbox holds.
EXPORT_BYTES = 6 * 1024 * 1024
IMPORTS_IN_FLIGHT = 4  # graph/throttling-limits: 4 concurrent requests per app per mailbox
DELTA_PAGE = 200  # Prefer: odata.maxpagesize (graph/delta-query-messages)
LIST_PAGE = 1000  # $top for item and folder listings (the API's largest page here)
CHECKPOINT_KIND = "io-items"
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
IDENTITY_PROPS = (PR_INTERNET_MESSAGE_ID, PR_SEARCH_KEY, PR_SUBJECT)
INFO_PROPS = (PR_SUBJECT, CONTENT_CLASS, CONTENT_TYPE)  # what `inspect` reads
# What the scan reads of a new item: its identity, and what `inspect` would read of it later
# in the pass (kept for up to INFO_KEPT items, so the export's inspection sends nothing).
SCAN_PROPS = (*IDENTITY_PROPS, CONTENT_CLASS, CONTENT_TYPE)
INFO_KEPT = 10_000

CAPS = Capabilities(
    exports=frozenset({EXCHANGE_STREAM}),
    accepts=frozenset({EXCHANGE_STREAM}),
    cursor="delta-token",
    folder_classes=frozenset({MAIL_FOLDER, "IPF.Contact", "IPF.Appointment", "IPF.Task"}),
    checkpoint_kind=CHECKPOINT_KIND,
    export_batch=EXPORT_BATCH,
    export_bytes=EXPORT_BYTES,
    imports_in_flight=IMPORTS_IN_FLIGHT,
    # mailboxFolder's totalItemCount (v1.0 CSDL), read with the folder listing: a folder that
    # counts 0 has no item for its items delta to report (*unverified*: that Exchange's count
    # and the delta cover the same items, the folder's normal ones, as the sandbox's do).
    empty_means_nothing=True,
    side_state=frozenset({MAILBOX_KIND, NAMES_KIND}),
)


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


# -- the folder tree -------------------------------------------------------------------------------


Names = dict[str, tuple[str, str]]  # well-known name -> (folder class, display name)
WELL_KNOWN = (*MAIL_WELL_KNOWN, "calendar", "contacts", "tasks")  # what `well_known_names` asks


def names_hold(found: dict[str, dict[str, Any]], names: Names) -> bool:
    """Whether default folders' names read by an earlier pass still name this listing's
    defaults: every default answered then (a default missing then may exist now) and each
    name is a folder of its class under one parent (the IPM root). A mailbox whose language
    changed has its defaults renamed (Set-MailboxRegionalConfiguration
    -LocalizeDefaultFolderName), so its old names are not found and are read again."""
    if set(names) != set(WELL_KNOWN):
        return False
    parents: set[str] = set()
    for folder_class, name in names.values():
        hits = [
            str(f.get("parentFolderId") or "")
            for f in found.values()
            if (f.get("type") or MAIL_FOLDER) == folder_class
            and str(f.get("displayName", "")).casefold() == name.casefold()
        ]
        if not hits:
            return False
        parents.update(hits)
    return len(parents) == 1


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


def listing_requests(found: dict[str, dict[str, Any]]) -> int:
    """Requests `_all_folders` made for `found` (at least): the top list and one per parent."""
    return 1 + sum(1 for f in found.values() if f.get("childFolderCount"))


async def folder_tree(box: Box) -> FolderTree:
    """Every IPM folder of the mailbox, parents before children, with its path of names from
    the IPM root; top-level defaults carry their well-known name. Search folders and folders
    outside the IPM subtree are left out (and counted)."""
    found = await _all_folders(box)
    return ipm_tree(found, await well_known_names(box))


def ipm_tree(found: dict[str, dict[str, Any]], names: dict[str, tuple[str, str]]) -> FolderTree:
    """`folder_tree` of the folders listed (`_all_folders`) and the defaults' names."""
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
    return FolderTree(out, len(found) - len(kept))


async def item_props(
    box: Box, folder_id: str, ids: list[str], prop_ids: tuple[str, ...]
) -> dict[str, dict[str, str]]:
    """Extended properties of items of one folder (mailboxitem-get with $expand), 20 per
    JSON $batch; an item that could not be read (gone since) is left out."""
    query = "$expand=" + quote(expand(*prop_ids), safe="")
    out: dict[str, dict[str, str]] = {}
    for n in range(0, len(ids), BATCH_REQUESTS):
        chunk = ids[n : n + BATCH_REQUESTS]
        urls = [f"/{box.path(f'folders/{folder_id}/items/{i}')}?{query}" for i in chunk]
        for item_id, body in zip(chunk, await box.graph.batch_get(urls), strict=True):
            if isinstance(body, dict):
                out[item_id] = props_of(body)
    return out


# -- the change feed -------------------------------------------------------------------------------


class DeltaRound:
    """One round of a folder's items delta (mailboxfolder-delta), and the identity and
    subject of its new items, read through the API's extended properties: by listing the
    folder (one request per 1,000 items of its total) when that costs fewer requests than
    reading them one by one (each inner request of a $batch counts against the mailbox's
    budget), else item by item."""

    def __init__(
        self,
        box: Box,
        folder: Folder,
        cursor: str | None,
        seen: dict[str, ItemInfo] | None = None,
    ) -> None:
        self.box, self.folder = box, folder
        self.link = cursor or box.path(f"folders/{folder.id}/items/delta")
        self.listed: dict[str, dict[str, str]] | None = None
        self.seen = seen  # the store's `inspect` answers, filled here (`info_of`)

    async def pages(self) -> AsyncIterator[ChangePage]:
        headers = {"Prefer": f"odata.maxpagesize={DELTA_PAGE}"}
        async for values, delta in self.box.graph.delta_pages(self.link, headers):
            yield ChangePage([_change(v) for v in values], delta)

    async def describe(self, new: list[Change]) -> list[Change]:
        ids = [c.id for c in new]
        if not ids:
            return []
        if self.listed is None and -(-self.folder.total // LIST_PAGE) < len(ids):
            self.listed = await self._list()
        found = {i: self.listed[i] for i in ids if i in self.listed} if self.listed else {}
        missing = [i for i in ids if i not in found]
        found.update(await item_props(self.box, self.folder.id, missing, SCAN_PROPS))
        out = []
        seen = self.seen
        for c in new:
            props = found.get(c.id)
            if props is None:
                out.append(_described(c, None, None))
                continue
            out.append(_described(c, identity_of(props), props.get(PR_SUBJECT.lower())))
            if seen is not None and len(seen) < INFO_KEPT:
                seen[c.id] = info_of(props)
        return out

    async def _list(self) -> dict[str, dict[str, str]]:
        params = {"$top": LIST_PAGE, "$expand": expand(*SCAN_PROPS)}
        path = self.box.path(f"folders/{self.folder.id}/items")
        return {str(i["id"]): props_of(i) for i in await self.box.graph.list_all(path, params)}


def info_of(props: dict[str, str]) -> ItemInfo:
    """An item's subject and top-level content type/class (`inspect`), from its props."""
    return ItemInfo(
        props.get(PR_SUBJECT.lower()),
        props.get(CONTENT_TYPE.lower(), "").lower(),
        props.get(CONTENT_CLASS.lower(), "").lower(),
    )


def _change(v: dict[str, Any]) -> Change:
    if "@removed" in v:
        return Change(str(v["id"]), removed=True)
    return Change(
        str(v["id"]),
        change_key=v.get("changeKey"),
        # mailboxItem has no receivedDateTime (resources/mailboxitem): createdDateTime is
        # used, which for delivered mail is the delivery time.
        created=v.get("createdDateTime"),
        size=int(v.get("size") or 0),
        kind=v.get("type") or MAIL_CLASS,
    )


def _described(c: Change, identity: str | None, subject: str | None) -> Change:
    return Change(c.id, c.removed, c.change_key, c.created, c.size, c.kind, identity, subject)


# -- imports ---------------------------------------------------------------------------------------


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
        session = self.session
        if session is not None and session.fresh(datetime.now(UTC)):
            return session.url  # the usual case: no lock to queue on
        async with self._renewing:
            now = datetime.now(UTC)
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


_DATA_KEY = b'"data"'
_JSON_SPACE = (b" ", b"\t", b"\r", b"\n")  # RFC 8259's insignificant whitespace


def _past_space(raw: bytes | bytearray, at: int) -> int:
    """The first position from `at` that is not JSON whitespace (or the end)."""
    while at < len(raw) and raw[at : at + 1] in _JSON_SPACE:
        at += 1
    return at


def parse_export(raw: bytes | bytearray) -> Any:
    """An exportItems answer parsed, its items' `data` (base64, megabytes each) cut out of the
    JSON by finding their closing quotes instead of being scanned by the JSON decoder:
    that scan was ~0.8 ms of CPU per MB, the largest part of the client's CPU per MB moved
    after TLS (bench/graph_mover_bench.py upload part, profiled).

    Base64 has no quote and no backslash, so a `"data":"` string ends at the next quote; if
    one holds a backslash, or a cut-out string is not an item's `data` in `value`, the answer
    is parsed whole by `json.loads` instead (the same result, only slower)."""
    parts: list[bytes | bytearray] = []
    cut: list[str] = []
    pos = 0
    while True:
        key = raw.find(_DATA_KEY, pos)
        if key < 0:
            break
        at = _past_space(raw, key + len(_DATA_KEY))
        if raw[at : at + 1] != b":":
            pos = at
            continue
        at = _past_space(raw, at + 1)
        if raw[at : at + 1] != b'"':
            pos = at
            continue
        start = at + 1
        end = raw.find(b'"', start)
        if end < 0 or raw.find(b"\\", start, end) >= 0:
            return json.loads(raw)
        parts += (raw[pos:start], str(len(cut)).encode())
        with memoryview(raw) as view:  # decoded from the answer in place: one copy
            cut.append(str(view[start:end], "ascii"))
        pos = end
    if not cut:
        return json.loads(raw)
    parts.append(raw[pos:])
    doc = json.loads(b"".join(parts))
    restored = 0
    for v in doc.get("value", []) if isinstance(doc, dict) else []:
        if isinstance(v, dict) and isinstance(v.get("data"), str) and v["data"].isdigit():
            v["data"] = cut[int(v["data"])]
            restored += 1
    return doc if restored == len(cut) else json.loads(raw)


# -- the store -------------------------------------------------------------------------------------


class GraphIOStore:
    """One mailbox through the mailbox import/export API."""

    def __init__(
        self,
        box: Box,
        recheck: Callable[[str], None] | None = None,
        kept_names: Names | None = None,
        keep_names: Callable[[Names], None] | None = None,
        *,
        planning: bool = False,
        replaced: bool = False,
    ) -> None:
        self.box = box
        self.importer = Importer(box)
        # The mailbox was re-created since the journal kept its id (`_first_listing` found a
        # new one, or a pass that did was killed before its copies were checked again):
        # said by the folder tree (`FolderTree.replaced`).
        self.replaced = replaced
        self.planning = planning  # plan mode: `export` reads no stream
        # The default folders' names, read with the pass's first folder tree: the tree of
        # the reconciliation (`totals`) reuses them instead of a $batch of 10 more reads
        # against the mailbox's budget (a store lives for one pass).
        self._names: dict[str, tuple[str, str]] | None = None
        # The names an earlier pass read, which the journal kept (`open_stores`): used
        # while they still name the listing's defaults (`names_hold`), else read again
        # and handed to `keep_names`.
        self._kept_names, self._keep_names = kept_names, keep_names
        # Set while the mailbox id is one the journal kept (`open_stores`), not one read
        # this pass: a 404 of the first folder listing re-reads it (`_first_listing`) and
        # hands the new one to `recheck` to keep.
        self._recheck = recheck
        # The pass's folder listing (totals by folder id), what it cost in requests, and the
        # folders this store changed since (imports, deletions, new folders): `totals`
        # re-reads only those (a store lives for one pass).
        self._listed: dict[str, int] | None = None
        self._listing_cost = 0
        self._touched: set[str] = set()
        # What the pass's scan read of new items for `inspect` (DeltaRound.describe), by
        # item id; each answer is taken out when used.
        self._seen: dict[str, ItemInfo] = {}

    @classmethod
    async def open(
        cls, graph: GraphAdapter, user_id: str, *, planning: bool = False
    ) -> GraphIOStore:
        return cls(Box(graph, user_id, await mailbox_id(graph, user_id)), planning=planning)

    @property
    def caps(self) -> Capabilities:
        return CAPS

    async def list_folders(self) -> FolderTree:
        # The listing first, then the names, as `folder_tree` orders them: a mailbox's first
        # request stays a single one (a $batch first drew throttling from a drained budget).
        found = await self._first_listing()
        if self._names is None:
            kept = self._kept_names
            if kept is not None and names_hold(found, kept):
                self._names = kept
            else:
                self._names = await well_known_names(self.box)
                if self._keep_names is not None and self._names != kept:
                    self._keep_names(self._names)
        tree = ipm_tree(found, self._names)
        if self.replaced:
            tree = FolderTree(tree.folders, tree.left_out, replaced=True)
        self._listed = {f.id: f.total for f in tree.folders}
        self._listing_cost = listing_requests(found)
        self._touched.clear()
        return tree

    async def _first_listing(self) -> dict[str, dict[str, Any]]:
        """The folder listing; the pass's first request to the mailbox. With a mailbox id
        the journal kept, a 404 (ErrorMailboxNotFound: the mailbox was re-created, its id is
        new) re-reads the id from settings/exchange once and lists again with it."""
        recheck, self._recheck = self._recheck, None
        try:
            return await _all_folders(self.box)
        except NotFound:
            if recheck is None:
                raise
            fresh = await mailbox_id(self.box.graph, self.box.user_id)
            if fresh == self.box.mailbox_id:
                raise
            recheck(fresh)
            self.replaced = True
            self.box = Box(self.box.graph, self.box.user_id, fresh)
            self.importer = Importer(self.box)  # no session made yet: the listing is first
            return await _all_folders(self.box)

    async def create_folder(
        self, parent: Folder | None, name: str, path: tuple[str, ...], folder_class: str
    ) -> Folder | None:
        """Create a folder of any class (mailbox-post-folders: `displayName` and `type`, under
        the IPM root or as a child folder); None where the target refuses one there (400)."""
        box = self.box
        where = box.path(f"folders/{parent.id}/childFolders" if parent else "folders")
        try:
            made = await box.graph.send(
                "POST", where, json={"displayName": name, "type": folder_class}
            )
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
        self._touched.add(str(made["id"]))
        return Folder(str(made["id"]), path, None, folder_class, 0)

    def changes(self, folder: Folder, cursor: str | None) -> DeltaRound:
        return DeltaRound(self.box, folder, cursor, self._seen)

    def cursor_lost(self, exc: RemoteError) -> bool:
        return sync_state_lost(exc)

    async def inspect(self, refs: list[ItemRef]) -> dict[str, ItemInfo]:
        """Subject and top-level content type/class of mail items, through the API's extended
        properties (PR_SUBJECT and the PS_INTERNET_HEADERS named properties content-type and
        content-class, MS-OXPROPS). What this pass's scan already read of an item (`_seen`)
        answers for it: no request."""
        by_folder: dict[str, list[str]] = {}
        out: dict[str, ItemInfo] = {}
        for r in refs:
            known = self._seen.pop(r.item_id, None)
            if known is not None:
                out[r.item_id] = known
            else:
                by_folder.setdefault(r.folder_id, []).append(r.item_id)
        for folder_id, ids in by_folder.items():
            for item_id, props in (await item_props(self.box, folder_id, ids, INFO_PROPS)).items():
                out[item_id] = info_of(props)
        return out

    async def export(
        self, refs: list[ItemRef], fmt: str, state_only: bool = False
    ) -> dict[str, Payload]:
        """Up to 20 items (mailbox-exportitems); failures are left out. exportItems changes
        nothing, so it is sent as a safe POST: retried like a read. The stream is opaque, so
        an update (`state_only`) exports the whole item too.

        Plan mode: no stream is read (the pass's largest read, and a planned import writes
        nothing): each item's payload is empty, with the change key its scan saw; what the
        plan says of it (folder, size) comes from the scan."""
        if self.planning:
            return {r.item_id: Payload(fmt, "", r.change_key, source_id=r.item_id) for r in refs}
        ids = [r.item_id for r in refs]
        box = self.box
        data = await box.graph.send(
            "POST", box.path("exportItems"), json={"itemIds": ids}, safe=True, decode=parse_export
        )
        out: dict[str, Payload] = {}
        for v in (data or {}).get("value", []):
            if "data" in v and "error" not in v:
                out[str(v["itemId"])] = Payload(fmt, str(v["data"]), str(v.get("changeKey")))
        return out

    async def import_item(
        self, folder_id: str, payload: Payload, replace: ItemRef | None = None
    ) -> Imported:
        update = (replace.item_id, replace.change_key or "") if replace else None
        self._touched.add(folder_id)  # before the request: an import that fails may land
        made = await self.importer.put(folder_id, payload.data, update)
        return Imported(made.get("itemId"), made.get("changeKey"))

    def update_refused(self, exc: RemoteError) -> bool:
        """Any 4xx answer to an update import is that item's conflict: the service documents
        no code for a stale ChangeKey (the sandbox's is a setting), so none is relied on. A
        401 (the import URL) was already retried with a new session; a 429 by the governor."""
        return exc.status is not None and 400 <= exc.status < 500 and exc.status not in (401, 429)

    async def copies(self, folder_id: str, exclude: set[str]) -> dict[str, list[ItemRef]]:
        """The folder's items by identity (`identity_of`: Message-ID or search key, which the
        stream carries), but those in `exclude`."""
        params = {"$top": LIST_PAGE, "$expand": expand(PR_INTERNET_MESSAGE_ID, PR_SEARCH_KEY)}
        out: dict[str, list[ItemRef]] = {}
        for t in await self.box.graph.list_all(self.box.path(f"folders/{folder_id}/items"), params):
            ident = identity_of(props_of(t))
            if ident is not None and t["id"] not in exclude:
                out.setdefault(ident, []).append(ItemRef(folder_id, t["id"], t.get("changeKey")))
        return out

    async def copies_of(
        self, folder_id: str, source_id: str, identity: str | None, exclude: set[str]
    ) -> list[ItemRef]:
        """A stream import is atomic (its copies are adopted through `copies`); this is the
        same listing, for one identity."""
        if identity is None:
            return []
        return (await self.copies(folder_id, exclude)).get(identity, [])

    async def move(self, ref: ItemRef, folder_id: str) -> Imported:
        """Never called (`caps.moves` is False): the import/export API documents no move of
        a mailbox item (resources/mailbox-import-export-api-overview), so a moved item is
        imported into its new folder and the old copy deleted."""
        raise NotImplementedError("GraphIOStore.move: caps.moves is False")

    async def change_keys(self, refs: list[ItemRef]) -> dict[str, str]:
        """Current change key of each item (mailboxitem-get, 20 per $batch)."""
        out: dict[str, str] = {}
        for n in range(0, len(refs), BATCH_REQUESTS):
            chunk = refs[n : n + BATCH_REQUESTS]
            urls = [f"/{self._item_path(r)}?$select=changeKey" for r in chunk]
            for r, body in zip(chunk, await self.box.graph.batch_get(urls), strict=True):
                if isinstance(body, dict) and body.get("changeKey"):
                    out[r.item_id] = str(body["changeKey"])
        return out

    async def delete(self, ref: ItemRef) -> None:
        """Soft-delete an item (mailboxfolder-delete-items)."""
        self._touched.add(ref.folder_id)
        await self.box.graph.send("DELETE", f"{self._item_path(ref)}?disposalType={DISPOSAL}")

    async def totals(self) -> dict[str, int]:
        """Items per folder now. The pass's listing answers for the folders this store left
        as they were; those it changed are read again one by one (mailboxfolder-get), unless
        that costs as many requests as listing the whole tree again. A folder untouched by
        the pass counts what it held when the pass listed it: mail that reaches the live
        target meanwhile is counted by the next pass."""
        listed, touched = self._listed, self._touched
        if self.box.graph.plan is not None and listed is not None:
            return dict(listed)  # plan mode: the pass changed nothing in the target
        if listed is None or len(touched) >= self._listing_cost:
            return {f.id: f.total for f in (await self.list_folders()).folders}
        out = dict(listed)
        for folder_id in sorted(touched):
            try:
                data = await self.box.graph.send("GET", self.box.path(f"folders/{folder_id}"))
            except NotFound:  # removed from the live target since
                out.pop(folder_id, None)
                continue
            out[folder_id] = int((data or {}).get("totalItemCount") or 0)
        return out

    def _item_path(self, ref: ItemRef) -> str:
        return self.box.path(f"folders/{ref.folder_id}/items/{ref.item_id}")


@asynccontextmanager
async def open_stores(
    ctx: Context, subject: str
) -> AsyncIterator[tuple[MailboxStore, MailboxStore]]:
    """A pass's stores: the user's source mailbox and its target mailbox (over the sides'
    Graph adapters, which the session closes: nothing to close per pass)."""
    kept = {
        (str(c["kind"]), str(c["folder_id"])): c
        for c in ctx.journal.checkpoints(subject)
        if c["kind"] in (MAILBOX_KIND, NAMES_KIND, REPLACED_KIND)
    }
    src = await _open(ctx, subject, "source", ctx.source.graph, subject, kept)
    tgt = await _open(ctx, subject, "target", ctx.target.graph, target_id(ctx, subject), kept)
    yield src, tgt


async def _open(
    ctx: Context,
    subject: str,
    side: str,
    graph: GraphAdapter,
    user_id: str,
    kept: dict[tuple[str, str], dict[str, Any]],
) -> GraphIOStore:
    """One side's store. Its import/export mailbox id is kept in the journal per user and
    side (a `MAILBOX_KIND` row, with the user id it belongs to), so a pass does not read
    settings/exchange again; a kept id that no longer answers is re-read at the pass's first
    request (`GraphIOStore._first_listing`). The default folders' names are kept the same
    way (`NAMES_KIND`), and read again when they no longer hold (`names_hold`)."""

    def keep(mbx: str) -> None:
        ctx.journal.save_checkpoint(subject, side, MAILBOX_KIND, token=mbx, watermark=user_id)

    def renewed(mbx: str) -> None:
        # The kept id no longer answers and the user has a new one: the mailbox was
        # re-created. Journaled before the new id is kept, so a pass killed in between
        # still checks the target's copies again (`sync.reverify_copies`).
        if side == "target":
            ctx.journal.save_checkpoint(subject, side, REPLACED_KIND, token="1")
        keep(mbx)

    def keep_names(names: Names) -> None:
        token = json.dumps({wk: list(v) for wk, v in sorted(names.items())})
        ctx.journal.save_checkpoint(subject, side, NAMES_KIND, token=token, watermark=user_id)

    names = kept.get((NAMES_KIND, side)) or {}
    kept_names: Names | None = None
    if names.get("token") and names.get("watermark") == user_id:
        kept_names = {wk: (str(c), str(n)) for wk, (c, n) in json.loads(names["token"]).items()}
    replaced = (REPLACED_KIND, side) in kept
    row = kept.get((MAILBOX_KIND, side)) or {}
    if row.get("token") and row.get("watermark") == user_id:
        mbx = str(row["token"])
        # What reading settings/exchange teaches the adapter's governors (the id and the
        # user are one mailbox, one budget: GraphAdapter._learn_mailbox).
        graph.mailboxes.alias(mbx, user_id)
        box = Box(graph, user_id, mbx)
        return GraphIOStore(
            box, renewed, kept_names, keep_names, planning=ctx.planning, replaced=replaced
        )
    mbx = await mailbox_id(graph, user_id)
    keep(mbx)
    box = Box(graph, user_id, mbx)
    return GraphIOStore(box, None, kept_names, keep_names, planning=ctx.planning, replaced=replaced)


MOVERS["graph-import-export"] = StoreMover(open_stores)
