"""Distribution groups, mail-enabled security groups, and dynamic distribution groups.

Graph cannot create these (FACTS.md); they exist in Entra too, so they are plain
`Group` objects Graph also lists. Dynamic groups have no stored members.
"""

from __future__ import annotations

from typing import Any

from ..model import Group, MailObject
from . import directory as d
from . import errors
from .directory import Call, Registry
from .recipient import listing

COMMANDS = Registry()
MEMBER_ALREADY = "Microsoft.Exchange.Management.Tasks.MemberAlreadyExistsException"
MEMBER_MISSING = "Microsoft.Exchange.Management.Tasks.MemberNotFoundException"
# New-DynamicDistributionGroup -IncludedRecipients values (cmdlet reference).
PRECANNED = (
    "AllRecipients",
    "MailboxUsers",
    "MailContacts",
    "MailGroups",
    "MailUsers",
    "Resources",
    "None",
)


@COMMANDS.cmdlet("Get-DistributionGroup", listing=True)
def get_distribution_group(call: Call) -> list[dict[str, Any]]:
    return listing(call, d.is_distribution_group)


def _new_group(call: Call, kind: str) -> Group:
    t = call.tenant
    name = d.check_name(t, d.as_text(call.get("Name")))
    alias = d.unique_alias(t, call.text("Alias"), name)
    primary = (
        d.smtp_of(call.get("PrimarySmtpAddress"), "PrimarySmtpAddress")
        if call.has("PrimarySmtpAddress")
        else None
    )
    addresses = d.new_addresses(t, alias, primary)
    d.check_addresses(t, None, addresses, accepted_only=True)
    group = Group(
        id=d.new_object_guid(),
        display_name=call.text("DisplayName") or name,
        name=name,
        alias=alias,
        email_addresses=addresses,
        kind=kind,  # type: ignore[arg-type]
        visible_at=call.ctx.limiter.visible_at(alias),
    )
    group.legacy_exchange_dn = t.new_legacy_dn(alias)
    return group


@COMMANDS.cmdlet(
    "New-DistributionGroup",
    params=(
        "Name",
        "Alias",
        "DisplayName",
        "PrimarySmtpAddress",
        "Type",
        "Members",
        "ManagedBy",
        "Notes",
        "RequireSenderAuthenticationEnabled",
    ),
)
def new_distribution_group(call: Call) -> list[dict[str, Any]]:
    t = call.tenant
    gtype = (call.text("Type") or "Distribution").lower()
    if gtype not in ("distribution", "security"):
        raise errors.invalid_value("Type", call.get("Type"), "Specify Distribution or Security.")
    members = d.resolve_many(t, call.get("Members"), d.is_recipient, "Members")
    managers = d.resolve_many(t, call.get("ManagedBy"), d.is_recipient, "ManagedBy")
    group = _new_group(call, "MailSecurity" if gtype == "security" else "Distribution")
    group.members = _unique_ids(members)
    group.managed_by = _unique_ids(managers)
    group.description = call.text("Notes")
    if call.has("RequireSenderAuthenticationEnabled"):
        group.require_sender_authentication = d.as_bool(
            "RequireSenderAuthenticationEnabled", call.get("RequireSenderAuthenticationEnabled")
        )
    t.groups[group.id] = group
    t.touch(group)
    return [d.group_json(t, group)]


def _unique_ids(objs: list[MailObject]) -> list[str]:
    return list(dict.fromkeys(o.id for o in objs))


@COMMANDS.cmdlet(
    "Set-DistributionGroup",
    params=(*d.COMMON_SET, "PrimarySmtpAddress", "ManagedBy", "RequireSenderAuthenticationEnabled"),
)
def set_distribution_group(call: Call) -> list[dict[str, Any]]:
    t = call.tenant
    g = d.resolve(t, call.get("Identity"), d.is_distribution_group)
    assert isinstance(g, Group)
    managers = (
        d.resolve_many(t, call.get("ManagedBy"), d.is_recipient, "ManagedBy")
        if call.has("ManagedBy")
        else None
    )
    d.apply_common(call, g)
    if managers is not None:
        g.managed_by = _unique_ids(managers)
    if call.has("RequireSenderAuthenticationEnabled"):
        g.require_sender_authentication = d.as_bool(
            "RequireSenderAuthenticationEnabled", call.get("RequireSenderAuthenticationEnabled")
        )
    t.touch(g)
    return []


@COMMANDS.cmdlet("Get-DistributionGroupMember", params=("Identity", "ResultSize"))
def get_distribution_group_member(call: Call) -> list[dict[str, Any]]:
    t = call.tenant
    g = d.resolve(t, call.get("Identity"), d.is_distribution_group)
    assert isinstance(g, Group)
    rows = [d.base_json(t, m) for m in (t.get(i) for i in g.members) if m is not None]
    return d.limit(call, rows)


def _member_change(call: Call) -> tuple[Group, MailObject]:
    t = call.tenant
    g = d.resolve(t, call.get("Identity"), d.is_distribution_group)
    assert isinstance(g, Group)
    if not call.has("Member"):
        # -Member is optional in the reference; without it there is nothing to do.
        raise errors.BindingError(
            "Cannot process command because of one or more missing mandatory parameters: Member.",
            errors.BINDING,
        )
    member = d.resolve(t, call.get("Member"), d.is_recipient, "Member")
    return g, member


@COMMANDS.cmdlet(
    "Add-DistributionGroupMember", params=("Identity", "Member", "BypassSecurityGroupManagerCheck")
)
def add_distribution_group_member(call: Call) -> list[dict[str, Any]]:
    g, member = _member_change(call)
    if member.id in g.members:
        raise errors.CmdletError(
            f'The recipient "{member.name}" is already a member of the group "{g.name}".',
            MEMBER_ALREADY,
        )
    g.members.append(member.id)
    call.tenant.touch(g)
    return []


@COMMANDS.cmdlet(
    "Remove-DistributionGroupMember",
    params=("Identity", "Member", "BypassSecurityGroupManagerCheck"),
)
def remove_distribution_group_member(call: Call) -> list[dict[str, Any]]:
    g, member = _member_change(call)
    if member.id not in g.members:
        raise errors.CmdletError(
            f'The recipient "{member.name}" isn\'t a member of the group "{g.name}".',
            MEMBER_MISSING,
        )
    g.members.remove(member.id)
    call.tenant.touch(g)
    return []


@COMMANDS.cmdlet("Get-DynamicDistributionGroup", listing=True)
def get_dynamic_distribution_group(call: Call) -> list[dict[str, Any]]:
    return listing(call, d.is_dynamic_group)


@COMMANDS.cmdlet(
    "New-DynamicDistributionGroup",
    params=(
        "Name",
        "Alias",
        "DisplayName",
        "PrimarySmtpAddress",
        "IncludedRecipients",
        "RecipientFilter",
    ),
)
def new_dynamic_distribution_group(call: Call) -> list[dict[str, Any]]:
    t = call.tenant
    group = _new_group(call, "Dynamic")
    if call.has("IncludedRecipients"):
        wanted = d.as_list(call.get("IncludedRecipients"))
        canon = {p.lower(): p for p in PRECANNED}
        bad = [w for w in wanted if w.lower() not in canon]
        if bad:
            raise errors.invalid_value(
                "IncludedRecipients",
                ", ".join(bad),
                "Specify one of the following values: " + ", ".join(PRECANNED) + ".",
            )
        group.included_recipients = ", ".join(canon[w.lower()] for w in wanted)
    else:
        group.recipient_filter = d.as_text(call.get("RecipientFilter"))
    t.groups[group.id] = group
    t.touch(group)
    return [d.group_json(t, group)]
