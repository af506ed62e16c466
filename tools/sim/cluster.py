"""A cluster of simulated nodes: real `Node` objects on the memory network.

Each node runs in its own `contextvars` context (`loop.NODE` = its pnn), so
the virtual-time loop can stop it like SIGSTOP stops a process. Its TDB
files live under one directory per node and survive its crashes (the
persistent ones are reopened by the next incarnation, as on a real disk);
writes made by an incarnation that has crashed fail, since a killed process
writes nothing.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import shutil
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from ctdb.server.node import Node
from tools.sim.loop import NODE, VirtualTimeLoop
from tools.sim.storage import Disk, SimLocalDb, simulated_storage
from transport.base import TransportOptions
from transport.memory import MemoryTransport
from transport.memory_network import MemoryNetwork

#: Fast failure detection (0.3 s) and short timeouts keep schedules short.
SIM_TUNABLES = {
    "KeepaliveInterval": 0.1,
    "KeepaliveLimit": 3,
    "RecoverTimeout": 2.0,
    "CallTimeout": 3.0,
    # Vacuuming (where the engine has it) runs often enough to meet the faults.
    "VacuumInterval": 0.2,
}
LATENCY = (0.0001, 0.002)
INTERVAL = SIM_TUNABLES["KeepaliveInterval"]
#: how long a silent node lasts before the others drop it (seconds)
EXPEL = INTERVAL * SIM_TUNABLES["KeepaliveLimit"]


class Life:
    """One incarnation of a node; its code runs in a context that names it."""

    def __init__(self) -> None:
        self.alive = True


#: The incarnation whose code is running (None: the simulator or the network).
LIFE: contextvars.ContextVar[Life | None] = contextvars.ContextVar("sim_life", default=None)


def crashed() -> bool:
    """Is the running code what is left of a crashed incarnation (kill -9 ran)?"""
    life = LIFE.get()
    return life is not None and not life.alive


class SimCluster:
    def __init__(
        self,
        seed: int,
        mode: str,
        log: Callable[[str], None],
        size: int = 3,
        *,
        keep_stopped: bool = False,
        spread_backlog: bool = True,
        stable_volatile: bool = False,
        sticky_pindown: int = 0,
        samba: bool = False,
        agreed_only: bool = False,
        ring_timeout: float = 0.0,
    ) -> None:
        if mode not in ("tcp", "vs"):
            raise ValueError("mode is 'tcp' (point-to-point) or 'vs' (total order)")
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop), "simulated nodes need a VirtualTimeLoop"
        self.loop = loop
        self.seed = seed
        self.mode = mode
        #: a resumed node's queued traffic is spread among its other parked
        #: work (`VirtualTimeLoop.cont_node`); False: it runs first, as
        #: schedules did before 2026-12-05
        self.spread_backlog = spread_backlog
        #: vs: volatile writes are acknowledged once stable (StableVolatileWrites)
        self.stable_volatile = stable_volatile
        #: clients of other processes (Samba's) share the nodes' files: the
        #: workload's clients attach as they do, and may hold chains
        #: (`faults.Faults._chain_hold`, `storage.Disk.held`)
        self.samba = samba
        self.tunables = {
            **SIM_TUNABLES,
            "StableVolatileWrites": int(stable_volatile),
            "StickyPindown": sticky_pindown,
        }
        self.size = size
        self.log = log
        self.addresses = [f"sim{p}" for p in range(size)]
        self.network = MemoryNetwork(
            seed=seed,
            total_order=(mode == "vs"),
            latency=LATENCY,
            # vs: corosync alone keeps a stopped member; the vs transport expels it.
            expel_stopped=not keep_stopped,
            agreed_only=agreed_only,
            ring_timeout=ring_timeout,
        )
        self.root = Path(tempfile.mkdtemp(prefix=f"ctdbsim{seed}-", dir=_scratch()))
        _ROOTS.add(self.root)
        self.disks = {p: Disk(seed * 7 + p) for p in range(size)}
        for p, disk in self.disks.items():
            SimLocalDb.disks[self.state_dir(p)] = disk
        self.nodes: dict[int, Node] = {}
        self.incarnation = dict.fromkeys(range(size), 0)
        #: each node's tasks, in the order spawned (a dict, not a set: a set of
        #: tasks iterates in the order of their addresses, which depends on
        #: what the process ran before, and a crash cancels them in that order)
        self.tasks: dict[int, dict[asyncio.Task[Any], None]] = {p: {} for p in range(size)}
        self._contexts: dict[int, contextvars.Context] = {}
        self._lives: dict[int, Life] = {}
        #: (pnn, why) of every node that stopped itself (`Node.fail`: a bug,
        #: which the daemon would exit on); a crashed incarnation's leftovers aside
        self.failures: list[tuple[int, str]] = []

    def state_dir(self, pnn: int) -> Path:
        return self.root / f"node{pnn}"

    # -- lifecycle ------------------------------------------------------------

    async def start_node(self, pnn: int) -> None:
        self.incarnation[pnn] += 1
        self.disks[pnn].dead = False
        life = self._lives[pnn] = Life()
        ctx = self._contexts[pnn] = contextvars.copy_context()
        ctx.run(NODE.set, pnn)
        ctx.run(LIFE.set, life)
        await self.run_on(pnn, self._boot(pnn))
        self.log(f"start node {pnn}")

    async def _boot(self, pnn: int) -> None:
        transport = MemoryTransport(pnn, self.addresses, TransportOptions(), network=self.network)
        node = Node(
            pnn,
            self.addresses,
            transport,
            self.state_dir(pnn),
            tunables=self.tunables,
            seed=self.seed * 1000 + pnn * 10 + self.incarnation[pnn],
        )
        node.offload = _inline
        node.on_failure = functools.partial(self._failed, pnn)
        self.nodes[pnn] = node
        await node.start()

    def _failed(self, pnn: int, failure: str) -> None:
        if not crashed():  # (kill -9 would have stopped what fails now)
            self.failures.append((pnn, failure))

    async def crash_node(self, pnn: int) -> None:
        """kill -9: gone from the network at once, and its files no longer change."""
        node = self.nodes.pop(pnn)
        self._lives[pnn].alive = False
        self.network.crash(pnn)
        self.disks[pnn].dead = True
        self.loop.cont_node(pnn)  # a stopped process can be killed too
        for task in list(self.tasks[pnn]):
            task.cancel()
        await node.stop()
        self.log(f"crash node {pnn}")

    def stop_node(self, pnn: int) -> None:
        """SIGSTOP."""
        self.loop.stop_node(pnn)
        self.network.hang(pnn)
        self.log(f"stop node {pnn}")

    def cont_node(self, pnn: int) -> None:
        """SIGCONT."""
        self.loop.cont_node(pnn, backlog=self._delivery if self.spread_backlog else None)
        self.network.resume(pnn)
        self.log(f"continue node {pnn}")

    def _delivery(self, handle: asyncio.Handle) -> bool:
        """Whether a parked callback is the network delivering to its node."""
        return getattr(handle._callback, "__self__", None) is self.network  # type: ignore[attr-defined]

    def stopped(self, pnn: int) -> bool:
        return self.loop.is_stopped(pnn)

    def running(self, pnn: int) -> bool:
        """Started, not crashed, not stopped."""
        return pnn in self.nodes and not self.stopped(pnn)

    def spawn(self, pnn: int, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` as code of node `pnn` (cancelled when it crashes)."""
        task = self.loop.create_task(coro, context=self._contexts[pnn].copy())
        spawned = self.tasks[pnn]
        spawned[task] = None
        task.add_done_callback(lambda done: spawned.pop(done, None))
        return task

    async def run_on(self, pnn: int, coro: Coroutine[Any, Any, Any]) -> Any:
        return await self.loop.create_task(coro, context=self._contexts[pnn].copy())

    # -- state ---------------------------------------------------------------

    def healthy(self) -> bool:
        """Every node runs and serves with the full vnnmap and one generation."""
        want = list(range(self.size))
        nodes = [self.nodes.get(p) for p in want]
        if any(n is None or self.stopped(p) for p, n in zip(want, nodes, strict=True)):
            return False
        if not all(n is not None and n.serving and n.vnnmap == want for n in nodes):
            return False
        return len({n.generation for n in nodes if n is not None}) == 1

    async def settle(self, timeout: float) -> bool:
        return await self.until(self.healthy, timeout)

    async def until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Whether `done()` became true within `timeout` (virtual) seconds."""
        deadline = self.loop.time() + timeout
        while self.loop.time() < deadline:
            if done():
                return True
            await asyncio.sleep(0.05)
        return False

    def describe(self) -> str:
        parts = []
        for p in range(self.size):
            node = self.nodes.get(p)
            if node is None:
                parts.append(f"{p}: down")
                continue
            state = "stopped " if self.stopped(p) else ""
            parts.append(
                f"{p}: {state}{node.recovery_mode.name} gen {node.generation} "
                f"vnnmap {node.vnnmap} view {list(node.transport.view.members)}"
            )
        return "; ".join(parts)

    async def close(self) -> None:
        for pnn in list(self.nodes):
            self.loop.cont_node(pnn)
            for task in list(self.tasks[pnn]):
                task.cancel()
            await self.nodes.pop(pnn).stop()
        for pnn in range(self.size):
            SimLocalDb.disks.pop(self.state_dir(pnn), None)
        shutil.rmtree(self.root, ignore_errors=True)
        _ROOTS.discard(self.root)


def watch_leaves(cluster: SimCluster, pnn: int) -> list[float]:
    """The (virtual) times node `pnn`'s transport leaves the group from now
    on, in a list that grows as it does; for scripted tests."""
    transport = cluster.nodes[pnn].transport
    stop = transport.stop
    left: list[float] = []

    async def noted_stop() -> None:
        left.append(cluster.loop.time())
        await stop()

    transport.stop = noted_stop  # type: ignore[method-assign]
    return left


def run_scenario(
    mode: str, scenario: Callable[[SimCluster], Coroutine[Any, Any, None]], seed: int = 11
) -> None:
    """Run `scenario` on a settled 3-node cluster in virtual time, with disks
    that fail on demand (`Disk.failure_rate`); for scripted tests."""

    async def main() -> None:
        cluster = SimCluster(seed, mode, lambda line: None)
        try:
            for pnn in range(cluster.size):
                await cluster.start_node(pnn)
            assert await cluster.settle(10), cluster.describe()
            await scenario(cluster)
        finally:
            await cluster.close()

    loop = VirtualTimeLoop()
    try:
        with simulated_storage():
            loop.run_until_complete(main())
    finally:
        loop.close()


#: Directories of the clusters alive in this process.
_ROOTS: set[Path] = set()


def remove_files() -> None:
    """Remove every simulated cluster's files now (a worker told to stop)."""
    for root in list(_ROOTS):
        shutil.rmtree(root, ignore_errors=True)
        _ROOTS.discard(root)


async def _inline(work: Callable[[], Any]) -> Any:
    return work()


def _scratch() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None
