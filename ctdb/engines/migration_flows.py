"""tcp: a client's record operations as flows (`ctdb.engines.flows`).

The usual case needs no flow: the record is served here, no client of
ours holds it and no Samba client holds its chain, and `MigrationEngine`
reads or writes it at once (an unlock runs its flow that far with
`flows.started`, without a coroutine). What a flow waits for it yields:
the record brought here and held by nobody else (`Acquired`: the flow of
`ctdb.engines.acquisition`, whose own waits, `waiting.Heard` among them,
go through the same driver), a record's chain (`Chain`), this node to
serve (`Serving`), a commit to be made everywhere (`waiting.Answer`,
`Committed`) or other nodes' replies (`Controls`).
`tests/test_migration_flows.py` resumes them by hand.

A write is made only under the record's chain lock and only while this
node serves the record: whatever the wait was, the flow looks again under
the chain before it writes (the record may have moved, a freeze may have
voided a lock).
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import controls
from ctdb.engines.chains import poll, release, try_hold
from ctdb.engines.controls import Controls
from ctdb.engines.effects import Chain, Serving
from ctdb.engines.flows import Flow
from ctdb.engines.merge import from_wire
from ctdb.engines.persistent_calls import Committed
from ctdb.engines.waiting import Answer, Heard, Waiting
from ctdb.storage.database import Database
from ctdb.storage.ltdb import Record, live_value

if TYPE_CHECKING:
    from ctdb.engines.chains import ChainGate
    from ctdb.engines.host import Host
    from ctdb.engines.transactions import TransactionEngine


class Engine(Protocol):
    """What the flows need of `ctdb.engines.migration.MigrationEngine`."""

    node: Host
    transactions: TransactionEngine
    waiting: Waiting
    chains: ChainGate

    def deadline(self) -> float: ...

    def local(self, db: Database, key: bytes, session: object) -> tuple[bool, Record | None]: ...

    def write(self, db: Database, key: bytes, value: bytes) -> Record: ...

    def write_over(self, db: Database, key: bytes, old: Record | None, value: bytes) -> Record: ...

    def check_lock(self, db: Database, key: bytes, session: object) -> None: ...

    def locked_by(self, db: Database, key: bytes, session: object) -> bool: ...

    def release(self, db: Database, key: bytes, session: object) -> None: ...

    def settled(self, db: Database, key: bytes) -> bool: ...

    def acquire(
        self, db: Database, key: bytes, session: object, *, lock: bool
    ) -> Awaitable[Record | None]: ...


@dataclass(slots=True)
class Acquired:
    """The record here with no other client holding it (`Acquisition.acquire`):
    the record; with `lock`, locked for `session` until released."""

    db: Database
    key: bytes
    session: object
    lock: bool


Effect = Acquired | Chain | Serving | Answer | Heard | Controls | Committed


def fetching(db: Database, key: bytes, session: object) -> Flow[Effect, bytes | None]:
    """The record's value once it is here (`MigrationEngine.fetch` reads
    one served here at once)."""
    return live_value((yield Acquired(db, key, session, False)))


def storing(
    engine: Engine, db: Database, key: bytes, value: bytes, session: object
) -> Flow[Effect, None]:
    """Bring the record here and write it (`MigrationEngine.store` writes
    one served here at once)."""
    while True:
        yield Acquired(db, key, session, False)
        yield from holding(db, key, engine.deadline())
        try:
            mine, rec = engine.local(db, key, session)
            if mine:  # else it moved on, or a freeze came: bring it here again
                engine.write_over(db, key, rec, value)
                return
        finally:
            release(db, key)


def unlocking(
    engine: Engine, db: Database, key: bytes, session: object, value: bytes | None
) -> Flow[Effect, None]:
    """Write `value` (None: nothing) under `session`'s lock and release it;
    RETRY if a recovery voided the lock, NOT_LOCKED if it never held one.

    A lock on a record of a file Samba's clients share keeps the record's
    chain (`Acquisition._grant`), so the write takes it at once; not so a
    lock granted before a Samba client attached the file, which waits
    here for the chain as any write does (never blocking the daemon)."""
    node = engine.node
    while True:
        engine.check_lock(db, key, session)
        if not node.serving:
            # Our lease is being renewed (a freeze would have voided the
            # lock): write only once we serve again, or fail.
            yield Serving(engine.deadline())
            continue
        if value is not None:
            yield from holding(db, key, engine.deadline())
            try:
                if not (engine.locked_by(db, key, session) and node.serving):
                    continue  # a freeze came while a client held the chain: look again
                engine.write(db, key, value)
            finally:
                release(db, key)
        engine.release(db, key, session)
        return


def holding(db: Database, key: bytes, deadline: float) -> Flow[Effect, None]:
    """Hold `key`'s chain lock (a file clients do not share has none), now or
    once no client holds it; TIMEOUT at `deadline`. Release it with
    `chains.release` before the next yield."""
    if try_hold(db, key):
        return
    if not (yield Chain(db, key, deadline)):
        raise CtdbError(ErrorCode.TIMEOUT, f"a client held the record {key!r} too long")


def settling(engine: Engine, db: Database, key: bytes, deadline: float) -> Flow[Effect, None]:
    """Once no commit that wrote `key` may still be taken back here."""
    node, waiting, transactions = engine.node, engine.waiting, engine.transactions
    while True:
        if not node.serving:
            yield Serving(deadline)
        if engine.settled(db, key):
            return
        yield from waiting.registered(
            lambda waiter: transactions.wait_settled(waiter, db, key, waiting),
            transactions.unwait,
            deadline,
            f"a commit of {key!r} was not made on every node in time",
        )


def traversing(engine: Engine, db: Database) -> Flow[Effect, list[tuple[bytes, Record]]]:
    """Each member's records it is dmaster of (a replicated database: ours)."""
    node = engine.node
    if not node.serving:
        yield Serving(engine.deadline())
    members = [node.pnn] if db.replicated else node.vnnmap
    parts = yield Controls.on_all(members, "traverse", {"db_id": db.id})
    return sorted(from_wire(rec for part in parts for rec in part).items())


def wiping(engine: Engine, db: Database) -> Flow[Effect, None]:
    """Every record gone on every node."""
    if db.replicated:
        # A transaction deleting everything: all nodes or none, and the
        # sequence number moves forward so recovery cannot undo the wipe.
        tx = engine.transactions.begin(db)
        for key, _ in (yield from traversing(engine, db)):
            tx.writes[key] = None
        yield Committed(tx)
        return
    node = engine.node
    if not node.serving:
        yield Serving(engine.deadline())
    yield Controls.on_all(node.vnnmap, "wipe", {"db_id": db.id, "generation": node.generation})


def carry_out(engine: Engine, effect: Effect) -> Awaitable[Any]:
    """The tcp engine's driver: what to await on the event loop for what a
    flow yields (the awaitable itself: no coroutine of its own around it, a
    frame less on every wait of a migration)."""
    if isinstance(effect, Heard):  # (the most frequent first: a record's arrival)
        return Waiting.settled(effect.wait, effect.seconds)
    if isinstance(effect, Answer):
        return Waiting.until(effect.wait, effect.deadline, effect.what)
    if isinstance(effect, Acquired):
        return engine.acquire(effect.db, effect.key, effect.session, lock=effect.lock)
    if isinstance(effect, Chain):
        engine.node.stats["chain_waits"] += 1
        db, key, ready = effect.db, effect.key, engine.chains.ready
        return poll(lambda: ready() and db.local.try_lock_chain(key), effect.deadline)
    if isinstance(effect, Serving):
        return engine.node.wait_serving(effect.deadline)
    if isinstance(effect, Controls):
        return controls.send(engine.node, effect)
    return engine.transactions.commit(effect.tx)
