"""Deterministic tenant-pair generator: the same (seed, users) gives the same world.

Fabrikam (source) and Contoso (target) look like a real merger:

- Source: `users` Entra users with Exchange mailboxes (mostly UserMailbox, a few
  Shared / Room / Equipment ones), names from a seeded pool that is partly
  non-ASCII (é, ø, ß, Ł, 中文, ñ) with some display names longer than Exchange's
  64-character `Name`; aliases ASCII-folded and unique; SMTP proxies at the
  vanity and the onmicrosoft domain, some extra aliases and X500 proxies from an
  older Exchange org. Groups: the scope group `SCOPE_GROUP` (mail-enabled
  security) with a nested scope group, department DLs nested in an all-staff DL
  (with a contact member), plain security groups, dynamic DLs, one Microsoft 365
  group; external mail contacts; Microsoft 365 E3 licences.
- Target: a few of Contoso's own staff, some owning addresses that collide with
  source aliases at the target domain (`conflicting_aliases`), one with a source
  user's display name / Name, a contact for a source user, and a DL named like a
  source DL. SKUs: Office 365 E3 with fewer free seats than source users, plus an
  Exchange Online (Plan 1) SKU.
- Both: outbound spam policy `AutoForwardingMode = Automatic` (Microsoft's
  default, which now means Off), remote domain Default `*` with
  AutoForwardEnabled true (Microsoft's default), app `apps[0]` with full rights
  and `apps[1]` read-only (`READONLY_APP`).

Determinism: every GUID, secret and timestamp comes from `random.Random` streams
keyed by the seed (never uuid4() or the clock), so `World.to_dict()` is
byte-identical for the same arguments. Streams are split by concern (tenant
identity, users, groups, ...) so e.g. the tenant ids and app credentials do not
change when the user count changes.

Target verified domain `TARGET_ROUTING_DOMAIN` (contoso-mig.example): a verified,
non-default accepted domain that no seeded recipient uses. It is there for the
product to use as a coexistence routing / destination domain if it wants to, and
so that "more than two accepted domains" is the normal case in tests.
"""

from __future__ import annotations

import random
import time
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from .model import (
    App,
    Contact,
    Domain,
    Group,
    GroupKind,
    OutboundSpamPolicy,
    RemoteDomain,
    Settings,
    Sku,
    Tenant,
    User,
    World,
)

# -- well-known names (import these; do not hard-code the strings) ----------------
SOURCE_KEY = "source"
TARGET_KEY = "target"
SOURCE_ORG = "Fabrikam"
TARGET_ORG = "Contoso"
SOURCE_DOMAIN = "fabrikam.example"
TARGET_DOMAIN = "contoso.example"
SOURCE_INITIAL_DOMAIN = "fabrikam.onmicrosoft.com"
TARGET_INITIAL_DOMAIN = "contoso.onmicrosoft.com"
TARGET_ROUTING_DOMAIN = "contoso-mig.example"

SCOPE_GROUP = "Migration Scope - Wave 1"
SCOPE_NESTED_GROUP = "Migration Scope - Wave 1 Nested"
DL_ALL_STAFF = "All Staff"
DL_PARTNERS = "Partners and Vendors"
DEPARTMENT_DL_PREFIX = "Dept - "  # + department, e.g. "Dept - Sales"
DYNAMIC_SALES = "Dynamic - Sales"
DYNAMIC_SALES_FILTER = "(Department -eq 'Sales')"
DYNAMIC_USER_MAILBOXES = "Dynamic - All User Mailboxes"
DYNAMIC_USER_MAILBOXES_FILTER = "(RecipientTypeDetails -eq 'UserMailbox')"
UNIFIED_GROUP = "Project Phoenix"
SECURITY_GROUPS = ("SG - VPN Users", "SG - Finance Share")
# The address an older Exchange org left on some source users (X500 proxy).
OLD_ORG_X500_PREFIX = "/o=Fabrikam Legacy/ou=First Administrative Group/cn=Recipients"
EXO_LEGACY_DN_PREFIX = (
    "/o=ExchangeLabs/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Recipients"
)

APP_DISPLAY_PREFIX = "coexist-"  # apps[0] is "coexist-source" / "coexist-target"
READONLY_APP = "coexist-readonly"  # apps[1] in each tenant
READONLY_GRAPH_ROLES = ["User.Read.All"]
GRAPH_APP_ROLES = [
    "User.ReadWrite.All",
    "Group.ReadWrite.All",
    "Directory.ReadWrite.All",
    "Organization.Read.All",
    "Mail.ReadWrite",
    "MailboxSettings.ReadWrite",
    "Calendars.ReadWrite",
    "Contacts.ReadWrite",
    "Tasks.ReadWrite.All",
    "MailboxItem.ImportExport.All",
    "MailboxItem.ReadWrite.All",
    "MailboxFolder.ReadWrite.All",
    "Mail.Send",
]

# Exchange `Name` (the AD common name) is at most 64 characters (New-MailUser -Name,
# learn.microsoft.com/powershell/module/exchange/new-mailuser).
EXCHANGE_NAME_MAX = 64

# Microsoft's real product and service-plan ids (learn.microsoft.com/entra/identity/
# users/licensing-service-plan-reference; cross-checked against public scripts).
SPE_E3_SKU_ID = "05e9a617-0261-4cee-bb44-138d3ef5d965"  # Microsoft 365 E3
ENTERPRISEPACK_SKU_ID = "6fd2c87f-b296-42f0-b197-1e91e994b900"  # Office 365 E3
EXCHANGESTANDARD_SKU_ID = "4b9405b0-7788-4568-add1-99614e613b69"  # Exchange Online (Plan 1)
EXCHANGE_S_ENTERPRISE_PLAN_ID = "efb87545-963c-4e0d-99df-69c6916d9eb0"  # Exchange Online (Plan 2)
EXCHANGE_S_STANDARD_PLAN_ID = "9aaf7827-d63c-4b61-89c3-182f06f82e5c"  # Exchange Online (Plan 1)
_PLAN_SHAREPOINT = ("SHAREPOINTENTERPRISE", "5dbe027f-2339-4123-9542-606e4d348a72")
_PLAN_TEAMS = ("TEAMS1", "57ff2da0-773e-42df-b2af-ffb7a2317929")
_PLAN_SKYPE = ("MCOSTANDARD", "0feaeb32-d00e-4d66-bd5a-43b5b83db82c")
_PLAN_EXO_ENT = ("EXCHANGE_S_ENTERPRISE", EXCHANGE_S_ENTERPRISE_PLAN_ID)
_PLAN_EXO_STD = ("EXCHANGE_S_STANDARD", EXCHANGE_S_STANDARD_PLAN_ID)

# -- name pool --------------------------------------------------------------------
# Showcase people come first so even a small tenant has every kind of hard name.
# (given, surname); the long one exceeds 64 characters as a display name.
_SHOWCASE: list[tuple[str, str]] = [
    ("John", "Smith"),
    ("Renée", "Lefèvre"),
    ("Søren", "Østergaard"),
    ("Jürgen", "Strauß"),
    ("Łukasz", "Wałęsa"),
    ("伟", "王"),
    ("Begoña", "Muñoz"),
    ("Maximilian Alexander Friedrich", "von Hohenzollern-Sigmaringen-Württemberg"),
]
_GIVEN = [
    "James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda",
    "William", "Elizabeth", "David", "Barbara", "Richard", "Susan", "Joseph", "Jessica",
    "Thomas", "Sarah", "Charles", "Karen", "Chloé", "José", "Zoë", "Bjørn", "Åsa",
    "Jörg", "Małgorzata", "Paweł", "Iñigo", "Mónica", "François", "Hélène", "Siobhán",
    "Ingrid", "Anders", "Priya", "Ahmed", "Fatima", "Kenji", "Olga",
]  # fmt: skip
_SURNAMES = [
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
    "Rodriguez", "Martinez", "Lopez", "Wilson", "Anderson", "Taylor", "Moore", "Martin",
    "Lee", "Müller", "Schäfer", "Weiß", "Groß", "Kowalski", "Nowak", "Łukasiewicz",
    "Sørensen", "Lindstrøm", "Núñez", "Peña", "Ibáñez", "Dubois", "Bérénger", "O'Connor",
    "Nakamura", "Petrov", "Haddad", "Okafor",
]  # fmt: skip
# Chinese names: (given, surname, romanised given, romanised surname); shown surname-first.
_CJK = [
    ("芳", "李", "fang", "li"),
    ("娜", "张", "na", "zhang"),
    ("敏", "刘", "min", "liu"),
    ("静", "陈", "jing", "chen"),
    ("强", "杨", "qiang", "yang"),
    ("磊", "赵", "lei", "zhao"),
]
_ROMAN = {"伟": "wei", "王": "wang"} | {c[0]: c[2] for c in _CJK} | {c[1]: c[3] for c in _CJK}
_DEPARTMENTS = [
    "Sales",
    "Finance",
    "Engineering",
    "Marketing",
    "Human Resources",
    "Legal",
    "Support",
]
_TITLES = ["Manager", "Specialist", "Analyst", "Engineer", "Coordinator", "Director", "Associate"]
# (city, country, usageLocation)
_OFFICES = [
    ("Seattle", "United States", "US"),
    ("London", "United Kingdom", "GB"),
    ("München", "Germany", "DE"),
    ("Paris", "France", "FR"),
    ("Oslo", "Norway", "NO"),
    ("Kraków", "Poland", "PL"),
    ("Madrid", "Spain", "ES"),
    ("Shanghai", "China", "CN"),
]
_SHARED = [
    "Sales Inbox",
    "Support Desk",
    "Accounts Payable",
    "HR Enquiries",
    "Reception",
    "Press Office",
]
_ROOMS = ["Boardroom", "Fjord Room", "Conference Room Kraków", "Huddle Room"]
_EQUIPMENT = ["Projector Cart", "Pool Car", "Video Kit"]
_PARTNER_DOMAINS = ["northwind.example", "tailspin.example", "adatum.example", "litware.example"]

# ASCII folding for aliases: letters NFKD does not decompose.
_FOLD = str.maketrans(
    {"ø": "o", "Ø": "O", "ß": "ss", "ł": "l", "Ł": "L", "æ": "ae", "Æ": "AE", "đ": "d", "œ": "oe"}
)


def ascii_fold(text: str) -> str:
    """Lower-case ASCII letters and digits only: 'Søren Østergaard' -> 'sorenostergaard'."""
    text = "".join(_ROMAN.get(ch, ch) for ch in text.translate(_FOLD))
    text = unicodedata.normalize("NFKD", text)
    return "".join(c for c in text if c.isascii() and c.isalnum()).lower()


def stable_guid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _hex32(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


@dataclass
class _Clock:
    """Seeded timestamps: objects were created one after another from a fixed epoch."""

    at: int

    def next(self, step: int = 61) -> str:
        self.at += step
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at))


@dataclass
class _Names:
    """Per-tenant uniqueness for aliases, Exchange Names and SMTP addresses."""

    aliases: set[str]
    names: set[str]
    addresses: set[str]

    @classmethod
    def empty(cls) -> _Names:
        return cls(set(), set(), set())

    def alias(self, wanted: str) -> str:
        base = (wanted or "user")[:60]
        alias, n = base, 1
        while alias in self.aliases:
            n += 1
            alias = f"{base}{n}"
        self.aliases.add(alias)
        return alias

    def name(self, display: str) -> str:
        """Exchange Name: the display name cut at 64, made unique as Exchange requires."""
        base = display[:EXCHANGE_NAME_MAX].rstrip()
        name, n = base, 1
        while name.lower() in self.names:
            n += 1
            suffix = f" {n}"
            name = base[: EXCHANGE_NAME_MAX - len(suffix)].rstrip() + suffix
        self.names.add(name.lower())
        return name

    def claim(self, address: str) -> bool:
        low = address.lower()
        if low in self.addresses:
            return False
        self.addresses.add(low)
        return True


# -- tenants and apps ----------------------------------------------------------------
def new_tenant(rng: random.Random, key: str, org: str, vanity: str) -> Tenant:
    """A tenant with its initial and vanity domains, default policies and the full app."""
    tid = stable_guid(rng)
    initial = f"{org.lower()}.onmicrosoft.com"
    tenant = Tenant(
        tenant_id=tid,
        display_name=org,
        initial_domain=initial,
        domains=[
            Domain(initial, is_verified=True, is_default=False, is_initial=True),
            Domain(vanity, is_verified=True, is_default=True),
        ],
        legacy_dn_prefix=EXO_LEGACY_DN_PREFIX,
        # Microsoft's defaults: outbound spam policy AutoForwardingMode Automatic
        # (= Off since 2020, learn.microsoft.com/defender-office-365/
        # outbound-spam-policies-external-email-forwarding) and one remote domain
        # "Default" for "*" with AutoForwardEnabled $true (Get-RemoteDomain).
        outbound_spam_policies=[
            OutboundSpamPolicy(
                "Default",
                "Automatic",
                is_default=True,
                # From the tenant id, not the rng: adding it left every seeded name as it was.
                guid=str(uuid.uuid5(uuid.UUID(tid), "HostedOutboundSpamFilterPolicy/Default")),
            )
        ],
        remote_domains=[RemoteDomain("Default", "*", auto_forward_enabled=True)],
    )
    tenant.apps.append(
        App(
            client_id=stable_guid(rng),
            display_name=f"{APP_DISPLAY_PREFIX}{key}",
            client_secret=f"sandbox-{key}-" + uuid.UUID(int=rng.getrandbits(128)).hex,
            graph_roles=list(GRAPH_APP_ROLES),
            exchange_manage_as_app=True,
            exchange_roles=["Exchange Administrator"],
        )
    )
    return tenant


def _add_readonly_app(tenant: Tenant, rng: random.Random, key: str) -> None:
    """apps[1]: Graph User.Read.All only, no Exchange rights (for permission tests)."""
    tenant.apps.append(
        App(
            client_id=stable_guid(rng),
            display_name=READONLY_APP,
            client_secret=f"sandbox-{key}-ro-" + uuid.UUID(int=rng.getrandbits(128)).hex,
            graph_roles=list(READONLY_GRAPH_ROLES),
            exchange_manage_as_app=False,
            exchange_roles=[],
        )
    )


def _finish_tenant(tenant: Tenant, rng: random.Random) -> None:
    tenant.organization_guid = stable_guid(rng)


# -- people --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Person:
    given: str
    surname: str
    display: str
    alias_wanted: str
    first_dot_last: str


def _person(given: str, surname: str) -> _Person:
    cjk = given in _ROMAN or surname in _ROMAN
    display = f"{surname}{given}" if cjk else f"{given} {surname}"
    g, s = ascii_fold(given), ascii_fold(surname)
    # RFC 5321: a local part is at most 64 octets.
    return _Person(given, surname, display, f"{g[:1]}{s}"[:20], f"{g}.{s}"[:64])


def _random_person(rng: random.Random) -> _Person:
    if rng.random() < 0.1:
        given, surname, _, _ = rng.choice(_CJK)
        return _person(given, surname)
    return _person(rng.choice(_GIVEN), rng.choice(_SURNAMES))


def _people(rng: random.Random, count: int) -> list[_Person]:
    people = [_person(g, s) for g, s in _SHOWCASE[:count]]
    people.extend(_random_person(rng) for _ in range(count - len(people)))
    return people


def _long_display(p: _Person, title: str, department: str, city: str) -> str:
    """Some organisations put role and office in the display name; it outgrows 64 chars."""
    text = f"{p.display} ({title}, {department}, {city} Office)"
    if len(text) <= EXCHANGE_NAME_MAX:
        text = text[:-1] + ", External Workforce Programme)"
    return text


def _new_mailbox(
    tenant: Tenant,
    rng: random.Random,
    names: _Names,
    clock: _Clock,
    alias: str,
    display: str,
    vanity: str,
    kind: str,
) -> User:
    """A user with an Exchange mailbox: UPN = primary SMTP at the vanity domain."""
    primary = f"{alias}@{vanity}"
    names.claim(primary)
    names.claim(f"{alias}@{tenant.initial_domain}")
    created = clock.next()
    user = User(
        id=stable_guid(rng),
        display_name=display,
        name=names.name(display),
        alias=alias,
        user_principal_name=primary,
        email_addresses=[f"SMTP:{primary}", f"smtp:{alias}@{tenant.initial_domain}"],
        # Exchange Online's form: .../cn=Recipients/cn=<32 hex>-<alias prefix>
        legacy_exchange_dn=f"{tenant.legacy_dn_prefix}/cn={_hex32(rng)}-{alias[:20]}",
        exchange_object_id=stable_guid(rng),
        exchange_guid=stable_guid(rng),
        recipient_type_details=kind,
        created=created,
        changed=created,
    )
    tenant.users[user.id] = user
    return user


def _add_person(
    tenant: Tenant,
    rng: random.Random,
    names: _Names,
    clock: _Clock,
    person: _Person,
    index: int,
    vanity: str,
    company: str,
) -> User:
    """One person with a UserMailbox; every few people get the awkward variants."""
    department = _DEPARTMENTS[rng.randrange(len(_DEPARTMENTS))]
    title = f"{department} {rng.choice(_TITLES)}"
    city, country, location = _OFFICES[rng.randrange(len(_OFFICES))]
    display = person.display
    if index == 7 or index % 23 == 7:
        display = _long_display(person, title, department, city)
    alias = names.alias(person.alias_wanted)
    user = _new_mailbox(tenant, rng, names, clock, alias, display, vanity, "UserMailbox")
    user.given_name = person.given
    user.surname = person.surname
    user.usage_location = None if index % 13 == 5 else location
    user.account_enabled = index % 17 != 9
    user.department = department
    user.job_title = title
    user.city = city
    user.country = country
    user.company_name = company
    user.item_count = rng.randint(150, 25_000)
    user.total_item_size = user.item_count * rng.randint(20_000, 90_000)
    if index % 6 == 1 and names.claim(f"{person.first_dot_last}@{vanity}"):
        user.email_addresses.append(f"smtp:{person.first_dot_last}@{vanity}")
    if index % 5 == 2 and company == SOURCE_ORG:
        # A proxy left by Fabrikam's older on-premises org, so replies to old mail resolve.
        # Only Fabrikam's people: a Contoso person holding it would be the same mailbox
        # moved before (provision rightly refuses such an orphan), not a namesake.
        user.email_addresses.append(f"X500:{OLD_ORG_X500_PREFIX}/cn={alias}")
    return user


def _add_resource(
    tenant: Tenant,
    rng: random.Random,
    names: _Names,
    clock: _Clock,
    kind: str,
    display: str,
    vanity: str,
) -> User:
    """Shared / room / equipment mailbox: a disabled, unlicensed account (Microsoft's default)."""
    alias = names.alias(ascii_fold(display))
    user = _new_mailbox(tenant, rng, names, clock, alias, display, vanity, kind)
    user.account_enabled = False
    shared = kind == "SharedMailbox"
    user.item_count = rng.randint(20, 60_000) if shared else rng.randint(5, 900)
    user.total_item_size = user.item_count * rng.randint(15_000, 70_000)
    return user


def _resource_counts(users: int) -> tuple[int, int, int]:
    """(shared, room, equipment): a few each, growing with the tenant."""
    if users < 10:
        return 0, 0, 0
    return max(1, users // 25), max(1, users // 50), max(1, users // 100)


def _cycle_name(pool: list[str], i: int) -> str:
    base = pool[i % len(pool)]
    return base if i < len(pool) else f"{base} {i // len(pool) + 1}"


def _source_users(
    tenant: Tenant, rng: random.Random, names: _Names, clock: _Clock, users: int
) -> tuple[list[User], list[User]]:
    """(people, resources) of the source tenant; together exactly `users` objects."""
    shared, rooms, equipment = _resource_counts(users)
    people = [
        _add_person(tenant, rng, names, clock, p, i, SOURCE_DOMAIN, SOURCE_ORG)
        for i, p in enumerate(_people(rng, users - shared - rooms - equipment))
    ]
    resources: list[User] = []
    for kind, pool, count in (
        ("SharedMailbox", _SHARED, shared),
        ("RoomMailbox", _ROOMS, rooms),
        ("EquipmentMailbox", _EQUIPMENT, equipment),
    ):
        for i in range(count):
            resources.append(
                _add_resource(tenant, rng, names, clock, kind, _cycle_name(pool, i), SOURCE_DOMAIN)
            )
    return people, resources


# -- groups and contacts -----------------------------------------------------------
def _add_group(
    tenant: Tenant,
    rng: random.Random,
    names: _Names,
    clock: _Clock,
    display: str,
    kind: GroupKind,
    members: Iterable[str] = (),
    vanity: str = "",
) -> Group:
    alias = names.alias(ascii_fold(display))
    created = clock.next()
    group = Group(
        id=stable_guid(rng),
        display_name=display,
        name=names.name(display),
        alias=alias,
        kind=kind,
        members=list(dict.fromkeys(members)),
        exchange_object_id=stable_guid(rng),
        created=created,
        changed=created,
    )
    if kind != "Security":
        primary = f"{alias}@{vanity}"
        names.claim(primary)
        group.email_addresses = [f"SMTP:{primary}", f"smtp:{alias}@{tenant.initial_domain}"]
        group.legacy_exchange_dn = f"{tenant.legacy_dn_prefix}/cn={_hex32(rng)}-{alias[:20]}"
    tenant.groups[group.id] = group
    return group


def _add_contact(
    tenant: Tenant, rng: random.Random, names: _Names, clock: _Clock, person: _Person, address: str
) -> Contact:
    """A mail contact; Exchange stamps its external address as its primary SMTP proxy."""
    created = clock.next()
    contact = Contact(
        id=stable_guid(rng),
        display_name=person.display,
        name=names.name(person.display),
        alias=names.alias(ascii_fold(person.display)),
        first_name=person.given,
        last_name=person.surname,
        email_addresses=[f"SMTP:{address}"],
        external_email_address=f"SMTP:{address}",
        exchange_object_id=stable_guid(rng),
        created=created,
        changed=created,
    )
    contact.legacy_exchange_dn = f"{tenant.legacy_dn_prefix}/cn={_hex32(rng)}-{contact.alias[:20]}"
    names.claim(address)
    tenant.contacts[contact.id] = contact
    return contact


def _source_contacts(
    tenant: Tenant, rng: random.Random, names: _Names, clock: _Clock, users: int
) -> list[Contact]:
    contacts = []
    for i in range(max(3, users // 20)):
        person = _random_person(rng)
        domain = _PARTNER_DOMAINS[i % len(_PARTNER_DOMAINS)]
        local = person.first_dot_last
        address = (
            f"{local}@{domain}" if names.claim(f"{local}@{domain}") else f"{local}{i}@{domain}"
        )
        contacts.append(_add_contact(tenant, rng, names, clock, person, address))
    return contacts


def _source_groups(
    tenant: Tenant,
    rng: random.Random,
    names: _Names,
    clock: _Clock,
    people: list[User],
    resources: list[User],
    contacts: list[Contact],
) -> None:
    ids = [u.id for u in people]
    v = SOURCE_DOMAIN
    # Scope: a third of the people and a shared mailbox, plus a nested group with
    # more people (so only transitive membership finds them) and one overlap.
    nested_members = [u.id for i, u in enumerate(people) if i % 5 == 1] + ids[:1]
    nested = _add_group(
        tenant, rng, names, clock, SCOPE_NESTED_GROUP, "MailSecurity", nested_members, v
    )
    shared = [r.id for r in resources if r.recipient_type_details == "SharedMailbox"][:1]
    scope = [u.id for i, u in enumerate(people) if i % 3 == 0] + shared + [nested.id]
    _add_group(tenant, rng, names, clock, SCOPE_GROUP, "MailSecurity", scope, v)
    # Department DLs nested in All Staff; a contact sits both in a department DL
    # and in the partner DL; the first person is also a direct All Staff member
    # (a duplicate through nesting, which delivery must collapse).
    dept_dls = []
    for department in _DEPARTMENTS:
        members = [u.id for u in people if u.department == department]
        if department == "Sales" and contacts:
            members.append(contacts[0].id)
        dept_dls.append(
            _add_group(
                tenant,
                rng,
                names,
                clock,
                DEPARTMENT_DL_PREFIX + department,
                "Distribution",
                members,
                v,
            )
        )
    _add_group(
        tenant,
        rng,
        names,
        clock,
        DL_ALL_STAFF,
        "Distribution",
        [g.id for g in dept_dls] + ids[:1],
        v,
    )
    _add_group(tenant, rng, names, clock, DL_PARTNERS, "Distribution", [c.id for c in contacts], v)
    # Plain security groups: not mail-enabled, invisible to Exchange.
    _add_group(tenant, rng, names, clock, SECURITY_GROUPS[0], "Security", ids[::4])
    finance = [u.id for u in people if u.department == "Finance"]
    _add_group(tenant, rng, names, clock, SECURITY_GROUPS[1], "Security", finance)
    # Dynamic DLs: membership is a RecipientFilter, evaluated at delivery time.
    for display, opath in (
        (DYNAMIC_SALES, DYNAMIC_SALES_FILTER),
        (DYNAMIC_USER_MAILBOXES, DYNAMIC_USER_MAILBOXES_FILTER),
    ):
        ddg = _add_group(tenant, rng, names, clock, display, "Dynamic", (), v)
        ddg.recipient_filter = opath
    # One Microsoft 365 group (GroupMailbox); its members are users only.
    unified = _add_group(tenant, rng, names, clock, UNIFIED_GROUP, "Unified", ids[1:6], v)
    unified.owners = ids[1:2]
    for g in tenant.groups.values():
        if g.mail_enabled and ids:
            g.managed_by = ids[:1]


def _licence_people(tenant: Tenant, people: list[User], sku_id: str) -> None:
    for u in people:
        u.assigned_licenses = [sku_id]


def _sku(sku_id: str, part: str, enabled: int, plans: list[tuple[str, str]]) -> Sku:
    return Sku(
        sku_id=sku_id,
        sku_part_number=part,
        enabled=enabled,
        # Graph servicePlanInfo shape.
        service_plans=[
            {
                "servicePlanId": pid,
                "servicePlanName": pname,
                "provisioningStatus": "Success",
                "appliesTo": "User",
            }
            for pname, pid in plans
        ],
    )


# -- target ----------------------------------------------------------------------
def _target_people(
    tenant: Tenant,
    rng: random.Random,
    names: _Names,
    clock: _Clock,
    source_people: list[User],
    users: int,
) -> list[User]:
    """Contoso's own staff, some of whom already hold Fabrikam people's aliases or names."""
    staff: list[User] = []
    conflicts = source_people[: max(1, users // 25)] if source_people else []
    for src in conflicts:
        # A different Contoso person whose alias equals the Fabrikam alias.
        surname = src.surname or "Smith"
        given = rng.choice(_CJK)[0] if surname in _ROMAN else rng.choice(_GIVEN)
        other = _person(given, surname)
        other = _Person(other.given, other.surname, other.display, src.alias, other.first_dot_last)
        staff.append(
            _add_person(tenant, rng, names, clock, other, len(staff) * 6, TARGET_DOMAIN, TARGET_ORG)
        )
    if len(source_people) > 1:
        # Same person name as a Fabrikam user (Exchange Name collision), different alias.
        twin = source_people[1]
        p = _Person(
            twin.given_name or "",
            twin.surname or "",
            twin.display_name,
            f"{ascii_fold(twin.given_name or '')}.{ascii_fold(twin.surname or '')}",
            "",
        )
        staff.append(
            _add_person(tenant, rng, names, clock, p, len(staff) * 6, TARGET_DOMAIN, TARGET_ORG)
        )
    while len(staff) < max(6, users // 20):
        p = _random_person(rng)
        staff.append(
            _add_person(tenant, rng, names, clock, p, len(staff) * 6, TARGET_DOMAIN, TARGET_ORG)
        )
    return staff


def _build_target(
    tenant: Tenant, rng: random.Random, clock: _Clock, source_people: list[User], users: int
) -> None:
    names = _Names.empty()
    tenant.domains.append(Domain(TARGET_ROUTING_DOMAIN, is_verified=True))
    staff = _target_people(tenant, rng, names, clock, source_people, users)
    _licence_people(tenant, staff, ENTERPRISEPACK_SKU_ID)
    # Fewer free E3 seats than there are source users (4/5), so licensing runs out.
    free = users * 4 // 5
    tenant.skus = [
        _sku(ENTERPRISEPACK_SKU_ID, "ENTERPRISEPACK", len(staff) + free,
             [_PLAN_EXO_ENT, _PLAN_SHAREPOINT, _PLAN_TEAMS, _PLAN_SKYPE]),
        _sku(EXCHANGESTANDARD_SKU_ID, "EXCHANGESTANDARD", users // 10, [_PLAN_EXO_STD]),
    ]  # fmt: skip
    if source_people:
        # Contoso already had a contact for a Fabrikam person: its proxy is that person's address.
        src = source_people[0]
        p = _person(src.given_name or "", src.surname or "")
        contact = _add_contact(tenant, rng, names, clock, p, src.primary_smtp or "")
        contact.display_name = f"{src.display_name} (Fabrikam)"
    _add_group(
        tenant,
        rng,
        names,
        clock,
        DL_ALL_STAFF,
        "Distribution",
        [u.id for u in staff],
        TARGET_DOMAIN,
    )
    _add_group(
        tenant,
        rng,
        names,
        clock,
        "IT Admins",
        "MailSecurity",
        [u.id for u in staff[:2]],
        TARGET_DOMAIN,
    )


def _build_source(tenant: Tenant, rng: random.Random, clock: _Clock, users: int) -> list[User]:
    names = _Names.empty()
    people, resources = _source_users(tenant, rng, names, clock, users)
    contacts = _source_contacts(tenant, rng, names, clock, users)
    _source_groups(tenant, rng, names, clock, people, resources, contacts)
    _licence_people(tenant, people, SPE_E3_SKU_ID)
    tenant.skus = [
        _sku(
            SPE_E3_SKU_ID, "SPE_E3", len(people) + 5, [_PLAN_EXO_ENT, _PLAN_SHAREPOINT, _PLAN_TEAMS]
        ),
    ]
    return people


def _epoch(seed: int) -> int:
    """A fixed creation epoch derived from the seed (2019-01-01 plus up to a year)."""
    return 1_546_300_800 + (seed % 365) * 86_400


def generate(seed: int = 1, users: int = 50, settings: Settings | None = None) -> World:
    """A source and target tenant pair; deterministic for (seed, users)."""
    # Tenant ids and apps[0] come first from the main stream, as in the first cut,
    # so their values stay stable for a seed whatever else the generator adds.
    rng = random.Random(seed)
    source = new_tenant(rng, SOURCE_KEY, SOURCE_ORG, SOURCE_DOMAIN)
    target = new_tenant(rng, TARGET_KEY, TARGET_ORG, TARGET_DOMAIN)
    for key, tenant in ((SOURCE_KEY, source), (TARGET_KEY, target)):
        sub = random.Random(f"{seed}:{key}:tenant")
        _add_readonly_app(tenant, sub, key)
        _finish_tenant(tenant, sub)
    people = _build_source(
        source, random.Random(f"{seed}:{users}:source"), _Clock(_epoch(seed)), max(0, users)
    )
    _build_target(
        target,
        random.Random(f"{seed}:{users}:target"),
        _Clock(_epoch(seed) - 86_400 * 400),
        people,
        max(0, users),
    )
    s = settings or Settings()
    s.seed = seed
    return World(tenants={SOURCE_KEY: source, TARGET_KEY: target}, settings=s)


# -- lookups for tests and demos ----------------------------------------------------
def group_by_name(tenant: Tenant, display_name: str) -> Group:
    """The seeded group with this display name (KeyError if absent)."""
    for g in tenant.groups.values():
        if g.display_name == display_name:
            return g
    raise KeyError(display_name)


def transitive_members(tenant: Tenant, group: Group) -> set[str]:
    """Object ids of the non-group members reachable from `group` through nesting."""
    seen: set[str] = {group.id}
    out: set[str] = set()
    stack = list(group.members)
    while stack:
        oid = stack.pop()
        if oid in seen:
            continue
        seen.add(oid)
        nested = tenant.groups.get(oid)
        if nested is not None:
            stack.extend(nested.members)
        else:
            out.add(oid)
    return out


def conflicting_aliases(world: World) -> list[str]:
    """Source user aliases whose `alias@TARGET_DOMAIN` an existing target recipient owns."""
    target = world.tenants[TARGET_KEY]
    return sorted(
        u.alias
        for u in world.tenants[SOURCE_KEY].users.values()
        if target.address_owner(f"{u.alias}@{TARGET_DOMAIN}") is not None
    )
