"""Batch CSV files as spreadsheets save them: encodings, delimiters and broken quotes.

Issue 10: a Latin-1 or UTF-16 file failed with a UnicodeDecodeError traceback, a
semicolon-separated file was refused as "no source address column", and an unterminated
quote turned the rest of the file into one "unknown user".
"""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from coexist.batches import read_rows
from coexist.errors import InputError

ROWS = [
    ("Source Email", "Batch"),
    ("ann.lee@fabrikam.example", "Wave 1"),
    ("renée.dubois@fabrikam.example", "Wave 1"),
    ("bob@fabrikam.example", "Wave 2"),
]
EXPECTED = [
    {"source": "ann.lee@fabrikam.example", "batch": "Wave 1", "target": "", "line": "2"},
    {"source": "renée.dubois@fabrikam.example", "batch": "Wave 1", "target": "", "line": "3"},
    {"source": "bob@fabrikam.example", "batch": "Wave 2", "target": "", "line": "4"},
]


def table(delimiter: str = ",", newline: str = "\r\n") -> str:
    return newline.join(delimiter.join(r) for r in ROWS) + newline


def write(tmp_path: Path, data: bytes, name: str = "wave.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def error_of(path: Path) -> InputError:
    with pytest.raises(InputError) as exc:
        read_rows(path)
    return exc.value


@pytest.mark.parametrize(
    "data",
    [
        table().encode("utf-8"),
        codecs.BOM_UTF8 + table().encode("utf-8"),
        table().encode("utf-16"),  # with its BOM (Python writes one)
        codecs.BOM_UTF16_BE + table().encode("utf-16-be"),
        table("\t").encode("utf-16"),  # Excel "Unicode Text": tab-separated UTF-16 LE + BOM
    ],
    ids=["utf8", "utf8-bom", "utf16-le-bom", "utf16-be-bom", "excel-unicode-text"],
)
def test_utf8_and_utf16_with_bom_are_read(tmp_path: Path, data: bytes) -> None:
    """UTF-8 with or without BOM and UTF-16 with BOM (either byte order) read the same rows."""
    assert read_rows(write(tmp_path, data)) == EXPECTED


def test_latin1_csv_names_the_encoding(tmp_path: Path) -> None:
    """A Latin-1 file (Excel's legacy "CSV (Comma delimited)") is an error naming the
    encoding, the line, the byte and how to save the file; no UnicodeDecodeError."""
    path = write(tmp_path, table().encode("latin-1"))
    err = error_of(path)
    assert str(path) in err.message
    assert "line 3 is not UTF-8" in err.message and "0xE9" in err.message
    assert "Latin-1" in err.message and "ren" in err.message
    assert err.fields["line"] == 3
    assert err.next_step is not None and "CSV UTF-8" in err.next_step


def test_utf16_without_bom_names_the_encoding(tmp_path: Path) -> None:
    """UTF-16 without a byte-order mark is named as such, with the line it shows on."""
    err = error_of(write(tmp_path, table().encode("utf-16-le")))
    assert "UTF-16 without a byte-order mark" in err.message and "line 1" in err.message


def test_utf32_is_refused_with_the_fix(tmp_path: Path) -> None:
    """UTF-32 (rare, but a BOM says so) is refused with how to save the file instead."""
    err = error_of(write(tmp_path, table().encode("utf-32")))
    assert "UTF-32" in err.message and err.next_step and "UTF-8" in err.next_step


@pytest.mark.parametrize("delimiter", [",", ";", "\t"], ids=["comma", "semicolon", "tab"])
def test_semicolon_csv_is_read(tmp_path: Path, delimiter: str) -> None:
    """';' (a European Excel) and tab are sniffed from the header like ','."""
    assert read_rows(write(tmp_path, table(delimiter).encode("utf-8"))) == EXPECTED


def test_semicolon_csv_with_commas_in_names_is_read(tmp_path: Path) -> None:
    """A ';' file whose cells hold commas ("Lee, Ann") still splits on ';'."""
    body = "Name;Source Email;Batch\nLee, Ann;ann.lee@fabrikam.example;Wave 1\n"
    assert read_rows(write(tmp_path, body.encode())) == [EXPECTED[0]]


def test_unknown_columns_are_named_with_the_delimiter_read(tmp_path: Path) -> None:
    """Without a known source column the error lists the columns found and how it split."""
    err = error_of(write(tmp_path, b"Mailbox;Wave\nann@fabrikam.example;w1\n"))
    assert "no source address column" in err.message
    assert "'Mailbox', 'Wave'" in err.message and "semicolon-separated" in err.message


def test_broken_quote_names_its_line(tmp_path: Path) -> None:
    """An unterminated quote is an error naming the line it opened on, not one giant cell
    that later reads as an unknown user."""
    body = (
        "Source Email,Batch\n"
        "ann.lee@fabrikam.example,Wave 1\n"
        '"renée.dubois@fabrikam.example,Wave 1\n'
        "bob@fabrikam.example,Wave 2\n"
    )
    err = error_of(write(tmp_path, body.encode()))
    assert 'quote (") opened on line 3 is never closed' in err.message
    assert err.fields["line"] == 3 and err.next_step and "line 3" in err.next_step


def test_quote_closed_on_a_later_line_names_both_lines(tmp_path: Path) -> None:
    """A quote closed by a later row's quote would glue rows together: both lines named."""
    body = (
        "Source Email,Batch\n"
        '"ann.lee@fabrikam.example,Wave 1\n'
        "bob@fabrikam.example,Wave 2\n"
        'cy@fabrikam.example,"Wave 3"\n'
    )
    err = error_of(write(tmp_path, body.encode()))
    assert "opened on line 2 closes only on line 4" in err.message


def test_text_after_a_closing_quote_names_its_line(tmp_path: Path) -> None:
    """`"ann"x@…` (a quote inside a field, not doubled) names the line."""
    body = 'Source Email,Batch\nbob@fabrikam.example,Wave 1\n"ann"x@fabrikam.example,Wave 1\n'
    err = error_of(write(tmp_path, body.encode()))
    assert "line 3 has text after a closing quote" in err.message


def test_doubled_quotes_and_quoted_delimiters_are_data(tmp_path: Path) -> None:
    """Well-formed quoting (a quoted delimiter, a doubled quote) is read as data."""
    body = 'Name,Source Email,Batch\n"Lee, ""Ann""",ann.lee@fabrikam.example,"Wave 1"\n'
    assert read_rows(write(tmp_path, body.encode())) == [EXPECTED[0]]
