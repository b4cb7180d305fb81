"""What the Graph face answers for a `/v1.0/...` path no route serves.

Graph's OData layer answers an unknown path segment with `400 BadRequest`
"Resource not found for the segment '<segment>'." (microsoft-graph-docs issues
4900, 21648). The sandbox answers every path it does not serve the same way,
naming the first segment no served route has at that place, so a client (and
the contract test's walker) tells "not served" apart from a Graph 404 for a
missing object. A path a route serves with other methods answers 405.

A segment in function-call form (`delta()`) is never an id, so a route's `{id}`
parameter does not serve it: `groups/delta()` is not served (rather than a 404
for a group named "delta()") unless a route names that call literally.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope

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


def unserved_call(segs: list[str], templates: Sequence[list[str]]) -> str | None:
    """The first `name()` segment no template names literally at its place (None if served)."""
    for i, seg in enumerate(segs):
        if not seg.endswith("()"):
            continue
        if not any(
            len(t) == len(segs)
            and t[i] == seg
            and all(_fits(a, b) for a, b in zip(t, segs, strict=True))
            for t in templates
        ):
            return seg
    return None


class _CallGuard(Route):
    """Matches (before every other route) a path whose `name()` segment no route names."""

    def __init__(self, templates: list[list[str]], endpoint: Callable[..., Awaitable[Response]]):
        super().__init__(PREFIX + "{rest:path}", endpoint)
        self.templates = templates

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if (
            match is Match.NONE
            or unserved_call(_segments(str(scope["path"])), self.templates) is None
        ):
            return Match.NONE, {}
        return Match.FULL, child


def wrap(face: Sequence[BaseRoute]) -> list[BaseRoute]:
    """The face between a guard for unserved `name()` calls and a catch-all for `/v1.0/...`."""
    served = [r for r in face if isinstance(r, Route) and r.path.startswith(PREFIX)]
    templates = [_segments(r.path) for r in served]

    async def endpoint(request: Request) -> Response:
        path = request.url.path
        call = unserved_call(_segments(path), templates)
        if call is not None:
            raise not_served(request, call)
        if any(r.path_regex.match(path) for r in served):
            raise method_not_allowed()
        raise not_served(request, unknown_segment(path, templates))

    handler: Callable[[Request], Awaitable[Response]] = endpoint
    return [_CallGuard(templates, handler), *face, Route(PREFIX + "{rest:path}", handler)]
