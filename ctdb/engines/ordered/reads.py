"""Reads of the ordered engine's records (`OrderedEngine.fetch`).

Every member applies the same stream, so a read may be answered from this
node's copy only where that cannot miss an acknowledged write: the key
holds only stable writes here and either our client holds its lock or
`LocalReads` allows local reads of a record nobody holds. Any other read
waits for a barrier broadcast after it arrived (`barriers.py`): a
linearizable read at the cost of a round through the stream.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from ctdb.common.errors import CtdbError
from ctdb.engines.answers import Answers
from ctdb.engines.effects import Serving
from ctdb.engines.flows import Flow
from ctdb.engines.ordered import waits
from ctdb.engines.ordered.barriers import ReadBarriers
from ctdb.engines.ordered.local_clients import LockingEngine, withdrawal
from ctdb.engines.ordered.waits import Effect
from ctdb.engines.waiting import Waiting
from ctdb.storage.database import Database
from ctdb.storage.ltdb import live_value


class ReadsHost(LockingEngine, Protocol):
    """What reads use of their engine (`ctdb.engines.ordered.engine`)."""

    def deadline(self) -> float: ...

    waiting: Waiting

    def send_barrier(self, to: Answers) -> int: ...

    def settled(self, db: Database, key: bytes) -> bool: ...

    def settling(self, db: Database, key: bytes, deadline: float) -> Flow[Effect, None]: ...

    def broadcast(self, op: str, args: dict[str, Any]) -> None: ...


class Reads:
    def __init__(self, engine: ReadsHost) -> None:
        self.engine = engine
        #: read barriers ("sync" broadcasts): see barriers.py
        self.barriers = ReadBarriers(engine.send_barrier, engine.waiting)

    def fetch(self, db: Database, key: bytes, session: object) -> Any:
        """The record's value now when this node may answer alone, else a
        coroutine that answers once a barrier is delivered."""
        e = self.engine
        q = e.replica.locks.get((db.id, key))
        holder = q.holder if q is not None else None
        if (
            e.node.serving
            and e.settled(db, key)
            and (
                holder == e.clients.owner(session)
                or (holder is None and e.node.tunable("LocalReads"))
            )
            and (not db.shared or db.local.try_lock_chain(key))
        ):
            e.node.stats["fetch_local"] += 1
            try:
                return live_value(db.local.get(key))
            finally:
                if db.shared:
                    db.local.unlock_chain(key)
        return self._ordered(db, key, session)

    def _ordered(self, db: Database, key: bytes, session: object) -> Awaitable[bytes | None]:
        return self.engine.run(self.ordered(db, key, session))

    def ordered(self, db: Database, key: bytes, session: object) -> Flow[Effect, bytes | None]:
        """A linearizable read: wait for a barrier sent after the read arrived.

        Totem assigns sequence numbers on a circulating token, so a write
        acknowledged anywhere before this read began is ordered before the
        barrier, and is applied here by the time the barrier is delivered.
        """
        e = self.engine
        deadline = e.deadline()
        if not e.node.serving:
            yield Serving(deadline)
        yield from e.waiting.registered(
            self.barriers.join,
            self.barriers.leave,
            deadline,
            "the read's ordering barrier was not delivered in time",
        )
        q = e.replica.locks.get((db.id, key))
        if q is None or q.holder in (None, e.clients.owner(session)):
            yield from e.settling(db, key, deadline)
            return (yield from waits.read(db, key, deadline))
        # Someone else holds the record: wait for it, as migration would
        # (within the read's own deadline, not one more per step).
        value = yield from e.locking(db, key, session, deadline)
        try:
            yield from e.unlocking(db, key, session, None, deadline=deadline)
        except CtdbError:
            # The client asked for a read, not a lock: it must not keep one.
            claim = (e.clients.owner(session), db.id, key)
            req = e.clients.granted.pop(claim, None)
            e.broadcast("withdraw", withdrawal(claim, req))
            raise
        return value
