"""An IMAP target folder that does not keep \\Answered, $Forwarded or keywords (RFC 3501
7.1: its PERMANENTFLAGS on SELECT lack them, and "\\*"): the copies it silently strips are
counted `not_kept` and listed per folder with their subject, as a Microsoft 365 target's
are, and the pass detail says it once for the folder; a folder that keeps them is left
alone. A real Dovecot: its ACL plugin, an owner without the "w" right on the target folder
(PERMANENTFLAGS (\\Deleted \\Seen); an APPEND's other flags and keywords are dropped
without a word). The decision itself on recorded SELECT answers is in
tests/unit/test_imap_kept_flags.py."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from coexist.journal import Journal
from coexist.migrate import reconcile, sync
from coexist.migrate.passes import Window
from coexist.tenants.imap import ImapEndpoint, ImapSession, NewMessage, Password
from coexist.tenants.plan import WriteRecorder
from tests.dovecot import DovecotServer
from tests.integration.test_imap_store import message, open_store, sync_context

NO_WRITE = "lrsitekxa"  # every Dovecot ACL right but "w" (flags other than \Seen, \Deleted)


def test_a_target_folder_that_drops_flags_counts_and_lists_its_copies(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    """Six messages, two folders; the target's `Locked` keeps only \\Seen and \\Deleted.
    INBOX's replied message keeps \\Answered (read back); in `Locked` the forwarded, the
    replied+tagged and the tagged one are copied, stripped by Dovecot, counted `not_kept`
    (3) and listed (Locked, subject), the pass detail names the folder once; a plain \\Seen
    one is not counted. A second pass copies nothing. Then INBOX's replied message moves to
    `Locked` at the source: the pass moves its copy (MOVE), which loses \\Answered there,
    and it is listed too. A planned pass before all this counts the same three and appends
    nothing."""
    endpoint = ImapEndpoint(dovecot.host, dovecot.tls_port, "tls", dovecot.ca_file)
    src_user, tgt_user = dovecot.new_user("kfsrc"), dovecot.new_user("kftgt", acl=True)
    answered, forwarded, work = (
        frozenset({"\\Answered"}),
        frozenset({"$Forwarded"}),
        frozenset({"Work"}),
    )
    seen = frozenset({"\\Seen"})
    with ImapSession.open(endpoint, Password(src_user.login, src_user.password)) as s:
        s.create_folder(["Locked"], None)
        s.append("INBOX", [NewMessage(message(1, "replied"), flags=answered),
                           NewMessage(message(2, "plain"), flags=seen)])  # fmt: skip
        s.append("Locked", [NewMessage(message(3, "forwarded"), keywords=forwarded),
                            NewMessage(message(4, "both"), answered | seen, work),
                            NewMessage(message(5, "read"), flags=seen),
                            NewMessage(message(6, "tagged"), keywords=work)])  # fmt: skip
    with ImapSession.open(endpoint, Password(tgt_user.login, tgt_user.password)) as t:
        t.create_folder(["Locked"], None)
    dovecot.folder_rights(tgt_user, "Locked", NO_WRITE)
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx = sync_context(journal)
    key = "kfsrc@example.org"
    journal.upsert_item("user", key)  # the reconciliation is merged into it

    async def one_pass() -> tuple[Counter[str], Counter[str], dict[str, Any]]:
        async with (
            open_store(endpoint, src_user) as src,
            open_store(endpoint, tgt_user, label="target") as tgt,
        ):
            counts: Counter[str] = Counter()
            plan, stores = await sync.sync_mailbox(ctx, key, src, tgt, Window(), counts)
            recon = await reconcile.reconcile(ctx, key, plan, await tgt.totals())  # type: ignore[arg-type]
            return counts, stores.not_kept, recon

    def target_flags() -> dict[str, set[str]]:
        with ImapSession.open(endpoint, Password(tgt_user.login, tgt_user.password)) as t:
            out = {}
            for name in ("INBOX", "Locked"):
                for r in t.changes(name, None).new:
                    out[f"{name}:{r.message_id}"] = set(r.flags | r.keywords) - {"\\Recent"}
            return out

    async def planned_pass() -> tuple[Counter[str], list[Any]]:
        """The same pass in plan mode, over a scratch journal: it reads PERMANENTFLAGS too."""
        scratch = Journal.open(f"sqlite:///{tmp_path / 'plan.sqlite'}")
        recorder = WriteRecorder()
        try:
            async with (
                open_store(endpoint, src_user) as src,
                open_store(endpoint, tgt_user, label="target", plan=recorder) as tgt,
            ):
                counts: Counter[str] = Counter()
                planning = SimpleNamespace(**{**vars(sync_context(scratch)), "planning": True})
                await sync.sync_mailbox(planning, key, src, tgt, Window(), counts)  # type: ignore[arg-type]
                return counts, recorder.writes
        finally:
            scratch.close()

    try:
        planned, writes = asyncio.run(planned_pass())
        assert planned["not_kept"] == 3 and [w for w in writes if "APPEND" in w.operation]
        assert journal.mapped_items(key) == []
        counts, lacks, recon = asyncio.run(one_pass())
        flags = target_flags()
        again, _, recon_again = asyncio.run(one_pass())
        with ImapSession.open(endpoint, Password(src_user.login, src_user.password)) as s:
            s.move("INBOX", [1], "Locked")
        moved, moved_lacks, recon_moved = asyncio.run(one_pass())
        rows = journal.mapped_items(key)
    finally:
        journal.close()

    assert counts["copied"] == 6 and counts["skipped"] == 0 and counts["not_kept"] == 3, counts
    # One wording for the folder, so the pass detail says it once.
    [(lack, n)] = lacks.items()
    assert n == 3 and "'Locked'" in lack and "\\Answered" in lack and "new keywords" in lack
    note = sync.not_kept_note(counts["not_kept"], lacks)
    assert note is not None and note.count("'Locked'") == 1, note
    listed = sorted((i["folder"], i["subject"]) for i in recon["not_kept_items"])
    assert listed == [("Locked", "both 4"), ("Locked", "forwarded 3"), ("Locked", "tagged 6")]
    assert all(i["reason"] == sync.NOT_KEPT + lack for i in recon["not_kept_items"])
    assert recon["skipped_items"] == [] and recon["unexplained"] == 0, recon
    # What Dovecot really kept: INBOX all of it; Locked only \Seen.
    assert flags["INBOX:<m1.replied@example.org>"] == {"\\Answered"}, flags
    assert flags["Locked:<m3.forwarded@example.org>"] == set(), flags
    assert flags["Locked:<m4.both@example.org>"] == {"\\Seen"}, flags
    assert flags["Locked:<m6.tagged@example.org>"] == set(), flags

    assert again["copied"] == 0 and not again["not_kept"], again
    assert recon_again["not_kept_items"] == recon["not_kept_items"]

    assert moved["moved"] == 1 and moved["copied"] == 0, moved
    assert moved["not_kept"] == 1 and list(moved_lacks) == [lack], moved
    listed = sorted((i["folder"], i["subject"]) for i in recon_moved["not_kept_items"])
    assert ("Locked", "replied 1") in listed and len(listed) == 4, listed
    assert not any(sync.moving(r) for r in rows)
