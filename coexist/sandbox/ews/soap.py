"""SOAP 1.1 plumbing of the EWS face: the schema, envelopes in and out, faults.

Every request body (and SOAP header element EWS defines) is validated against the schema
Exchange serves (`coexist/data/ews/messages.xsd`, compiled once per process); a request it
rejects gets Exchange's `ErrorSchemaValidation` SOAP fault with HTTP 500. Every response body
is validated too: a response the schema rejects is a sandbox bug (`ResponseInvalid`).

Fault shape (exchangelib services/common.py `_raise_soap_errors`, which mirrors Exchange;
MS-OXWUMS 2.2.2.1 for ErrorInvalidRequest): `s:Fault/faultcode` "a:<Code>" (a = the types
namespace), `faultstring`, `detail/e:ResponseCode`, `detail/e:Message` (e = the errors
namespace) and `detail/t:MessageXml` (LineNumber/LinePosition/Violation for a schema
violation, `t:Value Name="BackOffMilliseconds"` for ErrorServerBusy).
"""

from __future__ import annotations

import base64
import binascii
import functools
import threading
from collections.abc import Iterable
from importlib import resources
from typing import Any
from xml.etree import ElementTree as ET

import xmlschema

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
E = "http://schemas.microsoft.com/exchange/services/2006/errors"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
for _prefix, _uri in (("s", SOAP), ("m", M), ("t", T), ("e", E)):
    ET.register_namespace(_prefix, _uri)

# SOAP header elements EWS defines (types.xsd globals) that a request may carry.
REQUEST_HEADERS = (
    "RequestServerVersion",
    "ExchangeImpersonation",
    "MailboxCulture",
    "TimeZoneContext",
    "DateTimePrecision",
    "ManagementRole",
    "SerializedSecurityContext",
)

_lock = threading.Lock()


@functools.cache
def schema() -> xmlschema.XMLSchema:
    """The EWS schema (messages.xsd importing types.xsd), compiled once per process (~1 s)."""
    with _lock:
        path = resources.files("coexist") / "data" / "ews" / "messages.xsd"
        return xmlschema.XMLSchema(str(path))


@functools.cache
def response_codes() -> frozenset[str]:
    """Every value of m:ResponseCodeType (the face never emits another)."""
    enum = getattr(schema().maps.types[f"{{{M}}}ResponseCodeType"], "enumeration", None)
    return frozenset(str(v) for v in (enum or []))


@functools.cache
def exchange_versions() -> tuple[str, ...]:
    """t:ExchangeVersionType's values, oldest first (the schema lists them in order)."""
    enum = getattr(schema().maps.types[f"{{{T}}}ExchangeVersionType"], "enumeration", None)
    return tuple(str(v) for v in (enum or []))


@functools.cache
def child_order(type_name: str) -> dict[str, int]:
    """Position of each child element of a complex type (`t:MessageType`...), base type
    first, so the face can emit children in the order the schema's sequence demands."""
    xsd_type: Any = schema().maps.types[type_name]
    order: dict[str, int] = {}
    for el in xsd_type.content.iter_elements():
        local = str(el.name).rsplit("}", 1)[-1]
        order.setdefault(local, len(order))
    return order


@functools.cache
def required_on_error(message_name: str) -> tuple[str, ...]:
    """Children an `m:<Op>ResponseMessage` must have even when it reports an error (Exchange
    sends them empty, e.g. `<m:Items/>`): the required elements its type adds."""
    holder: Any = schema().maps.types[f"{{{M}}}ArrayOfResponseMessagesType"]
    for decl in holder.content.iter_elements():
        if str(decl.name).endswith("}" + message_name):
            base = child_order(f"{{{M}}}ResponseMessageType")
            return tuple(
                str(e.name).rsplit("}", 1)[-1]
                for e in decl.type.content.iter_elements()
                if e.min_occurs and str(e.name).rsplit("}", 1)[-1] not in base
            )
    return ()


class SchemaViolation(Exception):
    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path


class ResponseInvalid(AssertionError):
    """The face built a response the schema rejects: a sandbox bug, never sent quietly."""


# Payload elements (an item's MIME or stream, an attachment's bytes) whose text xmlschema
# checks character by character: ~1 s for 4 MB of base64 here, which bound the face's
# throughput at ~2 MB/s (NOTES-ewspool.md). Their type is xs:base64Binary or xs:string
# without length or pattern facets (types.xsd MimeContentType, ItemType/Data, AttachmentType
# Content; messages.xsd ExportItemsResponseMessageType Data), so a text that strict base64
# decoding accepts is valid there whatever its length: such a text is checked that way and
# stood in for by a short valid one while xmlschema validates the rest of the tree. A text
# the decoder refuses stays for xmlschema to judge, as before.
PAYLOAD_ELEMENTS = frozenset(
    {f"{{{T}}}MimeContent", f"{{{T}}}Data", f"{{{T}}}Content", f"{{{M}}}Data"}
)
PAYLOAD_CHECKED_APART = 64 * 1024  # characters; shorter texts go through xmlschema as they are


def _is_base64(text: str) -> bool:
    try:
        # xs:base64Binary's whitespace facet is "collapse": whitespace anywhere is allowed.
        base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def first_error(element: ET.Element) -> SchemaViolation | None:
    swapped: list[tuple[ET.Element, str]] = []
    for node in element.iter():
        text = node.text
        if (
            node.tag in PAYLOAD_ELEMENTS
            and text is not None
            and len(text) > PAYLOAD_CHECKED_APART
            and _is_base64(text)
        ):
            swapped.append((node, text))
            node.text = "AAAA"
    try:
        for err in schema().iter_errors(element, namespaces={"t": T, "m": M}):
            reason = getattr(err, "reason", None) or str(err).splitlines()[0]
            return SchemaViolation(str(reason), str(getattr(err, "path", "") or ""))
        return None
    finally:
        for node, text in swapped:
            node.text = text


def validate_response(element: ET.Element) -> None:
    err = first_error(element)
    if err is not None:
        raise ResponseInvalid(
            f"EWS face built a response the schema rejects: {err.message} at {err.path}\n"
            + ET.tostring(element, encoding="unicode")[:4000]
        )
    for code in element.iter(f"{{{M}}}ResponseCode"):
        if (code.text or "") not in response_codes():
            raise ResponseInvalid(f"ResponseCode {code.text!r} is not in ResponseCodeType")


# -- building -------------------------------------------------------------------------------------


def el(
    ns: str, name: str, attrs: dict[str, str] | None = None, *children: Any, text: Any = None
) -> ET.Element:
    """An element `{ns}name` with attributes, children (None skipped) and text."""
    node = ET.Element(f"{{{ns}}}{name}", {k: v for k, v in (attrs or {}).items() if v is not None})
    for child in children:
        if child is None:
            continue
        if isinstance(child, ET.Element):
            node.append(child)
        else:
            node.extend(c for c in child if c is not None)
    if text is not None:
        node.text = str(text)
    return node


def t(
    name: str, attrs: dict[str, str] | None = None, *children: Any, text: Any = None
) -> ET.Element:
    return el(T, name, attrs, *children, text=text)


def m(
    name: str, attrs: dict[str, str] | None = None, *children: Any, text: Any = None
) -> ET.Element:
    return el(M, name, attrs, *children, text=text)


def ordered(node: ET.Element, type_name: str, children: Iterable[ET.Element]) -> ET.Element:
    """Append `children` to `node` in the schema order of `type_name`; a property the type
    does not have is left out (as Exchange returns only what applies to the item's type)."""
    order = child_order(type_name)
    known = [c for c in children if c.tag.rsplit("}", 1)[-1] in order]
    for child in sorted(known, key=lambda c: order[c.tag.rsplit("}", 1)[-1]]):
        node.append(child)
    return node


def envelope(header: Iterable[ET.Element], body: ET.Element) -> bytes:
    env = ET.Element(f"{{{SOAP}}}Envelope")
    head = ET.SubElement(env, f"{{{SOAP}}}Header")
    head.extend(header)
    ET.SubElement(env, f"{{{SOAP}}}Body").append(body)
    out: bytes = ET.tostring(env, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="utf-8"?>' + out


def fault(
    code: str,
    message: str,
    header: Iterable[ET.Element] = (),
    message_xml: Iterable[ET.Element] = (),
) -> bytes:
    """Exchange's SOAP fault for `code` (a ResponseCodeType value)."""
    if code not in response_codes():
        raise ResponseInvalid(f"fault code {code!r} is not in ResponseCodeType")
    env = ET.Element(f"{{{SOAP}}}Envelope")
    head = ET.SubElement(env, f"{{{SOAP}}}Header")
    head.extend(header)
    body = ET.SubElement(env, f"{{{SOAP}}}Body")
    flt = ET.SubElement(body, f"{{{SOAP}}}Fault")
    # faultcode is a QName: its prefix "a" must be declared on the element itself.
    fc = ET.SubElement(flt, "faultcode", {"xmlns:a": T})
    fc.text = f"a:{code}"
    fs = ET.SubElement(flt, "faultstring", {"xml:lang": "en-US"})
    fs.text = message
    detail = ET.SubElement(flt, "detail")
    el_code = ET.SubElement(detail, f"{{{E}}}ResponseCode")
    el_code.text = code
    el_msg = ET.SubElement(detail, f"{{{E}}}Message")
    el_msg.text = message
    extra = list(message_xml)
    if extra:
        detail.append(t("MessageXml", None, extra))
    out: bytes = ET.tostring(env, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="utf-8"?>' + out


class Fault(Exception):
    """Raised by a handler to answer with a SOAP fault (HTTP 500, as Exchange)."""

    def __init__(self, code: str, message: str, message_xml: Iterable[ET.Element] = ()) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.message_xml = list(message_xml)


class ParsedRequest:
    """A request envelope taken apart: its EWS header elements and its body operation."""

    def __init__(self, headers: dict[str, ET.Element], body: ET.Element) -> None:
        self.headers = headers
        self.body = body

    @property
    def operation(self) -> str:
        return self.body.tag.rsplit("}", 1)[-1]


def parse_request(data: bytes) -> ParsedRequest:
    """Parse and schema-validate a request; raises Fault as Exchange answers a bad one."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise Fault("ErrorInvalidRequest", "The request is invalid.") from exc
    if root.tag != f"{{{SOAP}}}Envelope":
        raise Fault("ErrorInvalidRequest", "The request is invalid.")
    header = root.find(f"{{{SOAP}}}Header")
    body = root.find(f"{{{SOAP}}}Body")
    children = list(body) if body is not None else []
    if len(children) != 1:
        raise Fault("ErrorInvalidRequest", "The request is invalid.")
    headers: dict[str, ET.Element] = {}
    for h in list(header) if header is not None else []:
        ns, _, local = h.tag[1:].partition("}")
        if ns == T and local in REQUEST_HEADERS:
            _check(h)
            headers[local] = h
    op = children[0]
    if not op.tag.startswith(f"{{{M}}}"):
        raise _violation(SchemaViolation(f"The element '{op.tag}' is not expected."))
    _check(op)
    _check_base64(op)
    return ParsedRequest(headers, op)


# xs:base64Binary elements of requests the face decodes (xmlschema does not check the
# alphabet; Exchange's validating parser does).
BASE64_ELEMENTS = frozenset({f"{{{T}}}MimeContent", f"{{{T}}}Data", f"{{{T}}}Content"})


def _check_base64(op: ET.Element) -> None:
    for node in op.iter():
        if node.tag in BASE64_ELEMENTS and node.text:
            try:
                base64.b64decode("".join(node.text.split()), validate=True)
            except (binascii.Error, ValueError) as exc:
                local = node.tag.rsplit("}", 1)[-1]
                raise _violation(
                    SchemaViolation(
                        f"The '{local}' element is invalid - the value is not valid base64Binary."
                    )
                ) from exc


def _check(element: ET.Element) -> None:
    err = first_error(element)
    if err is not None:
        raise _violation(err)


def _violation(err: SchemaViolation) -> Fault:
    # Line numbers are not tracked by the stdlib parser; Exchange sends them (0 = unknown).
    return Fault(
        "ErrorSchemaValidation",
        "The request failed schema validation: " + err.message,
        [
            t("LineNumber", text=0),
            t("LinePosition", text=0),
            t("Violation", text=err.message),
        ],
    )


def is_true(value: str | None) -> bool:
    """An xs:boolean's value ("true" or "1"; exchangelib writes "1" for some fields)."""
    return (value or "").strip() in ("true", "1")


def text_of(node: ET.Element | None, path: str) -> str | None:
    if node is None:
        return None
    found = node.find(path, {"t": T, "m": M})
    return found.text if found is not None else None


NS = {"t": T, "m": M}
