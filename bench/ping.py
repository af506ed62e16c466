"""Warm pings over CTDB's own protocol: Samba's ctdbd against pyctdb, in the same run.

One client keeps one connection to node 0's CTDB socket and sends
CTDB_CONTROL_PING, one at a time, for node 0 itself (`local`: client ->
daemon -> client) and for node 1 (`node 1`: client -> node 0 -> node 1 ->
node 0 -> client, the control forwarded over the node link as ctdbd
forwards it). The client is the same code for every daemon (a few lines of
Python over `ctdb.protocol.ctdb_wire`), so the daemons are what differs.
The three clusters of `bench.samba_programs` (Samba's ctdbd, pyctdb over
tcp and over vs) are up together and take turns, the order rotating from
round to round.

Each round measures every daemon under three CPU placements, because on a
small virtual machine where the processes run decides a round trip as
much as what they do (a process woken on a CPU that sleeps waits for that
CPU to wake up):

* `unpinned`: the scheduler places the processes;
* `one CPU`: the client, the nodes' daemons (and a corosync the cluster
  started) all pinned to CPU 0: every wake-up is a switch on one CPU, so
  the round trip is the work done on it;
* `two CPUs`: the client on CPU 0, the daemons (and corosync) on CPU 1:
  every hop between client and daemon wakes the other CPU.

Affinities are given back (every CPU) after each measurement. The figure
is the p50 (and p99) of `--pings` round trips after a warm-up; the ratio is
Samba's p50 over pyctdb's (1.00x: as fast as ctdbd; issue 13's target is
0.7x).

    .venv/bin/python -m bench.ping [--pings 3000] [--rounds 3] [--quick] [--out DIR]

Writes results.json, ping.png and summary.md into --out; progress goes to
stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import report
from bench.foundation import load_warning, machine_info, pct
from bench.samba_programs import DAEMONS, Backend, start_backends
from ctdb.protocol.ctdb_opcodes import CURRENT_NODE, Control
from ctdb.protocol.ctdb_wire import Header, PacketDecoder, ReplyControl, ReqControl
from tools.samba_ctdbd import available as samba_available

REPO = Path(__file__).resolve().parent.parent
#: where the control goes: node 0 itself, or node 1 through node 0
TARGETS = {"local": CURRENT_NODE, "node 1": 1}
PLACEMENTS = ("unpinned", "one CPU", "two CPUs")
#: round trips before the measured ones (connection set up, caches warm)
WARMUP = 200


say = report.progress("ping")


def round_trips(path: Path, dest: int, n: int) -> list[float]:
    """Seconds per CONTROL_PING for `dest` on one connection to `path`, `n` of them
    after WARMUP; a reply other than success fails the measurement."""
    decoder = PacketDecoder()
    times: list[float] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(path))
        for reqid in range(1, WARMUP + n + 1):
            packet = ReqControl(Header(reqid, dest), int(Control.PING)).encode()
            started = time.perf_counter()
            s.sendall(packet)
            reply: ReplyControl | None = None
            while reply is None:
                data = s.recv(65536)
                if not data:
                    raise ConnectionError(f"{path}: the daemon closed the connection")
                for p in decoder.feed(data):
                    if isinstance(p, ReplyControl) and p.header.reqid == reqid:
                        reply = p
            if reqid > WARMUP:
                times.append(time.perf_counter() - started)
            if reply.status < 0:  # a ping answers the number of clients
                raise RuntimeError(f"{path}: ping for node {dest} failed ({reply.status})")
    return times


def _processes(backend: Backend) -> list[int]:
    """The cluster's processes a ping goes through: its daemons, and a corosync it started."""
    pids = list(backend.cluster.pids.values())
    corosync = getattr(backend.cluster, "corosync_pid", None)
    return pids + ([corosync] if corosync else [])


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` onto `cpus` (threads that end meanwhile are skipped)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.sched_setaffinity(int(tid), cpus)


@contextlib.contextmanager
def placed(placement: str, backend: Backend) -> Iterator[None]:
    """The client (this process) and the cluster's processes where `placement` says."""
    every = set(range(os.cpu_count() or 1))
    client, daemons = {
        "unpinned": (every, every),
        "one CPU": ({0}, {0}),
        "two CPUs": ({0}, {1}),
    }[placement]
    try:
        os.sched_setaffinity(0, client)
        for pid in _processes(backend):
            _pin(pid, daemons)
        yield
    finally:
        os.sched_setaffinity(0, every)
        for pid in _processes(backend):
            with contextlib.suppress(ProcessLookupError, FileNotFoundError):
                _pin(pid, every)


def _stats(times: list[float]) -> dict[str, float]:
    return {
        "p50_us": pct(times, 50) * 1e6,
        "p99_us": pct(times, 99) * 1e6,
        "per_s": len(times) / sum(times),
    }


def measure(pings: int, rounds: int, placements: tuple[str, ...], workdir: Path) -> dict[str, Any]:
    """daemon -> placement -> target -> one entry per round."""
    backends = start_backends(workdir)
    try:
        results: dict[str, Any] = {
            d: {p: {t: [] for t in TARGETS} for p in placements} for d in DAEMONS
        }
        for r in range(rounds):
            order = DAEMONS[r % len(DAEMONS) :] + DAEMONS[: r % len(DAEMONS)]
            for placement in placements:
                for daemon in order:
                    backend = backends[daemon]
                    with placed(placement, backend):
                        for target, dest in TARGETS.items():
                            entry = _stats(round_trips(backend.sockets[0], dest, pings))
                            results[daemon][placement][target].append(entry)
                    shown = ", ".join(
                        f"{t} p50 {results[daemon][placement][t][-1]['p50_us']:.0f} us"
                        for t in TARGETS
                    )
                    say(f"round {r + 1}: {placement}, {daemon}: {shown}")
        return results
    finally:
        for backend in backends.values():
            backend.cluster.down()


def run(ns: argparse.Namespace) -> dict[str, Any]:
    if not samba_available():
        raise SystemExit("Samba's ctdbd is needed as the baseline (Debian: ctdb)")
    placements = PLACEMENTS if (os.cpu_count() or 1) >= 2 else PLACEMENTS[:2]
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    load_at_start = list(os.getloadavg())
    workdir = Path(tempfile.mkdtemp(prefix="ctdb-bench-ping-"))
    try:
        measured = measure(ns.pings, ns.rounds, placements, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary: dict[str, Any] = {}
    for placement in placements:
        for target in TARGETS:
            row: dict[str, Any] = {}
            for daemon in DAEMONS:
                entries = measured[daemon][placement][target]
                row[daemon] = {
                    "p50_us": statistics.median(e["p50_us"] for e in entries),
                    "p99_us": statistics.median(e["p99_us"] for e in entries),
                }
            base = row["samba ctdbd"]["p50_us"]
            for daemon in DAEMONS:
                row[daemon]["speed_vs_samba"] = base / row[daemon]["p50_us"]
            summary[f"{placement} / {target}"] = row
    return {
        "started": started,
        "command": " ".join(["python -m bench.ping", *sys.argv[1:]]),
        "pings": ns.pings,
        "rounds": ns.rounds,
        "quick": ns.quick,
        "placements": list(placements),
        "machine": {**machine_info(), "loadavg_at_start": load_at_start},
        "runs": measured,
        "summary": summary,
    }


def _loads(values: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in values)


def write_summary(path: Path, r: dict[str, Any]) -> None:
    m = r["machine"]
    lines = [
        "# Warm CTDB_CONTROL_PING: Samba's ctdbd against pyctdb",
        "",
        f"{r['started']} - {r['pings']} pings per measurement, {r['rounds']} rounds "
        f"- {m['cpus']} CPUs ({m['cpu']}), Python {m['python']}, "
        f"commit {m.get('git_commit', '')[:7]}",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Load average (1, 5, 15 min) at start {_loads(m['loadavg_at_start'])}, "
        f"at end {_loads(m['loadavg'])}.",
        "",
        *load_warning(m),
        "Round trip p50 (p99) in microseconds, median over the rounds; the ratio is "
        "Samba's p50 over the daemon's (above 1: faster than ctdbd). `local`: a ping for "
        "node 0 on node 0's socket; `node 1`: a ping for node 1 on node 0's socket, "
        "forwarded. Placements: see the module docstring (`python -m bench.ping --help`).",
        "",
        "| placement / ping | " + " | ".join(DAEMONS) + " |",
        "|---|" + "---|" * len(DAEMONS),
    ]
    for name, row in r["summary"].items():
        cells = [
            f"{row[d]['p50_us']:.0f} ({row[d]['p99_us']:.0f})"
            + ("" if d == "samba ctdbd" else f", {row[d]['speed_vs_samba']:.2f}x")
            for d in DAEMONS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    path.write_text("\n".join(lines))


def plot(path: Path, r: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(r["summary"])
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(names)), 4.0))
    width = 0.8 / len(DAEMONS)
    colors = ["tab:gray", "tab:blue", "tab:orange"]
    for i, daemon in enumerate(DAEMONS):
        p50 = [r["summary"][n][daemon]["p50_us"] for n in names]
        xs = [x + (i - 1) * width for x in range(len(names))]
        ax.bar(xs, p50, width, label=daemon, color=colors[i])
        if i:
            for x, n, y in zip(xs, names, p50, strict=True):
                ratio = r["summary"][n][daemon]["speed_vs_samba"]
                ax.annotate(f"{ratio:.2f}x", (x, y), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)), [n.replace(" / ", "\n") for n in names], fontsize=8)
    ax.set_ylabel("round trip p50 (us)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(f"warm CTDB_CONTROL_PING, median of {r['rounds']} rounds ({r['started']})")
    report.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = report.parser("ping", __doc__)
    parser.add_argument("--pings", type=int, default=3000, help="round trips measured (3000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, daemons in turn (3)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 100 pings, 1 round (overrides both)"
    )
    ns = parser.parse_args(argv)
    if ns.quick:
        ns.pings, ns.rounds = 100, 1
    r = run(ns)
    report.write(ns.out, "ping", r, write_summary, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
