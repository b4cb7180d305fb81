"""The operator's IMAP runbook settings reach the IMAP store through the one sync algorithm
(StoreMover, as the imap-sync mover runs it) between two real Dovecot users: folder rules
(`^INBOX/->`), include/exclude filters, the maximum item size and the time filter
(pre-stage older than 90 days, then the full pass); per-folder count and byte
reconciliation after each pass, skipped items listed with folder and subject."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from coexist.engine.context import Context
from coexist.journal import Journal
from coexist.migrate.passes import PassResult, Window
from coexist.migrate.stores.imap import ImapStore
from coexist.migrate.sync import StoreMover
from coexist.tenants.imap import ImapConnections, ImapEndpoint, ImapSession, NewMessage, Password
from coexist.tenants.protocols import MailboxStore
from tests.dovecot import DovecotServer, ImapUser

KEY = "src@example.org"
NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=200)
RECENT = NOW - timedelta(days=2)


def message(subject: str, body: str = "hello") -> bytes:
    return (
        f"From: a@example.org\r\nTo: b@example.org\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@example.org>\r\n\r\n{body}\r\n"
    ).encode()


BIG = "\r\n".join(["x" * 998] * 1100)  # ~1.1 MB: over max_item_mb = 1


@pytest.fixture
def endpoint(dovecot: DovecotServer) -> ImapEndpoint:
    return ImapEndpoint(dovecot.host, dovecot.tls_port, "tls", dovecot.ca_file)


def seed(endpoint: ImapEndpoint, user: ImapUser) -> None:
    """INBOX (old, recent, big old), INBOX/Projects, INBOX/Projects/2024 and Newsletters."""
    with ImapSession.open(endpoint, Password(user.login, user.password)) as s:
        for path in (["INBOX", "Projects"], ["INBOX", "Projects", "2024"], ["Newsletters"]):
            s.create_folder(path, "/")
        s.append("INBOX", [NewMessage(message("inbox old"), internaldate=OLD)])
        s.append("INBOX", [NewMessage(message("inbox recent"), internaldate=RECENT)])
        s.append("INBOX", [NewMessage(message("big", BIG), internaldate=OLD)])
        s.append("INBOX/Projects", [NewMessage(message("project"), internaldate=OLD)])
        s.append("INBOX/Projects/2024", [NewMessage(message("deep"), internaldate=OLD)])
        s.append("Newsletters", [NewMessage(message("news"), internaldate=OLD)])


def subjects(endpoint: ImapEndpoint, user: ImapUser) -> dict[str, list[str]]:
    """Folder name -> subjects of its messages (folders holding any)."""
    out: dict[str, list[str]] = {}
    with ImapSession.open(endpoint, Password(user.login, user.password)) as s:
        for f in s.list_folders():
            if not f.selectable or not f.messages:
                continue
            refs = s.refs(f.name, s.list_uids(f.name)[1])
            heads = s.headers(f.name, [r.uid for r in refs], ["Subject"])
            out[f.name] = sorted(h.decode().split(":", 1)[1].strip() for h in heads.values())
    return out


def flag(endpoint: ImapEndpoint, user: ImapUser, folder: str, *flags: str) -> None:
    """Set the flags of every message of a folder (as the user's mail client would)."""
    with ImapSession.open(endpoint, Password(user.login, user.password)) as s:
        for uid in s.list_uids(folder)[1]:
            s.set_flags(folder, uid, frozenset(flags), frozenset())


def flags_in(endpoint: ImapEndpoint, user: ImapUser, folder: str) -> list[frozenset[str]]:
    with ImapSession.open(endpoint, Password(user.login, user.password)) as s:
        return [r.flags for r in s.refs(folder, s.list_uids(folder)[1])]


class Passes:
    """StoreMover passes between two Dovecot users over one journal."""

    def __init__(
        self, tmp_path: Path, endpoint: ImapEndpoint, src: ImapUser, tgt: ImapUser, **migration: Any
    ) -> None:
        settings = {
            "folder_rules": [], "include_folders": [], "exclude_folders": [],
            "max_item_mb": 150, "encrypted": "copy", "deletions": "keep",
            "reconcile_tolerance": 0, **migration,
        }  # fmt: skip
        self.project: Any = SimpleNamespace(
            migration=SimpleNamespace(**settings), file="project.toml"
        )
        self.db = f"sqlite:///{tmp_path / 'journal.db'}"
        self.endpoint, self.src, self.tgt = endpoint, src, tgt

    def run(self, kind: str, window: Window) -> tuple[PassResult, dict[str, Any]]:
        """One pass; its result and the reconciliation it stored on the user."""

        async def main() -> PassResult:
            connections = ImapConnections(self.endpoint)
            async with (
                ImapStore.open(connections, Password(self.src.login, self.src.password)) as src,
                ImapStore.open(
                    connections, Password(self.tgt.login, self.tgt.password), label="target"
                ) as tgt,
            ):

                @asynccontextmanager
                async def open_stores(
                    ctx: Context, subject: str
                ) -> AsyncIterator[tuple[MailboxStore, MailboxStore]]:
                    yield src, tgt

                with Journal.open(self.db) as journal:
                    if journal.get_item("user", KEY) is None:
                        journal.upsert_item("user", KEY)
                    ctx = Context(self.project, journal, None, None)  # type: ignore[arg-type]
                    return await StoreMover(open_stores).run(ctx, KEY, kind, window)

        result = asyncio.run(main())
        with Journal.open(self.db) as journal:
            user = journal.get_item("user", KEY) or {}
        return result, dict((user.get("detail") or {})["reconciliation"])


@pytest.fixture
def users(dovecot: DovecotServer, endpoint: ImapEndpoint) -> Iterator[tuple[ImapUser, ImapUser]]:
    src, tgt = dovecot.new_user("rbs"), dovecot.new_user("rbt")
    seed(endpoint, src)
    yield src, tgt


def test_rules_filters_size_and_time_window_then_the_full_pass(
    tmp_path: Path, endpoint: ImapEndpoint, users: tuple[ImapUser, ImapUser]
) -> None:
    """`^INBOX/->` puts INBOX's children at the top, an excluded folder stays behind, the
    oversize message is skipped and listed with folder and subject, pre-stage copies only
    mail older than 90 days; the full pass copies the rest and brings a flag change made
    since; every folder reconciles by count, and by bytes where nothing was skipped; a
    third pass copies nothing."""
    src, tgt = users
    passes = Passes(
        tmp_path, endpoint, src, tgt,
        folder_rules=["^INBOX/->"], exclude_folders=["^Newsletters$"], max_item_mb=1,
    )  # fmt: skip
    first, recon = passes.run("prestage", Window(older_than=timedelta(days=90)))
    assert (first.counts["copied"], first.counts["skipped"]) == (3, 1), first
    assert subjects(endpoint, tgt) == {
        "INBOX": ["inbox old"],
        "Projects": ["project"],
        "Projects/2024": ["deep"],
    }
    [skipped] = recon["skipped_items"]
    assert skipped == {"folder": "INBOX", "subject": "big", "reason": "larger than 1 MB"}
    assert recon["unexplained"] == 0  # skipped and pending are explained

    flag(endpoint, src, "INBOX/Projects", "\\Flagged")
    full, recon = passes.run("cutover", Window())
    # CodeTwo's "Rescan": new items, and the flag change CONDSTORE reported, nothing else.
    assert full.counts["copied"] == 1 and full.counts["updated"] == 1, full
    assert full.counts["difference"] == 0
    assert subjects(endpoint, tgt)["INBOX"] == ["inbox old", "inbox recent"]
    assert flags_in(endpoint, tgt, "Projects") == [frozenset({"\\Flagged"})]
    rows = {tuple(r["source_folders"]): r for r in recon["folders"]}
    assert {("INBOX",), ("INBOX/Projects",), ("INBOX/Projects/2024",)} <= set(rows)
    assert ("Newsletters",) not in rows
    inbox = rows[("INBOX",)]
    assert (inbox["source_items"], inbox["target_items"], inbox["skipped"]) == (3, 2, 1)
    assert inbox["source_bytes"] - inbox["target_bytes"] > 1_000_000  # the big one stayed
    for path in (("INBOX/Projects",), ("INBOX/Projects/2024",)):
        row = rows[path]
        assert row["source_items"] == row["target_items"] == 1
        assert row["source_bytes"] == row["target_bytes"] > 0  # APPEND keeps the bytes
    third, _ = passes.run("cutover", Window())
    assert third.counts.get("copied", 0) == 0


def test_include_filter_moves_only_the_folders_it_names(
    tmp_path: Path, endpoint: ImapEndpoint, users: tuple[ImapUser, ImapUser]
) -> None:
    """include_folders keeps only the matching folders (INBOX's Projects tree here); the
    mapping rule still applies to them."""
    src, tgt = users
    passes = Passes(
        tmp_path,
        endpoint,
        src,
        tgt,
        folder_rules=["^INBOX/->"],
        include_folders=["^INBOX/Projects"],
    )
    result, recon = passes.run("cutover", Window())
    assert result.counts["copied"] == 2
    assert subjects(endpoint, tgt) == {"Projects": ["project"], "Projects/2024": ["deep"]}
    assert {tuple(r["source_folders"]) for r in recon["folders"]} == {
        ("INBOX/Projects",),
        ("INBOX/Projects/2024",),
    }  # no INBOX, no Sent, no Newsletters
