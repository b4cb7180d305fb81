"""Plan mode of Microsoft 365 -> Microsoft 365 passes (both movers), against the sandbox
tenants: `prestage --plan` runs the real pass with its Graph writes captured and says per
source folder (by its path, not its Graph id) how many messages and bytes it would copy;
the target mailbox and the journal's item map are left as they were, and the real pass
then copies exactly what the plan said."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coexist import commands
from coexist.journal import Journal
from coexist.sandbox import Sandbox
from coexist.sandbox.graph.mail import message_size
from coexist.settings import load_project
from tests.e2e.conftest import TEST_RETRY
from tests.e2e.test_graph_mover import World, last_counts, mime


@pytest.mark.parametrize("mover", ["graph-items", "graph-import-export"])
def test_a_m365_plan_says_per_folder_what_it_would_copy_and_writes_nothing(
    make_project: Callable[..., Path], sandbox: Sandbox, mover: str
) -> None:
    """Three old messages in Inbox and Inbox/Projects and a recent one: the plan of the
    pre-stage pass says 2 from Inbox and 1 from Inbox/Projects with their bytes (the
    pass's real bytes; graph-items: Exchange's sizes), creates Projects, sends no write (target messages, folders and the
    item map unchanged); the real pass copies 3; a plan after it copies nothing."""
    project = make_project(users=10, **{"migration.mover": mover})
    commands.discover(project)
    commands.provision(project, all_users=True, retry=TEST_RETRY)
    w = World(sandbox, project)
    user = str(w.user["source_address"])
    # Before its mailbox is licensed (planned only) the pass cannot be planned: said, not
    # failed. A real pass with nothing to copy licenses it and saves the cursors.
    early = commands.prestage(project, users=[user], older_than="90d", plan=True,
                              retry=TEST_RETRY)  # fmt: skip
    assert not early["failed"] and not early["waiting"], early
    commands.prestage(project, users=[user], older_than="90d", retry=TEST_RETRY)
    assert last_counts(w).get("copied", 0) == 0
    put = [
        w.put(["Inbox"], "old one", is_read=True),
        w.put(["Inbox"], "old two"),
        w.put(["Inbox", "Projects"], "old nested", body=mime("old nested", b"\x01" * 4000)),
    ]
    w.put(["Inbox"], "recent", received=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))

    def target() -> tuple[Any, ...]:
        messages = Counter(i.subject for i in w.items("target"))
        folders = sorted(
            f.display_name for f in sandbox.mail.child_folders("target", w.target, None)
        )
        return messages, folders

    def item_map() -> list[dict[str, Any]]:
        with Journal.open(load_project(project).journal_url) as j:
            return list(j.mapped_items(w.source))

    before, rows = target(), item_map()
    plan = commands.prestage(project, users=[user], older_than="90d", plan=True, retry=TEST_RETRY)
    assert target() == before and item_map() == rows
    lines = [x["params"] for x in plan["writes"] if x["system"] == "mail"]
    copies = {x["source_folder"]: x["messages"] for x in lines if x["action"] == "copy"}
    assert copies == {"Inbox": 2, "Inbox/Projects": 1}, lines
    assert [x["folder"] for x in lines if x["action"] == "create folder"] == ["Projects"], lines
    assert {x["action"] for x in lines} == {"copy", "create folder"}, lines
    planned_bytes = sum(x["bytes"] for x in lines if x["action"] == "copy")
    assert len(put) == 3

    commands.prestage(project, users=[user], older_than="90d", retry=TEST_RETRY)
    assert last_counts(w)["copied"] == 3, last_counts(w)
    if mover == "graph-items":
        # The plan reads no MIME: its bytes are Exchange's message sizes (PidTagMessageSize),
        # the real pass counts the MIME it copies.
        assert planned_bytes == sum(message_size(i.id, i.size) for i in put), planned_bytes
    else:
        # The bytes the plan said are those the real pass copies (Exchange's export streams).
        assert last_counts(w)["bytes"] == planned_bytes, (last_counts(w), planned_bytes)
    again = commands.prestage(project, users=[user], older_than="90d", plan=True,
                              retry=TEST_RETRY)  # fmt: skip
    assert not [x for x in again["writes"] if x["system"] == "mail"], again["writes"]
