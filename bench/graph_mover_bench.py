"""The full-fidelity mover (Graph mailbox import/export) against Microsoft's Outlook limits.

Microsoft's published per-app-per-mailbox limits (150 MB upload per 5 min, 10,000 requests
per 10 min, 4 concurrent) are the physical ceiling of a Graph mover. Each part runs the real
mover (`migration.mover = "graph-import-export"`, `MOVERS[...].run` in a runtime session, as
`coexist cutover` does for its data pass) against a sandbox in its own process under the
`published` profile, time-scaled, rate buckets drained at the start (so the sustained rate is
measured, not a fresh window's burst); the client paces itself with
`engine.outlook_time_scale` set to the same scale.

Rates are sustained rates: per mailbox, from the end of its first tenth of copies to its last
copy, as the journal recorded them (`item_map.updated_at`), so the fixed requests of a pass
(folder tree, delta, reconciliation), which a real pass of hours amortizes, do not dilute
them; the whole-pass figures are printed beside them.

1. Upload: one mailbox of large messages. `upload_ceiling_fraction` = item bytes moved per
   second (GB/h per mailbox) over 150 MB / 5 min x time_scale.
2. Requests and scaling: mailboxes of small messages, 1, 5 and 20 moved in parallel.
   `request_ceiling_fraction` = items/s of the single mailbox over 10,000 / 10 min x scale
   (each item costs at least one import request on the target mailbox).
3. Memory: one mailbox of ~2 GB (large messages); `peak_rss_mb` is the peak resident set of a
   fresh client process doing that move (VmHWM), reported with its resident set before the
   move. It runs at its own, larger time scale (reported); at that scale it is bound by the
   sandbox's CPU (one event loop), not by the limits.

Source mailboxes are filled straight into the sandbox mailstore (`MailStore.insert_copies`,
in a child process while the sandbox is stopped: `mail.db` in its state directory, on tmpfs
when there is room). Target mailboxes are made by the real `discover` / `provision` /
`prestage` against a `fast` sandbox first. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from coexist import commands, runtime
from coexist.journal import Journal
from coexist.migrate.passes import Window, mover_for
from coexist.sandbox import seed
from coexist.settings import load_project
from coexist.tenants.mailbox_governor import MB, MailboxLimits

USERS = 40  # the sandbox seed's source side has 37 user mailboxes at 40 users
UPLOAD_SCALE = float(os.environ.get("BENCH_UPLOAD_SCALE", "40"))
UPLOAD_ITEMS = int(os.environ.get("BENCH_UPLOAD_ITEMS", "40"))
LARGE_MB = float(os.environ.get("BENCH_LARGE_MB", "4"))
REQUEST_SCALE = float(os.environ.get("BENCH_REQUEST_SCALE", "2"))
SMALL_ITEMS = int(os.environ.get("BENCH_SMALL_ITEMS", "40"))  # per mailbox, 5 and 20 in parallel
REQUEST_ITEMS = int(os.environ.get("BENCH_REQUEST_ITEMS", "200"))  # the single mailbox
SCALING = (1, 5, 20)
MAILBOXES = 2 + sum(SCALING)
RSS_MAILBOX_MB = float(os.environ.get("BENCH_RSS_MAILBOX_MB", "2048"))
RSS_SCALE = float(os.environ.get("BENCH_RSS_SCALE", "300"))
# Goals of the client's CPU (issue 16): per small item, in the 20-mailbox part, and per MB of
# large items, in the upload part. How many mailboxes one core carries at their ceilings.
CPU_MS_PER_ITEM_GOAL = 1.0
CPU_MS_PER_MB_GOAL = 5.0
OLD = dt.datetime(2024, 1, 15, 9, 30, tzinfo=dt.UTC)


# -- the sandbox, in its own process --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# One port for every start of the sandbox: the journal keeps Graph's deltaLinks, absolute URLs.
PORT = free_port()
# Time spent starting (until `ready`) and stopping (state saved) the sandbox, all parts.
SANDBOX_S = {"start": 0.0, "stop": 0.0}


@contextmanager
def served(state: Path, profile: str, time_scale: float = 1.0) -> Iterator[None]:
    # A wrapper script to run the sandbox under (e.g. a profiler); default: the CLI itself.
    entry = os.environ.get("BENCH_SANDBOX_ENTRY")
    args = [
        sys.executable,
        *([entry] if entry else ["-m", "coexist.cli"]),
        "sandbox",
        "serve",
        "--state",
        str(state),
        "--users",
        str(USERS),
        "--profile",
        profile,
        "--time-scale",
        str(time_scale),
        "--port",
        str(PORT),
    ]
    if profile == "published":
        args.append("--drained")
    started = time.perf_counter()
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # A bench started in the background inherits SIGINT ignored; the sandbox stops (and
        # saves its state for the next start) on SIGINT, so give it the default back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.strip() == "ready":
                break
        else:
            raise SystemExit("sandbox did not start")
        # Keep reading: a full stdout pipe would block the sandbox (and its shutdown).
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        SANDBOX_S["start"] += time.perf_counter() - started
        yield
    finally:
        stopping = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        SANDBOX_S["stop"] += time.perf_counter() - stopping


# -- seeding (runs in a child process: its memory is not the client's) ----------------------------


def message(n: int, size: int) -> bytes:
    """A plain-text message of about `size` bytes; long lines keep MIME parsing cheap."""
    head = (
        f"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\n"
        f"Subject: bench {n}\r\nMessage-ID: <bench-{n}-{size}@example.org>\r\n"
        "Date: Mon, 15 Jan 2024 09:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
    ).encode()
    line = (f"{n:08d} " + "abcdefghijklmnopqrstuvwxyz0123456789" * 27)[:990].encode() + b"\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


def seed_mailboxes(state: Path, plan: dict[str, list[int]]) -> None:
    """`plan`: source user id -> [message size, how many] to put in its Inbox (each size's
    MIME parsed once, then stored `how many` times with their own ids)."""
    from coexist.sandbox.mailstore import MailStore

    store = MailStore(state / "mail.db")
    for user in plan:
        store.ensure_mailbox("source", user)
    with store.bulk_load():
        for n, (user, (size, count)) in enumerate(plan.items()):
            store.insert_copies("source", user, "inbox", message(n, size), count, received=OLD)
    store.close()


def seed_in_child(state: Path, plan: dict[str, list[int]]) -> None:
    spec = state.parent / "seed.json"
    spec.write_text(json.dumps(plan))
    subprocess.run(
        [sys.executable, __file__, "--seed", str(state), str(spec)],
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )


# -- the client ------------------------------------------------------------------------------------


def setup(base: Path, state: Path) -> tuple[Path, list[str]]:
    """A project whose in-scope users all have target mailboxes; returns their source ids."""
    conn = str(state / "connection.json")
    project = base / "project"
    commands.init(
        project,
        overrides={
            "source.sandbox_connection": conn,
            "target.sandbox_connection": conn,
            "domains.destination_domain": seed.TARGET_DOMAIN,
            "scope.group": "",
            "prestage.license_sku": "ENTERPRISEPACK",
            "prestage.usage_location": "US",
            "migration.mover": "graph-import-export",
            "engine.concurrency_per_tenant": 24,
        },
    )
    commands.discover(project)
    commands.provision(project, all_users=True)
    with Journal.open(load_project(project).journal_url) as j:
        chosen = [str(u["source_address"]) for u in j.items(kind="user")][:MAILBOXES]
    commands.prestage(project, users=chosen)  # target mailboxes; nothing to move yet
    with Journal.open(load_project(project).journal_url) as j:
        users = [str(u["key"]) for u in j.items(kind="user") if u.get("target_id")]
    return project, users[:MAILBOXES]


def set_scale(project: Path, scale: float) -> None:
    path = project / "project.toml"
    text = path.read_text()
    text, n = re.subn(
        r"(?m)^#?\s*outlook_time_scale\s*=.*$", f"outlook_time_scale = {int(scale)}", text
    )
    assert n == 1, "engine.outlook_time_scale not found in project.toml"
    path.write_text(text)


async def move(project: Path, users: list[str]) -> dict[str, Any]:
    """One data pass (everything not yet moved) for `users` in parallel; counts and stats."""
    async with runtime.session(project, "bench", {}) as sess:
        mover = mover_for(sess.ctx)  # the project's: graph-import-export
        start, cpu = time.perf_counter(), time.process_time()
        results = await asyncio.gather(
            *(mover.run(sess.ctx, u, "cutover", Window()) for u in users)
        )
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        src = list(sess.ctx.source.graph.mailboxes.all_stats().values())
        tgt = list(sess.ctx.target.graph.mailboxes.all_stats().values())
        stats = [*src, *tgt]
        steady = [steady_rate(sess.ctx.journal.mapped_items(u, status="copied")) for u in users]
    bad = [r.detail for r in results if r.status != "ok"]
    return {
        "elapsed_s": elapsed,
        "client_cpu_s": cpu,
        "items": sum(int(r.counts.get("copied", 0)) for r in results),
        "bytes": sum(int(r.counts.get("bytes", 0)) for r in results),
        "throttled_429": sum(s.throttled for s in stats),
        # Outlook requests per side, and how long target requests waited for budget: a mover
        # bound by the limits waits; one bound by itself does not.
        "source_requests": sum(s.requests for s in src),
        "target_requests": sum(s.requests for s in tgt),
        "target_paced_s": sum(s.paced_s for s in tgt),
        "peak_in_flight": max((s.peak_in_flight for s in stats), default=0),
        "not_ok": bad,
        # Per mailbox, between its first and last journaled copy: (items/s, bytes/s).
        "steady_items_per_s": sum(r[0] for r in steady) / max(1, len(steady)),
        "steady_bytes_per_s": sum(r[1] for r in steady) / max(1, len(steady)),
    }


def cpu_per_item(r: dict[str, Any]) -> float:
    """Client CPU (ms) per item copied in a pass, its fixed requests (folder tree, delta,
    reconciliation) included."""
    return round(r["client_cpu_s"] * 1000 / max(1, r["items"]), 3)


def cpu_per_mb(r: dict[str, Any]) -> float:
    """Client CPU (ms) per MB of items copied in a pass."""
    return round(r["client_cpu_s"] * 1000 / max(1.0, r["bytes"] / MB), 3)


def steady_rate(rows: list[dict[str, Any]]) -> tuple[float, float]:
    """(items/s, bytes/s) of one mailbox's copies once under way: from the copy that ends
    the first tenth (the warm-up: the first answers, a first Retry-After) to the last one,
    as the journal recorded them. The pass's fixed requests (folder tree, delta,
    reconciliation), which a real pass of hours amortizes, fall outside the interval."""
    stamps = sorted((r["updated_at"], int(r["size"] or 0)) for r in rows)
    start = max(1, len(stamps) // 10)
    if len(stamps) <= start:
        return 0.0, 0.0
    span = (stamps[-1][0] - stamps[start - 1][0]).total_seconds()
    if span <= 0:
        return 0.0, 0.0
    return (len(stamps) - start) / span, sum(size for _, size in stamps[start:]) / span


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (proc(5))
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def part(project: Path, state: Path, scale: float, groups: list[list[str]]) -> list[dict[str, Any]]:
    """Each group of mailboxes moved in turn, against one sandbox served at `scale` (buckets
    are drained at each mailbox's first request, so a later group starts as drained)."""
    set_scale(project, scale)
    with served(state, "published", scale):
        return [move_profiled(project, users) for users in groups]


def move_profiled(project: Path, users: list[str]) -> dict[str, Any]:
    if not os.environ.get("BENCH_PROFILE"):
        return asyncio.run(move(project, users))
    import cProfile
    import pstats

    # BENCH_PROFILE_CPU=1: CPU time instead of wall time (on a shared machine, wall time
    # charges other processes' turns to whatever was running).
    timer = time.process_time if os.environ.get("BENCH_PROFILE_CPU") else time.perf_counter
    with cProfile.Profile(timer) as prof:
        out = asyncio.run(move(project, users))
    if os.environ.get("BENCH_PROFILE_OUT"):  # the whole profile, for pstats
        prof.dump_stats(os.environ["BENCH_PROFILE_OUT"])
    pstats.Stats(prof, stream=sys.stderr).sort_stats(
        os.environ.get("BENCH_PROFILE_SORT", "cumulative")
    ).print_stats(25)
    return out


def rss_part(project: Path, state: Path, user: str) -> dict[str, Any]:
    """The 2 GB move in a fresh client process, so its peak RSS is that move's alone (memory
    an earlier part freed stays resident in this process's allocator)."""
    set_scale(project, RSS_SCALE)
    with served(state, "published", RSS_SCALE):
        out = subprocess.run(
            [sys.executable, __file__, "--move", str(project), user],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def move_in_child(project: Path, user: str) -> None:
    baseline = Path("/proc/self/status").exists() and peak_rss_mb()
    reset = reset_peak_rss()
    if os.environ.get("BENCH_PROFILE"):
        import cProfile
        import pstats

        with cProfile.Profile() as prof:
            out = asyncio.run(move(project, [user]))
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    else:
        out = asyncio.run(move(project, [user]))
    out.update(peak_rss_mb=peak_rss_mb(), peak_reset=reset, baseline_rss_mb=baseline)
    print(json.dumps(out))


def state_parent() -> str | None:
    """Where the sandbox keeps its state: tmpfs when it has room, so the sandbox's own disk
    writes (its mailstore holds every moved byte twice, WAL then database) do not bound a
    figure that is about the mover; None (the default temp dir) otherwise."""
    shm = Path("/dev/shm")
    try:
        st = os.statvfs(shm)
    except OSError:
        return None
    need = 3 * (RSS_MAILBOX_MB + UPLOAD_ITEMS * LARGE_MB) * MB  # source + target + WAL
    return str(shm) if st.f_bavail * st.f_frsize > need else None


def main() -> None:
    bench_start = time.perf_counter()
    parent = state_parent()
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        base = Path(tmp)
        state = base / "sandbox"
        with served(state, "fast"):
            project, users = setup(base, state)
        need = MAILBOXES
        if len(users) < need:
            raise SystemExit(f"{len(users)} users with target mailboxes; {need} needed")
        upload_user, rss_user, rest = users[0], users[1], users[2:need]
        large = int(LARGE_MB * MB)
        plan = {upload_user: [large, UPLOAD_ITEMS]}
        plan[rss_user] = [large, int(RSS_MAILBOX_MB * MB // large)]
        for n, u in enumerate(rest):
            # The single mailbox of the request part moves more items, so the pass's fixed
            # requests (folder tree, delta, reconciliation) do not dominate its rate.
            plan[u] = [2048, REQUEST_ITEMS if n == 0 else SMALL_ITEMS]
        setup_s = time.perf_counter() - bench_start
        seed_start = time.perf_counter()
        seed_in_child(state, plan)
        seed_s = time.perf_counter() - seed_start

        only_rss = os.environ.get("BENCH_ONLY") == "rss"  # profiling the memory part alone
        skip_upload = only_rss or os.environ.get("BENCH_ONLY", "").isdigit()
        upload = {} if skip_upload else part(project, state, UPLOAD_SCALE, [[upload_user]])[0]
        if os.environ.get("BENCH_ONLY") == "upload":  # the upload part alone
            print(json.dumps({**upload, "client_cpu_ms_per_mb": cpu_per_mb(upload)}))
            return
        scaling: dict[str, Any] = {}
        groups, at = {}, 0
        for n in SCALING:
            groups[n], at = rest[at : at + n], at + n
        # BENCH_ONLY=20 (a mailbox count): that scaling part alone, e.g. to profile it.
        only_n = int(os.environ["BENCH_ONLY"]) if os.environ.get("BENCH_ONLY", "").isdigit() else 0
        counts = [] if only_rss else [n for n in SCALING if not only_n or n == only_n]
        moved = part(project, state, REQUEST_SCALE, [groups[n] for n in counts]) if counts else []
        for n, r in zip(counts, moved, strict=True):
            if only_n:
                print(json.dumps({**r, "client_cpu_ms_per_item": cpu_per_item(r)}))
                return
            scaling[str(n)] = {
                "mailboxes": n,
                "items": r["items"],
                "elapsed_s": round(r["elapsed_s"], 2),
                "items_per_s": round(r["items"] / r["elapsed_s"], 1),
                "steady_per_mailbox_items_per_s": round(r["steady_items_per_s"], 1),
                "per_mailbox_items_per_s": round(r["items"] / r["elapsed_s"] / n, 1),
                "throttled_429": r["throttled_429"],
                "client_cpu_s": round(r["client_cpu_s"], 2),
                "source_requests": r["source_requests"],
                "target_requests": r["target_requests"],
                "not_ok": r["not_ok"],
            }
        one = scaling.get("1", {})
        rss = rss_part(project, state, rss_user)
        peak, reset = rss["peak_rss_mb"], rss["peak_reset"]
        if only_rss:
            print(json.dumps(rss))
            return

    upload_ceiling = MailboxLimits(time_scale=UPLOAD_SCALE).upload_rate  # bytes/s
    many = moved[counts.index(SCALING[-1])]  # the most mailboxes at once
    request_ceiling = MailboxLimits(time_scale=REQUEST_SCALE).request_rate  # requests/s
    achieved = upload["steady_bytes_per_s"]
    whole_pass = upload["bytes"] / upload["elapsed_s"]
    print(
        json.dumps(
            {
                "benchmark": "graph_mover",
                "mover": "graph-import-export",
                "upload_ceiling_fraction": round(achieved / upload_ceiling, 3),
                "request_ceiling_fraction": round(
                    one["steady_per_mailbox_items_per_s"] / request_ceiling, 3
                ),
                "scaling": scaling,
                # The client process's CPU (time.process_time around the pass: every thread
                # of this process; the sandbox serves from its own process) per item copied.
                "client_cpu_ms_per_item": cpu_per_item(many),
                "client_cpu_ms_per_item_goal": CPU_MS_PER_ITEM_GOAL,
                "client_cpu_ms_per_item_of": f"{SCALING[-1]} mailboxes x {SMALL_ITEMS} x 2 KB",
                "client_cpu_ms_per_mb": cpu_per_mb(upload),
                "client_cpu_ms_per_mb_goal": CPU_MS_PER_MB_GOAL,
                "client_cpu_ms_per_mb_of": f"{UPLOAD_ITEMS} x {LARGE_MB:g} MB, one mailbox",
                "peak_rss_mb": round(peak, 1),
                "upload": {
                    "time_scale": UPLOAD_SCALE,
                    "ceiling_mb_per_5min_unscaled": 150,
                    "ceiling_bytes_per_s_scaled": round(upload_ceiling),
                    "items": upload["items"],
                    "item_mb": LARGE_MB,
                    "bytes": upload["bytes"],
                    "elapsed_s": round(upload["elapsed_s"], 2),
                    "whole_pass_ceiling_fraction": round(whole_pass / upload_ceiling, 3),
                    "gb_per_h_per_mailbox_scaled": round(achieved * 3600 / 1e9, 2),
                    "gb_per_h_per_mailbox_unscaled": round(achieved * 3600 / 1e9 / UPLOAD_SCALE, 3),
                    "ceiling_gb_per_h_unscaled": round(
                        upload_ceiling * 3600 / 1e9 / UPLOAD_SCALE, 3
                    ),
                    "throttled_429": upload["throttled_429"],
                    "client_cpu_s": round(upload["client_cpu_s"], 2),
                    "target_paced_s": round(upload["target_paced_s"], 2),
                    "target_requests": upload["target_requests"],
                    "peak_in_flight": upload["peak_in_flight"],
                    "not_ok": upload["not_ok"],
                },
                "requests": {
                    "time_scale": REQUEST_SCALE,
                    "ceiling_requests_per_10min_unscaled": 10_000,
                    "ceiling_requests_per_s_scaled": round(request_ceiling, 2),
                    "item_bytes": 2048,
                    "steady_items_per_s": one["steady_per_mailbox_items_per_s"],
                    "whole_pass_items_per_s": one["items_per_s"],
                },
                "memory": {
                    "time_scale": RSS_SCALE,
                    "note": "the 2 GB part runs at its own larger time scale to fit the time "
                    "budget; peak RSS is the client process's (VmHWM), sandbox excluded",
                    "peak_reset": reset,
                    "client_rss_before_move_mb": round(float(rss["baseline_rss_mb"] or 0), 1),
                    "mailbox_bytes": rss["bytes"],
                    "items": rss["items"],
                    "item_mb": LARGE_MB,
                    "elapsed_s": round(rss["elapsed_s"], 2),
                    "gb_per_h_scaled": round(rss["bytes"] / rss["elapsed_s"] * 3600 / 1e9, 2),
                    "throttled_429": rss["throttled_429"],
                    "client_cpu_s": round(rss["client_cpu_s"], 2),
                    "not_ok": rss["not_ok"],
                },
                "setup_s": round(setup_s, 1),
                "seed_s": round(seed_s, 1),
                "sandbox_start_s": round(SANDBOX_S["start"], 1),
                "sandbox_stop_s": round(SANDBOX_S["stop"], 1),
                "sandbox_state_on_tmpfs": parent is not None,
                "bench_s": round(time.perf_counter() - bench_start, 1),
            }
        )
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--seed":
        seed_mailboxes(Path(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text()))
    elif len(sys.argv) == 4 and sys.argv[1] == "--move":
        move_in_child(Path(sys.argv[2]), sys.argv[3])
    else:
        main()
