"""Small helpers over Exchange objects (PascalCase JSON from InvokeCommand)."""

from __future__ import annotations

from typing import Any, Protocol

from coexist.errors import NotFound

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
