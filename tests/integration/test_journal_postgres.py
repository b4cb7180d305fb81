"""The journal on a real PostgreSQL server: drivers, time zones, concurrency, lost connections."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import quote

import psycopg
import pytest
import sqlalchemy as sa

from coexist.journal import Journal, head_revision
from tests import pg


@pytest.fixture
def url(pg_url: str) -> str:
    pg.reset_database(pg_url)
    return pg_url


def _in_threads(count: int, work: Callable[[int], None]) -> None:
    """Run work(i) in `count` threads at once; re-raise the first failure."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(index: int) -> None:
        try:
            barrier.wait()
            work(index)
        except BaseException as exc:  # re-raised in the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def test_plain_postgresql_url_uses_psycopg3(url: str) -> None:
    """A postgresql:// URL without a driver opens with psycopg 3 (psycopg2 is not shipped)."""
    plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with Journal.open(plain) as journal:
        assert journal.engine.dialect.driver == "psycopg"
        assert journal.revision() == head_revision()


def test_timestamps_are_utc_whatever_the_session_time_zone(url: str) -> None:
    """A server session in Tokyo time still yields aware UTC datetimes for the same instant."""
    tokyo = url + "?options=" + quote("-c timezone=Asia/Tokyo")
    before = datetime.now(UTC)
    with Journal.open(tokyo) as journal:
        with journal.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW timezone").scalar() == "Asia/Tokyo"
        run = journal.start_run("discover", {})
        journal.finish_run(run, "ok")
        (row,) = journal.runs()
    after = datetime.now(UTC)
    assert row["started_at"].tzinfo is UTC
    assert before <= row["started_at"] <= row["finished_at"] <= after


def test_concurrent_first_opens_migrate_once(url: str) -> None:
    """Six workers opening an empty database at once all succeed (advisory lock serialises them)."""

    def open_and_close(_index: int) -> None:
        with Journal.open(url) as journal:
            assert journal.revision() == head_revision()

    _in_threads(6, open_and_close)


def test_concurrent_upserts_of_new_items_make_one_row_each(url: str) -> None:
    """Eight workers upserting the same new keys never hit the unique constraint."""
    Journal.open(url).close()

    def upsert(index: int) -> None:
        with Journal.open(url) as journal:
            for n in range(15):
                journal.upsert_item("user", f"u{n}", name=f"User {n}", batch=f"b{index % 2}")

    _in_threads(8, upsert)
    with Journal.open(url) as journal:
        assert [i["key"] for i in journal.items()] == sorted(f"u{n}" for n in range(15))


def test_journal_survives_server_dropping_its_connections(url: str) -> None:
    """After the server terminates every journal connection, the next call reconnects (pre-ping)."""
    plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with Journal.open(url) as journal:
        journal.set_setting("before", 1)
        with psycopg.connect(plain, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        journal.set_setting("after", 2)
        assert (journal.get_setting("before"), journal.get_setting("after")) == (1, 2)


def test_json_columns_hold_json(url: str) -> None:
    """PostgreSQL stores the JSON columns as json, queryable by the server."""
    with Journal.open(url) as journal:
        journal.upsert_item("user", "u1", detail={"aliases": ["a", "b"]})
        with journal.engine.connect() as conn:
            first = conn.execute(sa.text("SELECT detail->'aliases'->>0 FROM items")).scalar()
    assert first == "a"
