"""Graph v1.0 face: one module per resource family, each a few Starlette routes."""

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []
