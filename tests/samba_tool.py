"""Samba's own `ctdb` tool against one of our nodes, for tests that need a real
Samba client (`ctdb pstore`, `pfetch`: g_lock in place, then the node's file)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import tdb

from ctdb.common.config import CTDB_SOCKET_NAME
from ctdb.storage.ltdb import TDB_MUTEX_LOCKING
from ctdb.storage.placement import db_id
from tests.chain_holder import Holder
from tools.cluster import LocalCluster
from tools.netns_ctdb import NetnsCtdb

CTDB = shutil.which("ctdb") or "/usr/bin/ctdb"
INSTALLED = os.access(CTDB, os.X_OK)

#: Where the tool finds a node: (its CTDB socket, its CTDB_BASE).
Door = tuple[Path, Path]


def g_lock_key(db: str) -> bytes:
    """The g_lock record Samba's transactions on `db` take (ctdb/client/client_db.c)."""
    return b"transaction_db_0x%08x\0" % db_id(db)


def door(cluster: LocalCluster | NetnsCtdb, pnn: int) -> Door:
    if isinstance(cluster, NetnsCtdb):
        base = cluster.node_dir(pnn) / "ctdb"
        return base / CTDB_SOCKET_NAME, base
    return cluster.node_dir(pnn) / CTDB_SOCKET_NAME, cluster.directory


def start(at: Door, *args: str, timeout: int = 15) -> subprocess.Popen[str]:
    """`ctdb -t TIMEOUT ARGS` against the node at `at`, started."""
    env = dict(os.environ, CTDB_SOCKET=str(at[0]), CTDB_BASE=str(at[1]))
    return subprocess.Popen(
        [CTDB, "-t", str(timeout), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(at: Door, *args: str, timeout: int = 15) -> tuple[int, str, str]:
    """`ctdb ARGS`, done: its exit status, output and errors (stripped)."""
    proc = start(at, *args, timeout=timeout)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out.strip(), err.strip()


def run_until_done(at: Door, *args: str, timeout: int = 15, within: float = 30.0) -> None:
    """`ctdb ARGS` again until it exits 0 (the others going on without a node
    take a view change or a recovery first); AssertionError after `within` s."""
    deadline = time.monotonic() + within
    while (done := run(at, *args, timeout=timeout))[0] != 0:
        assert time.monotonic() < deadline, f"ctdb {' '.join(args)} never succeeded: {done[2]}"


@contextmanager
def g_lock_held(
    cluster: LocalCluster | NetnsCtdb, pnn: int, db: str, value: str, *, timeout: int = 15
) -> Iterator[Callable[[], None]]:
    """Node `pnn` lends its Samba clients `db`'s g_lock record (`ctdb pstore`
    of `value` under key "k" there), and another process holds that record's
    chain, as Samba's g_lock client does while it asks PROCESS_EXISTS of
    another node. Yields what lets go of the chain; the process ends after."""
    at = door(cluster, pnn)
    for args in (("attach", db, "persistent"), ("pstore", db, "k", value)):
        status, _, err = run(at, *args, timeout=timeout)
        assert status == 0, f"ctdb {' '.join(args)}: {err}"
    holder = Holder(
        next(cluster.node_dir(pnn).rglob("g_lock.tdb*")), tdb.NOSYNC | TDB_MUTEX_LOCKING
    )
    key = g_lock_key(db)

    def let_go() -> None:
        assert holder.ask("unlock", key) == "unlocked"

    try:
        assert holder.ask("lock", key) == "locked"
        yield let_go
    finally:
        holder.close()


def still_waits(proc: subprocess.Popen[str], seconds: float = 0.5) -> bool:
    """Whether `proc` is still running `seconds` from now (it waits for something)."""
    until = time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < until:
        time.sleep(0.05)
    return proc.poll() is None
