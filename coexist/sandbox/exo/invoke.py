"""`POST /adminapi/beta/{tenantId}/InvokeCommand`: auth, body, validation, dispatch, paging.

As the ExchangeOnlineManagement V3 module and public clients (CIPP New-ExoRequest,
ExoHelper, M365Permissions) use it: body `{"CmdletInput": {"CmdletName",
"Parameters"}}`, `Authorization: Bearer` (audience https://outlook.office365.com),
`X-CmdletName`, `X-ResponseFormat: json`, `Prefer: odata.maxpagesize=N`,
`X-AnchorMailbox`, optional `?$select=`. The answer is `{"@odata.context",
"@adminapi.warnings", "value", "@odata.nextLink"}`; the client POSTs the same body
to the next link. Error shapes live in `errors.py`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ...exospec import SpecViolation, canonicalize, resolve_parameter_set
from ..identity import EXO_MANAGE_AS_APP, EXO_RESOURCE, ROLE_NAMES, Principal, TokenError
from ..web import HTTPFailure, SandboxContext, ctx_of, exo_error
from . import contact, directory, domain, errors, group, mailbox, mailuser, policy, recipient
from .directory import Call, Command
from .errors import BindingError, CmdletError

PATH = "/adminapi/beta/{tenant}/InvokeCommand"
FAMILIES = (recipient, mailbox, mailuser, contact, group, domain, policy)
DISPATCH: dict[str, Command] = {k: v for f in FAMILIES for k, v in f.COMMANDS.items()}

# What an app may run. RBAC combines every source (app-only-auth-powershell-v2, Step 5):
# Entra roles, seen in the token's `wids` (permissions-reference), and Exchange role groups
# its service principal is a member of, looked up inside Exchange (not in the token).
# "all": every cmdlet; "recipients": recipient management, reads and writes; "read": Get-*.
Access = Literal["all", "recipients", "read"]
ENTRA_ROLE_ACCESS: dict[str, Access] = {
    "Exchange Administrator": "all",
    "Global Administrator": "all",
    "Exchange Recipient Administrator": "recipients",
    "Global Reader": "read",
}
ROLE_GROUP_ACCESS: dict[str, Access] = {
    "Organization Management": "all",
    "Recipient Management": "recipients",
    "View-Only Organization Management": "read",
}
# Outbound spam policies are read by Organization Management, Security Administrator, Global
# Reader, Security Reader or View-Only Organization Management (Defender docs, outbound-
# spam-policies-configure, "permissions"): not by a recipient-management grant.
# *unverified*: which other configuration reads (Get-AcceptedDomain, Get-RemoteDomain,
# Get-OrganizationConfig) recipient management includes; the sandbox grants them.
NOT_FOR_RECIPIENT_ACCESS = frozenset(
    {"get-hostedoutboundspamfilterpolicy", "get-hostedoutboundspamfilterrule"}
)
# Exchange's 401 challenge (as EWS / Outlook REST send it); body empty. *unverified* for
# /adminapi specifically.
CHALLENGE = (
    'Bearer client_id="00000002-0000-0ff1-ce00-000000000000", '
    'trusted_issuers="00000001-0000-0000-c000-000000000000@*", '
    'token_types="app_asserted_user_v1 service_asserted_app_v1", '
    'authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
    'error="invalid_token"'
)
_MAXPAGESIZE = re.compile(r"odata\.maxpagesize\s*=\s*(\d+)", re.IGNORECASE)


def served_cmdlets() -> list[str]:
    """Every cmdlet the sandbox serves with real semantics (the conformance test walks it)."""
    return sorted(c.name for c in DISPATCH.values())


def routes() -> list[BaseRoute]:
    return [Route(PATH, invoke_command, methods=["POST"])]


# -- failures without a JSON body ---------------------------------------------------
def unauthorized(reason: str) -> HTTPFailure:
    return HTTPFailure(
        Response(
            b"",
            status_code=401,
            headers={
                "WWW-Authenticate": CHALLENGE,
                "x-ms-diagnostics": f'2000001;reason="{reason}";error_category="invalid_token"',
            },
        )
    )


def forbidden(diagnostic: str) -> HTTPFailure:
    """403 with a body of NUL bytes, as live EXO answers; the sandbox adds a diagnostic header."""
    return HTTPFailure(
        Response(errors.NUL_BODY, status_code=403, headers={"X-Sandbox-Diagnostic": diagnostic})
    )


# -- pipeline -----------------------------------------------------------------------------
def authenticate(request: Request, ctx: SandboxContext) -> Principal:
    try:
        principal = ctx.issuer.validate(request.headers.get("authorization"), EXO_RESOURCE)
    except TokenError as exc:
        raise unauthorized(exc.message) from exc
    with ctx.world.lock:
        path_tenant = ctx.world.tenant_by_id(request.path_params["tenant"])
    if path_tenant is not principal.tenant:
        raise unauthorized("The tenant in the URL is not the tenant the token was issued for.")
    # graph2otel (live): 401 without Exchange.ManageAsApp, 403 with it but no Exchange role.
    if EXO_MANAGE_AS_APP not in principal.roles:
        raise unauthorized("The token has no Exchange.ManageAsApp application role.")
    if not access_of(principal):
        raise forbidden("The app holds no Exchange role (no Entra role, no role group).")
    return principal


def access_of(principal: Principal) -> set[Access]:
    """The grants of the app: Entra roles from `wids`, role groups of its service principal."""
    roles = {ROLE_NAMES.get(w, "") for w in principal.wids}
    grants = {ENTRA_ROLE_ACCESS[r] for r in roles if r in ENTRA_ROLE_ACCESS}
    groups = principal.app.exchange_role_groups
    return grants | {ROLE_GROUP_ACCESS[g] for g in groups if g in ROLE_GROUP_ACCESS}


def granted(access: set[Access], command: Command) -> bool:
    if "all" in access:
        return True
    if "recipients" in access and command.name.lower() not in NOT_FOR_RECIPIENT_ACCESS:
        return True
    return "read" in access and not command.write


def parse_body(raw: bytes) -> tuple[str, dict[str, Any]]:
    try:
        body = json.loads(raw or b"{}")
        cmd = body["CmdletInput"]
        name = str(cmd["CmdletName"])
        params = cmd.get("Parameters") or {}
        if not isinstance(params, dict):
            raise TypeError("Parameters must be an object")
    except (ValueError, KeyError, TypeError) as exc:
        # *unverified*: the service's answer to a malformed body.
        raise HTTPFailure(
            exo_error(
                400, "BadRequest", f"Invalid request body: {exc}", outer_message="Invalid Operation"
            )
        ) from exc
    return name, params


def page_size(request: Request) -> int:
    m = _MAXPAGESIZE.search(request.headers.get("prefer", ""))
    if not m:
        return errors.DEFAULT_PAGE_SIZE
    return min(max(int(m.group(1)), 1), errors.MAX_PAGE_SIZE)


def body_digest(name: str, params: dict[str, Any]) -> str:
    text = json.dumps([name.lower(), params], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_token(offset: int, digest: str) -> str:
    raw = json.dumps([offset, digest, int(time.time())]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def read_token(token: str | None, digest: str) -> int:
    """The offset an opaque skip token carries; a foreign, tampered or stale one is refused."""
    if token is None:
        return 0
    try:
        offset, seen, issued = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        ok = seen == digest and time.time() - issued <= errors.NEXT_LINK_TTL_S and offset >= 0
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise errors.expired_page()
    return int(offset)


def authorize_cmdlet(principal: Principal, name: str) -> Command:
    command = DISPATCH.get(name.lower())
    if command is None:
        # In the spec but not served: answer as EXO does for a cmdlet the roles do not grant.
        raise forbidden(f"The cmdlet '{name}' is not served by the sandbox.")
    if not granted(access_of(principal), command):
        raise forbidden(f"The app's roles do not grant the cmdlet '{command.name}'.")
    return command


def bind(command: Command, params: dict[str, Any]) -> tuple[dict[str, Any], str]:
    try:
        canonical = canonicalize(command.name, params)
        parameter_set = resolve_parameter_set(command.name, params)
    except SpecViolation as v:
        kind = errors.BINDING if v.kind == "missing_mandatory" else errors.AMBIGUOUS_SET
        raise BindingError(v.message, kind) from v
    unmodeled = sorted(set(canonical) - command.modeled)
    if unmodeled:
        raise errors.not_modeled(command.name, unmodeled)
    return canonical, parameter_set


def run(ctx: SandboxContext, call: Call, command: Command) -> list[dict[str, Any]]:
    if command.write and directory.as_bool("WhatIf", call.get("WhatIf", False)):
        return []  # -WhatIf: Exchange describes the change on the host and writes nothing
    with ctx.world.lock:
        call.tenant.settle()
        return command.run(call)


async def invoke_command(request: Request) -> Response:
    ctx = ctx_of(request)
    raw = await request.body()
    principal = authenticate(request, ctx)
    name, params = parse_body(raw)
    tenant = principal.tenant
    write = not name.lower().startswith("get-")
    retry = ctx.limiter.admit(
        "directory_write" if write else "directory_read",
        (tenant.tenant_id, principal.app.client_id),
    )
    if retry is not None:
        # Code and text *unverified*; 429 + Retry-After in seconds is documented behaviour.
        return exo_error(429, "TooManyRequests", "Too many requests.", request, retry_after=retry)
    try:
        canonicalize(name, params)  # an unknown cmdlet fails here, before dispatch
    except SpecViolation as v:
        if v.kind == "unknown_cmdlet":
            raise forbidden(v.message) from v
    try:
        command = authorize_cmdlet(principal, name)
        offset = read_token(request.query_params.get("$skiptoken"), body_digest(name, params))
        canonical, parameter_set = bind(command, params)
        call = Call(ctx, tenant, command.name, canonical, parameter_set)
        rows = run(ctx, call, command)
    except (BindingError, CmdletError) as exc:
        return exc.response(request)
    return page(request, ctx, tenant.tenant_id, call, rows, offset, body_digest(name, params))


def project(rows: list[dict[str, Any]], select: str | None) -> list[dict[str, Any]]:
    if not select:
        return rows
    wanted = {s.strip().lower() for s in select.split(",") if s.strip()}
    return [{k: v for k, v in r.items() if k.lower() in wanted} for r in rows]


def page(
    request: Request,
    ctx: SandboxContext,
    tenant_id: str,
    call: Call,
    rows: list[dict[str, Any]],
    offset: int,
    digest: str,
) -> Response:
    size = page_size(request)
    select = request.query_params.get("$select")
    base = f"{ctx.base_url}/adminapi/beta/{tenant_id}"
    body: dict[str, Any] = {
        # *unverified*: the context URL the service writes for InvokeCommand results.
        "@odata.context": f"{base}/$metadata#Collection(Exchange.GenericHashTable)",
    }
    if call.warnings:
        body["adminapi.warnings@odata.type"] = "#Collection(String)"
        body["@adminapi.warnings"] = call.warnings
    body["value"] = project(rows[offset : offset + size], select)
    if offset + size < len(rows):
        query = f"$skiptoken={make_token(offset + size, digest)}"
        if select:
            query = f"$select={select}&{query}"
        body["@odata.nextLink"] = f"{base}/InvokeCommand?{query}"
    return JSONResponse(body, headers={"Preference-Applied": f"odata.maxpagesize={size}"})
