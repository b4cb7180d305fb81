"""A source mailbox re-created between passes (license removed and given back after the
retention, a soft-deleted mailbox replaced, content restored into the new one): its mailbox
id changes, and the cursors a pass kept name the old mailbox or folders that no longer exist.

The mailbox is re-created in the sandbox as Exchange would show it: a new ExchangeGuid (so a
new `primaryMailboxId`), every message re-delivered under a new item id (same MIME, so the
same Message-ID), and a folder re-made under a new folder id. The sandbox keeps the default
folders' ids (its folder ids do not hang off the mailbox GUID); that half of a real
re-creation is what `test_a_mailbox_whose_every_folder_id_changed...` in
tests/unit/test_sync.py covers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coexist import commands
from coexist.journal import Journal
from coexist.migrate.stores.graph import MAILBOX_KIND, NAMES_KIND
from coexist.migrate.stores.graph_io import CHECKPOINT_KIND
from coexist.sandbox import Sandbox
from coexist.sandbox.model import new_guid
from coexist.settings import load_project
from coexist.tenants.protocols import REPLACED_KIND
from tests.e2e.conftest import TEST_RETRY
from tests.e2e.test_graph_mover import (
    World,
    by_subject,
    cutover,
    last_counts,
    prestage,
    provisioned,
)
from tests.e2e.test_items_mover import provisioned as items_provisioned


def recreate_source(w: World) -> None:
    """Re-create the source mailbox with its content restored: new mailbox id, new item ids,
    and the `Projects` folder made again under a new id."""
    mail = w.sb.mail
    user = w.sb.world.source.users[w.source]
    user.exchange_guid = new_guid()
    old = {i.id: (i, mail.mime(i.id), w.path_of("source", i.folder_id)) for i in w.items("source")}
    mail.delete_folder("source", w.source, w.folder("source", ["Projects"]))
    for item_id, (item, body, path) in old.items():
        mail.delete_message("source", w.source, item_id)
        folder = w.folder("source", path, create=True)
        mail.insert_message(
            "source",
            w.source,
            folder,
            body,
            received=dt.datetime.fromisoformat(item.received.replace("Z", "+00:00")),
            is_read=item.is_read,
        )


def kept(w: World) -> dict[str, dict[str, object]]:
    with Journal.open(load_project(w.project).journal_url) as j:
        return {f"{c['kind']}:{c['folder_id']}": c for c in j.checkpoints(w.source)}


def last_pass(w: World) -> dict[str, object]:
    with Journal.open(load_project(w.project).journal_url) as j:
        return dict(j.passes(w.source)[-1])


def events(w: World) -> list[str]:
    with Journal.open(load_project(w.project).journal_url) as j:
        return [str(e["message"]) for e in j.events(item_key=w.source)]


def three_copied(w: World) -> None:
    """Two messages in Inbox and one in Projects, copied by a pre-stage."""
    for subject in ("one", "two"):
        w.put(["Inbox"], subject)
    w.put(["Projects"], "plan")
    prestage(w)
    assert last_counts(w)["copied"] == 3


def test_a_recreated_source_mailbox_is_scanned_again_and_nothing_is_copied_twice(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """After the source mailbox is re-created (new mailbox, folder and item ids), the pass
    no longer fails on the old cursors: it says so once (address and folder paths, no ids),
    scans the mailbox again, copies only the new message, and the item map's identities keep
    every message already copied from being copied a second time."""
    w = provisioned(make_project, sandbox)
    three_copied(w)
    old_cursors = {k for k in kept(w) if k.startswith(f"{CHECKPOINT_KIND}:")}
    assert len(old_cursors) == 2, old_cursors
    old_box = kept(w)[f"{MAILBOX_KIND}:source"]["token"]
    copies_before = {i.id for i in w.items("target")}

    counts = cutover_after_recreation(w)
    copies = by_subject(w.items("target"))
    assert {s: len(v) for s, v in copies.items()} == {"one": 1, "two": 1, "plan": 1, "after": 1}
    assert counts.get("difference", 0) == 0, counts
    # The copies made before are the ones kept (adopted by identity; brought in line by an
    # update import over each, not made again).
    assert copies_before <= {i.id for i in w.items("target")}
    assert counts["moved"] == 3 and counts["updated"] == 3, counts

    said = [e for e in events(w) if "re-created" in e]
    assert len(said) == 1, events(w)
    address = str(w.user["source_address"])
    assert address in said[0] and "Projects" in said[0], said
    assert "MBX:" not in said[0] and w.source not in said[0], said
    # The journal now holds cursors of the new mailbox only; the source's kept mailbox id
    # and default names were dropped with the old cursors (read again by the next pass).
    now = kept(w)
    assert f"{MAILBOX_KIND}:source" not in now and f"{NAMES_KIND}:source" not in now, now
    new_cursors = {k for k in now if k.startswith(f"{CHECKPOINT_KIND}:")}
    assert new_cursors, now
    for key in new_cursors:
        assert user_box(w) in str(now[key]["token"]), key

    # The next pass is an ordinary one: nothing to say, nothing to copy.
    cutover(w)
    assert last_counts(w).get("copied", 0) == 0
    assert len([e for e in events(w) if "re-created" in e]) == 1
    assert kept(w)[f"{MAILBOX_KIND}:source"]["token"] == user_box(w) != old_box
    assert {s: len(v) for s, v in by_subject(w.items("target")).items()} == {
        "one": 1,
        "two": 1,
        "plan": 1,
        "after": 1,
    }


def cutover_after_recreation(w: World) -> dict[str, Any]:
    """Re-create the source mailbox, deliver one new message, cut over: the pass ends ok
    having copied that message alone; its counts."""
    recreate_source(w)
    w.put(["Inbox"], "after")
    cutover(w)
    assert last_pass(w)["status"] == "ok", last_pass(w)
    counts = last_counts(w)
    assert counts["copied"] == 1, counts
    return counts


def user_box(w: World) -> str:
    """The source user's current primaryMailboxId (sandbox users.primary_mailbox_id)."""
    user = w.sb.world.source.users[w.source]
    return f"MBX:{user.exchange_guid}@{w.sb.world.source.tenant_id}"


def test_the_mail_api_mover_copies_nothing_twice_from_a_recreated_source(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """graph-items (mail API; its deltaLinks name the user and folder, not the mailbox): after
    the same re-creation the Inbox's delta reports the old ids removed and the new ones new,
    the folder made again under a new id is no longer listed and its rows are settled as
    gone; the item map's identities give every new id its old copy: only the new message is
    copied."""
    w = items_provisioned(make_project, sandbox)
    three_copied(w)
    cutover_after_recreation(w)
    mail = {s: len(v) for s, v in by_subject(w.items("target")).items()}
    assert mail == {"one": 1, "two": 1, "plan": 1, "after": 1}, mail
    cutover(w)
    assert last_counts(w).get("copied", 0) == 0
    assert {s: len(v) for s, v in by_subject(w.items("target")).items()} == mail


def recreate_target(w: World, *, restored: bool) -> None:
    """Re-create the target mailbox: a new mailbox id; its content gone (the usual case: a
    new, empty mailbox, its `Projects` folder gone too) or restored into it (`restored`)."""
    user = w.sb.world.target.users[w.target]
    user.exchange_guid = new_guid()
    if restored:
        return
    mail = w.sb.mail
    mail.delete_folder("target", w.target, w.folder("target", ["Projects"]))
    for item in w.items("target"):
        mail.delete_message("target", w.target, item.id)


@pytest.mark.parametrize("restored", [False, True], ids=["emptied", "restored"])
def test_a_recreated_target_mailbox_gets_its_copies_again_once(
    make_project: Callable[..., Path], sandbox: Sandbox, restored: bool
) -> None:
    """A target mailbox re-created between passes (new mailbox id): the journal's copies may
    be gone with the old mailbox. Each is looked for again by identity in its folder: those
    still there (a restored mailbox) are kept, the others copied again, so every message is
    in the target exactly once; the pass says so once, and the next pass copies nothing."""
    w = provisioned(make_project, sandbox)
    three_copied(w)
    recreate_target(w, restored=restored)
    cutover(w)
    assert last_pass(w)["status"] == "ok", last_pass(w)
    counts = last_counts(w)
    assert counts.get("copied", 0) == (0 if restored else 3), counts
    assert counts.get("difference", 0) == 0, counts
    mail = {s: len(v) for s, v in by_subject(w.items("target")).items()}
    assert mail == {"one": 1, "two": 1, "plan": 1}, mail
    [said] = [e for e in events(w) if "target mailbox was re-created" in e]
    assert str(w.user["target_address"]) in said and "MBX:" not in said, said
    assert f"{0 if restored else 3} are copied again" in said, said
    cutover(w)
    assert last_counts(w).get("copied", 0) == 0
    assert {s: len(v) for s, v in by_subject(w.items("target")).items()} == mail
    assert len([e for e in events(w) if "target mailbox was re-created" in e]) == 1


def test_a_pass_killed_after_keeping_a_new_target_id_checks_the_copies_on_the_next(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """Kill-safe: the store journals that the target was re-created before it keeps the new
    mailbox id. A pass that died after keeping it (the journal's id is already the new one,
    so nothing 404s any more) leaves that fact, and the next pass checks the copies again."""
    w = provisioned(make_project, sandbox)
    w.put(["Inbox"], "one")
    w.put(["Projects"], "plan")
    prestage(w)
    recreate_target(w, restored=False)
    user = w.sb.world.target.users[w.target]
    new_id = f"MBX:{user.exchange_guid}@{w.sb.world.target.tenant_id}"
    with Journal.open(load_project(w.project).journal_url) as j:
        row = j.get_checkpoint(w.source, "target", MAILBOX_KIND)
        assert row is not None
        # What the killed pass left: the fact, then the new id (graph_io `_open.renewed`).
        j.save_checkpoint(w.source, "target", REPLACED_KIND, token="1")
        j.save_checkpoint(w.source, "target", MAILBOX_KIND, new_id, str(row["watermark"]))
    cutover(w)
    assert last_pass(w)["status"] == "ok", last_pass(w)
    assert last_counts(w)["copied"] == 2
    assert sorted(i.subject for i in w.items("target")) == ["one", "plan"]
    assert f"{REPLACED_KIND}:target" not in kept(w)


def test_a_plan_after_a_source_recreation_says_one_copy_and_writes_nothing(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """Plan mode runs the same handling against its scratch journal: the planned cutover
    after a source re-creation plans one copy (the new message) and an update of each copy
    taken over, and the project's journal keeps its old cursors until the real pass."""
    w = provisioned(make_project, sandbox)
    w.put(["Inbox"], "one")
    w.put(["Projects"], "plan")
    prestage(w)
    recreate_source(w)
    w.put(["Inbox"], "after")
    before = kept(w)
    user = str(w.user["source_address"])
    plan = commands.cutover(w.project, users=[user], plan=True, retry=TEST_RETRY)
    lines = [x["params"] for x in plan["writes"] if x["system"] == "mail"]
    copies = [x for x in lines if x["action"] == "copy"]
    assert [x["messages"] for x in copies] == [1], lines
    # The two messages re-made under new ids take over their copies: an update each.
    assert [x["messages"] for x in lines if x["action"] == "update"] == [2], lines
    assert kept(w) == before
    cutover(w)
    assert last_counts(w)["copied"] == 1
