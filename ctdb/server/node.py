"""One cluster node: its state, its databases and the dispatch of its events.

The node sees the network only through its `Transport` and is driven by
three kinds of events: client requests (from `ctdb.server.clients`), messages
from other nodes, and view changes. It owns the cluster-wide state CTDB users
know from `ctdb status`: node flags, generation, recovery mode, leader and
vnnmap. How that state changes depends on the transport, and that part is a
`Membership` (`ctdb.server.membership`): a leader's recoveries on tcp, the
ordered stream on vs. Controls are answered by `ctdb.server.admin` and by
the membership.

Serving rule: requests are answered only in recovery mode NORMAL, which a
node reaches only through a recovery (tcp: run by a leader that holds the
cluster lock, a majority of configured nodes or a lock file; vs: a quorate
view in sync), and, on tcp, while its lease holds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack

from ctdb.common.config import tunable_defaults
from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.base import RecordEngine
from ctdb.engines.transactions import TransactionEngine
from ctdb.protocol.client import ENTRY_HEAD_SRVID
from ctdb.protocol.message_codec import DecodeError, decode, encode, wire_limits
from ctdb.protocol.messages import ClientMessage, Control, ControlReply, Message, NodeState
from ctdb.server.admin import NodeControls
from ctdb.server.controls import ControlChannel
from ctdb.server.leader import LeaderRecovery
from ctdb.server.lease import Lease
from ctdb.server.lockfile import ClusterLockFile
from ctdb.server.membership import Membership
from ctdb.server.owners import Owners
from ctdb.server.peerguard import PeerGuard
from ctdb.server.state import (
    INACTIVE,
    INVALID_GENERATION,
    NodeFlags,
    RecoveryMode,
    control_handlers,
)
from ctdb.server.stream import StreamMembership
from ctdb.storage.database import Database, DbKind
from ctdb.storage.durable import Epochs
from ctdb.storage.placement import db_id
from transport.base import Transport, View

log = logging.getLogger("ctdb.server.node")

#: Controls whose reply can be a whole database: sent once the links have room.
BULK_REPLIES = frozenset({"pull", "traverse"})


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
        self.lock_file = None if cluster_lock is None else ClusterLockFile(cluster_lock)
        self.nodes_file = nodes_file
        self.tunables = tunable_defaults()
        self.tunables.update(tunables or {})
        self.rng = random.Random(seed)
        self.started = time.time()

        self.generation = INVALID_GENERATION
        self.recovery_mode = RecoveryMode.RECOVERY
        #: set while recovery_mode is NORMAL
        self.serving_event = asyncio.Event()
        self.vnnmap: list[int] = []
        self.leader = -1
        self.frozen_at = time.monotonic()
        self.last_recovery: dict[str, float] = {}
        self.flags = 0  # this node's own administrative flags
        self.peers: dict[int, NodeState] = {}
        self.lease = Lease(pnn, len(nodes))
        self._lease_duration = 0.0
        #: the event loop's clock, which lease stamps are read on; bound to
        #: the running loop at `start` (asyncio.get_running_loop costs a
        #: getpid system call, and every local fetch checks the lease)
        self.now: Callable[[], float] = lambda: asyncio.get_running_loop().time()
        state_dir.mkdir(parents=True, exist_ok=True)
        #: recovery epochs and this run's number (durable: see ctdb.storage.durable)
        self.epochs = Epochs(state_dir)

        self.dbs: dict[int, Database] = {}
        self.stats: Counter[str] = Counter()
        #: Runs bulk work (recovery's pulls, merges and pushes of whole
        #: databases) off the event loop. The simulation runs it inline to
        #: stay deterministic.
        self.offload: Callable[[Callable[[], Any]], Awaitable[Any]] = asyncio.to_thread
        self.transactions = TransactionEngine(self)
        self.membership: Membership = (
            StreamMembership(self)
            if transport.capabilities.virtual_synchrony
            else LeaderRecovery(self)
        )
        self.records: RecordEngine = self.membership.engine
        #: what node messages are checked against (see ctdb.protocol.message_codec)
        self.wire_limits = wire_limits(self.nodes)
        self.guard = PeerGuard(pnn, transport, self.stats)
        self.controls = ControlChannel(pnn, self.send, self.wire_limits)
        self.admin = NodeControls(self)
        self.controls.handlers = control_handlers(self.admin) | self.membership.controls()
        self._tasks: list[asyncio.Task[None]] = []
        self.shutdown_requested = asyncio.Event()
        #: srvid -> callbacks of local clients registered for it
        self.srvids: dict[int, list[Callable[[int, int, bytes], None]]] = {}
        #: entry owners: client ids, head notices, the removal of departed clients' entries
        self.owners = Owners(self)
        transport.on_message = self._on_transport_message
        transport.on_view = self._on_view
        self.configure_lease()
        self._reopen_persistent()

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        self.now = asyncio.get_running_loop().time
        await self.transport.start()
        self.transport.set_keepalive(
            self.tunable("KeepaliveInterval"), int(self.tunable("KeepaliveLimit"))
        )
        loops = [*self.membership.background(), self._state_announcer(), self._vacuum_loop()]
        self._tasks.extend(asyncio.create_task(loop) for loop in loops)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        await self.owners.stop()
        await self.membership.stop()
        await self.transport.stop()
        for db in self.dbs.values():
            db.local.close()
        if self.lock_file is not None:
            self.lock_file.release()

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
            and self.membership.confirmed()
        )

    def in_generation(self, generation: int) -> bool:
        """Messages between nodes count only within the generation that sent them.

        Not `serving`: a record handed over while our lease is being renewed
        must still arrive, or the hand-over is lost with nobody holding it.
        """
        return generation == self.generation and self.recovery_mode is RecoveryMode.NORMAL

    def lease_holds(self) -> bool:
        """tcp: the other members confirmed lately that we still serve their generation."""
        return self.lease.holds(self.now(), self._lease_duration)

    def configure_lease(self) -> None:
        interval, limit = self.tunable("KeepaliveInterval"), self.tunable("KeepaliveLimit")
        self._lease_duration = interval * (limit - 1)  # under the detection time: ctdb.server.lease
        leader = None if self.lock_file is None else self.leader
        self.lease.configure(len(self.nodes), leader)

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
            if self.serving_event.is_set():
                # NORMAL mode but inactive by our own flags (stopped, banned).
                await asyncio.sleep(min(0.05, remaining))
                continue
            try:
                await asyncio.wait_for(self.serving_event.wait(), remaining)
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
            asyncio.get_running_loop().call_soon(self.handle, self.pnn, msg)
            return
        self.transport.send(pnn, encode(msg))

    async def control(
        self, pnn: int, op: str, args: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        """Run a control on `pnn` (directly when it is this node)."""
        if timeout is None:
            timeout = self.tunable("CallTimeout")
        if pnn == self.pnn:
            return await self.controls.run_here(op, args or {}, timeout)
        if pnn not in self.transport.view:
            raise CtdbError(ErrorCode.DISCONNECTED, f"node {pnn} is not connected")
        return await self.controls.call(pnn, op, args, timeout)

    def request_recovery(self) -> None:
        self.membership.request_recovery()

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
            self.membership.check(msg)
        except DecodeError as exc:
            self.guard.reject(src, exc)
            return
        self.handle(src, msg)

    def handle(self, src: int, msg: Message) -> None:
        """Run a message's handler: a local failure must not take the node down with it."""
        try:
            self._dispatch(src, msg)
        except Exception:
            log.exception("handling %s from node %d failed", type(msg).__name__, src)
            # A write failed half-way (I/O error, disk full): our copies are suspect.
            self.membership.local_failure()

    def _dispatch(self, src: int, msg: Message) -> None:
        if isinstance(msg, Control):
            asyncio.get_running_loop().create_task(self._answer_control(src, msg))
        elif isinstance(msg, ControlReply):
            self.controls.on_reply(src, msg)
        elif isinstance(msg, ClientMessage):
            self.deliver_message(msg.srvid, msg.src, msg.data)
        elif isinstance(msg, NodeState):
            self._on_state(msg)
        else:
            self.membership.on_message(src, msg)

    def _on_state(self, msg: NodeState) -> None:
        now = self.now()
        self.peers[msg.pnn] = msg
        same_generation = (
            msg.generation == self.generation
            and not msg.recovery_mode
            and self.recovery_mode is RecoveryMode.NORMAL
        )
        if self.lease.on_state(msg.pnn, msg.stamp, msg.seen.get(self.pnn), same_generation, now):
            self.transport.send(msg.pnn, self._state_payload())

    async def _answer_control(self, src: int, msg: Control) -> None:
        reply = await self.controls.reply_to(src, msg)
        if msg.op in BULK_REPLIES:
            await self.transport.drain()  # back-pressure: see transport.base.Transport.drain
        if src in self.transport.view or src == self.pnn:
            self.send(src, reply)

    def _on_view(self, view: View) -> None:
        log.info("view %d: nodes %s", view.view_id, list(view.members))
        for pnn in list(self.peers):
            if pnn not in view:
                del self.peers[pnn]
                self.lease.forget(pnn)
        for pnn in range(len(self.nodes)):
            if pnn not in view:
                self.controls.fail_node(pnn)
        self.membership.on_view(view)

    # -- cluster state ----------------------------------------------------------------

    def node_flags(self, pnn: int) -> int:
        if pnn == self.pnn:
            return self.flags
        if pnn not in self.transport.view:
            return NodeFlags.DISCONNECTED
        return self.membership.peer_flags(pnn)

    def active_members(self) -> list[int]:
        return [p for p in self.transport.view.members if not self.node_flags(p) & INACTIVE]

    def have_quorum(self) -> bool:
        if self.lock_file is not None:
            return self.lock_file.hold()
        return 2 * len(self.transport.view.members) > len(self.nodes)

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

    def announce(self) -> None:
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
            self.announce()

    async def _vacuum_loop(self) -> None:
        """Deletion markers are removed once no node can undo their delete."""
        while True:
            await asyncio.sleep(self.tunable("VacuumInterval"))
            try:
                await self.membership.vacuum()
            except CtdbError as exc:
                log.info("vacuum deferred: %s", exc)
            except Exception:  # a failed delete leaves the marker: the next round retries
                log.exception("vacuum round failed")

    def set_flags(self, set_bits: int = 0, clear_bits: int = 0) -> None:
        old = self.flags
        self.flags = (self.flags | set_bits) & ~clear_bits
        if self.flags != old:
            log.info("node flags now %s", NodeFlags.describe(self.flags))
            self.membership.flags_changed(old, self.flags)
            self.announce()
            self.membership.request_recovery()

    # -- messaging between clients -------------------------------------------------------

    def deliver_message(self, srvid: int, src: int, data: bytes) -> None:
        for callback in list(self.srvids.get(srvid, ())):
            callback(srvid, src, data)
        self.stats["messages_delivered"] += 1

    def entry_head(self, owner: tuple[int, int], db_id: int, key: bytes) -> None:
        """`owner` now holds the first entry of a list: tell it, on its node."""
        pnn, client = owner
        data = msgpack.packb([client, db_id, key])
        if pnn == self.pnn:
            self.deliver_message(ENTRY_HEAD_SRVID, self.pnn, data)
        elif pnn in self.transport.view:
            self.send(pnn, ClientMessage(ENTRY_HEAD_SRVID, data, self.pnn))

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
