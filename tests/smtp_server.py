"""A real SMTP server for tests: aiosmtpd on loopback, STARTTLS or implicit TLS with a trustme
certificate, AUTH (LOGIN/PLAIN) against one user, every accepted message kept in `received`."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    login: str | None
    message: EmailMessage


@dataclass
class Relay:
    host: str
    port: int
    security: str  # starttls | tls
    user: str
    password: str
    ca_file: Path
    received: list[Received] = field(default_factory=list)
    # Recipients the relay answers 550 at RCPT (a mailbox it does not know), lower case.
    refuse: set[str] = field(default_factory=set)

    def env(self, **extra: str) -> dict[str, str]:
        """The COEXIST_SMTP_* variables that point `coexist report --email` at this relay."""
        return {
            "COEXIST_SMTP_HOST": self.host,
            "COEXIST_SMTP_PORT": str(self.port),
            "COEXIST_SMTP_SECURITY": self.security,
            "COEXIST_SMTP_USER": self.user,
            "COEXIST_SMTP_PASSWORD": self.password,
            "COEXIST_SMTP_FROM": "coexist@fabrikam.example",
            "COEXIST_SMTP_CA_FILE": str(self.ca_file),
            **extra,
        }


class _Inbox:
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address.lower() in self.relay.refuse:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        msg = message_from_bytes(raw, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        login = session.login_data.decode() if session.login_data else None
        self.relay.received.append(
            Received(str(envelope.mail_from), list(envelope.rcpt_tos), login, msg)
        )
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextmanager
def smtp_relay(tmp: Path, *, security: str = "starttls") -> Iterator[Relay]:
    """Run an SMTP relay requiring TLS (STARTTLS or implicit) and AUTH; stop it after."""
    ca = trustme.CA()
    cert = ca.issue_cert(HOST, "localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    ca_file = tmp / "smtp-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    relay = Relay(HOST, _free_port(), security, "reports@fabrikam.example", "s3cret-Pa55!", ca_file)

    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login == relay.user.encode()
            and data.password == relay.password.encode()
        )
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

    # Implicit TLS: every byte of the listener is TLS, but aiosmtpd's auth_require_tls looks
    # only at a STARTTLS upgrade (smtp.py checks `_tls_protocol`, set by STARTTLS alone) and
    # would refuse AUTH; the check is moot there, so it is off for that listener only.
    tls: dict[str, Any] = (
        {"tls_context": ctx, "require_starttls": True, "auth_require_tls": True}
        if security == "starttls"
        else {"ssl_context": ctx, "auth_require_tls": False}
    )
    controller = Controller(
        _Inbox(relay),
        hostname=HOST,
        port=relay.port,
        authenticator=authenticate,
        auth_required=True,
        **tls,
    )
    controller.start()
    try:
        yield relay
    finally:
        controller.stop()
