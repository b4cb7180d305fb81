"""Discovery: the scope group (or all user mailboxes) → source mailboxes.

Reads only. Graph gives the scope group and its transitive membership (nested
groups resolved); Exchange gives the mailbox attributes Graph does not expose
(LegacyExchangeDN, X500 proxies, RecipientTypeDetails, ExchangeGuid).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from coexist.errors import InputError
from coexist.model import SourceMailbox

# Graph cannot see Exchange-only attributes; one bulk Get-Mailbox is cheaper than
# one call per user (FACTS.md: bulk reads, paging).
USER_MAILBOX_KINDS = ("UserMailbox",)


class GraphReader(Protocol):
    async def list_all(
        self, path: str, params: dict[str, Any] | None = ..., headers: dict[str, str] | None = ...
    ) -> list[dict[str, Any]]: ...


class CmdletRunner(Protocol):
    async def run(self, cmdlet: str, **params: Any) -> list[dict[str, Any]]: ...


def odata_quote(value: str) -> str:
    """An OData string literal: single quotes doubled (OData v4 ABNF, SQUOTE-in-string)."""
    return "'" + value.replace("'", "''") + "'"


async def find_scope_group(graph: GraphReader, name: str) -> dict[str, Any]:
    """The one mail-enabled security group whose display name is exactly `name`."""
    found = await graph.list_all(
        "groups",
        {
            "$filter": f"displayName eq {odata_quote(name)}",
            "$select": "id,displayName,mailEnabled,securityEnabled,mail",
        },
    )
    exact = [g for g in found if g.get("displayName") == name]
    if not exact:
        raise InputError(
            f"scope group {name!r} was not found in the source tenant",
            next_step="fix [scope] group in project.toml (exact display name, spaces included), "
            "then run `coexist preflight`",
            group=name,
        )
    if len(exact) > 1:
        ids = ", ".join(g["id"] for g in exact)
        raise InputError(
            f"scope group name {name!r} is ambiguous: {len(exact)} groups ({ids})",
            next_step="rename one of them in the source tenant, or choose a unique group",
            group=name,
        )
    group = exact[0]
    if not (group.get("mailEnabled") and group.get("securityEnabled")):
        raise InputError(
            f"scope group {name!r} is not a mail-enabled security group",
            next_step="use a mail-enabled security group as the scope (issue: scope semantics)",
            group=name,
        )
    return group


async def transitive_user_ids(graph: GraphReader, group_id: str) -> list[str]:
    """Users in the group, nested groups resolved, in a stable order."""
    members = await graph.list_all(
        f"groups/{group_id}/transitiveMembers",
        {"$select": "id,userPrincipalName", "$top": "999"},
    )
    ids = {m["id"] for m in members if m.get("@odata.type", "").endswith(".user")}
    return sorted(ids)


def mailbox_from_exchange(obj: dict[str, Any]) -> SourceMailbox:
    """A SourceMailbox from Get-Mailbox's JSON (PascalCase properties)."""
    return SourceMailbox(
        id=str(obj.get("ExternalDirectoryObjectId") or obj.get("Guid")),
        upn=str(obj.get("UserPrincipalName") or obj.get("PrimarySmtpAddress")),
        display_name=str(obj.get("DisplayName") or obj.get("Name")),
        name=str(obj.get("Name")),
        alias=str(obj.get("Alias")),
        primary_smtp=str(obj.get("PrimarySmtpAddress")),
        email_addresses=tuple(obj.get("EmailAddresses") or ()),
        legacy_exchange_dn=obj.get("LegacyExchangeDN"),
        recipient_type_details=str(obj.get("RecipientTypeDetails")),
        exchange_guid=obj.get("ExchangeGuid"),
    )


@dataclass
class ScopeResult:
    mailboxes: list[SourceMailbox]
    skipped: list[dict[str, str]] = field(default_factory=list)  # id, reason
    warnings: list[str] = field(default_factory=list)


async def resolve_scope(
    graph: GraphReader, exo: CmdletRunner, group_name: str | None
) -> ScopeResult:
    """The source mailboxes in scope: members of the scope group, or all user mailboxes."""
    boxes = {
        mb.id: mb
        for mb in map(mailbox_from_exchange, await exo.run("Get-Mailbox", ResultSize="Unlimited"))
    }
    users = await graph.list_all(
        "users", {"$select": "id,usageLocation,givenName,surname,userPrincipalName", "$top": "999"}
    )
    details = {u["id"]: u for u in users}
    result = ScopeResult(mailboxes=[])
    if group_name:
        group = await find_scope_group(graph, group_name)
        member_ids = await transitive_user_ids(graph, group["id"])
        if not member_ids:
            result.warnings.append(
                f"scope group {group_name!r} has no members yet; in a real tenant new "
                "membership can take up to an hour to settle — run `coexist rediscover` later"
            )
    else:
        member_ids = sorted(
            i for i, mb in boxes.items() if mb.recipient_type_details == "UserMailbox"
        )
    for oid in member_ids:
        mb = boxes.get(oid)
        if mb is None:
            result.skipped.append({"id": oid, "reason": "member has no mailbox in the source"})
            continue
        if mb.recipient_type_details not in USER_MAILBOX_KINDS:
            result.skipped.append(
                {
                    "id": oid,
                    "address": mb.primary_smtp,
                    "reason": f"{mb.recipient_type_details} is not migrated by this flow yet",
                }
            )
            continue
        d = details.get(oid, {})
        result.mailboxes.append(
            SourceMailbox(
                **{
                    **mb.to_dict(),
                    "email_addresses": mb.email_addresses,
                    "usage_location": d.get("usageLocation"),
                    "first_name": d.get("givenName"),
                    "last_name": d.get("surname"),
                }
            )
        )
    return result
