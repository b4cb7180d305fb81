"""Steps are data; executors are registered.

A step is a frozen dataclass naming *what* should be true (e.g. "a MailUser for
source user X exists in the target with these addresses"). Its `key` is stable
across runs (`provision.mailuser:<source object id>`), so the journal can tell
a re-run from a first run. The *how* lives in an `Executor` registered for the
step's type: `observe` reads live state and never writes; `apply` makes it right
only where it differs and returns a `StepResult`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

ResultStatus = Literal["ok", "waiting"]


@dataclass(frozen=True)
class Step:
    """Base of every step. Subclasses are frozen dataclasses and set `name`."""

    name: ClassVar[str] = "step"
    item_kind: ClassVar[str] = "user"

    subject: str  # the item key: source object id (user or group)

    @property
    def key(self) -> str:
        return f"{self.name}:{self.subject}"

    def intent(self) -> dict[str, Any]:
        """What the step wants to be true, as recorded in the journal before it runs."""
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


@dataclass(frozen=True)
class StepResult:
    """What a step found and did.

    `status` "waiting" means the step did what it could and the world must catch
    up (a licensed mailbox still provisioning, an operator confirmation): it is
    not a failure and re-running continues it. With `recheck` the world catches up
    by itself (Microsoft 365 provisioning, replication): the runner records when to
    look again, and runs before then report the step as still waiting without
    touching the tenants. Without it the wait is for an operator (a match to
    confirm, a mover to configure) and every run looks again.
    """

    changed: bool
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    detail: str = ""
    status: ResultStatus = "ok"
    data: dict[str, Any] = field(default_factory=dict)  # facts for the item record
    recheck: bool = False


S = TypeVar("S", bound=Step)
S_contra = TypeVar("S_contra", bound=Step, contravariant=True)


class Executor(Protocol[S_contra]):
    """observe → compare → apply for one step type."""

    async def observe(self, ctx: Any, step: S_contra) -> Any: ...

    async def apply(self, ctx: Any, step: S_contra, observed: Any) -> StepResult: ...


class Registry(Generic[S]):
    """Maps step types to their executors."""

    def __init__(self) -> None:
        self._executors: dict[type[Step], Executor[Any]] = {}

    def register(self, step_type: type[Step]) -> Callable[[type[Any]], type[Any]]:
        def deco(cls: type[Any]) -> type[Any]:
            if step_type in self._executors:
                raise ValueError(f"executor for {step_type.__name__} registered twice")
            self._executors[step_type] = cls()
            return cls

        return deco

    def executor_for(self, step: Step) -> Executor[Any]:
        try:
            return self._executors[type(step)]
        except KeyError:
            raise LookupError(f"no executor registered for {type(step).__name__}") from None


registry: Registry[Step] = Registry()
