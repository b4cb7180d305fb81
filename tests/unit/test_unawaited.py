"""No coroutine is left unawaited: the guard that fails the suite, and the CLIs it runs, on
any "never awaited" warning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_env import NEVER_AWAITED, assert_no_unawaited_coroutine, cli_env

REPO = Path(__file__).resolve().parents[2]


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
