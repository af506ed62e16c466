"""The ordered engine's `lock` against its lock queues, one node, the stream
fed by hand: the real `OrderedEngine.lock` and `LocalClients` over a
`Replica`, with `_submit` held until the test applies what was sent."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from ctdb.engines.ordered.engine import OrderedEngine
from ctdb.engines.ordered.local_clients import LocalClients
from ctdb.engines.ordered.replica import Granted, Replica
from ctdb.storage.database import DbKind
from tests.test_ordered_replica import Dbs


class Stream:
    """What OrderedEngine.lock uses of its engine; requests wait to be applied."""

    def __init__(self, directory: Path) -> None:
        self.dbs = Dbs(directory, 0)
        self.replica = Replica(0, self.dbs, Counter())
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.clients = LocalClients(0, self.replica, self.broadcast)
        self.submitted: list[tuple[str, dict[str, Any], asyncio.Future[Any]]] = []
        self.db = self.dbs.attach("t.tdb", DbKind.VOLATILE)

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + 5.0

    def _waiters(self) -> int:
        return 10

    def broadcast(self, op: str, args: dict[str, Any]) -> None:
        self.sent.append((op, args))

    async def _submit(self, op: str, args: dict[str, Any], deadline: float) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.submitted.append((op, args, fut))
        return await fut

    def apply(self, origin: int, op: str, args: dict[str, Any]) -> Any:
        try:
            return self.replica.apply(origin, op, args)
        finally:
            effects, self.replica.effects = self.replica.effects, []
            for effect in effects:
                if isinstance(effect, Granted):
                    self.clients.on_granted(effect)

    def apply_submitted(self) -> None:
        for op, args, fut in self.submitted:
            fut.set_result(self.apply(0, op, args))
        self.submitted.clear()

    def lock(self, session: object) -> Any:
        return OrderedEngine.lock(self, self.db, b"k", session)  # type: ignore[arg-type]


class Session:
    """A client connection, as the lock queues know it (an id, given at first use)."""


def test_a_second_fetch_lock_of_a_session_just_granted_nests(tmp_path: Path) -> None:
    """Between the grant and the first fetch_lock recording it, the same
    session's second fetch_lock must not queue a second request (the queue
    would hold it twice, and a withdrawal would take both). (Found by the
    second review of `LocalClients.holds`.)"""

    async def scenario() -> None:
        stream = Stream(tmp_path)
        session = Session()
        owner = stream.clients.owner(session)
        first = asyncio.ensure_future(stream.lock(session))
        await asyncio.sleep(0)
        stream.apply_submitted()  # granted at once: its future is resolved
        second = asyncio.ensure_future(stream.lock(session))
        await asyncio.sleep(0)
        assert not stream.submitted, "no second request"
        await first
        await second
        q = stream.replica.locks[(stream.db.id, b"k")]
        assert list(q.entries) == [(owner, "lock", None)]
        assert (owner, stream.db.id, b"k") in stream.clients.granted

    asyncio.run(scenario())
