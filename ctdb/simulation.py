"""Deterministic simulation: many nodes' logic in one process, faults by seed.

The real `Node` code (engines, recovery, the ordered stream) runs on the
in-memory transport inside an asyncio event loop whose clock is virtual: the
loop never sleeps, it jumps to the next timer. Everything random (workload,
faults, network latency, generations) comes from generators seeded from one
integer, so a failing seed reproduces the same schedule exactly:
`python -m tools.simulate --seed N --mode tcp -v`.

A schedule runs a random client workload (volatile writes, lock-protected
increments, persistent transactions) while it crashes and restarts nodes
and cuts and heals links; then it heals everything, waits for the cluster
to settle and checks what must hold whatever happened:

* every node ends with the same records (volatile and persistent);
* no acknowledged persistent write is lost;
* a persistent counter incremented in transactions lies between the number
  of acknowledged and attempted increments (no lost or doubled commit);
* without crashes or partitions, a volatile counter incremented under
  `fetch_lock` equals the number of acknowledged increments (a node that is
  cut off takes the records it was dmaster of with it, as in CTDB).
"""

from __future__ import annotations

import asyncio
import random
import selectors
import shutil
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctdb.database import DbKind
from ctdb.errors import CtdbError
from ctdb.node import Node
from transport.base import TransportOptions
from transport.memory import MemoryNetwork, MemoryTransport

SIM_TUNABLES = {
    "KeepaliveInterval": 0.1,
    "KeepaliveLimit": 3,
    "RecoverTimeout": 2.0,
    "CallTimeout": 3.0,
    "VacuumInterval": 0.2,
}


#: A schedule lasts seconds of virtual time; far beyond that it is livelocked.
MAX_VIRTUAL_TIME = 600.0
MAX_LOOP_TURNS = 3_000_000


class SimulationStuck(RuntimeError):
    """The simulated cluster stopped making progress (a livelock or deadlock)."""


class _VirtualSelector(selectors.BaseSelector):
    """A selector with no real file descriptors: waiting = advancing the clock."""

    def __init__(self, loop_clock: list[float]) -> None:
        self._clock = loop_clock
        self._turns = 0
        #: Off while a stuck simulation is being torn down.
        self.armed = True
        self._map: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(
            fileobj, fileobj if isinstance(fileobj, int) else fileobj.fileno(), events, data
        )
        self._map[key.fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._map.pop(fd)

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise SimulationStuck("nothing scheduled and nothing ready")
        self._clock[0] += max(timeout, 0.0)
        self._turns += 1
        if self.armed and (self._clock[0] > MAX_VIRTUAL_TIME or self._turns > MAX_LOOP_TURNS):
            raise SimulationStuck(
                f"no end after {self._clock[0]:.0f} virtual seconds and {self._turns} loop turns"
            )
        return []

    def get_map(self) -> Any:
        return self._map

    def close(self) -> None:
        self._map.clear()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose `time()` is virtual and whose waits take no real time."""

    def __init__(self) -> None:
        self._vclock = [0.0]
        self.virtual_selector = _VirtualSelector(self._vclock)
        super().__init__(self.virtual_selector)

    def time(self) -> float:
        return self._vclock[0]


@dataclass
class Outcome:
    seed: int
    mode: str
    trace: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    acked: int = 0
    failed: int = 0
    crashes: int = 0
    partitions: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations


class _Session:
    """Stands in for a client connection (engines key locks on its identity)."""

    def __init__(self, name: str) -> None:
        self.name = name


class SimCluster:
    def __init__(self, seed: int, mode: str, size: int = 3, outcome: Outcome | None = None) -> None:
        if mode not in ("tcp", "vs"):
            raise ValueError("mode is 'tcp' (point-to-point) or 'vs' (total order)")
        self.seed = seed
        self.mode = mode
        self.size = size
        self.rng = random.Random(seed)
        self.addresses = [f"sim{p}" for p in range(size)]
        self.network = MemoryNetwork(seed=seed, total_order=(mode == "vs"), latency=(0.0001, 0.002))
        # tmpfs: the crash model is a process crash, fsync adds nothing here
        self.root = Path(tempfile.mkdtemp(prefix=f"ctdbsim{seed}-", dir=_scratch()))
        self.nodes: dict[int, Node] = {}
        self.incarnation = dict.fromkeys(range(size), 0)
        self.tasks: dict[int, set[asyncio.Task[Any]]] = {p: set() for p in range(size)}
        self.outcome = outcome or Outcome(seed, mode)

    def log(self, event: str) -> None:
        now = asyncio.get_running_loop().time()
        self.outcome.trace.append(f"{now:.6f} {event}")

    async def start_node(self, pnn: int) -> None:
        self.incarnation[pnn] += 1
        transport = MemoryTransport(pnn, self.addresses, TransportOptions(), network=self.network)
        node = Node(
            pnn,
            self.addresses,
            transport,
            self.root / f"node{pnn}",
            tunables=SIM_TUNABLES,
            seed=self.seed * 1000 + pnn * 10 + self.incarnation[pnn],
        )
        node.offload = _inline
        self.nodes[pnn] = node
        await node.start()
        self.log(f"start node {pnn}")

    async def crash_node(self, pnn: int) -> None:
        node = self.nodes.pop(pnn)
        self.network.crash(pnn)
        for task in list(self.tasks[pnn]):
            task.cancel()
        await node.stop()
        self.outcome.crashes += 1
        self.log(f"crash node {pnn}")

    def spawn(self, pnn: int, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks[pnn].add(task)
        task.add_done_callback(self.tasks[pnn].discard)
        return task

    async def settle(self, timeout: float = 60.0) -> bool:
        """Until every node serves with the full vnnmap and one generation."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        want = list(range(self.size))
        while loop.time() < deadline:
            nodes = [self.nodes.get(p) for p in want]
            if all(n is not None and n.serving and n.vnnmap == want for n in nodes):
                if len({n.generation for n in nodes if n is not None}) == 1:
                    return True
            await asyncio.sleep(0.05)
        return False

    async def close(self) -> None:
        for pnn in list(self.nodes):
            for task in list(self.tasks[pnn]):
                task.cancel()
            await self.nodes.pop(pnn).stop()
        shutil.rmtree(self.root, ignore_errors=True)


async def _inline(work: Callable[[], Any]) -> Any:
    return work()


def _scratch() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


async def _call(result: Any) -> Any:
    """Engine methods answer at once or return an awaitable; normalise."""
    if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
        return await result
    return result


async def _client(sim: SimCluster, pnn: int, cid: int, ops: int, ledger: dict[str, Any]) -> None:
    """One client on node `pnn` doing a random mix of operations."""
    rng = random.Random(sim.seed * 7919 + cid)
    session = _Session(f"c{cid}")
    for i in range(ops):
        node = sim.nodes.get(pnn)
        if node is None:
            return
        kind = rng.choice(["store", "store", "fetch", "incr", "ptx", "pincr"])
        key = f"k{rng.randrange(6)}".encode()
        try:
            v, p = node.db_by_name("v"), node.db_by_name("p")
            if kind == "store":
                value = f"{cid}.{i}".encode()
                await _call(node.records.store(v, key, value, session))
            elif kind == "fetch":
                await _call(node.records.fetch(v, key, session))
            elif kind == "incr":
                ledger["vincr_attempts"] += 1
                old = await node.records.lock(v, b"counter", session)
                try:
                    new = str(int(old or b"0") + 1).encode()
                    await _call(node.records.unlock(v, b"counter", session, new))
                except BaseException:
                    node.records.release_all(session)
                    raise
                ledger["vincr_acked"] += 1
            elif kind == "ptx":
                tx = node.transactions.begin(p)
                wkey, value = f"w{cid}.{i}".encode(), f"{sim.seed}.{cid}.{i}".encode()
                tx.writes[wkey] = value
                await node.records.commit(tx)
                ledger["pwrites"][wkey] = value
            else:
                ledger["pincr_attempts"] += 1
                tx = node.transactions.begin(p)
                old = tx.fetch(b"pcounter")
                tx.writes[b"pcounter"] = str(int(old or b"0") + 1).encode()
                await node.records.commit(tx)
                ledger["pincr_acked"] += 1
            sim.outcome.acked += 1
            sim.log(f"c{cid}@{pnn} {kind} {key.decode()} ok")
        except CtdbError as exc:
            sim.outcome.failed += 1
            sim.log(f"c{cid}@{pnn} {kind} {key.decode()} {exc.code!s}")
        await asyncio.sleep(rng.uniform(0, 0.12))


async def _faults(sim: SimCluster, duration: float) -> None:
    rng = sim.rng
    loop = asyncio.get_running_loop()
    end = loop.time() + duration
    while loop.time() < end:
        await asyncio.sleep(rng.uniform(0.2, 1.0))
        choice = rng.random()
        if choice < 0.4 and len(sim.nodes) == sim.size:
            victim = rng.randrange(sim.size)
            await sim.crash_node(victim)
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            await sim.start_node(victim)
        elif choice < 0.7:
            victim = rng.randrange(sim.size)
            rest = [p for p in range(sim.size) if p != victim]
            sim.network.partition([{victim}, set(rest)])
            sim.outcome.partitions += 1
            sim.log(f"partition {victim} | {rest}")
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            sim.network.heal()
            sim.log("heal")


async def run_schedule(
    seed: int,
    mode: str,
    *,
    ops: int = 25,
    clients_per_node: int = 1,
    outcome: Outcome | None = None,
) -> Outcome:
    sim = SimCluster(seed, mode, outcome=outcome)
    ledger: dict[str, Any] = {
        "pwrites": {},
        "vincr_attempts": 0,
        "vincr_acked": 0,
        "pincr_attempts": 0,
        "pincr_acked": 0,
    }
    try:
        for pnn in range(sim.size):
            await sim.start_node(pnn)
        if not await sim.settle(30):
            sim.outcome.violations.append("cluster never became healthy at start")
            return sim.outcome
        await _call(sim.nodes[0].records.attach("v", DbKind.VOLATILE))
        await _call(sim.nodes[0].records.attach("p", DbKind.PERSISTENT))
        clients = [
            sim.spawn(pnn, _client(sim, pnn, pnn * 10 + c, ops, ledger))
            for pnn in range(sim.size)
            for c in range(clients_per_node)
        ]
        faults = asyncio.get_running_loop().create_task(_faults(sim, 3.0))
        await asyncio.gather(*clients, return_exceptions=True)
        await faults
        sim.network.heal()
        for pnn in range(sim.size):
            if pnn not in sim.nodes:
                await sim.start_node(pnn)
        if not await sim.settle(60):
            states = {p: (n.recovery_mode.name, n.vnnmap) for p, n in sim.nodes.items()}
            sim.outcome.violations.append(f"cluster did not settle after faults: {states}")
            return sim.outcome
        await _check(sim, ledger)
        return sim.outcome
    finally:
        await sim.close()


async def _check(sim: SimCluster, ledger: dict[str, Any]) -> None:
    bad = sim.outcome.violations
    reader = _Session("checker")
    views: dict[int, dict[bytes, bytes | None]] = {}
    keys = [f"k{i}".encode() for i in range(6)] + [b"counter"]
    for pnn, node in sorted(sim.nodes.items()):
        v = node.db_by_name("v")
        views[pnn] = {k: await _call(node.records.fetch(v, k, reader)) for k in keys}
    if len({tuple(sorted(view.items())) for view in views.values()}) != 1:
        bad.append(f"volatile records differ between nodes: {views}")
    contents = {}
    for pnn, node in sorted(sim.nodes.items()):
        p = node.db_by_name("p")
        contents[pnn] = {k: r.value for k, r in p.local.items()}
    if len({tuple(sorted(c.items())) for c in contents.values()}) != 1:
        bad.append("persistent databases differ between nodes")
    some = contents[0]
    for key, value in ledger["pwrites"].items():
        if some.get(key) != value:
            bad.append(f"acknowledged persistent write {key!r} lost (have {some.get(key)!r})")
    pcounter = int(some.get(b"pcounter") or b"0")
    if not ledger["pincr_acked"] <= pcounter <= ledger["pincr_attempts"]:
        bad.append(
            f"persistent counter {pcounter} outside "
            f"[{ledger['pincr_acked']}, {ledger['pincr_attempts']}]"
        )
    if sim.outcome.crashes == 0 and sim.outcome.partitions == 0:
        # A node cut off or crashed takes the volatile records it was dmaster
        # of with it (CTDB semantics), so only a fault-free run must add up.
        vcounter = int(views[0][b"counter"] or b"0")
        if not ledger["vincr_acked"] <= vcounter <= ledger["vincr_attempts"]:
            bad.append(
                f"volatile counter {vcounter} outside "
                f"[{ledger['vincr_acked']}, {ledger['vincr_attempts']}] without crashes"
            )


def simulate(seed: int, mode: str, **kwargs: Any) -> Outcome:
    """Run one schedule on a fresh virtual-time loop."""
    loop = VirtualTimeLoop()
    outcome = Outcome(seed, mode)
    main = loop.create_task(run_schedule(seed, mode, outcome=outcome, **kwargs))
    try:
        return loop.run_until_complete(main)
    except SimulationStuck as exc:
        outcome.violations.append(f"simulation stuck: {exc}")
        # Unwind: cancelling the schedule runs its clean-up (nodes stop, files go).
        loop.virtual_selector.armed = False
        main.cancel()
        try:
            loop.run_until_complete(main)
        except (asyncio.CancelledError, SimulationStuck):
            pass
        return outcome
    finally:
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
