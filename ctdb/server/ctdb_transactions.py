"""TRANS3_COMMIT: a Samba client's persistent transaction, committed by the engine.

Samba's clients (`ctdb pstore`, `ptrans`, CTDB's `transaction_loop`, smbd)
run a persistent transaction themselves: they take a lock record in the
volatile `g_lock.tdb` (in place, migrated by REQ_CALL), read the records from
the node's TDB file, and send everything they write, each with its ltdb
header, in one TRANS3_COMMIT (`../shared/reference/ctdb-wire-protocol.md`
§6). Here that becomes one transaction of the engine, as our own clients'
`trans_commit`: the leader's two-phase commit over tcp, one ordered commit
over vs, all nodes or none.

The buffer says which version of each key the client read. A record it
fetched comes first, as it read it (header and data); a record it stored
comes with the RSN it read plus one. So the first record of a key that
matches this node's copy exactly is a read of that copy, and any other
first record was written over the version one below its RSN. The
transaction reads each key at that version, and a record changed since (by
one of our clients, which take no g_lock) fails the commit instead of being
overwritten, as ctdbd refuses a record whose RSN is not newer than its
copy's. Samba's client then re-reads its sequence number record and sends
the commit again, as against ctdbd.

That sequence number record is the client's own: `__db_sequence_number__`
with a NUL, which the client bumps in every commit it sends and re-reads to
tell a commit that failed from one whose answer was lost. It is written
here like any record. pyctdb's own sequence number (the same name without
the NUL, `ctdb getdbseqnum`) moves with every commit, whoever sent it.

The client re-reads that record from this node's file as soon as a commit
fails, and the record can mislead it two ways:

* a node that just lost its quorum may hold there a commit it applied but
  the others never got: read then, it says "committed", and the group's
  next round takes the commit back (chaos, vs seed 1312: `ctdb pstore`
  acknowledged 216, every node read 215);
* the re-read is sound only if no other client committed in between, which
  its g_lock should make sure of; but a node that lost its quorum gives back
  what was lent to its Samba clients, that g_lock too, and the others go
  on: another client's commit moves the record one up as well (chaos, vs
  seed 1342: `ctdb pstore` of 156 acknowledged on node 1, which then read
  155).

So a failed commit waits for the node to serve again, up to CallTimeout:
its file is then the group's, and the first way is gone. Then, if the
record stands where the failed commit would have put it (a commit of
another client's, one of its own the file may yet lose, or one of its own
that the others did apply), nothing can tell the client whose commit that
was, and its connection is closed instead of answered (`UnknownOutcome`),
as if the daemon had died: Samba's clients take that as an error without
re-reading (`ctdb pstore` fails; smbd exits and is started again).
Otherwise the record is where the client read it, the commit's own error
is answered, and the client sends the commit again, as against ctdbd.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from typing import Any, Protocol

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol.ctdb_records import LtdbHeader, RecBuffer
from ctdb.server.node import Node
from ctdb.storage.database import HISTORY_KEY, SEQNUM_KEY, Database


class Door(Protocol):
    """The door a control came through (`ctdb_door.Door`): its node."""

    node: Node


#: Records only the engine writes.
RESERVED = frozenset({SEQNUM_KEY, HISTORY_KEY})
#: The sequence number record of Samba's clients (see the module docstring).
CLIENT_SEQNUM_KEY = SEQNUM_KEY + b"\0"


class UnknownOutcome(CtdbError):
    """A failed commit whose client would read the wrong outcome from its
    file: its session closes the connection instead of answering."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.TIMEOUT, message)


def _version_read(db: Database, key: bytes, rsn: int, value: bytes) -> int:
    """The RSN the client read `key` at, from the key's first record in the buffer."""
    ours = db.local.get(key)
    current = (ours.rsn, ours.value) if ours else (0, b"")
    if current == (rsn, value):
        return rsn  # a fetch: the record as read
    return max(rsn - 1, 0)  # a store over the version below


def trans3_commit(door: Door, buffer: RecBuffer) -> Awaitable[tuple[int, Any]]:
    async def handler() -> tuple[int, Any]:
        node = door.node
        db = node.db(buffer.db_id)
        if not db.replicated:
            raise CtdbError(
                ErrorCode.INVALID,
                f"database {db.name} is {db.kind.value}: TRANS3_COMMIT is for persistent ones",
            )
        tx = node.transactions.begin(db)
        for rec in buffer.records:
            if rec.key in RESERVED:
                raise CtdbError(ErrorCode.INVALID, f"record {rec.key!r} is the engine's own")
            header, value = LtdbHeader.split(rec.data)
            if rec.key not in tx.reads:
                tx.reads[rec.key] = _version_read(db, rec.key, header.rsn, value)
            tx.writes[rec.key] = value or None  # empty data: a deletion
        if tx.writes:
            try:
                await node.records.commit(tx)
            except CtdbError as exc:
                await _serving_again(node)
                if _reread_says_committed(db, tx.writes.get(CLIENT_SEQNUM_KEY)):
                    raise UnknownOutcome(
                        f"the commit failed ({exc}), but {db.name}'s sequence number"
                        " record stands where it would have put it"
                    ) from exc
                raise
        return 0, None

    return handler()


def _reread_says_committed(db: Database, written: bytes | None) -> bool:
    """Whether the client's sequence number record in our file now holds
    what its failed commit would have written (None: it wrote none)."""
    current = db.local.get(CLIENT_SEQNUM_KEY)
    return written is not None and current is not None and current.value == written


async def _serving_again(node: Node) -> None:
    """Wait for `node` to serve again, up to CallTimeout (see the module docstring)."""
    with contextlib.suppress(CtdbError):
        await node.wait_serving(node.now() + node.tunable("CallTimeout"))
