"""A journal that can no longer be written stops the run before its next tenant write (and
an unreachable endpoint stops it without failing any user).

Issue 10: on a full disk, tenant writes went through and then "disk I/O error" came as a
traceback. The journal maps its storage failures to StorageError at its boundary, and the
runner stops every item before its next write once a journal write has failed. Real SQLite
refusals make the journal fail here: `PRAGMA query_only` (SQLITE_READONLY, as a read-only
file gives), a path through a file (ENOTDIR), and a file that is not a database; the full
disk itself is exercised through the CLI (tests/e2e/test_no_tracebacks.py).
"""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa

from coexist.engine.runner import ItemPlan, Runner
from coexist.engine.step import Registry, Step, StepResult
from coexist.errors import StorageError, Unreachable
from coexist.journal import Journal
from coexist.retry import FAIL_FAST
from coexist.tenants.plan import before_write


def make_read_only(journal: Journal) -> None:
    """From now on SQLite refuses every write on this journal's connections, as it does for
    a read-only file (SQLITE_READONLY); the pool is emptied so no connection escapes it."""
    journal.engine.dispose()

    @sa.event.listens_for(journal.engine, "connect")
    def _query_only(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA query_only=1")


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal.open(f"sqlite:///{tmp_path / 'journal.db'}") as j:
        for key in ("alice", "bob", "carol"):
            j.upsert_item("user", key, name=key, source_address=f"{key}@fabrikam.example")
        yield j


# -- the boundary ----------------------------------------------------------------------------
def test_a_refused_journal_write_is_a_storage_error_naming_the_file(
    journal: Journal, tmp_path: Path
) -> None:
    """SQLite's "attempt to write a readonly database" is a StorageError naming the journal,
    the cause and the fix; reads still work; every later write raises it again."""
    make_read_only(journal)
    with pytest.raises(StorageError) as exc:
        journal.upsert_item("user", "dave", name="dave")
    err = exc.value
    assert str(tmp_path / "journal.db") in err.message and "read-only" in err.message
    assert "attempt to write a readonly database" in err.cause
    assert err.next_step is not None and "writable" in err.next_step
    assert err.stops_run and err.exit_code == 1
    assert journal.get_item("user", "alice") is not None  # reading is fine
    with pytest.raises(StorageError):
        journal.check_writable()
    with pytest.raises(StorageError):
        journal.event(0, "info", "a later write")


def test_a_journal_below_a_file_is_a_storage_error(tmp_path: Path) -> None:
    """A journal path through a file fails at open, as a StorageError naming the path."""
    (tmp_path / "project").write_text("not a directory")
    with pytest.raises(StorageError) as exc:
        Journal.open(f"sqlite:///{tmp_path / 'project' / 'journal.db'}")
    assert "a file is where its directory should be" in exc.value.message
    assert exc.value.next_step is not None and "must be a directory" in exc.value.next_step


def test_a_damaged_journal_is_a_storage_error(tmp_path: Path) -> None:
    """A file that is not a SQLite database says so and how to recover."""
    path = tmp_path / "journal.db"
    path.write_bytes(b"this is not a database, it is a text file that replaced it" * 100)
    with pytest.raises(StorageError) as exc:
        Journal.open(f"sqlite:///{path}")
    assert "not a SQLite database" in exc.value.message or "damaged" in exc.value.message
    assert exc.value.next_step is not None and "restore" in exc.value.next_step


def test_the_journal_is_created_owner_only(tmp_path: Path) -> None:
    """journal.db and its -wal and -shm are 0600 (names, addresses, LegacyExchangeDNs)."""
    path = tmp_path / "new" / "journal.db"
    with Journal.open(f"sqlite:///{path}") as journal:
        journal.upsert_item("user", "alice", name="alice")
        files = [path, path.with_name("journal.db-wal"), path.with_name("journal.db-shm")]
        assert all(f.exists() for f in files)
        assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o600}
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_an_older_journal_readable_by_others_is_tightened(tmp_path: Path) -> None:
    """A journal an earlier version left 0644 is made 0600 when opened."""
    path = tmp_path / "journal.db"
    Journal.open(f"sqlite:///{path}").close()
    path.chmod(0o644)
    Journal.open(f"sqlite:///{path}").close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -- the runner stops before the next tenant write --------------------------------------------
@dataclass
class Wall:
    """A tenant whose objects get coats of paint; after `fill_after` writes the disk under
    the journal "fills" (the journal turns read-only)."""

    journal: Journal
    fill_after: int
    writes: list[str] = field(default_factory=list)

    async def paint(self, subject: str) -> None:
        before_write()
        self.writes.append(subject)
        if len(self.writes) == self.fill_after:
            make_read_only(self.journal)
        await asyncio.sleep(0)  # let the other items run between two writes


REGISTRY: Registry[Step] = Registry()


@dataclass(frozen=True)
class CoatsStep(Step):
    """Three coats of paint: three writes in one step."""

    name: ClassVar[str] = "test.coats"


@REGISTRY.register(CoatsStep)
class CoatsExecutor:
    async def observe(self, ctx: Wall, step: CoatsStep) -> None:
        return None

    async def apply(self, ctx: Wall, step: CoatsStep, observed: None) -> StepResult:
        for _ in range(3):
            await ctx.paint(step.subject)
        return StepResult(True, {}, {"coats": 3}, "painted")


def run(journal: Journal, wall: Wall) -> None:
    runner = Runner(
        ctx=wall,
        journal=journal,
        run_id=journal.start_run("test", {}),
        retry=FAIL_FAST,
        next_step="coexist retry",
        steps=REGISTRY,
    )
    items = [ItemPlan("user", k, [CoatsStep(k)], "painted", k) for k in ("alice", "bob", "carol")]
    asyncio.run(runner.run(items, concurrency=3))


def test_a_failed_journal_write_stops_every_item_before_its_next_write(
    journal: Journal,
) -> None:
    """Alice's first coat fills the disk; Bob's `started` record then fails: the run stops
    with that StorageError, and Alice's step, already under way, sends no further coat."""
    wall = Wall(journal, fill_after=1)
    with pytest.raises(StorageError):
        run(journal, wall)
    assert wall.writes == ["alice"]  # nothing after the failed journal write
    alice = journal.get_step(CoatsStep("alice").key)
    assert alice is not None and alice["status"] == "started"  # re-observed by the next run
    assert journal.get_step(CoatsStep("bob").key) is None
    assert journal.get_step(CoatsStep("carol").key) is None


@dataclass(frozen=True)
class UnreachableStep(Step):
    """Observes through an endpoint that does not answer."""

    name: ClassVar[str] = "test.unreachable"


@REGISTRY.register(UnreachableStep)
class UnreachableExecutor:
    async def observe(self, ctx: Wall, step: UnreachableStep) -> None:
        raise Unreachable(
            "the target tenant's Graph at https://127.0.0.1:1: connection refused",
            service="graph",
            endpoint="https://127.0.0.1:1",
            cause="connection refused",
            retryable=False,
        )

    async def apply(self, ctx: Wall, step: UnreachableStep, observed: None) -> StepResult:
        raise AssertionError("never reached")


def test_an_unreachable_endpoint_stops_the_run_and_fails_no_user(journal: Journal) -> None:
    """An endpoint's failure is not the user's: the run ends with it and no user or step is
    recorded failed (status stays as it was; `retry` has nothing wrong to repeat)."""
    runner = Runner(
        ctx=Wall(journal, fill_after=0),
        journal=journal,
        run_id=journal.start_run("test", {}),
        retry=FAIL_FAST,
        next_step="coexist retry",
        steps=REGISTRY,
    )
    items = [ItemPlan("user", k, [UnreachableStep(k)], None, k) for k in ("alice", "bob")]
    with pytest.raises(Unreachable):
        asyncio.run(runner.run(items, concurrency=2))
    assert journal.steps() == []
    assert {i["state"] for i in journal.items(kind="user")} == {None}
