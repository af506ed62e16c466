"""The fault injector, and the windows in which volatile data may be lost.

Faults are drawn from the schedule's seed while the workload runs. Some
take the injector's attention until they are over (a crash and restart);
the others (hangs, cuts, delays, failing disks) run in the background, so
faults overlap: a node can hang while the other two restart.

CTDB semantics decide what counts as a bug. Over tcp a volatile record lives
on its dmaster only, so a crash, a cut or a hang long enough to be noticed
may take the newest version with it: such a fault opens a *loss window*,
closed once the cluster is whole and serving again, in which the checker
lets each volatile key fall back to an earlier value (or to missing). Over
vs every member holds every record, so only the loss of every quorate
majority (nobody left in sync) opens one. Nothing else may lose anything:
admin recoveries, short hangs, delays, I/O errors, and on vs a single
crash or a minority partition. Persistent data has no loss window at all.

A liveness rule completes the safety checks: once a majority of nodes runs,
is fully connected and has a healthy disk, with no fault event for
`LIVENESS` seconds, all of them must serve (a hung or cut-off minority must
not stop the others).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from ctdb.errors import CtdbError
from tools.sim.cluster import LATENCY, SimCluster
from tools.sim.history import History, Kind
from tools.sim.workload import KEYS, VOLATILE, Session, call, hkey, text, why

#: Seconds a fully connected, healthy majority may take to serve.
LIVENESS = 3.0

#: fault kind -> weight
FAULTS = {
    "recover": 4,
    "crash": 2,
    "majority_restart": 1,
    "hang": 3,
    "partition": 1,
    "nontransitive": 1,
    "oneway": 1,
    "lock_join": 2,
    "delay": 1,
    "io_error": 1,
}

#: Faults after which nothing may be lost (over vs, a hang never loses data;
#: over tcp only a short one). A share of schedules draws only from these,
#: so that a loss they cause is never excused by a loss window.
STRICT = {
    "tcp": {"recover": 4, "hang": 2, "delay": 1, "io_error": 1},
    "vs": {k: w for k, w in FAULTS.items() if k != "majority_restart"},
}


@dataclass
class Window:
    """A span in which volatile records may fall back (see the module docstring)."""

    cause: str
    start: float
    end: float | None = None
    #: the fault is over: the window ends once the cluster serves again
    closing: bool = False


class Faults:
    def __init__(
        self,
        cluster: SimCluster,
        history: History,
        rng: random.Random,
        log: Callable[[str], None],
        complain: Callable[[str], None],
        on_start: Callable[[int], object],
        kinds: dict[str, int],
        *,
        strict: bool = False,
    ) -> None:
        self.cluster = cluster
        self.network = cluster.network
        self.history = history
        self.rng = rng
        self.log = log
        self.complain = complain
        #: called after a node (re)starts: the workload puts a client on it
        self.on_start = on_start
        self.kinds = kinds
        #: only faults after which nothing may be lost
        self.strict = strict
        self.counts: Counter[str] = Counter()
        self.windows: list[Window] = []
        self.last_event = 0.0
        self._busy: set[str] = set()  # "network", "hang", "disk", "delay"
        self._moving: set[int] = set()  # nodes being crashed or restarted
        self._background: set[asyncio.Task[None]] = set()
        self._quorum_window: Window | None = None
        self._liveness_reported = False
        self._serial = itertools.count(1)

    @property
    def now(self) -> float:
        return self.cluster.loop.time()

    def event(self, what: str) -> None:
        self.last_event = self.now
        self.log(what)
        self._track_quorum()

    def lossy(self, cause: str) -> Window | None:
        """Open a loss window if this fault may lose volatile data (tcp only)."""
        if self.cluster.mode != "tcp":
            return None
        window = Window(cause, self.now)
        self.windows.append(window)
        return window

    # -- the injector ----------------------------------------------------------------

    async def run(self, until: float) -> None:
        kinds, weights = list(self.kinds), list(self.kinds.values())
        if not kinds:  # a fault-free schedule
            await asyncio.sleep(until - self.now)
        while kinds and self.now < until:
            await asyncio.sleep(self.rng.uniform(0.05, 0.3))
            if self.now >= until:
                break
            kind = self.rng.choices(kinds, weights)[0]
            await getattr(self, f"_{kind}")()

    async def finish(self) -> None:
        """Let background faults run their course, then end every fault left."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self.network.heal()
        self.network.latency = LATENCY
        for pnn in range(self.cluster.size):
            self.network.slow(pnn, None)
            self.cluster.disks[pnn].failure_rate = 0.0
            if self.cluster.stopped(pnn):
                self.cluster.cont_node(pnn)
            if pnn not in self.cluster.nodes:
                await self._start(pnn)
        for window in self.windows:
            window.closing = True
        self.event("all faults over")

    def _background_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _present(self) -> list[int]:
        return [p for p in sorted(self.cluster.nodes) if p not in self._moving]

    def _running(self) -> list[int]:
        return [p for p in self._present() if not self.cluster.stopped(p)]

    async def _kill(self, pnn: int) -> None:
        self._moving.add(pnn)
        try:
            await self.cluster.crash_node(pnn)
        finally:
            self._moving.discard(pnn)
        self.event(f"fault: crashed node {pnn}")

    async def _start(self, pnn: int) -> None:
        self._moving.add(pnn)
        try:
            await self.cluster.start_node(pnn)
        finally:
            self._moving.discard(pnn)
        self.on_start(pnn)
        self.event(f"fault: restarted node {pnn}")

    # -- the faults --------------------------------------------------------------------

    async def _recover(self) -> None:
        """`ctdbtool recover` on some node, at whatever point the cluster is."""
        nodes = self._running()
        if not nodes:
            return
        pnn = self.rng.choice(nodes)
        self.counts["recover"] += 1
        self.event(f"fault: recover on node {pnn}")
        node = self.cluster.nodes[pnn]

        async def recover() -> None:
            try:
                await call(node.ctl_recover(-1, {}))
            except CtdbError as exc:
                self.log(f"recover on node {pnn}: {why(exc)}")

        self.cluster.spawn(pnn, recover())

    async def _crash(self) -> None:
        nodes = self._present()
        if not nodes:
            return
        pnn = self.rng.choice(nodes)
        self.counts["crash"] += 1
        window = self.lossy(f"crash of node {pnn}")
        await self._kill(pnn)
        await asyncio.sleep(self.rng.uniform(0.1, 1.5))
        await self._start(pnn)
        if window:
            window.closing = True

    async def _majority_restart(self, victims: list[int] | None = None) -> None:
        """kill -9 two of three nodes, then start them again."""
        nodes = self._present()
        victims = victims or (self.rng.sample(nodes, 2) if len(nodes) >= 2 else [])
        if len(victims) < 2:
            return
        self.counts["majority_restart"] += 1
        window = self.lossy(f"restart of nodes {victims}")
        for pnn in victims:
            await self._kill(pnn)
            await asyncio.sleep(self.rng.uniform(0, 0.05))
        await asyncio.sleep(self.rng.uniform(0.1, 1.0))
        for pnn in victims:
            await self._start(pnn)
            await asyncio.sleep(self.rng.uniform(0, 0.1))
        if window:
            window.closing = True

    async def _hang(self) -> None:
        """SIGSTOP a node; short hangs go unnoticed, long ones get it expelled."""
        nodes = self._running()
        if "hang" in self._busy or not nodes:
            return
        pnn = self.rng.choice(nodes)
        short = self.rng.random() < 0.4 or (self.strict and self.cluster.mode == "tcp")
        duration = self.rng.uniform(0.01, 0.12) if short else self.rng.uniform(0.5, 6.0)
        self.counts["hang"] += 1
        self.counts["hang_short" if short else "hang_long"] += 1
        window = None if short else self.lossy(f"node {pnn} stopped for {duration:.2f}s")
        self._busy.add("hang")
        self.cluster.stop_node(pnn)
        self.event(f"fault: stopped node {pnn} for {duration:.3f}s")
        # The others restarting while it is stopped: its stale state must not win.
        others_restart = not short and not self.strict and self.rng.random() < 0.35

        async def later() -> None:
            end = self.now + duration
            try:
                if others_restart:
                    await asyncio.sleep(self.rng.uniform(0.4, min(1.5, duration)))
                    others = [p for p in self._present() if p != pnn]
                    if len(others) == 2 and self.cluster.stopped(pnn):
                        await self._majority_restart(others)
                await asyncio.sleep(max(0.0, end - self.now))
                if self.cluster.stopped(pnn):
                    self.cluster.cont_node(pnn)
                    self.event(f"fault: continued node {pnn}")
            finally:
                self._busy.discard("hang")
                if window:
                    window.closing = True

        self._background_task(later())

    def _network_fault(
        self,
        kind: str,
        name: str,
        start: Callable[[], None],
        end: Callable[[], None],
        duration: float,
        lossy: bool,
    ) -> None:
        self.counts[kind] += 1
        window = self.lossy(name) if lossy else None
        self._busy.add("network")
        start()
        self.event(f"fault: {name} for {duration:.3f}s")

        async def later() -> None:
            try:
                await asyncio.sleep(duration)
                end()
                self.event(f"fault: {name} healed")
            finally:
                self._busy.discard("network")
                if window:
                    window.closing = True

        self._background_task(later())

    async def _partition(self) -> None:
        if "network" in self._busy:
            return
        alone = self.rng.randrange(self.cluster.size)
        rest = {p for p in range(self.cluster.size) if p != alone}
        self._network_fault(
            "partition",
            f"partition {alone} | {sorted(rest)}",
            lambda: self.network.partition([{alone}, rest]),
            self.network.heal,
            self.rng.uniform(0.2, 2.0),
            lossy=True,
        )

    async def _nontransitive(self) -> None:
        """Two nodes cannot talk, yet both talk to the third."""
        if "network" in self._busy:
            return
        a, b = sorted(self.rng.sample(range(self.cluster.size), 2))
        self._network_fault(
            "nontransitive",
            f"cut {a}-{b} (non-transitive)",
            lambda: self.network.cut(a, b),
            lambda: self.network.restore(a, b),
            self.rng.uniform(0.2, 2.0),
            lossy=True,
        )

    async def _oneway(self) -> None:
        """What `a` sends `b` is lost; noticed only after the keepalive limit."""
        if "network" in self._busy:
            return
        a, b = self.rng.sample(range(self.cluster.size), 2)
        duration = self.rng.uniform(0.05, 1.0)
        noticed = duration >= 0.35 or self.cluster.mode == "vs"
        self._network_fault(
            "oneway",
            f"cut {a}->{b} (one way)",
            lambda: self.network.cut_oneway(a, b),
            lambda: self.network.restore(a, b),
            duration,
            lossy=noticed,
        )

    async def _delay(self) -> None:
        """A latency spike on one node's links or everywhere (below detection)."""
        if "delay" in self._busy:
            return
        latency = (self.rng.uniform(0.002, 0.03), self.rng.uniform(0.04, 0.12))
        target = self.rng.choice([None, *range(self.cluster.size)])
        self.counts["delay"] += 1
        self._busy.add("delay")
        if target is None:
            self.network.latency = latency
        else:
            self.network.slow(target, latency)
        where = "everywhere" if target is None else f"on node {target}"
        duration = self.rng.uniform(0.2, 2.0)
        self.event(f"fault: latency {latency[0]:.3f}-{latency[1]:.3f}s {where} for {duration:.2f}s")

        async def later() -> None:
            try:
                await asyncio.sleep(duration)
                self.network.latency = LATENCY
                if target is not None:
                    self.network.slow(target, None)
                self.event("fault: latency back to normal")
            finally:
                self._busy.discard("delay")

        self._background_task(later())

    async def _io_error(self) -> None:
        """A node's TDB writes fail for a while."""
        if "disk" in self._busy:
            return
        pnn = self.rng.randrange(self.cluster.size)
        rate = self.rng.uniform(0.3, 1.0)
        duration = self.rng.uniform(0.02, 0.4)
        disk = self.cluster.disks[pnn]
        self.counts["io_error"] += 1
        self._busy.add("disk")
        disk.failure_rate = rate
        self.event(f"fault: node {pnn} fails {rate:.0%} of TDB writes for {duration:.2f}s")

        async def later() -> None:
            try:
                await asyncio.sleep(duration)
                disk.failure_rate = 0.0
                self.event(f"fault: node {pnn} writes again")
            finally:
                self._busy.discard("disk")

        self._background_task(later())

    async def _lock_join(self) -> None:
        """A client holds a record lock while another node crashes and rejoins."""
        nodes = self._running()
        if len(nodes) < 2:
            return
        holder, joiner = self.rng.sample(nodes, 2)
        key = self.rng.choice(KEYS)
        unique = f"lj{next(self._serial)}@{holder}"
        locked, release = asyncio.Event(), asyncio.Event()
        self.counts["lock_join"] += 1
        self.event(f"fault: lock {key} on node {holder}, restart node {joiner}")
        task = self.cluster.spawn(holder, self._hold(holder, key, unique, locked, release))
        waited = self.now
        while not locked.is_set() and not task.done() and self.now - waited < 3.0:
            await asyncio.sleep(0.01)
        if locked.is_set() and joiner in self._present():
            window = self.lossy(f"crash of node {joiner}")
            await self._kill(joiner)
            await asyncio.sleep(self.rng.uniform(0.1, 1.0))
            await self._start(joiner)
            node = self.cluster.nodes.get(joiner)
            started = self.now
            while node is not None and not node.serving and self.now - started < 5.0:
                await asyncio.sleep(0.02)
            await asyncio.sleep(self.rng.uniform(0, 0.1))
            if window:
                window.closing = True
        release.set()

    async def _hold(
        self, pnn: int, key: str, unique: str, locked: asyncio.Event, release: asyncio.Event
    ) -> None:
        node = self.cluster.nodes[pnn]
        session = Session(f"lj@{pnn}")
        v = node.db_by_name(VOLATILE)
        h = self.history
        started = self.now
        try:
            old = text(await node.records.lock(v, key.encode(), session))
        except CtdbError as exc:
            self.log(f"{session.name} lock {key}: {why(exc)}")
            return
        op = h.invoke(session.name, hkey(VOLATILE, key), Kind.RMW, unique, old=old)
        op.invoke = started
        locked.set()
        try:
            await release.wait()
            await call(node.records.unlock(v, key.encode(), session, unique.encode()))
        except BaseException as exc:
            node.records.release_all(session)
            h.failed(op, why(exc))
            self.log(f"{session.name} store_unlock {key}: {exc!r}")
            if not isinstance(exc, Exception):
                raise
            return
        h.ok(op)
        self.log(f"{session.name} store_unlock {key} ok")

    # -- what the monitor watches ------------------------------------------------------

    def _track_quorum(self) -> None:
        """vs: losing every quorate majority may lose volatile data."""
        if self.cluster.mode != "vs":
            return
        if self._quorate():
            if self._quorum_window is not None:
                self._quorum_window.closing = True
                self._quorum_window = None
        elif self._quorum_window is None:
            self._quorum_window = Window("no quorate majority", self.now)
            self.windows.append(self._quorum_window)

    def _quorate(self) -> bool:
        size = self.cluster.size
        up = [p for p in range(size) if self.cluster.running(p)]
        for n in range(size // 2 + 1, len(up) + 1):
            for group in itertools.combinations(up, n):
                if all(self.network.link_ok(a, b) for a, b in itertools.combinations(group, 2)):
                    return True
        return False

    async def monitor(self) -> None:
        """Close loss windows once the cluster serves; check liveness."""
        size = self.cluster.size
        group: tuple[int, ...] = ()
        since = 0.0
        while True:
            await asyncio.sleep(0.1)
            if self.cluster.healthy():
                for window in self.windows:
                    if window.closing and window.end is None:
                        window.end = self.now
            able = tuple(
                p
                for p in range(size)
                if self.cluster.running(p)
                and p not in self._moving
                and not self.cluster.disks[p].failure_rate
            )
            if able != group:
                group, since = able, self.now
            if 2 * len(group) <= size or self._liveness_reported:
                continue
            if not all(self.network.link_ok(a, b) for a, b in itertools.combinations(group, 2)):
                continue
            quiet = self.now - max(since, self.last_event)
            idle = [p for p in group if not self.cluster.nodes[p].serving]
            if quiet > LIVENESS and idle:
                self._liveness_reported = True
                self.complain(
                    f"liveness: nodes {list(group)} run, connected and healthy for "
                    f"{quiet:.1f}s with no fault, but {idle} do not serve "
                    f"({self.cluster.describe()})"
                )

    def loss_ops(self, end: float) -> None:
        """Record every loss window in the history, on every volatile key."""
        for window in self.windows:
            stop = window.end if window.end is not None else end
            for key in KEYS:
                self.history.loss(hkey(VOLATILE, key), window.start, stop, window.cause)
