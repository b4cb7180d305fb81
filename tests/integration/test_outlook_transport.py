"""Outlook requests go through coexist's own HTTP/1.1 client (tenants/transport.py): the same
answers and the same clear errors as httpx's transport, over real sockets.

The directory cases of test_connection_errors.py, sent to a mailbox path (so the Graph
adapter places them on its per-mailbox pools), plus what only a long-lived pool meets: a
server that closes idle connections, one that drops the connection mid-answer, and bodies
far larger than a TLS record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme

from coexist.errors import RemoteError, TLSError, TransientError, Unreachable
from coexist.tenants.auth import TenantEndpoint
from coexist.tenants.graph import GraphAdapter
from coexist.tenants.transport import Pool
from tests.integration.test_connection_errors import (
    QUICK,
    closed_port,
    server_factory,  # noqa: F401 - a fixture
    target,
)

MAILBOX_PATH = "users/someone/messages"


def outlook_error(ep: Any, **kwargs: Any) -> BaseException:
    """What a mailbox GET raises through a GraphAdapter for `ep`."""

    async def go() -> BaseException:
        async with GraphAdapter(ep, label="target", read_retry=QUICK, **kwargs) as graph:
            with pytest.raises((TLSError, TransientError)) as exc:
                await graph.send("GET", MAILBOX_PATH)
            return exc.value

    return asyncio.run(go())


def test_mailbox_requests_use_the_lean_pools(conn: dict[str, Any]) -> None:
    """Mailbox requests go through a `Pool` (what the rest of this file tests), and the
    sandbox answers them there."""

    async def go() -> None:
        async with GraphAdapter(target(conn), label="target") as graph:
            assert isinstance(graph._pool("someone"), Pool)
            users = await graph.list_all("users")
            box = users[0]["id"]
            folders = await graph.send("GET", f"users/{box}/mailFolders")
            assert isinstance(folders, dict) and "value" in folders
            assert graph._pools  # the answer came through a mailbox pool

    asyncio.run(go())


def test_refused_is_unreachable(conn: dict[str, Any]) -> None:
    """A closed port: Unreachable, "connection refused", retried by the read policy first."""
    port = closed_port()
    err = outlook_error(target(conn, graph_url=f"https://127.0.0.1:{port}/v1.0"))
    assert isinstance(err, Unreachable) and err.stops_run
    assert "connection refused" in err.message


def test_untrusted_certificate_is_a_tls_error(conn: dict[str, Any], server_factory: Any) -> None:  # noqa: F811
    """A certificate another CA signed: TLSError naming the verification failure."""
    cert = trustme.CA().issue_cert("127.0.0.1")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)

    def handshake(c: socket.socket) -> None:
        with contextlib.suppress(ssl.SSLError, OSError):
            ctx.wrap_socket(c, server_side=True).recv(1)

    server = server_factory(handshake)
    err = outlook_error(target(conn, graph_url=f"https://127.0.0.1:{server.port}/v1.0"))
    assert isinstance(err, TLSError) and "not trusted" in err.message


def test_plain_tcp_is_a_tls_error(conn: dict[str, Any], server_factory: Any) -> None:  # noqa: F811
    """An HTTP port where HTTPS is expected: the handshake failure is named."""

    def http(c: socket.socket) -> None:
        c.recv(4096)
        c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    server = server_factory(http)
    err = outlook_error(target(conn, graph_url=f"https://127.0.0.1:{server.port}/v1.0"))
    assert isinstance(err, TLSError) and "TLS handshake failed" in err.message


def test_silence_times_out(conn: dict[str, Any], server_factory: Any) -> None:  # noqa: F811
    """A server that accepts and never speaks: a timeout, not a hang."""
    held: list[socket.socket] = []
    server = server_factory(lambda c: held.append(c.dup()))
    err = outlook_error(
        target(conn, graph_url=f"https://127.0.0.1:{server.port}/v1.0"), timeout=0.5
    )
    assert isinstance(err, Unreachable) and "no connection within 0.5 s" in err.message
    for c in held:
        c.close()


def tls_server(
    server_factory: Any,  # noqa: F811
    conn: dict[str, Any],
    tmp_path: Path,
    answer: Any,
) -> TenantEndpoint:
    """A TLS server the project trusts (its CA added to the sandbox's in `ca_file`: the
    token still comes from the sandbox); `answer(tls)` serves each connection."""
    return tls_serve(server_factory, conn, tmp_path, answer)[0]


def tls_serve(
    server_factory: Any,  # noqa: F811
    conn: dict[str, Any],
    tmp_path: Path,
    answer: Any,
) -> tuple[TenantEndpoint, Any]:
    """`tls_server`, and the server (its `accepted` count)."""
    ca = trustme.CA()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)

    def serve(c: socket.socket) -> None:
        with contextlib.suppress(ssl.SSLError, OSError):
            answer(ctx.wrap_socket(c, server_side=True))

    server = server_factory(serve)
    ep = target(conn)
    bundle = tmp_path / "cas.pem"
    bundle.write_bytes(Path(str(ep.ca_file)).read_bytes() + b"\n" + ca.cert_pem.bytes())
    graph_url = f"https://127.0.0.1:{server.port}/v1.0"
    return target(conn, graph_url=graph_url, ca_file=str(bundle)), server


def read_request(tls: ssl.SSLSocket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(65536)
        if not chunk:
            return b""
        data += chunk
    return data


def adapter_for(ep: TenantEndpoint) -> GraphAdapter:
    return GraphAdapter(ep, label="target", read_retry=QUICK)


def test_large_bodies_and_reused_connections(
    conn: dict[str, Any],
    server_factory: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Answers of many TLS records arrive whole and in order, several on one connection."""
    body = b'{"value": "' + b"x" * (3 * 1024 * 1024 + 17) + b'"}'

    def answer(tls: ssl.SSLSocket) -> None:
        while read_request(tls):
            tls.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )

    ep = tls_server(server_factory, conn, tmp_path, answer)

    async def go() -> None:
        async with adapter_for(ep) as graph:
            for _ in range(3):
                data = await graph.send("GET", MAILBOX_PATH)
                assert data == {"value": "x" * (3 * 1024 * 1024 + 17)}
            assert graph.calls == 3

    asyncio.run(go())


def test_a_connection_the_server_closed_is_not_reused(
    conn: dict[str, Any],
    server_factory: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A server that closes each connection after one answer (keep-alive ended): the next
    request opens a new connection instead of failing on the closed one."""

    def answer(tls: ssl.SSLSocket) -> None:
        if read_request(tls):
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        tls.close()

    ep = tls_server(server_factory, conn, tmp_path, answer)

    async def go() -> None:
        async with adapter_for(ep) as graph:
            for _ in range(3):
                assert await graph.send("GET", MAILBOX_PATH) == {}
                await asyncio.sleep(0.05)  # the close reaches the client

    asyncio.run(go())


def test_a_connection_dropped_mid_answer_is_a_transient_error(
    conn: dict[str, Any],
    server_factory: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A server that dies halfway through an answer: a retryable failure after the read
    policy's attempts, never a truncated answer taken as whole."""

    def answer(tls: ssl.SSLSocket) -> None:
        if read_request(tls):
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"{" * 5000)
        tls.close()

    ep = tls_server(server_factory, conn, tmp_path, answer)

    async def go() -> RemoteError:
        async with adapter_for(ep) as graph:
            with pytest.raises(TransientError) as exc:
                await graph.send("GET", MAILBOX_PATH)
            assert graph.calls == QUICK.max_attempts
            return exc.value

    asyncio.run(go())


def test_chunked_answers_and_interim_answers(
    conn: dict[str, Any],
    server_factory: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A chunked answer (chunk extensions, a trailer, a chunk split across TLS records)
    after a 100 Continue arrives whole, and its connection is reused."""
    payload = b'{"value": "' + b"y" * 70000 + b'"}'
    chunked = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{10:x};ext=1\r\n".encode()
        + payload[:10]
        + b"\r\n"
        + f"{len(payload) - 10:x}\r\n".encode()
        + payload[10:]
        + b"\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )

    def answer(tls: ssl.SSLSocket) -> None:
        while read_request(tls):
            for n in range(0, len(chunked), 7000):  # many records, boundaries anywhere
                tls.sendall(chunked[n : n + 7000])

    ep, server = tls_serve(server_factory, conn, tmp_path, answer)

    async def go() -> None:
        async with adapter_for(ep) as graph:
            for _ in range(3):
                assert await graph.send("GET", MAILBOX_PATH) == {"value": "y" * 70000}

    asyncio.run(go())
    assert server.accepted == 1  # one connection carried the three requests


def test_small_answers_in_one_record_reuse_the_connection(
    conn: dict[str, Any],
    server_factory: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    """An answer whose head and body arrive in one TLS record leaves its connection
    reusable: three requests, one connection."""

    def answer(tls: ssl.SSLSocket) -> None:
        while read_request(tls):
            tls.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"a": true}')

    ep, server = tls_serve(server_factory, conn, tmp_path, answer)

    async def go() -> None:
        async with adapter_for(ep) as graph:
            for _ in range(3):
                assert await graph.send("GET", MAILBOX_PATH) == {"a": True}

    asyncio.run(go())
    assert server.accepted == 1


IMPORT_PATH = "/api/gbeta/Mailboxes('MBX:0001@example.org')/importItem?token=SECRET-IMPORT-TOKEN"
IMPORT_BODY = {"FolderId": "F", "Mode": "create", "Data": "QUJD"}


def test_an_import_refused_before_sending_is_retried_then_unreachable(
    conn: dict[str, Any],
) -> None:
    """An import whose connection was refused reached nothing: it is retried (unsent), then
    the run stops on Unreachable; the message never shows the importUrl's credential."""
    port = closed_port()

    async def go() -> None:
        async with adapter_for(target(conn)) as graph:
            with pytest.raises(Unreachable) as exc:
                await graph.post_import(f"https://127.0.0.1:{port}{IMPORT_PATH}", IMPORT_BODY)
            assert graph.calls == QUICK.max_attempts
            assert "SECRET" not in exc.value.message and "SECRET" not in str(exc.value)

    asyncio.run(go())


def test_an_import_dropped_after_sending_is_not_retried(
    conn: dict[str, Any],
    server_factory: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    """An import whose connection dropped after the request was sent may have created the
    item: one attempt, a RemoteError saying so, not a retryable TransientError."""
    seen: list[bytes] = []

    def answer(tls: ssl.SSLSocket) -> None:
        head = read_request(tls)
        seen.append(head)
        tls.close()  # no answer

    ep, server = tls_serve(server_factory, conn, tmp_path, answer)
    url = str(ep.graph_url).split("/v1.0")[0] + IMPORT_PATH

    async def go() -> None:
        async with adapter_for(ep) as graph:
            with pytest.raises(RemoteError) as exc:
                await graph.post_import(url, IMPORT_BODY)
            assert not isinstance(exc.value, TransientError)
            assert "whether it was applied is not known" in exc.value.message
            assert "SECRET" not in exc.value.message and "SECRET" not in str(exc.value)
            assert graph.calls == 1

    asyncio.run(go())
    assert server.accepted == 1 and seen[0].startswith(b"POST /api/gbeta/Mailboxes(")


def test_an_import_body_arrives_whole_with_its_length(
    conn: dict[str, Any],
    server_factory: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A multi-megabyte import body, sent as parts, arrives as one JSON document of the
    announced Content-Length, without an Authorization header (the URL is the credential)."""
    data = "QUJD" * (1024 * 1024)  # 4 MB of base64
    got: list[bytes] = []

    def answer(tls: ssl.SSLSocket) -> None:
        head = read_request(tls)
        top, _, rest = head.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in top.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = rest
        while len(body) < length:
            body += tls.recv(1 << 20)
        got.extend((top, body))
        tls.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{"itemId": "I"}')

    ep, _ = tls_serve(server_factory, conn, tmp_path, answer)
    url = str(ep.graph_url).split("/v1.0")[0] + IMPORT_PATH

    async def go() -> None:
        async with adapter_for(ep) as graph:
            assert await graph.post_import(url, {**IMPORT_BODY, "Data": data}) == {"itemId": "I"}

    asyncio.run(go())
    top, body = got
    assert b"authorization" not in top.lower()
    assert json.loads(body) == {**IMPORT_BODY, "Data": data}
