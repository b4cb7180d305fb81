"""Crash safety of imap-sync through the CLI: `coexist prestage` and `coexist cutover` of an
IMAP -> IMAP project are SIGKILLed at seeded-random points and run again; every message
ends in the target exactly once (Message-ID, MIME digest, mapped folder, flags,
INTERNALDATE), and a run after that copies nothing.

The kill points are counted in messages the target has on disk (Dovecot's maildir: one file
per message, written when its APPEND lands), read without an IMAP connection, plus a
seeded jitter: the kills fall between an APPEND and its journal record, inside scans and
folder creation, and before the first copy.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from tests.dovecot import DovecotServer
from tests.e2e import killrun
from tests.e2e.imap_scene import KEY, Fingerprint, Scene, run_json
from tests.e2e.test_imap_to_imap import older

SCALE = 3  # messages per folder, times FOLDERS': about 100 per user
PRESTAGE_KILLS = 2
CUTOVER_KILLS = 3


class Runs(killrun.Runs):
    """The project's commands as child processes, kill points counted in the messages the
    users' target maildirs hold."""

    def __init__(self, scene: Scene) -> None:
        super().__init__(scene.project, KEY)
        self.scene = scene

    def on_disk(self) -> int:
        return sum(self.scene.stored(u.target) for u in self.scene.users)


def assert_exactly_once(scene: Scene, wanted: dict[str, Counter[Fingerprint]]) -> None:
    """Each user's target holds exactly `wanted` (its source's messages, mapped)."""
    for u in scene.users:
        want = wanted[u.address]
        got = scene.fingerprints(u.target)
        assert got == want, {
            "user": u.address,
            "duplicates": [k for k, n in got.items() if n > 1][:5],
            "missing": list((want - got).elements())[:5],
            "extra": list((got - want).elements())[:5],
        }


def test_imap_passes_killed_at_random_points_end_with_every_message_once(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    """Prestage and cutover SIGKILLed at seeded points and once between an APPEND and its
    journal record, then re-run: no duplicates, no gaps, flags and INTERNALDATE kept; a run
    after that copies nothing."""
    rng = random.Random(11)
    scene = Scene(dovecot, tmp_path)
    for u in scene.users:
        scene.seed(u, scale=SCALE)
    run_json("batch", "import", "--project", str(scene.project), str(scene.csv()))
    runs = Runs(scene)
    old = {u.address: older(scene.fingerprints(u.source, mapped=True)) for u in scene.users}

    prestage = ("prestage", "--older-than", "90d")
    # One kill between an APPEND and its journal record (the window batched journal writes
    # widen), watched for rather than left to the seeded points (which moved with the
    # pass's speed and once all missed it): the re-runs must adopt those copies by
    # Message-ID, not copy them twice.
    left = runs.kill_in_window(prestage)
    assert left > 0, "a kill should fall between a copy and its journal record"
    todo = sum(c.total() for c in old.values()) - runs.on_disk()
    landed = runs.crash(prestage, todo, PRESTAGE_KILLS, rng)
    runs.complete(*prestage)
    assert_exactly_once(scene, old)

    for n, u in enumerate(scene.users):  # mail arrives between the passes
        scene.add(u, "INBOX", 1000 + n)
    every = {u.address: scene.fingerprints(u.source, mapped=True) for u in scene.users}
    todo = sum(c.total() for c in every.values()) - runs.on_disk()
    landed += runs.crash(("cutover",), todo, CUTOVER_KILLS, rng)
    runs.complete("cutover")
    assert_exactly_once(scene, every)
    assert landed >= 2, "the kills should land mid-run"

    runs.complete("cutover")
    assert scene.copied_by_last("cutover") == 0
