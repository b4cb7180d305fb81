"""What every Microsoft endpoint adapter shares: credential, HTTP client, governor,
plan recorder, counters, and the mapping of token and connection failures.

A failure to connect is mapped here, once, for every adapter and the token endpoint
(`connection_error`): the message names the endpoint, the cause (certificate not trusted,
TLS handshake, name not resolved, refused, no answer) and the setting that fixes it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

import httpx
from azure.core.credentials import AccessToken
from azure.core.exceptions import AzureError, ClientAuthenticationError

from coexist.errors import (
    AuthenticationError,
    RemoteError,
    TLSError,
    TransientError,
    Unreachable,
)
from coexist.retry import RetryPolicy

from .auth import TenantCredentials, TenantEndpoint, token_claims
from .plan import WriteRecorder
from .throttle import REFUSED_STATUS, Gate, WriteBudget

TRANSIENT_STATUS = {429, 500, 502, 503, 504}
log = logging.getLogger(__name__)

# Reads change nothing, so the adapters retry a transient failure (429/503, a dropped
# connection) of a read themselves, honouring Retry-After: bulk reads outside any step
# (discovery, preflight, indexes) must survive throttling too. Writes are retried only
# by the engine, which re-observes first.
READ_RETRY = RetryPolicy()
# Seconds to connect to (and to wait for an answer of) the token endpoint. azure-core's own
# default is 300 s per attempt (azure.core.configuration.ConnectionConfiguration), four
# attempts with its retries: a black-holed authority would hold a command for 20 minutes.
TOKEN_TIMEOUT_S = 30.0
# A token is reused while it has more than this left: azure-identity's own refresh point
# (GetTokenMixin: DEFAULT_REFRESH_OFFSET, 300 s before expires_on), so the credential would
# have answered the same token from its cache.
TOKEN_REUSE_S = 300.0


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (Graph sends whole seconds; the sandbox may send fractions)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


@dataclass(frozen=True)
class ConnectionCause:
    """Why a connection failed, as people read it."""

    kind: str  # untrusted | tls | timeout | dns | refused | dropped
    detail: str


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and everything it wraps: causes, contexts, and the wrapped errors of
    azure-core (`inner_exception`) and aiohttp (`os_error`, `certificate_error`)."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
        todo += [getattr(e, a, None) for a in ("inner_exception", "os_error", "certificate_error")]
    return [e for e in seen if isinstance(e, BaseException)]


def connection_cause(exc: BaseException) -> ConnectionCause:
    """Classify a transport failure of httpx or azure-core (aiohttp) by what it wraps."""
    chain = _chain(exc)

    def first(kind: type[BaseException] | tuple[type[BaseException], ...]) -> Any:
        return next((e for e in chain if isinstance(e, kind)), None)

    certs = [e for e in chain if isinstance(e, ssl.SSLCertVerificationError)]
    if certs:
        # aiohttp's ClientConnectorCertificateError is an ssl.CertificateError (the same
        # class) without the ssl attributes: the error it wraps has them.
        said = [getattr(e, "verify_message", None) for e in certs]
        return ConnectionCause("untrusted", str(next((m for m in said if m), certs[-1])))
    # Before SSLError: a handshake cut short by the timeout wraps an SSLWantReadError.
    if first((httpx.TimeoutException, TimeoutError)) is not None:
        return ConnectionCause("timeout", "no answer in time")
    tls = next(
        (
            e
            for e in chain
            if isinstance(e, ssl.SSLError)
            and not isinstance(e, ssl.SSLWantReadError | ssl.SSLWantWriteError)
        ),
        None,
    )
    if tls is not None:
        return ConnectionCause("tls", str(getattr(tls, "reason", None) or tls))
    if (dns := first(socket.gaierror)) is not None:
        return ConnectionCause("dns", str(dns.strerror or dns))
    if first(ConnectionRefusedError) is not None:
        return ConnectionCause("refused", "connection refused")
    with_errno = [e for e in chain if isinstance(e, OSError) and e.strerror]
    if with_errno:
        return ConnectionCause("dropped", str(with_errno[-1].strerror))
    text = str(exc).strip()
    return ConnectionCause("dropped", text or type(exc).__name__)


def connection_error(
    exc: BaseException,
    *,
    service: str,
    who: str,
    url: str,
    setting: str,
    side: str,
    what: str = "",
    timeout: float | None = None,
    connected: bool = False,
    retryable: bool = True,
) -> RemoteError:
    """The coexist error for a failed connection to `url`: TLSError (not retried; the run
    stops), Unreachable (retried, then the run stops) or TransientError (a connection dropped
    mid-request, retried); `service` as RemoteError names it (graph, exchange, identity),
    `who` as people read it. `connected`: the request may have reached the service (a read
    timeout), so it is not reported as unreachable. Messages name the endpoint's origin only,
    never a path or query (pre-authenticated URLs carry their credential in the query)."""
    cause = connection_cause(exc)
    parts = urlsplit(url)
    endpoint = f"{parts.scheme}://{parts.netloc}" if parts.netloc else url
    host = parts.hostname or endpoint
    where = f"[{side}] {setting}" if side in ("source", "target") else setting
    sandbox = f"with the sandbox, the connection.json that [{side}] sandbox_connection names"
    head = f"{who} at {endpoint}" + (f" ({what})" if what else "")
    again = "then run the command again"
    kw: dict[str, Any] = {"service": service, "endpoint": endpoint, "cause": cause.detail}
    if cause.kind == "untrusted":
        return TLSError(
            f"{head}: its TLS certificate is not trusted ({cause.detail}); coexist never "
            "turns certificate checks off",
            next_step=f"if a TLS-inspecting proxy or a private CA signs {host}'s certificate, "
            f"set ca_file in [{side}] to that CA's bundle (PEM); {sandbox} must be the one of "
            f"the sandbox serving now (its CA is new when its state is); {again}",
            **kw,
        )
    if cause.kind == "tls":
        return TLSError(
            f"{head}: the TLS handshake failed ({cause.detail})",
            next_step=f"check {where} ({sandbox}): it must be the https:// address and port "
            f"of the service; {again}",
            **kw,
        )
    if cause.kind == "timeout" and connected:
        return TransientError(
            f"{head}: no answer within {timeout or 0:g} s", retryable=retryable, **kw
        )
    if cause.kind == "dropped":
        return TransientError(
            f"{head}: the connection failed ({cause.detail})", retryable=retryable, **kw
        )
    text = {
        "timeout": f"no connection within {timeout or 0:g} s",
        "dns": f"the name {host} does not resolve ({cause.detail})",
        "refused": "connection refused",
    }[cause.kind]
    fix = {
        "timeout": f"check {where} and the network path to {host} (firewall, proxy: HTTPS_PROXY)",
        "dns": f"check {where} ({sandbox}), and this machine's DNS and proxy (HTTPS_PROXY)",
        "refused": f"check {where} (host and port) and that the service is up; {sandbox}: is "
        "`coexist sandbox serve` running, on the port that file names?",
    }[cause.kind]
    return Unreachable(f"{head}: {text}", next_step=f"{fix}; {again}", retryable=retryable, **kw)


class Adapter:
    """Base of the per-system adapters (Graph, Exchange admin REST)."""

    scope: ClassVar[str]
    service: ClassVar[str]  # how error messages name the system
    url_setting: ClassVar[str]  # the project setting that holds this system's URL

    def __init__(
        self,
        ep: TenantEndpoint,
        *,
        label: str = "",
        timeout: float = 60.0,
        concurrency: int = 8,
        plan: WriteRecorder | None = None,
        read_retry: RetryPolicy = READ_RETRY,
        write_budget: WriteBudget | None = None,
        credentials: TenantCredentials | None = None,
    ) -> None:
        """`write_budget`: the tenant's directory-write budget; pass the same one to the
        Graph and the Exchange adapter of a tenant (Microsoft counts per app + tenant).
        `credentials`: the command's, closed by whoever made them (one credential per tenant
        for all its adapters); without, the adapter builds and closes its own."""
        self.ep = ep
        self.label = label or ep.tenant_id
        self.plan = plan
        self.read_retry = read_retry
        self.calls = 0  # requests sent, refused attempts included
        self.writes = 0  # writes the service accepted
        self._own_credentials = credentials is None
        self._credentials = credentials if credentials is not None else TenantCredentials()
        self._cred = self._credentials.get(ep, timeout=min(timeout, TOKEN_TIMEOUT_S))
        self.timeout = timeout
        # One TLS context for every HTTP client of the adapter: httpx builds a new one (and
        # loads the CA bundle) per client otherwise, a few ms of CPU each.
        self._tls = httpx.create_ssl_context(verify=ep.verify)
        # The current token, fetched by one caller at a time: azure-identity's async
        # credential does not serialize acquisitions, so the first requests of a pass, all
        # at once, each fetched a token of their own (hundreds with many mailboxes).
        self._token: AccessToken | None = None
        self._token_lock = asyncio.Lock()
        self._http = self._new_client()
        self._gate = Gate(concurrency)
        self.write_budget = write_budget or WriteBudget()

    def _new_client(self) -> httpx.AsyncClient:
        """An HTTP client for this system (TLS verification always on: `ep.verify` is True or
        a CA bundle, never False)."""
        return httpx.AsyncClient(verify=self._tls, timeout=self.timeout)

    @property
    def credential(self) -> Any:
        """The azure-identity credential this adapter gets its tokens from."""
        return self._cred

    async def close(self) -> None:
        await self._http.aclose()
        if self._own_credentials:
            await self._credentials.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def throttled(self) -> int:
        """Answers that refused a directory request (429/503/5xx: each paused and narrowed
        the tenant's Gate)."""
        return self._gate.throttled

    @asynccontextmanager
    async def paced_writes(self, cost: int) -> AsyncIterator[None]:
        """Send `cost` directory writes (0: a read, not paced) within the write budget; a
        refusal (429/503) re-aligns the budget to the service's before it is raised."""
        async with self.write_budget.spend(cost):
            try:
                yield
            except TransientError as exc:
                if cost > 0 and exc.status in REFUSED_STATUS:
                    self.write_budget.refused(cost)
                raise

    def _who(self, system: str | None = None) -> str:
        """How messages name this adapter's system: "the target tenant's Graph"."""
        system = system or self.service
        return (
            f"the {self.label} tenant's {system}" if self.label in ("source", "target") else system
        )

    def connection_failed(
        self, exc: BaseException, *, what: str, url: str, connected: bool = False
    ) -> RemoteError:
        """A failed connection to this system, mapped (see `connection_error`)."""
        error = connection_error(
            exc,
            service=self.service.lower(),
            who=self._who(),
            url=url,
            setting=self.url_setting,
            side=self.label,
            what=what,
            timeout=self.timeout,
            connected=connected,
        )
        log.debug("%s", error.message, exc_info=exc)
        return error

    async def token(self) -> str:
        tok = self._token
        if tok is not None and tok.expires_on - time.time() > TOKEN_REUSE_S:
            return str(tok.token)
        async with self._token_lock:
            tok = self._token
            if tok is None or tok.expires_on - time.time() <= TOKEN_REUSE_S:
                tok = self._token = await self._fetch_token()
        return str(tok.token)

    async def _fetch_token(self) -> AccessToken:
        try:
            tok: AccessToken = await self._cred.get_token(self.scope)
        except ClientAuthenticationError as exc:
            raise AuthenticationError(
                f"could not get a {self.service} token for tenant {self.ep.tenant_id}: "
                f"{exc.message}",
                service="identity",
                next_step="check the client id, secret or certificate, then `coexist preflight`",
            ) from exc
        except AzureError as exc:
            # ServiceRequestError / ServiceResponseError: the token endpoint was not reached
            # or did not answer. azure-identity has retried already (its RetryPolicy), so the
            # error is not retried again here.
            raise connection_error(
                exc,
                service="identity",
                who=self._who("Entra ID token endpoint"),
                url=self.ep.authority,
                setting="authority",
                side=self.label,
                timeout=TOKEN_TIMEOUT_S,
                retryable=False,
            ) from exc
        return tok

    async def granted(self) -> dict[str, Any]:
        """The roles (`roles`) and directory role ids (`wids`) in this app's token."""
        return token_claims(await self.token())
