"""vs: what is lent to Samba's clients goes back when the node's lease ends.

Samba's persistent transactions (`ctdb pstore`, `pfetch`, smbd) take their
g_lock record in place when its header names their node, and then read the
node's persistent file in place: the daemon hears of neither. Over vs the
record is lent to a node (`ctdb.engines.ordered.samba_grants`), and must
go back before the other nodes can lend it elsewhere and commit without
this one. They can once corosync has re-formed the ring without it; this
node may hear of that much later, or never while its corosync is stuck
(chaos, vs seed 1320: a cut between two nodes left one in its view for a
second after the others had moved on, and `ctdb pfetch` there read a
record 19 commits old). Its lease ends first, so that is when the record
goes back.

Here node 0's corosync is paused (SIGSTOP), its daemon runs: nodes 1 and
2 go on and commit a new value, and `ctdb pfetch` on node 0 must not read
the old one (with the lease's watch removed, it does).

Real daemons in network namespaces (`tools.netns_ctdb`), a corosync per
namespace, Samba's own `ctdb` tool.

Beside another test worker it failed in two of four full parallel runs
(node 0 read "old"): the lease's watch fired a moment before the lease's
end, `serving` still said yes, and a second look at the clock found the end
passed and armed no new watch, so the record stayed lent (fixed in
`Returns.after_apply`, with a test in tests/test_samba_grants.py).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests import samba_tool
from tools import netns
from tools.netns_ctdb import NetnsCtdb, healthy, netns_ctdb, wait_for

OK, WHY = netns.available()
pytestmark = [
    pytest.mark.skipif(not OK, reason=f"network namespaces unavailable: {WHY}"),
    pytest.mark.skipif(not samba_tool.INSTALLED, reason="Samba's ctdb tool is not installed"),
    pytest.mark.timeout(180),
]

DB = "lent_lease.tdb"


@pytest.fixture(scope="module", autouse=True)
def _sweep() -> Iterator[None]:
    netns.sweep_stale()
    yield


def samba_ctdb(ctdb: NetnsCtdb, pnn: int, *args: str) -> tuple[int, str, str]:
    """Samba's `ctdb ARGS` on node `pnn`, giving up after 3 s."""
    return samba_tool.run(samba_tool.door(ctdb, pnn), *args, timeout=3)


def test_a_node_whose_corosync_is_stuck_does_not_read_in_place_what_the_others_replaced() -> None:
    with netns_ctdb("vs", "lease") as ctdb:
        assert samba_ctdb(ctdb, 0, "attach", DB, "persistent")[0] == 0
        status, _, err = samba_ctdb(ctdb, 0, "pstore", DB, "k", "old")  # lends node 0 the g_lock
        assert status == 0, err
        assert samba_ctdb(ctdb, 0, "pfetch", DB, "k")[1] == "old"

        corosync = ctdb.corosyncs[0]
        corosync.send_signal(signal.SIGSTOP)
        try:
            # Nodes 1 and 2 go on without node 0 (within 30 s).
            samba_tool.run_until_done(samba_tool.door(ctdb, 1), "pstore", DB, "k", "new", timeout=3)
            read = samba_ctdb(ctdb, 0, "pfetch", DB, "k")[1]
            # It waits for its g_lock, which node 0 may not lend now, and gives up.
            assert read != "old", "node 0 read a value the others had replaced"
        finally:
            corosync.send_signal(signal.SIGCONT)
        wait_for("all three nodes healthy again", lambda: healthy(ctdb, [0, 1, 2]), 60.0, ctdb)
        for pnn in range(3):
            assert samba_ctdb(ctdb, pnn, "pfetch", DB, "k")[1] == "new", pnn
