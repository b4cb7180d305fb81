"""Small helpers over Exchange objects (PascalCase JSON from InvokeCommand)."""

from __future__ import annotations

from typing import Any, Protocol

from coexist.engine.step import StepResult
from coexist.errors import NotFound
from coexist.model import SourceMailbox, forwarding_address

MAILBOX_KINDS = ("UserMailbox", "SharedMailbox", "RoomMailbox", "EquipmentMailbox")


class CmdletRunner(Protocol):
    async def run(self, cmdlet: str, **params: Any) -> list[dict[str, Any]]: ...


async def find_one(exo: CmdletRunner, cmdlet: str, identity: str) -> dict[str, Any] | None:
    """The object `identity` names, or None when Exchange says it does not exist."""
    try:
        found = await exo.run(cmdlet, Identity=identity)
    except NotFound:
        return None
    return found[0] if found else None


def bare(address: str | None) -> str:
    """'SMTP:a@b' / 'smtp:a@b' / 'a@b' → 'a@b' (lower-cased for comparison)."""
    if not address:
        return ""
    a = str(address)
    if a[:5].lower() == "smtp:":
        a = a[5:]
    return a.strip().lower()


def own_addresses(src: SourceMailbox, forwarding_domain: str | None) -> tuple[str, ...]:
    """Every SMTP address that reaches the source mailbox itself (bare, lower-case).

    Its primary and SMTP proxies (as discovery recorded them), its UPN, and the address
    the target forwards to (`forwarding_address`). A target address, a forward or a
    contact pointing at one of these sends mail back to the source: a loop
    (NDR 5.4.14) once the source forwards to the target.
    """
    found = [src.primary_smtp, *src.smtp_addresses, src.upn]
    found.append(forwarding_address(src, forwarding_domain))
    return tuple(dict.fromkeys(bare(a) for a in found if a and "@" in a))


async def initial_domain(exo: CmdletRunner) -> str:
    """A tenant's initial domain (<tenant>.onmicrosoft.com), from Get-AcceptedDomain."""
    domains = await exo.run("Get-AcceptedDomain")
    initial = next((d for d in domains if d.get("InitialDomain")), None)
    if initial is None:
        initial = next(d for d in domains if str(d.get("DomainName")).endswith(".onmicrosoft.com"))
    return str(initial["DomainName"]).lower()


def smtp_proxies(obj: dict[str, Any]) -> list[str]:
    """The object's SMTP addresses (bare, as written), primary first when marked."""
    return [str(a)[5:] for a in obj.get("EmailAddresses") or () if str(a)[:5].lower() == "smtp:"]


def has_proxy(obj: dict[str, Any], proxy: str) -> bool:
    want = proxy.lower()
    return any(str(a).lower() == want for a in obj.get("EmailAddresses") or ())


def object_id(obj: dict[str, Any]) -> str:
    return str(obj.get("ExternalDirectoryObjectId") or obj.get("Guid"))


def is_mailbox(obj: dict[str, Any] | None) -> bool:
    return bool(obj) and str(obj.get("RecipientTypeDetails")) in MAILBOX_KINDS  # type: ignore[union-attr]


def forwarding_state(obj: dict[str, Any] | None) -> dict[str, Any]:
    """The forwarding fields of a mailbox, as recorded for rollback."""
    obj = obj or {}
    return {
        "ForwardingSmtpAddress": obj.get("ForwardingSmtpAddress"),
        "ForwardingAddress": obj.get("ForwardingAddress"),
        "DeliverToMailboxAndForward": bool(obj.get("DeliverToMailboxAndForward")),
    }


async def smtp_forward(
    exo: CmdletRunner,
    identity: str,
    observed: dict[str, Any] | None,
    forward_to: str | None,
    *,
    unchanged: str,
    changed: str,
) -> StepResult:
    """Make a mailbox forward to `forward_to` (None: forward nowhere), keeping no copy.

    DeliverToMailboxAndForward stays false: a kept copy would be moved again by the
    next delta pass (FACTS.md). Returns the StepResult for the calling step.
    """
    before = forwarding_state(observed)
    want = bare(forward_to)
    if (
        bare(before["ForwardingSmtpAddress"]) == want
        and not before["ForwardingAddress"]
        and not before["DeliverToMailboxAndForward"]
    ):
        return StepResult(False, before, before, unchanged)
    await exo.run(
        "Set-Mailbox",
        Identity=identity,
        ForwardingSmtpAddress=forward_to,
        ForwardingAddress=None,
        DeliverToMailboxAndForward=False,
    )
    after = {
        "ForwardingSmtpAddress": f"smtp:{forward_to}" if forward_to else None,
        "ForwardingAddress": None,
        "DeliverToMailboxAndForward": False,
    }
    return StepResult(True, before, after, changed)
