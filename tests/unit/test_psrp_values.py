"""What the remote PowerShell runner answers is JSON data the journal keeps."""

from __future__ import annotations

from pypsrp.serializer import Serializer

from coexist.journal import check_json
from coexist.tenants.psrp import to_dict

# A Get-Mailbox object as Exchange serialises it (MS-PSRP 2.2.5: <DT>, <G>, <BA>, <TS>, <D>).
MAILBOX = """<Obj RefId="0"><TN RefId="0">
<T>Deserialized.Microsoft.Exchange.Data.Directory.Management.Mailbox</T>
<T>Deserialized.System.Object</T></TN><ToString>Ann</ToString><Props>
<S N="Name">Ann</S><DT N="WhenCreated">2024-01-02T03:04:05+00:00</DT>
<G N="ExchangeGuid">ec0be6ef-3789-4016-ac1f-1afe4ec67a9e</G><BA N="Blob">YWI=</BA>
<TS N="Span">PT5S</TS><D N="Quota">1.5</D><I32 N="Count">3</I32>
<Obj N="Guids" RefId="1"><TN RefId="1"><T>System.Collections.ArrayList</T></TN>
<LST><G>0c5e6cd5-7b5c-4d27-8a9a-2f4a8a6d9c11</G></LST></Obj>
</Props></Obj>"""


def test_guids_and_byte_arrays_of_an_exchange_object_become_json_text() -> None:
    """pypsrp gives a Guid as uuid.UUID and a byte[] as bytes: the runner answers their text
    (the GUID, base64), so a step that observed such a mailbox can journal what it saw."""
    got = to_dict(Serializer().deserialize(MAILBOX))
    check_json(got, "observed")
    assert got["ExchangeGuid"] == "ec0be6ef-3789-4016-ac1f-1afe4ec67a9e"
    assert got["Blob"] == "YWI="
    assert got["Guids"] == ["0c5e6cd5-7b5c-4d27-8a9a-2f4a8a6d9c11"]
    assert (got["Name"], got["Count"], got["WhenCreated"]) == (
        "Ann",
        3,
        "2024-01-02T03:04:05+00:00",
    )
