"""coexist.exospec against the real cmdlet reference (data/exo-cmdlets.json)."""

from __future__ import annotations

import pytest

from coexist.exospec import SpecViolation, canonicalize, cmdlet_names, resolve_parameter_set


def violation(cmdlet: str, params: dict[str, object]) -> SpecViolation:
    with pytest.raises(SpecViolation) as info:
        resolve_parameter_set(cmdlet, params)
    return info.value


def test_reference_has_the_migration_cmdlets() -> None:
    """The packaged reference loads and lists the cmdlets migrations depend on."""
    names = set(cmdlet_names())
    assert {"New-MailUser", "Set-Mailbox", "Get-Recipient", "New-DynamicDistributionGroup"} <= names


def test_new_mailuser_binds_disabled_user() -> None:
    """-Name -ExternalEmailAddress binds New-MailUser's DisabledUser set."""
    assert (
        resolve_parameter_set("New-MailUser", {"Name": "a", "ExternalEmailAddress": "x@y.z"})
        == "DisabledUser"
    )


def test_new_mailuser_binds_microsoft_online_services_id() -> None:
    """-Name -MicrosoftOnlineServicesID -Password binds the MicrosoftOnlineServicesID set."""
    params = {"Name": "a", "MicrosoftOnlineServicesID": "a@b.c", "Password": "p"}
    assert resolve_parameter_set("New-MailUser", params) == "MicrosoftOnlineServicesID"


def test_parameter_names_are_case_insensitive() -> None:
    """PowerShell parameter names bind whatever their case; canonical spelling comes back."""
    assert canonicalize("Set-Mailbox", {"identity": "a", "emailaddresses": []}) == {
        "Identity": "a",
        "EmailAddresses": [],
    }


def test_unknown_cmdlet() -> None:
    """A cmdlet outside the reference is unknown_cmdlet."""
    assert violation("Get-Nothing", {}).kind == "unknown_cmdlet"


def test_unknown_parameter_is_named() -> None:
    """A parameter the cmdlet lacks fails with EXO's unknown-parameter text naming it."""
    v = violation("Get-Mailbox", {"Identity": "a", "Bogus": 1})
    assert (v.kind, v.parameters) == ("unknown_parameter", ("Bogus",))
    assert v.message.endswith("Invalid cmdlet parameters specified. Bogus")


def test_on_premises_only_parameter_fails_like_unknown() -> None:
    """Set-Mailbox -PrimarySmtpAddress does not exist in Exchange Online."""
    v = violation("Set-Mailbox", {"Identity": "a", "PrimarySmtpAddress": "a@b.c"})
    assert (v.kind, v.parameters) == ("on_premises_only", ("PrimarySmtpAddress",))
    assert "Invalid cmdlet parameters specified. PrimarySmtpAddress" in v.message


def test_new_mailuser_user_principal_name_is_on_premises_only() -> None:
    """New-MailUser -UserPrincipalName is on-premises only (EXO uses MicrosoftOnlineServicesID)."""
    v = violation(
        "New-MailUser", {"Name": "a", "ExternalEmailAddress": "x@y.z", "UserPrincipalName": "u"}
    )
    assert v.kind == "on_premises_only" and v.parameters == ("UserPrincipalName",)


def test_missing_mandatory_is_named() -> None:
    """New-MailUser -Name alone misses ExternalEmailAddress (DisabledUser)."""
    v = violation("New-MailUser", {"Name": "a"})
    assert (v.kind, v.parameters) == ("missing_mandatory", ("ExternalEmailAddress",))


def test_missing_identity_on_set() -> None:
    """Set-Mailbox without -Identity names Identity as missing."""
    v = violation("Set-Mailbox", {"DisplayName": "x"})
    assert v.kind == "missing_mandatory" and v.parameters == ("Identity",)


def test_parameters_from_exclusive_sets_are_ambiguous() -> None:
    """-IncludedRecipients and -RecipientFilter belong to different sets: no set binds."""
    v = violation(
        "New-DynamicDistributionGroup",
        {"Name": "d", "IncludedRecipients": "MailboxUsers", "RecipientFilter": "x"},
    )
    assert v.kind == "ambiguous_set" and v.parameters


def test_on_premises_sets_are_not_usable() -> None:
    """Get-MailboxStatistics -Database binds only an on-premises set: the parameter is refused."""
    v = violation("Get-MailboxStatistics", {"Database": "db1"})
    assert v.kind == "on_premises_only"


def test_get_with_no_parameters_binds_default_set() -> None:
    """Get-Mailbox with no parameters binds its Identity (default) set."""
    assert resolve_parameter_set("Get-Mailbox", {}) == "Identity"


def test_documented_correction_outbound_policy_identity_optional() -> None:
    """Get-HostedOutboundSpamFilterPolicy runs without -Identity despite the SYNTAX block."""
    assert resolve_parameter_set("Get-HostedOutboundSpamFilterPolicy", {})


def test_common_parameters_are_accepted() -> None:
    """PowerShell common parameters (-ErrorAction) exist on every cmdlet and do not bind sets."""
    assert resolve_parameter_set("Get-Mailbox", {"ErrorAction": "Stop"}) == "Identity"
