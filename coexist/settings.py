"""Project settings: the `project.toml` schema, every setting declared once.

Each setting is one `Setting` row in `SETTINGS` (key, type, default, env var,
help, choices, required). Everything else is derived from that table:

- `render_template()` / `write_project()`: the documented `project.toml` that
  `coexist init` writes: every option present, its help as a comment, defaults filled in;
- `load_project()`: parse, validate and convert into a typed, frozen `Project`;
  every error is a `ConfigError` naming the file and the key;
- environment-variable overrides (environment > file > default);
- `describe()`: the table as plain data, for docs.

Secrets never live in the file. A tenant's client secret is read at load time
from the environment variable named by `client_secret_env`; a literal
`client_secret`/`password`/`secret` key anywhere is refused, and so is any key
that looks like it turns TLS verification off (a CA bundle is the only knob).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import re
import textwrap
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import jinja2

from coexist.errors import ConfigError
from coexist.files import private_dir, write_failed, write_private
from coexist.tenants.auth import PUBLIC_AUTHORITY, TenantEndpoint

PROJECT_FILE = "project.toml"
JOURNAL_FILE = "journal.db"
TENANT_SIDES = ("source", "target")
# Endpoint kinds a side may be (DESIGN.md "Endpoint kinds"); each kind but m365, whose
# settings are the side's own table (as before kinds existed), has its own table under the
# side: [source.imap]. What each kind can do is engine/context.KIND_CAPABILITIES.
KINDS = ("m365", "imap", "exchange", "workmail")
KIND_TABLES = ("imap", "ews", "workmail")
# The table of each kind's settings under its side: Exchange and WorkMail are both spoken to
# over EWS, with the same settings ([source.ews]).
KIND_TABLE: dict[str, str] = {"imap": "imap", "exchange": "ews", "workmail": "ews"}

SettingType = Literal["str", "int", "bool", "list", "duration", "path"]


# -- the declaration ------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One option of `project.toml`; the single source of its default, env var and help."""

    key: str  # "section.name"
    type: SettingType
    default: Any
    help: str
    env: str | None = None
    choices: tuple[str, ...] | None = None
    required: bool = False
    # Required only where a side is of this kind, e.g. ("target", "m365"): a setting only
    # that kind uses is no burden on a project of other kinds.
    required_where: tuple[str, str] | None = None
    format: str | None = None  # extra check for strings, see _FORMATS
    minimum: int | None = None
    echo: bool = True  # False: never repeat the value in an error (it may be a pasted secret)

    @property
    def section(self) -> str:
        """The table it is written in: "migration", or "source.imap" for a kind's table."""
        return self.key.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.key.rpartition(".")[2]


SECTIONS: dict[str, str] = {
    "project": "The project: one migration from one source tenant to one target tenant.",
    "source": (
        "The source tenant: where the mailboxes are today. coexist signs in as an app "
        "registration with Microsoft Graph application permissions and Exchange.ManageAsApp "
        "plus the Exchange Administrator role (see the README). Secrets never go in this "
        "file: use certificate_file, or the environment variable named by client_secret_env."
    ),
    "target": (
        "The target tenant: where the mailboxes move to. Same app registration requirements "
        "and secret rules as [source]."
    ),
    "domains": "Addresses used for forwarding and for the users' new primary addresses.",
    "scope": "Which source mailboxes are migrated.",
    "groups": "Which source groups are recreated in the target.",
    "mail_users": "How each source mailbox gets its target object (a MailUser) at provision.",
    "prestage": "Pre-stage: turning target MailUsers into mailboxes and copying older mail.",
    "trial": (
        "`coexist prestage --trial`: a trial pass that copies a small, recent part of each "
        "mailbox to check the project end to end (MigrationWiz's Trial Migration). What it "
        "copies counts as copied: later passes do not copy it again."
    ),
    "cutover": "Cutover: what happens to mail routing once a user's mailbox has moved.",
    "migration": "How mail data is copied between mailboxes.",
    "engine": "How coexist runs steps: concurrency and retries.",
    "verify": "`coexist verify-mailflow`: probe messages that show where mail lands.",
    "dns": "`coexist check-dns`: the DNS records a cutover switches (MX, autodiscover, SPF).",
    "mail": (
        "Mail coexist sends to people (reports, notices, credential requests, status mail): "
        "through an SMTP relay (COEXIST_SMTP_* environment variables) or Graph sendMail as a "
        "service mailbox."
    ),
    "credential_link": (
        "`coexist credentials request` / `serve`: end users give their source credentials "
        "through a one-time link to an HTTPS page."
    ),
    "schedule": (
        "Run windows: when data passes may move data (CodeTwo's scheduler). A pass outside "
        "its windows waits for the next one; one whose window closes stops after the items "
        "in flight and goes on when it opens again. A batch can have its own windows: "
        'coexist batch set-window BATCH "20:00-06:00".'
    ),
    # Kind tables last: between [source] and [target], a [source.imap] would take in what
    # is added at the end of [source] by hand.
    "source.imap": (
        'The source IMAP server, when [source] kind = "imap". Users and their passwords '
        "come from a batch file and the credential vault, never from this file. TLS is "
        "always on."
    ),
    "target.imap": 'The target IMAP server, when [target] kind = "imap". As [source.imap].',
    "source.ews": (
        'The source Exchange Web Services endpoint, when [source] kind = "exchange" (hosted or '
        'on-premises Exchange 2010 SP1 ... 2019) or "workmail" (Amazon WorkMail). One admin '
        "login opens every mailbox: FullAccess on each (delegation) or the "
        "ApplicationImpersonation role (impersonation); WorkMail: a user granted mailbox "
        "permissions. Its password goes in the credential vault (coexist credentials set "
        "--master --side source), never here. TLS is always verified."
    ),
    "target.ews": 'The target EWS endpoint, when [target] kind = "exchange" or "workmail". As '
    "[source.ews].",
    "source.workmail": (
        'Amazon WorkMail\'s admin API (AWS), when [source] kind = "workmail": the organisation '
        "whose users coexist creates and grants the migration account access to. The access "
        "key's secret goes in the credential vault or AWS_SECRET_ACCESS_KEY, never here."
    ),
    "target.workmail": (
        'Amazon WorkMail\'s admin API (AWS), when [target] kind = "workmail". With '
        "organization_id set, prestage creates each user of the batch in WorkMail (name, "
        "display name, primary address, initial password from the vault, RegisterToWorkMail), "
        "adds its aliases and grants the migration account FULL_ACCESS before the data pass. "
        "The access key's secret goes in the credential vault or AWS_SECRET_ACCESS_KEY."
    ),
}


def _tenant_settings(side: str) -> list[Setting]:
    """The [source] and [target] tables share one declaration; only names differ."""
    up = side.upper()

    def env(name: str) -> str:
        return f"COEXIST_{up}_{name.upper()}"

    return [
        Setting(
            f"{side}.kind",
            "str",
            "m365",
            f"What the {side} is: m365 (a Microsoft 365 tenant: the settings below), imap "
            f"(an IMAP server: mail only, users from a batch file; its settings are the "
            f"[{side}.imap] table), exchange (hosted or on-premises Exchange over EWS) or "
            f"workmail (Amazon WorkMail over EWS); both of these: the [{side}.ews] table.",
            choices=KINDS,
        ),
        Setting(
            f"{side}.tenant_id",
            "str",
            "",
            f"Directory (tenant) id of the {side} tenant: a GUID, or its initial domain "
            "(contoso.onmicrosoft.com). Required unless sandbox_connection is set.",
            env=env("tenant_id"),
            format="tenant",
        ),
        Setting(
            f"{side}.client_id",
            "str",
            "",
            f"Application (client) id of the app registration coexist signs in as in the {side} "
            "tenant (a GUID). Required unless sandbox_connection is set.",
            env=env("client_id"),
            format="guid",
        ),
        Setting(
            f"{side}.client_secret_env",
            "str",
            env("client_secret"),
            "NAME of the environment variable holding the app's client secret; the secret "
            "itself never goes in this file and is read when the project loads. Not needed "
            "when certificate_file is set (the certificate wins when both are present).",
            format="env-name",
            echo=False,
        ),
        Setting(
            f"{side}.certificate_file",
            "path",
            "",
            "PEM file with the app's certificate and its unencrypted private key; relative to "
            "the project directory or absolute. Preferred over a client secret.",
            env=env("certificate_file"),
        ),
        Setting(
            f"{side}.authority",
            "str",
            PUBLIC_AUTHORITY,
            "Microsoft Entra sign-in endpoint. Change it only for a national cloud: "
            "https://login.microsoftonline.us (US Government), https://login.chinacloudapi.cn "
            "(21Vianet). Source: learn.microsoft.com/graph/deployments.",
            env=env("authority"),
            format="https-url",
        ),
        Setting(
            f"{side}.graph_url",
            "str",
            "https://graph.microsoft.com/v1.0",
            "Microsoft Graph root, including the version. National clouds: "
            "https://graph.microsoft.us/v1.0 (GCC High), https://dod-graph.microsoft.us/v1.0 "
            "(DoD), https://microsoftgraph.chinacloudapi.cn/v1.0 (21Vianet).",
            env=env("graph_url"),
            format="https-url",
        ),
        Setting(
            f"{side}.exo_url",
            "str",
            "",
            "Exchange Online admin API (InvokeCommand) URL. Blank = "
            "https://outlook.office365.com/adminapi/beta/{tenant_id}/InvokeCommand. National "
            "clouds use their own Exchange host (outlook.office365.us for GCC High, "
            "webmail.apps.mil for DoD); the admin API path there is unverified.",
            env=env("exo_url"),
            format="https-url",
        ),
        Setting(
            f"{side}.ca_file",
            "path",
            "",
            "Extra CA bundle (PEM) to trust, e.g. a TLS-inspecting proxy's; blank = the system "
            "store. Certificate verification is always on and cannot be turned off.",
            env=env("ca_file"),
        ),
        Setting(
            f"{side}.sandbox_connection",
            "path",
            "",
            "A sandbox connection.json (written by `coexist sandbox serve` and `coexist demo`). "
            "When set, tenant_id, client_id, certificate_file, ca_file and the endpoints come "
            "from it: leave those at their defaults.",
            env=env("sandbox_connection"),
        ),
    ]


def _imap_settings(side: str) -> list[Setting]:
    """The [source.imap] and [target.imap] tables (kind = "imap")."""
    up = side.upper()

    def env(name: str) -> str:
        return f"COEXIST_{up}_IMAP_{name.upper()}"

    return [
        Setting(
            f"{side}.imap.host",
            "str",
            "",
            f"Host name or IP address of the {side} IMAP server; its certificate must name "
            "it. Required when kind = imap.",
            env=env("host"),
            format="host",
        ),
        Setting(
            f"{side}.imap.port",
            "int",
            0,
            "TCP port. 0 = the security mode's own: 993 for implicit-tls, 143 for starttls.",
            env=env("port"),
            minimum=0,
        ),
        Setting(
            f"{side}.imap.security",
            "str",
            "implicit-tls",
            "implicit-tls: TLS from the first byte (RFC 8314, port 993). starttls: plain "
            "connection upgraded with STARTTLS before login (RFC 3501; refused if the server "
            "does not offer it). There is no unencrypted mode.",
            choices=("implicit-tls", "starttls"),
        ),
        Setting(
            f"{side}.imap.ca_file",
            "path",
            "",
            "Extra CA bundle (PEM) to trust for the IMAP server's certificate; blank = the "
            "system store. Certificate verification is always on.",
            env=env("ca_file"),
        ),
        Setting(
            f"{side}.imap.auth",
            "str",
            "login",
            "How each user signs in: login (the LOGIN command), plain (AUTHENTICATE PLAIN, RFC "
            "4616) or xoauth2 (an OAuth 2.0 access token: Microsoft 365 and Gmail, which "
            "refuse passwords for IMAP).",
            choices=("login", "plain", "xoauth2"),
        ),
        Setting(
            f"{side}.imap.master_user",
            "str",
            "",
            "An admin login that may open every user's mailbox (Dovecot master users: "
            "user*master). Blank = each user signs in with their own password. The master "
            "password goes in the credential vault, never here.",
        ),
        Setting(
            f"{side}.imap.include_virtual_folders",
            "bool",
            False,
            "Move Gmail's [Gmail]/All Mail, Important and Starred too (RFC 6154 \\All, "
            "\\Important, \\Flagged views). false = left out: every message in them is also "
            "in the INBOX or a label's folder, so moving them would copy it again.",
        ),
        Setting(
            f"{side}.imap.connections_per_server",
            "int",
            10,
            "Most connections open to the server at once, for all users (Dovecot allows 10 "
            "per user and IP by default, mail_max_userip_connections).",
            minimum=1,
        ),
        Setting(
            f"{side}.imap.connections_per_mailbox",
            "int",
            4,
            "Most connections open to one mailbox at once (Gmail allows 15 per account).",
            minimum=1,
        ),
    ]


def _ews_settings(side: str) -> list[Setting]:
    """The [source.ews] and [target.ews] tables (kind = "exchange" or "workmail")."""
    up = side.upper()

    def env(name: str) -> str:
        return f"COEXIST_{up}_EWS_{name.upper()}"

    return [
        Setting(
            f"{side}.ews.url",
            "str",
            "",
            "The EWS endpoint, https://HOST/EWS/Exchange.asmx (the OWA host of a hosted "
            "Exchange). Blank for WorkMail: https://ews.mail.REGION.awsapps.com/EWS/"
            "Exchange.asmx from region.",
            env=env("url"),
        ),
        Setting(
            f"{side}.ews.region",
            "str",
            "",
            "WorkMail's AWS region (e.g. us-east-1), when kind = workmail and url is blank.",
            env=env("region"),
        ),
        Setting(
            f"{side}.ews.auth",
            "str",
            "ntlm",
            "How the admin signs in: ntlm (on-premises Exchange's default) or basic (WorkMail; "
            "Exchange where Basic is enabled on /EWS). OAuth (Exchange Online) is not offered: "
            "EWS there is being switched off.",
            choices=("ntlm", "basic"),
        ),
        Setting(
            f"{side}.ews.version",
            "str",
            "Exchange2016",
            "The server's version, pinned so that no request probes it (RequestServerVersion; "
            "2019 speaks Exchange2016's schema). ExportItems/UploadItems need 2010 SP1 or later.",
            choices=(
                "Exchange2010_SP1",
                "Exchange2010_SP2",
                "Exchange2013",
                "Exchange2013_SP1",
                "Exchange2016",
                "Exchange2019",
            ),
        ),
        Setting(
            f"{side}.ews.access",
            "str",
            "delegation",
            "delegation: the admin has FullAccess on each mailbox (Add-MailboxPermission); "
            "Exchange throttles the admin's one budget, so few mailboxes go at once. "
            "impersonation: the admin holds ApplicationImpersonation "
            "(New-ManagementRoleAssignment); each mailbox has its own budget. "
            "own (source): no admin; each user's own login and password (coexist credentials "
            "request mails a link for them) opens only that user's mailbox.",
            choices=("delegation", "impersonation", "own"),
        ),
        Setting(
            f"{side}.ews.admin",
            "str",
            "",
            "The admin login (DOMAIN\\user or user@domain) that opens every mailbox. Its "
            "password: coexist credentials set --master --side " + side + ".",
            env=env("admin"),
        ),
        Setting(
            f"{side}.ews.ca_file",
            "path",
            "",
            "Extra CA bundle (PEM) to trust for the server's certificate; blank = the system "
            "store. Certificate verification is always on.",
            env=env("ca_file"),
        ),
        Setting(
            f"{side}.ews.powershell_url",
            "str",
            "",
            "Exchange's remote PowerShell endpoint, https://HOST/PowerShell (configuration "
            "Microsoft.Exchange), when kind = exchange. Given, coexist runs the cmdlets itself: "
            "forwarding objects at prestage, the per-batch forward at cutover, rollback and "
            "coexist grant-access. Blank = no cmdlets: cutover is the operator's MX change.",
            env=env("powershell_url"),
        ),
        Setting(
            f"{side}.ews.powershell_auth",
            "str",
            "negotiate",
            "How the admin signs in to remote PowerShell: negotiate (Kerberos, else NTLM), "
            "kerberos, ntlm or basic. Same admin and password as EWS.",
            choices=("negotiate", "kerberos", "ntlm", "basic"),
        ),
        Setting(
            f"{side}.ews.mailboxes_at_once",
            "int",
            0,
            "Mailboxes open at once on this server. 0 = by access: 20 under delegation (one "
            "throttling budget for the admin, as MigrationWiz advises), 50 under impersonation.",
            minimum=0,
        ),
    ]


def _workmail_settings(side: str) -> list[Setting]:
    """The [source.workmail] and [target.workmail] tables (kind = "workmail"): the AWS API."""
    up = side.upper()

    def env(name: str) -> str:
        return f"COEXIST_{up}_WORKMAIL_{name.upper()}"

    return [
        Setting(
            f"{side}.workmail.organization_id",
            "str",
            "",
            "The WorkMail organisation (m-0123...: the console's Organization ID). Blank = "
            "coexist does not administer WorkMail: users and permissions are made by hand.",
            env=env("organization_id"),
        ),
        Setting(
            f"{side}.workmail.region",
            "str",
            "",
            "The organisation's AWS region (e.g. eu-west-1). Blank = [" + side + ".ews] region.",
            env=env("region"),
        ),
        Setting(
            f"{side}.workmail.endpoint",
            "str",
            "",
            "The API's endpoint URL. Blank = AWS's own for the region "
            "(https://workmail.REGION.amazonaws.com); the sandbox's for rehearsals.",
            env=env("endpoint"),
        ),
        Setting(
            f"{side}.workmail.access_key_id",
            "str",
            "",
            "The AWS access key id (of an IAM identity allowed the workmail: actions coexist "
            "uses). Blank = the environment's AWS_ACCESS_KEY_ID. Its secret: the vault, else "
            "AWS_SECRET_ACCESS_KEY.",
            env=env("access_key_id"),
        ),
        Setting(
            f"{side}.workmail.ca_file",
            "path",
            "",
            "Extra CA bundle (PEM) to trust for the API endpoint; blank = the system store. "
            "Certificate verification is always on.",
            env=env("ca_file"),
        ),
        Setting(
            f"{side}.workmail.migration_account",
            "str",
            "",
            "The WorkMail user (email or user name) granted FULL_ACCESS on each mailbox, the "
            "login coexist opens mailboxes with over EWS. Blank = [" + side + ".ews] admin.",
        ),
    ]


# Environment variables are given to what differs between machines or runs (identity,
# endpoints, files, journal, concurrency); migration decisions (domains, scope, modes)
# belong in the file so that every run of a project behaves the same.
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "project.name",
        "str",
        "",
        "A name for this migration, shown in status output. Blank = the project directory's name.",
    ),
    Setting(
        "project.journal",
        "str",
        "",
        "Where coexist records every step. Blank = the SQLite file journal.db in the project "
        "directory. For a team or several workers: a PostgreSQL URL, postgresql://user@host/db. "
        "A password never goes here: put the whole URL in COEXIST_JOURNAL_URL, or use "
        "PGPASSWORD / ~/.pgpass.",
        env="COEXIST_JOURNAL_URL",
        format="journal-url",
    ),
    Setting(
        "project.batch_size",
        "int",
        50,
        "Usual number of users per batch; preflight checks that free license seats cover it.",
        minimum=1,
    ),
    *_tenant_settings("source"),
    *_imap_settings("source"),
    *_ews_settings("source"),
    *_workmail_settings("source"),
    *_tenant_settings("target"),
    *_imap_settings("target"),
    *_ews_settings("target"),
    *_workmail_settings("target"),
    Setting(
        "domains.source_forwarding_domain",
        "str",
        "",
        "Source domain that target forwarders point to (e.g. a vanity domain that stays routed "
        "to the source). Blank = every accepted domain of the source, i.e. each user's own "
        "primary source address.",
        format="domain",
    ),
    Setting(
        "domains.destination_domain",
        "str",
        "",
        "Accepted domain of the target tenant that becomes each user's primary address there, "
        "e.g. fabrikam.com. Required when the target is Microsoft 365 (kind = m365); unused "
        "by an IMAP target.",
        required=True,
        required_where=("target", "m365"),
        format="domain",
    ),
    Setting(
        "scope.group",
        "str",
        "",
        "Display name of the mail-enabled security group whose members are migrated; matched "
        "exactly (spaces allowed, no wildcards). Nested groups are expanded. Blank = every user "
        "mailbox of the source. In a real tenant a membership change can take up to an hour to "
        "show: if the group looks empty right after you filled it, wait and run discover again.",
    ),
    Setting(
        "groups.copy",
        "list",
        ["distribution", "mail-security", "security", "dynamic"],
        "Kinds of source groups recreated in the target with their members mapped to target "
        "objects: distribution (distribution lists), mail-security (mail-enabled security "
        "groups), security (security groups), dynamic (dynamic distribution groups). Copied "
        "independently of the scope and never removed by rediscover. [] = copy none.",
        choices=("distribution", "mail-security", "security", "dynamic"),
    ),
    Setting(
        "mail_users.mode",
        "str",
        "create",
        "create: a new MailUser per source mailbox; an SMTP address already in use in the "
        "target gets a numeric suffix (alice2@...). match: pair each source mailbox with the "
        "existing target recipient that has the same SMTP local part; ambiguous or duplicate "
        "matches wait for the operator's confirmation.",
        choices=("create", "match"),
    ),
    Setting(
        "mail_users.forward_matched_to_source",
        "bool",
        False,
        "match mode only: also forward each matched target object back to the source mailbox "
        "until cutover, so mail sent to the target address reaches the mailbox in use.",
    ),
    Setting(
        "mail_users.replace_contacts",
        "bool",
        True,
        "A mail contact in the target that already carries a user's source address (a GAL "
        "sync contact) is removed when that user's MailUser is created, and its addresses "
        "and LegacyExchangeDN (as X500) move to the MailUser so replies to it still resolve. "
        "Its state is journaled. false = such a user fails with a conflict to resolve by hand.",
    ),
    Setting(
        "prestage.convert",
        "bool",
        True,
        "Turn each target MailUser into a mailbox at pre-stage by licensing it. false = leave "
        "the MailUsers as they are.",
    ),
    Setting(
        "prestage.license_sku",
        "str",
        "",
        "License assigned at pre-stage: a skuPartNumber (e.g. ENTERPRISEPACK) or skuId from the "
        "target tenant's subscribed SKUs (preflight lists them with free seats). Needed when "
        "convert = true. Locked once the project has run: the journal records the SKU in use "
        "and refuses a different one.",
        format="sku",
    ),
    Setting(
        "prestage.usage_location",
        "str",
        "",
        'Two-letter country code (ISO 3166-1, e.g. "US") set on target users that have none, '
        "because Microsoft cannot license a user without a usage location. Blank = leave such "
        "users unlicensed and report them.",
        format="country",
    ),
    Setting(
        "prestage.older_than",
        "duration",
        "90d",
        "Default data window for pre-stage passes: mail older than this is copied before "
        "cutover (prestage --older-than overrides it). A number and a unit (w, d, h, m, s), "
        "e.g. 90d, 12h, 30m.",
    ),
    Setting(
        "trial.days",
        "int",
        10,
        "A trial pass copies items received in the last this many days. 0 = no day limit "
        "(then set items).",
        minimum=0,
    ),
    Setting(
        "trial.items",
        "int",
        0,
        "A trial pass copies at most this many items per folder, the newest first "
        "(MigrationWiz's trial moves up to 10). 0 = no per-folder limit.",
        minimum=0,
    ),
    Setting(
        "cutover.mode",
        "str",
        "forward-on-source",
        "forward-on-source: forward the source mailbox to the target and remove the target's "
        "forward. leave-forward-on-target: keep the forward on the target object and change "
        "nothing at the source. rename-source: prefix the source mailbox with rename_prefix and "
        "create a mail contact at the source carrying the original address, so coexistence "
        "holds and the mailbox can be recovered.",
        choices=("forward-on-source", "leave-forward-on-target", "rename-source"),
    ),
    Setting(
        "cutover.forward_contact_name",
        "str",
        "{display_name} (External Forward)",
        "Hosted Exchange sources with remote PowerShell: the Name of each user's forwarding "
        "object, the hidden mail contact at the source that points at the new address and that "
        "the mailbox forwards to at cutover (forward-on-source). Fields: {display_name}, "
        "{alias}, {address}.",
    ),
    Setting(
        "cutover.forward_contact_ou",
        "str",
        "",
        "Hosted Exchange sources: the organizational unit the forwarding objects are created "
        "in (New-MailContact -OrganizationalUnit), e.g. the tenant's OU at a hosting "
        "provider. Blank = Exchange's default.",
    ),
    Setting(
        "cutover.rename_prefix",
        "str",
        "MIGWIZ-",
        "Prefix given to the renamed source mailbox in rename-source mode (letters, digits, "
        "'-', '_', '.').",
        format="prefix",
    ),
    Setting(
        "migration.mover",
        "str",
        # A project moves its data unless told otherwise (a default of `none` let prestage
        # succeed while copying nothing, issue 10): Microsoft 365 -> Microsoft 365 at full
        # fidelity; a project of other kinds gets its pair's mover (DEFAULT_MOVERS) when
        # the file does not name one.
        "graph-import-export",
        "How prestage and cutover copy mail, contacts, calendars and tasks. "
        "graph-import-export (the default for Microsoft 365 to Microsoft 365): full fidelity "
        "over Microsoft Graph's mailbox import/export API. graph-items: the fallback over the "
        "mail, contacts, calendar and To Do APIs (messages rebuilt from their MIME as "
        "non-draft items with their dates). imap-sync: IMAP to IMAP (MIME with flags, keywords "
        "and INTERNALDATE; the default for imap to imap). imap-graph: IMAP to Microsoft 365 "
        "(mail only: messages as non-draft items with their flags, categories and dates; the "
        "default for imap to m365). ews-sync: Exchange/WorkMail to Exchange/WorkMail over EWS "
        "(ExportItems/UploadItems between two Exchanges: mail, calendars, contacts, tasks and "
        "notes; with WorkMail on either side MIME with read/flag state and dates, mail only). "
        "graph-ews: Microsoft 365 to Exchange/WorkMail (mail as MIME with its state; contacts, "
        "calendars with their exceptions and To Do tasks as typed items). ews-graph: "
        "Exchange/WorkMail to Microsoft 365 (mail only, MIME with its state). "
        "none: no data is copied (you move it by other means); "
        "each data pass shows `no data mover configured` for the user, never "
        "success, and cutover still proceeds. `coexist permissions --command cutover --mover "
        "NAME` lists exactly what each needs in each tenant.",
        choices=(
            "graph-import-export",
            "graph-items",
            "imap-sync",
            "imap-graph",
            "ews-sync",
            "graph-ews",
            "ews-graph",
            "none",
        ),
    ),
    Setting(
        "migration.folder_rules",
        "list",
        [],
        'Folder renames, applied in order to each source folder path ("Inbox/Projects"): '
        'entries "regex->replacement", e.g. "^INBOX/->" moves Inbox subfolders to the top. '
        "Python regex syntax; the first rule that matches wins.",
    ),
    Setting(
        "migration.include_folders",
        "list",
        [],
        "Regexes over source folder paths; when given, only matching folders are moved.",
    ),
    Setting(
        "migration.exclude_folders",
        "list",
        [],
        "Regexes over source folder paths; matching folders (and their items) are not moved.",
    ),
    Setting(
        "migration.max_item_mb",
        "int",
        150,
        "Items larger than this are skipped and reported (Exchange Online's largest message "
        "is 150 MB).",
        minimum=1,
    ),
    Setting(
        "migration.encrypted",
        "str",
        "skip",
        "skip: S/MIME and IRM-protected items are skipped and reported (they cannot be read "
        "in the target without the keys). copy: moved like any other item.",
        choices=("skip", "copy"),
    ),
    Setting(
        "migration.deletions",
        "str",
        "keep",
        "keep: items deleted at the source after they were copied stay in the target and are "
        "reported. mirror: they are deleted in the target too.",
        choices=("keep", "mirror"),
    ),
    Setting(
        "migration.reconcile_tolerance",
        "int",
        0,
        "Items per mailbox by which target and source may differ (beyond reported skips) "
        "before cutover waits for the operator.",
        minimum=0,
    ),
    Setting(
        "engine.concurrency_per_tenant",
        "int",
        8,
        "Most requests in flight per tenant. Microsoft throttles per app and tenant, so more "
        "is not always faster; Retry-After is honoured either way.",
        env="COEXIST_CONCURRENCY_PER_TENANT",
        minimum=1,
    ),
    Setting(
        "engine.directory_write_budget",
        "int",
        3000,
        "Directory writes per 150 seconds per app and tenant that coexist paces itself to "
        "(Graph directory changes and Exchange cmdlets that change recipients). Microsoft "
        "publishes 3,000; lower it when another tool writes with the same app. A sandbox "
        "served with `--time-scale N` admits N times as many: set 3000 x N for benchmarks.",
        minimum=1,
    ),
    Setting(
        "engine.max_attempts",
        "int",
        5,
        "Attempts per step before it is recorded as failed (`coexist retry` runs it again).",
        minimum=1,
    ),
    Setting(
        "engine.retry_max_wait_s",
        "int",
        300,
        "Upper bound, in seconds, on a single wait between attempts.",
        minimum=1,
    ),
    Setting(
        "engine.look_again_s",
        "int",
        300,
        "Microsoft 365 takes minutes to provision a licensed mailbox and to show objects "
        "made through Exchange in Graph. Users waiting for it are marked `waiting` with the "
        "reason and the time coexist looks again: soon at first, then at most this many "
        "seconds apart. `coexist retry` (or the command run again) continues them; before "
        "their time it reports them as still waiting and leaves the tenants alone.",
        minimum=1,
    ),
    Setting(
        "engine.wait_in_command_s",
        "int",
        60,
        "How many seconds a command keeps looking at its waiting users itself (in short "
        "sleeps) before it leaves them waiting for `coexist retry`. 0: never wait in a command.",
        minimum=0,
    ),
    Setting(
        "engine.waiting_max_s",
        "int",
        172800,
        "A user still waiting for Microsoft 365 after this many seconds (default two days) "
        "is marked failed: a provisioning that long is a fault to look at, not a delay.",
        minimum=1,
    ),
    Setting(
        "engine.outlook_time_scale",
        "int",
        1,
        "Keep 1 against Microsoft. The per-mailbox Outlook budgets coexist paces itself to "
        "(10,000 requests per 10 minutes, 150 MB upload per 5 minutes, per app per mailbox) "
        "run this many times faster; set it to a sandbox's `--time-scale` for benchmarks.",
        minimum=1,
    ),
    Setting(
        "mail.transport",
        "str",
        "smtp",
        "smtp: an SMTP relay whose host, port, security, login and password come from the "
        "environment (COEXIST_SMTP_HOST, _PORT, _SECURITY starttls|tls, _USER, _PASSWORD, "
        "_FROM, _CA_FILE), never from this file. graph: Graph sendMail as [mail] sender; the "
        "app of that tenant needs the application permission Mail.Send (limit it to the "
        "sender with an application access policy or RBAC for Applications).",
        choices=("smtp", "graph"),
    ),
    Setting(
        "mail.sender",
        "str",
        "",
        "The From address. graph: the service mailbox mail is sent as (default "
        "[verify] service_mailbox). smtp: used when COEXIST_SMTP_FROM is not set.",
    ),
    Setting(
        "mail.graph_side",
        "str",
        "target",
        "graph: which tenant's Graph sends (the tenant that holds [mail] sender).",
        choices=("target", "source"),
    ),
    # -- issue 15: end users give their source credentials through a link (coexist.credlink)
    Setting(
        "credential_link.expiry",
        "duration",
        "7d",
        "How long a link mailed by `coexist credentials request` stays valid.",
    ),
    Setting(
        "credential_link.attempts",
        "int",
        5,
        "Wrong logins a link takes; then it locks and the operator is told (a journal warning "
        "and the user's status line).",
        minimum=1,
    ),
    Setting(
        "credential_link.operator",
        "str",
        "",
        "Who moves the mailboxes, as the page and the mail say it (default: the project's name).",
    ),
    Setting(
        "credential_link.url",
        "str",
        "",
        "The page's public address as users reach it (https://migrate.example.com); blank: "
        "https://host:port of the settings below.",
    ),
    Setting("credential_link.host", "str", "127.0.0.1", "Where `credentials serve` listens."),
    Setting("credential_link.port", "int", 8443, "The port `credentials serve` listens on."),
    Setting(
        "credential_link.cert_file",
        "path",
        "",
        "The page's TLS certificate chain (PEM); `credentials serve --cert` overrides it.",
    ),
    Setting(
        "credential_link.key_file",
        "path",
        "",
        "The certificate's private key (PEM); `credentials serve --key` overrides it.",
    ),
    Setting(
        "credential_link.templates",
        "path",
        "",
        "A directory of jinja2 templates that replace coexist's own (page.html.j2, "
        "request.txt.j2, request-subject.txt.j2) to brand or translate the page and mail.",
    ),
    Setting(
        "credential_link.requests_per_minute",
        "int",
        20,
        "Requests one link, and one client address, may make a minute; a burst beyond it "
        "is answered 429.",
        minimum=1,
    ),
    Setting(
        "mail.operators",
        "list",
        [],
        "Who gets status mail (addresses): [mail] status says when. Issue 15.",
    ),
    Setting(
        "mail.status",
        "str",
        "none",
        "Status mail to [mail] operators for each data pass of prestage, cutover and retry "
        "(the counts, the report attached): none, end (when the pass ends) or start-end. A "
        "send that fails is warned about and journaled; it never fails the pass.",
        choices=("none", "end", "start-end"),
    ),
    Setting(
        "mail.templates",
        "path",
        "",
        "A directory of your own notice templates (`coexist notify --template NAME` looks "
        "for NAME.txt.j2 and NAME.html.j2 there first, then in the shipped "
        "playbooks/templates/). Relative to the project directory or absolute.",
    ),
    Setting(
        "engine.executor",
        "str",
        "inline",
        "Where prestage and cutover run their users. inline: in the command itself. queue: "
        "the command makes the project-wide decisions (selection, licence seats) and puts one "
        "job per user in a queue in the project's PostgreSQL journal, which `coexist worker` "
        "processes on any number of machines take (issue 16); it needs a PostgreSQL "
        "[project] journal.",
        choices=("inline", "queue"),
    ),
    Setting(
        "verify.service_mailbox",
        "str",
        "",
        "Real tenants: the mailbox the probes are sent from through Graph sendMail. Use a "
        "licensed mailbox in the target tenant (X500 addresses resolve only inside the tenant "
        "that holds them). The target app needs the Graph application permission Mail.Send, "
        "and both apps Mail.Read (application) to find where each probe landed; limit both to "
        "the service mailbox and migrated users with RBAC for Applications or an application "
        "access policy. Blank for the sandbox, whose routing model is used instead.",
        format="email",
    ),
    # `coexist check-dns` and the playbooks' DNS checks (coexist/dnscheck.py).
    Setting(
        "dns.resolver",
        "str",
        "",
        'The resolver DNS checks ask, "IP" or "IP:PORT" (e.g. the sandbox\'s DNS face: its '
        "connection.json dns.resolver). Blank = the system resolver (/etc/resolv.conf).",
        env="COEXIST_DNS_RESOLVER",
    ),
    Setting(
        "dns.domains",
        "list",
        [],
        "The domains whose MX, autodiscover and SPF move to the target. [] = "
        "[domains] destination_domain.",
    ),
    Setting(
        "dns.expect_mx",
        "str",
        "",
        "The MX host the domains must have once mail goes to the target ('*' allowed, e.g. "
        "*.mail.protection.outlook.com). Blank = the target kind's vendor value (Microsoft "
        "365, WorkMail); required for a hosted Exchange or IMAP target.",
    ),
    Setting(
        "dns.expect_autodiscover",
        "str",
        "",
        "The autodiscover.<domain> CNAME target once clients go to the target. Blank = the "
        "target kind's vendor value; for hosted Exchange or IMAP: not checked.",
    ),
    Setting(
        "dns.expect_spf_include",
        "str",
        "",
        "A domain the SPF record must include:. Blank = the target kind's vendor value; for "
        "hosted Exchange or IMAP: not checked.",
    ),
    # Run windows (coexist/schedule.py).
    Setting(
        "schedule.windows",
        "list",
        [],
        'When data passes run, e.g. ["20:00-06:00"] or ["Mon-Fri 19:00-07:00", "Sat,Sun '
        '00:00-24:00"] ([DAYS ]HH:MM-HH:MM, in `timezone`; a window past midnight closes the '
        "next day; DAYS name the day it opens). [] = always.",
        format="windows",
    ),
    Setting(
        "schedule.timezone",
        "str",
        "UTC",
        'The time zone of the windows, an IANA name ("Europe/Berlin"): wall-clock times, '
        "daylight saving time included.",
        format="timezone",
    ),
)

BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}


def section_settings(section: str) -> list[Setting]:
    return [s for s in SETTINGS if s.section == section]


def describe() -> list[dict[str, Any]]:
    """The settings table as plain data (for docs and `--json`)."""
    return [
        {
            "key": s.key,
            "type": s.type,
            "default": s.default,
            "env": s.env,
            "choices": list(s.choices) if s.choices else None,
            "required": s.required,
            "required_where": list(s.required_where) if s.required_where else None,
            "help": s.help,
        }
        for s in SETTINGS
    ]


# -- durations ------------------------------------------------------------------------
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
_DURATION = re.compile(r"(\d+)([wdhms])")


def parse_duration(text: str) -> timedelta:
    """'90d', '12h', '30m', '1d12h' -> timedelta; ValueError with a usable message."""
    compact = text.strip().lower()
    parts = _DURATION.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ValueError(
            f"not a duration: {text!r} (use a number and a unit: 90d, 12h, 30m; "
            "units w, d, h, m, s)"
        )
    return sum((timedelta(**{_UNITS[u]: int(n)}) for n, u in parts), timedelta())


def format_duration(value: timedelta) -> str:
    """The shortest of 'Nw', 'Nd', 'Nh', 'Nm', 'Ns' parts that adds up to `value`."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0d"
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            out += f"{count}{unit}"
    return out


# -- string formats -------------------------------------------------------------------
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_https_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"must be an https:// URL, got {value!r} (TLS is always required)")
    return value.rstrip("/")


def _check_journal_url(value: str) -> str:
    scheme = urlsplit(value).scheme
    if scheme != "sqlite" and not scheme.startswith("postgresql"):
        raise ValueError(
            f"must be blank (SQLite in the project directory), sqlite:///PATH or "
            f"postgresql://..., got scheme {scheme or 'none'!r}"
        )
    return value


def _check_guid(value: str) -> str:
    if not _GUID.match(value):
        raise ValueError(f"must be a GUID like 00000000-0000-0000-0000-000000000000, got {value!r}")
    return value.lower()


def _check_domain(value: str) -> str:
    lowered = value.lower()
    if not _DOMAIN.match(lowered):
        raise ValueError(f"must be a domain name like fabrikam.com, got {value!r}")
    return lowered


def _check_tenant(value: str) -> str:
    if _GUID.match(value):
        return value.lower()
    if _DOMAIN.match(value.lower()):
        return value.lower()
    raise ValueError(
        f"must be a tenant id (GUID) or the tenant's initial domain "
        f"(contoso.onmicrosoft.com), got {value!r}"
    )


def _check_env_name(value: str) -> str:
    if not _ENV_NAME.match(value):
        # The value is never echoed: someone may have pasted the secret itself here.
        raise ValueError(
            "must be the NAME of an environment variable (letters, digits, '_'), not the "
            "secret itself; put the secret in that environment variable"
        )
    return value


_HOST = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)


def _check_host(value: str) -> str:
    lowered = value.strip().lower()
    try:
        return str(ipaddress.ip_address(lowered.strip("[]")))
    except ValueError:
        pass
    if not _HOST.match(lowered):
        raise ValueError(
            f"must be a host name like imap.example.org or an IP address, got {value!r}"
        )
    return lowered


def _check_email(value: str) -> str:
    local, at, domain = value.partition("@")
    if not at or not local or not _DOMAIN.match(domain.lower()):
        raise ValueError(f"must be an email address like probe@fabrikam.com, got {value!r}")
    return value


def _check_country(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z]{2}", value):
        raise ValueError(f'must be a two-letter country code like "US", got {value!r}')
    return value.upper()


def _check_sku(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        raise ValueError(f"must be a skuPartNumber (ENTERPRISEPACK) or a skuId GUID, got {value!r}")
    return value


def _check_windows(value: str) -> str:
    from coexist.schedule import parse_window

    parse_window(value)
    return value


def _check_timezone(value: str) -> str:
    from coexist.schedule import parse_timezone

    parse_timezone(value)
    return value


def _check_prefix(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        raise ValueError(f"may contain only letters, digits, '-', '_' and '.', got {value!r}")
    return value


_FORMATS = {
    "https-url": _check_https_url,
    "journal-url": _check_journal_url,
    "guid": _check_guid,
    "domain": _check_domain,
    "tenant": _check_tenant,
    "env-name": _check_env_name,
    "email": _check_email,
    "country": _check_country,
    "sku": _check_sku,
    "prefix": _check_prefix,
    "host": _check_host,
    "windows": _check_windows,
    "timezone": _check_timezone,
}


# -- conversion of one value ----------------------------------------------------------
class _Invalid(ValueError):
    """A value failed its setting's checks; the loader adds file and key."""


def _type_name(value: Any) -> str:
    names = {bool: "true/false", int: "a number", str: "a string", list: "a list"}
    return names.get(type(value), type(value).__name__)


def _check_type(s: Setting, raw: Any) -> None:
    expected: dict[str, tuple[type, str]] = {
        "str": (str, 'a string in quotes ("...")'),
        "path": (str, 'a path in quotes ("...")'),
        "duration": (str, 'a duration in quotes ("90d")'),
        "int": (int, "a whole number (no quotes)"),
        "bool": (bool, "true or false (no quotes)"),
        "list": (list, 'a list like ["a", "b"]'),
    }
    kind, wording = expected[s.type]
    # bool is a subclass of int in Python; TOML keeps them apart and so do we.
    if not isinstance(raw, kind) or (s.type == "int" and isinstance(raw, bool)):
        shown = f" ({raw!r})" if s.echo else ""
        raise _Invalid(f"must be {wording}, got {_type_name(raw)}{shown}")
    if isinstance(raw, list) and not all(isinstance(item, str) for item in raw):
        raise _Invalid(f"must be {wording} of strings")


def _check_choices(s: Setting, raw: Any) -> None:
    if not s.choices:
        return
    values = raw if isinstance(raw, list) else [raw]
    for value in values:
        if value not in s.choices:
            near = difflib.get_close_matches(value, s.choices, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise _Invalid(f"{value!r} is not one of: {', '.join(s.choices)}{hint}")
    if isinstance(raw, list) and len(set(raw)) != len(raw):
        raise _Invalid("lists a value twice")


def convert(s: Setting, raw: Any, directory: Path) -> Any:
    """Check one raw TOML value against its setting and return the typed value.

    Blank strings mean "not set": None for optional strings and paths. A setting with a
    non-blank default may not be blank (no silent fallback).
    """
    _check_type(s, raw)
    _check_choices(s, raw)
    if s.type == "int":
        if s.minimum is not None and raw < s.minimum:
            raise _Invalid(f"must be at least {s.minimum}, got {raw}")
        return raw
    if s.type == "bool":
        return raw
    if s.type == "list":
        if s.format:  # each entry checked (run windows)
            for entry in raw:
                try:
                    _FORMATS[s.format](entry)
                except ValueError as exc:
                    raise _Invalid(str(exc)) from None
        return tuple(raw)
    if s.type == "duration":
        try:
            return parse_duration(raw)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
    if raw == "":
        if s.default != "":
            raise _Invalid(f"must not be blank (default: {s.default!r})")
        return None
    if s.type == "path":
        path = Path(raw).expanduser()
        return path if path.is_absolute() else (directory / path)
    if s.format:
        try:
            return _FORMATS[s.format](raw)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
    return raw


def _from_env(s: Setting, text: str) -> Any:
    """An environment variable's text as the TOML value it stands for."""
    if s.type == "int":
        try:
            return int(text.strip())
        except ValueError:
            raise _Invalid(f"must be a whole number, got {text!r}") from None
    if s.type == "bool":
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise _Invalid(f"must be true or false, got {text!r}")
    if s.type == "list":
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


# -- the typed result -----------------------------------------------------------------
def _mask_url(url: str | None) -> str | None:
    """A URL with its password replaced, for display."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, tuple):
        return list(value)
    return value


class _Section:
    """Shared behaviour of the section dataclasses: secret-free `to_dict` and repr."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.metadata.get("hidden"):
                continue
            value = getattr(self, f.name)
            if f.metadata.get("secret"):
                out[f"{f.name}_found"] = value is not None
                continue
            if f.metadata.get("url"):
                value = _mask_url(value)
            out[f.name] = value.to_dict() if isinstance(value, _Section) else _plain(value)
        return out

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"{type(self).__name__}({body})"


@dataclass(frozen=True, repr=False)
class ProjectSection(_Section):
    name: str
    journal: str | None = field(metadata={"url": True})
    batch_size: int


@dataclass(frozen=True, repr=False)
class ImapSettings(_Section):
    """An IMAP server's settings ([source.imap] / [target.imap])."""

    host: str | None
    port: int
    security: str
    ca_file: Path | None
    auth: str
    master_user: str | None
    include_virtual_folders: bool
    connections_per_server: int
    connections_per_mailbox: int

    @property
    def effective_port(self) -> int:
        """The port to connect to (RFC 8314: 993 implicit TLS; RFC 3501: 143 STARTTLS)."""
        return self.port or (993 if self.security == "implicit-tls" else 143)


@dataclass(frozen=True, repr=False)
class EwsSettings(_Section):
    """An EWS endpoint's settings ([source.ews] / [target.ews]: kinds exchange, workmail)."""

    url: str | None
    region: str | None
    auth: str
    version: str
    access: str
    admin: str | None
    ca_file: Path | None
    powershell_url: str | None
    powershell_auth: str
    mailboxes_at_once: int

    def service_url(self) -> str | None:
        """The EWS URL: `url`, else WorkMail's for `region` (FACTS.md "Amazon WorkMail")."""
        if self.url:
            return self.url
        if self.region:
            return f"https://ews.mail.{self.region}.awsapps.com/EWS/Exchange.asmx"
        return None

    @property
    def mailboxes(self) -> int:
        if self.mailboxes_at_once:
            return self.mailboxes_at_once
        return 20 if self.access == "delegation" else 50


@dataclass(frozen=True, repr=False)
class WorkMailSettings(_Section):
    """Amazon WorkMail's admin API ([source.workmail] / [target.workmail]: kind workmail)."""

    organization_id: str | None
    region: str | None
    endpoint: str | None
    access_key_id: str | None
    ca_file: Path | None
    migration_account: str | None

    @property
    def enabled(self) -> bool:
        """Whether coexist administers the organisation (creates users, grants access)."""
        return bool(self.organization_id)


@dataclass(frozen=True, repr=False)
class TenantSettings(_Section):
    """One side's settings: its kind, a Microsoft 365 tenant's connection settings
    (`endpoint()` turns them into a TenantEndpoint) and each other kind's table."""

    side: str
    kind: str
    tenant_id: str | None
    client_id: str | None
    client_secret_env: str
    certificate_file: Path | None
    authority: str
    graph_url: str
    exo_url: str | None
    ca_file: Path | None
    sandbox_connection: Path | None
    imap: ImapSettings
    ews: EwsSettings
    workmail: WorkMailSettings
    # Resolved from the environment at load time; never shown, never written.
    client_secret: str | None = field(default=None, metadata={"secret": True})
    file: Path = field(default=Path(PROJECT_FILE), metadata={"hidden": True})

    def endpoint(self) -> TenantEndpoint:
        """How to reach this tenant, with files checked and the credential present."""
        if self.kind != "m365":
            raise ConfigError(
                f"the {self.side} is an {self.kind} endpoint, not a Microsoft 365 tenant",
                file=str(self.file),
                key=f"{self.side}.kind",
            )
        if self.sandbox_connection is not None:
            return self._sandbox_endpoint(self.sandbox_connection)
        if self.certificate_file is None and not self.client_secret:
            raise ConfigError(
                f"no credential for the {self.side} tenant: neither certificate_file nor the "
                f"environment variable {self.client_secret_env} is set",
                file=str(self.file),
                key=f"{self.side}.certificate_file",
                next_step=f"export {self.client_secret_env}=<the app's client secret>, "
                f"or set certificate_file in [{self.side}]",
            )
        if not (self.tenant_id and self.client_id):  # load_project requires both; guard anyway
            raise ConfigError(
                "tenant_id and client_id are required unless sandbox_connection is set",
                file=str(self.file),
                key=f"{self.side}.{'client_id' if self.tenant_id else 'tenant_id'}",
            )
        return TenantEndpoint(
            tenant_id=self.tenant_id,
            client_id=self.client_id,
            graph_url=self.graph_url,
            exo_url=self.exo_url,
            authority=self.authority,
            ca_file=self._existing("ca_file", self.ca_file),
            certificate_file=self._existing("certificate_file", self.certificate_file),
            client_secret=None if self.certificate_file else self.client_secret,
        )

    def _existing(self, name: str, path: Path | None) -> str | None:
        if path is None:
            return None
        if not path.is_file():
            raise ConfigError(
                f"file not found: {path}", file=str(self.file), key=f"{self.side}.{name}"
            )
        return str(path)

    def _sandbox_endpoint(self, path: Path) -> TenantEndpoint:
        key = f"{self.side}.sandbox_connection"
        try:
            connection = json.loads(path.read_text())
            ep = TenantEndpoint.from_sandbox(connection, self.side)
        except FileNotFoundError:
            raise ConfigError(
                f"sandbox connection file not found: {path}",
                file=str(self.file),
                key=key,
                next_step=f"coexist sandbox serve --state {path.parent}",
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{path} is not a sandbox connection.json ({type(exc).__name__}: {exc})",
                file=str(self.file),
                key=key,
            ) from None
        # Paths inside connection.json are relative to that file when not absolute.
        base = path.parent
        ca = base / ep.ca_file if ep.ca_file else None
        cert = base / ep.certificate_file if ep.certificate_file else None
        return dataclasses.replace(
            ep,
            ca_file=str(ca) if ca else None,
            certificate_file=str(cert) if cert else None,
        )


@dataclass(frozen=True, repr=False)
class Domains(_Section):
    source_forwarding_domain: str | None
    destination_domain: str | None  # None only where the target is not m365: see Project


@dataclass(frozen=True, repr=False)
class Scope(_Section):
    group: str | None


@dataclass(frozen=True, repr=False)
class Groups(_Section):
    copy: tuple[str, ...]


@dataclass(frozen=True, repr=False)
class MailUsers(_Section):
    mode: str
    forward_matched_to_source: bool
    replace_contacts: bool


@dataclass(frozen=True, repr=False)
class Prestage(_Section):
    convert: bool
    license_sku: str | None
    usage_location: str | None
    older_than: timedelta


@dataclass(frozen=True, repr=False)
class Trial(_Section):
    days: int
    items: int


@dataclass(frozen=True, repr=False)
class Cutover(_Section):
    mode: str
    forward_contact_name: str
    forward_contact_ou: str | None
    rename_prefix: str


@dataclass(frozen=True, repr=False)
class Migration(_Section):
    mover: str
    folder_rules: list[str]
    include_folders: list[str]
    exclude_folders: list[str]
    max_item_mb: int
    encrypted: str
    deletions: str
    reconcile_tolerance: int


@dataclass(frozen=True, repr=False)
class Engine(_Section):
    concurrency_per_tenant: int
    directory_write_budget: int
    max_attempts: int
    retry_max_wait_s: int
    look_again_s: int
    wait_in_command_s: int
    waiting_max_s: int
    outlook_time_scale: int
    executor: str


@dataclass(frozen=True, repr=False)
class Verify(_Section):
    service_mailbox: str | None


@dataclass(frozen=True, repr=False)
class Mail(_Section):
    transport: str
    sender: str
    graph_side: str
    operators: list[str]
    status: str
    templates: Path | None


@dataclass(frozen=True, repr=False)
class CredentialLink(_Section):
    expiry: timedelta
    attempts: int
    operator: str
    url: str
    host: str
    port: int
    cert_file: Path | None
    key_file: Path | None
    templates: Path | None
    requests_per_minute: int


@dataclass(frozen=True, repr=False)
class Schedule(_Section):
    windows: list[str]
    timezone: str


@dataclass(frozen=True, repr=False)
class Dns(_Section):
    resolver: str | None
    domains: list[str]
    expect_mx: str | None
    expect_autodiscover: str | None
    expect_spf_include: str | None


# Kind tables first: `_build` puts each into its side's section (TenantSettings.imap).
SECTION_TYPES: dict[str, type[_Section]] = {
    "source.imap": ImapSettings,
    "target.imap": ImapSettings,
    "source.ews": EwsSettings,
    "target.ews": EwsSettings,
    "source.workmail": WorkMailSettings,
    "target.workmail": WorkMailSettings,
    "project": ProjectSection,
    "source": TenantSettings,
    "target": TenantSettings,
    "domains": Domains,
    "scope": Scope,
    "groups": Groups,
    "mail_users": MailUsers,
    "prestage": Prestage,
    "trial": Trial,
    "cutover": Cutover,
    "migration": Migration,
    "engine": Engine,
    "verify": Verify,
    "dns": Dns,
    "mail": Mail,
    "credential_link": CredentialLink,
    "schedule": Schedule,
}


@dataclass(frozen=True, repr=False)
class Project:
    """A loaded, validated project. Secrets are held but never shown."""

    directory: Path
    file: Path
    project: ProjectSection
    source: TenantSettings
    target: TenantSettings
    domains: Domains
    scope: Scope
    groups: Groups
    mail_users: MailUsers
    prestage: Prestage
    trial: Trial
    cutover: Cutover
    migration: Migration
    engine: Engine
    verify: Verify
    dns: Dns
    mail: Mail
    credential_link: CredentialLink
    schedule: Schedule

    @property
    def destination_domain(self) -> str:
        """[domains] destination_domain: loading requires it where the target is Microsoft
        365, whose steps read it; a project whose target is of another kind may leave it
        out, and a step that would read it anyway gets this ConfigError."""
        value = self.domains.destination_domain
        if not value:
            raise _missing(
                "domains.destination_domain", self.file, f' (the target is "{self.target.kind}")'
            )
        return value

    @property
    def journal_url(self) -> str:
        """SQLAlchemy URL of the journal; SQLite paths are relative to the project directory."""
        url = self.project.journal
        if not url:
            return f"sqlite:///{(self.directory / JOURNAL_FILE).resolve()}"
        if url.startswith("sqlite:///"):
            path = Path(url.removeprefix("sqlite:///"))
            if not path.is_absolute() and str(path) != ":memory:":
                return f"sqlite:///{(self.directory / path).resolve()}"
        return url

    def tenant(self, side: str) -> TenantSettings:
        if side not in TENANT_SIDES:
            raise ValueError(f"tenant side must be 'source' or 'target', got {side!r}")
        tenant: TenantSettings = getattr(self, side)
        return tenant

    def endpoint(self, side: str) -> TenantEndpoint:
        return self.tenant(side).endpoint()

    def value(self, key: str) -> Any:
        """The typed value of a dotted key, e.g. `project.value("engine.max_attempts")`."""
        if key not in BY_KEY:
            raise KeyError(key)
        value: Any = self
        for part in key.split("."):  # "source.imap.host": a kind's table is in its side's
            value = getattr(value, part)
        return value

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "directory": str(self.directory),
            "file": str(self.file),
            "journal_url": _mask_url(self.journal_url),
        }
        for name in SECTIONS:
            if "." not in name:  # a kind's table is inside its side's
                out[name] = getattr(self, name).to_dict()
        return out

    def __repr__(self) -> str:
        return f"Project(file={str(self.file)!r}, settings={self.to_dict()!r})"


# -- writing --------------------------------------------------------------------------
def _toml_string(text: str) -> str:
    """A TOML basic string; escapes what TOML requires (quote, backslash, controls, DEL)."""
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    """One value as TOML source text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, timedelta):
        return _toml_string(format_duration(value))
    if isinstance(value, Path):
        return _toml_string(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return _toml_string(value)
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _help_lines(s: Setting) -> list[str]:
    notes = []
    if s.required:
        where = s.required_where
        notes.append(f"required where [{where[0]}] kind = {where[1]}" if where else "required")
    if s.choices:
        notes.append("one of: " + " | ".join(s.choices))
    if s.env:
        notes.append(f"env: {s.env}")
    lines = _wrap(s.help)
    if notes:
        lines += _wrap("(" + "; ".join(notes) + ")")
    return lines


def _wrap(text: str) -> list[str]:
    """Comment lines of at most ~88 columns; URLs and option names are never split."""
    return textwrap.wrap(text, width=86, break_long_words=False, break_on_hyphens=False)


_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("coexist", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,  # TOML, not HTML; values are escaped by toml_value
)


def _unknown_key_error(key: str, file: Path) -> ConfigError:
    near = difflib.get_close_matches(key, list(BY_KEY), n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return ConfigError(f"unknown setting {key!r}{hint}", file=str(file), key=key)


# The mover of a project that names none, by (source kind, target kind): the pair's own
# (`migrate.passes.MOVER_KINDS` says which movers serve which pair). A pair not listed keeps
# the setting's default, which `passes.mover_for` refuses naming the kinds.
DEFAULT_MOVERS: dict[tuple[str, str], str] = {
    ("m365", "m365"): "graph-import-export",
    ("imap", "imap"): "imap-sync",
    ("imap", "m365"): "imap-graph",
    **{(s, t): "ews-sync" for s in ("exchange", "workmail") for t in ("exchange", "workmail")},
    ("m365", "exchange"): "graph-ews",
    ("m365", "workmail"): "graph-ews",
    ("exchange", "m365"): "ews-graph",
    ("workmail", "m365"): "ews-graph",
}


def default_mover(source_kind: str, target_kind: str) -> str:
    """The mover a project of these kinds gets when it names none."""
    fallback = str(BY_KEY["migration.mover"].default)
    return DEFAULT_MOVERS.get((source_kind, target_kind), fallback)


def render_template(values: Mapping[str, Any] | None = None) -> str:
    """The documented project.toml: every setting, with `values` (dotted keys) over defaults."""
    values = dict(values or {})
    for key in values:
        if key not in BY_KEY:
            raise _unknown_key_error(key, Path(PROJECT_FILE))
    kinds = (values.get("source.kind", "m365"), values.get("target.kind", "m365"))
    values.setdefault("migration.mover", default_mover(*kinds))
    sections = [
        {
            "name": name,
            "help": _wrap(SECTIONS[name]),
            "settings": [
                {
                    "name": s.name,
                    "help": _help_lines(s),
                    "value": toml_value(values.get(s.key, s.default)),
                }
                for s in section_settings(name)
            ],
        }
        for name in SECTIONS
    ]
    return _TEMPLATES.get_template("project.toml.j2").render(sections=sections)


def write_project(
    directory: Path, *, overrides: Mapping[str, Any] | None = None, force: bool = False
) -> Path:
    """`coexist init`: write DIR/project.toml with every setting documented; return its path.

    `overrides` (dotted keys) are checked for type and choices, not for completeness:
    a fresh project may leave required values for the operator to fill in.
    """
    directory = Path(directory)
    path = directory / PROJECT_FILE
    if path.exists() and not force:
        raise ConfigError(
            "already exists; init does not overwrite a project",
            file=str(path),
            next_step="edit it, or run init again with --force to replace it",
        )
    values: dict[str, Any] = {"project.name": directory.resolve().name}
    for key, value in (overrides or {}).items():
        if key not in BY_KEY:
            raise _unknown_key_error(key, path)
        raw = _plain(value)
        try:
            convert(BY_KEY[key], raw, directory)
        except _Invalid as exc:
            raise ConfigError(str(exc), file=str(path), key=key) from None
        values[key] = raw
    text = render_template(values)
    try:
        private_dir(directory)
        write_private(path, text)  # owner-only; a crash never leaves a half-written file
    except OSError as exc:
        raise write_failed(
            path,
            exc,
            next_step="choose a directory this user can write to, on a disk with free space",
        ) from exc
    return path


# -- loading --------------------------------------------------------------------------
# Keys that would put a secret in the file. Matched on the key name anywhere in the file.
_SECRET_KEY = re.compile(
    r"(?i)^(client_?secret|secret|.*password|passwd|pwd|.*token|api_?key|client_assertion"
    r"|private_key|secret_value)$"
)
# Keys that look like they switch TLS verification off (verify = false, insecure = true, ...).
_TLS_OFF_KEY = re.compile(r"(?i)(verify|insecure|ssl|tls|check_?cert|cert_?reqs)")


def _project_path(directory_or_file: Path) -> Path:
    path = Path(directory_or_file)
    if path.is_dir():
        path = path / PROJECT_FILE
    if not path.is_file():
        raise ConfigError(
            "project file not found",
            file=str(path),
            next_step=f"coexist init {path.parent}",
        )
    return path


def _parse_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text: {exc}", file=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11's TOMLDecodeError has no lineno attribute; the message ends with
        # "(at line L, column C)" (CPython Lib/tomllib/_parser.py, suffixed_err).
        found = re.search(r"at line (\d+), column (\d+)", str(exc))
        line, column = (int(found[1]), int(found[2])) if found else (None, None)
        key = _key_at_line(path.read_text(encoding="utf-8"), line) if line else None
        raise ConfigError(
            f"not valid TOML: {exc}",
            file=str(path),
            key=key,
            line=line,
            column=column,
            next_step=f"fix line {line} of {path.name}: a setting is written "
            'key = "text", key = 5, key = true or key = ["a", "b"]'
            if line
            else None,
        ) from None


_TOML_KEY_LINE = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")
_TOML_TABLE_LINE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]")


def _key_at_line(text: str, line: int) -> str | None:
    """The dotted key (`section.name`) written on `line`, so a syntax error names it.

    tomllib reports only line and column; the key is recovered from the text: the
    `name =` on that line under the nearest `[section]` header above it.
    """
    lines = text.splitlines()
    if not 1 <= line <= len(lines):
        return None
    key = _TOML_KEY_LINE.match(lines[line - 1])
    section = next(
        (m[1] for m in map(_TOML_TABLE_LINE.match, reversed(lines[: line - 1])) if m), None
    )
    if key is None:  # a broken table header names its table; anything else its section
        table = re.match(r"^\s*\[+\s*([A-Za-z0-9_.-]+)", lines[line - 1])
        return table[1] if table else section
    return f"{section}.{key[1]}" if section else key[1]


def _secret_message(section: str, key: str) -> str:
    if section in TENANT_SIDES:
        env = BY_KEY[f"{section}.client_secret_env"].default
        return (
            f"a secret may not be written in the project file: remove {key!r} and put the "
            f"value in the environment variable {env} (or the one named by [{section}] "
            "client_secret_env), or use certificate_file"
        )
    if section == "project":
        return (
            f"a secret may not be written in the project file: remove {key!r}; give the "
            "journal URL with its password in COEXIST_JOURNAL_URL, or use PGPASSWORD / ~/.pgpass"
        )
    return (
        f"a secret may not be written in the project file: remove {key!r}; secrets are "
        "read only from environment variables or certificate files"
    )


def _refuse_forbidden(doc: Mapping[str, Any], path: Path, trail: tuple[str, ...] = ()) -> None:
    """Secrets and TLS-off switches are refused wherever they appear, before anything else."""
    for name, value in doc.items():
        here = (*trail, name)
        dotted = ".".join(here)
        if isinstance(value, dict):
            _refuse_forbidden(value, path, here)
            continue
        if dotted in BY_KEY:
            continue
        if _SECRET_KEY.match(name):
            raise ConfigError(_secret_message(here[0], name), file=str(path), key=dotted)
        if _TLS_OFF_KEY.search(name):
            side = here[0] if here[0] in TENANT_SIDES else "source"
            raise ConfigError(
                f"TLS certificate verification cannot be turned off ({name!r}); to trust a "
                f'private or proxy CA, set ca_file = "path/to/ca.pem" in [{side}]',
                file=str(path),
                key=dotted,
            )


def _refuse_unknown(doc: Mapping[str, Any], path: Path) -> None:
    """Every table and key must be declared; suggest the nearest one."""
    for name, value in doc.items():
        if name not in SECTIONS:
            owners = [s.section for s in SETTINGS if s.name == name]
            if owners:
                hint = f"; it belongs in [{owners[0]}]"
            else:
                near = difflib.get_close_matches(name, list(SECTIONS), n=1)
                hint = f"; did you mean [{near[0]}]?" if near else ""
            raise ConfigError(f"unknown section or key {name!r}{hint}", file=str(path), key=name)
        _refuse_unknown_in(name, value, path)


def _refuse_unknown_in(name: str, value: Any, path: Path) -> None:
    """The keys of table `name` (and of the kind tables under it) must be declared."""
    if not isinstance(value, dict):
        raise ConfigError(
            f"[{name}] must be a table (a [{name}] header), not a value",
            file=str(path),
            key=name,
        )
    names = [s.name for s in section_settings(name)]
    for key in value:
        if key in names:
            continue
        if f"{name}.{key}" in SECTIONS:
            _refuse_unknown_in(f"{name}.{key}", value[key], path)
            continue
        near = difflib.get_close_matches(key, names, n=1)
        elsewhere = [s.section for s in SETTINGS if s.name == key]
        if near:
            hint = f"; did you mean {near[0]!r}?"
        elif elsewhere:
            hint = f"; it belongs in [{elsewhere[0]}]"
        else:
            hint = f"; known keys: {', '.join(names)}"
        raise ConfigError(
            f"unknown key {key!r} in [{name}]{hint}", file=str(path), key=f"{name}.{key}"
        )


def _table(doc: Mapping[str, Any], section: str) -> Mapping[str, Any]:
    """The TOML table of a (dotted) section name; empty when it is not written."""
    table: Any = doc
    for part in section.split("."):
        table = table.get(part, {}) if isinstance(table, Mapping) else {}
    return table if isinstance(table, Mapping) else {}


def _raw_values(
    doc: Mapping[str, Any], env: Mapping[str, str], path: Path
) -> dict[str, tuple[Any, str | None]]:
    """key -> (raw value, env var it came from or None); environment > file > default."""
    out: dict[str, tuple[Any, str | None]] = {}
    for s in SETTINGS:
        raw = _table(doc, s.section).get(s.name, s.default)
        origin = None
        # An empty variable counts as unset, as shells make "unset" hard to tell from "".
        if s.env and env.get(s.env, "") != "":
            origin = s.env
            try:
                raw = _from_env(s, env[s.env])
            except _Invalid as exc:
                raise _config_error(s, exc, path, origin) from None
        out[s.key] = (raw, origin)
    return out


def _config_error(s: Setting, exc: Exception, path: Path, origin: str | None) -> ConfigError:
    where = f" (from environment variable {origin})" if origin else ""
    return ConfigError(f"{exc}{where}", file=str(path), key=s.key, env=origin)


def _convert_all(
    raws: Mapping[str, tuple[Any, str | None]], directory: Path, path: Path
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for s in SETTINGS:
        raw, origin = raws[s.key]
        try:
            values[s.key] = convert(s, raw, directory)
        except _Invalid as exc:
            raise _config_error(s, exc, path, origin) from None
    return values


def _missing(key: str, path: Path, why: str = "") -> ConfigError:
    s = BY_KEY[key]
    return ConfigError(
        f"missing required value {s.name!r}{why}",
        file=str(path),
        key=key,
        next_step=f"set {s.name} in [{s.section}] of {path}",
    )


def _is_required(s: Setting, values: Mapping[str, Any]) -> bool:
    """Whether a project of these kinds must set `s` (`required_where`: one kind's)."""
    if not s.required:
        return False
    if s.required_where is None:
        return True
    side, kind = s.required_where
    return bool(values[f"{side}.kind"] == kind)


def _required_why(s: Setting) -> str:
    return f' ([{s.required_where[0]}] kind = "{s.required_where[1]}")' if s.required_where else ""


def _check_required(values: Mapping[str, Any], path: Path) -> None:
    for s in SETTINGS:
        if _is_required(s, values) and values[s.key] in (None, ""):
            raise _missing(s.key, path, _required_why(s))
    for side in TENANT_SIDES:
        if values[f"{side}.kind"] == "imap":
            if values[f"{side}.imap.host"] is None:
                raise _missing(f"{side}.imap.host", path, ' (kind = "imap")')
            continue
        if (kind := values[f"{side}.kind"]) in ("exchange", "workmail"):
            if values[f"{side}.ews.url"] is None and (
                kind != "workmail" or values[f"{side}.ews.region"] is None
            ):
                raise _missing(f"{side}.ews.url", path, f' (kind = "{kind}")')
            own = values[f"{side}.ews.access"] == "own"  # users sign in themselves
            if values[f"{side}.ews.admin"] is None and not own:
                raise _missing(f"{side}.ews.admin", path, f' (kind = "{kind}")')
            continue
        if values[f"{side}.sandbox_connection"] is not None:
            continue
        for name in ("tenant_id", "client_id"):
            if values[f"{side}.{name}"] is None:
                raise _missing(f"{side}.{name}", path, " (or set sandbox_connection)")


# Settings that sandbox_connection supplies; setting them too would leave it unclear which wins.
_FROM_SANDBOX = (
    "tenant_id",
    "client_id",
    "certificate_file",
    "ca_file",
    "authority",
    "graph_url",
    "exo_url",
)


def _contradiction(key: str, message: str, path: Path) -> ConfigError:
    return ConfigError(f"contradictory settings: {message}", file=str(path), key=key)


def _check_kind_tables(values: Mapping[str, Any], directory: Path, path: Path) -> None:
    """A side's settings of another kind than its own are a mistake, not a silent no-op:
    an imap side with a tenant_id, an m365 side with an [imap] table."""
    for side in TENANT_SIDES:
        kind = values[f"{side}.kind"]
        own = (
            section_settings(side)
            if kind == "m365"
            else section_settings(f"{side}.{KIND_TABLE[kind]}")
        )
        if kind == "workmail":  # its EWS table and its AWS admin API's
            own = own + section_settings(f"{side}.workmail")
        for s in SETTINGS:
            if not s.key.startswith(f"{side}.") or s in own or s.key == f"{side}.kind":
                continue
            if values[s.key] != convert(s, s.default, directory):
                table = f"[{s.section}]" if s.section != side else f"{s.name} in [{side}]"
                raise _contradiction(
                    s.key,
                    f'{table} is set while [{side}] kind = "{kind}"; remove it or change kind',
                    path,
                )


def _check_consistent(values: Mapping[str, Any], directory: Path, path: Path) -> None:
    _check_kind_tables(values, directory, path)
    if values["trial.days"] == 0 and values["trial.items"] == 0:
        raise _contradiction(
            "trial.days",
            "[trial] days = 0 and items = 0 would make a trial pass copy everything; "
            "set days (e.g. 10) or items (e.g. 10)",
            path,
        )
    for side in TENANT_SIDES:
        if values[f"{side}.sandbox_connection"] is None:
            continue
        for name in _FROM_SANDBOX:
            s = BY_KEY[f"{side}.{name}"]
            if values[s.key] != convert(s, s.default, directory):
                raise _contradiction(
                    s.key,
                    f"{name} is set while sandbox_connection supplies it; leave {name} at its "
                    "default or remove sandbox_connection",
                    path,
                )
    src, tgt = values["source.tenant_id"], values["target.tenant_id"]
    if src is not None and src == tgt:
        raise _contradiction("target.tenant_id", "source and target are the same tenant", path)
    forwarding = values["domains.source_forwarding_domain"]
    if forwarding is not None and forwarding == values["domains.destination_domain"]:
        raise _contradiction(
            "domains.source_forwarding_domain",
            "source_forwarding_domain equals destination_domain; forwarders to the source "
            "would loop back into the target",
            path,
        )
    if values["mail_users.forward_matched_to_source"] and values["mail_users.mode"] != "match":
        raise _contradiction(
            "mail_users.forward_matched_to_source",
            'forward_matched_to_source = true applies only when mode = "match"',
            path,
        )


def _build(
    values: Mapping[str, Any], directory: Path, path: Path, env: Mapping[str, str]
) -> Project:
    sections: dict[str, Any] = {}
    for name, cls in SECTION_TYPES.items():
        kwargs = {s.name: values[s.key] for s in section_settings(name)}
        if cls is TenantSettings:
            secret = env.get(kwargs["client_secret_env"]) or None
            kwargs.update(side=name, client_secret=secret, file=path)
            kwargs.update({t: sections.pop(f"{name}.{t}") for t in KIND_TABLES})
        if cls is ProjectSection and not kwargs["name"]:
            kwargs["name"] = directory.name
        sections[name] = cls(**kwargs)
    return Project(directory=directory, file=path, **sections)


def load_project(directory_or_file: Path, env: Mapping[str, str] | None = None) -> Project:
    """Read, validate and convert a project.toml (a directory or the file itself).

    `env` defaults to `os.environ`; it supplies overrides and the client secrets.
    """
    env = os.environ if env is None else env
    path = _project_path(directory_or_file).resolve()
    directory = path.parent
    doc = _parse_toml(path)
    _refuse_forbidden(doc, path)
    _refuse_unknown(doc, path)
    raws = _raw_values(doc, env, path)
    values = _convert_all(raws, directory, path)
    _mover_by_kinds(doc, raws, values)
    _check_required(values, path)
    _check_consistent(values, directory, path)
    _check_journal_secret(values, raws, path)
    return _build(values, directory, path, env)


def _mover_by_kinds(
    doc: Mapping[str, Any], raws: Mapping[str, tuple[Any, str | None]], values: dict[str, Any]
) -> None:
    """A project that names no mover (in the file or the environment) gets its kinds'."""
    s = BY_KEY["migration.mover"]
    if s.name in _table(doc, s.section) or raws[s.key][1] is not None:
        return
    values[s.key] = default_mover(values["source.kind"], values["target.kind"])


def _check_journal_secret(
    values: Mapping[str, Any], raws: Mapping[str, tuple[Any, str | None]], path: Path
) -> None:
    """A journal password is fine from COEXIST_JOURNAL_URL, never from the file."""
    journal = values["project.journal"]
    if journal and urlsplit(journal).password and raws["project.journal"][1] is None:
        raise ConfigError(
            "the journal URL contains a password, which may not be written in the project "
            "file; give the URL in COEXIST_JOURNAL_URL instead, or use PGPASSWORD / ~/.pgpass",
            file=str(path),
            key="project.journal",
        )
