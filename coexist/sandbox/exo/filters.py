"""A small OPATH (-Filter) evaluator over Exchange's output objects.

Covers what migrations use: `Prop -eq|-ne|-like|-notlike 'value'`, `-and`, `-or`,
`-not`, parentheses, `$true/$false/$null`. Multi-valued properties
(EmailAddresses) match when any value matches, as in Exchange. A property the
object does not have fails like Exchange's invalid-filter error.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from typing import Any

from .errors import BindingError

Predicate = Callable[[Mapping[str, Any]], bool]
_TOKEN = re.compile(
    r"""\s*(?:(?P<op>-(?:eq|ne|like|notlike|and|or|not))\b|(?P<paren>[()])|'(?P<sq>(?:[^']|'')*)'|"(?P<dq>[^"]*)"|(?P<word>[^\s()'"]+))""",
    re.IGNORECASE,
)


class FilterError(BindingError):
    pass


def _error(text: str, why: str) -> FilterError:
    return FilterError(
        f'Cannot bind parameter \'Filter\' to the target. Exception setting "Filter": "Invalid '
        f"filter syntax. For a description of the filter parameter syntax see the command help. "
        f'"{text}" {why}"',
        "System.Management.Automation.ParameterBindingException",
    )


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise _error(text, f"at position {pos}")
        pos = m.end()
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "sq":
            out.append(("str", value.replace("''", "'")))
        elif kind == "dq":
            out.append(("str", value))
        elif kind == "op":
            out.append(("op", value.lower()))
        else:
            out.append((kind, value))
    return out


def compile_filter(text: str, known: Callable[[str], bool]) -> Predicate:
    toks = _tokens(text)
    pos = 0

    def peek() -> tuple[str, str] | None:
        return toks[pos] if pos < len(toks) else None

    def take() -> tuple[str, str]:
        nonlocal pos
        if pos >= len(toks):
            raise _error(text, "ends unexpectedly")
        pos += 1
        return toks[pos - 1]

    def expr() -> Predicate:
        left = conj()
        while peek() == ("op", "-or"):
            take()
            right = conj()
            left = (lambda a, b: lambda r: a(r) or b(r))(left, right)
        return left

    def conj() -> Predicate:
        left = unary()
        while peek() == ("op", "-and"):
            take()
            right = unary()
            left = (lambda a, b: lambda r: a(r) and b(r))(left, right)
        return left

    def unary() -> Predicate:
        if peek() == ("op", "-not"):
            take()
            inner = unary()
            return lambda r: not inner(r)
        if peek() == ("paren", "("):
            take()
            inner = expr()
            if take() != ("paren", ")"):
                raise _error(text, "has unbalanced parentheses")
            return inner
        return comparison()

    def comparison() -> Predicate:
        kind, prop = take()
        if kind != "word" or not known(prop):
            raise _error(text, f"uses '{prop}', which is not a filterable property")
        kind, op = take()
        if kind != "op" or op not in ("-eq", "-ne", "-like", "-notlike"):
            raise _error(text, f"expects a comparison operator after '{prop}'")
        kind, raw = take()
        value: Any = raw
        if kind == "word":
            value = {"$true": True, "$false": False, "$null": None}.get(raw.lower(), raw)
        return _compare(prop, op, value)

    pred = expr()
    if pos != len(toks):
        raise _error(text, f"has unexpected '{toks[pos][1]}'")
    return pred


def _get(row: Mapping[str, Any], prop: str) -> Any:
    low = prop.lower()
    for k, v in row.items():
        if k.lower() == low:
            return v
    return None


def _one(actual: Any, op: str, value: Any) -> bool:
    if value is None or isinstance(value, bool):
        hit = bool(actual == value)
    elif op in ("-like", "-notlike"):
        hit = actual is not None and fnmatch.fnmatchcase(str(actual).lower(), str(value).lower())
    else:
        hit = actual is not None and str(actual).lower() == str(value).lower()
    return hit


def _compare(prop: str, op: str, value: Any) -> Predicate:
    negate = op in ("-ne", "-notlike")
    base = "-like" if op in ("-like", "-notlike") else "-eq"

    def pred(row: Mapping[str, Any]) -> bool:
        actual = _get(row, prop)
        values = actual if isinstance(actual, list) else [actual]
        hit = any(_one(a, base, value) for a in values)
        return not hit if negate else hit

    return pred
