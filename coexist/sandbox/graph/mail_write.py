"""Graph mail writes: folder create, message create (JSON / MIME), `$value`, PATCH, move,
DELETE, attachments and large-attachment upload sessions.

Fidelity notes (learn.microsoft.com/graph/api/<page> unless said otherwise):

- Creating a message always makes a draft (user-post-messages: "Create a draft of a new
  message in either JSON or MIME format"), unless the JSON body sets the extended property
  PR_MESSAGE_FLAGS (`Integer 0x0E07`) without MSGFLAG_UNSENT (0x8): the way migration tools
  create non-draft items. MSGFLAG_UNSENT can only be set before the first save
  (MS-OXCMSG 2.2.1.6), so a later PATCH of 0x0E07 changes only the read bit.
  `receivedDateTime` / `sentDateTime` are read-only in Graph; the dates come from
  `SystemTime 0x0E06` (PR_MESSAGE_DELIVERY_TIME) and `SystemTime 0x0039`
  (PR_CLIENT_SUBMIT_TIME).
- MIME create: `Content-Type: text/plain`, the body is the base64 of the RFC 5322 message
  (outlook-send-mime-message). The stored MIME is the decoded bytes as sent, so `$value`
  returns them byte for byte.
- Requests carry at most 4 MB ("The maximum request length supported is 4MB.",
  microsoft-graph-docs#11806); larger attachments go through an upload session
  (3 MB..150 MB, outlook-large-attachments), whose pre-authenticated `uploadUrl` takes
  PUTs of up to 4 MB each (attachment-createuploadsession) with `Content-Range` and no
  Authorization: 200 + nextExpectedRanges ["{start}"]
  until the last range, then 201 with a `Location` header and no body.
- A move gives the item a new id, as Exchange does (message-move returns the moved
  message; its id differs from the source id).
- Every request is an Outlook request (per-app-per-mailbox budget and concurrency); the
  bytes a request uploads also pay the upload budget.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from .. import transport
from ..mailstore import (
    SENSITIVITIES,
    Attachment,
    Folder,
    FolderExists,
    Item,
    MailStore,
    Recipient,
    UploadSession,
    attach,
    iso,
    looks_like_id,
    utcnow,
)
from ..model import User
from ..web import HTTPFailure, ctx_of
from . import common, mail, odata
from .common import GraphJSON, fail
from .mail import file_attachment, folder_exists, invalid_request, outlook, store_of
from .mail import file_attachments as _file_attachments

MAIL_WRITE = ("Mail.ReadWrite",)

MAX_REQUEST_BYTES = 4 * 1024 * 1024
# Exchange Online's largest configurable message size (MaxSendSize/MaxReceiveSize up to
# 150 MB; the out-of-the-box default is 35 MB, attachment-createuploadsession "Tip"). The
# sandbox models mailboxes set up for migration, at 150 MB, as issue 4 specifies.
MAX_MESSAGE_BYTES = 150 * 1024 * 1024
# attachment-createuploadsession: "between 3 MB and 150 MB".
UPLOAD_SESSION_MIN = 3 * 1024 * 1024
UPLOAD_SESSION_MAX = 150 * 1024 * 1024
# *unverified*: Exchange's upload-session lifetime (the docs' example shows ~15 min ahead).
UPLOAD_SESSION_LIFETIME = dt.timedelta(minutes=15)

# PR_MESSAGE_FLAGS bits (MS-OXCMSG 2.2.1.6).
MSGFLAG_READ = 0x1
MSGFLAG_UNSENT = 0x8
# PidTagSensitivity values (MS-OXCMSG 2.2.1.13).
SENSITIVITY_BY_VALUE = dict(enumerate(SENSITIVITIES))
FLAG_STATUSES = ("notFlagged", "complete", "flagged")
IMPORTANCES = ("low", "normal", "high")
PATCHABLE = {
    "isread",
    "flag",
    "categories",
    "importance",
    "singlevalueextendedproperties",
    "inferenceclassification",
}


# -- errors (one place; *unverified* ones say so) --------------------------------------------------


def request_too_large(request: Request) -> HTTPFailure:
    # Body quoted in microsoft-graph-docs#11806; *unverified*: the status (413 assumed).
    return fail(413, "BadRequest", "The maximum request length supported is 4MB.", request)


def message_too_large(request: Request) -> HTTPFailure:
    # Body verbatim from microsoft-graph-docs#15579; *unverified*: the status (413 assumed).
    return fail(
        413, "ErrorMessageSizeExceeded", "The message exceeds the maximum supported size.", request
    )


def bad_mime_base64(request: Request) -> HTTPFailure:
    # user-post-messages / message-createforward: 400 "Invalid base64 string for MIME content."
    # *unverified*: the code.
    return fail(
        400,
        "ErrorMimeContentInvalidBase64String",
        "Invalid base64 string for MIME content.",
        request,
    )


def attachment_too_small(request: Request) -> HTTPFailure:
    # Code as reported by Softeria/ms-365-mcp-server#642; *unverified*: the message.
    return fail(
        400,
        "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
        "Attachment size must be greater than the minimum size.",
        request,
    )


# -- request plumbing ---------------------------------------------------------------------------


async def limited_body(request: Request, limit: int = MAX_REQUEST_BYTES) -> bytes:
    """The request body, refused (before reading it) when larger than Graph's 4 MB."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise request_too_large(request)
    raw = await request.body()
    if len(raw) > limit:
        raise request_too_large(request)
    return raw


def json_of(request: Request, raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError as exc:
        # Same wording as common.json_body (*unverified*).
        raise fail(400, "BadRequest", "Unable to read JSON request payload.", request) from exc
    if not isinstance(body, dict):
        raise fail(400, "BadRequest", "Unable to read JSON request payload.", request)
    return body


def _message(request: Request, store: MailStore, key: str, user: User) -> Item:
    """The message named in the path (checked against the folder in the path, if any)."""
    message_id = request.path_params["message_id"]
    if not looks_like_id(message_id):
        raise mail.malformed_id(request)
    item = store.get(key, user.id, message_id)
    folder_key = request.path_params.get("folder_id")
    in_folder = folder_key is None or (
        item is not None
        and item.folder_id == mail._folder(request, store, key, user, folder_key).id
    )
    if not in_folder:
        item = None
    if item is None:
        raise mail.item_not_found(request)
    return item


def _entity(request: Request, store: MailStore, item: Item, status: int = 200) -> GraphJSON:
    fragment = f"users('{request.path_params['user_id']}')/messages/$entity"
    body: dict[str, Any] = {"@odata.context": common.context_url(request, fragment)}
    body.update(mail.message_json(store, item, None, False))
    return GraphJSON(body, status_code=status)


# -- folders ------------------------------------------------------------------------------------


async def create_folder(request: Request) -> Response:
    raw = await limited_body(request)
    with outlook(request, MAIL_WRITE) as (_principal, key, user):
        body = {k.lower(): v for k, v in json_of(request, raw).items()}
        name = body.get("displayname")
        if not isinstance(name, str) or not name.strip():
            raise invalid_request(request, "The folder display name must be specified.")
        store = store_of(request)
        parent_key = request.path_params.get("folder_id", "msgfolderroot")
        parent = mail._folder(request, store, key, user, parent_key)
        search = _search_definition(request, store, key, user, body)
        try:
            made = store.create_folder(
                key, user.id, parent.id, name, is_hidden=bool(body.get("ishidden")), search=search
            )
        except FolderExists as exc:
            raise folder_exists(request) from exc
        fragment = f"users('{request.path_params['user_id']}')/mailFolders/$entity"
        out: dict[str, Any] = {"@odata.context": common.context_url(request, fragment)}
        out.update(mail.folder_json(made))
        return GraphJSON(out, status_code=201)


def _search_definition(
    request: Request, store: MailStore, key: str, user: User, body: dict[str, Any]
) -> dict[str, Any] | None:
    """A mailSearchFolder's definition when the create asks for one (mailsearchfolder-post:
    `@odata.type` "microsoft.graph.mailSearchFolder", sourceFolderIds, includeNestedFolders,
    filterQuery), source folders named by id or well-known name; None for a plain folder."""
    kind = str(body.get("@odata.type") or "").lstrip("#").lower()
    if kind != "microsoft.graph.mailsearchfolder":
        return None
    sources = body.get("sourcefolderids")
    if not isinstance(sources, list) or not sources:
        raise invalid_request(request, "The sourceFolderIds parameter is required.")
    ids = [mail._folder(request, store, key, user, str(f)).id for f in sources]
    text = body.get("filterquery")
    if text is not None:
        try:
            odata.compile_filter(
                mail.normalize_filter(str(text)),
                mail.FILTERABLE,
                "message",
                odata.SEARCH_FOLDER_FUNCTIONS,
            )
        except (odata.ODataQueryError, ValueError) as exc:
            raise common.query_failure(odata.syntax_error(str(text), 0), request) from exc
    return {
        "includeNestedFolders": bool(body.get("includenestedfolders")),
        "sourceFolderIds": ids,
        "filterQuery": str(text) if text is not None else None,
    }


# -- extended properties ------------------------------------------------------------------------

_PROP_ID = re.compile(r"^\s*(\w+)\s+0x([0-9a-fA-F]{1,4})\s*$")
# Type names as Graph spells them (resources/singlevaluelegacyextendedproperty, "id").
_PROP_TYPES = {
    t.lower(): t
    for t in ("Binary", "Boolean", "Currency", "Double", "Float", "Integer", "Long", "Short",
              "String", "SystemTime", "CLSID", "Object")
}  # fmt: skip


def property_id(raw: str) -> str:
    """A tagged property id in one spelling ('Integer 0xe07' -> 'Integer 0x0E07').

    Named properties ('String {guid} Name X') are kept as sent.
    """
    m = _PROP_ID.match(raw)
    if m is None:
        return raw.strip()
    kind = _PROP_TYPES.get(m.group(1).lower(), m.group(1))
    return f"{kind} 0x{int(m.group(2), 16):04X}"


def extended_properties(request: Request, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, list):
        raise invalid_request(request, "Invalid value for 'singleValueExtendedProperties'.")
    out: dict[str, str] = {}
    for p in value:
        pid = p.get("id") if isinstance(p, dict) else None
        if not isinstance(pid, str):
            raise invalid_request(request, "An extended property must have an 'id'.")
        out[property_id(pid)] = str(p.get("value") if p.get("value") is not None else "")
    return out


def _int_prop(request: Request, props: dict[str, str], pid: str) -> int | None:
    raw = props.get(pid)
    if raw is None:
        return None
    try:
        return int(raw, 0)
    except ValueError:
        raise invalid_request(request, f"Invalid value '{raw}' for property '{pid}'.") from None


def _time_prop(request: Request, props: dict[str, str], pid: str) -> dt.datetime | None:
    raw = props.get(pid)
    if raw is None:
        return None
    try:
        value = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise invalid_request(request, f"Invalid value '{raw}' for property '{pid}'.") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


# -- message properties from JSON ---------------------------------------------------------------


def _importance(request: Request, value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).lower()
    if text not in IMPORTANCES:
        # *unverified*: the OData enum error wording.
        raise invalid_request(request, f"Requested value '{value}' was not found.")
    return text


def _flag(request: Request, value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    status = value.get("flagStatus") if isinstance(value, dict) else None
    match = next((s for s in FLAG_STATUSES if s.lower() == str(status).lower()), None)
    if match is None:
        raise invalid_request(request, f"Requested value '{status}' was not found.")
    return {**value, "flagStatus": match}


def _categories(request: Request, value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise invalid_request(request, "Invalid value for 'categories'.")
    return list(value)


def _person(request: Request, value: Any) -> Recipient | None:
    if value is None:
        return None
    found = mail._recipients(request, [value], "from")
    return found[0] if found else None


def _address(r: Recipient) -> str:
    return formataddr((r.name, r.address)) if r.name and r.name != r.address else r.address


def build_mime(
    request: Request, body: dict[str, Any], user: User, sent: dt.datetime | None, sensitivity: str
) -> tuple[EmailMessage, list[Recipient]]:
    """The RFC 5322 form of a JSON message (Exchange would render it the same way on export)."""
    msg = EmailMessage()
    sender = _person(request, body.get("from")) or _person(request, body.get("sender"))
    sender = sender or Recipient(user.display_name, user.primary_smtp or "")
    msg["From"] = _address(sender)
    for header, field in (("To", "toRecipients"), ("Cc", "ccRecipients"), ("Reply-To", "replyTo")):
        people = mail._recipients(request, body.get(field), field)
        if people:
            msg[header] = ", ".join(_address(r) for r in people)
    msg["Subject"] = str(body.get("subject") or "")
    msg["Date"] = format_datetime(sent or utcnow())
    msg["Message-ID"] = str(body.get("internetMessageId") or transport.new_internet_message_id())
    importance = _importance(request, body.get("importance"))
    if importance and importance != "normal":
        msg["Importance"] = importance
    if sensitivity != "normal":
        msg["Sensitivity"] = {"confidential": "Company-Confidential"}.get(
            sensitivity, sensitivity.capitalize()
        )
    for name, value in mail._headers(request, body.get("internetMessageHeaders")):
        msg[name] = value
    content = body.get("body") if isinstance(body.get("body"), dict) else {}
    assert isinstance(content, dict)
    html = str(content.get("contentType") or "text").lower() == "html"
    msg.set_content(str(content.get("content") or ""), subtype="html" if html else "plain")
    for a in _file_attachments(request, body.get("attachments")):
        attach(msg, a.name, a.content_type, a.data, a.is_inline, a.content_id)
    bcc = mail._recipients(request, body.get("bccRecipients"), "bccRecipients")
    return msg, bcc


# -- message create -----------------------------------------------------------------------------


async def create_message(request: Request) -> Response:
    raw = await limited_body(request)
    with outlook(request, MAIL_WRITE) as (principal, key, user):
        mail.charge_upload(request, principal.app.client_id, user.id, len(raw))
        store = store_of(request)
        folder = mail._folder(
            request, store, key, user, request.path_params.get("folder_id", "drafts")
        )
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "text/plain":
            item = _create_from_mime(request, store, key, user, folder, raw)
        else:
            item = _create_from_json(request, store, key, user, folder, json_of(request, raw))
        return _entity(request, store, item, 201)


def _create_from_mime(
    request: Request, store: MailStore, key: str, user: User, folder: Folder, raw: bytes
) -> Item:
    try:
        mime = base64.b64decode(b"".join(raw.split()), validate=True)
    except (binascii.Error, ValueError):
        raise bad_mime_base64(request) from None
    if not mime.strip():
        raise bad_mime_base64(request)
    if len(mime) > MAX_MESSAGE_BYTES:
        raise message_too_large(request)
    # A MIME-created message is a draft; Outlook shows drafts as read.
    return store.insert_message(key, user.id, folder.id, mime, is_read=True, is_draft=True)


def _create_from_json(
    request: Request, store: MailStore, key: str, user: User, folder: Folder, body: dict[str, Any]
) -> Item:
    props = extended_properties(request, body.get("singleValueExtendedProperties"))
    flags = _int_prop(request, props, "Integer 0x0E07")
    received = _time_prop(request, props, "SystemTime 0x0E06")
    sent = _time_prop(request, props, "SystemTime 0x0039")
    sens_value = _int_prop(request, props, "Integer 0x0036")
    sensitivity = SENSITIVITY_BY_VALUE.get(sens_value or 0, "normal")
    msg, bcc = build_mime(request, body, user, sent, sensitivity)
    mime = msg.as_bytes()
    if len(mime) > MAX_MESSAGE_BYTES:
        raise message_too_large(request)
    is_draft = flags is None or bool(flags & MSGFLAG_UNSENT)
    is_read = bool(flags & MSGFLAG_READ) if flags is not None else True
    if body.get("isRead") is not None:
        is_read = bool(body.get("isRead"))
    # createdDateTime is when the store made the item, whatever delivery time it carries
    # (resources/message: "The date and time the message was created"); with the MIME
    # Exchange renders anew (so its size differs too), a copy never looks like its source.
    return store.insert_message(
        key, user.id, folder.id, mime, received=received, sent=sent, created=utcnow(),
        is_read=is_read, is_draft=is_draft, bcc=bcc, flag=_flag(request, body.get("flag")),
        categories=_categories(request, body.get("categories")) or (),
        importance=_importance(request, body.get("importance")), sensitivity=sensitivity,
        properties=props,
    )  # fmt: skip


# -- $value, PATCH, move, DELETE ----------------------------------------------------------------


async def get_value(request: Request) -> Response:
    with outlook(request, mail.MAIL_READ) as (principal, key, user):
        if not principal.roles & {"Mail.Read", "Mail.ReadWrite"}:
            raise mail.access_denied(request)  # MIME includes the body: not ReadBasic
        store = store_of(request)
        item = _message(request, store, key, user)
        # Streamed from SQLite in chunks; Graph answers `$value` as text/plain (outlook-get-mime-message).
        return StreamingResponse(store.open_mime(item.id), media_type="text/plain")


async def patch_message(request: Request) -> Response:
    raw = await limited_body(request)
    with outlook(request, MAIL_WRITE) as (_principal, key, user):
        store = store_of(request)
        item = _message(request, store, key, user)
        body = json_of(request, raw)
        unknown = [k for k in body if k.lower() not in PATCHABLE and not k.startswith("@")]
        if unknown:
            # *unverified*: Graph accepts subject/body/recipients on drafts; the sandbox does not.
            raise invalid_request(request, f"The property '{unknown[0]}' cannot be updated.")
        props = extended_properties(request, body.get("singleValueExtendedProperties"))
        is_read = body.get("isRead")
        flags = _int_prop(request, props, "Integer 0x0E07")
        if is_read is None and flags is not None:
            is_read = bool(flags & MSGFLAG_READ)  # MSGFLAG_UNSENT is fixed after first save
        sens = _int_prop(request, props, "Integer 0x0036")
        updated = store.update_message(
            key, user.id, item.id,
            is_read=bool(is_read) if is_read is not None else None,
            flag=_flag(request, body.get("flag")),
            categories=_categories(request, body.get("categories")),
            importance=_importance(request, body.get("importance")),
            sensitivity=SENSITIVITY_BY_VALUE.get(sens, "normal") if sens is not None else None,
            properties=props or None,
        )  # fmt: skip
        if updated is None:
            raise mail.item_not_found(request)
        return _entity(request, store, updated)


async def move_message(request: Request) -> Response:
    raw = await limited_body(request)
    with outlook(request, MAIL_WRITE) as (_principal, key, user):
        store = store_of(request)
        item = _message(request, store, key, user)
        body = {k.lower(): v for k, v in json_of(request, raw).items()}
        dest = body.get("destinationid")
        if not isinstance(dest, str) or not dest:
            raise invalid_request(request, "The destinationId parameter is required.")
        target = mail._folder(request, store, key, user, dest)
        moved = store.move_message(key, user.id, item.id, target.id)
        if moved is None:
            raise mail.item_not_found(request)
        # message-move: "If successful, this method returns 201 Created response code and a
        # message resource in the response body."
        return _entity(request, store, moved, 201)


async def delete_message(request: Request) -> Response:
    with outlook(request, MAIL_WRITE) as (_principal, key, user):
        store = store_of(request)
        item = _message(request, store, key, user)
        store.delete_message(key, user.id, item.id)
        return Response(status_code=204)


# -- attachments --------------------------------------------------------------------------------


def attachment_id(item: Item, index: int) -> str:
    """An attachment id derived from its message's id and its place among the parts."""
    raw = base64.urlsafe_b64decode(item.id.encode()) + b"\x12\x00" + index.to_bytes(2, "big")
    return base64.urlsafe_b64encode(raw).decode()


def attachment_json(item: Item, a: Attachment, with_content: bool = True) -> dict[str, Any]:
    """resources/fileattachment."""
    out: dict[str, Any] = {
        "@odata.type": "#microsoft.graph.fileAttachment",
        "@odata.mediaContentType": a.content_type,
        "id": attachment_id(item, a.index),
        "lastModifiedDateTime": item.modified,
        "name": a.name,
        "contentType": a.content_type,
        "size": a.size,
        "isInline": a.is_inline,
        "contentId": a.content_id,
        "contentLocation": None,
    }
    if with_content:
        out["contentBytes"] = base64.b64encode(a.data).decode()
    return out


async def list_attachments(request: Request) -> Response:
    with outlook(request, mail.MAIL_READ) as (principal, key, user):
        if not principal.roles & {"Mail.Read", "Mail.ReadWrite"}:
            raise mail.access_denied(request)
        store = store_of(request)
        item = _message(request, store, key, user)
        values = [attachment_json(item, a) for a in store.attachments(item.id)]
        fragment = f"users('{request.path_params['user_id']}')/messages('{item.id}')/attachments"
        return GraphJSON({"@odata.context": common.context_url(request, fragment), "value": values})


async def get_attachment(request: Request) -> Response:
    with outlook(request, mail.MAIL_READ) as (principal, key, user):
        if not principal.roles & {"Mail.Read", "Mail.ReadWrite"}:
            raise mail.access_denied(request)
        store = store_of(request)
        item = _message(request, store, key, user)
        wanted = request.path_params["attachment_id"]
        for a in store.attachments(item.id):
            if attachment_id(item, a.index) == wanted:
                fragment = (
                    f"users('{request.path_params['user_id']}')/messages('{item.id}')"
                    "/attachments/$entity"
                )
                body: dict[str, Any] = {"@odata.context": common.context_url(request, fragment)}
                body.update(attachment_json(item, a))
                return GraphJSON(body)
        raise mail.item_not_found(request)


async def add_attachment(request: Request) -> Response:
    raw = await limited_body(request)
    with outlook(request, MAIL_WRITE) as (principal, key, user):
        mail.charge_upload(request, principal.app.client_id, user.id, len(raw))
        store = store_of(request)
        item = _message(request, store, key, user)
        a = file_attachment(request, json_of(request, raw))
        if item.size + a.size > MAX_MESSAGE_BYTES:
            raise message_too_large(request)
        added = store.add_attachment(
            key, user.id, item.id, a.name, a.content_type, a.data, a.is_inline, a.content_id
        )
        if added is None:
            raise mail.item_not_found(request)
        updated, stored = added
        fragment = (
            f"users('{request.path_params['user_id']}')/messages('{updated.id}')"
            "/attachments/$entity"
        )
        body: dict[str, Any] = {"@odata.context": common.context_url(request, fragment)}
        body.update(attachment_json(updated, stored))
        return GraphJSON(body, status_code=201)


# -- upload sessions ----------------------------------------------------------------------------


def _upload_url(request: Request, user: User, tenant_id: str, s: UploadSession) -> str:
    """Shaped like Outlook's (outlook-large-attachments), on the sandbox host."""
    base = ctx_of(request).base_url.rstrip("/")
    return (
        f"{base}/api/v2.0/Users('{user.id}@{tenant_id}')/Messages('{s.item_id}')"
        f"/AttachmentSessions('{s.id}')?authtoken={s.token}"
    )


async def create_upload_session(request: Request) -> Response:
    raw = await limited_body(request)
    with outlook(request, MAIL_WRITE) as (principal, key, user):
        store = store_of(request)
        item = _message(request, store, key, user)
        body = {k.lower(): v for k, v in json_of(request, raw).items()}
        spec = body.get("attachmentitem")
        if not isinstance(spec, dict):
            raise invalid_request(request, "The AttachmentItem parameter is required.")
        size = spec.get("size")
        if not isinstance(size, int) or size < 0:
            raise invalid_request(request, "The attachment size must be specified.")
        if size < UPLOAD_SESSION_MIN:
            raise attachment_too_small(request)
        if size > UPLOAD_SESSION_MAX or item.size + size > MAX_MESSAGE_BYTES:
            raise message_too_large(request)
        session = store.create_upload_session(
            key, user.id, item.id, principal.app.client_id,
            name=str(spec.get("name") or ""),
            content_type=str(spec.get("contentType") or "application/octet-stream"),
            size=size, expires=utcnow() + UPLOAD_SESSION_LIFETIME,
            is_inline=bool(spec.get("isInline")),
            content_id=spec.get("contentId") if isinstance(spec.get("contentId"), str) else None,
        )  # fmt: skip
        out = {
            "@odata.context": f"{common.base(request)}/$metadata#microsoft.graph.uploadSession",
            "uploadUrl": _upload_url(request, user, principal.tenant.tenant_id, session),
            "expirationDateTime": session.expires,
            "nextExpectedRanges": ["0-"],
        }
        return GraphJSON(out, status_code=201)


_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+)\s*$")


def _session(request: Request) -> UploadSession:
    """The session the pre-authenticated URL names; its `authtoken` is the only credential."""
    store = store_of(request)
    found = store.upload_session(request.path_params["session_id"])
    token = request.query_params.get("authtoken")
    expired = found is not None and found.expires < iso(utcnow())
    if found is None or token != found.token or expired:
        # *unverified*: what Outlook answers for an unknown or expired session.
        raise mail.item_not_found(request)
    return found


async def upload_range(request: Request) -> Response:
    session = _session(request)
    with mail.outlook_slot(request, session.owner, session.mailbox):
        m = _RANGE.match(request.headers.get("content-range", ""))
        if m is None:
            raise invalid_request(request, "The Content-Range header is missing or malformed.")
        start, end, total = (int(g) for g in m.groups())
        if total != session.size or start != session.received or end < start or end >= total:
            # Ranges must come in order ("You must upload bytes in a file in order").
            raise invalid_request(
                request, f"The Content-Range is not the next expected range ({session.received})."
            )
        # attachment-createuploadsession: "iteratively upload ranges of bytes (up to 4 MB
        # each time)": a larger range is refused like any request over 4 MB.
        data = await limited_body(request)
        if len(data) != end - start + 1:
            raise invalid_request(request, "The body length does not match the Content-Range.")
        mail.charge_upload(request, session.owner, session.mailbox, len(data))
        store = store_of(request)
        received = store.append_upload(session.id, data)
        if received < session.size:
            return _session_progress(request, session, received)
        return _finish_upload(request, store, session)


def _session_progress(request: Request, session: UploadSession, received: int) -> Response:
    # Outlook v2.0 casing, as outlook-large-attachments shows it ("ExpirationDateTime").
    base = ctx_of(request).base_url.rstrip("/")
    body = {
        "@odata.context": f"{base}/api/v2.0/$metadata#Users('{session.mailbox}')/Messages("
        f"'{session.item_id}')/AttachmentSessions/$entity",
        "ExpirationDateTime": session.expires,
        "nextExpectedRanges": [str(received)],
    }
    return GraphJSON(body)


def _finish_upload(request: Request, store: MailStore, session: UploadSession) -> Response:
    data = store.take_upload(session.id)
    item = store.get(session.tenant, session.mailbox, session.item_id)
    if item is None:
        raise mail.item_not_found(request)
    if item.size + len(data) > MAX_MESSAGE_BYTES:
        raise message_too_large(request)
    added = store.add_attachment(
        session.tenant, session.mailbox, item.id, session.name, session.content_type, data,
        session.is_inline, session.content_id,
    )  # fmt: skip
    if added is None:
        raise mail.item_not_found(request)
    updated, stored = added
    base = ctx_of(request).base_url.rstrip("/")
    location = (
        f"{base}/api/v2.0/Users('{session.mailbox}')/Messages('{updated.id}')"
        f"/Attachments('{attachment_id(updated, stored.index)}')"
    )
    return Response(status_code=201, headers={"Location": location})


async def cancel_upload(request: Request) -> Response:
    session = _session(request)
    with mail.outlook_slot(request, session.owner, session.mailbox):
        store_of(request).delete_upload_session(session.id)
        return Response(status_code=204)


def routes() -> list[BaseRoute]:
    base = "/v1.0/users/{user_id}"
    out: list[BaseRoute] = [
        Route(f"{base}/mailFolders", create_folder, methods=["POST"]),
        Route(f"{base}/mailFolders/{{folder_id}}/childFolders", create_folder, methods=["POST"]),
        Route(f"{base}/messages", create_message, methods=["POST"]),
        Route(f"{base}/mailFolders/{{folder_id}}/messages", create_message, methods=["POST"]),
        Route(
            "/api/v2.0/Users('{owner}')/Messages('{message_id}')/AttachmentSessions('{session_id}')",
            upload_range,
            methods=["PUT"],
        ),
        Route(
            "/api/v2.0/Users('{owner}')/Messages('{message_id}')/AttachmentSessions('{session_id}')",
            cancel_upload,
            methods=["DELETE"],
        ),
    ]
    for prefix in (f"{base}/messages", f"{base}/mailFolders/{{folder_id}}/messages"):
        item = f"{prefix}/{{message_id}}"
        out += [
            Route(item, patch_message, methods=["PATCH"]),
            Route(item, delete_message, methods=["DELETE"]),
            Route(f"{item}/$value", get_value, methods=["GET"]),
            Route(f"{item}/move", move_message, methods=["POST"]),
            Route(f"{item}/attachments", list_attachments, methods=["GET"]),
            Route(f"{item}/attachments", add_attachment, methods=["POST"]),
            Route(
                f"{item}/attachments/createUploadSession", create_upload_session, methods=["POST"]
            ),
            Route(
                f"{item}/attachments/microsoft.graph.createUploadSession",
                create_upload_session,
                methods=["POST"],
            ),
            Route(f"{item}/attachments/{{attachment_id}}", get_attachment, methods=["GET"]),
        ]
    return out
