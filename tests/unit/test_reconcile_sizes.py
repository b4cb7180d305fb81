"""Reconciliation's bytes per folder: asked of stores that report sizes (`SizedStore`, the
IMAP store's `folder_totals`), None for those that cannot say (Microsoft Graph v1.0's
folders have no size property)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from coexist.migrate.reconcile import SizedStore, folder_bytes, sizes
from tests.unit.test_sync import MemoryStore


@dataclass(frozen=True)
class Total:
    count: int
    size: int


class SizedMemoryStore(MemoryStore):
    """A MemoryStore that also reports bytes per folder, as the IMAP store does."""

    async def folder_totals(self) -> Mapping[str, Total]:
        return {
            fid: Total(len(ms), sum(len(m.mime) for m in ms))
            for fid in self.folders
            if (ms := [m for m in self.items.values() if m.folder == fid]) is not None
        }


def test_bytes_come_from_stores_that_report_them_and_none_from_others() -> None:
    """A store with folder_totals gives bytes per folder id; one without gives None."""
    sized, plain = SizedMemoryStore(), MemoryStore()
    sized.put(("INBOX",), "one")
    assert isinstance(sized, SizedStore) and not isinstance(plain, SizedStore)
    assert asyncio.run(folder_bytes(sized)) == {"f-inbox": len(sized.in_folder("INBOX")[0].mime)}
    assert asyncio.run(sizes(plain, sized))[0] is None
