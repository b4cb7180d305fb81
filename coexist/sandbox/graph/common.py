"""Plumbing every Graph resource module shares: admission, responses, paging, lookups.

Handlers run their whole body under `world.lock` (state is plain dataclasses
touched by several faces); that is cheap because nothing inside waits on I/O.
"""

from __future__ import annotations

import bisect
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..identity import Principal
from ..model import MailObject, Tenant
from ..web import HTTPFailure, ctx_of, graph_error, graph_principal, graph_throttled
from . import odata

# Graph's JSON content type (every v1.0 response carries it; kiota keeps only the media type).
GRAPH_JSON = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"

# -- application roles (learn.microsoft.com/graph/api/<operation> "Permissions" tables) ----------
USER_READ = ("User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All")
USER_WRITE = ("User.ReadWrite.All", "Directory.ReadWrite.All")
LICENSE_WRITE = ("LicenseAssignment.ReadWrite.All", "User.ReadWrite.All", "Directory.ReadWrite.All")
GROUP_READ = (
    "GroupMember.Read.All",
    "Group.Read.All",
    "GroupMember.ReadWrite.All",
    "Group.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
)
GROUP_WRITE = ("Group.ReadWrite.All", "Directory.ReadWrite.All")
GROUP_MEMBER_WRITE = ("GroupMember.ReadWrite.All", "Group.ReadWrite.All", "Directory.ReadWrite.All")
ORG_READ = (
    "Organization.Read.All",
    "Organization.ReadWrite.All",
    "LicenseAssignment.Read.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
)
DOMAIN_READ = (
    "Domain.Read.All",
    "Domain.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
)
# usersettings-list-exchange lists only these two for applications.
EXCHANGE_SETTINGS_READ = ("User.Read.All", "User.ReadWrite.All")


class GraphJSON(Response):
    media_type = GRAPH_JSON

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def fail(status: int, code: str, message: str, request: Request | None = None) -> HTTPFailure:
    return HTTPFailure(graph_error(status, code, message, request))


def delta_routes(path: str, endpoint: Callable[[Request], Any]) -> list[BaseRoute]:
    """GET `path` (ending in `/delta`) in both spellings clients send: `delta` and the
    function-call form `delta()` (msgraph-sdk-python's delta request builders' URL templates)."""
    return [Route(path, endpoint, methods=["GET"]), Route(f"{path}()", endpoint, methods=["GET"])]


def query_failure(exc: odata.ODataQueryError, request: Request) -> HTTPFailure:
    return fail(exc.status, exc.code, exc.message, request)


def admit(request: Request, roles: Iterable[str], bucket: str) -> Principal:
    """Authenticate, authorize (any of `roles`) and take one unit from `bucket`."""
    principal = graph_principal(request, roles)
    ctx = ctx_of(request)
    wait = ctx.limiter.admit(bucket, (principal.tenant.tenant_id, principal.app.client_id))
    if wait is not None:
        raise HTTPFailure(graph_throttled(request, wait))
    return principal


def read(request: Request, roles: Iterable[str]) -> Principal:
    return admit(request, roles, "directory_read")


def write(request: Request, roles: Iterable[str]) -> Principal:
    return admit(request, roles, "directory_write")


def base(request: Request) -> str:
    return ctx_of(request).base_url.rstrip("/") + "/v1.0"


def context_url(request: Request, fragment: str) -> str:
    return f"{base(request)}/$metadata#{fragment}"


def query(request: Request) -> dict[str, str]:
    return odata.normalize_query(request.query_params.multi_items())


def eventual(request: Request) -> bool:
    return request.headers.get("consistencylevel", "").strip().lower() == "eventual"


def not_found(request: Request, object_id: str) -> HTTPFailure:
    # learn.microsoft.com/graph/errors + observed directory responses.
    return fail(
        404,
        "Request_ResourceNotFound",
        f"Resource '{object_id}' does not exist or one of its queried reference-property "
        "objects are not present.",
        request,
    )


def visible(obj: MailObject, now: float) -> bool:
    """Replication lag: a new object is not served by Graph before `visible_at`."""
    return obj.visible_at <= now


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        # *unverified* wording for a body that is not JSON.
        raise fail(400, "BadRequest", "Unable to read JSON request payload.", request) from exc
    if not isinstance(body, dict):
        raise fail(400, "BadRequest", "Unable to read JSON request payload.", request)
    return body


# -- sorted views (cached per tenant version so paging is O(log n + page)) -------------------------


@dataclass
class _View:
    tenant: Tenant
    version: int
    keys: list[tuple[str, ...]]
    ids: list[str]


_VIEWS: dict[tuple[int, str], _View] = {}


def sorted_view(
    tenant: Tenant,
    name: str,
    objects: Callable[[], Iterable[MailObject]],
    key: Callable[[Any], tuple[str, ...]],
) -> tuple[list[tuple[str, ...]], list[str]]:
    """Objects' sort keys and ids in key order, rebuilt only when the tenant changed."""
    cache_key = (id(tenant), name)
    view = _VIEWS.get(cache_key)
    if view is None or view.tenant is not tenant or view.version != tenant.version:
        pairs = sorted((key(o), o.id) for o in objects())
        view = _View(tenant, tenant.version, [p[0] for p in pairs], [p[1] for p in pairs])
        if len(_VIEWS) > 64:
            _VIEWS.clear()
        _VIEWS[cache_key] = view
    return view.keys, view.ids


@dataclass
class Page:
    items: list[Any]
    next_key: tuple[str, ...] | None
    count: int | None


def keyset_page(
    keys: Sequence[tuple[str, ...]],
    ids: Sequence[str],
    resolve: Callable[[str], Any | None],
    after: tuple[str, ...] | None,
    top: int,
    descending: bool = False,
    want_count: bool = False,
    accept: Callable[[Any], bool] = lambda _: True,
) -> Page:
    """One page of objects (`resolve(id)`, kept when `accept`) after the key `after`.

    Keyset paging over a sorted key list: inserts and deletes between pages
    never make an object appear twice or be skipped if it existed throughout.
    """
    n = len(keys)
    if descending:
        start = n - 1 if after is None else bisect.bisect_left(keys, after) - 1
        positions: Iterable[int] = range(start, -1, -1)
    else:
        start = 0 if after is None else bisect.bisect_right(keys, after)
        positions = range(start, n)
    items: list[Any] = []
    next_key: tuple[str, ...] | None = None
    last_pos = -1
    for pos in positions:
        obj = resolve(ids[pos])
        if obj is None or not accept(obj):
            continue
        if len(items) == top:
            next_key = keys[last_pos]
            break
        items.append(obj)
        last_pos = pos
    count = None
    if want_count:
        count = sum(1 for i in ids if (o := resolve(i)) is not None and accept(o))
    return Page(items, next_key, count)


def next_link(request: Request, token: tuple[str, ...]) -> str:
    """Absolute `@odata.nextLink`: the same query with a fresh opaque `$skiptoken`."""
    params = [
        (k, v)
        for k, v in request.query_params.multi_items()
        if k.lower().lstrip("$") != "skiptoken"
    ]
    params.append(("$skiptoken", odata.encode_skiptoken(token)))
    path = quote(request.url.path, safe="/$@")
    qs = urlencode(params, safe="$,()':/@")
    return f"{ctx_of(request).base_url.rstrip('/')}{path}?{qs}"


def collection(
    request: Request,
    fragment: str,
    values: list[dict[str, Any]],
    page: Page,
) -> GraphJSON:
    body: dict[str, Any] = {"@odata.context": context_url(request, fragment)}
    if page.count is not None:
        body["@odata.count"] = page.count
    body["value"] = values
    if page.next_key is not None:
        body["@odata.nextLink"] = next_link(request, page.next_key)
    return GraphJSON(body)


def filter_and_count(
    request: Request, q: dict[str, str], known: list[str], type_name: str
) -> tuple[odata.CompiledFilter | None, bool]:
    """Compile `$filter` and read `$count`, enforcing Graph's advanced-query rules."""
    want_count = odata.parse_count(q.get("count"))
    if want_count and not eventual(request):
        raise odata.count_requires_eventual()
    flt = odata.compile_filter(q.get("filter"), known, type_name)
    # Advanced operators need both the header and $count=true (graph/aad-advanced-queries).
    if flt is not None and flt.advanced and not (want_count and eventual(request)):
        raise odata.advanced_query_required(flt.advanced[0])
    return flt, want_count


def now() -> float:
    return time.time()


def select_props(obj: dict[str, Any], select: list[str] | None) -> dict[str, Any]:
    if select is None:
        return obj
    out = {k: obj[k] for k in ("@odata.type",) if k in obj}
    # Graph returns only the selected properties (not even `id` unless asked).
    out.update({k: obj.get(k) for k in select})
    return out
