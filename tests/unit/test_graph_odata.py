"""Pure OData helpers of the Graph face: $top, $select, $filter, $orderby, skip tokens, paging."""

from __future__ import annotations

from typing import Any

import pytest

from coexist.sandbox.graph import odata
from coexist.sandbox.graph.common import keyset_page

PROPS = ["id", "displayName", "mail", "accountEnabled", "proxyAddresses", "assignedLicenses"]
SKU = "6fd2c87f-b296-42f0-b197-1e91e994b900"


def rec(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "1",
        "displayName": "Ann O'Neil",
        "mail": "ann@contoso.example",
        "accountEnabled": True,
        "proxyAddresses": ["SMTP:ann@contoso.example", "smtp:a@old.example"],
        "assignedLicenses": [{"skuId": SKU.upper(), "disabledPlans": []}],
    }
    base.update(kw)
    return base


def matches(text: str, record: dict[str, Any] | None = None) -> bool:
    compiled = odata.compile_filter(text, PROPS, "user")
    assert compiled is not None
    return compiled.matches(record or rec())


def test_top_bounds() -> None:
    """$top accepts 1..999, defaults to 100, and rejects the rest with Graph's code."""
    assert odata.parse_top(None) == 100
    assert odata.parse_top("999") == 999
    for bad in ("0", "1000", "x", "-1"):
        with pytest.raises(odata.ODataQueryError) as err:
            odata.parse_top(bad)
        assert err.value.code == "Request_UnsupportedQuery"


def test_select_is_case_insensitive_and_checks_names() -> None:
    """$select maps names to Graph's spelling and rejects unknown properties."""
    assert odata.parse_select("DISPLAYNAME, mail", PROPS, "user") == ["displayName", "mail"]
    assert odata.parse_select(None, PROPS, "user") is None
    with pytest.raises(odata.ODataQueryError) as err:
        odata.parse_select("displayName,nope", PROPS, "user")
    assert "nope" in err.value.message and "microsoft.graph.user" in err.value.message


def test_filter_eq_and_quote_escape() -> None:
    """eq compares case-insensitively and '' inside a literal is one quote."""
    assert matches("displayName eq 'ann o''neil'")
    assert not matches("displayName eq 'Ann ONeil'")
    assert matches("accountEnabled eq true")
    assert not matches("accountEnabled eq false")


def test_filter_boolean_logic_and_functions() -> None:
    """and / or / parentheses / startswith / in combine as OData specifies."""
    assert matches("startswith(displayName,'ann') and (mail eq 'x' or accountEnabled eq true)")
    assert not matches("startswith(displayName,'bob') or mail eq 'x@y'")
    assert matches("mail in ('x@y', 'ANN@contoso.example')")


def test_filter_lambdas() -> None:
    """any() over strings and over complex members (skuId GUIDs, case-insensitive)."""
    assert matches("proxyAddresses/any(x:x eq 'smtp:ann@contoso.example')")
    assert matches("proxyAddresses/any(p:startswith(p,'smtp:a@'))")
    assert matches(f"assignedLicenses/any(x:x/skuId eq {SKU})")
    assert not matches("assignedLicenses/any(x:x/skuId eq 00000000-0000-0000-0000-000000000000)")


def test_advanced_operators_are_flagged() -> None:
    """ne, not, endswith and /$count are advanced queries; eq/startswith are not."""
    plain = odata.compile_filter("startswith(mail,'a') and mail eq 'b'", PROPS, "user")
    assert plain is not None and plain.advanced == []
    for text in ("mail ne 'a'", "not(accountEnabled eq true)", "endswith(mail,'.example')"):
        compiled = odata.compile_filter(text, PROPS, "user")
        assert compiled is not None and compiled.advanced
    counted = odata.compile_filter("assignedLicenses/$count eq 1", PROPS, "user")
    assert counted is not None and counted.advanced == ["$count"] and counted.matches(rec())


def test_filter_errors() -> None:
    """Unknown properties and syntax errors raise Graph-shaped query errors."""
    with pytest.raises(odata.ODataQueryError) as err:
        odata.compile_filter("nope eq 1", PROPS, "user")
    assert err.value.code == "BadRequest"
    for text in ("displayName eq", "displayName eq 'x' and", "(mail eq 'x'", "mail eq 'x' )"):
        with pytest.raises(odata.ODataQueryError):
            odata.compile_filter(text, PROPS, "user")


def test_filter_comparing_literals_is_refused() -> None:
    """A clause naming no property (`1 eq 1`, a bare `true`, a function of two literals) is
    Graph's 400, never evaluated: `displayName eq 'x' or 1 eq 1` used to select everyone."""
    refused = (
        "displayName eq 'x' or 1 eq 1",
        "1 eq 1",
        "'a' eq 'a'",
        "true",
        "displayName eq 'x' or true",
        "not (1 eq 2)",
        "1 in (1, 2)",
        "startswith('ann','a')",
        "(1 eq 1) and mail eq 'x'",
    )
    for text in refused:
        with pytest.raises(odata.ODataQueryError) as err:
            odata.compile_filter(text, PROPS, "user")
        assert (err.value.status, err.value.code) == (400, "Request_UnsupportedQuery"), text
    # Literals beside a property stay what they were.
    assert matches("displayName eq 'x' or accountEnabled eq true")
    assert matches("proxyAddresses/any(x:x eq 'smtp:a@old.example')")


def test_bad_count_value_is_refused() -> None:
    """`$count` is `true` or `false` (absent: false); anything else is Graph's 400."""
    assert odata.parse_count(None) is False
    assert odata.parse_count("false") is False
    assert odata.parse_count("true") is True
    assert odata.parse_count(" true ") is True
    for bad in ("maybe", "", "1", "yes", "True"):
        with pytest.raises(odata.ODataQueryError) as err:
            odata.parse_count(bad)
        assert (err.value.status, err.value.code) == (400, "BadRequest")
        assert err.value.message == f"'{bad}' is not a valid count option."


def test_orderby() -> None:
    """$orderby accepts an allowed property with asc/desc only."""
    assert odata.parse_orderby("displayName desc", ["displayName"]) == odata.OrderBy(
        "displayName", True
    )
    assert odata.parse_orderby(None, ["displayName"]) == odata.OrderBy(None)
    with pytest.raises(odata.ODataQueryError):
        odata.parse_orderby("mail", ["displayName"])


def test_skiptoken_round_trip_and_tamper() -> None:
    """Skip tokens are opaque, round-trip, and a tampered one is a 400."""
    token = odata.encode_skiptoken(("ann", "id-1"))
    assert "ann" not in token
    assert odata.decode_skiptoken(token) == ("ann", "id-1")
    with pytest.raises(odata.ODataQueryError):
        odata.decode_skiptoken("!!not-base64")


def test_keyset_paging_survives_inserts() -> None:
    """Keyset pages see every object once, even when one is inserted before the cursor."""
    ids = [f"{i:03d}" for i in range(10)]
    objects = {i: i for i in ids}
    page = keyset_page([(i,) for i in ids], ids, objects.get, None, 4)
    assert page.items == ids[:4] and page.next_key == ("003",)
    ids2 = sorted([*ids, "0005"])  # inserted behind the cursor
    objects["0005"] = "0005"
    rest: list[str] = []
    after = page.next_key
    while after is not None:
        nxt = keyset_page([(i,) for i in ids2], ids2, objects.get, after, 4, want_count=True)
        assert nxt.count == 11
        rest += nxt.items
        after = nxt.next_key
    assert rest == ids[4:]
    desc = keyset_page([(i,) for i in ids], ids, objects.get, ("005",), 3, descending=True)
    assert desc.items == ["004", "003", "002"]


NAMED = "String {5b1c2a8e-7f3d-4c61-9a0e-c0e715e0ce11} Name coexistSourceId"


def test_extended_expand_reads_the_documented_form_only() -> None:
    """`$expand=singleValueExtendedProperties($filter=id eq '...')` names one property id."""
    assert odata.extended_expand(f"singleValueExtendedProperties($filter=id eq '{NAMED}')") == NAMED
    assert (
        odata.extended_expand(f"attachments,singleValueExtendedProperties($filter=id eq '{NAMED}')")
        == NAMED
    )
    assert odata.extended_expand("singleValueExtendedProperties") is None
    assert odata.extended_expand(None) is None


def test_property_ids_compare_like_exchange() -> None:
    """Type, GUID and tag compare without case; a named property's Name with case."""
    assert odata.same_property_id(NAMED, NAMED.replace("String {5b1c", "string {5B1C"))
    assert not odata.same_property_id(NAMED, NAMED.replace("coexistSourceId", "CoexistSourceId"))
    assert odata.same_property_id("Integer 0x0E07", "integer 0xe07")
    assert not odata.same_property_id("Integer 0x0E07", "Integer 0x0E06")
    assert not odata.same_property_id("Integer 0x0E07", NAMED)


def test_extended_property_filter_matches_an_items_properties() -> None:
    """`singleValueExtendedProperties/Any(ep: ...)` compiles over an item's property list."""
    props = odata.extended_values({NAMED: "src-1", "Integer 0x0E07": "1"})
    flt = odata.compile_filter(
        f"singleValueExtendedProperties/Any(ep: ep/id eq '{NAMED}' and ep/value eq 'src-1')",
        ["singleValueExtendedProperties"],
        "message",
    )
    assert flt is not None and flt.matches({"singleValueExtendedProperties": props})
    assert not flt.matches({"singleValueExtendedProperties": []})
    assert odata.expanded_properties({NAMED: "src-1"}, NAMED) == [{"id": NAMED, "value": "src-1"}]
