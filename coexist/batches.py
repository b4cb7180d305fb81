"""Batches: CSV files of users as operators keep them, and user selection.

Operators keep wave lists in spreadsheets (MigrationWiz-style "Source Email,
Destination Email" columns, or a plain list of addresses). Import reads those
headers case- and space-insensitively; every row must name a discovered user
exactly once, or nothing is recorded. Files are read as spreadsheets save them:
UTF-8 with or without BOM or UTF-16 with BOM, separated by ',', ';' or tab; another
encoding or a broken quote is an error naming its line.

User files with credentials are read too (`read_user_file`): CodeTwo's (Login, Password,
First Name, Last Name, Display Name) and MigrationWiz's Bulk Add shape (Source Email, Source
Login Name, Source Password, Destination Email, Destination Login Name, Destination
Password). Their passwords are handed to the caller (for the vault) and never appear in an
error message: a file whose header names a password column is never quoted in one.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
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
    # CodeTwo's user CSV names each user by its IMAP login (issue 11's seed guide).
    "login",
)
BATCH_HEADERS = ("batch", "wave", "batchname")
TARGET_HEADERS = ("destinationemail", "targetemail", "destination", "target")
EXPORT_COLUMNS = ("source_address", "target_address", "batch", "phase", "state", "name")


def _norm(header: str) -> str:
    return "".join(header.lower().split()).replace("_", "").replace("-", "")


def _found(first_row: list[str]) -> str:
    """The first line's cells for an error message, unless it is a row of data (it holds an
    address): a file without a header line may hold passwords, which no message shows."""
    if any("@" in c for c in first_row):
        return "the first line holds an address, not column names: the header line is missing"
    return "found " + ", ".join(repr(h.strip()) for h in first_row[:8])


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a batch CSV as {source, batch, target, line}."""
    delimiter, lines, rows = _table(path)
    return _plain_rows(path, delimiter, lines, rows)


def _table(path: Path) -> tuple[str, list[int], list[list[str]]]:
    """The delimiter, and the non-blank rows of a CSV file with the line each starts on."""
    text = decode(_read_bytes(path), path)
    delimiter = sniff_delimiter(text)
    # Keep each row's line in the file (blank lines skipped, not renumbered) so an error
    # about a row points at the line the operator sees in an editor.
    numbered = [(n, r) for n, r in _parse(text, delimiter, path) if any(c.strip() for c in r)]
    if not numbered:
        raise InputError(f"{path}: the batch file is empty", file=str(path))
    return delimiter, [n for n, _ in numbered], [r for _, r in numbered]


def _plain_rows(
    path: Path, delimiter: str, lines: list[int], rows: list[list[str]]
) -> list[dict[str, str]]:
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
            f"'Source Email', 'EmailAddress', 'UserPrincipalName', 'Login' "
            f"({_found(rows[0])}, read as {_DELIMITER_NAMES[delimiter]}-separated)",
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


# -- reading: bytes, encodings, delimiters, quotes -------------------------------------------
# Excel writes "CSV UTF-8" with a BOM, "CSV (Comma delimited)" in the legacy code page
# (Windows-1252 in the West: not UTF-8), and "Unicode Text" as tab-separated UTF-16 LE with a
# BOM; a European locale separates with ';'. Read: UTF-8 with or without BOM, UTF-16 with
# BOM, and ',', ';', tab or '|'; anything else is an error naming the line.
DELIMITERS = (",", ";", "\t", "|")
_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
_SAVE_AS = (
    "save it as UTF-8 (Excel: Save As → 'CSV UTF-8 (Comma delimited)'), or as UTF-16 with a "
    "byte-order mark (Excel: 'Unicode Text')"
)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"batch file not found: {path}", file=str(path)) from None
    except OSError as exc:  # a directory, no permission
        raise InputError(
            f"cannot read the batch file {path}: {exc.strerror or exc}", file=str(path)
        ) from None


def decode(data: bytes, path: Path) -> str:
    """The text of a batch file: UTF-8 (a BOM is dropped) or UTF-16 with a BOM; otherwise
    an InputError naming the encoding problem and the line it is on."""
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise InputError(
            f"{path}: the file is UTF-32, which coexist does not read",
            file=str(path),
            next_step=_SAVE_AS,
        )
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding, name = "utf-16", "UTF-16"
    elif b"\x00" in data:  # text has no NULs: UTF-16 (ASCII every other byte) without a BOM
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise InputError(
            f"{path}: line {line} holds NUL bytes: the file looks like UTF-16 without a "
            "byte-order mark",
            file=str(path),
            line=line,
            next_step=_SAVE_AS,
        )
    else:
        encoding, name = "utf-8-sig", "UTF-8"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise _not_decodable(data, exc, encoding, name, path) from None


def _holds_passwords(data: bytes) -> bool:
    """Whether the header line names a password column (UTF-8 or UTF-16: NULs dropped)."""
    first = data[:4096].replace(b"\x00", b"").split(b"\n", 1)[0]
    return b"password" in first.lower()


def _not_decodable(
    data: bytes, exc: UnicodeDecodeError, encoding: str, name: str, path: Path
) -> InputError:
    """The error for bytes that are not `name`: the line, the column, the byte, a guess; the
    line's text only when the file holds no passwords."""
    before = data[: exc.start].decode(encoding, errors="replace")
    line = before.count("\n") + 1
    column = len(before) - (before.rfind("\n") + 1) + 1
    start = data.rfind(b"\n", 0, exc.start) + 1
    end = data.find(b"\n", exc.start)
    shown = data[start : end if end >= 0 else len(data)].decode(encoding, errors="replace")
    text = (
        "the line is not shown: the file holds passwords"
        if _holds_passwords(data)
        else repr(shown.strip()[:80])
    )
    guess = (
        "; the file looks like Latin-1 / Windows-1252 (Excel's 'CSV (Comma delimited)')"
        if name == "UTF-8"
        else ""
    )
    byte = data[exc.start]
    return InputError(
        f"{path}: line {line} is not {name} (byte 0x{byte:02X} at column {column}: {text}){guess}",
        file=str(path),
        line=line,
        next_step=_SAVE_AS,
    )


def sniff_delimiter(text: str) -> str:
    """',', ';' or tab: the one that splits the header into a known source column, else the
    one that splits the first lines into the same number (>1) of fields, else ','."""
    lines = [line for line in text.splitlines() if line.strip()][:20]
    if not lines:
        return ","
    for d in DELIMITERS:
        header = next(csv.reader([lines[0]], delimiter=d), [])
        if any(_norm(h) in SOURCE_HEADERS for h in header):
            return d
    best, best_width = ",", 1
    for d in DELIMITERS:
        widths = {len(next(csv.reader([line], delimiter=d), [])) for line in lines}
        if len(widths) == 1 and (width := widths.pop()) > best_width:
            best, best_width = d, width
    return best


def _parse(text: str, delimiter: str, path: Path) -> list[tuple[int, list[str]]]:
    """(line, cells) of every row; a quote that is never closed, or that closes on a later
    line, is an error naming the line it opened on (not a row swallowing the rest)."""
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, strict=True)
    out: list[tuple[int, list[str]]] = []
    last = 0
    while True:
        first = last + 1  # the line this row starts on
        try:
            row = next(reader)
        except StopIteration:
            return out
        except csv.Error as exc:
            raise _broken_quote(path, first, reader.line_num, str(exc)) from None
        last = reader.line_num
        if any("\n" in c or "\r" in c for c in row):
            raise _broken_quote(path, first, last, "")
        out.append((first, row))


def _broken_quote(path: Path, first: int, last: int, reason: str) -> InputError:
    span = "; a batch file's fields never span lines"
    if "end of data" in reason:
        what = f'a quote (") opened on line {first} is never closed{span}'
    elif last > first:
        what = f'a quote (") opened on line {first} closes only on line {last}{span}'
    else:
        what = f'line {first} has text after a closing quote (")'
    return InputError(
        f"{path}: {what}",
        file=str(path),
        line=first,
        next_step=f'fix the quotes on line {first} (a quote inside a field is written twice: "")',
    )


def _cell(row: list[str], i: int | None) -> str:
    return row[i].strip() if i is not None and i < len(row) else ""


# -- user files with credentials: CodeTwo's and MigrationWiz's shapes ------------------------
# CodeTwo Office 365 Migration, IMAP source: a CSV of every account's Login, Password, First
# Name, Last Name and Display Name ("you need to have credentials in hand for all accounts
# ... in a form of a CSV file", CodeTwo user guide "Connecting to a source IMAP server"; the
# columns as issue 11's seed guide lists them). MigrationWiz Bulk Add: Source Email, Source
# Login Name, Source Password, Destination Email, Destination Login Name, Destination
# Password, Flags; Source Email and Destination Email are required, a login and password only
# where no administrative credentials are used (BitTitan help "How do I import mailboxes into
# the system without entering them one at a time?"). "Source Login" is read as Login Name.
CODETWO = "CodeTwo"
MIGRATIONWIZ = "MigrationWiz"
PLAIN = "batch"
_MIGRATIONWIZ_MARKS = (
    "sourceloginname",
    "sourcelogin",
    "sourcepassword",
    "destinationloginname",
    "destinationlogin",
    "destinationpassword",
)
_CODETWO_MARKS = ("login", "password")
_REQUIRED = {
    CODETWO: (("login", "Login"), ("password", "Password")),
    MIGRATIONWIZ: (("sourceemail", "Source Email"), ("destinationemail", "Destination Email")),
}
_COLUMNS = {
    CODETWO: "Login, Password, First Name, Last Name, Display Name",
    MIGRATIONWIZ: "Source Email, Source Login Name, Source Password, Destination Email, "
    "Destination Login Name, Destination Password",
}


@dataclass(frozen=True)
class UserRow:
    """One user of a user file; passwords never show in a repr (tracebacks, logs)."""

    line: int
    source: str
    batch: str = ""
    target: str = ""
    login: str = ""
    password: str = field(default="", repr=False)
    target_login: str = ""
    target_password: str = field(default="", repr=False)
    display_name: str = ""
    first_name: str = ""  # CodeTwo's First Name / Last Name (automatch's first.last rule)
    last_name: str = ""

    def credentials(self) -> dict[str, tuple[str, str]]:
        """side → (login, password) for each side this row gives a password for."""
        out = {}
        if self.password:
            out["source"] = (self.login or self.source, self.password)
        if self.target_password:
            out["target"] = (self.target_login or self.target, self.target_password)
        return out


@dataclass(frozen=True)
class UserFile:
    """A batch or user file: its shape, its rows, and the sides it has a password column for
    (a row of such a file with an empty password leaves its user waiting for credentials)."""

    path: Path
    shape: str
    rows: list[UserRow]
    password_sides: tuple[str, ...] = ()


def read_user_file(path: Path) -> UserFile:
    """A batch file in any shape coexist reads: a plain batch CSV, CodeTwo's user CSV or
    MigrationWiz's Bulk Add CSV. Missing required columns are an error naming them."""
    delimiter, lines, rows = _table(path)
    header = [_norm(h) for h in rows[0]]
    if any(h in header for h in _MIGRATIONWIZ_MARKS):
        shape = MIGRATIONWIZ
    elif any(h in header for h in _CODETWO_MARKS) and "sourceemail" not in header:
        shape = CODETWO
    else:
        plain = _plain_rows(path, delimiter, lines, rows)
        return UserFile(
            path,
            PLAIN,
            [UserRow(int(r["line"]), r["source"], r["batch"], r["target"]) for r in plain],
        )
    _check_columns(path, shape, header, rows[0], delimiter)

    def col(*names: str) -> int | None:
        return next((header.index(n) for n in names if n in header), None)

    if shape == CODETWO:
        src = col("login")
        login, password, tgt_login, tgt_password = src, col("password"), None, None
    else:
        src = col("sourceemail")
        login, password = col("sourceloginname", "sourcelogin"), col("sourcepassword")
        tgt_login = col("destinationloginname", "destinationlogin")
        tgt_password = col("destinationpassword")
    bat, tgt = col(*BATCH_HEADERS), col(*TARGET_HEADERS)
    first, last, display = col("firstname"), col("lastname"), col("displayname")
    users = [
        UserRow(
            line=n,
            source=_cell(r, src),
            batch=_cell(r, bat),
            target=_cell(r, tgt),
            login=_cell(r, login),
            password=_secret(r, password),
            target_login=_cell(r, tgt_login),
            target_password=_secret(r, tgt_password),
            display_name=_cell(r, display)
            or " ".join(p for p in (_cell(r, first), _cell(r, last)) if p),
            first_name=_cell(r, first),
            last_name=_cell(r, last),
        )
        for n, r in zip(lines[1:], rows[1:], strict=True)
    ]
    blank = [str(u.line) for u in users if not u.source]
    if blank:
        what = "Login" if shape == CODETWO else "Source Email"
        raise InputError(
            f"{path}: line(s) {', '.join(blank[:10])} have no {what}",
            file=str(path),
            next_step=f"fill in the {what} column on those lines, or remove them",
        )
    return UserFile(path, shape, users, _password_sides(shape, users, password, tgt_password))


def _password_sides(
    shape: str, users: list[UserRow], source: int | None, target: int | None
) -> tuple[str, ...]:
    """The sides whose users log in with their own password, so a blank one is missing.
    CodeTwo's IMAP accounts always do (IMAP has no admin login to use instead). A MigrationWiz
    password column is read "only if the administrative credentials are not specified"
    (BitTitan help, Bulk Add): one left blank on every row means that side logs in as an
    admin, and no user waits for it."""
    if shape == CODETWO:
        return ("source",)
    sides = []
    if source is not None and any(u.password for u in users):
        sides.append("source")
    if target is not None and any(u.target_password for u in users):
        sides.append("target")
    return tuple(sides)


def _check_columns(
    path: Path, shape: str, header: list[str], cells: list[str], delimiter: str
) -> None:
    """Every required column of `shape` is there; else an error naming the missing ones
    (and the shape's columns). Column names are shown; no cell of a data row is."""
    missing = [title for norm, title in _REQUIRED[shape] if norm not in header]
    if missing:
        raise InputError(
            f"{path}: a {shape} user file needs the column(s) {', '.join(missing)} "
            f"({_found(cells)}, read as {_DELIMITER_NAMES[delimiter]}-separated)",
            file=str(path),
            missing=missing,
            next_step=f"add {', '.join(missing)} to the header line ({shape}'s columns: "
            f"{_COLUMNS[shape]})",
        )


def _secret(row: list[str], i: int | None) -> str:
    """A password cell as written (spaces can be part of a password); blank means none."""
    value = row[i] if i is not None and i < len(row) else ""
    return value if value.strip() else ""


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
