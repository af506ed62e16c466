"""tcp: may this node serve right now? A lease confirmed by the other members.

Over a point-to-point transport a node learns that it was left out of the
cluster only by messages, and a node that was hung (SIGSTOP, a stalled VM)
wakes up believing what it believed before: that it serves its generation.
Meanwhile the others noticed its silence, recovered without it and moved on;
if it answered a client before reading the news, that write would be
acknowledged and then discarded by the next recovery.

So a node serves only while its lease holds. Every `NodeState` a node sends
carries a stamp (its own clock when it sent it) and echoes the latest stamp
it received from every peer. When a peer that serves the same generation
echoes our stamp `s`, it was alive, connected and in our generation after
we sent `s`: our lease then lasts until `s + duration`. The stamp is our own
clock read back to us, so clocks of different hosts are never compared.

The duration is shorter than the failure-detection time: a peer drops us
only after hearing nothing for KeepaliveInterval x KeepaliveLimit, which is
after every stamp it ever echoed, so our lease has run out before anyone
recovers without us. What must confirm the lease: a majority of the
configured nodes (this one included) or, with a cluster lock file, the
leader that holds the lock.

That argument holds only if whoever recovers without us stopped hearing
from us. It does not when the partition is not transitive: with the link
0-1 cut, node 0 drops node 1 and recovers with node 2, which still hears
node 1 and confirmed its lease a moment ago; node 1 drops node 0 only a
keepalive later, and serves its old generation meanwhile (seen: acknowledged
increments lost, tests/test_partition_nontransitive.py). So every node also
remembers the leases it granted (`granted`), and a recovery does not thaw a
generation that leaves out a node before every lease its members granted
that node has run out, or it has frozen that node (`ctdb.engines.recovery`).
Every grant counts (`Liveness.leases_granted`) except to a node that left
by closing its connection in order (`Transport.left_in_order`): it died,
and a kill -9 must not cost the others a lease, or it dropped them and
forgot their confirmations first. A link that failed with an error on one
side only (a reset, an unreachable host, as a firewall rule that rejects
one way sends) says nothing of what the other side believes: until the
transports told the two apart, the member that saw the error stopped
counting its grant at once while the peer, which heard nothing, served on
it (tools.simulate, tcp seed 1287932: a read on the peer missed a
persistent write the others had acknowledged 3 ms before). A node dropped
for its silence costs nothing either way: the silence outlasted the grant.

Nodes may run different KeepaliveInterval and KeepaliveLimit (`setvar` is
per node): every NodeState says how long its sender's lease lasts. A node's
lease lasts no longer than the shortest its peers announce, which is under
each peer's own detection time, and a grant is sized with the lease its
holder announced (`durations`). A peer that lowers its tunables is heeded
from its next NodeState, half a keepalive interval later at most.

A node killed while frames sat unread in its socket resets that
connection, and the FIN of its other one may come a moment later: tcp
keeps that connection to see how it ends (`TcpTransport._linger`), and a
frozen member waits up to a second for it (`Liveness.leases_granted`).
Not covered (known): a FIN later than that makes the recovery wait out
the dead node's lease (4 s at the default tunables): slower, not unsafe.
"""

from __future__ import annotations

import math


class Lease:
    def __init__(self, pnn: int, nodes: int, own: float) -> None:
        self.pnn = pnn
        #: how long our lease lasts by our own tunables (see `configure`)
        self._own = own
        #: the latest stamp received from each peer (echoed in our NodeState)
        self.seen: dict[int, float] = {}
        #: when (our clock) each stamp in `seen` arrived
        self._received: dict[int, float] = {}
        #: peer -> until when (our clock) a lease of its may rest on our echoes
        self.granted: dict[int, float] = {}
        #: peer -> our stamp it echoed while serving our generation
        self._confirmed: dict[int, float] = {}
        #: peers heard serving our generation since it began
        self._current: set[int] = set()
        #: how long each peer's own lease lasts, as it announced
        self.durations: dict[int, float] = {}
        #: the shortest of them (checked on every request: kept up to date)
        self._shortest = math.inf
        self._nodes = nodes
        self._leader: int | None = None
        #: the stamp the lease runs from, and when it ends (our clock; see
        #: `holds`): kept up to date on every change, so that the check on
        #: each request is one comparison
        self.since = -math.inf
        self.until = -math.inf
        self._update()

    def configure(self, nodes: int, leader: int | None, own: float) -> None:
        """Who must confirm: a majority of `nodes`, or (`leader` not None) that
        leader; `own`: how long our lease lasts by our tunables."""
        self._nodes, self._leader, self._own = nodes, leader, own
        self._update()

    def on_state(
        self,
        src: int,
        stamp: float,
        echo: float | None,
        same_generation: bool,
        now: float,
        lease: float,
    ) -> bool:
        """A peer's NodeState arrived; True if it is the first of our generation from `src`.

        The caller answers that first one at once with its own NodeState, so
        that after a recovery both sides confirm each other in one round
        trip instead of waiting a keepalive interval.
        """
        self.seen[src] = stamp
        self._received[src] = now
        if self.durations.get(src) != lease:
            self.durations[src] = lease
            self._shortest = min(self.durations.values())
            self._update_until()
        if not same_generation:
            return False
        if echo is not None:
            echo = min(echo, now)  # a stamp from our future is no confirmation
            self._confirmed[src] = max(echo, self._confirmed.get(src, echo))
            self._update()
        first = src not in self._current
        self._current.add(src)
        return first

    def echoes(self, serving: bool, duration: float) -> dict[int, float]:
        """The stamps our next NodeState echoes; `serving`: it says we serve (NORMAL).

        Only an echo from a node that serves confirms a lease, so only then
        do we grant one: the peer's lease runs from its stamp, which it sent
        before we received it, so it ends before `received + its duration`
        on our clock (the clocks of both hosts run at the same rate). Its
        duration is what it announced, or ours if that is longer.
        """
        if serving:
            for pnn, at in self._received.items():
                until = at + max(duration, self.durations.get(pnn, duration))
                self.granted[pnn] = max(self.granted.get(pnn, at), until)
        return dict(self.seen)

    def granted_for(self, now: float) -> dict[int, float]:
        """Peer -> for how many more seconds a lease of its may rest on our echoes."""
        return {pnn: until - now for pnn, until in self.granted.items() if until > now}

    def forget(self, pnn: int) -> None:
        """The peer left our view: it confirms nothing until it is back.

        What we granted it stays: the peer may still be serving on it.
        """
        if self.durations.pop(pnn, None) is not None:
            self._shortest = min(self.durations.values(), default=math.inf)
        self.seen.pop(pnn, None)
        self._received.pop(pnn, None)
        self._confirmed.pop(pnn, None)
        self._current.discard(pnn)
        self._update()

    def new_generation(self) -> None:
        """Confirmations of the previous generation do not carry over."""
        self._confirmed.clear()
        self._current.clear()
        self._update()

    def holds(self, now: float) -> bool:
        """Whether we may serve at `now` (our clock)."""
        return now < self.until

    def _update(self) -> None:
        self.since = self._confirmed_since()
        self._update_until()

    def _confirmed_since(self) -> float:
        if self._leader is not None:
            if self._leader == self.pnn:
                return math.inf
            return self._confirmed.get(self._leader, -math.inf)
        needed = self._nodes // 2  # peers that make a majority with us
        if needed == 0:
            return math.inf
        stamps = sorted(self._confirmed.values(), reverse=True)
        return stamps[needed - 1] if len(stamps) >= needed else -math.inf

    def _update_until(self) -> None:
        """The lease lasts our own duration, or less if a peer's is shorter."""
        self.until = self.since + min(self._own, self._shortest)
