"""The cluster lock on shared storage (`cluster lock = PATH`, tcp transport).

With a lock file the leader's right to recover comes from holding an fcntl
lock on it instead of from a majority of configured nodes: a lone survivor
that holds (or can take) the lock keeps serving, where majority mode would
freeze it (tests/test_recovery.py shows that side).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from tests.conftest import start_cluster, unique, wait_for

TUNABLES = {"KeepaliveInterval": 0.2, "KeepaliveLimit": 3}


def lock_is_held(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    fcntl.lockf(fd, fcntl.LOCK_UN)
    return False


@pytest.mark.timeout(120)
def test_lock_holder_serves_alone_and_lock_moves_on_leader_death(tmp_path: Path) -> None:
    lock = tmp_path / "shared" / "cluster.lock"
    lock.parent.mkdir()
    c = start_cluster(tmp_path, "tcp", cluster_lock=lock, tunables=TUNABLES)
    try:
        db = unique("lockdb")
        with c.client(0) as cl:
            cl.attach(db, "persistent")
            with cl.transaction(db) as tx:
                tx.store("before", "1")
        assert c.status(0)["leader"] == 0
        assert lock_is_held(lock), "the leader must hold the cluster lock"

        # The leader dies: its lock is released with it, node 1 takes it.
        c.kill_node(0)
        wait_for(
            "node 1 to lead [1, 2]",
            lambda: (
                c.status(1)["leader"] == 1
                and c.status(1)["vnnmap"] == [1, 2]
                and c.status(1)["recovery_mode"] == "NORMAL"
            ),
            15,
        )
        assert lock_is_held(lock)

        # Majority mode would freeze a lone survivor; the lock holder serves on.
        c.kill_node(2)
        wait_for(
            "node 1 alone NORMAL",
            lambda: c.status(1)["vnnmap"] == [1] and c.status(1)["recovery_mode"] == "NORMAL",
            15,
        )
        with c.client(1, timeout=20) as cl:
            with cl.transaction(db) as tx:
                tx.store("alone", "2")
            assert cl.call("fetch", db=db, key=b"before") == b"1"
            assert cl.call("fetch", db=db, key=b"alone") == b"2"
    finally:
        c.down()


@pytest.mark.timeout(120)
def test_a_lower_pnn_arriving_later_gets_the_lock(tmp_path: Path) -> None:
    """Nodes 1 and 2 form the cluster first (node 1 takes the lock); when node 0
    arrives it is the rightful leader, so node 1 must hand the lock over."""
    import random

    from tools.cluster import LocalCluster

    lock = tmp_path / "cluster.lock"
    c = LocalCluster(
        tmp_path / "c",
        port=random.randint(20000, 60000),
        base=f"127.{random.randint(10, 250)}.{random.randint(0, 250)}",
        cluster_lock=lock,
        tunables=TUNABLES,
    )
    try:
        c.write_configs()
        c.start_node(1)
        c.start_node(2)
        c.wait_healthy(20, nodes=[1, 2])
        assert c.status(1)["leader"] == 1 and lock_is_held(lock)
        c.start_node(0)
        c.wait_healthy(20, nodes=[0, 1, 2])
        assert c.status(2)["leader"] == 0
        assert lock_is_held(lock)
    finally:
        c.down()


@pytest.mark.timeout(120)
def test_a_stopped_leader_keeps_the_lock_until_the_leases_it_confirmed_ran_out(
    tmp_path: Path,
) -> None:
    """With the lock a follower's lease rests on the leader's echoes alone, and
    a stopped leader is left out of the next recovery, where it could report
    them: it hands the lock over only once they have run out
    (`LeaderRecovery._lock_leases_pending`). Bounded both ways: never before
    the lease (2 s here) after the stop, and well within the test's timeout."""
    lock = tmp_path / "shared" / "cluster.lock"
    lock.parent.mkdir()
    lease = 2.0
    c = start_cluster(
        tmp_path, "tcp", cluster_lock=lock, tunables={"KeepaliveInterval": 1.0, "KeepaliveLimit": 3}
    )
    try:
        assert c.status(0)["leader"] == 0
        with c.client(1) as cl:
            stopped = time.monotonic()
            cl.call("stop", pnn=0)
        wait_for(
            "node 1 to lead [1, 2]",
            lambda: c.status(1)["leader"] == 1 and c.status(1)["vnnmap"] == [1, 2],
            30,
        )
        took = time.monotonic() - stopped
        assert took > lease - 0.6, f"node 1 led after {took:.2f}s, before node 0's grants ran out"
        with c.client(0) as cl:
            cl.call("continue")
        wait_for("node 0 back", lambda: c.status(2)["vnnmap"] == [0, 1, 2], 30)
    finally:
        c.down()
