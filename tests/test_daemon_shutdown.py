"""`ctdbd`'s shutdown is bounded: a part that does not stop is cut off and logged
with what every task was doing, and the parts after it still run. A node
whose own loop broke asks for that shutdown itself."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from ctdb.server import ctdb_sessions
from ctdb.server.daemon import _stop_within
from ctdb.server.liveness import Liveness
from ctdb.server.stream import StreamMembership
from tools.sim.cluster import SimCluster, run_scenario
from transport.base import View


def test_a_part_that_hangs_is_cut_off_and_the_next_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    async def hangs() -> None:
        await asyncio.Event().wait()

    async def closes() -> None:
        ran.append("closed")

    async def shutdown() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await _stop_within(0.05, [("the stuck part", hangs), ("the node", closes)])
        return loop.time() - started

    with caplog.at_level(logging.ERROR, logger="ctdbd"):
        took = asyncio.run(shutdown())
    assert ran == ["closed"]
    assert 0.05 <= took < 5.0
    (record,) = caplog.records
    assert "stopping the stuck part took more than" in record.getMessage()
    assert "shutdown" in record.getMessage() and "tasks:" in record.getMessage()


def test_a_loop_of_the_node_that_breaks_stops_the_node(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A loop the node cannot work without (here its state announcements; the
    leader's recoveries alike) that ends with a bug used to end in silence:
    a leader whose loop broke never recovered again, and the cluster waited.
    Now the node records why, logs the traceback and asks to shut down (the
    daemon exits 1); the others go on without it. Real `Node` code on the
    simulated network."""
    announce = Liveness.announce

    def broken_on_node_1(self: Liveness) -> None:
        if self.node.pnn == 1:
            raise RuntimeError("a bug")
        announce(self)

    async def scenario(cluster: SimCluster) -> None:
        monkeypatch.setattr(Liveness, "announce", broken_on_node_1)
        node1 = cluster.nodes[1]
        assert await cluster.until(node1.shutdown_requested.is_set, 5), cluster.describe()
        assert node1.failure is not None and "RuntimeError('a bug')" in node1.failure
        assert "Liveness.run" in node1.failure
        assert not any(cluster.nodes[p].shutdown_requested.is_set() for p in (0, 2))

    with caplog.at_level(logging.CRITICAL, logger="ctdb.server.node"):
        run_scenario("tcp", scenario)
    assert any("stopping this node" in r.message and r.exc_info for r in caplog.records)


def test_the_ctdb_doors_announcements_that_break_stop_the_node(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The CTDB-protocol door tells its clients who leads every second; a
    bug there ended the loop in silence, and Samba's tools waited for ever."""

    class Broken:
        transport = None

        def send_leader(self) -> None:
            raise RuntimeError("a bug")

    async def scenario(cluster: SimCluster) -> None:
        monkeypatch.setattr(ctdb_sessions, "LEADER_INTERVAL", 0.01)
        node1 = cluster.nodes[1]
        door = ctdb_sessions.CtdbProtocolServer(node1, tmp_path / "ctdbd.socket")
        await door.start()
        try:
            door.sessions.add(Broken())  # type: ignore[arg-type]
            assert await cluster.until(node1.shutdown_requested.is_set, 5), cluster.describe()
        finally:
            await door.stop()
        assert node1.failure is not None and "_announce_leader" in node1.failure

    run_scenario("tcp", scenario)


def test_a_view_change_the_node_cannot_handle_stops_the_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The transport hands view changes to the node from its own loops (tcp:
    the one that keeps a link connected). An error there ended that loop,
    and the link was never connected again; now the node stops."""
    on_view = Liveness.on_view

    def broken_on_node_1(self: Liveness, view: View) -> None:
        if self.node.pnn == 1:
            raise RuntimeError("a bug")
        on_view(self, view)

    async def scenario(cluster: SimCluster) -> None:
        monkeypatch.setattr(Liveness, "on_view", broken_on_node_1)
        await cluster.crash_node(2)
        node1 = cluster.nodes[1]
        assert await cluster.until(node1.shutdown_requested.is_set, 5), cluster.describe()
        assert node1.failure is not None and node1.failure.startswith("handling view")
        assert not cluster.nodes[0].shutdown_requested.is_set()

    run_scenario("tcp", scenario)


def test_a_vs_rejoin_that_breaks_stops_the_node() -> None:
    """A member that left the group to resync and whose rejoin broke stayed
    out for good, serving nothing, and nobody asked it back."""

    async def scenario(cluster: SimCluster) -> None:
        node1 = cluster.nodes[1]

        async def broken_start() -> None:
            raise RuntimeError("a bug")

        node1.transport.start = broken_start  # type: ignore[method-assign]
        membership = node1.membership
        assert isinstance(membership, StreamMembership)
        await cluster.run_on(1, _resync(membership))
        assert await cluster.until(node1.shutdown_requested.is_set, 5), cluster.describe()
        assert node1.failure is not None and node1.failure.startswith("rejoining the group")

    run_scenario("vs", scenario)


async def _resync(membership: StreamMembership) -> None:
    membership.engine.resync("a test wants it", damaged=False)


def test_a_task_of_the_transport_that_breaks_stops_the_node() -> None:
    """The backends' own tasks (tcp: each link's reconnections, keepalives;
    vs: reconnecting to corosync) ended in silence when they raised: a link
    never connected again, a member never back in the group. They run
    through `Transport.spawn`, which reports such an end to the node."""

    async def scenario(cluster: SimCluster) -> None:
        node1 = cluster.nodes[1]

        async def broken() -> None:
            raise RuntimeError("a bug")

        async def cancelled() -> None:
            await asyncio.Event().wait()

        async def spawn() -> None:
            node1.transport.spawn(cancelled(), "a loop that is cancelled").cancel()
            node1.transport.spawn(asyncio.sleep(0), "a loop that ends well")
            await asyncio.sleep(0.1)
            assert not node1.shutdown_requested.is_set()  # (virtual time: both have ended)
            node1.transport.spawn(broken(), "a test loop")

        await cluster.run_on(1, spawn())
        assert await cluster.until(node1.shutdown_requested.is_set, 5), cluster.describe()
        assert node1.failure == "a test loop: RuntimeError('a bug')"

    run_scenario("tcp", scenario)
