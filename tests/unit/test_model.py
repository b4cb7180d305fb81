"""The pure address rules of coexist.model: aliases, free addresses, names, X500, phases."""

from __future__ import annotations

import pytest

from coexist.model import (
    ALIAS_MAX,
    EXCHANGE_NAME_MAX,
    Phase,
    SourceMailbox,
    ascii_alias,
    decode_imceaex,
    encode_imceaex,
    exchange_name,
    forwarding_address,
    free_address,
    phase_at_least,
)

LEGACY_DN = (
    "/o=ExchangeLabs/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Recipients"
    "/cn=5f2b9c3e1d4a4b6c8e7f0a1b2c3d4e5f-Ann Lee"
)


def mailbox(**overrides: object) -> SourceMailbox:
    values: dict[str, object] = {
        "id": "11111111-1111-1111-1111-111111111111",
        "upn": "ann.lee@fabrikam.example",
        "display_name": "Ann Lee",
        "name": "Ann Lee",
        "alias": "ann.lee",
        "primary_smtp": "Ann.Lee@Fabrikam.example",
        "email_addresses": (
            "SMTP:Ann.Lee@Fabrikam.example",
            "smtp:ann.lee@fabrikam.onmicrosoft.com",
            "smtp:al@fabrikam.example",
            "X500:/o=Old Org/ou=First Administrative Group/cn=Recipients/cn=annlee",
        ),
        "legacy_exchange_dn": LEGACY_DN,
        "recipient_type_details": "UserMailbox",
        **overrides,
    }
    return SourceMailbox(**values)  # type: ignore[arg-type]


# -- ascii_alias -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "alias"),
    [
        ("Ann Lee", "Ann.Lee"),
        ("Zoë Åkerlund-Müller", "Zoe.Akerlund-Muller"),
        ("  .José  (Sales).. ", "Jose.Sales"),
        ("a@b,c;d", "abcd"),
        ("O'Brien", "O'Brien"),
        ("李小龍", "user"),  # nothing ASCII survives: a fallback, never an empty alias
        ("...", "user"),
    ],
)
def test_ascii_alias_folds_and_drops_invalid_characters(text: str, alias: str) -> None:
    """Accents fold to ASCII, spaces become dots, invalid characters and edge dots go."""
    assert ascii_alias(text) == alias


def test_ascii_alias_is_at_most_64_characters() -> None:
    """An alias never exceeds Exchange's 64-character limit."""
    assert len(ascii_alias("x" * 200)) == ALIAS_MAX == 64


# -- free_address ------------------------------------------------------------------------------
def test_free_address_adds_the_first_free_numeric_suffix() -> None:
    """create mode: a taken address gets 2, 3, … (case-insensitively compared)."""
    taken = {"ann.lee@contoso.example", "ann.lee2@contoso.example"}
    assert free_address("Ann.Lee", "contoso.example", taken.__contains__) == (
        "Ann.Lee3@contoso.example"
    )
    assert free_address("bob", "contoso.example", taken.__contains__) == "bob@contoso.example"


def test_free_address_passes_lower_case_candidates_to_taken() -> None:
    """The `taken` predicate always sees the lower-cased candidate."""
    seen: list[str] = []

    def taken(candidate: str) -> bool:
        seen.append(candidate)
        return len(seen) < 2

    assert free_address("Ann", "Contoso.example", taken) == "Ann2@Contoso.example"
    assert seen == ["ann@contoso.example", "ann2@contoso.example"]


# -- exchange_name -----------------------------------------------------------------------------
def test_exchange_name_is_unique_and_at_most_64_characters() -> None:
    """Long display names are cut to 64; duplicates get ' (2)', ' (3)' within the limit."""
    long = "Dr. Maximilian Alexander Konstantin von Hohenzollern-Sigmaringen the Third"
    names: set[str] = set()
    for _ in range(12):
        name = exchange_name(long, lambda n: n in names)
        assert len(name) <= EXCHANGE_NAME_MAX
        assert name.lower() not in names
        names.add(name.lower())
    assert len(names) == 12
    assert any(n.endswith(" (2)") for n in names) and any(n.endswith(" (12)") for n in names)


def test_exchange_name_collapses_whitespace_and_never_is_empty() -> None:
    """Runs of whitespace collapse to one space; a blank display name falls back to 'user'."""
    assert exchange_name("  Ann \t  Lee ", lambda _n: False) == "Ann Lee"
    assert exchange_name("   ", lambda _n: False) == "user"
    assert exchange_name("Ann Lee", {"ann lee"}.__contains__) == "Ann Lee (2)"


# -- forwarding_address --------------------------------------------------------------------------
def test_forwarding_address_blank_domain_is_the_users_own_address() -> None:
    """No forwarding domain: the target forwards to the user's primary SMTP address."""
    assert forwarding_address(mailbox(), None) == "Ann.Lee@Fabrikam.example"
    assert forwarding_address(mailbox(), "") == "Ann.Lee@Fabrikam.example"


def test_forwarding_address_prefers_the_users_proxy_in_that_domain() -> None:
    """With a domain, the user's existing proxy there wins (any case), else local@domain."""
    mb = mailbox()
    assert forwarding_address(mb, "Fabrikam.onmicrosoft.com") == (
        "ann.lee@fabrikam.onmicrosoft.com"
    )
    assert forwarding_address(mb, "fabrikam-mig.example") == "Ann.Lee@fabrikam-mig.example"


# -- X500 --------------------------------------------------------------------------------------
def test_x500_proxies_put_the_legacy_dn_first_without_duplicates() -> None:
    """LegacyExchangeDN becomes the first X500 proxy; existing X500 proxies follow, deduplicated."""
    mb = mailbox(
        email_addresses=(
            "SMTP:Ann.Lee@Fabrikam.example",
            f"x500:{LEGACY_DN.upper()}",  # the same DN again, other case
            "X500:/o=Old Org/cn=annlee",
        )
    )
    assert mb.x500_proxies() == [f"X500:{LEGACY_DN}", "X500:/o=Old Org/cn=annlee"]
    assert mailbox(legacy_exchange_dn=None, email_addresses=()).x500_proxies() == []


def test_source_mailbox_round_trips_through_a_dict() -> None:
    """to_dict/from_dict keep every field (tuples restored)."""
    mb = mailbox(usage_location="GB", exchange_guid="g-1")
    assert SourceMailbox.from_dict(mb.to_dict()) == mb
    assert mb.smtp_addresses == [
        "Ann.Lee@Fabrikam.example",
        "ann.lee@fabrikam.onmicrosoft.com",
        "al@fabrikam.example",
    ]
    assert mb.local_part == "Ann.Lee"


@pytest.mark.parametrize(
    "dn",
    [
        LEGACY_DN,
        "/o=First Org/ou=Site_A (West)/cn=Recipients/cn=o+brien",
        "/o=ExchangeLabs/cn=Recipients/cn=zoë@home",
    ],
)
def test_imceaex_encode_decode_round_trip(dn: str) -> None:
    """An X500 DN survives IMCEAEX encapsulation: '/' → '_', others as '+XX' (UTF-8 bytes)."""
    encoded = encode_imceaex(dn, "contoso.example")
    local, _, domain = encoded.rpartition("@")
    assert domain == "contoso.example" and local.startswith("IMCEAEX-")
    assert " " not in local and "/" not in local and "(" not in local
    assert decode_imceaex(local) == dn


def test_imceaex_matches_the_documented_ndr_form() -> None:
    """The encoding matches what Exchange NDRs show (imceaex-ndr troubleshooting article)."""
    dn = "/o=ExchangeLabs/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Recipients/cn=a_b"
    local = encode_imceaex(dn, "x.example").rpartition("@")[0]
    assert local == (
        "IMCEAEX-_o=ExchangeLabs_ou=Exchange+20Administrative+20Group+20+28FYDIBOHF23SPDLT+29"
        "_cn=Recipients_cn=a+5Fb"
    )
    assert decode_imceaex(local) == dn
    assert decode_imceaex("imceaex-_o=X_cn=Y") == "/o=X/cn=Y"  # prefix in any case


# -- phases ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("phase", "wanted", "expected"),
    [
        (None, Phase.DISCOVERED, False),
        ("discovered", Phase.DISCOVERED, True),
        ("discovered", Phase.PROVISIONED, False),
        ("provisioned", Phase.PROVISIONED, True),
        ("prestaged", Phase.PROVISIONED, True),
        ("cutover", Phase.PRESTAGED, True),
        ("prestaged", Phase.CUTOVER, False),
        # a rolled-back user is back to pre-staged: it can be cut over again, not counted as cut over
        ("rolled-back", Phase.PRESTAGED, True),
        ("rolled-back", Phase.PROVISIONED, True),
        ("rolled-back", Phase.CUTOVER, False),
    ],
)
def test_phase_at_least(phase: str | None, wanted: Phase, expected: bool) -> None:
    """Phases are ordered discovered < provisioned < prestaged < cutover; rolled-back = prestaged."""
    assert phase_at_least(phase, wanted) is expected
