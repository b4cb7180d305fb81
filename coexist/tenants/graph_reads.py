"""Every Graph property the product reads, by the v1.0 CSDL type it reads it from.

The product may rely on nothing Microsoft does not publish (issue 9): this is the
declaration `tests/contract/test_graph_reads.py` holds the code to. Each entry must
exist on its type in `data/graph-v1.0-csdl.xml.gz` (base types included), and every
camelCase key the product reads (`x.get("k")`, `x["k"]`) and every property named in a
`$select`, `$filter` or `$orderby` it sends must be declared here for some type. Adding
a read means adding it here, where the contract test checks it against the CSDL.

Pure data: nothing imports it at run time.
"""

from __future__ import annotations

READS: dict[str, frozenset[str]] = {
    # -- directory: discovery/scope.py, provisioning/convert.py, provisioning/groups.py,
    #    commands.py (users, scope group and its transitive members, licenses)
    "user": frozenset(
        {
            "id",
            "userPrincipalName",
            "usageLocation",
            "givenName",
            "surname",
            "assignedLicenses",
            # automatch.py: target users matched by address and display name (members only)
            "mail",
            "displayName",
            "proxyAddresses",
            "userType",
        }
    ),
    "assignedLicense": frozenset({"skuId"}),
    "group": frozenset(
        {
            "id",
            "displayName",
            "description",
            "mail",
            "mailEnabled",
            "mailNickname",
            "securityEnabled",
            "groupTypes",
        }
    ),
    "directoryObject": frozenset({"id"}),  # members / transitiveMembers (with @odata.type)
    # -- licensing: commands.py, preflight.py (seats = prepaidUnits.enabled - consumedUnits)
    "subscribedSku": frozenset({"skuId", "skuPartNumber", "consumedUnits", "prepaidUnits"}),
    "licenseUnitsDetail": frozenset({"enabled"}),
    # -- the import/export API's mailbox id: tenants/graph.py, migrate/stores/graph.py
    "exchangeSettings": frozenset({"primaryMailboxId"}),
    # -- mail: verify.py, migrate/items.py, migrate/stores/graph_io.py (subject and headers of
    #    skipped items)
    "message": frozenset(
        {
            "id",
            "subject",
            "changeKey",
            "createdDateTime",
            "receivedDateTime",
            "sentDateTime",
            "isRead",
            "isDraft",
            "flag",
            "categories",
            "importance",
            "internetMessageHeaders",
            "internetMessageId",
        }
    ),
    "followupFlag": frozenset({"flagStatus"}),
    "internetMessageHeader": frozenset({"name", "value"}),
    "mailFolder": frozenset({"id", "displayName", "childFolderCount", "totalItemCount"}),
    "uploadSession": frozenset({"uploadUrl"}),
    # -- contacts, calendars, To Do: migrate/stores/graph_pim.py
    "contactFolder": frozenset({"id", "displayName"}),
    "contact": frozenset(
        {
            "id",
            "displayName",
            "emailAddresses",
            "changeKey",
            "createdDateTime",
            "lastModifiedDateTime",
            # ews_pim (graph-ews)
            "middleName",
            "nickName",
            "companyName",
            "jobTitle",
            "personalNotes",
        }
    ),
    "emailAddress": frozenset({"address"}),
    "calendar": frozenset({"id", "name", "isDefaultCalendar"}),
    "event": frozenset(
        {
            "id",
            "subject",
            "type",
            "start",
            "recurrence",
            "attendees",
            "originalStart",
            "originalStartTimeZone",
            "changeKey",
            "createdDateTime",
            "lastModifiedDateTime",
            # ews_pim (graph-ews)
            "isAllDay",
            "showAs",
            "isReminderOn",
            "reminderMinutesBeforeStart",
        }
    ),
    "dateTimeTimeZone": frozenset({"dateTime", "timeZone"}),
    "patternedRecurrence": frozenset({"range"}),
    "recurrenceRange": frozenset({"type", "endDate", "startDate", "numberOfOccurrences"}),
    # -- the same resources made into EWS items: migrate/stores/ews_pim.py (graph-ews)
    "recurrencePattern": frozenset(
        {"type", "interval", "daysOfWeek", "firstDayOfWeek", "dayOfMonth", "month", "index"}
    ),
    "physicalAddress": frozenset({"street", "city", "state", "countryOrRegion", "postalCode"}),
    "checklistItem": frozenset({"displayName", "isChecked"}),
    "todoTaskList": frozenset({"id", "displayName", "wellknownListName"}),
    # To Do copies carry their source task's id as a linked resource (migrate/stores/graph_pim.py stamp).
    "linkedResource": frozenset({"applicationName", "externalId"}),
    "todoTask": frozenset(
        {
            "id",
            "title",
            "dueDateTime",
            "checklistItems",
            "createdDateTime",
            "lastModifiedDateTime",
            "startDateTime",  # ews_pim (graph-ews)
            "completedDateTime",
        }
    ),
    # -- mailbox import/export API: migrate/stores/graph_io.py. The importItem answer
    #    ({itemId, changeKey}, from the importUrl on outlook.office365.com) has no CSDL type;
    #    its names are exportItemResponse's.
    "mailboxFolder": frozenset(
        {
            "id",
            "displayName",
            "parentFolderId",
            "type",
            "childFolderCount",
            "totalItemCount",
            "singleValueExtendedProperties",
        }
    ),
    "mailboxItem": frozenset(
        {"id", "changeKey", "createdDateTime", "size", "type", "singleValueExtendedProperties"}
    ),
    "singleValueLegacyExtendedProperty": frozenset({"id", "value"}),
    "exportItemResponse": frozenset({"itemId", "changeKey", "data"}),
    "mailboxItemImportSession": frozenset({"importUrl", "expirationDateTime"}),
}
