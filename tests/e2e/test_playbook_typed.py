"""An operator's typed command on users of a batch a playbook run holds is refused (gap of
issue 14 left by runlock): `coexist cutover --batch wave1` typed beside the wave1 runbook
exits 2 before it records anything, naming the run, its PID, host and start and what to do
next. Commands on users outside the batch, status and `--plan` runs go ahead (a plan says a
runbook is in progress); the run's own step commands are not refused; once the run ends, or
is SIGKILLed, typed commands go ahead again. Runs are held still without timing: at a
checklist whose confirmation the test answers (in-process), or in a wait until a far-off
time (a CLI child). The claim rules themselves are tested on SQLite and PostgreSQL in
`tests/unit/test_claims.py`; the queue mode (a run's enqueue steps and the workers running
its jobs, not refused) in `tests/e2e/test_playbook_queue.py`.
"""

from __future__ import annotations

import contextvars
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coexist import commands, credcheck, playbook
from coexist.errors import Busy
from coexist.journal import Journal
from coexist.sandbox import Sandbox
from coexist.settings import load_project
from tests.cli_env import cli_env
from tests.e2e.test_playbook_lock import (
    CHECKLIST_THEN_PROVISION,
    WAIT_THEN_STATUS,
    cli_json,
    lock_holder,
    start_run,
    writer_rows,
)
from tests.e2e.test_playbooks_m365 import BATCH, steps_of, wave

REPO = Path(__file__).resolve().parents[2]


def runs_of(project: Path) -> list[dict[str, Any]]:
    with Journal.open(load_project(project).journal_url) as j:
        return j.runs()


def outside_user(project: Path) -> str:
    """A user of the project in no batch."""
    with Journal.open(load_project(project).journal_url) as j:
        return next(str(u["source_address"]) for u in j.items(kind="user") if not u.get("batch"))


def cli_text(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`coexist ARGS --project PROJECT` as a child, its plain-text output captured."""
    return subprocess.run(
        [sys.executable, "-m", "coexist.cli", *args, "--project", str(project)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=cli_env(),
    )


def refused(call: Callable[[], object]) -> Busy:
    """`call`'s refusal, made as another operator would: in a context of its own (the
    playbook run's own steps act for it in theirs: `claims.acting_for`)."""
    try:
        contextvars.Context().run(call)
    except Busy as exc:
        return exc
    raise AssertionError("the command was not refused")


def typed(call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`call` run as another operator's command (see `refused`)."""
    return contextvars.Context().run(call)


def test_typed_commands_on_a_held_batch_are_refused_others_and_plans_go_ahead(
    make_project: Callable[..., Path], sandbox: Sandbox, tmp_path: Path
) -> None:
    """While a run on wave1 waits at its checklist: a typed cutover, provision, `--all` run
    and verify-credentials on wave1 are refused naming the run (no run recorded), provision
    of a user in no batch and a provision `--plan` of wave1 (saying a runbook is in
    progress) go ahead; the run's own provision step is not refused; after the run, a typed
    provision of wave1 goes ahead."""
    project = wave(make_project, sandbox, items=1)
    book = tmp_path / "lockdemo.yaml"
    book.write_text(CHECKLIST_THEN_PROVISION)
    outside = outside_user(project)
    seen: dict[str, Any] = {}

    def meanwhile(_question: str) -> bool:
        before = runs_of(project)
        seen["cutover"] = refused(lambda: commands.cutover(project, batch=BATCH))
        seen["provision"] = refused(lambda: commands.provision(project, batch=BATCH))
        seen["all"] = refused(lambda: commands.provision(project, all_users=True))
        seen["verify"] = refused(lambda: credcheck.verify_credentials(project, batch=BATCH))
        seen["recorded"] = runs_of(project)[len(before) :]
        seen["outside"] = typed(lambda: commands.provision(project, users=[outside]))
        seen["plan"] = typed(lambda: commands.provision(project, batch=BATCH, plan=True))
        seen["status"] = typed(lambda: commands.status(project, batch=BATCH))["playbook_runs"]
        return True

    first = playbook.run_playbook(project, str(book), batch=BATCH, confirm=meanwhile)
    # The run's own provision step claimed the batch beside the run's lock.
    assert first["ok"], first
    assert {k: s["status"] for k, s in steps_of(project, "lockdemo").items()} == {
        "go-no-go": "ok",
        "provision": "ok",
    }
    me = f"PID {os.getpid()} on {socket.gethostname()}"
    for what in ("cutover", "provision", "all", "verify"):
        busy = seen[what]
        text = str(busy)
        assert f"a runbook is in progress: playbook run lockdemo --batch {BATCH} ({me}" in text
        assert " since " in text and "UTC, run " in text, text
        assert f"kill {os.getpid()}" in (busy.next_step or ""), busy.next_step
        assert f"coexist playbook run lockdemo --batch {BATCH}" in (busy.next_step or "")
        error = busy.to_dict()
        assert error["reason"] == "playbook-run", error
        assert [h["playbook_batches"] for h in error["holders"]] == [[BATCH]], error
    assert seen["recorded"] == [], "a refused command recorded a run"
    assert not seen["outside"]["failed"], seen["outside"]
    plan = seen["plan"]
    assert plan["plan"] and plan["runbooks_in_progress"][BATCH]["pid"] == os.getpid(), plan
    assert me in plan["runbooks_in_progress"][BATCH]["text"], plan
    assert me in seen["status"][BATCH], seen["status"]
    # The run is over: nothing holds wave1, and a typed command on it goes ahead.
    assert lock_holder(project) is None and writer_rows(project) == []
    after = commands.provision(project, batch=BATCH)
    assert not after["failed"] and "runbooks_in_progress" not in after, after


def test_cli_typed_cutover_is_refused_while_a_run_holds_the_batch_and_freed_by_its_kill(
    make_project: Callable[..., Path], sandbox: Sandbox, tmp_path: Path
) -> None:
    """With a CLI playbook run sitting in a wait on wave1: `coexist cutover --batch wave1`
    exits 2 naming the run's PID and host (JSON: reason and holder), records no run, and
    says so in plain text too; a provision `--plan` and `report` exit 0 saying a runbook
    is in progress. After the run is SIGKILLed, a typed provision on wave1 goes ahead."""
    project = wave(make_project, sandbox, items=1)
    book = tmp_path / "lockwait.yaml"
    book.write_text(WAIT_THEN_STATUS)
    run = start_run(project, book)
    try:
        code, error = cli_json(project, "cutover", "--batch", BATCH)
        assert code == 2 and error["error"] == "Busy", error
        assert error["reason"] == "playbook-run", error
        (holder,) = error["holders"]
        assert holder["pid"] == run.pid and holder["command"] == "playbook run lockwait", holder
        assert holder["playbook_batches"] == [BATCH] and holder["host"] == socket.gethostname()
        assert f"playbook run lockwait --batch {BATCH} (PID {run.pid} on" in error["message"]
        assert f"kill {run.pid}" in error["next_step"], error
        assert [r for r in runs_of(project) if r["command"] == "cutover"] == []
        plain = cli_text(project, "cutover", "--batch", BATCH)
        shown = " ".join((plain.stdout + plain.stderr).split())
        assert plain.returncode == 2, shown
        assert f"a runbook is in progress: playbook run lockwait --batch {BATCH}" in shown
        assert f"PID {run.pid} on" in shown, shown
        code, plan = cli_json(project, "provision", "--batch", BATCH, "--plan")
        assert code == 0 and plan["runbooks_in_progress"][BATCH]["pid"] == run.pid, plan
        report = cli_text(project, "report", "--batch", BATCH)
        said = " ".join(report.stdout.split())
        assert report.returncode == 0, report.stdout + report.stderr
        assert f"playbook run in progress on batch {BATCH}: playbook run lockwait" in said, said
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    # Its writer row outlives it; its lock went with the process.
    assert [w["pid"] for w in writer_rows(project)] == [run.pid]
    code, done = cli_json(project, "provision", "--batch", BATCH)
    assert code == 0 and not done["failed"], done
    assert "runbooks_in_progress" not in done, done
    assert writer_rows(project) == [], "the killed run's claim was not recovered"
