"""Graph message delta: `GET /users/{id}/mailFolders/{id}/messages/delta`.

Shape after learn.microsoft.com/graph/api/message-delta and /graph/delta-query-messages:

- The first round returns every message in the folder, page by page
  (`@odata.nextLink` carrying a `$skiptoken`), and ends with an `@odata.deltaLink`
  (`$deltatoken`); calling the deltaLink returns only what changed since.
- Changed items come back whole (as `$select` asked); an item that left the folder
  (deleted, or moved away: a move is a delete here and a create in the destination)
  comes back as `{"@odata.type": ..., "id": ..., "@removed": {"reason": "deleted"}}`.
- Page size: `Prefer: odata.maxpagesize=n`, echoed in `Preference-Applied`.
  *unverified*: the default page size for message delta (10 here, as for message lists).
- The links carry the query (`$select`) inside the token, so the client calls them as is.
- An unknown or expired token: 410 `SyncStateNotFound` "The sync state generation is not
  found; ..." (microsoft-graph-docs#2350, #2877). *unverified*: that Graph answers a
  malformed (not just expired) token the same way.

The cursor is the mailstore's change clock: items carry `mseq`, removals are tombstones
with `cseq` from the same clock, so one number orders both.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..mailstore import Item, Tombstone, change_number
from ..web import ctx_of
from . import common, mail, odata
from .common import GraphJSON, fail

DELTA_PAGE_DEFAULT = 10
DELTA_PAGE_MAX = 1000  # *unverified*: Graph's ceiling on odata.maxpagesize for messages


def sync_state_not_found(request: Request, generation: int, highest: int) -> Exception:
    return fail(
        410,
        "SyncStateNotFound",
        f"The sync state generation is not found; generation={generation};[highest={highest}].",
        request,
    )


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


def _state(request: Request, folder_id: str, mailbox: str, clock: int) -> dict[str, Any]:
    """The sync state this request continues: from a token, or a fresh first round."""
    q = common.query(request)
    token = q.get("skiptoken") or q.get("deltatoken")
    if token is None:
        try:
            select = odata.parse_select(q.get("select"), mail.KNOWN, "message")
        except odata.ODataQueryError as exc:
            raise common.query_failure(exc, request) from exc
        # First round: every item; removals only of what changes from now on.
        return {"m": mailbox, "f": folder_id, "a": 0, "r": clock, "s": select}
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
    return state


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
    path = quote(request.url.path, safe="/$@'()")
    return f"{ctx_of(request).base_url.rstrip('/')}{path}?{param}={encode_token(state)}"


async def folder_delta(request: Request) -> Response:
    with mail.outlook(request, mail.MAIL_READ) as (principal, key, user):
        store = mail.store_of(request)
        folder = mail._folder(request, store, key, user, request.path_params["folder_id"])
        state = _state(request, folder.id, user.id, store.clock)
        size = _page_size(request)
        entries, clock, more = store.changes(
            key, user.id, folder.id, state["a"], state["r"], size or DELTA_PAGE_DEFAULT
        )
        basic = not principal.roles & {"Mail.Read", "Mail.ReadWrite"}
        select = state.get("s")
        body: dict[str, Any] = {
            "@odata.context": common.context_url(request, "Collection(message)"),
            "value": [_entry_json(request, store, e, select, basic) for e in entries],
        }
        if more:
            body["@odata.nextLink"] = _link(
                request, "$skiptoken", {**state, "a": change_number(entries[-1])}
            )
        else:
            # Everything up to `clock` in this folder has been returned.
            body["@odata.deltaLink"] = _link(
                request, "$deltatoken", {**state, "a": clock, "r": clock}
            )
        headers = {"Preference-Applied": f"odata.maxpagesize={size}"} if size else None
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
    if token is None:
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
    return [
        Route(f"{base}/mailFolders/delta", folders_delta, methods=["GET"]),
        Route(f"{base}/mailFolders/delta()", folders_delta, methods=["GET"]),
        Route(
            f"{base}/mailFolders/{{folder_id}}/childFolders/delta", folders_delta, methods=["GET"]
        ),
        Route(
            f"{base}/mailFolders/{{folder_id}}/childFolders/delta()", folders_delta, methods=["GET"]
        ),
        Route(f"{base}/mailFolders/{{folder_id}}/messages/delta", folder_delta, methods=["GET"]),
        # msgraph-sdk-python calls `messages/delta()` (delta_request_builder url template).
        Route(f"{base}/mailFolders/{{folder_id}}/messages/delta()", folder_delta, methods=["GET"]),
        Route(
            f"{base}/mailFolders/{{folder_id}}/messages/microsoft.graph.delta()",
            folder_delta,
            methods=["GET"],
        ),
    ]
