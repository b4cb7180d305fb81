"""XOAUTH2 tokens coexist obtains and refreshes itself, against a real Dovecot (which checks
each token as Gmail or Microsoft 365 would) and a token endpoint over HTTPS.

With the side's OAuth client in the vault (`credentials set --oauth-app`) and each user's
refresh token as its secret, every login takes a token with more than the refresh margin
left, a new one otherwise, and a token the server refuses is replaced once on a new
connection: a pass whose tokens expire as it goes completes with every message. A bare
access token still works, and one that expired fails its user with the user named and the
command to run next. No client secret, refresh token or access token in any output or
project file but the vault; the Microsoft 365 client credentials request is the one the
identity platform (the sandbox's) answers with an Exchange Online token."""

from __future__ import annotations

import json
import secrets
from collections import Counter
from pathlib import Path

import jwt
import pytest

from coexist.errors import AuthenticationError
from coexist.sandbox import Sandbox
from coexist.tenants.oauth import CLIENT_CREDENTIALS, M365_IMAP_SCOPE, OAuthApp, TokenSource
from tests.dovecot import DovecotServer
from tests.e2e.imap_scene import Scene, run, run_json
from tests.e2e.test_imap_to_imap import older
from tests.imap_relay import ByeRelay
from tests.oauth_endpoint import TokenEndpoint


def xoauth2_logins(dovecot: DovecotServer) -> int:
    """Logins Dovecot accepted with XOAUTH2 so far (its log: "Login: user=<...>,
    method=XOAUTH2")."""
    text = dovecot.log.read_text(errors="replace") if dovecot.log.exists() else ""
    return sum(1 for line in text.splitlines() if "Login: user=" in line and "XOAUTH2" in line)


def test_refreshed_tokens_move_every_message(dovecot: DovecotServer, tmp_path: Path) -> None:
    """refresh_token grant: verify-credentials signs each user in with a token it obtained;
    in the prestage the first token the endpoint gives is refused by Dovecot (its JWT
    expired before its `expires_in`: a token that ran out mid-run), so it is replaced once,
    on a new connection, and the pass goes on; prestage then cutover move every message
    once; the endpoint saw each user's refresh token; no client secret, refresh token or
    access token shows in any output, log or journal."""
    scene = Scene(dovecot, tmp_path)
    scene.write_project(source_auth="xoauth2")
    p = str(scene.project)
    by_login = {u.source.login: u.source for u in scene.users}
    client_secret = "cs-" + secrets.token_hex(8)
    endpoint = TokenEndpoint(
        tmp_path,
        lambda login, life: dovecot.oauth_token(by_login[login], lifetime_s=life),
        "coexist-test-client",
        client_secret,
    )
    refresh = {u.address: "rt-" + secrets.token_hex(8) for u in scene.users}
    for u in scene.users:
        endpoint.refresh_tokens[refresh[u.address]] = u.source.login
        scene.seed(u)
    with endpoint:
        outputs = [run_json("batch", "import", "--project", p, str(scene.csv(refresh)))]
        app = run(
            *("credentials", "set", "--project", p, "--oauth-app", "--side", "source"),
            *("--grant", "refresh_token", "--client-id", "coexist-test-client"),
            *("--token-url", endpoint.url, "--ca-file", str(endpoint.ca_file)),
            "--password-stdin",
            "--json",
            stdin=client_secret + "\n",
        )
        assert app.exit_code == 0, app.output
        listed = run_json("credentials", "list", "--project", p)
        assert listed["oauth_app"]["source"]["login"] == "coexist-test-client", listed
        outputs += [json.loads(app.output), listed]

        checked = run_json("verify-credentials", "--project", p, "--all")
        assert checked["verified"] == len(scene.users), checked  # a token obtained per user
        outputs.append(checked)

        endpoint.stale = 1
        logins, asked_before = xoauth2_logins(dovecot), len(endpoint.requests)
        first = run("prestage", "--project", p, "--all", "--older-than", "90d", "--json", "-v")
        assert first.exit_code == 0, first.output
        result = json.loads(first.output.strip().splitlines()[-1])
        assert not result["failed"] and not result["waiting"], result
        for u in scene.users:
            source = scene.fingerprints(u.source, mapped=True)
            assert scene.fingerprints(u.target) == older(source), u.address
        # The refused token replaced (a second request for that user), and every login
        # made with a token the endpoint gave for it.
        made = xoauth2_logins(dovecot) - logins
        assert made >= len(scene.users), made
        asked = Counter(r["refresh_token"] for r in endpoint.requests[asked_before:])
        assert sorted(asked.values())[-1] >= 2 and set(asked) == set(refresh.values()), asked

        cut = run("cutover", "--project", p, "--all", "--json", "-v")
        assert cut.exit_code == 0, cut.output
        for u in scene.users:
            source = scene.fingerprints(u.source, mapped=True)
            assert scene.fingerprints(u.target) == source and max(source.values()) == 1
        assert len(endpoint.requests) >= asked_before + 1 + 2 * len(scene.users)  # new run
        plan = run("cutover", "--project", p, "--all", "--plan", "--json")
        assert plan.exit_code == 0, plan.output

    said = "\n".join([json.dumps(o) for o in outputs] + [first.output, cut.output, plan.output])
    files = [f for f in scene.project.rglob("*") if f.is_file() and f.suffix != ".vault"]
    for secret in [client_secret, *refresh.values(), *endpoint.issued]:
        assert secret not in said
        for f in files:
            assert secret.encode() not in f.read_bytes(), f


def test_an_expired_bare_token_names_the_user_and_what_to_do(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    """Without an OAuth client the vault's secret is an access token: one that expired
    fails that user (named, with `coexist credentials set ... --side source` and the
    --oauth-app way out), the other user, whose token is good, moves."""
    scene = Scene(dovecot, tmp_path)
    scene.write_project(source_auth="xoauth2")
    p = str(scene.project)
    late, fine = scene.users
    for u in scene.users:
        scene.seed(u)
    tokens = {
        late.address: dovecot.oauth_token(late.source, lifetime_s=-60),
        fine.address: dovecot.oauth_token(fine.source),
    }
    run_json("batch", "import", "--project", p, str(scene.csv(tokens)))
    out = run("prestage", "--project", p, "--all", "--older-than", "90d", "--json")
    result = json.loads(out.output.strip().splitlines()[-1])
    [failed] = result["failed"]
    assert failed["user"] == late.address, failed
    assert "refused" in failed["error"] and "--oauth-app" in failed["error"], failed
    assert f"--user {late.address} --side source" in failed["next"], failed
    assert scene.fingerprints(fine.target) == older(scene.fingerprints(fine.source, mapped=True))
    assert all(t not in out.output for t in tokens.values())


def test_client_credentials_get_an_exchange_online_token(sandbox: Sandbox, tmp_path: Path) -> None:
    """Microsoft 365: the client credentials request (client id and secret, scope
    https://outlook.office365.com/.default) at the tenant's v2.0 token endpoint answers a
    token for Exchange Online, kept while fresh and replaced on `refresh`; a wrong secret
    is an AuthenticationError with Entra's code, without the secret."""
    conn = sandbox.connection
    tenant = conn["tenants"]["source"]
    url = f"{tenant['authority']}/{tenant['tenant_id']}/oauth2/v2.0/token"
    app = OAuthApp(
        url,
        tenant["client_id"],
        tenant["client_secret"],
        CLIENT_CREDENTIALS,
        M365_IMAP_SCOPE,
        conn["ca_file"],
    )
    source = TokenSource(app, "the source OAuth client")
    token = source.token()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == "https://outlook.office365.com", claims
    assert source.token() == token and source.fetched == 1  # fresh: kept
    source.refresh()
    assert source.fetched == 2
    wrong = "not-" + secrets.token_hex(6)
    bad = TokenSource(
        OAuthApp(
            url, tenant["client_id"], wrong, CLIENT_CREDENTIALS, M365_IMAP_SCOPE, conn["ca_file"]
        ),
        "the source OAuth client",
    )
    with pytest.raises(AuthenticationError) as raised:
        bad.token()
    assert "invalid_client" in raised.value.message and "AADSTS7000215" in raised.value.message
    assert wrong not in str(raised.value)


def test_a_session_the_server_ends_for_an_expired_token_needs_no_coexist_retry(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    """The target ends a session with Exchange Online's "BYE Session invalidated -
    AccessTokenExpired" right after an APPEND landed (tests/imap_relay.py in front of the
    Dovecot): the prestage retries that user's pass by itself (a transient error) and ends
    with no user failed or waiting and every message once, without `coexist retry`."""
    scene = Scene(dovecot, tmp_path)
    relay = ByeRelay(tmp_path, dovecot.host, dovecot.tls_port, dovecot.ca_file)
    d = dovecot
    (scene.project / "project.toml").write_text(
        f'[source]\nkind = "imap"\n\n[source.imap]\nhost = "{d.host}"\nport = {d.tls_port}\n'
        f'ca_file = "{d.ca_file}"\nauth = "login"\n\n'
        f'[target]\nkind = "imap"\n\n[target.imap]\nhost = "127.0.0.1"\nport = {relay.port}\n'
        f'ca_file = "{relay.ca_file}"\nauth = "login"\n\n'
        '[migration]\nfolder_rules = ["^INBOX/->"]\n'
    )
    p = str(scene.project)
    for u in scene.users:
        scene.seed(u)
    run_json("batch", "import", "--project", p, str(scene.csv()))
    relay.cut_at = 2
    try:
        out = run("prestage", "--project", p, "--all", "--older-than", "90d", "--json")
    finally:
        relay.close()
    assert out.exit_code == 0, out.output
    result = json.loads(out.output.strip().splitlines()[-1])
    assert not result["failed"] and not result["waiting"], result
    assert relay.cut == 1
    for u in scene.users:
        source = scene.fingerprints(u.source, mapped=True)
        assert scene.fingerprints(u.target) == older(source), u.address
