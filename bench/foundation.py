"""Foundation benchmark: what the daemon costs over its own building blocks.

One run starts a private 3-node LocalCluster and measures, next to baselines
taken in the same run on the same machine:

* raw python-tdb fetch/store (same hash size and flags as ctdb.storage.ltdb.LocalDb)
  against fetch/store through the daemon, 1 client and 8 client processes;
* a trivial uvloop Unix-socket server speaking the same length-prefixed
  msgpack framing (driven by the very same `ctdb.client.Client`), the cost
  floor of any Python daemon, against the same client talking to ctdbd;
* a migration ring (CTDB's fetch_ring): nodes 0, 1, 2, 0, ... in turn
  fetch_lock one record, increment it and store_unlock it;
* `ping` to the local node and to node 1, rtt measured inside the daemon;
* the wall time of a one-shot `ctdbtool pnn` against `python -c pass`.

Writes results.json, foundation.png and summary.md into --out. Targets are
reported as met or not; nothing here asserts.

    .venv/bin/python -m bench.foundation [--quick] [--out DIR] [--transport tcp|vs]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing as mp
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import report
from tools.cluster import free_port

REPO = Path(__file__).resolve().parent.parent
DB = "bench_foundation"
VALUE_SIZE = 64
N_KEYS = 1000
N_CLIENTS = 8


say = report.progress("foundation")


@dataclass(frozen=True)
class Plan:
    """Iteration counts and durations; --quick shrinks them."""

    tdb_ops: int
    seconds: float  # per measurement window
    windows: int  # throughput = best window (the machine may be shared)
    ring: int  # increments
    pings: int
    oneshot: int  # process launches per command

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(tdb_ops=20_000, seconds=0.25, windows=2, ring=300, pings=300, oneshot=5)
        return cls(tdb_ops=200_000, seconds=1.0, windows=5, ring=3000, pings=2000, oneshot=30)


def keys() -> list[bytes]:
    return [b"key-%06d" % i for i in range(N_KEYS)]


def value(i: int = 0) -> bytes:
    return (b"v%d-" % i).ljust(VALUE_SIZE, b"x")


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def timed_loop(step: Callable[[int], object], seconds: float, batch: int = 200) -> float:
    """Call step(i) in batches until `seconds` have passed; returns ops/s."""
    n = 0
    clock = time.perf_counter
    start = clock()
    deadline = start + seconds
    while True:
        for i in range(n, n + batch):
            step(i)
        n += batch
        now = clock()
        if now >= deadline:
            return n / (now - start)


def best_of(windows: list[float]) -> dict[str, Any]:
    return {"best": max(windows), "median": statistics.median(windows), "windows": windows}


# -- baseline: python-tdb in this process -----------------------------------------------


def bench_tdb(plan: Plan, workdir: Path) -> dict[str, dict[str, Any]]:
    import tdb

    from ctdb.storage.ltdb import DEFAULT_HASH_SIZE, TDB_MUTEX_LOCKING, Record

    path = workdir / "baseline.tdb"
    # Exactly how LocalDb opens a volatile database.
    t = tdb.Tdb(
        str(path), DEFAULT_HASH_SIZE, tdb.NOSYNC | TDB_MUTEX_LOCKING, os.O_RDWR | os.O_CREAT, 0o600
    )
    try:
        ks = keys()
        packed = [Record(1, 0, value(i)).pack() for i in range(N_KEYS)]
        for k, v in zip(ks, packed, strict=True):
            t.store(k, v, tdb.REPLACE)
        n = plan.tdb_ops
        store, get, replace = t.store, t.get, tdb.REPLACE
        stores, fetches = [], []
        for _ in range(plan.windows):
            start = time.perf_counter()
            for i in range(n):
                store(ks[i % N_KEYS], packed[i % N_KEYS], replace)
            stores.append(n / (time.perf_counter() - start))
            start = time.perf_counter()
            for i in range(n):
                get(ks[i % N_KEYS])
            fetches.append(n / (time.perf_counter() - start))
    finally:
        t.close()
        path.unlink(missing_ok=True)
    return {"fetch": best_of(fetches), "store": best_of(stores)}


# -- baseline: trivial uvloop server with the client protocol's framing -------------------


def echo_server_main(path: str, ready: Any) -> None:
    """A trivial daemon: decode each frame, answer `[reqid, 0, result]`.

    `hello` gets the fields a Client needs; every other request gets its
    `key` argument back, so `Client.fetch` works against it unchanged.
    """
    import msgpack
    import uvloop

    from transport.framing import FrameReader, frame

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.reader = FrameReader(16 << 20)

        def data_received(self, data: bytes) -> None:
            out = []
            for raw in self.reader.feed(data):
                reqid, op, args = msgpack.unpackb(raw, raw=False)
                result = {"version": 1, "pnn": 0, "nodes": 1} if op == "hello" else args.get("key")
                out.append(frame(msgpack.packb([reqid, 0, result], use_bin_type=True)))
            self.transport.write(b"".join(out))  # type: ignore[attr-defined]

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_unix_server(Echo, path)
        ready.set()
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


def raw_client(path: str) -> tuple[Callable[[int], object], Callable[[], None]]:
    """The leanest blocking client: one frame out, one frame back."""
    import msgpack

    from transport.framing import LENGTH

    ks = keys()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    packb, unpackb = msgpack.packb, msgpack.unpackb
    pack_len, unpack_len = LENGTH.pack, LENGTH.unpack

    def step(i: int) -> object:
        payload = packb([i + 1, "fetch", {"db": DB, "key": ks[i % N_KEYS]}], use_bin_type=True)
        sock.sendall(pack_len(len(payload)) + payload)
        buf = sock.recv(65536)
        while len(buf) < 4 or len(buf) < 4 + unpack_len(buf[:4])[0]:
            buf += sock.recv(65536)
        return unpackb(buf[4:], raw=False)

    return step, sock.close


def make_step(
    kind: str, path: str, offset: int = 0
) -> tuple[Callable[[int], object], Callable[[], None]]:
    """(step, close) for `kind`: 'raw' (minimal client), 'fetch' or 'store' (Client)."""
    if kind == "raw":
        return raw_client(path)
    from ctdb.client import Client

    ks = keys()
    v = value()
    c = Client(path)
    fetch, store = c.fetch, c.store
    if kind == "fetch":
        return (lambda i: fetch(DB, ks[(i + offset) % N_KEYS])), c.close
    return (lambda i: store(DB, ks[(i + offset) % N_KEYS], v)), c.close


Task = tuple[str, str, str]  # (result name, kind, socket path)


def interleaved(tasks: list[Task], seconds: float, windows: int) -> dict[str, dict[str, Any]]:
    """One client per task in this process; the tasks take turns, window by window,
    so a baseline and the figure it is compared with see the same machine load."""
    steps = {name: make_step(kind, path) for name, kind, path in tasks}
    try:
        for step, _ in steps.values():
            for i in range(200):  # warm up
                step(i)
        rates: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(windows):
            for name, (step, _) in steps.items():
                rates[name].append(timed_loop(step, seconds))
    finally:
        for _, close in steps.values():
            close()
    return {name: best_of(r) for name, r in rates.items()}


def worker_main(
    tasks: list[Task], seconds: float, windows: int, offset: int, barrier: Any, out: Any
) -> None:
    """One of the concurrent client processes: runs every task, window by window."""
    steps: dict[str, tuple[Callable[[int], object], Callable[[], None]]] = {}
    try:
        steps = {name: make_step(kind, path, offset) for name, kind, path in tasks}
        for step, _ in steps.values():
            for i in range(200):  # warm up
                step(i)
        clock = time.perf_counter
        spans: dict[str, list[tuple[int, float, float]]] = {name: [] for name in steps}
        for _ in range(windows):
            for name, (step, _) in steps.items():
                barrier.wait(60)
                start = clock()
                deadline = start + seconds
                n = 0
                while True:
                    for i in range(n, n + 100):
                        step(i)
                    n += 100
                    end = clock()
                    if end >= deadline:
                        break
                spans[name].append((n, start, end))
        out.put((spans, None))
    except Exception as exc:  # reported to the parent, never lost
        barrier.abort()
        out.put(({}, repr(exc)))
    finally:
        for _, close in steps.values():
            close()


def concurrent(
    tasks: list[Task], seconds: float, windows: int, n: int = N_CLIENTS
) -> dict[str, dict[str, Any]]:
    """Total ops/s of `n` client processes running each task at once, the tasks
    taking turns window by window.

    All processes start each window together (barrier); a window's rate is
    all operations over the span from the first start to the last end.
    """
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n)
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=worker_main,
            args=(tasks, seconds, windows, i * (N_KEYS // n), barrier, out),
            daemon=True,
        )
        for i in range(n)
    ]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=300) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
    errors = [r[1] for r in results if r[1]]
    if errors:
        raise RuntimeError(f"{len(errors)} client processes failed: {errors[0]}")
    summary = {}
    for name, _, _ in tasks:
        rates = []
        for w in range(windows):
            spans = [r[0][name][w] for r in results]
            total = sum(sp[0] for sp in spans)
            rates.append(total / (max(sp[2] for sp in spans) - min(sp[1] for sp in spans)))
        summary[name] = best_of(rates)
    return summary


# -- through the cluster ---------------------------------------------------------------------


def bench_ring(cluster: Any, increments: int) -> dict[str, Any]:
    """fetch_ring: node k holds the token when the counter is k mod 3.

    One client per node, driven in token order from this process, so each
    increment is exactly one migration to the next node (no polling traffic).
    """
    clients = [cluster.client(p) for p in range(cluster.size)]
    key = b"ring-counter"
    try:
        clients[0].store(DB, key, b"0")
        lat: list[float] = []
        out_of_order = 0
        clock = time.perf_counter
        start = clock()
        for i in range(increments):
            k = i % cluster.size
            c = clients[k]
            t0 = clock()
            counter = int(c.fetch_lock(DB, key) or b"0")
            if counter % cluster.size != k:
                out_of_order += 1
            c.store_unlock(DB, key, b"%d" % (counter + 1))
            lat.append(clock() - t0)
        elapsed = clock() - start
        final = int(clients[0].fetch(DB, key) or b"0")
    finally:
        for c in clients:
            c.close()
    return {
        "increments": increments,
        "increments_per_s": increments / elapsed,
        "p50_s": pct(lat, 50),
        "p99_s": pct(lat, 99),
        "mean_s": statistics.fmean(lat),
        "final_counter": final,
        "counter_consistent": final == increments and out_of_order == 0,
    }


def bench_ping(cluster: Any, pnn: int, n: int) -> dict[str, Any]:
    with cluster.client(0) as c:
        for _ in range(min(100, n)):
            c.call("ping", pnn=pnn)
        rtts: list[float] = []
        walls: list[float] = []
        clock = time.perf_counter
        for _ in range(n):
            t0 = clock()
            r = c.call("ping", pnn=pnn)
            walls.append(clock() - t0)
            rtts.append(r["rtt"])
    return {
        "count": n,
        "p50_s": pct(rtts, 50),
        "p99_s": pct(rtts, 99),
        "client_wall_p50_s": pct(walls, 50),
        "client_wall_p99_s": pct(walls, 99),
    }


def ctdbtool_cmd() -> list[str]:
    script = Path(sys.executable).parent / "ctdbtool"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "tools.ctdbtool"]


def bench_oneshot(cmds: list[list[str]], n: int, env: dict[str, str]) -> list[dict[str, Any]]:
    """Wall time of launching each command `n` times, interleaved so that every
    command sees the same machine load."""
    walls: list[list[float]] = [[] for _ in cmds]
    for i in range(n + 1):
        for cmd, w in zip(cmds, walls, strict=True):
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                err = proc.stderr.decode(errors="replace")[-400:]
                raise RuntimeError(f"{cmd} failed: {err}")
            if i:  # the first launch warms the page cache
                w.append(wall)
    return [
        {
            "cmd": cmd,
            "runs": n,
            "p50_s": pct(w, 50),
            "p90_s": pct(w, 90),
            "min_s": min(w),
            "max_s": max(w),
            "walls_s": w,
        }
        for cmd, w in zip(cmds, walls, strict=True)
    ]


# -- plumbing --------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    import msgpack
    import uvloop

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "uvloop": uvloop.__version__,
        "msgpack": ".".join(map(str, msgpack.version)),
        "git_commit": commit,
    }


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    unit: str
    higher_is_better: bool
    baseline: str | None  # key in the baselines table
    target: float | None


METRICS = [
    Metric("fetch_1c_per_s", "fetch, 1 client", "ops/s", True, "loopback_rtt_1c_per_s", 20_000),
    Metric("store_1c_per_s", "store, 1 client", "ops/s", True, "loopback_rtt_1c_per_s", None),
    Metric("fetch_8c_per_s", "fetch, 8 clients", "ops/s", True, "loopback_rtt_8c_per_s", 60_000),
    Metric("store_8c_per_s", "store, 8 clients", "ops/s", True, "loopback_rtt_8c_per_s", None),
    Metric("ring_increments_per_s", "migration ring", "incr/s", True, None, None),
    Metric("ring_p50_s", "migration p50", "s", False, "loopback_rtt_1c_s", 0.001),
    Metric("ring_p99_s", "migration p99", "s", False, "loopback_rtt_1c_s", None),
    Metric("ping_remote_p50_s", "ping node 1 p50", "s", False, "loopback_rtt_1c_s", 0.00035),
    Metric("ping_remote_p99_s", "ping node 1 p99", "s", False, "loopback_rtt_1c_s", None),
    Metric("ping_local_p50_s", "ping local p50", "s", False, "loopback_rtt_1c_s", None),
    Metric("ping_local_p99_s", "ping local p99", "s", False, "loopback_rtt_1c_s", None),
    Metric(
        "ping_remote_client_p50_s",
        "ping node 1, client wall p50",
        "s",
        False,
        "loopback_rtt_1c_s",
        None,
    ),
    Metric(
        "ping_local_client_p50_s",
        "ping local, client wall p50",
        "s",
        False,
        "loopback_rtt_1c_s",
        None,
    ),
    Metric("ctdbtool_pnn_p50_s", "ctdbtool pnn p50", "s", False, "python_startup_p50_s", 0.030),
    Metric(
        "ctdbtool_pnn_nopyc_p50_s",
        "ctdbtool pnn p50, no project .pyc",
        "s",
        False,
        "python_startup_p50_s",
        None,
    ),
]

BASELINE_LABELS = {
    "tdb_fetch_per_s": "python-tdb fetch (in process)",
    "tdb_store_per_s": "python-tdb store (in process)",
    "loopback_rtt_1c_per_s": "uvloop echo, minimal client",
    "loopback_rtt_8c_per_s": "uvloop echo, 8 Client processes",
    "loopback_rtt_1c_s": "uvloop echo round trip",
    "echo_client_1c_per_s": "uvloop echo, ctdb.client.Client",
    "python_startup_p50_s": "python -c pass p50",
}


def evaluate(figures: dict[str, float], baselines: dict[str, float]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for m in METRICS:
        v = figures[m.name]
        base = baselines.get(m.baseline) if m.baseline else None
        entry: dict[str, Any] = {
            "label": m.label,
            "value": v,
            "unit": m.unit,
            "higher_is_better": m.higher_is_better,
            "baseline": m.baseline,
            "baseline_value": base,
            "ratio_to_baseline": (v / base) if base else None,
            "target": m.target,
            "target_op": None if m.target is None else (">=" if m.higher_is_better else "<="),
            "met": None,
        }
        if m.target is not None:
            entry["met"] = v >= m.target if m.higher_is_better else v <= m.target
        out[m.name] = entry
    # python-tdb ratios: what is left of the storage engine's speed through the daemon
    for name, tdb_name in (
        ("fetch_1c_per_s", "tdb_fetch_per_s"),
        ("store_1c_per_s", "tdb_store_per_s"),
        ("fetch_8c_per_s", "tdb_fetch_per_s"),
        ("store_8c_per_s", "tdb_store_per_s"),
    ):
        out[name]["ratio_to_tdb"] = figures[name] / baselines[tdb_name]
    for name in ("fetch_1c_per_s", "store_1c_per_s"):
        out[name]["ratio_to_echo_same_client"] = figures[name] / baselines["echo_client_1c_per_s"]
    return out


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v * 1e3:.3f} ms"
    return f"{v:,.0f} {unit}"


def load_warning(machine: dict[str, Any]) -> list[str]:
    """A note when other work shared the CPUs: throughput and tails suffer first."""
    load = max(machine["loadavg_at_start"][0], machine["loadavg"][0])
    if load < 0.5 * (machine["cpus"] or 1):
        return []
    return [
        f"**Busy host**: 1-minute load average {machine['loadavg_at_start'][0]:.1f} at start, "
        f"{machine['loadavg'][0]:.1f} at end, on {machine['cpus']} CPUs. Throughput is the "
        "best of several windows and baselines take turns with the figures they are compared "
        "with, but tails (p99) and absolute rates are pessimistic.",
        "",
    ]


def write_summary(path: Path, results: dict[str, Any]) -> None:
    lines = [
        "# Foundation benchmark",
        "",
        f"{results['started']} - transport `{results['transport']}`"
        f"{' - quick' if results['quick'] else ''} - "
        f"{results['machine']['cpus']} CPUs ({results['machine']['cpu']}), "
        f"Python {results['machine']['python']}",
        "",
        f"Command: `{results['command']}`",
        "",
        *load_warning(results["machine"]),
        "| metric | value | baseline | ratio | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for e in results["metrics"].values():
        base = (
            f"{fmt(e['baseline_value'], e['unit'])} ({BASELINE_LABELS[e['baseline']]})"
            if e["baseline"]
            else "-"
        )
        ratio = f"{e['ratio_to_baseline']:.2f}x" if e["ratio_to_baseline"] else "-"
        target = f"{e['target_op']} {fmt(e['target'], e['unit'])}" if e["target"] else "-"
        met = "-" if e["met"] is None else ("yes" if e["met"] else "**no**")
        lines.append(
            f"| {e['label']} | {fmt(e['value'], e['unit'])} | {base} | {ratio} | {target} | {met} |"
        )
    b = results["baselines"]
    m = results["metrics"]
    lines += [
        "",
        "Storage engine for comparison (python-tdb in one process, same hash size and flags "
        f"as LocalDb): fetch {b['tdb_fetch_per_s']:,.0f}/s, store {b['tdb_store_per_s']:,.0f}/s; "
        f"through the daemon a single client gets {m['fetch_1c_per_s']['ratio_to_tdb']:.1%} "
        f"of the fetch rate and {m['store_1c_per_s']['ratio_to_tdb']:.1%} of the store rate.",
        "",
        "The same `ctdb.client.Client` against the trivial echo server: "
        f"{b['echo_client_1c_per_s']:,.0f} round trips/s; ctdbd fetch reaches "
        f"{m['fetch_1c_per_s']['ratio_to_echo_same_client']:.2f}x of that (the rest of the gap "
        "to the minimal client is the client library).",
        "",
        f"Migration ring counter consistent: {results['details']['ring']['counter_consistent']}."
        " Ping rtt is measured inside node 0's daemon; ratio columns of latencies are "
        "value / baseline (lower is better), of rates value / baseline (higher is better).",
        "",
    ]
    path.write_text("\n".join(lines))


def plot(path: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = results["figures"]
    b = results["baselines"]
    base_c, ours_c = "#9e9e9e", "#1f77b4"
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.5), gridspec_kw={"width_ratios": [3, 2, 1]})

    ax = axes[0]
    bars = [
        ("tdb fetch\n(in proc)", b["tdb_fetch_per_s"], base_c),
        ("tdb store\n(in proc)", b["tdb_store_per_s"], base_c),
        ("echo, min.\nclient", b["loopback_rtt_1c_per_s"], base_c),
        ("echo,\nClient", b["echo_client_1c_per_s"], base_c),
        ("fetch\n1 client", f["fetch_1c_per_s"], ours_c),
        ("store\n1 client", f["store_1c_per_s"], ours_c),
        ("echo\n8 Clients", b["loopback_rtt_8c_per_s"], base_c),
        ("fetch\n8 clients", f["fetch_8c_per_s"], ours_c),
        ("store\n8 clients", f["store_8c_per_s"], ours_c),
    ]
    xs = range(len(bars))
    ax.bar(xs, [v for _, v, _ in bars], color=[c for _, _, c in bars])
    ax.set_xticks(list(xs), [n for n, _, _ in bars], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("operations / s (log)")
    ax.set_title("Throughput: baselines (grey) vs through ctdbd (blue)")
    for x, (_, v, _) in zip(xs, bars, strict=True):
        ax.text(x, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=7)
    ax.axhline(20_000, color="tab:orange", ls="--", lw=1, label="target 1 client 20k/s")
    ax.axhline(60_000, color="tab:red", ls="--", lw=1, label="target 8 clients 60k/s")
    ax.legend(fontsize=7, loc="lower left")

    ax = axes[1]
    lat = [
        ("echo rtt", b["loopback_rtt_1c_s"], base_c),
        ("ping local\np50", f["ping_local_p50_s"], ours_c),
        ("ping node1\np50", f["ping_remote_p50_s"], ours_c),
        ("ping node1\np99", f["ping_remote_p99_s"], "#aec7e8"),
        ("migration\np50", f["ring_p50_s"], ours_c),
        ("migration\np99", f["ring_p99_s"], "#aec7e8"),
    ]
    xs = range(len(lat))
    ax.bar(xs, [v * 1e3 for _, v, _ in lat], color=[c for _, _, c in lat])
    ax.set_xticks(list(xs), [n for n, _, _ in lat], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms (log)")
    ax.set_title("Latency (ping rtt inside the daemon)")
    for x, (_, v, _) in zip(xs, lat, strict=True):
        ax.text(x, v * 1e3, f"{v * 1e3:.3f}", ha="center", va="bottom", fontsize=7)
    ax.axhline(0.35, color="tab:orange", ls="--", lw=1, label="ping target 0.35 ms")
    ax.axhline(1.0, color="tab:red", ls="--", lw=1, label="migration target 1 ms")
    ax.legend(fontsize=7)

    ax = axes[2]
    one = [
        ("python\n-c pass", b["python_startup_p50_s"], base_c),
        ("ctdbtool\npnn", f["ctdbtool_pnn_p50_s"], ours_c),
    ]
    ax.bar([0, 1], [v * 1e3 for _, v, _ in one], color=[c for _, _, c in one])
    ax.set_xticks([0, 1], [n for n, _, _ in one], fontsize=8)
    ax.axhline(30, color="tab:red", ls="--", lw=1, label="target 30 ms")
    for x, (_, v, _) in enumerate(one):
        ax.text(x, v * 1e3, f"{v * 1e3:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("ms (p50 wall)")
    ax.set_title("One-shot process")
    ax.legend(fontsize=7)

    fig.suptitle(
        f"ctdb foundation benchmark ({results['transport']}, "
        f"{results['machine']['cpus']} CPUs, {results['started']})",
        fontsize=10,
    )
    report.save_figure(fig, path)


# -- the run ---------------------------------------------------------------------------------


def run(ns: argparse.Namespace) -> dict[str, Any]:
    from tools.cluster import LocalCluster

    plan = Plan.make(ns.quick)
    # Daemons, client processes and ctdbtool all run the code of this checkout.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    )
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    load_at_start = list(os.getloadavg())
    t_start = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="ctdb-bench-foundation-"))
    baselines: dict[str, float] = {}
    figures: dict[str, float] = {}
    details: dict[str, Any] = {}
    echo: Any = None
    try:
        say("baseline: python-tdb in this process")
        r = bench_tdb(plan, workdir)
        details["tdb"] = r
        baselines["tdb_fetch_per_s"] = r["fetch"]["best"]
        baselines["tdb_store_per_s"] = r["store"]["best"]
        say(f"  tdb fetch {r['fetch']['best']:,.0f}/s, store {r['store']['best']:,.0f}/s")

        say("baseline: a trivial uvloop server with the same framing (kept up all run)")
        ctx = mp.get_context("spawn")
        echo_path = str(workdir / "echo.socket")
        ready = ctx.Event()
        echo = ctx.Process(target=echo_server_main, args=(echo_path, ready), daemon=True)
        echo.start()
        if not ready.wait(30):
            raise RuntimeError("echo server did not start")

        addresses = [f"{ns.base}.{i + 1}" for i in range(3)]
        port = ns.port or free_port(addresses)
        cluster = LocalCluster(
            workdir / "cluster",
            size=3,
            transport=ns.transport,
            port=port,
            base=ns.base,
            log_level="WARNING",
        )
        say(f"starting a 3-node {ns.transport} cluster on {ns.base}.1-3 port {port}")
        try:
            cluster.up(timeout=60, progress=lambda m: say(f"  {m}"))
            sock0 = cluster.socket(0)
            with cluster.client(0) as c:
                c.attach(DB)
                for i, k in enumerate(keys()):  # makes node 0 the dmaster of every key
                    c.store(DB, k, value(i))
                for k in keys():
                    c.fetch(DB, k)

            say(
                "1 client, taking turns per window: echo (minimal client), echo (Client), "
                "ctdbd fetch, ctdbd store"
            )
            r = interleaved(
                [
                    ("echo_minimal_client", "raw", echo_path),
                    ("echo_client", "fetch", echo_path),
                    ("fetch_1c", "fetch", sock0),
                    ("store_1c", "store", sock0),
                ],
                plan.seconds,
                plan.windows,
            )
            details.update(r)
            rate = r["echo_minimal_client"]["best"]
            baselines["loopback_rtt_1c_per_s"] = rate
            baselines["loopback_rtt_1c_s"] = 1 / rate
            baselines["echo_client_1c_per_s"] = r["echo_client"]["best"]
            figures["fetch_1c_per_s"] = r["fetch_1c"]["best"]
            figures["store_1c_per_s"] = r["store_1c"]["best"]
            say(
                f"  echo minimal {rate:,.0f}/s ({1e6 / rate:.1f} us/rt), "
                f"echo Client {baselines['echo_client_1c_per_s']:,.0f}/s, "
                f"fetch {figures['fetch_1c_per_s']:,.0f}/s, "
                f"store {figures['store_1c_per_s']:,.0f}/s"
            )

            say(f"{N_CLIENTS} client processes, taking turns: echo, ctdbd fetch, ctdbd store")
            r = concurrent(
                [
                    ("echo_8c", "fetch", echo_path),
                    ("fetch_8c", "fetch", sock0),
                    ("store_8c", "store", sock0),
                ],
                plan.seconds,
                plan.windows,
            )
            details.update(r)
            baselines["loopback_rtt_8c_per_s"] = r["echo_8c"]["best"]
            figures["fetch_8c_per_s"] = r["fetch_8c"]["best"]
            figures["store_8c_per_s"] = r["store_8c"]["best"]
            say(
                f"  echo {baselines['loopback_rtt_8c_per_s']:,.0f}/s, "
                f"fetch {figures['fetch_8c_per_s']:,.0f}/s, "
                f"store {figures['store_8c_per_s']:,.0f}/s"
            )

            say(f"migration ring: {plan.ring} increments over 3 nodes")
            ring = bench_ring(cluster, plan.ring)
            details["ring"] = ring
            figures["ring_increments_per_s"] = ring["increments_per_s"]
            figures["ring_p50_s"] = ring["p50_s"]
            figures["ring_p99_s"] = ring["p99_s"]
            say(
                f"  {ring['increments_per_s']:,.0f} incr/s, p50 {ring['p50_s'] * 1e3:.3f} ms, "
                f"p99 {ring['p99_s'] * 1e3:.3f} ms, consistent {ring['counter_consistent']}"
            )

            say(f"ping: {plan.pings} to node 1 and to node 0, through node 0")
            remote = bench_ping(cluster, 1, plan.pings)
            local = bench_ping(cluster, 0, plan.pings)
            details["ping_remote"], details["ping_local"] = remote, local
            figures["ping_remote_p50_s"] = remote["p50_s"]
            figures["ping_remote_p99_s"] = remote["p99_s"]
            figures["ping_local_p50_s"] = local["p50_s"]
            figures["ping_local_p99_s"] = local["p99_s"]
            figures["ping_remote_client_p50_s"] = remote["client_wall_p50_s"]
            figures["ping_local_client_p50_s"] = local["client_wall_p50_s"]
            say(
                f"  node 1 p50 {remote['p50_s'] * 1e3:.3f} ms p99 {remote['p99_s'] * 1e3:.3f} ms;"
                f" local p50 {local['p50_s'] * 1e3:.3f} ms p99 {local['p99_s'] * 1e3:.3f} ms"
            )

            say(f"one-shot: ctdbtool pnn and python -c pass, x{plan.oneshot} interleaved")
            # As installed: bytecode cached (in a private prefix, so the checkout stays
            # clean), even when this shell sets PYTHONDONTWRITEBYTECODE.
            env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
            env.update(CTDB_SOCKET=sock0, PYTHONPYCACHEPREFIX=str(workdir / "pycache"))
            # ...and as this checkout runs it under PYTHONDONTWRITEBYTECODE=1: the
            # project's modules are compiled from source at every start.
            nopyc = {k: v for k, v in env.items() if k != "PYTHONPYCACHEPREFIX"}
            nopyc["PYTHONDONTWRITEBYTECODE"] = "1"
            tool, py = bench_oneshot(
                [ctdbtool_cmd() + ["pnn"], [sys.executable, "-c", "pass"]], plan.oneshot, env
            )
            (cold,) = bench_oneshot([ctdbtool_cmd() + ["pnn"]], max(3, plan.oneshot // 3), nopyc)
            details["ctdbtool_pnn"], details["python_startup"] = tool, py
            details["ctdbtool_pnn_no_bytecode_cache"] = cold
            details["inherited_PYTHONDONTWRITEBYTECODE"] = os.environ.get("PYTHONDONTWRITEBYTECODE")
            figures["ctdbtool_pnn_p50_s"] = tool["p50_s"]
            figures["ctdbtool_pnn_nopyc_p50_s"] = cold["p50_s"]
            baselines["python_startup_p50_s"] = py["p50_s"]
            say(
                f"  ctdbtool pnn p50 {tool['p50_s'] * 1e3:.1f} ms "
                f"({cold['p50_s'] * 1e3:.1f} ms with PYTHONDONTWRITEBYTECODE=1), "
                f"python -c pass p50 {py['p50_s'] * 1e3:.1f} ms"
            )
            with cluster.client(0) as c:
                details["daemon_statistics_node0"] = c.call("statistics")
        finally:
            say("stopping the cluster")
            cluster.down()
    finally:
        if echo is not None:
            echo.terminate()
            echo.join(10)
        shutil.rmtree(workdir, ignore_errors=True)

    return {
        "benchmark": "foundation",
        "command": " ".join([Path(sys.executable).name, "-m", "bench.foundation", *sys.argv[1:]]),
        "argv": sys.argv,
        "started": started,
        "duration_s": time.perf_counter() - t_start,
        "quick": ns.quick,
        "transport": ns.transport,
        "cluster": {"nodes": 3, "base": ns.base, "port": port},
        "plan": plan.__dict__,
        "machine": {**machine_info(), "loadavg_at_start": load_at_start},
        "baselines": baselines,
        "figures": figures,
        "metrics": evaluate(figures, baselines),
        "details": details,
    }


def main(argv: list[str] | None = None) -> int:
    parser = report.parser("foundation", __doc__)
    parser.add_argument("--quick", action="store_true", help="small counts: whole run < 30 s")
    parser.add_argument("--transport", choices=["tcp", "vs"], default="tcp")
    parser.add_argument(
        "--base", default="127.0.77", help="first three octets of node addresses (127.0.77)"
    )
    parser.add_argument("--port", type=int, default=0, help="cluster port (default: a free one)")
    ns = parser.parse_args(argv)

    results = run(ns)
    say(f"done in {results['duration_s']:.1f} s")
    for e in results["metrics"].values():
        if e["met"] is not None:
            say(
                f"  {'MET ' if e['met'] else 'MISS'} {e['label']}: {fmt(e['value'], e['unit'])}"
                f" (target {e['target_op']} {fmt(e['target'], e['unit'])})"
            )
    report.write(ns.out, "foundation", results, write_summary, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
