"""Samba's clients increment one counter in place from every node while the
cluster recovers under them: the counter ends at exactly the increments
they made (issue 8's first loss, rerun with Samba's record protocol).

Each node has one client process (`tests.samba_like_client`: chain lock,
header check, write in place, REQ_CALL otherwise, as `dbwrap_ctdb`). The
faults: forced recoveries on random nodes on both transports (tcp: the
freeze holds every file whole, the pull takes what was written in place);
over vs also a node stopped and continued, which takes back what it lent
(tcp leaves a stopped node's copies out of recovery, as ctdbd does, so its
records may be lost there: `test_samba_record_calls`)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctdb.common.config import CTDB_SOCKET_NAME
from tests.conftest import run_ctdbtool, unique
from tests.test_samba_ctdb_tool import CTDB, samba_ctdb
from tests.test_samba_record_calls import db_info
from tools.cluster import LocalCluster

pytestmark = [
    pytest.mark.skipif(
        not os.access(CTDB, os.X_OK), reason="Samba's ctdb tool is not installed (Debian: ctdb)"
    ),
    pytest.mark.timeout(300),
]

REPO = Path(__file__).resolve().parents[1]
SECONDS = 8.0
KEY = b"counter"


def _fault(cluster: LocalCluster, transport: str, rng: random.Random, done: list[str]) -> None:
    pnn = rng.randrange(cluster.size)
    if transport == "vs" and rng.random() < 0.5:
        with cluster.client((pnn + 1) % cluster.size) as cl:
            cl.call("stop", pnn=pnn)
        time.sleep(0.3)
        with cluster.client(pnn) as cl:
            cl.call("continue")
        done.append(f"stop/continue {pnn}")
    else:
        run_ctdbtool(cluster.socket(pnn), "recover")
        done.append(f"recover {pnn}")


def test_samba_clients_increments_in_place_survive_recoveries(
    cluster: LocalCluster, transport: str
) -> None:
    name = unique("inc")
    for pnn in range(cluster.size):  # each node's file is now shared with its client
        out = samba_ctdb(cluster, pnn, "attach", name)
        assert out.returncode == 0, out.stderr
    clients = []
    for pnn in range(cluster.size):
        info = db_info(cluster, pnn, name)
        cmd = [
            sys.executable,
            "-m",
            "tests.samba_like_client",
            str(info["path"]),
            str(cluster.node_dir(pnn) / CTDB_SOCKET_NAME),
            str(pnn),
            str(info["id"]),
            KEY.hex(),
            str(SECONDS),
        ]
        clients.append(
            subprocess.Popen(
                cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    faults: list[str] = []
    rng = random.Random(12)
    try:
        while any(c.poll() is None for c in clients):
            _fault(cluster, transport, rng, faults)
            time.sleep(0.2)
        results = [c.communicate(timeout=60) for c in clients]
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
                c.communicate()
    for c, (_, err) in zip(clients, results, strict=True):
        assert c.returncode == 0, err
    made = [json.loads(out) for out, _ in results]
    total = sum(m["increments"] for m in made)
    print(f"{transport}: {made}, {len(faults)} faults: {faults}")
    assert len(faults) >= 5 and all(m["increments"] > 0 for m in made)
    cluster.wait_healthy(timeout=60)
    for pnn in range(cluster.size):
        read = samba_ctdb(cluster, pnn, "readkey", name, KEY.decode())
        assert read.stdout == f"Data: size:{len(str(total))} ptr:[{total}]\n", (pnn, read, made)
        with cluster.client(pnn) as cl:
            assert cl.fetch(name, KEY) == str(total).encode()
