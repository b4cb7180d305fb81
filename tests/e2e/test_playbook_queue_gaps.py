"""Jobs an operator queued before a playbook run started on their batch (queue mode, real
PostgreSQL, a `coexist worker` child): a worker taking one during the run refuses it (the job
ends failed, a warning on the user names the run and what to do, nothing ran), and the run's
own enqueue step replaces a job still waiting with its own, so the run neither runs an
operator's command mid-runbook nor follows a job that would never run for it."""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from coexist import commands, playbook
from coexist.journal import Journal
from coexist.sandbox import Sandbox
from coexist.settings import load_project
from tests.cli_env import cli_env
from tests.e2e.test_playbook_queue import queue_wave
from tests.e2e.test_playbooks_m365 import BATCH, checklist_then_prestage, held, steps_of

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 300.0  # a bound on a loaded machine, never asserted


def job_status(project: Path, job_id: int) -> str:
    with Journal.open(load_project(project).journal_url) as j, j.engine.connect() as db:
        return str(
            db.execute(
                sa.text("SELECT status FROM procrastinate_jobs WHERE id = :i"), {"i": job_id}
            ).scalar_one()
        )


def until_final(project: Path, job_id: int) -> str:
    deadline = time.monotonic() + WAIT_S
    while (status := job_status(project, job_id)) not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job {job_id} still {status}"
        time.sleep(0.2)
    return status


@pytest.mark.timeout(1200)
def test_jobs_queued_before_a_run_are_refused_or_replaced_by_the_runs_own(
    make_project: Callable[..., Path], sandbox: Sandbox, pg_url: str, tmp_path: Path
) -> None:
    """Before a run on wave1 starts, an operator queues a prestage job for user B (due now)
    and one for user A (due in two hours). While the run waits at its checklist a worker
    takes B's job and refuses it: the job ends failed, no prestage ran for B, and a warning
    on B names the run (PID, host) and the next step. The run's prestage step then cancels
    A's waiting job and queues its own for A and B; both succeed and the step is ok, each
    message copied once."""
    project, chosen = queue_wave(make_project, sandbox, pg_url)
    a, b = (str(u["source_address"]) for u in chosen)
    key_b = str(chosen[1]["key"])
    assert not commands.provision(project, batch=BATCH)["failed"]
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).isoformat()
    (job_a,) = [q["job"] for q in commands.prestage(project, users=[a], at=later)["enqueued"]]
    (job_b,) = [q["job"] for q in commands.prestage(project, users=[b])["enqueued"]]
    book = checklist_then_prestage(tmp_path, "queuegap")
    log = (project / "worker.log").open("ab")
    workers: list[subprocess.Popen[bytes]] = []
    seen: dict[str, Any] = {}

    def meanwhile(_question: str) -> bool:
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "coexist.cli", "worker", "--project", str(project)],
                cwd=REPO,
                stdout=log,
                stderr=log,
                env=cli_env(),
            )
        )
        seen["b"] = until_final(project, job_b)
        seen["a"] = job_status(project, job_a)
        with Journal.open(load_project(project).journal_url) as j:
            seen["warnings"] = j.events(item_key=key_b, level="warning")
            seen["b_runs"] = [r for r in j.runs() if (r["args"] or {}).get("job") == job_b]
        # Not refused: the run stops here (its step would follow A's job, due in two hours).
        return seen["b"] == "failed"

    try:
        ran = playbook.run_playbook(project, str(book), batch=BATCH, confirm=meanwhile)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
            w.wait(timeout=300)
        log.close()
    tail = (project / "worker.log").read_text()[-3000:]
    assert seen["b"] == "failed", tail
    assert seen["a"] == "todo", seen
    assert seen["b_runs"] == [], "the refused job ran its prestage"
    (warning,) = seen["warnings"]
    me = f"PID {os.getpid()} on {socket.gethostname()}"
    text = warning["message"]
    assert f"prestage job {job_b} of {b} on " in text, text
    assert f"queued before the runbook on batch {BATCH} started" in text, text
    assert f"a runbook is in progress: playbook run queuegap --batch {BATCH} ({me}" in text
    assert f"coexist prestage --users {b}" in warning["data"]["next"], warning
    assert warning["data"]["reason"] == "playbook-run", warning
    # The run's own step: A's waiting job replaced, both users' jobs run for it.
    assert ran["ok"], (ran, tail)
    assert job_status(project, job_a) == "cancelled"
    pre = steps_of(project, "queuegap")["prestage"]
    assert (pre["detail"] or {}).get("result", {}).get("jobs") == {"succeeded": 2}, pre
    copies = held(sandbox, project)
    with Journal.open(load_project(project).journal_url) as j:
        for u in chosen:
            moved = sum(int((p["counts"] or {}).get("copied", 0)) for p in j.passes(u["key"]))
            assert 0 < moved == copies[str(u["source_address"])][1], (u, j.passes(u["key"]))
