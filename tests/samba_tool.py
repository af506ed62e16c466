"""Samba's own `ctdb` tool against one of our nodes, for tests that need a real
Samba client (`ctdb pstore`, `pfetch`: g_lock in place, then the node's file)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ctdb.common.config import CTDB_SOCKET_NAME
from ctdb.storage.placement import db_id
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
