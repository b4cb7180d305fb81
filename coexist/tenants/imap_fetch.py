"""FETCH answers parsed with a few regular expressions instead of imapclient's lexer.

imapclient's `parse_fetch_response` reads each answer one byte at a time in Python (a
generator step and a bytearray append per byte): for 2,000 small messages that was the
largest piece of a copy's client CPU after the bodies themselves (bench/imap_bench.py).
`parse_fetch` gives the same dict for the answers coexist asks for (UID, FLAGS,
INTERNALDATE, RFC822.SIZE, MODSEQ, BODY[...] sections, in any order and with literals), by
the same rules as imapclient's lexer and parser (imapclient.response_lexer and
response_parser: tokens, quoting and escapes, NIL, numbers, `[...]` sections, literals,
several answers for one message merged). Anything else (ENVELOPE, BODYSTRUCTURE, a `%`
or a control character outside a literal or quotes, a malformed answer) goes to
imapclient's parser, unchanged: this is only a faster road to the same result, and
tests/unit/test_imap_fetch.py holds it to imapclient's on every shape it takes.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from imapclient.datetime_util import parse_to_datetime
from imapclient.fixed_offset import FixedOffset
from imapclient.response_parser import parse_fetch_response

# One token, after optional whitespace (imapclient's WHITESPACE): "(", ")", a quoted string
# with its quotes (a backslash escapes the next byte), or a word: bytes that are neither
# control characters nor imapclient's specials (space ( ) % " [), with `[...]` sections
# taken whole (no escapes), and a quote right after it (which imapclient refuses); or any
# other byte but whitespace, which no token starts with (the answer is unusual). Every
# byte but whitespace starts a match, so `findall` (the whole record in one C call, ~15 %
# less CPU than a `match` per token, NOTES-ratiocpu.md) skips only whitespace: between
# tokens, and at the end of the record.
_TOKENS = re.compile(
    rb'[ \t\r\n]*(?:(\()|(\))|("(?:[^"\\]|\\.)*")|((?:[^\x00-\x20()%"\[]|\[[^\]]*\])+)("?)'
    rb"|([^ \t\r\n]))",
    re.S,
)
_ESCAPE = re.compile(rb"\\(.)", re.S)
# Items whose values imapclient converts into its own types: left to its parser.
_CONVERTED = frozenset({b"ENVELOPE", b"BODY", b"BODYSTRUCTURE"})
_OPEN, _CLOSE = object(), object()


class _Unusual(Exception):
    """An answer this parser does not take (imapclient's parser will)."""


def parse_fetch(
    data: Sequence[bytes | tuple[bytes, bytes]], normalise_times: bool
) -> dict[int, dict[bytes, Any]]:
    """imaplib's FETCH answer `data` (lines, and (line, literal) pairs) as imapclient's
    `parse_fetch_response(data, normalise_times, uid_is_key=True)` gives it."""
    try:
        return _parse(data, normalise_times)
    except _Unusual:
        parsed: dict[int, dict[bytes, Any]] = parse_fetch_response(
            list(data), normalise_times, True
        )
        return parsed


def _parse(
    data: Sequence[bytes | tuple[bytes, bytes]], normalise_times: bool
) -> dict[int, dict[bytes, Any]]:
    values = _values(data)
    out: defaultdict[int, dict[bytes, Any]] = defaultdict(dict)
    i = 0
    while i < len(values):
        seq = values[i]
        if not isinstance(seq, int) or i + 1 >= len(values):
            raise _Unusual
        items = values[i + 1]
        if not isinstance(items, tuple) or len(items) % 2:
            raise _Unusual
        i += 2
        key = seq
        fields: dict[bytes, Any] = {b"SEQ": seq}
        for n in range(0, len(items), 2):
            name, value = items[n], items[n + 1]
            if not isinstance(name, bytes):
                raise _Unusual
            word = name.upper()
            if word in _CONVERTED:
                raise _Unusual
            if word == b"UID":
                if not isinstance(value, int):
                    raise _Unusual
                key = value
            elif word == b"INTERNALDATE":
                fields[word] = _internaldate(value, normalise_times)
            else:
                fields[word] = value
        out[key].update(fields)
    return out


# RFC 3501's date-time as servers send it ("05-Dec-2026 00:21:22 +0100", the day may be
# space-padded): read here without imapclient's road through email.utils.parsedate_tz
# (~17 us a date, and the copy reads each message's INTERNALDATE twice: scan and body
# FETCH). Anything else (other month spellings, "-0000", which parsedate_tz reads as "no
# zone") goes to imapclient as before; tests/unit/test_imap_fetch.py holds both to the
# same result.
_DATE = re.compile(
    rb"\A ?(\d{1,2})-(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)-([1-9]\d{3}) "
    rb"(\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)\Z"
)
_MONTHS = {
    m: n for n, m in enumerate(b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), 1)
}
_ZONES: dict[bytes, FixedOffset] = {}  # one tzinfo per offset seen, as imapclient's equals


def _fast_date(value: bytes) -> datetime | None:
    """The date imapclient's `parse_to_datetime(value, normalise=False)` gives, or None
    where this reader does not take it."""
    m = _DATE.match(value)
    if m is None:
        return None
    day, month, year, hh, mm, ss, sign, zh, zm = m.groups()
    zone = sign + zh + zm
    tz = _ZONES.get(zone)
    if tz is None:
        seconds = int(zh) * 3600 + int(zm) * 60
        if sign == b"-":
            if not seconds:
                return None  # "-0000": parsedate_tz's "no zone" (a naive datetime)
            seconds = -seconds
        tz = _ZONES.setdefault(zone, FixedOffset(seconds / 60))  # parse_to_datetime's
    try:
        return datetime(int(year), _MONTHS[month], int(day), int(hh), int(mm), int(ss), 0, tz)
    except ValueError:
        return None  # out of range (a 31st of April ...): imapclient says what it says


def _internaldate(value: Any, normalise_times: bool) -> Any:
    # imapclient's _convert_INTERNALDATE: None stays None, an unreadable date becomes None.
    if value is None:
        return None
    if not isinstance(value, bytes):
        raise _Unusual
    if not normalise_times and (fast := _fast_date(value)) is not None:
        return fast
    try:
        return parse_to_datetime(value, normalise=normalise_times)
    except ValueError:
        return None


def _values(data: Sequence[bytes | tuple[bytes, bytes]]) -> list[Any]:
    """The top-level values of the answer: numbers, bytes, None and nested tuples."""
    stack: list[list[Any]] = [[]]
    for record in data:
        if isinstance(record, tuple):
            text, literal = record
        else:
            text, literal = record, None
        tokens = _tokens(text, literal)
        for token in tokens:
            if token is _OPEN:
                stack.append([])
            elif token is _CLOSE:
                if len(stack) == 1:
                    raise _Unusual
                done = tuple(stack.pop())
                stack[-1].append(done)
            else:
                stack[-1].append(token)
    if len(stack) != 1:
        raise _Unusual
    return stack[0]


def _tokens(text: bytes, literal: bytes | None) -> list[Any]:
    """One record's tokens as values (the literal in place of its `{n}` marker)."""
    out: list[Any] = []
    found = _TOKENS.findall(text)
    last = len(found) - 1
    for k, (opened, closed, quoted, word, quote_after, _other) in enumerate(found):
        if opened:
            out.append(_OPEN)
        elif closed:
            out.append(_CLOSE)
        elif quoted:
            quoted = quoted[1:-1]
            out.append(_ESCAPE.sub(_unescape, quoted) if b"\\" in quoted else quoted)
        elif word and not quote_after:  # a quote right after a word: imapclient refuses it
            # A literal's marker must end the record: the last token, nothing after it.
            out.append(_word(word, literal, at_end=k == last and text.endswith(word)))
        else:
            raise _Unusual  # `_other`: a byte no token starts with
    if literal is not None and (not out or out[-1] is not literal):
        raise _Unusual
    return out


def _word(word: bytes, literal: bytes | None, *, at_end: bool) -> Any:
    if word == b"NIL":
        return None
    if word[:1] == b"{":
        # A literal's marker ends its record (imaplib splits the line there; imapclient
        # refuses a record with anything after it).
        if literal is None or not at_end or word[-1:] != b"}" or not word[1:-1].isdigit():
            raise _Unusual
        if len(literal) != int(word[1:-1]):
            raise _Unusual
        return literal
    if word.isdigit() and (word[:1] != b"0" or len(word) == 1):
        return int(word)
    return word


def _unescape(m: re.Match[bytes]) -> bytes:
    # imapclient's read_until: a backslash drops before a backslash or a quote, else stays.
    char = m.group(1)
    return char if char in (b"\\", b'"') else m.group(0)
