"""Deterministic IMAP mailboxes for the demo and the tests, written over IMAP (APPEND).

What an IMAP migration meets in real mailboxes, in a few messages per user:
- folders whose names hold quotes (MigrationWiz's `AllowQuoteInFolder`), non-ASCII letters
  (sent as modified UTF-7, RFC 3501 5.1.3), a five-level tree, children of INBOX (the
  `^INBOX/->` mapping's case), the special-use folders (RFC 6154: Sent, Drafts, Archive),
  and, for a user whose hierarchy delimiter is ".", a "/" inside a name;
- old mail (more than 90 days: pre-stage) and new mail (cutover), each with its
  INTERNALDATE, flags (\\Seen \\Flagged \\Answered \\Draft) and keywords ("$" keywords of
  RFC 5788 and plain ones that become categories);
- one message with a large attachment (over Microsoft Graph's 3 MB request limit, so a
  Microsoft 365 target needs an upload session).

The same `seed`, users and `now` give the same messages (Message-IDs, bytes, dates): the
`Manifest` says what was written, so a check can find each message in a target exactly once.

It speaks IMAP with the standard library's imaplib and its own modified UTF-7 encoder, not
through coexist's IMAP adapter: the mailboxes a migration reads are then not written by the
code under test (DESIGN.md: the sandbox imports only pure shared helpers).
"""

from __future__ import annotations

import base64
import datetime as dt
import imaplib
import random
import ssl
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from pathlib import Path

OLD_DAYS = 90  # pre-stage moves mail older than this (`prestage --older-than 90d`)
DEFAULT_ITEMS = 16
LARGE_ATTACHMENT_BYTES = 4 * 1024 * 1024  # Graph: requests over 3 MB need an upload session
DOMAIN = "imap.example"

# Folder paths (parts), with the special use Dovecot gives them (None: an ordinary folder).
# "Archive" is created by the seed; Dovecot's config (coexist.sandbox.dovecot) marks it
# \Archive. Sent and Drafts exist already (auto = create).
FOLDERS: tuple[tuple[str, ...], ...] = (
    ("INBOX",),
    ("INBOX", "Receipts"),
    ("Sent",),
    ("Drafts",),
    ("Archive",),
    ('Clients "Acme" & Co',),
    ("Résumés für Jürgen",),
    ("日本語", "Проекты"),
    ("Projects", "2024", "Q1", "Acme", "Contracts"),
)
# A "/" inside a folder name: only where the user's delimiter is another character.
SLASH_FOLDER = ("Reports 1/2",)

SUBJECTS = (
    "Quarterly numbers",
    "Lunch on Friday?",
    "Re: contract draft",
    "Invoice 4711",
    "Überweisung bestätigt",
    "Meeting notes",
    "Fwd: travel plans",
    "見積書の件",
)
FLAG_SETS: tuple[frozenset[str], ...] = (
    frozenset({"\\Seen"}),
    frozenset(),
    frozenset({"\\Seen", "\\Flagged"}),
    frozenset({"\\Seen", "\\Answered"}),
)
KEYWORD_SETS: tuple[frozenset[str], ...] = (
    frozenset(),
    frozenset({"$Forwarded"}),
    frozenset({"Work"}),
    frozenset({"$label1", "Personal"}),
)


@dataclass(frozen=True)
class SeedUser:
    """A mailbox to seed: its login, password and hierarchy delimiter."""

    login: str
    password: str = field(repr=False)
    separator: str = "/"


@dataclass(frozen=True)
class SeededMessage:
    """One message the seed wrote: where, what, and with which state."""

    user: str
    folder: tuple[str, ...]
    message_id: str
    subject: str
    flags: frozenset[str]
    keywords: frozenset[str]
    internaldate: dt.datetime
    size: int
    raw: bytes = field(repr=False, compare=False)

    def older_than(self, days: int, now: dt.datetime) -> bool:
        """Whether pre-stage with `--older-than {days}d` at `now` moves this message."""
        return self.internaldate < now - dt.timedelta(days=days)


@dataclass(frozen=True)
class Manifest:
    """Everything a seed wrote, per user."""

    messages: tuple[SeededMessage, ...]

    def of(self, user: str) -> list[SeededMessage]:
        """The messages of one user."""
        return [m for m in self.messages if m.user == user]

    def folders(self, user: str) -> list[tuple[str, ...]]:
        """The folders of one user that hold seeded messages, in seed order."""
        return list(dict.fromkeys(m.folder for m in self.of(user)))

    def summary(self) -> dict[str, dict[str, int]]:
        """Per user: messages, bytes, and how many are older than 90 days."""
        out: dict[str, dict[str, int]] = {}
        for m in self.messages:
            row = out.setdefault(m.user, {"items": 0, "bytes": 0, "folders": 0})
            row["items"] += 1
            row["bytes"] += m.size
        for user, row in out.items():
            row["folders"] = len(self.folders(user))
        return out


# -- modified UTF-7 (RFC 3501 5.1.3) ------------------------------------------------------
def encode_mutf7(name: str) -> str:
    """A mailbox name in IMAP's modified UTF-7: printable ASCII as is ("&" as "&-"), every
    other run as UTF-16BE in base64 with "," for "/", no padding, between "&" and "-"."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            data = "".join(run).encode("utf-16-be")
            out.append("&" + base64.b64encode(data).decode().rstrip("=").replace("/", ",") + "-")
            run.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            run.append(char)
    flush()
    return "".join(out)


def quoted(name: str) -> str:
    """An IMAP quoted string (RFC 3501 4.3): backslash and double quote escaped."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- the messages ---------------------------------------------------------------------------
def folders_for(user: SeedUser) -> list[tuple[str, ...]]:
    """The seeded folders of a user: the common ones, plus a "/" in a name where the
    user's delimiter allows it."""
    return [*FOLDERS, *([SLASH_FOLDER] if user.separator != "/" else [])]


def _message(
    user: SeedUser,
    index: int,
    folder: tuple[str, ...],
    when: dt.datetime,
    rng: random.Random,
    seed: int,
    attachment: bytes | None,
) -> EmailMessage:
    msg = EmailMessage(policy=SMTP)
    sender = (
        f"{user.login}@{DOMAIN}"
        if folder[0] in ("Sent", "Drafts")
        else f"partner{index % 3}@partner.example"
    )
    rcpt = (
        f"{user.login}@{DOMAIN}"
        if sender != f"{user.login}@{DOMAIN}"
        else "partner@partner.example"
    )
    msg["From"] = sender
    msg["To"] = rcpt
    msg["Subject"] = f"{SUBJECTS[index % len(SUBJECTS)]} #{index}"
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = f"<seed{seed}.{user.login}.{index}@{DOMAIN}>"
    body = f"Message {index} of {user.login} in {'/'.join(folder)}.\n" + "".join(
        rng.choice("abcdefghij klmnop\n") for _ in range(200 + rng.randrange(600))
    )
    msg.set_content(body)
    if attachment is not None:
        msg.add_attachment(
            attachment, maintype="application", subtype="octet-stream", filename="scan.bin"
        )
        msg.set_boundary(f"seed-{seed}-{user.login}-{index}")  # else random: not repeatable
    return msg


def plan(
    users: Sequence[SeedUser],
    *,
    seed: int = 1,
    items: int = DEFAULT_ITEMS,
    now: dt.datetime,
    large_attachment_bytes: int = LARGE_ATTACHMENT_BYTES,
) -> Manifest:
    """The messages a seed writes (nothing is sent): `items` per user spread over the
    folders, every other one older than 90 days; the first user's first message carries
    the large attachment (none when `large_attachment_bytes` is 0)."""
    out: list[SeededMessage] = []
    for u, user in enumerate(users):
        rng = random.Random(f"{seed}:{user.login}")
        folders = folders_for(user)
        for index in range(items):
            folder = folders[index % len(folders)]
            old = index % 2 == 0
            days = rng.randrange(OLD_DAYS + 10, 400) if old else rng.randrange(1, OLD_DAYS - 10)
            when = (now - dt.timedelta(days=days, seconds=rng.randrange(86400))).replace(
                microsecond=0
            )
            large = u == 0 and index == 0 and large_attachment_bytes > 0
            attachment = rng.randbytes(large_attachment_bytes) if large else None
            flags = FLAG_SETS[rng.randrange(len(FLAG_SETS))]
            if folder == ("Drafts",):
                flags = frozenset({"\\Draft"})
            keywords = KEYWORD_SETS[rng.randrange(len(KEYWORD_SETS))]
            msg = _message(user, index, folder, when, rng, seed, attachment)
            raw = msg.as_bytes()
            out.append(
                SeededMessage(
                    user=user.login,
                    folder=folder,
                    message_id=str(msg["Message-ID"]),
                    subject=str(msg["Subject"]),
                    flags=flags,
                    keywords=keywords,
                    internaldate=when,
                    size=len(raw),
                    raw=raw,
                )
            )
    return Manifest(tuple(out))


# -- writing ----------------------------------------------------------------------------------
class SeedError(Exception):
    """The server refused part of the seed (a bug in the seed or the server's setup)."""


def _check(what: str, answer: tuple[str, Sequence[object]]) -> None:
    typ, data = answer
    if typ != "OK":
        raise SeedError(f"{what}: {typ} {data!r}")


def _connect(host: str, port: int, ca_file: Path, user: SeedUser) -> imaplib.IMAP4_SSL:
    context = ssl.create_default_context(cafile=str(ca_file))
    client = imaplib.IMAP4_SSL(host, port, ssl_context=context, timeout=120)
    _check(f"LOGIN {user.login}", client.login(user.login, user.password))
    return client


def _create(client: imaplib.IMAP4_SSL, name: str) -> None:
    typ, data = client.create(quoted(name))
    # An existing folder (Sent, Drafts) is fine: ALREADYEXISTS (RFC 5530).
    if typ != "OK" and b"ALREADYEXISTS" not in b" ".join(d for d in data if isinstance(d, bytes)):
        raise SeedError(f"CREATE {name!r}: {typ} {data!r}")


def write_user(
    host: str, port: int, ca_file: Path, user: SeedUser, messages: Iterable[SeededMessage]
) -> None:
    """APPEND one user's messages (folders created first; parents of a deep path too)."""
    mine = list(messages)
    client = _connect(host, port, ca_file, user)
    try:
        created: set[tuple[str, ...]] = set()
        for m in mine:
            for depth in range(1, len(m.folder) + 1):
                part = m.folder[:depth]
                if part not in created and part != ("INBOX",):
                    _create(client, encode_mutf7(user.separator.join(part)))
                created.add(part)
            name = quoted(encode_mutf7(user.separator.join(m.folder)))
            flags = " ".join(sorted(m.flags | m.keywords))
            _check(
                f"APPEND {m.folder!r} of {user.login}",
                client.append(name, f"({flags})" if flags else None, m.internaldate, m.raw),
            )
    finally:
        with suppress(imaplib.IMAP4.error, OSError):
            client.logout()  # the seed is written; a lost LOGOUT changes nothing


def seed(
    host: str,
    port: int,
    ca_file: Path,
    users: Sequence[SeedUser],
    *,
    seed: int = 1,
    items: int = DEFAULT_ITEMS,
    now: dt.datetime | None = None,
    large_attachment_bytes: int = LARGE_ATTACHMENT_BYTES,
) -> Manifest:
    """Write `plan(...)` into the users' mailboxes over implicit TLS at host:port."""
    manifest = plan(
        users,
        seed=seed,
        items=items,
        now=now or dt.datetime.now(dt.UTC),
        large_attachment_bytes=large_attachment_bytes,
    )
    for user in users:
        write_user(host, port, ca_file, user, manifest.of(user.login))
    return manifest
