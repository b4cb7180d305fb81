"""provision.mailuser: the target MailUser that forwards to the source mailbox.

The target object gets ExternalEmailAddress → the source mailbox, a primary
address in the destination domain, and the source LegacyExchangeDN plus X500
proxies, so replies to old mail resolve (FACTS.md). In `match` mode the
existing target recipient is used instead and, if asked, pointed back at the
source.

In Exchange Online New-MailUser makes the ExternalEmailAddress — the *source*
address — the primary SMTP address; -PrimarySmtpAddress is functional only
on-premises and the alias never makes the primary (office-docs-powershell
New-MailUser.md). So the step sets the address list itself (`SMTP:` planned
primary, the MOERA, the X500s) and the journal's `target_address` is only ever
what Exchange reads back: the step's own observation when it wrote nothing,
else `provision.target-address` after the run's writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from coexist.engine.context import Context
from coexist.engine.runner import ItemPlan, Outcome, Runner, set_item
from coexist.engine.step import Step, StepResult, registry
from coexist.errors import Conflict, NotFound
from coexist.tenants.exo import hashtable

from .exchange import (
    bare,
    find_one,
    has_proxy,
    initial_domain,
    is_mailbox,
    object_id,
    smtp_proxies,
)
from .index import TargetIndex
from .orphans import (
    Obstacles,
    check_live,
    describe,
    in_the_way,
    obstacles,
    provision_command,
)
from .plan import new_password


@dataclass(frozen=True)
class MailUserStep(Step):
    """A target recipient for one source mailbox exists, routes to the source, and has its
    planned primary address in the destination domain."""

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
    # Every address of the source mailbox itself (exchange.own_addresses): never the
    # target's primary, and not carried onto the target's address list.
    source_addresses: tuple[str, ...] = ()
    user: str = ""  # the user's source address, as the operator names it (--users)
    # An object in the target that routed to the source mailbox before this journal planned
    # the user (orphans.py), and whether the operator said to take such objects over.
    adopt_id: str | None = None
    adopt: bool = False


def _index(ctx: Context) -> TargetIndex | None:
    """The run's snapshot of target recipients, when the command built one."""
    index = ctx.cache.get("target_index")
    return index if isinstance(index, TargetIndex) else None


async def _initial_domain(ctx: Context) -> str:
    """The target's initial domain (for the MOERA), read once per run."""
    cached = ctx.cache.get("target_initial_domain")
    if not isinstance(cached, str):
        cached = await initial_domain(ctx.target.exo)
        ctx.cache["target_initial_domain"] = cached
    return cached


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


def _ours(found: dict[str, Any], step: MailUserStep) -> bool:
    """An object that routes to our source mailbox or holds its X500s is the one we made."""
    return bare(found.get("ExternalEmailAddress")) == bare(step.external_address) or any(
        has_proxy(found, x) for x in step.x500
    )


async def _find_own(ctx: Context, step: MailUserStep) -> dict[str, Any] | None:
    """Our object: by the recorded target id, else by the planned address (crash recovery),
    else an orphan taken over with --adopt; None when the way is clear for New-MailUser.

    The plan was journaled before any write, so an object whose UPN
    (MicrosoftOnlineServicesID) or address is the planned primary and that routes to
    our source mailbox is the one a killed run created, not a stranger. A run killed
    between New-MailUser and the address update left it with the *external* address as
    its primary (New-MailUser.md): only the UPN names it by the plan then. An object that
    already existed when the plan was made (`adopt_id`) or that routes to the source
    mailbox from elsewhere was not made by this journal: it is adopted only when the
    operator says so (orphans.py), and anything else in the way fails the user with what
    to free - never with a `coexist retry` that would fail the same way.
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
    if step.adopt_id:
        found = await find_one(exo, "Get-Recipient", step.adopt_id)
        if found is not None and in_the_way(
            found, step.external_address, step.x500, replace_contacts=step.replace_contacts
        ):
            return await _adopted(ctx, step, found)
    found = await _at_planned_address(ctx, step)
    if found is not None and object_id(found).lower() == (step.adopt_id or "").lower():
        return await _adopted(ctx, step, found)
    return found or await _orphan(ctx, step)


async def _at_planned_address(ctx: Context, step: MailUserStep) -> dict[str, Any] | None:
    """The object a killed run of this journal made at the planned address, or None."""
    exo = ctx.target.exo
    index = _index(ctx)
    if (
        index is not None
        and index.owner(step.primary_smtp) is None
        and index.owner(step.external_address) is None
    ):
        # The run-start snapshot has nobody at the planned address, and nobody whose
        # primary is still our external address (a half-made object): skip the calls.
        return None
    # Get-MailUser -Identity takes a UPN as well as an address (MailUserIdParameter).
    found = await find_one(exo, "Get-MailUser", step.primary_smtp)
    if found is None or not _ours(found, step):
        found = await find_one(exo, "Get-Recipient", step.primary_smtp) or found
    if found is None:
        return None
    if not _ours(found, step):
        raise Conflict(
            f"the planned target address {step.primary_smtp} is now used by "
            f"{found.get('Name')!r} ({found.get('RecipientTypeDetails')})",
            service="exchange",
            next_step=(
                f"free {step.primary_smtp} in the target (rename or remove "
                f"{found.get('Name')!r}; coexist did not create it), then "
                f"{provision_command(step.user or step.subject)}"
            ),
        )
    return found


async def _orphan(ctx: Context, step: MailUserStep) -> dict[str, Any] | None:
    """An object in the way of New-MailUser (orphans.py): adopted with --adopt, else the
    user fails naming it and what to do. The snapshot's candidates are read again first:
    none (the usual case) costs no call."""
    index = _index(ctx)
    args = (index or TargetIndex(), step.user, step.external_address, step.x500)
    if index is None:
        # No snapshot (a step run on its own): ask Exchange who holds the address.
        holder = await find_one(ctx.target.exo, "Get-Recipient", step.external_address)
        seen = obstacles(*args, replace_contacts=step.replace_contacts, live=[holder])
    else:
        seen = obstacles(*args, replace_contacts=step.replace_contacts)
    if not seen.found:
        return None
    live = [await find_one(ctx.target.exo, "Get-Recipient", object_id(o)) for o in seen.found]
    now = await check_live(
        ctx.target.exo, obstacles(*args, replace_contacts=step.replace_contacts, live=live)
    )
    if not now.found:
        return None
    return _take(ctx, step, now)


ADOPTED = "adopted_targets"  # run cache: subject -> the object provision took over


async def _adopted(ctx: Context, step: MailUserStep, found: dict[str, Any]) -> dict[str, Any]:
    """`found` is tied to the source mailbox but this journal did not make it (`_take`)."""
    clash = Obstacles(step.user, step.external_address, (found,), step.x500)
    return _take(ctx, step, await check_live(ctx.target.exo, clash))


def _take(ctx: Context, step: MailUserStep, clash: Obstacles) -> dict[str, Any]:
    """With --adopt the one adoptable object is ours from now on (the step journals its
    state as the before-state); without, or for anything else in the way (a live mailbox,
    a stranger), the user fails with what to do."""
    taken = clash.adoptable
    if not step.adopt or taken is None:
        raise Conflict(clash.problem(), service="exchange", next_step=clash.fix())
    ctx.cache.setdefault(ADOPTED, {})[step.subject] = taken
    return taken


def _planned_object(step: MailUserStep) -> dict[str, Any]:
    """What New-MailUser returns by its documented defaults (plan mode sends nothing)."""
    return {
        "Name": step.target_name,
        "Alias": step.alias,
        "RecipientTypeDetails": "MailUser",
        "PrimarySmtpAddress": step.external_address,
        "EmailAddresses": [f"SMTP:{step.external_address}"],
        "ExternalEmailAddress": f"SMTP:{step.external_address}",
    }


def _wanted_primary(
    ctx: Context, step: MailUserStep, obj: dict[str, Any], initial: str
) -> str | None:
    """The primary the object must get, or None when its primary is right.

    Wrong is: none, one of the source's own addresses (what New-MailUser leaves: the
    ExternalEmailAddress is the primary by default, New-MailUser.md), or — for an object
    coexist created — an address in the initial domain other than the planned one (what
    licensing leaves after scrubbing a source-domain primary: the MOERA, FACTS.md). Any
    other primary was put there by an admin and is kept; the journal follows it.
    `create` then gets the planned address; `match` the plan's destination address.
    """
    current = bare(obj.get("PrimarySmtpAddress"))
    wrong = not current or current in step.source_addresses
    if step.mode == "create":
        if current == bare(step.primary_smtp):
            return None
        return step.primary_smtp if wrong or current.endswith("@" + initial) else None
    if not wrong:
        return None
    if step.primary_smtp and bare(step.primary_smtp) not in step.source_addresses:
        return step.primary_smtp
    raise Conflict(
        f"the matched target {obj.get('Name')!r} has the source address {current} as its "
        "primary: forwarding to it would loop back to the source",
        service="exchange",
        next_step=(
            f"give {obj.get('Name')!r} a primary address in the destination domain "
            f"(Set-MailUser -EmailAddresses SMTP:...), then {_provision_again(ctx, step)}"
        ),
    )


def _provision_again(ctx: Context, step: Step) -> str:
    """The command that provisions this one user again (a selection is required)."""
    item = ctx.journal.get_item("user", step.subject) or {}
    return f"coexist provision --users {item.get('source_address') or step.subject}"


def _address_list(
    obj: dict[str, Any], primary: str, moera: str, x500: list[str], own: Sequence[str]
) -> list[str]:
    """The whole list to set: `SMTP:` primary, the MOERA, the X500s, then the rest it has.

    A plain list replaces the addresses and its `SMTP:` entry is the primary
    (Set-MailUser.md, -EmailAddresses). The object's other addresses stay, as
    secondaries, except the source mailbox's own: a target object holding them would
    claim the source's addresses in the target tenant (and licensing scrubs proxies in
    unverified domains anyway, FACTS.md). An existing MOERA is kept as it is.
    """
    current = [str(a) for a in obj.get("EmailAddresses") or ()]
    initial = moera.rsplit("@", 1)[-1].lower()
    moera = next(
        (a[5:] for a in current if a[:5].lower() == "smtp:" and _domain(a) == initial), moera
    )
    out = [f"SMTP:{primary}", f"smtp:{moera}", *x500]
    for a in current:
        kind, _, value = a.partition(":")
        if kind.lower() != "smtp":
            out.append(a)
        elif value.lower() not in own and value.lower() != primary.lower():
            out.append(f"smtp:{value}")
    seen: set[str] = set()
    unique = []
    for a in out:
        if a.lower() not in seen:
            seen.add(a.lower())
            unique.append(a)
    return unique


def _domain(address: str) -> str:
    return address.rsplit("@", 1)[-1].lower()


def _expected(obj: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    """The object as the updates leave it (what is read back later, not instead of it)."""
    after = dict(obj)
    addresses = updates.get("EmailAddresses")
    if isinstance(addresses, list):
        after["EmailAddresses"] = addresses
        after["PrimarySmtpAddress"] = addresses[0][5:]
    elif isinstance(addresses, dict):
        after["EmailAddresses"] = [*(obj.get("EmailAddresses") or []), *addresses.get("Add", [])]
    for key in ("ExternalEmailAddress", "ForwardingSmtpAddress"):
        if key in updates:
            after[key] = f"SMTP:{updates[key]}"
    return after


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
        updates, taken = await self._differences(ctx, step, observed)
        adopted = _adoption(ctx, step, observed)
        if not updates:
            # Nothing to write: this observation is the read-back (`provision.target-address`
            # takes it from here), and it corrects a journal that holds another address
            # (e.g. one recorded from New-MailUser's output).
            ctx.cache.setdefault(OBSERVED, {})[step.subject] = observed
            return StepResult(
                False,
                _state(observed),
                _state(observed),
                adopted.get("detail", "") + "up to date",
                data={**_data(observed), **adopted.get("data", {})},
            )
        cmdlet = "Set-Mailbox" if is_mailbox(observed) else "Set-MailUser"
        await exo.run(cmdlet, Identity=object_id(observed), **updates)
        after = _expected(observed, updates)
        return StepResult(
            True,
            _state(observed),
            _state(after),
            adopted.get("detail", "") + "updated " + ", ".join(sorted(updates)) + _left_out(taken),
            data={**_written(object_id(observed), taken), **adopted.get("data", {})},
        )

    async def _differences(
        self,
        ctx: Context,
        step: MailUserStep,
        obj: dict[str, Any],
        carried: list[str] | None = None,
    ) -> tuple[dict[str, Any], list[str]]:
        """What to set on `obj`, and the X500s left out because other objects hold them."""
        updates: dict[str, Any] = {}
        # A replaced GAL-sync contact's X500s too: a run killed between New-MailUser and
        # the address update finds the object here, with the contact already gone.
        if carried is None:
            carried = _carried(ctx, step) if step.replace_contacts else []
        proxies = list(dict.fromkeys([*step.x500, *carried]))
        wanted, taken = _free_x500(ctx, proxies, object_id(obj))
        missing = [x for x in wanted if not has_proxy(obj, x)]
        domain = await _initial_domain(ctx)
        primary = _wanted_primary(ctx, step, obj, domain)
        # Every cloud recipient coexist makes carries its MOERA (alias@<initial domain>).
        moera_missing = step.mode == "create" and not any(
            _domain(a) == domain for a in smtp_proxies(obj)
        )
        if primary is not None or moera_missing:
            moera = f"{obj.get('Alias') or step.alias}@{domain}"
            keep = primary or str(obj.get("PrimarySmtpAddress"))
            updates["EmailAddresses"] = _address_list(
                obj, keep, moera, wanted, step.source_addresses
            )
            if primary is not None:
                ctx.cache.setdefault(REQUESTED, {})[step.subject] = primary
        elif missing:
            updates["EmailAddresses"] = hashtable(add=missing)
        routes = step.mode == "create" or step.forward_matched
        if not routes:
            return updates, taken
        if not is_mailbox(obj):
            if bare(obj.get("ExternalEmailAddress")) != bare(step.external_address):
                updates["ExternalEmailAddress"] = step.external_address
        elif step.mode == "match" and bare(obj.get("ForwardingSmtpAddress")) != bare(
            step.external_address
        ):
            # A matched target *mailbox* forwards back to the source until cutover.
            updates["ForwardingSmtpAddress"] = step.external_address
            updates["DeliverToMailboxAndForward"] = False
        return updates, taken

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
        obj = created[0] if created else _planned_object(step)
        # Until the address update below the object is known by its UPN (the planned
        # primary), not by an address: Exchange made the external address its primary.
        ident = object_id(obj) if created else step.primary_smtp
        index = _index(ctx)
        if created and index is not None:
            # At once, not after the address update: if that update fails transiently the
            # runner retries the step, and `_find_own` must then see the object created
            # here rather than trust the run-start snapshot and create it again.
            index.add(created[0])
        updates, taken = await self._differences(ctx, step, obj, carried)
        if updates:
            await exo.run("Set-MailUser", Identity=ident, **updates)
        if ctx.planning:
            return StepResult(True, None, {"planned": step.primary_smtp}, "would create MailUser")
        after = _expected(obj, updates)
        if index is not None:
            index.add(after)
        return StepResult(
            True,
            None,
            _state(after),
            "created MailUser" + _left_out(taken),
            data=_written(ident, taken),
        )


def _adoption(ctx: Context, step: MailUserStep, observed: dict[str, Any]) -> dict[str, Any]:
    """For an object taken over with --adopt: the detail prefix and the item's record of it."""
    if ctx.cache.get(ADOPTED, {}).get(step.subject) is not observed:
        return {}
    record = {
        "target_id": object_id(observed),
        "name": observed.get("Name"),
        "kind": observed.get("RecipientTypeDetails"),
        "primary": observed.get("PrimarySmtpAddress"),
    }
    return {"detail": f"adopted {describe(observed)}; ", "data": {"adopted": record}}


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


def _written(ident: str, taken: list[str]) -> dict[str, Any]:
    """Item facts after a write: the target id; its address only once read back."""
    # None, not the address we asked for: `provision.target-address` journals what Exchange
    # reads back (a stale value must not survive a repair either).
    return {"target_id": ident, "target_address": None, "x500_conflicts": taken}


def _left_out(taken: list[str]) -> str:
    if not taken:
        return ""
    return f"; X500 proxies held by other target objects left out: {', '.join(taken)}"


# -- read-back --------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetAddressStep(Step):
    """The journal's target address is the target object's primary as Exchange reads it back."""

    name = "provision.target-address"

    primary_smtp: str  # the planned primary, for the record ("": a matched recipient's own)
    source_addresses: tuple[str, ...] = ()
    target_id: str = ""  # the object the MailUser step journaled in this run ("": read the item)


READBACK = "target_readback"  # run cache: "bulk" | "each" | the bulk read in flight
OBSERVED = "target_observed"  # run cache: subject -> the object a MailUser step read, unchanged
REQUESTED = "target_requested"  # run cache: subject -> the primary a MailUser step set


async def _read_back(ctx: Context, ident: str) -> dict[str, Any] | None:
    """The object as Exchange has it now: from one bulk read per run, or one read each.

    `readback_plans` decides which is cheaper (one page holds 1,000 recipients) and
    leaves the choice in the run's cache.
    """
    mode = ctx.cache.get(READBACK)
    if isinstance(mode, asyncio.Task) or mode == "bulk":
        if not isinstance(mode, asyncio.Task):
            mode = asyncio.ensure_future(_all_recipients(ctx))
            ctx.cache[READBACK] = mode  # every step of the run awaits this one read
        try:
            by_id: dict[str, dict[str, Any]] = await mode
        except Exception:
            ctx.cache[READBACK] = "bulk"  # the step's retry reads again, not the failure
            raise
        found = by_id.get(ident.lower())
        if found is not None:
            return found
    return await find_one(ctx.target.exo, "Get-Recipient", ident)


async def _all_recipients(ctx: Context) -> dict[str, dict[str, Any]]:
    rows = await ctx.target.exo.run("Get-Recipient", ResultSize="Unlimited")
    return {object_id(r).lower(): r for r in rows}


# What the read-back judges, of the object Exchange returns, and so what its record keeps
# (the whole Get-Recipient object, ~40 properties, for every user, would only weigh it down).
_READ_BACK = (
    "ExternalDirectoryObjectId",
    "Guid",
    "Name",
    "RecipientTypeDetails",
    "PrimarySmtpAddress",
    "ExternalEmailAddress",
    "EmailAddresses",
)


def _as_read(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if obj is None else {name: obj.get(name) for name in _READ_BACK}


@registry.register(TargetAddressStep)
class TargetAddressExecutor:
    async def observe(self, ctx: Context, step: TargetAddressStep) -> dict[str, Any] | None:
        seen = ctx.cache.get(OBSERVED, {}).get(step.subject)
        if seen is not None:
            return _as_read(seen)  # read by this run's MailUser step, which then wrote nothing
        item = {} if step.target_id else ctx.journal.get_item("user", step.subject) or {}
        ident = step.target_id or item.get("target_id")
        return _as_read(await _read_back(ctx, str(ident))) if ident else None

    async def apply(
        self, ctx: Context, step: TargetAddressStep, observed: dict[str, Any] | None
    ) -> StepResult:
        if observed is None:
            raise NotFound(
                "the target object provision made is not found in Exchange",
                service="exchange",
                next_step=f"{_provision_again(ctx, step)}  (finds or makes the target object again)",
            )
        primary = str(observed.get("PrimarySmtpAddress") or "")
        requested = ctx.cache.get(REQUESTED, {}).get(step.subject)
        if (
            not primary
            or bare(primary) in step.source_addresses
            or (requested and bare(primary) != bare(requested))
        ):
            raise Conflict(
                f"Exchange reads back {primary or 'no address'} as the primary address of the "
                f"target {observed.get('Name')!r}, not {requested or 'an address of its own'}: "
                "it did not take the address list",
                service="exchange",
                next_step=f"{_provision_again(ctx, step)}  (sets the address list again)",
            )
        state = {"PrimarySmtpAddress": primary}
        return StepResult(False, state, state, f"target address {primary}", data=_data(observed))


def readback_plans(
    ctx: Context, plans: Sequence[ItemPlan], outcomes: Sequence[Outcome]
) -> list[ItemPlan]:
    """The read-back for every user whose MailUser step ended ok in this run (not in plan mode).

    Users whose step wrote nothing were just read (no call); the others are read back
    with one paged Get-Recipient, or one read each when that is fewer calls. The steps
    only read, so the command runs them as one batched round (`Runner.run_batched`).
    """
    done = {o.subject: o for o in outcomes if o.name == MailUserStep.name and o.status == "ok"}
    if ctx.planning or not done:
        return []
    out: list[ItemPlan] = []
    for plan in plans:
        step = next((s for s in plan.steps if isinstance(s, MailUserStep)), None)
        if step is None or plan.key not in done:
            continue
        check = TargetAddressStep(
            subject=plan.key,
            primary_smtp=step.primary_smtp,
            source_addresses=step.source_addresses,
            target_id=str(done[plan.key].data.get("target_id") or ""),
        )
        out.append(ItemPlan(plan.kind, plan.key, [check], None, label=plan.label))
    wrote = sum(1 for o in done.values() if o.changed)
    ctx.cache[READBACK] = "bulk" if wrote > _pages(ctx) else "each"
    return out


def _pages(ctx: Context) -> int:
    """Pages (calls) one bulk Get-Recipient takes: 1,000 recipients a page."""
    index = _index(ctx)
    return 1 + len({id(r) for r in index.by_id.values()}) // 1000 if index is not None else 1


# While the MailUser round goes on, users are read back in batches of this many per page
# of a bulk read: the read-back then costs at most 0.01 calls per user.
READBACK_USERS_PER_PAGE = 100
_LOOK_S = 0.2  # how often the round looks for users to read back while its writes go on


async def provision_users(
    runner: Runner,
    ctx: Context,
    plans: Sequence[ItemPlan],
    outcomes: list[Outcome],
    concurrency: int,
    *,
    batch: int | None = None,
) -> None:
    """The MailUser round, and the read-back of its users overlapping it.

    `outcomes` is the command's list of reported outcomes (a step's outcome is reported
    once it is journaled). Whenever `batch` users (default: `READBACK_USERS_PER_PAGE` per
    page of a bulk read) have ended their MailUser step ok since the last read-back, they
    are read back while the round goes on; the rest once it is done. A batch's bulk read
    starts after its users' steps ended, so it reads what their writes left. At the
    directory-write ceiling the client mostly waits on the write budget: the read-back
    fills that wait instead of following the round.
    """
    writes = asyncio.ensure_future(runner.run(plans, concurrency))
    seen = len(outcomes)  # outcomes before this round are other rounds'
    try:
        while True:
            ended = writes.done()
            if ended:
                writes.result()  # the round's own error first, if it had one
            fresh = outcomes[seen:]
            # Pages as the tenant is now: every object the round creates joins the index.
            size = batch or READBACK_USERS_PER_PAGE * _pages(ctx)
            if ended or _ended_ok(fresh) >= size:
                seen += len(fresh)
                await runner.run_batched(readback_plans(ctx, plans, fresh), concurrency)
            if ended:
                return
            await asyncio.wait({writes}, timeout=_LOOK_S)
    finally:
        if not writes.done():  # an error in a read-back: stop the round, leave nothing running
            writes.cancel()
            await asyncio.gather(writes, return_exceptions=True)


def _ended_ok(outcomes: Sequence[Outcome]) -> int:
    return sum(1 for o in outcomes if o.name == MailUserStep.name and o.status == "ok")
