"""The sandbox's non-mail mailbox items: contacts, calendar events, To Do tasks (`pim.db`).

Mail lives in the mailstore (`mail.db`); everything else a mailbox holds lives
here, in one generic shape: folders (contact folders, calendars, To Do lists)
and items whose Graph-writable properties are kept as a JSON document. The
Graph modules (`graph/contacts.py`, `graph/calendar.py`, `graph/todo.py`) own
the per-type rules; this module owns storage, ids, change keys and the
recurrence arithmetic Exchange applies to events (pure functions at the end).

Mailboxes are keyed like the mailstore's: (tenant key, user object id). The
default folders (Contacts, Calendar, the "Tasks" To Do list) are created the
first time a mailbox is touched.

Side tables the import/export face needs (it keeps no state in memory, so a
restarted sandbox still honours an import URL): `delta_states` (server-side
delta snapshots) and `import_sessions` (pre-authenticated import URLs).
"""

from __future__ import annotations

import base64
import calendar as _cal
import datetime as dt
import json
import sqlite3
import threading
import time
import uuid
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coexist.files import create_private, private_dir

from .mailstore import _entry_id, iso, utcnow

PIM_DB = "pim.db"

# Folder kinds and the item kind each holds.
CONTACTS, CALENDAR, TODO = "contacts", "calendar", "todo"
ITEM_KIND = {CONTACTS: "contact", CALENDAR: "event", TODO: "task"}
# Default folders: (well-known name, display name). Exchange's English names
# (resources/contactfolder, resources/calendar, resources/todotasklist "defaultList").
DEFAULTS = {
    CONTACTS: ("contacts", "Contacts"),
    CALENDAR: ("calendar", "Calendar"),
    TODO: ("defaultList", "Tasks"),
}
# Exchange folder classes and item message classes (mailboxFolder.type / mailboxItem.type).
FOLDER_CLASS = {CONTACTS: "IPF.Contact", CALENDAR: "IPF.Appointment", TODO: "IPF.Task"}
ITEM_CLASS = {"contact": "IPM.Contact", "event": "IPM.Appointment", "task": "IPM.Task"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pim_folders (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    mailbox TEXT NOT NULL,
    kind TEXT NOT NULL,
    well_known TEXT,
    parent_id TEXT,
    display_name TEXT NOT NULL,
    props_json TEXT NOT NULL DEFAULT '{}',
    created TEXT NOT NULL,
    change_key TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS pim_folders_mailbox ON pim_folders (tenant, mailbox, kind, parent_id);
CREATE TABLE IF NOT EXISTS pim_items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    mailbox TEXT NOT NULL,
    kind TEXT NOT NULL,
    folder_id TEXT NOT NULL,
    props_json TEXT NOT NULL,
    created TEXT NOT NULL,
    modified TEXT NOT NULL,
    change_key TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS pim_items_folder ON pim_items (tenant, mailbox, folder_id, seq);
CREATE TABLE IF NOT EXISTS delta_states (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS import_sessions (
    token TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    mailbox TEXT NOT NULL,
    mailbox_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    expires REAL NOT NULL
);
"""

OCCURRENCE_MARK = b"\x07"


def new_id(mailbox: str, kind: bytes) -> str:
    """An Exchange-looking opaque id (same family as the mailstore's, so `looks_like_id` holds)."""
    return _entry_id(kind, mailbox)


def new_change_key() -> str:
    return base64.b64encode(uuid.uuid4().bytes).decode()


@dataclass(frozen=True)
class PimFolder:
    id: str
    tenant: str
    mailbox: str
    kind: str
    well_known: str | None
    parent_id: str | None
    display_name: str
    props: dict[str, Any]
    created: str
    change_key: str
    children: int = 0
    total: int = 0


@dataclass(frozen=True)
class PimItem:
    seq: int
    id: str
    tenant: str
    mailbox: str
    kind: str
    folder_id: str
    props: dict[str, Any]
    created: str
    modified: str
    change_key: str


def _item(row: sqlite3.Row) -> PimItem:
    return PimItem(
        seq=row["seq"],
        id=row["id"],
        tenant=row["tenant"],
        mailbox=row["mailbox"],
        kind=row["kind"],
        folder_id=row["folder_id"],
        props=json.loads(row["props_json"]),
        created=row["created"],
        modified=row["modified"],
        change_key=row["change_key"],
    )


class PimStore:
    """Contacts, calendars and To Do of every mailbox. Thread-safe (one connection, one lock)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        private_dir(self.path.parent)
        create_private(self.path)  # owner-only; SQLite gives -wal and -shm the same mode
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def reset(self) -> None:
        with self._lock:
            for table in ("pim_items", "pim_folders", "delta_states", "import_sessions"):
                self._db.execute(f"DELETE FROM {table}")

    # -- folders -----------------------------------------------------------------------------------
    def ensure(self, tenant: str, mailbox: str) -> None:
        """Create the default folders of a mailbox the first time it is touched."""
        with self._lock:
            found = self._db.execute(
                "SELECT COUNT(*) FROM pim_folders WHERE tenant=? AND mailbox=? AND well_known"
                " IS NOT NULL",
                (tenant, mailbox),
            ).fetchone()[0]
            if found:
                return
            now = iso(utcnow())
            for kind, (wk, name) in DEFAULTS.items():
                self._db.execute(
                    "INSERT INTO pim_folders (id, tenant, mailbox, kind, well_known, parent_id,"
                    " display_name, created, change_key) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        new_id(mailbox, b"\x02"),
                        tenant,
                        mailbox,
                        kind,
                        wk,
                        None,
                        name,
                        now,
                        new_change_key(),
                    ),
                )

    def localize(self, tenant: str, mailbox: str, language: str) -> None:
        """Rename the default folders as Exchange names them in `language` (locales.py)."""
        from .locales import names_for

        names = names_for(language)
        self.ensure(tenant, mailbox)
        with self._lock:
            for wk, _name in DEFAULTS.values():
                self._db.execute(
                    "UPDATE pim_folders SET display_name=?, change_key=? WHERE tenant=? AND"
                    " mailbox=? AND well_known=?",
                    (names[wk], new_change_key(), tenant, mailbox, wk),
                )

    def _folder(self, row: sqlite3.Row) -> PimFolder:
        children = self._db.execute(
            "SELECT COUNT(*) FROM pim_folders WHERE parent_id=?", (row["id"],)
        ).fetchone()[0]
        total = self._db.execute(
            "SELECT COUNT(*) FROM pim_items WHERE folder_id=?", (row["id"],)
        ).fetchone()[0]
        return PimFolder(
            id=row["id"],
            tenant=row["tenant"],
            mailbox=row["mailbox"],
            kind=row["kind"],
            well_known=row["well_known"],
            parent_id=row["parent_id"],
            display_name=row["display_name"],
            props=json.loads(row["props_json"]),
            created=row["created"],
            change_key=row["change_key"],
            children=children,
            total=total,
        )

    def default_folder(self, tenant: str, mailbox: str, kind: str) -> PimFolder:
        self.ensure(tenant, mailbox)
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM pim_folders WHERE tenant=? AND mailbox=? AND kind=? AND"
                " well_known=?",
                (tenant, mailbox, kind, DEFAULTS[kind][0]),
            ).fetchone()
            return self._folder(row)

    def folder(
        self, tenant: str, mailbox: str, key: str, kind: str | None = None
    ) -> PimFolder | None:
        """A folder by id or well-known name (optionally of one kind)."""
        self.ensure(tenant, mailbox)
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM pim_folders WHERE tenant=? AND mailbox=? AND (id=? OR"
                " lower(well_known)=lower(?))",
                (tenant, mailbox, key, key),
            ).fetchone()
            if row is None or (kind is not None and row["kind"] != kind):
                return None
            return self._folder(row)

    def folders(
        self, tenant: str, mailbox: str, kind: str | None = None, parent: str | bool | None = False
    ) -> list[PimFolder]:
        """Folders of a mailbox (of one kind; under `parent` unless `parent` is False)."""
        self.ensure(tenant, mailbox)
        sql = "SELECT * FROM pim_folders WHERE tenant=? AND mailbox=?"
        args: list[Any] = [tenant, mailbox]
        if kind is not None:
            sql += " AND kind=?"
            args.append(kind)
        if parent is None:
            sql += " AND parent_id IS NULL"
        elif isinstance(parent, str):
            sql += " AND parent_id=?"
            args.append(parent)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created, rowid", args).fetchall()
            return [self._folder(r) for r in rows]

    def create_folder(
        self,
        tenant: str,
        mailbox: str,
        kind: str,
        display_name: str,
        parent_id: str | None = None,
        props: dict[str, Any] | None = None,
    ) -> PimFolder:
        self.ensure(tenant, mailbox)
        folder_id = new_id(mailbox, b"\x02")
        with self._lock:
            self._db.execute(
                "INSERT INTO pim_folders (id, tenant, mailbox, kind, well_known, parent_id,"
                " display_name, props_json, created, change_key) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    folder_id,
                    tenant,
                    mailbox,
                    kind,
                    None,
                    parent_id,
                    display_name,
                    json.dumps(props or {}),
                    iso(utcnow()),
                    new_change_key(),
                ),
            )
        found = self.folder(tenant, mailbox, folder_id)
        assert found is not None
        return found

    def update_folder(
        self, folder_id: str, display_name: str | None, props: dict[str, Any] | None = None
    ) -> None:
        with self._lock:
            row = self._db.execute(
                "SELECT display_name, props_json FROM pim_folders WHERE id=?", (folder_id,)
            ).fetchone()
            if row is None:
                raise KeyError(folder_id)
            merged = {**json.loads(row["props_json"]), **(props or {})}
            self._db.execute(
                "UPDATE pim_folders SET display_name=?, props_json=?, change_key=? WHERE id=?",
                (
                    display_name or row["display_name"],
                    json.dumps(merged),
                    new_change_key(),
                    folder_id,
                ),
            )

    def delete_folder(self, folder_id: str) -> None:
        """Delete a folder, its subfolders and every item in them."""
        with self._lock:
            ids = [folder_id]
            pos = 0
            while pos < len(ids):
                rows = self._db.execute(
                    "SELECT id FROM pim_folders WHERE parent_id=?", (ids[pos],)
                ).fetchall()
                ids += [r[0] for r in rows]
                pos += 1
            self._db.execute("BEGIN")
            for fid in ids:
                self._db.execute("DELETE FROM pim_items WHERE folder_id=?", (fid,))
                self._db.execute("DELETE FROM pim_folders WHERE id=?", (fid,))
            self._db.execute("COMMIT")

    # -- items -------------------------------------------------------------------------------------
    def create_item(
        self,
        tenant: str,
        mailbox: str,
        folder_id: str,
        kind: str,
        props: dict[str, Any],
        *,
        item_id: str | None = None,
        created: str | None = None,
        modified: str | None = None,
    ) -> PimItem:
        now = iso(utcnow())
        item_id = item_id or new_id(mailbox, b"\x46")
        with self._lock:
            self._db.execute(
                "INSERT INTO pim_items (id, tenant, mailbox, kind, folder_id, props_json, created,"
                " modified, change_key) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    item_id,
                    tenant,
                    mailbox,
                    kind,
                    folder_id,
                    json.dumps(props),
                    created or now,
                    modified or now,
                    new_change_key(),
                ),
            )
        found = self.item(tenant, mailbox, item_id)
        assert found is not None
        return found

    def totals(self, tenant: str, mailbox: str) -> tuple[int, int]:
        """(items, bytes) of a mailbox's contacts, events and tasks; an item's size is its
        stored JSON document's (the sandbox keeps no MAPI size for them)."""
        with self._lock:
            n, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(CAST(props_json AS BLOB))), 0)"
                " FROM pim_items WHERE tenant=? AND mailbox=?",
                (tenant, mailbox),
            ).fetchone()
        return int(n), int(size)

    def find(self, item_id: str) -> PimItem | None:
        """An item by id in any mailbox (ids are unique store-wide; EWS ids name no mailbox)."""
        with self._lock:
            row = self._db.execute("SELECT * FROM pim_items WHERE id=?", (item_id,)).fetchone()
        return _item(row) if row is not None else None

    def folder_owner(self, folder_id: str) -> tuple[str, str] | None:
        """(tenant, mailbox) of a folder id."""
        with self._lock:
            row = self._db.execute(
                "SELECT tenant, mailbox FROM pim_folders WHERE id=?", (folder_id,)
            ).fetchone()
        return (str(row[0]), str(row[1])) if row is not None else None

    def item(self, tenant: str, mailbox: str, item_id: str) -> PimItem | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM pim_items WHERE id=? AND tenant=? AND mailbox=?",
                (item_id, tenant, mailbox),
            ).fetchone()
        return _item(row) if row is not None else None

    def items(
        self, tenant: str, mailbox: str, kind: str, folder_id: str | None = None
    ) -> list[PimItem]:
        sql = "SELECT * FROM pim_items WHERE tenant=? AND mailbox=? AND kind=?"
        args: list[Any] = [tenant, mailbox, kind]
        if folder_id is not None:
            sql += " AND folder_id=?"
            args.append(folder_id)
        with self._lock:
            return [_item(r) for r in self._db.execute(sql + " ORDER BY seq", args).fetchall()]

    def iter_folder(self, folder_id: str, chunk: int = 500) -> Iterator[PimItem]:
        last = 0
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT * FROM pim_items WHERE folder_id=? AND seq>? ORDER BY seq LIMIT ?",
                    (folder_id, last, chunk),
                ).fetchall()
            yield from (_item(r) for r in rows)
            if len(rows) < chunk:
                return
            last = rows[-1]["seq"]

    def update_item(
        self, item_id: str, props: dict[str, Any], folder_id: str | None = None
    ) -> PimItem:
        """Replace an item's properties (a new change key and modification time)."""
        with self._lock:
            row = self._db.execute("SELECT * FROM pim_items WHERE id=?", (item_id,)).fetchone()
            if row is None:
                raise KeyError(item_id)
            self._db.execute(
                "UPDATE pim_items SET props_json=?, modified=?, change_key=?, folder_id=?"
                " WHERE id=?",
                (
                    json.dumps(props),
                    iso(utcnow()),
                    new_change_key(),
                    folder_id or row["folder_id"],
                    item_id,
                ),
            )
            return _item(
                self._db.execute("SELECT * FROM pim_items WHERE id=?", (item_id,)).fetchone()
            )

    def delete_item(self, item_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM pim_items WHERE id=?", (item_id,))

    # -- import/export side tables -----------------------------------------------------------------
    def save_state(self, payload: dict[str, Any]) -> str:
        state_id = uuid.uuid4().hex
        blob = json.dumps(payload, separators=(",", ":")).encode()
        with self._lock:
            self._db.execute(
                "INSERT INTO delta_states (id, created, payload) VALUES (?,?,?)",
                (state_id, time.time(), sqlite3.Binary(blob)),
            )
        return state_id

    def load_state(self, state_id: str) -> dict[str, Any] | None:
        found = self.state(state_id)
        return found[0] if found is not None else None

    def state(self, state_id: str) -> tuple[dict[str, Any], float] | None:
        """A saved delta state and when it was issued (epoch seconds), for expiry
        (`Settings.sync_state_expired`)."""
        with self._lock:
            row = self._db.execute(
                "SELECT payload, created FROM delta_states WHERE id=?", (state_id,)
            ).fetchone()
        if row is None:
            return None
        payload: dict[str, Any] = json.loads(bytes(row[0]))
        return payload, float(row[1])

    def create_session(
        self, tenant: str, mailbox: str, mailbox_id: str, client_id: str, expires: float
    ) -> str:
        token = (
            base64.urlsafe_b64encode(uuid.uuid4().bytes + uuid.uuid4().bytes).decode().rstrip("=")
        )
        with self._lock:
            self._db.execute(
                "INSERT INTO import_sessions (token, tenant, mailbox, mailbox_id, client_id,"
                " expires) VALUES (?,?,?,?,?,?)",
                (token, tenant, mailbox, mailbox_id, client_id, expires),
            )
        return token

    def session(self, token: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM import_sessions WHERE token=?", (token,)
            ).fetchone()
        return dict(row) if row is not None else None


# -- time zones -------------------------------------------------------------------------------------

# Windows zone names Graph accepts, mapped to IANA (CLDR windowsZones.xml, "001" territory).
# A subset: the zones tests and the demo use; unknown names are rejected.
WINDOWS_ZONES = {
    "UTC": "UTC",
    "Coordinated Universal Time": "UTC",
    "GMT Standard Time": "Europe/London",
    "W. Europe Standard Time": "Europe/Berlin",
    "Romance Standard Time": "Europe/Paris",
    "Central Europe Standard Time": "Europe/Budapest",
    "E. Europe Standard Time": "Europe/Chisinau",
    "Eastern Standard Time": "America/New_York",
    "Central Standard Time": "America/Chicago",
    "Mountain Standard Time": "America/Denver",
    "Pacific Standard Time": "America/Los_Angeles",
    "Tokyo Standard Time": "Asia/Tokyo",
    "India Standard Time": "Asia/Calcutta",
    "AUS Eastern Standard Time": "Australia/Sydney",
}


def zone(name: str) -> dt.tzinfo:
    """A Graph `timeZone` value (Windows or IANA name) as a tzinfo; KeyError if unknown."""
    if name in WINDOWS_ZONES:
        name = WINDOWS_ZONES[name]
    if name.upper() == "UTC":
        return dt.UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise KeyError(name) from None


def parse_local(value: str) -> dt.datetime:
    """Graph's dateTimeTimeZone.dateTime ('2024-01-01T09:00:00.0000000'): a naive wall time."""
    text = value.strip().rstrip("Z")
    if "." in text:
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]}"
    parsed = dt.datetime.fromisoformat(text)
    return parsed.replace(tzinfo=None)


def format_local(t: dt.datetime) -> str:
    """Graph's dateTimeTimeZone.dateTime form (seven fractional digits)."""
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{t.microsecond:06d}0"


def to_utc(wall: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    return wall.replace(tzinfo=tz).astimezone(dt.UTC)


# -- recurrence (resources/patternedrecurrence, recurrencepattern, recurrencerange) ----------------

DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
INDEXES = ["first", "second", "third", "fourth", "last"]
PATTERNS = (
    "daily",
    "weekly",
    "absoluteMonthly",
    "relativeMonthly",
    "absoluteYearly",
    "relativeYearly",
)
RANGES = ("endDate", "noEnd", "numbered")
MAX_OCCURRENCES = 10_000  # a guard, not an Exchange limit


class RecurrenceError(ValueError):
    pass


def validate_recurrence(rec: dict[str, Any]) -> None:
    pattern = rec.get("pattern") or {}
    rng = rec.get("range") or {}
    if pattern.get("type") not in PATTERNS:
        raise RecurrenceError("pattern.type")
    if int(pattern.get("interval") or 0) < 1:
        raise RecurrenceError("pattern.interval")
    if rng.get("type") not in RANGES or not rng.get("startDate"):
        raise RecurrenceError("range")
    if rng["type"] == "endDate" and not rng.get("endDate"):
        raise RecurrenceError("range.endDate")
    if rng["type"] == "numbered" and int(rng.get("numberOfOccurrences") or 0) < 1:
        raise RecurrenceError("range.numberOfOccurrences")
    if pattern["type"] in ("weekly", "relativeMonthly", "relativeYearly") and not pattern.get(
        "daysOfWeek"
    ):
        raise RecurrenceError("pattern.daysOfWeek")


def _add_months(d: dt.date, months: int) -> tuple[int, int]:
    total = d.year * 12 + d.month - 1 + months
    return total // 12, total % 12 + 1


def _relative_day(year: int, month: int, days: list[str], index: str) -> dt.date | None:
    wanted = {DAYS.index(x.lower()) for x in days}
    last = _cal.monthrange(year, month)[1]
    matches = [
        dt.date(year, month, d)
        for d in range(1, last + 1)
        if dt.date(year, month, d).weekday() in wanted
    ]
    if not matches:
        return None
    if index == "last":
        return matches[-1]
    pos = INDEXES.index(index) if index in INDEXES else 0
    return matches[pos] if pos < len(matches) else None


def _absolute_day(year: int, month: int, day: int) -> dt.date | None:
    # *unverified*: a dayOfMonth the month lacks (31 in April) is skipped here.
    return dt.date(year, month, day) if day <= _cal.monthrange(year, month)[1] else None


def _candidates(pattern: dict[str, Any], start: dt.date) -> Iterator[dt.date]:
    """Dates matching the pattern, in order, from the period containing `start`."""
    kind = pattern["type"]
    interval = int(pattern.get("interval") or 1)
    days = [d.lower() for d in pattern.get("daysOfWeek") or []]
    index = str(pattern.get("index") or "first")
    period = 0
    while True:
        step = period * interval
        if kind == "daily":
            yield start + dt.timedelta(days=step)
        elif kind == "weekly":
            first = DAYS.index(str(pattern.get("firstDayOfWeek") or "sunday").lower())
            week0 = start - dt.timedelta(days=(start.weekday() - first) % 7)
            week = week0 + dt.timedelta(weeks=step)
            for offset in range(7):
                day = week + dt.timedelta(days=offset)
                if DAYS[day.weekday()] in days:
                    yield day
        elif kind in ("absoluteMonthly", "relativeMonthly"):
            y, m = _add_months(start, step)
            found = (
                _absolute_day(y, m, int(pattern.get("dayOfMonth") or start.day))
                if kind == "absoluteMonthly"
                else _relative_day(y, m, days, index)
            )
            if found is not None:
                yield found
        else:  # yearly
            y = start.year + step
            month = int(pattern.get("month") or start.month)
            found = (
                _absolute_day(y, month, int(pattern.get("dayOfMonth") or start.day))
                if kind == "absoluteYearly"
                else _relative_day(y, month, days, index)
            )
            if found is not None:
                yield found
        period += 1
        if period > MAX_OCCURRENCES:
            return


def occurrence_dates(rec: dict[str, Any], until: dt.date) -> Iterator[dt.date]:
    """Every occurrence date of a recurrence on or after its range start, up to `until`."""
    pattern, rng = rec["pattern"], rec["range"]
    start = dt.date.fromisoformat(rng["startDate"])
    end = dt.date.fromisoformat(rng["endDate"]) if rng["type"] == "endDate" else None
    limit = int(rng.get("numberOfOccurrences") or 0) if rng["type"] == "numbered" else 0
    count = 0
    for day in _candidates(pattern, start):
        if day < start:
            continue
        if (end is not None and day > end) or day > until:
            return
        yield day
        count += 1
        if (limit and count >= limit) or count >= MAX_OCCURRENCES:
            return
