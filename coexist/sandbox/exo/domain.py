"""Get-AcceptedDomain, Get-RemoteDomain."""

from __future__ import annotations

from typing import Any

from ..model import Domain, RemoteDomain, Tenant
from . import directory as d
from . import errors
from .directory import Call, Registry

COMMANDS = Registry()


def accepted_domain_json(t: Tenant, dom: Domain) -> dict[str, Any]:
    return {
        "Identity": dom.name,
        "Name": dom.name,
        "DomainName": dom.name,
        "DomainType": dom.domain_type,
        "Default": dom.is_default,
        "InitialDomain": dom.is_initial,
        "IsValid": True,
        "Guid": d.ZERO_GUID,
    }


@COMMANDS.cmdlet("Get-AcceptedDomain", params=("Identity", "ResultSize"))
def get_accepted_domain(call: Call) -> list[dict[str, Any]]:
    t = call.tenant
    rows = [accepted_domain_json(t, x) for x in t.domains if x.is_verified]
    if call.has("Identity"):
        ident = d.as_text(call.get("Identity")).lower()
        rows = [r for r in rows if r["Name"].lower() == ident]
        if not rows:
            raise errors.not_found(d.as_text(call.get("Identity")))
    return d.limit(call, rows)


def remote_domain_json(r: RemoteDomain) -> dict[str, Any]:
    return {
        "Identity": r.name,
        "Name": r.name,
        "DomainName": r.domain_name,
        "AutoForwardEnabled": r.auto_forward_enabled,
        "AutoReplyEnabled": True,
        "AllowedOOFType": "External",
        "DeliveryReportEnabled": True,
        "NDREnabled": True,
        "IsValid": True,
    }


@COMMANDS.cmdlet("Get-RemoteDomain", params=("Identity", "ResultSize"))
def get_remote_domain(call: Call) -> list[dict[str, Any]]:
    rows = [remote_domain_json(r) for r in call.tenant.remote_domains]
    if call.has("Identity"):
        ident = d.as_text(call.get("Identity")).lower()
        rows = [r for r in rows if ident in (r["Name"].lower(), r["DomainName"].lower())]
        if not rows:
            raise errors.not_found(d.as_text(call.get("Identity")))
    return d.limit(call, rows)
