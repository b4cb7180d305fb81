"""Graph's mailbox import/export API: `/admin/exchange/mailboxes/{mailboxId}/...`.

Shapes follow learn.microsoft.com/graph/mailbox-import-export-concept-overview
and the API pages it links (mailbox-list-folders, mailboxfolder-list-childfolders,
mailboxfolder-list-items, mailboxfolder-delta, mailboxitem-delta, mailbox-exportitems,
mailbox-createimportsession, graph/import-exchange-mailbox-item):

- The mailbox id is `settings/exchange.primaryMailboxId` (`users.primary_mailbox_id`).
- `exportItems` takes at most 20 ids (same mailbox) and answers one
  exportItemResponse per id: {itemId, changeKey, data (base64 opaque stream)} or
  {itemId, error: mailTipsError}.
- `createImportSession` answers {importUrl, expirationDateTime}; the importUrl is
  pre-authenticated ("don't specify an Authorization request header") and takes
  POST {FolderId, Mode: create|update, Data, ItemId?, ChangeKey?} →
  {itemId, changeKey}.

The "FastTransfer stream" Exchange exports is replaced by this sandbox's own
versioned serialisation (`_Blob`): a header line of JSON (message class, every
stored property) followed by the item's MIME for mail. It is opaque to clients,
as Microsoft's is, and import reproduces the item exactly (MIME byte-identical,
every stored property equal) in any mailbox.

Covered item kinds: mail (the mailstore), contacts, events (a series master
travels with its exceptions) and To Do tasks (the PIM store). The folder tree
served here is the mailstore's IPM subtree plus the PIM folders under it.

Delta (folders and items) keeps its snapshots server-side (`PimStore.save_state`):
a deltaToken names the snapshot a round ended with; the next round reports
what was added or changed (by change key) and what disappeared (`@removed`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..identity import Principal
from ..mailstore import ROOT, STORE_OWNED, Folder, MailStore, looks_like_id
from ..model import User
from ..pim import FOLDER_CLASS, ITEM_CLASS, ITEM_KIND, PimFolder, PimItem, PimStore
from ..web import HTTPFailure, ctx_of, graph_principal, graph_throttled
from . import common, mail
from .common import GraphJSON, fail
from .outlook_items import pim_of

# -- permissions (the API pages' "Permissions" tables, application) --------------------------------
FOLDER_READ = ("MailboxFolder.Read.All", "MailboxFolder.ReadWrite.All")  # mailboxfolder-delta
# *unverified*: mailboxfolder-list-items / mailboxitem-delta list MailboxItem.Read.All; the
# import/export role is accepted too because a mover holding it must be able to enumerate.
ITEM_READ = ("MailboxItem.Read.All", "MailboxItem.ImportExport.All")
EXPORT = ("MailboxItem.Export.All", "MailboxItem.ImportExport.All")  # mailbox-exportitems
IMPORT = ("MailboxItem.ImportExport.All",)  # mailbox-createimportsession
# *unverified*: the import/export role also lets an app enumerate folders here.
FOLDER_READ_ANY = (*FOLDER_READ, "MailboxItem.ImportExport.All")

EXPORT_MAX_IDS = 20  # mailbox-exportitems: "The maximum size of this collection is 20 strings."
PAGE_DEFAULT = 10  # *unverified*: Outlook's default page size (as for messages)
PAGE_MAX = 1000
SESSION_LIFETIME_S = 3600.0  # *unverified*: the docs show only that the importUrl expires
BLOB_MAGIC = b"CXFTS\x01"  # this sandbox's stand-in for an FTS stream, version 1

# Message-table columns that identify a row rather than describe the item (never exported).


# -- errors (one place) -------------------------------------------------------------------------


def mailbox_not_found(request: Request, key: str) -> HTTPFailure:
    # *unverified*: code and wording for an unknown mailbox id.
    return fail(404, "ErrorMailboxNotFound", f"The mailbox '{key}' was not found.", request)


def too_many_ids(request: Request) -> HTTPFailure:
    # *unverified*: code and wording; the limit itself is documented (mailbox-exportitems).
    return fail(
        400,
        "ErrorInvalidRequest",
        f"The itemIds collection must contain between 1 and {EXPORT_MAX_IDS} identifiers.",
        request,
    )


def invalid_import(request: Request, message: str) -> HTTPFailure:
    # *unverified*: code for a malformed importItem body.
    return fail(400, "ErrorInvalidRequest", message, request)


def bad_import_token(request: Request) -> HTTPFailure:
    # *unverified*: what outlook.office365.com answers for a wrong or expired import authtoken.
    return fail(401, "InvalidAuthenticationToken", "Access token validation failure.", request)


def change_key_conflict(request: Request) -> HTTPFailure:
    # Exchange's ErrorIrresolvableConflict (EWS ResponseCode text); Graph answers it with 409.
    return fail(
        409,
        "ErrorIrresolvableConflict",
        "The send or update operation could not be performed because the change key passed in "
        "the request does not match the current change key for the item.",
        request,
    )


# -- admission -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mailbox:
    key: str  # tenant key ('source' / 'target')
    user: User
    mailbox_id: str


def _find_mailbox(request: Request, principal: Principal, mailbox_id: str) -> Mailbox:
    world = ctx_of(request).world
    tenant = principal.tenant
    guid, _, tid = mailbox_id.removeprefix("MBX:").partition("@")
    with world.lock:
        tenant.settle()
        if mailbox_id.startswith("MBX:") and tid.lower() == tenant.tenant_id.lower():
            for user in tenant.users.values():
                if (
                    user.is_mailbox
                    and (user.exchange_guid or "").lower() == guid.lower()
                    and common.visible(user, common.now())
                ):
                    return Mailbox(mail.tenant_key(world, tenant), user, mailbox_id)
    raise mailbox_not_found(request, mailbox_id)


def _authorize(request: Request, roles: tuple[str, ...]) -> Principal:
    principal = graph_principal(request, ())
    if not principal.roles & set(roles):
        raise mail.access_denied(request)
    return principal


@contextmanager
def _admitted(
    request: Request, client_id: str, mbx: Mailbox, upload_bytes: int = 0
) -> Iterator[None]:
    """One Outlook request against a mailbox: request budget, upload budget, concurrency."""
    limiter = ctx_of(request).limiter
    key = (client_id, mbx.user.id)
    wait = limiter.admit("outlook_requests", key)
    if wait is None and upload_bytes:
        wait = limiter.admit("outlook_upload_bytes", key, float(upload_bytes))
    if wait is not None:
        raise HTTPFailure(graph_throttled(request, wait))
    with limiter.concurrency(key) as admitted:
        if not admitted:
            raise mail.mailbox_concurrency(request)
        yield


@contextmanager
def mailbox_request(request: Request, roles: tuple[str, ...]) -> Iterator[Mailbox]:
    principal = _authorize(request, roles)
    mbx = _find_mailbox(request, principal, request.path_params["mailbox_id"])
    with _admitted(request, principal.app.client_id, mbx):
        yield mbx


# -- the folder tree (mail folders + PIM folders) --------------------------------------------------


@dataclass(frozen=True)
class TreeFolder:
    id: str
    display_name: str
    parent_id: str | None
    well_known: str | None
    folder_class: str
    total: int
    children: int
    signature: str  # what a delta compares
    pim_kind: str | None  # None: a mail folder


# The PIM store names its default folders as their own APIs do (To Do's default list is
# `wellknownListName: defaultList`); mailboxFolder.wellKnownName uses Exchange's well-known
# folder names (graph/api/resources/mailfolder "Use well-known folder names": tasks).
EXCHANGE_WELL_KNOWN = {"contacts": "contacts", "calendar": "calendar", "defaultList": "tasks"}


class Tree:
    """One mailbox's folder hierarchy as the import/export API shows it."""

    def __init__(self, mail_store: MailStore, pim: PimStore, mbx: Mailbox) -> None:
        self.mail, self.pim, self.mbx = mail_store, pim, mbx
        self.key, self.owner = mbx.key, mbx.user.id
        root = mail_store.folder(self.key, self.owner, ROOT)
        assert root is not None
        self.root_id = root.id

    def _from_mail(self, f: Folder) -> TreeFolder:
        extra = len(self._pim_defaults()) if f.id == self.root_id else 0
        return TreeFolder(
            f.id,
            f.display_name,
            f.parent_id,
            f.well_known,
            "IPF.Note",
            f.total,
            f.children + extra,
            f"{f.display_name}\x00{f.parent_id}",
            None,
        )

    def _pim_defaults(self) -> list[PimFolder]:
        return [f for f in self.pim.folders(self.key, self.owner) if f.well_known is not None]

    def _pim_parent(self, f: PimFolder) -> str:
        if f.parent_id is not None:
            return f.parent_id
        if f.well_known is not None:
            return self.root_id
        return self.pim.default_folder(self.key, self.owner, f.kind).id

    def _pim_children(self, f: PimFolder) -> list[PimFolder]:
        found = self.pim.folders(self.key, self.owner, f.kind, parent=f.id)
        if f.well_known is not None:  # secondary calendars / lists hang off the default one
            found += [
                x
                for x in self.pim.folders(self.key, self.owner, f.kind, parent=None)
                if x.well_known is None
            ]
        return found

    def _from_pim(self, f: PimFolder) -> TreeFolder:
        total = sum(
            1
            for i in self.pim.items(self.key, self.owner, ITEM_KIND[f.kind], f.id)
            if not _is_exception(i)
        )
        return TreeFolder(
            f.id,
            f.display_name,
            self._pim_parent(f),
            EXCHANGE_WELL_KNOWN.get(f.well_known) if f.well_known else None,
            FOLDER_CLASS[f.kind],
            total,
            len(self._pim_children(f)),
            f"{f.display_name}\x00{f.change_key}",
            f.kind,
        )

    def get(self, folder_id: str) -> TreeFolder | None:
        found = self.mail.folder(self.key, self.owner, folder_id)
        if found is not None:
            return self._from_mail(found)
        pim = self.pim.folder(self.key, self.owner, folder_id)
        return self._from_pim(pim) if pim is not None else None

    def children(self, folder_id: str) -> list[TreeFolder]:
        found = self.mail.folder(self.key, self.owner, folder_id)
        if found is not None:
            out = [
                self._from_mail(f) for f in self.mail.child_folders(self.key, self.owner, found.id)
            ]
            if found.id == self.root_id:
                out += [self._from_pim(f) for f in self._pim_defaults()]
            return out
        pim = self.pim.folder(self.key, self.owner, folder_id)
        return [self._from_pim(f) for f in self._pim_children(pim)] if pim is not None else []

    def walk(self) -> list[TreeFolder]:
        """Every folder under the root, parents before children."""
        out: list[TreeFolder] = []
        queue = self.children(self.root_id)
        while queue:
            f = queue.pop(0)
            out.append(f)
            queue += self.children(f.id)
        return out


def folder_json(f: TreeFolder) -> dict[str, Any]:
    """resources/mailboxfolder."""
    return {
        "@odata.type": "#microsoft.graph.mailboxFolder",
        "id": f.id,
        "displayName": f.display_name,
        "parentFolderId": f.parent_id,
        "childFolderCount": f.children,
        "totalItemCount": f.total,
        "wellKnownName": f.well_known,
        "type": f.folder_class,
    }


# -- items -----------------------------------------------------------------------------------------


def _is_exception(item: PimItem) -> bool:
    return item.kind == "event" and item.props.get("type") == "exception"


@dataclass(frozen=True)
class TreeItem:
    id: str
    change_key: str
    created: str
    modified: str
    categories: list[str]
    size: int
    item_class: str

    def signature(self) -> str:
        return f"{self.change_key}\x00{self.modified}"


def item_json(i: TreeItem) -> dict[str, Any]:
    """resources/mailboxitem."""
    return {
        "@odata.type": "#microsoft.graph.mailboxItem",
        "@odata.etag": f'W/"{i.change_key}"',
        "id": i.id,
        "createdDateTime": i.created,
        "lastModifiedDateTime": i.modified,
        "changeKey": i.change_key,
        "categories": i.categories,
        "type": i.item_class,
        "size": i.size,
    }


class MailRows:
    """Raw message rows of the mailstore, for full-fidelity export and import.

    The mailstore's own API models what Graph's mail resources show; export must
    carry every stored column (whatever the schema holds now), so this reads and
    writes rows through the store's connection under the store's lock.
    """

    def __init__(self, store: MailStore) -> None:
        self.store = store

    def row(self, tenant: str, mailbox: str, item_id: str) -> sqlite3.Row | None:
        with self.store._lock:
            found: sqlite3.Row | None = self.store._db.execute(
                "SELECT * FROM messages WHERE id=? AND tenant=? AND mailbox=?",
                (item_id, tenant, mailbox),
            ).fetchone()
        return found

    def folder_rows(self, tenant: str, mailbox: str, folder_id: str) -> Iterator[sqlite3.Row]:
        """A folder's rows (without MIME) in insertion order, in chunks."""
        last = 0
        while True:
            with self.store._lock:
                rows = self.store._db.execute(
                    "SELECT seq, id, change_key, created, modified, categories_json, size,"
                    " item_class"
                    " FROM messages WHERE tenant=? AND mailbox=? AND folder_id=? AND seq>?"
                    " ORDER BY seq LIMIT 500",
                    (tenant, mailbox, folder_id, last),
                ).fetchall()
            yield from rows
            if len(rows) < 500:
                return
            last = rows[-1]["seq"]

    def columns(self) -> set[str]:
        with self.store._lock:
            return {r["name"] for r in self.store._db.execute("PRAGMA table_info(messages)")}

    def write(self, item_id: str, columns: dict[str, Any], mime: bytes | None) -> str:
        """Set a message's stored columns (and MIME); a new change key. Returns it."""
        have = self.columns()
        values = {k: v for k, v in columns.items() if k in have and k not in STORE_OWNED}
        change_key = base64.b64encode(uuid.uuid4().bytes).decode()
        values["change_key"] = change_key
        if mime is not None:
            values["mime"] = sqlite3.Binary(mime)
            values["size"] = len(mime)
        with self.store._lock:
            if "mseq" in have and hasattr(self.store, "_tick"):
                values["mseq"] = self.store._tick()  # the store's change clock (its delta)
            sets = ", ".join(f"{k}=?" for k in values)
            self.store._db.execute(
                f"UPDATE messages SET {sets} WHERE id=?", (*values.values(), item_id)
            )
        return change_key


def list_items(
    mail_rows: MailRows, pim: PimStore, mbx: Mailbox, folder: TreeFolder
) -> Iterator[TreeItem]:
    if folder.pim_kind is None:
        for r in mail_rows.folder_rows(mbx.key, mbx.user.id, folder.id):
            yield TreeItem(
                r["id"],
                r["change_key"],
                r["created"],
                r["modified"],
                json.loads(r["categories_json"]),
                r["size"],
                r["item_class"],
            )
        return
    for item in pim.iter_folder(folder.id):
        if _is_exception(item):
            continue  # Exchange keeps exceptions inside the series master
        size = len(json.dumps(item.props))
        yield TreeItem(
            item.id,
            item.change_key,
            item.created,
            item.modified,
            list(item.props.get("categories") or []),
            size,
            ITEM_CLASS[item.kind],
        )


# -- the opaque item stream -------------------------------------------------------------------------


class _Blob:
    """This sandbox's export format: MAGIC, one JSON header line, then the MIME (mail only)."""

    @staticmethod
    def pack(header: dict[str, Any], mime: bytes = b"") -> bytes:
        return BLOB_MAGIC + json.dumps(header, separators=(",", ":")).encode() + b"\n" + mime

    @staticmethod
    def unpack(data: bytes) -> tuple[dict[str, Any], bytes]:
        if not data.startswith(BLOB_MAGIC) or b"\n" not in data:
            raise ValueError("not an exported item")
        head, _, mime = data[len(BLOB_MAGIC) :].partition(b"\n")
        header = json.loads(head)
        if not isinstance(header, dict) or "class" not in header:
            raise ValueError("not an exported item")
        return header, mime


def export_one(
    mail_rows: MailRows, pim: PimStore, mbx: Mailbox, item_id: str
) -> tuple[str, bytes] | None:
    """(changeKey, blob) of one item of the mailbox, or None if it has no such item."""
    row = mail_rows.row(mbx.key, mbx.user.id, item_id)
    if row is not None:
        columns = {k: row[k] for k in row.keys() if k not in STORE_OWNED}  # noqa: SIM118
        mail_header: dict[str, Any] = {"class": "IPM.Note", "columns": columns}
        return row["change_key"], _Blob.pack(mail_header, bytes(row["mime"]))
    item = pim.item(mbx.key, mbx.user.id, item_id)
    if item is None or _is_exception(item):
        return None
    header: dict[str, Any] = {
        "class": ITEM_CLASS[item.kind],
        "kind": item.kind,
        "props": item.props,
        "created": item.created,
        "modified": item.modified,
    }
    if item.kind == "event":
        header["exceptions"] = [
            x.props
            for x in pim.items(mbx.key, mbx.user.id, "event", item.folder_id)
            if _is_exception(x) and x.props.get("seriesMasterId") == item.id
        ]
    return item.change_key, _Blob.pack(header)


# -- handlers: folders -----------------------------------------------------------------------------


def _tree(request: Request, mbx: Mailbox) -> Tree:
    return Tree(mail.store_of(request), pim_of(request), mbx)


def _folder_or_404(request: Request, tree: Tree) -> TreeFolder:
    folder_id = request.path_params["folder_id"]
    found = tree.get(folder_id)
    if found is None:
        if not looks_like_id(folder_id):
            raise mail.malformed_id(request)
        raise mail.item_not_found(request)
    return found


def _page_args(request: Request) -> tuple[int, int]:
    q = common.query(request)
    try:
        top = int(q.get("top", PAGE_DEFAULT))
        skip = int(q.get("skip", 0))
    except ValueError:
        top = skip = -1
    if not 1 <= top <= PAGE_MAX or skip < 0:
        # *unverified* wording (as the mail face's $top error).
        raise fail(400, "ErrorInvalidUrlQuery", "Invalid value for '$top' or '$skip'.", request)
    return top, skip


def _link(request: Request, **params: str) -> str:
    """Absolute link to this path with only `params` as query (Graph's nextLink/deltaLink)."""
    base = ctx_of(request).base_url.rstrip("/")
    return f"{base}{request.url.path}?{urlencode(params, safe='$')}"


def _skip_link(request: Request, skip: int) -> str:
    params = [
        (k, v) for k, v in request.query_params.multi_items() if k.lower().lstrip("$") != "skip"
    ]
    params.append(("$skip", str(skip)))
    base = ctx_of(request).base_url.rstrip("/")
    return f"{base}{request.url.path}?{urlencode(params, safe='$')}"


def _paged(request: Request, context: str, values: list[dict[str, Any]]) -> Response:
    top, skip = _page_args(request)
    body: dict[str, Any] = {"@odata.context": common.context_url(request, context)}
    body["value"] = values[skip : skip + top]
    if skip + top < len(values):
        body["@odata.nextLink"] = _skip_link(request, skip + top)
    return GraphJSON(body)


def _context(request: Request, suffix: str) -> str:
    return f"admin/exchange/mailboxes('{request.path_params['mailbox_id']}')/{suffix}"


async def list_folders(request: Request) -> Response:
    with mailbox_request(request, FOLDER_READ_ANY) as mbx:
        tree = _tree(request, mbx)
        values = [folder_json(f) for f in tree.children(tree.root_id)]
        return _paged(request, _context(request, "folders"), values)


async def get_folder(request: Request) -> Response:
    with mailbox_request(request, FOLDER_READ_ANY) as mbx:
        found = _folder_or_404(request, _tree(request, mbx))
        body = {"@odata.context": common.context_url(request, _context(request, "folders/$entity"))}
        body.update(folder_json(found))
        return GraphJSON(body)


async def list_child_folders(request: Request) -> Response:
    with mailbox_request(request, FOLDER_READ_ANY) as mbx:
        tree = _tree(request, mbx)
        parent = _folder_or_404(request, tree)
        values = [folder_json(f) for f in tree.children(parent.id)]
        return _paged(request, _context(request, f"folders('{parent.id}')/childFolders"), values)


async def list_folder_items(request: Request) -> Response:
    with mailbox_request(request, ITEM_READ) as mbx:
        tree = _tree(request, mbx)
        folder = _folder_or_404(request, tree)
        top, skip = _page_args(request)
        page: list[dict[str, Any]] = []
        more = False
        for n, item in enumerate(list_items(MailRows(tree.mail), tree.pim, mbx, folder)):
            if n < skip:
                continue
            if len(page) == top:
                more = True
                break
            page.append(item_json(item))
        body: dict[str, Any] = {
            "@odata.context": common.context_url(
                request, _context(request, f"folders('{folder.id}')/items")
            ),
            "value": page,
        }
        if more:
            body["@odata.nextLink"] = _skip_link(request, skip + top)
        return GraphJSON(body)


# -- handlers: delta -------------------------------------------------------------------------------


def _max_page(request: Request) -> int:
    """`Prefer: odata.maxpagesize=N` (delta pages; graph/delta-query-messages)."""
    for part in request.headers.get("prefer", "").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "odata.maxpagesize":
            try:
                return max(1, min(PAGE_MAX, int(value)))
            except ValueError:
                break
    return PAGE_DEFAULT


def _invalid_token(request: Request) -> HTTPFailure:
    # *unverified*: Outlook's answer to an unknown or foreign delta/skip token.
    return fail(
        400, "ErrorInvalidSyncStateData", "The sync state data is corrupt or invalid.", request
    )


def _delta_round(
    request: Request,
    pim: PimStore,
    scope: str,
    current: dict[str, str],
) -> tuple[list[str], list[str], dict[str, str]]:
    """(changed ids, removed ids, snapshot to remember) for a delta request starting a round."""
    q = common.query(request)
    token = q.get("deltatoken")
    previous: dict[str, str] = {}
    if token is not None:
        state = pim.load_state(token)
        if state is None or state.get("scope") != scope:
            raise _invalid_token(request)
        previous = state["snapshot"]
    changed = [i for i, sig in current.items() if previous.get(i) != sig]
    removed = [i for i in previous if i not in current]
    return changed, removed, current


def _delta_response(
    request: Request,
    pim: PimStore,
    scope: str,
    current: dict[str, str],
    resolve: Callable[[str], dict[str, Any] | None],
    context: str,
    odata_type: str,
) -> Response:
    q = common.query(request)
    skiptoken = q.get("skiptoken")
    if skiptoken is not None:
        state = pim.load_state(skiptoken.partition(".")[0])
        if state is None or state.get("scope") != scope:
            raise _invalid_token(request)
        try:
            offset = int(skiptoken.partition(".")[2])
        except ValueError:
            raise _invalid_token(request) from None
        changes: list[list[str]] = state["changes"]
        round_id = skiptoken.partition(".")[0]
        snapshot_id: str = state["next"]
    else:
        changed, removed, snapshot = _delta_round(request, pim, scope, current)
        changes = [["c", i] for i in changed] + [["r", i] for i in removed]
        snapshot_id = pim.save_state({"scope": scope, "snapshot": snapshot})
        round_id = pim.save_state({"scope": scope, "changes": changes, "next": snapshot_id})
        offset = 0
    size = _max_page(request)
    values: list[dict[str, Any]] = []
    for op, item_id in changes[offset : offset + size]:
        obj = resolve(item_id) if op == "c" else None
        if obj is None:
            obj = {"@odata.type": odata_type, "id": item_id, "@removed": {"reason": "deleted"}}
        values.append(obj)
    body: dict[str, Any] = {"@odata.context": common.context_url(request, context)}
    if offset + size < len(changes):
        body["@odata.nextLink"] = _link(request, **{"$skiptoken": f"{round_id}.{offset + size}"})
    else:
        body["@odata.deltaLink"] = _link(request, **{"$deltatoken": snapshot_id})
    body["value"] = values
    return GraphJSON(body)


async def folders_delta(request: Request) -> Response:
    with mailbox_request(request, FOLDER_READ_ANY) as mbx:
        tree = _tree(request, mbx)
        folders = {f.id: f for f in tree.walk()}
        current = {i: f.signature for i, f in folders.items()}

        def resolve(folder_id: str) -> dict[str, Any] | None:
            f = folders.get(folder_id)
            return folder_json(f) if f is not None else None

        scope = f"folders:{mbx.key}:{mbx.user.id}"
        return _delta_response(
            request,
            tree.pim,
            scope,
            current,
            resolve,
            "Collection(mailboxFolder)",
            "#microsoft.graph.mailboxFolder",
        )


async def items_delta(request: Request) -> Response:
    with mailbox_request(request, ITEM_READ) as mbx:
        tree = _tree(request, mbx)
        folder = _folder_or_404(request, tree)
        items = {i.id: i for i in list_items(MailRows(tree.mail), tree.pim, mbx, folder)}
        current = {i: it.signature() for i, it in items.items()}

        def resolve(item_id: str) -> dict[str, Any] | None:
            it = items.get(item_id)
            return item_json(it) if it is not None else None

        scope = f"items:{mbx.key}:{mbx.user.id}:{folder.id}"
        return _delta_response(
            request,
            tree.pim,
            scope,
            current,
            resolve,
            "Collection(mailboxItem)",
            "#microsoft.graph.mailboxItem",
        )


# -- handlers: export ------------------------------------------------------------------------------


async def export_items(request: Request) -> Response:
    payload = await common.json_body(request)
    with mailbox_request(request, EXPORT) as mbx:
        ids = {k.lower(): v for k, v in payload.items()}.get("itemids")
        if (
            not isinstance(ids, list)
            or not 1 <= len(ids) <= EXPORT_MAX_IDS
            or not all(isinstance(i, str) for i in ids)
        ):
            raise too_many_ids(request)
        rows = MailRows(mail.store_of(request))
        pim = pim_of(request)
        values: list[bytes] = []
        for item_id in ids:
            found = export_one(rows, pim, mbx, item_id)
            if found is None:
                # mailTipsError shape {message, code} (resources/exportitemresponse).
                error = {
                    "message": "The specified object was not found in the store.",
                    "code": "ErrorItemNotFound",
                }
                values.append(_json({"itemId": item_id, "error": error}))
                continue
            change_key, blob = found
            values.append(_with_data({"itemId": item_id, "changeKey": change_key}, blob))
        context = common.context_url(request, "Collection(microsoft.graph.exportItemResponse)")
        body = b'{"@odata.context":' + _json(context) + b',"value":[' + b",".join(values) + b"]}"
        return Response(body, media_type=common.GRAPH_JSON)


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _with_data(fields: dict[str, Any], blob: bytes) -> bytes:
    """`fields` plus `"data": base64(blob)` as JSON bytes: base64 needs no escaping, so the
    stream is spliced in rather than scanned again by the JSON encoder (items are large)."""
    return _json(fields)[:-1] + b',"data":"' + base64.b64encode(blob) + b'"}'


# -- handlers: import ------------------------------------------------------------------------------


async def create_import_session(request: Request) -> Response:
    principal = _authorize(request, IMPORT)
    mbx = _find_mailbox(request, principal, request.path_params["mailbox_id"])
    with _admitted(request, principal.app.client_id, mbx):
        expires = time.time() + SESSION_LIFETIME_S
        token = pim_of(request).create_session(
            mbx.key, mbx.user.id, mbx.mailbox_id, principal.app.client_id, expires
        )
        # The importUrl points at Outlook ("https://outlook.office365.com/api/gbeta/
        # Mailboxes('MBX:...')/importItem?authtoken=..." in graph/import-exchange-mailbox-item);
        # the sandbox serves that path on its own host.
        base = ctx_of(request).base_url.rstrip("/")
        url = f"{base}/api/gbeta/Mailboxes('{mbx.mailbox_id}')/importItem?authtoken={token}"
        stamp = dt.datetime.fromtimestamp(expires, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        # mailbox-createimportsession's example answers 200 with the session (the concept page
        # says 201); 200 is what is served here.
        return GraphJSON(
            {
                "@odata.context": common.context_url(
                    request, "microsoft.graph.mailboxItemImportSession"
                ),
                "importUrl": url,
                "expirationDateTime": stamp,
            }
        )


def _session_mailbox(request: Request) -> tuple[Mailbox, str]:
    """The import session named by `authtoken` (the URL is the credential)."""
    token = request.query_params.get("authtoken") or ""
    pim = pim_of(request)
    session = pim.session(token) if token else None
    if (
        session is None
        or session["expires"] < time.time()
        or session["mailbox_id"] != request.path_params["mailbox_id"]
    ):
        raise bad_import_token(request)
    world = ctx_of(request).world
    with world.lock:
        tenant = world.tenants.get(session["tenant"])
        user = tenant.users.get(session["mailbox"]) if tenant is not None else None
        if user is None or not user.is_mailbox:
            raise bad_import_token(request)
    return Mailbox(session["tenant"], user, session["mailbox_id"]), str(session["client_id"])


def _import_body(
    request: Request, payload: dict[str, Any]
) -> tuple[str, str, bytes, str | None, str | None]:
    body = {k.lower(): v for k, v in payload.items()}
    folder_id, mode, data = body.get("folderid"), body.get("mode"), body.get("data")
    item_id, change_key = body.get("itemid"), body.get("changekey")
    if not isinstance(folder_id, str) or not folder_id:
        raise invalid_import(request, "FolderId is required.")
    if mode not in ("create", "update"):
        raise invalid_import(request, "Mode must be 'create' or 'update'.")
    if not isinstance(data, str) or not data:
        raise invalid_import(request, "Data is required.")
    # graph/import-exchange-mailbox-item: ItemId/ChangeKey are an error in create mode and
    # required in update mode.
    if mode == "create" and (item_id is not None or change_key is not None):
        raise invalid_import(request, "ItemId and ChangeKey must not be set in create mode.")
    if mode == "update" and not (isinstance(item_id, str) and isinstance(change_key, str)):
        raise invalid_import(request, "ItemId and ChangeKey are required in update mode.")
    try:
        # strict_mode: C-speed validation (b64decode(validate=True) runs a regex over it all).
        raw = binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        raise invalid_import(request, "Data is not valid base64.") from None
    return folder_id, str(mode), raw, item_id, change_key


def _import_mail(
    request: Request,
    store: MailStore,
    mbx: Mailbox,
    folder: TreeFolder,
    header: dict[str, Any],
    mime: bytes,
    target: tuple[str, str] | None,
) -> tuple[str, str]:
    columns: dict[str, Any] = dict(header.get("columns") or {})
    rows = MailRows(store)
    if target is not None:
        item_id, change_key = target
        row = rows.row(mbx.key, mbx.user.id, item_id)
        if row is None or row["folder_id"] != folder.id:
            raise mail.item_not_found(request)
        if row["change_key"] != change_key:
            raise change_key_conflict(request)
        return item_id, rows.write(item_id, columns, mime)
    return store.insert_row(mbx.key, mbx.user.id, folder.id, columns, mime)


def _import_pim(
    request: Request,
    pim: PimStore,
    mbx: Mailbox,
    folder: TreeFolder,
    header: dict[str, Any],
    target: tuple[str, str] | None,
) -> tuple[str, str]:
    kind = header.get("kind")
    if folder.pim_kind is None or ITEM_KIND[folder.pim_kind] != kind:
        raise invalid_import(request, "The item does not fit the destination folder.")
    props: dict[str, Any] = dict(header.get("props") or {})
    if target is not None:
        existing = pim.item(mbx.key, mbx.user.id, target[0])
        if existing is None or existing.folder_id != folder.id:
            raise mail.item_not_found(request)
        if existing.change_key != target[1]:
            raise change_key_conflict(request)
        updated = pim.update_item(existing.id, props)
        return updated.id, updated.change_key
    item = pim.create_item(
        mbx.key,
        mbx.user.id,
        folder.id,
        str(kind),
        props,
        created=header.get("created"),
        modified=header.get("modified"),
    )
    if kind == "event":
        from .calendar import import_exceptions  # the calendar face owns occurrence ids

        import_exceptions(pim, item, list(header.get("exceptions") or []))
    return item.id, item.change_key


async def import_item(request: Request) -> Response:
    """POST {importUrl}: no Authorization header; the authtoken in the URL authorizes."""
    payload = await common.json_body(request)
    mbx, client_id = _session_mailbox(request)
    folder_id, mode, raw, item_id, change_key = _import_body(request, payload)
    with _admitted(request, client_id, mbx, upload_bytes=len(raw)):
        tree = _tree(request, mbx)
        folder = tree.get(folder_id)
        if folder is None:
            raise mail.item_not_found(request)
        try:
            header, mime = _Blob.unpack(raw)
        except ValueError:
            raise invalid_import(request, "Data is not an exported item.") from None
        target = (item_id, change_key) if mode == "update" and item_id and change_key else None
        if header["class"] == "IPM.Note":
            if folder.pim_kind is not None:
                raise invalid_import(request, "The item does not fit the destination folder.")
            new_id, new_key = _import_mail(request, tree.mail, mbx, folder, header, mime, target)
        else:
            new_id, new_key = _import_pim(request, tree.pim, mbx, folder, header, target)
        base = ctx_of(request).base_url.rstrip("/")
        return GraphJSON(
            {
                "@odata.context": f"{base}/api/gbeta/$metadata#microsoft.graph.importMailboxItemResponse",
                "itemId": new_id,
                "changeKey": new_key,
            }
        )


def routes() -> list[BaseRoute]:
    base = "/v1.0/admin/exchange/mailboxes/{mailbox_id}"
    return [
        Route(f"{base}/folders", list_folders, methods=["GET"]),
        Route(f"{base}/folders/delta", folders_delta, methods=["GET"]),
        Route(f"{base}/folders/delta()", folders_delta, methods=["GET"]),
        Route(f"{base}/folders/{{folder_id}}", get_folder, methods=["GET"]),
        Route(f"{base}/folders/{{folder_id}}/childFolders", list_child_folders, methods=["GET"]),
        Route(f"{base}/folders/{{folder_id}}/items", list_folder_items, methods=["GET"]),
        Route(f"{base}/folders/{{folder_id}}/items/delta", items_delta, methods=["GET"]),
        Route(f"{base}/folders/{{folder_id}}/items/delta()", items_delta, methods=["GET"]),
        Route(f"{base}/exportItems", export_items, methods=["POST"]),
        Route(f"{base}/createImportSession", create_import_session, methods=["POST"]),
        Route("/api/gbeta/Mailboxes('{mailbox_id}')/importItem", import_item, methods=["POST"]),
    ]
