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
(`ctdb.engines.migration`); what a member does in each step of a recovery
is in `ctdb.server.recovery_member`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import recovery
from ctdb.engines.migration import MigrationEngine
from ctdb.engines.recovery_flow import NodeFailed
from ctdb.protocol.messages import (
    Call,
    DmasterReply,
    DmasterRequest,
    Message,
    Ordered,
    RemoteCall,
    RemoteCallReply,
)
from ctdb.server.frozen_files import InPlaceGuard
from ctdb.server.node_messages import Route
from ctdb.server.recovery_member import RecoveryMember
from ctdb.server.state import (
    INACTIVE,
    INVALID_GENERATION,
    ControlHandler,
    RecoveryMode,
    control_handlers,
)
from transport.base import View

if TYPE_CHECKING:
    from ctdb.server.membership import ServerNode

log = logging.getLogger("ctdb.server.leader")

#: Recoveries a node's storage may make fail in a row, over at least
#: RecoverTimeout, before it is banned.
BAN_AFTER_FAILURES = 3

#: The messages of a record migration, which count only in their generation.
Migrating = Call | DmasterRequest | DmasterReply | RemoteCall


class LeaderRecovery:
    records_in_place = True
    refused: Mapping[type[Message], str] = {
        Ordered: "an ordered operation on a point-to-point cluster"
    }

    def __init__(self, node: ServerNode) -> None:
        self.node = node
        self.engine = MigrationEngine(node, node.transactions)
        #: our part in the leader's recoveries (the steps, as controls)
        self.member = RecoveryMember(node, self.engine)
        #: Samba's clients write in place only while ours may (`in_place_until`)
        self.in_place = InPlaceGuard(
            node.dbs, node.stats, self.in_place_until, self.member.bulk_lock
        )
        self._wanted = asyncio.Event()
        #: since when a member we would recover hears from nodes we do not
        self._connecting_since: float | None = None
        engine = self.engine
        self.routes: Mapping[type[Message], Route] = {
            Call: self._in_generation(engine.on_call),
            RemoteCall: self._in_generation(engine.calls.on_call),
            DmasterRequest: self._in_generation(engine.on_dmaster_request),
            DmasterReply: self._in_generation(engine.on_dmaster_reply),
            RemoteCallReply: lambda _src, msg: engine.calls.on_reply(msg),
        }

    def controls(self) -> dict[str, ControlHandler]:
        return control_handlers(self.member)

    def background(self) -> list[Coroutine[Any, Any, None]]:
        return [self._recovery_daemon()]

    async def stop(self) -> None:
        # A cancelled pull or push goes on in its thread: close nothing under it.
        await self.member.bulk(lambda: None)
        self.in_place.stop()
        self.engine.chains.close()  # work waiting for clients' chain locks: never done

    def confirmed(self) -> bool:
        return self.node.liveness.lease_holds()

    def confirmed_until(self) -> float:
        return self.node.liveness.lease_until()

    def _in_generation(self, handler: Callable[[Any], None]) -> Route:
        """The route of a migration message: to `handler`, unless it belongs to
        the generation we are about to thaw into (`RecoveryMember.defer_if_early`)."""
        node, member = self.node, self.member

        def route(src: int, msg: Migrating) -> None:
            # Checked here first: the only mode in which a message may be early.
            if node.recovery_mode is RecoveryMode.RECOVERY and member.defer_if_early(
                src, msg, msg.generation
            ):
                return
            handler(msg)

        return route

    def on_view(self, view: View) -> None:
        node = self.node
        lost = [p for p in node.vnnmap if p not in view]
        if lost or (node.leader >= 0 and node.leader not in view):
            log.warning("nodes %s left the view: freezing until recovery", lost or [node.leader])
            self.member.freeze(INVALID_GENERATION)
        node.liveness.announce()
        self._wanted.set()

    def local_failure(self) -> None:
        """Freeze and ask for a recovery, which takes our copies whole (not only
        what changed) and pushes the merged result back; if the disk keeps
        failing, recovery bans the node (see `_recovery_daemon`)."""
        for db in self.node.dbs.values():
            if not db.replicated:
                db.base = None
        self.member.freeze(INVALID_GENERATION)
        self._wanted.set()

    def peer_flags(self, pnn: int) -> int:
        state = self.node.liveness.peers.get(pnn)
        return state.flags if state else 0

    def in_place_changed(self) -> None:
        self.in_place.update()

    def owed_back(self) -> bool:
        return self.in_place.owed()

    async def given_back(self, deadline: float) -> None:
        await self.in_place.held(deadline)

    def in_place_until(self) -> float:
        node = self.node
        if node.recovery_mode is not RecoveryMode.NORMAL or node.flags & INACTIVE:
            return 0.0
        return node.liveness.lease_until()

    def flags_changed(self, old: int, new: int) -> None:
        if new & INACTIVE and not old & INACTIVE:
            self.member.freeze(INVALID_GENERATION)

    async def vacuum(self) -> None:
        await self.engine.vacuum.run()

    async def recover(self) -> None:
        """Freeze; the leader's loop notices and recovers; wait for the new generation."""
        node = self.node
        before = node.generation
        self.member.freeze(INVALID_GENERATION)
        self._wanted.set()
        while node.recovery_mode is RecoveryMode.RECOVERY or node.generation == before:
            await node.serving_event.wait()

    def request_recovery(self) -> None:
        self._wanted.set()

    def force_recovery(self) -> None:
        """As `ctdbtool recover`, without waiting: freeze, so that the leader's
        loop (this node's or another's, seeing us frozen) recovers."""
        self.member.freeze(INVALID_GENERATION)
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
                    self.member.freeze(INVALID_GENERATION)
                if node.lock_file is not None and not self._lock_leases_pending():
                    node.lock_file.release()
                continue
            if not self._needs_recovery():
                continue
            if not node.have_quorum():
                if node.recovery_mode is RecoveryMode.NORMAL:
                    log.warning("lost quorum: freezing")
                    self.member.freeze(INVALID_GENERATION)
                continue
            if self._still_connecting():
                continue
            try:
                await recovery.recover(node, node.active_members(), node.rng)
                node.stats["recoveries"] += 1
                culprits.clear()
            except NodeFailed as exc:
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
        args = {"seconds": seconds, "failures": BAN_AFTER_FAILURES}
        try:
            banned = await self.node.control(pnn, "ban_failing", args)
        except CtdbError as exc:
            log.warning("could not ban node %d: %s", pnn, exc)
            return
        if banned:
            log.error(
                "node %d failed %d recoveries in a row: banned it for %gs",
                pnn,
                BAN_AFTER_FAILURES,
                seconds,
            )
        else:
            log.warning("node %d has served since its recovery failures: not banned", pnn)

    def _lock_leases_pending(self) -> bool:
        """With a cluster lock file a follower's lease rests on the leader's
        echoes alone (`ctdb.server.lease`). A leader that steps down because
        it was stopped or banned is left out of the next recovery, so the
        next leader cannot learn what it confirmed: it keeps the lock until
        those leases have run out (at most a lease; it confirms no more,
        frozen). One that steps down for a lower node takes part in that
        node's recovery and reports them there."""
        node = self.node
        return bool(node.flags & INACTIVE) and node.liveness.confirms_anyone()

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
