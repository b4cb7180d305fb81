"""Get-MailUser, New-MailUser, Set-MailUser, Remove-MailUser.

A MailUser in Exchange Online is also an Entra user (Graph lists it), with no
mailbox: mail goes to its ExternalEmailAddress (targetAddress). New-MailUser
binds to DisabledUser (-Name -ExternalEmailAddress) or MicrosoftOnlineServicesID
(-Name -MicrosoftOnlineServicesID -Password [-ExternalEmailAddress]); it never
stamps an ExchangeGuid (licensing then provisions a fresh mailbox, FACTS.md).
"""

from __future__ import annotations

from typing import Any

from ..model import User
from . import directory as d
from . import errors
from .directory import Call, Registry
from .recipient import listing

COMMANDS = Registry()


@COMMANDS.cmdlet("Get-MailUser", listing=True)
def get_mailuser(call: Call) -> list[dict[str, Any]]:
    return listing(call, d.is_mailuser)


def _external(call: Call) -> str | None:
    return (
        d.smtp_of(call.get("ExternalEmailAddress"), "ExternalEmailAddress")
        if call.has("ExternalEmailAddress")
        else None
    )


def _upn(call: Call, alias: str) -> str:
    t = call.tenant
    if call.has("MicrosoftOnlineServicesID"):
        upn = d.smtp_of(call.get("MicrosoftOnlineServicesID"), "MicrosoftOnlineServicesID")
        domain = upn.rsplit("@", 1)[1]
        if t.accepted_domain(domain) is None:
            raise errors.not_accepted_domain(domain)
    else:
        upn = f"{alias}@{t.initial_domain}"
    if any(u.user_principal_name.lower() == upn.lower() for u in t.users.values()):
        # Wording *unverified*.
        raise errors.CmdletError(
            f"The user principal name {upn} is already being used. Please choose another.",
            errors.PROXY_EXISTS,
        )
    return upn


@COMMANDS.cmdlet(
    "New-MailUser",
    params=(
        "Name",
        "ExternalEmailAddress",
        "MicrosoftOnlineServicesID",
        "Password",
        "Alias",
        "DisplayName",
        "FirstName",
        "LastName",
        "PrimarySmtpAddress",
    ),
)
def new_mailuser(call: Call) -> list[dict[str, Any]]:
    t = call.tenant
    name = d.check_name(t, d.as_text(call.get("Name")))
    alias = d.unique_alias(t, call.text("Alias"), name)
    external = _external(call)
    upn = _upn(call, alias)
    if call.has("PrimarySmtpAddress"):
        # Accepted and ignored: "This parameter is functional only in on-premises Exchange.
        # [...] By default, the primary address is the same as the ExternalEmailAddress
        # parameter value" (office-docs-powershell New-MailUser.md, -PrimarySmtpAddress).
        # Still an SmtpAddress: a malformed value fails binding.
        d.smtp_of(call.get("PrimarySmtpAddress"), "PrimarySmtpAddress")
    addresses = d.mailuser_addresses(t, alias, external, upn)
    # The external address may be in any domain (it is where mail goes); the rest must be
    # in accepted domains.
    d.check_addresses(t, None, addresses, accepted_only=True, exempt=[external] if external else [])
    # Made by Exchange: Graph serves it after directory replication (limits.visible_at).
    visible = call.ctx.limiter.visible_at(alias)
    user = User(
        id=d.new_object_guid(),
        display_name=call.text("DisplayName") or name,
        name=name,
        alias=alias,
        email_addresses=addresses,
        user_principal_name=upn,
        given_name=call.text("FirstName"),
        surname=call.text("LastName"),
        recipient_type_details="MailUser",
        external_email_address=None if external is None else "SMTP:" + external,
        visible_at=visible,
        exchange_created=True,
        graph_writable_at=call.ctx.limiter.graph_writable_at(visible, alias),
    )
    user.legacy_exchange_dn = t.new_legacy_dn(alias)
    t.users[user.id] = user
    t.touch(user)
    return [d.user_json(t, user)]


@COMMANDS.cmdlet(
    "Set-MailUser",
    params=(
        *d.COMMON_SET,
        "ExternalEmailAddress",
        "PrimarySmtpAddress",
        "MicrosoftOnlineServicesID",
        "ExchangeGuid",
        "ArchiveGuid",
    ),
)
def set_mailuser(call: Call) -> list[dict[str, Any]]:
    t = call.tenant
    mu = d.resolve(t, call.get("Identity"), d.is_mailuser)
    assert isinstance(mu, User)
    old_external = mu.external_email_address[5:] if mu.external_email_address else None
    new_external = _external(call)
    guids = {p: _guid(call, p) for p in ("ExchangeGuid", "ArchiveGuid") if call.has(p)}
    upn = _upn(call, mu.alias) if call.has("MicrosoftOnlineServicesID") else None
    if call.has("PrimarySmtpAddress"):
        # Accepted and ignored, as New-MailUser's: "This parameter is available or functional
        # only in on-premises Exchange" (Set-MailUser.md, -PrimarySmtpAddress). In Exchange
        # Online the primary is set with -EmailAddresses ("SMTP:") or -WindowsEmailAddress.
        d.smtp_of(call.get("PrimarySmtpAddress"), "PrimarySmtpAddress")
    keep = call.ctx.world.settings.mailuser_external_proxy
    external = new_external or old_external
    base = d.external_proxy(list(mu.email_addresses), old_external, external, keep)
    d.apply_common(
        call,
        mu,
        exempt=[external] if external else [],
        base=base,
        primary_params=("WindowsEmailAddress",),
        adjust=lambda addresses: d.external_proxy(addresses, None, external, keep),
    )
    if new_external is not None:
        mu.external_email_address = "SMTP:" + new_external
    for param, value in guids.items():
        setattr(mu, "exchange_guid" if param == "ExchangeGuid" else "archive_guid", value)
    if upn is not None:
        mu.user_principal_name = upn
    t.touch(mu)
    return []


def _guid(call: Call, param: str) -> str | None:
    raw = call.get(param)
    if raw in (None, ""):
        return None
    text = d.as_text(raw)
    if not d.is_guid(text):
        raise errors.invalid_value(param, raw, "Guid should contain 32 digits with 4 dashes.")
    return None if text == d.ZERO_GUID else text.lower()


@COMMANDS.cmdlet("Remove-MailUser", params=("Identity",))
def remove_mailuser(call: Call) -> list[dict[str, Any]]:
    mu = d.resolve(call.tenant, call.get("Identity"), d.is_mailuser)
    d.remove_object(call.tenant, mu)
    return []
