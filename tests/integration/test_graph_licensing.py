"""Graph licensing through msgraph-sdk: subscribedSkus and assignLicense with Exchange effects."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from msgraph.generated.models.assigned_license import AssignedLicense
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.users.item.assign_license.assign_license_post_request_body import (
    AssignLicensePostRequestBody,
)

from coexist.sandbox import Sandbox
from coexist.sandbox.model import Sku, User, new_guid
from tests.clients import graph_client

E3_PLANS = [
    {
        "servicePlanId": "efb87545-963c-4e0d-99df-69c6916d9eb0",
        "servicePlanName": "EXCHANGE_S_ENTERPRISE",
    }
]


def add_sku(sandbox: Sandbox, part: str, seats: int, plans: list[dict[str, str]]) -> Sku:
    tenant = sandbox.world.target
    with sandbox.world.lock:
        sku = Sku(sku_id=new_guid(), sku_part_number=part, enabled=seats, service_plans=plans)
        tenant.skus.append(sku)
        tenant.touch()
    return sku


def add_user(sandbox: Sandbox, alias: str, **fields: Any) -> User:
    tenant = sandbox.world.target
    with sandbox.world.lock:
        u = User(
            id=new_guid(),
            display_name=alias.title(),
            alias=alias,
            user_principal_name=f"{alias}@contoso.example",
            **fields,
        )
        tenant.users[u.id] = u
        tenant.touch(u)
    return u


def assign_body(sku_id: str) -> AssignLicensePostRequestBody:
    return AssignLicensePostRequestBody(
        add_licenses=[AssignedLicense(sku_id=sku_id, disabled_plans=[])], remove_licenses=[]
    )


def assign(conn: dict[str, Any], user_id: str, sku_id: str) -> Any:
    async def run() -> Any:
        client = graph_client(conn, "target")
        return await client.users.by_user_id(user_id).assign_license.post(assign_body(sku_id))

    return asyncio.run(run())


def assign_error(conn: dict[str, Any], user_id: str, sku_id: str) -> ODataError:
    with pytest.raises(ODataError) as err:
        assign(conn, user_id, sku_id)
    assert err.value.response_status_code == 400
    return err.value


def test_subscribed_skus_report_consumed_units(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """subscribedSkus parses in the SDK with prepaidUnits, computed consumedUnits and plans."""
    sku = add_sku(sandbox, "ENTERPRISEPACK", 5, E3_PLANS)
    for i in range(2):
        add_user(sandbox, f"holder{i}", usage_location="US", assigned_licenses=[sku.sku_id])

    async def run() -> Any:
        return await graph_client(conn, "target").subscribed_skus.get()

    res = asyncio.run(run())
    mine = [s for s in res.value if s.sku_id and str(s.sku_id) == sku.sku_id]
    assert len(mine) == 1
    got = mine[0]
    assert got.consumed_units == 2 and got.prepaid_units.enabled == 5
    assert got.sku_part_number == "ENTERPRISEPACK" and got.applies_to == "User"
    assert [p.service_plan_name for p in got.service_plans] == ["EXCHANGE_S_ENTERPRISE"]


def test_assign_license_returns_user(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """assignLicense with a usage location and a free seat returns the user; seats are consumed."""
    sku = add_sku(sandbox, "ENTERPRISEPACK", 3, E3_PLANS)
    u = add_user(sandbox, "licensee", usage_location="NL")
    got = assign(conn, u.id, sku.sku_id)
    assert got.id == u.id and got.user_principal_name == u.user_principal_name
    assert u.assigned_licenses == [sku.sku_id]
    assert sandbox.world.target.consumed_units(sku.sku_id) == 1


def test_assign_license_requires_usage_location(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """Without usageLocation Graph refuses with its 'invalid usage location' 400."""
    sku = add_sku(sandbox, "ENTERPRISEPACK", 3, E3_PLANS)
    u = add_user(sandbox, "nowhere")
    err = assign_error(conn, u.id, sku.sku_id)
    assert err.error is not None and err.error.code == "Request_BadRequest"
    assert err.error.message == (
        "License assignment cannot be done for user with invalid usage location."
    )
    assert u.assigned_licenses == []


def test_assign_license_without_free_seat(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """A SKU with every seat consumed answers Request_BadRequest 'no available licenses'."""
    sku = add_sku(sandbox, "ENTERPRISEPACK", 1, E3_PLANS)
    add_user(sandbox, "first", usage_location="US", assigned_licenses=[sku.sku_id])
    late = add_user(sandbox, "late", usage_location="US")
    err = assign_error(conn, late.id, sku.sku_id)
    assert err.error is not None and err.error.code == "Request_BadRequest"
    assert "does not have any available licenses" in (err.error.message or "")


def test_assign_unknown_sku(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """An skuId the tenant does not own is a 400."""
    u = add_user(sandbox, "unknownsku", usage_location="US")
    err = assign_error(conn, u.id, new_guid())
    assert err.error is not None and err.error.code == "Request_BadRequest"


def test_licensing_mailuser_provisions_mailbox(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """A MailUser without ExchangeGuid becomes a UserMailbox after the delay; unverified proxies go."""
    sandbox.world.settings.provisioning_delay_s = 0.2
    sku = add_sku(sandbox, "ENTERPRISEPACK", 3, E3_PLANS)
    addresses = [
        "SMTP:mover@contoso.example",
        "smtp:mover@fabrikam.example",  # the source's domain: not accepted in the target
        "X500:/o=ExchangeLabs/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Recipients/cn=x",
    ]
    u = add_user(
        sandbox, "mover", usage_location="US", recipient_type_details="MailUser",
        email_addresses=addresses, external_email_address="SMTP:mover@fabrikam.example",
    )  # fmt: skip
    assign(conn, u.id, sku.sku_id)
    assert u.email_addresses == [addresses[0], addresses[2]]

    async def mailbox_id() -> str | None:
        client = graph_client(conn, "target")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                got = await client.users.by_user_id(u.id).settings.exchange.get()
                return got.primary_mailbox_id if got else None
            except ODataError:
                await asyncio.sleep(0.05)
        return None

    assert asyncio.run(mailbox_id())
    assert u.recipient_type_details == "UserMailbox" and u.exchange_guid


def test_licensing_mailuser_with_exchange_guid_waits(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """A MailUser stamped with an ExchangeGuid stays a MailUser (waits for a move)."""
    sku = add_sku(sandbox, "ENTERPRISEPACK", 3, E3_PLANS)
    guid = new_guid()
    u = add_user(
        sandbox, "stamped", usage_location="US", recipient_type_details="MailUser",
        exchange_guid=guid, email_addresses=["SMTP:stamped@contoso.example"],
    )  # fmt: skip
    assign(conn, u.id, sku.sku_id)
    assert u.mailbox_pending_at is None
    with sandbox.world.lock:
        sandbox.world.target.settle(time.time() + 3600)
    assert u.recipient_type_details == "MailUser" and u.exchange_guid == guid
