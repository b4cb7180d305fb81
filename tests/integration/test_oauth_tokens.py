"""`tenants.oauth.TokenSource` against a token endpoint over HTTPS (Google's refresh grant):
a token is kept while it has more than the margin left (or half its life, when that is
shorter), replaced after, and on `refresh`; a refusal names the client and hides the secret."""

from __future__ import annotations

from itertools import count
from pathlib import Path

import pytest

from coexist.errors import AuthenticationError
from coexist.tenants.oauth import REFRESH_TOKEN, OAuthApp, TokenSource
from tests.oauth_endpoint import TokenEndpoint


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def source(endpoint: TokenEndpoint, clock: Clock, secret: str = "s3cret") -> TokenSource:
    app = OAuthApp(endpoint.url, "client", secret, REFRESH_TOKEN, None, str(endpoint.ca_file))
    return TokenSource(app, "ann@example.org", refresh_token="rt-ann", clock=clock)


def test_a_token_is_kept_until_its_margin_then_replaced(tmp_path: Path) -> None:
    """One-hour tokens: the same token until 300 s before expiry, a new one from then on;
    `refresh` replaces it at once; each request carries the client and refresh token."""
    n = count()
    with TokenEndpoint(tmp_path, lambda login, life: f"tok-{next(n)}", "client", "s3cret",
                       lifetime_s=3600) as endpoint:  # fmt: skip
        endpoint.refresh_tokens["rt-ann"] = "ann"
        clock = Clock()
        tokens = source(endpoint, clock)
        assert tokens.token() == "tok-0"
        clock.now += 3600 - 301
        assert tokens.token() == "tok-0"
        clock.now += 2
        assert tokens.token() == "tok-1"
        tokens.refresh()
        assert tokens.token() == "tok-2"
        assert [r["refresh_token"] for r in endpoint.requests] == ["rt-ann"] * 3
        assert {r["grant_type"] for r in endpoint.requests} == {"refresh_token"}


def test_a_short_lived_token_is_replaced_at_half_its_life(tmp_path: Path) -> None:
    """A 60 s token (under twice the margin) serves for 30 s, so a token just refreshed
    is used, not replaced again at the next login."""
    n = count()
    with TokenEndpoint(tmp_path, lambda login, life: f"tok-{next(n)}", "client", "s3cret",
                       lifetime_s=60) as endpoint:  # fmt: skip
        endpoint.refresh_tokens["rt-ann"] = "ann"
        clock = Clock()
        tokens = source(endpoint, clock)
        assert tokens.token() == tokens.token() == "tok-0"
        clock.now += 29
        assert tokens.token() == "tok-0"
        clock.now += 2
        assert tokens.token() == "tok-1"


def test_a_refused_client_is_named_without_its_secret(tmp_path: Path) -> None:
    """A wrong client secret: AuthenticationError naming the endpoint's error and whose
    token it was, with the next step given, never the secret."""
    with TokenEndpoint(tmp_path, lambda login, life: "t", "client", "s3cret") as endpoint:
        endpoint.refresh_tokens["rt-ann"] = "ann"
        tokens = source(endpoint, Clock(), secret="wrong-secret-value")
        with pytest.raises(AuthenticationError) as raised:
            tokens.token()
    said = str(raised.value)
    assert "invalid_client" in said and "ann@example.org" in said
    assert "wrong-secret-value" not in said and "rt-ann" not in said


def test_a_connection_asks_whether_its_token_is_still_fresh(tmp_path: Path) -> None:
    """`fresh(token)`: true for the token held while a login would still be given it, false
    from the margin on and for a token replaced since (what an IMAP connection asks between
    commands to retire before its token expires)."""
    n = count()
    with TokenEndpoint(tmp_path, lambda login, life: f"tok-{next(n)}", "client", "s3cret",
                       lifetime_s=3600) as endpoint:  # fmt: skip
        endpoint.refresh_tokens["rt-ann"] = "ann"
        clock = Clock()
        tokens = source(endpoint, clock)
        first = tokens.token()
        clock.now += 3600 - 301
        assert tokens.fresh(first) and not tokens.fresh("tok-other")
        clock.now += 2
        assert not tokens.fresh(first)
        second = tokens.token()
        assert second != first and tokens.fresh(second) and not tokens.fresh(first)
        tokens.refresh()
        assert not tokens.fresh(second)
