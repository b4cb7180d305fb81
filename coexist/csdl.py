"""Microsoft Graph v1.0's published entity model (CSDL), and a check of JSON against it.

`data/graph-v1.0-csdl.xml.gz` is Microsoft's metadata (see data/README.md). Only
the `microsoft.graph` schema is read: other namespaces of the same document
(`microsoft.graph.security`, `microsoft.graph.termStore` ...) reuse type names
such as `user` or `group` for different types. Pure (stdlib gzip + xml.etree),
loaded once per process (`model()`).

`violations(obj, type_name)` says where a JSON value is not an instance of a
v1.0 type: a property the type (or the concrete type its `@odata.type` names,
which must be the type or derive from it) does not declare, a navigation
property the type lacks, a value of the wrong shape (DateTimeOffset in ISO 8601
with an offset or Z, Date, integers in range, Guid, base64 binary ...), an enum
value that is not a member (flags: comma-separated members), null where the
CSDL says `Nullable="false"`. OData control information (`@odata.*`,
`name@odata.*`) and Graph's delta annotation `@removed` are allowed.

Types Graph marks `OpenType="true"` (user, group, message, event, contact ...)
are checked as closed: their dynamic properties are schema/open extensions
(`ext…_name`, `extension` entities), which the sandbox never serves and the
product never reads, so any undeclared property is a violation.
"""

from __future__ import annotations

import datetime as dt
import gzip
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal

DATA_FILE = "graph-v1.0-csdl.xml.gz"
NAMESPACE = "microsoft.graph"
ALIAS = "graph"
_EDM = "{http://docs.oasis-open.org/odata/ns/edm}"
_COLLECTION = re.compile(r"^Collection\((.+)\)$")
# Graph's delta responses mark deletions with this instance annotation (delta-query-overview).
DELTA_REMOVED = "@removed"


# -- the model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TypeRef:
    """A type as a property, parameter or return type names it: qualified name + collection."""

    name: str
    collection: bool = False

    @staticmethod
    def parse(raw: str) -> TypeRef:
        m = _COLLECTION.match(raw.strip())
        inner = m.group(1) if m else raw.strip()
        return TypeRef(qualify(inner), m is not None)

    def __str__(self) -> str:
        return f"Collection({self.name})" if self.collection else self.name


def qualify(name: str) -> str:
    """`graph.user` / `user` / `#microsoft.graph.user` -> `microsoft.graph.user`; Edm and
    other namespaces' names are kept."""
    name = name.strip().lstrip("#")
    if name.startswith(f"{ALIAS}."):
        return f"{NAMESPACE}.{name[len(ALIAS) + 1 :]}"
    if "." not in name:
        return f"{NAMESPACE}.{name}"
    return name


@dataclass(frozen=True)
class Property:
    name: str
    type: TypeRef
    nullable: bool


@dataclass(frozen=True)
class NavigationProperty:
    name: str
    type: TypeRef
    nullable: bool
    contains_target: bool
    navigable: bool  # False: NavigationRestrictions Navigability None (only $expand reaches it)
    indexable_by_key: bool  # False: IndexableByKey false (members are not addressable by id)
    required_query_options: tuple[str, ...]  # custom query options a read must carry


@dataclass(frozen=True)
class StructuredType:
    name: str  # qualified
    kind: Literal["entity", "complex"]
    base: str | None  # qualified
    abstract: bool
    open_type: bool
    has_stream: bool
    own_properties: Mapping[str, Property]
    own_navigation: Mapping[str, NavigationProperty]


@dataclass(frozen=True)
class EnumType:
    name: str
    members: tuple[str, ...]
    is_flags: bool


@dataclass(frozen=True)
class Parameter:
    name: str
    type: TypeRef
    nullable: bool


@dataclass(frozen=True)
class Operation:
    name: str
    kind: Literal["action", "function"]
    binding: TypeRef | None  # None: unbound
    parameters: tuple[Parameter, ...]  # without the binding parameter
    returns: TypeRef | None


@dataclass
class Model:
    """The `microsoft.graph` schema of the v1.0 CSDL."""

    types: dict[str, StructuredType]
    enums: dict[str, EnumType]
    operations: tuple[Operation, ...]
    container: dict[str, TypeRef]  # entity set (collection) / singleton name -> type
    _props: dict[str, dict[str, Property]] = field(default_factory=dict, repr=False)
    _navs: dict[str, dict[str, NavigationProperty]] = field(default_factory=dict, repr=False)
    _bound: dict[str, list[Operation]] = field(default_factory=dict, repr=False)

    def structured(self, name: str) -> StructuredType:
        """The entity or complex type (KeyError if v1.0 has none of that name)."""
        return self.types[qualify(name)]

    def chain(self, name: str) -> Iterator[StructuredType]:
        """The type, then its base types up to the root."""
        current: str | None = qualify(name)
        while current is not None:
            t = self.types[current]
            yield t
            current = t.base

    def properties(self, name: str) -> dict[str, Property]:
        """Every structural property of the type, base types' included."""
        key = qualify(name)
        if key not in self._props:
            out: dict[str, Property] = {}
            for t in reversed(list(self.chain(key))):
                out.update(t.own_properties)
            self._props[key] = out
        return self._props[key]

    def navigation(self, name: str) -> dict[str, NavigationProperty]:
        """Every navigation property of the type, base types' included."""
        key = qualify(name)
        if key not in self._navs:
            out: dict[str, NavigationProperty] = {}
            for t in reversed(list(self.chain(key))):
                out.update(t.own_navigation)
            self._navs[key] = out
        return self._navs[key]

    def derives_from(self, name: str, base: str) -> bool:
        """Whether `name` is `base` or derives from it."""
        wanted = qualify(base)
        return any(t.name == wanted for t in self.chain(name))

    def derived(self, name: str) -> list[str]:
        """Every type that is `name` or derives from it."""
        return [t for t in self.types if self.derives_from(t, name)]

    def bound(self, name: str, binding: TypeRef) -> Operation | None:
        """The action or function `name` bound to `binding` (or to one of its base types,
        nearest first), as OData resolves an overloaded bound operation."""
        if binding.name not in self.types:
            return None
        if not self._bound:
            for o in self.operations:
                if o.binding is not None:
                    self._bound.setdefault(o.name, []).append(o)
        candidates = self._bound.get(name, [])
        for t in self.chain(binding.name):
            for op in candidates:
                assert op.binding is not None
                if op.binding.name == t.name and op.binding.collection == binding.collection:
                    return op
        return None

    def bound_to(self, binding: TypeRef) -> list[Operation]:
        """Every operation bound to `binding` or a base of it (the nearest overload per name)."""
        names = {o.name for o in self.operations if o.binding is not None}
        found = [self.bound(n, binding) for n in sorted(names)]
        return [o for o in found if o is not None]

    def resolve_path(self, path: str) -> TypeRef | None:
        """The type a URL path addresses (see the module function `resolve_path`)."""
        return _resolve(self, path)

    def violations(self, value: Any, type_name: str | TypeRef) -> list[str]:
        ref = type_name if isinstance(type_name, TypeRef) else TypeRef.parse(type_name)
        out: list[str] = []
        _Checker(self, out).value(value, ref, True, "$")
        return out


# -- loading --------------------------------------------------------------------------------------


def _bool(el: ET.Element, attr: str, default: bool) -> bool:
    raw = el.get(attr)
    return default if raw is None else raw.strip().lower() == "true"


def _navigation(el: ET.Element) -> NavigationProperty:
    navigable = True
    indexable = True
    required: list[str] = []
    for ann in el.findall(f"{_EDM}Annotation"):
        term = ann.get("Term", "")
        if term.endswith("NavigationRestrictions"):
            for pv in ann.iter(f"{_EDM}PropertyValue"):
                if pv.get("Property") == "Navigability":
                    member = pv.findtext(f"{_EDM}EnumMember") or pv.get("EnumMember") or ""
                    navigable = not member.endswith("/None")
        if term.endswith("IndexableByKey"):
            indexable = _bool(ann, "Bool", True)
        for options in ann.iter(f"{_EDM}PropertyValue"):
            if options.get("Property") != "CustomQueryOptions":
                continue
            for record in options.iter(f"{_EDM}Record"):
                values = {pv.get("Property"): pv for pv in record.findall(f"{_EDM}PropertyValue")}
                name, req = values.get("Name"), values.get("Required")
                if name is not None and req is not None and _bool(req, "Bool", False):
                    required.append(name.get("String", ""))
    return NavigationProperty(
        name=el.get("Name", ""),
        type=TypeRef.parse(el.get("Type", "")),
        nullable=_bool(el, "Nullable", True),
        contains_target=_bool(el, "ContainsTarget", False),
        navigable=navigable,
        indexable_by_key=indexable,
        required_query_options=tuple(required),
    )


def _structured(el: ET.Element, kind: Literal["entity", "complex"]) -> StructuredType:
    props = {
        p.get("Name", ""): Property(
            p.get("Name", ""), TypeRef.parse(p.get("Type", "")), _bool(p, "Nullable", True)
        )
        for p in el.findall(f"{_EDM}Property")
    }
    navs = {n.get("Name", ""): _navigation(n) for n in el.findall(f"{_EDM}NavigationProperty")}
    base = el.get("BaseType")
    return StructuredType(
        name=qualify(el.get("Name", "")),
        kind=kind,
        base=qualify(base) if base else None,
        abstract=_bool(el, "Abstract", False),
        open_type=_bool(el, "OpenType", False),
        has_stream=_bool(el, "HasStream", False),
        own_properties=props,
        own_navigation=navs,
    )


def _operation(el: ET.Element, kind: Literal["action", "function"]) -> Operation:
    params = [
        Parameter(p.get("Name", ""), TypeRef.parse(p.get("Type", "")), _bool(p, "Nullable", True))
        for p in el.findall(f"{_EDM}Parameter")
    ]
    binding = None
    if _bool(el, "IsBound", False) and params:
        binding, params = params[0].type, params[1:]
    ret = el.find(f"{_EDM}ReturnType")
    return Operation(
        name=el.get("Name", ""),
        kind=kind,
        binding=binding,
        parameters=tuple(params),
        returns=TypeRef.parse(ret.get("Type", "")) if ret is not None else None,
    )


def parse(xml: bytes) -> Model:
    """The `microsoft.graph` schema of a CSDL document."""
    root = ET.fromstring(xml)
    schema = next(
        s for s in root.iter(f"{_EDM}Schema") if s.get("Namespace") == NAMESPACE
    )  # other namespaces reuse type names: never merged in
    types: dict[str, StructuredType] = {}
    for el in schema.findall(f"{_EDM}EntityType"):
        t = _structured(el, "entity")
        types[t.name] = t
    for el in schema.findall(f"{_EDM}ComplexType"):
        t = _structured(el, "complex")
        types[t.name] = t
    enums = {
        qualify(e.get("Name", "")): EnumType(
            qualify(e.get("Name", "")),
            tuple(m.get("Name", "") for m in e.findall(f"{_EDM}Member")),
            _bool(e, "IsFlags", False),
        )
        for e in schema.findall(f"{_EDM}EnumType")
    }
    operations = tuple(
        [_operation(el, "action") for el in schema.findall(f"{_EDM}Action")]
        + [_operation(el, "function") for el in schema.findall(f"{_EDM}Function")]
    )
    container: dict[str, TypeRef] = {}
    for box in schema.findall(f"{_EDM}EntityContainer"):
        for es in box.findall(f"{_EDM}EntitySet"):
            container[es.get("Name", "")] = TypeRef(qualify(es.get("EntityType", "")), True)
        for sg in box.findall(f"{_EDM}Singleton"):
            container[sg.get("Name", "")] = TypeRef(qualify(sg.get("Type", "")), False)
    return Model(types, enums, operations, container)


@cache
def model() -> Model:
    """The shipped v1.0 model (parsed once per process, a fraction of a second)."""
    raw = resources.files("coexist").joinpath("data", DATA_FILE).read_bytes()
    return parse(gzip.decompress(raw))


def violations(obj: Any, type_name: str) -> list[str]:
    """Where `obj` (parsed JSON) is not a v1.0 instance of `type_name` (e.g. `user`,
    `microsoft.graph.mailFolder`, `Collection(graph.event)`); empty when it is."""
    return model().violations(obj, type_name)


# -- primitive shapes ------------------------------------------------------------------------------

_DATETIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,12})?)?(Z|[+-]\d{2}:\d{2})$"
)
_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_TIME = re.compile(r"^(\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,12})?)?$")
_DURATION = re.compile(r"^-?P(?=\d|T\d)(?:\d+D)?(?:T(?=\d)(?:\d+H)?(?:\d+M)?(?:\d+(?:\.\d+)?S)?)?$")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# OData JSON says base64url for Edm.Binary; Graph serves standard base64 (contentBytes,
# conversationIndex): both alphabets are accepted.
_BASE64 = re.compile(r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")
_BASE64URL = re.compile(r"^[A-Za-z0-9_-]*={0,2}$")
_INT_RANGES = {
    "Edm.Byte": (0, 255),
    "Edm.SByte": (-128, 127),
    "Edm.Int16": (-(2**15), 2**15 - 1),
    "Edm.Int32": (-(2**31), 2**31 - 1),
    "Edm.Int64": (-(2**63), 2**63 - 1),
}
_FLOATS = ("Edm.Double", "Edm.Single", "Edm.Decimal")
_SPECIAL_FLOATS = ("INF", "-INF", "NaN")  # OData JSON's spelling of IEEE 754 specials


def _valid_date(y: str, m: str, d: str) -> bool:
    try:
        dt.date(int(y), int(m), int(d))
    except ValueError:
        return False
    return True


def _valid_time(h: str, mi: str, s: str | None) -> bool:
    return int(h) < 24 and int(mi) < 60 and (s is None or int(s) < 60)


def primitive_problem(value: Any, edm: str) -> str | None:
    """Why `value` is not a JSON value of the primitive type `edm` (None when it is)."""
    if edm in _INT_RANGES:
        lo, hi = _INT_RANGES[edm]
        ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
        return None if ok else f"expected {edm}, got {value!r}"
    if edm in _FLOATS:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return None if number or value in _SPECIAL_FLOATS else f"expected {edm}, got {value!r}"
    if edm == "Edm.Boolean":
        return None if isinstance(value, bool) else f"expected Edm.Boolean, got {value!r}"
    if edm in ("Edm.Untyped", "Edm.PrimitiveType") or edm.startswith("Edm.Geo"):
        return None
    if not isinstance(value, str):
        return f"expected {edm} (a string), got {value!r}"
    return _string_problem(value, edm)


def _string_problem(value: str, edm: str) -> str | None:
    if edm == "Edm.DateTimeOffset":
        m = _DATETIME.match(value)
        ok = m is not None and _valid_date(*m.groups()[:3]) and _valid_time(*m.groups()[3:6])
        return None if ok else f"not an ISO 8601 DateTimeOffset with offset or Z: {value!r}"
    if edm == "Edm.Date":
        m = _DATE.match(value)
        return None if m and _valid_date(*m.groups()) else f"not an Edm.Date: {value!r}"
    if edm == "Edm.TimeOfDay":
        m = _TIME.match(value)
        return None if m and _valid_time(*m.groups()) else f"not an Edm.TimeOfDay: {value!r}"
    if edm == "Edm.Duration":
        return None if _DURATION.match(value) else f"not an Edm.Duration: {value!r}"
    if edm == "Edm.Guid":
        return None if _GUID.match(value) else f"not an Edm.Guid: {value!r}"
    if edm in ("Edm.Binary", "Edm.Stream"):
        url_safe = bool(_BASE64URL.match(value)) and len(value.rstrip("=")) % 4 != 1
        b64 = bool(_BASE64.match(value)) or url_safe
        return None if b64 else f"not base64 ({edm}): {value[:40]!r}"
    if edm == "Edm.String":
        return None
    return f"unknown primitive type {edm}"


# -- the checker ----------------------------------------------------------------------------------


class _Checker:
    def __init__(self, m: Model, out: list[str]) -> None:
        self.m, self.out = m, out

    def fail(self, path: str, message: str) -> None:
        self.out.append(f"{path}: {message}")

    def value(self, value: Any, ref: TypeRef, nullable: bool, path: str) -> None:
        if ref.collection:
            if not isinstance(value, list):
                self.fail(path, f"expected a JSON array ({ref}), got {_kind(value)}")
                return
            element = TypeRef(ref.name)
            for n, item in enumerate(value):
                self.value(item, element, nullable, f"{path}[{n}]")
            return
        if value is None:
            if not nullable:
                self.fail(path, f"null, but the CSDL declares it Nullable=false ({ref.name})")
            return
        if ref.name.startswith("Edm."):
            problem = primitive_problem(value, ref.name)
            if problem:
                self.fail(path, problem)
        elif ref.name in self.m.enums:
            self.enum(value, self.m.enums[ref.name], path)
        elif ref.name in self.m.types:
            self.structured(value, ref.name, path)
        else:
            self.fail(path, f"type {ref.name} is not in the microsoft.graph v1.0 schema")

    def enum(self, value: Any, enum: EnumType, path: str) -> None:
        if not isinstance(value, str):
            self.fail(path, f"expected a member of {enum.name}, got {value!r}")
            return
        parts = [p.strip() for p in value.split(",")] if enum.is_flags else [value]
        bad = [p for p in parts if p not in enum.members]
        if bad or not parts:
            self.fail(path, f"{value!r} is not a member of {enum.name} {list(enum.members)}")

    def concrete(self, obj: dict[str, Any], declared: str, path: str) -> str | None:
        """The type `obj` is checked against: its `@odata.type` if that derives from
        `declared`, else None (reported)."""
        named = obj.get("@odata.type")
        if named is None:
            return declared
        if not isinstance(named, str):
            self.fail(path, f"@odata.type is not a string: {named!r}")
            return None
        concrete = qualify(named)
        if concrete not in self.m.types:
            self.fail(path, f"@odata.type {named!r} is not a v1.0 type")
            return None
        if not self.m.derives_from(concrete, declared):
            self.fail(path, f"@odata.type {named!r} does not derive from {declared}")
            return None
        return concrete

    def structured(self, obj: Any, declared: str, path: str) -> None:
        if not isinstance(obj, dict):
            self.fail(path, f"expected an object of type {declared}, got {_kind(obj)}")
            return
        name = self.concrete(obj, declared, path)
        if name is None:
            return
        props, navs = self.m.properties(name), self.m.navigation(name)
        for key, v in obj.items():
            where = f"{path}.{key}"
            if key.startswith("@"):
                if not (key.startswith("@odata.") or key == DELTA_REMOVED):
                    self.fail(where, "an annotation that is neither @odata.* nor @removed")
            elif "@" in key:
                owner, _, term = key.partition("@")
                if not term.startswith("odata.") or (owner not in props and owner not in navs):
                    self.fail(where, f"annotation of {owner!r}, which {name} does not declare")
            elif key in props:
                p = props[key]
                self.value(v, p.type, p.nullable, where)
            elif key in navs:
                nav = navs[key]
                self.value(v, nav.type, nav.nullable, where)
            else:
                self.fail(where, f"not a property of {name} in Graph v1.0")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# -- URL paths --------------------------------------------------------------------------------------


def _operation_name(segment: str) -> str:
    name = segment[:-2] if segment.endswith("()") else segment
    return name.removeprefix(f"{NAMESPACE}.")


def resolve_path(path: str) -> TypeRef | None:
    """The type a Graph v1.0 URL path addresses, per the CSDL (None: an operation that
    returns nothing). `users/{id}/mailFolders/{id}/messages` -> Collection(message);
    `.../messages/delta()` -> delta's return type; a cast segment
    (`.../members/{id}/microsoft.graph.user`) narrows. ValueError for a path the model
    does not have (a media `$value`, `$count`, `$ref`, an unknown segment)."""
    return model().resolve_path(path)


def _resolve(m: Model, path: str) -> TypeRef | None:
    segments = [s for s in path.split("?", 1)[0].strip("/").split("/") if s]
    if segments and segments[0] == "v1.0":
        segments = segments[1:]
    if not segments or segments[0] not in m.container:
        raise ValueError(f"{path!r}: no entity set or singleton {segments[:1]}")
    current: TypeRef | None = m.container[segments[0]]
    for seg in segments[1:]:
        if current is None:
            raise ValueError(f"{path!r}: {seg!r} follows an operation without a result")
        current = _step(m, current, seg, path)
    return current


def _step(m: Model, current: TypeRef, seg: str, path: str) -> TypeRef | None:
    if seg.startswith("$"):
        raise ValueError(f"{path!r}: {seg} is not a JSON resource")
    cast = qualify(seg) if seg.startswith(f"{NAMESPACE}.") else None
    if cast in m.types and m.derives_from(cast, current.name):
        return TypeRef(cast, current.collection)
    op = m.bound(_operation_name(seg), current)
    if op is not None:
        return op.returns
    if current.collection:
        return TypeRef(current.name)  # a key
    nav = m.navigation(current.name).get(seg)
    if nav is None:
        raise ValueError(
            f"{path!r}: {current.name} has no navigation property or operation {seg!r}"
        )
    return nav.type
