"""What the Graph face answers for a `/v1.0/...` path no route serves.

Graph's OData layer answers an unknown path segment with `400 BadRequest`
"Resource not found for the segment '<segment>'." (microsoft-graph-docs issues
4900, 21648). The sandbox answers every path it does not serve the same way,
naming the first segment no served route has at that place, so a client (and
the contract test's walker) tells "not served" apart from a Graph 404 for a
missing object. A path a route serves with other methods answers 405.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..web import HTTPFailure, graph_error
from .common import fail

PREFIX = "/v1.0/"


def _segments(path: str) -> list[str]:
    return path.removeprefix(PREFIX).split("/")


def _fits(template: str, segment: str) -> bool:
    return (template.startswith("{") and template.endswith("}") and bool(segment)) or (
        template == segment
    )


def unknown_segment(path: str, templates: Sequence[list[str]]) -> str:
    """The first segment of `path` that no served route template has at its place."""
    segs = _segments(path)
    known = 0
    for template in templates:
        n = 0
        while n < min(len(template), len(segs)) and _fits(template[n], segs[n]):
            n += 1
        known = max(known, n)
    # Every segment matched a route's prefix: the resource itself (the last one) is unserved.
    return segs[min(known, len(segs) - 1)]


def not_served(request: Request | None, segment: str) -> HTTPFailure:
    return fail(400, "BadRequest", f"Resource not found for the segment '{segment}'.", request)


def method_not_allowed() -> HTTPFailure:
    # *unverified* wording (OData library message for a method the resource lacks).
    return HTTPFailure(
        graph_error(405, "Request_BadRequest", "The requested method is not supported.")
    )


def route(face: Sequence[BaseRoute]) -> Route:
    """A catch-all for `/v1.0/...`, to be placed after every route of the face."""
    served = [r for r in face if isinstance(r, Route) and r.path.startswith(PREFIX)]
    templates = [_segments(r.path) for r in served]

    async def endpoint(request: Request) -> Response:
        path = request.url.path
        if any(r.path_regex.match(path) for r in served):
            raise method_not_allowed()
        raise not_served(request, unknown_segment(path, templates))

    handler: Callable[[Request], Awaitable[Response]] = endpoint
    return Route(PREFIX + "{rest:path}", handler)
