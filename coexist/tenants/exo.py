"""Exchange Online admin REST adapter (InvokeCommand): the CmdletRunner for EXO.

The ExchangeOnlineManagement V3 module runs every cmdlet as
`POST https://outlook.office365.com/adminapi/beta/{tenantId}/InvokeCommand`
with `{"CmdletInput": {"CmdletName", "Parameters"}}`; pages follow
`@odata.nextLink` by POSTing the same body. This is undocumented by Microsoft
(seen in the module and in the CIPP / ExoHelper / ScubaGear clients:
FACTS.md), so every detail of it lives in this module alone.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from azure.core.exceptions import ClientAuthenticationError

from coexist.errors import (
    AuthenticationError,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RemoteError,
    TransientError,
)

from .auth import EXO_SCOPE, TenantEndpoint, credential
from .graph import TRANSIENT_STATUS, parse_retry_after
from .plan import WriteRecorder, is_write_cmdlet

# Anchor header the V3 module sends for app-only sessions (FACTS.md).
ANCHOR = "APP:SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}@"
MAX_PAGE = 1000


def build_body(cmdlet: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"CmdletInput": {"CmdletName": cmdlet, "Parameters": params}}


def hashtable(add: list[str] | None = None, remove: list[str] | None = None) -> dict[str, Any]:
    """A `@{Add=...; Remove=...}` multi-value update as the REST endpoint takes it."""
    table: dict[str, Any] = {"@odata.type": "#Exchange.GenericHashTable"}
    if add:
        table["Add"] = add
    if remove:
        table["Remove"] = remove
    return table


def parse_error(status: int, body: Any, headers: httpx.Headers, *, cmdlet: str) -> RemoteError:
    err = body.get("error", {}) if isinstance(body, dict) else {}
    code = err.get("code") if isinstance(err, dict) else None
    message = (err.get("message") if isinstance(err, dict) else None) or f"HTTP {status}"
    text = f"{cmdlet}: {message}"
    kw: dict[str, Any] = {"service": "exchange", "code": code, "status": status, "cmdlet": cmdlet}
    if status in TRANSIENT_STATUS:
        return TransientError(text, retry_after=parse_retry_after(headers.get("Retry-After")), **kw)
    if status == 401:
        return AuthenticationError(text, **kw)
    if status == 403:
        return PermissionDenied(
            text,
            next_step="grant Exchange.ManageAsApp and the Exchange Administrator role to the app",
            **kw,
        )
    low = message.lower()
    if "couldn't be found" in low or "could not be found" in low:
        return NotFound(text, **kw)
    if "already being used" in low or "already exists" in low:
        return Conflict(text, **kw)
    return InvalidRequest(text, **kw)


class ExoRunner:
    """Runs Exchange Online cmdlets over REST: `await run(name, **params) -> list[dict]`."""

    def __init__(
        self,
        ep: TenantEndpoint,
        *,
        label: str = "",
        page_size: int = MAX_PAGE,
        timeout: float = 900,
        concurrency: int = 8,
        plan: WriteRecorder | None = None,
    ) -> None:
        # 900 s: a cmdlet call times out after 15 minutes server-side (FACTS.md).
        self.ep = ep
        self.label = label or ep.tenant_id
        self.page_size = max(1, min(MAX_PAGE, page_size))
        self.plan = plan
        self.calls = 0
        self._cred = credential(ep)
        self._http = httpx.AsyncClient(verify=ep.verify, timeout=timeout)
        self._slots = asyncio.Semaphore(concurrency)

    async def close(self) -> None:
        await self._http.aclose()
        await self._cred.close()

    async def __aenter__(self) -> ExoRunner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _headers(self, cmdlet: str) -> dict[str, str]:
        try:
            tok = await self._cred.get_token(EXO_SCOPE)
        except ClientAuthenticationError as exc:
            raise AuthenticationError(
                f"could not get an Exchange token for tenant {self.ep.tenant_id}: {exc.message}",
                service="identity",
            ) from exc
        return {
            "Authorization": f"Bearer {tok.token}",
            "X-CmdletName": cmdlet,
            "X-ResponseFormat": "json",
            "X-AnchorMailbox": ANCHOR + self.ep.tenant_id,
            "Prefer": f"odata.maxpagesize={self.page_size}",
            "Accept": "application/json",
        }

    async def run(self, cmdlet: str, **params: Any) -> list[dict[str, Any]]:
        """Run one cmdlet, following pages; in plan mode a write is recorded, not sent."""
        if self.plan is not None and is_write_cmdlet(cmdlet):
            self.plan.record("exchange", self.label, cmdlet, params)
            return []
        async with self._slots:
            return await self._send(cmdlet, params)

    async def _send(self, cmdlet: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        body = build_body(cmdlet, params)
        url: str | None = self.ep.invoke_url
        out: list[dict[str, Any]] = []
        while url:
            self.calls += 1
            try:
                resp = await self._http.post(url, json=body, headers=await self._headers(cmdlet))
            except httpx.TransportError as exc:
                raise TransientError(
                    f"{cmdlet}: connection failed ({type(exc).__name__})", service="exchange"
                ) from exc
            try:
                data = resp.json()
            except ValueError:
                data = None
            if resp.status_code >= 400:
                raise parse_error(resp.status_code, data, resp.headers, cmdlet=cmdlet)
            out.extend((data or {}).get("value", []))
            url = (data or {}).get("@odata.nextLink")
        return out
