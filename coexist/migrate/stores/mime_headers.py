"""What a message's MIME header says about state Exchange keeps as a property: importance.

One mapping for every store that reads MIME (the IMAP source derives its state's
`importance` from it; graph_items' JSON create falls back to it), so both read a header
as Exchange's own MIME reader would.

MS-OXCMAIL 2.2.3.2.5 "Importance": an `Importance` header (Low, Normal, High) maps to
PidTagImportance; clients MAY use `Priority` (Non-Urgent, Normal, Urgent), `X-Priority`
(1..5) or `X-MSMail-Priority` (Low, Normal, High) instead, and "if an Importance header is
present, MIME readers SHOULD use its value in preference to any of the others". Urgent
"SHOULD be 0x00000002" (high). *unverified*: which of the three others wins when several
are present and disagree (the spec gives no order): here Priority, then X-Priority, then
X-MSMail-Priority, as the spec lists them. A value none of the tables has is ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable

LOW, NORMAL, HIGH = "low", "normal", "high"  # resources/message `importance` (graph.importance)

# Header -> value (lower case) -> importance, in the order they are consulted.
IMPORTANCE_HEADERS: tuple[tuple[str, dict[str, str]], ...] = (
    ("importance", {"low": LOW, "normal": NORMAL, "high": HIGH}),
    ("priority", {"non-urgent": LOW, "normal": NORMAL, "urgent": HIGH}),
    ("x-priority", {"5": LOW, "4": LOW, "3": NORMAL, "2": HIGH, "1": HIGH}),
    ("x-msmail-priority", {"low": LOW, "normal": NORMAL, "high": HIGH}),
)
# An X-Priority is often written with a comment: "1 (Highest)", "2 (High)".
_FIRST_WORD = re.compile(r"\s*([^\s(;]+)")
# A header field at the start of a line of the header block (RFC 5322 2.2), value unfolded
# by the caller's regex over the block: continuation lines start with white space.
_FIELD = re.compile(
    rb"^(importance|priority|x-priority|x-msmail-priority)[ \t]*:(.*(?:\r?\n[ \t].*)*)",
    re.IGNORECASE | re.MULTILINE,
)
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def importance_of(get: Callable[[str], object | None]) -> str | None:
    """The importance a message's headers give (`get(name)`: a header's value or None); None
    when none of the headers says anything usable."""
    for name, values in IMPORTANCE_HEADERS:
        raw = get(name)
        if raw is None:
            continue
        m = _FIRST_WORD.match(str(raw))
        found = values.get(m.group(1).lower()) if m else None
        if found is not None:
            return found
    return None


def header_importance(raw: bytes) -> str:
    """The importance of an RFC 5322 message (its header block only is read): what its
    headers say, else normal (the default: "CdoNormal 1 Normal importance (default)", CDO
    Message.Importance, which maps PR_IMPORTANCE)."""
    end = _HEADER_END.search(raw)
    block = raw[: end.start()] if end else raw
    found: dict[str, str] = {}
    for m in _FIELD.finditer(block):
        name = m.group(1).decode("ascii").lower()
        if name not in found:  # the first of a repeated field
            found[name] = re.sub(rb"\r?\n[ \t]", b" ", m.group(2)).decode("latin-1").strip()
    return importance_of(found.get) or NORMAL
