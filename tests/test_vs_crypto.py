"""corosync's own crypto for the vs transport (issue 9, item 3).

`cluster up --transport vs` starts a corosync that encrypts with its own
authkey; and on a multi-host corosync (one per network namespace) a host
with another authkey cannot join the ring, which is what the README tells
operators of a real cluster to rely on.

corosync 3.1.7 accepts `crypto_cipher`/`crypto_hash` only with the knet
transport (with udpu it exits: "crypto_cipher & crypto_hash are only valid for
the Knet transport"), so the private corosync of an encrypted cluster runs
knet. The launcher starts its own corosync only where none answers CPG, so
the test runs `cluster up` inside a fresh network and mount namespace (own
loopback, own /run) and stops everything by PID from outside afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctdb.common.keyfile import COROSYNC_KEY_SIZE, create_key
from tests.conftest import REPO, random_base, random_port
from tools import netns
from tools.cluster import LocalCluster
from tools.netns_ctdb import votes
from transport.corosync import render_config

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="corosync CPG clients must be root"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare"),
    pytest.mark.skipif(
        shutil.which("corosync") is None and not Path("/usr/sbin/corosync").exists(),
        reason="corosync is not installed",
    ),
]

IN_NEW_NAMESPACE = (
    "mount -t tmpfs -o mode=755 tmpfs /run && ip link set lo up && "
    'exec "$0" -m tools.ctdbtool cluster up --transport vs --nodes 2 '
    '--dir "$1" --base "$2" --port "$3"'
)


def test_cluster_up_vs_runs_an_encrypted_corosync(tmp_path: Path) -> None:
    directory = tmp_path / "cl"
    try:
        proc = subprocess.run(
            [
                "unshare", "--net", "--mount", "--propagation", "private", "--",
                "sh", "-c", IN_NEW_NAMESPACE,
                sys.executable, str(directory), random_base(), str(random_port()),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=REPO,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "started a private corosync" in proc.stderr
        assert "cluster healthy: nodes [0, 1]" in proc.stderr
        authkey = directory / "corosync.authkey"
        assert authkey.stat().st_mode & 0o777 == 0o600
        assert len(authkey.read_bytes()) == 256
        conf = (directory / "corosync" / "corosync.conf").read_text()
        for line in (
            "transport: knet",
            "crypto_cipher: aes256",
            "crypto_hash: sha256",
            f"keyfile: {authkey}",
        ):
            assert line in conf, conf
        log = (directory / "corosync" / "corosync.log").read_text()
        assert "crypto_nss.so has been loaded" in log, log[-2000:]
        # Not corosync's real-time default, which preempts the daemons at
        # every one of its wake-ups (README, "corosync's scheduling").
        corosync = LocalCluster.load(directory).corosync_pid
        assert corosync is not None
        threads = [int(t) for t in os.listdir(f"/proc/{corosync}/task")]
        assert threads and all(os.sched_getscheduler(t) == os.SCHED_OTHER for t in threads)
    finally:
        if (directory / "cluster.json").exists():
            LocalCluster.load(directory).down()  # by PID: works across namespaces


def test_crypto_needs_knet() -> None:
    with pytest.raises(ValueError, match="only the knet transport"):
        render_config(Path("/tmp/x"), authkey=Path("/tmp/x/authkey"), transport="udpu")
    plain = render_config(Path("/tmp/x"))
    assert "crypto_cipher: none" in plain and "transport: udpu" in plain


def wait_votes(net: netns.NetnsCluster, want: dict[int, int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := {i: votes(net, i) for i in want}) != want:
        if time.monotonic() > deadline:
            raise AssertionError(f"corosync votes {got}, want {want}")
        time.sleep(0.2)


@pytest.mark.skipif(not netns.available()[0], reason="network namespaces unavailable")
def test_a_host_with_another_authkey_cannot_join_the_ring(tmp_path: Path) -> None:
    """Three hosts, knet + aes256/sha256: hosts 0 and 1 share an authkey, host 2 has its
    own. 0 and 1 form a ring of two; host 2's packets fail authentication (its corosync
    and theirs say so) and it stays alone; given the shared key it joins."""
    net = netns.NetnsCluster(3, prefix=netns.unique_prefix("vscrypto"))
    shared, other = tmp_path / "shared.authkey", tmp_path / "other.authkey"
    create_key(shared, COROSYNC_KEY_SIZE)
    create_key(other, COROSYNC_KEY_SIZE)
    daemons: dict[int, subprocess.Popen[bytes]] = {}

    def start(i: int, authkey: Path) -> None:
        state = net.node_dir(i) / "state"
        conf = state / "corosync.conf"
        conf.write_text(render_config(state, token_ms=300, nodes=net.addresses(), authkey=authkey))
        with open(state / "corosync.stderr", "ab") as out:
            daemons[i] = net.popen(
                i,
                ["corosync", "-f", "-c", str(conf)],
                private_run=True,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def log(i: int) -> str:
        return (net.node_dir(i) / "state" / "corosync.log").read_text(errors="replace")

    try:
        net.up()
        start(0, shared)
        start(1, shared)
        start(2, other)
        wait_votes(net, {0: 2, 1: 2, 2: 1})
        deadline = time.monotonic() + 30
        while not all("Digest does not match" in log(i) for i in (0, 2)):
            assert time.monotonic() < deadline, "hosts 0 and 2 did not both log a bad digest"
            time.sleep(0.2)
        assert {votes(net, i) for i in range(3)} == {2, 1}
        daemons[2].terminate()
        daemons[2].wait(10)
        start(2, shared)
        wait_votes(net, {0: 3, 1: 3, 2: 3})
    finally:
        net.down()  # kills every process left in the namespaces
        for proc in daemons.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
