"""Exchange object property names documented outside the cmdlet parameters, each with its source.

A key of an object a cmdlet returns keeps Exchange's name when it is a parameter of
a cmdlet on the same noun in `coexist/data/exo-cmdlets.json` (a settable property is
spelled as its parameter), or when it is listed here. Microsoft publishes no output
schema for the cmdlets, so every entry names the page of Microsoft's own docs
(MicrosoftDocs/office-docs-powershell at commit 93336da2, the commit the cmdlet
reference was extracted from) that uses the name as a property of the objects:

- `filter-properties.md`: "Filterable properties for the Filter parameter on Exchange
  cmdlets" (exchange/docs-conceptual), one section per recipient property, naming the
  cmdlets whose objects carry it;
- `cmdlet-property-sets.md`: the property sets of the Get-EXO* cmdlets (the same objects
  as Get-Mailbox / Get-Recipient / Get-MailboxStatistics return);
- a cmdlet page (exchange/exchange-ps/ExchangePowerShell/<Cmdlet>.md): a parameter of a
  Set-/New- cmdlet outside the extracted 31, or a property an example reads.

Two names come only from public client scripts, not from Microsoft's current reference:
they are marked *unverified*, and the product does not depend on them (it falls back
when `InitialDomain` is absent, commands._initial_domain).
"""

from __future__ import annotations

_FILTER = "filter-properties.md, section {}"

EXCHANGE_PROPERTIES: dict[str, str] = {
    # -- every recipient ---------------------------------------------------------------------
    "Alias": _FILTER.format("Alias"),
    "DisplayName": _FILTER.format("DisplayName"),
    "DistinguishedName": _FILTER.format("DistinguishedName"),
    "EmailAddresses": _FILTER.format("EmailAddresses"),
    "ExternalDirectoryObjectId": _FILTER.format("ExternalDirectoryObjectId"),
    "Guid": _FILTER.format("Guid"),
    "HiddenFromAddressListsEnabled": _FILTER.format("HiddenFromAddressListsEnabled"),
    "Id": _FILTER.format("Id"),
    "Identity": "cmdlet-property-sets.md, Get-EXOCasMailbox property set Minimum",
    "IsValid": "Get-EXOMailbox.md, OUTPUTS (Get-Mailbox properties Get-EXOMailbox omits)",
    "LegacyExchangeDN": _FILTER.format("LegacyExchangeDN"),
    "Name": _FILTER.format("Name"),
    "OrganizationalUnit": "Get-Recipient.md / Get-Mailbox.md, -OrganizationalUnit",
    "PrimarySmtpAddress": _FILTER.format("PrimarySmtpAddress"),
    "RecipientType": _FILTER.format("RecipientType"),
    "RecipientTypeDetails": _FILTER.format("RecipientTypeDetails"),
    "WhenChanged": _FILTER.format("WhenChanged"),
    "WhenChangedUTC": _FILTER.format("WhenChangedUTC"),
    "WhenCreated": _FILTER.format("WhenCreated"),
    "WhenCreatedUTC": _FILTER.format("WhenCreatedUTC"),
    "WindowsEmailAddress": _FILTER.format("WindowsEmailAddress"),
    # -- users, mailboxes, mail users -----------------------------------------------------------
    "AccountDisabled": "Set-Mailbox.md, -AccountDisabled (the user account's property)",
    "ArchiveGuid": _FILTER.format("ArchiveGuid") + "; cmdlet-property-sets.md, Archive",
    "DeliverToMailboxAndForward": _FILTER.format("DeliverToMailboxAndForward"),
    "ExchangeGuid": _FILTER.format("ExchangeGuid") + "; cmdlet-property-sets.md, StatisticsSeed",
    "ExternalEmailAddress": _FILTER.format("ExternalEmailAddress"),
    "FirstName": _FILTER.format("FirstName"),
    "ForwardingAddress": _FILTER.format("ForwardingAddress"),
    "ForwardingSmtpAddress": _FILTER.format("ForwardingSmtpAddress"),
    "IsMailboxEnabled": _FILTER.format("IsMailboxEnabled"),
    "LastName": _FILTER.format("LastName"),
    "MicrosoftOnlineServicesID": "Set-Mailbox.md / New-MailUser.md, -MicrosoftOnlineServicesID",
    "UsageLocation": _FILTER.format("UsageLocation"),
    "UserPrincipalName": _FILTER.format("UserPrincipalName"),
    # -- groups ---------------------------------------------------------------------------------
    "GroupType": _FILTER.format("GroupType"),
    "IncludedRecipients": "New-DynamicDistributionGroup.md, -IncludedRecipients",
    "ManagedBy": _FILTER.format("ManagedBy"),
    "Notes": _FILTER.format("Notes"),
    "RecipientFilter": "New-DynamicDistributionGroup.md, -RecipientFilter",
    "RequireSenderAuthenticationEnabled": "Set-DistributionGroup.md / "
    "Set-DynamicDistributionGroup.md, -RequireSenderAuthenticationEnabled",
    # -- Get-MailboxStatistics ------------------------------------------------------------------
    "DeletedItemCount": "cmdlet-property-sets.md, Get-EXOMailboxStatistics Minimum",
    "ItemCount": "cmdlet-property-sets.md, Get-EXOMailboxStatistics Minimum",
    "LastLogonTime": "cmdlet-property-sets.md, Get-EXOMailboxStatistics All",
    "MailboxGuid": "cmdlet-property-sets.md, Get-EXOMailboxStatistics Minimum",
    "MailboxTypeDetail": "cmdlet-property-sets.md, Get-EXOMailboxStatistics All",
    "TotalDeletedItemSize": "cmdlet-property-sets.md, Get-EXOMailboxStatistics Minimum",
    "TotalItemSize": "cmdlet-property-sets.md, Get-EXOMailboxStatistics Minimum",
    # -- accepted and remote domains ------------------------------------------------------------
    "DomainName": "New-AcceptedDomain.md / New-RemoteDomain.md, -DomainName",
    "DomainType": "Get-AcceptedDomain.md, Example 1 ($_.DomainType); Set-AcceptedDomain.md",
    # *unverified*: public Exchange Online scripts read `Get-AcceptedDomain` rows'
    # `.Default` and `.InitialDomain` (the Exchange 2013 reference, which applied to Exchange
    # Online, had New-AcceptedDomain -InitialDomain); today's reference names neither.
    "Default": "public scripts: Get-AcceptedDomain | Where-Object {$_.Default -eq $true}",
    "InitialDomain": "public scripts: (Get-AcceptedDomain).where{$_.InitialDomain}",
    "AllowedOOFType": "Set-RemoteDomain.md, -AllowedOOFType",
    "AutoForwardEnabled": "Set-RemoteDomain.md, -AutoForwardEnabled",
    "AutoReplyEnabled": "Set-RemoteDomain.md, -AutoReplyEnabled",
    "DeliveryReportEnabled": "Set-RemoteDomain.md, -DeliveryReportEnabled",
    "NDREnabled": "Set-RemoteDomain.md, -NDREnabled",
    # -- outbound spam filter policies ----------------------------------------------------------
    "ActionWhenThresholdReached": "Set-HostedOutboundSpamFilterPolicy.md, -ActionWhenThresholdReached",
    "AutoForwardingMode": "Set-HostedOutboundSpamFilterPolicy.md, -AutoForwardingMode",
    "BccSuspiciousOutboundMail": "Set-HostedOutboundSpamFilterPolicy.md, -BccSuspiciousOutboundMail",
    "Enabled": "Get-HostedOutboundSpamFilterPolicy.md, Example 1 (Format-Table Name,Enabled,...)",
    "IsDefault": "Get-HostedOutboundSpamFilterPolicy.md, Example 1 (Format-Table ...,IsDefault)",
    "NotifyOutboundSpam": "Set-HostedOutboundSpamFilterPolicy.md, -NotifyOutboundSpam",
    "RecipientLimitExternalPerHour": "Set-HostedOutboundSpamFilterPolicy.md, "
    "-RecipientLimitExternalPerHour",
    "RecipientLimitInternalPerHour": "Set-HostedOutboundSpamFilterPolicy.md, "
    "-RecipientLimitInternalPerHour",
    "RecipientLimitPerDay": "Set-HostedOutboundSpamFilterPolicy.md, -RecipientLimitPerDay",
    # -- outbound spam filter rules (New-/Set-HostedOutboundSpamFilterRule are not in the
    # extracted reference; their pages name the rule's settable properties) ---------------------
    "Comments": "New-HostedOutboundSpamFilterRule.md, -Comments",
    "ExceptIfFrom": "New-HostedOutboundSpamFilterRule.md, -ExceptIfFrom",
    "ExceptIfFromMemberOf": "New-HostedOutboundSpamFilterRule.md, -ExceptIfFromMemberOf",
    "ExceptIfSenderDomainIs": "New-HostedOutboundSpamFilterRule.md, -ExceptIfSenderDomainIs",
    "From": "New-HostedOutboundSpamFilterRule.md, -From",
    "FromMemberOf": "New-HostedOutboundSpamFilterRule.md, -FromMemberOf",
    "HostedOutboundSpamFilterPolicy": "New-HostedOutboundSpamFilterRule.md, "
    "-HostedOutboundSpamFilterPolicy",
    "Priority": "New-HostedOutboundSpamFilterRule.md, -Priority",
    "SenderDomainIs": "New-HostedOutboundSpamFilterRule.md, -SenderDomainIs",
    # -- organization ---------------------------------------------------------------------------
    "IsDehydrated": "Enable-OrganizationCustomization.md (the IsDehydrated property of "
    "Get-OrganizationConfig)",
}
