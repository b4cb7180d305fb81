"""Message submission: route each recipient, deposit the copies, write NDRs.

`submit()` is what Exchange's transport does after `sendMail` accepts a message,
done synchronously: real Exchange Online delivers asynchronously (sendMail's
202 "does not indicate that the request processing has completed",
learn.microsoft.com/graph/api/user-sendmail), so product code must poll the
destination mailboxes; the sandbox only makes the wait zero.

For every To/Cc/Bcc recipient it asks `routing.route()` where the message goes
and then, as Exchange does:

- one Inbox copy per receiving mailbox per message, however many recipients,
  DLs or forwards lead there (the categorizer's per-message de-duplication);
- a Sent Items copy for the sender (read, with Bcc) when `save_to_sent`;
- one NDR ("Undeliverable: <subject>") in the sender's Inbox per failed
  recipient, carrying the enhanced status code and Exchange's diagnostic text.

External and dropped dispositions are reported but stored nowhere.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from typing import Any

from .mailstore import Attachment, Item, MailStore, Recipient, attach, utcnow
from .model import User, World
from .routing import Delivery, Leg, parse_address, route

# *unverified*: Exchange Online NDRs are seen from both "Microsoft Outlook
# <postmaster@<tenant>.onmicrosoft.com>" and "MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@...";
# the sandbox uses the postmaster form. Change it here only.
NDR_SENDER_NAME = "Microsoft Outlook"
NDR_SENDER_LOCAL = "postmaster"


class SubmitError(ValueError):
    """A recipient Exchange cannot parse (Graph answers 400 ErrorInvalidRecipients)."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.address = address


@dataclass(frozen=True)
class Copy:
    """One stored copy: which mailbox, which folder, which item, and why."""

    kind: str  # inbox | sent | ndr
    tenant: str
    mailbox: str  # user (or group) object id
    address: str | None  # the mailbox's primary SMTP
    folder: str
    item_id: str
    recipient: str | None = None  # the recipient address that led here (inbox / ndr)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SubmitReport:
    """Where every copy of one submitted message went."""

    internet_message_id: str
    subject: str
    sender: str | None
    copies: list[Copy] = field(default_factory=list)
    routes: dict[str, Delivery] = field(default_factory=dict)  # recipient -> routing result
    external: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    ndrs: list[Leg] = field(default_factory=list)

    def inbox_copies(self) -> list[Copy]:
        return [c for c in self.copies if c.kind == "inbox"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "internet_message_id": self.internet_message_id,
            "subject": self.subject,
            "sender": self.sender,
            "copies": [c.to_dict() for c in self.copies],
            "routes": {k: v.to_dict() for k, v in self.routes.items()},
            "external": list(self.external),
            "dropped": list(self.dropped),
            "ndrs": [leg.to_dict() for leg in self.ndrs],
        }


@dataclass(frozen=True)
class Outgoing:
    """A message as submitted (the parts `sendMail` carries)."""

    subject: str = ""
    body: str = ""
    body_type: str = "text"  # text | html
    to: Sequence[Recipient] = ()
    cc: Sequence[Recipient] = ()
    bcc: Sequence[Recipient] = ()
    headers: Sequence[tuple[str, str]] = ()  # internetMessageHeaders (x- headers)
    importance: str = "normal"
    save_to_sent: bool = True
    attachments: Sequence[Attachment] = ()  # sendMail's fileAttachments, in order


def new_internet_message_id() -> str:
    """Exchange Online's Message-ID shape: <hex@server.namprd.prod.outlook.com>."""
    token = uuid.uuid4().hex.upper()
    return f"<{token}@SANDBOX01MB0001.namprd00.prod.outlook.com>"


def _header_address(r: Recipient) -> str:
    return formataddr((r.name, r.address)) if r.name and r.name != r.address else r.address


def build_mime(
    sender: Recipient | None,
    out: Outgoing,
    message_id: str,
    sent: dt.datetime,
) -> bytes:
    """The RFC 5322 message every copy stores (Bcc is never written into it)."""
    msg = EmailMessage()
    if sender is not None:
        msg["From"] = _header_address(sender)
    if out.to:
        msg["To"] = ", ".join(_header_address(r) for r in out.to)
    if out.cc:
        msg["Cc"] = ", ".join(_header_address(r) for r in out.cc)
    msg["Subject"] = out.subject
    msg["Date"] = format_datetime(sent)
    msg["Message-ID"] = message_id
    if out.importance != "normal":
        msg["Importance"] = out.importance
    for name, value in out.headers:
        msg[name] = value
    msg.set_content(out.body, subtype="html" if out.body_type == "html" else "plain")
    for a in out.attachments:
        attach(msg, a.name, a.content_type, a.data, a.is_inline, a.content_id)
    return msg.as_bytes()


def _check_addresses(out: Outgoing) -> None:
    for r in (*out.to, *out.cc, *out.bcc):
        try:
            parse_address(r.address)
        except ValueError as exc:
            raise SubmitError(r.address) from exc


def _sender_mailbox(world: World, address: str | None) -> tuple[str, User] | None:
    """(tenant key, mailbox user) owning `address`, if it is a sandbox mailbox."""
    if not address or "@" not in address:
        return None
    with world.lock:
        for key, tenant in world.tenants.items():
            owner = tenant.address_owner(address)
            if isinstance(owner, User) and owner.is_mailbox:
                return key, owner
    return None


def submit(
    world: World,
    store: MailStore,
    sender: str | None,
    out: Outgoing,
    *,
    sender_name: str | None = None,
    tenant_hint: str | None = None,
) -> SubmitReport:
    """Deliver `out` from `sender` (an SMTP address, sandbox mailbox or not) to its recipients.

    `tenant_hint` places raw X500 recipients when the sender is in no sandbox tenant (as
    `routing.route` takes it). Raises SubmitError when a recipient is not an address at all
    (nothing is delivered).
    """
    _check_addresses(out)
    sent_at = utcnow()
    message_id = new_internet_message_id()
    from_mailbox = _sender_mailbox(world, sender)
    from_r: Recipient | None = None
    if sender:
        name = sender_name or (from_mailbox[1].display_name if from_mailbox else sender)
        from_r = Recipient(name, sender)
    mime = build_mime(from_r, out, message_id, sent_at)
    report = SubmitReport(message_id, out.subject, sender)

    delivered: set[tuple[str, str]] = set()
    for r in (*out.to, *out.cc, *out.bcc):
        result = route(world, r.address, sender=sender, tenant_hint=tenant_hint)
        report.routes[r.address] = result
        for leg in result.deliveries:
            if leg.outcome == "delivered" and leg.tenant and leg.object:
                if (leg.tenant, leg.object) in delivered:
                    continue  # one copy per mailbox per message
                delivered.add((leg.tenant, leg.object))
                item = store.deliver(leg.tenant, leg.object, mime, "inbox")
                report.copies.append(
                    _copy("inbox", leg.tenant, leg.object, leg.mailbox, item, r.address)
                )
            elif leg.outcome == "external" and leg.address:
                report.external.append(leg.address)
            elif leg.outcome == "dropped":
                report.dropped.append(leg.address or r.address)
            elif leg.outcome == "ndr":
                report.ndrs.append(leg)

    if from_mailbox is not None:
        key, user = from_mailbox
        if out.save_to_sent:
            item = store.deliver(
                key, user.id, mime, "sentitems", received=sent_at, is_read=True, bcc=out.bcc
            )
            report.copies.append(_copy("sent", key, user.id, user.primary_smtp, item, None))
        for leg in report.ndrs:
            ndr = build_ndr(world, key, user, out.subject, leg, message_id)
            item = store.deliver(key, user.id, ndr, "inbox")
            report.copies.append(_copy("ndr", key, user.id, user.primary_smtp, item, leg.address))
    return report


def _copy(
    kind: str, tenant: str, mailbox: str, address: str | None, item: Item, recipient: str | None
) -> Copy:
    folder = {"inbox": "inbox", "ndr": "inbox", "sent": "sentitems"}[kind]
    return Copy(kind, tenant, mailbox, address, folder, item.id, recipient)


def build_ndr(
    world: World, key: str, user: User, subject: str, leg: Leg, original_id: str
) -> bytes:
    """A non-delivery report as Exchange Online writes it into the sender's Inbox.

    Shape after learn.microsoft.com/exchange/mail-flow-best-practices/
    non-delivery-reports-in-exchange-online/non-delivery-reports-in-exchange-online
    ("Your message to ... couldn't be delivered", then the diagnostic line
    "Remote Server returned '<status text>'"); the layout is simplified.
    """
    domain = world.tenants[key].initial_domain
    msg = EmailMessage()
    msg["From"] = str(HeaderAddress(NDR_SENDER_NAME, NDR_SENDER_LOCAL, domain))
    msg["To"] = _header_address(Recipient(user.display_name, user.primary_smtp or ""))
    msg["Subject"] = f"Undeliverable: {subject}"
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = new_internet_message_id()
    msg["In-Reply-To"] = original_id
    msg["References"] = original_id
    msg["Auto-Submitted"] = "auto-replied"
    # The enhanced status code also rides in a header so tests and tools can read it plainly.
    msg["X-MS-Exchange-Message-Is-Ndr"] = ""
    code, text, address = leg.ndr_code or "5.0.0", leg.ndr_text or "", leg.address or ""
    msg.set_content(
        f"Your message to {address} couldn't be delivered.\n\n"
        f"Diagnostic information for administrators:\n\n"
        f"Generating server: SANDBOX01MB0001.namprd00.prod.outlook.com\n\n"
        f"{address}\n"
        f"Remote Server returned '{text}'\n\n"
        f"Status code: {code}\n\n"
        f"Original message headers:\n\nMessage-ID: {original_id}\nSubject: {subject}\n"
    )
    return msg.as_bytes()
