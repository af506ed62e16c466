"""Vacuuming: a database whose keys come and go stays bounded on disk, and no delete is undone.

Real daemons on both transports. 60,000 keys are created and deleted, in
rounds of 10,000; deletion markers are vacuumed once every node has them
(VacuumInterval 0.3 s here), so the TDB file stops growing: the space the
vacuumed markers held is reused by the next round's records.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import tdb

from ctdb.client import AsyncClient
from tests.conftest import unique
from tools.cluster import LocalCluster

ROUNDS = 6
KEYS_PER_ROUND = 10_000
IN_FLIGHT = 200
#: What one round's deletion markers take at least, kept (see the test).
MARKERS_PER_ROUND = KEYS_PER_ROUND * (24 + 6 + 24)


async def _create_and_delete(socket: str, db: str, round_no: int) -> None:
    client = await AsyncClient.connect(socket)
    try:
        sem = asyncio.Semaphore(IN_FLIGHT)

        async def one(i: int) -> None:
            key = f"r{round_no}-k{i}"
            async with sem:
                await client.store(db, key, "v" * 32)
                await client.delete(db, key)

        await asyncio.gather(*(one(i) for i in range(KEYS_PER_ROUND)))
    finally:
        await client.close()


def _files(c: LocalCluster, db: str) -> list[Path]:
    files = []
    for p in range(c.size):
        with c.client(p) as cl:
            files.append(Path(next(d["path"] for d in cl.call("getdbmap") if d["name"] == db)))
    return files


def _record_count(path: Path) -> int:
    """Records in a node's TDB file, deletion markers included (read without the daemon)."""
    t = tdb.Tdb(str(path), 0, tdb.DEFAULT, os.O_RDONLY)
    try:
        return sum(1 for _ in t.keys())
    finally:
        t.close()


def _wait_vacuumed(files: list[Path], timeout: float = 60.0) -> None:
    """Until no node's file holds a record (every marker vacuumed)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = [_record_count(f) for f in files]
        if not any(counts):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"records left after {timeout}s: {counts}")
        time.sleep(0.3)


def test_keys_created_and_deleted_for_ever_keep_the_file_bounded(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    c = cluster_factory(tunables={"VacuumInterval": 0.3})
    db = unique("vac")
    with c.client(0) as cl:
        cl.attach(db)
    files = _files(c, db)
    sizes: list[list[int]] = []
    for r in range(ROUNDS):
        asyncio.run(_create_and_delete(c.socket(r % c.size), db, r))
        _wait_vacuumed(files)
        sizes.append([f.stat().st_size for f in files])
    # After a few rounds the freed space is reused. TDB still expands its
    # file in steps now and then (free space is fragmented), but over the
    # last two rounds (20,000 keys) by less than one round's deletion
    # markers would take without vacuuming (without it they would add two
    # rounds'): 10,000 x (a 24-byte TDB record header + key + CTDB's
    # 24-byte header) > MARKERS_PER_ROUND bytes.
    assert max(sizes[-1]) - max(sizes[3]) < MARKERS_PER_ROUND, sizes
    with c.client(1) as cl:
        for r in (0, ROUNDS - 1):
            assert cl.fetch(db, f"r{r}-k7") is None  # no delete undone


def test_a_vacuumed_delete_stays_deleted_through_recovery(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    c = cluster_factory(tunables={"VacuumInterval": 0.3})
    db = unique("vac")
    with c.client(0) as cl:
        cl.attach(db)
        for i in range(50):
            cl.store(db, f"k{i}", f"v{i}")
    for p in range(c.size):  # every node has seen (a copy of) every record
        with c.client(p) as cl:
            for i in range(50):
                assert cl.fetch(db, f"k{i}") == f"v{i}".encode()
    with c.client(2) as cl:
        for i in range(50):
            cl.delete(db, f"k{i}")
    _wait_vacuumed(_files(c, db))
    with c.client(1) as cl:
        cl.call("recover")
    for p in range(c.size):
        with c.client(p) as cl:
            assert [cl.fetch(db, f"k{i}") for i in range(50)] == [None] * 50
