"""The virtual-synchrony transport ("vs") on corosync's CPG.

This module is the I/O shell: the CPG handle, its fd, the output queue and
flow control, reconnects, keepalives. The state machine every member runs
over the agreed stream (views, joins, merges, expulsions) is pure code in
`transport.cpg_group`.

Why it is built this way
------------------------

* **One CPG member per process.**  corosync refuses a second ``cpg_join`` of
  the same group from the same pid (``CS_ERR_EXIST``), yet tests and the
  local launcher run several transports in one process.  So every process
  has one `_Connection` per (event loop, network namespace, group); each
  `CpgTransport` is a *logical member* ``(nodeid, pid, lid)`` on it.  Logical
  joins (HELLO) and leaves (BYE) are ordinary messages in the agreed stream,
  so they happen at the same position on every member, exactly like CPG's own
  configuration changes.

* **Views at stream positions.**  Every member runs the same deterministic
  state machine over the same totally ordered stream of CPG deliveries and
  configuration changes: a logical member enters the view at the position of
  its HELLO, leaves at its BYE or at the confchg that removes its process.
  Therefore ``on_view`` fires at the same position on every survivor (virtual
  synchrony) with the same view id.

* **State transfer for joiners.**  A process that joins a group with members
  already in it cannot know their pnns.  At the joiner's confchg position
  every synced member snapshots the state; the leader (lowest synced CPG
  member) multicasts it (STATE).  The joiner buffers the stream from its join
  until its STATE arrives, then replays the buffer from the snapshot, so it
  ends up with exactly the state of the old members.  If the leader dies
  before the STATE is delivered, the next leader resends it.  The first
  members of a group (a confchg where every member is new) start from the
  empty state.

* **Partition merges.**  Groups that formed apart (a cut host healed, a
  restarted corosync whose member reconnected before its ring merged) meet
  in a confchg whose joined members carry reason NODEUP. They have state, so
  instead of a STATE every synced member multicasts its own logical members
  (MERGE); once all are delivered every member installs the union as one
  view whose id is the highest of both sides plus one.

* **Fragmentation.**  Payloads are cut into chunks (default 64 KiB, never
  above ``cpg_max_atomic_msgsize``) so corosync never fragments for us and a
  ``CS_ERR_TRY_AGAIN`` is all-or-nothing per chunk.  Delivery is FIFO per
  sender, so reassembly is a per-sender list; a sender that dies mid-message
  leaves the same incomplete prefix on every survivor, which all drop.

* **No flow control in corosync.**  ``cpg_mcast_joined`` returns
  ``CS_ERR_TRY_AGAIN`` when its queue is full; chunks then wait in our queue
  and are retried from the event loop; `drain()` waits below a high-water mark.

* **Hung members.**  corosync drops a member whose process exits (its IPC
  connection closes) but never one that merely stops reading: it keeps the
  process in the group and queues the group's traffic for it in its own
  memory, without bound, and delivers all of it if the process continues.
  Left alone, such a member would stay in every view (a sync round would wait
  for it) and could be the member a joiner waits for.  So every process
  multicasts a small ALIVE when it has sent nothing else for
  ``keepalive_interval``, and a synced member that hears nothing from another
  for ``keepalive_interval * keepalive_limit`` (while its own messages still
  come back: otherwise the ring itself stalls, and corosync's token timeout
  decides) multicasts EXPEL.  At EXPEL's position every member drops that
  process as if it had left, ignores whatever it sends later, and hands the
  fact to joiners in their snapshot.  The expelled process, when it runs
  again, reaches its own EXPEL in its backlog, reports a view of itself alone,
  drops its connection (and with it the backlog) and joins again: a fresh
  member with a state transfer.  corosync's leave of the old connection
  clears it from the expelled set on every member.

* **corosync failure.**  A dispatch/mcast error or a hang-up on the fd means
  the daemon is gone: every transport reports a view of only itself, and the
  connection reconnects in the background and rejoins (logger
  ``transport.cpg``).  While alone, broadcasts are delivered locally.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import logging
import os
from collections import deque
from collections.abc import Iterable
from typing import ClassVar

import msgpack

from transport import libcpg
from transport.base import Capabilities, Transport, TransportError, TransportOptions, View
from transport.cpg_group import (
    BROADCAST,
    F_MORE,
    HDR,
    K_ALIVE,
    K_BYE,
    K_DATA,
    K_EXPEL,
    K_HELLO,
    Event,
    Group,
    Member,
)

log = logging.getLogger("transport.cpg")

DEFAULT_CHUNK = 64 * 1024
DEFAULT_HIGH_WATER = 8 * 1024 * 1024
RECONNECT_INTERVAL = 0.5
#: after an expulsion: corosync refuses the same pid's join until it has
#: processed the old connection's leave (CS_ERR_EXIST / TRY_AGAIN), then retries
REJOIN_DELAY = 0.05
TRY_AGAIN_DELAY = 0.001
#: CPG events handled per event-loop turn: a process catching up on a long
#: backlog (one that was stopped) keeps its timers and keepalives running.
DISPATCH_BATCH = 256

_lids = itertools.count(1)


class _Connection:
    """One CPG member (this process) carrying any number of logical members."""

    registry: ClassVar[dict[tuple[int, int, str], _Connection]] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop, group: str, chunk: int) -> None:
        self.loop = loop
        self.group = group
        self.want_chunk = chunk
        self.chunk = chunk
        self.transports: dict[int, CpgTransport] = {}
        self.handle: libcpg.CpgHandle | None = None
        self.fd: int | None = None
        self.me: Member = (0, os.getpid())
        #: our logical members, lid -> pnn (the group's state machine sees these)
        self.local: dict[int, int] = {}
        #: the group's state as this process follows it, from the join of the current handle
        self.machine: Group | None = None
        self.outq: deque[bytes] = deque()
        self.out_bytes = 0
        self.retry: asyncio.TimerHandle | None = None
        self.drained = asyncio.Event()
        self.drained.set()
        self.high_water = DEFAULT_HIGH_WATER
        self.events: list[Event] = []
        self.reconnect_task: asyncio.Task[None] | None = None
        self.closed = False
        #: liveness: loop time each CPG member (ourselves included) was last delivered
        self.heard: dict[Member, float] = {}
        #: members we multicast an EXPEL for, until it is applied or they leave
        self.expelling: set[Member] = set()
        self.ticker: asyncio.TimerHandle | None = None
        self.last_tick = 0.0
        self.quiet = True  # nothing multicast since the last tick

    # -- lifecycle ----------------------------------------------------------

    @classmethod
    def get(cls, group: str, chunk: int) -> _Connection:
        loop = asyncio.get_running_loop()
        key = (id(loop), os.stat("/proc/thread-self/ns/net").st_ino, group)
        conn = cls.registry.get(key)
        if conn is None or conn.closed or conn.loop is not loop or loop.is_closed():
            conn = cls(loop, group, chunk)
            conn.key = key
            cls.registry[key] = conn
        return conn

    key: tuple[int, int, str]

    def connect(self) -> None:
        """Open the CPG handle, join the group, watch the fd; raises CpgError."""
        handle = libcpg.CpgHandle(self._cb_deliver, self._cb_confchg)
        try:
            self.me = (handle.local_nodeid(), os.getpid())
            atomic = handle.max_atomic_msgsize()
            self.chunk = max(1024, min(self.want_chunk, atomic - HDR.size - 64))
            handle.join(self.group)
            fd = handle.fd()
        except BaseException:
            handle.finalize()
            raise
        self.handle = handle
        self.fd = fd
        self.machine = Group(self.me, self, self.local)
        self.heard = {}
        self.expelling = set()
        self.loop.add_reader(fd, self._on_readable)
        self.last_tick = self.loop.time()
        self.ticker = self.loop.call_later(self._keepalive()[0], self._tick)
        log.debug("joined CPG group %r as %s", self.group, self.me)
        for t in self.transports.values():
            self._hello(t)

    def attach(self, t: CpgTransport) -> None:
        self.transports[t.lid] = t
        self.local[t.lid] = t.pnn
        if self.handle is not None:
            self._hello(t)

    def detach(self, t: CpgTransport) -> None:
        """Remove a logical member; the last one closes the connection."""
        if self.transports.pop(t.lid, None) is None:
            return
        del self.local[t.lid]
        if self.machine is not None:
            self.machine.active.discard(t.lid)
        if self.handle is not None:
            # Even if our HELLO is still in flight: FIFO puts the BYE after it.
            self._enqueue(K_BYE, t.lid, BROADCAST, b"")
        if not self.transports:
            self.close()

    def close(self) -> None:
        """Leave and finalize; safe on every path, including a dead corosync."""
        if self.closed:
            return
        self.closed = True
        if _Connection.registry.get(self.key) is self:
            del _Connection.registry[self.key]
        if self.reconnect_task is not None:
            self.reconnect_task.cancel()
            self.reconnect_task = None
        if self.handle is not None:
            with contextlib.suppress(libcpg.CpgError):
                self._flush(final=True)
            with contextlib.suppress(libcpg.CpgError):
                self.handle.leave(self.group)
        self._drop_handle()

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
        self.drained.set()

    def _lost(self, why: object) -> None:
        """corosync went away: go solo everywhere and reconnect in the background."""
        if self.handle is None or self.closed:
            return
        log.warning(
            "lost corosync (%s); group %r: reporting solo views, reconnecting every %.1fs",
            why,
            self.group,
            RECONNECT_INTERVAL,
        )
        self._restart()

    def _expelled(self) -> None:
        """The group dropped this process for silence: start over as a fresh member.

        Dropping the handle also discards whatever corosync queued for us
        while we were not reading; the new join brings a state transfer.
        """
        if self.handle is None or self.closed:
            return
        log.warning(
            "group %r expelled this process (silent for more than %.1fs: stopped or "
            "blocked); reporting solo views and joining again",
            self.group,
            self._keepalive()[1],
        )
        # corosync is alive: the only wait is for it to process our leave.
        self._restart(first_attempt=REJOIN_DELAY)

    def _restart(self, first_attempt: float = RECONNECT_INTERVAL) -> None:
        self._drop_handle()
        self.machine = None
        for t in list(self.transports.values()):
            t._go_solo()
        if self.reconnect_task is None:
            self.reconnect_task = self.loop.create_task(self._reconnect(first_attempt))

    async def _reconnect(self, first_attempt: float) -> None:
        attempts = 0
        try:
            while not self.closed:
                await asyncio.sleep(first_attempt if attempts == 0 else RECONNECT_INTERVAL)
                attempts += 1
                try:
                    self.connect()
                except libcpg.CpgError as exc:
                    if attempts % 20 == 1:
                        log.info("corosync still unavailable (%s), retrying", exc)
                    continue
                log.warning("rejoined group %r after %d attempts", self.group, attempts)
                return
        finally:
            self.reconnect_task = None

    # -- liveness ---------------------------------------------------------------

    def _keepalive(self) -> tuple[float, float]:
        """(tick interval, silence after which a member is expelled), from the options."""
        opts = [t.options for t in self.transports.values()] or [TransportOptions()]
        interval = min(o.keepalive_interval for o in opts)
        return interval, min(o.keepalive_interval * o.keepalive_limit for o in opts)

    def _tick(self) -> None:
        """Every keepalive interval: say we are alive if idle, and expel the silent."""
        now = self.loop.time()
        interval, limit = self._keepalive()
        if now - self.last_tick > 2 * interval:
            # We were the silent one (stopped, or a long synchronous step):
            # what we have not read yet says nothing about the others.
            self.heard = dict.fromkeys(self.heard, now)
        self.last_tick = now
        if self.quiet:
            self._enqueue(K_ALIVE, 0, BROADCAST, b"")
        self.quiet = True
        if (
            self.machine is not None
            and self.machine.synced
            and now - self.heard.get(self.me, now) <= limit
        ):
            # Only while our own messages come back: when they do not, the
            # ring itself stalls, and corosync's token timeout decides.
            self._expel_silent(now, limit)
        if self.handle is not None:
            self.ticker = self.loop.call_later(interval, self._tick)

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

    # -- output ---------------------------------------------------------------

    def _hello(self, t: CpgTransport) -> None:
        body = msgpack.packb({"pnn": t.pnn, "last_view_id": t.view.view_id})
        self._enqueue(K_HELLO, t.lid, BROADCAST, body)

    def _enqueue(self, kind: int, lid: int, dest: int, payload: bytes) -> None:
        if self.handle is None:
            return
        self.quiet = False
        chunk = self.chunk
        n = len(payload)
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

    def _flush(self, final: bool = False) -> None:
        """Hand queued chunks to corosync until it says TRY_AGAIN."""
        self.retry = None
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
            self.out_bytes -= len(item) - HDR.size
        if self.out_bytes < self.high_water:
            self.drained.set()
        else:
            self.drained.clear()

    # -- input ----------------------------------------------------------------

    def _cb_deliver(self, group: str, nodeid: int, pid: int, msg: bytes) -> None:
        self.events.append((group, (nodeid, pid), msg))

    def _cb_confchg(
        self,
        group: str,
        members: list[libcpg.CpgAddress],
        left: list[libcpg.CpgAddress],
        joined: list[libcpg.CpgAddress],
    ) -> None:
        self.events.append(
            (
                group,
                [a.member for a in members],
                [a.member for a in left],
                [a.member for a in joined],
                [a.member for a in joined if a.reason == libcpg.Reason.CPG_REASON_NODEUP],
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
        limit = self._keepalive()[1]
        for ev in events:
            if self.handle is not handle:
                break  # lost, expelled or closed while processing
            if len(ev) == 3:
                if ev[1] == self.me and now - self.heard.get(self.me, now) > limit:
                    # Our own messages were held up too: the ring stalled
                    # (corosync re-forming it), so nobody could be heard.
                    self.heard = dict.fromkeys(self.heard, now)
                self.heard[ev[1]] = now
            assert self.machine is not None  # set with the handle
            self.machine.event(ev)
        if more and self.handle is handle:
            # Leave the loop a turn (timers, our own keepalives), then go on.
            self.loop.call_soon(self._on_readable)

    # -- what the group's state machine asks of us (transport.cpg_group.GroupPort) --

    def multicast(self, kind: int, lid: int, dest: int, payload: bytes) -> None:
        self._enqueue(kind, lid, dest, payload)

    def deliver(self, lid: int, src: int, payload: bytes) -> None:
        t = self.transports.get(lid)
        if t is not None:
            t._deliver(src, payload)

    def new_view(self, lid: int, view: View, *, first: bool) -> None:
        t = self.transports.get(lid)
        if t is None:
            return
        if first:
            t._activate(view)
        else:
            t._new_view(view)

    def expelled(self) -> None:
        self._expelled()

    def members_changed(
        self, members: list[Member], left: list[Member], joined: list[Member]
    ) -> None:
        """Liveness bookkeeping: a new member starts heard, a departed one is forgotten."""
        now = self.loop.time()
        for m in left:
            self.heard.pop(m, None)
            self.expelling.discard(m)
        for m in joined:
            self.heard[m] = now

    def expel_applied(self, member: Member) -> None:
        self.expelling.discard(member)


class CpgTransport(Transport):
    """A ctdbd's endpoint on a corosync CPG group (see the module docstring).

    Options (``options.extra``): ``group`` (CPG group name, default "ctdb"),
    ``chunk`` (fragment size in bytes), ``high_water`` (bytes queued before
    `drain()` blocks), ``join_timeout`` (seconds `start()` waits for the view;
    by default 10 s plus twice the keepalive silence limit, since a join may
    have to wait until a stopped member that should send its state transfer
    is expelled).  ``keepalive_interval`` and ``keepalive_limit`` decide when
    a silent member is expelled.
    """

    name: ClassVar[str] = "vs"
    capabilities = Capabilities(
        total_order=True, virtual_synchrony=True, max_message_size=64 * 1024 * 1024
    )

    def __init__(self, pnn: int, nodes: list[str], options: TransportOptions) -> None:
        super().__init__(pnn, nodes, options)
        self.group = options.extra.get("group", "ctdb")
        self.chunk = int(options.extra.get("chunk", DEFAULT_CHUNK))
        self.high_water = int(options.extra.get("high_water", DEFAULT_HIGH_WATER))
        silence = options.keepalive_interval * options.keepalive_limit
        self.join_timeout = float(options.extra.get("join_timeout", 10.0 + 2 * silence))
        self.lid = next(_lids) & 0xFFFF
        self._conn: _Connection | None = None
        self._active: asyncio.Event | None = None
        self._solo = True

    # -- Transport API ----------------------------------------------------------

    async def start(self) -> None:
        if self._conn is not None:
            return
        if not libcpg.available():
            raise TransportError("libcpg.so.4 not found (install Debian package libcpg4)")
        self._active = asyncio.Event()
        conn = _Connection.get(self.group, self.chunk)
        conn.high_water = self.high_water
        self._conn = conn
        conn.attach(self)
        if conn.handle is None and conn.reconnect_task is None:
            try:
                conn.connect()
            except libcpg.CpgError as exc:
                conn.detach(self)
                self._conn = None
                raise TransportError(f"cannot join CPG group {self.group!r}: {exc}") from exc
        try:
            await asyncio.wait_for(self._active.wait(), self.join_timeout)
        except TimeoutError:
            await self.stop()
            raise TransportError(
                f"CPG group {self.group!r}: no view within {self.join_timeout}s"
            ) from None

    async def stop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.detach(self)
        self._solo = True

    def send(self, pnn: int, payload: bytes) -> None:
        if pnn not in self.view.members:
            return
        self._out(pnn, payload)

    def broadcast(self, payload: bytes) -> None:
        self._out(BROADCAST, payload)

    async def drain(self) -> None:
        conn = self._conn
        while conn is not None and not self._solo and conn.out_bytes >= conn.high_water:
            await conn.drained.wait()
            conn = self._conn

    # -- internals ----------------------------------------------------------------

    def _out(self, dest: int, payload: bytes) -> None:
        conn = self._conn
        if conn is None:
            return
        if self._solo:
            # Alone (corosync down): the view is {self}; keep local semantics.
            if dest in (BROADCAST, self.pnn):
                conn.loop.call_soon(self._deliver, self.pnn, bytes(payload))
            return
        conn._enqueue(K_DATA, self.lid, dest, bytes(payload))

    def _deliver(self, src: int, payload: bytes) -> None:
        try:
            self.on_message(src, payload)
        except Exception:
            log.exception("pnn %d: on_message handler failed", self.pnn)

    def _new_view(self, view: View) -> None:
        self.view = view
        try:
            self.on_view(view)
        except Exception:
            log.exception("pnn %d: on_view handler failed", self.pnn)

    def _activate(self, view: View) -> None:
        self._solo = False
        self._new_view(view)
        if self._active is not None:
            self._active.set()

    def _go_solo(self) -> None:
        self._solo = True
        if self.view.members != (self.pnn,):
            self._new_view(View(self.view.view_id + 1, (self.pnn,)))

    @property
    def cpg_member(self) -> tuple[int, int, int] | None:
        """This transport's logical member id (nodeid, pid, lid), for diagnostics."""
        conn = self._conn
        if conn is None:
            return None
        return (conn.me[0], conn.me[1], self.lid)


def transports_in(pnns: Iterable[int], options: TransportOptions) -> list[CpgTransport]:
    """Convenience for tests/benchmarks: one transport per pnn with shared options."""
    nodes = [f"node{p}" for p in pnns]
    return [CpgTransport(p, nodes, copy.deepcopy(options)) for p in pnns]
