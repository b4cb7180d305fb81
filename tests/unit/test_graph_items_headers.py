"""What a planned graph-items export reads instead of the MIME: the top-level Content-Type
from `internetMessageHeaders` and PidTagMessageSize from an expanded extended property."""

from __future__ import annotations

from coexist.migrate.stores.graph_items import (
    MESSAGE_SIZE_PROP,
    extended_int,
    header_info,
    mime_info,
)


def test_the_content_type_header_reads_as_the_mime_s_own() -> None:
    """Any case of the header's name; a folded value unfolded and lower-cased as
    `mime_info` gives it from the MIME itself."""
    value = 'Application/PKCS7-MIME; smime-type=enveloped-data;\r\n\tname="smime.p7m"'
    headers = [
        {"name": "Received", "value": "from a by b"},
        {"name": "content-TYPE", "value": value},
    ]
    mime = f"Subject: s\r\nContent-Type: {value}\r\n\r\nAAAA\r\n".encode()
    assert header_info(headers) == mime_info(mime)
    assert "application/pkcs7-mime" in str(mime_info(mime).content_type)


def test_the_content_class_of_irm_mail_is_read_from_headers_and_mime_alike() -> None:
    """IRM mail is multipart with Content-Class "rpmsg.message" (MS-OXBBODY 2.1.3.4): both
    readers give the class, lower case, so the skip rules see it in a plan and a pass."""
    headers = [
        {"name": "Content-Type", "value": 'multipart/mixed; boundary="b"'},
        {"name": "content-class", "value": "RPMSG.Message"},
    ]
    mime = b'Content-Class: RPMSG.Message\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
    assert header_info(headers) == mime_info(mime)
    assert mime_info(mime).content_class == "rpmsg.message"


def test_headers_without_a_content_type_say_none() -> None:
    """No Content-Type (or no headers at all, as Graph leaves them out) is None: the caller
    reads the MIME instead of taking the message for plain."""
    assert header_info([{"name": "Subject", "value": "x"}]) is None
    assert header_info([{"name": "Content-Class", "value": "rpmsg.message"}]) is None
    assert header_info(None) is None
    assert header_info([]) is None


def test_the_message_size_comes_from_its_expanded_property() -> None:
    """`Integer 0x0E08` as Graph renders it (a string), matched without case; absent: None."""
    item = {"singleValueExtendedProperties": [{"id": "integer 0x0e08", "value": "4711"}]}
    assert extended_int(item, MESSAGE_SIZE_PROP) == 4711
    assert extended_int({}, MESSAGE_SIZE_PROP) is None
    assert extended_int({"singleValueExtendedProperties": [{"id": MESSAGE_SIZE_PROP}]},
                        MESSAGE_SIZE_PROP) is None  # fmt: skip
