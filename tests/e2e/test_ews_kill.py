"""Crash safety of ews-sync through the CLI: `coexist prestage` and `coexist cutover` of an
Exchange 2016 -> Exchange 2019 project (NTLM, as the hosted-Exchange seed signs in) are
SIGKILLed at seeded-random points and run again; every message ends in the target exactly
once (InternetMessageId and folder path), and so does every calendar item (a weekly series
with a moved and a cancelled occurrence), contact and task; a run after that copies nothing.
Then the same cutover under the sandbox's `chaos` profile (ErrorServerBusy storms) completes
with every message once.

The kill points are counted in items the target mailboxes hold (messages and PIM items), read
from the sandbox's stores in this process (the sandbox runs here; the CLI runs as a child
process it can kill): the kills fall between an UploadItems and its journal record, inside
scans and folder creation, and before the first copy. One kill is made to fall between a copy
and its journal record: the re-run must adopt the copies it left (it copies only what the
target lacked), not make them a second time. Between the cutover runs new mail, a series,
a contact and a task arrive at the source, so the seeded kills fall among PIM copies too.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from exchangelib import Contact, Task

from coexist import commands, credentials
from coexist.ewsdemo import SCENARIOS, Run, _accounts, _holdings, _pairs, _settings
from coexist.journal import Journal
from coexist.sandbox import mailseed
from coexist.sandbox.ews.face import ERRORS_KEY, RECORDER_KEY, Recorded
from coexist.sandbox.graph.outlook_items import pim_store
from coexist.sandbox.server import Sandbox
from coexist.settings import load_project
from coexist.vault import ENV_KEY, new_key
from tests import ewsclient as ec
from tests.e2e import killrun

KEY = new_key()
USERS, ITEMS = 2, 60
PRESTAGE_KILLS = 2
CUTOVER_KILLS = 3
ARRIVING = 20  # new messages per user between the cutover runs
Fingerprint = tuple[str, tuple[str, ...]]  # (InternetMessageId, folder path)
PIM_KINDS = ("event", "contact", "task")  # the sandbox PIM store's item kinds
# (kind, folder, subject, occurrence type, original start, cancelled occurrences)
PimPrint = tuple[str, str, str, str, str, tuple[str, ...]]


@dataclass
class KillRun(Run):
    """The demo's Run and the source's migration account (UPN, password)."""

    source_admin: tuple[str, str] = ("", "")


@contextmanager
def scene(tmp_path: Path, profile: str = "fast", with_pim: bool = False) -> Iterator[KillRun]:
    """A sandbox (Exchange 2016 -> 2019) with seeded source mailboxes (and PIM items), NTLM
    migration accounts, and a project of kind exchange -> exchange with the admins'
    passwords in its vault and its users imported from a batch file."""
    project = tmp_path / "project"
    project.mkdir()
    kinds = SCENARIOS["hosted-exchange"]
    with Sandbox(tmp_path / "sandbox", seed=3, users=10, profile=profile, kinds=kinds) as sb:
        sb.ctx.extra[ERRORS_KEY] = []  # sandbox bugs met while serving: none, asserted at the end
        run = KillRun(project, sb, "hosted-exchange", _pairs(sb, USERS), lambda _m: None, None)
        for p in run.pairs:
            mailseed.seed_mailbox(sb.mail, "source", p.source_id, seed=3, items=ITEMS)
        passwords = _accounts(run, kinds)
        settings = _settings(run, kinds, passwords)
        assert {settings[f"{side}.ews.auth"] for side in passwords} == {"ntlm"}
        run.source_admin = passwords["source"]
        if with_pim:
            seed_pim(run)
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


def seed_pim(run: KillRun, tag: str = "") -> None:
    """In each source mailbox, over EWS (NTLM) as the migration account: a weekly series whose
    second occurrence is moved (an exception) and third cancelled, a contact, a task."""
    sb = run.sandbox
    admin, password = run.source_admin
    for p in run.pairs:
        account = ec.account(sb, "source", admin, p.source, password=password)
        series = ec.weekly_series(account)
        ec.add_exception_and_cancel(sb, series.id)
        Contact(account=account, folder=account.contacts, display_name=f"Ada Lovelace{tag}",
                given_name="Ada", surname="Lovelace").save()  # fmt: skip
        Task(account=account, folder=account.tasks, subject=f"File taxes{tag}",
             status="InProgress").save()  # fmt: skip


def pim_prints(run: Run, side: str) -> Counter[PimPrint]:
    """The PIM items the side's mailboxes hold (all users together), from the sandbox's PIM
    store: a series' master with its cancelled occurrences, each exception with the
    occurrence it replaces."""
    pim = pim_store(run.sandbox.ctx)
    out: Counter[PimPrint] = Counter()
    for p in run.pairs:
        box = p.source_id if side == "source" else p.target_id
        for kind in PIM_KINDS:
            for item in pim.items(side, box, kind):
                folder = pim.folder(side, box, item.folder_id)
                props = item.props
                subject = props.get("subject") or props.get("displayName") or props.get("title")
                out[(
                    kind,
                    folder.display_name if folder else "?",
                    str(subject),
                    str(props.get("type") or ""),
                    str(props.get("originalStart") or ""),
                    tuple(sorted(props.get("cancelled") or ())),
                )] += 1  # fmt: skip
    return out


def pim_copies(run: Run, box: str) -> list[str]:
    """The ids of the PIM items a target mailbox holds as copies of their own (EWS ItemIds):
    an exception travels inside its series' copy (ExportItems/UploadItems) and has no
    journal record of its own."""
    pim = pim_store(run.sandbox.ctx)
    return [
        i.id
        for kind in PIM_KINDS
        for i in pim.items("target", box, kind)
        if i.props.get("type") != "exception"
    ]


def copy_count(pim: Counter[PimPrint]) -> int:
    """The copies these PIM items make (an exception travels inside its series' copy)."""
    return sum(n for k, n in pim.items() if k[3] != "exception")


def target_ids(run: Run) -> set[str]:
    """The ids of every message and PIM item copy in the target mailboxes (EWS ItemIds)."""
    ids: set[str] = set()
    for p in run.pairs:
        ids.update(str(m.id) for m in run.sandbox.mail.iter_messages("target", p.target_id))
        ids.update(pim_copies(run, p.target_id))
    return ids


def journal_ids(run: Run) -> set[str]:
    """The copies the journal names (target item ids), over every user."""
    with Journal.open(load_project(run.project).journal_url) as j:
        keys = [str(u["key"]) for u in j.items(kind="user")]
        return {str(r["target_item_id"]) for k in keys for r in j.mapped_items(k)
                if r["target_item_id"]}  # fmt: skip


class Runs(killrun.Runs):
    """The project's commands as child processes, kill points counted in the messages and
    PIM items the users' target mailboxes hold."""

    poll_s = 0.005
    max_jitter_s = 0.03

    def __init__(self, run: Run) -> None:
        super().__init__(run.project, KEY)
        self.run = run

    def on_disk(self) -> int:
        return sum(
            self.run.sandbox.mail.count("target", p.target_id)
            + len(pim_copies(self.run, p.target_id))
            for p in self.run.pairs
        )


def copied_by_last(run: Run, kind: str) -> int:
    """Items the last pass of `kind` of each user copied, summed."""
    with Journal.open(load_project(run.project).journal_url) as j:
        last: dict[str, dict[str, object]] = {}
        for p in j.passes():
            if p["kind"] == kind:
                last[str(p["item_key"])] = p
    return sum(int((p["counts"] or {}).get("copied", 0)) for p in last.values())  # type: ignore[union-attr]


def mail_arrives(run: Run, n: int) -> None:
    """`n` new messages in each source Inbox (mail keeps arriving while a project runs)."""
    now = dt.datetime.now(dt.UTC)
    for p in run.pairs:
        for i in range(n):
            mid = f"<arrived-{i}-{p.source_id[:8]}@source.example>"
            mime = (
                f"From: Ops <ops@source.example>\r\nTo: {p.source}\r\nSubject: Arrived {i}\r\n"
                f"Message-ID: {mid}\r\nDate: {now:%a, %d %b %Y %H:%M:%S +0000}\r\n"
                f"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nNew mail {i}.\r\n"
            ).encode()
            run.sandbox.mail.insert_message("source", p.source_id, "inbox", mime, received=now)


def test_ews_passes_killed_at_random_points_end_with_every_item_once(tmp_path: Path) -> None:
    """Prestage and cutover SIGKILLed at seeded points and once between a copy and its journal
    record, then re-run: the copies that kill left unrecorded are adopted (the re-run copies
    only what was missing); no duplicates, no gaps (InternetMessageId in the same folder path;
    a series with its exception and cancellation, a contact, a task); a run after that copies
    nothing."""
    rng = random.Random(12)
    with scene(tmp_path, with_pim=True) as run:
        runs = Runs(run)
        old = fingerprints(run, "source", older_than_days=90)
        prestage = ("prestage", "--older-than", "90d")
        landed = runs.crash(prestage, old.total(), PRESTAGE_KILLS, rng)
        runs.complete(*prestage)
        assert fingerprints(run, "target") == old

        # A kill between an import and its journal record (sync's Sink records outcomes in
        # batches): the copies it leaves must be adopted by the re-run, not made again.
        pim = pim_prints(run, "source")
        copies = fingerprints(run, "source").total() + copy_count(pim)
        left = runs.kill_in_window(("cutover",))
        held, orphans = runs.on_disk(), target_ids(run) - journal_ids(run)
        assert left > 0 and orphans, "a kill should fall between a copy and its journal record"
        runs.complete("cutover")
        assert copied_by_last(run, "cutover") == copies - held, "the orphans were adopted"
        assert fingerprints(run, "target") == fingerprints(run, "source")
        assert pim_prints(run, "target") == pim

        mail_arrives(run, ARRIVING)  # and calendar items, contacts and tasks are made
        seed_pim(run, " (2)")
        every, pim = fingerprints(run, "source"), pim_prints(run, "source")
        todo = every.total() + copy_count(pim) - runs.on_disk()
        landed += runs.crash(("cutover",), todo, CUTOVER_KILLS, rng)
        runs.complete("cutover")
        got, got_pim = fingerprints(run, "target"), pim_prints(run, "target")
        assert got == every, {
            "duplicates": [k for k, n in got.items() if n > 1][:5],
            "missing": list((every - got).elements())[:5],
        }
        assert got_pim == pim, {"target": got_pim, "source": pim}
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
