"""A vs node that resyncs leaves the group and joins again; a join that fails
(corosync restarting) is retried, or the node would stay out for good.

Runs the real `Node` code on the simulated network (tools/sim), where the
join of a given node can be made to fail."""

from __future__ import annotations

import asyncio

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
