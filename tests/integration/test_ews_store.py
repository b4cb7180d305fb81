"""The EWS store against the sandbox's EWS face, with exchangelib as the real client over
HTTPS (NTLM, the sandbox CA through exchangelib's documented adapter hook).

Through the one sync algorithm (`sync.sync_mailbox`) from an Exchange 2016 mailbox to an
Exchange 2019 mailbox: full fidelity (ExportItems -> UploadItems) and MIME + state; re-runs
copy nothing; a stale sync state restarts the folder without duplicates; a missing
FullAccess or ApplicationImpersonation grant fails that user with the grant named.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
from tenacity import RetryCallState

from coexist.errors import PermissionDenied, TransientError
from coexist.journal import Journal
from coexist.migrate import sync
from coexist.migrate.passes import Window
from coexist.migrate.stores.ews import CAPS, VERB_FORWARD, VERB_REPLY, EwsStore
from coexist.retry import RetryPolicy
from coexist.sandbox import Sandbox
from coexist.sandbox.ews import EWS_PATH
from coexist.tenants.ews import AdminLogin, EwsEndpoint, EwsLimits, EwsServer
from coexist.tenants.protocols import (
    EXCHANGE_STREAM,
    MIME,
    Capabilities,
    Folder,
    ItemRef,
    MessageState,
    Payload,
)
from tests.ewsclient import PASSWORD, mailboxes, migration_account, org

T = TypeVar("T")
RETRY = RetryPolicy(max_attempts=6, max_wait_s=30, base_s=0.05, cap_s=0.5)


@dataclass(frozen=True)
class CountingRetry(RetryPolicy):
    """The policy, remembering each wait it was told by the service (Retry-After)."""

    told: list[float] = field(default_factory=list)

    def wait_for(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            self.told.append(exc.retry_after)
        return super().wait_for(state)


def message(n: int, subject: str = "hello") -> bytes:
    return (
        f"From: Ann <ann@hoster-a.example>\r\nTo: Bob <bob@hoster-a.example>\r\n"
        f"Subject: {subject} {n}\r\nMessage-ID: <ews-store-{subject}-{n}@test>\r\n"
        f"Date: Mon, 4 Mar 2024 10:{n:02d}:00 +0000\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\nbody {n}\r\n"
    ).encode()


def server(
    sb: Sandbox,
    side: str,
    login: str,
    *,
    access: str = "delegation",
    version: str = "Exchange2016",
    retry: RetryPolicy = RETRY,
) -> EwsServer:
    endpoint = EwsEndpoint(
        sb.base_url + EWS_PATH,
        auth="ntlm",
        version=version,
        access=access,  # type: ignore[arg-type]
        ca_file=sb.connection["ca_file"],
        side=side,
    )
    return EwsServer(endpoint, AdminLogin(login, PASSWORD), EwsLimits(4, 4), retry=retry)


@asynccontextmanager
async def store(srv: EwsServer, address: str, label: str) -> AsyncIterator[EwsStore]:
    try:
        async with srv.mailbox(address) as mailbox:
            yield EwsStore(mailbox, label=label)
    finally:
        await srv.close()


class MimeOnly(EwsStore):
    """A target that takes MIME only (so the pair negotiates MIME + state, as across kinds)."""

    @property
    def caps(self) -> Capabilities:
        return replace(CAPS, accepts=frozenset({MIME}))


def sync_context(journal: Journal) -> Any:
    """The little of a Context that sync.py reads: journal, plan flag, migration settings."""
    migration = SimpleNamespace(
        max_item_mb=150, encrypted="copy", deletions="keep",
        folder_rules=[], include_folders=[], exclude_folders=[],
    )  # fmt: skip
    return SimpleNamespace(journal=journal, planning=False, plan=None,
                           project=SimpleNamespace(migration=migration))  # fmt: skip


async def sync_pass(ctx: Any, key: str, src: EwsStore, tgt: EwsStore) -> Counter[str]:
    counts: Counter[str] = Counter()
    await sync.sync_mailbox(ctx, key, src, tgt, Window(), counts)
    return counts


def run(main: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(main())  # type: ignore[arg-type]


@pytest.fixture
def orgs(sandbox: Sandbox) -> Sandbox:
    """Source an Exchange 2016 organisation, target an Exchange 2019 one."""
    org(sandbox, "source", "exchange2016")
    org(sandbox, "target", "exchange2019")
    return sandbox


def seed(sb: Sandbox, mailbox_id: str, n: int, subject: str = "hello") -> None:
    base = datetime(2024, 3, 4, 10, tzinfo=UTC)
    for i in range(n):
        sb.mail.insert_message(
            "source", mailbox_id, "inbox", message(i, subject),
            received=base + timedelta(minutes=i), is_read=i % 2 == 0,
            flag={"flagStatus": "flagged"} if i % 3 == 0 else None,
            categories=["Blue"] if i == 1 else [],
            # PR_FLAG_STATUS, what EWS reads the flag from (the face keeps the typed flag apart)
            properties={"Integer 0x1090": "2"} if i % 3 == 0 else None,
        )  # fmt: skip


async def mail_count(s: EwsStore) -> int:
    return sum((await s.totals()).values())


def test_exchange_to_exchange_full_fidelity_round_trip(orgs: Sandbox, tmp_path: Path) -> None:
    """sync_mailbox over ExportItems -> UploadItems: every mail item once, the exported blob
    of a copy byte-identical to its source's, a re-run copies nothing, and after the sync
    states go stale a new message is the only copy made (the folders' rounds restart)."""
    sb = orgs
    [src_user] = mailboxes(sb, "source", 1)
    [tgt_user] = mailboxes(sb, "target", 1)
    assert src_user.primary_smtp and tgt_user.primary_smtp
    seed(sb, src_user.id, 6)
    src_admin = migration_account(sb, "source", full_access=[src_user.primary_smtp])
    tgt_admin = migration_account(sb, "target", full_access=[tgt_user.primary_smtp])
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx, key = sync_context(journal), src_user.primary_smtp

    async def main() -> dict[str, Any]:
        async with AsyncExitStack() as stack:
            src = await stack.enter_async_context(
                store(server(sb, "source", src_admin), src_user.primary_smtp or "", "source")
            )
            tgt = await stack.enter_async_context(
                store(server(sb, "target", tgt_admin, version="Exchange2016"),
                      tgt_user.primary_smtp or "", "target")
            )  # fmt: skip
            before = await mail_count(src)
            first = await sync_pass(ctx, key, src, tgt)
            second = await sync_pass(ctx, key, src, tgt)
            copied = [r for r in journal.mapped_items(key) if r["status"] == "copied"]
            row = copied[0]
            a = await src.export([ItemRef(row["source_folder_id"], row["source_item_id"])],
                                 EXCHANGE_STREAM)  # fmt: skip
            b = await tgt.export([ItemRef(row["target_folder_id"], row["target_item_id"])],
                                 EXCHANGE_STREAM)  # fmt: skip
            sb.world.expire_sync_states()
            seed(sb, src_user.id, 1, subject="late")
            third = await sync_pass(ctx, key, src, tgt)
            return {
                "before": before, "first": first, "second": second, "third": third,
                "a": a[row["source_item_id"]].data, "b": b[row["target_item_id"]].data,
                "after_src": await mail_count(src), "after_tgt": await mail_count(tgt),
                "copied": len(copied),
            }  # fmt: skip

    try:
        got = run(main)
    finally:
        journal.close()
    assert got["first"]["copied"] == got["before"] == got["copied"]
    assert got["second"]["copied"] == 0
    assert got["a"] == got["b"]
    assert got["third"]["copied"] == 1
    assert got["after_tgt"] >= got["after_src"] - 0  # the target held its own mail before
    rows = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    try:
        statuses = Counter(r["status"] for r in rows.mapped_items(key))
    finally:
        rows.close()
    assert statuses["copied"] == got["before"] + 1


def mime_round(
    sb: Sandbox, tmp_path: Path, verbs: bool = False
) -> tuple[Counter[str], Counter[str], list[Any]]:
    """Four seeded messages (with `verbs`, two more: one replied, one forwarded, by their
    PidTagLastVerbExecuted) synced into a MIME-only target: the two passes' counts and
    (source state, copy state) per message."""
    [src_user] = mailboxes(sb, "source", 1)
    [tgt_user] = mailboxes(sb, "target", 1)
    assert src_user.primary_smtp and tgt_user.primary_smtp
    seed(sb, src_user.id, 4, subject="mime")
    for n, verb in [(10, VERB_REPLY), (11, VERB_FORWARD)] if verbs else []:
        sb.mail.insert_message("source", src_user.id, "inbox", message(n, "mime verb"),
                               properties={"Integer 0x1081": str(verb)})  # fmt: skip
    src_admin = migration_account(sb, "source", full_access=[src_user.primary_smtp])
    tgt_admin = migration_account(sb, "target", full_access=[tgt_user.primary_smtp])
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx, key = sync_context(journal), src_user.primary_smtp

    async def main() -> tuple[Counter[str], Counter[str], list[tuple[Any, Any]]]:
        src_srv = server(sb, "source", src_admin)
        tgt_srv = server(sb, "target", tgt_admin)
        try:
            async with (
                src_srv.mailbox(src_user.primary_smtp or "") as sm,
                tgt_srv.mailbox(tgt_user.primary_smtp or "") as tm,
            ):
                src, tgt = EwsStore(sm), MimeOnly(tm, label="target")
                first = await sync_pass(ctx, key, src, tgt)
                second = await sync_pass(ctx, key, src, tgt)
                pairs = []
                for r in journal.mapped_items(key):
                    if r["status"] != "copied" or "mime" not in str(r["subject"] or ""):
                        continue
                    s = await src.export(
                        [ItemRef(r["source_folder_id"], r["source_item_id"])], MIME
                    )
                    t = await tgt.export(
                        [ItemRef(r["target_folder_id"], r["target_item_id"])], MIME
                    )
                    pairs.append((s[r["source_item_id"]].state, t[r["target_item_id"]].state))
                return first, second, pairs
        finally:
            await src_srv.close()
            await tgt_srv.close()

    try:
        return run(main)
    finally:
        journal.close()


def test_mime_path_keeps_flag_categories_and_dates(orgs: Sandbox, tmp_path: Path) -> None:
    """Into a MIME-only target (as across kinds): each copy is no draft and keeps its
    follow-up flag, categories and delivery time; a re-run copies nothing."""
    first, second, pairs = mime_round(orgs, tmp_path)
    assert first["copied"] >= 4 and second["copied"] == 0
    assert len(pairs) == 4
    assert any(s.flag == {"flagStatus": "flagged"} for s, _ in pairs)
    assert any(s.categories for s, _ in pairs)
    for s, t in pairs:
        assert s is not None and t is not None
        assert not t.draft
        assert (t.categories, t.flag) == (s.categories, s.flag)
        assert t.received == s.received


def test_mime_path_keeps_the_replied_and_forwarded_state(orgs: Sandbox, tmp_path: Path) -> None:
    """Into a MIME-only target the EWS store writes the last verb (PidTagLastVerbExecuted,
    0x1081) at creation: the replied and the forwarded message read back as such from the
    sandbox's EWS, nothing is counted `not_kept`, and a re-run copies nothing."""
    first, second, pairs = mime_round(orgs, tmp_path, verbs=True)
    assert first["copied"] >= 6 and second["copied"] == 0 and not first["not_kept"], first
    states = [(s.answered, s.forwarded, t.answered, t.forwarded) for s, t in pairs]
    assert (True, False, True, False) in states and (False, True, False, True) in states
    assert all(a == c and b == d for a, b, c, d in states), states


def test_mime_path_keeps_the_read_state(orgs: Sandbox, tmp_path: Path) -> None:
    """Each MIME copy is read where its source is."""
    _, _, pairs = mime_round(orgs, tmp_path)
    assert any(s.read for s, _ in pairs)
    assert [t.read for _, t in pairs] == [s.read for s, _ in pairs]


def test_delegation_without_full_access_names_the_grant(orgs: Sandbox) -> None:
    """A mailbox the admin has no FullAccess on: PermissionDenied naming the user, the
    grant and the Add-MailboxPermission line; a granted mailbox opens."""
    sb = orgs
    granted, other = mailboxes(sb, "source", 2)
    assert granted.primary_smtp and other.primary_smtp
    admin = migration_account(sb, "source", full_access=[granted.primary_smtp])

    async def main() -> int:
        srv = server(sb, "source", admin)
        try:
            async with srv.mailbox(granted.primary_smtp or "") as ok:
                folders = await EwsStore(ok).list_folders()
            async with srv.mailbox(other.primary_smtp or "") as refused:
                await EwsStore(refused).list_folders()
        finally:
            await srv.close()
        return len(folders.folders)

    with pytest.raises(PermissionDenied) as err:
        run(main)
    assert other.primary_smtp in err.value.message and "FullAccess" in err.value.message
    assert err.value.next_step and "Add-MailboxPermission" in err.value.next_step


def test_impersonation_without_the_role_names_it(orgs: Sandbox) -> None:
    """Impersonation by an account without ApplicationImpersonation: PermissionDenied with
    ErrorImpersonateUserDenied naming the role and the New-ManagementRoleAssignment line."""
    sb = orgs
    [user] = mailboxes(sb, "source", 1)
    assert user.primary_smtp
    admin = migration_account(sb, "source", name="svc-noimp", impersonation=False)

    async def main() -> None:
        srv = server(sb, "source", admin, access="impersonation")
        try:
            async with srv.mailbox(user.primary_smtp or "") as mb:
                await EwsStore(mb).list_folders()
        finally:
            await srv.close()

    with pytest.raises(PermissionDenied) as err:
        run(main)
    assert err.value.code == "ErrorImpersonateUserDenied"
    assert "ApplicationImpersonation" in err.value.message
    assert err.value.next_step and "New-ManagementRoleAssignment" in err.value.next_step


def test_capabilities_offer_the_stream_and_mime() -> None:
    """Two EWS stores negotiate the stream; a MIME-only target gets MIME."""
    assert EXCHANGE_STREAM in CAPS.exports and MIME in CAPS.accepts
    assert CAPS.cursor == "sync-state" and CAPS.moves
    _ = Folder


@pytest.fixture(scope="module")
def chaos_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A sandbox of its own under the `chaos` profile: a seeded share of EWS calls answer
    ErrorServerBusy with BackOffMilliseconds."""
    with Sandbox(tmp_path_factory.mktemp("chaos"), seed=11, users=6, profile="chaos") as sb:
        org(sb, "source", "exchange2016")
        org(sb, "target", "exchange2019")
        yield sb


def test_a_server_busy_storm_completes_with_every_item_once(
    chaos_sandbox: Sandbox, tmp_path: Path
) -> None:
    """Under chaos (ErrorServerBusy with its back-off on a share of calls) a pass completes
    through the retry policy, each item copied once; the next pass copies nothing."""
    sb = chaos_sandbox
    [src_user] = mailboxes(sb, "source", 1)
    [tgt_user] = mailboxes(sb, "target", 1)
    assert src_user.primary_smtp and tgt_user.primary_smtp
    seed(sb, src_user.id, 10, subject="storm")
    src_admin = migration_account(sb, "source", full_access=[src_user.primary_smtp])
    tgt_admin = migration_account(sb, "target", full_access=[tgt_user.primary_smtp])
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx, key = sync_context(journal), src_user.primary_smtp

    retry = CountingRetry(max_attempts=6, max_wait_s=60, base_s=0.05, cap_s=0.5)

    async def main() -> tuple[int, Counter[str], Counter[str], int]:
        src_srv = server(sb, "source", src_admin, retry=retry)
        tgt_srv = server(sb, "target", tgt_admin, retry=retry)
        try:
            async with (
                src_srv.mailbox(src_user.primary_smtp or "") as sm,
                tgt_srv.mailbox(tgt_user.primary_smtp or "") as tm,
            ):
                src, tgt = EwsStore(sm), EwsStore(tm, label="target")
                before = await mail_count(src)
                first = await sync_pass(ctx, key, src, tgt)
                second = await sync_pass(ctx, key, src, tgt)
                return before, first, second, src_srv.calls + tgt_srv.calls
        finally:
            await src_srv.close()
            await tgt_srv.close()

    try:
        before, first, second, calls = run(main)
        copied = Counter(r["source_identity"] for r in journal.mapped_items(key)
                         if r["status"] == "copied")  # fmt: skip
    finally:
        journal.close()
    assert first["copied"] == before and second["copied"] == 0
    assert all(n == 1 for n in copied.values()) and len(copied) == before
    # The storm happened, and each wait was the one ErrorServerBusy asked for.
    assert retry.told and calls > len(retry.told)


def ews_project(sb: Sandbox, directory: Path, src_admin: str, tgt_admin: str) -> dict[str, str]:
    """A project.toml of kind exchange -> exchange on the sandbox, the admins' passwords in
    its vault (`credentials set --master`); the environment that opens the vault."""
    from cryptography.fernet import Fernet

    from coexist.credentials import credentials_set_master

    url, ca = sb.base_url + EWS_PATH, sb.connection["ca_file"]
    (directory / "project.toml").write_text(
        f'[source]\nkind = "exchange"\n[source.ews]\nurl = "{url}"\nadmin = "{src_admin}"\n'
        f'ca_file = "{ca}"\n[target]\nkind = "exchange"\n[target.ews]\nurl = "{url}"\n'
        f'admin = "{tgt_admin}"\nca_file = "{ca}"\nversion = "Exchange2019"\n'
    )
    env = {"COEXIST_VAULT_KEY": Fernet.generate_key().decode()}
    for side in ("source", "target"):
        credentials_set_master(directory, PASSWORD, side=side, env=env)
    return env


def test_a_project_of_kind_exchange_moves_mail_through_its_sides_and_mover(
    orgs: Sandbox, tmp_path: Path
) -> None:
    """The product's wiring: project.toml [source.ews]/[target.ews], the admins' passwords in
    the vault (credentials set --master), the sides opened by kind, the default ews-sync
    mover: a prestage pass copies every mail item, reconciles, says it moves calendars,
    contacts, tasks and notes too (Exchange on both sides); a second copies nothing."""
    from coexist.engine.context import Context, SideOptions, open_sides
    from coexist.migrate.passes import mover_for, run_pass
    from coexist.runtime import open_journal
    from coexist.settings import load_project

    sb = orgs
    [src_user] = mailboxes(sb, "source", 1)
    [tgt_user] = mailboxes(sb, "target", 1)
    assert src_user.primary_smtp and tgt_user.primary_smtp
    seed(sb, src_user.id, 5, subject="wired")
    src_admin = migration_account(sb, "source", full_access=[src_user.primary_smtp])
    tgt_admin = migration_account(sb, "target", full_access=[tgt_user.primary_smtp])
    env = ews_project(sb, tmp_path, src_admin, tgt_admin)
    project = load_project(tmp_path, env=env)
    journal = open_journal(project)
    key = src_user.primary_smtp
    journal.upsert_item(
        "user", key, source_address=src_user.primary_smtp, target_address=tgt_user.primary_smtp
    )

    async def main() -> tuple[Any, Any, str]:
        async with open_sides(project, SideOptions(read_retry=RETRY, env=env)) as (s, t):
            ctx = Context(project, journal, s, t, run_id=journal.start_run("test"))
            name = type(mover_for(ctx)).__name__
            first = await run_pass(ctx, key, "prestage", Window())
            second = await run_pass(ctx, key, "prestage", Window())
            return first, second, name

    try:
        first, second, mover = run(main)
    finally:
        journal.close()
    assert project.migration.mover == "ews-sync" and mover == "EwsSyncMover"
    assert first.status == "ok", first.detail
    assert first.counts["copied"] >= 5 and first.counts["difference"] == 0
    assert "calendars, contacts, tasks and notes" in first.detail
    assert second.status == "ok" and second.counts.get("copied", 0) == 0


def test_exchange_to_workmail_goes_as_mime_and_skips_what_workmail_refuses(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Exchange 2016 -> Amazon WorkMail (Basic auth, Exchange2010_SP2, MIME only): the
    messages arrive with their state; one over WorkMail's ~23 MB limit is refused with
    ErrorMessageSizeExceeded and skipped with that reason, the pass goes on."""
    sb = sandbox
    org(sb, "source", "exchange2016")
    org(sb, "target", "workmail")
    [src_user] = mailboxes(sb, "source", 1)
    [tgt_user] = mailboxes(sb, "target", 1)
    assert src_user.primary_smtp and tgt_user.primary_smtp
    seed(sb, src_user.id, 3, subject="wm")
    big = message(99, "huge").replace(b"body 99", b"x" * (24 * 1024 * 1024))
    sb.mail.insert_message("source", src_user.id, "inbox", big)
    src_admin = migration_account(sb, "source", full_access=[src_user.primary_smtp])
    tgt_admin = migration_account(sb, "target", full_access=[tgt_user.primary_smtp])
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx, key = sync_context(journal), src_user.primary_smtp

    async def main() -> tuple[Counter[str], Counter[str], str]:
        src_srv = server(sb, "source", src_admin)
        endpoint = EwsEndpoint(sb.base_url + EWS_PATH, auth="basic", version="Exchange2010_SP2",
                               ca_file=sb.connection["ca_file"], side="target", kind="workmail")  # fmt: skip
        tgt_srv = EwsServer(endpoint, AdminLogin(tgt_admin, PASSWORD), EwsLimits(4, 2), RETRY)
        try:
            async with (
                src_srv.mailbox(src_user.primary_smtp or "") as sm,
                tgt_srv.mailbox(tgt_user.primary_smtp or "") as tm,
            ):
                src, tgt = EwsStore(sm), EwsStore(tm, label="target")
                fmt = sync.negotiate(src, tgt)
                return await sync_pass(ctx, key, src, tgt), await sync_pass(ctx, key, src, tgt), fmt
        finally:
            await src_srv.close()
            await tgt_srv.close()

    try:
        first, second, fmt = run(main)
        rows = journal.mapped_items(key)
    finally:
        journal.close()
    assert fmt == MIME
    [huge] = [r for r in rows if "huge" in str(r["subject"] or "")]
    assert huge["status"] == "skipped" and "ErrorMessageSizeExceeded" in str(huge["reason"])
    assert first["skipped"] == 1 and first["copied"] >= 3
    assert second.get("copied", 0) == 0


def test_verify_credentials_opens_each_mailbox_and_names_a_missing_grant(
    orgs: Sandbox, tmp_path: Path
) -> None:
    """`verify-credentials` on an exchange -> exchange project: a user whose mailboxes the
    admins have FullAccess on is ok; one without is refused on that side naming FullAccess
    and the Add-MailboxPermission line."""
    from coexist.credcheck import verify_credentials
    from coexist.runtime import open_journal
    from coexist.settings import load_project

    sb = orgs
    src = mailboxes(sb, "source", 2)
    [tgt] = mailboxes(sb, "target", 1)
    assert src[0].primary_smtp and src[1].primary_smtp and tgt.primary_smtp
    src_admin = migration_account(sb, "source", full_access=[src[0].primary_smtp])
    tgt_admin = migration_account(sb, "target", full_access=[tgt.primary_smtp])
    env = ews_project(sb, tmp_path, src_admin, tgt_admin)
    journal = open_journal(load_project(tmp_path, env=env))
    try:
        for u in src:
            journal.upsert_item("user", u.primary_smtp or "", source_address=u.primary_smtp,
                                target_address=tgt.primary_smtp)  # fmt: skip
    finally:
        journal.close()
    got = verify_credentials(tmp_path, all_users=True, env=env)
    by_user = {u["user"]: u for u in got["users"]}
    ok, refused = by_user[src[0].primary_smtp], by_user[src[1].primary_smtp]
    assert ok["ok"] and ok["source"]["kind"] == "exchange"
    assert not refused["ok"] and refused["target"]["result"] == "ok"
    assert refused["source"]["result"] == "refused"
    assert "FullAccess" in refused["source"]["message"]
    assert "Add-MailboxPermission" in str(refused["source"]["next"])


def test_plan_mode_records_the_writes_and_sends_none(orgs: Sandbox) -> None:
    """A store with a WriteRecorder records CreateFolder / CreateItem / UploadItems /
    MoveItem / DeleteItem and changes nothing in the mailbox."""
    from coexist.tenants.plan import WriteRecorder

    sb = orgs
    [user] = mailboxes(sb, "target", 1)
    assert user.primary_smtp
    admin = migration_account(sb, "target", full_access=[user.primary_smtp])
    plan = WriteRecorder()

    async def main() -> tuple[int, int]:
        srv = server(sb, "target", admin)
        try:
            async with srv.mailbox(user.primary_smtp or "") as mb:
                st = EwsStore(mb, label="target", plan=plan)
                before = await mail_count(st)
                inbox = next(
                    f for f in (await st.list_folders()).folders if f.well_known == "inbox"
                )
                made = await st.create_folder(None, "Planned", ("Planned",), "IPF.Note")
                assert made is not None
                payload = Payload(MIME, "", None, mime=message(1, "plan"), state=MessageState())
                await st.import_item(inbox.id, payload)
                await st.import_item(made.id, Payload(EXCHANGE_STREAM, "QUJD", None))
                await st.move(ItemRef(inbox.id, "some-id"), inbox.id)
                await st.delete(ItemRef(inbox.id, "some-id"))
                return before, await mail_count(st)
        finally:
            await srv.close()

    before, after = run(main)
    assert before == after
    ops = [w.operation.split(" ", 1)[0] for w in plan.writes]
    assert ops == ["CreateFolder", "CreateItem", "UploadItems", "MoveItem", "DeleteItem"]
    assert all(w.system == "ews" and w.tenant == "target" for w in plan.writes)


# -- across kinds: Microsoft 365 <-> EWS through Graph's mail API ---------------------------


@asynccontextmanager
async def graph_store(conn: dict[str, Any], side: str, mailbox: str) -> AsyncIterator[Any]:
    """A sandbox mailbox through Graph's mail API (the m365 side of graph-ews / ews-graph)."""
    from coexist.migrate.stores.graph import Box
    from coexist.migrate.stores.graph_items import GraphItemsStore
    from coexist.tenants.auth import TenantEndpoint
    from coexist.tenants.graph import GraphAdapter

    async with GraphAdapter(TenantEndpoint.from_sandbox(conn, side), label=side) as graph:
        yield GraphItemsStore(Box(graph, mailbox, ""))


def cross_context(journal: Journal, source: str, target: str) -> Any:
    ctx = sync_context(journal)
    ctx.project.source = SimpleNamespace(kind=source)
    ctx.project.target = SimpleNamespace(kind=target)
    return ctx


def test_m365_to_workmail_moves_mail_as_mime_with_its_state(
    sandbox: Sandbox, conn: dict[str, Any], tmp_path: Path
) -> None:
    """graph-ews's pair: a Microsoft 365 mailbox (Graph mail API) into an Amazon WorkMail
    mailbox over EWS: every message once, no draft, its flag, categories and delivery time
    kept; a re-run copies nothing."""
    sb = sandbox
    org(sb, "target", "workmail")
    [src_user] = mailboxes(sb, "source", 1)
    [tgt_user] = mailboxes(sb, "target", 1)
    assert src_user.primary_smtp and tgt_user.primary_smtp
    base = datetime(2024, 5, 6, 7, tzinfo=UTC)
    for i in range(3):
        sb.mail.insert_message(
            "source", src_user.id, "inbox", message(i, "m365"), received=base + timedelta(hours=i),
            is_read=True, flag={"flagStatus": "flagged"} if i == 0 else None,
            categories=["Green"] if i == 2 else [],
        )  # fmt: skip
    tgt_admin = migration_account(sb, "target", full_access=[tgt_user.primary_smtp])
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx, key = cross_context(journal, "m365", "workmail"), src_user.id

    async def main() -> tuple[Counter[str], Counter[str], list[tuple[Any, Any]]]:
        endpoint = EwsEndpoint(sb.base_url + EWS_PATH, auth="basic", version="Exchange2010_SP2",
                               ca_file=sb.connection["ca_file"], side="target", kind="workmail")  # fmt: skip
        tgt_srv = EwsServer(endpoint, AdminLogin(tgt_admin, PASSWORD), EwsLimits(4, 2), RETRY)
        try:
            async with (
                graph_store(conn, "source", src_user.id) as src,
                tgt_srv.mailbox(tgt_user.primary_smtp or "") as tm,
            ):
                tgt = EwsStore(tm, label="target")
                assert sync.negotiate(src, tgt) == MIME
                counts: list[Counter[str]] = [Counter(), Counter()]
                for c in counts:
                    await sync.sync_mailbox(ctx, key, src, tgt, Window(), c)
                pairs = []
                for r in journal.mapped_items(key):
                    if r["status"] != "copied" or "m365" not in str(r["subject"] or ""):
                        continue
                    s = await src.export(
                        [ItemRef(r["source_folder_id"], r["source_item_id"])], MIME
                    )
                    t = await tgt.export(
                        [ItemRef(r["target_folder_id"], r["target_item_id"])], MIME
                    )
                    pairs.append((s[r["source_item_id"]].state, t[r["target_item_id"]].state))
                return counts[0], counts[1], pairs
        finally:
            await tgt_srv.close()

    try:
        first, second, pairs = run(main)
    finally:
        journal.close()
    assert first["copied"] >= 3 and second.get("copied", 0) == 0
    assert len(pairs) == 3
    for s, t in pairs:
        assert not t.draft
        assert t.read == s.read
        assert (t.flag or {}).get("flagStatus") == (s.flag or {}).get("flagStatus")
        assert t.categories == s.categories
        assert datetime.fromisoformat(str(t.received)) == datetime.fromisoformat(str(s.received))


def test_exchange_to_m365_moves_mail_as_non_drafts_with_its_state(
    orgs: Sandbox, conn: dict[str, Any], tmp_path: Path
) -> None:
    """ews-graph's pair: an Exchange 2016 mailbox over EWS into a Microsoft 365 mailbox
    through Graph's mail API (the sandbox's target tenant made m365 again): every message
    once with its read state, flag, categories and delivery time; a re-run copies nothing."""
    from coexist.sandbox.ews import set_kind

    sb = orgs
    set_kind(sb.world, "target", "m365")
    [src_user] = mailboxes(sb, "source", 1)
    [tgt_user] = mailboxes(sb, "target", 1)
    assert src_user.primary_smtp
    seed(sb, src_user.id, 4, subject="toexo")
    src_admin = migration_account(sb, "source", full_access=[src_user.primary_smtp])
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx, key = cross_context(journal, "exchange", "m365"), src_user.primary_smtp

    async def main() -> tuple[Counter[str], Counter[str], list[tuple[Any, Any]]]:
        src_srv = server(sb, "source", src_admin)
        try:
            async with (
                src_srv.mailbox(src_user.primary_smtp or "") as sm,
                graph_store(conn, "target", tgt_user.id) as tgt,
            ):
                src = EwsStore(sm)
                assert sync.negotiate(src, tgt) == MIME
                counts: list[Counter[str]] = [Counter(), Counter()]
                for c in counts:
                    await sync.sync_mailbox(ctx, key, src, tgt, Window(), c)
                pairs = []
                for r in journal.mapped_items(key):
                    if r["status"] != "copied" or "toexo" not in str(r["subject"] or ""):
                        continue
                    s = await src.export(
                        [ItemRef(r["source_folder_id"], r["source_item_id"])], MIME
                    )
                    t = await tgt.export(
                        [ItemRef(r["target_folder_id"], r["target_item_id"])], MIME
                    )
                    pairs.append((s[r["source_item_id"]].state, t[r["target_item_id"]].state))
                return counts[0], counts[1], pairs
        finally:
            await src_srv.close()

    try:
        first, second, pairs = run(main)
    finally:
        journal.close()
    assert first["copied"] >= 4 and second.get("copied", 0) == 0
    assert len(pairs) == 4
    for s, t in pairs:
        assert not t.draft
        assert (t.read, t.categories) == (s.read, s.categories)
        assert (t.flag or {}).get("flagStatus") == (s.flag or {}).get("flagStatus")
        assert datetime.fromisoformat(str(t.received)) == datetime.fromisoformat(str(s.received))


@pytest.mark.parametrize("mime_only", [False, True], ids=["stream", "mime"])
def test_a_move_and_a_change_at_the_source_are_a_move_and_an_update_in_the_target(
    orgs: Sandbox, tmp_path: Path, mime_only: bool
) -> None:
    """After a first pass, a message moved to another folder at the source is moved in the
    target (MoveItem: no second copy) and a message whose categories changed is updated
    (UploadItems Update of the stream, or UpdateItem of its state); a third pass does
    nothing."""
    sb = orgs
    [src_user] = mailboxes(sb, "source", 1)
    [tgt_user] = mailboxes(sb, "target", 1)
    assert src_user.primary_smtp and tgt_user.primary_smtp
    seed(sb, src_user.id, 3, subject="mv")
    src_admin = migration_account(sb, "source", full_access=[src_user.primary_smtp])
    tgt_admin = migration_account(sb, "target", full_access=[tgt_user.primary_smtp])
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx, key = sync_context(journal), src_user.primary_smtp

    async def main() -> tuple[list[Counter[str]], tuple[str, ...] | None, list[str]]:
        src_srv, tgt_srv = server(sb, "source", src_admin), server(sb, "target", tgt_admin)
        try:
            async with (
                src_srv.mailbox(src_user.primary_smtp or "") as sm,
                tgt_srv.mailbox(tgt_user.primary_smtp or "") as tm,
            ):
                src = EwsStore(sm)
                tgt = MimeOnly(tm, label="target") if mime_only else EwsStore(tm, label="target")
                first = await sync_pass(ctx, key, src, tgt)
                folders = (await src.list_folders()).folders
                inbox = next(f for f in folders if f.well_known == "inbox")
                archive = await src.create_folder(None, "Kept", ("Kept",), "IPF.Note")
                assert archive is not None
                rows = sorted(
                    (r for r in journal.mapped_items(key) if "mv" in str(r["subject"] or "")),
                    key=lambda r: str(r["subject"]),
                )
                await src.move(ItemRef(inbox.id, rows[0]["source_item_id"]), archive.id)
                changed = rows[1]
                state = MessageState(read=True, categories=("Orange",))
                await src.import_item(inbox.id, Payload(MIME, "", None, state=state),
                                      replace=ItemRef(inbox.id, changed["source_item_id"]))  # fmt: skip
                second = await sync_pass(ctx, key, src, tgt)
                third = await sync_pass(ctx, key, src, tgt)
                row = journal.mapped(key, changed["source_item_id"])
                copy = await tgt.export([ItemRef(row["target_folder_id"], row["target_item_id"])],
                                        MIME)  # fmt: skip
                copy_state = copy[row["target_item_id"]].state
                target_paths = [
                    "/".join(f.path) for f in (await tgt.list_folders()).folders if f.total
                ]
                return ([first, second, third],
                        copy_state.categories if copy_state else None, target_paths)  # fmt: skip
        finally:
            await src_srv.close()
            await tgt_srv.close()

    try:
        (first, second, third), categories, paths = run(main)
    finally:
        journal.close()
    assert first["copied"] >= 3
    assert second.get("copied", 0) == 0 and second["moved"] == 1 and second["updated"] >= 1
    assert +third == Counter()
    assert categories == ("Orange",)
    assert "Kept" in paths


def test_a_planned_pass_of_an_exchange_project_says_what_it_would_copy_and_writes_nothing(
    orgs: Sandbox, tmp_path: Path
) -> None:
    """`prestage --plan` on an exchange -> exchange project (ews-sync plans passes): the
    real sync runs with the EWS writes captured; the plan says how many messages it would
    copy; the target mailbox and the journal's item map are unchanged."""
    from coexist.engine.context import Context, SideOptions, open_sides
    from coexist.migrate.passes import run_pass
    from coexist.runtime import open_journal
    from coexist.settings import load_project
    from coexist.tenants.plan import WriteRecorder

    sb = orgs
    [src_user] = mailboxes(sb, "source", 1)
    [tgt_user] = mailboxes(sb, "target", 1)
    assert src_user.primary_smtp and tgt_user.primary_smtp
    seed(sb, src_user.id, 4, subject="planned")
    src_admin = migration_account(sb, "source", full_access=[src_user.primary_smtp])
    tgt_admin = migration_account(sb, "target", full_access=[tgt_user.primary_smtp])
    env = ews_project(sb, tmp_path, src_admin, tgt_admin)
    project = load_project(tmp_path, env=env)
    journal = open_journal(project)
    key = src_user.primary_smtp
    journal.upsert_item(
        "user", key, source_address=src_user.primary_smtp, target_address=tgt_user.primary_smtp
    )
    before = sb.mail.count("target", tgt_user.id)
    plan = WriteRecorder()

    async def main() -> Any:
        opts = SideOptions(read_retry=RETRY, env=env, plan=plan)
        async with open_sides(project, opts) as (s, t):
            ctx = Context(project, journal, s, t, plan=plan, run_id=journal.start_run("plan"))
            return await run_pass(ctx, key, "prestage", Window())

    try:
        result = run(main)
        mapped = journal.mapped_items(key)
    finally:
        journal.close()
    assert result.status == "planned", result.detail
    assert result.counts["copied"] >= 4
    assert any("copy" in w.operation for w in plan.writes)
    assert sb.mail.count("target", tgt_user.id) == before and mapped == []


def test_plan_mode_exports_no_content(orgs: Sandbox) -> None:
    """A store in plan mode reads no item's content (a planned import writes nothing):
    the stream export answers empty payloads with the items' change keys, the MIME export
    the state alone; the same store out of plan mode reads both."""
    from coexist.tenants.plan import WriteRecorder

    sb = orgs
    [src_user] = mailboxes(sb, "source", 1)
    assert src_user.primary_smtp
    seed(sb, src_user.id, 2, subject="noread")
    admin = migration_account(sb, "source", full_access=[src_user.primary_smtp])

    async def main() -> tuple[dict[str, Payload], ...]:
        srv = server(sb, "source", admin)
        try:
            async with srv.mailbox(src_user.primary_smtp or "") as mailbox:
                planned, real = EwsStore(mailbox, plan=WriteRecorder()), EwsStore(mailbox)
                tree = await real.list_folders()
                inbox = next(f for f in tree.folders if f.well_known == "inbox")
                refs = [r for rs in (await real.copies(inbox.id, set())).values() for r in rs]
                assert len(refs) >= 2, refs
                return (
                    await planned.export(refs, EXCHANGE_STREAM),
                    await planned.export(refs, MIME),
                    await real.export(refs, EXCHANGE_STREAM),
                    await real.export(refs, MIME),
                )
        finally:
            await srv.close()

    stream, mime, real_stream, real_mime = run(main)
    assert set(stream) == set(real_stream) == set(mime) == set(real_mime)
    assert all(p.data == "" and p.change_key for p in stream.values())
    assert all(p.mime == b"" and p.state is not None for p in mime.values())
    assert all(p.data for p in real_stream.values()) and all(p.mime for p in real_mime.values())
    assert {i: p.state for i, p in mime.items()} == {i: p.state for i, p in real_mime.items()}
