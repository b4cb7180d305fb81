"""Pure OData helpers for the Graph face: `$top`, `$select`, `$filter`, `$orderby`, skip tokens.

Nothing here knows about HTTP or the tenant model: filters compile to predicates
over the Graph JSON of an object (the dict the face would serialize), so the
same code serves users, groups and members.

Supported `$filter` grammar (the directory subset Graph documents in
learn.microsoft.com/graph/filter-query-parameter and /graph/aad-advanced-queries):
`eq`, `ne`, `ge`, `le`, `in (...)`, `startswith(p,'x')`, `endswith(p,'x')`,
`and`, `or`, `not`, parentheses, lambdas `p/any(x:x eq 'v')` and
`p/any(x:x/skuId eq <guid>)`, and `p/$count eq n`. String comparison is
case-insensitive, as directory queries are. Operators Graph only serves as
*advanced queries* (`ne`, `not`, `endswith`, `/$count`) are flagged so the
caller can demand `ConsistencyLevel: eventual` + `$count=true`. Every clause names a
property (the directory filters through a property's index): `1 eq 1`, a bare `true` or a
function of two literals is refused, never evaluated (`clause_without_property`).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_PAGE = 999  # users/groups: "The default and maximum page sizes are 100 and 999" (user-list)
DEFAULT_PAGE = 100

Record = Mapping[str, Any]  # an object's Graph JSON (may compute lazily)
Env = dict[str, Any]
Getter = Callable[[Record, Env], Any]
Predicate = Callable[[Record], bool]


class ODataQueryError(Exception):
    """A query option Graph rejects with 400; `code`/`message` are Graph's."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


# -- messages (kept in one place; *unverified* ones say so) ---------------------------------------


def unknown_property(name: str, type_name: str) -> ODataQueryError:
    # OData library message Graph returns for an unknown $select/$filter property.
    return ODataQueryError(
        "BadRequest",
        f"Could not find a property named '{name}' on type 'microsoft.graph.{type_name}'.",
    )


def bad_page_size(raw: str) -> ODataQueryError:
    # *unverified* wording (code Request_UnsupportedQuery as for other directory query errors).
    return ODataQueryError(
        "Request_UnsupportedQuery",
        f"Invalid page size specified: '{raw}'. Must be between 1 and {MAX_PAGE} inclusive.",
    )


def syntax_error(text: str, pos: int) -> ODataQueryError:
    # *unverified* wording; the OData parser's "Syntax error at position n in '...'".
    return ODataQueryError(
        "BadRequest", f"Invalid filter clause: Syntax error at position {pos} in '{text}'."
    )


def advanced_query_required(operator: str) -> ODataQueryError:
    # Graph names the missing header in this form since 2024 (seen for `Raw count (/$count)`,
    # github.com/azurekid/ScEntra/issues/17); the operator variant is *unverified*.
    return ODataQueryError(
        "Request_UnsupportedQuery",
        f"Operator '{operator}' is not supported because the 'ConsistencyLevel:eventual' header "
        "is missing. Refer to https://aka.ms/graph-docs/advanced-queries for more information",
    )


def count_requires_eventual() -> ODataQueryError:
    # Seen for `$count` without the header (microsoft-graph-docs issues 13226, 15067).
    return ODataQueryError("Request_BadRequest", "$count is not currently supported.")


def raw_count_requires_eventual() -> ODataQueryError:
    # Verbatim from a 2025 Graph response (github.com/azurekid/ScEntra/issues/17).
    return ODataQueryError(
        "Request_UnsupportedQuery",
        "Raw count (/$count) is not supported because the 'ConsistencyLevel:eventual' header is "
        "missing. Refer to https://aka.ms/graph-docs/advanced-queries for more information",
    )


def unsupported_query() -> ODataQueryError:
    return ODataQueryError("Request_UnsupportedQuery", "Unsupported Query.")


def clause_without_property(text: str) -> ODataQueryError:
    # A clause that names no property (`1 eq 1`, `'a' eq 'a'`, a bare `true`,
    # `startswith('a','a')`): the directory serves a filter only through a property's index,
    # so it cannot run one; Graph answers 400. *unverified*: the code and wording for this
    # form are not published; the directory's generic refusal of a filter form it does not
    # serve is Request_UnsupportedQuery "Unsupported Query." (seen for unsupported forms in
    # microsoftgraph/microsoft-graph-docs-contrib issues 3157 and 8789).
    del text  # the directory's answer does not quote the filter
    return unsupported_query()


def bad_count(raw: str) -> ODataQueryError:
    # Microsoft.OData.Core's message for a `$count` that is neither `true` nor `false`
    # (resource ODataUriParser_InvalidCount in Microsoft.OData.Core.txt; its ParseCount
    # compares the trimmed value with `true` and `false` exactly, so `True` is refused too).
    # Graph answers the library's parse errors as 400 BadRequest with its message, as for
    # `unknown_property`; *unverified* that `$count` takes the same path.
    return ODataQueryError("BadRequest", f"'{raw}' is not a valid count option.")


# -- simple options -------------------------------------------------------------------------------


def normalize_query(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Query options by lower-case name without `$` (v1.0 accepts `top` as well as `$top`)."""
    return {k.lower().lstrip("$"): v for k, v in items}


def parse_top(raw: str | None, default: int = DEFAULT_PAGE, maximum: int = MAX_PAGE) -> int:
    if raw is None:
        return default
    try:
        top = int(raw)
    except ValueError as exc:
        raise bad_page_size(raw) from exc
    if not 1 <= top <= maximum:
        raise bad_page_size(raw)
    return top


def parse_select(raw: str | None, known: Iterable[str], type_name: str) -> list[str] | None:
    """The `$select` properties in Graph's spelling; None when absent."""
    if raw is None or not raw.strip():
        return None
    by_lower = {k.lower(): k for k in known}
    out: list[str] = []
    for part in raw.split(","):
        name = part.strip()
        if not name:
            continue
        real = by_lower.get(name.lower())
        if real is None:
            raise unknown_property(name, type_name)
        if real not in out:
            out.append(real)
    return out


def parse_count(raw: str | None) -> bool:
    """`$count`: absent or `false` is False, `true` True; anything else is Graph's 400."""
    if raw is None:
        return False
    value = raw.strip()
    if value not in ("true", "false"):
        raise bad_count(raw)
    return value == "true"


@dataclass(frozen=True)
class OrderBy:
    prop: str | None  # None: the default order (object id)
    descending: bool = False


def parse_orderby(raw: str | None, allowed: Sequence[str]) -> OrderBy:
    if raw is None or not raw.strip():
        return OrderBy(None)
    parts = raw.split()
    by_lower = {a.lower(): a for a in allowed}
    prop = by_lower.get(parts[0].lower())
    direction = parts[1].lower() if len(parts) > 1 else "asc"
    if prop is None or len(parts) > 2 or direction not in ("asc", "desc"):
        raise unsupported_query()
    return OrderBy(prop, direction == "desc")


# -- skip tokens ----------------------------------------------------------------------------------


def encode_skiptoken(last_key: Sequence[str]) -> str:
    """An opaque token holding the sort key of the last object served (keyset paging)."""
    data = json.dumps(list(last_key), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def decode_skiptoken(token: str) -> tuple[str, ...]:
    try:
        pad = "=" * (-len(token) % 4)
        value = json.loads(base64.urlsafe_b64decode(token + pad))
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
    except (ValueError, TypeError):
        pass
    # *unverified* wording for a tampered token.
    raise ODataQueryError("Request_BadRequest", "Invalid skip token.")


# -- $filter --------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<punct>[(),:])|(?P<word>[A-Za-z0-9_$./@+-]+))"
)
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_COMPARE = ("eq", "ne", "ge", "le", "gt", "lt")
_ADVANCED_OPS = {"ne": "NotEqualsMatch", "not": "Not", "endswith": "endsWith"}


@dataclass(frozen=True)
class _Tok:
    kind: str  # str | punct | word | end
    text: str
    pos: int


@dataclass
class CompiledFilter:
    """A compiled `$filter`: `matches(record)`, plus what Graph needs to decide admission."""

    matches: Predicate
    advanced: list[str] = field(default_factory=list)  # advanced-query operators used


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise syntax_error(text, pos)
        kind = m.lastgroup or "word"
        toks.append(_Tok(kind, m.group(kind), m.start(kind)))
        pos = m.end()
    toks.append(_Tok("end", "", len(text)))
    return toks


def _fold(v: Any) -> Any:
    return v.lower() if isinstance(v, str) else v


def _eq(a: Any, b: Any) -> bool:
    return bool(_fold(a) == _fold(b))


def _order(op: str, a: Any, b: Any) -> bool:
    if a is None or b is None:
        return False
    a, b = _fold(a), _fold(b)
    try:
        if op == "ge":
            return bool(a >= b)
        if op == "le":
            return bool(a <= b)
        if op == "gt":
            return bool(a > b)
        return bool(a < b)
    except TypeError:
        return False


@dataclass(frozen=True)
class _Literal:
    """A literal operand: a getter that ignores the record (told apart from property paths,
    so a clause that names no property can be refused)."""

    value: Any

    def __call__(self, _record: Record, _env: Env) -> Any:
        return self.value


class _Parser:
    """Recursive descent over the token list; builds closures (no eval)."""

    def __init__(
        self, text: str, known: Iterable[str], type_name: str, functions: frozenset[str]
    ) -> None:
        self.text = text
        self.toks = _tokenize(text)
        self.i = 0
        self.known = {k.lower(): k for k in known}
        self.type_name = type_name
        self.functions = functions
        self.lambda_vars: list[str] = []
        self.advanced: list[str] = []

    # token helpers
    def peek(self, offset: int = 0) -> _Tok:
        return self.toks[min(self.i + offset, len(self.toks) - 1)]

    def take(self) -> _Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        tok = self.take()
        if tok.text.lower() != text:
            raise syntax_error(self.text, tok.pos)

    def is_word(self, *words: str) -> bool:
        tok = self.peek()
        return tok.kind == "word" and tok.text.lower() in words

    # grammar
    def parse(self) -> CompiledFilter:
        expr = self.or_expr()
        if self.peek().kind != "end":
            raise syntax_error(self.text, self.peek().pos)
        return CompiledFilter(lambda rec: bool(expr(rec, {})), self.advanced)

    def or_expr(self) -> Getter:
        left = self.and_expr()
        while self.is_word("or"):
            self.take()
            right = self.and_expr()
            left = (lambda a, b: lambda r, e: bool(a(r, e)) or bool(b(r, e)))(left, right)
        return left

    def and_expr(self) -> Getter:
        left = self.unary()
        while self.is_word("and"):
            self.take()
            right = self.unary()
            left = (lambda a, b: lambda r, e: bool(a(r, e)) and bool(b(r, e)))(left, right)
        return left

    def unary(self) -> Getter:
        if self.is_word("not"):
            self.take()
            self.advanced.append(_ADVANCED_OPS["not"])
            inner = self.unary()
            return lambda r, e: not inner(r, e)
        return self.comparison()

    def comparison(self) -> Getter:
        left = self.operand()
        if self.is_word(*_COMPARE):
            op = self.take().text.lower()
            if op == "ne":
                self.advanced.append(_ADVANCED_OPS["ne"])
            right = self.operand()
            if isinstance(left, _Literal) and isinstance(right, _Literal):
                raise clause_without_property(self.text)  # `1 eq 1`
            if op == "eq":
                return lambda r, e: _eq(left(r, e), right(r, e))
            if op == "ne":
                return lambda r, e: not _eq(left(r, e), right(r, e))
            return lambda r, e: _order(op, left(r, e), right(r, e))
        if isinstance(left, _Literal):
            raise clause_without_property(self.text)  # `1 in (1)`, a bare `true`
        if self.is_word("in"):
            self.take()
            values = self.literal_list()
            return lambda r, e: any(_eq(left(r, e), v) for v in values)
        return left

    def literal_list(self) -> list[Any]:
        self.expect("(")
        values: list[Any] = []
        while True:
            tok = self.take()
            values.append(self.literal_value(tok))
            sep = self.take()
            if sep.text == ")":
                return values
            if sep.text != ",":
                raise syntax_error(self.text, sep.pos)

    def literal_value(self, tok: _Tok) -> Any:
        if tok.kind == "str":
            return tok.text[1:-1].replace("''", "'")  # OData escapes ' as ''
        if tok.kind != "word":
            raise syntax_error(self.text, tok.pos)
        low = tok.text.lower()
        if low in ("true", "false"):
            return low == "true"
        if low == "null":
            return None
        if _GUID.match(tok.text):
            return tok.text.lower()
        try:
            return int(tok.text)
        except ValueError:
            try:
                return float(tok.text)
            except ValueError:
                raise syntax_error(self.text, tok.pos) from None

    def operand(self) -> Getter:
        tok = self.peek()
        if tok.kind == "punct" and tok.text == "(":
            self.take()
            inner = self.or_expr()
            self.expect(")")
            return inner
        if tok.kind == "str":
            return _Literal(self.literal_value(self.take()))
        if tok.kind != "word":
            raise syntax_error(self.text, tok.pos)
        nxt = self.peek(1)
        low = tok.text.lower()
        if low in self.functions and nxt.text == "(":
            return self.string_function()
        if nxt.text == "(" and (low.endswith("/any") or low.endswith("/all")):
            return self.lambda_expr()
        if low in ("true", "false", "null") or _GUID.match(tok.text) or _is_number(tok.text):
            return _Literal(self.literal_value(self.take()))
        return self.path(self.take())

    def string_function(self) -> Getter:
        name = self.take().text.lower()
        if name == "endswith":
            self.advanced.append(_ADVANCED_OPS["endswith"])
        self.expect("(")
        subject = self.operand()
        self.expect(",")
        prefix = self.operand()
        self.expect(")")
        if isinstance(subject, _Literal) and isinstance(prefix, _Literal):
            raise clause_without_property(self.text)  # `startswith('a','a')`

        def check(r: Record, e: Env) -> bool:
            s, p = subject(r, e), prefix(r, e)
            if not isinstance(s, str) or not isinstance(p, str):
                return False
            s, p = s.lower(), p.lower()
            if name == "contains":
                return p in s
            return s.startswith(p) if name == "startswith" else s.endswith(p)

        return check

    def lambda_expr(self) -> Getter:
        tok = self.take()
        collection_path, _, kind = tok.text.rpartition("/")
        collection = self.path(_Tok("word", collection_path, tok.pos))
        self.expect("(")
        var = self.take()
        if var.kind != "word":
            raise syntax_error(self.text, var.pos)
        self.expect(":")
        self.lambda_vars.append(var.text)
        body = self.or_expr()
        self.lambda_vars.pop()
        self.expect(")")
        name, quantifier = var.text, (any if kind.lower() == "any" else all)

        def check(r: Record, e: Env) -> bool:
            items = collection(r, e) or []
            return quantifier(bool(body(r, {**e, name: item})) for item in items)

        return check

    def path(self, tok: _Tok) -> Getter:
        segments = tok.text.split("/")
        head = segments[0]
        rest = segments[1:]
        count = bool(rest) and rest[-1] == "$count"
        if count:
            rest = rest[:-1]
            self.advanced.append("$count")
        if head in self.lambda_vars:
            base: Getter = (lambda h: lambda r, e: e.get(h))(head)
        else:
            real = self.known.get(head.lower())
            if real is None:
                raise unknown_property(head, self.type_name)
            base = (lambda k: lambda r, e: r.get(k))(real)
        getter = base
        for seg in rest:
            getter = (lambda g, s: lambda r, e: _member(g(r, e), s))(getter, seg)
        if count:
            inner = getter
            return lambda r, e: len(inner(r, e) or [])
        return getter


def _member(value: Any, name: str) -> Any:
    if isinstance(value, dict):
        v = value.get(name)
        return v.lower() if isinstance(v, str) and _GUID.match(v) else v
    return None


def _is_number(text: str) -> bool:
    return bool(re.fullmatch(r"-?\d+(\.\d+)?", text))


# String functions a `$filter` may call. A mailSearchFolder's filterQuery also takes
# `contains` (resources/mailsearchfolder's example: "contains(subject, 'weekly digest')").
FILTER_FUNCTIONS = frozenset({"startswith", "endswith"})
SEARCH_FOLDER_FUNCTIONS = FILTER_FUNCTIONS | {"contains"}


def compile_filter(
    text: str | None,
    known: Iterable[str],
    type_name: str,
    functions: frozenset[str] = FILTER_FUNCTIONS,
) -> CompiledFilter | None:
    """Compile a `$filter` against a type's property names; None when absent."""
    if text is None or not text.strip():
        return None
    return _Parser(text, known, type_name, functions).parse()


# -- Outlook extended properties (singlevaluelegacyextendedproperty-get) -------------------------

_EXPAND_EXTENDED = re.compile(
    r"^\s*singleValueExtendedProperties\s*\(\s*\$filter\s*=\s*id\s+eq\s+'((?:[^']|'')*)'\s*\)\s*$",
    re.IGNORECASE,
)
_PROPERTY_ID = re.compile(
    r"^\s*(\w+)\s+(?:\{([0-9A-Fa-f-]{36})\}\s+(Name|Id)\s+(.+?)|0x([0-9A-Fa-f]{1,4}))\s*$"
)


def extended_expand(raw: str | None) -> str | None:
    """The property id `$expand=singleValueExtendedProperties($filter=id eq '<id>')` asks for
    (the one form Graph documents); None when the expand does not ask for one."""
    for part in _top_level_parts(raw or ""):
        m = _EXPAND_EXTENDED.match(part)
        if m is not None:
            return m.group(1).replace("''", "'")
    return None


def _top_level_parts(text: str) -> list[str]:
    """`text` split at commas outside parentheses and quotes ($expand lists)."""
    parts, depth, quoted, start = [], 0, False, 0
    for n, ch in enumerate(text):
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch in "()":
            depth += 1 if ch == "(" else -1
        elif not quoted and ch == "," and depth == 0:
            parts.append(text[start:n])
            start = n + 1
    parts.append(text[start:])
    return [p for p in parts if p.strip()]


def same_property_id(a: str, b: str) -> bool:
    """Whether two extended property ids name one property: the type, property set GUID and
    tag compare without case, a property's Name with it ("Filtering the string name (Name) in
    the id of an extended property is case-sensitive", singlevaluelegacyextendedproperty-get)."""
    ma, mb = _PROPERTY_ID.match(a), _PROPERTY_ID.match(b)
    if ma is None or mb is None:
        return a.strip() == b.strip()
    if ma.group(1).lower() != mb.group(1).lower():
        return False
    if ma.group(5) or mb.group(5):
        return bool(ma.group(5) and mb.group(5)) and int(ma.group(5), 16) == int(mb.group(5), 16)
    return (
        ma.group(2).lower() == mb.group(2).lower()
        and ma.group(3).lower() == mb.group(3).lower()
        and ma.group(4) == mb.group(4)
    )


def extended_values(props: Mapping[str, Any]) -> list[dict[str, str]]:
    """An item's extended properties as Graph's singleValueLegacyExtendedProperty objects."""
    return [{"id": k, "value": str(v)} for k, v in props.items()]


def expanded_properties(props: Mapping[str, Any], wanted: str) -> list[dict[str, str]]:
    """The objects `$expand=singleValueExtendedProperties($filter=id eq wanted)` returns."""
    return [p for p in extended_values(props) if same_property_id(p["id"], wanted)]
