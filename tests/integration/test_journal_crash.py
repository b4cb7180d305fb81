"""The journal stays consistent when its writer is SIGKILLed at any moment.

A writer process (tests/journal_crash_writer.py) records copy steps like a data mover; the test
kills it again and again - at chosen SQL statements (inside transactions and during the first
migration), between journal calls, and at seeded random times - reopening the journal after
every kill and checking the invariants the product relies on.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from coexist.journal import Journal, head_revision
from coexist.journal import schema as t
from tests.journal_crash_writer import CHECKPOINT_KIND, FOLDER, ITEM, step_key

REPO = Path(__file__).resolve().parents[2]
WRITER = REPO / "tests" / "journal_crash_writer.py"


def _kill_plan(seed: int, rounds: int) -> list[str]:
    """Seeded kill points: a kill during the first migration, then a mix of the other kinds."""
    rng = random.Random(seed)
    plan = [f"open:{rng.randint(2, 12)}"]
    for index in range(rounds):
        kind = ("stmt", "op", "time")[index % 3]
        if kind == "stmt":
            plan.append(f"stmt:{rng.randint(1, 80)}")
        elif kind == "op":
            plan.append(f"op:{rng.randint(4, 40)}")  # >= 4: past the resumed step_started + warning
        else:
            plan.append(f"time:{rng.uniform(0.01, 0.2):.3f}")
    return plan


def _run_writer(url: str, kill: str | None, tmp_path: Path, limit: int | None = None) -> None:
    """Run the writer once; it ends killed (by itself or by us) unless `kill` is None."""
    args = [sys.executable, str(WRITER), url]
    if kill and not kill.startswith("time:"):
        args += ["--die", kill]
    if limit is not None:
        args += ["--limit", str(limit)]
    with (tmp_path / "writer.err").open("w+") as err:
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None
        if kill and kill.startswith("time:"):
            if proc.stdout.readline().strip() == "ready":
                time.sleep(float(kill.partition(":")[2]))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        proc.stdout.read()
        code = proc.wait(timeout=60)
        proc.stdout.close()
        err.seek(0)
        expected = 0 if kill is None else -signal.SIGKILL
        assert code == expected, f"writer ({kill}) exited {code}:\n{err.read()}"


def _rows(journal: Journal, table: sa.Table) -> list[dict[str, Any]]:
    with journal.engine.connect() as conn:
        return [
            dict(r._mapping) for r in conn.execute(sa.select(table).order_by(*table.primary_key))
        ]


def _check(url: str) -> dict[str, Any]:
    """Reopen the journal and assert every invariant; return what was found."""
    with Journal.open(url) as journal:
        assert journal.revision() == head_revision()
        if url.startswith("sqlite"):
            with journal.engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        steps = _rows(journal, t.steps)
        history = _rows(journal, t.step_history)
        item = journal.get_item("user", ITEM)
        checkpoint = journal.get_checkpoint(ITEM, FOLDER, CHECKPOINT_KIND)
        warnings = journal.events(level="warning")

    # Steps: at most the one in flight is 'started', and it is the newest; the rest are ok and
    # carry exactly what the writer recorded. UIDs are contiguous from 0.
    uids = [int(s["key"].rsplit(":", 1)[1]) for s in steps]
    assert uids == list(range(len(steps)))
    started = [s for s in steps if s["status"] == "started"]
    assert len(started) <= 1
    if started:
        assert started[0]["key"] == step_key(len(steps) - 1)
    for uid, step in zip(uids, steps, strict=True):
        assert step["intent"] == {"uid": uid}
        if step["status"] == "ok":
            assert step["before"] == {"uid": uid, "copied": False}
            assert step["after"] == {"uid": uid, "copied": True}
            assert step["changed"] is True
        else:
            assert step["status"] == "started" and step["before"] is None

    # History: no orphans; every step's transitions start with 'started', end in its current
    # status, and count its attempts.
    by_id = {s["id"]: s for s in steps}
    assert {h["step_id"] for h in history} <= set(by_id)
    for step in steps:
        own = [h for h in history if h["step_id"] == step["id"]]
        assert own and own[0]["status"] == "started"
        assert own[-1]["status"] == step["status"]
        assert sum(h["status"] == "started" for h in own) == step["attempts"]

    # Checkpoint never ahead of what it covers: watermark <= item progress <= last recorded
    # step. A kill after the item's progress but before the checkpoint makes the next run
    # redo that step, so the newest step may be 'started' again while the item already
    # counts it: it must then be exactly the step right after the checkpoint.
    ok = [u for u, s in zip(uids, steps, strict=True) if s["status"] == "ok"]
    done = max(ok) if ok else -1
    rerun = [int(s["key"].rsplit(":", 1)[1]) for s in started]
    if checkpoint is not None:
        watermark = int(checkpoint["watermark"])
        assert item is not None
        progress = item["detail"]["copied_through"]
        assert watermark <= progress
        assert progress <= done or (rerun == [progress] and progress == watermark + 1)
    elif item is not None and item["detail"]:
        assert item["detail"]["copied_through"] <= max([done, *rerun])
    return {"steps": steps, "started": started, "warnings": warnings}


def _crash_loop(url: str, tmp_path: Path, seed: int, rounds: int) -> None:
    resumed_expected: set[str] = set()
    for kill in _kill_plan(seed, rounds):
        _run_writer(url, kill, tmp_path)
        found = _check(url)
        warned = {e["step_key"] for e in found["warnings"]}
        # A step left 'started' by an earlier kill is seen as such on the next run (the
        # writer logs a warning when step_started hands back a 'started' record).
        if kill.startswith("op:"):
            assert resumed_expected <= warned
        resumed_expected = {s["key"] for s in found["started"]}
    # Finally a run without a kill completes, resuming whatever the last kill left.
    done = len(_check(url)["steps"]) + 3
    _run_writer(url, None, tmp_path, limit=done)
    found = _check(url)
    assert [s["status"] for s in found["steps"]] == ["ok"] * done


def test_sqlite_journal_survives_sigkill_anywhere(tmp_path: Path) -> None:
    """SQLite: after SIGKILLs mid-migration, mid-transaction and between calls, all invariants hold."""
    url = f"sqlite:///{tmp_path / 'journal.sqlite'}"
    _crash_loop(url, tmp_path, seed=20261122, rounds=9)


def test_postgres_journal_survives_sigkill_anywhere(pg_url: str, tmp_path: Path) -> None:
    """PostgreSQL: a killed client's open transaction vanishes; the invariants hold after each kill."""
    from tests import pg

    pg.reset_database(pg_url)
    _crash_loop(pg_url, tmp_path, seed=7, rounds=4)


@pytest.mark.parametrize("kill", ["op:1", "op:2", "op:3"])
def test_kill_right_after_step_started_leaves_started(tmp_path: Path, kill: str) -> None:
    """A kill between 'started' and 'ok' leaves exactly that step 'started', and a re-run resumes it."""
    url = f"sqlite:///{tmp_path / 'journal.sqlite'}"
    _run_writer(url, None, tmp_path, limit=2)
    # ops: start_run, upsert_item, then step_started of uid 2 is op 3.
    _run_writer(url, kill, tmp_path)
    found = _check(url)
    if kill == "op:3":
        assert [s["key"] for s in found["started"]] == [step_key(2)]
        _run_writer(url, None, tmp_path, limit=3)
        assert {e["step_key"] for e in _check(url)["warnings"]} == {step_key(2)}
    else:
        assert found["started"] == []
