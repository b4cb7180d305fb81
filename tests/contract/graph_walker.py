"""A walker over the sandbox's Graph face that takes its routes from the v1.0 CSDL.

It starts at every entity set and singleton of the CSDL's entity container and,
for each object a response returns, follows the navigation properties and the
parameterless bound functions its type has in the CSDL, with GET. Nothing here
lists the sandbox's URLs: what the sandbox serves is found by asking.

- "Not served" is the sandbox's answer for a path no route serves, which is
  Graph's own answer for an unknown segment: 400 BadRequest "Resource not found
  for the segment ...". A Graph 404 (a missing object, a user without a mailbox)
  is a served answer.
- A single-valued navigation property that is not served (`users/{id}/todo`,
  `admin/exchange`) is still walked through, up to `MAX_BLIND` levels, because
  Graph serves the resources under it; a collection that is not served ends the
  path (its members cannot be named).
- Members of collections the CSDL marks `IndexableByKey=false` (event
  `instances`) are not addressed by id.
- The first listed collection of each type is asked once more with `$select` of
  every property the CSDL gives the type, dropping each property the sandbox
  refuses with Graph's "Could not find a property named 'x'" until it answers:
  properties served only on request (`internetMessageHeaders`, a user's
  `proxyAddresses` ...) are checked too.
- Each URL template (ids replaced by `{}`) is asked until it has answered with
  data `DATA_TARGET` times or `ATTEMPTS` times in all, so the walk is bounded
  while still finding the one mailbox that holds each kind of item. A template
  whose type has derived types (members: directoryObject; attachment; message;
  mailFolder) is asked up to `ATTEMPTS` times whatever it answered: any of its
  answers may hold a kind of object the others did not.

Every 2xx JSON body is checked with `coexist.csdl` against the type its path
has in the CSDL; each finding names the method, the URL and the sandbox module
whose route served it.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import httpx
from starlette.routing import Route

from coexist.csdl import Model, Operation, TypeRef, qualify

NOT_SERVED = "Resource not found for the segment"
# Graph's (OData's) answer to a $select of a property it does not serve.
_REFUSED_PROPERTY = re.compile(r"Could not find a property named '([^']+)'")
# Values for the custom query options the CSDL marks Required (event `instances`,
# `calendarView`): a window wide enough for every seeded item.
QUERY_VALUES = {
    "startDateTime": "2020-01-01T00:00:00Z",
    "endDateTime": "2030-01-01T00:00:00Z",
}
# Collections Graph does not list but whose members are named by a property of another
# resource. usersettings-list-exchange: `primaryMailboxId` is the id the mailbox
# import/export API takes (/admin/exchange/mailboxes/{id}).
KEY_SOURCES = {("microsoft.graph.exchangeSettings", "primaryMailboxId"): "admin/exchange/mailboxes"}
DATA_TARGET = 3
ATTEMPTS = 60
MAX_PAGES = 3
MAX_BLIND = 2
MAX_SEGMENTS = 16

Kind = Literal["collection", "single", "entity", "function"]


@dataclass(frozen=True)
class Node:
    """One GET the walk may make."""

    url: str  # relative to /v1.0 (or absolute for links)
    template: str
    type: TypeRef
    kind: Kind
    blind: int = 0  # consecutive unserved single-valued hops that led here
    indexable: bool = True  # collection members are addressable by id
    params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Finding:
    module: str
    method: str
    url: str
    message: str

    def __str__(self) -> str:
        return f"[{self.module}] {self.method} {self.url}: {self.message}"


@dataclass
class _Template:
    polymorphic: bool
    attempts: int = 0
    hits: int = 0
    dead: bool = False

    def saturated(self) -> bool:
        enough = self.hits >= DATA_TARGET and not self.polymorphic
        return enough or self.attempts >= ATTEMPTS


@dataclass
class Report:
    """What a walk saw: findings, the types reached (with one URL each), and counters."""

    findings: list[Finding] = field(default_factory=list)
    reached: dict[str, str] = field(default_factory=dict)
    walked: set[str] = field(default_factory=set)  # types reached by GET
    served: set[str] = field(default_factory=set)  # templates that answered with data
    not_served: set[str] = field(default_factory=set)
    refused: dict[str, set[int]] = field(default_factory=dict)  # template -> error statuses
    requests: int = 0
    examples: dict[str, tuple[str, TypeRef]] = field(default_factory=dict)  # template -> url


class RouteIndex:
    """Which sandbox module serves a (method, path): the module of the route's endpoint."""

    def __init__(self, routes: Iterable[object]) -> None:
        self.routes = [
            r for r in routes if isinstance(r, Route) and not r.path.endswith("{rest:path}")
        ]

    def module(self, method: str, url: str) -> str:
        path = urlsplit(url).path
        if not path.startswith("/"):
            path = "/v1.0/" + path
        for r in self.routes:
            if r.path_regex.match(path) and (r.methods is None or method in r.methods):
                return str(getattr(r.endpoint, "__module__", "?")).rsplit(".", 1)[-1]
        return "unserved"


def is_not_served(resp: httpx.Response) -> bool:
    if resp.status_code != 400:
        return False
    try:
        message = resp.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(message, str) and message.startswith(NOT_SERVED)


class Walker:
    def __init__(self, http: httpx.Client, model: Model, routes: RouteIndex) -> None:
        self.http, self.model, self.routes = http, model, routes
        self.report = Report()
        self.queue: deque[Node] = deque()
        self.seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        self.templates: dict[str, _Template] = {}
        self.ops: dict[TypeRef, list[Operation]] = {}
        self.selected: set[str] = set()
        self.kinds: dict[str, bool] = {}

    # -- checking -----------------------------------------------------------------------------

    def check(self, method: str, url: str, body: Any, ref: TypeRef | None, status: int) -> None:
        """Validate a 2xx answer of `method url` against `ref` and note the types it holds."""
        module = self.routes.module(method, url)
        if body is None and ref is not None:
            # Directory updates answer 204 without a body (user-update, group-update).
            if not (method == "PATCH" and status == 204):
                self.finding(module, method, url, f"{status} without a body; expected {ref}")
            return
        if ref is None:
            if body is not None:
                self.finding(module, method, url, f"{status} with a body, but the operation "
                             "returns nothing")  # fmt: skip
            return
        if ref.collection:
            if not isinstance(body, dict) or not isinstance(body.get("value"), list):
                self.finding(module, method, url, f"expected {{'value': [...]}} for {ref}")
                return
            envelope = {k: v for k, v in body.items() if k != "value"}
            for key in envelope:
                if not key.startswith("@odata."):
                    self.finding(module, method, url, f"$.{key}: not OData control information")
            problems = self.model.violations(body["value"], ref)
            objects: list[Any] = body["value"]
        else:
            problems = self.model.violations(body, ref)
            objects = [body]
        for p in problems:
            self.finding(module, method, url, p.replace("$", "value", 1) if ref.collection else p)
        for obj in objects:
            concrete = self.concrete(obj, ref.name)
            self.report.reached.setdefault(concrete, f"{method} {url}")
            if method == "GET":
                self.report.walked.add(concrete)

    def finding(self, module: str, method: str, url: str, message: str) -> None:
        self.report.findings.append(Finding(module, method, url, message))

    def concrete(self, obj: Any, declared: str) -> str:
        named = obj.get("@odata.type") if isinstance(obj, dict) else None
        if isinstance(named, str):
            q = qualify(named)
            if q in self.model.types and self.model.derives_from(q, declared):
                return q
        return declared

    # -- requests -----------------------------------------------------------------------------

    def get(self, url: str, params: Iterable[tuple[str, str]] = ()) -> httpx.Response:
        self.report.requests += 1
        resp = self.http.get(url, params=list(params) or None)
        if resp.status_code >= 500:
            self.finding(
                self.routes.module("GET", url), "GET", url, f"server error {resp.status_code}"
            )
        return resp

    # -- the walk -----------------------------------------------------------------------------

    def run(self) -> Report:
        for name, ref in sorted(self.model.container.items()):
            kind: Kind = "collection" if ref.collection else "single"
            self.push(Node(name, name, ref, kind))
        while self.queue:
            self.visit(self.queue.popleft())
        return self.report

    def push(self, node: Node) -> None:
        key = (node.url, node.params)
        if key in self.seen or node.template.count("/") >= MAX_SEGMENTS:
            return
        self.seen.add(key)
        self.queue.append(node)

    def visit(self, node: Node) -> None:
        state = self.templates.get(node.template)
        if state is None:
            state = self.templates[node.template] = _Template(self.polymorphic(node.type.name))
        if state.dead or state.saturated():
            if state.dead and node.kind == "single":
                self.through(node)
            return
        resp = self.get(node.url, node.params)
        state.attempts += 1
        if is_not_served(resp):
            state.dead = True
            self.report.not_served.add(node.template)
            if node.kind == "single":
                self.through(node)
            return
        if resp.status_code >= 300 or not resp.content:
            self.report.refused.setdefault(node.template, set()).add(resp.status_code)
            return
        body = resp.json()
        self.check("GET", node.url, body, node.type, resp.status_code)
        data = bool(body.get("value")) if node.type.collection else True
        if data:
            state.hits += 1
            self.report.served.add(node.template)
            self.report.examples.setdefault(node.template, (node.url, node.type))
        if node.type.collection:
            self.collection(node, body, first=state.hits == 1 and data)
        elif node.kind == "single":
            self.navigate(node.url, node.template, self.concrete(body, node.type.name))
            self.keyed(body, node.type.name)

    def polymorphic(self, type_name: str) -> bool:
        """Whether the type has derived types (a collection of it may mix kinds)."""
        if type_name not in self.kinds:
            derived = self.model.derived(type_name) if type_name in self.model.types else []
            self.kinds[type_name] = len(derived) > 1
        return self.kinds[type_name]

    def through(self, node: Node) -> None:
        """Walk on below an unserved single-valued navigation property."""
        if node.blind < MAX_BLIND:
            self.navigate(node.url, node.template, node.type.name, node.blind + 1)

    def collection(self, node: Node, body: dict[str, Any], first: bool) -> None:
        pages = 1
        while True:
            for member in body.get("value") or []:
                if node.kind != "function":
                    self.member(node, member)
            if node.kind == "function" and isinstance(body.get("@odata.deltaLink"), str):
                self.link(node, body["@odata.deltaLink"])
            link = body.get("@odata.nextLink")
            if not isinstance(link, str) or pages >= MAX_PAGES:
                break
            resp = self.get(link)
            if resp.status_code >= 300:
                break
            body = resp.json()
            self.check("GET", link, body, node.type, resp.status_code)
            pages += 1
        if first and node.kind == "collection":
            self.functions(node.url, node.template, node.type)
            self.expand_probes(node)
            self.select_probe(node)

    def link(self, node: Node, url: str) -> None:
        """A deltaLink starts the next round: ask it once, as a client would."""
        resp = self.get(url)
        if resp.status_code < 300 and resp.content:
            self.check("GET", url, resp.json(), node.type, resp.status_code)

    def member(self, coll: Node, obj: Any) -> None:
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            return
        element = coll.type.name
        concrete = self.concrete(obj, element)
        url = f"{coll.url}/{quote(obj['id'], safe='')}"
        template = f"{coll.template}/{{}}"
        if not coll.indexable:
            return  # IndexableByKey=false: not addressable, nothing below it either
        self.push(Node(url, template, TypeRef(concrete), "entity"))
        if concrete != element:
            url, template = f"{url}/{concrete}", f"{template}/{concrete}"
        self.navigate(url, template, concrete)
        self.keyed(obj, concrete)

    def keyed(self, obj: Any, type_name: str) -> None:
        """Members of collections Graph does not list, named by this object (KEY_SOURCES)."""
        for (owner, prop), collection in KEY_SOURCES.items():
            key = obj.get(prop) if isinstance(obj, dict) else None
            if self.model.derives_from(type_name, owner) and isinstance(key, str):
                ref = self.model.resolve_path(f"{collection}/{key}")
                assert ref is not None
                url = f"{collection}/{quote(key, safe='')}"
                self.push(Node(url, f"{collection}/{{}}", ref, "entity"))
                self.navigate(url, f"{collection}/{{}}", ref.name)

    def navigate(self, url: str, template: str, type_name: str, blind: int = 0) -> None:
        """Queue every navigable navigation property and parameterless function of the type."""
        if type_name not in self.model.types:
            return  # another namespace's type (externalConnectors...): not this schema
        for nav in self.model.navigation(type_name).values():
            if not nav.navigable:
                continue
            if any(o not in QUERY_VALUES for o in nav.required_query_options):
                continue
            params = tuple((o, QUERY_VALUES[o]) for o in nav.required_query_options)
            kind: Kind = "collection" if nav.type.collection else "single"
            self.push(
                Node(
                    f"{url}/{nav.name}",
                    f"{template}/{nav.name}",
                    nav.type,
                    kind,
                    blind=blind if kind == "single" else 0,
                    indexable=nav.indexable_by_key,
                    params=params,
                )
            )
        self.functions(url, template, TypeRef(type_name))

    def functions(self, url: str, template: str, binding: TypeRef) -> None:
        if binding not in self.ops:
            self.ops[binding] = [
                op
                for op in self.model.bound_to(binding)
                if op.kind == "function" and not op.parameters and op.returns is not None
            ]
        for op in self.ops[binding]:
            assert op.returns is not None
            name = f"{op.name}()"
            self.push(Node(f"{url}/{name}", f"{template}/{name}", op.returns, "function"))

    def expand_probes(self, node: Node) -> None:
        """Ask a listed collection once with `$expand` of each contained navigation property:
        whatever comes back inline must be of the navigation property's type."""
        for nav in self.model.navigation(node.type.name).values():
            if nav.navigable and nav.contains_target and not nav.required_query_options:
                resp = self.get(node.url, [*node.params, ("$expand", nav.name)])
                if resp.status_code < 300 and resp.content:
                    url = f"{node.url}?$expand={nav.name}"
                    self.check("GET", url, resp.json(), node.type, resp.status_code)

    def select_probe(self, node: Node) -> None:
        """Ask for every CSDL property of the type (once per type); drop what is refused."""
        if node.type.name in self.selected:
            return
        self.selected.add(node.type.name)
        wanted = list(self.model.properties(node.type.name))
        for _ in range(len(wanted) + 1):
            resp = self.get(node.url, [*node.params, ("$select", ",".join(wanted))])
            refused = _REFUSED_PROPERTY.search(resp.text) if resp.status_code == 400 else None
            if refused is None:
                break
            wanted = [p for p in wanted if p.lower() != refused.group(1).lower()]
        if resp.status_code < 300 and resp.content:
            url = f"{node.url}?$select=({len(wanted)} properties)"
            self.check("GET", url, resp.json(), node.type, resp.status_code)


def walk(http: httpx.Client, model: Model, routes: RouteIndex) -> Report:
    return Walker(http, model, routes).run()
