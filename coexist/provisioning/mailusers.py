"""provision.mailuser: the target MailUser that forwards to the source mailbox.

The target object gets ExternalEmailAddress → the source mailbox, a primary
address in the destination domain, and the source LegacyExchangeDN plus X500
proxies, so replies to old mail resolve (FACTS.md). In `match` mode the
existing target recipient is used instead and, if asked, pointed back at the
source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coexist.engine.context import Context
from coexist.engine.runner import set_item
from coexist.engine.step import Step, StepResult, registry
from coexist.errors import Conflict
from coexist.tenants.exo import hashtable

from .exchange import bare, find_one, has_proxy, is_mailbox, object_id
from .index import TargetIndex
from .plan import new_password


@dataclass(frozen=True)
class MailUserStep(Step):
    """A target recipient for one source mailbox exists and routes to the source."""

    name = "provision.mailuser"

    mode: str  # create | match
    target_name: str
    alias: str
    display_name: str
    primary_smtp: str
    external_address: str
    x500: tuple[str, ...]
    first_name: str | None = None
    last_name: str | None = None
    matched_id: str | None = None
    forward_matched: bool = False
    replace_contacts: bool = False


def _index(ctx: Context) -> TargetIndex | None:
    """The run's snapshot of target recipients, when the command built one."""
    index = ctx.cache.get("target_index")
    return index if isinstance(index, TargetIndex) else None


def _free_x500(ctx: Context, proxies: list[str], own_id: str | None) -> tuple[list[str], list[str]]:
    """Split X500 proxies into those we may add and those another target object owns.

    Proxy addresses are unique per tenant: adding one another object holds fails the
    whole Set-MailUser (ProxyAddressExistsException). A target that shares an old
    on-premises org with the source can hold the same X500; such proxies are left
    out and reported instead of failing the user.
    """
    index = _index(ctx)
    if index is None:
        return proxies, []
    free, taken = [], []
    for proxy in proxies:
        owner = index.owner(proxy)
        if owner is not None and object_id(owner).lower() != (own_id or "").lower():
            taken.append(f"{proxy} (owned by {owner.get('Name')})")
        else:
            free.append(proxy)
    return free, taken


async def _find_own(ctx: Context, step: MailUserStep) -> dict[str, Any] | None:
    """Our object: by the recorded target id, else by the planned address (crash recovery).

    The plan was journaled before any write, so an object at the planned
    primary address that routes to our source mailbox is the one a killed run
    created, not a stranger.
    """
    exo = ctx.target.exo
    item = ctx.journal.get_item("user", step.subject) or {}
    ident = item.get("target_id") or step.matched_id
    if ident:
        found = await find_one(exo, "Get-Recipient", ident)
        if found is not None:
            return found
    if step.mode == "match" or not step.primary_smtp:
        return None
    index = _index(ctx)
    if index is not None and index.owner(step.primary_smtp) is None:
        return None  # the run-start snapshot has nobody at the planned address: skip a call
    found = await find_one(exo, "Get-Recipient", step.primary_smtp)
    if found is None:
        return None
    ours = bare(found.get("ExternalEmailAddress")) == bare(step.external_address) or any(
        has_proxy(found, x) for x in step.x500
    )
    if not ours:
        raise Conflict(
            f"the planned target address {step.primary_smtp} is now used by "
            f"{found.get('Name')!r} ({found.get('RecipientTypeDetails')})",
            service="exchange",
            next_step="coexist provision --replan  (plans a free address for this user)",
        )
    return found


@registry.register(MailUserStep)
class MailUserExecutor:
    async def observe(self, ctx: Context, step: MailUserStep) -> dict[str, Any] | None:
        return await _find_own(ctx, step)

    async def apply(
        self, ctx: Context, step: MailUserStep, observed: dict[str, Any] | None
    ) -> StepResult:
        exo = ctx.target.exo
        if observed is None:
            return await self._create(ctx, step)
        updates = self._differences(ctx, step, observed)
        if not updates:
            return StepResult(
                False, _state(observed), _state(observed), "up to date", data=_data(observed)
            )
        cmdlet = "Set-Mailbox" if is_mailbox(observed) else "Set-MailUser"
        await exo.run(cmdlet, Identity=object_id(observed), **updates)
        after = (
            observed if ctx.planning else await find_one(exo, "Get-Recipient", object_id(observed))
        )
        return StepResult(
            True,
            _state(observed),
            _state(after),
            "updated " + ", ".join(sorted(updates)),
            data=_data(after or observed),
        )

    def _differences(self, ctx: Context, step: MailUserStep, obj: dict[str, Any]) -> dict[str, Any]:
        updates: dict[str, Any] = {}
        # A replaced GAL-sync contact's X500s too: a run killed between New-MailUser and
        # the X500 update finds the object here, with the contact already gone.
        carried = _carried(ctx, step) if step.replace_contacts else []
        proxies = list(dict.fromkeys([*step.x500, *carried]))
        wanted, _taken = _free_x500(ctx, proxies, object_id(obj))
        missing = [x for x in wanted if not has_proxy(obj, x)]
        if missing:
            updates["EmailAddresses"] = hashtable(add=missing)
        routes = step.mode == "create" or step.forward_matched
        if not routes:
            return updates
        if not is_mailbox(obj):
            if bare(obj.get("ExternalEmailAddress")) != bare(step.external_address):
                updates["ExternalEmailAddress"] = step.external_address
        elif step.mode == "match" and bare(obj.get("ForwardingSmtpAddress")) != bare(
            step.external_address
        ):
            # A matched target *mailbox* forwards back to the source until cutover.
            updates["ForwardingSmtpAddress"] = step.external_address
            updates["DeliverToMailboxAndForward"] = False
        return updates

    async def _replace_contact(self, ctx: Context, step: MailUserStep) -> list[str]:
        """Remove a GAL-sync contact that owns the source address; return what to carry over.

        Its state is journaled on the item before it is removed, so a crash between the
        removal and the MailUser's creation still carries its LegacyExchangeDN over.
        """
        item = ctx.journal.get_item("user", step.subject) or {}
        saved = (item.get("detail") or {}).get("replaced_contact")
        index = _index(ctx)
        owner = None
        # Ask Exchange only when the run-start snapshot is missing or shows a contact there.
        known = index.owner(step.external_address) if index is not None else None
        if index is None or (
            known is not None and known.get("RecipientTypeDetails") == "MailContact"
        ):
            owner = await find_one(ctx.target.exo, "Get-Recipient", step.external_address)
        if owner is not None and owner.get("RecipientTypeDetails") == "MailContact":
            saved = {
                "Identity": object_id(owner),
                "Name": owner.get("Name"),
                "ExternalEmailAddress": owner.get("ExternalEmailAddress"),
                "EmailAddresses": list(owner.get("EmailAddresses") or []),
                "LegacyExchangeDN": owner.get("LegacyExchangeDN"),
            }
            if not ctx.planning:
                set_item(ctx.journal, "user", step.subject, replaced_contact=saved)
            await ctx.target.exo.run("Remove-MailContact", Identity=object_id(owner), Confirm=False)
            if index is not None:
                # Its X500s are ours to carry now, not "held by another object".
                index.remove(object_id(owner))
        return _x500_of(saved)

    async def _create(self, ctx: Context, step: MailUserStep) -> StepResult:
        exo = ctx.target.exo
        carried = await self._replace_contact(ctx, step) if step.replace_contacts else []
        params: dict[str, Any] = {
            "Name": step.target_name,
            "Alias": step.alias,
            "DisplayName": step.display_name,
            "MicrosoftOnlineServicesID": step.primary_smtp,
            # A licensable MailUser needs the MicrosoftOnlineServicesID set, which requires
            # -Password (New-MailUser reference). Random, never stored or logged.
            "Password": new_password(),
            "ExternalEmailAddress": step.external_address,
        }
        if step.first_name:
            params["FirstName"] = step.first_name
        if step.last_name:
            params["LastName"] = step.last_name
        created = await exo.run("New-MailUser", **params)
        ident = object_id(created[0]) if created else step.primary_smtp
        index = _index(ctx)
        if created and index is not None:
            # At once, not after the X500 update: if that update fails transiently the
            # runner retries the step, and `_find_own` must then see the object created
            # here rather than trust the run-start snapshot and create it again.
            index.add(created[0])
        x500, taken = _free_x500(ctx, list(dict.fromkeys([*step.x500, *carried])), ident)
        if x500:
            await exo.run("Set-MailUser", Identity=ident, EmailAddresses=hashtable(add=x500))
        if ctx.planning:
            return StepResult(True, None, {"planned": step.primary_smtp}, "would create MailUser")
        # New-MailUser returns the new object; the only change since is the X500 proxies
        # added above, so the after-state is known without another read.
        after = dict(created[0])
        after["EmailAddresses"] = [*(after.get("EmailAddresses") or []), *x500]
        if index is not None:
            index.add(after)
        detail = "created MailUser"
        if taken:
            detail += f"; X500 proxies held by other target objects left out: {', '.join(taken)}"
        return StepResult(
            True, None, _state(after), detail, data={**_data(after), "x500_conflicts": taken}
        )


def _x500_of(saved: dict[str, Any] | None) -> list[str]:
    """The X500 proxies a replaced contact hands over: its LegacyExchangeDN and X500s."""
    if not saved:
        return []
    carry = [f"X500:{saved['LegacyExchangeDN']}"] if saved.get("LegacyExchangeDN") else []
    carry += [a for a in saved.get("EmailAddresses") or [] if a.lower().startswith("x500:")]
    return carry


def _carried(ctx: Context, step: MailUserStep) -> list[str]:
    item = ctx.journal.get_item("user", step.subject) or {}
    return _x500_of((item.get("detail") or {}).get("replaced_contact"))


def _state(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    if not obj:
        return None
    return {
        "Identity": object_id(obj),
        "Name": obj.get("Name"),
        "RecipientTypeDetails": obj.get("RecipientTypeDetails"),
        "PrimarySmtpAddress": obj.get("PrimarySmtpAddress"),
        "ExternalEmailAddress": obj.get("ExternalEmailAddress"),
        "EmailAddresses": sorted(obj.get("EmailAddresses") or []),
    }


def _data(obj: dict[str, Any] | None) -> dict[str, Any]:
    if not obj:
        return {}
    return {"target_id": object_id(obj), "target_address": obj.get("PrimarySmtpAddress")}
