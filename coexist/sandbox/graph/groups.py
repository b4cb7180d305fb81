"""Graph `/groups`: list/filter/get, members and transitiveMembers, and the writes Graph allows.

Visibility follows Exchange/Entra reality (FACTS.md): security groups, mail-enabled
security groups, distribution lists and Microsoft 365 groups are directory
objects Graph serves; dynamic distribution groups exist only in Exchange and are
invisible. Mail-enabled security groups and DLs are mastered in Exchange, so
Graph refuses to change them.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..model import Contact, Group, MailObject, Tenant, User, new_guid, now_iso
from ..web import ctx_of
from . import common, odata, users
from .common import GraphJSON, fail

# Verbatim Graph answer for writes to mail-enabled security groups / DLs
# (microsoft-graph-docs issue 14827; CIPP issue 1607).
MAIL_ENABLED_READ_ONLY = "Cannot Update a mail-enabled security groups and or distribution list."
# Verbatim (CIPP issue 1607).
MEMBER_EXISTS = (
    "One or more added object references already exist for the following modified properties: "
    "'members'."
)


def graph_visible(g: Group) -> bool:
    return g.kind != "Dynamic"


def group_json(g: Group) -> dict[str, Any]:
    return {
        "id": g.id,
        "createdDateTime": g.created,
        "description": g.description,
        "displayName": g.display_name,
        "groupTypes": ["Unified"] if g.kind == "Unified" else [],
        "mail": g.primary_smtp if g.mail_enabled else None,
        "mailEnabled": g.mail_enabled,
        "mailNickname": g.alias or g.display_name.replace(" ", ""),
        "proxyAddresses": list(g.email_addresses) if g.mail_enabled else [],
        "securityEnabled": g.security_enabled,
        "visibility": "Private" if g.kind == "Unified" else None,
        "onPremisesSyncEnabled": None,
    }


KNOWN = list(group_json(Group(id="", display_name="")).keys())


def contact_json(c: Contact) -> dict[str, Any]:
    return {
        "id": c.id,
        "companyName": None,
        "displayName": c.display_name,
        "givenName": c.first_name,
        "jobTitle": None,
        "mail": c.external_email_address[5:] if c.external_email_address else c.primary_smtp,
        "mailNickname": c.alias,
        "proxyAddresses": list(c.email_addresses),
        "surname": c.last_name,
    }


def member_json(obj: MailObject) -> dict[str, Any]:
    """A directoryObject as members endpoints return it, with its `@odata.type`."""
    if isinstance(obj, User):
        return {"@odata.type": "#microsoft.graph.user", **users.default_view(obj)}
    if isinstance(obj, Group):
        return {"@odata.type": "#microsoft.graph.group", **group_json(obj)}
    assert isinstance(obj, Contact)
    return {"@odata.type": "#microsoft.graph.orgContact", **contact_json(obj)}


def visible_group(request: Request, tenant: Tenant, group_id: str) -> Group:
    g = tenant.groups.get(group_id)
    if g is None or not graph_visible(g) or not common.visible(g, common.now()):
        raise common.not_found(request, group_id)
    return g


# -- list / get -----------------------------------------------------------------------------------


async def list_groups(request: Request) -> Response:
    world = ctx_of(request).world
    with world.lock:
        principal = common.read(request, common.GROUP_READ)
        tenant = principal.tenant
        q = common.query(request)
        try:
            top = odata.parse_top(q.get("top"))
            select = odata.parse_select(q.get("select"), KNOWN, "group")
            flt, want_count = common.filter_and_count(request, q, KNOWN, "group")
            order = odata.parse_orderby(q.get("orderby"), ("displayName",))
            after = odata.decode_skiptoken(q["skiptoken"]) if "skiptoken" in q else None
        except odata.ODataQueryError as exc:
            raise common.query_failure(exc, request) from exc
        if order.prop == "displayName":
            keys, ids = common.sorted_view(
                tenant,
                "groups:displayName",
                tenant.groups.values,
                lambda g: (g.display_name.lower(), g.id),
            )
        else:
            keys, ids = common.sorted_view(
                tenant, "groups:id", tenant.groups.values, lambda g: (g.id,)
            )
        t = common.now()

        def resolve(oid: str) -> dict[str, Any] | None:
            g = tenant.groups.get(oid)
            ok = g is not None and graph_visible(g) and common.visible(g, t)
            return group_json(g) if ok and g is not None else None

        page = common.keyset_page(
            keys,
            ids,
            resolve,
            after,
            top,
            order.descending,
            want_count,
            (lambda d: flt.matches(d)) if flt else (lambda d: True),
        )
        values = [common.select_props(d, select) for d in page.items]
        fragment = f"groups({','.join(select)})" if select else "groups"
        return common.collection(request, fragment, values, page)


async def get_group(request: Request) -> Response:
    world = ctx_of(request).world
    with world.lock:
        principal = common.read(request, common.GROUP_READ)
        g = visible_group(request, principal.tenant, request.path_params["group_id"])
        try:
            select = odata.parse_select(common.query(request).get("select"), KNOWN, "group")
        except odata.ODataQueryError as exc:
            raise common.query_failure(exc, request) from exc
        body: dict[str, Any] = {"@odata.context": common.context_url(request, "groups/$entity")}
        body.update(common.select_props(group_json(g), select))
        return GraphJSON(body)


# -- members --------------------------------------------------------------------------------------


def direct_members(tenant: Tenant, g: Group) -> list[MailObject]:
    out: list[MailObject] = []
    for oid in g.members:
        obj = tenant.get(oid)
        if obj is None or (isinstance(obj, Group) and not graph_visible(obj)):
            continue
        out.append(obj)
    return out


def transitive_members(tenant: Tenant, g: Group) -> list[MailObject]:
    """Members of `g` and of every nested group (nested groups included), once each; cycle-safe."""
    seen_groups = {g.id}
    seen: dict[str, MailObject] = {}
    stack = [g]
    while stack:
        current = stack.pop()
        for obj in direct_members(tenant, current):
            if obj.id not in seen and obj.id != g.id:
                seen[obj.id] = obj
            if isinstance(obj, Group) and obj.id not in seen_groups:
                seen_groups.add(obj.id)
                stack.append(obj)
    return list(seen.values())


async def list_members(request: Request) -> Response:
    return _members(request, transitive=False)


async def list_transitive_members(request: Request) -> Response:
    return _members(request, transitive=True)


def _members(request: Request, transitive: bool) -> Response:
    world = ctx_of(request).world
    with world.lock:
        principal = common.read(request, common.GROUP_READ)
        tenant = principal.tenant
        tenant.settle()
        g = visible_group(request, tenant, request.path_params["group_id"])
        q = common.query(request)
        try:
            top = odata.parse_top(q.get("top"))
            want_count = odata.parse_count(q.get("count"))
            if want_count and not common.eventual(request):
                raise odata.count_requires_eventual()
            after = odata.decode_skiptoken(q["skiptoken"]) if "skiptoken" in q else None
        except odata.ODataQueryError as exc:
            raise common.query_failure(exc, request) from exc
        t = common.now()
        found = transitive_members(tenant, g) if transitive else direct_members(tenant, g)
        objs = {o.id: o for o in found if common.visible(o, t)}
        ids = sorted(objs)
        page = common.keyset_page(
            [(i,) for i in ids], ids, objs.get, after, top, want_count=want_count
        )
        values = [member_json(o) for o in page.items]
        return common.collection(request, "directoryObjects", values, page)


# -- writes ---------------------------------------------------------------------------------------


def _writable(request: Request, g: Group) -> None:
    if g.kind in ("MailSecurity", "Distribution"):
        raise fail(400, "Request_BadRequest", MAIL_ENABLED_READ_ONLY, request)


GROUP_WRITABLE = {"displayName": "display_name", "description": "description"}


async def patch_group(request: Request) -> Response:
    world = ctx_of(request).world
    body = await common.json_body(request)
    with world.lock:
        principal = common.write(request, common.GROUP_WRITE)
        tenant = principal.tenant
        g = visible_group(request, tenant, request.path_params["group_id"])
        _writable(request, g)
        for key in body:
            if key not in GROUP_WRITABLE and not key.startswith("@odata."):
                raise fail(
                    400,
                    "Request_BadRequest",
                    f"Property '{key}' is read-only and cannot be set.",
                    request,
                )
        for key, value in body.items():
            if key in GROUP_WRITABLE:
                setattr(g, GROUP_WRITABLE[key], value)
        tenant.touch(g)
        return Response(status_code=204)


async def add_member(request: Request) -> Response:
    world = ctx_of(request).world
    body = await common.json_body(request)
    with world.lock:
        principal = common.write(request, common.GROUP_MEMBER_WRITE)
        tenant = principal.tenant
        g = visible_group(request, tenant, request.path_params["group_id"])
        _writable(request, g)
        ref = str(body.get("@odata.id") or "")
        member_id = ref.rstrip("/").rsplit("/", 1)[-1]
        member = tenant.get(member_id)
        # An object still replicating (an Exchange-created MailUser) is unknown to Graph.
        if not ref or member is None or not common.visible(member, common.now()):
            raise common.not_found(request, member_id or ref)
        if member_id in g.members:
            raise fail(400, "Request_BadRequest", MEMBER_EXISTS, request)
        g.members.append(member_id)
        tenant.touch(g)
        return Response(status_code=204)


async def remove_member(request: Request) -> Response:
    world = ctx_of(request).world
    with world.lock:
        principal = common.write(request, common.GROUP_MEMBER_WRITE)
        tenant = principal.tenant
        g = visible_group(request, tenant, request.path_params["group_id"])
        _writable(request, g)
        member_id = request.path_params["member_id"]
        if member_id not in g.members:
            raise common.not_found(request, member_id)
        g.members.remove(member_id)
        tenant.touch(g)
        return Response(status_code=204)


# -- create (security groups only) -----------------------------------------------------------------

# group-post-groups, "Permissions" (application): Group.Create least privileged.
GROUP_CREATE = ("Group.Create", *common.GROUP_WRITE)
# Verbatim Graph answer for mail-enabled security groups and distribution lists
# (pnp/cli-microsoft365 issue 5476: "Graph API returns the error ... in both cases").
MAIL_ENABLED_CREATE = "Cannot Create a mail-enabled security groups and or distribution list."
# The sandbox does not model creating Microsoft 365 (Unified) or dynamic groups through Graph.
UNIFIED_NOT_MODELLED = (
    "The sandbox does not support creating Microsoft 365 (Unified) or dynamic-membership groups "
    "through Graph; only security groups (mailEnabled false, securityEnabled true)."
)
CREATE_REQUIRED = ("displayName", "mailEnabled", "mailNickname", "securityEnabled")
CREATE_WRITABLE = (
    *CREATE_REQUIRED,
    "description",
    "groupTypes",
    "members@odata.bind",
    "owners@odata.bind",
)
# group resource: mailNickname "maximum length is 64 characters ... These characters cannot be
# used: @ () \\ [] " ; : <> , SPACE".
_NICKNAME_BAD = set('@()\\[]";:<>, ')
MAX_CREATE_BINDS = 20  # group-post-groups: up to 20 members/owners in the create request


def _required(request: Request, prop: str) -> Exception:
    # *unverified* wording (directory's message for a missing required property).
    return fail(
        400,
        "Request_BadRequest",
        f"A value is required for property '{prop}' of resource 'Group'.",
        request,
    )


def _invalid(request: Request, prop: str) -> Exception:
    return fail(
        400,
        "Request_BadRequest",
        f"Invalid value specified for property '{prop}' of resource 'Group'.",
        request,
    )


def _check_create(request: Request, body: dict[str, Any]) -> None:
    for key in body:
        if key not in CREATE_WRITABLE and not key.startswith("@odata.") and key not in KNOWN:
            raise fail(
                400,
                "BadRequest",
                f"The property '{key}' does not exist on type 'microsoft.graph.group'. Make sure "
                "to only use property names that are defined by the type or mark the type as "
                "open type.",
                request,
            )
    for prop in CREATE_REQUIRED:
        if body.get(prop) is None or body.get(prop) == "":
            raise _required(request, prop)
    if not isinstance(body["displayName"], str) or len(body["displayName"]) > 256:
        raise _invalid(request, "displayName")
    nick = body["mailNickname"]
    if not isinstance(nick, str) or len(nick) > 64 or set(nick) & _NICKNAME_BAD:
        raise _invalid(request, "mailNickname")
    for prop in ("mailEnabled", "securityEnabled"):
        if not isinstance(body[prop], bool):
            raise _invalid(request, prop)
    types = body.get("groupTypes") or []
    if not isinstance(types, list):
        raise _invalid(request, "groupTypes")
    if types:
        raise fail(400, "Request_BadRequest", UNIFIED_NOT_MODELLED, request)
    if body["mailEnabled"]:
        raise fail(400, "Request_BadRequest", MAIL_ENABLED_CREATE, request)
    if not body["securityEnabled"]:
        # *unverified*: a group neither mail- nor security-enabled (and not Unified).
        raise _invalid(request, "securityEnabled")


def _binds(request: Request, tenant: Tenant, body: dict[str, Any], prop: str) -> list[str]:
    refs = body.get(prop) or []
    if not isinstance(refs, list) or len(refs) > MAX_CREATE_BINDS:
        raise _invalid(request, prop.split("@")[0])
    ids = []
    for ref in refs:
        oid = str(ref).rstrip("/").rsplit("/", 1)[-1]
        if tenant.get(oid) is None:
            raise common.not_found(request, oid)
        if oid not in ids:
            ids.append(oid)
    return ids


async def create_group(request: Request) -> Response:
    """`POST /groups` for security groups (Graph cannot create mail-enabled ones)."""
    ctx = ctx_of(request)
    body = await common.json_body(request)
    with ctx.world.lock:
        principal = common.write(request, GROUP_CREATE)
        tenant = principal.tenant
        _check_create(request, body)
        members = _binds(request, tenant, body, "members@odata.bind")
        owners = _binds(request, tenant, body, "owners@odata.bind")
        created = now_iso()
        g = Group(
            id=new_guid(),
            display_name=body["displayName"],
            name=body["displayName"][:64],
            alias=body["mailNickname"],
            kind="Security",
            description=body.get("description"),
            members=members,
            owners=owners,
            created=created,
            changed=created,
            visible_at=ctx.limiter.visible_at(body["mailNickname"], origin="graph"),
        )
        tenant.groups[g.id] = g
        tenant.touch(g)
        out: dict[str, Any] = {"@odata.context": common.context_url(request, "groups/$entity")}
        out.update(group_json(g))
        location = f"{common.base(request)}/groups/{g.id}"
        return GraphJSON(out, status_code=201, headers={"Location": location})


def routes() -> list[BaseRoute]:
    return [
        Route("/v1.0/groups", list_groups, methods=["GET"]),
        Route("/v1.0/groups", create_group, methods=["POST"]),
        Route("/v1.0/groups/{group_id}", get_group, methods=["GET"]),
        Route("/v1.0/groups/{group_id}", patch_group, methods=["PATCH"]),
        Route("/v1.0/groups/{group_id}/members", list_members, methods=["GET"]),
        Route("/v1.0/groups/{group_id}/members/$ref", add_member, methods=["POST"]),
        Route(
            "/v1.0/groups/{group_id}/members/{member_id}/$ref", remove_member, methods=["DELETE"]
        ),
        Route(
            "/v1.0/groups/{group_id}/transitiveMembers", list_transitive_members, methods=["GET"]
        ),
    ]
