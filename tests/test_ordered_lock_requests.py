"""The ordered engine's `lock` against its lock queues, one node, the stream
fed by hand: the real `OrderedEngine.locking` and `LocalClients` over a
`Replica`, with `submitting` held until the test applies what was sent."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, cast

from ctdb.engines import flows
from ctdb.engines.flows import Flow
from ctdb.engines.ordered import waits
from ctdb.engines.ordered.engine import OrderedEngine
from ctdb.engines.ordered.local_clients import LocalClients
from ctdb.engines.ordered.replica import Granted, Replica
from ctdb.engines.ordered.waits import Effect
from ctdb.engines.waiting import Answer, Wait, Waiting
from ctdb.storage.database import DbKind
from tests.test_ordered_replica import Dbs


class Stream:
    """What OrderedEngine.lock uses of its engine; requests wait to be applied."""

    def __init__(self, directory: Path) -> None:
        self.dbs = Dbs(directory, 0)
        self.replica = Replica(0, self.dbs, Counter())
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.waiting = Waiting()
        self.clients = LocalClients(0, self.replica, self.broadcast, self.waiting)
        self.submitted: list[tuple[str, dict[str, Any], Wait]] = []
        self.db = self.dbs.attach("t.tdb", DbKind.VOLATILE)

    def deadline(self) -> float:
        return asyncio.get_running_loop().time() + 5.0

    def _waiters(self) -> int:
        return 10

    def broadcast(self, op: str, args: dict[str, Any]) -> None:
        self.sent.append((op, args))

    def _volatile_write(self, args: dict[str, Any]) -> dict[str, Any]:
        return args

    def submitting(
        self, op: str, args: dict[str, Any], deadline: float | None = None, *, serving: bool = True
    ) -> Flow[Effect, Any]:
        wait = Wait(self.waiting.deadlines)
        self.submitted.append((op, args, wait))
        return (yield Answer(wait, self.deadline(), f"{op} was not applied"))

    def run(self, flow: Flow[Effect, Any]) -> Awaitable[Any]:
        return flows.drive(flow, functools.partial(waits.carry_out, cast(Any, None)))

    locking = OrderedEngine.locking
    unlocking = OrderedEngine.unlocking

    def apply(self, origin: int, op: str, args: dict[str, Any]) -> Any:
        try:
            return self.replica.apply(origin, op, args)
        finally:
            effects, self.replica.effects = self.replica.effects, []
            for effect in effects:
                if isinstance(effect, Granted):
                    self.clients.on_granted(effect)

    def apply_submitted(self) -> None:
        for op, args, wait in self.submitted:
            wait.settle(self.apply(0, op, args), None)
        self.submitted.clear()

    def apply_sent(self) -> None:
        """What this node broadcast and nobody waits for (withdrawals), in order."""
        sent, self.sent = self.sent, []
        for op, args in sent:
            self.apply(0, op, args)

    def lock(self, session: object) -> Awaitable[Any]:
        return self.run(self.locking(self.db, b"k", session))  # type: ignore[misc]

    def unlock(self, session: object) -> Awaitable[Any]:
        return self.run(self.unlocking(self.db, b"k", session, None))  # type: ignore[misc]


#: clients of nodes 1 and 2, in the queues
H, X = (1, 1), (2, 1)


def _request(owner: tuple[int, int], stream: Stream) -> dict[str, Any]:
    return {"db": stream.db.id, "key": b"k", "owner": list(owner), "waiters": 10}


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
        assert [(o, kind) for o, kind, _, _ in q.entries] == [(owner, "lock")]
        assert (owner, stream.db.id, b"k") in stream.clients.granted

    asyncio.run(scenario())


def test_a_retry_is_not_answered_by_the_grant_of_the_request_it_withdrew(tmp_path: Path) -> None:
    """C's fetch_lock times out (its withdrawal W1 is on its way) and C asks
    again at once; H's unlock, ordered before W1, grants C's first request.
    That grant must not answer the retry: W1 then hands the lock to X, and C
    would be told it holds a record X holds. (Found by the second review.)"""

    async def scenario() -> None:
        stream = Stream(tmp_path)
        session = Session()
        owner = stream.clients.owner(session)
        stream.apply(1, "lock", _request(H, stream))
        first = asyncio.ensure_future(stream.lock(session))
        await asyncio.sleep(0)
        stream.apply_submitted()  # [H, C]
        stream.apply(2, "lock", _request(X, stream))  # [H, C, X]
        first.cancel()  # (gives up, as at its deadline: W1)
        try:
            await first
        except asyncio.CancelledError:
            pass
        stream.broadcast("withdraw", {"db": stream.db.id, "key": b"k", "owner": owner, "req": 1})
        retry = asyncio.ensure_future(stream.lock(session))
        await asyncio.sleep(0)  # its request is sent
        stream.apply(1, "unlock", {"db": stream.db.id, "key": b"k", "owner": list(H)})
        stream.apply_sent()  # W1
        stream.apply_submitted()  # the retry's request, behind X
        await asyncio.sleep(0)
        assert not retry.done(), "told it holds the record X holds"
        assert stream.replica.locks[(stream.db.id, b"k")].holder == X
        stream.apply(2, "unlock", {"db": stream.db.id, "key": b"k", "owner": list(X)})
        await asyncio.wait_for(retry, 1)
        assert stream.replica.locks[(stream.db.id, b"k")].holder == owner

    asyncio.run(scenario())


def test_an_old_request_of_a_client_at_the_head_is_withdrawn_not_taken_for_the_new_one(
    tmp_path: Path,
) -> None:
    """A state transfer leaves C's old request at the head while C's new
    fetch_lock waits to be sent: the old one is withdrawn, the new one is
    granted on its own, and C's unlock lets X have the record. (Found by the
    second review: the queue held C twice, and after C's unlock the second
    entry held the lock with nobody told.)"""

    async def scenario() -> None:
        stream = Stream(tmp_path)
        session = Session()
        owner = stream.clients.owner(session)
        got = asyncio.ensure_future(stream.lock(session))
        await asyncio.sleep(0)
        held = stream.submitted.pop()  # (waits for the node to serve)
        stream.apply(0, "lock", {**_request(owner, stream), "req": 99})  # the old request
        stream.clients.release_orphans()
        stream.submitted.append(held)
        stream.apply_submitted()  # [C(old), C(new)]
        stream.apply_sent()  # the old one withdrawn
        await asyncio.wait_for(got, 1)
        stream.apply(2, "lock", _request(X, stream))  # [C(new), X]
        unlocking = asyncio.ensure_future(stream.unlock(session))
        await asyncio.sleep(0)
        stream.apply_submitted()
        await unlocking
        stream.apply_sent()
        assert stream.replica.locks[(stream.db.id, b"k")].holder == X

    asyncio.run(scenario())
