"""Mail routing across the sandbox tenant pair: where would Exchange Online put this message?

`route(world, to)` follows one message to one address the way Exchange Online's
categorizer does and returns a `Delivery`: every final disposition (`deliveries`)
and the trail of objects it passed (`hops`). It reads the World and changes
nothing but the time-driven state: it calls `Tenant.settle()` under `world.lock`
first, which only applies transitions that are already due (a licensed MailUser
whose mailbox is ready becomes a mailbox), exactly what a later read would see.

What is modelled (sources in the comments where it happens):

- Authoritative tenant by accepted (verified) domain; anything else is outside
  both tenants (`external`). Address lookup is by SMTP proxy, case-insensitive;
  X500 / LegacyExchangeDN raw (`/o=...`, needs the sender's tenant or a hint) or
  IMCEAEX-encapsulated (`IMCEAEX-_o=...@domain`, resolved in the domain's tenant).
- Mailboxes: ForwardingAddress (internal recipient; wins over
  ForwardingSmtpAddress), DeliverToMailboxAndForward, else the Inbox.
- MailUser / MailContact: routed to ExternalEmailAddress (targetAddress). That
  is routing, not automatic forwarding.
- Groups: members expanded (nested, deduplicated: one copy per recipient per
  message); dynamic DLs by evaluating a simple RecipientFilter; Microsoft 365
  groups deliver to the group mailbox.
- Automatic forwarding out of the forwarding tenant's organization: the
  outbound spam policy that applies to the forwarding mailbox (custom policies by
  their rule's scope and priority, else Default; Automatic/Off → NDR 5.7.520) and
  the remote domain matching the destination (AutoForwardEnabled false → silently
  dropped), decided by `coexist.autoforward`, as preflight decides it.
- Loops: revisiting an object on the same forwarding/targetAddress chain, or a
  chain longer than the hop limit → NDR 5.4.14. The shortest is a mailbox that
  forwards to one of its own addresses (or a contact whose targetAddress is its own
  address): what cutover would build from a target address taken from
  New-MailUser's output (the source address). *unverified*: whether Exchange ends a
  self-forward with 5.4.14 or drops it silently; either way nothing is delivered.

Outcomes: `delivered`, `ndr`, `external`, and `dropped` (the sandbox's name for a
message Exchange discards without an NDR: a remote-domain auto-forward block, or
a DL that expands to nobody).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .. import autoforward as af  # shared pure helpers
from ..model import decode_imceaex
from .model import (
    GROUP_RECIPIENT_TYPE,
    Contact,
    Group,
    MailObject,
    Tenant,
    User,
    World,
)

Outcome = Literal["delivered", "ndr", "external", "dropped"]
Path = tuple[tuple[str, str], ...]

# -- Microsoft's NDR texts, in one place --------------------------------------------
# learn.microsoft.com/exchange/mail-flow-best-practices/non-delivery-reports-in-exchange-online/
# fix-error-code-550-5-1-10-in-exchange-online
NDR_RECIPIENT_NOT_FOUND = (
    "5.1.10",
    "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
)
# IMCEAEX NDR (learn.microsoft.com/exchange/troubleshoot/email-delivery/imceaex-ndr and
# NDRs quoted in public posts: "#550 5.1.1 RESOLVER.ADR.ExRecipNotFound; not found ##").
NDR_X500_NOT_FOUND = ("5.1.1", "550 5.1.1 RESOLVER.ADR.ExRecipNotFound; not found")
# learn.microsoft.com/defender-office-365/outbound-spam-policies-external-email-forwarding
NDR_EXTERNAL_FORWARDING = (
    "5.7.520",
    "550 5.7.520 Access denied, Your organization does not allow external forwarding. "
    "Please contact your administrator for further assistance. AS(7555)",
)
# Text as Exchange Online NDRs quote it (a trailing "ATTR34 [server]" is omitted).
NDR_LOOP = ("5.4.14", "554 5.4.14 Hop count exceeded - possible mail loop")
# *unverified*: a MailUser / contact without an ExternalEmailAddress cannot exist in
# Exchange Online; the sandbox can hold one, so it answers RFC 3463's "unable to route".
NDR_NO_ROUTE = ("5.4.4", "550 5.4.4 Unable to route: the recipient has no ExternalEmailAddress")

# *unverified*: Exchange counts Received headers (MaxHopCount); Exchange Online's
# limit is not published. 30 is close to what loop NDRs show.
MAX_HOPS = 30


@dataclass(frozen=True)
class Rules:
    """Knobs where Microsoft's behaviour is not confirmed; change them here only."""

    max_hops: int = MAX_HOPS
    # *unverified*: whether Set-Mailbox -ForwardingAddress <MailUser/contact whose
    # targetAddress is outside the org> counts as external automatic forwarding for
    # the outbound spam policy. Microsoft documents Inbox rules and SMTP forwarding
    # (ForwardingSmtpAddress) as automatic forwarding and says forwarding between
    # internal users is not affected; the ForwardingAddress recipient is internal,
    # so by default the sandbox treats the onward targetAddress hop as routing.
    forwarding_address_via_target_is_autoforward: bool = False


@dataclass(frozen=True)
class Hop:
    """One step of the trail: which object did what with which address."""

    tenant: str | None
    object: str | None
    kind: str | None
    action: str  # resolve | deliver | forward | route | expand | external | ndr | drop
    address: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Leg:
    """One final disposition of the message."""

    outcome: Outcome
    tenant: str | None = None
    mailbox: str | None = None  # primary SMTP of the receiving mailbox
    folder: str | None = None
    ndr_code: str | None = None
    ndr_text: str | None = None
    address: str | None = None  # where it ended: mailbox, external or failing address
    object: str | None = None  # object id of the receiving / failing recipient

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Delivery:
    """The result of routing one message to one address."""

    hops: tuple[Hop, ...] = ()
    deliveries: tuple[Leg, ...] = ()

    @property
    def first(self) -> Leg:
        return self.deliveries[0] if self.deliveries else Leg("dropped")

    @property
    def outcome(self) -> Outcome:
        return self.first.outcome

    @property
    def tenant(self) -> str | None:
        return self.first.tenant

    @property
    def mailbox(self) -> str | None:
        return self.first.mailbox

    @property
    def folder(self) -> str | None:
        return self.first.folder

    @property
    def address(self) -> str | None:
        return self.first.address

    @property
    def ndr_code(self) -> str | None:
        return self.first.ndr_code

    @property
    def ndr_text(self) -> str | None:
        return self.first.ndr_text

    def delivered(self) -> list[tuple[str, str]]:
        """(tenant, mailbox) of every mailbox that received a copy."""
        return [
            (leg.tenant, leg.mailbox)
            for leg in self.deliveries
            if leg.outcome == "delivered" and leg.tenant and leg.mailbox
        ]

    def to_dict(self) -> dict[str, Any]:
        """Top-level fields describe the first disposition; `deliveries` lists them all."""
        first = self.first
        return {
            "outcome": first.outcome,
            "tenant": first.tenant,
            "mailbox": first.mailbox,
            "folder": first.folder,
            "ndr_code": first.ndr_code,
            "ndr_text": first.ndr_text,
            "address": first.address,
            "hops": [h.to_dict() for h in self.hops],
            "deliveries": [leg.to_dict() for leg in self.deliveries],
        }


# -- addresses ------------------------------------------------------------------------
@dataclass(frozen=True)
class Address:
    """A parsed recipient: SMTP (with domain), raw X500, or X500 carried in IMCEAEX."""

    kind: Literal["smtp", "x500"]
    value: str  # the SMTP address or the X500 DN
    domain: str | None  # SMTP / IMCEAEX domain; None for a raw X500 DN
    text: str  # as given

    @property
    def lookup(self) -> str:
        return f"{self.kind}:{self.value}"


def parse_address(text: str) -> Address:
    """Parse 'a@b', 'SMTP:a@b', 'X500:/o=...', '/o=...' or 'IMCEAEX-...@b'."""
    raw = text.strip().strip("<>")
    low = raw.lower()
    if low.startswith("x500:") or low.startswith("smtp:"):
        raw, low = raw[5:], low[5:]
    if low.startswith("/o="):
        return Address("x500", raw, None, text)
    local, at, domain = raw.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"not an email address: {text!r}")
    if local.upper().startswith("IMCEAEX-"):
        return Address("x500", decode_imceaex(local), domain.lower(), text)
    return Address("smtp", raw, domain.lower(), text)


def _strip_smtp(value: str | None) -> str | None:
    if not value:
        return None
    return value[5:] if value.lower().startswith("smtp:") else value


def kind_of(obj: MailObject) -> str:
    """Exchange RecipientTypeDetails of a recipient."""
    if isinstance(obj, User):
        return obj.recipient_type_details or "User"
    if isinstance(obj, Contact):
        return "MailContact"
    if isinstance(obj, Group):
        return GROUP_RECIPIENT_TYPE.get(obj.kind) or "Group"
    return type(obj).__name__


def scope_groups(tenant: Tenant, obj: MailObject) -> frozenset[str]:
    """Ids of the groups an outbound spam rule can scope by that contain `obj`: distribution
    groups, mail-enabled security groups and Microsoft 365 groups (dynamic groups are not
    supported; Defender docs, outbound-spam-policies-configure), nested per the flag."""
    members_of = {
        g.id: g.members for g in tenant.groups.values() if g.mail_enabled and g.kind != "Dynamic"
    }
    return af.groups_containing(obj.id, members_of)


def forwarding_verdict(tenant: Tenant, sender: MailObject | None, domain: str) -> af.Verdict:
    """The outbound spam policy and remote domain that apply when `sender` automatically
    forwards to `domain` out of `tenant`: the decision preflight makes, from the same data.

    `sender` None (a forward whose mailbox is not known here) matches no scoped rule.
    """
    policies = [
        af.OutboundPolicy(p.name, p.auto_forwarding_mode, p.is_default)
        for p in tenant.outbound_spam_policies
    ]
    rules = [
        af.OutboundRule(
            r.name,
            r.policy,
            r.priority,
            r.enabled,
            senders=frozenset(r.senders),
            member_of=frozenset(r.member_of),
            domains=tuple(r.sender_domains),
            except_senders=frozenset(r.except_senders),
            except_member_of=frozenset(r.except_member_of),
            except_domains=tuple(r.except_sender_domains),
        )
        for r in tenant.outbound_spam_rules
    ]
    remote = [
        af.RemoteDomain(rd.name, rd.domain_name, rd.auto_forward_enabled)
        for rd in tenant.remote_domains
    ]
    who = (
        af.Sender(sender.id, sender.primary_smtp or "", scope_groups(tenant, sender))
        if sender is not None
        else af.Sender(None, "")
    )
    return af.forwarding_verdict(policies, rules, remote, who, domain)


# -- dynamic distribution groups ----------------------------------------------------
_TOKEN = re.compile(r"\s*(\(|\)|-[A-Za-z]+|'(?:[^']|'')*'|\"[^\"]*\"|\$\w+|[^\s()]+)")
_PROPERTIES: dict[str, Callable[[MailObject], str | None]] = {
    "department": lambda o: getattr(o, "department", None),
    "recipienttypedetails": kind_of,
    "recipienttype": lambda o: _recipient_type(kind_of(o)),
    "company": lambda o: getattr(o, "company_name", None),
    "city": lambda o: getattr(o, "city", None),
    "title": lambda o: getattr(o, "job_title", None),
    "countryorregion": lambda o: getattr(o, "country", None),
    "displayname": lambda o: o.display_name,
    "name": lambda o: o.name,
    "alias": lambda o: o.alias,
    "primarysmtpaddress": lambda o: o.primary_smtp,
}
# Precanned -IncludedRecipients values (New-DynamicDistributionGroup reference).
_PRECANNED: dict[str, tuple[str, ...]] = {
    "mailboxusers": ("UserMailbox", "SharedMailbox"),
    "resources": ("RoomMailbox", "EquipmentMailbox"),
    "mailcontacts": ("MailContact",),
    "mailusers": ("MailUser",),
    "mailgroups": (
        "MailUniversalDistributionGroup",
        "MailUniversalSecurityGroup",
        "DynamicDistributionGroup",
    ),
}


def _recipient_type(details: str) -> str:
    if details in ("SharedMailbox", "RoomMailbox", "EquipmentMailbox"):
        return "UserMailbox"
    return details


class FilterError(ValueError):
    """A RecipientFilter outside the subset the sandbox evaluates."""


class _FilterParser:
    """OPATH subset: -and/-or/-not, parentheses, -eq/-ne/-like/-notlike on known properties."""

    def __init__(self, text: str) -> None:
        self.tokens = [m.group(1) for m in _TOKEN.finditer(text) if m.group(1)]
        self.pos = 0

    def parse(self) -> Callable[[MailObject], bool]:
        pred = self._or()
        if self.pos != len(self.tokens):
            raise FilterError(f"unexpected {self.tokens[self.pos]!r}")
        return pred

    def _peek(self) -> str | None:
        return self.tokens[self.pos].lower() if self.pos < len(self.tokens) else None

    def _take(self) -> str:
        if self.pos >= len(self.tokens):
            raise FilterError("unexpected end of filter")
        self.pos += 1
        return self.tokens[self.pos - 1]

    def _or(self) -> Callable[[MailObject], bool]:
        parts = [self._and()]
        while self._peek() == "-or":
            self._take()
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else (lambda o: any(p(o) for p in parts))

    def _and(self) -> Callable[[MailObject], bool]:
        parts = [self._not()]
        while self._peek() == "-and":
            self._take()
            parts.append(self._not())
        return parts[0] if len(parts) == 1 else (lambda o: all(p(o) for p in parts))

    def _not(self) -> Callable[[MailObject], bool]:
        if self._peek() == "-not":
            self._take()
            inner = self._not()
            return lambda o: not inner(o)
        if self._peek() == "(":
            self._take()
            inner = self._or()
            if self._take() != ")":
                raise FilterError("missing ')'")
            return inner
        return self._comparison()

    def _comparison(self) -> Callable[[MailObject], bool]:
        prop, op, value = self._take(), self._take().lower(), _literal(self._take())
        getter = _PROPERTIES.get(prop.lower())
        if getter is None:
            raise FilterError(f"property {prop!r} is not modelled")
        if op in ("-eq", "-ne"):
            want = value.lower() if value is not None else None

            def eq(o: MailObject) -> bool:
                got = getter(o)
                return (got.lower() if got is not None else None) == want

            return eq if op == "-eq" else (lambda o: not eq(o))
        if op in ("-like", "-notlike") and value is not None:
            pattern = value.lower()

            def like(o: MailObject) -> bool:
                got = getter(o)
                return got is not None and fnmatch.fnmatchcase(got.lower(), pattern)

            return like if op == "-like" else (lambda o: not like(o))
        raise FilterError(f"operator {op!r} is not modelled")


def _literal(token: str) -> str | None:
    if token.lower() == "$null":
        return None
    if token[:1] == "'" and token[-1:] == "'":
        return token[1:-1].replace("''", "'")
    if token[:1] == '"' and token[-1:] == '"':
        return token[1:-1]
    return token


def dynamic_members(tenant: Tenant, group: Group) -> list[MailObject]:
    """Recipients a dynamic DL expands to now (RecipientFilter or IncludedRecipients)."""
    if group.recipient_filter:
        pred = _FilterParser(group.recipient_filter).parse()
    elif group.included_recipients:
        wanted = {p.strip().lower() for p in group.included_recipients.split(",")}
        kinds = {k for w in wanted for k in _PRECANNED.get(w, ())}
        every = "allrecipients" in wanted

        def pred(o: MailObject) -> bool:
            return every or kind_of(o) in kinds

    else:
        return []
    return [o for o in _recipients(tenant) if o.id != group.id and pred(o)]


def _recipients(tenant: Tenant) -> Iterator[MailObject]:
    for obj in tenant.objects():
        if isinstance(obj, User) and obj.recipient_type_details is None:
            continue
        if isinstance(obj, Group) and not obj.mail_enabled:
            continue
        yield obj


# -- the router -------------------------------------------------------------------------
@dataclass
class _Router:
    world: World
    rules: Rules
    hops: list[Hop] = field(default_factory=list)
    legs: list[Leg] = field(default_factory=list)
    delivered: set[tuple[str, str]] = field(default_factory=set)
    expanded: set[tuple[str, str]] = field(default_factory=set)
    external: set[str] = field(default_factory=set)
    processed: set[tuple[str, str]] = field(default_factory=set)

    # -- where an address lives
    def authoritative(self, domain: str) -> str | None:
        """Key of the tenant with `domain` as a verified accepted domain."""
        d = domain.lower()
        for key, tenant in self.world.tenants.items():
            if any(dom.name.lower() == d and dom.is_verified for dom in tenant.domains):
                return key
        return None

    def hop(
        self, key: str | None, obj: MailObject | None, action: str, address: str | None
    ) -> None:
        kind = kind_of(obj) if obj is not None else None
        self.hops.append(Hop(key, obj.id if obj else None, kind, action, address))

    def ndr(
        self, key: str | None, obj: MailObject | None, address: str | None, ndr: tuple[str, str]
    ) -> None:
        self.hop(key, obj, "ndr", address)
        self.legs.append(
            Leg(
                "ndr",
                key,
                ndr_code=ndr[0],
                ndr_text=ndr[1],
                address=address,
                object=obj.id if obj else None,
            )
        )

    # -- addresses
    def route_address(
        self,
        addr: Address,
        context: str | None,
        path: Path,
        forwarded_by: str | None,
        forwarder: MailObject | None = None,
    ) -> None:
        """Route to an address. `forwarded_by`: key of the tenant auto-forwarding it;
        `forwarder`: the mailbox doing so (its outbound spam policy applies)."""
        key = context if addr.domain is None else self.authoritative(addr.domain)
        if addr.domain is None and key is None:
            raise ValueError("a raw X500 address needs the sender's tenant or tenant_hint")
        if (
            forwarded_by is not None
            and key != forwarded_by
            and not self.may_forward(forwarded_by, addr, forwarder)
        ):
            return
        if key is None:
            # Outside both tenants: it leaves as SMTP (an IMCEAEX address as written).
            self.deliver_external(addr.value if addr.kind == "smtp" else addr.text.strip())
            return
        owner = self.world.tenants[key].address_owner(addr.lookup)
        if owner is None:
            self.ndr(
                key,
                None,
                addr.text,
                NDR_X500_NOT_FOUND if addr.kind == "x500" else NDR_RECIPIENT_NOT_FOUND,
            )
            return
        self.hop(key, owner, "resolve", addr.text)
        self.route_object(key, owner, path, via_forwarding_address=None)

    def may_forward(self, key: str, addr: Address, forwarder: MailObject | None) -> bool:
        """Outbound checks on `forwarder`'s automatic forwarding out of tenant `key`.

        The outbound spam policy applying to the forwarder: Automatic (= Off since
        2020) and Off block with NDR 5.7.520; On allows (learn.microsoft.com/
        defender-office-365/outbound-spam-policies-external-email-forwarding). When
        the policy allows, the remote domain can still block: with AutoForwardEnabled
        $false the forwarded copy is dropped and nobody is notified (Microsoft
        Exchange Team blog "The many ways to block automatic email forwarding in
        Exchange Online": "The user is not notified their forwarded message is dropped").
        """
        verdict = forwarding_verdict(self.world.tenants[key], forwarder, addr.domain or "")
        if not verdict.policy_allows:
            self.ndr(key, None, addr.value, NDR_EXTERNAL_FORWARDING)
            return False
        if not verdict.remote_domain_allows:
            self.hop(key, None, "drop", addr.value)
            self.legs.append(Leg("dropped", key, address=addr.value))
            return False
        return True

    def deliver_external(self, address: str) -> None:
        self.hop(None, None, "external", address)
        if address.lower() not in self.external:  # one copy per recipient per message
            self.external.add(address.lower())
            self.legs.append(Leg("external", None, address=address))

    # -- recipients
    def route_object(
        self, key: str, obj: MailObject, path: Path, via_forwarding_address: str | None
    ) -> None:
        node = (key, obj.id)
        if isinstance(obj, Group):
            self.expand(key, obj, (*path, node))
            return
        if node in path or len(path) >= self.rules.max_hops:
            self.ndr(key, obj, obj.primary_smtp, NDR_LOOP)
            return
        if node in self.processed:
            # Reached again on another branch (two DLs, a forward to someone also
            # addressed): the categorizer handles each recipient once per message.
            return
        self.processed.add(node)
        path = (*path, node)
        if isinstance(obj, User) and obj.is_mailbox:
            self.mailbox(key, obj, path)
        elif isinstance(obj, (User, Contact)):
            self.follow_target(key, obj, path, via_forwarding_address)

    def mailbox(self, key: str, user: User, path: Path) -> None:
        """Set-Mailbox forwarding: ForwardingAddress wins over ForwardingSmtpAddress
        (learn.microsoft.com/exchange/recipients-in-exchange-online/manage-user-mailboxes/
        configure-email-forwarding); DeliverToMailboxAndForward keeps a copy."""
        tenant = self.world.tenants[key]
        internal = tenant.get(user.forwarding_address) if user.forwarding_address else None
        if internal is not None and not _is_recipient(internal):
            internal = None
        smtp = None if internal is not None else _strip_smtp(user.forwarding_smtp_address)
        if (internal is None and smtp is None) or user.deliver_to_mailbox_and_forward:
            self.deliver(key, user)
        if internal is not None:
            self.hop(key, user, "forward", internal.primary_smtp)
            self.route_object(key, internal, path, via_forwarding_address=key)
        elif smtp is not None:
            self.hop(key, user, "forward", smtp)
            self.route_address(parse_address(smtp), key, path, forwarded_by=key, forwarder=user)

    def deliver(self, key: str, obj: MailObject) -> None:
        if (key, obj.id) in self.delivered:  # one copy per recipient per message
            return
        self.delivered.add((key, obj.id))
        self.hop(key, obj, "deliver", obj.primary_smtp)
        self.legs.append(
            Leg(
                "delivered", key, obj.primary_smtp, "Inbox", address=obj.primary_smtp, object=obj.id
            )
        )

    def follow_target(self, key: str, obj: User | Contact, path: Path, via: str | None) -> None:
        """MailUser / MailContact: on to ExternalEmailAddress (targetAddress)."""
        target = _strip_smtp(obj.external_email_address)
        if not target:
            self.ndr(key, obj, obj.primary_smtp, NDR_NO_ROUTE)
            return
        self.hop(key, obj, "route", target)
        autoforward = via if self.rules.forwarding_address_via_target_is_autoforward else None
        self.route_address(parse_address(target), key, path, forwarded_by=autoforward)

    def expand(self, key: str, group: Group, path: Path) -> None:
        if (key, group.id) in self.expanded:  # nested twice: expanded once
            return
        self.expanded.add((key, group.id))
        if group.kind == "Unified":
            # A Microsoft 365 group receives into its own group mailbox.
            self.deliver(key, group)
            return
        tenant = self.world.tenants[key]
        self.hop(key, group, "expand", group.primary_smtp)
        if group.kind == "Dynamic":
            try:
                members = dynamic_members(tenant, group)
            except FilterError:
                # Documented limitation: a filter outside the modelled subset expands to nobody.
                self.hop(key, group, "unsupported-filter", group.recipient_filter)
                members = []
        else:
            members = [m for m in (tenant.get(oid) for oid in group.members) if m is not None]
        for member in members:
            if _is_recipient(member):
                self.route_object(key, member, path, via_forwarding_address=None)


def _is_recipient(obj: MailObject) -> bool:
    """Mail-enabled in Exchange (Entra-only users and plain security groups are not)."""
    if isinstance(obj, User):
        return obj.recipient_type_details is not None
    if isinstance(obj, Group):
        return obj.mail_enabled
    return True


def _tenant_key(world: World, hint: str | None) -> str | None:
    if not hint:
        return None
    if hint in world.tenants:
        return hint
    tenant = world.tenant_by_id(hint)
    return next((k for k, t in world.tenants.items() if t is tenant), None)


def route(
    world: World,
    to: str,
    sender: str | None = None,
    tenant_hint: str | None = None,
    *,
    rules: Rules | None = None,
) -> Delivery:
    """Where a message to `to` ends up. `sender` / `tenant_hint` place raw X500 addresses.

    Raises ValueError for something that is not an address, or a raw X500 DN
    with neither a sender in a sandbox tenant nor a tenant hint.
    """
    addr = parse_address(to)
    with world.lock:
        for tenant in world.tenants.values():
            tenant.settle()
        router = _Router(world, rules or Rules())
        context = _tenant_key(world, tenant_hint)
        if context is None and sender:
            context = router.authoritative(parse_address(sender).domain or "")
        router.route_address(addr, context, (), forwarded_by=None)
        if not router.legs:
            router.legs.append(Leg("dropped", address=addr.text))  # e.g. an empty DL
        return Delivery(tuple(router.hops), tuple(router.legs))
