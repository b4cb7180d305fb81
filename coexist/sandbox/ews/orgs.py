"""Organisations behind the EWS face: their kind, version, accounts and grants.

A tenant of the sandbox (`source`, `target`) is a Microsoft 365 tenant by default
(`Tenant.kind == "m365"`). Made an on-premises/hosted Exchange organisation
(`exchange2016`, `exchange2019`) or an Amazon WorkMail organisation (`workmail`), its
mailboxes are served over EWS at `/EWS/Exchange.asmx` to the accounts of `Tenant.ews_accounts`
(`model.EwsAccount`): a migration account with FullAccess on mailboxes (Add-MailboxPermission;
WorkMail: mailbox permissions) and/or the ApplicationImpersonation role
(New-ManagementRoleAssignment; Exchange only), or a user signing in to their own mailbox.

`set_kind` / `add_account` / `grant` are the operations tests, demos and `coexist sandbox ews`
use (admin.py reaches them on a running sandbox). Which organisation a request is for follows
from its credentials: the account's UPN domain or NTLM/`DOMAIN\\user` NetBIOS domain.

Everything here Microsoft or AWS do not publish is in UNVERIFIED.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model import EwsAccount, Tenant, User, World

KINDS = ("m365", "exchange2016", "exchange2019", "workmail")
EWS_KINDS = KINDS[1:]


@dataclass(frozen=True)
class Flavour:
    kind: str
    # ServerVersionInfo sent in every response header.
    major: int
    minor: int
    major_build: int
    minor_build: int
    version: str  # ServerVersionInfo@Version
    newest_request_version: str  # the newest RequestServerVersion it accepts
    auth: tuple[str, ...]  # schemes offered on 401, in order
    max_message_bytes: int | None  # a CreateItem/UploadItems larger than this is refused


@dataclass(frozen=True)
class Unverified:
    """*unverified* (one place): what the face assumes where vendors publish nothing."""

    # Build numbers are real CUs (Exchange Server build numbers and release dates: 2016
    # CU23 15.1.2507.6, 2019 CU13 15.2.1258.12); the Version attribute on-premises servers
    # put in ServerVersionInfo ("V2017_07_11"-style, which exchangelib notes servers send and
    # treats as invalid-in-request) is not from a capture.
    server_version_attribute: str = "V2017_07_11"
    # Amazon WorkMail documents neither its ServerVersionInfo nor the newest
    # RequestServerVersion it accepts; the face answers as Exchange 2010 SP2 (14.3).
    workmail_version: str = "Exchange2010_SP2"
    # WorkMail: "messages with attachments larger than ~23 MB cannot be migrated"
    # (FACTS.md, audriga); the exact byte count is not published.
    workmail_max_message_bytes: int = 23 * 1024 * 1024
    # Exceeding EwsMaxConcurrency answers ErrorServerBusy here (versions differ).
    concurrency_answer: str = "ErrorServerBusy"
    # Budget charge in ms of "server time" (Exchange charges the measured time of a call).
    charge_ms_per_request: float = 40.0
    charge_ms_per_item: float = 4.0
    # The budget blocks at a zero balance (EwsCutoffBalance, 3,000,000 ms, is not modelled).
    # Delegation without FullAccess: ErrorAccessDenied (some versions answer
    # ErrorNonExistentMailbox or ErrorItemNotFound for a folder id).
    no_full_access: str = "ErrorAccessDenied"
    # SyncFolderItems/SyncFolderHierarchy states older than Settings.sync_state_max_age_s
    # (or expired by World.expire_sync_states) answer this.
    stale_sync_state: str = "ErrorInvalidSyncStateData"
    # EWS answers a sticky note (IPM.StickyNote) as this element (t:Message or t:Item).
    note_element: str = "Message"
    # A CalendarView holding more than MaxEntriesReturned items: the first ones with
    # IncludesLastItemInRange false (Exchange may refuse it with ErrorCalendarViewRangeTooBig).
    calendar_view_over_cap: str = "truncate"
    # ServerVersionInfo build of WorkMail (no published value; answers as Exchange 2010 SP3).
    workmail_build: tuple[int, int, int, int] = (14, 3, 123, 4)
    # PidTagSearchKey of PIM items (pim_items.search_key): MS-OXCPRPT 2.2.1.9 says a copy of an
    # object gets its key; that UploadItems CreateNew of an ExportItems blob is such a copy
    # (keeps the key) is assumed; the key of an item made here is derived from its id.
    search_key_kept_by_upload: bool = True
    # Extended properties (MS-OXPROPS named or tagged) set at CreateItem/UpdateItem on a
    # calendar item, contact or task are kept and answered to GetItem/FindItem asking for
    # their ExtendedFieldURI. Exchange documents this ("Working with extended properties by
    # using the EWS Managed API 2.0": they "can be created on ... Appointments, Tasks,
    # Contacts"; MS-OXPROPS named properties); Amazon WorkMail publishes no list of the
    # EWS elements it keeps, so that WorkMail does too is assumed (coexist's cross-kind copies
    # carry their source id so: stores/ews_pim.SourceId).
    workmail_keeps_pim_extended: bool = True
    # Modelling shortcuts (not vendor claims): SoftDelete removes like HardDelete (no
    # Recoverable Items over EWS); a deleted calendar item/contact/task/note does not go to
    # Deleted Items; an unknown RequestServerVersion newer than the flavour's is refused with
    # ErrorInvalidServerVersion rather than a schema violation.


UNVERIFIED = Unverified()

FLAVOURS = {
    "exchange2016": Flavour(
        "exchange2016",
        15,
        1,
        2507,
        6,
        UNVERIFIED.server_version_attribute,
        "Exchange2016",
        ("NTLM", "Basic"),
        None,
    ),
    "exchange2019": Flavour(
        "exchange2019",
        15,
        2,
        1258,
        12,
        UNVERIFIED.server_version_attribute,
        "Exchange2016",
        ("NTLM", "Basic"),
        None,
    ),
    "workmail": Flavour(
        "workmail",
        *UNVERIFIED.workmail_build,
        UNVERIFIED.workmail_version,
        UNVERIFIED.workmail_version,
        ("Basic",),
        UNVERIFIED.workmail_max_message_bytes,
    ),
}


class OrgError(ValueError):
    pass


def netbios(tenant: Tenant) -> str:
    """The organisation's NetBIOS domain (first label of its initial domain, upper case)."""
    return tenant.initial_domain.split(".", 1)[0].upper()[:15]


def org_domain(tenant: Tenant) -> str:
    """The domain of accounts' UPNs: the tenant's default (first) accepted domain."""
    for d in tenant.domains:
        if d.is_default:
            return d.name
    return tenant.initial_domain


def set_kind(world: World, key: str, kind: str) -> None:
    if kind not in KINDS:
        raise OrgError(f"unknown organisation kind {kind!r} (one of {', '.join(KINDS)})")
    with world.lock:
        tenant = world.tenants[key]
        tenant.kind = kind
        tenant.touch()


def add_account(
    world: World,
    key: str,
    name: str,
    password: str,
    *,
    full_access: list[str] | None = None,
    impersonation: bool = False,
    mailbox: str | None = None,
) -> EwsAccount:
    """Create (or replace) an account of organisation `key`; returns it (its `upn` is the
    sign-in name, `NETBIOS\\name` works too)."""
    with world.lock:
        tenant = world.tenants[key]
        if impersonation and tenant.kind == "workmail":
            raise OrgError("Amazon WorkMail has no ApplicationImpersonation role")
        account = EwsAccount(
            name=name,
            password=password,
            upn=f"{name}@{org_domain(tenant)}".lower(),
            full_access=[a.lower() for a in (full_access or [])],
            impersonation=impersonation,
            mailbox=mailbox.lower() if mailbox else None,
        )
        tenant.ews_accounts = [a for a in tenant.ews_accounts if a.name.lower() != name.lower()]
        tenant.ews_accounts.append(account)
        tenant.touch()
        return account


def grant(
    world: World,
    key: str,
    name: str,
    *,
    full_access: list[str] | None = None,
    impersonation: bool | None = None,
    revoke: bool = False,
) -> EwsAccount:
    """Add (or with `revoke` remove) FullAccess on mailboxes and/or the impersonation role."""
    with world.lock:
        tenant = world.tenants[key]
        account = find_account(tenant, name)
        if account is None:
            raise OrgError(f"no EWS account {name!r} in {key}")
        for address in full_access or []:
            a = address.lower()
            if revoke:
                account.full_access = [x for x in account.full_access if x != a]
            elif a not in account.full_access:
                account.full_access.append(a)
        if impersonation is not None:
            if impersonation and tenant.kind == "workmail":
                raise OrgError("Amazon WorkMail has no ApplicationImpersonation role")
            account.impersonation = impersonation and not revoke
        tenant.touch()
        return account


def find_account(tenant: Tenant, name: str) -> EwsAccount | None:
    n = name.lower()
    for a in tenant.ews_accounts:
        if n in (a.name.lower(), a.upn.lower()):
            return a
    return None


def resolve_login(world: World, login: str) -> tuple[str, EwsAccount] | None:
    """(tenant key, account) for a sign-in name: `user@domain`, `DOMAIN\\user` or `user`
    (the last only when one organisation has it)."""
    domain, _, user = login.rpartition("\\")
    found: list[tuple[str, EwsAccount]] = []
    for key, tenant in world.tenants.items():
        if tenant.kind not in EWS_KINDS:
            continue
        if domain and domain.upper() != netbios(tenant):
            continue
        account = find_account(tenant, user)
        if account is not None:
            found.append((key, account))
    return found[0] if len(found) == 1 else None


def mailbox_user(tenant: Tenant, address: str) -> User | None:
    """The mailbox user an SMTP address (any proxy address) names in this organisation."""
    owner = tenant.address_owner(address.lower())
    if isinstance(owner, User) and owner.is_mailbox:
        return owner
    return None


def may_open(account: EwsAccount, user: User) -> bool:
    """FullAccess (or it is the account's own mailbox)."""
    addresses = {a.split(":", 1)[-1].lower() for a in user.email_addresses}
    if account.mailbox and account.mailbox in addresses:
        return True
    return "*" in account.full_access or bool(addresses & set(account.full_access))


def accepts_version(flavour: Flavour, version: str, known: tuple[str, ...]) -> bool:
    if version not in known:
        return False
    return known.index(version) <= known.index(flavour.newest_request_version)
