"""Graph JSON batching: `POST /v1.0/$batch` (learn.microsoft.com/graph/json-batching).

Inner requests are dispatched in-process to the same route table the server
uses (a Starlette `Request` built from a synthetic scope carrying the outer
token), so each one is authenticated, authorized, throttled and chaos-checked
on its own: a 429 inside a 200 batch carries its `Retry-After` in the inner
headers, as Graph does.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route

from ..web import HTTPFailure, ctx_of, graph_error, graph_principal
from . import common, unserved
from .common import GraphJSON, fail

log = logging.getLogger(__name__)

MAX_REQUESTS = 20  # json-batching: "currently limited to 20 individual requests"
METHODS = ("GET", "POST", "PATCH", "PUT", "DELETE")


def too_many() -> str:
    return f"Number of requests in the batch exceeds the maximum of {MAX_REQUESTS}."  # *unverified*


class _BatchError(Exception):
    pass


def _validate(requests: Any) -> list[dict[str, Any]]:
    """The batch's requests in execution order (dependencies first); raises _BatchError."""
    if not isinstance(requests, list) or not requests:
        raise _BatchError("Invalid batch payload format.")  # *unverified*
    if len(requests) > MAX_REQUESTS:
        raise _BatchError(too_many())
    by_id: dict[str, dict[str, Any]] = {}
    for item in requests:
        if not isinstance(item, dict) or not item.get("id") or not item.get("url"):
            raise _BatchError("Invalid batch payload format.")
        if str(item.get("method", "")).upper() not in METHODS:
            raise _BatchError(f"Invalid method '{item.get('method')}'.")  # *unverified*
        rid = str(item["id"])
        if rid in by_id:
            raise _BatchError(f"Request id '{rid}' is duplicated.")  # *unverified*
        by_id[rid] = item
    for item in requests:
        deps = item.get("dependsOn") or []
        # FACTS.md: one dependsOn each.
        if not isinstance(deps, list) or len(deps) > 1 or any(str(d) not in by_id for d in deps):
            raise _BatchError(f"Invalid dependsOn for request '{item['id']}'.")  # *unverified*
    return _execution_order(requests, by_id)


def _execution_order(
    requests: Sequence[dict[str, Any]], by_id: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    order: list[dict[str, Any]] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(item: dict[str, Any]) -> None:
        rid = str(item["id"])
        if state.get(rid) == 2:
            return
        if state.get(rid) == 1:
            raise _BatchError("Circular dependency in the batch request.")  # *unverified*
        state[rid] = 1
        for dep in item.get("dependsOn") or []:
            visit(by_id[str(dep)])
        state[rid] = 2
        order.append(item)

    for item in requests:
        visit(item)
    return order


async def post_batch(request: Request) -> Response:
    graph_principal(request, ())  # the batch itself needs a valid token; inner calls check roles
    body = await common.json_body(request)
    try:
        order = _validate(body.get("requests"))
    except _BatchError as exc:
        raise fail(400, "BadRequest", str(exc), request) from exc
    results: dict[str, dict[str, Any]] = {}
    for item in order:
        rid = str(item["id"])
        deps = [str(d) for d in item.get("dependsOn") or []]
        if any(results[d]["status"] >= 400 for d in deps):
            # json-batching: a request whose dependency failed answers 424 Failed Dependency.
            results[rid] = _inner(rid, graph_error(424, "FailedDependency", "Failed dependency."))
            continue
        results[rid] = await _dispatch(request, item)
    return GraphJSON({"responses": [results[str(i["id"])] for i in body["requests"]]})


async def _dispatch(outer: Request, item: dict[str, Any]) -> dict[str, Any]:
    rid = str(item["id"])
    ctx = ctx_of(outer)
    fault = ctx.limiter.chaos()
    if fault is not None:
        wait = ctx.limiter.chaos_retry_after()
        if fault == "throttle":
            return _inner(
                rid, graph_error(429, "TooManyRequests", "Too many requests.", None, wait)
            )
        # An inner request cannot drop the connection: resets surface as 503 like unavailability.
        return _inner(
            rid, graph_error(503, "ServiceUnavailable", "Service Unavailable.", None, wait)
        )
    scope, payload = _scope(outer, item)
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": payload, "more_body": False}

    try:
        endpoint = _match(scope)
        response = await endpoint(Request(scope, receive))
    except HTTPFailure as exc:
        response = exc.response
    except Exception:  # an inner failure must not sink the whole batch
        log.exception("sandbox $batch inner request %s failed", rid)
        response = graph_error(500, "InternalServerError", "Internal server error.")
    return _inner(rid, response)


def _scope(outer: Request, item: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    url = str(item["url"])
    parts = urlsplit(url if url.startswith("/") else "/" + url)
    path = "/v1.0" + parts.path
    headers: list[tuple[bytes, bytes]] = []
    for k, v in (item.get("headers") or {}).items():
        if k.lower() != "authorization":
            headers.append((k.lower().encode("latin-1"), str(v).encode("latin-1")))
    auth = outer.headers.get("authorization")
    if auth:
        headers.append((b"authorization", auth.encode("latin-1")))
    payload = _payload(item.get("body"))
    if payload and not any(k == b"content-type" for k, _ in headers):
        headers.append((b"content-type", b"application/json"))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": str(item["method"]).upper(),
        "scheme": outer.url.scheme,
        "server": outer.scope.get("server"),
        "client": outer.scope.get("client"),
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": parts.query.encode(),
        "headers": headers,
        "app": outer.scope.get("app"),
        "state": {},
    }
    return scope, payload


def _payload(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, str):
        # json-batching: non-JSON bodies travel base64-encoded.
        try:
            return base64.b64decode(body, validate=True)
        except ValueError:
            return body.encode()
    return json.dumps(body).encode()


def _match(scope: dict[str, Any]) -> Any:
    # The face ends with the catch-all of `unserved`, so every /v1.0 path matches fully.
    for route in _ROUTES:
        match, child = route.matches(scope)
        if match == Match.FULL:
            scope.update(child)
            return child["endpoint"]
    segment = scope["path"].removeprefix("/v1.0/").split("/")[0]
    raise unserved.not_served(None, segment)


def _inner(rid: str, response: Response) -> dict[str, Any]:
    headers = {
        "-".join(p.capitalize() for p in k.split("-")): v
        for k, v in response.headers.items()
        if k.lower() not in ("content-length",)
    }
    out: dict[str, Any] = {"id": rid, "status": response.status_code, "headers": headers}
    raw = bytes(response.body) if response.body else b""
    if raw:
        if "json" in headers.get("Content-Type", ""):
            out["body"] = json.loads(raw)
        else:
            out["body"] = raw.decode("utf-8")
    return out


_ROUTES: list[Route] = []


def bind(routes: Sequence[BaseRoute]) -> None:
    """Give the batch handler the face's route table (called by `graph.routes()`)."""
    _ROUTES[:] = [r for r in routes if isinstance(r, Route)]


def routes() -> list[BaseRoute]:
    return [Route("/v1.0/$batch", post_batch, methods=["POST"])]
