"""A node whose storage keeps failing recoveries is banned; one whose storage
works again is not.

As CTDB does, the tcp leader bans a member that made BAN_AFTER_FAILURES
recoveries in a row fail with an I/O error over at least RecoverTimeout,
and the others recover without it. The member confirms the row itself
(`RecoveryMember.ctl_ban_failing`): a leader stopped for a while may read
an old failure late (tcp seed 3234633, in test_simulation's FOUND list).

Runs the real `Node` code on the simulated network (tools/sim), whose
disks fail writes on demand.
"""

from __future__ import annotations

from ctdb.engines.base import resolved
from ctdb.server.leader import BAN_AFTER_FAILURES
from ctdb.server.state import NodeFlags
from ctdb.storage.database import DbKind
from tools.sim.cluster import SimCluster, run_scenario


async def _failing_recovery(cluster: SimCluster) -> None:
    """Records written on node 0, then node 2's disk fails and a recovery
    starts: each attempt pushes them to node 2, and fails there."""

    async def store() -> None:
        node = cluster.nodes[0]
        db = await node.records.attach("ban_test", DbKind.VOLATILE)
        for i in range(10):
            await resolved(node.records.store(db, b"k%d" % i, b"v", object()))

    await cluster.run_on(0, store())
    cluster.disks[2].failure_rate = 1.0
    cluster.nodes[0].force_recovery()


def test_a_member_whose_storage_keeps_failing_is_banned_and_the_others_serve() -> None:
    async def scenario(cluster: SimCluster) -> None:
        started = cluster.loop.time()
        await _failing_recovery(cluster)
        node2 = cluster.nodes[2]
        assert await cluster.until(lambda: bool(node2.flags & NodeFlags.BANNED), 20), (
            cluster.describe()
        )
        recover_timeout = cluster.tunables["RecoverTimeout"]
        assert cluster.loop.time() - started >= recover_timeout  # a row, not one bad moment
        assert cluster.disks[2].errors, "the ban must come from the failing writes"

        def others_serve_without_it() -> bool:
            return all(
                cluster.nodes[p].serving and cluster.nodes[p].vnnmap == [0, 1] for p in (0, 1)
            )

        assert await cluster.until(others_serve_without_it, 10), cluster.describe()

    run_scenario("tcp", scenario)


def test_a_member_that_served_since_its_failures_refuses_the_ban() -> None:
    async def scenario(cluster: SimCluster) -> None:
        node2 = cluster.nodes[2]
        # Its storage failed the steps of earlier recoveries, then worked again
        # and it served: the row is broken, whatever a late leader counted.
        await _failing_recovery(cluster)
        assert await cluster.until(lambda: bool(cluster.disks[2].errors), 10)
        cluster.disks[2].failure_rate = 0.0
        assert await cluster.settle(20), cluster.describe()
        args = {"seconds": 30.0, "failures": BAN_AFTER_FAILURES}
        banned = await cluster.run_on(0, cluster.nodes[0].control(2, "ban_failing", args))
        assert banned is False
        assert not node2.flags & NodeFlags.BANNED

    run_scenario("tcp", scenario)


def test_a_member_serves_only_once_its_thawed_epoch_is_on_disk() -> None:
    """The thawed epoch certifies what a member's persistent copies hold
    (`merge.persistent_source`): written after the member had begun to serve,
    a disk that refused it left the member serving a generation its files
    did not name. It is written first now, and a refusal leaves it frozen."""

    async def scenario(cluster: SimCluster) -> None:
        node2 = cluster.nodes[2]
        seen: list[tuple[bool, str]] = []
        thaw = node2.epochs.thaw

        def refused_once() -> None:
            seen.append((node2.serving, node2.recovery_mode.name))
            if len(seen) == 1:
                raise OSError(28, "No space left on device")
            thaw()

        node2.epochs.thaw = refused_once  # type: ignore[method-assign]
        generation = node2.generation
        cluster.nodes[0].force_recovery()

        def recovered() -> bool:
            return cluster.healthy() and node2.generation != generation

        assert await cluster.until(recovered, 20), cluster.describe()
        assert len(seen) >= 2
        assert seen[0] == (False, "RECOVERY")  # not serving while its epoch is written
        assert node2.epochs.thawed == node2.epochs.epoch

    run_scenario("tcp", scenario)
