"""The virtual-synchrony transport ("vs") on corosync's CPG.

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
import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

from transport import libcpg
from transport.base import Capabilities, Transport, TransportError, TransportOptions, View

log = logging.getLogger("transport.cpg")

# Wire header of every CPG message: kind, flags, logical id, destination pnn.
_HDR = struct.Struct("<BBHi")
K_HELLO, K_DATA, K_STATE, K_BYE, K_MERGE, K_ALIVE, K_EXPEL = 1, 2, 3, 4, 5, 6, 7
F_MORE = 1  # more fragments of this message follow
BROADCAST = -1

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

Member = tuple[int, int]  # CPG member: (nodeid, pid)
Logical = tuple[int, int, int]  # logical member: (nodeid, pid, lid)

_lids = itertools.count(1)


@dataclass
class _State:
    """What every synced member agrees on at a given stream position."""

    members: dict[Logical, int] = field(default_factory=dict)  # -> pnn
    view_id: int = 0
    view: tuple[int, ...] = ()
    synced: set[Member] = field(default_factory=set)
    # joiner -> snapshot at its join position, until its STATE is delivered
    pending: dict[Member, dict[str, Any]] = field(default_factory=dict)
    # processes expelled for silence, until corosync reports that they left
    expelled: set[Member] = field(default_factory=set)

    def snapshot(self) -> dict[str, Any]:
        """A msgpack-able copy; pending joiners' snapshots are nested one level deep."""
        return {
            "members": [[n, p, lid, pnn] for (n, p, lid), pnn in sorted(self.members.items())],
            "view_id": self.view_id,
            "view": list(self.view),
            "synced": [list(m) for m in sorted(self.synced)],
            "pending": [[list(m), {**s, "pending": []}] for m, s in sorted(self.pending.items())],
            "expelled": [list(m) for m in sorted(self.expelled)],
        }

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> _State:
        return cls(
            members={(n, p, lid): pnn for n, p, lid, pnn in snap["members"]},
            view_id=snap["view_id"],
            view=tuple(snap["view"]),
            synced={(m[0], m[1]) for m in snap["synced"]},
            pending={(m[0], m[1]): s for m, s in snap["pending"]},
            expelled={(m[0], m[1]) for m in snap["expelled"]},
        )


# Events recorded from the CPG callbacks and processed after cpg_dispatch returns.
# (group, members, left, joined, joined by a partition merge: reason NODEUP)
_Confchg = tuple[str, list[Member], list[Member], list[Member], list[Member]]
_Deliver = tuple[str, Member, bytes]
_Event = _Confchg | _Deliver


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
        self.joined = False  # our own join confchg was seen
        self.synced = False
        self.state = _State()
        self.cpg_members: list[Member] = []
        self.buffer: list[_Event] = []  # while waiting for STATE
        self.base_snapshot_members: list[Member] = []
        self.active: set[int] = set()  # lids whose HELLO was delivered
        self.fragments: dict[Logical, list[bytes]] = {}
        self.peek_fragments: dict[Logical, list[bytes]] = {}
        self.outq: deque[bytes] = deque()
        self.out_bytes = 0
        self.retry: asyncio.TimerHandle | None = None
        self.drained = asyncio.Event()
        self.drained.set()
        self.high_water = DEFAULT_HIGH_WATER
        self.events: list[_Event] = []
        self.reconnect_task: asyncio.Task[None] | None = None
        self.closed = False
        #: partition merge in progress: members whose MERGE we still wait for
        self.merge_expect: set[Member] | None = None
        self.merge_view_id = 0
        #: the members that had state when the merge began
        self.merge_members: set[Member] = set()
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
            self.chunk = max(1024, min(self.want_chunk, atomic - _HDR.size - 64))
            handle.join(self.group)
            fd = handle.fd()
        except BaseException:
            handle.finalize()
            raise
        self.handle = handle
        self.fd = fd
        self.joined = False
        self.synced = False
        self.state = _State()
        self.buffer = []
        self.fragments = {}
        self.peek_fragments = {}
        self.active = set()
        self.merge_expect = None
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
        if self.handle is not None:
            self._hello(t)

    def detach(self, t: CpgTransport) -> None:
        """Remove a logical member; the last one closes the connection."""
        if self.transports.pop(t.lid, None) is None:
            return
        self.active.discard(t.lid)
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
        self.active.clear()
        self.synced = False
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
        if self.synced and now - self.heard.get(self.me, now) <= limit:
            # Only while our own messages come back: when they do not, the
            # ring itself stalls, and corosync's token timeout decides.
            self._expel_silent(now, limit)
        if self.handle is not None:
            self.ticker = self.loop.call_later(interval, self._tick)

    def _expel_silent(self, now: float, limit: float) -> None:
        st = self.state
        for m in self.cpg_members:
            if m == self.me or m in st.expelled or m in self.expelling:
                continue
            silent = now - self.heard.setdefault(m, now)
            if silent > limit:
                pnns = sorted(pnn for lm, pnn in st.members.items() if (lm[0], lm[1]) == m)
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
            self.outq.append(_HDR.pack(kind, 0, lid, dest) + payload)
            self.out_bytes += n
        else:
            view = memoryview(payload)
            for off in range(0, n, chunk):
                more = F_MORE if off + chunk < n else 0
                self.outq.append(_HDR.pack(kind, more, lid, dest) + view[off : off + chunk])
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
            self.out_bytes -= len(item) - _HDR.size
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
            self._event(ev)
        if more and self.handle is handle:
            # Leave the loop a turn (timers, our own keepalives), then go on.
            self.loop.call_soon(self._on_readable)

    def _event(self, ev: _Event) -> None:
        if not self.joined:
            if len(ev) == 5 and self.me in ev[3]:  # our own join confchg
                _, members, _left, joined, _merged = ev
                self.joined = True
                self.cpg_members = list(members)
                self.heard = dict.fromkeys(members, self.loop.time())
                if set(members) == set(joined):
                    # Every member is new: we found the group's state together.
                    self.state = _State(synced=set(members))
                    self.synced = True
                else:
                    self.base_snapshot_members = list(members)
            return
        if not self.synced:
            self.buffer.append(ev)
            if len(ev) == 3:
                if self._peek_expel(ev):
                    # Expelled before our STATE was sent, nobody sends it now.
                    self._expelled()
                    return
                body = self._peek_state(ev)
                if body is not None:
                    self._install(body)
            else:
                self.cpg_members = list(ev[1])
                self._track_confchg(ev[2], ev[3])
            return
        self._apply(ev)

    def _peek_expel(self, ev: _Deliver) -> bool:
        """Is `ev` an EXPEL naming this process (joiner side)?"""
        msg = ev[2]
        if len(msg) < _HDR.size or _HDR.unpack_from(msg)[0] != K_EXPEL:
            return False
        return tuple(msgpack.unpackb(msg[_HDR.size :])) == self.me

    def _peek_state(self, ev: _Deliver) -> dict[str, Any] | None:
        """The STATE addressed to us, if `ev` is one (joiner side)."""
        msg = ev[2]
        if len(msg) < _HDR.size:
            return None
        kind, flags, _lid, _dest = _HDR.unpack_from(msg)
        if kind != K_STATE:
            return None
        sender = (ev[1][0], ev[1][1], _lid)
        if flags & F_MORE:
            self.peek_fragments.setdefault(sender, []).append(msg[_HDR.size :])
            return None
        whole = b"".join([*self.peek_fragments.pop(sender, []), msg[_HDR.size :]])
        body: dict[str, Any] = msgpack.unpackb(whole, strict_map_key=False)
        if tuple(body["target"]) != self.me:
            return None
        return body

    def _install(self, body: dict[str, Any]) -> None:
        """Adopt the leader's snapshot (taken at our join) and replay what followed."""
        snap = body["snapshot"]
        self.state = _State.restore(snap)
        self.cpg_members = list(self.base_snapshot_members)
        self.synced = True
        # Partial messages in flight at our join: complete them like everyone else.
        self.fragments = {(n, p, lid): list(parts) for n, p, lid, parts in snap["fragments"]}
        self.peek_fragments = {}
        buffered, self.buffer = self.buffer, []
        log.debug("%s: state transfer received, replaying %d events", self.me, len(buffered))
        for ev in buffered:
            self._apply(ev)

    def _apply(self, ev: _Event) -> None:
        if len(ev) == 5:
            self._apply_confchg(ev[1], ev[2], ev[3], ev[4])
        else:
            self._apply_message(ev[1], ev[2])

    def _reassemble(self, sender: Logical, flags: int, msg: bytes) -> bytes | None:
        """Collect fragments per logical sender (FIFO per sender makes this enough)."""
        if flags & F_MORE:
            self.fragments.setdefault(sender, []).append(msg[_HDR.size :])
            return None
        parts = self.fragments.pop(sender, None)
        if parts is None:
            return msg[_HDR.size :]
        parts.append(msg[_HDR.size :])
        return b"".join(parts)

    def _apply_message(self, src: Member, msg: bytes) -> None:
        if len(msg) < _HDR.size or src in self.state.expelled:
            return  # an expelled process no longer counts, whatever it sends
        kind, flags, lid, dest = _HDR.unpack_from(msg)
        sender = (src[0], src[1], lid)
        payload = self._reassemble(sender, flags, msg)
        if payload is None:
            return
        st = self.state
        if kind == K_DATA:
            pnn = st.members.get(sender)
            if pnn is None:
                return
            for t in list(self.transports.values()):
                if t.lid in self.active and (dest == BROADCAST or dest == t.pnn):
                    t._deliver(pnn, payload)
        elif kind == K_HELLO:
            body = msgpack.unpackb(payload)
            st.view_id = max(st.view_id, int(body["last_view_id"]))
            st.members[sender] = int(body["pnn"])
            self._recompute()
            if src == self.me and lid in self.transports and lid not in self.active:
                self.active.add(lid)
                self.transports[lid]._activate(View(st.view_id, st.view))
        elif kind == K_BYE:
            if st.members.pop(sender, None) is not None:
                self._recompute()
        elif kind == K_MERGE:
            self._on_merge(src, msgpack.unpackb(payload, strict_map_key=False))
        elif kind == K_EXPEL:
            self._on_expel(src, tuple(msgpack.unpackb(payload)))
        elif kind == K_STATE:
            body = msgpack.unpackb(payload, strict_map_key=False)
            target = (body["target"][0], body["target"][1])
            if target in self.cpg_members:
                st.synced.add(target)
            st.pending.pop(target, None)

    def _apply_confchg(
        self,
        members: list[Member],
        left: list[Member],
        joined: list[Member],
        merged: list[Member],
    ) -> None:
        st = self.state
        self.cpg_members = list(members)
        self._track_confchg(left, joined)
        if self.merge_expect is not None:
            self.merge_expect &= set(members)  # a member lost mid-merge sends nothing
        gone = set(left)
        st.expelled -= gone  # it may come back: as a fresh member
        changed = False
        for lm in [lm for lm in st.members if (lm[0], lm[1]) in gone]:
            del st.members[lm]
            changed = True
        for lm in [lm for lm in self.fragments if (lm[0], lm[1]) in gone]:
            del self.fragments[lm]
        for m in gone:
            st.synced.discard(m)
            st.pending.pop(m, None)
        if changed:
            self._recompute()
        if merged:
            self._start_merge(members, joined, merged)
        # Members of a partition we merge with are not joiners: they have state.
        new = [j for j in joined if j != self.me and j not in merged]
        for j in new:
            snap = st.snapshot()
            snap["fragments"] = [[*lm, parts] for lm, parts in sorted(self.fragments.items())]
            st.pending[j] = snap
        if self.merge_expect is not None:
            self._finish_merge()
        # A new joiner gets its snapshot; after a departure (maybe of the old
        # leader) every still-pending joiner gets it again (duplicates are ignored).
        self._send_states(sorted(st.pending) if left else new)

    def _send_states(self, targets: list[Member]) -> None:
        """The leader (lowest synced member) sends pending joiners their snapshots."""
        st = self.state
        present = [m for m in sorted(st.synced) if m in self.cpg_members]
        if not present or present[0] != self.me:
            return
        for target in targets:
            if target in self.cpg_members and target in st.pending:
                body = msgpack.packb({"target": list(target), "snapshot": st.pending[target]})
                self._enqueue(K_STATE, 0, BROADCAST, body)

    def _track_confchg(self, left: list[Member], joined: list[Member]) -> None:
        """Liveness bookkeeping: a new member starts heard, a departed one is forgotten."""
        now = self.loop.time()
        for m in left:
            self.heard.pop(m, None)
            self.expelling.discard(m)
        for m in joined:
            self.heard[m] = now

    # -- expulsion of silent members -------------------------------------------

    def _on_expel(self, src: Member, target: tuple[Any, ...]) -> None:
        """An EXPEL at its stream position: the same decision on every member.

        Only a member that holds the group's state may expel (a synced one,
        or during a partition merge any member of the merging sides, since
        each side counts only its own as synced until the MERGEs arrive).
        """
        if len(target) != 2 or src == target:
            return
        merging = self.merge_expect is not None and src in self.merge_members
        if src not in self.state.synced and not merging:
            return
        victim: Member = (int(target[0]), int(target[1]))
        if self._mark_expelled(victim):
            self._after_expel(victim)

    def _mark_expelled(self, m: Member) -> bool:
        """Drop process `m` from the state as if it had left; False if nothing to do."""
        st = self.state
        if m in st.expelled or m not in self.cpg_members:
            return False
        st.expelled.add(m)
        st.synced.discard(m)
        st.pending.pop(m, None)
        for lm in [lm for lm in st.members if (lm[0], lm[1]) == m]:
            del st.members[lm]
        for lm in [lm for lm in self.fragments if (lm[0], lm[1]) == m]:
            del self.fragments[lm]
        self.expelling.discard(m)
        if self.merge_expect is not None:
            self.merge_expect.discard(m)
        return True

    def _after_expel(self, m: Member) -> None:
        if m == self.me:
            self._expelled()
            return
        self._recompute()
        if self.merge_expect is not None:
            self._finish_merge()
        # The expelled process may have been the leader a joiner waits for.
        self._send_states(sorted(self.state.pending))

    # -- partition merges ------------------------------------------------------
    #
    # When partitions that formed apart meet again, corosync lists the other
    # side's members as joined with reason NODEUP. Each side has its own
    # logical members and view ids, so at that position every synced member
    # multicasts its own logical members (MERGE). Once every expected MERGE
    # is delivered, all members hold the same union and install one view with
    # the same id: max of all sides' ids, plus one.

    def _start_merge(
        self, members: list[Member], joined: list[Member], merged: list[Member]
    ) -> None:
        fresh = {j for j in joined if j not in merged}
        st = self.state
        self.merge_members = {m for m in members if m not in fresh}
        # Our side's expelled processes send nothing; the other side learns
        # about them from our MERGE.
        self.merge_expect = self.merge_members - st.expelled
        self.merge_view_id = st.view_id
        mine = [[*lm, pnn] for lm, pnn in sorted(st.members.items()) if (lm[0], lm[1]) == self.me]
        body = msgpack.packb(
            {
                "members": mine,
                "view_id": st.view_id,
                "expelled": [list(m) for m in sorted(st.expelled)],
            }
        )
        self._enqueue(K_MERGE, 0, BROADCAST, body)

    def _on_merge(self, src: Member, body: dict[str, Any]) -> None:
        if self.merge_expect is None or src not in self.merge_expect:
            return
        st = self.state
        newly_expelled = False
        for n, p in body.get("expelled", []):
            if self._mark_expelled((n, p)):
                if (n, p) == self.me:
                    self._expelled()
                    return
                newly_expelled = True
        for n, p, lid, pnn in body["members"]:
            st.members[(n, p, lid)] = pnn
        st.synced.add(src)
        self.merge_view_id = max(self.merge_view_id, int(body["view_id"]))
        self.merge_expect.discard(src)
        self._finish_merge()
        if newly_expelled:
            self._send_states(sorted(st.pending))

    def _finish_merge(self) -> None:
        if self.merge_expect:
            return
        self.merge_expect = None
        st = self.state
        st.view_id = max(st.view_id, self.merge_view_id)
        st.view = ()  # force a new view, the same one on every member
        self._recompute()

    def _recompute(self) -> None:
        if self.merge_expect is not None:
            return  # views wait until the merge completes
        st = self.state
        view = tuple(sorted(set(st.members.values())))
        if view == st.view:
            return
        st.view_id += 1
        st.view = view
        v = View(st.view_id, view)
        for t in list(self.transports.values()):
            if t.lid in self.active:
                t._new_view(v)


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
