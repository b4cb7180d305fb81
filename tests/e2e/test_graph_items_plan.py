"""Plan mode of the graph-items mover reads no message's MIME: the skip rules' Content-Type
comes from the message's `internetMessageHeaders` and its size from PidTagMessageSize, in the
one GET that reads its state. The sandbox's request log (`sandbox.server.REQUEST_LOG_KEY`)
shows what each pass sent."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from coexist import commands
from coexist.journal import Journal
from coexist.sandbox import Sandbox
from coexist.sandbox.graph.mail import message_size
from coexist.sandbox.mailstore import Item
from coexist.sandbox.server import REQUEST_LOG_KEY
from coexist.settings import load_project
from tests.e2e.conftest import TEST_RETRY
from tests.e2e.test_graph_mover import SIGNED, World, last_counts, mime
from tests.e2e.test_items_mover import provisioned

ENCRYPTED = "encrypted (S/MIME or IRM)"
# An RFC 5322 message without MIME headers: its headers name no Content-Type.
NO_MIME_HEADERS = (
    b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: bare\r\n"
    b"Message-ID: <bare@example.org>\r\nDate: Mon, 15 Jan 2024 09:00:00 +0000\r\n\r\n"
    b"a body that only its MIME shows\r\n"
)

IRM = mime("irm", b"rpmsg").replace(b"MIME-Version", b"Content-Class: rpmsg.message\nMIME-Version")


@contextmanager
def sent(sandbox: Sandbox) -> Iterator[list[tuple[str, str]]]:
    """(method, path) of every request the sandbox received inside the block."""
    assert sandbox.ctx is not None
    seen: list[tuple[str, str]] = []
    sandbox.ctx.extra[REQUEST_LOG_KEY] = seen
    try:
        yield seen
    finally:
        del sandbox.ctx.extra[REQUEST_LOG_KEY]


def mime_reads(seen: list[tuple[str, str]]) -> list[str]:
    return [path for method, path in seen if method == "GET" and path.endswith("/$value")]


def plan(w: World) -> dict[str, Any]:
    user = str(w.user["source_address"])
    return commands.prestage(w.project, users=[user], older_than="90d", plan=True,
                             retry=TEST_RETRY)  # fmt: skip


def mail_lines(result: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [
        x["params"]
        for x in result["writes"]
        if x["system"] == "mail" and x["params"]["action"] == action
    ]


def licensed(make_project: Callable[..., Path], sandbox: Sandbox, **overrides: Any) -> World:
    """A graph-items project whose user had one real (empty) pass: licensed, cursors saved."""
    w = provisioned(make_project, sandbox, **overrides)
    commands.prestage(w.project, users=[str(w.user["source_address"])], older_than="90d",
                      retry=TEST_RETRY)  # fmt: skip
    assert last_counts(w).get("copied", 0) == 0
    return w


def test_a_graph_items_plan_skips_protected_mail_without_reading_any_mime(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """A plan of a mailbox with S/MIME-encrypted, opaque-signed, IRM, clear-signed, oversize
    and plain mail sends no `$value` read, says per folder what the real pass then skips
    (encrypted, larger than the limit) and copies (its bytes: Exchange's message sizes),
    and writes nothing; the real pass, unchanged, reads each message's MIME and skips and
    copies exactly what the plan said."""
    w = licensed(make_project, sandbox, **{"migration.max_item_mb": 1})
    put: dict[str, Item] = {
        "plain": w.put(["Inbox"], "plain"),
        "signed": w.put(["Inbox"], "signed", body=SIGNED),
        "smime": w.put(
            ["Inbox", "Secure"], "smime", ctype="application/pkcs7-mime; smime-type=enveloped-data"
        ),
        "opaque": w.put(
            ["Inbox"],
            "opaque",
            ctype='application/x-pkcs7-mime; smime-type=signed-data; name="smime.p7m"',
        ),
        "big": w.put(["Inbox"], "big", attachment=b"x" * (1024 * 1024 + 10)),
        # IRM: multipart with Content-Class "rpmsg.message" (MS-OXBBODY 2.1.3.4).
        "irm": w.put(["Inbox"], "irm", body=IRM),
    }
    before = sorted(i.subject for i in w.items("target"))
    with Journal.open(load_project(w.project).journal_url) as j:
        rows = list(j.mapped_items(w.source))

    with sent(sandbox) as seen:
        planned = plan(w)
    assert mime_reads(seen) == [], mime_reads(seen)
    # The state, headers and size of each message come in one GET.
    reads = [p for m, p in seen if m == "GET" and "/messages/" in p and "mailFolders" not in p]
    assert len(reads) == len(put), reads
    assert not [p for m, p in seen if m not in ("GET",) and "/messages" in p], seen
    assert sorted(i.subject for i in w.items("target")) == before
    with Journal.open(load_project(w.project).journal_url) as j:
        assert list(j.mapped_items(w.source)) == rows

    skips = {(x["source_folder"], x["reason"]): x["messages"] for x in mail_lines(planned, "skip")}
    assert skips == {
        ("Inbox", ENCRYPTED): 2,
        ("Inbox/Secure", ENCRYPTED): 1,
        ("Inbox", "larger than 1 MB"): 1,
    }, skips
    [copy] = mail_lines(planned, "copy")
    assert (copy["source_folder"], copy["messages"]) == ("Inbox", 2), copy
    sizes = [message_size(put[s].id, put[s].size) for s in ("plain", "signed")]
    assert copy["bytes"] == sum(sizes), (copy, sizes)

    with sent(sandbox) as seen:
        commands.prestage(w.project, users=[str(w.user["source_address"])], older_than="90d",
                          retry=TEST_RETRY)  # fmt: skip
    # The real pass reads every message's MIME, as before (the skip rules read it there).
    assert len(mime_reads(seen)) == len(put), mime_reads(seen)
    counts = last_counts(w)
    assert counts["copied"] == copy["messages"] and counts["skipped"] == sum(skips.values())
    report = commands.status(w.project, user=str(w.user["source_address"]))["users"][0]
    skipped = {(s["folder"], s["subject"]) for s in report["reconciliation"]["skipped_items"]}
    assert skipped == {
        ("Inbox", "opaque"),
        ("Inbox/Secure", "smime"),
        ("Inbox", "big"),
        ("Inbox", "irm"),
    }
    assert sorted(i.subject for i in w.items("target")) == sorted([*before, "plain", "signed"])
    # A plan after it: nothing to copy, nothing newly skipped.
    again = plan(w)
    assert not [x for x in again["writes"] if x["system"] == "mail"], again["writes"]


def test_a_message_whose_headers_name_no_content_type_has_its_mime_read_in_the_plan(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """Headers without a Content-Type cannot clear a message of the skip rules: the plan
    reads that message's MIME (and only that one's), as the real pass would, and plans it
    with the MIME's length."""
    w = licensed(make_project, sandbox)
    bare = w.put(["Inbox"], "bare", body=NO_MIME_HEADERS)
    w.put(["Inbox"], "plain")
    with sent(sandbox) as seen:
        planned = plan(w)
    [read] = mime_reads(seen)
    assert bare.id in read or bare.id.replace("=", "%3D") in read, read
    [copy] = mail_lines(planned, "copy")
    assert copy["messages"] == 2, copy
    plain = next(i for i in w.items("source") if i.subject == "plain")
    assert copy["bytes"] == len(NO_MIME_HEADERS) + message_size(plain.id, plain.size), copy
