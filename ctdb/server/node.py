"""One cluster node: its state, its databases and the dispatch of its events.

The node sees the network only through its `Transport` and is driven by
three kinds of events: client requests (from `ctdb.server.clients`), messages
from other nodes, and view changes. It owns the cluster-wide state CTDB users
know from `ctdb status`: node flags, generation, recovery mode, leader and
vnnmap. How that state changes depends on the transport, and that part is a
`Membership` (`ctdb.server.membership`): a leader's recoveries on tcp, the
ordered stream on vs. Controls are answered by `ctdb.server.admin` and by
the membership. The rest is in parts the node holds: its databases
(`databases`), what other nodes send (`node_messages`), the state
announcements and the lease (`liveness`), messages between clients
(`messaging`), control calls to peers (`controls`) and the wait for the node
to serve (`serving`).

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
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from ctdb.common.config import tunable_defaults
from ctdb.engines.base import RecordEngine
from ctdb.engines.transactions import TransactionEngine
from ctdb.protocol.message_codec import encode, wire_limits
from ctdb.protocol.messages import ClientMessage, Control, ControlReply, Message, NodeState
from ctdb.server.admin import NodeControls
from ctdb.server.controls import ControlChannel
from ctdb.server.databases import Databases
from ctdb.server.leader import LeaderRecovery
from ctdb.server.liveness import Liveness
from ctdb.server.lockfile import ClusterLockFile
from ctdb.server.membership import Membership, vacuum_rounds
from ctdb.server.messaging import Messaging
from ctdb.server.node_messages import NodeMessages
from ctdb.server.owners import Owners
from ctdb.server.peerguard import PeerGuard
from ctdb.server.serving import wait_serving
from ctdb.server.serving_file import ServingFile
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
from transport.base import Transport, View

log = logging.getLogger("ctdb.server.node")


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
        #: the clock (which lease stamps are read on) and timers of the loop
        #: the node is made in (`engines.host.Clock`): the daemon's, or the
        #: simulator's virtual one. Bound once: asyncio.get_running_loop
        #: costs a getpid system call, and every local fetch checks the lease.
        loop = asyncio.get_running_loop()
        self.now, self.call_later, self.call_soon = loop.time, loop.call_later, loop.call_soon
        state_dir.mkdir(parents=True, exist_ok=True)
        #: recovery epochs and this run's number (durable: see ctdb.storage.durable)
        self.epochs = Epochs(state_dir)

        self.dbs = Databases(state_dir, pnn)
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
        self.controls = ControlChannel(
            pnn,
            self.send,
            self.wire_limits,
            connected=lambda p: p in transport.view,
            drain=transport.drain,
        )
        self.admin = NodeControls(self)
        self.controls.handlers = control_handlers(self.admin) | self.membership.controls()
        self._tasks: list[asyncio.Task[None]] = []
        self.shutdown_requested = asyncio.Event()
        #: why the node stopped by itself (`fail`: a bug in one of its loops,
        #: its view handling, its transport's tasks); None while it runs, and
        #: after a requested shutdown
        self.failure: str | None = None
        #: told `failure` when it is set: a supervisor's (the simulator counts
        #: it a violation; the daemon waits for `shutdown_requested` instead)
        self.on_failure: Callable[[str], None] = lambda failure: None
        self.messaging = Messaging(self)
        self.liveness = Liveness(self)
        #: what clients that use records in place read (`ctdb.protocol.serving_state`);
        #: the daemon opens it at start-up, the simulator has none
        self.serving_file: ServingFile | None = None
        self.liveness.lease_changed = self.publish_serving
        #: entry owners: client ids, head notices, the removal of departed clients' entries
        self.owners = Owners(self)
        #: what other nodes send: decoded, checked and routed (`node_messages`)
        self.messages = NodeMessages(
            self.wire_limits,
            PeerGuard(pnn, transport, self.stats),
            {
                Control: self.controls.answer,
                ControlReply: self.controls.on_reply,
                ClientMessage: lambda _src, m: self.messaging.deliver(m.srvid, m.src, m.data),
                NodeState: lambda _src, m: self.liveness.on_state(m),
                **self.membership.routes,
            },
            self.membership.refused,
            self.local_failure,
            pnn,
        )
        #: whether the transport orders our own messages too, before it
        #: delivers them back (`NodeMessages.expect_own`)
        self.ordered_own = transport.capabilities.total_order
        transport.on_message = self.messages.on_payload
        transport.on_view = self._on_view
        transport.on_failure = self.fail
        self.liveness.configure_lease()
        self.dbs.reopen_persistent()

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        await self.transport.start()
        self.transport.set_keepalive(
            self.tunable("KeepaliveInterval"), int(self.tunable("KeepaliveLimit"))
        )
        loops = [*self.membership.background(), self.liveness.run()]
        loops.append(vacuum_rounds(self.membership, lambda: self.tunable("VacuumInterval")))
        self._tasks += [self.supervised(loop) for loop in loops]

    def supervised(self, loop: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `loop`, one that runs for as long as the node does; if it ends
        by itself, the node stops (`fail`). Its owner cancels it to stop it."""
        task = asyncio.create_task(loop, name=getattr(loop, "__qualname__", None))
        task.add_done_callback(self._loop_ended)
        return task

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        """One of the node's loops (the leader's recoveries, the state
        announcements, vacuuming, the CTDB door's announcements) ended by
        itself: a bug, since each runs for as long as the node does (see `fail`)."""
        if task.cancelled():
            return
        exc = task.exception()
        self.fail(f"{task.get_name()} {'ended' if exc is not None else 'returned'}", exc)

    def fail(self, what: str, exc: BaseException | None) -> None:
        """A part of the node failed in a way only a bug explains: stop it.

        Carrying on would leave, say, a leader whose recovery loop is gone
        and a cluster that waits for it for ever, or a tcp link whose view
        callback broke and that is never connected again: the daemon stops
        instead, with the traceback, and its peers go on without it (CTDB
        restarts a recovery daemon that died; ours is not a process of its
        own, and what broke once may well break again)."""
        if self.shutdown_requested.is_set():
            return
        self.failure = what if exc is None else f"{what}: {exc!r}"
        log.critical("%s: stopping this node", self.failure, exc_info=exc)
        self.shutdown_requested.set()
        self.on_failure(self.failure)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.owners.stop()
        await self.membership.stop()
        await self.transport.stop()
        if self.serving_file is not None:
            self.serving_file.close()
        self.dbs.close()
        if self.lock_file is not None:
            self.lock_file.release()

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

    def serving_until(self) -> float:
        """Until when we serve unless we hear from the others (the lease); inf: no end."""
        return self.membership.confirmed_until()

    def publish_serving(self) -> None:
        """Tell clients that use records in place until when they may."""
        if self.serving_file is not None:
            until = self.membership.in_place_until()
            self.serving_file.publish(until, self.now(), self.epochs.epoch, self.epochs.incarnation)
        self.membership.in_place_changed()

    def in_generation(self, generation: int) -> bool:
        """Messages between nodes count only within the generation that sent them.

        Not `serving`: a record handed over while our lease is being renewed
        must still arrive, or the hand-over is lost with nobody holding it.
        """
        return generation == self.generation and self.recovery_mode is RecoveryMode.NORMAL

    async def wait_serving(self, deadline: float) -> None:
        await wait_serving(self, deadline)

    def send(self, pnn: int, msg: Message) -> None:
        if pnn == self.pnn:
            # Local delivery goes through the loop so handlers never re-enter.
            self.call_soon(self.messages.handle, self.pnn, msg)
            return
        self.transport.send(pnn, encode(msg))

    def broadcast(self, msg: Message, to: int | None = None) -> None:
        """Via the transport to every member, us too, or to `to` (vs: in the agreed order)."""
        payload = encode(msg)
        if to is None:
            self.transport.broadcast(payload)
        else:
            self.transport.send(to, payload)
        if self.ordered_own and to in (None, self.pnn):
            self.messages.expect_own(payload)

    def control(
        self, pnn: int, op: str, args: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Coroutine[Any, Any, Any]:
        """Run a control on `pnn` (directly when it is this node): a coroutine
        of its result, the channel's own (no frame of ours around it)."""
        if timeout is None:
            timeout = self.tunable("CallTimeout")
        return self.controls.run(pnn, op, args, timeout)

    def force_recovery(self) -> None:
        self.membership.force_recovery()

    def local_failure(self) -> None:
        """A write failed half-way (I/O error, disk full): our copies are suspect."""
        self.membership.local_failure()

    # -- databases --------------------------------------------------------------------

    def attach(self, name: str, kind: DbKind) -> Database:
        return self.dbs.attach(name, kind)

    def db(self, dbid: int) -> Database:
        return self.dbs.by_id(dbid)

    def db_by_name(self, name: str) -> Database:
        return self.dbs.by_name(name)

    async def attach_everywhere(self, name: str, kind: DbKind) -> Database:
        others = [p for p in self.transport.view.members if p != self.pnn]
        return await self.dbs.attach_everywhere(name, kind, others, self.control)

    # -- transport events ------------------------------------------------------------

    def _on_view(self, view: View) -> None:
        log.info("view %d: nodes %s", view.view_id, list(view.members))
        try:
            self.liveness.on_view(view)
            for pnn in range(len(self.nodes)):
                if pnn not in view:
                    self.controls.fail_node(pnn)
            self.membership.on_view(view)
        except Exception as exc:
            # (the transport calls this from its own loops: raised, it would
            # end them, a tcp link's reconnections with it)
            self.fail(f"handling view {view.view_id}", exc)

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

    def set_flags(self, set_bits: int = 0, clear_bits: int = 0) -> None:
        old = self.flags
        self.flags = (self.flags | set_bits) & ~clear_bits
        if self.flags != old:
            log.info("node flags now %s", NodeFlags.describe(self.flags))
            self.publish_serving()
            self.membership.flags_changed(old, self.flags)
            self.liveness.announce()
            self.membership.request_recovery()

    def entry_head(self, owner: tuple[int, int], db_id: int, key: bytes) -> None:
        self.messaging.entry_head(owner, db_id, key)
