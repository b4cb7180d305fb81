"""The state an IMAP message carries into Microsoft 365 beyond its MIME: replied/forwarded
(PidTagLastVerbExecuted + PidTagIconIndex) and importance (from the headers, never reset by
an update that does not know it), and how graph_items copes with a server that refuses or
ignores the replied/forwarded properties.

The mapping is pure; the refusal paths go through `GraphItemsStore` over a stand-in for
coexist's own Graph adapter (its `send`), because the HTTPS sandbox keeps these properties
as Graph's contract says and has no way to refuse them."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from coexist.errors import InvalidRequest
from coexist.migrate.stores.graph import Box
from coexist.migrate.stores.graph_items import (
    ICON_INDEX,
    LAST_VERB,
    GraphItemsStore,
    message_payload,
    parse_mime,
    state_patch,
    verb_properties,
    without_verbs,
)
from coexist.migrate.stores.graph_items import (
    IDENTITY_PROP as IDENTITY,
)
from coexist.migrate.stores.imap import ImapState, imap_flags, message_state
from coexist.migrate.stores.mime_headers import header_importance, importance_of
from coexist.sandbox.mailstore import _importance as sandbox_importance
from coexist.tenants.graph import GraphAdapter
from coexist.tenants.protocols import MIME, ItemRef, MessageState, Payload

HEAD = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: s\r\nMessage-ID: <m@example.org>\r\n"


def props_of(body: dict[str, Any]) -> dict[str, str]:
    return {p["id"]: p["value"] for p in body.get("singleValueExtendedProperties") or []}


# -- the mapping ---------------------------------------------------------------------------------


def test_replied_and_forwarded_become_the_last_verb_and_its_icon() -> None:
    """\\Answered -> NOTEIVERB_REPLYTOSENDER (102) + icon 0x105; $Forwarded -> NOTEIVERB_FORWARD
    (104) + icon 0x106; both -> replied (one last verb only); neither -> no property."""
    assert verb_properties(MessageState(answered=True)) == [
        {"id": "Integer 0x1081", "value": "102"},
        {"id": "Integer 0x1080", "value": "261"},
    ]
    assert verb_properties(MessageState(forwarded=True)) == [
        {"id": "Integer 0x1081", "value": "104"},
        {"id": "Integer 0x1080", "value": "262"},
    ]
    assert verb_properties(MessageState(answered=True, forwarded=True)) == verb_properties(
        MessageState(answered=True)
    )
    assert verb_properties(MessageState(read=True)) == []


def test_the_create_carries_the_verb_and_the_importance_the_headers_give() -> None:
    """A replied message's create has the two properties next to PR_MESSAGE_FLAGS; an
    unknown importance comes from X-Priority; a known one wins; without either none is sent
    (Exchange's default, normal); `verbs=False` leaves the properties out."""
    urgent = parse_mime(HEAD + b"X-Priority: 1 (Highest)\r\n\r\nbody\r\n")
    plain = parse_mime(HEAD + b"\r\nbody\r\n")
    replied = MessageState(read=True, answered=True)
    body = message_payload(urgent, replied, "7:1:INBOX")
    assert props_of(body)[LAST_VERB] == "102" and props_of(body)[ICON_INDEX] == "261"
    assert props_of(body)["Integer 0x0E07"] == "1" and body["importance"] == "high"
    assert message_payload(urgent, MessageState(importance="low"), "x")["importance"] == "low"
    assert "importance" not in message_payload(plain, MessageState(), "x")
    bare = message_payload(urgent, replied, "7:1:INBOX", verbs=False)
    assert LAST_VERB not in props_of(bare) and "Integer 0x0E07" in props_of(bare)


def test_an_update_never_resets_what_its_state_does_not_know() -> None:
    """A state-only IMAP update (importance None) PATCHes no importance; a known one is
    PATCHed; replied/forwarded are PATCHed when the source has them and never cleared."""
    flags_only = MessageState(read=True, flag={"flagStatus": "flagged"}, answered=True)
    patch = state_patch(flags_only)
    assert "importance" not in patch
    assert patch["isRead"] is True and patch["flag"] == {"flagStatus": "flagged"}
    assert props_of(patch) == {LAST_VERB: "102", ICON_INDEX: "261"}
    assert state_patch(MessageState(importance="high"))["importance"] == "high"
    assert "singleValueExtendedProperties" not in state_patch(MessageState(read=True))
    assert "singleValueExtendedProperties" not in state_patch(flags_only, verbs=False)


def test_without_verbs_keeps_every_other_property() -> None:
    """Leaving the replied/forwarded properties out keeps the flags, dates and stamp; a body
    that has none of them gives None (nothing to send again)."""
    body = message_payload(parse_mime(HEAD + b"\r\nb\r\n"), MessageState(forwarded=True), "s")
    bare = without_verbs(body)
    assert bare is not None and set(props_of(bare)) == set(props_of(body)) - {
        LAST_VERB,
        ICON_INDEX,
    }
    assert without_verbs(bare) is None
    assert without_verbs(state_patch(MessageState())) is None
    only = without_verbs(state_patch(MessageState(answered=True)))
    assert only is not None and "singleValueExtendedProperties" not in only


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (b"Importance: High\r\n", "high"),
        (b"importance: low\r\n", "low"),
        (b"X-Priority: 1 (Highest)\r\n", "high"),
        (b"X-Priority: 2\r\n", "high"),
        (b"X-Priority: 3\r\n", "normal"),
        (b"X-Priority: 4\r\n", "low"),
        (b"X-Priority: 5 (Lowest)\r\n", "low"),
        (b"Priority: urgent\r\n", "high"),
        (b"Priority: non-urgent\r\n", "low"),
        (b"X-MSMail-Priority: High\r\n", "high"),
        (b"Importance: Low\r\nX-Priority: 1\r\n", "low"),  # Importance wins (MS-OXCMAIL)
        (b"Importance:\r\n high\r\n", "high"),  # folded
        (b"X-Priority: 9\r\n", "normal"),  # no table has it: ignored
        (b"", "normal"),
    ],
)
def test_importance_headers_map_as_ms_oxcmail_says(headers: bytes, expected: str) -> None:
    """MS-OXCMAIL 2.2.3.2.5's tables, Importance first, a comment after X-Priority, folded
    values; nothing usable is normal. The parsed-message form agrees with the raw one, and
    the sandbox's MIME reader (a MIME create, seeded mail) reads them the same way."""
    raw = HEAD + headers + b"\r\nbody\r\n"
    assert header_importance(raw) == expected
    assert (importance_of(parse_mime(raw).get) or "normal") == expected
    assert sandbox_importance(parse_mime(raw)) == expected


def test_only_the_header_block_gives_the_importance() -> None:
    """An "Importance: high" line in the body is text, not a header."""
    assert header_importance(HEAD + b"\r\nImportance: high\r\n") == "normal"


def test_imap_flags_and_keywords_become_replied_forwarded_and_back() -> None:
    """\\Answered and $Forwarded (any case) set answered/forwarded; the importance is what the
    export read (None for a state-only one); another store's replied/forwarded state becomes
    \\Answered and $Forwarded on an IMAP copy, without a second $Forwarded."""
    when = datetime(2020, 1, 2, tzinfo=UTC)
    state = message_state(frozenset({"\\Answered"}), frozenset({"$forwarded"}), when, "high")
    assert state.answered and state.forwarded and state.importance == "high"
    assert message_state(frozenset(), frozenset(), None).importance is None
    assert imap_flags(state) == (frozenset({"\\Answered"}), frozenset({"$forwarded"}))
    other = MessageState(answered=True, forwarded=True, importance="high")
    assert imap_flags(other) == (frozenset({"\\Answered"}), frozenset({"$Forwarded"}))
    assert not message_state(frozenset(), frozenset({"Forwarded"}), None).forwarded
    assert isinstance(state, ImapState)


# -- a server that refuses or ignores the properties ----------------------------------------------


@dataclass
class Server:
    """Answers graph_items' requests as a Graph that `refuses` or `ignores` 0x1080/0x1081
    would (or keeps them), and records every request."""

    refuses: bool = False
    ignores: bool = False
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    kept: dict[str, dict[str, str]] = field(default_factory=dict)

    async def send(self, method: str, path: str, *, params: Any = None, json: Any = None,
                   **_: Any) -> Any:  # fmt: skip
        self.requests.append((method, path, json if json is not None else params))
        props = props_of(json or {})
        if self.refuses and LAST_VERB in props:
            raise InvalidRequest(
                "Graph POST: 400 ErrorInvalidProperty The property can't be set.",
                service="graph",
                status=400,
            )
        if self.ignores:
            props = {k: v for k, v in props.items() if k not in (LAST_VERB, ICON_INDEX)}
        if method == "POST":
            mid = f"m{len(self.kept)}"
            self.kept[mid] = props
            return {"id": mid, "changeKey": "ck"}
        if method == "PATCH":
            mid = path.rsplit("/", 1)[1]
            self.kept[mid] = {**self.kept.get(mid, {}), **props}
            return {"id": mid, "changeKey": "ck2"}
        mid = path.rsplit("/", 1)[1]
        found = [{"id": k, "value": v} for k, v in self.kept[mid].items() if k == LAST_VERB]
        return {"id": mid, **({"singleValueExtendedProperties": found} if found else {})}

    def sent(self, method: str) -> list[Any]:
        return [body for m, _, body in self.requests if m == method]


def payload(subject: str, state: MessageState) -> Payload:
    mime = HEAD.replace(b"Subject: s", b"Subject: " + subject.encode()) + b"\r\nbody\r\n"
    return Payload(MIME, "", "k", mime=mime, state=state, source_id=subject)


def run_store(server: Server, steps: list[tuple[str, MessageState]]) -> GraphItemsStore:
    """Create one copy per (subject, state), then update the first with its state again."""
    store = GraphItemsStore(Box(cast(GraphAdapter, server), "user-1", ""))

    async def main() -> None:
        made = [await store.import_item("inbox", payload(s, st)) for s, st in steps]
        first = made[0].item_id
        assert first is not None
        await store.import_item("inbox", payload(*steps[0]), ItemRef("inbox", first))

    asyncio.run(main())
    return store


REPLIED = MessageState(read=True, answered=True)
STEPS = [("one", REPLIED), ("two", MessageState(forwarded=True)), ("three", REPLIED)]


def test_a_server_that_keeps_the_properties_is_read_back_once() -> None:
    """The first copy made with a last verb is read back (once); every copy and the update
    carry the properties."""
    server = Server()
    store = run_store(server, STEPS)
    assert store.verbs is True
    assert len(server.sent("GET")) == 1 and len(server.sent("POST")) == 3
    assert [m[LAST_VERB] for m in server.kept.values()] == ["102", "104", "102"]
    assert props_of(server.sent("PATCH")[0])[LAST_VERB] == "102"


def test_a_refused_property_still_lands_the_copy_and_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Graph refusing 0x1081: the create is sent again without it and lands with its other
    properties; later copies and the update leave it out at once (no second refusal); each
    message whose state is left out is logged by its source id."""
    server = Server(refuses=True)
    with caplog.at_level(logging.WARNING, "coexist.migrate.stores.graph_items"):
        store = run_store(server, STEPS)
    assert store.verbs is False and "refused" in store.verbs_lost
    posts = server.sent("POST")
    assert len(posts) == 4  # the refused one, then each copy once
    assert [LAST_VERB in props_of(b) for b in posts] == [True, False, False, False]
    assert len(server.kept) == 3
    assert all("Integer 0x0E07" in p and IDENTITY in p for p in server.kept.values())
    [patch] = server.sent("PATCH")
    assert "singleValueExtendedProperties" not in patch and patch["isRead"] is True
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert all(f"state of {s} not set" in logged for s in ("one", "two", "three")), logged


def test_an_ignored_property_is_found_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    """Graph accepting 0x1081 but not keeping it: the read-back finds the copy without it,
    the store says so and leaves the properties out of later copies and updates."""
    server = Server(ignores=True)
    with caplog.at_level(logging.WARNING, "coexist.migrate.stores.graph_items"):
        store = run_store(server, STEPS)
    assert store.verbs is False and "nothing" in store.verbs_lost
    assert [LAST_VERB in props_of(b) for b in server.sent("POST")] == [True, False, False]
    assert "singleValueExtendedProperties" not in server.sent("PATCH")[0]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "not kept on the copy of one" in logged and "state of two not set" in logged


def test_a_refusal_that_is_not_about_the_properties_stays_the_messages_own() -> None:
    """A message Graph refuses whatever it carries (too large, say) is refused again without
    the properties and the refusal raised (sync skips and reports it); a message without a
    replied/forwarded state is sent once."""

    class Refusing(Server):
        async def send(self, method: str, path: str, **kw: Any) -> Any:
            self.requests.append((method, path, kw.get("json")))
            raise InvalidRequest("Graph POST: 413 too large", service="graph", status=413)

    for state, tries in ((REPLIED, 2), (MessageState(), 1)):
        server = Refusing()
        store = GraphItemsStore(Box(cast(GraphAdapter, server), "user-1", ""))
        with pytest.raises(InvalidRequest):
            asyncio.run(store.import_item("inbox", payload("big", state)))
        assert len(server.sent("POST")) == tries


def test_a_pass_of_updates_only_reads_its_first_patch_back() -> None:
    """A store that only updates (every copy made by an earlier pass) reads back the first
    PATCH that carried a last verb: a server ignoring it is found there too."""
    server = Server(ignores=True)
    server.kept["m0"] = {}
    store = GraphItemsStore(Box(cast(GraphAdapter, server), "user-1", ""))

    async def main() -> None:
        for _ in range(2):
            await store.import_item("inbox", payload("one", REPLIED), ItemRef("inbox", "m0"))

    asyncio.run(main())
    assert store.verbs is False and len(server.sent("GET")) == 1
    assert [LAST_VERB in props_of(b) for b in server.sent("PATCH")] == [True, False]


def lost_of(server: Server) -> list[str | None]:
    """`Imported.lost` of each create of STEPS and of the update of the first, in order."""
    store = GraphItemsStore(Box(cast(GraphAdapter, server), "user-1", ""))

    async def main() -> list[str | None]:
        made = [await store.import_item("inbox", payload(s, st)) for s, st in STEPS]
        first = made[0].item_id
        assert first is not None
        again = await store.import_item("inbox", payload(*STEPS[0]), ItemRef("inbox", first))
        plain = await store.import_item("inbox", payload("plain", MessageState(read=True)))
        return [m.lost for m in [*made, again, plain]]

    return asyncio.run(main())


def test_each_copy_without_its_replied_state_says_so() -> None:
    """A target that refuses or ignores 0x1081: every create and update of a replied or
    forwarded message answers `lost` (the sync counts and lists it; the copy is made), the
    probe's own copy too; a message without that state, or a target keeping it, none."""
    refused = lost_of(Server(refuses=True))
    assert all(r is not None and "replied/forwarded" in r and "refused" in r
               for r in refused[:4]), refused  # fmt: skip
    ignored = lost_of(Server(ignores=True))
    assert all(r is not None and "kept" in r for r in ignored[:4]), ignored
    assert refused[4] is None and ignored[4] is None
    assert lost_of(Server()) == [None] * 5
