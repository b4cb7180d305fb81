"""An httpx transport on asyncio's own sockets and TLS, for the Outlook request pools.

httpx's default transport runs httpcore over anyio, which on asyncio costs the client more
CPU than the request itself in the mover's hot path (profiled, bench/graph_mover_bench.py):
every read and write opens a cancel scope for its timeout, a TLS read hands httpcore one TLS
record (16 KB) at a time, so a 6 MB exportItems answer took ~400 trips through httpcore,
h11 and anyio, and every request placed on a pool asked each idle connection whether it was
readable by building anyio's attribute table and polling its socket.

This module gives httpcore a network backend (`httpcore.AsyncNetworkBackend`, its public
extension point, passed to `httpcore.AsyncConnectionPool(network_backend=...)`) made of an
asyncio protocol: asyncio's TLS (`loop.start_tls`) decrypts what one socket read brought in
one piece, a read returns whatever is buffered (up to httpcore's 64 KB), a timeout is armed
only when a read or write has to wait, and a connection knows it was closed without a
syscall. `Transport` is the httpx transport over that pool (`httpx.AsyncBaseTransport`,
public), doing what httpx's own does: the request and response conversion and the mapping of
httpcore's errors to httpx's, the originals kept as the cause (`tenants.base` classifies a
failure by that chain).

Failures read as they did over anyio: a connection refused, unresolved or untrusted raises
ConnectError (ConnectTimeout when late) from the OSError / ssl error; a connection reset
ReadError / WriteError; a peer that closes (with or without TLS close_notify) reads as the
end of the stream, which httpcore reports as a RemoteProtocolError mid-answer.
"""

from __future__ import annotations

import asyncio
import ssl
import typing
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import httpcore
import httpx

# Bytes buffered from a connection before reading from its socket pauses (httpcore reads
# 64 KB at a time, as it consumes them).
HIGH_WATER = 1024 * 1024


class _Protocol(asyncio.Protocol):
    """One connection's received bytes, end and error; write flow control."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.error: BaseException | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > HIGH_WATER and not self.reading_paused and self.transport:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def _wait(fut: asyncio.Future[None], timeout: float | None) -> None:
    """Wait for `fut`, raising TimeoutError after `timeout` seconds (None: no limit)."""
    handle = (
        None if timeout is None else asyncio.get_running_loop().call_later(timeout, _expire, fut)
    )
    try:
        await fut
    finally:
        if handle is not None:
            handle.cancel()


class Stream(httpcore.AsyncNetworkStream):
    """One TCP (then TLS) connection as httpcore sees it."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        p = self._protocol
        if not p.chunks and not p.eof:
            p.waiter = asyncio.get_running_loop().create_future()
            try:
                await _wait(p.waiter, timeout)
            except TimeoutError as exc:
                raise httpcore.ReadTimeout(str(exc)) from exc
            finally:
                p.waiter = None
        if p.chunks:
            data = p.chunks.popleft()
            if len(data) > max_bytes:
                p.chunks.appendleft(data[max_bytes:])
                data = data[:max_bytes]
            p.buffered -= len(data)
            if p.reading_paused and p.buffered <= HIGH_WATER // 4:
                p.reading_paused = False
                self._transport.resume_reading()
            return data
        if isinstance(p.error, OSError):  # reset, not closed: anyio's BrokenResourceError
            raise httpcore.ReadError(str(p.error)) from p.error
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        p = self._protocol
        if p.error is not None or self._transport.is_closing():
            raise httpcore.WriteError(str(p.error or "connection closed")) from p.error
        self._transport.write(buffer)
        if p.writing_paused:
            p.drained = asyncio.get_running_loop().create_future()
            try:
                await _wait(p.drained, timeout)
            except TimeoutError as exc:
                raise httpcore.WriteTimeout(str(exc)) from exc
            finally:
                p.drained = None
            if p.error is not None:
                raise httpcore.WriteError(str(p.error)) from p.error

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                tls = await loop.start_tls(
                    self._transport, self._protocol, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError as exc:
            self._transport.close()
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except (OSError, ssl.SSLError) as exc:
            self._transport.close()
            raise httpcore.ConnectError(str(exc)) from exc
        if tls is None:  # the connection closed during the handshake
            raise httpcore.ConnectError("connection closed during the TLS handshake")
        return Stream(tls, self._protocol)

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "is_readable":  # an idle connection with data or an end: unusable
            return self._protocol.eof or bool(self._protocol.chunks)
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info in ("ssl_object", "socket"):
            return self._transport.get_extra_info(info)
        return None


class Backend(httpcore.AsyncNetworkBackend):
    """httpcore's connections on asyncio's transports."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = None if local_address is None else (local_address, 0)
        try:
            async with asyncio.timeout(timeout):
                # Happy eyeballs (RFC 8305's 250 ms), as anyio connects: a host whose IPv6
                # route is broken is reached over IPv4 without waiting for a timeout.
                transport, protocol = await loop.create_connection(
                    _Protocol, host, port, local_addr=local, happy_eyeballs_delay=0.25
                )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return Stream(transport, protocol)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("unix sockets are not used by coexist")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


# httpcore's errors as httpx raises them (httpx's own transport maps them the same way).
_ERRORS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
)


@contextmanager
def _mapped() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        mapped: type[httpx.HTTPError] | None = None
        for source, target in _ERRORS:
            # The most specific: a ReadTimeout is httpx's ReadTimeout, not TimeoutException.
            if isinstance(exc, source) and (mapped is None or issubclass(target, mapped)):
                mapped = target
        if mapped is None:
            raise
        raise mapped(str(exc)) from exc


class _Body(httpx.AsyncByteStream):
    def __init__(self, stream: typing.AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over `Backend`, with httpx's limits (no proxy: a client given this transport
    still sends proxied origins through httpx's own, from the environment)."""

    def __init__(self, ssl_context: ssl.SSLContext, limits: httpx.Limits) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=Backend(),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        url = request.url
        req = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _mapped():
            resp = await self._pool.handle_async_request(req)
        assert isinstance(resp.stream, typing.AsyncIterable)
        return httpx.Response(
            status_code=resp.status,
            headers=resp.headers,
            stream=_Body(resp.stream),
            extensions=resp.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
