"""Where a user's unfinished prestage / cutover stands, as status says it (issue 10)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coexist.commands import last_ok_run, progress_of, unfinished
from coexist.journal import Journal


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal.open(f"sqlite:///{tmp_path / 'journal.db'}") as j:
        j.upsert_item("user", "u1", source_address="ava@fabrikam.example")
        yield j


def step(journal: Journal, run_id: int, name: str, status: str) -> None:
    key = f"{name}:u1"
    journal.step_started(run_id, key, item_kind="user", item_key="u1", name=name, intent={})
    if status != "started":
        journal.step_finished(key, status=status)


def said(journal: Journal, command: str, *, convert: bool = True) -> str:
    item: dict[str, Any] = journal.get_item("user", "u1") or {}
    after = last_ok_run(journal, command)
    return progress_of(journal, item, journal.passes("u1"), command, after, convert=convert)


def test_prestage_killed_after_licensing_says_licensed_waiting_for_mailbox(
    journal: Journal,
) -> None:
    """A prestage killed once the licence step ended ok shows `prestage: licensed, waiting
    for mailbox`, then each next thing as the steps end; without conversion, the data pass."""
    killed = journal.start_run("prestage")
    journal.merge_item("user", "u1", {"unfinished": "prestage"})
    assert unfinished(journal.get_item("user", "u1") or {}) == "prestage"
    step(journal, killed, "prestage.license", "started")  # killed inside assignLicense
    assert said(journal, "prestage") == "prestage: licensing"
    step(journal, killed, "prestage.license", "ok")
    assert said(journal, "prestage") == "prestage: licensed, waiting for mailbox"
    step(journal, killed, "prestage.mailbox", "waiting")
    assert said(journal, "prestage") == "prestage: licensed, waiting for mailbox"
    step(journal, killed, "prestage.mailbox", "ok")
    step(journal, killed, "prestage.target-forward", "ok")
    assert said(journal, "prestage") == "prestage: forwarding to the source, data pass"
    assert said(journal, "prestage", convert=False) == "prestage: data pass"
    done = journal.pass_started(killed, "u1", "prestage", {})
    journal.pass_finished(done, "ok", {"copied": 1})
    assert said(journal, "prestage") == "prestage: data pass done, recording the result"


def test_cutover_progress_counts_only_what_this_attempt_did(journal: Journal) -> None:
    """A swap recorded by an earlier cutover (since rolled back) and a final pass of an
    earlier, finished cutover are not this attempt's: it still has both to do."""
    earlier = journal.start_run("cutover")
    old = journal.pass_started(earlier, "u1", "cutover", {})
    journal.pass_finished(old, "ok", {})
    step(journal, earlier, "cutover.source-forward", "ok")
    journal.finish_run(earlier, "ok")
    killed = journal.start_run("cutover")
    journal.merge_item("user", "u1", {"unfinished": "cutover"})
    assert said(journal, "cutover") == "cutover: final pass"
    final = journal.pass_started(killed, "u1", "cutover", {})
    journal.pass_finished(final, "ok", {})
    assert said(journal, "cutover") == "cutover: final pass done, forwarding swap"
    step(journal, killed, "cutover.source-forward", "ok")
    assert said(journal, "cutover") == "cutover: forwarding swapped, recording the result"
