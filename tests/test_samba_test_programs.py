"""CTDB's own test programs (Samba 4.17, built unmodified from Debian's source) against pyctdb.

`tools/build_ctdb_tests.sh` (run by `tools/setup.sh --test`) builds them
into a cache outside the checkout; these tests skip only when they are not
built. `message_ring` passes messages around the ring of nodes through the
CTDB-protocol door (cluster_wait's join and sync messages, srvid
registrations, REQ_MESSAGE to one node and to every connected one).
"""

from __future__ import annotations

import pytest

from ctdb.common.config import CTDB_SOCKET_NAME
from tools import ctdb_test_programs
from tools.cluster import LocalCluster

pytestmark = pytest.mark.skipif(
    ctdb_test_programs.program("message_ring") is None,
    reason="CTDB's test programs are not built (tools/build_ctdb_tests.sh)",
)


def test_message_ring_runs_on_every_node(cluster: LocalCluster) -> None:
    sockets = [cluster.node_dir(p) / CTDB_SOCKET_NAME for p in range(3)]
    run = ctdb_test_programs.run_on_cluster("message_ring", sockets, 3)
    assert run.ok, run.outputs
    rates = run.rates
    assert len(rates) == 3 and all(rate > 0 for rate in rates), run.outputs
