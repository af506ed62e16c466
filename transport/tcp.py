"""Plain point-to-point TCP transport: the classic CTDB model.

Every node listens on its own address and keeps one outgoing connection to
every other node, as ctdbd does: a node sends on its outgoing connection and
receives on the peer's. A peer is in the view while both directions are up;
the view is this node's local opinion (no agreement between nodes), which is
exactly what the recovery layer on top expects from a non-VS backend.

Who is a peer: an incoming connection is accepted only from an address in the
nodes file, and the peer's pnn is that address's position (as in CTDB), never
what the peer claims; outgoing connections are bound to this node's own
address so that peers see it. Then the handshake of `transport.linkauth`
proves both ends hold the cluster key before any other frame is read; only an
authenticated connection can replace a peer's established one (the peer
restarted). Refusals are logged at most once a minute per address.

Failure detection: a closed connection removes the peer at once; a silent one
is removed after `keepalive_interval * keepalive_limit` seconds without any
frame from it, and a handshake must finish within the same time. Idle
outgoing connections carry an empty keepalive frame every `keepalive_interval`.
A peer whose end of either connection closed in order (we read its FIN, not
a reset) exited or dropped us: `left_in_order` says so, and the node then
need not wait out the lease it granted that peer. Every link lost is logged
with how it ended.

Bounded buffers: a peer that stops reading (SIGSTOP, a hung host) while we
keep sending would make our memory grow with everything we queue for it. Past
`max_queued` bytes queued for one peer (`[transport] max queued`, 64 MiB by
default) beyond the largest single frame on that link (a recovery push may
legitimately be that large), the peer's link is dropped with one log line:
it reconnects, and recovery sorts out what it missed, as it would after the
keepalive expiry that would come anyway. `drain()` waits while any link is
above HIGH_WATER, so bulk senders do not pile up frames in the first place.
Frames a peer sends before it is in our view are held up to the same bound.

Wire format: 4-byte big-endian length, then the payload (followed by its MAC
with `authenticate_frames`); an empty payload is a keepalive.

This module keeps the set of links (connecting, keepalives, the view); each
connection itself, handshake included, is a protocol of
`transport.tcp_connections`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from dataclasses import dataclass

from transport.base import Capabilities, Transport, TransportError, TransportOptions
from transport.linkauth import HandshakeError, Settings
from transport.tcp_connections import MAX_MESSAGE, Incoming, Outgoing, normalize_address

log = logging.getLogger("transport.tcp")

#: Default bytes queued for one peer (beyond its largest frame) before its link is dropped.
DEFAULT_MAX_QUEUED = 64 * 1024 * 1024
RECONNECT_MIN = 0.05
RECONNECT_MAX = 1.0
#: Handshakes one node address may have in progress at once (a peer needs one).
MAX_HANDSHAKES_PER_ADDRESS = 4
#: Seconds between two log lines about refused connections from one address.
REFUSAL_LOG_INTERVAL = 60.0
#: Addresses whose last refusal is remembered (oldest forgotten first).
REFUSAL_MEMORY = 1024


@dataclass
class _Linger:
    """A peer's connection to us, kept after ours to it failed (`TcpTransport._linger`)."""

    inc: Incoming
    #: when (loop time) ours failed
    since: float
    #: resolved when it ends, or is no longer kept
    ended: asyncio.Future[None]


class TcpTransport(Transport):
    name = "tcp"
    capabilities = Capabilities(
        total_order=False, virtual_synchrony=False, max_message_size=MAX_MESSAGE
    )

    def __init__(self, pnn: int, nodes: list[str], options: TransportOptions) -> None:
        super().__init__(pnn, nodes, options)
        self._server: asyncio.Server | None = None
        self._out: dict[int, Outgoing] = {}
        self._in: dict[int, Incoming] = {}
        self._accepted: set[Incoming] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._settings = Settings(
            options.cluster_key, options.authenticate_frames, options.protocol
        )
        self.max_queued = int(options.extra.get("max queued", DEFAULT_MAX_QUEUED))
        self._pnn_by_address = self._address_map(nodes)
        self._handshakes: dict[str, int] = {}
        #: address -> (when its last refusal was logged, refusals not logged since)
        self._refusals: dict[str, tuple[float, int]] = {}
        #: peers that left the view by closing a connection in order (`left_in_order`)
        self._closed_in_order: set[int] = set()
        #: a peer's connection to us, kept after ours to it failed (`_linger`)
        self._lingering: dict[int, _Linger] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        address = self.nodes[self.pnn]
        self._check_nodes()
        try:
            self._server = await loop.create_server(
                lambda: Incoming(self), address, self.options.port, reuse_address=True
            )
        except OSError as exc:
            raise TransportError(
                f"cannot listen on {address}:{self.options.port}: {exc.strerror}"
            ) from exc
        for dst in range(len(self.nodes)):
            if dst != self.pnn:
                self._tasks.append(self.spawn(self._connect_loop(dst), f"the link to node {dst}"))
        self._tasks.append(self.spawn(self._keepalive_loop(), "the keepalive loop"))

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
        for inc in list(self._accepted):  # also those still in their handshake
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
        """Wait until every link's queued output is below HIGH_WATER (or the link is gone).

        A peer that never reads does not hold this up for ever: its link is
        dropped at `max_queued`, or when its keepalives stop.
        """
        for out in list(self._out.values()):
            await out.wait_writable()

    def update_nodes(self, nodes: list[str]) -> None:
        known = len(self.nodes)
        super().update_nodes(nodes)
        self._pnn_by_address = self._address_map(nodes)
        for dst in range(known, len(nodes)):
            self._tasks.append(self.spawn(self._connect_loop(dst), f"the link to node {dst}"))

    # -- peer identity ----------------------------------------------------------

    @staticmethod
    def _address_map(nodes: list[str]) -> dict[str, int]:
        """Peer address -> pnn; the first entry wins (`_check_nodes` refuses duplicates)."""
        by_address: dict[str, int] = {}
        for pnn, address in enumerate(nodes):
            by_address.setdefault(normalize_address(address), pnn)
        return by_address

    def _check_nodes(self) -> None:
        """Peers are identified by source address: every node needs its own IP address."""
        seen: set[str] = set()
        for address in self.nodes:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise TransportError(
                    f"nodes file entry {address!r} is not an IP address "
                    "(the tcp transport identifies nodes by address)"
                ) from None
            if normalize_address(address) in seen:
                raise TransportError(f"address {address} appears twice in the nodes file")
            seen.add(normalize_address(address))

    def _handshake_timeout(self) -> float:
        """A handshake gets as long as a silent peer before it is dropped."""
        return max(1.0, self.options.keepalive_interval * self.options.keepalive_limit)

    def _handshake_started(self, address: str) -> bool:
        count = self._handshakes.get(address, 0)
        if count >= MAX_HANDSHAKES_PER_ADDRESS:
            return False
        self._handshakes[address] = count + 1
        return True

    def _handshake_ended(self, address: str) -> None:
        count = self._handshakes.pop(address, 1) - 1
        if count > 0:
            self._handshakes[address] = count

    def _refused(self, address: str, reason: str) -> None:
        """Log a refused connection, at most once per REFUSAL_LOG_INTERVAL per address.

        Why rate-limited: whoever keeps knocking must not be able to flood the log.
        """
        now = time.monotonic()
        last, suppressed = self._refusals.pop(address, (-REFUSAL_LOG_INTERVAL, 0))
        if now - last < REFUSAL_LOG_INTERVAL:
            self._refusals[address] = (last, suppressed + 1)
            return
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        log.warning("refused node connection with %s: %s%s", address, reason, more)
        self._refusals[address] = (now, 0)
        if len(self._refusals) > REFUSAL_MEMORY:
            del self._refusals[next(iter(self._refusals))]

    # -- connection management ------------------------------------------------

    async def _connect_loop(self, dst: int) -> None:
        """Keep one outgoing connection to `dst`, reconnecting with back-off."""
        loop = asyncio.get_running_loop()
        delay = RECONNECT_MIN
        while not self._stopping:
            try:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: Outgoing(self, dst),
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
            try:
                await asyncio.wait_for(proto.ready, self._handshake_timeout())
            except (HandshakeError, TimeoutError, ConnectionError) as exc:
                proto.abort()
                if isinstance(exc, HandshakeError):
                    self._refused(self.nodes[dst], str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            except asyncio.CancelledError:
                proto.abort()
                raise
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

    def left_in_order(self, pnn: int) -> bool:
        """Only a FIN counts: a reset may come from a firewall rule or a
        host that restarted, a silence from a cut; and a peer we drop
        ourselves may still serve on what we confirmed."""
        return pnn in self._closed_in_order and pnn not in self.view

    def _drop_peer(self, pnn: int, *, closed_in_order: bool = False) -> None:
        """Forget a peer entirely; both directions reconnect from scratch.

        `closed_in_order`: because the peer closed its end (`left_in_order`).
        """
        if closed_in_order:
            self._closed_in_order.add(pnn)
        inc = self._in.pop(pnn, None)
        if inc is not None and inc.transport is not None:
            inc.transport.abort()
        out = self._out.pop(pnn, None)
        if out is not None and out.transport is not None:
            out.transport.abort()
        self._update_view()

    def _incoming_up(self, src: int, proto: Incoming) -> None:
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

    def _incoming_down(self, src: int, proto: Incoming, exc: Exception | None) -> None:
        if self._in.get(src) is proto:
            _log_lost(f"node {src}'s connection to us", proto.peer_closed, exc)
            self._drop_peer(src, closed_in_order=proto.peer_closed)

    def _outgoing_down(self, dst: int, proto: Outgoing, exc: Exception | None) -> None:
        if self._out.get(dst) is proto:
            _log_lost(f"our connection to node {dst}", proto.peer_closed, exc)
            del self._out[dst]
            inc = self._in.pop(dst, None)
            if proto.peer_closed:
                self._closed_in_order.add(dst)
            if inc is not None and inc.transport is not None:
                inc.src = None
                if proto.peer_closed or not self._linger(dst, inc):
                    inc.transport.abort()
            self._update_view()

    def _linger(self, pnn: int, inc: Incoming) -> bool:
        """Our connection to `pnn` failed: keep its connection to us open, its
        frames dropped, to learn how it ends (`departed`); False if it has
        ended already.

        Why: a peer killed with our frames unread in its socket resets our
        connection, while its own to us, on which we never write, ends in a
        FIN, which may arrive after the reset (seen in most kills of a
        loaded peer), and only once we have read what the peer sent before
        it. Kept until the peer is back or for a handshake's time.
        """
        if inc.peer_closed:
            self._closed_in_order.add(pnn)
            return False
        if self._stopping or inc.closing:
            return False
        self._end_linger(pnn)
        inc.lingering = pnn
        loop = asyncio.get_running_loop()
        self._lingering[pnn] = _Linger(inc, loop.time(), loop.create_future())
        loop.call_later(self._handshake_timeout(), self._end_linger, pnn, inc)
        return True

    def _linger_over(self, pnn: int, inc: Incoming, exc: Exception | None) -> None:
        """The connection `_linger` kept for `pnn` ended."""
        kept = self._lingering.get(pnn)
        if kept is None or kept.inc is not inc:
            return
        del self._lingering[pnn]
        after = f"{asyncio.get_running_loop().time() - kept.since:.3f}s after ours failed"
        if inc.peer_closed:
            log.info("node %d's connection to us: closed by the peer, %s", pnn, after)
            if pnn not in self.view:
                self._closed_in_order.add(pnn)
        else:
            log.info("node %d's connection to us: %s, %s", pnn, exc or "closed here", after)
        kept.ended.set_result(None)

    def _end_linger(self, pnn: int, inc: Incoming | None = None) -> None:
        """Close the connection `_linger` kept for `pnn` (only `inc`, if given)."""
        kept = self._lingering.get(pnn)
        if kept is not None and (inc is None or kept.inc is inc):
            del self._lingering[pnn]
            kept.inc.lingering = None
            kept.inc.abort()
            kept.ended.set_result(None)

    async def departed(self, pnn: int, timeout: float) -> None:
        """Wait, at most `timeout`, for the connection of `pnn` that `_linger` keeps to end."""
        kept = self._lingering.get(pnn)
        if kept is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(kept.ended), timeout)

    def _update_view(self) -> None:
        if self._stopping:
            return
        up = {p for p in self._out if p in self._in}
        up.add(self.pnn)
        self._closed_in_order -= up  # whatever ends its next stay in the view decides
        for pnn in up & self._lingering.keys():
            self._end_linger(pnn)
        self._set_view(up)
        for pnn in up:
            inc = self._in.get(pnn)
            if inc is not None and inc.early is not None:
                inc.release_early()


def _log_lost(link: str, peer_closed: bool, exc: Exception | None) -> None:
    """One line per link lost while its peer was up: how it ended decides
    whether the node waits out the lease it granted that peer (`left_in_order`)."""
    if peer_closed:
        log.info("%s: closed by the peer", link)
    else:
        log.info("%s: %s", link, "closed here" if exc is None else f"failed ({exc})")
