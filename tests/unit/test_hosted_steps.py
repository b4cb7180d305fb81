"""Hosted Exchange coexistence: the pure parts of forwarding objects, grants and capabilities."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from coexist.cutover.hosted import (
    DEFAULT_CONTACT_NAME,
    contact_alias,
    contact_name,
    kept_copies,
)
from coexist.engine.context import CMDLETS, STORE, check_command, side_capabilities
from coexist.errors import ConfigError, InputError
from coexist.provisioning.grants import assignment_name, has_full_access


def _item(address: str, display: str | None = None) -> dict[str, object]:
    return {"key": address.lower(), "source_address": address, "detail": {"display_name": display}}


def test_forwarding_object_name_follows_the_seed_default() -> None:
    """The default name is the seed's "<Display Name> (External Forward)"."""
    assert contact_name(DEFAULT_CONTACT_NAME, _item("ann@old.example", "Ann Lee")) == (
        "Ann Lee (External Forward)"
    )


def test_forwarding_object_name_falls_back_to_the_address_and_fits_exchange() -> None:
    """No display name: the address names it; the Name is cut to Exchange's 64 characters."""
    assert contact_name("{display_name} fwd", _item("bob@old.example")) == "bob@old.example fwd"
    long = contact_name(DEFAULT_CONTACT_NAME, _item("c@old.example", "x" * 80))
    assert len(long) <= 64


def test_a_template_naming_an_unknown_field_is_a_clear_error() -> None:
    """A typo in cutover.forward_contact_name names the key and the fields it may use."""
    with pytest.raises(InputError) as info:
        contact_name("{displayname}", _item("ann@old.example", "Ann"))
    assert "cutover.forward_contact_name" in str(info.value)
    assert "{display_name}" in str(info.value)


def test_the_alias_is_never_the_mailbox_own_and_holds_only_exchange_characters() -> None:
    """The contact's alias gets a suffix (the mailbox keeps its alias) and loses characters
    Exchange refuses in an alias."""
    assert contact_alias("Ann.Lee@old.example") == "ann.lee-fwd"
    assert contact_alias("o'neil (sales)@old.example") == "o'neilsales-fwd"
    assert contact_alias(".@old.example") == "user-fwd"


def test_full_access_is_read_from_either_shape_of_access_rights() -> None:
    """AccessRights as a list or as PowerShell's "{A, B}" string; an explicit Deny wins."""
    assert has_full_access([{"AccessRights": ["FullAccess"], "Deny": False}])
    assert has_full_access([{"AccessRights": "{ReadPermission, FullAccess}"}])
    assert not has_full_access([{"AccessRights": ["ReadPermission"]}])
    assert not has_full_access([{"AccessRights": ["FullAccess"], "Deny": True}])
    assert not has_full_access([])


def test_mailboxes_that_forward_and_keep_a_copy_are_found() -> None:
    """Only a forward with DeliverToMailboxAndForward makes a delta pass copy twice."""
    boxes = [
        {"Name": "a", "ForwardingAddress": "a fwd", "DeliverToMailboxAndForward": True},
        {"Name": "b", "ForwardingSmtpAddress": "smtp:b@x", "DeliverToMailboxAndForward": True},
        {"Name": "c", "ForwardingAddress": "c fwd", "DeliverToMailboxAndForward": False},
        {"Name": "d", "DeliverToMailboxAndForward": True},
    ]
    assert [b["Name"] for b in kept_copies(boxes)] == ["a", "b"]


def test_coexist_names_its_impersonation_assignment_after_the_account() -> None:
    """Revoke removes only the assignment coexist made: its name comes from the account."""
    assert assignment_name("svc-migrate@fabrikam.example") == "coexist-impersonation-svc-migrate"
    assert assignment_name("FABRIKAM\\svc") == "coexist-impersonation-svc"


def _tenant(kind: str, powershell: str | None) -> SimpleNamespace:
    return SimpleNamespace(kind=kind, ews=SimpleNamespace(powershell_url=powershell))


def test_an_exchange_side_has_cmdlets_only_with_its_powershell_endpoint() -> None:
    """Remote PowerShell configured gives an exchange side cmdlets; WorkMail never gets them."""
    assert CMDLETS in side_capabilities(_tenant("exchange", "https://h/PowerShell"))
    assert side_capabilities(_tenant("exchange", None)) == frozenset({STORE})
    assert CMDLETS not in side_capabilities(_tenant("workmail", "https://h/PowerShell"))


def test_rollback_of_a_hosted_source_needs_its_powershell() -> None:
    """Rollback on an exchange source is refused without powershell_url, naming the setting."""
    kinds = {"source": "exchange", "target": "exchange"}
    with pytest.raises(ConfigError) as info:
        check_command(kinds, "rollback", capabilities={"source": frozenset({STORE})})
    assert "powershell_url" in str(info.value)
    check_command(kinds, "rollback", capabilities={"source": frozenset({STORE, CMDLETS})})
