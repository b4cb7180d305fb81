"""Nothing in the product reads a Graph property that is not in the v1.0 contract.

`coexist/tenants/graph_reads.py` declares what the product reads, by CSDL type.
(a) every declared property exists on its type in the CSDL (base types included);
(b) a scan of the product's code (`coexist/` minus the sandbox) collects every
camelCase key it reads (`x.get("k")`, `x["k"]`), every property it names in a
`$select` (query parameter or `?$select=` in a URL), and every property a
`$filter` / `$orderby` it sends refers to; each must be declared for some type
(or be a non-Graph key of the short allow-list below, each with its reason).
One test per product file, so a failure names the file and line.

Single-word lower-case keys (`id`, `mail`, `subject`) are not camelCase and are
seen only through `$select`/`$filter`: reading them needs no declaration to pass,
but `graph_reads.py` lists them anyway for the reader.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coexist import csdl
from coexist.tenants.graph_reads import READS

PRODUCT = Path(__file__).resolve().parents[2] / "coexist"
FILES = sorted(
    str(p.relative_to(PRODUCT.parent))
    for p in PRODUCT.rglob("*.py")
    if "sandbox" not in p.relative_to(PRODUCT).parts
)
CAMEL = re.compile(r"^[a-z][a-z0-9]*[A-Z][A-Za-z0-9]*$")
# camelCase keys the product reads that are not Graph properties (each with its reason).
NOT_GRAPH: dict[str, str] = {}
QUERY_OPTIONS = ("$select", "$filter", "$orderby")
_OPERATORS = frozenset(
    [
        "eq",
        "ne",
        "gt",
        "ge",
        "lt",
        "le",
        "and",
        "or",
        "not",
        "in",
        "has",
        "add",
        "sub",
        "mul",
        "div",
        "mod",
        "any",
        "all",
        "startswith",
        "endswith",
        "contains",
        "true",
        "false",
        "null",
        "asc",
        "desc",
    ]
)
_HOLE = "\x00"  # where an f-string interpolates a value the scan cannot see
_QUOTED = re.compile(r"'(?:[^']|'')*'|'[^']*$")
_NAME = re.compile(r"[A-Za-z_$][A-Za-z0-9_]*(?:/[A-Za-z_$][A-Za-z0-9_]*)*")


@dataclass(frozen=True)
class Read:
    file: str
    line: int
    name: str
    how: str  # key | $select | $filter | $orderby

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.how} {self.name!r}"


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level `NAME = "text"` assignments (a $select list kept in a constant)."""
    out: dict[str, str] = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            out[node.targets[0].id] = node.value.value
    return out


def _text(node: ast.AST, constants: dict[str, str]) -> str | None:
    """A string expression's text, with holes where it interpolates unknown values."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    if isinstance(node, ast.JoinedStr):
        parts = []
        for v in node.values:
            inner = v.value if isinstance(v, ast.FormattedValue) else v
            parts.append(_text(inner, constants) or _HOLE)
        return "".join(parts)
    return None


def option_names(option: str, text: str) -> list[str]:
    """The property names a query option's value refers to (paths split at '/')."""
    if option == "$select":
        return [p.strip() for p in text.split(",") if p.strip() and _HOLE not in p]
    unquoted = _QUOTED.sub(" ", text)
    names = []
    for m in _NAME.finditer(unquoted):
        token = m.group(0)
        if _HOLE in token or token.lower() in _OPERATORS or token[0].isdigit():
            continue
        names += [seg for seg in token.split("/") if not seg.startswith("$")]
    return names


def _in_url(text: str) -> Iterator[tuple[str, str]]:
    """(option, value) pairs of query options written into a URL string."""
    for option in QUERY_OPTIONS:
        for m in re.finditer(re.escape(option) + r"=([^&]*)", text):
            yield option, m.group(1)


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring nodes: prose that may quote a query option, not a request."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def reads(source: str, file: str) -> list[Read]:
    tree = ast.parse(source)
    constants = _constants(tree)
    prose = _docstrings(tree)
    out: list[Read] = []
    for node in ast.walk(tree):
        if id(node) in prose:
            continue
        key = None
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("get", "pop", "setdefault")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            key = node.args[0].value
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Load)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            key = node.slice.value
        if key is not None and CAMEL.match(key):
            out.append(Read(file, node.lineno, key, "key"))
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and k.value in QUERY_OPTIONS:
                    text = _text(v, constants)
                    for name in option_names(str(k.value), text or ""):
                        out.append(Read(file, v.lineno, name, str(k.value)))
        if isinstance(node, ast.Constant | ast.JoinedStr):
            text = _text(node, constants)
            for option, value in _in_url(text or ""):
                for name in option_names(option, value):
                    out.append(Read(file, node.lineno, name, option))
    # An f-string's constant parts are walked on their own too: report each read once.
    return sorted(set(out), key=lambda r: (r.line, r.how, r.name))


def declared() -> set[str]:
    return set().union(*READS.values())


def test_every_declared_read_is_a_v1_property() -> None:
    """(a) Each (type, property) of graph_reads.READS exists on that type in the v1.0 CSDL."""
    model = csdl.model()
    missing = [t for t in READS if csdl.qualify(t) not in model.types]
    assert not missing, f"not v1.0 types: {missing}"
    wrong = [
        f"{t}.{p}"
        for t, props in READS.items()
        for p in sorted(props)
        if p not in model.properties(t) and p not in model.navigation(t)
    ]
    assert not wrong, f"not v1.0 properties of their type: {wrong}"


@pytest.mark.parametrize("file", FILES)
def test_product_reads_only_declared_graph_properties(file: str) -> None:
    """(b) Every camelCase key this file reads and every property its queries name is declared
    in graph_reads.READS (hence in the v1.0 CSDL) or is a listed non-Graph key."""
    source = (PRODUCT.parent / file).read_text()
    found = [r for r in reads(source, file) if r.name not in declared() and r.name not in NOT_GRAPH]
    assert not found, "Graph reads not in graph_reads.READS:\n" + "\n".join(map(str, found))


def test_the_scan_sees_keys_selects_filters_and_urls() -> None:
    """The scanner itself: keys, $select (dict, constant, URL), $filter and $orderby names."""
    source = (
        'SEL = "id,wellKnownName"\n'
        'x = obj.get("sizeInBytes"), obj["isRead"], obj.get("id"), obj["Name"]\n'
        'p = {"$select": SEL, "$filter": f"displayName eq \'{v}\' and x/y eq 1"}\n'
        'q = {"$orderby": "receivedDateTime desc"}\n'
        'u = f"users/{u}/messages?$select=subject,{SEL}&$top=5"\n'
        'obj["writtenKey"] = 1\n'
    )
    got = {(r.how, r.name) for r in reads(source, "f.py")}
    assert got == {
        ("key", "sizeInBytes"),
        ("key", "isRead"),
        ("$select", "id"),
        ("$select", "wellKnownName"),
        ("$filter", "displayName"),
        ("$filter", "x"),
        ("$filter", "y"),
        ("$orderby", "receivedDateTime"),
        ("$select", "subject"),
    }
