"""Hosted Exchange coexistence over remote PowerShell (seed: Hosted Exchange -> Hosted Exchange).

The seed keeps mail flowing during a phased move with *forwarding objects*: a hidden mail
contact per user in the source organisation ("<Display Name> (External Forward)", pointing at
the user's new address), created ahead of time; then, batch by batch at cutover,
`Set-Mailbox -ForwardingAddress <contact> -DeliverToMailboxAndForward $false`. A local copy
kept while forwarding would be moved again by the next delta pass (a duplicate in the target,
FACTS.md), so the flag is enforced and read back. Rollback restores the mailbox's forwarding
fields from the before-state the cutover step journaled (`rollback.RestoreSourceMailboxStep`).

These steps run where the source is an Exchange organisation whose remote PowerShell endpoint
is configured (`[source.ews] powershell_url`), through the same `CmdletRunner` protocol the
Exchange Online steps use (`tenants/psrp.py` on-premises, `tenants/exo.py` online). Every
cmdlet and parameter used here is in the on-premises parameter sets of
`spec/exo-cmdlets.json` (tests/contract/test_hosted_cmdlets.py holds them to it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from coexist.engine.context import CMDLETS, DIRECTORY, Context, Side
from coexist.engine.step import Step, StepResult, registry
from coexist.errors import InputError
from coexist.model import Phase
from coexist.provisioning.exchange import bare, find_one, forwarding_state, object_id

from .steps import (
    forward_to_contact,
    forwards_to_contact,
    mailbox_and_contact,
    refuse_source_address,
    source_mailbox,
)

# The seed's name for a forwarding object; `[cutover] forward_contact_name` may change it.
DEFAULT_CONTACT_NAME = "{display_name} (External Forward)"
# Exchange's Name is at most 64 characters (New-MailContact -Name: "maximum length is 64").
NAME_MAX = 64
# Alias characters Exchange accepts (New-MailContact -Alias: letters, digits and
# !, #, $, %, &, ', *, +, -, /, =, ?, ^, _, `, {, |, } and ~; periods not at the ends).
_ALIAS_BAD = re.compile(r"[^A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]")
ALIAS_SUFFIX = "-fwd"
# Where the user's journal detail keeps its forwarding object's id.
CONTACT_KEY = "forward_contact_id"


def runs_hosted_cmdlets(side: Side) -> bool:
    """Whether a side is an Exchange organisation whose cmdlets coexist runs over remote
    PowerShell: Exchange cmdlets without a directory (Microsoft 365 has both; an IMAP,
    WorkMail or PowerShell-less Exchange side has no cmdlets)."""
    return side.has(CMDLETS) and not side.has(DIRECTORY)


def contact_name(template: str, item: dict[str, Any]) -> str:
    """The forwarding object's Name from the template ({display_name}, {alias}, {address})."""
    address = str(item.get("source_address") or item["key"])
    detail = item.get("detail") or {}
    display = str(detail.get("display_name") or item.get("name") or address)
    try:
        name = template.format(display_name=display, alias=address.split("@")[0], address=address)
    except (KeyError, IndexError, ValueError) as exc:
        raise InputError(
            f"cutover.forward_contact_name {template!r} names an unknown field ({exc}); "
            "use {display_name}, {alias} or {address}",
            file="project.toml",
            key="cutover.forward_contact_name",
        ) from exc
    return name[:NAME_MAX].strip()


def contact_alias(address: str) -> str:
    """An alias for the forwarding object that cannot be the mailbox's own (`-fwd` suffix)."""
    local = _ALIAS_BAD.sub("", address.split("@")[0]).strip(".") or "user"
    return (local[: NAME_MAX - len(ALIAS_SUFFIX)] + ALIAS_SUFFIX).lower()


def _contact_id(ctx: Context, subject: str) -> str | None:
    item = ctx.journal.get_item("user", subject) or {}
    found = (item.get("detail") or {}).get(CONTACT_KEY)
    return str(found) if found else None


def _contact_state(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    if not obj:
        return None
    return {
        "Identity": object_id(obj),
        "Name": obj.get("Name"),
        "ExternalEmailAddress": obj.get("ExternalEmailAddress"),
        "HiddenFromAddressListsEnabled": bool(obj.get("HiddenFromAddressListsEnabled")),
    }


@dataclass(frozen=True)
class ForwardContactStep(Step):
    """A hidden mail contact at the source points at the user's new address (the seed's
    "External Forward" object), in place before the user's batch is cut over."""

    name = "hosted.forward-contact"

    contact_name: str
    alias: str
    external_address: str  # the user's address in the target organisation
    organizational_unit: str | None = None
    source_addresses: tuple[str, ...] = ()  # never the contact's target (a mail loop)


@registry.register(ForwardContactStep)
class ForwardContactExecutor:
    async def observe(self, ctx: Context, step: ForwardContactStep) -> dict[str, Any] | None:
        # The journaled id first: the Name may have been changed by hand since.
        for ident in (_contact_id(ctx, step.subject), step.alias):
            if ident:
                found = await find_one(ctx.source.cmdlets, "Get-MailContact", ident)
                if found is not None:
                    return found
        return None

    async def apply(
        self, ctx: Context, step: ForwardContactStep, observed: dict[str, Any] | None
    ) -> StepResult:
        refuse_source_address(
            ctx, step.subject, step.external_address, step.source_addresses, "the forwarding object"
        )
        run = ctx.source.cmdlets.run
        want = bare(step.external_address)
        if observed is None:
            params: dict[str, Any] = {
                "Name": step.contact_name,
                "DisplayName": step.contact_name,
                "Alias": step.alias,
                "ExternalEmailAddress": f"SMTP:{step.external_address}",
            }
            if step.organizational_unit:
                params["OrganizationalUnit"] = step.organizational_unit
            created = await run("New-MailContact", **params)
            ident = object_id(created[0]) if created else step.alias
            # Hidden from the address lists: users must not pick "(External Forward)" from
            # the GAL. New-MailContact has no such parameter; Set-MailContact does.
            await run("Set-MailContact", Identity=ident, HiddenFromAddressListsEnabled=True)
            if ctx.planning:
                return StepResult(True, None, {"planned": step.alias}, "would create it")
            after = await find_one(ctx.source.cmdlets, "Get-MailContact", ident)
            return StepResult(
                True,
                None,
                _contact_state(after),
                f"forwarding object {step.contact_name} -> {step.external_address} created",
                data={CONTACT_KEY: ident},
            )
        ident = object_id(observed)
        fixes: dict[str, Any] = {}
        if bare(observed.get("ExternalEmailAddress")) != want:
            fixes["ExternalEmailAddress"] = f"SMTP:{step.external_address}"
        if not observed.get("HiddenFromAddressListsEnabled"):
            fixes["HiddenFromAddressListsEnabled"] = True
        state = _contact_state(observed)
        if not fixes:
            return StepResult(
                False,
                state,
                state,
                "forwarding object in place",
                data={CONTACT_KEY: ident},
            )
        await run("Set-MailContact", Identity=ident, **fixes)
        after = (
            state
            if ctx.planning
            else _contact_state(await find_one(ctx.source.cmdlets, "Get-MailContact", ident))
        )
        return StepResult(
            True,
            state,
            after,
            "forwarding object updated: " + ", ".join(sorted(fixes)),
            data={CONTACT_KEY: ident},
        )


@dataclass(frozen=True)
class ContactForwardStep(Step):
    """The source mailbox forwards to its forwarding object and keeps no copy."""

    name = "hosted.forward"


@registry.register(ContactForwardStep)
class ContactForwardExecutor:
    async def observe(
        self, ctx: Context, step: ContactForwardStep
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The source mailbox, and its forwarding object (journaled by ForwardContactStep)."""
        return await mailbox_and_contact(ctx, step.subject, CONTACT_KEY)

    async def apply(
        self,
        ctx: Context,
        step: ContactForwardStep,
        observed: tuple[dict[str, Any] | None, dict[str, Any] | None],
    ) -> StepResult:
        mailbox, contact = observed
        ident = _contact_id(ctx, step.subject)
        if mailbox is None:
            raise InputError(
                f"the source mailbox {step.subject} was not found by Get-Mailbox",
                next_step=f"check the address in the batch file, then coexist cutover --users "
                f"{step.subject}",
                user=step.subject,
            )
        if contact is None and not (ctx.planning and ident is None):
            raise InputError(
                f"{step.subject} has no forwarding object at the source to forward to",
                next_step=f"coexist prestage --users {step.subject}  (creates it), then "
                f"coexist cutover --users {step.subject}",
                user=step.subject,
            )
        target = ident or "<the forwarding object>"
        before = forwarding_state(mailbox)
        if forwards_to_contact(before, target, contact):
            return StepResult(False, before, before, "forwards to its forwarding object")
        after = await forward_to_contact(ctx, step.subject, target)
        if not ctx.planning:
            # Read back: a kept local copy means duplicates in the next delta pass, so a
            # server that ignored -DeliverToMailboxAndForward $false is a failure, not a
            # warning (the step is re-run by `coexist retry`).
            now = forwarding_state(await source_mailbox(ctx, step.subject))
            if now["DeliverToMailboxAndForward"] or not now["ForwardingAddress"]:
                raise InputError(
                    f"{step.subject}: Set-Mailbox did not take: ForwardingAddress "
                    f"{now['ForwardingAddress']!r}, DeliverToMailboxAndForward "
                    f"{now['DeliverToMailboxAndForward']}",
                    next_step=f"check the mailbox in the Exchange admin center, then coexist "
                    f"retry --users {step.subject}",
                    user=step.subject,
                )
            after = now
        return StepResult(True, before, after, "forwards to its forwarding object, no local copy")


def kept_copies(mailboxes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mailboxes that forward and also keep a local copy (DeliverToMailboxAndForward): each
    message they forward is in the source too, so a delta pass after the forward began would
    copy it a second time into the target."""
    out = []
    for box in mailboxes:
        state = forwarding_state(box)
        forwards = state["ForwardingAddress"] or state["ForwardingSmtpAddress"]
        if forwards and state["DeliverToMailboxAndForward"]:
            out.append(box)
    return out


async def mail_route(ctx: Context, item: dict[str, Any]) -> dict[str, Any]:
    """Where mail to a user's old address goes, read back from the source organisation's
    configuration (its mailbox's forward, the forwarding object's external address), beside
    where it should go at the user's phase: the source mailbox until cutover, the new
    mailbox (and only there) after it.

    A configuration read, not a probe: coexist has no way to send mail into a hosted
    Exchange organisation (EWS sending needs a mailbox of the migration account's own, and
    FullAccess gives no Send As). The sandbox's routing tests deliver real messages along
    the same configuration (tests/e2e/test_hosted_forwarding.py)."""
    user = str(item.get("source_address") or item["key"])
    target = bare(str(item.get("target_address") or ""))
    # Forwarded at cutover only in forward-on-source mode; otherwise the source keeps
    # delivering what reaches it (its domain's MX change is outside coexist).
    forwarded = ctx.project.cutover.mode == "forward-on-source"
    expected = "target" if forwarded and item.get("phase") == Phase.CUTOVER.value else "source"
    box = await find_one(ctx.source.cmdlets, "Get-Mailbox", user)
    state = forwarding_state(box)
    found = {"source": 0, "target": 0}
    via = ""
    if box is None:
        via = "no such mailbox at the source"
    elif state["ForwardingAddress"]:
        contact = await find_one(
            ctx.source.cmdlets, "Get-MailContact", str(state["ForwardingAddress"])
        )
        to = bare(contact.get("ExternalEmailAddress")) if contact else ""
        via = f"forwards to {state['ForwardingAddress']} ({to or 'not a mail contact'})"
        if to and to == target:
            found["target"] = 1
    elif state["ForwardingSmtpAddress"]:
        to = bare(state["ForwardingSmtpAddress"])
        via = f"forwards to {to}"
        if to == target:
            found["target"] = 1
    if box is not None and (
        state["DeliverToMailboxAndForward"]
        or not (state["ForwardingAddress"] or state["ForwardingSmtpAddress"])
    ):
        found["source"] = 1  # delivered in the source mailbox (too)
        via = via + ", keeps a copy" if via else "delivered in the source mailbox"
    other = "source" if expected == "target" else "target"
    ok = found[expected] == 1 and found[other] == 0
    return {
        "user": user,
        "probe": "route",
        "address": user,
        "expected": expected,
        "found": found,
        "ok": ok,
        "detail": via,
    }
