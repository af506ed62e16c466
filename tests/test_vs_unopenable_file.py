"""vs: a node that cannot open a database's file leaves the group and
rejoins, instead of going on without the database.

Runs the real `Node` code on the simulated network (tools/sim).
"""

from __future__ import annotations

import errno
from typing import Any

import pytest
import tdb

from ctdb.storage.database import Database, DbKind
from tools.sim.cluster import SimCluster, run_scenario, watch_leaves


def test_a_node_that_cannot_open_an_attached_file_resyncs_instead_of_going_on_without_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An attach is an operation of the ordered stream. A file node 1 could
    not open used to be a CtdbError, which the stream takes for a refusal
    every member makes alike: node 1 stayed in the group without the
    database, and the attach was never acknowledged (it waits for every
    member to apply it). It is a local failure now: node 1 leaves, and
    rejoins with the database once it can open it."""
    real_tdb = tdb.Tdb
    failing = {"on": True}

    def tdb_open(path: str, *args: Any) -> Any:
        if failing["on"] and "/node1/" in path and "opened_later" in path:
            raise OSError(errno.EACCES, "permission denied (injected)")
        return real_tdb(path, *args)

    monkeypatch.setattr(tdb, "Tdb", tdb_open)

    async def scenario(cluster: SimCluster) -> None:
        left = watch_leaves(cluster, 1)

        async def attach() -> Database:
            return await cluster.nodes[0].records.attach("opened_later.tdb", DbKind.VOLATILE)

        db = await cluster.run_on(0, attach())
        assert await cluster.until(lambda: bool(left), 5.0), "node 1 never left"
        assert db.id not in cluster.nodes[1].dbs
        failing["on"] = False
        assert await cluster.settle(30), cluster.describe()
        assert db.id in cluster.nodes[1].dbs

    run_scenario("vs", scenario, seed=5)
