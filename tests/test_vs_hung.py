"""vs: a hung ctdbd (SIGSTOP) must not stop the cluster from healing (issue 8, scenario 5).

corosync keeps a stopped process in its CPG group for ever (it drops only a
process whose connection closes) and queues the group's traffic for it. The
daemons must expel it, serve without it, let restarted and new nodes join
meanwhile, and take it back through a state transfer once it runs again.

Real ctdbd processes on a real corosync. The corosync is this module's own,
in its own network namespace: the daemons are started from inside it (the
test thread enters it), so a stopped member disturbs no other cluster on the
host. Client sockets are files, reachable from anywhere.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tools.cluster import LocalCluster
from transport.corosync import PrivateCorosync, cleanup_stale_shm

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="corosync CPG needs root"),
    pytest.mark.timeout(240),
]

#: A silent member is expelled after 0.25 s x 4 = 1 s.
TUNABLES = {"KeepaliveInterval": 0.25, "KeepaliveLimit": 4}
HEAL = 45.0  # generous: the machine is shared
DISCONNECTED = 0x01


@pytest.fixture(scope="module")
def corosync() -> Iterator[PrivateCorosync]:
    directory = Path(tempfile.mkdtemp(prefix="vshung-corosync-"))
    cs = PrivateCorosync(directory, isolate=True, token_ms=1000)
    try:
        cs.start()
        yield cs
    finally:
        cs.stop()
        shutil.rmtree(directory, ignore_errors=True)


class HungCluster:
    """A vs cluster whose daemons run in `corosync`'s namespace; any may be stopped."""

    def __init__(self, cs: PrivateCorosync, directory: Path, size: int) -> None:
        self.cs = cs
        self.c = LocalCluster(
            directory,
            size=size,
            transport="vs",
            port=random.randint(20000, 60000),
            base=f"127.{random.randint(10, 250)}.{random.randint(0, 250)}",
            tunables=dict(TUNABLES),
        )
        self.c.write_configs()
        self.stopped: set[int] = set()
        self.all_pids: set[int] = set()

    def start(self, pnn: int) -> int:
        with self.cs.netns():
            pid = self.c.start_node(pnn)
        self.all_pids.add(pid)
        return pid

    def kill(self, pnn: int) -> None:
        self.c.kill_node(pnn)

    def pause(self, pnn: int) -> None:
        self.c.signal_node(pnn, signal.SIGSTOP)
        self.stopped.add(pnn)

    def resume(self, pnn: int) -> None:
        self.c.signal_node(pnn, signal.SIGCONT)
        self.stopped.discard(pnn)

    def healthy(self, nodes: list[int]) -> None:
        try:
            self.c.wait_healthy(HEAL, nodes=nodes)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def logs(self) -> str:
        out = []
        for pnn in range(self.c.size):
            path = self.c.log_path(pnn)
            if path.exists():
                out.append(f"--- node {pnn} ---")
                out.extend(path.read_text(errors="replace").splitlines()[-15:])
        return "\n".join(out)

    def close(self) -> None:
        for pnn in list(self.stopped):
            self.resume(pnn)
        self.c.down()
        cleanup_stale_shm(self.all_pids)


@pytest.fixture
def hung_cluster(corosync: PrivateCorosync, tmp_path: Path) -> Iterator[Callable[..., HungCluster]]:
    """`hung_cluster(size, start=[...])` -> started daemons, healthy; always torn down."""
    made: list[HungCluster] = []

    def make(size: int, start: list[int] | None = None) -> HungCluster:
        h = HungCluster(corosync, tmp_path / f"c{len(made)}", size)
        made.append(h)
        nodes = start if start is not None else list(range(size))
        for pnn in nodes:
            h.start(pnn)
        h.healthy(nodes)
        return h

    try:
        yield make
    finally:
        for h in made:
            h.close()


def flags_seen_by(h: HungCluster, observer: int, pnn: int) -> int:
    return int(h.c.status(observer)["nodes"][pnn]["flags"])


def write_on(h: HungCluster, pnn: int, vol: str, per: str, data: dict[bytes, bytes]) -> None:
    key = f"from{pnn}_{uuid.uuid4().hex[:6]}".encode()
    value = f"value written on node {pnn}".encode()
    with h.c.client(pnn) as cl:
        cl.store(vol, key, value)
        cl.transact(per, {key: value})
    data[key] = value


def assert_reads(
    h: HungCluster, nodes: list[int], vol: str, per: str, data: dict[bytes, bytes]
) -> None:
    for pnn in nodes:
        with h.c.client(pnn) as cl:
            for db in (vol, per):
                got = {key: cl.fetch(db, key) for key in data}
                assert got == data, f"node {pnn}, database {db}"


def lowest_pid(h: HungCluster, nodes: list[int]) -> int:
    """The node whose process a joiner's state transfer comes from (lowest pid)."""
    return min(nodes, key=lambda p: h.c.pids[p])


@pytest.mark.parametrize("state_sender", [False, True], ids=["other-hung", "state-sender-hung"])
def test_restart_while_a_member_is_hung(
    hung_cluster: Callable[..., HungCluster], state_sender: bool
) -> None:
    """The issue's steps: stop node 1 or 2, kill -9 and restart node 0, serve, continue.

    Of nodes 1 and 2 the one with the lower pid sends the restarted node 0 its
    state; both cases are run.
    """
    h = hung_cluster(3)
    sender = lowest_pid(h, [1, 2])
    hung = sender if state_sender else 3 - sender
    vol, per = f"vol_{uuid.uuid4().hex[:8]}", f"per_{uuid.uuid4().hex[:8]}"
    data: dict[bytes, bytes] = {}
    with h.c.client(0) as cl:
        cl.attach(vol)
        cl.attach(per, "persistent")
    write_on(h, 0, vol, per, data)
    survivors = [p for p in range(3) if p != hung]
    hung_pid = h.c.pids[hung]

    h.pause(hung)
    wait_for(
        f"nodes {survivors} to expel node {hung}",
        lambda: all(flags_seen_by(h, p, hung) & DISCONNECTED for p in survivors),
        HEAL,
    )
    h.healthy(survivors)
    h.kill(0)
    h.start(0)
    h.healthy(survivors)  # before the fix: "no view within 10.0s", or stuck in recovery

    for pnn in survivors:
        write_on(h, pnn, vol, per, data)
    assert_reads(h, survivors, vol, per, data)

    h.resume(hung)
    h.healthy([0, 1, 2])
    assert h.c.pids[hung] == hung_pid and h.c.alive(hung), "the stopped process itself rejoined"
    assert_reads(h, [0, 1, 2], vol, per, data)
    write_on(h, hung, vol, per, data)
    assert_reads(h, [0, 1, 2], vol, per, data)


def test_fresh_node_joins_while_a_member_is_hung(
    hung_cluster: Callable[..., HungCluster],
) -> None:
    """Four configured nodes, three running; the one whose process would send a
    joiner its state stops, so the other two lose quorum; node 3 starts for the
    first time and must join, restoring quorum."""
    h = hung_cluster(4, start=[0, 1, 2])
    hung = lowest_pid(h, [0, 1, 2])
    others = [p for p in (0, 1, 2) if p != hung]
    vol, per = f"vol_{uuid.uuid4().hex[:8]}", f"per_{uuid.uuid4().hex[:8]}"
    data: dict[bytes, bytes] = {}
    with h.c.client(others[0]) as cl:
        cl.attach(vol)
        cl.attach(per, "persistent")
    write_on(h, others[0], vol, per, data)

    h.pause(hung)
    wait_for(
        f"nodes {others} to expel node {hung}",
        lambda: all(flags_seen_by(h, p, hung) & DISCONNECTED for p in others),
        HEAL,
    )
    h.start(3)
    h.healthy([*others, 3])
    write_on(h, 3, vol, per, data)
    assert_reads(h, [*others, 3], vol, per, data)

    h.resume(hung)
    h.healthy([0, 1, 2, 3])
    assert_reads(h, [0, 1, 2, 3], vol, per, data)


def test_a_node_restarted_under_the_last_member_with_state_comes_up_and_keeps_the_commit(
    hung_cluster: Callable[..., HungCluster],
) -> None:
    """Node 2 stops and is expelled; nodes 0 and 1 commit without it; both are
    killed, and node 0 alone restarts. Node 2's stopped process is then the
    only member of the CPG group with its state, and nobody may expel it:
    node 0 must still come up (alone, without quorum; before, its daemon
    exited with "no view within ...s"). Once node 2 runs again, nodes 0 and
    2 must serve the commit node 2 never saw, and node 1 gets it too."""
    h = hung_cluster(3)
    per = f"per_{uuid.uuid4().hex[:8]}"
    with h.c.client(0) as cl:
        cl.attach(per, "persistent")
        cl.transact(per, {b"before": b"b"})
    h.pause(2)
    wait_for(
        "nodes 0 and 1 to expel node 2",
        lambda: all(flags_seen_by(h, p, 2) & DISCONNECTED for p in (0, 1)),
        HEAL,
    )
    h.healthy([0, 1])
    with h.c.client(0) as cl:
        cl.transact(per, {b"acked": b"while 2 hung"})
    h.kill(0)
    h.kill(1)
    h.start(0)
    wait_for("node 0 to serve its status alone", lambda: h.c.status(0)["pnn"] == 0, HEAL)
    assert h.c.alive(0)

    h.resume(2)
    h.healthy([0, 2])
    h.start(1)
    h.healthy([0, 1, 2])
    for pnn in range(3):
        with h.c.client(pnn) as cl:
            assert cl.fetch(per, b"acked") == b"while 2 hung", pnn
            assert cl.fetch(per, b"before") == b"b", pnn
