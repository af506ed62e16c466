"""Samba's record clients on both transports: REQ_CALL, chain locks, the freeze.

Samba's `ctdb` tool (readkey, writekey, deletekey) opens each node's
volatile TDB file itself, takes the record's chain lock and works in place
when the node is the record's dmaster; otherwise it asks the daemon with
REQ_CALL to bring the record here (`ctdb/server/ctdb_calls.py`): over tcp
by migrating it, over vs by lending it through its replicated lock and
taking it back, with what was written in place, when another node wants it
(`ctdb/engines/ordered/samba_grants.py`). A client holding a chain lock
never stops the daemon: work on that record waits for it, nothing else does
(`ctdb/engines/chains.py`, `ctdb/engines/ordered/stream_gate.py`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import tdb

from ctdb.common.config import CTDB_SOCKET_NAME
from ctdb.protocol.ctdb_opcodes import (
    CURRENT_NODE,
    FETCH_FUNC,
    FETCH_WITH_HEADER_FUNC,
    IMMEDIATE_MIGRATION,
    NULL_FUNC,
)
from ctdb.protocol.ctdb_wire import Header, ReplyCall, ReqCall, decode_packet
from ctdb.storage.ltdb import NO_DMASTER, TDB_MUTEX_LOCKING, Record
from tests.chain_holder import Holder
from tests.conftest import run_ctdbtool, unique, wait_for
from tests.test_samba_ctdb_tool import CTDB, samba_ctdb
from tools.cluster import LocalCluster

pytestmark = pytest.mark.skipif(
    not os.access(CTDB, os.X_OK), reason="Samba's ctdb tool is not installed (Debian: ctdb)"
)

#: what the daemon creates volatile files with (its DB_OPEN_FLAGS)
VOLATILE_FLAGS = tdb.NOSYNC | TDB_MUTEX_LOCKING


@pytest.fixture(scope="module", params=["tcp", "vs"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def db_info(cluster: LocalCluster, pnn: int, name: str) -> dict[str, object]:
    dbs = run_ctdbtool(cluster.socket(pnn), "--json", "getdbmap").json()
    return next(db for db in dbs if db["name"] == name)


def stats(cluster: LocalCluster, pnn: int) -> dict[str, int]:
    return dict(json.loads(run_ctdbtool(cluster.socket(pnn), "--json", "statistics").stdout))


@pytest.fixture
def volatile(cluster: LocalCluster) -> str:
    name = unique("rc")
    out = samba_ctdb(cluster, 0, "attach", name)
    assert out.returncode == 0, out.stderr
    return name


@pytest.fixture
def holder_on(cluster: LocalCluster, volatile: str) -> Iterator[Callable[[int], Holder]]:
    """`holder_on(pnn)`: a process with node `pnn`'s file of the database open, as a client."""
    started: list[Holder] = []

    def make(pnn: int) -> Holder:
        path = Path(str(db_info(cluster, pnn, volatile)["path"]))
        started.append(Holder(path, VOLATILE_FLAGS))
        return started[-1]

    try:
        yield make
    finally:
        for h in started:
            h.close()


def samba_ctdb_started(cluster: LocalCluster, pnn: int, *args: str) -> subprocess.Popen[str]:
    """Samba's `ctdb ARGS` against node `pnn`, left running."""
    env = dict(
        os.environ,
        CTDB_SOCKET=str(cluster.node_dir(pnn) / CTDB_SOCKET_NAME),
        CTDB_BASE=str(cluster.directory),
    )
    return subprocess.Popen(
        [CTDB, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finished(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """Its output once it exits (killed if it has not within `timeout`)."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def read_record(holder: Holder, key: bytes) -> Record | None:
    raw = holder.ask("read", key)
    return None if raw == "none" else Record.unpack(bytes.fromhex(raw))


def test_samba_writes_on_one_node_and_reads_on_another_and_our_tool_agrees(
    cluster: LocalCluster, volatile: str
) -> None:
    out = samba_ctdb(cluster, 0, "writekey", volatile, "greeting", "hello")
    assert out.returncode == 0, out.stderr
    out = samba_ctdb(cluster, 2, "readkey", volatile, "greeting")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "Data: size:5 ptr:[hello]\n"
    ours = run_ctdbtool(cluster.socket(1), "readkey", volatile, "greeting")
    assert ours.stdout.strip().endswith("[hello]")
    # Our client writes, Samba's reads it and overwrites it elsewhere.
    run_ctdbtool(cluster.socket(1), "writekey", volatile, "greeting", "bonjour")
    assert samba_ctdb(cluster, 0, "readkey", volatile, "greeting").stdout.endswith("[bonjour]\n")
    assert samba_ctdb(cluster, 2, "writekey", volatile, "greeting", "hola").returncode == 0
    assert (
        run_ctdbtool(cluster.socket(0), "readkey", volatile, "greeting")
        .stdout.strip()
        .endswith("[hola]")
    )
    # A key nobody wrote reads as empty, everywhere.
    assert samba_ctdb(cluster, 1, "readkey", volatile, "nobody").stdout == "Data: size:0 ptr:[]\n"
    assert "not found" in run_ctdbtool(cluster.socket(2), "readkey", volatile, "nobody").stdout


def test_samba_deletekey_deletes_for_everyone(cluster: LocalCluster, volatile: str) -> None:
    assert samba_ctdb(cluster, 1, "writekey", volatile, "doomed", "x").returncode == 0
    assert samba_ctdb(cluster, 1, "writekey", volatile, "kept", "y").returncode == 0
    out = samba_ctdb(cluster, 0, "deletekey", volatile, "doomed")  # waits for its
    assert out.returncode == 0, out.stderr  # SCHEDULE_FOR_DELETION reply under the lock
    assert samba_ctdb(cluster, 2, "readkey", volatile, "doomed").stdout == "Data: size:0 ptr:[]\n"
    assert "not found" in run_ctdbtool(cluster.socket(1), "readkey", volatile, "doomed").stdout
    listed = samba_ctdb(cluster, 2, "catdb", volatile)
    assert 'key(4) = "kept"' in listed.stdout and "doomed" not in listed.stdout
    assert "Dumped 1 records" in listed.stdout


def test_a_client_holding_the_chain_holds_the_hand_over_back_and_nothing_else(
    cluster: LocalCluster, volatile: str, holder_on: Callable[[int], Holder], transport: str
) -> None:
    assert samba_ctdb(cluster, 0, "writekey", volatile, "k", "v").returncode == 0
    client = holder_on(0)
    assert client.ask("lock", b"k") == "locked"
    waits = stats(cluster, 0).get("chain_waits", 0)
    reader = samba_ctdb_started(cluster, 1, "readkey", volatile, "k")
    try:
        # Node 1's call reached node 0, which found the chain held and requeued it...
        wait_for(
            "node 0 to requeue the call on the held chain",
            lambda: stats(cluster, 0).get("chain_waits", 0) > waits,
            30,
        )
        # ...while it answers everything else, also about the same database.
        ping = samba_ctdb(cluster, 0, "ping")
        assert ping.returncode == 0 and "response from 0" in ping.stdout
        assert samba_ctdb(cluster, 0, "readkey", volatile, "other").returncode == 0
        rec = read_record(client, b"k")
        assert rec is not None and rec.dmaster == 0 and rec.value == b"v"  # not handed over
        assert reader.poll() is None
        assert client.ask("unlock", b"k") == "unlocked"
    finally:
        out, err = finished(reader, 30)
    assert reader.returncode == 0, err
    assert out == "Data: size:1 ptr:[v]\n"
    assert client.ask("lock", b"k") == "locked"
    moved = read_record(client, b"k")
    # Node 0's copy names the new dmaster (tcp), or nobody: lent elsewhere (vs).
    assert moved is not None and moved.dmaster == (1 if transport == "tcp" else NO_DMASTER)
    assert client.ask("unlock", b"k") == "unlocked"


def test_our_clients_lock_keeps_samba_clients_out_of_the_record(
    cluster: LocalCluster, volatile: str, holder_on: Callable[[int], Holder], transport: str
) -> None:
    """A record one of our clients holds (fetch_lock) is this node's, and a
    Samba client would write it in place: the daemon holds its chain for our
    client until the lock ends, so the Samba client waits instead (tcp). Over
    vs the record names no dmaster, so Samba's write asks for it and waits in
    the record's lock queue behind ours."""
    assert samba_ctdb(cluster, 0, "writekey", volatile, "k", "v").returncode == 0
    if transport == "vs":
        ours = cluster.client(0)
        try:
            assert ours.fetch_lock(volatile, b"k") == b"v"
            lends = stats(cluster, 0).get("samba_lends", 0)
            writer = samba_ctdb_started(cluster, 0, "writekey", volatile, "k", "samba")
            wait_for(
                "node 0 to lend the record",
                lambda: stats(cluster, 0).get("samba_lends", 0) > lends,
                30,
            )
            ours.store_unlock(volatile, b"k", b"ours")
        finally:
            ours.close()
        _, err = finished(writer, 30)
        assert writer.returncode == 0, err
        for pnn in range(3):  # ours first, then Samba's, on every node
            read = run_ctdbtool(cluster.socket(pnn), "--json", "readkey", volatile, "k").json()
            assert read["value"] == "samba"
        return
    samba = holder_on(0)
    ours = cluster.client(0)
    try:
        assert ours.fetch_lock(volatile, b"k") == b"v"
        assert samba.ask("lock", b"k") == "busy"
        ours.store_unlock(volatile, b"k", b"ours")
        assert samba.ask("lock", b"k") == "locked"
        rec = read_record(samba, b"k")
        assert rec is not None and rec.value == b"ours" and rec.dmaster == 0
        assert samba.ask("unlock", b"k") == "unlocked"
        # A client that leaves holding the lock lets go of the chain too.
        assert ours.fetch_lock(volatile, b"k") == b"ours"
        assert samba.ask("lock", b"k") == "busy"
    finally:
        ours.close()
    wait_for("the Samba-like client to lock k", lambda: samba.ask("lock", b"k") == "locked", 30)
    assert samba.ask("unlock", b"k") == "unlocked"
    assert run_ctdbtool(cluster.socket(0), "--json", "readkey", volatile, "k").json()["value"] == (
        "ours"
    )


def _call(db_id: int, key: bytes, callid: int) -> ReqCall:
    return ReqCall(Header(9, CURRENT_NODE, 0), IMMEDIATE_MIGRATION, db_id, callid, key)


def _ask(cluster: LocalCluster, pnn: int, call: ReqCall, timeout: float = 30) -> ReplyCall:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(cluster.node_dir(pnn) / CTDB_SOCKET_NAME))
        sock.sendall(call.encode())
        got = b""
        while len(got) < 4 or len(got) < int.from_bytes(got[:4], "little"):
            chunk = sock.recv(65536)
            assert chunk, "the daemon closed the connection"
            got += chunk
    reply = decode_packet(got)
    assert isinstance(reply, ReplyCall) and reply.header.reqid == 9
    return reply


def test_a_call_is_answered_within_call_timeout_and_a_client_may_leave_mid_call(
    cluster: LocalCluster, volatile: str, holder_on: Callable[[int], Holder]
) -> None:
    assert samba_ctdb(cluster, 0, "writekey", volatile, "slow", "data").returncode == 0
    db_id = int(str(db_info(cluster, 1, volatile)["id"]))
    client = holder_on(0)
    assert client.ask("lock", b"slow") == "locked"
    run_ctdbtool(cluster.socket(1), "setvar", "CallTimeout", "1")
    try:
        started = time.monotonic()
        reply = _ask(cluster, 1, _call(db_id, b"slow", NULL_FUNC))
        assert reply.status == -1 and reply.data == b""
        assert 1.0 <= time.monotonic() - started < 10.0
        # A client that asks and goes away at once changes nothing for the others.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(cluster.node_dir(1) / CTDB_SOCKET_NAME))
            sock.sendall(_call(db_id, b"slow", NULL_FUNC).encode())
    finally:
        run_ctdbtool(cluster.socket(1), "setvar", "CallTimeout", "10")
        client.ask("unlock", b"slow")
    fetched = _ask(cluster, 1, _call(db_id, b"slow", FETCH_FUNC))
    assert fetched.status == 0 and fetched.data == b"data"
    with_header = _ask(cluster, 2, _call(db_id, b"slow", FETCH_WITH_HEADER_FUNC))
    assert with_header.status == 0
    rec = Record.unpack(with_header.data)
    assert rec.dmaster == 2 and rec.value == b"data"
    unknown = _ask(cluster, 2, _call(db_id, b"slow", 0x12345678))  # no such call id
    assert unknown.status == -1 and unknown.data == b""
    assert samba_ctdb(cluster, 2, "readkey", volatile, "slow").stdout == "Data: size:4 ptr:[data]\n"


def test_recovery_freezes_only_once_clients_let_go_and_thaws_the_files(
    cluster: LocalCluster, volatile: str, holder_on: Callable[[int], Holder], transport: str
) -> None:
    """The freeze holds every volatile file whole (no in-place write during
    recovery); it waits, without blocking the daemon, for a client's lock.
    Over vs there is no freeze: a view change is handled with every shared
    file held whole, and waits for a client's lock in the same way."""
    assert samba_ctdb(cluster, 1, "writekey", volatile, "f", "before").returncode == 0
    client = holder_on(1)
    assert client.ask("lock", b"f") == "locked"
    if transport == "vs":
        stalls = stats(cluster, 1).get("stream_stalls", 0)
        cluster.kill_node(2)
        try:
            wait_for(
                "node 1's stream to stall",
                lambda: stats(cluster, 1).get("stream_stalls", 0) > stalls,
                30,
            )
            assert samba_ctdb(cluster, 1, "ping").returncode == 0  # the daemon still answers
            assert client.ask("unlock", b"f") == "unlocked"
        finally:
            cluster.start_node(2)
        cluster.wait_healthy(timeout=60)
        # The view change lets go of the file (the joiner's round may still run).
        wait_for(
            "the Samba-like client to lock f", lambda: client.ask("lock", b"f") == "locked", 30
        )
        assert client.ask("unlock", b"f") == "unlocked"
        out = samba_ctdb(cluster, 2, "readkey", volatile, "f")
        assert out.stdout == "Data: size:6 ptr:[before]\n"
        return
    waits = stats(cluster, 1).get("freeze_waits", 0)
    recover = samba_ctdb_started(cluster, 2, "recover")
    try:
        wait_for(
            "node 1's freeze to wait for the chain",
            lambda: stats(cluster, 1).get("freeze_waits", 0) > waits,
            30,
        )
        assert samba_ctdb(cluster, 1, "ping").returncode == 0  # the daemon still answers
        assert recover.poll() is None
        assert client.ask("unlock", b"f") == "unlocked"
    finally:
        _, err = finished(recover, 60)
    assert recover.returncode == 0, err
    cluster.wait_healthy(timeout=60)
    assert client.ask("lock", b"f") == "locked"  # thawed: the file is free again
    assert client.ask("unlock", b"f") == "unlocked"
    assert samba_ctdb(cluster, 0, "readkey", volatile, "f").stdout == "Data: size:6 ptr:[before]\n"


def test_a_record_whose_node_died_is_served_again_with_what_left_that_node(
    cluster: LocalCluster, volatile: str
) -> None:
    """A volatile record's writes in place on a node that dies before the
    record leaves it are lost with it, as with ctdbd (over vs: the record's
    lock is purged with the node, and the others hold what was taken back);
    the record is not stuck: the survivors read and write it, and the node
    that comes back reads the survivors' value."""
    assert samba_ctdb(cluster, 1, "writekey", volatile, "k", "left").returncode == 0
    out = samba_ctdb(cluster, 2, "readkey", volatile, "k")  # the record leaves node 1
    assert out.stdout == "Data: size:4 ptr:[left]\n"
    assert samba_ctdb(cluster, 0, "writekey", volatile, "k", "stayed").returncode == 0
    cluster.kill_node(0)
    try:
        cluster.wait_healthy(timeout=60, nodes=[1, 2])
        assert samba_ctdb(cluster, 1, "readkey", volatile, "k").stdout == (
            "Data: size:4 ptr:[left]\n"
        )
        assert samba_ctdb(cluster, 2, "writekey", volatile, "k", "again").returncode == 0
    finally:
        cluster.start_node(0)
    cluster.wait_healthy(timeout=60)
    assert samba_ctdb(cluster, 0, "readkey", volatile, "k").stdout == "Data: size:5 ptr:[again]\n"
    read = run_ctdbtool(cluster.socket(1), "--json", "readkey", volatile, "k").json()
    assert read["value"] == "again"


def test_a_stopped_node_lets_go_of_the_records_its_clients_used(
    cluster: LocalCluster, volatile: str, transport: str
) -> None:
    """A stopped node serves nothing (as a stopped ctdbd is frozen): its
    Samba clients stop writing in place, and a record they used is served
    elsewhere at once, not once the node continues. Over vs with what they
    wrote (the node gives it back); over tcp, as with ctdbd, a recovery
    leaves an inactive node's copies out, so the record may be lost."""
    assert samba_ctdb(cluster, 1, "writekey", volatile, "k", "from node 1").returncode == 0
    with cluster.client(1) as cl:
        cl.call("stop", pnn=1)
    try:
        started = time.monotonic()
        read = samba_ctdb(cluster, 0, "readkey", volatile, "k")
        assert read.returncode == 0, read
        if transport == "vs":
            assert read.stdout == "Data: size:11 ptr:[from node 1]\n", read
        out = samba_ctdb(cluster, 2, "writekey", volatile, "k", "from node 2")
        assert out.returncode == 0, out.stderr
        assert time.monotonic() - started < 20
    finally:
        with cluster.client(1) as cl:
            cl.call("continue")
    cluster.wait_healthy(timeout=60)
    for pnn in range(3):
        read = samba_ctdb(cluster, pnn, "readkey", volatile, "k")
        assert read.stdout == "Data: size:11 ptr:[from node 2]\n", (pnn, read)
