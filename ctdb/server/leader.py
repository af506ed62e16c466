"""A node on a point-to-point transport: generations made by a leader's recovery.

Replicas drift apart on tcp (a record migrates between nodes, a node may
miss anything while cut off), so a node serves only within a generation
that a leader started: it froze every active member, merged their copies
(`ctdb.engines.recovery`) and thawed them all. Any doubt freezes a node
again: a vnnmap member or the leader leaving its view, our own failed
write, a flag that makes us inactive. The lowest active node leads, while
it has quorum (a majority of configured nodes, or the cluster lock file);
a lease (`ctdb.server.lease`) stops a member that the others may already
have recovered without. The record engine is dmaster migration
(`ctdb.engines.migration`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import persistent_calls, recovery
from ctdb.engines.merge import from_wire, to_wire
from ctdb.engines.migration import MigrationEngine
from ctdb.engines.vacuum import Vacuum
from ctdb.protocol.message_codec import DecodeError
from ctdb.protocol.messages import (
    Call,
    DmasterReply,
    DmasterRequest,
    Message,
    Ordered,
    RemoteCall,
    RemoteCallReply,
)
from ctdb.server.state import (
    INACTIVE,
    INVALID_GENERATION,
    ControlHandler,
    RecoveryMode,
    control_handlers,
)
from ctdb.storage.database import Database
from ctdb.storage.ltdb import Record
from transport.base import View

if TYPE_CHECKING:
    from ctdb.server.membership import ServerNode

log = logging.getLogger("ctdb.server.leader")
T = TypeVar("T")

#: Recoveries a node's storage may make fail in a row, over at least
#: RecoverTimeout, before it is banned.
BAN_AFTER_FAILURES = 3
#: Migration messages held while this node finishes its part of a recovery
#: that a peer has finished already (see `on_message`); past it they are
#: dropped, as messages of another generation are (calls are re-sent).
MAX_DEFERRED = 10_000


class LeaderRecovery:
    def __init__(self, node: ServerNode) -> None:
        self.node = node
        self.engine = MigrationEngine(node, node.transactions)
        #: the generation the leader froze us for; a recovery step of any other is stale
        self._frozen_generation = INVALID_GENERATION
        self._deferred: list[tuple[int, Message]] = []
        self._wanted = asyncio.Event()
        #: since when a member we would recover hears from nodes we do not
        self._connecting_since: float | None = None
        #: this run of the daemon served a generation (its clients may own entries)
        self._served = False
        #: Recovery's whole-database work runs off the event loop (see `_bulk`).
        self._bulk_lock = threading.Lock()

    def controls(self) -> dict[str, ControlHandler]:
        return control_handlers(self)

    def background(self) -> list[Coroutine[Any, Any, None]]:
        return [self._recovery_daemon()]

    async def stop(self) -> None:
        # A cancelled pull or push goes on in its thread: close nothing under it.
        await self._bulk(lambda: None)

    def confirmed(self) -> bool:
        return self.node.liveness.lease_holds()

    def check(self, msg: Message) -> None:
        if isinstance(msg, Ordered):
            raise DecodeError("an ordered operation on a point-to-point cluster")

    def on_message(self, src: int, msg: Message) -> None:
        if isinstance(msg, RemoteCallReply):
            self.engine.calls.on_reply(msg)
            return
        if not isinstance(msg, Call | DmasterRequest | DmasterReply | RemoteCall):
            return  # `check` let nothing else through
        if self._early(msg.generation):
            # A peer that thawed before us already works in the generation
            # we are about to enter: a record it handed over must not be
            # dropped (its copy already names us dmaster).
            if len(self._deferred) < MAX_DEFERRED:
                self._deferred.append((src, msg))
        elif isinstance(msg, Call):
            self.engine.on_call(msg)
        elif isinstance(msg, RemoteCall):
            self.engine.calls.on_call(msg)
        elif isinstance(msg, DmasterRequest):
            self.engine.on_dmaster_request(msg)
        else:
            self.engine.on_dmaster_reply(msg)

    def on_view(self, view: View) -> None:
        node = self.node
        lost = [p for p in node.vnnmap if p not in view]
        if lost or (node.leader >= 0 and node.leader not in view):
            log.warning("nodes %s left the view: freezing until recovery", lost or [node.leader])
            self._freeze(INVALID_GENERATION)
        node.liveness.announce()
        self._wanted.set()

    def local_failure(self) -> None:
        """Freeze and ask for a recovery, which takes our copies whole (not only
        what changed) and pushes the merged result back; if the disk keeps
        failing, recovery bans the node (see `_recovery_daemon`)."""
        for db in self.node.dbs.values():
            if not db.replicated:
                db.base = None
        self._freeze(INVALID_GENERATION)
        self._wanted.set()

    def peer_flags(self, pnn: int) -> int:
        state = self.node.liveness.peers.get(pnn)
        return state.flags if state else 0

    def flags_changed(self, old: int, new: int) -> None:
        if new & INACTIVE and not old & INACTIVE:
            self._freeze(INVALID_GENERATION)

    async def vacuum(self) -> None:
        await self.engine.vacuum.run()

    async def recover(self) -> None:
        """Freeze; the leader's loop notices and recovers; wait for the new generation."""
        node = self.node
        before = node.generation
        self._freeze(INVALID_GENERATION)
        self._wanted.set()
        while node.recovery_mode is RecoveryMode.RECOVERY or node.generation == before:
            await node.serving_event.wait()

    def request_recovery(self) -> None:
        self._wanted.set()

    # -- the leader's loop -----------------------------------------------------------

    def _leader_candidate(self) -> bool:
        active = self.node.active_members()
        return bool(active) and active[0] == self.node.pnn

    def _needs_recovery(self) -> bool:
        node = self.node
        if node.recovery_mode is RecoveryMode.RECOVERY:
            return True
        if node.active_members() != node.vnnmap or node.leader != node.pnn:
            return True
        for p in node.vnnmap:
            state = node.liveness.peers.get(p)
            if (
                p != node.pnn
                and state is not None
                and (state.generation != node.generation or state.recovery_mode)
            ):
                return True  # a node froze itself (lost a peer, `ctdbtool recover`)
        return False

    async def _recovery_daemon(self) -> None:
        node = self.node
        #: node -> (recoveries its storage made fail in a row, loop time of the first)
        culprits: dict[int, tuple[int, float]] = {}
        while True:
            try:
                await asyncio.wait_for(self._wanted.wait(), 0.25)
            except TimeoutError:
                pass
            self._wanted.clear()
            if not self._leader_candidate() or node.flags & INACTIVE:
                # Step down for the node that should lead now (a lower pnn
                # appeared, or we were stopped): stop serving our generation,
                # so our followers may follow the next leader, and hand it the
                # lock file. It recovers next.
                if node.leader == node.pnn and node.recovery_mode is RecoveryMode.NORMAL:
                    log.info("stepping down as leader")
                    self._freeze(INVALID_GENERATION)
                if node.lock_file is not None:
                    node.lock_file.release()
                continue
            if not self._needs_recovery():
                continue
            if not node.have_quorum():
                if node.recovery_mode is RecoveryMode.NORMAL:
                    log.warning("lost quorum: freezing")
                    self._freeze(INVALID_GENERATION)
                continue
            if self._still_connecting():
                continue
            try:
                await recovery.recover(node, node.active_members(), node.rng)
                node.stats["recoveries"] += 1
                culprits.clear()
            except recovery.NodeFailed as exc:
                log.warning("recovery failed: %s; retrying", exc)
                if exc.code == ErrorCode.IO:
                    now = asyncio.get_running_loop().time()
                    count, since = culprits.get(exc.pnn, (0, now))
                    culprits[exc.pnn] = (count + 1, since)
                    if count + 1 >= BAN_AFTER_FAILURES and now - since >= node.tunable(
                        "RecoverTimeout"
                    ):
                        # As CTDB does: a node whose storage keeps failing
                        # recoveries (not a passing error) is banned, and the
                        # others recover without it.
                        await self._ban_culprit(exc.pnn)
                        culprits.clear()
                await asyncio.sleep(0.1)
                self._wanted.set()
            except (TimeoutError, CtdbError) as exc:
                log.warning("recovery failed: %s; retrying", exc)
                await asyncio.sleep(0.1)
                self._wanted.set()

    async def _ban_culprit(self, pnn: int) -> None:
        seconds = self.node.tunable("RecoveryBanPeriod")
        log.error(
            "node %d failed %d recoveries in a row: banning it for %gs",
            pnn,
            BAN_AFTER_FAILURES,
            seconds,
        )
        try:
            await self.node.control(pnn, "ban", {"seconds": seconds})
        except CtdbError as exc:
            log.warning("could not ban node %d: %s", pnn, exc)

    # -- what every member does when the leader tells it ---------------------------------

    def _early(self, generation: int) -> bool:
        """A migration message of the generation this node is about to thaw into."""
        node = self.node
        return (
            node.recovery_mode is RecoveryMode.RECOVERY
            and generation == self._frozen_generation
            and generation != node.generation
        )

    def _freeze(self, generation: int) -> None:
        node = self.node
        if generation != self._frozen_generation:
            self._deferred.clear()  # held for a generation that will not start
        self._frozen_generation = generation
        if node.recovery_mode is not RecoveryMode.RECOVERY:
            node.frozen_at = time.monotonic()
            node.recovery_mode = RecoveryMode.RECOVERY
            node.serving_event.clear()
            node.transactions.cancel_all()
            self.engine.freeze()
            node.liveness.announce()

    def _still_connecting(self) -> bool:
        """A member hears from nodes we have not met: give our links to them one
        KeepaliveInterval to come up before we recover without them.

        A node a recovery leaves out is gone for the new generation: its
        clients' entries are purged (`ctdb.engines.record_calls.departed`).
        A node that has just started meets its peers one by one, and as the
        lowest it leads at once: recovering over the first peers it met would
        purge the entries of a node that never left. The wait is bounded,
        so a link that stays cut (a partition that is not transitive) only
        delays the recovery.
        """
        node = self.node
        peers = [p for p in node.active_members() if p != node.pnn]
        # A peer whose state has not reached us yet may hear from anyone.
        missing = {p for p in peers if p not in node.liveness.peers}
        heard = {q for p in peers if (peer := node.liveness.peers.get(p)) for q in peer.seen}
        # A vnnmap member we no longer see has left (the others notice a
        # moment later): nothing to wait for.
        missing |= heard - set(node.transport.view.members) - set(node.vnnmap)
        if not missing:
            self._connecting_since = None
            return False
        now = asyncio.get_running_loop().time()
        if self._connecting_since is None:
            self._connecting_since = now
            log.info("waiting for links: members see nodes we have not met (%s)", sorted(missing))
        return now - self._connecting_since < node.tunable("KeepaliveInterval")

    def _check_vote(self, leader: int) -> None:
        """Follow one leader at a time, so that two leaders never serve at once.

        Views are each node's own: with the link 0-1 cut and both linked to
        2, node 0 sees {0, 2} and node 1 sees {1, 2}, both majorities. Node
        2 lets only the lowest active node it sees recover it, and not while
        the leader of its current generation is still connected and has not
        stepped down (a leader steps down, frozen, as soon as it sees a lower
        node). So at most one of 0 and 1 can gather a majority.
        """
        node = self.node
        if leader == node.pnn:
            return
        active = node.active_members()
        if not active or active[0] != leader:
            raise CtdbError(
                ErrorCode.RETRY,
                f"node {node.pnn} follows node {active[0] if active else '-'}, not node {leader}",
            )
        current = node.liveness.peers.get(node.leader)
        if (
            node.leader not in (-1, leader)
            and current is not None
            and current.leader == node.leader
            and not current.recovery_mode
            and not current.flags & INACTIVE
        ):
            raise CtdbError(
                ErrorCode.RETRY,
                f"node {node.pnn} still follows node {node.leader}, which has not stepped down",
            )

    async def _bulk(self, work: Callable[[], T]) -> T:
        """Recovery's whole-database work, off the event loop and one at a time.

        Off the loop so that keepalives keep flowing (the frozen node touches
        no database meanwhile). A recovery attempt that timed out cannot stop
        its thread; the next attempt's pull or push waits for it instead of
        sharing the handle.
        """

        def locked() -> T:
            with self._bulk_lock:
                return work()

        result: T = await self.node.offload(locked)
        return result

    def _check_generation(self, args: dict[str, Any]) -> None:
        if args.get("generation") != self._frozen_generation:
            raise CtdbError(ErrorCode.RETRY, "recovery step from a superseded generation")

    async def ctl_freeze(self, src: int, args: dict[str, Any]) -> dict[str, Any]:
        node = self.node
        self._check_vote(src)
        self._freeze(int(args["generation"]))
        dbs = list(node.dbs.values())
        # After any earlier attempt's push: its sequence numbers are the real ones.
        info = await self._bulk(lambda: {db.name: _recovery_info(db) for db in dbs})
        return {
            "epoch": node.epochs.epoch,
            "incarnation": node.epochs.incarnation,
            "generation": node.generation,
            "view": list(node.transport.view.members),
            "dbs": info,
        }

    async def ctl_pull(self, src: int, args: dict[str, Any]) -> list[Any]:
        """Our copy of a database: all of it, or the records of `keys` we hold."""
        self._check_generation(args)
        db = self.node.db(int(args["db_id"]))
        if args.get("keys") is None:
            return await self._bulk(lambda: to_wire(db.local.items()))
        keys = [bytes(k) for k in args["keys"]]
        return await self._bulk(lambda: to_wire(db.local.items_of(keys)))

    def ctl_changed(self, src: int, args: dict[str, Any]) -> list[bytes]:
        """The keys we wrote or removed since our base copy (see merge.VolatilePlan)."""
        self._check_generation(args)
        changed = self.node.db(int(args["db_id"])).local.changed
        if changed is None:  # not tracking: recovery must not take that for "nothing"
            raise CtdbError(ErrorCode.RETRY, "this node does not track its changes")
        return sorted(changed)

    async def ctl_push(self, src: int, args: dict[str, Any]) -> None:
        """Install records recovery merged (all of them, or the ones that changed)."""
        self._check_generation(args)
        db = self.node.db(int(args["db_id"]))
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
            self.engine.vacuum.note_all(db, records)

    def ctl_vacuum(self, src: int, args: dict[str, Any]) -> int:
        """The key's lmaster removes deletion markers: drop our copies first (engines.vacuum)."""
        if not self.node.in_generation(int(args["generation"])):
            raise CtdbError(ErrorCode.RETRY, "vacuum from another generation")
        return Vacuum.drop_copies(self.node.db(int(args["db_id"])), args["records"])

    def ctl_set_vnnmap(self, src: int, args: dict[str, Any]) -> None:
        node = self.node
        self._check_generation(args)
        vnnmap = [int(p) for p in args["vnnmap"]]
        # A member we lost since the freeze left no trace here: it was not in
        # our old vnnmap, so its departure froze nothing. Migration messages
        # to it would vanish without a view change (tcp 51058: a record sent
        # across a cut had no dmaster afterwards), so this generation must not start.
        unseen = [p for p in vnnmap if p not in node.transport.view]
        if unseen:
            raise CtdbError(ErrorCode.RETRY, f"node {node.pnn} no longer sees nodes {unseen}")
        node.vnnmap = vnnmap
        node.leader = int(args["leader"])
        node.liveness.configure_lease()
        # Recoveries ran without us (our epoch is not the latest) since we
        # last served: they purged our clients' entries.
        left_out = self._served and int(args["epoch"]) > node.epochs.epoch + 1
        # Written after the pushes: it certifies that our copies hold every
        # commit acknowledged up to this recovery.
        node.epochs.set(int(args["epoch"]))
        # Stamped with the new epoch, so the purge outranks every older copy.
        owners = {int(p): int(inc) for p, inc in args["incarnations"]}
        self.engine.calls.purge(owners)
        persistent_calls.purge(node, owners, node.leader)
        if left_out:
            node.owners.fence_all()

    async def ctl_thaw(self, src: int, args: dict[str, Any]) -> None:
        node = self.node
        self._check_generation(args)
        # A pull or push of an abandoned recovery attempt may still be running
        # in its thread: serve nothing until it is done.
        await self._bulk(lambda: None)
        self._check_generation(args)
        if node.flags & INACTIVE:
            raise CtdbError(ErrorCode.RETRY, f"node {node.pnn} became inactive")
        node.generation = self._frozen_generation
        node.recovery_mode = RecoveryMode.NORMAL
        self._served = True
        node.liveness.lease.new_generation()
        node.serving_event.set()
        node.last_recovery = {
            "duration": time.monotonic() - node.frozen_at,
            "finished": time.time(),
        }
        self.engine.reset()
        node.transactions.settle_all()
        node.liveness.announce()
        deferred, self._deferred = self._deferred, []
        for src, msg in deferred:
            node.handle(src, msg)


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
