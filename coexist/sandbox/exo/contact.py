"""Get-MailContact, New-MailContact, Set-MailContact, Remove-MailContact.

A mail contact's primary SMTP address is its external address; its addresses are
not bound to the tenant's accepted domains, but they are unique in the tenant.
"""

from __future__ import annotations

from typing import Any

from ..model import Contact
from . import directory as d
from .directory import Call, Registry
from .recipient import listing

COMMANDS = Registry()


@COMMANDS.cmdlet("Get-MailContact", listing=True)
def get_mailcontact(call: Call) -> list[dict[str, Any]]:
    return listing(call, d.is_contact)


@COMMANDS.cmdlet(
    "New-MailContact",
    params=("Name", "ExternalEmailAddress", "Alias", "DisplayName", "FirstName", "LastName"),
)
def new_mailcontact(call: Call) -> list[dict[str, Any]]:
    t = call.tenant
    name = d.check_name(t, d.as_text(call.get("Name")))
    alias = d.unique_alias(t, call.text("Alias"), name)
    external = d.smtp_of(call.get("ExternalEmailAddress"), "ExternalEmailAddress")
    addresses = ["SMTP:" + external]
    d.check_addresses(t, None, addresses, accepted_only=False)
    contact = Contact(
        id=d.new_object_guid(),
        display_name=call.text("DisplayName") or name,
        name=name,
        alias=alias,
        email_addresses=addresses,
        external_email_address="SMTP:" + external,
        first_name=call.text("FirstName"),
        last_name=call.text("LastName"),
        visible_at=call.ctx.limiter.visible_at(alias),
    )
    contact.legacy_exchange_dn = t.new_legacy_dn(alias)
    t.contacts[contact.id] = contact
    t.touch(contact)
    return [d.contact_json(t, contact)]


@COMMANDS.cmdlet(
    "Set-MailContact",
    params=(*d.COMMON_SET, "ExternalEmailAddress"),
)
def set_mailcontact(call: Call) -> list[dict[str, Any]]:
    t = call.tenant
    c = d.resolve(t, call.get("Identity"), d.is_contact)
    assert isinstance(c, Contact)
    base = list(c.email_addresses)
    new_external = None
    if call.has("ExternalEmailAddress"):
        new_external = d.smtp_of(call.get("ExternalEmailAddress"), "ExternalEmailAddress")
        old_key = c.external_email_address.lower()
        base = d.set_primary([a for a in base if a.lower() != old_key], new_external)
    d.apply_common(call, c, accepted_only=False, base=base)
    if new_external is not None:
        c.external_email_address = "SMTP:" + new_external
    t.touch(c)
    return []


@COMMANDS.cmdlet("Remove-MailContact", params=("Identity",))
def remove_mailcontact(call: Call) -> list[dict[str, Any]]:
    c = d.resolve(call.tenant, call.get("Identity"), d.is_contact)
    d.remove_object(call.tenant, c)
    return []
