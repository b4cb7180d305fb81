"""How tests run the coexist CLI as a child process: the suite's warnings guard goes with it.

pyproject.toml makes a never-awaited coroutine fail any test in the pytest process. A CLI
run as a subprocess (the crash and kill tests) gets the same filter through PYTHONWARNINGS;
there the warning is raised in the coroutine's finalizer, which Python prints ("Exception
ignored in: <coroutine ...>") without changing the exit code, so the tests check the
child's output with `assert_no_unawaited_coroutine`.
"""

from __future__ import annotations

import os

NEVER_AWAITED = "was never awaited"
# -W syntax (action:message:category): the message is a literal prefix of the warning's
# text ("coroutine 'MailCopier.copy' was never awaited").
UNAWAITED_IS_AN_ERROR = "error:coroutine:RuntimeWarning"


def cli_env() -> dict[str, str]:
    """This process's environment, with never-awaited coroutines made errors in the child."""
    env = dict(os.environ)
    env["PYTHONWARNINGS"] = ",".join(
        w for w in (env.get("PYTHONWARNINGS"), UNAWAITED_IS_AN_ERROR) if w
    )
    return env


def assert_no_unawaited_coroutine(output: str, what: str = "the CLI") -> None:
    """Fail when a child process reported a coroutine that was never awaited."""
    lines = [n for n, line in enumerate(output.splitlines()) if NEVER_AWAITED in line]
    assert not lines, (
        f"{what} left a coroutine never awaited (work that silently did not run):\n"
        + "\n".join(output.splitlines()[max(0, lines[0] - 6) : lines[0] + 1])
    )
