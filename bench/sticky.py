"""StickyPindown on tcp: a contended record kept where it migrated, measured against no pin.

A record that several nodes' clients lock in turn migrates once per
acquisition (`tests/test_migration_storm.py`). With `StickyPindown` a
record that migrated to a node for its clients stays there that long
before another node's call takes it (CTDB's sticky records), so each visit
serves several acquisitions. The cost falls on the callers that wait for
the pin, and on workloads that pass a record strictly from node to node.

One 3-node tcp cluster; for each pin (0 first: the baseline of every ratio)
and each round, set on every node with `setvar`:

* `contended`: `--clients` processes, client i on node i % 3, each looping
  fetch_lock, +1, store_unlock on one key through its daemon for
  `--seconds`: increments/s, calls sent per acquisition (the daemons'
  `calls_sent`), fairness (fewest over most increments of one client),
  acquire p50/p99. Checked: the counter grew by the increments acknowledged.
* `ring`: each client in turn, nodes 0, 1, 2, 0, ... (the record must move
  at every step; what CTDB's fetch_ring does): increments/s.

    .venv/bin/python -m bench.sticky [--pins 0,2,10] [--clients 3]
        [--seconds 4] [--rounds 2] [--quick] [--out DIR]

Writes results.json, sticky.png and summary.md into --out; progress goes to
stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.foundation import load_warning, machine_info, pct
from ctdb.client import Client
from tools.cluster import LocalCluster, free_port

REPO = Path(__file__).resolve().parent.parent
DB = "sticky"
KEY = b"counter"


say = report.progress("sticky")


def _loop(socket: str, start: float, seconds: float, out: Any) -> None:
    """One client's fetch_lock, +1, store_unlock loop (a process of its own)."""
    with Client(socket) as c:
        while time.time() < start:
            time.sleep(0.0005)
        latencies: list[float] = []
        end = start + seconds
        while time.time() < end:
            t0 = time.perf_counter()
            value = int(c.fetch_lock(DB, KEY) or b"0")
            latencies.append(time.perf_counter() - t0)
            c.store_unlock(DB, KEY, b"%d" % (value + 1))
    out.put((len(latencies), pct(latencies, 50), pct(latencies, 99)))


def _counter(admin: list[Client]) -> int:
    return int(admin[0].fetch(DB, KEY) or b"0")


def _calls(admin: list[Client]) -> int:
    return sum(int(a.call("statistics").get("calls_sent", 0)) for a in admin)


def contended(
    cluster: LocalCluster, admin: list[Client], clients: int, seconds: float
) -> dict[str, Any]:
    before, calls = _counter(admin), _calls(admin)
    ctx = mp.get_context("fork")
    out: Any = ctx.Queue()
    start = time.time() + 0.5
    procs = [
        ctx.Process(target=_loop, args=(cluster.socket(i % 3), start, seconds, out))
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    counts = [r[0] for r in results]
    total = sum(counts)
    grew = _counter(admin) - before
    return {
        "per_s": total / seconds,
        "calls_per_acquisition": (_calls(admin) - calls) / max(total, 1),
        "fairness": min(counts) / max(max(counts), 1),
        "per_client": counts,
        "p50_us": statistics.median(r[1] for r in results) * 1e6,
        "p99_us": max(r[2] for r in results) * 1e6,
        "counter_ok": grew == total,
    }


def ring(admin: list[Client], seconds: float) -> dict[str, Any]:
    """Nodes take the record in turn: every step migrates it."""
    before = _counter(admin)
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        c = admin[n % 3]
        value = int(c.fetch_lock(DB, KEY) or b"0")
        c.store_unlock(DB, KEY, b"%d" % (value + 1))
        n += 1
    return {"per_s": n / seconds, "counter_ok": _counter(admin) - before == n}


def measure(ns: argparse.Namespace, workdir: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    base = "127.0.153"
    cluster = LocalCluster(
        workdir / "tcp",
        transport="tcp",
        port=free_port([f"{base}.{i + 1}" for i in range(3)]),
        base=base,
        log_level="WARNING",
    )
    cluster.up(timeout=90)
    admin = [cluster.client(p) for p in range(3)]
    try:
        admin[0].attach(DB)
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            str(pin): {"contended": [], "ring": []} for pin in ns.pins
        }
        for r in range(ns.rounds):
            for pin in ns.pins:
                for a in admin:
                    a.call("setvar", name="StickyPindown", value=pin)
                c = contended(cluster, admin, ns.clients, ns.seconds)
                g = ring(admin, ns.seconds)
                runs[str(pin)]["contended"].append(c)
                runs[str(pin)]["ring"].append(g)
                say(
                    f"round {r + 1}, pin {pin} ms: {c['per_s']:,.0f} increments/s, "
                    f"{c['calls_per_acquisition']:.2f} calls/acquisition, fairness "
                    f"{c['fairness']:.2f}, p50 {c['p50_us']:.0f} us, p99 {c['p99_us']:.0f} us; "
                    f"ring {g['per_s']:,.0f}/s"
                )
        return runs
    finally:
        for a in admin:
            a.close()
        cluster.down()


def run(ns: argparse.Namespace) -> dict[str, Any]:
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    load_at_start = list(os.getloadavg())
    workdir = Path(tempfile.mkdtemp(prefix="ctdb-bench-sticky-"))
    try:
        runs = measure(ns, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary: dict[str, Any] = {}
    for pin, r in runs.items():
        c, g = r["contended"], r["ring"]
        summary[pin] = {
            "per_s": statistics.median(x["per_s"] for x in c),
            "calls_per_acquisition": statistics.median(x["calls_per_acquisition"] for x in c),
            "fairness": statistics.median(x["fairness"] for x in c),
            "p50_us": statistics.median(x["p50_us"] for x in c),
            "p99_us": statistics.median(x["p99_us"] for x in c),
            "ring_per_s": statistics.median(x["per_s"] for x in g),
            "counters_ok": all(x["counter_ok"] for x in c + g),
        }
    base = summary[str(ns.pins[0])]
    for s in summary.values():
        s["ratio"] = s["per_s"] / base["per_s"]
        s["ring_ratio"] = s["ring_per_s"] / base["ring_per_s"]
    return {
        "started": started,
        "command": " ".join(["python -m bench.sticky", *sys.argv[1:]]),
        "clients": ns.clients,
        "seconds": ns.seconds,
        "rounds": ns.rounds,
        "quick": ns.quick,
        "machine": {**machine_info(), "loadavg_at_start": load_at_start},
        "runs": runs,
        "summary": summary,
    }


def write_summary(path: Path, r: dict[str, Any]) -> None:
    m = r["machine"]
    lines = [
        "# StickyPindown on tcp: one contended record",
        "",
        f"{r['started']} - {r['clients']} clients on 3 nodes, {r['seconds']} s windows, "
        f"{r['rounds']} rounds - {m['cpus']} CPUs ({m['cpu']}), commit "
        f"{m.get('git_commit', '')[:7]}",
        "",
        f"Command: `{r['command']}`",
        "",
        *load_warning(m),
        "Medians over the rounds; ratios to the first pin (the baseline). `ring`: the "
        "nodes take the record strictly in turn.",
        "",
        "| pin | increments/s | calls/acquisition | fairness | p50 / p99 us | ring/s | counters |",
        "|---|---|---|---|---|---|---|",
    ]
    for pin, s in r["summary"].items():
        lines.append(
            f"| {pin} ms | {s['per_s']:,.0f} ({s['ratio']:.2f}x) | "
            f"{s['calls_per_acquisition']:.2f} | {s['fairness']:.2f} | "
            f"{s['p50_us']:.0f} / {s['p99_us']:.0f} | {s['ring_per_s']:,.0f} "
            f"({s['ring_ratio']:.2f}x) | {'ok' if s['counters_ok'] else 'WRONG'} |"
        )
    lines.append("")
    path.write_text("\n".join(lines))


def plot(path: Path, r: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pins = list(r["summary"])
    labels = [f"{p} ms" for p in pins]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for ax, field, title in (
        (axes[0], "per_s", "contended increments/s"),
        (axes[1], "calls_per_acquisition", "calls per acquisition"),
        (axes[2], "ring_per_s", "ring increments/s"),
    ):
        values = [r["summary"][p][field] for p in pins]
        ax.bar(range(len(pins)), values, color="tab:blue")
        ax.set_xticks(range(len(pins)), labels)
        ax.set_xlabel("StickyPindown")
        ax.set_title(title)
    fig.suptitle(f"StickyPindown, {r['clients']} clients on 3 tcp nodes ({r['started']})")
    report.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = report.parser("sticky", __doc__)
    parser.add_argument(
        "--pins",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[0, 2, 10],
        help="StickyPindown values in milliseconds, the first the baseline (0,2,10)",
    )
    parser.add_argument("--clients", type=int, default=3, help="contending clients (3)")
    parser.add_argument("--seconds", type=float, default=4.0, help="window per run (4)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, every pin each (2)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 0.5 s windows, 1 round")
    ns = parser.parse_args(argv)
    if ns.quick:
        ns.seconds, ns.rounds = 0.5, 1
    r = run(ns)
    report.write(ns.out, "sticky", r, write_summary, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
