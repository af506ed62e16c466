"""A daemon stopped (SIGSTOP) while its Samba clients hold a lent g_lock: a
`ctdb pfetch` that comes meanwhile does not read what the others replaced.

Node 0 lends its Samba clients the g_lock record, one of which holds the
record's chain (as Samba's g_lock client does while it asks PROCESS_EXISTS
of another node). Node 0's daemon is stopped; nodes 1 and 2 go on without
it and commit "new"; a `ctdb pfetch` on node 0 starts, and its requests
wait in the daemon's socket. The daemon resumes with them and its lease's
end due at once, and used to answer them before it took the g_lock back:
the pfetch then queued on the held chain ahead of the daemon and read
node 0's copy in place, "old" (5 runs in 5; chaos vs seed 1615). Now the
door holds a client's requests back until what is lent went back
(`SambaGrants.given_back`), except those a client sends under a chain.

Real daemons on loopback, Samba's own `ctdb` tool, a chain holder process.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest
import tdb

from ctdb.storage.ltdb import TDB_MUTEX_LOCKING
from tests import samba_tool
from tests.chain_holder import Holder
from tools.cluster import LocalCluster

pytestmark = [
    pytest.mark.skipif(not samba_tool.INSTALLED, reason="Samba's ctdb tool is not installed"),
    pytest.mark.timeout(180),
]

DB = "stopped_daemon.tdb"


def test_a_pfetch_that_came_while_the_daemon_was_stopped_reads_what_was_acknowledged(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    c = cluster_factory(tunables={"KeepaliveInterval": 0.2, "KeepaliveLimit": 3})
    lock_key = samba_tool.g_lock_key(DB)

    def samba_run(pnn: int, *args: str) -> tuple[int, str, str]:
        return samba_tool.run(samba_tool.door(c, pnn), *args)

    assert samba_run(0, "attach", DB, "persistent")[0] == 0
    assert samba_run(0, "pstore", DB, "k", "old")[0] == 0  # lends node 0 the g_lock
    g_lock = next(c.node_dir(0).rglob("g_lock.tdb*"))
    holder = Holder(g_lock, tdb.NOSYNC | TDB_MUTEX_LOCKING)
    daemon = c.pids[0]
    try:
        assert holder.ask("lock", lock_key) == "locked"
        os.kill(daemon, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 30.0
            while (stored := samba_run(1, "pstore", DB, "k", "new"))[0] != 0:
                assert time.monotonic() < deadline, f"nodes 1 and 2 never went on: {stored[2]}"
            reader = samba_tool.start(samba_tool.door(c, 0), "pfetch", DB, "k")
            time.sleep(0.3)  # (its requests reach the stopped daemon's socket)
        finally:
            os.kill(daemon, signal.SIGCONT)
        time.sleep(1.0)  # the daemon runs on; the client keeps the chain a while
        assert holder.ask("unlock", lock_key) == "unlocked"
        read, err = reader.communicate(timeout=60)
    finally:
        holder.close()
    # It may fail (node 0 serves again only after a resync), but never read "old".
    assert read.strip() != "old", "node 0 read in place what nodes 1 and 2 had replaced"
    assert reader.returncode == 0 or err, "a failed pfetch says why"
    c.wait_healthy(timeout=60)
    for pnn in range(c.size):
        assert samba_run(pnn, "pfetch", DB, "k")[1] == "new", pnn
