"""Access grants for the migration account on an Exchange organisation (`coexist grant-access`).

The hosted-Exchange seed has the provider grant the migration account FullAccess on every
mailbox (`Add-MailboxPermission -AccessRights FullAccess`, delegation) or the
ApplicationImpersonation role (`New-ManagementRoleAssignment`, impersonation). coexist makes
these grants itself over the organisation's remote PowerShell, journaled like every other
step (per user for FullAccess, once per organisation for the role), and takes them away
again with `--revoke` (Remove-MailboxPermission; Remove-ManagementRoleAssignment of the
assignment coexist named, never one the provider made).

The role-assignment cmdlets and Remove-MailboxPermission are not in the shared contract
file (spec/exo-cmdlets.json, 31 cmdlets); their on-premises parameter sets come from the
same Microsoft docs commit, in coexist/data/exo-cmdlets-rbac.json
(tools/extract_cmdlet_pages.py), and plan mode and the sandbox check calls against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coexist.engine.context import Context
from coexist.engine.step import Step, StepResult, registry
from coexist.errors import NotFound

FULL_ACCESS = "FullAccess"


def _rights(row: dict[str, Any]) -> set[str]:
    """AccessRights as a set: a list in the object, or "{FullAccess, ReadPermission}" as
    PowerShell prints a multi-valued enum when it is serialised as a string."""
    value = row.get("AccessRights")
    if isinstance(value, str):
        parts = value.strip("{}").split(",")
    else:
        parts = [str(v) for v in value or ()]
    return {p.strip() for p in parts if p.strip()}


def has_full_access(rows: list[dict[str, Any]]) -> bool:
    """Whether Get-MailboxPermission rows grant FullAccess (an explicit Deny wins)."""
    allowed = [r for r in rows if FULL_ACCESS in _rights(r)]
    return bool(allowed) and not any(r.get("Deny") in (True, "True", "true") for r in allowed)


def mailbox_of(item: dict[str, Any], side: str) -> str:
    """The user's mailbox on `side`: the source address, or the target address."""
    if side == "target":
        return str(item.get("target_address") or item["key"])
    return str(item.get("source_address") or item["key"])


@dataclass(frozen=True)
class FullAccessStep(Step):
    """The side's migration account holds FullAccess on the user's mailbox there."""

    name = "grant.full-access"

    side: str  # "source" | "target"
    mailbox: str
    account: str

    @property
    def key(self) -> str:
        return f"{self.name}.{self.side}:{self.subject}"


@registry.register(FullAccessStep)
class FullAccessExecutor:
    async def observe(self, ctx: Context, step: FullAccessStep) -> list[dict[str, Any]] | None:
        try:
            return await ctx.side(step.side).cmdlets.run(
                "Get-MailboxPermission", Identity=step.mailbox, User=step.account
            )
        except NotFound:
            return []

    async def apply(
        self, ctx: Context, step: FullAccessStep, observed: list[dict[str, Any]] | None
    ) -> StepResult:
        rows = observed or []
        before = {"FullAccess": has_full_access(rows)}
        if before["FullAccess"]:
            return StepResult(False, before, before, f"{step.account} has FullAccess")
        await ctx.side(step.side).cmdlets.run(
            "Add-MailboxPermission",
            Identity=step.mailbox,
            User=step.account,
            AccessRights=[FULL_ACCESS],
            InheritanceType="All",
            # No Outlook auto-mapping: the migration account must not open every mailbox
            # it was granted in its own Outlook profile.
            AutoMapping=False,
        )
        return StepResult(True, before, {"FullAccess": True}, f"{step.account} granted FullAccess")


@dataclass(frozen=True)
class FullAccessRevokedStep(Step):
    """The side's migration account no longer holds FullAccess on the user's mailbox."""

    name = "grant.full-access-revoked"

    side: str
    mailbox: str
    account: str

    @property
    def key(self) -> str:
        return f"{self.name}.{self.side}:{self.subject}"


@registry.register(FullAccessRevokedStep)
class FullAccessRevokedExecutor(FullAccessExecutor):
    async def apply(  # type: ignore[override]
        self, ctx: Context, step: FullAccessRevokedStep, observed: list[dict[str, Any]] | None
    ) -> StepResult:
        before = {"FullAccess": has_full_access(observed or [])}
        if not before["FullAccess"]:
            return StepResult(False, before, before, f"{step.account} holds no FullAccess")
        await ctx.side(step.side).cmdlets.run(
            "Remove-MailboxPermission",
            Identity=step.mailbox,
            User=step.account,
            AccessRights=[FULL_ACCESS],
            InheritanceType="All",
            # Remove-* asks for confirmation; a remote runspace has no one to answer it.
            Confirm=False,
        )
        return StepResult(
            True, before, {"FullAccess": False}, f"{step.account}'s FullAccess removed"
        )


IMPERSONATION = "ApplicationImpersonation"


def assignment_name(account: str) -> str:
    """The name coexist gives its role assignment, so that revoking removes only its own."""
    return f"coexist-impersonation-{account.split('@')[0].split(chr(92))[-1]}"[:64]


@dataclass(frozen=True)
class ImpersonationStep(Step):
    """The side's migration account holds ApplicationImpersonation (or, `revoke`, does not
    hold coexist's assignment of it). One per side: the item is the organisation."""

    name = "grant.impersonation"
    item_kind = "organisation"

    side: str
    account: str
    revoke: bool = False

    @property
    def key(self) -> str:
        return f"{self.name}{'-revoked' if self.revoke else ''}.{self.side}:{self.subject}"


@registry.register(ImpersonationStep)
class ImpersonationExecutor:
    async def observe(self, ctx: Context, step: ImpersonationStep) -> list[dict[str, Any]]:
        try:
            return await ctx.side(step.side).cmdlets.run(
                "Get-ManagementRoleAssignment", RoleAssignee=step.account, Role=IMPERSONATION
            )
        except NotFound:
            return []

    async def apply(
        self, ctx: Context, step: ImpersonationStep, observed: list[dict[str, Any]]
    ) -> StepResult:
        names = sorted(str(r.get("Name") or r.get("Identity")) for r in observed)
        before = {"assignments": names}
        run = ctx.side(step.side).cmdlets.run
        if step.revoke:
            ours = [n for n in names if n.lower() == assignment_name(step.account).lower()]
            if not ours:
                # An assignment coexist did not make (the provider's) is left alone.
                return StepResult(False, before, before, "no impersonation assignment of coexist's")
            await run("Remove-ManagementRoleAssignment", Identity=ours[0], Confirm=False)
            after = {"assignments": [n for n in names if n not in ours]}
            return StepResult(True, before, after, f"{ours[0]} removed")
        if names:
            return StepResult(False, before, before, f"{step.account} holds {IMPERSONATION}")
        name = assignment_name(step.account)
        await run("New-ManagementRoleAssignment", Name=name, Role=IMPERSONATION, User=step.account)
        return StepResult(True, before, {"assignments": [name]}, f"{name} created")
