"""A tcp node holds its shared files whole once its clients may no longer use
records in place (ctdb.server.frozen_files.InPlaceGuard): Samba's clients
cannot read our lease, so the daemon keeps them out of the file. Another
process holds chain locks, as a Samba client would."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctdb.server.frozen_files import FrozenFiles, InPlaceGuard
from ctdb.storage.database import Database
from tests.chain_holder import Holder, holding, shared_volatile
from tests.test_chain_gate import _until


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Database]:
    with shared_volatile(tmp_path) as db:
        yield db


@pytest.fixture
def client(shared: Database) -> Iterator[Holder]:
    with holding(shared) as made:
        yield made


def test_files_are_held_from_the_end_of_in_place_use_until_it_is_allowed_again(
    shared: Database, client: Holder
) -> None:
    stats: Counter[str] = Counter()
    bulk = threading.Lock()
    until = [0.0]

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        guard = InPlaceGuard({shared.id: shared}, stats, lambda: until[0], bulk)
        try:
            until[0] = loop.time() + 0.2
            guard.update()
            assert client.ask("lock", b"k") == "locked"  # in place allowed
            assert client.ask("unlock", b"k") == "unlocked"
            # The lease runs out with nothing said: the guard's timer takes the file.
            await _until(lambda: shared.local.whole_locked)
            assert loop.time() >= until[0]
            assert client.ask("lock", b"k") == "busy"
            assert stats["in_place_holds"] == 1
            # Renewed: Samba's clients write in place again.
            until[0] = loop.time() + 60
            guard.update()
            assert not shared.local.whole_locked
            assert client.ask("lock", b"k") == "locked"
            # Ended while a client holds a chain: taken once it lets go.
            until[0] = 0.0
            guard.update()
            await asyncio.sleep(0.02)
            assert not shared.local.whole_locked
            assert client.ask("unlock", b"k") == "unlocked"
            await _until(lambda: shared.local.whole_locked)
            # Not while recovery's thread works on the files (it holds `bulk`).
            until[0] = loop.time() + 60
            with bulk:
                guard.update()
                assert shared.local.whole_locked
            await _until(lambda: not shared.local.whole_locked)
        finally:
            guard.stop()

    asyncio.run(scenario())
    assert not shared.local.whole_locked


def test_the_guards_hold_and_a_freezes_hold_nest(shared: Database, client: Holder) -> None:
    """Either ends without ending the other."""
    until = [0.0]

    async def scenario() -> None:
        guard = InPlaceGuard({shared.id: shared}, Counter(), lambda: until[0], threading.Lock())
        freeze = FrozenFiles({shared.id: shared}, Counter())
        try:
            guard.update()
            await _until(lambda: shared.local.whole_locked)
            await freeze.hold(asyncio.get_running_loop().time() + 1)
            until[0] = float("inf")
            guard.update()
            assert client.ask("lock", b"k") == "busy"  # the freeze still holds it
            freeze.release()
            assert client.ask("lock", b"k") == "locked"
            assert client.ask("unlock", b"k") == "unlocked"
        finally:
            guard.stop()

    asyncio.run(scenario())
