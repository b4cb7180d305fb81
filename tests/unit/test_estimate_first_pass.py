"""A first pass's estimate from Get-MailboxStatistics (recorded rows), journaled and reused."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from coexist import estimate
from coexist.engine.context import CMDLETS, KIND_CAPABILITIES
from coexist.errors import PermissionDenied
from coexist.estimate import STATISTICS, Volume
from coexist.journal import Journal

# Rows as Exchange Online's REST face and Get-MailboxStatistics.md's examples print them.
RECORDED = {
    "ann@src.example": {"ItemCount": 1200, "TotalItemSize": "1.678 GB (1,801,734,144 bytes)"},
    "bob@src.example": {"ItemCount": 40, "TotalItemSize": "2.5 MB (2,621,440 bytes)"},
}


@dataclass
class Recorded:
    """A CmdletRunner answering Get-MailboxStatistics from recorded rows; counts its calls."""

    rows: dict[str, dict[str, Any]]
    calls: list[str] = field(default_factory=list)

    async def run(self, cmdlet: str, **params: Any) -> list[dict[str, Any]]:
        assert cmdlet == STATISTICS
        self.calls.append(params["Identity"])
        if params["Identity"] not in self.rows:
            raise PermissionDenied("The role does not allow it", service="Exchange", status=403)
        return [self.rows[params["Identity"]]]


@dataclass
class FakeSide:
    kind: str
    cmdlets: Recorded

    def has(self, capability: str) -> bool:
        return capability in KIND_CAPABILITIES[self.kind]


@pytest.fixture
def journal() -> Iterator[Journal]:
    with Journal.open("sqlite://") as j:
        for name in ("ann", "bob", "cy"):
            j.upsert_item("user", name, source_address=f"{name}@src.example")
        yield j


def session(
    journal: Journal, kind: str, rows: dict[str, dict[str, Any]], planning: bool = False
) -> Any:
    engine = SimpleNamespace(concurrency_per_tenant=2, outlook_time_scale=1)
    project = SimpleNamespace(engine=engine, migration=SimpleNamespace(mover="graph-items"))
    ctx = SimpleNamespace(source=FakeSide(kind, Recorded(rows)), run_id=None)
    return SimpleNamespace(journal=journal, project=project, ctx=ctx, planning=planning)


def users(journal: Journal, *names: str) -> list[dict[str, Any]]:
    return [i for i in (journal.get_item("user", n) for n in names) if i is not None]


def test_byte_count_reads_exchange_text() -> None:
    """TotalItemSize's bytes come from Exchange's "(N bytes)" text, a number or {"Value": N}."""
    assert estimate.byte_count("48.56 MB (50,917,744 bytes)") == 50_917_744
    assert estimate.byte_count("0 B (0 bytes)") == 0
    assert estimate.byte_count(1234) == 1234 and estimate.byte_count({"Value": 7}) == 7
    assert estimate.byte_count("Unlimited") is None and estimate.byte_count(None) is None


def test_first_pass_estimated_from_statistics_and_journaled(journal: Journal) -> None:
    """Before a first pass, each mailbox is sized by one Get-MailboxStatistics call; the
    estimate uses the later passes' rate model and says where the sizes come from; the
    observation is journaled, so a second run within a day asks nothing."""
    items = users(journal, "ann", "bob")
    sess = session(journal, "m365", RECORDED)
    first = asyncio.run(estimate.first_pass_sizes(sess, items, "prestage"))
    assert sorted(sess.ctx.source.cmdlets.calls) == ["ann@src.example", "bob@src.example"]
    assert first.volumes["ann"] == Volume(1200, 1_801_734_144, STATISTICS) and first.asked == 2
    rate = estimate.rate_for("graph-items")
    assert rate is not None
    est = estimate.estimate("prestage", list(first.volumes.values()), rate, 2, "graph-items")
    # The same model as later passes: ann's bytes at 0.5 MB/s bind (≈ 1 h), bob in parallel.
    assert est.seconds == pytest.approx(1_801_734_144 / rate.bytes_per_s)
    assert est.sized == 2 and est.by_statistics == 2
    assert "from Get-MailboxStatistics" in est.text() and "an estimate" in est.text()
    seen = (journal.get_item("user", "ann") or {})["detail"][estimate.OBSERVED]
    assert seen["items"] == 1200 and seen["bytes"] == 1_801_734_144 and seen["observed_at"]

    again = session(journal, "m365", RECORDED)
    second = asyncio.run(estimate.first_pass_sizes(again, items, "prestage"))
    assert again.ctx.source.cmdlets.calls == [] and second.asked == 0
    assert second.volumes == first.volumes


def test_stale_observation_is_read_again(journal: Journal) -> None:
    """An observation older than a day is asked again."""
    items = users(journal, "bob")
    asyncio.run(estimate.first_pass_sizes(session(journal, "m365", RECORDED), items, "prestage"))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=25)
    sess = session(journal, "m365", RECORDED)
    asyncio.run(estimate.first_pass_sizes(sess, items, "prestage", now=later))
    assert sess.ctx.source.cmdlets.calls == ["bob@src.example"]


def test_failed_read_leaves_mailbox_unsized_and_says_why(journal: Journal) -> None:
    """A refused read (no role) sizes nothing for that mailbox and says why; others count."""
    sess = session(journal, "m365", RECORDED)
    first = asyncio.run(estimate.first_pass_sizes(sess, users(journal, "ann", "cy"), "prestage"))
    assert set(first.volumes) == {"ann"}
    assert "Get-MailboxStatistics failed for 1 mailboxes" in first.why
    vols = [first.volumes["ann"], Volume(None, None, None)]
    text = estimate.estimate("prestage", vols, estimate.M365, 2, "graph-items", first.why).text()
    assert "1 mailboxes not sized yet" in text and "cy@src.example" in text


@pytest.mark.parametrize("kind", ["imap", "workmail", "exchange"])
def test_source_without_cmdlets_says_why(journal: Journal, kind: str) -> None:
    """IMAP, WorkMail and Exchange without remote PowerShell: no call, and the text says why."""
    assert CMDLETS not in KIND_CAPABILITIES[kind]
    sess = session(journal, kind, RECORDED)
    first = asyncio.run(estimate.first_pass_sizes(sess, users(journal, "ann"), "prestage"))
    assert first.volumes == {} and sess.ctx.source.cmdlets.calls == []
    est = estimate.estimate(
        "prestage", [Volume(None, None, None)], estimate.M365, 2, "x", first.why
    )
    assert est.text().startswith("prestage: no estimate yet for 1 mailboxes")
    assert "Get-MailboxStatistics" in est.text() or "powershell_url" in est.text()


def test_mailboxes_with_a_pass_are_not_asked(journal: Journal) -> None:
    """A mailbox the journal already sizes (a previous pass) is not asked again."""
    run_id = journal.start_run("prestage")
    journal.pass_finished(journal.pass_started(run_id, "ann", "prestage"), "ok", {"copied": 3})
    sess = session(journal, "m365", RECORDED)
    first = asyncio.run(estimate.first_pass_sizes(sess, users(journal, "ann"), "prestage"))
    assert sess.ctx.source.cmdlets.calls == [] and first.volumes == {}


def test_plan_reads_but_journals_nothing(journal: Journal) -> None:
    """A plan asks Get-MailboxStatistics (a read) but leaves the journal as it was."""
    sess = session(journal, "m365", RECORDED, planning=True)
    first = asyncio.run(estimate.first_pass_sizes(sess, users(journal, "bob"), "prestage"))
    assert first.volumes["bob"] == Volume(40, 2_621_440, STATISTICS)
    assert estimate.OBSERVED not in ((journal.get_item("user", "bob") or {}).get("detail") or {})
