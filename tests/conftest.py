"""Fixtures: one HTTPS sandbox per test session, tenants re-seeded per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# pytest-xdist's workers start with COLUMNS=80 and LINES=24 in their environment (execnet
# sets them); rich reads COLUMNS once, when coexist.cli's consoles are made at import, so a
# test that widens the console with monkeypatch.setenv("COLUMNS") would get 80 columns under
# xdist and its table rows would wrap. Without them rich reads the width at each call, as in
# a serial run. Before any coexist import.
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)

from coexist.sandbox import Sandbox  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def user_log_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Run logs of commands without a project (and of their subprocesses) go to a temporary
    directory, not the user's ~/.local/state/coexist/logs (coexist.logs.user_log_dir)."""
    state = tmp_path_factory.mktemp("xdg-state")
    old = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(state)
    yield state / "coexist" / "logs"
    if old is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = old


@pytest.fixture(scope="session")
def sandbox_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """The running sandbox (source + target) for the whole session."""
    state = tmp_path_factory.mktemp("sandbox")
    with Sandbox(state, seed=7, users=40, profile="fast") as sb:
        yield sb


@pytest.fixture
def sandbox(sandbox_server: Sandbox) -> Sandbox:
    """The session sandbox with freshly seeded tenants (seed 7, 40 users, fast profile)."""
    sandbox_server.reset()
    return sandbox_server


@pytest.fixture
def conn(sandbox: Sandbox) -> dict[str, Any]:
    """connection.json content for the freshly seeded sandbox."""
    return sandbox.connection


@pytest.fixture
def state_dir(sandbox: Sandbox) -> Path:
    return sandbox.state_dir


# --- journal: a PostgreSQL server for the session; journal URLs over both backends ---------

from tests import pg  # noqa: E402


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """SQLAlchemy URL of the session's PostgreSQL database (skips, or fails when CI=true, if absent)."""
    with pg.session_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def journal_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty journal database: a SQLite file, or the session PostgreSQL database wiped clean."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'journal.sqlite'}"
    url: str = request.getfixturevalue("pg_url")
    pg.reset_database(url)
    return url


# --- IMAP: a real Dovecot for the session --------------------------------------------------

from tests.dovecot import DovecotServer, session_dovecot  # noqa: E402


@pytest.fixture(scope="session")
def dovecot() -> Iterator[DovecotServer]:
    """The session's Dovecot (skips, or fails when CI=true, if Dovecot is not installed)."""
    with session_dovecot() as server:
        yield server
