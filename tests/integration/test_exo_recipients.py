"""Recipient semantics of the Exchange admin face over HTTPS (httpx, secret and certificate)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from coexist.sandbox import Sandbox
from coexist.sandbox.graph.outlook_items import pim_store
from coexist.sandbox.limits import Limiter
from coexist.sandbox.model import Settings, Tenant, User
from tests.clients import EXO_SCOPE, bearer, exo_http, invoke, tenant

KEY = "target"


def add_mailbox(t: Tenant, alias: str, **extra: Any) -> User:
    dom = next(d.name for d in t.domains if d.is_default)
    u = User(
        id=f"b0000000-0000-4000-8000-{abs(hash(alias)) % 10**12:012d}",
        display_name=alias.title(),
        name=alias.title(),
        alias=alias,
        user_principal_name=f"{alias}@{dom}",
        email_addresses=[f"SMTP:{alias}@{dom}", f"smtp:{alias}@{t.initial_domain}"],
        recipient_type_details="UserMailbox",
        exchange_guid=f"e0000000-0000-4000-8000-{abs(hash(alias)) % 10**12:012d}",
        legacy_exchange_dn=t.new_legacy_dn(alias),
        **extra,
    )
    t.users[u.id] = u
    t.touch(u)
    return u


@pytest.fixture
def world_target(sandbox: Sandbox) -> Tenant:
    t = sandbox.world.target
    with sandbox.world.lock:
        add_mailbox(t, "alice")
        add_mailbox(t, "ann", item_count=42, total_item_size=50_917_744)
    return t


@pytest.fixture
def exo(world_target: Tenant, conn: dict[str, Any]) -> Iterator[httpx.Client]:
    with exo_http(conn, KEY) as client:
        yield client


def ok(resp: httpx.Response) -> list[dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    value: list[dict[str, Any]] = resp.json()["value"]
    return value


def run(
    exo: httpx.Client, conn: dict[str, Any], cmdlet: str, **params: Any
) -> list[dict[str, Any]]:
    """Run a cmdlet in the target tenant; it must succeed. Returns its output objects."""
    return ok(invoke(exo, conn, KEY, cmdlet, **params))


def detail(resp: httpx.Response) -> str:
    message: str = resp.json()["error"]["details"][0]["message"]
    return message


def default_domain(conn: dict[str, Any]) -> str:
    return str(tenant(conn, KEY)["domains"][1])


def test_paging_follows_next_link(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """Prefer: odata.maxpagesize pages the result; POSTing the same body to nextLink walks it."""
    t = sandbox.world.target
    with sandbox.world.lock:
        for i in range(7):
            add_mailbox(t, f"pager{i}")
    body = {"CmdletInput": {"CmdletName": "Get-Mailbox", "Parameters": {"ResultSize": "Unlimited"}}}
    seen: list[str] = []
    url: str | None = tenant(conn, KEY)["exo_url"]
    pages = 0
    with exo_http(conn, KEY) as client:
        while url:
            resp = client.post(url, json=body, headers={"Prefer": "odata.maxpagesize=3"})
            page = resp.json()
            assert resp.status_code == 200 and len(page["value"]) <= 3
            seen += [r["Alias"] for r in page["value"]]
            url = page.get("@odata.nextLink")
            assert url is None or url.startswith("https://")
            pages += 1
    expected = sorted(u.alias for u in t.users.values() if u.is_mailbox)
    assert sorted(seen) == expected and pages == -(-len(expected) // 3)


def test_next_link_with_another_body_is_refused(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """A skip token only continues the call it came from (EXO: invalid pagination request)."""
    with sandbox.world.lock:
        for i in range(3):
            add_mailbox(sandbox.world.target, f"tok{i}")
    with exo_http(conn, KEY) as client:
        first = client.post(
            tenant(conn, KEY)["exo_url"],
            json={"CmdletInput": {"CmdletName": "Get-Mailbox", "Parameters": {}}},
            headers={"Prefer": "odata.maxpagesize=1"},
        ).json()
        other = {"CmdletInput": {"CmdletName": "Get-Recipient", "Parameters": {}}}
        resp = client.post(first["@odata.nextLink"], json=other)
    assert resp.status_code == 400 and "Expired or Invalid pagination request" in detail(resp)


@pytest.mark.parametrize(
    "form",
    [
        "name",
        "alias",
        "primary",
        "secondary",
        "upn",
        "object_id",
        "guid",
        "exchange_guid",
        "legacy_dn",
        "x500",
        "dn",
    ],
)
def test_identity_resolution(
    form: str, world_target: Tenant, exo: httpx.Client, conn: dict[str, Any]
) -> None:
    """Get-Mailbox -Identity resolves every identity form Exchange accepts to the one mailbox."""
    alice = next(u for u in world_target.users.values() if u.alias == "alice")
    with_x500 = "X500:/o=Old/ou=First/cn=Recipients/cn=alice-old"
    alice.email_addresses.append(with_x500)
    world_target.touch(alice)
    identity = {
        "name": alice.name,
        "alias": "ALICE",
        "primary": alice.primary_smtp,
        "secondary": f"smtp:alice@{world_target.initial_domain}",
        "upn": alice.user_principal_name,
        "object_id": alice.id,
        "guid": alice.exchange_object_id,
        "exchange_guid": alice.exchange_guid,
        "legacy_dn": alice.legacy_exchange_dn,
        "x500": with_x500,
        "dn": f"CN={alice.name},OU={world_target.initial_domain},OU=Microsoft Exchange Hosted Organizations,DC=SANDBOX01,DC=PROD,DC=OUTLOOK,DC=COM",
    }[form]
    rows = run(exo, conn, "Get-Mailbox", Identity=identity)
    assert [r["ExternalDirectoryObjectId"] for r in rows] == [alice.id]


def test_missing_identity_is_an_error(exo: httpx.Client, conn: dict[str, Any]) -> None:
    """An identity that names nothing is 404 ManagementObjectNotFoundException, never all objects."""
    resp = invoke(exo, conn, KEY, "Get-Mailbox", Identity="nobody@nowhere.example")
    assert resp.status_code == 404
    error = resp.json()["error"]
    assert error["code"] == "NotFound" and error["message"] == "Error executing cmdlet"
    assert detail(resp).startswith(
        "Ex6F9304|Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException|"
    )
    assert "'nobody@nowhere.example'" in detail(resp)


def test_new_mailuser_is_an_entra_user_with_exchange_stamps(
    world_target: Tenant, exo: httpx.Client, conn: dict[str, Any]
) -> None:
    """New-MailUser creates a MailUser with a LegacyExchangeDN, no ExchangeGuid, UPN and MOERA."""
    row = run(exo, conn, "New-MailUser", Name="Zed Ext", ExternalEmailAddress="zed@src.example")[0]
    assert row["RecipientTypeDetails"] == "MailUser" and row["Alias"] == "ZedExt"
    assert row["ExchangeGuid"] == "00000000-0000-0000-0000-000000000000"
    assert row["LegacyExchangeDN"].startswith("/o=ExchangeLabs/")
    assert row["ExternalEmailAddress"] == "SMTP:zed@src.example"
    assert row["UserPrincipalName"] == f"ZedExt@{world_target.initial_domain}"
    assert row["EmailAddresses"] == [
        "SMTP:zed@src.example",
        f"smtp:ZedExt@{world_target.initial_domain}",
    ]
    user = world_target.users[row["ExternalDirectoryObjectId"]]
    assert user.recipient_type_details == "MailUser" and user.exchange_guid is None


def test_new_mailuser_primary_is_the_external_address_whatever_else_is_given(
    world_target: Tenant, exo: httpx.Client, conn: dict[str, Any]
) -> None:
    """The ExternalEmailAddress is the primary; -PrimarySmtpAddress is ignored; no alias@domain."""
    dom = default_domain(conn)
    row = run(
        exo,
        conn,
        "New-MailUser",
        Name="Pat Planned",
        Alias="pat",
        MicrosoftOnlineServicesID=f"pat@{dom}",
        Password="P@ss-1",
        ExternalEmailAddress="pat@fabrikam.example",
        PrimarySmtpAddress=f"pat@{dom}",
    )[0]
    assert row["PrimarySmtpAddress"] == row["WindowsEmailAddress"] == "pat@fabrikam.example"
    assert row["EmailAddresses"] == [
        "SMTP:pat@fabrikam.example",
        f"smtp:pat@{world_target.initial_domain}",
    ]
    assert row["UserPrincipalName"] == row["MicrosoftOnlineServicesID"] == f"pat@{dom}"
    # The UPN is not a proxy address, yet it identifies the object (Get-MailUser -Identity).
    again = run(exo, conn, "Get-MailUser", Identity=f"pat@{dom}")
    assert [r["ExternalDirectoryObjectId"] for r in again] == [row["ExternalDirectoryObjectId"]]
    bad = invoke(
        exo,
        conn,
        KEY,
        "New-MailUser",
        Name="Pat Bad",
        ExternalEmailAddress="patb@fabrikam.example",
        PrimarySmtpAddress="not an address",
    )
    assert bad.status_code == 400  # still an SmtpAddress


def test_new_mailuser_with_microsoft_online_services_id(
    exo: httpx.Client, conn: dict[str, Any]
) -> None:
    """-MicrosoftOnlineServicesID -Password sets the UPN; the alias derived from Name is made unique."""
    upn = f"zoe@{default_domain(conn)}"
    row = run(
        exo, conn, "New-MailUser", Name="al ice", MicrosoftOnlineServicesID=upn, Password="P@ss-1"
    )[0]
    assert row["UserPrincipalName"] == upn and row["Alias"] == "alice1"
    # Without -ExternalEmailAddress the alias still does not make the primary (*unverified*: UPN).
    assert row["PrimarySmtpAddress"] == upn


@pytest.mark.parametrize("keeps_external", [True, False], ids=["keeps-external", "drops-external"])
def test_set_mailuser_address_list_sets_the_primary_in_the_destination_domain(
    keeps_external: bool,
    sandbox: Sandbox,
    world_target: Tenant,
    exo: httpx.Client,
    conn: dict[str, Any],
) -> None:
    """-EmailAddresses replaces the list (SMTP: is primary); -PrimarySmtpAddress does nothing."""
    sandbox.world.settings.mailuser_external_proxy = keeps_external
    dom, moera = default_domain(conn), f"smtp:lee@{world_target.initial_domain}"
    run(
        exo,
        conn,
        "New-MailUser",
        Name="Lee",
        Alias="lee",
        MicrosoftOnlineServicesID=f"lee@{dom}",
        Password="P@ss-1",
        ExternalEmailAddress="lee@fabrikam.example",
    )
    ignored = invoke(
        exo, conn, KEY, "Set-MailUser", Identity="Lee", PrimarySmtpAddress=f"lee@{dom}"
    )
    assert ignored.status_code == 200, ignored.text
    row = run(exo, conn, "Get-MailUser", Identity="Lee")[0]
    assert row["PrimarySmtpAddress"] == "lee@fabrikam.example"

    wanted = [f"SMTP:lee@{dom}", moera, "X500:/o=Fabrikam/cn=Recipients/cn=lee"]
    run(exo, conn, "Set-MailUser", Identity="Lee", EmailAddresses=wanted)
    row = run(exo, conn, "Get-MailUser", Identity="Lee")[0]
    assert row["PrimarySmtpAddress"] == f"lee@{dom}"
    kept = ["smtp:lee@fabrikam.example"] if keeps_external else []
    assert row["EmailAddresses"] == wanted + kept
    assert row["ExternalEmailAddress"] == "SMTP:lee@fabrikam.example"

    # A changed target address: the old one is not kept; the primary stays where it was put.
    run(
        exo,
        conn,
        "Set-MailUser",
        Identity="Lee",
        ExternalEmailAddress="lee@fabrikam.onmicrosoft.com",
    )
    row = run(exo, conn, "Get-MailUser", Identity="Lee")[0]
    assert row["PrimarySmtpAddress"] == f"lee@{dom}"
    assert not any("lee@fabrikam.example" in a for a in row["EmailAddresses"])
    kept = ["smtp:lee@fabrikam.onmicrosoft.com"] if keeps_external else []
    assert row["EmailAddresses"] == wanted + kept


def test_licensing_a_fresh_mailuser_scrubs_its_external_primary(
    sandbox: Sandbox, world_target: Tenant, exo: httpx.Client, conn: dict[str, Any]
) -> None:
    """Licensed before its list is set, a MailUser loses the external primary: the MOERA is next."""
    from tests.integration.test_graph_licensing import E3_PLANS, add_sku, assign

    sku = add_sku(sandbox, "ENTERPRISEPACK", 1, E3_PLANS)
    row = run(
        exo,
        conn,
        "New-MailUser",
        Name="Una",
        Alias="una",
        MicrosoftOnlineServicesID=f"una@{default_domain(conn)}",
        Password="P@ss-1",
        ExternalEmailAddress="una@fabrikam.example",
    )[0]
    with sandbox.world.lock:
        world_target.users[row["ExternalDirectoryObjectId"]].usage_location = "US"
        world_target.touch()
    assign(conn, row["ExternalDirectoryObjectId"], sku.sku_id)
    got = run(exo, conn, "Get-Recipient", Identity="Una")[0]
    assert got["EmailAddresses"] == [f"SMTP:una@{world_target.initial_domain}"]


def test_name_longer_than_64_fails(exo: httpx.Client, conn: dict[str, Any]) -> None:
    """-Name over 64 characters is refused before anything is created."""
    resp = invoke(
        exo, conn, KEY, "New-MailUser", Name="n" * 65, ExternalEmailAddress="n@src.example"
    )
    assert resp.status_code == 400 and 'fewer than or equal to "64" characters' in detail(resp)


def test_duplicate_name_fails(exo: httpx.Client, conn: dict[str, Any]) -> None:
    """A Name already used in the tenant is refused with Exchange's text."""
    resp = invoke(
        exo, conn, KEY, "New-MailContact", Name="Alice", ExternalEmailAddress="al@src.example"
    )
    assert resp.status_code == 400 and 'The name "Alice" is already being used.' in detail(resp)


def test_proxy_conflict_names_the_owner(exo: httpx.Client, conn: dict[str, Any]) -> None:
    """Adding an address another recipient holds fails naming that recipient."""
    taken = f"alice@{default_domain(conn)}"
    resp = invoke(
        exo,
        conn,
        KEY,
        "Set-Mailbox",
        Identity="ann",
        EmailAddresses={"@odata.type": "#Exchange.GenericHashTable", "Add": [f"smtp:{taken}"]},
    )
    assert resp.status_code == 400
    assert (
        f'The proxy address "smtp:{taken}" is already being used by the proxy addresses or LegacyExchangeDN of "Alice".'
        in detail(resp)
    )
    assert "ProxyAddressExistsException" in detail(resp)


def test_mailbox_addresses_must_be_in_accepted_domains(
    exo: httpx.Client, conn: dict[str, Any]
) -> None:
    """A mailbox SMTP proxy outside the accepted domains is refused; X500 is not validated."""
    bad = invoke(
        exo,
        conn,
        KEY,
        "Set-Mailbox",
        Identity="ann",
        EmailAddresses={"Add": ["smtp:ann@not-ours.example"]},
    )
    assert bad.status_code == 400 and "not an accepted domain" in detail(bad)
    good = invoke(
        exo,
        conn,
        KEY,
        "Set-Mailbox",
        Identity="ann",
        EmailAddresses={"Add": ["X500:anything at all"]},
    )
    assert good.status_code == 200, good.text


def test_hashtable_add_and_remove(exo: httpx.Client, conn: dict[str, Any]) -> None:
    """@{Add=...; Remove=...} edits the list; an added SMTP: becomes primary and demotes the old one."""
    dom = default_domain(conn)
    ht = {
        "@odata.type": "#Exchange.GenericHashTable",
        "Add": [f"SMTP:ann.new@{dom}", "X500:/o=Src/cn=ann"],
        "Remove": [f"smtp:ann@{conn['tenants'][KEY]['initial_domain']}"],
    }
    run(exo, conn, "Set-Mailbox", Identity="ann", EmailAddresses=ht)
    row = run(exo, conn, "Get-Mailbox", Identity="ann")[0]
    assert row["PrimarySmtpAddress"] == f"ann.new@{dom}"
    assert row["EmailAddresses"] == [f"SMTP:ann.new@{dom}", f"smtp:ann@{dom}", "X500:/o=Src/cn=ann"]


def test_email_addresses_list_replaces_and_multiple_primaries_fail(
    exo: httpx.Client, conn: dict[str, Any]
) -> None:
    """A plain list replaces the addresses; two SMTP: primaries are refused."""
    dom = default_domain(conn)
    run(
        exo, conn, "Set-Mailbox", Identity="ann", EmailAddresses=[f"ann2@{dom}", f"SMTP:ann3@{dom}"]
    )
    row = run(exo, conn, "Get-Mailbox", Identity="ann")[0]
    assert row["EmailAddresses"] == [f"smtp:ann2@{dom}", f"SMTP:ann3@{dom}"]
    bad = invoke(
        exo,
        conn,
        KEY,
        "Set-Mailbox",
        Identity="ann",
        EmailAddresses=[f"SMTP:a1@{dom}", f"SMTP:a2@{dom}"],
    )
    assert bad.status_code == 400 and "multiple primary SMTP addresses" in detail(bad)


def test_windows_email_address_sets_primary(exo: httpx.Client, conn: dict[str, Any]) -> None:
    """-WindowsEmailAddress makes the address primary."""
    dom = default_domain(conn)
    run(exo, conn, "Set-Mailbox", Identity="ann", WindowsEmailAddress=f"annie@{dom}")
    assert run(exo, conn, "Get-Mailbox", Identity="ann")[0]["PrimarySmtpAddress"] == f"annie@{dom}"


def test_external_email_address_change_drops_old_value(
    exo: httpx.Client, conn: dict[str, Any]
) -> None:
    """Set-MailUser -ExternalEmailAddress replaces the target; the old one is not kept as a proxy."""
    run(exo, conn, "New-MailUser", Name="Moe", ExternalEmailAddress="moe@old.example")
    run(exo, conn, "Set-MailUser", Identity="Moe", ExternalEmailAddress="SMTP:moe@new.example")
    row = run(exo, conn, "Get-MailUser", Identity="Moe")[0]
    assert row["ExternalEmailAddress"] == "SMTP:moe@new.example"
    # It was the primary by default (New-MailUser.md): the new external address takes its place.
    assert row["PrimarySmtpAddress"] == "moe@new.example"
    assert not any("old.example" in a for a in row["EmailAddresses"])


def test_forwarding_fields(world_target: Tenant, exo: httpx.Client, conn: dict[str, Any]) -> None:
    """-ForwardingAddress resolves an internal recipient; -ForwardingSmtpAddress is stored smtp:."""
    run(
        exo,
        conn,
        "Set-Mailbox",
        Identity="ann",
        ForwardingAddress="alice",
        ForwardingSmtpAddress="ann@ext.example",
        DeliverToMailboxAndForward=False,
    )
    row = run(exo, conn, "Get-Mailbox", Identity="ann")[0]
    assert row["ForwardingAddress"] == "Alice"
    assert row["ForwardingSmtpAddress"] == "smtp:ann@ext.example"
    assert row["DeliverToMailboxAndForward"] is False
    ann = next(u for u in world_target.users.values() if u.alias == "ann")
    alice = next(u for u in world_target.users.values() if u.alias == "alice")
    assert ann.forwarding_address == alice.id
    run(
        exo, conn, "Set-Mailbox", Identity="ann", ForwardingAddress=None, ForwardingSmtpAddress=None
    )
    row = run(exo, conn, "Get-Mailbox", Identity="ann")[0]
    assert row["ForwardingAddress"] is None and row["ForwardingSmtpAddress"] is None


def test_remove_frees_addresses(exo: httpx.Client, conn: dict[str, Any]) -> None:
    """Remove-MailUser deletes the object; its addresses can be used again."""
    run(exo, conn, "New-MailUser", Name="Gone", ExternalEmailAddress="gone@src.example")
    run(exo, conn, "Remove-MailUser", Identity="Gone", Confirm=False)
    assert invoke(exo, conn, KEY, "Get-MailUser", Identity="Gone").status_code == 404
    again = invoke(
        exo, conn, KEY, "New-MailUser", Name="Gone", ExternalEmailAddress="gone@src.example"
    )
    assert again.status_code == 200, again.text


def test_contact_lifecycle(exo: httpx.Client, conn: dict[str, Any]) -> None:
    """A mail contact's primary is its external address; Set changes it; Remove deletes it."""
    row = run(exo, conn, "New-MailContact", Name="Ext Kim", ExternalEmailAddress="kim@src.example")[
        0
    ]
    assert (
        row["PrimarySmtpAddress"] == "kim@src.example"
        and row["RecipientTypeDetails"] == "MailContact"
    )
    run(
        exo,
        conn,
        "Set-MailContact",
        Identity="kim@src.example",
        ExternalEmailAddress="kim@new.example",
    )
    row = run(exo, conn, "Get-MailContact", Identity="Ext Kim")[0]
    assert row["ExternalEmailAddress"] == "SMTP:kim@new.example" and row["EmailAddresses"] == [
        "SMTP:kim@new.example"
    ]
    run(exo, conn, "Remove-MailContact", Identity="Ext Kim")
    assert invoke(exo, conn, KEY, "Get-MailContact", Identity="Ext Kim").status_code == 404


def test_filter_and_result_size(exo: httpx.Client, conn: dict[str, Any]) -> None:
    """-Filter on RecipientTypeDetails / EmailAddresses and -ResultSize narrow Get-Recipient."""
    run(exo, conn, "New-MailUser", Name="Fil", ExternalEmailAddress="fil@src.example")
    rows = run(
        exo,
        conn,
        "Get-Recipient",
        Filter="RecipientTypeDetails -eq 'MailUser' -and EmailAddresses -like 'smtp:fil@*'",
    )
    assert [r["Name"] for r in rows] == ["Fil"]
    assert len(run(exo, conn, "Get-Mailbox", ResultSize=1)) == 1
    bad = invoke(exo, conn, KEY, "Get-Recipient", Filter="NoSuchProperty -eq 'x'")
    assert bad.status_code == 400 and "Invalid filter syntax" in detail(bad)


def test_licensed_mailuser_becomes_mailbox_after_settle(
    world_target: Tenant, sandbox: Sandbox, exo: httpx.Client, conn: dict[str, Any]
) -> None:
    """Reads settle the tenant first: a MailUser whose mailbox is due shows as a UserMailbox."""
    row = run(exo, conn, "New-MailUser", Name="Lic", ExternalEmailAddress="lic@src.example")[0]
    with sandbox.world.lock:
        user = world_target.users[row["ExternalDirectoryObjectId"]]
        user.mailbox_pending_at = time.time() - 1
        world_target.touch(user)  # the model's contract: every mutation is touched
    got = run(exo, conn, "Get-Mailbox", Identity="Lic")[0]
    assert (
        got["RecipientTypeDetails"] == "UserMailbox"
        and got["ExchangeGuid"] != "00000000-0000-0000-0000-000000000000"
    )


def test_mailbox_statistics_sizes(
    world_target: Tenant, sandbox: Sandbox, exo: httpx.Client, conn: dict[str, Any]
) -> None:
    """Get-MailboxStatistics counts what the mailbox holds (messages in every folder, contacts,
    events) at the stores' sizes, in Exchange's TotalItemSize text; not the directory's seed."""
    ann = next(u for u in world_target.users.values() if u.alias == "ann")
    empty = run(exo, conn, "Get-MailboxStatistics", Identity="ann")[0]
    assert empty["ItemCount"] == 0 and empty["TotalItemSize"] == "0 B (0 bytes)"
    mimes = [
        f"Subject: m{i}\r\nFrom: a@b.example\r\n\r\n{'x' * 1000 * i}\r\n".encode()
        for i in range(1, 4)
    ]
    for mime, folder in zip(mimes, ("inbox", "sentitems", "deleteditems"), strict=True):
        sandbox.mail.deliver(KEY, ann.id, mime, folder)
    assert sandbox.ctx is not None
    pim = pim_store(sandbox.ctx)
    contacts = pim.default_folder(KEY, ann.id, "contacts")
    contact = pim.create_item(KEY, ann.id, contacts.id, "contact", {"displayName": "Bo"})
    row = run(exo, conn, "Get-MailboxStatistics", Identity="ann")[0]
    size = sum(len(m) for m in mimes) + len(json.dumps(contact.props).encode())
    assert row["ItemCount"] == 4
    assert row["TotalItemSize"] == f"{size / 1024:.4g} KB ({size:,} bytes)"


def test_certificate_credential_and_domain_in_url(
    world_target: Tenant, conn: dict[str, Any]
) -> None:
    """A certificate token works, and the URL may name the tenant by a domain instead of its GUID."""
    token = bearer(conn, KEY, EXO_SCOPE, kind="cert")
    url = tenant(conn, KEY)["exo_url"].replace(
        tenant(conn, KEY)["tenant_id"], world_target.initial_domain
    )
    with exo_http(conn, KEY, token=token) as client:
        resp = client.post(
            url,
            json={
                "CmdletInput": {"CmdletName": "Get-Mailbox", "Parameters": {"Identity": "alice"}}
            },
        )
    assert resp.status_code == 200 and resp.json()["value"][0]["Alias"] == "alice"


def test_no_token_is_401(conn: dict[str, Any]) -> None:
    """Without a bearer token the endpoint answers 401 with a Bearer challenge."""
    with httpx.Client(verify=conn["ca_file"]) as client:
        resp = client.post(
            tenant(conn, KEY)["exo_url"],
            json={"CmdletInput": {"CmdletName": "Get-Mailbox", "Parameters": {}}},
        )
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")


def test_other_tenants_url_is_401(conn: dict[str, Any]) -> None:
    """A token for one tenant cannot call the other tenant's endpoint."""
    with exo_http(conn, KEY) as client:
        resp = client.post(
            tenant(conn, "source")["exo_url"],
            json={"CmdletInput": {"CmdletName": "Get-Mailbox", "Parameters": {}}},
        )
    assert resp.status_code == 401


def test_missing_manage_as_app_is_401_and_missing_role_is_403(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """Without Exchange.ManageAsApp: 401; with it but no Exchange admin role in wids: 403."""
    app = sandbox.world.target.apps[0]
    body = {"CmdletInput": {"CmdletName": "Get-Mailbox", "Parameters": {}}}
    with sandbox.world.lock:
        app.exchange_roles = []
    with exo_http(conn, KEY) as client:
        resp = client.post(tenant(conn, KEY)["exo_url"], json=body)
    assert resp.status_code == 403 and set(resp.content) == {0}
    with sandbox.world.lock:
        app.exchange_manage_as_app = False
        app.exchange_roles = ["Exchange Administrator"]
    with exo_http(conn, KEY) as client:
        resp = client.post(tenant(conn, KEY)["exo_url"], json=body)
    assert resp.status_code == 401


def test_global_reader_cannot_write(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """A read-only Entra role may run Get-* but a write cmdlet is 403."""
    with sandbox.world.lock:
        sandbox.world.target.apps[0].exchange_roles = ["Global Reader"]
    with exo_http(conn, KEY) as client:
        assert invoke(client, conn, KEY, "Get-AcceptedDomain").status_code == 200
        resp = invoke(
            client, conn, KEY, "New-MailContact", Name="N", ExternalEmailAddress="n@src.example"
        )
    assert resp.status_code == 403


def test_throttled_write_is_429_with_retry_after(
    sandbox: Sandbox, exo: httpx.Client, conn: dict[str, Any]
) -> None:
    """When the directory-write bucket is empty the call is 429 with Retry-After in seconds."""
    assert sandbox.ctx is not None
    limiter = Limiter(Settings(profile="published"))
    t = tenant(conn, KEY)
    while limiter.admit("directory_write", (t["tenant_id"], t["client_id"])) is None:
        pass
    sandbox.ctx.limiter = limiter
    resp = invoke(exo, conn, KEY, "Set-Mailbox", Identity="ann", DisplayName="Throttled")
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1
    assert resp.json()["error"]["code"] == "TooManyRequests"
