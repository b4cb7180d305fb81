"""`coexist worker` processes for the tests of a queue-mode project (`[engine] executor =
"queue"`): started as an operator starts them (child processes, their output in one log),
watched while the test waits, stopped with SIGTERM; and the project's journal read back."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coexist import commands, jobs
from coexist.journal import Journal
from coexist.settings import load_project
from tests.cli_env import cli_env

REPO = Path(__file__).resolve().parents[2]
# Short heartbeats so a killed worker's jobs come back within seconds (not asserted).
WORKER_ARGS = ("--concurrency", "2", "--heartbeat", "1", "--stalled-after", "5")
DONE_TIMEOUT_S = 900.0  # generous: a loaded 2-core machine; only a bound, never asserted


class Workers:
    """A queue-mode project, the users (journal keys) a test follows and its workers."""

    def __init__(self, project: Path, keys: list[str]) -> None:
        self.project, self.keys = project, keys
        self.log = project / "workers.log"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.stopped: set[str] = set()  # the workers the test stops itself

    def start(self, name: str) -> None:
        """`coexist worker --name NAME` as a child process with this process's environment
        (the vault key among it)."""
        args = [sys.executable, "-m", "coexist.cli", "worker", "--project", str(self.project)]
        with self.log.open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [*args, *WORKER_ARGS, "--name", name],
                cwd=REPO,
                stdout=log,
                stderr=log,
                env=cli_env(),
            )

    def journal(self) -> Journal:
        return Journal.open(load_project(self.project).journal_url)

    def items(self) -> list[dict[str, Any]]:
        with self.journal() as j:
            return [i for k in self.keys if (i := j.get_item("user", k)) is not None]

    def who_runs(self) -> dict[str, str]:
        with self.journal() as j:
            return jobs.who_runs(j)

    def finished(self, phase: str) -> int:
        """How many of the users ended `phase` ok, nothing left unfinished."""
        return sum(
            1
            for i in self.items()
            if i.get("phase") == phase
            and i.get("state") == "ok"
            and not (i.get("detail") or {}).get("unfinished")
        )

    def until(self, what: str, done: Callable[[], bool]) -> None:
        """Poll `done()` (a bound, never asserted); fail if a worker the test did not stop
        exited meanwhile."""
        deadline = time.monotonic() + DONE_TIMEOUT_S
        while not done():
            for name, proc in self.procs.items():
                assert proc.poll() is None or name in self.stopped, (name, self.tail())
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not reached; {self.status()}\n{self.tail()}")
            time.sleep(0.5)

    def status(self) -> list[tuple[Any, ...]]:
        rows = commands.status(self.project)["users"]
        return [(r["user"], r["phase"], r["state"], r["worker"], r["error"]) for r in rows]

    def tail(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else ""

    def stop(self) -> dict[str, int]:
        """SIGTERM every live worker; their exit codes."""
        codes = {}
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait(timeout=60)
        return codes
