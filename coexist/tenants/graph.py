"""Microsoft Graph adapter: the only module that talks to Graph.

Bulk reads use raw JSON over httpx (msgraph-sdk parses each User object in
~8-12 ms of CPU: msgraph-sdk-python issue 584, FACTS.md); typed calls can use
`sdk()`, a GraphServiceClient on the same endpoint and credential. Errors are
mapped to `coexist.errors` here (`parse_error`), nowhere else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from coexist.errors import (
    AuthenticationError,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RemoteError,
    TransientError,
)

from .auth import GRAPH_SCOPE, TenantEndpoint
from .base import TRANSIENT_STATUS, Adapter, parse_retry_after
from .plan import before_write

# 429 and 503 mean the request was refused before processing (graph/throttling).
_IMPORT_NOT_PROCESSED = frozenset({429, 503})


def parse_error(
    status: int, body: Any, headers: httpx.Headers | dict[str, str], *, what: str
) -> RemoteError:
    """Map a Graph error response to the coexist error tree."""
    err = body.get("error", {}) if isinstance(body, dict) else {}
    code = err.get("code") if isinstance(err, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    text = f"Graph {what}: {status} {code or ''} {message or ''}".strip()
    kw: dict[str, Any] = {"service": "graph", "code": code, "status": status}
    if status in TRANSIENT_STATUS:
        return TransientError(text, retry_after=parse_retry_after(headers.get("Retry-After")), **kw)
    if status == 401:
        return AuthenticationError(text, **kw)
    if status == 403:
        return PermissionDenied(
            text, next_step="coexist permissions  (shows the application permissions needed)", **kw
        )
    if status == 404:
        return NotFound(text, **kw)
    if status == 409:
        return Conflict(text, **kw)
    return InvalidRequest(text, **kw)


def _is_write(method: str, path: str, body: Any) -> bool:
    """GET is a read; a $batch of GETs is a read too; everything else writes."""
    if method.upper() == "GET":
        return False
    if path.rstrip("/").endswith("$batch") and isinstance(body, dict):
        return any(r.get("method", "GET").upper() != "GET" for r in body.get("requests", []))
    return True


class GraphAdapter(Adapter):
    """Raw-JSON Graph access for one tenant (async)."""

    scope = GRAPH_SCOPE
    service = "Graph"

    def __init__(self, ep: TenantEndpoint, **kwargs: Any) -> None:
        super().__init__(ep, **kwargs)
        self.base = ep.graph_url.rstrip("/")

    def url(self, path: str) -> str:
        return path if path.startswith("https://") else f"{self.base}/{path.lstrip('/')}"

    async def send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """One request; returns parsed JSON (or None for 204). Plan mode records writes."""
        if _is_write(method, path, json):
            if self.plan is not None:
                self.plan.record("graph", self.label, f"{method} /{path.lstrip('/')}", json or {})
                return None
            before_write()
            async with self._gate.slot():
                return await self._send(method, path, params, json, headers)

        async def read() -> Any:
            async with self._gate.slot():
                return await self._send(method, path, params, json, headers)

        return await self.read_retry.call(read)

    async def _send(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        json: Any,
        headers: dict[str, str] | None,
    ) -> Any:
        h = {"Authorization": f"Bearer {await self.token()}", **(headers or {})}
        self.calls += 1
        try:
            resp = await self._http.request(
                method, self.url(path), params=params, json=json, headers=h
            )
        except httpx.TransportError as exc:
            raise TransientError(
                f"Graph {method} {path}: connection failed ({type(exc).__name__})", service="graph"
            ) from exc
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = None
            error = parse_error(resp.status_code, body, resp.headers, what=f"{method} {path}")
            if isinstance(error, TransientError):
                self._gate.throttle(error.retry_after)
            raise error
        self._gate.success()
        if _is_write(method, path, json):
            self.writes += 1  # accepted writes only: a throttled attempt is not one
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    async def pages(
        self, path: str, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Yield each page's `value`, following `@odata.nextLink`."""
        data = await self.send("GET", path, params=params, headers=headers)
        while True:
            yield list(data.get("value", []))
            link = data.get("@odata.nextLink")
            if not link:
                return
            data = await self.send("GET", link, headers=headers)

    async def list_all(
        self, path: str, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        async for page in self.pages(path, params, headers):
            out.extend(page)
        return out

    async def post_import(self, import_url: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one item to a mailbox import session's `importUrl`.

        The importUrl is pre-authenticated: graph/import-exchange-mailbox-item says "don't
        specify an Authorization request header" - the URL is the credential, so it is never
        logged or journaled. TLS is still verified (same client). A write: plan mode records
        it and sends nothing. A refusal the service says was not processed (429/503 with or
        without Retry-After) is retried here after the governor's wait: a refused import
        created nothing, so retrying it cannot duplicate the item.
        """
        if self.plan is not None:
            what = {"FolderId": body.get("FolderId"), "Mode": body.get("Mode")}
            self.plan.record("graph", self.label, "POST {importUrl}", what)
            return {}
        before_write()

        async def attempt() -> dict[str, Any]:
            async with self._gate.slot():
                return await self._post_import(import_url, body)

        return await self.read_retry.call(attempt)

    async def _post_import(self, import_url: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        try:
            resp = await self._http.post(import_url, json=body)
        except httpx.ConnectError as exc:  # nothing reached the service: safe to retry
            raise TransientError(
                f"Graph import: connection failed ({type(exc).__name__})", service="graph"
            ) from exc
        if resp.status_code >= 400:
            try:
                payload = resp.json()
            except ValueError:
                payload = None
            error = parse_error(resp.status_code, payload, resp.headers, what="POST importItem")
            if isinstance(error, TransientError):
                self._gate.throttle(error.retry_after)
                if resp.status_code not in _IMPORT_NOT_PROCESSED:
                    # A 500/502/504 may have created the item: not retried blindly; the mover
                    # resolves it from the target folder on the next pass.
                    raise RemoteError(error.message, service="graph", status=resp.status_code)
            raise error
        self._gate.success()
        self.writes += 1
        data: dict[str, Any] = resp.json()
        return data

    async def delta_pages(
        self, link: str, headers: dict[str, str] | None = None
    ) -> AsyncIterator[tuple[list[dict[str, Any]], str | None]]:
        """Follow a delta query: yield (page values, deltaLink or None until the last page).

        graph/delta-query-overview: pages carry `@odata.nextLink` until the round ends with
        `@odata.deltaLink`, which starts the next round.
        """
        data = await self.send("GET", link, headers=headers)
        while True:
            delta = data.get("@odata.deltaLink")
            yield list(data.get("value", [])), delta
            nxt = data.get("@odata.nextLink")
            if not nxt or delta:
                return
            data = await self.send("GET", nxt, headers=headers)
