"""An IMAP -> IMAP project on the session's Dovecot, for the CLI tests of imap-sync.

Each user is a pair of fresh Dovecot accounts (source, target) with "." as hierarchy
delimiter (Dovecot's index layout: a folder name may then hold "/"), listed in a
MigrationWiz Bulk Add CSV with both passwords, which `coexist batch import` puts in the vault.
The source is seeded with folders whose names have quotes, a slash, non-ASCII characters
(modified UTF-7 on the wire) and a five-deep tree under INBOX, messages old and new with
flags, keywords and INTERNALDATEs. `fingerprints` reads a mailbox back as (Message-ID, MIME
digest, folder path, flags, INTERNALDATE), the target's path expected after the project's
folder rule `^INBOX/->`.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from coexist.cli import main
from coexist.journal import Journal
from coexist.settings import load_project
from coexist.tenants.imap import ImapEndpoint, ImapSession, NewMessage, Password
from coexist.vault import ENV_KEY, new_key
from tests.dovecot import DovecotServer, ImapUser

KEY = new_key()
DELIMITER = "."
NOW = datetime.now(UTC).replace(microsecond=0)
OLD = NOW - timedelta(days=200)  # before prestage's 90 days
NEW = NOW - timedelta(days=5)  # after them: cutover's
# Source folders (paths) and how many old and new messages each holds.
FOLDERS: dict[tuple[str, ...], tuple[int, int]] = {
    ("INBOX",): (3, 2),
    ("INBOX", "Projects"): (2, 1),
    ("INBOX", "L1", "L2", "L3", "L4"): (1, 1),
    ('Say "hi"',): (1, 1),
    ("a/b",): (1, 1),
    ("Ünïcødé 日本",): (1, 1),
    ("Sent",): (1, 1),
    ("Archive",): (2, 0),  # \Archive: the target has none until the pass makes it
}
FLAG_CYCLE: list[tuple[frozenset[str], frozenset[str]]] = [
    (frozenset({"\\Seen"}), frozenset()),
    (frozenset({"\\Seen", "\\Flagged"}), frozenset({"Work"})),
    (frozenset({"\\Answered", "\\Seen"}), frozenset({"$Forwarded"})),
    (frozenset(), frozenset()),
]
Fingerprint = tuple[str, str, tuple[str, ...], tuple[str, ...], str]


@dataclass(frozen=True)
class MailUser:
    address: str
    source: ImapUser
    target: ImapUser


def message(address: str, n: int, folder: str) -> bytes:
    return (
        f"From: sender@example.org\r\nTo: {address}\r\nSubject: {folder} {n}\r\n"
        f"Message-ID: <{n}.{hashlib.sha256(folder.encode()).hexdigest()[:8]}.{address}>\r\n"
        f"Date: Mon, 4 Mar 2019 05:06:07 +0000\r\n\r\nbody {n} of {folder}\r\n"
    ).encode()


def run(*args: str, key: str = KEY, stdin: str | None = None) -> Result:
    """The CLI in-process with the vault key set (`stdin`: what it reads there)."""
    return CliRunner().invoke(
        main, list(args), input=stdin, env={ENV_KEY: key}, catch_exceptions=False
    )


def run_json(*args: str) -> dict[str, Any]:
    r = run(*args, "--json")
    assert r.exit_code == 0, r.output
    out: dict[str, Any] = json.loads(r.output)
    return out


class Scene:
    """The project directory, its users and the Dovecot they live on."""

    def __init__(
        self, dovecot: DovecotServer, root: Path, users: int = 2, target_delimiter: str = DELIMITER
    ) -> None:
        self.dovecot = dovecot
        self.project = root / "project"
        self.project.mkdir(parents=True)
        self.users = [
            MailUser(
                f"u{n}.{root.name}@example.org".lower(),
                dovecot.new_user("src", separator=DELIMITER),
                dovecot.new_user("tgt", separator=target_delimiter),
            )
            for n in range(users)
        ]
        self.write_project()

    @property
    def endpoint(self) -> ImapEndpoint:
        return ImapEndpoint(self.dovecot.host, self.dovecot.tls_port, "tls", self.dovecot.ca_file)

    def write_project(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        master: str = "",
        source_auth: str = "login",
    ) -> None:
        """project.toml: both sides on the Dovecot (or `host`/`port` for the source), each
        user signing in with a password of its own (source: by `source_auth`) or through
        `master`."""
        d = self.dovecot
        where = {
            "source": (host or d.host, port or d.tls_port, source_auth),
            "target": (d.host, d.tls_port, "login"),
        }
        tables = "".join(
            f'[{side}]\nkind = "imap"\n\n[{side}.imap]\nhost = "{where[side][0]}"\n'
            f'port = {where[side][1]}\nca_file = "{d.ca_file}"\nmaster_user = "{master}"\n'
            f'auth = "{where[side][2]}"\n\n'
            for side in ("source", "target")
        )
        (self.project / "project.toml").write_text(
            tables
            # No [domains]: destination_domain is a Microsoft 365 target's setting.
            + '[migration]\nfolder_rules = ["^INBOX/->"]\n'
        )

    def csv(self, passwords: dict[str, str] | None = None, *, blank: bool = False) -> Path:
        """The MigrationWiz Bulk Add CSV of the users (`passwords`: a source password
        to give instead of the right one, by address; `blank`: no password at all, as
        for administrative credentials)."""
        path = self.project.parent / "users.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(
                [
                    "Source Email",
                    "Source Login Name",
                    "Source Password",
                    "Destination Email",
                    "Destination Login Name",
                    "Destination Password",
                    "Batch",
                ]
            )
            for u in self.users:
                given = "" if blank else (passwords or {}).get(u.address, u.source.password)
                w.writerow(
                    [
                        u.address,
                        u.source.login,
                        given,
                        u.address,
                        u.target.login,
                        "" if blank else u.target.password,
                        "wave1",
                    ]
                )
        return path

    def passwords(self) -> list[str]:
        return [p for u in self.users for p in (u.source.password, u.target.password)]

    @contextmanager
    def imap(self, user: ImapUser) -> Iterator[ImapSession]:
        session = ImapSession.open(self.endpoint, Password(user.login, user.password))
        try:
            yield session
        finally:
            session.close()

    def seed(self, user: MailUser, scale: int = 1) -> None:
        """The source folders, each with its old and new messages (`scale` times as many;
        flags cycling)."""
        n = 0
        with self.imap(user.source) as s:
            for path, (old, new) in FOLDERS.items():
                old, new = old * scale, new * scale
                made = s.create_folder(path, DELIMITER) if path != ("INBOX",) else None
                name = made.name if made else "INBOX"
                batch = []
                for when in [OLD] * old + [NEW] * new:
                    flags, keywords = FLAG_CYCLE[n % len(FLAG_CYCLE)]
                    batch.append(NewMessage(message(user.address, n, name), flags, keywords, when))
                    n += 1
                s.append(name, batch)

    def add(self, user: MailUser, folder: str, n: int) -> None:
        """One more (new) message in a source folder."""
        with self.imap(user.source) as s:
            s.append(folder, [NewMessage(message(user.address, n, folder), internaldate=NOW)])

    def reflag(self, user: MailUser, folder: str) -> None:
        """Flag and mark read every message of a source folder (a change the next pass
        brings along: CONDSTORE)."""
        with self.imap(user.source) as s:
            for ref in s.changes(folder, None).new:
                s.set_flags(folder, ref.uid, frozenset({"\\Seen", "\\Flagged"}), ref.keywords)

    def fingerprints(self, user: ImapUser, *, mapped: bool = False) -> Counter[Fingerprint]:
        """Every message of a mailbox; `mapped`: with its folder as `^INBOX/->` maps it."""
        out: Counter[Fingerprint] = Counter()
        with self.imap(user) as s:
            for f in s.list_folders():
                if not f.selectable:
                    continue
                refs = s.changes(f.name, None).new
                ids = {r.uid: str(r.message_id) for r in refs}
                inbox_child = f.path[0] == "INBOX" and len(f.path) > 1
                path = f.path[1:] if mapped and inbox_child else f.path
                for m in s.fetch(f.name, refs):
                    out[
                        (
                            ids[m.uid],
                            hashlib.sha256(m.raw).hexdigest(),
                            tuple(path),
                            tuple(sorted(m.flags | m.keywords)),
                            m.internaldate.astimezone(UTC).isoformat(),
                        )
                    ] += 1
        return out

    def stored(self, user: ImapUser) -> int:
        """Messages in a mailbox as files on disk (maildir: one file each in cur/ or new/):
        read without a connection, so a test may look as often as it likes."""
        home = self.dovecot.homes / user.login
        return sum(1 for f in home.rglob("*") if f.parent.name in ("cur", "new") and f.is_file())

    def count(self, user: ImapUser) -> int:
        return sum(self.fingerprints(user).values())

    def passes(self) -> list[dict[str, Any]]:
        with Journal.open(load_project(self.project).journal_url) as j:
            return list(j.passes())

    def copied_by_last(self, kind: str) -> int:
        """Messages the last pass of `kind` of each user copied, summed."""
        last: dict[str, dict[str, Any]] = {}
        for p in self.passes():
            if p["kind"] == kind:
                last[str(p["item_key"])] = p
        return sum(int((p["counts"] or {}).get("copied", 0)) for p in last.values())

    # IMAP -> Microsoft 365 (imap-graph): the same source, the sandbox tenant as the target.

    def write_m365_project(self, connection: Path) -> None:
        """project.toml of an IMAP -> Microsoft 365 project: the source on the Dovecot, the
        target the sandbox tenant of `connection` (its connection file)."""
        d = self.dovecot
        (self.project / "project.toml").write_text(
            f'[source]\nkind = "imap"\n\n[source.imap]\nhost = "{d.host}"\n'
            f'port = {d.tls_port}\nca_file = "{d.ca_file}"\n\n'
            f'[target]\nsandbox_connection = "{connection}"\n\n'
            '[domains]\ndestination_domain = "example.net"\n\n'
            '[migration]\nfolder_rules = ["^INBOX/->"]\n'
        )

    def m365_csv(self, destinations: dict[str, str]) -> Path:
        """The MigrationWiz CSV of an IMAP -> Microsoft 365 batch: each user's source login
        and password, and its target mailbox (`destinations`, by source address); no
        destination credentials (the tenant is reached with the project's app). MigrationWiz's
        format has no batch column: import it with `--name`."""
        path = self.project.parent / "users-m365.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(
                ["Source Email", "Source Login Name", "Source Password", "Destination Email"]
            )
            for u in self.users:
                w.writerow([u.address, u.source.login, u.source.password, destinations[u.address]])
        return path
