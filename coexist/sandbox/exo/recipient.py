"""Get-Recipient, Get-User, Set-User, and the listing rules every Get-* shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..model import MailObject, Tenant, User
from . import directory as d
from .directory import Call, Registry
from .filters import compile_filter

COMMANDS = Registry()
ToJson = Callable[[Tenant, Any], dict[str, Any]]


def _anr(o: MailObject, prefix: str) -> bool:
    """Ambiguous name resolution: a prefix of Name, Alias, DisplayName or an SMTP address."""
    p = prefix.lower()
    fields = [
        o.name,
        o.alias,
        o.display_name,
        *(a[5:] for a in o.email_addresses if a[:5].lower() == "smtp:"),
    ]
    if isinstance(o, User):
        fields += [o.given_name or "", o.surname or ""]
    return any(f.lower().startswith(p) for f in fields if f)


def listing(call: Call, pool: d.Pool, to_json: ToJson = d.to_json) -> list[dict[str, Any]]:
    """-Identity names one object (missing = error); otherwise the pool, narrowed by
    -Anr, -RecipientTypeDetails and -Filter, then cut by -ResultSize."""
    t = call.tenant
    if call.has("Identity"):
        objs: list[MailObject] = [d.resolve(t, call.get("Identity"), pool)]
    else:
        objs = d.objects(t, pool)
    if call.has("Anr"):
        prefix = d.as_text(call.get("Anr"))
        objs = [o for o in objs if _anr(o, prefix)]
    rows = [to_json(t, o) for o in objs]
    if call.has("RecipientTypeDetails"):
        wanted = {v.lower() for v in d.as_list(call.get("RecipientTypeDetails"))}
        rows = [r for r in rows if str(r.get("RecipientTypeDetails", "")).lower() in wanted]
    if call.has("Filter"):
        text = d.as_text(call.get("Filter"))
        sample = rows[0] if rows else to_json(t, objs[0]) if objs else None
        keys = {k.lower() for k in (sample or {})}
        pred = compile_filter(text, lambda p: not keys or p.lower() in keys)
        rows = [r for r in rows if pred(r)]
    return d.limit(call, rows)


@COMMANDS.cmdlet("Get-Recipient", listing=True)
def get_recipient(call: Call) -> list[dict[str, Any]]:
    return listing(call, d.is_recipient)


def user_view(tenant: Tenant, u: User) -> dict[str, Any]:
    row = d.user_json(tenant, u)
    row.update(
        {
            "RecipientType": "UserMailbox"
            if u.is_mailbox
            else ("MailUser" if u.recipient_type_details else "User"),
            "Title": u.job_title,
            "Department": u.department,
            "City": u.city,
            "CountryOrRegion": u.country,
            "Company": u.company_name,
        }
    )
    return row


@COMMANDS.cmdlet("Get-User", listing=True)
def get_user(call: Call) -> list[dict[str, Any]]:
    return listing(call, d.is_user, user_view)


SET_USER = {
    "FirstName": "given_name",
    "LastName": "surname",
    "DisplayName": "display_name",
    "Department": "department",
    "Title": "job_title",
    "City": "city",
    "Company": "company_name",
}


@COMMANDS.cmdlet("Set-User", params=("Identity", *SET_USER))
def set_user(call: Call) -> list[dict[str, Any]]:
    u = d.resolve(call.tenant, call.get("Identity"), d.is_user)
    assert isinstance(u, User)
    for param, attr in SET_USER.items():
        if call.has(param):
            value = call.get(param)
            setattr(u, attr, None if value is None else d.as_text(value))
    call.tenant.touch(u)
    return []
