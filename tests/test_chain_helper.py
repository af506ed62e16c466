"""Waiting in a chain lock's queue through a helper process
(`ctdb.engines.chains.wait_in_queue`, `ctdb.storage.chain_helper`), against
other processes holding and queueing for the lock as Samba's clients do."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctdb.engines import chains
from ctdb.storage.chain_helper import LOCKED
from ctdb.storage.ltdb import LocalDb, Record
from tests.chain_holder import Holder
from tests.conftest import REPO

KEY = b"g_lock record"


@pytest.fixture
def volatile(tmp_path: Path) -> Iterator[LocalDb]:
    db = LocalDb(tmp_path / "shared.tdb.0", persistent=False)
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def holder(volatile: LocalDb) -> Iterator[Holder]:
    other = Holder(volatile.path, volatile.tdb_flags)
    try:
        yield other
    finally:
        other.close()


def _queued_client(db: LocalDb) -> subprocess.Popen[str]:
    """A client that blocks in the chain lock until it gets it (says "locked")."""
    return subprocess.Popen(
        [sys.executable, "-m", "ctdb.storage.chain_helper", str(db.path), str(db.tdb_flags)]
        + [KEY.hex()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def test_a_chain_free_now_is_taken_at_once_without_a_helper(volatile: LocalDb) -> None:
    async def scenario() -> bool:
        return await chains.wait_in_queue(volatile, KEY, math.inf)

    before = chains._HELPERS.busy()
    assert asyncio.run(scenario())
    assert chains._HELPERS.busy() == before  # no helper was started
    volatile.unlock_chain(KEY)


def test_the_daemon_gets_a_held_chain_before_a_client_that_queued_later(
    volatile: LocalDb, holder: Holder
) -> None:
    """What polling lost: the client queued later got the lock first."""
    assert holder.ask("lock", KEY) == "locked"
    later: subprocess.Popen[str] | None = None

    async def scenario() -> None:
        nonlocal later
        waiting = asyncio.ensure_future(chains.wait_in_queue(volatile, KEY, math.inf))
        await asyncio.sleep(1.0)  # time for the helper to start and queue
        assert not waiting.done()
        later = _queued_client(volatile)
        await asyncio.sleep(0.5)  # ... and for the later client to queue too
        assert holder.ask("unlock", KEY) == "unlocked"
        assert await asyncio.wait_for(waiting, 10.0)
        # Ours now: we write under it as under our own lock, nobody else does.
        volatile.put(KEY, Record(1, 0xFFFFFFFF, b"taken back"))
        assert later.poll() is None
        assert holder.ask("lock", KEY) == "busy"
        volatile.unlock_chain(KEY)

    try:
        asyncio.run(scenario())
        assert later is not None and later.stdout is not None
        assert later.stdout.readline().strip() == LOCKED  # next in the queue, now
    finally:
        if later is not None:
            later.communicate(timeout=10)  # (its input ends: it lets go)
    assert holder.ask("read", KEY) == Record(1, 0xFFFFFFFF, b"taken back").pack().hex()


def test_our_own_nested_locks_inside_a_helper_s_hold_release_it_once(
    volatile: LocalDb, holder: Holder
) -> None:
    assert holder.ask("lock", KEY) == "locked"

    async def scenario() -> None:
        waiting = asyncio.ensure_future(chains.wait_in_queue(volatile, KEY, math.inf))
        await asyncio.sleep(0.5)
        assert holder.ask("unlock", KEY) == "unlocked"
        assert await asyncio.wait_for(waiting, 10.0)
        assert volatile.try_lock_chain(KEY)  # nested: counted, nothing taken
        volatile.unlock_chain(KEY)
        assert holder.ask("lock", KEY) == "busy", "the helper's hold must outlast a nested unlock"
        volatile.unlock_chain(KEY)

    asyncio.run(scenario())
    # The helper lets go once its input ends: the lock is free again soon.
    deadline = time.monotonic() + 10.0
    while holder.ask("lock", KEY) != "locked":
        assert time.monotonic() < deadline, "the helper never let go"
        time.sleep(0.02)
    assert holder.ask("unlock", KEY) == "unlocked"


def test_a_wait_that_reaches_its_deadline_ends_its_helper(
    volatile: LocalDb, holder: Holder
) -> None:
    assert holder.ask("lock", KEY) == "locked"

    async def scenario() -> bool:
        loop = asyncio.get_running_loop()
        return await chains.wait_in_queue(volatile, KEY, loop.time() + 1.0)

    started = time.monotonic()
    assert not asyncio.run(scenario())
    assert 1.0 <= time.monotonic() - started < 5.0
    helpers = list(chains._HELPERS.ended)
    assert helpers and all(h.wait(timeout=10) is not None for h in helpers)
    assert holder.ask("unlock", KEY) == "unlocked"
    assert volatile.try_lock_chain(KEY)  # not taken by a helper that lived on
    volatile.unlock_chain(KEY)
