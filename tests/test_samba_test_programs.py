"""CTDB's own test programs (Samba 4.17, built unmodified from Debian's source) against pyctdb.

`tools/build_ctdb_tests.sh` (run by `tools/setup.sh --test`) builds them
into a cache outside the checkout; these tests skip only when they are not
built. `message_ring` passes messages around the ring of nodes through the
CTDB-protocol door (cluster_wait's join and sync messages, srvid
registrations, REQ_MESSAGE to one node and to every connected one);
`fetch_ring` and `fetch_loop_key` move one record between the nodes with
REQ_CALL and write it in place (over vs the record is lent through its
replicated lock and taken back with what was written:
`ctdb.engines.ordered.samba_grants`).
"""

from __future__ import annotations

import itertools
import re
import struct
from collections.abc import Callable

import pytest

from ctdb.common.config import CTDB_SOCKET_NAME
from tests.conftest import run_ctdbtool, unique
from tools import ctdb_test_programs
from tools.cluster import LocalCluster

pytestmark = pytest.mark.skipif(
    ctdb_test_programs.program("message_ring") is None,
    reason="CTDB's test programs are not built (tools/build_ctdb_tests.sh)",
)


def test_message_ring_runs_on_every_node(cluster: LocalCluster) -> None:
    sockets = [cluster.node_dir(p) / CTDB_SOCKET_NAME for p in range(3)]
    run = ctdb_test_programs.run_on_cluster("message_ring", sockets, 2)
    assert run.ok, run.outputs
    rates = run.rates
    assert len(rates) == 3 and all(rate > 0 for rate in rates), run.outputs


def _ring_lines(output: str) -> list[tuple[int, int]]:
    """(msg_count, pnn) of each line of the record fetch_ring -i printed last."""
    data = output.rsplit("DATA:\n", 1)[1]
    return [(int(c), int(p)) for c, p in re.findall(r"^msg_count=(\d+) on node (\d+)$", data, re.M)]


def test_fetch_ring_passes_one_record_around_every_node_and_loses_no_update(
    cluster: LocalCluster, transport: str
) -> None:
    """Each node in turn takes the record (REQ_CALL when it is elsewhere),
    appends a line in place and messages the next node. The record every node
    reads at the end holds the lines in ring order, each node's count one
    more than at its previous turn: no write in place was lost or undone."""
    sockets = [cluster.node_dir(p) / CTDB_SOCKET_NAME for p in range(3)]
    run = ctdb_test_programs.run_on_cluster(
        "fetch_ring", sockets, 2, "-D", unique("fetch_ring"), "-k", "testkey", "-i"
    )
    assert run.ok, run.outputs
    assert len(run.rates) == 3 and all(rate > 0 for rate in run.rates), run.outputs
    for output in run.outputs:
        lines = _ring_lines(output)
        assert lines, output  # (the program starts the value afresh past 1000 bytes)
        for (count, pnn), (next_count, next_pnn) in itertools.pairwise(lines):
            assert next_pnn == (pnn + 1) % 3, output
            assert next_count == count + (1 if next_pnn == 0 else 0), output


def test_fetch_loop_key_increments_one_record_from_every_node(
    cluster_factory: Callable[..., LocalCluster], transport: str
) -> None:
    """Every node loops fetch_lock, increment, store on one key: every instance
    gets the record, and sees the shared counter only grow (a hand-over that
    carried an old value away, losing writes made in place, would take it back).

    A private cluster: the program exits with the record's chain still
    locked (a fetch_lock it sent is never received, and the TDB is closed
    before exit, so the robust mutex is never released); Samba's ctdbd is
    left the same way. Nothing else may use that key, or freeze that node.
    """
    cluster = cluster_factory()
    sockets = [cluster.node_dir(p) / CTDB_SOCKET_NAME for p in range(3)]
    run = ctdb_test_programs.run_on_cluster(
        "fetch_loop_key", sockets, 4, "-D", "loop.tdb", "-k", "counter"
    )
    assert run.ok, run.outputs
    for output in run.outputs:
        counts = [int(n) for n in re.findall(r"^Locks:(\d+)$", output, re.M)]
        assert len(counts) == 4, output
        assert counts == sorted(counts) and counts[-1] > 0, output
    for pnn in range(3):  # every daemon still answers
        assert run_ctdbtool(cluster.socket(pnn), "ping").returncode == 0


def test_transaction_loop_commits_from_every_node_and_loses_no_commit(
    cluster: LocalCluster, transport: str
) -> None:
    """Every node loops persistent transactions on one record, each bumping
    its own counter in it (g_lock.tdb through REQ_CALL, the commit through
    TRANS3_COMMIT). At the end the record holds, for every node, the count
    that node printed as its own: every acknowledged commit is there."""
    db = unique("tloop")
    sockets = [cluster.node_dir(p) / CTDB_SOCKET_NAME for p in range(3)]
    run = ctdb_test_programs.run_on_cluster(
        "transaction_loop", sockets, 2, "-T", "persistent", "-D", db, "-k", "counters"
    )
    assert run.ok, run.outputs
    own = {}
    for output in run.outputs:
        (pnn, counts), *_ = [
            (int(p), [int(n) for n in c.split()])
            for p, c in re.findall(r"^Transaction\[(\d+)\]:((?:\s+\d+)+)\s*$", output, re.M)[-1:]
        ]
        own[pnn] = counts[pnn]
    assert sorted(own) == [0, 1, 2] and all(n > 0 for n in own.values()), run.outputs
    with cluster.client(1) as client:
        stored = struct.unpack("<3I", client.call("fetch", db=db, key=b"counters"))
    assert list(stored) == [own[0], own[1], own[2]], (stored, run.outputs)
