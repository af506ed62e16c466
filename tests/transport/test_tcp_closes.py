"""How a tcp link ended, as `TcpTransport.left_in_order` reports it.

A recovery skips the lease a node granted a peer only if that peer closed
its connection in order (`ctdb.server.liveness.Liveness.leases_granted`):
it exited or dropped us. A reset may come from a firewall rule while the
peer still serves (tools.simulate, tcp seed 1287932), and a peer we drop
ourselves may not know it yet. Two transports in this process, so that a
reset can be made on purpose (SO_LINGER 0) and the answer read at the
moment the view changes, before the peer reconnects.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest

from tests.transport.conftest import Cluster, wait_until
from tests.transport.test_conformance import formed, left_in_order
from tests.transport.test_conformance import run as run_cluster
from tools.cluster import free_port
from transport.base import TransportOptions, View
from transport.tcp import TcpTransport

NODES = ["127.0.0.1", "127.0.0.2"]
TIMEOUT = 20.0


class Watched:
    """A transport with, for each view it installed, the peers that left it in order."""

    def __init__(self, pnn: int, port: int) -> None:
        self.t = TcpTransport(pnn, NODES, TransportOptions(port=port, keepalive_interval=0.5))
        self.views: list[tuple[tuple[int, ...], list[int]]] = []
        self.t.on_view = self._on_view
        self._members = self.t.view.members

    def _on_view(self, view: View) -> None:
        gone = [p for p in self._members if p not in view]
        self._members = view.members
        self.views.append((view.members, [p for p in gone if self.t.left_in_order(p)]))

    async def connected(self) -> None:
        await wait_until(lambda: self.t.view.members == (0, 1), TIMEOUT, lambda: str(self.views))

    async def dropped(self, since: int) -> list[int]:
        """Wait for the next view without the peer; the peers that left in order."""

        def found() -> bool:
            return any(len(m) == 1 for m, _ in self.views[since:])

        await wait_until(found, TIMEOUT, lambda: str(self.views[since:]))
        return next(closed for m, closed in self.views[since:] if len(m) == 1)


def run(body: Callable[[Watched, Watched], Awaitable[None]]) -> None:
    async def main() -> None:
        port = free_port(NODES)
        a, b = Watched(0, port), Watched(1, port)
        try:
            await a.t.start()
            await b.t.start()
            await a.connected()
            await b.connected()
            await body(a, b)
        finally:
            await a.t.stop()
            await b.t.stop()

    asyncio.run(main())


def test_a_peer_that_stops_closed_in_order() -> None:
    async def body(a: Watched, b: Watched) -> None:
        since = len(a.views)
        await b.t.stop()
        assert await a.dropped(since) == [1]

    run(body)


def test_a_peer_we_drop_did_not_close_but_we_did_for_it() -> None:
    """We dropped it: it may serve on our grant until it reads our close;
    it, on its side, reads our FIN."""

    async def body(a: Watched, b: Watched) -> None:
        since_a, since_b = len(a.views), len(b.views)
        a.t.drop_peer(1)
        assert await a.dropped(since_a) == []
        assert await b.dropped(since_b) == [0]

    run(body)


def test_a_reset_is_not_an_orderly_close() -> None:
    async def body(a: Watched, b: Watched) -> None:
        since = len(a.views)
        # b's ends of both connections go with a reset (what a firewall's
        # tcp-reset rule sends a), and b stops.
        for proto in (b.t._in[0], b.t._out[0]):
            assert proto.transport is not None
            sock = proto.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await b.t.stop()
        assert await a.dropped(since) == []
        # Asked again later, as a recovery would: a socket read after its
        # reset says end of file, which is no FIN.
        await asyncio.sleep(0.2)
        assert not a.t.left_in_order(1)

    run(body)


@pytest.mark.parametrize("cluster", ["tcp"], indirect=True)
@pytest.mark.parametrize("attempt", range(5))
def test_a_peer_killed_with_our_frames_unread_closed_in_order(
    cluster: Cluster, attempt: int
) -> None:
    """Killed while frames we sent sat unread in its socket, the peer resets
    our connection to it, and the FIN of its connection to us may come
    after the reset: it must still count as closed in order, or every
    recovery after a kill -9 under load waits out a lease (4 of 6 kills
    did before `TcpTransport._linger`). Which arrives first is a race:
    five attempts."""

    async def body() -> None:
        members = await cluster.start(3)
        await formed(members)
        survivors, gone = members[:2], members[2]
        for m in survivors:
            flood = {"cmd": "send", "dst": 2, "count": 10**6, "size": 2000}
            await m.command({**flood, "pause_every": 50, "pause": 0.0005}, wait=False)
        await wait_until(
            lambda: len(gone.msgs()) > 1000, TIMEOUT, lambda: f"{len(gone.msgs())} messages"
        )
        await gone.kill()
        await formed(survivors, [0, 1])
        for m in survivors:
            assert await left_in_order(m, 2) == [2], m.pnn

    run_cluster(cluster, body)
