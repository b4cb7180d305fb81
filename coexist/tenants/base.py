"""What every Microsoft endpoint adapter shares: credential, HTTP client, governor,
plan recorder, counters, and the mapping of token failures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar, Self

import httpx
from azure.core.exceptions import ClientAuthenticationError

from coexist.errors import AuthenticationError, TransientError
from coexist.retry import RetryPolicy

from .auth import TenantEndpoint, credential, token_claims
from .plan import WriteRecorder
from .throttle import REFUSED_STATUS, Gate, WriteBudget

TRANSIENT_STATUS = {429, 500, 502, 503, 504}

# Reads change nothing, so the adapters retry a transient failure (429/503, a dropped
# connection) of a read themselves, honouring Retry-After: bulk reads outside any step
# (discovery, preflight, indexes) must survive throttling too. Writes are retried only
# by the engine, which re-observes first.
READ_RETRY = RetryPolicy()


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (Graph sends whole seconds; the sandbox may send fractions)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class Adapter:
    """Base of the per-system adapters (Graph, Exchange admin REST)."""

    scope: ClassVar[str]
    service: ClassVar[str]  # how error messages name the system

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
    ) -> None:
        """`write_budget`: the tenant's directory-write budget; pass the same one to the
        Graph and the Exchange adapter of a tenant (Microsoft counts per app + tenant)."""
        self.ep = ep
        self.label = label or ep.tenant_id
        self.plan = plan
        self.read_retry = read_retry
        self.calls = 0  # requests sent, refused attempts included
        self.writes = 0  # writes the service accepted
        self._cred = credential(ep)
        self.timeout = timeout
        self._http = self._new_client()
        self._gate = Gate(concurrency)
        self.write_budget = write_budget or WriteBudget()

    def _new_client(self) -> httpx.AsyncClient:
        """An HTTP client for this system (TLS verification always on: `ep.verify` is True or
        a CA bundle, never False)."""
        return httpx.AsyncClient(verify=self.ep.verify, timeout=self.timeout)

    async def close(self) -> None:
        await self._http.aclose()
        await self._cred.close()

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

    async def token(self) -> str:
        try:
            tok = await self._cred.get_token(self.scope)
        except ClientAuthenticationError as exc:
            raise AuthenticationError(
                f"could not get a {self.service} token for tenant {self.ep.tenant_id}: "
                f"{exc.message}",
                service="identity",
                next_step="check the client id, secret or certificate, then `coexist preflight`",
            ) from exc
        return str(tok.token)

    async def granted(self) -> dict[str, Any]:
        """The roles (`roles`) and directory role ids (`wids`) in this app's token."""
        return token_claims(await self.token())
