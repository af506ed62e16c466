"""Shared fixtures for the tests that run real daemons.

* `cluster`: one 3-node cluster per test module, per transport (the
  `TRANSPORTS` list; adding "vs" there runs every cluster test on it too).
  Tests that use it must not stop or restart nodes, and should use database
  names of their own so they do not see each other's records.
* `cluster_factory`: private clusters for tests that kill or restart nodes;
  each one is torn down after the test, also when it fails.
* `ctdbtool`: run the CLI as a subprocess against a socket.

Every cluster gets its own loopback base address (127.X.Y.*) and a random
port, so these tests can run next to other people's on the same machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest

from ctdb.common.errors import CtdbError
from tools.cluster import LocalCluster

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

T = TypeVar("T")

#: Transports the cluster fixtures run on: every cluster test runs on each.
TRANSPORTS = ["tcp", "vs"]


#: unshare(2)'s flags for a new mount and a new network namespace (linux/sched.h).
CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000


def pytest_configure(config: pytest.Config) -> None:
    """Give each parallel worker (pytest-xdist) network and mount namespaces of its own.

    Why: a worker's vs clusters share one private corosync. corosync refuses
    to start while another holds its lock file in /run, and CPG reaches it
    through an abstract socket, one set per network namespace; so two workers
    on one host would collide. With its own network namespace and its own
    /run a worker has its own loopback (127.0.0.0/8) and its own corosync, and
    nothing it starts can reach the host's network. Both namespaces go when
    the worker and what it started have exited.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS | CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise pytest.UsageError(
            f"parallel tests need namespaces of their own per worker: unshare: "
            f"{os.strerror(err)} (run as root, or serially with -n 0)"
        )
    for command in (
        ["mount", "--make-rprivate", "/"],
        ["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", "/run"],
        ["ip", "link", "set", "lo", "up"],
    ):
        subprocess.run(command, check=True)


def random_base() -> str:
    return f"127.{random.randint(10, 250)}.{random.randint(0, 250)}"


def random_port() -> int:
    return random.randint(20000, 60000)


def unique(prefix: str = "db") -> str:
    """A database or key name no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def cluster_logs(c: LocalCluster, lines: int = 30) -> str:
    """The last `lines` of each node's log, for a failure message."""
    out = []
    for pnn in range(c.size):
        path = c.log_path(pnn)
        if path.exists():
            out.append(f"--- node {pnn} log ({path}) ---")
            out.extend(path.read_text(errors="replace").splitlines()[-lines:])
    return "\n".join(out)


def wait_for(
    what: str,
    cond: Callable[[], T | Literal[False] | None],
    timeout: float,
    cluster: LocalCluster | None = None,
    *,
    interval: float = 0.02,
) -> T:
    """Poll `cond` until it returns something truthy, and return that.

    A node that does not answer yet (mid-recovery, restarting) makes `cond`
    raise a CtdbError or an OSError: it is asked again. After `timeout`
    seconds the test fails, naming `what`, the last such error and, given
    the `cluster`, the end of its nodes' logs.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except (CtdbError, OSError) as exc:
            last = exc
        if time.monotonic() >= deadline:
            logs = "" if cluster is None else "\n" + cluster_logs(cluster)
            raise AssertionError(f"timed out after {timeout}s waiting for {what} ({last}){logs}")
        time.sleep(interval)


def recovered(
    c: LocalCluster, nodes: list[int], not_generation: int | None = None
) -> dict[str, Any] | None:
    """The status `nodes` share once they are NORMAL with vnnmap == nodes in one
    generation (not `not_generation`), else None: for `wait_for`."""
    sts = [c.status(p) for p in nodes]
    gens = {st["generation"] for st in sts}
    if len(gens) != 1 or not_generation in gens:
        return None
    if all(st["recovery_mode"] == "NORMAL" and st["vnnmap"] == nodes for st in sts):
        return sts[0]
    return None


def start_cluster(
    directory: Path, transport: str, size: int = 3, *, tree: Path | None = None, **kwargs: Any
) -> LocalCluster:
    """Start a cluster on a fresh base address and port (retrying on a port
    clash): this checkout's daemons, or those of checkout `tree`."""
    last: Exception | None = None
    for _attempt in range(3):
        c = LocalCluster(
            directory / f"c{random.randint(0, 1 << 30):x}",
            size=size,
            transport=transport,
            port=random_port(),
            base=random_base(),
            **kwargs,
        )
        try:
            c.up(timeout=30, tree=tree)
            return c
        except Exception as exc:  # noqa: BLE001 - retried, then re-raised with logs
            last = exc
            logs = cluster_logs(c)
            c.down()
            last = RuntimeError(f"cluster did not come up: {exc}\n{logs}")
    assert last is not None
    raise last


@pytest.fixture(scope="session")
def host_corosync() -> Iterator[None]:
    """One private corosync on 127.0.0.1 shared by every vs cluster of the session
    (of the worker, in a parallel run: each has its own, `pytest_configure`).

    Each cluster uses its own CPG group (named after its port), so clusters
    do not see each other; `LocalCluster` finds this daemon running and does
    not start or stop one of its own.
    """
    from transport.corosync import PrivateCorosync, corosync_running

    if corosync_running():
        yield
        return
    directory = Path(tempfile.mkdtemp(prefix="ctdb-corosync-"))
    daemon = PrivateCorosync(directory, token_ms=1000)
    daemon.start()
    try:
        yield
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module", params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    if request.param == "vs":
        request.getfixturevalue("host_corosync")
    return str(request.param)


@pytest.fixture(scope="module")
def cluster(transport: str) -> Iterator[LocalCluster]:
    directory = Path(tempfile.mkdtemp(prefix="ctdb-test-"))
    c = start_cluster(directory, transport)
    try:
        yield c
    finally:
        c.down()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def cluster_factory(transport: str, tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """`cluster_factory(size=3, tunables={...})` -> a private, started cluster."""
    started: list[LocalCluster] = []

    def make(size: int = 3, **kwargs: Any) -> LocalCluster:
        c = start_cluster(tmp_path, transport, size=size, **kwargs)
        started.append(c)
        return c

    try:
        yield make
    finally:
        for c in started:
            c.down()


def run_ctdbd(config: Path) -> subprocess.CompletedProcess[str]:
    """ctdbd in the foreground on `config`, to the end: for tests of how it
    refuses to start (its exit status and stderr)."""
    return subprocess.run(
        [sys.executable, "-m", "ctdb.server.daemon", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (mount's units: "3m") at `where`, a small disk to
    fill; skips the test unless root. Unmounted lazily: libtdb keeps a
    mapping of a file whose growth failed, and the mount stays busy until
    this process exits."""
    if os.geteuid() != 0:
        pytest.skip("a tmpfs mount needs root")
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=700", "tmpfs", str(where)], check=True
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=False)


@pytest.fixture
def node1_on_tmpfs(transport: str, tmp_path: Path) -> Iterator[LocalCluster]:
    """Three nodes; node 1 keeps its databases on a tmpfs of 32 MiB, which a
    test may fill (`tools.chaos.fill`). Needs root."""
    c = LocalCluster(
        tmp_path / "cluster",
        size=3,
        transport=transport,
        port=random_port(),
        base=random_base(),
    )
    with tmpfs(c.node_dir(1) / "state", "32m"):
        try:
            c.up(timeout=60)
            yield c
        finally:
            c.down()


@dataclass
class ToolResult:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_ctdbtool(
    socket: str | None,
    *args: str,
    input: str | None = None,
    check: bool = True,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> ToolResult:
    cmd = [PYTHON, "-m", "tools.ctdbtool"]
    if socket is not None:
        cmd += ["--socket", socket]
    cmd += list(args)
    proc = subprocess.run(
        cmd,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    result = ToolResult(proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"ctdbtool {' '.join(args)} exited {proc.returncode}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return result


@pytest.fixture
def ctdbtool(cluster: LocalCluster) -> Callable[..., ToolResult]:
    """`ctdbtool("status", "--json", node=0)` runs the CLI against node 0's socket."""

    def run(*args: str, node: int = 0, **kwargs: Any) -> ToolResult:
        return run_ctdbtool(cluster.socket(node), *args, **kwargs)

    return run


def run_bench(
    args: list[str], timeout: float, tmpdir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m ARGS` (a benchmark) in this checkout, which must exit 0;
    the smoke tests of bench/ then read what it wrote. `tmpdir`: its TMPDIR."""
    env = None if tmpdir is None else {**os.environ, "TMPDIR": str(tmpdir)}
    proc = subprocess.run(
        [PYTHON, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture
def bench_tmpdir() -> Iterator[Path]:
    """A TMPDIR of its own for a benchmark the test runs: short, since the
    unix sockets of the clusters it starts there have at most 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="bt-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def base_checkouts(tmpdir: Path) -> tuple[list[str], list[Path]]:
    """What a comparing benchmark run with TMPDIR `tmpdir` left of the
    checkouts it compared with (`bench.checkouts.worktree`): the git
    worktrees of this repository in it, and their directories. Both must be
    gone when it ends; other tests' worktrees elsewhere do not count."""
    out = subprocess.run(
        ["git", "-C", str(REPO), "worktree", "list", "--porcelain"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    trees = [
        line
        for line in out.splitlines()
        if line.startswith("worktree ") and Path(line.split(" ", 1)[1]).is_relative_to(tmpdir)
    ]
    return trees, sorted(tmpdir.glob("ctdb-bench-base-*"))
