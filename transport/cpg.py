"""The virtual-synchrony transport ("vs") on corosync's CPG.

This module is the transport each ctdbd uses (`CpgTransport`, a logical
member). The I/O shell the transports of a process share is
`transport.cpg_connection` (the CPG handle, joins, reconnects) on
`transport.cpg_stream` (output queue and flow control, input, keepalives);
the state machine every member runs over the agreed stream (views, joins,
merges, expulsions) is pure code in `transport.cpg_group`, and the messages
it exchanges are in `transport.cpg_wire`.

Why it is built this way
------------------------

* **One CPG member per process.**  corosync refuses a second ``cpg_join`` of
  the same group from the same pid (``CS_ERR_EXIST``), yet tests and the
  local launcher run several transports in one process.  So every process
  has one `Connection` per (event loop, network namespace, group); each
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
  before the STATE is delivered, the next leader resends it.  The joiner
  takes a STATE only if the group counts it (a leader expelled before its
  STATE's position is ignored by the others, so by the joiner too: it
  tries the snapshot on a copy of its machine first).  The first members
  of a group (a confchg where every member is new) start from the empty
  state.

* **Partition merges.**  Groups that formed apart (a cut host healed, a
  restarted corosync whose member reconnected before its ring merged) meet
  in a confchg whose joined members carry reason NODEUP. They have state, so
  instead of a STATE every synced member multicasts its own logical members
  (MERGE); once all are delivered every member installs the union as one
  view whose id is the highest of both sides plus one.  A logical member
  whose HELLO comes during a merge gets that view as its first one, and
  nothing the group delivers before it (chaos, vs seed 1305).  A process
  that joins during a merge gets the merge in progress with its snapshot
  and finishes it with the others (chaos, vs seed 1463); a joiner whose
  side has nobody left to give it state when its ring merges joins again.
  A MERGE names the merge it answers (the processes that merge, and how
  many merges of them came before), so that one a stopped process sends
  late for an earlier merge of the same processes is not taken for its
  MERGE of this one.  The last two came from
  tests/transport/test_cpg_group_explorer.py.

* **Fragmentation.**  Payloads are cut into chunks (default 64 KiB, never
  above ``cpg_max_atomic_msgsize``) so corosync never fragments for us and a
  ``CS_ERR_TRY_AGAIN`` is all-or-nothing per chunk.  Delivery is FIFO per
  sender, so reassembly is a per-sender list; a sender that dies mid-message
  leaves the same incomplete prefix on every survivor, which all drop.

* **Batches.**  A daemon answering many clients sends many small messages
  in one event-loop turn, and each CPG message costs a synchronous call
  into corosync, a message for corosync to order and hand to every local
  member, and a dispatch on each.  So, as Nagle's algorithm does in TCP,
  while a message of ours is on its way (sent, not yet delivered back) the
  small DATA messages wait for the end of the loop turn and go together as
  one message (flag F_BATCH), each with its destination; every member's
  group machine delivers them in order, as it would one by one.  With none
  on its way (a lone request, a migration ring) one goes at once.  Anything
  else sent meanwhile goes after the batch.

* **No flow control in corosync.**  ``cpg_mcast_joined`` returns
  ``CS_ERR_TRY_AGAIN`` when its queue is full; chunks then wait in our queue
  and are retried from the event loop; `drain()` waits below a high-water mark.

* **Hung members.**  corosync drops a member whose process exits (its IPC
  connection closes) but never one that merely stops reading: it keeps the
  process in the group and queues the group's traffic for it in its own
  memory, without bound, and delivers all of it if the process continues.
  Left alone, such a member would stay in every view (a sync round would wait
  for it) and could be the member a joiner waits for.  So every process
  multicasts a small ALIVE every ``keepalive_interval`` (carrying the silence
  after which it expels, which the others' leases need), and a synced member
  that hears nothing from another for ``keepalive_interval * keepalive_limit``
  (while its own messages still come back: otherwise the ring itself
  stalls, and corosync's token timeout decides) multicasts EXPEL.  At
  EXPEL's position every member drops that process as if it had left,
  ignores whatever it sends later, and hands the fact to joiners in their
  snapshot.  The expelled process, when it runs again, reaches its own EXPEL
  in its backlog, reports a view of itself alone, drops its connection (and
  with it the backlog) and joins again: a fresh member with a state
  transfer.  corosync's leave of the old connection
  clears it from the expelled set on every member.  When every process
  with the state is hung, nobody may expel them and nobody sends a joiner
  its state: a joiner that hears none of the processes older than itself
  for that silence multicasts FOUND, and at its position the joiners it saw
  found the state anew while every other process starts over (the rules
  that make every process decide alike are in `transport.cpg_group`).

* **corosync failure.**  A dispatch/mcast error or a hang-up on the fd means
  the daemon is gone: every transport reports a view of only itself, and the
  connection reconnects in the background and rejoins (logger
  ``transport.cpg``).  While alone, broadcasts are delivered locally.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
from collections.abc import Iterable
from typing import ClassVar

from transport import libcpg
from transport.base import Capabilities, Transport, TransportError, TransportOptions, View
from transport.cpg_connection import Connection
from transport.cpg_stream import DEFAULT_HIGH_WATER
from transport.cpg_wire import BROADCAST, K_DATA

log = logging.getLogger("transport.cpg")

DEFAULT_CHUNK = 64 * 1024

_lids = itertools.count(1)


class CpgTransport(Transport):
    """A ctdbd's endpoint on a corosync CPG group (see the module docstring).

    Options (``options.extra``): ``group`` (CPG group name, default "ctdb";
    the process joins it with ``.v`` and `TransportOptions.protocol` after it),
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
        # Members of another protocol version must never hear us, nor we them.
        self.group = f"{options.extra.get('group', 'ctdb')}.v{options.protocol}"
        self.chunk = int(options.extra.get("chunk", DEFAULT_CHUNK))
        self.high_water = int(options.extra.get("high_water", DEFAULT_HIGH_WATER))
        silence = options.keepalive_interval * options.keepalive_limit
        self.join_timeout = float(options.extra.get("join_timeout", 10.0 + 2 * silence))
        self.lid = next(_lids) & 0xFFFF
        self._conn: Connection | None = None
        self._active: asyncio.Event | None = None
        self._solo = True

    # -- Transport API ----------------------------------------------------------

    async def start(self) -> None:
        if self._conn is not None:
            return
        if not libcpg.available():
            raise TransportError("libcpg.so.4 not found (install Debian package libcpg4)")
        self._active = asyncio.Event()
        conn = Connection.get(self.group, self.chunk)
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

    def confirmed_until(self) -> float | None:
        conn = self._conn
        if len(self.nodes) == 1:
            return None  # a cluster of one: nobody can commit without us
        # Solo (expelled, corosync lost, not joined yet): no group confirms
        # anything, even while the connection we share with other logical
        # members has a lease of its own.
        return 0.0 if conn is None or self._solo else conn.confirmed_until()

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
