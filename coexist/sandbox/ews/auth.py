"""HTTP authentication of the EWS face, as IIS does it: Basic, and NTLM (connection-based).

NTLM is a three-leg handshake on one TCP connection (negotiate -> 401 with the challenge ->
authenticate); IIS then treats the connection as authenticated, so later requests on it carry
no Authorization header (requests_ntlm relies on this). The server side is pyspnego's NTLM
acceptor, which reads known passwords from the file named by the `NTLM_USER_FILE` environment
variable (spnego/_ntlm.py `_get_credential`, Heimdal format `DOMAIN:USER:PASSWORD`). That
variable is process-wide, so under a lock this module writes the requesting sandbox's
accounts into a file in that sandbox's state directory (`ntlm-users.txt`, owner-only: the same
passwords state.json holds, so it goes wherever the state goes and a killed sandbox leaves
nothing elsewhere) and points the variable at it right before each handshake step (several
sandboxes may run in one test process).

The handshake and its result live in the TCP connection's own state
(`connections.Connection`, which the server empties when the connection closes), so a new
connection is challenged even when it reuses a closed one's client port at once (a SIGKILLed
client's sockets close with RST and its port is free for the next process).
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import spnego

from ..connections import Connection
from ..model import EwsAccount, World
from . import orgs

USER_FILE = "ntlm-users.txt"  # in the sandbox's state directory
CONN_KEY = "ews.ntlm"  # this module's entry in a Connection's state
_lock = threading.Lock()  # NTLM_USER_FILE is process-wide


@dataclass
class Login:
    key: str  # tenant key
    account: EwsAccount


@dataclass
class _Conn:
    context: Any = None  # spnego acceptor mid-handshake
    login: Login | None = None


class Challenge(Exception):
    """Answer 401 with these WWW-Authenticate values."""

    def __init__(self, values: list[str]) -> None:
        super().__init__("401")
        self.values = values


class Authenticator:
    """Per-sandbox authentication; NTLM handshakes live in each connection's state."""

    def __init__(self, world: World, realm: str, state_dir: Path) -> None:
        self.world = world
        self.realm = realm
        self.user_file = state_dir / USER_FILE
        self._user_text: str | None = None

    def offers(self) -> list[str]:
        kinds = {t.kind for t in self.world.tenants.values()}
        values: list[str] = []
        if kinds & {"exchange2016", "exchange2019"}:
            values += ["Negotiate", "NTLM"]  # IIS's default order for Windows authentication
        values.append(f'Basic realm="{self.realm}"')
        return values

    def authenticate(self, connection: Connection | None, header: str | None) -> Login:
        """The login of this request on `connection` (None: a server that cannot tell
        connections apart — each request is then a connection of its own, so NTLM, which
        needs two requests, never completes); raises Challenge."""
        connection = connection or Connection()
        with connection.lock:
            if connection.closed:
                raise Challenge(self.offers())
            found_conn = connection.state.get(CONN_KEY)
            if not isinstance(found_conn, _Conn):
                found_conn = connection.state[CONN_KEY] = _Conn()
        conn: _Conn = found_conn
        if not header:
            if conn.login is not None:
                # The account as it is now (grants change; the sandbox may have been re-seeded).
                with self.world.lock:
                    found = orgs.resolve_login(self.world, conn.login.account.upn)
                if found is not None:
                    conn.login = Login(*found)
                    return conn.login
                conn.login = None
            raise Challenge(self.offers())
        scheme, _, value = header.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            login = self._basic(value.strip())
            if login is None:
                raise Challenge(self.offers())
            return login
        if scheme in ("ntlm", "negotiate"):
            return self._ntlm(conn, scheme, value.strip())
        raise Challenge(self.offers())

    def _basic(self, value: str) -> Login | None:
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        with self.world.lock:
            found = orgs.resolve_login(self.world, user)
        if found is None:
            return None
        key, account = found
        return Login(key, account) if account.password == password else None

    def _ntlm(self, conn: _Conn, scheme: str, value: str) -> Login:
        kinds = {self.world.tenants[k].kind for k in self.world.tenants}
        if not kinds & {"exchange2016", "exchange2019"}:
            raise Challenge(self.offers())  # WorkMail: Basic only
        try:
            token = base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise Challenge(self.offers()) from exc
        label = "NTLM" if scheme == "ntlm" else "Negotiate"
        try:
            with _lock:
                self._write_store()
                if conn.context is None or token[8:12] == b"\x01\x00\x00\x00":
                    # Raw NTLMSSP (also sent under the Negotiate scheme by NTLM-only
                    # clients), else SPNEGO wrapping NTLM (no Kerberos in the sandbox).
                    raw = token.startswith(b"NTLMSSP\x00")
                    conn.context = spnego.server(protocol="ntlm" if raw else "negotiate")
                    conn.login = None
                out = conn.context.step(token)
                complete = conn.context.complete
                principal = conn.context.client_principal if complete else None
        except spnego.exceptions.SpnegoError as exc:
            conn.context = None
            raise Challenge(self.offers()) from exc
        if not complete:
            raise Challenge([f"{label} {base64.b64encode(out or b'').decode()}"])
        conn.context = None
        with self.world.lock:
            found = orgs.resolve_login(self.world, str(principal or ""))
        if found is None:
            raise Challenge(self.offers())
        conn.login = Login(*found)
        return conn.login

    def _write_store(self) -> None:
        """NTLM_USER_FILE = this sandbox's accounts (caller holds the module lock)."""
        lines: list[str] = []
        with self.world.lock:
            for tenant in self.world.tenants.values():
                if tenant.kind not in ("exchange2016", "exchange2019"):
                    continue
                for a in tenant.ews_accounts:
                    lines.append(f"{orgs.netbios(tenant)}:{a.name}:{a.password}")
                    lines.append(f":{a.upn}:{a.password}")
        text = "\n".join(lines) + "\n"
        if text != self._user_text or not self.user_file.is_file():
            # Created owner-only (never readable by others, not even for a moment); the
            # sandbox's state directory is private too.
            fd = os.open(self.user_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            self._user_text = text
        os.environ["NTLM_USER_FILE"] = str(self.user_file)
