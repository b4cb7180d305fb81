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
* ``foreign_keys=ON`` - SQLite ignores declared foreign keys unless asked, per connection.
* pysqlite's own implicit BEGIN is switched off and we emit ``BEGIN IMMEDIATE`` for write
  transactions: the write lock is taken up front, so a read-then-write transaction (upserts,
  ``step_started``) waits on the busy timeout instead of failing with SQLITE_BUSY when another
  process wrote in between. Read-only transactions use a plain deferred ``BEGIN`` (a consistent
  snapshot that never blocks writers). Recipe: SQLAlchemy docs, "Serializable isolation /
  Savepoints / Transactional DDL" in the SQLite dialect page.
"""

from __future__ import annotations

import sqlite3
import time
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

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
DEFAULT_FILENAME = "journal.sqlite"
SUPPORTED = ("sqlite", "postgresql")

# Execution option that marks a connection's transactions as writes (BEGIN IMMEDIATE on SQLite).
WRITE_OPTION = "coexist_journal_write"
# pg_advisory_xact_lock key that serialises concurrent migrations of one PostgreSQL database.
_PG_MIGRATION_LOCK = 0x636F6578  # "coex"
# Seconds a SQLite writer waits for another process's write lock before giving up.
_SQLITE_BUSY_TIMEOUT_S = 30.0


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
        return _sqlite_engine(parsed)
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
        Path(str(url.database)).parent.mkdir(parents=True, exist_ok=True)
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
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


@contextmanager
def transaction(engine: Engine, *, write: bool) -> Iterator[Connection]:
    """One short transaction: committed on success, rolled back on any exception."""
    with engine.connect() as conn:
        if write:
            conn.execution_options(**{WRITE_OPTION: True})
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
    with engine.connect() as conn:
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
