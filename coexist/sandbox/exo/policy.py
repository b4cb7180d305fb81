"""Get-HostedOutboundSpamFilterPolicy, Get-OrganizationConfig."""

from __future__ import annotations

from typing import Any

from ..model import Tenant
from . import directory as d
from . import errors
from .directory import Call, Registry

COMMANDS = Registry()


def outbound_policy_json(t: Tenant) -> dict[str, Any]:
    # AutoForwardingMode Automatic = Off since 2020 (learn.microsoft.com,
    # outbound-spam-policies-external-email-forwarding); the tenant model holds it.
    return {
        "Identity": "Default",
        "Name": "Default",
        "IsDefault": True,
        "Enabled": True,
        "AutoForwardingMode": t.auto_forwarding_mode,
        "RecipientLimitExternalPerHour": 0,
        "RecipientLimitInternalPerHour": 0,
        "RecipientLimitPerDay": 0,
        "ActionWhenThresholdReached": "BlockUserForToday",
        "BccSuspiciousOutboundMail": False,
        "NotifyOutboundSpam": False,
        "IsValid": True,
    }


@COMMANDS.cmdlet("Get-HostedOutboundSpamFilterPolicy", params=("Identity",))
def get_outbound_policy(call: Call) -> list[dict[str, Any]]:
    if call.has("Identity") and d.as_text(call.get("Identity")).lower() != "default":
        raise errors.not_found(d.as_text(call.get("Identity")))
    return [outbound_policy_json(call.tenant)]


@COMMANDS.cmdlet("Get-OrganizationConfig")
def get_organization_config(call: Call) -> list[dict[str, Any]]:
    t = call.tenant
    return [
        {
            "Identity": t.initial_domain,
            "Name": t.initial_domain,
            "DisplayName": t.display_name,
            "Guid": t.organization_guid,
            "IsDehydrated": False,
            "IsValid": True,
        }
    ]
