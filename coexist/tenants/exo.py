"""Exchange Online admin REST adapter (InvokeCommand): the CmdletRunner for EXO.

The ExchangeOnlineManagement V3 module runs every cmdlet as
`POST https://outlook.office365.com/adminapi/beta/{tenantId}/InvokeCommand`
with `{"CmdletInput": {"CmdletName", "Parameters"}}`; pages follow
`@odata.nextLink` by POSTing the same body. This is undocumented by Microsoft
(seen in the module and in the CIPP / ExoHelper / ScubaGear clients:
FACTS.md), so every detail of it lives in this module alone.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from coexist.errors import (
    AuthenticationError,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RemoteError,
    TransientError,
)

from .auth import EXO_SCOPE, TenantEndpoint
from .base import TRANSIENT_STATUS, Adapter, parse_retry_after
from .plan import before_write, is_write_cmdlet, redact_secrets

# Anchor header the V3 module sends for app-only sessions (FACTS.md).
ANCHOR = "APP:SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}@"
MAX_PAGE = 1000
log = logging.getLogger(__name__)


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


def error_text(body: Any) -> tuple[str | None, str | None, str]:
    """(code, exception type, message) from an InvokeCommand error body.

    The outer `message` is generic ("Error executing cmdlet", "Invalid Operation");
    the real text is in `details[].message` as "<ErrorId>|<exception type>|<text>"
    (live captures: graph2otel exoclient fixtures; Microsoft Q&A 2023 Remove-Mailbox).
    """
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return None, None, ""
    code = err.get("code")
    for d in err.get("details") or []:
        msg = str(d.get("message") or "") if isinstance(d, dict) else ""
        parts = msg.split("|", 2)
        if len(parts) == 3:
            return code, parts[1] or None, parts[2]
        if msg:
            return code, None, msg
    inner = (err.get("innererror") or {}).get("internalexception") or {}
    return code, inner.get("type"), str(inner.get("message") or err.get("message") or "")


def parse_error(status: int, body: Any, headers: httpx.Headers, *, cmdlet: str) -> RemoteError:
    code, etype, message = error_text(body)
    message = message or f"HTTP {status}"
    text = f"{cmdlet}: {message}"
    kw: dict[str, Any] = {
        "service": "exchange",
        "code": code,
        "status": status,
        "cmdlet": cmdlet,
        "exception_type": etype,
    }
    if status in TRANSIENT_STATUS:
        return TransientError(text, retry_after=parse_retry_after(headers.get("Retry-After")), **kw)
    if status == 401:
        return AuthenticationError(
            text, next_step="grant the app the Exchange.ManageAsApp application permission", **kw
        )
    if status == 403:
        # Exchange answers 403 with a body of NUL bytes both for a missing admin role and
        # for a cmdlet the role does not grant (graph2otel exoclient live captures).
        return PermissionDenied(
            f"{cmdlet}: access denied (the app needs the Exchange Administrator role, "
            "or the cmdlet is not available to it)",
            next_step="assign the Exchange Administrator role to the app's service principal",
            **kw,
        )
    low = message.lower()
    if status == 404 or (etype or "").endswith("ManagementObjectNotFoundException"):
        return NotFound(text, **kw)
    if "already being used" in low or (etype or "").endswith(
        ("ProxyAddressExistsException", "ADObjectAlreadyExistsException")
    ):
        return Conflict(text, **kw)
    return InvalidRequest(text, **kw)


class ExoRunner(Adapter):
    """Runs Exchange Online cmdlets over REST: `await run(name, **params) -> list[dict]`."""

    scope = EXO_SCOPE
    service = "Exchange"
    url_setting = "exo_url"

    def __init__(self, ep: TenantEndpoint, *, page_size: int = MAX_PAGE, **kwargs: Any) -> None:
        # 900 s: a cmdlet call times out after 15 minutes server-side (FACTS.md).
        kwargs.setdefault("timeout", 900.0)
        super().__init__(ep, **kwargs)
        self.page_size = max(1, min(MAX_PAGE, page_size))

    async def _headers(self, cmdlet: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {await self.token()}",
            "X-CmdletName": cmdlet,
            "X-ResponseFormat": "json",
            "X-AnchorMailbox": ANCHOR + self.ep.tenant_id,
            "Prefer": f"odata.maxpagesize={self.page_size}",
            "Accept": "application/json",
        }

    async def run(self, cmdlet: str, **params: Any) -> list[dict[str, Any]]:
        """Run one cmdlet, following pages; in plan mode a write is recorded, not sent."""
        log.debug("%s %s %s", self.label, cmdlet, redact_secrets(params))  # -v
        if is_write_cmdlet(cmdlet):
            if self.plan is not None:
                self.plan.record("exchange", self.label, cmdlet, params)
                return []
            before_write()
            async with self.paced_writes(1), self._gate.slot():
                return await self._send(cmdlet, params)

        async def read() -> list[dict[str, Any]]:
            # A read (Get-*) is retried here on a transient failure: see base.READ_RETRY.
            async with self._gate.slot():
                return await self._send(cmdlet, params)

        return await self.read_retry.call(read)

    async def _send(self, cmdlet: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        body = build_body(cmdlet, params)
        url: str | None = self.ep.invoke_url
        out: list[dict[str, Any]] = []
        while url:
            self.calls += 1
            try:
                resp = await self._http.post(url, json=body, headers=await self._headers(cmdlet))
            except httpx.TransportError as exc:
                connected = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                raise self.connection_failed(
                    exc, what=cmdlet, url=url, connected=connected
                ) from exc
            try:
                data = resp.json()
            except ValueError:  # e.g. the NUL-byte body of a 403
                data = None
            if resp.status_code >= 400:
                error = parse_error(resp.status_code, data, resp.headers, cmdlet=cmdlet)
                if isinstance(error, TransientError):
                    self._gate.throttle(error.retry_after)
                raise error
            self._gate.success()
            if is_write_cmdlet(cmdlet):
                self.writes += 1  # accepted writes only: a throttled attempt is not one
            out.extend((data or {}).get("value", []))
            url = (data or {}).get("@odata.nextLink")
        return out
