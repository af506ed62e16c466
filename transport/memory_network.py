"""The in-process network for tests and simulation, and its fault model.

`MemoryNetwork`, which `transport.memory.MemoryTransport`s attach to: a fake
network with fault injection (crash, partition, heal) in two modes, chosen
per network:

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
    in-flight tail is cut at one point for everybody: all or none). With
    `agreed_only` (the simulator's), as corosync's agreed order allows, a
    crash or a split may also take from the members that go on together
    the last messages of those they part from, which the senders delivered
    themselves (`ViewLayer._lose_suffix`).

Faults beyond crashes and clean partitions, for the simulator
(`tools/sim`):

* `cut(a, b)`: one pair cannot talk while both still talk to others, which
  builds non-transitive partitions ({0,2} and {1,2} connected, 0-1 cut).
  FIFO mode gives each endpoint its own view, as TCP does; VS mode, like
  totem, installs views of groups whose members all reach each other. With
  a `ring_timeout` (the simulator's), VS mode changes views only after a
  cut has lasted that long, as corosync re-forms its ring after its token
  and consensus timeouts, and orders nothing in the broken view meanwhile
  (`ViewLayer._vs_stalled`).
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
  callbacks of one stopped node (see `tools/sim/loop.py`). As over corosync,
  a resumed member learns that it was expelled only when it reaches that
  view among what was queued for it; until then the transport's lease
  (`MemoryTransport.confirmed_until`, kept by ticks) says it may not serve.
* `slow(pnn, latency)`: a latency spike on one node's links.

The network runs on a seeded virtual-time `Scheduler` when given one (a run
is then a pure function of the seed and can be replayed exactly; see
`tools/sim/scheduler.py`), and otherwise on the asyncio loop that is running
when it is used (wall-clock latency), so the same backend serves the
asyncio-based conformance suite, the simulator and the daemon
(`--transport memory`).

The network is built in layers, one module each: the links
(`transport.memory_links`), who reaches whom and the views each mode makes
of it (`transport.memory_views`), and here the registry of named networks,
the fault injection and endpoints attaching and departing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from transport.base import Capabilities, TransportError
from transport.memory_links import SEQUENCER, Scheduler
from transport.memory_views import ViewLayer

if TYPE_CHECKING:
    from transport.memory import MemoryTransport

MAX_MESSAGE = 64 * 1024 * 1024


class MemoryNetwork(ViewLayer):
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
        agreed_only: bool = False,
        ring_timeout: float = 0.0,
    ) -> None:
        if latency[0] < 0 or latency[1] < latency[0]:
            raise ValueError(f"bad latency range {latency!r}")
        super().__init__(
            scheduler,
            seed=seed,
            total_order=total_order,
            latency=latency,
            agreed_only=agreed_only,
            ring_timeout=ring_timeout,
        )
        #: VS mode: a stopped member leaves the views after `detect_after`, as
        #: the vs transport expels a member that stops reading; False models
        #: corosync alone, which keeps such a process in the group for ever.
        self.expel_stopped = expel_stopped
        self.capabilities = Capabilities(
            total_order=total_order, virtual_synchrony=total_order, max_message_size=MAX_MESSAGE
        )

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

    # -- faults -------------------------------------------------------------

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

    def cut(self, a: int, b: int, noticed_late: tuple[int, float] | None = None) -> None:
        """Cut the link between `a` and `b` (both ways) while both keep their others.

        `noticed_late` = (endpoint, seconds): that end drops the other so
        much later than the other end drops it (FIFO mode). Over TCP each
        end notices a silent link on its own keepalive timer, so one may
        act (recover without the other) while the other still serves.
        """
        old_connected = self._connections()
        if noticed_late is not None and not self.total_order:
            self._notice_late[noticed_late[0]] = noticed_late[1]
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
        self._notice_late.pop(a, None)
        self._notice_late.pop(b, None)
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
        self._notice_late.clear()
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

    def after_own_delivery(self, pnn: int, callback: Callable[[], None] | None) -> None:
        """VS mode: call `callback` once `pnn` has delivered its next own broadcast
        (None: no longer). The simulator crashes a node there: the moment its
        daemon may have acknowledged what that message carried, which its
        peers may not have yet (see `agreed_only`)."""
        if callback is None:
            self._after_own.pop(pnn, None)
        else:
            self._after_own[pnn] = callback

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
            if not graceful:
                self._crash_cut(pnn)
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
            # Nor what a broken ring held back of it (`_vs_stalled`): it would
            # go out again as the new incarnation's.
            for parked in self._parked.values():
                parked[:] = [entry for entry in parked if entry[0] != ep.pnn]
        self._endpoints[ep.pnn] = ep
        self._alive.add(ep.pnn)
        self._record(f"attach {ep.pnn}")
        self._topology_changed(set())

    def detach(self, ep: MemoryTransport) -> None:
        if self._endpoints.get(ep.pnn) is ep:
            self._depart(ep.pnn, graceful=True)

    # -- introspection for tests ---------------------------------------------

    def pending_bytes(self, pnn: int) -> int:
        """Payload bytes `pnn` has queued that are not yet delivered (or dropped)."""
        ep = self._endpoints.get(pnn)
        return 0 if ep is None else ep._outstanding
