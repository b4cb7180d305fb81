"""Fixtures for end-to-end tests: a coexist project wired to the session sandbox."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from coexist import commands
from coexist.cli import main
from coexist.retry import RetryPolicy
from coexist.sandbox import Sandbox, seed
from coexist.sandbox.server import profile_settings

# Tests retry only what the sandbox throttles or drops, quickly; never a real wait.
TEST_RETRY = RetryPolicy(max_attempts=6, max_wait_s=30, base_s=0.05, cap_s=0.5)


def prepare_for_coexistence(sb: Sandbox) -> str:
    """Allow external forwarding in both tenants (the admins' runbook step); return a
    target service mailbox for probes."""
    with sb.world.lock:
        for tenant in sb.world.tenants.values():
            tenant.auto_forwarding_mode = "On"
            tenant.touch()
        staff = sorted(
            u.user_principal_name
            for u in sb.world.target.users.values()
            if u.recipient_type_details == "UserMailbox"
        )
    return staff[0]


def write_project(directory: Path, sb: Sandbox, service: str, **overrides: Any) -> Path:
    conn = str(sb.state_dir / "connection.json")
    values = {
        "project.name": "e2e",
        "source.sandbox_connection": conn,
        "target.sandbox_connection": conn,
        "domains.destination_domain": seed.TARGET_DOMAIN,
        "scope.group": seed.SCOPE_GROUP,
        "prestage.license_sku": "ENTERPRISEPACK",
        "prestage.usage_location": "US",
        "verify.service_mailbox": service,
        "engine.max_attempts": 6,
        **overrides,
    }
    commands.init(directory, overrides=values)
    return directory


@pytest.fixture
def make_project(sandbox: Sandbox, tmp_path: Path) -> Callable[..., Path]:
    """Build a project (overrides as dotted keys) on a freshly seeded, prepared sandbox."""

    def make(
        *,
        users: int | None = None,
        profile: str = "fast",
        time_scale: float = 1.0,
        **overrides: Any,
    ) -> Path:
        if users is not None or profile != "fast" or time_scale != 1.0:
            settings = profile_settings(profile, 7, time_scale)
            sandbox.reset(seed.generate(7, users or 40, settings))
        service = prepare_for_coexistence(sandbox)
        sandbox.write_connection()
        return write_project(tmp_path / "project", sandbox, service, **overrides)

    return make


@pytest.fixture
def project(make_project: Callable[..., Path]) -> Path:
    """A default project: create mode, forward-on-source, scope group of the seed."""
    return make_project()


@pytest.fixture
def cli() -> Callable[..., Result]:
    """Run the coexist CLI in-process; returns click's Result."""

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    return run
