"""Faults against real daemons, checked from outside: no acknowledged write is lost.

The simulator (`tools.simulate`) explores interleavings of the cluster logic
on a simulated network; this campaign is its counterpart with nothing
simulated: three real `ctdbd` processes on loopback, clients of
`ctdb.client` incrementing counters through them, and a fault every few
seconds that a user could inflict: kill -9 of a daemon (restarted later),
SIGSTOP of one (a hang, long enough or not to be expelled), `ctdbtool
recover`, kill -9 of a majority, a full disk under one node's databases
(with `--faults ...,disk-full`). Clients on every node increment shared
counters, and each counter knows what its clients were told: how many
increments were acknowledged, how many ended without an answer (in doubt:
they may or may not have happened) and how many are in flight. A read of a
counter, during the run on any node and at the end on every node, must lie
between what was acknowledged when the read started and every increment
started by the time it returned:

    acknowledged <= value <= acknowledged + in doubt + in flight

Below is a lost acknowledged write; above, a write that nobody made. Each
persistent increment also writes a record of its own, and every one that
was acknowledged must be on every node at the end; and at the end every
node must read the same value.

What is checked follows what the design promises (README, Architecture):
persistent counters (a transaction per increment) survive every fault here,
majority kills included (every acknowledged commit is on every active
node's disk). Volatile counters (`fetch_lock` / `store_unlock`) survive
recoveries on both transports; a node's death, expulsion or failing disk
may take the volatile records it held with it, as in CTDB, except over vs
with `StableVolatileWrites = 1`, where they survive any single failure.
Volatile counters are therefore checked only where the fault plan stays inside that promise, and the
summary says whether they were.

    python -m tools.chaos [--transport tcp|vs] [--duration 60] [--min-faults N] [--seed N]
                          [--faults kill,hang,recover,majority,disk-full,...] [--no-settle]
                          [--in-place] [--netns] [--samba] [--json]

By default the cluster heals after each fault before the next (the volatile
promises are about single failures); `--no-settle` lets faults land in the
recoveries of the ones before. `--in-place` makes the volatile clients use
records in place, as Samba's clients do, on tcp. `--netns` runs the cluster
in network namespaces and allows network faults (cut, link, oneway) and,
over vs, where each namespace runs its own corosync, `corosync` (kill -9 of
one node's corosync, restarted after a while: its daemon goes solo and joins
again).
`--samba` adds a writer per node that uses Samba's own `ctdb pstore`
through the CTDB protocol, 1, 2, 3, ... on a key of its own, checked with
`ctdb pfetch` on any node during the run and on every node at the end.

Exit status 1 if any read broke the rule (each violation is printed with
the client's history around it), 0 otherwise.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from ctdb.client import Client
from ctdb.common.config import CTDB_SOCKET_NAME
from ctdb.common.errors import CtdbError, ErrorCode
from tools.cluster import LocalCluster, free_port
from tools.netns_ctdb import NetnsCtdb, netns_ctdb

PERSISTENT_DB = "chaos_persistent.tdb"
VOLATILE_DB = "chaos_volatile.tdb"
FAULTS = ("kill", "hang", "recover", "majority", "disk-full", "cut", "link", "oneway", "corosync")
#: faults of the network, which need the cluster in network namespaces (--netns)
NET_FAULTS = ("cut", "link", "oneway")
#: faults that need a corosync per node: vs in network namespaces
COROSYNC_FAULTS = ("corosync",)
#: what runs unless --faults says otherwise (disk-full needs root, for its tmpfs mounts)
DEFAULT_FAULTS = ("kill", "hang", "recover", "majority")
#: size of each node's state directory (a tmpfs) when disk-full is among the faults:
#: room for a few minutes of the persistent workload's log records, so that
#: only the fault fills the disk (tcp seed 1635 wrote 22 MB of them in 90 s;
#: seed 1649 with --in-place, 611,105 increments, 111 MB, and a node whose
#: disk stayed full never recovered) (`fill` fills whatever is left: the size
#: costs memory only while it does)
STATE_DISK = "256m"
#: Failure detection in 0.6 s, so that a hang of a second is an expulsion.
TUNABLES = {"KeepaliveInterval": 0.2, "KeepaliveLimit": 3}
#: the payload of each increment's log record: big enough that a full disk shows soon
LOG_VALUE = b"x" * 200
#: Samba's own command-line tool (Debian package ctdb), for --samba
SAMBA_CTDB = shutil.which("ctdb") or "/usr/bin/ctdb"
#: How long a client waits for one answer before it counts the request in doubt.
CALL_TIMEOUT = 15.0


def log_key(counter: SharedCounter, value: int) -> str:
    return f"{counter.name}/{value}"


def error_name(exc: Exception) -> str:
    if isinstance(exc, CtdbError):
        return exc.code.name if isinstance(exc.code, ErrorCode) else str(exc.code)
    return type(exc).__name__


@dataclass
class Violation:
    counter: str
    where: str  # "during the run on node N" or "at the end on node N"
    value: int
    floor: int
    ceiling: int
    history: list[str]


class SharedCounter:
    """A counter several clients increment; what they were told bounds what a read may see.

    Every increment adds one, so the value counts the increments that happened.
    A read that starts after `acknowledged` increments were acknowledged must
    see at least that many (none lost), and no read may see more than the
    increments started by the time it returned (none invented): acknowledged,
    in doubt (ended without an answer) and still in flight.
    """

    def __init__(self, name: str, db: str) -> None:
        self.name, self.db = name, db
        self.acknowledged = self.in_doubt = self.in_flight = 0
        self.errors: Counter[str] = Counter()
        self.history: deque[str] = deque(maxlen=16)
        #: the values acknowledged increments wrote (their log records must stay)
        self.written: list[int] = []
        self._lock = threading.Lock()

    def floor(self) -> int:
        with self._lock:
            return self.acknowledged

    def ceiling(self) -> int:
        with self._lock:
            return self.acknowledged + self.in_doubt + self.in_flight

    def started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def ended(self, outcome: str, event: str, exc: Exception | None = None, wrote: int = 0) -> None:
        """`outcome`: acknowledged (it wrote `wrote`), refused (it did not happen) or in doubt."""
        with self._lock:
            if exc is not None:
                self.errors[error_name(exc)] += 1
            self.in_flight -= 1
            if outcome == "acknowledged":
                self.acknowledged += 1
                self.written.append(wrote)
            elif outcome == "in doubt":
                self.in_doubt += 1
            self.history.append(event)

    def failed(self, exc: Exception, event: str) -> None:
        with self._lock:
            self.errors[error_name(exc)] += 1
            self.history.append(f"{event}: {exc}")


@dataclass
class Plan:
    transport: str
    duration: float
    faults: tuple[str, ...]
    seed: int
    clients_per_node: int = 1
    #: counters per database; every client increments one drawn at random each time
    keys: int = 2
    #: wait until the cluster is healthy again after each fault
    settle: bool = True
    #: volatile clients use records in place as Samba's do (tcp)
    in_place: bool = False
    log_level: str = "WARNING"
    #: the cluster in network namespaces (tools.netns_ctdb), for the network faults
    netns: bool = False
    #: a writer per node with Samba's `ctdb pstore` (and `pfetch` reads)
    samba: bool = False
    #: faults injected even if the duration is over (a slow heal must not shorten the plan)
    min_faults: int = 0

    @property
    def volatile_promised(self) -> bool:
        """Whether the design promises the volatile counters under these faults."""
        if self.transport == "vs" and self.settle:
            # Any single failure; a cut link or a one-way cut is not one node's.
            return not set(self.faults) & {"majority", "link", "oneway"}
        return set(self.faults) <= {"recover"}

    @property
    def tunables(self) -> dict[str, float]:
        extra = {"StableVolatileWrites": 1} if self.transport == "vs" else {}
        return {**TUNABLES, **extra}


class Register:
    """A key that one writer sets to 1, 2, 3, ... with Samba's `ctdb pstore`.

    A read must lie between the last value acknowledged when it started
    (none lost) and the last value started by the time it returned (none
    invented): the writer goes on to the next value whatever the outcome.
    """

    def __init__(self, pnn: int) -> None:
        self.name = f"samba{pnn}"
        self.acknowledged = self.started = 0
        self.errors: Counter[str] = Counter()
        self.history: deque[str] = deque(maxlen=16)


class Nodes(Protocol):
    """What a campaign does to a cluster: `tools.cluster.LocalCluster` on loopback,
    or `tools.netns_ctdb.NetnsCtdb` in network namespaces."""

    @property
    def size(self) -> int: ...

    def client(self, pnn: int, timeout: float | None = ..., *, in_place: bool = ...) -> Client: ...

    def alive(self, pnn: int) -> bool: ...

    def signal_node(self, pnn: int, sig: int) -> None: ...

    def kill_node(self, pnn: int) -> None: ...

    def start_node(self, pnn: int) -> object: ...

    def node_dir(self, pnn: int) -> Path: ...

    def wait_healthy(self, timeout: float = ...) -> None: ...


class Campaign:
    """The cluster, its clients and the fault loop of one run."""

    def __init__(self, cluster: Nodes, plan: Plan, say: Callable[[str], None]) -> None:
        self.cluster, self.plan, self.say = cluster, plan, say
        self.rng = random.Random(plan.seed)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.violations: list[Violation] = []
        self.faults: Counter[str] = Counter()
        self.counters: list[SharedCounter] = []
        self.registers: list[Register] = []
        self.down: set[int] = set()  # killed, not restarted yet
        self.hung: set[int] = set()

    # -- clients -----------------------------------------------------------------------

    def connect(self, home: int, rng: random.Random) -> Client:
        """A client of `home`, or of another node while `home` is down."""
        order = [home] + rng.sample(range(self.cluster.size), self.cluster.size)
        last: Exception | None = None
        for pnn in order:
            if self.stop.is_set():
                break
            try:
                return self.cluster.client(pnn, timeout=CALL_TIMEOUT, in_place=self.plan.in_place)
            except CtdbError as exc:
                last = exc
        raise CtdbError(ErrorCode.DISCONNECTED, f"no node to connect to ({last})")

    def read(
        self, counter: SharedCounter, where: str, promised: bool, fetch: Callable[[str, str], Any]
    ) -> int:
        """`fetch(db, key)` the counter and check it: not above the ceiling, and not
        below the floor if that is `promised`."""
        floor = counter.floor()
        value = int(fetch(counter.db, counter.name) or b"0")
        ceiling = counter.ceiling()
        if value > ceiling or (promised and value < floor):
            name = f"{counter.db}/{counter.name}"
            found = Violation(name, where, value, floor, ceiling, list(counter.history))
            with self.lock:
                self.violations.append(found)
            self.say(f"VIOLATION {name}: read {value} {where}, bounds {floor}..{ceiling}")
        return value

    def client_loop(
        self,
        counters: list[SharedCounter],
        home: int,
        rng: random.Random,
        increment: Callable[[Client, SharedCounter], None],
    ) -> None:
        """Increment a counter drawn at random until told to stop; reconnect after errors."""
        client: Client | None = None
        while not self.stop.is_set():
            try:
                if client is None:
                    client = self.connect(home, rng)
                    # As Samba's clients do when they connect: a node that
                    # restarted may not know a volatile database yet, and one
                    # whose every holder died is attached anew.
                    client.attach(PERSISTENT_DB, "persistent")
                    client.attach(VOLATILE_DB, "volatile")
                increment(client, rng.choice(counters))
            except (CtdbError, OSError):
                if client is not None:
                    client.close()
                client = None
                self.stop.wait(0.05)
        if client is not None:
            client.close()

    def persistent_client(self, client: Client, counter: SharedCounter) -> None:
        """One increment in a transaction: read (checked), write, commit."""
        committing = False
        try:
            tx = client.transaction(PERSISTENT_DB)
            where = f"during the run on node {client.pnn}"
            value = self.read(counter, where, True, lambda _db, key: tx.fetch(key))
            tx.store(counter.name, str(value + 1))
            # A record per increment, so that the database grows (a full disk
            # then fails commits) and each acknowledged one can be looked for.
            tx.store(log_key(counter, value + 1), LOG_VALUE)
            counter.started()
            committing = True
            tx.commit()
            counter.ended(
                "acknowledged", f"node {client.pnn}: {value} -> {value + 1}", None, value + 1
            )
        except (CtdbError, OSError) as exc:
            if committing:
                # BUSY: the commit's read set was stale, so it did not happen.
                refused = isinstance(exc, CtdbError) and exc.code == ErrorCode.BUSY
                outcome = "refused" if refused else "in doubt"
                counter.ended(outcome, f"commit failed: {exc}", exc)
            else:
                counter.failed(exc, "transaction failed")
            raise

    def volatile_client(self, client: Client, counter: SharedCounter) -> None:
        """One increment under `fetch_lock` (its value checked), stored by `store_unlock`."""
        storing = False
        try:
            where = f"during the run on node {client.pnn}"
            promised = self.plan.volatile_promised
            value = self.read(counter, where, promised, client.fetch_lock)
            counter.started()
            storing = True
            client.store_unlock(counter.db, counter.name, str(value + 1))
            counter.ended(
                "acknowledged", f"node {client.pnn}: {value} -> {value + 1}", None, value + 1
            )
        except (CtdbError, OSError) as exc:
            if storing:
                counter.ended("in doubt", f"store_unlock failed: {exc}", exc)
            else:
                counter.failed(exc, "fetch_lock failed")
            raise

    def samba(self, pnn: int, *args: str) -> subprocess.CompletedProcess[str]:
        """Samba's `ctdb ARGS` against node `pnn`'s CTDB socket."""
        if isinstance(self.cluster, NetnsCtdb):
            socket = base = self.cluster.node_dir(pnn) / "ctdb"
        else:
            assert isinstance(self.cluster, LocalCluster)
            socket, base = self.cluster.node_dir(pnn), self.cluster.directory
        env = dict(os.environ, CTDB_SOCKET=str(socket / CTDB_SOCKET_NAME), CTDB_BASE=str(base))
        return subprocess.run(
            [SAMBA_CTDB, "-t", str(int(CALL_TIMEOUT)), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=CALL_TIMEOUT * 2,
            check=False,
        )

    def samba_writer(self, register: Register, home: int, rng: random.Random) -> None:
        """`ctdb pstore` 1, 2, 3, ... through node `home` (another while it is down);
        now and then `ctdb pfetch` on any node, checked against what was acknowledged."""
        while not self.stop.is_set():
            pnn = home if self.cluster.alive(home) else rng.randrange(self.cluster.size)
            register.started += 1
            value = register.started
            try:
                done = self.samba(pnn, "pstore", PERSISTENT_DB, register.name, str(value))
            except subprocess.TimeoutExpired:
                register.errors["timeout"] += 1
                continue
            if done.returncode == 0:
                register.acknowledged = value
                register.history.append(f"node {pnn}: {value} acknowledged")
            else:
                register.errors[f"pstore exit {done.returncode}"] += 1
                register.history.append(f"node {pnn}: {value} failed: {done.stderr.strip()}")
                self.stop.wait(0.05)
            if value % 4 == 0:
                self.samba_read(register, rng.randrange(self.cluster.size), "during the run")

    def samba_read(self, register: Register, pnn: int, when: str) -> int | None:
        """`ctdb pfetch` of the register on node `pnn`, checked; None if it failed."""
        floor = register.acknowledged
        try:
            done = self.samba(pnn, "pfetch", PERSISTENT_DB, register.name)
        except subprocess.TimeoutExpired:
            return None
        if done.returncode != 0:
            register.errors[f"pfetch exit {done.returncode}"] += 1
            return None
        value = int(done.stdout.strip() or "0")
        ceiling = register.started
        if not floor <= value <= ceiling:
            where = f"ctdb pfetch {when} on node {pnn}"
            found = Violation(register.name, where, value, floor, ceiling, list(register.history))
            with self.lock:
                self.violations.append(found)
            self.say(f"VIOLATION {register.name}: read {value} {where}, bounds {floor}..{ceiling}")
        return value

    # -- faults ------------------------------------------------------------------------

    def alive(self) -> list[int]:
        return [p for p in range(self.cluster.size) if p not in self.down]

    def inject(self) -> None:
        kind = self.rng.choice(self.plan.faults)
        self.faults[kind] += 1
        c = self.cluster
        if kind == "kill":
            victim = self.rng.choice(self.alive())
            self.say(f"fault: kill -9 node {victim}")
            c.kill_node(victim)
            self.down.add(victim)
            self.stop.wait(self.rng.uniform(0.2, 3.0))
            self.restart(victim)
        elif kind == "majority":
            victims = self.rng.sample(self.alive(), 2)
            self.say(f"fault: kill -9 nodes {victims}")
            for victim in victims:
                c.kill_node(victim)
                self.down.add(victim)
            self.stop.wait(self.rng.uniform(0.2, 3.0))
            for victim in victims:
                self.restart(victim)
        elif kind == "hang":
            victim = self.rng.choice(self.alive())
            # Short hangs end before KeepaliveInterval x KeepaliveLimit; long ones are expelled.
            seconds = self.rng.choice([0.2, 0.4, 1.0, 2.5])
            self.say(f"fault: SIGSTOP node {victim} for {seconds}s")
            self.hung.add(victim)
            c.signal_node(victim, signal.SIGSTOP)
            self.stop.wait(seconds)
            c.signal_node(victim, signal.SIGCONT)
            self.hung.discard(victim)
        elif kind == "recover":
            via = self.rng.choice(self.alive())
            self.say(f"fault: recover through node {via}")
            try:
                with c.client(via, timeout=30.0) as admin:
                    admin.call("recover")
            except CtdbError as exc:
                self.say(f"  recover: {exc}")
        elif kind == "disk-full":
            victim = self.rng.choice(self.alive())
            seconds = self.rng.uniform(0.5, 3.0)
            self.say(f"fault: node {victim}'s disk full for {seconds:.1f}s")
            filler = state_dir(c, victim) / "chaos-filler"
            fill(filler)
            self.stop.wait(seconds)
            filler.unlink()
            if not c.alive(victim):
                # An operator restarts a daemon that gave up on its disk.
                self.say(f"  node {victim} exited on the full disk; restarting it")
                self.faults["exited on a full disk"] += 1
                self.restart(victim)

        elif kind in NET_FAULTS:
            self.cut_network(kind)
        elif kind == "corosync":
            assert isinstance(c, NetnsCtdb)
            victim = self.rng.randrange(c.size)
            seconds = self.rng.uniform(0.2, 3.0)
            self.say(f"fault: kill -9 node {victim}'s corosync for {seconds:.1f}s")
            c.kill_corosync(victim)
            self.stop.wait(seconds)
            c.start_corosync(victim)

    def cut_network(self, kind: str) -> None:
        """Cut one node off, a link both ways or one way, for a while (real packet loss)."""
        assert isinstance(self.cluster, NetnsCtdb)
        net = self.cluster.net
        seconds = self.rng.uniform(0.3, 4.0)
        if kind == "cut":
            victim = self.rng.randrange(self.cluster.size)
            self.say(f"fault: node {victim} cut off for {seconds:.1f}s")
            net.cut(victim)
            self.stop.wait(seconds)
            net.heal(victim)
            return
        i, j = self.rng.sample(range(self.cluster.size), 2)
        if kind == "link":
            self.say(f"fault: link {i}-{j} cut for {seconds:.1f}s")
            net.cut_link(i, j)
        else:
            self.say(f"fault: what node {i} sends node {j} lost for {seconds:.1f}s")
            net.cut_oneway(i, j)
        self.stop.wait(seconds)
        net.heal_link(i, j)

    def restart(self, pnn: int) -> None:
        self.cluster.start_node(pnn)
        self.down.discard(pnn)

    def settle(self, timeout: float) -> bool:
        try:
            self.cluster.wait_healthy(timeout)
            return True
        except TimeoutError as exc:
            self.say(f"not healthy: {exc}")
            return False

    # -- the run -----------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        c = self.cluster
        with c.client(0) as admin:
            admin.attach(PERSISTENT_DB, "persistent")
            admin.attach(VOLATILE_DB, "volatile")
        threads = []
        workloads = ((PERSISTENT_DB, self.persistent_client), (VOLATILE_DB, self.volatile_client))
        for db, body in workloads:
            counters = [SharedCounter(f"counter{k}", db) for k in range(self.plan.keys)]
            self.counters += counters
            for pnn in range(c.size):
                for i in range(self.plan.clients_per_node):
                    rng = random.Random(f"{self.plan.seed}/{db}/{pnn}/{i}")
                    args = (counters, pnn, rng, body)
                    threads.append(threading.Thread(target=self.client_loop, args=args))
        if self.plan.samba:
            for pnn in range(c.size):
                register = Register(pnn)
                self.registers.append(register)
                writer = (register, pnn, random.Random(f"{self.plan.seed}/samba/{pnn}"))
                threads.append(threading.Thread(target=self.samba_writer, args=writer))
        for t in threads:
            t.start()
        started = time.monotonic()
        unhealthy = 0
        injected = 0
        try:
            while (
                time.monotonic() - started < self.plan.duration or injected < self.plan.min_faults
            ):
                self.stop.wait(self.rng.uniform(0.5, 2.0))
                self.inject()
                injected += 1
                # One fault at a time: the volatile promises are about single failures.
                if self.plan.settle and not self.settle(60.0):
                    unhealthy += 1
                    break
                self.say(f"{time.monotonic() - started:5.1f}s: {self.progress()}")
            for pnn in list(self.hung):
                c.signal_node(pnn, signal.SIGCONT)
            for pnn in list(self.down):
                self.restart(pnn)
            healthy = self.settle(60.0)
        finally:
            self.stop.set()
            for t in threads:
                t.join(CALL_TIMEOUT * 2)
        finals = self.final_reads() if healthy else {}
        return self.summary(time.monotonic() - started, healthy and not unhealthy, finals)

    def progress(self) -> str:
        done = sum(counter.acknowledged for counter in self.counters)
        return f"{done} increments acknowledged, {len(self.violations)} violations"

    def final_reads(self) -> dict[str, list[int]]:
        """Every counter on every node, after the faults, once the cluster is healthy.

        Every node must read the same value, and within the bounds.
        """
        finals: dict[str, list[int]] = {}
        for pnn in range(self.cluster.size):
            with self.cluster.client(pnn, timeout=30.0) as reader:
                for db in (PERSISTENT_DB, VOLATILE_DB):
                    try:
                        records = dict(reader.traverse(db))
                    except CtdbError as exc:
                        # Clients attach both as they connect: every node has them.
                        where = f"at the end on node {pnn}: {exc}"
                        self.violations.append(Violation(db, where, 0, 0, 0, []))
                        self.say(f"VIOLATION {db}: {where}")
                        continue
                    if db == PERSISTENT_DB:
                        self.check_logs(pnn, records)
                    for counter in (c for c in self.counters if c.db == db):
                        promised = db == PERSISTENT_DB or self.plan.volatile_promised
                        where = f"at the end on node {pnn}"
                        value = self.read(counter, where, promised, reader.fetch)
                        finals.setdefault(f"{db}/{counter.name}", []).append(value)
        for register in self.registers:
            for pnn in range(self.cluster.size):
                read = self.samba_read(register, pnn, "at the end")
                if read is None:
                    where = f"ctdb pfetch failed at the end on node {pnn}"
                    self.violations.append(Violation(register.name, where, 0, 0, 0, []))
                    self.say(f"VIOLATION {register.name}: {where}")
                    continue
                finals.setdefault(f"{PERSISTENT_DB}/{register.name}", []).append(read)
        for name, values in finals.items():
            if len(set(values)) > 1:
                self.violations.append(
                    Violation(name, "the nodes disagree at the end", values[0], 0, 0, [])
                )
                self.say(f"VIOLATION {name}: the nodes read {values}")
        return finals

    def check_logs(self, pnn: int, records: dict[bytes, bytes]) -> None:
        """Every acknowledged persistent increment's log record is on node `pnn`."""
        for counter in self.counters:
            if counter.db != PERSISTENT_DB:
                continue
            missing = [v for v in counter.written if log_key(counter, v).encode() not in records]
            if missing:
                where = f"log records of acknowledged commits missing on node {pnn}"
                found = Violation(counter.name, where, missing[0], len(missing), 0, [])
                self.violations.append(found)
                self.say(f"VIOLATION {counter.name}: {where}: {missing[:10]}")

    def summary(
        self, seconds: float, healthy: bool, finals: dict[str, list[int]]
    ) -> dict[str, Any]:
        errors: Counter[str] = Counter()
        for counter in self.counters:
            errors.update(counter.errors)
        for register in self.registers:
            errors.update(register.errors)
        return {
            "transport": self.plan.transport,
            "seed": self.plan.seed,
            "seconds": round(seconds, 1),
            "faults": dict(self.faults),
            "volatile_checked": self.plan.volatile_promised,
            "healthy_at_end": healthy,
            "increments": {
                f"{c.db}/{c.name}": {"acknowledged": c.acknowledged, "in_doubt": c.in_doubt}
                for c in self.counters
            },
            "samba_writes": {
                f"{PERSISTENT_DB}/{r.name}": {"acknowledged": r.acknowledged, "started": r.started}
                for r in self.registers
            },
            "errors": dict(errors),
            "final_values": finals,
            "violations": [asdict(v) for v in self.violations],
        }


def new_cluster(directory: Path, plan: Plan) -> LocalCluster:
    base = f"127.{random.randint(10, 250)}.{random.randint(0, 250)}"
    return LocalCluster(
        directory,
        size=3,
        transport=plan.transport,
        port=free_port([f"{base}.{i + 1}" for i in range(3)]),
        base=base,
        tunables=plan.tunables,
        log_level=plan.log_level,
    )


def state_dir(cluster: Nodes, pnn: int) -> Path:
    """Where node `pnn` keeps its databases (`[database] state dir`)."""
    return cluster.node_dir(pnn) / "state"


def fill(path: Path) -> None:
    """Write `path` until its file system is full."""
    chunk = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return
                chunk = chunk[: len(chunk) // 2]


def mount_small_disks(cluster: LocalCluster, say: Callable[[str], None]) -> list[Path]:
    """A tmpfs of STATE_DISK as every node's state directory, so that one can fill up."""
    mounted = []
    for pnn in range(cluster.size):
        where = state_dir(cluster, pnn)
        where.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={STATE_DISK},mode=700", "tmpfs", str(where)],
            check=True,
            capture_output=True,
        )
        mounted.append(where)
    say(f"every node's state directory is a tmpfs of {STATE_DISK}")
    return mounted


def run_campaign(
    plan: Plan, say: Callable[[str], None], keep: Path | None = None
) -> dict[str, Any]:
    """One campaign on a fresh cluster in a temporary directory (kept at `keep` on failure)."""
    if plan.netns:
        return run_in_namespaces(plan, say, keep)
    directory = Path(tempfile.mkdtemp(prefix="pyctdb-chaos-"))
    cluster = new_cluster(directory / "cluster", plan)
    result: dict[str, Any] = {}
    mounted: list[Path] = []
    try:
        if "disk-full" in plan.faults:
            mounted = mount_small_disks(cluster, say)
        cluster.up(progress=say)
        result = Campaign(cluster, plan, say).run()
        return result
    finally:
        try:
            for pnn in range(cluster.size):
                cluster.signal_node(pnn, signal.SIGCONT)
            cluster.down()
            failed = not result or result["violations"] or not result["healthy_at_end"]
            if failed and keep is not None:
                shutil.copytree(
                    directory, keep, ignore=shutil.ignore_patterns("*.socket"), dirs_exist_ok=True
                )
                say(f"logs kept in {keep}")
        finally:
            # Whatever failed above, no tmpfs and no directory is left behind.
            for where in mounted:
                subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)
            shutil.rmtree(directory, ignore_errors=True)


def run_in_namespaces(
    plan: Plan, say: Callable[[str], None], keep: Path | None = None
) -> dict[str, Any]:
    """One campaign on a cluster in network namespaces (`tools.netns_ctdb`)."""
    with netns_ctdb(plan.transport, "chaos", plan.tunables) as cluster:
        say(f"{cluster.size} nodes in network namespaces, healthy")
        result: dict[str, Any] = {}
        try:
            result = Campaign(cluster, plan, say).run()
            return result
        finally:
            for pnn in range(cluster.size):
                cluster.signal_node(pnn, signal.SIGCONT)
            failed = not result or result["violations"] or not result["healthy_at_end"]
            if failed and keep is not None:
                for pnn in range(cluster.size):
                    shutil.copytree(
                        cluster.node_dir(pnn),
                        keep / f"node{pnn}",
                        ignore=shutil.ignore_patterns("*.socket"),
                        dirs_exist_ok=True,
                    )
                say(f"logs kept in {keep}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.chaos",
        description="Inject faults into a local 3-node cluster of real daemons while clients "
        "increment counters, and check that no acknowledged increment is lost and none "
        "appears that nobody made.",
    )
    parser.add_argument("--transport", choices=["tcp", "vs"], default="tcp")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of faults")
    parser.add_argument(
        "--min-faults",
        type=int,
        default=0,
        help="inject at least this many faults, even past --duration (each heal can take "
        "seconds, so a short duration alone may leave room for one fault only)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the fault plan: which faults, on which nodes, for how long (real "
        "daemons keep their own timing, so a seed does not replay a run exactly)",
    )
    parser.add_argument(
        "--faults",
        default=",".join(DEFAULT_FAULTS),
        help=f"comma-separated fault kinds among {', '.join(FAULTS)} (default: "
        f"{','.join(DEFAULT_FAULTS)}; disk-full mounts a {STATE_DISK} tmpfs as every "
        "node's state directory, and needs root; cut, link and oneway need --netns; "
        "corosync needs --transport vs --netns)",
    )
    parser.add_argument(
        "--clients-per-node", type=int, default=1, help="clients per node and workload"
    )
    parser.add_argument("--keys", type=int, default=2, help="counters per workload")
    parser.add_argument(
        "--no-settle",
        dest="settle",
        action="store_false",
        help="do not wait for the cluster to heal between faults, so that faults land in "
        "recoveries (volatile counters are then checked only if every fault is a recover)",
    )
    parser.add_argument(
        "--in-place",
        action="store_true",
        help="clients use volatile records in place when their node holds them, as "
        "Samba's clients do (tcp)",
    )
    parser.add_argument(
        "--netns",
        action="store_true",
        help="run the cluster in network namespaces of its own (needs root), which allows "
        "the network faults: cut (a node cut off), link (two nodes cannot reach each "
        "other, both can reach the third) and oneway (one node's packets to another lost)",
    )
    parser.add_argument(
        "--samba",
        action="store_true",
        help="also a writer per node with Samba's `ctdb pstore` through the CTDB protocol, "
        "its values checked with `ctdb pfetch` (needs Samba's ctdb tool)",
    )
    parser.add_argument("--log-level", default="WARNING", help="the daemons' log level (WARNING)")
    parser.add_argument("--keep", type=Path, help="copy the cluster's logs here on failure")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    ns = parser.parse_args(argv)
    faults = tuple(f for f in ns.faults.split(",") if f)
    unknown = set(faults) - set(FAULTS)
    if unknown or not faults:
        parser.error(f"unknown fault kinds: {', '.join(sorted(unknown)) or '(none given)'}")
    if set(faults) & set(NET_FAULTS) and not ns.netns:
        parser.error(f"{', '.join(NET_FAULTS)} need --netns")
    if set(faults) & set(COROSYNC_FAULTS) and not (ns.netns and ns.transport == "vs"):
        parser.error(f"{', '.join(COROSYNC_FAULTS)} needs --transport vs --netns")
    if ns.samba and not os.access(SAMBA_CTDB, os.X_OK):
        parser.error(f"--samba needs Samba's ctdb tool ({SAMBA_CTDB}; Debian: ctdb)")
    if "disk-full" in faults and ns.netns:
        parser.error("disk-full is not available with --netns")
    seed = ns.seed if ns.seed is not None else random.randrange(1 << 30)
    plan = Plan(
        ns.transport,
        ns.duration,
        faults,
        seed,
        ns.clients_per_node,
        ns.keys,
        ns.settle,
        ns.in_place,
        ns.log_level,
        ns.netns,
        ns.samba,
        ns.min_faults,
    )

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def interrupted(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    say(f"chaos: transport {plan.transport}, seed {seed}, faults {','.join(faults)}")
    try:
        result = run_campaign(plan, say, ns.keep)
    except KeyboardInterrupt:
        say("interrupted; the cluster is stopped")
        return 130
    if ns.json:
        print(json.dumps(result, indent=2))
    else:
        total = sum(c["acknowledged"] for c in result["increments"].values())
        print(
            f"{plan.transport} seed {seed}: {result['seconds']}s, faults {result['faults']}, "
            f"{total} increments acknowledged, errors {result['errors']}, volatile "
            f"{'checked' if result['volatile_checked'] else 'not promised under these faults'}"
        )
        for v in result["violations"]:
            print(
                f"VIOLATION {v['counter']}: read {v['value']} {v['where']}, bounds "
                f"{v['floor']}..{v['ceiling']}; history: {v['history']}"
            )
        if not result["healthy_at_end"]:
            print("the cluster did not become healthy after the faults")
    return 1 if result["violations"] or not result["healthy_at_end"] else 0


if __name__ == "__main__":
    sys.exit(main())
