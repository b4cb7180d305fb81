"""A credential-link pass (an end user typed credentials; the page runs the user's prestage
with `--run`) for a user of a batch a playbook run holds: the page's pass is refused for the
whole run, like any command that is not one of the run's steps; the pass stays queued
(`queued_pass`), a warning on the user says why and that the runbook's next prestage runs
it; the runbook's prestage step then runs it and copies the mailbox. Real Dovecot, the page
over HTTPS, Debian's headless Chromium, a real SMTP relay (tests/e2e/credlink_scene.py)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from coexist import commands, credlink, playbook
from coexist.journal import Journal
from coexist.settings import load_project
from coexist.vault import Vault
from tests.dovecot import DovecotServer
from tests.e2e import credlink_scene as cl
from tests.e2e.imap_scene import KEY
from tests.e2e.test_playbooks_m365 import checklist_then_prestage


def user(project: Path, address: str) -> dict[str, Any]:
    with Journal.open(load_project(project).journal_url) as j:
        (item,) = [u for u in j.items(kind="user") if u["source_address"] == address]
        return item


def warnings(project: Path, key: str) -> list[dict[str, Any]]:
    with Journal.open(load_project(project).journal_url) as j:
        return j.events(item_key=key, level="warning")


def test_a_link_pass_for_a_held_batch_waits_for_the_runbooks_prestage(
    dovecot: DovecotServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a run on wave1 waits at its checklist, the first user gives its credentials on
    the page: they are stored, the page's prestage of the user is refused (no pass, nothing
    copied), `queued_pass` stays, and a warning on the user names the run (PID, host) and
    says the runbook's next prestage runs it. The run's prestage step then runs it: the
    mailbox is copied and `queued_pass` cleared."""
    scene = cl.imap_link_scene(dovecot, tmp_path)
    first, _second = scene.users
    project = scene.project
    book = checklist_then_prestage(tmp_path, "linkwait")
    seen: dict[str, Any] = {}
    with cl.relay_in_env(tmp_path, monkeypatch, KEY) as relay:
        commands.batch_import(project, cl.without_passwords(scene))
        assert len(credlink.request(project, batch="wave1")["sent"]) == 2
        links = cl.links_in(relay.received)

        def meanwhile(_question: str) -> bool:
            # The page runs in a thread of its own: not one of the run's steps.
            with cl.page(project), cl.chromium(project, tmp_path / "chromium") as driver:
                driver.get(links[first.address])
                cl.submit(driver, first.source.login, first.source.password)
                seen["answer"] = driver.title + " " + driver.page_source
            # Leaving `page` waited for its background pass to end.
            seen["item"] = user(project, first.address)
            seen["warnings"] = warnings(project, str(seen["item"]["key"]))
            seen["copied"] = scene.count(first.target)
            seen["passes"] = [p for p in scene.passes() if p["item_key"] == seen["item"]["key"]]
            return True

        ran = playbook.run_playbook(project, str(book), batch="wave1", confirm=meanwhile)
    assert "Thank you" in seen["answer"]
    held = Vault.open(project).get(first.address, "source")
    assert held is not None and held.password == first.source.password
    assert (seen["item"]["detail"] or {}).get("queued_pass") == "prestage", seen["item"]
    assert seen["copied"] == 0 and seen["passes"] == [], seen["passes"]
    (warning,) = seen["warnings"]
    me = f"PID {os.getpid()} on {socket.gethostname()}"
    text = warning["message"]
    assert f"credential link: the prestage pass of {first.address} waits: " in text, text
    assert f"a runbook is in progress: playbook run linkwait --batch wave1 ({me}" in text, text
    assert "the runbook's next prestage, cutover or retry step" in warning["data"]["next"]
    assert warning["data"]["reason"] == "playbook-run", warning
    # The runbook's own prestage step ran the queued pass.
    assert ran["ok"], ran
    after = user(project, first.address)
    assert not (after["detail"] or {}).get("queued_pass"), after
    assert scene.count(first.target) > 0
