"""Run logs and `-v/--verbose`.

Every command run writes one log file, `logs/<UTC time>-<command>-<pid>.log`, in the
directory it works on: the project's (`--project`), the sandbox state's (`--state`), else
a per-user directory (`$XDG_STATE_HOME/coexist/logs`, `~/.local/state/coexist/logs`).
When that directory cannot be written (a read-only project) the next one is used. The
newest `KEEP_RUNS` logs of a directory are kept (names sort by time), older ones removed. Files are created
owner-only (0600 in a 0700 directory): a log holds names and addresses.

What is logged: the command and its outcome, every step's end (user, step, status,
detail), errors with their tracebacks (the CLI prints one line and this file's path).
With `-v` also the ids and every HTTP request and Exchange cmdlet, on stderr as well.
Every line goes through `coexist.errors.redact` (tokens, secrets, passwords,
pre-authenticated URLs' `authtoken`): the same rules as error messages; cmdlet
parameters are redacted like planned writes (`coexist.tenants.plan.redact_secrets`)
before they are logged.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from coexist.errors import redact
from coexist.files import FILE_MODE, private_dir

LOG_DIR = "logs"
KEEP_RUNS = 50  # log files kept per directory, newest first
SUFFIX = ".log"
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
STDERR_FORMAT = "%(asctime)s %(name)s: %(message)s"
# Libraries whose lines help a -v reader: httpx logs one INFO line per request ("HTTP
# Request: GET https://… "HTTP/1.1 200 OK""). (azure.identity logs every cached get_token.)
# The Graph adapter's own HTTP pools write the same line at DEBUG on `coexist.http`
# (coexist/tenants/transport.py), so -v shows them too.
_VERBOSE_LIBRARIES = ("httpx",)
_SANDBOX = "coexist.sandbox"

log = logging.getLogger(__name__)


class RedactingFormatter(logging.Formatter):
    """Formats a record, traceback included, and removes secrets from the text."""

    def __init__(self, fmt: str, *, tracebacks: bool = True) -> None:
        super().__init__(fmt, datefmt="%Y-%m-%dT%H:%M:%S")
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        if not self.tracebacks and (record.exc_info or record.exc_text):
            # stderr shows the message; the traceback stays in the file (its path is printed)
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return redact(super().format(record))


class QuietFileHandler(logging.FileHandler):
    """A log file that stops, silently, when it cannot be written (a full disk): logging's
    default would print a traceback on stderr for every line."""

    failure: str | None = None

    def handleError(self, record: logging.LogRecord) -> None:
        if self.failure is None:
            self.failure = str(sys.exc_info()[1])
        self.setLevel(logging.CRITICAL + 1)


class _NotFromSandbox(logging.Filter):
    """A command that is not a sandbox command logs nothing of an in-process sandbox (tests
    serve one in the same process)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(_SANDBOX)


def _version() -> str:
    try:
        return metadata.version("coexist")
    except metadata.PackageNotFoundError:  # run from a source tree
        return "unknown"


def user_log_dir() -> Path:
    """The per-user log directory, for commands without a project or state directory."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "coexist" / LOG_DIR


@dataclass
class RunLog:
    """One command run's log: its file (None when no directory could take one)."""

    path: Path | None
    verbose: bool
    failure: str | None = None  # why no file could be written, when `path` is None
    _handlers: list[logging.Handler] = field(default_factory=list)
    _levels: dict[str, int] = field(default_factory=dict)

    @property
    def broken(self) -> str | None:
        """Why the file stopped being written, if it did (a full disk)."""
        for h in self._handlers:
            if isinstance(h, QuietFileHandler) and h.failure:
                return h.failure
        return self.failure

    def close(self) -> None:
        root = logging.getLogger()
        for h in self._handlers:
            root.removeHandler(h)
            h.close()
        for name, level in self._levels.items():
            logging.getLogger(name or None).setLevel(level)
        self._handlers.clear()
        global _current
        if _current is self:
            _current = None


_current: RunLog | None = None


def current() -> RunLog | None:
    """The log of the command running now (None outside a command)."""
    return _current


def _file_name(command: str) -> str:
    """`<UTC time to the microsecond>-<command>-<pid>.log`: names sort in time order, even
    for runs within one second (pruning keeps the newest by name)."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    name = "-".join(command.split()) or "coexist"
    return f"{stamp}-{name}-{os.getpid()}{SUFFIX}"


def _open_in(directory: Path, command: str) -> tuple[Path, QuietFileHandler]:
    """Create this run's log file owner-only in `directory` (created 0700 if missing)."""
    private_dir(directory)
    path = directory / _file_name(command)
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
    handler = QuietFileHandler(path, encoding="utf-8")
    return path, handler


def prune(directory: Path, keep: int = KEEP_RUNS) -> None:
    """Remove all but the newest `keep` run logs of `directory` (names sort by time)."""
    try:
        logs = sorted(p for p in directory.iterdir() if p.suffix == SUFFIX and p.is_file())
    except OSError:
        return
    for old in logs[: max(0, len(logs) - keep)]:
        with contextlib.suppress(OSError):  # another run pruned it, or it is not ours
            old.unlink()


def candidates(home: Path | None) -> list[Path]:
    """Where a run's log may go, in order: the run's directory, the user's, a temp one."""
    out = [home.resolve() / LOG_DIR] if home is not None and home.is_dir() else []
    out.append(user_log_dir())
    out.append(Path(tempfile.gettempdir()) / f"coexist-{os.getuid()}" / LOG_DIR)
    return out


def start(home: Path | None, command: str, *, verbose: bool = False) -> RunLog:
    """Start the log of one command run (see the module docstring); `close()` it after."""
    global _current
    path: Path | None = None
    handler: QuietFileHandler | None = None
    failures: list[str] = []
    for directory in candidates(home):
        try:
            path, handler = _open_in(directory, command)
            break
        except OSError as exc:
            failures.append(f"{directory}: {exc.strerror or exc}")
    run = RunLog(path, verbose, failure="; ".join(failures) if handler is None else None)
    sandbox_command = command.split()[1:2] == ["sandbox"]
    if handler is not None:
        handler.setFormatter(RedactingFormatter(FILE_FORMAT))
        handler.setLevel(logging.DEBUG if verbose else logging.INFO)
        run._handlers.append(handler)
    if verbose:
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(RedactingFormatter(STDERR_FORMAT, tracebacks=False))
        stderr.setLevel(logging.DEBUG)
        run._handlers.append(stderr)
    root = logging.getLogger()
    levels = {
        "": logging.WARNING,
        "coexist": logging.DEBUG if verbose else logging.INFO,
        **{name: logging.INFO if verbose else logging.WARNING for name in _VERBOSE_LIBRARIES},
    }
    for name, level in levels.items():
        logger = logging.getLogger(name or None)
        run._levels[name] = logger.level
        # Only ever more detail than the host asked for (pytest may have lowered a level).
        logger.setLevel(min(level, logger.level) if logger.level else level)
    for h in run._handlers:
        if not sandbox_command:
            h.addFilter(_NotFromSandbox())
        root.addHandler(h)
    if handler is not None and path is not None:
        prune(path.parent)
    _current = run
    log.info("%s (coexist %s, pid %s)", command, _version(), os.getpid())
    return run


__all__ = ["KEEP_RUNS", "LOG_DIR", "RunLog", "current", "prune", "start", "user_log_dir"]
