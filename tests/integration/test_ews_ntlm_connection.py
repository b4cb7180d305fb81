"""NTLM on the sandbox's EWS face is bound to the TCP connection, as IIS binds it.

Raw HTTP/1.1 over TLS (http.client on a socket this test binds, so it can choose the local port
and abort with RST) and pyspnego's NTLM client: exchangelib would hide which connection a
request went over, which is the point here.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import spnego

from coexist.sandbox import Sandbox
from coexist.sandbox.ews import EWS_PATH
from coexist.sandbox.ews.auth import USER_FILE
from coexist.sandbox.ews.face import ERRORS_KEY
from tests import ewsclient as ec
from tests.clients import tls

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"


@dataclass
class Answer:
    status: int
    challenges: list[str]
    body: bytes


class Conn:
    """One TCP connection to the sandbox (never silently reopened)."""

    def __init__(self, sb: Sandbox, local_port: int = 0) -> None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # The port of a connection this test just aborted is bound again at once.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        raw.bind((sb.host, local_port))
        raw.connect((sb.host, sb.port))
        context: ssl.SSLContext = tls(sb.connection)
        self.sock = context.wrap_socket(raw, server_hostname=sb.host)
        self.local_port: int = self.sock.getsockname()[1]
        self.http = http.client.HTTPSConnection(sb.host, sb.port, context=context)
        self.http.sock = self.sock
        self.http.auto_open = 0  # a closed connection raises instead of reconnecting

    def post(self, body: bytes, authorization: str | None = None) -> Answer:
        headers = {"Content-Type": "text/xml; charset=utf-8"}
        if authorization:
            headers["Authorization"] = authorization
        self.http.request("POST", EWS_PATH, body=body, headers=headers)
        resp = self.http.getresponse()
        data = resp.read()
        assert resp.getheader("Connection", "").lower() != "close"
        assert self.sock.getsockname()[1] == self.local_port  # still this connection
        return Answer(resp.status, resp.headers.get_all("WWW-Authenticate") or [], data)

    def ntlm_sign_in(self, body: bytes, user: str, password: str) -> Answer:
        """NTLM's three legs on this connection; the last answer."""
        client = spnego.client(user, password, protocol="ntlm")
        negotiate = client.step()
        assert negotiate is not None
        first = self.post(body, "NTLM " + base64.b64encode(negotiate).decode())
        assert first.status == 401
        challenge = next(v for v in first.challenges if v.startswith("NTLM "))
        authenticate = client.step(base64.b64decode(challenge.split(" ", 1)[1]))
        assert authenticate is not None and client.complete
        return self.post(body, "NTLM " + base64.b64encode(authenticate).decode())

    def abort(self) -> None:
        """Close with RST (SO_LINGER 0), as the kernel closes a SIGKILLed process's sockets."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def ews(sandbox: Sandbox) -> Iterator[Sandbox]:
    """Source = Exchange 2016; no sandbox bug met while serving."""
    ec.org(sandbox, "source", "exchange2016")
    assert sandbox.ctx is not None
    sandbox.ctx.extra[ERRORS_KEY] = []
    yield sandbox
    assert sandbox.ctx.extra[ERRORS_KEY] == []


def _get_inbox(address: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP}" xmlns:m="{M}" '
        f'xmlns:t="{T}"><s:Header><t:RequestServerVersion Version="Exchange2016"/></s:Header>'
        "<s:Body><m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
        '<m:FolderIds><t:DistinguishedFolderId Id="inbox"><t:Mailbox><t:EmailAddress>'
        f"{address}</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId></m:FolderIds>"
        "</m:GetFolder></s:Body></s:Envelope>"
    ).encode()


def _answered(a: Answer) -> bool:
    return a.status == 200 and b'ResponseClass="Success"' in a.body


def _challenged(a: Answer) -> bool:
    return a.status == 401 and "NTLM" in a.challenges and "Negotiate" in a.challenges


def test_ntlm_is_bound_to_the_connection_not_the_client_port(ews: Sandbox) -> None:
    """An NTLM-authenticated keep-alive connection stays signed in across requests; another
    connection is challenged; after that connection is aborted with RST, a new connection from
    the same local port is challenged (401), not taken for the old one, and can sign in."""
    user = ec.mailboxes(ews, "source", 1)[0]
    assert user.primary_smtp
    login = ec.migration_account(ews, "source", full_access=[user.primary_smtp])
    body = _get_inbox(user.primary_smtp)

    first = Conn(ews)
    assert _challenged(first.post(body))
    assert _answered(first.ntlm_sign_in(body, login, ec.PASSWORD))
    for _ in range(3):  # keep-alive: no Authorization header needed on this connection
        assert _answered(first.post(body))

    other = Conn(ews)  # same client address, another connection
    assert _challenged(other.post(body))
    other.close()

    port = first.local_port
    first.abort()
    again = Conn(ews, local_port=port)
    assert again.local_port == port
    assert _challenged(again.post(body))
    assert _challenged(again.post(body))
    assert _answered(again.ntlm_sign_in(body, login, ec.PASSWORD))
    assert _answered(again.post(body))
    again.close()


def test_ntlm_user_file_lives_in_the_state_directory(ews: Sandbox) -> None:
    """The NTLM acceptor's password file is in the sandbox's state directory, owner-only."""
    user = ec.mailboxes(ews, "source", 1)[0]
    assert user.primary_smtp
    login = ec.migration_account(ews, "source", full_access=[user.primary_smtp])
    conn = Conn(ews)
    assert _answered(conn.ntlm_sign_in(_get_inbox(user.primary_smtp), login, ec.PASSWORD))
    conn.close()
    path = ews.state_dir / USER_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert login in path.read_text()
