"""Least privilege: exactly which permissions each command needs, in each tenant.

One table, used by `coexist permissions` (to print what to grant) and by
`coexist preflight` (to check what the apps really get). Application
permissions come from the Microsoft Graph permissions reference; Exchange
needs the `Exchange.ManageAsApp` application permission of "Office 365
Exchange Online" plus an Exchange role: an Entra role on the app's service
principal (it shows in the token's `wids`), or an Exchange role group / role
assignment of the service principal made inside Exchange (New-ServicePrincipal,
then Add-RoleGroupMember or New-ManagementRoleAssignment -App), which no token
shows (FACTS.md; learn.microsoft.com/powershell/exchange/app-only-auth-powershell-v2,
Step 5). So preflight asks Exchange itself: it runs `EXCHANGE_ROLE_PROBE`.
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
# Reading outbound spam policies and rules takes Organization Management (Exchange
# Administrator), Global Reader, Security Reader or View-Only Organization Management;
# recipient management alone is not enough (Defender docs, outbound-spam-policies-configure).
POLICY_READER = ("Exchange Administrator", "Global Reader", "Security Reader")
# The Exchange role check: a read-only cmdlet every role that manages recipients may run
# (Get-Recipient is in the Mail Recipients and View-Only Recipients roles). Success means
# Exchange grants the app a role, however it was granted; 403 means it grants none.
EXCHANGE_ROLE_PROBE: tuple[str, dict[str, object]] = ("Get-Recipient", {"ResultSize": 1})

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
        # Read-only, for the first pass's estimate (coexist/estimate.first_pass_sizes); without
        # it the estimate says so and the pass runs. *Unverified*: Get-MailboxStatistics is in
        # Exchange's Mail Recipients and View-Only Recipients roles (not checked against
        # Get-ManagementRoleEntry), which Exchange Recipient Administrator holds.
        Need("source", "exchange", MANAGE_AS_APP, "read mailbox sizes (Get-MailboxStatistics)"),
        Need(
            "source",
            "exchange",
            EXCHANGE_ROLE,
            "run Get-MailboxStatistics: sizes for the first pass's estimate",
        ),
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
        Need("source", "exchange", EXCHANGE_ROLE, "read accepted domains"),
        Need(
            "source",
            "exchange",
            POLICY_READER,
            "read outbound spam policies and rules, remote domains (forward-on-source)",
        ),
        Need("target", "exchange", EXCHANGE_ROLE, "read accepted domains"),
        Need(
            "target",
            "exchange",
            POLICY_READER,
            "read outbound spam policies and rules, remote domains (pre-stage forwards back)",
        ),
        Need("target", "graph", READ_GROUPS, "expand groups that scope outbound spam policies"),
    ],
}
NEEDS["automatch"] = [
    Need("target", "graph", READ_USERS, "read target users (addresses, display names)"),
    # --create-missing: user-post-users, user-assignlicense, subscribedsku-list
    Need(
        "target",
        "graph",
        ("User.ReadWrite.All", "Directory.ReadWrite.All"),
        "--create-missing: create users, set usageLocation, assign licenses",
    ),
    Need(
        "target",
        "graph",
        ("Organization.Read.All", "Directory.Read.All"),
        "--create-missing: read subscribed SKUs",
    ),
    Need("target", "exchange", MANAGE_AS_APP, "--create-missing: see the new mailbox"),
    Need("target", "exchange", EXCHANGE_ROLE, "--create-missing: run Get-Recipient"),
]
# Mail coexist sends to people ([mail] transport = "graph": user-sendmail, application
# permission Mail.Send, least privileged) from [mail] sender, a mailbox of the [mail]
# graph_side tenant (target by default). With an SMTP relay no permission is needed.
NEEDS["notify"] = [
    Need(
        "target",
        "graph",
        ("Mail.Send",),
        'send notices and status mail as mail.sender (when mail.transport = "graph")',
    ),
]
NEEDS["rediscover"] = NEEDS["discover"]
NEEDS["rollback"] = [
    *NEEDS["cutover"],
    # user-list-messages: Mail.ReadBasic.All is the least privileged application permission.
    Need(
        "target",
        "graph",
        ("Mail.ReadBasic.All", "Mail.Read", "Mail.ReadWrite"),
        "count mail delivered to target mailboxes since cutover (it stays there)",
    ),
]

# What each data mover needs on top, in the commands that run data passes (`[migration]
# mover`). Least privileged first, from each API page's "Permissions" table (application).
DATA_COMMANDS = ("prestage", "cutover")
MAILBOX_ID = ("User.Read.All", "User.ReadWrite.All")  # usersettings-list-exchange
MAIL_FOLDER_NAMES = ("Mail.ReadBasic.All", "Mail.Read", "Mail.ReadWrite")  # mailfolder-get
CALENDAR_NAME = ("Calendars.ReadBasic", "Calendars.Read", "Calendars.ReadWrite")  # calendar-get
CONTACT_FOLDER_NAME = ("Contacts.Read", "Contacts.ReadWrite")  # contactfolder-get
TODO_LIST_NAME = ("Tasks.Read.All", "Tasks.ReadWrite.All")  # todo-list-lists


def _default_names(tenant: str) -> list[Need]:
    """The import/export mover recognises default folders by each API's own name for them
    (mailboxFolder has no well-known name in v1.0): a read of each default's name."""
    return [
        Need(tenant, "graph", MAILBOX_ID, "read each mailbox's import/export id (settings/exchange)"),
        Need(tenant, "graph", MAIL_FOLDER_NAMES, "name the default mail folders (mailFolders/inbox...)"),
        Need(tenant, "graph", CALENDAR_NAME, "name the primary calendar"),
        Need(tenant, "graph", CONTACT_FOLDER_NAME, "name the default contact folder"),
        Need(tenant, "graph", TODO_LIST_NAME, "name the default To Do list"),
    ]  # fmt: skip


MOVER_NEEDS: dict[str, list[Need]] = {
    "none": [],
    "graph-import-export": [
        # mailbox-exportitems, mailbox-list-folders / mailboxfolder-delta, mailboxitem-get /
        # mailboxitem-delta (identities and the IRM/S-MIME check through extended properties)
        Need("source", "graph", ("MailboxItem.Export.All", "MailboxItem.ImportExport.All"),
             "export items (import/export API)"),
        Need("source", "graph", ("MailboxFolder.Read.All", "MailboxFolder.ReadWrite.All"),
             "list folders (import/export API)"),
        Need("source", "graph", ("MailboxItem.Read.All", "MailboxItem.ReadWrite.All"),
             "follow item deltas, read item identities (import/export API)"),
        *_default_names("source"),
        # mailbox-createimportsession, mailbox-post-folders, mailboxfolder-delete-items
        Need("target", "graph", ("MailboxItem.ImportExport.All",), "import items"),
        Need("target", "graph", ("MailboxFolder.ReadWrite.All",), "create folders"),
        Need("target", "graph", ("MailboxItem.ReadWrite.All",),
             "delete copies (moves at the source, mirrored deletions), find interrupted imports"),
        *_default_names("target"),
    ],
    "graph-items": [
        Need("source", "graph", ("Mail.Read", "Mail.ReadWrite"), "read messages (MIME, state)"),
        Need("source", "graph", ("Contacts.Read", "Contacts.ReadWrite"), "read contacts"),
        Need("source", "graph", ("Calendars.Read", "Calendars.ReadWrite"), "read events"),
        Need("source", "graph", ("Tasks.Read.All", "Tasks.ReadWrite.All"), "read To Do tasks"),
        Need("target", "graph", ("Mail.ReadWrite",), "create folders and messages"),
        Need("target", "graph", ("Contacts.ReadWrite",), "create contact folders and contacts"),
        Need("target", "graph", ("Calendars.ReadWrite",), "create calendars and events"),
        Need("target", "graph", ("Tasks.ReadWrite.All",), "create To Do lists and tasks"),
    ],
    # An IMAP source needs no Graph permission (its users sign in); the target's mail API:
    # user-post-messages, mailfolder-post-childfolders, attachment-createuploadsession.
    "imap-graph": [
        Need("target", "graph", ("Mail.ReadWrite",), "create folders and messages"),
    ],
}  # fmt: skip


def needs(command: str | None = None, mover: str | None = None) -> list[Need]:
    """The needs of one command, or of all of them (deduplicated); with `mover`, what that
    data mover needs too in the commands that run data passes."""
    if command is not None:
        extra = MOVER_NEEDS.get(mover or "none", []) if command in DATA_COMMANDS else []
        return list(NEEDS.get(command, [])) + extra
    seen: dict[tuple[str, str, tuple[str, ...]], Need] = {}
    for items in [*NEEDS.values(), MOVER_NEEDS.get(mover or "none", [])]:
        for n in items:
            seen.setdefault((n.tenant, n.api, n.any_of), n)
    return list(seen.values())


def satisfied(need: Need, roles: set[str], wids: set[str]) -> bool:
    """Whether a token's claims show the need met (for an Exchange role: an Entra role only;
    preflight asks Exchange itself, since a role group shows in no token)."""
    if need.api == "graph" or need.any_of == MANAGE_AS_APP:
        return bool(roles & set(need.any_of))
    return any(EXCHANGE_ROLES.get(w) in need.any_of for w in wids)


def is_exchange_role(need: Need) -> bool:
    """An Exchange RBAC role need (not the ManageAsApp application permission)."""
    return need.api == "exchange" and need.any_of != MANAGE_AS_APP


def exchange_role_in_token(wids: set[str]) -> str | None:
    """The Exchange admin Entra role a token's `wids` name, if any."""
    return next((EXCHANGE_ROLES[w] for w in sorted(wids) if w in EXCHANGE_ROLES), None)
