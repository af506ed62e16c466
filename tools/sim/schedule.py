"""One seeded schedule: start a cluster, run clients under faults, settle, check.

What must hold whatever the faults did (see `faults` for which losses CTDB
semantics allow):

* each key's history is linearizable (`linearizability`), with loss
  windows for volatile keys where a fault may lose them, and no loss
  window hides two sides serving one key at once (`split_brain`);
* after the faults end the cluster settles (every node serves, one
  generation) and every node then reads the same value of every key: final
  linearizable reads through every node are part of the history;
* every node ends with the same persistent database (and on vs with the
  same volatile records);
* liveness: a healthy, connected majority serves (`faults.LIVENESS`);
* no client sees an exception that is not an error reply or an I/O error.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ctdb.common.errors import CtdbError
from ctdb.engines import record_calls
from ctdb.storage.database import SEQNUM_KEY
from ctdb.storage.entries import decode_entries
from ctdb.storage.ltdb import live_value
from tools.sim import linearizability, split_brain
from tools.sim.cluster import EXPEL, INTERVAL, LIFE, SimCluster, crashed
from tools.sim.faults import Faults, kinds_of, plan
from tools.sim.history import History, Kind
from tools.sim.loop import NODE, SimulationStuck, VirtualTimeLoop
from tools.sim.storage import CrashedProcessWrite, simulated_storage
from tools.sim.workload import (
    KEYS,
    PERSISTENT,
    VOLATILE,
    Session,
    Workload,
    call,
    hkey,
    text,
    why,
)

#: Virtual seconds of client work (and faults) per schedule.
DURATION = 0.8
#: Once the faults are over, every request must be answered within this
#: (a few CallTimeouts: a request may wait for a recovery, then time out).
OP_LIMIT = 10.0
#: Once the faults are over, the cluster must serve again within this.
SETTLE = 30.0
#: The share of schedules drawing only faults that may lose nothing.
STRICT_SHARE = 0.3
#: StickyPindown of a tcp schedule (milliseconds), one drawn per seed
PINDOWNS = (0, 0, 2, 20)


@dataclass
class Outcome:
    seed: int
    mode: str
    trace: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    ops: int = 0
    failed: int = 0
    virtual_time: float = 0.0
    #: drew only faults that may lose nothing
    strict: bool = False

    @property
    def ok(self) -> bool:
        return not self.violations


async def run_schedule(
    seed: int,
    mode: str,
    outcome: Outcome,
    kinds: dict[str, int] | None = None,
    *,
    variant: Variant,
) -> None:
    """Start a cluster, run clients under the seed's faults, settle, check."""
    loop = asyncio.get_running_loop()

    def log(event: str) -> None:
        outcome.trace.append(f"{loop.time():.6f} {event}")

    def complain(violation: str) -> None:
        log(f"VIOLATION {violation}")
        outcome.violations.append(violation)

    rng = random.Random(seed)  # the fault plan's: nothing else draws from it
    failed_tasks = _watch_tasks(loop, complain)
    outcome.strict = kinds is None and rng.random() < STRICT_SHARE
    # Drawn apart from the fault plan, so that a seed's faults stay what they were.
    stable = mode == "vs" and (outcome.strict or random.Random(seed * 31 + 7).random() < 0.5)
    # tcp: half the schedules pin migrated records (StickyPindown), a short
    # and a long pin, so that queued calls meet recoveries and faults too.
    pindown = random.Random(seed * 37 + 11).choice(PINDOWNS) if mode == "tcp" else 0
    # Drawn apart too; asking for the fault asks for the clients that cause it.
    if kinds is None:
        samba = variant.samba and random.Random(seed * 41 + 3).random() < 0.5
    else:
        samba = "chain_hold" in kinds
    # vs: corosync's ring re-forms after a cut sooner or later than the
    # daemons' lease of their silence runs out (with corosync's defaults and a
    # 1 s token, 2.2 s and up against 4 s; tools.netns_ctdb: 2.1 s).
    reform = random.Random(seed * 43 + 5).uniform(0.3, 1.5) * (EXPEL - INTERVAL)
    apart = variant.clients_apart
    cluster = SimCluster(
        seed,
        mode,
        log,
        keep_stopped=variant.keep_stopped,
        spread_backlog=apart,
        stable_volatile=stable,
        sticky_pindown=pindown,
        samba=samba,
        agreed_only=variant.agreed,
        ring_timeout=reform if variant.reform and mode == "vs" else 0.0,
    )
    history = History()
    try:
        log(f"StableVolatileWrites={int(stable)}")
        if pindown:
            log(f"StickyPindown={pindown}")
        if samba:
            log("Samba's clients share the files")
        for pnn in range(cluster.size):
            await cluster.start_node(pnn)
        if not await cluster.settle(30):
            complain(f"cluster never became healthy at start: {cluster.describe()}")
            return
        workload = Workload(cluster, history, loop.time() + DURATION, log, complain, apart=apart)
        if kinds is None:
            kinds = kinds_of(mode, outcome.strict, samba)
        planned = plan(
            rng,
            mode,
            kinds,
            outcome.strict,
            DURATION,
            cluster.size,
            resume_early=apart,
            at_delivery=variant.agreed and mode == "vs",
        )
        log(f"faults: {', '.join(kinds)}" + (" (nothing may be lost)" if outcome.strict else ""))
        for fault in planned:
            log(f"plan: {fault.describe()}")
        faults = Faults(cluster, history, planned, log, complain, workload.start_client)
        for pnn in range(cluster.size):
            workload.start_client(pnn)
        monitor = loop.create_task(faults.monitor())
        faults.start()
        await asyncio.sleep(DURATION)
        await faults.finish()
        await _requests_end(workload, faults.last_event, complain)
        settled = await cluster.settle(SETTLE)
        monitor.cancel()
        outcome.faults.update(faults.counts)
        outcome.ops, outcome.failed = workload.ops, workload.failed
        if not planned:
            # Nothing went wrong: every request must end as it would on a
            # healthy cluster. BUSY is an answer (a transaction lost a race,
            # a lock queue was full); TIMEOUT or RETRY would mean a request
            # that waited for nothing (seen: a lost wake-up of a persistent read).
            unexpected = {e: n for e, n in workload.errors.items() if e != "BUSY"}
            if unexpected:
                complain(f"requests failed without any fault: {unexpected}")
        if not settled:
            complain(f"cluster did not settle after the faults: {cluster.describe()}")
            return
        faults.loss_ops(loop.time())
        faults.purge_ops(loop.time())
        await _final_reads(workload, complain)
        _compare_replicas(cluster, complain)
        _departed_entries(cluster, complain)
        for violation in linearizability.check(history.by_key()):
            complain(violation.describe())
        for split in split_brain.check(history.by_key()):
            complain(split)
    finally:
        _unhandled(failed_tasks, complain)
        for pnn, failure in cluster.failures:
            complain(f"node {pnn} stopped itself: {failure}")
        outcome.virtual_time = loop.time()
        await cluster.close()


async def _requests_end(workload: Workload, faults_over: float, complain: Any) -> None:
    """Every client request must get its answer once the faults are over."""
    loop = asyncio.get_running_loop()
    _, pending = await asyncio.wait(workload.tasks, timeout=OP_LIMIT)
    for name, (what, since) in sorted(workload.busy.items()):
        complain(
            f"client {name}: {what} started at {since:.4f} got no reply in "
            f"{loop.time() - since:.1f}s (faults ended at {faults_over:.4f})"
        )
    for task in pending:
        task.cancel()


def _watch_tasks(loop: asyncio.AbstractEventLoop, complain: Any) -> list[asyncio.Task[Any]]:
    """Make a daemon's dying task (or failing callback) a violation, not a silence."""
    failed: list[asyncio.Task[Any]] = []

    def done(task: asyncio.Task[Any]) -> None:
        # Runs in the context that made the task: a crashed incarnation's
        # leftovers (kill -9 would have stopped them) are no daemon's fault.
        # `_exception` rather than exception(): that would mark it retrieved.
        if crashed() or task.cancelled() or task._exception is None:  # type: ignore[attr-defined]
            return
        failed.append(task)

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        task.add_done_callback(done)
        return task

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # Only a callback that raised (a delivery, a timer): reported while it
        # happens. What asyncio says when it garbage-collects a task comes at
        # no fixed time; `_unhandled` looks at tasks instead.
        exc, handle = context.get("exception"), context.get("handle")
        if handle is None or exc is None or isinstance(exc, CrashedProcessWrite):
            return
        life = handle._context.get(LIFE)
        if life is not None and not life.alive:
            return
        where = getattr(handle._callback, "__qualname__", "a callback")
        pnn = handle._context.get(NODE)
        who = "" if pnn is None else f"node {pnn}: "
        complain(f"{who}unhandled exception in {where}: {exc!r}")

    loop.set_task_factory(factory)  # type: ignore[arg-type]
    loop.set_exception_handler(handler)
    return failed


def _unhandled(failed: list[asyncio.Task[Any]], complain: Any) -> None:
    """Tasks that died of an exception nobody looked at: a daemon lost a part of itself."""
    for task in failed:
        if not task._log_traceback:  # type: ignore[attr-defined]
            continue  # someone awaited it and got the error
        exc = task.exception()  # also keeps asyncio from logging it later
        # An error reply nobody collected (gather stops at the first) is
        # untidy but harmless; anything else means a part of a daemon died.
        if not isinstance(exc, CrashedProcessWrite | CtdbError):
            name = getattr(task.get_coro(), "__qualname__", task.get_name())
            complain(f"task {name} died: {exc!r}")


async def _final_reads(workload: Workload, complain: Any) -> None:
    """Read every key through every node: all must agree with the history."""
    cluster, history = workload.cluster, workload.history

    async def read(pnn: int, key: str) -> None:
        node = cluster.nodes[pnn]
        session = Session(f"final@{pnn}")
        v, p = node.db_by_name(VOLATILE), node.db_by_name(PERSISTENT)
        op = history.invoke(session.name, hkey(VOLATILE, key), Kind.READ)
        try:
            value = await asyncio.wait_for(
                call(node.records.fetch(v, key.encode(), session)), OP_LIMIT
            )
        except (CtdbError, TimeoutError) as exc:
            complain(f"final read of {key} on node {pnn} failed: {why(exc)} {exc}")
            history.failed(op, why(exc))
            return
        history.ok(op, text(value))
        op = history.invoke(session.name, hkey(PERSISTENT, key), Kind.READ)
        history.ok(op, text(live_value(p.local.get(key.encode()))))

    async def on_node(pnn: int) -> None:
        node = cluster.nodes[pnn]
        if not await asyncio.wait_for(workload.attach(node, Session(f"final@{pnn}")), OP_LIMIT):
            complain(f"final attach on node {pnn} failed")
            return
        await asyncio.gather(*(read(pnn, key) for key in KEYS))

    for pnn in range(cluster.size):
        await cluster.run_on(pnn, on_node(pnn))


def _compare_replicas(cluster: SimCluster, complain: Any) -> None:
    """Databases every node holds in full must be identical."""
    names = [PERSISTENT] if cluster.mode == "tcp" else [PERSISTENT, VOLATILE]
    for name in names:
        contents = {}
        for pnn, node in sorted(cluster.nodes.items()):
            db = node.db_by_name(name)
            contents[pnn] = {
                k.decode(errors="replace"): r.value.decode(errors="replace")
                if k != SEQNUM_KEY
                else str(db.seqnum())
                for k, r in sorted(db.local.items())
                if not r.deleted
            }
        if len({tuple(sorted(c.items())) for c in contents.values()}) != 1:
            complain(f"{name} database differs between nodes: {contents}")


def _departed_entries(cluster: SimCluster, complain: Any) -> None:
    """Once the cluster has settled, no entry list holds an entry of a node's
    earlier run: every tcp recovery and every vs round purges the entries of
    nodes that left or restarted. The history lets a purge be left out
    (`Faults.purge_ops`: it cannot tell when one happens); this says that it
    did happen (a purge skipped for good let a tcp campaign pass while
    departed clients' locks stayed held). On tcp a volatile list is its
    dmaster's copy; other copies of it are caches."""
    runs = {pnn: node.epochs.incarnation for pnn, node in cluster.nodes.items()}
    gone = record_calls.departed(runs)
    for pnn, node in sorted(cluster.nodes.items()):
        for name in (VOLATILE, PERSISTENT):
            for key, rec in node.db_by_name(name).local.items():
                if not record_calls.may_hold_entries(rec):
                    continue
                if cluster.mode == "tcp" and name == VOLATILE and rec.dmaster != pnn:
                    continue
                stale = [e for e in decode_entries(rec.value) if gone(e)]
                if stale:
                    owners = ", ".join(f"{e.pnn}:{e.client:#x}" for e in stale)
                    complain(
                        f"node {pnn}: {name}:{key.decode(errors='replace')} still holds entries "
                        f"of departed runs ({owners}; runs now {runs})"
                    )


class _TraceLogs(logging.Handler):
    """Puts the daemons' log records into the trace, stamped and attributed."""

    def __init__(self, loop: VirtualTimeLoop, trace: list[str]) -> None:
        super().__init__(logging.INFO)
        self.loop = loop
        self.trace = trace

    def emit(self, record: logging.LogRecord) -> None:
        pnn = NODE.get()
        who = "" if pnn is None else f"node {pnn}: "
        self.trace.append(f"{self.loop.time():.6f}   {who}{record.name}: {record.getMessage()}")


@dataclass(frozen=True)
class Variant:
    """How a schedule runs, beyond its seed and its faults."""

    #: vs: the group keeps a stopped member for ever, as corosync alone does
    keep_stopped: bool = False
    #: ready callbacks run in the order they were made, nodes' callbacks not
    #: interleaved (`loop._Interleaved`): how every schedule ran before
    #: interleaving existed, to replay a seed recorded then (implies `apart`
    #: False)
    fifo: bool = False
    #: clients are processes of their own, whose requests wait for a stopped
    #: node and may be handled before the traffic queued for it, and half the
    #: long hangs end while clients still run; False: clients inside their
    #: node, as schedules ran before 2026-12-05, to replay a seed recorded then
    apart: bool = True
    #: half the schedules have Samba's clients share the nodes' files, and
    #: hold chains in them (`faults.SAMBA_FAULTS`); False: none, as schedules
    #: ran before 2026-12-06, to replay a seed recorded then
    samba: bool = True
    #: vs: a crash or a split may take from the members that go on together
    #: the last messages of those they part from, which the senders
    #: delivered (corosync's agreed order, `ViewLayer._lose_suffix`); False:
    #: all or none, as schedules ran before 2026-12-06
    agreed: bool = True
    #: vs: a cut changes the views only once it has lasted the ring's
    #: re-forming time (corosync's token and consensus timeouts,
    #: `MemoryNetwork.ring_timeout`); False: at once, as schedules ran until
    #: 2026-12-06 (seeds up to 41,088,070)
    reform: bool = True

    @property
    def clients_apart(self) -> bool:
        return self.apart and not self.fifo


#: schedules as campaigns run them
DEFAULT_VARIANT = Variant()


def simulate(
    seed: int,
    mode: str,
    kinds: dict[str, int] | None = None,
    *,
    logs: bool = False,
    variant: Variant = DEFAULT_VARIANT,
) -> Outcome:
    """Run one schedule on a fresh virtual-time loop (`logs`: daemon logs in the trace)."""
    # Its own generator: the fault plan's draws stay what they were.
    loop = VirtualTimeLoop(None if variant.fifo else random.Random(seed * 1_000_003 + 17))
    outcome = Outcome(seed, mode)
    handler = _TraceLogs(loop, outcome.trace)
    loggers = [logging.getLogger(name) for name in ("ctdb", "transport")]
    if logs:
        for logger in loggers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False
    with simulated_storage():
        main = loop.create_task(run_schedule(seed, mode, outcome, kinds, variant=variant))
        try:
            loop.run_until_complete(main)
        except SimulationStuck as exc:
            outcome.violations.append(f"simulation stuck: {exc}")
            # Unwind: cancelling the schedule runs its clean-up (nodes stop, files go).
            loop.virtual_selector.armed = False
            main.cancel()
            try:
                loop.run_until_complete(main)
            except (asyncio.CancelledError, SimulationStuck):
                pass
        finally:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()
            if logs:
                for logger in loggers:
                    logger.removeHandler(handler)
                    logger.setLevel(logging.NOTSET)
                    logger.propagate = True
    return outcome
