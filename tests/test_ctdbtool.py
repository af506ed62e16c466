"""`ctdbtool` as an admin runs it: subprocesses against a real cluster."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ctdb.common.errors import ErrorCode
from tests.conftest import PYTHON, REPO, ToolResult, random_port, run_ctdbtool, unique
from tools.cluster import LocalCluster

Tool = Callable[..., ToolResult]


def test_status_text(ctdbtool: Tool, cluster: LocalCluster) -> None:
    out = ctdbtool("status").stdout
    assert "Number of nodes:3" in out
    for p in range(3):
        assert re.search(rf"^pnn:{p} +{re.escape(cluster.address(p))} +OK", out, re.M), out
    assert re.search(r"^pnn:0 .*\(THIS NODE\)$", out, re.M)
    assert "(THIS NODE)" not in out.split("pnn:1", 1)[1].split("\n", 1)[0]
    assert re.search(r"^Generation:\d+$", out, re.M)
    assert "Recovery mode:NORMAL (0)" in out
    assert re.search(r"^Leader:[0-2]$", out, re.M)
    assert "Size:3" in out


def test_status_json(ctdbtool: Tool, cluster: LocalCluster) -> None:
    st = ctdbtool("--json", "status", node=1).json()
    assert st["pnn"] == 1
    assert [n["pnn"] for n in st["nodes"]] == [0, 1, 2]
    assert [n["address"] for n in st["nodes"]] == [cluster.address(p) for p in range(3)]
    assert all(n["flags"] == 0 for n in st["nodes"])
    assert isinstance(st["generation"], int) and st["generation"] > 1
    assert st["recovery_mode"] == "NORMAL"
    assert st["leader"] in (0, 1, 2)
    assert st["vnnmap"] == [0, 1, 2]
    # every node agrees
    assert ctdbtool("--json", "status", node=2).json()["generation"] == st["generation"]


def test_listnodes(ctdbtool: Tool, cluster: LocalCluster) -> None:
    assert ctdbtool("listnodes").stdout.split() == [cluster.address(p) for p in range(3)]
    nodes = ctdbtool("--json", "listnodes").json()
    assert nodes == [{"pnn": p, "address": cluster.address(p)} for p in range(3)]


def test_pnn(ctdbtool: Tool) -> None:
    assert ctdbtool("pnn").stdout.strip() == "0"
    assert ctdbtool("pnn", node=2).stdout.strip() == "2"
    assert ctdbtool("-n", "1", "pnn").stdout.strip() == "1"
    assert ctdbtool("--json", "pnn", node=1).json() == {"pnn": 1}


def test_a_pnn_launch_loads_neither_click_nor_the_client(cluster: LocalCluster) -> None:
    """What makes `ctdbtool pnn` cheap to launch (`tools/ctdbtool/quick.py`)."""
    heavy = ("click", "ctdb.client", "ctdb.protocol.client", "socket", "typing", "dataclasses")
    launch = (
        "import sys\n"
        f"sys.argv = ['ctdbtool', '--socket', {cluster.socket(2)!r}, 'pnn']\n"
        "from tools.ctdbtool import main\n"
        "main()\n"
        f"print([m for m in {heavy!r} if m in sys.modules])\n"
    )
    out = subprocess.run(
        [PYTHON, "-c", launch], capture_output=True, text=True, cwd=REPO, timeout=60, check=True
    ).stdout
    assert out.splitlines() == ["2", "[]"]


def test_ping(ctdbtool: Tool) -> None:
    out = ctdbtool("ping").stdout
    assert re.fullmatch(r"response from 0 time=\d+\.\d{6} sec\n", out), out
    out = ctdbtool("-n", "1", "ping").stdout
    assert re.fullmatch(r"response from 1 time=\d+\.\d{6} sec\n", out), out
    result = ctdbtool("--json", "-n", "2", "ping").json()
    assert result["pnn"] == 2 and 0 < result["rtt"] < 5
    assert len(ctdbtool("ping", "--count", "3").stdout.splitlines()) == 3


def test_uptime(ctdbtool: Tool) -> None:
    out = ctdbtool("uptime").stdout
    assert "Current time of node 0" in out and "Ctdbd start time" in out
    assert "Time of last recovery" in out  # the cluster recovered when it formed
    up = ctdbtool("--json", "-n", "1", "uptime").json()
    assert up["uptime"] > 0 and up["started"] < time.time()


def test_uptime_reports_the_last_recovery_on_every_node(ctdbtool: Tool) -> None:
    """Every node took part in the recovery that formed the cluster (as in Samba's
    `ctdb uptime`, which shows it on any node), not only the leader that ran it."""
    leader = ctdbtool("--json", "status").json()["leader"]
    for node in range(3):
        up = ctdbtool("--json", "uptime", node=node).json()
        assert up["last_recovery"], f"node {node} (leader {leader}) reports no recovery"
        assert up["last_recovery"]["finished"] <= time.time()


def test_attach_and_getdbmap(ctdbtool: Tool) -> None:
    vol, pers = unique("tv"), unique("tp")
    out = ctdbtool("attach", vol).stdout
    assert re.fullmatch(rf"Attached {vol} \(dbid 0x[0-9a-f]{{8}}\)\n", out), out
    info = ctdbtool("--json", "attach", pers, "persistent").json()
    assert info["name"] == pers and info["kind"] == "persistent"
    for node in range(3):  # attached everywhere
        dbs = {d["name"]: d for d in ctdbtool("--json", "getdbmap", node=node).json()}
        assert dbs[vol]["kind"] == "volatile" and dbs[pers]["kind"] == "persistent"
        assert dbs[pers]["id"] == info["id"]
    text = ctdbtool("getdbmap").stdout
    assert re.search(rf"^dbid:0x[0-9a-f]{{8}} name:{pers} path:\S+ PERSISTENT$", text, re.M)
    assert re.search(rf"^dbid:0x[0-9a-f]{{8}} name:{vol} path:\S+$", text, re.M)
    assert re.search(r"^Number of databases:\d+$", text, re.M)


def test_readkey_writekey_deletekey(ctdbtool: Tool) -> None:
    db = unique("rw")
    ctdbtool("attach", db)
    ctdbtool("writekey", db, "greeting", "hello world", node=0)
    assert ctdbtool("readkey", db, "greeting", node=2).stdout.strip() == (
        "Data: size:11 ptr:[hello world]"
    )
    got = ctdbtool("--json", "readkey", db, "greeting", node=1).json()
    assert got == {"db": db, "key": "greeting", "value": "hello world"}
    ctdbtool("deletekey", db, "greeting", node=1)
    got = ctdbtool("--json", "readkey", db, "greeting", node=0).json()
    assert got["value"] is None
    assert "not found" in ctdbtool("readkey", db, "greeting").stdout
    missing = ctdbtool("--json", "readkey", db, "never-written", node=2).json()
    assert missing == {"db": db, "key": "never-written", "value": None}


def test_catdb_sees_records_from_all_nodes(ctdbtool: Tool) -> None:
    db = unique("cat")
    ctdbtool("attach", db)
    for node in range(3):
        ctdbtool("writekey", db, f"key{node}", f"value{node}", node=node)
    out = ctdbtool("catdb", db, node=1).stdout
    for node in range(3):
        assert f'key(4) = "key{node}"\ndata(6) = "value{node}"' in out
    assert out.rstrip().endswith("Dumped 3 records")
    records = ctdbtool("--json", "catdb", db).json()
    assert sorted((r["key"], r["value"]) for r in records) == [
        (f"key{n}", f"value{n}") for n in range(3)
    ]


def test_pstore_pfetch_pdelete_and_seqnum(ctdbtool: Tool) -> None:
    db = unique("ps")
    ctdbtool("attach", db, "persistent")
    seq0 = int(ctdbtool("getdbseqnum", db).stdout, 16)
    ctdbtool("pstore", db, "k", "v1", node=1)
    seq1 = int(ctdbtool("getdbseqnum", db, node=2).stdout, 16)
    assert seq1 == seq0 + 1
    for node in range(3):
        assert ctdbtool("--json", "pfetch", db, "k", node=node).json()["value"] == "v1"
    assert ctdbtool("pfetch", db, "k").stdout.strip() == "Data: size:2 ptr:[v1]"
    ctdbtool("pstore", db, "k", "v2", node=2)
    ctdbtool("pdelete", db, "k", node=0)
    for node in range(3):
        assert ctdbtool("--json", "pfetch", db, "k", node=node).json()["value"] is None
        assert ctdbtool("--json", "getdbseqnum", db, node=node).json() == {
            "db": db,
            "seqnum": seq0 + 3,
        }


def test_ptrans_from_stdin(ctdbtool: Tool) -> None:
    db = unique("pt")
    ctdbtool("attach", db, "persistent")
    ctdbtool("pstore", db, "doomed", "x")
    lines = '"alpha" "first value"\n\n"beta" "2"\n"doomed"\n'
    result = ctdbtool("--json", "ptrans", db, input=lines, node=1).json()
    assert result["records"] == 3
    assert result["seqnum"] == int(ctdbtool("getdbseqnum", db).stdout, 16)
    for node in range(3):
        assert ctdbtool("--json", "pfetch", db, "alpha", node=node).json()["value"] == (
            "first value"
        )
        assert ctdbtool("--json", "pfetch", db, "beta", node=node).json()["value"] == "2"
        assert ctdbtool("--json", "pfetch", db, "doomed", node=node).json()["value"] is None
    text = ctdbtool("ptrans", db, input='"gamma" "3"\n').stdout
    assert re.fullmatch(r"committed 1 records, sequence number \d+\n", text)
    bad = ctdbtool("ptrans", db, input='"a" "b" "c"\n', check=False)
    assert bad.returncode != 0 and "line 1" in bad.stderr


def test_ptrans_of_identical_records_commits_nothing(ctdbtool: Tool) -> None:
    db = unique("pt")
    ctdbtool("attach", db, "persistent")
    lines = "".join(f'"k{i}" "v{i}"\n' for i in range(200)) + '"gone"\n'
    first = ctdbtool("--json", "ptrans", db, input=lines).json()["seqnum"]
    # The same records again, through another node: as Samba, nothing to commit.
    again = ctdbtool("--json", "ptrans", db, input=lines, node=2).json()["seqnum"]
    assert again == first == int(ctdbtool("getdbseqnum", db).stdout, 16)
    changed = lines.replace('"v7"', '"seven"')
    assert ctdbtool("--json", "ptrans", db, input=changed).json()["seqnum"] == first + 1
    for node in range(3):
        assert ctdbtool("--json", "pfetch", db, "k7", node=node).json()["value"] == "seven"
        assert ctdbtool("--json", "pfetch", db, "k8", node=node).json()["value"] == "v8"


def test_statistics(ctdbtool: Tool) -> None:
    stats = ctdbtool("--json", "statistics").json()
    assert isinstance(stats, dict) and stats.get("client_requests", 0) > 0
    later = ctdbtool("--json", "statistics").json()
    assert later["client_requests"] > stats["client_requests"]
    text = ctdbtool("statistics").stdout
    assert re.search(r"^client_requests +\d+$", text, re.M)


def test_listvars_getvar_setvar(ctdbtool: Tool) -> None:
    listing = ctdbtool("listvars").stdout
    assert re.search(r"^MaxKeySize +=\s*65536$", listing, re.M), listing
    tunables = ctdbtool("--json", "listvars").json()
    assert {"MaxKeySize", "MaxFrameSize", "CallTimeout", "RecoveryBanPeriod"} <= set(tunables)
    assert ctdbtool("getvar", "RecoveryBanPeriod").stdout.split() == [
        "RecoveryBanPeriod",
        "=",
        str(tunables["RecoveryBanPeriod"]),
    ]
    original = tunables["RecoveryBanPeriod"]
    try:
        ctdbtool("-n", "2", "setvar", "RecoveryBanPeriod", "77")
        values = [
            ctdbtool("--json", "getvar", "RecoveryBanPeriod", node=n).json()["value"]
            for n in range(3)
        ]
        assert values == [original, original, 77]
        assert ctdbtool("--json", "-n", "2", "getvar", "RecoveryBanPeriod").json()["value"] == 77
    finally:
        ctdbtool("-n", "2", "setvar", "RecoveryBanPeriod", str(original))
    bad = ctdbtool("setvar", "NoSuchVar", "1", check=False)
    assert bad.returncode == ErrorCode.NOT_FOUND and "NoSuchVar" in bad.stderr
    bad = ctdbtool("setvar", "MaxKeySize", "lots", check=False)
    assert bad.returncode == ErrorCode.INVALID and "number" in bad.stderr


def test_backupdb_restoredb_round_trip(ctdbtool: Tool, tmp_path: Path) -> None:
    db = unique("bk")
    ctdbtool("attach", db)
    for node in range(3):
        ctdbtool("writekey", db, f"k{node}", f"v{node}", node=node)
    backup = tmp_path / "backup.bin"
    out = ctdbtool("backupdb", db, str(backup)).stdout
    assert f"Database {db} backed up: 3 records" in out
    assert backup.stat().st_size > 0
    ctdbtool("wipedb", db)
    assert ctdbtool("--json", "catdb", db).json() == []
    out = ctdbtool("restoredb", str(backup), node=1).stdout
    assert f"Database {db} restored: 3 records" in out
    for node in range(3):
        assert ctdbtool("--json", "readkey", db, "k1", node=node).json()["value"] == "v1"
    records = ctdbtool("--json", "catdb", db, node=2).json()
    assert sorted((r["key"], r["value"]) for r in records) == [(f"k{n}", f"v{n}") for n in range(3)]

    # persistent, restored under another name
    pdb, copy = unique("pbk"), unique("pcopy")
    ctdbtool("attach", pdb, "persistent")
    ctdbtool("ptrans", pdb, input='"a" "1"\n"b" "2"\n')
    ctdbtool("backupdb", pdb, str(tmp_path / "p.bin"))
    ctdbtool("restoredb", str(tmp_path / "p.bin"), copy)
    for node in range(3):
        assert ctdbtool("--json", "pfetch", copy, "b", node=node).json()["value"] == "2"
    kinds = {d["name"]: d["kind"] for d in ctdbtool("--json", "getdbmap", node=2).json()}
    assert kinds[copy] == "persistent"


def test_wipedb(ctdbtool: Tool) -> None:
    db, pdb = unique("wipe"), unique("pwipe")
    ctdbtool("attach", db)
    ctdbtool("attach", pdb, "persistent")
    for node in range(3):
        ctdbtool("writekey", db, f"k{node}", "v", node=node)
    ctdbtool("pstore", pdb, "k", "v")
    ctdbtool("wipedb", db, node=1)
    ctdbtool("wipedb", pdb, node=2)
    for node in range(3):
        assert ctdbtool("--json", "catdb", db, node=node).json() == []
        assert ctdbtool("--json", "readkey", db, "k0", node=node).json()["value"] is None
        assert ctdbtool("--json", "pfetch", pdb, "k", node=node).json()["value"] is None
    # the databases are still usable
    ctdbtool("writekey", db, "after", "wipe")
    assert ctdbtool("--json", "readkey", db, "after", node=2).json()["value"] == "wipe"


def test_error_is_one_line_on_stderr_and_nonzero_exit(ctdbtool: Tool) -> None:
    name = unique("missing")
    for args in (("readkey", name, "k"), ("catdb", name), ("--json", "pfetch", name, "k")):
        result = ctdbtool(*args, check=False)
        assert result.returncode == ErrorCode.NOT_FOUND, result
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("ctdbtool:") and name in lines[0]
        assert "Traceback" not in result.stderr


def test_unreachable_socket_is_a_clean_error(tmp_path: Path) -> None:
    result = run_ctdbtool(str(tmp_path / "nope.socket"), "status", check=False)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1
    assert "nope.socket" in result.stderr and "Traceback" not in result.stderr


def test_help() -> None:
    top = run_ctdbtool(None, "--help")
    assert top.stdout.startswith("Usage:")
    for command in ("status", "catdb", "ptrans", "backupdb", "setvar", "cluster"):
        assert re.search(rf"^\s+{command}\b", top.stdout, re.M), command
    sub = run_ctdbtool(None, "ptrans", "--help")
    assert "Usage:" in sub.stdout and "FILE" in sub.stdout and "key" in sub.stdout
    assert "--port" in run_ctdbtool(None, "cluster", "up", "--help").stdout


def test_console_script_is_installed() -> None:
    script = Path(REPO) / ".venv" / "bin" / "ctdbtool"
    if not script.exists():
        pytest.skip("console script not installed in .venv")
    proc = subprocess.run([str(script), "-h"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "Usage:" in proc.stdout


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_cluster_up_status_down(tmp_path: Path, cluster: LocalCluster) -> None:
    directory = tmp_path / "cl"
    port = str(random_port())
    decoy = subprocess.Popen(["sleep", "120"])  # a process `down` must leave alone
    try:
        up = run_ctdbtool(
            None, "cluster", "up", "--dir", str(directory), "--nodes", "2", "--port", port
        )
        assert "node 0:" in up.stdout and "node 1:" in up.stdout
        state = json.loads((directory / "cluster.json").read_text())
        assert state["port"] == int(port) and state["size"] == 2
        pids = [int(p) for p in state["pids"].values()]
        assert len(pids) == 2
        for pid in pids:
            assert _running(pid) and str(directory) in _cmdline(pid)

        status = run_ctdbtool(None, "cluster", "status", "--dir", str(directory), "--json")
        report = status.json()
        assert [e["running"] for e in report] == [True, True]
        assert [e["pid"] for e in report] == pids
        assert all(e["recovery_mode"] == "NORMAL" for e in report)
        text = run_ctdbtool(None, "cluster", "status", "--dir", str(directory)).stdout
        assert text.count("NORMAL") == 2

        # the launched cluster serves the custom port's nodes
        sock = str(directory / "node1" / "ctdbd.socket")
        assert run_ctdbtool(sock, "pnn").stdout.strip() == "1"

        run_ctdbtool(None, "cluster", "down", "--dir", str(directory))
        deadline = time.monotonic() + 10
        while any(_running(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_running(p) for p in pids)
        assert decoy.poll() is None, "cluster down killed an unrelated process"
        assert all(cluster.alive(p) for p in range(3)), "cluster down stopped another cluster"
        after = run_ctdbtool(None, "cluster", "status", "--dir", str(directory), check=False)
        assert after.returncode != 0 and after.stdout.count("not running") == 2
    finally:
        if (directory / "cluster.json").exists():
            LocalCluster.load(directory).down()
        decoy.send_signal(signal.SIGKILL)
        decoy.wait()


def test_cluster_up_refuses_a_running_cluster(tmp_path: Path) -> None:
    directory = tmp_path / "cl"
    port = str(random_port())
    try:
        run_ctdbtool(None, "cluster", "up", "--dir", str(directory), "--nodes", "1", "--port", port)
        again = run_ctdbtool(
            None,
            "cluster",
            "up",
            "--dir",
            str(directory),
            "--nodes",
            "1",
            "--port",
            port,
            check=False,
        )
        assert again.returncode != 0 and "already running" in again.stderr
    finally:
        if (directory / "cluster.json").exists():
            LocalCluster.load(directory).down()


def test_cluster_status_without_a_cluster(tmp_path: Path) -> None:
    result = run_ctdbtool(
        None,
        "cluster",
        "status",
        "--dir",
        str(tmp_path / "empty"),
        check=False,
        env={"CTDB_SOCKET": os.devnull},
    )
    assert result.returncode != 0
    assert "no cluster" in result.stderr and "Traceback" not in result.stderr


def test_wipedb_of_a_persistent_db_does_not_lower_its_seqnum(ctdbtool: Tool) -> None:
    """Recovery takes a persistent database from the node with the highest sequence
    number; a wipe that resets it to 0 lets any node that missed the wipe (or any
    older copy) win the next recovery and bring the wiped records back."""
    pdb = unique("pseq")
    ctdbtool("attach", pdb, "persistent")
    ctdbtool("pstore", pdb, "k", "v")
    before = int(ctdbtool("getdbseqnum", pdb).stdout, 16)
    assert before >= 1
    ctdbtool("wipedb", pdb)
    for node in range(3):
        after = int(ctdbtool("getdbseqnum", pdb, node=node).stdout, 16)
        assert after > before, f"node {node}: seqnum went from {before} to {after}"


def test_ping_to_a_node_that_does_not_exist(ctdbtool: Tool) -> None:
    """Like `-n 9 status` (NOT_FOUND: no node with pnn 9), not 'not connected'."""
    status = ctdbtool("-n", "9", "status", check=False)
    assert status.returncode == ErrorCode.NOT_FOUND and "9" in status.stderr
    ping = ctdbtool("-n", "9", "ping", check=False)
    assert ping.returncode == ErrorCode.NOT_FOUND, ping
    assert "9" in ping.stderr and "Traceback" not in ping.stderr
