"""In-process transport for tests and simulation.

`MemoryTransport` is one endpoint on a `transport.memory_network.MemoryNetwork`,
whose docstring describes the two modes (FIFO like tcp, VS like corosync's
CPG) and the fault model. Why the split: the transport is the small part a
daemon sees (`--transport memory`); the network, with its fault injection,
is what tests and the simulator drive.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from transport.base import Transport, TransportError, TransportOptions, View, lease_timing
from transport.memory_network import MAX_MESSAGE, MemoryNetwork

HIGH_WATER = 4 * 1024 * 1024
LOW_WATER = HIGH_WATER // 2


def _size(item: tuple[Any, ...]) -> int:
    """The payload bytes of a VS item (what `_vs_out` counts against back-pressure)."""
    if item[0] == "bcast":
        return len(item[1])
    if item[0] == "send":
        return len(item[2])
    return 0


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
        #: VS mode: when the latest of our broadcasts (or ticks) that came back
        #: was sent (see `confirmed_until`)
        self._confirmed_sent: float | None = None
        #: FIFO mode: peers that left our view by crashing or leaving (`left_in_order`)
        self._closed_in_order: frozenset[int] = frozenset()

    # -- lifecycle ------------------------------------------------------------

    def join(self) -> None:
        """Synchronous `start()`, for code driven by a `SimScheduler`."""
        if not self._attached:
            self._dead = False
            self._attached = True
            self._context = contextvars.copy_context()
            self._confirmed_sent = None
            self.network.attach(self)
            if self._leased:
                self._tick()

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

    def left_in_order(self, pnn: int) -> bool:
        """FIFO mode, as tcp: a peer that crashed or left closed its
        connections; one that a cut, a partition or a hang took away did not."""
        return pnn in self._closed_in_order and pnn not in self.view

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
            self._vs_out(("bcast", payload, self.network.time()), len(payload))
            return
        for pnn in self.view.members:
            self.network._fifo_send(self.pnn, pnn, payload)

    def _vs_out(self, item: tuple[Any, ...], size: int) -> None:
        if self._held_mode:
            self._held.append((item, size))
            self._outstanding += size
        else:
            self.network._vs_submit(self.pnn, item, size)

    # -- VS mode: may we have been expelled without knowing it yet? ------------

    @property
    def _leased(self) -> bool:
        """VS mode on an event loop. Not over FIFO (tcp's engine keeps its own
        lease), nor under a `Scheduler`: transport-level tests run those until
        no event is left, which periodic ticks would never allow, and nothing
        there asks for a lease."""
        return self.network.total_order and self.network.scheduler is None

    def _tick(self) -> None:
        """Every keepalive interval a tick to ourselves through the sequencer,
        as the vs transport's ALIVE: it keeps `confirmed_until` current (one
        skipped after a broadcast would let the lease lapse by a latency).
        A stopped node's ticks stop with it (they run in its context)."""
        if not self._attached or self._dead:
            return
        self._vs_out(("tick", self.network.time()), 0)
        self.network._call_later(self._lease_timing()[1], self._tick, at=self.pnn)

    def _lease_timing(self) -> tuple[float, float]:
        """(lease, tick period): `transport.base.lease_timing` for our tunables
        and the network's shortest ring re-forming time."""
        interval, limit = self.options.keepalive_interval, self.options.keepalive_limit
        return lease_timing(interval, interval * limit, self.network.gather_timeout or None)

    def _came_back(self, sent: float) -> None:
        """One of our broadcasts or ticks, sent at `sent`, was delivered to us."""
        if self._confirmed_sent is None or sent > self._confirmed_sent:
            self._confirmed_sent = sent

    def confirmed_until(self) -> float | None:
        """VS mode: the lease of `transport.cpg_stream.CpgStream.confirmed_until`.

        The network expels a stopped member after the keepalive silence, a
        member a cut isolates after its `ring_timeout`, and one a joiner
        does not reach after its `gather_timeout`; the member learns it only
        when it reaches that view among what was queued for it, and until
        then it must not answer from its copy. Nobody can have left it out
        before its latest message that came back was sent, so that time plus
        the lease of `transport.base.lease_timing` is safe. With none, or in
        a view of itself alone, nothing is confirmed (unless the cluster has
        one node); over FIFO (tcp) the engine keeps its own lease.
        """
        if not self._leased or len(self.nodes) == 1:
            return None
        if self._confirmed_sent is None or self.view.members == (self.pnn,):
            return 0.0
        return self._confirmed_sent + self._lease_timing()[0]

    def _not_ordered(self, items: list[tuple[Any, ...]]) -> None:
        """VS mode: what we sent that a broken ring never ordered: it goes out
        after our next view, before what we held since (see
        `ViewLayer._stall_over`)."""
        self._held_mode = True
        again = [(item, _size(item)) for item in items]
        self._held[0:0] = again
        self._outstanding += sum(size for _, size in again)

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
