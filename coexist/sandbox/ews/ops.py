"""EWS operations over the sandbox's mailstore (mail) and PIM store (calendar, contacts, tasks).

Folders: the non-IPM root ("root"), the mailstore's msgfolderroot and its IPM subtree, the
PIM store's default Calendar, Contacts and Tasks folders, and an empty Notes folder (notes are
not stored by the sandbox). Items: messages (IPM.Note and kin) and, through pim_items.py,
calendar items (with recurrence and exceptions), contacts and tasks.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from typing import Any
from xml.etree import ElementTree as ET

from ..graph import outlook_items
from ..graph.calendar import import_exceptions, occurrence_id, parse_occurrence_id
from ..graph.odata import same_property_id
from ..mailstore import (
    ROOT,
    STORE_OWNED,
    Folder,
    FolderExists,
    Item,
    Recipient,
    Tombstone,
    iso,
    system_folder_id,
)
from ..model import User
from ..pim import PimItem, PimStore
from . import attachments, orgs, pim_items, soap
from .face import Call
from .soap import NS, T, m, t

Handler = Callable[[Call, ET.Element], ET.Element]

# Distinguished folder ids the mailstore has, and the PIM defaults shown as empty folders.
MAIL_DISTINGUISHED = {"msgfolderroot": ROOT, "inbox": "inbox", "sentitems": "sentitems",
                      "drafts": "drafts", "deleteditems": "deleteditems", "junkemail": "junkemail",
                      "archive": "archive", "outbox": "outbox"}  # fmt: skip
PIM_FOLDERS = {  # distinguished id: (display name, folder class, element)
    "calendar": ("Calendar", "IPF.Appointment", "CalendarFolder"),
    "contacts": ("Contacts", "IPF.Contact", "ContactsFolder"),
    "tasks": ("Tasks", "IPF.Task", "TasksFolder"),
    "notes": ("Notes", "IPF.StickyNote", "Folder"),
}
SYNC_MAX = 512  # SyncFolderItems MaxChangesReturned: 1..512 (schema and reference page)
BLOB_MAGIC = b"CXEWS\x01"  # this sandbox's stand-in for ExportItems' opaque stream
PR_MESSAGE_FLAGS = "Integer 0xE07"  # PidTagMessageFlags (MS-OXCMSG 2.2.1.6)
PR_MESSAGE_DELIVERY_TIME = "SystemTime 0xE06"
MSGFLAG_READ, MSGFLAG_UNSENT = 0x1, 0x8


# -- folders ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EwsFolder:
    id: str
    user: User
    display_name: str
    parent_id: str | None
    folder_class: str
    element: str
    distinguished: str | None
    total: int = 0
    unread: int = 0
    children: int = 0
    change: int = 0  # fseq: bumped on create/rename
    mail: bool = True
    is_root: bool = False  # the non-IPM root ("root"), parent of msgfolderroot
    pim_kind: str | None = None  # pim.CALENDAR / CONTACTS / TODO: a PIM store folder


NON_IPM_ROOT = "Root"  # the name graph/exchange_io gives the same system folder


def _non_ipm_root(call: Call, user: User) -> EwsFolder:
    return EwsFolder(system_folder_id(user.id, NON_IPM_ROOT), user, "", None, "", "Folder",
                     "root", children=1, mail=False, is_root=True)  # fmt: skip


def _from_mail(call: Call, user: User, f: Folder, root_id: str) -> EwsFolder:
    wk = f.well_known
    extra = len(PIM_FOLDERS) if f.id == root_id else 0
    parent = f.parent_id or system_folder_id(user.id, NON_IPM_ROOT)
    return EwsFolder(
        f.id, user, f.display_name, parent, "IPF.Note", "Folder",
        wk if wk in MAIL_DISTINGUISHED else None, f.total, f.unread, f.children + extra,
    )  # fmt: skip


def _root(call: Call, user: User) -> Folder:
    found = call.store.folder(call.key, user.id, ROOT)
    assert found is not None
    return found


def pim_store(call: Call) -> PimStore:
    return outlook_items.pim_store(call.ctx)


def _pim(call: Call, user: User, wk: str) -> EwsFolder:
    name, cls, element = PIM_FOLDERS[wk]
    kind = pim_items.KIND_OF_FOLDER[wk]
    pim = pim_store(call)
    if kind == pim_items.NOTES:
        found = pim.folders(call.key, user.id, kind)
        pf = found[0] if found else pim.create_folder(call.key, user.id, kind, name)
    else:
        pf = pim.default_folder(call.key, user.id, kind)
    total = sum(1 for i in pim.iter_folder(pf.id) if i.props.get("type") != "exception")
    return EwsFolder(pf.id, user, pf.display_name, _root(call, user).id, cls, element, wk,
                     total=total, children=len(_pim_children(call, user, pf.id, kind, True)),
                     mail=False, pim_kind=kind)  # fmt: skip


def _pim_children(call: Call, user: User, parent_id: str, kind: str, is_default: bool) -> list[Any]:
    """PIM folders under a PIM folder; a default folder also holds the secondary calendars,
    contact folders and lists Graph makes without a parent (graph/exchange_io, Tree)."""
    pim = pim_store(call)
    found = pim.folders(call.key, user.id, kind, parent=parent_id)
    if is_default and kind != pim_items.NOTES:
        found += [
            f for f in pim.folders(call.key, user.id, kind, parent=None) if f.well_known is None
        ]
    return found


def _pim_secondary(call: Call, user: User, pf: Any, parent_id: str) -> EwsFolder:
    wk = next(w for w, k in pim_items.KIND_OF_FOLDER.items() if k == pf.kind)
    _name, cls, element = PIM_FOLDERS[wk]
    pim = pim_store(call)
    total = sum(1 for i in pim.iter_folder(pf.id) if i.props.get("type") != "exception")
    return EwsFolder(pf.id, user, pf.display_name, parent_id, cls, element, None, total=total,
                     children=len(_pim_children(call, user, pf.id, pf.kind, False)), mail=False,
                     pim_kind=pf.kind)  # fmt: skip


def _open(call: Call, user: User) -> None:
    """Refuse a mailbox the caller may not open (impersonation: only the impersonated user)."""
    if call.impersonated is not None:
        if call.impersonated.id != user.id:
            raise _Err("ErrorAccessDenied", "Access is denied. Check credentials and try again.")
        return
    if not orgs.may_open(call.account, user):
        raise _Err(
            orgs.UNVERIFIED.no_full_access,
            "Access is denied. Check credentials and try again.",
        )


class _Err(Exception):
    """One response message's error (the others in the request go on)."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(code)
        self.code = code
        self.text = text


def _user_of_mailbox(call: Call, node: ET.Element | None) -> User:
    address = soap.text_of(node, "t:Mailbox/t:EmailAddress") if node is not None else None
    if address:
        user = orgs.mailbox_user(call.tenant, address)
        if user is None:
            raise _Err(
                "ErrorNonExistentMailbox",
                f"The SMTP address has no mailbox associated with it: {address}",
            )
        return user
    user = call.acting_user()
    if user is None:
        raise _Err(
            "ErrorMissingEmailAddress",
            "When making a request as an account that does not have a mailbox, you must specify "
            "the mailbox primary SMTP address for any distinguished folders.",
        )
    return user


def _owner_of(call: Call, folder_or_item_id: str) -> User | None:
    """The mailbox of this organisation a store id belongs to."""
    found = call.store.find(folder_or_item_id)
    owner = found.mailbox if found is not None else call.store.folder_owner(folder_or_item_id)
    if owner is None:
        pim = pim_store(call)
        pim_item = pim.find(folder_or_item_id)
        where = (
            (pim_item.tenant, pim_item.mailbox) if pim_item else pim.folder_owner(folder_or_item_id)
        )
        if where is not None and where[0] == call.key:
            owner = where[1]
    if owner is None:
        # The non-IPM root's id is derived, not stored: find the mailbox it is derived from.
        for candidate in call.tenant.users.values():
            if candidate.is_mailbox and folder_or_item_id == system_folder_id(
                candidate.id, NON_IPM_ROOT
            ):
                return candidate
        return None
    found_user = call.tenant.users.get(owner)
    return found_user if found_user is not None and found_user.is_mailbox else None


def resolve_folder(call: Call, node: ET.Element) -> EwsFolder:
    """A t:FolderId or t:DistinguishedFolderId, after the access check."""
    local = node.tag.rsplit("}", 1)[-1]
    if local == "DistinguishedFolderId":
        wk = node.get("Id", "")
        user = _user_of_mailbox(call, node)
        _open(call, user)
        if wk in PIM_FOLDERS:
            return _pim(call, user, wk)
        if wk == "root":
            return _non_ipm_root(call, user)
        if wk not in MAIL_DISTINGUISHED:
            raise _Err(
                "ErrorFolderNotFound", "The specified folder could not be found in the store."
            )
        f = call.store.folder(call.key, user.id, MAIL_DISTINGUISHED[wk])
        if f is None:
            raise _Err(
                "ErrorFolderNotFound", "The specified folder could not be found in the store."
            )
        return _from_mail(call, user, f, _root(call, user).id)
    folder_id = node.get("Id", "")
    owner = _owner_of(call, folder_id)
    if owner is None:
        raise _Err("ErrorFolderNotFound", "The specified folder could not be found in the store.")
    _open(call, owner)
    return folder_by_id(call, owner, folder_id)


def folder_by_id(call: Call, user: User, folder_id: str) -> EwsFolder:
    if folder_id == system_folder_id(user.id, NON_IPM_ROOT):
        return _non_ipm_root(call, user)
    pf = pim_store(call).folder(call.key, user.id, folder_id)
    if pf is not None and pf.id == folder_id:
        wk = next((w for w, k in pim_items.KIND_OF_FOLDER.items() if k == pf.kind), None)
        if wk is not None and pf.well_known is not None:
            return _pim(call, user, wk)
        default = _pim(call, user, wk) if wk is not None else None
        if default is not None and default.id == pf.id:  # the notes folder
            return default
        if default is not None:
            parent_id = pf.parent_id if pf.parent_id else default.id
            return _pim_secondary(call, user, pf, parent_id)
    f = call.store.folder(call.key, user.id, folder_id)
    if f is None or f.id != folder_id:
        raise _Err("ErrorFolderNotFound", "The specified folder could not be found in the store.")
    return _from_mail(call, user, f, _root(call, user).id)


def children(call: Call, parent: EwsFolder) -> list[EwsFolder]:
    if parent.is_root:
        top = _root(call, parent.user)
        return [_from_mail(call, parent.user, top, top.id)]
    if parent.pim_kind is not None:
        return [_pim_secondary(call, parent.user, f, parent.id)
                for f in _pim_children(call, parent.user, parent.id, parent.pim_kind,
                                       parent.distinguished is not None)]  # fmt: skip
    if not parent.mail:
        return []
    root_id = _root(call, parent.user).id
    found = [_from_mail(call, parent.user, f, root_id)
             for f in call.store.child_folders(call.key, parent.user.id, parent.id)]  # fmt: skip
    if parent.id == root_id:
        found += [_pim(call, parent.user, wk) for wk in PIM_FOLDERS]
        found.sort(key=lambda f: f.display_name.casefold())
    return found


def _walk(call: Call, parent: EwsFolder) -> Iterator[EwsFolder]:
    for child in children(call, parent):
        yield child
        yield from _walk(call, child)


def _change_key(n: int) -> str:
    return base64.b64encode(b"CK" + n.to_bytes(8, "big")).decode()


def folder_xml(f: EwsFolder, shape: ET.Element | None) -> ET.Element:
    base = soap.text_of(shape, "t:BaseShape") or "Default"
    wanted = {"FolderId"}
    if base in ("Default", "AllProperties"):
        wanted |= {"DisplayName", "TotalCount", "ChildFolderCount", "UnreadCount"}
    if base == "AllProperties":
        wanted |= {"ParentFolderId", "FolderClass"}
    for uri in shape.iterfind("t:AdditionalProperties/t:FieldURI", NS) if shape is not None else []:
        prop = uri.get("FieldURI", "")
        if prop.startswith("folder:"):
            wanted.add(prop.split(":", 1)[1])
    parts: list[ET.Element] = [t("FolderId", {"Id": f.id, "ChangeKey": _change_key(f.change)})]
    if "ParentFolderId" in wanted and f.parent_id:
        parts.append(t("ParentFolderId", {"Id": f.parent_id, "ChangeKey": _change_key(0)}))
    if "FolderClass" in wanted and f.folder_class:
        parts.append(t("FolderClass", text=f.folder_class))
    if "DisplayName" in wanted:
        parts.append(t("DisplayName", text=f.display_name))
    if "TotalCount" in wanted:
        parts.append(t("TotalCount", text=f.total))
    if "ChildFolderCount" in wanted:
        parts.append(t("ChildFolderCount", text=f.children))
    if "DistinguishedFolderId" in wanted and f.distinguished:
        parts.append(t("DistinguishedFolderId", text=f.distinguished))
    if "UnreadCount" in wanted and f.element != "CalendarFolder":
        parts.append(t("UnreadCount", text=f.unread))
    return soap.ordered(t(f.element), f"{{{T}}}{f.element}Type", parts)


def _message(name: str, code: str = "NoError", text: str | None = None,
             *extra: ET.Element | None) -> ET.Element:  # fmt: skip
    ok = code == "NoError"
    node = m(name, {"ResponseClass": "Success" if ok else "Error"})
    if text is not None:
        node.append(m("MessageText", text=text))
    node.append(m("ResponseCode", text=code))
    if not ok:
        node.append(m("DescriptiveLinkKey", text=0))
        if not extra:
            extra = tuple(m(child) for child in soap.required_on_error(name))
    for e in extra:
        if e is not None:
            node.append(e)
    return node


def _each(
    op: str, nodes: list[ET.Element], one: Callable[[ET.Element], list[ET.Element]]
) -> ET.Element:
    messages = m("ResponseMessages")
    for node in nodes:
        try:
            messages.append(_message(f"{op}ResponseMessage", "NoError", None, *one(node)))
        except _Err as err:
            messages.append(_message(f"{op}ResponseMessage", err.code, err.text))
    return m(f"{op}Response", None, messages)


def _folder_ids(node: ET.Element, path: str) -> list[ET.Element]:
    found = node.find(path, NS)
    return list(found) if found is not None else []


def get_folder(call: Call, body: ET.Element) -> ET.Element:
    shape = body.find("m:FolderShape", NS)

    def one(node: ET.Element) -> list[ET.Element]:
        return [m("Folders", None, folder_xml(resolve_folder(call, node), shape))]

    return _each("GetFolder", _folder_ids(body, "m:FolderIds"), one)


def _paging(view: ET.Element | None, total: int) -> tuple[int, int]:
    """(offset, count) of an IndexedPage*View (BasePoint Beginning|End)."""
    if view is None:
        return 0, total
    limit = int(view.get("MaxEntriesReturned") or total or 1)
    offset = int(view.get("Offset") or 0)
    if view.get("BasePoint") == "End":
        offset = max(0, total - offset - limit)
    return offset, limit


def find_folder(call: Call, body: ET.Element) -> ET.Element:
    shape = body.find("m:FolderShape", NS)
    deep = body.get("Traversal") == "Deep"
    view = body.find("m:IndexedPageFolderView", NS)

    def one(node: ET.Element) -> list[ET.Element]:
        parent = resolve_folder(call, node)
        found = list(_walk(call, parent)) if deep else children(call, parent)
        offset, limit = _paging(view, len(found))
        page = found[offset : offset + limit]
        call.charged_items += len(page)
        root = m("RootFolder", {
            "IndexedPagingOffset": str(offset + len(page)),
            "TotalItemsInView": str(len(found)),
            "IncludesLastItemInRange": "true" if offset + len(page) >= len(found) else "false",
        }, t("Folders", None, [folder_xml(f, shape) for f in page]))  # fmt: skip
        return [root]

    return _each("FindFolder", _folder_ids(body, "m:ParentFolderIds"), one)


def create_folder(call: Call, body: ET.Element) -> ET.Element:
    parent_node = body.find("m:ParentFolderId", NS)
    assert parent_node is not None and len(parent_node)
    messages = m("ResponseMessages")
    try:
        parent = resolve_folder(call, parent_node[0])
    except _Err as err:
        messages.append(_message("CreateFolderResponseMessage", err.code, err.text))
        return m("CreateFolderResponse", None, messages)
    for spec in _folder_ids(body, "m:Folders"):
        name = soap.text_of(spec, "t:DisplayName") or ""
        cls = soap.text_of(spec, "t:FolderClass") or "IPF.Note"
        element = spec.tag.rsplit("}", 1)[-1]
        try:
            if parent.pim_kind is not None:
                messages.append(_create_pim_folder(call, parent, name, element, spec))
                continue
            if not parent.mail or element != "Folder" or not cls.startswith("IPF.Note"):
                raise _Err("ErrorInvalidFolderTypeForOperation",
                           "The folder type is invalid for this operation (sandbox: mail folders "
                           "only).")  # fmt: skip
            try:
                made = call.store.create_folder(call.key, parent.user.id, parent.id, name)
            except FolderExists as exc:
                raise _Err(
                    "ErrorFolderExists", "A folder with the specified name already exists."
                ) from exc
            f = folder_by_id(call, parent.user, made.id)
            messages.append(_message("CreateFolderResponseMessage", "NoError", None,
                                     m("Folders", None, folder_xml(f, None))))  # fmt: skip
        except _Err as err:
            messages.append(_message("CreateFolderResponseMessage", err.code, err.text))
    return m("CreateFolderResponse", None, messages)


def _create_pim_folder(call: Call, parent: EwsFolder, name: str, element: str,
                       spec: ET.Element) -> ET.Element:  # fmt: skip
    """A calendar, contact folder, task folder or notes folder under one of its kind."""
    assert parent.pim_kind is not None
    cls = soap.text_of(spec, "t:FolderClass")
    wk = next(w for w, k in pim_items.KIND_OF_FOLDER.items() if k == parent.pim_kind)
    _name, want_cls, want_element = PIM_FOLDERS[wk]
    if (
        element not in (want_element, "Folder")
        or (cls is not None and cls != want_cls)
        or (element == "Folder" and want_element != "Folder" and cls is None)
    ):
        raise _Err("ErrorInvalidFolderTypeForOperation",
                   "The folder type is invalid for this operation.")  # fmt: skip
    siblings = children(call, parent)
    if any(f.display_name.casefold() == name.casefold() for f in siblings):
        raise _Err("ErrorFolderExists", "A folder with the specified name already exists.")
    made = pim_store(call).create_folder(call.key, parent.user.id, parent.pim_kind, name,
                                         parent_id=parent.id)  # fmt: skip
    f = _pim_secondary(call, parent.user, made, parent.id)
    return _message("CreateFolderResponseMessage", "NoError", None,
                    m("Folders", None, folder_xml(f, None)))  # fmt: skip


# -- sync states --------------------------------------------------------------------------------------


def _state(data: dict[str, Any]) -> str:
    return base64.b64encode(b"CXSS" + json.dumps(data, separators=(",", ":")).encode()).decode()


def _read_state(call: Call, text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        raw = base64.b64decode(text, validate=True)
        if not raw.startswith(b"CXSS"):
            raise ValueError
        data = json.loads(raw[4:])
        if not isinstance(data, dict):
            raise ValueError
    except (ValueError, binascii.Error) as exc:
        raise _Err(
            "ErrorInvalidSyncStateData",
            "Synchronization state data is corrupt or otherwise invalid.",
        ) from exc
    if call.ctx.world.settings.sync_state_expired(float(data.get("at", 0))):
        raise _Err(orgs.UNVERIFIED.stale_sync_state,
                   "Synchronization state data is corrupt or otherwise invalid.")  # fmt: skip
    return data


def sync_folder_hierarchy(call: Call, body: ET.Element) -> ET.Element:
    shape = body.find("m:FolderShape", NS)
    messages = m("ResponseMessages")
    try:
        sync_node = body.find("m:SyncFolderId", NS)
        if sync_node is not None and len(sync_node):
            top = resolve_folder(call, sync_node[0])
        else:
            user = _user_of_mailbox(call, None)
            _open(call, user)
            top = _from_mail(call, user, _root(call, user), _root(call, user).id)
        state = _read_state(call, soap.text_of(body, "m:SyncState"))
        known: dict[str, str] = dict((state or {}).get("known", {}))
        now = {f.id: f for f in _walk(call, top)}
        changes = m("Changes")
        for fid, f in now.items():
            sig = f"{f.display_name}\x00{f.parent_id}"
            if fid not in known:
                changes.append(t("Create", None, folder_xml(f, shape)))
            elif known[fid] != sig:
                changes.append(t("Update", None, folder_xml(f, shape)))
        for fid in known:
            if fid not in now:
                changes.append(t("Delete", None, t("FolderId", {"Id": fid})))
        new_state = _state({"at": time.time(),
                            "known": {fid: f"{f.display_name}\x00{f.parent_id}"
                                      for fid, f in now.items()}})  # fmt: skip
        messages.append(_message("SyncFolderHierarchyResponseMessage", "NoError", None,
                                 m("SyncState", text=new_state),
                                 m("IncludesLastFolderInRange", text="true"), changes))  # fmt: skip
    except _Err as err:
        # Exchange sends both elements on an error too (exchangelib reads them unconditionally).
        messages.append(_message("SyncFolderHierarchyResponseMessage", err.code, err.text,
                                 m("SyncState", text=""),
                                 m("IncludesLastFolderInRange", text="true")))  # fmt: skip
    return m("SyncFolderHierarchyResponse", None, messages)


# -- items ---------------------------------------------------------------------------------------------

_IMPORTANCE = {"low": "Low", "normal": "Normal", "high": "High"}
_SENSITIVITY = {"normal": "Normal", "personal": "Personal", "private": "Private",
                "confidential": "Confidential"}  # fmt: skip
_FLAG = {"notFlagged": "NotFlagged", "flagged": "Flagged", "complete": "Complete"}
DEFAULT_ITEM_FIELDS = {"ItemId", "ParentFolderId", "ItemClass", "Subject", "Sensitivity",
                       "DateTimeReceived", "Size", "Importance", "IsDraft", "DateTimeSent",
                       "DateTimeCreated", "HasAttachments", "From", "IsRead", "InternetMessageId",
                       "Sender", "ToRecipients", "CcRecipients", "Categories", "LastModifiedTime"}  # fmt: skip


def _mailbox(r: Recipient) -> ET.Element:
    return t("Mailbox", None, t("Name", text=r.name or r.address),
             t("EmailAddress", text=r.address), t("RoutingType", text="SMTP"))  # fmt: skip


def _when(value: str | None) -> str | None:
    return value


def _ext_wanted(shape: ET.Element | None) -> list[tuple[str, str, str]]:
    """The tagged extended properties a shape asks for: (PropertyTag as asked, PropertyType,
    "Type 0xTAG")."""
    out: list[tuple[str, str, str]] = []
    for uri in (
        shape.iterfind("t:AdditionalProperties/t:ExtendedFieldURI", NS) if shape is not None else []
    ):
        tag, kind = uri.get("PropertyTag"), uri.get("PropertyType", "")
        if tag is None:
            continue
        number = int(tag, 16) if tag.lower().startswith("0x") else int(tag)
        out.append((tag, kind, f"{kind} 0x{number:X}"))
    return out


def _ext_props(item: Item, shape: ET.Element | None) -> list[ET.Element]:
    out: list[ET.Element] = []
    for tag, kind, key in _ext_wanted(shape):
        value = item.properties.get(key)
        if key == PR_MESSAGE_FLAGS and value is None:
            value = str(
                (MSGFLAG_READ if item.is_read else 0) | (MSGFLAG_UNSENT if item.is_draft else 0)
            )
        if value is None:
            continue
        out.append(t("ExtendedProperty", None,
                     t("ExtendedFieldURI", {"PropertyTag": tag, "PropertyType": kind}),
                     t("Value", text=value)))  # fmt: skip
    return out


_INDEXED = {"contacts:EmailAddress": "EmailAddresses", "contacts:PhoneNumber": "PhoneNumbers",
            "contacts:PhysicalAddress": "PhysicalAddresses", "contacts:ImAddress": "ImAddresses"}  # fmt: skip


def _wanted(shape: ET.Element | None) -> tuple[set[str], bool]:
    base = soap.text_of(shape, "t:BaseShape") or "Default"
    wanted = {"ItemId"}
    if base in ("Default", "AllProperties"):
        wanted |= DEFAULT_ITEM_FIELDS
    for uri in shape.iterfind("t:AdditionalProperties/t:FieldURI", NS) if shape is not None else []:
        wanted.add(uri.get("FieldURI", ":").split(":", 1)[1])
    for uri in (
        shape.iterfind("t:AdditionalProperties/t:IndexedFieldURI", NS) if shape is not None else []
    ):
        wanted.add(_INDEXED.get(uri.get("FieldURI", ""), ""))
    mime = soap.is_true(soap.text_of(shape, "t:IncludeMimeContent")) or "MimeContent" in wanted
    return wanted, mime


def item_xml(call: Call, item: Item, shape: ET.Element | None) -> ET.Element:
    wanted, mime = _wanted(shape)
    parts: list[ET.Element] = []
    if mime:
        data = call.store.mime(item.id)
        call.charged_items += 1 + len(data) // (1 << 20)
        parts.append(
            t("MimeContent", {"CharacterSet": "UTF-8"}, text=base64.b64encode(data).decode())
        )
    parts.append(t("ItemId", {"Id": item.id, "ChangeKey": item.change_key}))
    simple: dict[str, Any] = {
        "ParentFolderId": None,
        "ItemClass": call.store.item_class(item.id),
        "Subject": item.subject,
        "Sensitivity": _SENSITIVITY.get(item.sensitivity, "Normal"),
        "DateTimeReceived": item.received,
        "Size": item.size,
        "Importance": _IMPORTANCE.get(item.importance, "Normal"),
        "IsDraft": "true" if item.is_draft else "false",
        "DateTimeSent": item.sent,
        "DateTimeCreated": item.created,
        "HasAttachments": "true" if item.has_attachments else "false",
        "LastModifiedTime": item.modified,
        "IsRead": "true" if item.is_read else "false",
        "InternetMessageId": item.internet_message_id,
    }
    for name, value in simple.items():
        if name not in wanted:
            continue
        if name == "ParentFolderId":
            parts.append(t("ParentFolderId", {"Id": item.folder_id, "ChangeKey": _change_key(0)}))
        elif value is not None:
            parts.append(t(name, text=value))
    if "Attachments" in wanted and item.has_attachments:
        found = attachments.from_mime(call.store.attachments(item.id))
        parts.append(attachments.listing(item.id, item.change_key, found, photo_kept=True))
    if "Categories" in wanted and item.categories:
        parts.append(t("Categories", None, [t("String", text=c) for c in item.categories]))
    if "Flag" in wanted:
        flag = item.flag or {}
        parts.append(
            t(
                "Flag",
                None,
                t("FlagStatus", text=_FLAG.get(str(flag.get("flagStatus")), "NotFlagged")),
            )
        )
    for name, who in (("From", item.from_), ("Sender", item.sender)):
        if name in wanted and who is not None:
            parts.append(t(name, None, _mailbox(who)))
    for name, many in (("ToRecipients", item.to), ("CcRecipients", item.cc)):
        if name in wanted and many:
            parts.append(t(name, None, [_mailbox(r) for r in many]))
    parts += _ext_props(item, shape)
    return soap.ordered(t("Message"), f"{{{T}}}MessageType", parts)


def _item(call: Call, item_id: str) -> Item:
    found = call.store.find(item_id)
    if found is None or found.tenant != call.key:
        raise _Err("ErrorItemNotFound", "The specified object was not found in the store.")
    user = call.tenant.users.get(found.mailbox)
    if user is None:
        raise _Err("ErrorItemNotFound", "The specified object was not found in the store.")
    _open(call, user)
    return found


def _any_item(call: Call, item_id: str) -> Item | PimItem:
    """A message, or a calendar item / contact / task of the PIM store, after the access check."""
    if call.store.find(item_id) is not None:
        return _item(call, item_id)
    found = pim_store(call).find(item_id)
    parsed = parse_occurrence_id(item_id) if found is None else None
    if parsed is not None:  # an occurrence of a series (an id the store derives, not keeps)
        master = pim_store(call).find(parsed[0])
        if master is not None:
            found = pim_items.occurrence(pim_store(call), master, parsed[1], item_id)
    if found is None or found.tenant != call.key:
        raise _Err("ErrorItemNotFound", "The specified object was not found in the store.")
    user = call.tenant.users.get(found.mailbox)
    if user is None:
        raise _Err("ErrorItemNotFound", "The specified object was not found in the store.")
    _open(call, user)
    return found


def any_item_xml(call: Call, item: Item | PimItem, shape: ET.Element | None) -> ET.Element:
    if isinstance(item, Item):
        return item_xml(call, item, shape)
    wanted, _mime = _wanted(shape)
    base = soap.text_of(shape, "t:BaseShape") or "Default"
    return pim_items.item_xml(pim_store(call), item, wanted, base != "IdOnly",
                              photo_kept=call.flavour.kind != "workmail",
                              extended=pim_items.extended_wanted(shape))  # fmt: skip


def get_item(call: Call, body: ET.Element) -> ET.Element:
    shape = body.find("m:ItemShape", NS)

    def one(node: ET.Element) -> list[ET.Element]:
        item = _any_item(call, node.get("Id", ""))
        call.charged_items += 1
        return [m("Items", None, any_item_xml(call, item, shape))]

    return _each("GetItem", _folder_ids(body, "m:ItemIds"), one)


def _constant(node: ET.Element) -> str:
    c = node.find("t:FieldURIOrConstant/t:Constant", NS)
    return c.get("Value", "") if c is not None else ""


def _iso_norm(value: str) -> str:
    when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return iso(when)


_COMPARE = {"IsGreaterThan": ">", "IsGreaterThanOrEqualTo": ">=", "IsLessThan": "<",
            "IsLessThanOrEqualTo": "<=", "IsEqualTo": "=", "IsNotEqualTo": "<>"}  # fmt: skip
# FieldURI -> mailstore column (a fixed set: never user text in SQL).
_FIELDS = {"item:DateTimeReceived": "received", "item:DateTimeSent": "sent",
           "item:DateTimeCreated": "created", "item:LastModifiedTime": "modified"}  # fmt: skip


def _where(node: ET.Element) -> tuple[str, list[str]]:
    """A restriction over the date fields (what the stores filter on), And/Or/Not of them, as
    an SQL condition on the mailstore's columns (values as parameters)."""
    local = node.tag.rsplit("}", 1)[-1]
    if local in ("And", "Or"):
        parts = [_where(c) for c in node]
        joined = f" {local.upper()} ".join(f"({sql})" for sql, _ in parts)
        return joined or "1", [arg for _, args in parts for arg in args]
    if local == "Not":
        sql, args = _where(node[0])
        return f"NOT ({sql})", args
    if local in _COMPARE:
        uri = node.find("t:FieldURI", NS)
        column = _FIELDS.get(uri.get("FieldURI", "") if uri is not None else "")
        if column is None:
            raise _Err(
                "ErrorUnsupportedPathForQuery",
                "The property path is not supported for a query (sandbox: date fields only).",
            )
        try:
            value = _iso_norm(_constant(node))
        except ValueError as exc:
            raise _Err(
                "ErrorInvalidValueForProperty", "An invalid value was specified for the property."
            ) from exc
        return f"{column} IS NOT NULL AND {column} {_COMPARE[local]} ?", [value]
    raise _Err(
        "ErrorUnsupportedQueryFilter",
        "The restriction contains a query filter that is not supported (sandbox).",
    )


def find_item(call: Call, body: ET.Element) -> ET.Element:
    shape = body.find("m:ItemShape", NS)
    view = body.find("m:IndexedPageItemView", NS)
    restriction = body.find("m:Restriction", NS)
    where = _where(restriction[0]) if restriction is not None and len(restriction) else ("1", [])
    order = body.find("m:SortOrder/t:FieldOrder", NS)
    descending = True
    sort = "received"
    if order is not None:
        descending = order.get("Order", "Ascending") == "Descending"
        uri = order.find("t:FieldURI", NS)
        sort = _FIELDS.get(uri.get("FieldURI", "") if uri is not None else "", "received")

    def one(node: ET.Element) -> list[ET.Element]:
        folder = resolve_folder(call, node)
        items: list[Item | PimItem] = []
        cut = False
        if folder.pim_kind is not None:
            # Masters and single items; exceptions are reached through their master
            # (ModifiedOccurrences). A CalendarView expands series into occurrences.
            stored = list(pim_store(call).iter_folder(folder.id))
            view_node = body.find("m:CalendarView", NS)
            if view_node is not None:
                start = dt.datetime.fromisoformat(
                    view_node.get("StartDate", "").replace("Z", "+00:00")
                )
                end = dt.datetime.fromisoformat(view_node.get("EndDate", "").replace("Z", "+00:00"))
                items = list(
                    pim_items.calendar_view(pim_store(call), stored, start, end, occurrence_id)
                )
                cap = view_node.get("MaxEntriesReturned")
                if cap is not None and len(items) > int(cap):
                    # orgs.UNVERIFIED.calendar_view_over_cap: truncate or refuse.
                    if orgs.UNVERIFIED.calendar_view_over_cap != "truncate":
                        raise _Err("ErrorCalendarViewRangeTooBig",
                                   "The calendar view range is too big.")  # fmt: skip
                    items, cut = items[: int(cap)], True
            else:
                items = [i for i in stored if i.props.get("type") != "exception"]
        if folder.mail:
            # Only the page is read (a folder may hold 100,000 items).
            total = call.store.count_where(call.key, folder.user.id, folder.id, *where)
            offset, limit = _paging(view, total)
            page: list[Item | PimItem] = list(call.store.page_messages(
                call.key, folder.user.id, folder.id, where[0], where[1], order=sort,
                descending=descending, offset=offset, limit=limit))  # fmt: skip
        else:
            total = len(items)
            offset, limit = _paging(view, total)
            page = items[offset : offset + limit]
        call.charged_items += len(page)
        root = m("RootFolder", {
            "IndexedPagingOffset": str(offset + len(page)),
            "TotalItemsInView": str(total),
            "IncludesLastItemInRange": "false" if cut or offset + len(page) < total else "true",
        }, t("Items", None, [any_item_xml(call, i, shape) for i in page]))  # fmt: skip
        return [root]

    return _each("FindItem", _folder_ids(body, "m:ParentFolderIds"), one)


def sync_folder_items(call: Call, body: ET.Element) -> ET.Element:
    shape = body.find("m:ItemShape", NS)
    messages = m("ResponseMessages")
    try:
        node = body.find("m:SyncFolderId", NS)
        assert node is not None and len(node)
        folder = resolve_folder(call, node[0])
        limit = min(SYNC_MAX, int(soap.text_of(body, "m:MaxChangesReturned") or SYNC_MAX))
        state = _read_state(call, soap.text_of(body, "m:SyncState"))
        if state is not None and state.get("f") != folder.id:
            raise _Err(
                "ErrorInvalidSyncStateData",
                "Synchronization state data is corrupt or otherwise invalid.",
            )
        if folder.pim_kind is not None:
            messages.append(_sync_pim(call, folder, state, limit, shape))
            return m("SyncFolderItemsResponse", None, messages)
        clock = call.store.clock
        after = int((state or {}).get("a", 0))
        removed_after = int((state or {}).get("r", clock))
        seen = int((state or {}).get("s", 0))
        entries: list[Item | Tombstone] = []
        more = False
        if folder.mail:
            entries, clock, more = call.store.changes(call.key, folder.user.id, folder.id, after,
                                                      removed_after, limit)  # fmt: skip
        changes = m("Changes")
        top_seq = seen
        last = after
        for entry in entries:
            if isinstance(entry, Tombstone):
                changes.append(t("Delete", None, t("ItemId", {"Id": entry.item_id})))
                last = max(last, entry.cseq)
                continue
            moved_in = entry.mseq > after and call.store.arrived_by_move(
                call.key, folder.user.id, entry.mseq
            )
            kind = "Create" if entry.seq > seen or moved_in else "Update"
            changes.append(t(kind, None, item_xml(call, entry, shape)))
            top_seq = max(top_seq, entry.seq)
            last = max(last, entry.mseq)
        call.charged_items += len(entries)
        cursor = last if more else max(last, clock)
        new_state = _state({"f": folder.id, "a": cursor, "r": removed_after if more else cursor,
                            "s": top_seq if more else max(top_seq, _max_seq(call, folder)),
                            "at": time.time()})  # fmt: skip
        messages.append(_message("SyncFolderItemsResponseMessage", "NoError", None,
                                 m("SyncState", text=new_state),
                                 m("IncludesLastItemInRange", text="false" if more else "true"),
                                 changes))  # fmt: skip
    except _Err as err:
        # Exchange sends both elements on an error too (exchangelib reads them unconditionally).
        messages.append(_message("SyncFolderItemsResponseMessage", err.code, err.text,
                                 m("SyncState", text=""),
                                 m("IncludesLastItemInRange", text="true")))  # fmt: skip
    return m("SyncFolderItemsResponse", None, messages)


def _sync_pim(call: Call, folder: EwsFolder, state: dict[str, Any] | None, limit: int,
              shape: ET.Element | None) -> ET.Element:  # fmt: skip
    """SyncFolderItems over a PIM folder: the state names a snapshot (id -> change key) kept
    in the PIM store's side table; changes are the difference, at most `limit` a call."""
    pim = pim_store(call)
    known: dict[str, str] = {}
    if state is not None:
        loaded = pim.load_state(str(state.get("p", "")))
        if loaded is None:
            raise _Err(orgs.UNVERIFIED.stale_sync_state,
                       "Synchronization state data is corrupt or otherwise invalid.")  # fmt: skip
        known = dict(loaded.get("known", {}))
    now = {i.id: i for i in pim.iter_folder(folder.id) if i.props.get("type") != "exception"}
    changes: list[ET.Element] = []
    after = dict(known)
    for item_id, item in now.items():
        if len(changes) >= limit:
            break
        if known.get(item_id) == item.change_key:
            continue
        kind = "Update" if item_id in known else "Create"
        changes.append(t(kind, None, any_item_xml(call, item, shape)))
        after[item_id] = item.change_key
    for item_id in known:
        if len(changes) >= limit:
            break
        if item_id not in now:
            changes.append(t("Delete", None, t("ItemId", {"Id": item_id})))
            after.pop(item_id, None)
    more = any(now[i].change_key != after.get(i) for i in now) or any(i not in now for i in after)
    call.charged_items += len(changes)
    snapshot = pim.save_state({"known": after})
    new_state = _state({"f": folder.id, "p": snapshot, "at": time.time()})
    return _message("SyncFolderItemsResponseMessage", "NoError", None,
                    m("SyncState", text=new_state),
                    m("IncludesLastItemInRange", text="false" if more else "true"),
                    m("Changes", None, changes))  # fmt: skip


def _max_seq(call: Call, folder: EwsFolder) -> int:
    return call.store.max_seq(call.key, folder.user.id)


# -- writes --------------------------------------------------------------------------------------------


def _ext_values(node: ET.Element) -> dict[str, str]:
    out: dict[str, str] = {}
    for prop in node.iterfind("t:ExtendedProperty", NS):
        uri = prop.find("t:ExtendedFieldURI", NS)
        value = soap.text_of(prop, "t:Value")
        if uri is None or value is None or uri.get("PropertyTag") is None:
            continue
        tag = uri.get("PropertyTag", "0")
        number = int(tag, 16) if tag.lower().startswith("0x") else int(tag)
        out[f"{uri.get('PropertyType', '')} 0x{number:X}"] = value
    return out


def _target_folder(call: Call, node: ET.Element | None) -> EwsFolder:
    if node is None or not len(node):
        user = _user_of_mailbox(call, None)
        _open(call, user)
        return _from_mail(call, user, call.store.folder(call.key, user.id, "drafts") or _root(call, user),
                          _root(call, user).id)  # fmt: skip
    return resolve_folder(call, node[0])


def _size_check(call: Call, size: int) -> None:
    cap = call.flavour.max_message_bytes
    if cap is not None and size > cap:
        raise _Err("ErrorMessageSizeExceeded", "The message exceeds the maximum supported size.")


def create_item(call: Call, body: ET.Element) -> ET.Element:
    messages = m("ResponseMessages")
    disposition = body.get("MessageDisposition", "SaveOnly")
    try:
        folder = _target_folder(call, body.find("m:SavedItemFolderId", NS))
        if folder.pim_kind is not None:
            for spec in _folder_ids(body, "m:Items"):
                try:
                    messages.append(_create_pim(call, folder, spec))
                except _Err as err:
                    messages.append(_message("CreateItemResponseMessage", err.code, err.text))
            return m("CreateItemResponse", None, messages)
        if not folder.mail:
            raise _Err(
                "ErrorInvalidFolderTypeForOperation",
                "The folder type is invalid for this operation (sandbox: messages only).",
            )
    except _Err as err:
        messages.append(_message("CreateItemResponseMessage", err.code, err.text))
        return m("CreateItemResponse", None, messages)
    for spec in _folder_ids(body, "m:Items"):
        try:
            if spec.tag != f"{{{T}}}Message" or disposition != "SaveOnly":
                raise _Err(
                    "ErrorInvalidOperation",
                    "Only Message items saved with MessageDisposition SaveOnly are served by this sandbox.",
                )
            mime_b64 = soap.text_of(spec, "t:MimeContent")
            mime = base64.b64decode(mime_b64) if mime_b64 else _mime_of(spec)
            _size_check(call, len(mime))
            props = _ext_values(spec)
            flags = int(props[PR_MESSAGE_FLAGS]) if PR_MESSAGE_FLAGS in props else None
            # Without PR_MESSAGE_FLAGS an item saved from MIME is a draft (MSGFLAG_UNSENT).
            is_draft = flags is None or bool(flags & MSGFLAG_UNSENT)
            is_read_text = soap.text_of(spec, "t:IsRead")
            is_read = (
                soap.is_true(is_read_text)
                if is_read_text is not None
                else bool((flags or 0) & MSGFLAG_READ)
            )
            received = props.get(PR_MESSAGE_DELIVERY_TIME) or soap.text_of(
                spec, "t:DateTimeReceived"
            )
            cats = [c.text or "" for c in spec.iterfind("t:Categories/t:String", NS)]
            imp = soap.text_of(spec, "t:Importance")
            status = soap.text_of(spec, "t:Flag/t:FlagStatus")
            item = call.store.insert_message(
                call.key, folder.user.id, folder.id, mime,
                received=dt.datetime.fromisoformat(received.replace("Z", "+00:00")) if received else None,
                is_read=is_read, is_draft=is_draft, categories=cats,
                importance=imp.lower() if imp else None,
                flag={"flagStatus": _flag_status(status)} if status else None,
                properties={k: v for k, v in props.items() if k != PR_MESSAGE_FLAGS},
            )  # fmt: skip
            call.charged_items += 1 + len(mime) // (1 << 20)
            messages.append(_message("CreateItemResponseMessage", "NoError", None,
                                     m("Items", None, t("Message", None, _item_id(item)))))  # fmt: skip
        except _Err as err:
            messages.append(_message("CreateItemResponseMessage", err.code, err.text))
    return m("CreateItemResponse", None, messages)


def _keeps_pim_extended(call: Call) -> bool:
    """Whether extended properties set on a calendar item, contact or task are kept: Exchange
    keeps any (MS-OXPROPS named properties); WorkMail's answer is UNVERIFIED."""
    return call.flavour.kind != "workmail" or orgs.UNVERIFIED.workmail_keeps_pim_extended


def _create_pim(call: Call, folder: EwsFolder, spec: ET.Element) -> ET.Element:
    assert folder.pim_kind is not None
    kind = pim_items.ITEM_OF_FOLDER[folder.pim_kind]
    element = spec.tag.rsplit("}", 1)[-1]
    if not pim_items.accepts(kind, element):
        raise _Err("ErrorObjectTypeChanged",
                   f"A {element} cannot be saved in a folder of class {folder.folder_class} "
                   "(sandbox).")  # fmt: skip
    try:
        props = pim_items.props_from_xml(kind, spec)
    except (ValueError, KeyError) as exc:
        raise _Err("ErrorInvalidPropertySet", f"Invalid item properties: {exc}") from exc
    if kind == "event":
        props.setdefault("iCalUId", "040000008200E00074C5B7101A82E008" + uuid.uuid4().hex.upper())
        props["organizer"] = {"emailAddress": {"name": folder.user.display_name,
                                               "address": folder.user.primary_smtp}}  # fmt: skip
    extended = pim_items.extended_values(spec)
    if extended and _keeps_pim_extended(call):
        props[pim_items.EXTENDED] = extended
    made = pim_store(call).create_item(call.key, folder.user.id, folder.id, kind, props)
    call.charged_items += 1
    node = t(
        pim_items.ELEMENT[kind], None, t("ItemId", {"Id": made.id, "ChangeKey": made.change_key})
    )
    return _message("CreateItemResponseMessage", "NoError", None, m("Items", None, node))


def _mime_of(spec: ET.Element) -> bytes:
    """The MIME Exchange would hold for a message created from typed properties (Subject,
    Body, From, To/Cc/BccRecipients, InternetMessageId)."""
    msg = EmailMessage()

    def addresses(path: str) -> str:
        return ", ".join(
            formataddr((soap.text_of(mb, "t:Name") or "", soap.text_of(mb, "t:EmailAddress") or ""))
            for mb in spec.iterfind(path, NS)
        )  # fmt: skip

    for header, path in (("From", "t:From/t:Mailbox"), ("To", "t:ToRecipients/t:Mailbox"),
                         ("Cc", "t:CcRecipients/t:Mailbox")):  # fmt: skip
        value = addresses(path)
        if value:
            msg[header] = value
    msg["Subject"] = soap.text_of(spec, "t:Subject") or ""
    msg["Message-ID"] = soap.text_of(spec, "t:InternetMessageId") or make_msgid(
        domain="sandbox.ews"
    )
    msg["Date"] = formatdate(usegmt=True)
    body = spec.find("t:Body", NS)
    text = body.text if body is not None and body.text else ""
    if body is not None and body.get("BodyType") == "HTML":
        msg.set_content(text, subtype="html")
    else:
        msg.set_content(text)
    return msg.as_bytes()


def _flag_status(status: str) -> str:
    return {v: k for k, v in _FLAG.items()}.get(status, "notFlagged")


def _item_id(item: Item) -> ET.Element:
    return t("ItemId", {"Id": item.id, "ChangeKey": item.change_key})


def delete_item(call: Call, body: ET.Element) -> ET.Element:
    how = body.get("DeleteType", "MoveToDeletedItems")

    def one(node: ET.Element) -> list[ET.Element]:
        found = _any_item(call, node.get("Id", ""))
        if isinstance(found, PimItem):
            _delete_pim(call, found)
            return []
        item = found
        if how == "MoveToDeletedItems":
            bin_ = call.store.folder(call.key, item.mailbox, "deleteditems")
            assert bin_ is not None
            call.store.move_message(call.key, item.mailbox, item.id, bin_.id)
        else:  # HardDelete; SoftDelete keeps it in Recoverable Items, not modelled here
            call.store.delete_message(call.key, item.mailbox, item.id)
        return []

    return _each("DeleteItem", _folder_ids(body, "m:ItemIds"), one)


def _delete_pim(call: Call, item: PimItem) -> None:
    """Delete a PIM item (it does not go to Deleted Items here: a modelling shortcut). Deleting
    an exception cancels that occurrence of its series; deleting a master drops its
    exceptions."""
    pim = pim_store(call)
    if item.props.get("type") in ("exception", "occurrence"):
        master = pim.find(str(item.props.get("seriesMasterId")))
        if master is not None:
            cancelled = sorted({*(master.props.get("cancelled") or []),
                                str(item.props.get("originalStart"))})  # fmt: skip
            pim.update_item(master.id, {**master.props, "cancelled": cancelled})
    else:
        for x in pim.items(item.tenant, item.mailbox, "event", item.folder_id):
            if x.props.get("seriesMasterId") == item.id:
                pim.delete_item(x.id)
    if pim.find(item.id) is not None:  # an occurrence is derived from its master, not kept
        pim.delete_item(item.id)


def move_item(call: Call, body: ET.Element) -> ET.Element:
    to = body.find("m:ToFolderId", NS)
    assert to is not None and len(to)

    def one(node: ET.Element) -> list[ET.Element]:
        folder = resolve_folder(call, to[0])
        item = _item(call, node.get("Id", ""))
        if not folder.mail or folder.user.id != item.mailbox:
            raise _Err(
                "ErrorInvalidOperation",
                "Items move within one mailbox's mail folders here (sandbox).",
            )
        moved = call.store.move_message(call.key, item.mailbox, item.id, folder.id)
        assert moved is not None
        return [m("Items", None, t("Message", None, _item_id(moved)))]

    return _each("MoveItem", _folder_ids(body, "m:ItemIds"), one)


def update_item(call: Call, body: ET.Element) -> ET.Element:
    def one(change: ET.Element) -> list[ET.Element]:
        id_node = change.find("t:ItemId", NS)
        found = _any_item(call, id_node.get("Id", "") if id_node is not None else "")
        if isinstance(found, PimItem):
            return _update_pim(call, found, change)
        item = found
        kw: dict[str, Any] = {}
        props: dict[str, str] = {}
        for upd in change.iterfind("t:Updates/*", NS):
            op = upd.tag.rsplit("}", 1)[-1]
            uri = upd.find("t:FieldURI", NS)
            ext = upd.find("t:ExtendedFieldURI", NS)
            carrier = next((c for c in upd if c.tag in (f"{{{T}}}Message", f"{{{T}}}Item")), None)
            if uri is not None:
                name = uri.get("FieldURI", "")
                clear = op == "DeleteItemField"
                if name == "message:IsRead":
                    kw["is_read"] = (
                        False if clear else soap.is_true(soap.text_of(carrier, "t:IsRead"))
                    )
                elif name == "item:Categories":
                    kw["categories"] = [] if clear else [
                        c.text or "" for c in (carrier.iterfind("t:Categories/t:String", NS) if carrier is not None else [])
                    ]  # fmt: skip
                elif name == "item:Flag":
                    status = None if clear else soap.text_of(carrier, "t:Flag/t:FlagStatus")
                    kw["flag"] = {"flagStatus": _flag_status(status or "NotFlagged")}
                elif name == "item:Importance":
                    kw["importance"] = (
                        "normal"
                        if clear
                        else (soap.text_of(carrier, "t:Importance") or "Normal").lower()
                    )
                else:
                    raise _Err("ErrorInvalidPropertySet", f"The sandbox cannot update {name}.")
            elif ext is not None and carrier is not None:
                props.update(_ext_values(carrier))
        if PR_MESSAGE_FLAGS in props:
            kw.setdefault("is_read", bool(int(props.pop(PR_MESSAGE_FLAGS)) & MSGFLAG_READ))
        updated = call.store.update_message(
            call.key, item.mailbox, item.id, properties=props or None, **kw
        )
        assert updated is not None
        return [m("Items", None, t("Message", None, _item_id(updated))),
                m("ConflictResults", None, t("Count", text=0))]  # fmt: skip

    return _each("UpdateItem", _folder_ids(body, "m:ItemChanges"), one)


def _update_pim(call: Call, item: PimItem, change: ET.Element) -> list[ET.Element]:
    """Set/Append/DeleteItemField on a calendar item, contact, task or note: the updates are
    applied to the item's EWS element, which is then read back into the stored properties
    (properties EWS does not show, such as the organizer or a series' cancellations, stay)."""
    pim = pim_store(call)
    current = pim_items.item_xml(pim, item, set(), True)
    before = pim_items.props_from_xml(item.kind, current)
    extended = dict(item.props.get(pim_items.EXTENDED) or {})
    for upd in change.iterfind("t:Updates/*", NS):
        op = upd.tag.rsplit("}", 1)[-1]
        uri = upd.find("t:FieldURI", NS)
        indexed = upd.find("t:IndexedFieldURI", NS)
        ext = upd.find("t:ExtendedFieldURI", NS)
        carrier = next(
            (c for c in upd if c.tag.startswith(f"{{{T}}}") and "FieldURI" not in c.tag), None
        )
        if ext is not None:
            pid = pim_items.extended_id(ext)
            if pid is None or not _keeps_pim_extended(call):
                raise _Err("ErrorInvalidPropertySet", "The extended property is not valid.")
            extended = {k: v for k, v in extended.items() if not same_property_id(k, pid)}
            if op != "DeleteItemField" and carrier is not None:
                extended.update(pim_items.extended_values(carrier))
            continue
        if uri is None and indexed is None:
            raise _Err("ErrorInvalidPropertySet", "The property is not valid (sandbox).")
        if indexed is not None:
            container = _INDEXED.get(indexed.get("FieldURI", ""), "")
            key = indexed.get("FieldIndex", "")
            holder = current.find(f"t:{container}", NS)
            if holder is None:
                holder = t(container)
                current.append(holder)
            for entry in list(holder):
                if entry.get("Key") == key:
                    holder.remove(entry)
            if op != "DeleteItemField" and carrier is not None:
                holder.extend(carrier.iterfind(f"t:{container}/t:Entry", NS))
            continue
        assert uri is not None
        name = uri.get("FieldURI", ":").split(":", 1)[1]
        for old in current.findall(f"t:{name}", NS):
            current.remove(old)
        if op != "DeleteItemField" and carrier is not None:
            current.extend(carrier.findall(f"t:{name}", NS))
    try:
        after = pim_items.props_from_xml(item.kind, current)
    except (ValueError, KeyError) as exc:
        raise _Err("ErrorInvalidPropertySet", f"Invalid item properties: {exc}") from exc
    props = {k: v for k, v in item.props.items() if k not in before or k in after}
    props.update({k: v for k, v in after.items() if k != "type"})
    if extended:
        props[pim_items.EXTENDED] = extended
    else:
        props.pop(pim_items.EXTENDED, None)
    if item.props.get("type") == "occurrence" and pim.find(item.id) is None:
        # An occurrence changed over EWS becomes an exception of its series (stored under
        # the occurrence's id, as a Graph client's PATCH makes one).
        made = pim.create_item(item.tenant, item.mailbox, item.folder_id, "event",
                               {**props, "type": "exception"}, item_id=item.id)  # fmt: skip
        call.charged_items += 1
        return [m("Items", None, t("CalendarItem", None, t("ItemId", {"Id": made.id, "ChangeKey": made.change_key}))),
                m("ConflictResults", None, t("Count", text=0))]  # fmt: skip
    if item.kind == "event" and item.props.get("type") != "exception":
        props["type"] = "seriesMaster" if props.get("recurrence") else "singleInstance"
        if before.get("recurrence") != after.get("recurrence") or before.get("start") != after.get(
            "start"
        ):
            # As the Graph face: a changed series drops its exceptions and cancellations.
            props.pop("cancelled", None)
            for x in pim.items(item.tenant, item.mailbox, "event", item.folder_id):
                if x.props.get("seriesMasterId") == item.id:
                    pim.delete_item(x.id)
    updated = pim.update_item(item.id, props)
    call.charged_items += 1
    element = pim_items.ELEMENT[item.kind]
    return [m("Items", None, t(element, None, t("ItemId", {"Id": updated.id, "ChangeKey": updated.change_key}))),
            m("ConflictResults", None, t("Count", text=0))]  # fmt: skip


# -- full fidelity: ExportItems / UploadItems ----------------------------------------------------------


def export_items(call: Call, body: ET.Element) -> ET.Element:
    def one(node: ET.Element) -> list[ET.Element]:
        found = _any_item(call, node.get("Id", ""))
        if isinstance(found, PimItem):
            return _export_pim(call, found)
        item = found
        row = call.store.row(item.id)
        columns = {k: row[k] for k in row if k not in STORE_OWNED}
        head = json.dumps(
            {"class": "IPM.Note", "columns": columns}, separators=(",", ":"), sort_keys=True
        )
        blob = BLOB_MAGIC + head.encode() + b"\n" + bytes(row["mime"])
        call.charged_items += 1 + len(blob) // (1 << 20)
        return [m("ItemId", {"Id": item.id, "ChangeKey": item.change_key}),
                m("Data", text=base64.b64encode(blob).decode())]  # fmt: skip

    return _each("ExportItems", _folder_ids(body, "m:ItemIds"), one)


def _export_pim(call: Call, item: PimItem) -> list[ET.Element]:
    """The blob of a PIM item: its class, kind, props, times and (a series) its exceptions —
    without the ids that name the item (they change on upload: the blob stays identical)."""
    # The props carry the item's PidTagSearchKey, which the copy keeps (`search_key`).
    header: dict[str, Any] = {"class": pim_items.CLASS_OF_ITEM[item.kind], "kind": item.kind,
                              "props": pim_items.props_with_search_key(item),
                              "created": item.created,
                              "modified": item.modified}  # fmt: skip
    if item.kind == "event":
        header["exceptions"] = [
            {k: v for k, v in x.items() if k != "seriesMasterId"}
            for x in pim_items.exceptions_of(pim_store(call), item)
        ]
    blob = BLOB_MAGIC + json.dumps(header, separators=(",", ":"), sort_keys=True).encode() + b"\n"
    call.charged_items += 1
    return [m("ItemId", {"Id": item.id, "ChangeKey": item.change_key}),
            m("Data", text=base64.b64encode(blob).decode())]  # fmt: skip


def _upload_pim(call: Call, folder: EwsFolder, header: dict[str, Any]) -> ET.Element:
    kind = str(header.get("kind"))
    if folder.pim_kind is None or pim_items.ITEM_OF_FOLDER[folder.pim_kind] != kind:
        raise _Err("ErrorInvalidFolderTypeForOperation",
                   "The folder type is invalid for this operation.")  # fmt: skip
    pim = pim_store(call)
    made = pim.create_item(call.key, folder.user.id, folder.id, kind, dict(header["props"]),
                           created=header.get("created"), modified=header.get("modified"))  # fmt: skip
    if kind == "event" and header.get("exceptions"):
        import_exceptions(pim, made, list(header["exceptions"]))
    return m("ItemId", {"Id": made.id, "ChangeKey": made.change_key})


def _replace_pim(call: Call, action: str, existing: ET.Element | None) -> None:
    """CreateAction Update / UpdateOrCreate of a PIM blob: the item named by ItemId goes (its
    exceptions with it) before the blob is made, as the mail branch below does; Update of an
    item not there is ErrorItemNotFound."""
    if action not in ("Update", "UpdateOrCreate") or existing is None:
        return
    old = pim_store(call).find(existing.get("Id", ""))
    if old is not None and old.tenant == call.key:
        _delete_pim(call, old)
    elif action == "Update":
        raise _Err("ErrorItemNotFound", "The specified object was not found in the store.")


def upload_items(call: Call, body: ET.Element) -> ET.Element:
    def one(node: ET.Element) -> list[ET.Element]:
        action = node.get("CreateAction", "CreateNew")
        parent = node.find("t:ParentFolderId", NS)
        data = base64.b64decode(soap.text_of(node, "t:Data") or "")
        if not data.startswith(BLOB_MAGIC) or b"\n" not in data:
            raise _Err("ErrorInvalidOperation", "The data is not an exported item.")
        head, _, mime = data[len(BLOB_MAGIC) :].partition(b"\n")
        header = json.loads(head)
        if header.get("kind") in ("event", "contact", "task", "note"):
            folder_id = parent.get("Id", "") if parent is not None else ""
            owner = _owner_of(call, folder_id)
            if owner is None:
                raise _Err(
                    "ErrorFolderNotFound", "The specified folder could not be found in the store."
                )
            _open(call, owner)
            _replace_pim(call, action, node.find("t:ItemId", NS))
            return [_upload_pim(call, folder_by_id(call, owner, folder_id), header)]
        folder = folder_by_id_checked(call, parent.get("Id", "") if parent is not None else "")
        _size_check(call, len(mime))
        columns = header["columns"]
        existing = node.find("t:ItemId", NS)
        if action in ("Update", "UpdateOrCreate") and existing is not None:
            old = call.store.find(existing.get("Id", ""))
            if old is not None and old.tenant == call.key and old.mailbox == folder.user.id:
                call.store.delete_message(call.key, old.mailbox, old.id)
            elif action == "Update":
                raise _Err("ErrorItemNotFound", "The specified object was not found in the store.")
        item_id, change_key = call.store.insert_row(
            call.key, folder.user.id, folder.id, columns, mime
        )
        call.charged_items += 1 + len(data) // (1 << 20)
        return [m("ItemId", {"Id": item_id, "ChangeKey": change_key})]

    return _each("UploadItems", _folder_ids(body, "m:Items"), one)


def folder_by_id_checked(call: Call, folder_id: str) -> EwsFolder:
    user = _owner_of(call, folder_id)
    if user is None:
        raise _Err("ErrorFolderNotFound", "The specified folder could not be found in the store.")
    _open(call, user)
    folder = folder_by_id(call, user, folder_id)
    if not folder.mail:
        raise _Err(
            "ErrorInvalidFolderTypeForOperation",
            "The folder type is invalid for this operation (sandbox: mail folders only).",
        )
    return folder


# -- ConvertId -----------------------------------------------------------------------------------------


def convert_id(call: Call, body: ET.Element) -> ET.Element:
    dest = body.get("DestinationFormat", "EwsId")

    def one(node: ET.Element) -> list[ET.Element]:
        fmt, value, mailbox = node.get("Format", ""), node.get("Id", ""), node.get("Mailbox", "")
        try:
            if fmt in ("EwsId", "EwsLegacyId", "OwaId"):
                raw = base64.urlsafe_b64decode(value.encode())
            elif fmt == "EntryId":
                raw = base64.b64decode(value)
            elif fmt == "HexEntryId":
                raw = bytes.fromhex(value)
            else:
                raise ValueError(fmt)
        except (ValueError, binascii.Error) as exc:
            raise _Err("ErrorInvalidIdMalformed", "Id is malformed.") from exc
        if dest in ("EwsId", "EwsLegacyId", "OwaId"):
            out = base64.urlsafe_b64encode(raw).decode()
        elif dest == "EntryId":
            out = base64.b64encode(raw).decode()
        elif dest == "HexEntryId":
            out = raw.hex().upper()
        else:
            raise _Err(
                "ErrorInvalidIdMalformed", f"Conversion to {dest} is not served by this sandbox."
            )
        return [m("AlternateId", {f"{{{soap.XSI}}}type": "t:AlternateIdType", "Format": dest,
                                  "Id": out, "Mailbox": mailbox})]  # fmt: skip

    return _each("ConvertId", _folder_ids(body, "m:SourceIds"), one)


def create_attachment(call: Call, body: ET.Element) -> ET.Element:
    """File attachments added to a message (a MIME part) or a PIM item (its properties)."""
    parent = body.find("m:ParentItemId", NS)
    messages = m("ResponseMessages")
    for node in attachments.file_attachments(body):
        try:
            if node.tag != f"{{{T}}}FileAttachment":
                raise _Err(
                    "ErrorInvalidOperation", "Only file attachments are served by this sandbox."
                )
            new = attachments.parse_new(node)
            data = base64.b64decode(new["content"])
            found = _any_item(call, parent.get("Id", "") if parent is not None else "")
            if isinstance(found, PimItem):
                pim = pim_store(call)
                files = list(found.props.get(attachments.PROP) or [])
                files.append(new)
                updated = pim.update_item(found.id, {**found.props, attachments.PROP: files})
                root_id, change_key, index = updated.id, updated.change_key, len(files) - 1
            else:
                _size_check(call, found.size + len(data))
                added = call.store.add_attachment(
                    call.key, found.mailbox, found.id, new["name"], new["contentType"], data,
                    is_inline=bool(new["isInline"]), content_id=new["contentId"],
                )  # fmt: skip
                assert added is not None
                item, att = added
                root_id, change_key, index = item.id, item.change_key, att.index
            call.charged_items += 1 + len(data) // (1 << 20)
            ident = t("AttachmentId", {"Id": attachments.attachment_id(root_id, index),
                                       "RootItemId": root_id, "RootItemChangeKey": change_key})  # fmt: skip
            messages.append(_message("CreateAttachmentResponseMessage", "NoError", None,
                                     m("Attachments", None, t("FileAttachment", None, ident))))  # fmt: skip
        except _Err as err:
            messages.append(_message("CreateAttachmentResponseMessage", err.code, err.text))
    return m("CreateAttachmentResponse", None, messages)


def get_attachment(call: Call, body: ET.Element) -> ET.Element:
    def one(node: ET.Element) -> list[ET.Element]:
        parsed = attachments.parse_attachment_id(node.get("Id", ""))
        if parsed is None:
            raise _Err("ErrorInvalidIdMalformed", "Id is malformed.")
        item_id, index = parsed
        found = _any_item(call, item_id)
        if isinstance(found, PimItem):
            files = attachments.from_props(found.props)
            change_key = found.change_key
        else:
            files = attachments.from_mime(call.store.attachments(found.id))
            change_key = found.change_key
        if index >= len(files):
            raise _Err("ErrorItemNotFound", "The specified object was not found in the store.")
        call.charged_items += 1 + len(files[index]["data"]) // (1 << 20)
        return [m("Attachments", None, attachments.element(
            item_id, change_key, index, files[index], content=True,
            photo_kept=call.flavour.kind != "workmail"))]  # fmt: skip

    return _each("GetAttachment", _folder_ids(body, "m:AttachmentIds"), one)


OPERATIONS: dict[str, Handler] = {
    "CreateAttachment": create_attachment,
    "GetAttachment": get_attachment,
    "GetFolder": get_folder,
    "FindFolder": find_folder,
    "SyncFolderHierarchy": sync_folder_hierarchy,
    "CreateFolder": create_folder,
    "FindItem": find_item,
    "SyncFolderItems": sync_folder_items,
    "GetItem": get_item,
    "CreateItem": create_item,
    "DeleteItem": delete_item,
    "MoveItem": move_item,
    "UpdateItem": update_item,
    "ExportItems": export_items,
    "UploadItems": upload_items,
    "ConvertId": convert_id,
}
