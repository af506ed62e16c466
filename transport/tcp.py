"""Plain point-to-point TCP transport: the classic CTDB model.

Every node listens on its own address and keeps one outgoing connection to
every other node, as ctdbd does: a node sends on its outgoing connection and
receives on the peer's. A peer is in the view while both directions are up;
the view is this node's local opinion (no agreement between nodes), which is
exactly what the recovery layer on top expects from a non-VS backend.

Failure detection: a closed connection removes the peer at once; a silent one
is removed after `keepalive_interval * keepalive_limit` seconds without any
frame from it. Idle outgoing connections carry an empty keepalive frame every
`keepalive_interval`.

Wire format: 4-byte big-endian length, then the payload; length 0 is a
keepalive. The first frame on a connection is a hello naming the sender's pnn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from typing import cast

from transport.base import Capabilities, Transport, TransportError, TransportOptions
from transport.framing import LENGTH as _LEN
from transport.framing import FrameReader

log = logging.getLogger("transport.tcp")

_HELLO = struct.Struct("!8sI")
_MAGIC = b"PYCTDB01"
MAX_MESSAGE = 256 * 1024 * 1024
HIGH_WATER = 4 * 1024 * 1024
RECONNECT_MIN = 0.05
RECONNECT_MAX = 1.0


class _Incoming(asyncio.Protocol):
    """A connection a peer opened to us: we only read from it."""

    def __init__(self, owner: TcpTransport) -> None:
        self.owner = owner
        self.reader = FrameReader(MAX_MESSAGE)
        self.src: int | None = None
        self.transport: asyncio.Transport | None = None
        self.last_rx = time.monotonic()
        #: Frames that arrived before the peer entered our view (our outgoing
        #: connection to it is not up yet); delivered once it does, so that a
        #: message is only ever seen from a member we can answer.
        self.early: list[bytes] | None = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.owner._accepted.add(self)

    def release_early(self) -> None:
        early, self.early = self.early, None
        if early and self.src is not None:
            for frame in early:
                if self.closing:
                    return
                self.owner.on_message(self.src, frame)

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        try:
            frames = self.reader.feed(data)
        except ValueError as exc:
            log.warning("dropping connection from %s: %s", self.src, exc)
            self.close()
            return
        for frame in frames:
            if self.closing:  # the node dropped this peer for an earlier frame
                return
            if self.src is None:
                if not self._accept_hello(frame):
                    return
                continue
            if not frame:
                continue
            if self.early is not None:
                self.early.append(frame)
            else:
                self.owner.on_message(self.src, frame)

    def _accept_hello(self, frame: bytes) -> bool:
        if len(frame) != _HELLO.size:
            self.close()
            return False
        magic, src = _HELLO.unpack(frame)
        if magic != _MAGIC or not 0 <= src < len(self.owner.nodes) or src == self.owner.pnn:
            log.warning("rejecting connection with bad hello (magic %r, pnn %d)", magic, src)
            self.close()
            return False
        self.src = src
        self.owner._incoming_up(src, self)
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    @property
    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._accepted.discard(self)
        if self.src is not None:
            self.owner._incoming_down(self.src, self)


class _Outgoing(asyncio.Protocol):
    """Our connection to a peer: we only write to it (and notice when it closes)."""

    def __init__(self, owner: TcpTransport, dst: int) -> None:
        self.owner = owner
        self.dst = dst
        self.transport: asyncio.Transport | None = None
        self.last_tx = time.monotonic()
        self._resume: asyncio.Future[None] | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=HIGH_WATER)
        self.transport.write(_LEN.pack(_HELLO.size) + _HELLO.pack(_MAGIC, self.owner.pnn))

    def write(self, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.writelines((_LEN.pack(len(payload)), payload))
        self.last_tx = time.monotonic()

    def data_received(self, data: bytes) -> None:
        """Peers never write on our outgoing connection; ignore stray bytes."""

    def pause_writing(self) -> None:
        self._resume = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._resume is not None and not self._resume.done():
            self._resume.set_result(None)
        self._resume = None

    async def wait_writable(self) -> None:
        if self._resume is not None:
            await asyncio.shield(self._resume)

    def connection_lost(self, exc: Exception | None) -> None:
        self.resume_writing()
        if not self.closed.done():
            self.closed.set_result(None)
        self.owner._outgoing_down(self.dst, self)


class TcpTransport(Transport):
    name = "tcp"
    capabilities = Capabilities(
        total_order=False, virtual_synchrony=False, max_message_size=MAX_MESSAGE
    )

    def __init__(self, pnn: int, nodes: list[str], options: TransportOptions) -> None:
        super().__init__(pnn, nodes, options)
        self._server: asyncio.Server | None = None
        self._out: dict[int, _Outgoing] = {}
        self._in: dict[int, _Incoming] = {}
        self._accepted: set[_Incoming] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        address = self.nodes[self.pnn]
        try:
            self._server = await loop.create_server(
                lambda: _Incoming(self), address, self.options.port, reuse_address=True
            )
        except OSError as exc:
            raise TransportError(
                f"cannot listen on {address}:{self.options.port}: {exc.strerror}"
            ) from exc
        for dst in range(len(self.nodes)):
            if dst != self.pnn:
                self._tasks.append(asyncio.create_task(self._connect_loop(dst)))
        self._tasks.append(asyncio.create_task(self._keepalive_loop()))

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks.clear()
        for out in list(self._out.values()):
            if out.transport is not None:
                out.transport.abort()
        for inc in list(self._accepted):  # also those still before their hello
            if inc.transport is not None:
                inc.transport.abort()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    def send(self, pnn: int, payload: bytes) -> None:
        if pnn == self.pnn:
            asyncio.get_running_loop().call_soon(self.on_message, pnn, payload)
            return
        if pnn in self.view.members:
            self._out[pnn].write(payload)

    def broadcast(self, payload: bytes) -> None:
        for pnn in self.view.members:
            self.send(pnn, payload)

    async def drain(self) -> None:
        for out in list(self._out.values()):
            await out.wait_writable()

    def update_nodes(self, nodes: list[str]) -> None:
        known = len(self.nodes)
        super().update_nodes(nodes)
        for dst in range(known, len(nodes)):
            self._tasks.append(asyncio.create_task(self._connect_loop(dst)))

    # -- connection management ------------------------------------------------

    async def _connect_loop(self, dst: int) -> None:
        """Keep one outgoing connection to `dst`, reconnecting with back-off."""
        loop = asyncio.get_running_loop()
        delay = RECONNECT_MIN
        while not self._stopping:
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: _Outgoing(self, dst),
                        self.nodes[dst],
                        self.options.port,
                        local_addr=(self.nodes[self.pnn], 0),
                    ),
                    timeout=max(1.0, self.options.keepalive_interval),
                )
            except (TimeoutError, OSError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            delay = RECONNECT_MIN
            self._out[dst] = proto
            self._update_view()
            await proto.closed

    async def _keepalive_loop(self) -> None:
        last_tick = time.monotonic()
        while True:
            interval = self.options.keepalive_interval
            await asyncio.sleep(interval / 2)
            now = time.monotonic()
            for out in list(self._out.values()):
                if out.transport is not None and now - out.last_tx >= interval:
                    out.write(b"")
            deadline = interval * self.options.keepalive_limit
            if now - last_tick > interval:
                # We were the ones stalled (a long synchronous step): peers'
                # frames may be sitting unread in the sockets. Judge again
                # once we have had a chance to read them.
                for inc in self._in.values():
                    inc.last_rx = max(inc.last_rx, now - interval)
            last_tick = now
            for src, inc in list(self._in.items()):
                if now - inc.last_rx > deadline:
                    log.warning("node %d silent for %.1fs: dropping it", src, now - inc.last_rx)
                    self._drop_peer(src)

    def drop_peer(self, pnn: int) -> None:
        self._drop_peer(pnn)  # the node logged why, once a minute at most

    def _drop_peer(self, pnn: int) -> None:
        """Forget a peer entirely; both directions reconnect from scratch."""
        inc = self._in.pop(pnn, None)
        if inc is not None and inc.transport is not None:
            inc.transport.abort()
        out = self._out.pop(pnn, None)
        if out is not None and out.transport is not None:
            out.transport.abort()
        self._update_view()

    def _incoming_up(self, src: int, proto: _Incoming) -> None:
        old = self._in.get(src)
        self._in[src] = proto
        if old is not None and old is not proto:
            # The peer restarted: whatever we had queued for its old
            # incarnation is gone, so make the view say so before re-adding.
            old.src = None
            if old.transport is not None:
                old.transport.abort()
            out = self._out.pop(src, None)
            if out is not None and out.transport is not None:
                out.transport.abort()
        self._update_view()

    def _incoming_down(self, src: int, proto: _Incoming) -> None:
        if self._in.get(src) is proto:
            self._drop_peer(src)

    def _outgoing_down(self, dst: int, proto: _Outgoing) -> None:
        if self._out.get(dst) is proto:
            del self._out[dst]
            inc = self._in.pop(dst, None)
            if inc is not None and inc.transport is not None:
                inc.src = None
                inc.transport.abort()
            self._update_view()

    def _update_view(self) -> None:
        if self._stopping:
            return
        up = {p for p in self._out if p in self._in}
        up.add(self.pnn)
        self._set_view(up)
        for pnn in up:
            inc = self._in.get(pnn)
            if inc is not None and inc.early is not None:
                inc.release_early()
