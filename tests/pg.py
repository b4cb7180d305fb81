"""A throwaway PostgreSQL server for the test session.

The server binaries come from the distribution package (``apt-get install postgresql``, which
`make system-deps` runs). ``initdb`` refuses to run as root, so as root every server command
runs as the ``postgres`` user through ``runuser``, in directories that user owns. The cluster
is disposable: ``--no-sync`` and ``fsync=off`` trade durability we do not need for speed
(a server starts in about a second).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH or in "
    "/usr/lib/postgresql/*/bin. Install them with `apt-get install postgresql` "
    "(or run `make system-deps`)."
)
SUPERUSER = "postgres"
DATABASE = "coexist_test"


def find_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    # Debian keeps the server binaries off PATH, one directory per major version.
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def missing(message: str = INSTALL_HINT) -> None:
    """Fail in CI (a silently skipped backend is a lie), skip on a developer machine."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PgServer:
    """One PostgreSQL cluster under a private temp dir; `start()` / `stop()`."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="coexist-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.log = self.root / "server.log"
        self.port = 0
        self.running = False
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        prefix = ["runuser", "-u", SUPERUSER, "--"] if self._as_postgres else []
        proc = subprocess.run([*prefix, *args], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stdout}{proc.stderr}{log}")

    def _prepare_dirs(self) -> None:
        self.sockets.mkdir()
        if self._as_postgres:
            # mkdtemp makes a 0700 root dir; the server runs as postgres and must own its dirs.
            shutil.chown(self.root, user=SUPERUSER)
            shutil.chown(self.sockets, user=SUPERUSER)

    def start(self) -> None:
        self._prepare_dirs()
        initdb = str(self.bindir / "initdb")
        self._run(initdb, "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--no-sync")
        # The free port can be taken between probe and bind: try a few.
        for attempt in range(3):
            self.port = _free_port()
            options = f"-c fsync=off -c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockets}"
            try:
                self._pg_ctl("start", "-w", "-t", "30", "-l", str(self.log), "-o", options)
                self.running = True
                return
            except RuntimeError:
                if attempt == 2:
                    raise

    def _pg_ctl(self, *args: str) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), *args)

    def stop(self) -> None:
        try:
            if self.running:
                # immediate: the cluster is thrown away, no clean shutdown checkpoint needed.
                self._pg_ctl("stop", "-m", "immediate", "-w")
                self.running = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        admin = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def session_database() -> Iterator[str]:
    """Start a server, create the session's database, yield its SQLAlchemy URL, stop."""
    bindir = find_bindir()
    if bindir is None:
        missing()
        raise AssertionError("unreachable")  # pytest.skip/fail raise
    server = PgServer(bindir)
    try:
        server.start()
        yield server.create_database(DATABASE)
    finally:
        server.stop()


def reset_database(url: str) -> None:
    """Drop every table of the database at `url` (a clean journal for the next test)."""
    plain = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(plain, autocommit=True) as conn:
        # A journal a failed test left open would hold locks and make DROP wait forever.
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
