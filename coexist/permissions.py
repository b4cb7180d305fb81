"""Least privilege: exactly which permissions each command needs, in each tenant.

One table, used by `coexist permissions` (to print what to grant) and by
`coexist preflight` (to check the tokens the apps really get). Application
permissions come from the Microsoft Graph permissions reference; Exchange
needs the `Exchange.ManageAsApp` application permission of "Office 365
Exchange Online" plus an Entra role on the app's service principal
(FACTS.md; learn.microsoft.com/powershell/exchange/app-only-auth-powershell-v2).
"""

from __future__ import annotations

from dataclasses import dataclass

EXCHANGE_ROLES = {
    # Entra role template ids that let an app run the recipient cmdlets coexist uses.
    "29232cdf-9323-42fd-ade2-1d097af3e4de": "Exchange Administrator",
    "31392ffb-586c-42d1-9346-e59415a2cc4e": "Exchange Recipient Administrator",
    "62e90394-69f5-4237-9190-012177145e10": "Global Administrator",
}


@dataclass(frozen=True)
class Need:
    """One permission: satisfied by any of `any_of` (the first is the least privileged)."""

    tenant: str  # source | target
    api: str  # graph | exchange
    any_of: tuple[str, ...]
    why: str

    @property
    def label(self) -> str:
        return self.any_of[0]


READ_USERS = (
    "User.Read.All",
    "User.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
)
READ_GROUPS = (
    "GroupMember.Read.All",
    "Group.Read.All",
    "Group.ReadWrite.All",
    "Directory.Read.All",
)
MANAGE_AS_APP = ("Exchange.ManageAsApp",)
EXCHANGE_ROLE = tuple(EXCHANGE_ROLES.values())

NEEDS: dict[str, list[Need]] = {
    "discover": [
        Need("source", "graph", READ_USERS, "read source users (usage location, names)"),
        Need("source", "graph", READ_GROUPS, "resolve the scope group's transitive members"),
        Need("source", "exchange", MANAGE_AS_APP, "read mailboxes (LegacyExchangeDN, X500)"),
        Need("source", "exchange", EXCHANGE_ROLE, "run Get-Mailbox"),
    ],
    "provision": [
        Need("target", "exchange", MANAGE_AS_APP, "create MailUsers"),
        Need("target", "exchange", EXCHANGE_ROLE, "run New-MailUser / Set-MailUser"),
    ],
    "groups": [
        Need("source", "graph", READ_GROUPS, "read security groups and members"),
        Need(
            "target",
            "graph",
            ("Group.ReadWrite.All", "Directory.ReadWrite.All"),
            "create security groups",
        ),
        Need("target", "exchange", EXCHANGE_ROLE, "create distribution and dynamic groups"),
    ],
    "prestage": [
        Need(
            "target",
            "graph",
            ("User.ReadWrite.All", "Directory.ReadWrite.All"),
            "set usageLocation, assign licenses",
        ),
        Need(
            "target",
            "graph",
            ("Organization.Read.All", "Directory.Read.All"),
            "read subscribed SKUs",
        ),
        Need("target", "exchange", EXCHANGE_ROLE, "forward the new mailbox to the source"),
    ],
    "cutover": [
        Need(
            "source",
            "exchange",
            EXCHANGE_ROLE,
            "forward or rename the source mailbox, create contacts",
        ),
        Need("target", "exchange", EXCHANGE_ROLE, "remove the target's forward"),
    ],
    "verify-mailflow": [
        Need("target", "graph", ("Mail.Send",), "send probe messages from the service mailbox"),
        Need(
            "target",
            "graph",
            ("Mail.Read", "Mail.ReadWrite", "Mail.ReadBasic.All"),
            "find probes in target mailboxes",
        ),
        Need(
            "source",
            "graph",
            ("Mail.Read", "Mail.ReadWrite", "Mail.ReadBasic.All"),
            "find probes in source mailboxes",
        ),
    ],
    "preflight": [
        Need("source", "graph", READ_GROUPS, "check the scope group"),
        Need(
            "target",
            "graph",
            ("Organization.Read.All", "Directory.Read.All"),
            "count free license seats",
        ),
        Need("source", "exchange", EXCHANGE_ROLE, "read auto-forwarding policies"),
        Need("target", "exchange", EXCHANGE_ROLE, "read accepted domains"),
    ],
}
NEEDS["rediscover"] = NEEDS["discover"]
NEEDS["rollback"] = NEEDS["cutover"]


def needs(command: str | None = None) -> list[Need]:
    """The needs of one command, or of all of them (deduplicated)."""
    if command is not None:
        return list(NEEDS.get(command, []))
    seen: dict[tuple[str, str, tuple[str, ...]], Need] = {}
    for items in NEEDS.values():
        for n in items:
            seen.setdefault((n.tenant, n.api, n.any_of), n)
    return list(seen.values())


def satisfied(need: Need, roles: set[str], wids: set[str]) -> bool:
    if need.api == "graph" or need.any_of == MANAGE_AS_APP:
        return bool(roles & set(need.any_of))
    return any(EXCHANGE_ROLES.get(w) in need.any_of for w in wids)
