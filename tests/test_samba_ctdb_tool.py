"""Samba's own `ctdb` tool (Debian's, unmodified) against pyctdb's daemons.

Each daemon serves CTDB's client protocol on a second socket
(`ctdb/server/ctdb_sessions.py`); the tool finds it through CTDB_SOCKET.
What it serves so far must give the tool's real output; what it does not
must make the tool fail at once with its own error, never hang.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time

import pytest

from ctdb.common.config import CTDB_SOCKET_NAME
from ctdb.protocol.ctdb_controls import codec_for
from ctdb.protocol.ctdb_opcodes import CURRENT_NODE, Control
from ctdb.protocol.ctdb_wire import (
    Header,
    ReplyCall,
    ReplyControl,
    ReqCall,
    ReqControl,
    decode_packet,
)
from tests.conftest import run_ctdbtool, unique
from tools.cluster import LocalCluster

CTDB = shutil.which("ctdb") or "/usr/bin/ctdb"

pytestmark = pytest.mark.skipif(
    not os.access(CTDB, os.X_OK), reason="Samba's ctdb tool is not installed (Debian: ctdb)"
)


def samba_ctdb(
    cluster: LocalCluster, pnn: int, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        CTDB_SOCKET=str(cluster.node_dir(pnn) / CTDB_SOCKET_NAME),
        CTDB_BASE=str(cluster.directory),  # its nodes file, for `ctdb listnodes`
    )
    return subprocess.run(
        [CTDB, *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_ctdb_pnn_ping_and_uptime_answer_on_every_node(cluster: LocalCluster) -> None:
    for pnn in range(cluster.size):
        out = samba_ctdb(cluster, pnn, "pnn")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == str(pnn)
        ping = samba_ctdb(cluster, pnn, "ping")
        assert ping.returncode == 0, ping.stderr
        assert re.match(rf"response from {pnn} time=[0-9.]+ sec", ping.stdout), ping.stdout
        up = samba_ctdb(cluster, pnn, "uptime")
        assert up.returncode == 0, up.stderr
        assert f"Current time of node {pnn}" in up.stdout
        assert "Duration of last recovery/failover" in up.stdout


def test_ctdb_listvars_and_getvar_read_the_daemons_tunables(cluster: LocalCluster) -> None:
    listed = samba_ctdb(cluster, 0, "listvars")
    assert listed.returncode == 0, listed.stderr
    values = dict(re.findall(r"^(\w+)\s+= (\d+)$", listed.stdout, re.MULTILINE))
    assert values["KeepaliveLimit"] == "5"  # the default
    got = samba_ctdb(cluster, 1, "getvar", "MaxKeySize")
    assert got.returncode == 0, got.stderr
    assert re.fullmatch(r"MaxKeySize\s+= 65536\n", got.stdout)
    missing = samba_ctdb(cluster, 1, "getvar", "NoSuchTunable")
    assert missing.returncode != 0 and "No such tunable" in missing.stdout + missing.stderr


def test_ctdb_status_shows_every_node_the_generation_and_the_leader(cluster: LocalCluster) -> None:
    out = samba_ctdb(cluster, 1, "status")  # also waits for the leader's message
    assert out.returncode == 0, out.stderr
    assert "Number of nodes:3" in out.stdout
    for pnn in range(cluster.size):
        address = re.escape(cluster.address(pnn))
        assert re.search(rf"^pnn:{pnn} {address}\s+OK", out.stdout, re.MULTILINE)
    assert "(THIS NODE)" in out.stdout.splitlines()[2]  # pnn 1's line
    assert "Recovery mode:NORMAL (0)" in out.stdout
    assert re.search(r"^Leader:0$", out.stdout, re.MULTILINE)
    ours = run_ctdbtool(cluster.socket(1), "--json", "status").json()
    assert f"Generation:{ours['generation']}" in out.stdout
    machine = samba_ctdb(cluster, 2, "-X", "status")
    assert machine.returncode == 0, machine.stderr
    assert machine.stdout.splitlines()[3] == "|2|" + cluster.address(2) + "|0|0|0|0|0|0|0|0|Y|"
    node = samba_ctdb(cluster, 1, "nodestatus")  # exits non-zero unless this node is OK
    assert node.returncode == 0, node.stderr
    assert re.match(rf"pnn:1 {re.escape(cluster.address(1))}\s+OK \(THIS NODE\)$", node.stdout)
    every = samba_ctdb(cluster, 0, "nodestatus", "all")
    assert every.returncode == 0 and every.stdout.count(" OK") == cluster.size


def test_a_command_not_served_yet_fails_at_once_with_the_tools_own_error(
    cluster: LocalCluster,
) -> None:
    out = samba_ctdb(cluster, 0, "getdebug")  # GET_DEBUG: not served
    assert out.returncode != 0
    assert "Control GET_DEBUG failed" in out.stderr
    # The daemon is still fine afterwards.
    assert samba_ctdb(cluster, 0, "pnn").stdout.strip() == "0"


def test_ctdb_statistics_shows_what_the_daemon_counts(cluster: LocalCluster) -> None:
    out = samba_ctdb(cluster, 1, "statistics")
    assert out.returncode == 0, out.stderr
    assert "Statistics collected since" in out.stdout
    counted = dict(re.findall(r"^ (\w+) +(\d+)$", out.stdout, re.M))
    assert int(counted["num_clients"]) >= 1  # the tool itself
    assert int(counted["client_packets_recv"]) >= 1
    assert counted["frozen"] == counted["recovering"] == "0"


def test_ctdb_getpid_getcapabilities_and_process_exists(cluster: LocalCluster) -> None:
    assert samba_ctdb(cluster, 1, "getpid").stdout.strip() == str(cluster.pids[1])
    caps = samba_ctdb(cluster, 1, "getcapabilities").stdout.split()
    assert caps == ["LEADER:", "YES", "LMASTER:", "YES"]
    # PROCESS_EXISTS answers for the node's own clients, as ctdbd's does:
    # this test's connection to the door is one.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as held:
        held.connect(str(cluster.node_dir(1) / CTDB_SOCKET_NAME))
        mine = samba_ctdb(cluster, 1, "process-exists", str(os.getpid()))
        assert mine.returncode == 0 and f"PID {os.getpid()} exists" in mine.stdout
        # ...registered for no srvid (CHECK_PID_SRVID)
        assert samba_ctdb(cluster, 1, "process-exists", str(os.getpid()), "7").returncode == 1
    gone = samba_ctdb(cluster, 1, "process-exists", "999999")
    assert gone.returncode == 1 and "does not exist" in gone.stdout


def test_controls_for_another_node_are_forwarded_to_it(cluster: LocalCluster) -> None:
    """`ctdb -n N` on one node's door: the control runs on node N."""
    for pnn in range(3):
        out = samba_ctdb(cluster, 0, "-n", str(pnn), "getpid")
        assert out.stdout.strip() == str(cluster.pids[pnn]), out.stderr
    up = samba_ctdb(cluster, 0, "-n", "2", "uptime")
    assert up.returncode == 0 and "Current time of node 2" in up.stdout


def test_a_forwarded_control_that_waits_or_fails_answers_as_on_its_node(
    cluster: LocalCluster,
) -> None:
    """DB_ATTACH for node 2, sent to node 0's door, waits for the attach on
    every node and answers its id; GET_DBNAME of an unknown id, forwarded,
    answers -1 as the node itself would."""
    name = unique("fwd")
    attach = codec_for(Control.DB_ATTACH).request.encode(name)
    raw = exchange(cluster, 0, ReqControl(Header(21, 2), int(Control.DB_ATTACH), attach).encode())
    reply = decode_packet(raw)
    assert isinstance(reply, ReplyControl) and reply.status == 0, reply
    ours = {db["name"]: db for db in run_ctdbtool(cluster.socket(2), "--json", "getdbmap").json()}
    assert codec_for(Control.DB_ATTACH).reply.decode(reply.data) == ours[name]["id"]
    unknown = codec_for(Control.GET_DBNAME).request.encode(0x0BADDB1D)
    raw = exchange(cluster, 0, ReqControl(Header(22, 2), int(Control.GET_DBNAME), unknown).encode())
    reply = decode_packet(raw)
    assert isinstance(reply, ReplyControl) and reply.status == -1 and reply.header.reqid == 22


def test_ctdb_recover_completes_with_a_new_generation(cluster: LocalCluster) -> None:
    def generation() -> str:
        out = samba_ctdb(cluster, 2, "status")
        found = re.search(r"^Generation:(\d+)$", out.stdout, re.M)
        assert found, out.stdout + out.stderr
        return found.group(1)

    before = generation()
    out = samba_ctdb(cluster, 2, "recover")
    assert out.returncode == 0, out.stderr
    assert generation() != before
    cluster.wait_healthy(timeout=60)


def test_ctdb_listnodes_reads_the_nodes_file_cluster_up_writes(cluster: LocalCluster) -> None:
    out = samba_ctdb(cluster, 0, "listnodes")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [cluster.address(p) for p in range(3)]


def test_ctdb_getdbmap_and_getdbseqnum_see_the_daemons_databases(cluster: LocalCluster) -> None:
    volatile, persistent = unique("samba_v"), unique("samba_p")
    run_ctdbtool(cluster.socket(0), "attach", volatile)
    run_ctdbtool(cluster.socket(0), "attach", persistent, "persistent")
    run_ctdbtool(cluster.socket(0), "pstore", persistent, "k", "v")
    out = samba_ctdb(cluster, 2, "getdbmap")
    assert out.returncode == 0, out.stderr
    ours = {db["name"]: db for db in run_ctdbtool(cluster.socket(2), "--json", "getdbmap").json()}
    for name in (volatile, persistent):
        line = next(line for line in out.stdout.splitlines() if f" name:{name} " in line)
        assert f"dbid:0x{ours[name]['id']:08x}" in line
        assert f"path:{ours[name]['path']}" in line
        assert line.endswith(" PERSISTENT") == (name == persistent)
    seq = samba_ctdb(cluster, 1, "getdbseqnum", persistent)
    assert seq.returncode == 0, seq.stderr
    assert int(seq.stdout.strip(), 16) == 1  # one commit
    missing = samba_ctdb(cluster, 1, "getdbseqnum", unique("absent"))
    assert missing.returncode != 0 and "No database matching" in missing.stdout + missing.stderr


def test_ctdb_attach_creates_the_database_on_every_node(cluster: LocalCluster) -> None:
    """The tool attaches, then opens the daemon's file itself with the flags the
    daemon reports (DB_OPEN_FLAGS): our tool keeps reading and writing it."""
    volatile, persistent, replicated = unique("sv"), unique("sp"), unique("sr")
    for name, kind in (
        (volatile, ()),
        (persistent, ("persistent",)),
        (replicated, ("replicated",)),
    ):
        out = samba_ctdb(cluster, 1, "attach", name, *kind)
        assert out.returncode == 0, out.stderr
    for pnn in range(cluster.size):
        ours = {
            db["name"]: db for db in run_ctdbtool(cluster.socket(pnn), "--json", "getdbmap").json()
        }
        assert ours[volatile]["kind"] == "volatile"
        assert ours[persistent]["kind"] == "persistent"
        assert ours[replicated]["kind"] == "replicated"
    run_ctdbtool(cluster.socket(0), "writekey", volatile, "k", "v")
    assert samba_ctdb(cluster, 2, "attach", volatile).returncode == 0  # again: the same id
    assert run_ctdbtool(cluster.socket(1), "readkey", volatile, "k").stdout.strip().endswith("[v]")
    # Another kind under an attached name is refused, as ctdbd refuses it.
    wrong = samba_ctdb(cluster, 0, "attach", volatile, "persistent")
    assert wrong.returncode != 0
    assert "failed" in wrong.stdout + wrong.stderr


def test_ctdb_catdb_lists_every_nodes_records(cluster: LocalCluster) -> None:
    volatile, persistent = unique("cv"), unique("cp")
    run_ctdbtool(cluster.socket(0), "attach", volatile)
    run_ctdbtool(cluster.socket(0), "attach", persistent, "persistent")
    for pnn in range(cluster.size):  # on tcp each node becomes dmaster of its key
        run_ctdbtool(cluster.socket(pnn), "writekey", volatile, f"key{pnn}", f"value{pnn}")
    run_ctdbtool(cluster.socket(2), "pstore", persistent, "pk", "pv")
    out = samba_ctdb(cluster, 1, "catdb", volatile)
    assert out.returncode == 0, out.stderr
    dumped = re.findall(r'key\(\d+\) = "([^"]*)"\n.*?data\(\d+\) = "([^"]*)"', out.stdout, re.S)
    assert dumped == [(f"key{p}", f"value{p}") for p in range(cluster.size)]
    assert f"Dumped {cluster.size} records" in out.stdout
    out = samba_ctdb(cluster, 0, "catdb", persistent)
    assert out.returncode == 0, out.stderr
    assert 'key(2) = "pk"' in out.stdout and 'data(2) = "pv"' in out.stdout


def test_ctdb_setvar_changes_the_tunable_our_own_tool_reads(cluster: LocalCluster) -> None:
    try:
        out = samba_ctdb(cluster, 2, "setvar", "MaxLockWaiters", "777")
        assert out.returncode == 0, out.stderr
        ours = run_ctdbtool(cluster.socket(2), "getvar", "MaxLockWaiters")
        assert "777" in ours.stdout
        bad = samba_ctdb(cluster, 2, "setvar", "MaxLockWaiters", "0")  # below its range
        assert bad.returncode != 0
        assert "777" in run_ctdbtool(cluster.socket(2), "getvar", "MaxLockWaiters").stdout
    finally:  # the cluster is shared by the module's tests
        run_ctdbtool(cluster.socket(2), "setvar", "MaxLockWaiters", "1000")


def exchange(cluster: LocalCluster, pnn: int, data: bytes) -> bytes:
    """Send raw bytes to node `pnn`'s CTDB-protocol socket; what comes back until it
    has answered one packet or closed."""
    path = str(cluster.node_dir(pnn) / CTDB_SOCKET_NAME)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(path)
        sock.sendall(data)
        got = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return got
            got += chunk
            if len(got) >= 4 and len(got) >= int.from_bytes(got[:4], "little"):
                return got


def test_bad_packets_get_a_failing_status_or_a_closed_connection(cluster: LocalCluster) -> None:
    header = Header(reqid=7, destnode=CURRENT_NODE, srcnode=0)
    unknown = exchange(cluster, 0, ReqControl(header, opcode=9999).encode())
    reply = decode_packet(unknown)
    assert isinstance(reply, ReplyControl) and reply.status == -1 and reply.header.reqid == 7
    call = exchange(cluster, 0, ReqCall(header, 0, 0x12345678, 0, b"key").encode())
    answer = decode_packet(call)
    assert isinstance(answer, ReplyCall) and answer.status == -1
    # Garbage that cannot be framed: the daemon closes this connection only.
    assert exchange(cluster, 0, b"\xff" * 64) == b""
    assert samba_ctdb(cluster, 0, "pnn").stdout.strip() == "0"


def test_record_calls_fail_at_once_on_persistent_databases_and_are_served_on_volatile_ones(
    cluster: LocalCluster, transport: str
) -> None:
    """REQ_CALL on a persistent database: -1 at once (every node holds every
    record; writes go through transactions). On a volatile one it is served
    on both transports; over vs a record our clients wrote names no node its
    dmaster, so Samba's tool asks for it instead of writing in place outside
    the ordered stream, and what it writes reaches every node."""
    volatile, persistent = unique("cv"), unique("cp")
    run_ctdbtool(cluster.socket(0), "attach", volatile)
    run_ctdbtool(cluster.socket(0), "attach", persistent, "persistent")
    ours = {db["name"]: db for db in run_ctdbtool(cluster.socket(1), "--json", "getdbmap").json()}
    header = Header(reqid=11, destnode=CURRENT_NODE, srcnode=1)
    started = time.monotonic()
    call = ReqCall(header, 1, ours[persistent]["id"], 0xFF000001, b"k")
    raw = exchange(cluster, 1, call.encode())
    answer = decode_packet(raw)
    assert isinstance(answer, ReplyCall) and answer.status == -1 and answer.data == b""
    assert time.monotonic() - started < 5.0
    run_ctdbtool(cluster.socket(1), "writekey", volatile, "w", "ordered")
    out = samba_ctdb(cluster, 1, "writekey", volatile, "w", "in-place")
    assert out.returncode == 0, out.stderr
    for pnn in range(3):
        read = run_ctdbtool(cluster.socket(pnn), "--json", "readkey", volatile, "w").json()
        assert read["value"] == "in-place"
    # A persistent transaction locks g_lock.tdb through REQ_CALL first.
    assert samba_ctdb(cluster, 1, "pstore", persistent, "k", "v").returncode == 0
    assert samba_ctdb(cluster, 2, "pfetch", persistent, "k").stdout == "v\n"
