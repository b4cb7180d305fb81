"""How an APPEND's pieces go to the socket (`coexist.tenants.imap._Coalesced`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from coexist.tenants.imap import SEND_COALESCE, _Coalesced


def test_small_pieces_go_in_joined_runs_and_a_large_one_alone_uncopied() -> None:
    """Small pieces are joined into sends of about SEND_COALESCE bytes; a piece of that size
    goes alone, as the caller's own object, after what was pending."""
    sent: list[bytes] = []
    out = _Coalesced(sent.append)
    big = b"b" * SEND_COALESCE
    out.add(b"1 APPEND INBOX")
    out.add(b" () {3+}\r\n")
    out.add(b"abc")
    out.add(big)
    out.add(b"\r\n")
    out.flush()
    assert sent == [b"1 APPEND INBOX () {3+}\r\nabc", big, b"\r\n"]
    assert sent[1] is big


@given(st.lists(st.integers(min_value=0, max_value=2 * SEND_COALESCE), max_size=30))
def test_what_is_sent_is_the_pieces_in_order_in_bounded_runs(sizes: list[int]) -> None:
    """Whatever the sizes, the bytes sent are the pieces in order, and no joined send is
    larger than SEND_COALESCE plus one piece below it."""
    pieces = [bytes([65 + n % 26]) * size for n, size in enumerate(sizes)]
    sent: list[bytes] = []
    out = _Coalesced(sent.append)
    for piece in pieces:
        out.add(piece)
    out.flush()
    assert b"".join(sent) == b"".join(pieces)
    assert all(len(s) < 2 * SEND_COALESCE or s in pieces for s in sent)
    assert b"" not in sent
