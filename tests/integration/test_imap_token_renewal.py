"""XOAUTH2 connections outlive no token: an IMAP -> IMAP pass through the real sync
algorithm between two Dovecot users, both signed in with tokens of a token source whose
clock runs faster than the pass (each reading of it ten minutes on), so the pass lasts
many tokens' lives. Each store has one connection (`per_mailbox = 1`): every login after its
first is that connection retiring between two commands and logging in again with a new
token. No sleeping: the clock is injected."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from pathlib import Path

import pytest

from coexist.errors import AuthenticationError, TransientError
from coexist.journal import Journal
from coexist.migrate.stores.imap import ImapStore
from coexist.tenants.imap import (
    AsyncImapSession,
    ConnectionLimits,
    ImapConnections,
    ImapEndpoint,
    ImapSession,
    NewMessage,
    OAuth2Refreshed,
    Password,
)
from coexist.tenants.oauth import REFRESH_TOKEN, OAuthApp, TokenSource
from tests.dovecot import DovecotServer, ImapUser
from tests.imap_relay import ByeRelay
from tests.integration.test_imap_store import message, sync_context, sync_pass
from tests.oauth_endpoint import TokenEndpoint

FOLDERS = {"INBOX": 90, "Archive": 60, "Work": 50}
STEP_S = 600.0  # each reading of the token clock moves it on this much (tokens: 1 h)


class StepClock:
    """A clock that moves on STEP_S each time it is read: time passes with the work done."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        self.now += STEP_S
        return self.now


class ManualClock:
    """A clock the test moves on."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def xoauth2_logins(dovecot: DovecotServer, user: ImapUser) -> int:
    """Logins of `user` Dovecot accepted with XOAUTH2 (its log: "Login: user=<...>")."""
    text = dovecot.log.read_text(errors="replace") if dovecot.log.exists() else ""
    mark = f"Login: user=<{user.login}>"
    return sum(1 for line in text.splitlines() if mark in line and "XOAUTH2" in line)


def message_ids(endpoint: ImapEndpoint, user: ImapUser) -> Counter[str]:
    """Message-IDs of every message of `user`, across folders."""
    out: Counter[str] = Counter()
    with ImapSession.open(endpoint, Password(user.login, user.password)) as s:
        for f in s.list_folders():
            if f.selectable and f.messages:
                _, uids = s.list_uids(f.name)
                out.update(r.message_id or "" for r in s.refs(f.name, uids))
    return out


def test_a_pass_longer_than_a_token_renews_its_connections(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    """A 200-message pass over tokens that (by the injected clock) go stale after ~5
    readings: every message is copied exactly once, the token endpoint gave each side
    several tokens, and Dovecot saw one XOAUTH2 login per token on each side's single
    connection (the store's session counts the same logins: renewals, not new
    connections)."""
    endpoint = ImapEndpoint(dovecot.host, dovecot.tls_port, "tls", dovecot.ca_file)
    src_user, tgt_user = dovecot.new_user("tsrc"), dovecot.new_user("ttgt")
    with ImapSession.open(endpoint, Password(src_user.login, src_user.password)) as s:
        n = 0
        for name, count in FOLDERS.items():
            if name != "INBOX":
                s.create_folder([name], None)
            s.append(name, [NewMessage(message(n + i, name.lower())) for i in range(count)])
            n += count
    by_login = {u.login: u for u in (src_user, tgt_user)}
    client_secret = "cs-" + secrets.token_hex(8)
    # Real tokens live an hour for Dovecot; the token source's clock makes them stale.
    token_endpoint = TokenEndpoint(
        tmp_path,
        lambda login, life: dovecot.oauth_token(by_login[login], lifetime_s=life),
        "renewal-client",
        client_secret,
        lifetime_s=3600,
    )
    refresh = {u.login: "rt-" + secrets.token_hex(8) for u in (src_user, tgt_user)}
    for login, token in refresh.items():
        token_endpoint.refresh_tokens[token] = login
    app = OAuthApp(
        token_endpoint.url,
        "renewal-client",
        client_secret,
        REFRESH_TOKEN,
        None,
        str(token_endpoint.ca_file),
    )
    clock = StepClock()
    sources = {
        login: TokenSource(app, login, refresh_token=token, clock=clock)
        for login, token in refresh.items()
    }
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx = sync_context(journal)
    limits = ConnectionLimits(per_server=4, per_mailbox=1)
    logins_before = {u.login: xoauth2_logins(dovecot, u) for u in (src_user, tgt_user)}

    async def main() -> tuple[Counter[str], int, int]:
        async with (
            ImapStore.open(
                ImapConnections(endpoint, limits),
                OAuth2Refreshed(src_user.login, sources[src_user.login]),
                page=20,
            ) as src,
            ImapStore.open(
                ImapConnections(endpoint, limits),
                OAuth2Refreshed(tgt_user.login, sources[tgt_user.login]),
                label="target",
            ) as tgt,
        ):
            counts = await sync_pass(ctx, "tsrc@example.org", src, tgt)
            return counts, src.session.session.logins, tgt.session.session.logins

    try:
        with token_endpoint:
            counts, src_logins, tgt_logins = asyncio.run(main())
    finally:
        journal.close()
    total = sum(FOLDERS.values())
    assert counts["copied"] == total, counts
    copied = message_ids(endpoint, tgt_user)
    assert copied == message_ids(endpoint, src_user) and set(copied.values()) == {1}
    issued = Counter(r["refresh_token"] for r in token_endpoint.requests)
    for user, logins in ((src_user, src_logins), (tgt_user, tgt_logins)):
        made = xoauth2_logins(dovecot, user) - logins_before[user.login]
        tokens = issued[refresh[user.login]]
        assert logins >= 2 and tokens >= 2, (user.login, logins, tokens)
        # One connection per side: each of its logins took a new token, and Dovecot saw
        # exactly those logins.
        assert made == logins == tokens, (user.login, made, logins, tokens)


def test_a_renewal_keeps_the_selection_checks_uidvalidity_and_retries_a_failed_login(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    """On one connection: a command after the token went stale runs on a new login, with
    the folder selected before selected again (its UIDs read as before); a UIDVALIDITY
    changed meanwhile is a TransientError, not a read under the new validity; a renewal
    whose token is refused raises AuthenticationError and the next command logs in again
    first; a fresh token means no new login."""
    endpoint = ImapEndpoint(dovecot.host, dovecot.tls_port, "tls", dovecot.ca_file)
    user = dovecot.new_user("renew")
    with ImapSession.open(endpoint, Password(user.login, user.password)) as s:
        s.append("INBOX", [NewMessage(message(i, "renew")) for i in range(3)])
    token_endpoint = TokenEndpoint(
        tmp_path,
        lambda login, life: dovecot.oauth_token(user, lifetime_s=life),
        "renewal-client",
        "cs-renew",
        lifetime_s=3600,
    )
    token_endpoint.refresh_tokens["rt-renew"] = user.login
    app = OAuthApp(token_endpoint.url, "renewal-client", "cs-renew", REFRESH_TOKEN, None,
                   str(token_endpoint.ca_file))  # fmt: skip
    clock = ManualClock()
    tokens = TokenSource(app, user.login, refresh_token="rt-renew", clock=clock)

    async def main() -> None:
        raw = await asyncio.to_thread(
            ImapSession.open, endpoint, OAuth2Refreshed(user.login, tokens)
        )
        session = AsyncImapSession(raw)
        try:
            validity, uids = await session.run(lambda s: s.list_uids("INBOX"))
            assert await session.run(lambda s: s.examine("INBOX")) == validity
            assert raw.logins == 1
            clock.now += 3600 - 299  # inside the margin: the token is due
            refs = await session.run(lambda s: s.refs("INBOX", uids))
            assert [r.uid for r in refs] == uids and raw.logins == 2
            assert await session.run(lambda s: s.refs("INBOX", uids[:1])) and raw.logins == 2

            dovecot.set_uidvalidity(user, "INBOX", validity + 7)
            clock.now += 3600
            with pytest.raises(TransientError, match="UIDVALIDITY"):
                await session.run(lambda s: s.refs("INBOX", uids))
            assert raw.logins == 3

            del token_endpoint.refresh_tokens["rt-renew"]  # the next token is refused
            clock.now += 3600
            with pytest.raises(AuthenticationError):
                await session.run(lambda s: s.examine("INBOX"))
            token_endpoint.refresh_tokens["rt-renew"] = user.login
            assert await session.run(lambda s: s.examine("INBOX")) == validity + 7
            assert raw.logins == 4
        finally:
            await asyncio.to_thread(raw.close)

    with token_endpoint:
        asyncio.run(main())


def test_a_session_ended_for_an_expired_token_mid_append_copies_nothing_twice(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    """The target server ends the session with "BYE Session invalidated -
    AccessTokenExpired" right after it appended a batch (the APPEND landed; the client
    never heard): the pass fails with a TransientError (code EXPIRED), what the engine's
    step retry runs again; the pass run again over new logins adopts the landed copies
    (`importing` marks) and copies the rest: every message exactly once."""
    endpoint = ImapEndpoint(dovecot.host, dovecot.tls_port, "tls", dovecot.ca_file)
    src_user, tgt_user = dovecot.new_user("byesrc"), dovecot.new_user("byetgt")
    with ImapSession.open(endpoint, Password(src_user.login, src_user.password)) as s:
        s.append("INBOX", [NewMessage(message(i, "bye")) for i in range(120)])
    relay = ByeRelay(tmp_path, dovecot.host, dovecot.tls_port, dovecot.ca_file)
    via_relay = ImapEndpoint("127.0.0.1", relay.port, "tls", relay.ca_file, side="target")
    relay.cut_at = 2  # the second APPEND answer: some copies made and recorded, then one unknown
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx = sync_context(journal)

    async def one_pass() -> Counter[str]:
        async with (
            ImapStore.open(
                ImapConnections(endpoint), Password(src_user.login, src_user.password)
            ) as src,
            ImapStore.open(
                ImapConnections(via_relay),
                Password(tgt_user.login, tgt_user.password),
                label="target",
            ) as tgt,
        ):
            return await sync_pass(ctx, "byesrc@example.org", src, tgt)

    try:
        with pytest.raises(TransientError) as ended:
            asyncio.run(one_pass())
        assert relay.cut == 1 and ended.value.code == "EXPIRED", ended.value
        assert "OAuth token expired" in ended.value.message
        landed = message_ids(endpoint, tgt_user)
        unknown = journal.mapped_items("byesrc@example.org", status="importing")
        # The cut batch landed, its rows still `importing`: outcomes nobody heard.
        assert unknown and set(landed.values()) == {1}, (len(unknown), landed)
        assert {str(r["source_identity"]).removeprefix("mid:") for r in unknown} <= set(landed)
        again = asyncio.run(one_pass())  # what the step retry does
        rows = journal.mapped_items("byesrc@example.org")
    finally:
        journal.close()
        relay.close()
    copied = message_ids(endpoint, tgt_user)
    assert copied == message_ids(endpoint, src_user) and set(copied.values()) == {1}
    assert again["copied"] == 120 - sum(landed.values()), again  # the landed ones adopted
    assert {r["status"] for r in rows} == {"copied"} and len(rows) == 120
