"""preflight: everything that would make a batch fail, checked before it runs.

Each check reads only, and says what to fix. A `fail` makes the command exit
non-zero; a `warn` is for the operator to judge.
"""

from __future__ import annotations

import asyncio
import re
import tomllib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from coexist import autoforward as af
from coexist.cutover.hosted import kept_copies
from coexist.discovery.scope import find_scope_group, transitive_user_ids
from coexist.engine.context import (
    EWS_SIGN_INS,
    Context,
    Side,
    ews_endpoint,
    powershell_runner,
)
from coexist.errors import (
    AuthenticationError,
    CoexistError,
    InputError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    TLSError,
    Unreachable,
)
from coexist.model import forwarding_address, split_address
from coexist.permissions import (
    EXCHANGE_ROLE_PROBE,
    exchange_role_in_token,
    is_exchange_role,
    needs,
    satisfied,
)
from coexist.provisioning.exchange import object_id
from coexist.provisioning.index import TargetIndex
from coexist.provisioning.orphans import Obstacles, check_live, describe
from coexist.provisioning.provision import obstacles_of, source_of
from coexist.runtime import retry_policy
from coexist.settings import Project
from coexist.tenants.auth import TenantCredentials
from coexist.tenants.base import connection_error
from coexist.tenants.ews import (
    GRANTS,
    AdminLogin,
    EwsEndpoint,
    EwsLimits,
    EwsServer,
    ServerVersion,
    grant_command,
    reported_version,
)
from coexist.tenants.ews import (
    VERSIONS as EWS_VERSIONS,
)
from coexist.tenants.graph import GraphAdapter


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""
    blocked: tuple[dict[str, Any], ...] = ()  # per user, for --json (auto-forwarding)
    extra: dict[str, Any] | None = None  # more for --json (the EWS server's version)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "check": self.name,
            "status": self.status,
            "detail": self.detail,
            "fix": self.fix,
        }
        if self.blocked:
            out["blocked"] = list(self.blocked)
        if self.extra:
            out.update(self.extra)
        return out


async def check_permissions(ctx: Context, commands: list[str]) -> list[Check]:
    """Graph permissions and Exchange.ManageAsApp from the tokens; the Exchange role from
    Exchange itself (a read-only cmdlet), since a role granted inside Exchange shows in
    no token. A token without an Exchange admin role in `wids` is then only a warning."""
    out: list[Check] = []
    granted: dict[tuple[str, str], dict[str, Any]] = {}
    no_token: set[tuple[str, str]] = set()
    for side in (ctx.source, ctx.target):
        for api, adapter in (("graph", side.graph), ("exchange", side.exo)):
            try:
                granted[(side.label, api)] = await adapter.granted()
            except CoexistError as exc:
                if exc.stops_run:  # unreachable or untrusted endpoint: no check can run
                    raise
                out.append(
                    Check(f"{side.label} {api} sign-in", "fail", exc.message, exc.next_step or "")
                )
                granted[(side.label, api)] = {}
                no_token.add((side.label, api))
    role: dict[str, bool] = {}
    for side in (ctx.source, ctx.target):
        if (side.label, "exchange") not in no_token:
            role[side.label], row = await exchange_role(side, granted[(side.label, "exchange")])
            out.append(row)
    missing: dict[tuple[str, str], list[str]] = {}
    for command in commands:
        for need in needs(command, ctx.project.migration.mover):
            claims = granted[(need.tenant, need.api)]
            if is_exchange_role(need):
                ok = role.get(need.tenant, False)
            else:
                ok = satisfied(need, set(claims.get("roles") or []), set(claims.get("wids") or []))
            if not ok:
                missing.setdefault((need.tenant, need.api), []).append(f"{need.label} ({need.why})")
    for label in ("source", "target"):
        for api in ("graph", "exchange"):
            gaps = sorted(set(missing.get((label, api), [])))
            if (label, api) in no_token:
                continue  # without a token nothing is known about grants; sign-in says why
            if gaps:
                out.append(
                    Check(
                        f"{label} {api} permissions",
                        "fail",
                        "missing: " + "; ".join(gaps),
                        "grant them to the app (coexist permissions lists them): an Exchange "
                        "role as an Entra role or an Exchange role group of the app's service "
                        "principal; then re-run",
                    )
                )
            elif granted[(label, api)]:
                out.append(Check(f"{label} {api} permissions", "ok", "granted"))
    return out


async def exchange_role(side: Side, claims: dict[str, Any]) -> tuple[bool, Check]:
    """Whether Exchange grants the app a role: it runs a read-only cmdlet (403: none).

    The row is a warning when the token disagrees (no Exchange admin role in `wids`
    although Exchange said yes): the app is granted inside Exchange (a role group, RBAC
    for applications), and coexist cannot see which cmdlets that allows.
    """
    name = f"{side.label} exchange role"
    cmdlet, params = EXCHANGE_ROLE_PROBE
    try:
        await side.exo.run(cmdlet, **params)
    except (PermissionDenied, AuthenticationError) as exc:
        # 401 means no Exchange.ManageAsApp (the permissions row names it); 403 no role.
        return False, Check(
            name,
            "fail",
            f"Exchange refused {cmdlet} for the app: {exc.message}",
            "assign the Exchange Administrator (or Exchange Recipient Administrator) role to "
            "the app's service principal, or add the service principal to an Exchange role "
            "group (New-ServicePrincipal, Add-RoleGroupMember)",
        )
    in_token = exchange_role_in_token(set(claims.get("wids") or []))
    if in_token is not None:
        return True, Check(name, "ok", f"Exchange runs {cmdlet} for the app ({in_token})")
    return True, Check(
        name,
        "warn",
        f"Exchange runs {cmdlet} for the app, but its token names no Exchange admin role "
        "(wids): it is granted inside Exchange (role group or RBAC for applications), and "
        "coexist cannot see which cmdlets that covers",
        "make sure the role group covers the cmdlets `coexist permissions` lists (Get-/Set-"
        "Mailbox, New-/Set-MailUser, New-MailContact, distribution groups), or assign the "
        "Exchange Administrator role",
    )


async def check_scope(ctx: Context) -> list[Check]:
    name = ctx.project.scope.group
    if not name:
        return [Check("scope", "ok", "all user mailboxes of the source")]
    try:
        group = await find_scope_group(ctx.source.graph, name)
    except CoexistError as exc:
        if exc.stops_run:
            raise
        return [Check("scope group", "fail", exc.message, exc.next_step or "")]
    members = await transitive_user_ids(ctx.source.graph, group["id"])
    if not members:
        return [
            Check(
                "scope group",
                "fail",
                f"{name!r} has no members",
                "add users to the group; in a real tenant membership can take up to an hour to settle",
            )
        ]
    return [Check("scope group", "ok", f"{name!r}: {len(members)} users (nested groups included)")]


async def accepted_domains(side: Side) -> set[str]:
    return {str(d.get("DomainName")).lower() for d in await side.exo.run("Get-AcceptedDomain")}


async def check_domains(ctx: Context) -> list[Check]:
    try:
        return await _check_domains(ctx)
    except PermissionDenied as exc:  # no Exchange role: the permissions rows say which side
        return [Check("domains", "fail", f"cannot read accepted domains: {exc.message}")]


async def _check_domains(ctx: Context) -> list[Check]:
    out = []
    dest = ctx.project.destination_domain.lower()
    target_domains = await accepted_domains(ctx.target)
    if dest in target_domains:
        out.append(Check("destination domain", "ok", f"{dest} is accepted in the target"))
    else:
        out.append(
            Check(
                "destination domain",
                "fail",
                f"{dest} is not an accepted domain of the target ({', '.join(sorted(target_domains))})",
                "verify the domain in the target tenant, or fix [domains] destination_domain",
            )
        )
    fwd = ctx.project.domains.source_forwarding_domain
    if fwd:
        source_domains = await accepted_domains(ctx.source)
        status = "ok" if fwd.lower() in source_domains else "fail"
        out.append(
            Check(
                "source forwarding domain",
                status,
                f"{fwd} {'is' if status == 'ok' else 'is not'} an accepted domain of the source",
                "" if status == "ok" else "fix [domains] source_forwarding_domain",
            )
        )
    return out


# -- automatic forwarding ---------------------------------------------------------------
@dataclass(frozen=True)
class Forwarder:
    """One migrating user's forwarding mailbox on one side, and where it forwards."""

    user: str  # what people read: the user's source address
    sender: af.Sender
    destination: str  # the forwarding address; its domain picks the remote domain


@dataclass(frozen=True)
class Gates:
    """A tenant's automatic-forwarding settings, rule recipients resolved to object ids."""

    policies: list[af.OutboundPolicy]
    rules: list[af.OutboundRule]
    remote_domains: list[af.RemoteDomain]
    members: dict[str, frozenset[str]]  # scoping group id -> member ids

    def verdict(self, who: Forwarder) -> af.Verdict:
        groups = frozenset(g for g, ids in self.members.items() if who.sender.key in ids)
        sender = af.Sender(who.sender.key, who.sender.primary_smtp, groups)
        domain = split_address(who.destination)[1]
        return af.forwarding_verdict(self.policies, self.rules, self.remote_domains, sender, domain)


def _values(row: dict[str, Any], prop: str) -> list[str]:
    """A multi-valued property of a cmdlet's output (null, a string or a list)."""
    raw = row.get(prop)
    if raw is None:
        return []
    return [str(v) for v in (raw if isinstance(raw, list) else [raw]) if str(v).strip()]


def parse_policy(row: dict[str, Any]) -> af.OutboundPolicy:
    """Get-HostedOutboundSpamFilterPolicy output → policy (AutoForwardingMode, IsDefault)."""
    name = str(row.get("Name") or row.get("Identity") or "")
    default = bool(row.get("IsDefault")) or name.lower() == af.DEFAULT_POLICY.lower()
    mode = str(row.get("AutoForwardingMode") or "Automatic")  # Automatic is its default
    return af.OutboundPolicy(name, mode, default)


def parse_remote_domain(row: dict[str, Any]) -> af.RemoteDomain:
    """Get-RemoteDomain output → remote domain (DomainName, AutoForwardEnabled)."""
    enabled = row.get("AutoForwardEnabled")
    return af.RemoteDomain(
        str(row.get("Name") or row.get("Identity") or ""),
        str(row.get("DomainName") or ""),
        True if enabled is None else bool(enabled),  # $true is Exchange Online's default
    )


class Recipients:
    """Resolves the recipients a rule shows to object ids with Get-Recipient, each identity
    once: Exchange accepts any of Name, alias, address, DN or GUID, so whichever form the
    rule prints them in, they resolve."""

    def __init__(self, side: Side) -> None:
        self.side = side
        self.ids: dict[str, str] = {}

    async def resolve(self, identity: str) -> str:
        key = identity.lower()
        if key not in self.ids:
            try:
                found = await self.side.exo.run("Get-Recipient", Identity=identity)
            except (NotFound, InvalidRequest):
                found = []
            # An identity that resolves to nothing (a deleted recipient) keeps its
            # condition, which then matches nobody.
            self.ids[key] = object_id(found[0]) if found else f"unresolved:{key}"
        return self.ids[key]

    async def resolve_all(self, identities: list[str]) -> frozenset[str]:
        return frozenset([await self.resolve(i) for i in identities])


async def parse_rule(row: dict[str, Any], recipients: Recipients) -> af.OutboundRule:
    """Get-HostedOutboundSpamFilterRule output → rule, recipients as object ids."""
    return af.OutboundRule(
        name=str(row.get("Name") or row.get("Identity") or ""),
        policy=str(row.get("HostedOutboundSpamFilterPolicy") or ""),
        priority=int(row.get("Priority") or 0),
        enabled=str(row.get("State") or "Enabled").lower() == "enabled",
        senders=await recipients.resolve_all(_values(row, "From")),
        member_of=await recipients.resolve_all(_values(row, "FromMemberOf")),
        domains=tuple(_values(row, "SenderDomainIs")),
        except_senders=await recipients.resolve_all(_values(row, "ExceptIfFrom")),
        except_member_of=await recipients.resolve_all(_values(row, "ExceptIfFromMemberOf")),
        except_domains=tuple(_values(row, "ExceptIfSenderDomainIs")),
    )


async def group_members(side: Side, group_id: str) -> frozenset[str]:
    """Object ids in a scoping group (nested ones too, per autoforward's flag), via Graph:
    one listing covers distribution, mail-enabled security and Microsoft 365 groups."""
    if group_id.startswith("unresolved:"):
        return frozenset()
    relation = "transitiveMembers" if af.NESTED_GROUPS_IN_SCOPE else "members"
    try:
        rows = await side.graph.list_all(f"groups/{group_id}/{relation}", {"$select": "id"})
    except NotFound:
        return frozenset()  # the rule names a recipient that is not a group
    return frozenset(str(r["id"]) for r in rows)


async def read_gates(side: Side) -> Gates:
    """Every outbound spam policy and rule and every remote domain of a tenant."""
    policies = [parse_policy(r) for r in await side.exo.run("Get-HostedOutboundSpamFilterPolicy")]
    recipients = Recipients(side)
    rules = [
        await parse_rule(r, recipients)
        for r in await side.exo.run("Get-HostedOutboundSpamFilterRule")
    ]
    remote = [parse_remote_domain(r) for r in await side.exo.run("Get-RemoteDomain")]
    scoping = sorted({g for r in rules for g in r.member_of | r.except_member_of})
    members = {g: await group_members(side, g) for g in scoping}
    return Gates(policies, rules, remote, members)


async def scope_people(ctx: Context) -> list[dict[str, Any]]:
    """Before discover: the scope group's users (or every user) with id and mail, from Graph."""
    graph = ctx.source.graph
    select = {"$select": "id,mail,userPrincipalName", "$top": "999"}
    name = ctx.project.scope.group
    if name:
        group = await find_scope_group(graph, name)
        rows = await graph.list_all(f"groups/{group['id']}/transitiveMembers", select)
        rows = [r for r in rows if str(r.get("@odata.type", "")).endswith(".user")]
    else:
        rows = await graph.list_all("users", select)
    return [r for r in rows if r.get("mail")]


async def forwarders(ctx: Context, side: Side, batch: list[dict[str, Any]]) -> list[Forwarder]:
    """Who forwards out of `side`: each batch user's mailbox there, and its destination.

    forward-on-source: the source mailbox forwards to the target address. Pre-stage: the
    target mailbox (its planned address until provisioned) forwards back to the source.
    Before discover, the scope's users stand in for the batch.
    """
    dest = ctx.project.destination_domain.lower()
    fwd = ctx.project.domains.source_forwarding_domain
    out = []
    if batch:
        for item in batch:
            src = source_of(item)
            target = str(item.get("target_address") or f"{src.local_part}@{dest}")
            if side is ctx.source:
                out.append(Forwarder(src.primary_smtp, af.Sender(src.id, src.primary_smtp), target))
            else:
                key = item.get("target_id") or None
                back = forwarding_address(src, fwd)
                out.append(Forwarder(src.primary_smtp, af.Sender(key, target), back))
        return out
    for person in await scope_people(ctx):
        mail = str(person["mail"])
        local, domain = split_address(mail)
        target = f"{local}@{dest}"
        if side is ctx.source:
            out.append(Forwarder(mail, af.Sender(str(person["id"]), mail), target))
        else:
            out.append(Forwarder(mail, af.Sender(None, target), f"{local}@{fwd or domain}"))
    return out


def _policy_cause(v: af.Verdict) -> str:
    p = v.policy
    which = (
        f"custom outbound spam policy '{p.name}' (rule '{v.rule.name}', priority {v.rule.priority})"
        if v.rule is not None
        else f"outbound spam policy '{p.name}'"
    )
    meaning = " (= Off)" if p.auto_forwarding_mode.lower() == "automatic" else ""
    return (
        f"{which}: AutoForwardingMode is {p.auto_forwarding_mode}{meaning}, external "
        "forwarding blocked (NDR 550 5.7.520)"
    )


def _policy_fix(v: af.Verdict, users: list[str], ctx: Context, side: Side) -> str:
    if v.rule is not None:
        return (
            f'Set-HostedOutboundSpamFilterPolicy -Identity "{v.policy.name}" -AutoForwardingMode '
            f"On, or add the users to the rule's exceptions (Set-HostedOutboundSpamFilterRule "
            f'-Identity "{v.rule.name}" -ExceptIfFrom <current list + {", ".join(users[:3])}>)'
        )
    # The scope group lives in the source; in the target the operator picks a group of the
    # new mailboxes (or lists them with -From).
    scope = ctx.project.scope.group if side is ctx.source else None
    group = scope or "<a group of the migrating users' mailboxes in this tenant>"
    return (
        f"set AutoForwardingMode to On: Set-HostedOutboundSpamFilterPolicy -Identity "
        f"{v.policy.name} -AutoForwardingMode On, or a custom policy scoped to the migrating "
        f'users: New-HostedOutboundSpamFilterPolicy -Name "coexist migration" '
        f'-AutoForwardingMode On; New-HostedOutboundSpamFilterRule -Name "coexist migration" '
        f'-HostedOutboundSpamFilterPolicy "coexist migration" -FromMemberOf "{group}" -Priority 0'
    )


def _remote_cause(v: af.Verdict) -> str:
    rd = v.remote_domain
    assert rd is not None
    return (
        f"remote domain '{rd.name}' ({rd.domain_name}, matching {v.destination}): "
        "AutoForwardEnabled is false, forwarded copies are dropped"
    )


def _remote_fix(v: af.Verdict) -> str:
    assert v.remote_domain is not None
    return f'Set-RemoteDomain -Identity "{v.remote_domain.name}" -AutoForwardEnabled $true'


def _listed(users: list[str]) -> str:
    more = f" and {len(users) - 5} more" if len(users) > 5 else ""
    return ", ".join(users[:5]) + more


def forwarding_check(
    ctx: Context, side: Side, why: str, gates: Gates, who: list[Forwarder]
) -> Check:
    """One row per side: ok, or every blocked user named with the setting that blocks them."""
    name = f"{side.label} auto-forwarding"
    verdicts = [(f, gates.verdict(f)) for f in who]
    blocked = [(f, v) for f, v in verdicts if not v.allowed]
    if not blocked:
        seen = sorted({f"{v.policy.name} ({v.policy.auto_forwarding_mode})" for _, v in verdicts})
        return Check(
            name,
            "ok",
            f"{len(who)} migrating users may forward out: outbound spam policy "
            f"{', '.join(seen) or 'Default'}; no remote domain blocks their destinations",
        )
    # Users blocked for the same reason are listed together; the policy gate is checked
    # first, as Exchange does (an NDR before any remote domain is looked at).
    causes: dict[str, tuple[list[str], af.Verdict]] = {}
    for f, v in blocked:
        cause = _policy_cause(v) if not v.policy_allows else _remote_cause(v)
        causes.setdefault(cause, ([], v))[0].append(f.user)
    details, fixes = [], []
    for cause, (users, v) in causes.items():
        details.append(f"{_listed(users)}: {cause}")
        fixes.append(_policy_fix(v, users, ctx, side) if not v.policy_allows else _remote_fix(v))
    return Check(
        name,
        "fail",
        f"{len(blocked)} of {len(who)} migrating users cannot forward out of the {side.label} "
        "tenant: " + "; ".join(details),
        f"in the {side.label} tenant: "
        + "; ".join(dict.fromkeys(fixes))
        + f" (needed because {why})",
        blocked=tuple(
            {
                "user": f.user,
                "policy": v.policy.name,
                "rule": v.rule.name if v.rule else "",
                "auto_forwarding_mode": v.policy.auto_forwarding_mode,
                "policy_allows": v.policy_allows,
                "remote_domain": v.remote_domain.name if v.remote_domain else "",
                "remote_domain_allows": v.remote_domain_allows,
            }
            for f, v in blocked
        ),
    )


async def check_forwarding(ctx: Context, batch: list[dict[str, Any]] | None = None) -> list[Check]:
    """Per migrating user: the outbound spam policy applying to the forwarding mailbox and
    the remote domain matching its destination (learn.microsoft.com, outbound-spam-policies-
    configure and outbound-spam-policies-external-email-forwarding)."""
    out = []
    wants = []
    if ctx.project.cutover.mode == "forward-on-source":
        wants.append(
            (ctx.source, "cutover forward-on-source forwards the source mailbox to the target")
        )
    if ctx.project.prestage.convert:
        wants.append((ctx.target, "pre-stage forwards each new target mailbox back to the source"))
    for side, why in wants:
        try:
            gates = await read_gates(side)
        except PermissionDenied as exc:
            # Unknown is not blocked: a warning, with what lets the app read them.
            fix = (
                "let the app read them (View-Only Organization Management role group, or "
                "the Global Reader or Security Reader role), or check by hand: "
                "Get-HostedOutboundSpamFilterRule; Get-HostedOutboundSpamFilterPolicy; "
                "Get-RemoteDomain"
                if exc.service == "exchange"
                else f"{exc.next_step or 'grant GroupMember.Read.All'} (to expand the groups "
                "that scope outbound spam policies)"
            )
            out.append(
                Check(
                    f"{side.label} auto-forwarding",
                    "warn",
                    f"cannot read the {side.label} tenant's forwarding settings: {exc.message}",
                    f"{fix} (needed because {why})",
                )
            )
            continue
        try:
            who = await forwarders(ctx, side, batch or [])
        except InputError as exc:  # e.g. an unknown scope group: the scope check says so
            out.append(
                Check(
                    f"{side.label} auto-forwarding",
                    "warn",
                    f"cannot tell who migrates: {exc.message}",
                    "fix the scope (see the scope check), then re-run preflight",
                )
            )
            continue
        out.append(forwarding_check(ctx, side, why, gates, who))
    return out


async def check_licenses(ctx: Context, batch: list[dict[str, Any]]) -> list[Check]:
    sku_name = ctx.project.prestage.license_sku
    if not ctx.project.prestage.convert:
        return [Check("licenses", "ok", "pre-stage conversion is off; no license needed")]
    if not sku_name:
        return [Check("licenses", "fail", "no license SKU chosen", "set [prestage] license_sku")]
    skus = (await ctx.target.graph.send("GET", "subscribedSkus"))["value"]
    sku = next(
        (s for s in skus if sku_name.lower() in (s["skuPartNumber"].lower(), s["skuId"].lower())),
        None,
    )
    if sku is None:
        names = ", ".join(s["skuPartNumber"] for s in skus)
        return [
            Check(
                "licenses",
                "fail",
                f"SKU {sku_name!r} not in the target ({names})",
                "fix [prestage] license_sku",
            )
        ]
    free = int(sku["prepaidUnits"]["enabled"]) - int(sku["consumedUnits"])
    need = sum(1 for i in batch if i.get("phase") in ("discovered", "provisioned"))
    status = "ok" if free >= need else "fail"
    return [
        Check(
            "licenses",
            status,
            f"{sku['skuPartNumber']}: {free} free seats for {need} users to convert",
            "" if status == "ok" else "buy or free seats, or make the batch smaller",
        )
    ]


def check_usage_location(ctx: Context, batch: list[dict[str, Any]]) -> list[Check]:
    if not ctx.project.prestage.convert or ctx.project.prestage.usage_location:
        return [Check("usage location", "ok", "set by the project or not needed")]
    lacking = [i.get("source_address") for i in batch if not source_of(i).usage_location]
    if lacking:
        return [
            Check(
                "usage location",
                "fail",
                f"{len(lacking)} users have no usageLocation: {', '.join(map(str, lacking[:5]))}",
                "set [prestage] usage_location (e.g. US), or set it on the source users",
            )
        ]
    return [Check("usage location", "ok", "every user has one")]


async def check_conflicts(
    index: TargetIndex, ctx: Context, batch: list[dict[str, Any]]
) -> list[Check]:
    """What is in the way in the target: objects this journal did not make that hold or route
    to a user's source address (orphans.py: provision would fail on them), and planned
    addresses taken by others (create mode: a numeric suffix; match mode: a match)."""
    dest = ctx.project.destination_domain.lower()
    mode = ctx.project.mail_users.mode
    taken: list[str] = []
    blocked: list[Obstacles] = []
    adoptable: list[Obstacles] = []
    for item in batch:
        if item.get("target_id"):
            continue
        src = source_of(item)
        if mode == "create":  # match mode pairs users with what is there by design
            seen = await check_live(ctx.target.exo, obstacles_of(ctx, item, index))
            if seen.adoptable is not None:
                adoptable.append(seen)
                continue
            if seen.found:
                blocked.append(seen)
                continue
        local = split_address(src.primary_smtp)[0]
        owner = index.owner(f"{local}@{dest}")
        if owner is not None:
            taken.append(f"{local}@{dest} ({owner.get('Name')})")
    out = [*_collision_checks(blocked, adoptable)]
    if not taken:
        out.append(Check("name conflicts", "ok", "no planned address is taken in the target"))
        return out
    what = "will get a numeric suffix" if mode == "create" else "will be matched"
    out.append(
        Check(
            "name conflicts",
            "warn",
            f"{len(taken)} addresses taken ({what}): " + "; ".join(taken[:5]),
        )
    )
    return out


def _collision_checks(blocked: list[Obstacles], adoptable: list[Obstacles]) -> list[Check]:
    """A fail row for objects provision cannot create past, a warn row for orphans it can
    adopt; each names the users, the objects and the command."""
    out = []
    if blocked:
        out.append(
            Check(
                "address collisions",
                "fail",
                f"{len(blocked)} users: provision would fail on a target object coexist did "
                "not create: " + _each(blocked, lambda s: s.problem()),
                _each(blocked, lambda s: s.fix()),
            )
        )
    if adoptable:
        users = ",".join(s.user for s in adoptable)
        out.append(
            Check(
                "orphaned target objects",
                "warn",
                f"{len(adoptable)} users already have a target object that routes to their "
                "source mailbox but that this project's journal did not make (a lost journal, "
                "or another tool); provision stops these users unless told to adopt: "
                + _each(adoptable, lambda s: describe(s.found[0])),
                f"coexist provision --adopt --users {users}  (takes them over, journaled), "
                "or remove the objects from the target",
            )
        )
    return out


def _each(rows: list[Obstacles], text: Callable[[Obstacles], str]) -> str:
    """Per user, at most five, then how many more."""
    shown = "; ".join(f"{s.user}: {text(s)}" for s in rows[:5])
    return shown + (f"; and {len(rows) - 5} more" if len(rows) > 5 else "")


# -- per-side checks, by the side's kind (exchange, workmail and their partners) ---------------
#
# A Microsoft 365 <-> Microsoft 365 project runs the tenant-pair checks above in a session
# (`commands.preflight_checks`). A project with an EWS side runs each side's own checks,
# registered below by kind: EWS sides have no directory or cmdlets for the pair checks, and
# their admin's password comes from the vault, so a missing one is a preflight line rather
# than a session that cannot open.


@dataclass(frozen=True)
class SideProbe:
    """What a side's checks read: the project, the side, the selected users (the batch)."""

    project: Project
    side: str
    items: list[dict[str, Any]]
    env: Mapping[str, str] | None = None


SideChecks = Callable[[SideProbe], Awaitable[list[Check]]]

# Mailboxes a delegation side opens to check FullAccess (a grant per mailbox, so one sample
# proves little); impersonation's role covers the organisation: one mailbox shows it.
DELEGATION_SAMPLE = 20
IMPERSONATION_SAMPLE = 1
# Delegation: every request is the admin's and draws on one throttling budget; the seed
# (MigrationWiz, Hosted Exchange) advises about 20 mailboxes at once.
DELEGATION_ADVISED = 20
# WorkMail's EWS host (FACTS.md "Amazon WorkMail": ews.mail.<region>.awsapps.com).
WORKMAIL_HOST = re.compile(r"^ews\.mail\.([a-z0-9-]+)\.awsapps\.com$")


def _address(item: Mapping[str, Any], side: str) -> str:
    """The user's address on a side (the source address names the user everywhere)."""
    return str(item.get(f"{side}_address") or item.get("source_address") or item["key"])


def _listed_more(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (
        f" and {len(names) - shown} more" if len(names) > shown else ""
    )


def pinned_version(project: Project, side: str) -> bool:
    """Whether project.toml sets `[side.ews] version` (else the default is spoken)."""
    try:
        doc = tomllib.loads(Path(project.file).read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return True
    return "version" in ((doc.get(side) or {}).get("ews") or {})


async def check_ews_endpoint(probe: SideProbe, endpoint: EwsEndpoint) -> Check:
    """An unauthenticated request to the EWS URL: any HTTP answer (401 as a rule) means the
    host is reached and its certificate verified (name and chain: requests checks both)."""
    side, url = probe.side, endpoint.url
    name = f"{side} endpoint"
    host = urlsplit(url).hostname or url
    ca = endpoint.ca_file
    trusted = f"the CA bundle {ca} ([{side}.ews] ca_file)" if ca else "the system CA store"
    try:
        answer = await asyncio.to_thread(
            requests.get, url, verify=ca or True, timeout=30, allow_redirects=False
        )
        answer.close()
    except (requests.exceptions.RequestException, OSError) as exc:
        err = connection_error(exc, service="ews", who="EWS", url=url, setting="ews url", side=side)
        if isinstance(err, TLSError):
            return Check(
                name,
                "fail",
                f"{err.message} (host {host}, checked against {trusted})",
                f"{host}'s certificate must name {host} and chain to a CA coexist trusts: if "
                f"a private CA or a TLS-inspecting proxy signs it, set ca_file in [{side}.ews] "
                f"to that CA's bundle (PEM); if the name differs, set [{side}.ews] url to the "
                "name the certificate carries; then re-run preflight",
            )
        return Check(
            name,
            "fail",
            f"{err.message} (host {host})",
            f"check [{side}.ews] url (the https:// address of /EWS/Exchange.asmx) and that "
            f"{host} is reachable from here; then re-run preflight",
        )
    return Check(
        name,
        "ok",
        f"{urlsplit(url).scheme}://{urlsplit(url).netloc} answers (HTTP {answer.status_code}); "
        f"{host}'s certificate verified against {trusted}",
    )


def _sample(probe: SideProbe, access: str) -> list[str]:
    size = DELEGATION_SAMPLE if access == "delegation" else IMPERSONATION_SAMPLE
    addresses = sorted({_address(i, probe.side) for i in probe.items})
    return addresses[:size]


async def _open(server: EwsServer, address: str) -> tuple[CoexistError | None, Any]:
    """Open `address` as a pass does and read its Inbox; the failure (or None) and the
    server's version as that answer reported it."""
    try:
        async with server.mailbox(address) as mailbox:
            try:
                await mailbox.probe()
            except CoexistError as exc:
                return exc, reported_version(mailbox)
            return None, reported_version(mailbox)
    except CoexistError as exc:
        return exc, None


def credentials_check(
    probe: SideProbe, admin: str, auth: str, first: str, err: CoexistError | None
) -> Check:
    """The admin's login, judged from the first mailbox opened: only a 401 says it is wrong
    (a refusal to open the mailbox is about grants: the access check says which)."""
    name = f"{probe.side} credentials"
    fix = (
        f"coexist credentials set --project {probe.project.directory} --master --side "
        f"{probe.side} (the password of {admin}); check [{probe.side}.ews] auth ({auth}) and "
        "admin; then re-run preflight"
    )
    if isinstance(err, AuthenticationError):
        return Check(name, "fail", err.message, fix)
    if isinstance(err, TLSError | Unreachable):
        return Check(name, "fail", f"not checked: {err.message}", err.next_step or "")
    return Check(name, "ok", f"the server accepts {admin} ({auth} auth), asked for {first}")


def access_check(
    probe: SideProbe, admin: str, access: str, kind: str, results: dict[str, CoexistError | None]
) -> Check:
    """The access mode on the sampled mailboxes: each one lacking its grant named with the
    exact command that gives it."""
    name = f"{probe.side} access"
    total = len(probe.items)
    sampled = list(results)
    of = f"{len(sampled)} of {total} selected" if total > len(sampled) else f"all {total}"
    denied = [a for a, e in results.items() if isinstance(e, PermissionDenied)]
    other = {a: e for a, e in results.items() if e is not None and a not in denied}
    grant = GRANTS.get(access, access)
    if not denied and not other:
        return Check(
            name,
            "ok",
            f"{access}: {admin} opens {of} mailboxes checked ({_listed_more(sampled)})"
            + ("; `coexist verify-credentials` checks every one" if total > len(sampled) else ""),
        )
    details, fixes = [], []
    if denied and access == "impersonation":
        details.append(
            f"{admin} may not impersonate {_listed_more(denied)} (ErrorImpersonateUserDenied): "
            "the admin lacks the ApplicationImpersonation role"
        )
        fixes.append(grant_command("impersonation", admin, denied[0]))
    elif denied:
        where = (
            " (WorkMail: the mailbox permissions of the WorkMail console)"
            if kind == "workmail"
            else ""
        )
        details.append(
            f"{admin} lacks {grant} on {len(denied)} of {len(sampled)} mailboxes checked: "
            f"{_listed_more(denied)}{where}"
        )
        fixes += [grant_command("delegation", admin, a) for a in denied[:5]]
        if len(denied) > 5:
            fixes.append(f"and the same for the {len(denied) - 5} others")
    for address, exc in list(other.items())[:5]:
        details.append(f"{address}: {exc.message}")
        if exc.next_step:
            fixes.append(exc.next_step)
    return Check(name, "fail", f"{access} ({of} mailboxes checked): " + "; ".join(details),
                 "; ".join(fixes) + "; then re-run preflight")  # fmt: skip


def version_check(
    probe: SideProbe, said: ServerVersion | None, setting: str, pinned: bool
) -> Check:
    """The server's version from a response's ServerVersionInfo header, against the pin."""
    name = f"{probe.side} server version"
    where = f"[{probe.side}.ews] version"
    if said is None:
        return Check(
            name,
            "warn",
            f"no response carried a ServerVersionInfo header; coexist speaks {setting}",
            f"pin {where} to the server's version",
        )
    speaks = said.setting or "a version older than Exchange2010_SP1"
    extra = {"server_version": {"build": said.build, "speaks": said.setting,
                                "pinned": setting if pinned else None}}  # fmt: skip
    server = f"the server reports build {said.build} ({speaks})"
    if said.setting == setting:
        how = "pinned" if pinned else "not pinned; the default"
        return Check(name, "ok", f"{server}; {where} ({how}) is {setting}", extra=extra)
    if pinned:
        return Check(
            name,
            "warn",
            f"{server}, but {where} pins {setting}",
            f'set {where} = "{said.setting}" unless the pin is meant (a request version older '
            "than the server's works, with fewer features)"
            if said.setting
            else f"coexist needs Exchange2010_SP1 or later; {where} cannot fit this server",
            extra=extra,
        )
    # Unpinned: the default is spoken; a server older than it refuses its requests.
    order = list(EWS_VERSIONS)
    older = said.setting is None or order.index(said.setting) < order.index(setting)
    return Check(
        name,
        "warn" if older else "ok",
        f"{server}; {where} is not pinned (coexist speaks {setting}, the default): recorded"
        + (", and the server is older than that" if older else ""),
        f'pin it: {where} = "{said.setting}"' if said.setting else "",
        extra=extra,
    )


def region_check(probe: SideProbe, url: str, configured: str | None) -> Check:
    """WorkMail's region, read from its EWS host name."""
    name = f"{probe.side} region"
    host = (urlsplit(url).hostname or "").lower()
    found = WORKMAIL_HOST.match(host)
    if found is None:
        return Check(
            name,
            "warn",
            f"{host} is not a WorkMail EWS host (ews.mail.<region>.awsapps.com): no region "
            "can be read from it (a sandbox, a proxy or a custom name)",
            f"if this is Amazon WorkMail, set [{probe.side}.ews] region (or url to "
            "https://ews.mail.<region>.awsapps.com/EWS/Exchange.asmx)",
        )
    region = found.group(1)
    if configured and configured != region:
        return Check(
            name,
            "warn",
            f"the URL's region is {region} but [{probe.side}.ews] region says {configured}",
            f"make them agree ([{probe.side}.ews] url wins)",
        )
    return Check(name, "ok", f"Amazon WorkMail in {region} (from {host})")


def concurrency_check(probe: SideProbe, access: str, mailboxes: int, in_flight: int) -> Check:
    """How many mailboxes a run opens at once on this side, and why."""
    name = f"{probe.side} concurrency"
    where = f"[{probe.side}.ews] mailboxes_at_once"
    if access == "delegation":
        plan = (
            f"delegation: {mailboxes} mailboxes at once, {in_flight} requests in flight, all "
            f"on {probe.project.tenant(probe.side).ews.admin}'s one throttling budget "
            f"(about {DELEGATION_ADVISED} advised; EwsMaxConcurrency 27 by default)"
        )
        if mailboxes > DELEGATION_ADVISED:
            return Check(
                name,
                "warn",
                plan + f": above the {DELEGATION_ADVISED} advised, expect ErrorServerBusy",
                f"lower {where} to {DELEGATION_ADVISED}, or use impersonation (a budget per "
                "mailbox)",
            )
        return Check(name, "ok", plan)
    return Check(
        name,
        "ok",
        f"{access}: {mailboxes} mailboxes at once, each on its own throttling budget, "
        f"{in_flight} requests in flight from this process",
    )


async def ews_side_checks(probe: SideProbe) -> list[Check]:
    """An Exchange or WorkMail side: endpoint (TLS), the admin's login, the access mode on
    sampled mailboxes of the batch, the server's version, WorkMail's region, the plan of
    mailboxes at once. Each line names addresses."""
    project, side = probe.project, probe.side
    tenant = project.tenant(side)
    settings, kind = tenant.ews, tenant.kind
    endpoint = ews_endpoint(settings, side, kind)
    limits = EwsLimits.for_access(settings.access, settings.mailboxes_at_once)
    out = [await check_ews_endpoint(probe, endpoint)]
    tail = [*EWS_KIND_CHECKS.get(kind, _no_more_checks)(probe, endpoint)]
    tail.append(concurrency_check(probe, settings.access, limits.mailboxes, limits.in_flight))
    if out[0].status == "fail":
        return out + tail  # nothing else reaches the server
    try:
        sign_in = EWS_SIGN_INS[settings.access](project, side, probe.env)
    except CoexistError as exc:
        out.append(Check(f"{side} credentials", "fail", exc.message, exc.next_step or ""))
        return out + tail
    if sign_in.logins is not None:
        # access "own": no admin to try; each user's own login is verify-credentials' check.
        out.append(
            Check(
                f"{side} credentials",
                "ok",
                'access "own": each user signs in to its own mailbox with its own password',
                f"coexist verify-credentials --project {project.directory} --batch B (and "
                "coexist credentials request for users without one)",
            )
        )
        return out + tail
    admin = sign_in.admin
    sample = _sample(probe, settings.access)
    made_later: list[str] = []
    if kind == "workmail" and tenant.workmail.enabled:
        # Users prestage creates in WorkMail (the admin API) have no mailbox yet: not a failure.
        api, made_later = await workmail_api_check(probe)
        out.append(api)
        sample = [a for a in sample if a not in made_later]
    if settings.powershell_url and kind == "exchange":
        out += await powershell_checks(probe, admin)
    first = sample[0] if sample else admin.login  # no users yet: the admin's own mailbox
    server = EwsServer(endpoint, admin, EwsLimits(1, 1, calls=2), retry=retry_policy(project))
    said: ServerVersion | None = None
    results: dict[str, CoexistError | None] = {}
    try:
        for address in sample or [first]:
            err, version = await _open(server, address)
            said = said or version
            results[address] = err
            if isinstance(err, AuthenticationError | TLSError | Unreachable):
                break  # the admin's login or the endpoint: every mailbox would say the same
    finally:
        await server.close()
    login = credentials_check(probe, admin.login, settings.auth, first, results[first])
    out.append(login)
    if login.status == "ok":
        if sample:
            out.append(access_check(probe, admin.login, settings.access, kind, results))
        elif made_later:
            out.append(
                Check(
                    f"{side} access",
                    "ok",
                    f"the batch's {len(made_later)} WorkMail users do not exist yet: prestage "
                    f"creates them and grants {admin.login} FULL_ACCESS",
                )
            )
        else:
            out.append(
                Check(
                    f"{side} access",
                    "warn",
                    f"no users selected: {settings.access} not tried on any mailbox",
                    f"coexist batch import FILE --project {project.directory}, then re-run "
                    "preflight",
                )
            )
        out.append(version_check(probe, said, settings.version, pinned_version(project, side)))
    return out + tail


async def powershell_checks(probe: SideProbe, admin: AdminLogin) -> list[Check]:
    """An Exchange side with remote PowerShell ([S.ews] powershell_url): the admin runs
    cmdlets there; at the source, no migrating mailbox forwards while keeping a local copy
    (DeliverToMailboxAndForward): mail it forwards to the new mailbox during the move would
    reach it twice, forwarded and then copied by the next delta pass (the seed's warning)."""
    side = probe.side
    tenant = probe.project.tenant(side)
    runner = powershell_runner(tenant, side, admin, None)
    if runner is None:
        return []
    name = f"{side} remote PowerShell"
    try:
        try:
            await runner.run("Get-AcceptedDomain")
        except CoexistError as exc:
            return [Check(name, "fail", exc.message, exc.next_step or "")]
        out = [
            Check(name, "ok", f"{admin.login} runs Exchange cmdlets at {tenant.ews.powershell_url}")
        ]
        if side != "source" or not probe.items:
            return out
        boxes: list[dict[str, Any]] = []
        for item in probe.items:
            try:
                boxes += await runner.run("Get-Mailbox", Identity=_address(item, side))
            except NotFound:
                continue  # the access check names mailboxes that cannot be opened
        kept = kept_copies(boxes)
        if not kept:
            out.append(
                Check(
                    f"{side} forwarding",
                    "ok",
                    f"none of the {len(boxes)} migrating mailboxes keeps a local copy while "
                    "forwarding",
                )
            )
            return out
        names = [str(b.get("PrimarySmtpAddress") or b.get("Name")) for b in kept]
        out.append(
            Check(
                f"{side} forwarding",
                "warn",
                f"{len(kept)} migrating mailbox(es) forward and keep a local copy "
                f"(DeliverToMailboxAndForward $true): mail forwarded to the new mailbox would "
                f"reach it twice, forwarded and then copied by a delta pass: {_listed_more(names)}",
                "Set-Mailbox -Identity <mailbox> -DeliverToMailboxAndForward $false before the "
                "next pass (coexist cutover sets it on the forward it makes)",
            )
        )
        return out
    finally:
        await runner.close()


async def workmail_api_check(probe: SideProbe) -> tuple[Check, list[str]]:
    """WorkMail's admin API ([S.workmail]): the key signs in, the organisation is active, the
    migration account is one of its users; and which of the batch's addresses prestage will
    create (no WorkMail user holds them yet)."""
    from coexist.engine.context import SideOptions, workmail_admin

    project, side = probe.project, probe.side
    name = f"{side} workmail api"
    try:
        api = workmail_admin(
            project, side, SideOptions(env=probe.env, read_retry=retry_policy(project))
        )
    except CoexistError as exc:
        return Check(name, "fail", exc.message, exc.next_step or ""), []
    assert api is not None
    try:
        org = await api.organization()
        users = await api.users()
    except CoexistError as exc:
        return Check(name, "fail", exc.message, exc.next_step or ""), []
    finally:
        await api.close()
    held = {str(u.get("Email") or "").lower() for u in users} - {""}
    names = {str(u.get("Name") or "").lower() for u in users}
    tenant = project.tenant(side)
    grantee = (tenant.workmail.migration_account or tenant.ews.admin or "").lower()
    missing = sorted({_address(i, side).lower() for i in probe.items} - held)
    detail = (
        f"organisation {org.get('OrganizationId')} ({org.get('DefaultMailDomain')}) is "
        f"{org.get('State')}; {len(missing)} of the batch's users to create"
    )
    if org.get("State") != "Active":
        return Check(name, "fail", detail, "wait until the organisation is Active"), missing
    if grantee not in held and grantee not in names:
        fix = (
            f"create the WorkMail user {grantee} (the EWS admin), or set [{side}.workmail] "
            "migration_account; then re-run preflight"
        )
        return Check(name, "fail", f"{detail}; no WorkMail user {grantee}", fix), missing
    return Check(name, "ok", f"{detail}; migration account {grantee}"), missing


def _no_more_checks(probe: SideProbe, endpoint: EwsEndpoint) -> list[Check]:
    return []


def _workmail_checks(probe: SideProbe, endpoint: EwsEndpoint) -> list[Check]:
    return [region_check(probe, endpoint.url, probe.project.tenant(probe.side).ews.region)]


# What one EWS kind checks beyond the EWS checks every kind runs.
EWS_KIND_CHECKS: dict[str, Callable[[SideProbe, EwsEndpoint], list[Check]]] = {
    "workmail": _workmail_checks,
}


async def graph_side_checks(probe: SideProbe) -> list[Check]:
    """A Microsoft 365 side beside an EWS side: the app's sign-in and the sampled users'
    mailboxes read through Graph, as `coexist verify-credentials` reads them."""
    from coexist.credcheck import GraphChecker  # credcheck imports commands, which imports us

    project, side = probe.project, probe.side
    items = probe.items[:DELEGATION_SAMPLE]
    async with TenantCredentials() as credentials:
        graph = GraphAdapter(project.endpoint(side), label=side,
                             read_retry=retry_policy(project), credentials=credentials)  # fmt: skip
        try:
            try:
                await graph.granted()
            except CoexistError as exc:
                return [Check(f"{side} graph sign-in", "fail", exc.message, exc.next_step or "")]
            out = [Check(f"{side} graph sign-in", "ok", f"the app signs in to the {side} tenant")]
            checker = GraphChecker(side, graph)
            failed = [r for r in [await checker.check(i) for i in items] if not r.ok]
        finally:
            await graph.close()
    if not items:
        out.append(Check(f"{side} mailboxes", "warn", "no users selected: no mailbox read"))
    elif failed:
        out.append(
            Check(
                f"{side} mailboxes",
                "fail",
                f"{len(failed)} of {len(items)} mailboxes checked cannot be read: "
                + "; ".join(
                    f"{r.mailbox or '(none)'}: {r.result} ({r.message})" for r in failed[:5]
                ),
                "; ".join(dict.fromkeys(r.next or "" for r in failed[:5] if r.next)),
            )
        )
    else:
        shown = _listed_more([_address(i, side) for i in items])
        out.append(Check(f"{side} mailboxes", "ok", f"{len(items)} mailboxes read: {shown}"))
    return out


# A side's own checks by its kind. A project runs them when both its kinds are here and it is
# not a pair with checks of its own (PAIR_KINDS); otherwise the session's checks (which
# refuse kinds they cannot serve, as before).
SIDE_CHECKS: dict[str, SideChecks] = {
    "exchange": ews_side_checks,
    "workmail": ews_side_checks,
    "m365": graph_side_checks,
}
# Pairs of kinds whose preflight is the tenant-pair checks run in a session.
PAIR_KINDS = frozenset({("m365", "m365")})


def by_side(project: Project) -> bool:
    """Whether this project's preflight is its sides' own checks (SIDE_CHECKS)."""
    kinds = (project.source.kind, project.target.kind)
    return kinds not in PAIR_KINDS and all(k in SIDE_CHECKS for k in kinds)


async def side_preflight(
    project: Project, items: list[dict[str, Any]], env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Each side's checks (source first); `ok` unless one fails."""
    checks: list[Check] = []
    for side in ("source", "target"):
        probe = SideProbe(project, side, items, env)
        checks += await SIDE_CHECKS[project.tenant(side).kind](probe)
    return {
        "ok": all(c.status != "fail" for c in checks),
        "checks": [c.to_dict() for c in checks],
        "users": len(items),
    }
