"""HTTP/1.1 for the Graph adapter's raw-JSON requests (the per-mailbox Outlook pools and its
directory pool), written straight on an asyncio protocol: no httpx request/response models,
no httpcore, h11 or anyio on the hot path. (The Exchange admin adapter, the Graph SDK client
and azure-identity keep their own HTTP clients.)

Why (issue 16, deliverable 5; bench/graph_mover_bench.py, this 2-core machine): with httpx
over httpcore (even on the asyncio network backend this module held before) a request cost
the client ~1 ms of CPU - httpx's URL and header models, httpcore's pool placement and
per-connection state, h11's event machinery, anyio's locks - ~60 % of the client's CPU per
small item. Measured with bench/http_client_bench.py (3 KB JSON POST, small JSON answer,
TLS, keep-alive, sandbox server in another process): see NOTES-leanhttp.md for the figures.

What it keeps of httpx's behaviour, because the Graph adapter relies on it:
- Failures are httpx's exception classes with the original error as `__cause__`, so
  `tenants.base.connection_cause` classifies them and `graph._connected` tells *unsent*
  (ConnectError / ConnectTimeout: nothing was written) from *maybe sent* (anything after the
  first byte of the request was handed to the connection, including a reused keep-alive
  connection the server had just closed: httpcore's "Server disconnected" is maybe-sent too).
- TLS always verified with the adapter's SSLContext; timeouts for connect, write (while the
  kernel does not take the body) and read (between two arrivals of bytes), as httpx's one
  `timeout=` value sets all four.
- Keep-alive: a connection goes back to its pool only when its answer was read whole and the
  server did not ask to close; an idle connection that has seen an end, an error or stray
  bytes is never reused; idle ones expire after KEEPALIVE_EXPIRY_S (httpx's 5 s) and at most
  `max_idle` wait per origin (httpx's max_keepalive_connections). Connections are not capped
  (the adapter's clients had max_connections=None: the mailbox governors bound them).
- Answers framed by Content-Length, chunked, or the end of the connection; gzip/deflate
  decoded if a server sends them unasked (this client asks for identity: decompressing a 6 MB
  exportItems answer would cost more CPU than all the rest of its path).
- A proxy from the environment (HTTPS_PROXY / ALL_PROXY, not bypassed by NO_PROXY, as
  `urllib.request.getproxies` reads it, which is where httpx reads it too) sends that origin
  through a plain httpx client instead: proxies are not spoken here.

Bodies: an answer with a Content-Length is decrypted straight into one preallocated buffer
(`asyncio.BufferedProtocol`; asyncio's TLS calls `get_buffer` and decrypts into it), so a
4 MB exportItems answer is copied once from the TLS layer; a request body is handed to the
transport as its parts (`writelines`: asyncio's TLS encrypts each part without joining).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import urllib.request
import zlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

KEEPALIVE_EXPIRY_S = 5.0  # httpx's default keepalive_expiry
SCRATCH = (
    256 * 1024
)  # bytes read per socket/TLS read outside a sized body (asyncio's TLS reads 256 KB)
SMALL_BODY = 16 * 1024  # a body this small is sent joined to its head: one TLS record, one segment
# Characters httpx would percent-encode in a request target: such a target goes through
# httpx.URL once to be encoded the same way (Graph's links are plain ASCII in practice).
_UNSAFE = re.compile(r'[^\x21-\x7e]|["<>\\^`{|}]')
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

_HEAD, _FIXED, _CHUNKED, _UNTIL_EOF, _IDLE = range(5)
# One DEBUG line per request, in httpx's words ("HTTP Request: GET <url> "HTTP/1.1 200"") so
# `-v` shows every request as it did over httpx; the log formatter redacts an importUrl's
# authtoken (coexist/logs.py). Checked with isEnabledFor first: off, it costs nothing.
_log = logging.getLogger("coexist.http")


class Target:
    """Where a request goes: origin and request target, parsed once."""

    __slots__ = ("host", "https", "key", "port", "raw", "start")

    def __init__(self, url: str, params: dict[str, Any] | None = None) -> None:
        if params:
            url = _with_params(url, params)
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("https", "http"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {scheme!r}")
        host = parts.hostname or ""
        if not host or not host.isascii():
            host = httpx.URL(url).raw_host.decode("ascii")  # IDNA, as httpx encodes it
        default = 443 if scheme == "https" else 80
        port = parts.port or default
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if _UNSAFE.search(target):
            target = httpx.URL(url).raw_path.decode("ascii")
        shown = f"[{host}]" if ":" in host else host
        self.https = scheme == "https"
        self.host = host
        self.port = port
        self.key = (self.https, host, port)
        self.raw = url
        # "{method} " goes before, the request's own headers after.
        host_header = shown if port == default else f"{shown}:{port}"
        self.start = (
            f" {target} HTTP/1.1\r\nHost: {host_header}\r\nAccept: */*\r\n"
            "Accept-Encoding: identity\r\nUser-Agent: coexist\r\n"
        )


def _with_params(url: str, params: dict[str, Any]) -> str:
    """`url` with `params` as `httpx.Client.request(params=...)` encodes them: httpx joins
    plain str/int values with urllib's `urlencode` (so "$select" is sent "%24select") and
    keeps that string, which is safe as it is. Anything else (a URL with a query already:
    httpx re-encodes it while merging; bools, lists) goes through httpx itself: its URL
    parsing checks every character in Python, ~0.3 ms of CPU for a Graph URL with a query,
    which the common case does not pay."""
    if "?" not in url and all(type(v) in (str, int) and type(k) is str for k, v in params.items()):
        return f"{url}?{urlencode([(k, str(v)) for k, v in params.items()])}"
    return str(httpx.URL(url).copy_merge_params(params))


class Response:
    """An answer read whole: status, raw headers (lower-case names), body."""

    __slots__ = ("content", "raw_headers", "status_code")

    def __init__(
        self, status: int, raw_headers: list[tuple[bytes, bytes]], content: bytes | bytearray
    ) -> None:
        self.status_code = status
        self.raw_headers = raw_headers
        self.content = content

    @property
    def headers(self) -> httpx.Headers:
        """As httpx's case-insensitive headers (built on demand: error answers read them)."""
        return httpx.Headers(self.raw_headers)

    def json(self) -> Any:
        return json.loads(self.content)


def _error(kind: type[httpx.TransportError], cause: BaseException | None, text: str = "") -> Any:
    err = kind(text or str(cause) or type(cause).__name__)
    err.__cause__ = cause
    return err


def _decoded(content: bytes | bytearray, coding: bytes) -> bytes | bytearray:
    """A body in the Content-Encoding a server sent although identity was asked."""
    coding = coding.strip().lower()
    if coding in (b"", b"identity"):
        return content
    try:
        if coding in (b"gzip", b"x-gzip"):
            return zlib.decompress(content, 16 + zlib.MAX_WBITS)
        if coding == b"deflate":  # zlib-wrapped as the RFC says, raw as some servers send
            try:
                return zlib.decompress(content)
            except zlib.error:
                return zlib.decompress(content, -zlib.MAX_WBITS)
    except zlib.error as exc:
        raise _error(httpx.RemoteProtocolError, exc, f"undecodable {coding!r} body") from exc
    raise httpx.RemoteProtocolError(f"unsupported Content-Encoding {coding!r}")


class _Connection(asyncio.BufferedProtocol):
    """One connection and the parser of the answer it is waiting for.

    The answer is parsed in the protocol's callbacks and handed over whole: the request's
    coroutine wakes once per answer, not once per read.
    """

    def __init__(self, scratch: memoryview) -> None:
        self.scratch = scratch  # shared by a pool's connections: filled and read in one call
        self.transport: asyncio.Transport | None = None
        self.state = _IDLE
        self.usable = True  # may carry another request
        self.buf = bytearray()  # head bytes, or chunked bytes not parsed yet
        self.body = bytearray()
        self.got = 0
        self.parts: list[bytes] = []
        self.chunk_left = -1  # chunked: -1 = at a size line; -2 = trailers; else data left
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_only = False
        self.waiter: asyncio.Future[Response] | None = None
        self.drained: asyncio.Future[None] | None = None
        self.writing_paused = False
        self.last = 0.0  # loop time of the last bytes received
        self.timer: asyncio.TimerHandle | None = None
        self.since = 0.0  # loop time it went idle

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.state == _FIXED:
            return memoryview(self.body)[self.got :]
        return self.scratch

    def buffer_updated(self, nbytes: int) -> None:
        state = self.state
        if state == _FIXED:
            self.got += nbytes
            if self.got == len(self.body):
                self._done(self.body)
            else:
                self.last = asyncio.get_running_loop().time()
            return
        data = self.scratch[:nbytes]
        if state == _IDLE:
            self.usable = False  # bytes nobody asked for: this connection is out of step
            return
        self.last = asyncio.get_running_loop().time()
        try:
            if state == _UNTIL_EOF:
                self.parts.append(bytes(data))
                return
            self.buf += data
            if state == _HEAD:
                self._parse_head()
            else:
                self._parse_chunks()
        except httpx.RemoteProtocolError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        self._ended(None)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc)
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    # -- parsing

    def _ended(self, exc: BaseException | None) -> None:
        self.usable = False
        if self.state == _IDLE or self.waiter is None or self.waiter.done():
            return
        if self.state == _UNTIL_EOF and exc is None:
            self._done(b"".join(self.parts))
        elif isinstance(exc, OSError):  # reset, TLS failure: anyio's BrokenResourceError
            self._fail(_error(httpx.ReadError, exc))
        elif self.state == _HEAD and not self.buf:
            # httpcore's words: a reused connection the server closed reads like this too,
            # and counts as maybe-sent (the server may have taken the request first).
            text = "server disconnected without an answer"
            self._fail(_error(httpx.RemoteProtocolError, exc, text))
        else:
            self._fail(_error(httpx.RemoteProtocolError, exc, "server disconnected mid-answer"))

    def _parse_head(self) -> None:
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 256 * 1024:
                    raise httpx.RemoteProtocolError("answer head too long")
                return
            lines = bytes(self.buf[:end]).split(b"\r\n")
            del self.buf[: end + 4]
            version, _, rest = lines[0].partition(b" ")
            if not version.startswith(b"HTTP/1.") or len(rest) < 3 or not rest[:3].isdigit():
                raise httpx.RemoteProtocolError("malformed status line")
            status = int(rest[:3])
            headers: list[tuple[bytes, bytes]] = []
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                if not sep or not name or name[-1:] in b" \t" or line[:1] in b" \t":
                    raise httpx.RemoteProtocolError("malformed header line")
                headers.append((name.lower(), value.strip()))
            if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
                continue
            self.status, self.headers = status, headers
            if version != b"HTTP/1.1":
                self.usable = False
            break
        length: int | None = None
        chunked = False
        for name, value in self.headers:
            if name == b"connection" and b"close" in value.lower():
                self.usable = False
            elif name == b"transfer-encoding":
                chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
                if not chunked:
                    self.state = _UNTIL_EOF
            elif name == b"content-length":
                if not value.isdigit() or (length is not None and length != int(value)):
                    raise httpx.RemoteProtocolError("bad Content-Length")
                length = int(value)
        if self.head_only or status in (204, 304):
            self._done(b"")
        elif chunked:
            self.state, self.chunk_left = _CHUNKED, -1
            self._parse_chunks()
        elif self.state == _UNTIL_EOF or length is None:
            self.state, self.usable = _UNTIL_EOF, False
            if self.buf:
                self.parts.append(bytes(self.buf))
                self.buf.clear()
        elif len(self.buf) >= length:
            content = bytes(self.buf[:length])
            del self.buf[:length]  # what is left is beyond the answer: `_done` refuses reuse
            self._done(content)
        else:
            self.body = bytearray(length)
            self.body[: len(self.buf)] = self.buf
            self.got = len(self.buf)
            self.buf.clear()
            self.state = _FIXED

    def _parse_chunks(self) -> None:
        buf, pos = self.buf, 0
        while True:
            if self.chunk_left > 0:
                take = min(self.chunk_left, len(buf) - pos)
                if take <= 0:
                    break
                self.parts.append(bytes(buf[pos : pos + take]))
                pos += take
                self.chunk_left -= take
                if self.chunk_left == 0:
                    self.chunk_left = -3  # the CRLF after a chunk's data
                continue
            end = buf.find(b"\r\n", pos)
            if end < 0:
                if len(buf) - pos > 64 * 1024:
                    raise httpx.RemoteProtocolError("chunk line too long")
                break
            line = bytes(buf[pos:end])
            pos = end + 2
            if self.chunk_left == -3:
                if line:
                    raise httpx.RemoteProtocolError("chunk not followed by CRLF")
                self.chunk_left = -1
            elif self.chunk_left == -1:
                size = line.split(b";", 1)[0].strip()
                try:
                    self.chunk_left = int(size, 16)
                except ValueError:
                    raise httpx.RemoteProtocolError("bad chunk size") from None
                if self.chunk_left < 0:
                    raise httpx.RemoteProtocolError("bad chunk size")
                if self.chunk_left == 0:
                    self.chunk_left = -2
            elif not line:  # the empty line after the trailers: the answer is complete
                if pos < len(buf):
                    self.usable = False
                del buf[:]
                self._done(b"".join(self.parts))
                return
        del buf[:pos]

    def _done(self, content: bytes | bytearray) -> None:
        self.state = _IDLE
        self.body = bytearray()
        self.parts = []
        if self.buf:
            self.usable = False
        for name, value in self.headers:
            if name == b"content-encoding":
                try:
                    content = _decoded(content, value)
                except httpx.RemoteProtocolError as exc:
                    self._fail(exc)
                    return
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(Response(self.status, self.headers, content))

    def _fail(self, exc: BaseException) -> None:
        self.usable = False
        self.state = _IDLE
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def read_timer(self, timeout: float) -> None:
        """Fail the answer when no bytes arrived for `timeout` seconds (re-armed lazily: one
        timer per answer, not one per read)."""
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        loop = asyncio.get_running_loop()
        due = self.last + timeout
        if loop.time() >= due:
            self._fail(_error(httpx.ReadTimeout, TimeoutError(), "no answer in time"))
        else:
            self.timer = loop.call_at(due, self.read_timer, timeout)

    def reusable(self) -> bool:
        t = self.transport
        return self.usable and self.state == _IDLE and t is not None and not t.is_closing()


class Pool:
    """Keep-alive HTTP/1.1 connections of one shard of the Outlook pools."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        timeout: float | None,
        max_idle: int,
        scratch: memoryview | None = None,
    ) -> None:
        """`scratch`: the buffer reads outside a sized body land in, shareable by every pool
        on one event loop (each read is copied out of it in the same callback): an adapter
        with 64 shards would hold 16 MB of them otherwise."""
        self._tls = ssl_context
        self._timeout = timeout
        self._max_idle = max_idle
        self._idle: dict[tuple[bool, str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._scratch = scratch if scratch is not None else memoryview(bytearray(SCRATCH))
        self._proxied: dict[tuple[bool, str, int], bool] = {}
        self._fallback: httpx.AsyncClient | None = None

    async def request(
        self,
        method: str,
        target: Target,
        headers: dict[str, str] | None = None,
        body: Sequence[bytes] = (),
    ) -> Response:
        """Send one request and read its answer whole. `body`: the parts of the body, sent
        in order without being joined."""
        proxied = self._proxied.get(target.key)
        if proxied is None:
            proxied = self._proxied[target.key] = _proxied(target)
        if proxied:
            return await self._via_httpx(method, target, headers, body)
        lines = [method, target.start]
        for name, value in (headers or {}).items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise httpx.LocalProtocolError(f"illegal character in header {name}")
            lines.append(f"{name}: {value}\r\n")
        size = sum(len(p) for p in body)
        if size or method in _BODY_METHODS:
            lines.append(f"Content-Length: {size}\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")

        conn = self._idle_connection(target.key) or await self._connect(target)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Response] = loop.create_future()
        conn.waiter, conn.state, conn.head_only = waiter, _HEAD, method == "HEAD"
        conn.buf.clear()
        transport = conn.transport
        assert transport is not None
        done = False
        try:
            if size <= SMALL_BODY:
                transport.write(b"".join((head, *body)) if size else head)
            else:
                transport.writelines([head, *body])
            if conn.writing_paused:
                await self._drain(conn, waiter)
            conn.last = loop.time()
            if self._timeout is not None:
                conn.timer = loop.call_at(conn.last + self._timeout, conn.read_timer, self._timeout)
            response = await waiter
            done = True
            if _log.isEnabledFor(logging.DEBUG):
                _log.debug(
                    'HTTP Request: %s %s "HTTP/1.1 %d"', method, target.raw, response.status_code
                )
            return response
        finally:
            conn.waiter = None
            if conn.timer is not None:
                conn.timer.cancel()
                conn.timer = None
            if done and conn.reusable():
                self._release(target.key, conn)
            else:
                self._discard(conn)

    async def _drain(self, conn: _Connection, waiter: asyncio.Future[Response]) -> None:
        """Wait while the transport holds more than its high-water mark of the body; an
        answer or a failure that arrives meanwhile ends the wait (the answer says why)."""
        loop = asyncio.get_running_loop()
        while conn.writing_paused and not waiter.done():
            conn.drained = loop.create_future()
            try:
                async with asyncio.timeout(self._timeout):
                    await conn.drained
            except TimeoutError as exc:
                raise _error(httpx.WriteTimeout, exc, "the body was not taken in time") from exc
            finally:
                conn.drained = None

    def _idle_connection(self, key: tuple[bool, str, int]) -> _Connection | None:
        stack = self._idle.get(key)
        if not stack:
            return None
        now = asyncio.get_running_loop().time()
        while stack:
            conn = stack.pop()  # the most recent: the least likely to have been closed
            if conn.reusable() and now - conn.since < KEEPALIVE_EXPIRY_S:
                return conn
            self._discard(conn)
        return None

    def _release(self, key: tuple[bool, str, int], conn: _Connection) -> None:
        conn.since = asyncio.get_running_loop().time()
        stack = self._idle.setdefault(key, [])
        while stack and (
            len(stack) >= self._max_idle or conn.since - stack[0].since >= KEEPALIVE_EXPIRY_S
        ):
            self._discard(stack.pop(0))
        stack.append(conn)

    def _discard(self, conn: _Connection) -> None:
        self._open.discard(conn)
        conn.usable = False
        if conn.transport is not None:
            conn.transport.abort()  # nothing worth flushing: an idle or a failed connection

    async def _connect(self, target: Target) -> _Connection:
        loop = asyncio.get_running_loop()
        scratch = self._scratch
        tls = self._tls if target.https else None
        try:
            async with asyncio.timeout(self._timeout):
                # Happy eyeballs (RFC 8305's 250 ms), as anyio connects: a host whose IPv6
                # route is broken is reached over IPv4 without waiting for a timeout. The
                # handshake's own timeout is left longer than ours, so ours is what fires.
                _, conn = await loop.create_connection(
                    lambda: _Connection(scratch),
                    target.host,
                    target.port,
                    ssl=tls,
                    server_hostname=target.host if tls else None,
                    ssl_handshake_timeout=None if tls is None else (self._timeout or 50) + 10,
                    happy_eyeballs_delay=0.25,
                )
        except TimeoutError as exc:
            raise _error(httpx.ConnectTimeout, exc, "no connection in time") from exc
        except OSError as exc:  # refused, unresolved, TLS (ssl.SSLError is an OSError)
            raise _error(httpx.ConnectError, exc) from exc
        self._open.add(conn)
        return conn

    async def _via_httpx(
        self, method: str, target: Target, headers: dict[str, str] | None, body: Sequence[bytes]
    ) -> Response:
        if self._fallback is None:
            self._fallback = httpx.AsyncClient(verify=self._tls, timeout=self._timeout)
        content = b"".join(body) if body else None
        resp = await self._fallback.request(method, target.raw, content=content, headers=headers)
        return Response(resp.status_code, list(resp.headers.raw), resp.content)

    async def aclose(self) -> None:
        for conn in list(self._open):
            self._discard(conn)
        self._idle.clear()
        if self._fallback is not None:
            await self._fallback.aclose()


def _proxied(target: Target) -> bool:
    """Whether httpx would send this origin through a proxy from the environment."""
    proxies = urllib.request.getproxies()
    if not (proxies.get("https" if target.https else "http") or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(target.host)
