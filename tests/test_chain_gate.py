"""The daemon's work on records Samba's clients share waits for their chain locks
without ever blocking (ctdb.engines.chains), and a freeze holds the files whole
(ctdb.server.frozen_files); another process holds the locks, as a client would.
The gate's retries run on a clock the test moves (`tests.clocks.ManualClock`)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.chains import RETRY, ChainGate, release
from ctdb.engines.effects import Chain
from ctdb.engines.migration_flows import carry_out
from ctdb.server.frozen_files import FrozenFiles
from ctdb.storage.database import Database, DbKind
from ctdb.storage.ltdb import Record
from tests.chain_holder import Holder, holding, shared_volatile
from tests.clocks import LoopClock, ManualClock


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with shared_volatile(tmp_path) as volatile:
        yield volatile


@pytest.fixture
def holder(db: Database) -> Iterator[Holder]:
    with holding(db) as client:
        yield client


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Yield to the loop until `condition()` holds (the gate's retries run meanwhile)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def _no_failure() -> None:
    raise AssertionError("no work here fails")


def test_work_on_a_held_record_waits_in_order_and_other_records_go_on(
    db: Database, holder: Holder
) -> None:
    stats: Counter[str] = Counter()
    clock = ManualClock()
    gate = ChainGate(stats, lambda: True, _no_failure, clock)
    done: list[str] = []

    def work(name: str, key: bytes) -> None:
        # The gate holds the chain while the work runs: the client is kept out.
        assert holder.ask("lock", key) == "busy"
        db.local.put(key, Record(len(done) + 1, 0, name.encode()))
        done.append(name)

    gate.run(db, b"free", lambda: work("at once", b"free"))
    assert done == ["at once"] and clock.pending() == 0
    assert holder.ask("lock", b"held") == "locked"
    gate.run(db, b"held", lambda: work("first", b"held"))
    gate.run(db, b"held", lambda: work("second", b"held"))
    gate.run(db, b"other", lambda: work("other record", b"other"))
    assert done == ["at once", "other record"]
    assert gate.waiting() == 1 and stats["chain_waits"] == 1
    clock.advance(RETRY)  # still held: tried again later
    assert gate.waiting() == 1 and clock.pending() == 1
    assert holder.ask("unlock", b"held") == "unlocked"
    clock.advance(RETRY)
    assert gate.waiting() == 0 and clock.pending() == 0
    assert done == ["at once", "other record", "first", "second"]
    # ...and the gate let go of the chain afterwards.
    assert holder.ask("lock", b"held") == "locked"
    assert holder.ask("unlock", b"held") == "unlocked"


def test_the_tcp_drivers_wait_for_a_chain_takes_it_once_free_and_gives_up_at_the_deadline(
    db: Database, holder: Holder
) -> None:
    """What `migration_flows.carry_out` does with a flow's `effects.Chain`."""
    stats: Counter[str] = Counter()
    gate = ChainGate(stats, lambda: True, _no_failure, LoopClock())
    engine = cast(Any, SimpleNamespace(node=SimpleNamespace(stats=stats), chains=gate))

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        assert holder.ask("lock", b"k") == "locked"
        started = loop.time()
        assert await carry_out(engine, Chain(db, b"k", started + 0.2)) is False
        assert 0.2 <= loop.time() - started < 2.0
        waiting = asyncio.ensure_future(carry_out(engine, Chain(db, b"k", loop.time() + 10)))
        await _until(lambda: stats["chain_waits"] == 2)
        assert not waiting.done()  # still held by the client
        assert holder.ask("unlock", b"k") == "unlocked"
        assert await waiting is True
        assert holder.ask("lock", b"k") == "busy"  # ours now
        release(db, b"k")
        assert holder.ask("lock", b"k") == "locked"
        assert holder.ask("unlock", b"k") == "unlocked"

    asyncio.run(scenario())


def test_a_freeze_holds_every_volatile_file_once_no_client_holds_a_chain(
    tmp_path: Path, db: Database, holder: Holder
) -> None:
    persistent = Database.open(tmp_path, "durable.tdb", DbKind.PERSISTENT, 0)
    stats: Counter[str] = Counter()
    files = FrozenFiles({db.id: db, persistent.id: persistent}, stats)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        assert holder.ask("lock", b"k") == "locked"
        with pytest.raises(CtdbError) as info:
            await files.hold(loop.time() + 0.1)
        assert info.value.code == ErrorCode.IO and "shared.tdb" in info.value.message
        freezing = loop.create_task(files.hold(loop.time() + 10))
        await _until(lambda: stats["freeze_waits"] == 2)
        assert not freezing.done() and not files.held()
        assert holder.ask("unlock", b"k") == "unlocked"
        await freezing
        assert files.held() and db.local.whole_locked
        assert not persistent.local.whole_locked  # clients do not write it in place
        assert holder.ask("lock", b"k") == "busy"
        db.local.write_batch({b"k": Record(1, 0, b"pushed")})  # a push, under the lock
        files.release()
        assert not db.local.whole_locked
        assert holder.ask("lock", b"k") == "locked"
        assert holder.ask("read", b"k") == Record(1, 0, b"pushed").pack().hex()
        assert holder.ask("unlock", b"k") == "unlocked"

    try:
        asyncio.run(scenario())
    finally:
        persistent.local.close()


def test_a_file_no_samba_client_attached_costs_no_chain_lock(
    tmp_path: Path, db: Database, holder: Holder
) -> None:
    """Until a Samba client attaches a volatile database, nobody else takes
    its locks: the gate runs work without them, and a freeze leaves it be."""
    private = Database.open(tmp_path, "private.tdb", DbKind.VOLATILE, 0)
    other = Holder(private.path, private.local.tdb_flags)
    stats: Counter[str] = Counter()
    gate = ChainGate(stats, lambda: True, _no_failure, LoopClock())
    files = FrozenFiles({private.id: private}, stats)
    seen: list[str] = []

    async def scenario() -> None:
        gate.run(private, b"k", lambda: seen.append(other.ask("lock", b"k")))
        assert seen == ["locked"] and other.ask("unlock", b"k") == "unlocked"
        await files.hold(asyncio.get_running_loop().time() + 1)
        assert files.held() and not private.local.whole_locked
        private.shared = True
        assert not files.held()  # a freeze from now on holds it too
        gate.run(private, b"k", lambda: seen.append(other.ask("lock", b"k")))
        assert seen == ["locked", "busy"]

    try:
        asyncio.run(scenario())
    finally:
        other.close()
        private.local.close()


def test_during_a_recovery_waiting_work_leaves_the_file_alone(db: Database, holder: Holder) -> None:
    """A recovery's bulk work owns the handles (in its thread): retries wait for
    the node to be in a generation again, even once the client let go."""
    in_generation = True
    asked: list[bool] = []

    def ready() -> bool:
        asked.append(in_generation)
        return in_generation

    clock = ManualClock()
    gate = ChainGate(Counter(), ready, _no_failure, clock)
    done: list[str] = []
    assert holder.ask("lock", b"k") == "locked"
    gate.run(db, b"k", lambda: done.append("handed over"))
    in_generation = False
    assert holder.ask("unlock", b"k") == "unlocked"
    clock.advance(3.5 * RETRY)
    assert asked == [False, False, False]  # three retries went by...
    assert done == [] and gate.waiting() == 1
    assert holder.ask("lock", b"k") == "locked"  # ...without taking the chain
    assert holder.ask("unlock", b"k") == "unlocked"
    in_generation = True
    clock.advance(RETRY)
    assert gate.waiting() == 0 and done == ["handed over"]


def test_requeued_work_that_fails_reports_it_and_the_rest_still_runs(
    db: Database, holder: Holder
) -> None:
    """A write that failed half-way (I/O error) makes the node's copies suspect:
    the node is told (`Node.local_failure`: a recovery), as for a message
    handler that fails outside the gate."""
    failures: list[str] = []
    clock = ManualClock()
    gate = ChainGate(Counter(), lambda: True, lambda: failures.append("failed"), clock)
    done: list[str] = []

    def broken() -> None:
        raise RuntimeError("simulated I/O error in store")

    assert holder.ask("lock", b"k") == "locked"
    gate.run(db, b"k", broken)
    gate.run(db, b"k", lambda: done.append("next"))
    assert holder.ask("unlock", b"k") == "unlocked"
    clock.advance(RETRY)
    assert gate.waiting() == 0 and failures == ["failed"] and done == ["next"]
