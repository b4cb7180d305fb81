"""Graph message delta: `GET /users/{id}/mailFolders/{id}/messages/delta`.

Shape after learn.microsoft.com/graph/api/message-delta and /graph/delta-query-messages:

- The first round returns every message in the folder, page by page
  (`@odata.nextLink` carrying a `$skiptoken`), and ends with an `@odata.deltaLink`
  (`$deltatoken`); calling the deltaLink returns only what changed since.
- Changed items come back whole (as `$select` asked); an item that left the folder
  (deleted, or moved away: a move is a delete here and a create in the destination)
  comes back as `{"@odata.type": ..., "id": ..., "@removed": {"reason": "deleted"}}`.
- Page size: `Prefer: odata.maxpagesize=n`, echoed in `Preference-Applied`. `$top` does not
  size pages (FACTS.md; delta-query-overview: "The number of objects in each page can vary"):
  it is accepted and ignored. *unverified*: the default page size for message delta (10
  here, as for message lists).
- `$filter`: "The only supported `$filter` expressions are `$filter=receivedDateTime+ge+{value}`
  or `$filter=receivedDateTime+gt+{value}`" and "Applying `$filter` in a delta query returns
  only up to 5,000 messages" (delta-query-messages). Any other filter is Exchange's 400
  `ErrorInvalidUrlQuery` (verbatim in msgraph-sdk-dotnet#1512, microsoft-graph-docs#18636).
  A round that reaches the cap ends with a deltaLink: the matching messages it did not
  return are never reported unless they change. *unverified*: which 5,000 a round returns;
  the sandbox returns the most recently received ones (the order `$orderby=receivedDateTime
  desc` names) and counts the cap per round. Removals are reported whatever the filter
  (a removed item has no receivedDateTime to test).
- The links carry the query (`$select`, `$filter`) inside the token, so the client calls them
  as is.
- Sync state expires (delta-query-overview, "Token duration": for Outlook entities "the
  upper limit is not fixed ... In case of an expired token, the service should respond with
  a 40X-series error with error codes such as `syncStateNotFound`"). Every token carries
  when it was issued; one issued longer ago than `Settings.sync_state_max_age_s`, or before
  `World.expire_sync_states()`, is answered as `Settings.mail_delta_expired_answer` says
  (EXPIRED_ANSWERS).
- An unknown or malformed token: 410 `SyncStateNotFound` "The sync state generation is not
  found; ..." (microsoft-graph-docs#2350, #2877). *unverified*: that Graph answers a
  malformed (not just expired) token the same way.

The cursor is the mailstore's change clock: items carry `mseq`, removals are tombstones
with `cseq` from the same clock, so one number orders both.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import time
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..mailstore import Item, MailStore, Tombstone, change_number, iso
from ..web import HTTPFailure, ctx_of, graph_error
from . import common, mail, odata
from .common import GraphJSON, fail

DELTA_PAGE_DEFAULT = 10
DELTA_PAGE_MAX = 1000  # *unverified*: Graph's ceiling on odata.maxpagesize for messages
# delta-query-messages: "Applying $filter in a delta query returns only up to 5,000 messages."
FILTER_CAP = 5000
SCAN_CHUNK = 500  # change entries read at a time while a filter skips non-matching ones
# ctx.extra key: forget every sync state once this many more delta pages have been served
# (a test's way to expire sync state in the middle of a round; see `expire_after_pages`).
EXPIRE_AFTER_PAGES = "mail_delta_expire_after_pages"


# -- answers (one place; *unverified* ones say so) -----------------------------------------------


def sync_state_not_found(request: Request, generation: int, highest: int) -> HTTPFailure:
    return fail(
        410,
        "SyncStateNotFound",
        f"The sync state generation is not found; generation={generation};[highest={highest}].",
        request,
    )


def sync_state_invalid(request: Request) -> HTTPFailure:
    # Code as Outlook REST clients handle it on 410 (e.g. ruby_outlook's client treats
    # "SyncStateInvalid" and "SyncStateNotFound" alike); *unverified* wording.
    return fail(410, "SyncStateInvalid", "The sync state is invalid.", request)


def resync_required(request: Request, restart: str) -> HTTPFailure:
    # delta-query-overview, "Synchronization reset": "410 (gone) and a Location header
    # containing a request URL with an empty $deltaToken (same as the initial query)"; code
    # and message as graph/errors lists `resyncRequired`.
    response = graph_error(
        410,
        "resyncRequired",
        "The delta token is no longer valid, and the app must reset the sync state.",
        request,
    )
    response.headers["Location"] = restart
    return HTTPFailure(response)


EXPIRED_ANSWERS = ("SyncStateNotFound", "SyncStateInvalid", "resyncRequired")


def unsupported_filter(request: Request) -> HTTPFailure:
    # Verbatim (msgraph-sdk-dotnet#1512, microsoft-graph-docs#18636).
    return fail(
        400,
        "ErrorInvalidUrlQuery",
        "The '$filter' parameter value is not supported for 'Messages' resource; only a value "
        "of 'receivedDateTime ge value' is supported.",
        request,
    )


def expire_after_pages(
    extra: MutableMapping[str, Any], pages: int, folder_id: str | None = None
) -> None:
    """Forget every sync state right after the `pages`-th message delta page from now (of
    `folder_id`, or of any folder) is served: the links that page hands out are already
    expired, so the round fails on its next page (a mid-round expiry, on demand)."""
    extra[EXPIRE_AFTER_PAGES] = {"pages": pages, "folder": folder_id}


def _count_page(request: Request, folder_id: str) -> None:
    extra = ctx_of(request).extra
    countdown = extra.get(EXPIRE_AFTER_PAGES)
    if not isinstance(countdown, dict) or countdown.get("folder") not in (None, folder_id):
        return
    countdown["pages"] -= 1
    if countdown["pages"] <= 0:
        del extra[EXPIRE_AFTER_PAGES]
        ctx_of(request).world.expire_sync_states()


# -- tokens ---------------------------------------------------------------------------------------


def encode_token(state: dict[str, Any]) -> str:
    raw = json.dumps(state, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> dict[str, Any] | None:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        state = json.loads(raw)
    except (binascii.Error, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _page_size(request: Request) -> int | None:
    """`Prefer: odata.maxpagesize=n` (None when absent or not a number)."""
    for part in request.headers.get("prefer", "").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "odata.maxpagesize" and value.strip().isdigit():
            return max(1, min(int(value.strip()), DELTA_PAGE_MAX))
    return None


def _expired(request: Request, state: dict[str, Any], clock: int) -> HTTPFailure | None:
    """Exchange's answer for a sync state it has forgotten, or None while it is live."""
    settings = ctx_of(request).world.settings
    issued = state.get("t")
    if isinstance(issued, (int, float)) and not settings.sync_state_expired(float(issued)):
        return None
    answer = settings.mail_delta_expired_answer
    if answer == "resyncRequired":
        return resync_required(request, _restart_link(request, state))
    if answer == "SyncStateInvalid":
        return sync_state_invalid(request)
    generation = state.get("a")
    return sync_state_not_found(request, generation if isinstance(generation, int) else 0, clock)


def _restart_link(request: Request, state: dict[str, Any]) -> str:
    """The initial query of this sync (its $select and $filter) with an empty $deltatoken."""
    params: list[tuple[str, str]] = []
    if state.get("s"):
        params.append(("$select", ",".join(state["s"])))
    if state.get("w"):
        params.append(("$filter", f"receivedDateTime {state['w'][0]} {state['w'][1]}"))
    params.append(("$deltatoken", ""))
    path = quote(request.url.path, safe="/$@'()")
    query = urlencode(params, safe="$,:")
    return f"{ctx_of(request).base_url.rstrip('/')}{path}?{query}"


# -- $filter ------------------------------------------------------------------------------------

_FILTER = re.compile(
    r"^\s*receivedDateTime\s+(ge|gt)\s+"
    r"(\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:\d{2})?)\s*$",
    re.IGNORECASE,
)


def parse_filter(request: Request, raw: str | None) -> list[str] | None:
    """[operator, UTC time] of the one filter message delta supports; None when absent."""
    if raw is None or not raw.strip():
        return None
    m = _FILTER.match(raw)
    if m is None:
        raise unsupported_filter(request)
    text = m.group(2)
    value = dt.datetime.fromisoformat(text if "T" in text else text + "T00:00:00+00:00")
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    # Stored times are whole seconds (mailstore.iso), compared as the same ISO text.
    return [m.group(1).lower(), iso(value)]


def _matches(item: Item, state: dict[str, Any]) -> bool:
    flt = state.get("w")
    if not flt:
        return True
    op, value = flt
    if not (item.received > value if op == "gt" else item.received >= value):
        return False
    cutoff = state.get("c")
    return cutoff is None or (item.received, item.seq) >= (cutoff[0], cutoff[1])


def _cutoff(
    store: MailStore, key: str, mailbox: str, folder_id: str, flt: list[str]
) -> list[Any] | None:
    """[receivedDateTime, store order] of the FILTER_CAP-th newest matching message (a first
    round with a filter returns the newest ones), or None when fewer match."""
    state = {"w": flt}
    newest = store.iter_messages(key, mailbox, folder_id, "received", descending=True)
    for seen, item in enumerate(newest, start=1):
        if not _matches(item, state):
            return None  # newest first: the rest are older still
        if seen == FILTER_CAP:
            return [item.received, item.seq]
    return None


# -- message delta ------------------------------------------------------------------------------


def _state(
    request: Request, store: MailStore, key: str, folder_id: str, mailbox: str
) -> dict[str, Any]:
    """The sync state this request continues: from a token, or a fresh first round."""
    q = common.query(request)
    clock = store.clock
    token = q.get("skiptoken") or q.get("deltatoken")
    if not token:  # absent, or the empty $deltatoken of a resyncRequired Location
        try:
            select = odata.parse_select(q.get("select"), mail.KNOWN, "message")
        except odata.ODataQueryError as exc:
            raise common.query_failure(exc, request) from exc
        flt = parse_filter(request, q.get("filter"))
        cutoff = _cutoff(store, key, mailbox, folder_id, flt) if flt else None
        # First round: every item; removals only of what changes from now on.
        return {"m": mailbox, "f": folder_id, "a": 0, "r": clock, "s": select, "w": flt,
                "c": cutoff, "n": 0}  # fmt: skip
    state = decode_token(token)
    valid = (
        state is not None
        and state.get("m") == mailbox
        and state.get("f") == folder_id
        and isinstance(state.get("a"), int)
        and isinstance(state.get("r"), int)
        and state["a"] <= clock
    )
    if not valid or state is None:
        generation = state.get("a", 0) if isinstance(state, dict) else 0
        raise sync_state_not_found(request, generation if isinstance(generation, int) else 0, clock)
    expired = _expired(request, state, clock)
    if expired is not None:
        raise expired
    return state


def _collect(
    store: MailStore, key: str, mailbox: str, state: dict[str, Any], size: int
) -> tuple[list[Item | Tombstone], int, int, bool, bool]:
    """One page of changes after the state's cursor: (entries, cursor after them, clock,
    more follow, the round reached FILTER_CAP). Messages the filter does not match are
    passed over (the cursor moves past them)."""
    filtered = bool(state.get("w"))
    room = FILTER_CAP - int(state.get("n") or 0) if filtered else None
    out: list[Item | Tombstone] = []
    cursor, items = int(state["a"]), 0
    while True:
        batch, clock, more = store.changes(
            key, mailbox, state["f"], cursor, state["r"], SCAN_CHUNK if filtered else size
        )
        for n, entry in enumerate(batch):
            if isinstance(entry, Item) and not _matches(entry, state):
                cursor = change_number(entry)
                continue
            out.append(entry)
            cursor = change_number(entry)
            items += isinstance(entry, Item)
            if room is not None and items == room:
                return out, cursor, clock, True, True
            if len(out) == size:
                return out, cursor, clock, more or n + 1 < len(batch), False
        if not more:
            return out, cursor, clock, False, False


def _entry_json(
    request: Request, store: Any, entry: Item | Tombstone, select: list[str] | None, basic: bool
) -> dict[str, Any]:
    if isinstance(entry, Tombstone):
        return {
            "@odata.type": "#microsoft.graph.message",
            "id": entry.item_id,
            "@removed": {"reason": entry.reason},
        }
    out: dict[str, Any] = {"@odata.type": "#microsoft.graph.message"}
    out.update(mail.message_json(store, entry, select, basic))
    return out


def _link(request: Request, param: str, state: dict[str, Any]) -> str:
    """A next/delta link; its token carries when it was issued (sync state expires)."""
    path = quote(request.url.path, safe="/$@'()")
    token = encode_token({**state, "t": time.time()})
    return f"{ctx_of(request).base_url.rstrip('/')}{path}?{param}={token}"


async def folder_delta(request: Request) -> Response:
    with mail.outlook(request, mail.MAIL_READ) as (principal, key, user):
        store = mail.store_of(request)
        folder = mail._folder(request, store, key, user, request.path_params["folder_id"])
        state = _state(request, store, key, folder.id, user.id)
        size = _page_size(request)
        entries, cursor, clock, more, capped = _collect(
            store, key, user.id, state, size or DELTA_PAGE_DEFAULT
        )
        basic = not principal.roles & {"Mail.Read", "Mail.ReadWrite"}
        select = state.get("s")
        body: dict[str, Any] = {
            "@odata.context": common.context_url(request, "Collection(message)"),
            "value": [_entry_json(request, store, e, select, basic) for e in entries],
        }
        if more and not capped:
            reported = int(state.get("n") or 0) + sum(isinstance(e, Item) for e in entries)
            body["@odata.nextLink"] = _link(
                request, "$skiptoken", {**state, "a": cursor, "n": reported}
            )
        else:
            # Everything up to `clock` in this folder counts as returned: after a capped
            # round that includes the matching messages the cap left out.
            body["@odata.deltaLink"] = _link(
                request, "$deltatoken", {**state, "a": clock, "r": clock, "c": None, "n": 0}
            )
        headers = {"Preference-Applied": f"odata.maxpagesize={size}"} if size else None
        _count_page(request, folder.id)
        return GraphJSON(body, headers=headers)


# -- mailFolders delta --------------------------------------------------------------------------
# mailfolder-delta: "Get a set of mail folders that have been added, deleted, or removed from
# the user's mailbox"; `/mailFolders/delta` covers the top-level folders and
# `/mailFolders/{id}/childFolders/delta` one folder's children (msgraph-sdk has both builders).
# The sandbox has no folder rename or delete, so a round reports created folders only;
# *unverified*: whether Exchange also reports a folder whose item counts changed.


def _folder_state(request: Request, parent_id: str, mailbox: str, clock: int) -> dict[str, Any]:
    q = common.query(request)
    token = q.get("skiptoken") or q.get("deltatoken")
    if not token:
        try:
            select = odata.parse_select(q.get("select"), mail.FOLDER_KNOWN, "mailFolder")
        except odata.ODataQueryError as exc:
            raise common.query_failure(exc, request) from exc
        return {"m": mailbox, "p": parent_id, "a": 0, "s": select}
    state = decode_token(token)
    if (
        state is None
        or state.get("m") != mailbox
        or state.get("p") != parent_id
        or not isinstance(state.get("a"), int)
        or state["a"] > clock
    ):
        raise sync_state_not_found(request, 0, clock)
    expired = _expired(request, state, clock)
    if expired is not None:
        raise expired
    return state


async def folders_delta(request: Request) -> Response:
    with mail.outlook(request, mail.FOLDER_READ) as (_principal, key, user):
        store = mail.store_of(request)
        parent_key = request.path_params.get("folder_id", "msgfolderroot")
        parent = mail._folder(request, store, key, user, parent_key)
        state = _folder_state(request, parent.id, user.id, store.clock)
        size = _page_size(request)
        found, clock, more = store.folder_changes(
            key, user.id, parent.id, state["a"], size or DELTA_PAGE_DEFAULT
        )
        values = []
        for _fseq, f in found:
            obj = mail._select_folder(mail.folder_json(f), state.get("s"))
            values.append({"@odata.type": "#microsoft.graph.mailFolder", **obj})
        body: dict[str, Any] = {
            "@odata.context": common.context_url(request, "Collection(mailFolder)"),
            "value": values,
        }
        if more:
            body["@odata.nextLink"] = _link(request, "$skiptoken", {**state, "a": found[-1][0]})
        else:
            body["@odata.deltaLink"] = _link(request, "$deltatoken", {**state, "a": clock})
        headers = {"Preference-Applied": f"odata.maxpagesize={size}"} if size else None
        return GraphJSON(body, headers=headers)


def routes() -> list[BaseRoute]:
    base = "/v1.0/users/{user_id}"
    folder = f"{base}/mailFolders/{{folder_id}}"
    return [
        *common.delta_routes(f"{base}/mailFolders/delta", folders_delta),
        *common.delta_routes(f"{folder}/childFolders/delta", folders_delta),
        *common.delta_routes(f"{folder}/messages/delta", folder_delta),
        Route(f"{folder}/messages/microsoft.graph.delta()", folder_delta, methods=["GET"]),
    ]
