"""End users give their source credentials through a one-time link (issue 15), end to end:
a real SMTP relay (aiosmtpd, STARTTLS + AUTH), the page served over HTTPS by uvicorn, Debian's
headless Chromium typing into it, and the source a real Dovecot (IMAP) or the sandbox's
Exchange 2016 (EWS, each user's own NTLM login). The password typed in the browser ends in
the vault and nowhere else."""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from coexist import commands, credentials, credlink
from coexist.ewsdemo import SCENARIOS, Run, _holdings, _pairs, _settings
from coexist.journal import Journal
from coexist.sandbox import Sandbox, mailseed
from coexist.sandbox.ews import add_account
from coexist.settings import load_project
from coexist.vault import ENV_KEY, Vault
from tests.dovecot import DovecotServer
from tests.e2e import credlink_scene as cl
from tests.e2e.imap_scene import KEY, run
from tests.smtp_server import smtp_relay


def _json(*args: str, outputs: list[str]) -> dict[str, object]:
    r = run(*args, "--json")
    outputs.append(r.output)
    assert r.exit_code == 0, r.output
    out: dict[str, object] = json.loads(r.output)
    return out


def _user(project: Path, address: str) -> dict[str, object]:
    with Journal.open(load_project(project).journal_url) as j:
        item = next(i for i in j.items(kind="user") if i["source_address"] == address)
        return item


def _finished(project: Path, kind: str) -> bool:
    with Journal.open(load_project(project).journal_url) as j:
        return any(x["kind"] == kind and x["finished_at"] for x in j.passes())


def _events(project: Path) -> list[dict[str, object]]:
    with Journal.open(load_project(project).journal_url) as j:
        return j.events()


def test_imap_user_gives_credentials_through_the_link_and_the_pass_copies_the_mailbox(
    dovecot: DovecotServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Batch import without source passwords -> request (plan sends nothing; re-run sends
    no second link) -> the mail arrives -> Chromium opens the link: a wrong password is
    said (role=alert) and nothing is stored; the right one is stored in the vault, the user
    leaves `waiting for end user` and its prestage runs in the page's process and copies
    the mailbox. The used, an expired (mailed with the clock 8 days back, or read by a page
    whose clock is 8 days on), a revoked and a tampered link are refused; too many
    wrong passwords lock a link (journal warning, status line); a burst gets 429; the
    password is nowhere but the vault."""
    caplog.set_level(logging.DEBUG)
    key = KEY  # the one imap_scene's `run` gives the CLI
    scene = cl.imap_link_scene(dovecot, tmp_path)
    first, second = scene.users
    p = str(scene.project)
    outputs: list[str] = []
    with cl.relay_in_env(tmp_path, monkeypatch, key) as relay:
        # No source passwords (the column blank on every row): the vault has none.
        csv = cl.without_passwords(scene)
        _json("batch", "import", "--project", p, str(csv), outputs=outputs)

        plan = _json("credentials", "request", "--project", p, "--batch", "wave1", "--plan",
                     outputs=outputs)  # fmt: skip
        assert sorted(plan["would_send"]) == sorted(u.address for u in scene.users)  # type: ignore[arg-type]
        assert relay.received == []
        mails = plan["messages"]  # type: ignore[index]
        assert all("Fabrikam IT" in m["subject"] and "(made when sent)" in m["text"] for m in mails)
        shown = run("credentials", "request", "--project", p, "--batch", "wave1", "--plan")
        assert shown.exit_code == 0 and f"would send a link to {first.address}" in shown.output

        sent = _json("credentials", "request", "--project", p, "--batch", "wave1", outputs=outputs)
        assert len(sent["sent"]) == 2 and len(relay.received) == 2  # type: ignore[arg-type]
        links = cl.links_in(relay.received)
        mail = relay.received[0].message
        assert "Fabrikam IT" in str(mail["Subject"]) and relay.received[0].login == relay.user

        again = _json("credentials", "request", "--project", p, "--batch", "wave1",
                      outputs=outputs)  # fmt: skip
        assert again["sent"] == [] and len(relay.received) == 2, again

        status = _json("status", "--project", p, outputs=outputs)
        rows = {r["user"]: r for r in status["users"]}  # type: ignore[attr-defined]
        for u in scene.users:
            assert rows[u.address]["state"] == "waiting"
            assert rows[u.address]["waiting_for"].startswith(credentials.WAITING_FOR_END_USER)
            assert rows[u.address]["waiting_since"] is not None
        # prestage leaves them alone while they wait for their end users.
        skipped = _json("prestage", "--project", p, "--all", outputs=outputs)
        assert len(skipped["skipped"]) == 2 and scene.count(first.target) == 0  # type: ignore[arg-type]

        url = links[first.address]
        with cl.page(scene.project), cl.client(scene.project) as http:
            with cl.chromium(scene.project, tmp_path / "chromium") as driver:
                driver.get(url)
                assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
                assert len(driver.find_elements(By.TAG_NAME, "h1")) == 1
                assert first.address in driver.page_source and "Fabrikam IT" in driver.page_source
                label = driver.find_element(By.CSS_SELECTOR, "label[for=password]")
                assert label.text == "Password"

                cl.submit(driver, first.source.login, "not-" + first.source.password)
                alert = driver.find_element(By.CSS_SELECTOR, "[role=alert]")
                assert "not right" in alert.text and "Nothing was stored" in alert.text
                assert first.source.password not in driver.page_source
                vault = Vault.open(scene.project)
                assert vault.get(first.address, "source") is None

                cl.submit(driver, first.source.login, first.source.password)
                assert "Thank you" in driver.find_element(By.TAG_NAME, "h1").text
                assert cl.blocked_requests(driver) == []
                held = Vault.open(scene.project).get(first.address, "source")
                assert held is not None and held.password == first.source.password

                # The page runs the user's prestage: the mailbox's older mail is copied.
                cl.wait_for(
                    "the queued prestage of the first user",
                    lambda: any(
                        x["kind"] == "prestage" and x["finished_at"] and x["status"] == "ok"
                        for x in scene.passes()
                        if x["item_key"] == first.address
                    ),
                )
                driver.get(url)  # used: refused
                assert "already been used" in driver.page_source

            user = _user(scene.project, first.address)
            assert user["state"] == "ok" and user["phase"] == "prestaged", user
            assert scene.count(first.target) > 0

            used = http.get(url)
            assert used.status_code == 410
            headers = used.headers
            assert headers["content-security-policy"].startswith("default-src 'none'")
            assert "max-age" in headers["strict-transport-security"]

            # A tampered token: another signature on the second user's link.
            other = links[second.address]
            tampered = other[:-2] + ("AA" if not other.endswith("AA") else "BB")
            assert http.get(tampered).status_code == 404

            # Wrong passwords up to [credential_link] attempts (3): the link locks.
            for n in range(3):
                form = http.get(other)
                assert form.status_code == 200, form.text
                csrf = form.text.split('name="csrf" value="')[1].split('"')[0]
                http.cookies.set("__Host-coexist-csrf", form.cookies["__Host-coexist-csrf"])
                answer = http.post(
                    other,
                    data={"csrf": csrf, "login": second.source.login, "password": f"wrong{n}"},
                )
                assert answer.status_code == (400 if n < 2 else 403), answer.text
            assert "locked" in http.get(other).text
            status = _json("status", "--project", p, outputs=outputs)
            row = {r["user"]: r for r in status["users"]}[second.address]  # type: ignore[attr-defined]
            assert row["state"] == "waiting" and "locked after 3 wrong" in row["waiting_for"]
            assert any(
                e["level"] == "warning" and "locked" in str(e["message"])
                for e in _events(scene.project)
            )
            # A POST without the CSRF cookie is refused before anything is checked.
            http.cookies.clear()
            no_csrf = http.post(links[second.address], data={"login": "x", "password": "y"})
            assert no_csrf.status_code == 403

        # A link mailed with the clock set 8 days back has expired now.
        monkeypatch.setenv(ENV_KEY, key)
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=8)
        old = credlink.request(scene.project, users=[second.address], resend=True, now=lambda: past)
        assert len(old["sent"]) == 1
        expired = cl.links_in(relay.received[-1:])[second.address]
        # A fresh link, then revoked.
        _json("credentials", "request", "--project", p, "--users", second.address, "--resend",
              outputs=outputs)  # fmt: skip
        revoked = cl.links_in(relay.received[-1:])[second.address]
        gone = _json("credentials", "revoke", "--project", p, "--user", second.address,
                     outputs=outputs)  # fmt: skip
        assert len(gone["revoked"]) == 1  # type: ignore[arg-type]
        row = _user(scene.project, second.address)
        assert str((row["detail"] or {})["waiting_for"]).startswith(credentials.WAITING_FOR)  # type: ignore[index]
        _json("credentials", "request", "--project", p, "--users", second.address, "--resend",
              outputs=outputs)  # fmt: skip
        fresh = cl.links_in(relay.received[-1:])[second.address]
        with cl.page(scene.project), cl.client(scene.project) as http:
            said = http.get(expired)
            assert said.status_code == 410 and "expired" in said.text
            said = http.get(revoked)
            assert said.status_code == 410 and "withdrawn" in said.text
            # A burst on one link: the page answers 429 before the minute's allowance ends.
            codes = [http.get(fresh).status_code for _ in range(25)]
            assert codes[0] == 200 and 429 in codes, codes

        # The page's own clock, 8 days on: a link it would take today has expired then.
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=8)
        with cl.page(scene.project, lambda: later), cl.client(scene.project) as http:
            said = http.get(fresh)
            assert said.status_code == 410 and "expired" in said.text

        # Served without --run: the right password queues the user's pass for `retry`.
        with cl.page(scene.project, run=False), cl.client(scene.project) as http:
            form = http.get(fresh)
            csrf = form.text.split('name="csrf" value="')[1].split('"')[0]
            http.cookies.set("__Host-coexist-csrf", form.cookies["__Host-coexist-csrf"])
            answer = http.post(
                fresh,
                data={
                    "csrf": csrf,
                    "login": second.source.login,
                    "password": second.source.password,
                },
            )
            assert answer.status_code == 200 and "Thank you" in answer.text, answer.text
        assert _user(scene.project, second.address)["state"] == "ok"
        assert scene.count(second.target) == 0  # queued, not run
        retried = _json("retry", "--project", p, outputs=outputs)
        assert retried["retried"] == {"prestage": 1}, retried
        assert scene.count(second.target) > 0
        assert not (_user(scene.project, second.address)["detail"] or {}).get("queued_pass")  # type: ignore[union-attr]

        outputs.append(run("report", "--project", p, "--json").output)
        outputs.append(json.dumps(_events(scene.project), default=str))  # the journal's events
        html = tmp_path / "report.html"
        assert run("report", "--project", p, "--html", str(html)).exit_code == 0
        listed = _json("credentials", "list", "--project", p, outputs=outputs)
        # The links' key is no user's: the list shows the users (their target passwords).
        shown = sorted(u["user"] for u in listed["users"])  # type: ignore[attr-defined]
        assert shown == sorted(u.address for u in scene.users), shown
        # Every log record of this process (the page, the pass, the libraries), but the
        # browser driver's own (selenium and its urllib3 carry the keys the test typed).
        records = [r for r in caplog.records if not r.name.startswith(("selenium", "urllib3"))]
        outputs += [r.getMessage() for r in records]
        # The test's own HTTPS client logs each URL it asks for (httpx, INFO): links whole.
        not_the_client = [r.getMessage() for r in records if r.name != "httpx"]
        records_text = {r.getMessage() for r in records}
        secret = first.source.password
        access = (scene.project / "logs" / "credential-link-access.log").read_text()
        assert f"/l/{url.rsplit('/', 1)[1].split('.')[0]}" in access
        assert url.rsplit(".", 1)[1] not in access  # the signature never
        # Nor anywhere else coexist writes: the journal holds the token's hash only.
        signatures = [link.rsplit(".", 1)[1] for link in (url, other, fresh, expired)]
        for signature in signatures:
            texts = [o for o in outputs if o not in records_text] + not_the_client
            assert cl.grep_everything(signature, scene.project, texts, [html]) == []
        found = cl.grep_everything(secret, scene.project, outputs, [html])
        assert found == [], [
            outputs[int(f.split()[1])][:300] for f in found if f.startswith("output")
        ]


def test_ews_user_gives_own_credentials_and_its_own_login_opens_the_mailbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exchange 2016 -> 2019 with `[source.ews] access = "own"` (no source admin): the link,
    a wrong then a right password in Chromium; the right one is checked by the user's own
    NTLM login opening its own mailbox, stored, and the queued prestage copies that mailbox
    through the same login; nothing of it outside the vault."""
    key = KEY  # the one imap_scene's `run` gives the CLI
    project = tmp_path / "project"
    project.mkdir()
    kinds = SCENARIOS["hosted-exchange"]
    port = cl.free_port()
    outputs: list[str] = []
    with Sandbox(tmp_path / "sandbox", seed=3, users=10, profile="fast", kinds=kinds) as sb:
        demo = Run(project, sb, "hosted-exchange", _pairs(sb, 1), lambda _m: None, None)
        pair = demo.pairs[0]
        mailseed.seed_mailbox(sb.mail, "source", pair.source_id, seed=3, items=12)
        # The target's migration account (FullAccess); the source has no admin at all.
        target_password = secrets.token_urlsafe(18)
        admin = add_account(sb.world, "target", "migration", target_password,
                            full_access=[pair.target])  # fmt: skip
        settings = _settings(demo, kinds, {"source": ("", ""), "target": (admin.upn, "")})
        settings["source.ews.access"] = "own"
        settings.pop("source.ews.admin")
        settings |= {f"credential_link.{k}": v for k, v in cl.link_values(port).items()}
        commands.init(project, overrides=settings)
        # The user's own account: its mailbox and nothing else.
        own_password = "Own-" + secrets.token_urlsafe(15)
        local = pair.source.split("@")[0]
        account = add_account(sb.world, "source", local, own_password, mailbox=pair.source)
        with smtp_relay(tmp_path) as relay:
            for name, value in {**relay.env(), ENV_KEY: key}.items():
                monkeypatch.setenv(name, value)
            credentials.credentials_set_master(project, target_password, side="target")
            csv = tmp_path / "users.csv"
            csv.write_text(
                "Source Email,Source Login Name,Source Password,Destination Email,Batch\r\n"
                f"{pair.source},{account.upn},,{pair.target},wave\r\n"
            )
            p = str(project)
            _json("batch", "import", "--project", p, str(csv), outputs=outputs)
            # verify-credentials signs in as each user too: no password of its own yet.
            checked = run("verify-credentials", "--project", p, "--batch", "wave", "--json")
            outputs.append(checked.output)
            assert json.loads(checked.output)["users"][0]["source"]["result"] == "no credentials"
            # preflight has no admin to try on the source: it points at verify-credentials.
            pre = run("preflight", "--project", p, "--batch", "wave", "--json")
            outputs.append(pre.output)
            said = {c["check"]: c for c in json.loads(pre.output)["checks"]}
            assert said["source credentials"]["status"] == "ok", said
            assert "verify-credentials" in said["source credentials"]["fix"]
            assert said["source concurrency"]["detail"].startswith("own:")
            _json("credentials", "request", "--project", p, "--batch", "wave", outputs=outputs)
            url = cl.links_in(relay.received)[pair.source]
            with cl.page(project), cl.chromium(project, tmp_path / "chromium") as driver:
                driver.get(url)
                cl.submit(driver, account.upn, "wrong-" + own_password)
                alert = driver.find_element(By.CSS_SELECTOR, "[role=alert]")
                assert "not right" in alert.text
                assert Vault.open(project).get(pair.source.lower(), "source") is None
                cl.submit(driver, account.upn, own_password)
                assert "Thank you" in driver.find_element(By.TAG_NAME, "h1").text
                cl.wait_for("the queued prestage", lambda: _finished(project, "prestage"))
            user = _user(project, pair.source)
            assert user["state"] == "ok", user
            checked = _json(
                "verify-credentials", "--project", p, "--batch", "wave", outputs=outputs
            )
            assert checked["users"][0]["source"]["result"] == "ok", checked  # type: ignore[index]
            copied = _holdings(sb.mail, "target", pair.target_id)
            assert copied, "the prestage copied nothing"
            outputs.append(run("report", "--project", p, "--json").output)
            assert cl.grep_everything(own_password, project, outputs) == []


def test_the_link_goes_out_through_graph_sendmail_from_a_service_mailbox(
    dovecot: DovecotServer, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`[mail] transport = "graph"`: request sends the link as the target tenant's service
    mailbox (Graph sendMail on the sandbox); the mail lands in the user's mailbox, and its
    link opens the page, which takes the user's IMAP password (Dovecot)."""
    sandbox.write_connection()
    with sandbox.world.lock:
        boxes = {
            side: sorted(
                (u for u in sandbox.world.tenants[side].users.values()
                 if u.recipient_type_details == "UserMailbox" and u.primary_smtp),
                key=lambda u: u.primary_smtp,
            )
            for side in ("source", "target")
        }  # fmt: skip
    mailbox, service, destination = boxes["source"][0], boxes["target"][0], boxes["target"][1]
    imap = dovecot.new_user("graphlink")
    project = tmp_path / "project"
    project.mkdir()
    port = cl.free_port()
    (project / "project.toml").write_text(
        f'[source]\nkind = "imap"\n\n[source.imap]\nhost = "{dovecot.host}"\n'
        f'port = {dovecot.tls_port}\nca_file = "{dovecot.ca_file}"\n\n'
        f'[target]\nsandbox_connection = "{sandbox.state_dir / "connection.json"}"\n\n'
        '[domains]\ndestination_domain = "example.net"\n\n'
        f'[mail]\ntransport = "graph"\nsender = "{service.primary_smtp}"\n' + cl.link_settings(port)
    )
    csv = tmp_path / "users.csv"
    csv.write_text(
        "Source Email,Source Login Name,Source Password,Destination Email\r\n"
        f"{mailbox.primary_smtp},{imap.login},,{destination.primary_smtp}\r\n"
    )
    monkeypatch.setenv(ENV_KEY, KEY)
    p = str(project)
    outputs: list[str] = []
    _json("batch", "import", "--project", p, str(csv), "--name", "wave", outputs=outputs)
    sent = _json("credentials", "request", "--project", p, "--batch", "wave", outputs=outputs)
    assert len(sent["sent"]) == 1, sent  # type: ignore[arg-type]
    landed = [
        m for m in sandbox.mail.iter_messages("source", mailbox.id) if "Fabrikam IT" in m.subject
    ]
    assert len(landed) == 1 and landed[0].from_ is not None
    assert landed[0].from_.address.lower() == service.primary_smtp.lower()
    body = message_from_bytes(sandbox.mail.mime(landed[0].id), policy=policy.default)
    assert isinstance(body, EmailMessage)
    text = body.get_body(("plain", "html"))
    assert text is not None
    found = cl.LINK.search(text.get_content())
    assert found, text.get_content()
    url = found.group(0)
    with cl.page(project, run=False), cl.client(project) as http:
        form = http.get(url)
        assert form.status_code == 200 and mailbox.primary_smtp in form.text
        csrf = form.text.split('name="csrf" value="')[1].split('"')[0]
        http.cookies.set("__Host-coexist-csrf", form.cookies["__Host-coexist-csrf"])
        answer = http.post(url, data={"csrf": csrf, "login": imap.login, "password": imap.password})
        assert answer.status_code == 200 and "Thank you" in answer.text, answer.text
    held = Vault.open(project).get(mailbox.primary_smtp.lower(), "source")
    assert held is not None and held.login == imap.login
    assert cl.grep_everything(imap.password, project, outputs) == []
