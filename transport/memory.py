"""In-process transport for tests and simulation.

`MemoryNetwork` + `MemoryTransport`: a fake network with fault injection
(crash, partition, heal) in two modes, chosen per network:

  - FIFO mode (`total_order=False`) behaves like the TCP backend: each
    (sender, receiver) pair is a FIFO link with random latency; a crash or a
    partition cuts each link after a random prefix of its in-flight messages
    (never a gap), and each endpoint learns about the change after the last
    message it will ever get from the departed peer. Different survivors may
    therefore see different subsets of a crashed node's last messages, which
    is exactly the weakness the engine must cope with over TCP.
  - VS mode (`total_order=True`) behaves like corosync CPG: a central
    sequencer puts every broadcast, send and view change into one global
    order and every member delivers its share of that order over a FIFO
    link. Before installing a view the sequencer runs a flush: each
    surviving member acknowledges after its last message of the old view and
    holds new messages until it installs the new view, so a message sent in
    view V is delivered in V to all survivors of V (a crashed sender's
    in-flight tail is cut at one point for everybody: all or none).

Faults beyond crashes and clean partitions, for the simulator
(`tools/sim`):

* `cut(a, b)`: one pair cannot talk while both still talk to others, which
  builds non-transitive partitions ({0,2} and {1,2} connected, 0-1 cut).
  FIFO mode gives each endpoint its own view, as TCP does; VS mode, like
  totem, installs views of groups whose members all reach each other.
* `cut_oneway(src, dst)`: an asymmetric loss. Over TCP the sender's data is
  retransmitted until the receiver's keepalive gives up, so FIFO mode holds
  the link's traffic (nothing lost yet) and, after `detect_after` seconds,
  disconnects the pair; restored earlier, the held traffic is delivered late.
* `hang(pnn)` / `resume(pnn)`: a SIGSTOPped process. The network only plays
  what the rest of the world does: peers drop the silent node after
  `detect_after` (in FIFO mode their keepalives; in VS mode the vs
  transport's expel of a member that stops reading, unless
  `expel_stopped=False` models corosync alone, which keeps the member in
  the group for ever), and take it back when it continues. Meanwhile
  corosync acknowledges VS flushes for it (corosync, not the process,
  takes part in the membership protocol). Stopping the process itself is
  the event loop's business: every delivery to an endpoint runs in the
  `contextvars` context the endpoint joined in, so a loop can hold back the
  callbacks of one stopped node (see `tools/sim/loop.py`).
* `slow(pnn, latency)`: a latency spike on one node's links.

The network runs on a seeded virtual-time `Scheduler` when given one (a run
is then a pure function of the seed and can be replayed exactly; see
`tools/sim/scheduler.py`), and otherwise on the asyncio loop that is running
when it is used (wall-clock latency), so the same backend serves the
asyncio-based conformance suite, the simulator and the daemon
(`--transport memory`).
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from transport.base import Capabilities, Transport, TransportError, TransportOptions, View

MAX_MESSAGE = 64 * 1024 * 1024
HIGH_WATER = 4 * 1024 * 1024
LOW_WATER = HIGH_WATER // 2
#: Pseudo-pnn of the VS sequencer in channel keys.
SEQUENCER = -1


# --------------------------------------------------------------------------
# Virtual time


class Scheduler(Protocol):
    """A seeded virtual-time clock the network can run on instead of asyncio
    (`tools.sim.scheduler.SimScheduler`, which tests use to replay runs exactly)."""

    #: where everything random comes from (latencies, what a crash loses)
    random: random.Random
    #: observable events, one line each, when tracing
    trace: list[str] | None

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Any: ...

    def record(self, event: str) -> None: ...


# --------------------------------------------------------------------------
# Links


@dataclass(slots=True)
class _Packet:
    seq: int
    item: tuple[Any, ...]
    size: int
    owner: int  # pnn whose back-pressure budget this packet counts against
    dropped: bool = False


@dataclass
class _Channel:
    """One FIFO link. `last_at` makes a later packet never overtake an earlier one."""

    queue: deque[_Packet] = field(default_factory=deque)
    last_at: float = -math.inf
    next_seq: int = 0


@dataclass
class _PendingView:
    """FIFO mode: a view an endpoint installs once `markers` links have drained."""

    members: frozenset[int]
    markers: int


class MemoryNetwork:
    """A fake network that `MemoryTransport`s attach to; see the module docstring.

    Networks are found by name (`named`) so that a daemon built from a config
    file (`[transport] network = x`) meets its peers in the same process.
    """

    _registry: ClassVar[dict[str, MemoryNetwork]] = {}

    def __init__(
        self,
        scheduler: Scheduler | None = None,
        *,
        seed: int = 0,
        total_order: bool = False,
        latency: tuple[float, float] = (0.0001, 0.001),
        expel_stopped: bool = True,
    ) -> None:
        if latency[0] < 0 or latency[1] < latency[0]:
            raise ValueError(f"bad latency range {latency!r}")
        self.scheduler = scheduler
        self.random = scheduler.random if scheduler is not None else random.Random(seed)
        self.total_order = total_order
        self.latency = latency
        #: VS mode: a stopped member leaves the views after `detect_after`, as
        #: the vs transport expels a member that stops reading; False models
        #: corosync alone, which keeps such a process in the group for ever.
        self.expel_stopped = expel_stopped
        self.capabilities = Capabilities(
            total_order=total_order, virtual_synchrony=total_order, max_message_size=MAX_MESSAGE
        )
        self._endpoints: dict[int, MemoryTransport] = {}
        self._alive: set[int] = set()
        self._groups: list[frozenset[int]] | None = None
        #: Pairs cut on their own (`cut`, or a one-way loss once detected).
        self._split: set[frozenset[int]] = set()
        #: FIFO mode: one-way lost links whose traffic waits, with the hold
        #: object a detection timer checks it is still about.
        self._held: dict[tuple[int, int], object] = {}
        #: Hung endpoints, with the token of their detection timer.
        self._hung: dict[int, object] = {}
        #: Hung endpoints their peers have given up on (FIFO mode).
        self._isolated: set[int] = set()
        #: Latency override for every link of a node (`slow`).
        self._slow: dict[int, tuple[float, float]] = {}
        #: Network-internal events (the sequencer, timers) run in the context
        #: the network was made in, never in a (possibly stopped) endpoint's.
        self._context = contextvars.copy_context()
        self._channels: dict[tuple[int, int], _Channel] = {}
        # FIFO mode: per-endpoint queue of views waiting for removal markers.
        self._pending_views: dict[int, deque[_PendingView]] = {}
        # VS mode: the sequencer's state.
        self._installed: dict[int, View] = {}
        self._next_view_id = 1
        self._awaiting: set[int] | None = None  # flush acks still missing
        self._flushed: set[int] = set()
        # Dead members whose removal is not ordered yet, with their last view.
        self._departed: dict[int, View] = {}

    # -- registry -------------------------------------------------------------

    @classmethod
    def named(cls, name: str, **kwargs: Any) -> MemoryNetwork:
        """The network registered as `name`, created (with `kwargs`) if missing."""
        net = cls._registry.get(name)
        if net is None:
            net = cls(**kwargs)
            cls._registry[name] = net
        return net

    def register(self, name: str) -> MemoryNetwork:
        """Make this network the one `named(name)` (and thus the transports) find."""
        self._registry[name] = self
        return self

    @classmethod
    def unregister(cls, name: str) -> None:
        cls._registry.pop(name, None)

    # -- clock ----------------------------------------------------------------

    def time(self) -> float:
        if self.scheduler is not None:
            return self.scheduler.time()
        return asyncio.get_running_loop().time()

    def _call_later(
        self, delay: float, callback: Callable[..., Any], *args: Any, at: int = SEQUENCER
    ) -> None:
        """Run `callback` after `delay`, on behalf of endpoint `at` (or the network)."""
        if self.scheduler is not None:
            self.scheduler.call_later(delay, callback, *args)
            return
        ep = self._endpoints.get(at)
        context = ep._context if ep is not None and ep._context is not None else self._context
        loop = asyncio.get_running_loop()
        if delay <= 0:
            loop.call_soon(callback, *args, context=context)
        else:
            loop.call_later(delay, callback, *args, context=context)

    def _record(self, event: str) -> None:
        if self.scheduler is not None:
            self.scheduler.record(event)

    @property
    def _tracing(self) -> bool:
        """Per-message trace lines cost a repr each: only made when kept."""
        return self.scheduler is not None and self.scheduler.trace is not None

    # -- topology -------------------------------------------------------------

    @property
    def members(self) -> frozenset[int]:
        """Endpoints currently attached and alive."""
        return frozenset(self._alive)

    def connected(self, a: int, b: int) -> bool:
        if a == b:
            return True
        if self._groups is not None and not any(a in g and b in g for g in self._groups):
            return False
        return frozenset((a, b)) not in self._split and not {a, b} & self._isolated

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

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Split the network; a pnn in no group is isolated on its own."""
        new = [frozenset(g) for g in groups]
        seen: set[int] = set()
        for g in new:
            if seen & g:
                raise ValueError("partition groups overlap")
            seen |= g
        old_connected = self._connections()
        self._groups = new
        self._record(f"partition {sorted(sorted(g) for g in new)}")
        self._topology_changed(old_connected - self._connections())

    def cut(self, a: int, b: int) -> None:
        """Cut the link between `a` and `b` (both ways) while both keep their others."""
        old_connected = self._connections()
        self._split.add(frozenset((a, b)))
        self._record(f"cut {a}-{b}")
        self._topology_changed(old_connected - self._connections())

    def cut_oneway(self, src: int, dst: int, detect_after: float | None = None) -> None:
        """Lose what `src` sends `dst` (an asymmetric fault); see the module docstring."""
        self._record(f"cut {src}->{dst}")
        if self.total_order:
            self.cut(src, dst)  # totem cannot keep a ring over a one-way link
            return
        if (src, dst) in self._held or not self.connected(src, dst):
            return
        hold = self._held[(src, dst)] = object()
        delay = self.detect_after() if detect_after is None else detect_after
        self._call_later(delay, self._detect_oneway, src, dst, hold)

    def _detect_oneway(self, src: int, dst: int, hold: object) -> None:
        if self._held.get((src, dst)) is not hold:
            return
        # The connection is reset: what waited on it is lost (view-change
        # markers go on), then the pair is cut like any other link.
        chan = self._channels.get((src, dst))
        if chan is not None:
            self._drop_from(chan, 0)
        self._release_held([(src, dst)])
        self._record(f"detect {src}->{dst}")
        self.cut(src, dst)

    def restore(self, a: int, b: int) -> None:
        """Undo `cut` / `cut_oneway` between `a` and `b`."""
        self._record(f"restore {a}-{b}")
        self._release_held({(a, b), (b, a)})
        if frozenset((a, b)) in self._split:
            self._split.discard(frozenset((a, b)))
            self._topology_changed(set())

    def _release_held(self, links: Iterable[tuple[int, int]]) -> None:
        for link in links:
            if self._held.pop(link, None) is not None:
                chan = self._channels.get(link)
                if chan is not None and chan.queue:
                    self._call_later(0.0, self._pump, *link, chan.next_seq - 1, at=link[1])

    def heal(self) -> None:
        """Undo every partition and cut (a hung node stays cut off until it resumes)."""
        self._groups = None
        self._split.clear()
        self._release_held(list(self._held))
        self._record("heal")
        self._topology_changed(set())

    def detect_after(self) -> float:
        """How long peers take to give up on a silent node: their keepalive limit."""
        limits = [
            ep.options.keepalive_interval * ep.options.keepalive_limit
            for p, ep in self._endpoints.items()
            if p in self._alive
        ]
        return max(limits, default=1.0)

    def hang(self, pnn: int) -> None:
        """`pnn` stopped processing (SIGSTOP); see the module docstring."""
        if pnn not in self._alive or pnn in self._hung:
            return
        token = self._hung[pnn] = object()
        self._record(f"hang {pnn}")
        if not self.total_order or self.expel_stopped:
            self._call_later(self.detect_after(), self._detect_hang, pnn, token)
        if self.total_order and self._awaiting is not None and pnn in self._awaiting:
            self._flush_ok_for(self._endpoints[pnn])

    def _detect_hang(self, pnn: int, token: object) -> None:
        if self._hung.get(pnn) is not token:
            return
        self._record(f"detect {pnn}")
        old_connected = self._connections()
        self._isolated.add(pnn)
        self._topology_changed(old_connected - self._connections())

    def resume(self, pnn: int) -> None:
        """`pnn` continues (SIGCONT); peers that gave up on it reconnect."""
        if self._hung.pop(pnn, None) is None:
            return
        self._record(f"resume {pnn}")
        if pnn in self._isolated:
            self._isolated.discard(pnn)
            self._topology_changed(set())

    def slow(self, pnn: int, latency: tuple[float, float] | None) -> None:
        """Give every link of `pnn` this latency range (None: back to the default)."""
        if latency is None:
            self._slow.pop(pnn, None)
        else:
            self._slow[pnn] = latency

    def crash(self, pnn: int) -> None:
        """Make endpoint `pnn` vanish abruptly: it delivers and sends nothing more."""
        self._depart(pnn, graceful=False)

    def _depart(self, pnn: int, *, graceful: bool) -> None:
        if pnn not in self._alive:
            return
        self._alive.discard(pnn)
        self._hung.pop(pnn, None)  # a new incarnation starts running
        self._isolated.discard(pnn)
        self._record(f"{'leave' if graceful else 'crash'} {pnn}")
        ep = self._endpoints.get(pnn)
        if ep is not None:
            ep._dead = True
            ep._wake_drainers()
        # Nothing reaches a dead endpoint any more.
        for (_src, dst), chan in self._channels.items():
            if dst == pnn:
                self._drop_from(chan, 0)
        self._pending_views.pop(pnn, None)
        if self.total_order:
            up = self._channels.get((pnn, SEQUENCER))
            if up is not None and not graceful:
                self._cut(up)
            if self._awaiting is not None:
                self._awaiting.discard(pnn)
            if pnn in self._installed:
                self._departed[pnn] = self._installed.pop(pnn)
            self._vs_reconcile()
        else:
            cut = {(pnn, p) for p in self._alive} if not graceful else set()
            self._fifo_topology_changed(cut, removed_from={pnn})

    # -- attach / detach ------------------------------------------------------

    def attach(self, ep: MemoryTransport) -> None:
        if ep.pnn in self._alive:
            raise TransportError(f"pnn {ep.pnn} is already attached to this memory network")
        if self.total_order and ep.pnn in self._departed:
            # Its old incarnation's unordered tail: nobody has any of it, so
            # dropping all of it keeps "all or none" and keeps incarnations apart.
            up = self._channels.get((ep.pnn, SEQUENCER))
            if up is not None:
                self._drop_from(up, 0)
        self._endpoints[ep.pnn] = ep
        self._alive.add(ep.pnn)
        self._record(f"attach {ep.pnn}")
        self._topology_changed(set())

    def detach(self, ep: MemoryTransport) -> None:
        if self._endpoints.get(ep.pnn) is ep:
            self._depart(ep.pnn, graceful=True)

    def _topology_changed(self, cut: set[tuple[int, int]]) -> None:
        if self.total_order:
            self._vs_reconcile()
        else:
            self._fifo_topology_changed(cut, removed_from=set())

    # -- links ----------------------------------------------------------------

    def _channel(self, src: int, dst: int) -> _Channel:
        key = (src, dst)
        chan = self._channels.get(key)
        if chan is None:
            chan = self._channels[key] = _Channel()
        return chan

    def _enqueue(self, src: int, dst: int, item: tuple[Any, ...], size: int, owner: int) -> None:
        """Put `item` on the (src, dst) link with random latency, FIFO with what is queued."""
        chan = self._channel(src, dst)
        now = self.time()
        lo, hi = self._slow.get(src) or self._slow.get(dst) or self.latency
        at = max(now + self.random.uniform(lo, hi), chan.last_at)
        chan.last_at = at
        seq = chan.next_seq
        chan.next_seq += 1
        chan.queue.append(_Packet(seq, item, size, owner))
        if size:
            ep = self._endpoints.get(owner)
            if ep is not None:
                ep._outstanding += size
        # Deliver by sequence number, not by timer order: asyncio's timer heap
        # does not keep insertion order for equal deadlines.
        self._call_later(at - now, self._pump, src, dst, seq, at=dst)

    def _pump(self, src: int, dst: int, upto: int) -> None:
        if (src, dst) in self._held:
            return  # delivered when the link is restored, or lost when detected
        chan = self._channels[(src, dst)]
        while chan.queue and chan.queue[0].seq <= upto:
            packet = chan.queue.popleft()
            self._release(packet)
            if not packet.dropped:
                self._arrive(src, dst, packet.item)

    def _release(self, packet: _Packet) -> None:
        if packet.size:
            ep = self._endpoints.get(packet.owner)
            if ep is not None:
                ep._outstanding -= packet.size
                ep._wake_drainers()
            packet.size = 0

    def _drop_from(self, chan: _Channel, index: int) -> None:
        """Lose the traffic from `index` on. View-change markers are the network's
        own bookkeeping, not traffic: losing one would hold its view back forever."""
        for i, packet in enumerate(chan.queue):
            if i >= index and not packet.dropped and packet.item[0] != "marker":
                packet.dropped = True
                self._release(packet)

    def _cut(self, chan: _Channel) -> None:
        """Lose a random suffix of what is in flight on `chan` (a prefix survives)."""
        live = [i for i, p in enumerate(chan.queue) if not p.dropped and p.item[0] != "marker"]
        if not live:
            return
        keep = self.random.randint(0, len(live))
        if keep < len(live):
            self._drop_from(chan, live[keep])

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
                self._record(f"deliver {origin}->{dst} {_show(payload)}")
            ep.on_message(origin, payload)
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
            pv = _PendingView(target, 0)
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
            pv = queue.popleft()
            if frozenset(ep.view.members) != pv.members:
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
        # Only members still in that very view get it: not a restarted
        # incarnation of a dead member, not members that moved on.
        recipients = [
            d for d in view.members if d in self._alive and self._installed.get(d) is view
        ]
        if kind == "bcast":
            payload = item[1]
            if self._tracing:
                self._record(f"order {src} {_show(payload)}")
            for dst in recipients:
                self._enqueue(SEQUENCER, dst, ("msg", src, payload), 0, dst)
        elif kind == "send":
            dst, payload = item[1], item[2]
            if dst in recipients:
                if self._tracing:
                    self._record(f"order {src}->{dst} {_show(payload)}")
                self._enqueue(SEQUENCER, dst, ("msg", src, payload), 0, dst)
        if src in self._departed:
            self._vs_try_complete()

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

    def _vs_reconcile(self) -> None:
        """Start a flush if some member's view must change and none is running."""
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
        ids: dict[frozenset[int], View] = {}
        for pnn in sorted(changed):
            members = targets[pnn]
            view = ids.get(members)
            if view is None:
                view = ids[members] = View(self._next_view_id, tuple(sorted(members)))
                self._next_view_id += 1
                self._record(f"order view {view.view_id} {list(view.members)}")
            self._installed[pnn] = view
            self._enqueue(SEQUENCER, pnn, ("view", view), 0, pnn)
        # Reality may have moved on while we flushed.
        if self._vs_changed():
            self._vs_reconcile()

    # -- introspection for tests ---------------------------------------------

    def pending_bytes(self, pnn: int) -> int:
        """Payload bytes `pnn` has queued that are not yet delivered (or dropped)."""
        ep = self._endpoints.get(pnn)
        return 0 if ep is None else ep._outstanding


def _show(payload: bytes) -> str:
    """A short, deterministic rendering of a payload for the trace."""
    if len(payload) <= 24:
        return repr(payload)
    return f"{payload[:16]!r}...({len(payload)}B)"


# --------------------------------------------------------------------------
# The Transport


class MemoryTransport(Transport):
    """A `Transport` on a `MemoryNetwork` (by default the one named in
    `options.extra["network"]`, or "default")."""

    name = "memory"

    def __init__(
        self,
        pnn: int,
        nodes: list[str],
        options: TransportOptions,
        network: MemoryNetwork | None = None,
    ) -> None:
        super().__init__(pnn, nodes, options)
        if network is None:
            extra = options.extra
            network = MemoryNetwork.named(
                extra.get("network", "default"),
                total_order=extra.get("total_order", "no").lower() in ("1", "yes", "true", "on"),
                seed=int(extra.get("seed", "0")),
            )
        self.network = network
        self.capabilities = network.capabilities
        self._dead = False
        self._attached = False
        self._outstanding = 0
        self._drainers: list[asyncio.Future[None]] = []
        # VS mode: between flush ack and the next view, messages wait here.
        self._held_mode = network.total_order
        self._held: list[tuple[tuple[Any, ...], int]] = []
        #: Deliveries to this endpoint run in the context it joined in.
        self._context: contextvars.Context | None = None

    # -- lifecycle ------------------------------------------------------------

    def join(self) -> None:
        """Synchronous `start()`, for code driven by a `SimScheduler`."""
        if not self._attached:
            self._dead = False
            self._attached = True
            self._context = contextvars.copy_context()
            self.network.attach(self)

    def leave(self) -> None:
        """Synchronous `stop()`: a graceful departure, everything sent is delivered."""
        if self._attached:
            self._attached = False
            self.network.detach(self)
            self._dead = True
            self._wake_drainers()

    async def start(self) -> None:
        self.join()

    async def stop(self) -> None:
        self.leave()

    # -- output ---------------------------------------------------------------

    def _check(self, payload: bytes) -> bool:
        if len(payload) > MAX_MESSAGE:
            raise TransportError(f"message of {len(payload)} bytes exceeds {MAX_MESSAGE}")
        return self._attached and not self._dead

    def send(self, pnn: int, payload: bytes) -> None:
        if not self._check(payload):
            return
        payload = bytes(payload)
        if self.network.total_order:
            self._vs_out(("send", pnn, payload), len(payload))
        elif pnn in self.view.members:
            self.network._fifo_send(self.pnn, pnn, payload)

    def broadcast(self, payload: bytes) -> None:
        if not self._check(payload):
            return
        payload = bytes(payload)
        if self.network.total_order:
            self._vs_out(("bcast", payload), len(payload))
            return
        for pnn in self.view.members:
            self.network._fifo_send(self.pnn, pnn, payload)

    def _vs_out(self, item: tuple[Any, ...], size: int) -> None:
        if self._held_mode:
            self._held.append((item, size))
            self._outstanding += size
        else:
            self.network._vs_submit(self.pnn, item, size)

    def _vs_install(self, view: View) -> None:
        """A view from the sequencer: install it, then release held messages,
        which thereby belong to the new view."""
        self.view = view
        self._held_mode = False
        held, self._held = self._held, []
        for item, size in held:
            self._outstanding -= size
            self.network._vs_submit(self.pnn, item, size)
        self.on_view(view)

    async def drain(self) -> None:
        """Wait while more than HIGH_WATER bytes of ours are undelivered.

        Under a `Scheduler` nothing can advance while we wait, so this
        returns at once; simulations inspect `network.pending_bytes` instead.
        """
        if self.network.scheduler is not None:
            return
        while self._outstanding > HIGH_WATER and not self._dead:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._drainers.append(fut)
            await fut

    def _wake_drainers(self) -> None:
        if not self._drainers or (self._outstanding > LOW_WATER and not self._dead):
            return
        drainers, self._drainers = self._drainers, []
        for fut in drainers:
            if not fut.done():
                fut.set_result(None)
