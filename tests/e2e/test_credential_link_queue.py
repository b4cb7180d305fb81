"""Issue 15's "the user's pending pass is queued (run now if the project runs a worker)" with
issue 16's workers, end to end: an IMAP -> IMAP project on the session's Dovecot, its journal
the session's PostgreSQL, its passes run by `coexist worker` processes (`[engine] executor =
"queue"`). The user's link goes out through a real SMTP relay; the user's right password,
posted to the page over HTTPS, is checked against Dovecot and stored, and the page queues the
user's prestage at once; a worker takes the job and copies the mailbox. The test runs no
command after the link is sent (no `coexist retry`, no `prestage`): only the page and the
worker act."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coexist import commands, credentials
from coexist.journal import Journal
from coexist.settings import load_project
from tests import pg
from tests.cli_env import assert_no_unawaited_coroutine
from tests.dovecot import DovecotServer
from tests.e2e import credlink_scene as cl
from tests.e2e.imap_scene import FOLDERS, run_json
from tests.e2e.workers_scene import Workers

OLD_MESSAGES = sum(old for old, _new in FOLDERS.values())  # what a prestage copies


def _user(project: Path, address: str) -> dict[str, Any]:
    with Journal.open(load_project(project).journal_url) as j:
        return next(i for i in j.items(kind="user") if i["source_address"] == address)


@pytest.mark.timeout(1800)
def test_credentials_given_on_the_page_queue_the_users_prestage_and_a_worker_runs_it(
    dovecot: DovecotServer, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queue-mode project on PostgreSQL with one worker: batch import without source
    passwords -> request -> the link arrives at the relay -> the right login and password
    posted to the page ("Thank you") -> the worker runs the user's queued prestage (a run
    naming it) and the mailbox's older mail is copied, the user no longer waiting; no
    command run by the test in between; the user who gave nothing still waits, unqueued."""
    pg.reset_database(pg_url)
    scene = cl.imap_link_scene(
        dovecot,
        tmp_path,
        extra_toml=f"\n[project]\njournal = {json.dumps(pg_url)}\n"
        + '\n[engine]\nexecutor = "queue"\n',
    )
    first, second = scene.users
    p = str(scene.project)
    # The workers inherit this environment: the vault key opens the user's password.
    with cl.relay_in_env(tmp_path, monkeypatch) as relay:
        run_json("batch", "import", "--project", p, str(cl.without_passwords(scene)))
        sent = run_json("credentials", "request", "--project", p, "--batch", "wave1")
        assert len(sent["sent"]) == 2 and len(relay.received) == 2, sent
        url = cl.links_in(relay.received)[first.address]

    key = str(_user(scene.project, first.address)["key"])
    workers = Workers(scene.project, [key])
    workers.start("w1")
    try:
        # Served without --run: in a queue-mode project the page queues the pass anyway.
        with cl.page(scene.project, run=False), cl.client(scene.project) as http:
            form = http.get(url)
            assert form.status_code == 200 and first.address in form.text, form.text
            csrf = form.text.split('name="csrf" value="')[1].split('"')[0]
            http.cookies.set("__Host-coexist-csrf", form.cookies["__Host-coexist-csrf"])
            answer = http.post(
                url,
                data={"csrf": csrf, "login": first.source.login, "password": first.source.password},
            )
            assert answer.status_code == 200 and "Thank you" in answer.text, answer.text
        # Nothing but the worker from here on: the pass ends prestaged.
        workers.until(
            "the worker ran the user's queued prestage", lambda: workers.finished("prestaged") == 1
        )
        workers.until("nothing held or queued", lambda: workers.who_runs() == {})
    finally:
        codes = workers.stop()
    assert codes == {"w1": 0}, (codes, workers.tail())
    assert_no_unawaited_coroutine(workers.log.read_text(), "coexist worker")

    with workers.journal() as j:
        ran = [r for r in j.runs() if (r.get("args") or {}).get("worker")]
    assert [(r["command"], r["args"]["worker"], r["status"]) for r in ran] == [
        ("prestage", "w1", "ok")
    ], ran
    assert ran[0]["args"]["users"] == [key], ran  # the job names the user by its key

    user = _user(scene.project, first.address)
    detail = user["detail"] or {}
    assert user["state"] == "ok" and user["phase"] == "prestaged", user
    assert not detail.get("waiting_for") and not detail.get("queued_pass"), detail
    rows = {r["user"]: r for r in commands.status(scene.project)["users"]}
    assert rows[first.address]["state"] != "waiting" and not rows[first.address]["waiting_for"]

    # The older mail (prestage's 90 days), each message once, in its mapped folder.
    copied = scene.fingerprints(first.target)
    assert max(copied.values()) == 1 and sum(copied.values()) == OLD_MESSAGES, copied
    assert not copied - scene.fingerprints(first.source, mapped=True), copied

    # The other user gave nothing: still waiting for its end user, nothing copied.
    assert rows[second.address]["state"] == "waiting"
    assert rows[second.address]["waiting_for"].startswith(credentials.WAITING_FOR_END_USER)
    assert scene.count(second.target) == 0
    assert cl.grep_everything(first.source.password, scene.project, []) == []
