"""A target that makes a copy without the replied/forwarded state (`Imported.lost`): the
sync counts it (`not_kept`), keeps the row `copied` with the reason and the subject, the
reconciliation lists it per folder with its subject apart from the skipped items, and the
report shows it; nothing is skipped. Source and target are Dovecot users through the real
sync algorithm; the target store is wrapped to answer as graph_items does for a Graph that
refuses 0x1081 (the sandbox keeps the property: it has no way to refuse it)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from coexist import report
from coexist.journal import Journal
from coexist.migrate import reconcile, sync
from coexist.migrate.passes import Window
from coexist.migrate.stores.imap import ImapStore
from coexist.tenants.imap import ImapEndpoint, ImapSession, NewMessage, Password
from coexist.tenants.protocols import Imported, ItemRef, Payload
from tests.dovecot import DovecotServer
from tests.integration.test_imap_store import message, open_store, sync_context

LOST = "the replied/forwarded state (refused: 400 ErrorInvalidProperty)"


class StateRefusing:
    """An IMAP target store whose copies of replied or forwarded messages come back
    `lost`, as `GraphItemsStore` answers once Graph refused 0x1081."""

    def __init__(self, inner: ImapStore) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _lost(self, payload: Payload, made: Imported) -> Imported:
        state = payload.state
        if state is not None and (state.answered or state.forwarded):
            return Imported(made.item_id, made.change_key, LOST)
        return made

    async def import_item(
        self, folder_id: str, payload: Payload, replace: ItemRef | None = None
    ) -> Imported:
        return self._lost(payload, await self.inner.import_item(folder_id, payload, replace))

    async def import_items(self, folder_id: str, payloads: list[Payload]) -> list[Any]:
        made = await self.inner.import_items(folder_id, payloads)
        return [
            self._lost(p, m) if isinstance(m, Imported) else m
            for p, m in zip(payloads, made, strict=True)
        ]


def test_copies_without_their_replied_state_are_counted_and_listed(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    """Two replied messages and a forwarded one (INBOX, Archive) among five: five copied,
    none skipped, three `not_kept`, each listed with its folder and subject (read from
    the MIME: an IMAP scan carries no subject), and the report's user says three; a
    second pass copies nothing and lists the same three."""
    endpoint = ImapEndpoint(dovecot.host, dovecot.tls_port, "tls", dovecot.ca_file)
    src_user, tgt_user = dovecot.new_user("nksrc"), dovecot.new_user("nktgt")
    answered, forwarded = frozenset({"\\Answered"}), frozenset({"$Forwarded"})
    with ImapSession.open(endpoint, Password(src_user.login, src_user.password)) as s:
        s.create_folder(["Archive"], None)
        s.append("INBOX", [NewMessage(message(1, "replied"), flags=answered),
                           NewMessage(message(2, "plain"))])  # fmt: skip
        s.append("Archive", [NewMessage(message(3, "forwarded"), keywords=forwarded),
                             NewMessage(message(4, "both"), answered | {"\\Seen"}),
                             NewMessage(message(5, "other"))])  # fmt: skip
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx = sync_context(journal)
    key = "nksrc@example.org"
    journal.upsert_item("user", key)  # the reconciliation is merged into it

    async def one_pass() -> tuple[Counter[str], dict[str, Any]]:
        async with (
            open_store(endpoint, src_user) as src,
            open_store(endpoint, tgt_user, label="target") as inner,
        ):
            tgt = StateRefusing(inner)
            counts: Counter[str] = Counter()
            plan, _ = await sync.sync_mailbox(ctx, key, src, tgt, Window(), counts)  # type: ignore[arg-type]
            recon = await reconcile.reconcile(ctx, key, plan, await inner.totals())  # type: ignore[arg-type]
            return counts, recon

    try:
        counts, recon = asyncio.run(one_pass())
        again, recon_again = asyncio.run(one_pass())
        rows = journal.mapped_items(key)
    finally:
        journal.close()
    assert counts["copied"] == 5 and counts["skipped"] == 0 and counts["not_kept"] == 3, counts
    assert {r["status"] for r in rows} == {"copied"}
    listed = sorted((i["folder"], i["subject"]) for i in recon["not_kept_items"])
    assert listed == [("Archive", "both 4"), ("Archive", "forwarded 3"), ("INBOX", "replied 1")]
    assert all(i["reason"] == sync.NOT_KEPT + LOST for i in recon["not_kept_items"])
    assert recon["skipped_items"] == [] and recon["unexplained"] == 0, recon
    assert again["copied"] == 0 and not again["not_kept"]
    assert recon_again["not_kept_items"] == recon["not_kept_items"]

    user = report._user({"user": key}, {"key": key, "detail": {"reconciliation": recon}}, [], {})
    assert user["not_kept"] == 3 and user["skipped"] == 0
    assert {i["subject"] for i in user["not_kept_items"]} == {"replied 1", "forwarded 3", "both 4"}
    assert report._totals([user], [])["not_kept"] == 3
