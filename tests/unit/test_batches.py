"""Batch CSV files as operators keep them: headers, BOM, bare lists, errors, export."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest

from coexist.batches import export_rows, index_users, read_rows, select
from coexist.errors import InputError


def item(key: str, address: str, upn: str | None = None, **extra: Any) -> dict[str, Any]:
    """A journal user item as `Journal.items()` returns it."""
    return {
        "key": key,
        "source_address": address,
        "target_address": extra.pop("target_address", None),
        "name": extra.pop("name", key),
        "batch": extra.pop("batch", None),
        "phase": extra.pop("phase", "discovered"),
        "state": extra.pop("state", None),
        "detail": {
            "source": {
                "upn": upn or address,
                "email_addresses": [f"SMTP:{address}", f"smtp:{key}@fabrikam.onmicrosoft.com"],
            }
        },
    }


ITEMS = [
    item("id-ann", "Ann.Lee@fabrikam.example", "ann@fabrikam.onmicrosoft.com"),
    item("id-bob", "bob@fabrikam.example", target_address="bob@contoso.example"),
    item("id-cy", "cy@fabrikam.example"),
]


def write(tmp_path: Path, body: str, *, bom: bool = False, name: str = "wave.csv") -> Path:
    path = tmp_path / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + body.encode("utf-8"))
    return path


# -- reading ---------------------------------------------------------------------------------
def test_migrationwiz_headers_with_bom(tmp_path: Path) -> None:
    """'Source Email,Destination Email,Batch' (MigrationWiz export, Excel BOM) is read."""
    path = write(
        tmp_path,
        "Source Email,Destination Email,Batch\r\n"
        "ann.lee@fabrikam.example,ann.lee@contoso.example,Wave 1\r\n"
        "\r\n"
        " bob@fabrikam.example , ,Wave 2\r\n",
        bom=True,
    )
    assert read_rows(path) == [
        {
            "source": "ann.lee@fabrikam.example",
            "batch": "Wave 1",
            "target": "ann.lee@contoso.example",
            "line": "2",
        },
        {"source": "bob@fabrikam.example", "batch": "Wave 2", "target": "", "line": "4"},
    ]


@pytest.mark.parametrize(
    "header",
    [
        "EmailAddress,Wave",
        "PrimarySmtpAddress,BatchName",
        "UserPrincipalName,batch",
        "user_principal_name,Batch Name",
        "source-address,WAVE",
        "UPN,Batch",
    ],
)
def test_header_spellings_are_case_space_and_punctuation_insensitive(
    tmp_path: Path, header: str
) -> None:
    """Common header spellings name the source and batch columns, in any case or spacing."""
    path = write(tmp_path, f"{header}\ncy@fabrikam.example,w1\n")
    assert read_rows(path) == [
        {"source": "cy@fabrikam.example", "batch": "w1", "target": "", "line": "2"}
    ]


def test_columns_in_any_order_and_short_rows(tmp_path: Path) -> None:
    """Columns are found by header, not position; a short row gives blank cells."""
    path = write(tmp_path, "Name,Batch,Email\nAnn,w1,ann@fabrikam.example\nBob,w2\n")
    rows = read_rows(path)
    assert [(r["source"], r["batch"]) for r in rows] == [("ann@fabrikam.example", "w1"), ("", "w2")]


def test_bare_list_of_addresses(tmp_path: Path) -> None:
    """A file that is just one address per line (no header) is a list of sources."""
    path = write(tmp_path, "ann@fabrikam.example\nbob@fabrikam.example\n", bom=True)
    assert [(r["source"], r["line"]) for r in read_rows(path)] == [
        ("ann@fabrikam.example", "1"),
        ("bob@fabrikam.example", "2"),
    ]


def test_unknown_header_names_the_expected_columns(tmp_path: Path) -> None:
    """A file without a source column says which headers it accepts."""
    path = write(tmp_path, "Mailbox,Wave\nann@fabrikam.example,w1\n")
    with pytest.raises(InputError, match="no source address column") as exc:
        read_rows(path)
    assert "'Source Email'" in exc.value.message and str(path) in exc.value.message
    assert exc.value.fields["file"] == str(path)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    """An empty file and a missing file are InputErrors naming the file."""
    with pytest.raises(InputError, match="the batch file is empty"):
        read_rows(write(tmp_path, "\n , \n"))
    with pytest.raises(InputError, match="batch file not found"):
        read_rows(tmp_path / "nope.csv")


# -- selecting users -----------------------------------------------------------------------------
def test_index_covers_every_name_an_operator_may_use() -> None:
    """Key, source and target address, UPN and every SMTP proxy find the item, any case."""
    idx = index_users(ITEMS)
    for name in (
        "id-ann",
        "ann.lee@fabrikam.example",
        "ANN@FABRIKAM.ONMICROSOFT.COM",
        "id-ann@fabrikam.onmicrosoft.com",
        "bob@contoso.example",
    ):
        assert name.lower() in idx
    assert idx["bob@contoso.example"]["key"] == "id-bob"


def test_select_returns_each_named_user_once_in_order() -> None:
    """select maps names (trimmed, any case) to items, in the order given."""
    chosen = select(ITEMS, [" CY@fabrikam.example", "ann@fabrikam.onmicrosoft.com"], what="w")
    assert [i["key"] for i in chosen] == ["id-cy", "id-ann"]


def test_select_names_unknown_users() -> None:
    """Unknown names are listed (with a count) and rediscover is suggested; nothing selected."""
    with pytest.raises(InputError) as exc:
        select(ITEMS, ["ann.lee@fabrikam.example", "zed@fabrikam.example", "x@y"], what="w1.csv")
    err = exc.value
    assert err.message == "w1.csv: 2 unknown user(s): zed@fabrikam.example, x@y"
    assert err.fields["unknown"] == ["zed@fabrikam.example", "x@y"]
    assert err.next_step is not None and "coexist rediscover" in err.next_step


def test_select_truncates_a_long_unknown_list() -> None:
    """More than ten unknown names: the first ten are shown, then an ellipsis; all in fields."""
    names = [f"u{n}@nowhere.example" for n in range(13)]
    with pytest.raises(InputError) as exc:
        select(ITEMS, names, what="w")
    assert exc.value.message.endswith("u9@nowhere.example …")
    assert exc.value.fields["unknown"] == names


def test_select_names_duplicates_even_by_another_address() -> None:
    """The same user twice — by the same or another of its addresses — is named."""
    with pytest.raises(InputError) as exc:
        select(
            ITEMS,
            ["bob@fabrikam.example", "ann.lee@fabrikam.example", "BOB@CONTOSO.EXAMPLE"],
            what="w",
        )
    assert exc.value.message == "w: user(s) listed twice: BOB@CONTOSO.EXAMPLE"
    assert exc.value.next_step == "remove the duplicate rows"


# -- export ------------------------------------------------------------------------------------
def test_export_writes_migrationwiz_style_columns_that_read_back(tmp_path: Path) -> None:
    """Export has 'Source Email, Destination Email, Batch' first and re-imports unchanged."""
    items = [
        item("id-ann", "ann@fabrikam.example", batch="Wave 1", phase="cutover", state="ok"),
        item("id-bob", "bob@fabrikam.example", name="Bob, Jr."),
    ]
    text = export_rows(items)
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["Source Email", "Destination Email", "Batch", "Phase", "State", "Name"]
    assert rows[1] == ["ann@fabrikam.example", "", "Wave 1", "cutover", "ok", "id-ann"]
    assert rows[2] == ["bob@fabrikam.example", "", "", "discovered", "", "Bob, Jr."]
    back = read_rows(write(tmp_path, text, name="export.csv"))
    assert [(r["source"], r["batch"]) for r in back] == [
        ("ann@fabrikam.example", "Wave 1"),
        ("bob@fabrikam.example", ""),
    ]
    assert [i["key"] for i in select(items, [r["source"] for r in back], what="x")] == [
        "id-ann",
        "id-bob",
    ]
