"""EWS -> EWS throughput under the sandbox's EWS budget, Graph -> WorkMail, and memory.

Prints one JSON object. Every part starts its own sandbox (in this process) and moves mail
with the product's CLI in a child process (`coexist prestage --all --json`, no date
window: the whole mailbox), on a project written as an operator would (`[S.ews]`, the
migration account's password in the vault by `credentials set --master`, users from a
batch file) — the same wiring `coexist demo --scenario hosted-exchange` uses
(`coexist/ewsdemo.py`).

1. `ews_to_ews`: Exchange 2016 -> Exchange 2019 (ews-sync, ExportItems -> UploadItems),
   MAILBOXES mailboxes of ITEMS messages of ~8 KB, sandbox profile `published` at
   `--time-scale` TIME_SCALE with the budget buckets drained at the start (`drained`), once
   with delegation (the migration account's FullAccess: one budget for every mailbox it
   opens) and once with impersonation (ApplicationImpersonation: one budget per
   impersonated mailbox). Rates are the journal's copies (all mailboxes together) over the
   passes' span (first start to last finish), the window in which every charge fell.
   `ews_budget_fraction` = achieved items/s over the budget's ceiling in items/s, computed
   from the face's budget parameters: each budget key recharges at `Limiter.ceiling_per_s(
   "ews_budget")` ms/s (EwsRechargeRate 900,000 ms/h = 250 ms/s, x time scale), and the face
   charges 40 ms per admitted request plus 4 ms per item touched (`orgs.UNVERIFIED`); the
   bench sums what it charged per key during the pass (`count_charges`). Per organisation,
   ceiling = keys x recharge x copied items / charged ms (keys: 1 under delegation, one per
   mailbox under impersonation; the load splits evenly over them); the pair's ceiling is
   the lower of source's and target's. At TIME_SCALE the ceiling stays below what this
   machine moves unthrottled (the face's schema validation costs ~0.6 ms/item;
   NOTES-ewsface.md): `unthrottled_items_per_s` (profile fast, same data) shows it.
2. `graph_to_workmail`: sandbox Microsoft 365 (Graph mail API) -> WorkMail (EWS, Basic,
   MIME) under the same profile: items/s, MB/s and the fraction of its budget ceiling.
3. `peak_rss_mb`: VmHWM (ru_maxrss of the child, `os.wait4`) of the CLI process moving a
   RSS_MB (2 GB) mailbox of 4 MB messages Exchange -> Exchange (profile fast).

`--quick` scales every size down (tests/integration/test_ews_bench_smoke.py); README quotes
the full run: `.venv/bin/python bench/ews_bench.py`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without an install

from coexist import commands, credentials  # noqa: E402
from coexist.ewsdemo import SCENARIOS, Run, _pairs, _settings  # noqa: E402
from coexist.journal import Journal  # noqa: E402
from coexist.sandbox.ews import add_account, soap  # noqa: E402
from coexist.sandbox.server import Sandbox  # noqa: E402
from coexist.settings import load_project  # noqa: E402
from coexist.vault import ENV_KEY, WORKMAIL_ENTRY, Credential, Vault, new_key  # noqa: E402

QUICK = "--quick" in sys.argv
KB, MB = 1024, 1024 * 1024


def _env(name: str, full: float, quick: float) -> float:
    return float(os.environ.get(name, quick if QUICK else full))


MAILBOXES = int(_env("BENCH_MAILBOXES", 2, 2))
ITEMS = int(_env("BENCH_ITEMS", 120, 12))
ITEM_BYTES = 8 * KB
# Time scale 2: the budget binds well below what this machine moves unthrottled (the
# ceiling is ~11 items/s under delegation, `unthrottled_items_per_s` is several times that);
# at 20 the face's and client's CPU bound first (NOTES-ewsdemo.md).
TIME_SCALE = _env("BENCH_TIME_SCALE", 2, 20)
RSS_MB = _env("BENCH_RSS_MB", 2048, 8)
RSS_ITEM_BYTES = 4 * MB
MOVE_TIMEOUT_S = _env("BENCH_MOVE_TIMEOUT_S", 600, 300)
KEY = new_key()
OLD = dt.datetime(2024, 1, 15, 9, tzinfo=dt.UTC)


def message(tag: str, n: int, size: int) -> bytes:
    head = (
        f"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: {tag} {n}\r\n"
        f"Message-ID: <{tag}-{n}@bench.example.org>\r\n"
        "Date: Mon, 15 Jan 2024 09:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    line = (f"{n:08d} " + "abcdefghijklmnopqrstuvwxyz0123456789" * 3)[:76].encode() + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def project(
    base: Path,
    scenario: str,
    *,
    profile: str,
    access: str,
    items: int,
    size: int,
    mailboxes: int,
) -> tuple[Sandbox, Run]:
    """A started sandbox with seeded source mailboxes and the project moving them."""
    kinds = SCENARIOS[scenario]
    sb = Sandbox(
        base / "sandbox",
        seed=5,
        users=10,
        profile=profile,
        time_scale=TIME_SCALE,
        drained=True,
        kinds={k: v for k, v in kinds.items() if v != "m365"},
    )
    sb.start()
    # The face compiles the EWS schema once per process on its first request (1-7 s on this
    # machine): compiled before the pass, as a real server's is, so it is not a pause of
    # every budget inside the measured span.
    soap.schema()
    proj = base / "project"
    proj.mkdir()
    run = Run(proj, sb, scenario, _pairs(sb, mailboxes), lambda _m: None, None)
    for i, p in enumerate(run.pairs):
        for n in range(items):
            sb.mail.insert_message(
                "source", p.source_id, "inbox", message(f"b{i}", n, size), received=OLD
            )
    passwords: dict[str, tuple[str, str]] = {}
    for side, org in kinds.items():
        if org == "m365":
            continue
        boxes = [p.source if side == "source" else p.target for p in run.pairs]
        password = new_key()[:24]
        account = add_account(
            sb.world, side, "svc-bench", password, full_access=boxes,
            impersonation=access == "impersonation",
        )  # fmt: skip
        passwords[side] = (account.upn, password)
    settings = _settings(run, kinds, passwords)
    for side in passwords:
        settings[f"{side}.ews.access"] = access
    commands.init(proj, overrides=settings)
    env = {ENV_KEY: KEY}
    for side, (_upn, password) in passwords.items():
        credentials.credentials_set_master(proj, password, side=side, env=env)
    if "workmail" in kinds.values():
        # A WorkMail side is also reached through the AWS WorkMail API (prestage makes or
        # finds its users and grants there): its access key into the vault, as the demo does
        # (`ewsdemo._workmail_key`).
        side = next(k for k, v in kinds.items() if v == "workmail")
        info = sb.connection["tenants"][side]["workmail"]
        Vault.open(proj, env=env).put(
            {(WORKMAIL_ENTRY, side): Credential(info["access_key_id"], info["secret_access_key"])}
        )
    csv = base / "users.csv"
    csv.write_text(
        "Source Email,Destination Email,Batch\r\n"
        + "".join(f"{p.source},{p.target},bench\r\n" for p in run.pairs)
    )
    commands.batch_import(proj, csv, env=env)
    return sb, run


def move(run: Run) -> dict[str, Any]:
    """`coexist prestage --all --json` in a child process: its result, wall time, and peak
    RSS (ru_maxrss of that child alone, by os.wait4)."""
    log = run.project / "prestage.log"
    with log.open("wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "coexist.cli", "prestage", "--all", "--json",
             "--project", str(run.project)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, ENV_KEY: KEY, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        # Bounded, so a hang ends the bench with an error (exchangelib 5.6's session-pool
        # deadlock under ErrorServerBusy is avoided by tenants/ews.py; NOTES-ewspool.md).
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - started > MOVE_TIMEOUT_S:
                proc.kill()
                _pid, status, usage = os.wait4(proc.pid, 0)
                raise RuntimeError(
                    f"prestage still running after {MOVE_TIMEOUT_S:.0f} s: killed (hung?)"
                )
            time.sleep(0.1)
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.monotonic() - started
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"prestage exited {proc.returncode}: {text[-3000:]}")
    result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    if result.get("failed") or result.get("waiting"):
        raise RuntimeError(f"prestage left users: {result}")
    return {"result": result, "elapsed_s": elapsed, "peak_rss_mb": usage.ru_maxrss / 1024}


def rates(run: Run) -> dict[str, Any]:
    """Copies the journal recorded (all mailboxes) over the passes' span (first start to
    last finish): every request the budget charged falls inside it (folder trees, sync
    states, reconciliation as well as the copies), so the rate compares with a ceiling
    computed from all the charges."""
    with Journal.open(load_project(run.project).journal_url) as j:
        users = [str(u["key"]) for u in j.items(kind="user")]
        rows = [r for u in users for r in j.mapped_items(u) if r["target_item_id"]]
        passes = [p for u in users for p in j.passes(u) if p["finished_at"]]
    span = (
        max(p["finished_at"] for p in passes) - min(p["started_at"] for p in passes)
    ).total_seconds()
    size = sum(int(r["size"] or 0) for r in rows)
    return {
        "copied": len(rows),
        "bytes": size,
        "pass_span_s": round(span, 2),
        "items_per_s": round(len(rows) / span, 2) if span > 0 else 0.0,
        "mb_per_s": round(size / span / MB, 3) if span > 0 else 0.0,
    }


def part(
    scenario: str, *, profile: str, access: str, items: int = ITEMS, size: int = ITEM_BYTES,
    mailboxes: int = MAILBOXES,
) -> dict[str, Any]:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="coexist-ews-bench-") as tmp:
        sb, run = project(
            Path(tmp), scenario, profile=profile, access=access, items=items, size=size,
            mailboxes=mailboxes,
        )  # fmt: skip
        charged = count_charges(sb)
        try:
            moved = move(run)
            moved_rates = rates(run)
            # The face's own figure for this profile and time scale (ms per second per key).
            recharge = sb.ctx.limiter.ceiling_per_s("ews_budget")
        finally:
            sb.stop()
    calls = moved["result"].get("calls", {})
    copied = moved_rates["copied"] or 1
    # Per organisation: the budget's ceiling in items/s = keys x recharge (ms/s per key) x
    # copied items / ms the face charged there; the pair moves at most the lower one.
    sides = {}
    for tenant in ("source", "target"):
        keys = [k for k in charged if k[0] == tenant]
        total = sum(charged[k] for k in keys)
        if keys and total:
            sides[tenant] = {
                "keys": len(keys),
                "charged_ms": round(total),
                "charge_ms_per_copied_item": round(total / copied, 2),
                "ceiling_items_per_s": round(len(keys) * recharge * copied / total, 2),
            }
    ceiling = min((v["ceiling_items_per_s"] for v in sides.values()), default=0.0)
    return {
        "scenario": scenario,
        "profile": profile,
        "access": access,
        "time_scale": TIME_SCALE if profile != "fast" else None,
        "mailboxes": mailboxes,
        "items": items * mailboxes,
        **moved_rates,
        "elapsed_s": round(moved["elapsed_s"], 2),
        "calls": calls,
        "budget": {
            "recharge_ms_per_s_per_key": round(recharge, 2),
            "ceiling_items_per_s": ceiling,
            **sides,
        },
        "ews_budget_fraction": round(moved_rates["items_per_s"] / ceiling, 3) if ceiling else None,
        "peak_rss_mb": round(moved["peak_rss_mb"], 1),
    }


def count_charges(sb: Sandbox) -> dict[tuple[str, ...], float]:
    """The EWS budget ms the face takes, per budget key, summed while the bench runs: the
    sandbox's limiter's admit (40 ms a request, when admitted) and charge (4 ms an item)
    wrapped on this sandbox's instance (the bench's own code; nothing of an SDK)."""
    limiter = sb.ctx.limiter
    taken: dict[tuple[str, ...], float] = {}
    admit, charge = limiter.admit, limiter.charge

    def counted_admit(bucket: str, key: tuple[str, ...], cost: float = 1.0) -> float | None:
        wait = admit(bucket, key, cost)
        if bucket == "ews_budget" and wait is None:
            taken[key] = taken.get(key, 0.0) + cost
        return wait

    def counted_charge(bucket: str, key: tuple[str, ...], cost: float) -> None:
        charge(bucket, key, cost)
        if bucket == "ews_budget":
            taken[key] = taken.get(key, 0.0) + cost

    limiter.admit = counted_admit  # type: ignore[method-assign]
    limiter.charge = counted_charge  # type: ignore[method-assign]
    return taken


def main() -> None:
    started = time.monotonic()
    delegation = part("hosted-exchange", profile="published", access="delegation")
    impersonation = part("hosted-exchange", profile="published", access="impersonation")
    unthrottled = part("hosted-exchange", profile="fast", access="delegation")
    workmail = part("workmail", profile="published", access="delegation")
    rss_items = max(1, int(RSS_MB * MB // RSS_ITEM_BYTES))
    memory = part(
        "hosted-exchange", profile="fast", access="delegation", items=rss_items,
        size=RSS_ITEM_BYTES, mailboxes=1,
    )  # fmt: skip
    out = {
        "ews_to_ews": {
            "delegation": delegation,
            "impersonation": impersonation,
            "unthrottled_items_per_s": unthrottled["items_per_s"],
            "unthrottled_mb_per_s": unthrottled["mb_per_s"],
        },
        "items_per_s": {
            "delegation": delegation["items_per_s"],
            "impersonation": impersonation["items_per_s"],
        },
        "mb_per_s": {
            "delegation": delegation["mb_per_s"],
            "impersonation": impersonation["mb_per_s"],
        },
        "ews_budget_fraction": {
            "delegation": delegation["ews_budget_fraction"],
            "impersonation": impersonation["ews_budget_fraction"],
        },
        "graph_to_workmail": workmail,
        "memory": {
            "mailbox_mb": round(memory["bytes"] / MB, 1),
            "items": memory["items"],
            "copied": memory["copied"],
            "elapsed_s": memory["elapsed_s"],
            "peak_rss_mb": memory["peak_rss_mb"],
        },
        "peak_rss_mb": memory["peak_rss_mb"],
        # The face validates every request and response against the EWS schema; payload
        # texts above this many characters are checked by strict base64 decoding instead of
        # character by character in xmlschema (soap.first_error).
        "face_validation": {
            "schema": True,
            "payload_checked_apart_chars": soap.PAYLOAD_CHECKED_APART,
        },
        "quick": QUICK,
        "bench_s": round(time.monotonic() - started, 1),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
