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
import email.policy
import hashlib
import json
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import getaddresses, parsedate_to_datetime
from pathlib import Path
from typing import Any

MAIL_DB = "mail.db"

# Graph's well-known folder names and the display names Exchange gives them (English
# locale) (learn.microsoft.com/graph/api/resources/mailfolder, "Well-known folder names").
WELL_KNOWN: dict[str, str] = {
    "inbox": "Inbox",
    "sentitems": "Sent Items",
    "drafts": "Drafts",
    "deleteditems": "Deleted Items",
    "junkemail": "Junk Email",
    "archive": "Archive",
    "outbox": "Outbox",
}
# The hidden parent of the folders above ("Top of Information Store").
ROOT = "msgfolderroot"
ROOT_DISPLAY = "Top of Information Store"

# Columns a listing reads (everything but the MIME blob).
_COLUMNS = (
    "seq, id, tenant, mailbox, folder_id, internet_message_id, conversation_id, subject, "
    "from_json, sender_json, to_json, cc_json, bcc_json, reply_to_json, received, sent, created, "
    "modified, is_read, is_draft, importance, has_attachments, size, body_preview, body_type, "
    "change_key, categories_json"
)
# Sort keys a listing may use (column names; never user text in SQL).
ORDER_COLUMNS = {"received", "sent", "created", "modified", "subject"}

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
    mime BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_folder ON messages (tenant, mailbox, folder_id, received);
CREATE INDEX IF NOT EXISTS messages_mailbox ON messages (tenant, mailbox, received);
CREATE INDEX IF NOT EXISTS messages_imid ON messages (tenant, mailbox, internet_message_id);
"""

# Graph's bodyPreview: "The first 255 characters of the message body" (resources/message).
PREVIEW_CHARS = 255


def iso(t: dt.datetime) -> str:
    """Graph's DateTimeOffset form for mail (UTC, whole seconds, 'Z')."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _entry_id(kind: bytes, mailbox: str) -> str:
    """An Exchange-looking id: `AAMkA` + mailbox guid + kind marker + random bytes, base64url."""
    try:
        mbx = uuid.UUID(mailbox).bytes
    except ValueError:
        mbx = hashlib.md5(mailbox.encode()).digest()  # an id, not security
    raw = b"\x00\x03\x24\x00" + mbx + kind + uuid.uuid4().bytes
    return base64.urlsafe_b64encode(raw).decode()


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
    text = re.sub(r"<[^>]*>", " ", content) if body_type == "html" else content
    return re.sub(r"\s+", " ", text).strip()[:PREVIEW_CHARS]


def _has_attachments(msg: EmailMessage) -> bool:
    return any(True for _ in msg.iter_attachments()) if msg.is_multipart() else False


def _importance(msg: EmailMessage) -> str:
    value = str(msg.get("Importance") or "normal").strip().lower()
    return value if value in ("low", "normal", "high") else "normal"


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


# -- the store ------------------------------------------------------------------------------------


class MailStore:
    """All mailboxes of a sandbox. Thread-safe: one connection, one lock, short critical sections."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def reset(self) -> None:
        """Forget every mailbox (tests start clean after `Sandbox.reset()`)."""
        with self._lock:
            self._db.execute("DELETE FROM messages")
            self._db.execute("DELETE FROM folders")

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
                (root_id, tenant, mailbox, ROOT, ROOT_DISPLAY, None, 1, now)
            ]
            rows += [
                (_entry_id(b"\x01", mailbox), tenant, mailbox, wk, name, root_id, 0, now)
                for wk, name in WELL_KNOWN.items()
            ]
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO folders (id, tenant, mailbox, well_known, display_name, parent_id,"
                " is_hidden, created) VALUES (?,?,?,?,?,?,?,?)",
                rows,
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
            " FROM messages WHERE folder_id=?",
            (row["id"],),
        ).fetchone()
        children = self._db.execute(
            "SELECT COUNT(*) FROM folders WHERE parent_id=?", (row["id"],)
        ).fetchone()[0]
        return Folder(
            id=row["id"],
            tenant=row["tenant"],
            mailbox=row["mailbox"],
            well_known=row["well_known"],
            display_name=row["display_name"],
            parent_id=row["parent_id"],
            is_hidden=bool(row["is_hidden"]),
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
        values = {
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
            "sent": _date(msg),
            "created": received_at,
            "modified": now,
            "is_read": int(is_read),
            "is_draft": int(is_draft),
            "importance": _importance(msg),
            "has_attachments": int(_has_attachments(msg)),
            "size": len(mime),
            "body_preview": preview(body_type, content),
            "body_type": body_type,
            "change_key": base64.b64encode(uuid.uuid4().bytes).decode(),
            "categories_json": "[]",
            "mime": sqlite3.Binary(mime),
        }
        names = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self._lock:
            self._db.execute(
                f"INSERT INTO messages ({names}) VALUES ({marks})", tuple(values.values())
            )
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE id=?", (item_id,)
            ).fetchone()
        return _item(row)

    # -- reads -------------------------------------------------------------------------------------
    def get(self, tenant: str, mailbox: str, item_id: str) -> Item | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE id=? AND tenant=? AND mailbox=?",
                (item_id, tenant, mailbox),
            ).fetchone()
        return _item(row) if row is not None else None

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

    def count(self, tenant: str, mailbox: str, folder_id: str | None = None) -> int:
        sql = "SELECT COUNT(*) FROM messages WHERE tenant=? AND mailbox=?"
        args: list[str] = [tenant, mailbox]
        if folder_id is not None:
            sql += " AND folder_id=?"
            args.append(folder_id)
        with self._lock:
            n: int = self._db.execute(sql, args).fetchone()[0]
        return n
