"""The mail API store: Microsoft Graph's mail API as a MailboxStore (mail only).

For tenants where the mailbox import/export API (`stores.graph_io`) is not available; the
`graph-items` mover (`migrate.items`) is the sync algorithm (`migrate.sync`) between two of
these stores, plus its own copy of contacts, calendars and To Do lists.

- Folders: `mailFolders` and their `childFolders`, top-level well-known ones named by GET per
  name (resources/mailfolder has no well-known name property in v1.0); search folders
  (`mailSearchFolder`) are never listed.
- Changes: `mailFolders/{id}/messages/delta` from the saved deltaLink, without `$filter` (a
  filtered message delta returns at most 5,000 messages and then never reports the rest,
  delta-query-messages). When the service has forgotten the sync state (410,
  `SyncStateNotFound`, `SyncStateInvalid`, `resyncRequired`: delta-query-overview,
  "Synchronization reset" and "Token duration"; graph/errors) the round starts over.
- Export (format MIME): the message's MIME (`$value`) plus the state MIME does not carry
  (isRead, isDraft, flag, categories, importance, dates), one message per read; an update
  reads the state only.
- Import: ONE JSON create that carries the MIME-derived content and
  `singleValueExtendedProperties`:
  - `Integer 0x0E07` PR_MESSAGE_FLAGS without MSGFLAG_UNSENT: not a draft, read bit kept.
    A MIME create always makes a draft (user-post-messages: "Create a draft of a new
    message in either JSON or MIME format"), and the flag cannot be cleared later
    (MS-OXCMSG 2.2.1.6: "After the first successful call to RopSaveChangesMessage ... these
    flags are read-only for the client"), so MIME create + PATCH cannot be faithful.
    Extended properties may be given in the create request itself
    (singlevaluelegacyextendedproperty-post-singlevalueextendedproperties: "use the same
    REST request as creating the instance, and include ... extended property").
  - `SystemTime 0x0E06` PR_MESSAGE_DELIVERY_TIME and `SystemTime 0x0039`
    PR_CLIENT_SUBMIT_TIME: receivedDateTime / sentDateTime are read-only in Graph.
  - `Integer 0x0036` PR_SENSITIVITY from the MIME `Sensitivity` header (RFC 2156).
  - `Integer 0x1081` PidTagLastVerbExecuted and `Integer 0x1080` PidTagIconIndex for a
    message the user replied to or forwarded (IMAP \\Answered, $Forwarded): see "Replied
    and forwarded" below, where what Microsoft does not document is listed.
  - IDENTITY_PROP: the source message's id (the copy's stamp, see `our_copies`).
  The importance is the state's, else what the MIME Importance / X-Priority headers give
  (`mime_headers`, MS-OXCMAIL 2.2.3.2.5), else left to Exchange (normal).
  Attachments ride in the create while the request stays under Graph's 4 MB; the rest are
  POSTed one by one (< 3 MB) or sent through an upload session (3..150 MB,
  outlook-large-attachments). So an import is several requests (`caps.atomic_import` is
  False): a copy an interrupted pass left may lack attachments, and is deleted and made again.
- Update (`import_item(replace=...)`): isRead/flag/categories PATCHed onto the copy, the
  importance only where the state knows it (an IMAP update reads the flags alone: its
  importance is None, and a High copy stays High), the replied/forwarded state only where
  the source has it (never cleared).
- Moves (`caps.moves`): `messages/{id}/move` (message-move).
"""

from __future__ import annotations

import base64
import contextlib
import email
import email.policy
import json
import logging
import mimetypes
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage, Message
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

from coexist.errors import (
    AuthenticationError,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RemoteError,
    TransientError,
)
from coexist.migrate.stores.graph import MAIL_WELL_KNOWN, Box, sync_state_lost
from coexist.migrate.stores.mime_headers import importance_of
from coexist.migrate.sync import message_id_of, message_identity
from coexist.tenants.graph import GraphAdapter
from coexist.tenants.protocols import (
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
    MessageState,
    Payload,
)

log = logging.getLogger(__name__)

CHECKPOINT_KIND = "mail-messages"  # folder_state kind of the mail API's message delta
DELTA_PAGE = 100  # Prefer: odata.maxpagesize (graph/delta-query-messages)
# What the scan asks of each message (message-delta supports $select).
DELTA_SELECT = "subject,receivedDateTime,createdDateTime,changeKey,internetMessageId"

# The copy's identity (see the module docstring). A named property in coexist's own property
# set (extended-properties-overview: "String {guid} Name name" for custom properties).
IDENTITY_PROP = "String {5b1c2a8e-7f3d-4c61-9a0e-c0e715e0ce11} Name coexistSourceId"
STATE_SELECT = "isRead,isDraft,flag,categories,importance,receivedDateTime,sentDateTime,changeKey"
# A planned export reads no MIME (a plan of a 50 GB mailbox must not download 50 GB): what
# the skip rules and the plan need of a message comes with its state in one GET.
# - `internetMessageHeaders` (resources/message: "A collection of message headers defined by
#   RFC5322 ... Returned only on applying a $select query option"): its Content-Type and
#   Content-Class headers show S/MIME and IRM mail as the MIME's do (`mime_info`).
# - PidTagMessageSize (MS-OXPROPS 2.797, `Integer 0x0E08`, read as an extended property,
#   singlevaluelegacyextendedproperty-get): "the approximate number of bytes that are
#   transferred when the message is moved" (MAPI PidTagMessageSize canonical property). The
#   plan's bytes are Exchange's sizes, not the MIME lengths the real pass counts.
MESSAGE_SIZE_PROP = "Integer 0x0E08"
PLAN_SELECT = f"{STATE_SELECT},internetMessageHeaders"

# Requests carry at most 4 MB ("The maximum request length supported is 4MB.",
# microsoft-graph-docs#11806); base64 grows 4/3, and the JSON around it needs room.
MAX_REQUEST = 4 * 1024 * 1024
REQUEST_MARGIN = 64 * 1024
# outlook-large-attachments: "If the file size is under 3 MB, do a single POST on the
# attachments navigation property ... between 3 MB and 150 MB, create an upload session".
UPLOAD_SESSION_MIN = 3 * 1024 * 1024
# Upload-session ranges: each PUT under 4 MB; a multiple of 320 KiB as the upload-session
# docs recommend for range sizes.
UPLOAD_CHUNK = 12 * 320 * 1024

# PR_MESSAGE_FLAGS bits (MS-OXCMSG 2.2.1.6).
MSGFLAG_READ = 0x1
MSGFLAG_UNSENT = 0x8
# PidTagSensitivity (MS-OXCMSG 2.2.1.13) from the MIME Sensitivity header (RFC 2156).
SENSITIVITY = {"personal": 1, "private": 2, "company-confidential": 3}

# -- Replied and forwarded ------------------------------------------------------------------------
# How Outlook shows "You replied to / forwarded this message": two MAPI properties, set
# through `singleValueExtendedProperties` in the create request and in an update's PATCH.
# Documented:
# - Graph v1.0 CSDL: message.singleValueExtendedProperties, a contained collection of
#   singleValueLegacyExtendedProperty (id, value: Edm.String), not navigable on its own;
#   the tagged-property id is "{type} {proptag}" (extended-properties-overview, as
#   `Integer 0x0E07` above); a create or PATCH may carry them
#   (singlevaluelegacyextendedproperty-post-singlevalueextendedproperties).
# - PidTagLastVerbExecuted: tag 0x1081, PT_LONG (Outlook MAPI reference; MS-OXPROPS).
#   PidTagIconIndex: 0x1080, PtypInteger32 (MS-OXPROPS 2.738; defined in MS-OXOMSG
#   2.2.1.10), "Replied mail 0x00000105", "Forwarded mail 0x00000106", and "a hint to the
#   client. The client may ignore the value of this property" (Outlook MAPI reference).
# *unverified* (the one list of what Microsoft does not document here):
# 1. The values of 0x1081. The Outlook MAPI reference page of PidTagLastVerbExecuted lists
#    the icon-index numbers (Replied mail 0x105, Forwarded mail 0x106); the NOTEIVERB_*
#    values of MS-OXOMSG are REPLYTOSENDER 102, REPLYTOALL 103, FORWARD 104 (MS-OXOMSG was
#    not read in this session; MS-ASEMAIL 2.2.2.44 has the same three verbs for ActiveSync).
#    102 / 104 is what the IMAP gateways over Exchange write and read (DavMail: 102 +
#    icon 261, 104 + icon 262; the Kopano/Zarafa gateway: NOTEIVERB_REPLYTOSENDER /
#    NOTEIVERB_FORWARD with ICON_MAIL_REPLIED / ICON_MAIL_FORWARDED): coexist writes those.
# 2. That Exchange Online lets a Graph create or PATCH set 0x1080 / 0x1081 (no page says
#    they are read-only; third-party Graph clients PATCH them, e.g. cloud_mdir_sync), and
#    that Outlook then shows the replied / forwarded state from them.
# 3. PidTagLastVerbExecutionTime (0x1082, when the verb was done) is not set: an IMAP
#    source does not know when the reply was sent, and the copy time would be false. What
#    Outlook shows for a verb without a time is not documented.
# 4. One last verb only: a message both \\Answered and $Forwarded shows "replied".
# 5. PidTagMessageStatus MSGSTATUS_ANSWERED (0x0E17) is not set: a client sets it with
#    RopSetMessageStatus (MS-OXCMSG), which Graph does not offer. Whether Exchange Online's
#    own IMAP service shows \\Answered from it rather than from 0x1081 (cloud_mdir_sync's
#    notes say so) is not documented.
# Whatever the answer to 2, nothing is lost: a create or PATCH refused with these
# properties is sent again without them (the copy lands, the update applies), the message
# is logged as not carrying its state, and this store leaves them out from then on; a
# server that ignores them is found by reading the first copy made with them back once per
# store (`GraphItemsStore._check_verbs_kept`): logged, and left out from then on.
LAST_VERB = "Integer 0x1081"  # PidTagLastVerbExecuted
ICON_INDEX = "Integer 0x1080"  # PidTagIconIndex
NOTEIVERB_REPLYTOSENDER = 102
NOTEIVERB_FORWARD = 104
ICON_MAIL_REPLIED = 0x105
ICON_MAIL_FORWARDED = 0x106
VERB_PROPS = (LAST_VERB, ICON_INDEX)
COPIES_IN_FLIGHT = 4  # graph/throttling-limits: 4 concurrent requests per app per mailbox

# What this data plane can do. Mail travels as MIME plus the state MIME lacks, one message
# per read (so the skip rules read the exported MIME: `inspect_before_export` is False).
CAPS = Capabilities(
    exports=frozenset({MIME}),
    accepts=frozenset({MIME}),
    cursor="delta-token",
    folder_classes=frozenset({MAIL_FOLDER, "IPF.Contact", "IPF.Appointment", "IPF.Task"}),
    checkpoint_kind=CHECKPOINT_KIND,
    export_batch=1,
    export_bytes=MAX_REQUEST,
    imports_in_flight=COPIES_IN_FLIGHT,
    moves=True,
    atomic_import=False,
    inspect_before_export=False,
)


# -- mail folders over the mail API ---------------------------------------------------------------


async def mail_tree(graph: GraphAdapter, user_id: str) -> list[Folder]:
    """Every mail folder, parents before children; top-level well-known ones named.

    resources/mailfolder has no well-known name property in v1.0: a folder is well known when
    `mailFolders/{name}` answers with its id.
    """
    known: dict[str, str] = {}
    for name in MAIL_WELL_KNOWN:
        with contextlib.suppress(NotFound):
            data = await graph.send("GET", f"users/{user_id}/mailFolders/{name}")
            known[str(data["id"])] = name
    out: list[Folder] = []
    queue: list[tuple[dict[str, Any], tuple[str, ...]]] = [
        (f, ()) for f in await graph.list_all(f"users/{user_id}/mailFolders", {"$top": 100})
    ]
    while queue:
        raw, parent = queue.pop(0)
        if is_search_folder(raw):
            continue  # a view of messages other folders hold: never copied, nor copied into
        path = (*parent, str(raw["displayName"]))
        fid = str(raw["id"])
        out.append(
            Folder(fid, path, known.get(fid) if not parent else None, MAIL_FOLDER, _total(raw))
        )
        if raw.get("childFolderCount"):
            children = await graph.list_all(
                f"users/{user_id}/mailFolders/{fid}/childFolders", {"$top": 100}
            )
            queue += [(c, path) for c in children]
    return out


def is_search_folder(raw: dict[str, Any]) -> bool:
    """A mailSearchFolder (resources/mailsearchfolder: a derived type of mailFolder, which a
    folder listing names in `@odata.type`); it may sit under any folder (mailsearchfolder-post)."""
    return str(raw.get("@odata.type") or "").lower().endswith("mailsearchfolder")


def _total(raw: dict[str, Any]) -> int:
    return int(raw.get("totalItemCount") or 0)


# This mover creates folders through the Graph API of each class (its ids are those
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


async def create_folder(
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


# -- scan (message delta -> item_map) --------------------------------------------------------------


class MailDelta:
    """The mail API's message delta of one mailbox as the sync algorithm's change feed
    (`sync.scan_folder`): `mailFolders/{id}/messages/delta` from the saved deltaLink, without
    `$filter` (a filtered message delta returns at most 5,000 messages and then never reports
    the rest, delta-query-messages). When the service has forgotten the sync state (410,
    `SyncStateNotFound`, `SyncStateInvalid`, `resyncRequired`: delta-query-overview,
    "Synchronization reset" and "Token duration"; graph/errors) the round starts over."""

    caps = CAPS

    def __init__(self, box: Box) -> None:
        self.box = box

    def changes(self, folder: Folder, cursor: str | None) -> MailDeltaRound:
        first = (
            f"users/{self.box.user_id}/mailFolders/{folder.id}/messages/delta"
            f"?$select={DELTA_SELECT}"
        )
        return MailDeltaRound(self.box, cursor or first)

    def cursor_lost(self, exc: RemoteError) -> bool:
        return sync_state_lost(exc)


class MailDeltaRound:
    """One round of a folder's message delta; each message comes with its identity (its
    Internet Message-ID) and subject, so `describe` has nothing to add."""

    def __init__(self, box: Box, link: str) -> None:
        self.box, self.link = box, link

    async def pages(self) -> AsyncIterator[ChangePage]:
        headers = {"Prefer": f"odata.maxpagesize={DELTA_PAGE}"}
        async for values, delta in self.box.graph.delta_pages(self.link, headers):
            yield ChangePage([_change(v) for v in values], delta)

    async def describe(self, new: list[Change]) -> list[Change]:
        return new


def _change(v: dict[str, Any]) -> Change:
    """A message delta entry as the sync algorithm's Change, with its identity."""
    if "@removed" in v:
        return Change(str(v["id"]), removed=True)
    return Change(
        str(v["id"]),
        change_key=v.get("changeKey"),
        # The window goes by delivery time (createdDateTime of a copied or moved message is
        # when it was made, not when it arrived).
        created=v.get("receivedDateTime") or v.get("createdDateTime"),
        size=int(v.get("size") or 0),
        kind=v.get("type") or MAIL_CLASS,
        identity=message_identity(v.get("internetMessageId")),
        subject=v.get("subject"),
    )


# -- MIME -> JSON create -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One attachment of a message, as Graph's fileAttachment needs it."""

    name: str
    content_type: str
    data: bytes
    is_inline: bool
    content_id: str | None

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "@odata.type": "#microsoft.graph.fileAttachment",
            "name": self.name,
            "contentType": self.content_type,
            "isInline": self.is_inline,
            "contentBytes": base64.b64encode(self.data).decode(),
        }
        if self.content_id:
            out["contentId"] = self.content_id
        return out


def parse_mime(mime: bytes) -> EmailMessage:
    msg = email.message_from_bytes(mime, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def mime_info(mime: bytes) -> ItemInfo:
    """What the skip rules read of a message's MIME: its top-level Content-Type and
    Content-Class (IRM mail is "rpmsg.message" there, its top type multipart: MS-OXBBODY
    2.1.3.4), lower case."""
    msg = parse_mime(mime)
    return ItemInfo(
        content_type=str(msg.get("Content-Type", "")).lower(),
        content_class=str(msg.get("Content-Class", "")).lower(),
    )


def header_info(headers: Any) -> ItemInfo | None:
    """`mime_info` from a message's `internetMessageHeaders` (name/value pairs,
    resources/internetmessageheader), each header parsed as the MIME's is (the same email
    policy: unfolded, parameters normalized); None when the headers carry no Content-Type."""
    found: dict[str, str] = {}
    for h in headers if isinstance(headers, list) else []:
        name = str(h.get("name", "")).title() if isinstance(h, dict) else ""
        if name in ("Content-Type", "Content-Class") and name not in found:
            value = email.policy.default.header_fetch_parse(name, str(h.get("value")))
            found[name] = str(value).lower()
    if "Content-Type" not in found:
        return None
    return ItemInfo(
        content_type=found["Content-Type"], content_class=found.get("Content-Class", "")
    )


def extended_int(item: dict[str, Any], prop: str) -> int | None:
    """An Integer extended property an item was read with (`$expand`), or None (Graph leaves
    the collection out when the item lacks the property)."""
    for p in item.get("singleValueExtendedProperties") or []:
        if str(p.get("id", "")).casefold() == prop.casefold():
            with contextlib.suppress(TypeError, ValueError):
                return int(p.get("value"))
    return None


def _people(msg: Message, header: str) -> list[dict[str, Any]]:
    values = [str(v) for v in msg.get_all(header) or []]
    return [
        {"emailAddress": {"name": name or addr, "address": addr}}
        for name, addr in getaddresses(values)
        if addr
    ]


def _body(msg: EmailMessage) -> dict[str, str]:
    part = msg.get_body(preferencelist=("html", "plain"))
    if part is None:
        return {"contentType": "text", "content": ""}
    assert isinstance(part, EmailMessage)
    try:
        content = part.get_content()
    except (LookupError, KeyError):  # unknown charset: keep the bytes as Latin-1 text
        content = _payload(part).decode("latin-1")
    kind = "html" if part.get_content_subtype() == "html" else "text"
    return {"contentType": kind, "content": str(content)}


def _payload(part: Message) -> bytes:
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def attachments_of(msg: EmailMessage) -> list[Part]:
    """The message's attachments as fileAttachments. A message that is one part of neither
    text/plain nor text/html (a scanner's PDF, a bare text/calendar) has no body to show:
    that part is its attachment (RFC 2046 5.1: a message of one non-multipart body; `iter_
    attachments` yields nothing for it, so its content would be lost)."""
    if not msg.is_multipart():
        if msg.get_content_type() in ("text/plain", "text/html"):
            return []
        ctype = msg.get_content_type()
        name = msg.get_filename() or f"attachment{mimetypes.guess_extension(ctype) or ''}"
        return [Part(name, ctype, _payload(msg), False, None)]
    out: list[Part] = []
    for part in msg.iter_attachments():
        assert isinstance(part, EmailMessage)
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            # An attached message travels as an .eml file (item attachments are not created
            # here; a documented gap of this mover).
            inner = part.get_payload(0)
            if not isinstance(inner, Message):
                continue
            data = inner.as_bytes()
            name = part.get_filename() or f"{inner.get('Subject', 'message')}.eml"
        else:
            data = _payload(part)
            name = part.get_filename() or "attachment"
        cid = str(part.get("Content-ID") or "").strip().strip("<>") or None
        inline = part.get_content_disposition() == "inline"
        out.append(Part(name, ctype, data, inline, cid))
    return out


def _iso(value: Any) -> str | None:
    return str(value) if value else None


def utc_time(value: str) -> str:
    """An ISO 8601 time as Graph writes one (UTC, "Z"; resources/message receivedDateTime:
    "always in UTC time"): a SystemTime extended property gets the spelling Graph itself
    returns, whatever offset the source gave (IMAP INTERNALDATE keeps the sender's zone)."""
    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    when = when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def submit_time(msg: EmailMessage, state: MessageState) -> str | None:
    """When the message was sent: the source's own submit time (a Graph source's
    sentDateTime), else, for a source whose state has none (IMAP keeps only INTERNALDATE,
    the delivery time), the MIME Date header: "the date and time at which the creator of the
    message indicated that the message was complete and ready to enter the mail delivery
    system" (RFC 5322 3.6.1). A draft was never sent: none. A missing or unreadable Date:
    the delivery time (a message is sent before it arrives; left out, Exchange would date
    it when the copy is made, *unverified*, as the sandbox does)."""
    if state.sent:
        return utc_time(state.sent)
    if state.draft:
        return None
    try:
        when = parsedate_to_datetime(str(msg["Date"])) if msg.get("Date") else None
    except (TypeError, ValueError, IndexError):
        when = None
    if when is not None:
        return utc_time(when.isoformat())
    return utc_time(state.received) if state.received else None


def verb_properties(state: MessageState) -> list[dict[str, str]]:
    """The extended properties of the state's replied / forwarded state (see "Replied and
    forwarded"): none when the source has neither."""
    if state.answered:
        verb, icon = NOTEIVERB_REPLYTOSENDER, ICON_MAIL_REPLIED
    elif state.forwarded:
        verb, icon = NOTEIVERB_FORWARD, ICON_MAIL_FORWARDED
    else:
        return []
    return [{"id": LAST_VERB, "value": str(verb)}, {"id": ICON_INDEX, "value": str(icon)}]


def without_verbs(body: dict[str, Any]) -> dict[str, Any] | None:
    """A create or PATCH body without the replied / forwarded properties; None when it
    carries none (nothing to leave out)."""
    props = body.get("singleValueExtendedProperties") or []
    kept = [p for p in props if p.get("id") not in VERB_PROPS]
    if len(kept) == len(props):
        return None
    out = dict(body)
    if kept:
        out["singleValueExtendedProperties"] = kept
    else:
        out.pop("singleValueExtendedProperties", None)
    return out


def message_payload(
    msg: EmailMessage, state: MessageState, source_id: str, verbs: bool = True
) -> dict[str, Any]:
    """The JSON create of a message: its MIME-derived content plus the state MIME lacks, and
    the copy's identity (IDENTITY_PROP = the source message's id); `verbs`: with the
    replied / forwarded state (`verb_properties`)."""
    flags = (MSGFLAG_READ if state.read else 0) | (MSGFLAG_UNSENT if state.draft else 0)
    props = [
        {"id": "Integer 0x0E07", "value": str(flags)},
        {"id": IDENTITY_PROP, "value": source_id},
    ]
    if state.received:
        props.append({"id": "SystemTime 0x0E06", "value": utc_time(state.received)})
    sent = submit_time(msg, state)
    if sent:
        props.append({"id": "SystemTime 0x0039", "value": sent})
    sensitivity = SENSITIVITY.get(str(msg.get("Sensitivity", "")).strip().lower())
    if sensitivity:
        props.append({"id": "Integer 0x0036", "value": str(sensitivity)})
    if verbs:
        props += verb_properties(state)
    body: dict[str, Any] = {
        "subject": str(msg.get("Subject", "")),
        "body": _body(msg),
        "toRecipients": _people(msg, "To"),
        "ccRecipients": _people(msg, "Cc"),
        "bccRecipients": _people(msg, "Bcc"),
        "replyTo": _people(msg, "Reply-To"),
        "categories": list(state.categories),
        "singleValueExtendedProperties": props,
    }
    # A source that keeps no importance of its own (None): the message's headers, as
    # Exchange's MIME reader would; neither: Exchange's default (normal).
    importance = state.importance or importance_of(msg.get)
    if importance:
        body["importance"] = importance
    sender = _people(msg, "From")
    if sender:
        body["from"] = sender[0]
    if msg.get("Message-ID"):
        body["internetMessageId"] = str(msg["Message-ID"]).strip()
    if state.flag and state.flag.get("flagStatus"):
        body["flag"] = dict(state.flag)
    return body


def message_state(raw: dict[str, Any]) -> MessageState:
    """A message's state as read with STATE_SELECT (resources/message)."""
    flag = raw.get("flag")
    return MessageState(
        read=bool(raw.get("isRead")),
        draft=bool(raw.get("isDraft")),
        # Annotations (@odata.type) are not the flag's own properties: never sent back.
        flag={k: v for k, v in flag.items() if not k.startswith("@")}
        if isinstance(flag, dict)
        else None,
        categories=tuple(raw.get("categories") or ()),
        importance=raw.get("importance") or "normal",
        received=_iso(raw.get("receivedDateTime")),
        sent=_iso(raw.get("sentDateTime")),
    )


def state_patch(state: MessageState, verbs: bool = True) -> dict[str, Any]:
    """The PATCH that brings a copy's state in line (message-update: isRead, categories,
    importance and flag are writable; isDraft and the dates are not). What the state does
    not know is left as the copy has it: an unknown importance (None), no flag state, a
    replied / forwarded state the source does not have (never cleared: the target's user
    may have replied there); `verbs`: with the replied / forwarded state."""
    patch: dict[str, Any] = {
        "isRead": state.read,
        "categories": list(state.categories),
    }
    if state.importance is not None:
        patch["importance"] = state.importance
    if state.flag is not None:
        patch["flag"] = dict(state.flag)
    extended = verb_properties(state) if verbs else []
    if extended:
        patch["singleValueExtendedProperties"] = extended
    return patch


def split_attachments(payload_size: int, parts: list[Part]) -> tuple[list[Part], list[Part]]:
    """(attachments that fit into the create request, the ones sent after it)."""
    room = MAX_REQUEST - REQUEST_MARGIN - payload_size
    inline, later = [], []
    for p in sorted(parts, key=lambda p: len(p.data)):
        cost = (len(p.data) + 2) // 3 * 4 + 1024
        if cost <= room:
            inline.append(p)
            room -= cost
        else:
            later.append(p)
    return inline, later


def update_conflict(exc: RemoteError) -> bool:
    """Whether an update of a copy failed for that item alone: any 4xx but the token's 401
    (the copy was changed, moved or deleted in the target, or refuses the change); 429 and
    5xx are TransientErrors, retried before they get here."""
    status = exc.fields.get("status")
    return (
        isinstance(status, int)
        and 400 <= status < 500
        and not isinstance(exc, (AuthenticationError, TransientError))
    )


# -- identity of copies ---------------------------------------------------------------------------


def odata_string(value: str) -> str:
    """An OData string literal (a quote inside is doubled)."""
    return "'" + value.replace("'", "''") + "'"


def stamp_filter(source_id: str) -> str:
    """`$filter` for the items stamped with `source_id` (singlevaluelegacyextendedproperty-get,
    "GET resource instances with string-typed extended properties matching a filter")."""
    return (
        f"singleValueExtendedProperties/Any(ep: ep/id eq {odata_string(IDENTITY_PROP)}"
        f" and ep/value eq {odata_string(source_id)})"
    )


def stamp_expand() -> str:
    """`$expand` that returns an item's stamp with it (singlevaluelegacyextendedproperty-get)."""
    return f"singleValueExtendedProperties($filter=id eq {odata_string(IDENTITY_PROP)})"


def stamp_of(item: dict[str, Any]) -> str | None:
    """The source id an item read with `stamp_expand()` is stamped with (None: not ours).
    Graph leaves the collection out when the item lacks the property."""
    for p in item.get("singleValueExtendedProperties") or []:
        if str(p.get("id", "")).casefold() == IDENTITY_PROP.casefold():
            return str(p.get("value"))
    return None


async def our_copies(
    graph: GraphAdapter,
    folder_messages: str,
    source_id: str,
    message_id: str | None,
    taken: set[str],
) -> list[str]:
    """Ids of the unmapped copies of a source message that coexist made in the folder: found
    by the source's Internet Message-ID (set on the copy) and by the stamp, and kept only if
    the item, read back, carries coexist's stamp (so a message of the target's own that
    happens to share the Message-ID is never touched)."""
    filters = [stamp_filter(source_id)]
    if message_id:
        filters.append(f"internetMessageId eq {odata_string(message_id)}")
    found: list[str] = []
    for flt in filters:
        for m in await graph.list_all(folder_messages, {"$filter": flt, "$select": "id"}):
            if str(m["id"]) not in taken and str(m["id"]) not in found:
                found.append(str(m["id"]))
    box = folder_messages.split("/mailFolders/", 1)[0]
    out = []
    for item_id in found:
        with contextlib.suppress(NotFound):  # deleted meanwhile: nothing to clean up
            item = await graph.send(
                "GET",
                f"{box}/messages/{item_id}",
                params={"$select": "id", "$expand": stamp_expand()},
            )
            if stamp_of(item) is not None:
                out.append(item_id)
    return out


# -- the store -------------------------------------------------------------------------------------


class GraphItemsStore:
    """One mailbox's mail through Graph's mail API (see the module docstring)."""

    caps = CAPS

    def __init__(self, box: Box, planning: bool = False) -> None:
        self.box = box
        self.planning = planning  # plan mode: `export` reads no MIME (`_export_planned`)
        self.feed = MailDelta(box)
        # Whether copies get the replied / forwarded properties: None until the first copy
        # made with them was read back, then True (kept) or False (refused or ignored: left
        # out from then on, `verbs_lost` says why).
        self.verbs: bool | None = None
        self.verbs_lost = ""
        self.probing = False

    @property
    def user(self) -> str:
        return f"users/{self.box.user_id}"

    async def list_folders(self) -> FolderTree:
        return FolderTree(await mail_tree(self.box.graph, self.box.user_id))

    async def create_folder(
        self, parent: Folder | None, name: str, path: tuple[str, ...], folder_class: str
    ) -> Folder | None:
        return await create_folder(self.box, parent, name, path, folder_class)

    def changes(self, folder: Folder, cursor: str | None) -> MailDeltaRound:
        return self.feed.changes(folder, cursor)

    def cursor_lost(self, exc: RemoteError) -> bool:
        return self.feed.cursor_lost(exc)

    async def inspect(self, refs: list[ItemRef]) -> dict[str, ItemInfo]:
        """Never needed (`inspect_before_export` is False): the export reads the MIME, and
        its payload's `info` says what the skip rules need."""
        return {}

    async def export(
        self, refs: list[ItemRef], fmt: str, state_only: bool = False
    ) -> dict[str, Payload]:
        """Each message's MIME (`$value`, message-get "Get MIME content") and state; an
        update (`state_only`) reads the state alone. A message gone since its scan is left
        out (the next delta reports it). Plan mode: no MIME (`_export_planned`)."""
        out: dict[str, Payload] = {}
        if self.planning and not state_only:
            for ref in refs:
                planned = await self._export_planned(ref.item_id)
                if planned is not None:
                    out[ref.item_id] = planned
            return out
        for ref in refs:
            sid = ref.item_id
            try:
                mime = b""
                if not state_only:
                    mime = await self.box.graph.get_bytes(f"{self.user}/messages/{sid}/$value")
                raw = await self.box.graph.send(
                    "GET", f"{self.user}/messages/{sid}", params={"$select": STATE_SELECT}
                )
            except NotFound:
                continue
            info = None if state_only else mime_info(mime)
            out[sid] = Payload(
                MIME,
                "",
                raw.get("changeKey"),
                mime=mime,
                state=message_state(raw),
                source_id=sid,
                size=None if state_only else len(mime),
                info=info,
            )
        return out

    async def _export_planned(self, sid: str) -> Payload | None:
        """A planned export of one message: its state, the Content-Type of its headers and
        its size (PLAN_SELECT), one GET, no MIME. A message whose headers carry no
        Content-Type (one that never crossed a transport may have none: *unverified* which
        ones Exchange leaves without) has its MIME read, as the real pass would, so the plan
        still skips what the pass skips. An empty payload: a planned import writes nothing."""
        try:
            raw = await self.box.graph.send(
                "GET",
                f"{self.user}/messages/{sid}",
                params={
                    "$select": PLAN_SELECT,
                    "$expand": f"singleValueExtendedProperties($filter=id eq "
                    f"{odata_string(MESSAGE_SIZE_PROP)})",
                },
            )
            info = header_info(raw.get("internetMessageHeaders"))
            size = extended_int(raw, MESSAGE_SIZE_PROP)
            if info is None:
                mime = await self.box.graph.get_bytes(f"{self.user}/messages/{sid}/$value")
                info, size = mime_info(mime), len(mime)
        except NotFound:
            return None
        return Payload(
            MIME,
            "",
            raw.get("changeKey"),
            state=message_state(raw),
            source_id=sid,
            size=size,
            info=info,
        )

    async def import_item(
        self, folder_id: str, payload: Payload, replace: ItemRef | None = None
    ) -> Imported:
        state = payload.state or MessageState()
        self._left_out(state, payload.source_id)
        if replace is not None:
            patched = await self._send_state(
                "PATCH",
                f"{self.user}/messages/{replace.item_id}",
                state_patch(state, self.verbs is not False),
                payload.source_id,
            )
            if patched is None:  # plan mode
                return Imported(replace.item_id, None)
            return Imported(replace.item_id, patched.get("changeKey"), self._lost(state))
        msg = parse_mime(payload.mime)
        body = message_payload(msg, state, payload.source_id, self.verbs is not False)
        inline, later = split_attachments(len(json.dumps(body)), attachments_of(msg))
        if inline:
            body["attachments"] = [p.json() for p in inline]
        made: dict[str, Any] | None = None
        try:
            made = await self._send_state(
                "POST", f"{self.user}/mailFolders/{folder_id}/messages", body, payload.source_id
            )
            if made is None:  # plan mode
                return Imported(None, None)
            for part in later:
                await self._attach(str(made["id"]), part)
        except InvalidRequest:
            # e.g. a message over the target's size limit: no partial copy is left behind.
            if made is not None:
                with contextlib.suppress(NotFound):
                    await self._delete(str(made["id"]))
            raise
        return Imported(str(made["id"]), made.get("changeKey"), self._lost(state))

    def _lost(self, state: MessageState) -> str | None:
        """What the copy just made or updated lacks: the replied / forwarded state, where
        the message has one and this store found it refused or ignored (`verbs` False: by
        this very import, or before it). The sync counts and lists it (`sync.NOT_KEPT`)."""
        if self.verbs is False and verb_properties(state):
            return f"the replied/forwarded state ({self.verbs_lost})"
        return None

    def update_refused(self, exc: RemoteError) -> bool:
        return update_conflict(exc)

    # -- the replied / forwarded state (see "Replied and forwarded") --------------------------

    async def _send_state(
        self, method: str, path: str, body: dict[str, Any], source_id: str
    ) -> dict[str, Any] | None:
        """A create or state PATCH; refused while it carries the replied / forwarded
        properties, sent again without them (a refusal of that one is the item's own). The
        first that carried them and was accepted is read back (once per store)."""
        made: dict[str, Any] | None
        try:
            made = await self.box.graph.send(method, path, json=body)
        except (InvalidRequest, PermissionDenied) as exc:
            bare = without_verbs(body)
            if bare is None:
                raise
            made = await self.box.graph.send(method, path, json=bare)
            self._verbs_refused(exc.message, source_id)
            return made
        if made is not None and made.get("id") and self.verbs is None and not self.probing:
            sent = [
                p for p in body.get("singleValueExtendedProperties") or [] if p["id"] == LAST_VERB
            ]
            if sent:
                self.probing = True  # one read-back, whatever else is in flight
                await self._check_verbs_kept(str(made["id"]), str(sent[0]["value"]), source_id)
        return made

    async def _check_verbs_kept(self, item_id: str, value: str, source_id: str) -> None:
        """Read the first copy made or updated with a last verb back: a server that ignored it
        (the copy landed without it) has this store leave the properties out from then on. A
        read that fails (the copy deleted meanwhile, a refusal) proves nothing: the next
        copy made with them is read back instead; the copy itself has landed either way."""
        try:
            item = await self.box.graph.send(
                "GET",
                f"{self.user}/messages/{item_id}",
                params={
                    "$select": "id",
                    "$expand": "singleValueExtendedProperties($filter=id eq "
                    f"{odata_string(LAST_VERB)})",
                },
            )
        except (NotFound, InvalidRequest, PermissionDenied, TransientError) as exc:
            log.info("%s: replied/forwarded state not read back: %s", self.box.user_id, exc)
            self.probing = False
            return
        kept = [
            str(p.get("value"))
            for p in (item or {}).get("singleValueExtendedProperties") or []
            if str(p.get("id", "")).casefold() == LAST_VERB.casefold()
        ]
        if kept == [value]:
            self.verbs = True
            return
        self.verbs = False
        self.verbs_lost = f"the target kept {LAST_VERB} as {kept or 'nothing'}, not {value}"
        log.warning(
            "%s: replied/forwarded state not kept on the copy of %s (%s); left out of "
            "further copies of this mailbox",
            self.box.user_id,
            source_id,
            self.verbs_lost,
        )

    def _verbs_refused(self, reason: str, source_id: str) -> None:
        self.verbs = False
        self.verbs_lost = f"refused: {reason}"
        log.warning(
            "%s: replied/forwarded state of %s not set on its copy (%s); the copy was made "
            "without it, and further copies of this mailbox leave it out",
            self.box.user_id,
            source_id,
            reason,
        )

    def _left_out(self, state: MessageState, source_id: str) -> None:
        """Report a replied / forwarded state this store no longer sends (`verbs` False)."""
        if self.verbs is False and verb_properties(state):
            log.warning(
                "%s: replied/forwarded state of %s not set on its copy (%s)",
                self.box.user_id,
                source_id,
                self.verbs_lost,
            )

    async def copies(self, folder_id: str, exclude: set[str]) -> dict[str, list[ItemRef]]:
        """The folder's messages by identity (their Internet Message-ID). Not what this
        store's recovery reads (`atomic_import` is False: `copies_of` finds its own copies
        by stamp, one source item at a time)."""
        out: dict[str, list[ItemRef]] = {}
        path = f"{self.user}/mailFolders/{folder_id}/messages"
        params = {"$select": "id,internetMessageId", "$top": 100}
        for m in await self.box.graph.list_all(path, params):
            ident = message_identity(m.get("internetMessageId"))
            if ident and str(m["id"]) not in exclude:
                out.setdefault(ident, []).append(ItemRef(folder_id, str(m["id"])))
        return out

    async def copies_of(
        self, folder_id: str, source_id: str, identity: str | None, exclude: set[str]
    ) -> list[ItemRef]:
        found = await our_copies(
            self.box.graph,
            f"{self.user}/mailFolders/{folder_id}/messages",
            source_id,
            message_id_of(identity),
            exclude,
        )
        return [ItemRef(folder_id, item_id) for item_id in found]

    async def move(self, ref: ItemRef, folder_id: str) -> Imported:
        """message-move: the moved message gets a new id in its new folder."""
        moved = await self.box.graph.send(
            "POST", f"{self.user}/messages/{ref.item_id}/move", json={"destinationId": folder_id}
        )
        if moved is None:  # plan mode
            return Imported(None, None)
        return Imported(str(moved["id"]), moved.get("changeKey"))

    async def change_keys(self, refs: list[ItemRef]) -> dict[str, str]:
        out: dict[str, str] = {}
        for ref in refs:
            with contextlib.suppress(NotFound):
                got = await self.box.graph.send(
                    "GET", f"{self.user}/messages/{ref.item_id}", params={"$select": "changeKey"}
                )
                if got and got.get("changeKey"):
                    out[ref.item_id] = str(got["changeKey"])
        return out

    async def delete(self, ref: ItemRef) -> None:
        await self._delete(ref.item_id)

    async def totals(self) -> dict[str, int]:
        return {f.id: f.total for f in await mail_tree(self.box.graph, self.box.user_id)}

    async def _delete(self, message_id: str) -> None:
        await self.box.graph.send("DELETE", f"{self.user}/messages/{message_id}")

    async def _attach(self, message_id: str, part: Part) -> None:
        base = f"{self.user}/messages/{message_id}/attachments"
        if len(part.data) < UPLOAD_SESSION_MIN:
            await self.box.graph.send("POST", base, json=part.json())
            return
        spec: dict[str, Any] = {
            "attachmentType": "file",
            "name": part.name,
            "size": len(part.data),
            "contentType": part.content_type,
            "isInline": part.is_inline,
        }
        if part.content_id:
            spec["contentId"] = part.content_id
        session = await self.box.graph.send(
            "POST", f"{base}/createUploadSession", json={"AttachmentItem": spec}
        )
        url, total = str(session["uploadUrl"]), len(part.data)
        for start in range(0, total, UPLOAD_CHUNK):
            await self.box.graph.put_range(
                url, part.data[start : start + UPLOAD_CHUNK], start, total
            )
