"""graph_io.parse_export: an exportItems answer parsed with its base64 `data` cut out of the
JSON decoder's scan reads exactly as `json.loads` reads it, whatever the answer's shape."""

from __future__ import annotations

import base64
import json
import os

import pytest

from coexist.migrate.stores.graph_io import parse_export


def _data(n: int) -> str:
    return base64.b64encode(os.urandom(n)).decode()


SHAPES = [
    {"value": [{"itemId": "A=", "changeKey": "C", "data": _data(5000)} for _ in range(3)]},
    {"value": [{"itemId": "A", "data": _data(10)}, {"itemId": "B", "error": {"code": "x"}}]},
    {"value": []},
    {"@odata.context": "x", "value": [{"data": ""}, {"data": _data(1)}]},
    # a "data" key outside the items: parsed whole, the same result
    {"error": {"data": "not an item"}, "value": [{"data": _data(3)}]},
    # a string that looks like the key
    {"value": [{"itemId": 'he said "data":"x"', "data": _data(7)}]},
    {"value": [{"itemId": "1", "data": "12"}]},
]


@pytest.mark.parametrize("doc", SHAPES)
@pytest.mark.parametrize("compact", [True, False])
def test_parse_export_reads_as_json_loads(doc: dict[str, object], compact: bool) -> None:
    """Compact and spaced JSON, items with and without data, "data" elsewhere: same as json."""
    raw = json.dumps(doc, separators=(",", ":") if compact else (", ", ": ")).encode()
    assert parse_export(raw) == json.loads(raw)
    assert parse_export(bytearray(raw)) == json.loads(raw)


def test_escaped_data_falls_back_to_the_decoder() -> None:
    """A `data` string with an escape (a JSON encoder escaping "/") is decoded by json."""
    raw = b'{"value":[{"itemId":"A","data":"ab\\/cd=="}]}'
    assert parse_export(raw) == {"value": [{"itemId": "A", "data": "ab/cd=="}]}
