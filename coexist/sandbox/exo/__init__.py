"""Exchange Online admin REST face (`InvokeCommand`)."""

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
