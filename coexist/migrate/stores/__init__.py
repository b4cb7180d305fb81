"""One MailboxStore per data plane (`coexist.tenants.protocols.MailboxStore`)."""
