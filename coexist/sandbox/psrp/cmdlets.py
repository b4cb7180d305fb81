"""The cmdlets of the remote PowerShell face: on-premises binding, dispatch, error records.

Recipient semantics are the Exchange Online face's (`sandbox/exo`: the same handlers run on
the same directory); what differs on-premises lives here: binding against the on-premises
parameter sets (`exospec`, plane "onprem": an Exchange-Online-only parameter does not
exist), NoLanguage (a script is refused), RBAC by account, the grants the EWS face checks
(Add-MailboxPermission FullAccess, ApplicationImpersonation), and errors as PowerShell
ErrorRecords with Exchange's FullyQualifiedErrorId and category.

Error shapes (public captures; the rest is in UNVERIFIED):
- a cmdlet error, e.g. an object not found, is a non-terminating error: "CategoryInfo:
  NotSpecified: (:) [Update-GlobalAddressList], ManagementObjectNotFoundException",
  "FullyQualifiedErrorId: [Server=NP3RVWMSXX470,RequestId=<guid>,TimeStamp=17/12/2015
  09:17:09] [FailureCategory=Cmdlet-ManagementObjectNotFoundException]
  4B953CE,Microsoft.Exchange.Management.SystemConfigurationTasks.UpdateGlobalAddressList"
  (a 2015 Exchange transcript);
- a binding failure is PowerShell's own: ParameterBindingException, category
  InvalidArgument, ids NamedParameterNotFound / MissingMandatoryParameter /
  AmbiguousParameterSet, "<id>,<cmdlet>"; the pipeline fails (terminating).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...exospec import SpecViolation, canonicalize, cmdlet_spec, resolve_parameter_set
from ..ews import orgs
from ..exo import contact, directory, domain, mailbox, recipient
from ..exo import errors as exo_errors
from ..exo.directory import Call, Command
from ..exo.errors import BindingError, CmdletError
from ..model import EwsAccount, Tenant, User
from ..web import SandboxContext


@dataclass(frozen=True)
class Unverified:
    """*unverified* (one place): what the face assumes where no capture was found."""

    # The NoLanguage refusal of a script (remembered wording of Exchange's remote shell).
    script_message: str = (
        "The syntax is not supported by this runspace. This can occur if the runspace is in "
        "no-language mode."
    )
    script_error_id: str = "ScriptsNotAllowed"
    # Task class namespaces other than RecipientTasks (GetAcceptedDomain, RBAC).
    # Who may run cmdlets: an account without a mailbox of its own is taken as a member of
    # Organization Management; a user signing in as themselves sees none of these cmdlets
    # (Exchange hides cmdlets a role does not grant: "not recognized").
    admin_is_account_without_mailbox: bool = True
    # The server name in FullyQualifiedErrorId / PSComputerName.
    server: str = "EX01"
    domain_controller: str = "DC01.corp.sandbox.example"
    # A second identical New-ManagementRoleAssignment fails (Exchange names assignments
    # "<Role>-<User>"; its answer to a duplicate name is not captured).
    duplicate_assignment_type: str = exo_errors.NAME_EXISTS
    # Output property names of Add-/Get-MailboxPermission (MailboxAcePresentationObject:
    # Identity, User, AccessRights, IsInherited, Deny, InheritanceType) and of the role
    # assignment cmdlets (Name, Role, RoleAssigneeName, RoleAssigneeType, AssignmentMethod,
    # Enabled, RecipientWriteScope, ConfigWriteScope, RoleAssignmentDelegationType): the docs
    # pages only `Format-List` them; names as Exchange's shell prints them, not from a capture.
    # Get-MailboxPermission always lists NT AUTHORITY\SELF (FullAccess, ReadPermission); the
    # other built-in ACEs (inherited admin groups) are left out.
    # Remove-MailboxPermission for an ACE that does not exist: Exchange warns and changes
    # nothing (the wording of that warning is not captured; the face only warns).
    # Remove-* without -Confirm:$false asks for confirmation (ConfirmImpact High); a remote
    # runspace without a host UI fails the command with PowerShell's HostException.
    no_ace_warning: str = "The ACE doesn't exist on the object."
    confirm_message: str = (
        "A command that prompts the user failed because the host program or the command type "
        "does not support user interaction. The host was attempting to request confirmation "
        "with the following message: Are you sure you want to perform this action?"
    )


UNVERIFIED = Unverified()

TASK_CLASS = {
    "Get-Mailbox": "Microsoft.Exchange.Management.RecipientTasks.GetMailbox",
    "Set-Mailbox": "Microsoft.Exchange.Management.RecipientTasks.SetMailbox",
    "Get-Recipient": "Microsoft.Exchange.Management.RecipientTasks.GetRecipient",
    "Get-MailContact": "Microsoft.Exchange.Management.RecipientTasks.GetMailContact",
    "New-MailContact": "Microsoft.Exchange.Management.RecipientTasks.NewMailContact",
    "Set-MailContact": "Microsoft.Exchange.Management.RecipientTasks.SetMailContact",
    "Add-MailboxPermission": "Microsoft.Exchange.Management.RecipientTasks.AddMailboxPermission",
    "Get-MailboxPermission": "Microsoft.Exchange.Management.RecipientTasks.GetMailboxPermission",
    "New-ManagementRoleAssignment": (
        "Microsoft.Exchange.Management.RbacTasks.NewManagementRoleAssignment"
    ),
    "Get-ManagementRoleAssignment": (
        "Microsoft.Exchange.Management.RbacTasks.GetManagementRoleAssignment"
    ),
    "Remove-MailboxPermission": (
        "Microsoft.Exchange.Management.RecipientTasks.RemoveMailboxPermission"
    ),
    "Remove-ManagementRoleAssignment": (
        "Microsoft.Exchange.Management.RbacTasks.RemoveManagementRoleAssignment"
    ),
    "Get-AcceptedDomain": (
        "Microsoft.Exchange.Management.SystemConfigurationTasks.GetAcceptedDomain"
    ),
    # *unverified* (no capture): the MapiTasks namespace of Exchange 2013+'s statistics task.
    "Get-MailboxStatistics": "Microsoft.Exchange.Management.MapiTasks.GetMailboxStatistics",
}
# The .NET type each cmdlet's output objects carry (PSObject type names).
OUTPUT_TYPE = {
    "Get-Mailbox": "Microsoft.Exchange.Data.Directory.Management.Mailbox",
    "Get-Recipient": "Microsoft.Exchange.Data.Directory.Management.ReducedRecipient",
    "Get-MailContact": "Microsoft.Exchange.Data.Directory.Management.MailContact",
    "New-MailContact": "Microsoft.Exchange.Data.Directory.Management.MailContact",
    "Add-MailboxPermission": "Microsoft.Exchange.Management.RecipientTasks.MailboxAcePresentationObject",
    "Get-MailboxPermission": "Microsoft.Exchange.Management.RecipientTasks.MailboxAcePresentationObject",
    "New-ManagementRoleAssignment": "Microsoft.Exchange.Data.Directory.Management.ExchangeRoleAssignmentPresentation",
    "Get-ManagementRoleAssignment": "Microsoft.Exchange.Data.Directory.Management.ExchangeRoleAssignmentPresentation",
    "Get-AcceptedDomain": "Microsoft.Exchange.Data.Directory.SystemConfiguration.AcceptedDomain",
    # *unverified* (no capture); a remote session deserialises it, TotalItemSize as its text.
    "Get-MailboxStatistics": "Microsoft.Exchange.Management.MapiTasks.Presentation.MailboxStatistics",
}
IMPERSONATION = "ApplicationImpersonation"
ACCESS_RIGHTS = (
    "FullAccess",
    "SendAs",
    "ExternalAccount",
    "DeleteItem",
    "ReadPermission",
    "ChangePermission",
    "ChangeOwner",
)


@dataclass
class Record:
    """An ErrorRecord to send: message, .NET exception type, category, FQID, target."""

    message: str
    exception_type: str
    category: str  # psrpcore ErrorCategory member name
    reason: str
    error_id: str
    activity: str = ""
    target: str | None = None
    terminating: bool = False


@dataclass
class Outcome:
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[Record] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def short(exception_type: str) -> str:
    return exception_type.rsplit(".", 1)[-1]


def binding_record(cmdlet: str, error_id: str, message: str) -> Record:
    return Record(
        message,
        "System.Management.Automation.ParameterBindingException",
        "InvalidArgument",
        "ParameterBindingException",
        f"{error_id},{cmdlet}",
        activity=cmdlet,
        terminating=True,
    )


def not_recognized(name: str) -> Record:
    """PowerShell's CommandNotFoundException (a cmdlet the session does not hold)."""
    return Record(
        f"The term '{name}' is not recognized as the name of a cmdlet, function, script file, "
        "or operable program. Check the spelling of the name, or if a path was included, "
        "verify that the path is correct and try again.",
        "System.Management.Automation.CommandNotFoundException",
        "ObjectNotFound",
        "CommandNotFoundException",
        "CommandNotFoundException",
        target=name,
        terminating=True,
    )


def script_refused(text: str) -> Record:
    return Record(
        UNVERIFIED.script_message,
        "System.Management.Automation.ParseException",
        "ParserError",
        "ParseException",
        UNVERIFIED.script_error_id,
        target=text,
        terminating=True,
    )


def cmdlet_record(cmdlet: str, exc: CmdletError | BindingError) -> Record:
    """A failing cmdlet as Exchange's remote shell writes it (non-terminating)."""
    if isinstance(exc, BindingError) and exc.exception_type.startswith("System.Management"):
        return binding_record(cmdlet, "ParameterArgumentValidationError", exc.message)
    stamp = dt.datetime.now(dt.UTC).strftime("%d/%m/%Y %H:%M:%S")
    hex_id = format(uuid.uuid4().int & 0xFFFFFFF, "X")
    task = TASK_CLASS.get(cmdlet, cmdlet)
    fqid = (
        f"[Server={UNVERIFIED.server},RequestId={uuid.uuid4()},TimeStamp={stamp}] "
        f"[FailureCategory=Cmdlet-{short(exc.exception_type)}] {hex_id},{task}"
    )
    # The Exchange Online handlers quote a datacenter DC; on-premises it is the org's own.
    message = exc.message.replace(exo_errors.DC_FQDN, UNVERIFIED.domain_controller)
    return Record(
        message, exc.exception_type, "NotSpecified", short(exc.exception_type), fqid, cmdlet
    )


# -- on-premises cmdlets the Exchange Online face does not serve --------------------------
Handler = Callable[[Call], list[dict[str, Any]]]
PERMISSION_MODELED = {
    "Add-MailboxPermission": frozenset(
        {"Identity", "User", "AccessRights", "InheritanceType", "AutoMapping", "Confirm", "WhatIf"}
    ),
    "Get-MailboxPermission": frozenset({"Identity", "User"}),
    "New-ManagementRoleAssignment": frozenset({"Name", "Role", "User", "Confirm", "WhatIf"}),
    "Get-ManagementRoleAssignment": frozenset({"Identity", "Role", "RoleAssignee"}),
    "Remove-MailboxPermission": frozenset(
        {"Identity", "User", "AccessRights", "InheritanceType", "Confirm", "WhatIf"}
    ),
    "Remove-ManagementRoleAssignment": frozenset({"Identity", "Confirm", "WhatIf"}),
}


def _account(call: Call, parameter: str) -> EwsAccount:
    """The account `-User` names: `name`, `upn` or `DOMAIN\\name` of this organisation."""
    raw = directory.as_text(call.get(parameter)).strip()
    dom, _, name = raw.rpartition("\\")
    tenant = call.tenant
    account = None
    if not dom or dom.upper() == orgs.netbios(tenant):
        account = orgs.find_account(tenant, name)
    if account is None:
        raise exo_errors.not_found(raw)
    return account


def _user_label(tenant: Tenant, account: EwsAccount) -> str:
    return f"{orgs.netbios(tenant)}\\{account.name}"


def _ace(
    tenant: Tenant, mbx: User, user: str, rights: list[str], inherited: bool
) -> dict[str, Any]:
    return {
        "Identity": mbx.name,
        "User": user,
        "AccessRights": rights,
        "IsInherited": inherited,
        "Deny": False,
        "InheritanceType": "All",
        "IsValid": True,
    }


def _mailbox(call: Call) -> User:
    mbx = directory.resolve(call.tenant, call.get("Identity"), directory.is_mailbox)
    assert isinstance(mbx, User)
    return mbx


def add_mailbox_permission(call: Call) -> list[dict[str, Any]]:
    mbx = _mailbox(call)
    account = _account(call, "User")
    rights = directory.as_list(call.get("AccessRights"))
    canonical = []
    for r in rights:
        match = next((a for a in ACCESS_RIGHTS if a.lower() == r.strip().lower()), None)
        if match is None:
            raise exo_errors.invalid_value(
                "AccessRights",
                r,
                f"Unable to match the identifier name {r} to a valid enumerator name. "
                f"Specify one of the following enumerator names and try again: "
                f"{', '.join(ACCESS_RIGHTS)}",
            )
        canonical.append(match)
    if canonical != ["FullAccess"]:
        raise exo_errors.not_modeled(call.cmdlet, ["AccessRights other than FullAccess"])
    address = (mbx.primary_smtp or "").lower()
    if address and address not in account.full_access:
        account.full_access.append(address)
        call.tenant.touch()
    return [_ace(call.tenant, mbx, _user_label(call.tenant, account), canonical, False)]


def get_mailbox_permission(call: Call) -> list[dict[str, Any]]:
    mbx = _mailbox(call)
    t = call.tenant
    rows = [_ace(t, mbx, "NT AUTHORITY\\SELF", ["FullAccess", "ReadPermission"], False)]
    only = _account(call, "User") if call.has("User") else None
    if only is not None:
        rows = []
    addresses = {a.split(":", 1)[-1].lower() for a in mbx.email_addresses}
    for a in t.ews_accounts:
        if only is not None and a is not only:
            continue
        if "*" in a.full_access:
            rows.append(_ace(t, mbx, _user_label(t, a), ["FullAccess"], True))
        elif addresses & set(a.full_access):
            rows.append(_ace(t, mbx, _user_label(t, a), ["FullAccess"], False))
    return rows


def _assignment(tenant: Tenant, account: EwsAccount) -> dict[str, Any]:
    name = account.impersonation_name or f"{IMPERSONATION}-{account.name}"
    return {
        "Identity": name,
        "Name": name,
        "Role": IMPERSONATION,
        "RoleAssignee": account.name,
        "RoleAssigneeName": account.name,
        "RoleAssigneeType": "User",
        "AssignmentMethod": "Direct",
        "RoleAssignmentDelegationType": "Regular",
        "Enabled": True,
        "RecipientWriteScope": "Organization",
        "ConfigWriteScope": "OrganizationConfig",
        "IsValid": True,
    }


def new_management_role_assignment(call: Call) -> list[dict[str, Any]]:
    role = directory.as_text(call.get("Role")).strip()
    if role.lower() != IMPERSONATION.lower():
        raise exo_errors.not_modeled(call.cmdlet, [f"Role {role!r} (only {IMPERSONATION})"])
    if call.parameter_set != "User":
        raise exo_errors.not_modeled(call.cmdlet, [f"parameter set {call.parameter_set}"])
    account = _account(call, "User")
    if account.impersonation:
        raise CmdletError(
            f"The role assignment {IMPERSONATION}-{account.name} already exists.",
            UNVERIFIED.duplicate_assignment_type,
        )
    account.impersonation = True
    account.impersonation_name = (
        directory.as_text(call.get("Name")).strip() if call.has("Name") else ""
    )
    call.tenant.touch()
    return [_assignment(call.tenant, account)]


def get_management_role_assignment(call: Call) -> list[dict[str, Any]]:
    t = call.tenant
    rows = [_assignment(t, a) for a in t.ews_accounts if a.impersonation]
    if call.has("Role"):
        role = directory.as_text(call.get("Role")).lower()
        rows = [r for r in rows if r["Role"].lower() == role]
    if call.has("RoleAssignee"):
        who = _account(call, "RoleAssignee")
        rows = [r for r in rows if r["RoleAssignee"] == who.name]
    if call.has("Identity"):
        ident = directory.as_text(call.get("Identity")).lower()
        rows = [r for r in rows if r["Name"].lower() == ident]
        if not rows:
            raise exo_errors.not_found(directory.as_text(call.get("Identity")))
    return rows


def _confirmed(call: Call) -> None:
    """A Remove-* cmdlet runs only with -Confirm:$false over a remote runspace (no host UI)."""
    if not call.has("Confirm") or call.get("Confirm") is not False:
        raise CmdletError(
            UNVERIFIED.confirm_message, "System.Management.Automation.Host.HostException"
        )


def remove_mailbox_permission(call: Call) -> list[dict[str, Any]]:
    _confirmed(call)
    mbx = _mailbox(call)
    account = _account(call, "User")
    rights = [r.strip().lower() for r in directory.as_list(call.get("AccessRights"))]
    if rights != ["fullaccess"]:
        raise exo_errors.not_modeled(call.cmdlet, ["AccessRights other than FullAccess"])
    address = (mbx.primary_smtp or "").lower()
    if address in account.full_access:
        account.full_access.remove(address)
        call.tenant.touch()
    return []


def remove_management_role_assignment(call: Call) -> list[dict[str, Any]]:
    _confirmed(call)
    ident = directory.as_text(call.get("Identity")).strip()
    t = call.tenant
    for a in t.ews_accounts:
        if a.impersonation and _assignment(t, a)["Name"].lower() == ident.lower():
            a.impersonation = False
            a.impersonation_name = ""
            t.touch()
            return []
    raise exo_errors.not_found(ident)


ON_PREMISES: dict[str, tuple[Handler, frozenset[str]]] = {
    "add-mailboxpermission": (add_mailbox_permission, PERMISSION_MODELED["Add-MailboxPermission"]),
    "get-mailboxpermission": (get_mailbox_permission, PERMISSION_MODELED["Get-MailboxPermission"]),
    "new-managementroleassignment": (
        new_management_role_assignment,
        PERMISSION_MODELED["New-ManagementRoleAssignment"],
    ),
    "get-managementroleassignment": (
        get_management_role_assignment,
        PERMISSION_MODELED["Get-ManagementRoleAssignment"],
    ),
    "remove-mailboxpermission": (
        remove_mailbox_permission,
        PERMISSION_MODELED["Remove-MailboxPermission"],
    ),
    "remove-managementroleassignment": (
        remove_management_role_assignment,
        PERMISSION_MODELED["Remove-ManagementRoleAssignment"],
    ),
}
# The Exchange Online face's handlers, reused as they are.
SHARED: tuple[str, ...] = (
    "Get-Mailbox",
    "Set-Mailbox",
    "Get-Recipient",
    "Get-MailContact",
    "New-MailContact",
    "Set-MailContact",
    "Get-AcceptedDomain",
    "Get-MailboxStatistics",
)
_FAMILIES = (recipient, mailbox, contact, domain)
_EXO: dict[str, Command] = {k: v for f in _FAMILIES for k, v in f.COMMANDS.items()}


def served() -> list[str]:
    """Every cmdlet the face serves (the contract test walks it)."""
    return sorted([*SHARED, *(cmdlet_spec(k, "onprem").name for k in ON_PREMISES)])


def handler_of(name: str) -> tuple[str, Handler, frozenset[str], bool] | None:
    key = name.lower()
    if key in ON_PREMISES:
        fn, modeled = ON_PREMISES[key]
        return cmdlet_spec(key, "onprem").name, fn, modeled, not key.startswith("get-")
    if key in {s.lower() for s in SHARED}:
        cmd = _EXO[key]
        return cmd.name, cmd.run, cmd.modeled, cmd.write
    return None


def is_admin(account: EwsAccount) -> bool:
    return account.mailbox is None


def run_command(
    ctx: SandboxContext,
    key: str,
    account: EwsAccount,
    name: str,
    is_script: bool,
    params: list[tuple[str | None, Any]],
) -> Outcome:
    """Run one command of a pipeline for `account` of tenant `key`."""
    if is_script:
        return Outcome(errors=[script_refused(name)])
    found = handler_of(name) if is_admin(account) else None
    if found is None:
        return Outcome(errors=[not_recognized(name)])
    cmdlet, handler, modeled, write = found
    positional = [v for n, v in params if n is None]
    if positional:
        return Outcome(
            errors=[
                binding_record(
                    cmdlet,
                    "PositionalParameterNotFound",
                    f"A positional parameter cannot be found that accepts argument "
                    f"'{positional[0]}'.",
                )
            ]
        )
    named = {str(n): _plain(v) for n, v in params if n is not None}
    try:
        canonical = canonicalize(cmdlet, named, "onprem")
        parameter_set = resolve_parameter_set(cmdlet, named, "onprem")
    except SpecViolation as v:
        return Outcome(errors=[_violation(cmdlet, v)])
    unmodeled = sorted(set(canonical) - modeled - directory.ALWAYS_MODELED)
    if unmodeled:
        return Outcome(errors=[cmdlet_record(cmdlet, exo_errors.not_modeled(cmdlet, unmodeled))])
    if write and directory.as_bool("WhatIf", canonical.get("WhatIf", False)):
        return Outcome()
    tenant = ctx.world.tenants[key]
    call = Call(ctx, tenant, cmdlet, canonical, parameter_set)
    try:
        with ctx.world.lock:
            tenant.settle()
            rows = handler(call)
    except (CmdletError, BindingError) as exc:
        return Outcome(errors=[cmdlet_record(cmdlet, exc)], warnings=call.warnings)
    return Outcome(rows=rows, warnings=call.warnings)


def _violation(cmdlet: str, v: SpecViolation) -> Record:
    """PowerShell's binder messages (these are PowerShell's, not Exchange's)."""
    if v.kind in ("unknown_parameter", "online_only"):
        return binding_record(
            cmdlet,
            "NamedParameterNotFound",
            f"A parameter cannot be found that matches parameter name '{v.parameters[0]}'.",
        )
    if v.kind == "missing_mandatory":
        return binding_record(cmdlet, "MissingMandatoryParameter", v.message)
    if v.kind == "unknown_cmdlet":
        return not_recognized(cmdlet)
    return binding_record(
        cmdlet,
        "AmbiguousParameterSet",
        "Parameter set cannot be resolved using the specified named parameters.",
    )


def _plain(value: Any) -> Any:
    """psrpcore's deserialised values (PSString, PSList, PSBool...) as plain Python."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int | float):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)
