"""Graph licensing: `GET /subscribedSkus`, `POST /users/{id}/assignLicense`, and what a
license does on the Exchange side (`apply_exchange_licensing`, read by the EXO face too).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..model import Settings, Sku, Tenant, User, domain_of
from ..web import ctx_of
from . import common, users
from .common import GraphJSON, fail

# Exchange Online service plans (Microsoft's "Product names and service plan identifiers for
# licensing" table). A SKU that carries one of these provisions a mailbox.
EXCHANGE_PLANS = {
    "EXCHANGE_S_ENTERPRISE": "efb87545-963c-4e0d-99df-69c6916d9eb0",
    "EXCHANGE_S_STANDARD": "9aaf7827-d63c-4b61-89c3-182f06f82e5c",
    "EXCHANGE_S_DESKLESS": "4a82b400-a79f-41a4-b4e2-e94f5787b113",
}
# SKUs seeded without an explicit plan list get their Exchange plan from this table (same source).
SKU_EXCHANGE_PLAN = {
    "ENTERPRISEPACK": "EXCHANGE_S_ENTERPRISE",  # Office 365 E3
    "ENTERPRISEPREMIUM": "EXCHANGE_S_ENTERPRISE",  # Office 365 E5
    "SPE_E3": "EXCHANGE_S_ENTERPRISE",  # Microsoft 365 E3
    "SPE_E5": "EXCHANGE_S_ENTERPRISE",  # Microsoft 365 E5
    "EXCHANGEENTERPRISE": "EXCHANGE_S_ENTERPRISE",  # Exchange Online (Plan 2)
    "EXCHANGESTANDARD": "EXCHANGE_S_STANDARD",  # Exchange Online (Plan 1)
    "STANDARDPACK": "EXCHANGE_S_STANDARD",  # Office 365 E1
    "O365_BUSINESS_ESSENTIALS": "EXCHANGE_S_STANDARD",
    "O365_BUSINESS_PREMIUM": "EXCHANGE_S_STANDARD",
    "SPB": "EXCHANGE_S_STANDARD",  # Microsoft 365 Business Premium
    "SPE_F1": "EXCHANGE_S_DESKLESS",
}


def service_plans(sku: Sku) -> list[dict[str, str]]:
    """The SKU's service plans in Graph's servicePlanInfo shape."""
    plans = []
    for p in sku.service_plans:
        name = p.get("servicePlanName") or p.get("service_plan_name") or p.get("name") or ""
        plan_id = p.get("servicePlanId") or p.get("service_plan_id") or p.get("id") or ""
        plans.append(
            {
                "servicePlanId": plan_id or EXCHANGE_PLANS.get(name, ""),
                "servicePlanName": name,
                "provisioningStatus": p.get("provisioningStatus", "Success"),
                "appliesTo": p.get("appliesTo", "User"),
            }
        )
    if not plans and sku.sku_part_number in SKU_EXCHANGE_PLAN:
        name = SKU_EXCHANGE_PLAN[sku.sku_part_number]
        plans.append(
            {
                "servicePlanId": EXCHANGE_PLANS[name],
                "servicePlanName": name,
                "provisioningStatus": "Success",
                "appliesTo": "User",
            }
        )
    return plans


def exchange_plan_ids(sku: Sku) -> set[str]:
    return {
        p["servicePlanId"]
        for p in service_plans(sku)
        if p["servicePlanName"] in EXCHANGE_PLANS or p["servicePlanName"].startswith("EXCHANGE_S_")
    }


def apply_exchange_licensing(
    tenant: Tenant,
    user: User,
    exchange_licensed: bool,
    settings: Settings,
    now: float,
) -> None:
    """What Exchange Online does when a user's licenses change (FACTS.md, "Licensing a cloud MailUser").

    - A MailUser that gains an Exchange service plan and has **no** ExchangeGuid
      gets a new mailbox after a delay: `mailbox_pending_at` is set to
      `now + Settings.delay("provisioning", alias)` (minutes under `realistic`,
      drawn per user); `Tenant.settle()` later makes it a UserMailbox. Graph's
      Outlook APIs serve it from `rest_ready_at`, a further `Settings.delay("rest")`
      later. With an ExchangeGuid it stays a MailUser: Exchange waits for a mailbox
      move to bring the mailbox.
    - Licensing scrubs SMTP proxies whose domain is not a verified accepted
      domain of the tenant (X500 and other prefixes stay). If the primary goes,
      the first remaining SMTP proxy becomes primary, else alias@initial domain
      (modelling choice: Exchange recalculates the primary from policy).
    - Losing the last Exchange plan cancels a pending provisioning.
    """
    if not exchange_licensed:
        user.mailbox_pending_at = None
        return
    if user.recipient_type_details is None:
        # A cloud user made in Graph (POST /users) with no Exchange recipient: "Exchange
        # Online creates the mailbox when you assign the license" (Microsoft 365 admin,
        # "Create user mailboxes in Exchange Online"); after the same delays as a MailUser's.
        if user.mailbox_pending_at is None and not user.exchange_created:
            key = user.alias or user.user_principal_name
            user.mailbox_pending_at = now + settings.delay("provisioning", key)
            user.rest_ready_at = user.mailbox_pending_at + settings.delay("rest", key)
        return
    _scrub_unverified_proxies(tenant, user)
    mail_user = user.recipient_type_details == "MailUser"
    if mail_user and not user.exchange_guid and user.mailbox_pending_at is None:
        key = user.alias or user.user_principal_name
        user.mailbox_pending_at = now + settings.delay("provisioning", key)
        user.rest_ready_at = user.mailbox_pending_at + settings.delay("rest", key)


def _scrub_unverified_proxies(tenant: Tenant, user: User) -> None:
    def verified(address: str) -> bool:
        d = tenant.accepted_domain(domain_of(address))
        return d is not None and d.is_verified

    kept = [a for a in user.email_addresses if not a.lower().startswith("smtp:") or verified(a[5:])]
    if not any(a.startswith("SMTP:") for a in kept):
        for i, a in enumerate(kept):
            if a.startswith("smtp:"):
                kept[i] = "SMTP:" + a[5:]
                break
        else:
            alias = user.alias or user.user_principal_name.split("@")[0]
            kept.insert(0, f"SMTP:{alias}@{tenant.initial_domain}")
    user.email_addresses = kept


def has_exchange_license(tenant: Tenant, user: User, disabled: dict[str, set[str]]) -> bool:
    for sku_id in user.assigned_licenses:
        sku = tenant.sku(sku_id)
        if sku is not None and exchange_plan_ids(sku) - disabled.get(sku_id, set()):
            return True
    return False


# -- subscribedSkus -------------------------------------------------------------------------------


def sku_json(tenant: Tenant, sku: Sku) -> dict[str, Any]:
    return {
        "accountId": tenant.tenant_id,
        "accountName": tenant.display_name,
        "appliesTo": sku.applies_to,
        "capabilityStatus": sku.capability_status,
        "consumedUnits": tenant.consumed_units(sku.sku_id),
        # The subscribedSku id is "<tenantId>_<skuId>" (subscribedsku-get sample).
        "id": f"{tenant.tenant_id}_{sku.sku_id}",
        "skuId": sku.sku_id,
        "skuPartNumber": sku.sku_part_number,
        "subscriptionIds": [],
        "prepaidUnits": {"enabled": sku.enabled, "suspended": 0, "warning": 0, "lockedOut": 0},
        "servicePlans": service_plans(sku),
    }


async def list_skus(request: Request) -> Response:
    world = ctx_of(request).world
    with world.lock:
        principal = common.read(request, common.ORG_READ)
        tenant = principal.tenant
        return GraphJSON(
            {
                "@odata.context": common.context_url(request, "subscribedSkus"),
                "value": [sku_json(tenant, s) for s in tenant.skus],
            }
        )


# -- assignLicense --------------------------------------------------------------------------------

# Error texts (one place). Usage location: verbatim as reported by CIPP issues 783/889 and Okta.
INVALID_USAGE_LOCATION = "License assignment cannot be done for user with invalid usage location."


def no_seats(sku_id: str) -> str:
    # FACTS.md: "does not have any available licenses"; the full sentence is *unverified*.
    return f"Subscription with SKU {sku_id} does not have any available licenses."


def unknown_sku(sku_id: str) -> str:
    return f"License {sku_id} does not correspond to a valid company License."  # *unverified*


def not_assigned(sku_id: str) -> str:
    return f"User does not have a corresponding license for SKU {sku_id}."  # *unverified*


def _parse_assign(request: Request, body: dict[str, Any]) -> tuple[dict[str, set[str]], list[str]]:
    add = body.get("addLicenses")
    remove = body.get("removeLicenses")
    if not isinstance(add, list) or not isinstance(remove, list):
        # Both are required by the action's signature (user-assignlicense).
        raise fail(
            400,
            "Request_BadRequest",
            "Invalid value specified for property 'addLicenses' of resource 'User'.",
            request,
        )
    adds: dict[str, set[str]] = {}
    for item in add:
        sku_id = str((item or {}).get("skuId") or "").lower()
        adds[sku_id] = {str(p).lower() for p in (item or {}).get("disabledPlans") or []}
    return adds, [str(s).lower() for s in remove]


def _check_assign(
    request: Request, tenant: Tenant, user: User, adds: dict[str, set[str]], removes: list[str]
) -> None:
    for sku_id in [*adds, *removes]:
        if tenant.sku(sku_id) is None:
            raise fail(400, "Request_BadRequest", unknown_sku(sku_id), request)
    for sku_id in removes:
        if sku_id not in user.assigned_licenses:
            raise fail(400, "Request_BadRequest", not_assigned(sku_id), request)
    new = [s for s in adds if s not in user.assigned_licenses]
    if new and not user.usage_location:
        raise fail(400, "Request_BadRequest", INVALID_USAGE_LOCATION, request)
    for sku_id in new:
        sku = tenant.sku(sku_id)
        assert sku is not None
        if tenant.consumed_units(sku_id) >= sku.enabled:
            raise fail(400, "Request_BadRequest", no_seats(sku_id), request)


async def assign_license(request: Request) -> Response:
    world = ctx_of(request).world
    body = await common.json_body(request)
    with world.lock:
        principal = common.write(request, common.LICENSE_WRITE)
        tenant = principal.tenant
        tenant.settle()
        user = users.visible_user(request, tenant, request.path_params["user_id"])
        adds, removes = _parse_assign(request, body)
        _check_assign(request, tenant, user, adds, removes)
        user.assigned_licenses = [s for s in user.assigned_licenses if s not in removes]
        user.assigned_licenses += [s for s in adds if s not in user.assigned_licenses]
        # disabledPlans are honoured for this change only: the model keeps skuIds, not plans.
        licensed = has_exchange_license(tenant, user, adds)
        apply_exchange_licensing(tenant, user, licensed, world.settings, common.now())
        tenant.touch(user)
        body_out: dict[str, Any] = {"@odata.context": common.context_url(request, "users/$entity")}
        body_out.update(users.default_view(user))
        return GraphJSON(body_out)


def routes() -> list[BaseRoute]:
    return [
        Route("/v1.0/subscribedSkus", list_skus, methods=["GET"]),
        Route("/v1.0/users/{user_id}/assignLicense", assign_license, methods=["POST"]),
    ]
