"""The gaps typedlock left (issue 14): `coexist retry` and `coexist batch import` beside a
playbook run holding a batch. Retry goes on with the users of free batches and reports the
held ones per user (exit 2); batch import refuses the whole file, writing nothing, when it
would move users into or out of the held batch. Runs are held still without timing, as in
`tests/e2e/test_playbook_typed.py`: at a checklist the test answers (in-process) or in a
wait until a far-off time (a CLI child).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coexist import commands, playbook
from coexist.engine.runner import set_item
from coexist.errors import Busy
from coexist.journal import Journal
from coexist.sandbox import Sandbox
from coexist.settings import load_project
from tests.e2e.test_playbook_lock import (
    CHECKLIST_THEN_PROVISION,
)
from tests.e2e.test_playbook_typed import runs_of, typed
from tests.e2e.test_playbooks_m365 import BATCH, wave


def users_by_batch(project: Path) -> dict[str, str]:
    """Source address -> batch name ('' for none)."""
    with Journal.open(load_project(project).journal_url) as j:
        return {str(u["source_address"]): str(u.get("batch") or "") for u in j.items(kind="user")}


def fail(project: Path, address: str, command: str = "provision") -> str:
    """Mark a user failed by `command` (what a failed step leaves); its key."""
    with Journal.open(load_project(project).journal_url) as j:
        (item,) = [u for u in j.items(kind="user") if u["source_address"] == address]
        set_item(j, "user", str(item["key"]), state="failed", last_command=command)
        return str(item["key"])


def state_of(project: Path, address: str) -> str | None:
    with Journal.open(load_project(project).journal_url) as j:
        (item,) = [u for u in j.items(kind="user") if u["source_address"] == address]
        return item.get("state")


def test_retry_goes_on_with_free_users_and_names_those_a_run_holds(
    make_project: Callable[..., Path], sandbox: Sandbox, tmp_path: Path
) -> None:
    """While a run on wave1 waits at its checklist, `coexist retry` with a failed user of
    wave1 and one of no batch retries the latter (its provision runs for it alone) and
    reports the former as refused, with the run's PID, host, `kill PID` and resume command;
    the wave1 user stays failed for the run (or a later retry) to take."""
    project = wave(make_project, sandbox, items=1)
    batches = users_by_batch(project)
    inside = sorted(a for a, b in batches.items() if b == BATCH)[0]
    outside = sorted(a for a, b in batches.items() if not b)[0]
    book = tmp_path / "lockdemo.yaml"
    book.write_text(CHECKLIST_THEN_PROVISION)
    seen: dict[str, Any] = {}

    def meanwhile(_question: str) -> bool:
        seen["inside_key"] = fail(project, inside)
        seen["outside_key"] = fail(project, outside)
        before = len(runs_of(project))
        seen["retry"] = typed(lambda: commands.retry(project))
        seen["recorded"] = runs_of(project)[before:]
        seen["states"] = (state_of(project, inside), state_of(project, outside))
        # A run that started after retry looked: the refused command is run again for the
        # users whose batch is free (what retry does on such a Busy).
        late: list[dict[str, Any]] = []
        keys = [seen["inside_key"], seen["outside_key"]]
        items = {k: {"key": k, "batch": b} for k, b in zip(keys, (BATCH, None), strict=True)}
        busy = Busy("held", reason="playbook-run")
        seen["free"] = typed(
            lambda: {
                "keys": commands._still_free(
                    load_project(project), busy, "cutover", keys, items, late
                )
            }
        )["keys"]
        seen["late"] = late
        seen["other"] = commands._still_free(
            load_project(project), Busy("project", reason="writer"), "cutover", keys, items, []
        )
        return True

    first = playbook.run_playbook(project, str(book), batch=BATCH, confirm=meanwhile)
    assert first["ok"], first
    result = seen["retry"]
    (no,) = result["refused"]
    me = f"PID {os.getpid()} on {socket.gethostname()}"
    assert no["user"] == inside and no["key"] == seen["inside_key"], no
    assert no["command"] == "provision" and no["batch"] == BATCH, no
    assert no["reason"] == "playbook-run", no
    assert f"a runbook is in progress: playbook run lockdemo --batch {BATCH} ({me}" in no["error"]
    assert " since " in no["error"] and "UTC, run " in no["error"], no
    assert f"kill {os.getpid()}" in no["next"], no
    assert f"coexist playbook run lockdemo --batch {BATCH}" in no["next"], no
    assert no["holder"]["pid"] == os.getpid() and no["holder"]["playbook_batches"] == [BATCH]
    # The free user was retried, and only it.
    assert result["retried"] == {"provision": 1}, result
    assert not result["results"]["provision"]["failed"], result
    (ran,) = [r for r in seen["recorded"] if r["command"] == "provision"]
    assert ran["args"]["users"] == [seen["outside_key"]], ran
    assert seen["free"] == [seen["outside_key"]], seen["free"]
    assert [(x["key"], x["command"], x["reason"]) for x in seen["late"]] == [
        (seen["inside_key"], "cutover", "playbook-run")
    ], seen["late"]
    assert seen["other"] == [seen["inside_key"], seen["outside_key"]], "a writer's Busy split"
    inside_state, outside_state = seen["states"]
    assert inside_state == "failed" and outside_state != "failed", seen["states"]
