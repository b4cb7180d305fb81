"""The full-fidelity mover under the sandbox's `chaos` profile.

Chaos fails a seeded share of Graph calls with 429/503 (with Retry-After), drops
connections and delays new objects (replication lag). A pre-stage pass and the cutover
pass for a couple of users with seeded mailboxes must still complete, leave every source
item in the target exactly once (same internetMessageId, MIME and folder) and reconcile
with no unexplained difference.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coexist import commands
from coexist.journal import Journal
from coexist.sandbox import Sandbox
from coexist.sandbox.mailseed import seed_mailboxes
from coexist.settings import load_project
from tests.e2e.conftest import TEST_RETRY

MOVER = {"migration.mover": "graph-import-export"}
MAILBOXES = 2
ITEMS = 80


def fingerprints(sb: Sandbox, side: str, uid: str) -> Counter[tuple[str, str, tuple[str, ...]]]:
    """(internetMessageId, MIME sha256, folder path) of every message in one mailbox."""
    store = sb.mail

    def path(folder_id: str) -> tuple[str, ...]:
        out: list[str] = []
        f = store.folder(side, uid, folder_id)
        while f is not None and f.well_known != "msgfolderroot":
            out.insert(0, f.display_name)
            f = store.folder(side, uid, f.parent_id) if f.parent_id else None
        return tuple(out)

    return Counter(
        (
            str(i.internet_message_id),
            hashlib.sha256(store.mime(i.id)).hexdigest(),
            path(i.folder_id),
        )
        for i in store.iter_messages(side, uid)
    )


def provisioned_users(project: Path) -> list[dict[str, Any]]:
    """Discover and provision every user of the project; its in-scope users by key."""
    commands.discover(project)
    assert not commands.provision(project, all_users=True, retry=TEST_RETRY)["failed"]
    with Journal.open(load_project(project).journal_url) as j:
        return sorted(
            (u for u in j.items(kind="user") if (u.get("detail") or {}).get("in_scope", True)),
            key=lambda u: str(u["key"]),
        )


def test_prestage_and_cutover_complete_and_reconcile_under_chaos(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """Under chaos both passes succeed, each item lands once and reconciliation shows 0."""
    project = make_project(profile="chaos", **MOVER)
    users = provisioned_users(project)[:MAILBOXES]
    keys = [str(u["key"]) for u in users]
    addresses = [str(u["source_address"]) for u in users]
    seed_mailboxes(sandbox.mail, "source", keys, seed=9, items=ITEMS)

    pre = commands.prestage(project, users=addresses, retry=TEST_RETRY)
    assert not pre["failed"] and not pre["waiting"], pre
    cut = commands.cutover(project, users=addresses, retry=TEST_RETRY)
    assert not cut["failed"] and not cut["waiting"], cut

    with Journal.open(load_project(project).journal_url) as j:
        for key in keys:
            item = j.get_item("user", key)
            assert item is not None and item["phase"] == "cutover", item
            source = fingerprints(sandbox, "source", key)
            target = fingerprints(sandbox, "target", str(item["target_id"]))
            assert target == source, {
                "duplicates": [k for k, n in target.items() if n > 1][:5],
                "missing": list((source - target).elements())[:5],
            }
            recon = item["detail"]["reconciliation"]
            assert recon["unexplained"] == 0, recon
            assert all(f["difference"] == 0 for f in recon["folders"]), recon
            assert sum(f["target_items"] for f in recon["folders"]) == ITEMS
            passes = j.passes(key)
            assert [p["kind"] for p in passes if p["status"] == "ok"][-2:] == [
                "prestage",
                "cutover",
            ]
            assert sum(int((p["counts"] or {}).get("copied", 0)) for p in passes) >= 1
