"""The two connections between a pair of tcp nodes, one asyncio protocol each.

Why a module of their own: `transport.tcp.TcpTransport` decides which links
exist (connect loops with back-off, keepalives, the view); the protocols here
each handle one connection: the `transport.linkauth` handshake on either
side, then reading, checking and delivering frames on the connection a peer
opened (`Incoming`), or writing frames with a bound on what may queue up on
ours (`Outgoing`). They report back to the transport that owns them and know
nothing of the view.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import TYPE_CHECKING, cast

from transport.framing import LENGTH as _LEN
from transport.framing import FrameReader
from transport.linkauth import (
    TAG_SIZE,
    FrameAuthError,
    FrameOpener,
    FrameSealer,
    HandshakeError,
    Initiator,
    Responder,
    Session,
)

if TYPE_CHECKING:
    from transport.tcp import TcpTransport

log = logging.getLogger("transport.tcp")

MAX_MESSAGE = 256 * 1024 * 1024
HIGH_WATER = 4 * 1024 * 1024


def normalize_address(address: str) -> str:
    """One spelling per IP address, so that nodes file entries match peer addresses."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


class Incoming(asyncio.Protocol):
    """A connection a peer opened to us: we answer its handshake, then only read."""

    def __init__(self, owner: TcpTransport) -> None:
        self.owner = owner
        #: The peer's pnn, set once it has authenticated.
        self.src: int | None = None
        self.address = ""
        self.transport: asyncio.Transport | None = None
        self.handshake: Responder | None = None
        self.reader = FrameReader(MAX_MESSAGE)
        self.opener: FrameOpener | None = None
        self.last_rx = time.monotonic()
        self._deadline: asyncio.TimerHandle | None = None
        #: Frames that arrived before the peer entered our view (our outgoing
        #: connection to it is not up yet); delivered once it does, so that a
        #: message is only ever seen from a member we can answer. At most
        #: `owner.max_queued` bytes of them.
        self.early: list[bytes] | None = []
        self.early_bytes = 0
        #: the peer closed its end in order (`TcpTransport.left_in_order`)
        self.peer_closed = False
        #: kept only to see how this peer closes it (`TcpTransport._linger`):
        #: what arrives is dropped
        self.lingering: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.owner._accepted.add(self)
        peer = self.transport.get_extra_info("peername")
        self.address = normalize_address(str(peer[0])) if peer else "?"
        pnn = self.owner._pnn_by_address.get(self.address)
        if pnn is None or pnn == self.owner.pnn:
            self._refuse("address is not another node's in the nodes file")
            return
        if not self.owner._handshake_started(self.address):
            self._refuse("too many handshakes in progress from this address")
            return
        self.handshake = Responder(self.owner._settings, self.owner.pnn, pnn)
        self._deadline = asyncio.get_running_loop().call_later(
            self.owner._handshake_timeout(), self._refuse, "handshake not finished in time"
        )

    def release_early(self) -> None:
        early, self.early = self.early, None
        if early and self.src is not None:
            for frame in early:
                if self.closing:
                    return
                self.owner.on_message(self.src, frame)

    def data_received(self, data: bytes) -> None:
        if self.lingering is not None:
            return
        self.last_rx = time.monotonic()
        if self.src is None:
            data = self._handshake_step(data)
            if not data:
                return
        try:
            frames = self.reader.feed(data)
        except ValueError as exc:
            log.warning("dropping connection from node %s: %s", self.src, exc)
            self.close()
            return
        opener = self.opener
        src: int = self.src  # type: ignore[assignment]  # set by the handshake above
        for frame in frames:
            if self.closing:  # the node dropped this peer for an earlier frame
                return
            if opener is not None:
                try:
                    frame = opener.open(frame)
                except FrameAuthError as exc:
                    log.warning("dropping connection from node %s: %s", self.src, exc)
                    self.close()
                    return
            if not frame:
                continue
            if self.early is not None:
                self.early_bytes += len(frame)
                if self.early_bytes > self.owner.max_queued:
                    log.warning(
                        "dropping connection from node %s: more than %d bytes sent before "
                        "it is in our view",
                        self.src,
                        self.owner.max_queued,
                    )
                    self.close()
                    return
                self.early.append(frame)
            else:
                self.owner.on_message(src, frame)

    def _handshake_step(self, data: bytes) -> bytes:
        """Feed the handshake; returns the bytes that follow it once it succeeded."""
        assert self.handshake is not None and self.transport is not None
        try:
            step = self.handshake.receive(data)
        except HandshakeError as exc:
            self._refuse(str(exc))
            return b""
        if step.send:
            self.transport.write(step.send)
        if step.session is None:
            return b""
        self._authenticated(step.session)
        return step.rest

    def _authenticated(self, session: Session) -> None:
        self._finish_handshake()
        if session.frame_key is not None:
            self.opener = FrameOpener(session.frame_key)
            self.reader = FrameReader(MAX_MESSAGE + TAG_SIZE)
        self.src = session.peer
        self.owner._incoming_up(session.peer, self)

    def _finish_handshake(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self.handshake is not None:
            self.handshake = None
            self.owner._handshake_ended(self.address)

    def _refuse(self, reason: str) -> None:
        self.owner._refused(self.address, reason)
        self._finish_handshake()
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> None:
        self.peer_closed = True  # asyncio then closes our end and calls connection_lost

    @property
    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish_handshake()
        self.owner._accepted.discard(self)
        if self.src is not None:
            self.owner._incoming_down(self.src, self, exc)
        elif self.lingering is not None:
            self.owner._linger_over(self.lingering, self, exc)


class Outgoing(asyncio.Protocol):
    """Our connection to a peer: after the handshake we only write to it."""

    def __init__(self, owner: TcpTransport, dst: int) -> None:
        self.owner = owner
        self.dst = dst
        self.transport: asyncio.Transport | None = None
        self.handshake = Initiator(owner._settings, owner.pnn, dst)
        self.sealer: FrameSealer | None = None
        self.last_tx = time.monotonic()
        #: the largest frame queued on this link so far (see `write`)
        self.largest = 0
        self._resume: asyncio.Future[None] | None = None
        loop = asyncio.get_running_loop()
        #: Resolves when the peer has proved the key (or fails with HandshakeError).
        self.ready: asyncio.Future[None] = loop.create_future()
        self.closed = loop.create_future()
        #: the peer closed its end in order (`TcpTransport.left_in_order`)
        self.peer_closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=HIGH_WATER)
        self.transport.write(self.handshake.hello())

    def write(self, payload: bytes) -> None:
        """Queue a frame; drop the link if the peer has stopped taking them.

        A peer may be working through one big frame (a recovery push) for a
        while: the bound is `max_queued` beyond the largest frame of the link.
        """
        transport = self.transport
        assert transport is not None
        if transport.is_closing():
            return
        if self.sealer is None:
            transport.writelines((_LEN.pack(len(payload)), payload))
        else:
            tag = self.sealer.seal(payload)
            transport.writelines((_LEN.pack(len(payload) + TAG_SIZE), payload, tag))
        self.last_tx = time.monotonic()
        self.largest = max(self.largest, len(payload))
        queued = transport.get_write_buffer_size()
        if queued > self.owner.max_queued + self.largest:
            log.warning(
                "node %d is not reading: %d bytes queued for it, dropping its link",
                self.dst,
                queued,
            )
            transport.abort()  # connection_lost then drops the peer from the view

    def data_received(self, data: bytes) -> None:
        """The peer writes only its challenge on our connection."""
        assert self.transport is not None
        try:
            step = self.handshake.receive(data)
        except HandshakeError as exc:
            if not self.ready.done():
                self.ready.set_exception(exc)
            else:
                self.owner._refused(self.owner.nodes[self.dst], str(exc))
            self.transport.abort()
            return
        if step.session is not None:
            self.transport.write(step.send)
            if step.session.frame_key is not None:
                self.sealer = FrameSealer(step.session.frame_key)
            if not self.ready.done():
                self.ready.set_result(None)

    def pause_writing(self) -> None:
        self._resume = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._resume is not None and not self._resume.done():
            self._resume.set_result(None)
        self._resume = None

    async def wait_writable(self) -> None:
        if self._resume is not None:
            await asyncio.shield(self._resume)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> None:
        self.peer_closed = True  # asyncio then closes our end and calls connection_lost

    def connection_lost(self, exc: Exception | None) -> None:
        self.resume_writing()
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("connection closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)
        self.owner._outgoing_down(self.dst, self, exc)
