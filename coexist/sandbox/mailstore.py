"""The sandbox mailstore: every mailbox's folders and items, in one SQLite file (`mail.db`).

Messages never live in `state.json` or in memory as a whole mailbox: one row per
item (folder, Graph ids, the properties Graph lists and filters on) with the
RFC 5322 MIME as a blob, so a mailbox of any size is read in bounded chunks
(`iter_messages`) and a single item's MIME can be streamed (`open_mime`).
Mailboxes are keyed by (tenant key, user object id); the well-known folders are
created the first time a mailbox is touched.

Design notes for the mailbox-migration work that builds on this (issue 4):
folder rows already carry a parent id (child folders are plain rows), items
carry a monotonically increasing `seq` (a delta cursor), and `deliver()` takes
raw MIME, so an import path is `deliver(..., folder=<id>, received=..., is_read=...)`.

Ids imitate Exchange's Graph ids: URL-safe base64 of an entry-id-like byte
string (`AAMkA...`), opaque to clients (learn.microsoft.com/graph/outlook-immutable-id
describes them only as opaque strings).
"""

from __future__ import annotations

import base64
import datetime as dt
import email
import email.parser
import email.policy
import hashlib
import json
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import getaddresses, parsedate_to_datetime
from pathlib import Path
from typing import Any

from coexist.files import create_private, private_dir, write_private

from .locales import DEFAULT_FOLDER_NAMES, names_for

MAIL_DB = "mail.db"

# Graph's well-known folder names and the display names Exchange gives them (English
# locale) (learn.microsoft.com/graph/api/resources/mailfolder, "Well-known folder names").
MAIL_WELL_KNOWN = ("inbox", "sentitems", "drafts", "deleteditems", "junkemail", "archive", "outbox")
WELL_KNOWN: dict[str, str] = {wk: DEFAULT_FOLDER_NAMES["en"][wk] for wk in MAIL_WELL_KNOWN}
# The hidden parent of the folders above ("Top of Information Store").
ROOT = "msgfolderroot"
ROOT_DISPLAY = "Top of Information Store"

# Columns a listing reads (everything but the MIME blob).
_COLUMNS = (
    "seq, id, tenant, mailbox, folder_id, internet_message_id, conversation_id, subject, "
    "from_json, sender_json, to_json, cc_json, bcc_json, reply_to_json, received, sent, created, "
    "modified, is_read, is_draft, importance, has_attachments, size, body_preview, body_type, "
    "change_key, categories_json, flag_json, sensitivity, props_json, mseq"
)
# Sort keys a listing may use (column names; never user text in SQL).
ORDER_COLUMNS = {"received", "sent", "created", "modified", "subject"}

# Columns added after the first schema (issue 4): a new mail.db declares them before `mime`;
# `_migrate` adds them (after it) to an older one.
_ADDED_COLUMNS = {
    "flag_json": 'TEXT NOT NULL DEFAULT \'{"flagStatus": "notFlagged"}\'',
    "sensitivity": "TEXT NOT NULL DEFAULT 'normal'",
    "props_json": "TEXT NOT NULL DEFAULT '{}'",
    "mseq": "INTEGER NOT NULL DEFAULT 0",
    "item_class": "TEXT NOT NULL DEFAULT 'IPM.Note'",
}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS folders (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    mailbox TEXT NOT NULL,
    well_known TEXT,
    display_name TEXT NOT NULL,
    parent_id TEXT,
    is_hidden INTEGER NOT NULL DEFAULT 0,
    created TEXT NOT NULL,
    UNIQUE (tenant, mailbox, well_known)
);
CREATE INDEX IF NOT EXISTS folders_mailbox ON folders (tenant, mailbox, parent_id);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    mailbox TEXT NOT NULL,
    folder_id TEXT NOT NULL,
    internet_message_id TEXT,
    conversation_id TEXT,
    subject TEXT NOT NULL DEFAULT '',
    from_json TEXT,
    sender_json TEXT,
    to_json TEXT NOT NULL DEFAULT '[]',
    cc_json TEXT NOT NULL DEFAULT '[]',
    bcc_json TEXT NOT NULL DEFAULT '[]',
    reply_to_json TEXT NOT NULL DEFAULT '[]',
    received TEXT NOT NULL,
    sent TEXT,
    created TEXT NOT NULL,
    modified TEXT NOT NULL,
    is_read INTEGER NOT NULL DEFAULT 0,
    is_draft INTEGER NOT NULL DEFAULT 0,
    importance TEXT NOT NULL DEFAULT 'normal',
    has_attachments INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL DEFAULT 0,
    body_preview TEXT NOT NULL DEFAULT '',
    body_type TEXT NOT NULL DEFAULT 'text',
    change_key TEXT NOT NULL,
    categories_json TEXT NOT NULL DEFAULT '[]',
    {added_columns}
    -- Last: SQLite reads a row's columns in order, so reaching a column stored after a
    -- large blob walks the blob's whole overflow chain (sqlite.org/fileformat2.html, 1.6).
    mime BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_folder ON messages (tenant, mailbox, folder_id, received);
CREATE INDEX IF NOT EXISTS messages_mailbox ON messages (tenant, mailbox, received);
CREATE INDEX IF NOT EXISTS messages_imid ON messages (tenant, mailbox, internet_message_id);
-- Deletions and moves out of a folder, for delta: a removed id stays reportable here.
CREATE TABLE IF NOT EXISTS tombstones (
    cseq INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    mailbox TEXT NOT NULL,
    folder_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT 'deleted'
);
CREATE INDEX IF NOT EXISTS tombstones_folder ON tombstones (tenant, mailbox, folder_id, cseq);
-- Large-attachment upload sessions; received bytes are spooled to a file, not held in memory.
CREATE TABLE IF NOT EXISTS upload_sessions (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    mailbox TEXT NOT NULL,
    item_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    token TEXT NOT NULL,
    name TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    is_inline INTEGER NOT NULL DEFAULT 0,
    content_id TEXT,
    received INTEGER NOT NULL DEFAULT 0,
    expires TEXT NOT NULL
);
""".replace(
    "{added_columns}", "\n    ".join(f"{name} {decl}," for name, decl in _ADDED_COLUMNS.items())
)
_INDEXES_AFTER_MIGRATION = (
    "CREATE INDEX IF NOT EXISTS messages_delta ON messages (tenant, mailbox, folder_id, mseq)"
)
NOT_FLAGGED: dict[str, Any] = {"flagStatus": "notFlagged"}
HEAD_READ = 256 * 1024  # bytes read to find a message's header block
# Columns the store assigns to every stored message, never taken from an imported stream.
STORE_OWNED = frozenset(
    {"seq", "id", "tenant", "mailbox", "folder_id", "conversation_id", "change_key", "mime", "mseq"}
)
SENSITIVITIES = ("normal", "personal", "private", "confidential")

# Graph's bodyPreview: "The first 255 characters of the message body" (resources/message).
PREVIEW_CHARS = 255


def iso(t: dt.datetime) -> str:
    """Graph's DateTimeOffset form for mail (UTC, whole seconds, 'Z')."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


ID_PREFIX = b"\x00\x03\x24\x00"


def _entry_id(kind: bytes, mailbox: str) -> str:
    """An Exchange-looking id: `AAMkA` + mailbox guid + kind marker + random bytes, base64url."""
    try:
        mbx = uuid.UUID(mailbox).bytes
    except ValueError:
        mbx = hashlib.md5(mailbox.encode()).digest()  # an id, not security
    raw = ID_PREFIX + mbx + kind + uuid.uuid4().bytes
    return base64.urlsafe_b64encode(raw).decode()


def system_folder_id(mailbox: str, name: str) -> str:
    """The fixed id of one of a mailbox's non-IPM system folders ("Finder", "Recoverable
    Items"...): the same family as every other id, derived rather than stored."""
    raw = ID_PREFIX + hashlib.md5(f"{mailbox}\x00{name}".encode()).digest() + b"\x09"
    return base64.urlsafe_b64encode(raw + hashlib.md5(name.encode()).digest()).decode()


FINDER = "Finder"  # the non-IPM parent of search folders (mailFolder well-known `searchfolders`)


def looks_like_id(value: str) -> bool:
    """Whether `value` is shaped like an id this store issues (else Graph's 'Id is malformed')."""
    try:
        raw = base64.urlsafe_b64decode(value.encode())
    except (ValueError, TypeError):
        return False
    return len(raw) >= 24 and raw.startswith(b"\x00\x03\x24\x00")


@dataclass(frozen=True)
class Folder:
    id: str
    tenant: str
    mailbox: str
    well_known: str | None
    display_name: str
    parent_id: str | None
    is_hidden: bool
    total: int = 0
    unread: int = 0
    size: int = 0
    children: int = 0
    # A search folder's definition (resources/mailsearchfolder: sourceFolderIds,
    # includeNestedFolders, filterQuery); None for a folder that holds its own items.
    search: dict[str, Any] | None = None


@dataclass(frozen=True)
class Recipient:
    name: str
    address: str

    def to_graph(self) -> dict[str, Any]:
        return {"emailAddress": {"name": self.name, "address": self.address}}


@dataclass(frozen=True)
class Item:
    """One message row without its MIME (what listings and filters need)."""

    seq: int
    id: str
    tenant: str
    mailbox: str
    folder_id: str
    internet_message_id: str | None
    conversation_id: str | None
    subject: str
    from_: Recipient | None
    sender: Recipient | None
    to: list[Recipient]
    cc: list[Recipient]
    bcc: list[Recipient]
    reply_to: list[Recipient]
    received: str
    sent: str | None
    created: str
    modified: str
    is_read: bool
    is_draft: bool
    importance: str
    has_attachments: bool
    size: int
    body_preview: str
    body_type: str
    change_key: str
    categories: list[str]
    # Added for issue 4 (defaults keep older constructors working).
    flag: dict[str, Any] = field(default_factory=lambda: dict(NOT_FLAGGED))
    sensitivity: str = "normal"
    properties: dict[str, str] = field(default_factory=dict)  # extended props, "Type 0xNNNN"
    mseq: int = 0  # change sequence: bumped by every write, the delta cursor


@dataclass(frozen=True)
class Tombstone:
    """An item that left a folder (deleted, or moved away under its old id)."""

    cseq: int
    folder_id: str
    item_id: str
    reason: str


@dataclass(frozen=True)
class Attachment:
    """A MIME part Graph reports as a fileAttachment."""

    index: int
    name: str
    content_type: str
    is_inline: bool
    content_id: str | None
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class UploadSession:
    id: str
    tenant: str
    mailbox: str
    item_id: str
    owner: str  # client id of the app that created it (its upload budget pays)
    token: str
    name: str
    content_type: str
    size: int
    is_inline: bool
    content_id: str | None
    received: int
    expires: str


class FolderExists(ValueError):
    """A sibling folder already has this display name (Exchange compares case-insensitively)."""


def _recipients(value: str | None) -> list[Recipient]:
    return [Recipient(r["name"], r["address"]) for r in json.loads(value or "[]")]


def _one(value: str | None) -> Recipient | None:
    found = _recipients(value) if value else []
    return found[0] if found else None


def _item(row: sqlite3.Row) -> Item:
    return Item(
        seq=row["seq"],
        id=row["id"],
        tenant=row["tenant"],
        mailbox=row["mailbox"],
        folder_id=row["folder_id"],
        internet_message_id=row["internet_message_id"],
        conversation_id=row["conversation_id"],
        subject=row["subject"],
        from_=_one(row["from_json"]),
        sender=_one(row["sender_json"]),
        to=_recipients(row["to_json"]),
        cc=_recipients(row["cc_json"]),
        bcc=_recipients(row["bcc_json"]),
        reply_to=_recipients(row["reply_to_json"]),
        received=row["received"],
        sent=row["sent"],
        created=row["created"],
        modified=row["modified"],
        is_read=bool(row["is_read"]),
        is_draft=bool(row["is_draft"]),
        importance=row["importance"],
        has_attachments=bool(row["has_attachments"]),
        size=row["size"],
        body_preview=row["body_preview"],
        body_type=row["body_type"],
        change_key=row["change_key"],
        categories=json.loads(row["categories_json"]),
        flag=json.loads(row["flag_json"]),
        sensitivity=row["sensitivity"],
        properties=json.loads(row["props_json"]),
        mseq=row["mseq"],
    )


# -- MIME -> properties ---------------------------------------------------------------------------


def _addresses(msg: EmailMessage, header: str) -> list[Recipient]:
    values = msg.get_all(header) or []
    return [Recipient(name or addr, addr) for name, addr in getaddresses([str(v) for v in values])]


_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw|wg)\s*:\s*)+", re.IGNORECASE)


def conversation_id(mailbox: str, subject: str) -> str:
    """Exchange threads by conversation index; the sandbox by normalized subject (per mailbox)."""
    topic = _PREFIX.sub("", subject).strip().lower()
    digest = hashlib.sha256(f"{mailbox}\n{topic}".encode()).digest()[:16]
    return base64.urlsafe_b64encode(b"\x00\x03\x24\x00\x10" + digest).decode()


def body_of(msg: EmailMessage) -> tuple[str, str]:
    """(contentType 'text'|'html', content) of the message's main body."""
    part = msg.get_body(preferencelist=("html", "plain"))
    if part is None:
        return "text", ""
    content = part.get_content()
    text = content if isinstance(content, str) else content.decode("utf-8", "replace")
    # MIME bodies end with a line break the sender did not type (the email package adds it).
    if text.endswith("\n"):
        text = text[:-2] if text.endswith("\r\n") else text[:-1]
    return ("html" if part.get_content_subtype() == "html" else "text"), text


def preview(body_type: str, content: str) -> str:
    # Only the head of a body can reach the 255-character preview; a large body is not
    # scanned whole (markup can be long, so HTML gets a wider head).
    content = content[: (256 if body_type == "html" else 16) * 1024]
    text = re.sub(r"<[^>]*>", " ", content) if body_type == "html" else content
    return re.sub(r"\s+", " ", text).strip()[:PREVIEW_CHARS]


def _has_attachments(msg: EmailMessage) -> bool:
    return any(True for _ in msg.iter_attachments()) if msg.is_multipart() else False


# MS-OXCMAIL 2.2.3.2.5: how a MIME reader maps importance headers to PidTagImportance. An
# Importance header wins ("MIME readers SHOULD use its value in preference to any of the
# others"); Priority, X-Priority and X-MSMail-Priority are read in the order the spec lists
# them (*unverified*: the spec gives no order among those three). Urgent "SHOULD be" high.
_IMPORTANCE_HEADERS = (
    ("Importance", {"low": "low", "normal": "normal", "high": "high"}),
    ("Priority", {"non-urgent": "low", "normal": "normal", "urgent": "high"}),
    ("X-Priority", {"5": "low", "4": "low", "3": "normal", "2": "high", "1": "high"}),
    ("X-MSMail-Priority", {"low": "low", "normal": "normal", "high": "high"}),
)


def _importance(msg: EmailMessage) -> str:
    for header, values in _IMPORTANCE_HEADERS:
        # "1 (Highest)": the value is the first word, a comment may follow.
        words = re.split(r"[\s(;]+", str(msg.get(header) or "").strip(), maxsplit=1)
        found = values.get(words[0].lower()) if words and words[0] else None
        if found is not None:
            return found
    return "normal"


# RFC 2156 / RFC 4021 `Sensitivity:` header values -> Exchange's sensitivity
# (what Exchange writes into MIME for PidTagSensitivity, per MS-OXCMAIL 2.2.3.2.6).
_SENSITIVITY_HEADER = {
    "personal": "personal",
    "private": "private",
    "company-confidential": "confidential",
}


def item_class_of(msg: EmailMessage) -> str:
    """PidTagMessageClass a MIME reader gives a message (MS-OXCMAIL 2.2.3.2 and MS-OXOSMIME):
    application/pkcs7-mime (or a .p7m octet-stream) is encrypted or opaque-signed
    "IPM.Note.SMIME"; multipart/signed is clear-signed "IPM.Note.SMIME.MultipartSigned";
    IRM mail stays "IPM.Note" with PidNameContentClass "rpmsg.message" (MS-OXBBODY 2.1.3.4),
    so only its headers tell it apart."""
    ctype = msg.get_content_type()
    if ctype in ("application/pkcs7-mime", "application/x-pkcs7-mime") or (
        ctype == "application/octet-stream"
        and str(msg.get_filename() or "").lower().endswith(".p7m")
    ):
        return "IPM.Note.SMIME"
    if ctype == "multipart/signed":
        return "IPM.Note.SMIME.MultipartSigned"
    return "IPM.Note"


def sensitivity_of(msg: EmailMessage) -> str:
    value = str(msg.get("Sensitivity") or "").strip().lower()
    return _SENSITIVITY_HEADER.get(value, "normal")


def _date(msg: EmailMessage) -> str | None:
    raw = msg.get("Date")
    if raw is None:
        return None
    try:
        return iso(parsedate_to_datetime(str(raw)))
    except (TypeError, ValueError):
        return None


def _json(recipients: Sequence[Recipient]) -> str:
    return json.dumps([{"name": r.name, "address": r.address} for r in recipients])


def _change_key() -> str:
    return base64.b64encode(uuid.uuid4().bytes).decode()


def change_number(entry: Item | Tombstone) -> int:
    """An entry's place in the change order (items: mseq, tombstones: cseq)."""
    return entry.mseq if isinstance(entry, Item) else entry.cseq


def attachments_of(msg: EmailMessage) -> list[Attachment]:
    """Every attachment part (inline ones included), in MIME order."""
    if not msg.is_multipart():
        return []
    out = []
    for n, part in enumerate(msg.iter_attachments()):
        assert isinstance(part, EmailMessage)
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        cid = part.get("Content-ID")
        out.append(
            Attachment(
                index=n,
                name=part.get_filename() or "",
                content_type=part.get_content_type(),
                is_inline=part.get_content_disposition() == "inline",
                content_id=str(cid).strip("<>") if cid else None,
                data=data,
            )
        )
    return out


def _attach(
    msg: EmailMessage,
    name: str,
    content_type: str,
    data: bytes,
    is_inline: bool,
    content_id: str | None,
) -> None:
    maintype, _, subtype = (content_type or "application/octet-stream").partition("/")
    msg.add_attachment(
        data,
        maintype=maintype or "application",
        subtype=subtype or "octet-stream",
        filename=name,
        disposition="inline" if is_inline else "attachment",
        cid=f"<{content_id}>" if content_id else None,
    )


def attach(
    msg: EmailMessage,
    name: str,
    content_type: str,
    data: bytes,
    is_inline: bool = False,
    content_id: str | None = None,
) -> None:
    """Add an attachment part to a message being built (made multipart/mixed if needed)."""
    _attach(msg, name, content_type, data, is_inline, content_id)


# -- the store ------------------------------------------------------------------------------------


class MailStore:
    """All mailboxes of a sandbox. Thread-safe: one connection, one lock, short critical sections."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        private_dir(self.path.parent)
        create_private(self.path)  # owner-only; SQLite gives -wal and -shm the same mode
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        # Messages are stored whole (up to 150 MB): 64 KB pages keep a large item to a few
        # dozen overflow pages instead of thousands. Takes effect only for a new file.
        self._db.execute("PRAGMA page_size=65536")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._migrate()
        self.spool_dir = self.path.parent / "uploads"
        # One change clock for messages (`mseq`) and tombstones (`cseq`): delta merges both.
        self._clock = int(
            self._db.execute(
                "SELECT MAX(COALESCE((SELECT MAX(mseq) FROM messages), 0),"
                " COALESCE((SELECT MAX(cseq) FROM tombstones), 0),"
                " COALESCE((SELECT MAX(fseq) FROM folders), 0))"
            ).fetchone()[0]
        )

    def _migrate(self) -> None:
        have = {r["name"] for r in self._db.execute("PRAGMA table_info(messages)")}
        for name, decl in _ADDED_COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE messages ADD COLUMN {name} {decl}")
        self._db.execute(_INDEXES_AFTER_MIGRATION)
        have = {r["name"] for r in self._db.execute("PRAGMA table_info(folders)")}
        if "fseq" not in have:
            # Folder change number (same clock as messages), for mailFolders delta.
            self._db.execute("ALTER TABLE folders ADD COLUMN fseq INTEGER NOT NULL DEFAULT 0")
        if "search_json" not in have:  # a search folder's definition (Folder.search)
            self._db.execute("ALTER TABLE folders ADD COLUMN search_json TEXT")

    def _tick(self) -> int:
        """The next change number (caller holds the lock)."""
        self._clock += 1
        return self._clock

    @property
    def clock(self) -> int:
        with self._lock:
            return self._clock

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def bulk_load(self) -> Iterator[None]:
        """One transaction for filling a store nobody else has open (benchmark seeding while
        the sandbox is stopped): each byte is written once, not to the WAL and then again at
        checkpoint. The rollback journal is kept in memory (pages appended to the file need
        no journal entry, so the items are not copied there), which keeps ROLLBACK defined —
        under journal_mode=OFF it is not (sqlite.org/pragma.html#pragma_journal_mode). A crash
        inside leaves a damaged file, so it is never used on a store the sandbox serves."""
        with self._lock:
            self._db.execute("PRAGMA journal_mode=MEMORY")
            self._db.execute("PRAGMA synchronous=OFF")
            self._db.execute("BEGIN")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            finally:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")

    def reset(self) -> None:
        """Forget every mailbox (tests start clean after `Sandbox.reset()`)."""
        with self._lock:
            self._db.execute("DELETE FROM messages")
            self._db.execute("DELETE FROM folders")
            self._db.execute("DELETE FROM tombstones")
            self._db.execute("DELETE FROM upload_sessions")
        if self.spool_dir.exists():
            for part in self.spool_dir.glob("*.part"):
                part.unlink(missing_ok=True)

    # -- folders -----------------------------------------------------------------------------------
    def ensure_mailbox(self, tenant: str, mailbox: str) -> None:
        """Create the root and the well-known folders if this mailbox has never been touched."""
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM folders WHERE tenant=? AND mailbox=? AND well_known=?",
                (tenant, mailbox, ROOT),
            ).fetchone()
            if row is not None:
                return
            now = iso(utcnow())
            root_id = _entry_id(b"\x01", mailbox)
            rows: list[tuple[Any, ...]] = [
                (root_id, tenant, mailbox, ROOT, ROOT_DISPLAY, None, 1, now, self._tick())
            ]
            rows += [
                (_entry_id(b"\x01", mailbox), tenant, mailbox, wk, name, root_id, 0, now,
                 self._tick())
                for wk, name in WELL_KNOWN.items()
            ]  # fmt: skip
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO folders (id, tenant, mailbox, well_known, display_name, parent_id,"
                " is_hidden, created, fseq) VALUES (?,?,?,?,?,?,?,?,?)",
                rows,
            )
            self._db.execute("COMMIT")

    def localize(self, tenant: str, mailbox: str, language: str) -> None:
        """Rename the well-known folders as Exchange names them in `language` (locales.py)."""
        names = names_for(language)
        self.ensure_mailbox(tenant, mailbox)
        with self._lock:
            self._db.execute("BEGIN")
            for wk in WELL_KNOWN:
                self._db.execute(
                    "UPDATE folders SET display_name=?, fseq=? WHERE tenant=? AND mailbox=?"
                    " AND well_known=?",
                    (names[wk], self._tick(), tenant, mailbox, wk),
                )
            self._db.execute("COMMIT")

    def folder(self, tenant: str, mailbox: str, key: str) -> Folder | None:
        """A folder by id or well-known name (case-insensitive), with its counts."""
        self.ensure_mailbox(tenant, mailbox)
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM folders WHERE tenant=? AND mailbox=? AND (id=? OR well_known=?)",
                (tenant, mailbox, key, key.lower()),
            ).fetchone()
            return self._with_counts(row) if row is not None else None

    def child_folders(self, tenant: str, mailbox: str, parent: str | None = None) -> list[Folder]:
        """Folders under `parent` (default: the top of the information store), by display name."""
        self.ensure_mailbox(tenant, mailbox)
        with self._lock:
            parent_id = parent
            if parent_id is None:
                root = self.folder(tenant, mailbox, ROOT)
                assert root is not None
                parent_id = root.id
            rows = self._db.execute(
                "SELECT * FROM folders WHERE tenant=? AND mailbox=? AND parent_id=?"
                " ORDER BY display_name COLLATE NOCASE, id",
                (tenant, mailbox, parent_id),
            ).fetchall()
            return [self._with_counts(r) for r in rows]

    def _with_counts(self, row: sqlite3.Row) -> Folder:
        counts = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(1 - is_read), 0), COALESCE(SUM(size), 0)"
            # tenant and mailbox lead the messages_folder index: without them this is a
            # scan of every message in the store on each folder read (insert_message reads one).
            " FROM messages WHERE tenant=? AND mailbox=? AND folder_id=?",
            (row["tenant"], row["mailbox"], row["id"]),
        ).fetchone()
        children = self._db.execute(
            "SELECT COUNT(*) FROM folders WHERE tenant=? AND mailbox=? AND parent_id=?",
            (row["tenant"], row["mailbox"], row["id"]),
        ).fetchone()[0]
        return Folder(
            id=row["id"],
            tenant=row["tenant"],
            mailbox=row["mailbox"],
            well_known=row["well_known"],
            display_name=row["display_name"],
            parent_id=row["parent_id"],
            is_hidden=bool(row["is_hidden"]),
            search=json.loads(row["search_json"]) if row["search_json"] else None,
            total=counts[0],
            unread=counts[1],
            size=counts[2],
            children=children,
        )

    # -- writes ------------------------------------------------------------------------------------
    def deliver(
        self,
        tenant: str,
        mailbox: str,
        mime: bytes,
        folder: str = "inbox",
        *,
        received: dt.datetime | None = None,
        is_read: bool = False,
        is_draft: bool = False,
        bcc: Sequence[Recipient] = (),
    ) -> Item:
        """Store one message (raw RFC 5322 bytes) in a folder (id or well-known name).

        Properties Graph lists are taken from the MIME headers; `bcc` is kept only
        where Exchange keeps it (the sender's own copy), never in the MIME.
        """
        return self.insert_message(
            tenant, mailbox, folder, mime, received=received, is_read=is_read,
            is_draft=is_draft, bcc=bcc,
        )  # fmt: skip

    def insert_message(
        self,
        tenant: str,
        mailbox: str,
        folder: str,
        mime: bytes,
        *,
        received: dt.datetime | None = None,
        sent: dt.datetime | None = None,
        created: dt.datetime | None = None,
        is_read: bool = False,
        is_draft: bool = False,
        bcc: Sequence[Recipient] = (),
        flag: dict[str, Any] | None = None,
        categories: Sequence[str] = (),
        importance: str | None = None,
        sensitivity: str | None = None,
        properties: dict[str, str] | None = None,
    ) -> Item:
        """Store one message with explicit item properties (the raw insert importers use).

        `folder` is a folder id or well-known name. Properties not given come from the
        MIME headers (Date -> sent, Importance, Sensitivity); `received` defaults to now.
        `properties` are extended properties as Graph names them ("Integer 0xE07" -> value
        string), kept verbatim for `singleValueExtendedProperties`. Raises KeyError for
        an unknown folder. Public so the import/export face can write items directly.
        """
        target = self.folder(tenant, mailbox, folder)
        if target is None:
            raise KeyError(f"no folder {folder!r} in mailbox {tenant}/{mailbox}")
        msg = email.message_from_bytes(mime, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        body_type, content = body_of(msg)
        subject = str(msg.get("Subject") or "")
        now = iso(utcnow())
        received_at = iso(received) if received is not None else now
        from_ = _addresses(msg, "From")
        sender = _addresses(msg, "Sender") or from_
        item_id = _entry_id(b"\x46", mailbox)
        values: dict[str, Any] = {
            "id": item_id,
            "tenant": tenant,
            "mailbox": mailbox,
            "folder_id": target.id,
            "internet_message_id": str(msg.get("Message-ID") or "").strip() or None,
            "conversation_id": conversation_id(mailbox, subject),
            "subject": subject,
            "from_json": _json(from_[:1]) if from_ else None,
            "sender_json": _json(sender[:1]) if sender else None,
            "to_json": _json(_addresses(msg, "To")),
            "cc_json": _json(_addresses(msg, "Cc")),
            "bcc_json": _json(bcc),
            "reply_to_json": _json(_addresses(msg, "Reply-To")),
            "received": received_at,
            "sent": iso(sent) if sent is not None else _date(msg),
            "created": iso(created) if created is not None else received_at,
            "modified": now,
            "is_read": int(is_read),
            "is_draft": int(is_draft),
            "importance": importance or _importance(msg),
            "has_attachments": int(_has_attachments(msg)),
            "size": len(mime),
            "body_preview": preview(body_type, content),
            "body_type": body_type,
            "change_key": _change_key(),
            "categories_json": json.dumps(list(categories)),
            "flag_json": json.dumps(flag or NOT_FLAGGED),
            "sensitivity": sensitivity or sensitivity_of(msg),
            "props_json": json.dumps(properties or {}),
            "item_class": item_class_of(msg),
            "mime": sqlite3.Binary(mime),
        }
        with self._lock:
            self._insert(values)
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE id=?", (item_id,)
            ).fetchone()
        return _item(row)

    def insert_row(
        self, tenant: str, mailbox: str, folder_id: str, columns: dict[str, Any], mime: bytes
    ) -> tuple[str, str]:
        """Store a message from a full-fidelity stream: every property is given, nothing is
        re-derived from the MIME (an import does not re-parse what it carries). A new id,
        change key and conversation; returns (id, change key)."""
        with self._lock:
            have = {r["name"] for r in self._db.execute("PRAGMA table_info(messages)")}
        values = {k: v for k, v in columns.items() if k in have and k not in STORE_OWNED}
        values.update(
            id=_entry_id(b"\x46", mailbox),
            tenant=tenant,
            mailbox=mailbox,
            folder_id=folder_id,
            conversation_id=conversation_id(mailbox, str(columns.get("subject") or "")),
            change_key=_change_key(),
            size=len(mime),
            mime=sqlite3.Binary(mime),
        )
        with self._lock:
            self._insert(values)
        return str(values["id"]), str(values["change_key"])

    def insert_copies(
        self, tenant: str, mailbox: str, folder: str, mime: bytes, count: int, **kw: Any
    ) -> None:
        """`count` messages like `insert_message(...)` makes, parsing the MIME once (bulk
        fill for benchmarks: each copy has its own id, change key and change number)."""
        if count <= 0:
            return
        first = self.insert_message(tenant, mailbox, folder, mime, **kw)
        with self._lock:
            row = self._db.execute("SELECT * FROM messages WHERE id=?", (first.id,)).fetchone()
            names = [k for k in row.keys() if k != "seq"]  # noqa: SIM118
            for _ in range(count - 1):
                values = {k: row[k] for k in names}
                values.update(id=_entry_id(b"\x46", mailbox), change_key=_change_key())
                self._insert(values)

    def _insert(self, values: dict[str, Any]) -> None:
        """INSERT one message row with the next change number (caller holds the lock)."""
        values["mseq"] = self._tick()
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        self._db.execute(f"INSERT INTO messages ({names}) VALUES ({marks})", tuple(values.values()))

    def update_message(
        self,
        tenant: str,
        mailbox: str,
        item_id: str,
        *,
        is_read: bool | None = None,
        flag: dict[str, Any] | None = None,
        categories: Sequence[str] | None = None,
        importance: str | None = None,
        sensitivity: str | None = None,
        properties: dict[str, str] | None = None,
    ) -> Item | None:
        """Change item properties (None = unchanged); a new change key and change number."""
        sets: dict[str, Any] = {}
        if is_read is not None:
            sets["is_read"] = int(is_read)
        if flag is not None:
            sets["flag_json"] = json.dumps(flag)
        if categories is not None:
            sets["categories_json"] = json.dumps(list(categories))
        if importance is not None:
            sets["importance"] = importance
        if sensitivity is not None:
            sets["sensitivity"] = sensitivity
        with self._lock:
            current = self.get(tenant, mailbox, item_id)
            if current is None:
                return None
            if properties:
                sets["props_json"] = json.dumps({**current.properties, **properties})
            return self._touch(current, sets)

    def _touch(self, current: Item, sets: dict[str, Any]) -> Item:
        """Apply `sets` plus the bookkeeping every change carries (caller holds the lock)."""
        sets = {
            **sets,
            "modified": iso(utcnow()),
            "change_key": _change_key(),
            "mseq": self._tick(),
        }
        assign = ", ".join(f"{k}=?" for k in sets)
        self._db.execute(f"UPDATE messages SET {assign} WHERE id=?", (*sets.values(), current.id))
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM messages WHERE id=?", (sets.get("id", current.id),)
        ).fetchone()
        return _item(row)

    def _tombstone(self, item: Item, reason: str) -> None:
        self._db.execute(
            "INSERT INTO tombstones (cseq, tenant, mailbox, folder_id, item_id, reason)"
            " VALUES (?,?,?,?,?,?)",
            (self._tick(), item.tenant, item.mailbox, item.folder_id, item.id, reason),
        )

    def move_message(self, tenant: str, mailbox: str, item_id: str, folder_id: str) -> Item | None:
        """Move an item; like Exchange it gets a NEW id (the old one is a tombstone)."""
        with self._lock:
            current = self.get(tenant, mailbox, item_id)
            if current is None:
                return None
            self._tombstone(current, "deleted")
            new_id = _entry_id(b"\x46", mailbox)
            return self._touch(current, {"id": new_id, "folder_id": folder_id})

    def delete_message(self, tenant: str, mailbox: str, item_id: str) -> bool:
        with self._lock:
            current = self.get(tenant, mailbox, item_id)
            if current is None:
                return False
            self._tombstone(current, "deleted")
            self._db.execute("DELETE FROM messages WHERE id=?", (item_id,))
            return True

    def replace_mime(self, tenant: str, mailbox: str, item_id: str, mime: bytes) -> Item | None:
        """Swap an item's MIME (attachments added); size and hasAttachments follow it."""
        msg = email.message_from_bytes(mime, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        with self._lock:
            current = self.get(tenant, mailbox, item_id)
            if current is None:
                return None
            return self._touch(
                current,
                {
                    "mime": sqlite3.Binary(mime),
                    "size": len(mime),
                    "has_attachments": int(_has_attachments(msg)),
                },
            )

    def find(self, item_id: str) -> Item | None:
        """An item by id in any mailbox (ids are unique store-wide)."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE id=?", (item_id,)
            ).fetchone()
        return _item(row) if row is not None else None

    # -- folders (writes) --------------------------------------------------------------------------
    def create_folder(
        self,
        tenant: str,
        mailbox: str,
        parent_id: str,
        display_name: str,
        is_hidden: bool = False,
        search: dict[str, Any] | None = None,
    ) -> Folder:
        """A new folder under `parent_id` (a search folder when `search` defines one, see
        Folder.search); FolderExists if a sibling has the name (any case)."""
        self.ensure_mailbox(tenant, mailbox)
        with self._lock:
            siblings = self._db.execute(
                "SELECT display_name FROM folders WHERE tenant=? AND mailbox=? AND parent_id=?",
                (tenant, mailbox, parent_id),
            ).fetchall()
            if any(r[0].casefold() == display_name.casefold() for r in siblings):
                raise FolderExists(display_name)
            folder_id = _entry_id(b"\x01", mailbox)
            self._db.execute(
                "INSERT INTO folders (id, tenant, mailbox, well_known, display_name, parent_id,"
                " is_hidden, created, fseq, search_json) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (folder_id, tenant, mailbox, None, display_name, parent_id, int(is_hidden),
                 iso(utcnow()), self._tick(), json.dumps(search) if search is not None else None),
            )  # fmt: skip
        found = self.folder(tenant, mailbox, folder_id)
        assert found is not None
        return found

    def rename_folder(self, tenant: str, mailbox: str, folder_id: str, display_name: str) -> None:
        """Rename a folder (FolderExists if a sibling has the name); a new folder change number."""
        with self._lock:
            row = self._db.execute(
                "SELECT parent_id FROM folders WHERE tenant=? AND mailbox=? AND id=?",
                (tenant, mailbox, folder_id),
            ).fetchone()
            if row is None:
                raise KeyError(folder_id)
            siblings = self._db.execute(
                "SELECT display_name FROM folders WHERE tenant=? AND mailbox=? AND parent_id=?"
                " AND id<>?",
                (tenant, mailbox, row["parent_id"], folder_id),
            ).fetchall()
            if any(r[0].casefold() == display_name.casefold() for r in siblings):
                raise FolderExists(display_name)
            self._db.execute(
                "UPDATE folders SET display_name=?, fseq=? WHERE id=?",
                (display_name, self._tick(), folder_id),
            )

    def delete_folder(self, tenant: str, mailbox: str, folder_id: str) -> None:
        """Delete a folder, its subfolders and their messages (each message a tombstone)."""
        with self._lock:
            ids = [folder_id]
            pos = 0
            while pos < len(ids):
                rows = self._db.execute(
                    "SELECT id FROM folders WHERE tenant=? AND mailbox=? AND parent_id=?",
                    (tenant, mailbox, ids[pos]),
                ).fetchall()
                ids += [r[0] for r in rows]
                pos += 1
            self._db.execute("BEGIN")
            for fid in ids:
                for (item_id,) in self._db.execute(
                    "SELECT id FROM messages WHERE tenant=? AND mailbox=? AND folder_id=?",
                    (tenant, mailbox, fid),
                ).fetchall():
                    self._db.execute(
                        "INSERT INTO tombstones (cseq, tenant, mailbox, folder_id, item_id,"
                        " reason) VALUES (?,?,?,?,?,?)",
                        (self._tick(), tenant, mailbox, fid, item_id, "deleted"),
                    )
                self._db.execute("DELETE FROM messages WHERE folder_id=?", (fid,))
                self._db.execute("DELETE FROM folders WHERE id=?", (fid,))
            self._db.execute("COMMIT")

    # -- search folders ----------------------------------------------------------------------------
    def create_search_folder(
        self, tenant: str, mailbox: str, display_name: str, query: str = ""
    ) -> Folder:
        """A search folder under the mailbox's non-IPM "Finder" (where Outlook keeps them),
        defined as the mail API defines one (Folder.search): every message of the mailbox
        whose subject contains `query` (all mail when empty). The mail API's folder listings
        do not reach it."""
        root = self.folder(tenant, mailbox, ROOT)
        assert root is not None
        quoted = query.replace("'", "''")
        return self.create_folder(
            tenant,
            mailbox,
            system_folder_id(mailbox, FINDER),
            display_name,
            search={
                "sourceFolderIds": [root.id],
                "includeNestedFolders": True,
                "filterQuery": f"contains(subject, '{quoted}')" if query else None,
            },
        )

    def search_folders(self, tenant: str, mailbox: str) -> list[Folder]:
        """Every search folder of a mailbox, wherever it was made (Finder or the IPM tree)."""
        self.ensure_mailbox(tenant, mailbox)
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM folders WHERE tenant=? AND mailbox=? AND search_json IS NOT NULL"
                " ORDER BY display_name COLLATE NOCASE, id",
                (tenant, mailbox),
            ).fetchall()
            return [self._with_counts(r) for r in rows]

    # -- delta -------------------------------------------------------------------------------------
    def changes(
        self,
        tenant: str,
        mailbox: str,
        folder_id: str,
        after: int,
        removed_after: int,
        limit: int,
    ) -> tuple[list[Item | Tombstone], int, bool]:
        """Changes in a folder after change number `after`, oldest first, at most `limit`.

        Returns (entries, clock, more): items changed (mseq > after) merged with
        tombstones (cseq > max(after, removed_after)) in change order, the store's
        change clock read in the same critical section (a safe next cursor when
        nothing is left), and whether more entries follow.
        """
        floor = max(after, removed_after)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE tenant=? AND mailbox=? AND folder_id=?"
                " AND mseq>? ORDER BY mseq LIMIT ?",
                (tenant, mailbox, folder_id, after, limit + 1),
            ).fetchall()
            tombs = self._db.execute(
                "SELECT cseq, folder_id, item_id, reason FROM tombstones WHERE tenant=?"
                " AND mailbox=? AND folder_id=? AND cseq>? ORDER BY cseq LIMIT ?",
                (tenant, mailbox, folder_id, floor, limit + 1),
            ).fetchall()
            clock = self._clock
        merged: list[Item | Tombstone] = [_item(r) for r in rows]
        merged += [Tombstone(t[0], t[1], t[2], t[3]) for t in tombs]
        merged.sort(key=change_number)
        return merged[:limit], clock, len(merged) > limit

    def folder_changes(
        self, tenant: str, mailbox: str, parent_id: str, after: int, limit: int
    ) -> tuple[list[tuple[int, Folder]], int, bool]:
        """Folders under `parent_id` created after change number `after`: ((fseq, folder)...),
        clock, more. Folders are never renamed or deleted by the sandbox, so no tombstones."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM folders WHERE tenant=? AND mailbox=? AND parent_id=? AND fseq>?"
                " ORDER BY fseq LIMIT ?",
                (tenant, mailbox, parent_id, after, limit + 1),
            ).fetchall()
            clock = self._clock
            found = [(int(r["fseq"]), self._with_counts(r)) for r in rows]
        return found[:limit], clock, len(found) > limit

    # -- attachments -------------------------------------------------------------------------------
    def attachments(self, item_id: str) -> list[Attachment]:
        """The item's attachments, parsed from its MIME (whole-item read)."""
        return attachments_of(self.message(item_id))

    def add_attachment(
        self,
        tenant: str,
        mailbox: str,
        item_id: str,
        name: str,
        content_type: str,
        data: bytes,
        is_inline: bool = False,
        content_id: str | None = None,
    ) -> tuple[Item, Attachment] | None:
        """Append an attachment part to the item's MIME; (item, the new attachment)."""
        if self.get(tenant, mailbox, item_id) is None:
            return None
        msg = self.message(item_id)
        _attach(msg, name, content_type, data, is_inline, content_id)
        item = self.replace_mime(tenant, mailbox, item_id, msg.as_bytes())
        if item is None:
            return None
        return item, attachments_of(msg)[-1]

    # -- upload sessions ---------------------------------------------------------------------------
    def create_upload_session(
        self,
        tenant: str,
        mailbox: str,
        item_id: str,
        owner: str,
        name: str,
        content_type: str,
        size: int,
        expires: dt.datetime,
        is_inline: bool = False,
        content_id: str | None = None,
    ) -> UploadSession:
        session_id = _entry_id(b"\x12", mailbox)
        token = base64.urlsafe_b64encode(uuid.uuid4().bytes + uuid.uuid4().bytes).decode()
        private_dir(self.spool_dir)
        with self._lock:
            self._db.execute(
                "INSERT INTO upload_sessions (id, tenant, mailbox, item_id, owner, token, name,"
                " content_type, size, is_inline, content_id, received, expires)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,0,?)",
                (session_id, tenant, mailbox, item_id, owner, token, name, content_type, size,
                 int(is_inline), content_id, iso(expires)),
            )  # fmt: skip
        write_private(self._spool(session_id), b"", atomic=False)
        found = self.upload_session(session_id)
        assert found is not None
        return found

    def upload_session(self, session_id: str) -> UploadSession | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM upload_sessions WHERE id=?", (session_id,)
            ).fetchone()
        if row is None:
            return None
        return UploadSession(
            id=row["id"], tenant=row["tenant"], mailbox=row["mailbox"], item_id=row["item_id"],
            owner=row["owner"], token=row["token"], name=row["name"],
            content_type=row["content_type"], size=row["size"], is_inline=bool(row["is_inline"]),
            content_id=row["content_id"], received=row["received"], expires=row["expires"],
        )  # fmt: skip

    def _spool(self, session_id: str) -> Path:
        return self.spool_dir / f"{hashlib.sha256(session_id.encode()).hexdigest()}.part"

    def append_upload(self, session_id: str, data: bytes) -> int:
        """Append the next range to the session's spool file; bytes received so far."""
        with self._lock, self._spool(session_id).open("ab") as spool:
            spool.write(data)
            self._db.execute(
                "UPDATE upload_sessions SET received=received+? WHERE id=?",
                (len(data), session_id),
            )
            row = self._db.execute(
                "SELECT received FROM upload_sessions WHERE id=?", (session_id,)
            ).fetchone()
        return int(row[0])

    def take_upload(self, session_id: str) -> bytes:
        """The finished upload's bytes; the session and its spool file are gone afterwards."""
        path = self._spool(session_id)
        data = path.read_bytes()
        self.delete_upload_session(session_id)
        return data

    def delete_upload_session(self, session_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM upload_sessions WHERE id=?", (session_id,))
        self._spool(session_id).unlink(missing_ok=True)

    # -- reads -------------------------------------------------------------------------------------
    def get(self, tenant: str, mailbox: str, item_id: str) -> Item | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE id=? AND tenant=? AND mailbox=?",
                (item_id, tenant, mailbox),
            ).fetchone()
        return _item(row) if row is not None else None

    def folder_owner(self, folder_id: str) -> str | None:
        """The mailbox a folder id belongs to (EWS ids name no mailbox: the id finds it)."""
        with self._lock:
            row = self._db.execute(
                "SELECT mailbox FROM folders WHERE id=?", (folder_id,)
            ).fetchone()
        return str(row[0]) if row is not None else None

    def item_class(self, item_id: str) -> str:
        with self._lock:
            row = self._db.execute(
                "SELECT item_class FROM messages WHERE id=?", (item_id,)
            ).fetchone()
        return str(row[0]) if row is not None else "IPM.Note"

    def row(self, item_id: str) -> dict[str, Any]:
        """Every column of an item, its MIME included (a full-fidelity export)."""
        with self._lock:
            row = self._db.execute("SELECT * FROM messages WHERE id=?", (item_id,)).fetchone()
        if row is None:
            raise KeyError(item_id)
        return {k: row[k] for k in row.keys()}  # noqa: SIM118

    def arrived_by_move(self, tenant: str, mailbox: str, mseq: int) -> bool:
        """Whether the change numbered `mseq` put an item into its folder by a move (a move
        writes the old id's tombstone, then the item under its new id, on consecutive ticks)."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM tombstones WHERE tenant=? AND mailbox=? AND cseq=?",
                (tenant, mailbox, mseq - 1),
            ).fetchone()
        return row is not None

    def max_seq(self, tenant: str, mailbox: str) -> int:
        """The newest insertion number of a mailbox's items (0 when empty)."""
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE tenant=? AND mailbox=?",
                (tenant, mailbox),
            ).fetchone()
        return int(row[0])

    def mime(self, item_id: str) -> bytes:
        """The item's MIME. Whole-item read; large items should use `open_mime`."""
        with self._lock:
            row = self._db.execute("SELECT mime FROM messages WHERE id=?", (item_id,)).fetchone()
        if row is None:
            raise KeyError(item_id)
        return bytes(row[0])

    def open_mime(self, item_id: str, chunk: int = 1 << 16) -> Iterator[bytes]:
        """Stream an item's MIME in chunks (SQLite incremental blob I/O)."""
        with self._lock:
            row = self._db.execute("SELECT seq FROM messages WHERE id=?", (item_id,)).fetchone()
        if row is None:
            raise KeyError(item_id)
        offset = 0
        while True:
            with self._lock, self._db.blobopen("messages", "mime", row[0], readonly=True) as blob:
                blob.seek(offset)
                data = blob.read(chunk)
            if not data:
                return
            offset += len(data)
            yield data

    def headers(self, item_id: str) -> EmailMessage:
        """The item's header block alone, parsed (no body is read past the first blank line
        unless the headers are longer than HEAD_READ)."""
        with self._lock:
            row = self._db.execute(
                "SELECT substr(mime, 1, ?) FROM messages WHERE id=?", (HEAD_READ, item_id)
            ).fetchone()
        if row is None:
            raise KeyError(item_id)
        head = bytes(row[0])
        end = min((i for i in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if i >= 0), default=-1)
        if end < 0:
            head = self.mime(item_id)
        msg = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(head)
        assert isinstance(msg, EmailMessage)
        return msg

    def message(self, item_id: str) -> EmailMessage:
        """The parsed MIME of one item (for its body and headers)."""
        msg = email.message_from_bytes(self.mime(item_id), policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg

    def iter_messages(
        self,
        tenant: str,
        mailbox: str,
        folder_id: str | None = None,
        order: str = "received",
        descending: bool = True,
        chunk: int = 500,
    ) -> Iterator[Item]:
        """Items of a mailbox (or one folder) in order, read in keyset chunks of `chunk` rows.

        Ties on the sort key are broken by insertion order (`seq`), in the same direction.
        The lock is held per chunk only, so writers are never blocked by a slow reader.
        """
        if order not in ORDER_COLUMNS:
            raise ValueError(f"cannot order by {order!r}")
        where = "tenant=? AND mailbox=?"
        args: list[Any] = [tenant, mailbox]
        if folder_id is not None:
            where += " AND folder_id=?"
            args.append(folder_id)
        direction, cmp = ("DESC", "<") if descending else ("ASC", ">")
        # NULL sort keys (e.g. no `sent`) sort as '' so the keyset comparison stays total.
        key = f"COALESCE({order}, '')"
        last: tuple[str, int] | None = None
        while True:
            sql = f"SELECT {_COLUMNS}, {key} AS k FROM messages WHERE {where}"
            params = list(args)
            if last is not None:
                sql += f" AND ({key} {cmp} ? OR ({key} = ? AND seq {cmp} ?))"
                params += [last[0], last[0], last[1]]
            sql += f" ORDER BY k {direction}, seq {direction} LIMIT ?"
            params.append(chunk)
            with self._lock:
                rows = self._db.execute(sql, params).fetchall()
            for row in rows:
                yield _item(row)
            if len(rows) < chunk:
                return
            last = (rows[-1]["k"], rows[-1]["seq"])

    def count_where(
        self, tenant: str, mailbox: str, folder_id: str, where: str, args: Sequence[str]
    ) -> int:
        """Items of a folder matching an SQL condition over this store's columns (built by the
        caller from a fixed vocabulary; values are parameters)."""
        with self._lock:
            n: int = self._db.execute(
                "SELECT COUNT(*) FROM messages WHERE tenant=? AND mailbox=? AND folder_id=?"
                f" AND ({where})",
                (tenant, mailbox, folder_id, *args),
            ).fetchone()[0]
        return n

    def page_messages(
        self,
        tenant: str,
        mailbox: str,
        folder_id: str,
        where: str,
        args: Sequence[str],
        *,
        order: str = "received",
        descending: bool = True,
        offset: int = 0,
        limit: int = 100,
    ) -> list[Item]:
        """One page of a folder's items matching `where` (as count_where), in `iter_messages`
        order (ties broken by insertion order, in the same direction)."""
        if order not in ORDER_COLUMNS:
            raise ValueError(f"cannot order by {order!r}")
        direction = "DESC" if descending else "ASC"
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE tenant=? AND mailbox=? AND folder_id=?"
                f" AND ({where}) ORDER BY COALESCE({order}, '') {direction}, seq {direction}"
                " LIMIT ? OFFSET ?",
                (tenant, mailbox, folder_id, *args, limit, offset),
            ).fetchall()
        return [_item(r) for r in rows]

    def totals(self, tenant: str, mailbox: str) -> tuple[int, int]:
        """(items, bytes) of a mailbox's messages in every folder, at the sizes the store
        keeps (the MIME's length); what Get-MailboxStatistics reports of it."""
        with self._lock:
            n, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE tenant=? AND mailbox=?",
                (tenant, mailbox),
            ).fetchone()
        return int(n), int(size)

    def count(self, tenant: str, mailbox: str, folder_id: str | None = None) -> int:
        sql = "SELECT COUNT(*) FROM messages WHERE tenant=? AND mailbox=?"
        args: list[str] = [tenant, mailbox]
        if folder_id is not None:
            sql += " AND folder_id=?"
            args.append(folder_id)
        with self._lock:
            n: int = self._db.execute(sql, args).fetchone()[0]
        return n
