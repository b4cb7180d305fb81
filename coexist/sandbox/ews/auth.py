"""HTTP authentication of the EWS face, as IIS does it: Basic, and NTLM (connection-based).

NTLM is a three-leg handshake on one TCP connection (negotiate -> 401 with the challenge ->
authenticate); IIS then treats the connection as authenticated, so later requests on it carry
no Authorization header (requests_ntlm relies on this). The server side is pyspnego's NTLM
acceptor, which reads known passwords from the file named by the `NTLM_USER_FILE` environment
variable (spnego/_ntlm.py `_get_credential`, Heimdal format `DOMAIN:USER:PASSWORD`). That
variable is process-wide, so this module points it at one file of its own and, under a lock,
writes the requesting sandbox's accounts into it right before each authenticate step (several
sandboxes may run in one test process).

Connections are told apart by the client's (address, port); an authenticated connection is
forgotten after KEEPALIVE_S idle (the server closes idle connections after 30 s, so a later
connection reusing the port is not taken for it).
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import spnego

from ..model import EwsAccount, World
from . import orgs

KEEPALIVE_S = 30.0
_lock = threading.Lock()
_cred_path: Path | None = None
_cred_text: str | None = None


@dataclass
class Login:
    key: str  # tenant key
    account: EwsAccount


@dataclass
class _Conn:
    context: Any = None  # spnego acceptor mid-handshake
    login: Login | None = None
    seen: float = 0.0


class Challenge(Exception):
    """Answer 401 with these WWW-Authenticate values."""

    def __init__(self, values: list[str]) -> None:
        super().__init__("401")
        self.values = values


class Authenticator:
    """Per-sandbox state: NTLM handshakes and authenticated connections."""

    def __init__(self, world: World, realm: str) -> None:
        self.world = world
        self.realm = realm
        self._conns: dict[tuple[str, int], _Conn] = {}
        self._mutex = threading.Lock()

    def offers(self) -> list[str]:
        kinds = {t.kind for t in self.world.tenants.values()}
        values: list[str] = []
        if kinds & {"exchange2016", "exchange2019"}:
            values += ["NTLM", "Negotiate"]
        values.append(f'Basic realm="{self.realm}"')
        return values

    def authenticate(self, client: tuple[str, int] | None, header: str | None) -> Login:
        now = time.monotonic()
        key = client or ("", 0)
        with self._mutex:
            for k in [k for k, c in self._conns.items() if now - c.seen > KEEPALIVE_S]:
                del self._conns[k]
            conn = self._conns.get(key)
        if not header:
            if conn is not None and conn.login is not None:
                conn.seen = now
                return conn.login
            raise Challenge(self.offers())
        scheme, _, value = header.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            login = self._basic(value.strip())
            if login is None:
                raise Challenge(self.offers())
            return login
        if scheme in ("ntlm", "negotiate"):
            return self._ntlm(key, scheme, value.strip(), now)
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

    def _ntlm(self, client: tuple[str, int], scheme: str, value: str, now: float) -> Login:
        kinds = {self.world.tenants[k].kind for k in self.world.tenants}
        if not kinds & {"exchange2016", "exchange2019"}:
            raise Challenge(self.offers())  # WorkMail: Basic only
        try:
            token = base64.b64decode(value, validate=True)
        except binascii.Error as exc:
            raise Challenge(self.offers()) from exc
        with self._mutex:
            conn = self._conns.setdefault(client, _Conn())
            conn.seen = now
        label = "NTLM" if scheme == "ntlm" else "Negotiate"
        try:
            with _lock:
                self._write_store()
                if conn.context is None or token[8:12] == b"\x01\x00\x00\x00":
                    conn.context = spnego.server(protocol="ntlm")
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
        """NTLM_USER_FILE with this sandbox's accounts (caller holds the module lock)."""
        global _cred_path, _cred_text
        lines: list[str] = []
        with self.world.lock:
            for tenant in self.world.tenants.values():
                if tenant.kind not in ("exchange2016", "exchange2019"):
                    continue
                for a in tenant.ews_accounts:
                    lines.append(f"{orgs.netbios(tenant)}:{a.name}:{a.password}")
                    lines.append(f":{a.upn}:{a.password}")
        text = "\n".join(lines) + "\n"
        if _cred_path is None:
            fd, name = tempfile.mkstemp(prefix="coexist-ntlm-", suffix=".txt")
            os.close(fd)
            _cred_path = Path(name)
        if text != _cred_text or os.environ.get("NTLM_USER_FILE") != str(_cred_path):
            _cred_path.write_text(text)
            os.chmod(_cred_path, 0o600)
            _cred_text = text
            os.environ["NTLM_USER_FILE"] = str(_cred_path)
