"""Real daemons in network namespaces: a ctdbd (and for vs a corosync) per node.

`tools.netns` builds a private LAN (one bridge, one veth per node, each node
its own namespace); this starts the cluster on it. Each daemon listens on its
namespace's address on port 4379 and keeps its client socket in the node's
directory under /tmp, so a test or tool in the host's network namespace
talks to every daemon through an ordinary Unix socket while their node
links really lose packets when `NetnsCluster.cut` or `cut_link` says so.

For vs every namespace also runs its own corosync (udpu, nodelist of the
three namespace addresses, token 300 ms, as in tests/transport/test_vs_netns.py),
and every ctdbd is started with ``private_run=True`` so that it reaches its
own node's corosync; its client socket stays in ``node_dir(i)/ctdb`` on
disk, which the host can reach (the private /run and /dev/shm cannot be
seen from outside). With three nodes corosync notices a cut host after
~2.1 s (token 300 + 650 ms coefficient, then 1.2 x consensus).

Used by tests/test_partition*.py and `tools.chaos --netns`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ctdb.client import Client
from ctdb.common.config import SOCKET_NAME
from ctdb.common.errors import CtdbError
from tools import netns
from tools.netns import NetnsCluster
from transport.corosync import cleanup_stale_shm, render_config

REPO = Path(__file__).resolve().parents[1]
PORT = 4379
SIZE = 3
#: Fast keepalives on both. tcp: they are the failure detector. vs: corosync's
#: token is; ctdbd's keepalives only expel *hung* members, and must not fire
#: during the ~2.1 s ring stall a cut causes (everyone is silent then).
TUNABLES: dict[str, dict[str, float]] = {
    "tcp": {"KeepaliveInterval": 0.2, "KeepaliveLimit": 3},
    "vs": {"KeepaliveInterval": 0.2, "KeepaliveLimit": 3},
}
TOKEN_MS = 300


class NetnsCtdb:
    """One ctdbd (and for vs one corosync) per namespace, configured by this test."""

    def __init__(
        self, net: NetnsCluster, transport: str, tunables: dict[str, float] | None = None
    ) -> None:
        self.net = net
        self.transport = transport
        self.tunables = {**TUNABLES[transport], **(tunables or {})}
        self.size = net.n
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.corosyncs: dict[int, subprocess.Popen[bytes]] = {}
        self.group = f"ctdbpart{uuid.uuid4().hex[:10]}"

    def node_dir(self, i: int) -> Path:
        return self.net.node_dir(i)

    def socket(self, i: int) -> str:
        return str(self.node_dir(i) / "ctdb" / SOCKET_NAME)

    def log(self, i: int) -> Path:
        return self.node_dir(i) / "ctdb" / "ctdbd.log"

    def write_configs(self) -> None:
        addresses = self.net.addresses()
        for i in range(self.net.n):
            d = self.node_dir(i) / "ctdb"
            d.mkdir(parents=True, exist_ok=True)
            (d / "nodes").write_text("".join(f"{a}\n" for a in addresses))
            lines = [
                "[cluster]",
                f"transport = {self.transport}",
                f"nodes = {d / 'nodes'}",
                f"address = {addresses[i]}",
                f"port = {PORT}",
                "[database]",
                f"state dir = {d / 'db'}",
                "[server]",
                f"run dir = {d}",
                "[logging]",
                f"file = {self.log(i)}",
                "level = INFO",
            ]
            if self.transport == "vs":
                lines += ["[transport]", f"group = {self.group}"]
            lines += ["[tunables]"] + [f"{k} = {v}" for k, v in self.tunables.items()]
            (d / "ctdb.conf").write_text("\n".join(lines) + "\n")

    def start_node(self, i: int) -> None:
        err = open(self.node_dir(i) / "ctdb" / "ctdbd.stderr", "ab")
        try:
            self.procs[i] = self.net.popen(
                i,
                [
                    sys.executable,
                    "-m",
                    "ctdb.server.daemon",
                    "--config",
                    str(self.node_dir(i) / "ctdb" / "ctdb.conf"),
                ],
                private_run=self.transport == "vs",
                stdout=err,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
            )
        finally:
            err.close()

    # -- corosync (vs only) ----------------------------------------------------
    def start_corosync(self, i: int) -> None:
        self.corosyncs[i] = start_corosync(self.net, i)

    def kill_corosync(self, i: int) -> None:
        """SIGKILL node i's corosync and reap it, with the IPC files it leaves
        (its daemon goes solo and reconnects once `start_corosync` ran again)."""
        proc = self.corosyncs.pop(i, None)
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            cleanup_stale_shm([proc.pid], self.net.node_dir(i) / "shm")

    def wait_votes(self, want: int, timeout: float = 20.0) -> float:
        start = time.monotonic()
        while (got := [votes(self.net, i) for i in range(self.net.n)]) != [want] * self.net.n:
            if time.monotonic() - start > timeout:
                raise AssertionError(f"corosync votes {got}, want {want}\n{self.logs()}")
            time.sleep(0.1)
        return time.monotonic() - start

    def stop(self) -> None:
        for procs in (self.procs, self.corosyncs):
            for proc in procs.values():
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs.values():
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)

    def client(self, i: int, timeout: float | None = 20.0, *, in_place: bool = False) -> Client:
        return Client(self.socket(i), timeout=timeout, in_place=in_place)

    # -- what tools.chaos does to a node ------------------------------------------

    @property
    def pids(self) -> dict[int, int]:
        return {i: p.pid for i, p in self.procs.items() if p.poll() is None}

    def alive(self, i: int) -> bool:
        proc = self.procs.get(i)
        return proc is not None and proc.poll() is None

    def signal_node(self, i: int, sig: int) -> None:
        if self.alive(i):
            self.procs[i].send_signal(sig)

    def kill_node(self, i: int) -> None:
        """SIGKILL node i's daemon and reap it."""
        proc = self.procs.pop(i, None)
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every node is NORMAL with one generation and the full vnnmap."""
        everyone = list(range(self.size))
        try:
            wait_for("every node healthy", lambda: healthy(self, everyone), timeout, self)
        except AssertionError as exc:
            raise TimeoutError(str(exc).splitlines()[0]) from None

    def status(self, i: int) -> dict[str, Any]:
        with self.client(i, timeout=5.0) as c:
            result: dict[str, Any] = c.call("status")
            return result

    def logs(self) -> str:
        out = []
        for i in range(self.net.n):
            paths = [self.log(i), self.node_dir(i) / "ctdb" / "ctdbd.stderr"]
            if self.transport == "vs":
                paths.append(self.node_dir(i) / "state" / "corosync.log")
            for path in paths:
                if path.exists():
                    out.append(f"--- node {i}: {path.name} ---")
                    out += path.read_text(errors="replace").splitlines()[-25:]
        return "\n".join(out)


def start_corosync(net: NetnsCluster, i: int) -> subprocess.Popen[bytes]:
    """Node i's own corosync (udpu over the namespaces' addresses, token TOKEN_MS),
    in its private /run; its configuration, written once, stays for restarts."""
    state = net.node_dir(i) / "state"
    state.mkdir(parents=True, exist_ok=True)
    conf = state / "corosync.conf"
    if not conf.exists():
        conf.write_text(render_config(state, token_ms=TOKEN_MS, nodes=net.addresses()))
    with open(state / "corosync.stderr", "ab") as out:
        return net.popen(
            i,
            ["corosync", "-f", "-c", str(conf)],
            private_run=True,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def votes(net: NetnsCluster, i: int) -> int | None:
    """Total votes node i's corosync counts (None: not answering)."""
    r = net.run(i, ["corosync-quorumtool", "-s"], private_run=True, timeout=10)
    for line in r.stdout.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Total votes":
            return int(value)
    return None


def wait_for(what: str, cond: Callable[[], Any], timeout: float, ctdb: NetnsCtdb) -> float:
    start = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - start < timeout:
        try:
            if cond():
                return time.monotonic() - start
        except (CtdbError, OSError) as exc:
            last = exc
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} ({last})\n{ctdb.logs()}")


def healthy(ctdb: NetnsCtdb, nodes: list[int]) -> bool:
    sts = [ctdb.status(i) for i in nodes]
    return len({st["generation"] for st in sts}) == 1 and all(
        st["recovery_mode"] == "NORMAL" and st["vnnmap"] == nodes for st in sts
    )


@contextmanager
def netns_ctdb(
    transport: str, tag: str, tunables: dict[str, float] | None = None
) -> Iterator[NetnsCtdb]:
    """A healthy cluster of SIZE nodes in fresh namespaces; everything removed on exit
    (and first what a killed earlier run left behind)."""
    netns.sweep_stale()
    net = NetnsCluster(SIZE, prefix=netns.unique_prefix(f"{tag}{uuid.uuid4().hex[:6]}"))
    with net:  # down() kills everything in our namespaces, removes namespaces and dirs
        cluster = NetnsCtdb(net, transport, tunables)
        try:
            if transport == "vs":
                for i in range(SIZE):
                    cluster.start_corosync(i)
                cluster.wait_votes(SIZE)
            cluster.write_configs()
            for i in range(SIZE):
                cluster.start_node(i)
            wait_for("all nodes healthy", lambda: healthy(cluster, list(range(SIZE))), 30, cluster)
            yield cluster
        finally:
            cluster.stop()
