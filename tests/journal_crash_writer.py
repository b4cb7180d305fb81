"""A journal writer for the crash test: records copy steps until it is killed.

Run as ``python tests/journal_crash_writer.py URL [--die MODE:N] [--limit N]``. It plays a data
mover: for each message UID it records the step ``started`` then ``ok`` (with before/after),
logs an event, records progress on the item, and only then saves the folder checkpoint - the
order the product uses. It resumes from the checkpoint, like a re-run of the real command.

``--die`` makes it SIGKILL itself at a chosen point, so the test can hit exact places:
``open:N`` at the N-th SQL statement while migrating, ``stmt:N`` at the N-th statement after
opening (inside transactions: after the step row changed but before its history row, ...),
``op:N`` after the N-th journal call (between transactions). Without it the test kills the
process from outside at a random moment.
"""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any

import sqlalchemy as sa

from coexist.journal import Journal, db

ITEM = "u-crash"
FOLDER = "inbox"
CHECKPOINT_KIND = "uid"


def step_key(uid: int) -> str:
    return f"migrate.copy:{ITEM}:{uid:06d}"


class Killer:
    """SIGKILLs this process at the N-th tick of the chosen kind."""

    def __init__(self, spec: str | None) -> None:
        self.kind, self.at = ("", 0)
        if spec:
            kind, _, n = spec.partition(":")
            self.kind, self.at = kind, int(n)
        self.count = 0

    def tick(self, kind: str) -> None:
        if kind != self.kind:
            return
        self.count += 1
        if self.count == self.at:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_statement(self, kind: str) -> Any:
        def listener(*_args: Any) -> None:
            self.tick(kind)

        return listener


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--die")
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()
    killer = Killer(args.die)

    engine = db.make_engine(args.url)
    on_open = killer.on_statement("open")
    sa.event.listen(engine, "after_cursor_execute", on_open)
    db.upgrade(engine)
    sa.event.remove(engine, "after_cursor_execute", on_open)
    sa.event.listen(engine, "after_cursor_execute", killer.on_statement("stmt"))
    journal = Journal(engine)

    def op() -> None:
        killer.tick("op")

    run = journal.start_run("crash-writer", {"die": args.die})
    op()
    journal.upsert_item("user", ITEM, name="Crash Test", state="copying")
    op()
    checkpoint = journal.get_checkpoint(ITEM, FOLDER, CHECKPOINT_KIND)
    uid = int(checkpoint["watermark"]) + 1 if checkpoint else 0
    print("ready", flush=True)
    while args.limit is None or uid < args.limit:
        key = step_key(uid)
        previous = journal.step_started(
            run, key, item_kind="user", item_key=ITEM, name="migrate.copy", intent={"uid": uid}
        )
        op()
        if previous is not None and previous["status"] == "started":
            journal.event(run, "warning", "resuming a step a crash left started", step_key=key)
            op()
        journal.step_finished(
            key,
            status="ok",
            before={"uid": uid, "copied": False},
            after={"uid": uid, "copied": True},
            changed=True,
        )
        op()
        journal.event(run, "info", f"copied {uid}", item_key=ITEM, step_key=key, data={"uid": uid})
        op()
        journal.update_item("user", ITEM, detail={"copied_through": uid})
        op()
        journal.save_checkpoint(ITEM, FOLDER, CHECKPOINT_KIND, watermark=str(uid))
        op()
        uid += 1
    journal.finish_run(run, "ok")
    journal.close()
    print("done", flush=True)


if __name__ == "__main__":
    main()
