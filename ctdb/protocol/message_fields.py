"""The field types node messages and op tables are built of (no I/O).

A field type is a check (see `ctdb.protocol.schema`) named for what the
field holds: a database id, a generation, a lock owner, a bulk record
list. The message dataclasses (`messages`), the op tables (`op_schemas`)
and the client request schemas (`ctdb.server.clients`) share them, so a
database name or a payload is valid alike wherever it travels.
"""

from __future__ import annotations

from ctdb.common.config import MAX_ENTRIES, MAX_ENTRY_PAYLOAD, TUNABLES, WIRE_SIZES
from ctdb.protocol.schema_combinators import RECORDS, list_of, nullable, one_of, row, struct
from ctdb.protocol.schema_scalars import (
    ANY,
    BOOL,
    KEY,
    PNN,
    STORED_KEY,
    U32,
    U64,
    VALUE,
    bits,
    blob,
    integer,
    number,
    text,
)

DB_ID = U32
GENERATION = U64  # vs generations are (view id << 16) + recoveries: wider than CTDB's u32
RSN = U64
#: CTDB's node flags (see ctdb.server.state.NodeFlags): DISCONNECTED..BANNED, STOPPED.
FLAGS = bits(0x01 | 0x02 | 0x04 | 0x08 | 0x20)
DB_NAME = text(255, min_len=1)
DB_KIND = text(choices=("volatile", "persistent", "replicated"))
#: Records in a bulk transfer (recovery pull/push, snapshots): [[key, rsn, dmaster, value]].
WIRE_RECORDS = RECORDS
#: A lock owner: (pnn, session id on that node).
OWNER = row(PNN, U64)
#: How many requests may wait for one record (the MaxLockWaiters tunable's range).
WAITERS = integer(int(TUNABLES["MaxLockWaiters"].lo), int(TUNABLES["MaxLockWaiters"].hi))
TX_READS = list_of(row(KEY, RSN))
TX_WRITES = list_of(row(KEY, nullable(VALUE)))
NUMBER = number(-1e308, 1e308)
#: A persistent copy's chained commit digest (ctdb.storage.database.Database.history).
HISTORY = blob(64)
#: The (epoch, generation) of the recovery a volatile copy was last pushed by.
RECOVERY_BASE = row(U64, GENERATION)
#: Deletion markers to vacuum: [[key, rsn]].
VACUUMED = list_of(row(STORED_KEY, RSN))
#: A node's monotonic clock reading (see ctdb.server.lease).
STAMP = number(0, 1e308)
#: How long a node's lease lasts, in seconds: KeepaliveInterval x
#: (KeepaliveLimit - 1), whose largest values give under 3.6e6.
LEASE_SECONDS = number(0, 3.6e6, above=True)
#: What a client message carries: anything that fits in the largest frame.
CLIENT_DATA = blob(int(WIRE_SIZES["MaxFrameSize"]))
TUNABLE_VALUE = one_of(NUMBER, text(64))
#: Plain-data results forwarded to a client as they are (status, statistics...).
SHOWN = ANY
#: An entry's payload (ctdb.storage.entries).
PAYLOAD = blob(MAX_ENTRY_PAYLOAD)
#: A function run on a record where it lives (ctdb.engines.record_calls), as plain data.
RECORD_CALL = one_of(
    struct(
        {
            "fn": text(choices=("append",)),
            "condition": text(64),
            "arg": nullable(one_of(U64, text(20))),
            "owner": OWNER,
            "payload": PAYLOAD,
        }
    ),
    struct({"fn": text(choices=("remove",)), "owner": OWNER, "match": nullable(PAYLOAD)}),
    struct({"fn": text(choices=("read",))}),
)
#: What a record call answers (ctdb.engines.record_calls.run): which keys depends on the call.
RECORD_ANSWER = struct(
    {"rsn": RSN},
    {
        "appended": BOOL,
        "index": nullable(integer(0, MAX_ENTRIES)),
        "reason": text(1024),
        "entries": list_of(row(PNN, U64, PAYLOAD)),
        "removed": integer(0, MAX_ENTRIES),
    },
)
