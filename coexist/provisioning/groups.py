"""Groups: copy the selected kinds from source to target with their members mapped.

Distribution lists and mail-enabled security groups need Exchange cmdlets
(Graph cannot create them), dynamic distribution groups are Exchange-only and
copied with their recipient filter, plain security groups are created through
Graph (FACTS.md). Groups are independent of the user scope and never removed by
rediscovery. Members are added, never removed: a member the target does not
have yet (not provisioned, or outside the scope) is reported and the group
waits, so running `coexist groups` again after more users are provisioned
completes it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from coexist.engine.context import Context, Side
from coexist.engine.step import Step, StepResult, registry
from coexist.errors import NotFound, NotReady, TransientError
from coexist.model import GroupCopy, ascii_alias, exchange_name, free_address, proxies_of
from coexist.tenants.exo import hashtable

from .exchange import find_one, has_proxy, object_id
from .index import TargetIndex

KIND_OF_RECIPIENT = {
    "MailUniversalDistributionGroup": "distribution",
    "MailUniversalSecurityGroup": "mail-security",
}
MARKER = "coexist: copy of source group "


async def source_groups(source: Side, kinds: tuple[str, ...]) -> list[GroupCopy]:
    """The source groups of the selected kinds, with their direct members."""
    out: list[GroupCopy] = []
    if {"distribution", "mail-security"} & set(kinds):
        for g in await source.exo.run("Get-DistributionGroup", ResultSize="Unlimited"):
            kind = KIND_OF_RECIPIENT.get(str(g.get("RecipientTypeDetails")))
            if kind not in kinds:
                continue
            members = await source.exo.run(
                "Get-DistributionGroupMember", Identity=object_id(g), ResultSize="Unlimited"
            )
            out.append(_from_exchange(g, kind, tuple(sorted(object_id(m) for m in members))))
    if "dynamic" in kinds:
        for g in await source.exo.run("Get-DynamicDistributionGroup", ResultSize="Unlimited"):
            out.append(_from_exchange(g, "dynamic", ()))
    if "security" in kinds:
        groups = await source.graph.list_all(
            "groups",
            {
                "$select": "id,displayName,mailEnabled,securityEnabled,mailNickname,groupTypes",
                "$top": "999",
            },
        )
        for g in groups:
            if g.get("securityEnabled") and not g.get("mailEnabled") and not g.get("groupTypes"):
                members = await source.graph.list_all(
                    f"groups/{g['id']}/members", {"$select": "id", "$top": "999"}
                )
                out.append(
                    GroupCopy(
                        id=g["id"],
                        kind="security",
                        display_name=g["displayName"],
                        name=g["displayName"],
                        alias=g.get("mailNickname"),
                        primary_smtp=None,
                        members=tuple(sorted(m["id"] for m in members)),
                    )
                )
    return sorted(out, key=lambda g: (g.kind, g.display_name.lower(), g.id))


def _from_exchange(g: dict[str, Any], kind: str, members: tuple[str, ...]) -> GroupCopy:
    return GroupCopy(
        id=object_id(g),
        kind=kind,
        display_name=str(g.get("DisplayName") or g.get("Name")),
        name=str(g.get("Name")),
        alias=g.get("Alias"),
        primary_smtp=g.get("PrimarySmtpAddress"),
        email_addresses=tuple(g.get("EmailAddresses") or ()),
        legacy_exchange_dn=g.get("LegacyExchangeDN"),
        members=members,
        recipient_filter=g.get("RecipientFilter"),
        included_recipients=g.get("IncludedRecipients"),
    )


@dataclass(frozen=True)
class GroupStep(Step):
    """A copy of one source group exists in the target (members handled separately)."""

    name = "groups.group"
    item_kind = "group"

    kind: str
    target_name: str
    display_name: str
    alias: str
    primary_smtp: str | None
    x500: tuple[str, ...] = ()
    recipient_filter: str | None = None
    included_recipients: str | None = None


def plan_group(g: GroupCopy, index: TargetIndex, destination_domain: str) -> GroupStep:
    alias = ascii_alias(g.alias or g.name)
    primary = None
    if g.kind != "security":
        primary = free_address(alias, destination_domain, lambda a: index.address_taken(a, g.id))
        alias = primary.split("@")[0]
    name = exchange_name(g.name, lambda n: index.name_taken(n, g.id))
    index.reserve(g.id, address=primary or f"{alias}@group.invalid", name=name)
    x500 = []
    if g.legacy_exchange_dn:
        x500.append(f"X500:{g.legacy_exchange_dn}")
    x500 += [f"X500:{x}" for x in proxies_of(g.email_addresses, "x500")]
    return GroupStep(
        subject=g.id,
        kind=g.kind,
        target_name=name,
        display_name=g.display_name,
        alias=alias,
        primary_smtp=primary,
        x500=tuple(x500),
        recipient_filter=g.recipient_filter,
        included_recipients=g.included_recipients,
    )


GET_CMDLET = {
    "distribution": "Get-DistributionGroup",
    "mail-security": "Get-DistributionGroup",
    "dynamic": "Get-DynamicDistributionGroup",
}


@registry.register(GroupStep)
class GroupExecutor:
    async def observe(self, ctx: Context, step: GroupStep) -> dict[str, Any] | None:
        item = ctx.journal.get_item("group", step.subject) or {}
        if step.kind == "security":
            return await self._find_security(ctx, step, item.get("target_id"))
        cmdlet = GET_CMDLET[step.kind]
        for ident in (item.get("target_id"), step.primary_smtp):
            if ident:
                found = await find_one(ctx.target.exo, cmdlet, ident)
                if found is not None and (
                    ident == item.get("target_id") or found.get("DisplayName") == step.display_name
                ):
                    return found
        return None

    async def _find_security(
        self, ctx: Context, step: GroupStep, target: str | None
    ) -> dict[str, Any] | None:
        graph = ctx.target.graph
        if target:
            try:
                found: dict[str, Any] = await graph.send("GET", f"groups/{target}")
                return found
            except NotFound:
                pass
        # The marker in the description is written by the create call itself, so a
        # crash right after creation is recognised on the next run.
        esc = step.display_name.replace("'", "''")
        candidates = await graph.list_all(
            "groups",
            {"$filter": f"displayName eq '{esc}'", "$select": "id,displayName,description"},
        )
        for g in candidates:
            if (g.get("description") or "").endswith(MARKER + step.subject):
                return g
        return None

    async def apply(
        self, ctx: Context, step: GroupStep, observed: dict[str, Any] | None
    ) -> StepResult:
        if observed is not None:
            return await self._update(ctx, step, observed)
        if step.kind == "security":
            created = await ctx.target.graph.send(
                "POST",
                "groups",
                json={
                    "displayName": step.display_name,
                    "mailEnabled": False,
                    "securityEnabled": True,
                    "mailNickname": step.alias,
                    "description": MARKER + step.subject,
                },
            )
            if ctx.planning or not created:
                return StepResult(
                    True, None, {"planned": step.display_name}, "would create security group"
                )
            return StepResult(
                True,
                None,
                {"id": created["id"]},
                "created security group",
                data={"target_id": created["id"], "target_address": None},
            )
        exo = ctx.target.exo
        if step.kind == "dynamic":
            params: dict[str, Any] = {
                "Name": step.target_name,
                "DisplayName": step.display_name,
                "Alias": step.alias,
                "PrimarySmtpAddress": step.primary_smtp,
            }
            if step.recipient_filter:
                params["RecipientFilter"] = step.recipient_filter
            else:
                params["IncludedRecipients"] = step.included_recipients or "AllRecipients"
            created_list = await exo.run("New-DynamicDistributionGroup", **params)
        else:
            created_list = await exo.run(
                "New-DistributionGroup",
                Name=step.target_name,
                DisplayName=step.display_name,
                Alias=step.alias,
                PrimarySmtpAddress=step.primary_smtp,
                Type="Security" if step.kind == "mail-security" else "Distribution",
            )
        if ctx.planning or not created_list:
            return StepResult(
                True, None, {"planned": step.primary_smtp}, f"would create {step.kind} group"
            )
        created_obj = created_list[0]
        if step.x500 and step.kind != "dynamic":
            await exo.run(
                "Set-DistributionGroup",
                Identity=object_id(created_obj),
                EmailAddresses=hashtable(add=list(step.x500)),
            )
        return StepResult(
            True,
            None,
            _group_state(created_obj),
            f"created {step.kind} group",
            data=_data(created_obj),
        )

    async def _update(self, ctx: Context, step: GroupStep, obj: dict[str, Any]) -> StepResult:
        if step.kind in ("security", "dynamic"):
            data = {"target_id": obj.get("id") or object_id(obj)}
            return StepResult(
                False, _group_state(obj), _group_state(obj), "group exists", data=data
            )
        missing = [x for x in step.x500 if not has_proxy(obj, x)]
        if not missing:
            return StepResult(
                False, _group_state(obj), _group_state(obj), "group exists", data=_data(obj)
            )
        await ctx.target.exo.run(
            "Set-DistributionGroup", Identity=object_id(obj), EmailAddresses=hashtable(add=missing)
        )
        return StepResult(
            True,
            _group_state(obj),
            {**(_group_state(obj) or {}), "added": missing},
            "added X500 proxies",
            data=_data(obj),
        )


def _group_state(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    if not obj:
        return None
    return {
        "Identity": obj.get("id") or object_id(obj),
        "Name": obj.get("Name") or obj.get("displayName"),
        "PrimarySmtpAddress": obj.get("PrimarySmtpAddress"),
        "EmailAddresses": sorted(obj.get("EmailAddresses") or []),
    }


def _data(obj: dict[str, Any]) -> dict[str, Any]:
    return {"target_id": object_id(obj), "target_address": obj.get("PrimarySmtpAddress")}


@dataclass(frozen=True)
class GroupMembersStep(Step):
    """Every source member that exists in the target is a member of the target copy."""

    name = "groups.members"
    item_kind = "group"

    kind: str
    members: tuple[str, ...]  # source object ids


# ctx.cache key: source ids of the groups this run copies (set by the `groups` command).
COPIED_GROUPS = "groups_copied"


def map_member(ctx: Context, source_id: str) -> str | None:
    for kind in ("user", "group"):
        item = ctx.journal.get_item(kind, source_id)
        if item and item.get("target_id"):
            return str(item["target_id"])
    if ctx.planning and source_id in ctx.cache.get(COPIED_GROUPS, ()):
        # A nested group this run would create: the real run adds it once it exists.
        return f"<the new copy of group {source_id}>"
    return None


# Why a security group copy waits, as `coexist status` shows it.
MEMBER_REPLICATING = "a new member is not in Graph yet (directory replication from Exchange)"


async def _add_graph_member(ctx: Context, group: str, member: str) -> None:
    """Add one member through Graph; a member Exchange created minutes ago is not there yet."""
    try:
        await ctx.target.graph.send(
            "POST",
            f"groups/{group}/members/$ref",
            json={"@odata.id": f"{ctx.target.graph.base}/directoryObjects/{member}"},
        )
    except NotFound as exc:
        # Members are journaled target objects, many made through Exchange (MailUsers,
        # mail-enabled groups): Graph knows them only after directory replication, which
        # takes minutes (FACTS.md). The group waits and is looked at again.
        raise NotReady(
            f"member {member} of target group {group} is not in Graph yet: {exc.message}",
            reason=MEMBER_REPLICATING,
            service="graph",
        ) from exc


@registry.register(GroupMembersStep)
class GroupMembersExecutor:
    async def observe(self, ctx: Context, step: GroupMembersStep) -> set[str]:
        item = ctx.journal.get_item("group", step.subject) or {}
        target = item.get("target_id")
        if not target:
            return set()
        if step.kind == "security":
            try:
                members = await ctx.target.graph.list_all(
                    f"groups/{target}/members", {"$select": "id"}
                )
            except NotFound as exc:
                # The group was created through Graph moments ago (its id is journaled):
                # new objects may 404 for seconds during directory replication
                # (FACTS.md), so this is retried like throttling, not a failure.
                # Named as operators know it; the id is in the journal and -v.
                name = item.get("name") or "the target copy"
                raise TransientError(
                    f"target group {name} is not visible in Graph yet (replication)",
                    service="graph",
                    retry_after=2.0,
                ) from exc
            return {m["id"].lower() for m in members}
        members = await ctx.target.exo.run(
            "Get-DistributionGroupMember", Identity=target, ResultSize="Unlimited"
        )
        return {object_id(m).lower() for m in members}

    async def apply(self, ctx: Context, step: GroupMembersStep, observed: set[str]) -> StepResult:
        item = ctx.journal.get_item("group", step.subject) or {}
        target = item.get("target_id")
        mapped = {s: map_member(ctx, s) for s in step.members}
        unmapped = sorted(s for s, t in mapped.items() if t is None)
        wanted = sorted({t.lower() for t in mapped.values() if t})
        missing = [t for t in wanted if t not in observed]
        if target is None and ctx.planning:
            # The copy is only planned: list each member write against it all the same, so
            # the plan shows every write the real run makes (as the source contact does).
            target = "<the new target group>"
        for member in missing:
            if step.kind == "security":
                await _add_graph_member(ctx, str(target), member)
            else:
                await ctx.target.exo.run(
                    "Add-DistributionGroupMember",
                    Identity=target,
                    Member=member,
                    BypassSecurityGroupManagerCheck=True,
                )
        before = {"members": sorted(observed)}
        after = {"members": sorted(set(observed) | set(missing))}
        detail = f"added {len(missing)} members" if missing else "members up to date"
        if unmapped:
            # A waiting text names only what is awaited, not what this run added: an
            # unchanged re-run must report the same outcome, so the runner leaves the
            # journal alone (before/after already show what was added).
            return StepResult(
                bool(missing),
                before,
                after,
                f"{len(unmapped)} members not in the target yet",
                status="waiting",
                data={"unmapped_members": unmapped},
            )
        return StepResult(bool(missing), before, after, detail, data={"unmapped_members": []})


def group_steps(g: GroupCopy, plan: GroupStep) -> list[Step]:
    steps: list[Step] = [plan]
    if g.kind != "dynamic":
        steps.append(GroupMembersStep(subject=g.id, kind=g.kind, members=g.members))
    return steps


def group_plan_record(step: GroupStep) -> dict[str, Any]:
    d = asdict(step)
    d["x500"] = list(step.x500)
    return d
