"""The test session's Dovecot (as tests/pg.py is PostgreSQL): the product's launcher,
`coexist.sandbox.dovecot`, started once per session.

One server per test session (stopping one takes about a second): each test asks for fresh
users (`DovecotServer.new_user`) instead of a fresh server, so tests stay independent
without restarts. Without Dovecot the fixture skips, and fails when CI=true.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from coexist.errors import ConfigError
from coexist.sandbox.dovecot import (
    INSTALL_HINT,
    MASTER_USER,
    DovecotServer,
    ImapUser,
    binaries,
    running_dovecot,
)

__all__ = ["MASTER_USER", "DovecotServer", "ImapUser", "missing", "session_dovecot"]


def missing(message: str = INSTALL_HINT) -> None:
    """Fail in CI (a silently skipped backend is a lie), skip on a developer machine."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@contextmanager
def session_dovecot() -> Iterator[DovecotServer]:
    """Start a Dovecot for the session, yield it, stop it (skip, or fail when CI=true)."""
    try:
        binaries()
    except ConfigError as exc:
        missing(exc.message)
    with running_dovecot(name="coexist-test") as server:
        yield server
