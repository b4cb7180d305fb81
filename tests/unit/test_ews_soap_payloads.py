"""The EWS face's schema check of large payloads (`soap.first_error`): a large base64 text is
checked by strict decoding and the rest of the tree by xmlschema, so every request and
response is still validated whole, and nothing the schema rejects gets through."""

from __future__ import annotations

import base64
from xml.etree import ElementTree as ET

from coexist.sandbox.ews import soap

M, T = soap.M, soap.T
BIG = soap.PAYLOAD_CHECKED_APART * 2


def upload(data: str, action: str = 'CreateAction="CreateNew"') -> ET.Element:
    return ET.fromstring(
        f'<m:UploadItems xmlns:m="{M}" xmlns:t="{T}"><m:Items><t:Item {action}>'
        f'<t:ParentFolderId Id="AAMk"/><t:Data>{data}</t:Data></t:Item></m:Items>'
        "</m:UploadItems>"
    )


def test_a_large_base64_payload_validates_and_keeps_its_text() -> None:
    """A valid request with a payload above the threshold validates, and the element's text
    is the payload again afterwards (the stand-in never leaks into the served request)."""
    data = base64.b64encode(b"x" * BIG).decode()
    op = upload(data)
    assert soap.first_error(op) is None
    assert op.find(f".//{{{T}}}Data") is not None
    assert op.find(f".//{{{T}}}Data").text == data  # type: ignore[union-attr]


def test_a_large_payload_that_is_not_base64_is_still_refused() -> None:
    """xs:base64Binary's alphabet: a large t:Data that strict decoding refuses is left to
    xmlschema, which rejects it as before."""
    bad = "!" * BIG
    assert soap.first_error(upload(bad)) is not None


def test_the_rest_of_a_request_with_a_large_payload_is_still_validated() -> None:
    """A schema violation beside a large payload (t:Item without its required CreateAction)
    is found: only the payload's text is checked apart."""
    data = base64.b64encode(b"x" * BIG).decode()
    assert soap.first_error(upload(data, action="")) is not None
