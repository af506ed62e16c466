"""A local cluster of real ctdbd processes on loopback addresses.

Node i listens on 127.0.0.(i+1) (one address per node, as real CTDB wants),
keeps its config, state, socket and log under DIR/node<i>/, and the launcher
records the PIDs it started in DIR/cluster.json, so that `down` stops exactly
those processes and nothing else. A cluster is secured like a real one: its
nodes share a cluster key (DIR/cluster.key), and a private corosync started
for it encrypts with its own authkey (DIR/corosync.authkey). Used by
`ctdbtool cluster`, the tests and the benchmarks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctdb.client import Client
from ctdb.common.config import DEFAULT_PORT, SOCKET_NAME
from ctdb.common.errors import CtdbError
from ctdb.common.keyfile import COROSYNC_KEY_SIZE, create_key
from transport.corosync import PrivateCorosync, corosync_running, pid_alive

#: the key of a private corosync, in the cluster's directory
COROSYNC_AUTHKEY = "corosync.authkey"

STATE_FILE = "cluster.json"


@dataclass
class LocalCluster:
    directory: Path
    size: int = 3
    transport: str = "tcp"
    port: int = DEFAULT_PORT
    #: First three octets of the node addresses; node i gets `<base>.<i+1>`.
    base: str = "127.0.0"
    tunables: dict[str, float] = field(default_factory=dict)
    cluster_lock: Path | None = None
    log_level: str = "INFO"
    #: Nodes authenticate each other with DIR/cluster.key (False: unauthenticated links).
    cluster_key: bool = True
    authenticate_frames: bool = False
    pids: dict[int, int] = field(default_factory=dict)
    corosync_pid: int | None = None
    _corosync: Any = None

    # -- layout ------------------------------------------------------------------------

    def address(self, pnn: int) -> str:
        return f"{self.base}.{pnn + 1}"

    def node_dir(self, pnn: int) -> Path:
        return self.directory / f"node{pnn}"

    def socket(self, pnn: int) -> str:
        return str(self.node_dir(pnn) / SOCKET_NAME)

    def config_path(self, pnn: int) -> Path:
        return self.node_dir(pnn) / "ctdb.conf"

    def log_path(self, pnn: int) -> Path:
        return self.node_dir(pnn) / "ctdbd.log"

    @property
    def key_path(self) -> Path:
        return self.directory / "cluster.key"

    def write_configs(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        nodes_file = self.directory / "nodes"
        nodes_file.write_text("".join(f"{self.address(p)}\n" for p in range(self.size)))
        if self.cluster_key and not self.key_path.exists():
            create_key(self.key_path)
        for pnn in range(self.size):
            d = self.node_dir(pnn)
            d.mkdir(parents=True, exist_ok=True)
            lines = [
                "[cluster]",
                f"transport = {self.transport}",
                f"nodes = {nodes_file}",
                f"address = {self.address(pnn)}",
                f"port = {self.port}",
            ]
            if self.cluster_lock is not None:
                lines.append(f"cluster lock = {self.cluster_lock}")
            if self.cluster_key:
                lines.append(f"key file = {self.key_path}")
            if self.authenticate_frames:
                lines.append("authenticate frames = yes")
            lines += [
                "[database]",
                f"state dir = {d / 'state'}",
                "[server]",
                f"run dir = {d}",
                "[logging]",
                f"file = {self.log_path(pnn)}",
                f"level = {self.log_level}",
            ]
            if self.transport == "vs":
                lines += ["[transport]", f"group = ctdb-{self.port}"]
            if self.tunables:
                lines.append("[tunables]")
                lines += [f"{k} = {v}" for k, v in self.tunables.items()]
            self.config_path(pnn).write_text("\n".join(lines) + "\n")

    # -- processes ------------------------------------------------------------------------

    def up(
        self,
        timeout: float = 30.0,
        progress: Callable[[str], None] | None = None,
        *,
        tree: Path | None = None,
    ) -> None:
        say = progress or (lambda _msg: None)
        self.write_configs()
        if self.transport == "vs":
            self._ensure_corosync(say)
        for pnn in range(self.size):
            self.start_node(pnn, tree=tree)
            say(f"started node {pnn} on {self.address(pnn)} (pid {self.pids[pnn]})")
        self.wait_healthy(timeout, progress=say)

    def start_node(self, pnn: int, *, tree: Path | None = None) -> int:
        """Start node `pnn`'s daemon: this checkout's, or that of checkout
        `tree` (another revision, for upgrades node by node)."""
        log = open(self.node_dir(pnn) / "ctdbd.stderr", "ab")
        env = None if tree is None else {**os.environ, "PYTHONPATH": str(tree)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "ctdb.server.daemon", "--config", str(self.config_path(pnn))],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=tree,
            env=env,
        )
        log.close()
        self.pids[pnn] = proc.pid
        self._save()
        return proc.pid

    def _ensure_corosync(self, say: Callable[[str], None]) -> None:
        if corosync_running():
            say("using the corosync already running on this host")
            return
        self._corosync = private_corosync(self.directory)
        self._corosync.start()
        self.corosync_pid = self._corosync.pid
        say(f"started a private corosync (pid {self.corosync_pid})")
        self._save()

    def alive(self, pnn: int) -> bool:
        pid = self.pids.get(pnn)
        return pid is not None and _is_our_process(pid, self.config_path(pnn))

    def signal_node(self, pnn: int, sig: int) -> None:
        pid = self.pids.get(pnn)
        if pid is not None and _is_our_process(pid, self.config_path(pnn)):
            os.kill(pid, sig)

    def kill_node(self, pnn: int) -> None:
        """SIGKILL one daemon and wait until it is gone."""
        self.stop_node(pnn, sig=signal.SIGKILL)

    def stop_node(self, pnn: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        pid = self.pids.get(pnn)
        if pid is None:
            return
        if _is_our_process(pid, self.config_path(pnn)):
            os.kill(pid, sig)
            _wait_gone(pid, timeout)
            if _is_our_process(pid, self.config_path(pnn)):
                os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 5.0)
        _reap(pid)
        del self.pids[pnn]
        self._save()

    def down(self) -> None:
        for pnn in list(self.pids):
            self.stop_node(pnn)
        # A daemon whose PID an interrupt kept start_node from recording.
        for pnn in range(self.size):
            for pid in _our_children(self.config_path(pnn)):
                self.pids[pnn] = pid
                self.stop_node(pnn)
        if self._corosync is not None:
            self._corosync.stop()
            self._corosync = None
        elif self.corosync_pid is not None and pid_alive(self.corosync_pid):
            os.kill(self.corosync_pid, signal.SIGTERM)
            _wait_gone(self.corosync_pid, 10.0)
        self.corosync_pid = None
        self._save()

    # -- health ---------------------------------------------------------------------------

    def client(self, pnn: int, timeout: float | None = 60.0, *, in_place: bool = False) -> Client:
        return Client(self.socket(pnn), timeout=timeout, in_place=in_place)

    def status(self, pnn: int) -> dict[str, Any]:
        with self.client(pnn, timeout=5.0) as c:
            result: dict[str, Any] = c.call("status")
            return result

    def wait_healthy(
        self,
        timeout: float = 30.0,
        nodes: list[int] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        """Until every listed node is NORMAL with the same generation and full vnnmap."""
        want = sorted(nodes if nodes is not None else self.pids)
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            problem = self._health_problem(want)
            if problem is None:
                if progress:
                    progress(f"cluster healthy: nodes {want}")
                return
            if progress and problem != last:
                progress(f"waiting: {problem}")
                last = problem
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not healthy after {timeout:.0f}s: {problem}")
            time.sleep(0.05)

    def _health_problem(self, want: list[int]) -> str | None:
        generations = set()
        for pnn in want:
            if not self.alive(pnn):
                return f"node {pnn} is not running (see {self.log_path(pnn)})"
            try:
                st = self.status(pnn)
            except (CtdbError, OSError) as exc:
                return f"node {pnn} not answering ({exc})"
            if st["recovery_mode"] != "NORMAL":
                return f"node {pnn} in recovery"
            if st["vnnmap"] != want:
                return f"node {pnn} vnnmap {st['vnnmap']}"
            generations.add(st["generation"])
        if len(generations) > 1:
            return "generations differ"
        return None

    # -- persistence of what we started ---------------------------------------------------

    def _save(self) -> None:
        data = {
            "size": self.size,
            "transport": self.transport,
            "port": self.port,
            "base": self.base,
            "pids": {str(k): v for k, v in self.pids.items()},
            "corosync_pid": self.corosync_pid,
        }
        (self.directory / STATE_FILE).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> LocalCluster:
        try:
            data = json.loads((directory / STATE_FILE).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no cluster was started in {directory}") from None
        return cls(
            directory=directory,
            size=data["size"],
            transport=data["transport"],
            port=data["port"],
            base=data["base"],
            pids={int(k): v for k, v in data["pids"].items()},
            corosync_pid=data.get("corosync_pid"),
        )


def free_port(addresses: list[str]) -> int:
    """A TCP port free on every one of `addresses` right now (for a cluster beside others)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port: int = probe.getsockname()[1]
        taken: list[socket.socket] = []
        try:
            for address in addresses:
                s = socket.socket()
                taken.append(s)
                s.bind((address, port))
            return port
        except OSError:
            continue
        finally:
            for s in taken:
                s.close()
    raise RuntimeError("no free port found")


def private_corosync(directory: Path) -> PrivateCorosync:
    """The corosync a cluster in `directory` starts when none runs (not started
    yet): its state in DIR/corosync, knet encrypted with DIR/corosync.authkey,
    made if missing. `bench.cpu_per_op` runs both of its checkouts on one."""
    key = directory / COROSYNC_AUTHKEY
    if not key.exists():
        create_key(key, COROSYNC_KEY_SIZE)
    return PrivateCorosync(directory / "corosync", token_ms=1000, authkey=key)


def _is_our_process(pid: int, config: Path) -> bool:
    """True only if `pid` is a live ctdbd started with our config file."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False
    return str(config).encode() in cmdline


def _our_children(config: Path) -> list[int]:
    """The live ctdbds this process started with `config`."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == me and _is_our_process(int(entry.name), config):
            found.append(int(entry.name))
    return found


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not pid_alive(pid):
            return
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                _reap(pid)
                return
        except OSError:
            return
        time.sleep(0.01)
