"""Playbooks: an operator's runbook as data, run step by step and journaled.

A playbook is a YAML file (`playbooks/NAME.yaml`, shipped with the package) holding
ordered steps, each of one kind:

``command``  a coexist command with arguments (the command functions of
             `coexist.commands`, called in-process; `batch` is the run's batch)
``check``    a registered check (`CHECKS`): reconciliation clean, no user failed,
             mail flow verified, DNS (`coexist.dnscheck`, as check-dns)
``manual``   a checklist the operator confirms (`--yes` confirms it, for rehearsals)
``notify``   a notice to each user of the batch, or to the operator, rendered from a
             jinja2 template into the run's output and the journal, and sent
             (`notices.send_playbook_notices`: [mail] transport, once per user)
``wait``     until a time, or until a check holds, polling at a bounded interval

Every string in a step is a jinja2 template (sandboxed environment, StrictUndefined) over
`project`, `batch`, `users`, `vars` (the playbook's `variables`) and, in a notice to users,
`user`. A file with any error (unknown kind, command, argument, check, a bad template, a
name no template can know, a missing key) is rejected before anything runs, naming the
file, the line and the key.

Journal: a run is one `runs` row (command "playbook"); each step is a `steps` row keyed
`playbook:NAME:BATCH:STEP`, recorded `started` before it runs and `ok` / `failed` /
`waiting` after. A run stopped anywhere (even SIGKILL) resumes at the interrupted step:
steps recorded `ok` are not run again (a command step's own engine steps are journaled
too, so the interrupted command continues where it stopped). `--plan` records nothing:
command steps run with `plan=True` and list the writes they would make; checks that only
read the journal are evaluated; anything that would send (mail-flow probes) is described.

One run per batch: a run holds its batch (`claims.playbook_scope`) from before its `runs`
row to its end - failure, Ctrl-C and SIGTERM included; a SIGKILLed run's lock goes with
its process - so a second run on the batch (any playbook) is refused before it records
anything, naming the holder (`_lock_batch`). The step commands claim what they write under
writers of their own beside it (`claims.acting_for`: the run's lock does not refuse them);
an operator's command on users of the batch is refused while the run holds it, and a run
is refused while such a command works on the batch. `--plan` takes no lock and says when
a run is in progress.
"""

from __future__ import annotations

import datetime as dt
import inspect
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import yaml
from jinja2.sandbox import SandboxedEnvironment

from coexist import commands, dnscheck
from coexist.errors import Busy, CoexistError, InputError
from coexist.journal import Journal, claims
from coexist.runtime import open_journal, project_dir
from coexist.settings import load_project

KINDS = ("command", "check", "manual", "notify", "wait")
MAX_POLL_S = 300.0  # a wait never sleeps longer than this between looks
DEFAULT_POLL_S = 30.0
RUN_COMMAND = "playbook"

# -- the playbooks on disk -----------------------------------------------------------------


def playbook_dirs(extra: Path | None = None) -> list[Path]:
    """Where playbooks are looked for: `extra` (an operator's own), the checkout's top-level
    `playbooks/`, then the copy shipped in the package (`coexist/playbooks`, pyproject)."""
    found: list[Path] = []
    if extra is not None:
        found.append(extra)
    checkout = Path(__file__).resolve().parent.parent / "playbooks"
    if checkout.is_dir():
        found.append(checkout)
    shipped = Path(str(resources.files("coexist"))) / "playbooks"
    if shipped.is_dir() and shipped.resolve() not in {p.resolve() for p in found}:
        found.append(shipped)
    return found


def available(extra: Path | None = None) -> dict[str, Path]:
    """Every playbook by name (the first directory that has a name wins)."""
    out: dict[str, Path] = {}
    for d in playbook_dirs(extra):
        for f in sorted(d.glob("*.yaml")):
            out.setdefault(f.stem, f)
    return out


def find(name: str, extra: Path | None = None) -> Path:
    """A playbook by name, or a path to a YAML file."""
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml") and as_path.is_file():
        return as_path
    known = available(extra)
    if name not in known:
        raise InputError(
            f"no playbook named {name!r} (known: {', '.join(sorted(known)) or 'none'})",
            next_step="coexist playbook list",
        )
    return known[name]


# -- YAML with line numbers ----------------------------------------------------------------


class Node(dict[str, Any]):
    """A YAML mapping that remembers its line and each key's line (1-based)."""

    line: int = 0
    lines: dict[str, int]


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader whose mappings are `Node`s carrying their node marks."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Node:
    out = Node()
    out.line = node.start_mark.line + 1
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        out[str(key)] = loader.construct_object(value_node, deep=True)
        out.lines[str(key)] = key_node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class PlaybookError(InputError):
    """A playbook file that cannot run: names the file, the line and the key."""

    def __init__(self, file: Path, line: int, key: str, problem: str) -> None:
        super().__init__(
            f"{file}:{line}: {key}: {problem}",
            next_step=f"fix {key} at line {line} of {file}",
        )
        self.file, self.line, self.key = file, line, key


# -- commands, checks ----------------------------------------------------------------------


@dataclass(frozen=True)
class CommandSpec:
    """A coexist command a playbook may run: its function and how it behaves in a plan."""

    fn: Callable[..., Any]
    plannable: bool  # takes plan=True (the real apply code, writes captured)
    reads_only: bool = False  # safe to run as it is in a plan (reads the journal or tenants)
    sends: str = ""  # what it would send when not plannable (said in a plan instead)

    def arguments(self) -> set[str]:
        """The arguments a playbook may give (the operator's options, not the plumbing)."""
        hidden = {"directory", "progress", "retry", "retry_policy", "env", "plan", "say"}
        hidden |= {"users", "all_users"}  # a playbook runs on its batch
        params = inspect.signature(self.fn).parameters
        return {p for p in params if p not in hidden}


def _wait_out(directory: Path, *, bound_s: float = 300.0, **_: Any) -> dict[str, Any]:
    """`coexist retry` until nothing waits on Microsoft 365 (bounded)."""
    return {"retries": commands.wait_out(directory, bound_s=bound_s)}


def _verify_credentials(directory: Path, *, batch: str | None = None) -> dict[str, Any]:
    """`coexist verify-credentials`: every mailbox of the batch opened, nothing moved."""
    from coexist.credcheck import verify_credentials

    return verify_credentials(directory, batch=batch)


def _statistics(directory: Path) -> dict[str, Any]:
    """Per user: items and bytes moved, GB/h, reconciliation (MigrationWiz's "Request
    statistics"; `coexist report` of issue 14 D3 is the fuller one)."""
    return {"users": commands.data_report(directory)}


COMMANDS: dict[str, CommandSpec] = {
    "discover": CommandSpec(commands.discover, plannable=True),
    "groups": CommandSpec(commands.groups, plannable=True),
    "provision": CommandSpec(commands.provision, plannable=True),
    "prestage": CommandSpec(commands.prestage, plannable=True),
    "cutover": CommandSpec(commands.cutover, plannable=True),
    "rollback": CommandSpec(commands.rollback, plannable=True),
    "retry": CommandSpec(commands.retry, plannable=True),
    "grant-access": CommandSpec(commands.grant_access, plannable=True),
    "status": CommandSpec(commands.status, plannable=False, reads_only=True),
    "preflight": CommandSpec(commands.preflight_checks, plannable=False, reads_only=True),
    "verify-mailflow": CommandSpec(
        commands.verify_mailflow, plannable=False, sends="a probe message to each user"
    ),
    "wait-out": CommandSpec(_wait_out, plannable=False, sends="`coexist retry` runs"),
    # It signs in to every mailbox and journals each result (events, user state): a plan
    # only says so.
    "verify-credentials": CommandSpec(
        _verify_credentials, plannable=False, sends="a sign-in to each mailbox (journaled)"
    ),
    "statistics": CommandSpec(_statistics, plannable=False, reads_only=True),
}


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckKind:
    """A registered check: `fn(run, **args)`; `params` it accepts; whether a plan may run it
    (it reads only) or only describes it (it sends something)."""

    fn: Callable[..., CheckResult]
    params: frozenset[str]
    reads_only: bool = True


CHECKS: dict[str, CheckKind] = {}


def register_check(
    name: str, params: tuple[str, ...] = (), *, reads_only: bool = True
) -> Callable[[Callable[..., CheckResult]], Callable[..., CheckResult]]:
    """Register a check kind playbooks can name (`kind: check`, `check: NAME`)."""

    def deco(fn: Callable[..., CheckResult]) -> Callable[..., CheckResult]:
        if name in CHECKS:
            raise ValueError(f"check {name!r} registered twice")
        CHECKS[name] = CheckKind(fn, frozenset(params), reads_only)
        return fn

    return deco


def _batch_users(run: Run) -> set[str]:
    return {str(u["address"]).lower() for u in run.users}


@register_check("reconciled")
def _reconciled(run: Run) -> CheckResult:
    """Every user of the batch reconciled: no folder differs between source and target."""
    rows = [
        r for r in commands.data_report(run.project) if str(r["user"]).lower() in _batch_users(run)
    ]
    off = [str(r["user"]) for r in rows if not r["reconciled"]]
    if not rows:
        return CheckResult(False, "no user of the batch has been reconciled yet")
    if off:
        return CheckResult(
            False, f"not reconciled: {', '.join(off)} (coexist status --user ADDRESS)", {"off": off}
        )
    return CheckResult(True, f"{len(rows)} users reconciled, no folder differs")


@register_check("no-failed-users")
def _no_failed(run: Run) -> CheckResult:
    """No user of the batch failed."""
    report = commands.status(run.project, batch=run.batch)
    failed = [r for r in report["users"] if r["state"] == "failed"]
    if failed:
        text = "; ".join(f"{r['user']}: {r['error']} (next: {r['next']})" for r in failed)
        return CheckResult(False, f"failed users: {text}", {"failed": [r["user"] for r in failed]})
    return CheckResult(True, f"no user of the {len(report['users'])} in the batch failed")


@register_check("mailflow", ("wait_s",), reads_only=False)
def _mailflow(run: Run, wait_s: float = 60.0) -> CheckResult:
    """`coexist verify-mailflow` for the batch: every probe landed where it should."""
    result = commands.verify_mailflow(run.project, batch=run.batch, wait_s=float(wait_s))
    bad = [p for p in result["probes"] if not p.get("ok")]
    if bad:
        return CheckResult(False, f"mail flow wrong for {len(bad)} probes", {"bad": bad})
    return CheckResult(True, f"mail flow as expected for {len(result['probes'])} probes")


@register_check("dns", ("domains", "expect_mx", "expect_autodiscover", "resolver"))
def _dns(run: Run, **args: Any) -> CheckResult:
    """`coexist check-dns` (coexist/dnscheck.py) for the project's domains (or `domains`),
    expecting the target's MX and autodiscover (or `expect_mx`, `expect_autodiscover`),
    through `resolver` or the project's [dns] resolver: the MX checkpoint of a cutover."""
    if isinstance(args.get("domains"), str):
        args["domains"] = [args["domains"]]
    out = dnscheck.run_check(run.project, **args)
    bad = [f for f in out.get("findings", []) if not f.get("ok")]
    text = "; ".join(
        f"{f.get('message')}" + (f" (fix: {f['fix']})" if f.get("fix") else "") for f in bad
    )
    if not out.get("ok"):
        return CheckResult(False, text, {"findings": out.get("findings", [])})
    names = ", ".join(out.get("domains", []))
    return CheckResult(True, f"DNS as expected for {names}", {"findings": out["findings"]})


# -- validation ----------------------------------------------------------------------------

STEP_KEYS: dict[str, set[str]] = {
    "command": {"command", "args"},
    "check": {"check", "args"},
    "manual": {"checklist"},
    "notify": {"to", "subject", "template"},
    "wait": {"until", "check", "args", "interval_s", "timeout_s"},
}
COMMON_KEYS = {"id", "kind", "title"}
NAMES = {"project", "batch", "users", "vars", "now"}


@dataclass(frozen=True)
class PlaybookStep:
    id: str
    kind: str
    title: str
    spec: Node
    line: int


@dataclass(frozen=True)
class Playbook:
    name: str
    file: Path
    description: str
    variables: Node
    steps: list[PlaybookStep]

    def step_ids(self) -> list[str]:
        return [s.id for s in self.steps]


def _env() -> SandboxedEnvironment:
    return SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)


def _strings(value: Any, path: str, node: Node | None, line: int) -> Iterator[tuple[str, str, int]]:
    """Every string in a value, with its dotted key and line."""
    if isinstance(value, str):
        yield path, value, line
    elif isinstance(value, dict):
        for k, v in value.items():
            sub_line = value.lines.get(k, line) if isinstance(value, Node) else line
            yield from _strings(
                v, f"{path}.{k}", value if isinstance(value, Node) else node, sub_line
            )
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]", node, line)


def load(file: Path) -> Playbook:
    """Read and check a playbook; `PlaybookError` (file, line, key) when anything is wrong."""
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read playbook {file}: {exc.strerror}") from exc
    try:
        doc = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise PlaybookError(file, (mark.line + 1) if mark else 1, "yaml", str(exc.problem)) from exc
    if not isinstance(doc, Node):
        raise PlaybookError(file, 1, "playbook", "must be a mapping with `steps`")
    unknown = set(doc) - {"name", "description", "variables", "steps"}
    for key in sorted(unknown):
        raise PlaybookError(file, doc.lines[key], key, "unknown key")
    if "steps" not in doc:
        raise PlaybookError(file, doc.line, "steps", "missing key")
    steps_raw = doc["steps"]
    if not isinstance(steps_raw, list) or not steps_raw:
        raise PlaybookError(file, doc.lines["steps"], "steps", "must be a non-empty list")
    variables = doc.get("variables") or Node()
    if not isinstance(variables, Node):
        raise PlaybookError(file, doc.lines["variables"], "variables", "must be a mapping")
    variables.lines = getattr(variables, "lines", {})
    steps: list[PlaybookStep] = []
    seen: set[str] = set()
    for n, raw in enumerate(steps_raw):
        where = f"steps[{n}]"
        if not isinstance(raw, Node):
            raise PlaybookError(file, doc.lines["steps"], where, "a step must be a mapping")
        for key in ("id", "kind"):
            if key not in raw:
                raise PlaybookError(file, raw.line, f"{where}.{key}", "missing key")
        sid, kind = str(raw["id"]), str(raw["kind"])
        where = f"steps[{sid}]"
        if sid in seen:
            raise PlaybookError(file, raw.lines["id"], f"{where}.id", "duplicate step id")
        seen.add(sid)
        if kind not in KINDS:
            raise PlaybookError(
                file,
                raw.lines["kind"],
                f"{where}.kind",
                f"unknown step kind {kind!r} ({', '.join(KINDS)})",
            )
        for key in raw:
            if key not in COMMON_KEYS | STEP_KEYS[kind]:
                raise PlaybookError(
                    file, raw.lines[key], f"{where}.{key}", f"unknown key for a {kind} step"
                )
        _check_step(file, where, kind, raw)
        steps.append(PlaybookStep(sid, kind, str(raw.get("title") or sid), raw, raw.line))
    name = str(doc.get("name") or file.stem)
    pb = Playbook(name, file, str(doc.get("description") or ""), variables, steps)
    _check_templates(pb)
    return pb


def _need(file: Path, where: str, raw: Node, key: str) -> Any:
    if key not in raw:
        raise PlaybookError(file, raw.line, f"{where}.{key}", "missing key")
    return raw[key]


def _args(file: Path, where: str, raw: Node) -> Node:
    args = raw.get("args") or Node()
    if not isinstance(args, dict):
        raise PlaybookError(file, raw.lines["args"], f"{where}.args", "must be a mapping")
    if not isinstance(args, Node):
        args = Node(args)
    args.lines = getattr(args, "lines", {})
    args.line = getattr(args, "line", raw.line)
    return args


def _check_step(file: Path, where: str, kind: str, raw: Node) -> None:
    if kind == "command":
        name = str(_need(file, where, raw, "command"))
        spec = COMMANDS.get(name)
        if spec is None:
            raise PlaybookError(
                file,
                raw.lines["command"],
                f"{where}.command",
                f"unknown command {name!r} ({', '.join(sorted(COMMANDS))})",
            )
        allowed = spec.arguments()
        for key in _args(file, where, raw):
            if key.replace("-", "_") not in allowed:
                raise PlaybookError(
                    file,
                    _args(file, where, raw).lines.get(key, raw.line),
                    f"{where}.args.{key}",
                    f"unknown argument of {name} ({', '.join(sorted(allowed)) or 'none'})",
                )
    elif kind == "check" or (kind == "wait" and "check" in raw):
        _check_kind(file, where, raw)
    elif kind == "manual":
        items = _need(file, where, raw, "checklist")
        if not isinstance(items, list) or not items:
            raise PlaybookError(
                file, raw.lines["checklist"], f"{where}.checklist", "must be a non-empty list"
            )
    elif kind == "notify":
        to = str(_need(file, where, raw, "to"))
        if to not in ("users", "operator"):
            raise PlaybookError(
                file, raw.lines["to"], f"{where}.to", "must be `users` or `operator`"
            )
        _need(file, where, raw, "template")
    if kind == "wait":
        if ("until" in raw) == ("check" in raw):
            raise PlaybookError(
                file, raw.line, f"{where}.until", "a wait needs `until` or `check` (one)"
            )
        for key in ("interval_s", "timeout_s"):
            if key in raw and (not isinstance(raw[key], int | float) or raw[key] <= 0):
                raise PlaybookError(
                    file, raw.lines[key], f"{where}.{key}", "must be a positive number"
                )


def _check_kind(file: Path, where: str, raw: Node) -> None:
    name = str(_need(file, where, raw, "check"))
    kind = CHECKS.get(name)
    if kind is None:
        raise PlaybookError(
            file,
            raw.lines["check"],
            f"{where}.check",
            f"unknown check {name!r} ({', '.join(sorted(CHECKS))})",
        )
    args = _args(file, where, raw)
    for key in args:
        if key not in kind.params:
            raise PlaybookError(
                file,
                args.lines.get(key, raw.line),
                f"{where}.args.{key}",
                f"unknown argument of check {name} ({', '.join(sorted(kind.params)) or 'none'})",
            )


def _check_templates(pb: Playbook) -> None:
    """Every template parses and names only variables a run provides."""
    env = _env()
    sources = list(_strings(pb.variables, "variables", pb.variables, 1))
    for step in pb.steps:
        sources += _strings(step.spec, f"steps[{step.id}]", step.spec, step.line)
    for key, text, line in sources:
        try:
            parsed = env.parse(text)
        except jinja2.TemplateSyntaxError as exc:
            raise PlaybookError(pb.file, line, key, f"bad template: {exc.message}") from exc
        allowed = NAMES | ({"user"} if ".template" in key or ".subject" in key else set())
        unknown = jinja2.meta.find_undeclared_variables(parsed) - allowed
        if unknown:
            raise PlaybookError(
                pb.file,
                line,
                key,
                f"template names {', '.join(sorted(unknown))}; known: {', '.join(sorted(allowed))}",
            )


# -- running -------------------------------------------------------------------------------


def step_key(pb: Playbook, batch: str, step: PlaybookStep) -> str:
    return f"playbook:{pb.name}:{batch}:{step.id}"


@dataclass
class Run:
    """One run of a playbook on a batch."""

    pb: Playbook
    project: Path
    batch: str
    plan: bool = False
    yes: bool = False
    say: Callable[[str], None] = lambda _m: None
    confirm: Callable[[str], bool] | None = None  # asks the operator; None: cannot ask
    progress: commands.Progress | None = None
    users: list[dict[str, Any]] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)

    def render(self, value: Any, key: str, line: int, **extra: Any) -> Any:
        """A step value with its templates rendered (StrictUndefined: a missing key stops
        the run before it starts, see `prepare`)."""
        if isinstance(value, str):
            try:
                return _env().from_string(value).render(**self.context, **extra)
            except jinja2.TemplateError as exc:
                raise PlaybookError(self.pb.file, line, key, f"template: {exc}") from exc
        if isinstance(value, dict):
            lines = value.lines if isinstance(value, Node) else {}
            return {
                k: self.render(v, f"{key}.{k}", lines.get(k, line), **extra)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.render(v, f"{key}[{i}]", line, **extra) for i, v in enumerate(value)]
        return value


def _user_vars(project: Path, batch: str) -> list[dict[str, Any]]:
    """The batch's users as templates see them: addresses, names, where they stand and
    what has been moved for them so far."""
    report = commands.status(project, batch=batch)
    moved = {str(r["user"]).lower(): r for r in commands.data_report(project)}
    users = []
    for r in report["users"]:
        data = moved.get(str(r["user"]).lower(), {})
        users.append(
            {
                "address": r["user"],
                "name": r.get("name") or r["user"],
                "target": r.get("target") or "",
                "phase": r.get("phase"),
                "state": r.get("state"),
                "items": data.get("items", 0),
                "bytes": data.get("bytes", 0),
                "reconciled": bool(data.get("reconciled")),
            }
        )
    return users


def _context(
    project: Path, batch: str, variables: Node
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    proj = load_project(project_dir(project))
    users = _user_vars(project, batch)
    context: dict[str, Any] = {
        "project": {
            "name": proj.project.name,
            "directory": str(proj.directory),
            "destination_domain": proj.domains.destination_domain or "",
            "source_kind": proj.source.kind,
            "target_kind": proj.target.kind,
        },
        "batch": {"name": batch, "size": len(users)},
        "users": users,
        "now": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    context["vars"] = {}
    return users, context


def prepare(pb: Playbook, project: Path, batch: str, **options: Any) -> Run:
    """A run with its variables; every template rendered once against them, so a missing
    key is an error before the first step."""
    run = Run(pb, project, batch, **options)
    run.users, run.context = _context(project, batch, pb.variables)
    run.context["vars"] = run.render(pb.variables, "variables", 1)
    blank = {"address": "", "name": "", "target": "", "phase": "", "state": ""}
    sample = run.users or [blank | {"items": 0, "bytes": 0, "reconciled": False}]
    for step in pb.steps:
        for key, value in step.spec.items():
            extra = {"user": sample[0]} if key in ("template", "subject") else {}
            run.render(
                value, f"steps[{step.id}].{key}", step.spec.lines.get(key, step.line), **extra
            )
    return run


@dataclass
class StepOutcome:
    id: str
    kind: str
    status: str  # ok | skipped (done before) | failed | waiting | planned
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "detail": self.detail,
            **self.data,
        }


class StepStopped(CoexistError):
    """A step that ends the run: a check that does not hold, a checklist not confirmed."""


def run_playbook(
    project: Path,
    name: str,
    *,
    batch: str,
    plan: bool = False,
    from_step: str | None = None,
    yes: bool = False,
    say: Callable[[str], None] = lambda _m: None,
    confirm: Callable[[str], bool] | None = None,
    progress: commands.Progress | None = None,
    extra_dir: Path | None = None,
) -> dict[str, Any]:
    """Run (or plan) playbook `name` on `batch`; see the module docstring."""
    pb = load(find(name, extra_dir))
    if from_step is not None and from_step not in pb.step_ids():
        raise InputError(
            f"--from {from_step}: no such step in {pb.name} ({', '.join(pb.step_ids())})",
            next_step=f"coexist playbook show {pb.name}",
        )
    run = prepare(
        pb, project, batch, plan=plan, yes=yes, say=say, confirm=confirm, progress=progress
    )
    steps = pb.steps
    if from_step is not None:
        steps = steps[pb.step_ids().index(from_step) :]
    outcomes: list[StepOutcome] = []
    journal = open_journal(load_project(project_dir(project)))
    if plan:
        # A plan writes nothing, so it takes no lock; it says when a run is under way, whose
        # steps may change what the plan shows.
        try:
            running = claims.holder_of(journal.engine, claims.playbook_scope(batch))
        finally:
            journal.close()
        if running is not None:
            say(f"note: a playbook run on batch {batch} is in progress: {running.describe()}")
        for step in steps:
            outcomes.append(_plan_step(run, step))
            say(f"plan  {step.id:28} {outcomes[-1].detail}")
        summary = _summary(pb, batch, plan, outcomes)
        summary["in_progress"] = running.to_dict() if running is not None else None
        return summary
    try:
        # Before the run is recorded: a refused run leaves the journal as it was.
        writer = _lock_batch(journal, pb, batch, project)
    except BaseException:
        journal.close()
        raise
    try:
        run_id = journal.start_run(
            RUN_COMMAND, {"playbook": pb.name, "batch": batch, "from": from_step}
        )
        writer.note_run(run_id)  # refusals name the run
    except BaseException:
        writer.close()
        journal.close()
        raise
    status = "failed"
    try:
        # The run's own step commands claim their batch beside its lock (`claims`).
        with _terminated_as_exit(), claims.acting_for(writer):
            for step in steps:
                outcome = _run_step(run, journal, run_id, step)
                outcomes.append(outcome)
                say(f"{outcome.status:8} {step.id:28} {outcome.detail}")
                if outcome.status in ("failed", "waiting"):
                    break
            else:
                status = "ok"
        if status != "ok" and outcomes:
            status = outcomes[-1].status
    finally:
        try:
            journal.finish_run(run_id, status)
        finally:
            writer.close()
            journal.close()
    return _summary(pb, batch, plan, outcomes)


def _lock_batch(journal: Journal, pb: Playbook, batch: str, project: Path) -> claims.Writer:
    """Hold the batch for the whole run, or raise `Busy` naming the run that holds it.

    The lock is on the batch, not on (playbook, batch): a migration engineer reads a batch
    as one wave that one runbook drives at a time, and two *different* playbooks on it at
    once interleave just as badly (a cutover night's cutover while the prestage wave still
    notifies and prestages; a rollback beside a cutover). Runs on other batches proceed.
    The step commands claim ``project`` / ``enqueue`` / their users under writers of their
    own as they run; the playbook scope does not conflict with those (`claims`), so the run
    never waits on itself. The lock covers the whole run, a queued step's wait for its
    jobs included.
    """
    scope = claims.playbook_scope(batch)
    try:
        return claims.Writer.open(
            journal.engine, f"playbook run {pb.name}", {scope: f"batch {batch}"}
        )
    except Busy as exc:
        holders = exc.fields.get("holders") or []
        # Named from the claim itself (a holder gone meanwhile: the refusal's own words).
        running = claims.holder_of(journal.engine, scope)
        if running is None and not any(h.get("playbook_batches") for h in holders):
            # An operator's command works on users of the batch (its `batch:` claim).
            raise Busy(
                f"playbook {pb.name} cannot run on batch {batch}: {exc.message}",
                next_step=exc.next_step,
                reason=exc.fields.get("reason"),
                holders=holders,
            ) from exc
        who = running.describe() if running is not None else exc.message
        dead = (
            "if that process is gone (killed, its host down), its lock went with it (a "
            "PostgreSQL journal notices a vanished host within about two minutes): just "
            "run this command again, there is nothing to clear"
        )
        raise Busy(
            f"playbook {pb.name} cannot run on batch {batch}: another playbook run holds "
            f"the batch: {who}",
            next_step=(
                f"wait for that run to end (`coexist status --batch {batch} --project "
                f"{project}` shows where its users stand; `coexist playbook run {pb.name} "
                f"--batch {batch} --plan` works meanwhile), then run this command again: "
                f"it starts at the first step not yet done; {dead}"
            ),
            holders=holders,
        ) from exc


@contextmanager
def _terminated_as_exit() -> Iterator[None]:
    """SIGTERM ends the run like Ctrl-C does: through the `finally` blocks, so the run is
    recorded as ended and the batch lock released at once (a SIGKILL leaves both to the
    next claim, which finds the lock's process gone: `coexist.journal.claims`)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers live in the main thread only
        return

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _summary(pb: Playbook, batch: str, plan: bool, outcomes: list[StepOutcome]) -> dict[str, Any]:
    stopped = next((o for o in outcomes if o.status in ("failed", "waiting")), None)
    return {
        "playbook": pb.name,
        "batch": batch,
        "plan": plan,
        "ok": stopped is None,
        "stopped_at": stopped.id if stopped else None,
        "steps": [o.to_dict() for o in outcomes],
        "next": (
            None
            if stopped is None
            else f"coexist playbook run {pb.name} --batch {batch}  (resumes at {stopped.id})"
        ),
    }


def _run_step(run: Run, journal: Journal, run_id: int, step: PlaybookStep) -> StepOutcome:
    key = step_key(run.pb, run.batch, step)
    prev = journal.get_step(key)
    if prev is not None and prev["status"] == "ok":
        return StepOutcome(step.id, step.kind, "skipped", "done by an earlier run")
    resumed = prev is not None and prev["status"] in ("started", "waiting")
    first_at = ((prev or {}).get("intent") or {}).get("first_started_at") if resumed else None
    first_at = first_at or dt.datetime.now(dt.UTC).isoformat()
    intent = {
        "playbook": run.pb.name,
        "batch": run.batch,
        "step": step.id,
        "kind": step.kind,
        "first_started_at": first_at,
        "resumed": resumed,
    }
    journal.step_started(
        run_id, key, item_kind=None, item_key=None, name=f"playbook.{step.kind}", intent=intent
    )
    try:
        outcome = _execute(run, step, first_at)
    except CoexistError as exc:
        journal.step_finished(
            key,
            status="failed",
            error_class=type(exc).__name__,
            error_message=str(exc),
            next_step=exc.next_step,
        )
        return StepOutcome(step.id, step.kind, "failed", str(exc), {"next": exc.next_step})
    journal.step_finished(
        key,
        status=outcome.status,
        changed=outcome.status == "ok",
        detail={"text": outcome.detail, **outcome.data},
        after=outcome.data or None,
    )
    return outcome


def _execute(run: Run, step: PlaybookStep, first_at: str) -> StepOutcome:
    spec = {k: v for k, v in step.spec.items() if k not in COMMON_KEYS}
    where = f"steps[{step.id}]"
    if step.kind == "command":
        return _command(run, step, run.render(spec.get("args") or {}, f"{where}.args", step.line))
    if step.kind == "check":
        result = _check(
            run, str(spec["check"]), run.render(spec.get("args") or {}, f"{where}.args", step.line)
        )
        return StepOutcome(
            step.id, step.kind, "ok" if result.ok else "failed", result.message, result.data
        )
    if step.kind == "manual":
        return _manual(run, step, run.render(spec["checklist"], f"{where}.checklist", step.line))
    if step.kind == "notify":
        # The figures a notice quotes are those of now, after the steps above.
        run.users = run.context["users"] = _user_vars(run.project, run.batch)
        notices = _notices(run, step)
        for n in notices:
            run.say(f"notice to {n['to']}: {n['subject']}\n{n['body']}")
        from coexist.notices import send_playbook_notices

        sent = send_playbook_notices(
            run.project, f"playbook-{run.pb.name}-{run.batch}-{step.id}", notices
        )
        if sent["not_sent"]:
            detail = f"{len(notices)} notices rendered, NOT sent: {sent['not_sent']}"
        else:
            detail = (
                f"{sent['sent']} notices sent, {sent['already']} sent before, "
                f"{len(sent['failed'])} refused"
            )
        return StepOutcome(
            step.id,
            step.kind,
            "failed" if sent["failed"] else "ok",
            detail,
            {"notices": notices, "sent": sent["notices"]},
        )
    return _wait(run, step, spec, first_at)


def _call_args(run: Run, name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    spec = COMMANDS[name]
    call = {k.replace("-", "_"): v for k, v in args.items()}
    params = inspect.signature(spec.fn).parameters
    if "batch" in params and "batch" not in call:
        call["batch"] = run.batch
    if "progress" in params and run.progress is not None:
        call["progress"] = run.progress
    if "wait" in params and "wait" not in call:
        # prestage, cutover, retry: with `[engine] executor = "queue"` they only enqueue
        # jobs; the playbook's next steps (checks, notices) need their data moved, so the
        # step follows its jobs to their end (`--wait`). Inline runs ignore it.
        call["wait"] = True
    return call


def _command(run: Run, step: PlaybookStep, args: Mapping[str, Any]) -> StepOutcome:
    name = str(step.spec["command"])
    spec = COMMANDS[name]
    result = spec.fn(run.project, **_call_args(run, name, args))
    failed = result.get("failed") or []
    waiting = result.get("waiting") or []
    data = {"command": name, "result": _brief(result)}
    if name in ("preflight",) and not result.get("ok", True):
        bad = [c for c in result.get("checks", []) if c.get("status") == "fail"]
        return StepOutcome(
            step.id, step.kind, "failed", f"preflight: {len(bad)} checks failed", data
        )
    if name == "verify-mailflow" and not result.get("ok"):
        return StepOutcome(
            step.id, step.kind, "failed", "verify-mailflow: a probe went astray", data
        )
    if failed:
        who = "; ".join(f"{f['user']}: {f['error']}" for f in failed)
        return StepOutcome(
            step.id, step.kind, "failed", f"{name}: {len(failed)} failed ({who})", data
        )
    if waiting:
        return StepOutcome(
            step.id,
            step.kind,
            "waiting",
            f"{name}: {len(waiting)} users waiting on the service (run again later)",
            data,
        )
    changed = result.get("changed")
    return StepOutcome(
        step.id,
        step.kind,
        "ok",
        f"{name} done" + (f", {changed} changed" if changed is not None else ""),
        data,
    )


def _brief(result: Mapping[str, Any]) -> dict[str, Any]:
    """The figures of a command's result worth keeping in the step record."""
    keep = (
        "changed",
        "would_change",
        "steps",
        "users",
        "ok",
        "mode",
        "failed",
        "waiting",
        "retried",
        "executor",  # queue mode: the jobs the step followed, and how they ended
        "jobs",
        "refused",  # retry: users of a batch another run holds, left to that run
    )
    return {k: result[k] for k in keep if k in result}


def _check(run: Run, name: str, args: Mapping[str, Any]) -> CheckResult:
    return CHECKS[name].fn(run, **args)


def _manual(run: Run, step: PlaybookStep, checklist: list[Any]) -> StepOutcome:
    lines = [str(c) for c in checklist]
    for line in lines:
        run.say(f"  [ ] {line}")
    if run.yes:
        return StepOutcome(
            step.id, step.kind, "ok", "confirmed by --yes (rehearsal)", {"checklist": lines}
        )
    if run.confirm is not None and run.confirm(f"{step.title}: every item above done?"):
        return StepOutcome(
            step.id, step.kind, "ok", "confirmed by the operator", {"checklist": lines}
        )
    return StepOutcome(
        step.id,
        step.kind,
        "waiting",
        "checklist not confirmed; run again when it is done",
        {"checklist": lines},
    )


def _notices(run: Run, step: PlaybookStep) -> list[dict[str, str]]:
    where = f"steps[{step.id}]"
    subject = step.spec.get("subject", step.title)
    to = step.spec["to"]
    line = step.spec.lines.get("template", step.line)
    if to == "operator":
        return [
            {
                "to": "operator",
                "subject": run.render(subject, f"{where}.subject", line),
                "body": run.render(step.spec["template"], f"{where}.template", line),
            }
        ]
    return [
        {
            "to": str(u["address"]),
            "subject": run.render(subject, f"{where}.subject", line, user=u),
            "body": run.render(step.spec["template"], f"{where}.template", line, user=u),
        }
        for u in run.users
    ]


def _wait(run: Run, step: PlaybookStep, spec: Mapping[str, Any], first_at: str) -> StepOutcome:
    """Until a time, or until a check holds; the timeout counts from the step's first start
    (kept in the journal), so a resumed wait does not start over."""
    where = f"steps[{step.id}]"
    interval = min(float(spec.get("interval_s", DEFAULT_POLL_S)), MAX_POLL_S)
    began = dt.datetime.fromisoformat(first_at)
    timeout = spec.get("timeout_s")
    deadline = began + dt.timedelta(seconds=float(timeout)) if timeout else None
    if "until" in spec:
        text = run.render(spec["until"], f"{where}.until", step.line)
        try:
            until = dt.datetime.fromisoformat(str(text))
        except ValueError as exc:
            raise PlaybookError(
                run.pb.file,
                step.spec.lines["until"],
                f"{where}.until",
                f"{text!r} is not an ISO 8601 time",
            ) from exc
        if until.tzinfo is None:
            until = until.replace(tzinfo=dt.UTC)
        deadline = until if deadline is None else min(deadline, until)
    args = run.render(spec.get("args") or {}, f"{where}.args", step.line)
    while True:
        now = dt.datetime.now(dt.UTC)
        if "check" in spec:
            result = _check(run, str(spec["check"]), args)
            if result.ok:
                return StepOutcome(
                    step.id, step.kind, "ok", f"{spec['check']} holds: {result.message}"
                )
            run.say(f"waiting for {spec['check']}: {result.message}")
        elif now >= until:
            return StepOutcome(step.id, step.kind, "ok", f"{until.isoformat()} reached")
        if deadline is not None and now >= deadline:
            return StepOutcome(
                step.id,
                step.kind,
                "waiting",
                f"still waiting after {timeout}s for {spec.get('check')}; run again to keep waiting",
            )
        pause = interval if deadline is None else min(interval, (deadline - now).total_seconds())
        time.sleep(max(0.0, pause))


def _plan_step(run: Run, step: PlaybookStep) -> StepOutcome:
    """What the step would do, with every write it would make; sends nothing, records nothing."""
    where = f"steps[{step.id}]"
    if step.kind == "command":
        name = str(step.spec["command"])
        spec = COMMANDS[name]
        args = run.render(step.spec.get("args") or {}, f"{where}.args", step.line)
        if not spec.plannable and not spec.reads_only:
            return StepOutcome(step.id, step.kind, "planned", f"{name}: would send {spec.sends}")
        call = _call_args(run, name, args)
        if spec.plannable:
            call["plan"] = True
        try:
            result = spec.fn(run.project, **call)
        except CoexistError as exc:
            # A later command planned before the earlier ones ran: say why, go on.
            return StepOutcome(
                step.id,
                step.kind,
                "planned",
                f"{name}: cannot be planned before the steps above run ({exc})",
            )
        writes = [w["text"] for w in result.get("writes", [])] if spec.plannable else []
        return StepOutcome(
            step.id, step.kind, "planned", f"{name}: {len(writes)} writes", {"writes": writes}
        )
    if step.kind in ("check", "wait") and "check" in step.spec:
        name = str(step.spec["check"])
        if not CHECKS[name].reads_only:
            return StepOutcome(step.id, step.kind, "planned", f"check {name}: would send probes")
        args = run.render(step.spec.get("args") or {}, f"{where}.args", step.line)
        result = _check(run, name, args)
        return StepOutcome(
            step.id,
            step.kind,
            "planned",
            f"check {name}: would {'pass' if result.ok else 'not pass'} now ({result.message})",
        )
    if step.kind == "manual":
        items = run.render(step.spec["checklist"], f"{where}.checklist", step.line)
        return StepOutcome(
            step.id,
            step.kind,
            "planned",
            f"checklist of {len(items)} to confirm",
            {"checklist": items},
        )
    if step.kind == "notify":
        notices = _notices(run, step)
        return StepOutcome(
            step.id, step.kind, "planned", f"{len(notices)} notices to render", {"notices": notices}
        )
    until = run.render(step.spec.get("until", ""), f"{where}.until", step.line)
    return StepOutcome(step.id, step.kind, "planned", f"wait until {until}")


def describe(pb: Playbook) -> list[dict[str, Any]]:
    """The steps as `playbook show` lists them."""
    out = []
    for s in pb.steps:
        what = {
            "command": lambda s: (
                f"coexist {s.spec['command']} "
                + " ".join(
                    f"--{k.replace('_', '-')} {v}" for k, v in (s.spec.get("args") or {}).items()
                )
            ),
            "check": lambda s: f"check {s.spec['check']}",
            "manual": lambda s: f"checklist of {len(s.spec['checklist'])}",
            "notify": lambda s: f"notice to {s.spec['to']}",
            "wait": lambda s: f"wait until {s.spec.get('until') or s.spec.get('check')}",
        }[s.kind](s)
        out.append(
            {"id": s.id, "kind": s.kind, "title": s.title, "what": what.strip(), "line": s.line}
        )
    return out
