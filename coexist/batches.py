"""Batches: CSV files of users as operators keep them, and user selection.

Operators keep wave lists in spreadsheets (MigrationWiz-style "Source Email,
Destination Email" columns, or a plain list of addresses). Import reads those
headers case- and space-insensitively; every row must name a discovered user
exactly once, or nothing is recorded.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from coexist.errors import InputError

SOURCE_HEADERS = (
    "sourceemail",
    "source",
    "sourceaddress",
    "emailaddress",
    "email",
    "primarysmtpaddress",
    "userprincipalname",
    "upn",
)
BATCH_HEADERS = ("batch", "wave", "batchname")
TARGET_HEADERS = ("destinationemail", "targetemail", "destination", "target")
EXPORT_COLUMNS = ("source_address", "target_address", "batch", "phase", "state", "name")


def _norm(header: str) -> str:
    return "".join(header.lower().split()).replace("_", "").replace("-", "")


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a batch CSV as {source, batch, target, line}."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"batch file not found: {path}", file=str(path)) from None
    reader = csv.reader(io.StringIO(text))
    # Keep each row's line in the file (blank lines skipped, not renumbered) so an error
    # about a row points at the line the operator sees in an editor.
    numbered = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]
    lines = [n for n, _ in numbered]
    rows = [r for _, r in numbered]
    if not rows:
        raise InputError(f"{path}: the batch file is empty", file=str(path))
    header = [_norm(h) for h in rows[0]]
    src = next((header.index(h) for h in SOURCE_HEADERS if h in header), None)
    if src is None:
        if len(header) == 1 and "@" in rows[0][0]:  # a bare list of addresses, no header
            return [
                {"source": r[0].strip(), "batch": "", "target": "", "line": str(n)}
                for n, r in zip(lines, rows, strict=True)
            ]
        raise InputError(
            f"{path}: no source address column; expected one of "
            "'Source Email', 'EmailAddress', 'UserPrincipalName'",
            file=str(path),
        )
    bat = next((header.index(h) for h in BATCH_HEADERS if h in header), None)
    tgt = next((header.index(h) for h in TARGET_HEADERS if h in header), None)
    return [
        {
            "source": _cell(r, src),
            "batch": _cell(r, bat),
            "target": _cell(r, tgt),
            "line": str(n),
        }
        for n, r in zip(lines[1:], rows[1:], strict=True)
    ]


def _cell(row: list[str], i: int | None) -> str:
    return row[i].strip() if i is not None and i < len(row) else ""


def index_users(items: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every way an operator may name a user → its journal item (lower-case keys)."""
    idx: dict[str, dict[str, Any]] = {}
    for item in items:
        src = (item.get("detail") or {}).get("source") or {}
        names = [
            item.get("key"),
            item.get("source_address"),
            item.get("target_address"),
            src.get("upn"),
        ]
        names += [a[5:] for a in src.get("email_addresses") or [] if a.lower().startswith("smtp:")]
        for n in names:
            if n:
                idx.setdefault(str(n).lower(), item)
    return idx


def select(items: list[dict[str, Any]], names: Iterable[str], *, what: str) -> list[dict[str, Any]]:
    """The items `names` refer to; unknown or duplicate names are an error naming them."""
    idx = index_users(items)
    chosen: dict[str, dict[str, Any]] = {}
    unknown: list[str] = []
    duplicate: list[str] = []
    for name in names:
        item = idx.get(name.strip().lower())
        if item is None:
            unknown.append(name)
        elif item["key"] in chosen:
            duplicate.append(name)
        else:
            chosen[item["key"]] = item
    if unknown:
        raise InputError(
            f"{what}: {len(unknown)} unknown user(s): {', '.join(unknown[:10])}"
            + (" …" if len(unknown) > 10 else ""),
            next_step="check the addresses, or run `coexist rediscover` if they were added to the scope",
            unknown=unknown,
        )
    if duplicate:
        raise InputError(
            f"{what}: user(s) listed twice: {', '.join(duplicate[:10])}",
            next_step="remove the duplicate rows",
            duplicate=duplicate,
        )
    return list(chosen.values())


def export_rows(items: Iterable[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["Source Email", "Destination Email", "Batch", "Phase", "State", "Name"])
    for item in items:
        w.writerow([item.get(c) or "" for c in EXPORT_COLUMNS])
    return buf.getvalue()
