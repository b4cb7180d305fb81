"""Playbooks in queue mode (issue 16 D1): a playbook's prestage step waits for its users'
jobs, run by a `coexist worker` process on a real PostgreSQL journal, so the checks after it
see the data moved."""

from __future__ import annotations

import contextvars
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coexist import commands, playbook
from coexist.errors import Busy
from coexist.journal import Journal, claims
from coexist.sandbox import Sandbox
from coexist.settings import load_project
from tests import pg
from tests.cli_env import cli_env
from tests.e2e.test_playbooks_m365 import BATCH, held, steps_of, wave, wave_users

REPO = Path(__file__).resolve().parents[2]


def queue_wave(
    make_project: Callable[..., Path], sandbox: Sandbox, pg_url: str
) -> tuple[Path, list[dict[str, Any]]]:
    """`wave` in queue mode on the (reset) PostgreSQL journal: the project and its batch's
    two users."""
    pg.reset_database(pg_url)
    project = wave(make_project, sandbox, **{"project.journal": pg_url, "engine.executor": "queue"})
    return project, wave_users(project)


@pytest.mark.timeout(1200)
def test_prestage_wave_playbook_waits_for_its_queued_jobs(
    make_project: Callable[..., Path], sandbox: Sandbox, pg_url: str
) -> None:
    """m365-prestage-wave with `executor = "queue"` and one worker: every step ok (its checks
    ran after the jobs ended), the batch's mail copied once, the jobs succeeded; the run's
    own enqueue step and the worker running its jobs are not refused, while an operator's
    typed prestage (an enqueue) on the batch is, after every step."""
    project, chosen = queue_wave(make_project, sandbox, pg_url)
    log = (project / "worker.log").open("ab")
    worker = subprocess.Popen(
        [sys.executable, "-m", "coexist.cli", "worker", "--project", str(project)],
        cwd=REPO,
        stdout=log,
        stderr=log,
        env=cli_env(),
    )
    try:
        # After each step (the prestage one's wait for its jobs included) the run still
        # holds its batch: the lock covers the whole run (tests/e2e/test_playbook_lock.py).
        holders: list[int | None] = []
        typed: list[str | None] = []

        def after_step(_line: str) -> None:
            with Journal.open(load_project(project).journal_url) as j:
                holder = claims.holder_of(j.engine, claims.playbook_scope(BATCH))
            holders.append(holder.pid if holder is not None else None)
            # An operator's prestage on the batch (its own context: not one of the run's
            # steps, `claims.acting_for`) is refused before it queues anything.
            try:
                contextvars.Context().run(lambda: commands.prestage(project, batch=BATCH))
                typed.append(None)
            except Busy as exc:
                typed.append(exc.fields.get("reason"))

        ran = playbook.run_playbook(
            project, "m365-prestage-wave", batch=BATCH, yes=True, say=after_step
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=300)
        log.close()
    assert ran["ok"], ran
    assert {s["status"] for s in ran["steps"]} == {"ok"}, ran["steps"]
    assert code == 0, (project / "worker.log").read_text()[-3000:]
    assert holders and set(holders) == {os.getpid()}, holders
    assert typed and set(typed) == {"playbook-run"}, typed
    pre = steps_of(project, "m365-prestage-wave")["prestage"]
    assert (pre["detail"] or {}).get("result", {}).get("jobs") == {"succeeded": 2}, pre
    # Pre-stage moves the mail older than 90 days: each user's passes copied some, and
    # each of those is in its target exactly once.
    copies = held(sandbox, project)
    with Journal.open(load_project(project).journal_url) as j:
        for u in chosen:
            moved = sum(int((p["counts"] or {}).get("copied", 0)) for p in j.passes(u["key"]))
            assert 0 < moved == copies[str(u["source_address"])][1], (u, j.passes(u["key"]))
