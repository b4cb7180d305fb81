"""Exchange Online admin REST face (`POST /adminapi/beta/{tenantId}/InvokeCommand`).

`invoke` holds the route (auth, body, spec validation, dispatch, paging, errors);
each cmdlet family lives in its own module and registers its cmdlets in a
`Registry`; `directory` holds the recipient rules they share.
"""

from starlette.routing import BaseRoute

from .invoke import routes as _routes


def routes() -> list[BaseRoute]:
    return _routes()
