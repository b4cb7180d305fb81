"""Graph `/domains` and `/organization` (tenant-wide directory facts)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..model import Domain, Tenant
from ..web import ctx_of
from . import common, licensing
from .common import GraphJSON

# supportedServices of a mail domain as Graph lists it (domain resource samples).
MAIL_SERVICES = ["Email", "OfficeCommunicationsOnline"]


def domain_json(d: Domain) -> dict[str, Any]:
    return {
        "id": d.name,
        "authenticationType": "Managed",
        "availabilityStatus": None,
        "isAdminManaged": True,
        "isDefault": d.is_default,
        "isInitial": d.is_initial,
        "isRoot": True,
        "isVerified": d.is_verified,
        "passwordNotificationWindowInDays": None,
        "passwordValidityPeriodInDays": None,
        "supportedServices": list(MAIL_SERVICES) if d.is_verified else [],
        "state": None,
    }


async def list_domains(request: Request) -> Response:
    with ctx_of(request).world.lock:
        principal = common.read(request, common.DOMAIN_READ)
        return GraphJSON(
            {
                "@odata.context": common.context_url(request, "domains"),
                "value": [domain_json(d) for d in principal.tenant.domains],
            }
        )


async def get_domain(request: Request) -> Response:
    with ctx_of(request).world.lock:
        principal = common.read(request, common.DOMAIN_READ)
        name = request.path_params["domain"]
        d = principal.tenant.accepted_domain(name)
        if d is None:
            raise common.not_found(request, name)
        body: dict[str, Any] = {"@odata.context": common.context_url(request, "domains/$entity")}
        body.update(domain_json(d))
        return GraphJSON(body)


def organization_json(tenant: Tenant) -> dict[str, Any]:
    plans = []
    for sku in tenant.skus:
        for p in licensing.service_plans(sku):
            plans.append(
                {
                    "assignedDateTime": "2024-01-01T00:00:00Z",
                    "capabilityStatus": sku.capability_status,
                    "service": "exchange" if p["servicePlanName"].startswith("EXCHANGE") else "",
                    "servicePlanId": p["servicePlanId"],
                }
            )
    return {
        "id": tenant.tenant_id,
        "displayName": tenant.display_name,
        "tenantType": "AAD",
        "countryLetterCode": "US",
        "assignedPlans": plans,
        "verifiedDomains": [
            {
                "capabilities": "Email, OfficeCommunicationsOnline",
                "isDefault": d.is_default,
                "isInitial": d.is_initial,
                "name": d.name,
                "type": "Managed",
            }
            for d in tenant.domains
            if d.is_verified
        ],
    }


async def get_organization(request: Request) -> Response:
    with ctx_of(request).world.lock:
        principal = common.read(request, common.ORG_READ)
        return GraphJSON(
            {
                "@odata.context": common.context_url(request, "organization"),
                "value": [organization_json(principal.tenant)],
            }
        )


def routes() -> list[BaseRoute]:
    return [
        Route("/v1.0/domains", list_domains, methods=["GET"]),
        Route("/v1.0/domains/{domain}", get_domain, methods=["GET"]),
        Route("/v1.0/organization", get_organization, methods=["GET"]),
    ]
