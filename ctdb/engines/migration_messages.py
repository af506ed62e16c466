"""What the dmaster migration does on this node for other nodes' messages (tcp).

The half of `ctdb.engines.migration.MigrationEngine` that answers the node
messages of a hand-over (the decisions themselves, pure, are in
`ctdb.engines.handover`): a `Call` served (the record given away) or sent
on towards the dmaster, the lmaster noting the new dmaster
(`DmasterRequest`), the record arriving (`DmasterReply`), and the calls that
queued while a client held the record, served when it is free (`_wake`).

Each of them reads, decides and writes a record that Samba's clients may be
writing in place, so each runs under the record's chain lock, requeued in
order while a client holds it (`ctdb.engines.chains`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ctdb.engines import handover
from ctdb.engines.answers import Answers
from ctdb.engines.chains import ChainGate
from ctdb.engines.vacuum import Vacuum
from ctdb.protocol.messages import Call, DmasterReply, DmasterRequest, RemoteCall
from ctdb.storage.database import Database
from ctdb.storage.ltdb import Record, next_rsn

if TYPE_CHECKING:
    from ctdb.engines.host import Cancellable, Host

log = logging.getLogger("ctdb.engines.migration")


@dataclass
class KeyState:
    """Local bookkeeping for one record: its lock holder and who waits for it."""

    holder: object | None = None
    #: our clients' requests waiting for the holder to let go (answered None)
    waiters: dict[Hashable, None] = field(default_factory=dict)
    remote: deque[Call] = field(default_factory=deque)
    #: The record arrived for our clients, and none of them has had it yet:
    #: calls from other nodes queue until one has (`Acquisition.acquire`).
    #: Handed on at once, it would leave before the client that fetched it
    #: ran, which would fetch it again: a migration storm (7.6 calls per
    #: acquisition with three contending nodes).
    reserved: bool = False
    #: The holder's lock holds the record's chain too (a file Samba's clients
    #: share): they wait for our client instead of writing the record in place.
    chain: bool = False
    #: The record migrated here for our clients less than StickyPindown ago:
    #: calls from other nodes queue until this timer ends the pin (CTDB's
    #: sticky records), so a node's clients take a contended record several
    #: times per visit instead of once.
    pinned: Cancellable | None = None

    @property
    def idle(self) -> bool:
        return (
            self.holder is None
            and not self.waiters
            and not self.remote
            and not self.reserved
            and self.pinned is None
        )

    @property
    def keeps(self) -> bool:
        """Calls from other nodes wait: the record is locked, reserved or pinned here."""
        return self.holder is not None or self.reserved or self.pinned is not None


@dataclass
class CallOut:
    """A `Call` we sent for a record, until the record arrives."""

    #: our clients' requests waiting for the record (answered None when it
    #: arrives, or when the call is given up)
    waiters: dict[Hashable, None] = field(default_factory=dict)
    #: unanswered for too long (a call of an aborted generation is dropped):
    #: the next request sends another
    given_up: bool = False

    def end(self, answers: Answers) -> None:
        """Its waiters look again (the record is here, or the call is given up)."""
        waiters, self.waiters = self.waiters, {}
        for waiter in waiters:
            answers.answer(waiter, None)


class HandoverMessages:
    """The message half of the migration engine (its state is the engine's)."""

    node: Host
    chains: ChainGate
    vacuum: Vacuum
    #: where our clients' waiting requests are answered
    answers: Answers
    _keys: dict[tuple[int, bytes], KeyState]
    _calls_out: dict[tuple[int, bytes], CallOut]
    _acquiring: dict[tuple[int, bytes], int]

    def is_dmaster(self, db: Database, key: bytes, rec: Record | None) -> bool:
        return handover.is_dmaster(self.node.pnn, key, rec, self.node.vnnmap)

    def next_rsn(self, old: Record | None) -> int:
        """The RSN of the next version: above the old one and stamped with the epoch."""
        return next_rsn(old.rsn if old else 0, self.node.epochs.epoch)

    def hand_over(self, db: Database, key: bytes, rec: Record, to: int) -> None:
        """Migrate a record we are dmaster of to `to`, unasked (vacuuming)."""
        self._give_away(db, key, rec, to)

    def on_call(self, call: Call) -> None:
        db = self.node.dbs.get(call.db_id)
        if db is not None and self.node.in_generation(call.generation):
            self.chains.run(db, call.key, lambda: self._serve_call(db, call))

    def _serve_call(self, db: Database, call: Call) -> None:
        if not self.node.in_generation(call.generation):
            return  # it waited for a chain across a recovery
        key = call.key
        rec = db.local.get(key)
        if self.is_dmaster(db, key, rec):
            ks = self._keys.get((db.id, key))
            if ks is not None and ks.keeps:
                # One hand-over answers all of a node's calls: a re-sent one
                # (RETRY_INTERVAL) must not queue again.
                if all(queued.origin != call.origin for queued in ks.remote):
                    ks.remote.append(call)
                return
            self._give_away(db, key, rec, call.origin)
            return
        self.forward(call, rec)

    def forward(self, call: Call | RemoteCall, rec: Record | None) -> None:
        """A call reached a node that is not the record's dmaster: on towards it."""
        node = self.node
        if call.hops > handover.max_hops(len(node.nodes)):
            name = type(call).__name__
            log.warning("dropping %s for %r after %d hops", name, call.key, call.hops)
            return
        call.hops += 1
        node.send(handover.next_hop(node.pnn, call.key, rec, node.vnnmap), call)

    def _give_away(self, db: Database, key: bytes, rec: Record | None, to: int) -> None:
        node = self.node
        if to == node.pnn:
            return
        rsn = self.next_rsn(rec)
        kept, dest, msg = handover.give_away(
            node.pnn, db.id, key, rec, to, rsn, node.vnnmap, node.generation
        )
        db.local.put(key, kept)
        node.send(dest, msg)

    def on_dmaster_request(self, msg: DmasterRequest) -> None:
        """At the lmaster: note the new dmaster, then hand the record over."""
        db = self.node.dbs.get(msg.db_id)
        if db is not None and self.node.in_generation(msg.generation):
            self.chains.run(db, msg.key, lambda: self._note_dmaster(db, msg))

    def _note_dmaster(self, db: Database, msg: DmasterRequest) -> None:
        node = self.node
        if not node.in_generation(msg.generation):
            return
        rec, reply = handover.at_lmaster(node.pnn, msg)
        db.local.put(msg.key, rec)
        if reply is None:
            self.vacuum.note(db, msg.key, rec)
            self._arrived(db, msg.key)
        else:
            node.send(msg.new_dmaster, reply)

    def on_dmaster_reply(self, msg: DmasterReply) -> None:
        db = self.node.dbs.get(msg.db_id)
        if db is not None and self.node.in_generation(msg.generation):
            self.chains.run(db, msg.key, lambda: self._take_record(db, msg))

    def _take_record(self, db: Database, msg: DmasterReply) -> None:
        node = self.node
        if not node.in_generation(msg.generation):
            return
        if handover.takes_reply(db.local.get(msg.key), msg.rsn):
            rec = Record(msg.rsn, node.pnn, msg.value)
            db.local.put(msg.key, rec)
            self.vacuum.note(db, msg.key, rec)
        self._arrived(db, msg.key)

    def _serve_remote(self, db: Database, key: bytes) -> None:
        """Hand the record to the first node that asked while it was locked here."""
        ks = self._keys.get((db.id, key))
        if ks is None or ks.keeps or not ks.remote:
            return  # a recovery cleared the calls, or a local client took it first
        call = ks.remote.popleft()
        rec = db.local.get(key)
        if self.is_dmaster(db, key, rec):
            self._give_away(db, key, rec, call.origin)
        # Calls queued behind it now find us no longer dmaster: re-route them.
        pending = list(ks.remote)
        ks.remote.clear()
        for other in pending:
            self.on_call(other)
        if ks.idle:
            self._keys.pop((db.id, key), None)

    def _arrived(self, db: Database, key: bytes) -> None:
        out = self._calls_out.pop((db.id, key), None)
        if out is not None:
            out.end(self.answers)
        acquiring = self._acquiring.get((db.id, key))
        if acquiring:
            self._state(db, key).reserved = True  # for the clients that wait for it
        pindown = self.node.tunable("StickyPindown") / 1000  # milliseconds, as CTDB's
        if pindown > 0 and (out is not None or acquiring):
            pinned = self._state(db, key)
            if pinned.pinned is not None:
                pinned.pinned.cancel()
            pinned.pinned = self.node.call_later(pindown, self._unpin, db, key)
        ks = self._keys.get((db.id, key))
        if ks is not None:
            self._wake(db, key, ks)

    def _unpin(self, db: Database, key: bytes) -> None:
        """The record's pin ends: the calls that queued meanwhile go on."""
        ks = self._keys.get((db.id, key))
        if ks is None:
            return
        ks.pinned = None
        self._wake_later(db, key, ks)

    def _state(self, db: Database, key: bytes) -> KeyState:
        ks = self._keys.get((db.id, key))
        if ks is None:
            ks = self._keys[(db.id, key)] = KeyState()
        return ks

    def _wake_later(self, db: Database, key: bytes, ks: KeyState) -> None:
        """`_wake` from a timer or a later turn of the loop, where no handler
        catches: a hand-over that fails to write is a local failure."""
        try:
            self._wake(db, key, ks)
        except Exception:
            log.exception("handing on %r failed", key)
            self.node.local_failure()

    def _wake(self, db: Database, key: bytes, ks: KeyState) -> None:
        """The record became free: remote callers first, then local waiters re-check."""
        if ks.holder is None and ks.remote:
            self.chains.run(db, key, lambda: self._serve_remote(db, key))
        waiters, ks.waiters = ks.waiters, {}
        for waiter in waiters:
            self.answers.answer(waiter, None)
        if ks.idle:
            self._keys.pop((db.id, key), None)
