"""Graph mail: `sendMail`, messages (list / get, $filter, $select, $orderby, $top/$skip), mailFolders.

Everything here is an Outlook resource, so it differs from the directory
modules on purpose, as Graph does:

- Authorization failures are Exchange's `403 ErrorAccessDenied` "Access is
  denied. Check credentials and try again." (not the directory's
  Authorization_RequestDenied).
- Throttling is per app per mailbox (`outlook_requests` bucket keyed by
  (client id, mailbox)) plus 4 concurrent requests per app per mailbox:
  over it, `429 ApplicationThrottled` "Application is over its
  MailboxConcurrency limit." (learn.microsoft.com/graph/throttling-limits,
  "Outlook service limits"; the body as quoted in public issues, e.g.
  magodo/terraform-provider-outlook#21, calcom/cal.com#343).
- Paging is `$top` (default 10, 1-1000) + `$skip` in `@odata.nextLink`
  (user-list-messages: "The default page size is 10 messages. You can use
  $top to customize the page size, within the range of 1 and 1000").
- A user without an Exchange Online mailbox, or whose new mailbox Graph does not
  serve yet (`users.mailbox_served`): 404 MailboxNotEnabledForRESTAPI.
  An unknown user: 404 ErrorInvalidUser "The requested user '<id>' is invalid."
  (microsoft-graph-docs issues 4097 / 7909).

`sendMail` delivers synchronously here (see `transport`); Exchange Online
delivers asynchronously, so callers must poll the destination.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .. import transport
from ..identity import Principal
from ..mailstore import Attachment, Folder, Item, MailStore, Recipient, body_of, looks_like_id
from ..model import Tenant, User, World
from ..web import HTTPFailure, ctx_of, graph_error, graph_principal, graph_throttled
from . import common, odata, users
from .common import GraphJSON, fail
from .outlook_items import invalid_value, unknown_property

# -- permissions (learn.microsoft.com/graph/api/<operation>, "Permissions", application) ----------
MAIL_SEND = ("Mail.Send",)
MAIL_READ = ("Mail.ReadBasic.All", "Mail.Read", "Mail.ReadWrite")
# Mail.ReadBasic.All: "read email ... except for body, previewBody, attachments and any
# extended properties" (permissions reference). *unverified*: Graph omits those properties
# rather than failing when only ReadBasic is held.
BASIC_ONLY_HIDDEN = ("body", "bodyPreview", "uniqueBody", "internetMessageHeaders")
FOLDER_READ = ("Mail.ReadBasic.All", "Mail.ReadBasic", "Mail.Read", "Mail.ReadWrite")

MESSAGE_PAGE_DEFAULT = 10
MESSAGE_PAGE_MAX = 1000

MAIL_STORE_KEY = "mail"  # SandboxContext.extra key holding the MailStore


def store_of(request: Request) -> MailStore:
    store: MailStore = ctx_of(request).extra[MAIL_STORE_KEY]
    return store


# -- errors (one place; *unverified* ones say so) --------------------------------------------------


def access_denied(request: Request) -> HTTPFailure:
    # Outlook endpoints' 403 body (widely quoted, e.g. microsoft-graph-docs issues on Mail.Send).
    return fail(
        403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.", request
    )


def invalid_user(request: Request, key: str) -> HTTPFailure:
    return fail(404, "ErrorInvalidUser", f"The requested user '{key}' is invalid.", request)


def item_not_found(request: Request) -> HTTPFailure:
    return fail(
        404, "ErrorItemNotFound", "The specified object was not found in the store.", request
    )


def malformed_id(request: Request) -> HTTPFailure:
    return fail(400, "ErrorInvalidIdMalformed", "Id is malformed.", request)


def invalid_recipient(request: Request, address: str) -> HTTPFailure:
    # Verbatim (microsoftgraph/ruby-connect-rest-sample#15).
    return fail(
        400,
        "ErrorInvalidRecipients",
        f"At least one recipient isn't valid., Recipient \"{address}\" isn't resolved. All "
        "recipients must be resolved before a message can be submitted.",
        request,
    )


def no_recipients(request: Request) -> HTTPFailure:
    # Verbatim (microsoftgraph/msgraph-sdk-dotnet#1891).
    return fail(
        400,
        "ErrorInvalidRecipients",
        "At least one recipient is not valid., A message can't be sent because it contains no "
        "recipients.",
        request,
    )


def invalid_request(request: Request, message: str) -> HTTPFailure:
    # *unverified*: the code and wording for a body Graph rejects as malformed, on every face
    # that uses it: sendMail, message and folder writes (while deserializing), and the
    # mailbox import/export API (importItem, folder create/update, item delete).
    return fail(400, "ErrorInvalidRequest", message, request)


def folder_exists(request: Request) -> HTTPFailure:
    # Exchange's code for a folder with a sibling of the same name (EWS ResponseCode
    # ErrorFolderExists, "A folder with the specified name already exists."), which Graph
    # passes through; the mail folder, calendar, contact folder and mailbox import/export
    # faces all answer it. *unverified*: the status (409; some clients report 400).
    return fail(
        409, "ErrorFolderExists", "A folder with the specified name already exists.", request
    )


def bad_top(raw: str) -> odata.ODataQueryError:
    # *unverified*: what Graph answers for a message $top outside 1..1000.
    return odata.ODataQueryError(
        "ErrorInvalidUrlQuery",
        f"The value '{raw}' of query parameter '$top' is out of range (1-{MESSAGE_PAGE_MAX}).",
    )


def inefficient_filter() -> odata.ODataQueryError:
    # user-list-messages, "Using filter and orderby in the same query": properties in $orderby
    # must also appear first, in the same order, in $filter, or this error is returned.
    return odata.ODataQueryError(
        "InefficientFilter", "The restriction or sort order is too complex for this operation."
    )


def mailbox_concurrency(request: Request) -> HTTPFailure:
    return HTTPFailure(
        graph_error(
            429,
            "ApplicationThrottled",
            "Application is over its MailboxConcurrency limit.",
            request,
            retry_after=1,
        )
    )


# -- admission ----------------------------------------------------------------------------------


def tenant_key(world: World, tenant: Tenant) -> str:
    return next(k for k, t in world.tenants.items() if t is tenant)


def _authorize(request: Request, roles: tuple[str, ...]) -> Principal:
    principal = graph_principal(request, ())  # token only; Outlook has its own 403
    if not principal.roles & set(roles):
        raise access_denied(request)
    return principal


def _mailbox_user(request: Request, principal: Principal) -> tuple[str, User]:
    """(tenant key, mailbox user) named in the path, or Graph's error for it."""
    world = ctx_of(request).world
    key = request.path_params["user_id"]
    with world.lock:
        tenant = principal.tenant
        tenant.settle()
        user = users.find_user(tenant, key)
        if user is None or not common.visible(user, common.now()):
            raise invalid_user(request, key)
        if not users.mailbox_served(user, common.now()):
            raise fail(404, *users.NO_MAILBOX, request)
        return tenant_key(world, tenant), user


@contextmanager
def outlook(request: Request, roles: tuple[str, ...]) -> Iterator[tuple[Principal, str, User]]:
    """Admit one Outlook request: token, role, mailbox, per-mailbox rate and concurrency."""
    principal = _authorize(request, roles)
    key, user = _mailbox_user(request, principal)
    with outlook_slot(request, principal.app.client_id, user.id):
        yield principal, key, user


@contextmanager
def outlook_slot(request: Request, client_id: str, mailbox: str) -> Iterator[None]:
    """One request against the per-app-per-mailbox request budget and concurrency limit."""
    limiter = ctx_of(request).limiter
    bucket_key = (client_id, mailbox)
    wait = limiter.admit("outlook_requests", bucket_key)
    if wait is not None:
        raise HTTPFailure(graph_throttled(request, wait))
    with limiter.concurrency(bucket_key) as admitted:
        if not admitted:
            raise mailbox_concurrency(request)
        yield


def charge_upload(request: Request, client_id: str, mailbox: str, nbytes: int) -> None:
    """Take `nbytes` from the upload budget (150 MB / 5 min per app per mailbox) or 429.

    *unverified*: which error body Graph sends for the upload limit; the sandbox sends the
    same 429 TooManyRequests + Retry-After as for the request budget.
    """
    wait = ctx_of(request).limiter.admit(
        "outlook_upload_bytes", (client_id, mailbox), cost=float(nbytes)
    )
    if wait is not None:
        raise HTTPFailure(graph_throttled(request, wait))


# -- sendMail -----------------------------------------------------------------------------------


def _recipients(request: Request, value: Any, field: str) -> list[Recipient]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid_request(request, f"Invalid value for '{field}'.")
    out = []
    for entry in value:
        addr = entry.get("emailAddress") if isinstance(entry, dict) else None
        address = addr.get("address") if isinstance(addr, dict) else None
        if not isinstance(address, str) or not address.strip():
            raise invalid_recipient(request, str(address or ""))
        name = addr.get("name") if isinstance(addr, dict) else None
        out.append(Recipient(str(name or address), address.strip()))
    return out


def _headers(request: Request, value: Any) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid_request(request, "Invalid value for 'internetMessageHeaders'.")
    out = []
    for h in value:
        name = h.get("name") if isinstance(h, dict) else None
        if not isinstance(name, str) or not name.lower().startswith("x-"):
            # Graph only accepts custom x- headers (resources/internetmessageheader);
            # *unverified* code and wording.
            raise fail(
                400,
                "InvalidInternetMessageHeader",
                f"The internet message header name '{name}' should start with 'x-' or 'X-'.",
                request,
            )
        out.append((name, str(h.get("value") or "")))
    return out


def _flag(value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value)


# graph.fileAttachment's properties in the v1.0 CSDL (its own, attachment's and entity's):
# a request naming any other is refused, as OData refuses an undeclared property.
FILE_ATTACHMENT_PROPERTIES = frozenset(
    {
        "id",
        "contentType",
        "isInline",
        "lastModifiedDateTime",
        "name",
        "size",
        "contentBytes",
        "contentId",
        "contentLocation",
    }
)


def file_attachments(request: Request, value: Any) -> list[Attachment]:
    """A message's `attachments` (sendMail, message create): fileAttachments only."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid_request(request, "Invalid value for 'attachments'.")
    return [file_attachment(request, a, n) for n, a in enumerate(value)]


def file_attachment(request: Request, value: Any, index: int = 0) -> Attachment:
    """A fileAttachment payload (the only attachment type the sandbox stores), checked
    against the contract: declared properties only, each of its declared type."""
    if not isinstance(value, dict):
        raise invalid_request(request, "Invalid attachment.")
    kind = str(value.get("@odata.type") or "").lstrip("#").lower()
    if kind != "microsoft.graph.fileattachment":
        # *unverified*: item and reference attachments are not modelled; Graph needs the type.
        raise invalid_request(
            request, "The attachment type must be '#microsoft.graph.fileAttachment'."
        )
    for key in value:
        if not key.startswith("@odata.") and key not in FILE_ATTACHMENT_PROPERTIES:
            raise unknown_property(request, key, "fileAttachment")
    for key in ("name", "contentType", "contentId", "contentLocation", "contentBytes"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise invalid_value(request, key)
    if "isInline" in value and not isinstance(value["isInline"], bool):
        raise invalid_value(request, "isInline")  # Edm.Boolean, Nullable="false"
    try:
        data = base64.b64decode(str(value.get("contentBytes") or ""), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_request(request, "Invalid value for 'contentBytes'.") from None
    return Attachment(
        index=index,
        name=str(value.get("name") or ""),
        content_type=str(value.get("contentType") or "application/octet-stream"),
        is_inline=bool(value.get("isInline")),
        content_id=value.get("contentId") if isinstance(value.get("contentId"), str) else None,
        data=data,
    )


def outgoing(request: Request, body: dict[str, Any]) -> transport.Outgoing:
    """The sendMail payload as a transport.Outgoing, validated as Graph validates it."""
    # Action parameter names are matched case-insensitively: msgraph-sdk-python sends
    # "Message" / "SaveToSentItems" (users/item/send_mail/send_mail_post_request_body.py),
    # the docs show "message" / "saveToSentItems", and Graph accepts both.
    body = {k.lower(): v for k, v in body.items()}
    message = body.get("message")
    if not isinstance(message, dict):
        raise invalid_request(request, "The 'message' parameter is required.")
    content = message.get("body") or {}
    if not isinstance(content, dict):
        raise invalid_request(request, "Invalid value for 'body'.")
    body_type = str(content.get("contentType") or "text").lower()
    out = transport.Outgoing(
        subject=str(message.get("subject") or ""),
        body=str(content.get("content") or ""),
        body_type="html" if body_type == "html" else "text",
        to=_recipients(request, message.get("toRecipients"), "toRecipients"),
        cc=_recipients(request, message.get("ccRecipients"), "ccRecipients"),
        bcc=_recipients(request, message.get("bccRecipients"), "bccRecipients"),
        headers=_headers(request, message.get("internetMessageHeaders")),
        importance=str(message.get("importance") or "normal").lower(),
        save_to_sent=_flag(body.get("savetosentitems"), True),
        attachments=file_attachments(request, message.get("attachments")),
    )
    if not (out.to or out.cc or out.bcc):
        raise no_recipients(request)
    return out


async def send_mail(request: Request) -> Response:
    payload = await common.json_body(request)
    with outlook(request, MAIL_SEND) as (_principal, _key, user):
        out = outgoing(request, payload)
        try:
            transport.submit(
                ctx_of(request).world,
                store_of(request),
                user.primary_smtp,
                out,
                sender_name=user.display_name,
            )
        except transport.SubmitError as exc:
            raise invalid_recipient(request, exc.address) from exc
        except ValueError as exc:
            raise invalid_recipient(request, str(exc)) from exc
    # "If successful, this method returns 202 Accepted response code. It doesn't return
    # anything in the response body." (user-sendmail)
    return Response(status_code=202)


# -- message JSON ---------------------------------------------------------------------------------


def _person(r: Recipient | None) -> dict[str, Any] | None:
    return r.to_graph() if r is not None else None


def _conversation_index(item: Item) -> str:
    return base64.b64encode(
        hashlib.sha256((item.conversation_id or "").encode()).digest()[:22]
    ).decode()


def _web_link(item: Item) -> str:
    return (
        "https://outlook.office365.com/owa/?ItemID="
        + quote(item.id, safe="")
        + "&exvsurl=1&viewmodel=ReadMessageItem"
    )


class _Lazy:
    """Per-item values that need the MIME (parsed once, only when asked for)."""

    def __init__(self, store: MailStore, item: Item) -> None:
        self.store, self.item = store, item
        self._body: tuple[str, str] | None = None
        self._headers: list[dict[str, str]] | None = None

    def body(self) -> dict[str, str]:
        if self._body is None:
            self._body = body_of(self.store.message(self.item.id))
        return {"contentType": self._body[0], "content": self._body[1]}

    def headers(self) -> list[dict[str, str]]:
        if self._headers is None:
            msg = self.store.headers(self.item.id)
            self._headers = [{"name": k, "value": str(v)} for k, v in msg.items()]
        return self._headers


# Graph property -> value (resources/message). Order is the order Graph serializes.
PROPERTIES: dict[str, Callable[[Item, _Lazy], Any]] = {
    "id": lambda i, _: i.id,
    "createdDateTime": lambda i, _: i.created,
    "lastModifiedDateTime": lambda i, _: i.modified,
    "changeKey": lambda i, _: i.change_key,
    "categories": lambda i, _: list(i.categories),
    "receivedDateTime": lambda i, _: i.received,
    "sentDateTime": lambda i, _: i.sent,
    "hasAttachments": lambda i, _: i.has_attachments,
    "internetMessageId": lambda i, _: i.internet_message_id,
    "subject": lambda i, _: i.subject,
    "bodyPreview": lambda i, _: i.body_preview,
    "importance": lambda i, _: i.importance,
    "parentFolderId": lambda i, _: i.folder_id,
    "conversationId": lambda i, _: i.conversation_id,
    "conversationIndex": lambda i, _: _conversation_index(i),
    "isDeliveryReceiptRequested": lambda i, _: False,
    "isReadReceiptRequested": lambda i, _: False,
    "isRead": lambda i, _: i.is_read,
    "isDraft": lambda i, _: i.is_draft,
    "webLink": lambda i, _: _web_link(i),
    "inferenceClassification": lambda i, _: "focused",
    "body": lambda _, lazy: lazy.body(),
    "sender": lambda i, _: _person(i.sender),
    "from": lambda i, _: _person(i.from_),
    "toRecipients": lambda i, _: [r.to_graph() for r in i.to],
    "ccRecipients": lambda i, _: [r.to_graph() for r in i.cc],
    "bccRecipients": lambda i, _: [r.to_graph() for r in i.bcc],
    "replyTo": lambda i, _: [r.to_graph() for r in i.reply_to],
    "flag": lambda i, _: dict(i.flag),
    # Only with $select (not in the default set), as Graph does.
    "internetMessageHeaders": lambda _, lazy: lazy.headers(),
    "uniqueBody": lambda _, lazy: lazy.body(),
}
DEFAULT_SELECT = [p for p in PROPERTIES if p not in ("internetMessageHeaders", "uniqueBody")]
KNOWN = list(PROPERTIES)
# What $filter may reference: row properties only (no MIME parse per row), and the extended
# properties (`singleValueExtendedProperties/Any(ep: ep/id eq '..' and ep/value eq '..')`,
# singlevaluelegacyextendedproperty-get), which Graph filters on but never lists unasked.
EXTENDED = "singleValueExtendedProperties"
FILTERABLE = [
    *(p for p in KNOWN if p not in ("body", "uniqueBody", "internetMessageHeaders")),
    EXTENDED,
]
ORDERABLE = {
    "receivedDateTime": "received",
    "sentDateTime": "sent",
    "createdDateTime": "created",
    "lastModifiedDateTime": "modified",
    "subject": "subject",
}


class MessageRecord(Mapping[str, Any]):
    """An item seen as its Graph JSON for $filter, computing each property only when read."""

    __slots__ = ("item", "lazy")

    def __init__(self, item: Item, lazy: _Lazy) -> None:
        self.item, self.lazy = item, lazy

    def __getitem__(self, key: str) -> Any:
        if key == EXTENDED:
            return odata.extended_values(self.item.properties)
        return PROPERTIES[key](self.item, self.lazy)

    def __iter__(self) -> Iterator[str]:
        return iter(FILTERABLE)

    def __len__(self) -> int:
        return len(FILTERABLE)


# PidTagMessageSize (MS-OXPROPS 2.797): computed by the store, never set by a client ("the
# sum, in bytes, of the sizes of all properties on a message object", MAPI canonical
# property), readable as an extended property like any MAPI property by its tag.
MESSAGE_SIZE_PROP = "Integer 0x0E08"


def message_size(store_key: str, stored: int) -> int:
    """PR_MESSAGE_SIZE as the target store computes it: the content plus per-item overhead
    that differs from store to store (so a copy's size is not its source's)."""
    return stored + 256 + zlib.crc32(store_key.encode()) % 1024


def _with_computed(item: Item) -> dict[str, str]:
    """The item's extended properties plus those the store computes (served on `$expand`
    only: Graph never lists extended properties unasked)."""
    return {**item.properties, MESSAGE_SIZE_PROP: str(message_size(item.id, item.size))}


def message_json(
    store: MailStore,
    item: Item,
    select: list[str] | None,
    basic_only: bool,
    extended: str | None = None,
) -> dict[str, Any]:
    """resources/message; `extended` names the extended property an
    `$expand=singleValueExtendedProperties($filter=id eq '...')` asked for (present only when
    the item has it; Mail.ReadBasic.All reads no extended properties)."""
    lazy = _Lazy(store, item)
    # Outlook always returns the etag and id, even when $select omits them.
    props = ["id", *[p for p in select if p != "id"]] if select else DEFAULT_SELECT
    if basic_only:
        props = [p for p in props if p not in BASIC_ONLY_HIDDEN]
    out: dict[str, Any] = {"@odata.etag": f'W/"{item.change_key}"'}
    out.update({p: PROPERTIES[p](item, lazy) for p in props})
    found = odata.expanded_properties(_with_computed(item), extended) if extended else []
    if found and not basic_only:
        out[EXTENDED] = found
    return out


# -- query options ------------------------------------------------------------------------------

_QUOTED = re.compile(r"'(?:[^']|'')*'")
_DATETIME = re.compile(
    r"(?<![\w'])(\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:\d{2})?)(?![\w'])"
)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _unquoted(text: str) -> Iterator[tuple[bool, str]]:
    """(is_quoted, segment) pieces of a $filter."""
    pos = 0
    for m in _QUOTED.finditer(text):
        yield False, text[pos : m.start()]
        yield True, m.group(0)
        pos = m.end()
    yield False, text[pos:]


def _datetime_literal(m: re.Match[str]) -> str:
    """An OData DateTimeOffset literal as the quoted string the store compares against.

    Stored times are whole seconds, so the literal is floored to the second
    (`ge` stays inclusive of messages received within the same second).
    """
    raw = m.group(1)
    value = dt.datetime.fromisoformat(raw if "T" in raw else raw + "T00:00:00+00:00")
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return "'" + value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") + "'"


def normalize_filter(text: str) -> str:
    """Quote unquoted DateTimeOffset literals so the shared OData parser can compare them."""
    parts = []
    for quoted, seg in _unquoted(text):
        parts.append(seg if quoted else _DATETIME.sub(_datetime_literal, seg))
    return "".join(parts)


def filter_properties(text: str) -> list[str]:
    """Message properties a $filter references, in order of first appearance."""
    by_lower = {k.lower(): k for k in FILTERABLE}
    seen: list[str] = []
    for quoted, seg in _unquoted(text):
        if quoted:
            continue
        for m in _IDENT.finditer(seg):
            # Only path heads: skip a name right after '/' (emailAddress/address).
            if m.start() > 0 and seg[m.start() - 1] == "/":
                continue
            prop = by_lower.get(m.group(0).lower())
            if prop is not None and prop not in seen:
                seen.append(prop)
    return seen


def _top(raw: str | None) -> int:
    if raw is None:
        return MESSAGE_PAGE_DEFAULT
    try:
        top = int(raw)
    except ValueError:
        raise bad_top(raw) from None
    if not 1 <= top <= MESSAGE_PAGE_MAX:
        raise bad_top(raw)
    return top


def _skip(raw: str | None) -> int:
    try:
        skip = int(raw) if raw is not None else 0
    except ValueError:
        skip = -1
    if skip < 0:
        # *unverified* wording.
        raise odata.ODataQueryError("ErrorInvalidUrlQuery", f"Invalid value '{raw}' for '$skip'.")
    return skip


class MessageQuery:
    """Parsed $top/$skip/$select/$filter/$orderby/$count for a message collection."""

    def __init__(self, request: Request) -> None:
        q = common.query(request)
        try:
            self.top = _top(q.get("top"))
            self.skip = _skip(q.get("skip"))
            self.select = odata.parse_select(q.get("select"), KNOWN, "message")
            self.extended = odata.extended_expand(q.get("expand"))
            self.count = odata.parse_count(q.get("count"))
            order = odata.parse_orderby(q.get("orderby"), list(ORDERABLE))
            raw_filter = q.get("filter")
            self.filter = (
                odata.compile_filter(normalize_filter(raw_filter), FILTERABLE, "message")
                if raw_filter
                else None
            )
            if raw_filter and order.prop is not None:
                props = filter_properties(raw_filter)
                if not props or props[0] != order.prop:
                    raise inefficient_filter()
        except odata.ODataQueryError as exc:
            raise common.query_failure(exc, request) from exc
        except ValueError as exc:  # a datetime literal that is not a date
            raise common.query_failure(
                odata.syntax_error(q.get("filter") or "", 0), request
            ) from exc
        # Default order: newest first (what Outlook returns without $orderby).
        self.order = ORDERABLE[order.prop] if order.prop else "received"
        self.descending = order.descending if order.prop else True


def _skip_link(request: Request, skip: int) -> str:
    """`@odata.nextLink`: the same query with `$skip` advanced (Outlook pages by $skip)."""
    params = [
        (k, v) for k, v in request.query_params.multi_items() if k.lower().lstrip("$") != "skip"
    ]
    params.append(("$skip", str(skip)))
    path = quote(request.url.path, safe="/$@'()")
    return f"{ctx_of(request).base_url.rstrip('/')}{path}?{urlencode(params, safe='$,():/@')}"


def _list(request: Request, folder_key: str | None) -> Response:
    with outlook(request, MAIL_READ) as (principal, key, user):
        query = MessageQuery(request)
        store = store_of(request)
        folder_id = None
        if folder_key is not None:
            folder_id = _folder(request, store, key, user, folder_key).id
        within = search_view(request, store, key, user, folder_id)
        flt = query.filter
        matched = 0
        page: list[Item] = []
        more = False
        listing = store.iter_messages(
            key, user.id, folder_id if within is None else None, query.order, query.descending
        )
        for item in listing:
            if within is not None and not within(item):
                continue
            if flt is not None and not flt.matches(MessageRecord(item, _Lazy(store, item))):
                continue
            matched += 1
            if matched <= query.skip:
                continue
            if len(page) < query.top:
                page.append(item)
                continue
            more = True
            if not query.count:
                break
        basic = not principal.roles & {"Mail.Read", "Mail.ReadWrite"}
        values = [message_json(store, i, query.select, basic, query.extended) for i in page]
        path_key = request.path_params["user_id"]
        fragment = f"users('{path_key}')/" + (
            f"mailFolders('{folder_key}')/messages" if folder_key is not None else "messages"
        )
        if query.select:
            fragment += f"({','.join(query.select)})"
        body: dict[str, Any] = {"@odata.context": common.context_url(request, fragment)}
        if query.count:
            body["@odata.count"] = matched
        body["value"] = values
        if more:
            body["@odata.nextLink"] = _skip_link(request, query.skip + query.top)
        return GraphJSON(body)


def search_predicate(
    store: MailStore, key: str, owner: str, folder: Folder
) -> Callable[[Item], bool]:
    """Which messages a search folder shows: its filterQuery over its sourceFolderIds, their
    subfolders too with includeNestedFolders (resources/mailsearchfolder). Raises the OData
    parser's errors for a bad filterQuery. The one evaluation of search folders (the mail and
    import/export faces both use it)."""
    assert folder.search is not None
    sources = set(folder.search.get("sourceFolderIds") or [])
    if folder.search.get("includeNestedFolders"):
        queue = list(sources)
        while queue:
            for child in store.child_folders(key, owner, queue.pop()):
                if child.id not in sources:
                    sources.add(child.id)
                    queue.append(child.id)
    text = str(folder.search.get("filterQuery") or "")
    flt = (
        odata.compile_filter(
            normalize_filter(text), FILTERABLE, "message", odata.SEARCH_FOLDER_FUNCTIONS
        )
        if text
        else None
    )

    def shows(item: Item) -> bool:
        if item.folder_id not in sources:
            return False
        return flt is None or flt.matches(MessageRecord(item, _Lazy(store, item)))

    return shows


def search_view(
    request: Request, store: MailStore, key: str, user: User, folder_id: str | None
) -> Callable[[Item], bool] | None:
    """For a search folder: which messages it shows (`search_predicate`). None for a folder
    that holds its own items."""
    folder = store.folder(key, user.id, folder_id) if folder_id else None
    if folder is None or folder.search is None:
        return None
    try:
        return search_predicate(store, key, user.id, folder)
    except (odata.ODataQueryError, ValueError) as exc:
        text = str(folder.search.get("filterQuery") or "")
        raise common.query_failure(odata.syntax_error(text, 0), request) from exc


async def list_messages(request: Request) -> Response:
    return _list(request, None)


async def list_folder_messages(request: Request) -> Response:
    return _list(request, request.path_params["folder_id"])


async def get_message(request: Request) -> Response:
    with outlook(request, MAIL_READ) as (principal, key, user):
        store = store_of(request)
        message_id = request.path_params["message_id"]
        if not looks_like_id(message_id):
            raise malformed_id(request)
        item = store.get(key, user.id, message_id)
        folder_key = request.path_params.get("folder_id")
        if folder_key is not None and (
            item is None or item.folder_id != _folder(request, store, key, user, folder_key).id
        ):
            item = None
        if item is None:
            raise item_not_found(request)
        q = common.query(request)
        try:
            select = odata.parse_select(q.get("select"), KNOWN, "message")
        except odata.ODataQueryError as exc:
            raise common.query_failure(exc, request) from exc
        basic = not principal.roles & {"Mail.Read", "Mail.ReadWrite"}
        fragment = f"users('{request.path_params['user_id']}')/messages/$entity"
        body: dict[str, Any] = {"@odata.context": common.context_url(request, fragment)}
        body.update(
            message_json(store, item, select, basic, odata.extended_expand(q.get("expand")))
        )
        return GraphJSON(body)


# -- mailFolders ----------------------------------------------------------------------------------


def folder_json(f: Folder) -> dict[str, Any]:
    """resources/mailfolder (v1.0 properties); a search folder is its derived type
    resources/mailsearchfolder, named by `@odata.type` as Graph names derived types.
    *unverified*: a search folder's item counts (the sandbox counts none of its own)."""
    out: dict[str, Any] = {
        "id": f.id,
        "displayName": f.display_name,
        "parentFolderId": f.parent_id,
        "childFolderCount": f.children,
        "unreadItemCount": f.unread,
        "totalItemCount": f.total,
        "isHidden": f.is_hidden,
    }
    if f.search is not None:
        out = {"@odata.type": SEARCH_FOLDER_TYPE, **out, "isSupported": True, **f.search}
    return out


SEARCH_FOLDER_TYPE = "#microsoft.graph.mailSearchFolder"


FOLDER_KNOWN = list(folder_json(Folder("", "", "", None, "", None, False)).keys())


def _folder(request: Request, store: MailStore, key: str, user: User, folder_key: str) -> Folder:
    found = store.folder(key, user.id, folder_key)
    if found is not None:
        return found
    if looks_like_id(folder_key):
        raise item_not_found(request)
    # Neither an id nor a well-known name.
    raise malformed_id(request)


async def list_folders(request: Request) -> Response:
    return _list_folders(request, None)


async def list_child_folders(request: Request) -> Response:
    return _list_folders(request, request.path_params["folder_id"])


def _list_folders(request: Request, parent_key: str | None) -> Response:
    with outlook(request, FOLDER_READ) as (_principal, key, user):
        q = common.query(request)
        try:
            top = _top(q.get("top"))
            skip = _skip(q.get("skip"))
            select = odata.parse_select(q.get("select"), FOLDER_KNOWN, "mailFolder")
        except odata.ODataQueryError as exc:
            raise common.query_failure(exc, request) from exc
        store = store_of(request)
        parent = None
        if parent_key is not None:
            parent = _folder(request, store, key, user, parent_key).id
        folders = store.child_folders(key, user.id, parent)
        page = folders[skip : skip + top]
        values = [_select_folder(folder_json(f), select) for f in page]
        fragment = f"users('{request.path_params['user_id']}')/mailFolders"
        if parent_key is not None:
            fragment += f"('{parent_key}')/childFolders"
        body: dict[str, Any] = {"@odata.context": common.context_url(request, fragment)}
        body["value"] = values
        if skip + top < len(folders):
            body["@odata.nextLink"] = _skip_link(request, skip + top)
        return GraphJSON(body)


def _select_folder(obj: dict[str, Any], select: list[str] | None) -> dict[str, Any]:
    if select is None:
        return obj
    return {"id": obj["id"], **{k: obj[k] for k in select}}


async def get_folder(request: Request) -> Response:
    with outlook(request, FOLDER_READ) as (_principal, key, user):
        store = store_of(request)
        f = _folder(request, store, key, user, request.path_params["folder_id"])
        try:
            select = odata.parse_select(
                common.query(request).get("select"), FOLDER_KNOWN, "mailFolder"
            )
        except odata.ODataQueryError as exc:
            raise common.query_failure(exc, request) from exc
        fragment = f"users('{request.path_params['user_id']}')/mailFolders/$entity"
        body: dict[str, Any] = {"@odata.context": common.context_url(request, fragment)}
        body.update(_select_folder(folder_json(f), select))
        return GraphJSON(body)


def routes() -> list[BaseRoute]:
    # Writes, attachments and delta live in their own modules; they import this one, hence
    # the import here. Delta goes first: `messages/delta` would otherwise match
    # `messages/{message_id}`.
    from .mail_delta import routes as delta_routes
    from .mail_write import routes as write_routes

    base = "/v1.0/users/{user_id}"
    return [
        *delta_routes(),
        Route(f"{base}/sendMail", send_mail, methods=["POST"]),
        Route(f"{base}/messages", list_messages, methods=["GET"]),
        Route(f"{base}/messages/{{message_id}}", get_message, methods=["GET"]),
        Route(f"{base}/mailFolders", list_folders, methods=["GET"]),
        Route(f"{base}/mailFolders/{{folder_id}}", get_folder, methods=["GET"]),
        Route(
            f"{base}/mailFolders/{{folder_id}}/childFolders", list_child_folders, methods=["GET"]
        ),
        Route(
            f"{base}/mailFolders/{{parent_id}}/childFolders/{{folder_id}}",
            get_folder,
            methods=["GET"],
        ),
        Route(f"{base}/mailFolders/{{folder_id}}/messages", list_folder_messages, methods=["GET"]),
        Route(
            f"{base}/mailFolders/{{folder_id}}/messages/{{message_id}}",
            get_message,
            methods=["GET"],
        ),
        *write_routes(),
    ]
