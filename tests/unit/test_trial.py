"""Trial passes (`coexist prestage --trial`, MigrationWiz's Trial Migration) through the one
sync algorithm over sync's in-memory stores: only recent items, or the newest few per
folder; counted in the item map so a trial run twice and the later passes copy nothing
twice; `[trial]` settings checked like every setting; status says "trial"."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from coexist.commands import trial_window
from coexist.engine.context import Context
from coexist.errors import ConfigError
from coexist.journal import Journal
from coexist.migrate.passes import DataPassStep, PassResult, Window
from coexist.migrate.summary import data_summary
from coexist.migrate.sync import StoreMover
from coexist.settings import load_project
from coexist.tenants.protocols import MailboxStore
from tests.unit.test_sync import USER, MemoryStore

NOW = datetime.now(UTC)


def days_ago(n: float) -> str:
    return (NOW - timedelta(days=n)).isoformat()


def run(
    tmp_path: Path, src: MailboxStore, tgt: MailboxStore, kind: str, window: Window
) -> PassResult:
    """One pass of `kind` over `window` between the two stores (the journal is kept)."""
    migration = SimpleNamespace(
        folder_rules=[],
        include_folders=[],
        exclude_folders=[],
        max_item_mb=1,
        encrypted="skip",
        deletions="keep",
        reconcile_tolerance=0,
    )
    project: Any = SimpleNamespace(migration=migration, file="project.toml")

    @asynccontextmanager
    async def open_stores(
        ctx: Context, subject: str
    ) -> AsyncIterator[tuple[MailboxStore, MailboxStore]]:
        yield src, tgt

    with Journal.open(f"sqlite:///{tmp_path / 'j.db'}") as journal:
        journal.upsert_item("user", USER)
        ctx = Context(project, journal, None, None, run_id=journal.start_run("test"))  # type: ignore[arg-type]
        return asyncio.run(StoreMover(open_stores).run(ctx, USER, kind, window))


def mailbox() -> MemoryStore:
    """INBOX: 3 recent (1, 2, 3 days old) and 2 old (200, 300 days); Projects: 3 recent."""
    src = MemoryStore()
    for n in (1, 2, 3, 200, 300):
        src.put(("INBOX",), f"inbox-{n}d", received=days_ago(n))
    for n in (4, 5, 6):
        src.put(("INBOX", "Projects"), f"projects-{n}d", received=days_ago(n))
    return src


def subjects(store: MemoryStore, *path: str) -> list[str]:
    return sorted(
        m.mime.split(b"Subject: ")[1].split(b"\r\n")[0].decode() for m in store.in_folder(*path)
    )


def test_trial_copies_the_newest_items_per_folder_once_and_later_passes_the_rest(
    tmp_path: Path,
) -> None:
    """A trial of 2 items per folder in the last 10 days copies each folder's 2 newest; run
    again it copies nothing; pre-stage (older than 90 days) and the full pass then copy the
    rest, each message exactly once."""
    src, tgt = mailbox(), MemoryStore()
    trial = Window(since=NOW - timedelta(days=10), per_folder=2)
    first = run(tmp_path, src, tgt, "trial", trial)
    assert first.counts.get("copied", 0) == 4 and first.detail.startswith("trial pass: 4 copied")
    assert subjects(tgt, "INBOX") == ["inbox-1d", "inbox-2d"]
    assert subjects(tgt, "INBOX", "Projects") == ["projects-4d", "projects-5d"]
    assert run(tmp_path, src, tgt, "trial", trial).counts.get("copied", 0) == 0

    prestage = run(tmp_path, src, tgt, "prestage", Window(older_than=timedelta(days=90)))
    assert prestage.counts.get("copied", 0) == 2  # the two old ones
    full = run(tmp_path, src, tgt, "cutover", Window())
    assert full.counts.get("copied", 0) == 2  # inbox-3d, projects-6d: nothing twice
    assert len(tgt.items) == len(src.items) == 8
    assert subjects(tgt, "INBOX") == subjects(src, "INBOX")
    assert full.counts.get("difference", 0) == 0


def test_trial_by_days_only_copies_every_recent_item(tmp_path: Path) -> None:
    """Without a per-folder limit a trial copies what arrived in its days, nothing older."""
    src, tgt = mailbox(), MemoryStore()
    result = run(tmp_path, src, tgt, "trial", Window(since=NOW - timedelta(days=10)))
    assert result.counts.get("copied", 0) == 6 and result.counts.get("pending", 0) == 2
    assert "inbox-200d" not in subjects(tgt, "INBOX")


def test_trial_window_from_settings() -> None:
    """[trial] days gives the window's start, [trial] items the per-folder limit (0: none),
    and the pass is journaled as kind "trial"."""
    now = datetime(2026, 3, 1, tzinfo=UTC)
    both: Any = SimpleNamespace(trial=SimpleNamespace(days=10, items=10))
    fields = trial_window(both, now)
    assert fields == {"kind": "trial", "since": "2026-02-19T00:00:00+00:00", "per_folder": 10}
    step = DataPassStep(subject=USER, **fields)
    assert step.window().per_folder == 10 and step.key == f"migrate.pass.trial:{USER}"
    items_only: Any = SimpleNamespace(trial=SimpleNamespace(days=0, items=10))
    assert trial_window(items_only, now)["since"] is None
    days_only: Any = SimpleNamespace(trial=SimpleNamespace(days=10, items=0))
    assert trial_window(days_only, now)["per_folder"] is None
    assert "per_folder" not in Window().to_dict()  # older passes' windows still compare equal


PROJECT = """\
[source]
kind = "imap"

[source.imap]
host = "imap.example.org"

[target]
kind = "imap"

[target.imap]
host = "imap.example.com"

[domains]
destination_domain = "example.com"

[trial]
{trial}
"""


@pytest.mark.parametrize(
    ("trial", "words"),
    [
        ("days = 0\nitems = 0", "copy everything"),
        ("items = -1", "items"),
        ('days = "ten"', "days"),
        ("weeks = 1", "weeks"),
    ],
)
def test_trial_settings_are_checked(tmp_path: Path, trial: str, words: str) -> None:
    """A trial that would copy everything, a negative or non-numeric value and an unknown
    key are refused, naming the key."""
    (tmp_path / "project.toml").write_text(PROJECT.format(trial=trial))
    with pytest.raises(ConfigError, match=words) as info:
        load_project(tmp_path, env={})
    assert "trial" in str(info.value.fields["key"])


def test_trial_settings_default_and_load(tmp_path: Path) -> None:
    """Defaults: the last 10 days, no per-folder limit; set values load."""
    (tmp_path / "project.toml").write_text(PROJECT.format(trial=""))
    assert (
        load_project(tmp_path, env={}).trial.days,
        load_project(tmp_path, env={}).trial.items,
    ) == (10, 0)
    (tmp_path / "project.toml").write_text(PROJECT.format(trial="days = 0\nitems = 10"))
    loaded = load_project(tmp_path, env={}).trial
    assert (loaded.days, loaded.items) == (0, 10)


def test_status_says_the_last_pass_was_a_trial() -> None:
    """A trial pass shows as such in status's data column."""
    passes = [{"kind": "trial", "status": "ok", "counts": {"copied": 4, "bytes": 4000}}]
    summary = data_summary(passes, "imap-sync")
    assert summary.last_kind == "trial" and summary.text().endswith("last: trial ok")
