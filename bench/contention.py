"""Contention benchmark: many clients fighting for one lock, three ways.

Issue 11 asks whether conditional append (CTDB_REQ_CONDITIONAL_APPEND: the
entry list stays where it lives, only a request and a reply travel) beats
CTDB's record migration as a lock, and whether the ordered stream of the vs
transport does. Every figure comes from real ctdbd processes (a private
3-node LocalCluster per transport, on a random loopback base and a free
port), next to baselines measured in the same run.

The workload: clients on 1, 2 and 3 nodes (client i on node i mod n) x 1, 4
and 16 clients take one lock in a loop for a fixed window; each acquisition
takes the lock, increments a counter (read, then write, under the lock) and
releases it. The locks:

* `fetch_lock`: CTDB's record lock; the record migrates to the node of
  whoever locks it, and the locked record is the counter
  (fetch_lock, store_unlock);
* `append_spin`: `cond_append(key, "empty")`; appended means held,
  `remove_entries` releases, not appended means try again at once; the
  counter is a plain volatile record (fetch, store);
* `append_fifo`: `cond_append(key, "always")`; the head of the list holds,
  the others wait for the ENTRY_HEAD_SRVID message (a hint: after
  HINT_TIMEOUT without it the waiter re-reads `entries`);
* `append_fifo_persistent`: the same FIFO lock on a list in a persistent
  database, which survives any one node on both transports: each append
  and removal is a commit every node makes (tcp: the leader's two-phase
  commit; vs: a stable ordered operation).

Each runs on tcp and on vs. Reported per configuration: acquisitions/s,
acquire latency p50/p99, fairness (per-client counts, min/max), whether the
counter equals the acquisitions (a correctness check), the driver's own CPU
(all clients are asyncio clients in this one process: if it used a whole
core it was the bottleneck) and the daemons' CPU per acquisition. Also
uncontended appends/s: each client appends to its own key and removes.

Keys are placed (`placed`): the lock and the counter have node 0 as their
lmaster, so with one node the lock is local to every client; an
uncontended client's key has its own node (local) or the next (remote).

Baselines, same run: round trips/s of the same asyncio clients against a
trivial uvloop echo server (what this driver can do when the server does no
work), the daemon's `ping` (local and node 1), an unlocked increment
(fetch, store) by one client; and tcp `fetch_lock` at the same
configuration, the reference of every ratio.

Writes results.json, contention.png and summary.md into --out; progress goes
to stderr; nothing here asserts.

    .venv/bin/python -m bench.contention [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import multiprocessing as mp
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import msgpack  # noqa: E402
import uvloop  # noqa: E402

from bench import report  # noqa: E402
from bench.foundation import (  # noqa: E402
    echo_server_main,
    load_warning,
    machine_info,
    pct,
)
from ctdb.client import AsyncClient  # noqa: E402
from ctdb.common.errors import CtdbError, ErrorCode  # noqa: E402
from ctdb.protocol.client import ENTRY_HEAD_SRVID  # noqa: E402
from ctdb.storage.placement import lmaster  # noqa: E402
from tools.cluster import LocalCluster, free_port  # noqa: E402

DB = "bench_contention"
#: The persistent database of `append_fifo_persistent`'s lists (the counter stays in DB).
PDB = "bench_contention_persistent"
TRANSPORTS = ("tcp", "vs")
VARIANTS = ("fetch_lock", "append_spin", "append_fifo", "append_fifo_persistent")
VARIANT_LABELS = {
    "fetch_lock": "fetch_lock (tcp: record migration; vs: ordered lock queue)",
    "append_spin": "cond_append 'empty', retry",
    "append_fifo": "cond_append 'always', FIFO + head message",
    "append_fifo_persistent": "the same FIFO lock, list in a persistent database",
}
#: The reference of every ratio: tcp fetch_lock at the same configuration.
REFERENCE = ("tcp", "fetch_lock")
#: Errors after which an acquisition is simply tried again (recovery, a busy queue).
TRANSIENT = {ErrorCode.RETRY, ErrorCode.BUSY, ErrorCode.TIMEOUT, ErrorCode.NO_QUORUM}
#: A FIFO waiter re-reads the entry list after this long without a head message.
HINT_TIMEOUT = 1.0
#: A configuration that has not finished this long after its window is abandoned.
DRAIN_LIMIT = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
VNNMAP = [0, 1, 2]


def placed(name: bytes, pnn: int) -> bytes:
    """`name` with the shortest suffix that makes node `pnn` the key's lmaster.

    On tcp a record starts at its lmaster and an entry list never leaves it,
    so where a key hashes to decides whether an append is local or remote:
    placing keys makes every configuration (and every run) comparable.
    """
    for i in range(10_000):
        key = b"%s-%d" % (name, i)
        if lmaster(key, VNNMAP) == pnn:
            return key
    raise AssertionError("no key found")  # cannot happen with 3 nodes


say = report.progress("contention")


@dataclass(frozen=True)
class Plan:
    """Window lengths and the grid; --quick shrinks both."""

    seconds: float  # per configuration
    nodes: tuple[int, ...]
    clients: tuple[int, ...]
    pings: int

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(seconds=0.2, nodes=(1, 3), clients=(1, 4), pings=200)
        return cls(seconds=3.0, nodes=(1, 2, 3), clients=(1, 4, 16), pings=2000)


# -- what a run of clients counts ------------------------------------------------------


@dataclass
class Tally:
    """One client's share of a window."""

    acquisitions: int = 0
    requests: int = 0  # every request this client sent (the driver's load)
    attempts: int = 0  # lock requests, refused ones included
    fallbacks: int = 0  # FIFO: entry-list re-reads after a missing head message
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def error(self, exc: CtdbError) -> None:
        self.errors[exc.code.name if isinstance(exc.code, ErrorCode) else str(exc.code)] += 1


def drain(queue: asyncio.Queue[Any]) -> None:
    """Drop messages of earlier rounds (a head message also tells an appender to an
    empty list that it is first, which its reply already said)."""
    while not queue.empty():
        queue.get_nowait()


async def fetch_lock_round(c: AsyncClient, key: bytes, t: Tally, deadline: float) -> None:
    """fetch_lock the counter record, store_unlock it incremented."""
    clock = time.perf_counter
    while clock() < deadline:
        t0 = clock()
        t.attempts += 1
        t.requests += 1
        try:
            value = await c.fetch_lock(DB, key)
        except CtdbError as exc:
            if exc.code not in TRANSIENT:
                raise
            t.error(exc)
            continue
        held = clock()
        t.requests += 1
        try:
            await c.store_unlock(DB, key, b"%d" % (int(value or b"0") + 1))
        except CtdbError as exc:  # RETRY: the lock was lost to a recovery, nothing written
            if exc.code not in TRANSIENT:
                raise
            t.error(exc)
            continue
        t.latencies.append(held - t0)
        t.acquisitions += 1


async def increment(c: AsyncClient, counter: bytes, t: Tally) -> None:
    """The work under an append lock: read the counter, write it back plus one."""
    value = await c.fetch(DB, counter)
    await c.store(DB, counter, b"%d" % (int(value or b"0") + 1))
    t.requests += 2


async def append_spin_round(
    c: AsyncClient, key: bytes, counter: bytes, t: Tally, deadline: float
) -> None:
    """cond_append 'empty' until appended; increment; remove_entries."""
    clock = time.perf_counter
    while clock() < deadline:
        t0 = clock()
        while True:
            drain(c.messages)
            t.attempts += 1
            t.requests += 1
            try:
                r = await c.cond_append(DB, key, b"held", "empty")
            except CtdbError as exc:
                if exc.code not in TRANSIENT:
                    raise
                t.error(exc)
                r = None
            if r is not None and r.appended:
                break
            if clock() >= deadline:
                return
        held = clock()
        await increment(c, counter, t)
        t.requests += 1
        await c.remove_entries(DB, key)
        t.latencies.append(held - t0)
        t.acquisitions += 1


async def append_fifo_round(
    c: AsyncClient, key: bytes, counter: bytes, t: Tally, deadline: float, db: str = DB
) -> None:
    """cond_append 'always'; wait to be the head; increment; remove_entries.

    A waiter that appended before the deadline always gets its turn (it
    cannot leave the queue without the holder's cooperation anyway), so the
    window ends when the last waiter has had it.
    """
    clock = time.perf_counter
    while clock() < deadline:
        t0 = clock()
        drain(c.messages)
        t.attempts += 1
        t.requests += 1
        try:
            r = await c.cond_append(db, key, b"queued", "always")
        except CtdbError as exc:
            if exc.code not in TRANSIENT:
                raise
            t.error(exc)
            continue
        while r.index != 0:
            try:
                msg = await asyncio.wait_for(c.messages.get(), HINT_TIMEOUT)
            except TimeoutError:
                t.fallbacks += 1
                t.requests += 1
                now = await c.entries(db, key)
                if now.entries and now.entries[0].owner == r.owner:
                    break
                continue
            if msg.srvid == ENTRY_HEAD_SRVID and msgpack.unpackb(msg.data)[1] == key:
                break
        held = clock()
        await increment(c, counter, t)
        t.requests += 1
        await c.remove_entries(db, key)
        t.latencies.append(held - t0)
        t.acquisitions += 1


async def uncontended_round(c: AsyncClient, key: bytes, t: Tally, deadline: float) -> None:
    """Append to this client's own key (always), remove it again."""
    clock = time.perf_counter
    while clock() < deadline:
        t0 = clock()
        t.requests += 2
        await c.cond_append(DB, key, b"mine", "always")
        t.latencies.append(clock() - t0)
        await c.remove_entries(DB, key)
        drain(c.messages)
        t.acquisitions += 1


# -- CPU accounting --------------------------------------------------------------------


def own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def pids_cpu(pids: list[int]) -> float:
    """CPU seconds the processes `pids` used so far (gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def server_pids(cluster: LocalCluster) -> list[int]:
    """The daemons, and the private corosync if this cluster started one."""
    return [*cluster.pids.values(), *([cluster.corosync_pid] if cluster.corosync_pid else [])]


# -- one configuration -------------------------------------------------------------------


Round = Callable[[AsyncClient, int, Tally, float], Awaitable[None]]


async def drive(
    sockets: list[str], round_: Round, seconds: float, servers: list[int]
) -> tuple[list[Tally], dict[str, float]]:
    """Connect a client per socket, run `round_` on all at once for `seconds`."""
    clients = [await AsyncClient.connect(s) for s in sockets]
    tallies = [Tally() for _ in clients]
    try:
        clock = time.perf_counter
        cpu0, srv0 = own_cpu(), pids_cpu(servers)
        start = clock()
        deadline = start + seconds
        async with asyncio.timeout(seconds + DRAIN_LIMIT):
            await asyncio.gather(
                *(
                    round_(c, i, t, deadline)
                    for i, (c, t) in enumerate(zip(clients, tallies, strict=True))
                )
            )
        elapsed = clock() - start
        cpu = {
            "elapsed_s": elapsed,
            "driver_cpu_s": own_cpu() - cpu0,
            "servers_cpu_s": pids_cpu(servers) - srv0,
        }
    finally:
        for c in clients:
            await c.close()
    return tallies, cpu


def summarize(tallies: list[Tally], cpu: dict[str, float]) -> dict[str, Any]:
    elapsed = cpu["elapsed_s"]
    counts = [t.acquisitions for t in tallies]
    lat = [x for t in tallies for x in t.latencies]
    total = sum(counts)
    requests = sum(t.requests for t in tallies)
    errors: Counter[str] = Counter()
    for t in tallies:
        errors.update(t.errors)
    return {
        "acquisitions": total,
        "per_s": total / elapsed,
        "p50_s": pct(lat, 50),
        "p99_s": pct(lat, 99),
        "mean_s": statistics.fmean(lat) if lat else float("nan"),
        "per_client": counts,
        "per_client_min": min(counts),
        "per_client_max": max(counts),
        "fairness_min_over_max": (min(counts) / max(counts)) if max(counts) else 0.0,
        "attempts_per_acquisition": sum(t.attempts for t in tallies) / total if total else None,
        "head_message_fallbacks": sum(t.fallbacks for t in tallies),
        "errors": dict(errors),
        "requests": requests,
        "driver_requests_per_s": requests / elapsed,
        "driver_cpu_fraction": cpu["driver_cpu_s"] / elapsed,
        "servers_cpu_fraction": cpu["servers_cpu_s"] / elapsed,
        "servers_cpu_per_acquisition_s": cpu["servers_cpu_s"] / total if total else None,
        **cpu,
    }


async def contend(
    cluster: LocalCluster, variant: str, nodes: int, clients: int, seconds: float
) -> dict[str, Any]:
    tag = f"{variant}-{nodes}n-{clients}c".encode()
    key, counter = placed(b"lock-" + tag, 0), placed(b"counter-" + tag, 0)
    if variant == "fetch_lock":
        counter = key  # the locked record is the counter
    lock_db = PDB if variant == "append_fifo_persistent" else DB

    async def round_(c: AsyncClient, i: int, t: Tally, deadline: float) -> None:
        if variant == "fetch_lock":
            await fetch_lock_round(c, key, t, deadline)
        elif variant == "append_spin":
            await append_spin_round(c, key, counter, t, deadline)
        else:
            await append_fifo_round(c, key, counter, t, deadline, lock_db)

    sockets = [cluster.socket(i % nodes) for i in range(clients)]
    calls_before = await calls_sent(cluster)
    tallies, cpu = await drive(sockets, round_, seconds, server_pids(cluster))
    r = summarize(tallies, cpu)
    calls = await calls_sent(cluster) - calls_before
    # tcp: a Call asks for a record to migrate here (vs moves no record: 0)
    r["migrations_per_acquisition"] = calls / r["acquisitions"] if r["acquisitions"] else None
    check = await AsyncClient.connect(cluster.socket(0))
    try:
        final = int(await check.fetch(DB, counter) or b"0")
        left = (await check.entries(lock_db, key)).entries if variant != "fetch_lock" else []
    finally:
        await check.close()
    r.update(
        nodes=nodes,
        clients=clients,
        counter=final,
        counter_ok=final == r["acquisitions"],
        entries_left=len(left),
    )
    return r


async def calls_sent(cluster: LocalCluster) -> int:
    """Record migrations the nodes asked for so far (each node's `calls_sent`)."""
    total = 0
    for pnn in range(cluster.size):
        c = await AsyncClient.connect(cluster.socket(pnn))
        try:
            total += int((await c.call("statistics")).get("calls_sent", 0))
        finally:
            await c.close()
    return total


async def uncontended(
    cluster: LocalCluster, clients: int, where: str, seconds: float
) -> dict[str, Any]:
    """Clients spread over all three nodes, each on its own key, whose lmaster is
    the client's node (`where` = "local") or the next node ("remote")."""
    shift = 0 if where == "local" else 1
    keys = [
        placed(b"own-%s-%dc-%d" % (where.encode(), clients, i), (i + shift) % cluster.size)
        for i in range(clients)
    ]

    async def round_(c: AsyncClient, i: int, t: Tally, deadline: float) -> None:
        await uncontended_round(c, keys[i], t, deadline)

    sockets = [cluster.socket(i % cluster.size) for i in range(clients)]
    tallies, cpu = await drive(sockets, round_, seconds, server_pids(cluster))
    r = summarize(tallies, cpu)
    r.update(clients=clients, keys=where, appends_per_s=r["per_s"])
    return r


# -- baselines ----------------------------------------------------------------------------


async def echo_rate(path: str, clients: int, seconds: float) -> dict[str, Any]:
    """Round trips/s of `clients` AsyncClients against the echo server (`fetch`
    answered with its key): the most this driver gets out of a server that
    does no work."""

    async def round_(c: AsyncClient, i: int, t: Tally, deadline: float) -> None:
        clock = time.perf_counter
        while clock() < deadline:
            t0 = clock()
            await c.fetch(DB, b"k")
            t.latencies.append(clock() - t0)
            t.acquisitions += 1
            t.requests += 1

    tallies, cpu = await drive([path] * clients, round_, seconds, [])
    r = summarize(tallies, cpu)
    return {
        "clients": clients,
        "round_trips_per_s": r["per_s"],
        "p50_s": r["p50_s"],
        "driver_cpu_fraction": r["driver_cpu_fraction"],
    }


async def ping(cluster: LocalCluster, pnn: int, n: int) -> dict[str, float]:
    c = await AsyncClient.connect(cluster.socket(0))
    try:
        rtts, walls = [], []
        for i in range(n + 50):
            t0 = time.perf_counter()
            r = await c.call("ping", pnn=pnn)
            if i >= 50:  # warm-up
                walls.append(time.perf_counter() - t0)
                rtts.append(r["rtt"])
    finally:
        await c.close()
    return {"rtt_p50_s": pct(rtts, 50), "rtt_p99_s": pct(rtts, 99), "wall_p50_s": pct(walls, 50)}


async def unlocked_increments(cluster: LocalCluster, seconds: float) -> dict[str, Any]:
    """One client on node 0: fetch, store +1, no lock: the counter work alone."""
    key = b"unlocked-counter"

    async def round_(c: AsyncClient, i: int, t: Tally, deadline: float) -> None:
        clock = time.perf_counter
        while clock() < deadline:
            t0 = clock()
            await increment(c, key, t)
            t.latencies.append(clock() - t0)
            t.acquisitions += 1

    tallies, cpu = await drive([cluster.socket(0)], round_, seconds, server_pids(cluster))
    r = summarize(tallies, cpu)
    return {"per_s": r["per_s"], "p50_s": r["p50_s"], "p99_s": r["p99_s"]}


# -- one transport ------------------------------------------------------------------------


def start_cluster(workdir: Path, transport: str) -> LocalCluster:
    """A private 3-node cluster on a random loopback base and a free port (retried)."""
    last: Exception | None = None
    for attempt in range(3):
        base = f"127.{random.randint(10, 250)}.{random.randint(0, 250)}"
        port = free_port([f"{base}.{i + 1}" for i in range(3)])
        cluster = LocalCluster(
            workdir / f"{transport}{attempt}",
            size=3,
            transport=transport,
            port=port,
            base=base,
            log_level="WARNING",
        )
        say(f"starting a 3-node {transport} cluster on {base}.1-3 port {port}")
        try:
            cluster.up(timeout=60, progress=lambda m: say(f"  {m}"))
            return cluster
        except Exception as exc:  # noqa: BLE001 - a port clash etc.: retried
            last = exc
            cluster.down()
    raise RuntimeError(f"{transport} cluster did not come up: {last}")


def describe(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"FAILED: {r['error']}"
    return (
        f"{r['per_s']:,.0f}/s, p50 {r['p50_s'] * 1e3:.2f} ms, p99 {r['p99_s'] * 1e3:.2f} ms, "
        f"clients {r['per_client_min']}..{r['per_client_max']}, "
        f"counter {'ok' if r.get('counter_ok', True) else 'WRONG'}, "
        f"driver cpu {r['driver_cpu_fraction']:.0%}"
    )


async def guarded(make: Callable[[], Awaitable[dict[str, Any]]], what: str) -> dict[str, Any]:
    """A configuration's figures, or what went wrong (the run goes on)."""
    try:
        return await make()
    except (CtdbError, OSError, TimeoutError) as exc:
        say(f"  {what} failed: {exc!r}")
        return {"error": repr(exc)}


async def bench_transport(cluster: LocalCluster, plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {"contention": {}, "uncontended": []}
    c = await AsyncClient.connect(cluster.socket(0))
    try:
        await c.attach(DB)
        await c.attach(PDB, "persistent")
    finally:
        await c.close()
    say(f"  baselines: ping x{plan.pings} local and to node 1, unlocked increments")
    out["ping_local"] = await ping(cluster, 0, plan.pings)
    out["ping_remote"] = await ping(cluster, 1, plan.pings)
    out["unlocked_increment"] = await unlocked_increments(cluster, plan.seconds)
    say(
        f"    ping node 1 rtt p50 {out['ping_remote']['rtt_p50_s'] * 1e3:.3f} ms, "
        f"unlocked increment {out['unlocked_increment']['per_s']:,.0f}/s"
    )
    for variant in VARIANTS:
        rows = []
        for nodes in plan.nodes:
            for clients in plan.clients:
                r = await guarded(
                    functools.partial(contend, cluster, variant, nodes, clients, plan.seconds),
                    f"{variant} {nodes}n x {clients}c",
                )
                r.update(nodes=nodes, clients=clients)
                say(f"  {variant:11s} {nodes} nodes x {clients:2d} clients: {describe(r)}")
                rows.append(r)
        out["contention"][variant] = rows
    for where in ("local", "remote"):
        for clients in plan.clients:
            r = await guarded(
                functools.partial(uncontended, cluster, clients, where, plan.seconds),
                f"uncontended {clients}c {where}",
            )
            r.update(clients=clients, keys=where)
            say(f"  uncontended appends, {clients:2d} clients, {where} keys: {describe(r)}")
            out["uncontended"].append(r)
    with_stats = await AsyncClient.connect(cluster.socket(0))
    try:
        out["daemon_statistics_node0"] = await with_stats.call("statistics")
    finally:
        await with_stats.close()
    return out


# -- ratios and headline ------------------------------------------------------------------


def ratios(per_transport: dict[str, Any]) -> list[dict[str, Any]]:
    """Every configuration's rate against tcp fetch_lock at the same configuration."""
    ref_rows = per_transport.get(REFERENCE[0], {}).get("contention", {}).get(REFERENCE[1], [])
    ref = {(r["nodes"], r["clients"]): r.get("per_s") for r in ref_rows}
    out = []
    for transport, data in per_transport.items():
        for variant, rows in data["contention"].items():
            for r in rows:
                base = ref.get((r["nodes"], r["clients"]))
                value = r.get("per_s")
                out.append(
                    {
                        "transport": transport,
                        "variant": variant,
                        "nodes": r["nodes"],
                        "clients": r["clients"],
                        "per_s": value,
                        "reference_per_s": base,
                        "ratio": value / base if value and base else None,
                    }
                )
    return out


def find(rows: list[dict[str, Any]], nodes: int, clients: int) -> dict[str, Any]:
    return next(r for r in rows if r["nodes"] == nodes and r["clients"] == clients)


def headline(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The largest configuration of the grid, every lock on every transport."""
    plan = results["plan"]
    nodes, clients = max(plan["nodes"]), max(plan["clients"])
    rows = []
    for transport, data in results["transports"].items():
        for variant in VARIANTS:
            r = find(data["contention"][variant], nodes, clients)
            ratio = next(
                x["ratio"]
                for x in results["ratios"]
                if (x["transport"], x["variant"], x["nodes"], x["clients"])
                == (transport, variant, nodes, clients)
            )
            rows.append(
                {
                    "transport": transport,
                    "variant": variant,
                    "nodes": nodes,
                    "clients": clients,
                    "per_s": r.get("per_s"),
                    "p50_s": r.get("p50_s"),
                    "p99_s": r.get("p99_s"),
                    "fairness_min_over_max": r.get("fairness_min_over_max"),
                    "counter_ok": r.get("counter_ok"),
                    "ratio_to_tcp_fetch_lock": ratio,
                }
            )
    return rows


# -- output -----------------------------------------------------------------------------

SAMBA_NOTE = (
    "Samba's real ctdbd is not measured: pyctdb does not yet speak CTDB's own client "
    "protocol for records (fetch_lock, record calls), so this workload cannot drive Samba's "
    "ctdbd yet, and conditional append exists only in pyctdb. Issue 11 defers the side by "
    "side run to the issue on CTDB's client protocol."
)


def ms(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x * 1e3:.2f}"


def rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def busy_note(machine: dict[str, Any]) -> list[str]:
    """Other work shared the CPUs: every configuration is one window, so say so."""
    if not load_warning(machine):
        return []
    return [
        f"**Busy host**: 1-minute load average {machine['loadavg_at_start'][0]:.1f} at start, "
        f"{machine['loadavg'][0]:.1f} at end, on {machine['cpus']} CPUs (daemons, corosync "
        "and this driver share them, with other work). Each configuration is one window: "
        "rates may swing up to 2x between runs and tails (p99) are pessimistic.",
        "",
    ]


def write_summary(path: Path, results: dict[str, Any]) -> None:
    b = results["baselines"]
    lines = [
        "# Contention benchmark",
        "",
        f"{results['started']}{' - quick' if results['quick'] else ''} - "
        f"{results['machine']['cpus']} CPUs ({results['machine']['cpu']}), "
        f"Python {results['machine']['python']}, {results['plan']['seconds']:g} s per "
        "configuration",
        "",
        f"Command: `{results['command']}`",
        "",
        *busy_note(results["machine"]),
        "One key, clients spread over the nodes used (client i on node i mod n); each "
        "acquisition takes the lock, increments a counter under it and releases it. "
        "Ratios are against tcp `fetch_lock` at the same nodes x clients.",
        "",
        "## Headline (largest configuration)",
        "",
        "| transport | lock | acquisitions/s | ratio to tcp fetch_lock | acquire p50 ms "
        "| p99 ms | fairness min/max | counter ok |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for h in results["headline"]:
        ratio = (
            "-" if h["ratio_to_tcp_fetch_lock"] is None else f"{h['ratio_to_tcp_fetch_lock']:.2f}x"
        )
        fair = h["fairness_min_over_max"]
        lines.append(
            f"| {h['transport']} | {VARIANT_LABELS[h['variant']]} | {rate(h['per_s'])} | {ratio} "
            f"| {ms(h['p50_s'])} | {ms(h['p99_s'])} | {'-' if fair is None else f'{fair:.2f}'} "
            f"| {h['counter_ok']} |"
        )
    lines += [
        "",
        "## Baselines (same run)",
        "",
        "| baseline | value |",
        "|---|---|",
    ]
    for e in b["echo"]:
        lines.append(
            f"| uvloop echo server, {e['clients']} AsyncClient(s) in this driver | "
            f"{rate(e['round_trips_per_s'])} round trips/s (p50 {ms(e['p50_s'])} ms, "
            f"driver CPU {e['driver_cpu_fraction']:.0%}) |"
        )
    for transport, data in results["transports"].items():
        lines += [
            f"| {transport}: ping node 1, rtt inside the daemon p50 | "
            f"{ms(data['ping_remote']['rtt_p50_s'])} ms |",
            f"| {transport}: ping local, client wall p50 | "
            f"{ms(data['ping_local']['wall_p50_s'])} ms |",
            f"| {transport}: unlocked increment (fetch, store), 1 client | "
            f"{rate(data['unlocked_increment']['per_s'])}/s |",
        ]
    lines += [
        "",
        "## Every configuration",
        "",
        "attempts = lock requests per acquisition (refusals included); migr/acq = record "
        "migrations the nodes asked for (Calls) per acquisition, tcp only; req/acq = every "
        "request per acquisition (fetch_lock: lock, store_unlock; an append lock: append, "
        "fetch, store, remove, plus refused appends); driver CPU = this "
        "process's share of one core (all clients run in it); daemons' CPU per acquisition "
        "adds up every ctdbd (and the private corosync on vs).",
        "",
        "| transport | lock | nodes | clients | acq/s | ratio | p50 ms | p99 ms | per client "
        "min..max | attempts | migr/acq | req/acq | counter ok | driver CPU | "
        "daemons ms CPU/acq | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratio_of = {
        (x["transport"], x["variant"], x["nodes"], x["clients"]): x["ratio"]
        for x in results["ratios"]
    }
    for transport, data in results["transports"].items():
        for variant, rows in data["contention"].items():
            for r in rows:
                if "error" in r:
                    lines.append(
                        f"| {transport} | {variant} | {r['nodes']} | {r['clients']} | "
                        f"failed: {r['error']} |||||||||||"
                    )
                    continue
                ratio = ratio_of[(transport, variant, r["nodes"], r["clients"])]
                att = r["attempts_per_acquisition"]
                mig = r.get("migrations_per_acquisition")
                lines.append(
                    f"| {transport} | {variant} | {r['nodes']} | {r['clients']} | "
                    f"{rate(r['per_s'])} | {'-' if ratio is None else f'{ratio:.2f}x'} | "
                    f"{ms(r['p50_s'])} | {ms(r['p99_s'])} | "
                    f"{r['per_client_min']}..{r['per_client_max']} | "
                    f"{'-' if att is None else f'{att:.1f}'} | "
                    f"{'-' if mig is None else f'{mig:.2f}'} | "
                    f"{r['requests'] / max(1, r['acquisitions']):.1f} | {r['counter_ok']} | "
                    f"{r['driver_cpu_fraction']:.0%} | "
                    f"{ms(r['servers_cpu_per_acquisition_s'])} | "
                    f"{', '.join(f'{k} {v}' for k, v in r['errors'].items()) or '-'} |"
                )
    lines += [
        "",
        "## Uncontended appends (each client its own key, append 'always' then remove)",
        "",
        "Clients on all three nodes (client i on node i mod 3); each key's lmaster, where "
        "an entry list lives on tcp, is the client's own node (local) or the next one "
        "(remote). An append/s is one append and one removal.",
        "",
        "| transport | keys | clients | appends/s | append p50 ms | p99 ms | driver CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for transport, data in results["transports"].items():
        for r in data["uncontended"]:
            if "error" in r:
                lines.append(
                    f"| {transport} | {r['keys']} | {r['clients']} | failed: {r['error']} ||||"
                )
                continue
            lines.append(
                f"| {transport} | {r['keys']} | {r['clients']} | {rate(r['appends_per_s'])} | "
                f"{ms(r['p50_s'])} | {ms(r['p99_s'])} | {r['driver_cpu_fraction']:.0%} |"
            )
    checks = results["checks"]
    lines += [
        "",
        "## Checks",
        "",
        f"* Counter equals acquisitions in every configuration: **{checks['counter_ok']}**"
        + (f" (wrong: {', '.join(checks['counter_wrong'])})" if checks["counter_wrong"] else ""),
        f"* Configurations that failed: {', '.join(checks['failed']) or 'none'}.",
        f"* Highest driver CPU in a window: {checks['max_driver_cpu']:.0%} of a core "
        f"({checks['max_driver_cpu_where']}); the driver's echo floor is "
        f"{rate(max(e['round_trips_per_s'] for e in b['echo']))} round trips/s against at "
        f"most {rate(checks['max_driver_requests_per_s'])} requests/s in the contention "
        "windows.",
        "",
        "## Samba's ctdbd",
        "",
        SAMBA_NOTE,
        "",
    ]
    path.write_text("\n".join(lines))


STYLE = {
    ("tcp", "fetch_lock"): ("tab:blue", "-", "o"),
    ("tcp", "append_spin"): ("tab:orange", "-", "s"),
    ("tcp", "append_fifo"): ("tab:green", "-", "^"),
    ("tcp", "append_fifo_persistent"): ("tab:purple", "-", "v"),
    ("vs", "fetch_lock"): ("tab:blue", "--", "o"),
    ("vs", "append_spin"): ("tab:orange", "--", "s"),
    ("vs", "append_fifo"): ("tab:green", "--", "^"),
    ("vs", "append_fifo_persistent"): ("tab:purple", "--", "v"),
}


UNCONTENDED_COLORS = {
    ("tcp", "local"): "tab:green",
    ("tcp", "remote"): "#98df8a",
    ("vs", "local"): "tab:olive",
    ("vs", "remote"): "#dbdb8d",
}


def plot(path: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan = results["plan"]
    grid = [(n, c) for n in plan["nodes"] for c in plan["clients"]]
    xs = list(range(len(grid)))
    ticks = [f"{n}n x {c}c" for n, c in grid]
    fig, axes = plt.subplots(2, 2, figsize=(15, 9.5))
    panels = [
        (axes[0][0], "per_s", 1.0, "acquisitions / s (log)", "Lock acquisitions per second"),
        (axes[0][1], "p99_s", 1e3, "ms (log)", "Acquire latency p99 (dotted: p50)"),
        (axes[1][0], "fairness_min_over_max", 1.0, "min / max", "Fairness: per-client counts"),
    ]
    for ax, field_, scale, ylabel, title in panels:
        for transport, data in results["transports"].items():
            for variant, rows in data["contention"].items():
                color, ls, marker = STYLE[(transport, variant)]
                by = {(r["nodes"], r["clients"]): r for r in rows}
                ys = [(by[g].get(field_) or float("nan")) * scale for g in grid]
                ax.plot(xs, ys, color=color, ls=ls, marker=marker, label=f"{transport} {variant}")
                if field_ == "p99_s":
                    p50 = [(by[g].get("p50_s") or float("nan")) * 1e3 for g in grid]
                    ax.plot(xs, p50, color=color, ls=":", marker=marker, alpha=0.5)
        ax.set_xticks(xs, ticks, fontsize=8, rotation=30)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if field_ != "fairness_min_over_max":
            ax.set_yscale("log")
        else:
            ax.set_ylim(0, 1.05)
    ax = axes[0][0]
    for transport, data in results["transports"].items():
        ax.axhline(
            data["unlocked_increment"]["per_s"],
            color="grey",
            ls="-" if transport == "tcp" else "--",
            lw=1,
            label=f"{transport} unlocked increment, 1 client",
        )
    ax.legend(fontsize=7, ncol=2)

    ax = axes[1][1]
    bars: list[tuple[str, float, str]] = [
        (f"echo\n{e['clients']}c", e["round_trips_per_s"], "#9e9e9e")
        for e in results["baselines"]["echo"]
    ]
    for transport, data in results["transports"].items():
        for r in data["uncontended"]:
            bars.append(
                (
                    f"{transport}\n{r['keys']}\n{r['clients']}c",
                    r.get("appends_per_s") or 0.0,
                    UNCONTENDED_COLORS[(transport, r["keys"])],
                )
            )
    bx = range(len(bars))
    ax.bar(bx, [v for _, v, _ in bars], color=[c for _, _, c in bars])
    ax.set_xticks(list(bx), [n for n, _, _ in bars], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("per second (log)")
    ax.set_title("Uncontended appends/s (own key, 3 nodes) vs echo round trips (grey)")
    for x, (_, v, _) in zip(bx, bars, strict=True):
        ax.text(x, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=7)

    fig.suptitle(
        f"ctdb contention on one key: fetch_lock vs conditional append, tcp (solid) and vs "
        f"(dashed) - {results['machine']['cpus']} CPUs, {results['started']}",
        fontsize=10,
    )
    report.save_figure(fig, path)


# -- the run ------------------------------------------------------------------------------


def checks(per_transport: dict[str, Any]) -> dict[str, Any]:
    wrong, failed = [], []
    max_cpu, where, max_req = 0.0, "", 0.0
    for transport, data in per_transport.items():
        rows = [(v, r) for v, rs in data["contention"].items() for r in rs]
        rows += [("uncontended", r) for r in data["uncontended"]]
        for variant, r in rows:
            name = f"{transport} {variant} {r.get('nodes', 3)}n x {r['clients']}c"
            if variant == "uncontended":
                name += f" {r['keys']} keys"
            if "error" in r:
                failed.append(name)
                continue
            if r.get("counter_ok") is False:
                wrong.append(f"{name}: {r['counter']} != {r['acquisitions']}")
            if r["driver_cpu_fraction"] > max_cpu:
                max_cpu, where = r["driver_cpu_fraction"], name
            if variant != "uncontended":
                max_req = max(max_req, r["driver_requests_per_s"])
    return {
        "counter_ok": not wrong and not failed,
        "counter_wrong": wrong,
        "failed": failed,
        "max_driver_cpu": max_cpu,
        "max_driver_cpu_where": where,
        "max_driver_requests_per_s": max_req,
    }


def run(ns: argparse.Namespace) -> dict[str, Any]:
    plan = Plan.make(ns.quick)
    # The daemons run the code of this checkout.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    )
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    load_at_start = list(os.getloadavg())
    t_start = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="ctdb-bench-contention-"))
    per_transport: dict[str, Any] = {}
    echo: Any = None
    try:
        say("baseline: a trivial uvloop echo server, driven by this driver's AsyncClients")
        ctx = mp.get_context("spawn")
        echo_path = str(workdir / "echo.socket")
        ready = ctx.Event()
        echo = ctx.Process(target=echo_server_main, args=(echo_path, ready), daemon=True)
        echo.start()
        if not ready.wait(30):
            raise RuntimeError("echo server did not start")
        echo_rows = [
            uvloop.run(echo_rate(echo_path, n, plan.seconds)) for n in (1, max(plan.clients))
        ]
        for e in echo_rows:
            say(
                f"  {e['clients']:2d} clients: {e['round_trips_per_s']:,.0f} round trips/s, "
                f"driver cpu {e['driver_cpu_fraction']:.0%}"
            )
        echo.terminate()
        echo.join(10)
        echo = None
        for transport in ns.transports:
            cluster = start_cluster(workdir, transport)
            try:
                per_transport[transport] = uvloop.run(bench_transport(cluster, plan))
            finally:
                say(f"stopping the {transport} cluster")
                cluster.down()
    finally:
        if echo is not None:
            echo.terminate()
            echo.join(10)
        shutil.rmtree(workdir, ignore_errors=True)

    results: dict[str, Any] = {
        "benchmark": "contention",
        "command": " ".join([Path(sys.executable).name, "-m", "bench.contention", *sys.argv[1:]]),
        "argv": sys.argv,
        "started": started,
        "duration_s": time.perf_counter() - t_start,
        "quick": ns.quick,
        "plan": plan.__dict__,
        "variants": VARIANT_LABELS,
        "reference": "/".join(REFERENCE),
        "machine": {**machine_info(), "loadavg_at_start": load_at_start},
        "baselines": {"echo": echo_rows},
        "transports": per_transport,
        "ratios": ratios(per_transport),
        "checks": checks(per_transport),
        "samba_ctdbd": {"measured": False, "reason": SAMBA_NOTE},
    }
    results["headline"] = headline(results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = report.parser("contention", __doc__)
    parser.add_argument("--quick", action="store_true", help="a small grid, short windows")
    parser.add_argument(
        "--transports",
        type=lambda s: s.split(","),
        default=list(TRANSPORTS),
        help="comma-separated, tcp first (the reference): default tcp,vs",
    )
    ns = parser.parse_args(argv)
    if ns.transports[0] != REFERENCE[0] or not set(ns.transports) <= set(TRANSPORTS):
        parser.error("--transports: tcp first, then optionally vs")

    results = run(ns)
    say(f"done in {results['duration_s']:.1f} s")
    report.write(ns.out, "contention", results, write_summary, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
