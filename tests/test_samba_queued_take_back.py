"""vs: a record taken back at a node's lease end goes back before the clients
queued on its chain get it.

Node 0 lends the g_lock record to its Samba clients, one of which holds the
record's chain (as Samba's g_lock client does while it asks PROCESS_EXISTS
of another node). Node 0's corosync stops: its lease ends, so it takes the
record back, but must wait for the chain. Nodes 1 and 2 go on without it
and commit "new"; then a `ctdb pfetch` on node 0 queues on the chain. When
the holder lets go, the daemon used to lose that race to the pfetch (it
polls, the pfetch was woken by the kernel), which found the g_lock record
still lent to node 0 and read node 0's persistent copy in place: "old",
after "new" had been acknowledged (4 runs in 5). Now a helper process waits
in the lock's queue for the daemon (`ctdb.storage.chain_helper`), ahead of
the pfetch, which then finds the record taken back and asks node 0 for it,
in vain while node 0 does not serve.

Real daemons in network namespaces (`tools.netns_ctdb`), a corosync per
namespace, Samba's own `ctdb` tool, a chain holder process.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests import samba_tool
from tools import netns
from tools.netns_ctdb import healthy, netns_ctdb, wait_for

OK, WHY = netns.available()
pytestmark = [
    pytest.mark.skipif(not OK, reason=f"network namespaces unavailable: {WHY}"),
    pytest.mark.skipif(not samba_tool.INSTALLED, reason="Samba's ctdb tool is not installed"),
    pytest.mark.timeout(180),
]

DB = "queued_take_back.tdb"


@pytest.fixture(scope="module", autouse=True)
def _sweep() -> Iterator[None]:
    netns.sweep_stale()
    yield


def test_a_pfetch_queued_behind_a_held_g_lock_does_not_read_past_the_lease() -> None:
    with (
        netns_ctdb("vs", "queued") as ctdb,
        samba_tool.g_lock_held(ctdb, 0, DB, "old", timeout=3) as let_go,
    ):
        corosync = ctdb.corosyncs[0]
        corosync.send_signal(signal.SIGSTOP)
        try:
            # Nodes 1 and 2 go on without node 0.
            samba_tool.run_until_done(samba_tool.door(ctdb, 1), "pstore", DB, "k", "new", timeout=3)
            reader = samba_tool.start(samba_tool.door(ctdb, 0), "pfetch", DB, "k", timeout=3)
            assert samba_tool.still_waits(reader), "the pfetch must queue on the held chain"
            let_go()
            read, err = reader.communicate(timeout=30)
            # It may fail (node 0 does not serve), but never read the old value.
            assert read.strip() != "old", "node 0 read in place what nodes 1 and 2 had replaced"
            assert reader.returncode == 0 or "g_lock" in err, err
        finally:
            corosync.send_signal(signal.SIGCONT)
        wait_for("all three nodes healthy again", lambda: healthy(ctdb, [0, 1, 2]), 60.0, ctdb)
        for pnn in range(3):
            assert samba_tool.run(samba_tool.door(ctdb, pnn), "pfetch", DB, "k")[1] == "new", pnn
