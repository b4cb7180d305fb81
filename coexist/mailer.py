"""Mail coexist sends to people: reports, notices, credential requests, status mail.

One seam, two outboxes (a registry, chosen by `[mail] transport`):

    ``smtp``   an SMTP relay: host, port, STARTTLS or implicit TLS, AUTH; all of it from the
               environment (`SMTP_ENV`), so a relay password never sits in project.toml.
    ``graph``  Microsoft Graph `sendMail` as a service mailbox (`[mail] sender`) of the
               target (or source) tenant, with the app's Mail.Send permission — for
               operators without a relay. The app already signs in to that tenant.

Callers build an `email.message.EmailMessage` (text part, optional HTML alternative,
attachments) and hand it to `Outbox.send`; the outbox delivers it and says what it did in a
`Sent` (recipients accepted/refused, the route, the subject) — never a password or token.
TLS is always verified (the system's CAs, plus `COEXIST_SMTP_CA_FILE`'s).
"""

from __future__ import annotations

import asyncio
import base64
import os
import smtplib
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, getaddresses, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from coexist.errors import InputError, RemoteError

if TYPE_CHECKING:
    from coexist.engine.context import Context
    from coexist.settings import Project
    from coexist.tenants.plan import WriteRecorder

# The relay, from the environment only.
SMTP_ENV = {
    "host": "COEXIST_SMTP_HOST",
    "port": "COEXIST_SMTP_PORT",
    "security": "COEXIST_SMTP_SECURITY",  # starttls (default) | tls (implicit, port 465)
    "user": "COEXIST_SMTP_USER",
    "password": "COEXIST_SMTP_PASSWORD",
    "sender": "COEXIST_SMTP_FROM",
    "ca_file": "COEXIST_SMTP_CA_FILE",  # extra CA bundle; verification itself is always on
}
SECURITY = ("starttls", "tls")

# Graph: "the total size of the request ... must not exceed 4 MB" for sendMail with
# attachments inline (message-post-attachments / user-sendmail, "Attach files"); above that
# an upload session on a draft is needed, which coexist's mail never needs.
GRAPH_MAX_REQUEST = 4 * 1024 * 1024


@dataclass(frozen=True)
class Sent:
    """What an outbox did with one message (safe to print, journal and put in --json)."""

    to: list[str]
    refused: list[str]
    via: str  # "smtp relay.example.com:587 (starttls)" | "graph sendMail as svc@contoso.com"
    subject: str
    message_id: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "to": self.to,
            "refused": self.refused,
            "via": self.via,
            "subject": self.subject,
            "message_id": self.message_id,
        }


class Outbox(Protocol):
    """Where coexist's mail leaves from."""

    @property
    def via(self) -> str: ...

    @property
    def sender(self) -> str: ...

    async def send(self, msg: EmailMessage) -> Sent: ...


def new_message(sender: str, to: list[str], subject: str, text: str) -> EmailMessage:
    """A message with the headers every coexist mail carries; callers add an HTML
    alternative and attachments."""
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    msg.set_content(text)
    return msg


def recipients(msg: EmailMessage) -> list[str]:
    """Every To/Cc/Bcc address of `msg`, in order."""
    fields = [str(v) for h in ("To", "Cc", "Bcc") for v in msg.get_all(h, [])]
    return [addr for _name, addr in getaddresses(fields) if addr]


# -- SMTP relay ---------------------------------------------------------------------------


def smtp_settings(env: Mapping[str, str] | None = None, sender: str = "") -> dict[str, Any]:
    """The relay's settings from the environment, checked before anything is sent.
    `sender` (`[mail] sender`) is the From address when COEXIST_SMTP_FROM is not set."""
    env = os.environ if env is None else env
    got = {k: env.get(v, "").strip() or None for k, v in SMTP_ENV.items()}
    if got["password"] is not None:
        got["password"] = env[SMTP_ENV["password"]]  # as given: spaces may be part of it
    got["sender"] = got["sender"] or sender or None
    if not got["host"]:
        raise InputError(
            f"sending mail needs an SMTP relay: {SMTP_ENV['host']} is not set",
            next_step=f"export {SMTP_ENV['host']}=smtp.example.com "
            f'{SMTP_ENV["sender"]}=coexist@example.com  (or [mail] transport = "graph")',
        )
    security = (got["security"] or "starttls").lower()
    if security not in SECURITY:
        raise InputError(
            f"{SMTP_ENV['security']}={got['security']!r}: expected one of {', '.join(SECURITY)}",
            next_step=f"export {SMTP_ENV['security']}=starttls",
        )
    try:
        port = int(got["port"] or (465 if security == "tls" else 587))
    except ValueError:
        raise InputError(
            f"{SMTP_ENV['port']}={got['port']!r} is not a port number",
            next_step=f"export {SMTP_ENV['port']}=587",
        ) from None
    if not got["sender"]:
        raise InputError(
            f"sending mail needs a sender address: {SMTP_ENV['sender']} is not set",
            next_step=f"export {SMTP_ENV['sender']}=coexist@example.com",
        )
    if bool(got["user"]) != bool(got["password"]):
        missing = SMTP_ENV["password"] if got["user"] else SMTP_ENV["user"]
        raise InputError(
            f"SMTP login needs both {SMTP_ENV['user']} and {SMTP_ENV['password']}: "
            f"{missing} is not set",
            next_step=f"export {missing}=...",
        )
    if got["ca_file"] and not Path(got["ca_file"]).is_file():
        raise InputError(
            f"{SMTP_ENV['ca_file']}: no file {got['ca_file']}",
            next_step=f"export {SMTP_ENV['ca_file']}=/path/to/ca.pem  (or unset it)",
        )
    return {**got, "security": security, "port": port}


@dataclass(frozen=True)
class SmtpRelay:
    """An SMTP relay (settings from `smtp_settings`)."""

    cfg: Mapping[str, Any] = field(repr=False)

    @property
    def sender(self) -> str:
        return str(self.cfg["sender"])

    @property
    def via(self) -> str:
        return f"smtp {self.cfg['host']}:{self.cfg['port']} ({self.cfg['security']})"

    async def send(self, msg: EmailMessage) -> Sent:
        return await asyncio.to_thread(self.send_now, msg)

    def send_now(self, msg: EmailMessage) -> Sent:
        """Deliver `msg` to the relay (blocking)."""
        cfg = self.cfg
        to = recipients(msg)
        context = ssl.create_default_context(cafile=cfg["ca_file"])
        where = f"{cfg['host']}:{cfg['port']}"
        try:
            if cfg["security"] == "tls":
                client: smtplib.SMTP = smtplib.SMTP_SSL(
                    cfg["host"], cfg["port"], context=context, timeout=60
                )
            else:
                client = smtplib.SMTP(cfg["host"], cfg["port"], timeout=60)
            with client:
                if cfg["security"] == "starttls":
                    client.starttls(context=context)
                if cfg["user"]:
                    client.login(cfg["user"], cfg["password"])
                refused = client.send_message(msg, to_addrs=to)
        except smtplib.SMTPAuthenticationError as exc:
            raise RemoteError(
                f"SMTP relay {where} refused the login of {cfg['user']}: {exc.smtp_code} "
                f"{_said(exc.smtp_error)}",
                service="smtp",
                code=str(exc.smtp_code),
                next_step=f"check {SMTP_ENV['user']} and {SMTP_ENV['password']}",
            ) from None
        except smtplib.SMTPRecipientsRefused as exc:
            # Every recipient refused: nothing was sent; the caller reports each one.
            return Sent([], sorted(exc.recipients), self.via, str(msg["Subject"]), _mid(msg))
        except (smtplib.SMTPException, ssl.SSLError, OSError) as exc:
            raise RemoteError(
                f"SMTP relay {where}: {type(exc).__name__}: {exc}",
                service="smtp",
                next_step=f"check {SMTP_ENV['host']}, {SMTP_ENV['port']}, "
                f"{SMTP_ENV['security']} and {SMTP_ENV['ca_file']}",
            ) from None
        return Sent(
            [a for a in to if a not in refused],
            sorted(refused),
            self.via,
            str(msg["Subject"]),
            _mid(msg),
        )


def _said(raw: bytes | str) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def _mid(msg: EmailMessage) -> str:
    return str(msg["Message-ID"] or "")


# -- Graph sendMail -----------------------------------------------------------------------


def graph_payload(msg: EmailMessage) -> dict[str, Any]:
    """`msg` as Graph's sendMail body (user-sendmail: message + saveToSentItems): the HTML
    part when there is one (else the text part), recipients, and each attachment as a
    fileAttachment. Pure, so tests read what would be sent."""
    html = msg.get_body(("html",))
    body = html if html is not None else msg.get_body(("plain",))
    content = body.get_content() if isinstance(body, EmailMessage) else ""
    message: dict[str, Any] = {
        "subject": str(msg["Subject"] or ""),
        # bodyType's members as the v1.0 CSDL names them (the docs' "HTML"/"Text" examples
        # are accepted too, but the contract's spelling is the one a check can hold to).
        "body": {"contentType": "html" if html is not None else "text", "content": content},
    }
    for header, key in (("To", "toRecipients"), ("Cc", "ccRecipients"), ("Bcc", "bccRecipients")):
        found = getaddresses([str(v) for v in msg.get_all(header, [])])
        if found:
            message[key] = [
                {"emailAddress": {"address": a, **({"name": n} if n else {})}}
                for n, a in found
                if a
            ]
    attachments = [
        {
            "@odata.type": "#microsoft.graph.fileAttachment",
            "name": part.get_filename() or "attachment",
            "contentType": part.get_content_type(),
            "contentBytes": base64.b64encode(_bytes_of(part)).decode(),
        }
        for part in msg.iter_attachments()
        if isinstance(part, EmailMessage)
    ]
    if attachments:
        message["attachments"] = attachments
    return {"message": message, "saveToSentItems": False}


def _bytes_of(part: EmailMessage) -> bytes:
    raw = part.get_payload(decode=True)
    return raw if isinstance(raw, bytes) else b""


@dataclass(frozen=True)
class GraphSendMail:
    """Graph `sendMail` as one service mailbox of a Microsoft 365 side."""

    ctx: Context = field(repr=False)
    side: str
    mailbox: str

    @property
    def sender(self) -> str:
        return self.mailbox

    @property
    def via(self) -> str:
        return f"graph sendMail as {self.mailbox}"

    async def send(self, msg: EmailMessage) -> Sent:
        payload = graph_payload(msg)
        size = len(str(payload))
        if size > GRAPH_MAX_REQUEST:
            raise InputError(
                f"mail {msg['Subject']!r} is {size:,} bytes; Graph sendMail takes at most "
                f"{GRAPH_MAX_REQUEST:,} in one request",
                next_step='send it through an SMTP relay ([mail] transport = "smtp")',
            )
        await self.ctx.side(self.side).graph.send(
            "POST", f"users/{self.mailbox}/sendMail", json=payload
        )
        # sendMail answers 202 with no body: Exchange accepted it; a recipient it cannot
        # deliver to comes back later as a non-delivery report to the service mailbox.
        return Sent(recipients(msg), [], self.via, str(msg["Subject"]), _mid(msg))


# -- choosing one -------------------------------------------------------------------------

OutboxFactory = Callable[["Project", "Context | None", Mapping[str, str]], Outbox]


def _smtp(project: Project, ctx: Context | None, env: Mapping[str, str]) -> Outbox:
    return SmtpRelay(smtp_settings(env, project.mail.sender))


def _graph(project: Project, ctx: Context | None, env: Mapping[str, str]) -> Outbox:
    mailbox = project.mail.sender or project.verify.service_mailbox
    if not mailbox:
        raise InputError(
            "mail through Graph needs a service mailbox: [mail] sender is not set in "
            f"{project.file}",
            next_step='set [mail] sender = "migration@contoso.com" (a licensed mailbox of the '
            f"{project.mail.graph_side} tenant; its app needs Mail.Send)",
        )
    if ctx is None:
        raise InputError(
            "mail through Graph needs a signed-in tenant; this command has none",
            next_step='use [mail] transport = "smtp" for it',
        )
    _ = ctx.side(project.mail.graph_side).graph  # a side without Graph: its clear error now
    return GraphSendMail(ctx, project.mail.graph_side, mailbox)


OUTBOXES: dict[str, OutboxFactory] = {"smtp": _smtp, "graph": _graph}


def outbox_for(
    project: Project, ctx: Context | None = None, env: Mapping[str, str] | None = None
) -> Outbox:
    """The outbox `[mail] transport` names, its settings checked before anything is sent."""
    return OUTBOXES[project.mail.transport](project, ctx, os.environ if env is None else env)


# -- plan mode ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Wrapping:
    """An outbox around another: same sender and route, its own `send`."""

    inner: Outbox = field(repr=False)

    @property
    def sender(self) -> str:
        return self.inner.sender

    @property
    def via(self) -> str:
        return self.inner.via


@dataclass(frozen=True)
class Planned(_Wrapping):
    """Plan mode's outbox: the real message is built and described, never sent (like a
    tenant write in `tenants.plan`, it goes to the run's `WriteRecorder`)."""

    recorder: WriteRecorder = field(repr=False)

    async def send(self, msg: EmailMessage) -> Sent:
        to = recipients(msg)
        subject = str(msg["Subject"] or "")
        self.recorder.record(
            "mail",
            self.inner.via,
            f"send {subject!r} to {', '.join(to)}",
            {"to": to, "subject": subject, "via": self.inner.via},
        )
        return Sent(to, [], f"plan: {self.inner.via}", subject, _mid(msg))


@dataclass(frozen=True)
class Journaled(_Wrapping):
    """An outbox inside a journaled step: `started` is recorded right before each send (the
    runner's write hook, as before a tenant write), so a crash between the relay's accept
    and the step's record is seen by the next run."""

    async def send(self, msg: EmailMessage) -> Sent:
        from coexist.tenants.plan import before_write

        before_write()
        return await self.inner.send(msg)


def outbox_in(
    project: Project,
    ctx: Context | None,
    recorder: WriteRecorder | None,
    env: Mapping[str, str] | None = None,
) -> Outbox:
    """`outbox_for`, for a command session: its sends captured in plan mode (the relay's
    settings are still checked: a plan's mail says when a real run would be refused)."""
    if recorder is None:
        return Journaled(outbox_for(project, ctx, env))
    try:
        return Planned(outbox_for(project, ctx, env), recorder)
    except InputError as exc:
        # A plan renders and shows the mail even before mail is set up; each planned send
        # says why the real run would be refused.
        return Planned(Unconfigured(project.mail.sender, exc.message), recorder)


@dataclass(frozen=True)
class Unconfigured:
    """What a plan sends through when no transport is usable yet (never sends)."""

    sender_address: str
    reason: str

    @property
    def sender(self) -> str:
        return self.sender_address or "coexist@localhost"

    @property
    def via(self) -> str:
        return f"no mail transport ({self.reason})"

    async def send(self, msg: EmailMessage) -> Sent:
        raise InputError(self.reason)
