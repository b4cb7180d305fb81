"""Cutover and rollback plans per post-migration mode."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from coexist.engine.context import Context
from coexist.engine.runner import ItemPlan
from coexist.engine.step import Step
from coexist.model import Phase, SourceMailbox, proxies_of
from coexist.provisioning.exchange import own_addresses

from .hosted import ContactForwardStep, ForwardContactStep, contact_alias, contact_name
from .rollback import RemoveSourceContactStep, RestoreSourceMailboxStep, RestoreTargetForwardStep
from .steps import (
    ClearTargetForwardStep,
    RenamedForwardStep,
    RenameSourceStep,
    SourceContactStep,
    SourceForwardStep,
    TargetAddressGuardStep,
)

MODES = ("forward-on-source", "leave-forward-on-target", "rename-source")


def source_of(item: dict[str, Any]) -> SourceMailbox:
    return SourceMailbox.from_dict((item.get("detail") or {})["source"])


def cutover_steps(ctx: Context, item: dict[str, Any], routing_domain: str) -> list[Step]:
    mode = ctx.project.cutover.mode
    key = item["key"]
    src = source_of(item)
    own = own_addresses(src, ctx.project.domains.source_forwarding_domain)
    target_address = str(item.get("target_address") or "")
    steps: list[Step] = []
    if mode == "forward-on-source":
        what = "the source's forward"
    elif mode == "rename-source":
        what = "the source contact"
    else:  # leave-forward-on-target: nothing at the source points at the target address
        return [ClearTargetForwardStep(subject=key)]
    # Before anything is written for the user: a refused user keeps its pre-cutover routing.
    steps += [
        TargetAddressGuardStep(
            subject=key, target_address=target_address, source_addresses=own, what=what
        ),
        ClearTargetForwardStep(subject=key),
    ]
    if mode == "forward-on-source":
        steps.append(
            SourceForwardStep(subject=key, forward_to=target_address, source_addresses=own)
        )
    else:
        prefix = ctx.project.cutover.rename_prefix
        smtp = [f"smtp:{a}" for a in proxies_of(src.email_addresses, "smtp")]
        primary = f"SMTP:{src.primary_smtp}"
        addresses = [primary] + [a for a in smtp if a.lower() != primary.lower()]
        addresses += [f"X500:{x}" for x in proxies_of(src.email_addresses, "x500")]
        steps += [
            RenameSourceStep(subject=key, prefix=prefix, routing_domain=routing_domain),
            SourceContactStep(
                subject=key,
                contact_name=src.name,
                display_name=src.display_name,
                alias=src.alias,
                external_address=target_address,
                addresses=tuple(addresses),
                source_addresses=own,
            ),
            RenamedForwardStep(subject=key),
        ]
    return steps


def forward_contact_step(ctx: Context, item: dict[str, Any]) -> ForwardContactStep:
    """The user's forwarding object at a hosted Exchange source (created at prestage)."""
    address = str(item.get("source_address") or item["key"])
    settings = ctx.project.cutover
    return ForwardContactStep(
        subject=item["key"],
        contact_name=contact_name(settings.forward_contact_name, item),
        alias=contact_alias(address),
        external_address=str(item.get("target_address") or ""),
        organizational_unit=settings.forward_contact_ou or None,
        source_addresses=(address.lower(),),
    )


def hosted_cutover_plan(
    ctx: Context, item: dict[str, Any], done: Mapping[str, Any] | None = None
) -> ItemPlan:
    """A hosted Exchange source's cutover: its forwarding object is in place (made at
    prestage; made now if it was not), then the mailbox forwards to it, keeping no copy."""
    steps: list[Step] = [forward_contact_step(ctx, item), ContactForwardStep(subject=item["key"])]
    return ItemPlan(
        "user",
        item["key"],
        steps,
        Phase.CUTOVER.value,
        label=str(item.get("source_address")),
        done=done or {},
    )


def cutover_plan(
    ctx: Context, item: dict[str, Any], routing_domain: str, done: Mapping[str, Any] | None = None
) -> ItemPlan:
    return ItemPlan(
        "user",
        item["key"],
        cutover_steps(ctx, item, routing_domain),
        Phase.CUTOVER.value,
        label=str(item.get("source_address")),
        done=done or {},
    )


def rollback_plan(ctx: Context, item: dict[str, Any]) -> ItemPlan:
    """Undo the recorded cutover steps, newest first, from their before-states."""
    key = item["key"]
    steps: list[Step] = []
    journal = ctx.journal
    renamed = journal.get_step(f"{RenamedForwardStep.name}:{key}") or journal.get_step(
        f"{RenameSourceStep.name}:{key}"
    )
    names = (
        RenamedForwardStep.name,
        RenameSourceStep.name,
        SourceForwardStep.name,
        ContactForwardStep.name,
    )
    for name in names:
        if name == RenameSourceStep.name and renamed:
            # After the renamed mailbox stops forwarding to the contact (reverse order of
            # cutover) and before its addresses go back to the mailbox, which the contact
            # holds until it is gone.
            steps.append(RemoveSourceContactStep(subject=key))
        rec = journal.get_step(f"{name}:{key}")
        # Restoring is idempotent (it compares), so any recorded before-state is used,
        # even one a later unchanged re-run carried forward.
        if rec and rec.get("status") == "ok" and rec.get("before"):
            steps.append(RestoreSourceMailboxStep(subject=key, from_step=name))
    rec = journal.get_step(f"{ClearTargetForwardStep.name}:{key}")
    if rec and rec.get("status") == "ok" and rec.get("before"):
        steps.append(RestoreTargetForwardStep(subject=key))
    return ItemPlan(
        "user", key, steps, Phase.ROLLED_BACK.value, label=str(item.get("source_address"))
    )
