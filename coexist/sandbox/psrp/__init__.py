"""The sandbox's remote PowerShell face (`/PowerShell`, configuration `Microsoft.Exchange`):
on-premises/hosted Exchange cmdlets over WinRM for the Exchange organisations (issue 13).

Modules: `wsman` (WS-Management SOAP), `face` (shells, pipelines on psrpcore's server
classes, auth), `cmdlets` (on-premises binding, dispatch, error records).
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from .face import CONFIGURATION, PATH
from .face import routes as _routes


def routes() -> list[BaseRoute]:
    return _routes()


__all__ = ["CONFIGURATION", "PATH", "routes"]
