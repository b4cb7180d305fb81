"""Deterministic mailbox contents for the sandbox: realistic items to migrate.

`seed_mailbox` fills one mailbox through the mailstore's public `insert_message` (the same
raw insert the import face uses) with a spread of what real mailboxes hold: received dates
over the last year (so a 90-day pre-stage window splits them), custom folders including
awkward names (quotes, a slash, non-ASCII, a nested tree), read and flagged items, plain-text
and HTML bodies, and a few attachments. The same seed, mailbox id and `now` give the same
items (subjects, bodies, dates, Message-IDs), so tests and the demo can compare runs.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import random
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from email.utils import format_datetime

from coexist.sandbox.mailstore import ROOT, MailStore

DEFAULT_ITEMS = 200
SPAN_DAYS = 365

# (path from the top of the mailbox, share of the items). Well-known folders by their English
# display names (mailstore.WELL_KNOWN); the rest are custom, some with names that break naive
# path handling.
FOLDERS: tuple[tuple[tuple[str, ...], int], ...] = (
    (("Inbox",), 40),
    (("Sent Items",), 15),
    (("Archive",), 8),
    (("Inbox", "Projects"), 8),
    (("Inbox", "Projects", "2025"), 6),
    (("Inbox", 'Q1/Q2 "plans"'), 5),
    (("Receipts & Bills",), 6),
    (("Ünïcødé 日本",), 4),
    (("Clients", "Contoso", "Contracts"), 5),
    (("Deleted Items",), 3),
)
CORRESPONDENTS = (
    ("Ava Lindqvist", "ava@fabrikam.example"),
    ("Bo Chen", "bo.chen@contoso.example"),
    ("Chiara Rossi", "chiara@northwind.example"),
    ("Dmitri Volkov", "dmitri@adatum.example"),
    ("Émilie Dubois", "emilie@tailspin.example"),
    ("Farid Haddad", "farid@wingtip.example"),
)
TOPICS = (
    "Quarterly review",
    "Invoice",
    "Lunch on Friday?",
    "Re: project timeline",
    "Contract draft",
    "Travel plans",
    "Fwd: onboarding checklist",
    "Meeting notes",
    "Budget 2026",
    "Support ticket",
)
SHARE_READ = 0.6
SHARE_FLAGGED = 0.1
SHARE_HTML = 0.3
SHARE_ATTACHMENT = 0.05
SHARE_HIGH_IMPORTANCE = 0.05


@dataclass(frozen=True)
class Seeded:
    """What was put in one mailbox: item count and MIME bytes."""

    items: int
    bytes: int


def seed_mailboxes(
    store: MailStore,
    tenant: str,
    mailboxes: Iterable[str],
    *,
    seed: int = 1,
    items: int = DEFAULT_ITEMS,
    now: dt.datetime | None = None,
) -> dict[str, Seeded]:
    """Fill each mailbox (user object id) with `items` messages; returns what each holds."""
    at = now or today()
    return {m: seed_mailbox(store, tenant, m, seed=seed, items=items, now=at) for m in mailboxes}


def today() -> dt.datetime:
    """Midnight UTC today: the default `now`, so a re-seed within a day is identical."""
    return dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def seeded_numbers(store: MailStore, tenant: str, mailbox: str, *, seed: int = 1) -> set[int]:
    """Which of `seed`'s items (by number) the mailbox holds, in any folder: told by their
    Message-ID, so seeding again adds only the ones missing."""
    prefix = f"<{seed}.{_digest(seed, mailbox)}."
    found: set[int] = set()
    for item in store.iter_messages(tenant, mailbox):
        mid = item.internet_message_id or ""
        if mid.startswith(prefix) and mid.endswith(_ID_DOMAIN):
            number = mid[len(prefix) : -len(_ID_DOMAIN)]
            if number.isdigit():
                found.add(int(number))
    return found


def seed_mailbox(
    store: MailStore,
    tenant: str,
    mailbox: str,
    *,
    seed: int = 1,
    items: int = DEFAULT_ITEMS,
    now: dt.datetime | None = None,
    skip: Container[int] = (),
) -> Seeded:
    """Fill one mailbox with `items` messages spread over the year before `now`; the item
    numbers in `skip` are made (so the others come out the same) but not stored."""
    # A str seed is hashed with SHA-512 by `random.seed`: stable across processes.
    rng = random.Random(f"{seed}:{tenant}:{mailbox}")
    at = now or today()
    folders = {path: _folder(store, tenant, mailbox, path) for path, _ in FOLDERS}
    paths = [path for path, _ in FOLDERS]
    weights = [w for _, w in FOLDERS]
    total = stored = 0
    for n in range(items):
        path = rng.choices(paths, weights)[0]
        received = at - dt.timedelta(seconds=rng.randrange(1, SPAN_DAYS * 86400))
        mime = _message(rng, seed, mailbox, n, received, sent=path == ("Sent Items",))
        is_read = path == ("Sent Items",) or rng.random() < SHARE_READ
        flag = {"flagStatus": "flagged"} if rng.random() < SHARE_FLAGGED else None
        importance = "high" if rng.random() < SHARE_HIGH_IMPORTANCE else None
        if n in skip:
            continue
        stored += 1
        store.insert_message(
            tenant,
            mailbox,
            folders[path],
            mime,
            received=received,
            is_read=is_read,
            flag=flag,
            importance=importance,
        )
        total += len(mime)
    return Seeded(stored, total)


def _folder(store: MailStore, tenant: str, mailbox: str, path: Sequence[str]) -> str:
    """The id of the folder at `path` below the top of the mailbox, created if missing."""
    root = store.folder(tenant, mailbox, ROOT)
    assert root is not None
    parent = root.id
    for name in path:
        found = next(
            (f for f in store.child_folders(tenant, mailbox, parent) if f.display_name == name),
            None,
        )
        parent = found.id if found else store.create_folder(tenant, mailbox, parent, name).id
    return parent


def _message(
    rng: random.Random, seed: int, mailbox: str, n: int, received: dt.datetime, *, sent: bool
) -> bytes:
    """RFC 5322 bytes, written out directly (the email package's generator costs more than the
    rest of a seeded item together): text/plain, multipart/alternative with HTML, or
    multipart/mixed with a PDF attachment."""
    name, address = rng.choice(CORRESPONDENTS)
    me = f"user-{mailbox[:8]}@source.example"
    them = f"{_encoded(name)} <{address}>"
    topic = rng.choice(TOPICS)
    digest = _digest(seed, mailbox)
    headers = [
        f"From: {me if sent else them}",
        f"To: {them if sent else me}",
        f"Subject: {topic} #{n}",
        f"Date: {format_datetime(received - dt.timedelta(seconds=rng.randrange(5, 600)))}",
        f"Message-ID: {_message_id(seed, mailbox, n)}",
        "MIME-Version: 1.0",
    ]
    text = _body(rng, topic, name)
    plain = _part("text/plain; charset=utf-8", text.encode())
    body = plain
    if rng.random() < SHARE_HTML:
        paragraphs = "".join(f"<p>{line}</p>" for line in text.splitlines() if line)
        html = _part("text/html; charset=utf-8", f"<html><body>{paragraphs}</body></html>".encode())
        body = _multipart("alternative", f"alt-{digest}-{n}", [plain, html])
    if rng.random() < SHARE_ATTACHMENT:
        data = rng.randbytes(rng.randrange(2_000, 60_000))
        pdf = _part(
            "application/pdf",
            data,
            f'Content-Disposition: attachment; filename="doc-{n}.pdf"',
        )
        body = _multipart("mixed", f"mix-{digest}-{n}", [body, pdf])
    return ("\r\n".join(headers) + "\r\n").encode() + body


_ID_DOMAIN = "@mailseed.example>"


def _digest(seed: int, mailbox: str) -> str:
    return hashlib.sha1(f"{seed}:{mailbox}".encode()).hexdigest()[:12]


def _message_id(seed: int, mailbox: str, n: int) -> str:
    """Item `n`'s Message-ID: the same for the same seed and mailbox, whatever the day."""
    return f"<{seed}.{_digest(seed, mailbox)}.{n}{_ID_DOMAIN}"  # seeded_numbers reads it


def _encoded(name: str) -> str:
    """A display name as an RFC 2047 encoded word when it is not ASCII."""
    if name.isascii():
        return name
    return "=?utf-8?b?" + base64.b64encode(name.encode()).decode() + "?="


def _part(content_type: str, data: bytes, *extra: str) -> bytes:
    """One MIME entity (headers and a base64 body) as bytes."""
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    head = [f"Content-Type: {content_type}", "Content-Transfer-Encoding: base64", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + encoded


def _multipart(subtype: str, boundary: str, parts: list[bytes]) -> bytes:
    head = f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in parts)
    return head + body + b"--" + boundary.encode() + b"--\r\n"


def _body(rng: random.Random, topic: str, name: str) -> str:
    words = ("status", "draft", "numbers", "agenda", "follow-up", "deadline", "review", "notes")
    lines = [f"Hi {name.split()[0]},", "", f"About {topic.lower()}:"]
    lines += [" ".join(rng.choice(words) for _ in range(rng.randrange(6, 14))) + "." for _ in
              range(rng.randrange(1, 5))]  # fmt: skip
    lines += ["", "Regards"]
    return "\n".join(lines) + "\n"
