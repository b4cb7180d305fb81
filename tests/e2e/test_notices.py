"""`coexist notify` and status mail over real servers: an aiosmtpd relay (STARTTLS + AUTH)
and the HTTPS sandbox's Graph sendMail; the journal keeps each notice so a re-run sends no
duplicate, plan mode sends nothing, user text is escaped, and no secret reaches --json."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from coexist import commands
from coexist.journal import Journal
from coexist.notices import TEMPLATE_NAMES
from coexist.sandbox import Sandbox
from coexist.settings import load_project
from tests.clients import graph_http
from tests.smtp_server import Relay, smtp_relay

BATCH = "wave1"
HOSTILE = '<script>alert("x")</script> Ann & "Bo"'
OPERATOR = "ops@fabrikam.example"


def batch_project(
    make_project: Callable[..., Path], **overrides: Any
) -> tuple[Path, list[dict[str, Any]]]:
    """A discovered project with a batch of 3 users: the first with markup in its display
    name, the last already cut over (its notices go to its target address)."""
    project = make_project(users=6, **overrides)
    commands.discover(project)
    with Journal.open(load_project(project).journal_url) as j:
        chosen = sorted(j.items(kind="user"), key=lambda u: str(u["source_address"]))[:3]
    csv = project / "wave1.csv"
    csv.write_text("Source Email\n" + "\n".join(str(u["source_address"]) for u in chosen) + "\n")
    commands.batch_import(project, csv, name=BATCH)
    with Journal.open(load_project(project).journal_url) as j:
        j.update_item("user", chosen[0]["key"], name=HOSTILE)
        j.update_item(
            "user",
            chosen[2]["key"],
            phase="cutover",
            target_address=f"moved-{chosen[2]['source_address']}",
        )
        users = [j.get_item("user", str(u["key"])) or {} for u in chosen]
    return project, users


def expected_recipients(users: list[dict[str, Any]]) -> list[str]:
    return sorted(
        [
            str(users[0]["source_address"]),
            str(users[1]["source_address"]),
            str(users[2]["target_address"]),
        ]
    )


@pytest.fixture
def relay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Relay]:
    """An aiosmtpd relay (STARTTLS, AUTH) that COEXIST_SMTP_* point at."""
    with smtp_relay(tmp_path) as r:
        for name, value in r.env().items():
            monkeypatch.setenv(name, value)
        yield r


def notify(cli: Callable[..., Result], project: Path, *args: str) -> dict[str, Any]:
    result = cli("notify", "--project", str(project), "--batch", BATCH, "--json", *args)
    payload: dict[str, Any] = json.loads(result.output)
    payload["exit_code"] = result.exit_code
    return payload


def parts(msg: EmailMessage) -> tuple[str, str]:
    text, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert isinstance(text, EmailMessage) and isinstance(html, EmailMessage), msg
    return str(text.get_content()), str(html.get_content())


def test_every_template_arrives_once_and_plan_sends_nothing(
    make_project: Callable[..., Path],
    relay: Relay,
    cli: Callable[..., Result],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each shipped template and a custom one reach every user of the batch at its working
    mailbox with a text and an HTML part; --plan renders and sends nothing (before mail is
    set up too, naming what is missing); a re-run sends
    no duplicate; --resend sends again; the display name's markup is text in the HTML part;
    the relay's password is in no --json output."""
    project, users = batch_project(make_project)
    custom = tmp_path / "welcome.txt.j2"
    custom.write_text(
        "Subject: Welcome {{ user.name }}\n\nHello {{ user.name }}, {{ user.new_address }}.\n"
    )

    with monkeypatch.context() as m:  # a preview before mail is set up: why it would fail
        m.delenv("COEXIST_SMTP_HOST")
        preview = notify(cli, project, "--template", "before-migration", "--plan")
    assert preview["exit_code"] == 0 and "COEXIST_SMTP_HOST" in preview["notices"][0]["detail"]
    plan = notify(cli, project, "--template", "after-cutover", "--plan")
    assert plan["exit_code"] == 0 and plan["plan"] and relay.received == []
    assert {n["status"] for n in plan["notices"]} == {"planned"}
    assert all("steps connect" in n["text"] or "has moved" in n["text"] for n in plan["notices"])

    outputs = [json.dumps(plan)]
    for template in [*TEMPLATE_NAMES, "custom"]:
        args = ["--template", template, *([str(custom)] if template == "custom" else [])]
        before = len(relay.received)
        first = notify(cli, project, *args, "--date", "2026-12-12")
        assert first["exit_code"] == 0 and first["sent"] == 3, first
        got = relay.received[before:]
        assert sorted(r.rcpt_tos[0] for r in got) == expected_recipients(users), template
        for r in got:
            text, html = parts(r.message)
            assert text.strip() and html.strip(), template
            if r.rcpt_tos[0] == users[0]["source_address"]:
                assert "<script>" not in html and "&lt;script&gt;" in html, template
                assert HOSTILE in text, template  # plain text is not HTML: the name as written
        again = notify(cli, project, *args)
        assert again["exit_code"] == 0 and again["sent"] == 0 and again["already"] == 3
        assert len(relay.received) == before + 3, f"{template} sent twice"
        outputs += [json.dumps(first), json.dumps(again)]

    subjects = {str(r.message["Subject"]) for r in relay.received}
    assert any("12 December 2026" in s for s in subjects), subjects
    assert all("\n" not in s for s in subjects)

    resent = notify(cli, project, "--template", "before-migration", "--resend")
    assert resent["sent"] == 3 and len(relay.received) == 4 * 3 + 3
    outputs.append(json.dumps(resent))
    assert not any(relay.password in o for o in outputs)
    logs = [f.read_text(errors="replace") for f in (project / "logs").iterdir()]
    with Journal.open(load_project(project).journal_url) as j:
        journal = json.dumps(j.snapshot(include_logs=True), default=str)
    assert logs and not any(relay.password in t for t in [*logs, journal])


def test_a_refused_recipient_is_reported_and_sent_on_the_next_run(
    make_project: Callable[..., Path], relay: Relay, cli: Callable[..., Result]
) -> None:
    """The relay refuses one user's address: that user is reported failed with the relay's
    answer, the others get the notice; once the address is accepted a re-run sends only to
    that user."""
    project, users = batch_project(make_project)
    refused = str(users[1]["source_address"])
    relay.refuse.add(refused.lower())
    first = notify(cli, project, "--template", "before-migration")
    assert first["exit_code"] == 1 and first["sent"] == 2
    assert [f["user"] for f in first["failed"]] == [refused]
    assert refused in first["failed"][0]["detail"] and "refused" in first["failed"][0]["detail"]
    relay.refuse.clear()
    second = notify(cli, project, "--template", "before-migration")
    assert second["exit_code"] == 0 and second["sent"] == 1 and second["already"] == 2
    assert [r.rcpt_tos for r in relay.received].count([refused]) == 1


def test_status_mail_at_start_and_end_of_a_prestage(
    make_project: Callable[..., Path], relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[mail] status = "start-end": prestage of the batch mails the operators when its
    passes start and when they end, the end mail with the counts and the report attached;
    a run whose relay is gone warns, journals it and still ends its passes; `retry`'s
    prestage of one user is mailed about too."""
    project, users = batch_project(
        make_project,
        **{"mail.status": "start-end", "mail.operators": [OPERATOR]},
        **{"migration.mover": "graph-import-export"},
    )
    with Journal.open(load_project(project).journal_url) as j:  # all three before cutover
        j.update_item("user", str(users[2]["key"]), phase="discovered", target_address=None)
    commands.provision(project, batch=BATCH)
    result = commands.prestage(project, batch=BATCH)
    mails = [r for r in relay.received if r.rcpt_tos == [OPERATOR]]
    assert len(mails) == 2, [str(m.message["Subject"]) for m in mails]
    start, end = (m.message for m in mails)
    assert "prestage started" in str(start["Subject"]) and "3 users" in str(start["Subject"])
    assert "prestage ended" in str(end["Subject"])
    counts = result["status_counts"]
    assert counts["users"] == 3 and sum(counts["passes"].values()) == 3, counts
    text = str(end.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    assert f"{counts['items']:,} items" in text and "passes this run:" in text
    names = [p.get_filename() for p in end.iter_attachments()]
    assert names == [f"coexist-report-e2e-{BATCH}.html", f"coexist-report-e2e-{BATCH}.csv"]
    assert result["status_mail"]["sent"] is True

    # The relay gone: the pass still runs to its end; the failure is a journaled warning.
    monkeypatch.setenv("COEXIST_SMTP_PORT", "1")  # nothing listens there
    again = commands.prestage(project, batch=BATCH)
    assert again["status_mail"]["sent"] is False and "smtp" in again["status_mail"]["error"].lower()
    with Journal.open(load_project(project).journal_url) as j:
        warnings = [e["message"] for e in j.events(level="warning")]
    assert any("status mail (prestage start) not sent" in w for w in warnings), warnings
    assert not any(relay.password in w for w in warnings)

    # retry runs prestage for its users: their pass is mailed about too.
    monkeypatch.setenv("COEXIST_SMTP_PORT", str(relay.port))
    with Journal.open(load_project(project).journal_url) as j:
        j.update_item("user", str(users[0]["key"]), state="failed")
    before = len(relay.received)
    retried = commands.retry(project)
    assert retried["retried"] == {"prestage": 1}, retried
    subjects = [str(r.message["Subject"]) for r in relay.received[before:]]
    assert len(subjects) == 2 and all("1 users" in s for s in subjects), subjects


def test_status_mail_is_off_by_default_and_planned_in_plan_mode(
    make_project: Callable[..., Path], relay: Relay
) -> None:
    """Without [mail] status nothing is mailed; with it, --plan lists the mail as a planned
    write and sends nothing."""
    project, _users = batch_project(make_project)
    commands.provision(project, batch=BATCH)
    quiet = commands.prestage(project, batch=BATCH)
    assert relay.received == [] and "status_mail" not in quiet
    toml = project / "project.toml"
    text = toml.read_text()
    assert text.count('status = "none"') == 1 and text.count("operators = []") == 1
    text = text.replace('status = "none"', 'status = "end"')
    toml.write_text(text.replace("operators = []", f'operators = ["{OPERATOR}"]'))
    planned = commands.prestage(project, batch=BATCH, plan=True)
    assert relay.received == []
    assert any(w["system"] == "mail" and OPERATOR in w["operation"] for w in planned["writes"])


def test_notices_through_graph_sendmail_arrive_in_the_users_inbox(
    make_project: Callable[..., Path], sandbox: Sandbox, cli: Callable[..., Result]
) -> None:
    """[mail] transport = "graph": the target's service mailbox sends each notice with
    sendMail on the HTTPS sandbox; it arrives in the user's Inbox (read back with Graph),
    once, HTML escaped."""
    service = sorted(
        u.user_principal_name
        for u in sandbox.world.target.users.values()
        if u.recipient_type_details == "UserMailbox"
    )[0]
    project, users = batch_project(
        make_project, **{"mail.transport": "graph", "mail.sender": service}
    )
    first = notify(cli, project, "--template", "after-cutover")
    assert first["exit_code"] == 0 and first["sent"] == 3, first
    assert all("graph sendMail as" in n["detail"] for n in first["notices"])
    again = notify(cli, project, "--template", "after-cutover")
    assert again["sent"] == 0 and again["already"] == 3
    with graph_http(sandbox.connection, "source") as http:
        for u in users[:2]:
            r = http.get(f"users/{u['key']}/mailFolders/inbox/messages", params={"$top": 100})
            assert r.status_code == 200, r.text
            found = [
                m
                for m in r.json()["value"]
                if m["subject"] == "Your mailbox has moved to Microsoft 365"
            ]
            assert len(found) == 1, [m["subject"] for m in r.json()["value"]]
            body = found[0]["body"]
            assert body["contentType"].lower() == "html"
            if u["key"] == users[0]["key"]:
                assert "<script>" not in body["content"] and "&lt;script&gt;" in body["content"]


TELL = """\
name: tell
description: a notice to each user, then one to the operators
steps:
  - id: hello
    kind: notify
    to: users
    subject: "Hello {{ user.name }}"
    template: "Hi {{ user.name }}, batch {{ batch.name }} moves soon."
  - id: ops
    kind: notify
    to: operator
    subject: "batch {{ batch.name }} told"
    template: "{{ batch.size }} users told"
"""


def test_a_playbook_notify_step_sends_once_and_plans_without_sending(
    make_project: Callable[..., Path], relay: Relay
) -> None:
    """A playbook's notify steps send through the same journaled path as `coexist notify`:
    planned, nothing leaves; run, each user gets its notice at its working mailbox (the
    name's markup escaped in the HTML part) and the operators theirs; run again, nothing
    is sent twice."""
    from coexist import playbook

    project, users = batch_project(make_project, **{"mail.operators": [OPERATOR]})
    file = project / "tell.yaml"
    file.write_text(TELL)
    planned = playbook.run_playbook(project, str(file), batch=BATCH, plan=True)
    assert planned["ok"] and relay.received == []
    done = playbook.run_playbook(project, str(file), batch=BATCH, yes=True)
    assert done["ok"], done
    to_users = sorted(r.rcpt_tos[0] for r in relay.received if r.rcpt_tos != [OPERATOR])
    assert to_users == expected_recipients(users)
    assert [r.rcpt_tos for r in relay.received].count([OPERATOR]) == 1
    hostile = next(r for r in relay.received if r.rcpt_tos == [users[0]["source_address"]])
    _text, html = parts(hostile.message)
    assert "<script>" not in html and "&lt;script&gt;" in html
    again = playbook.run_playbook(project, str(file), batch=BATCH, yes=True)
    assert again["ok"] and {s["status"] for s in again["steps"]} == {"skipped"}
    assert len(relay.received) == 4


def test_status_mail_through_graph_sendmail_carries_the_report(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """[mail] transport = "graph" and status = "end": the end-of-prestage mail leaves by
    sendMail from the target's service mailbox and arrives in the operator's Inbox with the
    report's HTML and CSV as fileAttachments."""
    project, _users = batch_project(
        make_project, **{"mail.transport": "graph", "mail.status": "end"}
    )
    (service, _), (operator, operator_id) = sorted(
        (u.user_principal_name, u.id)
        for u in sandbox.world.target.users.values()
        if u.recipient_type_details == "UserMailbox"
    )[:2]
    toml = project / "project.toml"
    text = toml.read_text()
    assert text.count('sender = ""') == 1 and text.count("operators = []") == 1
    text = text.replace('sender = ""', f'sender = "{service}"')
    toml.write_text(text.replace("operators = []", f'operators = ["{operator}"]'))
    commands.provision(project, batch=BATCH)
    result = commands.prestage(project, batch=BATCH)
    assert result["status_mail"]["sent"] is True, result["status_mail"]
    with graph_http(sandbox.connection, "target") as http:
        r = http.get(f"users/{operator_id}/mailFolders/inbox/messages", params={"$top": 100})
        assert r.status_code == 200, r.text
        [mail] = [m for m in r.json()["value"] if m["subject"].startswith("coexist prestage ended")]
        assert mail["hasAttachments"] is True
        r = http.get(f"users/{operator_id}/messages/{mail['id']}/attachments")
        names = sorted(a["name"] for a in r.json()["value"])
    assert names == [f"coexist-report-e2e-{BATCH}.csv", f"coexist-report-e2e-{BATCH}.html"]
