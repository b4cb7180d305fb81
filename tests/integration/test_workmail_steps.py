"""The WorkMail provisioning steps (provisioning/workmail.py) on the sandbox's WorkMail face
through the boto3 adapter: twice (changed, then unchanged), and in plan mode (every write
listed, none sent)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from coexist.engine.context import Context, Side
from coexist.engine.step import StepResult, registry
from coexist.provisioning.workmail import WorkMailAccessStep, WorkMailUserStep, user_name
from coexist.retry import RetryPolicy
from coexist.sandbox import Sandbox
from coexist.sandbox.ews import add_account, set_kind
from coexist.sandbox.ews.orgs import org_domain
from coexist.sandbox.workmail import CALLS_KEY, ERRORS_KEY, THROTTLE_KEY
from coexist.tenants.plan import WriteRecorder
from coexist.tenants.workmail import WorkMailAdmin, WorkMailEndpoint
from coexist.vault import ENV_KEY, Vault, new_key

WRITES = {"CreateUser", "RegisterToWorkMail", "CreateAlias", "PutMailboxPermissions"}


@pytest.fixture
def wm(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    set_kind(sandbox.world, "target", "workmail")
    assert sandbox.ctx is not None
    sandbox.ctx.extra[ERRORS_KEY] = []
    sandbox.ctx.extra[CALLS_KEY] = []
    sandbox.ctx.extra[THROTTLE_KEY] = 0
    monkeypatch.setenv(ENV_KEY, new_key())
    yield sandbox
    assert sandbox.ctx.extra[ERRORS_KEY] == []


def _ctx(sb: Sandbox, directory: Path, plan: WriteRecorder | None = None) -> Context:
    info = sb.connection["tenants"]["target"]["workmail"]
    ep = WorkMailEndpoint(
        info["region"],
        info["organization_id"],
        info["access_key_id"],
        info["endpoint"],
        sb.connection["ca_file"],
    )
    admin = WorkMailAdmin(
        ep, info["secret_access_key"], plan=plan, read_retry=RetryPolicy(base_s=0.01)
    )
    target = Side("target", None, None, None, kind="workmail", workmail=admin)
    source = Side("source", None, None, None, kind="imap")
    project = SimpleNamespace(directory=directory)
    return Context(project=project, journal=None, source=source, target=target, plan=plan)


async def _run(ctx: Context, step: Any) -> StepResult:
    executor = registry.executor_for(step)
    observed = await executor.observe(ctx, step)
    result: StepResult = await executor.apply(ctx, step, observed)
    return result


def _steps(sb: Sandbox) -> tuple[WorkMailUserStep, WorkMailAccessStep, str]:
    domain = org_domain(sb.world.tenants["target"])
    email = f"lena.fischer@{domain}"
    login = add_account(sb.world, "target", "svc-migrate", "Svc-Pass-123").upn
    user = WorkMailUserStep(
        subject="u1",
        user="lena@source.example",
        email=email,
        user_name=user_name(email),
        display_name="Lena Fischer",
        first_name="Lena",
        last_name="Fischer",
        aliases=(f"lf@{domain}",),
    )
    return user, WorkMailAccessStep(subject="u1", user=user.user, email=email, grantee=login), login


def _writes(sb: Sandbox) -> list[str]:
    assert sb.ctx is not None
    return [op for op, _ in sb.ctx.extra[CALLS_KEY] if op in WRITES]


def test_steps_change_then_find_nothing_to_do(wm: Sandbox, tmp_path: Path) -> None:
    """First run: the user is created (password from the vault: generated and stored once),
    registered, aliased, and the migration account granted FULL_ACCESS; second run: both
    steps unchanged, no write sent."""
    user, access, login = _steps(wm)

    async def go() -> None:
        ctx = _ctx(wm, tmp_path)
        first = await _run(ctx, user)
        assert first.changed and first.before is None
        assert first.after is not None and first.after["Aliases"] == [user.aliases[0]]
        granted = await _run(ctx, access)
        assert granted.changed and granted.after == {
            "grantee": login,
            "PermissionValues": ["FULL_ACCESS"],
        }
        sent = _writes(wm)
        assert sent == ["CreateUser", "RegisterToWorkMail", "CreateAlias", "PutMailboxPermissions"]
        again = await _run(ctx, user)
        assert not again.changed and again.before == again.after | {"State": "ENABLED"}
        assert not (await _run(ctx, access)).changed
        assert _writes(wm) == sent
        assert ctx.target.workmail is not None
        await ctx.target.workmail.close()

    asyncio.run(go())
    stored = Vault.open(tmp_path).get("u1", "target")
    assert stored is not None and stored.login == user.email
    account = next(a for a in wm.world.tenants["target"].ews_accounts if a.name == "svc-migrate")
    assert user.email in account.full_access


def test_steps_in_plan_mode_list_every_write_and_send_none(wm: Sandbox, tmp_path: Path) -> None:
    """Plan mode: CreateUser (password redacted), RegisterToWorkMail, CreateAlias and
    PutMailboxPermissions are recorded with their parameters; only reads reach the face, and
    the vault is not written."""
    user, access, _login = _steps(wm)
    recorder = WriteRecorder()

    async def go() -> None:
        ctx = _ctx(wm, tmp_path, plan=recorder)
        assert (await _run(ctx, user)).changed
        assert (await _run(ctx, access)).changed
        assert ctx.target.workmail is not None
        await ctx.target.workmail.close()

    asyncio.run(go())
    ops = [w.operation for w in recorder.writes]
    assert ops == ["CreateUser", "RegisterToWorkMail", "CreateAlias", "PutMailboxPermissions"]
    assert all(w.system == "workmail" and w.tenant == "target" for w in recorder.writes)
    assert recorder.writes[0].params["Password"] == "[redacted]"
    assert "Lena Fischer" in recorder.writes[0].describe()
    assert recorder.writes[3].params["EntityId"] == user.email  # named by address in a plan
    assert _writes(wm) == []
    assert not (tmp_path / "credentials.vault").exists()
