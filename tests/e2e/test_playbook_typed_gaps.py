"""The gaps typedlock left (issue 14): `coexist retry` and `coexist batch import` beside a
playbook run holding a batch. Retry goes on with the users of free batches and reports the
held ones per user (exit 2); batch import refuses the whole file, writing nothing, when it
would move users into or out of the held batch. Runs are held still without timing, as in
`tests/e2e/test_playbook_typed.py`: at a checklist the test answers (in-process) or in a
wait until a far-off time (a CLI child).
"""

from __future__ import annotations

import os
import signal
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
    WAIT_THEN_STATUS,
    cli_json,
    start_run,
)
from tests.e2e.test_playbook_typed import cli_text, refused, runs_of, typed
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


def test_batch_import_into_or_out_of_a_held_batch_is_refused_whole(
    make_project: Callable[..., Path], sandbox: Sandbox, tmp_path: Path
) -> None:
    """While a run on wave1 waits at its checklist: a CSV moving a user into wave1, or one
    moving a wave1 user out (beside a row for another batch), is refused whole, naming the
    run and the users, and nothing of it is recorded; a CSV of users outside wave1 goes
    ahead."""
    project = wave(make_project, sandbox, items=1)
    batches = users_by_batch(project)
    inside = sorted(a for a, b in batches.items() if b == BATCH)[0]
    free = sorted(a for a, b in batches.items() if not b)
    (project / "into.csv").write_text(f"Source Email,Batch\n{free[0]},{BATCH}\n")
    (project / "out.csv").write_text(f"Source Email,Batch\n{inside},wave2\n{free[0]},wave3\n")
    (project / "apart.csv").write_text(f"Source Email,Batch\n{free[0]},wave2\n")
    book = tmp_path / "lockdemo.yaml"
    book.write_text(CHECKLIST_THEN_PROVISION)
    seen: dict[str, Any] = {}

    def meanwhile(_question: str) -> bool:
        for name in ("into", "out"):
            file = project / f"{name}.csv"
            seen[name] = refused(lambda f=file: commands.batch_import(project, f))
        seen["after_refusals"] = users_by_batch(project)
        seen["apart"] = typed(lambda: commands.batch_import(project, project / "apart.csv"))
        return True

    first = playbook.run_playbook(project, str(book), batch=BATCH, confirm=meanwhile)
    assert first["ok"], first
    me = f"PID {os.getpid()} on {socket.gethostname()}"
    for name, user, change in (
        ("into", free[0], f"into {BATCH}"),
        ("out", inside, f"out of {BATCH} (to wave2)"),
    ):
        busy: Busy = seen[name]
        text = str(busy)
        assert f"a playbook run holds a batch that {name}.csv changes ({user} {change})" in text
        assert f"a runbook is in progress: playbook run lockdemo --batch {BATCH} ({me}" in text
        assert f"nothing of {name}.csv was imported" in (busy.next_step or ""), busy.next_step
        assert f"kill {os.getpid()}" in (busy.next_step or ""), busy.next_step
        error = busy.to_dict()
        assert error["reason"] == "playbook-run", error
        assert [h["playbook_batches"] for h in error["holders"]] == [[BATCH]], error
        assert error["users"] == [{"user": user, "batch": BATCH, "change": change}], error
    # Nothing of the refused files was written: not even the row for wave2.
    assert seen["after_refusals"] == batches, seen["after_refusals"]
    assert seen["apart"]["assigned"] == {"wave2": 1}, seen["apart"]
    assert users_by_batch(project)[free[0]] == "wave2"


def test_cli_retry_and_batch_import_beside_a_run_exit_2(
    make_project: Callable[..., Path], sandbox: Sandbox, tmp_path: Path
) -> None:
    """With a CLI run sitting in a wait on wave1: `coexist retry --json` exits 2, listing the
    held user as refused (with the run's PID) and having retried the free one; in plain text
    it names the user, the run and `kill PID`; `coexist batch import` of a file moving a user
    into wave1 exits 2 (JSON: reason, users) and changes nothing."""
    project = wave(make_project, sandbox, items=1)
    batches = users_by_batch(project)
    inside = sorted(a for a, b in batches.items() if b == BATCH)[0]
    free = sorted(a for a, b in batches.items() if not b)
    (project / "into.csv").write_text(f"Source Email\n{free[0]}\n")
    book = tmp_path / "lockwait.yaml"
    book.write_text(WAIT_THEN_STATUS)
    run = start_run(project, book)
    try:
        fail(project, inside)
        fail(project, free[0])
        code, result = cli_json(project, "retry")
        assert code == 2, result
        (no,) = result["refused"]
        assert no["user"] == inside and no["holder"]["pid"] == run.pid, no
        assert result["retried"] == {"provision": 1}, result
        assert state_of(project, free[0]) != "failed"
        plain = cli_text(project, "retry")
        shown = " ".join((plain.stdout + plain.stderr).split())
        assert plain.returncode == 2, shown
        assert f"refused {inside} (provision): a runbook is in progress: playbook run " in shown
        assert f"lockwait --batch {BATCH} (PID {run.pid} on" in shown, shown
        assert f"kill {run.pid}" in shown, shown
        code, error = cli_json(
            project, "batch", "import", str(project / "into.csv"), "--name", BATCH
        )
        assert code == 2 and error["error"] == "Busy", error
        assert error["reason"] == "playbook-run", error
        assert error["users"] == [{"user": free[0], "batch": BATCH, "change": f"into {BATCH}"}]
        assert users_by_batch(project)[free[0]] == "", "the refused import was recorded"
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
