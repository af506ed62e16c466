"""What every node-to-node operation takes and answers: one table row per op (no I/O).

A `Control` names the op a node is asked to run (`Node.ctl_<op>`) and an
`Ordered` message the operation every member applies
(`OrderedEngine._apply_<op>`); what the arguments, and a control's result,
must hold depends on that op. These tables say it, so `message_codec`
checks every op before a handler runs and the fuzzers generate them from
the very same rows. A new op is one row in a table.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctdb.protocol import schema
from ctdb.protocol.message_fields import (
    CLIENT_DATA,
    DB_ID,
    DB_KIND,
    DB_NAME,
    FLAGS,
    GENERATION,
    HISTORY,
    NUMBER,
    OWNER,
    RECORD_CALL,
    RECOVERY_BASE,
    SHOWN,
    TUNABLE_VALUE,
    TX_READS,
    TX_WRITES,
    VACUUMED,
    WAITERS,
    WIRE_RECORDS,
)
from ctdb.protocol.schema import Check
from ctdb.protocol.schema_combinators import EMPTY, list_of, map_of, nullable, row, struct
from ctdb.protocol.schema_scalars import (
    BOOL,
    KEY,
    NONE,
    PNN,
    STORED_KEY,
    U32,
    U64,
    VALUE,
    integer,
    number,
    text,
)


@dataclass(frozen=True)
class ControlSpec:
    """What a control takes and what its reply carries."""

    args: Check
    result: Check


#: Every control a node answers (`Node.ctl_<op>`), one row each.
CONTROLS: dict[str, ControlSpec] = {
    # recovery, driven by the leader (ctdb.engines.recovery)
    "freeze": ControlSpec(
        struct({"generation": GENERATION}),
        struct(
            {
                "epoch": U64,
                # which run of the daemon this is (ctdb.storage.durable.Epochs)
                "incarnation": U64,
                # the epoch of the last generation this run served (a restarted
                # run: its durable epoch, that of the last recovery it took part in)
                "served": U64,
                # the epoch of the last generation this node served, durable
                # across restarts (what its persistent copies can hold)
                "thawed": U64,
                "generation": GENERATION,
                "view": list_of(PNN),
                # [peer, seconds]: how long a lease of that peer may still
                # rest on our confirmations (ctdb.server.lease)
                "leases": list_of(row(PNN, number(0, schema.U32_MAX))),
                "dbs": map_of(
                    DB_NAME,
                    struct(
                        {
                            "kind": DB_KIND,
                            "seqnum": U64,
                            "history": HISTORY,
                            "base": nullable(RECOVERY_BASE),
                        }
                    ),
                ),
            }
        ),
    ),
    "pull": ControlSpec(
        struct({"db_id": DB_ID, "generation": GENERATION}, {"keys": list_of(STORED_KEY)}),
        WIRE_RECORDS,
    ),
    # the keys written or removed since the copy the last recovery distributed
    "changed": ControlSpec(struct({"db_id": DB_ID, "generation": GENERATION}), list_of(STORED_KEY)),
    "push": ControlSpec(
        struct(
            {
                "db_id": DB_ID,
                "generation": GENERATION,
                "records": WIRE_RECORDS,
                "replace_all": BOOL,
                "base": RECOVERY_BASE,
            }
        ),
        NONE,
    ),
    "vacuum": ControlSpec(
        struct({"db_id": DB_ID, "generation": GENERATION, "records": VACUUMED}), U64
    ),
    "set_vnnmap": ControlSpec(
        struct(
            {
                "generation": GENERATION,
                "vnnmap": list_of(PNN, min_len=1),
                "leader": PNN,
                "epoch": U64,
                # the newest generation a member served: a member that served
                # an older one since it last served was left out of this one
                "served": U64,
                # the runs of the members: entries of any other are purged
                "incarnations": list_of(row(PNN, U64)),
            }
        ),
        NONE,
    ),
    "thaw": ControlSpec(struct({"generation": GENERATION}), NONE),
    # persistent transactions (ctdb.engines.transactions)
    "tx_commit": ControlSpec(struct({"db_id": DB_ID, "reads": TX_READS, "writes": TX_WRITES}), U64),
    "tx_prepare": ControlSpec(
        struct(
            {"db_id": DB_ID, "records": WIRE_RECORDS, "commit_id": U64, "generation": GENERATION}
        ),
        NONE,
    ),
    "tx_finish": ControlSpec(struct({"db_id": DB_ID, "commit_id": U64, "commit": BOOL}), NONE),
    # every node made the commit: readers may see what it wrote
    "tx_settled": ControlSpec(
        struct({"db_id": DB_ID, "commit_id": U64, "generation": GENERATION}), NONE
    ),
    # databases
    "attach": ControlSpec(struct({"name": DB_NAME, "kind": DB_KIND}), DB_ID),
    "getdbmap": ControlSpec(
        EMPTY,
        list_of(struct({"id": DB_ID, "name": DB_NAME, "kind": DB_KIND, "path": text(4096)})),
    ),
    "getdbseqnum": ControlSpec(struct({"db_id": DB_ID}), U64),
    "traverse": ControlSpec(struct({"db_id": DB_ID}), WIRE_RECORDS),
    # vs: the records of a database lent to the node's Samba clients, as they left them
    "lent": ControlSpec(struct({"db_id": DB_ID}), WIRE_RECORDS),
    "wipe": ControlSpec(struct({"db_id": DB_ID, "generation": GENERATION}), NONE),
    # queries and administration (a tool's `-n PNN`)
    "ping": ControlSpec(EMPTY, PNN),
    "pnn": ControlSpec(EMPTY, PNN),
    "uptime": ControlSpec(EMPTY, SHOWN),
    "status": ControlSpec(EMPTY, SHOWN),
    "statistics": ControlSpec(EMPTY, SHOWN),
    "listvars": ControlSpec(EMPTY, SHOWN),
    "getvar": ControlSpec(struct({"name": text(64)}), NUMBER),
    "setvar": ControlSpec(struct({"name": text(64), "value": TUNABLE_VALUE}), NONE),
    "recover": ControlSpec(EMPTY, NONE),
    "setflags": ControlSpec(struct({}, {"set": FLAGS, "clear": FLAGS}), FLAGS),
    # seconds 0 lifts a ban
    "ban": ControlSpec(struct({"seconds": number(0, schema.U32_MAX)}), NONE),
    # the leader's ban of a member whose storage keeps failing recoveries
    "ban_failing": ControlSpec(
        struct({"seconds": number(0, schema.U32_MAX), "failures": integer(1, 1000)}), BOOL
    ),
    "reloadnodes": ControlSpec(EMPTY, list_of(text(255))),
    "shutdown": ControlSpec(EMPTY, NONE),
    # a control of CTDB's protocol a Samba client sent for another node
    # (ctdb.server.ctdb_sessions): run by that node's door
    "ctdb_control": ControlSpec(
        struct({"opcode": U32, "srvid": U64, "data": CLIENT_DATA}),
        struct({"status": integer(-(2**31), 2**31 - 1), "data": CLIENT_DATA}),
    ),
}

#: Every operation of the ordered stream (`OrderedEngine._apply_<op>`), one row each.
ORDERED: dict[str, Check] = {
    # `waiters`: the origin's MaxLockWaiters, which every member applies alike
    # `stable`: acknowledge only once every member applied it (StableVolatileWrites)
    "store": struct(
        {"db": DB_ID, "key": KEY, "value": VALUE, "owner": OWNER},
        {"waiters": WAITERS, "stable": BOOL},
    ),
    # `req`: the request's id, which a grant and a withdrawal name (see locks.Entry)
    "lock": struct({"db": DB_ID, "key": KEY, "owner": OWNER}, {"waiters": WAITERS, "req": U64}),
    "unlock": struct(
        {"db": DB_ID, "key": KEY, "owner": OWNER, "value": nullable(VALUE)}, {"stable": BOOL}
    ),
    "release": struct({"owner": OWNER}),
    "call": struct({"db": DB_ID, "key": KEY, "call": RECORD_CALL}, {"stable": BOOL}),
    "commit": struct({"db": DB_ID, "reads": TX_READS, "writes": TX_WRITES}),
    "attach": struct({"name": DB_NAME, "kind": DB_KIND}),
    "wipe": struct({"db": DB_ID}),
    "withdraw": struct({"db": DB_ID, "key": KEY, "owner": OWNER}, {"req": U64}),
    "vacuum": struct({"db": DB_ID, "records": VACUUMED}),
    "recover": EMPTY,
    "flags": struct({"flags": FLAGS}),
    "sync": EMPTY,
    # the sender applied each origin's writes up to its seq
    "applied": struct({"upto": list_of(row(PNN, U64))}),
    "offer": struct(
        {
            "view_id": U64,
            "synced": BOOL,
            "damaged": BOOL,
            "epoch": U64,
            "position": U64,
            "numbered": U64,
            "incarnation": U64,
            "flags": FLAGS,
            "dbs": list_of(row(DB_NAME, DB_KIND, U64, HISTORY)),
        }
    ),
    # the sender numbered the epoch of `view_id` (its round's plan, or one more
    # quorate view in sync), durably
    "numbered": struct({"view_id": U64}),
    # the sender installed every snapshot it needed in the round of `view_id`
    "synced": struct({"view_id": U64}),
    "snapshot": struct(
        {
            "view_id": U64,
            "name": DB_NAME,
            "kind": DB_KIND,
            "unchanged": BOOL,
            "records": WIRE_RECORDS,
            "locks": list_of(
                row(
                    STORED_KEY,
                    list_of(
                        row(
                            PNN,
                            U64,
                            text(choices=("lock", "store")),
                            nullable(VALUE),
                            nullable(U64),
                        )
                    ),
                )
            ),
            # the source's keys whose latest write is not stable yet:
            # [key, origin, seq, members of the view it was applied in]
            "dirty": list_of(row(STORED_KEY, PNN, U64, list_of(PNN))),
        },
    ),
}
