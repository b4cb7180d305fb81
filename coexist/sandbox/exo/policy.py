"""Get-HostedOutboundSpamFilterPolicy, Get-HostedOutboundSpamFilterRule, Get-OrganizationConfig.

Outbound spam policies hold the settings (AutoForwardingMode); custom ones apply
only through a rule, which holds the scope and the priority (Defender docs,
outbound-spam-policies-configure, "Use PowerShell"). Property names as Exchange
returns them (cmdlet reference; Microsoft365DSC's EXOHostedOutboundSpamFilterRule
reads HostedOutboundSpamFilterPolicy, State, Priority, From, FromMemberOf,
SenderDomainIs, ExceptIfFrom, ExceptIfFromMemberOf, ExceptIfSenderDomainIs, Comments).
"""

from __future__ import annotations

from typing import Any

from ..model import OutboundSpamPolicy, OutboundSpamRule, Tenant
from . import directory as d
from . import errors
from .directory import Call, Registry

COMMANDS = Registry()
RULE_STATES = ("Enabled", "Disabled")


def outbound_policy_json(p: OutboundSpamPolicy) -> dict[str, Any]:
    return {
        "Identity": p.name,
        "Name": p.name,
        "IsDefault": p.is_default,
        # The Default policy is always on; a custom one is switched by its rule's State.
        "Enabled": True,
        "AutoForwardingMode": p.auto_forwarding_mode,
        "RecipientLimitExternalPerHour": 0,
        "RecipientLimitInternalPerHour": 0,
        "RecipientLimitPerDay": 0,
        "ActionWhenThresholdReached": "BlockUserForToday",
        "BccSuspiciousOutboundMail": False,
        "NotifyOutboundSpam": False,
        "Guid": p.guid,
        "IsValid": True,
    }


def _shown(tenant: Tenant, ids: list[str], shown_as: str) -> list[str]:
    """Referenced recipients as Get-* prints them (Settings.rule_recipients_shown_as)."""
    out = []
    for oid in ids:
        obj = tenant.get(oid)
        if obj is None:
            continue  # a deleted recipient drops out of the rule
        text = obj.primary_smtp if shown_as == "PrimarySmtpAddress" else obj.name
        out.append(text or obj.name)
    return out


def outbound_rule_json(t: Tenant, r: OutboundSpamRule, shown_as: str) -> dict[str, Any]:
    return {
        "Identity": r.name,
        "Name": r.name,
        "HostedOutboundSpamFilterPolicy": r.policy,
        "Priority": r.priority,
        "State": "Enabled" if r.enabled else "Disabled",
        "From": _shown(t, r.senders, shown_as),
        "FromMemberOf": _shown(t, r.member_of, shown_as),
        "SenderDomainIs": list(r.sender_domains),
        "ExceptIfFrom": _shown(t, r.except_senders, shown_as),
        "ExceptIfFromMemberOf": _shown(t, r.except_member_of, shown_as),
        "ExceptIfSenderDomainIs": list(r.except_sender_domains),
        "Comments": r.comments,
        "Guid": r.guid,
        "IsValid": True,
    }


@COMMANDS.cmdlet("Get-HostedOutboundSpamFilterPolicy", params=("Identity",))
def get_outbound_policy(call: Call) -> list[dict[str, Any]]:
    policies = call.tenant.outbound_spam_policies
    if call.has("Identity"):
        ident = d.as_text(call.get("Identity")).lower()
        policies = [p for p in policies if ident in (p.name.lower(), p.guid.lower())]
        if not policies:
            raise errors.not_found(d.as_text(call.get("Identity")))
    return [outbound_policy_json(p) for p in policies]


@COMMANDS.cmdlet("Get-HostedOutboundSpamFilterRule", params=("Identity", "State"))
def get_outbound_rule(call: Call) -> list[dict[str, Any]]:
    t = call.tenant
    rules = sorted(t.outbound_spam_rules, key=lambda r: r.priority)
    if call.has("Identity"):
        ident = d.as_text(call.get("Identity")).lower()
        rules = [r for r in rules if ident in (r.name.lower(), r.guid.lower())]
        if not rules:
            raise errors.not_found(d.as_text(call.get("Identity")))
    if call.has("State"):
        state = d.as_text(call.get("State"))
        if state.lower() not in ("enabled", "disabled"):
            raise errors.invalid_value(
                "State", state, "Specify one of the following values: " + ", ".join(RULE_STATES)
            )
        rules = [r for r in rules if r.enabled is (state.lower() == "enabled")]
    shown_as = call.ctx.world.settings.rule_recipients_shown_as
    return [outbound_rule_json(t, r, shown_as) for r in rules]


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
