"""Crash safety of ews-sync through the CLI: `coexist prestage` and `coexist cutover` of an
Exchange 2016 -> Exchange 2019 project are SIGKILLed at seeded-random points and run again;
every message ends in the target exactly once (InternetMessageId and folder path), and a
run after that copies nothing. Then the same cutover under the sandbox's `chaos` profile
(ErrorServerBusy storms) completes with every message once.

The kill points are counted in items the target mailboxes hold, read from the sandbox's
store in this process (the sandbox runs here; the CLI runs as a child process it can kill):
the kills fall between an UploadItems and its journal record, inside scans and folder
creation, and before the first copy.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from coexist import commands, credentials
from coexist.ewsdemo import SCENARIOS, Run, _accounts, _holdings, _pairs, _settings
from coexist.journal import Journal
from coexist.sandbox import mailseed
from coexist.sandbox.ews.face import ERRORS_KEY, RECORDER_KEY, Recorded
from coexist.sandbox.server import Sandbox
from coexist.settings import load_project
from coexist.vault import ENV_KEY, new_key
from tests.cli_env import assert_no_unawaited_coroutine, cli_env

REPO = Path(__file__).resolve().parents[2]
KEY = new_key()
USERS, ITEMS = 2, 60
PRESTAGE_KILLS = 2
CUTOVER_KILLS = 3
Fingerprint = tuple[str, tuple[str, ...]]  # (InternetMessageId, folder path)


@contextmanager
def scene(tmp_path: Path, profile: str = "fast") -> Iterator[Run]:
    """A sandbox (Exchange 2016 -> 2019) with seeded source mailboxes, migration accounts,
    and a project of kind exchange -> exchange with the admins' passwords in its vault and
    its users imported from a batch file."""
    project = tmp_path / "project"
    project.mkdir()
    kinds = SCENARIOS["hosted-exchange"]
    with Sandbox(tmp_path / "sandbox", seed=3, users=10, profile=profile, kinds=kinds) as sb:
        sb.ctx.extra[ERRORS_KEY] = []  # sandbox bugs met while serving: none, asserted at the end
        run = Run(project, sb, "hosted-exchange", _pairs(sb, USERS), lambda _m: None, None)
        for p in run.pairs:
            mailseed.seed_mailbox(sb.mail, "source", p.source_id, seed=3, items=ITEMS)
        passwords = _accounts(run, kinds)
        settings = _settings(run, kinds, passwords)
        # Basic, not NTLM, while processes are SIGKILLed: the sandbox's NTLM state is keyed
        # by the client's (address, port), and a killed process's port reused at once by the
        # next run (RST, no TIME_WAIT) was taken as the other side's authenticated
        # connection (ErrorNonExistentMailbox, then ErrorFolderNotFound) — a sandbox bug,
        # open in the issue note; NTLM itself is covered by tests/integration/test_ews_*.
        settings |= {f"{side}.ews.auth": "basic" for side in passwords}
        commands.init(project, overrides=settings)
        env = {ENV_KEY: KEY}
        for side, (_admin, password) in passwords.items():
            credentials.credentials_set_master(project, password, side=side, env=env)
        csv = tmp_path / "users.csv"
        csv.write_text(
            "Source Email,Destination Email,Batch\r\n"
            + "".join(f"{p.source},{p.target},wave\r\n" for p in run.pairs)
        )
        commands.batch_import(project, csv, env=env)
        yield run
        assert sb.ctx.extra[ERRORS_KEY] == []


def fingerprints(
    run: Run, side: str, *, older_than_days: int | None = None
) -> Counter[Fingerprint]:
    """What the side's mailboxes hold (all the demo's users together)."""
    out: Counter[Fingerprint] = Counter()
    now = dt.datetime.now(dt.UTC)
    for p in run.pairs:
        box = p.source_id if side == "source" else p.target_id
        held = _holdings(run.sandbox.mail, side, box)
        if older_than_days is not None:
            old = {
                str(m.internet_message_id)
                for m in run.sandbox.mail.iter_messages(side, box)
                if now - _aware(m.received) > dt.timedelta(days=older_than_days)
            }
            held = [h for h in held if h[0] in old]
        out.update(held)
    return out


def _aware(when: dt.datetime | str) -> dt.datetime:
    if isinstance(when, str):
        when = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


class Runs:
    """The project's commands as child processes, killed or run to their end."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.log = run.project / "commands.log"
        self.unrecorded = 0

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "coexist.cli", *args, "--project", str(self.run.project)]
        out = self.log.open("ab")
        return subprocess.Popen(
            [*cmd, "--all", "--json"], cwd=REPO, stdout=out, stderr=out,
            env={**cli_env(), ENV_KEY: KEY},
        )  # fmt: skip

    def on_disk(self) -> int:
        return sum(
            sum(1 for _ in self.run.sandbox.mail.iter_messages("target", p.target_id))
            for p in self.run.pairs
        )

    def recorded(self) -> int:
        with Journal.open(load_project(self.run.project).journal_url) as j:
            keys = [str(u["key"]) for u in j.items(kind="user")]
            return sum(1 for k in keys for r in j.mapped_items(k) if r["target_item_id"])

    def kill_at(self, args: tuple[str, ...], at: int, jitter: float) -> bool:
        """Run a command; SIGKILL it once the targets hold `at` items (+ jitter seconds)."""
        proc = self.start(*args)
        while proc.poll() is None:
            if self.on_disk() >= at:
                time.sleep(jitter)
                if proc.poll() is not None:
                    break
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
                self.unrecorded += max(0, self.on_disk() - self.recorded())
                return True
            time.sleep(0.005)
        return False

    def crash(self, args: tuple[str, ...], todo: int, kills: int, rng: random.Random) -> int:
        base = self.on_disk()
        offsets = sorted(rng.randint(0, max(0, todo - 1)) for _ in range(kills))
        return sum(self.kill_at(args, base + off, rng.uniform(0.0, 0.03)) for off in offsets)

    def complete(self, *args: str) -> dict[str, object]:
        start = self.log.stat().st_size if self.log.exists() else 0
        code = self.start(*args).wait(timeout=300)
        output = self.log.read_text()
        assert code == 0, (args, code, output[start:][-3000:])
        assert_no_unawaited_coroutine(output, " ".join(args))
        result: dict[str, object] = json.loads(output[start:].strip().splitlines()[-1])
        assert not result["failed"] and not result["waiting"], (args, result)
        return result


def copied_by_last(run: Run, kind: str) -> int:
    """Items the last pass of `kind` of each user copied, summed."""
    with Journal.open(load_project(run.project).journal_url) as j:
        last: dict[str, dict[str, object]] = {}
        for p in j.passes():
            if p["kind"] == kind:
                last[str(p["item_key"])] = p
    return sum(int((p["counts"] or {}).get("copied", 0)) for p in last.values())  # type: ignore[union-attr]


def test_ews_passes_killed_at_random_points_end_with_every_message_once(tmp_path: Path) -> None:
    """Prestage and cutover SIGKILLed at seeded points, then re-run: no duplicates, no gaps
    (InternetMessageId in the same folder path); a run after that copies nothing."""
    rng = random.Random(12)
    with scene(tmp_path) as run:
        runs = Runs(run)
        old = fingerprints(run, "source", older_than_days=90)
        prestage = ("prestage", "--older-than", "90d")
        landed = runs.crash(prestage, old.total(), PRESTAGE_KILLS, rng)
        runs.complete(*prestage)
        assert fingerprints(run, "target") == old

        every = fingerprints(run, "source")
        landed += runs.crash(("cutover",), every.total() - runs.on_disk(), CUTOVER_KILLS, rng)
        runs.complete("cutover")
        got = fingerprints(run, "target")
        assert got == every, {
            "duplicates": [k for k, n in got.items() if n > 1][:5],
            "missing": list((every - got).elements())[:5],
        }
        assert landed >= 2, "the kills should land mid-run"
        runs.complete("cutover")
        assert copied_by_last(run, "cutover") == 0


def test_a_cutover_under_a_server_busy_storm_completes_with_every_message_once(
    tmp_path: Path,
) -> None:
    """The sandbox's chaos profile (ErrorServerBusy with BackOffMilliseconds on both
    organisations): the CLI's prestage and cutover complete, every message once in its
    folder, and a re-run copies nothing."""
    with scene(tmp_path, profile="chaos") as run:
        runs = Runs(run)
        recorded: list[Recorded] = []
        run.sandbox.ctx.extra[RECORDER_KEY] = recorded
        runs.complete("prestage", "--older-than", "90d")
        runs.complete("cutover")
        assert fingerprints(run, "target") == fingerprints(run, "source")
        busy = sum(1 for r in recorded if b"ErrorServerBusy" in r.response)
        assert busy > 0 and len(recorded) > busy  # the storm happened, and passed
        runs.complete("cutover")
        assert copied_by_last(run, "cutover") == 0
