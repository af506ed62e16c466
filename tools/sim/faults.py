"""The fault injector, and the windows in which volatile data may be lost.

A schedule's faults are drawn from its seed before anything runs (`plan`):
when each starts, on which nodes, for how long. So a seed injects the same
faults into a fixed engine as into the broken one it failed on, and a fix
can be checked with the very seed that found the bug. Each fault runs in
its own task from its planned time, so faults overlap (a node can hang
while the other two restart); one that cannot happen when its time comes
(its node is already down, another cut is in place) is skipped.

CTDB semantics decide what counts as a bug. Over tcp a volatile record lives
on its dmaster only, so a crash, a cut or a hang long enough to be noticed
may take the newest version with it: such a fault opens a *loss window*,
closed once the cluster is whole and serving again, in which the checker
lets each volatile key fall back to an earlier value (or to missing). Over
vs a volatile write is acknowledged on its origin's delivery and may be lost
with its origin in the same way, so the same faults open a window; with
StableVolatileWrites=1 (every strict schedule, half of the others) every
member holds every acknowledged write, so only the loss of every quorate
majority of holders (nobody left in sync; a node that restarted, whose
disk failed, or that the serving members' view left out, holds nothing
until it serves again) opens one. Nothing else may lose anything:
admin recoveries, short hangs, delays, I/O errors, chains that Samba's
clients hold, and on vs with stable writes a single crash or a minority
partition. Persistent data has no loss
window at all.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ctdb.common.errors import CtdbError
from ctdb.storage.placement import db_id
from tools.sim.cluster import EXPEL, LATENCY, SimCluster
from tools.sim.history import History, Kind
from tools.sim.storage import SimLocalDb
from tools.sim.workload import (
    ENTRY_KEYS,
    KEYS,
    PERSISTENT,
    VOLATILE,
    Session,
    call,
    hkey,
    text,
    why,
)

#: Seconds a fully connected, healthy majority may take to serve.
LIVENESS = 3.0
#: How often a volatile record may change its surviving copy within a loss window.
LOSSES_PER_WINDOW = 3
#: How often, at most, one node's clients' entries may be purged from one entry list.
MAX_PURGES = 9

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

#: Faults of the schedules in which Samba's clients share the nodes' files
#: (`SimCluster.samba`), on top of the others.
SAMBA_FAULTS = {"chain_hold": 2}

#: Faults after which nothing may be lost (over vs, with stable volatile
#: writes, a hang never loses data; over tcp only a short one). A share of
#: schedules draws only from these, so that a loss they cause is never
#: excused by a loss window.
STRICT = {
    "tcp": {"recover": 4, "hang": 2, "delay": 1, "io_error": 1},
    "vs": {k: w for k, w in FAULTS.items() if k != "majority_restart"},
}


def kinds_of(mode: str, strict: bool, samba: bool) -> dict[str, int]:
    """The faults a schedule draws from: a held chain loses nothing."""
    kinds = STRICT[mode] if strict else FAULTS
    return {**kinds, **SAMBA_FAULTS} if samba else kinds


@dataclass
class Fault:
    """One planned fault: what, when (seconds into the workload), with what."""

    at: float
    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        args = ", ".join(f"{k}={_show(v)}" for k, v in self.params.items())
        return f"{self.at:.3f}s {self.kind}({args})"


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    return repr(value)


def plan(
    rng: random.Random,
    mode: str,
    kinds: dict[str, int],
    strict: bool,
    duration: float,
    size: int,
    *,
    resume_early: bool = True,
    at_delivery: bool = False,
) -> list[Fault]:
    """Every fault of a schedule, from its seed alone.

    `resume_early`: some long hangs end while the clients still run (see
    `_resume_early`); False draws them as schedules did before 2026-12-05.
    `at_delivery`: some crashes strike right after the node delivered its
    own broadcast (see `_at_delivery`); False: as before 2026-12-06.
    """
    faults: list[Fault] = []
    names, weights = list(kinds), list(kinds.values())
    at = 0.0
    while names:
        at += rng.uniform(0.05, 0.3)
        if at >= duration:
            break
        kind = rng.choices(names, weights)[0]
        fault = Fault(at, kind, _params(rng, kind, mode, strict, size))
        if resume_early and kind == "hang":
            _resume_early(fault.params)
        if at_delivery and kind == "crash":
            _at_delivery(fault.params)
        faults.append(fault)
    return faults


def _resume_early(params: dict[str, Any]) -> None:
    """Half the long hangs last just longer than the expel time, so that the
    node continues while its clients still send requests: a long hang drawn
    up to 6 s mostly outlasted the workload, and the simulator never saw what
    `tools.chaos` did (a resumed vs member answering reads from a copy the
    others had moved past). Drawn aside: the plan's own draws stay the same."""
    if params["duration"] < EXPEL:
        return
    aside = random.Random(f"resume early {params}")
    if aside.random() < 0.5:
        params["duration"] = aside.uniform(1.1, 2.5) * EXPEL


def _at_delivery(params: dict[str, Any]) -> None:
    """vs: half the crashes wait for the node to deliver one of its own
    broadcasts and strike then, when its daemon may have acknowledged what
    the message carried and its peers may not have it yet (corosync's
    agreed order, `MemoryNetwork.agreed_only`). At a random moment that
    window, one link's latency long, was almost never hit. Drawn aside: the
    plan's own draws stay the same."""
    if random.Random(f"at delivery {params}").random() < 0.5:
        params["at_delivery"] = True


def _params(rng: random.Random, kind: str, mode: str, strict: bool, size: int) -> dict[str, Any]:
    nodes = list(range(size))
    if kind == "recover":
        return {"pnn": rng.choice(nodes)}
    if kind == "crash":
        return {"pnn": rng.choice(nodes), "down": rng.uniform(0.1, 1.5)}
    if kind == "majority_restart":
        return {"pnns": sorted(rng.sample(nodes, 2)), "down": rng.uniform(0.1, 1.0)}
    if kind == "hang":
        # Short hangs go unnoticed; long ones get the node dropped or expelled.
        short = (strict and mode == "tcp") or rng.random() < 0.4
        duration = rng.uniform(0.01, 0.15) if short else rng.uniform(0.5, 6.0)
        params: dict[str, Any] = {"pnn": rng.choice(nodes), "duration": duration}
        # The others restarting while it is stopped: its stale state must not win.
        if not short and not strict and rng.random() < 0.35:
            params["others_restart_after"] = rng.uniform(0.4, min(1.5, duration))
            params["down"] = rng.uniform(0.1, 1.0)
        return params
    if kind == "partition":
        return {"alone": rng.choice(nodes), "duration": rng.uniform(0.2, 2.0)}
    if kind == "nontransitive":
        params = {"pair": sorted(rng.sample(nodes, 2)), "duration": rng.uniform(0.2, 2.0)}
        # Drawn aside, so that the schedules of the seeds found before stay what they were.
        aside = random.Random(f"nontransitive {params}")
        if aside.random() < 0.5:  # one end notices later (its keepalive timer's phase)
            params["late"] = [aside.choice(params["pair"]), aside.uniform(0.01, 0.3)]
        return params
    if kind == "oneway":
        src, dst = rng.sample(nodes, 2)
        return {"src": src, "dst": dst, "duration": rng.uniform(0.05, 1.0)}
    if kind == "lock_join":
        holder, joiner = rng.sample(nodes, 2)
        return {
            "holder": holder,
            "joiner": joiner,
            "key": rng.choice(KEYS),
            "down": rng.uniform(0.1, 1.0),
            "hold": rng.uniform(0, 0.1),
        }
    if kind == "delay":
        return {
            "pnn": rng.choice([None, *nodes]),
            "latency": (rng.uniform(0.002, 0.02), rng.uniform(0.03, 0.06)),
            "duration": rng.uniform(0.2, 2.0),
        }
    if kind == "io_error":
        return {
            "pnn": rng.choice(nodes),
            "rate": rng.uniform(0.3, 1.0),
            "duration": rng.uniform(0.02, 0.4),
        }
    if kind == "chain_hold":
        # Mostly as long as a Samba client works on a record in place; now and
        # then longer than a vs node's stream may wait (RecoverTimeout, 2 s).
        held = rng.uniform(0.01, 0.3) if rng.random() < 0.7 else rng.uniform(0.5, 3.0)
        # A key of None: every chain of the file, as a traverse holds them.
        return {"pnn": rng.choice(nodes), "key": rng.choice([*KEYS, None]), "duration": held}
    raise ValueError(f"unknown fault {kind!r}")


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
        faults: list[Fault],
        log: Callable[[str], None],
        complain: Callable[[str], None],
        on_start: Callable[[int], object],
    ) -> None:
        self.cluster = cluster
        self.network = cluster.network
        self.history = history
        self.faults = faults
        self.log = log
        self.complain = complain
        #: called after a node (re)starts: the workload puts a client on it
        self.on_start = on_start
        self.counts: Counter[str] = Counter()
        self.windows: list[Window] = []
        self.last_event = 0.0
        self._busy: set[str] = set()  # "network", "hang", "disk", "delay"
        self._moving: set[int] = set()  # nodes being crashed or restarted
        self._tasks: list[asyncio.Task[None]] = []
        self._quorum_window: Window | None = None
        self._liveness_reported = False
        #: (nodes, since when, why): faults after which those nodes may have
        #: left the view or the vnnmap, so their clients' entries may be purged
        self.departures: list[tuple[list[int], float, str]] = []
        #: per node, (first start, last end) of the chain holds on it that
        #: overlap without a gap: one stall of its stream may last all of it
        self.held: dict[int, tuple[float, float]] = {}
        #: vs: the nodes that hold every acknowledged volatile write: a node
        #: that restarted, or whose disk failed, or that a serving member's
        #: view left out, holds none until it serves again (its state
        #: transfer done), which a stalled member may hold up for seconds
        #: (`_chain_hold`), so a crash meanwhile leaves fewer holders
        self.holders = set(range(cluster.size))

    @property
    def now(self) -> float:
        return self.cluster.loop.time()

    def event(self, what: str) -> None:
        self.last_event = self.now
        self.log(what)
        self._track_quorum()

    def lossy(self, cause: str) -> Window | None:
        """Open a loss window if this fault may lose volatile data (see the module docstring)."""
        if self.cluster.mode == "vs" and self.cluster.stable_volatile:
            return None
        window = Window(cause, self.now)
        self.windows.append(window)
        return window

    def departing(self, pnns: list[int], cause: str, since: float | None = None) -> None:
        """Nodes `pnns` may leave the view or the vnnmap from now on, or from
        `since` (see `purge_ops`)."""
        self.departures.append((list(pnns), self.now if since is None else since, cause))

    def skip(self, fault: Fault, why: str) -> None:
        self.counts["skipped"] += 1
        self.log(f"fault skipped: {fault.describe()}: {why}")

    # -- the injector ----------------------------------------------------------------

    def start(self) -> None:
        """Start every planned fault's task, timed from now."""
        loop = asyncio.get_running_loop()
        for fault in self.faults:
            self._tasks.append(loop.create_task(self._at(self.now + fault.at, fault)))

    async def _at(self, when: float, fault: Fault) -> None:
        await asyncio.sleep(when - self.now)
        await getattr(self, f"_{fault.kind}")(fault, **fault.params)

    async def finish(self) -> None:
        """Let every fault run its course, then end what is left."""
        await asyncio.gather(*self._tasks)
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

    def _present(self, pnn: int) -> bool:
        return pnn in self.cluster.nodes and pnn not in self._moving

    def _running(self, pnn: int) -> bool:
        return self._present(pnn) and not self.cluster.stopped(pnn)

    async def _kill(self, pnn: int) -> None:
        self.holders.discard(pnn)
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

    async def _restart(self, fault: Fault, pnns: list[int], down: float) -> None:
        """kill -9 `pnns`, then start them again `down` seconds later."""
        missing = [p for p in pnns if not self._present(p)]
        if missing:
            self.skip(fault, f"nodes {missing} are down")
            return
        self.counts[fault.kind] += 1
        window = self.lossy(f"{fault.kind} of nodes {pnns}")
        self.departing(pnns, f"{fault.kind} of nodes {pnns}")
        self._moving.update(pnns)  # nobody else touches them meanwhile
        for pnn in pnns:
            self._moving.discard(pnn)
            await self._kill(pnn)
            self._moving.add(pnn)
        await asyncio.sleep(down)
        for pnn in pnns:
            self._moving.discard(pnn)
            await self._start(pnn)
        if window:
            window.closing = True

    # -- the faults --------------------------------------------------------------------

    async def _recover(self, fault: Fault, pnn: int) -> None:
        """`ctdbtool recover` on some node, at whatever point the cluster is."""
        if not self._running(pnn):
            self.skip(fault, f"node {pnn} does not run")
            return
        self.counts["recover"] += 1
        self.event(f"fault: recover on node {pnn}")
        node = self.cluster.nodes[pnn]

        async def recover() -> None:
            try:
                await call(node.admin.ctl_recover(-1, {}))
            except CtdbError as exc:
                self.log(f"recover on node {pnn}: {why(exc)}")

        self.cluster.spawn(pnn, recover())

    async def _crash(self, fault: Fault, pnn: int, down: float, at_delivery: bool = False) -> None:
        if at_delivery and self._running(pnn):
            delivered = asyncio.Event()
            self.network.after_own_delivery(pnn, delivered.set)
            try:
                await asyncio.wait_for(delivered.wait(), 1.0)
            except TimeoutError:
                pass
            finally:
                self.network.after_own_delivery(pnn, None)
        await self._restart(fault, [pnn], down)

    async def _majority_restart(self, fault: Fault, pnns: list[int], down: float) -> None:
        await self._restart(fault, pnns, down)

    async def _hang(
        self,
        fault: Fault,
        pnn: int,
        duration: float,
        others_restart_after: float | None = None,
        down: float = 0.0,
    ) -> None:
        """SIGSTOP a node, SIGCONT it `duration` seconds later."""
        if "hang" in self._busy or not self._running(pnn):
            self.skip(fault, "another node is stopped" if "hang" in self._busy else "not running")
            return
        short = duration < 0.2
        self.counts["hang"] += 1
        self.counts["hang_short" if short else "hang_long"] += 1
        window = None if short else self.lossy(f"node {pnn} stopped for {duration:.2f}s")
        if not short:
            self.departing([pnn], f"node {pnn} stopped for {duration:.2f}s")
        self._busy.add("hang")
        end = self.now + duration
        self.cluster.stop_node(pnn)
        self.event(f"fault: stopped node {pnn} for {duration:.3f}s")
        try:
            if others_restart_after is not None:
                await asyncio.sleep(others_restart_after)
                others = [p for p in range(self.cluster.size) if p != pnn]
                if self.cluster.stopped(pnn):
                    restart = Fault(fault.at + others_restart_after, "majority_restart")
                    await self._restart(restart, others, down)
            await asyncio.sleep(max(0.0, end - self.now))
            if self.cluster.stopped(pnn):
                self.cluster.cont_node(pnn)
                self.event(f"fault: continued node {pnn}")
        finally:
            self._busy.discard("hang")
            if window:
                window.closing = True

    async def _network_fault(
        self,
        fault: Fault,
        name: str,
        start: Callable[[], None],
        end: Callable[[], None],
        duration: float,
        lossy: bool,
        nodes: list[int],
    ) -> None:
        if "network" in self._busy:
            self.skip(fault, "another network fault is in place")
            return
        self.counts[fault.kind] += 1
        window = self.lossy(name) if lossy else None
        self.departing(nodes, name)
        self._busy.add("network")
        start()
        self.event(f"fault: {name} for {duration:.3f}s")
        try:
            await asyncio.sleep(duration)
            end()
            self.event(f"fault: {name} healed")
        finally:
            self._busy.discard("network")
            if window:
                window.closing = True

    async def _partition(self, fault: Fault, alone: int, duration: float) -> None:
        rest = {p for p in range(self.cluster.size) if p != alone}
        await self._network_fault(
            fault,
            f"partition {alone} | {sorted(rest)}",
            lambda: self.network.partition([{alone}, rest]),
            self.network.heal,
            duration,
            lossy=True,
            nodes=[alone],
        )

    async def _nontransitive(
        self, fault: Fault, pair: list[int], duration: float, late: list[Any] | None = None
    ) -> None:
        """Two nodes cannot talk, yet both talk to the third; `late`: [node, seconds]
        that node notices the cut later than the other."""
        a, b = pair
        noticed_late = None if late is None else (int(late[0]), float(late[1]))
        await self._network_fault(
            fault,
            f"cut {a}-{b} (non-transitive)"
            + ("" if late is None else f", node {late[0]} notices {late[1]:.3f}s later"),
            lambda: self.network.cut(a, b, noticed_late),
            lambda: self.network.restore(a, b),
            duration,
            lossy=True,
            nodes=[a, b],
        )

    async def _oneway(self, fault: Fault, src: int, dst: int, duration: float) -> None:
        """What `src` sends `dst` is lost; noticed only after the keepalive limit."""
        noticed = duration >= 0.25 or self.cluster.mode == "vs"
        await self._network_fault(
            fault,
            f"cut {src}->{dst} (one way)",
            lambda: self.network.cut_oneway(src, dst),
            lambda: self.network.restore(src, dst),
            duration,
            lossy=noticed,
            nodes=[src, dst],
        )

    async def _delay(
        self, fault: Fault, pnn: int | None, latency: tuple[float, float], duration: float
    ) -> None:
        """A latency spike on one node's links or everywhere (below detection)."""
        if "delay" in self._busy:
            self.skip(fault, "another delay is in place")
            return
        self.counts["delay"] += 1
        self._busy.add("delay")
        if pnn is None:
            self.network.latency = latency
        else:
            self.network.slow(pnn, latency)
        where = "everywhere" if pnn is None else f"on node {pnn}"
        self.event(f"fault: latency {latency[0]:.3f}-{latency[1]:.3f}s {where} for {duration:.2f}s")
        try:
            await asyncio.sleep(duration)
            self.network.latency = LATENCY
            if pnn is not None:
                self.network.slow(pnn, None)
            self.event("fault: latency back to normal")
        finally:
            self._busy.discard("delay")

    async def _io_error(self, fault: Fault, pnn: int, rate: float, duration: float) -> None:
        """A node's TDB writes fail for a while."""
        if "disk" in self._busy:
            self.skip(fault, "another disk fails")
            return
        disk = self.cluster.disks[pnn]
        self.counts["io_error"] += 1
        # vs: it may leave and come back with damaged copies (vs seed 30006979).
        self.holders.discard(pnn)
        # vs: a failed write makes the node leave the group and rejoin.
        self.departing([pnn], f"I/O errors on node {pnn}")
        self._busy.add("disk")
        disk.failure_rate = rate
        self.event(f"fault: node {pnn} fails {rate:.0%} of TDB writes for {duration:.2f}s")
        try:
            await asyncio.sleep(duration)
            disk.failure_rate = 0.0
            self.event(f"fault: node {pnn} writes again")
        finally:
            self._busy.discard("disk")

    async def _chain_hold(self, fault: Fault, pnn: int, key: str | None, duration: float) -> None:
        """A client of another process (Samba's smbd) holds a volatile record's
        chain in the node's file (the daemon shares only volatile files, see
        `Database.shared`), or every chain (`key` None: a traverse): the
        node's own work on those records, and anything that needs the whole
        file (a freeze, a vs view change), waits for it. The client may take
        the chain while the node is stopped."""
        if not self._present(pnn):
            self.skip(fault, f"node {pnn} is down")
            return
        database = self.cluster.nodes[pnn].dbs.get(db_id(VOLATILE))
        if database is None or not database.shared:
            self.skip(fault, f"no client of node {pnn} has attached {VOLATILE}")
            return
        local = database.local
        raw = None if key is None else key.encode()
        assert isinstance(local, SimLocalDb)
        if local.whole_locked or (local.own_chains if raw is None else raw in local.own_chains):
            self.skip(fault, f"node {pnn} holds {'a' if raw is None else 'that'} chain")
            return
        self.counts["chain_hold"] += 1
        # Holds that overlap make one stall: an event waits for the chain one
        # client holds, the events behind it for the chains of the others.
        first, last = self.held.get(pnn, (self.now, self.now))
        if last < self.now:  # a gap: the stream could drain before this hold
            first = self.now
        last = max(last, self.now + duration)
        self.held[pnn] = (first, last)
        if self.cluster.mode == "vs" and last - first > self.cluster.tunables["RecoverTimeout"]:
            # A stream that waits that long makes the node leave and rejoin.
            # (vs seed 1588045: holds of 0.78 s and 1.72 s on one node, which
            # overlapped, stalled its stream for more than 2 s; its clients'
            # entries went, and the history said they could not.)
            self.departing(
                [pnn], f"chains of node {pnn} held for {last - first:.2f}s on end", since=first
            )
        local.others[raw] += 1
        what = "every chain of v" if key is None else f"the chain of {hkey(VOLATILE, key)}"
        self.event(f"fault: a client of node {pnn} holds {what}")
        try:
            await asyncio.sleep(duration)
        finally:
            local.others[raw] -= 1
            if local.others[raw] <= 0:
                del local.others[raw]
            self.event(f"fault: the client of node {pnn} lets go of {what}")

    async def _lock_join(
        self, fault: Fault, holder: int, joiner: int, key: str, down: float, hold: float
    ) -> None:
        """A client holds a record lock while another node crashes and rejoins."""
        if not (self._running(holder) and self._present(joiner)):
            self.skip(fault, "holder or joiner is down")
            return
        unique = f"lj{fault.at:.3f}@{holder}"
        locked, release = asyncio.Event(), asyncio.Event()
        self.counts["lock_join"] += 1
        self.event(f"fault: lock {key} on node {holder}, restart node {joiner}")
        task = self.cluster.spawn(holder, self._hold(holder, key, unique, locked, release))
        waited = self.now
        while not locked.is_set() and not task.done() and self.now - waited < 3.0:
            await asyncio.sleep(0.01)
        if locked.is_set() and self._present(joiner):
            window = self.lossy(f"crash of node {joiner}")
            self.departing([joiner], f"crash of node {joiner}")
            await self._kill(joiner)
            await asyncio.sleep(down)
            await self._start(joiner)
            node = self.cluster.nodes.get(joiner)
            started = self.now
            while node is not None and not node.serving and self.now - started < 5.0:
                await asyncio.sleep(0.02)
            await asyncio.sleep(hold)
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
        """A majority of nodes holds the data, runs, is connected and writes
        its files.

        A node whose disk fails cannot hold the stream's writes (it leaves
        the group and comes back damaged), so it does not count: a crash of
        another node meanwhile leaves a single holder, as two crashes would
        (vs seed 1019342: node 0's disk failing, node 1 crashed, then node 2,
        the last holder, restarted: the write is gone with every copy). Nor
        does a node that restarted and does not serve yet (`holders`; vs
        seed 21003152: node 2 restarted and waited for a snapshot from node
        0, stalled by a Samba client's chain, when node 1 crashed: node 0,
        the last holder, then left to resync, and nodes 1 and 2 went on from
        their empty files), nor one a serving member's view left out until
        it serves again (vs seed 42003733: node 2 cut off, then node 0
        crashed; node 1, the last holder, was stalled by a Samba client's
        chain, so node 2 never caught up, and when node 1 left to resync,
        nodes 0 and 2 went on from node 2's old copy).
        """
        size = self.cluster.size
        up = [
            p
            for p in range(size)
            if p in self.holders
            and self.cluster.running(p)
            and not self.cluster.disks[p].failure_rate
        ]
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
            serving = {
                p
                for p, node in self.cluster.nodes.items()
                if node.serving and p not in self._moving
            }
            # Serving while its disk fails, a node may leave at its next write
            # with damaged copies and never catch up (vs seed 45006710).
            holders = self.holders | {p for p in serving if not self.cluster.disks[p].failure_rate}
            if self.cluster.mode == "vs":
                # Left out of a serving member's view (a minority partition,
                # an expel), a node misses what that view acknowledges.
                holders -= {
                    q
                    for p in serving
                    for q in range(size)
                    if q not in self.cluster.nodes[p].transport.view.members
                }
            if holders != self.holders:
                self.holders = holders
                self._track_quorum()
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
        """Record every loss window in the history, on every volatile key; a
        window still open ends at `end` (the cluster has settled).

        Each recovery in a window may pick another surviving copy: the record
        can fall back, then come forward again when the node holding the newer
        copy rejoins. `LOSSES_PER_WINDOW` such steps cover that.

        On entry lists (whose histories also carry purge windows, and whose
        states branch more) the windows are merged into one, from the first
        fault to `end`, with the same number of steps: a search over every
        order of many windows would not end.
        """
        for window in self.windows:
            stop = window.end if window.end is not None else end
            for key in KEYS:
                for _ in range(LOSSES_PER_WINDOW):
                    self.history.loss(hkey(VOLATILE, key), window.start, stop, window.cause)
        if self.windows:
            first = min(w.start for w in self.windows)
            causes = "; ".join(w.cause for w in self.windows)
            for key in ENTRY_KEYS:
                for _ in range(LOSSES_PER_WINDOW):
                    self.history.loss(hkey(VOLATILE, key), first, end, causes)

    def purge_ops(self, end: float) -> None:
        """Record in the history, on every entry list (volatile and persistent),
        that the clients' entries of a node a fault touched may be purged from
        its first such fault on (until `end`), `LOSSES_PER_WINDOW` times per
        fault on it: a node purged may rejoin, its clients append again, and
        it may leave again, also within one fault (I/O errors make a vs node
        leave and rejoin at each failed write). At most `MAX_PURGES` times,
        which keeps the search finite.
        """
        departures: dict[int, list[tuple[float, str]]] = {}
        for pnns, start, cause in self.departures:
            for pnn in pnns:
                departures.setdefault(pnn, []).append((start, cause))
        for pnn, faults in sorted(departures.items()):
            first = min(start for start, _ in faults)
            causes = "; ".join(cause for _, cause in faults)
            for key in [hkey(db, k) for db in (VOLATILE, PERSISTENT) for k in ENTRY_KEYS]:
                for _ in range(min(len(faults) * LOSSES_PER_WINDOW, MAX_PURGES)):
                    self.history.purge(key, pnn, first, end, causes)
