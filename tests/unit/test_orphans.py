"""What stands in the way of a user's new MailUser, and which of it coexist may adopt."""

from __future__ import annotations

from typing import Any

from coexist.provisioning.index import TargetIndex
from coexist.provisioning.orphans import obstacles

USER = "ada@fabrikam.example"
X500 = "X500:/o=Fabrikam/ou=Exchange Administrative Group/cn=Recipients/cn=ada"


def recipient(ident: str, kind: str, *addresses: str, **props: Any) -> dict[str, Any]:
    """A Get-Recipient row with only what the orphan check reads."""
    return {
        "ExternalDirectoryObjectId": ident,
        "Name": ident,
        "RecipientTypeDetails": kind,
        "PrimarySmtpAddress": addresses[0][5:] if addresses else None,
        "EmailAddresses": list(addresses),
        **props,
    }


def seen(*rows: dict[str, Any], replace_contacts: bool = True) -> Any:
    return obstacles(
        TargetIndex.build(rows), USER, USER, (X500,), replace_contacts=replace_contacts
    )


def test_a_mailuser_routing_to_the_source_is_adoptable() -> None:
    """An earlier run's MailUser (ExternalEmailAddress = the source address) is the one to
    adopt, whether or not Exchange kept the external address among its proxies."""
    for addresses in (("SMTP:ada@contoso.example", f"smtp:{USER}"), ("SMTP:ada@contoso.example",)):
        orphan = recipient("mu", "MailUser", *addresses, ExternalEmailAddress=f"SMTP:{USER}")
        found = seen(orphan)
        assert found.adoptable is orphan
        assert f"routes to {USER}" in found.problem()
        assert found.fix().startswith(f"coexist provision --adopt --users {USER}")


def test_a_licensed_orphan_is_known_by_its_x500_without_a_visible_forward() -> None:
    """Get-Recipient documents no ForwardingSmtpAddress: a mailbox holding the source's X500
    is still found, and adoptable."""
    mailbox = recipient("mbx", "UserMailbox", "SMTP:ada@contoso.example", X500)
    found = seen(mailbox)
    assert found.adoptable is mailbox
    assert "X500" in found.problem()


def test_contacts_are_in_the_way_only_when_not_replaced() -> None:
    """A GAL-sync contact holding the source address: replaced by provision, or (replace off)
    an obstacle to remove; a contact that only routes there is none."""
    holding = recipient("gal", "MailContact", f"SMTP:{USER}", ExternalEmailAddress=f"SMTP:{USER}")
    assert not seen(holding).found
    blocked = seen(holding, replace_contacts=False)
    assert blocked.adoptable is None and "replace_contacts = true" in blocked.fix()
    routing = recipient("fwd", "MailContact", "SMTP:x@partner.example", ExternalEmailAddress=USER)
    assert not seen(routing, replace_contacts=False).found


def test_a_stranger_holding_the_address_is_named_with_what_to_free() -> None:
    """A MailUser that holds the source address but routes elsewhere is not adoptable."""
    stranger = recipient(
        "other", "MailUser", "SMTP:b@contoso.example", f"smtp:{USER}",
        ExternalEmailAddress="SMTP:b@partner.example",
    )  # fmt: skip
    found = seen(stranger)
    assert found.adoptable is None
    assert f"holds {USER}" in found.problem()
    assert "free" in found.fix() and 'mode = "match"' in found.fix()
    assert "retry" not in found.fix()


def test_two_orphans_for_one_mailbox_are_not_adopted() -> None:
    """Two objects tied to one source mailbox: keep one, then adopt it."""
    a = recipient("a", "MailUser", "SMTP:ada@contoso.example", ExternalEmailAddress=USER)
    b = recipient("b", "UserMailbox", "SMTP:ada2@contoso.example", X500)
    found = seen(a, b)
    assert found.adoptable is None
    assert found.fix().startswith("keep one of 'a', 'b'")
    assert "2 target objects for one source mailbox" in found.problem()
