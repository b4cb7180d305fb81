"""EWS operations over the sandbox mailstore (mail folders and messages).

Folders: the mailstore's (msgfolderroot and its IPM subtree) plus the PIM defaults
(calendar, contacts, tasks, notes) as folders of their class; the PIM folders are empty here
(their items are not served over EWS yet). Items: messages (IPM.Note and kin).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree as ET

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
from . import orgs, soap
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


NON_IPM_ROOT = "Root"  # the name graph/exchange_io gives the same system folder


def _non_ipm_root(call: Call, user: User) -> EwsFolder:
    return EwsFolder(system_folder_id(user.id, NON_IPM_ROOT), user, "", None, "", "Folder",
                     "root", children=1, mail=False, is_root=True)  # fmt: skip


def _pim_id(user: User, wk: str) -> str:
    return system_folder_id(user.id, f"EWS:{wk}")


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


def _pim(call: Call, user: User, wk: str) -> EwsFolder:
    name, cls, element = PIM_FOLDERS[wk]
    return EwsFolder(_pim_id(user, wk), user, name, _root(call, user).id, cls, element, wk,
                     mail=False)  # fmt: skip


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
        # A PIM folder id: derived, so look for the mailbox it is derived from.
        for candidate in call.tenant.users.values():
            derived = [_pim_id(candidate, wk) for wk in PIM_FOLDERS]
            derived.append(system_folder_id(candidate.id, NON_IPM_ROOT))
            if candidate.is_mailbox and folder_or_item_id in derived:
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
    for wk in PIM_FOLDERS:
        if folder_id == _pim_id(user, wk):
            return _pim(call, user, wk)
    f = call.store.folder(call.key, user.id, folder_id)
    if f is None or f.id != folder_id:
        raise _Err("ErrorFolderNotFound", "The specified folder could not be found in the store.")
    return _from_mail(call, user, f, _root(call, user).id)


def children(call: Call, parent: EwsFolder) -> list[EwsFolder]:
    if parent.is_root:
        top = _root(call, parent.user)
        return [_from_mail(call, parent.user, top, top.id)]
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


def _ext_props(item: Item, shape: ET.Element | None) -> list[ET.Element]:
    out: list[ET.Element] = []
    for uri in (
        shape.iterfind("t:AdditionalProperties/t:ExtendedFieldURI", NS) if shape is not None else []
    ):
        tag, kind = uri.get("PropertyTag"), uri.get("PropertyType", "")
        if tag is None:
            continue
        number = int(tag, 16) if tag.lower().startswith("0x") else int(tag)
        key = f"{kind} 0x{number:X}"
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


def _wanted(shape: ET.Element | None) -> tuple[set[str], bool]:
    base = soap.text_of(shape, "t:BaseShape") or "Default"
    wanted = {"ItemId"}
    if base in ("Default", "AllProperties"):
        wanted |= DEFAULT_ITEM_FIELDS
    for uri in shape.iterfind("t:AdditionalProperties/t:FieldURI", NS) if shape is not None else []:
        wanted.add(uri.get("FieldURI", ":").split(":", 1)[1])
    mime = (
        soap.text_of(shape, "t:IncludeMimeContent") or "false"
    ) == "true" or "MimeContent" in wanted
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


def get_item(call: Call, body: ET.Element) -> ET.Element:
    shape = body.find("m:ItemShape", NS)

    def one(node: ET.Element) -> list[ET.Element]:
        item = _item(call, node.get("Id", ""))
        call.charged_items += 1
        return [m("Items", None, item_xml(call, item, shape))]

    return _each("GetItem", _folder_ids(body, "m:ItemIds"), one)


def _constant(node: ET.Element) -> str:
    c = node.find("t:FieldURIOrConstant/t:Constant", NS)
    return c.get("Value", "") if c is not None else ""


def _iso_norm(value: str) -> str:
    when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return iso(when)


_COMPARE: dict[str, Callable[[str, str], bool]] = {
    "IsGreaterThan": lambda a, b: a > b,
    "IsGreaterThanOrEqualTo": lambda a, b: a >= b,
    "IsLessThan": lambda a, b: a < b,
    "IsLessThanOrEqualTo": lambda a, b: a <= b,
    "IsEqualTo": lambda a, b: a == b,
    "IsNotEqualTo": lambda a, b: a != b,
}
_FIELDS = {"item:DateTimeReceived": "received", "item:DateTimeSent": "sent",
           "item:DateTimeCreated": "created", "item:LastModifiedTime": "modified"}  # fmt: skip


def _predicate(node: ET.Element) -> Callable[[Item], bool]:
    """A restriction over the date fields (what the stores filter on), And/Or/Not of them."""
    local = node.tag.rsplit("}", 1)[-1]
    if local in ("And", "Or"):
        parts = [_predicate(c) for c in node]
        return (
            (lambda i: all(p(i) for p in parts))
            if local == "And"
            else (lambda i: any(p(i) for p in parts))
        )
    if local == "Not":
        inner = _predicate(node[0])
        return lambda i: not inner(i)
    if local in _COMPARE:
        uri = node.find("t:FieldURI", NS)
        field = _FIELDS.get(uri.get("FieldURI", "") if uri is not None else "")
        if field is None:
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
        cmp = _COMPARE[local]
        return lambda i: (getattr(i, field) or "") != "" and cmp(getattr(i, field), value)
    raise _Err(
        "ErrorUnsupportedQueryFilter",
        "The restriction contains a query filter that is not supported (sandbox).",
    )


def find_item(call: Call, body: ET.Element) -> ET.Element:
    shape = body.find("m:ItemShape", NS)
    view = body.find("m:IndexedPageItemView", NS)
    restriction = body.find("m:Restriction", NS)
    keep = _predicate(restriction[0]) if restriction is not None and len(restriction) else None
    order = body.find("m:SortOrder/t:FieldOrder", NS)
    descending = True
    sort = "received"
    if order is not None:
        descending = order.get("Order", "Ascending") == "Descending"
        uri = order.find("t:FieldURI", NS)
        sort = _FIELDS.get(uri.get("FieldURI", "") if uri is not None else "", "received")

    def one(node: ET.Element) -> list[ET.Element]:
        folder = resolve_folder(call, node)
        items: list[Item] = []
        if folder.mail:
            for item in call.store.iter_messages(call.key, folder.user.id, folder.id, order=sort,
                                                 descending=descending):  # fmt: skip
                if keep is None or keep(item):
                    items.append(item)
        offset, limit = _paging(view, len(items))
        page = items[offset : offset + limit]
        call.charged_items += len(page)
        root = m("RootFolder", {
            "IndexedPagingOffset": str(offset + len(page)),
            "TotalItemsInView": str(len(items)),
            "IncludesLastItemInRange": "true" if offset + len(page) >= len(items) else "false",
        }, t("Items", None, [item_xml(call, i, shape) for i in page]))  # fmt: skip
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
            kind = "Create" if entry.seq > seen else "Update"
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
            if not mime_b64:
                raise _Err(
                    "ErrorInvalidOperation",
                    "Only items created from MimeContent are served by this sandbox.",
                )
            mime = base64.b64decode(mime_b64)
            _size_check(call, len(mime))
            props = _ext_values(spec)
            flags = int(props[PR_MESSAGE_FLAGS]) if PR_MESSAGE_FLAGS in props else None
            # Without PR_MESSAGE_FLAGS an item saved from MIME is a draft (MSGFLAG_UNSENT).
            is_draft = flags is None or bool(flags & MSGFLAG_UNSENT)
            is_read_text = soap.text_of(spec, "t:IsRead")
            is_read = (
                (is_read_text == "true")
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


def _flag_status(status: str) -> str:
    return {v: k for k, v in _FLAG.items()}.get(status, "notFlagged")


def _item_id(item: Item) -> ET.Element:
    return t("ItemId", {"Id": item.id, "ChangeKey": item.change_key})


def delete_item(call: Call, body: ET.Element) -> ET.Element:
    how = body.get("DeleteType", "MoveToDeletedItems")

    def one(node: ET.Element) -> list[ET.Element]:
        item = _item(call, node.get("Id", ""))
        if how == "MoveToDeletedItems":
            bin_ = call.store.folder(call.key, item.mailbox, "deleteditems")
            assert bin_ is not None
            call.store.move_message(call.key, item.mailbox, item.id, bin_.id)
        else:  # HardDelete; SoftDelete keeps it in Recoverable Items, not modelled here
            call.store.delete_message(call.key, item.mailbox, item.id)
        return []

    return _each("DeleteItem", _folder_ids(body, "m:ItemIds"), one)


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
        item = _item(call, id_node.get("Id", "") if id_node is not None else "")
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
                    kw["is_read"] = False if clear else soap.text_of(carrier, "t:IsRead") == "true"
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


# -- full fidelity: ExportItems / UploadItems ----------------------------------------------------------


def export_items(call: Call, body: ET.Element) -> ET.Element:
    def one(node: ET.Element) -> list[ET.Element]:
        item = _item(call, node.get("Id", ""))
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


def upload_items(call: Call, body: ET.Element) -> ET.Element:
    def one(node: ET.Element) -> list[ET.Element]:
        action = node.get("CreateAction", "CreateNew")
        parent = node.find("t:ParentFolderId", NS)
        folder = folder_by_id_checked(call, parent.get("Id", "") if parent is not None else "")
        data = base64.b64decode(soap.text_of(node, "t:Data") or "")
        if not data.startswith(BLOB_MAGIC) or b"\n" not in data:
            raise _Err("ErrorInvalidOperation", "The data is not an exported item.")
        head, _, mime = data[len(BLOB_MAGIC) :].partition(b"\n")
        _size_check(call, len(mime))
        columns = json.loads(head)["columns"]
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


OPERATIONS: dict[str, Handler] = {
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
