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
import time
from collections.abc import Iterator

import pytest
import tdb

from ctdb.storage.ltdb import TDB_MUTEX_LOCKING
from tests import samba_tool
from tests.chain_holder import Holder
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
    lock_key = samba_tool.g_lock_key(DB)
    with netns_ctdb("vs", "queued") as ctdb:

        def samba_run(pnn: int, *args: str) -> tuple[int, str, str]:
            return samba_tool.run(samba_tool.door(ctdb, pnn), *args, timeout=3)

        assert samba_run(0, "attach", DB, "persistent")[0] == 0
        assert samba_run(0, "pstore", DB, "k", "old")[0] == 0  # lends node 0 the g_lock
        g_lock = next(ctdb.node_dir(0).rglob("g_lock.tdb*"))
        holder = Holder(g_lock, tdb.NOSYNC | TDB_MUTEX_LOCKING)
        corosync = ctdb.corosyncs[0]
        try:
            assert holder.ask("lock", lock_key) == "locked"
            corosync.send_signal(signal.SIGSTOP)
            deadline = time.monotonic() + 30.0
            while (stored := samba_run(1, "pstore", DB, "k", "new"))[0] != 0:
                assert time.monotonic() < deadline, f"nodes 1 and 2 never went on: {stored[2]}"
            reader = samba_tool.start(samba_tool.door(ctdb, 0), "pfetch", DB, "k", timeout=3)
            queued_until = time.monotonic() + 0.5
            while reader.poll() is None and time.monotonic() < queued_until:
                time.sleep(0.05)
            assert reader.poll() is None, "the pfetch must queue on the held chain"
            assert holder.ask("unlock", lock_key) == "unlocked"
            read, err = reader.communicate(timeout=30)
            # It may fail (node 0 does not serve), but never read the old value.
            assert read.strip() != "old", "node 0 read in place what nodes 1 and 2 had replaced"
            assert reader.returncode == 0 or "g_lock" in err, err
        finally:
            corosync.send_signal(signal.SIGCONT)
            holder.close()
        wait_for("all three nodes healthy again", lambda: healthy(ctdb, [0, 1, 2]), 60.0, ctdb)
        for pnn in range(3):
            assert samba_run(pnn, "pfetch", DB, "k")[1] == "new", pnn
