"""Over vs, a Samba client that keeps a chain locked does not stop the cluster.

The vs engine applies its stream only under the chains each event touches
in files Samba's clients share (`ctdb/engines/ordered/stream_gate.py`), and
the other members wait for every member to apply a persistent commit or a
wipe before they acknowledge it. A client that holds a chain for good (hung,
or dead with its robust mutex never released, as CTDB's `fetch_loop_key`
leaves it) would keep its node from applying, and so the whole cluster from
acknowledging. After RecoverTimeout the node leaves the group instead (as
ctdbd bans a node that cannot freeze), the others go on, and it comes back
once the client lets go.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chain_holder import Holder
from tests.conftest import run_ctdbtool, unique
from tests.test_samba_ctdb_tool import CTDB, samba_ctdb
from tests.test_samba_record_calls import VOLATILE_FLAGS, db_info, stats, wait_until
from tools.cluster import LocalCluster

pytestmark = pytest.mark.skipif(
    not os.access(CTDB, os.X_OK), reason="Samba's ctdb tool is not installed (Debian: ctdb)"
)


@pytest.fixture(scope="module")
def transport() -> str:
    return "vs"  # tcp's counterpart: a freeze that fails, then a ban (test_storage_ban.py)


@pytest.fixture
def holder(cluster: LocalCluster) -> Iterator[tuple[str, Holder]]:
    name = unique("stuck")
    assert samba_ctdb(cluster, 0, "attach", name).returncode == 0
    client = Holder(Path(str(db_info(cluster, 1, name)["path"])), VOLATILE_FLAGS)
    try:
        yield name, client
    finally:
        client.close()


def test_a_node_whose_client_keeps_a_chain_leaves_until_it_lets_go(
    cluster: LocalCluster, holder: tuple[str, Holder]
) -> None:
    volatile, client = holder
    persistent = unique("kept")
    run_ctdbtool(cluster.socket(0), "attach", persistent, "persistent")
    assert samba_ctdb(cluster, 1, "writekey", volatile, "k", "v").returncode == 0
    run_ctdbtool(cluster.socket(1), "setvar", "RecoverTimeout", "1")
    assert client.ask("lock", b"k") == "locked"
    try:
        # Wiping the database needs node 1's file whole: its stream stalls.
        started = time.monotonic()
        wiped = run_ctdbtool(cluster.socket(0), "wipedb", volatile)
        assert wiped.returncode == 0, wiped.stderr
        wait_until(lambda: stats(cluster, 1).get("stream_stuck", 0) >= 1)
        # Node 1 left the group; the others acknowledge without it.
        assert run_ctdbtool(cluster.socket(2), "pstore", persistent, "a", "1").returncode == 0
        assert time.monotonic() - started < 20
        assert samba_ctdb(cluster, 1, "ping").returncode == 0  # node 1 still answers
        status = json.loads(run_ctdbtool(cluster.socket(0), "--json", "status").stdout)
        assert status["vnnmap"] == [0, 2]
    finally:
        assert client.ask("unlock", b"k") == "unlocked"
        run_ctdbtool(cluster.socket(1), "setvar", "RecoverTimeout", "5")
    cluster.wait_healthy(timeout=60)
    read = run_ctdbtool(cluster.socket(1), "--json", "pfetch", persistent, "a").json()
    assert read["value"] == "1"
    assert samba_ctdb(cluster, 1, "readkey", volatile, "k").stdout == "Data: size:0 ptr:[]\n"
