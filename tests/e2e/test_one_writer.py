"""One writer per project: two commands on one project at once are not both let through.

Issue 10: two concurrent `provision` runs both proceeded, and the loser marked 7 users
`failed: name already used` although the winner had created them. The CLI runs here as real
processes against the session sandbox, on a SQLite and on a PostgreSQL journal. A first
writer is held still without timing: the test holds the sandbox's world lock while the
writer starts (it cannot finish a single tenant call), waits until the journal shows its
claim, then freezes it with SIGSTOP and lets the sandbox go.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from click.testing import Result

from coexist import commands
from coexist.errors import Busy
from coexist.journal import Journal
from coexist.journal import schema as t
from coexist.journal.claims import PROJECT, Writer
from coexist.sandbox import Sandbox
from coexist.settings import load_project
from tests import pg

REPO = Path(__file__).resolve().parents[2]
BATCH = 8  # users each provision works on
WAIT_S = 120.0  # generous bound for a CLI process to reach a point on a loaded machine


@pytest.fixture(params=["sqlite", "postgresql"])
def journal_overrides(request: pytest.FixtureRequest) -> dict[str, str]:
    """project.toml settings for the journal: the default SQLite file, or the session PostgreSQL."""
    if request.param == "sqlite":
        return {}
    url: str = request.getfixturevalue("pg_url")
    pg.reset_database(url)
    return {"project.journal": url}


@pytest.fixture
def discovered(make_project: Callable[..., Path], journal_overrides: dict[str, str]) -> Path:
    """A discovered project on the chosen journal backend."""
    project = make_project(**journal_overrides)
    commands.discover(project)
    return project


def batch_of(project: Path) -> list[str]:
    """Source addresses of the first BATCH in-scope users."""
    with Journal.open(load_project(project).journal_url) as journal:
        users = journal.items(kind="user")
    scoped = sorted(
        str(u["source_address"]) for u in users if (u.get("detail") or {}).get("in_scope", True)
    )
    assert len(scoped) >= BATCH, scoped
    return scoped[:BATCH]


def start_cli(project: Path, *args: str, log: str) -> subprocess.Popen[bytes]:
    """`python -m coexist.cli ARGS --project DIR --json` as a child, output in DIR/LOG."""
    out = (project / log).open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "coexist.cli", *args, "--project", str(project), "--json"],
        cwd=REPO,
        stdout=out,
        stderr=subprocess.PIPE,
    )


def run_cli(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coexist.cli", *args, "--project", str(project), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def project_holder(project: Path) -> tuple[int, int | None] | None:
    """(PID, run id) of the writer that holds the whole project, as the journal records it."""
    w, c = t.writers, t.claims
    with Journal.open(load_project(project).journal_url) as journal, journal.engine.connect() as db:
        stmt = sa.select(w.c.pid, w.c.run_id).join(c, c.c.writer_id == w.c.id)
        row = db.execute(stmt.where(c.c.scope == PROJECT)).first()
    return None if row is None else (int(row.pid), row.run_id)


def wait_for_claim(project: Path, proc: subprocess.Popen[bytes]) -> None:
    """Until `proc` holds the project and has noted its run (fails if the process ends first)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        holder = project_holder(project)
        if holder is not None and holder[0] == proc.pid and holder[1] is not None:
            return
        stderr = proc.stderr.read().decode() if proc.poll() is not None and proc.stderr else ""
        assert proc.poll() is None, f"the writer ended before claiming: {stderr}"
        assert time.monotonic() < deadline, "the writer never claimed the project"
        time.sleep(0.02)


def journal_is_free(project: Path) -> bool:
    """Whether no other process is inside a journal transaction right now."""
    url = load_project(project).journal_url
    if url.startswith("postgresql"):
        plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(plain, autocommit=True) as conn:
            busy = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND state <> 'idle'"
            ).fetchone()
        return busy is not None and busy[0] == 0
    db = sqlite3.connect(str(sa.make_url(url).database), timeout=0, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        db.close()


def pause_between_transactions(project: Path, proc: subprocess.Popen[bytes]) -> None:
    """SIGSTOP `proc` at a moment it holds no journal transaction open (a writer stopped
    inside one would block every journal writer, which is not what these tests are about)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        os.kill(proc.pid, signal.SIGSTOP)
        if journal_is_free(project):
            return
        os.kill(proc.pid, signal.SIGCONT)
        assert proc.poll() is None and time.monotonic() < deadline, "the writer never paused"
        time.sleep(0.01)


@contextmanager
def writer_held_still(
    sandbox: Sandbox, project: Path, users: list[str]
) -> Iterator[subprocess.Popen[bytes]]:
    """A `provision` of `users` that holds the project and stays stopped until the block ends;
    killed if the block fails, so it never runs on into the next test's tenants."""
    with sandbox.world.lock:  # it cannot finish a single tenant call until we let go
        proc = start_cli(project, "provision", "--users", ",".join(users), log="first.json")
        try:
            wait_for_claim(project, proc)
            pause_between_transactions(project, proc)
        except BaseException:
            reap(proc)
            raise
    try:
        yield proc
    except BaseException:
        reap(proc)
        raise
    os.kill(proc.pid, signal.SIGCONT)


def reap(proc: subprocess.Popen[bytes]) -> None:
    """Kill and wait for `proc` (SIGKILL also ends a stopped process)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=60)


def finished(project: Path, proc: subprocess.Popen[bytes], log: str) -> dict[str, Any]:
    code = proc.wait(timeout=600)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert code == 0, (code, (project / log).read_text()[-2000:], stderr[-2000:])
    data: dict[str, Any] = json.loads((project / log).read_text())
    return data


def provisioned(project: Path, users: list[str]) -> None:
    """Every one of `users` provisioned and ok, no failed step anywhere, no writer left."""
    with Journal.open(load_project(project).journal_url) as journal:
        items = {i["source_address"]: i for i in journal.items(kind="user")}
        assert {(items[u]["phase"], items[u]["state"]) for u in users} == {("provisioned", "ok")}
        assert journal.steps(status="failed") == []
        with journal.engine.connect() as conn:
            assert conn.execute(sa.select(t.claims)).all() == []


def test_two_concurrent_provisions_do_not_both_proceed(sandbox: Sandbox, discovered: Path) -> None:
    """While one provision runs, a second on the same users is refused (rc 2) naming the first's
    command, PID, host and running time; it writes nothing, and the first provisions every user."""
    users = batch_of(discovered)
    with writer_held_still(sandbox, discovered, users) as first:
        second = run_cli(discovered, "provision", "--users", ",".join(users))
        assert second.returncode == 2, (second.stdout, second.stderr)
        error = json.loads(second.stdout)
        assert error["error"] == "Busy", error
        host = socket.gethostname()
        started = f"provision --users ({BATCH} users) (PID {first.pid} on {host}, running for "
        assert started in error["message"]
        assert [(h["command"], h["pid"], h["host"]) for h in error["holders"]] == [
            ("provision", first.pid, host)
        ]
        assert "wait for it to finish" in error["next_step"]
    result = finished(discovered, first, "first.json")
    assert result["failed"] == [] and result["users"] == BATCH
    provisioned(discovered, users)
    with Journal.open(load_project(discovered).journal_url) as journal:
        # The refused provision left no run behind: discover, then the one provision.
        assert [(r["command"], r["status"]) for r in journal.runs()] == [
            ("discover", "ok"),
            ("provision", "ok"),
        ]


def test_killed_writer_does_not_leave_the_project_locked(
    sandbox: Sandbox, discovered: Path, journal_overrides: dict[str, str]
) -> None:
    """A provision SIGKILLed mid-run (after its first MailUser) leaves a project the next
    provision claims at once and finishes, with no user marked failed."""
    users = batch_of(discovered)
    with sandbox.world.lock:
        baseline = set(sandbox.world.target.users)
    first = start_cli(discovered, "provision", "--users", ",".join(users), log="first.json")
    try:
        wait_for_claim(discovered, first)
        deadline = time.monotonic() + WAIT_S
        while True:
            with sandbox.world.lock:  # it cannot finish while we look and kill
                if set(sandbox.world.target.users) - baseline:
                    os.kill(first.pid, signal.SIGKILL)
                    break
            assert first.poll() is None and time.monotonic() < deadline, "no MailUser created"
            time.sleep(0.005)
    finally:
        reap(first)
    assert first.returncode == -signal.SIGKILL
    holder = project_holder(discovered)
    assert holder is not None and holder[0] == first.pid  # its rows are still there, dead
    if journal_overrides:  # PostgreSQL
        _wait_for_postgres_to_end_the_session(discovered)
    again = run_cli(discovered, "provision", "--users", ",".join(users))
    assert again.returncode == 0, (again.stdout[-2000:], again.stderr[-2000:])
    assert json.loads(again.stdout)["failed"] == []
    provisioned(discovered, users)


def _wait_for_postgres_to_end_the_session(project: Path) -> None:
    """PostgreSQL ends a killed client's session (and its advisory lock) a moment after the
    kernel closed the socket; wait for that, so the re-run is not racing the server."""
    deadline = time.monotonic() + WAIT_S
    with Journal.open(load_project(project).journal_url) as journal:
        while True:
            try:
                Writer.open(journal.engine, "test", {PROJECT: "probe"}).close()
                return
            except Busy:
                assert time.monotonic() < deadline, "PostgreSQL kept the killed writer's lock"
                time.sleep(0.05)


def test_read_only_commands_run_while_a_writer_holds_the_project(
    sandbox: Sandbox, discovered: Path, cli: Callable[..., Result]
) -> None:
    """status, batch export, permissions, preflight and --plan runs work beside a running
    provision; a writing command (discover) is refused; the provision then finishes."""
    users = batch_of(discovered)
    p = str(discovered)
    with writer_held_still(sandbox, discovered, users) as first:
        status = cli("status", "--project", p, "--json")
        assert status.exit_code == 0, status.output
        assert len(json.loads(status.output)["users"]) >= BATCH
        export = cli("batch", "export", "--project", p)
        assert export.exit_code == 0 and users[0] in export.output, export.output
        assert cli("permissions", "--command", "provision").exit_code == 0
        plan = cli("provision", "--project", p, "--users", ",".join(users), "--plan", "--json")
        assert plan.exit_code == 0 and json.loads(plan.output)["plan"] is True, plan.output
        checks = cli("preflight", "--project", p, "--users", users[0], "--json")
        assert checks.exit_code == 0, checks.output
        refused = cli("discover", "--project", p, "--json")
        assert refused.exit_code == 2 and json.loads(refused.output)["error"] == "Busy"
        assert f"PID {first.pid}" in json.loads(refused.output)["message"]
    assert finished(discovered, first, "first.json")["failed"] == []
    provisioned(discovered, users)
