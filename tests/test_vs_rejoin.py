"""A vs node that resyncs leaves the group and joins again; a join that fails
(corosync restarting) is retried, or the node would stay out for good.

Runs the real `Node` code on the simulated network (tools/sim), where the
join of a given node can be made to fail."""

from __future__ import annotations

import asyncio
import errno

from tools.sim.cluster import SimCluster, run_scenario
from transport.base import TransportError


def test_a_resync_whose_join_fails_joins_again_and_serves() -> None:
    async def scenario(cluster: SimCluster) -> None:
        node = cluster.nodes[2]
        transport = node.transport
        join = transport.start
        failures: list[float] = []

        async def flaky_start() -> None:
            if len(failures) < 2:
                failures.append(asyncio.get_running_loop().time())
                raise TransportError("corosync is restarting")
            await join()

        transport.start = flaky_start  # type: ignore[method-assign]
        await cluster.run_on(2, _resync(cluster))
        assert await cluster.settle(30), cluster.describe()
        assert len(failures) == 2, "the join must have failed twice before it worked"
        assert failures[1] - failures[0] >= 0.5  # retried after a pause, not in a spin

    run_scenario("vs", scenario, seed=5)


async def _resync(cluster: SimCluster) -> None:
    # As after a failed local write: the node leaves the group to resync.
    cluster.nodes[2].membership.local_failure()


def test_a_view_change_whose_write_fails_resyncs_the_node() -> None:
    """A view change that only loses a member writes the epoch file of every
    member in sync. One whose disk fails that write is left behind the
    others (their epoch moved on, its own did not), as after a failed apply,
    so it resyncs; before, the transport only logged what its callback
    raised and the node carried on as if in sync."""

    async def scenario(cluster: SimCluster) -> None:
        node = cluster.nodes[2]
        epochs = node.epochs
        real_set = epochs.set
        failed: list[int] = []

        def full_disk(epoch: int) -> None:
            if not failed:
                failed.append(epoch)
                raise OSError(errno.ENOSPC, "No space left on device")
            real_set(epoch)

        epochs.set = full_disk  # type: ignore[method-assign]
        left: list[float] = []
        stop = node.transport.stop

        async def noted_stop() -> None:
            left.append(cluster.loop.time())
            await stop()

        node.transport.stop = noted_stop  # type: ignore[method-assign]
        await cluster.crash_node(0)
        assert await cluster.until(lambda: bool(left), 5.0), "node 2 did not resync"
        assert failed, "the view change must have written the epoch"
        await cluster.start_node(0)
        assert await cluster.settle(30), cluster.describe()
        assert len({cluster.nodes[p].epochs.epoch for p in range(3)}) == 1

    run_scenario("vs", scenario, seed=5)
