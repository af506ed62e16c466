"""TDB sequence numbers that move on every node where a client watches them.

smbd asks ENABLE_SEQNUM for brlock.tdb, locking.tdb and leases.tdb and
keeps what it read from them until the file's sequence number moves
(`ctdb/server/ctdb_seqnum.py`). Here Samba's `ctdb writekey` writes in
place on node 0; node 2, which a client asked to watch the database and
which never sees the record, has its number moved by its daemon within
about a second (UPDATE_SEQNUM from node 0's daemon, as ctdbd sends it);
node 1, where no client asked, keeps its own.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

import pytest
import tdb

from ctdb.protocol.ctdb_opcodes import CURRENT_NODE, Control
from ctdb.protocol.ctdb_wire import Header, ReplyControl, ReqControl, decode_packet
from tests.conftest import wait_for
from tests.test_samba_ctdb_tool import CTDB, exchange, samba_ctdb
from tests.test_samba_record_calls import db_info
from tools.cluster import LocalCluster

pytestmark = pytest.mark.skipif(
    not os.access(CTDB, os.X_OK), reason="Samba's ctdb tool is not installed (Debian: ctdb)"
)

TDB_SEQNUM = 0x80


def control(cluster: LocalCluster, pnn: int, opcode: Control, db_id: int) -> ReplyControl:
    header = Header(reqid=1, destnode=CURRENT_NODE, srcnode=pnn)
    raw = exchange(cluster, pnn, ReqControl(header, opcode, struct.pack("<I", db_id)).encode())
    reply = decode_packet(raw)
    assert isinstance(reply, ReplyControl)
    return reply


def seqnum_of(cluster: LocalCluster, pnn: int, name: str, db_id: int) -> Callable[[], int]:
    """Node `pnn`'s sequence number of the database, read as smbd reads it."""
    flags = control(cluster, pnn, Control.DB_OPEN_FLAGS, db_id)
    path = str(db_info(cluster, pnn, name)["path"])
    handle = tdb.Tdb(path, 0, struct.unpack("<i", flags.data)[0], os.O_RDWR, 0)
    return lambda: int(handle.seqnum)


def test_a_change_on_one_node_moves_the_number_where_a_client_watches(
    cluster: LocalCluster,
) -> None:
    name = f"seq_{os.urandom(5).hex()}"
    assert samba_ctdb(cluster, 0, "attach", name).returncode == 0
    db_id = int(str(db_info(cluster, 0, name)["id"]), 0)
    for pnn in (0, 2):
        assert control(cluster, pnn, Control.ENABLE_SEQNUM, db_id).status == 0
        flags = control(cluster, pnn, Control.DB_OPEN_FLAGS, db_id).data
        assert struct.unpack("<i", flags)[0] & TDB_SEQNUM
    unwatched = control(cluster, 1, Control.DB_OPEN_FLAGS, db_id).data
    assert not struct.unpack("<i", unwatched)[0] & TDB_SEQNUM
    node1, node2 = seqnum_of(cluster, 1, name, db_id), seqnum_of(cluster, 2, name, db_id)
    before1, before2 = node1(), node2()
    out = samba_ctdb(cluster, 0, "writekey", name, "k", "v")
    assert out.returncode == 0, out.stderr
    wait_for("node 2's sequence number to move", lambda: node2() > before2, 5)
    assert node1() == before1


def test_a_persistent_database_moves_by_its_own_commits_only(cluster: LocalCluster) -> None:
    """smbd asks ENABLE_SEQNUM for the persistent registry.tdb too. Every node
    commits every transaction itself, which moves its number; an UPDATE_SEQNUM
    is not applied there, since it could land while a commit is prepared
    (an open TDB transaction) and make it fail (`ctdb_seqnum`)."""
    name = f"pseq_{os.urandom(5).hex()}"
    assert samba_ctdb(cluster, 0, "attach", name, "persistent").returncode == 0
    db_id = int(str(db_info(cluster, 0, name)["id"]), 0)
    for pnn in range(cluster.size):
        assert control(cluster, pnn, Control.ENABLE_SEQNUM, db_id).status == 0
    numbers = [seqnum_of(cluster, pnn, name, db_id) for pnn in range(cluster.size)]
    before = [n() for n in numbers]
    out = samba_ctdb(cluster, 2, "pstore", name, "k", "v")
    assert out.returncode == 0, out.stderr
    after = [n() for n in numbers]
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
    assert control(cluster, 1, Control.UPDATE_SEQNUM, db_id).status == 0
    assert numbers[1]() == after[1]
