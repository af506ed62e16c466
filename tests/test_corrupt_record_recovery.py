"""A record corrupt on one tcp node does not stop the cluster's recoveries.

A record without its CTDB header has no RSN and no dmaster: a foreign writer
of the shared file made it (our daemon and Samba's clients always write the
header), and recovery cannot rank it against the other copies. A recovery's
pull used to fail on it, and so did every later attempt, cluster-wide, until
someone removed the record by hand: one bad record stopped every node's
writes. (Samba's ctdbd fails its pull on such a record too.)

Now a volatile pull leaves it out and the node drops it, with an error in its
log: the cluster's copy of that key, if another node has one, replaces it. A
persistent or replicated copy is never edited behind its sequence number: its
pull still fails, and, as for any storage that keeps failing recoveries, the
leader bans the node and the others serve (`test_storage_ban`).

Runs the real `Node` code on the simulated network (tools/sim).
"""

from __future__ import annotations

import pytest
import tdb

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.base import resolved
from ctdb.server.recovery_member import _pullable
from ctdb.server.state import NodeFlags
from ctdb.storage.database import DbKind
from tools.sim.cluster import SimCluster, run_scenario


async def _store_all(
    cluster: SimCluster, pnn: int, name: str, kind: DbKind, keys: list[bytes]
) -> None:
    async def store() -> None:
        node = cluster.nodes[pnn]
        db = await node.records.attach(name, kind)
        for key in keys:
            await resolved(node.records.store(db, key, b"v-" + key, object()))

    await cluster.run_on(pnn, store())


def _corrupt(cluster: SimCluster, pnn: int, name: str, key: bytes) -> None:
    """What a foreign writer of node `pnn`'s file does: a value with no header."""
    cluster.nodes[pnn].db_by_name(name).local._tdb.store(key, b"junk", tdb.REPLACE)


def test_a_volatile_record_without_its_header_is_dropped_and_recovery_completes() -> None:
    async def scenario(cluster: SimCluster) -> None:
        mine = [b"two-%d" % i for i in range(8)]
        theirs = [b"zero-%d" % i for i in range(8)]
        await _store_all(cluster, 2, "corrupt_test", DbKind.VOLATILE, mine)
        await _store_all(cluster, 0, "corrupt_test", DbKind.VOLATILE, theirs)
        # A record node 2 wrote (so its next pull sends it), then a foreign
        # writer's junk over it.
        _corrupt(cluster, 2, "corrupt_test", mine[3])
        generation = cluster.nodes[0].generation
        cluster.nodes[0].force_recovery()

        def recovered() -> bool:
            return cluster.healthy() and cluster.nodes[0].generation != generation

        assert await cluster.until(recovered, 10), cluster.describe()
        assert not any(cluster.nodes[p].flags & NodeFlags.BANNED for p in range(3))
        node2 = cluster.nodes[2]
        assert node2.stats["corrupt_records_dropped"] == 1
        local = node2.db_by_name("corrupt_test").local
        # Every record is readable again on node 2 (none raises), and every
        # sound record kept its value wherever it is now.
        assert all(rec.value in (b"", b"v-" + key) for key, rec in local.items())
        for p in (0, 1):
            copy = cluster.nodes[p].db_by_name("corrupt_test").local
            assert all(rec.value in (b"", b"v-" + key) for key, rec in copy.items())
        held = {
            key
            for p in range(3)
            for key, rec in cluster.nodes[p].db_by_name("corrupt_test").local.items()
            if rec.value
        }
        assert held == set(theirs) | set(mine) - {mine[3]}

    run_scenario("tcp", scenario)


def test_a_persistent_copy_with_a_record_without_its_header_is_not_pulled() -> None:
    """Its pull fails with an I/O error naming the key (which, repeated, bans
    the node), and the file keeps the record: a persistent copy is never
    edited behind its sequence number."""

    async def scenario(cluster: SimCluster) -> None:
        await _store_all(cluster, 0, "corrupt_p", DbKind.PERSISTENT, [b"a", b"b"])
        _corrupt(cluster, 2, "corrupt_p", b"b")
        db = cluster.nodes[2].db_by_name("corrupt_p")
        with pytest.raises(CtdbError) as caught:
            _pullable(db, None)
        assert caught.value.code == ErrorCode.IO
        assert "b'b'" in str(caught.value) and "corrupt_p" in str(caught.value)
        assert db.local._tdb.get(b"b") == b"junk"

    run_scenario("tcp", scenario)
