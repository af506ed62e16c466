"""A database attached while a node's disk is nearly full neither kills that
node nor leaves it without the database once its disk has room again.

libtdb sizes a new volatile file's mutex area (4.4 MB at 100,003 chains)
with ftruncate and initialises it through a mapping: with 2 MB free, node
1's daemon died of SIGBUS, silently, on both transports, when a client of
node 0 attached a database. LocalDb now refuses to create the file
(ENOSPC): over tcp node 1's attach fails, and a client of node 1 (or the
next recovery) attaches it there once there is room; over vs node 1 leaves
the group and rejoins.

Real daemons on loopback, node 1's state directory a tmpfs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.conftest import unique
from tools.chaos import fill, state_dir
from tools.cluster import LocalCluster

pytestmark = pytest.mark.timeout(180)

ROOM = 2 * 1024 * 1024


def running(pid: int) -> bool:
    """Alive and not a zombie (the daemon is our child until it is reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_attaching_on_a_nearly_full_disk_does_not_kill_the_node(
    node1_on_tmpfs: LocalCluster,
) -> None:
    c = node1_on_tmpfs
    filler = state_dir(c, 1) / "filler"
    fill(filler)
    os.truncate(filler, filler.stat().st_size - ROOM)
    db = unique("full_attach") + ".tdb"
    c.client(0).attach(db)

    # Bounded both ways: node 1 says it could not create the file, and is
    # alive well after that.
    log = c.log_path(1)
    refused = "chain locks need about"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and refused not in log.read_text():
        assert running(c.pids[1]), "node 1 died attaching on a nearly full disk"
        time.sleep(0.2)
    assert refused in log.read_text(), "node 1 never refused the file"
    time.sleep(1.0)
    assert running(c.pids[1]), "node 1 died after refusing the file"

    filler.unlink()
    c.wait_healthy(60)
    on_1 = c.client(1)
    on_1.attach(db)
    on_1.store(db, b"k", b"written on node 1")
    assert c.client(2).fetch(db, b"k") == b"written on node 1"
