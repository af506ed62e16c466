"""Vacuuming: deletion markers go away once no node can undo the delete (tcp).

A deleted volatile record stays behind as a marker (a header with a higher
RSN and no data) so that recovery, which takes the newest copy of every
key, does not bring back an older value some node still holds. Without
vacuuming, a database whose keys come and go grows for ever.

As in CTDB, the key's lmaster removes a marker, when it is also the
record's dmaster: it first asks every other node to drop its copy of the
key if that copy is not newer than the marker, then drops the marker. While
it does, it stays the record's only authority (others hold nothing, so
their calls come to the lmaster; and when the lmaster holds nothing, it is
the dmaster by definition), so no write can slip in between. A marker held
by another dmaster is first handed to the lmaster, as a migration.

Samba's clients delete a record by writing a header-only value in place
and telling the daemon (SCHEDULE_FOR_DELETION: `suggest`); they may write a
marker back to life at any moment. So each marker is checked and removed,
or handed over, under its chain lock, taken without waiting: a record a
client holds waits for the next round, and a node that cannot check its
copy fails the round for the lmaster (which then keeps its markers).

Only while every configured node is in the vnnmap: a node that is away
could come back with an older copy, which a removed marker would no longer
outrank. A vacuum cut short by a recovery or a failure leaves the marker
where it was; the next round tries again. A round is a flow
(`ctdb.engines.flows`) that yields the controls it sends, answered by hand
in `tests/test_vacuum_round.py`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import controls, flows
from ctdb.engines.chains import release, try_hold
from ctdb.engines.controls import Controls
from ctdb.engines.flows import Flow
from ctdb.storage.database import Database
from ctdb.storage.ltdb import Record
from ctdb.storage.placement import lmaster

if TYPE_CHECKING:
    from ctdb.engines.host import Host

log = logging.getLogger("ctdb.engines.vacuum")

#: Keys handled per database and round: bounds the size of one vacuum control.
BATCH = 1000


class Holder(Protocol):
    """What vacuuming needs of the migration engine that holds the records."""

    node: Host

    def idle(self, db: Database, key: bytes) -> bool: ...

    def hand_over(self, db: Database, key: bytes, rec: Record, to: int) -> None: ...


class Vacuum:
    def __init__(self, engine: Holder) -> None:
        self.engine = engine
        self.node = engine.node
        #: db id -> keys whose marker this node holds as dmaster, in the order
        #: noted (a dict, not a set: a set of bytes iterates in an order that
        #: changes with each process's hash seed, and a simulated schedule
        #: must replay alike in any process)
        self.candidates: dict[int, dict[bytes, None]] = {}

    def note(self, db: Database, key: bytes, rec: Record) -> None:
        """A record this node now holds changed: remember it if it is our marker."""
        if rec.deleted and rec.dmaster == self.node.pnn and not db.replicated:
            self.candidates.setdefault(db.id, {})[key] = None

    def suggest(self, db: Database, key: bytes) -> None:
        """A client says it deleted `key` (SCHEDULE_FOR_DELETION): check it next round."""
        if not db.replicated:
            self.candidates.setdefault(db.id, {})[key] = None

    def note_all(self, db: Database, records: Mapping[bytes, Record | None]) -> None:
        for key, rec in records.items():
            if rec is not None:
                self.note(db, key, rec)

    async def run(self) -> int:
        """One round over every database (`round`); returns the markers removed."""
        return await flows.drive(self.round(), lambda effect: controls.send(self.node, effect))

    def round(self) -> Flow[Controls, int]:
        """One round over every database, as a flow: the markers removed."""
        node = self.node
        everyone = list(range(len(node.nodes)))
        removed = 0
        for dbid in list(self.candidates):
            if not node.serving or sorted(node.vnnmap) != everyone:
                return removed
            db = node.dbs.get(dbid)
            keys = self.candidates.get(dbid)
            if db is None or not keys:
                self.candidates.pop(dbid, None)
                continue
            removed += yield from self._db_round(db, keys)
        return removed

    def _marker(self, db: Database, key: bytes) -> Record | None:
        """Our idle marker of `key`, or None (then it is no longer a candidate)."""
        rec = db.local.get(key)
        if rec is None or not rec.deleted or rec.dmaster != self.node.pnn:
            return None
        return rec

    def _db_round(self, db: Database, keys: dict[bytes, None]) -> Flow[Controls, int]:
        node, engine = self.node, self.engine
        batch: list[tuple[bytes, int]] = []
        for key in list(itertools.islice(keys, BATCH)):
            if not try_hold(db, key):
                continue  # a client holds it: later
            try:
                rec = self._marker(db, key)
                if rec is None:
                    keys.pop(key, None)
                elif not engine.idle(db, key):
                    continue  # locked or wanted: later
                elif lmaster(key, node.vnnmap) != node.pnn:
                    keys.pop(key, None)  # the lmaster takes over (it notes the marker on arrival)
                    engine.hand_over(db, key, rec, lmaster(key, node.vnnmap))
                else:
                    batch.append((key, rec.rsn))
            finally:
                release(db, key)
        if not batch:
            return 0
        generation = node.generation
        others = [p for p in node.vnnmap if p != node.pnn]
        args = {"db_id": db.id, "generation": generation, "records": [list(r) for r in batch]}
        try:
            yield Controls.on_all(others, "vacuum", args)
        except (CtdbError, TimeoutError) as exc:  # a failed round only delays the vacuum
            log.info("vacuum of %s deferred: %s", db.name, exc)
            return 0
        removed = 0
        if node.in_generation(generation):
            for key, rsn in batch:
                if not try_hold(db, key):
                    continue  # a client holds it: the next round checks it again
                try:
                    rec = self._marker(db, key)
                    if rec is not None and rec.rsn == rsn and engine.idle(db, key):
                        db.local.remove(key)
                        removed += 1
                    keys.pop(key, None)
                finally:
                    release(db, key)
        node.stats["vacuumed"] += removed
        return removed

    @staticmethod
    def drop_copies(db: Database, records: list[list[object]]) -> int:
        """At every other node: drop our copy of each key unless it is newer than the marker.

        RETRY if a client held one of them: the lmaster must then keep its
        markers, since a copy we could not check might outlive them.
        """
        dropped = busy = 0
        for raw_key, raw_rsn in records:
            key, rsn = bytes(raw_key), int(raw_rsn)  # type: ignore[call-overload]
            if not try_hold(db, key):
                busy += 1
                continue
            try:
                rec = db.local.get(key)
                if rec is not None and rec.rsn <= rsn:
                    db.local.remove(key)
                    dropped += 1
            finally:
                release(db, key)
        if busy:
            raise CtdbError(ErrorCode.RETRY, f"clients held {busy} of the records to vacuum")
        return dropped
