"""Engine creation and migrations: the only place that knows which database is behind the URL.

Two backends: a SQLite file (the default, next to the project) and PostgreSQL (teams, many
workers; psycopg 3 driver). Anything else is refused up front.

SQLite settings, and why:

* ``journal_mode=WAL`` - readers never block the writer, and a commit is one append to the
  WAL file: a process killed at any instant leaves either the whole transaction or none of it.
* ``synchronous=NORMAL`` - in WAL mode this is always consistent and every committed transaction
  survives an *application* crash (SIGKILL, OOM kill), because the commit has reached the OS
  before ``COMMIT`` returns; only an OS crash or power loss can lose the last commits (never
  corrupt the file). That is the failure the journal is built for - a command killed mid-run -
  and it avoids an fsync per step. See https://www.sqlite.org/pragma.html#pragma_synchronous
  ("WAL mode is always consistent with synchronous=NORMAL ... Transactions are durable across
  application crashes regardless of the synchronous setting").
  The exception is a write a later pass depends on to recover a tenant write it guards
  (`transaction(durable=True)`: sync's `importing` marks, one per export batch): it
  commits with synchronous=FULL, so an OS crash cannot turn a marked row back into a
  pending one whose copy exists (a duplicate on the next pass).
* ``foreign_keys=ON`` - SQLite ignores declared foreign keys unless asked, per connection.
* pysqlite's own implicit BEGIN is switched off and we emit ``BEGIN IMMEDIATE`` for write
  transactions: the write lock is taken up front, so a read-then-write transaction (upserts,
  ``step_started``) waits on the busy timeout instead of failing with SQLITE_BUSY when another
  process wrote in between. Read-only transactions use a plain deferred ``BEGIN`` (a consistent
  snapshot that never blocks writers). Recipe: SQLAlchemy docs, "Serializable isolation /
  Savepoints / Transactional DDL" in the SQLite dialect page.

Storage failures are mapped here, at the journal's boundary, to `StorageError` (disk full,
read-only file or directory, no permission, I/O error, a damaged file): SQLite's and
PostgreSQL's errors and the OSError of creating the file. A failed write also marks the
engine broken: every later write (and `check_writable`, which the runner calls before each
tenant write) raises the same error, so a run stops before its next tenant write instead of
writing to a tenant what it can no longer journal.

A SQLite journal is created owner-only (0600; SQLite gives its -wal and -shm files the
database file's mode): it holds names, addresses and LegacyExchangeDNs.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from coexist.errors import StorageError
from coexist.files import FILE_MODE, create_private, private_dir

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
DEFAULT_FILENAME = "journal.sqlite"
SUPPORTED = ("sqlite", "postgresql")

# Execution option that marks a connection's transactions as writes (BEGIN IMMEDIATE on SQLite).
WRITE_OPTION = "coexist_journal_write"
# A write whose commit must survive an OS crash or power loss too (see `transaction`).
DURABLE_OPTION = "coexist_journal_durable"
# pg_advisory_xact_lock key that serialises concurrent migrations of one PostgreSQL database.
_PG_MIGRATION_LOCK = 0x636F6578  # "coex"
# Seconds a SQLite writer waits for another process's write lock before giving up.
_SQLITE_BUSY_TIMEOUT_S = 30.0

# What a storage failure means, by SQLite's primary result code (sqlite3 exposes the name as
# `sqlite_errorname`; https://www.sqlite.org/rescode.html), by OSError errno, and by
# PostgreSQL SQLSTATE (class 53 "insufficient resources", 25006 read-only transaction, 58030
# I/O error; PostgreSQL docs, Appendix A "Error Codes").
_FULL, _READ_ONLY, _IO, _DAMAGED, _PATH = "full", "read-only", "io", "damaged", "path"
_SQLITE_CODES = {
    "SQLITE_FULL": (_FULL, "the disk is full"),
    "SQLITE_IOERR": (_IO, "an I/O error (a full disk, or a failing device)"),
    "SQLITE_READONLY": (_READ_ONLY, "the file or its directory is read-only"),
    "SQLITE_CANTOPEN": (_READ_ONLY, "it cannot be opened (its directory is read-only or missing)"),
    "SQLITE_PERM": (_READ_ONLY, "permission denied"),
    "SQLITE_CORRUPT": (_DAMAGED, "the file is damaged"),
    "SQLITE_NOTADB": (_DAMAGED, "the file is not a SQLite database"),
}
_ERRNOS = {
    errno.ENOSPC: (_FULL, "the disk is full"),
    errno.EDQUOT: (_FULL, "the disk quota is exceeded"),
    errno.EFBIG: (_FULL, "the file reached the size limit (ulimit -f)"),
    errno.EROFS: (_READ_ONLY, "the file system is read-only"),
    errno.EACCES: (_READ_ONLY, "permission denied"),
    errno.EPERM: (_READ_ONLY, "operation not permitted"),
    errno.EIO: (_IO, "an I/O error (a failing device)"),
    errno.ENOTDIR: (_PATH, "a part of its path is not a directory"),
    errno.EEXIST: (_PATH, "a file is where its directory should be"),
    errno.EISDIR: (_PATH, "it is a directory"),
}
_SQLSTATES = {
    "53100": (_FULL, "the database server's disk is full"),
    "53200": (_FULL, "the database server is out of memory"),
    "25006": (_READ_ONLY, "the database is read-only (a standby server?)"),
    "58030": (_IO, "an I/O error on the database server"),
}
# Engines whose journal failed a write: the error every later write raises again.
_broken: weakref.WeakKeyDictionary[Engine, StorageError] = weakref.WeakKeyDictionary()


def _meaning(exc: BaseException) -> tuple[str, str, str] | None:
    """(kind, reason, raw text) of a storage failure; None for any other error."""
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    raw = str(orig).strip() or type(orig).__name__
    name = getattr(orig, "sqlite_errorname", None)
    if isinstance(name, str):
        found = _SQLITE_CODES.get(name) or next(
            (v for k, v in _SQLITE_CODES.items() if name.startswith(k + "_")), None
        )
        return (*found, raw) if found else None
    state = getattr(orig, "sqlstate", None)
    if isinstance(state, str) and state in _SQLSTATES:
        return (*_SQLSTATES[state], raw)
    if isinstance(orig, OSError) and orig.errno in _ERRNOS:
        return (*_ERRNOS[orig.errno], raw)
    return None


def _where(url: URL) -> str:
    if url.get_backend_name() == "sqlite":
        return str(url.database or ":memory:")
    return url.render_as_string(hide_password=True)


def _next_step(kind: str, url: URL) -> str:
    again = "then run the command again (it re-observes the steps that were under way)"
    if url.get_backend_name() != "sqlite":
        return f"ask the database administrator to fix the journal database; {again}"
    folder = Path(str(url.database)).parent
    return {
        _FULL: f"free space on the disk that holds {folder} (or raise its quota); {again}",
        _READ_ONLY: f"make {folder} and the journal in it writable by this user (SQLite also "
        f"creates journal.db-wal and journal.db-shm beside it), or work on a writable copy "
        f"of the project; {again}",
        _IO: f"check the disk that holds {folder} (free space, `dmesg`); {again}",
        _DAMAGED: f"restore the journal in {folder} from a copy (coexist never edits it by "
        "hand); the tenants are unchanged by this failure",
        _PATH: f"check the project directory and [project] journal: {folder} must be a "
        "directory holding the journal file",
    }[kind]


def storage_error(exc: BaseException, url: URL, *, write: bool) -> StorageError | None:
    """The StorageError for a failure of the journal's storage; None for anything else."""
    meaning = _meaning(exc)
    if meaning is None:
        return None
    kind, reason, raw = meaning
    where = _where(url)
    verb = "written" if write else "opened or read"
    return StorageError(
        f"the journal {where} could not be {verb}: {reason} ({raw})",
        path=where,
        cause=raw,
        kind=kind,
        next_step=_next_step(kind, url),
    )


def check_writable(engine: Engine) -> None:
    """Raise the StorageError of an earlier failed write to this journal, if there was one."""
    error = _broken.get(engine)
    if error is not None:
        # A new error each time (one instance raised from many tasks would pile up their
        # tracebacks); `from` keeps the original write's.
        raise StorageError(
            error.message,
            path=error.path,
            cause=error.cause,
            kind=error.fields.get("kind"),
            next_step=error.next_step,
        ) from error


@contextmanager
def storage_boundary(engine: Engine, *, write: bool) -> Iterator[None]:
    """Map storage failures inside the block to StorageError (and mark a failed write)."""
    try:
        yield
    except (sa.exc.DBAPIError, OSError) as exc:
        error = storage_error(exc, engine.url, write=write)
        if error is None:
            raise
        if write:
            _broken[engine] = error
        raise error from exc


def _create_private(path: Path) -> None:
    """Create the SQLite file owner-only before SQLite does (SQLite would follow the umask);
    tighten an existing journal an earlier version created readable by others."""
    private_dir(path.parent)
    create_private(path)
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            info = file.stat()
            if info.st_mode & 0o077 and info.st_uid == os.geteuid():
                file.chmod(FILE_MODE)
        except OSError:  # not there, or not ours to change: SQLite reports what matters
            pass


def _set_wal(cursor: Any) -> None:
    """Switch to WAL, retrying while another process holds the file.

    Changing the journal mode needs an exclusive lock, and SQLite can answer
    SQLITE_BUSY for it without consulting the busy timeout when several processes
    open a new journal at once (seen in test_concurrent_first_opens_of_a_sqlite_file).
    """
    deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def default_url(project_dir: str | Path) -> str:
    """The journal URL for a project that did not configure one: a SQLite file inside it."""
    return sqlite_url(Path(project_dir) / DEFAULT_FILENAME)


def sqlite_url(path: str | Path) -> str:
    return URL.create("sqlite", database=str(Path(path).resolve())).render_as_string()


def normalize_url(url: str) -> URL:
    """Parse a journal URL; a bare path means a SQLite file, ``postgresql://`` means psycopg 3."""
    if "://" not in url:
        return make_url(sqlite_url(url))
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED:
        raise ValueError(f"journal URL {parsed!r}: only sqlite and postgresql are supported")
    if parsed.drivername in ("postgresql", "postgres"):
        # SQLAlchemy's default PostgreSQL driver is psycopg2; we ship psycopg 3.
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(url: str) -> Engine:
    """The one place engines are created (pool, pragmas, transaction mode per backend)."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        try:
            return _sqlite_engine(parsed)
        except OSError as exc:  # creating the directory or the file
            error = storage_error(exc, parsed, write=True)
            if error is None:
                raise
            raise error from exc
    # pool_pre_ping: a long migration run outlives server restarts and idle-connection reaping.
    return sa.create_engine(parsed, pool_pre_ping=True)


def _sqlite_engine(url: URL) -> Engine:
    in_memory = url.database in (None, "", ":memory:")
    if in_memory:
        # One shared connection, or every checkout would see a new empty database.
        engine = sa.create_engine(
            url, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        _create_private(Path(str(url.database)))
        engine = sa.create_engine(url, connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_S})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
        cursor = dbapi_conn.cursor()
        if not in_memory:
            _set_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        # synchronous=FULL for a durable write only: in WAL mode SQLite then syncs the WAL at
        # its commit (sqlite.org/pragma.html#pragma_synchronous). Set outside a transaction,
        # and only when it changes (the pragma stays with the connection).
        level = "FULL" if options.get(DURABLE_OPTION, False) else "NORMAL"
        if conn.info.get("synchronous", "NORMAL") != level:
            conn.exec_driver_sql(f"PRAGMA synchronous={level}")
            conn.info["synchronous"] = level
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(WRITE_OPTION, False) else "BEGIN")

    return engine


@contextmanager
def transaction(engine: Engine, *, write: bool, durable: bool = False) -> Iterator[Connection]:
    """One short transaction: committed on success, rolled back on any exception. A storage
    failure raises StorageError; after a failed write, every write raises it again.

    `durable`: the commit survives an OS crash or power loss too, not only the process's
    death (SQLite: synchronous=FULL for it; PostgreSQL commits are durable already, its
    synchronous_commit default). For a mark written before a tenant write that the mark
    alone lets a later pass recover (sync's `importing`): lost in a power cut, the row would
    read as never started while its copy exists."""
    if write:
        check_writable(engine)
    with storage_boundary(engine, write=write), engine.connect() as conn:
        if write:
            conn.execution_options(**{WRITE_OPTION: True, DURABLE_OPTION: durable})
        with conn.begin():
            yield conn


def alembic_config() -> Config:
    """Alembic configuration without an alembic.ini: the scripts ship inside the package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise RuntimeError("journal migrations have no head revision")
    return head


def current_revision(engine: Engine) -> str | None:
    with storage_boundary(engine, write=False), engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Bring the database to the newest schema, in one transaction.

    DDL is transactional on both backends, so a process killed mid-migration leaves the old
    schema. Concurrent openers are serialised: SQLite by BEGIN IMMEDIATE, PostgreSQL by an
    advisory lock held until commit; the second one finds the schema at head and does nothing.
    """
    cfg = alembic_config()
    with transaction(engine, write=True) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
