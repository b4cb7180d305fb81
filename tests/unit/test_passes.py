"""Data passes: how a pass is journaled whatever its mover does."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from coexist.engine.context import Context
from coexist.engine.runner import ItemPlan, Runner
from coexist.engine.step import registry
from coexist.errors import ConfigError, TransientError
from coexist.journal import Journal
from coexist.migrate.passes import (
    FINAL_PASS_KEPT_FOR,
    MOVERS,
    DataPassStep,
    PassResult,
    Window,
    finished_pass,
    mover_for,
    run_pass,
)
from coexist.migrate.stores.graph_io import EXPORT_BATCH, EXPORT_BYTES
from coexist.migrate.sync import Job, batches
from coexist.retry import FAIL_FAST


class Exploding:
    async def run(self, ctx: Context, subject: str, kind: str, window: Window) -> PassResult:
        raise TransientError("Graph: connection failed", service="graph")


def test_a_pass_whose_mover_raises_is_journaled_failed(tmp_path: Path) -> None:
    """A mover that raises leaves its pass `failed`, never `running` in `coexist status`."""
    MOVERS["exploding"] = Exploding()
    project: Any = SimpleNamespace(migration=SimpleNamespace(mover="exploding"))
    with Journal.open(f"sqlite:///{tmp_path / 'j.db'}") as journal:
        ctx = Context(project, journal, None, None, run_id=journal.start_run("test"))  # type: ignore[arg-type]
        with pytest.raises(TransientError):
            asyncio.run(run_pass(ctx, "u1", "prestage", Window()))
        [row] = journal.passes("u1")
    del MOVERS["exploding"]
    assert row["status"] == "failed" and row["finished_at"] is not None


def job(size: int) -> Job:
    return Job({"source_item_id": str(size), "size": size}, "dest")


def _batches(jobs: list[Job]) -> list[list[Job]]:
    """The import/export store's export batches."""
    return list(batches(jobs, EXPORT_BATCH, EXPORT_BYTES))


def test_export_batches_are_capped_by_count_and_bytes() -> None:
    """Small items go 20 to an export; large ones a few at a time; an oversize one alone."""
    small = [len(b) for b in _batches([job(1000)] * 45)]
    assert small == [EXPORT_BATCH, EXPORT_BATCH, 5]
    quarter = EXPORT_BYTES // 4
    large = [len(b) for b in _batches([job(quarter)] * 10)]
    assert large == [4, 4, 2]
    huge = [len(b) for b in _batches([job(1), job(EXPORT_BYTES * 3), job(1)])]
    assert huge == [1, 1, 1]


def test_window_bounds_combine() -> None:
    """older-than and until both cap the window (the earlier wins); since is inclusive."""
    now = datetime(2024, 6, 1, tzinfo=UTC)
    w = Window(
        older_than=timedelta(days=90),
        since=datetime(2024, 1, 1, tzinfo=UTC),
        until=datetime(2024, 5, 1, tzinfo=UTC),
    )
    assert w.cutoff(now) == now - timedelta(days=90)
    assert w.contains(datetime(2024, 1, 1, tzinfo=UTC), now)
    assert not w.contains(datetime(2023, 12, 31, tzinfo=UTC), now)
    assert not w.contains(now - timedelta(days=90), now)
    assert w.contains(None, now)  # an item without a date is never left out
    assert Window().contains(now, now)


def test_a_pass_finished_by_an_interrupted_run_is_not_started_again(tmp_path: Path) -> None:
    """A resumed run keeps a pass of its kind and window that ended ok since the command
    last ended ok (killed runs in between), and runs any other: one that ran before, one of
    another window, one that did not end ok, and a final pass too old to stand for this run
    (mail the source received since would be left behind by the swap)."""
    project: Any = SimpleNamespace(migration=SimpleNamespace(mover="graph-import-export"))
    with Journal.open(f"sqlite:///{tmp_path / 'j.db'}") as journal:
        ended_ok = journal.start_run("cutover")
        journal.finish_run(ended_ok, "ok")
        killed = journal.start_run("cutover")  # left 'running', as a SIGKILL leaves it
        ok = journal.pass_started(killed, "u1", "cutover", Window().to_dict())
        journal.pass_finished(ok, "ok", {"copied": 3})
        waiting = journal.pass_started(killed, "u2", "cutover", Window().to_dict())
        journal.pass_finished(waiting, "waiting")
        ctx = Context(project, journal, None, None, run_id=journal.start_run("cutover"))  # type: ignore[arg-type]

        def kept(subject: str, after: int | None, **window: Any) -> dict[str, Any] | None:
            step = DataPassStep(subject=subject, kind="cutover", resume_after=after, **window)
            return finished_pass(ctx, step)

        assert (kept("u1", ended_ok) or {}).get("id") == ok
        assert kept("u1", killed) is None  # the pass ran before the last run that ended ok
        assert kept("u1", None) is None  # not resuming: always run
        assert kept("u1", ended_ok, until="2024-01-01T00:00:00+00:00") is None
        assert kept("u2", ended_ok) is None
        later = datetime.now(UTC) + FINAL_PASS_KEPT_FOR + timedelta(minutes=1)
        stale = DataPassStep(subject="u1", kind="cutover", resume_after=ended_ok)
        assert finished_pass(ctx, stale, now=later) is None


def test_a_pass_finished_by_a_run_killed_before_its_step_record_is_recorded_ok(
    tmp_path: Path,
) -> None:
    """A run killed after its pass ended ok but before the pass step's record (left
    `started`): the next run records the step ok from the finished pass, with what it
    observed in the journal as JSON (the pass row's datetimes made it an internal error)."""
    project: Any = SimpleNamespace(migration=SimpleNamespace(mover="graph-import-export"))
    with Journal.open(f"sqlite:///{tmp_path / 'j.db'}") as journal:
        ended_ok = journal.start_run("cutover")
        journal.finish_run(ended_ok, "ok")
        killed = journal.start_run("cutover")
        journal.upsert_item("user", "u1")
        step = DataPassStep(subject="u1", kind="cutover", resume_after=ended_ok)
        journal.step_started(
            killed, step.key, item_kind="user", item_key="u1", name=step.name, intent={}
        )
        done = journal.pass_started(killed, "u1", "cutover", Window().to_dict())
        journal.pass_finished(done, "ok", {"copied": 3})
        run_id = journal.start_run("cutover")
        ctx = Context(project, journal, None, None, run_id=run_id)  # type: ignore[arg-type]
        runner = Runner(
            ctx=ctx,
            journal=journal,
            run_id=run_id,
            retry=FAIL_FAST,
            next_step="coexist cutover",
            steps=registry,
        )
        [outcome] = asyncio.run(runner.run([ItemPlan("user", "u1", [step], "cut-over", "u1")]))
        record = journal.get_step(step.key)
    assert outcome.status == "ok" and not outcome.changed, outcome
    assert record is not None and record["status"] == "ok"
    assert record["after"] == {"copied": 3}
    assert record["intent"]["observed"]["pass_id"] == done


@pytest.mark.parametrize("mover", ["graph-import-export", "graph-items"])
def test_a_mover_is_refused_for_kinds_it_does_not_move_between(mover: str) -> None:
    """A Graph mover on an IMAP source is a ConfigError on migration.mover naming both
    kinds; `none` serves any pair; m365 -> m365 gets the registered mover."""

    def ctx(mover: str, source: str) -> Context:
        project: Any = SimpleNamespace(
            migration=SimpleNamespace(mover=mover),
            source=SimpleNamespace(kind=source),
            target=SimpleNamespace(kind="m365"),
            file="/p/project.toml",
        )
        return Context(project, None, None, None)  # type: ignore[arg-type]

    with pytest.raises(ConfigError) as info:
        mover_for(ctx(mover, "imap"))
    assert info.value.fields["key"] == "migration.mover"
    assert "does not move imap -> m365" in str(info.value)
    assert mover_for(ctx("none", "imap")) is MOVERS["none"]
    assert mover_for(ctx(mover, "m365")) is MOVERS[mover]
