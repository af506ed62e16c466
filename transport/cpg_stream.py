"""The traffic of the one CPG member a process has: out, in, and who is alive.

Why a module of its own: `transport.cpg_connection.Connection` decides when
the process is a member at all (joining, losing corosync, being expelled,
reconnecting) and what the group's state machine asks of it; this base class
moves its messages while it is one. Out: payloads cut into chunks of at most
``cpg_max_atomic_msgsize``, small ones of one loop turn sent together,
queued while corosync answers TRY_AGAIN, with a high-water mark for
`drain()`. In: CPG callbacks turned into events for the
state machine (`transport.cpg_group`), dispatched in bounded batches. Alive:
a small ALIVE every tick (with the silence after which we expel), and an
EXPEL for a member silent too long. Why each is done this way is in
`transport.cpg`'s docstring.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
from collections import deque
from typing import TYPE_CHECKING

import msgpack

from transport import libcmap, libcpg
from transport.base import TransportOptions, lease_timing
from transport.cpg_group import Group
from transport.cpg_wire import (
    BROADCAST,
    F_MORE,
    HDR,
    ITEM,
    K_ALIVE,
    K_DATA,
    K_EXPEL,
    K_FOUND,
    K_HELLO,
    SILENCE,
    Event,
    Member,
    batch_message,
)
from transport.libcpg_abi import Reason

if TYPE_CHECKING:
    from transport.cpg import CpgTransport

log = logging.getLogger("transport.cpg")

DEFAULT_HIGH_WATER = 8 * 1024 * 1024
#: the ring's shortest re-forming time assumed when corosync will not tell
#: its own: a consensus timeout of 1 s, shorter than anyone runs (a 1 s
#: token, corosync's default, gives 1.2 s)
DEFAULT_REFORM = 1.0
TRY_AGAIN_DELAY = 0.001
#: CPG events handled per event-loop turn: a process catching up on a long
#: backlog (one that was stopped) keeps its timers and keepalives running.
DISPATCH_BATCH = 256


class CpgStream(abc.ABC):
    """The handle, output queue, event intake and liveness of one CPG member."""

    def __init__(self, loop: asyncio.AbstractEventLoop, group: str, chunk: int) -> None:
        self.loop = loop
        self.group = group
        self.want_chunk = chunk
        self.chunk = chunk
        self.transports: dict[int, CpgTransport] = {}
        self.handle: libcpg.CpgHandle | None = None
        self.fd: int | None = None
        self.me: Member = (0, os.getpid())
        #: the group's state as this process follows it, from the join of the current handle
        self.machine: Group | None = None
        self.outq: deque[bytes] = deque()
        self.out_bytes = 0
        #: DATA payloads of this loop turn, until they go out as one message
        #: (`_close_batch`): (destination, payload), all of logical member `batch_lid`
        self.batch: list[tuple[int, bytes]] = []
        self.batch_lid = 0
        self.batch_bytes = 0
        self.batch_due: asyncio.Handle | None = None
        self.retry: asyncio.TimerHandle | None = None
        self.drained = asyncio.Event()
        self.drained.set()
        self.high_water = DEFAULT_HIGH_WATER
        self.events: list[Event] = []
        #: liveness: loop time each CPG member (ourselves included) was last delivered
        self.heard: dict[Member, float] = {}
        #: members we multicast an EXPEL for, until it is applied or they leave
        self.expelling: set[Member] = set()
        #: loop time of our latest join, and whether we sent a FOUND since
        self.joined_at = 0.0
        self.founding = False
        self.ticker: asyncio.TimerHandle | None = None
        self.last_tick = 0.0
        #: (tick interval, silence after which a member is expelled) as of the
        #: last tick: the options change at run time with `setvar`, a tick
        #: later is soon enough, and every delivered message and every check
        #: of our lease needs them
        self.keepalive = self._keepalive()
        #: `lease_timing` of the inputs it was last worked out for
        self.timing_of: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self.timing = (0.0, 0.0)
        #: loop time each message we handed to corosync was sent, until it comes back
        self.own_sent: deque[float] = deque()
        #: when the latest of our messages that came back was sent (see `confirmed_until`)
        self.confirmed_sent: float | None = None
        #: what `confirmed_until` returns, worked out again at the first
        #: check after a batch of events or a tick (`lease_stale`), not at
        #: each of the several checks every client request makes
        self.lease_until = 0.0
        self.lease_stale = False
        #: how soon corosync may re-form its ring without a member whose
        #: corosync still runs (`transport.libcmap`), read at each connect
        self.reform: float = DEFAULT_REFORM

    @abc.abstractmethod
    def _lost(self, why: object) -> None:
        """A call to corosync failed: it is gone (`Connection` goes solo and reconnects)."""

    @abc.abstractmethod
    def start_over(self, why: str) -> None:
        """Leave the group and join it again as a fresh member."""

    def _drop_handle(self) -> None:
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None
        if self.ticker is not None:
            self.ticker.cancel()
            self.ticker = None
        if self.fd is not None:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.fd)
            self.fd = None
        if self.handle is not None:
            self.handle.finalize()
            self.handle = None
        self.outq.clear()
        self.out_bytes = 0
        self.batch.clear()
        self.batch_bytes = 0
        if self.batch_due is not None:
            self.batch_due.cancel()
            self.batch_due = None
        self.drained.set()
        self.own_sent.clear()
        self.confirmed_sent = None
        self.lease_until = 0.0
        self.lease_stale = False

    # -- liveness ---------------------------------------------------------------

    def confirmed_until(self) -> float:
        """Loop time until which no member can have expelled us yet.

        A member expels us once it has delivered nothing of ours for its
        silence limit, and none delivers a message before we sent it: so
        while the latest message of ours that came back was sent less than
        the shortest limit among the members ago (less one tick, for their
        ticks and clocks), we are in the group and what we applied is all it
        acknowledged. A process that was stopped for longer may have been
        expelled and learns it only when it reaches the expel in its
        backlog; until one of its own messages sent since comes back, it
        must not answer from its copy. Each member announces its limit in
        its HELLO and every ALIVE (`ctdbtool setvar` may give members
        different ones), and a joiner gets them all in its snapshot.

        corosync may leave us out sooner, without the daemons: when the
        network cuts this node off, the others' ring re-forms without it
        after the token and consensus timeouts, and when a node joins that
        reaches them and not us, after the consensus timeout alone
        (`transport.libcmap.RingTimeouts.shortest_reform`). Our message was
        ordered while the ring still held us, so that ring re-forms no
        sooner than that time after it, and the lease ends before that too
        (`transport.base.lease_timing`; tools.simulate, vs seed 40067098: a
        member stopped for 0.14 s across such a cut, and on a later tree
        across such a join, answered a read from its old copy after the
        others had committed).

        What it depends on changes only as events are handled (our message
        came back, a member announced its limit) and at a tick (our own
        options), so it is worked out again only at the first check after
        those. A later check in the same batch of events sees the lease as
        of that first one: the batch is handled at one loop time, as if the
        check came then.
        """
        if self.lease_stale:
            self.lease_stale = False
            sent = self.confirmed_sent
            self.lease_until = 0.0 if sent is None else sent + self._lease_timing()[0]
        return self.lease_until

    def _lease_timing(self) -> tuple[float, float]:
        """(lease, tick period) for the shortest silence any member announced."""
        interval, limit = self.keepalive
        machine = self.machine
        if machine is not None and machine.state.silences:
            limit = min(limit, *machine.state.silences.values())
        inputs = (interval, limit, self.reform)
        if inputs != self.timing_of:
            self.timing_of, self.timing = inputs, lease_timing(*inputs)
        return self.timing

    def _reform_time(self) -> float:
        """corosync's shortest re-forming time (`transport.libcmap`), or a short one assumed."""
        try:
            return libcmap.ring_timeouts().shortest_reform
        except (OSError, libcpg.CpgError) as exc:
            log.warning(
                "cannot read corosync's token and consensus timeouts (%s): "
                "assuming its ring re-forms within %.1fs",
                exc,
                DEFAULT_REFORM,
            )
            return DEFAULT_REFORM

    def _keepalive(self) -> tuple[float, float]:
        """(tick interval, silence after which a member is expelled), from the options."""
        opts = [t.options for t in self.transports.values()] or [TransportOptions()]
        interval = min(o.keepalive_interval for o in opts)
        return interval, min(o.keepalive_interval * o.keepalive_limit for o in opts)

    def _tick(self) -> None:
        """Every keepalive interval: say we are alive if idle, and expel the silent."""
        now = self.loop.time()
        interval, limit = self.keepalive = self._keepalive()
        self.lease_stale = True
        if now - self.last_tick > 2 * interval:
            # We were the silent one (stopped, or a long synchronous step):
            # what we have not read yet says nothing about the others.
            self.heard = dict.fromkeys(self.heard, now)
        self.last_tick = now
        # Every tick, not only when idle: it also tells the others our limit.
        self._enqueue(K_ALIVE, 0, BROADCAST, SILENCE.pack(limit))
        machine = self.machine
        if machine is not None and now - self.heard.get(self.me, now) <= limit:
            # Only while our own messages come back: when they do not, the
            # ring itself stalls, and corosync's token timeout decides.
            if machine.synced:
                self._expel_silent(now, limit)
            elif machine.joined:
                self._found_if_abandoned(now, limit)
        if self.handle is not None:
            self.ticker = self.loop.call_later(self._lease_timing()[1], self._tick)

    def _expel_silent(self, now: float, limit: float) -> None:
        machine = self.machine
        assert machine is not None
        for m in machine.cpg_members:
            if m == self.me or m in machine.state.expelled or m in self.expelling:
                continue
            silent = now - self.heard.setdefault(m, now)
            if silent > limit:
                pnns = machine.pnns_of(m)
                log.warning(
                    "group %r: member %s (pnn %s) silent for %.1fs (stopped or blocked): "
                    "expelling it",
                    self.group,
                    m,
                    ",".join(map(str, pnns)) or "none",
                    silent,
                )
                self.expelling.add(m)
                self._enqueue(K_EXPEL, 0, BROADCAST, msgpack.packb(list(m)))

    def _found_if_abandoned(self, now: float, limit: float) -> None:
        """A joiner whose state nobody sends: every process in the group before
        us silent since our join, for longer than `limit` (see the founding in
        `transport.cpg_group`)."""
        machine = self.machine
        assert machine is not None
        if self.founding or now - self.joined_at <= limit:
            return
        if any(now - self.heard.setdefault(m, now) <= limit for m in machine.older):
            return
        log.warning(
            "group %r: no state transfer, and every member that was in the group before us "
            "(%s) silent for more than %.1fs (stopped or blocked): founding its state anew",
            self.group,
            ", ".join(map(str, sorted(machine.older))) or "none left",
            limit,
        )
        self.founding = True
        body = {
            "members": [list(m) for m in machine.cpg_members],
            "older": [list(m) for m in sorted(machine.older)],
        }
        self._enqueue(K_FOUND, 0, BROADCAST, msgpack.packb(body))

    # -- output ---------------------------------------------------------------

    def _hello(self, t: CpgTransport) -> None:
        body = msgpack.packb(
            {"pnn": t.pnn, "last_view_id": t.view.view_id, "silence": self._keepalive()[1]}
        )
        self._enqueue(K_HELLO, t.lid, BROADCAST, body)

    def _enqueue(self, kind: int, lid: int, dest: int, payload: bytes) -> None:
        if self.handle is None:
            return
        chunk = self.chunk
        n = len(payload)
        if kind == K_DATA and n + ITEM.size <= chunk and (self.own_sent or self.outq or self.batch):
            # Nagle's rule: while a message of ours is on its way (sent, not
            # yet delivered back), a small one waits to go out with the
            # others of this loop turn at its end; with none on its way (a
            # lone request), it goes at once.
            self._add_to_batch(lid, dest, payload)
            return
        if self.batch:
            self._close_batch()  # (what was sent before goes first)
        if n <= chunk:
            self.outq.append(HDR.pack(kind, 0, lid, dest) + payload)
            self.out_bytes += n
        else:
            view = memoryview(payload)
            for off in range(0, n, chunk):
                more = F_MORE if off + chunk < n else 0
                self.outq.append(HDR.pack(kind, more, lid, dest) + view[off : off + chunk])
            self.out_bytes += n
        if self.out_bytes >= self.high_water:
            self.drained.clear()
        if self.retry is None:
            self._flush()

    def _add_to_batch(self, lid: int, dest: int, payload: bytes) -> None:
        """Queue a small DATA payload to go out with the others of this loop
        turn (a daemon answering many clients sends many in one turn): at
        its end (`_send_batch`), or before anything else queued after it."""
        size = ITEM.size + len(payload)
        if self.batch and (lid != self.batch_lid or self.batch_bytes + size > self.chunk):
            self._close_batch()
        self.batch_lid = lid
        self.batch.append((dest, payload))
        self.batch_bytes += size
        self.out_bytes += len(payload)
        if self.out_bytes >= self.high_water:
            self.drained.clear()
        if self.batch_due is None:
            self.batch_due = self.loop.call_soon(self._send_batch)

    def _send_batch(self) -> None:
        self.batch_due = None
        if self.retry is None:
            self._flush()  # (which closes the batch)
        else:
            self._close_batch()

    def _close_batch(self) -> None:
        """Queue the batch as one message: a plain DATA message if it holds one."""
        batch = self.batch
        if not batch:
            return
        lid = self.batch_lid
        if len(batch) == 1:
            dest, payload = batch[0]
            self.outq.append(HDR.pack(K_DATA, 0, lid, dest) + payload)
        else:
            self.outq.append(batch_message(lid, batch))
            # (what `_flush` takes off `out_bytes` for it counts the headers)
            self.out_bytes += ITEM.size * len(batch)
        self.batch = []
        self.batch_bytes = 0

    def _flush(self, final: bool = False) -> None:
        """Hand queued chunks to corosync until it says TRY_AGAIN."""
        self.retry = None
        if self.batch:
            self._close_batch()
        handle = self.handle
        q = self.outq
        while q and handle is not None:
            item = q[0]
            try:
                handle.mcast(item)
            except libcpg.CpgError as exc:
                if exc.try_again:
                    if final:
                        raise
                    self.retry = self.loop.call_later(TRY_AGAIN_DELAY, self._flush)
                    break
                self._lost(exc)
                return
            q.popleft()
            self.own_sent.append(self.loop.time())
            self.out_bytes -= len(item) - HDR.size
        if self.out_bytes < self.high_water:
            self.drained.set()
        else:
            self.drained.clear()

    # -- input ----------------------------------------------------------------

    def _cb_deliver(self, nodeid: int, pid: int, msg: bytes) -> None:
        self.events.append(((nodeid, pid), msg))

    def _cb_confchg(
        self,
        members: list[libcpg.CpgAddress],
        left: list[libcpg.CpgAddress],
        joined: list[libcpg.CpgAddress],
    ) -> None:
        self.events.append(
            (
                [a.member for a in members],
                [a.member for a in left],
                [a.member for a in joined],
                [a.member for a in joined if a.reason == Reason.CPG_REASON_NODEUP],
            )
        )

    def _on_readable(self) -> None:
        handle = self.handle
        if handle is None:
            return
        try:
            more = handle.dispatch_some(DISPATCH_BATCH)
        except libcpg.CpgError as exc:
            self.events.clear()
            self._lost(exc)
            return
        events, self.events = self.events, []
        now = self.loop.time()
        limit = self.keepalive[1]
        machine = self.machine
        assert machine is not None  # set with the handle
        me = self.me
        for ev in events:
            if self.handle is not handle:
                break  # lost, expelled or closed while processing
            if len(ev) == 2:
                src = ev[0]
                if src == me:
                    if now - self.heard.get(me, now) > limit:
                        # Our own messages were held up too: the ring stalled
                        # (corosync re-forming it), so nobody could be heard.
                        self.heard = dict.fromkeys(self.heard, now)
                    if self.own_sent:
                        self.confirmed_sent = self.own_sent.popleft()
                self.heard[src] = now
            try:
                machine.event(ev)
            except Exception:
                # A bug: the machine's state is unknown, and the rest of
                # this batch would be lost here alone. Only a fresh join
                # (a state transfer) makes this process a member like the others.
                log.exception("group %r: the group's state machine failed on an event", self.group)
                self.start_over("the group's state machine failed (a bug; logged above)")
                return
        self.lease_stale = True
        if more and self.handle is handle:
            # Leave the loop a turn (timers, our own keepalives), then go on.
            self.loop.call_soon(self._on_readable)
