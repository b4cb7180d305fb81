"""Automatch's decisions (coexist.automatch.decide_all): ordered rules, ambiguity, targets
another user holds, and decisions no rule re-makes (the operator's, the file's, a moving
user's)."""

from __future__ import annotations

from typing import Any

import pytest

from coexist import automatch as am
from coexist.errors import InputError

DOMAIN = "contoso.example"


def target(ident: str, mail: str, name: str, *proxies: str) -> dict[str, Any]:
    return {
        "id": ident,
        "userPrincipalName": mail,
        "mail": mail,
        "displayName": name,
        "proxyAddresses": [f"SMTP:{mail}", *(f"smtp:{p}" for p in proxies)],
    }


DIRECTORY = am.Directory(
    [
        am.TargetUser.from_graph(t)
        for t in (
            target("t-ann", "ann@contoso.example", "Ann Lee", "ann@old.example"),
            target("t-bob", "bob@contoso.example", "Bob Stone"),
            target("t-cy", "cyril.marsh@contoso.example", "C. Marsh"),
            target("t-dee1", "dee1@contoso.example", "Dee Park"),
            target("t-dee2", "dee2@contoso.example", "Dee  park"),
        )
    ]
)


def source(
    address: str, name: str = "", first: str = "", last: str = "", **more: Any
) -> am.SourceUser:
    item: dict[str, Any] = {
        "key": address.lower(),
        "source_address": address,
        "phase": more.pop("phase", "discovered"),
        "detail": {
            "source": {"display_name": name, "first_name": first, "last_name": last},
            **({"automatch": more.pop("recorded")} if "recorded" in more else {}),
        },
        **more,
    }
    return am.SourceUser.from_item(item)


def decide(
    *users: am.SourceUser, rules: tuple[str, ...] = am.RULES, held: dict[str, str] | None = None
) -> dict[str, am.Decision]:
    return am.decide_all(users, held or {}, DIRECTORY, rules, DOMAIN)


def test_each_rule_in_order_and_the_first_with_candidates_decides() -> None:
    """Same address (a proxy), local part in the destination domain, first.last, display
    name; several candidates are ambiguous, none unmatched."""
    got = decide(
        source("ann@old.example", "Whoever"),
        source("bob@old.example"),
        source("cm@old.example", first="Cyril", last="Marsh"),
        source("dp@old.example", "Dee Park"),
        source("nobody@old.example", "No One"),
    )
    assert [(d.status, d.rule, d.target_address) for d in got.values()] == [
        ("matched", "same-address", "ann@contoso.example"),
        ("matched", "local-part", "bob@contoso.example"),
        ("matched", "first-last", "cyril.marsh@contoso.example"),
        ("ambiguous", "display-name", None),
        ("unmatched", None, None),
    ]
    assert [a for _, a, _ in got["dp@old.example"].candidates] == [
        "dee1@contoso.example",
        "dee2@contoso.example",
    ]
    assert "Dee Park" in am.describe(got["dp@old.example"])


def test_rules_are_the_operators_and_a_held_target_is_nobody_elses() -> None:
    """Only the rules named run; a target another user holds is no candidate (taken)."""
    only_names = decide(source("bob@old.example", "Bob Stone"), rules=(am.DISPLAY_NAME,))
    assert only_names["bob@old.example"].rule == "display-name"
    assert (
        decide(source("bob@old.example"), rules=(am.DISPLAY_NAME,))["bob@old.example"].status
        == "unmatched"
    )
    taken = decide(source("bob@old.example"), held={"t-bob": "someone"})["bob@old.example"]
    assert (taken.status, taken.target_id) == ("taken", None)


def test_two_users_never_get_one_target_and_the_stronger_rule_wins() -> None:
    """A by display name and B by local part want one target: B's rule comes first, so B
    has it and A finds it held, whichever sorts first."""
    got = decide(source("a@old.example", "Bob Stone"), source("bob@old.example"))
    assert got["bob@old.example"].target_id == "t-bob"
    assert got["a@old.example"].status == "taken"


def test_confirmed_given_and_moving_users_keep_their_targets() -> None:
    """No rule re-decides a confirmed target, a user file's target address (resolved to its
    user) or the target of a user that has started moving; a confirmed address nobody has
    yet is kept with the reason."""
    confirmed = {"status": "confirmed", "target_name": "Dee Park"}
    got = decide(
        source(
            "dp@old.example",
            "Dee Park",
            recorded=confirmed,
            target_id="t-dee2",
            target_address="dee2@contoso.example",
        ),
        source("given@old.example", target_address="ann@old.example"),
        source(
            "bob@old.example",
            phase="prestaged",
            target_id="t-x",
            target_address="x@contoso.example",
        ),
        source(
            "later@old.example",
            recorded={"status": "confirmed"},
            target_address="new@contoso.example",
        ),
    )
    assert got["dp@old.example"].target_id == "t-dee2"
    assert (got["given@old.example"].status, got["given@old.example"].target_id) == (
        "given",
        "t-ann",
    )
    assert (got["bob@old.example"].status, got["bob@old.example"].target_id) == ("kept", "t-x")
    later = got["later@old.example"]
    assert (later.status, later.target_id, later.target_address) == (
        "confirmed",
        None,
        "new@contoso.example",
    )
    assert "no target user" in later.reason


def test_other_rules_change_a_match_only_to_another_single_target() -> None:
    """Re-run with other rules: a match they do not find, or find again, keeps its record;
    one they find another single target for changes."""
    first = decide(source("bob@old.example", "Bob Stone"))["bob@old.example"]
    recorded = first.record()
    again = decide(
        source(
            "bob@old.example",
            "Bob Stone",
            recorded=recorded["automatch"],
            target_id="t-bob",
            target_address="bob@contoso.example",
        ),
        rules=(am.DISPLAY_NAME,),
    )["bob@old.example"]
    assert again == first and again.rule == "local-part"
    recorded_elsewhere = {**recorded["automatch"], "rule": "same-address"}
    by_name = decide(
        source(
            "bob@old.example",
            "Ann Lee",
            recorded=recorded_elsewhere,
            target_id="t-bob",
            target_address="bob@contoso.example",
        ),
        rules=(am.DISPLAY_NAME,),
    )["bob@old.example"]
    assert (by_name.target_id, by_name.rule) == ("t-ann", "display-name")  # another target


def test_rules_option_is_checked() -> None:
    """Unknown, empty or repeated rule names are refused naming the rules."""
    assert am.parse_rules("display-name, same-address") == ("display-name", "same-address")
    for bad in ("same-address,nope", " ", "local-part,local-part"):
        with pytest.raises(InputError) as info:
            am.parse_rules(bad)
        assert "rule" in str(info.value)
