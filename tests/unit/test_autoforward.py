"""The effective outbound spam policy and remote domain (coexist.autoforward), case by case."""

from __future__ import annotations

import pytest

from coexist.autoforward import (
    OutboundPolicy,
    OutboundRule,
    RemoteDomain,
    Sender,
    domain_in,
    effective_policy,
    forwarding_verdict,
    groups_containing,
    remote_domain_for,
)

DEFAULT_ON = OutboundPolicy("Default", "On", is_default=True)
DEFAULT_AUTO = OutboundPolicy("Default", "Automatic", is_default=True)
BLOCK = OutboundPolicy("Block Execs", "Off")
ALLOW = OutboundPolicy("Allow Migration", "On")
ALICE = Sender("id-alice", "alice@fabrikam.example", frozenset({"g-execs"}))
BOB = Sender("id-bob", "bob@sales.fabrikam.example")


def rule(name: str, policy: str, priority: int, **kw: object) -> OutboundRule:
    return OutboundRule(name, policy, priority, **kw)  # type: ignore[arg-type]


def test_default_applies_without_rules() -> None:
    """With no custom rule the Default policy applies, whatever other policies exist."""
    policy, chosen = effective_policy([DEFAULT_ON, BLOCK], [], ALICE)
    assert policy is DEFAULT_ON and chosen is None


def test_policy_without_default_listed_is_automatic() -> None:
    """A list without the Default policy gets Exchange's default value, Automatic (blocked)."""
    policy, _ = effective_policy([BLOCK], [], ALICE)
    assert policy.is_default and policy.auto_forwarding_mode == "Automatic"
    assert not policy.allows_forwarding


@pytest.mark.parametrize(
    ("mode", "allows"), [("On", True), ("on", True), ("Off", False), ("Automatic", False)]
)
def test_only_on_allows(mode: str, allows: bool) -> None:
    """AutoForwardingMode On allows; Off and Automatic (= Off) block."""
    assert OutboundPolicy("p", mode).allows_forwarding is allows


def test_lowest_priority_number_wins() -> None:
    """Of two matching enabled rules, the one with the lower Priority picks the policy."""
    rules = [
        rule("allow", ALLOW.name, 1, senders=frozenset({"id-alice"})),
        rule("block", BLOCK.name, 0, member_of=frozenset({"g-execs"})),
    ]
    policy, chosen = effective_policy([DEFAULT_ON, ALLOW, BLOCK], rules, ALICE)
    assert policy is BLOCK and chosen is not None and chosen.name == "block"
    swapped = [
        rule("allow", ALLOW.name, 0, senders=frozenset({"id-alice"})),
        rule("block", BLOCK.name, 1, member_of=frozenset({"g-execs"})),
    ]
    assert effective_policy([DEFAULT_ON, ALLOW, BLOCK], swapped, ALICE)[0] is ALLOW


def test_disabled_rule_applies_to_nobody() -> None:
    """A rule in State Disabled is skipped: the next rule, or Default, applies."""
    rules = [rule("block", BLOCK.name, 0, enabled=False, senders=frozenset({"id-alice"}))]
    assert effective_policy([DEFAULT_ON, BLOCK], rules, ALICE)[0] is DEFAULT_ON


def test_rule_naming_a_missing_policy_is_skipped() -> None:
    """A rule whose policy does not exist cannot apply it."""
    rules = [rule("ghost", "Gone", 0, senders=frozenset({"id-alice"}))]
    assert effective_policy([DEFAULT_AUTO], rules, ALICE)[0] is DEFAULT_AUTO


def test_a_rule_cannot_name_the_default_policy() -> None:
    """Only custom policies are applied through rules (New-HostedOutboundSpamFilterRule)."""
    rules = [rule("r", "Default", 0, senders=frozenset({"id-alice"}))]
    policy, chosen = effective_policy([DEFAULT_ON], rules, ALICE)
    assert policy is DEFAULT_ON and chosen is None


def test_conditions_are_anded_values_ored() -> None:
    """Users AND groups must both match; any one value of a condition is enough."""
    both = rule(
        "r",
        BLOCK.name,
        0,
        senders=frozenset({"id-alice", "id-bob"}),
        member_of=frozenset({"g-execs", "g-other"}),
    )
    assert both.applies_to(ALICE)
    assert not both.applies_to(BOB)  # listed user, but in no listed group


@pytest.mark.parametrize(
    ("exception", "excluded"),
    [
        ({"except_senders": frozenset({"id-alice"})}, True),
        ({"except_member_of": frozenset({"g-execs"})}, True),
        ({"except_domains": ("fabrikam.example",)}, True),
        ({"except_domains": ("contoso.example",)}, False),
        ({"except_senders": frozenset({"id-bob"})}, False),
    ],
)
def test_any_exception_excludes(exception: dict[str, object], excluded: bool) -> None:
    """ExceptIfFrom / ExceptIfFromMemberOf / ExceptIfSenderDomainIs each exclude on a match."""
    r = rule("r", BLOCK.name, 0, domains=("fabrikam.example",), **exception)
    assert r.applies_to(ALICE) is not excluded


def test_sender_domain_includes_subdomains_and_uses_the_primary_address() -> None:
    """SenderDomainIs matches the primary address's domain and its subdomains only."""
    r = rule("r", BLOCK.name, 0, domains=("fabrikam.example",))
    assert r.applies_to(ALICE) and r.applies_to(BOB)
    assert not r.applies_to(Sender("x", "x@notfabrikam.example"))
    assert not r.applies_to(Sender("y", "y@fabrikam.example.net"))
    assert domain_in("SALES.Fabrikam.Example", ["fabrikam.example"])


def test_unresolved_values_scope_to_nobody() -> None:
    """A From condition whose values resolve to nothing matches no sender (not everyone)."""
    r = rule("r", BLOCK.name, 0, senders=frozenset({"unresolved:ghost"}))
    assert not r.applies_to(ALICE)


def test_rule_without_condition_scopes_everyone() -> None:
    """A rule with no condition (PowerShell only) applies to every sender (*unverified* flag)."""
    assert rule("r", BLOCK.name, 0).applies_to(ALICE)


def test_sender_not_yet_existing_is_matched_by_domain_only() -> None:
    """A mailbox that does not exist yet (no id) matches domains, never user lists."""
    later = Sender(None, "carol@contoso.example")
    assert not rule("r", BLOCK.name, 0, senders=frozenset({"id-alice"})).applies_to(later)
    assert rule("r", BLOCK.name, 0, domains=("contoso.example",)).applies_to(later)


def test_nested_group_membership() -> None:
    """Membership through a nested group counts (transitively), or not, by the flag."""
    members_of = {
        "g-top": ["g-mid", "id-zed"],
        "g-mid": ["g-leaf"],
        "g-leaf": ["id-alice"],
        "g-other": ["id-bob"],
    }
    assert groups_containing("id-alice", members_of) == {"g-leaf", "g-mid", "g-top"}
    assert groups_containing("id-alice", members_of, nested=False) == {"g-leaf"}
    cyclic = {"a": ["b", "id-x"], "b": ["a"]}
    assert groups_containing("id-x", cyclic) == {"a", "b"}
    sender = Sender("id-alice", "alice@fabrikam.example", groups_containing("id-alice", members_of))
    assert rule("r", BLOCK.name, 0, member_of=frozenset({"g-top"})).applies_to(sender)


REMOTE = [
    RemoteDomain("Default", "*", True),
    RemoteDomain("Contoso all", "*.contoso.example", False),
    RemoteDomain("Contoso mail", "mail.contoso.example", True),
]


@pytest.mark.parametrize(
    ("domain", "name"),
    [
        ("mail.contoso.example", "Contoso mail"),  # exact beats wildcard
        ("contoso.example", "Contoso all"),  # *.x covers x itself
        ("eu.contoso.example", "Contoso all"),
        ("fabrikam.example", "Default"),
        ("notcontoso.example", "Default"),
    ],
)
def test_remote_domain_most_specific_match(domain: str, name: str) -> None:
    """Exact name, else the longest covering wildcard, else '*'."""
    found = remote_domain_for(REMOTE, domain)
    assert found is not None and found.name == name


def test_verdict_names_both_gates() -> None:
    """The verdict carries the policy, its rule and the remote domain; both must allow."""
    rules = [rule("block", BLOCK.name, 0, member_of=frozenset({"g-execs"}))]
    v = forwarding_verdict([DEFAULT_ON, BLOCK], rules, REMOTE, ALICE, "fabrikam.example")
    assert not v.allowed and not v.policy_allows and v.remote_domain_allows
    assert v.rule is not None and v.policy is BLOCK
    v = forwarding_verdict([DEFAULT_ON, BLOCK], rules, REMOTE, BOB, "eu.contoso.example")
    assert v.policy_allows and not v.remote_domain_allows and not v.allowed
    assert v.remote_domain is not None and v.remote_domain.name == "Contoso all"
    v = forwarding_verdict([DEFAULT_ON], [], [], BOB, "anything.example")
    assert v.allowed and v.remote_domain is None
