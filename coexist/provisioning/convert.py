"""Pre-stage: MailUser → mailbox by licensing, then keep mail flowing to the source.

Licensing a cloud MailUser that has no ExchangeGuid provisions a new mailbox
after a delay (with an ExchangeGuid it would wait for a move instead), and
`assignLicense` needs `usageLocation` first (FACTS.md). The new target mailbox
forwards to the source mailbox until cutover, without keeping a copy
(DeliverToMailboxAndForward false, or delta passes would duplicate: FACTS.md).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from coexist.engine.context import Context
from coexist.engine.step import Step, StepResult, registry
from coexist.errors import InputError, NotFound, TransientError

from .exchange import find_one, is_mailbox, object_id, smtp_forward


def target_id(ctx: Context, subject: str) -> str:
    item = ctx.journal.get_item("user", subject) or {}
    ident = item.get("target_id")
    if not ident:
        raise InputError(
            f"user {item.get('source_address') or subject} has no target object yet",
            next_step="coexist provision  (creates the target MailUser first)",
        )
    return str(ident)


@dataclass(frozen=True)
class LicenseStep(Step):
    """The target user has a usage location and the project's license."""

    name = "prestage.license"

    sku_id: str
    usage_location: str | None


@registry.register(LicenseStep)
class LicenseExecutor:
    async def observe(self, ctx: Context, step: LicenseStep) -> dict[str, Any]:
        ident = target_id(ctx, step.subject)
        try:
            user: dict[str, Any] = await ctx.target.graph.send(
                "GET", f"users/{ident}", params={"$select": "id,usageLocation,assignedLicenses"}
            )
        except NotFound as exc:
            # A MailUser created through Exchange reaches Graph after directory
            # replication; new objects may 404 for seconds (FACTS.md): retry later.
            raise TransientError(
                f"target user {ident} is not visible in Graph yet (replication)",
                service="graph",
                retry_after=2.0,
            ) from exc
        return user

    async def apply(self, ctx: Context, step: LicenseStep, observed: dict[str, Any]) -> StepResult:
        graph = ctx.target.graph
        skus = sorted(lic["skuId"] for lic in observed.get("assignedLicenses") or [])
        before: dict[str, Any] = {"usageLocation": observed.get("usageLocation"), "skus": skus}
        changed = []
        if not observed.get("usageLocation"):
            if not step.usage_location:
                raise InputError(
                    f"target user {observed['id']} has no usageLocation and the project sets none",
                    next_step="set [prestage] usage_location in project.toml, then coexist retry",
                )
            await graph.send(
                "PATCH", f"users/{observed['id']}", json={"usageLocation": step.usage_location}
            )
            changed.append("usageLocation")
        if step.sku_id not in skus:
            await graph.send(
                "POST",
                f"users/{observed['id']}/assignLicense",
                json={
                    "addLicenses": [{"skuId": step.sku_id, "disabledPlans": []}],
                    "removeLicenses": [],
                },
            )
            changed.append("license")
        after = {
            "usageLocation": observed.get("usageLocation") or step.usage_location,
            "skus": sorted({*skus, step.sku_id}),
        }
        detail = ("set " + ", ".join(changed)) if changed else "already licensed"
        return StepResult(
            bool(changed),
            before,
            after,
            detail,
            data={"licensed_at": time.time()} if changed else {},
        )


@dataclass(frozen=True)
class MailboxReadyStep(Step):
    """The licensed target MailUser has become a mailbox (Exchange provisions it after a delay)."""

    name = "prestage.mailbox"

    timeout_s: float = 600.0


@registry.register(MailboxReadyStep)
class MailboxReadyExecutor:
    async def observe(self, ctx: Context, step: MailboxReadyStep) -> dict[str, Any] | None:
        return await find_one(ctx.target.exo, "Get-Recipient", target_id(ctx, step.subject))

    async def apply(
        self, ctx: Context, step: MailboxReadyStep, observed: dict[str, Any] | None
    ) -> StepResult:
        if is_mailbox(observed) or ctx.planning:
            kind = observed.get("RecipientTypeDetails") if observed else None
            return StepResult(
                False,
                {"RecipientTypeDetails": kind},
                {"RecipientTypeDetails": kind},
                "mailbox exists",
            )
        before = {
            "RecipientTypeDetails": observed.get("RecipientTypeDetails") if observed else None
        }
        deadline = time.monotonic() + step.timeout_s
        delay = 0.25
        ident = target_id(ctx, step.subject)
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 15.0)
            found = await find_one(ctx.target.exo, "Get-Recipient", ident)
            if is_mailbox(found):
                assert found is not None
                return StepResult(
                    True,
                    before,
                    {"RecipientTypeDetails": found["RecipientTypeDetails"]},
                    "mailbox provisioned",
                )
        return StepResult(
            False,
            before,
            before,
            "target mailbox still provisioning after licensing; run `coexist prestage` again later",
            status="waiting",
        )


@dataclass(frozen=True)
class TargetForwardStep(Step):
    """The target mailbox forwards to the source mailbox (pre-stage coexistence)."""

    name = "prestage.target-forward"

    forward_to: str


@registry.register(TargetForwardStep)
class TargetForwardExecutor:
    async def observe(self, ctx: Context, step: TargetForwardStep) -> dict[str, Any] | None:
        return await find_one(ctx.target.exo, "Get-Mailbox", target_id(ctx, step.subject))

    async def apply(
        self, ctx: Context, step: TargetForwardStep, observed: dict[str, Any] | None
    ) -> StepResult:
        return await smtp_forward(
            ctx.target.exo,
            object_id(observed) if observed else target_id(ctx, step.subject),
            observed,
            step.forward_to,
            unchanged="already forwarding to the source",
            changed=f"forwarding to {step.forward_to}",
        )
