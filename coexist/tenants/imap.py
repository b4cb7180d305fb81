"""IMAP adapter: the one module that speaks IMAP (through imapclient).

Everything else sees typed, immutable records: `ImapFolder` (name decoded from modified
UTF-7, delimiter, special use, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ), `MessageRef` (UID,
flags, keywords, INTERNALDATE, size, Message-ID), `FetchedMessage` (the raw RFC 5322 bytes)
and `FolderChanges` (what changed since a `Watermark`). A store over this adapter only
translates records; it never sees imapclient, bytes flags or protocol errors.

Protocol choices, each with its source:
- TLS always, verification always on (implicit TLS, RFC 8314, or STARTTLS, RFC 3501 6.2.1);
  a private CA is a CA bundle (`ImapEndpoint.ca_file`), never "don't verify".
- Logins: LOGIN, AUTHENTICATE PLAIN (RFC 4616), XOAUTH2 (Google "OAuth 2.0 Mechanism",
  Microsoft "Authenticate an IMAP, POP or SMTP connection using OAuth": Microsoft 365 takes
  no passwords over IMAP), and Dovecot's master user (`user*master` with the master's
  password, Dovecot "Master users/passwords").
- Delta: UIDVALIDITY + highest UID seen per folder (RFC 3501 2.3.1.1: a new UIDVALIDITY
  voids every UID); flag changes through CONDSTORE `CHANGEDSINCE` (RFC 7162 3.1.4) and
  expunges through QRESYNC `VANISHED` (RFC 7162 3.2.6) when the server offers them.
- Bulk: FETCH and APPEND in chunks bounded by count and bytes, one command per chunk (the
  server streams a chunk's answers back to back: one round trip per chunk, not per
  message); MULTIAPPEND (RFC 3502) appends a chunk in one command where offered.
- TCP_NODELAY: IMAP is many small request/response pairs; with Nagle + delayed ACK each
  small write can wait ~40 ms.

Errors are mapped here, once, into `coexist.errors`: a refused login is an
`AuthenticationError` naming the user (that user fails, the others go on); no connection
or a TLS failure is `Unreachable` / `TLSError` naming the endpoint, the cause and the fix;
a command the server refuses maps by its response code (RFC 5530). Passwords and tokens
never appear in a message, a repr or a log line.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import ctypes.util
import dataclasses
import email.parser
import email.policy
import functools
import logging
import os
import re
import socket
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol, Self, TypeVar

import imapclient
from imapclient import exceptions as imap_errors
from imapclient.datetime_util import datetime_to_INTERNALDATE
from imapclient.imap_utf7 import decode as decode_utf7
from imapclient.imapclient import SocketTimeout
from imapclient.response_parser import parse_response

from coexist.errors import (
    AuthenticationError,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RemoteError,
    TLSError,
    TransientError,
    Unreachable,
)
from coexist.gcfreeze import freeze_startup_objects

from .base import connection_cause
from .imap_fetch import parse_fetch

log = logging.getLogger(__name__)

SERVICE = "imap"
# Bounds of one FETCH or APPEND command (a chunk): enough messages per round trip to keep
# the connection busy, few enough bytes that a chunk never holds much memory. A message
# larger than CHUNK_BYTES goes alone in its chunk.
CHUNK_MESSAGES = 200
CHUNK_BYTES = 8 * 1024 * 1024
# Metadata of this many messages per FETCH when listing refs (a few hundred bytes each).
REF_CHUNK = 1000

# RFC 6154 special-use attributes (and RFC 8457's \Important) -> the well-known folder name
# coexist uses (Microsoft Graph's wellKnownName where one exists: mailFolder resource page).
# \All, \Flagged and \Important are virtual views (Gmail's All Mail, Starred, Important):
# every message in them is also in a real folder, so a store skips them by default.
SPECIAL_USE: dict[str, str] = {
    "\\drafts": "drafts",
    "\\sent": "sentitems",
    "\\trash": "deleteditems",
    "\\junk": "junkemail",
    "\\archive": "archive",
    "\\all": "allmail",
    "\\flagged": "flagged",
    "\\important": "important",
}
VIRTUAL_FOLDERS = frozenset({"allmail", "flagged", "important"})
# Servers without SPECIAL-USE (RFC 6154 is optional): the names common providers give
# their special folders, used only when no folder of the account carries an attribute.
# The same list imapclient's find_special_folder falls back to (imapclient.imapclient
# _POPULAR_SPECIAL_FOLDERS), lower-cased, plus Exchange's "Junk E-mail".
SPECIAL_NAMES: dict[str, str] = {
    "drafts": "drafts",
    "sent": "sentitems",
    "sent items": "sentitems",
    "sent messages": "sentitems",
    "trash": "deleteditems",
    "deleted items": "deleteditems",
    "deleted messages": "deleteditems",
    "deleted": "deleteditems",
    "junk": "junkemail",
    "junk e-mail": "junkemail",
    "spam": "junkemail",
    "archive": "archive",
}
SYSTEM_FLAGS = frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Draft", "\\Deleted"})

Security = Literal["tls", "starttls"]
T = TypeVar("T")


# -- settings and credentials -----------------------------------------------------------


@dataclass(frozen=True)
class ImapEndpoint:
    """Where an IMAP server is and how to reach it; `side` names the settings table
    ([source] or [target]) that error messages point to."""

    host: str
    port: int = 993
    security: Security = "tls"
    ca_file: Path | None = None
    connect_timeout_s: float = 30.0
    timeout_s: float = 120.0
    side: str = "source"

    @property
    def url(self) -> str:
        scheme = "imaps" if self.security == "tls" else "imap"
        return f"{scheme}://{self.host}:{self.port}"


@dataclass(frozen=True)
class Password:
    """LOGIN (or AUTHENTICATE PLAIN) as `user` with a password."""

    user: str
    password: str = field(repr=False)
    mechanism: Literal["login", "plain"] = "login"


@dataclass(frozen=True)
class MasterPassword:
    """Dovecot's master user: log in as `user` with `master`'s password, as
    `user<separator>master` (Dovecot "Master users/passwords", auth_master_user_separator)."""

    user: str
    master: str
    password: str = field(repr=False)
    separator: str = "*"


@dataclass(frozen=True)
class OAuth2Token:
    """AUTHENTICATE XOAUTH2 as `user` with an OAuth 2.0 access token (Microsoft 365, Gmail)."""

    user: str
    token: str = field(repr=False)


class Tokens(Protocol):
    """Where current access tokens come from (`tenants.oauth.TokenSource`)."""

    def token(self) -> str: ...

    def refresh(self) -> None: ...

    def fresh(self, token: str) -> bool:
        """Whether `token` is still one a new login would be given (not near its expiry)."""
        ...


@dataclass(frozen=True)
class OAuth2Refreshed:
    """AUTHENTICATE XOAUTH2 as `user` with a current token of `tokens` at each login; a
    token the server refuses is replaced and the login made once more, on a new
    connection (`ImapSession.open`). A connection logged in with such a token retires
    before the token expires, between two commands, and logs in again with a new one
    (`ImapSession.renew`, called by `AsyncImapSession.run`)."""

    user: str
    tokens: Tokens = field(repr=False)


Credentials = Password | MasterPassword | OAuth2Token | OAuth2Refreshed


# -- records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImapCapabilities:
    """The extensions of the server that change how the adapter works."""

    condstore: bool
    qresync: bool
    multiappend: bool
    move: bool
    uidplus: bool
    special_use: bool
    unselect: bool
    literal_plus: bool = False  # RFC 7888: literals sent without waiting for "+"
    list_status: bool = False  # RFC 5819: LIST ... RETURN (STATUS (...))

    @classmethod
    def parse(cls, caps: Iterable[bytes]) -> Self:
        names = {c.decode("ascii", "replace").upper() for c in caps}
        return cls(
            condstore="CONDSTORE" in names or "QRESYNC" in names,  # RFC 7162 3.2.3
            qresync="QRESYNC" in names,
            multiappend="MULTIAPPEND" in names,
            move="MOVE" in names,
            uidplus="UIDPLUS" in names,
            special_use="SPECIAL-USE" in names,
            unselect="UNSELECT" in names,
            literal_plus="LITERAL+" in names,
            list_status="LIST-STATUS" in names,
        )


@dataclass(frozen=True)
class ImapFolder:
    """A folder as LISTed and STATUSed. `name` is the full name decoded from modified
    UTF-7 (RFC 3501 5.1.3), `path` its parts split on `delimiter` (None: a flat namespace)."""

    name: str
    delimiter: str | None
    path: tuple[str, ...]
    special_use: str | None  # a well-known name ("sentitems", ...), see SPECIAL_USE
    attributes: frozenset[str]
    selectable: bool
    uidvalidity: int | None = None
    uidnext: int | None = None
    highestmodseq: int | None = None
    messages: int | None = None

    @property
    def virtual(self) -> bool:
        """A view of messages that live in other folders (Gmail's All Mail, Starred)."""
        return self.special_use in VIRTUAL_FOLDERS


@dataclass(frozen=True)
class MessageRef:
    """One message of a folder, without its body."""

    uid: int
    flags: frozenset[str]  # system flags (\\Seen \\Answered \\Flagged \\Draft \\Deleted)
    keywords: frozenset[str]  # every other flag ($Forwarded, $label1, user keywords)
    internaldate: datetime  # timezone-aware, as the server keeps it
    size: int
    message_id: str | None  # the Message-ID header, None when the message has none
    modseq: int | None = None
    # The header block read with the Message-ID (`changes(fields=)`): the fields asked.
    header: bytes | None = None


@dataclass(frozen=True)
class FlagChange:
    """A known message whose flags changed (CONDSTORE)."""

    uid: int
    flags: frozenset[str]
    keywords: frozenset[str]
    modseq: int | None


@dataclass(frozen=True)
class FetchedMessage:
    """A message's raw RFC 5322 bytes with its flags and INTERNALDATE."""

    uid: int
    raw: bytes = field(repr=False)
    flags: frozenset[str]
    keywords: frozenset[str]
    internaldate: datetime


@dataclass(frozen=True)
class NewMessage:
    """A message to APPEND: raw bytes, flags and keywords to set, INTERNALDATE to keep."""

    raw: bytes = field(repr=False)
    flags: frozenset[str] = frozenset()
    keywords: frozenset[str] = frozenset()
    internaldate: datetime | None = None


@dataclass(frozen=True)
class Watermark:
    """A folder's delta cursor: everything up to `last_uid` under `uidvalidity` was seen,
    and every flag change up to `highestmodseq` (None: the server has no CONDSTORE)."""

    uidvalidity: int
    last_uid: int = 0
    highestmodseq: int | None = None


@dataclass(frozen=True)
class FolderChanges:
    """What changed in a folder since a watermark.

    `reset`: the UIDVALIDITY differs from the watermark's, so every UID it covered is void;
    `new` then holds every message of the folder, and the caller must re-match them (by
    Message-ID) instead of copying them again. `flag_changes` and `vanished` cover messages
    up to the watermark's UID; each is None when the server cannot tell (no CONDSTORE, no
    QRESYNC): the caller then compares the flags or UIDs itself (`list_uids`). `more`: a
    `limit` cut the new messages short; ask again from `next`.

    Save `next` only once everything in these changes is recorded. Saving after part of
    `new`: `Watermark(next.uidvalidity, <last recorded UID>, <the previous highestmodseq>)`."""

    folder: str
    reset: bool
    new: tuple[MessageRef, ...]
    flag_changes: tuple[FlagChange, ...] | None
    vanished: tuple[int, ...] | None
    next: Watermark
    more: bool = False


# -- pure helpers -----------------------------------------------------------------------


def sequence_set(uids: Iterable[int]) -> str:
    """The shortest IMAP sequence set of `uids` ("1:3,7,9:10")."""
    ordered = sorted(set(uids))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}:{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def parse_sequence_set(text: str) -> list[int]:
    """The UIDs of a sequence set without `*` ("1:3,7" -> [1, 2, 3, 7])."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition(":")
        a, b = int(lo), int(hi or lo)
        out.extend(range(min(a, b), max(a, b) + 1))
    return out


def split_flags(raw: Iterable[bytes | str]) -> tuple[frozenset[str], frozenset[str]]:
    """(system flags, keywords) of a FLAGS list; \\Recent is dropped (it belongs to one
    session and cannot be set, RFC 3501 2.3.2)."""
    if isinstance(raw, tuple):  # a FETCH answer's list: a mailbox has few distinct ones
        return _split_flags(raw)
    return _split_flags.__wrapped__(tuple(raw))


_CANONICAL_FLAGS = {s.casefold(): s for s in SYSTEM_FLAGS}


@functools.lru_cache(maxsize=1024)
def _split_flags(raw: tuple[bytes | str, ...]) -> tuple[frozenset[str], frozenset[str]]:
    names = [f.decode("utf-8", "replace") if isinstance(f, bytes) else f for f in raw]
    flags = frozenset(
        _CANONICAL_FLAGS[n.casefold()]
        for n in names
        if n.startswith("\\") and n.casefold() in _CANONICAL_FLAGS
    )
    return flags, frozenset(n for n in names if not n.startswith("\\"))


# The usual `BODY[HEADER.FIELDS (MESSAGE-ID)]` block: one unfolded ASCII field line and the
# blank line. Read without the email package's parser (the scan reads one per message:
# ~13 us each through BytesHeaderParser); any other block goes to the parser as before,
# and tests/unit/test_imap_parsing.py holds both to the same answer.
_PLAIN_MESSAGE_ID = re.compile(rb"\A(?i:message-id):([\x20-\x7e\t]*)\r\n(?:\r\n)?\Z")
# A block of unfolded ASCII field lines (a name, the colon, printable text) and the blank
# line; in it, a Message-ID field's line.
_PLAIN_LINES = re.compile(rb"(?:[\x21-\x39\x3b-\x7e]+:[\x20-\x7e\t]*\r\n)+(?:\r\n)?\Z")
_MESSAGE_ID_LINE = re.compile(rb"^(?i:message-id):([\x20-\x7e\t]*)\r$", re.M)


def parse_message_id(header_block: bytes | None) -> str | None:
    """The Message-ID of a `BODY[HEADER.FIELDS (MESSAGE-ID ...)]` block, unfolded."""
    if not header_block:
        return None
    if (plain := _PLAIN_MESSAGE_ID.match(header_block)) is not None:
        return " ".join(plain.group(1).decode("ascii").split()) or None
    # A block of several plain fields (the scan also reads the store's inspect fields): in
    # the usual shape (unfolded ASCII lines), the first Message-ID line is the field.
    if _PLAIN_LINES.match(header_block) is not None:
        found = _MESSAGE_ID_LINE.search(header_block)
        return None if found is None else (" ".join(found.group(1).decode().split()) or None)
    if (fields := plain_fields(header_block, (b"message-id",))) is not None:
        value = fields.get(b"message-id")
        return None if value is None else (" ".join(value.split()) or None)
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(header_block)
    value = headers.get("Message-ID")
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text or None


# A header field's first line: its name (printable ASCII but ":", RFC 5322 2.2; the
# feedparser's headerRE), then the colon; or a folded line.
_FIELD_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]+:|[ \t]")


def plain_fields(block: bytes, names: Sequence[bytes]) -> dict[bytes, str] | None:
    """The first value of each field of `names` (lower case) in a header block as compat32's
    `Message.get` gives it (the first line's text after the colon less leading blanks, the
    folded lines kept, the last line end removed); None where the compat32 parser may read
    the block otherwise: bytes beyond ASCII, a lone CR, a line that is no field (a defect,
    or the body's start), or a block whose first line is folded. ~1/5 of the parser's cost."""
    if not block.isascii():
        return None
    lines = block.split(b"\n")
    found: dict[bytes, str] = {}
    name: bytes | None = None
    value: list[bytes] = []
    for i, line in enumerate(lines):
        if line in (b"", b"\r"):  # the blank line ending the header (or the block's end)
            if i != len(lines) - 1 and any(rest not in (b"", b"\r") for rest in lines[i:]):
                return None  # a body after the header: let the parser decide
            break
        if b"\r" in line[:-1] or not _FIELD_LINE.match(line):
            return None
        if line[0] in b" \t":
            if name is None:
                return None
            value.append(line + b"\n")
            continue
        if name is not None and name not in found:
            found[name] = _field_value(value)
        head, _, rest = line.partition(b":")
        name, value = head.lower(), [rest.lstrip(b" \t") + b"\n"]
    else:
        return None  # no line end after the last line: the parser's own business
    if name is not None and name not in found:
        found[name] = _field_value(value)
    return {k: found[k] for k in names if k in found}


def _field_value(lines: list[bytes]) -> str:
    return b"".join(lines).decode("ascii").rstrip("\r\n")


def special_use_of(attributes: frozenset[str]) -> str | None:
    """The well-known name a folder's RFC 6154 attributes give it, if any."""
    for attr in attributes:
        if (name := SPECIAL_USE.get(attr.casefold())) is not None:
            return name
    return None


def response_code(text: str) -> str | None:
    """The RFC 5530 response code of a server answer ("[ALREADYEXISTS] ..." -> ALREADYEXISTS)."""
    match = re.search(r"\[([A-Z-]+)", text)
    return match.group(1) if match else None


def _appended_uids(text: bytes | str | None) -> list[int]:
    """The UIDs an APPEND's `[APPENDUID validity uids]` answer names (RFC 4315 3)."""
    return _appended(text)[1]


def _appended(text: bytes | str | None) -> tuple[int | None, list[int]]:
    """(UIDVALIDITY, UIDs) of an APPEND's `[APPENDUID validity uids]` answer (RFC 4315 3);
    (None, []) when the answer has none (no UIDPLUS)."""
    if text is None:
        return None, []
    body = text.decode("ascii", "replace") if isinstance(text, bytes) else text
    match = re.search(r"\[APPENDUID (\d+) ([0-9:,]+)\]", body)
    if not match:
        return None, []
    return int(match.group(1)), parse_sequence_set(match.group(2))


def _copied_uids(texts: Iterable[bytes | str]) -> dict[int, int]:
    """source UID -> destination UID of a `[COPYUID validity src dst]` answer (RFC 4315 3)."""
    for text in texts:
        body = text.decode("ascii", "replace") if isinstance(text, bytes) else text
        match = re.search(r"\[COPYUID \d+ ([0-9:,]+) ([0-9:,]+)\]", body)
        if match:
            src, dst = parse_sequence_set(match.group(1)), parse_sequence_set(match.group(2))
            return dict(zip(src, dst, strict=False))
    return {}


def chunks_by_size(
    items: Sequence[Any], size_of: Any, *, max_count: int, max_bytes: int
) -> Iterator[list[Any]]:
    """`items` cut into runs of at most `max_count` items and `max_bytes` bytes (a single
    item larger than `max_bytes` is a run of its own)."""
    run: list[Any] = []
    total = 0
    for item in items:
        size = int(size_of(item))
        if run and (len(run) >= max_count or total + size > max_bytes):
            yield run
            run, total = [], 0
        run.append(item)
        total += size
    if run:
        yield run


# -- errors -----------------------------------------------------------------------------

# Response codes (RFC 5530) that say "later", not "never".
_TRANSIENT_CODES = {"UNAVAILABLE", "INUSE", "LIMIT", "SERVERBUG", "EXPUNGEISSUED"}
# A session ended because the OAuth token it logged in with expired: Exchange Online sends
# "* BYE Session invalidated - AccessTokenExpired", seen in answer to an APPEND in a user's
# log (imapsync/imapsync issue #250; not in Microsoft's docs: *unverified* whether it also
# answers NO with those words); RFC 5530's [EXPIRED] ("access is no longer permitted using
# that passphrase") is the standard code for it. Both are transient: a new login with a new
# token goes on.
_TOKEN_EXPIRED = re.compile(r"AccessTokenExpired|\[EXPIRED\]", re.I)


def token_expired(exc: BaseException) -> bool:
    """Whether a failed command says the session's OAuth token expired."""
    return _TOKEN_EXPIRED.search(str(exc)) is not None


def _server_text(exc: BaseException) -> str:
    text = str(exc)
    # imapclient prefixes the command ("create failed: ..."); the server's words follow,
    # for LOGIN as the repr of bytes (b'[AUTHENTICATIONFAILED] ...').
    said = text.split(" failed: ", 1)[-1].strip()
    if (quoted := re.fullmatch(r"b(['\"])(.*)\1", said, re.S)) is not None:
        said = quoted.group(2)
    return said or type(exc).__name__


class _ErrorMapper:
    """Maps imapclient and socket failures of one session to coexist errors."""

    def __init__(self, endpoint: ImapEndpoint, user: str) -> None:
        self.ep = endpoint
        self.user = user

    def connect_failure(self, exc: BaseException) -> RemoteError:
        cause = connection_cause(exc)
        ep = self.ep
        side = f"[{ep.side}]"
        kw: dict[str, Any] = {"service": SERVICE, "endpoint": ep.url, "cause": cause.detail}
        head = f"IMAP server {ep.url}"
        again = "then run the command again"
        if cause.kind == "untrusted":
            return TLSError(
                f"{head}: its TLS certificate is not trusted ({cause.detail}); coexist never "
                "turns certificate checks off",
                next_step=f"check {side} host: it must be a name the server's certificate "
                f"carries; if a private CA signs it, set ca_file in {side} to that CA's "
                f"bundle (PEM); {again}",
                **kw,
            )
        if cause.kind == "tls":
            return TLSError(
                f"{head}: the TLS handshake failed ({cause.detail})",
                next_step=f"check {side} port and security: 993 speaks TLS at once "
                f'(security = "tls"), 143 starts in plain text and upgrades '
                f'(security = "starttls"); {again}',
                **kw,
            )
        text = {
            "timeout": f"no connection within {ep.connect_timeout_s:g} s",
            "dns": f"the name {ep.host} does not resolve ({cause.detail})",
            "refused": "connection refused",
            "dropped": f"the connection failed ({cause.detail})",
        }[cause.kind]
        return Unreachable(
            f"{head}: {text}",
            next_step=f"check {side} host and port, that the server is up, and the network "
            f"path to {ep.host} (firewall); {again}",
            **kw,
        )

    def login_failure(self, exc: BaseException, credentials: Credentials) -> RemoteError:
        said = _server_text(exc)
        code = response_code(said)
        kw: dict[str, Any] = {"service": SERVICE, "code": code, "user": credentials.user}
        if code in _TRANSIENT_CODES:
            # Dovecot refuses a login over mail_max_userip_connections with [LIMIT] (RFC 5530:
            # "the number of simultaneous connections") or, seen too, [UNAVAILABLE].
            return TransientError(
                f"IMAP login of {credentials.user} at {self.ep.url} was refused for now: {said}",
                **kw,
            )
        how = {
            Password: "the password",
            MasterPassword: "the master user and its password",
            OAuth2Token: "the OAuth token (its scope must allow IMAP)",
            OAuth2Refreshed: "the OAuth client's access to the mailbox (a new token was "
            "refused too)",
        }[type(credentials)]
        via = (
            f" through master user {credentials.master}"
            if isinstance(credentials, MasterPassword)
            else ""
        )
        # A bare access token expires after about an hour (Microsoft identity platform:
        # 60-90 minutes; Google: expires_in 3599): said in the message, which callers keep.
        expired = (
            f" (an OAuth access token lasts about an hour: give a new one, or the "
            f"{self.ep.side}'s OAuth client, coexist credentials set --oauth-app --side "
            f"{self.ep.side}, so that coexist refreshes tokens itself)"
            if isinstance(credentials, OAuth2Token)
            else ""
        )
        return AuthenticationError(
            f"IMAP login of {credentials.user}{via} at {self.ep.url} was refused: {said}" + expired,
            next_step=f"check {how} of {credentials.user} "
            f"(coexist credentials set {credentials.user}), then run "
            "`coexist verify-credentials`",
            **kw,
        )

    def command_failure(self, exc: BaseException, what: str, folder: str | None) -> RemoteError:
        where = f" in folder {folder!r}" if folder is not None else ""
        head = f"IMAP {what}{where} for {self.user} at {self.ep.url}"
        kw: dict[str, Any] = {"service": SERVICE, "user": self.user, "folder": folder}
        if token_expired(exc):
            # Retried like a dropped connection: a read is read again and a write whose
            # outcome is unknown is settled by the sync's `importing` marks, both over a
            # new login with a new token.
            return TransientError(
                f"{head}: the server ended the session, its OAuth token expired "
                f"({_server_text(exc)})",
                code="EXPIRED",
                **kw,
            )
        if isinstance(exc, imap_errors.IMAPClientAbortError | OSError):
            # The connection broke mid-command (reset, timeout, server shutdown).
            return TransientError(f"{head}: the connection failed ({exc})", **kw)
        said = _server_text(exc)
        code = response_code(said)
        kw["code"] = code
        message = f"{head} was refused: {said}"
        if code in _TRANSIENT_CODES:
            return TransientError(message, **kw)
        if code in ("NONEXISTENT", "TRYCREATE"):
            return NotFound(message, **kw)
        if code == "ALREADYEXISTS":
            return Conflict(message, **kw)
        if code in ("NOPERM", "OVERQUOTA", "PRIVACYREQUIRED"):
            return PermissionDenied(message, **kw)
        return InvalidRequest(message, **kw)


# -- the session ------------------------------------------------------------------------


class ImapSession:
    """One authenticated IMAP connection (not thread-safe: one thread uses it at a time).

    `ImapSession.open(endpoint, credentials)` connects, upgrades to TLS, logs in and
    enables CONDSTORE/QRESYNC when offered; use it as a context manager (LOGOUT at exit).
    """

    def __init__(
        self,
        client: imapclient.IMAPClient,
        endpoint: ImapEndpoint,
        user: str,
        credentials: Credentials | None = None,
        token: str | None = None,
    ) -> None:
        self._client = client
        self.endpoint = endpoint
        self.user = user
        self._errors = _ErrorMapper(endpoint, user)
        self.caps = ImapCapabilities.parse(client.capabilities())
        self._selected: str | None = None
        self._validity = 0  # UIDVALIDITY of the selected folder
        self._uidnext = 0  # its UIDNEXT when it was selected
        # How to log in again, and the OAuth token this connection logged in with
        # (OAuth2Refreshed): `due` compares it with what the token source would give now.
        self._credentials = credentials
        self._token = token
        self._expired = False  # the server said the token expired (`token_expired`)
        self.logins = 1  # this session's logins: the first and each renewal
        # QRESYNC must be ENABLEd before it changes answers (RFC 7162 3.2.3); it implies
        # CONDSTORE. ENABLE CONDSTORE alone makes every FETCH carry MODSEQ.
        wanted = (
            ["QRESYNC"] if self.caps.qresync else (["CONDSTORE"] if self.caps.condstore else [])
        )
        if wanted:
            with self._mapped("ENABLE " + " ".join(wanted)):
                client.enable(*wanted)

    # -- connect ---------------------------------------------------------------------
    @classmethod
    def open(cls, endpoint: ImapEndpoint, credentials: Credentials) -> ImapSession:
        """Connect, secure and log in; AuthenticationError names the user when refused.

        An OAuth token that `tokens` gives (OAuth2Refreshed) and the server refuses is
        replaced once, on a new connection: a failed XOAUTH2 exchange ends with the server's
        error challenge, and servers differ in what they allow after it."""
        if not isinstance(credentials, OAuth2Refreshed):
            return cls._open(endpoint, credentials)
        try:
            return cls._open(endpoint, credentials)
        except AuthenticationError as exc:
            if exc.fields.get("service") != SERVICE:  # the token endpoint's refusal
                raise
            credentials.tokens.refresh()
            return cls._open(endpoint, credentials)

    def due(self) -> bool:
        """Whether this connection should log in again before its next command: it logged
        in with an OAuth token its source no longer gives (near its expiry, or replaced),
        or the server said that token expired. A server may end a session when its token
        expires (Exchange Online: "Session invalidated - AccessTokenExpired"), so a
        connection never outlives the token it logged in with."""
        creds = self._credentials
        if not isinstance(creds, OAuth2Refreshed) or self._token is None:
            return False
        return self._expired or not creds.tokens.fresh(self._token)

    def renew(self) -> None:
        """Log out, then connect and log in again with a current token (`open`).
        Call it between commands only: never while an APPEND is being sent. The folder
        selected before is selected again, its UIDVALIDITY checked.

        Out before in: the new login never counts as one more connection against the
        server's per-user cap (`ConnectionLimits`). A failed login raises, and leaves this
        session closed and still due: its next command tries the login again first."""
        assert self._credentials is not None
        log.debug("IMAP %s at %s: new login, the token is due", self.user, self.endpoint.url)
        selected, validity = self._selected, self._validity
        _close_quietly(self._client)
        self._selected = None
        fresh = type(self).open(self.endpoint, self._credentials)
        self._client, self.caps, self._token = fresh._client, fresh.caps, fresh._token
        self._validity, self._expired = 0, False
        self.logins += 1
        if selected is not None:
            # The folder selected before, again (EXAMINE: a write selects for itself): a
            # caller that checked its UIDs against it (`examine`) reads them next, and
            # must not read them under another UIDVALIDITY (`_ensure_selected` raises). A
            # folder gone meanwhile stays unselected: the next command may not need it.
            with suppress(NotFound, InvalidRequest, PermissionDenied):
                self._ensure_selected(selected, validity)

    @classmethod
    def _open(cls, endpoint: ImapEndpoint, credentials: Credentials) -> ImapSession:
        errors = _ErrorMapper(endpoint, credentials.user)
        context = tls_context(endpoint.ca_file)
        try:
            client = imapclient.IMAPClient(
                endpoint.host,
                endpoint.port,
                ssl=endpoint.security == "tls",
                ssl_context=context,
                timeout=SocketTimeout(endpoint.connect_timeout_s, endpoint.timeout_s),
            )
        except (OSError, imap_errors.IMAPClientError) as exc:
            raise errors.connect_failure(exc) from exc
        try:
            _no_delay(client)
            _untraced(client)
            if endpoint.security == "starttls":
                _starttls(client, context, errors)
            token = _login(client, credentials, errors)
            client.normalise_times = False  # keep INTERNALDATE's own time zone
            return cls(client, endpoint, credentials.user, credentials, token)
        except BaseException:
            _close_quietly(client)
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def tcp_nodelay(self) -> bool:
        """Whether Nagle's algorithm is off on this connection (it should be)."""
        return bool(self._client.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def close(self) -> None:
        """LOGOUT and close the connection (errors at this point are not worth raising)."""
        _close_quietly(self._client)

    @contextmanager
    def _mapped(self, what: str, folder: str | None = None) -> Iterator[None]:
        try:
            yield
        except (imap_errors.IMAPClientError, OSError) as exc:
            if isinstance(exc, imap_errors.IMAPClientAbortError | OSError):
                self._selected = None  # the connection is gone with its selection
            if token_expired(exc):
                self._expired = True  # the next command logs in again first (`due`)
            raise self._errors.command_failure(exc, what, folder) from exc

    # -- folders ---------------------------------------------------------------------
    def list_folders(self, *, status: bool = True) -> list[ImapFolder]:
        """Every folder of the account, with UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and
        message count when `status`: one LIST-STATUS command where the server offers it,
        else one STATUS per selectable folder."""
        got = self._list_status() if status and self.caps.list_status else None
        if got is not None:
            listed, statuses = got
        else:
            with self._mapped("LIST"):
                listed, statuses = self._client.list_folders(), {}
        folders = [_folder_of(flags, delim, name) for flags, delim, name in listed]
        folders = _with_special_names(folders)
        if status:
            folders = [self._statused(f, statuses) if f.selectable else f for f in folders]
        return folders

    def _list_status(self) -> tuple[list[tuple[Any, Any, Any]], dict[str, dict[bytes, Any]]] | None:
        """LIST with the STATUS of every listed folder in the same command (RFC 5819):
        the folders as imapclient's `list_folders` gives them, and the STATUS items per
        folder name. One round trip instead of one per folder: the source's listing at the
        start of a pass was ~40 ms of STATUS commands before its first export
        (bench/imap_bench.py, 5 folders).

        The selection is left first, as for STATUS (`_status`: Dovecot answers it from the
        selected folder's view). RFC 5819 2: a server "MAY drop the corresponding STATUS
        reply" of a folder it cannot look up; such a folder gets its own STATUS
        (`_statused`). imapclient has no LIST-STATUS; imaplib's `_simple_command` sends
        the arguments as given and keeps the untagged LIST and STATUS answers, which
        imapclient's own parsers read (as its `list_folders` and `folder_status` do).

        None where the server refuses the command though it advertised LIST-STATUS (NO or
        BAD; *unverified* that any does): the session then lists the plain way. STATUS
        answers this cannot read leave their folders to their own STATUS."""
        while self._selected is not None:
            self._unselect()  # without UNSELECT: EXAMINE INBOX, then a failed EXAMINE
        imap = self._client._imap
        asked = f"(STATUS ({' '.join(self._status_items())}))"
        with self._mapped("LIST-STATUS"):
            for stale in ("LIST", "STATUS"):
                imap.untagged_responses.pop(stale, None)
            try:
                typ, data = imap._simple_command("LIST", '""', '"*"', "RETURN", asked)
            except imap_errors.IMAPClientAbortError:
                raise  # the connection is gone: mapped as any command's
            except imap_errors.IMAPClientError as exc:  # BAD: imaplib raises it
                typ, data = "BAD", [str(exc).encode()]
            answers = [d for d in imap.untagged_responses.pop("STATUS", []) if d not in (b"", None)]
            if typ != "OK":
                imap.untagged_responses.pop("LIST", None)
                log.debug(
                    "%s refused LIST-STATUS (%s %s): plain LIST", self.endpoint.url, typ, data
                )
                self.caps = dataclasses.replace(self.caps, list_status=False)
                return None
            listed = self._client._proc_folder_list(imap.untagged_responses.pop("LIST", []))
        return listed, self._statuses(answers)

    def _statuses(self, answers: list[Any]) -> dict[str, dict[bytes, Any]]:
        """LIST-STATUS's STATUS answers by folder name ({} where they cannot be read)."""
        statuses: dict[str, dict[bytes, Any]] = {}
        try:
            parsed = parse_response(answers) if answers else ()
            for name, items in zip(parsed[0::2], parsed[1::2], strict=True):
                pairs = zip(items[0::2], items[1::2], strict=True)
                statuses[self._folder_name(name)] = dict(pairs)
        except (imap_errors.ProtocolError, ValueError, TypeError) as exc:
            log.debug("unreadable LIST-STATUS answers from %s: %s", self.endpoint.url, exc)
            return {}
        return statuses

    def _folder_name(self, name: Any) -> str:
        """A folder name as the server sent it, decoded as imapclient decodes LIST's."""
        if isinstance(name, int):
            return str(name)  # a quoted all-digit name parses as a number (imapclient too)
        if isinstance(name, bytes):
            return decode_utf7(name) if self._client.folder_encode else _text(name)
        return str(name)

    def _statused(self, folder: ImapFolder, statuses: dict[str, dict[bytes, Any]]) -> ImapFolder:
        """`folder` with the STATUS items LIST-STATUS gave, or with its own STATUS."""
        got = statuses.get(folder.name)
        return self._with_status(folder) if got is None else _status_of(folder, got)

    def _status_items(self) -> list[str]:
        items = ["MESSAGES", "UIDNEXT", "UIDVALIDITY"]
        if self.caps.condstore:
            items.append("HIGHESTMODSEQ")
        return items

    def folder(self, name: str) -> ImapFolder:
        """One folder by its full name (NotFound when it does not exist)."""
        with self._mapped("LIST", name):
            listed = self._client.list_folders("", name)
        # LIST takes a pattern: "%" and "*" in a name are wildcards, so keep the exact name.
        exact = [entry for entry in listed if str(entry[2]) == name]
        if not exact:
            raise NotFound(
                f"IMAP folder {name!r} of {self.user} at {self.endpoint.url} does not exist",
                service=SERVICE,
                user=self.user,
                folder=name,
            )
        flags, delim, found = exact[0]
        folder = _folder_of(flags, delim, found)
        return self._with_status(folder) if folder.selectable else folder

    def _with_status(self, folder: ImapFolder) -> ImapFolder:
        return _status_of(folder, self._status(folder.name, self._status_items()))

    def create_folder(self, path: Sequence[str], delimiter: str | None) -> ImapFolder:
        """Create the folder `path` (and its parents); an existing folder is returned as is.

        A part holding the delimiter cannot be named on this server: InvalidRequest."""
        for part in path:
            if not part or (delimiter and delimiter in part):
                raise InvalidRequest(
                    f"IMAP folder {list(path)!r} cannot be created for {self.user} at "
                    f"{self.endpoint.url}: {part!r} is empty or holds the hierarchy "
                    f"delimiter {delimiter!r}",
                    service=SERVICE,
                    user=self.user,
                    next_step="map the folder to another name with a folder mapping rule",
                )
        name = (delimiter or "").join(path) if delimiter else path[0]
        try:
            with self._mapped("CREATE", name):
                self._client.create_folder(name)
        except Conflict:
            pass  # ALREADYEXISTS: another pass (or connection) created it first
        return self.folder(name)

    def delete_folder(self, name: str) -> None:
        """Delete a folder (its messages with it)."""
        if self._selected == name:
            self._unselect()
        with self._mapped("DELETE", name):
            self._client.delete_folder(name)

    # -- selection ---------------------------------------------------------------------
    def _select(self, name: str, *, readonly: bool) -> dict[bytes, Any]:
        """SELECT to write, EXAMINE to read: reading a source never changes it (EXAMINE
        keeps even \\Recent, RFC 3501 6.3.2; bodies are read with BODY.PEEK)."""
        with self._mapped("SELECT" if not readonly else "EXAMINE", name):
            info: dict[bytes, Any] = self._client.select_folder(name, readonly=readonly)
        self._selected = name
        self._validity = int(info[b"UIDVALIDITY"])
        # RFC 3501 6.3.1 requires OK [UIDNEXT]; without it no selection is reused (`validity`).
        self._uidnext = int(info.get(b"UIDNEXT") or 0)
        return info

    def _unselect(self) -> None:
        """Leave the selected folder without expunging (CLOSE would expunge \\Deleted)."""
        if self.caps.unselect:
            with self._mapped("UNSELECT", self._selected):
                self._client.unselect_folder()
            self._selected = None
            return
        if self._selected != "INBOX":
            # RFC 3501 6.3.2: EXAMINE of another folder deselects without expunging. INBOX
            # is then the selected folder (as of this EXAMINE): recorded as such, so that a
            # later STATUS of INBOX leaves it too (`_status`).
            self._select("INBOX", readonly=True)
            return
        # INBOX itself: EXAMINing it again would leave it selected, and Dovecot answers a
        # STATUS of the selected folder from that selection: mail another connection
        # delivered between the EXAMINE and the STATUS went uncounted (1 of 2,
        # tests/integration/test_imap_no_unselect.py). A failed EXAMINE leaves no folder
        # selected (RFC 3501 6.3.1: "if a mailbox is selected and a SELECT command that
        # fails is attempted, no mailbox is selected"; RFC 3691 1 names it as IMAP4's
        # UNSELECT), so it asks for a folder that does not exist.
        self._selected = None
        with suppress(NotFound, InvalidRequest, PermissionDenied):
            self._select(f"coexist-unselect-{os.urandom(6).hex()}", readonly=True)

    def _status(self, name: str, items: Sequence[str], *, what: str = "STATUS") -> dict[bytes, Any]:
        """STATUS of folder `name` as it is now. RFC 3501 6.3.10: STATUS "SHOULD NOT be
        used on the currently selected mailbox"; Dovecot 2.3 answers it from the
        selection's view, which lacks what other connections appended since (until a
        command brings the selection up to date; tests/integration/test_imap_store.py).
        A folder left selected (a read-write SELECT for PERMANENTFLAGS, then MULTIAPPENDs
        over the extra connections) was counted short and a real cutover pass reported a
        false reconciliation difference. So the selection is left first."""
        if self._selected == name:
            self._unselect()
        with self._mapped(what, name):
            got: dict[bytes, Any] = self._client.folder_status(name, items)
        return got

    def _reading(self, name: str) -> None:
        """Have `name` selected to read messages of known UIDs: selected again only if
        another folder is. A command on a selected folder sees its current state (the
        server brings the selection up to date with each command, RFC 3501 5.2). The UIDs'
        validity is the caller's to check: the store `examine`s (a fresh SELECT) on the same
        connection right before it reads refs or headers, as it did before; the EXAMINE
        each of those reads also sent was a round trip of its own (5 per export batch in
        bench/imap_bench.py, now 3). `changes` and `examine` still select every time."""
        if self._selected != name:
            self._select(name, readonly=True)

    def _ensure_selected(self, name: str, uidvalidity: int) -> None:
        """Select `name` again if another command moved the selection away (a generator
        paused between chunks); its UIDs must still be valid."""
        if self._selected == name:
            return
        info = self._select(name, readonly=True)
        if int(info[b"UIDVALIDITY"]) != uidvalidity:
            raise TransientError(
                f"IMAP folder {name!r} of {self.user} at {self.endpoint.url} changed its "
                "UIDVALIDITY while being read: its UIDs are void, the next pass re-reads it",
                service=SERVICE,
                user=self.user,
                folder=name,
            )

    # -- delta -------------------------------------------------------------------------
    def changes(
        self,
        name: str,
        since: Watermark | None,
        *,
        limit: int | None = None,
        fields: Sequence[str] = (),
    ) -> FolderChanges:
        """What changed in folder `name` since `since` (None: everything is new).

        At most `limit` new messages (oldest first); `next.last_uid` then stops at the last
        one returned and `more` work remains (call again with `next`). `fields`: header
        fields read with the Message-ID, in the same FETCH (each new ref's `header`)."""
        info = self._select(name, readonly=True)
        validity = int(info[b"UIDVALIDITY"])
        modseq = _int(info.get(b"HIGHESTMODSEQ"))
        reset = since is not None and since.uidvalidity != validity
        base = None if since is None or reset else since
        last = base.last_uid if base else 0
        new_uids = self._uids_above(name, last)
        more = limit is not None and len(new_uids) > limit
        if limit is not None:
            new_uids = new_uids[:limit]
        refs = tuple(self._refs(name, new_uids, fields=fields))
        flag_changes, vanished = self._old_changes(name, base, modseq)
        top = max(new_uids, default=last)
        # The modseq moves on only once every new message was returned: until then a
        # flag change may belong to a message not yet returned.
        next_modseq = modseq if not more else (base.highestmodseq if base else None)
        return FolderChanges(
            folder=name,
            reset=reset,
            new=refs,
            flag_changes=flag_changes,
            vanished=vanished,
            next=Watermark(validity, top, next_modseq),
            more=more,
        )

    def _uids_above(self, name: str, last: int) -> list[int]:
        with self._mapped("UID SEARCH", name):
            found = self._client.search(["UID", f"{last + 1}:*"])
        # "n:*" includes the highest UID even when it is below n (RFC 3501 6.4.8).
        return sorted(int(u) for u in found if int(u) > last)

    def _old_changes(
        self, name: str, base: Watermark | None, modseq: int | None
    ) -> tuple[tuple[FlagChange, ...] | None, tuple[int, ...] | None]:
        """Flag changes (CONDSTORE) and expunges (QRESYNC) among the UIDs `base` covers."""
        if base is None or base.last_uid == 0:
            return (), ()
        known = base.highestmodseq is not None and modseq is not None and self.caps.condstore
        if not known:
            return None, None
        assert base.highestmodseq is not None
        if modseq == base.highestmodseq:
            return (), (() if self.caps.qresync else None)  # nothing changed at all
        modifiers = [f"CHANGEDSINCE {base.highestmodseq}"]
        if self.caps.qresync:
            modifiers.append("VANISHED")
        with self._mapped("UID FETCH (CHANGEDSINCE)", name):
            self._take_untagged("VANISHED")
            got = self._uid_fetch(f"1:{base.last_uid}", ["UID", "FLAGS"], modifiers)
            vanished_lines = self._take_untagged("VANISHED")
        changes = []
        for uid, data in sorted(got.items()):
            flags, keywords = split_flags(data.get(b"FLAGS", ()))
            changes.append(FlagChange(int(uid), flags, keywords, _modseq(data)))
        if not self.caps.qresync:
            return tuple(changes), None
        return tuple(changes), tuple(sorted(_vanished_uids(vanished_lines)))

    def _uid_fetch(
        self, uids: str, items: Sequence[str], modifiers: Sequence[str] = ()
    ) -> dict[int, dict[bytes, Any]]:
        """UID FETCH of a sequence set ("1:5000,5003"), answers parsed as imapclient does.

        imapclient's own fetch() keeps only the answers of UIDs it was given one by one as
        integers, so it cannot take a range: a folder's 100,000 UIDs would make a 700 KB
        command line. imaplib's public uid() sends the set as given; `parse_fetch` reads the
        answers as imapclient's fetch() would (its parser, by a faster road)."""
        args = ["(" + " ".join(items) + ")"]
        if modifiers:
            args.append("(" + " ".join(modifiers) + ")")
        typ, data = self._client._imap.uid("FETCH", uids, *args)
        if typ != "OK":
            raise imap_errors.IMAPClientError(f"fetch failed: {_text(data[0] or b'')}")
        return parse_fetch([d for d in data if d is not None], self._client.normalise_times)

    def _take_untagged(self, name: str) -> list[bytes]:
        """Remove and return the untagged `name` responses the server sent so far.

        imapclient has no accessor for the untagged responses of a command other than the
        one it parses (VANISHED next to FETCH, COPYUID's OK next to MOVE); imaplib keeps them
        in `untagged_responses`, which imapclient's own select_folder reads the same way."""
        pending: dict[str, list[Any]] = self._client._imap.untagged_responses
        return [x for x in pending.pop(name, []) if isinstance(x, bytes)]

    def examine(self, name: str) -> int:
        """Select folder `name` to read (EXAMINE) and return its UIDVALIDITY: what a caller
        holding UIDs checks them against before it uses them."""
        return int(self._select(name, readonly=True)[b"UIDVALIDITY"])

    def validity(self, name: str, top_uid: int = 0) -> int:
        """`examine`'s UIDVALIDITY without a new EXAMINE when `name` is this connection's
        selected folder: the selection's. A message's UID does not change during the
        session (RFC 3501 2.3.1.1), and Dovecot disconnects a session whose selected folder
        is deleted ("Selected mailbox was deleted, have to disconnect"), so UIDs checked
        against the selection's UIDVALIDITY name what they named when it was selected; a
        message expunged since is left out by the FETCH that reads it. Each export batch
        sent an EXAMINE of the folder its connection already had selected: ~8 ms of the
        source Dovecot's CPU each after a chunk of bodies (it reopens the mailbox), ~10 per
        2,000 small messages (NOTES-ratiocpu.md).

        Only while `top_uid` (the highest UID the caller will read) is below the selection's
        UIDNEXT: a message delivered after the selection is not in its view, and Dovecot's
        UID FETCH of it answers nothing (an export over a connection kept selected since an
        earlier batch missed mail the scan, over another connection, had reported:
        tests/integration/test_imap_store.py), so a newer UID gets a new EXAMINE."""
        if self._selected == name and self._validity and top_uid < self._uidnext:
            return self._validity
        return self.examine(name)

    def permanent_flags(self, name: str) -> frozenset[str] | None:
        """The flags folder `name` stores for good: RFC 3501 7.1's PERMANENTFLAGS of a
        SELECT ("\\*": new keywords may be created); None when the server does not say
        (then "all flags can be changed permanently", RFC 3501 7.1). A read-write SELECT:
        an EXAMINE is read-only, its PERMANENTFLAGS lists none (Dovecot: "()")."""
        got = self._select(name, readonly=False).get(b"PERMANENTFLAGS")
        if got is None:
            return None
        return frozenset(f.decode("utf-8", "replace") if isinstance(f, bytes) else str(f)
                         for f in got)  # fmt: skip

    def headers(
        self,
        name: str,
        uids: Sequence[int],
        fields: Sequence[str],
        *,
        sizes: dict[int, int] | None = None,
    ) -> dict[int, bytes]:
        """Some header fields of messages (`BODY.PEEK[HEADER.FIELDS (...)]`: never marks a
        message read), per UID; an expunged UID is absent. `sizes`: also each message's
        RFC822.SIZE, put there per UID (in the same FETCH)."""
        self._reading(name)
        wanted = f"BODY.PEEK[HEADER.FIELDS ({' '.join(f.upper() for f in fields)})]"
        items = ["UID", wanted] if sizes is None else ["UID", "RFC822.SIZE", wanted]
        out: dict[int, bytes] = {}
        for start in range(0, len(uids), REF_CHUNK):
            chunk = list(uids[start : start + REF_CHUNK])
            with self._mapped("UID FETCH HEADER.FIELDS", name):
                got = self._uid_fetch(sequence_set(chunk), items)
            for uid, data in got.items():
                block = next((v for k, v in data.items() if k.startswith(b"BODY[HEADER")), None)
                out[int(uid)] = bytes(block) if isinstance(block, bytes) else b""
                if sizes is not None and (size := data.get(b"RFC822.SIZE")) is not None:
                    sizes[int(uid)] = int(size)
        return out

    def folder_size(self, name: str) -> int:
        """Bytes of the messages of a folder: STATUS SIZE where the server offers it (RFC
        8438), else the sum of every message's RFC822.SIZE (one UID FETCH)."""
        if b"STATUS=SIZE" in {c.upper() for c in self._client.capabilities()}:
            return int(self._status(name, ["SIZE"], what="STATUS SIZE").get(b"SIZE") or 0)
        self._select(name, readonly=True)
        with self._mapped("UID SEARCH", name):
            if not self._client.search(["ALL"]):
                return 0  # "1:*" of an empty folder is not a valid set on every server
        with self._mapped("UID FETCH RFC822.SIZE", name):
            got_sizes = self._uid_fetch("1:*", ["RFC822.SIZE"])
        return sum(int(d.get(b"RFC822.SIZE", 0)) for d in got_sizes.values())

    def list_uids(self, name: str) -> tuple[int, list[int]]:
        """(UIDVALIDITY, every UID) of a folder: how a caller finds expunged messages when
        the server has no QRESYNC."""
        info = self._select(name, readonly=True)
        return int(info[b"UIDVALIDITY"]), self._uids_above(name, 0)

    def refs(self, name: str, uids: Sequence[int], *, message_ids: bool = True) -> list[MessageRef]:
        """The refs of some messages of a folder (an expunged UID is absent);
        `message_ids=False` leaves the Message-ID out (None): one header less to read and
        parse per message where the caller needs sizes and flags only (an export)."""
        self._reading(name)
        return list(self._refs(name, list(uids), message_ids=message_ids))

    def _refs(
        self, name: str, uids: list[int], *, message_ids: bool = True, fields: Sequence[str] = ()
    ) -> Iterator[MessageRef]:
        items = ["UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE"]
        if message_ids:
            wanted = " ".join(["MESSAGE-ID", *(f.upper() for f in fields)])
            items.append(f"BODY.PEEK[HEADER.FIELDS ({wanted})]")
        if self.caps.condstore:
            items.append("MODSEQ")
        for start in range(0, len(uids), REF_CHUNK):
            chunk = uids[start : start + REF_CHUNK]
            with self._mapped("UID FETCH", name):
                got = self._uid_fetch(sequence_set(chunk), items)
            for uid in chunk:
                if (data := got.get(uid)) is not None:
                    yield _ref_of(uid, data, keep_header=bool(fields))

    # -- bodies ------------------------------------------------------------------------
    def fetch(
        self,
        name: str,
        refs: Sequence[MessageRef],
        *,
        max_count: int = CHUNK_MESSAGES,
        max_bytes: int = CHUNK_BYTES,
    ) -> Iterator[FetchedMessage]:
        """The messages of `refs` (of folder `name`) with their bodies, in `refs` order,
        fetched in chunks of at most `max_count` messages and `max_bytes` bytes: memory
        holds one chunk at a time. A message expunged meanwhile is left out."""
        if self._selected != name:  # chunks of one folder in a row need one SELECT
            self._select(name, readonly=True)
        validity = self._validity
        items = ["BODY.PEEK[]", "FLAGS", "INTERNALDATE"]
        for chunk in chunks_by_size(
            refs, lambda r: r.size, max_count=max_count, max_bytes=max_bytes
        ):
            self._ensure_selected(name, validity)
            uids = [r.uid for r in chunk]
            with self._mapped("UID FETCH BODY", name):
                got = self._uid_fetch(sequence_set(uids), items)
            for uid in uids:
                if (data := got.pop(uid, None)) is not None:
                    yield _fetched_of(uid, data)

    # -- writes ------------------------------------------------------------------------
    def append(
        self,
        name: str,
        messages: Sequence[NewMessage],
        *,
        max_count: int = CHUNK_MESSAGES,
        max_bytes: int = CHUNK_BYTES,
    ) -> list[int | None]:
        """APPEND `messages` to folder `name` with their flags and INTERNALDATE; their new
        UIDs in order (None where the server has no UIDPLUS to say). Chunks go as one
        MULTIAPPEND command each where the server offers it."""
        ids = self.append_ids(name, messages, max_count=max_count, max_bytes=max_bytes)
        return [i[1] if i is not None else None for i in ids]

    def append_ids(
        self,
        name: str,
        messages: Sequence[NewMessage],
        *,
        max_count: int = CHUNK_MESSAGES,
        max_bytes: int = CHUNK_BYTES,
    ) -> list[tuple[int, int] | None]:
        """`append`, each new message as (UIDVALIDITY, UID) as the server's APPENDUID says
        (RFC 4315 3): the caller needs no EXAMINE to learn the folder's UIDVALIDITY (one
        round trip less per append); None where the server has no UIDPLUS to say."""
        out: list[tuple[int, int] | None] = []
        for chunk in chunks_by_size(
            messages, lambda m: len(m.raw), max_count=max_count, max_bytes=max_bytes
        ):
            if self.caps.literal_plus and (self.caps.multiappend or len(chunk) == 1):
                out.extend(self._append_streamed(name, chunk))
                continue
            if self.caps.multiappend and len(chunk) > 1:
                out.extend(self._multiappend(name, chunk))
                continue
            for message in chunk:
                with self._mapped("APPEND", name):
                    said = self._client.append(
                        name, message.raw, _flag_list(message), message.internaldate
                    )
                validity, uids = _appended(said)
                out.append((validity, uids[0]) if validity is not None and uids else None)
        return out

    def _append_streamed(self, name: str, chunk: list[NewMessage]) -> list[tuple[int, int] | None]:
        """One APPEND (MULTIAPPEND for several, RFC 3502) whose messages go to the socket
        as they are, each behind a non-synchronizing literal (LITERAL+, RFC 7888).

        imapclient's append and multiappend copy each message twice on the way (into a
        `_literal`, then joined to its `{n+}` prefix), so a 25 MB message briefly held 75 MB.
        This sends the prefix, then the caller's bytes object (`sendall` reads it in place):
        no copy. It reaches into imaplib as imapclient's own `_raw_command` does (a tag from
        `_new_tag`, `send`, `_command_complete`): imapclient has no public way to do it."""
        imap = self._client._imap
        folder = bytes(self._client._normalise_folder(name))
        with self._mapped("APPEND" if len(chunk) == 1 else "MULTIAPPEND", name):
            tag = imap._new_tag()
            out = _Coalesced(imap.send)
            out.add(tag + b" APPEND " + folder)
            for message in chunk:
                head = b" (" + " ".join(_flag_list(message)).encode("ascii") + b")"
                if message.internaldate is not None:
                    stamp = datetime_to_INTERNALDATE(message.internaldate)
                    head += b' "' + stamp.encode("ascii") + b'"'
                out.add(head + b" {" + str(len(message.raw)).encode("ascii") + b"+}\r\n")
                out.add(message.raw)
            out.add(b"\r\n")
            out.flush()
            typ, data = imap._command_complete("APPEND", tag)
            if typ != "OK":
                said = b" ".join(d for d in data if isinstance(d, bytes)).decode("utf-8", "replace")
                raise imap_errors.IMAPClientError(f"append failed: {said}")
        validity, uids = _appended(data[0] if data else None)
        if validity is None or len(uids) != len(chunk):
            return [None] * len(chunk)
        return [(validity, uid) for uid in uids]

    def _multiappend(self, name: str, chunk: list[NewMessage]) -> list[tuple[int, int] | None]:
        entries: list[dict[str, Any]] = []
        for message in chunk:
            entry: dict[str, Any] = {"msg": message.raw, "flags": _flag_list(message)}
            if message.internaldate is not None:
                entry["date"] = message.internaldate
            entries.append(entry)
        with self._mapped("MULTIAPPEND", name):
            typ, data = self._client.multiappend(name, entries)
            if typ != "OK":
                # imapclient returns MULTIAPPEND's status instead of raising on NO.
                said = b" ".join(d for d in data if isinstance(d, bytes)).decode("utf-8", "replace")
                raise imap_errors.IMAPClientError(f"append failed: {said}")
        validity, uids = _appended(data[0] if data else None)
        if validity is None or len(uids) != len(chunk):
            return [None] * len(chunk)
        return [(validity, uid) for uid in uids]

    def set_flags(
        self, name: str, uid: int, flags: frozenset[str], keywords: frozenset[str]
    ) -> None:
        """Replace one message's flags and keywords."""
        self._select(name, readonly=False)
        wanted = [f for f in sorted(flags | keywords) if f != "\\Recent"]
        with self._mapped("UID STORE FLAGS", name):
            self._client.set_flags(str(uid), wanted, silent=True)

    def move(self, name: str, uids: Sequence[int], destination: str) -> dict[int, int]:
        """Move messages to another folder; old UID -> new UID where the server says
        (COPYUID, RFC 4315), MOVE (RFC 6851) where offered, else COPY + expunge."""
        if not uids:
            return {}
        self._select(name, readonly=False)
        where = f"{name} -> {destination}"
        if self.caps.move:
            with self._mapped("UID MOVE", where):
                self._take_untagged("OK")
                said = self._client.move(sequence_set(uids), destination)
                untagged = self._take_untagged("OK")
            return _copied_uids([*untagged, said])
        with self._mapped("UID COPY", where):
            said = self._client.copy(sequence_set(uids), destination)
        self._expunge(name, uids)
        return _copied_uids([said])

    def delete(self, name: str, uids: Sequence[int]) -> None:
        """Delete messages: flag them \\Deleted and expunge exactly those (UID EXPUNGE,
        RFC 4315: a plain EXPUNGE would also remove what others flagged \\Deleted)."""
        if not uids:
            return
        self._select(name, readonly=False)
        self._expunge(name, uids)

    def _expunge(self, name: str, uids: Sequence[int]) -> None:
        with self._mapped("UID STORE +FLAGS \\Deleted", name):
            self._client.add_flags(sequence_set(uids), [imapclient.DELETED], silent=True)
        if not self.caps.uidplus:
            log.warning(
                "IMAP server %s has no UIDPLUS: %d message(s) of %s in %r stay flagged "
                "\\Deleted until the mailbox's owner expunges them",
                self.endpoint.url,
                len(uids),
                self.user,
                name,
            )
            return
        with self._mapped("UID EXPUNGE", name):
            self._client.uid_expunge(sequence_set(uids))


# -- connection helpers -----------------------------------------------------------------


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """A verifying TLS client context: the system's CAs, or the bundle `ca_file`."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _no_delay(client: imapclient.IMAPClient) -> None:
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _untraced(client: imapclient.IMAPClient) -> None:
    """Turn imaplib's protocol trace off.

    IMAPClient sets imaplib's `debug` to 5 on every connection (imapclient.py, "Small hack
    to make imaplib log everything to its own logger"), so imaplib formats the repr() of
    every untagged response for a debug() call the logger then drops: each FETCHed message
    body (a 100 KB body cost ~0.35 ms of CPU twice, once as it arrives and once as the
    whole answer is handed over) — a third of the client's CPU in bench/imap_bench.py. The
    trace would also put mail content in logs whenever debug logging is on."""
    client._imap.debug = 0


def _starttls(client: imapclient.IMAPClient, context: ssl.SSLContext, errors: _ErrorMapper) -> None:
    try:
        client.starttls(context)
    except imap_errors.CapabilityError as exc:
        ep = errors.ep
        raise TLSError(
            f"IMAP server {ep.url} does not offer STARTTLS; coexist never logs in without TLS",
            next_step=f'use the server\'s TLS port (usually 993) with security = "tls" in '
            f"[{ep.side}]",
            service=SERVICE,
            endpoint=ep.url,
            cause="no STARTTLS",
        ) from exc
    except (OSError, imap_errors.IMAPClientError) as exc:
        raise errors.connect_failure(exc) from exc


def _login(client: imapclient.IMAPClient, creds: Credentials, errors: _ErrorMapper) -> str | None:
    """Log in; the OAuth token used when `creds` get theirs from a token source."""
    token = None
    try:
        if isinstance(creds, MasterPassword):
            client.login(f"{creds.user}{creds.separator}{creds.master}", creds.password)
        elif isinstance(creds, OAuth2Token):
            client.oauth2_login(creds.user, creds.token)
        elif isinstance(creds, OAuth2Refreshed):
            token = creds.tokens.token()
            client.oauth2_login(creds.user, token)
        elif creds.mechanism == "plain":
            client.plain_login(creds.user, creds.password)
        else:
            client.login(creds.user, creds.password)
    except OSError as exc:
        raise errors.connect_failure(exc) from exc
    except imap_errors.IMAPClientError as exc:
        # imapclient turns every failure of a login into LoginError, a dropped connection
        # too: the abort it wraps is the context.
        if isinstance(exc.__context__, imap_errors.IMAPClientAbortError | OSError):
            raise errors.connect_failure(exc.__context__) from exc
        raise errors.login_failure(exc, creds) from exc
    return token


def _close_quietly(client: imapclient.IMAPClient) -> None:
    try:
        client.logout()
    except (OSError, imap_errors.IMAPClientError):
        try:
            client.shutdown()
        except (OSError, imap_errors.IMAPClientError) as exc:
            log.debug("IMAP connection did not close cleanly: %s", exc)


# -- response parsing -------------------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _int(value: Any) -> int | None:
    return int(value) if value is not None else None


def _modseq(data: dict[bytes, Any]) -> int | None:
    value = data.get(b"MODSEQ")
    if isinstance(value, tuple | list):
        value = value[0] if value else None
    return _int(value)


def _folder_of(
    flags: Iterable[bytes | str], delimiter: bytes | str | None, name: Any
) -> ImapFolder:
    attrs = frozenset(_text(f) for f in flags)
    folded = {a.casefold() for a in attrs}
    delim = _text(delimiter) if delimiter else None
    name = str(name) if not isinstance(name, bytes) else _text(name)
    return ImapFolder(
        name=name,
        delimiter=delim,
        path=tuple(name.split(delim)) if delim else (name,),
        special_use="inbox" if name.upper() == "INBOX" else special_use_of(attrs),
        attributes=attrs,
        selectable=not ({"\\noselect", "\\nonexistent"} & folded),
    )


def _with_special_names(folders: list[ImapFolder]) -> list[ImapFolder]:
    """Without RFC 6154 attributes, give the usual names their well-known role (top level,
    or directly under INBOX as Courier and Cyrus place them: "INBOX.Sent")."""
    if any(f.special_use not in (None, "inbox") for f in folders):
        return folders
    taken: set[str] = set()
    out = []
    for folder in folders:
        top = len(folder.path) == 1 or (len(folder.path) == 2 and folder.path[0].upper() == "INBOX")
        role = SPECIAL_NAMES.get(folder.path[-1].casefold()) if top else None
        if folder.special_use is None and role is not None and role not in taken:
            taken.add(role)
            folder = _replace(folder, special_use=role)
        out.append(folder)
    return out


def _status_of(folder: ImapFolder, got: dict[bytes, Any]) -> ImapFolder:
    return _replace(
        folder,
        uidvalidity=_int(got.get(b"UIDVALIDITY")),
        uidnext=_int(got.get(b"UIDNEXT")),
        highestmodseq=_int(got.get(b"HIGHESTMODSEQ")),
        messages=_int(got.get(b"MESSAGES")),
    )


def _replace(folder: ImapFolder, **changes: Any) -> ImapFolder:
    return dataclasses.replace(folder, **changes)


def _ref_of(uid: int, data: dict[bytes, Any], *, keep_header: bool = False) -> MessageRef:
    flags, keywords = split_flags(data.get(b"FLAGS", ()))
    header = next((v for k, v in data.items() if k.startswith(b"BODY[HEADER.FIELDS")), None)
    block = bytes(header) if isinstance(header, bytes) else None
    return MessageRef(
        uid=uid,
        flags=flags,
        keywords=keywords,
        internaldate=data[b"INTERNALDATE"],
        size=int(data.get(b"RFC822.SIZE", 0)),
        message_id=parse_message_id(block),
        modseq=_modseq(data),
        header=(block or b"") if keep_header else None,
    )


def _fetched_of(uid: int, data: dict[bytes, Any]) -> FetchedMessage:
    flags, keywords = split_flags(data.get(b"FLAGS", ()))
    raw = data.get(b"BODY[]") or b""
    return FetchedMessage(uid, bytes(raw), flags, keywords, data[b"INTERNALDATE"])


# `_Coalesced` joins a MULTIAPPEND's small pieces into sends of about this size: the command's
# prefix, each message's `{n+}` head and each message went as a send of its own, i.e. two
# TLS records and socket writes per small message. Joined, the client's CPU for appending
# 2,000 x 4 KB fell from ~0.057 to ~0.036 s (the target Dovecot's, TLS proxy included, did
# not move measurably: NOTES-ratiocpu.md). A piece of this size or more (a message of
# 64 KB or more) goes from the caller's bytes as before: no copy of a large message.
SEND_COALESCE = 64 * 1024


class _Coalesced:
    """Pieces of one command sent in joined runs of about SEND_COALESCE bytes; a piece of
    that size or more goes alone, uncopied, after what is pending."""

    def __init__(self, send: Callable[[bytes], object]) -> None:
        self._send = send
        self._pending: list[bytes] = []
        self._size = 0

    def add(self, piece: bytes) -> None:
        if len(piece) >= SEND_COALESCE:
            self.flush()
            self._send(piece)
            return
        self._pending.append(piece)
        self._size += len(piece)
        if self._size >= SEND_COALESCE:
            self.flush()

    def flush(self) -> None:
        if self._size:
            self._send(b"".join(self._pending))
        self._pending, self._size = [], 0


def _flag_list(message: NewMessage) -> list[str]:
    return [f for f in sorted(message.flags | message.keywords) if f != "\\Recent"]


def _vanished_uids(lines: Iterable[bytes]) -> list[int]:
    """UIDs of `* VANISHED (EARLIER) 3,5:7` answers (RFC 7162 3.2.10)."""
    out: list[int] = []
    for line in lines:
        text = line.decode("ascii", "replace").strip()
        text = re.sub(r"^\(EARLIER\)\s*", "", text, flags=re.I)
        if text:
            out.extend(parse_sequence_set(text))
    return out


# -- bounded connections, for asyncio callers ---------------------------------------------


@dataclass(frozen=True)
class ConnectionLimits:
    """How many connections coexist opens at once: to one server, and to one mailbox.

    Servers cap connections per account: Gmail 15 per account (Google Workspace Admin Help,
    "IMAP and POP limits"), Dovecot 10 per user and client IP by default
    (mail_max_userip_connections); a login over the cap is refused ([LIMIT] / [UNAVAILABLE])."""

    per_server: int = 20
    per_mailbox: int = 4


class AsyncImapSession:
    """An `ImapSession` for asyncio code: each call runs in a worker thread, one at a time
    (an IMAP connection carries one command after another). Between two calls, the safe
    point (no command, no APPEND half sent), a session whose OAuth token is due logs in
    again with a new one (`ImapSession.due`, `renew`)."""

    def __init__(self, session: ImapSession) -> None:
        self.session = session
        self._lock = asyncio.Lock()

    async def run(self, call: Callable[[ImapSession], T]) -> T:
        """`call(session)` in a worker thread, after the session's previous call ended."""
        async with self._lock:
            work = asyncio.ensure_future(_in_thread(_renewed, call, self.session))
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                # A thread cannot be stopped: hold the session until its command ended, so
                # the next call never interleaves with it on the wire.
                with suppress(Exception):
                    await work
                raise

    async def fetch(
        self,
        name: str,
        refs: Sequence[MessageRef],
        *,
        max_count: int = CHUNK_MESSAGES,
        max_bytes: int = CHUNK_BYTES,
    ) -> AsyncGenerator[FetchedMessage, None]:
        """`ImapSession.fetch` as an async stream that reads the next chunk from the server
        while the caller handles the current one: at most two chunks in memory."""
        chunks = list(
            chunks_by_size(refs, lambda r: r.size, max_count=max_count, max_bytes=max_bytes)
        )

        def read(chunk: list[MessageRef]) -> Callable[[ImapSession], list[FetchedMessage]]:
            return lambda s: list(s.fetch(name, chunk, max_count=max_count, max_bytes=max_bytes))

        ahead: asyncio.Future[list[FetchedMessage]] | None = None
        try:
            for i, chunk in enumerate(chunks):
                current = await (ahead if ahead is not None else self.run(read(chunk)))
                ahead = None
                if i + 1 < len(chunks):
                    ahead = asyncio.ensure_future(self.run(read(chunks[i + 1])))
                for message in current:
                    yield message
        finally:
            if ahead is not None:
                ahead.cancel()
                with suppress(asyncio.CancelledError, RemoteError):
                    await ahead


# Each IMAP call blocks a worker thread (one per connection at a time). asyncio's default
# executor has min(32, CPUs + 4) threads, 6 on a 2-core host: fewer than one mailbox pass
# keeps busy (4 append connections, 3 reading ones, logins opened ahead of use), so the
# 7th call waited for a thread while its connection sat idle. The adapter's own pool
# makes threads as calls need them, up to this many.
IMAP_THREADS = 64


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(IMAP_THREADS, thread_name_prefix="imap")


async def _in_thread(func: Callable[..., T], *args: Any) -> T:
    """`func(*args)` in one of the adapter's worker threads (`asyncio.to_thread` with its
    own pool: the context variables go along)."""
    context = contextvars.copy_context()
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_pool(), functools.partial(context.run, func, *args))


def _renewed(call: Callable[[ImapSession], T], session: ImapSession) -> T:
    """`call(session)`, after a new login if the session's token is due."""
    if session.due():
        session.renew()
    return call(session)


# glibc's mallopt parameter M_MMAP_THRESHOLD (malloc.h) and the value coexist sets.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1024 * 1024


@functools.cache
def bound_heap() -> bool:
    """Have glibc give every buffer of 1 MB or more its own mapping, returned to the system
    when freed; whether it could (False off glibc: nothing to do there).

    Messages travel as bytes objects made and freed in worker threads (a FETCH chunk, an
    APPEND). glibc raises its mmap threshold to the size of each mmapped block freed (up
    to 32 MB: mallopt(3), "M_MMAP_THRESHOLD"), so after the first large message the next
    ones come from per-thread arenas, which keep their freed memory: moving a 2 GB mailbox
    peaked at 345 MB resident, 196 MB with the threshold fixed (bench/imap_bench.py).
    Setting the threshold turns the dynamic adjustment off."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


class ImapConnections:
    """The connections of one IMAP server, bounded by `ConnectionLimits`: `session(creds)`
    waits for a free slot (server-wide and for that mailbox), then connects and logs in."""

    def __init__(self, endpoint: ImapEndpoint, limits: ConnectionLimits | None = None) -> None:
        bound_heap()
        freeze_startup_objects()
        self.endpoint = endpoint
        self.limits = limits or ConnectionLimits()
        self._server = asyncio.Semaphore(self.limits.per_server)
        self._mailboxes: dict[str, asyncio.Semaphore] = {}

    def _mailbox(self, user: str) -> asyncio.Semaphore:
        key = user.casefold()
        if key not in self._mailboxes:
            self._mailboxes[key] = asyncio.Semaphore(self.limits.per_mailbox)
        return self._mailboxes[key]

    def has_room(self, user: str) -> bool:
        """Whether a session for `user` would get its slots now, without waiting (a caller
        that wants an *extra* connection only if one is free asks this first)."""
        return not self._server.locked() and not self._mailbox(user).locked()

    @asynccontextmanager
    async def session(self, credentials: Credentials) -> AsyncIterator[AsyncImapSession]:
        """An open session for `credentials.user`, closed (LOGOUT) on exit."""
        async with self._mailbox(credentials.user), self._server:
            session = await _in_thread(ImapSession.open, self.endpoint, credentials)
            try:
                yield AsyncImapSession(session)
            finally:
                await _in_thread(session.close)
