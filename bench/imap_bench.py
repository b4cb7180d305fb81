"""The IMAP mover against Dovecot's own IMAP-to-IMAP sync, Microsoft's limits, and memory.

Prints one JSON object. Every baseline and ceiling is measured in the same run, on the same
data, on this machine:

1. IMAP -> IMAP between two Dovecot instances (`coexist/sandbox/dovecot.py`, TLS with its own CA).
   coexist runs the one sync algorithm (`sync.sync_mailbox`) between two `ImapStore`s, with
   a real journal in a temporary project (`imap-sync` settings), in a fresh process, timed
   from before its two logins (made at once, as the mover's `open_stores` makes them) to
   the pass's end and the stores' logouts (the process start and the project set-up are
   left out: a real run pays them once for many mailboxes). The
   baseline is `doveadm backup -R -u <target> imapc:` on the target Dovecot: Dovecot's own
   dsync pulling the same source mailbox over IMAP (imapc storage) into the target user's
   maildir. Its settings are those Dovecot's migration documentation gives for imapc
   (doc.dovecot.org "Migration from other IMAP servers" / "Imapc configuration":
   `imapc_features = rfc822.size fetch-headers`, `mail_prefetch_count = 20`), TLS verified
   with the same CA. `imap_vs_doveadm_ratio` = coexist messages/s / doveadm messages/s,
   for small messages (2,000 x ~4 KB) and large ones (400 x ~100 KB), each tool run
   BENCH_REPEAT (5) times in turns into fresh target users, its median run compared
   (every run's time is in the JSON). Note what each does:
   doveadm writes the target maildir directly (no IMAP server on the target side), coexist
   APPENDs through the target's IMAP server (the only way a real migration can).
2. IMAP -> sandbox Microsoft 365 (`published` profile, time-scaled, rate buckets drained at
   the start) through `sync.sync_mailbox` into a `GraphItemsStore` (the Graph mail API
   target of an IMAP source): `upload_ceiling_fraction` = steady upload bytes/s of the large
   messages (request bodies, what the budget counts) over the profile's per-mailbox upload
   ceiling (150 MB / 5 min x scale), and `request_ceiling_fraction` = steady messages/s of
   the small ones (one POST each) over the per-mailbox request ceiling (10,000 / 10 min x
   scale). "Steady": from the copy that ends the first tenth to the last one, as the journal
   recorded them (bench/graph_mover_bench.py's `steady_rate`). The client paces itself with
   `engine.outlook_time_scale` set to the same scale, its budgets starting empty like the
   drained sandbox's, after one warm-up write (`warm_up`).
3. `peak_rss_mb`: the peak resident set (VmHWM) of a fresh process moving a ~2 GB IMAP
   mailbox IMAP -> IMAP (streamed export and import: bounded memory).

Source mailboxes are written as maildir files straight into the source Dovecot's user homes
(filenames carry S= and W= sizes so Dovecot need not read them to index), then indexed by
one `doveadm mailbox status` and warmed by one `doveadm fetch` of what both tools read.

`--quick` scales every size down (a smoke run; tests/integration/test_imap_bench_smoke.py);
the figures README quotes come from the full run: `.venv/bin/python bench/imap_bench.py`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without an install

from coexist import commands  # noqa: E402
from coexist.errors import RemoteError, TransientError  # noqa: E402
from coexist.journal import Journal  # noqa: E402
from coexist.migrate import sync  # noqa: E402
from coexist.migrate.passes import Window  # noqa: E402
from coexist.migrate.stores.imap import ImapStore, enter_both  # noqa: E402
from coexist.sandbox.dovecot import DovecotServer, ImapUser, find_binary  # noqa: E402
from coexist.settings import load_project  # noqa: E402
from coexist.tenants.imap import ImapConnections, ImapEndpoint, Password  # noqa: E402
from coexist.tenants.mailbox_governor import MB, MailboxLimits  # noqa: E402

QUICK = "--quick" in sys.argv
KB = 1024


def _env(name: str, full: float, quick: float) -> float:
    return float(os.environ.get(name, quick if QUICK else full))


SMALL_ITEMS = int(_env("BENCH_SMALL_ITEMS", 2000, 40))
SMALL_BYTES = 4 * KB
LARGE_ITEMS = int(_env("BENCH_LARGE_ITEMS", 400, 10))
LARGE_BYTES = 100 * KB
RSS_MAILBOX_MB = _env("BENCH_RSS_MAILBOX_MB", 2048, 8)
RSS_ITEM_BYTES = 512 * KB  # the 2 GB mailbox: 512 KB messages ...
RSS_HUGE_BYTES = 25 * MB  # ... and a few of 25 MB (one message larger than a fetch chunk)
RSS_HUGE_ITEMS = int(_env("BENCH_RSS_HUGE_ITEMS", 8, 0))
UPLOAD_SCALE = _env("BENCH_UPLOAD_SCALE", 5, 20)
REQUEST_SCALE = _env("BENCH_REQUEST_SCALE", 2, 3)
CLIENT_PACE = _env("BENCH_CLIENT_PACE", 1.0, 1.0)
# INTERNALDATE of the generated messages (maildir: the file's mtime).
OLD = 1_705_310_000  # 2024-01-15
# Runs of each tool per size (in turns); the ratio compares their medians. Single runs of
# either tool spread by up to a half on this machine (0.95-1.82 s for doveadm's small move in
# one bench: the disk's fsyncs), so 5 rather than 3.
REPEAT = int(_env("BENCH_REPEAT", 5, 1))
# What Dovecot's migration documentation sets for imapc (see the module docstring).
DOVEADM_IMAPC = ("imapc_features=rfc822.size fetch-headers", "mail_prefetch_count=20")


# -- source mailboxes, written as maildir files --------------------------------------------------


def message(tag: str, n: int, size: int) -> bytes:
    """A plain-text message of about `size` bytes (LF line endings, as maildir keeps them)."""
    head = (
        f"From: Alice <alice@example.org>\nTo: bob@example.org\nSubject: {tag} {n}\n"
        f"Message-ID: <{tag}-{n}@bench.example.org>\n"
        "Date: Mon, 15 Jan 2024 09:00:00 +0000\nMIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=us-ascii\nContent-Transfer-Encoding: 7bit\n\n"
    ).encode()
    line = (f"{n:08d} " + "abcdefghijklmnopqrstuvwxyz0123456789" * 3)[:76].encode() + b"\n"
    return head + line * max(1, (size - len(head)) // len(line))


def fill_maildir(server: DovecotServer, user: ImapUser, tag: str, sizes: list[int]) -> int:
    """Write the user's INBOX as maildir files (every third one read, every fifth flagged);
    the bytes written. Dovecot indexes them at the first look (`index`)."""
    box = server.homes / user.login / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True, exist_ok=True)
    total = 0
    for n, size in enumerate(sizes):
        raw = message(tag, n, size)
        flags = ("S" if n % 3 == 0 else "") + ("F" if n % 5 == 0 else "")
        # Dovecot's maildir names: S= physical size, W= virtual (CRLF) size, ":2," flags
        # (doc.dovecot.org "Maildir mbox format": it then needs not open a file for sizes).
        vsize = len(raw) + raw.count(b"\n")
        name = f"{OLD + n}.M{n}P1.bench,S={len(raw)},W={vsize}:2,{flags}"
        path = box / "cur" / name
        path.write_bytes(raw)
        os.utime(path, (OLD + n, OLD + n))  # INTERNALDATE
        total += len(raw)
    if os.geteuid() == 0:  # the mail belongs to the mail user (tests/dovecot.py)
        subprocess.run(
            ["chown", "-R", f"{server.mail_uid}:{server.mail_gid}", str(box)], check=True
        )
    return total


def index(server: DovecotServer, user: ImapUser) -> None:
    """Let Dovecot index the maildir, and read once what both movers read of each message."""
    server.doveadm("mailbox", "status", "-u", user.login, "messages vsize", "INBOX")
    fields = "uid flags date.received size.physical hdr.message-id"
    server.doveadm("fetch", "-u", user.login, fields, "mailbox", "INBOX")


def count_of(server: DovecotServer, user: ImapUser) -> int:
    out = server.doveadm("mailbox", "status", "-u", user.login, "messages", "INBOX")
    return int(out.split("=", 1)[1])


# -- the two movers ------------------------------------------------------------------------------


def endpoint_spec(server: DovecotServer, user: ImapUser) -> dict[str, Any]:
    return {
        "host": server.host,
        "port": server.tls_port,
        "ca": str(server.ca_file),
        "login": user.login,
        "password": user.password,
    }


def doveadm_backup(
    dst: DovecotServer, dst_user: ImapUser, src: DovecotServer, user: ImapUser
) -> float:
    """`doveadm backup -R -u <dst_user> imapc:` from `user` on `src`; seconds it took."""
    options = [
        f"imapc_host={src.host}",
        f"imapc_port={src.tls_port}",
        "imapc_ssl=imaps",
        f"imapc_user={user.login}",
        f"imapc_password={user.password}",
        f"ssl_client_ca_file={src.ca_file}",
        *DOVEADM_IMAPC,
    ]
    args = [str(dst.doveadm_bin), "-c", str(dst.conf)]
    for o in options:
        args += ["-o", o]
    args += ["backup", "-R", "-u", dst_user.login, "imapc:"]
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, check=False, timeout=3600)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"doveadm backup failed ({proc.returncode}):\n{proc.stderr}")
    return elapsed


def coexist_move(base: Path, src: dict[str, Any], tgt: dict[str, Any], key: str) -> dict[str, Any]:
    """The coexist move in a fresh process (its own memory); what it printed."""
    spec = base / f"{key}.json"
    spec.write_text(json.dumps({"src": src, "tgt": tgt, "key": key, "base": str(base)}))
    spec.chmod(0o600)
    out = subprocess.run(
        [sys.executable, __file__, "--move", str(spec)],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    spec.unlink()
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _endpoint(spec: dict[str, Any], side: str) -> tuple[ImapEndpoint, Password]:
    ep = ImapEndpoint(spec["host"], spec["port"], "tls", Path(spec["ca"]), side=side)
    return ep, Password(spec["login"], spec["password"])


def imap_project(base: Path, key: str) -> Path:
    """A project of the `imap-sync` mover (IMAP on both sides), for its journal and settings."""
    project = base / f"project-{key}"
    commands.init(
        project,
        overrides={
            "source.kind": "imap",
            "target.kind": "imap",
            "source.imap.host": "127.0.0.1",
            "target.imap.host": "127.0.0.1",
            "migration.mover": "imap-sync",
            "domains.destination_domain": "example.org",
        },
    )
    return project


async def _move(spec: dict[str, Any]) -> dict[str, Any]:
    settings = load_project(imap_project(Path(spec["base"]), spec["key"]))
    journal = Journal.open(settings.journal_url)
    # What sync.py reads of a runtime Context: the journal, plan mode, the project settings.
    ctx: Any = SimpleNamespace(journal=journal, planning=False, project=settings)
    (src_ep, src_login), (tgt_ep, tgt_login) = (
        _endpoint(spec["src"], "source"),
        _endpoint(spec["tgt"], "target"),
    )
    counts: Counter[str] = Counter()
    # The clock starts before the two logins (TLS handshake, LOGIN, CAPABILITY), as
    # doveadm's run includes its own imapc login; it leaves out the Python process's start
    # and the bench's project set-up, which a real run pays once for many mailboxes.
    start, cpu = time.perf_counter(), time.process_time()
    try:
        # Both logins at once, as the imap-sync mover's `open_stores` does.
        async with AsyncExitStack() as stack:
            src, tgt = await enter_both(
                stack,
                ImapStore.open(ImapConnections(src_ep), src_login),
                ImapStore.open(ImapConnections(tgt_ep), tgt_login, label="target"),
            )
            opened = time.perf_counter() - start
            await sync.sync_mailbox(ctx, spec["key"], src, tgt, Window(), counts)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        journal.close()
    return {
        "elapsed_s": elapsed,
        "open_s": opened,
        "client_cpu_s": cpu,
        "copied": counts["copied"],
        "bytes": counts["bytes"],
        "skipped": counts["skipped"],
    }


def move_in_child(spec_file: Path) -> None:
    reset = reset_peak_rss()
    before = peak_rss_mb()
    spec = json.loads(spec_file.read_text())
    if os.environ.get("BENCH_PROFILE"):
        import cProfile
        import pstats

        with cProfile.Profile() as prof:
            out = asyncio.run(_move(spec))
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(30)
    else:
        out = asyncio.run(_move(spec))
    out.update(peak_rss_mb=peak_rss_mb(), peak_reset=reset, rss_before_move_mb=before)
    print(json.dumps(out))


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (proc(5))
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- part 1: IMAP -> IMAP against doveadm ---------------------------------------------------------


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process and its descendants used, those reaped
    included (proc(5): utime, stime, cutime, cstime); 0 where /proc cannot say."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (OSError, IndexError):
        return 0.0
    own = sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return own + sum(tree_cpu_s(int(k)) for k in kids)


def dovecot_cpu_s(server: DovecotServer) -> float:
    """CPU seconds a Dovecot instance used so far: its master and every process it started
    (imap-login's TLS, each connection's imap process, auth)."""
    proc = server._proc  # the sandbox's own process handle: no public accessor
    return tree_cpu_s(proc.pid) if proc is not None else 0.0


def children_cpu_s() -> float:
    t = os.times()
    return t.children_user + t.children_system


class CpuOf:
    """CPU seconds each side's processes used during one run: the source Dovecot, the
    target Dovecot, and this process's reaped children (doveadm itself, or the coexist
    child whole: its start-up too; its in-window CPU is `client_cpu_s`)."""

    def __init__(self, src: DovecotServer, dst: DovecotServer) -> None:
        self.src, self.dst = src, dst
        self.start = (dovecot_cpu_s(src), dovecot_cpu_s(dst), children_cpu_s())

    def used(self) -> dict[str, float]:
        time.sleep(0.2)  # let the masters reap the run's last imap processes (not timed)
        now = (dovecot_cpu_s(self.src), dovecot_cpu_s(self.dst), children_cpu_s())
        a, b, c = (round(n - s, 3) for n, s in zip(now, self.start, strict=True))
        return {"source_dovecot_cpu_s": a, "target_dovecot_cpu_s": b, "child_cpu_s": c}


def rates(items: int, size: int, elapsed: float) -> dict[str, Any]:
    return {
        "items": items,
        "elapsed_s": round(elapsed, 2),
        "msgs_per_s": round(items / elapsed, 1) if elapsed else 0.0,
        "mb_per_s": round(size / elapsed / MB, 2) if elapsed else 0.0,
    }


def versus_doveadm(
    base: Path, a: DovecotServer, b: DovecotServer, source: ImapUser, size: int, tag: str
) -> dict[str, Any]:
    """The same source mailbox moved by doveadm and by coexist into fresh target users,
    REPEAT times in turns (doveadm, coexist, doveadm, ...); the rates are each tool's median
    run. One run of either takes about a second here, and on this shared 2-core host the
    same code's runs a minute apart differed by half: a single pair measured the load."""
    items = count_of(a, source)
    dove_runs: list[float] = []
    dove_cpu: list[dict[str, float]] = []
    coexist_runs: list[dict[str, Any]] = []
    for n in range(REPEAT):
        by_doveadm = b.new_user(f"dsync{tag}")
        cpu = CpuOf(a, b)
        dove_runs.append(doveadm_backup(b, by_doveadm, a, source))
        dove_cpu.append(cpu.used())
        moved = count_of(b, by_doveadm)
        if moved != items:
            raise SystemExit(f"doveadm moved {moved} of {items} messages ({tag})")
        by_coexist = b.new_user(f"coexist{tag}")
        cpu = CpuOf(a, b)
        got = coexist_move(
            base, endpoint_spec(a, source), endpoint_spec(b, by_coexist), f"{tag}{n}"
        )
        got.update(cpu.used())
        got["in_target"] = count_of(b, by_coexist)
        coexist_runs.append(got)
    dove_s = statistics.median(dove_runs)
    got = sorted(coexist_runs, key=lambda g: g["elapsed_s"])[len(coexist_runs) // 2]
    coexist = rates(got["copied"], got["bytes"], got["elapsed_s"])
    doveadm = rates(items, size, dove_s)
    coexist.update(
        in_target=got["in_target"],
        client_cpu_s=round(got["client_cpu_s"], 2),
        open_s=round(got["open_s"], 3),
        peak_rss_mb=round(max(g["peak_rss_mb"] for g in coexist_runs), 1),
        runs_elapsed_s=[round(g["elapsed_s"], 2) for g in coexist_runs],
        # Per run: the client's CPU in the timed window, each Dovecot's during the run.
        runs_cpu_s=[
            {
                "client": round(g["client_cpu_s"], 3),
                "source_dovecot": g["source_dovecot_cpu_s"],
                "target_dovecot": g["target_dovecot_cpu_s"],
            }
            for g in coexist_runs
        ],
    )
    # doveadm writes the target's maildir itself (no target Dovecot process is involved).
    doveadm.update(
        runs_elapsed_s=[round(x, 2) for x in dove_runs],
        runs_cpu_s=[
            {"doveadm": c["child_cpu_s"], "source_dovecot": c["source_dovecot_cpu_s"]}
            for c in dove_cpu
        ],
    )
    ratio = coexist["msgs_per_s"] / doveadm["msgs_per_s"] if doveadm["msgs_per_s"] else 0.0
    return {
        "source_items": items,
        "source_bytes": size,
        "imap_vs_doveadm_ratio": round(ratio, 3),
        "runs": REPEAT,
        "coexist": coexist,
        "doveadm": doveadm,
    }


def rss_part(base: Path, a: DovecotServer, b: DovecotServer) -> dict[str, Any]:
    user = a.new_user("big")
    huge = [RSS_HUGE_BYTES] * RSS_HUGE_ITEMS
    rest = int(RSS_MAILBOX_MB * MB) - sum(huge)
    sizes = huge + [RSS_ITEM_BYTES] * max(1, rest // RSS_ITEM_BYTES)
    written = fill_maildir(a, user, "big", sizes)
    index(a, user)
    target = b.new_user("bigtarget")
    got = coexist_move(base, endpoint_spec(a, user), endpoint_spec(b, target), "big")
    return {
        "mailbox_bytes": written,
        "items": len(sizes),
        "copied": got["copied"],
        "in_target": count_of(b, target),
        "elapsed_s": round(got["elapsed_s"], 2),
        "mb_per_s": round(got["bytes"] / got["elapsed_s"] / MB, 2),
        "peak_rss_mb": round(got["peak_rss_mb"], 1),
        "rss_before_move_mb": round(got["rss_before_move_mb"], 1),
        "peak_reset": got["peak_reset"],
    }


# -- part 2: IMAP -> sandbox Microsoft 365 ---------------------------------------------------------


def graph_bench() -> ModuleType:
    """bench/graph_mover_bench.py (its sandbox launcher, seeding and rate helpers)."""
    spec = importlib.util.spec_from_file_location(
        "graph_mover_bench", ROOT / "bench" / "graph_mover_bench.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def m365_setup(base: Path, state: Path, count: int) -> tuple[Path, list[str]]:
    """A project with `count` in-scope users that have target mailboxes; their addresses."""
    from coexist.sandbox import seed

    conn = str(state / "connection.json")
    project = base / "m365"
    commands.init(
        project,
        overrides={
            "source.sandbox_connection": conn,
            "target.sandbox_connection": conn,
            "domains.destination_domain": seed.TARGET_DOMAIN,
            "scope.group": "",
            "prestage.license_sku": "ENTERPRISEPACK",
            "prestage.usage_location": "US",
            "migration.mover": "graph-items",
        },
    )
    commands.discover(project)
    with Journal.open(load_project(project).journal_url) as j:
        chosen = [str(u["source_address"]) for u in j.items(kind="user")][:count]
    commands.provision(project, users=chosen)
    commands.prestage(project, users=chosen)
    with Journal.open(load_project(project).journal_url) as j:
        users = [str(u["key"]) for u in j.items(kind="user") if u.get("target_id")]
    return project, users[:count]


async def m365_move(project: Path, user: str, src_spec: dict[str, Any]) -> dict[str, Any]:
    """IMAP `src_spec` -> the user's target mailbox through GraphItemsStore, one pass."""
    from coexist import runtime
    from coexist.migrate.stores.graph import Box
    from coexist.migrate.stores.graph_items import GraphItemsStore
    from coexist.provisioning.convert import target_id

    src_ep, login = _endpoint(src_spec, "source")
    async with (
        runtime.session(project, "bench", {}) as sess,
        ImapStore.open(ImapConnections(src_ep), login) as src,
    ):
        ctx = sess.ctx
        # The sandbox starts drained (`--drained`: the sustained rate is measured, not a
        # fresh window's burst), so the client's budget starts empty too: the graph-items
        # store's writes are not retried on a 429 (they may not be idempotent).
        governor = ctx.target.graph.mailboxes
        governor.limits = dataclasses.replace(
            governor.limits, start_full=False, time_scale=governor.limits.time_scale * CLIENT_PACE
        )
        tgt = GraphItemsStore(Box(ctx.target.graph, target_id(ctx, user), ""))
        await warm_up(ctx.target.graph, tgt.user)
        counts: Counter[str] = Counter()
        start, cpu = time.perf_counter(), time.process_time()
        try:
            await sync.sync_mailbox(ctx, user, src, tgt, Window(), counts)
        except RemoteError as exc:
            return {"error": exc.message, "copied": counts["copied"]}
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        stats = list(ctx.target.graph.mailboxes.all_stats().values())
        rows = ctx.journal.mapped_items(user, status="copied")
    return {
        "elapsed_s": elapsed,
        "client_cpu_s": cpu,
        "copied": counts["copied"],
        "bytes": counts["bytes"],
        "skipped": counts["skipped"],
        "target_requests": sum(s.requests for s in stats),
        "upload_bytes": sum(s.upload_bytes for s in stats),
        "throttled_429": sum(s.throttled for s in stats),
        "target_paced_s": sum(s.paced_s for s in stats),
        "rows": [(r["updated_at"].isoformat(), int(r["size"] or 0)) for r in rows],
    }


async def warm_up(graph: Any, user: str) -> None:
    """One small draft written until the sandbox admits it: a drained sandbox makes each
    mailbox's budgets at its first request, empty, so that request is refused (429) however
    well the client paced it. After this refusal the client's budgets are drained too
    (`MailboxGovernor.throttled`) and both sides count from the same empty start. The
    store's own writes are not retried on a 429 (GraphItemsStore.import_item: a write goes
    out once), so without this the first import would fail the pass. The draft lands in
    Drafts, outside the moved folders."""
    body = {"subject": "imap_bench warm-up", "body": {"contentType": "text", "content": "."}}
    for _ in range(50):
        try:
            await graph.send("POST", f"{user}/messages", json=body)
            return
        except TransientError as exc:
            await asyncio.sleep(exc.retry_after or 0.1)
    raise SystemExit("the sandbox kept refusing the warm-up write")


def steady(rows: list[tuple[str, int]]) -> tuple[float, float, int]:
    """(items/s, item bytes/s, items) from the copy that ends the first tenth to the last
    (the warm-up and the pass's fixed requests fall outside: graph_mover_bench.steady_rate)."""
    import datetime as dt

    stamps = sorted((dt.datetime.fromisoformat(t), size) for t, size in rows)
    start = max(1, len(stamps) // 10)
    if len(stamps) <= start:
        return 0.0, 0.0, 0
    span = (stamps[-1][0] - stamps[start - 1][0]).total_seconds()
    if span <= 0:
        return 0.0, 0.0, 0
    n = len(stamps) - start
    return n / span, sum(s for _, s in stamps[start:]) / span, n


def m365_part(base: Path, a: DovecotServer, small: ImapUser, large: ImapUser) -> dict[str, Any]:
    gm = graph_bench()
    state = base / "sandbox"
    with gm.served(state, "fast"):
        project, users = m365_setup(base, state, 2)
    if len(users) < 2:
        raise SystemExit(f"{len(users)} sandbox users with target mailboxes; 2 needed")
    out: dict[str, Any] = {}
    for name, user, source, scale in (
        ("upload", users[0], large, UPLOAD_SCALE),
        ("requests", users[1], small, REQUEST_SCALE),
    ):
        gm.set_scale(project, scale)
        with gm.served(state, "published", scale):
            got = asyncio.run(m365_move(project, user, endpoint_spec(a, source)))
        if "error" in got:
            out[name] = {"time_scale": scale, **got}
            continue
        items_s, bytes_s, n = steady(got.pop("rows"))
        per_item_upload = got["upload_bytes"] / got["copied"] if got["copied"] else 0.0
        per_item_requests = got["target_requests"] / got["copied"] if got["copied"] else 0.0
        got.update(
            time_scale=scale,
            steady_items=n,
            steady_items_per_s=round(items_s, 2),
            steady_item_bytes_per_s=round(bytes_s),
            # Steady upload (request bodies, what the budget counts) and requests per second:
            # the pass's per-item averages times the steady item rate.
            steady_upload_bytes_per_s=round(items_s * per_item_upload),
            steady_requests_per_s=round(items_s * per_item_requests, 2),
            whole_pass_requests_per_s=round(got["target_requests"] / got["elapsed_s"], 2),
            whole_pass_upload_bytes_per_s=round(got["upload_bytes"] / got["elapsed_s"]),
            elapsed_s=round(got["elapsed_s"], 2),
            client_cpu_s=round(got["client_cpu_s"], 2),
            target_paced_s=round(got["target_paced_s"], 2),
        )
        out[name] = got
    up, rq = out["upload"], out["requests"]
    upload_ceiling = MailboxLimits(time_scale=UPLOAD_SCALE).upload_rate
    request_ceiling = MailboxLimits(time_scale=REQUEST_SCALE).request_rate
    up["ceiling_upload_bytes_per_s"] = round(upload_ceiling)
    rq["ceiling_requests_per_s"] = round(request_ceiling, 2)
    # A pass that failed has no rate: null, with its error beside it (never a made-up figure).
    upload_fraction = (
        None if "error" in up else round(up["steady_upload_bytes_per_s"] / upload_ceiling, 3)
    )
    # Each small message costs one POST on the target mailbox: its items/s are requests/s
    # (the pass's few other requests, e.g. the folder tree, left out: conservative).
    request_fraction = (
        None if "error" in rq else round(rq["steady_items_per_s"] / request_ceiling, 3)
    )
    return {
        "upload_ceiling_fraction": upload_fraction,
        "request_ceiling_fraction": request_fraction,
        "upload": up,
        "requests": rq,
    }


# -- main ---------------------------------------------------------------------------------------------


def main() -> None:
    bench_start = time.perf_counter()
    dovecot, doveadm = find_binary("dovecot"), find_binary("doveadm")
    if dovecot is None or doveadm is None:
        raise SystemExit("Dovecot is not installed (apt-get install dovecot-core dovecot-imapd)")
    a, b = DovecotServer(dovecot, doveadm), DovecotServer(dovecot, doveadm)
    with tempfile.TemporaryDirectory(prefix="coexist-imap-bench-") as tmp:
        base = Path(tmp)
        try:
            a.start()
            b.start()
            fill_start = time.perf_counter()
            small, large = a.new_user("small"), a.new_user("large")
            small_bytes = fill_maildir(a, small, "small", [SMALL_BYTES] * SMALL_ITEMS)
            large_bytes = fill_maildir(a, large, "large", [LARGE_BYTES] * LARGE_ITEMS)
            for u in (small, large):
                index(a, u)
            fill_s = time.perf_counter() - fill_start
            small_part = versus_doveadm(base, a, b, small, small_bytes, "small")
            large_part = versus_doveadm(base, a, b, large, large_bytes, "large")
            rss = (
                {"peak_rss_mb": None} if os.environ.get("BENCH_SKIP_RSS") else rss_part(base, a, b)
            )
            m365 = {} if os.environ.get("BENCH_SKIP_M365") else m365_part(base, a, small, large)
        finally:
            a.stop()
            b.stop()
    print(
        json.dumps(
            {
                "benchmark": "imap",
                "quick": QUICK,
                "imap_vs_doveadm_ratio": {
                    "small": small_part["imap_vs_doveadm_ratio"],
                    "large": large_part["imap_vs_doveadm_ratio"],
                },
                "upload_ceiling_fraction": m365.get("upload_ceiling_fraction"),
                "request_ceiling_fraction": m365.get("request_ceiling_fraction"),
                "peak_rss_mb": rss["peak_rss_mb"],
                "imap_to_imap": {
                    "small": {"item_bytes": SMALL_BYTES, **small_part},
                    "large": {"item_bytes": LARGE_BYTES, **large_part},
                    "doveadm_command": "doveadm -o imapc_host=... -o imapc_port=... "
                    "-o imapc_ssl=imaps -o imapc_user=... -o imapc_password=... "
                    "-o ssl_client_ca_file=... "
                    + " ".join(f"-o '{o}'" for o in DOVEADM_IMAPC)
                    + " backup -R -u <target> imapc:",
                },
                "imap_to_m365": {
                    "profile": "published",
                    **{
                        k: v
                        for k, v in m365.items()
                        if k not in ("upload_ceiling_fraction", "request_ceiling_fraction")
                    },
                },
                "memory": rss,
                "fill_s": round(fill_s, 1),
                "bench_s": round(time.perf_counter() - bench_start, 1),
            }
        )
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--move":
        move_in_child(Path(sys.argv[2]))
    else:
        main()
