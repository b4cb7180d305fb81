"""A user's data passes as `coexist status` shows them: derived, never stored.

Status reads the journal's pass records and the project's *current* `[migration] mover`
every time, so nothing it says outlives the settings it was made under: a user whose
passes ran as `no data mover configured` reads differently the moment a mover is set, and
the data column counts every pass, not only the last one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from coexist.migrate.passes import NO_MOVER

NO_MOVER_STATUS = "no-mover"  # PassResult.status of the `none` mover


@dataclass(frozen=True)
class DataSummary:
    """Every data pass of one mailbox, summed, and how the last one ended."""

    mover: str  # the project's mover now
    passes: int  # passes that went through (copied what they could and reconciled)
    items: int  # items copied over all passes
    bytes: int  # bytes copied over all passes
    last_kind: str | None = None  # prestage | cutover
    # ok | waiting | failed | running | paused (run window, worker stop) | stopped (worker)
    last_status: str | None = None
    unexplained: int | None = None  # the last reconciliation's unexplained difference

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        """E.g. "2 passes, 1,204 items, 1.2 GB; last: cutover ok"."""
        moved = f"{self.passes} pass{'' if self.passes == 1 else 'es'}, {self.items:,} items"
        if self.items:
            moved += f", {human_bytes(self.bytes)}"
        if self.mover == "none":
            earlier = f"; earlier: {moved}" if self.passes or self.items else ""
            return f"{NO_MOVER}{earlier}"
        if self.last_kind is None:
            return ""  # no pass has run with a mover: nothing to say before pre-stage
        last = f"{self.last_kind} {self.last_status}"
        if self.unexplained:
            last += f", {self.unexplained:,} unexplained"
        return f"{moved}; last: {last}"


def human_bytes(n: int) -> str:
    """Decimal units, one decimal from KB up: 999 B, 1.2 KB, 1.2 MB, 1.2 GB."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"  # pragma: no cover - the loop returns at GB


def data_summary(
    passes: Sequence[Mapping[str, Any]],
    mover: str,
    reconciliation: Mapping[str, Any] | None = None,
) -> DataSummary:
    """Sum a user's pass records (journal `passes`, oldest first) under the current mover.

    Passes of the `none` mover moved nothing and say nothing once a mover is set; the last
    other pass is the one reported as `last`.
    """
    counts = [dict(p.get("counts") or {}) for p in passes]
    done = sum(
        1 for p, c in zip(passes, counts, strict=True) if p["status"] in ("ok", "waiting") and c
    )
    moved = [p for p in passes if p["status"] != NO_MOVER_STATUS]
    last = moved[-1] if moved else None
    unexplained = (reconciliation or {}).get("unexplained")
    return DataSummary(
        mover=mover,
        passes=done,
        items=sum(int(c.get("copied", 0)) for c in counts),
        bytes=sum(int(c.get("bytes", 0)) for c in counts),
        last_kind=str(last["kind"]) if last else None,
        last_status=str(last["status"]) if last else None,
        unexplained=int(unexplained) if isinstance(unexplained, int) else None,
    )


def waiting_text(waiting_for: str | None, mover: str) -> str | None:
    """What a waiting user waits for, read under the current mover: a user left waiting by
    the `none` mover waits for a data pass once a mover is set, not for configuration."""
    if waiting_for == NO_MOVER and mover != "none":
        return (
            f"a data pass with {mover} (the mover was set after this user's last pass); "
            "coexist retry runs it"
        )
    return waiting_for
