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

* side by side with Samba's ctdbd (tools/samba_ctdbd.py) on the same
  machine and the same data, a persistent database of 160k records (and
  empty): kill -9 of a non-leader until the survivors serve, a restarted
  node until it is OK and serves, a forced `recover` with each admin tool;
  pyctdb / ctdbd ratios against the issue's target (<= 0.5x on 160k);
* pyctdb's recovery time against the records changed since the previous
  recovery (0 .. 100k of 160k), next to a recovery that copies every record.

Writes results.json, recovery.png and summary.md into --out. Targets are
reported as met or not met; nothing here asserts.

    .venv/bin/python -m bench.recovery [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import report  # noqa: E402
from ctdb.client import AsyncClient  # noqa: E402
from ctdb.common.errors import CtdbError, ErrorCode  # noqa: E402
from ctdb.storage.ltdb import DEFAULT_HASH_SIZE, TDB_MUTEX_LOCKING, Record  # noqa: E402
from ctdb.storage.placement import lmaster  # noqa: E402
from tools.cluster import LocalCluster  # noqa: E402
from tools.samba_ctdbd import CTDB as SAMBA_CTDB  # noqa: E402
from tools.samba_ctdbd import SambaCluster, SambaCtdbError  # noqa: E402
from tools.samba_ctdbd import available as samba_available  # noqa: E402

VALUE_SIZE = 64
DEFAULT_TUNABLES = {"KeepaliveInterval": 1.0, "KeepaliveLimit": 5}
TUNED = {"KeepaliveInterval": 0.1, "KeepaliveLimit": 3}
DISCONNECTED = 0x01


say = report.progress("recovery")


@dataclass(frozen=True)
class Plan:
    repeats: int  # detection / kill / forced-recover repetitions
    serve_keys: int  # volatile keys in the kill -> served scenario
    volatile_sizes: tuple[int, ...]
    persistent_sizes: tuple[int, ...]
    side_records: int  # persistent records in the side-by-side run with Samba's ctdbd
    side_repeats: int
    side_empty: bool  # also the side-by-side steps with an empty database
    differs: tuple[int, ...]  # records changed before a recovery (of side_records)
    missed: tuple[int, ...]  # persistent commits a killed node misses before its restart

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(1, 300, (1_000, 10_000), (1_000,), 2_000, 1, False, (0, 200), (200,))
        return cls(
            5,
            1_000,
            (1_000, 10_000, 100_000),
            (1_000, 10_000, 100_000),
            160_000,
            3,
            True,
            (0, 1_000, 10_000, 100_000),
            (1, 1_000, 100_000),
        )


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


async def _bulk_store(
    c: LocalCluster,
    db: str,
    n: int,
    vnnmap: list[int],
    val: Callable[[int], bytes] = value,
) -> None:
    """Store records 0..n-1, each through its lmaster (the local fast path), pipelined."""
    clients = [await AsyncClient.connect(c.socket(p)) for p in range(c.size)]
    try:
        window = 400
        for start in range(0, n, window):
            await asyncio.gather(
                *(
                    clients[lmaster(key(i), vnnmap)].store(db, key(i), val(i))
                    for i in range(start, min(n, start + window))
                )
            )
    finally:
        for cl in clients:
            await cl.close()


async def _bulk_commit(
    c: LocalCluster,
    db: str,
    n: int,
    per_tx: int = 10_000,
    val: Callable[[int], bytes] = value,
) -> None:
    """Commit records 0..n-1 to a persistent database, per_tx per transaction (pipelined)."""
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
                            cl.call("trans_store", tx=tx, key=key(i), value=val(i))
                            for i in range(chunk, min(stop, chunk + 1000))
                        )
                    )
                try:
                    await cl.call("trans_commit", tx=tx)
                    break
                except CtdbError as exc:
                    # NO_QUORUM: busy daemons dropped each other; they recover.
                    if exc.code not in (ErrorCode.BUSY, ErrorCode.RETRY, ErrorCode.NO_QUORUM):
                        raise
    finally:
        await cl.close()


# -- measurements ------------------------------------------------------------------------


def bench_detection(c: LocalCluster, tunables: dict[str, float], plan: Plan) -> dict[str, Any]:
    """kill -9 and SIGSTOP of node 2 until nodes 0 and 1 both show it DISCONNECTED.

    `c` runs with `tunables`; it is left healthy (and up) for what comes next."""
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
    return {"kill9": summary(kill), "hang": summary(hang), "tunables": tunables}


def bench_kill_to_served(c: LocalCluster, plan: Plan) -> dict[str, Any]:
    """kill -9 of node 2 until recovery mode NORMAL and every key served on node 0 (of `c`,
    a healthy cluster with the TUNED tunables and no database yet)."""
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
        normal.append(poll(functools.partial(recovered, c, [0, 1], old), 30))
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
    """(wall seconds until every node is NORMAL in a new generation, leader's own figure).

    `recover` returns once the recovery has finished, or fails with TIMEOUT
    after RecoverTimeout while the leader goes on recovering: then the clock
    runs on until the nodes are NORMAL in a new generation, up to `timeout`.
    """
    st = c.status(0)
    leader = st["leader"]
    before = last_recovery(c, leader).get("finished")
    t0 = time.monotonic()
    try:
        with c.client(leader, timeout=timeout) as cl:
            cl.call("recover")
    except CtdbError as exc:
        if exc.code != ErrorCode.TIMEOUT:
            raise
        say(f"  recover after {time.monotonic() - t0:.1f}s: {exc}; waiting for the end")
    try:
        left = max(0.0, timeout - (time.monotonic() - t0))
        poll(functools.partial(recovered, c, [0, 1, 2], st["generation"]), left)
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

    A recovery (or the load before it) that does not finish in time (the
    daemons miss keepalives while busy and drop each other, over and over)
    is recorded as not completed and the size is measured again with the
    default tunables.
    """
    out = []
    for n in sizes:
        failures = []
        for name, tunables in (("tuned", TUNED), ("default", DEFAULT_TUNABLES)):
            try:
                entry = size_once(clusters, kind, n, tunables)
            except (TimeoutError, CtdbError) as exc:
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
            f"({entry['daemon']:.3f}s in daemon), repeated {entry['repeat_wall']:.3f}s; "
            f"raw tdb copy {base['copy']:.3f}s, "
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
        # The first recovery after the load finds no copy distributed before:
        # a volatile database moves every record. The repeat finds nothing
        # changed (and persistent copies agree in both).
        wall, daemon = forced_recovery(c, timeout=60)
        repeat_wall, repeat_daemon = forced_recovery(c, timeout=60)
        with c.client(1, timeout=60) as cl:  # spot check: the data is all there
            for i in random.sample(range(n), min(n, 50)):
                if cl.fetch(db, key(i)) != value(i):
                    raise RuntimeError(f"{kind} record {i} wrong after recovery")
    finally:
        c.down()
    return {
        "records": n,
        "load_s": load,
        "wall": wall,
        "daemon": daemon,
        "repeat_wall": repeat_wall,
        "repeat_daemon": repeat_daemon,
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


# -- side by side with Samba's ctdbd ---------------------------------------------------------
#
# The same steps on a 3-node cluster of each daemon, on the same machine, with
# the same persistent records (SIDE_TX records per transaction: Samba's
# `ctdb ptrans`, pyctdb's client transactions). Each daemon is observed
# through its own fastest means: pyctdb through its client library (status,
# fetch), Samba's ctdbd through its `ctdb` tool (uptime, nodestatus, pfetch),
# the checks of one poll step run concurrently. The step of each poll loop is
# recorded: a figure is exact to about one step.

SIDE_DB = "side_p"
SERIES_RECOVER_TIMEOUT = 60.0
SIDE_TX = 2_000  # records per transaction when filling, on both daemons
MEMBERS = [0, 1, 2]


class Side(Protocol):
    """One daemon under test; pyctdb and Samba's ctdbd go through the same steps."""

    name: str

    def leader(self) -> int: ...

    def marks(self, pnns: list[int]) -> dict[int, Any]:
        """A token per node for its last finished recovery."""
        ...

    def recovered(self, marks: dict[int, Any], members: list[int]) -> bool:
        """Each marked node has finished a recovery since its mark, over `members`."""
        ...

    def serving(self, pnns: list[int], expected: dict[bytes, bytes | None]) -> bool:
        """Each node answers a read of every key in `expected` with the expected value."""
        ...

    def all_ok(self) -> bool:
        """Every member sees every member OK (a restarted node has joined)."""
        ...

    def verify(self, members: list[int]) -> bool:
        """Untimed and strict: every member NORMAL in one generation, vnnmap == members."""
        ...

    def kill(self, pnn: int) -> None: ...

    def start(self, pnn: int) -> None: ...

    def recover_command(self, pnn: int) -> tuple[list[str], dict[str, str]]:
        """The admin tool's `recover` against node `pnn` (returns when finished)."""
        ...

    def noop_command(self, pnn: int) -> tuple[list[str], dict[str, str]]:
        """The admin tool's cheapest command (`pnn`): its start-up cost, a baseline."""
        ...

    def last_duration(self, pnn: int) -> float:
        """The daemon's own measure of the last recovery on `pnn`."""
        ...

    def fill(self, n: int) -> None:
        """Store records 0..n-1 in SIDE_DB, SIDE_TX per transaction."""
        ...


class PySide:
    name = "pyctdb"

    def __init__(self, c: LocalCluster) -> None:
        self.c = c
        with c.client(0) as cl:
            cl.attach(SIDE_DB, "persistent")

    def leader(self) -> int:
        return int(self.c.status(0)["leader"])

    def marks(self, pnns: list[int]) -> dict[int, Any]:
        return {p: self.c.status(p)["generation"] for p in pnns}

    def recovered(self, marks: dict[int, Any], members: list[int]) -> bool:
        sts = {p: self.c.status(p) for p in marks}
        return len({st["generation"] for st in sts.values()}) == 1 and all(
            st["recovery_mode"] == "NORMAL"
            and st["generation"] != marks[p]
            and st["vnnmap"] == members
            for p, st in sts.items()
        )

    def serving(self, pnns: list[int], expected: dict[bytes, bytes | None]) -> bool:
        for p in pnns:
            with self.c.client(p, timeout=30) as cl:
                if any(cl.fetch(SIDE_DB, k) != v for k, v in expected.items()):
                    return False
        return True

    def all_ok(self) -> bool:
        sts = [self.c.status(p) for p in MEMBERS]
        return len({st["generation"] for st in sts}) == 1 and all(
            st["recovery_mode"] == "NORMAL"
            and st["vnnmap"] == MEMBERS
            and all(n["flags"] == 0 for n in st["nodes"])
            for st in sts
        )

    def verify(self, members: list[int]) -> bool:
        try:
            return recovered(self.c, members, None)
        except (CtdbError, OSError):
            return False

    def kill(self, pnn: int) -> None:
        self.c.kill_node(pnn)

    def start(self, pnn: int) -> None:
        self.c.start_node(pnn)

    def _tool(self, pnn: int, *args: str) -> tuple[list[str], dict[str, str]]:
        cmd = [sys.executable, "-m", "tools.ctdbtool", "--socket", self.c.socket(pnn), *args]
        return cmd, dict(os.environ)

    def recover_command(self, pnn: int) -> tuple[list[str], dict[str, str]]:
        return self._tool(pnn, "recover")

    def noop_command(self, pnn: int) -> tuple[list[str], dict[str, str]]:
        return self._tool(pnn, "pnn")

    def last_duration(self, pnn: int) -> float:
        return float(last_recovery(self.c, pnn)["duration"])

    def fill(self, n: int) -> None:
        asyncio.run(_bulk_commit(self.c, SIDE_DB, n, per_tx=SIDE_TX))


class SambaSide:
    name = "ctdbd"

    def __init__(self, c: SambaCluster) -> None:
        self.c = c
        self.pool = ThreadPoolExecutor(8)
        c.attach(SIDE_DB, "persistent")

    def _all(self, checks: list[Callable[[], bool]]) -> bool:
        """Run the checks concurrently (each is a `ctdb` process); errors count as false."""

        def run(check: Callable[[], bool]) -> bool:
            try:
                return check()
            except (SambaCtdbError, subprocess.TimeoutExpired):
                return False

        return all(self.pool.map(run, checks))

    def leader(self) -> int:
        return self.c.leader(0)

    def marks(self, pnns: list[int]) -> dict[int, Any]:
        return {p: self.c.last_recovery(p) for p in pnns}

    def recovered(self, marks: dict[int, Any], members: list[int]) -> bool:
        # `ctdb status` would say more but takes a second (it waits for the
        # leader's broadcast); `verify` checks the members afterwards.
        def moved_on(p: int) -> bool:
            return bool(self.c.last_recovery(p) != marks[p])

        return self._all([functools.partial(moved_on, p) for p in marks])

    def serving(self, pnns: list[int], expected: dict[bytes, bytes | None]) -> bool:
        def reads(p: int, k: bytes, v: bytes | None) -> bool:
            out = self.c.ctdb(p, "pfetch", SIDE_DB, k.decode(), timeout=30)
            return out.rstrip("\n").encode() == (v or b"")

        return self._all(
            [functools.partial(reads, p, k, v) for p in pnns for k, v in expected.items()]
        )

    def all_ok(self) -> bool:
        return self._all([functools.partial(self.c.nodes_ok, p) for p in MEMBERS])

    def verify(self, members: list[int]) -> bool:
        try:
            sts = list(self.c.statuses(members).values())
        except (SambaCtdbError, subprocess.TimeoutExpired):
            return False
        return len({st.generation for st in sts}) == 1 and all(
            st.recovery_mode == "NORMAL" and sorted(st.vnnmap) == members for st in sts
        )

    def kill(self, pnn: int) -> None:
        self.c.kill_node(pnn)

    def start(self, pnn: int) -> None:
        self.c.start_node(pnn)

    def recover_command(self, pnn: int) -> tuple[list[str], dict[str, str]]:
        return [str(SAMBA_CTDB), "recover"], self.c.env(pnn)

    def noop_command(self, pnn: int) -> tuple[list[str], dict[str, str]]:
        return [str(SAMBA_CTDB), "pnn"], self.c.env(pnn)

    def last_duration(self, pnn: int) -> float:
        return self.c.last_recovery(pnn).duration

    def fill(self, n: int) -> None:
        for start in range(0, n, SIDE_TX):
            lines = "".join(
                f'"{key(i).decode()}" "{value(i).decode()}"\n'
                for i in range(start, min(n, start + SIDE_TX))
            )
            self.c.ctdb(0, "ptrans", SIDE_DB, input=lines, timeout=300)


def timed_poll(cond: Callable[[], bool], timeout: float) -> tuple[float, float]:
    """(seconds until `cond()` held, median seconds one check took: the resolution)."""
    start = time.monotonic()
    steps = []
    while True:
        t = time.monotonic()
        try:
            done = cond()
        except (CtdbError, OSError, SambaCtdbError, subprocess.TimeoutExpired):
            done = False
        steps.append(time.monotonic() - t)
        if done:
            return time.monotonic() - start, statistics.median(steps)
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"condition not met within {timeout:g}s")
        # Each check costs the daemons requests too: poll both at most ~50 times a second.
        time.sleep(0.02)


def probes(n: int) -> dict[bytes, bytes | None]:
    """Keys whose reads prove a node serves: first, middle and last record (or a missing key)."""
    if n == 0:
        return {key(0): None}
    return {key(i): value(i) for i in sorted({0, n // 2, n - 1})}


def side_kill(side: Side, n: int) -> tuple[dict[str, Any], int]:
    """kill -9 of a non-leader node until both survivors have recovered and serve."""
    leader = side.leader()
    victim = max(p for p in MEMBERS if p != leader)
    survivors = [p for p in MEMBERS if p != victim]
    marks = side.marks(survivors)
    expected = probes(n)
    side.kill(victim)
    elapsed, step = timed_poll(
        lambda: side.recovered(marks, survivors) and side.serving(survivors, expected), 180
    )
    return {
        "s": elapsed,
        "step": step,
        "daemon": side.last_duration(leader),
        "victim": victim,
        "verified": side.verify(survivors),
    }, victim


def side_restart(side: Side, victim: int, n: int) -> dict[str, Any]:
    """Start the killed node again until every node sees it OK and it serves."""
    expected = probes(n)
    side.start(victim)
    elapsed, step = timed_poll(lambda: side.all_ok() and side.serving([victim], expected), 300)
    return {"s": elapsed, "step": step, "verified": side.verify(MEMBERS)}


def run_command(cmd: list[str], env: dict[str, str], timeout: float) -> float:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    return time.monotonic() - t0


def side_forced(side: Side) -> dict[str, Any]:
    """The admin tool's `recover` on the leader: its wall time, and when the end was seen."""
    leader = side.leader()
    marks = side.marks(MEMBERS)
    cmd, env = side.recover_command(leader)
    ended: list[float] = []
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )

    def wait() -> None:
        proc.wait()
        ended.append(time.monotonic())

    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        seen, step = timed_poll(lambda: side.recovered(marks, MEMBERS), 180)
    finally:
        waiter.join(300)
    _out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{side.name} recover exited {proc.returncode}: {err.strip()}")
    return {
        "tool": ended[0] - t0,
        "seen": seen,
        "step": step,
        "daemon": side.last_duration(leader),
        "verified": side.verify(MEMBERS),
    }


def side_phase(side: Side, n: int, repeats: int) -> dict[str, Any]:
    """kill -9 -> serving, restart -> OK (each `repeats` times), then forced recovers."""
    kills, restarts, forced = [], [], []
    for _ in range(repeats):
        k, victim = side_kill(side, n)
        kills.append(k)
        restarts.append(side_restart(side, victim, n))
        say(
            f"  {side.name:7} {n:>7} records: kill -9 -> serving {k['s']:.3f}s "
            f"(recovery {k['daemon']:.3f}s in daemon), restart -> OK {restarts[-1]['s']:.3f}s"
        )
    for _ in range(repeats):
        forced.append(side_forced(side))
        f = forced[-1]
        say(
            f"  {side.name:7} {n:>7} records: recover tool {f['tool']:.3f}s, "
            f"finished seen {f['seen']:.3f}s, {f['daemon']:.3f}s in daemon"
        )
    return {
        "records": n,
        "kill": _runs(kills, ("s", "daemon", "step")),
        "restart": _runs(restarts, ("s", "step")),
        "forced": _runs(forced, ("tool", "seen", "daemon", "step")),
    }


def _runs(samples: list[dict[str, Any]], fields: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {f: summary([s[f] for s in samples]) for f in fields}
    out["verified"] = all(s["verified"] for s in samples)
    out["runs"] = samples
    return out


def start_samba(workdir: Path) -> SambaCluster | None:
    """Samba's ctdbd nodes for the side-by-side run, started without waiting for them.

    Started before pyctdb's own measurements, its start-up (about 9 s, most
    of it the 5 s its nodes wait for a leader before the first election,
    hardly any CPU) overlaps them instead of adding to the run; `samba_ready`
    waits for it when the side-by-side run begins. Up and idle, its three
    nodes take about 0.3 % of a CPU (0.09 CPU s in 30 s, measured on the
    2-CPU machine). None if it is not installed.
    """
    if not samba_available():
        return None
    c = SambaCluster(workdir / "side-samba" / "early", size=3)
    c.write_configs()
    try:
        for pnn in range(c.size):
            c.start_node(pnn)
    except BaseException:
        c.down()
        raise
    return c


def samba_ready(early: SambaCluster, workdir: Path) -> SambaCluster:
    """`early` once healthy; if it does not get there, a fresh cluster (`SambaCluster.start`
    retries on other addresses)."""
    try:
        early.wait_healthy(60)
        return early
    except (SambaCtdbError, TimeoutError, OSError) as exc:
        say(f"Samba's ctdbd did not come up ({exc}): starting it again")
        early.down()
        return SambaCluster.start(workdir / "side-samba", size=3)


def side_by_side(workdir: Path, plan: Plan, early: SambaCluster | None) -> dict[str, Any]:
    """Both daemons: an empty persistent database, then plan.side_records records in it.

    `early`: Samba's nodes from `start_samba` (None: not installed), stopped here."""
    if early is None:
        say("Samba's ctdbd is not installed: no side-by-side comparison")
        return {"available": False}
    out: dict[str, Any] = {"available": True, "records": plan.side_records, "tx": SIDE_TX}
    py_clusters = Clusters(workdir / "side-py")
    samba_cluster: SambaCluster | None = early
    try:
        samba_cluster = samba_ready(early, workdir)
        py = PySide(py_clusters.make(DEFAULT_TUNABLES))
        sides: list[Side] = [py, SambaSide(samba_cluster)]
        out["tool_start"] = {
            side.name: summary([run_command(*side.noop_command(0), 30) for _ in range(3)])
            for side in sides
        }
        out["empty"], out["full"], out["load_s"] = {}, {}, {}
        if plan.side_empty:
            for side in sides:
                say(f"{side.name}: empty database")
                out["empty"][side.name] = side_phase(side, 0, plan.side_repeats)
        for side in sides:
            say(f"{side.name}: filling {plan.side_records} persistent records")
            t0 = time.monotonic()
            side.fill(plan.side_records)
            out["load_s"][side.name] = time.monotonic() - t0
            say(f"  loaded in {out['load_s'][side.name]:.1f}s")
            out["full"][side.name] = side_phase(side, plan.side_records, plan.side_repeats)
        samba_cluster.down()
        out["differs"] = differs_series(py.c, plan)
    except (TimeoutError, CtdbError, SambaCtdbError, RuntimeError) as exc:
        # Reported, not hidden: what was measured before stays in the results.
        say(f"side by side stopped: {exc!r}")
        out["error"] = repr(exc)
    finally:
        py_clusters.down_all()
        if samba_cluster is not None:
            samba_cluster.down()
    return out


def differs_series(c: LocalCluster, plan: Plan) -> dict[str, Any]:
    """pyctdb: recovery time against the records changed since the last recovery.

    RecoverTimeout is raised to SERIES_RECOVER_TIMEOUT first: with the default
    (5 s), a recovery step that moves every record of a large database can
    time out, and each retry starts the copy again.

    A volatile database of plan.side_records records, loaded through each
    key's lmaster; its first recovery finds no copy distributed before, so
    every record is pulled, merged and pushed: that is what copying all that
    exists costs, measured in the same run. Then, for each N, records 0..N-1
    are rewritten and a forced recover times what follows. The persistent
    database of the side-by-side run (plan.side_records records) gets N
    records committed the same way: every member applies every commit, so
    nothing differs and nothing should move, whatever N.
    """
    n = plan.side_records
    vdb = "differs_v"
    for p in MEMBERS:  # the full copy of the baseline must fit in one attempt
        with c.client(p) as cl:
            cl.call("setvar", name="RecoverTimeout", value=SERIES_RECOVER_TIMEOUT)
    with c.client(0) as cl:
        cl.attach(vdb)
    asyncio.run(_bulk_store(c, vdb, n, c.status(0)["vnnmap"]))
    wall, daemon = forced_recovery(c, timeout=120)
    out: dict[str, Any] = {
        "records": n,
        "full_copy": {"wall": wall, "daemon": daemon},
        "volatile": [],
        "persistent": [],
    }
    say(f"pyctdb: {n} volatile records, first recovery (copies all) {wall:.3f}s")
    for rnd, changed in enumerate(plan.differs, start=1):
        for kind in ("volatile", "persistent"):
            new = functools.partial(changed_value, rnd)
            db = vdb if kind == "volatile" else SIDE_DB
            measure = functools.partial(change, c, db, changed, new)
            entry = series_point(c, "changed", changed, measure)
            out[kind].append(entry)
            if "error" in entry:
                continue
            with c.client(2, timeout=60) as cl:  # spot check: the new values are everywhere
                for i in random.sample(range(changed), min(changed, 20)):
                    if cl.fetch(db, key(i)) != new(i):
                        raise RuntimeError(f"{kind} record {i} not updated after recovery")
            say(
                f"  {kind:10} {changed:>7} of {n} changed: "
                f"recovery {entry['wall']:.3f}s ({entry['daemon']:.3f}s in daemon)"
            )
    out["missed"] = []
    for rnd, missed in enumerate(plan.missed, start=len(plan.differs) + 1):
        new = functools.partial(changed_value, rnd)
        measure = functools.partial(missed_commits, c, missed, new)
        entry = series_point(c, "missed", missed, measure)
        out["missed"].append(entry)
        if "error" not in entry:
            say(
                f"  node 2 missed {missed:>7} commits of {n}: restart -> OK and serving "
                f"{entry['s']:.3f}s ({entry['daemon']:.3f}s recovery in daemon)"
            )
    return out


def series_point(
    c: LocalCluster, what: str, n: int, measure: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """One point of a series; a failure is recorded and the cluster awaited for the next."""
    try:
        return {what: n, **measure()}
    except (TimeoutError, CtdbError) as exc:
        say(f"  {what} {n}: {exc}")
        c.wait_healthy(600)
        return {what: n, "error": str(exc)}


def change(c: LocalCluster, db: str, n: int, new: Callable[[int], bytes]) -> dict[str, Any]:
    """Rewrite records 0..n-1 of `db`, then time a forced recover."""
    if db == SIDE_DB:
        asyncio.run(_bulk_commit(c, db, n, SIDE_TX, new))
    else:
        asyncio.run(_bulk_store(c, db, n, c.status(0)["vnnmap"], new))
    wall, daemon = forced_recovery(c, timeout=120)
    return {"wall": wall, "daemon": daemon}


def missed_commits(c: LocalCluster, n: int, new: Callable[[int], bytes]) -> dict[str, Any]:
    """Kill node 2, commit records 0..n-1 without it, restart it: until it is OK and serves.

    Its persistent copy now differs from the others' (a lower sequence number),
    so the recovery that takes it back must bring it up to date.
    """
    old = c.status(0)["generation"]
    c.kill_node(2)
    poll(functools.partial(recovered, c, [0, 1], old), 60)
    asyncio.run(_bulk_commit(c, SIDE_DB, n, SIDE_TX, new))
    last = max(0, n - 1)

    def ok() -> bool:
        if not recovered(c, [0, 1, 2], None):
            return False
        with c.client(2, timeout=30) as cl:
            return cl.fetch(SIDE_DB, key(last)) == new(last)

    c.start_node(2)
    elapsed, step = timed_poll(ok, 300)
    return {"s": elapsed, "step": step, "daemon": last_recovery(c, 0)["duration"]}


def changed_value(rnd: int, i: int) -> bytes:
    return (b"r%d-v%d-" % (rnd, i)).ljust(VALUE_SIZE, b"y")


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


#: The issue's targets for the side-by-side run: pyctdb at most half ctdbd's time.
SIDE_TARGET_RECORDS = 160_000
SIDE_TARGET_RATIO = 0.5

#: (label, scenario, figure, has a target) rows of the side-by-side table.
SIDE_ROWS = (
    ("kill -9 -> survivors recovered and serving", "kill", "s", True),
    ("recovery after kill -9, inside the daemon", "kill", "daemon", False),
    ("restarted node -> OK and serving", "restart", "s", False),
    ("forced recover: the tool returns", "forced", "tool", True),
    ("forced recover: end seen by polling", "forced", "seen", False),
    ("forced recover, inside the daemon", "forced", "daemon", False),
)


def side_ratios(r: dict[str, Any]) -> list[dict[str, Any]]:
    """pyctdb / ctdbd per scenario (medians); targets only on the 160k records."""
    side = r.get("side_by_side") or {}
    rows = []
    for phase in ("full", "empty"):
        data = side.get(phase) or {}
        if "pyctdb" not in data or "ctdbd" not in data:
            continue
        records = data["pyctdb"]["records"]
        for label, scenario, figure, targeted in SIDE_ROWS:
            py = data["pyctdb"][scenario][figure]["median"]
            cd = data["ctdbd"][scenario][figure]["median"]
            target = SIDE_TARGET_RATIO if targeted and phase == "full" else None
            rows.append(
                {
                    "name": f"{label} ({records} records)",
                    "phase": phase,
                    "scenario": scenario,
                    "figure": figure,
                    "pyctdb_s": py,
                    "ctdbd_s": cd,
                    "ratio": py / cd if cd > 0 else None,
                    "target_ratio": target,
                    # A target on fewer records than the is not judged.
                    "met": None
                    if target is None or records != SIDE_TARGET_RECORDS
                    else py / cd <= target,
                }
            )
    return rows


def ratio_verdict(t: dict[str, Any]) -> str:
    if t["target_ratio"] is None:
        return "reported"
    if t["met"] is None:
        return f"not judged (target is for {SIDE_TARGET_RECORDS} records)"
    return "met" if t["met"] else "NOT met"


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
        "First forced recover after the load (volatile: no copy distributed yet, every "
        "record moves; persistent: the copies agree, nothing moves), then a repeat with "
        "nothing changed.",
        "",
        "| kind | records | first recovery (wall, keepalive tunables) | in daemon "
        "| repeat (wall) | raw tdb copy "
        "| raw recovery I/O (3 reads, merge, 3 writes) | first / raw I/O |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, entries in r["sizes"].items():
        for e in entries:
            for f in e["failures"]:
                tun = f["tunables"]
                lines.append(
                    f"| {kind} | {e['records']} | **not completed** with "
                    f"{tun['KeepaliveInterval']:g} s x {tun['KeepaliveLimit']:g}: {f['error']} "
                    "| | | | | |"
                )
            if not e.get("completed"):
                continue
            tun = e["tunables"]
            lines.append(
                f"| {kind} | {e['records']} | {ms(e['wall'])} "
                f"({tun['KeepaliveInterval']:g} s x {tun['KeepaliveLimit']:g}) "
                f"| {ms(e['daemon'])} | {ms(e['repeat_wall'])} | "
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
    lines += side_summary(r)
    path.write_text("\n".join(lines))


def side_summary(r: dict[str, Any]) -> list[str]:
    side = r.get("side_by_side") or {}
    if not side.get("available"):
        return ["## Side by side with Samba's ctdbd", "", "Not run: Samba's ctdbd is absent.", ""]
    if "tool_start" not in side:
        return ["## Side by side with Samba's ctdbd", "", f"Failed: {side.get('error')}", ""]
    tool = side["tool_start"]
    lines = [
        "## Side by side with Samba's ctdbd (same machine, same data)",
        "",
        f"Two 3-node clusters on loopback, one of pyctdb (tcp, default tunables), one of "
        f"Samba's ctdbd {samba_version()} (default tunables, started like Samba's "
        "local_daemons.sh by tools/samba_ctdbd.py). Both get one persistent database "
        f"filled the same way: {side['records']} records of {VALUE_SIZE}-byte values, "
        f"{side['tx']} per transaction (Samba: `ctdb ptrans`; pyctdb: client transactions); "
        "load took "
        + ", ".join(f"{k} {v:.1f} s" for k, v in side.get("load_s", {}).items())
        + ". The node killed is the highest non-leader; 'serving' means every survivor "
        "has finished a recovery since the kill and answers reads of the first, middle "
        "and last record (pyctdb: status NORMAL in a new generation without the victim; "
        "ctdbd: `ctdb uptime` shows a newer finished recovery, `ctdb status` checked "
        "afterwards). `recover` is each admin tool run on the leader: Samba's `ctdb "
        "recover` polls once a second until the generation changes; ours returns when the "
        "daemon says the recovery finished, and starts a Python interpreter "
        f"(a no-op `pnn`: ctdbtool {ms(tool['pyctdb']['median'])}, "
        f"ctdb {ms(tool['ctdbd']['median'])}). 'Inside the daemon' is each daemon's own "
        "last-recovery duration (`uptime`). Polls check every node concurrently; a "
        "figure is exact to about one poll step (column 'step', pyctdb / ctdbd).",
        "",
        "| scenario | pyctdb median (min-max) | ctdbd median (min-max) | pyctdb / ctdbd "
        "| target | verdict | step |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in side_ratios(r):
        data = side[t["phase"]]
        py, cd = (data[n][t["scenario"]] for n in ("pyctdb", "ctdbd"))
        f = t["figure"]
        target = "-" if t["target_ratio"] is None else f"<= {t['target_ratio']:g}x"
        ratio = "-" if t["ratio"] is None else f"{t['ratio']:.2f}x"
        lines.append(
            f"| {t['name']} | {ms(py[f]['median'])} ({ms(py[f]['min'])}-{ms(py[f]['max'])}) "
            f"| {ms(cd[f]['median'])} ({ms(cd[f]['min'])}-{ms(cd[f]['max'])}) | {ratio} "
            f"| {target} | {ratio_verdict(t)} "
            f"| {ms(py['step']['median'])} / {ms(cd['step']['median'])} |"
        )
    unverified = [
        f"{name} {phase} {scenario}"
        for phase in ("empty", "full")
        for name, data in (side.get(phase) or {}).items()
        for scenario in ("kill", "restart", "forced")
        if not data[scenario]["verified"]
    ]
    lines += [
        "",
        "Every run was checked afterwards (untimed): all members NORMAL in one generation "
        "with the expected vnnmap"
        + (f"; NOT for: {', '.join(unverified)}." if unverified else ": all passed."),
        "",
    ]
    if "error" in side:
        lines += [f"**The run stopped early**: {side['error']}", ""]
    d = side.get("differs")
    if d:
        full = d["full_copy"]
        lines += [
            "## pyctdb: recovery time against what differs, not what exists",
            "",
            f"{d['records']} records in a volatile and in the persistent database above; "
            "before each forced recover (client call, returns when finished) the first N "
            "records are rewritten (volatile: through their lmaster; persistent: committed, "
            f"{side['tx']} per transaction), RecoverTimeout raised to "
            f"{SERIES_RECOVER_TIMEOUT:g} s for this series. Baseline in the same run: the volatile "
            f"database's first recovery, which copies every record: {ms(full['wall'])} "
            f"({ms(full['daemon'])} in the daemon).",
            "",
            "| database | records changed | recovery (wall) | in daemon | wall / full copy |",
            "|---|---|---|---|---|",
        ]
        for kind in ("volatile", "persistent"):
            for e in d[kind]:
                if "error" in e:
                    lines.append(
                        f"| {kind} | {e['changed']} of {d['records']} "
                        f"| **not finished**: {e['error']} | | |"
                    )
                    continue
                lines.append(
                    f"| {kind} | {e['changed']} of {d['records']} | {ms(e['wall'])} "
                    f"| {ms(e['daemon'])} | {e['wall'] / full['wall']:.2f} |"
                )
        lines += [
            "",
            "A node that missed persistent commits: node 2 killed, N records committed "
            "without it, node 2 restarted; time until every node is NORMAL in one "
            "generation and node 2 reads the last record committed.",
            "",
            "| commits missed | restart -> OK and serving | last recovery in daemon |",
            "|---|---|---|",
        ]
        for e in d.get("missed", []):
            if "error" in e:
                lines.append(f"| {e['missed']} | **not finished**: {e['error']} | |")
            else:
                lines.append(f"| {e['missed']} | {ms(e['s'])} | {ms(e['daemon'])} |")
        lines.append("")
    return lines


def samba_version() -> str:
    try:
        out = subprocess.run(
            [str(SAMBA_CTDB), "version"], capture_output=True, text=True, timeout=10
        ).stdout
    except OSError:
        return "(unknown version)"
    return out.strip() or "(unknown version)"


def plot(path: Path, r: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ((ax1, ax2), (ax3, ax4)) = plt.subplots(2, 2, figsize=(13, 9.6))
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
    plot_side(ax3, ax4, r)
    report.save_figure(fig, path)


def plot_side(ax3: Any, ax4: Any, r: dict[str, Any]) -> None:
    """Bottom row: pyctdb next to ctdbd per scenario; recovery time against what differs."""
    rows = side_ratios(r)
    if not rows:
        for ax in (ax3, ax4):
            ax.text(0.5, 0.5, "Samba's ctdbd not measured", ha="center", transform=ax.transAxes)
        return
    short = {
        ("kill", "s"): "kill -9 ->\nserving",
        ("kill", "daemon"): "kill -9:\nin daemon",
        ("restart", "s"): "restart ->\nOK",
        ("forced", "tool"): "recover:\ntool",
        ("forced", "seen"): "recover:\nend seen",
        ("forced", "daemon"): "recover:\nin daemon",
    }
    labels = [
        f"{short[t['scenario'], t['figure']]}\n({'empty' if t['phase'] == 'empty' else 'data'})"
        for t in rows
    ]
    xs = range(len(rows))
    ax3.bar([x - 0.2 for x in xs], [t["pyctdb_s"] for t in rows], 0.4, label="pyctdb")
    ax3.bar([x + 0.2 for x in xs], [t["ctdbd_s"] for t in rows], 0.4, label="Samba ctdbd")
    ax3.set_xticks(list(xs), labels, fontsize=6, rotation=90)
    ax3.set_yscale("log")
    ax3.set_ylabel("seconds (median)")
    records = r["side_by_side"]["records"]
    ax3.set_title(f"Side by side, 3 nodes, persistent db ({records} records / empty)")
    ax3.legend(fontsize=8)
    d = r["side_by_side"].get("differs")
    if not d:
        ax4.text(0.5, 0.5, "series not measured", ha="center", transform=ax4.transAxes)
        return
    for kind, marker in (("volatile", "o"), ("persistent", "s")):
        done = [e for e in d[kind] if "error" not in e]
        n = [max(e["changed"], 1) for e in done]
        ax4.plot(n, [e["wall"] for e in done], marker=marker, label=f"{kind}: forced recover")
    ax4.axhline(
        d["full_copy"]["wall"],
        color="red",
        linestyle="--",
        linewidth=1,
        label="copy of every record (first recovery)",
    )
    ax4.set_xscale("log")
    ax4.set_yscale("log")
    ax4.set_xlabel(f"records changed since the last recovery (of {d['records']}; 0 shown at 1)")
    ax4.set_ylabel("seconds")
    ax4.set_title("pyctdb: recovery time against what differs")
    ax4.legend(fontsize=7)


def run(ns: argparse.Namespace) -> dict[str, Any]:
    plan = Plan.make(ns.quick)
    workdir = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    clusters = Clusters(workdir)
    results: dict[str, Any] = {"quick": ns.quick, "machine": machine_info(), "plan": vars(plan)}
    started = time.monotonic()
    samba: SambaCluster | None = None
    try:
        samba = start_samba(workdir)
        say("failure detection, default tunables (1 s x 5)")
        c = clusters.make(DEFAULT_TUNABLES)
        results["detection"] = {"default": bench_detection(c, DEFAULT_TUNABLES, plan)}
        c.down()
        say("failure detection, tuned (0.1 s x 3)")
        c = clusters.make(TUNED)  # the kill -9 -> served scenario's cluster after it
        results["detection"]["tuned"] = bench_detection(c, TUNED, plan)
        for name, d in results["detection"].items():
            say(f"  {name}: kill -9 {ms(d['kill9']['median'])}, hang {ms(d['hang']['median'])}")
        say("kill -9 -> NORMAL with every key served")
        results["kill_to_served"] = bench_kill_to_served(c, plan)
        c.down()
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
        say(f"side by side with Samba's ctdbd, {plan.side_records} persistent records")
        results["side_by_side"] = side_by_side(workdir, plan, samba)
        samba = None  # stopped there
    finally:
        if samba is not None:
            samba.down()
        clusters.down_all()
        shutil.rmtree(workdir, ignore_errors=True)
    results["elapsed_s"] = time.monotonic() - started
    results["targets"] = evaluate(results)
    results["side_ratios"] = side_ratios(results)
    for t in results["targets"]:
        say(f"target: {t['name']}: {ms(t['measured_s'])} -> {verdict(t)}")
    for t in results["side_ratios"]:
        ratio = "-" if t["ratio"] is None else f"{t['ratio']:.2f}x"
        say(
            f"pyctdb/ctdbd: {t['name']}: {ms(t['pyctdb_s'])} / {ms(t['ctdbd_s'])} = {ratio}"
            + ("" if t["target_ratio"] is None else f" -> {ratio_verdict(t)}")
        )
    say(f"done in {results['elapsed_s']:.0f}s")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = report.parser("recovery", __doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one repetition, 1k/10k volatile, 1k persistent, 2k records next to Samba",
    )
    ns = parser.parse_args(argv)
    report.write(ns.out, "recovery", run(ns), write_summary, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
