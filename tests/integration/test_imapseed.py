"""The demo's IMAP seed (coexist.sandbox.imapseed) against a real Dovecot, read back with
coexist's IMAP adapter and with doveadm (which decodes folder names itself)."""

from __future__ import annotations

import datetime as dt

from coexist.sandbox import imapseed
from coexist.sandbox.imapseed import SeedUser
from coexist.tenants.imap import ImapEndpoint, ImapSession, Password
from tests.dovecot import DovecotServer

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


def test_modified_utf7_matches_rfc3501_examples() -> None:
    """RFC 3501 5.1.3's example and the "&" rule encode as the RFC says."""
    assert imapseed.encode_mutf7("~peter/mail/台北/日本語") == "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    assert imapseed.encode_mutf7("Tom & Jerry") == "Tom &- Jerry"
    assert imapseed.encode_mutf7("Résumés") == "R&AOk-sum&AOk-s"


def test_plan_is_deterministic_with_old_and_new_mail() -> None:
    """The same seed gives the same messages; each user has old (> 90 days) and new mail,
    flags and keywords, and the first user's first message is the large one."""
    users = [SeedUser("a", "x"), SeedUser("b", "y", separator=".")]
    one = imapseed.plan(users, seed=3, items=12, now=NOW, large_attachment_bytes=50_000)
    two = imapseed.plan(users, seed=3, items=12, now=NOW, large_attachment_bytes=50_000)
    assert [m.raw for m in one.messages] == [m.raw for m in two.messages]
    for user in ("a", "b"):
        mine = one.of(user)
        assert {m.older_than(90, NOW) for m in mine} == {True, False}
        assert any(m.keywords for m in mine) and any("\\Flagged" in m.flags for m in mine)
    assert one.of("a")[0].size > 50_000 > max(m.size for m in one.messages[1:])
    assert imapseed.SLASH_FOLDER in one.folders("b") and imapseed.SLASH_FOLDER not in one.folders(
        "a"
    )


def test_seeded_mailboxes_read_back_through_the_adapter(dovecot: DovecotServer) -> None:
    """Every seeded message is in its folder once, with its flags, keywords and INTERNALDATE;
    folder names with quotes, non-ASCII letters, "/" in a name and a deep tree arrive."""
    plain = dovecot.new_user("seed")
    dotted = dovecot.new_user("seeddot", separator=".")
    users = [SeedUser(plain.login, plain.password), SeedUser(dotted.login, dotted.password, ".")]
    manifest = imapseed.seed(
        dovecot.host,
        dovecot.tls_port,
        dovecot.ca_file,
        users,
        items=22,
        now=NOW,
        large_attachment_bytes=200_000,
    )
    endpoint = ImapEndpoint(dovecot.host, dovecot.tls_port, "tls", dovecot.ca_file)
    for user, seeded in zip(users, (plain, dotted), strict=True):
        with ImapSession.open(endpoint, Password(seeded.login, seeded.password)) as s:
            names = {f.path: f for f in s.list_folders()}
            found = {}
            for path in manifest.folders(user.login):
                folder = names[path]
                _validity, uids = s.list_uids(folder.name)
                for ref in s.refs(folder.name, uids):
                    assert ref.message_id not in found
                    found[ref.message_id] = (path, ref)
        mine = manifest.of(user.login)
        assert len(found) == len(mine)
        for m in mine:
            path, ref = found[m.message_id]
            assert path == m.folder
            assert ref.flags == m.flags and ref.keywords == m.keywords
            assert ref.internaldate == m.internaldate and ref.size == m.size
        assert names[("Sent",)].special_use == "sentitems"
        assert names[("Archive",)].special_use == "archive"
    # doveadm decodes modified UTF-7 on its own: the names on the server are the real ones.
    listed = dovecot.doveadm("mailbox", "list", "-u", plain.login).splitlines()
    assert {'Clients "Acme" & Co', "Résumés für Jürgen", "日本語/Проекты"} <= set(listed)
    assert "Projects/2024/Q1/Acme/Contracts" in listed
    dotted_listed = dovecot.doveadm("mailbox", "list", "-u", dotted.login).splitlines()
    assert "Reports 1/2" in dotted_listed and "INBOX.Receipts" in dotted_listed
