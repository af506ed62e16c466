"""Record calls on a replicated database over tcp: one-key transactions.

Every node holds every record of a persistent (or replicated) database, and
a write to it is a transaction the leader commits on every node with a
two-phase commit (`ctdb.engines.transactions`). A conditional append there
is such a transaction. The node runs the call on its own copy, once no
commit that wrote the key may still be taken back here (no dirty read:
`MigrationEngine.settle`), and if the list changes it commits the new value
with the RSN it read as the read set. The client is answered only once
every node has made the commit, so the entry survives any node's failure:
unlike a volatile list, this one does not die with its dmaster.

A commit that lost a race (BUSY: the record changed since it was read)
never ran anywhere, so the call runs again on the newer value. Any other
failure goes to the client as a transaction's would: its outcome may be
unknown, and the call is idempotent for a retry. The call's course is a
flow (`calling`, see `ctdb.engines.flows`), answered by hand in
`tests/test_persistent_call_flow.py`.

Owners that are gone are purged by every member at the end of a recovery
(`purge`, from `set_vnnmap`). All members hold one copy of each replicated
database then (the recovery pushed it to whoever differed), so the same
purge gives the same copy, with the same sequence number and history,
everywhere; a member that misses it is given the purged copy by the next
recovery, whose epoch it lacks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import flows, record_calls
from ctdb.engines.flows import Flow
from ctdb.engines.record_calls import RecordCall
from ctdb.engines.transactions import Transaction, TransactionEngine, local_puts, next_version
from ctdb.storage.database import Database

if TYPE_CHECKING:
    from ctdb.engines.host import Host


class Committer(Protocol):
    """What a persistent record call needs of the tcp engine."""

    node: Host
    transactions: TransactionEngine

    def settle(self, db: Database, key: bytes, deadline: float) -> Awaitable[None]: ...


@dataclass(slots=True)
class Settled:
    """Go on once no commit that wrote `key` may still be taken back here."""

    db: Database
    key: bytes
    deadline: float


@dataclass(slots=True)
class Committed:
    """`tx` committed on every node (its outcome: the new sequence number)."""

    tx: Transaction


Effect = Settled | Committed


async def call(engine: Committer, db: Database, key: bytes, request: RecordCall) -> dict[str, Any]:
    """Run `request` on the record as a one-key transaction; its answer."""
    record_calls.check(request)
    deadline = engine.node.now() + engine.node.tunable("CallTimeout")

    async def carry_out(effect: Effect) -> Any:
        if isinstance(effect, Settled):
            return await engine.settle(effect.db, effect.key, effect.deadline)
        return await engine.transactions.commit(effect.tx)

    return await flows.drive(calling(engine, db, key, request, deadline), carry_out)


def calling(
    engine: Committer, db: Database, key: bytes, request: RecordCall, deadline: float
) -> Flow[Effect, dict[str, Any]]:
    """`call`'s course: run the call on our settled copy, commit what it
    changes, run it again if another commit changed the record first."""
    node = engine.node
    while True:
        yield Settled(db, key, deadline)
        before = db.local.get(key)
        outcome = record_calls.run(request, before)
        if outcome.value is None:
            return outcome.answer
        tx = engine.transactions.begin(db)
        tx.reads[key] = before.rsn if before is not None else 0
        tx.writes[key] = outcome.value
        try:
            yield Committed(tx)
        except CtdbError as exc:
            if exc.code != ErrorCode.BUSY or node.now() >= deadline:
                raise
            continue  # another commit changed the record first: run the call again
        head = record_calls.new_head(before, outcome.value)
        if head is not None:
            node.entry_head(head, db.id, key)
        return outcome.with_rsn(tx.reads[key] + 1)


def purge(node: Host, owners: Mapping[int, int], writer: int) -> int:
    """Remove the entries of departed owners from every replicated database, one
    transaction per database, stamped as `writer`'s (the recovery leader, the
    same on every member); returns how many records changed.

    Our clients whose entry now comes first are told. A record without its
    CTDB header (a foreign writer's) holds no entries and is passed over
    rather than failing every recovery: an IO error to its readers, as
    before. Where the others' copy of that key lost entries, this copy's
    history now differs from theirs, and the next recovery replaces it
    (`merge.same_copy`).
    """
    changed = 0
    for db in list(node.dbs.values()):
        if not db.replicated:
            continue
        sound, _headerless = db.local.sound_items()
        lists = record_calls.purged(sound, record_calls.departed(owners))
        if not lists:
            continue
        _, records = next_version(db, [], [[k, value] for k, (_, value) in lists.items()], writer)
        db.local.write_batch(local_puts(records, node.pnn))
        changed += len(lists)
        for key, (before, value) in lists.items():
            head = record_calls.new_head(before, value)
            if head is not None and head[0] == node.pnn:
                node.entry_head(head, db.id, key)
    return changed
