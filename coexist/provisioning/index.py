"""An in-memory view of the target's recipients, for conflict checks and matching.

Built from one paged `Get-Recipient -ResultSize Unlimited` per run instead of a
lookup per user (the same answer in 1/1000 of the calls), then kept current as
this run creates objects. Reservations hold addresses planned but not yet
created, so two source users never plan the same target address.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from coexist.model import split_address


def _key(address: str) -> str:
    return address.strip().lower()


def _bare(address: Any) -> str:
    """'SMTP:a@b' / 'smtp:a@b' / 'a@b' -> 'a@b' (lower-cased); '' for none."""
    text = str(address or "").strip()
    return _key(text[5:] if text[:5].lower() == "smtp:" else text)


@dataclass
class TargetIndex:
    by_address: dict[str, dict[str, Any]] = field(default_factory=dict)  # "smtp:x" / "x500:y"
    by_name: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    # bare address -> recipients sending mail there: a MailUser's or contact's
    # ExternalEmailAddress, a mailbox's ForwardingSmtpAddress (orphans route to the source)
    by_route: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    reserved: dict[str, str] = field(default_factory=dict)  # address/name key -> subject

    @classmethod
    def build(cls, recipients: Iterable[dict[str, Any]]) -> TargetIndex:
        index = cls()
        for r in recipients:
            index.add(r)
        return index

    def add(self, r: dict[str, Any]) -> None:
        for ident in (r.get("ExternalDirectoryObjectId"), r.get("Guid")):
            if ident:
                self.by_id[str(ident).lower()] = r
        if r.get("Name"):
            self.by_name[_key(r["Name"])] = r
        for a in r.get("EmailAddresses") or ():
            kind, _, value = str(a).partition(":")
            if kind.lower() in ("smtp", "x500") and value:
                self.by_address[f"{kind.lower()}:{_key(value)}"] = r
        if r.get("LegacyExchangeDN"):
            self.by_address[f"x500:{_key(r['LegacyExchangeDN'])}"] = r
        for prop in ("ExternalEmailAddress", "ForwardingSmtpAddress"):
            route = _bare(r.get(prop))
            if route:
                self.by_route.setdefault(route, []).append(r)

    def remove(self, ident: str) -> None:
        """Forget a recipient this run deleted (by ExternalDirectoryObjectId or Guid)."""
        gone = self.by_id.get(ident.lower())
        if gone is None:
            return
        for table in (self.by_id, self.by_name, self.by_address):
            for key in [k for k, v in table.items() if v is gone]:
                del table[key]
        for route, held in list(self.by_route.items()):
            self.by_route[route] = [r for r in held if r is not gone]

    def owner(self, address: str) -> dict[str, Any] | None:
        if address.lower().startswith(("smtp:", "x500:")):
            return self.by_address.get(address[:5].lower() + _key(address[5:]))
        return self.by_address.get("smtp:" + _key(address))

    def routing_to(self, address: str) -> list[dict[str, Any]]:
        """Recipients whose mail goes to `address` (ExternalEmailAddress, ForwardingSmtpAddress)."""
        return list(self.by_route.get(_bare(address), ()))

    def get(self, ident: str | None) -> dict[str, Any] | None:
        return self.by_id.get(ident.lower()) if ident else None

    def address_taken(self, address: str, subject: str | None = None) -> bool:
        """Used by someone else (an object, or another subject's reservation)."""
        k = _key(address)
        holder = self.reserved.get("smtp:" + k)
        if holder is not None and holder != subject:
            return True
        return self.owner(address) is not None and holder != subject

    def name_taken(self, name: str, subject: str | None = None) -> bool:
        k = _key(name)
        holder = self.reserved.get("name:" + k)
        if holder is not None and holder != subject:
            return True
        return k in self.by_name and holder != subject

    def reserve(self, subject: str, *, address: str, name: str) -> None:
        self.reserved["smtp:" + _key(address)] = subject
        self.reserved["name:" + _key(name)] = subject

    def by_local_part(
        self, local: str, domains: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """Recipients owning an SMTP address with this local part (match mode)."""
        wanted = local.lower()
        doms = {d.lower() for d in domains} if domains else None
        seen: dict[str, dict[str, Any]] = {}
        for key, r in self.by_address.items():
            if not key.startswith("smtp:"):
                continue
            loc, dom = split_address(key[5:])
            if loc == wanted and (doms is None or dom in doms):
                seen[str(r.get("Guid") or r.get("ExternalDirectoryObjectId"))] = r
        return list(seen.values())
