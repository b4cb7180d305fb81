"""Start-up's objects out of the garbage collector's sight, once per process."""

from __future__ import annotations

import functools
import gc


@functools.cache
def freeze_startup_objects() -> bool:
    """Move every object alive now (once per process) out of the garbage collector's sight
    (`gc.freeze`).

    Called when a command's session opens (`runtime.session`) and before a process's first
    IMAP connection, when what is alive is what start-up made and keeps (modules, classes,
    settings, the journal's engine and metadata: a few hundred thousand objects). Without it
    a pass's full collections (CPython runs one once the survivors exceed a quarter of the
    old objects) scanned them all: one took 0.19 s of the client's ~0.7 s of CPU per
    2,000-message move in bench/imap_bench.py, and in bench/graph_mover_bench.py's
    20-mailbox part collections ran inside the hot path's allocations (JSON encoding of the
    import bodies). What is created later is collected as usual; garbage alive at the call
    (cycles not yet collected) stays, a one-time cost of the size of start-up's leftovers."""
    gc.freeze()  # O(1): it links the generations' lists (get_freeze_count walks them)
    return True
