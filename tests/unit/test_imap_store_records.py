"""The IMAP store's pure parts: Gmail's folder layout, item ids, cursors, change keys, and
flags as the protocol's message state, and the imap-sync mover's registration."""

from __future__ import annotations

import asyncio
import email.errors
import email.header
import re
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coexist.engine.context import Context, ImapServer, SideOptions, open_sides
from coexist.errors import ConfigError, InputError
from coexist.journal import Journal
from coexist.migrate.passes import MOVERS, Window, mover_for
from coexist.migrate.stores.imap import (
    MOVER,
    SCANNED_KEPT,
    SIZES_KEPT,
    Cursor,
    ImapState,
    _decoded,
    _info,
    _parsed_info,
    _Scanned,
    _Sizes,
    endpoint_of,
    folder_tree,
    imap_flags,
    item_id,
    limits_of,
    message_state,
    parse_item_id,
    state_key,
)
from coexist.settings import load_project
from coexist.tenants.imap import VIRTUAL_FOLDERS, ImapFolder, Watermark, special_use_of
from coexist.tenants.protocols import MessageState
from coexist.vault import ENV_KEY, new_key


def gmail(name: str, *attrs: str, selectable: bool = True, messages: int = 0) -> ImapFolder:
    """A folder as Gmail lists it ("/" delimiter, special use from its attributes)."""
    attributes = frozenset(attrs)
    path = tuple(name.split("/"))
    special = "inbox" if name == "INBOX" else special_use_of(attributes)
    return ImapFolder(name, "/", path, special, attributes, selectable, messages=messages)


GMAIL = [
    gmail("INBOX", messages=3),
    gmail("[Gmail]", "\\Noselect", "\\HasChildren", selectable=False),
    gmail("[Gmail]/All Mail", "\\All", messages=9),
    gmail("[Gmail]/Sent Mail", "\\Sent", "\\HasChildren"),
    gmail("[Gmail]/Sent Mail/2019", "\\HasNoChildren"),
    gmail("[Gmail]/Starred", "\\Flagged"),
    gmail("[Gmail]/Important", "\\Important"),
    gmail("[Gmail]/Trash", "\\Trash"),
    gmail("Work/Clients", "\\HasNoChildren"),
    gmail("Work", "\\HasChildren"),
]


def test_gmail_views_are_left_out_and_special_folders_come_to_the_top() -> None:
    """All Mail, Starred and Important are left out (counted); Sent Mail and Trash under the
    [Gmail] container are well-known top folders, a subfolder follows its parent; custom
    folders keep their path; parents come before children."""
    tree = folder_tree(GMAIL)
    got = {f.id: (f.path, f.well_known) for f in tree.folders}
    assert got == {
        "INBOX": (("INBOX",), "inbox"),
        "[Gmail]/Sent Mail": (("Sent Mail",), "sentitems"),
        "[Gmail]/Sent Mail/2019": (("Sent Mail", "2019"), None),
        "[Gmail]/Trash": (("Trash",), "deleteditems"),
        "Work": (("Work",), None),
        "Work/Clients": (("Work", "Clients"), None),
    }
    assert tree.left_out == 3
    order = [f.id for f in tree.folders]
    assert order.index("Work") < order.index("Work/Clients")
    assert tree.folders[0].total == 3


def test_views_can_be_included() -> None:
    """`include_virtual` keeps All Mail, Starred and Important (with their well-known names)."""
    tree = folder_tree(GMAIL, include_virtual=True)
    wk = {f.well_known for f in tree.folders}
    assert {"allmail", "flagged", "important"} <= wk and tree.left_out == 0


GMAIL_SOURCE = """\
[source]
kind = "imap"

[source.imap]
host = "imap.gmail.com"
auth = "xoauth2"
connections_per_mailbox = 15

[target]
kind = "imap"

[target.imap]
host = "new.example.org"
"""


def test_gmail_views_are_left_out_unless_the_project_includes_them(tmp_path: Path) -> None:
    """A Gmail source as a project opens it: All Mail, Important and Starred are not among
    the store's folders by default (they hold copies of labelled mail), and
    `[source.imap] include_virtual_folders = true` brings them back through the side
    opener to the store (`imap_store` passes `ImapServer.include_virtual`)."""

    async def views(text: str) -> list[str | None]:
        (tmp_path / "project.toml").write_text(text)
        async with open_sides(load_project(tmp_path, env={})) as (source, _):
            assert isinstance(source.store, ImapServer)
            tree = folder_tree(GMAIL, source.store.include_virtual)
        return sorted(str(f.well_known) for f in tree.folders if f.well_known in VIRTUAL_FOLDERS)

    assert asyncio.run(views(GMAIL_SOURCE)) == []
    included = GMAIL_SOURCE.replace(
        'auth = "xoauth2"', 'auth = "xoauth2"\ninclude_virtual_folders = true'
    )
    assert asyncio.run(views(included)) == ["allmail", "flagged", "important"]


def test_item_ids_round_trip_any_folder_name() -> None:
    """An item id holds UIDVALIDITY, UID and a folder name with any characters, colons too."""
    for name in ["INBOX", 'a:b "c"/d', "Überweisungen ✓"]:
        assert parse_item_id(item_id(name, 17, 4)) == (name, 17, 4)


def test_cursors_round_trip_with_and_without_known_uids() -> None:
    """A cursor keeps the watermark, and the reported UIDs only when it has them."""
    plain = Cursor(Watermark(5, 90, 1234))
    assert Cursor.parse(plain.text()) == plain
    no_modseq = Cursor(Watermark(5, 0, None), ())
    assert Cursor.parse(no_modseq.text()) == no_modseq
    known = Cursor(Watermark(5, 90, None), (1, 2, 3, 7, 90))
    assert known.text() == "5:90::1:3,7,90" and Cursor.parse(known.text()) == known


def test_change_keys_follow_flags_and_keywords_only() -> None:
    """The change key ignores order and keyword case, and changes with any flag."""
    assert state_key({"\\Seen"}, {"$Label1", "x"}) == state_key({"\\Seen"}, {"X", "$label1"})
    assert state_key({"\\Seen"}, set()) != state_key(set(), set())


def test_flags_round_trip_through_the_message_state() -> None:
    """Flags, keywords and INTERNALDATE become read/draft/flag/categories/received (plus
    \\Answered and the "$" keywords, IMAP's own) and come back unchanged."""
    flags = frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Draft"})
    keywords = frozenset({"$Forwarded", "Project-X", "$label1"})
    when = datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    state = message_state(flags, keywords, when)
    assert (state.read, state.draft, state.flag) == (True, True, {"flagStatus": "flagged"})
    assert state.categories == ("Project-X",) and state.keywords == ("$Forwarded", "$label1")
    assert state.answered and state.received == "2020-01-02T03:04:05+00:00"
    assert imap_flags(state) == (flags, keywords)
    bare = message_state(frozenset(), frozenset(), None)
    assert bare.flag == {"flagStatus": "notFlagged"} and imap_flags(bare) == (frozenset(),) * 2


def test_another_stores_state_sets_what_imap_can_hold() -> None:
    """A Graph-shaped state: a completed flag is no \\Flagged, a category that is no IMAP
    atom (a space) is left out, and no state at all sets no flags."""
    state = MessageState(
        read=True,
        flag={"flagStatus": "complete"},
        categories=("Red category", "Blue"),
        received="2024-05-06T07:08:09Z",
    )
    assert imap_flags(state) == (frozenset({"\\Seen"}), frozenset({"Blue"}))
    assert imap_flags(None) == (frozenset(), frozenset())
    assert not isinstance(state, ImapState)


IMAP_TO_IMAP = """\
[source]
kind = "imap"

[source.imap]
host = "old.example.org"
ca_file = "ca.pem"
connections_per_mailbox = 2

[target]
kind = "imap"

[target.imap]
host = "new.example.org"
security = "starttls"

[domains]
destination_domain = "fabrikam.com"

[migration]
mover = "imap-sync"
"""


def test_imap_sync_moves_imap_to_imap_and_asks_for_credentials(tmp_path: Path) -> None:
    """An imap -> imap project may name imap-sync (mover_for finds the registered mover);
    its sides' settings become the adapter's endpoints and limits; a pass for a user the
    vault has no password for stops with an InputError naming the user and `coexist
    credentials set`, before any connection, never a traceback."""
    (tmp_path / "ca.pem").write_text("")
    (tmp_path / "project.toml").write_text(IMAP_TO_IMAP)
    project = load_project(tmp_path, env={})
    ctx = Context(project, None, None, None)  # type: ignore[arg-type]
    assert mover_for(ctx) is MOVERS[MOVER]
    src = endpoint_of(project.source.imap, "source")
    tgt = endpoint_of(project.target.imap, "target")
    assert (src.host, src.port, src.security) == ("old.example.org", 993, "tls")
    assert src.ca_file is not None and src.ca_file.name == "ca.pem"
    assert (tgt.host, tgt.port, tgt.security, tgt.side) == (
        "new.example.org",
        143,
        "starttls",
        "target",
    )
    limits = limits_of(project.source.imap)
    assert (limits.per_server, limits.per_mailbox) == (10, 2)

    async def one_pass() -> None:
        opts = SideOptions(env={ENV_KEY: new_key()})
        async with open_sides(project, opts) as (source, target):
            with Journal.open(f"sqlite:///{tmp_path / 'j.db'}") as journal:
                ctx = Context(project, journal, source, target)
                await MOVERS[MOVER].run(ctx, "ann@example.org", "prestage", Window())

    with pytest.raises(InputError) as info:
        asyncio.run(one_pass())
    assert "credential vault" in str(info.value) and "ann@example.org" in str(info.value)
    assert "coexist credentials set" in str(info.value.next_step)


def test_imap_sync_is_refused_for_other_kinds() -> None:
    """imap-sync on an m365 -> imap pair is a ConfigError on migration.mover naming kinds."""
    project: Any = SimpleNamespace(
        migration=SimpleNamespace(mover=MOVER),
        source=SimpleNamespace(kind="m365"),
        target=SimpleNamespace(kind="imap"),
        file="/p/project.toml",
    )
    with pytest.raises(ConfigError) as info:
        mover_for(Context(project, None, None, None))  # type: ignore[arg-type]
    assert "does not move m365 -> imap" in str(info.value)


# Header blocks as FETCH BODY.PEEK[HEADER.FIELDS (...)] answers them, and the odd ones.
HEADER_BLOCKS = [
    b"Subject: hello\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
    b"subject: =?utf-8?q?caf=C3=A9?=\r\n =?utf-8?q?_au_lait?=\r\nCONTENT-TYPE: Multipart/Signed;\r\n"
    b'\tprotocol="application/pkcs7-signature"\r\nContent-Class: urn:content-classes:message\r\n\r\n',
    b"Subject:\r\nContent-Type:\r\n\r\n",
    b"Subject: \r\n folded only\r\n\r\n",
    b"Content-Type: application/x-pkcs7-mime; smime-type=enveloped-data\r\n\r\n",
    b"Content-Type: nonsense\r\nSubject: a\r\nSubject: second\r\n\r\n",
    b"Content-Type: a/b/c\r\n\r\n",
    b"Subject: lf only\nContent-Class: rpmsg.message\n\n",
    b"",
    b"\r\n",
    b" folded first\r\nSubject: x\r\n\r\n",
    b"From someone\r\nSubject: x\r\n\r\n",
    b"Subject : spaced name\r\n\r\n",
    b": no name\r\nSubject: x\r\n\r\n",
    b"Subject: x\r\nnot a field\r\nContent-Type: text/html\r\n\r\n",
    b"Subject: 8 bit \xc3\xa9\r\n\r\n",
    b"Subject: lone\rCR\r\n\r\n",
    b"Subject: no end",
    b"Subject: x\r\n\r\nbody: after\r\n",
    b"Subject: =?bogus?q?x?=\r\n\r\n",
]


def _field_lines() -> st.SearchStrategy[bytes]:
    names = st.sampled_from(["Subject", "SUBJECT", "Content-Type", "content-class", "X-A", ""])
    text = st.text(st.sampled_from(list("ab /;=?:\t é\r\n")), max_size=12)
    line = st.builds(
        lambda n, sep, v: f"{n}{sep}{v}", names, st.sampled_from([":", ": ", " :"]), text
    )
    folded = st.builds(lambda ws, v: ws + v, st.sampled_from([" ", "\t"]), text)
    ends = st.sampled_from(["\r\n", "\n", "\r", ""])
    one = st.builds(lambda s, e: s + e, st.one_of(line, folded), ends)
    return st.builds(
        lambda parts, tail: ("".join(parts) + tail).encode("utf-8"),
        st.lists(one, max_size=6),
        st.sampled_from(["\r\n", "\n", "", "\r\nbody\r\n"]),
    )


@pytest.mark.parametrize("block", HEADER_BLOCKS)
def test_fast_header_info_equals_the_compat32_parser_on_curated_blocks(block: bytes) -> None:
    """`_info` answers what the compat32 parser reads of each curated header block (plain,
    folded, repeated, malformed, 8-bit, LF-only, with a body)."""
    assert _info(block) == _parsed_info(block)


@settings(max_examples=1500, deadline=None)
@given(_field_lines())
def test_fast_header_info_equals_the_compat32_parser_on_generated_blocks(block: bytes) -> None:
    """`_info` answers what the compat32 parser reads of any generated header block."""
    assert _info(block) == _parsed_info(block)


@settings(max_examples=1000, deadline=None)
@given(st.text(st.sampled_from(list("ab =?_QqBu8tf-:\t\r\né")), max_size=30))
def test_decoded_header_without_encoded_words_is_what_rfc2047_decoding_answers(
    value: str,
) -> None:
    """`_decoded` answers what email.header's decoding does, its shortcut for text without
    encoded words included."""
    unfolded = re.sub(r"\r?\n(?=[ \t])", "", value)
    try:
        expected = str(email.header.make_header(email.header.decode_header(unfolded)))
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        expected = unfolded
    assert _decoded(value) == expected


def test_sizes_inspect_read_go_to_the_export_only_when_every_one_is_known() -> None:
    """The sizes `inspect` kept are taken once, in UID order, only when all the export's
    messages have one (else the export reads them again); the oldest go past SIZES_KEPT."""
    sizes = _Sizes()
    sizes.keep({item_id("INBOX", 7, 3): 30, item_id("INBOX", 7, 1): 10})
    assert sizes.take({1: item_id("INBOX", 7, 1), 2: item_id("INBOX", 7, 2)}) is None
    got = sizes.take({3: item_id("INBOX", 7, 3), 1: item_id("INBOX", 7, 1)})
    assert got == {1: 10, 3: 30} and list(got) == [1, 3]
    assert sizes.take({1: item_id("INBOX", 7, 1)}) is None  # taken: gone
    sizes.keep({item_id("INBOX", 7, n): n for n in range(SIZES_KEPT + 5)})
    assert sizes.take({0: item_id("INBOX", 7, 0)}) is None
    assert sizes.take({9: item_id("INBOX", 7, 9)}) == {9: 9}


def test_header_blocks_a_scan_read_are_taken_once_and_the_first_ones_are_kept() -> None:
    """What the scan read for `inspect` is taken once per item; past SCANNED_KEPT the new
    ones are not kept (the copy takes items in scan order), the kept ones stay."""
    scanned = _Scanned()
    scanned.keep(item_id("INBOX", 7, 1), 10, b"Subject: a\r\n\r\n")
    got = scanned.take([item_id("INBOX", 7, 1), item_id("INBOX", 7, 2)])
    assert got == {item_id("INBOX", 7, 1): (10, b"Subject: a\r\n\r\n")}
    assert scanned.take([item_id("INBOX", 7, 1)]) == {}  # taken: gone
    for n in range(SCANNED_KEPT + 5):
        scanned.keep(item_id("INBOX", 7, n), n, b"")
    assert scanned.take([item_id("INBOX", 7, SCANNED_KEPT + 1)]) == {}
    assert scanned.take([item_id("INBOX", 7, 0)]) == {item_id("INBOX", 7, 0): (0, b"")}
    scanned.keep(item_id("INBOX", 7, 99999), 1, b"")  # room again: kept
    assert scanned.take([item_id("INBOX", 7, 99999)]) == {item_id("INBOX", 7, 99999): (1, b"")}
