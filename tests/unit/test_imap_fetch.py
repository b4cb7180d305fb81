"""coexist.tenants.imap_fetch.parse_fetch against imapclient's parse_fetch_response: the same
result for every FETCH answer, the usual ones by the fast road, the rest by imapclient's."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imapclient.datetime_util import parse_to_datetime
from imapclient.exceptions import ProtocolError
from imapclient.response_parser import parse_fetch_response

from coexist.tenants import imap_fetch
from coexist.tenants.imap_fetch import parse_fetch

Record = bytes | tuple[bytes, bytes]

# imaplib's FETCH data as Dovecot and others answer the commands coexist sends.
ANSWERS: list[list[Record]] = [
    [b'1 (UID 7 FLAGS (\\Seen $Forwarded) INTERNALDATE "05-Dec-2026 00:21:22 +0100")'],
    [
        b"1 (UID 7 FLAGS () RFC822.SIZE 4096 MODSEQ (12))",
        b"2 (UID 9 FLAGS (\\Flagged) MODSEQ (13))",
    ],
    [
        (
            b'3 (UID 11 FLAGS (\\Seen) INTERNALDATE " 5-Dec-2026 00:21:22 -0500" BODY[] {10}',
            b"ab)c{2}\r\n(",
        ),
        b")",
        (b"4 (UID 12 BODY[] {0}", b""),
        b' FLAGS (\\Answered) INTERNALDATE "01-Jan-2020 10:00:00 +0000")',
    ],
    [
        (b"5 (UID 13 BODY[HEADER.FIELDS (MESSAGE-ID)] {25}", b"Message-ID: <a@b>\r\n\r\n\r\n\r\n"),
        b" RFC822.SIZE 300)",
    ],
    [(b"6 (UID 14 BODY[HEADER.FIELDS (SUBJECT CONTENT-TYPE)] {2}", b"\r\n"), b")"],
    [b'7 (UID 15 X-QUOTED "a \\"q\\" \\\\ \\x" X-NIL NIL X-ZERO 007 X-EMPTY "")'],
    [b"8 (UID 16 FLAGS (\\Seen))", b"8 (UID 16 MODSEQ (20))"],  # two answers merged
    [b"9 (FLAGS (\\Seen))"],  # no UID: keyed by sequence number
    [b"10 (UID 17 BODY[]<0> {3}"],  # a marker without its literal
    [b"11 (UID 18 X-PCT 50%)"],  # imapclient's lexer makes "%" a token of its own
    [b'12 (UID 19 ENVELOPE (NIL "s" NIL NIL NIL NIL NIL NIL NIL NIL))'],
    [b"13 (UID 20 FLAGS (\\Seen)"],  # unclosed
    [b"14 (UID 21 FLAGS)"],  # uneven
    [b"x (UID 22)"],
    [b'15 (UID 23 X-BAD abc"d")'],
    [b'16 (UID 24 INTERNALDATE "not a date")'],
    [(b"17 (UID 25 BODY[] {3} ", b"abc"), b")"],  # text after the marker
    [b"18 (UID 26 X-CTRL a\x01b)"],
    [b"19 (UID 27 X-HIGH caf\xc3\xa9 X-DEL a\x7fb)"],
    [],
]


def imapclient_of(data: list[Record], normalise: bool) -> Any:
    try:
        return dict(parse_fetch_response(list(data), normalise, True))  # type: ignore[arg-type]
    except (ProtocolError, ValueError, AttributeError, TypeError) as exc:
        return type(exc)


def ours_of(data: list[Record], normalise: bool) -> Any:
    try:
        return dict(parse_fetch(data, normalise))
    except (ProtocolError, ValueError, AttributeError, TypeError) as exc:
        return type(exc)


@pytest.mark.parametrize("normalise", [False, True])
@pytest.mark.parametrize("data", ANSWERS)
def test_each_answer_parses_as_imapclient_parses_it(data: list[Record], normalise: bool) -> None:
    """Every answer shape (literals, sections, quoting, merging, malformed) gives what
    imapclient's parser gives, or the same error."""
    assert ours_of(data, normalise) == imapclient_of(data, normalise)


def test_the_usual_answers_take_the_fast_road() -> None:
    """The answers coexist's commands get are parsed without imapclient's lexer (the point of
    the module): no fallback for them."""
    for data in ANSWERS[:8]:
        imap_fetch._parse(data, False)  # raises _Unusual where it would fall back


_ATOMS = st.sampled_from(
    [b"UID", b"FLAGS", b"\\Seen", b"$Label1", b"NIL", b"0", b"12", b"012", b"BODY[]", b"X]",
     b"BODY[HEADER.FIELDS (A B)]", b"{", b"a{1}", b"%", b"RFC822.SIZE"]
)  # fmt: skip
_QUOTED = st.binary(max_size=8).map(
    lambda b: b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
)


def _item() -> st.SearchStrategy[bytes]:
    return st.recursive(
        st.one_of(_ATOMS, _QUOTED),
        lambda inner: st.lists(inner, max_size=4).map(lambda xs: b"(" + b" ".join(xs) + b")"),
        max_leaves=8,
    )


@st.composite
def answers(draw: st.DrawFn) -> list[Record]:
    out: list[Record] = []
    for n in range(draw(st.integers(0, 3))):
        pairs = draw(st.lists(st.tuples(_ATOMS, _item()), max_size=4))
        text = str(n + 1).encode() + b" (" + b" ".join(k + b" " + v for k, v in pairs)
        if draw(st.booleans()):
            literal = draw(st.binary(max_size=12))
            out.append((text + b" BODY[] {" + str(len(literal)).encode() + b"}", literal))
            out.append(draw(st.sampled_from([b")", b" FLAGS (\\Seen))", b" X"])))
        else:
            out.append(text + draw(st.sampled_from([b")", b"", b"))"])))
    return out


@settings(max_examples=400, deadline=None)
@given(answers(), st.booleans())
def test_generated_answers_parse_as_imapclient_parses_them(
    data: list[Record], normalise: bool
) -> None:
    """Random answers (atoms, quoted bytes, nested lists, literals, broken endings) give what
    imapclient gives, or the same error."""
    assert ours_of(data, normalise) == imapclient_of(data, normalise)


def _same_date(value: bytes) -> tuple[Any, ...]:
    """What imapclient's parser makes of a date: the instant, its zone's offset and name,
    or the error (None where the date cannot be read)."""
    try:
        got = parse_to_datetime(value, normalise=False)
    except ValueError:
        return (None,)
    return _fields(got)


def _fields(got: Any) -> tuple[Any, ...]:
    # A zone past 24 h makes a datetime whose utcoffset() raises (the zone is kept as read).
    tz = got.tzinfo
    offset = tz.utcoffset(None) if tz is not None else None
    return (got.replace(tzinfo=None), type(tz), offset, tz.tzname(None) if tz else None)


def _ours(value: bytes) -> tuple[Any, ...]:
    got = imap_fetch._internaldate(value, False)
    if got is None:
        return (None,)
    return _fields(got)


MONTHS = [
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
    "jan",
    "DEC",
    "Foo",
]


@settings(max_examples=1500, deadline=None)
@given(
    st.sampled_from(["", " ", "0", "00"]),
    st.integers(0, 39),
    st.sampled_from(MONTHS),
    st.sampled_from(["0050", "0999", "1969", "2024", "9999", "99", "12345"]),
    st.tuples(st.integers(0, 25), st.integers(0, 61), st.integers(0, 61)),
    st.sampled_from(["+", "-", ""]),
    st.integers(0, 2400),
)
def test_internaldates_read_as_imapclient_reads_them(
    pad: str,
    day: int,
    month: str,
    year: str,
    hms: tuple[int, int, int],
    sign: str,
    zone: int,
) -> None:
    """INTERNALDATE values, usual and odd (space-padded days, other month spellings, two-
    digit and early years, out-of-range fields, "-0000", zones past 24 h), are read as
    imapclient's `parse_to_datetime` reads them: same instant, zone offset and name, or
    both unreadable (the fast reader hands whatever it does not take to imapclient)."""
    text = f"{pad}{day}-{month}-{year} {hms[0]:02d}:{hms[1]:02d}:{hms[2]:02d} {sign}{zone:04d}"
    assert _ours(text.encode()) == _same_date(text.encode())


def test_the_usual_internaldates_take_the_fast_road() -> None:
    """Server-formatted dates are read without imapclient (the copy reads two per message)."""
    for text in (b"05-Dec-2026 00:21:22 +0100", b" 5-Dec-2026 00:21:22 -0530"):
        assert imap_fetch._fast_date(text) is not None
    for text in (b"05-Dec-2026 00:21:22 -0000", b"05-dec-2026 00:21:22 +0100"):
        assert imap_fetch._fast_date(text) is None
