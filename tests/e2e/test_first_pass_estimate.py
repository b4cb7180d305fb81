"""A fresh batch's first pass is estimated from the source's Get-MailboxStatistics (issue 14's
gap): `prestage --plan` shows it, its figures are the seeded mail's, and a run after the
observation was journaled asks Exchange nothing again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import Result

from coexist import estimate
from coexist.runtime import open_journal, session
from coexist.sandbox import Sandbox, mailseed
from coexist.sandbox.graph.outlook_items import pim_store
from coexist.settings import load_project
from tests.e2e.test_idempotence import journal_snapshot, run_json, world_bytes

Cli = Callable[..., Result]
USERS = 8
ITEMS = 6


def store_totals(sb: Sandbox, keys: list[str]) -> tuple[int, int]:
    """(items, bytes) the sandbox's stores hold for these source mailboxes."""
    assert sb.ctx is not None
    pim = pim_store(sb.ctx)
    items = size = 0
    for key in keys:
        for n, b in (sb.mail.totals("source", key), pim.totals("source", key)):
            items, size = items + n, size + b
    return items, size


def users_of(project: Path) -> list[dict[str, Any]]:
    journal = open_journal(load_project(project))
    try:
        return journal.items("user")
    finally:
        journal.close()


def test_fresh_batch_estimated_from_mailbox_statistics(
    make_project: Callable[..., Path], sandbox: Sandbox, cli: Cli
) -> None:
    """prestage --plan on a batch with no pass yet: every mailbox is sized by one
    Get-MailboxStatistics read, the figures equal what the sandbox's stores hold, the text
    says where they come from, and the plan journals nothing. Once the observations are
    journaled (a real run's start), the next plan reads them and asks Exchange nothing."""
    project = make_project(users=USERS)
    p = str(project)
    run_json(cli, "discover", "--project", p)
    run_json(cli, "provision", "--project", p, "--all")
    users = users_of(project)
    keys = [str(u["key"]) for u in users]
    mailseed.seed_mailboxes(sandbox.mail, "source", keys, seed=4, items=ITEMS)
    assert sandbox.ctx is not None
    pim = pim_store(sandbox.ctx)
    for key in keys[:2]:  # contacts count as Exchange counts them: items of the mailbox
        folder = pim.default_folder("source", key, "contacts")
        pim.create_item("source", key, folder.id, "contact", {"displayName": "Ann Lee"})
    items, size = store_totals(sandbox, keys)
    assert items == len(keys) * ITEMS + 2 and size > 0

    world, journal = world_bytes(sandbox), journal_snapshot(project, include_logs=True)
    text = cli("prestage", "--project", p, "--all", "--plan")
    assert text.exit_code == 0, text.output
    first = run_json(cli, "prestage", "--project", p, "--all", "--plan")
    assert world_bytes(sandbox) == world and journal_snapshot(project, include_logs=True) == journal
    est = first["estimate"]
    assert est["is_estimate"] is True and est["sized_mailboxes"] == len(users)
    assert est["sized_by_statistics"] == len(users)
    assert (est["items"], est["bytes"]) == (items, size)
    assert est["seconds"] is not None and "from Get-MailboxStatistics" in est["text"]
    said = " ".join(text.output.split())
    assert "prestage: estimated" in said and "from Get-MailboxStatistics" in said, said

    async def observe() -> estimate.FirstPass:
        # What a real prestage does before its passes: read and journal the sizes.
        async with session(project, "prestage", {}) as sess:
            todo = sess.journal.items("user")
            return await estimate.first_pass_sizes(sess, todo, "prestage")

    journaled = asyncio.run(observe())
    assert journaled.asked == len(users)
    assert all(estimate.OBSERVED in (u.get("detail") or {}) for u in users_of(project))
    again = run_json(cli, "prestage", "--project", p, "--all", "--plan")
    assert (again["estimate"]["items"], again["estimate"]["bytes"]) == (items, size)
    # The same plan, less one Get-MailboxStatistics read per mailbox.
    assert again["calls"]["source"] == first["calls"]["source"] - len(users)


def test_second_run_reads_the_journaled_statistics(
    make_project: Callable[..., Path], sandbox: Sandbox, cli: Cli
) -> None:
    """A real prestage whose mailboxes are still being made (no pass yet) journals each
    mailbox's statistics with their time; the next run within a day estimates from the
    journal: the same figures, the same observation times (nothing asked again)."""
    project = make_project(users=USERS, **{"engine.wait_in_command_s": 0})
    p = str(project)
    run_json(cli, "discover", "--project", p)
    run_json(cli, "provision", "--project", p, "--all")
    keys = [str(u["key"]) for u in users_of(project)]
    mailseed.seed_mailboxes(sandbox.mail, "source", keys, seed=5, items=ITEMS)
    items, size = store_totals(sandbox, keys)
    with sandbox.world.lock:
        # Licensed MailUsers get their mailbox in an hour: the passes wait, none runs.
        sandbox.world.settings.provisioning_delay_s = 3600.0

    def observations() -> dict[str, Any]:
        return {
            str(u["key"]): (u.get("detail") or {}).get(estimate.OBSERVED) for u in users_of(project)
        }

    first = run_json(cli, "prestage", "--project", p, "--all")
    assert first["waiting"] and (first["estimate"]["items"], first["estimate"]["bytes"]) == (
        items,
        size,
    )
    seen = observations()
    assert all(
        v and v["source"] == "Get-MailboxStatistics" and v["observed_at"] for v in seen.values()
    )
    assert sum(v["items"] for v in seen.values()) == items

    second = run_json(cli, "prestage", "--project", p, "--all")
    assert second["estimate"]["sized_by_statistics"] == len(keys)
    assert (second["estimate"]["items"], second["estimate"]["bytes"]) == (items, size)
    assert observations() == seen  # read from the journal, not asked and journaled again
