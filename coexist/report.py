"""`coexist report`: the project's statistics to hand a customer (MigrationWiz's "Request
statistics"), as one self-contained HTML file, JSON or CSV, and by e-mail.

Everything comes from the journal, read the way `coexist status` reads it: each user's row is
`commands.status`'s (phase, state, last step, error and the command to run next), its data
totals are `commands.data_report`'s (items, bytes, GB/h over the passes that copied them),
and what only the report shows is read here from the same records: each data pass, the
skipped items with their reasons and the last per-folder reconciliation (item detail
`reconciliation`, written by `migrate.reconcile`). The three formats carry the same numbers;
people read addresses and display names, the journal's ids are only in JSON (`id`).

The HTML has no script, no external font, style sheet or image: a Content-Security-Policy
meta tag (`default-src 'none'`) makes a browser refuse any request the file would make, the
throughput chart is inline SVG, and everything from the journal is escaped (jinja2
autoescape; StrictUndefined makes a missing field an error, not an empty cell).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import jinja2

from coexist import commands, mailer
from coexist.files import write_failed, write_private
from coexist.migrate.summary import human_bytes
from coexist.runtime import open_journal, project_dir
from coexist.settings import load_project

# The HTML's policy: nothing may be fetched; inline styles only; images only as data: URLs.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("coexist", "templates"),
    autoescape=True,  # journal text (names, subjects, reasons, errors) is data, never markup
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def build(directory: Path | None = None, *, batch: str | None = None) -> dict[str, Any]:
    """The report of the project (or one batch): users, batches, project totals, throughput."""
    where = project_dir(directory)
    shown = commands.status(where, batch=batch)  # raises on a batch without users
    data = {r["user"]: r for r in commands.data_report(where)}
    project = load_project(where)
    journal = open_journal(project)
    try:
        items = {
            str(i.get("source_address")): i
            for i in journal.items(kind="user", batch=batch)
            if (i.get("detail") or {}).get("in_scope", True)
        }
        passes = commands.passes_by_user(journal)
    finally:
        journal.close()
    users = []
    all_passes: list[dict[str, Any]] = []
    for row in shown["users"]:
        item = items.get(str(row["user"]))
        if item is None:  # out of scope: no data, nothing to report on
            continue
        mine = passes.get(str(item["key"]), [])
        all_passes += mine
        users.append(_user(row, item, mine, data.get(row["user"]) or {}))
    batches = []
    for name in sorted({str(u["batch"] or "") for u in users}):
        members = [u for u in users if str(u["batch"] or "") == name]
        keys = {u["id"] for u in members}
        batches.append(
            {
                "batch": name or None,
                **_totals(members, [p for p in all_passes if p["item_key"] in keys]),
            }
        )
    return {
        "project": project.project.name,
        "directory": str(where),
        "batch": batch,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mover": project.migration.mover,
        "data_scope": shown.get("data_scope"),
        "totals": _totals(users, all_passes),
        "batches": batches,
        "users": users,
        # Groups belong to no batch: status lists them for the whole project only.
        "groups": [
            {k: g.get(k) for k in ("group", "kind", "target", "state", "unmapped_members")}
            | {"error": g.get("error"), "next": g.get("next"), "waiting_for": g.get("waiting_for")}
            for g in shown["groups"]
        ],
        "throughput": throughput(all_passes),
    }


def _seconds(p: Mapping[str, Any]) -> float:
    if not p.get("finished_at"):
        return 0.0
    return float((p["finished_at"] - p["started_at"]).total_seconds())


def gb_per_hour(size: int, seconds: float) -> float:
    """Decimal GB per hour, rounded as `commands.data_report` rounds it."""
    return round(size / 1e9 / (seconds / 3600), 3) if seconds else 0.0


def _pass(p: Mapping[str, Any]) -> dict[str, Any]:
    counts = p.get("counts") or {}
    seconds = _seconds(p)
    size = int(counts.get("bytes", 0))
    return {
        "kind": p["kind"],
        "status": p["status"],
        "started_at": _iso(p.get("started_at")),
        "finished_at": _iso(p.get("finished_at")),
        "seconds": round(seconds, 3),
        "items": int(counts.get("copied", 0)),
        "updated": int(counts.get("updated", 0)),
        "skipped": int(counts.get("skipped", 0)),
        "bytes": size,
        "gb_per_hour": gb_per_hour(size, seconds if size else 0.0),
    }


def _iso(value: Any) -> str | None:
    return value.isoformat(timespec="seconds") if isinstance(value, dt.datetime) else None


def _user(
    row: Mapping[str, Any],
    item: Mapping[str, Any],
    passes: list[dict[str, Any]],
    data: Mapping[str, Any],
) -> dict[str, Any]:
    recon = (item.get("detail") or {}).get("reconciliation") or {}
    skipped_items = [
        {"folder": s.get("folder"), "subject": s.get("subject"), "reason": s.get("reason")}
        for s in recon.get("skipped_items") or []
    ]
    reasons = Counter(str(s["reason"] or "no reason recorded") for s in skipped_items)
    # Copied without part of their state (the replied/forwarded state the target refused
    # or ignored, sync.NOT_KEPT): not skipped, listed as skipped items are.
    not_kept_items = [
        {"folder": s.get("folder"), "subject": s.get("subject"), "reason": s.get("reason")}
        for s in recon.get("not_kept_items") or []
    ]
    folders = [
        {
            "folder": ", ".join(f.get("source_folders") or []),
            "source_items": int(f.get("source_items") or 0),
            "target_items": int(f.get("target_items") or 0),
            "skipped": int(f.get("skipped") or 0),
            "pending": int(f.get("pending") or 0),
            "deleted_at_source": int(f.get("deleted_at_source") or 0),
            "arrived_in_target": int(f.get("arrived_in_target") or 0),
            "difference": int(f.get("difference") or 0),
        }
        for f in recon.get("folders") or []
    ]
    return {
        "id": str(item["key"]),  # JSON only: people read the addresses
        "user": row["user"],
        "name": row.get("name"),
        "target": row.get("target"),
        "batch": row.get("batch"),
        "phase": row.get("phase"),
        "state": row.get("state"),
        "last_step": row.get("last_step"),
        "progress": row.get("progress"),
        "waiting_for": row.get("waiting_for"),
        "error": row.get("error"),
        "next": row.get("next"),
        "passes": [_pass(p) for p in passes],
        "items": int(data.get("items", 0)),
        "bytes": int(data.get("bytes", 0)),
        "seconds": float(data.get("seconds", 0.0)),
        "gb_per_hour": float(data.get("gb_per_hour", 0.0)),
        "skipped": len(skipped_items),
        "skipped_reasons": [{"reason": r, "items": n} for r, n in reasons.most_common()],
        "skipped_items": skipped_items,
        "not_kept": len(not_kept_items),
        "not_kept_items": not_kept_items,
        "reconciled": bool(recon) and recon.get("unexplained") == 0,
        "unexplained": recon.get("unexplained"),
        "folders": folders,
    }


def _totals(users: list[dict[str, Any]], passes: list[dict[str, Any]]) -> dict[str, Any]:
    """Sums over users; GB/h two ways: per mailbox (bytes over the summed pass time, as per
    user) and for the whole (bytes over the wall-clock span from the first pass's start to
    the last one's end, passes running side by side)."""
    size = sum(u["bytes"] for u in users)
    seconds = sum(u["seconds"] for u in users)
    ended = [p for p in passes if p.get("finished_at")]
    wall = (
        (max(p["finished_at"] for p in ended) - min(p["started_at"] for p in ended)).total_seconds()
        if ended
        else 0.0
    )
    return {
        "users": len(users),
        "by_phase_state": dict(
            sorted(Counter(f"{u['phase']}/{u['state']}" for u in users).items())
        ),
        "passes": len(passes),
        "items": sum(u["items"] for u in users),
        "bytes": size,
        "seconds": round(seconds, 3),
        "gb_per_hour": gb_per_hour(size, seconds),
        "wall_seconds": round(wall, 3),
        "wall_gb_per_hour": gb_per_hour(size, wall),
        "skipped": sum(u["skipped"] for u in users),
        "not_kept": sum(u["not_kept"] for u in users),
        "unexplained": sum(int(u["unexplained"] or 0) for u in users),
        "reconciled": sum(1 for u in users if u["reconciled"]),
        "errors": sum(1 for u in users if u["error"]),
    }


# Bucket widths the chart picks from: the first giving at most MAX_BUCKETS over the span.
_WIDTHS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
MAX_BUCKETS = 48


def throughput(passes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Bytes and items copied per time bucket over the project's passes.

    A pass's copy is spread evenly over its duration (the journal keeps a pass's totals,
    not when each item went), so a long pass shows as a steady rate, not a spike at its end.
    """
    ended = [p for p in passes if p.get("finished_at") and (p.get("counts") or {}).get("bytes")]
    if not ended:
        return {"start": None, "bucket_seconds": 0, "buckets": []}
    start = min(p["started_at"] for p in ended)
    end = max(p["finished_at"] for p in ended)
    span = max(1.0, (end - start).total_seconds())
    width = next((w for w in _WIDTHS_S if span / w <= MAX_BUCKETS), _WIDTHS_S[-1])
    start = dt.datetime.fromtimestamp(
        math.floor(start.timestamp() / width) * width, tz=start.tzinfo or dt.UTC
    )
    count = max(1, math.ceil((end - start).total_seconds() / width))
    size = [0.0] * count
    moved = [0.0] * count
    for p in ended:
        counts = p["counts"]
        a = (p["started_at"] - start).total_seconds()
        b = (p["finished_at"] - start).total_seconds()
        for i in range(int(a // width), min(count, int(b // width) + 1)):
            lo, hi = max(a, i * width), min(b, (i + 1) * width)
            share = (hi - lo) / (b - a) if b > a else 1.0
            if share > 0 or b == a:
                size[i] += int(counts.get("bytes", 0)) * share
                moved[i] += int(counts.get("copied", 0)) * share
    return {
        "start": start.isoformat(timespec="seconds"),
        "bucket_seconds": width,
        "buckets": [
            {
                "at": (start + dt.timedelta(seconds=i * width)).isoformat(timespec="seconds"),
                "bytes": round(size[i]),
                "items": round(moved[i]),
                "gb_per_hour": gb_per_hour(round(size[i]), width),
            }
            for i in range(count)
        ],
    }


# -- formats -----------------------------------------------------------------------------
def to_json(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=2, default=str) + "\n"


# A user's passes per kind in the CSV (journal PASS_KINDS), in the order they run.
PASS_ORDER = ("trial", "prestage", "cutover")
CSV_COLUMNS = (
    "scope",
    "batch",
    "user",
    "name",
    "target",
    "phase",
    "state",
    "last_step",
    "users",
    "passes",
    "items",
    "bytes",
    "seconds",
    "gb_per_hour",
    "wall_gb_per_hour",
    *(f"{kind}_{what}" for kind in PASS_ORDER for what in ("items", "bytes")),
    "skipped",
    "skipped_reasons",
    "reconciled",
    "unexplained",
    "errors",
    "error",
    "next",
)


def to_csv(report: Mapping[str, Any]) -> str:
    """One row per user, per group (scope `group`, its name in `name`), then one per batch
    (scope `batch`) and the project (`project`);
    `reconciled` and `errors` count users (1 or 0 on a user's row)."""
    buf = io.StringIO()
    out = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    out.writeheader()
    for u in report["users"]:
        per_kind: Counter[str] = Counter()
        for p in u["passes"]:
            per_kind[f"{p['kind']}_items"] += p["items"]
            per_kind[f"{p['kind']}_bytes"] += p["bytes"]
        out.writerow(
            {
                "scope": "user",
                **{k: u[k] for k in ("batch", "user", "name", "target", "phase", "state")},
                "last_step": u["last_step"],
                "users": 1,
                "passes": len(u["passes"]),
                **{k: u[k] for k in ("items", "bytes", "seconds", "gb_per_hour", "skipped")},
                **{k: per_kind[k] for k in CSV_COLUMNS if k.startswith(PASS_ORDER)},
                "skipped_reasons": "; ".join(
                    f"{r['items']} × {r['reason']}" for r in u["skipped_reasons"]
                ),
                "reconciled": int(u["reconciled"]),  # users reconciled, as in the totals
                "unexplained": u["unexplained"],
                "errors": int(bool(u["error"])),
                "error": u["error"],
                "next": u["next"],
            }
        )
    for g in report["groups"]:
        out.writerow(
            {
                "scope": "group",
                "name": g["group"],
                "target": g["target"],
                "state": g["state"],
                "errors": int(bool(g["error"])),
                "error": g["error"],
                "next": g["next"],
            }
        )
    rows = [("batch", b["batch"], b) for b in report["batches"]]
    for scope, batch, t in [*rows, ("project", report["batch"], report["totals"])]:
        out.writerow(
            {
                "scope": scope,
                "batch": batch,
                **{k: t[k] for k in ("users", "passes", "items", "bytes", "seconds")},
                **{k: t[k] for k in ("gb_per_hour", "wall_gb_per_hour", "skipped")},
                **{k: t[k] for k in ("unexplained", "reconciled", "errors")},
            }
        )
    return buf.getvalue()


# The chart's drawing area (SVG user units) and margins for the axis labels.
_W, _H, _LEFT, _BOTTOM, _TOP = 720, 220, 70, 30, 10


def chart(flow: Mapping[str, Any]) -> dict[str, Any]:
    """The throughput chart's geometry: one bar per bucket, heights in MB/GB per bucket."""
    buckets = flow["buckets"]
    peak = max((b["bytes"] for b in buckets), default=0)
    if not buckets or not peak:
        return {"bars": [], "width": _W, "height": _H}
    inner_w, inner_h = _W - _LEFT - 10, _H - _BOTTOM - _TOP
    step = inner_w / len(buckets)
    bars = []
    for i, b in enumerate(buckets):
        h = inner_h * b["bytes"] / peak
        bars.append(
            {
                "x": round(_LEFT + i * step + step * 0.1, 2),
                "y": round(_TOP + inner_h - h, 2),
                "w": round(step * 0.8, 2),
                "h": round(h, 2),
                "title": f"{b['at']}: {human_bytes(b['bytes'])}, {b['items']:,} items "
                f"({b['gb_per_hour']:.3f} GB/h)",
            }
        )
    ticks = [
        {"y": round(_TOP + inner_h * (1 - f), 2), "label": human_bytes(round(peak * f))}
        for f in (0.0, 0.5, 1.0)
    ]
    first, last = buckets[0]["at"], buckets[-1]["at"]
    return {
        "bars": bars,
        "width": _W,
        "height": _H,
        "left": _LEFT,
        "base": _TOP + inner_h,
        "ticks": ticks,
        "first": _when(first),
        "last": _when(last),
        "per": _width_text(int(flow["bucket_seconds"])),
    }


def _when(iso: str | None) -> str:
    """An ISO time of the report (always UTC) as people read it: `2026-12-05 04:22:46`."""
    return (iso or "").replace("T", " ").removesuffix("+00:00")


def _width_text(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


# Skipped items listed one by one per user in the HTML (all are counted by reason, and
# listed in the JSON): a mailbox with thousands would bury the rest of the report.
SKIPPED_SHOWN = 100


def to_html(report: Mapping[str, Any]) -> str:
    template = _TEMPLATES.get_template("report.html.j2")
    return template.render(
        r=report,
        csp=CSP,
        chart=chart(report["throughput"]),
        human_bytes=human_bytes,
        when=_when,
        skipped_shown=SKIPPED_SHOWN,
    )


def text_lines(report: Mapping[str, Any]) -> list[str]:
    """A short plain summary (the terminal's and the e-mail's text part)."""
    t = report["totals"]
    scope = f"batch {report['batch']}" if report["batch"] else "all batches"
    lines = [
        f"coexist report: project {report['project']} ({scope}), {report['generated_at']}",
        f"{t['users']} users"
        + (": " if t["by_phase_state"] else "")
        + ", ".join(f"{n} {k}" for k, n in t["by_phase_state"].items()),
        f"{t['items']:,} items, {human_bytes(t['bytes'])} copied in {t['passes']} passes; "
        f"{t['gb_per_hour']:.3f} GB/h per mailbox, {t['wall_gb_per_hour']:.3f} GB/h overall",
        f"{t['skipped']} items skipped; {t['reconciled']} of {t['users']} users reconciled"
        + (f", {t['unexplained']} items unexplained" if t["unexplained"] else ""),
    ]
    for u in report["users"]:
        if u["error"]:
            lines.append(
                f"error: {u['user']}: {u['error']}" + (f" (next: {u['next']})" if u["next"] else "")
            )
    return lines


# -- e-mail ------------------------------------------------------------------------------
# The relay and its settings are the mailer's (coexist/mailer.py); the report is sent through
# the SMTP relay from the environment (a password never sits in project.toml).
smtp_settings = mailer.smtp_settings


def message(report: Mapping[str, Any], to: list[str], sender: str) -> EmailMessage:
    """The report as mail: a text summary, the HTML report as the HTML part, and the HTML
    and CSV reports attached (a mail client may strip inline SVG; the file keeps it)."""
    scope = f" batch {report['batch']}" if report["batch"] else ""
    t = report["totals"]
    msg = mailer.new_message(
        sender,
        to,
        f"coexist report: {report['project']}{scope}: {t['users']} users, "
        f"{t['items']:,} items, {human_bytes(t['bytes'])}",
        "\n".join(text_lines(report)) + "\n",
    )
    html = to_html(report)
    msg.add_alternative(html, subtype="html")
    stem = f"coexist-report-{report['project']}" + (
        f"-{report['batch']}" if report["batch"] else ""
    )
    msg.add_attachment(html.encode(), maintype="text", subtype="html", filename=f"{stem}.html")
    msg.add_attachment(
        to_csv(report).encode(), maintype="text", subtype="csv", filename=f"{stem}.csv"
    )
    return msg


def send(
    report: Mapping[str, Any], to: list[str], env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Send the report through the relay (`mailer.smtp_settings`); TLS is verified against
    the system's CAs (and COEXIST_SMTP_CA_FILE's). Returns what was sent, never the password."""
    relay = mailer.SmtpRelay(mailer.smtp_settings(env))
    sent = relay.send_now(message(report, to, relay.sender))
    return {
        "to": sent.to,
        "refused": sent.refused,
        "relay": f"{relay.cfg['host']}:{relay.cfg['port']}",
        "security": relay.cfg["security"],
        "subject": sent.subject,
    }


def write_html(report: Mapping[str, Any], path: Path) -> Path:
    """Write the HTML report (owner-only, as every file coexist writes: it names people)."""
    try:
        return write_private(path, to_html(report))
    except OSError as exc:
        raise write_failed(path, exc, next_step="--html PATH in a writable directory") from None
