"""Tests of the network-namespace harness (tools/netns.py) with real namespaces.

Why python TCP echo instead of ping: ping is not installed on a minimal
Debian, while the interpreter running the tests always is.  Every test uses a
prefix containing this process's pid, so parallel runs never collide, and
every cluster is torn down by a context manager even when an assert fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools import netns
from tools.netns import NetnsCluster, cleanup

OK, WHY = netns.available()
pytestmark = pytest.mark.skipif(not OK, reason=f"network namespaces unavailable: {WHY}")

PORT = 7999
ROOT = Path(__file__).resolve().parent.parent
_PREFIXES: list[str] = []

ECHO_SERVER = textwrap.dedent(
    """
    import socket, sys, threading
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(16)
    print("ready", flush=True)
    def serve(c):
        with c:
            while data := c.recv(4096):
                c.sendall(data)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
    """
)

ECHO_CLIENT = textwrap.dedent(
    """
    import socket, sys
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.0) as c:
            c.sendall(b"ping"); c.settimeout(1.0)
            sys.exit(0 if c.recv(16) == b"ping" else 1)
    except OSError as e:
        print(e, file=sys.stderr); sys.exit(1)
    """
)


def prefix(tag: str) -> str:
    """A per-run, per-test prefix (pid makes parallel runs independent)."""
    p = netns.unique_prefix(tag)
    _PREFIXES.append(p)
    return p


@pytest.fixture(scope="module", autouse=True)
def _sweep() -> Iterator[None]:
    """Clear what SIGKILLed earlier runs left; afterwards remove every prefix used here."""
    netns.sweep_stale()
    yield
    for p in _PREFIXES:
        cleanup(p)


def start_echo(c: NetnsCluster, i: int) -> subprocess.Popen[str]:
    """Start the echo server in node i and wait until it listens."""
    proc = c.popen(
        i, [sys.executable, "-c", ECHO_SERVER, str(PORT)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def reach(c: NetnsCluster, src: int, dst: int) -> bool:
    """Whether node src can do a TCP round trip to node dst's echo server."""
    r = c.run(src, [sys.executable, "-c", ECHO_CLIENT, c.address(dst), str(PORT)], timeout=10)
    return r.returncode == 0


def matrix(c: NetnsCluster) -> set[tuple[int, int]]:
    """All ordered pairs (src, dst), src != dst, that can talk.

    The probes run concurrently: a blocked pair costs the 1 s client timeout,
    and a 5-node partition would otherwise take half a minute.
    """
    procs = {
        (a, b): c.popen(
            a,
            [sys.executable, "-c", ECHO_CLIENT, c.address(b), str(PORT)],
            stderr=subprocess.DEVNULL,
        )
        for a in range(c.n)
        for b in range(c.n)
        if a != b
    }
    return {pair for pair, proc in procs.items() if proc.wait(timeout=30) == 0}


def all_pairs(nodes: list[int]) -> set[tuple[int, int]]:
    return {(a, b) for a in nodes for b in nodes if a != b}


def test_available_reports_reason() -> None:
    ok, why = netns.available()
    assert ok is True and why == "ok"


def test_addresses_and_names() -> None:
    c = NetnsCluster(3, prefix="ctdbt-x")
    assert c.addresses() == ["10.213.0.1", "10.213.0.2", "10.213.0.3"]
    assert (c.switch, c.ns(2)) == ("ctdbt-x-sw", "ctdbt-x-2")
    with pytest.raises(IndexError):
        c.address(3)
    with pytest.raises(ValueError):
        NetnsCluster(2, prefix="bad prefix")


def test_ping_cut_heal_down() -> None:
    p = prefix("a")
    with NetnsCluster(3, prefix=p) as c:
        servers = [start_echo(c, i) for i in range(3)]
        assert matrix(c) == all_pairs([0, 1, 2])

        c.cut(1)
        assert matrix(c) == {(0, 2), (2, 0)}
        assert c.status()[1]["bridge"] is None

        c.heal(1)
        assert matrix(c) == all_pairs([0, 1, 2])

        down = c.down()
        assert f"{p}-sw" in down
    # down killed our processes and removed namespaces and directories.
    for s in servers:
        assert s.wait(timeout=5) is not None
    assert netns.existing_nodes(p) == []
    assert not [n for n in netns._list_netns() if n.startswith(p + "-")]
    assert not list(c.base.glob(f"{p}-run-*"))


def test_partition_groups() -> None:
    with NetnsCluster(5, prefix=prefix("p")) as c:
        for i in range(5):
            start_echo(c, i)
        c.partition([0, 1, 2], [3, 4])
        assert matrix(c) == all_pairs([0, 1, 2]) | all_pairs([3, 4])
        c.partition([0, 1])  # 2, 3, 4 isolated
        assert matrix(c) == all_pairs([0, 1])
        c.partition([0, 2], [1, 3], [4])  # regroup across the old split
        assert matrix(c) == all_pairs([0, 2]) | all_pairs([1, 3])
        assert c.status()[4]["bridge"] not in (None, "br0")
        c.heal_all()
        assert matrix(c) == all_pairs(list(range(5)))


def test_cut_link_is_non_transitive() -> None:
    with NetnsCluster(3, prefix=prefix("l")) as c:
        for i in range(3):
            start_echo(c, i)
        c.cut_link(0, 1)
        assert matrix(c) == all_pairs([0, 2]) | all_pairs([1, 2])
        c.heal_link(0, 1)
        assert matrix(c) == all_pairs([0, 1, 2])


def test_private_run_is_shared_per_node_and_private_across_nodes() -> None:
    with NetnsCluster(2, prefix=prefix("r")) as c:
        marker = f"netns-test-{os.getpid()}"
        w = c.run(
            0,
            ["sh", "-c", f"echo hi > /run/{marker} && echo x > /dev/shm/{marker}"],
            private_run=True,
        )
        assert w.returncode == 0, w.stderr
        # a second, separately started command of node 0 sees the same /run
        r = c.run(0, ["cat", f"/run/{marker}", f"/dev/shm/{marker}"], private_run=True)
        assert r.stdout.split() == ["hi", "x"]
        # node 1 and the host do not
        assert c.run(1, ["test", "-e", f"/run/{marker}"], private_run=True).returncode != 0
        assert not Path("/run", marker).exists()
        assert not Path("/dev/shm", marker).exists()
        assert (c.node_dir(0) / "run" / marker).read_text() == "hi\n"
        # without private_run the command sees the host's /run
        assert c.run(0, ["test", "-e", f"/run/{marker}"]).returncode != 0
        # the Popen pid is the command itself (signals reach it directly)
        proc = c.popen(0, ["sleep", "60"], private_run=True)
        try:
            deadline = time.monotonic() + 5
            while (comm := Path(f"/proc/{proc.pid}/comm").read_text().strip()) != "sleep":
                assert time.monotonic() < deadline, comm
                time.sleep(0.01)
            assert proc.poll() is None
        finally:
            proc.kill()
            proc.wait()


def test_down_removes_leftovers_of_a_crashed_run() -> None:
    p = prefix("c")
    crash = textwrap.dedent(
        f"""
        import os, subprocess
        from tools.netns import NetnsCluster
        c = NetnsCluster(2, prefix={p!r}).up()
        c.popen(1, ["sleep", "600"], start_new_session=True)
        os._exit(3)  # no atexit, no __exit__: like a SIGKILLed test run
        """
    )
    r = subprocess.run([sys.executable, "-c", crash], cwd=ROOT, timeout=60)
    assert r.returncode == 3
    assert netns.existing_nodes(p) == [0, 1]
    pids = netns._ns_pids(f"{p}-1")
    assert pids
    # A fresh object with the same prefix cleans up from the system state alone.
    NetnsCluster(2, prefix=p).down()
    assert netns.existing_nodes(p) == []
    assert f"{p}-sw" not in netns._list_netns()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def test_sweep_stale_removes_dead_runs_only() -> None:
    dead = f"{netns.TEST_STEM}999999999zz"  # no such pid
    alive = prefix("alive")
    NetnsCluster(1, prefix=dead).up().detach()
    NetnsCluster(1, prefix=alive).up().detach()
    try:
        removed = netns.sweep_stale()
        assert f"{dead}-0" in removed and f"{dead}-sw" in removed
        assert netns.existing_nodes(dead) == []
        assert netns.existing_nodes(alive) == [0]
    finally:
        cleanup(dead)
        cleanup(alive)


def test_cli_idempotent_up_and_down() -> None:
    p = prefix("cli")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tools.netns", "--prefix", p, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    try:
        assert cli("up", "2").returncode == 0
        assert cli("cut", "1").returncode == 0
        assert "cut" in cli("status").stdout
        r = cli("up", "2")  # re-run: succeeds, repairs, heals the cut
        assert r.returncode == 0, r.stderr
        assert "cut" not in cli("status").stdout
        assert netns.existing_nodes(p) == [0, 1]
        r = cli("exec", "1", "--", "ip", "-4", "-o", "addr", "show", "eth0")
        assert "10.213.0.2/24" in r.stdout
        assert cli("up", "1").returncode == 0  # shrinking removes node 1
        assert netns.existing_nodes(p) == [0]
        assert cli("down").returncode == 0
        assert cli("down").returncode == 0  # idempotent
        assert netns.existing_nodes(p) == []
        assert "--private-run" in cli("exec", "--help").stdout
    finally:
        cleanup(p)


COROSYNC_CONF = """totem {{
    version: 2
    cluster_name: netnstest
    transport: udpu
    crypto_cipher: none
    crypto_hash: none
    token: 300
}}
nodelist {{
{nodes}
}}
quorum {{
    provider: corosync_votequorum
}}
logging {{
    to_stderr: yes
    to_syslog: no
}}
system {{
    state_dir: {state}
}}
"""


def _votes(c: NetnsCluster, i: int) -> tuple[int, bool] | None:
    """(total votes, quorate) seen by node i's corosync, via a private_run client."""
    r = c.run(i, ["corosync-quorumtool", "-s"], private_run=True, timeout=10)
    fields = dict(ln.split(":", 1) for ln in r.stdout.splitlines() if ":" in ln)
    if "Total votes" not in fields:
        return None
    return int(fields["Total votes"]), fields.get("Quorate", "").strip() == "Yes"


def _wait_votes(c: NetnsCluster, want: dict[int, tuple[int, bool]], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while (got := {i: _votes(c, i) for i in want}) != want:
        assert time.monotonic() < deadline, got
        time.sleep(0.2)


@pytest.mark.skipif(not shutil.which("corosync"), reason="corosync not installed")
def test_one_corosync_per_namespace_with_private_run() -> None:
    """The use the harness exists for: one corosync per node, clients beside it."""
    with NetnsCluster(3, prefix=prefix("k")) as c:
        nodes = "\n".join(
            f"    node {{\n        ring0_addr: {c.address(i)}\n        nodeid: {i + 1}\n    }}"
            for i in range(3)
        )
        for i in range(3):
            conf = c.node_dir(i) / "corosync.conf"
            conf.write_text(COROSYNC_CONF.format(nodes=nodes, state=c.node_dir(i) / "state"))
            with open(c.node_dir(i) / "corosync.log", "w") as log:
                c.popen(
                    i,
                    ["corosync", "-f", "-c", str(conf)],
                    private_run=True,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        _wait_votes(c, {i: (3, True) for i in range(3)})
        # a client without the node's private /run cannot reach its corosync
        assert _votes(c, 0) is not None
        assert c.run(0, ["corosync-quorumtool", "-s"]).returncode != 0
        c.cut(2)
        _wait_votes(c, {0: (2, True), 1: (2, True), 2: (1, False)})
        c.heal(2)
        _wait_votes(c, {i: (3, True) for i in range(3)})
