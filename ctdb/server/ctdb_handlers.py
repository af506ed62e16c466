"""What the CTDB-protocol door answers each control with (Samba 4.17's controls).

One function per control: the decoded request in, a status and a value for
the control's codec (`ctdb.protocol.ctdb_controls`) out, or a coroutine of
them for a control that needs the cluster (attach, traverse). They see the
door (`ctdb_door.Door`: this node, its CTDB clients and its counters), never one
client's connection, so a control forwarded from another node's door
(`run_control`, `ctdb.server.ctdb_sessions`) runs here exactly as a local
client's does. The controls only smbd sends are in `ctdb_handlers_smbd`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ctdb.common.config import TUNABLES
from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.migration import MigrationEngine
from ctdb.protocol.ctdb_control_structs import (
    IfaceList,
    KeyData,
    TraverseStart,
    TraverseStartExt,
)
from ctdb.protocol.ctdb_controls import codec_for
from ctdb.protocol.ctdb_opcodes import CURRENT_NODE, Control, Operation
from ctdb.protocol.ctdb_records import LtdbHeader, RecData
from ctdb.protocol.ctdb_statistics import Statistics
from ctdb.protocol.ctdb_types import (
    Dbid,
    DbidMap,
    NodeAndFlags,
    NodeMap,
    SockAddr,
    Tunable,
    Uptime,
    VarList,
    VnnMap,
)
from ctdb.protocol.ctdb_wire import Header, ReqMessage
from ctdb.server.ctdb_door import Door
from ctdb.server.ctdb_handlers_smbd import SMBD_HANDLERS
from ctdb.server.ctdb_transactions import trans3_commit
from ctdb.server.node import Node
from ctdb.server.serving import share
from ctdb.storage.database import DbKind

#: a control's outcome: status, reply data, and bytes to send after the reply
Outcome = tuple[int, bytes, bytes]

#: CTDB's run state RUNNING (ctdb_protocol.h `enum ctdb_runstate`).
RUNSTATE_RUNNING = 5
#: CTDB_CAP_DEFAULT (protocol.h): every pyctdb node may lead and be an lmaster.
CAP_DEFAULT = 0x00030003

#: (the door, decoded request data) -> (status, reply value for the codec), or a
#: coroutine of it for a control that needs the cluster (attach, traverse),
#: which may add the bytes to send after the reply
Handler = Callable[[Door, Any], Any]


def _timeval(t: float) -> tuple[int, int]:
    sec = int(t)
    return sec, int((t - sec) * 1_000_000)


def _pnn(door: Door, _: None) -> tuple[int, Any]:
    return door.node.pnn, None


def _ping(door: Door, _: None) -> tuple[int, Any]:
    return len(door.sessions), None  # ctdbd answers its number of clients


def _uptime(door: Door, _: None) -> tuple[int, Any]:
    node = door.node
    last = node.last_recovery
    finished = float(last.get("finished", 0.0))
    started = finished - float(last.get("duration", 0.0)) if finished else 0.0
    up = Uptime(
        _timeval(time.time()), _timeval(node.started), _timeval(started), _timeval(finished)
    )
    return 0, up


def _statistics(door: Door, _: None) -> tuple[int, Any]:
    """What `ctdb statistics` shows: what this daemon counts, zero for the rest
    (pyctdb has no lock helpers, hop counts or read-only delegations)."""
    node, seen = door.node, door.packets
    recovering = int(node.recovery_mode)
    client = (seen[Operation.REQ_CALL], seen[Operation.REQ_MESSAGE], seen[Operation.REQ_CONTROL], 0)
    counters = (node.stats["client_requests"] + sum(client), 0, 0, 0, 0, 0, 0)
    return 0, Statistics(
        num_clients=len(door.sessions),
        frozen=recovering,
        recovering=recovering,
        client_packets_sent=door.sent,
        client_packets_recv=sum(seen.values()),
        client=client,
        counters=counters,
        num_recoveries=node.epochs.epoch,
        statistics_start_time=_timeval(node.started),
        statistics_current_time=_timeval(time.time()),
    )


def _pid(door: Door, _: None) -> tuple[int, Any]:
    return os.getpid(), None


def _capabilities(door: Door, _: None) -> tuple[int, Any]:
    return 0, CAP_DEFAULT


def _set_recmode(door: Door, mode: int) -> tuple[int, Any]:
    """`ctdb recover` sets recovery mode ACTIVE on its node, then watches the
    generation change: start a forced recovery (`ctdbtool recover`'s) and
    answer at once. NORMAL asks for nothing: recoveries end by themselves."""
    if mode == 1:
        door.recover_later()
    return 0, None


def _recmode(door: Door, _: None) -> tuple[int, Any]:
    return int(door.node.recovery_mode), None


def _runstate(door: Door, _: None) -> tuple[int, Any]:
    return 0, RUNSTATE_RUNNING


def _nodemap(door: Door, _: None) -> tuple[int, Any]:
    node = door.node
    nodes = tuple(
        NodeAndFlags(p, node.node_flags(p), SockAddr(address))
        for p, address in enumerate(node.nodes)
    )
    return 0, NodeMap(nodes)


def _vnnmap(door: Door, _: None) -> tuple[int, Any]:
    return 0, VnnMap(door.node.generation, tuple(door.node.vnnmap))


def _ifaces(door: Door, _: None) -> tuple[int, Any]:
    return 0, IfaceList()  # pyctdb manages no public addresses


#: ctdb_dbid flags (protocol.h, struct ctdb_dbid)
DB_FLAGS = {DbKind.VOLATILE: 0x00, DbKind.PERSISTENT: 0x01, DbKind.REPLICATED: 0x08}


def _dbmap(door: Door, _: None) -> tuple[int, Any]:
    dbs = sorted(door.node.dbs.values(), key=lambda db: db.name)
    return 0, DbidMap(tuple(Dbid(db.id, DB_FLAGS[db.kind]) for db in dbs))


def _dbname(door: Door, db_id: int) -> tuple[int, Any]:
    return 0, door.node.db(db_id).name


async def _dbpath(door: Door, db_id: int) -> tuple[int, Any]:
    db = door.node.db(db_id)
    await share(door.node, db)
    return 0, str(db.path)


def _db_health(door: Door, db_id: int) -> tuple[int, Any]:
    door.node.db(db_id)  # NOT_FOUND for an unknown id
    return 0, None  # healthy: a failed write resyncs (vs) or recovers (tcp) the node


def _db_seqnum(door: Door, db_id: int) -> tuple[int, Any]:
    return 0, door.node.db(db_id).seqnum()


def _attach(kind: DbKind) -> Handler:
    """DB_ATTACH and kin: attach on every node; the database's id.

    As ctdbd: attaching a name already attached as another kind fails (-1).
    """

    async def handler(door: Door, name: str) -> tuple[int, Any]:
        node = door.node
        existing = next((db for db in node.dbs.values() if db.name == name), None)
        if existing is not None and existing.kind is not kind:
            raise CtdbError(
                ErrorCode.EXISTS, f"database {name} is {existing.kind.value}, not {kind.value}"
            )
        db = await node.records.attach(name, kind)
        await share(node, db)
        return 0, db.id

    return handler


def _traverse(door: Door, start: TraverseStart | TraverseStartExt) -> Any:
    """TRAVERSE_START(_EXT): every live record of the database, from every node,
    as one message each to the client's srvid, then an empty record; after
    the control's reply, which smbd must read first. A traverse that cannot
    run (no quorum) fails the control instead of ending as if empty."""

    async def handler() -> tuple[int, Any, bytes]:
        node = door.node
        records = await node.records.traverse(node.db(start.db_id))
        header = Header(0, CURRENT_NODE, node.pnn, node.generation)
        messages = [
            RecData(start.reqid, key, LtdbHeader(rec.rsn, rec.dmaster).encode() + rec.value)
            for key, rec in records
        ]
        messages.append(RecData(start.reqid, b"", b""))  # the end
        after = b"".join(ReqMessage(header, start.srvid, m.encode()).encode() for m in messages)
        return 0, None, after

    return handler()


def _schedule_for_deletion(door: Door, which: KeyData) -> tuple[int, Any]:
    """A client deleted a record in place (a header-only value): a hint for vacuuming.

    The client still holds the record's chain lock while it waits for this
    reply (ctdb's `deletekey`), so the record is not touched here: the next
    vacuuming round checks it under the lock (`ctdb.engines.vacuum`).
    """
    db = door.node.db(which.db_id)
    engine = door.node.records
    if isinstance(engine, MigrationEngine):
        engine.vacuum.suggest(db, which.key)
    return 0, None


def _open_flags(door: Door, db_id: int) -> tuple[int, Any]:
    """The TDB flags a client must open the database's file with (it uses them verbatim)."""
    return 0, door.node.db(db_id).local.tdb_flags


def _u32_tunables(node: Node) -> dict[str, int]:
    """The tunables CTDB's protocol can carry: its values are u32, so ours
    with fractions (seconds as floats) are not offered rather than rounded."""
    return {
        name: int(value)
        for name, value in node.tunables.items()
        if TUNABLES[name].integral and 0 <= value <= 0xFFFFFFFF
    }


def _set_tunable(door: Door, tunable: Tunable) -> tuple[int, Any]:
    if tunable.name not in _u32_tunables(door.node):
        raise CtdbError(
            ErrorCode.NOT_FOUND, f"no tunable {tunable.name!r} CTDB's protocol can carry"
        )
    # As `ctdbtool setvar` on this node: checked against the tunable's range.
    door.node.admin.ctl_setvar(door.node.pnn, {"name": tunable.name, "value": tunable.value})
    return 0, None


def _list_tunables(door: Door, _: None) -> tuple[int, Any]:
    return 0, VarList(tuple(_u32_tunables(door.node)))


def _get_tunable(door: Door, name: str) -> tuple[int, Any]:
    value = _u32_tunables(door.node).get(name)
    if value is None:
        raise CtdbError(ErrorCode.NOT_FOUND, f"no tunable {name!r} CTDB's protocol can carry")
    return 0, value


HANDLERS: dict[int, Handler] = {
    Control.GET_PNN: _pnn,
    Control.PING: _ping,
    Control.UPTIME: _uptime,
    Control.STATISTICS: _statistics,
    Control.GET_PID: _pid,
    Control.GET_CAPABILITIES: _capabilities,
    Control.GET_RECMODE: _recmode,
    Control.SET_RECMODE: _set_recmode,
    Control.GET_RUNSTATE: _runstate,
    Control.LIST_TUNABLES: _list_tunables,
    Control.GET_TUNABLE: _get_tunable,
    Control.SET_TUNABLE: _set_tunable,
    Control.GET_NODEMAP: _nodemap,
    Control.GETVNNMAP: _vnnmap,
    Control.GET_IFACES: _ifaces,
    Control.GET_DBMAP: _dbmap,
    Control.GET_DBNAME: _dbname,
    Control.GETDBPATH: _dbpath,
    Control.DB_GET_HEALTH: _db_health,
    Control.GET_DB_SEQNUM: _db_seqnum,
    Control.TRANS3_COMMIT: trans3_commit,
    Control.DB_ATTACH: _attach(DbKind.VOLATILE),
    Control.DB_ATTACH_PERSISTENT: _attach(DbKind.PERSISTENT),
    Control.DB_ATTACH_REPLICATED: _attach(DbKind.REPLICATED),
    Control.DB_OPEN_FLAGS: _open_flags,
    Control.SCHEDULE_FOR_DELETION: _schedule_for_deletion,
    Control.TRAVERSE_START: _traverse,
    Control.TRAVERSE_START_EXT: _traverse,
    **SMBD_HANDLERS,
}


#: Controls that only make sense on the client's own connection: a srvid
#: registration, a traverse whose records come as messages to it.
SESSION_BOUND = frozenset(
    {
        Control.REGISTER_SRVID,
        Control.DEREGISTER_SRVID,
        Control.TRAVERSE_START,
        Control.TRAVERSE_START_EXT,
    }
)


def run_control(door: Door, opcode: int, data: bytes) -> Outcome | Awaitable[Outcome]:
    """Decode, run and encode one control (not a session-bound one).

    Raises CtdbError (or the codec's errors) for a control that cannot be
    served here; the caller turns that into status -1, as ctdbd answers.
    """
    codec = codec_for(opcode)
    value = codec.request.decode(data)
    handler = HANDLERS.get(opcode)  # an IntEnum key is found by its number
    if handler is None:
        raise CtdbError(ErrorCode.NOT_SUPPORTED, f"CTDB control {Control(opcode).name}")
    outcome = handler(door, value)

    def encoded(status: int, result: Any, after: bytes = b"") -> Outcome:
        return status, b"" if codec.result_in_status else codec.reply.encode(result), after

    if isinstance(outcome, Awaitable):

        async def later() -> Outcome:
            return encoded(*await outcome)

        return later()
    return encoded(*outcome)
