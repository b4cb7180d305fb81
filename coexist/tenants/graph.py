"""Microsoft Graph adapter: the only module that talks to Graph.

Bulk reads use raw JSON over httpx (msgraph-sdk parses each User object in
~8-12 ms of CPU: msgraph-sdk-python issue 584, FACTS.md); typed calls can use
`sdk()`, a GraphServiceClient on the same endpoint and credential. Errors are
mapped to `coexist.errors` here (`parse_error`), nowhere else.
"""

from __future__ import annotations

import json as jsonlib
import re
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from coexist.errors import (
    AuthenticationError,
    Conflict,
    InvalidRequest,
    NotFound,
    NotReady,
    PermissionDenied,
    RemoteError,
    TransientError,
)

from .auth import GRAPH_SCOPE, TenantEndpoint
from .base import TRANSIENT_STATUS, Adapter, parse_retry_after
from .mailbox_governor import (
    MailboxGovernor,
    MailboxLimits,
    batch_mailboxes,
    import_bytes,
    mailbox_of,
)
from .plan import before_write
from .transport import SCRATCH, Pool, Response, Target

# 429 and 503 mean the request was refused before processing (graph/throttling).
_IMPORT_NOT_PROCESSED = frozenset({429, 503})
BATCH_REQUESTS = 20  # json-batching: "currently limited to 20 individual requests"
KEEPALIVE = 64  # idle connections kept per pool and origin
# Outlook request pools per adapter, chosen by mailbox. They were sharded because httpcore's
# placement of a request was quadratic in its pool's connections; tenants/transport's Pool
# places in O(1), so what the shards still do is bound idle connections per group of
# mailboxes (KEEPALIVE per shard, up to 64 x 64 in all). One pool with a larger idle bound
# would do the same: with one shard the 20-mailbox bench part made as many TLS handshakes
# (~100) at the same CPU within its noise (lead, session 7); not changed for lack of a
# longer run at a few hundred mailboxes.
POOL_SHARDS = 64
PARSED_URLS = 1024  # import URLs kept parsed per adapter (one per import session)
# GET users/{id}/settings/exchange answers the import/export API's mailbox id for a user.
_EXCHANGE_SETTINGS = re.compile(r"(?:^|/)users/([^/?]+)/settings/exchange/?$", re.IGNORECASE)


# A new mailbox answers 404 MailboxNotEnabledForRESTAPI on Graph's Outlook APIs (mail,
# calendar, contacts, To Do, settings/exchange) until Exchange Online has provisioned it and
# Graph serves it, minutes after licensing (Graph known issues, "No instant access after
# creation"; FACTS.md). The same code also answers for a mailbox that is inactive or
# on-premises: the runner gives up on a wait that lasts too long ([engine] waiting_max_s).
MAILBOX_NOT_ENABLED = "MailboxNotEnabledForRESTAPI"
MAILBOX_NOT_SERVED = "mailbox not served by Graph yet (new mailboxes take minutes)"
# Entra's refusal to write an object another service is still writing ("on-premises
# mastered Directory Sync objects or objects currently undergoing migration", Microsoft 365
# Dev blog on the 2020 Users API change); for a MailUser Exchange has just created it passes.
UNDERGOING_MIGRATION = "currently undergoing migration"
OBJECT_MIGRATING = "Graph refuses changes while Exchange is still writing the new object"


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
    if status == 404 and code == MAILBOX_NOT_ENABLED:
        return NotReady(text, reason=MAILBOX_NOT_SERVED, **kw)
    if status == 404:
        return NotFound(text, **kw)
    if status == 400 and UNDERGOING_MIGRATION in str(message or ""):
        return NotReady(text, reason=OBJECT_MIGRATING, **kw)
    if status == 409:
        return Conflict(text, **kw)
    return InvalidRequest(text, **kw)


_JSON_CONTENT = {"Content-Type": "application/json"}
Decoder = Callable[[bytes | bytearray], Any]  # a successful answer's body -> its data


def _short(path: str) -> str:
    """A request path for a message: without its query (a nextLink's skiptoken, a filter)."""
    return path.split("?", 1)[0]


def _connected(exc: httpx.TransportError) -> bool:
    """Whether the request may have reached the service: every transport failure except a
    failure to connect (or to get a pooled connection) happens after sending began."""
    return not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def import_content(body: dict[str, Any]) -> tuple[bytes, ...]:
    """An importItem body as the parts of its JSON, sent in order without being joined.
    `Data` (base64, megabytes) needs no escaping, so it is spliced in instead of being
    scanned by the JSON encoder; encoding it to ASCII is its one copy before TLS."""
    data = body.get("Data")
    if not isinstance(data, str):
        return (jsonlib.dumps(body).encode(),)
    rest = jsonlib.dumps({k: v for k, v in body.items() if k != "Data"}).encode()
    sep = b"" if rest == b"{}" else b", "
    return (rest[:-1] + sep + b'"Data": "', data.encode("ascii"), b'"}')


def _is_write(method: str, path: str, body: Any) -> bool:
    """GET is a read; a $batch of GETs is a read too; everything else writes."""
    if method.upper() == "GET":
        return False
    if path.rstrip("/").endswith("$batch") and isinstance(body, dict):
        return any(r.get("method", "GET").upper() != "GET" for r in body.get("requests", []))
    return True


def directory_writes(method: str, path: str, body: Any) -> int:
    """Directory writes a request costs against the app + tenant write budget: 1 for a
    write outside any mailbox, each such inner write of a $batch (json-batching: every
    inner request is evaluated against the limits), 0 for reads and Outlook requests (those
    are governed per mailbox)."""
    if path.split("?", 1)[0].rstrip("/").endswith("$batch"):
        if not isinstance(body, dict):
            return 0
        return sum(
            1
            for r in body.get("requests") or []
            if isinstance(r, dict)
            and str(r.get("method") or "GET").upper() != "GET"
            and mailbox_of(str(r.get("url") or "")) is None
        )
    return int(method.upper() != "GET" and mailbox_of(path) is None)


def _mailboxes(path: str, body: Any) -> dict[str, int]:
    """Mailbox -> requests charged to it; empty for a directory request."""
    if path.split("?", 1)[0].rstrip("/").endswith("$batch"):
        return batch_mailboxes(body)
    box = mailbox_of(path)
    return {box: 1} if box is not None else {}


def _one(box: str | None) -> dict[str, int]:
    return {box: 1} if box is not None else {}


class GraphAdapter(Adapter):
    """Raw-JSON Graph access for one tenant (async)."""

    scope = GRAPH_SCOPE
    service = "Graph"
    url_setting = "graph_url"

    def __init__(
        self, ep: TenantEndpoint, *, mailbox_limits: MailboxLimits | None = None, **kwargs: Any
    ) -> None:
        super().__init__(ep, **kwargs)
        self.base = ep.graph_url.rstrip("/")
        # Outlook requests are governed per mailbox; directory requests by the tenant Gate.
        self.mailboxes = MailboxGovernor(mailbox_limits or MailboxLimits())
        # Outlook requests go through POOL_SHARDS pools chosen by mailbox (see POOL_SHARDS).
        self._pools: dict[int, Pool] = {}
        self._directory: Pool | None = None
        self._scratch = memoryview(bytearray(SCRATCH))  # shared by the pools (tenants/transport)
        # An import session's URL, parsed once, with the mailbox it is charged to (an
        # importUrl is long: its parsing is not repeated per import).
        self._parsed: dict[str, tuple[Target, str | None]] = {}

    def _pool(self, box: str) -> Pool:
        """The Outlook request pool for `box`'s requests (tenants/transport: HTTP/1.1 on an
        asyncio protocol)."""
        shard = zlib.crc32(self.mailboxes.key(box).encode()) % POOL_SHARDS
        pool = self._pools.get(shard)
        if pool is None:
            # Many requests are in flight at once: keep that many connections alive (httpx
            # kept 20 by default, so every request beyond paid a new TLS handshake).
            pool = self._pools[shard] = Pool(self._tls, self.timeout, KEEPALIVE, self._scratch)
        return pool

    async def _request(
        self,
        box: str | None,
        method: str,
        url: str | Target,
        *,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        body: tuple[bytes, ...] = (),
    ) -> Response:
        """One request on the mailbox's pool, or on the directory pool when `box` is None
        (directory requests take the same HTTP path: a pass's settings/exchange reads and
        user listings cost ~0.6 ms of CPU each over httpx, ~0.1 ms here)."""
        target = url if isinstance(url, Target) else Target(url, params)
        if box is not None:
            return await self._pool(box).request(method, target, headers, body)
        if self._directory is None:
            self._directory = Pool(self._tls, self.timeout, KEEPALIVE, self._scratch)
        return await self._directory.request(method, target, headers, body)

    def _parsed_url(self, url: str) -> tuple[Target, str | None]:
        """A pre-authenticated URL parsed, and its mailbox (`mailbox_of`)."""
        parsed = self._parsed.get(url)
        if parsed is None:
            if len(self._parsed) >= PARSED_URLS:  # old sessions' URLs: expired anyway
                self._parsed.clear()
            parsed = self._parsed[url] = (Target(url), mailbox_of(url))
        return parsed

    async def close(self) -> None:
        for pool in [*self._pools.values(), *([self._directory] if self._directory else [])]:
            await pool.aclose()
        await super().close()

    def url(self, path: str) -> str:
        """The request URL. An absolute Graph link (a nextLink, or a deltaLink saved in the
        journal) is sent to the configured endpoint: its origin is replaced by this tenant's
        Graph origin when the path is a Graph path, so a bearer token only ever goes where
        the project says, and a saved deltaLink survives an endpoint that moved (a proxy, a
        sandbox served again on another port)."""
        if not path.startswith("https://"):
            return f"{self.base}/{path.lstrip('/')}"
        link, base = urlsplit(path), urlsplit(self.base)
        if link.netloc != base.netloc and link.path.startswith(base.path.rstrip("/") + "/"):
            return urlunsplit((base.scheme, base.netloc, link.path, link.query, link.fragment))
        return path

    async def send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
        safe: bool = False,
        decode: Decoder | None = None,
    ) -> Any:
        """One request; returns parsed JSON (or None for 204). Plan mode records writes.

        `safe`: a POST that changes nothing (mailbox `exportItems`), so it is retried like a
        read and sent in plan mode too. `decode`: parses a successful answer's body instead
        of `json.loads` (exportItems' megabytes of base64: graph_io.parse_export).
        """
        if _is_write(method, path, json) and not safe:
            if self.plan is not None:
                self.plan.record("graph", self.label, f"{method} /{path.lstrip('/')}", json or {})
                return None
            before_write()
            writes = directory_writes(method, path, json)
            return await self._governed(method, path, params, json, headers, writes, decode)

        async def read() -> Any:
            return await self._governed(method, path, params, json, headers, 0, decode)

        return await self.read_retry.call(read)

    async def _governed(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        json: Any,
        headers: dict[str, str] | None,
        writes: int = 0,
        decode: Decoder | None = None,
    ) -> Any:
        """Send under the governor that owns the request: the mailbox's, else the tenant's;
        `writes` directory writes are paced to the tenant's write budget first."""
        content = None if json is None else jsonlib.dumps(json, ensure_ascii=False).encode()
        boxes = _mailboxes(path, json)
        async with self.paced_writes(writes):
            if not boxes:
                async with self._gate.slot():
                    data = await self._send(
                        method, path, params, json, content, headers, {}, decode
                    )
            else:
                # Microsoft counts PATCH/POST/PUT bodies against the upload budget
                # (throttling-limits).
                upload = len(content) if content is not None and method.upper() != "GET" else 0
                async with self._mailbox_slots(boxes, upload):
                    data = await self._send(
                        method, path, params, json, content, headers, boxes, decode
                    )
        self._learn_mailbox(method, path, data)
        return data

    def _slot(self, box: str | None, upload: int = 0) -> AbstractAsyncContextManager[None]:
        """The mailbox's governor for an Outlook request, else the tenant's Gate."""
        return self.mailboxes.slot(box, 1, upload) if box is not None else self._gate.slot()

    @asynccontextmanager
    async def _mailbox_slots(self, boxes: dict[str, int], upload: int) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for n, (box, requests) in enumerate(sorted(boxes.items())):  # sorted: no deadlock
                await stack.enter_async_context(
                    self.mailboxes.slot(box, requests, upload if n == 0 else 0)
                )
            yield

    def _learn_mailbox(self, method: str, path: str, data: Any) -> None:
        m = _EXCHANGE_SETTINGS.search(path.split("?", 1)[0])
        if method.upper() == "GET" and m and isinstance(data, dict):
            mbx = data.get("primaryMailboxId")
            if mbx:
                self.mailboxes.alias(str(mbx), m.group(1))

    def _throttled(self, boxes: dict[str, int], retry_after: float | None, upload: bool) -> None:
        if not boxes:
            self._gate.throttle(retry_after)
        for box in boxes:
            self.mailboxes.throttled(box, retry_after, upload=upload)

    def _succeeded(self, boxes: dict[str, int]) -> None:
        if not boxes:
            self._gate.success()
        for box in boxes:
            self.mailboxes.success(box)

    async def _send(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        json: Any,
        content: bytes | None,
        headers: dict[str, str] | None,
        boxes: dict[str, int],
        decode: Decoder | None = None,
    ) -> Any:
        h = {"Authorization": f"Bearer {await self.token()}", **(headers or {})}
        if content is not None:
            h.setdefault("Content-Type", "application/json")
        self.calls += 1
        url = self.url(path)
        try:
            resp = await self._request(
                min(boxes) if boxes else None,
                method,
                url,
                params=params,
                headers=h,
                body=() if content is None else (content,),
            )
        except httpx.TransportError as exc:
            raise self.connection_failed(
                exc, what=f"{method} {_short(path)}", url=url, connected=_connected(exc)
            ) from exc
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = None
            error = parse_error(resp.status_code, body, resp.headers, what=f"{method} {path}")
            if isinstance(error, TransientError):
                self._throttled(boxes, error.retry_after, upload=method.upper() != "GET")
            raise error
        self._succeeded(boxes)
        if _is_write(method, path, json):
            self.writes += 1  # accepted writes only: a throttled attempt is not one
        if resp.status_code == 204 or not resp.content:
            return None
        data = resp.json() if decode is None else decode(resp.content)
        if boxes and path.rstrip("/").endswith("$batch"):
            self._inner_throttles(json, data)
        return data

    def _inner_throttles(self, sent: Any, data: Any) -> None:
        """A $batch answers 200 with throttled inner requests (json-batching): pause their
        mailboxes too, so the caller's retry of them is paced."""
        if not isinstance(data, dict) or not isinstance(sent, dict):
            return
        urls = {str(r.get("id")): str(r.get("url") or "") for r in sent.get("requests") or []}
        for r in data.get("responses") or []:
            if not isinstance(r, dict) or int(r.get("status") or 0) not in (429, 503):
                continue
            box = mailbox_of(urls.get(str(r.get("id")), ""))
            if box is not None:
                inner = {str(k).lower(): str(v) for k, v in (r.get("headers") or {}).items()}
                self.mailboxes.throttled(box, parse_retry_after(inner.get("retry-after")))

    async def batch_get(self, urls: list[str]) -> list[Any]:
        """GET up to BATCH_REQUESTS relative URLs in one JSON $batch; each answer's body, or None when
        that request failed (404...).

        json-batching: the batch answers 200 even when inner requests were throttled; those
        (429/503) are sent again, alone, after the governor's pause, until the retry policy
        gives up - a throttled inner GET is never mistaken for an answer.
        """
        out: list[Any] = [None] * len(urls)
        todo = list(range(len(urls)))

        async def attempt() -> None:
            nonlocal todo
            requests = [{"id": str(n), "method": "GET", "url": urls[n]} for n in todo]
            data = await self._governed("POST", "$batch", None, {"requests": requests}, None)
            again: list[int] = []
            wait: float | None = None
            for r in (data or {}).get("responses", []):
                n, status = int(r.get("id")), int(r.get("status") or 0)
                if status == 200:
                    out[n] = r.get("body")
                elif status in TRANSIENT_STATUS:
                    again.append(n)
                    inner = {str(k).lower(): str(v) for k, v in (r.get("headers") or {}).items()}
                    wait = parse_retry_after(inner.get("retry-after")) or wait
            todo = sorted(again)
            if todo:
                raise TransientError(
                    f"Graph $batch: {len(todo)} inner requests throttled",
                    service="graph",
                    status=429,
                    retry_after=wait,
                )

        if urls:
            await self.read_retry.call(attempt)
        return out

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

        parsed, box = self._parsed_url(import_url)
        upload = import_bytes(body)

        async def attempt() -> dict[str, Any]:
            async with self._slot(box, upload):
                return await self._post_import(parsed, body, box, upload)

        return await self.read_retry.call(attempt)

    async def _post_import(
        self, import_url: Target, body: dict[str, Any], box: str | None, upload: int
    ) -> dict[str, Any]:
        self.calls += 1
        try:
            resp = await self._request(
                box, "POST", import_url, headers=_JSON_CONTENT, body=import_content(body)
            )
        except httpx.TransportError as exc:
            raise self._unsent_or_unknown(exc, "importItem", import_url.raw) from exc
        if resp.status_code >= 400:
            try:
                payload = resp.json()
            except ValueError:
                payload = None
            error = parse_error(resp.status_code, payload, resp.headers, what="POST importItem")
            if isinstance(error, TransientError):
                self._throttled(_one(box), error.retry_after, upload=upload > 0)
                if resp.status_code not in _IMPORT_NOT_PROCESSED:
                    # A 500/502/504 may have created the item: not retried blindly; the mover
                    # resolves it from the target folder on the next pass.
                    raise RemoteError(error.message, service="graph", status=resp.status_code)
            raise error
        self._succeeded(_one(box))
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

    async def get_bytes(self, path: str) -> bytes:
        """GET a raw body (a message's `$value`: its MIME, outlook-get-mime-message)."""

        box = mailbox_of(path)

        async def read() -> bytes:
            async with self._slot(box):
                h = {"Authorization": f"Bearer {await self.token()}"}
                self.calls += 1
                url = self.url(path)
                try:
                    resp = await self._request(box, "GET", url, headers=h)
                except httpx.TransportError as exc:
                    raise self.connection_failed(
                        exc, what=f"GET {_short(path)}", url=url, connected=_connected(exc)
                    ) from exc
                if resp.status_code >= 400:
                    raise self._failure(resp, f"GET {path}", box)
                self._succeeded(_one(box))
                return bytes(resp.content)

        return await self.read_retry.call(read)

    async def put_range(self, upload_url: str, chunk: bytes, start: int, total: int) -> None:
        """PUT one byte range to an attachment upload session's pre-authenticated `uploadUrl`.

        outlook-large-attachments: "Don't specify an Authorization request header" for the
        PUTs; each carries `Content-Range: bytes {start}-{end}/{total}`. A refusal the service
        says was not processed (429/503) is retried after the governor's wait: the range was
        not stored, so sending it again cannot duplicate bytes. A write: plan mode records it.
        """
        if self.plan is not None:
            self.plan.record("graph", self.label, "PUT {uploadUrl}", {"bytes": len(chunk)})
            return
        before_write()
        headers = {"Content-Range": f"bytes {start}-{start + len(chunk) - 1}/{total}"}

        box = mailbox_of(upload_url)

        async def attempt() -> None:
            async with self._slot(box, len(chunk)):
                self.calls += 1
                try:
                    resp = await self._request(
                        box, "PUT", upload_url, headers=headers, body=(chunk,)
                    )
                except httpx.TransportError as exc:
                    raise self._unsent_or_unknown(exc, "upload", upload_url) from exc
                if resp.status_code >= 400:
                    error = self._failure(resp, "PUT uploadUrl", box, upload=True)
                    if (
                        isinstance(error, TransientError)
                        and resp.status_code not in _IMPORT_NOT_PROCESSED
                    ):
                        raise RemoteError(error.message, service="graph", status=resp.status_code)
                    raise error
                self._succeeded(_one(box))
                self.writes += 1

        await self.read_retry.call(attempt)

    def _unsent_or_unknown(self, exc: httpx.TransportError, what: str, url: str) -> RemoteError:
        """A pre-authenticated write (import, upload range) whose connection failed. Failed
        to connect: nothing reached the service, so it is retried (or stops the run when the
        endpoint stays unreachable). Failed later: the write may have been applied, so it is
        not retried blindly; the mover finds out from the target on its next pass."""
        error = self.connection_failed(exc, what=what, url=url, connected=_connected(exc))
        if _connected(exc) and isinstance(error, TransientError):
            return RemoteError(
                f"{error.message} after sending; whether it was applied is not known",
                service="graph",
                next_step="run the command again: the next pass finds what arrived",
            )
        return error

    def _failure(
        self,
        resp: Response | httpx.Response,
        what: str,
        box: str | None = None,
        upload: bool = False,
    ) -> RemoteError:
        try:
            body = resp.json()
        except ValueError:
            body = None
        error = parse_error(resp.status_code, body, resp.headers, what=what)
        if isinstance(error, TransientError):
            self._throttled(_one(box), error.retry_after, upload=upload)
        return error
