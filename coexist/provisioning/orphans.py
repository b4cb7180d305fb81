"""Orphans: target objects in the way of a user's new MailUser that this journal did not make.

A project whose journal was lost (or that was started again from scratch) finds the target
objects an earlier run made: New-MailUser for the user would then fail, because Exchange
Online makes the ExternalEmailAddress - the user's source address - the new MailUser's
primary, and proxy addresses are unique in a tenant (office-docs-powershell New-MailUser.md,
-ExternalEmailAddress; FACTS.md). Where Exchange does not keep the external address as a
proxy, New-MailUser would instead succeed and leave two objects routing to one mailbox. So
before creating, provisioning looks for what is in the way, and preflight says the same.

An object is *ours* (adoptable) when it is a MailUser or mailbox that sends its mail to the
user's source mailbox - its ExternalEmailAddress (a MailUser: what provision makes) or its
ForwardingSmtpAddress (a mailbox: what prestage makes) is the address coexist forwards to -
or that holds the source mailbox's X500s (what provision adds so replies to old mail
resolve). Get-Recipient documents ExternalEmailAddress but not ForwardingSmtpAddress (that is
Get-Mailbox's: filter-properties.md); whether its output carries the forward anyway is
*unverified* (the sandbox's does): a licensed orphan is also known by its X500s, and whether
a mailbox still forwards back (`check_live`) is read with Get-Mailbox. Adoption is explicit (`coexist provision --adopt`): a GAL-synchronisation tool's MailUser
for the same person routes to the same address and may carry the same X500s, so only the
operator can tell it from an object an earlier coexist run made; adopting rewrites the
object's addresses, and from then on status, prestage and cutover treat it as the project's.
Anything else that holds the address is a stranger: the user fails with what to free.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from .exchange import CmdletRunner, bare, find_one, is_mailbox, object_id
from .index import TargetIndex

# What provision or prestage leaves in the target for a user: a MailUser, or after
# licensing a mailbox (matched by its forward back to the source).
ADOPTABLE_KINDS = frozenset({"MailUser", "UserMailbox"})


def routes_to(obj: dict[str, Any], address: str) -> bool:
    """Whether `obj` sends its mail to `address` (ExternalEmailAddress or ForwardingSmtpAddress)."""
    want = bare(address)
    return bool(want) and want in (
        bare(obj.get("ExternalEmailAddress")),
        bare(obj.get("ForwardingSmtpAddress")),
    )


def describe(obj: dict[str, Any]) -> str:
    """A target recipient as people know it: kind, name and primary address."""
    kind = obj.get("RecipientTypeDetails") or "recipient"
    return f"{kind} {obj.get('Name')!r} ({obj.get('PrimarySmtpAddress')})"


def adopt_command(user: str) -> str:
    return f"coexist provision --adopt --users {user}"


def provision_command(user: str) -> str:
    """Provision this one user again (the next step once the way is clear)."""
    return f"coexist provision --users {user}"


@dataclass(frozen=True)
class Obstacles:
    """The target recipients in the way of one user's New-MailUser (none: the way is clear)."""

    user: str  # the user's source address, as people read it
    external: str  # the address New-MailUser makes the primary: where the target forwards
    found: tuple[dict[str, Any], ...]
    x500: tuple[str, ...] = ()  # the source mailbox's X500s ("X500:<LegacyExchangeDN>", ...)
    # Ids of found mailboxes that do not forward back to the source (`check_live`): live.
    live: tuple[str, ...] = ()

    @property
    def ours(self) -> list[dict[str, Any]]:
        return [o for o in self.found if _adoptable(o, self.external, self.x500)]

    @property
    def adoptable(self) -> dict[str, Any] | None:
        """The one object to adopt: ours, not a live mailbox, and nothing else in the way."""
        if len(self.found) != 1 or not self.ours or self._is_live(self.found[0]):
            return None
        return self.found[0]

    def _is_live(self, obj: dict[str, Any]) -> bool:
        return object_id(obj).lower() in self.live

    def problem(self) -> str:
        """One line: what is in the way, and why provision cannot just create."""
        if len(self.found) == 1 and self._is_live(self.found[0]):
            return (
                f"{describe(self.found[0])} {self._how(self.found[0])} and does not forward "
                "back to the source: an earlier run whose journal is gone cut this user over "
                "(or stopped before forwarding the new mailbox back); without that journal "
                "coexist cannot take over a live mailbox (rollback needs the before-states "
                "it held)"
            )
        if self.adoptable is not None:
            return (
                f"{describe(self.found[0])} {self._how(self.found[0])}, but this project's "
                "journal did not make it (an earlier run whose journal is gone, or another "
                "tool such as a GAL synchronisation)"
            )
        parts = [f"{describe(o)} {self._how(o)}" for o in self.found]
        if len(self.ours) > 1:
            return "; ".join(parts) + (
                f" - {len(self.found)} target objects for one source mailbox, none of them "
                "made by this project's journal"
            )
        return (
            "; ".join(parts) + " - New-MailUser makes that address the new MailUser's primary "
            "(it must be free), and coexist did not create "
            + ("them" if len(self.found) > 1 else "it")
        )

    def _how(self, obj: dict[str, Any]) -> str:
        """How `obj` is tied to the user's source mailbox."""
        routes, holds = routes_to(obj, self.external), _holds(obj, self.external)
        if routes and (_adoptable(obj, self.external, self.x500) or not holds):
            return f"routes to {self.external}"
        if holds:
            return f"holds {self.external}"
        return f"holds the X500 (LegacyExchangeDN) of {self.user}'s source mailbox"

    def fix(self) -> str:
        """What the operator does next, with the command."""
        if len(self.found) == 1 and self._is_live(self.found[0]):
            name = self.found[0].get("Name")
            return (
                f"if {self.user} was cut over, leave the user out of this project's batches "
                f"(the mailbox {name!r} is in use); if not, forward {name!r} back to the "
                f"source (Set-Mailbox -ForwardingSmtpAddress {self.external} "
                f"-DeliverToMailboxAndForward $false), then {adopt_command(self.user)}"
            )
        if self.adoptable is not None:
            return (
                f"{adopt_command(self.user)}  (takes it over, journaled), or remove "
                f"{self.found[0].get('Name')!r} from the target and run "
                f"{provision_command(self.user)}"
            )
        if len(self.ours) > 1:
            names = ", ".join(repr(o.get("Name")) for o in self.ours)
            return f"keep one of {names} and remove the others, then {adopt_command(self.user)}"
        fixes = [_stranger_fix(o, self.external) for o in self.found]
        return "; ".join(dict.fromkeys(fixes)) + f"; then {provision_command(self.user)}"


def _adoptable(obj: dict[str, Any], external: str, x500: Iterable[str]) -> bool:
    if str(obj.get("RecipientTypeDetails")) not in ADOPTABLE_KINDS:
        return False
    return routes_to(obj, external) or any(_holds(obj, x) for x in x500)


def _holds(obj: dict[str, Any], proxy: str) -> bool:
    """Whether `obj` has `proxy` among its addresses ("a@b" means SMTP; "X500:..." as given)."""
    want = proxy.lower() if ":" in proxy.split("@")[0] else "smtp:" + proxy.lower()
    return any(str(a).lower() == want for a in obj.get("EmailAddresses") or ())


def _stranger_fix(obj: dict[str, Any], external: str) -> str:
    name = obj.get("Name")
    if obj.get("RecipientTypeDetails") == "MailContact":
        return (
            f"remove the mail contact {name!r} (or set [mail_users] replace_contacts = true: "
            "coexist then replaces it and keeps its X500s)"
        )
    return (
        f"free {external} in the target (remove it from {name!r}'s EmailAddresses, or remove "
        f'{name!r}), or pair the user with it instead: [mail_users] mode = "match"'
    )


def in_the_way(
    obj: dict[str, Any], external: str, x500: Iterable[str] = (), *, replace_contacts: bool
) -> bool:
    """Whether `obj` stands in the way of a new MailUser whose external address is `external`.

    It does when it holds that address as a proxy (New-MailUser would fail), or is a MailUser
    or mailbox that routes to it or holds the source's X500s (an orphan: a second object for
    the mailbox would be made otherwise, wherever Exchange dropped the address from its
    proxies). A mail contact that holds it is no obstacle when provision replaces such
    contacts; one that only routes there (a GAL-sync contact) is none either.
    """
    holds = _holds(obj, external)
    if obj.get("RecipientTypeDetails") == "MailContact":
        return holds and not replace_contacts
    return holds or _adoptable(obj, external, x500)


def obstacles(
    index: TargetIndex,
    user: str,
    external: str,
    x500: Iterable[str] = (),
    *,
    replace_contacts: bool,
    live: Iterable[dict[str, Any] | None] | None = None,
) -> Obstacles:
    """What stands in the way of the user's MailUser: from the run's snapshot of target
    recipients, or from `live` (the snapshot's candidates read again), deduplicated."""
    x500 = tuple(x500)
    if live is None:
        live = [index.owner(external), *index.routing_to(external)]
        live += [index.owner(x) for x in x500]
    found: dict[str, dict[str, Any]] = {}
    for o in live:
        if o is not None and in_the_way(o, external, x500, replace_contacts=replace_contacts):
            found.setdefault(object_id(o).lower(), o)
    return Obstacles(user, external, tuple(found.values()), x500)


async def check_live(exo: CmdletRunner, seen: Obstacles) -> Obstacles:
    """`seen`, with the adoptable mailboxes that do not forward back to the source marked
    live. Get-Mailbox, not Get-Recipient, documents ForwardingSmtpAddress
    (filter-properties.md); only mailboxes among the orphans are read (none: no call).

    A mailbox coexist pre-staged forwards back to the source until cutover removes that
    forward; one without it is in use, and prestage would forward it back again (a loop
    with the source's forward) were it adopted as a pre-cutover user.
    """
    live = []
    for o in seen.ours:
        if is_mailbox(o):
            box = await find_one(exo, "Get-Mailbox", object_id(o))
            if box is not None and not routes_to(box, seen.external):
                live.append(object_id(o).lower())
    return replace(seen, live=tuple(live))
