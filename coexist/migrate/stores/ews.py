"""The EWS store: one Exchange (or WorkMail) mailbox as a `MailboxStore`, mail first.

It calls exchangelib only through `coexist.tenants.ews` (each call a blocking function run by
`EwsMailbox.call` in the server's worker threads, errors mapped there).

- Folders: the folders under the IPM root (`msgfolderroot`, FindFolder Deep) whose folder
  class is mail (`IPF.Note`, or none: Exchange leaves it empty on some mail folders); search
  folders and other classes are left out (counted). Top-level folders that are a distinguished
  folder (GetFolder on `inbox`, `sentitems` ...) carry that well-known name, as the Graph stores
  name them, so a German "Posteingang" is the Inbox on either side.
- Changes: SyncFolderItems (at most `SYNC_PAGE` = 512 changes a call, Exchange's maximum,
  messages.xsd MaxChangesReturned) with the sync state as the cursor (`checkpoint_kind`
  "ews-sync"), given to the sync only at the end of the round, so `sync.py` saves it after
  every page of the round is journaled. A stale state (ErrorInvalidSyncStateData) is
  `cursor_lost`: the sync restarts the folder's round, as on Graph's `sync_state_lost`.
- Export: EXCHANGE_STREAM (ExportItems: Exchange's opaque full-fidelity blob, Exchange 2010
  SP1+) when the other side is Exchange too, else MIME (GetItem MimeContent) with the
  `MessageState` read from typed and extended properties (`message_state`).
- Import: UploadItems (the blob, CreateNew; an update is `Update` over the copy's id) or
  CreateItem with the MIME and the state as extended properties set at creation
  (`state_properties`): PR_MESSAGE_FLAGS without MSGFLAG_UNSENT (not a draft), the delivery
  and submit times kept, read, follow-up flag, last verb (replied/forwarded), categories,
  importance. An update of a MIME copy sets its state (UpdateItem).
- Move (MoveItem), delete (DeleteItem, SoftDelete), change keys (GetItem IdOnly), totals
  (the folders' TotalCount).
- Plan mode: every write (CreateFolder, CreateItem, UploadItems, UpdateItem, MoveItem,
  DeleteItem) is recorded, not sent; reads are sent.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from exchangelib import Contact, ExtendedProperty, ItemId, Message, Task
from exchangelib.errors import MalformedResponseError, SOAPError
from exchangelib.ewsdatetime import EWSDateTime
from exchangelib.folders import (
    Calendar,
    Contacts,
    DeletedItems,
    Drafts,
    FolderCollection,
    Inbox,
    JunkEmail,
    Notes,
    Outbox,
    SentItems,
    Tasks,
)
from exchangelib.folders import (
    Folder as EwsFolder,
)
from exchangelib.items import ID_ONLY, SOFT_DELETE
from exchangelib.properties import DistinguishedFolderId, FolderId, Mailbox
from exchangelib.services import ExportItems, GetItem, SyncFolderItems
from exchangelib.services.common import EWSService
from exchangelib.util import SOAPNS, ParseError, to_xml

from coexist.engine.context import Context, capability_missing
from coexist.errors import InvalidRequest, NotFound, RemoteError
from coexist.migrate.passes import MOVERS, PassResult, Window
from coexist.migrate.sync import StoreMover, message_identity
from coexist.tenants.ews import SERVICE, EwsMailbox, EwsServer, sync_state_lost
from coexist.tenants.plan import WriteRecorder, before_write
from coexist.tenants.protocols import (
    EXCHANGE_STREAM,
    MAIL_CLASS,
    MAIL_FOLDER,
    MIME,
    Capabilities,
    Change,
    ChangePage,
    Folder,
    FolderTree,
    Imported,
    ItemInfo,
    ItemRef,
    MailboxStore,
    MessageState,
    Payload,
)

log = logging.getLogger(__name__)

CHECKPOINT_KIND = "ews-sync"
SYNC_PAGE = 512  # SyncFolderItems MaxChangesReturned: 1..512 (messages.xsd)
EXPORT_BATCH = 20  # items per ExportItems / GetItem call
EXPORT_BYTES = 8 * 1024 * 1024  # bytes of items per export call (the answer is held whole)
# Concurrent imports into one mailbox (each a CreateItem / UploadItems of one item). Against
# the sandbox (fast profile, 2 cores) 2 -> 4 took 300 MIME imports from ~33 to ~45 items/s;
# the server's bound of requests in flight (`EwsLimits`) caps them across mailboxes.
IMPORTS_IN_FLIGHT = 4
PLANNED = "planned:"

# Distinguished folders of mail (types.xsd DistinguishedFolderIdNameType) and the
# well-known names the stores share (Graph's mail well-known names).
WELL_KNOWN: dict[str, Any] = {
    "inbox": Inbox,
    "sentitems": SentItems,
    "drafts": Drafts,
    "deleteditems": DeletedItems,
    "junkemail": JunkEmail,
    "outbox": Outbox,
    # PIM default folders, under the well-known names the Graph stores give them
    # (graph_pim: "calendar", "contacts", "tasks"); "notes" has no Graph counterpart.
    "calendar": Calendar,
    "contacts": Contacts,
    "tasks": Tasks,
    "notes": Notes,
}

# PIM folder classes (MS-OXOSFLD PidTagContainerClass) moved as EXCHANGE_STREAM between two
# Exchange mailboxes. Exact classes only: Exchange's system folders of derived classes
# (IPF.Contact.MOC.QuickContacts, IPF.Contact.RecipientCache, IPF.Appointment.Birthday ...)
# are views the server fills itself, left out like search folders.
APPOINTMENT_FOLDER = "IPF.Appointment"
CONTACT_FOLDER = "IPF.Contact"
TASK_FOLDER = "IPF.Task"
NOTE_FOLDER = "IPF.StickyNote"
PIM_FOLDERS = frozenset({APPOINTMENT_FOLDER, CONTACT_FOLDER, TASK_FOLDER, NOTE_FOLDER})
APPOINTMENT_CLASS = "IPM.Appointment"
# item_map identity of a calendar item: its iCalendar UID (PidLidGlobalObjectId's text
# form), the same in a copy made by UploadItems, so a copy an interrupted pass left is
# adopted and a series moved between calendars is a move. Contacts, tasks and notes: their
# PidTagSearchKey (`SearchKey`), which a copy keeps too.
UID_IDENTITY = "uid:"
SEARCH_KEY_IDENTITY = "skey:"

CAPS = Capabilities(
    exports=frozenset({EXCHANGE_STREAM, MIME}),
    accepts=frozenset({EXCHANGE_STREAM, MIME}),
    cursor="sync-state",
    # PIM folders only travel as the stream (no MIME for them): `moved_classes`.
    folder_classes=frozenset({MAIL_FOLDER}) | PIM_FOLDERS,
    checkpoint_kind=CHECKPOINT_KIND,
    export_batch=EXPORT_BATCH,
    export_bytes=EXPORT_BYTES,
    imports_in_flight=IMPORTS_IN_FLIGHT,
    # MoveItem answers the moved item's new id.
    moves=True,
    # UploadItems and CreateItem (MIME and properties in one request) make the whole item
    # or nothing: an interrupted import's copy is adopted by its Message-ID.
    atomic_import=True,
    inspect_before_export=True,
)

# Amazon WorkMail: messages travel as MIME with their state, as audriga's Microsoft 365 ->
# WorkMail migration moves them. *unverified*: whether WorkMail's EWS serves ExportItems /
# UploadItems at all (AWS documents no list of the EWS operations it implements), so the
# opaque stream is neither offered nor asked of it.
WORKMAIL_CAPS = replace(
    CAPS,
    exports=frozenset({MIME}),
    accepts=frozenset({MIME}),
    folder_classes=frozenset({MAIL_FOLDER}),
)


def moved_classes(caps: Capabilities) -> frozenset[str]:
    """The folder classes a store of `caps` lists and makes: PIM folders only where items
    travel as EXCHANGE_STREAM both ways (an EWS calendar item, contact or task has no MIME
    form a store could import), else mail alone. A source listing PIM folders a MIME-only
    target cannot make has them skipped (the pass names them)."""
    if EXCHANGE_STREAM in caps.exports and EXCHANGE_STREAM in caps.accepts:
        return caps.folder_classes
    return frozenset({MAIL_FOLDER})


# -- extended properties (MS-OXPROPS) ----------------------------------------------------------


class MessageFlags(ExtendedProperty):  # type: ignore[misc]
    """PidTagMessageFlags: MSGFLAG_READ 0x1, MSGFLAG_UNSENT 0x8 (a draft). Settable only at
    creation (MS-OXCMSG 2.2.1.6): a MIME import given it without UNSENT is no draft."""

    property_tag = 0x0E07
    property_type = "Integer"


class DeliveryTime(ExtendedProperty):  # type: ignore[misc]
    property_tag = 0x0E06  # PidTagMessageDeliveryTime
    property_type = "SystemTime"


class SubmitTime(ExtendedProperty):  # type: ignore[misc]
    property_tag = 0x0039  # PidTagClientSubmitTime
    property_type = "SystemTime"


class FlagStatus(ExtendedProperty):  # type: ignore[misc]
    property_tag = 0x1090  # PidTagFlagStatus: 0 none, 1 complete, 2 flagged
    property_type = "Integer"


class LastVerb(ExtendedProperty):  # type: ignore[misc]
    property_tag = 0x1081  # PidTagLastVerbExecuted: 102 reply, 103 reply all, 104 forward
    property_type = "Integer"


class ContentType(ExtendedProperty):  # type: ignore[misc]
    """The MIME Content-Type header as the named property PS_INTERNET_HEADERS "content-type"
    (MS-OXPROPS; what graph_io reads too): shows S/MIME without reading the message."""

    distinguished_property_set_id = "InternetHeaders"
    property_name = "content-type"
    property_type = "String"


class ContentClass(ExtendedProperty):  # type: ignore[misc]
    """PS_INTERNET_HEADERS "content-class": "rpmsg.message" for IRM mail (MS-OXBBODY)."""

    distinguished_property_set_id = "InternetHeaders"
    property_name = "content-class"
    property_type = "String"


class SearchKey(ExtendedProperty):  # type: ignore[misc]
    """PidTagSearchKey (0x300B, MS-OXCPRPT 2.2.1.9): "Whenever a copy of an object is created,
    the key is also copied from the original object" — the identity of a contact, task or
    note (no Message-ID, no UID) that its ExportItems/UploadItems copy shares. *Unverified*:
    that Exchange's UploadItems (CreateNew) keeps it as a copy does (the sandbox does)."""

    property_tag = 0x300B
    property_type = "Binary"


MSGFLAG_READ = 0x1
MSGFLAG_UNSENT = 0x8
FLAG_NONE, FLAG_COMPLETE, FLAG_FLAGGED = 0, 1, 2
VERB_REPLY, VERB_REPLY_ALL, VERB_FORWARD = 102, 103, 104
_PROPS = {
    "coexist_message_flags": MessageFlags,
    "coexist_delivery_time": DeliveryTime,
    "coexist_submit_time": SubmitTime,
    "coexist_flag_status": FlagStatus,
    "coexist_last_verb": LastVerb,
    "coexist_content_type": ContentType,
    "coexist_content_class": ContentClass,
}
# exchangelib's documented way to read and write extended properties as item attributes
# ("Extended properties": `Message.register(name, cls)`); registered once per process.
for _model, _name, _cls in [
    *((Message, name, cls) for name, cls in _PROPS.items()),
    # Contacts, tasks and notes (sticky notes are t:Message items).
    (Contact, "coexist_search_key", SearchKey),
    (Task, "coexist_search_key", SearchKey),
    (Message, "coexist_search_key", SearchKey),
]:
    try:
        _model.get_field_by_fieldname(_name)
    except Exception:  # InvalidField: not registered yet
        _model.register(_name, _cls)

STATE_FIELDS = (
    "is_read",
    "importance",
    "categories",
    "datetime_received",
    "datetime_sent",
    "coexist_message_flags",
    "coexist_delivery_time",
    "coexist_submit_time",
    "coexist_flag_status",
    "coexist_last_verb",
)
INSPECT_FIELDS = ("subject", "coexist_content_type", "coexist_content_class")
CHANGE_FIELDS = ("item_class", "datetime_received", "size", "subject", "message_id")
# What SyncFolderItems asks per folder class: a calendar item's identity is its UID; a
# contact's, task's or note's its PidTagSearchKey (`SearchKey`).
PIM_DEFAULT_FIELDS = ("item_class", "datetime_received", "size", "subject")
PIM_CHANGE_FIELDS = {
    APPOINTMENT_FOLDER: (*PIM_DEFAULT_FIELDS, "uid"),
    CONTACT_FOLDER: (*PIM_DEFAULT_FIELDS, "coexist_search_key"),
    TASK_FOLDER: (*PIM_DEFAULT_FIELDS, "coexist_search_key"),
    NOTE_FOLDER: (*PIM_DEFAULT_FIELDS, "coexist_search_key"),
}


def change_fields(folder_class: str) -> tuple[str, ...]:
    """The fields a change feed of a folder of this class asks for each item."""
    if folder_class not in PIM_FOLDERS:
        return CHANGE_FIELDS
    return PIM_CHANGE_FIELDS.get(folder_class, PIM_DEFAULT_FIELDS)


class _SyncFolderItems(SyncFolderItems):  # type: ignore[misc]
    """exchangelib's SyncFolderItems, reading an error answer as the error it is.

    exchangelib 5.6 (services/sync_folder_hierarchy.py, `SyncFolder._get_element_container`)
    reads SyncState and IncludesLastItemInRange before it looks at the ResponseClass, so an
    error answer without them (messages.xsd: both minOccurs="0"; the sandbox's
    ErrorInvalidSyncStateData has neither) ends in AttributeError instead of the error. An
    error answer goes straight to the service base's parsing, which raises the
    ErrorInvalidSyncStateData (etc.) exception the store maps."""

    def _get_element_container(self, message: Any, name: Any = None) -> Any:
        if message.get("ResponseClass") != "Success":
            return EWSService._get_element_container(self, message=message, name=name)
        return super()._get_element_container(message=message, name=name)


def _parse_whole(response: Any) -> tuple[Any, Any]:
    """A SOAP answer's header and body, parsed from its bytes at once.

    exchangelib 5.6 (services/common.py `_get_soap_parts`) parses every answer with
    `to_xml(response.iter_content())`; requests' `iter_content()` steps one byte at a time
    by default (chunk_size=1), which exchangelib's `BytesGeneratorIO` joins back for lxml:
    4.8 s for an 8 MB ExportItems answer here against 0.02 s for the same bytes parsed at
    once (`to_xml` takes bytes), ~the whole client CPU of moving a mailbox of large items.
    A non-streaming answer is read whole before parsing anyway (`response.content`), so
    nothing is held longer than before. Used by the services that carry item payloads."""
    try:
        root = to_xml(response.content)
    except ParseError as e:
        raise SOAPError(f"Bad SOAP response: {e}") from e
    header = root.find(f"{{{SOAPNS}}}Header")
    body = root.find(f"{{{SOAPNS}}}Body")
    if body is None:
        raise MalformedResponseError("No Body element in SOAP response")
    return header, body


class _ExportItems(ExportItems):  # type: ignore[misc]
    """exchangelib's ExportItems, its answer parsed whole (`_parse_whole`)."""

    @classmethod
    def _get_soap_parts(cls, response: Any) -> tuple[Any, Any]:
        return _parse_whole(response)


class _GetItem(GetItem):  # type: ignore[misc]
    """exchangelib's GetItem, its answer parsed whole (`_parse_whole`): MimeContent of
    large messages (the MIME path)."""

    @classmethod
    def _get_soap_parts(cls, response: Any) -> tuple[Any, Any]:
        return _parse_whole(response)


def _get_items(account: Any, ids: list[Any], fields: list[str]) -> list[Any]:
    """GetItem of `ids` with `fields` (IdOnly shape plus them), as exchangelib's
    `Account.fetch(ids, only_fields=fields)` builds it (account.py: fields validated and
    normalised against a generic Folder, attribute fields left out), through `_GetItem`."""
    if not ids:
        return []
    folder = EwsFolder(root=account.root)
    for name in fields:
        folder.validate_item_field(field=name, version=account.version)
    additional = {f for f in folder.normalize_fields(fields=fields) if not f.field.is_attribute}
    return list(
        _GetItem(account=account).call(items=ids, additional_fields=additional, shape=ID_ONLY)
    )


# -- pure parts --------------------------------------------------------------------------------


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, EWSDateTime):
        # exchangelib's datetimes take only its own time zones: read through its format.
        value = datetime.fromisoformat(str(value.ewsformat()).replace("Z", "+00:00"))
    if isinstance(value, datetime):
        plain: datetime = value if value.tzinfo else value.replace(tzinfo=UTC)
        return plain.astimezone(UTC).isoformat()
    return str(value)


def _when(value: str | None) -> EWSDateTime | None:
    if not value:
        return None
    when = datetime.fromisoformat(value)
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return EWSDateTime.from_datetime(when.astimezone(UTC))


def message_state(item: Any) -> MessageState:
    """A message's typed state from its properties (`STATE_FIELDS`)."""
    flags = getattr(item, "coexist_message_flags", None)
    status = getattr(item, "coexist_flag_status", None)
    verb = getattr(item, "coexist_last_verb", None)
    importance = getattr(item, "importance", None)
    return MessageState(
        read=bool(getattr(item, "is_read", False)),
        draft=bool(flags is not None and int(flags) & MSGFLAG_UNSENT),
        flag={
            "flagStatus": {FLAG_FLAGGED: "flagged", FLAG_COMPLETE: "complete"}.get(
                int(status or 0), "notFlagged"
            )
        },
        categories=tuple(getattr(item, "categories", None) or ()),
        importance=str(importance).lower() if importance else None,
        received=_iso(getattr(item, "coexist_delivery_time", None))
        or _iso(getattr(item, "datetime_received", None)),
        sent=_iso(getattr(item, "coexist_submit_time", None))
        or _iso(getattr(item, "datetime_sent", None)),
        answered=verb in (VERB_REPLY, VERB_REPLY_ALL),
        forwarded=verb == VERB_FORWARD,
    )


def state_properties(state: MessageState | None, create: bool) -> dict[str, Any]:
    """The item attributes that give a copy `state`: on creation PR_MESSAGE_FLAGS (read, not
    unsent unless a draft) and the delivery/submit times too; on update only what may change."""
    state = state or MessageState()
    status = (state.flag or {}).get("flagStatus")
    out: dict[str, Any] = {
        "is_read": state.read,
        "categories": list(state.categories) or None,
        "coexist_flag_status": {"flagged": FLAG_FLAGGED, "complete": FLAG_COMPLETE}.get(
            str(status), FLAG_NONE
        ),
    }
    if state.importance in ("low", "normal", "high"):
        out["importance"] = state.importance.capitalize()
    if state.answered or state.forwarded:
        out["coexist_last_verb"] = VERB_FORWARD if state.forwarded else VERB_REPLY
    if create:
        out["coexist_message_flags"] = (MSGFLAG_READ if state.read else 0) | (
            MSGFLAG_UNSENT if state.draft else 0
        )
        if (received := _when(state.received)) is not None:
            out["coexist_delivery_time"] = received
        if (sent := _when(state.sent)) is not None:
            out["coexist_submit_time"] = sent
    return out


def is_mail_folder(folder_class: str | None) -> bool:
    """Mail folders: IPF.Note and its sub-classes, or no class (Exchange leaves some empty)."""
    return not folder_class or folder_class == MAIL_FOLDER or folder_class.startswith("IPF.Note.")


def folder_class_of(folder_class: str | None, classes: frozenset[str]) -> str | None:
    """The class a folder is moved as (None: left out): mail for mail classes (`is_mail_folder`),
    a PIM class of `classes` exactly."""
    if is_mail_folder(folder_class):
        return MAIL_FOLDER
    return folder_class if folder_class in classes else None


def folder_tree(
    root_id: str,
    listed: list[dict[str, Any]],
    well_known: dict[str, str],
    classes: frozenset[str] = frozenset({MAIL_FOLDER}),
) -> FolderTree:
    """The folders of `classes` under the IPM root, parents before children, each with its
    path; top-level distinguished folders carry their well-known name (`well_known`: id ->
    name). `listed`: {id, parent, name, folder_class, total, search}. A folder left out
    leaves out its subtree (a mail folder under a calendar is no calendar)."""
    by_parent: dict[str, list[dict[str, Any]]] = {}
    for f in listed:
        by_parent.setdefault(str(f["parent"]), []).append(f)
    out: list[Folder] = []
    queue: list[tuple[str, tuple[str, ...]]] = [(root_id, ())]
    while queue:
        parent, path = queue.pop(0)
        for f in by_parent.get(parent, []):
            cls = folder_class_of(f.get("folder_class"), classes)
            if f.get("search") or cls is None:
                continue
            here = (*path, str(f["name"]))
            wk = well_known.get(str(f["id"])) if not path else None
            out.append(Folder(str(f["id"]), here, wk, cls, int(f.get("total") or 0)))
            queue.append((str(f["id"]), here))
    return FolderTree(out, len(listed) - len(out))


def pim_identity(uid: str | None) -> str | None:
    """The item_map identity of a calendar item with this iCalendar UID."""
    return f"{UID_IDENTITY}{uid}" if uid else None


def search_key_identity(key: bytes | None) -> str | None:
    """The item_map identity of a contact, task or note with this PidTagSearchKey."""
    return f"{SEARCH_KEY_IDENTITY}{key.hex()}" if key else None


def change_of(kind: str, item: Any) -> Change | None:
    """A SyncFolderItems change as the protocol's (None: a change this store ignores)."""
    if kind == "delete":
        return Change(str(item.id), removed=True)
    if kind == "read_flag_change":
        ref, _read = item
        return Change(str(ref.id))  # its change key is unknown: the sync reads it
    received = getattr(item, "datetime_received", None)
    item_class = str(getattr(item, "item_class", None) or MAIL_CLASS)
    identity = message_identity(getattr(item, "message_id", None))
    if identity is None and item_class.startswith(APPOINTMENT_CLASS):
        identity = pim_identity(getattr(item, "uid", None))
    if identity is None:
        identity = search_key_identity(getattr(item, "coexist_search_key", None))
    return Change(
        str(item.id),
        change_key=item.changekey,
        created=_iso(received),
        size=int(getattr(item, "size", None) or 0),
        kind=item_class,
        identity=identity,
        subject=getattr(item, "subject", None),
    )


def _media_type(value: str | None) -> str:
    """The media type of a Content-Type value, lower case ("" when none)."""
    return str(value or "").split(";", 1)[0].strip().lower()


# -- the change feed ---------------------------------------------------------------------------


class SyncRound:
    """One round of SyncFolderItems from a sync state (None: the folder from the start)."""

    def __init__(self, store: EwsStore, folder: Folder, cursor: str | None) -> None:
        self.store, self.folder, self.state = store, folder, cursor

    async def pages(self) -> AsyncIterator[ChangePage]:
        state = self.state
        while True:
            changes, state, last = await self.store.sync_page(
                self.folder.id, state, self.folder.folder_class
            )
            # The state after each call is a valid cursor (Exchange's states are cumulative),
            # but the round's first full scan must end before its cursor is saved (the sync
            # forgets what a full round did not report): it is given at the end only.
            if last:
                yield ChangePage(changes, state)
                return
            yield ChangePage(changes)

    async def describe(self, new: list[Change]) -> list[Change]:
        return new  # the sync call asked for the Message-ID and subject already


# -- the store ---------------------------------------------------------------------------------


@dataclass
class _Listed:
    tree: FolderTree
    root_id: str


class EwsStore:
    """One mailbox over EWS."""

    def __init__(
        self, mailbox: EwsMailbox, *, label: str = "source", plan: WriteRecorder | None = None
    ) -> None:
        self.mailbox = mailbox
        self.label = label
        self.plan = plan
        self.user = mailbox.user
        self._well_known: dict[str, str] | None = None
        self._classes: dict[str, str] = {}  # folder id -> the class it is moved as

    @property
    def caps(self) -> Capabilities:
        """`CAPS`; MIME only on WorkMail (`WORKMAIL_CAPS`)."""
        return WORKMAIL_CAPS if self.mailbox.server.endpoint.kind == "workmail" else CAPS

    def moved_classes(self) -> frozenset[str]:
        """The folder classes this store lists and makes (`moved_classes` of its caps)."""
        return moved_classes(self.caps)

    async def _call(self, fn: Any, what: str, write: bool = False) -> Any:
        return await self.mailbox.call(fn, what, write)

    def _writing(self) -> None:
        before_write()
        self.mailbox.server.writes += 1

    def _record(self, operation: str, **params: Any) -> None:
        if self.plan is not None:
            self.plan.record("ews", self.label, f"{operation} {self.user}", params)

    # -- folders -----------------------------------------------------------------------------
    async def _well_known_ids(self) -> dict[str, str]:
        if self._well_known is None:

            def read(account: Any) -> dict[str, str]:
                # One GetFolder naming every distinguished folder (answered per folder, in
                # order), not one request each: under a spent throttling budget a call of
                # ten requests is refused somewhere in the middle and re-sent whole, and
                # can lose that race for ever (tenants/ews_governor.py).
                names = list(WELL_KNOWN)
                wanted = [
                    WELL_KNOWN[name](
                        _distinguished_id=DistinguishedFolderId(
                            id=WELL_KNOWN[name].DISTINGUISHED_FOLDER_ID,
                            mailbox=Mailbox(email_address=account.primary_smtp_address),
                        ),
                        root=account.root,
                    )
                    for name in names
                ]
                out: dict[str, str] = {}
                answers = FolderCollection(account=account, folders=wanted).resolve()
                for name, answer in zip(names, answers, strict=True):
                    if isinstance(answer, Exception):  # a default folder this mailbox lacks
                        if _is_access_error(answer):
                            raise answer
                        log.debug("no %s folder for %s: %s", name, account, answer)
                        continue
                    out[str(answer.id)] = name
                return out

            self._well_known = await self._call(read, "GetFolder (distinguished folders)")
        return self._well_known

    async def list_folders(self) -> FolderTree:
        def read(account: Any) -> tuple[str, list[dict[str, Any]]]:
            root = account.msg_folder_root
            listed = []
            for f in FolderCollection(account=account, folders=[root]).find_folders(depth="Deep"):
                if isinstance(f, Exception):
                    raise f
                listed.append(
                    {
                        "id": f.id,
                        "parent": f.parent_folder_id.id if f.parent_folder_id else root.id,
                        "name": f.name,
                        "folder_class": f.folder_class,
                        "total": f.total_count,
                        "search": type(f).__name__ == "SearchFolder",
                    }
                )
            return str(root.id), listed

        well_known = await self._well_known_ids()
        root_id, listed = await self._call(read, "FindFolder")
        self._root_id = root_id
        classes = self.moved_classes()
        tree = folder_tree(root_id, listed, well_known, classes)
        mine = [f for f in tree.folders if f.folder_class in classes]
        self._classes.update((f.id, f.folder_class) for f in mine)
        return FolderTree(mine, len(listed) - len(mine))

    async def create_folder(
        self, parent: Folder | None, name: str, path: tuple[str, ...], folder_class: str
    ) -> Folder | None:
        """CreateFolder of `folder_class` (mail, or a PIM class where the store moves them:
        `moved_classes`) under `parent` or the IPM root; an existing folder of that name
        (ErrorFolderExists: an earlier pass made it) is found and used. None: this store does
        not hold that class, or not there (Exchange makes a calendar only under a folder of
        its class or the root: ErrorInvalidFolderTypeForOperation)."""
        if folder_class not in self.moved_classes():
            return None
        if parent is not None and folder_class != parent.folder_class:
            return None
        if self.plan is not None or (parent is not None and parent.id.startswith(PLANNED)):
            self._record("CreateFolder", folder="/".join(path), folder_class=folder_class)
            return Folder(f"{PLANNED}{'/'.join(path)}", path, None, folder_class, 0)
        parent_id = parent.id if parent else None

        def make(account: Any) -> str:
            above = _folder(account, parent_id) if parent_id else account.msg_folder_root
            for child in FolderCollection(account=account, folders=[above]).find_folders():
                if (
                    not isinstance(child, Exception)
                    and str(child.name).casefold() == name.casefold()
                ):
                    return str(child.id)
            made = EwsFolder(parent=above, name=name, folder_class=folder_class)
            made.save()
            return str(made.id)

        self._writing()
        made_id = await self._call(make, f"CreateFolder {name!r}", write=True)
        self._classes[made_id] = folder_class
        return Folder(made_id, path, None, folder_class, 0)

    # -- changes -----------------------------------------------------------------------------
    def changes(self, folder: Folder, cursor: str | None) -> SyncRound:
        return SyncRound(self, folder, cursor)

    def cursor_lost(self, exc: RemoteError) -> bool:
        return sync_state_lost(exc)

    async def sync_page(
        self, folder_id: str, state: str | None, folder_class: str = MAIL_FOLDER
    ) -> tuple[list[Change], str, bool]:
        """One SyncFolderItems call: its changes, the new sync state, whether it was the last."""
        wanted = change_fields(folder_class)

        def read(account: Any) -> tuple[list[Change], str, bool]:
            folder = _folder(account, folder_id)
            fields = {f for f in folder.normalize_fields(fields=wanted)}
            svc = _SyncFolderItems(account=account)
            out: list[Change] = []
            for kind, item in svc.call(
                folder=folder,
                shape="IdOnly",
                additional_fields=fields,
                sync_state=state,
                ignore=None,
                max_changes_returned=SYNC_PAGE,
                sync_scope=None,
            ):
                if isinstance(item, Exception):
                    raise item
                change = change_of(kind, item)
                if change is not None:
                    out.append(change)
            return out, str(svc.sync_state), bool(svc.includes_last_item_in_range)

        got: tuple[list[Change], str, bool] = await self._call(read, "SyncFolderItems")
        return got

    # -- reading -----------------------------------------------------------------------------
    async def _fetch(self, refs: list[ItemRef], fields: Iterable[str], what: str) -> list[Any]:
        ids = [(r.item_id, r.change_key) if r.change_key else (r.item_id, None) for r in refs]

        def read(account: Any) -> list[Any]:
            got = _get_items(account, [ItemId(i, None) for i, _ in ids], list(fields))
            return _items(got)

        found: list[Any] = await self._call(read, what)
        return found

    async def inspect(self, refs: list[ItemRef]) -> dict[str, ItemInfo]:
        """Subject and the MIME content type and class (named properties: the message is
        not read)."""
        out: dict[str, ItemInfo] = {}
        for item in await self._fetch(refs, INSPECT_FIELDS, "GetItem"):
            out[str(item.id)] = ItemInfo(
                item.subject,
                _media_type(getattr(item, "coexist_content_type", None)),
                str(getattr(item, "coexist_content_class", None) or "").lower(),
            )
        return out

    async def export(
        self, refs: list[ItemRef], fmt: str, state_only: bool = False
    ) -> dict[str, Payload]:
        """ExportItems (EXCHANGE_STREAM, whole item always) or GetItem (MIME and state;
        `state_only`: the state alone). An item gone since its scan is left out.

        Plan mode: no content is read. A planned import writes nothing, and what the plan
        says of an item (its folder, its size, the skip rules) comes from the scan and
        `inspect`: an item's stream or MIME is the pass's largest read, wasted on a plan.
        The payload is empty (a stream) or the state alone (MIME)."""
        if self.plan is not None and fmt == EXCHANGE_STREAM:
            keys = await self.change_keys(refs)  # GetItem IdOnly: gone items left out
            return {
                r.item_id: Payload(EXCHANGE_STREAM, "", keys[r.item_id], source_id=r.item_id)
                for r in refs
                if r.item_id in keys
            }
        if self.plan is not None:
            state_only = True
        if fmt == EXCHANGE_STREAM:
            return await self._export_stream(refs)
        if fmt != MIME:
            raise InvalidRequest(f"an EWS store cannot export {fmt!r}", service=SERVICE)
        fields = STATE_FIELDS if state_only else ("mime_content", *STATE_FIELDS)
        out: dict[str, Payload] = {}
        for item in await self._fetch(refs, fields, "GetItem"):
            mime = b"" if state_only else bytes(item.mime_content or b"")
            out[str(item.id)] = Payload(
                fmt=MIME,
                data="",
                change_key=item.changekey,
                mime=mime,
                state=message_state(item),
                source_id=str(item.id),
            )
        return out

    async def _export_stream(self, refs: list[ItemRef]) -> dict[str, Payload]:
        def read(account: Any) -> list[Any]:
            ids = [ItemId(r.item_id, r.change_key) for r in refs]
            got = _ExportItems(account=account, chunk_size=EXPORT_BATCH).call(items=ids)
            return [_answer(b, gone_ok=True) for b in got]

        blobs = await self._call(read, "ExportItems")
        # The change key the scan saw stands for the exported version (ExportItems answers
        # none); only refs without one are read.
        unknown = [r for r in refs if not r.change_key]
        keys = await self.change_keys(unknown) if unknown else {}
        out: dict[str, Payload] = {}
        for r, blob in zip(refs, blobs, strict=True):
            if blob is None:  # gone since the scan
                continue
            out[r.item_id] = Payload(
                EXCHANGE_STREAM, str(blob), keys.get(r.item_id, r.change_key), source_id=r.item_id
            )
        return out

    async def change_keys(self, refs: list[ItemRef]) -> dict[str, str]:
        return {
            str(i.id): str(i.changekey)
            for i in await self._fetch(refs, ("item_class",), "GetItem")
            if i.changekey
        }

    async def copies(self, folder_id: str, exclude: set[str]) -> dict[str, list[ItemRef]]:
        """The folder's messages by Message-ID, its calendar items by UID, its contacts,
        tasks and notes by PidTagSearchKey (FindItem), but those in `exclude`."""
        if folder_id.startswith(PLANNED):
            return {}
        cls = self._classes.get(folder_id, MAIL_FOLDER)
        pick: dict[str, tuple[str, Callable[[Any], str | None]]] = {
            APPOINTMENT_FOLDER: ("uid", pim_identity),
            CONTACT_FOLDER: ("coexist_search_key", search_key_identity),
            TASK_FOLDER: ("coexist_search_key", search_key_identity),
            NOTE_FOLDER: ("coexist_search_key", search_key_identity),
        }
        field, identity = pick.get(cls, ("message_id", message_identity))

        def read(account: Any) -> list[tuple[str, str, str | None]]:
            folder = _folder(account, folder_id)
            return [
                (str(i.id), str(i.changekey), getattr(i, field, None))
                for i in folder.all().only(field)
                if not isinstance(i, Exception)
            ]

        out: dict[str, list[ItemRef]] = {}
        for item_id, key, mid in await self._call(read, "FindItem"):
            ident = identity(mid)
            if ident is not None and item_id not in exclude:
                out.setdefault(ident, []).append(ItemRef(folder_id, item_id, key))
        return out

    async def copies_of(
        self, folder_id: str, source_id: str, identity: str | None, exclude: set[str]
    ) -> list[ItemRef]:
        if identity is None:
            return []
        return (await self.copies(folder_id, exclude)).get(identity, [])

    async def totals(self) -> dict[str, int]:
        return {f.id: f.total for f in (await self.list_folders()).folders}

    # -- writing -----------------------------------------------------------------------------
    async def import_item(
        self, folder_id: str, payload: Payload, replace: ItemRef | None = None
    ) -> Imported:
        if payload.fmt == EXCHANGE_STREAM:
            return await self._upload(folder_id, payload, replace)
        if payload.fmt != MIME:
            raise InvalidRequest(f"an EWS store cannot import {payload.fmt!r}", service=SERVICE)
        if replace is not None:
            return await self._set_state(replace, payload.state)
        if self.plan is not None or folder_id.startswith(PLANNED):
            self._record("CreateItem", folder=folder_id, bytes=len(payload.mime))
            return Imported(None, None)
        props = state_properties(payload.state, create=True)
        mime = payload.mime

        def create(account: Any) -> tuple[str, str]:
            folder = _folder(account, folder_id)
            made = Message(account=account, folder=folder, mime_content=mime, **props)
            made.save()  # CreateItem, MessageDisposition SaveOnly
            return str(made.id), str(made.changekey)

        self._writing()
        made_id, key = await self._call(create, "CreateItem", write=True)
        return Imported(made_id, key)

    async def _upload(self, folder_id: str, payload: Payload, replace: ItemRef | None) -> Imported:
        if self.plan is not None or folder_id.startswith(PLANNED):
            self._record("UploadItems", folder=folder_id, bytes=len(payload.data) * 3 // 4,
                         mode="Update" if replace else "CreateNew")  # fmt: skip
            return Imported(None, None)
        data = payload.data

        def upload(account: Any) -> Any:
            target = FolderId(folder_id)
            entry = (ItemId(replace.item_id, replace.change_key), False, data) if replace else data
            [answer] = account.upload([(target, entry)])
            return _answer(answer)

        self._writing()
        made_id, key = await self._call(upload, "UploadItems", write=True)
        return Imported(str(made_id), str(key) if key else None)

    async def _set_state(self, ref: ItemRef, state: MessageState | None) -> Imported:
        props = state_properties(state, create=False)
        if self.plan is not None:
            self._record("UpdateItem", item=ref.item_id, fields=sorted(props))
            return Imported(ref.item_id, ref.change_key)

        def update(account: Any) -> tuple[str, str]:
            [item] = list(
                account.fetch(ids=[ItemId(ref.item_id, None)], only_fields=["item_class"])
            )
            item = _answer(item)
            for name, value in props.items():
                setattr(item, name, value)
            item.save(update_fields=list(props))
            return str(item.id), str(item.changekey)

        self._writing()
        made_id, key = await self._call(update, "UpdateItem", write=True)
        return Imported(made_id, key)

    def update_refused(self, exc: RemoteError) -> bool:
        return isinstance(exc, NotFound) or exc.code in ("ErrorIrresolvableConflict",
                                                         "ErrorInvalidChangeKey")  # fmt: skip

    async def move(self, ref: ItemRef, folder_id: str) -> Imported:
        if self.plan is not None or folder_id.startswith(PLANNED):
            self._record("MoveItem", item=ref.item_id, to=folder_id)
            return Imported(None, None)

        def move(account: Any) -> Any:
            [answer] = account.bulk_move(
                ids=[ItemId(ref.item_id, None)], to_folder=FolderId(folder_id)
            )
            return _answer(answer)

        self._writing()
        answer = await self._call(move, "MoveItem", write=True)
        new_id, key = answer if isinstance(answer, tuple) else (answer.id, answer.changekey)
        return Imported(str(new_id), str(key) if key else None)

    async def delete(self, ref: ItemRef) -> None:
        if self.plan is not None:
            self._record("DeleteItem", item=ref.item_id, type=SOFT_DELETE)
            return

        def delete(account: Any) -> Any:
            [answer] = account.bulk_delete(ids=[ItemId(ref.item_id, None)], delete_type=SOFT_DELETE)
            return _answer(answer)

        self._writing()
        await self._call(delete, "DeleteItem", write=True)


def _folder(account: Any, folder_id: str) -> Any:
    """A folder object of `account` by id, for exchangelib's calls. It needs its root (the
    mailbox's) only to build requests; exchangelib fetches that once per account."""
    return EwsFolder(root=account.root, id=folder_id, changekey=None)


def _is_access_error(exc: BaseException) -> bool:
    name = type(exc).__name__
    return name in (
        "ErrorAccessDenied",
        "ErrorImpersonateUserDenied",
        "ErrorImpersonationDenied",
        "ErrorNonExistentMailbox",
        "UnauthorizedError",
        "ErrorServerBusy",
    )


# Per-item answers exchangelib hands back as exception objects (not raised) that mean the
# item is not there (any more): such an item is left out of a read.
GONE = ("ErrorItemNotFound", "ErrorInvalidIdMalformed", "ErrorInvalidIdNotAnItemAttachmentId")


def _answer(answer: Any, gone_ok: bool = False) -> Any:
    """One per-item answer of a bulk call (run in the worker thread): the value, None for a
    gone item where `gone_ok`, else the error raised, so `EwsServer.call` maps it (NotFound,
    InvalidRequest for ErrorMessageSizeExceeded ...) and retries ErrorServerBusy."""
    if isinstance(answer, Exception):
        if gone_ok and type(answer).__name__ in GONE:
            return None
        raise answer
    return answer


def _items(answers: Iterable[Any]) -> list[Any]:
    """The items of a GetItem answer, gone ones left out, any other error raised."""
    return [a for a in (_answer(x, gone_ok=True) for x in answers) if a is not None]


# -- movers ------------------------------------------------------------------------------------

EWS_SYNC, GRAPH_EWS, EWS_GRAPH = "ews-sync", "graph-ews", "ews-graph"
# What these movers leave behind (said in each pass's detail): the store is mail first.
EWS_MAIL_ONLY = "mail only: contacts, calendars and tasks are not moved by this version's EWS store"
# Exchange <-> Exchange: every folder class the store moves travels as the stream.
EWS_PIM = "mail, calendars, contacts, tasks and notes as Exchange's full-fidelity stream"
# With WorkMail on either side items travel as MIME: PIM folders are skipped (named).
EWS_MIME_MAIL_ONLY = (
    "mail only: contacts, calendars, tasks and notes move only between Exchange mailboxes"
    " (WorkMail takes mail as MIME)"
)


def mailbox_address(ctx: Context, side: str, subject: str) -> str:
    """The SMTP address of `subject`'s mailbox on an EWS side: the batch file's source
    address (source), its destination address, else the source's (target)."""
    item = ctx.journal.get_item("user", subject) or {}
    source = str(item.get("source_address") or subject)
    if side == "target":
        return str(item.get("target_address") or source)
    return source


@asynccontextmanager
async def ews_store(ctx: Context, side_label: str, subject: str) -> AsyncIterator[EwsStore]:
    """`subject`'s mailbox on the EWS side `side_label`, within the server's bound of
    mailboxes open at once; writes recorded, not sent, in plan mode."""
    side = ctx.side(side_label)
    server = side.store
    if not isinstance(server, EwsServer):
        raise capability_missing(side_label, side.kind, "EWS store", None)
    async with server.mailbox(mailbox_address(ctx, side_label, subject)) as mailbox:
        yield EwsStore(mailbox, label=side_label, plan=ctx.plan)


@asynccontextmanager
async def open_ews_pair(
    ctx: Context, subject: str
) -> AsyncIterator[tuple[MailboxStore, MailboxStore]]:
    """Exchange/WorkMail -> Exchange/WorkMail: both mailboxes over EWS."""
    async with ews_store(ctx, "source", subject) as src, ews_store(ctx, "target", subject) as tgt:
        yield src, tgt


@asynccontextmanager
async def open_graph_to_ews(
    ctx: Context, subject: str
) -> AsyncIterator[tuple[MailboxStore, MailboxStore]]:
    """Microsoft 365 -> Exchange/WorkMail: the source's mail through Graph's mail API (MIME
    and typed state), the target over EWS."""
    from coexist.migrate.stores.graph import Box
    from coexist.migrate.stores.graph_items import GraphItemsStore

    async with ews_store(ctx, "target", subject) as tgt:
        yield GraphItemsStore(Box(ctx.source.graph, subject, ""), ctx.planning), tgt


@asynccontextmanager
async def open_ews_to_graph(
    ctx: Context, subject: str
) -> AsyncIterator[tuple[MailboxStore, MailboxStore]]:
    """Exchange/WorkMail -> Microsoft 365: the source over EWS, the target's mail through
    Graph's mail API (messages made from the MIME as non-drafts with their state)."""
    from coexist.migrate.imap_graph import target_mailbox
    from coexist.migrate.stores.graph import Box
    from coexist.migrate.stores.graph_items import GraphItemsStore

    mailbox = target_mailbox(ctx, subject)
    async with ews_store(ctx, "source", subject) as src:
        yield src, GraphItemsStore(Box(ctx.target.graph, mailbox, ""))


class EwsSyncMover:
    """`ews-sync`: a `StoreMover` over two EWS stores whose pass detail says what it moves:
    PIM folders too between two Exchange sides (the stream), mail only with WorkMail."""

    def __init__(self) -> None:
        self.mover = StoreMover(open_ews_pair)

    async def run(self, ctx: Context, subject: str, kind: str, window: Window) -> PassResult:
        result = await self.mover.run(ctx, subject, kind, window)
        both = {ctx.side("source").kind, ctx.side("target").kind} == {"exchange"}
        return replace(result, detail=f"{result.detail}; {EWS_PIM if both else EWS_MIME_MAIL_ONLY}")


def _register() -> None:
    from coexist.migrate.imap_graph import MailOnlyMover

    MOVERS[EWS_SYNC] = EwsSyncMover()
    # graph-ews (mail and PIM) is registered by ews_pim, imported below.
    MOVERS[EWS_GRAPH] = MailOnlyMover(open_ews_to_graph, EWS_MAIL_ONLY)


_register()

# The PIM half (Graph contacts/events/tasks into EWS) and the graph-ews mover; imported last
# so that either module may be imported first.
from coexist.migrate.stores import ews_pim as ews_pim  # noqa: E402
