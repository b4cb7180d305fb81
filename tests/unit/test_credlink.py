"""Credential links (issue 15): tokens, the access log's view of a path, the rate limit,
and the page's headers, without a server."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import jinja2
import pytest

from coexist import credlink, credserve
from coexist.errors import InputError
from coexist.settings import Project, load_project

KEY = bytes(range(32))
NOW = dt.datetime(2026, 12, 5, 8, 0, tzinfo=dt.UTC)


def test_a_genuine_token_names_its_link_until_it_expires() -> None:
    """A token made under the key checks out before its expiry and is refused after it."""
    link_id, token = credlink.make_token(KEY, NOW + dt.timedelta(days=7))
    assert credlink.check_token(KEY, token, NOW) == link_id
    with pytest.raises(credlink.LinkRefused) as refused:
        credlink.check_token(KEY, token, NOW + dt.timedelta(days=7, seconds=1))
    assert refused.value.status == 410 and "expired" in refused.value.reason


@pytest.mark.parametrize("part", [0, 1, 2])
def test_a_changed_id_expiry_or_signature_is_refused(part: int) -> None:
    """Changing any part of a token (a later expiry too) breaks its signature."""
    _, token = credlink.make_token(KEY, NOW + dt.timedelta(days=1))
    parts = token.split(".")
    if part == 1:
        parts[1] = str(int(parts[1]) + 86400)
    else:
        parts[part] = ("0" if parts[part][0] != "0" else "1") + parts[part][1:]
    with pytest.raises(credlink.LinkRefused) as refused:
        credlink.check_token(KEY, ".".join(parts), NOW)
    assert refused.value.status == 404


def test_a_token_of_another_key_is_refused() -> None:
    """A token signed under another project's key is not valid here."""
    _, token = credlink.make_token(bytes(32), NOW + dt.timedelta(days=1))
    with pytest.raises(credlink.LinkRefused):
        credlink.check_token(KEY, token, NOW)


def test_the_access_log_shows_a_link_by_its_id_only() -> None:
    """A logged path keeps the link id and drops the signature and expiry."""
    link_id, token = credlink.make_token(KEY, NOW)
    shown = credserve.safe_path(f"/l/{token}")
    assert shown == f"/l/{link_id}" and token.split(".")[2] not in shown
    assert credserve.safe_path("/l/garbage-with-secret") == "/l/?"
    assert credserve.safe_path("/anything/else?x=1") == "/(other)"


def test_the_rate_limit_refuses_a_burst_and_forgets_after_a_minute() -> None:
    """`limit` requests a minute per key pass; the next is refused until the window moves."""
    limit = credserve.RateLimit(3)
    assert all(limit.allow("k", now=t) for t in (0.0, 1.0, 2.0))
    assert not limit.allow("k", now=3.0)
    assert limit.allow("other", now=3.0)
    assert limit.allow("k", now=60.5)


def test_the_policy_allows_no_script_and_posts_only_to_itself() -> None:
    """CSP starts from nothing: no script source, forms to self, no framing; HSTS is on."""
    csp = credserve.CSP
    assert csp.startswith("default-src 'none'") and "script-src" not in csp
    assert "form-action 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "max-age" in credserve.SECURITY_HEADERS["Strict-Transport-Security"]


def _project(tmp_path: Path, templates: Path | None = None) -> Project:
    (tmp_path / "project.toml").write_text(
        '[source]\nkind = "imap"\n[source.imap]\nhost = "imap.example.org"\n'
        '[target]\nkind = "imap"\n[target.imap]\nhost = "imap.example.net"\n'
        '[credential_link]\noperator = "Fabrikam IT"\n'
        + (f'templates = "{templates}"\n' if templates else "")
    )
    return load_project(tmp_path)


def test_operators_templates_replace_coexists_and_escape_what_they_show(tmp_path: Path) -> None:
    """A page.html.j2 in [credential_link] templates wins over coexist's; values are
    autoescaped; a name the template uses and nobody gives is an error, not blank."""
    own = tmp_path / "brand"
    own.mkdir()
    (own / "page.html.j2").write_text("<h1>{{ operator }}</h1><p>{{ address }}</p>")
    (tmp_path / "p").mkdir()
    env = credlink.environment(_project(tmp_path / "p", own))
    html = env.get_template("page.html.j2").render(operator="Fabrikam IT", address="<b>x</b>")
    assert html == "<h1>Fabrikam IT</h1><p>&lt;b&gt;x&lt;/b&gt;</p>"
    assert "Fabrikam IT" in env.get_template("request-subject.txt.j2").render(
        operator="Fabrikam IT", address="a@example.org"
    )
    (own / "page.html.j2").write_text("{{ nobody_gives_this }}")
    with pytest.raises(jinja2.UndefinedError):
        credlink.environment(_project(tmp_path / "p", own)).get_template("page.html.j2").render()


def test_a_microsoft_365_source_takes_no_end_user_credentials(tmp_path: Path) -> None:
    """request and serve refuse a source whose mailboxes the app reaches (nothing to ask)."""
    app = 'client_id = "00000000-0000-0000-0000-000000000009"\n'
    (tmp_path / "project.toml").write_text(
        f'[source]\ntenant_id = "00000000-0000-0000-0000-000000000001"\n{app}'
        f'[target]\ntenant_id = "00000000-0000-0000-0000-000000000002"\n{app}'
        '[domains]\ndestination_domain = "example.net"\n'
    )
    with pytest.raises(InputError, match="give no credentials of their own"):
        credlink.request(tmp_path, batch="wave1")
    with pytest.raises(InputError, match="give no credentials of their own"):
        credserve.server(tmp_path, demo_cert=True)
