"""Exchange Web Services, through exchangelib: the only module that imports it.

An EWS side (`exchange`: on-premises or hosted Exchange 2010 SP1 ... 2019; `workmail`: Amazon
WorkMail) is one endpoint (`EwsEndpoint`: the EWS URL, the auth scheme, the pinned server
version, the access mode, an extra CA bundle) and one admin login that opens every mailbox:

- delegation (`access = "delegation"`): the admin has FullAccess on each mailbox
  (`Add-MailboxPermission -AccessRights FullAccess`); Exchange throttles the admin's one
  budget, so about 20 mailboxes are opened at once (the seed's advice; `EwsLimits`).
- impersonation (`access = "impersonation"`): the admin holds the ApplicationImpersonation
  role (`New-ManagementRoleAssignment -Role ApplicationImpersonation`); each request carries
  `ExchangeImpersonation` and is charged to the impersonated user's budget, so many
  mailboxes go at once.
- own (`access = "own"`): no admin; each user's own login and password (given by the end
  user through a credential link, `coexist.credlink`, or `credentials set --user`) opens
  only that user's own mailbox (`EwsServer(logins=...)`: a configuration and session pool
  per user). Each request is charged to the user's own budget, as under impersonation.

exchangelib is blocking: each call runs in a worker thread of the server's own pool, sized
to the bounds (`EwsServer`), never the loop's default pool. Its own retries are off
(`FailFast`): `ErrorServerBusy` surfaces with the `BackOffMilliseconds` Exchange sent and
is retried by coexist's injected `RetryPolicy`, which waits that long. Every exchangelib and
requests error is mapped to coexist's tree (`map_error`) naming the user, the mailbox, the
missing grant and the command to run next.

Version and auth are pinned (`Configuration(version=..., auth_type=...)`): exchangelib then
sends no probe (FACTS.md "exchangelib: pin version and auth_type to skip probes").

TLS is always verified. A private CA is given the way exchangelib documents it ("Proxies and
custom TLS validation": a `requests` adapter class set as `BaseProtocol.HTTP_ADAPTER_CLS`
whose `cert_verify` names the CA bundle per host): `_CaBundleAdapter`, which looks the host
up in the bundles registered by `trust()` and keeps requests' default for any other host.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import requests.adapters
from exchangelib import (
    BASIC,
    DELEGATE,
    IMPERSONATION,
    NTLM,
    Account,
    Configuration,
    Credentials,
    Version,
)
from exchangelib import errors as ews_errors
from exchangelib.protocol import BaseProtocol, CachingProtocol, FailFast, Protocol
from exchangelib.version import (
    EXCHANGE_2010_SP1,
    EXCHANGE_2010_SP2,
    EXCHANGE_2013,
    EXCHANGE_2013_SP1,
    EXCHANGE_2016,
    EXCHANGE_2019,
)

from coexist.errors import (
    AuthenticationError,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RemoteError,
    TransientError,
    Unreachable,
)
from coexist.retry import RetryPolicy
from coexist.tenants.base import connection_error
from coexist.tenants.ews_governor import EwsGovernor, budget_key

SERVICE = "ews"
T = TypeVar("T")

# exchangelib logs every request and response at DEBUG, headers included: the Authorization
# header of Basic auth is the password in base64. Its loggers never go below INFO here, so a
# run log at DEBUG cannot carry a secret.
for _name in ("exchangelib", "exchangelib.util", "exchangelib.protocol", "requests_ntlm"):
    logging.getLogger(_name).setLevel(logging.INFO)

Access = Literal["delegation", "impersonation", "own"]
Auth = Literal["ntlm", "basic"]

# RequestServerVersion a project may pin (types.xsd ExchangeVersionType; 2019 speaks
# Exchange2016's schema, exchangelib's VERSIONS table).
VERSIONS: dict[str, Any] = {
    "Exchange2010_SP1": EXCHANGE_2010_SP1,
    "Exchange2010_SP2": EXCHANGE_2010_SP2,
    "Exchange2013": EXCHANGE_2013,
    "Exchange2013_SP1": EXCHANGE_2013_SP1,
    "Exchange2016": EXCHANGE_2016,
    "Exchange2019": EXCHANGE_2019,
}
AUTH_TYPES: dict[str, str] = {"ntlm": NTLM, "basic": BASIC}
# Under "own" the user signs in to its own mailbox: exchangelib's DELEGATE is that plain access.
ACCESS_TYPES: dict[str, str] = {
    "delegation": DELEGATE,
    "impersonation": IMPERSONATION,
    "own": DELEGATE,
}
# The grant each access mode needs, and how an Exchange admin gives it (on-premises cmdlets;
# FACTS.md "On-prem Exchange cmdlets"). WorkMail's is its console's mailbox permissions.
GRANTS: dict[str, str] = {
    "delegation": "FullAccess",
    "impersonation": "ApplicationImpersonation",
    "own": "its own mailbox only",
}


@dataclass(frozen=True)
class EwsEndpoint:
    """Where one EWS side is and how it is spoken to (`[source.ews]`/`[target.ews]`)."""

    url: str  # https://host/EWS/Exchange.asmx
    auth: Auth = "ntlm"
    version: str = "Exchange2016"
    access: Access = "delegation"
    ca_file: str | None = None
    side: str = "source"
    kind: str = "exchange"  # exchange | workmail

    @property
    def origin(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class EwsLimits:
    """Mailboxes open at once on the server (delegation: one throttling budget, ~20;
    impersonation: per-user budgets, more), requests in flight per mailbox, and requests in
    flight on the server for all of them (0: mailboxes x per_mailbox).

    Under delegation every request is the admin's: Exchange's default throttling policy
    allows the admin EwsMaxConcurrency = 27 requests at once (FACTS.md "Other endpoints",
    *unverified* per version), so `for_access` keeps the server's total below it."""

    mailboxes: int = 20
    per_mailbox: int = 4
    calls: int = 0

    @property
    def in_flight(self) -> int:
        return self.calls or self.mailboxes * self.per_mailbox

    @classmethod
    def for_access(cls, access: str, mailboxes: int = 0) -> EwsLimits:
        """The bounds of an access mode: delegation 20 mailboxes, 20 requests at once
        (below the admin's EwsMaxConcurrency of 27); impersonation 50 mailboxes, each with
        its own budget, 64 requests at once from this process (*unverified*: a bound of
        ours on threads and connections, not a published server limit)."""
        if access == "delegation":
            return cls(mailboxes or 20, 4, calls=20)
        return cls(mailboxes or 50, 4, calls=64)


@dataclass(frozen=True)
class AdminLogin:
    """The admin (service account) that opens every mailbox; its password never shows."""

    login: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"AdminLogin(login={self.login!r}, password='[redacted]')"


# -- TLS: the documented adapter hook ----------------------------------------------------------

_CA_BUNDLES: dict[str, str] = {}  # "host:port" -> CA bundle (PEM)
_CA_LOCK = threading.Lock()


def _host_key(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{(parts.hostname or '').lower()}:{port}"


class _CaBundleAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter, verifying a host registered by `trust` against its CA bundle (and
    any other host against requests' default store). Verification is never turned off."""

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        bundle = _CA_BUNDLES.get(_host_key(url))
        super().cert_verify(conn, url, bundle if bundle else (verify or True), cert)


def trust(url: str, ca_file: str | None) -> None:
    """Verify `url`'s host against `ca_file` (None: the default store). Installs the adapter
    class once (exchangelib: "Proxies and custom TLS validation")."""
    with _CA_LOCK:
        if ca_file:
            _CA_BUNDLES[_host_key(url)] = ca_file
        else:
            _CA_BUNDLES.pop(_host_key(url), None)
        if BaseProtocol.HTTP_ADAPTER_CLS is not _CaBundleAdapter:
            BaseProtocol.HTTP_ADAPTER_CLS = _CaBundleAdapter


# -- configuration and accounts ---------------------------------------------------------------


def build_config(endpoint: EwsEndpoint, admin: AdminLogin, connections: int) -> Any:
    """exchangelib's Configuration: version and auth pinned (no probes), its own retries off
    (FailFast: coexist's policy retries), `connections` sessions to the server."""
    if endpoint.version not in VERSIONS:
        raise ValueError(f"unknown EWS version {endpoint.version!r}")
    return Configuration(
        service_endpoint=endpoint.url,
        credentials=Credentials(admin.login, admin.password),
        auth_type=AUTH_TYPES[endpoint.auth],
        version=Version(build=VERSIONS[endpoint.version]),
        retry_policy=FailFast(),
        max_connections=connections,
    )


class _SteadyPoolProtocol(Protocol):  # type: ignore[misc]
    """exchangelib's Protocol whose session pool never shrinks.

    exchangelib 5.6 answers ErrorServerBusy by shrinking the pool (services/common.py
    `_handle_backoff` -> `protocol.decrease_poolsize()`, before it even looks at the retry
    policy, so FailFast does not avoid it). `decrease_poolsize` (protocol.py) holds
    `self._session_pool_lock`, a non-reentrant `threading.Lock()`, and takes a session with
    `get_session()`; when the pool's queue is empty and the pool is below `max_connections`,
    `get_session` calls `increase_poolsize()`, which takes the same lock again: the thread
    blocks for ever holding it, and every thread needing a session after it (NOTES-ewsdemo.md
    finding 1, seen at 20 requests in flight on a drained budget; the same code on
    exchangelib's master, cf. ecederstrand/exchangelib#1373 "Waiting for session
    indefinitely").

    Shrinking is not needed here: the pool is sized to this server's own bound of requests
    in flight (`max_connections` = `EwsLimits.in_flight`, one session per worker thread), and
    the load a busy server asks to drop is dropped by the budget governor
    (`ews_governor.EwsGovernor`: pause and AIMD window per budget). So the pool keeps its
    size: `decrease_poolsize` is the one method overridden, and does nothing.

    Instances are made by `_steady_protocol`, outside exchangelib's protocol cache, so
    every `EwsServer` owns its pool (and closing one server's pool leaves another's alone).
    """

    def decrease_poolsize(self) -> None:
        return None


def _steady_protocol(config: Any) -> _SteadyPoolProtocol:
    """A `_SteadyPoolProtocol` of our own. `Protocol(config=...)` goes through exchangelib's
    `CachingProtocol` metaclass, which hands back whatever protocol it cached for the same
    endpoint and credentials (possibly a plain one); constructing through `__new__` and
    `__init__` makes exactly our class, with the pool `config.max_connections` bounds."""
    protocol = _SteadyPoolProtocol.__new__(_SteadyPoolProtocol)
    init: Any = _SteadyPoolProtocol.__init__  # exchangelib is untyped: Protocol.__init__
    init(protocol, config=config)
    return protocol


def build_account(config: Any, user: str, access: Access, protocol: Any = None) -> Any:
    """The mailbox `user` opened by the admin: delegation (DELEGATE: the admin's FullAccess)
    or impersonation (IMPERSONATION: ExchangeImpersonation header). No autodiscover.

    `protocol`: the server's own (`_SteadyPoolProtocol`) in place of the one `Account` takes
    from exchangelib's cache; `Account.protocol` is the attribute exchangelib itself sets
    (account.py: from `Protocol(config=...)`, or from autodiscover) and every service of the
    account reads, and no request has been sent when it is set here (`Account.version` is
    lazy since 5.5.1)."""
    account = Account(
        primary_smtp_address=user,
        config=config,
        autodiscover=False,
        access_type=ACCESS_TYPES[access],
    )
    if protocol is not None:
        account.protocol = protocol
    return account


# -- errors ------------------------------------------------------------------------------------

# Whose login a 401 refused, and how its password is given again, by access mode.
AUTH_FIXES: dict[str, tuple[str, str]] = {
    "delegation": (
        "admin",
        "the admin's password (coexist credentials set --master --side {side})",
    ),
    "impersonation": (
        "admin",
        "the admin's password (coexist credentials set --master --side {side})",
    ),
    "own": (
        "user's",
        "the user's own password (coexist credentials request --user {user} --resend, or "
        "coexist credentials set --user {user})",
    ),
}


def grant_command(access: Access, admin: str, user: str) -> str:
    """The Exchange Management Shell line that gives the admin access to `user`'s mailbox."""
    if access == "impersonation":
        return f"New-ManagementRoleAssignment -Role ApplicationImpersonation -User {admin}"
    return f"Add-MailboxPermission -Identity {user} -User {admin} -AccessRights FullAccess"


def map_error(
    exc: BaseException,
    endpoint: EwsEndpoint,
    *,
    admin: str,
    user: str | None = None,
    what: str = "",
    retry_command: str = "coexist retry",
) -> RemoteError:
    """A coexist error for an exchangelib/requests failure of one request (`what`) on a
    mailbox (`user`), with the grant and command that fix it where there is one."""
    side = f"[{endpoint.side}.ews]"
    mailbox = f"{user}'s mailbox" if user else "the EWS endpoint"
    head = f"EWS {endpoint.origin}: {what + ' of ' if what else ''}{mailbox}"
    code = type(exc).__name__ if isinstance(exc, ews_errors.EWSError) else None
    kw: dict[str, Any] = {"service": SERVICE, "code": code, "user": user}
    text = str(exc) or type(exc).__name__
    grant = GRANTS[endpoint.access]
    if isinstance(exc, ews_errors.ErrorServerBusy) and not text.startswith("Reraised from"):
        return TransientError(
            f"{head}: the server is busy (ErrorServerBusy), back off "
            f"{exc.back_off if exc.back_off is not None else '?'} s",
            retry_after=float(exc.back_off) if exc.back_off else None,
            **kw,
        )
    if isinstance(
        exc,
        ews_errors.ErrorServerBusy | ews_errors.ErrorTimeoutExpired | ews_errors.TransportError,
    ) and _is_connection(exc):
        return connection_error(
            exc,
            service=SERVICE,
            who="EWS",
            url=endpoint.url,
            setting="ews url",
            side=endpoint.side,
            what=what,
        )
    if isinstance(exc, ews_errors.UnauthorizedError):
        who, fix = AUTH_FIXES.get(endpoint.access, AUTH_FIXES["delegation"])
        return AuthenticationError(
            f"EWS {endpoint.origin} refused the {who} login {admin} ({endpoint.auth} auth): {text}",
            next_step=f"check {side} auth and "
            + fix.format(side=endpoint.side, user=user or "<user>")
            + f", then {retry_command}",
            status=401,
            **kw,
        )
    if isinstance(exc, ews_errors.ErrorImpersonateUserDenied | ews_errors.ErrorImpersonationDenied):
        return PermissionDenied(
            f"{head}: {admin} may not impersonate {user} ({code}): the admin lacks the "
            "ApplicationImpersonation role",
            next_step=f"{grant_command('impersonation', admin, user or '<user>')}, then "
            f"{retry_command}",
            grant="ApplicationImpersonation",
            **kw,
        )
    if isinstance(exc, ews_errors.ErrorAccessDenied):
        return PermissionDenied(
            f"{head}: access denied to {admin} ({code}): the admin lacks {grant} on it"
            + (" (WorkMail: mailbox permissions)" if endpoint.kind == "workmail" else ""),
            next_step=f"{grant_command(endpoint.access, admin, user or '<user>')}, then "
            f"{retry_command}",
            grant=grant,
            **kw,
        )
    if isinstance(exc, ews_errors.ErrorNonExistentMailbox | ews_errors.ErrorMailRecipientNotFound):
        return NotFound(
            f"{head}: no such mailbox on this server ({code})",
            next_step=f"check the user's address on the {endpoint.side}, then {retry_command}",
            **kw,
        )
    if isinstance(
        exc,
        ews_errors.ErrorItemNotFound
        | ews_errors.ErrorFolderNotFound
        | ews_errors.ErrorInvalidIdMalformed,
    ):
        return NotFound(f"{head}: {text} ({code})", **kw)
    if isinstance(exc, ews_errors.ErrorFolderExists):
        return Conflict(f"{head}: {text} ({code})", **kw)
    if isinstance(exc, ews_errors.ErrorInvalidSyncStateData):
        return RemoteError(f"{head}: the saved sync state is no longer valid ({code})", **kw)
    if isinstance(
        exc,
        ews_errors.ErrorInternalServerTransientError
        | ews_errors.ErrorMailboxStoreUnavailable
        | ews_errors.ErrorTooManyObjectsOpened
        | ews_errors.ErrorMailboxMoveInProgress
        | ews_errors.ErrorServerBusy
        | ews_errors.ErrorTimeoutExpired
        | ews_errors.RateLimitError,
    ):
        return TransientError(f"{head}: {text} ({code})", **kw)
    if isinstance(exc, ews_errors.ErrorIrresolvableConflict | ews_errors.ErrorInvalidChangeKey):
        return Conflict(f"{head}: the item changed meanwhile ({code})", **kw)
    if isinstance(exc, ews_errors.ResponseMessageError | ews_errors.ErrorSchemaValidation):
        return InvalidRequest(f"{head}: {text} ({code})", **kw)
    if isinstance(exc, ews_errors.MalformedResponseError | ews_errors.TransportError):
        return TransientError(f"{head}: {text}", **kw)
    if isinstance(exc, requests.exceptions.RequestException | OSError):
        return connection_error(
            exc,
            service=SERVICE,
            who="EWS",
            url=endpoint.url,
            setting="url",
            side=endpoint.side,
            what=what,
        )
    return RemoteError(f"{head}: {type(exc).__name__}: {text}", **kw)


def _is_connection(exc: BaseException) -> bool:
    """Whether an exchangelib error stands for a failed connection (exchangelib re-raises
    requests' connection and TLS errors as TransportError / ErrorTimeoutExpired /
    ErrorServerBusy("Reraised from ..."), the original as the context)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, requests.exceptions.RequestException | OSError):
            return True
        e = e.__cause__ or e.__context__
    return False


def _resendable(err: TransientError) -> bool:
    """Whether a failed write surely did nothing: the server said busy, or no connection."""
    return isinstance(err, Unreachable) or err.code in ("ErrorServerBusy", "RateLimitError")


SYNC_STATE_LOST = "ErrorInvalidSyncStateData"


def sync_state_lost(exc: RemoteError) -> bool:
    """Whether an error says a saved SyncFolderItems state is no longer valid."""
    return exc.code == SYNC_STATE_LOST


# -- the server and its mailboxes --------------------------------------------------------------


class EwsServer:
    """One EWS side: its endpoint, admin, bounds and worker threads; shared by every pass of
    a run. `mailbox(user)` opens a mailbox within the bound of mailboxes at once."""

    def __init__(
        self,
        endpoint: EwsEndpoint,
        admin: AdminLogin,
        limits: EwsLimits | None = None,
        retry: RetryPolicy | None = None,
        logins: Callable[[str], AdminLogin] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.admin = admin
        # access "own": each mailbox opened with its user's own login (by address), on a
        # configuration and session pool of its own; `admin` then only names the side.
        self.logins = logins
        self._own: dict[str, tuple[Any, _SteadyPoolProtocol, str]] = {}
        self.limits = limits or EwsLimits.for_access(endpoint.access)
        self.retry = retry or RetryPolicy()
        trust(endpoint.url, endpoint.ca_file)
        workers = self.limits.in_flight
        self.config = build_config(endpoint, admin, workers)
        # One session per worker thread, never shrunk (see `_SteadyPoolProtocol`).
        self.protocol = _steady_protocol(self.config)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=f"ews-{endpoint.side}")
        self._mailboxes = asyncio.Semaphore(self.limits.mailboxes)
        self._calls = asyncio.Semaphore(workers)
        # Requests in flight per throttling budget: the server's whole bound under delegation
        # (one budget), the per-mailbox bound under impersonation (a budget per mailbox).
        self.governor = EwsGovernor(
            concurrency=workers if endpoint.access == "delegation" else self.limits.per_mailbox
        )
        self.calls = 0
        self.writes = 0

    def __repr__(self) -> str:
        return f"EwsServer({self.endpoint.url!r}, admin={self.admin.login!r})"

    async def call(
        self, fn: Callable[[], T], *, user: str | None, what: str, write: bool = False
    ) -> T:
        """`fn()` in a worker thread (at most `limits.in_flight` at once), retried on
        transient errors by the policy (honouring ErrorServerBusy's back-off), its failures
        mapped (`map_error`).

        A write is retried only where Exchange cannot have made it: ErrorServerBusy (refused
        before it ran) or no connection at all (Unreachable). A connection lost mid-request
        may have created the item: it is not sent again here; the sync finds such a copy by
        its identity on the next pass (`sync.adopt_interrupted`)."""
        loop = asyncio.get_running_loop()
        budget = budget_key(self.endpoint.access, self.admin.login, user)

        async def once() -> T:
            # The budget's slot first (it may wait out a back-off), then a worker thread: a
            # paused budget holds no thread another budget (impersonation) could use.
            async with self.governor.slot(budget), self._calls:
                self.calls += 1
                try:
                    result = await loop.run_in_executor(self._pool, fn)
                except (
                    ews_errors.EWSError,
                    requests.exceptions.RequestException,
                    OSError,
                ) as exc:
                    err = map_error(
                        exc, self.endpoint, admin=self.login_of(user), user=user, what=what
                    )
                    if isinstance(err, TransientError) and err.code == "ErrorServerBusy":
                        # Every caller on this budget waits the stated back-off.
                        self.governor.throttled(budget, err.retry_after)
                    if write and isinstance(err, TransientError) and not _resendable(err):
                        err.retryable = False
                    raise err from exc
                self.governor.success(budget)
                return result

        return await self.retry.call(once)

    @asynccontextmanager
    async def mailbox(self, user: str) -> AsyncIterator[EwsMailbox]:
        """`user`'s mailbox, holding one of the server's mailbox slots while open."""
        async with self._mailboxes:
            loop = asyncio.get_running_loop()
            config, protocol = self._session_of(user)
            account = await loop.run_in_executor(
                self._pool, build_account, config, user, self.endpoint.access, protocol
            )
            yield EwsMailbox(self, user, account)

    def _session_of(self, user: str) -> tuple[Any, Any]:
        """The configuration and protocol `user`'s mailbox is opened on: the server's (the
        admin's), or under access "own" the user's own, made once per user."""
        if self.logins is None:
            return self.config, self.protocol
        held = self._own.get(user.lower())
        if held is None:
            login = self.logins(user)
            config = build_config(self.endpoint, login, self.limits.per_mailbox)
            held = self._own[user.lower()] = (config, _steady_protocol(config), login.login)
        return held[0], held[1]

    def login_of(self, user: str | None) -> str:
        """Who signs in for `user`'s requests: the admin, or (access "own") the user."""
        held = self._own.get(user.lower()) if user else None
        return held[2] if held is not None else self.admin.login

    async def close(self) -> None:
        """Close the sessions and the worker threads."""
        await asyncio.get_running_loop().run_in_executor(None, self._close_protocols)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _close_protocols(self) -> None:
        # This server's own pool, and the ones exchangelib cached per endpoint and
        # credentials when `Account` was built (unused, no sessions made in them).
        self.protocol.close()
        for _config, protocol, _login in self._own.values():
            protocol.close()
        CachingProtocol.clear_cache()


@dataclass
class EwsMailbox:
    """One opened mailbox: its account and the server its calls run on."""

    server: EwsServer
    user: str
    account: Any

    async def call(self, fn: Callable[[Any], T], what: str, write: bool = False) -> T:
        """`fn(account)` in a worker thread (see `EwsServer.call`)."""
        return await self.server.call(
            lambda: fn(self.account), user=self.user, what=what, write=write
        )

    async def probe(self) -> None:
        """Open the mailbox the way a pass does and read its Inbox (GetFolder, nothing
        changes): the access mode's grant, the login and the endpoint all show here."""
        await self.call(lambda account: account.inbox.id, "GetFolder inbox")


# -- what the server said about itself (preflight) ----------------------------------------------


@dataclass(frozen=True)
class ServerVersion:
    """The server's version as a response's ServerVersionInfo header said it."""

    build: str  # e.g. 15.1.2507.6
    setting: str | None  # the newest `version` setting (VERSIONS) that build speaks


def _build_key(build: Any) -> tuple[int, int, int, int]:
    return (build.major_version, build.minor_version, build.major_build, build.minor_build)


def reported_version(mailbox: EwsMailbox) -> ServerVersion | None:
    """The version the server reported in the ServerVersionInfo header of a response to this
    mailbox (exchangelib stores it on the account, `_update_api_version`); None before any
    answer (the account then holds the pin, a bare major.minor build). The header's Version
    attribute is not used: on-premises servers send strings like "V2017_07_11" there, which
    exchangelib treats as invalid; the build number says the version (Exchange Server build
    numbers: 15.2 is 2019, 15.1 2016, 15.0 2013, 14.x 2010)."""
    build = getattr(mailbox.account.version, "build", None)
    if build is None or build.major_build == 0:
        return None
    key = _build_key(build)
    fits = [name for name, b in VERSIONS.items() if _build_key(b) <= key]
    setting = max(fits, key=lambda n: _build_key(VERSIONS[n])) if fits else None
    return ServerVersion(str(build), setting)
