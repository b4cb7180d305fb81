"""Access grants for the migration account on an Exchange organisation (`coexist grant-access`).

The hosted-Exchange seed has the provider grant the migration account FullAccess on every
mailbox (`Add-MailboxPermission -AccessRights FullAccess`) or the ApplicationImpersonation
role. coexist grants FullAccess itself, per user of a batch, journaled like every other
step, where the organisation's remote PowerShell is configured.

What the published contract (`spec/exo-cmdlets.json`, on-premises parameter sets) lacks,
coexist does not send: it has Add-MailboxPermission and Get-MailboxPermission but neither
Remove-MailboxPermission nor New-/Get-/Remove-ManagementRoleAssignment. So revoking and the
impersonation role are printed for the operator to run (`manual_lines`) instead of sent.
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


def manual_lines(
    mailboxes: list[str], account: str, *, revoke: bool, impersonation: bool
) -> list[str]:
    """The cmdlets an operator runs where coexist may not (see the module docstring)."""
    if impersonation:
        if revoke:
            return [
                f"Get-ManagementRoleAssignment -RoleAssignee '{account}' -Role "
                "ApplicationImpersonation | Remove-ManagementRoleAssignment"
            ]
        return [
            "New-ManagementRoleAssignment -Name 'coexist impersonation' -Role "
            f"ApplicationImpersonation -User '{account}'"
        ]
    return [
        f"Remove-MailboxPermission -Identity '{m}' -User '{account}' -AccessRights FullAccess "
        "-InheritanceType All -Confirm:$false"
        for m in mailboxes
    ]
