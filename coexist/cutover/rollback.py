"""Rollback: restore what cutover changed, from the before-states it journaled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coexist.engine.context import Context
from coexist.engine.step import Step, StepResult, registry
from coexist.provisioning.convert import target_id
from coexist.provisioning.exchange import bare, find_one, object_id

from .steps import ClearTargetForwardStep, mailbox_identity_state, source_mailbox

# Fields a before-state may hold, and how each is compared.
ADDRESS_FIELDS = ("ForwardingSmtpAddress",)
LIST_FIELDS = ("EmailAddresses",)


def _differs(field: str, now: Any, wanted: Any) -> bool:
    if field in ADDRESS_FIELDS:
        return bare(now) != bare(wanted)
    if field in LIST_FIELDS:
        return sorted(str(a) for a in now or []) != sorted(str(a) for a in wanted or [])
    if field == "ForwardingAddress":
        return (now or None) != (wanted or None)
    if isinstance(wanted, bool):
        return bool(now) != wanted
    return bool(now != wanted)


def recorded_before(ctx: Context, step_key: str) -> dict[str, Any]:
    rec = ctx.journal.get_step(step_key) or {}
    before: dict[str, Any] = rec.get("before") or {}
    return before


async def _restore(
    ctx: Context, side: str, identity: str, wanted: dict[str, Any], observed: dict[str, Any] | None
) -> StepResult:
    current = mailbox_identity_state(observed)
    changes = {k: v for k, v in wanted.items() if k in current and _differs(k, current[k], v)}
    if not changes:
        return StepResult(False, current, current, "already as before cutover")
    params = {k: v for k, v in changes.items()}
    if params.get("ForwardingSmtpAddress"):
        params["ForwardingSmtpAddress"] = bare(params["ForwardingSmtpAddress"])
    await ctx.side(side).cmdlets.run("Set-Mailbox", Identity=identity, **params)
    return StepResult(
        True, current, {**current, **changes}, "restored " + ", ".join(sorted(changes))
    )


@dataclass(frozen=True)
class RestoreSourceMailboxStep(Step):
    """The source mailbox is as it was before one cutover step changed it."""

    name = "rollback.source"

    from_step: str  # the cutover step whose before-state is restored

    @property
    def key(self) -> str:
        return f"{self.name}.{self.from_step}:{self.subject}"


@registry.register(RestoreSourceMailboxStep)
class RestoreSourceMailboxExecutor:
    async def observe(self, ctx: Context, step: RestoreSourceMailboxStep) -> dict[str, Any] | None:
        return await source_mailbox(ctx, step.subject)

    async def apply(
        self, ctx: Context, step: RestoreSourceMailboxStep, observed: dict[str, Any] | None
    ) -> StepResult:
        wanted = recorded_before(ctx, f"{step.from_step}:{step.subject}")
        return await _restore(ctx, "source", step.subject, wanted, observed)


@dataclass(frozen=True)
class RestoreTargetForwardStep(Step):
    """The target mailbox forwards back to the source again, as before cutover."""

    name = "rollback.target-forward"


@registry.register(RestoreTargetForwardStep)
class RestoreTargetForwardExecutor:
    async def observe(self, ctx: Context, step: RestoreTargetForwardStep) -> dict[str, Any] | None:
        return await find_one(ctx.target.exo, "Get-Mailbox", target_id(ctx, step.subject))

    async def apply(
        self, ctx: Context, step: RestoreTargetForwardStep, observed: dict[str, Any] | None
    ) -> StepResult:
        wanted = recorded_before(ctx, f"{ClearTargetForwardStep.name}:{step.subject}")
        ident = object_id(observed) if observed else target_id(ctx, step.subject)
        return await _restore(ctx, "target", ident, wanted, observed)


@dataclass(frozen=True)
class RemoveSourceContactStep(Step):
    """The mail contact cutover left at the source is gone (its addresses go back)."""

    name = "rollback.source-contact"


@registry.register(RemoveSourceContactStep)
class RemoveSourceContactExecutor:
    async def observe(self, ctx: Context, step: RemoveSourceContactStep) -> dict[str, Any] | None:
        item = ctx.journal.get_item("user", step.subject) or {}
        ident = (item.get("detail") or {}).get("source_contact_id")
        return await find_one(ctx.source.exo, "Get-MailContact", ident) if ident else None

    async def apply(
        self, ctx: Context, step: RemoveSourceContactStep, observed: dict[str, Any] | None
    ) -> StepResult:
        if observed is None:
            return StepResult(False, None, None, "no source contact")
        await ctx.source.exo.run("Remove-MailContact", Identity=object_id(observed), Confirm=False)
        state = {"Identity": object_id(observed), "EmailAddresses": observed.get("EmailAddresses")}
        return StepResult(
            True, state, None, "source contact removed", data={"source_contact_id": None}
        )
