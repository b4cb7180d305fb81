"""The sandbox's EWS face driven by exchangelib over HTTPS (sandbox CA, verification on)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

import pytest
from exchangelib import EWSDateTime, ExtendedProperty, Folder, Message
from exchangelib.errors import (
    ErrorAccessDenied,
    ErrorImpersonateUserDenied,
    ErrorInvalidSyncStateData,
    ErrorMessageSizeExceeded,
    UnauthorizedError,
)
from exchangelib.properties import AlternateId

from coexist.sandbox import Sandbox
from coexist.sandbox.ews import grant
from coexist.sandbox.ews.face import ERRORS_KEY
from coexist.sandbox.mailseed import seed_mailbox
from tests import ewsclient as ec


class MessageFlags(ExtendedProperty):
    """PR_MESSAGE_FLAGS (PidTagMessageFlags, 0x0E07): without it an item saved from MIME is a
    draft; clients set MSGFLAG_READ (1) and leave MSGFLAG_UNSENT (8) clear."""

    property_tag = 0x0E07
    property_type = "Integer"


@pytest.fixture
def flags() -> Iterator[None]:
    Message.register("message_flags", MessageFlags)
    yield
    Message.deregister("message_flags")


@pytest.fixture
def ews(sandbox: Sandbox) -> Iterator[Sandbox]:
    """Source = Exchange 2016, target = Exchange 2019; no sandbox bug met while serving."""
    ec.org(sandbox, "source", "exchange2016")
    ec.org(sandbox, "target", "exchange2019")
    assert sandbox.ctx is not None
    sandbox.ctx.extra[ERRORS_KEY] = []
    yield sandbox
    assert sandbox.ctx.extra[ERRORS_KEY] == []


def _mime(subject: str, when: dt.datetime, size: int = 0) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Ava Lindqvist <ava@fabrikam.example>"
    msg["To"] = "someone@contoso.example"
    msg["Subject"] = subject
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = make_msgid(domain="sandbox.example")
    msg.set_content("hello " + subject)
    if size:
        msg.add_attachment(b"x" * size, maintype="application", subtype="octet-stream",
                           filename="big.bin")  # fmt: skip
    return msg.as_bytes()


def _count(folder: Any) -> int:
    """The items a folder holds now (FindItem; exchangelib caches a folder's TotalCount)."""
    return int(folder.all().count())


def _delegate(sb: Sandbox, key: str = "source", kind: str = "exchange2016", **kw: Any) -> Any:
    user = ec.mailboxes(sb, key, 1)[0]
    assert user.primary_smtp
    login = ec.migration_account(sb, key, full_access=[user.primary_smtp])
    return ec.account(sb, key, login, user.primary_smtp, kind=kind, **kw), user


def test_basic_and_ntlm_open_a_granted_mailbox(ews: Sandbox) -> None:
    """A migration account with FullAccess opens the mailbox over NTLM and over Basic."""
    for auth in (ec.NTLM, ec.BASIC):
        account, _user = _delegate(ews, auth=auth)
        assert account.inbox.name == "Inbox"
        assert account.root.tois.name == "Top of Information Store"


def test_wrong_password_is_401(ews: Sandbox) -> None:
    """A wrong password is refused by HTTP authentication (401), for NTLM and Basic."""
    user = ec.mailboxes(ews, "source", 1)[0]
    assert user.primary_smtp
    login = ec.migration_account(ews, "source", full_access=["*"])
    for auth in (ec.NTLM, ec.BASIC):
        account = ec.account(ews, "source", login, user.primary_smtp, auth=auth, password="no")
        with pytest.raises(UnauthorizedError):
            account.inbox.refresh()


def test_delegation_without_full_access_is_denied(ews: Sandbox) -> None:
    """Delegation to a mailbox without FullAccess: ErrorAccessDenied; granting it opens it."""
    granted, other = ec.mailboxes(ews, "source", 2)
    assert granted.primary_smtp and other.primary_smtp
    login = ec.migration_account(ews, "source", full_access=[granted.primary_smtp])
    with pytest.raises(ErrorAccessDenied):
        ec.account(ews, "source", login, other.primary_smtp).inbox.refresh()
    grant(ews.world, "source", "svc-migrate", full_access=[other.primary_smtp])
    assert ec.account(ews, "source", login, other.primary_smtp).inbox.name == "Inbox"


def test_impersonation_needs_the_role(ews: Sandbox) -> None:
    """ExchangeImpersonation without ApplicationImpersonation: ErrorImpersonateUserDenied."""
    user = ec.mailboxes(ews, "source", 1)[0]
    assert user.primary_smtp
    login = ec.migration_account(ews, "source")
    with pytest.raises(ErrorImpersonateUserDenied):
        ec.account(ews, "source", login, user.primary_smtp, impersonate=True).inbox.refresh()
    grant(ews.world, "source", "svc-migrate", impersonation=True)
    account = ec.account(ews, "source", login, user.primary_smtp, impersonate=True)
    assert _count(account.inbox) == 0


def test_folders_create_find_sync_hierarchy(ews: Sandbox) -> None:
    """CreateFolder, FindFolder (shallow/deep) and SyncFolderHierarchy see the same tree."""
    account, _user = _delegate(ews)
    top = account.msg_folder_root
    names = {f.name for f in top.children}
    assert {"Inbox", "Sent Items", "Deleted Items", "Drafts", "Calendar", "Contacts"} <= names
    sub = Folder(parent=account.inbox, name="Projects")
    sub.save()
    Folder(parent=sub, name="2025").save()
    deep = {f.name for f in account.inbox.walk()}
    assert deep == {"Projects", "2025"}
    changes = list(account.msg_folder_root.sync_hierarchy())
    created = {f.name for kind, f in changes if kind == "create"}
    assert {"Inbox", "Projects", "2025", "Calendar"} <= created
    state = account.msg_folder_root.folder_sync_state
    Folder(parent=account.inbox, name="Later").save()
    again = list(account.msg_folder_root.sync_hierarchy(sync_state=state))
    assert [(k, f.name) for k, f in again] == [("create", "Later")]


def test_items_create_find_get_update_move_delete(ews: Sandbox, flags: None) -> None:
    """CreateItem from MIME (not a draft, read), FindItem with a date restriction and paging,
    GetItem with MIME and typed properties, UpdateItem, MoveItem and DeleteItem."""
    account, _user = _delegate(ews)
    base = dt.datetime(2026, 1, 10, 9, 0, tzinfo=dt.UTC)
    for n in range(7):
        Message(account=account, folder=account.inbox, mime_content=_mime(f"m{n}", base),
                message_flags=1, is_read=n % 2 == 0,
                datetime_received=EWSDateTime.from_datetime(base + dt.timedelta(days=n))).save()  # fmt: skip
    # exchangelib sends DateTimeReceived only where the version allows; the sandbox honours it
    assert _count(account.inbox) == 7
    items = list(account.inbox.all().order_by("-datetime_received"))
    assert len(items) == 7 and all(not i.is_draft for i in items)
    cutoff = EWSDateTime.from_datetime(base + dt.timedelta(days=3))
    recent = list(account.inbox.filter(datetime_received__gte=cutoff))
    page = list(account.inbox.all().order_by("datetime_received")[2:5])
    assert len(page) == 3
    assert recent is not None
    one = items[0]
    got = account.fetch(ids=[one])
    got_item = next(iter(got))
    assert got_item.mime_content and b"Subject: " in got_item.mime_content
    assert got_item.message_id and got_item.size and got_item.item_class == "IPM.Note"
    got_item.is_read = False
    got_item.categories = ["Blue"]
    got_item.save(update_fields=["is_read", "categories"])
    got_item.refresh()
    assert got_item.is_read is False and got_item.categories == ["Blue"]
    dest = Folder(parent=account.inbox, name="Dest")
    dest.save()
    got_item.move(dest)
    assert _count(dest) == 1 and _count(account.inbox) == 6
    moved = next(iter(dest.all()))
    moved.move_to_trash()
    assert _count(account.trash) == 1
    victim = next(iter(account.inbox.all()))
    victim.delete()
    assert _count(account.inbox) == 5


def test_dates_restriction(ews: Sandbox) -> None:
    """FindItem's DateTimeReceived restriction keeps only the items received on or after it."""
    account, user = _delegate(ews)
    seed_mailbox(ews.mail, "source", user.id, seed=3, items=60)
    everything = [i.datetime_received for i in account.inbox.all().only("datetime_received")]
    assert everything
    pivot = sorted(everything)[len(everything) // 2]
    recent = list(account.inbox.filter(datetime_received__gte=pivot).only("datetime_received"))
    assert len(recent) == sum(1 for d in everything if d >= pivot)


def test_sync_folder_items_pages_and_stale_state(ews: Sandbox) -> None:
    """SyncFolderItems pages (<= 512 a call, IncludesLastItemInRange), reports later changes,
    and a forgotten sync state answers ErrorInvalidSyncStateData."""
    account, user = _delegate(ews)
    seed_mailbox(ews.mail, "source", user.id, seed=3, items=120)
    total = _count(account.inbox)
    seen = [i.id for kind, i in account.inbox.sync_items(max_changes_returned=10)
            if kind == "create"]  # fmt: skip
    assert len(seen) == len(set(seen)) == total
    state = account.inbox.item_sync_state
    first = next(iter(account.inbox.all()))
    first.is_read = not first.is_read
    first.save(update_fields=["is_read"])
    later = list(account.inbox.sync_items(sync_state=state))
    assert [k for k, _ in later] in (["update"], ["read_flag_change"])
    ews.world.expire_sync_states()
    with pytest.raises(ErrorInvalidSyncStateData):
        list(account.inbox.sync_items(sync_state=account.inbox.item_sync_state))


def test_export_upload_is_byte_identical(ews: Sandbox, flags: None) -> None:
    """ExportItems -> UploadItems between two Exchange organisations keeps the blob
    byte-identical (re-exported from the target)."""
    src, _u = _delegate(ews, "source")
    dst, _v = _delegate(ews, "target", kind="exchange2019")
    Message(account=src, folder=src.inbox, mime_content=_mime("full fidelity", dt.datetime.now(dt.UTC)),
            message_flags=1).save()  # fmt: skip
    item = next(iter(src.inbox.all()))
    blob = src.export([item])[0]
    uploaded = dst.upload([(dst.inbox, blob)])
    assert len(uploaded) == 1
    again = next(iter(dst.inbox.all()))
    assert dst.export([again])[0] == blob


def test_convert_id_round_trip(ews: Sandbox) -> None:
    """ConvertId turns an EWS id into a HexEntryId and back."""
    account, _u = _delegate(ews)
    folder_id = account.inbox.id
    mailbox = account.primary_smtp_address
    hexed = list(account.protocol.convert_ids(
        [AlternateId(id=folder_id, format="EwsId", mailbox=mailbox)], destination_format="HexEntryId"))  # fmt: skip
    back = list(account.protocol.convert_ids(
        [AlternateId(id=hexed[0].id, format="HexEntryId", mailbox=mailbox)], destination_format="EwsId"))  # fmt: skip
    assert back[0].id == folder_id


def test_workmail_refuses_oversize_and_ntlm(ews: Sandbox, flags: None) -> None:
    """WorkMail: Basic only (NTLM is not offered) and a message over ~23 MB is refused."""
    ec.org(ews, "target", "workmail")
    account, _u = _delegate(ews, "target", kind="workmail", auth=ec.BASIC)
    with pytest.raises(ErrorMessageSizeExceeded):
        Message(account=account, folder=account.inbox,
                mime_content=_mime("big", dt.datetime.now(dt.UTC), 24 * 1024 * 1024),
                message_flags=1).save()  # fmt: skip
    Message(account=account, folder=account.inbox, mime_content=_mime("small", dt.datetime.now(dt.UTC)),
            message_flags=1).save()  # fmt: skip
    assert _count(account.inbox) == 1
    ntlm, _ = _delegate(ews, "target", kind="workmail", auth=ec.NTLM)
    with pytest.raises(UnauthorizedError):
        ntlm.inbox.refresh()
