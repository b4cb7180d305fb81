"""The task queue of issue 16 below the workers: its schema revision, the executor setting,
one job per mailbox, cutover before pre-stage, and a job's per-user claim."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import procrastinate
import pytest
import sqlalchemy as sa
from alembic import command
from procrastinate import exceptions as pc_exceptions
from procrastinate import jobs as pc_jobs

from coexist import commands, jobs, runtime, schedule, worker
from coexist.errors import Busy, InputError
from coexist.journal import Journal, head_revision
from coexist.journal.claims import Writer, user_scope
from coexist.journal.db import alembic_config, make_engine, transaction
from coexist.settings import load_project
from tests import pg

SOURCE = {
    "source.sandbox_connection": "/nonexistent/connection.json",
    "target.sandbox_connection": "/nonexistent/connection.json",
    "domains.destination_domain": "fabrikam.example",
}


def _has_queue(url: str) -> bool:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT 1").scalar() == 1 and (
                engine.dialect.name == "postgresql"
                and conn.exec_driver_sql("SELECT to_regclass('procrastinate_jobs')").scalar()
                is not None
            )
    finally:
        engine.dispose()


def test_a_journal_made_at_0004_upgrades_to_the_queue(journal_url: str) -> None:
    """A journal created before the queue (revision 0004) opens at head with its data; on
    PostgreSQL procrastinate's tables are there after, on SQLite nothing is added."""
    engine = make_engine(journal_url)
    cfg = alembic_config()
    with transaction(engine, write=True) as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004")
    with transaction(engine, write=True) as conn:
        conn.execute(sa.text("INSERT INTO settings (key, value) VALUES ('sku', '\"E3\"')"))
    engine.dispose()
    assert not _has_queue(journal_url)
    with Journal.open(journal_url) as j:
        assert j.revision() == head_revision() == "0005"
        assert j.get_setting("sku") == "E3"
    assert _has_queue(journal_url) == journal_url.startswith("postgresql")


def test_queue_on_a_sqlite_journal_is_refused_naming_the_setting(tmp_path: Path) -> None:
    """executor = "queue" with the default SQLite journal: prestage, cutover and the worker
    refuse with an InputError naming [engine] executor, before any connection."""
    commands.init(tmp_path / "p", overrides={**SOURCE, "engine.executor": "queue"})
    project = tmp_path / "p"
    assert load_project(project).engine.executor == "queue"
    calls = (
        lambda: commands.prestage(project, all_users=True),
        lambda: commands.cutover(project, all_users=True),
        lambda: worker.serve(project),
    )
    for call in calls:
        with pytest.raises(InputError) as refused:
            call()
        assert "[engine] executor" in refused.value.message
        assert refused.value.to_dict()["key"] == "engine.executor"
    assert not (project / "journal.db").exists()


def test_inline_is_the_default(tmp_path: Path) -> None:
    """A project that says nothing runs inline."""
    commands.init(tmp_path / "p", overrides=SOURCE)
    assert load_project(tmp_path / "p").engine.executor == "inline"
    assert set(jobs.EXECUTORS) == {"inline", "queue"}


@pytest.fixture
def pg_journal(pg_url: str) -> str:
    pg.reset_database(pg_url)
    Journal.open(pg_url).close()
    return pg_url


def test_one_queued_job_per_mailbox_and_cutover_first(pg_journal: str) -> None:
    """A second job for a user with one waiting is refused (queueing lock); of two users'
    jobs the cutover is fetched before the prestage queued earlier (priority)."""

    async def go() -> list[str]:
        app = worker.make_app(pg_journal)
        async with app.open_async():
            task = app.tasks[jobs.TASK_NAME]
            args = {"label": "a@x", "options": {}}
            await worker._configure(task, "prestage", "u1", None).defer_async(
                command="prestage", user="u1", **args
            )
            with pytest.raises(pc_exceptions.AlreadyEnqueued):
                await worker._configure(task, "cutover", "u1", None).defer_async(
                    command="cutover", user="u1", **args
                )
            await worker._configure(task, "cutover", "u2", None).defer_async(
                command="cutover", user="u2", **args
            )
            with Journal.open(pg_journal) as j:
                shown = jobs.who_runs(j)
            assert shown == {"u1": "prestage queued", "u2": "cutover queued"}, shown
            wid = await app.job_manager.register_worker()
            order = []
            for _ in range(2):
                job = await app.job_manager.fetch_job(queues=None, worker_id=wid)
                assert job is not None
                order.append(str(job.task_kwargs["command"]))
            return order

    assert asyncio.run(go()) == ["cutover", "prestage"]


def test_a_job_claims_only_its_user(pg_journal: str) -> None:
    """Inside a job the command's writer holds user:<key>, not the project: another user's
    job runs beside it, the same user's is refused, and so is an inline command."""
    with Journal.open(pg_journal) as journal:
        with jobs.running(jobs.JobRun(key="u1", label="a@x", worker="w1")):
            first = runtime._writer(journal, "prestage")
        try:
            with jobs.running(jobs.JobRun(key="u2", label="b@x", worker="w2")):
                runtime._writer(journal, "prestage").close()
            with jobs.running(jobs.JobRun(key="u1", label="a@x", worker="w2")), pytest.raises(Busy):
                runtime._writer(journal, "cutover")
            with pytest.raises(Busy):
                runtime._writer(journal, "provision")
            held = jobs.who_runs(journal)
            assert list(held) == ["u1"] and "prestage on w1" in held["u1"], held
        finally:
            first.close()
        assert jobs.who_runs(journal) == {}
        # The project claim is free again; a user claim beside it is not.
        with runtime.project_writer(journal, "provision"), pytest.raises(Busy):
            Writer.open(journal.engine, "w", {user_scope("u3"): "c@x"})


def test_a_window_deferral_is_a_new_job_and_a_running_job_is_not_queued_twice(
    pg_journal: str,
) -> None:
    """A closed window queues the user's next job for the opening (not a retry: no attempt
    counted), naming the job it follows, and status says why it waits; --wait follows it;
    a refused successor is dropped only when a job of its own command waits; an enqueue
    beside a running job of that command queues nothing and says it runs."""
    at = dt.datetime(2099, 1, 1, 19, 0, tzinfo=dt.UTC)  # never fetched during the test
    left = schedule.LeaveForLater(
        at,
        "paused until 2099-01-01 20:00 CET (run window 20:00-06:00 Europe/Berlin, batch night)",
        opens="2099-01-01 20:00 CET",
        window="20:00-06:00 Europe/Berlin, batch night",
    )

    def row(job_id: int) -> tuple[Any, ...]:
        with Journal.open(pg_journal) as j, j.engine.connect() as conn:
            return tuple(
                conn.exec_driver_sql(
                    "SELECT status::text, attempts, lock, queueing_lock, scheduled_at, "
                    "args->'window'->>'after' FROM procrastinate_jobs WHERE id = %(id)s",
                    {"id": job_id},
                ).one()
            )

    async def go() -> tuple[int, int]:
        app = worker.make_app(pg_journal)
        async with app.open_async():
            task = app.tasks[jobs.TASK_NAME]
            wid = await app.job_manager.register_worker()

            async def running(user: str) -> procrastinate.JobContext:
                await worker._configure(task, "prestage", user, None).defer_async(
                    command="prestage", user=user, label=f"{user}@x", options={}
                )
                job = await app.job_manager.fetch_job(queues=None, worker_id=wid)
                assert job is not None and job.task_kwargs["user"] == user
                return procrastinate.JobContext(
                    app=app, job=job, start_timestamp=0.0, abort_reason=lambda: None
                )

            first = await running("u1")
            later = await worker._defer_to_opening(first, "prestage", "u1", "u1@x", {}, left)
            assert later is not None
            assert row(later) == ("todo", 0, "user:u1", "user:u1", at, str(first.job.id))
            with Journal.open(pg_journal) as j:
                assert jobs.who_runs(j)["u1"] == (
                    "prestage waiting for its run window (opens 2099-01-01 20:00 CET, "
                    "20:00-06:00 Europe/Berlin, batch night)"
                )
            # Refused by the queueing lock, a job of its own command waiting: none added.
            assert await worker._defer_to_opening(first, "prestage", "u1", "u1@x", {}, left) is None
            # Refused, the other command's job waiting: kept, with the lock only.
            second = await running("u2")
            await worker._configure(task, "cutover", "u2", None).defer_async(
                command="cutover", user="u2", label="u2@x", options={}
            )
            kept = await worker._defer_to_opening(second, "prestage", "u2", "u2@x", {}, left)
            assert kept is not None
            assert row(kept)[2:4] == ("user:u2", None)

            request = jobs.Request(
                command="prestage",
                directory=None,
                args={},
                options={},
                select=lambda _s: asyncio.sleep(0, []),
                inline=dict,
            )
            deferred, already = await worker._defer(
                pg_journal, request, [("u2", "u2@x"), ("u1", "u1@x"), ("u3", "u3@x")]
            )
            assert [label for label, _ in deferred] == ["u3@x"]
            assert already == [
                worker.Already("u2@x", second.job.id, running=True),
                worker.Already("u1@x", first.job.id, running=True),  # its job runs still
            ]
            await app.job_manager.finish_job(
                first.job, status=pc_jobs.Status.SUCCEEDED, delete_job=False
            )
            await app.job_manager.cancel_job_by_id_async(later)
            assert first.job.id is not None
            return first.job.id, later

    first, _ = asyncio.run(go())
    assert row(first)[:2] == ("succeeded", 1)
    # --wait: the deferred job is followed to its successor's end (cancelled here).
    assert worker.follow(pg_journal, [first], poll_s=0.1) == {first: "cancelled"}
