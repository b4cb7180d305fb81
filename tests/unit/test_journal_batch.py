"""Writes that share a transaction: `Journal.together` and `Batch`, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from coexist.journal import Batch, Journal, UnknownItem, UnknownStep
from coexist.journal import schema as t
from tests import pg

Call = tuple[str, tuple[Any, ...], dict[str, Any]]


@pytest.fixture
def journal(journal_url: str) -> Iterator[Journal]:
    with Journal.open(journal_url) as j:
        yield j


def _fresh(journal_url: str, tmp_path: Path, name: str) -> Journal:
    """An empty journal of the same backend (SQLite: a new file; PostgreSQL: wiped)."""
    if journal_url.startswith("sqlite"):
        return Journal.open(f"sqlite:///{tmp_path / name}")
    pg.reset_database(journal_url)
    return Journal.open(journal_url)


def _earlier_run(j: Journal) -> int:
    """What a journal holds before the calls under test: items, a finished step, a run."""
    earlier = j.start_run("provision", {})
    j.upsert_item("user", "u1", name="One", detail={"source": {"mail": "one@a.example"}})
    j.upsert_item("user", "u2", name="Two", state="ok")
    j.step_started(earlier, "s.old:u1", item_kind="user", item_key="u1", name="s.old", intent={})
    j.step_finished("s.old:u1", status="ok", after={"v": 1}, changed=True)
    return j.start_run("provision", {})


def _calls(run: int) -> list[Call]:
    """Restarts, first starts, outcomes, failures, merges (one a no-op) and an event."""
    start = {"item_kind": "user", "name": "s.read"}
    return [
        ("step_started", (run, "s.old:u1"), {**start, "item_key": "u1", "intent": {"a": 1}}),
        ("step_finished", ("s.old:u1",), {"status": "ok", "before": {"v": 1}, "after": {"v": 1}}),
        ("step_started", (run, "s.read:u1"), {**start, "item_key": "u1", "intent": {"o": None}}),
        ("step_started", (run, "s.read:u2"), {**start, "item_key": "u2", "intent": {"o": [1]}}),
        (
            "step_finished",
            ("s.read:u2",),
            {
                "status": "failed",
                "error_class": "Conflict",
                "error_message": "u2: Bearer abcdefghijkl refused",
                "next_step": "coexist provision",
            },
        ),
        ("step_finished", ("s.read:u1",), {"status": "ok", "detail": {"text": "read"}}),
        ("merge_item", ("user", "u1", {"last_step": "s.read"}), {"target_address": "x@b"}),
        ("merge_item", ("user", "u1", {"last_step": "s.read"}), {"state": "ok"}),
        ("merge_item", ("user", "u2", None), {"state": "ok"}),  # changes nothing
        ("event", (run, "warning", "u2 refused"), {"item_key": "u2", "data": {"n": 2}}),
    ]


def _apply(target: Journal | Batch, calls: list[Call]) -> None:
    for method, args, kwargs in calls:
        getattr(target, method)(*args, **kwargs)


def _state(j: Journal) -> dict[str, Any]:
    """Everything recorded, with the counters the snapshot leaves out."""
    with j.engine.connect() as conn:
        attempts = conn.execute(sa.select(t.steps.c.key, t.steps.c.attempts)).all()
        history = conn.execute(
            sa.select(t.step_history.c.step_key, t.step_history.c.attempt).order_by(
                t.step_history.c.id
            )
        ).all()
    return {
        "snapshot": j.snapshot(include_logs=True),
        "attempts": sorted(attempts),
        "history": history,
    }


def test_a_batch_leaves_the_journal_as_the_same_calls_one_by_one(
    journal_url: str, tmp_path: Path
) -> None:
    """The same calls written as one batch or one transaction each leave identical journals."""
    with _fresh(journal_url, tmp_path, "calls.sqlite") as j:
        _apply(j, _calls(_earlier_run(j)))
        one_by_one = _state(j)
    with _fresh(journal_url, tmp_path, "batch.sqlite") as j:
        batch = Batch()
        _apply(batch, _calls(_earlier_run(j)))
        before = j.get_item("user", "u2")
        assert len(batch) == 10 and j.get_step("s.read:u1") is None  # nothing written yet
        j.write_batch(batch)
        assert _state(j) == one_by_one
        after = j.get_item("user", "u2")
        assert after is not None and before is not None
        assert after["updated_at"] == before["updated_at"]  # the no-op merge wrote nothing


def test_a_batch_that_fails_writes_nothing(journal: Journal) -> None:
    """An unknown step or item fails the whole batch when it is written, and nothing lands."""
    run = _earlier_run(journal)
    before = journal.snapshot(include_logs=True)
    for bad in (
        ("step_finished", ("s.never:u1",), {"status": "ok"}),
        ("merge_item", ("user", "nobody", {"a": 1}), {}),
    ):
        batch = Batch()
        _apply(batch, [*_calls(run), bad])
        with pytest.raises((UnknownStep, UnknownItem)):
            journal.write_batch(batch)
        assert journal.snapshot(include_logs=True) == before


def test_a_batch_checks_each_call_when_it_is_made() -> None:
    """Statuses, secrets, item fields and event levels are refused at the call, as one by one."""
    batch = Batch()
    start = {"item_kind": "user", "item_key": "u1", "name": "s"}
    with pytest.raises(ValueError, match="step status"):
        batch.step_finished("s:u1", status="done")
    with pytest.raises(ValueError, match="secrets never"):
        batch.step_started(None, "s:u1", **start, intent={"password": "x"})
    with pytest.raises(TypeError, match="unknown item fields"):
        batch.merge_item("user", "u1", colour="red")
    with pytest.raises(ValueError, match="event level"):
        batch.event(None, "loud", "x")
    assert len(batch) == 0


def test_get_steps_reads_many_keys_at_once(journal: Journal) -> None:
    """get_steps returns the records that exist, by key, across more keys than one IN list."""
    _earlier_run(journal)
    keys = ["s.old:u1", *(f"s.none:{n}" for n in range(1200))]
    found = journal.get_steps(keys)
    assert list(found) == ["s.old:u1"] and found["s.old:u1"]["status"] == "ok"


def test_together_commits_all_or_nothing(journal: Journal) -> None:
    """Calls inside a together() block land together, see each other, and vanish together."""
    run = _earlier_run(journal)
    with journal.together():
        journal.merge_item("user", "u1", {"mark": 1})
        assert journal.get_item("user", "u1")["detail"]["mark"] == 1  # type: ignore[index]
        with journal.together():  # a nested block joins the outer one
            journal.event(run, "info", "inside")
    assert [e["message"] for e in journal.events(run)] == ["inside"]
    before = journal.snapshot(include_logs=True)
    with pytest.raises(RuntimeError, match="boom"), journal.together():
        journal.merge_item("user", "u1", {"mark": 2})
        journal.event(run, "info", "lost")
        raise RuntimeError("boom")
    assert journal.snapshot(include_logs=True) == before


def test_together_refuses_a_call_from_another_task(journal: Journal) -> None:
    """A block held across an await is refused to the other task rather than joined by it."""
    _earlier_run(journal)
    errors: list[BaseException] = []

    async def other() -> None:
        try:
            journal.merge_item("user", "u2", {"from": "other task"})
        except RuntimeError as exc:
            errors.append(exc)

    async def main() -> None:
        with journal.together():
            journal.merge_item("user", "u1", {"mark": 1})
            await asyncio.create_task(other())

    asyncio.run(main())
    assert len(errors) == 1 and "another task" in str(errors[0])
    assert journal.get_item("user", "u1")["detail"]["mark"] == 1  # type: ignore[index]


def test_together_without_writes_opens_no_transaction(journal: Journal) -> None:
    """A block that only reads leaves no write transaction behind and needs no write lock."""
    _earlier_run(journal)
    opened: list[Any] = []
    sa.event.listen(journal.engine, "begin", opened.append)
    with journal.together():
        assert journal.get_item("user", "u1") is not None
    assert len(opened) == 1  # the read's own transaction, not a write held for the block
