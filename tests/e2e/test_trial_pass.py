"""`coexist prestage --trial` against the sandbox (graph-import-export): the newest items
of each folder in the last [trial] days, shown as a trial pass in status, copied once, and
the later passes copy the rest without copying them again."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

from coexist import commands
from coexist.errors import InputError
from coexist.sandbox import Sandbox
from tests.e2e.conftest import TEST_RETRY
from tests.e2e.test_graph_mover import by_subject, cutover, last_counts, prestage, provisioned

NOW = dt.datetime.now(dt.UTC)


def test_trial_then_prestage_and_cutover_copy_each_item_once(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """A trial of 2 items per folder copies the 2 newest recent messages; status says trial;
    a second trial copies 0; pre-stage takes the old one, cutover the last recent one."""
    w = provisioned(make_project, sandbox, **{"trial.items": 2})
    for days in (1, 2, 3):
        w.put(["Inbox"], f"recent {days}d", received=NOW - dt.timedelta(days=days))
    w.put(["Inbox"], "old", received=NOW - dt.timedelta(days=400))
    who = [str(w.user["source_address"])]
    with pytest.raises(InputError, match="--trial"):
        commands.prestage(w.project, users=who, trial=True, older_than="90d", retry=TEST_RETRY)
    commands.prestage(w.project, users=who, trial=True, retry=TEST_RETRY)
    assert sorted(by_subject(w.items("target"))) == ["recent 1d", "recent 2d"]
    row = commands.status(w.project, user=who[0])["users"][0]
    assert row["data_passes"]["last_kind"] == "trial" and "last: trial ok" in row["data"]
    commands.prestage(w.project, users=who, trial=True, retry=TEST_RETRY)
    assert last_counts(w).get("copied", 0) == 0
    prestage(w)
    assert last_counts(w)["copied"] == 1
    cutover(w)
    assert last_counts(w)["copied"] == 1
    target = by_subject(w.items("target"))
    assert sorted(target) == ["old", "recent 1d", "recent 2d", "recent 3d"]
    assert all(len(copies) == 1 for copies in target.values())
