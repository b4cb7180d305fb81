"""The runbook steps the IMAP and EWS demos share (cutover, status per folder, the re-run
that must copy 0): each demo keeps its own scenario, seed and verdict.

A demo's run object needs `project`, `say`, `progress` and `results` (the `DemoRun`
protocol); the steps record the items copied per user after the cutover in
`results["after_cutover"]`, which the re-run compares against.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from coexist import commands


class DemoRun(Protocol):
    """What the shared steps read of a demo's run (read-only: the runs are dataclasses,
    frozen or not)."""

    @property
    def project(self) -> Path: ...
    @property
    def say(self) -> Callable[[str], None]: ...
    @property
    def progress(self) -> commands.Progress | None: ...
    @property
    def results(self) -> dict[str, Any]: ...


def moved(project: Path, *, lower: bool = False) -> dict[str, int]:
    """Items copied so far per user (all passes); `lower`: addresses lowercased."""
    return {
        (str(r["user"]).lower() if lower else str(r["user"])): int(r["items"])
        for r in commands.data_report(project)
    }


def verify_credentials(run: DemoRun, batch: str, *, what: str) -> dict[str, Any]:
    """MigrationWiz's Verify Credentials: every mailbox of the batch opened, nothing moved;
    one line per user and side."""
    from coexist.credcheck import verify_credentials as verify

    run.say(f"verify-credentials ({what})")
    result = verify(run.project, batch=batch)
    for user in result.get("users", []):
        sides = (
            f"{side} {user[side]['result']} ({user[side]['mailbox']})"
            + (f": {user[side]['message']}" if user[side].get("message") else "")
            for side in ("source", "target")
        )
        run.say(f"  {user['user']}: " + ", ".join(sides))
    return result


def prestage(run: DemoRun, batch: str, older_than: str, *, lower: bool = False) -> dict[str, Any]:
    """Pre-stage the mail older than `older_than`, waited out."""
    run.say(f"prestage --older-than {older_than} (old mail while users keep working)")
    result = commands.prestage(
        run.project, batch=batch, older_than=older_than, progress=run.progress
    )
    result["waited"] = commands.wait_out(
        run.project, bound_s=300, say=run.say, progress=run.progress
    )
    run.results["after_prestage"] = moved(run.project, lower=lower)
    return result


def cutover(run: DemoRun, batch: str, *, what: str, lower: bool = False) -> dict[str, Any]:
    """The full pass (`what` says what it carries), waited out."""
    run.say(f"cutover (the full pass: everything not copied yet, and {what})")
    result = commands.cutover(run.project, batch=batch, progress=run.progress)
    result["waited"] = commands.wait_out(
        run.project, bound_s=300, say=run.say, progress=run.progress
    )
    run.results["after_cutover"] = moved(run.project, lower=lower)
    return result


def status(run: DemoRun, *, what: str) -> dict[str, Any]:
    """The status table, and each user's per-folder reconciliation."""
    run.say(f"status ({what})")
    report = commands.status(run.project)
    report["folders"] = {
        str(u["user"]): (
            commands.status(run.project, user=str(u["user"]))["users"][0].get("reconciliation")
            or {}
        ).get("folders", [])
        for u in report["users"]
    }
    return report


def again(run: DemoRun, batch: str, *, lower: bool = False) -> dict[str, Any]:
    """A re-run copies nothing: cutover once more, items moved before and after."""
    run.say("cutover again (a re-run must copy 0)")
    result = commands.cutover(run.project, batch=batch, progress=run.progress)
    after = moved(run.project, lower=lower)
    result["copied"] = {
        user: after.get(user, 0) - run.results["after_cutover"].get(user, 0) for user in after
    }
    return result
