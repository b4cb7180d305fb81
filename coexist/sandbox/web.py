"""HTTP plumbing shared by the sandbox faces: context, errors, authentication.

Every face handler gets the `SandboxContext` from `request.app.state.ctx` and
raises `HTTPFailure(response)` to answer with an error; the server turns it
into the response. Graph errors use Microsoft's shape
`{"error": {"code", "message", "innerError": {"date", "request-id",
"client-request-id"}}}` (learn.microsoft.com/graph/errors).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .identity import GRAPH_RESOURCE, Issuer, Principal, TokenError
from .limits import Limiter
from .model import World


@dataclass
class SandboxContext:
    """Everything a face needs; one per running server."""

    world: World
    issuer: Issuer
    limiter: Limiter
    base_url: str
    state_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)


class HTTPFailure(Exception):
    """Raised by a handler to answer with `response` (an error in its face's shape)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def ctx_of(request: Request) -> SandboxContext:
    ctx: SandboxContext = request.app.state.ctx
    return ctx


def request_ids(request: Request | None) -> tuple[str, str]:
    client = request.headers.get("client-request-id") if request is not None else None
    return str(uuid.uuid4()), client or str(uuid.uuid4())


def graph_error_body(code: str, message: str, request: Request | None = None) -> dict[str, Any]:
    req_id, client_id = request_ids(request)
    return {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
                "request-id": req_id,
                "client-request-id": client_id,
            },
        }
    }


def graph_error(
    status: int,
    code: str,
    message: str,
    request: Request | None = None,
    retry_after: float | None = None,
) -> JSONResponse:
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = format_retry_after(retry_after)
    return JSONResponse(
        graph_error_body(code, message, request), status_code=status, headers=headers
    )


def format_retry_after(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:.3f}"


def graph_throttled(request: Request | None, retry_after: float) -> JSONResponse:
    return graph_error(
        429,
        "TooManyRequests",
        "Too many requests.",
        request,
        retry_after=retry_after,
    )


def graph_principal(request: Request, any_of: Iterable[str]) -> Principal:
    """Authenticate a Graph call and require one of the application roles `any_of`."""
    ctx = ctx_of(request)
    try:
        principal = ctx.issuer.validate(request.headers.get("authorization"), GRAPH_RESOURCE)
    except TokenError as exc:
        raise HTTPFailure(graph_error(401, exc.code, exc.message, request)) from exc
    wanted = set(any_of)
    if wanted and not (principal.roles & wanted):
        raise HTTPFailure(
            graph_error(
                403,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
                request,
            )
        )
    return principal


ODATA_SERVICE_EXCEPTION = "Microsoft.Exchange.Admin.OData.Core.ODataServiceException"


def exo_error_body(
    code: str,
    message: str,
    request: Request | None = None,
    details: list[str] | None = None,
    *,
    outer_message: str | None = None,
    exception_type: str | None = None,
    error_id: str = "",
    internal_message: str | None = None,
    internal_type: str | None = None,
) -> dict[str, Any]:
    """Exchange Online admin REST error body, in the shape captured from the live service.

    Live bodies (graph2otel exoclient fixtures; a 2023 Remove-Mailbox capture on
    Microsoft Q&A): `error.message` is a generic text ("Invalid Operation" for
    binding errors, "Error executing cmdlet" for cmdlet errors); the useful text is
    `details[].message` as "<ErrorId>|<exception type>|<message>" and/or
    `innererror.internalexception`. `code` is the HTTP status name (BadRequest,
    NotFound). No request id field appears in the body.
    """
    outer = outer_message or message
    tagged = [
        f"{error_id}|{exception_type}|{d}" if exception_type else d for d in (details or [message])
    ]
    return {
        "error": {
            "code": code,
            "message": outer,
            "details": [{"code": "Client", "target": "", "message": d} for d in tagged],
            "innererror": {
                "message": outer,
                "type": ODATA_SERVICE_EXCEPTION,
                "stacktrace": "",
                "internalexception": {
                    "message": internal_message or message,
                    "type": internal_type or exception_type or "",
                    "stacktrace": "",
                },
            },
            "adminapi.warnings@odata.type": "#Collection(String)",
            "@adminapi.warnings": [],
        }
    }


def exo_error(
    status: int,
    code: str,
    message: str,
    request: Request | None = None,
    details: list[str] | None = None,
    retry_after: float | None = None,
    **shape: Any,
) -> JSONResponse:
    headers = {"request-id": request_ids(request)[0]}
    if retry_after is not None:
        headers["Retry-After"] = format_retry_after(retry_after)
    return JSONResponse(
        exo_error_body(code, message, request, details, **shape),
        status_code=status,
        headers=headers,
    )
