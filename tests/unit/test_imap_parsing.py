"""The IMAP adapter's pure parsing helpers: sequence sets, flags, headers, answers."""

from __future__ import annotations

import email.parser
import email.policy
import gc
import weakref

from hypothesis import given, settings
from hypothesis import strategies as st

from coexist.tenants import imap
from coexist.tenants.imap import (
    ImapCapabilities,
    ImapConnections,
    ImapEndpoint,
    ImapFolder,
    OAuth2Token,
    Password,
    _copied_uids,
    _folder_of,
    _vanished_uids,
    _with_special_names,
    chunks_by_size,
    freeze_startup_objects,
    parse_message_id,
    parse_sequence_set,
    response_code,
    sequence_set,
    split_flags,
)


def test_sequence_set_round_trip() -> None:
    """UIDs compress to ranges and expand back, whatever their order and repeats."""
    uids = [9, 1, 2, 3, 7, 10, 3]
    assert sequence_set(uids) == "1:3,7,9:10"
    assert parse_sequence_set("1:3,7,10:9") == [1, 2, 3, 7, 9, 10]
    assert sequence_set([]) == ""


def test_split_flags_drops_recent_and_keeps_keyword_case() -> None:
    """System flags are canonical, \\Recent is dropped, keywords stay as spelled."""
    flags, keywords = split_flags(
        [b"\\SEEN", b"\\Recent", b"$Forwarded", b"Project-X", "\\Flagged"]
    )
    assert flags == {"\\Seen", "\\Flagged"}
    assert keywords == {"$Forwarded", "Project-X"}


def test_message_id_is_unfolded() -> None:
    """A folded Message-ID header is one line; a block without one gives None."""
    assert parse_message_id(b"Message-ID:\r\n <a.b@example.org>\r\n\r\n") == "<a.b@example.org>"
    assert parse_message_id(b"\r\n") is None
    assert parse_message_id(None) is None


def test_response_code_and_copyuid_and_vanished() -> None:
    """Response codes, COPYUID pairs and VANISHED (EARLIER) sets are read from answers."""
    assert response_code("[ALREADYEXISTS] Mailbox already exists") == "ALREADYEXISTS"
    assert response_code("Authentication failed.") is None
    assert _copied_uids([b"[COPYUID 77 3:4,9 20:22] Moved UIDs."]) == {3: 20, 4: 21, 9: 22}
    assert _copied_uids([b"Done"]) == {}
    assert _vanished_uids([b"(EARLIER) 3,5:6", b"8"]) == [3, 5, 6, 8]


def test_chunks_are_bounded_by_count_and_bytes() -> None:
    """Runs stop at the count or the byte bound; an item larger than the bound is alone."""
    sizes = [3, 3, 3, 20, 1, 1, 1]
    runs = list(chunks_by_size(sizes, lambda n: n, max_count=2, max_bytes=7))
    assert runs == [[3, 3], [3], [20], [1, 1], [1]]


def test_folders_without_special_use_get_roles_from_usual_names() -> None:
    """Without RFC 6154 attributes, "INBOX.Sent" and "Deleted Items" get their roles."""
    listed = [
        _folder_of([b"\\HasChildren"], b".", "INBOX"),
        _folder_of([], b".", "INBOX.Sent"),
        _folder_of([], b".", "Deleted Items"),
        _folder_of([], b".", "Projects.Sent"),
        _folder_of([b"\\Noselect"], None, "Flat"),
    ]
    roles = {f.name: f.special_use for f in _with_special_names(listed)}
    assert roles == {
        "INBOX": "inbox",
        "INBOX.Sent": "sentitems",
        "Deleted Items": "deleteditems",
        "Projects.Sent": None,
        "Flat": None,
    }
    flat = _with_special_names(listed)[-1]
    assert flat.path == ("Flat",) and not flat.selectable


def test_gmail_virtual_folders_are_marked() -> None:
    """\\All, \\Flagged and \\Important are views, not folders to copy."""
    folders: list[ImapFolder] = [
        _folder_of([b"\\All", b"\\HasNoChildren"], b"/", "[Gmail]/All Mail"),
        _folder_of([b"\\Flagged"], b"/", "[Gmail]/Starred"),
        _folder_of([b"\\Important"], b"/", "[Gmail]/Important"),
        _folder_of([b"\\Sent"], b"/", "[Gmail]/Sent Mail"),
    ]
    assert [f.virtual for f in folders] == [True, True, True, False]


def test_capabilities_and_secret_reprs() -> None:
    """QRESYNC implies CONDSTORE; passwords and tokens never show in a repr."""
    caps = ImapCapabilities.parse([b"IMAP4rev1", b"QRESYNC", b"MOVE"])
    assert caps.condstore and caps.qresync and caps.move and not caps.multiappend
    assert "hunter2" not in repr(Password("a", "hunter2"))
    assert "tok-123" not in repr(OAuth2Token("a", "tok-123"))


def _parsed_message_id(block: bytes) -> str | None:
    """What the email package makes of a Message-ID block (parse_message_id's other road)."""
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(block)
    value = headers.get("Message-ID")
    return None if value is None else (" ".join(str(value).split()) or None)


_ID_BYTES = st.sampled_from([b"<", b">", b"@", b"a", b"Z", b"9", b".", b" ", b"\t", b"=?", b":"])


@settings(max_examples=1500, deadline=None)
@given(
    st.sampled_from([b"Message-ID", b"message-id", b"MESSAGE-ID", b"Message-Id", b"Message-ID "]),
    st.lists(st.one_of(_ID_BYTES, st.binary(max_size=2)), max_size=12).map(b"".join),
    st.sampled_from([b"\r\n\r\n", b"\r\n", b"\n\n", b"\r\n \r\n\r\n", b"\r\n X\r\n\r\n", b""]),
)
def test_message_id_blocks_read_as_the_email_parser_reads_them(
    name: bytes, value: bytes, end: bytes
) -> None:
    """Generated Message-ID blocks (any case of the name, spaces, tabs, 8-bit and control
    bytes, folded or bare-LF endings, no blank line) give what the email package's
    compat32 parser gives: the fast reader takes only the plain one-line shape."""
    block = name + b":" + value + end
    assert parse_message_id(block) == _parsed_message_id(block)


def test_the_usual_message_id_block_takes_the_fast_road() -> None:
    """Dovecot's answer shape is read by the regular expression (no parser needed)."""
    assert imap._PLAIN_MESSAGE_ID.match(b"Message-ID: <a@b>\r\n\r\n") is not None
    assert parse_message_id(b"Message-ID:  <a@b> \r\n\r\n") == "<a@b>"
    # The scan's block (the Message-ID among the inspect fields) too.
    block = b"Subject: x\r\nMessage-ID:  <a@b> \r\nContent-Class: y\r\n\r\n"
    assert imap._PLAIN_LINES.match(block) is not None and parse_message_id(block) == "<a@b>"


def test_a_session_ended_for_an_expired_token_is_transient() -> None:
    """Exchange Online's "Session invalidated - AccessTokenExpired" (as BYE, an abort, or as
    NO) and RFC 5530's [EXPIRED] map to a TransientError with code EXPIRED, retried over a
    new login; any other refusal keeps its own mapping."""
    from imapclient import exceptions as imap_errors

    from coexist.errors import InvalidRequest, TransientError

    mapper = imap._ErrorMapper(imap.ImapEndpoint("imap.example.org"), "ann@example.org")
    bye = imap_errors.IMAPClientAbortError("Session invalidated - AccessTokenExpired")
    no = imap_errors.IMAPClientError("fetch failed: Session invalidated - AccessTokenExpired")
    code = imap_errors.IMAPClientError("select failed: [EXPIRED] token no longer valid")
    for exc in (bye, no, code):
        assert imap.token_expired(exc)
        mapped = mapper.command_failure(exc, "UID FETCH", "INBOX")
        assert isinstance(mapped, TransientError) and mapped.code == "EXPIRED", mapped
        assert "OAuth token expired" in mapped.message and mapped.retryable
    other = imap_errors.IMAPClientError("select failed: [CANNOT] no such thing")
    assert not imap.token_expired(other)
    assert isinstance(mapper.command_failure(other, "SELECT", "INBOX"), InvalidRequest)


_OTHER_FIELDS = st.sampled_from(
    [
        b"Subject: hello\r\n",
        b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n",
        b"Content-Type: multipart/signed;\r\n protocol=x\r\n",
        b"Content-Class: urn:content-classes:message\r\n",
        b"Message-ID: <second@x>\r\n",
        b"Subject: caf\xc3\xa9\r\n",
        b"X: y\r\n",
    ]
)


@settings(max_examples=800, deadline=None)
@given(
    st.lists(_OTHER_FIELDS, max_size=3),
    st.lists(st.one_of(_ID_BYTES, st.binary(max_size=2)), max_size=12).map(b"".join),
    st.lists(_OTHER_FIELDS, max_size=3),
    st.sampled_from([b"\r\n\r\n", b"\r\n", b"\n\n", b"\r\n X\r\n\r\n", b""]),
)
def test_message_ids_among_other_fields_read_as_the_email_parser_reads_them(
    before: list[bytes], value: bytes, after: list[bytes], end: bytes
) -> None:
    """A scan's header block holds the Message-ID among the inspect fields (any order, a
    second Message-ID, folded, 8-bit, no field at all): the Message-ID read is the
    compat32 parser's (the first one), by the plain-field reader or the parser."""
    block = b"".join(before) + b"Message-ID:" + value + end.replace(b"\r\n\r\n", b"\r\n")
    block += b"".join(after) + (b"\r\n" if end.endswith(b"\r\n\r\n") else b"")
    assert parse_message_id(block) == _parsed_message_id(block)
    fields = b"".join(before + after) + b"\r\n"
    assert parse_message_id(fields) == _parsed_message_id(fields)


class _Node:
    """An object in a reference cycle (only the collector frees it)."""

    def __init__(self) -> None:
        self.me = self


def test_the_first_connection_pool_freezes_what_start_up_made_and_later_garbage_is_freed() -> None:
    """A process's first ImapConnections moves the objects alive then out of the
    collector's sight (once: later pools freeze nothing more); a cycle made afterwards is
    still collected."""
    ImapConnections(ImapEndpoint("127.0.0.1", 993, "tls", None))
    frozen = gc.get_freeze_count()
    assert frozen > 0 and freeze_startup_objects()
    ImapConnections(ImapEndpoint("127.0.0.1", 993, "tls", None))
    assert gc.get_freeze_count() == frozen  # once per process
    node = _Node()
    gone = weakref.ref(node)
    del node
    gc.collect()
    assert gone() is None


def test_flag_lists_split_the_same_from_any_iterable() -> None:
    """A FETCH answer's tuple (kept per distinct list) and any other iterable split alike:
    system flags in their canonical case, \\Recent dropped, keywords as given."""
    raw = (b"\\SEEN", b"\\Recent", b"\\flagged", b"$Forwarded", "Project-X")
    want = (frozenset({"\\Seen", "\\Flagged"}), frozenset({"$Forwarded", "Project-X"}))
    assert split_flags(raw) == split_flags(list(raw)) == split_flags(iter(raw)) == want
    assert split_flags(raw) == want  # again, from the cache
