"""Crash safety of graph-ews through the CLI: `coexist prestage` and `coexist cutover` of a
Microsoft 365 -> Amazon WorkMail project (Basic auth, Exchange2010_SP2, as the WorkMail seed
signs in) are SIGKILLed at seeded-random points and run again; every message ends in the
WorkMail mailbox exactly once (InternetMessageId and folder path), and so does every
contact, calendar item (a weekly series with a moved and a cancelled occurrence) and To Do
task, by class; a run after that copies nothing.

graph-ews copies mail as MIME (CreateItem with the state as extended properties) and PIM
items as typed EWS items (CreateItem of a Contact/CalendarItem/Task stamped with the source
id, `stores/ews_pim.SourceId`). A kill between such a CreateItem and its journal record
leaves a copy the journal does not name: the next pass must find it (mail by Message-ID,
PIM by the stamp) and adopt it, not make it twice. Two kills are made to fall there, one
while a mail copy and one while a PIM copy is unrecorded; the others fall at seeded points
counted in the items the target mailboxes hold (read from the sandbox's stores in this
process: the sandbox runs here, the CLI as a child process it can kill).

The WorkMail users exist already (FullAccess granted to the migration account, as the
organisation's admin would): making them through the WorkMail API is test_workmail_provision's.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from coexist import commands, credentials
from coexist.ewsdemo import Run, _pairs, _settings
from coexist.sandbox import mailseed
from coexist.sandbox.ews import add_account
from coexist.sandbox.ews.face import ERRORS_KEY
from coexist.sandbox.graph.outlook_items import pim_store
from coexist.sandbox.server import Sandbox
from coexist.vault import ENV_KEY, new_key
from tests.e2e import pim_seed
from tests.e2e.test_ews_kill import Runs as EwsRuns
from tests.e2e.test_ews_kill import (
    copied_by_last,
    copy_count,
    fingerprints,
    journal_ids,
    mail_arrives,
    pim_copies,
)

KEY = new_key()
USERS, ITEMS = 2, 30
PRESTAGE_KILLS = 2
CUTOVER_KILLS = 2
ARRIVING = 12  # new messages per user between prestage and cutover
KINDS = {"source": "m365", "target": "workmail"}
PIM_KINDS = ("event", "contact", "task")
# (kind, folder, subject, occurrence type): what a copy keeps of its source across kinds.
PimPrint = tuple[str, str, str, str]


@contextmanager
def scene(tmp_path: Path) -> Iterator[Run]:
    """A sandbox (Microsoft 365 -> WorkMail) with seeded source mailboxes (mail; contacts in
    nested folders, a series with an exception and a cancellation, a single event, To Do
    tasks in two lists, through the Graph faces), a migration account with FullAccess on the
    WorkMail users, and a project of kind m365 -> workmail with its users from a batch file."""
    project = tmp_path / "project"
    project.mkdir()
    target_kinds = {k: v for k, v in KINDS.items() if v != "m365"}
    with Sandbox(tmp_path / "sandbox", seed=5, users=10, profile="fast", kinds=target_kinds) as sb:
        sb.ctx.extra[ERRORS_KEY] = []  # sandbox bugs met while serving: none, asserted at the end
        run = Run(project, sb, "workmail", _pairs(sb, USERS), lambda _m: None, None)
        password = "Svc-" + new_key()[:16]
        account = add_account(sb.world, "target", "svc-migrate", password,
                              full_access=[p.target for p in run.pairs])  # fmt: skip
        for p in run.pairs:
            mailseed.seed_mailbox(sb.mail, "source", p.source_id, seed=5, items=ITEMS)
            pim_seed.seed_pim(sb, p.source)
        settings = _settings(run, KINDS, {"target": (account.upn, password)})
        # No [target.workmail]: the users exist, prestage makes none (test_workmail_provision).
        settings = {k: v for k, v in settings.items() if not k.startswith("target.workmail.")}
        commands.init(project, overrides=settings)
        env = {ENV_KEY: KEY}
        credentials.credentials_set_master(project, password, side="target", env=env)
        csv = tmp_path / "users.csv"
        csv.write_text(
            "Source Email,Destination Email,Batch\r\n"
            + "".join(f"{p.source},{p.target},wave\r\n" for p in run.pairs)
        )
        commands.batch_import(project, csv, env=env)
        yield run
        assert sb.ctx.extra[ERRORS_KEY] == []


def pim_prints(run: Run, side: str) -> Counter[PimPrint]:
    """The contacts, calendar items (masters, single events, exceptions) and tasks the side's
    mailboxes hold (all users together), from the sandbox's PIM store."""
    pim = pim_store(run.sandbox.ctx)
    out: Counter[PimPrint] = Counter()
    for p in run.pairs:
        box = p.source_id if side == "source" else p.target_id
        for kind in PIM_KINDS:
            for item in pim.items(side, box, kind):
                folder = pim.folder(side, box, item.folder_id)
                props = item.props
                subject = props.get("subject") or props.get("displayName") or props.get("title")
                out[(kind, folder.display_name if folder else "?", str(subject),
                     str(props.get("type") or ""))] += 1  # fmt: skip
    return out


def pim_arrives(run: Run, tag: str) -> None:
    """A contact, a weekly series and a To Do task made in each source mailbox (Graph)."""
    for p in run.pairs:
        with pim_seed.graph(run.sandbox, "source") as g:
            base = f"users/{p.source}"
            pim_seed.req(g, "POST", f"{base}/contacts",
                         json={"givenName": "Grace", "surname": f"Hopper{tag}"})  # fmt: skip
            pim_seed.req(g, "POST", f"{base}/events", json={
                "subject": f"Standup{tag}",
                "start": {"dateTime": "2024-03-04T09:00:00", "timeZone": "UTC"},
                "end": {"dateTime": "2024-03-04T09:15:00", "timeZone": "UTC"},
                "recurrence": {
                    "pattern": {"type": "daily", "interval": 1},
                    "range": {"type": "numbered", "startDate": "2024-03-04",
                              "numberOfOccurrences": 5},
                },
            })  # fmt: skip
            lists = pim_seed.req(g, "GET", f"{base}/todo/lists")["value"]
            default = next(x for x in lists if x["wellknownListName"] == "defaultList")
            pim_seed.req(g, "POST", f"{base}/todo/lists/{default['id']}/tasks",
                         json={"title": f"Renew passport{tag}"})  # fmt: skip


class Runs(EwsRuns):
    """test_ews_kill's runs (kill points counted in the messages and PIM items the users'
    target mailboxes hold), with this project's vault key and a kill inside a PIM copy."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        self.key = KEY

    def pim_unrecorded(self) -> set[str]:
        """The PIM copies in the target mailboxes the journal does not name."""
        held = {i for p in self.run.pairs for i in pim_copies(self.run, p.target_id)}
        return held - journal_ids(self.run) if held else set()

    def kill_in_pim_window(self, args: tuple[str, ...]) -> set[str]:
        """Run a command and SIGKILL it while a PIM copy is in a target mailbox without its
        journal record; those copies (empty: the run ended, or no such moment was seen)."""
        proc = self.start(*args)
        deadline = time.monotonic() + self.window_s
        while proc.poll() is None and time.monotonic() < deadline:
            if self.pim_unrecorded():
                self._kill(proc)
                return self.pim_unrecorded()
            time.sleep(self.poll_s)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        return set()


def test_workmail_passes_killed_at_random_points_end_with_every_item_once(tmp_path: Path) -> None:
    """Prestage and cutover (M365 -> WorkMail) SIGKILLed once while a mail copy and once while
    a PIM copy has no journal record, and at seeded points, then run to their end: the
    unrecorded copies are adopted (mail by Message-ID, PIM by its SourceId stamp), every
    message once in its folder path and every contact, calendar item (series, exception,
    single) and task once by class; a run after that copies nothing."""
    rng = random.Random(14)
    with scene(tmp_path) as run:
        runs = Runs(run)
        prestage = ("prestage", "--older-than", "90d")
        pim = pim_prints(run, "source")
        old = fingerprints(run, "source", older_than_days=90)

        # A kill between a mail CreateItem and its journal record (the Sink records outcomes
        # in batches): the copies it leaves must be adopted, not made again.
        left = runs.kill_in_window(prestage)
        mail = {str(m.id) for p in run.pairs for m in run.sandbox.mail.iter_messages("target", p.target_id)}  # fmt: skip
        assert left > 0 and mail - journal_ids(run), "a mail copy left unrecorded"
        # The same between a typed PIM CreateItem and its record. A mailbox's first pass
        # copies while it scans (sync's streamed first pass), so the killed run above may
        # already have copied and recorded every PIM item: then new ones arrive and the next
        # pass (scan first, then copy) has PIM copies to be killed between.
        orphans: set[str] = set()
        for attempt in range(3):
            orphans = runs.kill_in_pim_window(prestage)
            if orphans:
                break
            pim_arrives(run, f" (kill {attempt})")
        assert orphans, "a kill should fall between a PIM copy and its journal record"
        pim = pim_prints(run, "source")
        todo = old.total() + copy_count(pim) - runs.on_disk()
        landed = runs.crash(prestage, todo, PRESTAGE_KILLS, rng)
        runs.complete(*prestage)
        assert fingerprints(run, "target") == old
        assert pim_prints(run, "target") == pim
        assert orphans <= journal_ids(run), "the unrecorded PIM copies were adopted"

        mail_arrives(run, ARRIVING)
        pim_arrives(run, " (2)")
        every, pim = fingerprints(run, "source"), pim_prints(run, "source")
        todo = every.total() + copy_count(pim) - runs.on_disk()
        landed += runs.crash(("cutover",), todo, CUTOVER_KILLS, rng)
        runs.complete("cutover")
        got, got_pim = fingerprints(run, "target"), pim_prints(run, "target")
        assert got == every, {
            "duplicates": [k for k, n in got.items() if n > 1][:5],
            "missing": list((every - got).elements())[:5],
        }
        assert got_pim == pim, {"target": got_pim - pim, "source": pim - got_pim}
        assert landed >= 2, "the kills should land mid-run"
        runs.complete("cutover")
        assert copied_by_last(run, "cutover") == 0
