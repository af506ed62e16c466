"""Chain locks on the daemon's own TDB handle (libtdb through ctypes), against
another process holding them as Samba's clients do; and waiting in a lock's
queue through a helper process (`chains.wait_in_queue`)."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tdb

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import chains
from ctdb.storage.chain_helper import LOCKED
from ctdb.storage.chainlocks import ChainLocks
from ctdb.storage.ltdb import LocalDb, Record
from tests.chain_holder import Holder
from tests.conftest import REPO


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


def test_a_chain_another_process_holds_is_refused_at_once_and_granted_once_released(
    volatile: LocalDb, holder: Holder
) -> None:
    assert holder.ask("lock", b"key") == "locked"
    assert not volatile.try_lock_chain(b"key")
    assert volatile.try_lock_chain(b"another key")  # another chain is free
    volatile.unlock_chain(b"another key")
    assert holder.ask("unlock", b"key") == "unlocked"
    assert volatile.try_lock_chain(b"key")
    # ...and now the other process is refused while we hold it
    assert holder.ask("lock", b"key") == "busy"
    volatile.unlock_chain(b"key")
    assert holder.ask("lock", b"key") == "locked"


def test_chain_locks_nest_on_our_handle_and_our_own_reads_and_writes_pass(
    volatile: LocalDb, holder: Holder
) -> None:
    assert volatile.try_lock_chain(b"k") and volatile.try_lock_chain(b"k")
    volatile.put(b"k", Record(7, 0, b"v"))  # under our own lock: no wait
    assert volatile.get(b"k") == Record(7, 0, b"v")
    volatile.unlock_chain(b"k")
    assert holder.ask("lock", b"k") == "busy"  # still held once
    volatile.unlock_chain(b"k")
    assert holder.ask("lock", b"k") == "locked"
    assert holder.ask("unlock", b"k") == "unlocked"


def test_lock_all_waits_for_no_chain_and_keeps_every_other_process_out(
    volatile: LocalDb, holder: Holder
) -> None:
    assert holder.ask("lock", b"k") == "locked"
    assert not volatile.try_lock_all()
    assert not volatile.whole_locked
    assert holder.ask("unlock", b"k") == "unlocked"
    assert volatile.try_lock_all() and volatile.whole_locked
    assert holder.ask("lock", b"k") == "busy"
    assert holder.ask("lockall") == "busy"
    # Our own handle still reads and writes, and a batch goes in without a
    # transaction (which TDB refuses under the whole-file lock).
    volatile.put(b"a", Record(1, 0, b"1"))
    volatile.write_batch({b"a": None, b"b": Record(2, 0, b"2")})
    assert volatile.get(b"a") is None and volatile.get(b"b") == Record(2, 0, b"2")
    volatile.write_batch({b"c": Record(3, 0, b"3")}, replace_all=True)
    assert dict(volatile.items()) == {b"c": Record(3, 0, b"3")}
    assert volatile.try_lock_all()  # nested: each needs its unlock_all
    volatile.unlock_all()
    assert volatile.whole_locked and holder.ask("lock", b"k") == "busy"
    volatile.unlock_all()
    assert not volatile.whole_locked
    assert holder.ask("lock", b"k") == "locked"
    assert holder.ask("read", b"c") == Record(3, 0, b"3").pack().hex()
    assert holder.ask("unlock", b"k") == "unlocked"


def test_lock_all_waits_for_a_chain_our_own_handle_holds(volatile: LocalDb) -> None:
    """libtdb refuses the whole-file lock, as an error, while the same handle
    holds a chain (the daemon's, for a lock of one of its clients): that is
    a wait too, not a failure (a tcp wipe failed as an I/O error)."""
    assert volatile.try_lock_chain(b"k")
    assert not volatile.try_lock_all()
    assert not volatile.whole_locked
    volatile.unlock_chain(b"k")
    assert volatile.try_lock_all() and volatile.whole_locked
    volatile.unlock_all()


@pytest.mark.parametrize("what", ["lock", "lockall"])
def test_a_chain_a_killed_client_held_is_granted(volatile: LocalDb, what: str) -> None:
    """A Samba client killed while it holds a chain (or the whole file) must
    not wedge the daemon: the mutex is robust, and libtdb makes it consistent
    again for the next locker."""
    holder = Holder(volatile.path, volatile.tdb_flags)
    try:
        assert holder.ask(what, b"k" if what == "lock" else None) == "locked"
        assert not volatile.try_lock_chain(b"k")
    finally:
        holder.proc.kill()
        holder.close()
    assert volatile.try_lock_chain(b"k")
    volatile.put(b"k", Record(1, 0, b"v"))
    volatile.unlock_chain(b"k")
    assert volatile.try_lock_all()
    volatile.unlock_all()
    assert volatile.get(b"k") == Record(1, 0, b"v")


def test_a_handle_that_is_not_the_files_is_refused(tmp_path: Path, volatile: LocalDb) -> None:
    other = tdb.Tdb(str(tmp_path / "other.tdb"), 0, tdb.DEFAULT, os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(CtdbError) as info:
            ChainLocks(other, volatile.path)
        assert info.value.code == ErrorCode.IO
        assert "layout" in info.value.message
    finally:
        other.close()


def test_a_closed_file_refuses_chain_locks(tmp_path: Path) -> None:
    db = LocalDb(tmp_path / "closing.tdb.0", persistent=False)
    db.close()
    with pytest.raises(CtdbError) as info:
        db.try_lock_chain(b"k")
    assert "closed" in info.value.message


def test_a_file_closed_while_locked_whole_leaves_other_files_lockable(tmp_path: Path) -> None:
    """A node that stops during a freeze closes its files holding them whole.
    libtdb unmaps the mutexes without unlocking them, and a robust mutex left
    on the thread's list made the next chain lock on any file crash the
    process (found by the simulator: tcp seed 12 crashes a frozen node).
    Run in a child process, so that a crash fails this test only."""
    script = f"""
from pathlib import Path
from ctdb.storage.ltdb import LocalDb
a = LocalDb(Path({str(tmp_path / "a.0")!r}), persistent=False)
b = LocalDb(Path({str(tmp_path / "b.0")!r}), persistent=False)
assert a.try_lock_all()
a.close()
assert b.try_lock_chain(b"key")
b.unlock_chain(b"key")
b.close()
print("ok")
"""
    _survives(script)


def test_a_file_closed_holding_chains_leaves_other_files_lockable(tmp_path: Path) -> None:
    """libtdb's close unmaps a file's mutexes without unlocking them, and a
    robust mutex left locked stays on the thread's robust list: the next
    chain lock on any file wrote through that stale link and crashed the
    process (a test that closed a file while an engine's lock kept its chain
    made later tests crash in their chain locks). So closing releases the
    chains still held, nested ones too. In a child process, so that a crash
    fails this test only."""
    script = f"""
from pathlib import Path
from ctdb.storage.ltdb import LocalDb
a = LocalDb(Path({str(tmp_path / "a.0")!r}), persistent=False)
b = LocalDb(Path({str(tmp_path / "b.0")!r}), persistent=False)  # mapped elsewhere
assert a.try_lock_chain(b"k") and a.try_lock_chain(b"k") and a.try_lock_chain(b"j")
a.close()
for key in (b"x", b"y"):
    assert b.try_lock_chain(key)
b.unlock_chain(b"x")
b.unlock_chain(b"y")
b.close()
print("ok")
"""
    _survives(script)


def _survives(script: str) -> None:
    """Run `script` in a child process: it must print ok and exit (not crash)."""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stdout == "ok\n", (done.returncode, done.stderr[-500:])


# -- waiting in the lock's queue through a helper process (`chains.wait_in_queue`,
# `ctdb.storage.chain_helper`), against clients that queue for the lock too

KEY = b"g_lock record"


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
