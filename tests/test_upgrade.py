"""Upgrading node by node across a change of the node protocol, real daemons.

A cluster runs the daemons of `OLD`, the last revision whose daemons carried
no protocol version (their tcp handshake said ``PYCTDB02``, their vs group had
no version in its name). Its nodes are restarted one by one with this
checkout's daemons, which speak `NODE_PROTOCOL` 3. Daemons of the two
versions must never exchange a message: over tcp each refuses the other's
link in the handshake, over vs each is in the CPG group of its own version.
So the upgrade goes as a partition does: the side with a majority of the
nodes serves, the other refuses writes, and when the majority changes side
the persistent commits acknowledged so far are all there.

In a clone without `OLD`'s history (a shallow one) the old side runs this
checkout's daemon code with `NODE_PROTOCOL` set to 2 instead.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.checkouts import short_rev, worktree
from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol.messages import NODE_PROTOCOL
from tests.conftest import REPO, run_ctdbtool, start_cluster, unique, wait_for
from tools.cluster import LocalCluster
from transport import libcpg

#: the last revision before node protocol versions (see the module docstring)
OLD = "8cd4167"

pytestmark = pytest.mark.timeout(300)

#: seconds to wait for what an upgrade step brings about
WAIT = 30.0


@dataclass(frozen=True)
class Old:
    """The old daemons' code, and what their vs group name adds to the configured one."""

    tree: Path
    group_suffix: str


@pytest.fixture(scope="module")
def old() -> Iterator[Old]:
    try:
        short_rev(OLD)
    except ValueError:
        # A clone without that history (a shallow one): this checkout's
        # daemons, made to speak version 2 as `OLD`'s did.
        with tempfile.TemporaryDirectory(prefix="ctdb-v2-") as directory:
            yield Old(_speaking_2(Path(directory)), ".v2")
        return
    with worktree(OLD) as path:
        yield Old(path, "")


def _speaking_2(directory: Path) -> Path:
    """A copy of this checkout's daemon code whose node protocol is 2."""
    for package in ("ctdb", "transport"):
        shutil.copytree(REPO / package, directory / package)
    messages = directory / "ctdb" / "protocol" / "messages.py"
    ours = f"\nNODE_PROTOCOL = {NODE_PROTOCOL}\n"
    text = messages.read_text()
    assert ours in text
    messages.write_text(text.replace(ours, "\nNODE_PROTOCOL = 2\n"))
    return directory


@pytest.fixture
def old_cluster(transport: str, old: Old) -> Iterator[LocalCluster]:
    directory = Path(tempfile.mkdtemp(prefix="ctdb-upgrade-"))
    # Writes on a side without a majority fail at once instead of waiting.
    c = start_cluster(directory, transport, tree=old.tree, tunables={"WaitForQuorum": 0})
    try:
        yield c
    finally:
        c.down()
        shutil.rmtree(directory, ignore_errors=True)


def cpg_members(group: str) -> set[int]:
    """The processes in CPG group `group`, by pid."""
    with libcpg.CpgHandle() as handle:
        return {member.pid for member in handle.membership(group)}


def kept_apart(
    c: LocalCluster, transport: str, old_suffix: str, new: list[int], old: list[int]
) -> None:
    """Wait until the daemons of `new` nodes met those of `old` ones and refused them.

    tcp: each new node logs the refusal of every old node's link, naming
    both versions (an old node's refusal of ours says "bad magic"). vs: the
    new nodes' processes are in the group of their version, and the old
    group holds the old nodes' alone: no message of one reaches the other.
    """
    if transport == "tcp":
        for pnn in new:
            log = c.log_path(pnn)
            for peer in old:
                refusal = (
                    f"refused node connection with {c.address(peer)}: the peer speaks "
                    f"node protocol 2 and this node {NODE_PROTOCOL}"
                )
                wait_for(
                    f"node {pnn} to refuse node {peer}",
                    functools.partial(_logged, log, refusal),
                    WAIT,
                    c,
                )
        return
    wait_for(
        f"nodes {new} in the group of protocol {NODE_PROTOCOL}",
        lambda: cpg_members(f"ctdb-{c.port}.v{NODE_PROTOCOL}") == {c.pids[p] for p in new},
        WAIT,
        c,
    )
    assert cpg_members(f"ctdb-{c.port}{old_suffix}") == {c.pids[p] for p in old}


def _logged(log: Path, line: str) -> bool:
    return line in log.read_text(errors="replace")


def upgrade(c: LocalCluster, pnn: int) -> None:
    """Stop node `pnn` (running the old daemon) and start this checkout's."""
    c.stop_node(pnn)
    c.start_node(pnn)


def refuses_writes(c: LocalCluster, pnn: int, db: str) -> None:
    with c.client(pnn) as client, pytest.raises(CtdbError) as err:
        client.transact(db, {"from the minority": "x"})
    assert err.value.code in (ErrorCode.NO_QUORUM, ErrorCode.RETRY), err.value


def reads(c: LocalCluster, pnn: int, db: str, expected: dict[str, str]) -> None:
    with c.client(pnn) as client:
        for key, value in expected.items():
            assert client.fetch(db, key) == value.encode(), (pnn, key)


def test_nodes_upgraded_one_by_one_keep_every_acknowledged_commit(
    old_cluster: LocalCluster, transport: str, old: Old
) -> None:
    c = old_cluster
    db = unique("upgrade")
    with c.client(0) as client:
        client.attach(db, "persistent")
        client.transact(db, {"before": "0"})
    acknowledged = {"before": "0"}

    # One node upgraded: it is alone with its version, the old majority serves.
    upgrade(c, 2)
    kept_apart(c, transport, old.group_suffix, new=[2], old=[0, 1])
    c.wait_healthy(nodes=[0, 1], timeout=30)
    # (a node that does not answer yet fails the look, and is asked again)
    wait_for(
        "the new node 2 to count the others as gone", lambda: not c.status(2)["quorum"], WAIT, c
    )
    assert c.status(0)["nodes"][2]["state"] == "DISCONNECTED"
    refuses_writes(c, 2, db)
    # `ctdbtool status` says which version each side speaks.
    assert "Node protocol:2" in run_ctdbtool(c.socket(0), "status").stdout
    assert f"Node protocol:{NODE_PROTOCOL}" in run_ctdbtool(c.socket(2), "status").stdout
    with c.client(0) as client:
        client.transact(db, {"one upgraded": "1"})
    acknowledged["one upgraded"] = "1"

    # Two upgraded: the majority is on the new side, which has every commit.
    upgrade(c, 1)
    kept_apart(c, transport, old.group_suffix, new=[1, 2], old=[0])
    c.wait_healthy(nodes=[1, 2], timeout=60)
    wait_for("the old node 0 to lose its majority", lambda: not c.status(0)["quorum"], WAIT, c)
    refuses_writes(c, 0, db)
    for pnn in (1, 2):
        reads(c, pnn, db, acknowledged)
    with c.client(2) as client:
        client.transact(db, {"two upgraded": "2"})
    acknowledged["two upgraded"] = "2"

    # All upgraded: one cluster again, every commit on every node.
    upgrade(c, 0)
    c.wait_healthy(timeout=60)
    for pnn in range(3):
        reads(c, pnn, db, acknowledged)


def test_ctdbd_version_names_its_node_protocol() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ctdb.server.daemon", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"ctdbd: node protocol {NODE_PROTOCOL}\n"
