"""vs: a node whose disk keeps failing backs off between rejoins, and serves
again soon after its disk heals.

A member whose local write fails leaves the group and rejoins through a
state transfer. If its disk stays full or broken, the transfer fails too,
and rejoined at once it asked a donor for a whole copy again and again:
every 0.4 s on real daemons with chaos's databases (vs seed 1630), 181
times in 10 s with small ones, 586 times in 10 virtual seconds here.
`ctdb.server.stream` now waits between such rejoins, up to
`REJOIN_BACKOFF_MAX`, and these tests bound that both ways: few rejoins
while the disk fails, but rejoins all the same, and a prompt return once
it heals.

Runs the real `Node` code on the simulated network (tools/sim).
"""

from __future__ import annotations

import asyncio

from ctdb.common.errors import CtdbError
from ctdb.server.stream import REJOIN_BACKOFF_MAX
from ctdb.storage.database import Database, DbKind
from tools.sim.cluster import SimCluster, run_scenario, watch_leaves

FAILING = 10.0  # virtual seconds node 1's disk fails every write


async def _commit_until(cluster: SimCluster, db: Database, end: float) -> int:
    """Commit on node 0 every 50 ms until `end`: how many were acknowledged."""
    node = cluster.nodes[0]
    done = 0
    i = 0
    while cluster.loop.time() < end:
        tx = node.transactions.begin(db)
        tx.writes[b"k%d" % (i % 20)] = b"v%d" % i
        try:
            await asyncio.wait_for(node.records.commit(tx), 5)
            done += 1
        except (CtdbError, TimeoutError):
            pass  # refused or not acknowledged in time: only the count says so
        i += 1
        await asyncio.sleep(0.05)
    return done


def test_a_node_whose_disk_keeps_failing_backs_off_and_serves_once_it_heals() -> None:
    async def scenario(cluster: SimCluster) -> None:
        async def attach() -> Database:
            return await cluster.nodes[0].records.attach("failing.tdb", DbKind.PERSISTENT)

        db = await cluster.run_on(0, attach())
        left = watch_leaves(cluster, 1)
        cluster.disks[1].failure_rate = 1.0
        end = cluster.loop.time() + FAILING
        committed = await cluster.run_on(0, _commit_until(cluster, db, end))
        assert committed > 50, "nodes 0 and 2 must go on committing without node 1"

        # Without the backoff: 586 leaves (seeds 5-7). With it, the waits
        # double to the cap, so about FAILING / cap of them, but it keeps
        # trying.
        assert 4 <= len(left) <= FAILING / REJOIN_BACKOFF_MAX + 8, left
        gaps = [b - a for a, b in zip(left, left[1:], strict=False)]
        assert max(gaps) < REJOIN_BACKOFF_MAX + 1.0, gaps

        cluster.disks[1].failure_rate = 0.0
        healed = cluster.loop.time()
        assert await cluster.until(lambda: cluster.nodes[1].serving, 10), cluster.describe()
        assert cluster.loop.time() - healed < REJOIN_BACKOFF_MAX + 1.0
        assert await cluster.settle(30), cluster.describe()
        copies = [dict(cluster.nodes[p].db(db.id).local.items()) for p in range(3)]
        assert copies[1] == copies[0] == copies[2]

    run_scenario("vs", scenario, seed=5)
