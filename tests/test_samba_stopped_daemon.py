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

from tests import samba_tool
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
    daemon = c.pids[0]
    with samba_tool.g_lock_held(c, 0, DB, "old") as let_go:
        os.kill(daemon, signal.SIGSTOP)
        try:
            # Nodes 1 and 2 go on without node 0.
            samba_tool.run_until_done(samba_tool.door(c, 1), "pstore", DB, "k", "new")
            reader = samba_tool.start(samba_tool.door(c, 0), "pfetch", DB, "k")
            time.sleep(0.3)  # (its requests reach the stopped daemon's socket)
        finally:
            os.kill(daemon, signal.SIGCONT)
        time.sleep(1.0)  # the daemon runs on; the client keeps the chain a while
        let_go()
        read, err = reader.communicate(timeout=60)
    # It may fail (node 0 serves again only after a resync), but never read "old".
    assert read.strip() != "old", "node 0 read in place what nodes 1 and 2 had replaced"
    assert reader.returncode == 0 or err, "a failed pfetch says why"
    c.wait_healthy(timeout=60)
    for pnn in range(c.size):
        assert samba_tool.run(samba_tool.door(c, pnn), "pfetch", DB, "k")[1] == "new", pnn
