"""What the credential link tests share: the IMAP scene they start from (two seeded users
whose project serves the page, `imap_link_scene`; an SMTP relay in the environment,
`relay_in_env`; the batch without source passwords, `without_passwords`), the page served
in this process (uvicorn in a thread, its clock injectable), Debian's headless Chromium
pinned to the page's certificate, an HTTPS client trusting it, and the grep for a password
in everything coexist writes."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from coexist import credlink, credserve
from coexist.vault import ENV_KEY
from tests.chromium_log import network_requests
from tests.dovecot import DovecotServer, missing
from tests.e2e.imap_scene import KEY, Scene
from tests.smtp_server import Relay, smtp_relay

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
HOST = "127.0.0.1"
LINK = re.compile(r"https://\S+/l/[0-9a-f]{16}\.\d+\.[A-Za-z0-9_-]+")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def link_values(port: int) -> dict[str, Any]:
    """The project's [credential_link] settings for a page on `port` (a demo certificate)."""
    return {
        "url": f"https://{HOST}:{port}",
        "host": HOST,
        "port": port,
        "operator": "Fabrikam IT",
        "attempts": 3,
    }


def link_settings(port: int) -> str:
    """`link_values` as a [credential_link] table to append to a project.toml."""
    values = link_values(port)
    return "\n[credential_link]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


def imap_link_scene(dovecot: DovecotServer, tmp_path: Path, *, extra_toml: str = "") -> Scene:
    """Two IMAP users on the session's Dovecot, both mailboxes seeded, in a project whose
    page listens on a free port ([credential_link], after `extra_toml`)."""
    scene = Scene(dovecot, tmp_path, users=2)
    for u in scene.users:
        scene.seed(u)
    toml = scene.project / "project.toml"
    toml.write_text(toml.read_text() + extra_toml + link_settings(free_port()))
    return scene


@contextmanager
def relay_in_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str = KEY
) -> Iterator[Relay]:
    """An SMTP relay whose settings, and the vault key `key`, are in this process's
    environment: the CLI run in-process, the page and the workers started later inherit
    them (the key opens the users' passwords)."""
    with smtp_relay(tmp_path) as relay:
        for name, value in {**relay.env(), ENV_KEY: key}.items():
            monkeypatch.setenv(name, value)
        yield relay


def without_passwords(scene: Scene) -> Path:
    """The scene's batch CSV with the source password column blank on every row."""
    return scene.csv({u.address: "" for u in scene.users})


@contextmanager
def page(
    project: Path, clock: credlink.Clock = credlink.utcnow, *, run: bool = True
) -> Iterator[Any]:
    """`coexist credentials serve --demo-cert [--run]` in a thread of this process; stopped
    (its background passes finished: asyncio.run joins their threads) on exit."""
    srv = credserve.server(project, demo_cert=True, run=run, clock=clock)
    thread = threading.Thread(target=srv.run, name="credential-link-page", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the page did not start"
        time.sleep(0.05)
    try:
        yield srv
    finally:
        srv.should_exit = True
        thread.join(600)


def ca_file(project: Path) -> Path:
    return project / "credential-link" / "ca.pem"


def client(project: Path) -> httpx.Client:
    """An HTTPS client that trusts the demo CA only (verification on)."""
    trusted = ssl.create_default_context(cafile=str(ca_file(project)))
    return httpx.Client(verify=trusted, timeout=60, follow_redirects=False)


def spki_pin(cert: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of a certificate, as Chromium's
    --ignore-certificate-errors-spki-list takes it: only that key is trusted."""
    leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    spki = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@contextmanager
def chromium(project: Path, profile: Path) -> Iterator[webdriver.Chrome]:
    """Debian's headless Chromium through its chromedriver (nothing downloaded), trusting the
    page's certificate by its key; the DevTools network log kept for the policy check."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        missing("chromium and chromium-driver are not installed: run `make system-deps`")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    pin = spki_pin(project / "credential-link" / "cert.pem")
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in containers; Chromium's sandbox refuses root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        f"--user-data-dir={profile}",
        f"--ignore-certificate-errors-spki-list={pin}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def submit(driver: webdriver.Chrome, login: str, password: str) -> None:
    """Fill the form and send it with the keyboard (Enter in the password field)."""
    field = driver.find_element(By.ID, "login")
    field.clear()
    field.send_keys(login)
    secret = driver.find_element(By.ID, "password")
    secret.send_keys(password)
    secret.send_keys(Keys.ENTER)
    deadline = time.monotonic() + 60
    while driver.execute_script("return document.readyState") != "complete":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def links_in(received: list[Any]) -> dict[str, str]:
    """Each recipient's link, from the mails the relay took."""
    out = {}
    for r in received:
        body = r.message.get_body(("plain",)).get_content()
        found = LINK.search(body)
        assert found, body
        out[r.rcpt_tos[0]] = found.group(0)
    return out


def blocked_requests(driver: webdriver.Chrome) -> list[str]:
    """URLs the page asked for that are not its own origin, or that the browser blocked."""
    requested, bad = network_requests(driver)
    # Chromium's own pages (chrome://, data: of its new tab page) are no request of ours.
    bad += [
        u
        for u in requested.values()
        if u.startswith(("http:", "https:", "ws:", "wss:")) and not u.startswith(f"https://{HOST}:")
    ]
    return bad


def wait_for(what: str, check: Any, timeout_s: float = 300) -> None:
    """Poll `check()` until true (a bound, not a timing assertion: the pass runs elsewhere)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.2)


def grep_everything(
    secret: str,
    project: Path,
    outputs: list[str],
    extra_files: list[Path] = (),  # type: ignore[assignment]
) -> list[str]:
    """Where `secret` shows: every file under the project (journal and its WAL, run logs,
    the page's access log, the vault: encrypted, so not in plain either), the outputs given
    (--json, reports) and `extra_files`."""
    needles = {secret.encode(), secret.encode("utf-16-le"), base64.b64encode(secret.encode())}
    found = []
    for path in [*project.rglob("*"), *extra_files]:
        if path.is_file():
            data = path.read_bytes()
            if any(n in data for n in needles):
                found.append(str(path))
    found += [f"output {i}" for i, text in enumerate(outputs) if secret in text]
    return found
