"""The fallback mover: Microsoft Graph's mail, contacts, calendar and To Do APIs.

For tenants where the mailbox import/export API (`migrate.stores.graph_io`) is not available. Its
building blocks are reused (folder mapping and creation, item_map rows, the checkpoint rule,
moves, skip-and-report, the window, reconciliation); only the way an item travels differs.

Mail, per mapped source folder:

1. Scan: `mailFolders/{id}/messages/delta` from the saved deltaLink; every reported message
   is recorded in `item_map` (new -> pending, changed -> changed, removed -> gone), with its
   Internet Message-ID, before the deltaLink is saved (a checkpoint never runs ahead of the
   data it covers). When the service has forgotten the sync state (410, `SyncStateNotFound`,
   `SyncStateInvalid`, `resyncRequired`: delta-query-overview, "Synchronization reset" and
   "Token duration"; graph/errors) the folder's round starts over from the first page,
   mid-round too. A full round (the first, or such a restart) re-reports every message in
   the folder: the item map keeps the ones already copied from being copied again, and rows
   it did not report are removals the lost sync state would have reported (gone / forgotten).
   The scan uses no `$filter`: a filtered message delta returns at most 5,000 messages and
   then never reports the rest (delta-query-messages), so the window is applied to the
   journal's rows instead (rows outside it wait as `pending`).
2. Moves: a pending message whose Internet Message-ID is that of exactly one gone copy is a
   move at the source (the Message-ID is the message's own and travels with it; its Graph
   id does not): its copy is moved in the target. A message without one is never paired.
3. Copy: each pending message in the window is read as MIME (`$value`) plus the state MIME
   does not carry (isRead, isDraft, flag, categories, importance, dates), and re-created in
   the mapped target folder with ONE JSON create that carries the MIME-derived content and
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
   Attachments ride in the create while the request stays under Graph's 4 MB; the rest are
   POSTed one by one (< 3 MB) or sent through an upload session (3..150 MB,
   outlook-large-attachments). An `importing` mark is written before the create: a pass
   killed after it finds the (possibly partial) copy by identity, deletes it and copies the
   message again, so nothing is duplicated and nothing is left half-copied (see Identity).
4. Update: changed messages get isRead/flag/categories/importance PATCHed onto the copy. A
   4xx on that PATCH (the copy was changed or removed in the target) is the item's conflict:
   recorded on its row, named in the pass detail, and the pass goes on.
5. Deletions: reported (`deletions = keep`) or mirrored.

Contacts, calendar events and To Do tasks: every folder/calendar/list is listed in full each
pass (these APIs have no per-folder delta in the sandbox's faces); new items are created in
the matching target folder (default -> default, others by name, created when missing) and
recorded in item_map with kind contact / event / task; changed ones are PATCHed; vanished
ones are reported as deletions. A recurring series is created from its master (with its
recurrence), then each exception is PATCHed onto the matching occurrence and each cancelled
occurrence (one the source's `instances` no longer lists) is deleted (event-list-instances,
event-update, event-delete). The pass window applies to mail only: PIM items move in full
with the pre-stage pass, so the calendar is complete before cutover.

Identity (what recognises a copy a killed pass left behind; never delivery time, subject or
size, which Microsoft does not promise to keep): every copy carries its source item's id,
stamped in its create request, as the named extended property IDENTITY_PROP on messages,
contacts and events, and as a linkedResource (applicationName TASK_APP, externalId) on To Do
tasks, which have no extended properties (resources/todotask). A message copy also carries
the source's Internet Message-ID (`internetMessageId`, set on create). An interrupted copy
is found with `$filter` on the target folder (by Message-ID and by stamp), and an item is
taken as ours only if its own stamp says so when read back; items other rows map are never
touched. Filters Graph does not document (contacts, a calendar's events, task links:
sandbox/graph/outlook_items.UNVERIFIED_FILTERS) fall back, when refused, to reading the
stamp of every unmapped item in the folder.

Not reproduced (documented gaps of this API surface, which the full-fidelity mover keeps):
MIME byte identity (Exchange renders its own MIME from the properties), internet headers
other than `x-` ones (resources/internetmessageheader), attendees of events (creating an
event with attendees sends them invitations, user-post-events). Events copied without their
attendees are counted (`events_without_attendees`) and named in the pass detail, never
dropped silently. To Do checklists are copied entry by entry.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import email
import email.policy
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.utils import getaddresses
from typing import Any, TypeVar

from coexist.engine.context import Context
from coexist.errors import (
    AuthenticationError,
    Conflict,
    InvalidRequest,
    NotFound,
    RemoteError,
    TransientError,
)
from coexist.migrate import sync
from coexist.migrate.passes import MOVERS, PassResult, Window
from coexist.migrate.stores.graph import MAIL_WELL_KNOWN, Box, sync_state_lost
from coexist.migrate.sync import MOVE_MARK, Plan, handle_deletions, moving
from coexist.provisioning.convert import target_id
from coexist.tenants.graph import GraphAdapter
from coexist.tenants.protocols import (
    MAIL_CLASS,
    MAIL_FOLDER,
    MIME,
    Capabilities,
    Change,
    ChangePage,
    Folder,
    ItemInfo,
)

CHECKPOINT_KIND = "mail-messages"  # folder_state kind of the mail API's message delta
DELTA_PAGE = 100  # Prefer: odata.maxpagesize (graph/delta-query-messages)
# What the scan asks of each message (message-delta supports $select).
DELTA_SELECT = "subject,receivedDateTime,createdDateTime,changeKey,internetMessageId"

# The copy's identity (see the module docstring). A named property in coexist's own property
# set (extended-properties-overview: "String {guid} Name name" for custom properties).
IDENTITY_PROP = "String {5b1c2a8e-7f3d-4c61-9a0e-c0e715e0ce11} Name coexistSourceId"
TASK_APP = "coexist"  # linkedResource.applicationName stamped on a task copy
TASK_LINK_NAME = "Migrated by coexist"
STATE_SELECT = "isRead,isDraft,flag,categories,importance,receivedDateTime,sentDateTime,changeKey"

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

# Writable properties per resource (learn.microsoft.com/graph/api/resources/<type>).
CONTACT_FIELDS = (
    "categories", "birthday", "fileAs", "displayName", "givenName", "initials", "middleName",
    "nickName", "surname", "title", "yomiGivenName", "yomiSurname", "yomiCompanyName",
    "generation", "imAddresses", "jobTitle", "companyName", "department", "officeLocation",
    "profession", "businessHomePage", "assistantName", "manager", "homePhones", "mobilePhone",
    "businessPhones", "spouseName", "personalNotes", "children", "emailAddresses", "homeAddress",
    "businessAddress", "otherAddress",
)  # fmt: skip
EVENT_FIELDS = (
    "subject", "body", "start", "end", "location", "locations", "isAllDay", "showAs",
    "sensitivity", "importance", "categories", "recurrence", "reminderMinutesBeforeStart",
    "isReminderOn", "responseRequested", "allowNewTimeProposals", "hideAttendees",
)  # fmt: skip
# What an exception may change relative to its series (event-update on an occurrence).
EXCEPTION_FIELDS = tuple(f for f in EVENT_FIELDS if f != "recurrence")
# Fields of a series master a PATCH may carry without dropping the series' exceptions.
SERIES_SAFE_FIELDS = tuple(f for f in EVENT_FIELDS if f not in ("recurrence", "start", "end"))
TASK_FIELDS = (
    "title", "body", "importance", "status", "dueDateTime", "startDateTime",
    "reminderDateTime", "completedDateTime", "isReminderOn", "recurrence", "categories",
)  # fmt: skip
CHECKLIST_FIELDS = ("displayName", "isChecked", "checkedDateTime", "createdDateTime")
# How far ahead a series without an end is expanded to find its exceptions and cancellations.
NO_END_HORIZON = dt.timedelta(days=2 * 365)
DEFAULT_CONTACTS = "contacts"  # item_map folder id of the default Contacts folder
COPIES_IN_FLIGHT = 4  # graph/throttling-limits: 4 concurrent requests per app per mailbox

# What this data plane can do (the graph_items store's capabilities; today the scan reads
# `checkpoint_kind`). Mail travels as MIME plus the state MIME lacks, one message per read.
CAPS = Capabilities(
    exports=frozenset({MIME}),
    accepts=frozenset({MIME}),
    cursor="delta-token",
    folder_classes=frozenset({MAIL_FOLDER, "IPF.Contact", "IPF.Appointment", "IPF.Task"}),
    checkpoint_kind=CHECKPOINT_KIND,
    export_batch=1,
    export_bytes=MAX_REQUEST,
    imports_in_flight=COPIES_IN_FLIGHT,
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
        identity=sync.message_identity(v.get("internetMessageId")),
        subject=v.get("subject"),
    )


def _move_signature(row: dict[str, Any]) -> tuple[Any, ...]:
    """A message is recognised across folders by its Internet Message-ID (RFC 5322: the
    message's own identifier; Graph ids change with the folder). One without it pairs with
    nothing: it is copied again and its old copy counts as deleted at the source."""
    message_id = sync.message_id_of(row.get("source_identity"))
    return (row["kind"], message_id) if message_id else ("unpaired", row["source_item_id"])


# -- moves (mail API ids) -----------------------------------------------------------


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
        if not moving(p):
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


def top_content_type(mime: bytes) -> str:
    return str(parse_mime(mime).get("Content-Type", "")).lower()


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


def message_payload(msg: EmailMessage, state: dict[str, Any], source_id: str) -> dict[str, Any]:
    """The JSON create of a message: its MIME-derived content plus the state MIME lacks, and
    the copy's identity (IDENTITY_PROP = the source message's id)."""
    flags = (MSGFLAG_READ if state.get("isRead") else 0) | (
        MSGFLAG_UNSENT if state.get("isDraft") else 0
    )
    props = [
        {"id": "Integer 0x0E07", "value": str(flags)},
        {"id": IDENTITY_PROP, "value": source_id},
    ]
    if received := _iso(state.get("receivedDateTime")):
        props.append({"id": "SystemTime 0x0E06", "value": received})
    if sent := _iso(state.get("sentDateTime")):
        props.append({"id": "SystemTime 0x0039", "value": sent})
    sensitivity = SENSITIVITY.get(str(msg.get("Sensitivity", "")).strip().lower())
    if sensitivity:
        props.append({"id": "Integer 0x0036", "value": str(sensitivity)})
    body: dict[str, Any] = {
        "subject": str(msg.get("Subject", "")),
        "body": _body(msg),
        "toRecipients": _people(msg, "To"),
        "ccRecipients": _people(msg, "Cc"),
        "bccRecipients": _people(msg, "Bcc"),
        "replyTo": _people(msg, "Reply-To"),
        "importance": state.get("importance") or "normal",
        "categories": list(state.get("categories") or []),
        "singleValueExtendedProperties": props,
    }
    sender = _people(msg, "From")
    if sender:
        body["from"] = sender[0]
    if msg.get("Message-ID"):
        body["internetMessageId"] = str(msg["Message-ID"]).strip()
    flag = state.get("flag")
    if isinstance(flag, dict) and flag.get("flagStatus"):
        body["flag"] = {k: v for k, v in flag.items() if not k.startswith("@")}
    return body


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


# -- mail copy ------------------------------------------------------------------------------------

W = TypeVar("W")
CONFLICTS_NAMED = 5  # update conflicts named in a pass detail (all are on their rows)


async def bounded(limit: int, work: Iterable[W], job: Callable[[W], Awaitable[None]]) -> None:
    """Run `job` on each of `work` with at most `limit` at once (so memory holds `limit`
    items, not the folder). The first failure cancels the rest and is raised as itself,
    not as an ExceptionGroup, for the one error tree.

    `limit` workers take the next piece of work as they finish one, and a job's coroutine
    is made only when its worker awaits it: a coroutine made ahead (waiting for a slot, or
    in a task the failure cancels before it starts) would never run, silently.
    """
    pending = iter(work)

    async def worker() -> None:
        for piece in pending:  # shared: each piece goes to exactly one worker
            await job(piece)

    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(max(1, limit)):
                tg.create_task(worker())
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None


class MailCopier:
    """Copies one mailbox's pending messages into the target over the mail API."""

    def __init__(self, ctx: Context, key: str, src: Box, tgt: Box, counts: Counter[str]) -> None:
        self.ctx, self.key, self.src, self.tgt, self.counts = ctx, key, src, tgt, counts
        self.conflicts: list[str] = []  # subjects of messages whose update was refused

    async def copy_pending(self, plan: Plan, window: Window) -> None:
        """Every pending message in the window, up to COPIES_IN_FLIGHT at once (each copy is
        a few requests in a row, so one at a time would leave the mailbox's 4 concurrent
        requests mostly idle); each is journaled `importing` before its create, so a kill
        anywhere leaves at most that many partial copies for `_recover_interrupted`."""
        now = dt.datetime.now().astimezone()
        work: list[tuple[dict[str, Any], str]] = []
        for folder_id, dest in plan.target_of.items():
            await self._recover_interrupted(folder_id, dest)
            rows = self.ctx.journal.mapped_items(self.key, folder_id=folder_id, status="pending")
            work += [
                (r, dest)
                for r in rows
                if r["kind"] == MAIL_CLASS and sync.in_window(r, window, now)
            ]
        await bounded(COPIES_IN_FLIGHT, work, lambda pair: self.copy(*pair))

    async def copy(self, row: dict[str, Any], dest: str) -> None:
        sid = row["source_item_id"]
        try:
            mime = await self.src.graph.get_bytes(f"users/{self.src.user_id}/messages/{sid}/$value")
            state = await self.src.graph.send(
                "GET", f"users/{self.src.user_id}/messages/{sid}", params={"$select": STATE_SELECT}
            )
        except NotFound:
            return  # gone since the scan: the next delta reports it
        info = ItemInfo(content_type=top_content_type(mime))
        reason = sync.skip_reason(self.ctx, {**row, "size": len(mime)}, info)
        if reason is not None:
            self._skip(sid, reason, row.get("subject"), len(mime))
            return
        msg = parse_mime(mime)
        payload = message_payload(msg, state, sid)
        inline, later = split_attachments(len(json.dumps(payload)), attachments_of(msg))
        if inline:
            payload["attachments"] = [p.json() for p in inline]
        self.ctx.journal.map_item(self.key, sid, status="importing", target_folder_id=dest)
        made: dict[str, Any] | None = None
        try:
            made = await self.tgt.graph.send(
                "POST", f"users/{self.tgt.user_id}/mailFolders/{dest}/messages", json=payload
            )
            if made is None:  # plan mode
                return
            for part in later:
                await self._attach(str(made["id"]), part)
        except InvalidRequest as exc:
            # e.g. a message over the target's size limit: skipped and reported, never dropped.
            if made is not None:
                with contextlib.suppress(NotFound):
                    await self._delete(str(made["id"]))
            self._skip(sid, exc.message, row.get("subject"), len(mime))
            return
        self.ctx.journal.map_item(
            self.key,
            sid,
            status="copied",
            source_change_key=state.get("changeKey"),
            target_folder_id=dest,
            target_item_id=made["id"],
            target_change_key=made.get("changeKey"),
            size=len(mime),
            reason=None,
        )
        self.counts["copied"] += 1
        self.counts["bytes"] += len(mime)

    def _skip(self, sid: str, reason: str, subject: str | None, size: int) -> None:
        self.ctx.journal.map_item(
            self.key, sid, status="skipped", reason=reason, subject=subject, size=size
        )
        self.counts["skipped"] += 1

    async def _attach(self, message_id: str, part: Part) -> None:
        base = f"users/{self.tgt.user_id}/messages/{message_id}/attachments"
        if len(part.data) < UPLOAD_SESSION_MIN:
            await self.tgt.graph.send("POST", base, json=part.json())
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
        session = await self.tgt.graph.send(
            "POST", f"{base}/createUploadSession", json={"AttachmentItem": spec}
        )
        url, total = str(session["uploadUrl"]), len(part.data)
        for start in range(0, total, UPLOAD_CHUNK):
            await self.tgt.graph.put_range(
                url, part.data[start : start + UPLOAD_CHUNK], start, total
            )

    async def _delete(self, message_id: str) -> None:
        await self.tgt.graph.send("DELETE", f"users/{self.tgt.user_id}/messages/{message_id}")

    async def _recover_interrupted(self, folder_id: str, dest: str) -> None:
        """Messages marked `importing` by a pass that died: remove a partial copy, copy again.

        The copy is found by identity (`our_copies`); it may lack attachments added after the
        create, so it is deleted and the message goes back to pending rather than adopted.
        """
        stuck = self.ctx.journal.mapped_items(self.key, folder_id=folder_id, status="importing")
        if not stuck:
            return
        taken = mapped_targets(self.ctx, self.key)
        box = f"users/{self.tgt.user_id}"
        for r in stuck:
            for copy_id in await our_copies(
                self.tgt.graph, f"{box}/mailFolders/{dest}/messages", r, taken
            ):
                with contextlib.suppress(NotFound):
                    await self._delete(copy_id)
            self.ctx.journal.map_item(self.key, r["source_item_id"], status="pending", reason=None)

    async def update_changed(self) -> None:
        """Bring copies in line with their changed source: read/flag state, categories."""
        for r in self.ctx.journal.mapped_items(self.key, status="changed"):
            if r["kind"] != MAIL_CLASS or not r["target_item_id"]:
                continue
            sid = r["source_item_id"]
            try:
                state = await self.src.graph.send(
                    "GET",
                    f"users/{self.src.user_id}/messages/{sid}",
                    params={"$select": STATE_SELECT},
                )
            except NotFound:
                continue  # gone since the scan: the next delta reports it
            patch: dict[str, Any] = {
                "isRead": bool(state.get("isRead")),
                "categories": list(state.get("categories") or []),
                "importance": state.get("importance") or "normal",
            }
            if isinstance(state.get("flag"), dict):
                patch["flag"] = {k: v for k, v in state["flag"].items() if not k.startswith("@")}
            try:
                made = await self.tgt.graph.send(
                    "PATCH", f"users/{self.tgt.user_id}/messages/{r['target_item_id']}", json=patch
                )
            except RemoteError as exc:
                if not update_conflict(exc):
                    raise
                # Changed or gone in the target: reported, the target wins.
                self.ctx.journal.map_item(
                    self.key, sid, status="copied", reason=f"not updated: {exc.message}"
                )
                self.conflicts.append(str(r["subject"] or sid))
                self.counts["update_conflicts"] += 1
                continue
            self.ctx.journal.map_item(
                self.key,
                sid,
                status="copied",
                source_change_key=state.get("changeKey"),
                target_change_key=(made or {}).get("changeKey"),
            )
            self.counts["updated"] += 1


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


def mapped_targets(ctx: Context, key: str) -> set[str]:
    """Target items the journal maps to a source item: never a leftover to clean up."""
    return {str(r["target_item_id"]) for r in ctx.journal.mapped_items(key) if r["target_item_id"]}


async def our_copies(
    graph: GraphAdapter, folder_messages: str, row: dict[str, Any], taken: set[str]
) -> list[str]:
    """Ids of the unmapped copies of `row`'s message that coexist made in the folder: found by
    the source's Internet Message-ID (set on the copy) and by the stamp, and kept only if
    the item, read back, carries coexist's stamp (so a message of the target's own that
    happens to share the Message-ID is never touched)."""
    filters = [stamp_filter(str(row["source_item_id"]))]
    message_id = sync.message_id_of(row.get("source_identity"))
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


def _instant(value: Any) -> dt.datetime | None:
    """A Graph timestamp as an aware datetime (UTC when it names no zone); Outlook writes up
    to 7 fractional digits ("2024-01-15T09:00:00.0000000"), Python reads 6."""
    if not value:
        return None
    text = str(value).replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:
        digits = "".join(c for c in rest if c.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    t = dt.datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


# -- deletions -------------------------------------------------------------------------------------

# Item class (mailboxItem.type, MS-OXCMSG PidTagMessageClass) -> the fallback mover's kind.
_KIND_OF_CLASS = {"ipm.contact": "contact", "ipm.appointment": "event", "ipm.task": "task"}


def kind_of(kind: str) -> str:
    """The item family of a recorded kind: mail, contact, event or task."""
    low = kind.lower()
    if low in ("mail", "contact", "event", "task"):
        return low
    if low.startswith("ipm.note"):
        return "mail"  # IPM.Note and its subclasses (S/MIME, voicemail...)
    return _KIND_OF_CLASS.get(low, low)


# Each item family's item URL (user id, folder id, item id): the one place it is spelled;
# CONTACTS/EVENTS/TASKS below use these too.
# *unverified* for To Do: that a task's list id is the id of the mailbox folder it sits in
# (the sandbox serves one id space).
ITEM_PATHS: dict[str, Callable[[str, str, str], str]] = {
    "mail": lambda u, f, i: f"users/{u}/messages/{i}",
    "contact": lambda u, f, i: f"users/{u}/contacts/{i}",
    "event": lambda u, f, i: f"users/{u}/events/{i}",
    "task": lambda u, f, i: f"users/{u}/todo/lists/{f}/tasks/{i}",
}


def delete_path(row: dict[str, Any], user: str) -> str | None:
    """The Graph URL that deletes the target copy of `row`, or None for an unknown kind."""
    path = ITEM_PATHS.get(kind_of(str(row["kind"] or "mail")))
    if path is None:
        return None
    return path(user, str(row["target_folder_id"]), str(row["target_item_id"]))


async def delete_copy(graph: GraphAdapter, user: str, row: dict[str, Any]) -> bool:
    """Delete a row's target copy through the Graph API of its kind (False: an unknown kind,
    left `gone` in the item map)."""
    path = delete_path(row, user)
    if path is None:
        return False
    await graph.send("DELETE", path)
    return True


# -- contacts, events, tasks --------------------------------------------------------------------------


@dataclass(frozen=True)
class PimKind:
    """How one kind of PIM item is listed, created and patched."""

    kind: str  # item_map kind
    fields: tuple[str, ...]
    folders: Callable[[str], str]  # user id -> folder collection path
    items: Callable[[str, str], str]  # user id, folder id -> item collection path
    item: Callable[[str, str, str], str]  # user id, folder id, item id -> item path
    name_of: str  # the folder's display-name property
    stamp: Callable[[str], dict[str, Any]]  # source id -> what the create body adds
    find: Callable[[str], str]  # source id -> `$filter` for the items stamped with it


def _extended_stamp(source_id: str) -> dict[str, Any]:
    return {"singleValueExtendedProperties": [{"id": IDENTITY_PROP, "value": source_id}]}


def _task_stamp(source_id: str) -> dict[str, Any]:
    # todotasklist-post-tasks: a task's linkedResources may be given in its create request.
    link = {"applicationName": TASK_APP, "externalId": source_id, "displayName": TASK_LINK_NAME}
    return {"linkedResources": [link]}


def _task_filter(source_id: str) -> str:
    return (
        f"linkedResources/any(r: r/applicationName eq {odata_string(TASK_APP)}"
        f" and r/externalId eq {odata_string(source_id)})"
    )


CONTACTS = PimKind(
    "contact",
    CONTACT_FIELDS,
    lambda u: f"users/{u}/contactFolders",
    lambda u, f: f"users/{u}/contactFolders/{f}/contacts",
    ITEM_PATHS["contact"],
    "displayName",
    _extended_stamp,
    stamp_filter,
)
EVENTS = PimKind(
    "event",
    EVENT_FIELDS,
    lambda u: f"users/{u}/calendars",
    lambda u, f: f"users/{u}/calendars/{f}/events",
    ITEM_PATHS["event"],
    "name",
    _extended_stamp,
    stamp_filter,
)
TASKS = PimKind(
    "task",
    TASK_FIELDS,
    lambda u: f"users/{u}/todo/lists",
    lambda u, f: f"users/{u}/todo/lists/{f}/tasks",
    ITEM_PATHS["task"],
    "displayName",
    _task_stamp,
    _task_filter,
)


def _version(item: dict[str, Any]) -> str | None:
    """What changes when a PIM item changes: its changeKey (contacts, events); a todoTask has
    none (resources/todotask), so its @odata.etag, else lastModifiedDateTime."""
    value = item.get("changeKey") or item.get("@odata.etag") or item.get("lastModifiedDateTime")
    return str(value) if value else None


def _list_params(kind: PimKind) -> dict[str, Any]:
    # A task's checklist is a navigation property (todotask "Relationships"): expanded so
    # one listing brings it; *unverified*: $expand=checklistItems on a task collection.
    return {"$top": 100, "$expand": "checklistItems"} if kind is TASKS else {"$top": 100}


def _copyable(item: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """The writable properties that hold a value (Graph answers unset ones as null, empty
    strings, lists or objects; sending those back is noise)."""
    return {f: item[f] for f in fields if item.get(f) not in (None, "", [], {})}


class PimCopier:
    """Copies one mailbox's contacts, calendars and To Do lists into the target."""

    def __init__(
        self, ctx: Context, key: str, src: GraphAdapter, tgt: GraphAdapter, ids: tuple[str, str]
    ) -> None:
        self.ctx, self.key, self.src, self.tgt = ctx, key, src, tgt
        self.src_user, self.tgt_user = ids
        self.counts: Counter[str] = Counter()
        self.conflicts: list[str] = []  # names of items whose update was refused

    async def run(self) -> None:
        for kind in (CONTACTS, EVENTS, TASKS):
            for source_folder, target_folder in await self._folders(kind):
                await self._sync_folder(kind, source_folder, target_folder)

    # -- folders

    async def _folders(self, kind: PimKind) -> list[tuple[str, str]]:
        """(source folder id, target folder id) pairs: default to default, others by path
        (contact folders nest; calendars and To Do lists do not), created when missing."""
        src = await self._folder_list(kind, self.src, self.src_user)
        tgt = await self._folder_list(kind, self.tgt, self.tgt_user)
        target_of: dict[tuple[str, ...], str] = {}
        pairs = []
        for fid, path, default in src:  # parents come before their children
            match = next(
                (t for t in tgt if (t[2] and default) or (not t[2] and not default and
                                                          sync.same_path(t[1], path))),
                None,
            )  # fmt: skip
            if match is None:
                made = await self._create_folder(kind, path, target_of.get(path[:-1]))
                if made is None:  # plan mode, or its parent could not be made
                    continue
                match = (made, path, False)
                tgt.append(match)
            target_of[path] = match[0]
            pairs.append((fid, match[0]))
        return pairs

    async def _create_folder(
        self, kind: PimKind, path: tuple[str, ...], parent: str | None
    ) -> str | None:
        if len(path) == 1:
            where = kind.folders(self.tgt_user)
        elif parent is None or parent.startswith("planned:"):
            return None
        else:  # contactfolder-post-childfolders
            where = f"users/{self.tgt_user}/contactFolders/{parent}/childFolders"
        made = await self.tgt.send("POST", where, json={kind.name_of: path[-1]})
        return str(made["id"]) if made is not None else None

    async def _folder_list(
        self, kind: PimKind, graph: GraphAdapter, user: str
    ) -> list[tuple[str, tuple[str, ...], bool]]:
        """(id, path of names, is default) of every folder of the kind, parents first."""
        if kind is CONTACTS:
            # user-list-contactfolders lists the folders under the default Contacts folder;
            # `/contacts` is that folder itself (recorded as DEFAULT_CONTACTS on both sides).
            # Folders inside them are listed per parent (contactfolder-list-childfolders).
            out: list[tuple[str, tuple[str, ...], bool]] = [(DEFAULT_CONTACTS, ("Contacts",), True)]
            top = await graph.list_all(kind.folders(user), {"$top": 100})
            queue: list[tuple[dict[str, Any], tuple[str, ...]]] = [(f, ()) for f in top]
            while queue:
                raw, parent = queue.pop(0)
                path = (*parent, str(raw["displayName"]))
                out.append((str(raw["id"]), path, False))
                children = f"users/{user}/contactFolders/{raw['id']}/childFolders"
                queue += [(c, path) for c in await graph.list_all(children, {"$top": 100})]
            return out
        rows = await graph.list_all(kind.folders(user), {"$top": 100})
        if kind is EVENTS:
            return [
                (str(c["id"]), (str(c["name"]),), bool(c.get("isDefaultCalendar"))) for c in rows
            ]
        return [
            (str(t["id"]), (str(t["displayName"]),), t.get("wellknownListName") == "defaultList")
            for t in rows
        ]

    def _items_path(self, kind: PimKind, user: str, folder: str) -> str:
        if kind is CONTACTS and folder == DEFAULT_CONTACTS:
            return f"users/{user}/contacts"
        return kind.items(user, folder)

    # -- items

    async def _sync_folder(self, kind: PimKind, source: str, target: str) -> None:
        await self._recover_interrupted(kind, source, target)
        present = await self.src.list_all(
            self._items_path(kind, self.src_user, source), _list_params(kind)
        )
        seen = set()
        for item in present:
            sid = str(item["id"])
            seen.add(sid)
            known = self.ctx.journal.mapped(self.key, sid)
            if known is None or known["status"] == "pending":
                await self._create(kind, source, target, item)
            elif known["status"] in ("copied", "changed") and (
                known["source_change_key"] != _version(item)
            ):
                await self._update(kind, target, known, item)
        for row in self.ctx.journal.mapped_items(self.key, folder_id=source, status="copied"):
            if row["kind"] == kind.kind and row["source_item_id"] not in seen:
                self.ctx.journal.map_item(self.key, row["source_item_id"], status="gone")

    async def _in_own_zone(self, event: dict[str, Any]) -> dict[str, Any]:
        """The event with start/end in the zone it was created in.

        Responses give times in UTC unless `Prefer: outlook.timezone` names a zone (event-get,
        "Request headers"); a series created from UTC times would drift by an hour across a
        daylight-saving change, so a series keeps its own zone (`originalStartTimeZone`).
        """
        tz = event.get("originalStartTimeZone")
        if not tz or tz == "UTC":
            return event
        data = await self.src.send(
            "GET",
            f"users/{self.src_user}/events/{event['id']}",
            headers={"Prefer": f'outlook.timezone="{tz}"'},
        )
        return dict(data)

    async def _create(self, kind: PimKind, source: str, target: str, item: dict[str, Any]) -> None:
        sid = str(item["id"])
        if kind is EVENTS:
            item = await self._in_own_zone(item)
        self.ctx.journal.map_item(
            self.key,
            sid,
            source_folder_id=source,
            kind=kind.kind,
            status="importing",
            target_folder_id=target,
            subject=item.get("subject") or item.get("displayName") or item.get("title"),
            source_created=item.get("createdDateTime"),
        )
        body = {**_copyable(item, kind.fields), **kind.stamp(sid)}
        if kind is EVENTS and item.get("attendees"):
            self.counts["events_without_attendees"] += 1
        made = await self.tgt.send("POST", self._items_path(kind, self.tgt_user, target), json=body)
        if made is None:  # plan mode
            return
        if kind is EVENTS and item.get("type") == "seriesMaster":
            await self._reproduce_exceptions(item, str(made["id"]))
        if kind is TASKS:
            await self._sync_checklist(target, str(made["id"]), item, replace=False)
        self.ctx.journal.map_item(
            self.key,
            sid,
            status="copied",
            source_change_key=_version(item),
            target_item_id=made["id"],
            target_change_key=_version(made),
        )
        self.counts[f"{kind.kind}s_copied"] += 1
        self.counts["copied"] += 1

    async def _update(
        self, kind: PimKind, target: str, known: dict[str, Any], item: dict[str, Any]
    ) -> None:
        fields = kind.fields
        if kind is EVENTS and item.get("type") == "seriesMaster":
            # Changing a series' pattern or times drops its exceptions (Outlook's rule), so a
            # series is updated in its other properties only; *unverified* completeness.
            fields = SERIES_SAFE_FIELDS
        try:
            made = await self.tgt.send(
                "PATCH",
                kind.item(self.tgt_user, target, str(known["target_item_id"])),
                json=_copyable(item, fields),
            )
        except RemoteError as exc:
            if not update_conflict(exc):
                raise
            self.ctx.journal.map_item(
                self.key, known["source_item_id"], reason=f"not updated: {exc.message}"
            )
            self.counts["update_conflicts"] += 1
            self.conflicts.append(str(known["subject"] or known["source_item_id"]))
            return
        if kind is TASKS:
            await self._sync_checklist(target, str(known["target_item_id"]), item, replace=True)
        self.ctx.journal.map_item(
            self.key,
            known["source_item_id"],
            status="copied",
            source_change_key=_version(item),
            target_change_key=_version(made or {}),
        )
        self.counts["updated"] += 1

    async def _sync_checklist(
        self, target_list: str, task_id: str, source_task: dict[str, Any], *, replace: bool
    ) -> None:
        """The task's checklist in the target: its entries are created one by one
        (todotask-post-checklistitems); `replace` first deletes what the copy has, so a
        changed or half-copied checklist ends up exactly like the source's."""
        base = f"{TASKS.item(self.tgt_user, target_list, task_id)}/checklistItems"
        if replace:
            for entry in await self.tgt.list_all(base, {"$top": 100}):
                with contextlib.suppress(NotFound):
                    await self.tgt.send("DELETE", f"{base}/{entry['id']}")
        for entry in source_task.get("checklistItems") or []:
            await self.tgt.send("POST", base, json=_copyable(entry, CHECKLIST_FIELDS))

    async def _reproduce_exceptions(self, master: dict[str, Any], target_id_: str) -> None:
        """Exceptions PATCHed onto the target's occurrences; cancelled ones deleted."""
        start, end = _series_window(master)
        params = {"startDateTime": start, "endDateTime": end, "$top": 1000}
        source = await self.src.list_all(
            f"users/{self.src_user}/events/{master['id']}/instances", params
        )
        target = await self.tgt.list_all(
            f"users/{self.tgt_user}/events/{target_id_}/instances", params
        )
        by_start = {_instant(i.get("originalStart")): i for i in source}
        for occ in target:
            original = by_start.get(_instant(occ.get("originalStart")))
            path = f"users/{self.tgt_user}/events/{occ['id']}"
            if original is None:
                await self.tgt.send("DELETE", path)  # cancelled at the source
                self.counts["occurrences_cancelled"] += 1
            elif original.get("type") == "exception":
                await self.tgt.send("PATCH", path, json=_copyable(original, EXCEPTION_FIELDS))
                self.counts["exceptions_copied"] += 1

    async def _recover_interrupted(self, kind: PimKind, source: str, target: str) -> None:
        """Items marked `importing` by a pass that died: adopt the copy it made (found by
        identity, `_copies`), finishing what the create left undone (a series' exceptions,
        a task's checklist); copies made twice over are deleted; none found: pending."""
        stuck = [
            r
            for r in self.ctx.journal.mapped_items(self.key, folder_id=source, status="importing")
            if r["kind"] == kind.kind
        ]
        if not stuck:
            return
        taken = mapped_targets(self.ctx, self.key)
        originals = {
            str(i["id"]): i
            for i in await self.src.list_all(
                self._items_path(kind, self.src_user, source), _list_params(kind)
            )
        }
        for r in stuck:
            copies = await self._copies(kind, target, str(r["source_item_id"]), taken)
            original = originals.get(r["source_item_id"])
            if not copies:
                self.ctx.journal.map_item(self.key, r["source_item_id"], status="pending")
                continue
            found, *extra = copies
            for item_id in extra:
                with contextlib.suppress(NotFound):
                    await self.tgt.send("DELETE", kind.item(self.tgt_user, target, item_id))
            if kind is EVENTS and original and original.get("type") == "seriesMaster":
                await self._reproduce_exceptions(original, found)
            if kind is TASKS and original:  # the dead pass may have stopped mid-checklist
                await self._sync_checklist(target, found, original, replace=True)
            made = await self.tgt.send("GET", kind.item(self.tgt_user, target, found))
            taken.add(found)
            self.ctx.journal.map_item(
                self.key,
                r["source_item_id"],
                status="copied",
                target_item_id=found,
                target_change_key=_version(made or {}),
            )

    async def _copies(
        self, kind: PimKind, folder: str, source_id: str, taken: set[str]
    ) -> list[str]:
        """Unmapped items of the target folder stamped with `source_id`, by `$filter`; where
        the service refuses the filter (one Graph does not document, UNVERIFIED_FILTERS in
        sandbox/graph/outlook_items) every unmapped item's stamp is read instead. Either way
        an item counts only if its stamp, read back, names `source_id`."""
        path = self._items_path(kind, self.tgt_user, folder)
        try:
            listed = await self.tgt.list_all(
                path, {"$filter": kind.find(source_id), "$select": "id", "$top": 100}
            )
        except InvalidRequest:
            listed = await self.tgt.list_all(path, {"$select": "id", "$top": 100})
        out = []
        for item in listed:
            item_id = str(item["id"])
            if item_id not in taken and await self._stamp(kind, folder, item_id) == source_id:
                out.append(item_id)
        return out

    async def _stamp(self, kind: PimKind, folder: str, item_id: str) -> str | None:
        """The source id a target item is stamped with (None: not coexist's copy)."""
        path = kind.item(self.tgt_user, folder, item_id)
        try:
            if kind is TASKS:  # todotask-list-linkedresources
                links = await self.tgt.list_all(f"{path}/linkedResources", {"$top": 100})
                return next(
                    (str(x["externalId"]) for x in links if x.get("applicationName") == TASK_APP),
                    None,
                )
            item = await self.tgt.send(
                "GET", path, params={"$select": "id", "$expand": stamp_expand()}
            )
        except NotFound:
            return None
        return stamp_of(item)


def _series_window(master: dict[str, Any]) -> tuple[str, str]:
    """The span to expand a series over: its start to its range's end (or a horizon)."""
    start = _instant((master.get("start") or {}).get("dateTime"))
    assert start is not None
    rng = (master.get("recurrence") or {}).get("range") or {}
    if rng.get("type") == "endDate" and rng.get("endDate"):
        end = dt.datetime.fromisoformat(str(rng["endDate"])).replace(tzinfo=dt.UTC)
        end += dt.timedelta(days=2)
    else:
        end = max(start, dt.datetime.now(dt.UTC)) + NO_END_HORIZON
    begin = start - dt.timedelta(days=1)
    return begin.strftime("%Y-%m-%dT%H:%M:%SZ"), end.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the mover -------------------------------------------------------------------------------------


class ItemsMover:
    """`[migration] mover = "graph-items"`."""

    async def run(self, ctx: Context, subject: str, kind: str, window: Window) -> PassResult:
        from coexist.migrate import reconcile

        if kind == "cutover":
            window = Window()  # the cutover pass moves everything not yet moved
        src = Box(ctx.source.graph, subject, "")
        tgt = Box(ctx.target.graph, target_id(ctx, subject), "")
        target_tree = await mail_tree(tgt.graph, tgt.user_id)
        plan = await sync.map_folders(
            ctx,
            await mail_tree(src.graph, src.user_id),
            target_tree,
            lambda parent, name, path, cls: create_folder(tgt, parent, name, path, cls),
        )
        counts: Counter[str] = Counter()
        feed, by_id = MailDelta(src), {f.id: f for f in plan.source}
        for folder_id in plan.target_of:
            await sync.scan_folder(ctx, subject, feed, by_id[folder_id], kind=MAIL_CLASS)
        await resolve_moves(ctx, subject, tgt, plan, counts, _move_signature)
        mail = MailCopier(ctx, subject, src, tgt, counts)
        await mail.copy_pending(plan, window)
        await mail.update_changed()
        pim = PimCopier(ctx, subject, src.graph, tgt.graph, (src.user_id, tgt.user_id))
        await pim.run()
        counts.update(pim.counts)
        await handle_deletions(
            ctx, subject, counts, lambda r: delete_copy(tgt.graph, tgt.user_id, r)
        )
        totals = {f.id: f.total for f in await mail_tree(tgt.graph, tgt.user_id)}
        report = await reconcile.reconcile(ctx, subject, plan, totals)
        notes = []
        if counts["events_without_attendees"]:
            notes.append(
                f"{counts['events_without_attendees']} events copied without their attendees"
                " (Graph would invite them; graph-import-export keeps them)"
            )
        if refused := mail.conflicts + pim.conflicts:
            named = ", ".join(repr(n) for n in refused[:CONFLICTS_NAMED])
            more = (
                f" and {len(refused) - CONFLICTS_NAMED} more"
                if len(refused) > CONFLICTS_NAMED
                else ""
            )
            notes.append(
                f"{len(refused)} changes not applied (the copy was changed or removed in the"
                f" target, which wins): {named}{more}"
            )
        return reconcile.pass_result(ctx, kind, plan, report, counts, notes)


MOVERS["graph-items"] = ItemsMover()
