"""Graph's mailbox import/export API: `/admin/exchange/mailboxes/{mailboxId}/...`.

Shapes follow api-reference/v1.0 (resources/mailbox-import-export-api-overview and the pages
it links: mailbox-list-folders, mailbox-post-folders, mailboxfolder-get, mailboxfolder-update,
mailbox-delete-folders, mailboxfolder-list-childfolders, mailboxfolder-list-items,
mailboxitem-get, mailboxfolder-delete-items, mailboxfolder-delta, mailboxitem-delta,
mailbox-exportitems, mailbox-createimportsession, graph/import-exchange-mailbox-item) and
the v1.0 CSDL (mailboxFolder: childFolderCount, displayName, parentFolderId, totalItemCount,
type; mailboxItem: size, type and outlookItem's; both with extended properties):

- The mailbox id is `settings/exchange.primaryMailboxId` (`users.primary_mailbox_id`).
- Its own id space: folder and item ids served here are NOT the mail/calendar/contacts/To
  Do APIs' ids (FACTS.md). They are translated at this boundary (`io_id` / `store_id`);
  each API answers the other's ids as unknown ids (404 ErrorItemNotFound), as Exchange
  answers any id it does not know.
- Folders: listed (the top of the information store's folders, plus the non-IPM system
  folders and every search folder: "including any search folders", mailbox-list-folders),
  created (`displayName` + `type`, both required), renamed (`displayName`; `type` cannot
  change), deleted (`DELETE .../folders/{id}`, also with `/$ref`); well-known folder names are taken in
  the path (`folders/inbox/childFolders`, `folders/inbox/items/{id}`, as the pages' examples).
- Items: listed, read, deleted (`?disposalType=softDelete|hardDelete`), exported (at most
  20 ids) and imported through a pre-authenticated importUrl of the v1.0 form
  `.../api/gv1.0/Mailboxes('MBX:...')/importItem?authtoken=...` (served on this host).
- Extended properties: `$expand=singleValueExtendedProperties($filter=id eq '...' or ...)`
  on folders and items (resources/mailboxfolder, resources/mailboxitem), for the MAPI
  properties `EXTENDED` lists.
- Import re-stamps what Exchange assigns to a new item: the copy's createdDateTime is the
  time of the import and its size (PR_MESSAGE_SIZE) is the target store's, so neither
  identifies a copy (everything else the stream carries is kept).

The "FastTransfer stream" Exchange exports is replaced by this sandbox's own versioned
serialisation (`_Blob`): a header line of JSON (message class, every stored property)
followed by the item's MIME for mail. It is opaque to clients, as Microsoft's is.

Covered item kinds: mail (the mailstore), contacts, events (a series master travels with its
exceptions) and To Do tasks (the PIM store). Search folders live in the mailstore (under the
non-IPM "Finder"); the other non-IPM system folders (Recoverable Items, Deletions) are fixed
and empty: a soft delete here removes the item as a hard delete does (the sandbox keeps no
Recoverable Items contents).

Delta (folders and items) keeps its snapshots server-side (`PimStore.save_state`): a
deltaToken names the snapshot a round ended with. States expire with the world's one knob
(`Settings.sync_state_expired`, `World.expire_sync_states()`); an expired or unknown token
is answered 410 with `Settings.io_sync_state_code`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
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
from ..mailstore import (
    FINDER,
    ID_PREFIX,
    ROOT,
    STORE_OWNED,
    Folder,
    FolderExists,
    MailStore,
    iso,
    looks_like_id,
    system_folder_id,
    utcnow,
)
from ..model import User
from ..pim import FOLDER_CLASS, ITEM_CLASS, ITEM_KIND, PimFolder, PimItem, PimStore
from ..web import HTTPFailure, ctx_of, graph_principal, graph_throttled
from . import common, mail
from .common import GraphJSON, fail
from .mail import folder_exists, invalid_request
from .outlook_items import pim_of

# -- permissions (the API pages' "Permissions" tables, application) --------------------------------
FOLDER_READ = ("MailboxFolder.Read.All", "MailboxFolder.ReadWrite.All")  # mailboxfolder-delta
FOLDER_WRITE = ("MailboxFolder.ReadWrite.All",)  # mailbox-post-folders, -update, -delete
ITEM_READ = ("MailboxItem.Read.All", "MailboxItem.ReadWrite.All")  # mailboxitem-get
ITEM_DELETE = ("MailboxItem.ReadWrite.All",)  # mailboxfolder-delete-items
EXPORT = ("MailboxItem.Export.All", "MailboxItem.ImportExport.All")  # mailbox-exportitems
IMPORT = ("MailboxItem.ImportExport.All",)  # mailbox-createimportsession
# *unverified*: that the import/export role also lets an app enumerate folders and items (a
# mover holding only it could not find what to export otherwise); accepted here.
FOLDER_READ_ANY = (*FOLDER_READ, "MailboxItem.ImportExport.All")
ITEM_READ_ANY = (*ITEM_READ, "MailboxItem.ImportExport.All")

EXPORT_MAX_IDS = 20  # mailbox-exportitems: "The maximum size of this collection is 20 strings."
PAGE_DEFAULT = 10  # *unverified*: Outlook's default page size (as for messages)
PAGE_MAX = 1000
SESSION_LIFETIME_S = 3600.0  # *unverified*: the docs show only that the importUrl expires
BLOB_MAGIC = b"CXFTS\x01"  # this sandbox's stand-in for an FTS stream, version 1
IMPORT_PATH = "/api/gv1.0/Mailboxes('{mailbox_id}')/importItem"  # mailbox-createimportsession
DISPOSAL_TYPES = ("softDelete", "hardDelete")  # mailboxfolder-delete-items

# -- ids: this API's own id space ------------------------------------------------------------------

# An io id wraps the store's id behind a marker, in the same `AAMk...` family (so the mail API
# finds it well-formed and answers it as unknown, 404, rather than malformed).
IO_MARK = b"IOX\x00"


def io_id(store_key: str) -> str:
    """The import/export API's id of a store folder or item."""
    return base64.urlsafe_b64encode(ID_PREFIX + IO_MARK + store_key.encode()).decode()


def store_id(value: str) -> str | None:
    """The store id an io id names, or None when `value` is not one of this API's ids."""
    try:
        raw = base64.urlsafe_b64decode(value.encode())
    except (ValueError, TypeError):
        return None
    head = ID_PREFIX + IO_MARK
    if not raw.startswith(head):
        return None
    try:
        return raw[len(head) :].decode()
    except UnicodeDecodeError:
        return None


# -- extended properties (MS-OXPROPS names; Graph's id spelling) --------------------------------------

PS_INTERNET_HEADERS = "{00020386-0000-0000-C000-000000000046}"  # MS-OXPROPS 1.3.2
PR_SUBJECT = "String 0x0037"
PR_INTERNET_MESSAGE_ID = "String 0x1035"
PR_SEARCH_KEY = "Binary 0x300B"
PID_TAG_FOLDER_TYPE = "Integer 0x3601"  # MS-OXCFOLD: 1 generic, 2 search (FOLDER_SEARCH)
CONTENT_CLASS = f"String {PS_INTERNET_HEADERS} Name content-class"
CONTENT_TYPE = f"String {PS_INTERNET_HEADERS} Name content-type"
FOLDER_GENERIC, FOLDER_SEARCH = 1, 2


def _prop_key(prop_id: str) -> str:
    return " ".join(prop_id.split()).casefold()


ITEM_PROPS = {_prop_key(p): p for p in (PR_SUBJECT, PR_INTERNET_MESSAGE_ID, PR_SEARCH_KEY,
                                         CONTENT_CLASS, CONTENT_TYPE)}  # fmt: skip
FOLDER_PROPS = {_prop_key(PID_TAG_FOLDER_TYPE): PID_TAG_FOLDER_TYPE}
_EXPAND = re.compile(
    r"^\s*singleValueExtendedProperties\s*\(\s*\$filter\s*=\s*(.+?)\s*\)\s*$", re.IGNORECASE
)
_ID_EQ = re.compile(r"^\s*id\s+eq\s+'((?:[^']|'')*)'\s*$", re.IGNORECASE)


def expanded_props(request: Request, known: dict[str, str]) -> list[str] | None:
    """The extended property ids `$expand=singleValueExtendedProperties($filter=id eq ...)`
    asks for (None without $expand). Ids this sandbox does not model are simply absent from
    the answer, as Graph leaves out a property an item does not have."""
    raw = common.query(request).get("expand")
    if raw is None:
        return None
    m = _EXPAND.match(raw)
    if m is None:
        # *unverified* wording (as the mail face's query errors).
        raise fail(400, "ErrorInvalidUrlQuery", f"Unsupported $expand '{raw}'.", request)
    wanted = []
    for part in re.split(r"\s+or\s+", m.group(1), flags=re.IGNORECASE):
        one = _ID_EQ.match(part)
        if one is None:
            raise fail(400, "ErrorInvalidUrlQuery", f"Unsupported $filter '{part}'.", request)
        found = known.get(_prop_key(one.group(1).replace("''", "'")))
        if found is not None:
            wanted.append(found)
    return wanted


def search_key_of(store_key: str) -> str:
    """PR_SEARCH_KEY of an item that has none stored: 16 bytes fixed at its creation (derived
    from the store id, so stable), base64 as Graph renders Binary extended properties."""
    return base64.b64encode(hashlib.md5(b"searchkey:" + store_key.encode()).digest()).decode()


def _size_of(store_key: str, stored: int) -> int:
    # One PR_MESSAGE_SIZE for both faces (this API's `size`, the mail API's `Integer 0x0E08`).
    return mail.message_size(store_key, stored)


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


def bad_import_token(request: Request) -> HTTPFailure:
    # *unverified*: what outlook.office365.com answers for a wrong or expired import authtoken.
    return fail(401, "InvalidAuthenticationToken", "Access token validation failure.", request)


def change_key_conflict(request: Request) -> HTTPFailure:
    """importItem update with a stale ChangeKey: the status and code are not documented, so
    they are a setting (`Settings.io_update_conflict`, "status code"); a client treats any
    4xx of an update as that item's conflict."""
    status, _, code = ctx_of(request).world.settings.io_update_conflict.partition(" ")
    return fail(
        int(status),
        code or "ErrorInvalidRequest",
        "The change key passed in the request does not match the current change key for the item.",
        request,
    )


def sync_state_expired(request: Request) -> HTTPFailure:
    """An expired (or never issued) delta token: 410 Gone with the configured code
    (`Settings.io_sync_state_code`; FACTS.md: 410 / SyncStateNotFound / resyncRequired)."""
    code = ctx_of(request).world.settings.io_sync_state_code
    return fail(
        410, code, "The sync state is no longer available. Start a new synchronization.", request
    )


def distinguished_folder(request: Request) -> HTTPFailure:
    # *unverified*: Exchange refuses to rename or delete a default or system folder.
    return fail(
        400,
        "ErrorDeleteDistinguishedFolder",
        "Distinguished folders cannot be deleted or renamed.",
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


# -- the folder tree ------------------------------------------------------------------------------

# The non-IPM system folders this sandbox lists (fixed, empty): name -> (parent name, Graph's
# mailFolder well-known name). *unverified*: which non-IPM folders Exchange's listing shows;
# these are the ones every mailbox has (MS-OXOSFLD 2.2.2: Finder, Recoverable Items/Deletions).
NON_IPM_ROOT = "Root"
SYSTEM_FOLDERS: dict[str, tuple[str | None, str | None]] = {
    NON_IPM_ROOT: (None, None),
    "Recoverable Items": (NON_IPM_ROOT, "recoverableitemsroot"),
    "Deletions": ("Recoverable Items", "recoverableitemsdeletions"),
    FINDER: (NON_IPM_ROOT, "searchfolders"),
}
SYSTEM_TOP = ("Recoverable Items", FINDER)  # listed by `GET folders` beside the IPM folders
# Path names for the PIM defaults: Exchange's well-known folder names (resources/mailfolder,
# "Well-known folder names" in the EWS sense: contacts, calendar, tasks).
PIM_WELL_KNOWN = {"contacts": "contacts", "calendar": "calendar", "tasks": "defaultList"}
IPM, SEARCH, SYSTEM = "ipm", "search", "system"


@dataclass(frozen=True)
class TreeFolder:
    id: str  # the store's id (io_id() at the boundary)
    display_name: str
    parent_id: str | None
    well_known: str | None  # the store's name for a default folder (never served)
    folder_class: str | None
    total: int
    children: int
    signature: str  # what a delta compares
    pim_kind: str | None  # None: a mail (or search, or system) folder
    area: str = IPM  # IPM | SEARCH | SYSTEM


class Tree:
    """One mailbox's folder hierarchy as the import/export API shows it."""

    def __init__(self, mail_store: MailStore, pim: PimStore, mbx: Mailbox) -> None:
        self.mail, self.pim, self.mbx = mail_store, pim, mbx
        self.key, self.owner = mbx.key, mbx.user.id
        root = mail_store.folder(self.key, self.owner, ROOT)
        assert root is not None
        self.root_id = root.id
        self.searches = {f.id: f for f in mail_store.search_folders(self.key, self.owner)}
        self.system = {system_folder_id(self.owner, n): n for n in SYSTEM_FOLDERS}

    # -- building TreeFolders

    def _from_mail(self, f: Folder) -> TreeFolder:
        if f.search is not None:
            total = sum(1 for _ in self.search_rows(f))
            sig = f"{f.display_name}\x00{f.parent_id}\x00{total}"
            return TreeFolder(f.id, f.display_name, f.parent_id, None, "IPF.Note", total, 0,
                              sig, None, SEARCH)  # fmt: skip
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

    def _from_system(self, folder_id: str) -> TreeFolder:
        name = self.system[folder_id]
        parent, well_known = SYSTEM_FOLDERS[name]
        children = [n for n, (p, _w) in SYSTEM_FOLDERS.items() if p == name]
        # Folders made under a system folder (search folders under Finder) count too.
        count = len(children) + len(self.mail.child_folders(self.key, self.owner, folder_id))
        parent_id = system_folder_id(self.owner, parent) if parent else None
        return TreeFolder(folder_id, name, parent_id, well_known, None, 0, count,
                          f"{name}\x00{count}", None, SYSTEM)  # fmt: skip

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
            f.well_known,
            FOLDER_CLASS[f.kind],
            total,
            len(self._pim_children(f)),
            f"{f.display_name}\x00{f.change_key}",
            f.kind,
        )

    # -- lookups

    def get(self, folder_id: str) -> TreeFolder | None:
        if folder_id in self.system:
            return self._from_system(folder_id)
        found = self.mail.folder(self.key, self.owner, folder_id)
        if found is not None and found.id == folder_id:
            return self._from_mail(found)
        pim = self.pim.folder(self.key, self.owner, folder_id)
        if pim is not None and pim.id == folder_id:
            return self._from_pim(pim)
        return None

    def by_well_known(self, name: str) -> TreeFolder | None:
        """A folder named in a URL by its well-known name (`folders/inbox/...`)."""
        low = name.lower()
        for folder_id, system in self.system.items():
            if SYSTEM_FOLDERS[system][1] == low:
                return self._from_system(folder_id)
        if low in PIM_WELL_KNOWN:
            pim = self.pim.folder(self.key, self.owner, PIM_WELL_KNOWN[low])
            return self._from_pim(pim) if pim is not None else None
        found = self.mail.folder(self.key, self.owner, low)
        return self._from_mail(found) if found is not None and found.well_known else None

    def children(self, folder_id: str) -> list[TreeFolder]:
        if folder_id in self.system:
            name = self.system[folder_id]
            out = [
                self._from_system(system_folder_id(self.owner, n))
                for n, (p, _w) in SYSTEM_FOLDERS.items()
                if p == name
            ]
            # Search folders made under Finder (mailstore.create_search_folder).
            out += [
                self._from_mail(f) for f in self.mail.child_folders(self.key, self.owner, folder_id)
            ]
            return out
        found = self.mail.folder(self.key, self.owner, folder_id)
        if found is not None and found.id == folder_id:
            out = [
                self._from_mail(f) for f in self.mail.child_folders(self.key, self.owner, found.id)
            ]
            if found.id == self.root_id:
                out += [self._from_pim(f) for f in self._pim_defaults()]
            return out
        pim = self.pim.folder(self.key, self.owner, folder_id)
        return [self._from_pim(f) for f in self._pim_children(pim)] if pim is not None else []

    def top(self) -> list[TreeFolder]:
        """What `GET folders` lists: the IPM top level, the non-IPM system folders beside
        it, and every search folder ("including any search folders", mailbox-list-folders)."""
        out = self.children(self.root_id)
        out += [self._from_system(system_folder_id(self.owner, n)) for n in SYSTEM_TOP]
        out += [self._from_mail(f) for f in self.searches.values()]
        return out

    def walk(self, under: str | None = None) -> list[TreeFolder]:
        """Every folder of the mailbox (IPM, system and search), or every folder below
        `under`, parents before children."""
        out: list[TreeFolder] = []
        seen: set[str] = set()
        queue = self.top() if under is None else self.children(under)
        while queue:
            f = queue.pop(0)
            if f.id in seen:
                continue
            seen.add(f.id)
            out.append(f)
            queue += self.children(f.id)
        return out

    def search_rows(self, folder: Folder) -> Iterator[sqlite3.Row]:
        """The mailbox's messages a search folder shows (mail.search_predicate)."""
        shows = mail.search_predicate(self.mail, self.key, self.owner, folder)
        shown = {i.id for i in self.mail.iter_messages(self.key, self.owner) if shows(i)}
        for r in MailRows(self.mail).mailbox_rows(self.key, self.owner):
            if r["id"] in shown:
                yield r

    # -- writes

    def create(
        self, request: Request, parent: TreeFolder, name: str, folder_class: str
    ) -> TreeFolder:
        """A new folder of `folder_class` under `parent` (mailbox-post-folders)."""
        if parent.area != IPM:
            raise invalid_request(request, "Folders can be created only in the IPM subtree.")
        if folder_class == "IPF.Note":
            if parent.pim_kind is not None:
                # *sandbox*: the stores keep mail folders under mail folders only.
                raise invalid_request(request, "A mail folder cannot be created here.")
            try:
                made = self.mail.create_folder(self.key, self.owner, parent.id, name)
            except FolderExists:
                raise folder_exists(request) from None
            return self._from_mail(made)
        kind = next((k for k, c in FOLDER_CLASS.items() if c == folder_class), None)
        if kind is None or parent.pim_kind != kind:
            # *sandbox*: only these classes, each under a folder of its own class.
            raise invalid_request(
                request, f"A folder of type '{folder_class}' cannot be created here."
            )
        if any(c.display_name.casefold() == name.casefold() for c in self.children(parent.id)):
            raise folder_exists(request)
        # Where each face keeps them: secondary calendars and To Do lists have no parent
        # (they hang off the default one); contact folders nest, from the default folder on.
        under = None if parent.well_known is not None and kind != "contacts" else parent.id
        return self._from_pim(self.pim.create_folder(self.key, self.owner, kind, name, under))

    def rename(self, request: Request, folder: TreeFolder, name: str) -> TreeFolder:
        _refuse_distinguished(request, self, folder)
        if folder.pim_kind is None:
            try:
                self.mail.rename_folder(self.key, self.owner, folder.id, name)
            except FolderExists:
                raise folder_exists(request) from None
        else:
            siblings = self.children(folder.parent_id or self.root_id)
            if any(
                c.id != folder.id and c.display_name.casefold() == name.casefold() for c in siblings
            ):
                raise folder_exists(request)
            self.pim.update_folder(folder.id, name)
        found = self.get(folder.id)
        assert found is not None
        return found

    def delete(self, request: Request, folder: TreeFolder) -> None:
        _refuse_distinguished(request, self, folder)
        if folder.pim_kind is None:
            self.mail.delete_folder(self.key, self.owner, folder.id)
        else:
            self.pim.delete_folder(folder.id)


def _refuse_distinguished(request: Request, tree: Tree, folder: TreeFolder) -> None:
    if folder.area == SYSTEM or folder.well_known is not None or folder.id == tree.root_id:
        raise distinguished_folder(request)


def folder_json(f: TreeFolder, props: list[str] | None = None) -> dict[str, Any]:
    """resources/mailboxfolder (v1.0 CSDL: no wellKnownName), ids in this API's space."""
    out: dict[str, Any] = {
        "@odata.type": "#microsoft.graph.mailboxFolder",
        "id": io_id(f.id),
        "displayName": f.display_name,
        "parentFolderId": io_id(f.parent_id) if f.parent_id else None,
        "childFolderCount": f.children,
        "totalItemCount": f.total,
        "type": f.folder_class,
    }
    if props is not None:
        folder_type = FOLDER_SEARCH if f.area == SEARCH else FOLDER_GENERIC
        values = {PID_TAG_FOLDER_TYPE: str(folder_type)}
        out["singleValueExtendedProperties"] = [
            {"id": p, "value": values[p]} for p in props if p in values
        ]
    return out


# -- items -----------------------------------------------------------------------------------------


def _is_exception(item: PimItem) -> bool:
    return item.kind == "event" and item.props.get("type") == "exception"


@dataclass(frozen=True)
class TreeItem:
    id: str  # the store's id
    change_key: str
    created: str
    modified: str
    categories: list[str]
    size: int
    item_class: str

    def signature(self) -> str:
        return f"{self.change_key}\x00{self.modified}"


def item_json(i: TreeItem, props: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """resources/mailboxitem, its id in this API's space."""
    out: dict[str, Any] = {
        "@odata.type": "#microsoft.graph.mailboxItem",
        "@odata.etag": f'W/"{i.change_key}"',
        "id": io_id(i.id),
        "createdDateTime": i.created,
        "lastModifiedDateTime": i.modified,
        "changeKey": i.change_key,
        "categories": i.categories,
        "type": i.item_class,
        "size": _size_of(i.id, i.size),
    }
    if props is not None:
        out["singleValueExtendedProperties"] = props
    return out


def item_props(tree: Tree, item_id: str, wanted: list[str]) -> list[dict[str, str]]:
    """The asked-for extended properties the item has (absent ones are left out)."""
    if not wanted:
        return []
    values: dict[str, str | None] = {}
    row = MailRows(tree.mail).row(tree.key, tree.owner, item_id)
    if row is not None:
        stored = json.loads(row["props_json"] or "{}")
        values[PR_SUBJECT] = row["subject"]
        values[PR_INTERNET_MESSAGE_ID] = row["internet_message_id"]
        values[PR_SEARCH_KEY] = stored.get(PR_SEARCH_KEY) or search_key_of(item_id)
        if CONTENT_CLASS in wanted or CONTENT_TYPE in wanted:
            head = tree.mail.headers(item_id)
            values[CONTENT_CLASS] = head.get("Content-Class")
            values[CONTENT_TYPE] = head.get("Content-Type")
    else:
        pim = tree.pim.item(tree.key, tree.owner, item_id)
        if pim is None:
            return []
        p = pim.props
        values[PR_SUBJECT] = p.get("subject") or p.get("title") or p.get("displayName")
        values[PR_SEARCH_KEY] = p.get(PR_SEARCH_KEY) or search_key_of(item_id)
    return [{"id": k, "value": str(values[k])} for k in wanted if values.get(k)]


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

    def mailbox_rows(self, tenant: str, mailbox: str) -> Iterator[sqlite3.Row]:
        """Every message row of a mailbox (without MIME), in insertion order, in chunks."""
        last = 0
        while True:
            with self.store._lock:
                rows = self.store._db.execute(
                    "SELECT seq, id, change_key, created, modified, categories_json, size,"
                    " item_class, subject FROM messages WHERE tenant=? AND mailbox=? AND seq>?"
                    " ORDER BY seq LIMIT 500",
                    (tenant, mailbox, last),
                ).fetchall()
            yield from rows
            if len(rows) < 500:
                return
            last = rows[-1]["seq"]


def _tree_item(r: sqlite3.Row) -> TreeItem:
    return TreeItem(r["id"], r["change_key"], r["created"], r["modified"],
                    json.loads(r["categories_json"]), r["size"], r["item_class"])  # fmt: skip


def list_items(mail_rows: MailRows, tree: Tree, folder: TreeFolder) -> Iterator[TreeItem]:
    mbx = tree.mbx
    if folder.area == SEARCH:
        yield from (_tree_item(r) for r in tree.search_rows(tree.searches[folder.id]))
        return
    if folder.area == SYSTEM:
        return  # the sandbox keeps no Recoverable Items contents
    if folder.pim_kind is None:
        yield from (_tree_item(r) for r in mail_rows.folder_rows(mbx.key, mbx.user.id, folder.id))
        return
    for item in tree.pim.iter_folder(folder.id):
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
    """(changeKey, blob) of one item of the mailbox (store id), or None if it has none such.

    The item's identity travels with it: PR_SEARCH_KEY (kept by the copy, as Exchange keeps
    it on a full-fidelity import) and, for mail, every stored column (Message-ID included)."""
    row = mail_rows.row(mbx.key, mbx.user.id, item_id)
    if row is not None:
        columns = {k: row[k] for k in row.keys() if k not in STORE_OWNED}  # noqa: SIM118
        stored = json.loads(columns.get("props_json") or "{}")
        stored.setdefault(PR_SEARCH_KEY, search_key_of(item_id))
        columns["props_json"] = json.dumps(stored)
        mail_header: dict[str, Any] = {"class": "IPM.Note", "columns": columns}
        return row["change_key"], _Blob.pack(mail_header, bytes(row["mime"]))
    item = pim.item(mbx.key, mbx.user.id, item_id)
    if item is None or _is_exception(item):
        return None
    props = {**item.props}
    props.setdefault(PR_SEARCH_KEY, search_key_of(item_id))
    header: dict[str, Any] = {
        "class": ITEM_CLASS[item.kind],
        "kind": item.kind,
        "props": props,
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


def _folder_or_404(request: Request, tree: Tree, param: str = "folder_id") -> TreeFolder:
    """The folder a path names: an io id, or a well-known name (the pages' examples use
    `folders/inbox/...`); a mail/calendar/contacts/To Do id is unknown here (404)."""
    key = request.path_params[param]
    sid = store_id(key)
    found = tree.get(sid) if sid is not None else tree.by_well_known(key)
    if found is None:
        if sid is None and not looks_like_id(key) and not key.isalpha():
            raise mail.malformed_id(request)
        raise mail.item_not_found(request)
    return found


def _child_or_404(request: Request, tree: Tree) -> TreeFolder:
    """`folders/{parent}/childFolders/{child}`: the child, if it is the parent's."""
    parent = _folder_or_404(request, tree)
    child = _folder_or_404(request, tree, "child_id")
    if child.parent_id != parent.id:
        raise mail.item_not_found(request)
    return child


def _target(request: Request, tree: Tree) -> TreeFolder:
    return (
        _child_or_404(request, tree)
        if "child_id" in request.path_params
        else (_folder_or_404(request, tree))
    )


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


def _entity(request: Request, suffix: str, obj: dict[str, Any], status: int = 200) -> Response:
    body = {"@odata.context": common.context_url(request, _context(request, suffix))}
    body.update(obj)
    return GraphJSON(body, status_code=status)


async def list_folders(request: Request) -> Response:
    with mailbox_request(request, FOLDER_READ_ANY) as mbx:
        tree = _tree(request, mbx)
        props = expanded_props(request, FOLDER_PROPS)
        values = [folder_json(f, props) for f in tree.top()]
        return _paged(request, _context(request, "folders"), values)


async def get_folder(request: Request) -> Response:
    with mailbox_request(request, FOLDER_READ_ANY) as mbx:
        found = _target(request, _tree(request, mbx))
        props = expanded_props(request, FOLDER_PROPS)
        return _entity(request, "folders/$entity", folder_json(found, props))


async def list_child_folders(request: Request) -> Response:
    with mailbox_request(request, FOLDER_READ_ANY) as mbx:
        tree = _tree(request, mbx)
        parent = _folder_or_404(request, tree)
        props = expanded_props(request, FOLDER_PROPS)
        values = [folder_json(f, props) for f in tree.children(parent.id)]
        context = _context(request, f"folders('{io_id(parent.id)}')/childFolders")
        return _paged(request, context, values)


def _folder_body(request: Request, payload: dict[str, Any], create: bool) -> tuple[str, str]:
    """(displayName, type) of a create (both required) or an update (displayName only: "The
    folder type can't be updated", mailboxfolder-update)."""
    body = {k.lower(): v for k, v in payload.items()}
    allowed = {"displayname", "type", "singlevalueextendedproperties",
               "multivalueextendedproperties"}  # fmt: skip
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise invalid_request(request, f"The property '{unknown[0]}' cannot be set.")
    name, folder_class = body.get("displayname"), body.get("type")
    if not isinstance(name, str) or not name.strip():
        raise invalid_request(request, "displayName is required.")
    if create and (not isinstance(folder_class, str) or not folder_class):
        raise invalid_request(request, "type is required.")
    if not create and folder_class is not None:
        raise invalid_request(request, "The folder type can't be updated.")
    return name.strip(), str(folder_class or "")


async def create_folder(request: Request) -> Response:
    payload = await common.json_body(request)
    with mailbox_request(request, FOLDER_WRITE) as mbx:
        tree = _tree(request, mbx)
        if "folder_id" in request.path_params:
            parent = _folder_or_404(request, tree)
        else:
            found = tree.get(tree.root_id)
            assert found is not None
            parent = found
        name, folder_class = _folder_body(request, payload, create=True)
        made = tree.create(request, parent, name, folder_class)
        return _entity(request, "folders/$entity", folder_json(made), status=201)


async def update_folder(request: Request) -> Response:
    payload = await common.json_body(request)
    with mailbox_request(request, FOLDER_WRITE) as mbx:
        tree = _tree(request, mbx)
        folder = _target(request, tree)
        name, _ = _folder_body(request, payload, create=False)
        return _entity(request, "folders/$entity", folder_json(tree.rename(request, folder, name)))


async def delete_folder(request: Request) -> Response:
    with mailbox_request(request, FOLDER_WRITE) as mbx:
        tree = _tree(request, mbx)
        tree.delete(request, _target(request, tree))
        return Response(status_code=204)


# -- handlers: items -------------------------------------------------------------------------------


async def list_folder_items(request: Request) -> Response:
    with mailbox_request(request, ITEM_READ_ANY) as mbx:
        tree = _tree(request, mbx)
        folder = _folder_or_404(request, tree)
        props = expanded_props(request, ITEM_PROPS)
        top, skip = _page_args(request)
        page: list[dict[str, Any]] = []
        more = False
        for n, item in enumerate(list_items(MailRows(tree.mail), tree, folder)):
            if n < skip:
                continue
            if len(page) == top:
                more = True
                break
            extra = item_props(tree, item.id, props) if props is not None else None
            page.append(item_json(item, extra))
        body: dict[str, Any] = {
            "@odata.context": common.context_url(
                request, _context(request, f"folders('{io_id(folder.id)}')/items")
            ),
            "value": page,
        }
        if more:
            body["@odata.nextLink"] = _skip_link(request, skip + top)
        return GraphJSON(body)


def _item_or_404(request: Request, tree: Tree, folder: TreeFolder) -> TreeItem:
    """The item the path names, if it is in that folder (an id of another API: 404)."""
    raw = request.path_params["item_id"]
    sid = store_id(raw)
    if sid is None and not looks_like_id(raw):
        raise mail.malformed_id(request)
    if sid is not None:
        for item in _one_item(tree, folder, sid):
            return item
    raise mail.item_not_found(request)


def _one_item(tree: Tree, folder: TreeFolder, sid: str) -> Iterator[TreeItem]:
    if folder.area == SEARCH:
        yield from (i for i in list_items(MailRows(tree.mail), tree, folder) if i.id == sid)
        return
    row = MailRows(tree.mail).row(tree.key, tree.owner, sid)
    if row is not None and row["folder_id"] == folder.id:
        yield _tree_item(row)
        return
    pim = tree.pim.item(tree.key, tree.owner, sid)
    if pim is not None and pim.folder_id == folder.id and not _is_exception(pim):
        yield TreeItem(pim.id, pim.change_key, pim.created, pim.modified,
                       list(pim.props.get("categories") or []), len(json.dumps(pim.props)),
                       ITEM_CLASS[pim.kind])  # fmt: skip


async def get_item(request: Request) -> Response:
    with mailbox_request(request, ITEM_READ_ANY) as mbx:
        tree = _tree(request, mbx)
        folder = _folder_or_404(request, tree)
        item = _item_or_404(request, tree, folder)
        props = expanded_props(request, ITEM_PROPS)
        extra = item_props(tree, item.id, props) if props is not None else None
        suffix = f"folders('{io_id(folder.id)}')/items/$entity"
        return _entity(request, suffix, item_json(item, extra))


async def delete_item(request: Request) -> Response:
    """mailboxfolder-delete-items: `disposalType` (softDelete | hardDelete) is required."""
    with mailbox_request(request, ITEM_DELETE) as mbx:
        disposal = common.query(request).get("disposaltype") or request.query_params.get(
            "disposalType"
        )
        if disposal not in DISPOSAL_TYPES:
            raise invalid_request(request, "disposalType must be softDelete or hardDelete.")
        tree = _tree(request, mbx)
        folder = _folder_or_404(request, tree)
        item = _item_or_404(request, tree, folder)
        if tree.mail.delete_message(tree.key, tree.owner, item.id):
            return Response(status_code=204)
        pim = tree.pim.item(tree.key, tree.owner, item.id)
        if pim is not None and pim.kind == "event":
            for x in tree.pim.items(tree.key, tree.owner, "event", pim.folder_id):
                if _is_exception(x) and x.props.get("seriesMasterId") == pim.id:
                    tree.pim.delete_item(x.id)
        tree.pim.delete_item(item.id)
        return Response(status_code=204)


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


def _load(request: Request, pim: PimStore, state_id: str, scope: str) -> dict[str, Any]:
    """A delta state of this scope that has not expired, or Exchange's expiry answer (an
    unknown token is one the service no longer knows: the same answer)."""
    found = pim.state(state_id)
    settings = ctx_of(request).world.settings
    if found is None or found[0].get("scope") != scope or settings.sync_state_expired(found[1]):
        raise sync_state_expired(request)
    return found[0]


def _delta_response(
    request: Request,
    pim: PimStore,
    scope: str,
    current: Callable[[], dict[str, str]],
    resolve: Callable[[str], dict[str, Any] | None],
    context: str,
    odata_type: str,
) -> Response:
    q = common.query(request)
    skiptoken = q.get("skiptoken")
    if skiptoken is not None:
        round_id, _, raw_offset = skiptoken.partition(".")
        state = _load(request, pim, round_id, scope)
        try:
            offset = int(raw_offset)
        except ValueError:
            raise sync_state_expired(request) from None
        changes: list[list[str]] = state["changes"]
        snapshot_id: str = state["next"]
    else:
        token = q.get("deltatoken")
        previous: dict[str, str] = {}
        if token is not None:
            previous = _load(request, pim, token, scope)["snapshot"]
        now = current()
        changes = [["c", i] for i, sig in now.items() if previous.get(i) != sig]
        changes += [["r", i] for i in previous if i not in now]
        snapshot_id = pim.save_state({"scope": scope, "snapshot": now})
        round_id = pim.save_state({"scope": scope, "changes": changes, "next": snapshot_id})
        offset = 0
    size = _max_page(request)
    values: list[dict[str, Any]] = []
    for op, item_id in changes[offset : offset + size]:
        obj = resolve(item_id) if op == "c" else None
        if obj is None:
            obj = {
                "@odata.type": odata_type,
                "id": io_id(item_id),
                "@removed": {"reason": "deleted"},
            }
        values.append(obj)
    body: dict[str, Any] = {"@odata.context": common.context_url(request, context)}
    if offset + size < len(changes):
        body["@odata.nextLink"] = _link(request, **{"$skiptoken": f"{round_id}.{offset + size}"})
    else:
        body["@odata.deltaLink"] = _link(request, **{"$deltatoken": snapshot_id})
    body["value"] = values
    return GraphJSON(body)


async def folders_delta(request: Request) -> Response:
    """mailboxfolder-delta: `folders/delta` (the mailbox) or `folders/{id}/childFolders/delta`
    (below one folder)."""
    with mailbox_request(request, FOLDER_READ_ANY) as mbx:
        tree = _tree(request, mbx)
        under = _folder_or_404(request, tree).id if "folder_id" in request.path_params else None
        folders = {f.id: f for f in tree.walk(under)}

        def resolve(folder_id: str) -> dict[str, Any] | None:
            f = folders.get(folder_id)
            return folder_json(f) if f is not None else None

        scope = f"folders:{mbx.key}:{mbx.user.id}:{under or ''}"
        return _delta_response(
            request,
            tree.pim,
            scope,
            lambda: {i: f.signature for i, f in folders.items()},
            resolve,
            "Collection(mailboxFolder)",
            "#microsoft.graph.mailboxFolder",
        )


async def items_delta(request: Request) -> Response:
    with mailbox_request(request, ITEM_READ_ANY) as mbx:
        tree = _tree(request, mbx)
        folder = _folder_or_404(request, tree)
        items: dict[str, TreeItem] = {}

        def current() -> dict[str, str]:
            items.update((i.id, i) for i in list_items(MailRows(tree.mail), tree, folder))
            return {i: it.signature() for i, it in items.items()}

        def resolve(item_id: str) -> dict[str, Any] | None:
            it = items.get(item_id)
            if it is None:  # a later page of a round: read the item again
                it = next(_one_item(tree, folder, item_id), None)
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
            sid = store_id(item_id)
            found = export_one(rows, pim, mbx, sid) if sid is not None else None
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
        # mailbox-createimportsession: "https://outlook.office365.com/api/gv1.0/Mailboxes(
        # 'MBX:...')/importItem?authtoken=..."; the sandbox serves that path on its own host.
        base = ctx_of(request).base_url.rstrip("/")
        path = IMPORT_PATH.format(mailbox_id=mbx.mailbox_id)
        url = f"{base}{path}?authtoken={token}"
        stamp = dt.datetime.fromtimestamp(expires, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        # mailbox-createimportsession answers 200 with the session.
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
        raise invalid_request(request, "FolderId is required.")
    if mode not in ("create", "update"):
        raise invalid_request(request, "Mode must be 'create' or 'update'.")
    if not isinstance(data, str) or not data:
        raise invalid_request(request, "Data is required.")
    # graph/import-exchange-mailbox-item: ItemId/ChangeKey are an error in create mode and
    # required in update mode.
    if mode == "create" and (item_id is not None or change_key is not None):
        raise invalid_request(request, "ItemId and ChangeKey must not be set in create mode.")
    if mode == "update" and not (isinstance(item_id, str) and isinstance(change_key, str)):
        raise invalid_request(request, "ItemId and ChangeKey are required in update mode.")
    try:
        # strict_mode: C-speed validation (b64decode(validate=True) runs a regex over it all).
        raw = binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        raise invalid_request(request, "Data is not valid base64.") from None
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
        columns.pop("created", None)  # the item keeps its own creation time
        return item_id, rows.write(item_id, columns, mime)
    columns["created"] = iso(utcnow())  # a new item: Exchange stamps its creation
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
        raise invalid_request(request, "The item does not fit the destination folder.")
    props: dict[str, Any] = dict(header.get("props") or {})
    if target is not None:
        existing = pim.item(mbx.key, mbx.user.id, target[0])
        if existing is None or existing.folder_id != folder.id:
            raise mail.item_not_found(request)
        if existing.change_key != target[1]:
            raise change_key_conflict(request)
        updated = pim.update_item(existing.id, props)
        return updated.id, updated.change_key
    # A new item: Exchange stamps its creation time (the stream's is not kept).
    item = pim.create_item(
        mbx.key, mbx.user.id, folder.id, str(kind), props, modified=header.get("modified")
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
        sid = store_id(folder_id)
        folder = tree.get(sid) if sid is not None else None
        if folder is None:
            raise mail.item_not_found(request)
        if folder.area != IPM or folder.id == tree.root_id:
            # *unverified*: Exchange's answer for an import into a search or system folder.
            raise invalid_request(request, "Items cannot be imported into this folder.")
        try:
            header, mime = _Blob.unpack(raw)
        except ValueError:
            raise invalid_request(request, "Data is not an exported item.") from None
        target: tuple[str, str] | None = None
        if mode == "update" and item_id and change_key:
            target_id = store_id(item_id)
            if target_id is None:
                raise mail.item_not_found(request)
            target = (target_id, change_key)
        if header["class"] == "IPM.Note":
            if folder.pim_kind is not None:
                raise invalid_request(request, "The item does not fit the destination folder.")
            new_id, new_key = _import_mail(request, tree.mail, mbx, folder, header, mime, target)
        else:
            new_id, new_key = _import_pim(request, tree.pim, mbx, folder, header, target)
        base = ctx_of(request).base_url.rstrip("/")
        return GraphJSON(
            {
                "@odata.context": f"{base}/api/gv1.0/$metadata#microsoft.graph.importMailboxItemResponse",
                "itemId": io_id(new_id),
                "changeKey": new_key,
            }
        )


def routes() -> list[BaseRoute]:
    base = "/v1.0/admin/exchange/mailboxes/{mailbox_id}"
    folder = f"{base}/folders/{{folder_id}}"
    child = f"{folder}/childFolders/{{child_id}}"
    item = f"{folder}/items/{{item_id}}"

    def one_folder(path: str) -> list[BaseRoute]:
        # mailbox-delete-folders has shown both forms over time (with and without `/$ref`);
        # both are served (the product deletes no folders).
        return [
            Route(path, get_folder, methods=["GET"]),
            Route(path, update_folder, methods=["PATCH"]),
            Route(path, delete_folder, methods=["DELETE"]),
            Route(f"{path}/$ref", delete_folder, methods=["DELETE"]),
        ]

    # Each `.../delta` comes before the `{id}` route it would otherwise match.
    return [
        Route(f"{base}/folders", list_folders, methods=["GET"]),
        Route(f"{base}/folders", create_folder, methods=["POST"]),
        *common.delta_routes(f"{base}/folders/delta", folders_delta),
        *one_folder(folder),
        Route(f"{folder}/childFolders", list_child_folders, methods=["GET"]),
        *common.delta_routes(f"{folder}/childFolders/delta", folders_delta),
        Route(f"{folder}/childFolders", create_folder, methods=["POST"]),
        *one_folder(child),
        Route(f"{folder}/items", list_folder_items, methods=["GET"]),
        *common.delta_routes(f"{folder}/items/delta", items_delta),
        Route(item, get_item, methods=["GET"]),
        Route(item, delete_item, methods=["DELETE"]),
        Route(f"{base}/exportItems", export_items, methods=["POST"]),
        Route(f"{base}/createImportSession", create_import_session, methods=["POST"]),
        Route(IMPORT_PATH, import_item, methods=["POST"]),
    ]
