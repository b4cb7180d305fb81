"""The EWS endpoint `/EWS/Exchange.asmx`: authentication, headers, budgets, dispatch.

One POST is one SOAP request: authenticated (auth.py), parsed and schema-validated
(soap.py), its RequestServerVersion checked against the organisation's flavour (orgs.py), its
ExchangeImpersonation header resolved, charged to its budget (budget: per impersonated user
under impersonation, one per account under delegation), then run by an operation of ops.py on
the sandbox's mailstore. The response is schema-validated before it is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree as ET

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ..connections import connection_of
from ..mailstore import MailStore
from ..model import EwsAccount, Tenant, User
from ..web import SandboxContext, ctx_of
from . import orgs, soap
from .auth import Authenticator, Challenge, Login

log = logging.getLogger(__name__)

AUTH_KEY = "ews_auth"
ERRORS_KEY = "ews_errors"  # a list of the sandbox bugs met while serving (tests assert none)
RECORDER_KEY = "ews_recorder"  # a list: (operation, request bytes, response bytes) appended
EWS_PATH = "/EWS/Exchange.asmx"
MAX_CONCURRENCY = 27  # EwsMaxConcurrency of the default throttling policy (FACTS.md)
# Oldest request version each operation exists in (EWS reference pages, "Applies to").
MIN_VERSION = {"ExportItems": "Exchange2010_SP1", "UploadItems": "Exchange2010_SP1",
               "ConvertId": "Exchange2007_SP1"}  # fmt: skip
DEFAULT_VERSION = "Exchange2007"  # no RequestServerVersion: "handled as ... Exchange 2007"


@dataclass
class Call:
    """One request being served: who, which organisation, which version, acting for whom."""

    ctx: SandboxContext
    store: MailStore
    key: str
    tenant: Tenant
    flavour: orgs.Flavour
    account: EwsAccount
    version: str
    impersonated: User | None
    charged_items: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    def acting_user(self) -> User | None:
        """Whose mailbox a distinguished folder id without <Mailbox> names."""
        if self.impersonated is not None:
            return self.impersonated
        if self.account.mailbox:
            return orgs.mailbox_user(self.tenant, self.account.mailbox)
        return None

    def at_least(self, version: str) -> bool:
        known = soap.exchange_versions()
        return known.index(self.version) >= known.index(version)


@dataclass(frozen=True)
class Recorded:
    """One exchange, kept when `ctx.extra[RECORDER_KEY]` is a list (the contract test)."""

    request: bytes
    response: bytes
    status: int


def authenticator(ctx: SandboxContext) -> Authenticator:
    found = ctx.extra.get(AUTH_KEY)
    if found is None:
        host = ctx.base_url.split("//", 1)[-1].split(":", 1)[0]
        found = ctx.extra[AUTH_KEY] = Authenticator(ctx.world, host, ctx.state_dir)
    assert isinstance(found, Authenticator)
    return found


def server_version(flavour: orgs.Flavour) -> ET.Element:
    return soap.t(
        "ServerVersionInfo",
        {
            "MajorVersion": str(flavour.major),
            "MinorVersion": str(flavour.minor),
            "MajorBuildNumber": str(flavour.major_build),
            "MinorBuildNumber": str(flavour.minor_build),
            "Version": flavour.version,
        },
    )


def _xml(data: bytes, status: int = 200) -> Response:
    return Response(data, status_code=status, media_type="text/xml; charset=utf-8")


def unauthorized(values: list[str]) -> Response:
    """The 401 an IIS endpoint answers with these WWW-Authenticate challenges (EWS and the
    remote PowerShell face sign in the same way)."""
    resp = Response(b"", status_code=401)
    for v in values:
        resp.headers.append("WWW-Authenticate", v)
    return resp


async def exchange_asmx(request: Request) -> Response:
    ctx = ctx_of(request)
    body = await request.body()
    try:
        login = await run_in_threadpool(
            authenticator(ctx).authenticate,
            connection_of(request.scope),
            request.headers.get("authorization"),
        )
    except Challenge as ch:
        return unauthorized(ch.values)
    data, status = await run_in_threadpool(serve, ctx, login, body)
    rec = ctx.extra.get(RECORDER_KEY)
    if isinstance(rec, list):
        rec.append(Recorded(body, data, status))
    return _xml(data, status)


def serve(ctx: SandboxContext, login: Login, body: bytes) -> tuple[bytes, int]:
    """Run one SOAP request; (response bytes, HTTP status)."""
    from .ops import OPERATIONS  # ops imports this module

    tenant = ctx.world.tenants[login.key]
    flavour = orgs.FLAVOURS[tenant.kind]
    header = [server_version(flavour)]
    try:
        req = soap.parse_request(body)
        version = DEFAULT_VERSION
        if "RequestServerVersion" in req.headers:
            version = req.headers["RequestServerVersion"].get("Version") or DEFAULT_VERSION
        if not orgs.accepts_version(flavour, version, soap.exchange_versions()):
            raise soap.Fault(
                "ErrorInvalidServerVersion", "The specified server version is invalid."
            )
        op = OPERATIONS.get(req.operation)
        if op is None:
            raise soap.Fault(
                "ErrorInvalidRequest",
                f"The request is invalid: {req.operation} is not served by this sandbox.",
            )
        need = MIN_VERSION.get(req.operation)
        known = soap.exchange_versions()
        if need is not None and known.index(version) < known.index(need):
            raise soap.Fault(
                "ErrorInvalidServerVersion", "The specified server version is invalid."
            )
        call = Call(
            ctx=ctx,
            store=_mail_store(ctx),
            key=login.key,
            tenant=tenant,
            flavour=flavour,
            account=login.account,
            version=version,
            impersonated=_impersonated(tenant, login.account, req.headers),
        )
        response = _budgeted(call, lambda: op(call, req.body))
        soap.validate_response(response)
        return soap.envelope(header, response), 200
    except soap.Fault as f:
        return soap.fault(f.code, f.message, header, f.message_xml), 500
    except Exception as exc:
        # A sandbox bug (ResponseInvalid included): kept for tests (`ERRORS_KEY`), logged,
        # and answered as Exchange answers its own failures.
        log.exception("EWS face failed on a request")
        ctx.extra.setdefault(ERRORS_KEY, []).append(repr(exc))
        return soap.fault(
            "ErrorInternalServerError", f"An internal server error occurred. {exc!r}"[:2000], header
        ), 500


def _mail_store(ctx: SandboxContext) -> MailStore:
    from ..graph.mail import MAIL_STORE_KEY

    store = ctx.extra[MAIL_STORE_KEY]
    assert isinstance(store, MailStore)
    return store


def _impersonated(
    tenant: Tenant, account: EwsAccount, headers: dict[str, ET.Element]
) -> User | None:
    node = headers.get("ExchangeImpersonation")
    if node is None:
        return None
    sid = node.find("t:ConnectingSID", soap.NS)
    address = None
    if sid is not None:
        for tag in ("PrimarySmtpAddress", "SmtpAddress", "PrincipalName"):
            address = soap.text_of(sid, f"t:{tag}") or address
    if not account.impersonation or tenant.kind == "workmail":
        raise soap.Fault(
            "ErrorImpersonateUserDenied",
            "The account does not have permission to impersonate the requested user.",
        )
    user = orgs.mailbox_user(tenant, address or "")
    if user is None:
        raise soap.Fault(
            "ErrorNonExistentMailbox",
            f"The SMTP address has no mailbox associated with it: {address}",
        )
    return user


# -- budgets ----------------------------------------------------------------------------------------


def _budgeted(call: Call, run: Callable[[], ET.Element]) -> ET.Element:
    """Charge the call to its budget: the impersonated user's (impersonation) or the
    account's own, shared by every mailbox it opens (delegation) (FACTS.md "Other endpoints")."""
    limiter = call.ctx.limiter
    if call.impersonated is not None:
        key = (call.key, "user", call.impersonated.id)
    else:
        key = (call.key, "account", call.account.name.lower())
    fault = limiter.chaos()
    if fault is not None:
        _server_busy(limiter.chaos_retry_after())
    wait = limiter.admit("ews_budget", key, orgs.UNVERIFIED.charge_ms_per_request)
    if wait is not None:
        _server_busy(wait)
    with limiter.concurrency(("ews", *key), MAX_CONCURRENCY) as admitted:
        if not admitted:
            _server_busy(limiter.chaos_retry_after())
        result = run()
    if call.charged_items:
        # Work proportional to the items touched, charged after the fact (Exchange charges
        # the time a call took; the balance may go negative and the next call waits).
        limiter.charge("ews_budget", key, orgs.UNVERIFIED.charge_ms_per_item * call.charged_items)
    return result


def _server_busy(seconds: float) -> None:
    ms = max(1, round(seconds * 1000))
    raise soap.Fault(
        "ErrorServerBusy",
        "The server cannot service this request right now. Try again later.",
        [soap.t("Value", {"Name": "BackOffMilliseconds"}, text=ms)],
    )
