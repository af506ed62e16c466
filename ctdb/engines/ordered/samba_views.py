"""What the rest of the cluster sees of records lent to Samba's clients over vs.

A record lent to a node's Samba clients (`samba_grants`) is written in
place in that node's file only, until it is taken back: a traverse must
ask every node for what it has lent or is giving back (the `lent`
control), and a state transfer from the lending node must carry the
stream's copy instead, so that no replica takes up a write the others may
never see.
"""

from __future__ import annotations

from collections.abc import Iterator

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.controls import Controls
from ctdb.engines.effects import AllChains
from ctdb.engines.flows import Flow
from ctdb.engines.merge import from_wire
from ctdb.engines.ordered import waits
from ctdb.engines.ordered.samba_grants import SambaGrants
from ctdb.engines.ordered.samba_returns import unnamed
from ctdb.engines.ordered.waits import Effect
from ctdb.storage.database import Database
from ctdb.storage.ltdb import Record


def traversing(
    grants: SambaGrants, db: Database, deadline: float
) -> Flow[Effect, list[tuple[bytes, Record]]]:
    """The live records of shared `db`: our copy, and what Samba's clients
    wrote in place, here and on the records lent to other nodes, which the
    stream does not carry yet."""
    node = grants.engine.node
    others = [p for p in grants.engine.members if p != node.pnn]
    parts = yield Controls.on_all(others, "lent", {"db_id": db.id})
    if not (yield AllChains(db, deadline)):
        raise CtdbError(ErrorCode.TIMEOUT, f"Samba's clients kept records of {db.name} locked")
    try:
        records = dict(db.local.items())
    finally:
        db.local.unlock_all()
    records.update(_returning(grants, db))
    for part in parts:
        records.update(from_wire(part))
    return sorted((key, rec) for key, rec in records.items() if not rec.deleted)


def lent_records(
    grants: SambaGrants, db: Database, deadline: float
) -> Flow[Effect, list[tuple[bytes, Record]]]:
    """The records of `db` lent here, as our clients left them, and the
    ones we are giving back (deleted ones too): the `lent` control."""
    found = {}
    for (dbid, key), lent in list(grants.lent.items()):
        if dbid != db.id:
            continue
        rec = yield from waits.read_record(db, key, deadline)
        # Taken back while we read: our file went back to the stream's copy,
        # and what was written is in `returning` or applied.
        if rec is not None and grants.lent.get((dbid, key)) is lent:
            found[key] = rec
    found.update(_returning(grants, db))
    return list(found.items())


def _returning(grants: SambaGrants, db: Database) -> Iterator[tuple[bytes, Record]]:
    return ((key, rec) for (dbid, key), rec in grants.returning.items() if dbid == db.id)


def published_items(grants: SambaGrants, db: Database) -> Iterator[tuple[bytes, Record]]:
    """Our copy of `db` as the stream made it, for a state transfer: a record
    whose header names us (lent here, or revoked and not yet restored) as
    it was lent, never what Samba's clients wrote in place."""
    if db.replicated:
        yield from db.local.items()  # (never lent: a persistent record names its writer)
        return
    pnn = grants.engine.node.pnn
    for key, rec in db.local.items():
        if rec.dmaster != pnn:
            yield key, rec  # the stream's copy
            continue
        lent = grants.lent.get((db.id, key)) or grants.restoring.get((db.id, key))
        if lent is None:
            yield key, unnamed(rec)  # (nothing else names us: never lend it elsewhere)
        elif lent.record is not None:
            yield key, lent.record
