"""`batch import` for a source without a directory (an IMAP source): the user file is the list
of users. `[source] kind = "imap"` arrives with issue 11's seam; until then the project is a
stand-in holding only what `import_batch` reads of one (its directory and `source.kind`)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from coexist.credentials import import_batch
from coexist.errors import InputError
from coexist.journal import Journal
from coexist.vault import ENV_KEY, Vault, new_key

KEY = new_key()
ENV = {ENV_KEY: KEY}


def imap_project(directory: Path) -> types.SimpleNamespace:
    imap = types.SimpleNamespace(master_user=None)
    return types.SimpleNamespace(
        directory=directory,
        source=types.SimpleNamespace(kind="imap", imap=imap),
        target=types.SimpleNamespace(kind="m365", imap=imap),
    )


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_codetwo_file_brings_the_users_of_an_imap_source(tmp_path: Path) -> None:
    """Each row becomes a discovered user (name from Display Name or First + Last, login in
    the detail); the ones with a password have it in the vault, the other waits for it;
    importing again adds nobody."""
    csv_file = write(
        tmp_path / "users.csv",
        [
            "Login;Password;First Name;Last Name;Display Name",
            "ann@mail.example;pw-ann;Ann;Lee;Ann Lee",
            "bob;;Bob;Stone;",
        ],
    )
    project = imap_project(tmp_path)
    with Journal.open(str(tmp_path / "journal.db")) as journal:
        result = import_batch(project, journal, csv_file, name="w1", env=ENV)  # type: ignore[arg-type]
        assert result["added"] == 2 and result["assigned"] == {"w1": 2}
        assert result["waiting_for_credentials"] == [{"user": "bob", "side": "source"}]
        items = {i["source_address"]: i for i in journal.items(kind="user")}
        assert items["ann@mail.example"]["name"] == "Ann Lee"
        assert items["bob"]["name"] == "Bob Stone"
        assert items["ann@mail.example"]["phase"] == "discovered"
        assert items["ann@mail.example"]["detail"]["source"]["login"] == "ann@mail.example"
        assert items["bob"]["state"] == "waiting"
        vault = Vault.open(tmp_path, env=ENV)
        assert vault.get(items["ann@mail.example"]["key"]).password == "pw-ann"  # type: ignore[union-attr]
        again = import_batch(project, journal, csv_file, name="w1", env=ENV)  # type: ignore[arg-type]
        assert again["added"] == 0 and len(journal.items(kind="user")) == 2


def test_duplicate_logins_are_refused_before_any_write(tmp_path: Path) -> None:
    """The same login twice (any case) names both lines; no user and no vault is written."""
    csv_file = write(
        tmp_path / "users.csv",
        ["Login,Password", "ann@mail.example,a", "Ann@Mail.example,b"],
    )
    with Journal.open(str(tmp_path / "journal.db")) as journal:
        with pytest.raises(InputError, match=r"listed twice.*lines 2 and 3"):
            import_batch(imap_project(tmp_path), journal, csv_file, name="w", env=ENV)  # type: ignore[arg-type]
        assert journal.items(kind="user") == []
    assert not Vault(tmp_path, None).exists()
