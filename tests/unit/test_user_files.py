"""User files with credentials: CodeTwo's CSV and MigrationWiz's Bulk Add CSV, as
spreadsheets save them (any delimiter, BOM, UTF-16, quotes), and no password in any error."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from coexist.batches import CODETWO, MIGRATIONWIZ, PLAIN, read_rows, read_user_file
from coexist.errors import InputError

SECRET = 'p@ss; "word", 1'  # a delimiter, quotes and a comma inside the password
CODETWO_HEADER = ["Login", "Password", "First Name", "Last Name", "Display Name"]


def cell(value: str, delimiter: str) -> str:
    """A CSV cell as a spreadsheet writes it: quoted (quotes doubled) when it must be."""
    if any(c in value for c in (delimiter, '"', "\n")):
        return '"' + value.replace('"', '""') + '"'
    return value


def csv_text(rows: list[list[str]], delimiter: str = ",") -> str:
    return "\r\n".join(delimiter.join(cell(c, delimiter) for c in r) for r in rows) + "\r\n"


def codetwo_rows() -> list[list[str]]:
    return [
        CODETWO_HEADER,
        ["ann.lee@fabrikam.example", SECRET, "Ann", "Lee", "Ann Lee"],
        ["bob@fabrikam.example", "", "Bob", "Stone", ""],
    ]


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "users.csv"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("delimiter", "encode"),
    [
        (",", lambda t: t.encode("utf-8")),
        (";", lambda t: codecs.BOM_UTF8 + t.encode("utf-8")),
        ("\t", lambda t: t.encode("utf-16")),
        ("|", lambda t: t.encode("utf-8")),
    ],
    ids=["comma", "semicolon-bom", "tab-utf16", "pipe"],
)
def test_codetwo_file_is_read_in_any_dialect(
    tmp_path: Path, delimiter: str, encode: object
) -> None:
    """CodeTwo's columns are found whatever the delimiter and encoding; a quoted password
    keeps its delimiter, quotes and comma; a blank password is no password."""
    text = csv_text(codetwo_rows(), delimiter)
    user_file = read_user_file(write(tmp_path, encode(text)))  # type: ignore[operator]
    assert user_file.shape == CODETWO and user_file.password_sides == ("source",)
    ann, bob = user_file.rows
    assert (ann.source, ann.login, ann.password, ann.display_name, ann.line) == (
        "ann.lee@fabrikam.example",
        "ann.lee@fabrikam.example",
        SECRET,
        "Ann Lee",
        2,
    )
    assert ann.credentials() == {"source": ("ann.lee@fabrikam.example", SECRET)}
    assert bob.password == "" and bob.credentials() == {} and bob.display_name == "Bob Stone"


def test_password_spaces_are_kept(tmp_path: Path) -> None:
    """A password is taken as written (spaces can be part of it); a login is trimmed."""
    rows = [CODETWO_HEADER, [" ann@fabrikam.example ", " two words ", "", "", ""]]
    (ann,) = read_user_file(write(tmp_path, csv_text(rows).encode())).rows
    assert ann.login == "ann@fabrikam.example" and ann.password == " two words "


@pytest.mark.parametrize("login_header", ["Source Login Name", "Source Login"])
def test_migrationwiz_bulk_add_file(tmp_path: Path, login_header: str) -> None:
    """MigrationWiz's Bulk Add columns: source login and password, destination address; a
    blank login is the source address; destination credentials are the target side's."""
    rows = [
        ["Source Email", login_header, "Source Password", "Destination Email",
         "Destination Login Name", "Destination Password", "Flags"],
        ["ann@fabrikam.example", "ann", SECRET, "ann@contoso.example", "", "", "0"],
        ["bob@fabrikam.example", "", "bobpw", "bob@contoso.example", "bob.t", "tpw", "0"],
    ]  # fmt: skip
    user_file = read_user_file(write(tmp_path, csv_text(rows, ";").encode()))
    assert user_file.shape == MIGRATIONWIZ
    assert user_file.password_sides == ("source", "target")
    ann, bob = user_file.rows
    assert ann.credentials() == {"source": ("ann", SECRET)}
    assert ann.target == "ann@contoso.example"
    assert bob.credentials() == {
        "source": ("bob@fabrikam.example", "bobpw"),
        "target": ("bob.t", "tpw"),
    }


def test_migrationwiz_blank_password_column_means_admin_credentials(tmp_path: Path) -> None:
    """A password column blank on every row is MigrationWiz's "administrative credentials
    are specified": no side asks for per-user passwords, so nobody will wait for one."""
    rows = [
        ["Source Email", "Source Login Name", "Source Password", "Destination Email",
         "Destination Password"],
        ["ann@fabrikam.example", "", "", "ann@contoso.example", ""],
        ["bob@fabrikam.example", "", "", "bob@contoso.example", ""],
    ]  # fmt: skip
    user_file = read_user_file(write(tmp_path, csv_text(rows).encode()))
    assert user_file.shape == MIGRATIONWIZ and user_file.password_sides == ()


def test_plain_batch_file_still_reads(tmp_path: Path) -> None:
    """A batch file without credential columns is read as before (no password sides)."""
    rows = [["Source Email", "Batch"], ["ann@fabrikam.example", "w1"]]
    user_file = read_user_file(write(tmp_path, csv_text(rows).encode()))
    assert user_file.shape == PLAIN and user_file.password_sides == ()
    assert [(r.source, r.batch) for r in user_file.rows] == [("ann@fabrikam.example", "w1")]


def test_codetwo_file_selects_users_by_login(tmp_path: Path) -> None:
    """`--batch codetwo.csv` (read_rows) finds users by the Login column, passwords unread."""
    path = write(tmp_path, csv_text(codetwo_rows(), ";").encode())
    assert [r["source"] for r in read_rows(path)] == [
        "ann.lee@fabrikam.example",
        "bob@fabrikam.example",
    ]


@pytest.mark.parametrize(
    ("header", "missing"),
    [
        (["Login", "First Name", "Last Name", "Display Name"], "Password"),
        (["Password", "First Name", "Display Name"], "Login"),
        (["Source Email", "Source Login Name", "Source Password"], "Destination Email"),
        (["Source Login Name", "Source Password", "Destination Email"], "Source Email"),
    ],
    ids=["codetwo-no-password", "codetwo-no-login", "mw-no-destination", "mw-no-source"],
)
def test_missing_columns_are_named(tmp_path: Path, header: list[str], missing: str) -> None:
    """A missing required column is named with the shape's columns; no data cell is shown."""
    row = ["ann@fabrikam.example", SECRET, "x", "y"][: len(header)]
    path = write(tmp_path, csv_text([header, row]).encode())
    with pytest.raises(InputError) as exc:
        read_user_file(path)
    assert f"needs the column(s) {missing}" in exc.value.message
    assert exc.value.fields["missing"] == [missing]
    assert "columns:" in str(exc.value.next_step)
    assert SECRET not in str(exc.value)


def test_headerless_file_is_not_quoted(tmp_path: Path) -> None:
    """A file without its header line (the first line is data) is refused without echoing
    that line, which may hold a password."""
    path = write(tmp_path, csv_text([["ann@fabrikam.example", SECRET, "Ann"]], ";").encode())
    with pytest.raises(InputError) as exc:
        read_user_file(path)
    assert "header line is missing" in exc.value.message and SECRET not in str(exc.value)


def test_latin1_password_file_does_not_show_the_line(tmp_path: Path) -> None:
    """An encoding error in a file with a password column names line and byte, not the text."""
    rows = [CODETWO_HEADER, ["ann@fabrikam.example", "pässwörd", "Ann", "Lee", ""]]
    path = write(tmp_path, csv_text(rows).encode("latin-1"))
    with pytest.raises(InputError) as exc:
        read_user_file(path)
    message = exc.value.message
    assert "line 2 is not UTF-8" in message and "0xE4" in message
    assert "the file holds passwords" in message
    assert "p\ufffdss" not in message and "w\ufffdrd" not in message and "ann@" not in message


def test_blank_login_is_named(tmp_path: Path) -> None:
    """A row without a Login is an error naming its line (not a user called '')."""
    rows = [*codetwo_rows(), ["", "pw", "No", "Login", ""]]
    with pytest.raises(InputError, match=r"line\(s\) 4 have no Login"):
        read_user_file(write(tmp_path, csv_text(rows).encode()))


def test_rows_never_show_passwords(tmp_path: Path) -> None:
    """A row's repr (in a traceback or a log line) leaves its passwords out."""
    user_file = read_user_file(write(tmp_path, csv_text(codetwo_rows()).encode()))
    assert SECRET not in repr(user_file) and "ann.lee@fabrikam.example" in repr(user_file)
