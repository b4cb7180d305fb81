"""Exchange Online's gates on automatic external forwarding, as pure functions.

Two settings decide whether a mailbox's forward to another organization leaves:

1. The **outbound spam policy** that applies to the forwarding mailbox (the sender).
   Custom policies apply through their rule: the enabled rule with the lowest
   Priority whose scope matches the sender names the policy; with none, the
   Default policy applies. Its AutoForwardingMode `On` lets forwarding out;
   `Off` blocks it with NDR 550 5.7.520; `Automatic` is Off today (Defender docs,
   outbound-spam-policies-configure and outbound-spam-policies-external-email-
   forwarding; the cmdlet reference adds that orgs that used it early may still
   see On, so the product treats it as "not allowed" and asks for On).
2. The **remote domain** that matches the destination domain: the most specific
   of an exact name, a `*.suffix` wildcard (the domain and all its subdomains,
   New-RemoteDomain -DomainName), or `*` (Default). AutoForwardEnabled `$false`
   drops the forwarded copy.

A rule's scope (Defender docs, outbound-spam-policies-configure): Users (`From`),
Groups (`FromMemberOf`: distribution groups, mail-enabled security groups,
Microsoft 365 groups), Domains (`SenderDomainIs`: the sender's *primary* address in
the domain or a subdomain). Values of one condition are OR-ed, different conditions
AND-ed; any exception (`ExceptIf*`, OR-ed) excludes the sender. A disabled rule
(State Disabled) applies to nobody, and so does a policy without a rule.

The product's preflight and the sandbox's routing model both decide with
`forwarding_verdict`, so a probe NDRs exactly when preflight says a user is blocked.
Senders, users and groups are compared by object id (Entra ExternalDirectoryObjectId):
each caller resolves the identities a rule shows to ids first. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ALLOWING_MODE = "on"
DEFAULT_POLICY = "Default"
DEFAULT_REMOTE_DOMAIN = "*"

# *unverified*: whether FromMemberOf / ExceptIfFromMemberOf count members of nested
# groups. The Defender docs say "members of the specified distribution groups or
# mail-enabled security groups" without a word on nesting; Exchange transport rules,
# which these rules are built on, expand nested groups. Both sides follow this flag:
# preflight reads `transitiveMembers` (else `members`) and the sandbox expands nesting.
NESTED_GROUPS_IN_SCOPE = True
# *unverified*: a rule without any condition cannot be made in the Defender portal;
# through PowerShell, Exchange's rule engine treats "no condition" as "every message"
# (transport rules do), so such a rule scopes its policy to every sender.
RULE_WITHOUT_CONDITION_MATCHES_ALL = True


@dataclass(frozen=True)
class Sender:
    """The mailbox that forwards: its object id, primary address and groups (as ids)."""

    key: str | None  # None: the mailbox does not exist yet (no rule can name it)
    primary_smtp: str
    groups: frozenset[str] = frozenset()  # ids of scoping groups it is a member of

    @property
    def domain(self) -> str:
        return self.primary_smtp.rpartition("@")[2].lower()


@dataclass(frozen=True)
class OutboundPolicy:
    """An outbound spam filter policy (Get-HostedOutboundSpamFilterPolicy)."""

    name: str
    auto_forwarding_mode: str = "Automatic"
    is_default: bool = False

    @property
    def allows_forwarding(self) -> bool:
        return self.auto_forwarding_mode.strip().lower() == ALLOWING_MODE


@dataclass(frozen=True)
class OutboundRule:
    """An outbound spam filter rule (Get-HostedOutboundSpamFilterRule), ids resolved.

    `senders` / `member_of` (and the exceptions) hold object ids; an identity the
    caller could not resolve is kept as a key that matches nothing, so a condition
    with only stale values still scopes the rule to nobody.
    """

    name: str
    policy: str
    priority: int
    enabled: bool = True
    senders: frozenset[str] = frozenset()
    member_of: frozenset[str] = frozenset()
    domains: tuple[str, ...] = ()
    except_senders: frozenset[str] = frozenset()
    except_member_of: frozenset[str] = frozenset()
    except_domains: tuple[str, ...] = ()

    @property
    def has_condition(self) -> bool:
        return bool(self.senders or self.member_of or self.domains)

    def applies_to(self, sender: Sender) -> bool:
        """Conditions AND-ed (values OR-ed), then any exception excludes the sender."""
        if not self.enabled:
            return False
        if not self.has_condition and not RULE_WITHOUT_CONDITION_MATCHES_ALL:
            return False
        if self.senders and sender.key not in self.senders:
            return False
        if self.member_of and not (sender.groups & self.member_of):
            return False
        if self.domains and not domain_in(sender.domain, self.domains):
            return False
        return not (
            (sender.key is not None and sender.key in self.except_senders)
            or (sender.groups & self.except_member_of)
            or domain_in(sender.domain, self.except_domains)
        )


@dataclass(frozen=True)
class RemoteDomain:
    """A remote domain (Get-RemoteDomain): Name, DomainName, AutoForwardEnabled."""

    name: str
    domain_name: str
    auto_forward_enabled: bool = True


@dataclass(frozen=True)
class Verdict:
    """What applies to one sender forwarding to one destination domain, and the outcome."""

    policy: OutboundPolicy
    rule: OutboundRule | None  # the custom policy's rule; None: the Default policy
    remote_domain: RemoteDomain | None  # None: no remote domain matches (not even '*')
    destination: str

    @property
    def policy_allows(self) -> bool:
        return self.policy.allows_forwarding

    @property
    def remote_domain_allows(self) -> bool:
        # Without any match nothing restricts (Exchange always has '*'; a caller that
        # could not see it must not invent a block).
        return self.remote_domain is None or self.remote_domain.auto_forward_enabled

    @property
    def allowed(self) -> bool:
        return self.policy_allows and self.remote_domain_allows


def domain_in(domain: str, domains: Iterable[str]) -> bool:
    """Whether `domain` is one of `domains` or a subdomain of one (subdomains included)."""
    d = domain.strip().lower()
    for raw in domains:
        want = raw.strip().lower()
        if want and (d == want or d.endswith("." + want)):
            return True
    return False


def default_policy(policies: Iterable[OutboundPolicy]) -> OutboundPolicy:
    """The Default policy; Exchange always has one (it cannot be removed), so when a
    caller's list lacks it, it has its default value, Automatic."""
    listed = list(policies)
    found = next((p for p in listed if p.is_default), None)
    found = found or next((p for p in listed if p.name.lower() == DEFAULT_POLICY.lower()), None)
    return found or OutboundPolicy(DEFAULT_POLICY, "Automatic", is_default=True)


def effective_policy(
    policies: Iterable[OutboundPolicy], rules: Iterable[OutboundRule], sender: Sender
) -> tuple[OutboundPolicy, OutboundRule | None]:
    """The policy Exchange applies to `sender`, and the rule that chose it.

    Custom policies in rule priority order (lowest Priority number first, "outbound
    spam protection stops for a sender after the first policy is applied"); a rule
    naming a policy that does not exist is skipped; else the Default policy.
    """
    listed = list(policies)
    by_name = {p.name.lower(): p for p in listed if not p.is_default}
    for rule in sorted(rules, key=lambda r: (r.priority, r.name.lower())):
        policy = by_name.get(rule.policy.lower())
        if policy is not None and rule.applies_to(sender):
            return policy, rule
    return default_policy(listed), None


def remote_domain_for(remote_domains: Iterable[RemoteDomain], domain: str) -> RemoteDomain | None:
    """The remote domain Exchange applies to `domain`: exact name, else the longest
    `*.suffix` covering it (the suffix itself included), else `*`."""
    d = domain.strip().lower()
    best: tuple[int, RemoteDomain] | None = None
    for rd in remote_domains:
        pattern = rd.domain_name.strip().lower()
        if pattern == d:
            rank = 1_000_000
        elif pattern == DEFAULT_REMOTE_DOMAIN:
            rank = 0
        elif pattern.startswith("*.") and (d == pattern[2:] or d.endswith(pattern[1:])):
            rank = len(pattern)
        else:
            continue
        if best is None or rank > best[0]:
            best = (rank, rd)
    return best[1] if best else None


def forwarding_verdict(
    policies: Iterable[OutboundPolicy],
    rules: Iterable[OutboundRule],
    remote_domains: Iterable[RemoteDomain],
    sender: Sender,
    destination_domain: str,
) -> Verdict:
    """Whether `sender`'s automatic forward to `destination_domain` leaves the tenant."""
    policy, rule = effective_policy(policies, rules, sender)
    remote = remote_domain_for(remote_domains, destination_domain)
    return Verdict(policy, rule, remote, destination_domain.lower())


def groups_containing(
    member: str, members_of: Mapping[str, Iterable[str]], nested: bool = NESTED_GROUPS_IN_SCOPE
) -> frozenset[str]:
    """Ids of the groups (keys of `members_of`: group id → member ids) containing
    `member`, through nested groups when `nested`."""
    direct = {g for g, members in members_of.items() if member in set(members)}
    if not nested:
        return frozenset(direct)
    found, frontier = set(direct), set(direct)
    while frontier:
        frontier = {
            g for g, members in members_of.items() if g not in found and frontier & set(members)
        }
        found |= frontier
    return frozenset(found)
