"""The seeded tenant generator: deterministic, realistic, and awkward where migrations are."""

from __future__ import annotations

import json
import re

import pytest

from coexist.sandbox import seed
from coexist.sandbox.model import World


@pytest.fixture(scope="module")
def world() -> World:
    return seed.generate(seed=11, users=50)


def people(world: World) -> list:
    return [u for u in world.source.users.values() if u.recipient_type_details == "UserMailbox"]


def test_same_seed_and_size_give_identical_worlds() -> None:
    """Same (seed, users) -> byte-identical to_dict(); another seed -> a different world."""
    a = json.dumps(seed.generate(5, 60).to_dict(), sort_keys=True)
    b = json.dumps(seed.generate(5, 60).to_dict(), sort_keys=True)
    c = json.dumps(seed.generate(6, 60).to_dict(), sort_keys=True)
    assert a == b
    assert a != c


def test_tenant_ids_and_full_app_do_not_depend_on_size() -> None:
    """Tenant ids and apps[0] credentials depend on the seed only, not on the user count."""
    small, large = seed.generate(9, 10), seed.generate(9, 300)
    for key in ("source", "target"):
        assert small.tenants[key].tenant_id == large.tenants[key].tenant_id
        assert small.tenants[key].apps[0] == large.tenants[key].apps[0]


def test_world_survives_a_save_load_round_trip(world: World) -> None:
    """to_dict -> from_dict -> to_dict is lossless for the seeded world."""
    assert World.from_dict(world.to_dict()).to_dict() == world.to_dict()


def test_timestamps_are_seeded_not_wall_clock(world: World) -> None:
    """created/changed come from the seed's fixed epoch (years before any test runs)."""
    stamps = {o.created for t in world.tenants.values() for o in t.objects()}
    assert all(re.fullmatch(r"20(19|20|17|18)-\d\d-\d\dT\d\d:\d\d:\d\dZ", s) for s in stamps)


def test_tenants_have_the_documented_domains(world: World) -> None:
    """Source: fabrikam vanity default + onmicrosoft initial; target adds a verified routing domain."""
    src = {d.name: d for d in world.source.domains}
    tgt = {d.name: d for d in world.target.domains}
    assert src[seed.SOURCE_DOMAIN].is_default and src[seed.SOURCE_INITIAL_DOMAIN].is_initial
    assert tgt[seed.TARGET_DOMAIN].is_default and tgt[seed.TARGET_INITIAL_DOMAIN].is_initial
    assert tgt[seed.TARGET_ROUTING_DOMAIN].is_verified
    assert not tgt[seed.TARGET_ROUTING_DOMAIN].is_default


def test_source_has_exactly_n_users_of_every_mailbox_kind(world: World) -> None:
    """`users` source objects: mostly UserMailbox plus Shared, Room and Equipment mailboxes."""
    kinds = [u.recipient_type_details for u in world.source.users.values()]
    assert len(kinds) == 50
    assert kinds.count("UserMailbox") > 40
    for kind in ("SharedMailbox", "RoomMailbox", "EquipmentMailbox"):
        assert kinds.count(kind) >= 1
    resources = [
        u for u in world.source.users.values() if u.recipient_type_details != "UserMailbox"
    ]
    assert all(not u.account_enabled and not u.assigned_licenses for u in resources)


def test_names_include_non_ascii_and_over_long_display_names(world: World) -> None:
    """Display names carry é, ø, ß, Ł, CJK, ñ; some exceed 64 chars and Name is cut at 64."""
    displays = " ".join(u.display_name for u in world.source.users.values())
    for ch in ("é", "ø", "ß", "Ł", "王", "ñ"):
        assert ch in displays
    long = [u for u in world.source.users.values() if len(u.display_name) > 64]
    assert long
    for u in long:
        assert len(u.name) <= seed.EXCHANGE_NAME_MAX
        assert u.display_name.startswith(u.name)
    assert all(len(o.name) <= 64 for t in world.tenants.values() for o in t.objects())


def test_aliases_are_ascii_unique_and_match_upn_and_proxies(world: World) -> None:
    """Alias ASCII-folded and unique; UPN = alias@vanity = SMTP primary; smtp at onmicrosoft."""
    users = list(world.source.users.values())
    aliases = [u.alias for u in users]
    assert len(set(aliases)) == len(aliases)
    for u in users:
        assert re.fullmatch(r"[a-z0-9.]+", u.alias)
        assert u.user_principal_name == f"{u.alias}@{seed.SOURCE_DOMAIN}"
        assert u.email_addresses[0] == f"SMTP:{u.user_principal_name}"
        assert f"smtp:{u.alias}@{seed.SOURCE_INITIAL_DOMAIN}" in u.email_addresses
        assert u.legacy_exchange_dn and u.legacy_exchange_dn.startswith("/o=ExchangeLabs/")
        assert u.exchange_guid
    assert seed.ascii_fold("Søren Østergaard") == "sorenostergaard"
    assert seed.ascii_fold("Jürgen Strauß") == "jurgenstrauss"


def test_some_users_have_extra_aliases_and_old_x500_proxies(world: World) -> None:
    """Extra smtp: aliases and X500: proxies from an older org exist on some users only."""
    users = people(world)
    extra = [u for u in users if sum(a.startswith("smtp:") for a in u.email_addresses) > 1]
    x500 = [u for u in users if any(a.startswith("X500:") for a in u.email_addresses)]
    assert 0 < len(extra) < len(users)
    assert 0 < len(x500) < len(users)
    assert all(
        a[5:].startswith(seed.OLD_ORG_X500_PREFIX)
        for u in x500
        for a in u.email_addresses
        if a.startswith("X500:")
    )


def test_people_have_directory_attributes_with_gaps(world: World) -> None:
    """Department/title/city/country set; usageLocation mostly set; some accounts disabled."""
    users = people(world)
    assert all(u.department and u.job_title and u.city and u.country for u in users)
    missing_location = [u for u in users if u.usage_location is None]
    assert 0 < len(missing_location) < len(users) // 4
    assert any(not u.account_enabled for u in users)
    assert all(u.item_count > 0 and u.total_item_size > u.item_count for u in users)
    assert all(u.assigned_licenses == [seed.SPE_E3_SKU_ID] for u in users)


def test_scope_group_nests_a_group_with_more_users(world: World) -> None:
    """The scope group (name with spaces) holds a nested mail-enabled security group."""
    src = world.source
    scope = seed.group_by_name(src, seed.SCOPE_GROUP)
    nested = seed.group_by_name(src, seed.SCOPE_NESTED_GROUP)
    assert scope.kind == nested.kind == "MailSecurity"
    assert nested.id in scope.members
    direct = {m for m in scope.members if m in src.users}
    transitive = seed.transitive_members(src, scope)
    assert direct < transitive
    assert transitive - direct  # only nesting finds these users
    assert scope.primary_smtp and scope.primary_smtp.endswith("@" + seed.SOURCE_DOMAIN)


def test_distribution_lists_nest_and_hold_a_contact(world: World) -> None:
    """All Staff nests department DLs; a DL has a contact member; partner DL holds contacts."""
    src = world.source
    all_staff = seed.group_by_name(src, seed.DL_ALL_STAFF)
    nested = [src.groups[m] for m in all_staff.members if m in src.groups]
    assert nested and all(g.kind == "Distribution" for g in nested)
    assert any(m in src.contacts for g in nested for m in g.members)
    partners = seed.group_by_name(src, seed.DL_PARTNERS)
    assert partners.members and all(m in src.contacts for m in partners.members)
    for c in src.contacts.values():
        assert c.external_email_address == "SMTP:" + (c.primary_smtp or "")
        assert c.primary_smtp and not c.primary_smtp.endswith(seed.SOURCE_DOMAIN)


def test_other_group_kinds_are_seeded(world: World) -> None:
    """Plain security groups (no mail), dynamic DLs with filters, one Microsoft 365 group."""
    src = world.source
    for name in seed.SECURITY_GROUPS:
        g = seed.group_by_name(src, name)
        assert g.kind == "Security" and not g.email_addresses and g.members
    ddg = seed.group_by_name(src, seed.DYNAMIC_SALES)
    assert ddg.kind == "Dynamic" and ddg.recipient_filter == seed.DYNAMIC_SALES_FILTER
    unified = seed.group_by_name(src, seed.UNIFIED_GROUP)
    assert unified.kind == "Unified" and unified.owners
    assert all(m in src.users for m in unified.members)


def test_target_has_address_and_name_conflicts(world: World) -> None:
    """Target staff already own some source aliases at the target domain and one source Name."""
    conflicts = seed.conflicting_aliases(world)
    assert conflicts
    jsmith = world.target.address_owner(f"{conflicts[0]}@{seed.TARGET_DOMAIN}")
    assert jsmith is not None
    source_names = {u.name for u in world.source.users.values()}
    assert any(u.name in source_names for u in world.target.users.values())
    # A Contoso contact already carries a Fabrikam person's address as its proxy.
    first = people(world)[0]
    assert world.target.address_owner(first.primary_smtp or "") is not None


def test_target_licences_are_short_of_seats(world: World) -> None:
    """Office 365 E3 (Microsoft's ids, with Exchange plan) has fewer free seats than source users."""
    tgt = world.target
    e3 = tgt.sku(seed.ENTERPRISEPACK_SKU_ID)
    exo = tgt.sku(seed.EXCHANGESTANDARD_SKU_ID)
    assert e3 is not None and exo is not None
    assert e3.sku_part_number == "ENTERPRISEPACK"
    assert seed.ENTERPRISEPACK_SKU_ID == "6fd2c87f-b296-42f0-b197-1e91e994b900"
    plans = {p["servicePlanName"]: p["servicePlanId"] for p in e3.service_plans}
    assert plans["EXCHANGE_S_ENTERPRISE"] == "efb87545-963c-4e0d-99df-69c6916d9eb0"
    assert exo.service_plans[0]["servicePlanId"] == "9aaf7827-d63c-4b61-89c3-182f06f82e5c"
    free = e3.enabled - tgt.consumed_units(e3.sku_id)
    source_users = len(world.source.users)
    assert 0 < free < source_users
    assert free + exo.enabled - tgt.consumed_units(exo.sku_id) < source_users


def test_policies_are_microsofts_defaults(world: World) -> None:
    """AutoForwardingMode Automatic and remote domain Default '*' allowing auto-forward."""
    for t in world.tenants.values():
        assert t.auto_forwarding_mode == "Automatic"
        assert [(r.name, r.domain_name, r.auto_forward_enabled) for r in t.remote_domains] == [
            ("Default", "*", True)
        ]


def test_each_tenant_has_a_full_app_and_a_readonly_app(world: World) -> None:
    """apps[0]: all Graph roles + ManageAsApp + Exchange Administrator; apps[1]: User.Read.All."""
    for key, t in world.tenants.items():
        full, readonly = t.apps
        assert full.display_name == f"coexist-{key}"
        assert full.graph_roles == seed.GRAPH_APP_ROLES
        assert full.exchange_manage_as_app and full.exchange_roles == ["Exchange Administrator"]
        assert readonly.display_name == seed.READONLY_APP
        assert readonly.graph_roles == ["User.Read.All"]
        assert not readonly.exchange_manage_as_app and not readonly.exchange_roles
        assert readonly.client_id != full.client_id
        assert readonly.client_secret and readonly.client_secret != full.client_secret


def test_two_thousand_users_generate(world: World) -> None:
    """A 2,000-user pair generates (fast: see the report) with unique aliases and addresses."""
    big = seed.generate(2, 2000)
    users = list(big.source.users.values())
    assert len(users) == 2000
    assert len({u.alias for u in users}) == 2000
    addrs = [a.lower() for u in users for a in u.email_addresses if a.lower().startswith("smtp:")]
    assert len(set(addrs)) == len(addrs)


@pytest.mark.parametrize("n", [0, 1, 3, 12])
def test_tiny_tenants_still_generate(n: int) -> None:
    """Small sizes work: exactly n source users, the scope group always exists."""
    w = seed.generate(1, n)
    assert len(w.source.users) == n
    assert seed.group_by_name(w.source, seed.SCOPE_GROUP)
