"""A node whose disk fills while Samba's clients hold a lent g_lock: no
`ctdb pfetch` there reads less than was acknowledged when it started.

Samba's persistent transactions take their g_lock record in place when its
header names their node, and then read the node's persistent file in
place. Over vs the record is lent to the node (`samba_grants`); a node
whose apply fails (its disk is full) resyncs, and revokes what is lent,
but a record whose chain a client holds (Samba's g_lock client asks
PROCESS_EXISTS of another node while it holds it) goes back only once the
client lets go, and a `ctdb pfetch` queued on that chain gets it before
the daemon does. If the node left the group at once, the others would
acknowledge the commit it failed to apply, and that pfetch would read the
value before it (CI, chaos vs seed 11, read a value 11 commits old; this
test read "old" after "new" was acknowledged, every run, before the fix
in `StreamMembership._taken_back`). Over tcp the commit's two-phase
prepare fails on the full disk, so it is refused everywhere.

Real daemons on loopback (node 1's state directory a small tmpfs, which
needs root), Samba's own `ctdb` tool, a chain holder process.
"""

from __future__ import annotations

import os
import threading

import pytest

from ctdb.common.errors import CtdbError
from tests import samba_tool
from tools.chaos import fill
from tools.cluster import LocalCluster

pytestmark = [
    pytest.mark.skipif(not samba_tool.INSTALLED, reason="Samba's ctdb tool is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a tmpfs mount needs root"),
    pytest.mark.timeout(240),
]

DB = "resync_pfetch.tdb"


@pytest.fixture
def cluster(node1_on_tmpfs: LocalCluster) -> LocalCluster:
    """Three nodes; node 1 keeps its databases on a tmpfs of 32 MiB."""
    return node1_on_tmpfs


def samba_done(c: LocalCluster, pnn: int, *args: str) -> str:
    """What `ctdb ARGS` printed, once it exited 0."""
    status, out, err = samba_tool.run(samba_tool.door(c, pnn), *args)
    assert status == 0, f"ctdb {' '.join(args)}: {err}"
    return out


def test_a_pfetch_on_a_node_that_failed_a_commit_reads_what_was_acknowledged(
    cluster: LocalCluster,
) -> None:
    c = cluster
    state = c.node_dir(1) / "state"
    with samba_tool.g_lock_held(c, 1, DB, "old") as let_go:
        fill(state / "filler")
        acknowledged = threading.Event()
        failed: list[CtdbError] = []

        def commit() -> None:
            # A value node 1's full disk cannot take.
            with c.client(0, timeout=60) as client:
                tx = client.transaction(DB)
                tx.store("k", "new")
                tx.store("big", "x" * 1_000_000)
                try:
                    tx.commit()
                except CtdbError as exc:
                    failed.append(exc)
                    return
            acknowledged.set()

        committing = threading.Thread(target=commit)
        committing.start()
        # Long enough for the others to go on without node 1 had it left.
        acknowledged.wait(2.0)
        floor = "new" if acknowledged.is_set() else "old"
        reader = samba_tool.start(samba_tool.door(c, 1), "pfetch", DB, "k")
        assert samba_tool.still_waits(reader), "the pfetch must wait for the held chain"
        let_go()
        # Room again, so that node 1 can rejoin and serve the pfetch if
        # the g_lock went back before it got the chain.
        (state / "filler").unlink()
        read, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    assert read.strip() in ("old", "new")
    if floor == "new":
        assert read.strip() == "new", "a pfetch read less than was acknowledged before it"
    committing.join(60)
    assert acknowledged.is_set() or failed, "the commit must end"
    c.wait_healthy(timeout=60)
    reads = [samba_done(c, pnn, "pfetch", DB, "k") for pnn in range(c.size)]
    # A commit that failed may yet have happened (its error says so unless
    # it is BUSY): then every node holds the same outcome, whichever it is.
    assert len(set(reads)) == 1 and reads[0] in ("old", "new"), reads
    if acknowledged.is_set():
        assert reads[0] == "new", "an acknowledged commit was lost"
