"""Automatch (CodeTwo's): each source user to an existing target mailbox, by ordered rules.

A source whose users come from a batch file (an IMAP server: `coexist batch import` of
CodeTwo's user CSV) names logins, not target objects. `coexist automatch` reads the target
tenant's users once (Graph, raw JSON) and tries the rules in the order given:

  same-address  the source address is one of a target user's addresses (mail, UPN, proxies)
  local-part    <source local part>@<[domains] destination_domain> is one of them
  first-last    <first>.<last>@<destination_domain>, from the CSV's First/Last Name
  display-name  the same display name (case and spacing aside)

The first rule that finds any candidate decides: exactly one is the match; several leave
the user `waiting` for `coexist confirm --user U --target ADDRESS` (the operator's choice).
A target another user already holds is nobody else's candidate. What a rule, the operator
(`confirm`), the user file (a Destination Email column) or `--create-missing` decided is
journaled on the user: `target_id` and `target_address` (what the movers and status read:
`provisioning.convert.target_id`, `migrate.stores.*`), and `detail.automatch` (status, rule,
candidates). A re-run with other rules re-decides rule matches only, and changes one only where
the new rules find another single target: a confirmed, given or created target stays, and
so does the target of a user that has started moving.

`--create-missing` creates a target user for each user no rule matched: `POST /users` with
a generated password (never printed, journaled or kept: the operator resets it, or the
user signs in through SSO, at cutover), then provisioning's license and mailbox steps
(`provisioning.convert`): Exchange provisions the mailbox minutes after the license, and
the user waits with a time to look again (the `realistic` profile's waits).
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from coexist.engine.context import Context
from coexist.engine.runner import set_item
from coexist.engine.step import Step, StepResult, registry
from coexist.errors import InputError, NotFound
from coexist.journal import Journal
from coexist.model import Phase, ascii_alias, split_address
from coexist.provisioning.plan import new_password

SAME_ADDRESS, LOCAL_PART, FIRST_LAST, DISPLAY_NAME = (
    "same-address",
    "local-part",
    "first-last",
    "display-name",
)
RULES = (SAME_ADDRESS, LOCAL_PART, FIRST_LAST, DISPLAY_NAME)

# What decided a user's target (detail.automatch.status).
MATCHED, CONFIRMED, GIVEN, CREATED = "matched", "confirmed", "given", "created"
AMBIGUOUS, UNMATCHED, TAKEN = "ambiguous", "unmatched", "taken"
KEPT = "kept"  # a user already moving keeps the target it had
# Decisions of people (and of the user's own creation) that no rule overrides.
HUMAN = frozenset({CONFIRMED, GIVEN, CREATED})
# What an ambiguous user waits for (status shows it); the prefix finds them.
WAITING_FOR = "automatch"

USER_SELECT = "id,userPrincipalName,mail,displayName,proxyAddresses,userType,givenName,surname"


def parse_rules(text: str | None) -> tuple[str, ...]:
    """`--rules a,b,c`: known rule names, in the operator's order, each once."""
    if text is None:
        return RULES
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in RULES]
    if unknown or not names:
        raise InputError(
            f"--rules {text!r}: unknown rule(s) {', '.join(unknown) or '(none given)'}; "
            f"the rules are {', '.join(RULES)}",
            next_step=f"coexist automatch --rules {','.join(RULES)}",
        )
    if len(set(names)) != len(names):
        raise InputError(f"--rules {text!r} names a rule twice", next_step="name each rule once")
    return tuple(names)


# -- the target directory -------------------------------------------------------------------
@dataclass(frozen=True)
class TargetUser:
    """A member user of the target tenant, as automatch compares it."""

    id: str
    address: str  # mail, else the UPN: what people read and what the journal records
    display_name: str
    addresses: frozenset[str]  # lower-case: mail, UPN, SMTP proxies
    has_mailbox: bool

    @classmethod
    def from_graph(cls, u: dict[str, Any]) -> TargetUser:
        upn = str(u.get("userPrincipalName") or "")
        mail = str(u.get("mail") or "")
        proxies = [
            str(p)[5:] for p in u.get("proxyAddresses") or [] if str(p)[:5].lower() == "smtp:"
        ]
        return cls(
            id=str(u["id"]),
            address=mail or upn,
            display_name=str(u.get("displayName") or ""),
            addresses=frozenset(a.lower() for a in (mail, upn, *proxies) if a),
            has_mailbox=bool(mail),
        )

    def shown(self) -> dict[str, Any]:
        return {"id": self.id, "address": self.address, "name": self.display_name}


@dataclass
class Directory:
    """The target's users indexed by address and display name; read once per run."""

    users: list[TargetUser]
    by_address: dict[str, list[TargetUser]] = field(default_factory=dict)
    by_name: dict[str, list[TargetUser]] = field(default_factory=dict)
    by_id: dict[str, TargetUser] = field(default_factory=dict)

    def __post_init__(self) -> None:
        addresses: dict[str, list[TargetUser]] = defaultdict(list)
        names: dict[str, list[TargetUser]] = defaultdict(list)
        for u in self.users:
            for a in u.addresses:
                addresses[a].append(u)
            if u.display_name.strip():
                names[_name_key(u.display_name)].append(u)
            self.by_id[u.id] = u
        self.by_address, self.by_name = dict(addresses), dict(names)

    def owner(self, address: str) -> TargetUser | None:
        found = self.by_address.get(address.lower(), [])
        return found[0] if len(found) == 1 else None


async def read_directory(ctx: Context) -> Directory:
    """Every member user of the target (guests are other tenants' people: never a target)."""
    if "automatch_directory" not in ctx.cache:
        rows = await ctx.target.directory.list_all("users", params={"$select": USER_SELECT})
        members = [TargetUser.from_graph(u) for u in rows if u.get("userType") != "Guest"]
        ctx.cache["automatch_directory"] = Directory(members)
    directory: Directory = ctx.cache["automatch_directory"]
    return directory


def _name_key(name: str) -> str:
    return " ".join(name.casefold().split())


def _address_part(text: str) -> str:
    """A name as an address part: ASCII-folded, lower-case, spaces and odd characters gone."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9'_-]", "", folded)


# -- deciding -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceUser:
    """What automatch knows of a source user (its journal item)."""

    key: str
    address: str  # the login / source address
    display_name: str
    first_name: str
    last_name: str
    phase: str
    target_id: str | None
    target_address: str | None
    recorded: dict[str, Any]  # detail.automatch

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> SourceUser:
        detail = item.get("detail") or {}
        src = detail.get("source") or {}
        return cls(
            key=str(item["key"]),
            address=str(item.get("source_address") or item["key"]),
            display_name=str(src.get("display_name") or item.get("name") or ""),
            first_name=str(src.get("first_name") or ""),
            last_name=str(src.get("last_name") or ""),
            phase=str(item.get("phase") or Phase.DISCOVERED.value),
            target_id=item.get("target_id"),
            target_address=item.get("target_address"),
            recorded=dict(detail.get("automatch") or {}),
        )

    @property
    def local_part(self) -> str:
        return split_address(self.address)[0] if "@" in self.address else self.address


@dataclass(frozen=True)
class Decision:
    """One user's target: who decided it (status, rule), and the candidates when ambiguous."""

    status: str
    rule: str | None = None
    target_id: str | None = None
    target_address: str | None = None
    target_name: str | None = None
    candidates: tuple[tuple[str, str, str], ...] = ()  # (id, address, display name)
    reason: str = ""

    def record(self) -> dict[str, Any]:
        """The journal's view: the item columns and detail.automatch."""
        return {
            "target_id": self.target_id,
            "target_address": self.target_address,
            "automatch": {
                "status": self.status,
                "rule": self.rule,
                "target_name": self.target_name,
                "candidates": [{"id": i, "address": a, "name": n} for i, a, n in self.candidates],
                "reason": self.reason,
            },
        }

    @classmethod
    def recorded(cls, user: SourceUser) -> Decision:
        r = user.recorded
        return cls(
            status=str(r.get("status") or ""),
            rule=r.get("rule"),
            target_id=user.target_id,
            target_address=user.target_address,
            target_name=r.get("target_name"),
            candidates=tuple(
                (str(c["id"]), str(c["address"]), str(c["name"])) for c in r.get("candidates") or []
            ),
            reason=str(r.get("reason") or ""),
        )


def _rule_candidates(
    rule: str, user: SourceUser, directory: Directory, domain: str
) -> list[TargetUser]:
    if rule == SAME_ADDRESS:
        return directory.by_address.get(user.address.lower(), []) if "@" in user.address else []
    if rule == LOCAL_PART:
        return directory.by_address.get(f"{user.local_part}@{domain}".lower(), [])
    if rule == FIRST_LAST:
        first, last = _address_part(user.first_name), _address_part(user.last_name)
        if not (first and last):
            return []
        return directory.by_address.get(f"{first}.{last}@{domain}".lower(), [])
    if not user.display_name.strip():
        return []
    return directory.by_name.get(_name_key(user.display_name), [])


def by_rule(
    user: SourceUser,
    rule: str,
    directory: Directory,
    domain: str,
    claimed: dict[str, str],
) -> Decision | None:
    """What one rule decides for a user: None when it finds no candidate. `claimed`
    (target id -> user key) grows with each match."""
    found = sorted(_rule_candidates(rule, user, directory, domain), key=lambda u: u.address)
    if not found:
        return None
    free = [u for u in found if claimed.get(u.id, user.key) == user.key]
    if len(free) == 1:
        t = free[0]
        claimed[t.id] = user.key
        before = Decision.recorded(user)
        if before.status == MATCHED and before.target_id == t.id:
            return before  # the same target: its record stays (rule included)
        return Decision(MATCHED, rule, t.id, t.address, t.display_name)
    shown = tuple((u.id, u.address, u.display_name) for u in (free or found))
    if not free:
        return Decision(TAKEN, rule, candidates=shown, reason="held by another user")
    return Decision(AMBIGUOUS, rule, candidates=shown)


def _kept(user: SourceUser, directory: Directory) -> Decision | None:
    """The decision no rule re-makes: a person's (confirm, the user file's target column),
    a created target, or any target of a user that has started moving."""
    status = user.recorded.get("status")
    moving = user.phase != Phase.DISCOVERED.value and bool(user.target_id)
    if status in HUMAN or moving:
        before = Decision.recorded(user)
        if not before.status:  # a target `provision` gave, before automatch ran
            before = Decision(KEPT, None, before.target_id, before.target_address)
        if before.target_id or not before.target_address:
            return before
        return _resolve(before, directory)  # confirmed by address: its id, once it exists
    if not user.recorded and user.target_address:
        return _resolve(Decision(GIVEN, target_address=user.target_address), directory)
    return None


def _resolve(decision: Decision, directory: Directory) -> Decision:
    """A decision naming an address only: the target user that has it, if one does."""
    target = directory.owner(str(decision.target_address))
    if target is None:
        return Decision(
            decision.status,
            target_address=decision.target_address,
            reason=f"no target user has the address {decision.target_address} yet",
        )
    return Decision(decision.status, None, target.id, target.address, target.display_name)


def decide_all(
    users: Iterable[SourceUser],
    held: dict[str, str],
    directory: Directory,
    rules: Sequence[str],
    domain: str,
) -> dict[str, Decision]:
    """Every user's decision. Kept decisions (a person's, a moving user's) claim their
    targets first; then each rule in turn over the users still undecided, by source
    address, so a stronger rule's match is never taken by a weaker rule's match of another
    user. `held`: targets of users not decided here (target id -> user key)."""
    claimed = dict(held)
    out: dict[str, Decision] = {}
    todo = sorted(users, key=lambda u: u.address.lower())
    matched: dict[str, Decision] = {}  # earlier rule matches whose targets still exist
    for u in todo:
        kept = _kept(u, directory)
        before = Decision.recorded(u)
        if kept is not None:
            out[u.key] = kept
            if kept.target_id:
                claimed.setdefault(kept.target_id, u.key)
        elif before.status == MATCHED and before.target_id in directory.by_id:
            matched[u.key] = before
            claimed.setdefault(str(before.target_id), u.key)
    for rule in rules:
        for u in todo:
            if u.key not in out and (d := by_rule(u, rule, directory, domain, claimed)):
                out[u.key] = d
    for u in todo:
        # Other rules change a match only by finding another single target: finding none,
        # or several, says nothing against the one an earlier run found.
        if u.key in matched and out.get(u.key, Decision(UNMATCHED)).status != MATCHED:
            out[u.key] = matched[u.key]
        out.setdefault(u.key, Decision(UNMATCHED))
    return {u.key: out[u.key] for u in todo}


# -- the match step -------------------------------------------------------------------------
@dataclass(frozen=True)
class MatchStep(Step):
    """The user's journaled target is the one automatch decided (a journal write only)."""

    name = "automatch.match"

    status: str
    rule: str | None
    target_id: str | None
    target_address: str | None
    target_name: str | None
    candidates: tuple[tuple[str, str, str], ...]
    reason: str
    user: str  # the source address (for the waiting text)

    @classmethod
    def of(cls, key: str, user: str, d: Decision) -> MatchStep:
        return cls(
            subject=key,
            user=user,
            **{k: v for k, v in asdict(d).items() if k != "candidates"},
            candidates=d.candidates,
        )

    def decision(self) -> Decision:
        return Decision(
            self.status,
            self.rule,
            self.target_id,
            self.target_address,
            self.target_name,
            self.candidates,
            self.reason,
        )


@registry.register(MatchStep)
class MatchExecutor:
    async def observe(self, ctx: Context, step: MatchStep) -> dict[str, Any]:
        """The user's journaled target and wait (only what the step compares: JSON data)."""
        item = ctx.journal.get_item("user", step.subject) or {}
        detail = item.get("detail") or {}
        return {
            "key": step.subject,
            **{k: item.get(k) for k in ("target_id", "target_address", "phase", "state")},
            "detail": {k: detail.get(k) for k in ("automatch", "waiting_for") if k in detail},
        }

    async def apply(self, ctx: Context, step: MatchStep, observed: dict[str, Any]) -> StepResult:
        before = Decision.recorded(SourceUser.from_item(observed)).record()
        after = step.decision().record()
        data: dict[str, Any] = dict(after) if after != before else {}
        data.update(_waiting(observed, step))
        return StepResult(bool(data), before, after, describe(step.decision()), data=data)


def _waiting(item: dict[str, Any], step: MatchStep) -> dict[str, Any]:
    """An ambiguous user that has not started moving waits for the operator's choice; one
    that waited for it and has a target now waits no more. Other waits are left alone."""
    detail = item.get("detail") or {}
    was = item.get("state") == "waiting" and str(detail.get("waiting_for") or "").startswith(
        WAITING_FOR
    )
    if step.status == AMBIGUOUS and item.get("phase") == Phase.DISCOVERED.value:
        text = (
            f"{WAITING_FOR}: {len(step.candidates)} target candidates ({step.rule}); "
            f"coexist confirm --user {step.user} --target ADDRESS"
        )
        if (item.get("state") in (None, "ok") or was) and detail.get("waiting_for") != text:
            return {"state": "waiting", "waiting_for": text}
        return {}
    return {"state": "ok", "waiting_for": None} if was else {}


def describe(d: Decision) -> str:
    """One line for people: addresses and display names, never an object id."""
    target = f"{d.target_address} ({d.target_name})" if d.target_name else str(d.target_address)
    if d.status in (MATCHED, CONFIRMED, GIVEN, CREATED, KEPT) and d.target_id:
        how = f"rule {d.rule}" if d.rule else d.status
        return f"{target} [{how}]"
    if d.status in (AMBIGUOUS, TAKEN):
        names = ", ".join(f"{a} ({n})" for _, a, n in d.candidates)
        return f"{d.status} by rule {d.rule}: {names}" + (f"; {d.reason}" if d.reason else "")
    if d.target_address:
        return f"{d.target_address} [{d.status}]: {d.reason}"
    return "no match"


# -- --create-missing -----------------------------------------------------------------------
@dataclass(frozen=True)
class CreateUserStep(Step):
    """A target user exists at the planned UPN (made with POST /users if not)."""

    name = "automatch.create"

    user_principal_name: str
    display_name: str
    mail_nickname: str
    given_name: str | None
    surname: str | None
    usage_location: str | None


@registry.register(CreateUserStep)
class CreateUserExecutor:
    async def observe(self, ctx: Context, step: CreateUserStep) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await ctx.target.directory.send(
                "GET",
                f"users/{step.user_principal_name}",
                params={"$select": "id,userPrincipalName,displayName"},
            )
        except NotFound:
            return None
        return found

    async def apply(
        self, ctx: Context, step: CreateUserStep, observed: dict[str, Any] | None
    ) -> StepResult:
        if observed is None:
            observed = await ctx.target.directory.send("POST", "users", json=_new_user(step))
            changed, text = True, f"created {step.user_principal_name}"
        else:
            # Made by a run that died before journaling it (the planned UPN was free when
            # this user was decided unmatched): the same user, not a second one.
            changed, text = False, f"{step.user_principal_name} exists"
        after = {"userPrincipalName": step.user_principal_name}
        if observed is None:  # plan mode: the POST was recorded, nothing was created
            return StepResult(changed, None, after, text)
        made = Decision(
            CREATED, None, str(observed["id"]), step.user_principal_name, step.display_name
        )
        return StepResult(changed, None, after, text, data=made.record())


def _new_user(step: CreateUserStep) -> dict[str, Any]:
    """user-post-users' required properties, names and usage location (licensing needs
    it). The password is made here and sent once: never in the step, journal or output."""
    body: dict[str, Any] = {
        "accountEnabled": True,
        "displayName": step.display_name,
        "mailNickname": step.mail_nickname,
        "userPrincipalName": step.user_principal_name,
        "passwordProfile": {"forceChangePasswordNextSignIn": True, "password": new_password()},
    }
    optional = {
        "givenName": step.given_name,
        "surname": step.surname,
        "usageLocation": step.usage_location,
    }
    body.update({k: v for k, v in optional.items() if v})
    return body


def create_step(
    user: SourceUser,
    decision: Decision,
    directory: Directory,
    domain: str,
    usage_location: str | None,
) -> CreateUserStep | str:
    """The step that creates `user`'s target (again: a created user is observed, not made
    twice), or why it cannot (its planned UPN is another user's address)."""
    if decision.status == CREATED and decision.target_address:
        upn = decision.target_address
        alias = split_address(upn)[0]
    else:
        alias = ascii_alias(user.local_part).lower()
        upn = f"{alias}@{domain}"
        owners = directory.by_address.get(upn.lower(), [])
        if owners:
            return f"{upn} is {owners[0].display_name}'s address: confirm it or free it"
    return CreateUserStep(
        subject=user.key,
        user_principal_name=upn,
        display_name=user.display_name or user.address,
        mail_nickname=alias,
        given_name=user.first_name or None,
        surname=user.last_name or None,
        usage_location=usage_location,
    )


# -- coexist confirm (an automatch user) ----------------------------------------------------
def decides(item: dict[str, Any]) -> bool:
    """Whether automatch decides this user's target (its `confirm` is automatch's)."""
    return bool((item.get("detail") or {}).get("automatch"))


def confirm(journal: Journal, item: dict[str, Any], user: str, target: str) -> dict[str, Any]:
    """The operator's target for an automatch user: a candidate (by address, or id) or any
    address (its target user is found by the next `coexist automatch`). Journaled; no rule
    overrides it. A user that has started moving keeps its target."""
    src = SourceUser.from_item(item)
    wanted = target.strip()
    if not wanted:
        raise InputError("--target is blank", next_step="--target alice@contoso.com")
    if src.phase != Phase.DISCOVERED.value and src.target_id:
        raise InputError(
            f"{user} has started moving (phase {src.phase}) to {src.target_address}: its "
            "target cannot change now",
            next_step="coexist status  (the user's phase and target)",
        )
    before = Decision.recorded(src)
    pick = next(
        (c for c in before.candidates if wanted.lower() in (c[0].lower(), c[1].lower())), None
    )
    if pick is not None:
        chosen = Decision(CONFIRMED, None, pick[0], pick[1], pick[2])
    elif "@" in wanted and " " not in wanted:
        chosen = Decision(
            CONFIRMED, target_address=wanted, reason="its target user is found by automatch"
        )
    else:
        raise InputError(
            f"{wanted!r} is neither an address nor one of {user}'s candidates",
            next_step=f"coexist confirm --user {user} --target ADDRESS",
        )
    others = [
        str(o.get("source_address"))
        for o in journal.items(kind="user")
        if o["key"] != src.key
        and (
            (chosen.target_id and o.get("target_id") == chosen.target_id)
            or str(o.get("target_address") or "").lower() == wanted.lower()
        )
    ]
    if others:
        raise InputError(
            f"{wanted} is already the target of {', '.join(others)}",
            next_step="confirm another target, or change that user's first",
        )
    fields = chosen.record()
    detail = item.get("detail") or {}
    if item.get("state") == "waiting" and str(detail.get("waiting_for") or "").startswith(
        WAITING_FOR
    ):
        fields.update(state="ok", waiting_for=None)
    set_item(journal, "user", src.key, **fields)
    journal.event(None, "info", f"confirm: {user} -> {wanted}", item_key=src.key)
    return {"user": user, "target": chosen.target_address, "target_name": chosen.target_name}


def held_targets(items: Iterable[dict[str, Any]], chosen: set[str]) -> dict[str, str]:
    """Targets (id -> user key) of the users this run does not decide."""
    return {
        str(i["target_id"]): str(i["key"])
        for i in items
        if i.get("target_id") and i["key"] not in chosen
    }


def report(sources: list[SourceUser], decisions: dict[str, Decision]) -> list[dict[str, Any]]:
    """Per user, for people and --json: addresses and display names (ids only in
    `target_id`); `changed` against what the journal held before the run (`sources`)."""
    rows = []
    for u in sorted(sources, key=lambda s: s.address.lower()):
        d = decisions[u.key]
        rows.append(
            {
                "user": u.address,
                "name": u.display_name,
                "status": d.status,
                "rule": d.rule,
                "target": d.target_address,
                "target_name": d.target_name,
                "target_id": d.target_id,
                "candidates": [{"address": a, "name": n} for _, a, n in d.candidates],
                "text": describe(d),
                "changed": d != Decision.recorded(u),
            }
        )
    return rows
