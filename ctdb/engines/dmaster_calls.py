"""Record calls over a point-to-point transport: run at the dmaster, answer the caller (tcp).

A conditional append (and its kin, `ctdb.engines.record_calls`) must not
migrate the record: contended entry lists are the whole point, and a record
that moves to every caller is a lock that moves. So the caller sends a
`RemoteCall` along the path a migration `Call` takes (the lmaster, which
knows the dmaster, then the dmaster; a node that turns out not to be the
dmaster bounces it back to the lmaster), the dmaster runs the function on
its copy, writes the result as the dmaster writes any update, and sends a
`RemoteCallReply` straight back: one request, one reply.

A call whose reply does not come within RETRY_INTERVAL is sent again with
the same request id. Within one generation that is safe: calls are
idempotent (see record_calls), and nothing but a call changes an entry list
between two of them. Across a recovery it is not: the call may have run
before it, and the recovery may have purged what it did (its node was cut
off for a while), so running it again would make one request take effect
twice. A call that changes the list and is still unanswered when the
generation changes therefore fails with TIMEOUT (outcome unknown, as a vs
request that times out); a read is simply sent again. The
dmaster runs a call only while it serves its current generation, as every
write (migration's module docstring); a call for a record a client holds
with `fetch_lock` fails with BUSY rather than wait behind a lock of unknown
length.

When owners disappear their entries go (`purge`): a recovery tells every
member which nodes are in the new generation and which run of each
(`incarnation`); each member removes, from the records it is dmaster of,
the entries of nodes that left or restarted. Client ids carry the run of
the node that issued them in their high 32 bits (`ctdb.server.owners`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import record_calls
from ctdb.engines.chains import ChainGate
from ctdb.engines.effects import Serving
from ctdb.engines.flows import Flow
from ctdb.engines.record_calls import RecordCall
from ctdb.engines.waiting import Heard, Waiting
from ctdb.protocol.messages import RemoteCall, RemoteCallReply
from ctdb.storage.database import Database
from ctdb.storage.ltdb import Record
from ctdb.storage.placement import lmaster

if TYPE_CHECKING:
    from ctdb.engines.host import Host

log = logging.getLogger("ctdb.engines.dmaster_calls")

#: Re-send a call after this long without a reply.
RETRY_INTERVAL = 0.5

T = TypeVar("T")


class Dmaster(Protocol):
    """What record calls need of the migration engine that holds the records."""

    node: Host
    #: a call from another node runs under the record's chain lock, as a hand-over
    chains: ChainGate
    #: the engine's waiting requests: our calls wait for their reply here
    waiting: Waiting

    def is_dmaster(self, db: Database, key: bytes, rec: Record | None) -> bool: ...

    def locked(self, db: Database, key: bytes) -> bool: ...

    def write(self, db: Database, key: bytes, value: bytes) -> Record: ...

    def forward(self, call: RemoteCall, rec: Record | None) -> None: ...

    def run(self, flow: Flow[Any, T]) -> Awaitable[T]:
        """Carry out a flow on the event loop."""


class DmasterCalls:
    def __init__(self, engine: Dmaster) -> None:
        self.engine = engine
        self.node = engine.node
        self._reqids = itertools.count(1)
        #: the owners the last purge kept (pnn -> incarnation); None before the first
        self._owners: dict[int, int] | None = None

    def call(self, db: Database, key: bytes, call: RecordCall) -> Any:
        """The call's answer, at once when we are the record's dmaster."""
        record_calls.check(call)
        if self.node.serving and self.engine.is_dmaster(db, key, db.local.get(key)):
            return self._run(db, key, call)
        return self.engine.run(self.calling_remote(db, key, call))

    def _run(self, db: Database, key: bytes, call: RecordCall) -> dict[str, Any]:
        if self.engine.locked(db, key):
            raise CtdbError(ErrorCode.BUSY, f"record {key!r} is locked with fetch_lock")
        before = db.local.get(key)
        outcome = record_calls.run(call, before)
        if outcome.value is None:
            return outcome.answer
        return outcome.with_rsn(self._write(db, key, before, outcome.value).rsn)

    def _write(self, db: Database, key: bytes, before: Record | None, value: bytes) -> Record:
        """Write a changed entry list; a new first entry's owner is told."""
        rec = self.engine.write(db, key, value)
        head = record_calls.new_head(before, value)
        if head is not None:
            self.node.entry_head(head, db.id, key)
        return rec

    def calling_remote(
        self, db: Database, key: bytes, call: RecordCall
    ) -> Flow[Serving | Heard, dict[str, Any]]:
        """Steps of a `RemoteCallOut` until one runs the call here or a reply comes."""
        node = self.node
        deadline = node.now() + node.tunable("CallTimeout")
        out = RemoteCallOut(self, db, key, call, next(self._reqids))
        # Keys of this engine's waiters: ("call", reqid) cannot be a record's waiter.
        wait = self.engine.waiting.expect(out.waiter)
        try:
            while True:
                if not node.serving:
                    yield Serving(deadline)
                answer = out.step()
                if answer is not None:
                    return answer  # the record came to us meanwhile
                remaining = deadline - node.now()
                if remaining <= 0:
                    raise CtdbError(ErrorCode.TIMEOUT, f"no answer to a call on {key!r} in time")
                # (`wait` stays, waiting for a reply to any of the sends)
                if (yield Heard(wait, min(remaining, RETRY_INTERVAL))):
                    reply: dict[str, Any] = wait.outcome()
                    return reply
        finally:
            self.engine.waiting.forget(out.waiter, wait)

    # -- messages from other nodes ---------------------------------------------------

    def on_call(self, msg: RemoteCall) -> None:
        db = self.node.dbs.get(msg.db_id)
        if db is not None and self.node.in_generation(msg.generation):
            self.engine.chains.run(db, msg.key, lambda: self._serve(db, msg))

    def _serve(self, db: Database, msg: RemoteCall) -> None:
        node = self.node
        if not node.in_generation(msg.generation):
            return  # it waited for a client's chain lock across a recovery
        rec = db.local.get(msg.key)
        if self.engine.is_dmaster(db, msg.key, rec):
            if not node.serving:
                return  # our lease is being renewed: the caller sends it again
            answer, code, message = None, 0, ""
            try:
                answer = self._run(db, msg.key, record_calls.from_wire(msg.call))
            except CtdbError as exc:
                code, message = int(exc.code), exc.message[:1024]
            node.send(msg.origin, RemoteCallReply(msg.reqid, msg.generation, code, message, answer))
            return
        self.engine.forward(msg, rec)

    def on_reply(self, msg: RemoteCallReply) -> None:
        """The answer to one of our calls (from any generation: it ran where the record was)."""
        waiter = ("call", msg.reqid)
        if msg.code:
            self.engine.waiting.fail(waiter, CtdbError(msg.code, msg.message))
        else:
            self.engine.waiting.answer(waiter, msg.answer)

    # -- owners that are gone ------------------------------------------------------------

    def purge(self, owners: Mapping[int, int], pushed: Mapping[int, Iterable[bytes]]) -> int:
        """Remove the entries of owners not in `owners` (pnn -> incarnation) from the
        records we are dmaster of; returns how many records changed.

        Called by recovery on every member with the same `owners`, while
        frozen, with the volatile keys (by database id) this recovery pushed
        to us. When nobody left or restarted since the last purge that was
        done, only those records are looked at: the others were purged then,
        and only live owners' clients have added entries since; a pushed
        record may come from a node that missed that purge (one that was
        hung while the others restarted kept the entries of their earlier
        runs: tcp campaign seed 174). A purge that failed half-way (a write
        refused) is done again, whole, at the recovery's next attempt.
        """
        previous = self._owners
        unchanged = previous is not None and all(
            owners.get(p) == inc for p, inc in previous.items()
        )
        changed = 0
        for db in list(self.node.dbs.values()):
            if db.replicated:
                continue  # persistent_calls.purge
            keys = pushed.get(db.id, ()) if unchanged else None  # None: every record
            records, _headerless = db.local.sound_items(keys)  # (which hold no entries)
            ours = ((k, r) for k, r in records if r.dmaster == self.node.pnn)
            lists = record_calls.purged(ours, record_calls.departed(owners))
            for key, (before, value) in lists.items():
                self._write(db, key, before, value)
            changed += len(lists)
        self._owners = dict(owners)
        if changed:
            log.info("removed the entries of departed owners from %d records", changed)
        return changed


class RemoteCallOut:
    """One of our clients' calls on a record elsewhere, from send to answer.

    Nothing here waits: each `step` (once the node serves: on the first
    try and after each RETRY_INTERVAL without a reply) runs the call here if
    the record came to us, sends it (again, with the same request id), or
    fails it if a recovery cut it short; the reply answers `waiter` in the
    engine's `Waiting` (`DmasterCalls.on_reply`).
    """

    def __init__(
        self, calls: DmasterCalls, db: Database, key: bytes, call: RecordCall, reqid: int
    ) -> None:
        self._calls = calls
        self.db, self.key, self.call = db, key, call
        self.waiter = ("call", reqid)
        self._wire = record_calls.to_wire(call)
        self._changes = record_calls.changes(call)
        #: the generation we last sent it in
        self.sent_in: int | None = None

    def step(self) -> dict[str, Any] | None:
        """The answer if the call ran here; None once it is sent (wait for the reply)."""
        calls, node = self._calls, self._calls.node
        db, key = self.db, self.key
        if self._changes and self.sent_in is not None and node.generation != self.sent_in:
            # It may have run before the recovery, and what it did may since
            # have changed (a purge): running it again would make one request
            # take effect twice.
            raise CtdbError(
                ErrorCode.TIMEOUT, f"a recovery cut a call on {key!r} short: its outcome is unknown"
            )
        if calls.engine.is_dmaster(db, key, db.local.get(key)):
            return calls._run(db, key, self.call)
        self.sent_in = node.generation
        node.stats["record_calls_sent"] += 1
        msg = RemoteCall(db.id, key, node.generation, node.pnn, self.waiter[1], 0, self._wire)
        node.send(lmaster(key, node.vnnmap), msg)
        return None
