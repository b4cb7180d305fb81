"""Mail routing across the seeded tenant pair: resolution, forwarding, policy, groups, loops."""

from __future__ import annotations

import json
import time

import pytest

from coexist.model import decode_imceaex, encode_imceaex
from coexist.sandbox import seed
from coexist.sandbox.model import (
    Contact,
    Group,
    OutboundSpamPolicy,
    OutboundSpamRule,
    RemoteDomain,
    Tenant,
    User,
    World,
)
from coexist.sandbox.routing import (
    MAX_HOPS,
    NDR_EXTERNAL_FORWARDING,
    NDR_LOOP,
    NDR_RECIPIENT_NOT_FOUND,
    NDR_X500_NOT_FOUND,
    Rules,
    parse_address,
    route,
)


@pytest.fixture
def world() -> World:
    return seed.generate(seed=4, users=50)


def mailboxes(tenant: Tenant) -> list[User]:
    return [u for u in tenant.users.values() if u.recipient_type_details == "UserMailbox"]


def mail_user(tenant: Tenant, alias: str, target: str, domain: str) -> User:
    """A MailUser whose targetAddress is `target` (what New-MailUser -ExternalEmailAddress makes)."""
    user = User(
        id=f"mu-{alias}-{tenant.display_name}",
        display_name=alias,
        name=alias,
        alias=alias,
        user_principal_name=f"{alias}@{domain}",
        email_addresses=[f"SMTP:{alias}@{domain}", f"smtp:{alias}@{tenant.initial_domain}"],
        legacy_exchange_dn=tenant.new_legacy_dn(alias),
        recipient_type_details="MailUser",
        external_email_address=f"SMTP:{target}",
    )
    tenant.users[user.id] = user
    tenant.touch(user)
    return user


def distribution_list(tenant: Tenant, alias: str, members: list[str]) -> Group:
    group = Group(
        id=f"dl-{alias}",
        display_name=alias,
        name=alias,
        alias=alias,
        kind="Distribution",
        email_addresses=[f"SMTP:{alias}@{seed.SOURCE_DOMAIN}"],
        members=members,
    )
    tenant.groups[group.id] = group
    tenant.touch(group)
    return group


def allow_external_forwarding(tenant: Tenant) -> None:
    tenant.auto_forwarding_mode = "On"
    tenant.touch()


# -- resolution --------------------------------------------------------------------------
def test_primary_address_delivers_to_the_inbox(world: World) -> None:
    """A mailbox's primary SMTP address delivers once to its Inbox in its tenant."""
    user = mailboxes(world.source)[0]
    d = route(world, user.primary_smtp or "")
    assert d.to_dict()["outcome"] == "delivered"
    assert (d.tenant, d.mailbox, d.to_dict()["folder"]) == ("source", user.primary_smtp, "Inbox")
    assert d.delivered() == [("source", user.primary_smtp)]


def test_secondary_alias_and_onmicrosoft_addresses_resolve_case_insensitively(world: World) -> None:
    """An smtp: alias and the onmicrosoft address (any case) reach the same mailbox."""
    user = next(
        u
        for u in mailboxes(world.source)
        if sum(a.startswith("smtp:") for a in u.email_addresses) > 1
    )
    alias = next(a[5:] for a in user.email_addresses[1:] if seed.SOURCE_DOMAIN in a)
    onmicrosoft = f"{user.alias}@{seed.SOURCE_INITIAL_DOMAIN}"
    for address in (alias, onmicrosoft, onmicrosoft.upper(), f"SMTP:{alias}"):
        assert route(world, address).mailbox == user.primary_smtp


def test_unknown_recipient_in_an_accepted_domain_ndrs_5_1_10(world: World) -> None:
    """An address nobody owns in an accepted domain bounces with RESOLVER.ADR.RecipientNotFound."""
    d = route(world, f"nobody@{seed.TARGET_DOMAIN}").to_dict()
    assert (d["outcome"], d["tenant"], d["ndr_code"]) == ("ndr", "target", "5.1.10")
    assert d["ndr_text"] == NDR_RECIPIENT_NOT_FOUND[1]
    assert d["ndr_text"].startswith("550 5.1.10 RESOLVER.ADR.RecipientNotFound")


def test_foreign_domain_leaves_both_tenants(world: World) -> None:
    """A domain neither tenant accepts is delivered outside (external), with no tenant."""
    d = route(world, "someone@northwind.example").to_dict()
    assert (d["outcome"], d["tenant"], d["address"]) == (
        "external",
        None,
        "someone@northwind.example",
    )


def test_raw_x500_needs_a_tenant_and_resolves_legacy_dn_and_x500_proxies(world: World) -> None:
    """A raw /o= DN resolves via tenant_hint or the sender's tenant: LegacyExchangeDN and X500 proxies."""
    user = next(
        u for u in mailboxes(world.source) if any(a.startswith("X500:") for a in u.email_addresses)
    )
    dn = user.legacy_exchange_dn or ""
    assert route(world, dn, tenant_hint="source").mailbox == user.primary_smtp
    assert route(world, dn.upper(), sender=f"x@{seed.SOURCE_DOMAIN}").mailbox == user.primary_smtp
    proxy = next(a for a in user.email_addresses if a.startswith("X500:"))
    assert route(world, proxy, tenant_hint=world.source.tenant_id).mailbox == user.primary_smtp
    with pytest.raises(ValueError):
        route(world, dn)
    missing = route(world, dn + "-gone", tenant_hint="source")
    assert (missing.outcome, missing.ndr_code) == ("ndr", "5.1.1")


def test_imceaex_address_resolves_in_the_domain_owner(world: World) -> None:
    """IMCEAEX-encapsulated LegacyExchangeDN resolves; an unknown one NDRs 5.1.1 ExRecipNotFound."""
    user = mailboxes(world.source)[3]
    address = encode_imceaex(user.legacy_exchange_dn or "", seed.SOURCE_DOMAIN)
    assert address.startswith("IMCEAEX-_o=ExchangeLabs_ou=Exchange+20Administrative+20Group+20+28")
    assert route(world, address).mailbox == user.primary_smtp
    stale = encode_imceaex("/o=Gone/ou=Old/cn=Recipients/cn=nobody", seed.SOURCE_DOMAIN)
    d = route(world, stale).to_dict()
    assert (d["outcome"], d["tenant"], d["ndr_code"]) == ("ndr", "source", "5.1.1")
    assert d["ndr_text"] == NDR_X500_NOT_FOUND[1]


def test_imceaex_decoding_follows_microsofts_rules() -> None:
    """'_' -> '/', '+20' -> space, '+28'/'+29' -> parentheses, '+5F' -> '_'; encode inverts it."""
    local = (
        "IMCEAEX-_O=MMS_OU=EXCHANGE+20ADMINISTRATIVE+20GROUP+20+28FYDIBOHF23SPDLT+29"
        "_CN=RECIPIENTS_CN=User6ed4e168"
    )
    assert decode_imceaex(local) == (
        "/O=MMS/OU=EXCHANGE ADMINISTRATIVE GROUP (FYDIBOHF23SPDLT)/CN=RECIPIENTS/CN=User6ed4e168"
    )
    dn = "/o=Org/ou=A_B+C/cn=Recipients/cn=x@y"
    assert parse_address(encode_imceaex(dn, "d.example")).value == dn


# -- MailUsers and forwarding ---------------------------------------------------------
def test_target_mailuser_forwards_to_the_source_mailbox(world: World) -> None:
    """The coexistence forwarder: a target MailUser's targetAddress lands in the source mailbox."""
    user = mailboxes(world.source)[0]
    mu = mail_user(world.target, "fwd1", user.primary_smtp or "", seed.TARGET_DOMAIN)
    d = route(world, mu.primary_smtp or "")
    assert (d.outcome, d.tenant, d.mailbox) == ("delivered", "source", user.primary_smtp)
    actions = [(h.tenant, h.action) for h in d.hops]
    assert actions == [
        ("target", "resolve"),
        ("target", "route"),
        ("source", "resolve"),
        ("source", "deliver"),
    ]


def test_pending_licensed_mailuser_is_still_a_mailuser(world: World) -> None:
    """A MailUser whose mailbox is not due yet routes by targetAddress; once due it is a mailbox."""
    user = mailboxes(world.source)[0]
    mu = mail_user(world.target, "pending", user.primary_smtp or "", seed.TARGET_DOMAIN)
    mu.mailbox_pending_at = time.time() + 3600
    assert route(world, mu.primary_smtp or "").tenant == "source"
    mu.mailbox_pending_at = time.time() - 1
    d = route(world, mu.primary_smtp or "")
    assert (d.tenant, d.mailbox) == ("target", mu.primary_smtp)


def test_smtp_forward_to_the_other_tenant_is_blocked_by_default(world: World) -> None:
    """ForwardingSmtpAddress to the other tenant under AutoForwardingMode Automatic NDRs 5.7.520."""
    src, dst = mailboxes(world.source)[0], mailboxes(world.target)[0]
    src.forwarding_smtp_address = f"smtp:{dst.primary_smtp}"
    d = route(world, src.primary_smtp or "").to_dict()
    assert (d["outcome"], d["tenant"], d["ndr_code"]) == ("ndr", "source", "5.7.520")
    assert d["ndr_text"] == NDR_EXTERNAL_FORWARDING[1]
    assert d["ndr_text"].endswith("AS(7555)")
    world.source.auto_forwarding_mode = "Off"
    assert route(world, src.primary_smtp or "").ndr_code == "5.7.520"


def test_smtp_forward_is_delivered_when_policy_and_remote_domain_allow(world: World) -> None:
    """With AutoForwardingMode On and remote domain '*' allowing, the forward is delivered."""
    src, dst = mailboxes(world.source)[0], mailboxes(world.target)[0]
    src.forwarding_smtp_address = f"smtp:{dst.primary_smtp}"
    allow_external_forwarding(world.source)
    d = route(world, src.primary_smtp or "")
    assert d.delivered() == [("target", dst.primary_smtp)]


def test_remote_domain_block_drops_the_forward_silently(world: World) -> None:
    """Policy On but the most specific remote domain disallows auto-forward: dropped, no NDR."""
    src, dst = mailboxes(world.source)[0], mailboxes(world.target)[0]
    src.forwarding_smtp_address = f"smtp:{dst.primary_smtp}"
    allow_external_forwarding(world.source)
    world.source.remote_domains.append(RemoteDomain("Contoso", seed.TARGET_DOMAIN, False))
    d = route(world, src.primary_smtp or "").to_dict()
    assert (d["outcome"], d["ndr_code"], d["address"]) == ("dropped", None, dst.primary_smtp)
    # The reverse: Default blocks but a specific domain entry allows.
    world.source.remote_domains[:] = [
        RemoteDomain("Default", "*", False),
        RemoteDomain("Contoso", seed.TARGET_DOMAIN, True),
    ]
    assert route(world, src.primary_smtp or "").outcome == "delivered"


def test_custom_policy_scoped_by_nested_group_blocks_only_its_members(world: World) -> None:
    """Default On, a custom Off policy for members of a DL (nested): members NDR 5.7.520,
    others are delivered; disabling the rule lifts the block."""
    a, b, c = mailboxes(world.source)[:3]
    dst = mailboxes(world.target)[0]
    for u in (a, b, c):
        u.forwarding_smtp_address = f"smtp:{dst.primary_smtp}"
    allow_external_forwarding(world.source)
    inner = distribution_list(world.source, "inner", [b.id])
    outer = distribution_list(world.source, "outer", [a.id, inner.id])
    world.source.outbound_spam_policies.append(OutboundSpamPolicy("No forwarding", "Off"))
    rule = OutboundSpamRule("No forwarding", "No forwarding", 0, member_of=[outer.id])
    world.source.outbound_spam_rules.append(rule)
    assert route(world, a.primary_smtp or "").ndr_code == "5.7.520"
    assert route(world, b.primary_smtp or "").ndr_code == "5.7.520"  # through `inner`
    assert route(world, c.primary_smtp or "").delivered() == [("target", dst.primary_smtp)]
    rule.enabled = False
    assert route(world, a.primary_smtp or "").outcome == "delivered"


def test_custom_allowing_policy_lets_its_users_out_past_a_blocking_default(world: World) -> None:
    """Default Automatic, a custom On policy for one user (priority 0) beats a domain-wide
    Off policy (priority 1): only that user's forward leaves."""
    a, b = mailboxes(world.source)[:2]
    dst = mailboxes(world.target)[0]
    for u in (a, b):
        u.forwarding_smtp_address = f"smtp:{dst.primary_smtp}"
    world.source.outbound_spam_policies += [
        OutboundSpamPolicy("Migration", "On"),
        OutboundSpamPolicy("Domain off", "Off"),
    ]
    world.source.outbound_spam_rules += [
        OutboundSpamRule("Domain off", "Domain off", 1, sender_domains=[seed.SOURCE_DOMAIN]),
        OutboundSpamRule("Migration", "Migration", 0, senders=[a.id]),
    ]
    assert route(world, a.primary_smtp or "").outcome == "delivered"
    assert route(world, b.primary_smtp or "").ndr_code == "5.7.520"


def test_remote_domain_wildcard_covers_the_domain_itself(world: World) -> None:
    """A '*.contoso' remote domain with AutoForwardEnabled false drops a forward to contoso."""
    src, dst = mailboxes(world.source)[0], mailboxes(world.target)[0]
    src.forwarding_smtp_address = f"smtp:{dst.primary_smtp}"
    allow_external_forwarding(world.source)
    world.source.remote_domains.append(RemoteDomain("Contoso", f"*.{seed.TARGET_DOMAIN}", False))
    assert route(world, src.primary_smtp or "").outcome == "dropped"


def test_smtp_forward_inside_the_tenant_is_not_external(world: World) -> None:
    """ForwardingSmtpAddress to another mailbox of the same tenant is internal: delivered."""
    a, b = mailboxes(world.source)[:2]
    a.forwarding_smtp_address = f"smtp:{b.primary_smtp}"
    assert route(world, a.primary_smtp or "").delivered() == [("source", b.primary_smtp)]


def test_forwarding_address_to_internal_mailuser_crosses_tenants(world: World) -> None:
    """ForwardingAddress -> source MailUser -> targetAddress in target: delivered under defaults."""
    src, dst = mailboxes(world.source)[0], mailboxes(world.target)[0]
    mu = mail_user(world.source, "tocontoso", dst.primary_smtp or "", seed.SOURCE_DOMAIN)
    src.forwarding_address = mu.id
    d = route(world, src.primary_smtp or "")
    assert d.delivered() == [("target", dst.primary_smtp)]
    # The unconfirmed stricter reading is one switch away.
    strict = route(
        world,
        src.primary_smtp or "",
        rules=Rules(forwarding_address_via_target_is_autoforward=True),
    )
    assert strict.ndr_code == "5.7.520"


def test_forwarding_address_wins_over_forwarding_smtp_address(world: World) -> None:
    """With both set, ForwardingAddress is used and ForwardingSmtpAddress ignored."""
    a, b, c = mailboxes(world.source)[:3]
    a.forwarding_address = b.id
    a.forwarding_smtp_address = f"smtp:{c.primary_smtp}"
    assert route(world, a.primary_smtp or "").delivered() == [("source", b.primary_smtp)]


def test_deliver_to_mailbox_and_forward_gives_two_deliveries(world: World) -> None:
    """DeliverToMailboxAndForward keeps a copy in the mailbox and forwards one."""
    a, b = mailboxes(world.source)[:2]
    a.forwarding_address = b.id
    a.deliver_to_mailbox_and_forward = True
    d = route(world, a.primary_smtp or "")
    assert d.delivered() == [("source", a.primary_smtp), ("source", b.primary_smtp)]
    assert d.to_dict()["mailbox"] == a.primary_smtp


# -- groups -----------------------------------------------------------------------------
def test_distribution_list_fans_out_once_per_member(world: World) -> None:
    """Nested and duplicated membership still yields exactly one copy per recipient."""
    src = world.source
    a, b, c = mailboxes(src)[:3]
    inner = distribution_list(src, "inner", [a.id, b.id])
    outer = distribution_list(src, "outer", [inner.id, a.id, c.id, inner.id])
    inner.members.append(outer.id)  # a membership cycle
    contact = next(iter(src.contacts.values()))
    outer.members.append(contact.id)
    d = route(world, outer.primary_smtp or "")
    assert sorted(m for _, m in d.delivered()) == sorted(
        [a.primary_smtp, b.primary_smtp, c.primary_smtp]
    )
    assert [leg.address for leg in d.deliveries if leg.outcome == "external"] == [
        contact.primary_smtp
    ]


def test_seeded_scope_group_reaches_every_transitive_member(world: World) -> None:
    """Mail to the scope group reaches each transitive member exactly once."""
    src = world.source
    scope = seed.group_by_name(src, seed.SCOPE_GROUP)
    d = route(world, scope.primary_smtp or "")
    want = {src.users[m].primary_smtp for m in seed.transitive_members(src, scope)}
    got = [m for _, m in d.delivered()]
    assert len(got) == len(set(got)) and set(got) == want


def test_dynamic_distribution_group_evaluates_its_filter(world: World) -> None:
    """'(Department -eq 'Sales')' delivers to exactly the Sales recipients."""
    src = world.source
    ddg = seed.group_by_name(src, seed.DYNAMIC_SALES)
    want = {u.primary_smtp for u in src.users.values() if u.department == "Sales"}
    assert {m for _, m in route(world, ddg.primary_smtp or "").delivered()} == want
    ddg.recipient_filter = "(Department -eq 'Sales') -and -not (City -like 'Mü*')"
    want = {
        u.primary_smtp
        for u in src.users.values()
        if u.department == "Sales" and u.city != "München"
    }
    assert {m for _, m in route(world, ddg.primary_smtp or "").delivered()} == want


def test_microsoft_365_group_receives_in_its_group_mailbox(world: World) -> None:
    """A Unified group delivers to its own group mailbox, not to each member."""
    unified = seed.group_by_name(world.source, seed.UNIFIED_GROUP)
    assert route(world, unified.primary_smtp or "").delivered() == [
        ("source", unified.primary_smtp)
    ]


def test_empty_distribution_list_is_dropped_without_ndr(world: World) -> None:
    """A DL with no members expands to nobody: no delivery and no NDR."""
    empty = distribution_list(world.source, "empty", [])
    d = route(world, empty.primary_smtp or "")
    assert (d.outcome, d.ndr_code, d.delivered()) == ("dropped", None, [])


# -- loops ---------------------------------------------------------------------------------
def test_mailuser_ping_pong_between_tenants_is_a_loop(world: World) -> None:
    """Source MailUser -> target MailUser -> source MailUser NDRs 5.4.14 (hop count exceeded)."""
    a = mail_user(world.source, "ping", f"pong@{seed.TARGET_DOMAIN}", seed.SOURCE_DOMAIN)
    mail_user(world.target, "pong", a.primary_smtp or "", seed.TARGET_DOMAIN)
    d = route(world, a.primary_smtp or "").to_dict()
    assert (d["outcome"], d["ndr_code"], d["ndr_text"]) == ("ndr", "5.4.14", NDR_LOOP[1])
    assert [leg["outcome"] for leg in d["deliveries"]] == ["ndr"]


def test_mailbox_forwarding_to_its_own_address_is_a_loop(world: World) -> None:
    """A source mailbox forwarding to one of its own addresses NDRs 5.4.14 and delivers nothing.

    What forward-on-source builds when the target address is the source address.
    """
    user = mailboxes(world.source)[0]
    secondary = next(a[5:] for a in user.email_addresses if a.startswith("smtp:"))
    for own in (user.primary_smtp or "", secondary):
        user.forwarding_smtp_address = f"smtp:{own}"
        d = route(world, user.primary_smtp or "")
        assert [(leg.outcome, leg.ndr_code, leg.tenant) for leg in d.deliveries] == [
            ("ndr", "5.4.14", "source")
        ], own
        assert d.ndr_text == NDR_LOOP[1] and d.first.object == user.id
        assert [h.action for h in d.hops] == ["resolve", "forward", "resolve", "ndr"]


def test_contact_whose_target_is_its_own_address_is_a_loop(world: World) -> None:
    """A contact pointing at an address it holds itself NDRs 5.4.14 (rename-source's failure)."""
    user = mailboxes(world.source)[0]
    address = user.primary_smtp or ""
    user.email_addresses = [f"SMTP:MIGWIZ-{user.alias}@{world.source.initial_domain}"]
    contact = Contact(
        id="c-self",
        display_name=user.display_name,
        name=user.name + " contact",
        alias=user.alias + "c",
        email_addresses=[f"SMTP:{address}"],
        external_email_address=f"SMTP:{address}",
    )
    world.source.contacts[contact.id] = contact
    world.source.touch(contact)
    d = route(world, address)
    assert (d.outcome, d.ndr_code, d.first.object) == ("ndr", "5.4.14", contact.id)
    assert d.delivered() == []


def test_forward_to_a_target_mailuser_routing_back_is_a_loop(world: World) -> None:
    """Source mailbox -> target MailUser whose targetAddress is that mailbox: 5.4.14, no copy."""
    user = mailboxes(world.source)[0]
    mu = mail_user(world.target, "back", user.primary_smtp or "", seed.TARGET_DOMAIN)
    user.forwarding_smtp_address = f"smtp:{mu.primary_smtp}"
    allow_external_forwarding(world.source)
    d = route(world, user.primary_smtp or "")
    assert [(leg.outcome, leg.ndr_code) for leg in d.deliveries] == [("ndr", "5.4.14")]
    assert [(h.tenant, h.action) for h in d.hops][-2:] == [("source", "resolve"), ("source", "ndr")]


def test_a_chain_longer_than_the_hop_limit_ndrs(world: World) -> None:
    """A MailUser chain longer than the hop limit is treated as a loop (5.4.14)."""
    final = mailboxes(world.source)[0]
    target = final.primary_smtp or ""
    for i in range(MAX_HOPS + 2):
        target = mail_user(world.source, f"chain{i}", target, seed.SOURCE_DOMAIN).primary_smtp or ""
    assert route(world, target).ndr_code == "5.4.14"
    assert route(world, target, rules=Rules(max_hops=100)).mailbox == final.primary_smtp


# -- purity and shape ---------------------------------------------------------------------
def test_routing_leaves_the_world_unchanged(world: World) -> None:
    """route() reads the World only (nothing is due to settle here)."""
    a, b = mailboxes(world.source)[:2]
    a.forwarding_address = b.id
    before = json.dumps(world.to_dict(), sort_keys=True)
    for address in (a.primary_smtp or "", "x@northwind.example", f"nobody@{seed.SOURCE_DOMAIN}"):
        route(world, address)
    assert json.dumps(world.to_dict(), sort_keys=True) == before


def test_delivery_json_shape(world: World) -> None:
    """to_dict() has the documented keys; each hop has tenant/object/kind/action/address."""
    d = route(world, mailboxes(world.source)[0].primary_smtp or "").to_dict()
    assert set(d) >= {
        "outcome",
        "tenant",
        "mailbox",
        "folder",
        "ndr_code",
        "ndr_text",
        "hops",
        "deliveries",
    }
    assert all(set(h) == {"tenant", "object", "kind", "action", "address"} for h in d["hops"])
    json.dumps(d)


def test_malformed_address_is_refused(world: World) -> None:
    """Something that is not an address is a caller error, not an NDR."""
    with pytest.raises(ValueError):
        route(world, "not-an-address")


def test_a_forwarding_recipient_reached_twice_is_handled_once(world: World) -> None:
    """A forwarding mailbox in two DLs of one message yields one forward (one NDR), not two."""
    src, dst = mailboxes(world.source)[0], mailboxes(world.target)[0]
    src.forwarding_smtp_address = f"smtp:{dst.primary_smtp}"
    one = distribution_list(world.source, "one", [src.id])
    two = distribution_list(world.source, "two", [src.id])
    both = distribution_list(world.source, "both", [one.id, two.id])
    d = route(world, both.primary_smtp or "")
    assert [(leg.outcome, leg.ndr_code) for leg in d.deliveries] == [("ndr", "5.7.520")]
