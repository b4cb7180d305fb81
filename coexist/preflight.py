"""preflight: everything that would make a batch fail, checked before it runs.

Each check reads only, and says what to fix. A `fail` makes the command exit
non-zero; a `warn` is for the operator to judge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coexist.discovery.scope import find_scope_group, transitive_user_ids
from coexist.engine.context import Context, Side
from coexist.errors import CoexistError
from coexist.model import split_address
from coexist.permissions import needs, satisfied
from coexist.provisioning.index import TargetIndex
from coexist.provisioning.provision import source_of


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


async def check_permissions(ctx: Context, commands: list[str]) -> list[Check]:
    out: list[Check] = []
    granted: dict[tuple[str, str], dict[str, Any]] = {}
    no_token: set[tuple[str, str]] = set()
    for side in (ctx.source, ctx.target):
        for api, adapter in (("graph", side.graph), ("exchange", side.exo)):
            try:
                granted[(side.label, api)] = await adapter.granted()
            except CoexistError as exc:
                out.append(
                    Check(f"{side.label} {api} sign-in", "fail", exc.message, exc.next_step or "")
                )
                granted[(side.label, api)] = {}
                no_token.add((side.label, api))
    missing: dict[tuple[str, str], list[str]] = {}
    for command in commands:
        for need in needs(command):
            claims = granted[(need.tenant, need.api)]
            if not satisfied(need, set(claims.get("roles") or []), set(claims.get("wids") or [])):
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
                        "grant them to the app (coexist permissions lists them), then re-run",
                    )
                )
            elif granted[(label, api)]:
                out.append(Check(f"{label} {api} permissions", "ok", "granted"))
    return out


async def check_scope(ctx: Context) -> list[Check]:
    name = ctx.project.scope.group
    if not name:
        return [Check("scope", "ok", "all user mailboxes of the source")]
    try:
        group = await find_scope_group(ctx.source.graph, name)
    except CoexistError as exc:
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


async def check_domains(ctx: Context) -> list[Check]:
    out = []
    dest = ctx.project.domains.destination_domain.lower()
    target_domains = {
        str(d.get("DomainName")).lower() for d in await ctx.target.exo.run("Get-AcceptedDomain")
    }
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
        source_domains = {
            str(d.get("DomainName")).lower() for d in await ctx.source.exo.run("Get-AcceptedDomain")
        }
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


async def auto_forwarding(side: Side) -> tuple[bool, str]:
    """Whether mailbox forwarding to another organization leaves this tenant.

    The outbound spam policy's AutoForwardingMode `Automatic` means Off, and
    `Off` blocks it with NDR 550 5.7.520; the remote domain's AutoForwardEnabled
    also gates it (learn.microsoft.com, outbound-spam-policies-external-email-forwarding).
    """
    policies = await side.exo.run("Get-HostedOutboundSpamFilterPolicy")
    default = next((p for p in policies if p.get("IsDefault") or p.get("Name") == "Default"), None)
    mode = str((default or {}).get("AutoForwardingMode", "Automatic"))
    remote = await side.exo.run("Get-RemoteDomain")
    star = next((r for r in remote if str(r.get("DomainName")) == "*"), None)
    remote_ok = bool((star or {}).get("AutoForwardEnabled", True))
    if mode != "On":
        return (
            False,
            f"outbound spam policy AutoForwardingMode is {mode} (external forwarding blocked, NDR 550 5.7.520)",
        )
    if not remote_ok:
        return False, "remote domain Default (*) has AutoForwardEnabled false"
    return True, "AutoForwardingMode On and the Default remote domain allows auto-forwarding"


async def check_forwarding(ctx: Context) -> list[Check]:
    out = []
    wants = []
    if ctx.project.cutover.mode == "forward-on-source":
        wants.append(
            (ctx.source, "cutover forward-on-source forwards the source mailbox to the target")
        )
    if ctx.project.prestage.convert:
        wants.append((ctx.target, "pre-stage forwards each new target mailbox back to the source"))
    for side, why in wants:
        ok, detail = await auto_forwarding(side)
        out.append(
            Check(
                f"{side.label} auto-forwarding",
                "ok" if ok else "fail",
                detail,
                ""
                if ok
                else (
                    f"in the {side.label} tenant set the outbound spam policy AutoForwardingMode to On "
                    f"(a custom policy scoped to the migrating users is enough) and allow "
                    f"auto-forwarding on the remote domain; needed because {why}"
                ),
            )
        )
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


def check_conflicts(index: TargetIndex, ctx: Context, batch: list[dict[str, Any]]) -> list[Check]:
    dest = ctx.project.domains.destination_domain.lower()
    taken = []
    for item in batch:
        if item.get("target_id"):
            continue
        local = split_address(source_of(item).primary_smtp)[0]
        owner = index.owner(f"{local}@{dest}")
        if owner is not None:
            taken.append(f"{local}@{dest} ({owner.get('Name')})")
    if not taken:
        return [Check("name conflicts", "ok", "no planned address is taken in the target")]
    mode = ctx.project.mail_users.mode
    what = "will get a numeric suffix" if mode == "create" else "will be matched"
    return [
        Check(
            "name conflicts",
            "warn",
            f"{len(taken)} addresses taken ({what}): " + "; ".join(taken[:5]),
        )
    ]
