"""The credential vault: encrypted, owner-only, atomic; a wrong key or a changed file is a
clear error, never a traceback or a password."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from coexist.errors import InputError, StorageError
from coexist.vault import ENV_KEY, KEYRING_SERVICE, VAULT_FILE, Credential, Vault, new_key

PASSWORD = "Tr0ub4dor&3-correct horse"


def open_vault(directory: Path, key: str | None = None) -> Vault:
    return Vault.open(directory, env={ENV_KEY: key or KEY})


KEY = new_key()


def filled(directory: Path) -> Vault:
    vault = open_vault(directory)
    vault.put(
        {
            ("user-1", "source"): Credential("ann@fabrikam.example", PASSWORD),
            ("user-2", "target"): Credential("bob", "s3cret;with,delims\"'"),
        }
    )
    return vault


class FakeKeyring:
    """A stand-in for the optional `keyring` package's two functions (it is not installed)."""

    class errors:  # the package's own module name
        class KeyringError(Exception):
            pass

    def __init__(self, value: str | None = None, *, broken: bool = False) -> None:
        self.value, self.broken = value, broken
        self.stored: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, user: str) -> str | None:
        if self.broken:
            raise self.errors.KeyringError("no recommended backend")
        return self.stored.get((service, user), self.value)

    def set_password(self, service: str, user: str, value: str) -> None:
        self.stored[(service, user)] = value


def test_round_trip(tmp_path: Path) -> None:
    """What is put is read back, by user and side, with a time; holdings show no password."""
    filled(tmp_path)
    again = open_vault(tmp_path)
    assert again.get("user-1") == Credential(
        "ann@fabrikam.example", PASSWORD, again.read()["user-1"]["source"].set_at
    )
    assert again.get("user-2", "target") is not None
    assert again.get("user-2", "target").password == "s3cret;with,delims\"'"  # type: ignore[union-attr]
    assert again.get("user-1", "target") is None and again.get("nobody") is None
    holdings = again.holdings()
    assert holdings["user-1"]["source"]["login"] == "ann@fabrikam.example"
    assert PASSWORD not in json.dumps(holdings)


def test_password_is_not_in_the_file_or_a_repr(tmp_path: Path) -> None:
    """The file holds ciphertext only (no password, no login); a Credential's repr hides it."""
    vault = filled(tmp_path)
    raw = vault.path.read_bytes()
    assert PASSWORD.encode() not in raw and b"ann@fabrikam" not in raw and b"user-1" not in raw
    assert PASSWORD not in repr(vault.read())


def test_file_mode_is_0600_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    """The vault and its lock file are owner-only; the atomic write leaves no temp file."""
    vault = filled(tmp_path)
    assert stat.S_IMODE(vault.path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / f"{VAULT_FILE}.lock").stat().st_mode) == 0o600
    vault.put({("user-3", "source"): Credential("cy", "x")})
    assert stat.S_IMODE(vault.path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [VAULT_FILE, f"{VAULT_FILE}.lock"]


def test_unchanged_put_writes_nothing(tmp_path: Path) -> None:
    """Storing the same login and password again changes nothing (the file is not rewritten)."""
    vault = filled(tmp_path)
    before = vault.path.read_bytes()
    assert vault.put({("user-1", "source"): Credential("ann@fabrikam.example", PASSWORD)}) == []
    assert vault.path.read_bytes() == before
    assert vault.put({("user-1", "source"): Credential("ann@fabrikam.example", "new")}) == [
        ("user-1", "source")
    ]


def test_wrong_key_is_a_clear_error(tmp_path: Path) -> None:
    """Another key is an InputError naming COEXIST_VAULT_KEY and both key ids; no traceback
    text, no key."""
    filled(tmp_path)
    other = new_key()
    with pytest.raises(InputError) as exc:
        open_vault(tmp_path, other).read()
    message = str(exc.value)
    assert "written with another key" in message and ENV_KEY in message
    assert other not in message and KEY not in message
    assert exc.value.fields["variable"] == ENV_KEY


@pytest.mark.parametrize("where", ["token", "key_id-kept", "not-json", "header"])
def test_tampering_is_detected(tmp_path: Path, where: str) -> None:
    """A changed token fails its integrity check; a file that is not a vault says so. The
    error names the file and the way out, and shows no password."""
    vault = filled(tmp_path)
    doc: dict[str, Any] = json.loads(vault.path.read_text())
    if where == "token":
        token = doc["token"]
        middle = len(token) // 2
        doc["token"] = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
        vault.path.write_text(json.dumps(doc))
    elif where == "key_id-kept":  # another key's token under this key's header
        (tmp_path / "other").mkdir()
        other = open_vault(tmp_path / "other", new_key())
        other.put({("user-1", "source"): Credential("ann", "x")})
        doc["token"] = json.loads(other.path.read_text())["token"]
        vault.path.write_text(json.dumps(doc))
    elif where == "not-json":
        vault.path.write_text("user-1,ann," + PASSWORD)
    else:
        doc["format"] = "something else"
        vault.path.write_text(json.dumps(doc))
    with pytest.raises(StorageError) as exc:
        open_vault(tmp_path).read()
    assert str(vault.path) in str(exc.value) and "purge" in str(exc.value)
    assert PASSWORD not in str(exc.value)


def test_missing_key_names_the_variable(tmp_path: Path) -> None:
    """No COEXIST_VAULT_KEY and no keyring: an error naming the variable and how to make a key."""
    with pytest.raises(InputError) as exc:
        Vault.open(tmp_path, env={}, keyring=FakeKeyring(None))
    assert ENV_KEY in exc.value.message and "new-key" in str(exc.value.next_step)


@pytest.mark.parametrize("bad", ["not-a-key", "c2hvcnQ=", "x" * 44])
def test_malformed_key_is_named_not_shown(tmp_path: Path, bad: str) -> None:
    """A value that is not a Fernet key is refused naming the variable, never echoing it."""
    with pytest.raises(InputError) as exc:
        Vault.open(tmp_path, env={ENV_KEY: bad})
    assert ENV_KEY in exc.value.message and bad not in str(exc.value)


def test_key_from_the_os_keyring(tmp_path: Path) -> None:
    """Without COEXIST_VAULT_KEY the keyring's key for this project opens the vault; a
    keyring without a backend counts as no key."""
    ring = FakeKeyring()
    ring.set_password(KEYRING_SERVICE, str(tmp_path), KEY)
    Vault.open(tmp_path, env={}, keyring=ring).put({("u", "source"): Credential("u", "p")})
    assert open_vault(tmp_path).get("u") is not None  # the same key
    with pytest.raises(InputError, match=ENV_KEY):
        Vault.open(tmp_path, env={}, keyring=FakeKeyring(broken=True))


def test_remove_and_destroy(tmp_path: Path) -> None:
    """remove drops named users; destroy deletes the file without needing the key."""
    vault = filled(tmp_path)
    assert vault.remove(["user-1", "nobody"]) == ["user-1"]
    assert set(open_vault(tmp_path).read()) == {"user-2"}
    assert Vault.open(tmp_path, env={}, keyring=FakeKeyring(None), need_key=False).destroy()
    assert list(tmp_path.iterdir()) == []
    assert open_vault(tmp_path).read() == {}  # no vault: empty, not an error
