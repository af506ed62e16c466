"""Samba's persistent transactions on both transports: g_lock.tdb and TRANS3_COMMIT.

Samba's `ctdb pstore`, `ptrans` and `pdelete` lock `g_lock.tdb` in place
(REQ_CALL), read the node's persistent TDB file themselves and send what
they write in one TRANS3_COMMIT (`ctdb/server/ctdb_transactions.py`), which
the engine commits on every node or none. Over vs the g_lock record is
lent to the node's Samba clients through its replicated lock
(`ctdb/engines/ordered/samba_grants.py`).
"""

from __future__ import annotations

import os

import pytest

from ctdb.protocol.ctdb_opcodes import CURRENT_NODE, Control
from ctdb.protocol.ctdb_records import LtdbHeader, RecBuffer, RecData
from ctdb.protocol.ctdb_wire import Header, ReplyControl, ReqControl, decode_packet
from tests.conftest import run_ctdbtool, unique
from tests.test_samba_ctdb_tool import CTDB, exchange, samba_ctdb
from tools.cluster import LocalCluster

pytestmark = pytest.mark.skipif(
    not os.access(CTDB, os.X_OK), reason="Samba's ctdb tool is not installed (Debian: ctdb)"
)


@pytest.fixture(scope="module", params=["tcp", "vs"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def pfetch(cluster: LocalCluster, pnn: int, db: str, key: str) -> str:
    out = samba_ctdb(cluster, pnn, "pfetch", db, key)
    assert out.returncode == 0, out.stderr
    return out.stdout.rstrip("\n")


def test_pstore_ptrans_and_pdelete_commit_on_every_node(cluster: LocalCluster) -> None:
    db = unique("pt") + ".tdb"
    assert samba_ctdb(cluster, 0, "attach", db, "persistent").returncode == 0
    before = int(samba_ctdb(cluster, 0, "getdbseqnum", db).stdout, 16)
    out = samba_ctdb(cluster, 0, "pstore", db, "k1", "v1")
    assert out.returncode == 0, out.stderr
    assert pfetch(cluster, 2, db, "k1") == "v1"
    out = samba_ctdb(cluster, 1, "ptrans", db, stdin='"k2" "v2"\n"k3" "v3"\n"k1" "w1"\n')
    assert out.returncode == 0, out.stderr
    for pnn in range(3):
        assert [pfetch(cluster, pnn, db, k) for k in ("k1", "k2", "k3")] == ["w1", "v2", "v3"]
    ours = run_ctdbtool(cluster.socket(1), "--json", "pfetch", db, "k3").json()
    assert ours["value"] == "v3"
    assert samba_ctdb(cluster, 2, "pdelete", db, "k2").returncode == 0
    assert pfetch(cluster, 0, db, "k2") == ""
    assert run_ctdbtool(cluster.socket(0), "--json", "pfetch", db, "k2").json()["value"] is None
    after = int(samba_ctdb(cluster, 1, "getdbseqnum", db).stdout, 16)
    assert after == before + 3  # one commit each: pstore, ptrans, pdelete


def _trans3(cluster: LocalCluster, pnn: int, db_id: int, key: bytes, rsn: int, value: bytes) -> int:
    """Send one TRANS3_COMMIT of a single record as Samba's client builds it; its status."""
    record = RecData(0, key, LtdbHeader(rsn, pnn).encode() + value)
    header = Header(reqid=5, destnode=CURRENT_NODE, srcnode=pnn)
    packet = ReqControl(header, Control.TRANS3_COMMIT, RecBuffer(db_id, (record,)).encode())
    reply = decode_packet(exchange(cluster, pnn, packet.encode()))
    assert isinstance(reply, ReplyControl)
    return reply.status


def test_a_commit_over_a_version_since_replaced_fails_and_writes_nothing(
    cluster: LocalCluster,
) -> None:
    """A client sends each record with the RSN it read plus one. If the record
    changed since (one of our clients committed it: they take no g_lock),
    the commit fails (-1) instead of overwriting the newer value, as ctdbd
    refuses a record whose RSN is not newer than its copy's."""
    db = unique("ps")
    run_ctdbtool(cluster.socket(0), "attach", db, "persistent")
    db_id = next(
        d["id"]
        for d in run_ctdbtool(cluster.socket(0), "--json", "getdbmap").json()
        if d["name"] == db
    )
    assert _trans3(cluster, 0, db_id, b"k", 1, b"first") == 0  # over a missing record (RSN 0)
    run_ctdbtool(cluster.socket(1), "pstore", db, "k", "ours")  # RSN 2 now
    assert _trans3(cluster, 0, db_id, b"k", 2, b"stale") == -1  # written over RSN 1
    assert run_ctdbtool(cluster.socket(2), "--json", "pfetch", db, "k").json()["value"] == "ours"
    assert _trans3(cluster, 0, db_id, b"k", 3, b"fresh") == 0  # written over RSN 2
    assert pfetch(cluster, 2, db, "k") == "fresh"
