"""Writers and claims (`coexist.journal.claims`), on SQLite and on PostgreSQL (`journal_url`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from coexist.errors import Busy
from coexist.journal import Journal
from coexist.journal import schema as t
from coexist.journal.claims import (
    ENQUEUE,
    GROUPS,
    PROJECT,
    Writer,
    acting_for,
    batch_scope,
    holder_of,
    playbook_scope,
    user_scope,
)

REPO = Path(__file__).resolve().parents[2]
WHOLE = {PROJECT: "the whole project"}


@pytest.fixture
def journal(journal_url: str) -> Iterator[Journal]:
    with Journal.open(journal_url) as j:
        yield j


def users(*names: str) -> dict[str, str]:
    """Scopes of users keyed by a made-up source id, labelled by address as commands do."""
    return {user_scope(f"id-{n}"): f"{n}@source.example" for n in names}


def rows(journal: Journal, table: sa.Table) -> list[dict[str, Any]]:
    with journal.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table))]


def refusal(journal: Journal, command: str, scopes: dict[str, str]) -> Busy:
    with pytest.raises(Busy) as caught:
        Writer.open(journal.engine, command, scopes)
    return caught.value


def test_second_writer_is_refused_naming_command_pid_host_and_age(journal: Journal) -> None:
    """A second project writer is refused with the holder's command, PID, host and running time."""
    with Writer.open(journal.engine, "provision", WHOLE) as first:
        first.note_run(journal.start_run("provision", {"batch": "wave1", "users": None}))
        busy = refusal(journal, "provision", WHOLE)
    text = str(busy)
    host = socket.gethostname()
    assert f"provision --batch wave1 (PID {os.getpid()} on {host}, running for" in text
    assert "is writing to this project" in text and "run 1" in text
    assert "wait for it to finish" in (busy.next_step or "")
    (holder,) = busy.to_dict()["holders"]
    assert holder["command"] == "provision" and holder["pid"] == os.getpid()
    assert holder["host"] == socket.gethostname() and holder["running_s"] >= 0


def test_refused_writer_leaves_no_row_and_the_holder_keeps_its_claim(journal: Journal) -> None:
    """A refusal writes nothing: one writer row and its claim remain."""
    with Writer.open(journal.engine, "cutover", WHOLE) as first:
        refusal(journal, "provision", WHOLE)
        refusal(journal, "prestage", users("ann"))
        assert [w["id"] for w in rows(journal, t.writers)] == [first.id]
        assert [(c["scope"], c["writer_id"]) for c in rows(journal, t.claims)] == [
            (PROJECT, first.id)
        ]
    assert rows(journal, t.writers) == [] and rows(journal, t.claims) == []


def test_disjoint_users_are_held_at_once_and_an_overlap_is_refused_by_address(
    journal: Journal,
) -> None:
    """Two writers hold different users; a third asking for some of theirs is told which ones."""
    with (
        Writer.open(journal.engine, "prestage", users("ann", "bob")),
        Writer.open(journal.engine, "cutover", users("cy", "dee")),
    ):
        busy = refusal(journal, "rollback", users("bob", "dee", "eve"))
        text = str(busy)
        assert "prestage (PID" in text and "is working on bob@source.example" in text
        assert "cutover (PID" in text and "is working on dee@source.example" in text
        assert "eve@" not in text and "ann@" not in text
        # The refused writer holds nothing, so eve is still free.
        with Writer.open(journal.engine, "rollback", users("eve")):
            pass


def test_the_project_claim_conflicts_with_every_other_claim_both_ways(journal: Journal) -> None:
    """A project writer refuses user and group writers, and a user writer refuses it."""
    with Writer.open(journal.engine, "discover", WHOLE):
        assert "discover (PID" in str(refusal(journal, "prestage", users("ann")))
        assert "discover (PID" in str(refusal(journal, "groups", {GROUPS: "the groups"}))
    with Writer.open(journal.engine, "prestage", users("ann")):
        busy = refusal(journal, "discover", WHOLE)
        assert "prestage (PID" in str(busy) and "ann@source.example" in str(busy)
        with Writer.open(journal.engine, "groups", {GROUPS: "the groups"}):
            refusal(journal, "groups", {GROUPS: "the groups"})


def test_a_playbook_scope_conflicts_only_with_itself(journal: Journal) -> None:
    """A playbook run's batch lock lets its step commands claim project, enqueue and users
    beside it (no self-deadlock), refuses the same batch, allows another, and `holder_of`
    names its holder while it lives."""
    wave1 = {playbook_scope("wave1"): "batch wave1"}
    assert holder_of(journal.engine, playbook_scope("wave1")) is None
    with Writer.open(journal.engine, "playbook run cutover", wave1) as run:
        run.note_run(journal.start_run("playbook", {"batch": "wave1"}))
        for scopes in (WHOLE, {ENQUEUE: "queueing"}, users("ann")):
            with Writer.open(journal.engine, "step", scopes):
                pass
        # ... and the other way round: a project writer does not keep a run out.
        wave2 = {playbook_scope("wave2"): "batch wave2"}
        with (
            Writer.open(journal.engine, "prestage", WHOLE),
            Writer.open(journal.engine, "playbook run other", wave2),
        ):
            pass
        busy = refusal(journal, "playbook run prestage", wave1)
        assert "playbook run cutover --batch wave1 (PID" in str(busy)
        assert "is working on batch wave1" in str(busy)
        holder = holder_of(journal.engine, playbook_scope("wave1"))
        assert holder is not None and holder.pid == os.getpid() and holder.id == run.id
    assert holder_of(journal.engine, playbook_scope("wave1")) is None


def test_a_batch_scope_meets_only_its_batch_playbook_run(journal: Journal) -> None:
    """A command working on users of a batch (``batch:``) is refused while a playbook run
    holds that batch, naming the run, its PID, host and start, with what to do next; it goes
    beside project/user writers, other batches' runs and the run's own steps (`acting_for`);
    a run cannot start while such a command works on its batch; nothing is left claimed."""
    wave1 = {playbook_scope("wave1"): "batch wave1"}
    typed = WHOLE | {batch_scope("wave1"): "users of batch wave1"}
    # A command on wave1 holds its batch: a run on wave1 cannot start, one on wave2 can.
    with Writer.open(journal.engine, "cutover", typed) as cutover:
        cutover.note_run(journal.start_run("cutover", {"batch": "wave1"}))
        busy = refusal(journal, "playbook run night", wave1)
        assert "cutover --batch wave1 (PID" in str(busy) and "users of batch wave1" in str(busy)
        assert busy.to_dict()["reason"] == "writer"
        with Writer.open(journal.engine, "playbook run night", {playbook_scope("wave2"): "b"}):
            pass
    with Writer.open(journal.engine, "playbook run night", wave1) as run:
        run_id = journal.start_run("playbook", {"batch": "wave1"})
        run.note_run(run_id)
        busy = refusal(journal, "cutover", typed)
        text = str(busy)
        assert "a runbook is in progress: playbook run night --batch wave1" in text
        assert f"(PID {os.getpid()} on {socket.gethostname()}, running for" in text
        assert " since " in text and f"run {run_id})" in text
        nxt = busy.next_step or ""
        assert f"kill {os.getpid()}" in nxt and "coexist playbook run night --batch wave1" in nxt
        assert "coexist status --batch wave1" in nxt
        error = busy.to_dict()
        assert error["reason"] == "playbook-run"
        (holder,) = error["holders"]
        assert holder["playbook_batches"] == ["wave1"] and holder["pid"] == os.getpid()
        # Other batches, users of no batch, other writers' kinds: beside the run.
        for scopes in (WHOLE | {batch_scope("wave2"): "w2"}, users("ann"), {ENQUEUE: "q"}):
            with Writer.open(journal.engine, "cutover", scopes):
                pass
        # The run's own steps claim the batch (one writer at a time holds a scope).
        marks = {batch_scope("wave1"): "users of batch wave1"}
        with acting_for(run), Writer.open(journal.engine, "cutover", typed):
            refusal(journal, "retry", marks)
        with acting_for(run), Writer.open(journal.engine, "enqueue", {ENQUEUE: "q"} | marks):
            pass
        refusal(journal, "retry", {batch_scope("wave1"): "users of batch wave1"})
    with Writer.open(journal.engine, "cutover", typed):
        pass
    assert rows(journal, t.claims) == [] and rows(journal, t.writers) == []


def test_claim_more_release_and_close(journal: Journal) -> None:
    """A writer claims more as it goes, releases what it finished, and frees all on close."""
    worker = Writer.open(journal.engine, "worker", users("ann"))
    try:
        worker.claim(users("ann", "bob"))  # claiming again what it holds is fine
        refusal(journal, "cutover", users("bob"))
        worker.release(users("bob"))
        with Writer.open(journal.engine, "cutover", users("bob")):
            refusal(journal, "prestage", users("ann"))
    finally:
        worker.close()
    worker.close()  # idempotent
    with Writer.open(journal.engine, "discover", WHOLE):
        pass


def test_many_users_span_query_chunks_and_the_refusal_names_five(journal: Journal) -> None:
    """1200 users are claimed and checked in chunks; a refusal names 5 of them and counts the rest."""
    many = users(*(f"u{i:04d}" for i in range(1200)))
    with Writer.open(journal.engine, "provision", many):
        wanted = users("u0003", "u0500", "u0700", "u0900", "u1100", "u1199", "not-held")
        busy = refusal(journal, "prestage", wanted)
        assert "u0003@source.example, u0500@" in str(busy) and "and 1 more" in str(busy)
        assert busy.to_dict()["holders"][0]["holds_count"] == 6
        assert len(rows(journal, t.claims)) == 1200


def test_in_memory_journal_claims_within_its_process() -> None:
    """An in-memory SQLite journal (one process) still allows one project writer at a time."""
    with Journal.open("sqlite://") as journal, Writer.open(journal.engine, "discover", WHOLE):
        refusal(journal, "provision", WHOLE)


HOLDER = """
import sys, time
from coexist.journal import Journal
from coexist.journal.claims import PROJECT, Writer
journal = Journal.open(sys.argv[1])
writer = Writer.open(journal.engine, "provision", {PROJECT: "the whole project"})
print(writer.id, flush=True)
time.sleep(3600)
"""


def test_sigkilled_writer_frees_its_claims(journal: Journal, journal_url: str) -> None:
    """A writer process killed with SIGKILL leaves no claim behind: the next writer gets the
    project and deletes the dead writer's rows."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, journal_url], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        dead_id = int(proc.stdout.readline())
        busy = refusal(journal, "provision", WHOLE)
        assert f"PID {proc.pid} on" in str(busy)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    writer = _open_once_freed(journal, journal_url)
    try:
        assert [w["id"] for w in rows(journal, t.writers)] == [writer.id]
        assert dead_id not in {c["writer_id"] for c in rows(journal, t.claims)}
    finally:
        writer.close()


def _open_once_freed(journal: Journal, url: str) -> Writer:
    """The next writer. SQLite: at once (the kernel dropped the flock when the process died).
    PostgreSQL: once the server has seen the closed connection and ended that session, which it
    does on its own a moment after the kill; waiting for that is not part of what is proved."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return Writer.open(journal.engine, "provision", WHOLE)
        except Busy:
            if url.startswith("sqlite") or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
