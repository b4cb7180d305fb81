"""No coroutine is left unawaited: `bounded` (the graph-items mover's copies) and the guard
that fails the suite, and the CLIs it runs, on any "never awaited" warning."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from coexist.migrate.items import bounded
from tests.cli_env import NEVER_AWAITED, assert_no_unawaited_coroutine, cli_env

REPO = Path(__file__).resolve().parents[2]


class Boom(Exception):
    pass


def run_bounded(limit: int, jobs: int, failing: int) -> list[int]:
    """Run `jobs` jobs through `bounded`; job `failing` raises. Returns the jobs started."""
    started: list[int] = []

    async def job(n: int) -> None:
        started.append(n)
        await asyncio.sleep(0.001 * (n % 3))
        if n == failing:
            raise Boom(n)
        await asyncio.sleep(0.01)

    async def main() -> None:
        await bounded(limit, range(jobs), job)

    with pytest.raises(Boom):
        asyncio.run(main())
    return started


def test_no_coroutine_is_left_unawaited() -> None:
    """A copy failing while others wait for a slot cancels the rest without leaving any
    copy made but never run (the chaos run's "coroutine 'MailCopier.copy' was never
    awaited"); the error comes out as itself, not as an ExceptionGroup."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for failing in range(6):
            started = run_bounded(limit=4, jobs=40, failing=failing)
            assert failing in started and len(started) < 40
            gc.collect()
    assert not [w for w in seen if NEVER_AWAITED in str(w.message)], [str(w.message) for w in seen]


def test_bounded_runs_every_job_once_at_most_limit_at_once() -> None:
    """Every piece of work gets its job exactly once, never more than `limit` at a time."""
    ran: list[int] = []
    running = 0
    most = 0

    async def job(n: int) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.001 * (n % 4))
        ran.append(n)
        running -= 1

    asyncio.run(bounded(4, (n for n in range(50)), job))
    assert sorted(ran) == list(range(50)) and most == 4


def test_the_suite_fails_a_test_that_leaves_a_coroutine_unawaited(tmp_path: Path) -> None:
    """The pyproject.toml filter turns a never-awaited coroutine into a test failure."""
    (tmp_path / "test_leak.py").write_text(
        "import gc\n\n"
        "async def copy():\n    pass\n\n"
        "def test_leak():\n    copy()\n    gc.collect()\n"
    )
    pytest_args = ["-q", "-p", "no:cacheprovider", "-c", "pyproject.toml", "--rootdir", str(REPO)]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *pytest_args, str(tmp_path / "test_leak.py")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout[-2000:]
    assert "1 failed" in done.stdout and NEVER_AWAITED in done.stdout, done.stdout[-2000:]


def test_a_cli_subprocess_reports_a_coroutine_left_unawaited() -> None:
    """A child process run with `cli_env` reports a never-awaited coroutine as an error in
    its output, and `assert_no_unawaited_coroutine` fails on that output."""
    code = "import gc\nasync def copy():\n    pass\ncopy()\ngc.collect()\n"
    done = subprocess.run(
        [sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert "RuntimeWarning: coroutine 'copy' was never awaited" in done.stderr, done.stderr
    assert "Exception ignored" in done.stderr  # raised as an error by the filter
    with pytest.raises(AssertionError, match="never awaited"):
        assert_no_unawaited_coroutine(done.stderr)
    assert_no_unawaited_coroutine("steps: ok 3; changed 3\n")
