"""Issue 16 D2/D3 in queue mode: a `coexist worker` that is SIGTERMed pauses its user's pass
after the item in flight and queues the job again at once; a run window that is closed
defers the job (no worker slot held), one that closes mid-pass pauses the pass and defers
the job, and work resumes when the window reopens.

Real PostgreSQL (tests/pg.py), the HTTPS sandbox in this process, workers as child
processes. The worker's run windows read a test-only clock file (`schedule.TEST_CLOCK_ENV`)
the test moves. To make "mid-pass" certain rather than likely, the test holds the sandbox
mail store's lock (the sandbox's requests wait on it) while it closes the window or sends
SIGTERM, so the pass cannot run on to its end in between. No duration is asserted.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from coexist import commands, jobs, report, schedule, worker
from coexist.journal import Journal
from coexist.sandbox import Sandbox
from coexist.settings import load_project
from tests import pg
from tests.cli_env import assert_no_unawaited_coroutine, cli_env
from tests.e2e.test_mover_chaos import fingerprints, provisioned_users

REPO = Path(__file__).resolve().parents[2]
MESSAGES = 60  # graph-items: one message per export batch, so a safe point per item
BERLIN = ZoneInfo("Europe/Berlin")
WORKER_ARGS = ("--concurrency", "1", "--heartbeat", "1", "--stalled-after", "5")
BOUND_S = 600.0  # generous bound on a loaded 2-core machine; never asserted
FINAL = worker.FINAL


class One:
    """A queue-mode project with one user holding MESSAGES old messages, and its workers."""

    def __init__(self, sb: Sandbox, project: Path, user: dict[str, Any]) -> None:
        self.sb, self.project = sb, project
        self.key, self.address = str(user["key"]), str(user["source_address"])
        self.url = load_project(project).journal_url
        self.log = project / "workers.log"
        self.clock = project / "clock.txt"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        store = sb.mail
        folder = store.folder("source", self.key, "inbox")
        assert folder is not None
        old = dt.datetime.now(dt.UTC) - dt.timedelta(days=200)
        for n in range(MESSAGES):
            msg = EmailMessage()
            msg["From"], msg["To"] = "Ava <ava@fabrikam.example>", self.address
            msg["Subject"] = f"gate {n:02d}"
            msg["Message-ID"] = f"<{self.key}.gate.{n}@fabrikam.example>"
            msg.set_content(f"message {n}\n")
            store.insert_message("source", self.key, folder.id, msg.as_bytes(), received=old)

    def set_clock(self, local: dt.datetime) -> None:
        # Written aside and renamed: a worker reading the file while it is rewritten in
        # place once read '' (a pass failed: "Invalid isoformat string: ''").
        aside = self.clock.with_suffix(".new")
        aside.write_text(local.astimezone(dt.UTC).isoformat())
        aside.replace(self.clock)

    def start(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        env = {**cli_env(), schedule.TEST_CLOCK_ENV: str(self.clock)}
        args = [sys.executable, "-m", "coexist.cli", "worker", "--project", str(self.project)]
        with self.log.open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [*args, *WORKER_ARGS, "--name", name, *extra],
                cwd=REPO,
                stdout=log,
                stderr=log,
                env=env,
            )
        return self.procs[name]

    def passes(self) -> list[dict[str, Any]]:
        with Journal.open(self.url) as j:
            return j.passes(self.key)

    def item(self) -> dict[str, Any]:
        with Journal.open(self.url) as j:
            return j.get_item("user", self.key) or {}

    def job(self) -> tuple[str, int]:
        """The user's newest job: (status, attempts)."""
        status, attempts, _ = self.jobs()[-1]
        return status, attempts

    def jobs(self, key: str | None = None) -> list[tuple[str, int, dict[str, Any] | None]]:
        """The user's jobs, oldest first: (status, attempts, window it was deferred for)."""
        with Journal.open(self.url) as j, j.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT status::text, attempts, args->'window' FROM procrastinate_jobs "
                "WHERE args->>'user' = %(k)s ORDER BY id",
                {"k": key or self.key},
            ).all()
        return [(str(r[0]), int(r[1]), r[2]) for r in rows]

    def runs(self, key: str | None = None) -> list[tuple[str, str]]:
        """The runs of the user's jobs, oldest first: (worker, status)."""
        with Journal.open(self.url) as j:
            return [
                (str(r["args"]["worker"]), str(r["status"]))
                for r in j.runs()
                if (r.get("args") or {}).get("worker")
                and r["args"].get("users") == [key or self.key]
            ]

    def row(self) -> dict[str, Any]:
        """The user's `coexist status` row."""
        (row,) = commands.status(self.project, user=self.address)["users"]
        return row

    def no_error(self) -> dict[str, Any]:
        """Neither `coexist status` nor the report counts an error for the user; its row."""
        row = self.row()
        assert row["error"] is None and row["state"] != "failed", row
        totals = report.build(self.project)["totals"]
        assert totals["errors"] == 0, totals
        return row

    def copied(self) -> int:
        target = self.item().get("target_id")
        return sum(1 for _ in self.sb.mail.iter_messages("target", str(target))) if target else 0

    def until(self, what: str, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + BOUND_S
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not reached; {self.passes()}\n{self.tail()}")
            time.sleep(0.1)

    def tail(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else ""

    def prestaged(self) -> bool:
        i = self.item()  # the phase is recorded before the pass, marked unfinished till it ends
        return (
            i.get("phase") == "prestaged"
            and i.get("state") == "ok"
            and not (i.get("detail") or {}).get("unfinished")
        )

    def finished_by_w2(self, first: str) -> None:
        """A worker w2 takes the job w1 left requeued and finishes the user, then stops on
        SIGTERM: the passes and runs are w1's `first` then w2's ok, the job succeeded and
        every message is in the target once."""
        w2 = self.start("w2")
        self.until("prestaged by w2", self.prestaged)
        w2.send_signal(signal.SIGTERM)
        assert w2.wait(timeout=BOUND_S) == 0, self.tail()
        assert [p["status"] for p in self.passes()] == [first, "ok"], self.passes()
        assert self.runs() == [("w1", first), ("w2", "ok")]
        assert self.job()[0] == "succeeded"
        self.once()

    def once(self) -> None:
        """Every source message is in the target exactly once, in its folder."""

        # (Message-ID, folder): graph-items rebuilds the MIME, so its bytes differ.
        def placed(side: str, uid: str) -> Counter[tuple[str, tuple[str, ...]]]:
            return Counter((i, path) for i, _, path in fingerprints(self.sb, side, uid).elements())

        source = placed("source", self.key)
        got = placed("target", str(self.item()["target_id"]))
        assert max(got.values(), default=1) == 1, [i for i, n in got.items() if n > 1][:5]
        assert got == source and len(source) >= MESSAGES


@pytest.fixture
def make_one(
    make_project: Callable[..., Path], sandbox: Sandbox, pg_url: str
) -> Iterator[Callable[..., One]]:
    """A queue-mode project (these settings over the defaults) and its first user. Workers a
    failed test left running are killed after it (they would fetch from the next test's
    database as it is reset)."""
    made: list[One] = []

    def make(**overrides: Any) -> One:
        pg.reset_database(pg_url)
        project = make_project(
            users=10,
            **{
                "migration.mover": "graph-items",
                "project.journal": pg_url,
                "engine.executor": "queue",
                **overrides,
            },
        )
        user = provisioned_users(project)[0]
        one = One(sandbox, project, user)
        one.set_clock(dt.datetime(2026, 12, 5, 12, 0, tzinfo=BERLIN))
        made.append(one)
        return one

    yield make
    for one in made:
        for proc in one.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)


@pytest.fixture
def one(make_one: Callable[..., One]) -> One:
    return make_one()


@pytest.mark.timeout(1800)
def test_sigterm_pauses_the_pass_after_its_item_and_requeues_the_job(
    one: One, cli: Callable[..., Any]
) -> None:
    """SIGTERM mid-pass: the worker exits 0, the pass and its run are journaled paused (not
    failed; status shows no error), the job is back in the queue at once (no other worker
    ran to find it stalled), another worker finishes it, and every message is in the
    target exactly once. `coexist retry` while w1 runs the user queues nothing and says
    where it runs."""
    w1 = one.start("w1")
    with Journal.open(one.url) as j, j.engine.connect() as conn:
        # The job's pass waits on its first item-map write while the test holds this lock
        # (reads go on; the sandbox stays free): w1 runs the user all along below.
        conn.exec_driver_sql("LOCK TABLE item_map IN SHARE MODE")
        queued = commands.prestage(one.project, users=[one.address], older_than="90d")
        assert len(queued["enqueued"]) == 1, queued
        job = queued["enqueued"][0]["job"]
        one.until(
            "w1 running the user's prestage",
            lambda: (
                one.runs() == [("w1", "running")]
                and (one.item().get("detail") or {}).get("unfinished") == "prestage"
            ),
        )
        again = commands.retry(one.project)
        shown = cli("retry", "--project", str(one.project))
        as_json = cli("retry", "--project", str(one.project), "--json")
        assert [status for status, _, _ in one.jobs()] == ["doing"], one.jobs()
        conn.rollback()
    assert again["retried"] == {"prestage": 1}, again
    pre = again["results"]["prestage"]
    assert not pre["enqueued"] and not pre["already_queued"], pre
    assert pre["already_running"] == [{"user": one.address, "job": job, "worker": "w1"}], pre
    assert shown.exit_code == 0, shown.output
    assert f"{one.address}: prestage already running on w1 (job {job}); nothing queued" in (
        " ".join(shown.output.split())
    ), shown.output
    assert as_json.exit_code == 0, as_json.output
    ran = json.loads(as_json.output)["results"]["prestage"]
    assert ran["already_running"] == pre["already_running"] and not ran["enqueued"], ran
    one.until("w1 copying", lambda: one.copied() >= 3)

    with one.sb.mail._lock:  # the pass's requests wait: it is mid-pass when the signal lands
        w1.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # lets w1 handle the signal first (not asserted: see the pass below)
    assert w1.wait(timeout=BOUND_S) == 0, one.tail()

    passes = one.passes()
    assert passes and passes[-1]["status"] == "paused", passes
    copied = int((passes[-1]["counts"] or {}).get("copied", 0))
    assert 0 < copied < MESSAGES, passes[-1]
    assert one.runs() == [("w1", "paused")]  # its run too: paused, not failed
    row = one.no_error()
    assert row["worker"] == "prestage queued", row
    assert one.job()[0] == "todo"  # requeued by w1 itself: no worker was left to retry it
    assert not one.prestaged()

    one.finished_by_w2("paused")
    total = sum(int((p["counts"] or {}).get("copied", 0)) for p in one.passes())
    assert total == MESSAGES, one.passes()
    assert_no_unawaited_coroutine(one.log.read_text(), "coexist worker")


@pytest.mark.timeout(1800)
def test_a_run_window_closes_and_reopens_with_queued_work_resuming(one: One) -> None:
    """Queue mode: outside the batch's window the job is deferred without a run or a pass;
    inside it the pass runs; the window closing mid-pass pauses the pass at a safe point
    and defers the job; reopened, the job finishes the pass with every message once."""
    (one.project / "night.csv").write_text(f"Source Email,Batch\n{one.address},night\n")
    commands.batch_import(one.project, one.project / "night.csv")
    commands.batch_set_window(one.project, "night", ["20:00-06:00"], timezone="Europe/Berlin")
    w1 = one.start("w1")
    waited: dict[str, Any] = {}  # `prestage --wait` follows the job through its deferrals
    follow = threading.Thread(
        target=lambda: waited.update(
            commands.prestage(one.project, users=[one.address], older_than="90d", wait=True)
        )
    )
    follow.start()

    # Closed (12:00): deferred again and again, never started; each deferral is a new job
    # for the opening (the job it follows ended succeeded): no retry, no attempt used up.
    one.until("deferred twice", lambda: len(one.jobs()) >= 3)
    assert one.passes() == [] and one.copied() == 0
    assert one.runs() == []
    assert all(attempts <= 1 for _, attempts, _ in one.jobs()), one.jobs()
    says_window(one, "2026-12-05 20:00 CET")

    one.set_clock(dt.datetime(2026, 12, 5, 21, 0, tzinfo=BERLIN))  # open
    one.until("copying inside the window", lambda: one.copied() >= 3)
    with one.sb.mail._lock:  # mid-pass for certain: its requests wait while the window closes
        one.set_clock(dt.datetime(2026, 12, 6, 6, 30, tzinfo=BERLIN))
    one.until("paused", lambda: [p["status"] for p in one.passes()] == ["paused"])
    paused = one.passes()[0]
    assert 0 < int((paused["counts"] or {}).get("copied", 0)) < MESSAGES, paused
    deferred = len(one.jobs())
    one.until("deferred while closed", lambda: len(one.jobs()) >= deferred + 2)
    assert [p["status"] for p in one.passes()] == ["paused"] and one.job()[0] == "todo"
    assert one.runs() == [("w1", "deferred")]  # the run the window closed on: not failed
    says_window(one, "2026-12-06 20:00 CET")

    one.set_clock(dt.datetime(2026, 12, 6, 20, 30, tzinfo=BERLIN))  # open again
    one.until("prestaged", one.prestaged)
    assert [p["status"] for p in one.passes()] == ["paused", "ok"], one.passes()
    total = sum(int((p["counts"] or {}).get("copied", 0)) for p in one.passes())
    assert total == MESSAGES, one.passes()
    one.once()
    assert one.runs() == [("w1", "deferred"), ("w1", "ok")]
    assert all(attempts <= 1 for _, attempts, _ in one.jobs()), one.jobs()
    follow.join(timeout=BOUND_S)
    assert not follow.is_alive()
    assert waited["jobs"] == {"succeeded": 1} and not waited["failed"], waited
    w1.send_signal(signal.SIGTERM)
    assert w1.wait(timeout=BOUND_S) == 0, one.tail()
    assert_no_unawaited_coroutine(one.log.read_text(), "coexist worker")


def says_window(one: One, opens: str) -> None:
    """`coexist status` says the user's job waits for its run window, and until when (the
    job may be running its window check at a look: the row is read until it waits)."""
    seen: list[Any] = []

    def waits() -> bool:
        row = one.row()
        seen[:] = [row]
        return "run window" in str(row["worker"])

    one.until("status shows the window", waits)
    (row,) = seen
    assert row["worker"] == (
        f"prestage waiting for its run window (opens {opens}, 20:00-06:00 Europe/Berlin, "
        "batch night)"
    ), row
    assert row["error"] is None and row["state"] != "failed", row
    one.no_error()


@pytest.mark.timeout(1800)
def test_a_pass_with_no_safe_point_in_its_grace_is_cancelled_and_requeued(one: One) -> None:
    """`--stop-grace` fallback: a pass held mid-item past its grace (every request of it
    waits on the sandbox) is cancelled, its pass and run journaled `stopped` (not failed),
    its job queued again; another worker finishes it with every message exactly once."""
    w1 = one.start("w1", "--stop-grace", "0.5")
    commands.prestage(one.project, users=[one.address], older_than="90d")
    one.until("w1 copying", lambda: one.copied() >= 3)
    with one.sb.mail._lock:  # no request of the pass gets through: no safe point is reached
        w1.send_signal(signal.SIGTERM)
        code = w1.wait(timeout=BOUND_S)  # w1 must not need the sandbox to stop
    assert code == 0, one.tail()

    assert [p["status"] for p in one.passes()] == ["stopped"], one.passes()
    assert one.runs() == [("w1", "stopped")]
    one.no_error()
    assert one.job()[0] == "todo"  # requeued by w1 itself

    one.finished_by_w2("stopped")  # the copy in flight when it was cancelled: not made twice
    assert_no_unawaited_coroutine(one.log.read_text(), "coexist worker")


@pytest.mark.timeout(1800)
def test_a_worker_for_one_queue_takes_no_job_of_another(one: One) -> None:
    """`coexist worker --queues cutover` takes a cutover job queued after a waiting prestage
    job and leaves the prestage job alone; a `--queues prestage` worker then runs it."""
    with Journal.open(one.url) as j:
        other = next(
            u for u in j.items(kind="user") if str(u["key"]) != one.key and u.get("target_id")
        )
    wc = one.start("wc", "--queues", "cutover")
    commands.prestage(one.project, users=[one.address], older_than="90d")  # waits for a worker
    app = worker.make_app(one.url)
    with app.open():  # a cutover job of another user, queued after the prestage job
        task = app.tasks[jobs.TASK_NAME]
        worker._configure(task, "cutover", str(other["key"]), None).defer(
            command="cutover", user=str(other["key"]), label=other["source_address"], options={}
        )
    # A worker takes the highest priority job first, then the next: had wc served every
    # queue, the prestage job would be its next once the cutover job ended.
    one.until("cutover job ended", lambda: one.jobs(str(other["key"]))[-1][0] in FINAL)
    assert [status for status, _, _ in one.jobs()] == ["todo"], one.jobs()
    assert one.runs() == [] and one.passes() == []

    wp = one.start("wp", "--queues", "prestage")
    one.until("prestaged by wp", one.prestaged)
    assert one.runs() == [("wp", "ok")]
    assert {name for name, _ in one.runs(str(other["key"]))} <= {"wc"}
    for proc in (wc, wp):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=BOUND_S) == 0, one.tail()


@pytest.mark.timeout(1800)
def test_a_job_whose_user_waits_queues_itself_for_look_again_at(
    make_one: Callable[..., One], sandbox: Sandbox
) -> None:
    """A job whose user ends `waiting` (its new mailbox still provisioning, and the command
    does not wait for it: `wait_in_command_s = 0`) queues the user's next job at the
    look-again time its run journaled; the chain ends with the user prestaged."""
    one = make_one(**{"engine.wait_in_command_s": 0})
    # The licensed mailbox comes a few seconds after the licence (reset by the next test's
    # sandbox fixture): the first job finds it not there yet.
    sandbox.world.settings.provisioning_delay_s = 4.0
    w1 = one.start("w1")
    commands.prestage(one.project, users=[one.address], older_than="90d")
    one.until("prestaged", one.prestaged)
    w1.send_signal(signal.SIGTERM)
    assert w1.wait(timeout=BOUND_S) == 0, one.tail()

    with Journal.open(one.url) as j, j.engine.connect() as conn:
        runs = {
            int(r["id"]): int(r["args"]["job"])
            for r in j.runs()
            if (r.get("args") or {}).get("users") == [one.key] and r["args"].get("job")
        }
        waits = conn.exec_driver_sql(
            "SELECT run_id, detail->>'look_again_at' FROM step_history "
            "WHERE status = 'waiting' AND run_id = ANY(%(runs)s) ORDER BY id",
            {"runs": list(runs)},
        ).all()
        scheduled = dict(
            conn.exec_driver_sql(
                "SELECT id, scheduled_at FROM procrastinate_jobs WHERE args->>'user' = %(k)s",
                {"k": one.key},
            ).all()
        )
        statuses = conn.exec_driver_sql(
            "SELECT status::text FROM procrastinate_jobs WHERE args->>'user' = %(k)s",
            {"k": one.key},
        ).scalars()
        assert set(statuses) == {"succeeded"}
    # Per run that left the user waiting: its earliest look-again time is when the next job
    # of the user was scheduled (the job after that run's job).
    looks: dict[int, dt.datetime] = {}
    for run, text in waits:
        at = dt.datetime.fromisoformat(str(text))
        looks[runs[run]] = min(at, looks.get(runs[run], at))
    assert looks, "the first job left the user waiting for its mailbox"
    order = sorted(scheduled)
    for job, at in looks.items():
        following = order[order.index(job) + 1]
        assert scheduled[following] == at, (job, at, scheduled)
    assert one.runs()[-1] == ("w1", "ok") and all(s == "ok" for _, s in one.runs()), one.runs()
