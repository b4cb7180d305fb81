"""A failed connection is one clear error naming the endpoint, the cause and the fix.

Issue 10: an unreachable endpoint or a TLS failure printed ~150 lines of traceback after
~6 s. The adapters (httpx) and the token endpoint (azure-identity over aiohttp) now map
every connection failure once (`coexist.tenants.base.connection_error`). Each case here is
a real socket: a closed port, a TLS server whose CA is not the project's, a plain-TCP
server where HTTPS is expected, a server that accepts and never answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from coexist.errors import TLSError, TransientError, Unreachable
from coexist.retry import RetryPolicy
from coexist.tenants.auth import TenantEndpoint
from coexist.tenants.base import connection_cause
from coexist.tenants.exo import ExoRunner
from coexist.tenants.graph import GraphAdapter

QUICK = RetryPolicy(max_attempts=3, max_wait_s=10, base_s=0.01, cap_s=0.05)


def closed_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class Server:
    """A TCP server on 127.0.0.1 in a thread: `handle(conn)` runs per connection."""

    def __init__(self, handle: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self._handle = handle
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            try:
                self._handle(conn)
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server_factory() -> Iterator[Any]:
    servers: list[Server] = []

    def make(handle: Any) -> Server:
        servers.append(Server(handle))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def target(conn: dict[str, Any], **changes: Any) -> TenantEndpoint:
    return dataclasses.replace(TenantEndpoint.from_sandbox(conn, "target"), **changes)


def graph_error(ep: TenantEndpoint, **kwargs: Any) -> BaseException:
    """What GET users raises through a GraphAdapter for `ep`."""

    async def go() -> BaseException:
        async with GraphAdapter(ep, label="target", read_retry=QUICK, **kwargs) as graph:
            with pytest.raises((TLSError, TransientError)) as exc:
                await graph.send("GET", "users")
            return exc.value

    return asyncio.run(go())


# -- Graph (directory requests, on tenants/transport.Pool) -----------------------------------------
def test_unreachable_endpoint_names_endpoint_cause_and_fix(conn: dict[str, Any]) -> None:
    """A closed Graph port: Unreachable naming the endpoint, "connection refused", the setting
    and the sandbox hint; retried by the read policy first, and it stops the run."""
    port = closed_port()
    err = graph_error(target(conn, graph_url=f"https://127.0.0.1:{port}/v1.0"))
    assert isinstance(err, Unreachable) and err.stops_run
    assert f"the target tenant's Graph at https://127.0.0.1:{port}" in err.message
    assert "connection refused" in err.message
    assert err.next_step is not None
    assert "[target] graph_url" in err.next_step and "coexist sandbox serve" in err.next_step
    assert err.to_dict()["endpoint"] == f"https://127.0.0.1:{port}" and err.service == "graph"


def test_tls_failure_names_the_fix(conn: dict[str, Any], server_factory: Any) -> None:
    """A Graph endpoint whose certificate another CA signed (a TLS-inspecting proxy): a
    TLSError naming the endpoint, the verification failure and `ca_file`; not retried."""
    other_ca = trustme.CA()
    cert = other_ca.issue_cert("127.0.0.1")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)

    def handshake(c: socket.socket) -> None:
        with contextlib.suppress(ssl.SSLError, OSError):  # the client gives up: expected
            ctx.wrap_socket(c, server_side=True).recv(1)

    server = server_factory(handshake)
    url = f"https://127.0.0.1:{server.port}"

    async def go() -> TLSError:
        async with GraphAdapter(target(conn, graph_url=f"{url}/v1.0"), label="target") as graph:
            with pytest.raises(TLSError) as exc:
                await graph.send("GET", "users")
            assert graph.calls == 1  # a certificate does not change on retry
            return exc.value

    err = asyncio.run(go())
    assert err.stops_run and f"the target tenant's Graph at {url}" in err.message
    assert "not trusted" in err.message and "certificate" in err.cause
    assert err.next_step is not None and "ca_file in [target]" in err.next_step


def test_plain_tcp_where_https_is_expected_is_a_tls_error(
    conn: dict[str, Any], server_factory: Any
) -> None:
    """An HTTP (not HTTPS) port: the handshake failure is named, with the URL to check."""

    def http(c: socket.socket) -> None:
        c.recv(4096)
        c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    server = server_factory(http)
    err = graph_error(target(conn, graph_url=f"https://127.0.0.1:{server.port}/v1.0"))
    assert isinstance(err, TLSError) and "TLS handshake failed" in err.message
    assert err.next_step is not None and "[target] graph_url" in err.next_step


def test_an_endpoint_that_never_answers_times_out_clearly(
    conn: dict[str, Any], server_factory: Any
) -> None:
    """A server that accepts and never speaks: "no connection within N s", not a hang."""
    held: list[socket.socket] = []
    server = server_factory(lambda c: held.append(c.dup()))
    err = graph_error(target(conn, graph_url=f"https://127.0.0.1:{server.port}/v1.0"), timeout=0.5)
    assert isinstance(err, Unreachable) and "no connection within 0.5 s" in err.message
    for c in held:
        c.close()


def test_exchange_connection_failure_names_the_cmdlet(conn: dict[str, Any]) -> None:
    """The Exchange adapter maps the same way, naming the cmdlet and `exo_url`."""
    port = closed_port()
    ep = target(conn, exo_url=f"https://127.0.0.1:{port}/adminapi/beta/x/InvokeCommand")

    async def go() -> Unreachable:
        async with ExoRunner(ep, label="target", read_retry=QUICK) as exo:
            with pytest.raises(Unreachable) as exc:
                await exo.run("Get-Mailbox")
            assert exo.calls == QUICK.max_attempts  # retried, then given up
            return exc.value

    err = asyncio.run(go())
    assert not err.retryable  # retried once (here), not again by the engine around a step
    assert "the target tenant's Exchange at" in err.message and "(Get-Mailbox)" in err.message
    assert err.next_step is not None and "[target] exo_url" in err.next_step


# -- the token endpoint (azure-identity) ----------------------------------------------------------
def test_unreachable_token_endpoint_is_not_retried_twice(conn: dict[str, Any]) -> None:
    """A closed authority port: Unreachable naming the token endpoint and `authority`;
    azure-identity retried it already, so coexist does not retry it again."""
    port = closed_port()
    err = graph_error(target(conn, authority=f"https://127.0.0.1:{port}"))
    assert isinstance(err, Unreachable) and not err.retryable and err.service == "identity"
    assert f"the target tenant's Entra ID token endpoint at https://127.0.0.1:{port}" in err.message
    assert err.next_step is not None and "[target] authority" in err.next_step


def test_untrusted_token_endpoint_names_the_fix(conn: dict[str, Any], tmp_path: Path) -> None:
    """The sandbox served with a CA the project does not hold (a sandbox started again with
    new state): a TLSError from the token endpoint naming `ca_file`."""
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    err = graph_error(target(conn, ca_file=str(other)))
    assert isinstance(err, TLSError)
    assert "token endpoint" in err.message and "not trusted" in err.message
    assert err.next_step is not None and "ca_file in [target]" in err.next_step


# -- what the failure wraps -----------------------------------------------------------------------
def wrapped(inner: BaseException) -> httpx.ConnectError:
    """An httpx.ConnectError caused by `inner`, as httpx raises it."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise httpx.ConnectError(str(exc)) from exc
    except httpx.ConnectError as outer:
        return outer


@pytest.mark.parametrize(
    ("inner", "kind"),
    [
        (socket.gaierror(-2, "Name or service not known"), "dns"),
        (ConnectionRefusedError(111, "Connection refused"), "refused"),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), "untrusted"),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "tls"),
        (TimeoutError(), "timeout"),
        (ConnectionResetError(104, "Connection reset by peer"), "dropped"),
    ],
)
def test_connection_causes_are_told_apart(inner: BaseException, kind: str) -> None:
    """Name resolution, refusal, certificate, handshake, timeout and reset are each named."""
    assert connection_cause(wrapped(inner)).kind == kind
