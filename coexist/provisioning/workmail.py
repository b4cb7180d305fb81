"""Amazon WorkMail targets: each batch user made in WorkMail, and the migration account let in.

audriga's WorkMail guide has the operator create every WorkMail user and grant the migration
account mailbox permissions by hand in the console (FACTS.md "Amazon WorkMail"). With
`[target.workmail] organization_id` set, prestage does both through WorkMail's API
(`tenants.workmail`), before each user's data pass, as two steps per user:

- `workmail.user`: the user exists (CreateUser: name, display name, first/last name, an
  initial password from the credential vault), is registered to WorkMail with its primary
  address (RegisterToWorkMail: the mailbox is made), and holds its aliases (CreateAlias).
- `workmail.access`: the migration account (`[target.workmail] migration_account`, else
  `[target.ews] admin`) holds FULL_ACCESS on the mailbox (PutMailboxPermissions, which
  replaces the grantee's set: the values it held already are kept).

Both observe first and change only what differs (a user the operator made by hand is taken
as it is). The initial password is the vault's for the user (a batch file's Destination
Password, `coexist credentials set --side target`), else one is generated and put in the
vault before CreateUser, so a re-run after a crash sends the same one.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coexist.engine.context import Context
from coexist.engine.step import Step, StepResult, registry
from coexist.errors import Conflict, InputError, NotFound
from coexist.tenants.workmail import FULL_ACCESS, PLANNED_ID, WorkMailAdmin
from coexist.vault import Credential, Vault

SIDE = "target"
# WorkMail user names: at most 64 characters of [\w\-.] (botocore's model, UserName).
NAME_CHARS = set(string.ascii_letters + string.digits + "_-.")


def admin(ctx: Context) -> WorkMailAdmin:
    found = ctx.target.workmail
    if found is None and ctx.target.workmail_missing is not None:
        raise ctx.target.workmail_missing
    if found is None:
        raise InputError(
            "the target's WorkMail admin API is not configured",
            next_step="set organization_id (and region, access_key_id) in [target.workmail]",
        )
    return found


def user_name(address: str) -> str:
    """The WorkMail user name for a primary address: its local part, as the model admits."""
    local = address.split("@", 1)[0]
    return "".join(c if c in NAME_CHARS else "-" for c in local)[:64] or "user"


@dataclass(frozen=True)
class WorkMailUserStep(Step):
    """The user exists in WorkMail, registered with `email`, holding `aliases`."""

    name = "workmail.user"

    user: str  # the source address, as the operator reads it
    email: str
    user_name: str
    display_name: str
    first_name: str | None = None
    last_name: str | None = None
    aliases: tuple[str, ...] = ()


@registry.register(WorkMailUserStep)
class WorkMailUserExecutor:
    async def observe(self, ctx: Context, step: WorkMailUserStep) -> dict[str, Any]:
        api = admin(ctx)
        found = await api.find_user(step.email, step.user_name)
        aliases: list[str] = []
        if found is not None and found.get("State") == "ENABLED":
            aliases = await api.aliases(str(found["Id"]))
        return {"user": found, "aliases": aliases}

    async def apply(
        self, ctx: Context, step: WorkMailUserStep, observed: dict[str, Any]
    ) -> StepResult:
        api = admin(ctx)
        found = observed["user"]
        before = _state(found, observed["aliases"])
        changed: list[str] = []
        if found is not None and found.get("Email") and found["Email"].lower() != step.email:
            raise Conflict(
                f"WorkMail user {found.get('Name')} holds {found['Email']}, not {step.email}",
                service="workmail",
                next_step=f"give {step.user} another target address in the batch file, or "
                f"change the WorkMail user {found.get('Name')} in the console",
            )
        if found is None:
            created = await api.call(
                "CreateUser",
                Name=step.user_name,
                DisplayName=step.display_name,
                Password=_initial_password(ctx, step),
                **({"FirstName": step.first_name} if step.first_name else {}),
                **({"LastName": step.last_name} if step.last_name else {}),
            )
            found = {"Id": created["UserId"], "Name": step.user_name, "State": "DISABLED"}
            changed.append("created")
        uid = str(found["Id"])
        if found.get("State") != "ENABLED":
            await api.call("RegisterToWorkMail", EntityId=uid, Email=step.email)
            changed.append("registered")
        have = set(observed["aliases"])
        for alias in step.aliases:
            if alias not in have:
                await api.call("CreateAlias", EntityId=uid, Alias=alias)
                changed.append(f"alias {alias}")
        after = {"UserId": uid, "Email": step.email, "State": "ENABLED"}
        after["Aliases"] = sorted(have | set(step.aliases))  # type: ignore[assignment]
        detail = (
            f"WorkMail user {step.email}: " + ", ".join(changed)
            if changed
            else f"WorkMail user {step.email} is there"
        )
        data = {"target_address": step.email}
        if uid != PLANNED_ID:
            data["workmail_user_id"] = uid
        return StepResult(bool(changed), before, after, detail, data=data)


def _state(found: dict[str, Any] | None, aliases: list[str]) -> dict[str, Any] | None:
    if found is None:
        return None
    return {
        "UserId": found.get("Id"),
        "Email": found.get("Email"),
        "State": found.get("State"),
        "Aliases": sorted(aliases),
    }


def _initial_password(ctx: Context, step: WorkMailUserStep) -> str:
    """The user's initial WorkMail password: the vault's (target side), else a new one put in
    the vault first, so every attempt sends the same. A plan sends none (it is redacted in
    the plan): the vault is not opened."""
    if ctx.planning:
        return "planned-password"
    vault = Vault.open(Path(ctx.project.directory))
    held = vault.get(step.subject, SIDE)
    if held is not None:
        return held.password
    # 20 characters over upper, lower, digits and punctuation: any password policy's classes.
    alphabet = string.ascii_letters + string.digits
    body = "".join(secrets.choice(alphabet) for _ in range(16))
    password = f"{body}-{secrets.choice(string.ascii_uppercase)}{secrets.randbelow(10)}a"
    vault.put({(step.subject, SIDE): Credential(step.email, password)})
    return password


@dataclass(frozen=True)
class WorkMailAccessStep(Step):
    """`grantee` (the migration account) holds FULL_ACCESS on the mailbox of `email`."""

    name = "workmail.access"

    user: str
    email: str
    grantee: str


@registry.register(WorkMailAccessStep)
class WorkMailAccessExecutor:
    async def observe(self, ctx: Context, step: WorkMailAccessStep) -> dict[str, Any]:
        api = admin(ctx)
        grantee = await api.find_user(step.grantee)
        if grantee is None:
            raise NotFound(
                f"the migration account {step.grantee} is not a user of the WorkMail organisation",
                service="workmail",
                next_step="create it in WorkMail (the EWS admin login), or set "
                "[target.workmail] migration_account to the user's email",
            )
        mailbox = await api.find_user(step.email)
        held: list[str] = []
        if mailbox is not None and mailbox.get("State") == "ENABLED":
            for p in await api.permissions(str(mailbox["Id"])):
                if p.get("GranteeId") == grantee["Id"]:
                    held = sorted(p.get("PermissionValues") or [])
        return {"grantee": grantee, "mailbox": mailbox, "held": held}

    async def apply(
        self, ctx: Context, step: WorkMailAccessStep, observed: dict[str, Any]
    ) -> StepResult:
        held: list[str] = observed["held"]
        before = {"grantee": step.grantee, "PermissionValues": held}
        if FULL_ACCESS in held:
            return StepResult(False, before, before, f"{step.grantee} has full access")
        mailbox = observed["mailbox"]
        if mailbox is None and not ctx.planning:
            raise NotFound(
                f"no WorkMail user {step.email} yet",
                service="workmail",
                next_step=f"coexist prestage --users {step.user}  (creates it first)",
            )
        # In plan mode the user may exist only in the plan: it is named by its address.
        entity = str(mailbox["Id"]) if mailbox is not None else step.email
        # A plan names the grantee by its address too (the plan's lines are read by people;
        # the API takes an email for GranteeId as for EntityId: AWS CLI reference,
        # workmail put-mailbox-permissions); a real run sends the id it read.
        grantee = step.grantee if ctx.planning else str(observed["grantee"]["Id"])
        values = sorted({*held, FULL_ACCESS})
        await admin(ctx).call(
            "PutMailboxPermissions",
            EntityId=entity,
            GranteeId=grantee,
            PermissionValues=values,
        )
        after = {"grantee": step.grantee, "PermissionValues": values}
        return StepResult(True, before, after, f"{step.grantee} granted full access")


def workmail_steps(ctx: Context, item: dict[str, Any]) -> list[Step]:
    """A batch user's WorkMail steps (none where the target's API is not configured)."""
    settings = ctx.project.target
    if settings.kind != "workmail" or not settings.workmail.enabled:
        return []
    address = str(item.get("target_address") or "").lower()
    source = str(item.get("source_address") or item["key"])
    if not address:
        raise InputError(
            f"{source} has no target address: WorkMail needs the user's primary address",
            next_step="give the Destination Email in the batch file (coexist batch import)",
        )
    detail = item.get("detail") or {}
    src = detail.get("source") or {}
    domain = address.rsplit("@", 1)[-1]
    # Aliases: the user's other addresses of the same domain (a discovered source's proxies).
    known = [source, *(src.get("smtp_addresses") or [])]
    aliases = tuple(
        sorted({a.lower() for a in known if a.lower().endswith("@" + domain)} - {address})
    )
    wm = ctx.project.target.workmail
    grantee = wm.migration_account or ctx.project.target.ews.admin
    display = str(src.get("display_name") or item.get("name") or source)
    steps: list[Step] = [
        WorkMailUserStep(
            subject=item["key"],
            user=source,
            email=address,
            user_name=user_name(address),
            display_name=display,
            first_name=src.get("first_name") or None,
            last_name=src.get("last_name") or None,
            aliases=aliases,
        )
    ]
    if grantee:
        steps.append(
            WorkMailAccessStep(subject=item["key"], user=source, email=address, grantee=grantee)
        )
    return steps
