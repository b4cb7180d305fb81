"""One playbook run per batch: a playbook run holds its batch for the whole run (gap of issue
14). A second run on the batch is refused before it records anything, naming the holder; a
run on another batch and a `--plan` proceed beside it; the run's own step commands claim the
project under it; SIGTERM releases the lock, and a SIGKILLed run's lock is recovered the way
every dead writer's claims are. Runs are held still without timing: in a checklist whose
confirmation the test answers (in-process), or in a wait until a far-off time (a CLI child).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from coexist import commands, playbook
from coexist.errors import Busy
from coexist.journal import Journal
from coexist.journal import schema as t
from coexist.journal.claims import Holder, holder_of, playbook_scope
from coexist.sandbox import Sandbox
from coexist.settings import load_project
from tests.cli_env import cli_env
from tests.e2e.test_playbooks_m365 import BATCH, steps_of, wave

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 120.0  # generous bound for a CLI child to reach its wait on a loaded machine

# A checklist (where the in-process test holds the run), then a command that claims the
# whole project while the run holds its batch.
CHECKLIST_THEN_PROVISION = """\
name: lockdemo
steps:
  - id: go-no-go
    kind: manual
    checklist: ["ready"]
  - id: provision
    kind: command
    command: provision
"""

# A wait until a far-off time (where the CLI child sits, holding the batch), then a step a
# later run can start at (`--from status`).
WAIT_THEN_STATUS = """\
name: lockwait
steps:
  - id: hold
    kind: wait
    until: "2999-01-01T00:00:00"
    interval_s: 300
  - id: status
    kind: command
    command: status
"""


def playbook_runs(project: Path) -> list[dict[str, Any]]:
    with Journal.open(load_project(project).journal_url) as j:
        return [r for r in j.runs() if r["command"] == playbook.RUN_COMMAND]


def writer_rows(project: Path) -> list[dict[str, Any]]:
    with Journal.open(load_project(project).journal_url) as j, j.engine.connect() as db:
        return [dict(r._mapping) for r in db.execute(sa.select(t.writers))]


def lock_holder(project: Path, batch: str = BATCH) -> Holder | None:
    with Journal.open(load_project(project).journal_url) as j:
        return holder_of(j.engine, playbook_scope(batch))


def test_second_run_on_a_batch_is_refused_another_batch_and_a_plan_proceed(
    make_project: Callable[..., Path], sandbox: Sandbox, tmp_path: Path
) -> None:
    """While a run waits at its checklist: a second run on its batch is refused naming it
    (and records nothing), a plan is allowed and says a run is in progress, a run on another
    batch proceeds, status names the run; then the held run's provision claims the project
    under its lock."""
    project = wave(make_project, sandbox, items=1)
    with Journal.open(load_project(project).journal_url) as j:
        taken = {str(u["source_address"]) for u in j.items(kind="user", batch=BATCH)}
        others = sorted(str(u["source_address"]) for u in j.items(kind="user"))
    (project / "wave2.csv").write_text(
        "Source Email\n" + "\n".join([a for a in others if a not in taken][:2]) + "\n"
    )
    commands.batch_import(project, project / "wave2.csv", name="wave2")
    book = tmp_path / "lockdemo.yaml"
    book.write_text(CHECKLIST_THEN_PROVISION)
    seen: dict[str, Any] = {"plan_said": []}

    def meanwhile(_question: str) -> bool:
        try:
            playbook.run_playbook(project, str(book), batch=BATCH, yes=True)
        except Busy as exc:
            seen["busy"] = exc
        seen["plan"] = playbook.run_playbook(
            project, str(book), batch=BATCH, plan=True, say=seen["plan_said"].append
        )
        seen["other"] = playbook.run_playbook(project, str(book), batch="wave2", yes=True)
        seen["status"] = commands.status(project, batch=BATCH)["playbook_runs"]
        return True

    first = playbook.run_playbook(project, str(book), batch=BATCH, confirm=meanwhile)
    assert first["ok"], first
    assert [s["status"] for s in first["steps"]] == ["ok", "ok"], first["steps"]
    busy = seen.get("busy")
    assert isinstance(busy, Busy), "the second run on the batch was not refused"
    text = str(busy)
    me = f"PID {os.getpid()} on {socket.gethostname()}"
    assert f"playbook lockdemo cannot run on batch {BATCH}" in text
    assert f"playbook run lockdemo --batch {BATCH} ({me}, running for" in text
    assert " since " in text and "UTC, run " in text
    assert f"coexist status --batch {BATCH}" in text and "nothing to clear" in text
    (holder,) = busy.to_dict()["holders"]
    assert holder["pid"] == os.getpid() and holder["command"] == "playbook run lockdemo"
    plan = seen["plan"]
    assert plan["in_progress"]["pid"] == os.getpid(), plan
    assert any("in progress" in line and me in line for line in seen["plan_said"])
    assert seen["other"]["ok"], seen["other"]
    assert list(seen["status"]) == [BATCH] and me in seen["status"][BATCH], seen["status"]
    assert commands.status(project)["playbook_runs"] == {}
    # One run per batch in the journal: the refused one recorded nothing.
    assert sorted(r["args"]["batch"] for r in playbook_runs(project)) == [BATCH, "wave2"]
    assert all(r["status"] == "ok" for r in playbook_runs(project))
    steps = steps_of(project, "lockdemo")
    assert {k: s["status"] for k, s in steps.items()} == {"go-no-go": "ok", "provision": "ok"}
    users = commands.status(project, batch=BATCH)["users"]
    assert users and all(u["state"] == "ok" for u in users), users
    assert lock_holder(project) is None and writer_rows(project) == []
    # After the run, nothing holds the batch: a plan says nothing about a run.
    assert playbook.run_playbook(project, str(book), batch=BATCH, plan=True)["in_progress"] is None


def start_run(project: Path, book: Path) -> subprocess.Popen[bytes]:
    """`coexist playbook run BOOK --batch wave1` as a child; until it holds the batch."""
    out = (project / "run.log").open("ab")
    cmd = [sys.executable, "-m", "coexist.cli", "playbook", "run", str(book)]
    proc = subprocess.Popen(
        [*cmd, "--batch", BATCH, "--project", str(project), "--yes"],
        cwd=REPO,
        stdout=out,
        stderr=out,
        env=cli_env(),
    )
    out.close()
    deadline = time.monotonic() + WAIT_S
    while True:
        holder = lock_holder(project)
        if holder is not None and holder.pid == proc.pid and holder.run_id is not None:
            return proc
        log = (project / "run.log").read_text()[-3000:]
        assert proc.poll() is None, f"the run ended before holding the batch: {log}"
        assert time.monotonic() < deadline, f"the run never held the batch: {log}"
        time.sleep(0.05)


def cli_json(project: Path, *args: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "coexist.cli", *args, "--project", str(project), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=cli_env(),
    )
    text = done.stdout.strip() or done.stderr.strip()
    return done.returncode, json.loads(text.splitlines()[-1])


def test_cli_refuses_a_second_run_sigterm_releases_and_a_sigkilled_lock_is_recovered(
    make_project: Callable[..., Path], sandbox: Sandbox, tmp_path: Path
) -> None:
    """With a CLI run holding the batch: a second `playbook run` exits 2 naming its PID, a
    `--plan` exits 0 saying a run is in progress, `status` names the run. SIGTERM ends that run recorded and its lock
    gone; a SIGKILLed run leaves its rows, and the next run proceeds and deletes them."""
    project = wave(make_project, sandbox, items=1)
    book = tmp_path / "lockwait.yaml"
    book.write_text(WAIT_THEN_STATUS)
    run = ("playbook", "run", str(book), "--batch", BATCH)
    first = start_run(project, book)
    try:
        code, refused = cli_json(project, *run, "--yes")
        assert code == 2, refused
        assert refused["error"] == "Busy" and f"PID {first.pid} on" in refused["message"]
        assert "nothing to clear" in refused["next_step"], refused
        code, plan = cli_json(project, *run, "--plan")
        assert code == 0 and plan["in_progress"]["pid"] == first.pid, plan
        code, status = cli_json(project, "status", "--batch", BATCH)
        assert code == 0 and f"PID {first.pid} on" in status["playbook_runs"][BATCH], status
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=WAIT_S) != 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    (ended,) = playbook_runs(project)
    assert ended["status"] == "failed" and ended["finished_at"] is not None, ended
    assert lock_holder(project) is None and writer_rows(project) == [], "SIGTERM kept the lock"

    killed = start_run(project, book)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=WAIT_S)
    # Its rows outlive it; its flock went with the process, so nobody holds the batch.
    assert [w["pid"] for w in writer_rows(project)] == [killed.pid]
    assert lock_holder(project) is None
    again = playbook.run_playbook(project, str(book), batch=BATCH, from_step="status")
    assert again["ok"], again
    assert writer_rows(project) == [], "the dead run's claim was not recovered"
    runs = playbook_runs(project)
    assert [r["status"] for r in runs] == ["failed", "running", "ok"], runs
