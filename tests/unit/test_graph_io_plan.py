"""graph_io's store in plan mode reads no item stream: a planned import writes nothing, so
exportItems (the pass's largest read) is not sent; the payloads carry the scan's change
keys. The e2e plan of the mover is tests/e2e/test_m365_plan.py."""

from __future__ import annotations

import asyncio
from typing import Any

from coexist.migrate.stores.graph import Box
from coexist.migrate.stores.graph_io import GraphIOStore
from coexist.tenants.protocols import EXCHANGE_STREAM, ItemRef


class NoCalls:
    """A Graph adapter stand-in that fails any request (none may be sent)."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"Graph {name} called in plan mode")


def test_a_planning_store_exports_empty_payloads_without_a_request() -> None:
    """Two refs: two empty payloads with the refs' change keys and ids, no request."""
    store = GraphIOStore(Box(NoCalls(), "u", "m"), planning=True)  # type: ignore[arg-type]
    refs = [ItemRef("f", "a", "ck-a"), ItemRef("f", "b", None)]
    got = asyncio.run(store.export(refs, EXCHANGE_STREAM))
    assert {i: (p.data, p.change_key, p.source_id) for i, p in got.items()} == {
        "a": ("", "ck-a", "a"),
        "b": ("", None, "b"),
    }
