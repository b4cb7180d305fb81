"""WS-Management SOAP as WinRM speaks it for a PowerShell shell (MS-WSMV, MS-PSRP 3.1.5).

Only the messages a PSRP client sends are read: Create (the runspace pool, its
`creationXml`), Command (a pipeline, its first fragments in `Arguments`), Send, Receive,
Signal and Delete (pypsrp `wsman.py`/`shell.py` build exactly these). Answers carry
`wsa:RelatesTo` = the request's MessageID, which pypsrp checks.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "wsa": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "wsman": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "wsmv": "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "wst": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "pwsh": "http://schemas.microsoft.com/powershell",
    "wsmanfault": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
}
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)

TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer/"
SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/"
ACTIONS = {
    TRANSFER + "Create": "Create",
    TRANSFER + "Delete": "Delete",
    SHELL + "Command": "Command",
    SHELL + "Send": "Send",
    SHELL + "Receive": "Receive",
    SHELL + "Signal": "Signal",
}
RESOURCE_PREFIX = "http://schemas.microsoft.com/powershell/"
DONE = SHELL + "CommandState/Done"
RUNNING = SHELL + "CommandState/Running"
SIGNAL_TERMINATE = SHELL + "signal/terminate"
ANONYMOUS = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
# MS-WSMV error codes (winerror.h): the operation timed out (pypsrp retries a Receive on
# it), the shell was not found, the resource URI is not supported.
ERROR_OPERATION_TIMEOUT = 2150858793
ERROR_SHELL_NOT_FOUND = 2150858843
ERROR_INVALID_RESOURCE_URI = 2150858811


def q(prefix: str, local: str) -> str:
    return f"{{{NS[prefix]}}}{local}"


class Fault(Exception):
    """A WS-Management fault (HTTP 500 with a SOAP Fault body, as WinRM answers)."""

    def __init__(self, code: int, subcode: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.subcode = subcode
        self.reason = reason


@dataclass
class Request:
    action: str  # Create, Delete, Command, Send, Receive, Signal
    message_id: str
    resource_uri: str
    selectors: dict[str, str]
    options: dict[str, str]
    body: ET.Element
    to: str = ""
    max_envelope: int = 0  # wsman:MaxEnvelopeSize (bytes) the client accepts


def parse(data: bytes) -> Request:
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise Fault(2150858774, "w:InvalidMessageInformationHeader", f"Bad XML: {exc}") from exc
    header = root.find("s:Header", NS)
    body = root.find("s:Body", NS)
    if header is None or body is None:
        raise Fault(2150858774, "w:InvalidMessageInformationHeader", "No SOAP header or body.")
    action_uri = (header.findtext("wsa:Action", "", NS) or "").strip()
    action = ACTIONS.get(action_uri)
    if action is None:
        raise Fault(
            2150858802, "a:ActionNotSupported", f"The action {action_uri} is not supported."
        )
    selectors = {
        s.get("Name", ""): (s.text or "")
        for s in header.findall("wsman:SelectorSet/wsman:Selector", NS)
    }
    options = {
        o.get("Name", ""): (o.text or "")
        for o in header.findall("wsman:OptionSet/wsman:Option", NS)
    }
    return Request(
        action=action,
        message_id=(header.findtext("wsa:MessageID", "", NS) or "").strip(),
        resource_uri=(header.findtext("wsman:ResourceURI", "", NS) or "").strip(),
        selectors=selectors,
        options=options,
        body=body,
        to=(header.findtext("wsa:To", "", NS) or "").strip(),
        max_envelope=_int(header.findtext("wsman:MaxEnvelopeSize", "", NS)),
    )


def _int(text: str | None) -> int:
    try:
        return int((text or "").strip())
    except ValueError:
        return 0


def envelope(request_id: str, action: str, body_children: list[ET.Element]) -> bytes:
    env = ET.Element(q("s", "Envelope"))
    header = ET.SubElement(env, q("s", "Header"))
    ET.SubElement(header, q("wsa", "Action")).text = action
    ET.SubElement(header, q("wsa", "MessageID")).text = f"uuid:{str(uuid.uuid4()).upper()}"
    ET.SubElement(header, q("wsa", "To")).text = ANONYMOUS
    ET.SubElement(header, q("wsa", "RelatesTo")).text = request_id
    body = ET.SubElement(env, q("s", "Body"))
    body.extend(body_children)
    data: bytes = ET.tostring(env, encoding="utf-8", xml_declaration=False)
    return data


def fault_envelope(request_id: str, fault: Fault) -> bytes:
    """WinRM's fault shape (pypsrp `_parse_wsman_fault` reads Code/Subcode, Reason, WSManFault)."""
    env = ET.Element(q("s", "Envelope"))
    header = ET.SubElement(env, q("s", "Header"))
    ET.SubElement(
        header, q("wsa", "Action")
    ).text = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"
    ET.SubElement(header, q("wsa", "MessageID")).text = f"uuid:{str(uuid.uuid4()).upper()}"
    if request_id:
        ET.SubElement(header, q("wsa", "RelatesTo")).text = request_id
    body = ET.SubElement(env, q("s", "Body"))
    f = ET.SubElement(body, q("s", "Fault"))
    code = ET.SubElement(f, q("s", "Code"))
    ET.SubElement(code, q("s", "Value")).text = "s:Receiver"
    sub = ET.SubElement(code, q("s", "Subcode"))
    ET.SubElement(sub, q("s", "Value")).text = fault.subcode
    reason = ET.SubElement(f, q("s", "Reason"))
    text = ET.SubElement(reason, q("s", "Text"))
    text.set("{http://www.w3.org/XML/1998/namespace}lang", "en-US")
    text.text = fault.reason
    detail = ET.SubElement(f, q("s", "Detail"))
    wf = ET.SubElement(
        detail,
        q("wsmanfault", "WSManFault"),
        {"Code": str(fault.code), "Machine": "sandbox"},
    )
    ET.SubElement(wf, q("wsmanfault", "Message")).text = fault.reason
    data: bytes = ET.tostring(env, encoding="utf-8")
    return data


def el(prefix: str, local: str, text: str | None = None, **attrs: str) -> ET.Element:
    e = ET.Element(q(prefix, local), attrs)
    e.text = text
    return e


def sub(parent: ET.Element, prefix: str, local: str, text: str | None = None) -> ET.Element:
    e = ET.SubElement(parent, q(prefix, local))
    e.text = text
    return e
