"""CPU per operation of this checkout's daemons against an older revision's, same run.

Throughput on a shared 2-core machine swings by a fifth from run to run;
the CPU time the daemons spend per operation, with the daemons pinned to
one CPU and the client to another, repeats within a few percent. So this
benchmark answers "did the daemon get slower than revision X?" by running
both checkouts side by side: a worktree of `--base` (default: b7714d4,
before the acknowledged-write fixes of issue 8), then this checkout, in
alternating order, `--rounds` times, each a fresh 3-node cluster on
loopback (`--transport tcp` or `vs`), with four workloads:

* `ping`: a control from node 0 to node 1 and back (client -> 0 -> 1 -> 0);
* `ring`: CTDB's fetch_ring, each increment migrates the record to the next
  node (fetch_lock, +1, store_unlock, on nodes 0, 1, 2, 0, ...);
* `store`: one client storing 100 local volatile records in turn;
* `fetch`: the same client reading them back (on vs through a read
  barrier: a message in the agreed order);
* `crowd`: eight clients on node 0 storing at once (threads of this
  process, each waiting on its own socket), where operations overlap and
  the vs transport sends the small messages of one loop turn together.

The figure is the CPU time of all three daemons (every thread, from
/proc/PID/task/*/schedstat) divided by the operations, the median of three
windows per round, then the median over rounds; ratios are head / base
(above 1: this checkout costs more). Rates are reported too, but only the
CPU figures are steady enough to compare. On vs the same is measured of
corosync (its CPU time and the times its threads went to sleep, per
operation): the CPU it spends per operation grows with the time the
operation takes, so on a loaded machine a daemon that costs more also
makes corosync cost more.

On vs both checkouts use one corosync: the one running on the host, or
else one the benchmark starts as the head's `LocalCluster` would (knet,
aes256 + sha256 with a fresh key). Each checkout's own `LocalCluster`
would otherwise start the corosync its revision configures, and the
difference measured would be corosync's (b7714d4 ran udpu without crypto,
which alone makes a vs ping three times faster).

A last window of each workload counts the bytecode instructions the
daemons' event loops run per operation, per function (`bench/opcount`, a
`sitecustomize` on the daemons' path): a count that moves little with the
machine's load (only through the timers that fire while a daemon counts;
rounds agree within a few percent), which says where a difference in CPU
comes from, file by file. Native code (msgpack, TDB, system calls) is not
in it.

    .venv/bin/python -m bench.cpu_per_op [--base REV] [--rounds 3] [--quick]
        [--transport tcp|vs] [--out DIR]

Writes results.json, cpu_per_op.png and summary.md into --out; progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "cpu_per_op"
WORKLOADS = ("ping", "ring", "store", "fetch", "crowd")
#: the first line of summary.md
TITLE = "CPU per operation: this checkout against an older revision"
#: operations per measurement window (quick: a twentieth)
OPS = {"ping": 3000, "ring": 1500, "store": 6000, "fetch": 6000, "crowd": 8000}
#: clients of the `crowd` workload
CROWD = 8
#: operations of the counted window, a fraction of OPS: counting is slow
COUNTED = 0.1
#: the folder of the instruction counter, and the variable that turns it on
OPCOUNT = REPO / "bench" / "opcount"
OPCOUNT_DIR = "CTDB_BENCH_OPCOUNT"
#: files listed per workload in the summary, by the size of their difference
TOP_FILES = 8


# Not bench.report's progress() and write(): this file also runs as the worker
# inside an older checkout (PYTHONPATH), which may have no bench.report.
def say(msg: str) -> None:
    print(f"[cpu_per_op {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the worker: runs inside one checkout (its tools.cluster and ctdb.client) ------------


def worker(
    tree: str, transport: str, base: str, port: int, scale: float, corosync: int | None
) -> dict[str, Any]:
    """Measure the workloads on a cluster of the checkout on PYTHONPATH (`tree`).

    Uses only what every revision since b7714d4 offers: LocalCluster(dir, size,
    transport, port, base, log_level), up/client/pids/down, and the client's
    attach/store/fetch/fetch_lock/store_unlock/call."""
    from tools.cluster import LocalCluster  # the checkout's own

    workdir = Path(tempfile.mkdtemp(prefix="ctdb-bench-cpu-"))
    cluster = LocalCluster(
        workdir / "cluster", size=3, transport=transport, port=port, base=base, log_level="WARNING"
    )
    cluster.up(timeout=60)
    try:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= 2:  # daemons on one CPU, this client on another
            for pnn in range(3):
                for task in Path(f"/proc/{cluster.pids[pnn]}/task").iterdir():
                    os.sched_setaffinity(int(task.name), {cpus[-1]})
            os.sched_setaffinity(0, {cpus[0]})
        return _measure(cluster, scale, str(Path(tree).resolve()), corosync)
    finally:
        cluster.down()
        shutil.rmtree(workdir, ignore_errors=True)


def _tasks(pid: int, name: str) -> Iterator[str]:
    """`name` (schedstat, status) of each thread of `pid`."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            yield (task / name).read_text()


def _cpu_ns(pids: list[int]) -> int:
    return sum(int(stat.split()[0]) for pid in pids for stat in _tasks(pid, "schedstat"))


def _sleeps(pid: int) -> int:
    """How often the threads of `pid` went to sleep (voluntary context switches)."""
    return sum(
        int(line.split()[1])
        for status in _tasks(pid, "status")
        for line in status.splitlines()
        if line.startswith("voluntary_ctxt_switches")
    )


def _measure(cluster: Any, scale: float, tree: str, corosync: int | None) -> dict[str, Any]:
    db = "bench_cpu"
    clients = [cluster.client(p) for p in range(3)]
    crowd = [cluster.client(0) for _ in range(CROWD)]
    daemons = [cluster.pids[p] for p in range(3)]
    try:
        clients[0].attach(db)
        clients[0].store(db, b"ring", b"0")

        def run(work: str, n: int) -> None:
            if work == "crowd":
                _crowd_stores(crowd, db, n)
                return
            for i in range(n):
                if work == "ping":
                    clients[0].call("ping", pnn=1)
                elif work == "ring":
                    c = clients[i % 3]
                    value = int(c.fetch_lock(db, b"ring") or b"0")
                    c.store_unlock(db, b"ring", b"%d" % (value + 1))
                elif work == "store":
                    clients[0].store(db, b"k%d" % (i % 100), b"v")
                else:
                    clients[0].fetch(db, b"k%d" % (i % 100))

        out: dict[str, Any] = {}
        for work in WORKLOADS:
            n = max(30, int(OPS[work] * scale))
            run(work, max(10, n // 10))  # warm up: the records are where they will be
            cpu, rates, coro_cpu, coro_sleeps = [], [], [], []
            for _ in range(3):
                c0 = _cpu_ns(daemons)
                k0 = (_cpu_ns([corosync]), _sleeps(corosync)) if corosync else (0, 0)
                t0 = time.perf_counter()
                run(work, n)
                rates.append(n / (time.perf_counter() - t0))
                cpu.append((_cpu_ns(daemons) - c0) / n / 1000)
                if corosync:
                    coro_cpu.append((_cpu_ns([corosync]) - k0[0]) / n / 1000)
                    coro_sleeps.append((_sleeps(corosync) - k0[1]) / n)
            m = max(10, int(n * COUNTED))
            counts = _instructions(cluster, functools.partial(run, work, m))
            out[work] = {
                "ops": n,
                "cpu_us_per_op": statistics.median(cpu),
                "per_s": max(rates),
                "corosync_cpu_us_per_op": statistics.median(coro_cpu) if coro_cpu else None,
                "corosync_sleeps_per_op": statistics.median(coro_sleeps) if coro_sleeps else None,
                "instructions_per_op": sum(counts.values()) / m,
                "instructions_by_file": _by_file(counts, m, tree),
            }
        return out
    finally:
        for c in clients + crowd:
            c.close()


def _crowd_stores(clients: list[Any], db: str, n: int) -> None:
    """`n` stores, the clients storing at once, each its own 100 records in turn."""

    def store(k: int) -> None:
        for i in range(k, n, len(clients)):
            clients[k].store(db, b"c%d-%d" % (k, i % 100), b"v")

    threads = [threading.Thread(target=store, args=(k,)) for k in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _instructions(cluster: Any, work: Callable[[], None]) -> Counter[str]:
    """The instructions the daemons' event loops ran for `work`, per function."""
    out = Path(os.environ[OPCOUNT_DIR])
    for old in out.iterdir():
        old.unlink()
    pids = [cluster.pids[pnn] for pnn in range(3)]
    for pid in pids:
        os.kill(pid, signal.SIGUSR1)
    try:
        _wait_for([out / f"on.{pid}" for pid in pids])
        work()
    finally:  # a counting daemon runs thirty times slower
        for pid in pids:
            os.kill(pid, signal.SIGUSR2)
    _wait_for([out / f"{pid}.json" for pid in pids])
    total: Counter[str] = Counter()
    for pid in pids:
        total.update(json.loads((out / f"{pid}.json").read_text()))
    return total


def _wait_for(paths: list[Path], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            missing = [p.name for p in paths if not p.exists()]
            raise RuntimeError(f"the daemons' instruction counter did not answer: {missing}")
        time.sleep(0.01)


def _by_file(counts: Counter[str], ops: int, tree: str) -> dict[str, float]:
    """Instructions per operation by file: the checkout's by their path in
    it, the rest (the standard library, packages) as `(python) dir/file.py`."""
    files: Counter[str] = Counter()
    for function, n in counts.items():
        path = function.rsplit(":", 1)[0]
        if path.startswith(tree + os.sep):
            name = os.path.relpath(path, tree)
        else:
            name = "(python) " + "/".join(path.split(os.sep)[-2:])
        files[name] += n
    return {name: round(n / ops, 1) for name, n in files.most_common()}


# -- the driver: checkouts, rounds, outputs ------------------------------------------------


def _median_by_file(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each file's median over the rounds (absent from a round: 0)."""
    files = {f for r in rounds for f in r}
    medians = {f: statistics.median(r.get(f, 0.0) for r in rounds) for f in files}
    return dict(sorted(medians.items(), key=lambda item: -item[1]))


def _run_worker(
    tree: Path, ns: argparse.Namespace, base: str, port: int, corosync: int | None
) -> dict[str, Any]:
    counted = tempfile.mkdtemp(prefix="ctdb-bench-opcount-")
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{OPCOUNT}", **{OPCOUNT_DIR: counted})
    scale = 0.05 if ns.quick else 1.0
    try:
        return _worker_process(tree, ns.transport, base, port, scale, corosync, env)
    finally:
        shutil.rmtree(counted, ignore_errors=True)


def _worker_process(
    tree: Path,
    transport: str,
    base: str,
    port: int,
    scale: float,
    corosync: int | None,
    env: dict[str, str],
) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", str(tree)]
        + ["--transport", transport, "--worker-base", base, "--worker-port", str(port)]
        + ["--worker-scale", str(scale)]
        + ([] if corosync is None else ["--worker-corosync", str(corosync)]),
        env=env,
        cwd=tempfile.gettempdir(),  # not a checkout: PYTHONPATH decides which code runs
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker for {tree} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _rounds(
    ns: argparse.Namespace, rev: str, corosync: int | None
) -> dict[str, list[dict[str, Any]]]:
    """Each checkout once per round, alternating which goes first."""
    from bench import checkouts

    samples: dict[str, list[dict[str, Any]]] = {"base": [], "head": []}
    with checkouts.worktree(rev) as base_tree:
        trees = {"base": base_tree, "head": REPO}
        for r in range(ns.rounds):
            order = ["base", "head"] if r % 2 == 0 else ["head", "base"]
            for i, name in enumerate(order):
                say(f"round {r + 1}/{ns.rounds}: {name}")
                sample = _run_worker(trees[name], ns, f"127.0.{86 + i}", ns.port + 10 * i, corosync)
                samples[name].append(sample)
                say(
                    "  "
                    + ", ".join(
                        f"{w} {sample[w]['cpu_us_per_op']:.1f} us, "
                        f"{sample[w]['instructions_per_op']:,.0f} instructions"
                        for w in WORKLOADS
                    )
                )
    return samples


def run(ns: argparse.Namespace, rev: str) -> dict[str, Any]:
    """`ns.rounds` rounds against revision `rev` (a short commit id)."""
    from bench import checkouts

    record = checkouts.run_record("cpu_per_op", ns, rev)
    say(f"worktree of {rev} (base) beside this checkout ({record['head']})")
    with contextlib.ExitStack() as stack:
        if ns.transport == "vs":
            corosync = stack.enter_context(checkouts.shared_corosync(say))
        else:
            corosync = None
        samples = _rounds(ns, rev, corosync)
    figures: dict[str, Any] = {}
    for work in WORKLOADS:
        entry: dict[str, Any] = {}
        for name in ("base", "head"):
            cpu = [s[work]["cpu_us_per_op"] for s in samples[name]]
            rate = [s[work]["per_s"] for s in samples[name]]
            instructions = [s[work]["instructions_per_op"] for s in samples[name]]
            coro = [s[work]["corosync_cpu_us_per_op"] for s in samples[name]]
            sleeps = [s[work]["corosync_sleeps_per_op"] for s in samples[name]]
            entry[name] = {
                "cpu_us_per_op": statistics.median(cpu),
                "cpu_us_per_op_rounds": cpu,
                "per_s": statistics.median(rate),
                "corosync_cpu_us_per_op": None if None in coro else statistics.median(coro),
                "corosync_sleeps_per_op": None if None in sleeps else statistics.median(sleeps),
                "instructions_per_op": statistics.median(instructions),
                "instructions_per_op_rounds": instructions,
                "instructions_by_file": _median_by_file(
                    [s[work]["instructions_by_file"] for s in samples[name]]
                ),
            }
        entry["cpu_ratio_head_to_base"] = (
            entry["head"]["cpu_us_per_op"] / entry["base"]["cpu_us_per_op"]
        )
        entry["instructions_ratio_head_to_base"] = (
            entry["head"]["instructions_per_op"] / entry["base"]["instructions_per_op"]
        )
        entry["rate_ratio_head_to_base"] = entry["head"]["per_s"] / entry["base"]["per_s"]
        figures[work] = entry
    return {**record, "loadavg_at_end": os.getloadavg()[0], "figures": figures}


def write_summary(path: Path, results: dict[str, Any]) -> None:
    from bench import checkouts

    lines = [
        *checkouts.summary_head(TITLE, results),
        "| workload | base CPU/op | head CPU/op | head/base | base rate | head rate |",
        "|---|---|---|---|---|---|",
    ]
    for work, e in results["figures"].items():
        lines.append(
            f"| {work} | {e['base']['cpu_us_per_op']:.1f} us | {e['head']['cpu_us_per_op']:.1f} us"
            f" | {e['cpu_ratio_head_to_base']:.2f}x | {e['base']['per_s']:,.0f}/s"
            f" | {e['head']['per_s']:,.0f}/s |"
        )
    lines += [
        "",
        "CPU is that of the three daemons together, per operation (lower is better); "
        "above 1.00x the head costs more than the base. Rates swing with the machine's "
        "load and are shown for orientation only.",
        *_corosync_lines(results),
        "",
        "## Bytecode instructions per operation (the daemons' event loops)",
        "",
        "| workload | base | head | head/base |",
        "|---|---|---|---|",
    ]
    for work, e in results["figures"].items():
        lines.append(
            f"| {work} | {e['base']['instructions_per_op']:,.0f} "
            f"| {e['head']['instructions_per_op']:,.0f} "
            f"| {e['instructions_ratio_head_to_base']:.2f}x |"
        )
    for work, e in results["figures"].items():
        base, head = e["base"]["instructions_by_file"], e["head"]["instructions_by_file"]
        files = sorted(set(base) | set(head), key=lambda f: -abs(head.get(f, 0) - base.get(f, 0)))
        lines += [
            "",
            f"{work}: the {TOP_FILES} files whose instructions per operation changed most "
            "(a file that was split or renamed shows as one gone and one new)",
            "",
            "| file | base | head | change |",
            "|---|---|---|---|",
        ]
        for f in files[:TOP_FILES]:
            b, h = base.get(f, 0.0), head.get(f, 0.0)
            lines.append(f"| `{f}` | {b:,.0f} | {h:,.0f} | {h - b:+,.0f} |")
    lines.append("")
    path.write_text("\n".join(lines))


def _corosync_lines(results: dict[str, Any]) -> list[str]:
    """vs: what corosync spent per operation, under each checkout's daemons."""
    figures = results["figures"]
    if any(
        e[n]["corosync_cpu_us_per_op"] is None for e in figures.values() for n in ("base", "head")
    ):
        return []
    lines = [
        "",
        "## corosync per operation (vs)",
        "",
        "| workload | base CPU/op | head CPU/op | base sleeps/op | head sleeps/op |",
        "|---|---|---|---|---|",
    ]
    for work, e in figures.items():
        b, h = e["base"], e["head"]
        lines.append(
            f"| {work} | {b['corosync_cpu_us_per_op']:.0f} us"
            f" | {h['corosync_cpu_us_per_op']:.0f} us"
            f" | {b['corosync_sleeps_per_op']:.1f} | {h['corosync_sleeps_per_op']:.1f} |"
        )
    return lines


def plot(path: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    works = list(results["figures"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    xs = range(len(works))
    panels = [
        ("cpu_us_per_op", "cpu_ratio_head_to_base", "daemon CPU per operation (us)"),
        ("instructions_per_op", "instructions_ratio_head_to_base", "instructions per operation"),
    ]
    for ax, (figure, ratio_of, label) in zip(axes, panels, strict=True):
        base = [results["figures"][w]["base"][figure] for w in works]
        head = [results["figures"][w]["head"][figure] for w in works]
        ax.bar([x - 0.2 for x in xs], base, width=0.4, label=f"base {results['base']}")
        ax.bar([x + 0.2 for x in xs], head, width=0.4, label=f"head {results['head']}")
        for x, w in zip(xs, works, strict=True):
            ratio = results["figures"][w][ratio_of]
            ax.annotate(f"{ratio:.2f}x", (x + 0.2, head[x]), ha="center", va="bottom")
        ax.set_xticks(list(xs), works)
        ax.set_ylabel(f"{label}, 3 daemons")
        ax.legend()
    fig.suptitle("Per operation, both revisions in the same run")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.cpu_per_op",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Writes results.json, cpu_per_op.png and summary.md; progress goes to stderr.",
    )
    p.add_argument("--base", help="revision to compare (default b7714d4, before issue 8's fixes)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each checkout once (3)")
    p.add_argument("--quick", action="store_true", help="a twentieth of the operations")
    p.add_argument("--transport", choices=["tcp", "vs"], default="tcp", help="(tcp)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    p.add_argument("--port", type=int, default=39800, help="first cluster port (39800)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-base", help=argparse.SUPPRESS)
    p.add_argument("--worker-port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-scale", type=float, help=argparse.SUPPRESS)
    p.add_argument("--worker-corosync", type=int, help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.worker:
        print(
            json.dumps(
                worker(
                    ns.worker,
                    ns.transport,
                    ns.worker_base,
                    ns.worker_port,
                    ns.worker_scale,
                    ns.worker_corosync,
                )
            )
        )
        return 0
    from bench import checkouts  # (not in the worker: an older checkout may not have it)

    try:
        rev = checkouts.short_rev(ns.base or checkouts.DEFAULT_BASE)
    except ValueError as exc:
        p.error(str(exc))
    results = run(ns, rev)
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "results.json").write_text(json.dumps(results, indent=2))
    write_summary(ns.out / "summary.md", results)
    plot(ns.out / "cpu_per_op.png", results)
    say(f"wrote {ns.out}/results.json, summary.md, cpu_per_op.png")
    print((ns.out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
