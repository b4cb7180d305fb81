"""POX autodiscover (`POST /autodiscover/autodiscover.xml`): the EWS URL for a mailbox.

Request and response shapes: [MS-OXDSCLI] 2.2.3/2.2.4 (request schema
.../outlook/requestschema/2006, response .../outlook/responseschema/2006a). Only the EXPR
protocol block with `EwsUrl` is answered (what EWS clients read); authenticated as EWS.
"""

from __future__ import annotations

from xml.etree import ElementTree as ET

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ..connections import connection_of
from ..web import ctx_of
from . import orgs
from .auth import Challenge
from .face import EWS_PATH, authenticator

REQ = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
RESP = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
RESP_A = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"


def _error(code: str, message: str) -> bytes:
    root = ET.Element(f"{{{RESP}}}Autodiscover")
    resp = ET.SubElement(root, f"{{{RESP}}}Response")
    err = ET.SubElement(resp, f"{{{RESP}}}Error", {"Time": "00:00:00", "Id": "0"})
    ET.SubElement(err, f"{{{RESP}}}ErrorCode").text = code
    ET.SubElement(err, f"{{{RESP}}}Message").text = message
    ET.SubElement(err, f"{{{RESP}}}DebugData")
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data


async def autodiscover_xml(request: Request) -> Response:
    ctx = ctx_of(request)
    body = await request.body()
    try:
        login = await run_in_threadpool(
            authenticator(ctx).authenticate,
            connection_of(request.scope),
            request.headers.get("authorization"),
        )
    except Challenge as ch:
        refused = Response(b"", status_code=401)
        for v in ch.values:
            refused.headers.append("WWW-Authenticate", v)
        return refused
    try:
        address = ET.fromstring(body).findtext(f"{{{REQ}}}Request/{{{REQ}}}EMailAddress") or ""
    except ET.ParseError:
        return Response(_error("600", "Invalid Request"), media_type="text/xml")
    tenant = ctx.world.tenants[login.key]
    user = orgs.mailbox_user(tenant, address)
    if user is None:
        return Response(_error("500", "The email address can't be found."), media_type="text/xml")
    root = ET.Element(f"{{{RESP}}}Autodiscover")
    answer = ET.SubElement(root, f"{{{RESP_A}}}Response")
    u = ET.SubElement(answer, f"{{{RESP_A}}}User")
    ET.SubElement(u, f"{{{RESP_A}}}DisplayName").text = user.display_name
    ET.SubElement(u, f"{{{RESP_A}}}LegacyDN").text = user.legacy_exchange_dn or ""
    ET.SubElement(u, f"{{{RESP_A}}}AutoDiscoverSMTPAddress").text = user.primary_smtp or address
    ET.SubElement(u, f"{{{RESP_A}}}DeploymentId").text = tenant.organization_guid
    acct = ET.SubElement(answer, f"{{{RESP_A}}}Account")
    ET.SubElement(acct, f"{{{RESP_A}}}AccountType").text = "email"
    ET.SubElement(acct, f"{{{RESP_A}}}Action").text = "settings"
    proto = ET.SubElement(acct, f"{{{RESP_A}}}Protocol")
    ET.SubElement(proto, f"{{{RESP_A}}}Type").text = "EXPR"
    ET.SubElement(proto, f"{{{RESP_A}}}EwsUrl").text = ctx.base_url + EWS_PATH
    ET.SubElement(proto, f"{{{RESP_A}}}ASUrl").text = ctx.base_url + "/Microsoft-Server-ActiveSync"
    return Response(
        ET.tostring(root, encoding="utf-8", xml_declaration=True),
        media_type="text/xml; charset=utf-8",
    )
