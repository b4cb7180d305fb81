"""Crash safety of imap-graph through the CLI: `coexist prestage` and `coexist cutover` of an
IMAP -> Microsoft 365 project (Dovecot source, the sandbox tenant as target) are SIGKILLed
at seeded points and run again; every message ends in its mapped target folder exactly once
(Message-ID, displayName path, isRead, flag, categories, receivedDateTime), and a run after
that copies nothing. And what a kill between a copy and its journal record leaves, when the
source then changes under it (a new UIDVALIDITY, a move), into Microsoft 365 and into IMAP.

The kill points are counted in messages the target mailboxes hold in the sandbox's store
(one row per create that landed, read in this process without a Graph call), plus a seeded
jitter: the kills fall between a create and its journal record, inside delta scans and
folder creation (the acceptance scene's odd names), and before the first copy. Between the
passes the source's INBOX gets a new UIDVALIDITY, new mail arrives and the messages of a
folder are flagged and read (state updates of copies already made).
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

from coexist.journal import Journal
from coexist.migrate.stores.imap import parse_item_id
from coexist.sandbox import Sandbox
from coexist.settings import load_project
from tests.dovecot import DovecotServer
from tests.e2e import imap_scene
from tests.e2e.imap_scene import MailUser, Scene
from tests.e2e.test_imap_kill import Runs
from tests.e2e.test_imap_to_imap import older
from tests.e2e.test_imap_to_m365 import GraphPrint, expected, graph_prints, m365_scene

SCALE = 2  # messages per folder, times FOLDERS': 40 per user
USERS = 2
PRESTAGE_KILLS = 2
CUTOVER_KILLS = 3


class GraphRuns(Runs):
    """The project's commands as child processes, kill points counted in the messages of
    the users' target mailboxes in the sandbox."""

    def __init__(self, scene: Scene, sandbox: Sandbox, boxes: dict[str, str]) -> None:
        super().__init__(scene)
        self.sandbox, self.boxes = sandbox, boxes

    def on_disk(self) -> int:
        return sum(self.sandbox.mail.count("target", box) for box in self.boxes.values())


def assert_exactly_once(runs: GraphRuns, wanted: dict[str, Counter[GraphPrint]]) -> None:
    """Each user's target mailbox holds exactly `wanted` (its source's messages, mapped)."""
    for address, box in runs.boxes.items():
        want, got = wanted[address], graph_prints(runs.sandbox, box)
        assert got == want, {
            "user": address,
            "duplicates": [k for k, n in got.items() if n > 1][:5],
            "missing": list((want - got).elements())[:5],
            "extra": list((got - want).elements())[:5],
        }


def test_imap_to_m365_passes_killed_at_random_points_end_with_every_message_once(
    dovecot: DovecotServer, sandbox: Sandbox, tmp_path: Path
) -> None:
    """Prestage and cutover into Microsoft 365 SIGKILLed at seeded points, then re-run: no
    duplicates, no gaps, flags and receivedDateTime kept, folders where `^INBOX/->` maps
    them; a run after that copies nothing."""
    # COEXIST_CRASH_SEED explores other kill points (the suite runs the default one).
    rng = random.Random(int(os.environ.get("COEXIST_CRASH_SEED", "12")))
    scene, boxes = m365_scene(dovecot, sandbox, tmp_path, users=USERS, scale=SCALE)
    runs = GraphRuns(scene, sandbox, boxes)
    sources = {u.address: u.source for u in scene.users}
    old = {a: expected(older(scene.fingerprints(s, mapped=True))) for a, s in sources.items()}

    prestage = ("prestage", "--older-than", "90d")
    # One kill between a copy and its journal record, watched for (the seeded points below
    # fall there only by chance): the re-runs must adopt those copies by identity.
    assert runs.kill_in_window(prestage) > 0, "a kill should fall between a copy and its record"
    todo = sum(c.total() for c in old.values()) - runs.on_disk()
    landed = runs.crash(prestage, todo, PRESTAGE_KILLS, rng)
    runs.complete(*prestage)
    assert_exactly_once(runs, old)

    for n, u in enumerate(scene.users):  # a restored source server; mail arrives; flags
        dovecot.set_uidvalidity(u.source, "INBOX", 5000 + n)
        scene.add(u, "INBOX", 1000 + n)
        scene.reflag(u, "INBOX.Projects")
    every = {a: expected(scene.fingerprints(s, mapped=True)) for a, s in sources.items()}
    todo = sum(c.total() for c in every.values()) - runs.on_disk()
    landed += runs.crash(("cutover",), todo, CUTOVER_KILLS, rng)
    runs.complete("cutover")
    assert_exactly_once(runs, every)
    assert landed >= 2, f"the kills should land mid-run ({landed} did)"

    runs.complete("cutover")
    assert scene.copied_by_last("cutover") == 0
    assert_exactly_once(runs, every)


def interrupt_then_change_the_source(scene: Scene, user: MailUser) -> list[str]:
    """After a prestage: leave one INBOX row and one `Say "hi"` row as a pass killed between
    its copy and its record does (`importing`, no copy recorded: sync._create), then give
    INBOX a new UIDVALIDITY and move the other message to another folder at the source.
    The two rows' source ids."""
    quoted = 'Say "hi"'
    with Journal.open(load_project(scene.project).journal_url) as j:
        key = str(j.items(kind="user")[0]["key"])
        stuck = [j.mapped_items(key, folder_id=f, status="copied")[0] for f in ("INBOX", quoted)]
        for row in stuck:
            j.map_item(
                key, row["source_item_id"], status="importing", target_item_id=None,
                target_change_key=None,
            )  # fmt: skip
    scene.dovecot.set_uidvalidity(user.source, "INBOX", 4747)
    with scene.imap(user.source) as s:
        s.move(quoted, [parse_item_id(str(stuck[1]["source_item_id"]))[2]], "Ünïcødé 日本")
    return [str(r["source_item_id"]) for r in stuck]


def assert_settled(scene: Scene, stuck: list[str]) -> None:
    """The journal holds no row of the left items, nothing pending; a further cutover
    copies 0."""
    with Journal.open(load_project(scene.project).journal_url) as j:
        key = str(j.items(kind="user")[0]["key"])
        left = [r for r in j.mapped_items(key) if r["status"] not in ("copied", "changed")]
        assert not left, left
        assert all(j.mapped(key, s) is None for s in stuck)
    imap_scene.run_json("cutover", "--project", str(scene.project), "--all")
    assert scene.copied_by_last("cutover") == 0
    assert int(scene.passes()[-1]["counts"].get("pending", 0)) == 0


def test_a_copy_interrupted_before_its_source_changed_lands_once_in_microsoft_365(
    dovecot: DovecotServer, sandbox: Sandbox, tmp_path: Path
) -> None:
    """Copies a killed prestage made in Microsoft 365 without recording them, then a new
    UIDVALIDITY on one's source folder and the other moved at the source: cutover leaves
    each message once, in its folder (the partial-copy rule: the stamped copy is deleted
    and made again), no row stays pending, the user is not left waiting on unexplained
    items, and a further cutover copies 0."""
    scene, boxes = m365_scene(dovecot, sandbox, tmp_path, users=1)
    [user] = scene.users
    p = str(scene.project)
    imap_scene.run_json("prestage", "--project", p, "--all", "--older-than", "90d")
    stuck = interrupt_then_change_the_source(scene, user)

    final = imap_scene.run_json("cutover", "--project", p, "--all")
    assert not final["failed"] and not final["waiting"], final
    source = scene.fingerprints(user.source, mapped=True)
    assert graph_prints(sandbox, boxes[user.address]) == expected(source)
    assert_settled(scene, stuck)


def test_a_copy_interrupted_before_its_source_changed_lands_once_in_imap(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    """The same into an IMAP target (imap-sync; its imports are atomic): the copies the
    dead pass left are adopted by Message-ID and paired with the messages under their new
    ids: none twice (before the fix: the INBOX one twice, the moved one in both folders)."""
    scene = Scene(dovecot, tmp_path, users=1)
    [user] = scene.users
    scene.seed(user)
    p = str(scene.project)
    imap_scene.run_json("batch", "import", "--project", p, str(scene.csv()))
    imap_scene.run_json("prestage", "--project", p, "--all", "--older-than", "90d")
    stuck = interrupt_then_change_the_source(scene, user)

    final = imap_scene.run_json("cutover", "--project", p, "--all")
    assert not final["failed"] and not final["waiting"], final
    assert scene.fingerprints(user.target) == scene.fingerprints(user.source, mapped=True)
    assert_settled(scene, stuck)
