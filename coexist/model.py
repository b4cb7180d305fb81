"""Domain types and pure address rules (no I/O).

A source mailbox found by discovery, the target recipient planned for it, the
groups to copy, batches, and the phases a user moves through. Everything here
is deterministic so plans can be compared between runs.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

EXCHANGE_NAME_MAX = 64  # New-MailUser -Name: at most 64 characters (FACTS.md)
ALIAS_MAX = 64


class Phase(StrEnum):
    """Where a user stands, in order."""

    DISCOVERED = "discovered"
    PROVISIONED = "provisioned"
    PRESTAGED = "prestaged"
    CUTOVER = "cutover"
    ROLLED_BACK = "rolled-back"


PHASE_ORDER = [Phase.DISCOVERED, Phase.PROVISIONED, Phase.PRESTAGED, Phase.CUTOVER]
PHASES = tuple(p.value for p in Phase)
# A user's state: its last command's outcome (the runner sets it; `status --state` filters it).
USER_STATES = ("ok", "failed", "waiting")
# What status shows: a user whose prestage / cutover a killed run left unfinished is `started`.
STATUS_STATES = (*USER_STATES, "started")


def phase_at_least(phase: str | None, wanted: Phase) -> bool:
    if phase is None:
        return False
    if phase == Phase.ROLLED_BACK:
        return PHASE_ORDER.index(wanted) <= PHASE_ORDER.index(Phase.PRESTAGED)
    return PHASE_ORDER.index(Phase(phase)) >= PHASE_ORDER.index(wanted)


def split_address(address: str) -> tuple[str, str]:
    local, _, domain = address.rpartition("@")
    return local, domain.lower()


def proxies_of(addresses: Iterable[str], prefix: str) -> list[str]:
    p = prefix.lower() + ":"
    return [a[len(p) :] for a in addresses if a.lower().startswith(p)]


@dataclass(frozen=True)
class SourceMailbox:
    """A mailbox in the source tenant, as discovery saw it."""

    id: str  # Entra object id (ExternalDirectoryObjectId): the stable item key
    upn: str
    display_name: str
    name: str
    alias: str
    primary_smtp: str
    email_addresses: tuple[str, ...]
    legacy_exchange_dn: str | None
    recipient_type_details: str
    exchange_guid: str | None = None
    usage_location: str | None = None
    first_name: str | None = None
    last_name: str | None = None

    @property
    def local_part(self) -> str:
        return split_address(self.primary_smtp)[0]

    @property
    def smtp_addresses(self) -> list[str]:
        return proxies_of(self.email_addresses, "smtp")

    def x500_proxies(self) -> list[str]:
        """What replies to old mail may be addressed to: the LegacyExchangeDN and X500 proxies.

        Replies resolve through LegacyExchangeDN; without it as an X500 proxy on
        the target object users get IMCEAEX NDRs (FACTS.md).
        """
        out: list[str] = []
        if self.legacy_exchange_dn:
            out.append(f"X500:{self.legacy_exchange_dn}")
        for x in proxies_of(self.email_addresses, "x500"):
            if f"X500:{x}".lower() not in {o.lower() for o in out}:
                out.append(f"X500:{x}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "upn": self.upn,
            "display_name": self.display_name,
            "name": self.name,
            "alias": self.alias,
            "primary_smtp": self.primary_smtp,
            "email_addresses": list(self.email_addresses),
            "legacy_exchange_dn": self.legacy_exchange_dn,
            "recipient_type_details": self.recipient_type_details,
            "exchange_guid": self.exchange_guid,
            "usage_location": self.usage_location,
            "first_name": self.first_name,
            "last_name": self.last_name,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SourceMailbox:
        return cls(**{**d, "email_addresses": tuple(d.get("email_addresses", ()))})


@dataclass(frozen=True)
class GroupCopy:
    """A source group to recreate in the target with its members mapped."""

    id: str
    kind: str  # distribution | mail-security | security | dynamic
    display_name: str
    name: str
    alias: str | None
    primary_smtp: str | None
    email_addresses: tuple[str, ...] = ()
    legacy_exchange_dn: str | None = None
    members: tuple[str, ...] = ()  # source object ids
    recipient_filter: str | None = None
    included_recipients: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["email_addresses"] = list(self.email_addresses)
        d["members"] = list(self.members)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GroupCopy:
        return cls(
            **{
                **d,
                "email_addresses": tuple(d.get("email_addresses", ())),
                "members": tuple(d.get("members", ())),
            }
        )


@dataclass(frozen=True)
class Batch:
    """A named set of users (by source address or UPN) moved together."""

    name: str
    users: tuple[str, ...] = field(default_factory=tuple)


# -- pure address rules -----------------------------------------------------------------
_ALIAS_BAD = re.compile(r"[^A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]")


def ascii_alias(text: str) -> str:
    """An Exchange-valid alias: ASCII-folded, invalid characters dropped, no edge dots."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    alias = _ALIAS_BAD.sub("", folded.replace(" ", ".")).strip(".")
    alias = re.sub(r"\.{2,}", ".", alias)
    return alias[:ALIAS_MAX] or "user"


def with_suffix(local: str, n: int) -> str:
    return local if n <= 1 else f"{local}{n}"


def free_address(local: str, domain: str, taken: Callable[[str], bool]) -> str:
    """`local@domain`, or the first `local2@domain`, `local3@domain`… not taken.

    The numeric suffix is the documented `create` mode behaviour for addresses
    already used in the target (issue 3).
    """
    n = 1
    while True:
        candidate = f"{with_suffix(local, n)}@{domain}"
        if not taken(candidate.lower()):
            return candidate
        n += 1


def exchange_name(display_name: str, taken: Callable[[str], bool]) -> str:
    """A unique Exchange `Name` of at most 64 characters, derived from the display name."""
    base = " ".join(display_name.split())[:EXCHANGE_NAME_MAX] or "user"
    n = 1
    while True:
        suffix = "" if n == 1 else f" ({n})"
        candidate = base[: EXCHANGE_NAME_MAX - len(suffix)].rstrip() + suffix
        if not taken(candidate.lower()):
            return candidate
        n += 1


def forwarding_address(src: SourceMailbox, forwarding_domain: str | None) -> str:
    """Where the target forwards to reach the source mailbox.

    Blank domain: the user's own primary address (every accepted domain of the
    source). Otherwise the user's proxy in that domain (e.g. the onmicrosoft
    routing domain), else `<local>@<domain>`.
    """
    if not forwarding_domain:
        return src.primary_smtp
    dom = forwarding_domain.lower()
    for addr in src.smtp_addresses:
        if split_address(addr)[1] == dom:
            return addr
    return f"{src.local_part}@{dom}"


# -- X500 encapsulation ------------------------------------------------------------------
_IMCEA_LITERAL = re.compile(r"[A-Za-z0-9=.\-]")


def decode_imceaex(local: str) -> str:
    """IMCEAEX local part -> X500 DN.

    Exchange encapsulates a DN as `IMCEAEX-<encoded>@domain`: '/' is written '_',
    and any other character outside the SMTP-safe set as '+' and two hex digits
    ('+20' space, '+28' '(', '+29' ')', '+5F' '_', '+2B' '+').
    (learn.microsoft.com/exchange/troubleshoot/email-delivery/imceaex-ndr)
    """
    body = local[len("IMCEAEX-") :] if local.upper().startswith("IMCEAEX-") else local
    out = bytearray()
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "+" and re.fullmatch(r"[0-9A-Fa-f]{2}", body[i + 1 : i + 3]):
            out.append(int(body[i + 1 : i + 3], 16))
            i += 3
            continue
        out.extend(b"/" if ch == "_" else ch.encode("utf-8"))
        i += 1
    return out.decode("utf-8", errors="replace")


def encode_imceaex(dn: str, domain: str) -> str:
    """X500 DN -> `IMCEAEX-...@domain`, the form NDRs show (inverse of decode_imceaex)."""
    parts: list[str] = []
    for ch in dn:
        if ch == "/":
            parts.append("_")
        elif _IMCEA_LITERAL.fullmatch(ch):
            parts.append(ch)
        else:
            parts.extend(f"+{b:02X}" for b in ch.encode("utf-8"))
    return f"IMCEAEX-{''.join(parts)}@{domain}"
