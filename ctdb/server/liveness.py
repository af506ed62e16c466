"""What the nodes tell each other twice a keepalive interval, and the lease it renews.

Every node announces its state (`NodeState`: flags, generation, recovery
mode, leader) on every change and twice every KeepaliveInterval. Peers read
these announcements for each other's flags and for whom each follows (the
leader's election and its checks use `peers`); on tcp each announcement also
echoes the stamps its sender received, which renews the receiver's serving
lease (`ctdb.server.lease`). Failure detection is not here: it is the
transport's (tcp counts silent links, vs expels a member that stops reading).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from ctdb.protocol.message_codec import encode
from ctdb.protocol.messages import NodeState
from ctdb.server.lease import Lease
from ctdb.server.lockfile import ClusterLockFile
from ctdb.server.state import RecoveryMode
from transport.base import Transport, View

#: Seconds a frozen member waits at most to learn how a peer that left the
#: view did (`Liveness.leases_granted`): well within a freeze's RecoverTimeout.
DEPARTURE_WAIT = 1.0


class LivenessHost(Protocol):
    pnn: int
    nodes: list[str]
    flags: int
    generation: int
    recovery_mode: RecoveryMode
    leader: int
    transport: Transport
    lock_file: ClusterLockFile | None
    #: the event loop's clock (`Node.now`)
    now: Callable[[], float]

    def tunable(self, name: str) -> float: ...


class Liveness:
    def __init__(self, node: LivenessHost) -> None:
        self.node = node
        #: the latest state each connected peer announced
        self.peers: dict[int, NodeState] = {}
        self._lease_duration = 0.0
        self.lease = Lease(node.pnn, len(node.nodes), self._lease_duration)
        #: called when the lease may have changed (`Node.publish_serving`)
        self.lease_changed: Callable[[], None] = lambda: None

    def lease_holds(self) -> bool:
        """tcp: the other members confirmed lately that we still serve their generation."""
        return self.lease.holds(self.node.now())

    def lease_until(self) -> float:
        """When the lease ends, on the loop clock, unless it is renewed."""
        return self.lease.until

    async def leases_granted(self) -> list[list[float]]:
        """[peer, seconds] for every peer whose lease may still rest on our echoes.

        Not a peer that left our view by closing its connection in order
        (`Transport.left_in_order`): it died (kill -9: the others must not
        wait out its lease to recover) or it dropped us, and a node forgets
        the confirmations of a peer it drops (`Lease.forget`). A peer whose
        link failed may not know it yet (an error on our side only: tcp seed
        1287932), and one we dropped for its silence costs nothing: that
        silence outlasted what we granted it (`ctdb.server.lease`).

        How a peer left may be known only a moment later (a killed peer's
        FIN after its reset: `Transport.departed`): we wait for it, at most
        DEPARTURE_WAIT in all (several peers may have left) and never past a
        peer's grant, which then needs no wait.
        """
        transport = self.node.transport
        start = self.node.now()
        for pnn, left in self.lease.granted_for(start).items():
            if pnn not in transport.view:
                # Waited for one after another, all within the same bound.
                remaining = start + min(left, DEPARTURE_WAIT) - self.node.now()
                if remaining > 0:
                    await transport.departed(pnn, remaining)
        granted = self.lease.granted_for(self.node.now())
        return [[pnn, left] for pnn, left in granted.items() if not transport.left_in_order(pnn)]

    def confirms_anyone(self) -> bool:
        """Whether some peer's lease may still rest on our echoes."""
        return bool(self.lease.granted_for(self.node.now()))

    def new_generation(self) -> None:
        """Confirmations of the generation we left no longer count."""
        self.lease.new_generation()
        self.lease_changed()

    def configure_lease(self) -> None:
        """Take the current tunables, node count and cluster lock into account."""
        node = self.node
        interval, limit = node.tunable("KeepaliveInterval"), node.tunable("KeepaliveLimit")
        self._lease_duration = interval * (limit - 1)  # under the detection time: ctdb.server.lease
        leader = None if node.lock_file is None else node.leader
        self.lease.configure(len(node.nodes), leader, self._lease_duration)
        self.lease_changed()

    def payload(self) -> bytes:
        """Our state as a peer should see it now, with the stamps we echo."""
        node = self.node
        return encode(
            NodeState(
                node.pnn,
                node.flags,
                node.generation,
                int(node.recovery_mode),
                node.leader,
                node.now(),
                self.lease.echoes(node.recovery_mode is RecoveryMode.NORMAL, self._lease_duration),
                self._lease_duration,
            )
        )

    def announce(self) -> None:
        payload = self.payload()
        transport = self.node.transport
        for pnn in transport.view.members:
            if pnn != self.node.pnn:
                transport.send(pnn, payload)

    async def run(self) -> None:
        """Peers learn our state on change and twice every KeepaliveInterval.

        Twice: our lease (ctdb.server.lease) runs from our stamp as a peer
        echoes it in its next announcement, so the confirmation lags by up
        to two announcement periods plus two transit times. Announcing once
        an interval, that lag reached the whole lease at KeepaliveLimit 3
        (two intervals), and the node stopped serving for moments at random
        (simulator seeds tcp 4998, 5026, 5594).
        """
        while True:
            await asyncio.sleep(self.node.tunable("KeepaliveInterval") / 2)
            self.announce()
            self.lease_changed()  # renewed or not, the clients' copy stays current

    def on_state(self, msg: NodeState) -> None:
        node = self.node
        self.peers[msg.pnn] = msg
        same_generation = (
            msg.generation == node.generation
            and not msg.recovery_mode
            and node.recovery_mode is RecoveryMode.NORMAL
        )
        if self.lease.on_state(
            msg.pnn, msg.stamp, msg.seen.get(node.pnn), same_generation, node.now(), msg.lease
        ):
            node.transport.send(msg.pnn, self.payload())
        self.lease_changed()

    def on_view(self, view: View) -> None:
        """Forget what peers that left announced: they must announce again."""
        for pnn in list(self.peers):
            if pnn not in view:
                del self.peers[pnn]
                self.lease.forget(pnn)
        self.lease_changed()
