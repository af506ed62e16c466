"""How a client's request gets a record to itself here: the waiting half of the migration.

`MigrationEngine.acquire` makes this node the record's dmaster with no other
client of ours holding it, and optionally locks it for the asking client.
Until then the request waits: for the node to serve (a recovery), for a
Samba client's chain lock, for the record to arrive from its dmaster (one
`Call` per record at a time, re-sent after RETRY_INTERVAL, since messages of
an aborted generation are dropped), or for another client's lock. At most
MaxLockWaiters requests wait for one record (one more fails with BUSY).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import flows
from ctdb.engines.chains import release, try_hold
from ctdb.engines.effects import Chain, Serving
from ctdb.engines.flows import Flow
from ctdb.engines.migration_messages import CallOut, HandoverMessages
from ctdb.engines.waiting import Answer, Heard, Waiting
from ctdb.protocol.messages import Call
from ctdb.storage.database import Database
from ctdb.storage.ltdb import Record
from ctdb.storage.placement import lmaster

#: Re-send a call after this long without the record arriving (messages of an
#: aborted generation are dropped, so a call can vanish).
RETRY_INTERVAL = 0.5


class Need(Enum):
    """What a request waits for before it looks at the record again."""

    SERVING = "the node to serve (a recovery to end)"
    CHAIN = "a Samba client to release the record's chain lock"
    RECORD = "the record to arrive from its dmaster"


@dataclass(frozen=True)
class LockedBy:
    """Another of our clients holds the record: wait among its `waiters`."""

    waiters: dict[Hashable, None]

    def join(self, waiter: Hashable) -> None:
        self.waiters[waiter] = None

    def leave(self, waiter: Hashable) -> None:
        self.waiters.pop(waiter, None)


@dataclass(frozen=True)
class Got:
    """This node is the record's dmaster and the request has it (locked if asked)."""

    record: Record | None


#: What one step of a request comes to (`Acquisition._step`).
Step = Need | LockedBy | Got

#: What a request waits for between steps (`Acquisition.acquiring`, a flow).
Effect = Serving | Chain | Heard | Answer


class Acquisition(HandoverMessages):
    """The engine's waiting for records (its state is the engine's)."""

    _acquiring: dict[tuple[int, bytes], int]
    _voided: dict[tuple[int, bytes], object]
    #: the futures and deadlines of our clients' waiting requests (`answers`, seen from here)
    waiting: Waiting
    #: the engine's driver of flows (migration_flows.carry_out)
    _carry_out: Callable[[Any], Awaitable[Any]]

    def acquire(
        self, db: Database, key: bytes, session: object, *, lock: bool
    ) -> Awaitable[Record | None]:
        """Make this node dmaster of `key` with no other client holding it
        (`acquiring`): the current record; with `lock` the record stays
        locked for `session` until `release`."""
        return flows.drive(self.acquiring(db, key, session, lock=lock), self._carry_out)

    def acquiring(
        self, db: Database, key: bytes, session: object, *, lock: bool
    ) -> Flow[Effect, Record | None]:
        """Take steps (`_step`) until one gets the record, waiting for what each needs."""
        node = self.node
        ref = (db.id, key)
        acquiring = self._acquiring.get(ref, 0)
        limit = int(node.tunable("MaxLockWaiters"))
        if acquiring >= limit:
            raise CtdbError(
                ErrorCode.BUSY, f"record {key!r} is busy: {limit} requests already wait for it"
            )
        self._acquiring[ref] = acquiring + 1
        try:
            deadline = node.now() + node.tunable("CallTimeout")
            chain_held = False
            while True:
                step = self._step(db, key, session, lock, chain_held)
                chain_held = False
                if isinstance(step, Got):
                    return step.record
                if step is Need.SERVING:
                    yield Serving(deadline)
                elif step is Need.CHAIN:
                    if not (yield Chain(db, key, deadline)):
                        raise CtdbError(
                            ErrorCode.TIMEOUT, f"a client held the record {key!r} too long"
                        )
                    chain_held = True  # the next step starts under it, with nothing between
                elif step is Need.RECORD:
                    yield from self._fetching_remote(db, key, deadline)
                else:
                    yield from self.waiting.registered(
                        step.join,
                        step.leave,
                        deadline,
                        f"record {key!r} stayed locked by another client",
                    )
        finally:
            if self._acquiring[ref] > 1:
                self._acquiring[ref] -= 1
            else:
                del self._acquiring[ref]
                ks = self._keys.get(ref)
                if ks is not None and ks.reserved:
                    # Nobody here waits for it any more, once this step is done.
                    self.node.call_soon(self._unreserve, db, key)

    def _unreserve(self, db: Database, key: bytes) -> None:
        """The record is no longer kept for our clients: serve the calls that queued."""
        ks = self._keys.get((db.id, key))
        if ks is not None and ks.reserved:
            ks.reserved = False
            self._wake_later(db, key, ks)  # may hand the record over: a write

    def _step(
        self, db: Database, key: bytes, session: object, lock: bool, chain_held: bool
    ) -> Step:
        """One look at the record, and what the request does next: nothing
        here waits. `chain_held`: the last step waited for the chain and the
        gate took it for us. The chain is released before this returns,
        unless a lock granted here keeps it (`KeyState.chain`)."""
        if not self.node.serving:
            if chain_held:
                release(db, key)  # a freeze came while we waited for the chain
            return Need.SERVING
        if not chain_held and not try_hold(db, key):
            return Need.CHAIN  # a Samba client holds the record's chain
        keep = False
        try:
            rec = db.local.get(key)
            if not self.is_dmaster(db, key, rec):
                return Need.RECORD
            ks = self._keys.get((db.id, key))
            if ks is not None and ks.holder is not None and ks.holder is not session:
                return LockedBy(ks.waiters)
            if lock:
                keep = self._grant(db, key, session)
            if ks is not None and ks.reserved:
                # Ours now. The calls that queued go on when the lock is
                # released, or else after the rest of this request's step
                # (a store writes in it).
                if lock:
                    ks.reserved = False
                else:
                    self.node.call_soon(self._unreserve, db, key)
            return Got(rec)
        finally:
            if not keep:
                release(db, key)

    def _grant(self, db: Database, key: bytes, session: object) -> bool:
        """Lock the record for `session`; whether the lock keeps the chain it
        was granted under (a file Samba's clients share: they must not write
        the record in place while one of our clients holds it)."""
        ks = self._state(db, key)
        keep = db.shared and not ks.chain
        ks.holder = session
        ks.chain = ks.chain or keep
        if self._voided.get((db.id, key)) is session:
            del self._voided[(db.id, key)]
        return keep

    def _fetching_remote(self, db: Database, key: bytes, deadline: float) -> Flow[Effect, None]:
        """Ask for the record (one call per key at a time) and wait for it."""
        node = self.node
        ref = (db.id, key)
        out = self._calls_out.get(ref)
        if out is None or out.given_up:
            out = self._calls_out[ref] = CallOut()
            node.stats["calls_sent"] += 1
            node.send(lmaster(key, node.vnnmap), Call(db.id, key, node.generation, node.pnn, 0))
        remaining = deadline - node.now()
        if remaining <= 0:
            raise CtdbError(ErrorCode.TIMEOUT, f"record {key!r} did not arrive in time")
        waiter = object()
        wait = self.waiting.expect(waiter)
        out.waiters[waiter] = None
        try:
            if not (yield Heard(wait, min(remaining, RETRY_INTERVAL))):
                # Unanswered by then, the call is given up: the next step
                # sends a fresh one.
                self._give_up(out)
        finally:
            self.waiting.forget(waiter, wait)
            out.waiters.pop(waiter, None)

    def _give_up(self, out: CallOut) -> None:
        out.given_up = True
        out.end(self.waiting)
