"""Planning target recipients: names and addresses decided once, then recorded.

A plan is computed before any write and stored on the item in the journal, so
a crash after `New-MailUser` cannot lead to a second object with a suffixed
address: the next run looks for the object the plan named.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import asdict, dataclass
from typing import Any

from coexist.model import (
    SourceMailbox,
    ascii_alias,
    exchange_name,
    forwarding_address,
    free_address,
    split_address,
)

from .exchange import bare, object_id, own_addresses
from .index import TargetIndex


@dataclass(frozen=True)
class TargetPlan:
    """What the target object for one source mailbox is to look like."""

    mode: str  # create | match
    name: str
    alias: str
    display_name: str
    primary_smtp: str  # also the MicrosoftOnlineServicesID (UPN) when created
    external_address: str  # where the target forwards: the source mailbox
    x500: tuple[str, ...]
    matched_id: str | None = None  # match mode: the existing target recipient
    candidates: tuple[str, ...] = ()  # match mode: ambiguous candidates (needs confirmation)
    # Each candidate's RecipientTypeDetails, in the order of `candidates` ("" if unknown).
    candidate_kinds: tuple[str, ...] = ()
    # create mode: a target object that already routed to the source mailbox when the plan
    # was made (an orphan of a lost journal); provision takes it over only with --adopt.
    adopt_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["x500"] = list(self.x500)
        d["candidates"] = list(self.candidates)
        d["candidate_kinds"] = list(self.candidate_kinds)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TargetPlan:
        return cls(
            **{
                **d,
                "x500": tuple(d.get("x500", ())),
                "candidates": tuple(d.get("candidates", ())),
                "candidate_kinds": tuple(d.get("candidate_kinds", ())),
            }
        )


# Recipients that can take over a source user's mailbox in match mode: a MailUser (converted
# at pre-stage) or a mailbox. A contact or group sharing the local part is listed so the
# operator sees why the match is ambiguous, but cannot be confirmed.
MATCHABLE_KINDS = frozenset({"MailUser", "UserMailbox", "SharedMailbox"})


def plan_create(
    src: SourceMailbox,
    index: TargetIndex,
    destination_domain: str,
    forwarding_domain: str | None,
    orphan: dict[str, Any] | None = None,
) -> TargetPlan:
    """A new MailUser: the source local part at the destination domain, suffixed if taken.

    With an `orphan` (a target object that routes to this source mailbox, left by a run
    whose journal is gone: `orphans.Obstacles.adoptable`) the plan is that object's name,
    alias and destination address, so adopting it changes as little as possible.
    """
    if orphan is not None:
        return _plan_orphan(src, index, destination_domain, forwarding_domain, orphan)
    local = ascii_alias(src.local_part)
    primary = free_address(local, destination_domain, lambda a: index.address_taken(a, src.id))
    name = exchange_name(src.display_name, lambda n: index.name_taken(n, src.id))
    plan = TargetPlan(
        mode="create",
        name=name,
        alias=split_address(primary)[0],
        display_name=src.display_name,
        primary_smtp=primary,
        external_address=forwarding_address(src, forwarding_domain),
        x500=tuple(src.x500_proxies()),
    )
    index.reserve(src.id, address=primary, name=name)
    return plan


# Where Exchange shows a MailUser's UPN (the MicrosoftOnlineServicesID coexist gives it: the
# planned primary). Which of them Get-Recipient's output carries is *unverified* (none is in
# its documented filterable properties); with none, the object's primary decides, and a
# half-made orphan (source address primary) gets a fresh planned address instead.
UPN_PROPERTIES = ("UserPrincipalName", "MicrosoftOnlineServicesID", "WindowsLiveID")


def _plan_orphan(
    src: SourceMailbox,
    index: TargetIndex,
    destination_domain: str,
    forwarding_domain: str | None,
    orphan: dict[str, Any],
) -> TargetPlan:
    """The plan for adopting `orphan`: its own destination-domain address as the primary.

    That is its primary once a run set its address list, else (a run killed between
    New-MailUser and the address update: the source address is still primary) its UPN,
    which coexist made the planned primary. Failing both, a fresh address as for `create`.
    """
    own = own_addresses(src, forwarding_domain)
    suffix = "@" + destination_domain.lower()
    held = [bare(orphan.get("PrimarySmtpAddress"))]
    held += [bare(orphan.get(p)) for p in UPN_PROPERTIES]
    oid = object_id(orphan).lower()

    def taken(address: str) -> bool:
        owner = index.owner(address)
        mine = owner is not None and object_id(owner).lower() == oid
        return index.address_taken(address, src.id) and not mine

    primary = next(
        (a for a in held if a.endswith(suffix) and a not in own and not taken(a)), None
    ) or free_address(ascii_alias(src.local_part), destination_domain, taken)
    name = str(orphan.get("Name") or src.display_name)
    index.reserve(src.id, address=primary, name=name)
    return TargetPlan(
        mode="create",
        name=name,
        alias=str(orphan.get("Alias") or split_address(primary)[0]),
        display_name=src.display_name,
        primary_smtp=primary,
        external_address=forwarding_address(src, forwarding_domain),
        x500=tuple(src.x500_proxies()),
        adopt_id=object_id(orphan),
    )


def plan_match(
    src: SourceMailbox,
    index: TargetIndex,
    destination_domain: str,
    forwarding_domain: str | None,
    claimed: dict[str, str],
) -> TargetPlan:
    """Match an existing target recipient on the SMTP local part.

    Exactly one candidate not claimed by another source user → matched. None →
    planned like `create`. Several, or one already claimed → candidates recorded
    and the user waits for the operator (`coexist confirm`).
    """
    found = sorted(
        index.by_local_part(src.local_part),
        key=lambda r: str(r.get("ExternalDirectoryObjectId") or r.get("Guid")),
    )
    ids = [str(r.get("ExternalDirectoryObjectId") or r.get("Guid")) for r in found]
    if not ids:
        return plan_create(src, index, destination_domain, forwarding_domain)
    base = dict(
        mode="match",
        display_name=src.display_name,
        external_address=forwarding_address(src, forwarding_domain),
        x500=tuple(src.x500_proxies()),
    )
    if len(ids) == 1 and claimed.get(ids[0], src.id) == src.id:
        r = found[0]
        claimed[ids[0]] = src.id
        primary = str(r.get("PrimarySmtpAddress"))
        if bare(primary) in own_addresses(src, forwarding_domain):
            # An admin's New-MailUser left the source address primary (New-MailUser.md:
            # ExternalEmailAddress is the primary by default): the match gets a planned
            # primary in the destination domain, which provision sets.
            primary = free_address(
                ascii_alias(src.local_part),
                destination_domain,
                lambda a: index.address_taken(a, src.id),
            )
            index.reserve(src.id, address=primary, name=str(r.get("Name")))
        return TargetPlan(
            name=str(r.get("Name")),
            alias=str(r.get("Alias")),
            primary_smtp=primary,
            matched_id=ids[0],
            **base,  # type: ignore[arg-type]
        )
    return TargetPlan(
        name=src.name,
        alias=src.alias,
        primary_smtp="",
        candidates=tuple(ids),
        candidate_kinds=tuple(str(r.get("RecipientTypeDetails") or "") for r in found),
        **base,  # type: ignore[arg-type]
    )


def new_password(length: int = 24) -> str:
    """A random initial password for a licensable MailUser; never stored or logged.

    New-MailUser's MicrosoftOnlineServicesID parameter set requires -Password
    (FACTS.md); operators reset it (or use SSO) when the user cuts over.
    """
    alphabet = string.ascii_letters + string.digits + "!#%+-=?@_"
    while True:
        pw = "".join(secrets.choice(alphabet) for _ in range(length))
        classes = [
            any(c.islower() for c in pw),
            any(c.isupper() for c in pw),
            any(c.isdigit() for c in pw),
            any(not c.isalnum() for c in pw),
        ]
        if all(classes):
            return pw
