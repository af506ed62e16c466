"""Who reaches whom on the simulated network, and the views that follow.

Why a module of its own: this is where the two modes of
`transport.memory_network.MemoryNetwork` differ. FIFO mode (like tcp) gives
every endpoint its own view, installed behind the last message it gets from
a departed peer; VS mode (like corosync's CPG) runs a sequencer that puts
every message and view change into one order and flushes before it installs
a view. The faults that change who reaches whom are injected one layer up,
in `transport.memory_network`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transport.base import View
from transport.memory_links import SEQUENCER, LinkLayer, Scheduler, show_payload

if TYPE_CHECKING:
    from transport.memory import MemoryTransport

#: Of a cut's re-forming time (token + consensus), the consensus timeout's
#: share with corosync's default of 1.2 times the token.
CONSENSUS_SHARE = 1.2 / 2.2


@dataclass
class _PendingView:
    """FIFO mode: a view an endpoint installs once `markers` links have drained."""

    members: frozenset[int]
    markers: int
    #: not installed before this time (`MemoryNetwork.cut`'s `noticed_late`)
    not_before: float = 0.0
    #: peers it drops that closed their end in order: they crashed or left,
    #: where a cut, a partition or a hang only goes silent or fails
    #: (`transport.base.Transport.left_in_order`)
    closed: frozenset[int] = frozenset()


class ViewLayer(LinkLayer):
    """The topology of a `MemoryNetwork` and the views each mode makes of it."""

    def __init__(
        self,
        scheduler: Scheduler | None,
        *,
        seed: int,
        total_order: bool,
        latency: tuple[float, float],
        agreed_only: bool = False,
        ring_timeout: float = 0.0,
    ) -> None:
        super().__init__(scheduler, seed=seed, latency=latency)
        self.total_order = total_order
        #: VS mode: how long a view that a cut broke stalls before the views
        #: change (`_vs_stalled`); 0: at once
        self.ring_timeout = ring_timeout
        #: ... and one that a joiner reaching part of it breaks: corosync's
        #: consensus timeout alone (`transport.libcmap.RingTimeouts`)
        self.gather_timeout = ring_timeout * CONSENSUS_SHARE
        #: VS mode: ids of views a cut broke (their members no longer all
        #: reach each other) ...
        self._broken: set[int] = set()
        #: ... and of those still stalled, with the token of their timer
        self._stalls: dict[int, object] = {}
        #: VS mode: what members of a stalled view sent meanwhile, by view id
        self._parked: dict[int, list[tuple[int, tuple[Any, ...]]]] = {}
        self._unparking = False
        #: VS mode: members that go on together may lose the last messages of
        #: those they part from, which their senders delivered (`_lose_suffix`)
        self.agreed_only = agreed_only
        self._next_order = 0
        #: (origin, member): the member lost a suffix of the origin's messages,
        #: so it gets no more of them until it installs its next view
        self._cut_off: set[tuple[int, int]] = set()
        #: VS mode: what to call once an endpoint next delivers its own broadcast
        self._after_own: dict[int, Callable[[], None]] = {}
        self._alive: set[int] = set()
        self._groups: list[frozenset[int]] | None = None
        #: Pairs cut on their own (`cut`, or a one-way loss once detected).
        self._split: set[frozenset[int]] = set()
        #: Hung endpoints, with the token of their detection timer.
        self._hung: dict[int, object] = {}
        #: Hung endpoints their peers have given up on (FIFO mode).
        self._isolated: set[int] = set()
        # FIFO mode: per-endpoint queue of views waiting for removal markers.
        self._pending_views: dict[int, deque[_PendingView]] = {}
        # FIFO mode: endpoint -> how much later than the others it notices
        # the next peer it loses (one shot; see `MemoryNetwork.cut`).
        self._notice_late: dict[int, float] = {}
        # VS mode: the sequencer's state.
        self._installed: dict[int, View] = {}
        self._next_view_id = 1
        self._awaiting: set[int] | None = None  # flush acks still missing
        self._flushed: set[int] = set()
        # Dead members whose removal is not ordered yet, with their last view.
        self._departed: dict[int, View] = {}

    # -- topology -------------------------------------------------------------

    @property
    def members(self) -> frozenset[int]:
        """Endpoints currently attached and alive."""
        return frozenset(self._alive)

    def connected(self, a: int, b: int) -> bool:
        return a == b or (self._linked(a, b) and not {a, b} & self._isolated)

    def _linked(self, a: int, b: int) -> bool:
        """The network carries traffic between `a` and `b`, whatever their
        processes do (a stopped one stays in corosync's ring)."""
        if self._groups is not None and not any(a in g and b in g for g in self._groups):
            return False
        return frozenset((a, b)) not in self._split

    def _reachable(self, pnn: int) -> frozenset[int]:
        return frozenset(p for p in self._alive if self.connected(pnn, p))

    def _cliques(self) -> dict[int, frozenset[int]]:
        """VS mode: groups whose members all reach each other, greedily by pnn.

        Totem forms a ring only of processors that can all talk; with a
        non-transitive cut a node reachable from both sides joins one.
        """
        groups: dict[int, frozenset[int]] = {}
        for p in sorted(self._alive):
            if p in groups:
                continue
            group = [p]
            for q in sorted(self._alive):
                if q not in groups and q not in group and all(self.connected(q, m) for m in group):
                    group.append(q)
            for m in group:
                groups[m] = frozenset(group)
        return groups

    def link_ok(self, a: int, b: int) -> bool:
        """`a` and `b` are connected and nothing between them is held back."""
        return self.connected(a, b) and (a, b) not in self._held and (b, a) not in self._held

    def _connections(self) -> set[tuple[int, int]]:
        return {(a, b) for a in self._alive for b in self._alive if self.connected(a, b)}

    def _topology_changed(self, cut: set[tuple[int, int]]) -> None:
        if self.total_order:
            self._vs_reconcile()
        else:
            self._fifo_topology_changed(cut, removed_from=set())

    def _arrive(self, src: int, dst: int, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if dst == SEQUENCER:
            self._sequence(src, item)
            return
        ep = self._endpoints.get(dst)
        if ep is None or ep._dead:
            return
        if kind == "msg":
            origin, payload = item[1], item[2]
            if self._tracing:
                self._record(f"deliver {origin}->{dst} {show_payload(payload)}")
            if origin == dst and len(item) > 3:
                ep._came_back(item[3])  # a broadcast of ours, with when it was sent
            ep.on_message(origin, payload)
            if origin == dst and (after := self._after_own.pop(dst, None)) is not None:
                after()
        elif kind == "tick":
            ep._came_back(item[1])
        elif kind == "marker":
            pending = self._pending_views.get(dst)
            if pending:
                for pv in pending:
                    if pv.markers > 0 and item[1] is pv:
                        pv.markers -= 1
                        break
                self._fifo_install(dst)
        elif kind == "view":
            view = item[1]
            self._record(f"view {dst} {view.view_id} {list(view.members)}")
            ep._vs_install(view)
        elif kind == "flush":
            ep._held_mode = True
            self._enqueue(dst, SEQUENCER, ("flush_ok",), 0, dst)

    # -- FIFO mode ------------------------------------------------------------

    def _fifo_topology_changed(self, cut: set[tuple[int, int]], removed_from: set[int]) -> None:
        """Queue a view for every endpoint whose reachable set changed.

        A view that drops peer P waits for a marker sent behind P's last
        surviving message on the (P, me) link, so the view change comes after
        whatever part of P's stream this endpoint gets, as over TCP.
        """
        for key in cut:
            chan = self._channels.get(key)
            if chan is not None:
                self._cut(chan)
        for pnn in sorted(self._alive):
            ep = self._endpoints[pnn]
            queue = self._pending_views.setdefault(pnn, deque())
            latest = queue[-1].members if queue else frozenset(ep.view.members)
            target = self._reachable(pnn)
            if target == latest:
                continue
            pv = _PendingView(target, 0, closed=frozenset(latest - target - self._alive))
            if latest - target and pnn in self._notice_late:
                pv.not_before = self.time() + self._notice_late.pop(pnn)
            queue.append(pv)
            for gone in sorted(latest - target):
                pv.markers += 1
                self._enqueue(gone, pnn, ("marker", pv), 0, gone)
            if pv.markers == 0:
                self._call_later(0.0, self._fifo_install, pnn, at=pnn)

    def _fifo_install(self, pnn: int) -> None:
        queue = self._pending_views.get(pnn)
        ep = self._endpoints.get(pnn)
        if not queue or ep is None or ep._dead:
            return
        while queue and queue[0].markers == 0:
            if queue[0].not_before > self.time():
                self._call_later(queue[0].not_before - self.time(), self._fifo_install, pnn, at=pnn)
                return
            pv = queue.popleft()
            if frozenset(ep.view.members) != pv.members:
                ep._closed_in_order = (ep._closed_in_order - pv.members) | pv.closed
                ep._set_view(set(pv.members))
                self._record(f"view {pnn} {ep.view.view_id} {list(ep.view.members)}")

    def _fifo_send(self, src: int, dst: int, payload: bytes) -> None:
        if dst not in self._alive or not self.connected(src, dst):
            return
        self._enqueue(src, dst, ("msg", src, payload), len(payload), src)

    # -- VS mode --------------------------------------------------------------

    def _vs_submit(self, src: int, item: tuple[Any, ...], size: int) -> None:
        self._enqueue(src, SEQUENCER, item, size, src)

    def _sequence(self, src: int, item: tuple[Any, ...]) -> None:
        """The sequencer: one global order for messages, flush acks and views."""
        kind = item[0]
        if kind == "flush_ok":
            if self._awaiting is not None and src in self._awaiting:
                self._awaiting.discard(src)
                self._flushed.add(src)
            self._vs_try_complete()
            return
        view = self._departed.get(src) or self._installed.get(src)
        if view is None:
            return
        if view.view_id in self._stalls:
            self._parked.setdefault(view.view_id, []).append((src, item))
            return
        if view.view_id in self._broken:
            # The ring re-forms: what reaches it now is ordered in the new
            # one, as what it held back (`_stall_over`).
            self._not_ordered(src, [item])
            return
        # Only members still in that very view get it: not a restarted
        # incarnation of a dead member, not members that moved on.
        recipients = [
            d
            for d in view.members
            if d in self._alive and self._installed.get(d) is view and (src, d) not in self._cut_off
        ]
        order = self._next_order
        self._next_order += 1
        if kind == "bcast":
            payload, sent = item[1], item[2]
            if self._tracing:
                self._record(f"order {src} {show_payload(payload)}")
            for dst in recipients:
                # Agreed order: the sender delivers its own message once it is
                # ordered; the others once it has reached them.
                own = self.agreed_only and dst == src
                msg = ("msg", src, payload, sent)
                self._enqueue(SEQUENCER, dst, msg, 0, dst, order, fastest=own)
        elif kind == "tick":
            if src in recipients:  # to its sender only: see MemoryTransport._tick
                self._enqueue(SEQUENCER, src, item, 0, src)
        elif kind == "send":
            dst, payload = item[1], item[2]
            if dst in recipients:
                if self._tracing:
                    self._record(f"order {src}->{dst} {show_payload(payload)}")
                self._enqueue(SEQUENCER, dst, ("msg", src, payload), 0, dst, order)
        if src in self._departed and not self._unparking:
            self._vs_try_complete()

    def _lose_suffix(self, group: frozenset[int], kept: frozenset[int]) -> None:
        """Agreed order, not more: members `group`, which go on together, lose
        the same random suffix of the messages of senders not in `kept` that
        none of them has delivered yet.

        corosync delivers a message once a member holds every message before
        it, not once every member holds it. So a sender may deliver its
        message (and its daemon acknowledge what it carried) while members it
        parts from never get it; virtual synchrony only promises that members
        that install the same next view delivered the same messages. A
        member that lost a sender's suffix gets nothing more from it until
        its next view, so no sender's stream has a gap.
        """
        floor = max(self._delivered.get(p, -1) for p in group)
        outside = [
            packet
            for p in sorted(group)
            if (chan := self._channels.get((SEQUENCER, p))) is not None
            for packet in chan.queue
            if not packet.dropped
            and packet.order > floor
            and packet.item[0] == "msg"
            and packet.item[1] not in kept
        ]
        orders = sorted({packet.order for packet in outside})
        keep = self.random.randint(0, len(orders)) if orders else 0
        if keep == len(orders):
            return
        self._record(f"lose to {sorted(group)} from order {orders[keep]} on")
        for packet in outside:
            if packet.order >= orders[keep]:
                packet.dropped = True
                self._release(packet)
        # The cut is one point of the order for all of them: what those
        # senders have yet to get ordered (a crashed one's last messages)
        # comes after it.
        for sender in (set(self._endpoints) | set(self._departed)) - kept:
            for p in group:
                self._cut_off.add((sender, p))

    def _crash_cut(self, pnn: int) -> None:
        """A crashed sender's messages on their way: what no survivor got yet may
        be lost, the same suffix for every survivor.

        The same for all, not per group of survivors that talk right now:
        which of them go into the same next view is decided only when the
        views are (a cut may heal first, all the more while a broken ring
        waits to re-form), and members that do must have delivered the same
        messages. Groups that part may still lose different suffixes of
        what is left (`_parting_cut`). (vs seed 44091179: a crash during a
        cut lost node 1's last commit for node 0's side only, the cut
        healed, and nodes 0 and 2 went into one view, one with the commit,
        one without.)
        """
        view = self._departed.get(pnn)
        if self.agreed_only and view is not None:
            survivors = frozenset(p for p in self._alive if self._installed.get(p) is view)
            if survivors:
                self._lose_suffix(survivors, frozenset(self._alive))

    def _parting_cut(self, changed: set[int], targets: dict[int, frozenset[int]]) -> None:
        """Members that go from one view into the same next one may lose what
        the members they part from sent (a split, an expel). Decided here, when
        the views are final: a cut healed before they changed loses nothing,
        as totem retransmits within a ring that stays whole."""
        if not self.agreed_only:
            return
        groups: dict[tuple[int, frozenset[int]], set[int]] = {}
        for pnn in changed:
            old = self._installed.get(pnn)
            if old is not None:
                groups.setdefault((old.view_id, targets[pnn]), set()).add(pnn)
        for (_, new), members in sorted(groups.items(), key=lambda item: min(item[1])):
            group = frozenset(members)
            self._lose_suffix(group, new)

    def _vs_targets(self) -> dict[int, frozenset[int]]:
        return self._cliques()

    def _vs_changed(self) -> set[int]:
        changed = {
            p
            for p, t in self._vs_targets().items()
            if p not in self._installed or frozenset(self._installed[p].members) != t
        }
        # A departed member changes every view it was in.
        for view in self._departed.values():
            changed |= {p for p in view.members if p in self._alive}
        return changed

    def _vs_stalled(self) -> bool:
        """Is some view broken by a cut less than `ring_timeout` ago, or
        split by a joiner less than `gather_timeout` ago?

        corosync does not notice a cut at once: the ring's token is lost,
        declared so after the token timeout, and the silent members are
        counted as failed after the consensus timeout. A node joining that
        reaches some members and not the others (a non-transitive cut)
        puts the ring in gather at once, and the members it cannot reach
        are counted as failed after the consensus timeout. Meanwhile the
        ring orders nothing (what its members send waits here) and no view
        changes; a cut that heals before then changes nothing. A member's
        lease relies on it (`transport.base.lease_timing`). Crashes and
        expels are not cuts: corosync learns of a dead process from its own
        node at once, and an expel is a message in the ring.
        """
        if self.ring_timeout <= 0:
            return False
        members: dict[int, list[int]] = {}
        for p, view in self._installed.items():
            if p in self._alive:
                members.setdefault(view.view_id, []).append(p)
        targets = self._vs_targets()
        for view_id, group in members.items():
            if not all(self._linked(a, b) for a in group for b in group):
                why, timeout = "broken", self.ring_timeout
            elif len({targets[p] for p in group if p not in self._isolated}) > 1:
                why, timeout = "split by a joiner", self.gather_timeout
            else:
                self._broken.discard(view_id)
                self._stalls.pop(view_id, None)
                continue
            if view_id not in self._broken:
                self._broken.add(view_id)
                token = self._stalls[view_id] = object()
                self._record(f"ring of view {view_id} {why}")
                self._call_later(timeout, self._stall_over, view_id, token)
        for view_id in self._broken - set(members):
            self._broken.discard(view_id)
            self._stalls.pop(view_id, None)
        self._unpark()
        return bool(self._stalls)

    def _stall_over(self, view_id: int, token: object) -> None:
        """The cut lasted: the ring re-forms without the members it cut off.

        What its members sent meanwhile was never ordered in the broken
        ring, and corosync orders it in the new one, after the view change:
        it goes back to its senders, ahead of what they hold for their next
        view. (Ordered in the old view, a member cut off would get back a
        tick it sent after the cut, and its lease with it, before it learns
        that it is alone.)
        """
        if self._stalls.get(view_id) is not token:
            return
        del self._stalls[view_id]
        self._record(f"ring of view {view_id} re-forms")
        unordered: dict[int, list[tuple[Any, ...]]] = {}
        for src, item in self._parked.pop(view_id, []):
            unordered.setdefault(src, []).append(item)
        for src, items in unordered.items():
            self._not_ordered(src, items)
        self._vs_reconcile()

    def _not_ordered(self, src: int, items: list[tuple[Any, ...]]) -> None:
        """What `src` sent that a broken ring never ordered goes back to it,
        to be sent again after its next view (`MemoryTransport._not_ordered`)."""
        ep = self._endpoints.get(src)
        if ep is not None and src in self._alive:
            ep._not_ordered(items)

    def _unpark(self) -> None:
        """Order what members of views a cut no longer breaks sent meanwhile,
        in the order it came: the ring went on (a cut healed in time)."""
        ready = [v for v in self._parked if v not in self._stalls]
        items = [entry for v in ready for entry in self._parked.pop(v)]
        self._unparking = True
        try:
            for src, item in items:
                self._sequence(src, item)
        finally:
            self._unparking = False

    def _vs_reconcile(self) -> None:
        """Start a flush if some member's view must change and none is running."""
        if self._vs_stalled():
            return  # the stall's timer (or the heal) comes back here
        if self._awaiting is not None:
            self._vs_extend_flush()
            self._vs_try_complete()
            return
        if not self._vs_changed():
            self._vs_drop_departed()
            return
        self._awaiting = set()
        self._flushed = set()
        self._vs_extend_flush()
        self._vs_try_complete()

    def _vs_extend_flush(self) -> None:
        assert self._awaiting is not None
        for pnn in sorted(self._vs_changed()):
            if pnn in self._installed and pnn not in self._flushed and pnn not in self._awaiting:
                self._awaiting.add(pnn)
                if pnn in self._hung:
                    self._flush_ok_for(self._endpoints[pnn])
                else:
                    self._enqueue(SEQUENCER, pnn, ("flush",), 0, pnn)

    def _flush_ok_for(self, ep: MemoryTransport) -> None:
        """corosync acknowledges a flush for a stopped member: it sends nothing more."""
        ep._held_mode = True
        self._enqueue(ep.pnn, SEQUENCER, ("flush_ok",), 0, ep.pnn)

    def _vs_drop_departed(self) -> None:
        for gone in list(self._departed):
            if not self._in_flight(gone):
                del self._departed[gone]

    def _in_flight(self, pnn: int) -> bool:
        chan = self._channels.get((pnn, SEQUENCER))
        return chan is not None and any(not p.dropped for p in chan.queue)

    def _vs_try_complete(self) -> None:
        """Install the next views once every survivor has flushed and every
        departed member's surviving messages have been ordered."""
        if (self._stalls or self._parked) and self._vs_stalled():
            return
        if self._awaiting is None or self._awaiting:
            return
        if any(self._in_flight(gone) for gone in self._departed):
            return
        self._vs_extend_flush()
        if self._awaiting:
            return
        # A dead member's restarted incarnation joins in a later view, so that
        # the others always see the departure (its state is gone).
        gone = set(self._departed)
        changed = (self._vs_changed() | (self._flushed & self._alive)) - gone
        targets = {p: t - gone for p, t in self._vs_targets().items() if p not in gone}
        self._departed.clear()
        self._awaiting = None
        self._flushed = set()
        self._parting_cut(changed, targets)
        ids: dict[frozenset[int], View] = {}
        for pnn in sorted(changed):
            members = targets[pnn]
            view = ids.get(members)
            if view is None:
                view = ids[members] = View(self._next_view_id, tuple(sorted(members)))
                self._next_view_id += 1
                self._record(f"order view {view.view_id} {list(view.members)}")
            self._installed[pnn] = view
            self._cut_off = {(a, b) for a, b in self._cut_off if b != pnn}
            self._enqueue(SEQUENCER, pnn, ("view", view), 0, pnn)
        # Reality may have moved on while we flushed.
        if self._vs_changed():
            self._vs_reconcile()
