"""Recovery benchmark: how fast a failure is noticed and repaired, and what it costs.

Every figure comes from real ctdbd processes (a private 3-node LocalCluster
on a random loopback base address and port), next to a baseline measured in
the same run:

* failure detection: kill -9 of node 2 until both survivors show it
  DISCONNECTED, with the default tunables (KeepaliveInterval 1 s x
  KeepaliveLimit 5) and tuned ones (0.1 s x 3). On loopback a killed
  process's sockets are closed by the kernel, so kill -9 is seen at once;
  the keepalive timeout is what catches a *silent* node, measured with
  SIGSTOP (the process hangs, its sockets stay open);
* kill -9 until the survivors are in recovery mode NORMAL and serve every key
  again (each volatile key whose dmaster survived with its latest value,
  every persistent key, and a fetch of every lost key answers);
* a forced `recover` (wall time until every node is NORMAL in a new
  generation, and the leader's own measure of the recovery);
* recovery duration against the number of volatile (and persistent)
  records; baseline: a raw python-tdb copy of the same records (one file read
  and written in one transaction, and the whole data movement of a recovery:
  three files read, merged, three written).

Writes results.json, recovery.png and summary.md into --out. Targets are
reported as met or not met; nothing here asserts.

    .venv/bin/python -m bench.recovery [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ctdb.client import AsyncClient  # noqa: E402
from ctdb.errors import CtdbError, ErrorCode  # noqa: E402
from ctdb.ltdb import DEFAULT_HASH_SIZE, TDB_MUTEX_LOCKING, Record  # noqa: E402
from ctdb.placement import lmaster  # noqa: E402
from tools.cluster import LocalCluster  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "recovery"
VALUE_SIZE = 64
DEFAULT_TUNABLES = {"KeepaliveInterval": 1.0, "KeepaliveLimit": 5}
TUNED = {"KeepaliveInterval": 0.1, "KeepaliveLimit": 3}
DISCONNECTED = 0x01


def say(msg: str) -> None:
    print(f"[recovery {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Plan:
    repeats: int  # detection / kill / forced-recover repetitions
    serve_keys: int  # volatile keys in the kill -> served scenario
    volatile_sizes: tuple[int, ...]
    persistent_sizes: tuple[int, ...]

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(1, 300, (1_000, 10_000), (1_000,))
        return cls(5, 1_000, (1_000, 10_000, 100_000), (1_000, 10_000, 100_000))


def value(i: int) -> bytes:
    return (b"v%d-" % i).ljust(VALUE_SIZE, b"x")


def key(i: int) -> bytes:
    return b"key-%07d" % i


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "samples": samples,
    }


# -- cluster helpers ---------------------------------------------------------------------


class Clusters:
    """Starts private clusters under one directory; `down_all` stops what it started."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[LocalCluster] = []

    def make(self, tunables: dict[str, float]) -> LocalCluster:
        last: Exception | None = None
        for _ in range(3):
            c = LocalCluster(
                self.directory / f"c{len(self.started)}",
                size=3,
                port=random.randint(20000, 60000),
                base=f"127.{random.randint(10, 250)}.{random.randint(0, 250)}",
                tunables=dict(tunables),
                log_level="WARNING",
            )
            self.started.append(c)
            try:
                c.up(timeout=30)
                return c
            except Exception as exc:  # noqa: BLE001 - port clash etc.: retried
                last = exc
                c.down()
        raise RuntimeError(f"cluster did not come up: {last}")

    def down_all(self) -> None:
        for c in self.started:
            c.down()


def poll(cond: Callable[[], Any], timeout: float, interval: float = 0.002) -> float:
    """Seconds until `cond()` is truthy (errors count as not yet)."""
    start = time.monotonic()
    while True:
        try:
            if cond():
                return time.monotonic() - start
        except (CtdbError, OSError):
            pass
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)


def recovered(c: LocalCluster, nodes: list[int], old_generation: int | None) -> bool:
    sts = [c.status(p) for p in nodes]
    gens = {st["generation"] for st in sts}
    return (
        len(gens) == 1
        and old_generation not in gens
        and all(st["recovery_mode"] == "NORMAL" and st["vnnmap"] == nodes for st in sts)
    )


def disconnected_everywhere(c: LocalCluster, victim: int, observers: list[int]) -> bool:
    return all(c.status(p)["nodes"][victim]["flags"] & DISCONNECTED for p in observers)


async def _bulk_store(c: LocalCluster, db: str, n: int, vnnmap: list[int]) -> None:
    """Store n records, each through its lmaster (the local fast path), pipelined."""
    clients = [await AsyncClient.connect(c.socket(p)) for p in range(c.size)]
    try:
        window = 400
        for start in range(0, n, window):
            await asyncio.gather(
                *(
                    clients[lmaster(key(i), vnnmap)].store(db, key(i), value(i))
                    for i in range(start, min(n, start + window))
                )
            )
    finally:
        for cl in clients:
            await cl.close()


async def _bulk_commit(c: LocalCluster, db: str, n: int, per_tx: int = 10_000) -> None:
    """Bulk-load a persistent database with large transactions (pipelined stores)."""
    cl = await AsyncClient.connect(c.socket(0))
    try:
        for start in range(0, n, per_tx):
            for attempt in range(20):
                if attempt == 19:
                    raise TimeoutError(f"bulk commit at record {start} kept failing")
                tx = await cl.call("trans_start", db=db)
                stop = min(n, start + per_tx)
                for chunk in range(start, stop, 1000):
                    await asyncio.gather(
                        *(
                            cl.call("trans_store", tx=tx, key=key(i), value=value(i))
                            for i in range(chunk, min(stop, chunk + 1000))
                        )
                    )
                try:
                    await cl.call("trans_commit", tx=tx)
                    break
                except CtdbError as exc:
                    if exc.code not in (ErrorCode.BUSY, ErrorCode.RETRY):
                        raise
    finally:
        await cl.close()


# -- measurements ------------------------------------------------------------------------


def bench_detection(clusters: Clusters, tunables: dict[str, float], plan: Plan) -> dict[str, Any]:
    """kill -9 and SIGSTOP of node 2 until nodes 0 and 1 both show it DISCONNECTED."""
    c = clusters.make(tunables)
    kill, hang = [], []
    for _ in range(plan.repeats):
        c.wait_healthy(30)
        t0 = time.monotonic()
        c.kill_node(2)
        poll(lambda: disconnected_everywhere(c, 2, [0, 1]), 30)
        kill.append(time.monotonic() - t0)
        c.start_node(2)
        c.wait_healthy(30)
        t0 = time.monotonic()
        c.signal_node(2, signal.SIGSTOP)
        try:
            poll(lambda: disconnected_everywhere(c, 2, [0, 1]), 30)
            hang.append(time.monotonic() - t0)
        finally:
            c.signal_node(2, signal.SIGCONT)
    c.wait_healthy(30)
    c.down()
    return {"kill9": summary(kill), "hang": summary(hang), "tunables": tunables}


def bench_kill_to_served(clusters: Clusters, plan: Plan) -> dict[str, Any]:
    """kill -9 of node 2 until recovery mode NORMAL and every key served on node 0."""
    c = clusters.make(TUNED)
    samples, normal = [], []
    for rep in range(plan.repeats):
        vdb, pdb = f"served_v{rep}", f"served_p{rep}"
        with c.client(0) as cl:
            cl.attach(vdb)
            cl.attach(pdb, "persistent")
        status = c.status(0)
        asyncio.run(_bulk_store(c, vdb, plan.serve_keys, status["vnnmap"]))
        owner = {i: lmaster(key(i), status["vnnmap"]) for i in range(plan.serve_keys)}
        with c.client(0) as cl:
            cl.transact(pdb, {key(i): value(i) for i in range(200)})
        old = c.status(0)["generation"]
        t0 = time.monotonic()
        c.kill_node(2)
        normal.append(poll(lambda old=old: recovered(c, [0, 1], old), 30))
        with c.client(0, timeout=30) as cl:
            for i in range(plan.serve_keys):  # every key answers again
                got = cl.fetch(vdb, key(i))
                if owner[i] != 2 and got != value(i):
                    raise RuntimeError(f"volatile key {i} lost although its dmaster survived")
            for i in range(200):
                if cl.fetch(pdb, key(i)) != value(i):
                    raise RuntimeError(f"persistent key {i} lost")
        samples.append(time.monotonic() - t0)
        say(f"  kill -9 -> NORMAL {normal[-1]:.3f}s, every key served {samples[-1]:.3f}s")
        c.start_node(2)
        c.wait_healthy(30)
    c.down()
    return {
        "served": summary(samples),
        "normal": summary(normal),
        "volatile_keys": plan.serve_keys,
        "persistent_keys": 200,
    }


def last_recovery(c: LocalCluster, pnn: int) -> dict[str, float]:
    with c.client(pnn) as cl:
        result: dict[str, float] = cl.call("uptime")["last_recovery"]
        return result


def forced_recovery(c: LocalCluster, timeout: float = 60) -> tuple[float, float]:
    """(wall seconds until every node is NORMAL in a new generation, leader's own figure)."""
    st = c.status(0)
    leader = st["leader"]
    before = last_recovery(c, leader).get("finished")
    t0 = time.monotonic()
    with c.client(leader) as cl:
        cl.call("recover")
    try:
        poll(lambda: recovered(c, [0, 1, 2], st["generation"]), timeout)
    except TimeoutError:
        raise TimeoutError(f"forced recovery not finished after {timeout:g}s") from None
    wall = time.monotonic() - t0
    poll(lambda: last_recovery(c, leader).get("finished") != before, 10)
    return wall, float(last_recovery(c, leader)["duration"])


def bench_forced(clusters: Clusters, plan: Plan) -> dict[str, Any]:
    c = clusters.make(TUNED)
    with c.client(0) as cl:
        cl.attach("forced_v")
        cl.attach("forced_p", "persistent")
        for i in range(100):
            cl.store("forced_v", key(i), value(i))
        cl.transact("forced_p", {key(i): value(i) for i in range(100)})
    walls, inside = [], []
    for _ in range(max(3, plan.repeats)):
        wall, daemon = forced_recovery(c)
        walls.append(wall)
        inside.append(daemon)
    c.down()
    return {"wall": summary(walls), "daemon": summary(inside), "records": 200}


def bench_sizes(clusters: Clusters, kind: str, sizes: tuple[int, ...], workdir: Path) -> list[Any]:
    """Recovery duration per database size, tuned tunables first.

    A recovery that does not finish in time (the daemons miss keepalives
    while busy and drop each other, over and over) is recorded as not
    completed and the size is measured again with the default tunables.
    """
    out = []
    for n in sizes:
        failures = []
        for name, tunables in (("tuned", TUNED), ("default", DEFAULT_TUNABLES)):
            try:
                entry = size_once(clusters, kind, n, tunables)
            except TimeoutError as exc:
                say(f"  {kind} {n:>7} records with {name} tunables: {exc}")
                failures.append({"tunables": tunables, "error": str(exc)})
                continue
            entry["tunables"] = tunables
            break
        else:
            say(f"  {kind} {n:>7} records: no completed recovery")
            out.append({"records": n, "completed": False, "failures": failures})
            continue
        base = baseline_copy(n, persistent=kind == "persistent", workdir=workdir)
        entry.update(
            completed=True,
            failures=failures,
            baseline_copy=base["copy"],
            baseline_recovery_io=base["recovery_io"],
        )
        say(
            f"  {kind} {n:>7} records: recovery {entry['wall']:.3f}s wall "
            f"({entry['daemon']:.3f}s in daemon); raw tdb copy {base['copy']:.3f}s, "
            f"3 reads + 3 writes {base['recovery_io']:.3f}s (load {entry['load_s']:.1f}s)"
        )
        out.append(entry)
    return out


def size_once(clusters: Clusters, kind: str, n: int, tunables: dict[str, float]) -> dict[str, Any]:
    c = clusters.make(tunables)
    try:
        db = f"size_{kind}"
        with c.client(0) as cl:
            cl.attach(db, kind)
        t0 = time.monotonic()
        if kind == "volatile":
            asyncio.run(_bulk_store(c, db, n, c.status(0)["vnnmap"]))
        else:
            asyncio.run(_bulk_commit(c, db, n))
        load = time.monotonic() - t0
        walls, inside = [], []
        for _ in range(2):
            wall, daemon = forced_recovery(c, timeout=60)
            walls.append(wall)
            inside.append(daemon)
        with c.client(1, timeout=60) as cl:  # spot check: the data is all there
            for i in random.sample(range(n), min(n, 50)):
                if cl.fetch(db, key(i)) != value(i):
                    raise RuntimeError(f"{kind} record {i} wrong after recovery")
    finally:
        c.down()
    return {
        "records": n,
        "load_s": load,
        "wall": min(walls),
        "daemon": min(inside),
        "wall_samples": walls,
        "daemon_samples": inside,
    }


def baseline_copy(n: int, *, persistent: bool, workdir: Path) -> dict[str, float]:
    """Raw python-tdb: the data movement of a recovery with nothing else around it.

    `copy`: one file traversed and written into another in one transaction.
    `recovery_io`: three files traversed, newest RSN per key kept, three files
    rewritten (what a recovery of a 3-node cluster moves).
    """
    import tdb

    flags = tdb.DEFAULT if persistent else tdb.NOSYNC | TDB_MUTEX_LOCKING
    mode = os.O_RDWR | os.O_CREAT
    d = Path(tempfile.mkdtemp(dir=workdir, prefix="tdbcopy-"))

    def open_db(name: str) -> Any:
        return tdb.Tdb(str(d / name), DEFAULT_HASH_SIZE, flags, mode, 0o600)

    sources = [open_db(f"src{p}.tdb") for p in range(3)]
    for p, src in enumerate(sources):
        src.transaction_start()
        for i in range(n):
            if persistent or i % 3 == p:
                src.store(key(i), Record(1, p, value(i)).pack(), tdb.REPLACE)
        src.transaction_commit()

    def write(dst: Any, items: dict[bytes, bytes]) -> None:
        dst.transaction_start()
        dst.clear()
        for k, v in items.items():
            dst.store(k, v, tdb.REPLACE)
        dst.transaction_commit()

    dst = open_db("dst.tdb")
    t0 = time.perf_counter()
    copied = {k: sources[0].get(k) for k in list(sources[0].keys())}
    write(dst, copied)
    copy = time.perf_counter() - t0
    dst.close()

    dsts = [open_db(f"dst{p}.tdb") for p in range(3)]
    t0 = time.perf_counter()
    merged: dict[bytes, bytes] = {}
    for src in sources:
        for k in list(src.keys()):
            data = src.get(k)
            old = merged.get(k)
            if old is None or Record.unpack(data).rsn > Record.unpack(old).rsn:
                merged[k] = data
    for dst in dsts:
        write(dst, merged)
    recovery_io = time.perf_counter() - t0
    for t in sources + dsts:
        t.close()
    shutil.rmtree(d, ignore_errors=True)
    return {"copy": copy, "recovery_io": recovery_io}


# -- report ------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    try:
        commit_id = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
    except OSError:
        commit_id = ""
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "event_loop": loop,
        "git_commit": commit_id,
        "load_average": os.getloadavg(),
    }


def find(entries: list[dict[str, Any]], n: int) -> dict[str, Any] | None:
    return next((e for e in entries if e["records"] == n and e.get("completed")), None)


def evaluate(r: dict[str, Any]) -> list[dict[str, Any]]:
    tuned = r["detection"]["tuned"]
    detect = max(tuned["kill9"]["max"], tuned["hang"]["max"])
    targets = [
        {
            "name": "failure detection, tuned (0.1 s x 3), kill -9 and silent hang",
            "target_s": 1.0,
            "measured_s": detect,
        },
        {
            "name": "kill -9 -> recovery mode NORMAL with every key served",
            "target_s": 1.2,
            "measured_s": r["kill_to_served"]["served"]["max"],
        },
    ]
    e10k = find(r["sizes"]["volatile"], 10_000)
    targets.append(
        {
            "name": "recovery of 10k volatile records",
            "target_s": 1.0,
            "measured_s": e10k["wall"] if e10k else None,
        }
    )
    e100k = find(r["sizes"]["volatile"], 100_000)
    targets.append(
        {
            "name": "recovery of 100k volatile records (report only)",
            "target_s": None,
            "measured_s": e100k["wall"] if e100k else None,
        }
    )
    for t in targets:
        if t["measured_s"] is None:
            t["met"] = None
        elif t["target_s"] is None:
            t["met"] = None
        else:
            t["met"] = t["measured_s"] < t["target_s"]
    return targets


def verdict(t: dict[str, Any]) -> str:
    if t["measured_s"] is None:
        return "not measured (--quick)"
    if t["met"] is None:
        return "reported"
    return "met" if t["met"] else "NOT met"


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f} ms"


def write_summary(path: Path, r: dict[str, Any]) -> None:
    m = r["machine"]
    lines = [
        "# Recovery benchmark",
        "",
        f"{m['date']}, {m['host']}, {m['cpus']} CPUs, Python {m['python']}, {m['event_loop']}, "
        f"commit {m['git_commit']}, mode {'quick' if r['quick'] else 'full'}, "
        f"load average {m['load_average'][0]:.2f}.",
        "3-node cluster of real ctdbd processes over TCP on loopback.",
        "",
        "## Targets",
        "",
        "| what | target | measured | verdict |",
        "|---|---|---|---|",
    ]
    for t in r["targets"]:
        target = "-" if t["target_s"] is None else f"< {t['target_s']:g} s"
        lines.append(f"| {t['name']} | {target} | {ms(t['measured_s'])} | {verdict(t)} |")
    lines += [
        "",
        "## Failure detection (node 2; both survivors show it DISCONNECTED)",
        "",
        "| tunables | kill -9 median / max | silent hang (SIGSTOP) median / max |",
        "|---|---|---|",
    ]
    for name, d in r["detection"].items():
        tun = d["tunables"]
        lines.append(
            f"| {name} ({tun['KeepaliveInterval']:g} s x {tun['KeepaliveLimit']:g}) | "
            f"{ms(d['kill9']['median'])} / {ms(d['kill9']['max'])} | "
            f"{ms(d['hang']['median'])} / {ms(d['hang']['max'])} |"
        )
    ks, fr = r["kill_to_served"], r["forced"]
    lines += [
        "",
        "On loopback the kernel closes a killed process's connections, so kill -9 is",
        "seen through the closed socket, independent of the tunables; the keepalive",
        "timeout (interval x limit, checked every interval/2) bounds a silent node.",
        "",
        "## kill -9 to service",
        "",
        f"{ks['volatile_keys']} volatile + {ks['persistent_keys']} persistent keys, tuned "
        "tunables, kill -9 of node 2, clock stops when node 0 has answered every key.",
        "",
        f"* until NORMAL on both survivors: median {ms(ks['normal']['median'])}, "
        f"max {ms(ks['normal']['max'])}",
        f"* until every key served: median {ms(ks['served']['median'])}, "
        f"max {ms(ks['served']['max'])}",
        "",
        "## Forced recovery (`recover` on the leader)",
        "",
        f"* wall (until every node NORMAL in the new generation): median "
        f"{ms(fr['wall']['median'])}, max {ms(fr['wall']['max'])}",
        f"* inside the leader's recovery driver: median {ms(fr['daemon']['median'])}",
        "",
        "## Recovery duration against records",
        "",
        "| kind | records | recovery (wall, keepalive tunables) | in daemon | raw tdb copy "
        "| raw recovery I/O (3 reads, merge, 3 writes) | wall / raw I/O |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, entries in r["sizes"].items():
        for e in entries:
            for f in e["failures"]:
                tun = f["tunables"]
                lines.append(
                    f"| {kind} | {e['records']} | **not completed** with "
                    f"{tun['KeepaliveInterval']:g} s x {tun['KeepaliveLimit']:g}: {f['error']} "
                    "| | | | |"
                )
            if not e.get("completed"):
                continue
            tun = e["tunables"]
            lines.append(
                f"| {kind} | {e['records']} | {ms(e['wall'])} "
                f"({tun['KeepaliveInterval']:g} s x {tun['KeepaliveLimit']:g}) "
                f"| {ms(e['daemon'])} | "
                f"{ms(e['baseline_copy'])} | {ms(e['baseline_recovery_io'])} | "
                f"{e['wall'] / e['baseline_recovery_io']:.1f}x |"
            )
    lines += [
        "",
        "A recovery that had not finished after 60 s (daemons busy in a long pull or",
        "push miss keepalives, drop each other and restart the recovery) is listed as",
        "not completed and measured again with the default tunables.",
        "",
        "Baselines are python-tdb in this process, same hash size and flags as the",
        "daemon's files (volatile: NOSYNC + mutex locking; persistent: synced",
        "transactions), measured in the same run.",
        "",
    ]
    path.write_text("\n".join(lines))


def plot(path: Path, r: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    labels, kill, hang = [], [], []
    for name, d in r["detection"].items():
        tun = d["tunables"]
        labels.append(f"{name}\n{tun['KeepaliveInterval']:g}s x {tun['KeepaliveLimit']:g}")
        kill.append(d["kill9"]["median"] * 1000)
        hang.append(d["hang"]["median"] * 1000)
    xs = range(len(labels))
    ax1.bar([x - 0.2 for x in xs], kill, 0.4, label="kill -9")
    ax1.bar([x + 0.2 for x in xs], hang, 0.4, label="silent hang (SIGSTOP)")
    ax1.axhline(1000, color="red", linestyle="--", linewidth=1, label="target (tuned) 1 s")
    ax1.set_xticks(list(xs), labels)
    ax1.set_yscale("log")
    ax1.set_ylabel("detection time (ms, median)")
    ax1.set_title("Failure detection")
    ax1.legend(fontsize=8)
    for kind, marker in (("volatile", "o"), ("persistent", "s")):
        entries = [e for e in r["sizes"].get(kind) or [] if e.get("completed")]
        if not entries:
            continue
        n = [e["records"] for e in entries]
        ax2.plot(n, [e["wall"] for e in entries], marker=marker, label=f"{kind}: recovery")
        ax2.plot(
            n,
            [e["baseline_recovery_io"] for e in entries],
            marker=marker,
            linestyle="--",
            label=f"{kind}: raw tdb recovery I/O",
        )
        ax2.plot(
            n,
            [e["baseline_copy"] for e in entries],
            marker=marker,
            linestyle=":",
            label=f"{kind}: raw tdb copy",
        )
    ax2.axhline(1.0, color="red", linestyle="--", linewidth=1, label="target 10k < 1 s")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("records")
    ax2.set_ylabel("seconds")
    ax2.set_title("Recovery duration vs records (3 nodes)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(ns: argparse.Namespace) -> dict[str, Any]:
    plan = Plan.make(ns.quick)
    ns.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    clusters = Clusters(workdir)
    results: dict[str, Any] = {"quick": ns.quick, "machine": machine_info(), "plan": vars(plan)}
    started = time.monotonic()
    try:
        say("failure detection, default tunables (1 s x 5)")
        results["detection"] = {"default": bench_detection(clusters, DEFAULT_TUNABLES, plan)}
        say("failure detection, tuned (0.1 s x 3)")
        results["detection"]["tuned"] = bench_detection(clusters, TUNED, plan)
        for name, d in results["detection"].items():
            say(f"  {name}: kill -9 {ms(d['kill9']['median'])}, hang {ms(d['hang']['median'])}")
        say("kill -9 -> NORMAL with every key served")
        results["kill_to_served"] = bench_kill_to_served(clusters, plan)
        say("forced recover")
        results["forced"] = bench_forced(clusters, plan)
        say(f"  wall {ms(results['forced']['wall']['median'])}")
        results["sizes"] = {}
        for kind, sizes in (
            ("volatile", plan.volatile_sizes),
            ("persistent", plan.persistent_sizes),
        ):
            say(f"recovery duration vs {kind} records {list(sizes)}")
            results["sizes"][kind] = bench_sizes(clusters, kind, sizes, workdir)
    finally:
        clusters.down_all()
        shutil.rmtree(workdir, ignore_errors=True)
    results["elapsed_s"] = time.monotonic() - started
    results["targets"] = evaluate(results)
    (ns.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(ns.out / "recovery.png", results)
    write_summary(ns.out / "summary.md", results)
    for t in results["targets"]:
        say(f"target: {t['name']}: {ms(t['measured_s'])} -> {verdict(t)}")
    say(f"wrote {ns.out}/results.json, recovery.png, summary.md in {results['elapsed_s']:.0f}s")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.recovery",
        description="Failure detection and recovery timings of a 3-node ctdbd cluster, "
        "with a raw python-tdb baseline measured in the same run.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="one repetition, 1k/10k volatile, 1k persistent"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    ns = parser.parse_args(argv)
    run(ns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
