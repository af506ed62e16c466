"""Bringing a volatile record here for Samba's clients: CTDB's REQ_CALL, over tcp.

Samba's clients (smbd, `ctdb readkey`/`writekey`, CTDB's test programs) lock
a record's chain in the node's own file and use the record in place when
this node is its dmaster. Otherwise they unlock, ask the daemon to migrate
it here (REQ_CALL, IMMEDIATE_MIGRATION with NULL_FUNC; a reader may ask for
FETCH_FUNC instead) and look again (reference/ctdb-wire-protocol.md §2.2,
§5.c).

`migrate_here` does what ctdbd does for them: it makes this node the dmaster
through the `acquire` our own clients' fetch_lock uses, holding the record
meanwhile so that no other node takes it, then makes sure, under the
record's chain lock, that the file holds it with dmaster == this node. A
record nobody ever wrote gets a header-only value: the engine reads that as
missing, and vacuuming removes it if no client fills it. Then it lets go:
the client finds the record its own and writes it in place, and the record
leaves again only through a hand-over, which takes the chain lock too
(`ctdb.engines.chains`).
"""

from __future__ import annotations

from collections.abc import Awaitable

from ctdb.engines.chains import release
from ctdb.engines.flows import Flow
from ctdb.engines.migration import MigrationEngine
from ctdb.engines.migration_flows import Acquired, Effect, holding
from ctdb.storage.database import Database
from ctdb.storage.ltdb import Record


def migrate_here(engine: MigrationEngine, db: Database, key: bytes) -> Awaitable[Record]:
    """Make this node the dmaster of `key` (volatile `db`) with the record in its
    file; the record as stored. TIMEOUT after CallTimeout, BUSY when too many
    requests already wait for the record."""
    return engine.run(migrating_here(engine, db, key, engine.deadline()))


def migrating_here(
    engine: MigrationEngine, db: Database, key: bytes, deadline: float
) -> Flow[Effect, Record]:
    """`migrate_here`'s course: the record locked for this request, then,
    under its chain, in the file as ours; again if a freeze came between."""
    token = object()  # this request, as the engine's lock holder
    while True:
        yield Acquired(db, key, token, True)
        try:
            yield from holding(db, key, deadline)
            try:
                rec = _installed(engine, db, key, token)
            finally:
                release(db, key)
        finally:
            engine.drop_lock(db, key, token)
        if rec is not None:
            return rec


def _installed(engine: MigrationEngine, db: Database, key: bytes, token: object) -> Record | None:
    """Under the chain lock: the record, stored as ours, or None if a freeze
    took our hold away while a client held the chain (then acquire again)."""
    if not engine.locked_by(db, key, token) or not engine.node.serving:
        return None
    rec = db.local.get(key)
    if not engine.is_dmaster(db, key, rec):
        return None
    if rec is None:  # we are its lmaster and nobody wrote it yet
        rec = engine.write(db, key, b"")
    return rec
