"""Shared recipient semantics: identities, addresses, names, and Exchange's JSON shape.

Every cmdlet family goes through here so the rules are written once:
identity resolution (a missing identity is an error, never "all objects"),
proxy-address syntax / uniqueness / accepted domains, primary SMTP rules,
Name/Alias rules, and the PascalCase objects Exchange Online returns.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...exospec import CmdletSpec, cmdlet_spec
from ..model import (
    GROUP_RECIPIENT_TYPE,
    RECIPIENT_TYPE,
    Contact,
    Group,
    MailObject,
    Tenant,
    User,
    domain_of,
    primary_smtp,
)
from ..web import SandboxContext
from . import errors
from .errors import BindingError, CmdletError

ZERO_GUID = "00000000-0000-0000-0000-000000000000"
NAME_MAX = 64
ALIAS_MAX = 64
# Exchange's alias alphabet (RFC 5322 atext plus '.'); anything else is dropped when an
# alias is derived from a Name.
_ALIAS_BAD = re.compile(r"[^A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]")
_SMTP = re.compile(r"^[^@\s]+@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9\-]+)+$")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
HOSTED_OU = "OU=Microsoft Exchange Hosted Organizations,DC=SANDBOX01,DC=PROD,DC=OUTLOOK,DC=COM"


# Parameters every write accepts without changing what it does: -Confirm is a prompt,
# -Force skips one; -WhatIf is handled by the dispatcher (nothing is written).
ALWAYS_MODELED = frozenset({"Confirm", "Force", "WhatIf"})
# What every Get-* models (where the cmdlet has the parameter): see recipient.listing.
LISTING = frozenset({"Identity", "Anr", "Filter", "ResultSize", "RecipientTypeDetails"})


@dataclass
class Call:
    """One InvokeCommand call after binding: canonical parameters and the tenant."""

    ctx: SandboxContext
    tenant: Tenant
    cmdlet: str
    params: dict[str, Any]
    parameter_set: str
    warnings: list[str] = field(default_factory=list)

    def has(self, name: str) -> bool:
        return name in self.params

    def get(self, name: str, default: Any = None) -> Any:
        return self.params.get(name, default)

    def text(self, name: str) -> str | None:
        v = self.params.get(name)
        return None if v is None else as_text(v)

    @property
    def spec(self) -> CmdletSpec:
        return cmdlet_spec(self.cmdlet)


# -- loose typing (JSON carries what PowerShell would coerce) -------------------------
def as_text(value: Any) -> str:
    if isinstance(value, dict):
        # PSObject-ish {"Identity": ...} or {"value": ...} wrappers from serialisers.
        for k in ("Identity", "identity", "value", "Value", "Name"):
            if k in value:
                return as_text(value[k])
    if isinstance(value, list) and len(value) == 1:
        return as_text(value[0])
    return str(value)


def as_bool(name: str, value: Any) -> bool:
    """PowerShell's [bool] / switch coercion: true/false, $true/$false, 1/0."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    s = str(value).strip().lower().lstrip("$")
    if s in ("true", "1", "yes"):
        return True
    if s in ("false", "0", "no", ""):
        return False
    raise errors.invalid_value(name, value, "Boolean parameters accept only $true or $false.")


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [as_text(v) for v in value]
    s = as_text(value)
    return [p.strip() for p in s.split(",")] if "," in s else [s]


def is_guid(s: str) -> bool:
    return bool(_GUID.match(s))


# -- pools -------------------------------------------------------------------------
Pool = Callable[[MailObject], bool]


def is_recipient(o: MailObject) -> bool:
    if isinstance(o, User):
        return o.recipient_type_details is not None
    if isinstance(o, Group):
        return o.mail_enabled
    return isinstance(o, Contact)


def is_mailbox(o: MailObject) -> bool:
    return isinstance(o, User) and o.is_mailbox


def is_mailuser(o: MailObject) -> bool:
    return isinstance(o, User) and o.recipient_type_details == "MailUser"


def is_contact(o: MailObject) -> bool:
    return isinstance(o, Contact)


def is_distribution_group(o: MailObject) -> bool:
    return isinstance(o, Group) and o.kind in ("Distribution", "MailSecurity")


def is_dynamic_group(o: MailObject) -> bool:
    return isinstance(o, Group) and o.kind == "Dynamic"


def is_user(o: MailObject) -> bool:
    return isinstance(o, User)


def objects(tenant: Tenant, pool: Pool) -> list[MailObject]:
    return [o for o in tenant.objects() if pool(o)]


# -- identity --------------------------------------------------------------------------
def distinguished_name(tenant: Tenant, o: MailObject) -> str:
    return f"CN={o.name},OU={tenant.initial_domain},{HOSTED_OU}"


def _matches(tenant: Tenant, o: MailObject, ident: str) -> bool:
    low = ident.lower()
    if low in (o.name.lower(), o.alias.lower(), o.id.lower(), o.exchange_object_id.lower()):
        return True
    if isinstance(o, User):
        if o.user_principal_name.lower() == low:
            return True
        if o.exchange_guid and o.exchange_guid.lower() == low:
            return True
    if o.legacy_exchange_dn and o.legacy_exchange_dn.lower() == low:
        return True
    return low.startswith("cn=") and distinguished_name(tenant, o).lower() == low


def resolve(tenant: Tenant, identity: Any, pool: Pool, parameter: str = "Identity") -> MailObject:
    """The one object `identity` names in `pool`; not found / ambiguous are errors.

    Accepts what Exchange's RecipientIdParameter accepts: Name, Alias, any proxy
    address (SMTP or X500), UPN, ExternalDirectoryObjectId, Guid, ExchangeGuid,
    LegacyExchangeDN and the distinguished name.
    """
    ident = as_text(identity).strip()
    if not ident:
        raise BindingError(
            f"Cannot bind argument to parameter '{parameter}' because it is an empty string.",
            errors.VALIDATION,
        )
    found: list[MailObject] = []
    low = ident.lower()
    if "@" in ident or low.startswith(("smtp:", "x500:", "/o=")):
        owner = tenant.address_owner(ident)
        if owner is not None and pool(owner):
            found.append(owner)
    if not found and is_guid(ident):
        direct = tenant.get(low)
        if direct is not None and pool(direct):
            found.append(direct)
    if not found:
        found = [o for o in tenant.objects() if pool(o) and _matches(tenant, o, ident)]
    if not found:
        raise errors.not_found(ident)
    if len(found) > 1:
        raise errors.ambiguous_identity(ident)
    return found[0]


def resolve_many(tenant: Tenant, values: Any, pool: Pool, parameter: str) -> list[MailObject]:
    return [resolve(tenant, v, pool, parameter) for v in as_list(values)]


# -- names -------------------------------------------------------------------------
def check_name(tenant: Tenant, name: str, self_obj: MailObject | None = None) -> str:
    """Name: at most 64 characters and unique among the tenant's objects."""
    name = name.strip()
    if len(name) > NAME_MAX:
        raise errors.too_long("Name", name, NAME_MAX)
    if not name:
        raise BindingError(
            "Cannot bind argument to parameter 'Name' because it is an empty string.",
            errors.VALIDATION,
        )
    low = name.lower()
    for o in tenant.objects():
        if o is not self_obj and o.name.lower() == low and (is_recipient(o) or is_user(o)):
            raise errors.name_exists(name)
    return name


def unique_alias(tenant: Tenant, wanted: str | None, name: str) -> str:
    """An explicit alias is validated; a derived one is made unique by a numeric suffix.

    The suffix scheme is *unverified* (Exchange appends digits to a taken alias).
    """
    if wanted:
        alias = wanted.strip()
        if len(alias) > ALIAS_MAX:
            raise errors.too_long("Alias", alias, ALIAS_MAX)
        if _ALIAS_BAD.search(alias):
            raise CmdletError(
                f'The alias "{alias}" contains characters that aren\'t valid in an alias.',
                errors.DATA_VALIDATION,
            )
        return alias
    base = _ALIAS_BAD.sub("", name)[:ALIAS_MAX] or "user"
    taken = {o.alias.lower() for o in tenant.objects() if o.alias}
    alias, n = base, 1
    while alias.lower() in taken:
        suffix = str(n)
        alias = base[: ALIAS_MAX - len(suffix)] + suffix
        n += 1
    return alias


def default_domain(tenant: Tenant) -> str:
    for d in tenant.domains:
        if d.is_default:
            return d.name
    return tenant.initial_domain


# -- proxy addresses ----------------------------------------------------------------
def normalize_proxy(raw: Any) -> str:
    """'SMTP:a@b' (primary) / 'smtp:a@b' / 'X500:/o=..' ; a bare address is a secondary SMTP."""
    s = as_text(raw).strip()
    prefix, sep, rest = s.partition(":")
    if not sep or "@" in prefix:
        prefix, rest = "smtp", s
    if prefix.lower() == "smtp":
        if not _SMTP.match(rest):
            raise CmdletError(
                f'The email address "{rest}" isn\'t correct. Please use this format: user name, '
                "the @ sign, followed by the domain name. For example, tonysmith@contoso.com or "
                "tony.smith@contoso.com.",
                errors.DATA_VALIDATION,
            )
        return ("SMTP:" if prefix == "SMTP" else "smtp:") + rest
    if prefix.lower() == "x500":
        # X500 proxies are carried as given (Exchange does not validate the DN).
        if not rest:
            raise CmdletError(f'The proxy address "{s}" is invalid.', errors.DATA_VALIDATION)
        return "X500:" + rest
    # Other proxy types (SIP, EUM, ...) are kept verbatim.
    return f"{prefix}:{rest}"


def smtp_of(raw: Any, parameter: str) -> str:
    """A plain SMTP address from 'a@b' or 'SMTP:a@b' (the ProxyAddress / SmtpAddress types)."""
    proxy = normalize_proxy(raw)
    if not proxy.lower().startswith("smtp:"):
        raise errors.invalid_value(parameter, raw, "An SMTP address is required.")
    return proxy[5:]


def _key(proxy: str) -> str:
    kind, _, value = proxy.partition(":")
    return f"{kind.lower()}:{value.lower()}"


def set_primary(addresses: list[str], smtp: str) -> list[str]:
    """Make `smtp` the primary SMTP address, demoting the old one."""
    out = ["smtp:" + a[5:] if a.startswith("SMTP:") else a for a in addresses]
    out = [a for a in out if _key(a) != f"smtp:{smtp.lower()}"]
    return ["SMTP:" + smtp, *out]


def fix_primary(addresses: list[str]) -> list[str]:
    """Exactly one 'SMTP:'. None given: the first SMTP address becomes primary."""
    primaries = [a for a in addresses if a.startswith("SMTP:")]
    if len(primaries) > 1:
        raise CmdletError(
            "There are multiple primary SMTP addresses. Please ensure there is only one primary "
            "address for each address type.",
            errors.DATA_VALIDATION,
        )
    if not primaries:
        for i, a in enumerate(addresses):
            if a.startswith("smtp:"):
                return [*addresses[:i], "SMTP:" + a[5:], *addresses[i + 1 :]]
    return addresses


def dedupe(addresses: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for a in addresses:
        k = _key(a)
        if k not in seen:
            seen.add(k)
            out.append(a)
    return out


def updated_addresses(current: list[str], value: Any) -> list[str]:
    """-EmailAddresses: a list replaces; {"Add": [...], "Remove": [...]} edits.

    The hashtable form arrives with "@odata.type": "#Exchange.GenericHashTable"
    (ExoHelper Invoke-ExoCommand decorates every hashtable parameter so).
    """
    if isinstance(value, Mapping):
        adds = [normalize_proxy(a) for a in as_list(_ci(value, "Add"))]
        removes = {_key(normalize_proxy(r)) for r in as_list(_ci(value, "Remove"))}
        out = [a for a in current if _key(a) not in removes]
        for a in adds:
            if a.startswith("SMTP:"):
                out = set_primary(out, a[5:])
            elif _key(a) not in {_key(x) for x in out}:
                out.append(a)
        return fix_primary(dedupe(out))
    return fix_primary(dedupe(normalize_proxy(a) for a in as_list(value)))


def _ci(mapping: Mapping[str, Any], key: str) -> Any:
    for k, v in mapping.items():
        if k.lower() == key.lower():
            return v
    return None


def check_addresses(
    tenant: Tenant,
    obj: MailObject | None,
    addresses: Iterable[str],
    *,
    accepted_only: bool,
    exempt: Iterable[str] = (),
) -> None:
    """Proxy uniqueness across the tenant; SMTP domains must be accepted where Exchange says so."""
    exempt_keys = {f"smtp:{e.lower()}" for e in exempt}
    for a in addresses:
        k = _key(a)
        if accepted_only and k.startswith("smtp:") and k not in exempt_keys:
            domain = domain_of(a[5:])
            if tenant.accepted_domain(domain) is None:
                raise errors.not_accepted_domain(domain)
        if k.startswith(("smtp:", "x500:")):
            owner = tenant.address_owner(a)
            if owner is not None and owner is not obj:
                raise errors.proxy_exists(a, owner.name)


def new_addresses(tenant: Tenant, alias: str, primary: str | None) -> list[str]:
    """Addresses Exchange Online stamps on a new group: primary + alias@initial domain."""
    first = primary or f"{alias}@{default_domain(tenant)}"
    out = ["SMTP:" + first]
    initial = f"{alias}@{tenant.initial_domain}"
    if initial.lower() != first.lower():
        out.append("smtp:" + initial)
    return out


def mailuser_addresses(tenant: Tenant, alias: str, external: str | None, upn: str) -> list[str]:
    """The addresses New-MailUser stamps in Exchange Online, in one place.

    Documented (office-docs-powershell New-MailUser.md, -ExternalEmailAddress, -PrimarySmtpAddress
    and -Alias): the ExternalEmailAddress becomes the primary SMTP address by default;
    -PrimarySmtpAddress is functional only on-premises; "The Alias parameter never generates or
    updates the primary email address of a mail contact or a mail user".

    *unverified* (not on the cmdlet's page; what tenants show): the MOERA
    `alias@<tenant>.onmicrosoft.com` is stamped as a secondary address; the
    MicrosoftOnlineServicesID (UPN) is not stamped as a proxy; a MailUser created without
    -ExternalEmailAddress (MicrosoftOnlineServicesID set) gets its UPN as the primary.
    """
    first = external or upn
    out = ["SMTP:" + first]
    moera = f"{alias}@{tenant.initial_domain}"
    if moera.lower() != first.lower():
        out.append("smtp:" + moera)
    return out


def external_proxy(addresses: list[str], old: str | None, new: str | None, keep: bool) -> list[str]:
    """A MailUser's addresses after its ExternalEmailAddress is (re)set from `old` to `new`.

    Documented (Set-MailUser.md, -ExternalEmailAddress): the old external address isn't kept as
    a proxy address. The primary follows the external address while it is the default (the old
    external address was the primary), else it stays where an admin put it.
    *unverified*: whether Exchange Online keeps the ExternalEmailAddress among the proxy
    addresses once another address is primary (and puts it back when an -EmailAddresses list
    leaves it out): the sandbox setting `Settings.mailuser_external_proxy` (`keep`) decides.
    """
    out = list(addresses)
    if old is not None and new is not None and old.lower() != new.lower():
        was_primary = any(a.startswith("SMTP:") and a[5:].lower() == old.lower() for a in out)
        out = [a for a in out if _key(a) != f"smtp:{old.lower()}"]
        if was_primary:
            return set_primary(out, new)
    if new is not None and keep and f"smtp:{new.lower()}" not in {_key(a) for a in out}:
        out.append("smtp:" + new)
    return out


def new_object_guid() -> str:
    return str(uuid.uuid4())


# -- results -----------------------------------------------------------------------
RESULT_SIZE_DEFAULT = 1000
RESULT_SIZE_WARNING = (
    "By default only the first 1000 items are returned. Use the ResultSize parameter to "
    'specify the number of items returned. To return all items, specify "-ResultSize '
    'Unlimited". Be aware that, depending upon the actual number of items, returning all '
    "items can take a long time and consume a large amount of memory. Also, we don't "
    "recommend storing the results in a variable. Instead, pipe the results to another task "
    "or script to perform batch changes."
)


def limit(call: Call, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """-ResultSize: a number or 'Unlimited'; 1000 by default, with Exchange's warning."""
    raw = call.get("ResultSize")
    if raw is None:
        if len(rows) > RESULT_SIZE_DEFAULT:
            call.warnings.append(RESULT_SIZE_WARNING)
        return rows[:RESULT_SIZE_DEFAULT]
    text = as_text(raw).strip()
    if text.lower() == "unlimited":
        return rows
    try:
        n = int(text)
    except ValueError as exc:
        raise errors.invalid_value("ResultSize", raw, "Specify a number or Unlimited.") from exc
    if n < 1:
        raise errors.invalid_value("ResultSize", raw, "The value must be greater than 0.")
    return rows[:n]


def byte_size(n: int) -> str:
    """Exchange's ByteQuantifiedSize text, e.g. '48.56 MB (50,917,744 bytes)'.

    Four significant digits in the largest binary unit, as Get-MailboxStatistics prints.
    """
    units = ["B", "KB", "MB", "GB", "TB"]
    value, unit = float(n), 0
    while value >= 1024 and unit < len(units) - 1:
        value /= 1024
        unit += 1
    shown = f"{int(value)}" if unit == 0 else f"{value:.4g}"
    return f"{shown} {units[unit]} ({n:,} bytes)"


# -- Exchange JSON ------------------------------------------------------------------
def recipient_type_details(o: MailObject) -> str:
    if isinstance(o, User):
        return o.recipient_type_details or "User"
    if isinstance(o, Group):
        return GROUP_RECIPIENT_TYPE[o.kind] or "NonUniversalGroup"
    return "MailContact"


def name_of(tenant: Tenant, object_id: str | None) -> str | None:
    if not object_id:
        return None
    o = tenant.get(object_id)
    return o.name if o is not None else None


def base_json(tenant: Tenant, o: MailObject) -> dict[str, Any]:
    rtd = recipient_type_details(o)
    return {
        "Identity": o.name,
        "Id": o.name,
        "Name": o.name,
        "Alias": o.alias,
        "DisplayName": o.display_name,
        "PrimarySmtpAddress": o.primary_smtp,
        "EmailAddresses": list(o.email_addresses),
        "RecipientType": RECIPIENT_TYPE.get(rtd, rtd),
        "RecipientTypeDetails": rtd,
        "LegacyExchangeDN": o.legacy_exchange_dn,
        "ExternalDirectoryObjectId": o.id,
        "Guid": o.exchange_object_id,
        "DistinguishedName": distinguished_name(tenant, o),
        "OrganizationalUnit": f"{tenant.initial_domain}",
        "HiddenFromAddressListsEnabled": o.hidden_from_address_lists,
        "WhenCreated": o.created,
        "WhenChanged": o.changed,
        "WhenCreatedUTC": o.created,
        "WhenChangedUTC": o.changed,
        "IsValid": True,
    }


def user_json(tenant: Tenant, u: User) -> dict[str, Any]:
    d = base_json(tenant, u)
    d.update(
        {
            "UserPrincipalName": u.user_principal_name,
            "MicrosoftOnlineServicesID": u.user_principal_name,
            "WindowsEmailAddress": u.primary_smtp,
            "ExchangeGuid": u.exchange_guid or ZERO_GUID,
            "ArchiveGuid": u.archive_guid or ZERO_GUID,
            "ExternalEmailAddress": u.external_email_address,
            "ForwardingAddress": name_of(tenant, u.forwarding_address),
            "ForwardingSmtpAddress": u.forwarding_smtp_address,
            "DeliverToMailboxAndForward": u.deliver_to_mailbox_and_forward,
            "FirstName": u.given_name,
            "LastName": u.surname,
            "AccountDisabled": not u.account_enabled,
            "UsageLocation": u.usage_location,
        }
    )
    if u.is_mailbox:
        d["IsMailboxEnabled"] = True
    return d


def contact_json(tenant: Tenant, c: Contact) -> dict[str, Any]:
    d = base_json(tenant, c)
    d.update(
        {
            "ExternalEmailAddress": c.external_email_address,
            "WindowsEmailAddress": c.primary_smtp,
            "FirstName": c.first_name,
            "LastName": c.last_name,
        }
    )
    return d


def group_json(tenant: Tenant, g: Group) -> dict[str, Any]:
    d = base_json(tenant, g)
    d.update(
        {
            "GroupType": "Universal, SecurityEnabled" if g.security_enabled else "Universal",
            "ManagedBy": [n for n in (name_of(tenant, m) for m in g.managed_by) if n],
            "Notes": g.description,
            "RequireSenderAuthenticationEnabled": g.require_sender_authentication,
            "WindowsEmailAddress": g.primary_smtp,
        }
    )
    if g.kind == "Dynamic":
        d["RecipientFilter"] = g.recipient_filter
        d["IncludedRecipients"] = g.included_recipients
    return d


def to_json(tenant: Tenant, o: MailObject) -> dict[str, Any]:
    if isinstance(o, User):
        return user_json(tenant, o)
    if isinstance(o, Group):
        return group_json(tenant, o)
    assert isinstance(o, Contact)
    return contact_json(tenant, o)


def primary_of(o: MailObject) -> str | None:
    return primary_smtp(o.email_addresses)


# -- dispatch table ------------------------------------------------------------------
Handler = Callable[[Call], list[dict[str, Any]]]


@dataclass(frozen=True)
class Command:
    """A cmdlet the sandbox serves: its handler and the parameters it really models."""

    name: str
    run: Handler
    modeled: frozenset[str]
    write: bool


class Registry(dict[str, Command]):
    """Cmdlets of one family, keyed by lower-case name."""

    def cmdlet(
        self, name: str, *, params: Iterable[str] = (), listing: bool = False
    ) -> Callable[[Handler], Handler]:
        """Register a handler; `listing` adds the Get-* listing parameters the cmdlet has."""

        def register(fn: Handler) -> Handler:
            spec = cmdlet_spec(name)  # a typo in the table fails at import, not at run time
            names = {p.name for p in spec.canonical_parameters}
            shared = ALWAYS_MODELED | (LISTING if listing else frozenset())
            modeled = frozenset(params) | (shared & names)
            unknown = modeled - names
            assert not unknown, f"{name}: {sorted(unknown)} not in the spec"
            self[name.lower()] = Command(
                spec.name, fn, modeled, write=not name.lower().startswith("get-")
            )
            return fn

        return register


# -- shared Set-* semantics -----------------------------------------------------------
def apply_common(
    call: Call,
    obj: MailObject,
    *,
    accepted_only: bool = True,
    exempt: Iterable[str] = (),
    base: list[str] | None = None,
    primary_params: tuple[str, ...] = ("WindowsEmailAddress", "PrimarySmtpAddress"),
    adjust: Callable[[list[str]], list[str]] | None = None,
) -> None:
    """-Name, -DisplayName, -Alias, -EmailAddresses, -WindowsEmailAddress/-PrimarySmtpAddress,
    -HiddenFromAddressListsEnabled: validated first, then applied together.

    `primary_params`: the parameters that set the primary address on this cmdlet (a cmdlet
    whose -PrimarySmtpAddress is functional only on-premises leaves it out); `adjust`: what
    the service does to the resulting list on its own (before it is validated)."""
    t = call.tenant
    name = check_name(t, as_text(call.get("Name")), obj) if call.has("Name") else None
    alias = unique_alias(t, as_text(call.get("Alias")), obj.name) if call.has("Alias") else None
    addresses = list(obj.email_addresses if base is None else base)
    if call.has("EmailAddresses"):
        addresses = updated_addresses(addresses, call.get("EmailAddresses"))
    for param in primary_params:
        if call.has(param):
            addresses = set_primary(addresses, smtp_of(call.get(param), param))
    if adjust is not None:
        addresses = adjust(addresses)
    if addresses != obj.email_addresses:
        if not any(a.startswith("SMTP:") for a in addresses):
            raise CmdletError(
                "The primary SMTP address can't be removed. Specify a new primary SMTP address.",
                errors.DATA_VALIDATION,
            )  # wording *unverified*
        check_addresses(t, obj, addresses, accepted_only=accepted_only, exempt=exempt)
    if name is not None:
        obj.name = name
    if call.has("DisplayName"):
        obj.display_name = as_text(call.get("DisplayName"))
    if alias is not None:
        obj.alias = alias
    obj.email_addresses = addresses
    if call.has("HiddenFromAddressListsEnabled"):
        obj.hidden_from_address_lists = as_bool(
            "HiddenFromAddressListsEnabled", call.get("HiddenFromAddressListsEnabled")
        )


COMMON_SET = (
    "Identity",
    "Name",
    "DisplayName",
    "Alias",
    "EmailAddresses",
    "WindowsEmailAddress",
    "HiddenFromAddressListsEnabled",
)


def remove_object(tenant: Tenant, obj: MailObject) -> None:
    """Delete an object: memberships and forwarding pointing at it go too; its addresses free."""
    tenant.users.pop(obj.id, None)
    tenant.groups.pop(obj.id, None)
    tenant.contacts.pop(obj.id, None)
    for g in tenant.groups.values():
        if obj.id in g.members or obj.id in g.managed_by:
            g.members = [m for m in g.members if m != obj.id]
            g.managed_by = [m for m in g.managed_by if m != obj.id]
            tenant.touch(g)
    for u in tenant.users.values():
        if u.forwarding_address == obj.id:
            u.forwarding_address = None
            tenant.touch(u)
    tenant.touch()
