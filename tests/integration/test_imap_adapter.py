"""The IMAP adapter against a real Dovecot (tests/dovecot.py): records, delta, writes, errors.

Every test takes fresh users of the session's Dovecot, over TLS verified with the test CA.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from coexist.errors import (
    AuthenticationError,
    InvalidRequest,
    NotFound,
    RemoteError,
    TLSError,
    Unreachable,
)
from coexist.tenants.imap import (
    SEND_COALESCE,
    ImapEndpoint,
    ImapFolder,
    ImapSession,
    MasterPassword,
    NewMessage,
    OAuth2Token,
    Password,
    Watermark,
)
from tests.dovecot import MASTER_USER, DovecotServer, ImapUser

PLUS_0130 = timezone(timedelta(hours=1, minutes=30))


def message(n: int, subject: str = "hello") -> bytes:
    """A small RFC 5322 message with a unique Message-ID."""
    return (
        f"From: a@example.org\r\nTo: b@example.org\r\nSubject: {subject} {n}\r\n"
        f"Message-ID: <m{n}.{subject}@example.org>\r\nDate: Mon, 4 Mar 2019 05:06:07 +0000\r\n"
        f"\r\nbody {n}\r\n"
    ).encode()


@pytest.fixture
def endpoint(dovecot: DovecotServer) -> ImapEndpoint:
    """Implicit TLS (993-style) to the test Dovecot, trusting the test CA."""
    return ImapEndpoint(dovecot.host, dovecot.tls_port, "tls", dovecot.ca_file)


@pytest.fixture
def user(dovecot: DovecotServer) -> ImapUser:
    return dovecot.new_user()


@pytest.fixture
def session(endpoint: ImapEndpoint, user: ImapUser) -> Iterator[ImapSession]:
    with ImapSession.open(endpoint, Password(user.login, user.password)) as s:
        yield s


def seed(session: ImapSession, folder: str, count: int, subject: str = "seed") -> list[int]:
    """Append `count` plain messages to `folder`; their UIDs."""
    uids = session.append(folder, [NewMessage(message(i, subject)) for i in range(count)])
    assert all(u is not None for u in uids)
    return [u for u in uids if u is not None]


# -- records and round trips -------------------------------------------------------------------


def test_flags_keywords_and_internaldate_round_trip(session: ImapSession) -> None:
    """APPEND (MULTIAPPEND) keeps flags, keywords and INTERNALDATE (the instant: Dovecot's
    maildir keeps a timestamp, not the zone, as RFC 3501 allows)."""
    sent = [
        NewMessage(
            message(1),
            frozenset({"\\Seen"}),
            frozenset(),
            datetime(2019, 3, 4, 5, 6, 7, tzinfo=UTC),
        ),
        NewMessage(
            message(2),
            frozenset({"\\Flagged", "\\Answered"}),
            frozenset({"$Forwarded", "Project-X"}),
            datetime(2001, 12, 31, 23, 59, 58, tzinfo=PLUS_0130),
        ),
        NewMessage(
            message(3),
            frozenset({"\\Draft"}),
            frozenset(),
            datetime(2024, 2, 29, 12, 0, 0, tzinfo=UTC),
        ),
    ]
    assert session.caps.multiappend
    uids = session.append("INBOX", sent)
    assert len(uids) == 3 and all(uids)
    changes = session.changes("INBOX", None)
    assert [r.uid for r in changes.new] == uids
    for ref, want in zip(changes.new, sent, strict=True):
        assert ref.flags == want.flags
        assert ref.keywords == want.keywords
        assert ref.internaldate == want.internaldate
        assert ref.size == len(want.raw)
    assert [r.message_id for r in changes.new] == [f"<m{i}.hello@example.org>" for i in (1, 2, 3)]
    fetched = list(session.fetch("INBOX", changes.new))
    assert [f.raw for f in fetched] == [m.raw for m in sent]
    assert [f.internaldate for f in fetched] == [m.internaldate for m in sent]
    assert [f.keywords for f in fetched] == [m.keywords for m in sent]
    # BODY.PEEK: reading a message does not mark it read.
    assert "\\Seen" not in session.refs("INBOX", [uids[1]])[0].flags


def test_single_append_and_missing_message_id(session: ImapSession) -> None:
    """One APPEND (no MULTIAPPEND path) returns its UID; a message without Message-ID has None."""
    raw = b"From: a@example.org\r\nSubject: no id\r\n\r\nbody\r\n"
    [uid] = session.append("INBOX", [NewMessage(raw, frozenset({"\\Seen"}))])
    [ref] = session.refs("INBOX", [uid or 0])
    assert ref.message_id is None and ref.flags == {"\\Seen"}


def test_a_multiappend_of_small_and_large_messages_arrives_byte_for_byte(
    session: ImapSession,
) -> None:
    """One MULTIAPPEND mixing messages sent in joined runs with messages larger than a run
    (sent alone) puts each message in the folder as sent, with its flags and date."""
    big = SEND_COALESCE + 1000

    def sized(n: int, size: int) -> bytes:
        head = message(n)
        return head + (b"y" * 76 + b"\r\n") * max(0, (size - len(head)) // 78)

    sizes = [500, big, 3000, 2 * big, 200, SEND_COALESCE // 3, SEND_COALESCE // 3, 900]
    sent = [
        NewMessage(
            sized(n, size),
            frozenset({"\\Seen"}) if n % 2 else frozenset(),
            frozenset({"$Label1"}) if n % 3 == 0 else frozenset(),
            datetime(2019, 3, 4, 5, 6, n, tzinfo=PLUS_0130),
        )
        for n, size in enumerate(sizes)
    ]
    uids = session.append("INBOX", sent)
    assert len(uids) == len(sent) and all(u is not None for u in uids)
    refs = session.refs("INBOX", [u or 0 for u in uids])
    fetched = {f.uid: f for f in session.fetch("INBOX", refs)}
    assert [fetched[u or 0].raw for u in uids] == [m.raw for m in sent]
    assert [fetched[u or 0].internaldate for u in uids] == [m.internaldate for m in sent]
    assert [fetched[u or 0].flags - {"\\Recent"} for u in uids] == [m.flags for m in sent]
    assert [fetched[u or 0].keywords for u in uids] == [m.keywords for m in sent]


def test_validity_of_the_selected_folder_sends_no_examine(
    session: ImapSession, endpoint: ImapEndpoint, user: ImapUser
) -> None:
    """`validity` answers from the selection when the folder is selected on the connection
    (no command), EXAMINEs when another folder is; a folder deleted while selected ends the
    read with an error, never a read of other messages (Dovecot drops the session)."""
    seed(session, "INBOX", 2)
    validity = session.examine("INBOX")
    commands = session._client._imap.tagnum  # imaplib's tag counter: one per command
    assert session.validity("INBOX") == validity
    assert session._client._imap.tagnum == commands
    session.create_folder(["Other"], "/")
    session.examine("Other")
    commands = session._client._imap.tagnum
    assert session.validity("INBOX") == validity
    assert session._client._imap.tagnum == commands + 1
    session.examine("Other")
    with ImapSession.open(endpoint, Password(user.login, user.password)) as other:
        other.delete_folder("Other")
    assert session.validity("Other") > 0  # the selection's: no command
    with pytest.raises(RemoteError):
        session.refs("Other", [1])


def test_fetch_in_bounded_chunks_keeps_order(session: ImapSession) -> None:
    """Chunks smaller than one message still yield every message once, in the refs' order."""
    seed(session, "INBOX", 7)
    refs = list(session.changes("INBOX", None).new)
    refs.reverse()
    got = list(session.fetch("INBOX", refs, max_count=3, max_bytes=10))
    assert [f.uid for f in got] == [r.uid for r in refs]
    assert all(f.raw.startswith(b"From: a@example.org") for f in got)


# -- folders -------------------------------------------------------------------------------


def test_special_use_folders_map_to_well_known_names(session: ImapSession) -> None:
    """RFC 6154 attributes (and INBOX) become well-known names; virtual views are flagged."""
    roles = {f.name: f.special_use for f in session.list_folders()}
    assert roles == {
        "INBOX": "inbox",
        "Drafts": "drafts",
        "Sent": "sentitems",
        "Trash": "deleteditems",
        "Junk": "junkemail",
    }


def test_folder_names_with_quotes_non_ascii_and_a_deep_tree(session: ImapSession) -> None:
    """Quotes, backslashes, non-ASCII (modified UTF-7 on the wire) and 7 levels round-trip."""
    path = ("Projects", 'Say "hi"', "Ünïcødé 日本", "back\\slash", "a & b", "l6", "l7")
    created = session.create_folder(path, "/")
    assert created.path == path and created.delimiter == "/"
    assert created.uidvalidity and created.uidnext == 1 and created.messages == 0
    seed(session, created.name, 2)
    listed = {f.path: f for f in session.list_folders()}
    for depth in range(1, len(path) + 1):
        assert path[:depth] in listed
    leaf = listed[path]
    assert leaf.selectable and leaf.messages == 2 and leaf.uidnext == 3
    assert leaf.highestmodseq is not None


def test_list_status_gives_each_folder_what_its_own_status_gives(session: ImapSession) -> None:
    """The listing's one LIST-STATUS (RFC 5819, which Dovecot offers) gives every folder,
    odd names included, the counts, UIDNEXT, UIDVALIDITY and HIGHESTMODSEQ that one STATUS
    per folder gives (the path of servers without it)."""
    assert session.caps.list_status
    for n, path in enumerate(
        [('Say "hi"', "back\\slash"), ("Ünïcødé 日本",), ("a & b",), ("2024",), ("x", "y", "z")]
    ):
        seed(session, session.create_folder(path, "/").name, n + 1)
    session.examine("INBOX")  # a selected folder is left before its count is read
    with_list_status = essentials(session.list_folders())
    session.caps = dataclasses.replace(session.caps, list_status=False)
    assert with_list_status == essentials(session.list_folders())
    counts = {path: f["messages"] for path, f in with_list_status.items()}
    assert counts[("Ünïcødé 日本",)] == 2 and counts[("2024",)] == 4
    assert counts[("x", "y", "z")] == 5 and counts[("x",)] is None  # "x" only holds "y"


class RefusedListStatus(ImapSession):
    """A session whose first LIST-STATUS asks for a STATUS item no server knows: Dovecot
    refuses the command, as a server that advertised LIST-STATUS might."""

    asked = 0

    def _status_items(self) -> list[str]:
        self.asked += 1
        return ["MESSAGES", "NO-SUCH-ITEM"] if self.asked == 1 else super()._status_items()


def test_a_refused_list_status_falls_back_to_a_status_per_folder(
    endpoint: ImapEndpoint, user: ImapUser
) -> None:
    """A server that refuses LIST-STATUS though it advertised it: the listing is made the
    plain way (LIST, a STATUS per folder), with the same result, and the session does not
    ask again."""
    with RefusedListStatus.open(endpoint, Password(user.login, user.password)) as s:
        assert isinstance(s, RefusedListStatus) and s.caps.list_status
        seed(s, "Sent", 2)
        refused = essentials(s.list_folders())
        assert not s.caps.list_status and refused[("Sent",)]["messages"] == 2
        assert refused == essentials(s.list_folders())


def essentials(folders: list[ImapFolder]) -> dict[tuple[str, ...], dict[str, Any]]:
    """What the store reads of a listing, by path: the order and the attributes beyond
    those differ (LIST-STATUS is an extended LIST: a parent that is no folder of its own is
    \\NonExistent there, \\Noselect in a plain LIST; both are not selectable)."""
    return {
        f.path: {k: v for k, v in vars(f).items() if k not in ("path", "attributes")}
        for f in folders
    }


def test_slash_in_a_name_under_another_delimiter(
    dovecot: DovecotServer, endpoint: ImapEndpoint
) -> None:
    """With "." as the delimiter, "a/b" is one folder name, and a dot in a part is refused."""
    user = dovecot.new_user("dotted", separator=".")
    with ImapSession.open(endpoint, Password(user.login, user.password)) as s:
        folder = s.create_folder(["Clients", "a/b", 'q"x'], ".")
        assert folder.path == ("Clients", "a/b", 'q"x') and folder.delimiter == "."
        assert ("Clients", "a/b", 'q"x') in {f.path for f in s.list_folders()}
        with pytest.raises(InvalidRequest, match="delimiter"):
            s.create_folder(["v1.2"], ".")


def test_create_existing_folder_returns_it(session: ImapSession) -> None:
    """Creating a folder twice is not an error (a re-run, or another connection first)."""
    first = session.create_folder(["Twice"], "/")
    again = session.create_folder(["Twice"], "/")
    assert again == first


# -- delta ---------------------------------------------------------------------------------


def test_folder_counts_are_current_for_the_selected_folder(
    endpoint: ImapEndpoint, user: ImapUser, session: ImapSession
) -> None:
    """The message count of the folder this connection has selected includes a message
    another connection appended since: Dovecot answers STATUS on the selected folder from
    that session's own view (RFC 3501 6.3.10: STATUS is for folders other than the
    selected one), so a reconciliation read it one short."""
    seed(session, "INBOX", 1)
    session.examine("INBOX")
    with ImapSession.open(endpoint, Password(user.login, user.password)) as other:
        seed(other, "INBOX", 1, subject="other")
    assert {f.name: f.messages for f in session.list_folders()}["INBOX"] == 2
    assert session.folder("INBOX").messages == 2
    assert session.examine("INBOX")  # the session still reads after the count


def test_watermark_returns_new_messages_once(session: ImapSession) -> None:
    """Changes since a watermark are the messages above it; an unchanged folder gives none."""
    seed(session, "INBOX", 2, "first")
    first = session.changes("INBOX", None)
    assert len(first.new) == 2 and not first.reset and not first.more
    seed(session, "INBOX", 1, "second")
    second = session.changes("INBOX", first.next)
    assert [r.message_id for r in second.new] == ["<m0.second@example.org>"]
    assert second.flag_changes == () and second.vanished == ()
    third = session.changes("INBOX", second.next)
    assert third.new == () and third.flag_changes == () and third.vanished == ()
    assert third.next == second.next


def test_limit_returns_new_messages_in_pages(session: ImapSession) -> None:
    """`limit` pages the new messages oldest first; the last page says no more."""
    uids = seed(session, "INBOX", 5)
    mark: Watermark | None = None
    pages = []
    while True:
        page = session.changes("INBOX", mark, limit=2)
        pages.append([r.uid for r in page.new])
        mark = page.next
        if not page.more:
            break
    assert pages == [uids[:2], uids[2:4], uids[4:]]
    assert mark is not None and mark.last_uid == uids[-1] and mark.highestmodseq is not None


def test_uidvalidity_change_is_a_reset(
    dovecot: DovecotServer, session: ImapSession, user: ImapUser
) -> None:
    """A new UIDVALIDITY voids the watermark: every message comes back, with its Message-ID."""
    seed(session, "INBOX", 3)
    before = session.changes("INBOX", None)
    dovecot.set_uidvalidity(user, "INBOX", before.next.uidvalidity + 1000)
    after = session.changes("INBOX", before.next)
    assert after.reset
    assert after.next.uidvalidity == before.next.uidvalidity + 1000
    assert sorted(r.message_id or "" for r in after.new) == sorted(
        r.message_id or "" for r in before.new
    )
    assert after.flag_changes == () and after.vanished == ()


def test_condstore_flag_changes_and_qresync_expunges(session: ImapSession) -> None:
    """Flag changes and expunges below the watermark come back through CONDSTORE/QRESYNC."""
    assert session.caps.condstore and session.caps.qresync
    uids = seed(session, "INBOX", 4)
    mark = session.changes("INBOX", None).next
    session.set_flags("INBOX", uids[1], frozenset({"\\Seen", "\\Flagged"}), frozenset({"$label1"}))
    session.delete("INBOX", [uids[2]])
    seed(session, "INBOX", 1, "later")
    changes = session.changes("INBOX", mark)
    assert [r.message_id for r in changes.new] == ["<m0.later@example.org>"]
    assert changes.flag_changes is not None and changes.vanished == (uids[2],)
    [change] = changes.flag_changes
    assert change.uid == uids[1] and change.flags == {"\\Seen", "\\Flagged"}
    assert change.keywords == {"$label1"}
    quiet = session.changes("INBOX", changes.next)
    assert quiet.new == () and quiet.flag_changes == () and quiet.vanished == ()


def test_move_returns_new_uids_and_delete_expunges_only_those(session: ImapSession) -> None:
    """MOVE maps old UIDs to new ones (COPYUID); delete expunges exactly the given UIDs."""
    archive = session.create_folder(["Archive"], "/")
    uids = seed(session, "INBOX", 4)
    moved = session.move("INBOX", uids[:2], archive.name)
    assert sorted(moved) == uids[:2] and len(set(moved.values())) == 2
    session.delete("INBOX", [uids[3]])
    _, left = session.list_uids("INBOX")
    assert left == [uids[2]]
    _, there = session.list_uids(archive.name)
    assert sorted(there) == sorted(moved.values())


# -- logins and connections ----------------------------------------------------------------


def test_master_user_logs_in_as_the_user(
    dovecot: DovecotServer, endpoint: ImapEndpoint, user: ImapUser
) -> None:
    """Dovecot's `user*master` login opens the user's own mailbox with the master's password."""
    with ImapSession.open(endpoint, Password(user.login, user.password)) as own:
        seed(own, "INBOX", 2, "own")
    creds = MasterPassword(user.login, MASTER_USER, dovecot.master_password)
    with ImapSession.open(endpoint, creds) as admin:
        ids = sorted(r.message_id or "" for r in admin.changes("INBOX", None).new)
    assert ids == ["<m0.own@example.org>", "<m1.own@example.org>"]


def test_starttls_and_plain_mechanism(dovecot: DovecotServer, user: ImapUser) -> None:
    """STARTTLS on the plain port with AUTHENTICATE PLAIN works and sets TCP_NODELAY."""
    ep = ImapEndpoint(dovecot.host, dovecot.port, "starttls", dovecot.ca_file)
    with ImapSession.open(ep, Password(user.login, user.password, "plain")) as s:
        assert s.tcp_nodelay
        assert {f.name for f in s.list_folders(status=False)} >= {"INBOX", "Sent"}


def test_wrong_password_is_a_per_user_error_without_the_password(
    endpoint: ImapEndpoint, user: ImapUser
) -> None:
    """A refused login names the user and the next step; the password appears nowhere."""
    wrong = "Wr0ng-" + user.password
    with pytest.raises(AuthenticationError) as caught:
        ImapSession.open(endpoint, Password(user.login, wrong))
    err = caught.value
    assert not err.stops_run and err.fields["user"] == user.login
    assert user.login in str(err) and "coexist credentials set" in str(err)
    for text in (str(err), repr(err), str(err.to_dict()), repr(Password(user.login, wrong))):
        assert wrong not in text and user.password not in text


def test_wrong_master_password_names_user_and_master(
    endpoint: ImapEndpoint, user: ImapUser
) -> None:
    """A refused master login says which user through which master user."""
    with pytest.raises(
        AuthenticationError, match=f"{user.login} through master user {MASTER_USER}"
    ):
        ImapSession.open(endpoint, MasterPassword(user.login, MASTER_USER, "not-it"))


def test_tls_name_mismatch_is_a_tls_error(dovecot: DovecotServer, user: ImapUser) -> None:
    """A certificate for another name stops with TLSError naming endpoint, cause and fix."""
    ep = ImapEndpoint("localhost", dovecot.tls_port, "tls", dovecot.ca_file)
    with pytest.raises(TLSError) as caught:
        ImapSession.open(ep, Password(user.login, user.password))
    err = caught.value
    assert err.stops_run and err.endpoint == f"imaps://localhost:{dovecot.tls_port}"
    assert "localhost" in err.cause and "ca_file" in (err.next_step or "")


def test_untrusted_certificate_is_a_tls_error(dovecot: DovecotServer, user: ImapUser) -> None:
    """Without the test CA the server's certificate is untrusted: TLSError, never a bypass."""
    ep = ImapEndpoint(dovecot.host, dovecot.port, "starttls", None)
    with pytest.raises(TLSError, match="not trusted"):
        ImapSession.open(ep, Password(user.login, user.password))


def test_implicit_tls_on_the_plain_port_is_a_tls_error(
    dovecot: DovecotServer, user: ImapUser
) -> None:
    """TLS spoken to the STARTTLS port fails the handshake and says which setting to check."""
    ep = ImapEndpoint(dovecot.host, dovecot.port, "tls", dovecot.ca_file, connect_timeout_s=30)
    with pytest.raises(TLSError, match="handshake") as caught:
        ImapSession.open(ep, Password(user.login, user.password))
    assert 'security = "starttls"' in (caught.value.next_step or "")


def test_closed_port_is_unreachable(dovecot: DovecotServer, user: ImapUser) -> None:
    """Nothing listening: Unreachable with the endpoint and what to check."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ep = ImapEndpoint("127.0.0.1", port, "tls", dovecot.ca_file)
    with pytest.raises(Unreachable, match="connection refused") as caught:
        ImapSession.open(ep, Password(user.login, user.password))
    assert caught.value.endpoint == f"imaps://127.0.0.1:{port}"
    assert "[source] host and port" in (caught.value.next_step or "")


def test_xoauth2_login_with_an_access_token(
    dovecot: DovecotServer, endpoint: ImapEndpoint, user: ImapUser
) -> None:
    """AUTHENTICATE XOAUTH2 with a bearer token opens the user's mailbox; a token of another
    user is refused as that login's authentication error, the token nowhere in it."""
    with ImapSession.open(endpoint, OAuth2Token(user.login, dovecot.oauth_token(user))) as s:
        assert s.user == user.login and s.list_folders(status=False)
    other = dovecot.oauth_token(dovecot.new_user())
    with pytest.raises(AuthenticationError, match="OAuth token") as caught:
        ImapSession.open(endpoint, OAuth2Token(user.login, other))
    assert other not in str(caught.value) and other not in repr(caught.value.to_dict())


def test_a_folder_the_server_refuses_is_a_clear_error(session: ImapSession) -> None:
    """APPEND to a missing folder is NotFound naming the folder and user; the session goes on."""
    with pytest.raises(NotFound) as caught:
        session.append("No such folder", [NewMessage(message(1))])
    err = caught.value
    assert err.fields["folder"] == "No such folder" and err.fields["user"] == session.user
    assert "TRYCREATE" in str(err) and not err.stops_run
    assert seed(session, "INBOX", 1)  # the connection is still good


def test_wildcards_in_a_folder_name_find_that_folder_only(session: ImapSession) -> None:
    """ "%" and "*" are LIST wildcards: a folder named with them is still found exactly."""
    session.create_folder(["50 off"], "/")
    wild = session.create_folder(["50% off"], "/")
    assert wild.name == "50% off"
    seed(session, "50 off", 2)
    assert session.folder("50% off").messages == 0
    assert session.folder("50 off").messages == 2
