"""Exchange cmdlet parameters as data, and the check every cmdlet call must pass.

`data/exo-cmdlets.json` is Microsoft's cmdlet reference turned into data (see
data/README.md). This module answers one question for Exchange Online: given
a cmdlet name and the parameters of a call, which parameter set does the call
bind to — or why does Exchange Online refuse it? The sandbox's InvokeCommand
face uses it on every call; the product's plan mode reuses it to reject a bad
call before it is sent. Pure: no HTTP, no sandbox imports.

Binding follows PowerShell's rules as Exchange cmdlets expose them:
parameter names are case-insensitive (aliases accepted); a parameter whose
"Applies to" line lacks "Exchange Online" does not exist in Exchange Online,
so it fails like an unknown parameter; only parameter sets whose mandatory
parameters all exist in Exchange Online are usable; the candidate sets are
those containing every given parameter; among them the sets whose mandatory
parameters are all given win, the default set breaking ties.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal

ViolationKind = Literal[
    "unknown_cmdlet",
    "unknown_parameter",
    "on_premises_only",
    "online_only",
    "missing_mandatory",
    "ambiguous_set",
]
# Which Exchange a call is checked against: Exchange Online (the default, InvokeCommand)
# or on-premises Exchange Server (remote PowerShell, sandbox/psrp). On-premises, an
# Exchange-Online-only parameter does not exist, the mirror image of the rule above.
Plane = Literal["online", "onprem"]
# Cmdlets missing from exo-cmdlets.json (RBAC: New-/Get-ManagementRoleAssignment),
# extracted from the same docs commit into a file of their own; on-premises plane only.
EXTRA_FILES = {"onprem": ("exo-cmdlets-rbac.json",)}

ALL_SETS = "__AllParameterSets"
# PowerShell's common parameters exist on every cmdlet but the reference omits them
# (<CommonParameters>). They are accepted and take no part in set binding; whether
# InvokeCommand honours them server-side is *unverified*.
COMMON_PARAMETERS = frozenset(
    p.lower()
    for p in (
        "Verbose",
        "Debug",
        "ErrorAction",
        "WarningAction",
        "InformationAction",
        "ProgressAction",
        "ErrorVariable",
        "WarningVariable",
        "InformationVariable",
        "OutVariable",
        "OutBuffer",
        "PipelineVariable",
    )
)

# Where the reference is demonstrably wrong, the correction lives here, in one place.
# - Get-HostedOutboundSpamFilterPolicy: SYNTAX shows `[-Identity] <...>` (mandatory), yet the
#   same page's Example 1 runs it without parameters to list every policy, and ScubaGear /
#   CIPP call it bare. Identity is optional in reality.
# - New-MailUser, set EnableRoomMailboxAccount: SYNTAX shows only -Name as mandatory, which
#   would make `New-MailUser -Name x` succeed by binding to the room-account set. The yaml
#   says -MicrosoftOnlineServicesID is Required there; we follow the yaml (*unverified*).
OPTIONAL_OVERRIDES: dict[tuple[str, str], frozenset[str]] = {
    ("get-hostedoutboundspamfilterpolicy", ALL_SETS): frozenset({"identity"}),
}
# - Get-MailboxPermission: its two sets (Owner, AccessRights) both need only -Identity, yet
#   `Get-MailboxPermission -Identity x` is the page's Example 1 and runs everywhere: the
#   cmdlet declares a default set the reference does not mark. AccessRights (where -User
#   lives; Owner is selected by its -Owner switch) is taken as that default (*unverified*).
DEFAULT_SET_OVERRIDES: dict[str, str] = {"get-mailboxpermission": "AccessRights"}
MANDATORY_OVERRIDES: dict[tuple[str, str], frozenset[str]] = {
    ("new-mailuser", "EnableRoomMailboxAccount"): frozenset({"MicrosoftOnlineServicesID"}),
}


class SpecViolation(Exception):
    """A call Exchange Online refuses at parameter binding; `parameters` names the culprits."""

    def __init__(
        self, kind: ViolationKind, cmdlet: str, parameters: Iterable[str], message: str
    ) -> None:
        super().__init__(message)
        self.kind: ViolationKind = kind
        self.cmdlet = cmdlet
        self.parameters = tuple(parameters)
        self.message = message


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    type: str
    sets: frozenset[str]
    exchange_online: bool
    aliases: tuple[str, ...]
    on_premises: bool = False

    def exists(self, plane: Plane) -> bool:
        return self.exchange_online if plane == "online" else self.on_premises

    @property
    def is_switch(self) -> bool:
        return self.type == "SwitchParameter"


@dataclass(frozen=True)
class ParameterSetSpec:
    name: str
    required: frozenset[str]  # canonical parameter names
    exchange_online_usable: bool
    on_premises_usable: bool = False

    def usable(self, plane: Plane) -> bool:
        return self.exchange_online_usable if plane == "online" else self.on_premises_usable


@dataclass(frozen=True)
class CmdletSpec:
    name: str
    exchange_online: bool
    parameters: Mapping[str, ParameterSpec]  # lower-case name or alias -> spec
    sets: tuple[ParameterSetSpec, ...]  # SYNTAX order
    default_set: str | None
    on_premises: bool = False

    def parameter(self, name: str) -> ParameterSpec | None:
        return self.parameters.get(name.lower())

    @property
    def canonical_parameters(self) -> list[ParameterSpec]:
        seen: dict[str, ParameterSpec] = {}
        for p in self.parameters.values():
            seen.setdefault(p.name, p)
        return list(seen.values())

    def usable_sets(self, plane: Plane = "online") -> list[ParameterSetSpec]:
        return [s for s in self.sets if s.usable(plane)]

    def mandatory_parameters(self, plane: Plane = "online") -> set[str]:
        """Names mandatory in at least one set usable in `plane`."""
        return {p for s in self.usable_sets(plane) for p in s.required}


def _load_raw(name: str = "exo-cmdlets.json") -> dict[str, Any]:
    text = resources.files("coexist.data").joinpath(name).read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def _build_cmdlet(name: str, raw: Mapping[str, Any]) -> CmdletSpec:
    key = name.lower()
    all_set_names = list(raw["parameter_sets"])
    params: dict[str, ParameterSpec] = {}
    for pname, p in raw["parameters"].items():
        member_of = frozenset(all_set_names if ALL_SETS in p["sets"] else p["sets"])
        spec = ParameterSpec(
            name=pname,
            type=p.get("type", ""),
            sets=member_of,
            exchange_online=bool(p["exchange_online"]),
            aliases=tuple(p.get("aliases") or ()),
            on_premises=bool(p.get("on_premises")),
        )
        params[pname.lower()] = spec
        for alias in spec.aliases:
            params.setdefault(alias.lower(), spec)
    sets: list[ParameterSetSpec] = []
    for sname, s in raw["parameter_sets"].items():
        required = set(s["required"])
        # A switch named like its set is that set's selector: mandatory there
        # (conventions in the spec file: "probably mandatory in its own set").
        required |= {p for p in s.get("yaml_required_but_optional_in_syntax", []) if p == sname}
        required |= MANDATORY_OVERRIDES.get((key, sname), frozenset())
        required -= {
            r for r in required if r.lower() in OPTIONAL_OVERRIDES.get((key, sname), frozenset())
        }
        known = [params[r.lower()] for r in required if r.lower() in params]
        usable = all(p.exchange_online for p in known)
        on_prem = all(p.on_premises for p in known)
        sets.append(ParameterSetSpec(sname, frozenset(required), usable, on_prem))
    return CmdletSpec(
        name=name,
        exchange_online=bool(raw["exchange_online_cmdlet"]),
        parameters=params,
        sets=tuple(sets),
        default_set=raw.get("default_parameter_set_marked_in_doc"),
        on_premises=bool(raw.get("on_premises_cmdlet")),
    )


@cache
def load_spec(plane: Plane = "online") -> dict[str, CmdletSpec]:
    """Every cmdlet of the reference (and the plane's extra files), keyed by lower-case name."""
    raw = dict(_load_raw()["cmdlets"])
    for extra in EXTRA_FILES.get(plane, ()):
        raw.update(_load_raw(extra)["cmdlets"])
    return {name.lower(): _build_cmdlet(name, c) for name, c in raw.items()}


def cmdlet_names() -> list[str]:
    return [c.name for c in load_spec().values()]


def cmdlet_spec(cmdlet: str, plane: Plane = "online") -> CmdletSpec:
    spec = load_spec(plane).get(cmdlet.lower())
    exists = spec is not None and (spec.exchange_online if plane == "online" else spec.on_premises)
    if spec is None or not exists:
        raise SpecViolation(
            "unknown_cmdlet",
            cmdlet,
            (),
            f"The term '{cmdlet}' is not recognized as a name of a cmdlet, function, script "
            "file, or executable program.",
        )
    return spec


# Exchange Online's wording. The unknown-parameter text was captured live from the
# InvokeCommand endpoint (graph2otel exoclient fixtures, `Get-QuarantineMessage
# -BogusParameter 1`). The missing-mandatory and ambiguous texts are PowerShell's
# binder messages; that InvokeCommand words them the same is *unverified*.
UNRESOLVED = "Parameter set cannot be resolved using the specified named parameters."


def unknown_parameter_message(names: Iterable[str]) -> str:
    return f"{UNRESOLVED} Invalid cmdlet parameters specified. {', '.join(names)}"


def missing_mandatory_message(names: Iterable[str]) -> str:
    return (
        "Cannot process command because of one or more missing mandatory parameters: "
        f"{' '.join(names)}."
    )


def ambiguous_message(names: Iterable[str]) -> str:
    return (
        f"{UNRESOLVED} One or more parameters issued cannot be used together or an insufficient "
        f"number of parameters were provided. Parameters: {', '.join(names)}"
    )


def canonicalize(cmdlet: str, params: Mapping[str, Any], plane: Plane = "online") -> dict[str, Any]:
    """Map the call's parameter names to the reference's spelling, refusing unknown ones.

    Raises `SpecViolation` (unknown_cmdlet, unknown_parameter, on_premises_only, online_only).
    """
    spec = cmdlet_spec(cmdlet, plane)
    out: dict[str, Any] = {}
    unknown: list[str] = []
    elsewhere: list[str] = []
    for name, value in params.items():
        p = spec.parameter(name)
        if p is None and name.lower() in COMMON_PARAMETERS:
            continue
        if p is None:
            unknown.append(name)
        elif not p.exists(plane):
            elsewhere.append(name)
        else:
            out[p.name] = value
    if unknown or elsewhere:
        # A parameter of the other Exchange simply does not exist in this one.
        other: ViolationKind = "on_premises_only" if plane == "online" else "online_only"
        kind: ViolationKind = "unknown_parameter" if unknown else other
        names = unknown + elsewhere
        raise SpecViolation(kind, spec.name, names, unknown_parameter_message(names))
    return out


def resolve_parameter_set(cmdlet: str, params: Mapping[str, Any], plane: Plane = "online") -> str:
    """The parameter set a call binds to in `plane` (Exchange Online by default)."""
    spec = cmdlet_spec(cmdlet, plane)
    given = set(canonicalize(cmdlet, params, plane))
    usable = spec.usable_sets(plane)
    candidates = [
        s for s in usable if all(s.name in spec.parameters[g.lower()].sets for g in given)
    ]
    if not candidates:
        raise SpecViolation(
            "ambiguous_set",
            spec.name,
            _conflicting(spec, usable, given),
            ambiguous_message(_conflicting(spec, usable, given)),
        )
    satisfied = [s for s in candidates if s.required <= given]
    if not satisfied:
        best = _preferred(spec, candidates, plane)
        missing = [r for r in _ordered_required(spec, best) if r not in given]
        raise SpecViolation(
            "missing_mandatory", spec.name, missing, missing_mandatory_message(missing)
        )
    if len(satisfied) == 1:
        return satisfied[0].name
    default = _default_set(spec, plane)
    if default is not None and any(s.name == default for s in satisfied):
        return default
    # The most specific set (most mandatory parameters bound) wins, as PowerShell
    # prefers a set whose mandatory parameters were all named explicitly.
    top = max(len(s.required) for s in satisfied)
    best_sets = [s for s in satisfied if len(s.required) == top]
    if len(best_sets) == 1:
        return best_sets[0].name
    names = sorted(given) or [s.name for s in best_sets]
    raise SpecViolation("ambiguous_set", spec.name, names, ambiguous_message(names))


def _default_set(spec: CmdletSpec, plane: Plane = "online") -> str | None:
    """The doc-marked default, else 'Identity' (Exchange's usual DefaultParameterSetName)."""
    names = [s.name for s in spec.usable_sets(plane)]
    marked = DEFAULT_SET_OVERRIDES.get(spec.name.lower(), spec.default_set)
    for choice in (marked, "Identity", ALL_SETS):
        if choice in names:
            return choice
    return None


def _preferred(
    spec: CmdletSpec, candidates: list[ParameterSetSpec], plane: Plane = "online"
) -> ParameterSetSpec:
    default = _default_set(spec, plane)
    for s in candidates:
        if s.name == default:
            return s
    return candidates[0]


def _ordered_required(spec: CmdletSpec, s: ParameterSetSpec) -> list[str]:
    order = [p.name for p in spec.canonical_parameters]
    return sorted(s.required, key=lambda n: order.index(n) if n in order else len(order))


def _conflicting(spec: CmdletSpec, usable: list[ParameterSetSpec], given: set[str]) -> list[str]:
    """The given parameters outside the set that explains most of the call."""
    if not usable:
        return sorted(given)
    best = max(usable, key=lambda s: sum(s.name in spec.parameters[g.lower()].sets for g in given))
    out = sorted(g for g in given if best.name not in spec.parameters[g.lower()].sets)
    return out or sorted(given)


__all__ = [
    "CmdletSpec",
    "ParameterSetSpec",
    "ParameterSpec",
    "Plane",
    "SpecViolation",
    "canonicalize",
    "cmdlet_names",
    "cmdlet_spec",
    "load_spec",
    "resolve_parameter_set",
]
