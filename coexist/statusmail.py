"""Status mail to operators at a batch's data passes (audriga's "status at start and end").

`[mail] status` says when: ``none`` (default: nothing is sent), ``end`` (when the command's
passes end) or ``start-end``; `[mail] operators` says to whom. `prestage` and `cutover` (and
so `retry`, which runs them for its users) call `started` before their users' passes and
`ended` after: the start mail names the users and the pass; the end mail has the counts
(users ok / failed / waiting, passes by status, items and bytes copied in this run) and the
`coexist report` of the batch attached as HTML and CSV.

A status mail is a side note to the pass: a send that fails (relay down, refused, no
settings) is logged as a warning and journaled as a warning event of the run, and the
command goes on. In plan mode the mail is built and shown as a planned write, never sent.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from coexist import mailer
from coexist.errors import CoexistError, redact
from coexist.migrate.summary import human_bytes

log = logging.getLogger(__name__)

WHEN = {"none": (), "end": ("end",), "start-end": ("start", "end")}


def _scope(batch: str | Path | None, users: Sequence[Mapping[str, Any]]) -> str:
    if batch is not None:
        return f"batch {Path(str(batch)).stem if Path(str(batch)).is_file() else batch}"
    return f"{len(users)} users"


def _wanted(sess: Any, moment: str) -> bool:
    mail = sess.project.mail
    return bool(mail.operators) and moment in WHEN.get(mail.status, ())


async def started(
    sess: Any, command: str, batch: str | Path | None, users: Sequence[Mapping[str, Any]]
) -> dict[str, Any] | None:
    """The start mail (`[mail] status = "start-end"`); what was sent, or None."""
    if not _wanted(sess, "start"):
        return None
    scope = _scope(batch, users)
    names = [str(u.get("source_address") or u.get("key")) for u in users]
    text = "\n".join(
        [
            f"coexist {command} started for {scope} of project {sess.project.project.name}.",
            f"{len(users)} users: " + ", ".join(names[:50]) + (" ..." if len(names) > 50 else ""),
            "",
            "A mail with the counts and the report follows when the passes end.",
        ]
    )
    subject = f"coexist {command} started: {sess.project.project.name} {scope}, {len(users)} users"
    return await _send(sess, command, "start", subject, text, [])


def _run_counts(sess: Any, users: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """This run's passes of `users` and the users' outcomes (the last step of each)."""
    run_id = sess.runner.run_id
    passes: Counter[str] = Counter()
    copied = size = 0
    for u in users:
        for p in sess.journal.passes(str(u["key"])):
            if run_id is not None and p.get("run_id") == run_id:
                passes[str(p["status"])] += 1
                counts = p.get("counts") or {}
                copied += int(counts.get("copied", 0)) + int(counts.get("updated", 0))
                size += int(counts.get("bytes", 0))
    last: dict[str, str] = {}
    for o in sess.outcomes:
        last[o.subject] = o.status
    return {
        "users": len(users),
        "outcomes": dict(Counter(last.values())),
        "passes": dict(passes),
        "items": copied,
        "bytes": size,
    }


async def ended(
    sess: Any,
    command: str,
    batch: str | Path | None,
    users: Sequence[Mapping[str, Any]],
    result: dict[str, Any],
) -> dict[str, Any]:
    """The end mail (`[mail] status` = "end" or "start-end"); `result` with what was sent
    under `status_mail`."""
    if not _wanted(sess, "end"):
        return result
    scope = _scope(batch, users)
    c = _run_counts(sess, users)
    outcomes = ", ".join(f"{n} {k}" for k, n in sorted(c["outcomes"].items())) or "nothing run"
    passes = ", ".join(f"{n} {k}" for k, n in sorted(c["passes"].items())) or "none"
    lines = [
        f"coexist {command} ended for {scope} of project {sess.project.project.name}.",
        f"{c['users']} users: {outcomes}",
        f"passes this run: {passes}",
        f"{c['items']:,} items, {human_bytes(c['bytes'])} copied this run",
    ]
    for f in result.get("failed") or []:
        lines.append(
            f"failed: {f['user']}: {f['error']}"
            + (f" (next: {f['next']})" if f.get("next") else "")
        )
    for w in result.get("waiting") or []:
        lines.append(f"waiting: {w['user']}: {w['detail']}")
    attachments, note = _report(sess, batch)
    lines += ["", note]
    subject = (
        f"coexist {command} ended: {sess.project.project.name} {scope}, {outcomes}, "
        f"{c['items']:,} items"
    )
    sent = await _send(sess, command, "end", subject, "\n".join(lines) + "\n", attachments)
    out = {**result, "status_mail": sent, "status_counts": c}
    if sess.planning:  # the plan's writes, with the end mail it would send
        out["writes"] = sess.planned_writes()
    return out


def _report(sess: Any, batch: str | Path | None) -> tuple[list[tuple[str, str, bytes]], str]:
    """The batch's report as attachments, or why it is not attached."""
    from coexist import report

    name = str(batch) if batch is not None and not Path(str(batch)).is_file() else None
    try:
        rep = report.build(sess.project.directory, batch=name)
    except CoexistError as exc:
        return [], f"report not attached: {exc.message}"
    stem = f"coexist-report-{rep['project']}" + (f"-{name}" if name else "")
    return (
        [
            (f"{stem}.html", "html", report.to_html(rep).encode()),
            (f"{stem}.csv", "csv", report.to_csv(rep).encode()),
        ],
        f"The report ({'batch ' + name if name else 'whole project'}) is attached: {stem}.html",
    )


async def _send(
    sess: Any,
    command: str,
    moment: str,
    subject: str,
    text: str,
    attachments: list[tuple[str, str, bytes]],
) -> dict[str, Any] | None:
    operators = list(sess.project.mail.operators)
    try:
        outbox = mailer.outbox_in(sess.project, sess.ctx, sess.recorder)
        msg: EmailMessage = mailer.new_message(outbox.sender, operators, subject, text)
        for filename, subtype, data in attachments:
            msg.add_attachment(data, maintype="text", subtype=subtype, filename=filename)
        sent = await outbox.send(msg)
    except Exception as exc:  # a side note to the pass: never what fails it
        said = exc.message if isinstance(exc, CoexistError) else f"{type(exc).__name__}: {exc}"
        _warn(sess, f"status mail ({command} {moment}) not sent: {said}")
        return {"moment": moment, "sent": False, "error": redact(said)}
    if sent.refused:
        _warn(sess, f"status mail ({command} {moment}): refused {', '.join(sent.refused)}")
    elif not sess.planning:
        sess.journal.event(
            sess.runner.run_id,
            "info",
            f"status mail ({command} {moment}) sent to {', '.join(sent.to)} via {sent.via}",
        )
    return {"moment": moment, "sent": not sess.planning and bool(sent.to), **sent.to_dict()}


def _warn(sess: Any, text: str) -> None:
    log.warning("%s", text)
    if not sess.planning:
        sess.journal.event(sess.runner.run_id, "warning", text)
