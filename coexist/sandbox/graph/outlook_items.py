"""Plumbing the contacts, calendar and To Do modules share: the PIM store, bodies, errors.

Admission is the mail face's (`mail.outlook`): token, Exchange's 403
ErrorAccessDenied, the mailbox named in the path, the per-app-per-mailbox
request budget and the 4-concurrent limit (learn.microsoft.com/graph/throttling-limits,
"Outlook service limits" covers mail, calendar, contacts and To Do alike).
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from ..pim import PIM_DB, PimStore
from ..web import HTTPFailure, SandboxContext, ctx_of
from . import common, odata
from .common import GraphJSON, fail

PIM_STORE_KEY = "pim"  # SandboxContext.extra key holding the PimStore
_OPEN = threading.Lock()


def pim_of(request: Request) -> PimStore:
    """The sandbox's PIM store (`state_dir/pim.db`), opened on first use."""
    return pim_store(ctx_of(request))


def pim_store(ctx: SandboxContext) -> PimStore:
    """The PIM store of a running sandbox (any face), opened on first use."""
    with _OPEN:
        store = ctx.extra.get(PIM_STORE_KEY)
        if store is None:
            store = ctx.extra[PIM_STORE_KEY] = PimStore(ctx.state_dir / PIM_DB)
    assert isinstance(store, PimStore)
    return store


def unknown_property(request: Request, name: str, type_name: str) -> HTTPFailure:
    # OData's deserialization error for a property the type does not declare (verbatim as
    # Graph returns it for non-open types, e.g. microsoftgraph/msgraph-sdk-dotnet#1195).
    return fail(
        400,
        "RequestBodyRead",
        f"The property '{name}' does not exist on type 'microsoft.graph.{type_name}'. Make sure "
        "to only use property names that are defined by the type or mark the type as open type.",
        request,
    )


def invalid_value(request: Request, name: str) -> HTTPFailure:
    # *unverified*: code and wording for a declared property with a value Exchange rejects.
    return fail(400, "ErrorInvalidRequest", f"Invalid value for property '{name}'.", request)


def writable(
    request: Request, body: dict[str, Any], fields: frozenset[str], type_name: str
) -> dict[str, Any]:
    """The body's declared writable properties; an undeclared one is Graph's 400."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        if key.startswith("@odata."):
            continue
        if key not in fields:
            raise unknown_property(request, key, type_name)
        out[key] = value
    return out


def etag(change_key: str) -> str:
    return f'W/"{change_key}"'


PAGE_DEFAULT = 10  # Outlook collections page by 10 without $top


def page(request: Request, fragment: str, values: list[dict[str, Any]]) -> Response:
    """One $top/$skip page of a PIM collection, with Graph's absolute @odata.nextLink."""
    q = common.query(request)
    try:
        top, skip = int(q.get("top", PAGE_DEFAULT)), int(q.get("skip", 0))
    except ValueError:
        top = skip = -1
    if not 1 <= top <= 1000 or skip < 0:
        raise fail(400, "ErrorInvalidUrlQuery", "Invalid value for '$top' or '$skip'.", request)
    body: dict[str, Any] = {"@odata.context": common.context_url(request, fragment)}
    body["value"] = values[skip : skip + top]
    if skip + top < len(values):
        params = [
            (k, v) for k, v in request.query_params.multi_items() if k.lower().lstrip("$") != "skip"
        ]
        params.append(("$skip", str(skip + top)))
        base = common.base(request).removesuffix("/v1.0")
        body["@odata.nextLink"] = f"{base}{request.url.path}?{urlencode(params, safe='$')}"
    return GraphJSON(body)


# -- identity: extended properties, linked resources, $filter / $expand ---------------------------
# Contacts and events take `singleValueExtendedProperties` in their create request and PATCH
# (singlevaluelegacyextendedproperty-post-singlevalueextendedproperties: "use the same REST
# request as creating the instance"); they are kept in the item's props under EXTENDED
# (id -> value) and shown only when `$expand=singleValueExtendedProperties($filter=id eq
# '...')` asks (singlevaluelegacyextendedproperty-get).
#
# UNVERIFIED_FILTERS: the identity filters Graph does not document. It documents
# `singleValueExtendedProperties/Any(ep: ep/id eq '..' and ep/value eq '..')` with a string
# value on messages and on `/users/{id}/events` only (contacts: numeric values; a calendar's
# own `events`: not listed), and no filter on a task's `linkedResources`. The sandbox serves
# them while `Settings.unverified_identity_filters` is True and refuses them as an
# unsupported query when it is False, so the product is tested against both answers.
UNVERIFIED_FILTERS = (
    "contacts: singleValueExtendedProperties",
    "calendars/{id}/events: singleValueExtendedProperties",
    "todo tasks: linkedResources",
)
EXTENDED = "singleValueExtendedProperties"


def unsupported_filter(request: Request) -> HTTPFailure:
    # Outlook's answer to a filter it cannot run; *unverified* code and wording for these.
    return fail(
        400,
        "ErrorInvalidUrlQueryFilter",
        "The query filter contains one or more invalid nodes.",
        request,
    )


def take_extended(request: Request, body: dict[str, Any]) -> dict[str, str] | None:
    """Remove `singleValueExtendedProperties` from a request body: id -> value (ids spelled
    as mail_write spells them), or None when the body has none."""
    from .mail_write import extended_properties

    if EXTENDED not in body:
        return None
    return extended_properties(request, body.pop(EXTENDED))


def with_extended(props: dict[str, Any], extended: dict[str, str] | None) -> dict[str, Any]:
    """`props` with `extended` merged into the stored extended properties."""
    if not extended:
        return props
    return {**props, EXTENDED: {**(props.get(EXTENDED) or {}), **extended}}


def expanded(request: Request, obj: dict[str, Any], props: dict[str, Any]) -> dict[str, Any]:
    """`obj` with the extended property `$expand` asks for, when the item has it."""
    wanted = odata.extended_expand(common.query(request).get("expand"))
    found = odata.expanded_properties(props.get(EXTENDED) or {}, wanted) if wanted else []
    return {**obj, EXTENDED: found} if found else obj


def filtered(
    request: Request,
    rows: list[tuple[dict[str, Any], dict[str, Any]]],
    known: frozenset[str],
    type_name: str,
    unverified: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """The Graph JSON of the rows (json, extra filterable members) `$filter` keeps; `known`
    names what a filter may reference.

    `unverified`: members whose filters Graph does not document (UNVERIFIED_FILTERS); a
    filter naming one is refused while `Settings.unverified_identity_filters` is False.
    """
    raw = common.query(request).get("filter")
    if not raw:
        return [obj for obj, _extra in rows]
    low = raw.lower()
    if any(name.lower() in low for name in unverified) and not (
        ctx_of(request).world.settings.unverified_identity_filters
    ):
        raise unsupported_filter(request)
    try:
        flt = odata.compile_filter(raw, known, type_name)
    except odata.ODataQueryError as exc:
        raise common.query_failure(exc, request) from exc
    if flt is None:
        return [obj for obj, _extra in rows]
    return [obj for obj, extra in rows if flt.matches({**obj, **extra})]
