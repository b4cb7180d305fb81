"""Plans for `provision` and `prestage`: which steps each user gets, in order."""

from __future__ import annotations

from typing import Any

from coexist.engine.context import Context
from coexist.engine.runner import ItemPlan, set_item
from coexist.journal import Batch
from coexist.model import Phase, SourceMailbox, forwarding_address

from .convert import LicenseStep, MailboxReadyStep, TargetForwardStep
from .exchange import own_addresses
from .index import TargetIndex
from .mailusers import MailUserStep
from .orphans import Obstacles, obstacles
from .plan import TargetPlan, plan_create, plan_match


async def target_index(ctx: Context) -> TargetIndex:
    """All target recipients, read once per run (FACTS.md: bulk reads)."""
    if "target_index" not in ctx.cache:
        recipients = await ctx.target.exo.run("Get-Recipient", ResultSize="Unlimited")
        ctx.cache["target_index"] = TargetIndex.build(recipients)
    index: TargetIndex = ctx.cache["target_index"]
    return index


def source_of(item: dict[str, Any]) -> SourceMailbox:
    return SourceMailbox.from_dict((item.get("detail") or {})["source"])


async def plan_targets(ctx: Context, items: list[dict[str, Any]]) -> dict[str, TargetPlan]:
    """Each user's target plan: the recorded one, or a new one reserved now.

    Plans are made one user at a time, in a stable order, against one index that
    also holds every earlier reservation, so two source users never get the
    same address. New plans are journaled before any write.
    """
    index = await target_index(ctx)
    project = ctx.project
    plans: dict[str, TargetPlan] = {}
    for item in items:  # recorded plans first: they hold their addresses
        recorded = (item.get("detail") or {}).get("target_plan")
        if recorded:
            plan = TargetPlan.from_dict(recorded)
            if plan.primary_smtp:
                index.reserve(item["key"], address=plan.primary_smtp, name=plan.name)
            plans[item["key"]] = plan
    claimed = {p.matched_id: k for k, p in plans.items() if p.matched_id}
    new_plans = Batch()  # written in one go, still before any write to a tenant
    for item in sorted(items, key=lambda i: str(i.get("source_address") or i["key"]).lower()):
        if item["key"] in plans:
            continue
        src = source_of(item)
        dest = project.destination_domain
        fwd = project.domains.source_forwarding_domain
        if project.mail_users.mode == "match":
            plan = plan_match(src, index, dest, fwd, claimed)
        else:
            plan = plan_create(src, index, dest, fwd, obstacles_of(ctx, item, index).adoptable)
        plans[item["key"]] = plan
        if not ctx.planning:
            set_item(new_plans, "user", item["key"], target_plan=plan.to_dict())
    ctx.journal.write_batch(new_plans)
    return plans


def obstacles_of(ctx: Context, item: dict[str, Any], index: TargetIndex) -> Obstacles:
    """What the snapshot has in the way of this user's new MailUser (orphans.obstacles)."""
    src = source_of(item)
    return obstacles(
        index,
        str(item.get("source_address") or src.primary_smtp),
        forwarding_address(src, ctx.project.domains.source_forwarding_domain),
        src.x500_proxies(),
        replace_contacts=ctx.project.mail_users.replace_contacts,
    )


def mailuser_step(
    ctx: Context, item: dict[str, Any], plan: TargetPlan, adopt: bool = False
) -> MailUserStep:
    """The step from the reserved plan plus what the source looks like now (rediscovery).

    `adopt` (provision --adopt): a target object that routes to the source mailbox but that
    this journal did not make is taken over instead of failing the user (orphans.py)."""
    src = source_of(item)
    forwarding = ctx.project.domains.source_forwarding_domain
    return MailUserStep(
        subject=item["key"],
        mode=plan.mode,
        target_name=plan.name,
        alias=plan.alias,
        display_name=src.display_name,
        primary_smtp=plan.primary_smtp,
        external_address=forwarding_address(src, forwarding),
        x500=tuple(src.x500_proxies()),
        first_name=src.first_name,
        last_name=src.last_name,
        matched_id=plan.matched_id,
        forward_matched=ctx.project.mail_users.forward_matched_to_source,
        replace_contacts=ctx.project.mail_users.replace_contacts,
        source_addresses=own_addresses(src, forwarding),
        user=str(item.get("source_address") or src.primary_smtp),
        adopt_id=plan.adopt_id,
        adopt=adopt,
    )


def provision_plans(
    ctx: Context, items: list[dict[str, Any]], plans: dict[str, TargetPlan], adopt: bool = False
) -> tuple[list[ItemPlan], list[dict[str, Any]]]:
    """Item plans for users ready to provision, and the users waiting for a decision."""
    out: list[ItemPlan] = []
    waiting: list[dict[str, Any]] = []
    for item in items:
        plan = plans[item["key"]]
        if plan.candidates and not plan.matched_id:
            waiting.append(
                {
                    "user": item.get("source_address"),
                    "candidates": list(plan.candidates),
                    "candidate_kinds": dict(
                        zip(plan.candidates, plan.candidate_kinds, strict=False)
                    ),
                    "next_step": f"coexist confirm --user {item.get('source_address')} --target <id>",
                }
            )
            if not ctx.planning:
                set_item(
                    ctx.journal,
                    "user",
                    item["key"],
                    state="waiting",
                    waiting_for="match confirmation: several target candidates",
                )
            continue
        phase = Phase.PROVISIONED.value if item.get("phase") == Phase.DISCOVERED.value else None
        out.append(
            ItemPlan(
                "user",
                item["key"],
                [mailuser_step(ctx, item, plan, adopt)],
                phase,
                label=str(item.get("source_address")),
            )
        )
    return out, waiting


def prestage_plans(ctx: Context, item: dict[str, Any], sku_id: str | None) -> ItemPlan:
    """License, wait for the mailbox, then forward it back to the source: one user's steps.

    Each user goes through them on its own (a user whose mailbox is not there yet waits with
    a time to look again and frees its slot), so Exchange provisions the batch's mailboxes
    at once and a run stopped midway keeps every user's progress.
    """
    src = source_of(item)
    # A user already cut over keeps a live target: forwarding it back to the source again
    # would undo the cutover (and loop mail under forward-on-source), and its phase stays.
    cut_over = item.get("phase") == Phase.CUTOVER.value
    steps: list[Any] = []
    if ctx.project.prestage.convert and sku_id:
        usage = src.usage_location or ctx.project.prestage.usage_location
        steps.append(LicenseStep(subject=item["key"], sku_id=sku_id, usage_location=usage))
        steps.append(MailboxReadyStep(subject=item["key"]))
        if not cut_over:
            steps.append(
                TargetForwardStep(
                    subject=item["key"],
                    forward_to=forwarding_address(
                        src, ctx.project.domains.source_forwarding_domain
                    ),
                )
            )
    phase = None if cut_over else Phase.PRESTAGED.value
    return ItemPlan("user", item["key"], steps, phase, label=str(item.get("source_address")))
