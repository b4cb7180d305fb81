"""Get-Mailbox, Set-Mailbox, Get-MailboxStatistics."""

from __future__ import annotations

from typing import Any

from ..model import MAILBOX_KINDS, User
from . import directory as d
from . import errors
from .directory import Call, Registry
from .recipient import listing

COMMANDS = Registry()

# Set-Mailbox -Type values and the RecipientTypeDetails they give.
MAILBOX_TYPES = {
    "regular": "UserMailbox",
    "shared": "SharedMailbox",
    "room": "RoomMailbox",
    "equipment": "EquipmentMailbox",
}


@COMMANDS.cmdlet("Get-Mailbox", listing=True)
def get_mailbox(call: Call) -> list[dict[str, Any]]:
    return listing(call, d.is_mailbox)


@COMMANDS.cmdlet(
    "Set-Mailbox",
    params=(
        *d.COMMON_SET,
        "ForwardingAddress",
        "ForwardingSmtpAddress",
        "DeliverToMailboxAndForward",
        "Type",
    ),
)
def set_mailbox(call: Call) -> list[dict[str, Any]]:
    mbx = d.resolve(call.tenant, call.get("Identity"), d.is_mailbox)
    assert isinstance(mbx, User)
    forwarding = _forwarding(call, mbx)
    kind = _type(call)
    d.apply_common(call, mbx)
    if forwarding is not None:
        mbx.forwarding_address, mbx.forwarding_smtp_address = forwarding
    if call.has("DeliverToMailboxAndForward"):
        mbx.deliver_to_mailbox_and_forward = d.as_bool(
            "DeliverToMailboxAndForward", call.get("DeliverToMailboxAndForward")
        )
    if kind is not None:
        mbx.recipient_type_details = kind
    call.tenant.touch(mbx)
    return []


def _forwarding(call: Call, mbx: User) -> tuple[str | None, str | None] | None:
    """-ForwardingAddress is an internal recipient (stored by object id); -ForwardingSmtpAddress
    is any SMTP address, stored 'smtp:addr' and not validated (FACTS.md). $null clears."""
    if not (call.has("ForwardingAddress") or call.has("ForwardingSmtpAddress")):
        return None
    fwd_id, fwd_smtp = mbx.forwarding_address, mbx.forwarding_smtp_address
    if call.has("ForwardingAddress"):
        value = call.get("ForwardingAddress")
        fwd_id = (
            None
            if value in (None, "")
            else d.resolve(call.tenant, value, d.is_recipient, "ForwardingAddress").id
        )
    if call.has("ForwardingSmtpAddress"):
        value = call.get("ForwardingSmtpAddress")
        fwd_smtp = (
            None if value in (None, "") else "smtp:" + d.smtp_of(value, "ForwardingSmtpAddress")
        )
    return fwd_id, fwd_smtp


def _type(call: Call) -> str | None:
    if not call.has("Type"):
        return None
    raw = d.as_text(call.get("Type"))
    kind = MAILBOX_TYPES.get(raw.lower())
    if kind is None or kind not in MAILBOX_KINDS:
        raise errors.invalid_value(
            "Type", raw, "Specify one of the following values: Regular, Room, Equipment, Shared."
        )
    return kind


def contents(call: Call, mbx: User) -> tuple[int, int]:
    """(items, bytes) the sandbox's stores hold for `mbx`: its messages (mail.db, at the
    MIME's size) and its contacts, events and tasks (pim.db, where one was opened), as
    Exchange counts every item of the mailbox in ItemCount and TotalItemSize (the
    Recoverable Items folder apart: DeletedItemCount, 0 here)."""
    # Imported here: the Graph face's modules import this package's siblings.
    from ..graph.mail import MAIL_STORE_KEY, tenant_key
    from ..graph.outlook_items import PIM_STORE_KEY, pim_store
    from ..mailstore import MailStore
    from ..pim import PIM_DB

    ctx = call.ctx
    key = tenant_key(ctx.world, call.tenant)
    store = ctx.extra.get(MAIL_STORE_KEY)
    items, size = store.totals(key, mbx.id) if isinstance(store, MailStore) else (0, 0)
    if PIM_STORE_KEY in ctx.extra or (ctx.state_dir / PIM_DB).exists():
        more, more_size = pim_store(ctx).totals(key, mbx.id)
        items, size = items + more, size + more_size
    return items, size


def statistics_json(mbx: User, items: int, size: int) -> dict[str, Any]:
    """One Get-MailboxStatistics row: `items` / `size` are the mailbox's contents
    (`contents`), TotalItemSize in Exchange's text form (`d.byte_size`)."""
    return {
        "Identity": mbx.exchange_guid,
        "DisplayName": mbx.display_name,
        "MailboxGuid": mbx.exchange_guid,
        "ItemCount": items,
        "TotalItemSize": d.byte_size(size),
        "DeletedItemCount": 0,
        "TotalDeletedItemSize": d.byte_size(0),
        "MailboxTypeDetail": mbx.recipient_type_details,
        "LastLogonTime": None,
        "IsValid": True,
    }


@COMMANDS.cmdlet("Get-MailboxStatistics", params=("Identity",))
def get_mailbox_statistics(call: Call) -> list[dict[str, Any]]:
    mbx = d.resolve(call.tenant, call.get("Identity"), d.is_mailbox)
    assert isinstance(mbx, User)
    return [statistics_json(mbx, *contents(call, mbx))]
