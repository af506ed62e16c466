"""The one CPG member of a process, shared by every vs transport in it.

Why a module of its own: a `transport.cpg.CpgTransport` is a logical member,
one per ctdbd; corosync admits one member per process and group, so all the
transports of a process share one `Connection`. It owns that membership:
opening the libcpg handle and joining, attaching and detaching logical
members, going solo when corosync is lost or the group expels the process,
and joining again. It feeds corosync's stream to the group's state machine
(`transport.cpg_group`) and carries out what the machine decides; the
traffic itself (output queue, event intake, keepalives) is its base class
`transport.cpg_stream.CpgStream`. The design is in `transport.cpg`'s
docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING, ClassVar

from transport import libcpg
from transport.base import View
from transport.cpg_group import Group
from transport.cpg_stream import CpgStream
from transport.cpg_wire import BROADCAST, HDR, K_BYE, Member

if TYPE_CHECKING:
    from transport.cpg import CpgTransport

log = logging.getLogger("transport.cpg")

RECONNECT_INTERVAL = 0.5
#: after an expulsion: corosync refuses the same pid's join until it has
#: processed the old connection's leave (CS_ERR_EXIST / TRY_AGAIN), then retries
REJOIN_DELAY = 0.05


class Connection(CpgStream):
    """One CPG member (this process) carrying any number of logical members."""

    registry: ClassVar[dict[tuple[int, int, str], Connection]] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop, group: str, chunk: int) -> None:
        super().__init__(loop, group, chunk)
        #: our logical members, lid -> pnn (the group's state machine sees these)
        self.local: dict[int, int] = {}
        self.reconnect_task: asyncio.Task[None] | None = None
        self.closed = False

    # -- lifecycle ----------------------------------------------------------

    @classmethod
    def get(cls, group: str, chunk: int) -> Connection:
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
            self.reform = self._reform_time()
        except BaseException:
            handle.finalize()
            raise
        self.handle = handle
        self.fd = fd
        self.machine = Group(self.me, self, self.local)
        self.heard = {}
        self.expelling = set()
        self.joined_at = self.loop.time()
        self.founding = False
        self.loop.add_reader(fd, self._on_readable)
        self.last_tick = self.loop.time()
        self.keepalive = self._keepalive()
        self.ticker = self.loop.call_later(self._lease_timing()[1], self._tick)
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
        if Connection.registry.get(self.key) is self:
            del Connection.registry[self.key]
        if self.reconnect_task is not None:
            self.reconnect_task.cancel()
            self.reconnect_task = None
        if self.handle is not None:
            with contextlib.suppress(libcpg.CpgError):
                self._flush(final=True)
            with contextlib.suppress(libcpg.CpgError):
                self.handle.leave(self.group)
        self._drop_handle()

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

    def start_over(self, why: str) -> None:
        """Leave the group and join it again as a fresh member (the group's
        state machine asks: we were expelled, or see its founding).

        Dropping the handle also discards whatever corosync queued for us
        while we were not reading; the new join brings a state transfer.
        """
        if self.handle is None or self.closed:
            return
        log.warning("group %r: %s; reporting solo views and joining again", self.group, why)
        # corosync is alive: the only wait is for it to process our leave.
        self._restart(first_attempt=REJOIN_DELAY)

    def _restart(self, first_attempt: float = RECONNECT_INTERVAL) -> None:
        self._drop_handle()
        self.machine = None
        for t in list(self.transports.values()):
            t._go_solo()
        if self.reconnect_task is None:
            self.reconnect_task = self.loop.create_task(self._reconnect(first_attempt))
            self.reconnect_task.add_done_callback(self._reconnect_ended)

    def _reconnect_ended(self, task: asyncio.Task[None]) -> None:
        """Reconnecting retries what corosync refuses; anything else it raised
        (a bug) would leave the process out of the group for good: every
        transport on this connection reports it (`Transport.on_failure`)."""
        if not task.cancelled() and (exc := task.exception()) is not None:
            for t in list(self.transports.values()):
                t.on_failure("reconnecting to corosync", exc)

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
        self.start_over(
            f"the group expelled this process (silent for more than "
            f"{self._keepalive()[1]:.1f}s: stopped or blocked)"
        )

    def founded(self) -> None:
        for t in self.transports.values():
            self._hello(t)

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

    def silence_announced(self, member: Member, seconds: float) -> None:
        """Say so when a member would expel us whenever we are idle."""
        interval = self._keepalive()[0]
        if member != self.me and seconds <= interval:
            log.warning(
                "group %r: member %s expels after %.2fs of silence, no more than our "
                "keepalive interval (%.2fs): it will expel us whenever we are idle, and our "
                "lease never holds; give every node the same KeepaliveInterval and KeepaliveLimit",
                self.group,
                member,
                seconds,
                interval,
            )
