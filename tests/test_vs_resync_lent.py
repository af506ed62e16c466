"""vs: a node that resyncs leaves the group only once no record in its shared
files names it any more.

Samba's clients work in place on a record lent to their node, and read the
node's other files under it: `ctdb pfetch` reads the persistent copy under
a g_lock lent there. A resync revokes what is lent, but a record whose
chain a client holds goes back only once the client lets go, and clients
queued on the chain get it first. If the node left the group at once, the
others would acknowledge commits without it while its clients still read
its copy: in CI, chaos vs seed 11 filled node 1's disk, node 1 left, and
`ctdb pfetch` there read a value 11 commits old. So the node stays (and
every write waits for it to say it applied it) until the record is back,
for RecoverTimeout at most.

Runs the real `Node` code on the simulated network (tools/sim), where a
client of another process holding a chain is `SimLocalDb.others`.
"""

from __future__ import annotations

import asyncio

from ctdb.engines.base import resolved
from ctdb.engines.ordered.engine import OrderedEngine
from ctdb.server import serving
from ctdb.storage.database import Database, DbKind
from ctdb.storage.ltdb import NO_DMASTER
from tools.sim.cluster import SimCluster, run_scenario, watch_leaves
from tools.sim.storage import SimLocalDb

KEY = b"g_lock"


async def _lend_on_node_1(cluster: SimCluster) -> Database:
    """A record of a shared volatile file, lent to node 1's Samba clients."""

    async def lend() -> Database:
        node = cluster.nodes[1]
        db = await node.records.attach("resync_lent.tdb", DbKind.VOLATILE)
        await serving.share(node, db)
        engine = node.membership.engine
        assert isinstance(engine, OrderedEngine)
        await engine.samba.migrate_here(db, KEY)
        return db

    db: Database = await cluster.run_on(1, lend())
    rec = db.local.get(KEY)
    assert rec is not None and rec.dmaster == 1, "the record must be lent to node 1"
    return db


async def _resync_node_1(cluster: SimCluster) -> None:
    async def resync() -> None:
        # As after a failed local write: the node leaves the group to resync.
        cluster.nodes[1].membership.local_failure()

    await cluster.run_on(1, resync())


async def _commit_on_node_0(cluster: SimCluster, value: bytes) -> None:
    node = cluster.nodes[0]
    db = await node.records.attach("resync_lent_p.tdb", DbKind.PERSISTENT)
    tx = node.transactions.begin(db)
    tx.writes[b"k"] = value
    await resolved(node.records.commit(tx))


def test_a_resyncing_node_stays_until_a_client_gives_back_its_chain() -> None:
    async def scenario(cluster: SimCluster) -> None:
        await cluster.run_on(0, _commit_on_node_0(cluster, b"before"))
        db = await _lend_on_node_1(cluster)
        local = db.local
        assert isinstance(local, SimLocalDb)
        local.others[KEY] += 1  # a Samba client of node 1 holds the record's chain
        left = watch_leaves(cluster, 1)
        await _resync_node_1(cluster)
        resynced = cluster.loop.time()
        commit = cluster.spawn(0, _commit_on_node_0(cluster, b"after"))

        # Node 1 stays, and no commit is acknowledged that it did not apply.
        assert not await cluster.until(lambda: bool(left), 1.0), "left with the record lent"
        assert not commit.done(), "a commit was acknowledged without node 1"
        assert local.get(KEY).dmaster == 1  # type: ignore[union-attr]

        del local.others[KEY]  # the client lets go
        assert await cluster.until(lambda: bool(left), 1.0), "still in the group"
        rec = local.get(KEY)
        assert rec is None or rec.dmaster == NO_DMASTER, "left before the record went back"
        assert left[0] - resynced < cluster.tunables["RecoverTimeout"]
        await asyncio.wait_for(commit, 30)
        assert await cluster.settle(30), cluster.describe()

    run_scenario("vs", scenario, seed=5)


def test_a_client_that_keeps_its_chain_holds_the_resyncing_node_back_for_recover_timeout() -> None:
    async def scenario(cluster: SimCluster) -> None:
        db = await _lend_on_node_1(cluster)
        local = db.local
        assert isinstance(local, SimLocalDb)
        local.others[KEY] += 1  # held, and never given back in time
        left = watch_leaves(cluster, 1)
        await _resync_node_1(cluster)
        resynced = cluster.loop.time()
        limit = cluster.tunables["RecoverTimeout"]
        assert await cluster.until(lambda: bool(left), limit + 2.0), "never left"
        # Bounded both ways: it waited for the client, but not for good.
        assert limit <= left[0] - resynced < limit + 1.0
        del local.others[KEY]
        assert await cluster.settle(30), cluster.describe()

    run_scenario("vs", scenario, seed=5)
