"""The run journal's API, on SQLite and on PostgreSQL (`journal_url` runs each test on both)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from coexist.journal import (
    Journal,
    UnknownItem,
    UnknownStep,
    default_url,
    head_revision,
    is_secret_key,
)
from coexist.journal import schema as t
from coexist.journal.db import normalize_url
from tests import pg


@pytest.fixture
def journal(journal_url: str) -> Iterator[Journal]:
    with Journal.open(journal_url) as j:
        yield j


def _start(j: Journal, key: str = "provision.mailuser:u1", run: int | None = None) -> Any:
    return j.step_started(
        run, key, item_kind="user", item_key="u1", name="provision.mailuser", intent={"upn": "a"}
    )


# -- opening and schema ---------------------------------------------------------------------


def test_open_creates_sqlite_parent_dir_and_migrates(tmp_path: Path) -> None:
    """A bare path opens a SQLite file in a directory that did not exist, at the head revision."""
    path = tmp_path / "project" / "state" / "journal.sqlite"
    with Journal.open(str(path)) as j:
        assert j.revision() == head_revision()
    assert path.exists()


def test_reopen_is_a_no_op(journal_url: str) -> None:
    """Opening an existing journal keeps its data and its revision."""
    with Journal.open(journal_url) as j:
        j.set_setting("sku", "E3")
    with Journal.open(journal_url) as j:
        assert j.get_setting("sku") == "E3"
        assert j.revision() == head_revision()


def test_migration_matches_schema_module(journal: Journal) -> None:
    """The Alembic revisions create exactly the tables, columns and indexes schema.py declares."""

    def ours(name: str | None, type_: str, parent: Any) -> bool:
        # procrastinate's tables (revision 0005, PostgreSQL) are its schema, not schema.py's.
        return not (type_ == "table" and str(name).startswith("procrastinate_"))

    with journal.engine.connect() as conn:
        opts = {"compare_type": True, "include_name": ours}
        ctx = MigrationContext.configure(conn, opts=opts)
        assert compare_metadata(ctx, t.metadata) == []


def test_sqlite_pragmas(tmp_path: Path) -> None:
    """SQLite connections run in WAL mode with synchronous=NORMAL and foreign keys enforced."""
    with Journal.open(str(tmp_path / "j.sqlite")) as j, j.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_durable_writes_commit_with_synchronous_full(tmp_path: Path) -> None:
    """A durable `map_items` (sync's `importing` marks) commits with synchronous=FULL, so
    SQLite syncs the WAL at that commit; the writes around it stay NORMAL."""
    with Journal.open(str(tmp_path / "j.sqlite")) as j:
        said: list[str] = []
        sa.event.listen(
            j.engine,
            "before_cursor_execute",
            lambda _c, _cur, sql, *_: said.append(sql) if "synchronous" in sql else None,
        )
        j.map_items("u1", [_new_row(1)])
        j.map_items("u1", [{"source_item_id": "s1", "status": "importing"}], durable=True)
        j.map_items("u1", [{"source_item_id": "s1", "status": "copied"}])
        assert said == ["PRAGMA synchronous=FULL", "PRAGMA synchronous=NORMAL"]
        assert j.mapped("u1", "s1")["status"] == "copied"  # type: ignore[index]


def test_foreign_keys_are_enforced(journal: Journal) -> None:
    """A step pointing at a run that does not exist is refused by the database."""
    with pytest.raises(sa.exc.IntegrityError):
        _start(journal, run=12345)


def test_urls() -> None:
    """Bare paths mean SQLite, postgresql:// means psycopg 3, other databases are refused."""
    assert normalize_url("/tmp/x/journal.sqlite").get_backend_name() == "sqlite"
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert default_url("/srv/proj").endswith("/srv/proj/journal.sqlite")
    with pytest.raises(ValueError, match="only sqlite and postgresql"):
        normalize_url("mysql://u@h/db")


def test_in_memory_sqlite_keeps_data_across_calls() -> None:
    """sqlite:// (memory) shares one connection, so data survives between calls."""
    with Journal.open("sqlite://") as j:
        j.set_setting("a", 1)
        assert j.get_setting("a") == 1


# -- runs and items -------------------------------------------------------------------------


def test_runs_are_recorded(journal: Journal) -> None:
    """start_run returns an id; finish_run sets status and an aware UTC finish time."""
    run = journal.start_run("provision", {"batch": "b1", "plan": False})
    journal.finish_run(run, "ok")
    (row,) = journal.runs()
    assert row["id"] == run and row["args"] == {"batch": "b1", "plan": False}
    assert row["status"] == "ok" and row["finished_at"].tzinfo is UTC
    assert row["started_at"] <= row["finished_at"]


def test_upsert_item_creates_then_sets_only_given_fields(journal: Journal) -> None:
    """A second upsert changes the named fields and leaves the others alone."""
    first = journal.upsert_item("user", "u1", name="Alice", batch="b1", detail={"a": 1})
    assert first["name"] == "Alice" and first["created_at"].tzinfo is UTC
    second = journal.upsert_item("user", "u1", state="provisioned")
    assert second["name"] == "Alice" and second["batch"] == "b1"
    assert second["state"] == "provisioned" and second["detail"] == {"a": 1}
    assert journal.get_item("user", "u1") == second


def test_upsert_without_change_keeps_updated_at(journal: Journal) -> None:
    """Re-recording the same values does not touch updated_at."""
    first = journal.upsert_item("user", "u1", name="Alice")
    again = journal.upsert_item("user", "u1", name="Alice")
    assert again["updated_at"] == first["updated_at"]


def test_item_key_is_unique_per_kind(journal: Journal) -> None:
    """A user and a group may share a key; each kind keeps its own row."""
    journal.upsert_item("user", "x", name="user x")
    journal.upsert_item("group", "x", name="group x")
    assert [(i["kind"], i["name"]) for i in journal.items()] == [
        ("group", "group x"),
        ("user", "user x"),
    ]


def test_item_validation(journal: Journal) -> None:
    """Unknown kinds and fields are refused; update_item needs an existing item."""
    with pytest.raises(ValueError, match="item kind"):
        journal.upsert_item("contact", "c1")
    with pytest.raises(TypeError, match="unknown item fields"):
        journal.upsert_item("user", "u1", colour="red")
    with pytest.raises(UnknownItem):
        journal.update_item("user", "nobody", state="x")


def test_items_filters(journal: Journal) -> None:
    """items() filters by kind, batch, state and phase."""
    journal.upsert_item("user", "u1", batch="b1", state="new", phase="provision")
    journal.upsert_item("user", "u2", batch="b2", state="new", phase="prestage")
    journal.upsert_item("group", "g1", batch="b1")
    journal.update_item("user", "u2", state="done")
    assert [i["key"] for i in journal.items(kind="user")] == ["u1", "u2"]
    assert [i["key"] for i in journal.items(batch="b1")] == ["g1", "u1"]
    assert [i["key"] for i in journal.items(state="done")] == ["u2"]
    assert [i["key"] for i in journal.items(kind="user", phase="provision")] == ["u1"]


# -- steps ----------------------------------------------------------------------------------


def test_step_lifecycle_and_history(journal: Journal) -> None:
    """started then ok is stored with before/after; history keeps both transitions."""
    run = journal.start_run("provision", {})
    assert _start(journal, run=run) is None
    assert journal.get_step("provision.mailuser:u1")["status"] == "started"  # type: ignore[index]
    done = journal.step_finished(
        "provision.mailuser:u1",
        status="ok",
        before={"exists": False},
        after={"id": "t1"},
        changed=True,
    )
    stored = journal.get_step("provision.mailuser:u1")
    assert stored is not None and stored["status"] == "ok" and stored["attempts"] == 1
    assert stored["before"] == {"exists": False} and stored["after"] == {"id": "t1"}
    assert stored["changed"] is True and done["status"] == "ok"
    assert stored["finished_at"].tzinfo is UTC
    assert [h["status"] for h in journal.history("provision.mailuser:u1")] == ["started", "ok"]


def test_restart_after_crash_returns_started_record(journal: Journal) -> None:
    """A step started twice without finishing hands back the 'started' record and counts attempts."""
    _start(journal)
    previous = _start(journal)
    assert previous is not None and previous["status"] == "started"
    assert journal.get_step("provision.mailuser:u1")["attempts"] == 2  # type: ignore[index]


def test_rerun_clears_last_result_but_history_keeps_it(journal: Journal) -> None:
    """Starting a finished step again returns its result and keeps it in history."""
    _start(journal)
    journal.step_finished("provision.mailuser:u1", status="ok", before={"v": 1}, after={"v": 2})
    previous = _start(journal)
    assert previous is not None and previous["after"] == {"v": 2}
    assert journal.get_step("provision.mailuser:u1")["after"] is None  # type: ignore[index]
    statuses = [(h["status"], h["attempt"]) for h in journal.history("provision.mailuser:u1")]
    assert statuses == [("started", 1), ("ok", 1), ("started", 2)]


def test_failed_step_keeps_error_retry_and_next_step(journal: Journal) -> None:
    """A failure stores class, redacted message, retry-after and the command to run next."""
    _start(journal)
    journal.step_finished(
        "provision.mailuser:u1",
        status="failed",
        error_class="TransientError",
        error_message="429 for Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.sig",
        retry_after=2.5,
        next_step="coexist provision --batch b1",
    )
    step = journal.get_step("provision.mailuser:u1")
    assert step is not None and step["status"] == "failed"
    assert step["error_class"] == "TransientError" and step["retry_after"] == 2.5
    assert "eyJ" not in step["error_message"] and "[redacted]" in step["error_message"]
    assert step["next_step"] == "coexist provision --batch b1"


def test_step_finished_validation(journal: Journal) -> None:
    """Unknown steps and statuses are refused."""
    with pytest.raises(UnknownStep):
        journal.step_finished("never:started", status="ok")
    _start(journal)
    with pytest.raises(ValueError, match="step status"):
        journal.step_finished("provision.mailuser:u1", status="done")


def test_steps_filters(journal: Journal) -> None:
    """steps() filters by item, status and step type."""
    _start(journal, "provision.mailuser:u1")
    journal.step_started(
        None,
        "provision.x500:u2",
        item_kind="user",
        item_key="u2",
        name="provision.x500",
        intent=None,
    )
    journal.step_finished("provision.x500:u2", status="waiting")
    assert [s["key"] for s in journal.steps(item_key="u1")] == ["provision.mailuser:u1"]
    assert [s["key"] for s in journal.steps(status="waiting")] == ["provision.x500:u2"]
    assert [s["key"] for s in journal.steps(name="provision.mailuser")] == ["provision.mailuser:u1"]


def test_concurrent_starts_of_one_step_lose_no_attempt(journal_url: str) -> None:
    """Four writers with their own connections starting the same step count every attempt."""
    Journal.open(journal_url).close()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with Journal.open(journal_url) as j:
                for _ in range(10):
                    _start(j)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with Journal.open(journal_url) as j:
        assert j.get_step("provision.mailuser:u1")["attempts"] == 40  # type: ignore[index]
        assert len(j.history("provision.mailuser:u1")) == 40


# -- JSON, time, secrets --------------------------------------------------------------------


def test_json_round_trips(journal: Journal) -> None:
    """Nested dicts, lists, unicode, numbers and booleans come back as written; None is SQL NULL."""
    value = {
        "addr": ["smtp:a@x.example", "X500:/o=Ex/cn=Ä"],
        "n": 3,
        "f": 0.5,
        "ok": True,
        "none": None,
    }
    _start(journal)
    journal.step_finished("provision.mailuser:u1", status="ok", before=value, after=[1, {"b": []}])
    step = journal.get_step("provision.mailuser:u1")
    assert step is not None and step["before"] == value and step["after"] == [1, {"b": []}]
    with journal.engine.connect() as conn:
        nulls = conn.execute(
            sa.select(sa.func.count()).where(t.steps.c.detail.is_(None))
        ).scalar_one()
    assert nulls == 1


@pytest.mark.parametrize(
    "payload",
    [
        {"password": "x"},
        {"outer": {"client_secret": "x"}},
        {"list": [{"accessToken": "x"}]},
        {"headers": {"Authorization": "x"}},
        {"passwordProfile": {"forceChange": True}},
        {"note": "Bearer abc.def.ghi"},
    ],
)
def test_secrets_are_refused_everywhere(journal: Journal, payload: dict[str, Any]) -> None:
    """intent, before/after, event data and item detail refuse credential-looking content; nothing is written."""
    run = journal.start_run("x", {})
    with pytest.raises(ValueError):
        journal.step_started(run, "s:1", item_kind=None, item_key=None, name="s", intent=payload)
    assert journal.get_step("s:1") is None
    _start(journal)
    with pytest.raises(ValueError):
        journal.step_finished("provision.mailuser:u1", status="ok", after=payload)
    with pytest.raises(ValueError):
        journal.event(run, "info", "m", data=payload)
    with pytest.raises(ValueError):
        journal.upsert_item("user", "u9", detail=payload)
    assert journal.events() == [] and journal.get_item("user", "u9") is None


def test_secret_key_names() -> None:
    """Spelling variants of credential keys are caught; ordinary keys are not."""
    for key in ("password", "Client-Secret", "clientSecret", "refresh_token", "secretText"):
        assert is_secret_key(key)
    for key in ("deltaToken", "displayName", "mail", "userPrincipalName", "skipToken"):
        assert not is_secret_key(key)


def test_non_json_values_are_refused(journal: Journal) -> None:
    """Values JSON cannot round-trip (sets, objects) are refused before reaching the database."""
    with pytest.raises(TypeError):
        journal.set_setting("x", {1, 2})


# -- events, passes, checkpoints, settings --------------------------------------------------


def test_events_are_logged_redacted_and_filtered(journal: Journal) -> None:
    """Events keep level, keys and data; texts are redacted; filters select them."""
    run = journal.start_run("migrate", {})
    journal.event(run, "info", "copied 3", item_key="u1", data={"count": 3})
    journal.event(run, "error", "token client_secret=abc123 leaked", step_key="s:1")
    assert [e["message"] for e in journal.events(run, item_key="u1")] == ["copied 3"]
    (err,) = journal.events(level="error")
    assert "abc123" not in err["message"] and err["ts"].tzinfo is UTC
    with pytest.raises(ValueError, match="event level"):
        journal.event(run, "loud", "x")


def test_passes(journal: Journal) -> None:
    """A pass records its window, then its status and counts."""
    run = journal.start_run("prestage", {})
    pass_id = journal.pass_started(run, "u1", "prestage", {"before": "2026-01-01"})
    journal.pass_finished(pass_id, "ok", {"copied": 10, "skipped": 2})
    (row,) = journal.passes("u1")
    assert row["window"] == {"before": "2026-01-01"} and row["counts"]["copied"] == 10
    with pytest.raises(ValueError, match="pass kind"):
        journal.pass_started(run, "u1", "finalize")


def test_checkpoints(journal: Journal) -> None:
    """Checkpoints are saved, overwritten, listed and deleted per (item, folder, kind)."""
    assert journal.get_checkpoint("u1", "inbox", "delta") is None
    journal.save_checkpoint("u1", "inbox", "delta", token="https://graph/delta?token=1")
    journal.save_checkpoint("u1", "inbox", "delta", token="https://graph/delta?token=2")
    journal.save_checkpoint("u1", "INBOX", "uid", watermark="42")
    cp = journal.get_checkpoint("u1", "inbox", "delta")
    assert cp is not None and cp["token"].endswith("token=2") and cp["watermark"] is None
    assert len(journal.checkpoints("u1")) == 2
    journal.delete_checkpoint("u1", "inbox", "delta")
    assert journal.get_checkpoint("u1", "inbox", "delta") is None


def _new_row(n: int, **extra: Any) -> dict[str, Any]:
    return {"source_item_id": f"s{n}", "source_folder_id": "INBOX", "status": "pending", **extra}


def test_mapped_items_by_reason_prefix_matches_the_prefix_literally(journal: Journal) -> None:
    """`mapped_items(reason_prefix=...)` answers the rows whose reason starts with the prefix,
    in insertion order, a "%" or "_" in it matched as itself (not as a LIKE wildcard)."""
    journal.map_items(
        "u1",
        [
            _new_row(1, reason="moving the copy of s9"),
            _new_row(2, reason="other"),
            _new_row(3),
            _new_row(4, reason="moving_the copy"),
            _new_row(5, reason="50% moving"),
            _new_row(6, reason="moving the copy of s8"),
        ],
    )
    journal.map_items("u2", [_new_row(7, reason="moving the copy of s1")])
    got = journal.mapped_items("u1", reason_prefix="moving the copy of ")
    assert [r["source_item_id"] for r in got] == ["s1", "s6"]
    assert [r["source_item_id"] for r in journal.mapped_items("u1", reason_prefix="50%")] == ["s5"]
    assert journal.mapped_items("u1", reason_prefix="5_%") == []


def test_map_items_applies_mixed_rows_in_order_as_one_call_each_would(journal: Journal) -> None:
    """One `map_items` call mixing new rows, updates of different columns and a row named
    twice ends as the same rows written one call at a time; a bad row writes nothing."""
    journal.map_items("u1", [_new_row(1, size=10), _new_row(2)])
    journal.map_items(
        "u1",
        [
            _new_row(3, kind="IPM.Note"),
            {"source_item_id": "s1", "status": "importing", "target_folder_id": "T"},
            {"source_item_id": "s2", "status": "importing", "target_folder_id": "T"},
            _new_row(1, size=11),  # an upsert of a known row keeps the columns it does not set
            {"source_item_id": "s1", "status": "copied", "target_item_id": "t1"},
            {"source_item_id": "s2", "target_change_key": None, "reason": "why"},
        ],
    )
    got = {r["source_item_id"]: r for r in journal.mapped_items("u1")}
    assert [got["s1"][k] for k in ("status", "size", "target_folder_id", "target_item_id")] == [
        "copied",
        11,
        "T",
        "t1",
    ]
    assert (got["s2"]["status"], got["s2"]["reason"]) == ("importing", "why")
    assert (got["s3"]["status"], got["s3"]["kind"]) == ("pending", "IPM.Note")
    with pytest.raises(TypeError):
        journal.map_items("u1", [{"source_item_id": "s3", "status": "copied"}, {"bogus": 1}])
    assert journal.mapped("u1", "s3") == got["s3"]


def test_map_items_of_writes_several_mailboxes_as_map_items_would(journal: Journal) -> None:
    """`map_items_of` (rows by mailbox, one transaction) ends as one `map_items` per mailbox:
    the same source id in two mailboxes stays two rows, each mailbox's rows apply in order."""
    journal.map_items("u1", [_new_row(1), _new_row(2)])
    journal.map_items("u2", [_new_row(1)])
    journal.map_items_of(
        {
            "u1": [
                {"source_item_id": "s1", "status": "copied", "target_item_id": "t1"},
                {"source_item_id": "s2", "status": "copied", "target_item_id": "t2"},
                {"source_item_id": "s2", "status": "skipped", "reason": "too big"},
            ],
            "u2": [{"source_item_id": "s1", "status": "copied", "target_item_id": "x1"}],
        }
    )
    journal.map_items_of({})
    u1 = {r["source_item_id"]: r for r in journal.mapped_items("u1")}
    u2 = {r["source_item_id"]: r for r in journal.mapped_items("u2")}
    assert (u1["s1"]["status"], u1["s1"]["target_item_id"]) == ("copied", "t1")
    assert (u1["s2"]["status"], u1["s2"]["reason"]) == ("skipped", "too big")
    assert (u2["s1"]["status"], u2["s1"]["target_item_id"]) == ("copied", "x1")


def test_mapped_many_reads_the_rows_that_exist_by_source_id(journal: Journal) -> None:
    """`mapped_many` answers the rows of the ids that exist (of that mailbox only), past
    one IN list's worth of ids."""
    journal.map_items("u1", [_new_row(n) for n in range(600)])
    journal.map_items("u2", [_new_row(600)])
    found = journal.mapped_many("u1", [f"s{n}" for n in range(0, 700, 2)])
    assert sorted(found) == sorted(f"s{n}" for n in range(0, 600, 2))
    assert found["s4"] == journal.mapped("u1", "s4")
    assert journal.mapped_many("u1", []) == {}


def test_settings_and_locks(journal: Journal) -> None:
    """set_setting overwrites; lock_setting keeps the first value for the project's life."""
    assert journal.get_setting("sku") is None
    journal.set_setting("retries", {"max": 3})
    journal.set_setting("retries", {"max": 5})
    assert journal.get_setting("retries") == {"max": 5}
    assert journal.lock_setting("sku", "SPE_E3") == "SPE_E3"
    assert journal.lock_setting("sku", "SPE_E5") == "SPE_E3"


# -- snapshots ------------------------------------------------------------------------------


def _record_everything(j: Journal) -> None:
    run = j.start_run("provision", {"batch": "b1"})
    j.upsert_item("user", "u1", name="Alice", batch="b1", detail={"aliases": ["a", "b"]})
    j.upsert_item("group", "g1", name="Team")
    _start(j, run=run)
    j.step_finished(
        "provision.mailuser:u1", status="ok", before={}, after={"id": "t1"}, changed=True
    )
    j.save_checkpoint("u1", "inbox", "delta", token="tok")
    j.set_setting("sku", "E3")
    j.event(run, "info", "done")
    j.finish_run(run, "ok")


def test_same_upserts_twice_leave_snapshot_unchanged(journal: Journal) -> None:
    """Recording the same facts again changes no state: ids, clocks and attempts are ignored."""
    _record_everything(journal)
    first = journal.snapshot()
    _record_everything(journal)
    assert journal.snapshot() == first
    assert journal.get_step("provision.mailuser:u1")["attempts"] == 2  # type: ignore[index]


def test_snapshot_shape(journal: Journal) -> None:
    """Snapshots hold plain rows in key order without volatile columns; logs only when asked."""
    _record_everything(journal)
    snap = journal.snapshot()
    assert set(snap) == {"items", "steps", "folder_state", "item_map", "settings"}
    assert [i["key"] for i in snap["items"]] == ["g1", "u1"]
    for rows in snap.values():
        for row in rows:
            assert not set(row) & t.VOLATILE_COLUMNS
    logs = journal.snapshot(include_logs=True)
    assert [h["status"] for h in logs["step_history"]] == ["started", "ok"]
    assert logs["events"][0]["message"] == "done"


def test_concurrent_first_opens_of_a_sqlite_file(tmp_path: Path) -> None:
    """Six workers opening a new SQLite journal at once all succeed and find it at head."""
    path = str(tmp_path / "journal.sqlite")
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def worker() -> None:
        try:
            barrier.wait()
            with Journal.open(path) as j:
                assert j.revision() == head_revision()
                j.set_setting("opened", True)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_missing_postgres_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    """Without server binaries the PostgreSQL fixture fails under CI=true and skips otherwise."""
    monkeypatch.setattr(pg, "find_bindir", lambda: None)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="apt-get install postgresql"), pg.session_database():
        pass
