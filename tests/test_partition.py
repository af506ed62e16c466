"""A real network partition: three ctdbd in three network namespaces.

`tools.netns_ctdb` starts the cluster on the private LAN of `tools.netns`
(each daemon in its own namespace, its client socket on disk where the test
reaches it; for vs a corosync per namespace). `cut(2)` silently drops node
2's packets (no RST, no link-down): the survivors must notice (tcp:
keepalive timeout; vs: corosync's token, ~2.1 s, so the vs waits are
longer), the isolated node must stop accepting writes (it has no quorum),
and after `heal(2)` all three must agree on every record again. The tests
run on both transports.

Everything (daemons, namespaces, directories) is removed even on failure:
the cluster is a context manager and a module fixture sweeps leftovers of
killed earlier runs.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import tdb

from ctdb.common.config import CTDB_SOCKET_NAME
from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.storage.ltdb import TDB_MUTEX_LOCKING
from tests.chain_holder import Holder
from tests.conftest import run_ctdbtool
from tests.test_samba_ctdb_tool import CTDB
from tests.test_samba_record_calls import read_record
from tools import netns
from tools.netns_ctdb import SIZE, NetnsCtdb, healthy, netns_ctdb, wait_for

OK, WHY = netns.available()
pytestmark = [
    pytest.mark.skipif(not OK, reason=f"network namespaces unavailable: {WHY}"),
    pytest.mark.timeout(180),
]

TRANSPORTS = ["tcp", "vs"]
#: Per transport: how long to wait for the cut to be noticed / for the heal,
#: and the bound on detection (tcp: keepalive 0.2 s x 3 plus recovery).
WAIT = {"tcp": 10.0, "vs": 20.0}
HEAL_WAIT = {"tcp": 20.0, "vs": 30.0}
DETECT_BOUND = {"tcp": 0.2 * 3 + 1.0 + 1.0, "vs": 5.0}


@pytest.fixture(scope="module", autouse=True)
def _sweep() -> Iterator[None]:
    netns.sweep_stale()
    yield


@pytest.fixture(params=TRANSPORTS)
def ctdb(request: pytest.FixtureRequest) -> Iterator[NetnsCtdb]:
    with netns_ctdb(str(request.param), "p") as cluster:
        yield cluster


def test_cut_node_loses_quorum_majority_serves_then_all_agree(ctdb: NetnsCtdb) -> None:
    wait, heal_wait = WAIT[ctdb.transport], HEAL_WAIT[ctdb.transport]
    vdb, pdb = f"vol_{uuid.uuid4().hex[:6]}", f"per_{uuid.uuid4().hex[:6]}"
    with ctdb.client(0) as c:
        c.attach(vdb)
        c.attach(pdb, "persistent")
    # Records written from every node before the cut (each writer is dmaster).
    for i in range(SIZE):
        with ctdb.client(i) as c:
            for k in range(5):
                c.store(vdb, f"pre{i}_{k}", f"v{i}_{k}")
            c.transact(pdb, {f"pre{i}": f"p{i}"})
    with ctdb.client(2) as c:
        c.call("setvar", name="WaitForQuorum", value=0)
    gen = ctdb.status(0)["generation"]

    ctdb.net.cut(2)
    cut_at = time.monotonic()
    # The isolated node notices it is alone and freezes (no quorum).
    wait_for(
        "node 2 to lose quorum",
        lambda: ctdb.status(2)["recovery_mode"] == "RECOVERY" and not ctdb.status(2)["quorum"],
        wait,
        ctdb,
    )
    lost = time.monotonic() - cut_at
    # The majority side recovers without it.
    wait_for("nodes 0 and 1 to recover without 2", lambda: healthy(ctdb, [0, 1]), wait, ctdb)
    detected = time.monotonic() - cut_at
    print(
        f"{ctdb.transport}: node 2 lost quorum after {lost:.2f}s, "
        f"0 and 1 healthy without it after {detected:.2f}s"
    )
    assert detected < DETECT_BOUND[ctdb.transport], detected
    st = ctdb.status(0)
    assert st["generation"] != gen and st["nodes"][2]["state"] == "DISCONNECTED"

    with ctdb.client(2) as c:
        for op in (
            lambda: c.store(vdb, "pre2_0", "from the minority"),
            lambda: c.transact(pdb, {"minority": "x"}),
        ):
            with pytest.raises(CtdbError) as err:
                op()
            assert err.value.code in (ErrorCode.NO_QUORUM, ErrorCode.RETRY), err.value
    # The two-node side keeps serving reads and writes.
    expected_v: dict[str, str] = {}
    expected_p: dict[str, str] = {f"pre{i}": f"p{i}" for i in range(SIZE)}
    for i in (0, 1):
        with ctdb.client(i) as c:
            for k in range(5):
                assert c.fetch(vdb, f"pre{i}_{k}") == f"v{i}_{k}".encode()
                c.store(vdb, f"during{i}_{k}", f"d{i}_{k}")
                expected_v[f"during{i}_{k}"] = f"d{i}_{k}"
            c.transact(pdb, {f"during{i}": f"dp{i}", "shared": f"s{i}"})
            expected_p.update({f"during{i}": f"dp{i}", "shared": f"s{i}"})
    # pre0/pre1 keys' dmasters are on the majority side.
    expected_v.update({f"pre{i}_{k}": f"v{i}_{k}" for i in (0, 1) for k in range(5)})

    ctdb.net.heal(2)
    healed_at = time.monotonic()
    wait_for("all three nodes healthy again", lambda: healthy(ctdb, [0, 1, 2]), heal_wait, ctdb)
    print(f"{ctdb.transport}: all three healthy {time.monotonic() - healed_at:.2f}s after heal")
    with ctdb.client(2) as c:
        c.store(vdb, "after", "healed")  # node 2 accepts writes again
    expected_v["after"] = "healed"

    keys = sorted(expected_v) + [f"pre2_{k}" for k in range(5)]
    views = []
    for i in range(SIZE):
        with ctdb.client(i) as c:
            views.append(
                (
                    {k: c.fetch(vdb, k) for k in keys},
                    {k: c.fetch(pdb, k) for k in expected_p}
                    | {"minority": c.fetch(pdb, "minority")},
                    c.call("getdbseqnum", db=pdb),
                )
            )
    assert views[0] == views[1] == views[2]
    vol, per, _ = views[0]
    for key, v in expected_v.items():
        assert vol[key] == v.encode(), key
    for key, v in expected_p.items():
        assert per[key] == v.encode(), key
    assert per["minority"] is None


def test_a_cut_nodes_samba_clients_stop_writing_in_place_and_the_majority_value_wins(
    ctdb: NetnsCtdb,
) -> None:
    """A record Samba's clients on node 2 use in place (tcp: node 2 is its
    dmaster; vs: it is lent to node 2) must not be written there any more
    once the majority serves without node 2: the majority takes it over,
    and a client on each side believing it holds the record (a g_lock,
    smbd's share modes) would break mutual exclusion; what the minority
    wrote would vanish at the heal. So by then the file on node 2 is held
    whole (a freeze) or no longer names node 2 as the record's dmaster."""
    if not os.access(CTDB, os.X_OK):
        pytest.skip("Samba's ctdb tool is not installed (Debian: ctdb)")
    wait, heal_wait = WAIT[ctdb.transport], HEAL_WAIT[ctdb.transport]
    name = f"samba_{uuid.uuid4().hex[:6]}"
    assert samba_tool(ctdb, 0, "attach", name).returncode == 0
    out = samba_tool(ctdb, 2, "writekey", name, "k", "from node 2")
    assert out.returncode == 0, out.stderr
    dbs = run_ctdbtool(ctdb.socket(2), "--json", "getdbmap").json()
    path = next(db["path"] for db in dbs if db["name"] == name)
    client = Holder(Path(path), tdb.NOSYNC | TDB_MUTEX_LOCKING)
    try:
        assert client.ask("lock", b"k") == "locked"
        rec = read_record(client, b"k")
        assert rec is not None and (rec.dmaster, rec.value) == (2, b"from node 2"), "in place"
        assert client.ask("unlock", b"k") == "unlocked"

        ctdb.net.cut(2)
        wait_for("nodes 0 and 1 to serve without 2", lambda: healthy(ctdb, [0, 1]), wait, ctdb)
        out = samba_tool(ctdb, 0, "writekey", name, "k", "from the majority")
        assert out.returncode == 0, out.stderr
        # Node 2's clients: held out of the file, or sent to the daemon.
        if client.ask("lock", b"k") == "locked":
            left = read_record(client, b"k")
            assert client.ask("unlock", b"k") == "unlocked"
            assert left is None or left.dmaster != 2, f"node 2 would still write {left} in place"
    finally:
        client.close()
    ctdb.net.heal(2)
    wait_for("all three nodes healthy again", lambda: healthy(ctdb, [0, 1, 2]), heal_wait, ctdb)
    for i in range(SIZE):
        out = samba_tool(ctdb, i, "readkey", name, "k")
        assert out.returncode == 0, out.stderr
        assert "from the majority" in out.stdout, (i, out.stdout)


def samba_tool(ctdb: NetnsCtdb, i: int, *args: str) -> subprocess.CompletedProcess[str]:
    """Samba's `ctdb ARGS` against node i's daemon (from the host: its socket is on disk)."""
    env = dict(
        os.environ,
        CTDB_SOCKET=str(ctdb.node_dir(i) / "ctdb" / CTDB_SOCKET_NAME),
        CTDB_BASE=str(ctdb.node_dir(i) / "ctdb"),  # its nodes file
    )
    return subprocess.run(
        [CTDB, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
