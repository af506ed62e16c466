"""One cluster node's logic: state, databases, membership and the dispatch of
messages between the engines.

The node sees the network only through its `Transport` and is driven by
three kinds of events: client requests (from `ctdb.server.clients`), messages from
other nodes, and view changes. It owns the cluster-wide state CTDB users know
from `ctdb status`: node flags, generation, recovery mode, leader and vnnmap.

Serving rule: requests are answered only in recovery mode NORMAL, which a
node reaches only through a recovery run by a leader that holds the cluster
lock (a majority of configured nodes, or a lock file). A node that loses the
leader or a vnnmap member from its view freezes itself at once, so a
partition without quorum stops serving instead of diverging.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from enum import IntEnum, IntFlag
from pathlib import Path
from typing import Any, TypeVar

from ctdb.common.config import parse_tunable, read_nodes, tunable_defaults
from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import recovery
from ctdb.engines.base import RecordEngine
from ctdb.engines.merge import from_wire, to_wire
from ctdb.engines.migration import MigrationEngine
from ctdb.engines.ordered import OrderedEngine
from ctdb.engines.transactions import TransactionEngine
from ctdb.engines.vacuum import Vacuum
from ctdb.protocol.messages import (
    Call,
    ClientMessage,
    Control,
    ControlReply,
    DecodeError,
    DmasterReply,
    DmasterRequest,
    Message,
    NodeState,
    Ordered,
    decode,
    encode,
    wire_limits,
)
from ctdb.server.controls import ControlChannel
from ctdb.server.lease import Lease
from ctdb.server.peerguard import PeerGuard
from ctdb.storage.database import Database, DbKind
from ctdb.storage.durable import read_counter, write_counter
from ctdb.storage.ltdb import Record
from ctdb.storage.placement import db_id
from transport.base import Transport, View

log = logging.getLogger("ctdb.server.node")
T = TypeVar("T")

INVALID_GENERATION = 1
#: Recoveries a node's storage may make fail in a row, over at least
#: RecoverTimeout, before it is banned.
BAN_AFTER_FAILURES = 3
#: In the state directory: the latest recovery epoch this node took part in.
EPOCH_FILE = "recovery.epoch"
#: In the state directory: the highest epoch number this node saw handed out.
EPOCH_NUMBERED_FILE = "recovery.epoch-numbered"
#: In the state directory: how many times this node's daemon has started.
INCARNATION_FILE = "incarnation"
#: Migration messages held while this node finishes its part of a recovery
#: that a peer has finished already (see `_dispatch`); past it they are
#: dropped, as messages of another generation are (calls are re-sent).
MAX_DEFERRED = 10_000
#: Controls whose reply can be a whole database: sent once the links have room.
BULK_REPLIES = frozenset({"pull", "traverse"})


class NodeFlags(IntFlag):
    """CTDB's node flags (same bit values as ctdb_protocol.h)."""

    DISCONNECTED = 0x01
    UNHEALTHY = 0x02
    BANNED = 0x08
    DISABLED = 0x04
    STOPPED = 0x20

    @staticmethod
    def describe(flags: int) -> str:
        if not flags:
            return "OK"
        names = [f.name for f in NodeFlags if flags & f and f.name]
        return "|".join(names)


#: A plain int: flag tests run on every request, and IntFlag arithmetic is slow.
INACTIVE = int(NodeFlags.BANNED | NodeFlags.STOPPED | NodeFlags.DISCONNECTED)


class RecoveryMode(IntEnum):
    NORMAL = 0
    RECOVERY = 1


ControlHandler = Callable[[int, dict[str, Any]], Any]


class Node:
    def __init__(
        self,
        pnn: int,
        nodes: list[str],
        transport: Transport,
        state_dir: Path,
        *,
        tunables: dict[str, float] | None = None,
        cluster_lock: Path | None = None,
        nodes_file: Path | None = None,
        seed: int | None = None,
    ) -> None:
        self.pnn = pnn
        self.nodes = nodes
        self.transport = transport
        self.state_dir = state_dir
        self.cluster_lock = cluster_lock
        self.nodes_file = nodes_file
        self.tunables = tunable_defaults()
        self.tunables.update(tunables or {})
        self.rng = random.Random(seed)
        self.started = time.time()

        self.generation = INVALID_GENERATION
        self.recovery_mode = RecoveryMode.RECOVERY
        self.vnnmap: list[int] = []
        self.leader = -1
        state_dir.mkdir(parents=True, exist_ok=True)
        self._epoch_file = state_dir / EPOCH_FILE
        #: the latest recovery this node took part in (durable: see ctdb.storage.durable)
        self.epoch = read_counter(self._epoch_file)
        self._epoch_numbered_file = state_dir / EPOCH_NUMBERED_FILE
        #: the highest epoch number handed out where this node saw it (durable)
        self.epoch_numbered = max(self.epoch, read_counter(self._epoch_numbered_file))
        incarnation_file = state_dir / INCARNATION_FILE
        #: this run of the daemon, counted durably (see ctdb.engines.ordered)
        self.incarnation = read_counter(incarnation_file) + 1
        write_counter(incarnation_file, self.incarnation)
        self._frozen_generation = INVALID_GENERATION
        self._deferred: list[tuple[int, Message]] = []
        self._frozen_at = time.monotonic()
        self.flags = 0  # this node's own administrative flags
        self._ban_timer: asyncio.TimerHandle | None = None
        self.peers: dict[int, NodeState] = {}
        self.lease = Lease(pnn, len(nodes))
        self._lease_duration = 0.0
        self.last_recovery: dict[str, float] = {}

        self.dbs: dict[int, Database] = {}
        self.stats: Counter[str] = Counter()
        self.transactions = TransactionEngine(self)
        self.migration = MigrationEngine(self, self.transactions)
        #: set on a virtually synchronous transport: the ordered stream replaces
        #: migration and leader-driven recovery.
        self.ordered = OrderedEngine(self) if transport.capabilities.virtual_synchrony else None
        self.records: RecordEngine = self.ordered or self.migration
        #: what node messages are checked against (see ctdb.protocol.messages)
        self.wire_limits = wire_limits(self.nodes)
        self.guard = PeerGuard(pnn, transport, self.stats)
        self.controls = ControlChannel(self.send, self.wire_limits)
        self._serving = asyncio.Event()
        self._recovery_wanted = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        #: vs: the task leaving and rejoining the group, and whether another
        #: resync was asked for while it ran (see `rejoin`)
        self._rejoining: asyncio.Task[None] | None = None
        self._rejoin_again = False
        self._lock_fd: int | None = None
        self.shutdown_requested = asyncio.Event()
        #: Runs bulk work (recovery's pulls, merges and pushes of whole
        #: databases) off the event loop, so keepalives keep flowing; the
        #: frozen node touches no database meanwhile. The simulation runs it
        #: inline to stay deterministic.
        self.offload: Callable[[Callable[[], Any]], Awaitable[Any]] = asyncio.to_thread
        self._bulk_lock = threading.Lock()
        #: srvid -> callbacks of local clients registered for it
        self.srvids: dict[int, list[Callable[[int, int, bytes], None]]] = {}
        self._handlers: dict[str, ControlHandler] = {
            name.removeprefix("ctl_"): getattr(self, name)
            for name in dir(self)
            if name.startswith("ctl_")
        }
        transport.on_message = self._on_transport_message
        transport.on_view = self._on_view
        self._configure_lease()
        self._reopen_persistent()

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        await self.transport.start()
        self.transport.set_keepalive(
            self.tunable("KeepaliveInterval"), int(self.tunable("KeepaliveLimit"))
        )
        if self.ordered is None:
            self._tasks.append(asyncio.create_task(self._recovery_daemon()))
        self._tasks.append(asyncio.create_task(self._state_announcer()))
        self._tasks.append(asyncio.create_task(self._vacuum_loop()))

    async def stop(self) -> None:
        tasks = self._tasks + ([self._rejoining] if self._rejoining is not None else [])
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        await self.transport.stop()
        # A cancelled pull or push goes on in its thread: close nothing under it.
        await self._bulk(lambda: None)
        for db in self.dbs.values():
            db.local.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)

    def _reopen_persistent(self) -> None:
        """Persistent databases survive restarts: attach every file found on disk."""
        directory = self.state_dir / DbKind.PERSISTENT.value
        if not directory.is_dir():
            return
        suffix = f".{self.pnn}"
        for path in sorted(directory.iterdir()):
            if path.name.endswith(suffix):
                self.attach(path.name[: -len(suffix)], DbKind.PERSISTENT)

    # -- small helpers the engines use --------------------------------------------

    def tunable(self, name: str) -> float:
        return self.tunables[name]

    @property
    def serving(self) -> bool:
        return (
            self.recovery_mode is RecoveryMode.NORMAL
            and not self.flags & INACTIVE
            and (self.ordered is not None or self._lease_holds())
        )

    def set_epoch(self, epoch: int) -> None:
        """The latest recovery (tcp) or quorate view (vs) our copies are current for.

        Durable (ctdb.storage.durable): after any restart, recovery must still tell
        the copies that missed something from those that did not.
        """
        self.number_epoch(epoch)
        if epoch != self.epoch:
            write_counter(self._epoch_file, epoch)
            self.epoch = epoch

    def number_epoch(self, epoch: int) -> None:
        """Remember, durably, that epoch number `epoch` was handed out.

        vs numbers a new epoch above every number its members saw, also
        those of rounds a member planned but did not finish: an epoch is
        then never numbered twice, on two sides of a partition (see
        merge.freshest_copy).
        """
        if epoch > self.epoch_numbered:
            write_counter(self._epoch_numbered_file, epoch)
            self.epoch_numbered = epoch

    def in_generation(self, generation: int) -> bool:
        """Messages between nodes count only within the generation that sent them.

        Not `serving`: a record handed over while our lease is being renewed
        must still arrive, or the hand-over is lost with nobody holding it.
        """
        return generation == self.generation and self.recovery_mode is RecoveryMode.NORMAL

    def _lease_holds(self) -> bool:
        """tcp: the other members confirmed lately that we still serve their generation."""
        return self.lease.holds(asyncio.get_running_loop().time(), self._lease_duration)

    def _configure_lease(self) -> None:
        interval, limit = self.tunable("KeepaliveInterval"), self.tunable("KeepaliveLimit")
        self._lease_duration = interval * (limit - 1)  # under the detection time: ctdb.server.lease
        self.lease.configure(len(self.nodes), None if self.cluster_lock is None else self.leader)

    def on_ordered_state(self) -> None:
        """The ordered engine changed sync/quorum state: mirror it in CTDB's terms."""
        assert self.ordered is not None
        view = self.ordered.view
        # Agreed by every member: the view plus the forced recoveries since.
        generation = (view.view_id << 16) + self.ordered.recoveries
        if self.ordered.serving:
            if self.recovery_mode is RecoveryMode.RECOVERY or generation != self.generation:
                # A view change or forced recovery completed: what CTDB calls
                # a recovery. It began at the view change that started this
                # view (`_on_view`) or, for a marker in the stream (forced
                # recover, flags), took no time beyond its delivery.
                marker = (
                    self.recovery_mode is RecoveryMode.NORMAL
                    and generation >> 16 == self.generation >> 16
                )
                began = time.monotonic() if marker else self._frozen_at
                self.last_recovery = {
                    "duration": time.monotonic() - began,
                    "finished": time.time(),
                }
            members = self.ordered.members
            self.vnnmap = [p for p in members if not self.node_flags(p) & INACTIVE]
            self.leader = members[0]
            self.recovery_mode = RecoveryMode.NORMAL
            self._serving.set()
        elif self.recovery_mode is RecoveryMode.NORMAL:
            self._frozen_at = time.monotonic()
            self.recovery_mode = RecoveryMode.RECOVERY
            self._serving.clear()
        self.generation = generation
        self._announce()

    def read_local(self, db: Database, key: bytes, read: Callable[[], Any]) -> Any:
        """Run `read` of the local copy (persistent data): not while a recovery rewrites
        it, nor while the key's latest write may still be taken back (see
        RecordEngine.settled). Returns its result, or an awaitable of it."""
        if self.serving and self.records.settled(db, key):
            return read()

        async def when_settled() -> Any:
            loop = asyncio.get_running_loop()
            await self.records.settle(db, key, loop.time() + self.tunable("CallTimeout"))
            return read()

        return when_settled()

    async def wait_serving(self, deadline: float) -> None:
        """Wait until this node serves, or fail at once when WaitForQuorum is 0."""
        loop = asyncio.get_running_loop()
        while not self.serving:
            remaining = deadline - loop.time()
            if not self.tunable("WaitForQuorum") or remaining <= 0:
                raise self._not_serving_error()
            if self._serving.is_set():
                # NORMAL mode but inactive by our own flags (stopped, banned).
                await asyncio.sleep(min(0.05, remaining))
                continue
            try:
                await asyncio.wait_for(self._serving.wait(), remaining)
            except TimeoutError:
                raise self._not_serving_error() from None

    def _not_serving_error(self) -> CtdbError:
        if self.flags & INACTIVE:
            state = NodeFlags.describe(self.flags & INACTIVE)
            return CtdbError(ErrorCode.RETRY, f"node {self.pnn} is {state}: not serving")
        if not self.have_quorum():
            return CtdbError(
                ErrorCode.NO_QUORUM,
                f"node {self.pnn} is in a partition without quorum: writes are refused",
            )
        if self.recovery_mode is RecoveryMode.NORMAL:
            return CtdbError(
                ErrorCode.RETRY,
                f"node {self.pnn} has not heard lately that the cluster still counts it in: "
                "not serving until it does",
            )
        return CtdbError(ErrorCode.RETRY, "recovery in progress: retry")

    def send(self, pnn: int, msg: Message) -> None:
        if pnn == self.pnn:
            # Local delivery goes through the loop so handlers never re-enter.
            asyncio.get_running_loop().call_soon(self._handle, self.pnn, msg)
            return
        self.transport.send(pnn, encode(msg))

    async def control(
        self, pnn: int, op: str, args: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """Run a control on `pnn` (directly when it is this node)."""
        if timeout is None:
            timeout = self.tunable("CallTimeout")
        if pnn == self.pnn:
            # Bounded like a remote control: a recovery must never wait for
            # ever on its own push. Failures look the same as a remote's.
            try:
                result = self._start_control(self.pnn, op, args or {})
                if isinstance(result, Awaitable):  # only these need bounding (and a task)
                    result = await asyncio.wait_for(result, timeout)
                return result
            except TimeoutError:
                raise CtdbError(
                    ErrorCode.TIMEOUT, f"node {pnn} (this one) did not finish {op} in {timeout:g}s"
                ) from None
            except CtdbError:
                raise
            except Exception as exc:
                log.exception("control %s on this node failed", op)
                raise CtdbError(ErrorCode.IO, f"{type(exc).__name__}: {exc}") from exc
        if pnn not in self.transport.view:
            raise CtdbError(ErrorCode.DISCONNECTED, f"node {pnn} is not connected")
        return await self.controls.call(pnn, op, args, timeout)

    def request_recovery(self) -> None:
        self._recovery_wanted.set()

    # -- databases --------------------------------------------------------------------

    def attach(self, name: str, kind: DbKind) -> Database:
        dbid = db_id(name)
        db = self.dbs.get(dbid)
        if db is not None:
            if db.name != name:
                raise CtdbError(ErrorCode.EXISTS, f"database id clash: {name} and {db.name}")
            if db.kind is not kind:
                raise CtdbError(ErrorCode.EXISTS, f"database {name} is attached as {db.kind.value}")
            return db
        db = Database.open(self.state_dir, name, kind, self.pnn)
        self.dbs[db.id] = db
        log.info("attached %s database %s (id 0x%08x)", kind.value, name, db.id)
        return db

    def db(self, dbid: int) -> Database:
        try:
            return self.dbs[dbid]
        except KeyError:
            raise CtdbError(ErrorCode.NOT_FOUND, f"unknown database id 0x{dbid:08x}") from None

    def db_by_name(self, name: str) -> Database:
        db = self.dbs.get(db_id(name))
        if db is None or db.name != name:
            raise CtdbError(ErrorCode.NOT_FOUND, f"unknown database {name!r} (attach it first)")
        return db

    async def attach_everywhere(self, name: str, kind: DbKind) -> Database:
        """A client attaches: attach here and on every connected node."""
        db = self.attach(name, kind)
        others = [p for p in self.transport.view.members if p != self.pnn]
        results = await asyncio.gather(
            *(self.control(p, "attach", {"name": name, "kind": kind.value}) for p in others),
            return_exceptions=True,
        )
        for p, r in zip(others, results, strict=True):
            if isinstance(r, CtdbError) and r.code == ErrorCode.EXISTS:
                raise r
            if isinstance(r, BaseException):
                log.warning("attach %s on node %d failed: %s (recovery will retry)", name, p, r)
        return db

    # -- transport events ------------------------------------------------------------

    def _on_transport_message(self, src: int, payload: bytes) -> None:
        try:
            msg = decode(payload, self.wire_limits, src)
            if isinstance(msg, Ordered) and self.ordered is None:
                raise DecodeError("an ordered operation on a point-to-point cluster")
        except DecodeError as exc:
            self.guard.reject(src, exc)
            return
        self._handle(src, msg)

    def _handle(self, src: int, msg: Message) -> None:
        """Run a message's handler: a local failure must not take the node down with it."""
        try:
            self._dispatch(src, msg)
        except Exception:
            log.exception("handling %s from node %d failed", type(msg).__name__, src)
            self._local_failure()

    def _local_failure(self) -> None:
        """A write failed half-way (I/O error, disk full): our copies are suspect.

        Over tcp the node freezes and asks for a recovery, which takes its
        copies whole (not only what changed) and pushes the merged result
        back; if the disk keeps failing, recovery bans the node (see
        `_recovery_daemon`). On vs the node leaves the group and rejoins
        through a state transfer.
        """
        if self.ordered is not None:
            self.ordered.resync("a local write failed")
            return
        for db in self.dbs.values():
            if not db.replicated:
                db.base = None
        self._freeze(INVALID_GENERATION)
        self._recovery_wanted.set()

    def _dispatch(self, src: int, msg: Message) -> None:
        if isinstance(msg, Call | DmasterRequest | DmasterReply) and self._early(msg.generation):
            # A peer that thawed before us already works in the generation
            # we are about to enter: a record it handed over must not be
            # dropped (its copy already names us dmaster).
            if len(self._deferred) < MAX_DEFERRED:
                self._deferred.append((src, msg))
            return
        if isinstance(msg, Call):
            self.migration.on_call(msg)
        elif isinstance(msg, DmasterRequest):
            self.migration.on_dmaster_request(msg)
        elif isinstance(msg, DmasterReply):
            self.migration.on_dmaster_reply(msg)
        elif isinstance(msg, Control):
            asyncio.get_running_loop().create_task(self._answer_control(src, msg))
        elif isinstance(msg, ControlReply):
            self.controls.on_reply(src, msg)
        elif isinstance(msg, ClientMessage):
            self.deliver_message(msg.srvid, msg.src, msg.data)
        elif isinstance(msg, NodeState):
            self._on_state(msg)
        elif isinstance(msg, Ordered):
            assert self.ordered is not None  # checked at decode
            self.ordered.on_ordered(msg)

    def _on_state(self, msg: NodeState) -> None:
        now = asyncio.get_running_loop().time()
        self.peers[msg.pnn] = msg
        same_generation = (
            msg.generation == self.generation
            and not msg.recovery_mode
            and self.recovery_mode is RecoveryMode.NORMAL
        )
        if self.lease.on_state(msg.pnn, msg.stamp, msg.seen.get(self.pnn), same_generation, now):
            self.transport.send(msg.pnn, self._state_payload())

    async def _answer_control(self, src: int, msg: Control) -> None:
        try:
            result = await self._run_control(src, msg.op, msg.args)
            reply = ControlReply(msg.reqid, 0, result)
        except CtdbError as exc:
            reply = ControlReply(msg.reqid, int(exc.code), exc.message)
        except Exception as exc:
            log.exception("control %s from node %d failed", msg.op, src)
            reply = ControlReply(msg.reqid, int(ErrorCode.IO), f"{type(exc).__name__}: {exc}")
        if msg.op in BULK_REPLIES:
            await self.transport.drain()  # back-pressure: see transport.base.Transport.drain
        if src in self.transport.view or src == self.pnn:
            self.send(src, reply)

    def _start_control(self, src: int, op: str, args: dict[str, Any]) -> Any:
        """Run a control's handler: its result, or an awaitable of it."""
        handler = self._handlers.get(op)
        if handler is None:
            raise CtdbError(ErrorCode.NOT_SUPPORTED, f"unknown control {op!r}")
        return handler(src, args)

    async def _run_control(self, src: int, op: str, args: dict[str, Any]) -> Any:
        result = self._start_control(src, op, args)
        if isinstance(result, Awaitable):
            result = await result
        return result

    def _on_view(self, view: View) -> None:
        log.info("view %d: nodes %s", view.view_id, list(view.members))
        for pnn in list(self.peers):
            if pnn not in view:
                del self.peers[pnn]
                self.lease.forget(pnn)
        for pnn in range(len(self.nodes)):
            if pnn not in view:
                self.controls.fail_node(pnn)
        if self.ordered is not None:
            self._frozen_at = time.monotonic()  # a recovery begins at every view change
            self.ordered.on_view(view)
            return
        lost = [p for p in self.vnnmap if p not in view]
        if lost or (self.leader >= 0 and self.leader not in view):
            log.warning("nodes %s left the view: freezing until recovery", lost or [self.leader])
            self._freeze(INVALID_GENERATION)
        self._announce()
        self._recovery_wanted.set()

    # -- cluster state ----------------------------------------------------------------

    def node_flags(self, pnn: int) -> int:
        if pnn == self.pnn:
            return self.flags
        if pnn not in self.transport.view:
            return NodeFlags.DISCONNECTED
        if self.ordered is not None:
            return self.ordered.flags.get(pnn, 0)  # agreed through the ordered stream
        state = self.peers.get(pnn)
        return state.flags if state else 0

    def active_members(self) -> list[int]:
        return [p for p in self.transport.view.members if not self.node_flags(p) & INACTIVE]

    def have_quorum(self) -> bool:
        if self.cluster_lock is not None:
            return self._hold_lock_file()
        return 2 * len(self.transport.view.members) > len(self.nodes)

    def _hold_lock_file(self) -> bool:
        """The cluster lock on shared storage: an fcntl lock held while we live."""
        if self._lock_fd is not None:
            return True
        assert self.cluster_lock is not None
        fd = os.open(self.cluster_lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        log.info("took the cluster lock %s", self.cluster_lock)
        return True

    def _release_lock_file(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
            log.info("released the cluster lock %s", self.cluster_lock)

    def status(self) -> dict[str, Any]:
        return {
            "pnn": self.pnn,
            "nodes": [
                {
                    "pnn": p,
                    "address": addr,
                    "flags": int(self.node_flags(p)),
                    "state": NodeFlags.describe(self.node_flags(p)),
                    "this_node": p == self.pnn,
                }
                for p, addr in enumerate(self.nodes)
            ],
            "generation": self.generation,
            "recovery_mode": self.recovery_mode.name,
            "leader": self.leader,
            "vnnmap": list(self.vnnmap),
            "transport": self.transport.name,
            # With a lock file only the leader can tell; asking must not take it.
            "quorum": self.have_quorum() if self.cluster_lock is None else self.serving,
        }

    def _state_payload(self) -> bytes:
        stamp = asyncio.get_running_loop().time()
        return encode(
            NodeState(
                self.pnn,
                self.flags,
                self.generation,
                int(self.recovery_mode),
                self.leader,
                stamp,
                dict(self.lease.seen),
            )
        )

    def _announce(self) -> None:
        payload = self._state_payload()
        for pnn in self.transport.view.members:
            if pnn != self.pnn:
                self.transport.send(pnn, payload)

    async def _state_announcer(self) -> None:
        """Peers learn our state on change and twice every KeepaliveInterval.

        Twice: our lease (ctdb.server.lease) runs from our stamp as a peer
        echoes it in its next announcement, so the confirmation lags by up
        to two announcement periods plus two transit times. Announcing once
        an interval, that lag reached the whole lease at KeepaliveLimit 3
        (two intervals), and the node stopped serving for moments at random
        (simulator seeds tcp 4998, 5026, 5594).

        Failure detection is the transport's: tcp counts silent links, vs
        expels a member that stops reading (corosync keeps such a process in
        the group for ever; see transport/cpg.py).
        """
        while True:
            await asyncio.sleep(self.tunable("KeepaliveInterval") / 2)
            self._announce()

    async def _vacuum_loop(self) -> None:
        """Deletion markers are removed once no node can undo their delete."""
        while True:
            await asyncio.sleep(self.tunable("VacuumInterval"))
            try:
                if self.ordered is not None:
                    self.ordered.vacuum()
                else:
                    await self.migration.vacuum.run()
            except CtdbError as exc:
                log.info("vacuum deferred: %s", exc)
            except Exception:  # a failed delete leaves the marker: the next round retries
                log.exception("vacuum round failed")

    def rejoin(self) -> None:
        """vs: our replica cannot follow the stream: leave the group, rejoin, resync.

        One rejoin at a time: overlapping leaves and joins of one group
        member would interleave. A resync asked for while one runs leaves
        and joins once more, so the others see it in a view change.
        """
        self._rejoin_again = True
        if self._rejoining is None or self._rejoining.done():
            self._rejoining = asyncio.get_running_loop().create_task(self._rejoin())

    async def _rejoin(self) -> None:
        while self._rejoin_again:
            self._rejoin_again = False
            await self.transport.stop()
            await self.transport.start()

    def set_flags(self, set_bits: int = 0, clear_bits: int = 0) -> None:
        old = self.flags
        self.flags = (self.flags | set_bits) & ~clear_bits
        if self.flags != old:
            log.info("node flags now %s", NodeFlags.describe(self.flags))
            if self.ordered is not None:
                self.ordered.announce_flags(self.flags)
            elif self.flags & INACTIVE and not old & INACTIVE:
                self._freeze(INVALID_GENERATION)
            self._announce()
            self._recovery_wanted.set()

    # -- recovery: the leader's loop ---------------------------------------------------

    def _leader_candidate(self) -> bool:
        active = self.active_members()
        return bool(active) and active[0] == self.pnn

    def _needs_recovery(self) -> bool:
        if self.recovery_mode is RecoveryMode.RECOVERY:
            return True
        if self.active_members() != self.vnnmap or self.leader != self.pnn:
            return True
        for p in self.vnnmap:
            state = self.peers.get(p)
            if (
                p != self.pnn
                and state is not None
                and (state.generation != self.generation or state.recovery_mode)
            ):
                return True  # a node froze itself (lost a peer, `ctdbtool recover`)
        return False

    async def _recovery_daemon(self) -> None:
        #: node -> (recoveries its storage made fail in a row, loop time of the first)
        culprits: dict[int, tuple[int, float]] = {}
        while True:
            try:
                await asyncio.wait_for(self._recovery_wanted.wait(), 0.25)
            except TimeoutError:
                pass
            self._recovery_wanted.clear()
            if not self._leader_candidate() or self.flags & INACTIVE:
                # Step down for the node that should lead now (a lower pnn
                # appeared, or we were stopped): stop serving our generation,
                # so our followers may follow the next leader, and hand it the
                # lock file. It recovers next.
                if self.leader == self.pnn and self.recovery_mode is RecoveryMode.NORMAL:
                    log.info("stepping down as leader")
                    self._freeze(INVALID_GENERATION)
                self._release_lock_file()
                continue
            if not self._needs_recovery():
                continue
            if not self.have_quorum():
                if self.recovery_mode is RecoveryMode.NORMAL:
                    log.warning("lost quorum: freezing")
                    self._freeze(INVALID_GENERATION)
                continue
            try:
                await recovery.recover(self, self.active_members(), self.rng)
                self.stats["recoveries"] += 1
                culprits.clear()
            except recovery.NodeFailed as exc:
                log.warning("recovery failed: %s; retrying", exc)
                if exc.code == ErrorCode.IO:
                    now = asyncio.get_running_loop().time()
                    count, since = culprits.get(exc.pnn, (0, now))
                    culprits[exc.pnn] = (count + 1, since)
                    if count + 1 >= BAN_AFTER_FAILURES and now - since >= self.tunable(
                        "RecoverTimeout"
                    ):
                        # As CTDB does: a node whose storage keeps failing
                        # recoveries (not a passing error) is banned, and the
                        # others recover without it.
                        await self._ban_culprit(exc.pnn)
                        culprits.clear()
                await asyncio.sleep(0.1)
                self._recovery_wanted.set()
            except (TimeoutError, CtdbError) as exc:
                log.warning("recovery failed: %s; retrying", exc)
                await asyncio.sleep(0.1)
                self._recovery_wanted.set()

    async def _ban_culprit(self, pnn: int) -> None:
        seconds = self.tunable("RecoveryBanPeriod")
        log.error(
            "node %d failed %d recoveries in a row: banning it for %gs",
            pnn,
            BAN_AFTER_FAILURES,
            seconds,
        )
        try:
            await self.control(pnn, "ban", {"seconds": seconds})
        except CtdbError as exc:
            log.warning("could not ban node %d: %s", pnn, exc)

    # -- recovery: what every node does when told -------------------------------------

    def _early(self, generation: int) -> bool:
        """A migration message of the generation this node is about to thaw into."""
        return (
            self.recovery_mode is RecoveryMode.RECOVERY
            and generation == self._frozen_generation
            and generation != self.generation
        )

    def _freeze(self, generation: int) -> None:
        if generation != self._frozen_generation:
            self._deferred.clear()  # held for a generation that will not start
        self._frozen_generation = generation
        if self.recovery_mode is not RecoveryMode.RECOVERY:
            self._frozen_at = time.monotonic()
            self.recovery_mode = RecoveryMode.RECOVERY
            self._serving.clear()
            self.transactions.cancel_all()
            self.migration.freeze()
            self._announce()

    def _check_vote(self, leader: int) -> None:
        """Follow one leader at a time, so that two leaders never serve at once.

        Views are each node's own: with the link 0-1 cut and both linked to
        2, node 0 sees {0, 2} and node 1 sees {1, 2}, both majorities. Node
        2 lets only the lowest active node it sees recover it, and not while
        the leader of its current generation is still connected and has not
        stepped down (a leader steps down, frozen, as soon as it sees a lower
        node). So at most one of 0 and 1 can gather a majority.
        """
        if leader == self.pnn:
            return
        active = self.active_members()
        if not active or active[0] != leader:
            raise CtdbError(
                ErrorCode.RETRY,
                f"node {self.pnn} follows node {active[0] if active else '-'}, not node {leader}",
            )
        current = self.peers.get(self.leader)
        if (
            self.leader not in (-1, leader)
            and current is not None
            and current.leader == self.leader
            and not current.recovery_mode
            and not current.flags & INACTIVE
        ):
            raise CtdbError(
                ErrorCode.RETRY,
                f"node {self.pnn} still follows node {self.leader}, which has not stepped down",
            )

    async def _bulk(self, work: Callable[[], T]) -> T:
        """Recovery's whole-database work, off the event loop and one at a time.

        A recovery attempt that timed out cannot stop its thread; the next
        attempt's pull or push waits for it instead of sharing the handle.
        """

        def locked() -> T:
            with self._bulk_lock:
                return work()

        result: T = await self.offload(locked)
        return result

    def _check_generation(self, args: dict[str, Any]) -> None:
        if args.get("generation") != self._frozen_generation:
            raise CtdbError(ErrorCode.RETRY, "recovery step from a superseded generation")

    async def ctl_freeze(self, src: int, args: dict[str, Any]) -> dict[str, Any]:
        self._check_vote(src)
        self._freeze(int(args["generation"]))
        dbs = list(self.dbs.values())
        # After any earlier attempt's push: its sequence numbers are the real ones.
        info = await self._bulk(lambda: {db.name: self._recovery_info(db) for db in dbs})
        return {
            "epoch": self.epoch,
            "generation": self.generation,
            "view": list(self.transport.view.members),
            "dbs": info,
        }

    @staticmethod
    def _recovery_info(db: Database) -> dict[str, Any]:
        """What the recovery plans (ctdb.engines.merge) need to know about our copy."""
        if db.replicated:
            return {
                "kind": db.kind.value,
                "seqnum": db.seqnum(),
                "history": db.history(),
                "base": None,
            }
        tracked = db.base is not None and db.local.changed is not None
        base = db.base if tracked else None
        return {"kind": db.kind.value, "seqnum": 0, "history": b"", "base": base}

    async def ctl_pull(self, src: int, args: dict[str, Any]) -> list[Any]:
        """Our copy of a database: all of it, or the records of `keys` we hold."""
        self._check_generation(args)
        db = self.db(int(args["db_id"]))
        if args.get("keys") is None:
            return await self._bulk(lambda: to_wire(db.local.items()))
        keys = [bytes(k) for k in args["keys"]]
        return await self._bulk(lambda: to_wire(db.local.items_of(keys)))

    def ctl_changed(self, src: int, args: dict[str, Any]) -> list[bytes]:
        """The keys we wrote or removed since our base copy (see merge.VolatilePlan)."""
        self._check_generation(args)
        changed = self.db(int(args["db_id"])).local.changed
        if changed is None:  # not tracking: recovery must not take that for "nothing"
            raise CtdbError(ErrorCode.RETRY, "this node does not track its changes")
        return sorted(changed)

    async def ctl_push(self, src: int, args: dict[str, Any]) -> None:
        """Install records recovery merged (all of them, or the ones that changed)."""
        self._check_generation(args)
        db = self.db(int(args["db_id"]))
        wire, replace_all = args["records"], bool(args["replace_all"])

        def install() -> dict[bytes, Record]:
            records = from_wire(wire)  # decoding 100k records takes a while: not on the loop
            db.local.write_batch(records, replace_all=replace_all)
            return records

        records = await self._bulk(install)
        if not db.replicated:
            # Our copy is now the one this recovery distributes: track from here.
            db.base = (int(args["base"][0]), int(args["base"][1]))
            db.local.track_changes()
            self.migration.vacuum.note_all(db, records)

    def ctl_vacuum(self, src: int, args: dict[str, Any]) -> int:
        """The key's lmaster removes deletion markers: drop our copies first (engines.vacuum)."""
        if not self.in_generation(int(args["generation"])):
            raise CtdbError(ErrorCode.RETRY, "vacuum from another generation")
        return Vacuum.drop_copies(self.db(int(args["db_id"])), args["records"])

    def ctl_set_vnnmap(self, src: int, args: dict[str, Any]) -> None:
        self._check_generation(args)
        vnnmap = [int(p) for p in args["vnnmap"]]
        # A member we lost since the freeze left no trace here: it was not in
        # our old vnnmap, so its departure froze nothing. Migration messages
        # to it would vanish without a view change (tcp 51058: a record sent
        # across a cut had no dmaster afterwards), so this generation must not start.
        unseen = [p for p in vnnmap if p not in self.transport.view]
        if unseen:
            raise CtdbError(ErrorCode.RETRY, f"node {self.pnn} no longer sees nodes {unseen}")
        self.vnnmap = vnnmap
        self.leader = int(args["leader"])
        self._configure_lease()
        # Written after the pushes: it certifies that our copies hold every
        # commit acknowledged up to this recovery.
        self.set_epoch(int(args["epoch"]))

    async def ctl_thaw(self, src: int, args: dict[str, Any]) -> None:
        self._check_generation(args)
        # A pull or push of an abandoned recovery attempt may still be running
        # in its thread: serve nothing until it is done.
        await self._bulk(lambda: None)
        self._check_generation(args)
        if self.flags & INACTIVE:
            raise CtdbError(ErrorCode.RETRY, f"node {self.pnn} became inactive")
        self.generation = self._frozen_generation
        self.recovery_mode = RecoveryMode.NORMAL
        self.lease.new_generation()
        self._serving.set()
        self.last_recovery = {
            "duration": time.monotonic() - self._frozen_at,
            "finished": time.time(),
        }
        self.migration.reset()
        self._announce()
        deferred, self._deferred = self._deferred, []
        for src, msg in deferred:
            self._handle(src, msg)

    # -- controls any node or tool may send --------------------------------------------

    def ctl_ping(self, src: int, args: dict[str, Any]) -> int:
        return self.pnn

    def ctl_pnn(self, src: int, args: dict[str, Any]) -> int:
        return self.pnn

    def ctl_uptime(self, src: int, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "started": self.started,
            "uptime": time.time() - self.started,
            "last_recovery": self.last_recovery,
        }

    def ctl_status(self, src: int, args: dict[str, Any]) -> dict[str, Any]:
        return self.status()

    def ctl_getdbmap(self, src: int, args: dict[str, Any]) -> list[dict[str, Any]]:
        return [db.info() for db in sorted(self.dbs.values(), key=lambda d: d.name)]

    def ctl_attach(self, src: int, args: dict[str, Any]) -> int:
        return self.attach(str(args["name"]), DbKind.parse(str(args["kind"]))).id

    def ctl_getdbseqnum(self, src: int, args: dict[str, Any]) -> int:
        return self.db(int(args["db_id"])).seqnum()

    def ctl_statistics(self, src: int, args: dict[str, Any]) -> dict[str, Any]:
        return dict(self.stats)

    def ctl_listvars(self, src: int, args: dict[str, Any]) -> dict[str, float]:
        return dict(self.tunables)

    def ctl_getvar(self, src: int, args: dict[str, Any]) -> float:
        name = str(args.get("name"))
        if name not in self.tunables:
            raise CtdbError(ErrorCode.NOT_FOUND, f"unknown tunable {name!r}")
        return self.tunables[name]

    def ctl_setvar(self, src: int, args: dict[str, Any]) -> None:
        name = str(args.get("name"))
        self.tunables[name] = parse_tunable(name, args.get("value"))
        if name in ("KeepaliveInterval", "KeepaliveLimit"):
            self.transport.set_keepalive(
                self.tunable("KeepaliveInterval"), int(self.tunable("KeepaliveLimit"))
            )
            self._configure_lease()

    def ctl_tx_commit(self, src: int, args: dict[str, Any]) -> Awaitable[int]:
        db = self.db(int(args["db_id"]))
        return self.transactions.coordinate(db, args["reads"], args["writes"])

    def ctl_tx_prepare(self, src: int, args: dict[str, Any]) -> None:
        db = self.db(int(args["db_id"]))
        self.transactions.prepare(
            db, args["records"], int(args["commit_id"]), int(args["generation"])
        )

    def ctl_tx_finish(self, src: int, args: dict[str, Any]) -> None:
        db = self.db(int(args["db_id"]))
        self.transactions.finish(db, int(args["commit_id"]), bool(args["commit"]))

    def ctl_traverse(self, src: int, args: dict[str, Any]) -> list[list[bytes]]:
        """The records this node is authoritative for (all of them if replicated)."""
        db = self.db(int(args["db_id"]))
        return [
            [key, rec.value]
            for key, rec in db.live_items()
            if db.replicated or rec.dmaster == self.pnn
        ]

    def ctl_wipe(self, src: int, args: dict[str, Any]) -> None:
        """Volatile databases only: persistent ones are wiped by a transaction."""
        db = self.db(int(args["db_id"]))
        if db.replicated:
            raise CtdbError(ErrorCode.INVALID, f"{db.name} is {db.kind.value}: wipe by transaction")
        if not self.serving or args["generation"] != self.generation:
            # A recovery started since: it may push back what we would wipe.
            raise CtdbError(ErrorCode.RETRY, "recovery in progress: retry the wipe")
        db.local.clear()

    async def ctl_recover(self, src: int, args: dict[str, Any]) -> None:
        """Force a recovery and return once it has finished, as `ctdb recover` does.

        Over tcp this node freezes, the leader's loop notices and recovers;
        we wait for the new generation. On a virtually synchronous cluster
        replicas cannot diverge, so a forced recovery is an ordered marker
        that starts a new generation when it is delivered.
        """
        if self.flags & INACTIVE:
            state = NodeFlags.describe(self.flags & INACTIVE)
            raise CtdbError(
                ErrorCode.RETRY,
                f"node {self.pnn} is {state} and takes no part in recoveries: "
                "run recover on an active node",
            )
        timeout = self.tunable("RecoverTimeout")
        try:
            await asyncio.wait_for(self._recover(), timeout)
        except TimeoutError:
            raise CtdbError(
                ErrorCode.TIMEOUT,
                f"the recovery did not finish within RecoverTimeout ({timeout:g}s)",
            ) from None

    async def _recover(self) -> None:
        if self.ordered is not None:
            await self.ordered.recover()
            return
        before = self.generation
        self._freeze(INVALID_GENERATION)
        self._recovery_wanted.set()
        while self.recovery_mode is RecoveryMode.RECOVERY or self.generation == before:
            await self._serving.wait()

    def ctl_setflags(self, src: int, args: dict[str, Any]) -> int:
        self.set_flags(int(args.get("set", 0)), int(args.get("clear", 0)))
        return self.flags

    def ctl_ban(self, src: int, args: dict[str, Any]) -> None:
        seconds = float(args.get("seconds", 0))
        if self._ban_timer is not None:
            self._ban_timer.cancel()
            self._ban_timer = None
        if seconds <= 0:
            self.set_flags(clear_bits=NodeFlags.BANNED)
            return
        self.set_flags(set_bits=NodeFlags.BANNED)
        self._ban_timer = asyncio.get_running_loop().call_later(
            seconds, self.set_flags, 0, NodeFlags.BANNED
        )

    def ctl_reloadnodes(self, src: int, args: dict[str, Any]) -> list[str]:
        """Re-read the nodes file: new nodes may be appended; existing ones must stay."""
        if self.nodes_file is None:
            raise CtdbError(ErrorCode.NOT_SUPPORTED, "this node was started without a nodes file")
        nodes = read_nodes(self.nodes_file)
        if nodes[: len(self.nodes)] != self.nodes:
            raise CtdbError(
                ErrorCode.INVALID,
                f"{self.nodes_file} changes or removes existing nodes; only appending is "
                "supported (pnns must stay stable)",
            )
        added = nodes[len(self.nodes) :]
        if added:
            log.info("reloadnodes: adding %s", added)
            self.nodes[:] = nodes
            self._configure_lease()
            self.transport.update_nodes(nodes)
            self._recovery_wanted.set()
        return added

    def ctl_shutdown(self, src: int, args: dict[str, Any]) -> None:
        log.info("shutdown requested by node %d", src)
        self.shutdown_requested.set()

    # -- messaging between clients -------------------------------------------------------

    def deliver_message(self, srvid: int, src: int, data: bytes) -> None:
        for callback in list(self.srvids.get(srvid, ())):
            callback(srvid, src, data)
        self.stats["messages_delivered"] += 1

    def send_message(self, target: int | None, srvid: int, data: bytes) -> None:
        """To one node's clients, or with `target` None to every connected node's."""
        if target is not None and not 0 <= target < len(self.nodes):
            raise CtdbError(ErrorCode.NOT_FOUND, f"no node with pnn {target}")
        msg = ClientMessage(srvid, data, self.pnn)
        targets = self.transport.view.members if target is None else (target,)
        for pnn in targets:
            if pnn != self.pnn and pnn not in self.transport.view:
                raise CtdbError(ErrorCode.DISCONNECTED, f"node {pnn} is not connected")
            self.send(pnn, msg)
