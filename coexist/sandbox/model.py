"""Sandbox tenant state as plain dataclasses, shared by every protocol face.

One `World` holds the two tenants (`source`, `target`). Graph, the Exchange
admin face, the routing model and the seed generator all read and write these
objects; nothing here knows about HTTP. State is saved to `state.json` in the
state directory so a stopped sandbox can be served again and `sandbox deliver`
can route against it.

Mutations must go through `Tenant.touch()` (directly or via the helpers here)
so the address index is rebuilt and the state is saved.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from coexist.files import private_dir, write_private

STATE_FILE = "state.json"

# Exchange RecipientTypeDetails values the sandbox models, and their RecipientType.
MAILBOX_KINDS = ("UserMailbox", "SharedMailbox", "RoomMailbox", "EquipmentMailbox")
RECIPIENT_TYPE = {
    "UserMailbox": "UserMailbox",
    "SharedMailbox": "UserMailbox",
    "RoomMailbox": "UserMailbox",
    "EquipmentMailbox": "UserMailbox",
    "MailUser": "MailUser",
    "MailContact": "MailContact",
    "MailUniversalDistributionGroup": "MailUniversalDistributionGroup",
    "MailUniversalSecurityGroup": "MailUniversalSecurityGroup",
    "DynamicDistributionGroup": "DynamicDistributionGroup",
    "GroupMailbox": "MailUniversalDistributionGroup",
}

# What a realistic delay is for (Settings.delay).
DelayKind = Literal["provisioning", "replication", "rest", "graph_patch"]

GroupKind = Literal["Security", "MailSecurity", "Distribution", "Dynamic", "Unified"]
GROUP_RECIPIENT_TYPE: dict[str, str | None] = {
    "Security": None,  # not mail-enabled: invisible to Exchange
    "MailSecurity": "MailUniversalSecurityGroup",
    "Distribution": "MailUniversalDistributionGroup",
    "Dynamic": "DynamicDistributionGroup",
    "Unified": "GroupMailbox",
}


def new_guid() -> str:
    return str(uuid.uuid4())


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def primary_smtp(addresses: list[str]) -> str | None:
    """The address behind the `SMTP:` (upper-case) prefix, Exchange's primary."""
    for a in addresses:
        if a.startswith("SMTP:"):
            return a[5:]
    return None


def smtp_addresses(addresses: list[str]) -> list[str]:
    return [a[5:] for a in addresses if a.lower().startswith("smtp:")]


def x500_addresses(addresses: list[str]) -> list[str]:
    return [a[5:] for a in addresses if a.lower().startswith("x500:")]


def domain_of(address: str) -> str:
    return address.rsplit("@", 1)[-1].lower()


@dataclass
class MailObject:
    """Fields every mail-enabled object has in Exchange."""

    id: str  # Entra object id == Exchange ExternalDirectoryObjectId
    display_name: str
    name: str = ""  # Exchange Name (CN), at most 64 characters
    alias: str = ""  # mailNickname
    email_addresses: list[str] = field(default_factory=list)  # 'SMTP:' primary, 'smtp:', 'X500:'
    legacy_exchange_dn: str | None = None
    exchange_object_id: str = field(default_factory=new_guid)  # Exchange 'Guid'
    hidden_from_address_lists: bool = False
    created: str = field(default_factory=now_iso)
    changed: str = field(default_factory=now_iso)
    # Epoch seconds before which Graph answers 404 (replication lag: chaos and realistic
    # profiles, `Settings.delay("replication", ...)`).
    visible_at: float = 0.0

    @property
    def primary_smtp(self) -> str | None:
        return primary_smtp(self.email_addresses)


@dataclass
class User(MailObject):
    """An Entra user; with Exchange attributes when it is a mailbox or MailUser."""

    user_principal_name: str = ""
    given_name: str | None = None
    surname: str | None = None
    usage_location: str | None = None
    account_enabled: bool = True
    department: str | None = None
    job_title: str | None = None
    city: str | None = None
    country: str | None = None
    company_name: str | None = None
    assigned_licenses: list[str] = field(default_factory=list)  # skuIds
    # Exchange side. None: the user has no Exchange recipient.
    recipient_type_details: str | None = None
    external_email_address: str | None = None  # MailUser targetAddress, e.g. 'SMTP:a@b'
    exchange_guid: str | None = None
    archive_guid: str | None = None
    forwarding_address: str | None = None  # object id of an internal recipient
    forwarding_smtp_address: str | None = None  # 'smtp:addr', external, unvalidated
    deliver_to_mailbox_and_forward: bool = False
    # A licensed MailUser without ExchangeGuid becomes a mailbox at this epoch time.
    mailbox_pending_at: float | None = None
    # -- realistic timing (Settings.delay): epoch seconds --
    # Graph's Outlook faces (mail, contacts, calendar, To Do, settings/exchange) answer 404
    # MailboxNotEnabledForRESTAPI for a mailbox before this, although Exchange already has it.
    rest_ready_at: float = 0.0
    # Created through Exchange (New-MailUser): Graph may refuse to PATCH it
    # (`Settings.graph_patch_refusal`), while replicating until `graph_writable_at`.
    exchange_created: bool = False
    graph_writable_at: float = 0.0
    # The seed's directory figures, served by no face: Get-MailboxStatistics reports what
    # the mail and PIM stores hold (exo/mailbox.contents). Kept so state files load and the
    # seed draws the same random sequence.
    item_count: int = 0
    total_item_size: int = 0  # bytes

    @property
    def is_mailbox(self) -> bool:
        return self.recipient_type_details in MAILBOX_KINDS


@dataclass
class Contact(MailObject):
    """A mail contact (Entra orgContact) pointing outside the tenant."""

    external_email_address: str = ""  # 'SMTP:addr'
    first_name: str | None = None
    last_name: str | None = None


@dataclass
class Group(MailObject):
    """Security group, mail-enabled security group, DL, dynamic DL or M365 group."""

    kind: GroupKind = "Security"
    description: str | None = None
    members: list[str] = field(default_factory=list)  # object ids (users, groups, contacts)
    owners: list[str] = field(default_factory=list)
    managed_by: list[str] = field(default_factory=list)
    recipient_filter: str | None = None  # dynamic DL
    included_recipients: str | None = None  # dynamic DL precanned filter
    require_sender_authentication: bool = True

    @property
    def mail_enabled(self) -> bool:
        return self.kind != "Security"

    @property
    def security_enabled(self) -> bool:
        return self.kind in ("Security", "MailSecurity")


@dataclass
class Domain:
    name: str
    is_verified: bool = True
    is_default: bool = False
    is_initial: bool = False
    domain_type: str = "Authoritative"  # Exchange accepted-domain type


@dataclass
class Sku:
    sku_id: str
    sku_part_number: str
    enabled: int  # prepaidUnits.enabled
    service_plans: list[dict[str, str]] = field(default_factory=list)
    applies_to: str = "User"
    capability_status: str = "Enabled"


@dataclass
class App:
    """An app registration with its service principal's grants in this tenant."""

    client_id: str
    display_name: str
    client_secret: str | None = None
    certificate_pem: str | None = None  # public certificate for client_assertion
    graph_roles: list[str] = field(default_factory=list)  # application permissions
    exchange_manage_as_app: bool = False  # Office 365 Exchange Online app role
    exchange_roles: list[str] = field(
        default_factory=list
    )  # Entra roles, e.g. Exchange Administrator
    # Exchange RBAC role groups the app's service principal is a member of (New-
    # ServicePrincipal + Add-RoleGroupMember, app-only-auth-powershell-v2 "Option 2"):
    # granted inside Exchange, so the token carries no `wids` for them.
    exchange_role_groups: list[str] = field(default_factory=list)


@dataclass
class EwsAccount:
    """An account of an Exchange/WorkMail organisation that signs in to its EWS face
    (`sandbox/ews/orgs.py`): a migration/admin account or a user's own credentials.

    `full_access`: primary SMTP addresses of the mailboxes it holds FullAccess on
    (Add-MailboxPermission; WorkMail: mailbox permissions), "*" for every mailbox.
    `impersonation`: holds the ApplicationImpersonation role (New-ManagementRoleAssignment).
    `mailbox`: the address of its own mailbox, if it is a user.
    """

    name: str  # sAMAccountName, e.g. "svc-migrate"
    password: str
    upn: str  # name@<org domain>
    full_access: list[str] = field(default_factory=list)
    impersonation: bool = False
    # The name of that role assignment (New-ManagementRoleAssignment -Name; Exchange's
    # default "<Role>-<User>" when "").
    impersonation_name: str = ""
    mailbox: str | None = None


# -- automatic-forwarding gates: outbound spam policies + rules, remote domains ----------
# Exchange Online's defaults: the Default outbound spam policy (AutoForwardingMode
# Automatic, = Off since 2020; Defender docs, outbound-spam-policies-external-email-
# forwarding) and the remote domain "Default" for "*" with AutoForwardEnabled $true
# (Set-RemoteDomain reference). Neither can be removed, so every tenant has both.
DEFAULT_POLICY = "Default"


@dataclass
class RemoteDomain:
    name: str
    domain_name: str  # '*' for Default
    auto_forward_enabled: bool = True


@dataclass
class OutboundSpamPolicy:
    """An outbound spam filter policy; custom ones apply only through a rule."""

    name: str
    auto_forwarding_mode: str = "Automatic"  # Automatic | On | Off
    is_default: bool = False
    guid: str = field(default_factory=new_guid)


@dataclass
class OutboundSpamRule:
    """Who a custom outbound spam policy applies to (New-HostedOutboundSpamFilterRule).

    Users and groups are held as object ids (Exchange stores references, not the
    text typed); domains as given. Priority 0 is the highest.
    """

    name: str
    policy: str  # the policy's name
    priority: int = 0
    enabled: bool = True  # State Enabled / Disabled
    senders: list[str] = field(default_factory=list)  # From
    member_of: list[str] = field(default_factory=list)  # FromMemberOf
    sender_domains: list[str] = field(default_factory=list)  # SenderDomainIs
    except_senders: list[str] = field(default_factory=list)  # ExceptIfFrom
    except_member_of: list[str] = field(default_factory=list)  # ExceptIfFromMemberOf
    except_sender_domains: list[str] = field(default_factory=list)  # ExceptIfSenderDomainIs
    comments: str | None = None
    guid: str = field(default_factory=new_guid)


@dataclass
class Tenant:
    tenant_id: str
    display_name: str
    initial_domain: str  # <name>.onmicrosoft.com
    users: dict[str, User] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    contacts: dict[str, Contact] = field(default_factory=dict)
    domains: list[Domain] = field(default_factory=list)
    skus: list[Sku] = field(default_factory=list)
    apps: list[App] = field(default_factory=list)
    # Automatic-forwarding gates; __post_init__ adds the Default policy and '*' if absent.
    outbound_spam_policies: list[OutboundSpamPolicy] = field(default_factory=list)
    outbound_spam_rules: list[OutboundSpamRule] = field(default_factory=list)
    remote_domains: list[RemoteDomain] = field(default_factory=list)
    organization_guid: str = field(default_factory=new_guid)
    legacy_dn_prefix: str = (
        ""  # /o=ExchangeLabs/ou=Exchange Administrative Group (...)/cn=Recipients
    )
    # What the organisation is (sandbox/ews/orgs.py KINDS): "m365" (Microsoft 365, the
    # default), "exchange2016", "exchange2019" (on-premises/hosted) or "workmail".
    kind: str = "m365"
    ews_accounts: list[EwsAccount] = field(default_factory=list)
    _version: int = field(default=0, repr=False, compare=False)
    _index_version: int = field(default=-1, repr=False, compare=False)
    _address_index: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    _object_keys: dict[str, list[str]] = field(default_factory=dict, repr=False, compare=False)
    _pending: set[str] = field(default_factory=set, repr=False, compare=False)  # mailbox due

    def __post_init__(self) -> None:
        if not any(p.is_default for p in self.outbound_spam_policies):
            self.outbound_spam_policies.insert(
                0, OutboundSpamPolicy(DEFAULT_POLICY, is_default=True)
            )
        if not any(r.domain_name == "*" for r in self.remote_domains):
            self.remote_domains.insert(0, RemoteDomain("Default", "*", auto_forward_enabled=True))

    @property
    def default_outbound_policy(self) -> OutboundSpamPolicy:
        return next(p for p in self.outbound_spam_policies if p.is_default)

    @property
    def auto_forwarding_mode(self) -> str:
        """The Default outbound spam policy's AutoForwardingMode (Automatic | On | Off)."""
        return self.default_outbound_policy.auto_forwarding_mode

    @auto_forwarding_mode.setter
    def auto_forwarding_mode(self, mode: str) -> None:
        self.default_outbound_policy.auto_forwarding_mode = mode

    def touch(self, obj: MailObject | None = None) -> None:
        """Record a change: bumps the version (save) and keeps the address index current.

        With the changed (or removed) object given, only its index entries are
        redone; without it the whole index is rebuilt on the next lookup. Full
        rebuilds per write made a 2,000-user tenant spend most of its time here.
        """
        index_valid = self._index_version == self._version
        self._version += 1
        if obj is None:
            return
        obj.changed = now_iso()
        if index_valid:
            self._reindex(obj)
            self._index_version = self._version

    @property
    def version(self) -> int:
        return self._version

    # -- lookups -------------------------------------------------------------
    def objects(self) -> Iterator[MailObject]:
        yield from self.users.values()
        yield from self.groups.values()
        yield from self.contacts.values()

    def get(self, object_id: str) -> MailObject | None:
        return (
            self.users.get(object_id) or self.groups.get(object_id) or self.contacts.get(object_id)
        )

    @staticmethod
    def _index_keys(obj: MailObject) -> list[str]:
        if isinstance(obj, User) and obj.recipient_type_details is None:
            return []
        if isinstance(obj, Group) and not obj.mail_enabled:
            return []
        keys = []
        for a in obj.email_addresses:
            kind, _, value = a.partition(":")
            if kind.lower() in ("smtp", "x500") and value:
                keys.append(f"{kind.lower()}:{value.lower()}")
        if obj.legacy_exchange_dn:
            keys.append(f"x500:{obj.legacy_exchange_dn.lower()}")
        return keys

    def _reindex(self, obj: MailObject) -> None:
        for key in self._object_keys.pop(obj.id, []):
            if self._address_index.get(key) == obj.id:
                del self._address_index[key]
        if self.get(obj.id) is obj:  # still in the tenant (not removed)
            keys = self._index_keys(obj)
            for key in keys:
                self._address_index[key] = obj.id
            self._object_keys[obj.id] = keys
        if isinstance(obj, User) and obj.mailbox_pending_at is not None and self.get(obj.id) is obj:
            self._pending.add(obj.id)
        else:
            self._pending.discard(obj.id)

    def _rebuild_index(self) -> None:
        self._address_index = {}
        self._object_keys = {}
        self._pending = set()
        for obj in self.objects():
            self._reindex(obj)
        self._index_version = self._version

    def address_owner(self, address: str) -> MailObject | None:
        """The recipient owning an address: 'a@b' / 'smtp:a@b' (SMTP) or 'x500:/o=...' / '/o=...'."""
        if self._index_version != self._version:
            self._rebuild_index()
        a = address.strip()
        low = a.lower()
        if low.startswith(("smtp:", "x500:")):
            key = low[:5] + low[5:]
        elif low.startswith("/o="):
            key = "x500:" + low
        else:
            key = "smtp:" + low
        oid = self._address_index.get(key)
        return self.get(oid) if oid else None

    def accepted_domain(self, name: str) -> Domain | None:
        n = name.lower()
        return next((d for d in self.domains if d.name.lower() == n), None)

    def sku(self, sku_id: str) -> Sku | None:
        return next((s for s in self.skus if s.sku_id == sku_id), None)

    def consumed_units(self, sku_id: str) -> int:
        return sum(1 for u in self.users.values() if sku_id in u.assigned_licenses)

    def app(self, client_id: str) -> App | None:
        return next((a for a in self.apps if a.client_id == client_id), None)

    def new_legacy_dn(self, alias: str) -> str:
        # Exchange Online's form: .../cn=Recipients/cn=<32 hex>-<alias>
        return f"{self.legacy_dn_prefix}/cn={uuid.uuid4().hex}-{alias[:20]}"

    def settle(self, now: float | None = None) -> None:
        """Advance time-driven state: licensed MailUsers whose mailbox is due become mailboxes."""
        t = time.time() if now is None else now
        if self._index_version != self._version:
            self._rebuild_index()
        # Only users with a pending mailbox (tracked by the index) need a look; scanning
        # every user on every request was O(N) per call.
        for uid in list(self._pending):
            u = self.users.get(uid)
            if u is not None and u.mailbox_pending_at is not None and u.mailbox_pending_at <= t:
                u.mailbox_pending_at = None
                u.recipient_type_details = "UserMailbox"
                u.exchange_guid = u.exchange_guid or new_guid()
                u.legacy_exchange_dn = u.legacy_exchange_dn or self.new_legacy_dn(u.alias)
                u.external_email_address = None
                self.touch(u)


@dataclass
class Settings:
    """World-wide behaviour knobs (not tenant data)."""

    seed: int = 1
    profile: str = "fast"  # published | fast | chaos | realistic
    time_scale: float = 1.0  # published limits and realistic timings run this many times faster
    provisioning_delay_s: float = 2.0  # licensed MailUser -> mailbox
    replication_delay_s: float = 0.0  # chaos, realistic: new objects 404 in Graph this long
    chaos_rate: float = 0.0  # chaos: fraction of requests failing transiently
    # Benchmarks start with drained buckets so they measure the sustained rate, not
    # the burst a fresh app+tenant window allows.
    buckets_start_empty: bool = False
    # Delta sync state (mail delta tokens, import/export delta states) expires: Exchange
    # forgets sync state it has not seen for a while (410 SyncStateNotFound, FACTS.md); how
    # long is not published (*unverified*), so it is a knob, in unscaled seconds (divided by
    # time_scale). States issued before `sync_states_expired_before` (epoch seconds) are
    # expired too: `World.expire_sync_states()` forgets every state on demand.
    sync_state_max_age_s: float = 7 * 86400.0
    sync_states_expired_before: float = 0.0
    # Outbound spam filter rules: how Get-HostedOutboundSpamFilterRule shows the
    # recipients of From / FromMemberOf / ExceptIfFrom* (*unverified*: Exchange stores
    # references and the reference does not say how they print). "Name" (Exchange Name)
    # or "PrimarySmtpAddress"; the product must resolve either.
    rule_recipients_shown_as: str = "Name"
    # -- realistic timing: Microsoft 365 takes minutes, not seconds ------------------------
    # Each delay is a range in unscaled seconds (divided by time_scale): `<name>_s` is the
    # low end, `<name>_max_s` the high end (not above the low end: always the low end). The
    # point in the range is drawn per object from `seed` and the object's alias, so the same
    # seed and project give the same timings (`delay`). provisioning_delay_s (above) is the
    # low end for "provisioning", replication_delay_s for "replication".
    provisioning_delay_max_s: float = 0.0
    replication_delay_max_s: float = 0.0
    # A provisioned mailbox is served by Graph's Outlook APIs this long after Exchange has it
    # (404 MailboxNotEnabledForRESTAPI meanwhile). Microsoft documents "might take 15 minutes"
    # after licensing (Graph known issues, "No instant access after creation"); how the wait
    # splits between Exchange and Graph is *unverified*.
    rest_delay_s: float = 0.0
    rest_delay_max_s: float = 0.0
    # Graph PATCH of a user created through Exchange (New-MailUser). *unverified* whether and
    # for how long Graph refuses it, so each documented answer is a choice:
    #   "none"      accepted once the user is visible in Graph;
    #   "migrating" 400 Request_BadRequest "...on-premises mastered Directory Sync objects or
    #               objects currently undergoing migration." (the DualWrite refusal) for a
    #               `graph_patch_window` after it became visible, then accepted;
    #   "external"  400 Request_BadRequest "...objects that have originated within an external
    #               service." always (microsoft-graph-docs-contrib issues 3564 and 8048: users
    #               created as Mail Users through Exchange Online).
    graph_patch_refusal: str = "none"
    graph_patch_window_s: float = 0.0
    graph_patch_window_max_s: float = 0.0
    # The import/export API's answers its pages do not document (*unverified*; a client must
    # cope with each, and the mover is tested against each):
    # - an expired or unknown items/folders delta token: 410 with this code (delta-query
    #   pages name SyncStateNotFound, SyncStateInvalid and resyncRequired);
    io_sync_state_code: str = "SyncStateNotFound"
    # - importItem `Mode: update` with a ChangeKey the item no longer has: "status code" (the
    #   default's code is Exchange's own for it, an EWS ResponseCode in spec/ews/messages.xsd;
    #   its HTTP status through this API is not published).
    io_update_conflict: str = "409 ErrorIrresolvableConflict"
    # How the mail delta answers a forgotten sync state (graph/mail_delta.EXPIRED_ANSWERS):
    # Microsoft documents only "a 40X-series error with error codes such as syncStateNotFound"
    # (delta-query-overview, "Token duration"), so each plausible answer is a value here and
    # the mover is tested against every one (*unverified* which Exchange sends today).
    mail_delta_expired_answer: str = "SyncStateNotFound"
    # Identity filters Graph does not document (graph/outlook_items.UNVERIFIED_FILTERS): True
    # serves them, False answers them as an unsupported query, so the product's fallback runs.
    unverified_identity_filters: bool = True
    # *unverified*: whether Exchange Online keeps a MailUser's ExternalEmailAddress among its
    # proxy addresses once another address is primary (and puts it back when a
    # Set-MailUser -EmailAddresses list leaves it out). The product must work either way;
    # see `exo.directory.external_proxy`.
    mailuser_external_proxy: bool = True

    def sync_state_expired(self, issued_at: float, now: float | None = None) -> bool:
        """Whether a sync state issued at `issued_at` (epoch seconds) is forgotten by now."""
        now = time.time() if now is None else now
        if issued_at < self.sync_states_expired_before:
            return True
        return now - issued_at > self.sync_state_max_age_s / max(self.time_scale, 1e-9)

    def delay(self, kind: DelayKind, key: str) -> float:
        """Seconds (time-scaled) one object waits for `kind`; fixed for a seed and a key."""
        low, high = {
            "provisioning": (self.provisioning_delay_s, self.provisioning_delay_max_s),
            "replication": (self.replication_delay_s, self.replication_delay_max_s),
            "rest": (self.rest_delay_s, self.rest_delay_max_s),
            "graph_patch": (self.graph_patch_window_s, self.graph_patch_window_max_s),
        }[kind]
        seconds = low + (high - low) * _fraction(self.seed, kind, key) if high > low else low
        return seconds / (self.time_scale if self.time_scale > 0 else 1.0)


def _fraction(seed: int, kind: str, key: str) -> float:
    """A number in [0, 1) fixed by (seed, kind, key): not by call order, which concurrency varies."""
    digest = hashlib.sha256(f"{seed}|{kind}|{key.lower()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class DnsRecord:
    """One resource record of the sandbox's DNS face (sandbox/dns.py): `name` absolute,
    lower-case, without the trailing dot; `value` in zone-file presentation format."""

    name: str
    type: str  # "MX", "CNAME", "SRV", "TXT", "A", ...
    value: str
    ttl: int = 3600


@dataclass
class DnsZone:
    """A domain's records as its DNS provider holds them (not the tenant's: a domain's zone
    outlives the tenant it points at, which is what a cutover changes)."""

    name: str
    serial: int = 1
    records: list[DnsRecord] = field(default_factory=list)


@dataclass
class World:
    """The source and target tenants plus settings; saved to a state directory."""

    tenants: dict[str, Tenant]
    settings: Settings = field(default_factory=Settings)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    # DNS zones by domain name (sandbox/dns.py); `dns_version` counts their changes.
    dns: dict[str, DnsZone] = field(default_factory=dict)
    dns_version: int = field(default=0, repr=False, compare=False)

    def expire_sync_states(self) -> None:
        """Forget every delta sync state issued so far (clients get Exchange's expiry answer)."""
        with self.lock:
            # Strictly after anything issued until now, even within one clock tick.
            self.settings.sync_states_expired_before = time.time() + 1e-6

    @property
    def source(self) -> Tenant:
        return self.tenants["source"]

    @property
    def target(self) -> Tenant:
        return self.tenants["target"]

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        t = tenant_id.lower()
        for tenant in self.tenants.values():
            if tenant.tenant_id == t or tenant.initial_domain.lower() == t:
                return tenant
            if any(d.name.lower() == t for d in tenant.domains):
                return tenant
        return None

    def tenant_for_domain(self, domain: str) -> Tenant | None:
        d = domain.lower()
        for tenant in self.tenants.values():
            if tenant.accepted_domain(d) is not None:
                return tenant
        return None

    @property
    def version(self) -> int:
        return sum(t.version for t in self.tenants.values()) + self.dns_version

    # -- persistence -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "settings": dataclasses.asdict(self.settings),
            "tenants": {k: _tenant_to_dict(t) for k, t in self.tenants.items()},
            "dns": {
                k: {"name": z.name, "serial": z.serial, "records": [_flat(r) for r in z.records]}
                for k, z in self.dns.items()
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> World:
        return cls(
            tenants={k: _tenant_from_dict(v) for k, v in data["tenants"].items()},
            settings=Settings(**data.get("settings", {})),
            dns={
                k: DnsZone(z["name"], z["serial"], [DnsRecord(**r) for r in z["records"]])
                for k, z in data.get("dns", {}).items()
            },
        )

    def save(self, state_dir: Path) -> Path:
        """Write state atomically (write + rename) so a reader never sees half a file."""
        private_dir(state_dir)
        path = state_dir / STATE_FILE
        with self.lock:
            data = self.to_dict()  # a consistent snapshot; serialised outside the lock
        text = json.dumps(data, separators=(",", ":"))
        # Owner-only: the state holds every app's client secret.
        return write_private(path, text)

    @classmethod
    def load(cls, state_dir: Path) -> World:
        path = state_dir / STATE_FILE
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def _flat(obj: Any) -> dict[str, Any]:
    """A dataclass of scalars and lists as a dict, lists copied.

    Much cheaper than `dataclasses.asdict` (which deep-copies recursively): the
    saver snapshots the whole world under its lock, so this is on the hot path.
    """
    return {k: (list(v) if isinstance(v, list) else v) for k, v in vars(obj).items()}


def _tenant_to_dict(t: Tenant) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for f in dataclasses.fields(t):
        if f.name.startswith("_"):
            continue
        v = getattr(t, f.name)
        if isinstance(v, dict):
            d[f.name] = [_flat(o) for o in v.values()]
        elif isinstance(v, list):
            d[f.name] = [_flat(o) for o in v]
        else:
            d[f.name] = v
    return d


def _tenant_from_dict(d: dict[str, Any]) -> Tenant:
    return Tenant(
        tenant_id=d["tenant_id"],
        display_name=d["display_name"],
        initial_domain=d["initial_domain"],
        users={u["id"]: User(**u) for u in d.get("users", [])},
        groups={g["id"]: Group(**g) for g in d.get("groups", [])},
        contacts={c["id"]: Contact(**c) for c in d.get("contacts", [])},
        domains=[Domain(**x) for x in d.get("domains", [])],
        skus=[Sku(**x) for x in d.get("skus", [])],
        apps=[App(**x) for x in d.get("apps", [])],
        outbound_spam_policies=_outbound_policies(d),
        outbound_spam_rules=[OutboundSpamRule(**x) for x in d.get("outbound_spam_rules", [])],
        remote_domains=[RemoteDomain(**x) for x in d.get("remote_domains", [])],
        organization_guid=d.get("organization_guid", new_guid()),
        legacy_dn_prefix=d.get("legacy_dn_prefix", ""),
        kind=d.get("kind", "m365"),
        ews_accounts=[EwsAccount(**x) for x in d.get("ews_accounts", [])],
    )


def _outbound_policies(d: dict[str, Any]) -> list[OutboundSpamPolicy]:
    """Saved policies; a state saved before they were modelled kept only the Default's mode."""
    if "outbound_spam_policies" in d:
        return [OutboundSpamPolicy(**x) for x in d["outbound_spam_policies"]]
    mode = d.get("auto_forwarding_mode", "Automatic")
    return [OutboundSpamPolicy(DEFAULT_POLICY, mode, is_default=True)]
