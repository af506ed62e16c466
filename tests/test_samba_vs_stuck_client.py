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
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ctdb.common.errors import CtdbError
from tests.chain_holder import Holder
from tests.conftest import run_ctdbtool, unique, wait_for
from tests.test_samba_ctdb_tool import CTDB, samba_ctdb
from tests.test_samba_record_calls import VOLATILE_FLAGS, db_info, stats
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
        wait_for(
            "node 1's stream to be stuck", lambda: stats(cluster, 1).get("stream_stuck", 0) >= 1, 30
        )
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


def test_a_node_rejoined_while_a_client_holds_a_chain_reads_nothing_stale(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    """Node 2 is stopped long enough to be expelled while a Samba client holds
    a chain in its volatile file; the others commit without it. When node 2
    runs again its view changes wait for that chain (the stream gate), while
    its transport joins the group again by itself and renews its lease: the
    engine still holds the old view and its copy, and must not answer from
    it. Found by the chaos test (vs seed 11 read a persistent counter 357
    commits old); here, before the fix, node 2 answered the old value for the
    whole 4 s the chain was held (every read, in each of 2 runs; the reads
    now start once node 2's transport says it rejoined)."""
    c = cluster_factory(
        tunables={"KeepaliveInterval": 0.2, "KeepaliveLimit": 3, "CallTimeout": 1.0}
    )
    volatile, persistent = unique("held"), unique("kept")
    # Attached through the CTDB protocol on node 2: its file is shared there.
    assert samba_ctdb(c, 2, "attach", volatile).returncode == 0
    run_ctdbtool(c.socket(0), "attach", persistent, "persistent")
    run_ctdbtool(c.socket(0), "pstore", persistent, "k", "old")
    client = Holder(Path(str(db_info(c, 2, volatile)["path"])), VOLATILE_FLAGS)
    answers: list[str] = []
    try:
        assert client.ask("lock", b"k") == "locked"
        c.signal_node(2, signal.SIGSTOP)
        try:
            wait_for("vnnmap [0, 1]", lambda: c.status(0)["vnnmap"] == [0, 1], 30)
            run_ctdbtool(c.socket(0), "pstore", persistent, "k", "new")  # acknowledged
        finally:
            c.signal_node(2, signal.SIGCONT)
        # The window: node 2's transport is back in the group while its engine
        # still waits for the chain. Read through node 2 in it: an answer, or
        # an error, never "old".
        wait_for(
            "node 2 to rejoin the group", lambda: "rejoined group" in c.log_path(2).read_text(), 30
        )
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            try:
                with c.client(2, timeout=3.0) as reader:
                    answers.append(repr(reader.fetch(persistent, "k")))
            except (CtdbError, OSError) as exc:
                answers.append(f"{type(exc).__name__}: {exc}")
    finally:
        client.ask("unlock", b"k")
        client.close()
    assert answers and repr(b"old") not in answers, answers
    c.wait_healthy(timeout=60)
    assert run_ctdbtool(c.socket(2), "--json", "pfetch", persistent, "k").json()["value"] == "new"
