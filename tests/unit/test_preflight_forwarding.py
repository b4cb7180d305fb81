"""Preflight's reading of Exchange's forwarding settings and its per-user row, without a tenant."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from coexist import autoforward as af
from coexist.engine.context import Context, Side
from coexist.preflight import (
    Forwarder,
    Gates,
    _values,
    forwarding_check,
    parse_policy,
    parse_remote_domain,
)

SOURCE = cast(Side, SimpleNamespace(label="source"))
CTX = cast(
    Context,
    SimpleNamespace(source=SOURCE, project=SimpleNamespace(scope=SimpleNamespace(group="Wave 1"))),
)


@pytest.mark.parametrize(
    ("raw", "values"),
    [(None, []), ([], []), ("a", ["a"]), (["a", "", "b"], ["a", "b"]), ([1], ["1"])],
)
def test_multi_valued_properties_read_null_string_or_list(raw: Any, values: list[str]) -> None:
    """A multi-valued property may come as null, one string, or a list (blanks dropped)."""
    assert _values({"From": raw}, "From") == values


def test_policy_rows() -> None:
    """IsDefault (or the name Default) marks the default policy; a missing mode is Automatic."""
    assert parse_policy({"Name": "Default", "AutoForwardingMode": "On"}).is_default
    custom = parse_policy({"Identity": "Execs", "IsDefault": False, "AutoForwardingMode": "Off"})
    assert (custom.name, custom.is_default, custom.allows_forwarding) == ("Execs", False, False)
    assert parse_policy({"Name": "X"}).auto_forwarding_mode == "Automatic"


def test_remote_domain_rows() -> None:
    """AutoForwardEnabled false blocks; a missing value is Exchange Online's default, true."""
    rd = parse_remote_domain(
        {"Name": "C", "DomainName": "*.c.example", "AutoForwardEnabled": False}
    )
    assert (rd.name, rd.domain_name, rd.auto_forward_enabled) == ("C", "*.c.example", False)
    assert parse_remote_domain({"Name": "D", "DomainName": "*"}).auto_forward_enabled


GATES = Gates(
    policies=[af.OutboundPolicy("Default", "On", True), af.OutboundPolicy("Execs", "Off")],
    rules=[af.OutboundRule("Execs rule", "Execs", 0, member_of=frozenset({"g1"}))],
    remote_domains=[af.RemoteDomain("Default", "*"), af.RemoteDomain("C", "c.example", False)],
    members={"g1": frozenset({"u-ann"})},
)


def who(user: str, key: str, destination: str) -> Forwarder:
    return Forwarder(user, af.Sender(key, user), destination)


def test_row_is_ok_when_nobody_is_blocked() -> None:
    """Every user allowed: one ok row saying which policy applied."""
    row = forwarding_check(
        CTX, SOURCE, "why", GATES, [who("bob@f.example", "u-bob", "b@t.example")]
    )
    assert row.status == "ok" and "Default (On)" in row.detail and not row.blocked


def test_row_names_each_blocked_user_with_its_cause_and_fix() -> None:
    """Blocked users are grouped by cause; the fix names the policy or remote domain to change."""
    row = forwarding_check(
        CTX,
        SOURCE,
        "cutover forwards",
        GATES,
        [
            who("ann@f.example", "u-ann", "ann@t.example"),  # in g1: Execs (Off)
            who("bob@f.example", "u-bob", "bob@c.example"),  # remote domain C
            who("cy@f.example", "u-cy", "cy@t.example"),  # allowed
        ],
    )
    assert row.status == "fail" and "2 of 3 migrating users" in row.detail
    assert "ann@f.example: custom outbound spam policy 'Execs' (rule 'Execs rule'" in row.detail
    assert "bob@f.example: remote domain 'C'" in row.detail and "cy@f.example" not in row.detail
    assert 'Set-HostedOutboundSpamFilterPolicy -Identity "Execs" -AutoForwardingMode On' in row.fix
    assert 'Set-RemoteDomain -Identity "C" -AutoForwardEnabled $true' in row.fix
    assert row.fix.endswith("(needed because cutover forwards)")
    assert [(b["user"], b["policy"], b["remote_domain"]) for b in row.blocked] == [
        ("ann@f.example", "Execs", "Default"),
        ("bob@f.example", "Default", "C"),
    ]
    assert row.to_dict()["blocked"] == list(row.blocked)


def test_default_fix_scopes_a_custom_policy_to_the_scope_group() -> None:
    """When Default blocks, the fix offers Default On or a custom policy for the scope group."""
    gates = Gates([af.OutboundPolicy("Default", "Automatic", True)], [], [], {})
    row = forwarding_check(CTX, SOURCE, "w", gates, [who("a@f.example", "u-a", "a@t.example")])
    assert "AutoForwardingMode is Automatic (= Off)" in row.detail
    assert "-Identity Default -AutoForwardingMode On" in row.fix
    assert '-FromMemberOf "Wave 1" -Priority 0' in row.fix
