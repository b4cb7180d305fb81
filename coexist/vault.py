"""The credential vault: per-user passwords, encrypted, in the project directory.

IMAP sources have no admin plane: each mailbox is opened with its user's login and password,
which operators hand over as CodeTwo's or MigrationWiz's user CSV (`coexist batch import`) or
one by one (`coexist credentials set`). Those passwords live here and nowhere else: never in
the journal, logs, reports, `--json` or plan output.

The file, `credentials.vault`, is one line of JSON, owner-only (0600) and replaced atomically
(`coexist.files.write_private`)::

    {"format": "coexist-credential-vault", "version": 1, "key_id": "…", "token": "…"}

`token` is a Fernet token (cryptography: AES-128-CBC with HMAC-SHA256, so any change to it is
detected) of `{"users": {item key: {side: {"login", "password", "set_at"}}}}`. `key_id` is an
HMAC of a constant under the key: it tells "another key" from "a damaged file" without
saying anything about the key. Who has credentials is inside the encryption too.

The key is a Fernet key (32 random bytes, url-safe base64: `coexist credentials new-key`),
taken from COEXIST_VAULT_KEY, else from the OS keyring (service `coexist-vault`, user the
project directory) when the `keyring` package is installed. It is never written by coexist
anywhere but the keyring, when asked to.
"""

from __future__ import annotations

import binascii
import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import importlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from coexist import files
from coexist.errors import InputError, StorageError

ENV_KEY = "COEXIST_VAULT_KEY"
KEYRING_SERVICE = "coexist-vault"
VAULT_FILE = "credentials.vault"
FORMAT = "coexist-credential-vault"
VERSION = 1
SIDES = ("source", "target")
# The vault entry (in place of a user key) holding each imap side's master user password
# (`coexist credentials set --master --side S`), read by the side opener
# (engine/context.ImapServer) and by verify-credentials. No user key is this: user keys are
# lower-cased addresses or logins, never starting with "*".
MASTER_ENTRY = "*master*"
# The vault entry holding each xoauth2 side's OAuth client (`coexist credentials set
# --oauth-app --side S`): its login is the client id, its secret `tenants.oauth.OAuthApp`'s
# (token URL, client secret, grant, scope). Read by the side opener, which then obtains and
# refreshes access tokens itself.
OAUTH_APP_ENTRY = "*oauth-app*"
# The vault entry of a WorkMail side's AWS access key (login: the key id, secret: the secret
# access key), read by `engine.context.workmail_admin` before AWS_SECRET_ACCESS_KEY.
WORKMAIL_ENTRY = "*workmail*"
# The vault entry of the end-user credential links' HMAC key (`coexist.credlink`).
LINK_KEY_ENTRY = "*credential-link*"
_KEY_ID_LABEL = b"coexist credential vault key id"
NEW_KEY_HINT = f"export {ENV_KEY}=$(coexist credentials new-key)  (keep the key: without it the vault cannot be read)"


@dataclass(frozen=True)
class Credential:
    """One mailbox login; the password never shows in a repr (tracebacks, logs)."""

    login: str
    password: str = field(repr=False)
    set_at: str = ""

    def public(self) -> dict[str, str]:
        """What may be shown: the login and when it was set, never the password."""
        return {"login": self.login, "set_at": self.set_at}


# -- the key ------------------------------------------------------------------------------
def new_key() -> str:
    """A fresh vault key (Fernet: 32 random bytes, url-safe base64)."""
    return Fernet.generate_key().decode("ascii")


def key_id(key: bytes) -> str:
    """A short public name of a key (an HMAC under it), shown to tell keys apart."""
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


def _load_keyring() -> Any | None:
    """The `keyring` package when it is installed (an optional dependency), else None."""
    try:
        return importlib.import_module("keyring")
    except ImportError:
        return None


def keyring_key(directory: Path, keyring: Any | None) -> str | None:
    """The key the OS keyring holds for this project, if a keyring is there and has one."""
    if keyring is None:
        return None
    errors = getattr(keyring, "errors", None)
    failure = getattr(errors, "KeyringError", None) or RuntimeError
    try:
        value = keyring.get_password(KEYRING_SERVICE, str(directory))
    except failure:  # no backend on this machine (NoKeyringError), a locked keyring
        return None
    return str(value) if value else None


def store_in_keyring(directory: Path, key: str, keyring: Any | None = None) -> None:
    """Keep `key` in the OS keyring for this project (`credentials new-key --keyring`)."""
    keyring = keyring if keyring is not None else _load_keyring()
    if keyring is None:
        raise InputError(
            "the OS keyring is not available: the `keyring` package is not installed",
            next_step=f"pip install keyring, or keep the key yourself: {NEW_KEY_HINT}",
        )
    errors = getattr(keyring, "errors", None)
    failure = getattr(errors, "KeyringError", None) or RuntimeError
    try:
        keyring.set_password(KEYRING_SERVICE, str(directory), key)
    except failure as exc:
        raise InputError(
            f"the OS keyring refused the key: {type(exc).__name__}",
            next_step=f"keep the key yourself: {NEW_KEY_HINT}",
        ) from None


def resolve_key(
    directory: Path, env: Mapping[str, str] | None = None, keyring: Any | None = None
) -> bytes:
    """The vault key: COEXIST_VAULT_KEY, else the OS keyring's; an error naming both when
    neither has one, or naming the variable when its value is not a key (never the value)."""
    env = os.environ if env is None else env
    text = (env.get(ENV_KEY) or "").strip()
    origin = ENV_KEY
    if not text:
        text = keyring_key(directory, keyring if keyring is not None else _load_keyring()) or ""
        origin = f"the OS keyring ({KEYRING_SERVICE}, {directory})"
    if not text:
        raise InputError(
            f"no vault key: set {ENV_KEY} (or keep the key in the OS keyring with "
            "`coexist credentials new-key --keyring`, which needs the `keyring` package)",
            next_step=NEW_KEY_HINT,
            variable=ENV_KEY,
        )
    key = text.encode("ascii", errors="replace")
    try:
        Fernet(key)
    except (ValueError, binascii.Error):
        raise InputError(
            f"the key in {origin} is not a vault key (32 bytes, url-safe base64, 44 characters)",
            next_step=NEW_KEY_HINT,
            variable=ENV_KEY,
        ) from None
    return key


# -- the vault ----------------------------------------------------------------------------
Entries = dict[str, dict[str, Credential]]


class Vault:
    """The credential vault of one project directory."""

    def __init__(self, directory: Path, key: bytes | None) -> None:
        self.directory = directory
        self.path = directory / VAULT_FILE
        self._key = key

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        env: Mapping[str, str] | None = None,
        keyring: Any | None = None,
        need_key: bool = True,
    ) -> Vault:
        """The project's vault, its key resolved (`need_key=False`: only to purge it whole)."""
        key = resolve_key(directory, env, keyring) if need_key else None
        return cls(directory, key)

    def exists(self) -> bool:
        return self.path.exists()

    # reading ----------------------------------------------------------------------------
    def read(self) -> Entries:
        """Every credential; an empty vault when the file does not exist yet."""
        raw = self._read_file()
        if raw is None:
            return {}
        payload = self._decrypt(raw)
        return _entries(payload, self.path)

    def get(self, user_key: str, side: str = "source") -> Credential | None:
        return self.read().get(user_key, {}).get(side)

    def holdings(self) -> dict[str, dict[str, dict[str, str]]]:
        """Which users have which credentials (login and when set), never a password."""
        return {
            user: {side: cred.public() for side, cred in sides.items()}
            for user, sides in self.read().items()
        }

    # writing ----------------------------------------------------------------------------
    def put(self, credentials: Mapping[tuple[str, str], Credential]) -> list[tuple[str, str]]:
        """Store credentials (user key, side) → Credential; returns the ones that changed.
        Unchanged ones (same login and password) keep their time and write nothing."""
        unknown = sorted({side for _, side in credentials} - set(SIDES))
        if unknown:
            raise ValueError(f"credential side(s) {unknown}: expected one of {SIDES}")
        with self._locked():
            entries = self.read()
            changed: list[tuple[str, str]] = []
            now = _now()
            for (user, side), cred in credentials.items():
                old = entries.get(user, {}).get(side)
                if old is not None and (old.login, old.password) == (cred.login, cred.password):
                    continue
                entries.setdefault(user, {})[side] = Credential(cred.login, cred.password, now)
                changed.append((user, side))
            if changed:
                self._write(entries)
            return changed

    def remove(self, user_keys: list[str], sides: tuple[str, ...] = SIDES) -> list[str]:
        """Remove these users' credentials of `sides` (both by default); returns the users
        that had some."""
        with self._locked():
            entries = self.read()
            gone = [u for u in user_keys if set(entries.get(u, {})) & set(sides)]
            for user in gone:
                entries[user] = {s: c for s, c in entries[user].items() if s not in sides}
                if not entries[user]:
                    del entries[user]
            if gone:
                self._write(entries)
            return gone

    def destroy(self) -> bool:
        """Delete the vault file (a project that ended): no key needed. Returns whether there
        was one. Encrypted leftovers of an interrupted write go too."""
        with self._locked():
            existed = self.path.exists()
            for leftover in self.directory.glob(f".{VAULT_FILE}.tmp*"):
                leftover.unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)
        lock = self._lock_path()
        lock.unlink(missing_ok=True)
        return existed

    # internals --------------------------------------------------------------------------
    def _lock_path(self) -> Path:
        return self.directory / f"{VAULT_FILE}.lock"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time: a read-modify-write of the vault under an exclusive lock
        (two `batch import`s at once must not lose each other's passwords)."""
        lock = self._lock_path()
        try:
            files.create_private(lock)
            fd = os.open(lock, os.O_RDWR)
        except OSError as exc:
            raise files.write_failed(
                lock, exc, next_step="make the project directory writable for this user"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _require_key(self) -> bytes:
        if self._key is None:  # a vault opened to be destroyed only
            raise InputError(f"no vault key for {self.path}", next_step=NEW_KEY_HINT)
        return self._key

    def _read_file(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise self._damaged(f"it cannot be read ({_cause(exc)})") from None
        try:
            raw = json.loads(text)
        except ValueError:
            raise self._damaged("it is not a credential vault (not JSON)") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise self._damaged("it is not a credential vault (no vault header)")
        if raw.get("version") != VERSION:
            raise StorageError(
                f"{self.path} is a vault of version {raw.get('version')!r}; this coexist reads "
                f"version {VERSION}",
                path=str(self.path),
                cause="unknown vault version",
                next_step="use the coexist release that wrote it",
            )
        return raw

    def _decrypt(self, raw: dict[str, Any]) -> dict[str, Any]:
        key = self._require_key()
        mine = key_id(key)
        if raw.get("key_id") != mine:
            raise InputError(
                f"the vault key does not open {self.path}: it was written with another key "
                f"(key id {raw.get('key_id')}; this key's id is {mine})",
                next_step=f"set {ENV_KEY} to the key this project's vault was written with",
                variable=ENV_KEY,
                path=str(self.path),
            )
        try:
            plain = Fernet(key).decrypt(str(raw.get("token") or "").encode("ascii"))
            payload = json.loads(plain)
        except (InvalidToken, UnicodeError, ValueError):
            # The right key (key id matches) and a token that fails its HMAC: the file was
            # changed after coexist wrote it, or damaged on disk.
            raise self._damaged(
                "its contents fail their integrity check: the file was changed or damaged "
                "after coexist wrote it"
            ) from None
        if not isinstance(payload, dict):
            raise self._damaged("its contents are not a credential list")
        return payload

    def _write(self, entries: Entries) -> None:
        key = self._require_key()
        payload = {
            "format": FORMAT,
            "users": {
                user: {
                    side: {"login": c.login, "password": c.password, "set_at": c.set_at}
                    for side, c in sides.items()
                }
                for user, sides in sorted(entries.items())
                if sides
            },
        }
        token = Fernet(key).encrypt(json.dumps(payload, sort_keys=True).encode("utf-8"))
        doc = {"format": FORMAT, "version": VERSION, "key_id": key_id(key), "token": token.decode()}
        try:
            files.write_private(self.path, json.dumps(doc) + "\n")
        except OSError as exc:
            raise files.write_failed(
                self.path, exc, next_step="free disk space or make the project directory writable"
            ) from exc

    def _damaged(self, why: str) -> StorageError:
        return StorageError(
            f"the credential vault {self.path} cannot be used: {why}",
            path=str(self.path),
            cause=why,
            next_step="restore the file from a backup, or `coexist credentials purge --all` "
            "and import the passwords again",
        )


def _entries(payload: Mapping[str, Any], path: Path) -> Entries:
    users = payload.get("users")
    if not isinstance(users, dict):
        raise StorageError(
            f"the credential vault {path} holds no user list",
            path=str(path),
            cause="no user list",
        )
    out: Entries = {}
    for user, sides in users.items():
        out[str(user)] = {
            str(side): Credential(
                str(c.get("login", "")), str(c["password"]), str(c.get("set_at", ""))
            )
            for side, c in (sides or {}).items()
            if isinstance(c, dict) and "password" in c
        }
    return out


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _cause(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or type(exc).__name__)
