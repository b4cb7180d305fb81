"""Cutover: make the target mailbox live and route the source to it.

Modes (project.toml [cutover] mode):
- forward-on-source: the source mailbox forwards to the target; the target's
  forward back to the source is removed.
- leave-forward-on-target: the source tenant is not touched (for projects whose
  source domain moves to the target later, or whose source forwarding is done by
  someone else); the target's forward back to the source is removed.
- rename-source: the source mailbox is renamed with a prefix (MIGWIZ-), hidden,
  and its SMTP/X500 addresses move to a new mail contact at the source that
  points at the target, so coexistence holds and the mailbox can be recovered.
  The renamed mailbox forwards to that contact so mail addressed to its
  LegacyExchangeDN (replies to old mail) still reaches the target.

Every step records the before-state that `rollback` restores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coexist.engine.context import Context
from coexist.engine.step import Step, StepResult, registry
from coexist.errors import InputError
from coexist.model import EXCHANGE_NAME_MAX
from coexist.provisioning.convert import target_id
from coexist.provisioning.exchange import (
    bare,
    find_one,
    forwarding_state,
    object_id,
    smtp_forward,
)
from coexist.tenants.exo import hashtable


async def source_mailbox(ctx: Context, subject: str) -> dict[str, Any] | None:
    return await find_one(ctx.source.cmdlets, "Get-Mailbox", subject)


def refuse_source_address(
    ctx: Context, subject: str, address: str | None, own: tuple[str, ...], what: str
) -> None:
    """Refuse to point `what` at one of the user's own source addresses (or at nothing).

    The source mailbox answers to those addresses: forwarding it there, or giving its
    contact that target, sends mail back to the source — a loop Exchange ends with
    NDR 5.4.14. It happens when the journal's target address came from New-MailUser's
    output, which in Exchange Online is the source address (New-MailUser.md).
    """
    item = ctx.journal.get_item("user", subject) or {}
    user = item.get("source_address") or subject
    fix = f"coexist provision --users {user}  (sets and reads back the target address)"
    if not address:
        raise InputError(
            f"no target address is journaled for {user}, so {what} has nowhere to point",
            next_step=fix,
            user=user,
        )
    if bare(address) in own:
        raise InputError(
            f"the target address {address} is one of {user}'s own source addresses; "
            f"{what} would send mail back to the source mailbox (a loop, NDR 5.4.14)",
            next_step=f"{fix}, then coexist cutover --users {user}",
            user=user,
            address=address,
        )


@dataclass(frozen=True)
class TargetAddressGuardStep(Step):
    """The target address cutover points the source at is not one of the source's own.

    Runs first, so a refused user has nothing of its cutover written on either side.
    """

    name = "cutover.target-address"

    target_address: str | None
    source_addresses: tuple[str, ...]
    what: str  # what will point at it, for the message


@registry.register(TargetAddressGuardStep)
class TargetAddressGuardExecutor:
    async def observe(self, ctx: Context, step: TargetAddressGuardStep) -> None:
        return None

    async def apply(self, ctx: Context, step: TargetAddressGuardStep, observed: None) -> StepResult:
        refuse_source_address(
            ctx, step.subject, step.target_address, step.source_addresses, step.what
        )
        state = {"target_address": step.target_address}
        return StepResult(False, state, state, "target address is not a source address")


@dataclass(frozen=True)
class SourceForwardStep(Step):
    """The source mailbox forwards to the target address, keeping no copy."""

    name = "cutover.source-forward"

    forward_to: str
    source_addresses: tuple[str, ...] = ()  # never forwarded to (refuse_source_address)


@registry.register(SourceForwardStep)
class SourceForwardExecutor:
    async def observe(self, ctx: Context, step: SourceForwardStep) -> dict[str, Any] | None:
        return await source_mailbox(ctx, step.subject)

    async def apply(
        self, ctx: Context, step: SourceForwardStep, observed: dict[str, Any] | None
    ) -> StepResult:
        refuse_source_address(
            ctx, step.subject, step.forward_to, step.source_addresses, "the source's forward"
        )
        return await smtp_forward(
            ctx.source.exo,
            step.subject,
            observed,
            step.forward_to,
            unchanged="source already forwards to the target",
            changed=f"source forwards to {step.forward_to}",
        )


@dataclass(frozen=True)
class ClearTargetForwardStep(Step):
    """The target mailbox keeps its mail: no forward back to the source."""

    name = "cutover.target-live"


@registry.register(ClearTargetForwardStep)
class ClearTargetForwardExecutor:
    async def observe(self, ctx: Context, step: ClearTargetForwardStep) -> dict[str, Any] | None:
        return await find_one(ctx.target.exo, "Get-Mailbox", target_id(ctx, step.subject))

    async def apply(
        self, ctx: Context, step: ClearTargetForwardStep, observed: dict[str, Any] | None
    ) -> StepResult:
        return await smtp_forward(
            ctx.target.exo,
            object_id(observed) if observed else target_id(ctx, step.subject),
            observed,
            None,
            unchanged="target mailbox has no forward",
            changed="target forward removed",
        )


def renamed(prefix: str, text: str) -> str:
    return text if text.startswith(prefix) else (prefix + text)[:EXCHANGE_NAME_MAX]


def mailbox_identity_state(obj: dict[str, Any] | None) -> dict[str, Any]:
    obj = obj or {}
    return {
        "Name": obj.get("Name"),
        "DisplayName": obj.get("DisplayName"),
        "EmailAddresses": list(obj.get("EmailAddresses") or []),
        "HiddenFromAddressListsEnabled": bool(obj.get("HiddenFromAddressListsEnabled")),
        **forwarding_state(obj),
    }


@dataclass(frozen=True)
class RenameSourceStep(Step):
    """The source mailbox is renamed, hidden, and keeps only a prefixed routing address.

    One Set-Mailbox call changes name and addresses together, so a crash never
    leaves a half-renamed source.
    """

    name = "cutover.rename-source"

    prefix: str
    routing_domain: str  # the source's initial (onmicrosoft) domain


@registry.register(RenameSourceStep)
class RenameSourceExecutor:
    async def observe(self, ctx: Context, step: RenameSourceStep) -> dict[str, Any] | None:
        return await source_mailbox(ctx, step.subject)

    async def apply(
        self, ctx: Context, step: RenameSourceStep, observed: dict[str, Any] | None
    ) -> StepResult:
        before = mailbox_identity_state(observed)
        if observed is None:
            return StepResult(False, None, None, "source mailbox not found", status="waiting")
        if str(observed.get("Name", "")).startswith(step.prefix):
            return StepResult(False, before, before, "source already renamed")
        alias = str(observed.get("Alias"))
        new_primary = f"SMTP:{step.prefix}{alias}@{step.routing_domain}"
        await ctx.source.exo.run(
            "Set-Mailbox",
            Identity=step.subject,
            Name=renamed(step.prefix, str(observed.get("Name"))),
            DisplayName=renamed(step.prefix, str(observed.get("DisplayName"))),
            EmailAddresses=[new_primary],
            HiddenFromAddressListsEnabled=True,
        )
        after = {
            **before,
            "Name": renamed(step.prefix, str(observed.get("Name"))),
            "DisplayName": renamed(step.prefix, str(observed.get("DisplayName"))),
            "EmailAddresses": [new_primary],
            "HiddenFromAddressListsEnabled": True,
        }
        return StepResult(
            True, before, after, "source mailbox renamed", data={"source_renamed": True}
        )


@dataclass(frozen=True)
class SourceContactStep(Step):
    """A mail contact at the source carries the user's original addresses to the target."""

    name = "cutover.source-contact"

    contact_name: str
    display_name: str
    alias: str
    external_address: str  # the target primary address
    addresses: tuple[str, ...]  # the source mailbox's original SMTP and X500 proxies
    source_addresses: tuple[str, ...] = ()  # never the contact's target (refuse_source_address)


@registry.register(SourceContactStep)
class SourceContactExecutor:
    async def observe(self, ctx: Context, step: SourceContactStep) -> dict[str, Any] | None:
        item = ctx.journal.get_item("user", step.subject) or {}
        detail = item.get("detail") or {}
        ident = detail.get("source_contact_id") or step.alias
        return await find_one(ctx.source.exo, "Get-MailContact", ident)

    async def apply(
        self, ctx: Context, step: SourceContactStep, observed: dict[str, Any] | None
    ) -> StepResult:
        refuse_source_address(
            ctx, step.subject, step.external_address, step.source_addresses, "the source contact"
        )
        exo = ctx.source.exo
        if observed is None:
            created = await exo.run(
                "New-MailContact",
                Name=step.contact_name,
                DisplayName=step.display_name,
                Alias=step.alias,
                ExternalEmailAddress=step.external_address,
            )
            ident = object_id(created[0]) if created else step.alias
            await exo.run(
                "Set-MailContact",
                Identity=ident,
                EmailAddresses=hashtable(add=list(step.addresses)),
            )
            if ctx.planning:
                return StepResult(
                    True, None, {"planned": step.alias}, "would create source contact"
                )
            after = await find_one(exo, "Get-MailContact", ident)
            return StepResult(
                True,
                None,
                _contact_state(after),
                "source contact created",
                data={"source_contact_id": ident},
            )
        missing = [
            a
            for a in step.addresses
            if a.lower() not in {x.lower() for x in observed.get("EmailAddresses") or []}
        ]
        ext_ok = bare(observed.get("ExternalEmailAddress")) == step.external_address.lower()
        if not missing and ext_ok:
            return StepResult(
                False,
                _contact_state(observed),
                _contact_state(observed),
                "source contact in place",
                data={"source_contact_id": object_id(observed)},
            )
        params: dict[str, Any] = {}
        if missing:
            params["EmailAddresses"] = hashtable(add=missing)
        if not ext_ok:
            params["ExternalEmailAddress"] = step.external_address
        await exo.run("Set-MailContact", Identity=object_id(observed), **params)
        after = (
            await find_one(exo, "Get-MailContact", object_id(observed))
            if not ctx.planning
            else observed
        )
        return StepResult(
            True,
            _contact_state(observed),
            _contact_state(after),
            "source contact updated",
            data={"source_contact_id": object_id(observed)},
        )


def _contact_state(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    if not obj:
        return None
    return {
        "Identity": object_id(obj),
        "Name": obj.get("Name"),
        "ExternalEmailAddress": obj.get("ExternalEmailAddress"),
        "EmailAddresses": sorted(obj.get("EmailAddresses") or []),
    }


@dataclass(frozen=True)
class RenamedForwardStep(Step):
    """The renamed source mailbox forwards to the contact (LegacyExchangeDN replies flow on)."""

    name = "cutover.renamed-forward"


@registry.register(RenamedForwardStep)
class RenamedForwardExecutor:
    async def observe(
        self, ctx: Context, step: RenamedForwardStep
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The source mailbox, and the contact it should forward to (when recorded)."""
        return await mailbox_and_contact(ctx, step.subject, "source_contact_id")

    async def apply(
        self,
        ctx: Context,
        step: RenamedForwardStep,
        observed: tuple[dict[str, Any] | None, dict[str, Any] | None],
    ) -> StepResult:
        mailbox, found = observed
        item = ctx.journal.get_item("user", step.subject) or {}
        contact = (item.get("detail") or {}).get("source_contact_id")
        before = forwarding_state(mailbox)
        if ctx.planning and not contact:
            contact = "<the new source contact>"
        if contact and forwards_to_contact(before, contact, found):
            return StepResult(False, before, before, "renamed source forwards to the contact")
        after = await forward_to_contact(ctx, step.subject, contact)
        return StepResult(True, before, after, "renamed source forwards to the contact")


async def mailbox_and_contact(
    ctx: Context, subject: str, detail_key: str
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The user's source mailbox, and the contact whose id the user's journal detail holds
    under `detail_key` (None when none is recorded yet or it is gone)."""
    item = ctx.journal.get_item("user", subject) or {}
    ident = (item.get("detail") or {}).get(detail_key)
    contact = await find_one(ctx.source.cmdlets, "Get-MailContact", ident) if ident else None
    return await source_mailbox(ctx, subject), contact


def forwards_to_contact(before: dict[str, Any], ident: str, contact: dict[str, Any] | None) -> bool:
    """Whether a source mailbox's forwarding state (`forwarding_state`) is a forward to the
    contact `ident`, with no SMTP forward beside it and no local copy kept."""
    return bool(
        before["ForwardingAddress"]
        and _same_recipient(before["ForwardingAddress"], ident, contact)
        and not before["ForwardingSmtpAddress"]
        and not before["DeliverToMailboxAndForward"]
    )


async def forward_to_contact(ctx: Context, subject: str, ident: str | None) -> dict[str, Any]:
    """The source mailbox forwards to the contact `ident` and keeps no copy (a kept copy
    would be moved again by the next delta pass, FACTS.md); returns the state it set."""
    await ctx.source.cmdlets.run(
        "Set-Mailbox",
        Identity=subject,
        ForwardingAddress=ident,
        ForwardingSmtpAddress=None,
        DeliverToMailboxAndForward=False,
    )
    return {
        "ForwardingAddress": ident,
        "ForwardingSmtpAddress": None,
        "DeliverToMailboxAndForward": False,
    }


def _same_recipient(value: Any, ident: str, contact: dict[str, Any] | None) -> bool:
    """Whether a mailbox's ForwardingAddress names the contact.

    Get-Mailbox shows ForwardingAddress as the recipient's identity (its Name), not the
    object id it was set with (Set-Mailbox reference, -ForwardingAddress accepts any
    identity), so compare with every identity of the contact.
    """
    text = str(value).lower()
    names = {ident.lower()}
    if contact:
        for key in (
            "Name",
            "Identity",
            "Alias",
            "Guid",
            "ExternalDirectoryObjectId",
            "DistinguishedName",
        ):
            if contact.get(key):
                names.add(str(contact[key]).lower())
    return text in names or any(text.endswith("/" + n) for n in names)
