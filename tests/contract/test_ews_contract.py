"""The EWS face against Exchange's published schema (coexist/data/ews/, a byte-for-byte copy of
shared/spec/ews/): a recorded exchangelib run of every operation the face serves validates,
request and response bodies; a request the schema rejects gets Exchange's SOAP fault; the
face emits no ResponseCode the schema lacks; budgets answer ErrorServerBusy with
BackOffMilliseconds, per impersonated user or per delegating account."""

from __future__ import annotations

import ast
import datetime as dt
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from xml.etree import ElementTree as ET

import httpx
import pytest
import xmlschema
from exchangelib import UTC as EWS_UTC
from exchangelib import (
    Contact,
    EWSDateTime,
    ExtendedProperty,
    FileAttachment,
    Folder,
    Message,
    Task,
)
from exchangelib.errors import ErrorAccessDenied, ErrorInvalidSyncStateData
from exchangelib.indexed_properties import EmailAddress
from exchangelib.properties import AlternateId

import coexist
from coexist.migrate.stores.ews_pim import STAMP  # registers the stamp on PIM item classes
from coexist.sandbox import Sandbox
from coexist.sandbox.ews import EWS_PATH, RECORDER_KEY
from coexist.sandbox.ews.face import ERRORS_KEY, Recorded
from coexist.sandbox.ews.ops import OPERATIONS
from tests import ewsclient as ec
from tests.clients import tls

DATA = Path(coexist.__file__).parent / "data" / "ews"
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
E = "http://schemas.microsoft.com/exchange/services/2006/errors"
EWS_CODE_SOURCES = Path(coexist.__file__).parent / "sandbox" / "ews"


@pytest.fixture(scope="module")
def schema() -> xmlschema.XMLSchema:
    """A schema compiled here, independently of the face's own copy in memory."""
    return xmlschema.XMLSchema(str(DATA / "messages.xsd"))


def _codes(schema: xmlschema.XMLSchema) -> set[str]:
    return {str(v) for v in schema.maps.types[f"{{{M}}}ResponseCodeType"].enumeration}


class Flags(ExtendedProperty):
    property_tag = 0x0E07
    property_type = "Integer"


@pytest.fixture
def recorded(sandbox: Sandbox) -> Iterator[list[Recorded]]:
    """Exchange 2016 source and target, every exchange recorded."""
    ec.org(sandbox, "source", "exchange2016")
    ec.org(sandbox, "target", "exchange2016")
    assert sandbox.ctx is not None
    log: list[Recorded] = []
    sandbox.ctx.extra[RECORDER_KEY] = log
    sandbox.ctx.extra[ERRORS_KEY] = []
    Message.register("message_flags", Flags)
    yield log
    Message.deregister("message_flags")
    sandbox.ctx.extra.pop(RECORDER_KEY, None)
    assert sandbox.ctx.extra[ERRORS_KEY] == []


def _mime(subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "a@fabrikam.example"
    msg["To"] = "b@contoso.example"
    msg["Subject"] = subject
    msg["Date"] = format_datetime(dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    msg["Message-ID"] = make_msgid(domain="contract.example")
    msg.set_content("body")
    return msg.as_bytes()


def _run_every_operation(sb: Sandbox) -> None:
    src_user, other = ec.mailboxes(sb, "source", 2)
    dst_user = ec.mailboxes(sb, "target", 1)[0]
    assert src_user.primary_smtp and other.primary_smtp and dst_user.primary_smtp
    login = ec.migration_account(sb, "source", full_access=[src_user.primary_smtp])
    tlogin = ec.migration_account(sb, "target", full_access=["*"])
    a = ec.account(sb, "source", login, src_user.primary_smtp)
    b = ec.account(sb, "target", tlogin, dst_user.primary_smtp)
    list(a.msg_folder_root.children)  # GetFolder, FindFolder
    sub = Folder(parent=a.inbox, name="Contract")  # CreateFolder
    sub.save()
    list(a.msg_folder_root.sync_hierarchy())  # SyncFolderHierarchy
    for n in range(3):  # CreateItem
        Message(account=a, folder=a.inbox, mime_content=_mime(f"c{n}"), message_flags=1).save()
    items = list(a.inbox.all().order_by("-datetime_received")[:2])  # FindItem
    list(a.fetch(ids=items))  # GetItem with every field exchangelib asks for
    list(a.inbox.sync_items(max_changes_returned=2))  # SyncFolderItems
    items[0].is_read = True
    items[0].save(update_fields=["is_read", "categories"])  # UpdateItem
    items[0].move(sub)  # MoveItem
    items[1].delete()  # DeleteItem
    rest = list(a.inbox.all())
    blob = a.export(rest)  # ExportItems
    b.upload([(b.inbox, data) for data in blob])  # UploadItems
    list(a.protocol.convert_ids(  # ConvertId
        [AlternateId(id=a.inbox.id, format="EwsId", mailbox=src_user.primary_smtp)],
        destination_format="HexEntryId"))  # fmt: skip
    # Calendar (a recurring series), contacts and tasks: their shapes are validated too.
    series = ec.weekly_series(a)
    ec.add_exception_and_cancel(sb, series.id)
    list(a.fetch(ids=[(series.id, None)]))
    start = EWSDateTime(2026, 1, 1, tzinfo=EWS_UTC)
    view = list(a.calendar.view(start=start, end=start + dt.timedelta(days=60)))
    list(a.fetch(ids=[(view[0].id, None)]))  # an occurrence
    series.subject = "renamed"
    series.save(update_fields=["subject"])  # UpdateItem on a calendar item
    list(a.calendar.sync_items())
    b.upload([(b.calendar, a.export([series])[0])])
    Contact(account=a, folder=a.contacts, given_name="Ada", surname="L", display_name="Ada L",
            email_addresses=[EmailAddress(email="ada@example.org", label="EmailAddress1")]).save()  # fmt: skip
    Task(account=a, folder=a.tasks, subject="t", status="Completed").save()
    # A named extended property on a PIM item (the cross-kind copies' stamp): set at
    # CreateItem, read back by GetItem asking for its ExtendedFieldURI, changed by UpdateItem.
    stamped = Contact(account=a, folder=a.contacts, display_name="Stamped",
                      coexist_source_id="src-1")  # fmt: skip
    stamped.save()
    [got] = a.fetch(ids=[stamped], only_fields=[STAMP])
    assert getattr(got, STAMP) == "src-1"
    got.coexist_source_id = "src-2"
    got.save(update_fields=[STAMP])
    assert getattr(next(iter(a.fetch(ids=[stamped], only_fields=[STAMP]))), STAMP) == "src-2"
    with_file = next(iter(a.contacts.all()))
    with_file.attach(
        FileAttachment(name="p.jpg", content=b"jpg", is_contact_photo=True)
    )  # CreateAttachment
    assert next(iter(a.contacts.all())).attachments[0].content == b"jpg"  # GetAttachment
    list(a.tasks.all())
    # Error answers are part of the contract too.
    with pytest.raises(ErrorAccessDenied):
        ec.account(sb, "source", login, other.primary_smtp).inbox.refresh()
    sb.world.expire_sync_states()
    with pytest.raises(ErrorInvalidSyncStateData):
        list(a.inbox.sync_items(sync_state=a.inbox.item_sync_state))


def _body_child(data: bytes) -> tuple[ET.Element, ET.Element | None]:
    env = ET.fromstring(data)
    assert env.tag == f"{{{SOAP}}}Envelope"
    body = env.find(f"{{{SOAP}}}Body")
    assert body is not None and len(body) == 1
    return body[0], env.find(f"{{{SOAP}}}Header")


def _valid(schema: xmlschema.XMLSchema, element: ET.Element) -> None:
    errors = list(schema.iter_errors(element, namespaces={"t": T, "m": M}))
    assert not errors, f"{element.tag}: {errors[0]}"


def test_every_operation_validates_both_ways(
    sandbox: Sandbox, recorded: list[Recorded], schema: xmlschema.XMLSchema
) -> None:
    """A recorded exchangelib run of every served operation: each request body, each response
    body and each ServerVersionInfo header validates; faults carry a ResponseCode of the
    schema's enumeration."""
    _run_every_operation(sandbox)
    codes = _codes(schema)
    seen: set[str] = set()
    for rec in recorded:
        request, req_header = _body_child(rec.request)
        _valid(schema, request)
        for h in list(req_header) if req_header is not None else []:
            if h.tag.startswith(f"{{{T}}}"):
                _valid(schema, h)
        seen.add(request.tag.rsplit("}", 1)[-1])
        response, header = _body_child(rec.response)
        assert header is not None
        version = header.find(f"{{{T}}}ServerVersionInfo")
        assert version is not None
        _valid(schema, version)
        if rec.status == 200:
            _valid(schema, response)
            for code in response.iter(f"{{{M}}}ResponseCode"):
                assert code.text in codes
        else:
            assert rec.status == 500 and response.tag == f"{{{SOAP}}}Fault"
            code = response.findtext(f"detail/{{{E}}}ResponseCode")
            assert code in codes and response.findtext("faultcode") == f"a:{code}"
    assert seen >= set(OPERATIONS), f"not exercised: {set(OPERATIONS) - seen}"


def _post(sb: Sandbox, login: str, body: str, version: str = "Exchange2016") -> httpx.Response:
    envelope = (
        f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP}" xmlns:m="{M}" '
        f'xmlns:t="{T}"><s:Header><t:RequestServerVersion Version="{version}"/></s:Header>'
        f"<s:Body>{body}</s:Body></s:Envelope>"
    )
    with httpx.Client(verify=tls(sb.connection)) as client:
        return client.post(
            sb.base_url + EWS_PATH,
            content=envelope.encode(),
            headers={"Content-Type": "text/xml; charset=utf-8"},
            auth=(login, ec.PASSWORD),
        )


def _fault(resp: httpx.Response) -> tuple[str, ET.Element]:
    assert resp.status_code == 500, resp.text
    fault, _ = _body_child(resp.content)
    assert fault.tag == f"{{{SOAP}}}Fault"
    code = fault.findtext(f"detail/{{{E}}}ResponseCode") or ""
    assert fault.findtext("faultcode") == f"a:{code}"
    assert fault.findtext(f"detail/{{{E}}}Message")
    return code, fault


def test_schema_invalid_request_gets_exchanges_fault(
    recorded: list[Recorded], sandbox: Sandbox
) -> None:
    """A request the schema rejects: HTTP 500 with the ErrorSchemaValidation SOAP fault and its
    MessageXml (LineNumber, LinePosition, Violation) (also for a base64Binary that is not
    base64); malformed XML: ErrorInvalidRequest."""
    login = ec.migration_account(sandbox, "source", full_access=["*"])
    bad = (
        "<m:GetFolder><m:FolderShape><t:BaseShape>Everything</t:BaseShape></m:FolderShape>"
        '<m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>'
    )
    code, fault = _fault(_post(sandbox, login, bad))
    assert code == "ErrorSchemaValidation"
    xml = fault.find(f"detail/{{{T}}}MessageXml")
    assert xml is not None
    assert [c.tag.rsplit("}", 1)[-1] for c in xml] == ["LineNumber", "LinePosition", "Violation"]
    not_base64 = (
        '<m:CreateItem MessageDisposition="SaveOnly"><m:Items><t:Message>'
        "<t:MimeContent>!!! not base64 !!!</t:MimeContent></t:Message></m:Items></m:CreateItem>"
    )
    assert _fault(_post(sandbox, login, not_base64))[0] == "ErrorSchemaValidation"
    with httpx.Client(verify=tls(sandbox.connection)) as client:
        resp = client.post(
            sandbox.base_url + EWS_PATH, content=b"<s:Envelope", auth=(login, ec.PASSWORD)
        )
    assert _fault(resp)[0] == "ErrorInvalidRequest"


def test_request_version_newer_than_the_server(recorded: list[Recorded], sandbox: Sandbox) -> None:
    """A WorkMail organisation answers a RequestServerVersion newer than it serves with
    ErrorInvalidServerVersion; a version it serves is answered."""
    ec.org(sandbox, "target", "workmail")
    login = ec.migration_account(sandbox, "target", full_access=["*"])
    user = ec.mailboxes(sandbox, "target", 1)[0]
    body = (
        "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
        '<m:FolderIds><t:DistinguishedFolderId Id="inbox"><t:Mailbox><t:EmailAddress>'
        f"{user.primary_smtp}</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>"
        "</m:FolderIds></m:GetFolder>"
    )
    assert _fault(_post(sandbox, login, body, "Exchange2016"))[0] == "ErrorInvalidServerVersion"
    assert _post(sandbox, login, body, "Exchange2010_SP2").status_code == 200


def test_face_names_only_schema_response_codes(schema: xmlschema.XMLSchema) -> None:
    """Every ResponseCode literal in the face's source is a value of m:ResponseCodeType."""
    codes = _codes(schema)
    found: set[str] = set()
    for path in EWS_CODE_SOURCES.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            value = node.value if isinstance(node, ast.Constant) else None
            # "Error" alone is the ResponseClass, not a code.
            if isinstance(value, str) and value.startswith("Error") and value.isidentifier():
                found.add(value)
    assert found, "no codes found: the scan is broken"
    assert found - {"Error"} <= codes, f"not in the schema: {found - codes - {'Error'}}"


def test_server_busy_carries_back_off(tmp_path: Path) -> None:
    """Under the published profile an exhausted budget answers ErrorServerBusy with
    BackOffMilliseconds; budgets are per impersonated user under impersonation and one per
    account under delegation."""
    with Sandbox(tmp_path, seed=5, users=6, profile="published", drained=True) as sb:
        ec.org(sb, "source", "exchange2016")
        users = ec.mailboxes(sb, "source", 2)
        login = ec.migration_account(sb, "source", full_access=["*"])
        body = (
            "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
            '<m:FolderIds><t:DistinguishedFolderId Id="inbox"><t:Mailbox><t:EmailAddress>'
            f"{users[0].primary_smtp}</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>"
            "</m:FolderIds></m:GetFolder>"
        )
        code, fault = _fault(_post(sb, login, body))
        assert code == "ErrorServerBusy"
        value = fault.find(f"detail/{{{T}}}MessageXml/{{{T}}}Value")
        assert value is not None and value.get("Name") == "BackOffMilliseconds"
        assert int(value.text or "0") > 0
        assert sb.ctx is not None
        assert sb.ctx.limiter.bucket_keys("ews_budget") == [("source", "account", "svc-migrate")]
        for user in users:
            envelope_body = body.replace(str(users[0].primary_smtp), str(user.primary_smtp))
            resp = _post_impersonating(sb, login, envelope_body, str(user.primary_smtp))
            assert resp.status_code == 500  # drained: every budget starts empty
        keys = set(sb.ctx.limiter.bucket_keys("ews_budget"))
        assert {("source", "user", u.id) for u in users} <= keys


def _post_impersonating(sb: Sandbox, login: str, body: str, address: str) -> httpx.Response:
    from coexist.sandbox.ews import grant

    grant(sb.world, "source", "svc-migrate", impersonation=True)
    envelope = (
        f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP}" xmlns:m="{M}" '
        f'xmlns:t="{T}"><s:Header><t:RequestServerVersion Version="Exchange2016"/>'
        f"<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>{address}"
        "</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation></s:Header>"
        f"<s:Body>{body}</s:Body></s:Envelope>"
    )
    with httpx.Client(verify=tls(sb.connection)) as client:
        return client.post(sb.base_url + EWS_PATH, content=envelope.encode(),
                           auth=(login, ec.PASSWORD))  # fmt: skip


def test_autodiscover_pox_returns_the_ews_url(recorded: list[Recorded], sandbox: Sandbox) -> None:
    """POX autodiscover answers a mailbox's EwsUrl (authenticated like EWS)."""
    user = ec.mailboxes(sandbox, "source", 1)[0]
    login = ec.migration_account(sandbox, "source", full_access=["*"])
    req = (
        '<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/'
        'exchange/autodiscover/outlook/requestschema/2006"><Request><EMailAddress>'
        f"{user.primary_smtp}</EMailAddress><AcceptableResponseSchema>http://schemas.microsoft"
        ".com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>"
        "</Request></Autodiscover>"
    )
    with httpx.Client(verify=tls(sandbox.connection)) as client:
        url = sandbox.base_url + "/autodiscover/autodiscover.xml"
        assert client.post(url, content=req.encode()).status_code == 401
        resp = client.post(url, content=req.encode(), auth=(login, ec.PASSWORD))
    assert resp.status_code == 200
    ns = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"
    ews_url = ET.fromstring(resp.content).findtext(
        f"{ns}Response/{ns}Account/{ns}Protocol/{ns}EwsUrl"
    )
    assert ews_url == sandbox.base_url + EWS_PATH


def test_no_version_header_is_exchange2007(recorded: list[Recorded], sandbox: Sandbox) -> None:
    """Without RequestServerVersion a request is handled as Exchange 2007 (the documented
    default): GetFolder is answered, ExportItems (Exchange 2010 SP1+) is refused with
    ErrorInvalidServerVersion."""
    login = ec.migration_account(sandbox, "source", full_access=["*"])
    user = ec.mailboxes(sandbox, "source", 1)[0]
    get_folder = (
        "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
        '<m:FolderIds><t:DistinguishedFolderId Id="inbox"><t:Mailbox><t:EmailAddress>'
        f"{user.primary_smtp}</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>"
        "</m:FolderIds></m:GetFolder>"
    )
    export = '<m:ExportItems><m:ItemIds><t:ItemId Id="AAMkAA=="/></m:ItemIds></m:ExportItems>'
    for body, expected in ((get_folder, 200), (export, 500)):
        envelope = (
            f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP}" '
            f'xmlns:m="{M}" xmlns:t="{T}"><s:Body>{body}</s:Body></s:Envelope>'
        )
        with httpx.Client(verify=tls(sandbox.connection)) as client:
            resp = client.post(sandbox.base_url + EWS_PATH, content=envelope.encode(),
                               auth=(login, ec.PASSWORD))  # fmt: skip
        assert resp.status_code == expected
        if expected == 500:
            assert _fault(resp)[0] == "ErrorInvalidServerVersion"
