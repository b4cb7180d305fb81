"""Issue 16's farm of workers on a real PostgreSQL journal: three `coexist worker` processes
take a 30-user batch through pre-stage and cutover against the HTTPS sandbox.

The sandbox runs in this process; the workers are child processes (as an operator starts
them), and `prestage` / `cutover` only enqueue (`[engine] executor = "queue"`). One worker
is SIGKILLed while it holds a user mid-pass: its jobs are taken again by the two others once
its heartbeat lapses. What is asserted, never a duration: every user ends cut over; every
source message is in its target exactly once, in its folder; no address is held by two
recipients in either tenant and each user holds one licence seat; the runs of one user's
jobs, which record their worker, never overlap (two workers never held one mailbox); the
killed worker's users were finished by the others; SIGTERM stops the rest cleanly.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import signal
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from coexist import commands, jobs
from coexist.engine.runner import set_item
from coexist.journal import Journal
from coexist.journal.schema import utcnow
from coexist.sandbox import Sandbox
from coexist.sandbox.model import User
from coexist.settings import load_project
from tests import pg
from tests.cli_env import assert_no_unawaited_coroutine
from tests.e2e.test_kill_soak import seed_source_mail
from tests.e2e.test_mover_chaos import fingerprints, provisioned_users
from tests.e2e.workers_scene import DONE_TIMEOUT_S, Workers

USERS = 68  # seed 7 with 68 users: 31 user mailboxes in the scope group
BATCH = 30
MAIL = ((("Inbox",), 2, 1), (("Archive",), 1, 1))  # (folder, older than 90 days, newer)
MOVER = {"migration.mover": "graph-import-export"}
WORKERS = ("w1", "w2", "w3")
TEST_TIMEOUT_S = 2400


class Farm(Workers):
    """The project, its batch (in the sandbox) and its worker processes."""

    def __init__(self, sb: Sandbox, project: Path, users: list[dict[str, Any]]) -> None:
        super().__init__(project, [str(u["key"]) for u in users])
        self.sb = sb
        self.addresses = [str(u["source_address"]) for u in users]
        self.stopped = {"w1", "w2"}  # the workers the test stops itself

    def seed_mail(self) -> None:
        seed_source_mail(self.sb, self.keys, MAIL)


@pytest.fixture
def farm(make_project: Callable[..., Path], sandbox: Sandbox, pg_url: str) -> Farm:
    pg.reset_database(pg_url)
    project = make_project(
        users=USERS, **MOVER, **{"project.journal": pg_url, "engine.executor": "queue"}
    )
    users = provisioned_users(project)  # discover and provision run inline, as always
    assert len(users) >= BATCH, len(users)
    made = Farm(sandbox, project, users[:BATCH])
    made.seed_mail()
    return made


def recipients_once(sb: Sandbox) -> None:
    """No SMTP address is held by two recipients in either tenant."""
    with sb.world.lock:
        for name, tenant in sb.world.tenants.items():
            held = Counter(
                a.split(":", 1)[-1].lower()
                for obj in tenant.objects()
                for a in (obj.email_addresses or [])
                if a.lower().startswith("smtp:")
            )
            twice = [a for a, n in held.items() if n > 1]
            assert not twice, (name, twice[:5])


def runs_never_overlap(farm: Farm, killed: str, killed_at: dt.datetime) -> set[str]:
    """Per user, its jobs' runs (each names its worker) follow each other; a run of the
    killed worker that never finished ended by `killed_at`. Returns the users the killed
    worker left unfinished."""
    with farm.journal() as j:
        runs = [r for r in j.runs() if (r.get("args") or {}).get("worker")]
    by_user: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        (user,) = r["args"]["users"]
        by_user.setdefault(str(user), []).append(r)
    left: set[str] = set()
    for user, mine in by_user.items():
        mine.sort(key=lambda r: r["started_at"])
        for prev, nxt in itertools.pairwise(mine):
            end = prev["finished_at"]
            if end is None:
                assert prev["args"]["worker"] == killed, (user, prev)
                end = killed_at
            assert end <= nxt["started_at"], ("two workers held one mailbox", user, prev, nxt)
        unfinished = [r for r in mine if r["finished_at"] is None]
        if unfinished:
            assert mine[-1]["finished_at"] is not None, (user, mine)
            assert mine[-1]["args"]["worker"] != killed and mine[-1]["status"] == "ok"
            left.add(user)
    assert set(by_user) >= set(farm.keys)
    return left


def kill_inside_a_run(farm: Farm, name: str) -> None:
    """SIGKILL worker `name` while one of its runs is unfinished in the journal. Checked with
    the worker stopped (SIGSTOP), so the run cannot end between the look and the kill: a
    claim seen in `status` also spans opening and closing the session around the run, and
    a kill landing there left no unfinished run (a flake once in CI)."""
    proc = farm.procs[name]
    url = load_project(farm.project).journal_url
    # The look is one plain SELECT that gives up rather than wait: the stopped worker may
    # hold a lock (Journal.open's migration lock, a transaction's) that `Journal.open` or a
    # write would wait on for as long as it stays stopped.
    engine = sa.create_engine(
        url,
        poolclass=NullPool,
        connect_args={"options": "-c statement_timeout=2000 -c lock_timeout=2000"},
    )

    def stopped_inside() -> bool:
        os.kill(proc.pid, signal.SIGSTOP)
        inside = False
        try:
            with engine.connect() as conn:
                rows = conn.execute(sa.text("SELECT args, finished_at FROM runs")).all()
            inside = any(
                (args or {}).get("worker") == name and ended is None for args, ended in rows
            )
        except sa.exc.OperationalError:
            pass  # waited on the stopped worker: look again once it has moved on
        if not inside:
            os.kill(proc.pid, signal.SIGCONT)
        return inside

    try:
        farm.until(f"{name} inside a run", stopped_inside)
    finally:
        engine.dispose()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_three_workers_take_a_batch_through_prestage_and_cutover(farm: Farm) -> None:
    """30 users through pre-stage and cutover on three workers, one SIGKILLed holding a user
    mid-pass and one SIGTERMed holding one: all end cut over, every message once, no
    recipient twice, no mailbox held by two workers (from the journal's runs), the killed
    worker's users finished by the others (and the SIGTERMed one's, unless its item ended it)."""
    for name in WORKERS:
        farm.start(name)
    queued = commands.prestage(farm.project, users=farm.addresses)
    assert queued["executor"] == "queue" and len(queued["enqueued"]) == BATCH, queued
    assert not queued["already_queued"]

    # w1 holds a user while copies are made: status shows who runs whom, and a command
    # queueing more work runs beside the workers (no Busy) with one job per mailbox.
    writes = farm.sb.mail.clock

    def w1_copying() -> bool:
        held = farm.who_runs().values()
        return farm.sb.mail.clock > writes + 10 and any(" on w1 " in v for v in held)

    farm.until("w1 holding a user while copying", w1_copying)
    shown = [r for r in commands.status(farm.project)["users"] if r["worker"]]
    assert any("prestage on w" in str(r["worker"]) for r in shown), shown
    again = commands.prestage(farm.project, users=[farm.addresses[-1]])
    assert sum(len(again[k]) for k in ("already_queued", "already_running", "enqueued")) == 1
    kill_inside_a_run(farm, "w1")
    killed_at = utcnow()
    farm.until("all prestaged", lambda: farm.finished("prestaged") == BATCH)

    # Cutover, followed by --wait; w2 is SIGTERMed holding a user: that job is queued again.
    cut: dict[str, Any] = {}
    waiting = threading.Thread(
        target=lambda: cut.update(commands.cutover(farm.project, users=farm.addresses, wait=True))
    )
    waiting.start()
    farm.until("w2 holding a user", lambda: any(" on w2 " in v for v in farm.who_runs().values()))
    farm.procs["w2"].send_signal(signal.SIGTERM)
    assert farm.procs["w2"].wait(timeout=180) == 0, farm.tail()
    waiting.join(timeout=DONE_TIMEOUT_S)
    assert not waiting.is_alive()
    assert len(cut["enqueued"]) == BATCH and not cut["failed"], cut
    assert set(cut["jobs"]) == {"succeeded"}, cut["jobs"]
    assert farm.finished("cutover") == BATCH, farm.status()

    codes = farm.stop()
    assert codes == {"w1": -signal.SIGKILL, "w2": 0, "w3": 0}, (codes, farm.tail())
    assert_no_unawaited_coroutine(farm.log.read_text(), "coexist worker")

    left = runs_never_overlap(farm, "w1", killed_at)
    assert left, "the kill landed while w1 held a user"
    with farm.journal() as j:
        stopped = [
            r
            for r in j.runs()
            if (r.get("args") or {}).get("worker") == "w2" and r["command"] == "cutover"
        ]
        assert stopped, "w2 ran cutover jobs before its SIGTERM"
        # A SIGTERMed worker lets each pass end its item in flight (the run gate): the job
        # either ended there (its run ok) or paused and went back to the queue (its run
        # paused; stopped had it reached no safe point within --stop-grace), and then another
        # worker finished that user (test_worker_gate.py makes the second case certain; here
        # the cutover of one user may well end first).
        if stopped[-1]["status"] != "ok":
            assert stopped[-1]["status"] in ("paused", "stopped"), stopped
            (user,) = stopped[-1]["args"]["users"]
            later = [r for r in j.runs() if (r.get("args") or {}).get("users") == [user]]
            assert later[-1]["args"]["worker"] == "w3" and later[-1]["status"] == "ok", later
        assert jobs.who_runs(j) == {}  # nothing held or queued after the batch
    targets = {str(i["key"]): str(i["target_id"]) for i in farm.items()}
    for key, target in targets.items():
        source = fingerprints(farm.sb, "source", key)
        got = fingerprints(farm.sb, "target", target)
        ids = Counter(message_id for message_id, _, _ in got.elements())
        assert max(ids.values(), default=1) == 1, (key, [i for i, n in ids.items() if n > 1][:5])
        assert got == source, {"user": key, "missing": list((source - got).elements())[:5]}
    recipients_once(farm.sb)
    with farm.sb.world.lock:
        users = [farm.sb.world.target.users.get(t) for t in targets.values()]
    assert all(isinstance(u, User) and len(u.assigned_licenses) == 1 for u in users)


def test_prestage_at_a_time_queues_scheduled_jobs(
    make_project: Callable[..., Path], cli: Callable[..., Any], pg_url: str
) -> None:
    """In queue mode `prestage --at` queues one job per user scheduled for that time and
    returns; status shows them queued for it; queueing them again finds them queued."""
    pg.reset_database(pg_url)
    project = make_project(**{"project.journal": pg_url, "engine.executor": "queue"})
    users = provisioned_users(project)[:2]
    chosen = ",".join(str(u["source_address"]) for u in users)
    at = "2099-01-01T00:00+00:00"
    args = ("prestage", "--project", str(project), "--users", chosen, "--at", at, "--json")
    first = cli(*args)
    assert first.exit_code == 0, first.output
    queued = json.loads(first.output)
    assert queued["executor"] == "queue" and len(queued["enqueued"]) == 2, queued
    assert queued["scheduled_at"] == "2099-01-01T00:00:00+00:00"
    rows = {r["user"]: r for r in commands.status(project)["users"]}
    for u in users:
        assert rows[u["source_address"]]["worker"] == "prestage queued for 2099-01-01 00:00 UTC"
    again = json.loads(cli(*args).output)
    assert not again["enqueued"] and sorted(again["already_queued"]) == sorted(chosen.split(","))
    with Journal.open(pg_url) as j, j.engine.connect() as conn:
        scheduled = conn.exec_driver_sql(
            "SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo' "
            "AND scheduled_at = '2099-01-01T00:00+00:00' AND queue_name = 'prestage'"
        )
        assert scheduled.scalar() == 2
        assert all((i.get("detail") or {}).get("unfinished") is None for i in j.items())
        # A prestage that failed for one of them: retry goes through the queue too.
        set_item(j, "user", str(users[0]["key"]), state="failed", last_command="prestage")
    retried = commands.retry(project)
    assert retried["retried"] == {"prestage": 1}, retried
    assert retried["results"]["prestage"]["already_queued"] == [users[0]["source_address"]]
