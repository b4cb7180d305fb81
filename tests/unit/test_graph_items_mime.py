"""graph_items' JSON create of a MIME payload from a source that is not Graph (IMAP): the
dates as Graph writes them, the submit time from the Date header, a one-part message's
content kept as its attachment."""

from __future__ import annotations

from coexist.migrate.stores.graph_items import (
    attachments_of,
    message_payload,
    parse_mime,
    submit_time,
    utc_time,
)
from coexist.tenants.protocols import MessageState

HEAD = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: s\r\nMessage-ID: <m@example.org>\r\n"
IMAP_STATE = MessageState(read=True, received="2019-03-04T05:06:07+01:30")


def test_times_are_written_in_utc_as_graph_writes_them() -> None:
    """An INTERNALDATE with the sender's offset becomes Graph's UTC "Z" spelling."""
    assert utc_time("2019-03-04T05:06:07+01:30") == "2019-03-04T03:36:07Z"
    assert utc_time("2019-03-04T03:36:07Z") == "2019-03-04T03:36:07Z"
    assert utc_time("2019-03-04T03:36:07") == "2019-03-04T03:36:07Z"  # naive: UTC


def test_the_submit_time_comes_from_the_state_then_the_date_header_then_delivery() -> None:
    """A Graph source's sentDateTime wins; an IMAP source's Date header gives it; a missing or
    unreadable Date falls back to the delivery time; a draft has none."""
    dated = parse_mime(HEAD + b"Date: Sun, 03 Mar 2019 10:00:00 -0500\r\n\r\nbody\r\n")
    undated = parse_mime(HEAD + b"\r\nbody\r\n")
    garbled = parse_mime(HEAD + b"Date: yesterday-ish\r\n\r\nbody\r\n")
    graph = MessageState(sent="2019-03-01T00:00:00Z", received="2019-03-01T00:00:05Z")
    assert submit_time(dated, graph) == "2019-03-01T00:00:00Z"
    assert submit_time(dated, IMAP_STATE) == "2019-03-03T15:00:00Z"
    assert submit_time(undated, IMAP_STATE) == "2019-03-04T03:36:07Z"
    assert submit_time(garbled, IMAP_STATE) == "2019-03-04T03:36:07Z"
    assert submit_time(dated, MessageState(draft=True)) is None


def test_the_create_is_not_a_draft_and_carries_both_dates() -> None:
    """PR_MESSAGE_FLAGS has the read bit and not MSGFLAG_UNSENT; delivery and submit times
    are SystemTime properties in UTC."""
    msg = parse_mime(HEAD + b"Date: Sun, 03 Mar 2019 10:00:00 +0000\r\n\r\nbody\r\n")
    props = {p["id"]: p["value"] for p in message_payload(msg, IMAP_STATE, "7:1:INBOX")[
        "singleValueExtendedProperties"]}  # fmt: skip
    assert props["Integer 0x0E07"] == "1"
    assert props["SystemTime 0x0E06"] == "2019-03-04T03:36:07Z"
    assert props["SystemTime 0x0039"] == "2019-03-03T10:00:00Z"


def test_a_message_of_one_non_text_part_keeps_it_as_its_attachment() -> None:
    """A scanner's message (the whole body one PDF) keeps the PDF; a plain text one has none."""
    pdf = parse_mime(
        HEAD + b"MIME-Version: 1.0\r\nContent-Type: application/pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n"
    )
    [part] = attachments_of(pdf)
    assert (part.name, part.content_type, part.data) == ("attachment.pdf", "application/pdf",
                                                          b"%PDF-1.4\n")  # fmt: skip
    assert attachments_of(parse_mime(HEAD + b"\r\nbody\r\n")) == []
