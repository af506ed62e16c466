"""Contended records migrate about once per acquisition, not in storms.

A record that arrives for a client waiting here is kept until that client
has had it (`KeyState.reserved`): handed on at once to a call that reached
this node meanwhile, it left before its client ran, which then fetched it
again. With three nodes taking turns that cost 7.6 calls per acquisition
(10.9 with six clients), measured on real daemons. Here the real engine
runs on the simulated network, where the count is exact and repeatable:
192 calls for 120 acquisitions before, 113 after.
"""

from __future__ import annotations

import asyncio

from ctdb.engines.base import resolved
from ctdb.storage.database import DbKind
from ctdb.storage.placement import lmaster
from tools.sim.cluster import SimCluster, run_scenario

ROUNDS = 40
#: A client's round trip to its daemon, in seconds: as long as a message
#: between nodes, so that calls from other nodes meet the record's arrival.
CLIENT_TRIP = 0.001


async def _contend(cluster: SimCluster, name: str) -> int:
    """Each node's client takes the record ROUNDS times (fetch_lock, +1,
    store_unlock); checks that every increment was kept. The calls it took."""
    await cluster.run_on(0, cluster.nodes[0].attach_everywhere(name, DbKind.VOLATILE))
    counts = dict.fromkeys(range(3), 0)

    async def increments(pnn: int) -> None:
        node = cluster.nodes[pnn]
        records, db = node.records, node.db_by_name(name)
        session = object()
        for _ in range(ROUNDS):
            value = await records.lock(db, b"counter", session) or b"0"
            await asyncio.sleep(CLIENT_TRIP)  # the reply to the client, its store_unlock
            await resolved(records.unlock(db, b"counter", session, b"%d" % (int(value) + 1)))
            counts[pnn] += 1
            await asyncio.sleep(CLIENT_TRIP)  # and its next fetch_lock

    calls_before = sum(node.stats["calls_sent"] for node in cluster.nodes.values())
    await asyncio.gather(*(cluster.spawn(p, increments(p)) for p in range(3)))
    calls = sum(node.stats["calls_sent"] for node in cluster.nodes.values()) - calls_before

    acquisitions = sum(counts.values())
    assert acquisitions == 3 * ROUNDS
    node0 = cluster.nodes[0]
    fetch = node0.records.fetch(node0.db_by_name(name), b"counter", object())
    final = await cluster.run_on(0, resolved(fetch))
    assert final == b"%d" % acquisitions  # every increment kept
    return calls


def test_contending_nodes_migrate_a_record_about_once_per_acquisition() -> None:
    async def scenario(cluster: SimCluster) -> None:
        calls = await _contend(cluster, "storm")
        # A node that takes the record after another one needs one call.
        assert calls <= 1.2 * 3 * ROUNDS, f"{calls} calls for {3 * ROUNDS} acquisitions"

    run_scenario("tcp", scenario)


def _set_pindown(cluster: SimCluster, ms: int) -> None:
    for node in cluster.nodes.values():
        node.tunables["StickyPindown"] = ms  # as `setvar` sets it


def test_a_pinned_record_serves_several_acquisitions_per_visit() -> None:
    """StickyPindown: a record that migrated to a node for its clients stays
    there that long, so each visit serves several of their acquisitions."""

    async def scenario(cluster: SimCluster) -> None:
        _set_pindown(cluster, 20)
        calls = await _contend(cluster, "sticky")
        # Unpinned, every acquisition after another node's needs a call (113
        # calls for 120 in the test above); a 20 ms pin serves about five.
        assert calls <= 0.4 * 3 * ROUNDS, f"{calls} calls for {3 * ROUNDS} acquisitions"

    run_scenario("tcp", scenario)


def test_a_call_for_a_pinned_record_is_served_when_the_pin_ends() -> None:
    async def scenario(cluster: SimCluster) -> None:
        pindown = 0.2
        _set_pindown(cluster, 200)
        await cluster.run_on(0, cluster.nodes[0].attach_everywhere("pin", DbKind.VOLATILE))
        loop = asyncio.get_running_loop()

        async def take(pnn: int) -> float:
            """Lock and unlock the record on node `pnn`: when the lock was granted."""
            node = cluster.nodes[pnn]
            records, db, session = node.records, node.db_by_name("pin"), object()
            await records.lock(db, b"k", session)
            granted = loop.time()
            await resolved(records.unlock(db, b"k", session, b"%d" % pnn))
            return granted

        home = lmaster(b"k", cluster.nodes[0].vnnmap)  # where the new record starts
        first = next(p for p in range(3) if p != home)  # it migrates there, pinned
        second = next(p for p in range(3) if p not in (home, first))
        arrived = await cluster.spawn(first, take(first))
        taken = await cluster.spawn(second, take(second))
        # Not before the pin ends; at once after (a message's latency is at most 2 ms).
        assert arrived + pindown - 0.01 <= taken <= arrived + pindown + 0.05, (arrived, taken)
        node = cluster.nodes[second]
        fetch = node.records.fetch(node.db_by_name("pin"), b"k", object())
        assert await cluster.run_on(second, resolved(fetch)) == b"%d" % second

    run_scenario("tcp", scenario)
