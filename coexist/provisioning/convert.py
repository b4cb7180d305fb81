"""Pre-stage: MailUser → mailbox by licensing, then keep mail flowing to the source.

Licensing a cloud MailUser that has no ExchangeGuid provisions a new mailbox
after a delay (with an ExchangeGuid it would wait for a move instead), and
`assignLicense` needs `usageLocation` first (FACTS.md). The new target mailbox
forwards to the source mailbox until cutover, without keeping a copy
(DeliverToMailboxAndForward false, or delta passes would duplicate: FACTS.md).

Microsoft 365 takes minutes here: the MailUser made through Exchange reaches
Graph after directory replication, and the mailbox after licensing. Neither is
waited for in a sleep: the step raises `NotReady` (or returns a `recheck` wait)
and the runner records the user `waiting` with a time to look again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from coexist.engine.context import Context
from coexist.engine.step import Step, StepResult, registry
from coexist.errors import InputError, InvalidRequest, NotFound, NotReady

from .exchange import find_one, is_mailbox, object_id, smtp_forward


def target_id(ctx: Context, subject: str) -> str:
    item = ctx.journal.get_item("user", subject) or {}
    ident = item.get("target_id")
    if not ident:
        raise InputError(
            f"user {item.get('source_address') or subject} has no target object yet",
            next_step=f"coexist provision --users {item.get('source_address') or subject}"
            "  (creates the target MailUser first)",
        )
    return str(ident)


@dataclass(frozen=True)
class LicenseStep(Step):
    """The target user has a usage location and the project's license."""

    name = "prestage.license"

    sku_id: str
    usage_location: str | None


def _named(ctx: Context, key: str) -> str:
    """The user as operators know it (its target address, else its source address): step
    lines and errors name people, never only their directory id (that is in -v and --json)."""
    item = ctx.journal.get_item("user", key) or {}
    return str(item.get("target_address") or item.get("source_address") or "(unnamed)")


@registry.register(LicenseStep)
class LicenseExecutor:
    async def observe(self, ctx: Context, step: LicenseStep) -> dict[str, Any]:
        ident = target_id(ctx, step.subject)
        try:
            user: dict[str, Any] = await ctx.target.graph.send(
                "GET", f"users/{ident}", params={"$select": "id,usageLocation,assignedLicenses"}
            )
        except NotFound as exc:
            # The MailUser was created through Exchange (its id is journaled): it reaches
            # Graph after directory replication, minutes not seconds (FACTS.md).
            raise NotReady(
                f"target user {_named(ctx, step.subject)} is not in Graph yet: {exc.message}",
                reason=REPLICATING,
                service="graph",
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
                    f"target user {_named(ctx, step.subject)} has no usageLocation and the "
                    "project sets none",
                    next_step="set [prestage] usage_location in project.toml, then coexist retry",
                )
            await _set_usage_location(ctx, step, str(observed["id"]))
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


# Why a user waits here, as `coexist status` shows it (no ids: the user is named beside it).
REPLICATING = "target MailUser not in Graph yet (directory replication from Exchange)"
PROVISIONING = "target mailbox provisioning after licensing"


async def _set_usage_location(ctx: Context, step: LicenseStep, ident: str) -> None:
    """PATCH usageLocation: the only way to set it (no Exchange cmdlet has it, spec/exo-cmdlets)."""
    try:
        await ctx.target.graph.send(
            "PATCH", f"users/{ident}", json={"usageLocation": step.usage_location}
        )
    except InvalidRequest as exc:
        # Graph may refuse to change a user Exchange created ("originated within an
        # external service", *unverified* for usageLocation; sandbox setting
        # graph_patch_refusal). The transient "undergoing migration" refusal is NotReady.
        raise InvalidRequest(
            f"Graph refused to set usageLocation {step.usage_location} on the target user: "
            f"{exc.message}",
            service="graph",
            code=exc.code,
            status=exc.status,
            next_step=(
                f"set the usage location ({step.usage_location}) of the target user in the "
                "Microsoft 365 admin center (Users > Active users > the user > Account), "
                "then coexist retry"
            ),
        ) from exc


@dataclass(frozen=True)
class MailboxReadyStep(Step):
    """The licensed target MailUser has become a mailbox (Exchange provisions it after a delay)."""

    name = "prestage.mailbox"


@registry.register(MailboxReadyStep)
class MailboxReadyExecutor:
    async def observe(self, ctx: Context, step: MailboxReadyStep) -> dict[str, Any] | None:
        return await find_one(ctx.target.exo, "Get-Recipient", target_id(ctx, step.subject))

    async def apply(
        self, ctx: Context, step: MailboxReadyStep, observed: dict[str, Any] | None
    ) -> StepResult:
        kind = observed.get("RecipientTypeDetails") if observed else None
        state = {"RecipientTypeDetails": kind}
        if is_mailbox(observed) or ctx.planning:
            return StepResult(False, state, state, "mailbox exists")
        # One look per run: Exchange provisions the mailbox in minutes (FACTS.md); the
        # runner records when to look again and `coexist retry` continues from there.
        return StepResult(False, state, state, PROVISIONING, status="waiting", recheck=True)


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
