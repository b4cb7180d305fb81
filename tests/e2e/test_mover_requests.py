"""The fixed requests of a graph-import-export pass: few per mailbox, and nothing lost for it.

Requests are counted as the sandbox receives them (`sandbox.server.REQUEST_LOG_KEY`: method
and path of every HTTP request its server is sent)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from coexist.journal import Journal
from coexist.migrate.stores.graph import MAILBOX_KIND, NAMES_KIND
from coexist.migrate.stores.graph_io import CHECKPOINT_KIND
from coexist.sandbox import Sandbox
from coexist.sandbox.model import new_guid
from coexist.sandbox.server import REQUEST_LOG_KEY
from coexist.settings import load_project
from tests.e2e.test_graph_mover import (
    World,
    _put,
    cutover,
    last_counts,
    prestage,
    provisioned,
    sandbox_folder,
)


@contextmanager
def sent(sandbox: Sandbox) -> Iterator[Counter[tuple[str, str]]]:
    """Requests the sandbox received inside the block, by (method, URL shape)."""
    assert sandbox.ctx is not None
    seen: list[tuple[str, str]] = []
    shapes: Counter[tuple[str, str]] = Counter()
    sandbox.ctx.extra[REQUEST_LOG_KEY] = seen
    try:
        yield shapes
    finally:
        del sandbox.ctx.extra[REQUEST_LOG_KEY]
        shapes.update((method, shape(path)) for method, path in seen)


def shape(url: str) -> str:
    """A request's path with its ids replaced (M: mailbox, U: user, F: folder)."""
    path = url.split("/v1.0/", 1)[-1].split("?", 1)[0]
    path = re.sub(r"mailboxes/[^/]+", "mailboxes/M", path)
    path = re.sub(r"users/[^/]+", "users/U", path)
    return re.sub(r"folders/[^/]+", "folders/F", path)


def kept(w: World) -> dict[str, dict[str, object]]:
    """The journal's cursors and mailbox ids of the user, by (kind, folder id)."""
    with Journal.open(load_project(w.project).journal_url) as j:
        return {f"{c['kind']}:{c['folder_id']}": c for c in j.checkpoints(w.source)}


def test_a_pass_after_a_pass_makes_only_its_needed_requests(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """A second pass, with a change then without one, reads no mailbox id nor default folder
    names (the journal keeps them), lists each side's folder tree once, and scans only
    folders with a cursor or items; each still copies what changed."""
    w = provisioned(make_project, sandbox)
    w.put(["Inbox"], "first")
    prestage(w)
    assert last_counts(w)["copied"] == 1
    cursors = [k for k in kept(w) if k.startswith(f"{CHECKPOINT_KIND}:")]
    assert len(cursors) == 1, cursors  # the Inbox's: the empty folders were not scanned
    assert {f"{MAILBOX_KIND}:source", f"{MAILBOX_KIND}:target"} <= set(kept(w))
    w.put(["Inbox"], "second")
    with sent(sandbox) as changed:
        cutover(w)
    assert last_counts(w)["copied"] == 1
    with sent(sandbox) as unchanged:
        cutover(w)
    assert last_counts(w).get("copied", 0) == 0
    for shapes in (changed, unchanged):
        assert shapes[("GET", "users/U/settings/exchange")] == 0, shapes
        assert shapes[("GET", "admin/exchange/mailboxes/M/folders")] == 2, shapes  # one a side
        assert shapes[("GET", "admin/exchange/mailboxes/M/folders/F/items/delta")] == 1, shapes
    # The default folders' names are kept too; the new item's identity and content type
    # are read once, by the scan (the export's inspection reuses them).
    assert changed[("POST", "$batch")] == 1, changed
    assert unchanged[("POST", "$batch")] == 0, unchanged
    # With nothing copied, the reconciliation reuses the pass's listing of the target.
    assert unchanged[("GET", "admin/exchange/mailboxes/M/folders/F")] == 0, unchanged
    # With the Inbox changed, only the Inbox is read again.
    assert changed[("GET", "admin/exchange/mailboxes/M/folders/F")] == 1, changed


def test_an_empty_folder_that_gets_mail_later_is_copied_on_the_next_pass(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """A folder empty at one pass (not scanned, no cursor) is made in the target, and the mail
    it gets afterwards is copied by the next pass, once."""
    w = provisioned(make_project, sandbox)
    w.put(["Inbox"], "inbox mail")
    later = w.folder("source", ["Later"], create=True)
    prestage(w)
    assert later not in {str(c["folder_id"]) for c in kept(w).values()}
    w.put(["Later"], "late mail")
    cutover(w)
    assert last_counts(w)["copied"] == 1
    cutover(w)
    assert last_counts(w).get("copied", 0) == 0
    [copy] = [i for i in w.items("target") if i.subject == "late mail"]
    assert w.path_of("target", copy.folder_id) == ["Later"]
    assert last_counts(w).get("difference", 0) == 0


def test_a_stale_kept_mailbox_id_is_read_again(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """A mailbox id the journal kept that the service no longer knows (404 at the pass's
    first request) is read again from settings/exchange, the pass copies what is new, and
    the journal keeps the id the service gave."""
    w = provisioned(make_project, sandbox)
    w.put(["Inbox"], "before")
    prestage(w)
    good = {side: kept(w)[f"{MAILBOX_KIND}:{side}"] for side in ("source", "target")}
    with Journal.open(load_project(w.project).journal_url) as j:
        for side, row in good.items():
            stale = re.sub(r"^MBX:[^@]+", f"MBX:{new_guid()}", str(row["token"]))
            j.save_checkpoint(w.source, side, MAILBOX_KIND, stale, str(row["watermark"]))
    w.put(["Inbox"], "after")
    with sent(sandbox) as shapes:
        cutover(w)
    assert last_counts(w)["copied"] == 1
    assert shapes[("GET", "users/U/settings/exchange")] == 2, shapes
    for side in ("source", "target"):
        assert kept(w)[f"{MAILBOX_KIND}:{side}"]["token"] == good[side]["token"]
    assert [i.subject for i in w.items("target")].count("after") == 1


def test_default_names_kept_are_read_again_after_a_language_change(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """Default folder names the journal kept stop naming a mailbox whose language changed
    (its defaults renamed): the next pass reads them again, so mail in the renamed Inbox
    still lands in the target's Inbox, not in a new folder of the new name."""
    w = provisioned(make_project, sandbox)
    w.put(["Inbox"], "before")
    prestage(w)
    assert f"{NAMES_KIND}:source" in kept(w)
    sandbox.mail.localize("source", w.source, "de")
    _put(w, "inbox", "nach der Umstellung")
    with sent(sandbox) as shapes:
        cutover(w)
    assert last_counts(w)["copied"] == 1
    assert shapes[("POST", "$batch")] >= 1, shapes  # the names, read again
    [copy] = [i for i in w.items("target") if i.subject == "nach der Umstellung"]
    assert copy.folder_id == sandbox_folder(sandbox, w.target, "inbox", "target")
    names = {f.display_name for f in sandbox.mail.child_folders("target", w.target)}
    assert "Posteingang" not in names
    assert "Posteingang" in str(kept(w)[f"{NAMES_KIND}:source"]["token"])
