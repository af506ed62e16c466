"""The links of the simulated network: FIFO channels with random latency.

Why a module of its own: a link behaves the same in both modes of
`transport.memory_network.MemoryNetwork`. It carries items in order with a
random delay (on a seeded `Scheduler`'s virtual time, or on the running
asyncio loop), counts what it holds against its sender's back-pressure
budget, and when a fault cuts it, loses a suffix of what is in flight, never
a gap. What an item means once it arrives is the business of the layer
above (`transport.memory_views`).
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from transport.memory import MemoryTransport

#: Pseudo-pnn of the VS sequencer in channel keys.
SEQUENCER = -1


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


@dataclass(slots=True)
class _Packet:
    seq: int
    item: tuple[Any, ...]
    size: int
    owner: int  # pnn whose back-pressure budget this packet counts against
    #: VS mode: the message's place in the sequencer's one order (-1: not a message)
    order: int = -1
    dropped: bool = False


@dataclass
class _Channel:
    """One FIFO link. `last_at` makes a later packet never overtake an earlier one."""

    queue: deque[_Packet] = field(default_factory=deque)
    last_at: float = -math.inf
    next_seq: int = 0


def show_payload(payload: bytes) -> str:
    """A short, deterministic rendering of a payload for the trace."""
    if len(payload) <= 24:
        return repr(payload)
    return f"{payload[:16]!r}...({len(payload)}B)"


class LinkLayer(abc.ABC):
    """The clock and the links of a `MemoryNetwork` (its lowest layer)."""

    def __init__(
        self, scheduler: Scheduler | None, *, seed: int, latency: tuple[float, float]
    ) -> None:
        self.scheduler = scheduler
        self.random = scheduler.random if scheduler is not None else random.Random(seed)
        self.latency = latency
        self._endpoints: dict[int, MemoryTransport] = {}
        #: FIFO mode: one-way lost links whose traffic waits, with the hold
        #: object a detection timer checks it is still about.
        self._held: dict[tuple[int, int], object] = {}
        #: Latency override for every link of a node (`slow`).
        self._slow: dict[int, tuple[float, float]] = {}
        #: Network-internal events (the sequencer, timers) run in the context
        #: the network was made in, never in a (possibly stopped) endpoint's.
        self._context = contextvars.copy_context()
        self._channels: dict[tuple[int, int], _Channel] = {}
        #: VS mode: the latest place in the sequencer's order each endpoint got
        self._delivered: dict[int, int] = {}

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

    # -- links ----------------------------------------------------------------

    def _channel(self, src: int, dst: int) -> _Channel:
        key = (src, dst)
        chan = self._channels.get(key)
        if chan is None:
            chan = self._channels[key] = _Channel()
        return chan

    def _enqueue(
        self,
        src: int,
        dst: int,
        item: tuple[Any, ...],
        size: int,
        owner: int,
        order: int = -1,
        *,
        fastest: bool = False,
    ) -> None:
        """Put `item` on the (src, dst) link with random latency, FIFO with what is
        queued; `fastest`: the link's lowest latency."""
        chan = self._channel(src, dst)
        now = self.time()
        lo, hi = self._slow.get(src) or self._slow.get(dst) or self.latency
        at = max(now + self.random.uniform(lo, lo if fastest else hi), chan.last_at)
        chan.last_at = at
        seq = chan.next_seq
        chan.next_seq += 1
        chan.queue.append(_Packet(seq, item, size, owner, order))
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
                if packet.order >= 0:
                    self._delivered[dst] = packet.order
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

    @abc.abstractmethod
    def _arrive(self, src: int, dst: int, item: tuple[Any, ...]) -> None:
        """`item` came off the (src, dst) link: what it means is the view layer's business."""
