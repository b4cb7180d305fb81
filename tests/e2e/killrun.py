"""The SIGKILL harness of the CLI-level kill tests (IMAP and EWS): a project's commands as
child processes, killed at points counted in items the targets hold, or run to their end.

A subclass says what the targets hold now (`on_disk`), read without going through the
process under test (Dovecot's maildir files, the sandbox's stores).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from coexist.journal import Journal
from coexist.journal.db import make_engine
from coexist.settings import load_project
from coexist.vault import ENV_KEY
from tests.cli_env import assert_no_unawaited_coroutine, cli_env

REPO = Path(__file__).resolve().parents[2]


class Runs(ABC):
    """The project's commands as child processes, killed or run to their end; a test's
    subclass says how many items its targets hold (`on_disk`)."""

    poll_s = 0.003  # how often the targets are counted while a command runs
    max_jitter_s = 0.02  # a kill waits up to this long after its point is reached
    window_s = 120.0  # how long `kill_in_window` waits for a copy without its record

    def __init__(self, project: Path, key: str) -> None:
        self.project = project
        self.key = key  # the vault key the commands get
        self.log = project / "commands.log"
        # Copies the killed runs left in the targets without a journal record (made, not yet
        # recorded: sync's Sink records outcomes in batches), summed over the kills.
        self.unrecorded = 0

    @abstractmethod
    def on_disk(self) -> int:
        """Items the targets hold now."""

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "coexist.cli", *args, "--project", str(self.project)]
        out = self.log.open("ab")
        return subprocess.Popen(
            [*cmd, "--all", "--json"],
            cwd=REPO,
            stdout=out,
            stderr=out,
            env={**cli_env(), ENV_KEY: self.key},
        )

    def recorded(self) -> int:
        """Copies the journal names (rows with a target id), over every user. Read only,
        without `Journal.open`: its migration check is a write transaction, which would
        wait on a writer `kill_in_window` stopped inside one."""
        with Journal(make_engine(load_project(self.project).journal_url)) as j:
            keys = [str(u["key"]) for u in j.items(kind="user")]
            return sum(1 for k in keys for r in j.mapped_items(k) if r["target_item_id"])

    def _kill(self, proc: subprocess.Popen[bytes]) -> int:
        """SIGKILL; the copies the targets hold without a record now."""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        left = max(0, self.on_disk() - self.recorded())
        self.unrecorded += left
        return left

    def _still_unrecorded(self, proc: subprocess.Popen[bytes]) -> bool:
        """SIGSTOP the command and look again: whether the targets still hold a copy its
        journal does not name (then it stays stopped for the kill), else SIGCONT. Without
        the stop, the batched record could land between the look and the kill, which then
        left nothing unrecorded (CI saw that once). Stopped, the journal cannot catch up;
        the targets can only gain an APPEND already sent. Reading the journal does not wait
        on the stopped writer: SQLite WAL readers never block."""
        os.kill(proc.pid, signal.SIGSTOP)
        if self.on_disk() > self.recorded():
            return True
        os.kill(proc.pid, signal.SIGCONT)
        return False

    def kill_at(self, args: tuple[str, ...], at: int, jitter: float) -> bool:
        """Run a command; SIGKILL it once the targets hold `at` items (+ jitter seconds).
        Whether the kill landed (False: the run ended first)."""
        proc = self.start(*args)
        while proc.poll() is None:
            if self.on_disk() >= at:
                time.sleep(jitter)
                if proc.poll() is not None:
                    break
                self._kill(proc)
                return True
            time.sleep(self.poll_s)
        return False

    def crash(self, args: tuple[str, ...], todo: int, kills: int, rng: random.Random) -> int:
        """Kill a command `kills` times at ascending points within the `todo` items it has
        to copy; the kills that landed."""
        base = self.on_disk()
        offsets = sorted(rng.randint(0, max(0, todo - 1)) for _ in range(kills))
        return sum(
            self.kill_at(args, base + off, rng.uniform(0.0, self.max_jitter_s)) for off in offsets
        )

    def kill_in_window(self, args: tuple[str, ...]) -> int:
        """Run a command and SIGKILL it while the targets hold a copy its journal does not
        name yet (between an import and its record); the copies so left (0: the run ended,
        or no such moment was seen within `window_s`)."""
        proc = self.start(*args)
        deadline = time.monotonic() + self.window_s
        while proc.poll() is None and time.monotonic() < deadline:
            if self.on_disk() > self.recorded() and self._still_unrecorded(proc):
                return self._kill(proc)
            time.sleep(self.poll_s)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        return 0

    def complete(self, *args: str) -> dict[str, Any]:
        """Run a command to its end: exit 0, nothing failed or waiting; its JSON result."""
        start = self.log.stat().st_size if self.log.exists() else 0
        code = self.start(*args).wait(timeout=300)
        output = self.log.read_text()
        assert code == 0, (args, code, output[start:][-3000:])
        assert_no_unawaited_coroutine(output, " ".join(args))
        result: dict[str, Any] = json.loads(output[start:].strip().splitlines()[-1])
        assert not result["failed"] and not result["waiting"], (args, result)
        return result
