"""The sandbox's EWS face (`/EWS/Exchange.asmx`, autodiscover): Exchange 2016/2019 and Amazon
WorkMail organisations over the same mailstore the Graph faces use (issue 12).

Modules: `soap` (schema, envelopes, faults), `orgs` (organisation kinds, accounts, grants,
UNVERIFIED), `auth` (Basic, NTLM), `face` (the endpoint: version, impersonation, budgets),
`ops` (the operations), `autodiscover`.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from .autodiscover import autodiscover_xml
from .face import EWS_PATH, RECORDER_KEY, exchange_asmx
from .orgs import EWS_KINDS, KINDS, UNVERIFIED, add_account, grant, set_kind


def routes() -> list[BaseRoute]:
    return [
        Route(EWS_PATH, exchange_asmx, methods=["POST"]),
        # IIS paths are case-insensitive; clients write both spellings.
        Route(EWS_PATH.lower(), exchange_asmx, methods=["POST"]),
        Route("/autodiscover/autodiscover.xml", autodiscover_xml, methods=["POST"]),
        Route("/Autodiscover/Autodiscover.xml", autodiscover_xml, methods=["POST"]),
    ]


__all__ = [
    "EWS_KINDS",
    "EWS_PATH",
    "KINDS",
    "RECORDER_KEY",
    "UNVERIFIED",
    "add_account",
    "grant",
    "routes",
    "set_kind",
]
