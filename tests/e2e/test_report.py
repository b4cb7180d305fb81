"""`coexist report` over a demo project: HTML in a real headless Chromium (Debian's chromium
and chromedriver, driven by selenium; nothing downloaded), JSON and CSV with the same numbers,
and `--email` through a real SMTP server (aiosmtpd) over STARTTLS and implicit TLS with AUTH.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from coexist import commands
from coexist.commands import DEMO_BATCH
from coexist.journal import Journal
from coexist.migrate.summary import human_bytes
from coexist.report import CSP, PASS_ORDER
from tests.chromium_log import network_requests
from tests.dovecot import missing
from tests.smtp_server import smtp_relay

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# The demo's smallest useful batch: seed 1 with 6 users puts 3 mailboxes in scope; 10 items
# each keep the fixture to a few seconds.
DEMO_USERS, DEMO_ITEMS = 6, 10
HOSTILE_NAME = '<img src=x onerror="document.title=1">Ava & "Bo"'
HOSTILE_SUBJECT = "<script>document.title='pwned'</script>"
HOSTILE_ERROR = "</td></tr><script>fetch('https://evil.example/')</script>"
SKIP_REASON = "larger than the target's 150 MB message limit"


@pytest.fixture(scope="module")
def demo_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo project taken through prestage and cutover (sandbox Microsoft 365)."""
    directory = tmp_path_factory.mktemp("report-demo")
    result = commands.m365_demo(directory, users=DEMO_USERS, items=DEMO_ITEMS)
    assert result["ok"], json.dumps(result.get("status"), default=str)[:2000]
    return directory


@pytest.fixture(scope="module")
def hostile_project(demo_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the demo whose journal holds markup where people's text goes: a display
    name, a skipped item's subject, an error; one user moved to a second batch, one taken
    out of the demo's batch."""
    directory = tmp_path_factory.mktemp("report-hostile") / "project"
    shutil.copytree(demo_project, directory, ignore=shutil.ignore_patterns("sandbox"))
    with Journal.open(f"sqlite:///{directory / 'journal.db'}") as journal:
        users = sorted(journal.items(kind="user"), key=lambda u: str(u["source_address"]))
        first, second = users[0], users[1]
        journal.update_item("user", first["key"], name=HOSTILE_NAME, batch="<b>wave 2</b>")
        # The demo puts everyone in its batch; one user without a batch shows "(no batch)".
        journal.update_item("user", second["key"], batch=None)
        recon = dict((first.get("detail") or {}).get("reconciliation") or {})
        recon["skipped_items"] = [
            {"folder": "Inbox", "subject": HOSTILE_SUBJECT, "reason": SKIP_REASON},
            {"folder": "Sent Items", "subject": "big.iso", "reason": SKIP_REASON},
        ]
        journal.merge_item("user", first["key"], detail={"reconciliation": recon})
        run = journal.start_run("cutover")
        key = f"cutover.source-forward:{second['key']}"
        journal.step_started(
            run, key, item_kind="user", item_key=second["key"], name="cutover", intent={}
        )
        journal.step_finished(
            key,
            status="failed",
            error_message=HOSTILE_ERROR,
            next_step=f"coexist retry --project {directory}",
        )
        journal.update_item("user", second["key"], state="failed")
        journal.finish_run(run, "failed")
    return directory


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """Debian's headless Chromium through its chromedriver, given by path: Selenium Manager
    (which would download a driver) never runs; SE_MANAGER_PATH points nowhere to prove it."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        missing("chromium and chromium-driver are not installed: run `make system-deps`")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in containers; Chromium's sandbox refuses root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",  # no update or safe-browsing pings in the log
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    # The browser console and the DevTools network events, read back after the load.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    with pytest.MonkeyPatch.context() as patch:  # module scope: no `monkeypatch` fixture
        patch.setenv("SE_MANAGER_PATH", str(tmp_path_factory.mktemp("no-se-manager") / "x"))
        service = Service(executable_path=str(CHROMEDRIVER))
        driver = webdriver.Chrome(options=options, service=service)
        try:
            yield driver
        finally:
            driver.quit()


def open_report(driver: webdriver.Chrome, html: Path) -> tuple[list[Any], list[str], list[str]]:
    """Load the file; return the console entries, every URL the page asked for, and those
    of them the browser blocked before sending (DevTools `loadingFailed.blockedReason`)."""
    driver.get_log("browser")  # drop what an earlier page logged
    driver.get_log("performance")
    driver.get(html.as_uri())
    assert driver.execute_script("return document.readyState") == "complete"
    console = driver.get_log("browser")
    requested, blocked = network_requests(driver)
    return console, list(requested.values()), blocked


def reports(cli: Callable[..., Result], project: Path, html: Path) -> tuple[Any, list[Any]]:
    """The project's report as JSON and CSV rows, and the HTML written to `html`."""
    as_json = cli("report", "--project", str(project), "--json")
    assert as_json.exit_code == 0, as_json.output
    as_csv = cli("report", "--project", str(project), "--csv")
    assert as_csv.exit_code == 0, as_csv.output
    written = cli("report", "--project", str(project), "--html", str(html))
    assert written.exit_code == 0, written.output
    return json.loads(as_json.stdout), list(csv.DictReader(io.StringIO(as_csv.stdout)))


def test_report_opens_in_headless_chromium_with_every_user_and_its_figures(
    demo_project: Path,
    browser: webdriver.Chrome,
    cli: Callable[..., Result],
    tmp_path: Path,
) -> None:
    """The demo's HTML report loads in Chromium from file:// with no console message and no
    request but the file itself, shows every user with the JSON's figures, and is saved as a
    screenshot; JSON and CSV parse and carry the same numbers; ids only in JSON."""
    html = tmp_path / "report.html"
    data, rows = reports(cli, demo_project, html)
    status = commands.status(demo_project)["users"]
    assert {u["user"] for u in data["users"]} == {u["user"] for u in status}
    assert len(data["users"]) >= 2
    console, requested, _ = open_report(browser, html)
    browser.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").stat().st_size > 0
    # Printed: Chromium renders it to PDF under the print style sheet (kept beside the PNG).
    pdf = base64.b64decode(browser.print_page())
    (tmp_path / "report.pdf").write_bytes(pdf)
    assert pdf.startswith(b"%PDF")
    assert console == [], console
    assert requested == [html.as_uri()], requested
    assert not browser.find_elements(By.TAG_NAME, "script")

    shown = {
        r.get_attribute("data-user"): r
        for r in browser.find_elements(By.CSS_SELECTOR, "tr.user-row")
    }
    assert set(shown) == {u["user"] for u in data["users"]}
    csv_users = {r["user"]: r for r in rows if r["scope"] == "user"}
    for u in data["users"]:
        row = shown[u["user"]]
        assert row.is_displayed()
        text = row.text
        assert u["name"] in text and u["target"] in text and u["phase"] in text
        assert f"{u['items']:,}" in text and human_bytes(u["bytes"]) in text
        assert f"{u['gb_per_hour']:.3f}" in text and "reconciled" in text
        assert u["id"] not in browser.page_source  # people read addresses, not ids
        assert u["items"] > 0 and u["bytes"] > 0 and u["passes"]
        assert int(row.get_attribute("data-items") or -1) == u["items"]
        assert int(row.get_attribute("data-bytes") or -1) == u["bytes"]
        assert float(row.get_attribute("data-gb-per-hour") or -1) == u["gb_per_hour"]
        c = csv_users[u["user"]]
        assert (int(c["items"]), int(c["bytes"]), float(c["gb_per_hour"])) == (
            u["items"],
            u["bytes"],
            u["gb_per_hour"],
        )
        assert sum(int(c[f"{k}_items"]) for k in PASS_ORDER) == u["items"]
        assert sum(p["items"] for p in u["passes"]) == u["items"]
        assert u["id"] not in json.dumps(rows)
        # The per-folder reconciliation: every folder of the JSON in the user's section.
        section = browser.find_element(By.CSS_SELECTOR, f'section.user[data-user="{u["user"]}"]')
        assert u["folders"] and all(f["folder"] in section.text for f in u["folders"])
    # The demo's own per-user figures (commands.data_report) are the report's.
    demo = {r["user"]: r for r in commands.data_report(demo_project)}
    for u in data["users"]:
        assert (u["items"], u["bytes"], u["gb_per_hour"]) == (
            demo[u["user"]]["items"],
            demo[u["user"]]["bytes"],
            demo[u["user"]]["gb_per_hour"],
        )
    t = data["totals"]
    project_row = next(r for r in rows if r["scope"] == "project")
    assert (int(project_row["items"]), int(project_row["bytes"])) == (t["items"], t["bytes"])
    assert t["items"] == sum(u["items"] for u in data["users"])
    # Groups (project-wide) by name, with their state, in all three formats.
    assert data["groups"], "the demo copies its groups"
    groups = browser.find_element(By.ID, "groups").text
    assert all(g["group"] in groups for g in data["groups"])
    assert sorted(r["name"] for r in rows if r["scope"] == "group") == sorted(
        g["group"] for g in data["groups"]
    )
    totals = browser.find_element(By.ID, "totals").text
    assert f"{t['items']:,}" in totals and human_bytes(t["bytes"]) in totals
    # Throughput over time: an inline SVG chart with a bar per bucket, carrying all the bytes.
    assert sum(b["bytes"] for b in data["throughput"]["buckets"]) == pytest.approx(
        t["bytes"], abs=len(data["throughput"]["buckets"])
    )
    bars = browser.find_elements(By.CSS_SELECTOR, "svg rect.bar")
    assert len(bars) == len(data["throughput"]["buckets"]) > 0


def test_report_escapes_journal_text_and_shows_skips_errors_and_batches(
    hostile_project: Path,
    browser: webdriver.Chrome,
    cli: Callable[..., Result],
    tmp_path: Path,
) -> None:
    """Markup in a display name, a skipped item's subject and an error shows as text (no
    element, no request, no console message); skipped items appear with their reason, the
    error with its next command, and each batch with its totals."""
    html = tmp_path / "report.html"
    data, rows = reports(cli, hostile_project, html)
    console, requested, _ = open_report(browser, html)
    browser.save_screenshot(str(tmp_path / "report.png"))
    assert console == [], console
    assert requested == [html.as_uri()], requested
    assert not browser.find_elements(By.TAG_NAME, "script")
    assert not browser.find_elements(By.TAG_NAME, "img")
    assert browser.title.startswith("coexist report")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert HOSTILE_NAME in body and HOSTILE_SUBJECT in body and HOSTILE_ERROR in body
    reasons = browser.find_element(By.CSS_SELECTOR, "table.skipped").text
    assert f"2 {SKIP_REASON}" in reasons
    skipped = next(u for u in data["users"] if u["name"] == HOSTILE_NAME)
    assert skipped["skipped"] == 2
    assert skipped["skipped_reasons"] == [{"reason": SKIP_REASON, "items": 2}]
    failed = next(u for u in data["users"] if u["error"] == HOSTILE_ERROR)
    assert failed["state"] == "failed" and failed["next"].startswith("coexist retry")
    assert failed["next"] in body
    assert {b["batch"] for b in data["batches"]} == {None, "<b>wave 2</b>", DEMO_BATCH}
    assert data["totals"]["errors"] == 1 and data["totals"]["skipped"] == 2
    by_scope = {(r["scope"], r["batch"]): r for r in rows}
    assert int(by_scope[("batch", "<b>wave 2</b>")]["skipped"]) == 2
    assert int(by_scope[("project", "")]["errors"]) == 1
    batches = browser.find_element(By.ID, "batches").text
    assert "<b>wave 2</b>" in batches and "(no batch)" in batches
    one = cli("report", "--project", str(hostile_project), "--batch", "<b>wave 2</b>", "--json")
    assert one.exit_code == 0, one.output
    assert [u["user"] for u in json.loads(one.stdout)["users"]] == [skipped["user"]]


# The implicit-TLS relay turns aiosmtpd's auth_require_tls off (tests/smtp_server.py says
# why), and aiosmtpd warns about that on each connection; the connection is TLS throughout.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_report_email_reaches_a_real_smtp_server_over_tls_with_login(
    demo_project: Path,
    cli: Callable[..., Result],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    security: str,
) -> None:
    """`--email` sends the report through an SMTP relay (aiosmtpd) over STARTTLS or implicit
    TLS, verified against the configured CA, after AUTH: the message carries the summary,
    the HTML report and the CSV; the password appears in no output."""
    with smtp_relay(tmp_path, security=security) as relay:
        for name, value in relay.env().items():
            monkeypatch.setenv(name, value)
        sent = cli("report", "--project", str(demo_project), "-v", "--email", "ops@contoso.example")
        assert sent.exit_code == 0, sent.output
        assert "report sent to ops@contoso.example" in sent.output
        assert relay.password not in sent.output
        as_json = cli(
            "report", "--project", str(demo_project), "--json", "--email", "a@contoso.example"
        )
        assert as_json.exit_code == 0, as_json.output
        assert relay.password not in as_json.output
        assert json.loads(as_json.stdout)["email"]["to"] == ["a@contoso.example"]
    first = relay.received[0]
    assert first.login == relay.user and first.rcpt_tos == ["ops@contoso.example"]
    assert first.mail_from == "coexist@fabrikam.example"
    msg = first.message
    assert msg["Subject"].startswith("coexist report: demo")
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    report = json.loads(as_json.stdout)
    assert f"{report['totals']['items']:,} items" in text.get_content()
    assert 'id="users"' in html.get_content()
    files = {a.get_filename(): a.get_content() for a in msg.iter_attachments()}
    assert set(files) == {"coexist-report-demo.html", "coexist-report-demo.csv"}
    rows = list(csv.DictReader(io.StringIO(files["coexist-report-demo.csv"])))
    assert sorted(r["user"] for r in rows if r["scope"] == "user") == sorted(
        u["user"] for u in report["users"]
    )


def test_report_email_refuses_an_unverified_certificate_and_a_wrong_password(
    demo_project: Path,
    cli: Callable[..., Result],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TLS verification is always on: without the relay's CA the send fails and says so; a
    wrong password is refused by the server and the message does not repeat it."""
    with smtp_relay(tmp_path) as relay:
        for name, value in relay.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("COEXIST_SMTP_CA_FILE")
        unverified = cli("report", "--project", str(demo_project), "--email", "x@contoso.example")
        assert unverified.exit_code != 0
        assert "CERTIFICATE_VERIFY_FAILED" in unverified.output, unverified.output
        monkeypatch.setenv("COEXIST_SMTP_CA_FILE", str(relay.ca_file))
        monkeypatch.setenv("COEXIST_SMTP_PASSWORD", "wrong-Pa55-word")
        refused = cli("report", "--project", str(demo_project), "--email", "x@contoso.example")
        assert refused.exit_code != 0
        assert "refused the login" in refused.output
        assert "wrong-Pa55-word" not in refused.output and relay.password not in refused.output
    assert relay.received == []
    # Nor in the run logs the CLI keeps in the project (every run's, -v or not).
    logs = [f for f in (demo_project / "logs").rglob("*") if f.is_file()]
    assert logs
    for f in logs:
        text = f.read_text(errors="replace")
        assert "wrong-Pa55-word" not in text and relay.password not in text, f


def test_the_browser_checks_see_a_request_and_the_policy_refusing_it(
    browser: webdriver.Chrome, tmp_path: Path
) -> None:
    """The checks above are not vacuous: a page fetching an image is seen requesting it,
    and under the report's Content-Security-Policy the same fetch is blocked before it is
    sent, with a console message (the report pages show neither: no attempt at all)."""
    tag = '<img src="http://127.0.0.1:9/pixel.png" alt="">'
    plain = tmp_path / "plain.html"
    plain.write_text(f"<!DOCTYPE html><html><body>{tag}</body></html>")
    _, requested, blocked = open_report(browser, plain)
    assert "http://127.0.0.1:9/pixel.png" in requested and not blocked
    guarded = tmp_path / "guarded.html"
    meta = f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
    guarded.write_text(f"<!DOCTYPE html><html><head>{meta}</head><body>{tag}</body></html>")
    console, _, blocked = open_report(browser, guarded)
    # Chromium reports the attempt, then blocks it before it leaves (blockedReason "csp").
    assert blocked == ["http://127.0.0.1:9/pixel.png"]
    assert any("Content Security Policy" in e["message"] for e in console), console
