"""What executors get: the project, the journal, and both sides' clients (opened per kind)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from coexist.errors import CoexistError, ConfigError, InputError
from coexist.provisioning.exchange import CmdletRunner
from coexist.retry import RetryPolicy
from coexist.tenants.auth import TenantCredentials, TenantEndpoint
from coexist.tenants.base import READ_RETRY
from coexist.tenants.ews import AdminLogin, EwsEndpoint, EwsLimits, EwsServer
from coexist.tenants.exo import ExoRunner
from coexist.tenants.graph import GraphAdapter
from coexist.tenants.imap import (
    ConnectionLimits,
    Credentials,
    ImapConnections,
    ImapEndpoint,
    MasterPassword,
    OAuth2Refreshed,
    OAuth2Token,
    Password,
    Security,
)
from coexist.tenants.mailbox_governor import MailboxLimits
from coexist.tenants.oauth import CLIENT_CREDENTIALS, OAuthApp, TokenSource
from coexist.tenants.plan import WriteRecorder
from coexist.tenants.psrp import PsrpEndpoint, PsrpLogin, PsrpRunner
from coexist.tenants.throttle import WriteBudget, WriteLimits
from coexist.tenants.workmail import WorkMailAdmin, WorkMailEndpoint, secret_from
from coexist.vault import MASTER_ENTRY, OAUTH_APP_ENTRY, WORKMAIL_ENTRY, Vault

# What each endpoint kind offers a phase (DESIGN.md "Endpoint kinds"): a directory (who
# exists; recipients created and forwarded), Exchange cmdlets, a mailbox store (folders and
# items). An IMAP server is a store only: its users come from a batch file, and its cutover
# is an MX change, not a forward.
DIRECTORY, CMDLETS, STORE = "directory", "cmdlets", "store"
KIND_CAPABILITIES: dict[str, frozenset[str]] = {
    "m365": frozenset({DIRECTORY, CMDLETS, STORE}),
    "imap": frozenset({STORE}),
    # EWS kinds bring their mailbox store; their directories (remote PowerShell, WorkMail's
    # API) are not built yet: users come from a batch file, cutover is the operator's.
    "exchange": frozenset({STORE}),
    "workmail": frozenset({STORE}),
}


def _exchange_extras(tenant: Any) -> frozenset[str]:
    """An Exchange organisation has cmdlets where its remote PowerShell endpoint is given."""
    return frozenset({CMDLETS}) if tenant.ews.powershell_url else frozenset()


# Capabilities a kind gains from its settings, over KIND_CAPABILITIES.
SETTINGS_CAPABILITIES: dict[str, Callable[[Any], frozenset[str]]] = {
    "exchange": _exchange_extras,
}


def side_capabilities(tenant: Any) -> frozenset[str]:
    """What a side (its `TenantSettings`) can do: its kind's, and what its settings add."""
    extra = SETTINGS_CAPABILITIES.get(tenant.kind)
    own = KIND_CAPABILITIES.get(tenant.kind, frozenset())
    return own | extra(tenant) if extra else own


EWS_KINDS = ("exchange", "workmail")
# What a pass leaves behind by the source's kind, said where the pass's outcome is shown
# (the pass detail, `coexist status`): an IMAP account holds mail only (MigrationWiz's and
# CodeTwo's IMAP migrations likewise move mail), so no contacts, calendars or tasks come
# from it, and an empty calendar in the target is no failure.
MAIL_ONLY = "mail only: contacts, calendars and tasks are not moved from an IMAP source"
SOURCE_KIND_MOVES: dict[str, str] = {"imap": MAIL_ONLY}
_BOTH = frozenset({DIRECTORY, CMDLETS})
# What each command asks of each side (a side not named: nothing).
COMMAND_NEEDS: dict[str, dict[str, frozenset[str]]] = {
    "discover": {"source": frozenset({DIRECTORY}), "target": frozenset({DIRECTORY})},
    "rediscover": {"source": frozenset({DIRECTORY}), "target": frozenset({DIRECTORY})},
    "groups": {"source": frozenset({DIRECTORY}), "target": _BOTH},
    "provision": {"source": frozenset({DIRECTORY}), "target": _BOTH},
    "preflight": {"source": frozenset({DIRECTORY}), "target": frozenset({DIRECTORY})},
    # Licensing target MailUsers (prestage.convert) is Microsoft 365's own step: it asks
    # the target's directory itself; a pass needs stores only (IMAP -> IMAP too).
    "prestage": {"source": frozenset({STORE}), "target": frozenset({STORE})},
    "cutover": {"source": _BOTH | {STORE}, "target": _BOTH | {STORE}},
    "rollback": {"source": _BOTH, "target": _BOTH},
    "verify-mailflow": {"source": frozenset({DIRECTORY}), "target": frozenset({DIRECTORY})},
    # Matching reads the target's directory; --create-missing also waits for the mailbox
    # through Exchange (Get-Recipient). The source's users are the journal's.
    "automatch": {"target": _BOTH},
}
# Where a command's needs depend on the source's kind: (command, source kind) -> needs, over
# COMMAND_NEEDS. An IMAP source has no forwarding to swap: its cutover is the operator's MX
# change (DNS, outside coexist), then the full data pass: stores only, on both sides.
SOURCE_KIND_NEEDS: dict[tuple[str, str], dict[str, frozenset[str]]] = {
    ("cutover", "imap"): {"source": frozenset({STORE}), "target": frozenset({STORE})},
    ("cutover", "exchange"): {"source": frozenset({STORE}), "target": frozenset({STORE})},
    ("cutover", "workmail"): {"source": frozenset({STORE}), "target": frozenset({STORE})},
    # A hosted Exchange source with remote PowerShell: rollback restores its forwards.
    ("rollback", "exchange"): {"source": frozenset({CMDLETS})},
    # ... and verify-mailflow reads its routes back (cutover/hosted.mail_route).
    ("verify-mailflow", "exchange"): {"source": frozenset({CMDLETS})},
}
# Why a kind lacks a capability, and what to do instead (for the error).
_INSTEAD = {
    ("imap", DIRECTORY): "its users come from a batch file: coexist batch import",
    ("imap", CMDLETS): "IMAP has no recipients or forwarding: its cutover is an MX change",
    ("exchange", DIRECTORY): "its users come from a batch file: coexist batch import",
    ("exchange", CMDLETS): "set [{side}.ews] powershell_url, its remote PowerShell endpoint",
    ("workmail", DIRECTORY): "its users come from a batch file: coexist batch import; with "
    "[target.workmail] organization_id set, prestage creates them in WorkMail",
    ("workmail", CMDLETS): "WorkMail has no Exchange cmdlets",
}
_SAID = {DIRECTORY: "a directory", CMDLETS: "Exchange cmdlets", STORE: "a mailbox store"}


def capability_missing(
    side: str, kind: str, capability: str, command: str | None, file: str = "project.toml"
) -> ConfigError:
    """The error for a command (or a step, `command` None) that needs what a side's kind
    cannot do."""
    instead = _INSTEAD.get((kind, capability), "").format(side=side)
    asker = f"`coexist {command}`" if command else "this step"
    return ConfigError(
        f"{asker} needs {_SAID.get(capability, capability)} on the {side}, and the {side} is of kind "
        f"{kind!r}, which has none" + (f" ({instead})" if instead else ""),
        file=file,
        key=f"{side}.kind",
        next_step=f"run a command this {side} kind supports, or set [{side}] kind",
    )


def command_needs(kinds: dict[str, str], command: str) -> dict[str, frozenset[str]]:
    """What `command` asks of each side, for a project of these kinds."""
    own = SOURCE_KIND_NEEDS.get((command, kinds.get("source", "m365")))
    # Microsoft 365 -> WorkMail/Exchange: no recipient swap either (it needs cmdlets on both
    # sides, `commands._swaps_recipients`), so cutover is the MX change and the data pass.
    if own is None and kinds.get("target") in EWS_KINDS:
        own = SOURCE_KIND_NEEDS.get((command, str(kinds.get("target"))))
    return own if own is not None else COMMAND_NEEDS.get(command, {})


def check_command(
    kinds: dict[str, str],
    command: str,
    file: str = "project.toml",
    capabilities: Mapping[str, frozenset[str]] | None = None,
) -> None:
    """Refuse a command that needs a capability a side lacks, before any connection
    (`capabilities` per side, from `side_capabilities`; by default its kind's)."""
    for side, needs in command_needs(kinds, command).items():
        kind = kinds.get(side, "m365")
        has = (capabilities or {}).get(side, KIND_CAPABILITIES.get(kind, frozenset()))
        for capability in sorted(needs - has):
            raise capability_missing(side, kind, capability, command, file)


@dataclass
class Meter:
    """Requests a side's store client sent, and how many of them wrote."""

    calls: int = 0
    writes: int = 0


@dataclass
class ImapServer:
    """An imap side's mailbox store client: its server's connections (bounded per server and
    per mailbox, shared by every user of the run), how its users sign in, and a meter.

    Each user's login and password come from the project's credential vault (`coexist batch
    import`, `coexist credentials set`), or, where `master_user` is set, the master user's
    password (vault entry MASTER_ENTRY) opens every mailbox (Dovecot `user*master`)."""

    label: str
    connections: ImapConnections
    auth: str  # login | plain | xoauth2 ([source.imap] auth)
    master_user: str | None
    directory: Path  # the project's, where its vault is
    meter: Meter = field(default_factory=Meter)
    env: Mapping[str, str] | None = None
    # [S.imap] include_virtual_folders: Gmail's All Mail, Important, Starred are moved too.
    include_virtual: bool = False
    # Where this run's OAuth access tokens come from: one source per side (client
    # credentials) or per user (refresh token), so every connection shares its tokens.
    tokens: dict[str, TokenSource] = field(default_factory=dict)

    def credentials(self, subject: str, item: Mapping[str, Any] | None) -> Credentials:
        """How `subject` (a journal user) signs in on this side; an InputError naming the
        user and `coexist credentials set` when the vault holds nothing that would do.

        `auth = "xoauth2"`: with the side's OAuth client in the vault (OAUTH_APP_ENTRY),
        tokens are obtained and refreshed by coexist (`tenants.oauth`): the client's own
        for every user (client_credentials, Microsoft 365), or from each user's refresh
        token, its vault secret (refresh_token, Google). Without one, the user's vault
        secret is an access token, used as it is until it expires."""
        vault = Vault.open(self.directory, env=self.env)
        cred = vault.get(subject, self.label)
        login = cred.login if cred else _default_login(self.label, subject, item)
        refreshed = (
            oauth_credentials(vault, self.label, subject, login, item, self.directory, self.tokens)
            if self.auth == "xoauth2"
            else None
        )
        if refreshed is not None:
            return refreshed
        if cred is not None and self.auth == "xoauth2":
            # The vault entry holds an OAuth 2.0 access token (Microsoft 365, Gmail), used
            # until it expires; the login failure then says how to give a new one.
            return OAuth2Token(login, cred.password)
        if cred is not None:
            return Password(login, cred.password, "plain" if self.auth == "plain" else "login")
        master = vault.get(MASTER_ENTRY, self.label) if self.master_user else None
        if master is not None and self.master_user:
            return MasterPassword(login, self.master_user, master.password)
        address = str((item or {}).get("source_address") or subject)
        giving = (
            f"--master --side {self.label}"
            if self.master_user
            else f"--user {address} --side {self.label}"
        )
        raise InputError(
            f"no {self.label} IMAP password for {address} in the credential vault"
            + (f" (nor one for master user {self.master_user})" if self.master_user else ""),
            user=address,
            next_step=f"coexist credentials set --project {self.directory} {giving}, then run "
            "this command again",
        )

    @property
    def calls(self) -> int:
        return self.meter.calls

    @property
    def writes(self) -> int:
        return self.meter.writes


def oauth_credentials(
    vault: Vault,
    side: str,
    subject: str,
    login: str,
    item: Mapping[str, Any] | None,
    directory: Path,
    cache: dict[str, TokenSource],
) -> OAuth2Refreshed | None:
    """How `subject` signs in on an xoauth2 side whose vault holds the side's OAuth client
    (OAUTH_APP_ENTRY): the client's own tokens (client_credentials, Microsoft 365), or
    tokens of the user's refresh token, its vault secret (refresh_token, Google); None
    without a client (or, for refresh_token, without the user's token). `cache` keeps the
    run's token sources: one per side (client credentials) or per user."""
    entry = vault.get(OAUTH_APP_ENTRY, side)
    if entry is None:
        return None
    app = OAuthApp.from_vault(entry.login, entry.password)
    address = str((item or {}).get("source_address") or subject)
    if app.grant == CLIENT_CREDENTIALS:
        key, refresh_token, who = f"*{side}*", None, f"the {side} OAuth client"
        again = f"coexist credentials set --project {directory} --oauth-app --side {side}"
    else:
        own = vault.get(subject, side)
        if own is None:
            return None
        key, refresh_token, who = subject, own.password, address
        again = (
            f"coexist credentials set --project {directory} --user {address} --side {side} "
            "(a new refresh token)"
        )
    held = cache.get(key)
    if held is None or held.app != app or held.refresh_token != refresh_token:
        then = f"{again}, then run this command again"
        held = cache[key] = TokenSource(app, who, refresh_token=refresh_token, next_step=then)
    return OAuth2Refreshed(login, held)


def _default_login(side: str, subject: str, item: Mapping[str, Any] | None) -> str:
    """A user's login where the vault names none: the batch file's source login; on the
    target its target login, else its target address, else the source login."""
    item = item or {}
    detail = item.get("detail") or {}
    source_login = str(
        (detail.get("source") or {}).get("login") or item.get("source_address") or subject
    )
    if side == "target":
        target = (
            (detail.get("target") or {}).get("login")
            if isinstance(detail.get("target"), dict)
            else None
        )
        return str(target or item.get("target_address") or source_login)
    return source_login


StoreClient = GraphAdapter | ImapServer | EwsServer


@dataclass
class Side:
    """One side (tenant or server) as the executors see it.

    `directory`, `cmdlets` and `store` are its capabilities: each raises a ConfigError
    naming the side's kind where that kind has none. `graph` and `exo` are the Microsoft 365
    adapters behind them (a phase that is m365-only may use them directly); an imap side has
    neither, and its store is an `ImapServer`."""

    label: str  # "source" | "target"
    endpoint: TenantEndpoint | None
    _graph: GraphAdapter | None
    _exo: ExoRunner | None
    kind: str = "m365"
    imap: ImapServer | None = None
    ews: EwsServer | None = None
    # An Exchange organisation's remote PowerShell (tenants/psrp.py), where configured.
    powershell: CmdletRunner | None = None
    # What this side can do (side_capabilities); None = its kind's.
    capabilities: frozenset[str] | None = None
    # Amazon WorkMail's admin API ([S.workmail] organization_id set): users and permissions.
    workmail: WorkMailAdmin | None = None
    workmail_missing: CoexistError | None = None  # why `workmail` could not be opened

    def has(self, capability: str) -> bool:
        if self.capabilities is not None:
            return capability in self.capabilities
        return capability in KIND_CAPABILITIES.get(self.kind, frozenset())

    def require(self, capability: str, command: str | None = None) -> None:
        """Raise the clear error if this side's kind lacks `capability` (for `command`)."""
        if not self.has(capability):
            raise capability_missing(self.label, self.kind, capability, command)

    @property
    def graph(self) -> GraphAdapter:
        """The Microsoft Graph adapter (m365 only: another kind has no directory)."""
        if self._graph is None:
            raise capability_missing(self.label, self.kind, DIRECTORY, None)
        return self._graph

    @property
    def exo(self) -> ExoRunner:
        """The Exchange Online cmdlet runner (m365 only)."""
        if self._exo is None:
            raise capability_missing(self.label, self.kind, CMDLETS, None)
        return self._exo

    @property
    def directory(self) -> GraphAdapter:
        """Who exists, and recipients made and forwarded: Microsoft Graph (m365)."""
        self.require(DIRECTORY)
        return self.graph

    @property
    def cmdlets(self) -> CmdletRunner:
        """Exchange's admin cmdlets: Exchange Online's (m365), or an Exchange organisation's
        remote PowerShell (exchange, where `[S.ews] powershell_url` is set)."""
        self.require(CMDLETS)
        if self._exo is not None:
            return self._exo
        if self.powershell is None:
            raise capability_missing(self.label, self.kind, CMDLETS, None)
        return self.powershell

    @property
    def store(self) -> StoreClient:
        """What this side's mailbox stores are opened over: the Graph adapter for m365
        (`migrate.stores.graph_io`/`graph_items`), the `ImapServer` for imap
        (`migrate.stores.imap.imap_store`)."""
        self.require(STORE)
        if self.ews is not None:
            return self.ews
        return self.imap if self.imap is not None else self.graph

    def _clients(self) -> list[Any]:
        """Every client of this side (each counts its calls and writes)."""
        found = (self._graph, self._exo, self.imap, self.ews, self.powershell, self.workmail)
        return [c for c in found if c is not None]

    @property
    def calls(self) -> int:
        return sum(c.calls for c in self._clients())

    @property
    def writes(self) -> int:
        return sum(c.writes for c in self._clients())


@dataclass
class Context:
    project: Any  # coexist.settings.Project
    journal: Any  # coexist.journal.Journal
    source: Side
    target: Side
    plan: WriteRecorder | None = None
    run_id: int | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def planning(self) -> bool:
        return self.plan is not None

    def side(self, label: str) -> Side:
        return self.source if label == "source" else self.target


@dataclass(frozen=True)
class SideOptions:
    """How a session's sides are opened (the engine's settings, plan mode)."""

    concurrency: int = 8
    plan: WriteRecorder | None = None
    read_retry: RetryPolicy = READ_RETRY
    mailbox_limits: MailboxLimits | None = None
    write_limits: WriteLimits | None = None
    env: Mapping[str, str] | None = None  # where the vault key is looked up (os.environ)
    # The command's credentials (one per tenant, `open_sides` makes them when None); they
    # belong to the event loop the sides are opened in.
    credentials: TenantCredentials | None = None


# Opens one side of a kind: (project, "source" | "target", options) -> the Side, its
# clients closed on exit. One per kind in SIDE_OPENERS.
SideOpener = Callable[[Any, str, SideOptions], AbstractAsyncContextManager[Side]]


@asynccontextmanager
async def open_m365_side(project: Any, label: str, opts: SideOptions) -> AsyncIterator[Side]:
    """A tenant's Graph and Exchange adapters, sharing one directory-write budget (per app
    + tenant); reads retried with `opts.read_retry`."""
    ep: TenantEndpoint = project.endpoint(label)
    budget = WriteBudget(opts.write_limits)
    # Graph and Exchange share the tenant's credential (one PEM parse, one token cache).
    credentials = opts.credentials if opts.credentials is not None else TenantCredentials()
    graph = GraphAdapter(
        ep,
        label=label,
        concurrency=opts.concurrency,
        plan=opts.plan,
        read_retry=opts.read_retry,
        mailbox_limits=opts.mailbox_limits,
        write_budget=budget,
        credentials=credentials,
    )
    exo = ExoRunner(
        ep,
        label=label,
        concurrency=opts.concurrency,
        plan=opts.plan,
        read_retry=opts.read_retry,
        write_budget=budget,
        credentials=credentials,
    )
    try:
        yield Side(label, ep, graph, exo)
    finally:
        try:
            await graph.close()
            await exo.close()
        finally:
            if opts.credentials is None:
                await credentials.aclose()


def imap_endpoint(settings: Any, side: str) -> ImapEndpoint:
    """The adapter's endpoint for a side's `[source.imap]`/`[target.imap]` settings
    (`settings.ImapSettings`): implicit-tls is the adapter's "tls" (RFC 8314)."""
    security: Security = "tls" if settings.security == "implicit-tls" else "starttls"
    return ImapEndpoint(
        str(settings.host), settings.effective_port, security, settings.ca_file, side=side
    )


def imap_limits(settings: Any) -> ConnectionLimits:
    """The side's connection bounds (connections_per_server / connections_per_mailbox)."""
    return ConnectionLimits(settings.connections_per_server, settings.connections_per_mailbox)


@asynccontextmanager
async def open_imap_side(project: Any, label: str, opts: SideOptions) -> AsyncIterator[Side]:
    """An IMAP server: no connection yet (each pass opens its user's, `imap_store`), only
    the bound every connection of the run shares. Nothing to close: each store logs out."""
    settings = project.tenant(label).imap
    server = ImapServer(
        label,
        ImapConnections(imap_endpoint(settings, label), imap_limits(settings)),
        settings.auth,
        settings.master_user or None,
        Path(project.directory),
        env=opts.env,
        include_virtual=settings.include_virtual_folders,
    )
    yield Side(label, None, None, None, kind="imap", imap=server)


def ews_endpoint(settings: Any, side: str, kind: str) -> EwsEndpoint:
    """The adapter's endpoint for a side's `[source.ews]`/`[target.ews]` settings."""
    return EwsEndpoint(
        str(settings.service_url()),
        settings.auth,
        settings.version,
        settings.access,
        str(settings.ca_file) if settings.ca_file else None,
        side=side,
        kind=kind,
    )


def ews_admin(project: Any, label: str, env: Mapping[str, str] | None = None) -> AdminLogin:
    """The side's EWS admin: `[S.ews] admin` (or the vault entry's login) and the password
    of the vault's MASTER_ENTRY (`coexist credentials set --master --side S`); an InputError
    naming that command when the vault holds none."""
    settings = project.tenant(label).ews
    vault = Vault.open(Path(project.directory), env=env)
    cred = vault.get(MASTER_ENTRY, label)
    if cred is None:
        raise InputError(
            f"no password for the {label} EWS admin {settings.admin} in the credential vault",
            next_step=f"coexist credentials set --project {project.directory} --master --side "
            f"{label}, then run this command again",
        )
    return AdminLogin(str(settings.admin or cred.login), cred.password)


def workmail_admin(project: Any, label: str, opts: SideOptions) -> WorkMailAdmin | None:
    """The side's WorkMail admin API client where `[S.workmail] organization_id` is set (None
    otherwise): region (or [S.ews] region), endpoint, CA bundle; the access key id from the
    settings or AWS_ACCESS_KEY_ID, its secret from the vault entry WORKMAIL_ENTRY or
    AWS_SECRET_ACCESS_KEY. A ConfigError/InputError naming what to set when one is missing."""
    tenant = project.tenant(label)
    wm = tenant.workmail
    if tenant.kind != "workmail" or not wm.enabled:
        return None
    env = os.environ if opts.env is None else opts.env
    region = wm.region or tenant.ews.region
    if not region:
        raise ConfigError(
            "the WorkMail organisation's region is not set",
            file=str(project.file),
            key=f"{label}.workmail.region",
            next_step=f'set region = "us-east-1" (its region) in [{label}.workmail]',
        )
    stored = None
    if Vault(Path(project.directory), None).exists():
        stored = Vault.open(Path(project.directory), env=opts.env).get(WORKMAIL_ENTRY, label)
    key_id = wm.access_key_id or (stored.login if stored else None) or env.get("AWS_ACCESS_KEY_ID")
    secret = secret_from(stored.password if stored else None, env)
    if not key_id or not secret:
        raise InputError(
            f"no AWS access key for the {label} WorkMail organisation "
            f"({'its secret' if key_id else 'access_key_id'} is missing)",
            next_step=f"set access_key_id in [{label}.workmail] and export AWS_SECRET_ACCESS_KEY "
            "(or store both in the credential vault), then run this command again",
        )
    ep = WorkMailEndpoint(
        region,
        str(wm.organization_id),
        key_id,
        wm.endpoint or None,
        str(wm.ca_file) if wm.ca_file else None,
        side=label,
    )
    return WorkMailAdmin(
        ep, secret, label=label, plan=opts.plan, read_retry=opts.read_retry,
        concurrency=opts.concurrency,
    )  # fmt: skip


@dataclass(frozen=True)
class EwsSignIn:
    """How an EWS side's mailboxes are opened: by its admin (delegation, impersonation), or
    each by its user's own login (`logins`, access "own"; `admin` then only names it)."""

    admin: AdminLogin
    logins: Callable[[str], AdminLogin] | None = None


def _admin_sign_in(project: Any, label: str, env: Mapping[str, str] | None) -> EwsSignIn:
    return EwsSignIn(ews_admin(project, label, env))


def _own_sign_in(project: Any, label: str, env: Mapping[str, str] | None) -> EwsSignIn:
    """Each user's own login and password from the vault (by the mailbox's address, the
    user's journal key for users from a batch file), read when its mailbox is first
    opened; an InputError naming the commands that give it when the vault has none."""
    directory = Path(project.directory)

    def login(address: str) -> AdminLogin:
        cred = None
        if Vault(directory, None).exists():
            cred = Vault.open(directory, env=env).get(address.strip().lower(), label)
        if cred is None:
            raise InputError(
                f"no {label} password for {address} in the credential vault ([{label}.ews] "
                'access = "own": each user signs in to its own mailbox)',
                user=address,
                next_step=f"coexist credentials request --project {directory} --users "
                f"{address} (a link for the user), or coexist credentials set --user {address} "
                f"--side {label}; then run this command again",
            )
        return AdminLogin(cred.login, cred.password)

    return EwsSignIn(AdminLogin(f"each user ({label})", ""), login)


# How an EWS side signs in, by `[S.ews] access`.
EWS_SIGN_INS: dict[str, Callable[[Any, str, Mapping[str, str] | None], EwsSignIn]] = {
    "delegation": _admin_sign_in,
    "impersonation": _admin_sign_in,
    "own": _own_sign_in,
}


@asynccontextmanager
async def open_ews_side(project: Any, label: str, opts: SideOptions) -> AsyncIterator[Side]:
    """An EWS server (Exchange or WorkMail): its admin and the bound of mailboxes open at
    once; each pass opens its user's mailbox (`migrate.stores.ews.ews_store`). A WorkMail
    side with `[S.workmail]` also gets its admin API client (users, permissions)."""
    tenant = project.tenant(label)
    settings = tenant.ews
    # EWS and remote PowerShell sign in as the admin (access "own": no admin, no shell).
    sign_in = EWS_SIGN_INS[settings.access](project, label, opts.env)
    server = EwsServer(
        ews_endpoint(settings, label, tenant.kind),
        sign_in.admin,
        EwsLimits.for_access(settings.access, settings.mailboxes_at_once),
        retry=opts.read_retry,
        logins=sign_in.logins,
    )
    shell = (
        powershell_runner(tenant, label, sign_in.admin, opts.plan) if not sign_in.logins else None
    )
    api: WorkMailAdmin | None = None
    missing: CoexistError | None = None
    try:
        api = workmail_admin(project, label, opts)
    except (ConfigError, InputError) as exc:
        # Said when a step needs the API (prestage's WorkMail steps), not by every command:
        # a cutover or verify-credentials run needs EWS only.
        missing = exc
    try:
        yield Side(
            label,
            None,
            None,
            None,
            kind=tenant.kind,
            ews=server,
            powershell=shell,
            capabilities=side_capabilities(tenant),
            workmail=api,
            workmail_missing=missing,
        )
    finally:
        try:
            await server.close()
        finally:
            if shell is not None:
                await shell.close()
            if api is not None:
                await api.close()


def powershell_runner(
    tenant: Any, label: str, admin: AdminLogin, plan: WriteRecorder | None
) -> PsrpRunner | None:
    """An Exchange organisation's remote PowerShell (`[S.ews] powershell_url`), signed in as
    its EWS admin; None where none is configured. The pool opens at the first cmdlet."""
    settings = tenant.ews
    if tenant.kind != "exchange" or not settings.powershell_url:
        return None
    url = urlsplit(str(settings.powershell_url))
    endpoint = PsrpEndpoint(
        server=str(url.hostname),
        port=url.port or 443,
        path=url.path.lstrip("/") or "PowerShell",
        auth=settings.powershell_auth,
        ca_file=str(settings.ca_file) if settings.ca_file else None,
        label=label,
    )
    return PsrpRunner(endpoint, PsrpLogin(admin.login, admin.password), plan=plan)


SIDE_OPENERS: dict[str, SideOpener] = {
    "m365": open_m365_side,
    "imap": open_imap_side,
    "exchange": open_ews_side,
    "workmail": open_ews_side,
}


@asynccontextmanager
async def open_sides(
    project: Any, opts: SideOptions | None = None
) -> AsyncIterator[tuple[Side, Side]]:
    """Both sides of a project, each opened by its kind's opener and closed on exit."""
    opts = opts or SideOptions()
    async with AsyncExitStack() as stack:
        if opts.credentials is None:
            # Both sides' adapters take their credentials from one set, closed after them.
            opts = replace(opts, credentials=await stack.enter_async_context(TenantCredentials()))
        source, target = [
            await stack.enter_async_context(
                SIDE_OPENERS[project.tenant(label).kind](project, label, opts)
            )
            for label in ("source", "target")
        ]
        yield source, target
