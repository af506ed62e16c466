"""Node-to-node messages: dataclasses, their msgpack codec and their schemas (no I/O).

Two families travel between daemons. Record migration (`Call`,
`DmasterRequest`, `DmasterReply`) is CTDB's data path over a point-to-point
transport. Everything else is a `Control` with a `ControlReply`, as in CTDB:
recovery steps, persistent-transaction phases and the admin commands a tool
addresses to another node with `-n PNN`. Over a total-order transport,
records travel as `Ordered` operations instead.

Every message is encoded as a msgpack array `[type, field, field, ...]` in
field order; adding a message means adding a dataclass with a new `TYPE`.

Nothing a peer sends is trusted. `decode` checks every field against its
annotation (an `Annotated` check from `ctdb.protocol.schema`, or the plain type), the
arguments of a `Control` and of an `Ordered` operation against the op's row
in `CONTROLS` / `ORDERED`, and that a field naming the sender (`SENDER`) is
the node the transport says sent it. `check_reply` does the same for a
control's result, which depends on the op that was asked. So no handler
(`Node.ctl_*`, `OrderedEngine._apply_*`, `MigrationEngine.on_*`) ever sees a
wrong type, a missing key, a pnn outside the nodes list or a key above the
size limits. Sizes are checked against the largest limits any node may set
(`config.WIRE_SIZES`), so every node decides alike. A new op is one row in
a table; a new message is a dataclass whose annotations say what is valid.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import msgpack

from ctdb.common.config import MAX_ENTRIES, MAX_ENTRY_PAYLOAD, TUNABLES, WIRE_SIZES
from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol import schema
from ctdb.protocol.schema import (
    ANY,
    BOOL,
    EMPTY,
    KEY,
    NONE,
    PNN,
    STORED_KEY,
    U32,
    U64,
    VALUE,
    Check,
    Limits,
    list_of,
    nullable,
    row,
    struct,
    text,
)

# -- field types shared by the messages and the op tables ---------------------------------

DB_ID = U32
GENERATION = U64  # vs generations are (view id << 16) + recoveries: wider than CTDB's u32
RSN = U64
#: CTDB's node flags (see ctdb.server.state.NodeFlags): DISCONNECTED..BANNED, STOPPED.
FLAGS = schema.bits(0x01 | 0x02 | 0x04 | 0x08 | 0x20)
DB_NAME = text(255, min_len=1)
DB_KIND = text(choices=("volatile", "persistent", "replicated"))
#: Records in a bulk transfer (recovery pull/push, snapshots): [[key, rsn, dmaster, value]].
WIRE_RECORDS = schema.RECORDS
#: A lock owner: (pnn, session id on that node).
OWNER = row(PNN, U64)
#: How many requests may wait for one record (the MaxLockWaiters tunable's range).
WAITERS = schema.integer(int(TUNABLES["MaxLockWaiters"].lo), int(TUNABLES["MaxLockWaiters"].hi))
TX_READS = list_of(row(KEY, RSN))
TX_WRITES = list_of(row(KEY, nullable(VALUE)))
NUMBER = schema.number(-1e308, 1e308)
#: A persistent copy's chained commit digest (ctdb.storage.database.Database.history).
HISTORY = schema.blob(64)
#: The (epoch, generation) of the recovery a volatile copy was last pushed by.
RECOVERY_BASE = row(U64, GENERATION)
#: Deletion markers to vacuum: [[key, rsn]].
VACUUMED = list_of(row(STORED_KEY, RSN))
#: A node's monotonic clock reading (see ctdb.server.lease).
STAMP = schema.number(0, 1e308)
#: What a client message carries: anything that fits in the largest frame.
CLIENT_DATA = schema.blob(int(WIRE_SIZES["MaxFrameSize"]))
TUNABLE_VALUE = schema.one_of(NUMBER, text(64))
#: Plain-data results forwarded to a client as they are (status, statistics...).
SHOWN = ANY
#: An entry's payload (ctdb.storage.entries).
PAYLOAD = schema.blob(MAX_ENTRY_PAYLOAD)
#: A function run on a record where it lives (ctdb.engines.record_calls), as plain data.
RECORD_CALL = schema.one_of(
    struct(
        {
            "fn": text(choices=("append",)),
            "condition": text(64),
            "arg": nullable(schema.one_of(U64, text(20))),
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
        "index": nullable(schema.integer(0, MAX_ENTRIES)),
        "reason": text(1024),
        "entries": list_of(row(PNN, U64, PAYLOAD)),
        "removed": schema.integer(0, MAX_ENTRIES),
    },
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
                "generation": GENERATION,
                "view": list_of(PNN),
                "dbs": schema.map_of(
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
    "tx_settled": ControlSpec(struct({"db_id": DB_ID, "commit_id": U64}), NONE),
    # databases
    "attach": ControlSpec(struct({"name": DB_NAME, "kind": DB_KIND}), DB_ID),
    "getdbmap": ControlSpec(
        EMPTY,
        list_of(struct({"id": DB_ID, "name": DB_NAME, "kind": DB_KIND, "path": text(4096)})),
    ),
    "getdbseqnum": ControlSpec(struct({"db_id": DB_ID}), U64),
    "traverse": ControlSpec(struct({"db_id": DB_ID}), WIRE_RECORDS),
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
    "ban": ControlSpec(struct({"seconds": schema.number(0, schema.U32_MAX)}), NONE),
    "reloadnodes": ControlSpec(EMPTY, list_of(text(255))),
    "shutdown": ControlSpec(EMPTY, NONE),
}

#: Every operation of the ordered stream (`OrderedEngine._apply_<op>`), one row each.
ORDERED: dict[str, Check] = {
    # `waiters`: the origin's MaxLockWaiters, which every member applies alike
    # `stable`: acknowledge only once every member applied it (StableVolatileWrites)
    "store": struct(
        {"db": DB_ID, "key": KEY, "value": VALUE, "owner": OWNER},
        {"waiters": WAITERS, "stable": BOOL},
    ),
    "lock": struct({"db": DB_ID, "key": KEY, "owner": OWNER}, {"waiters": WAITERS}),
    "unlock": struct(
        {"db": DB_ID, "key": KEY, "owner": OWNER, "value": nullable(VALUE)}, {"stable": BOOL}
    ),
    "release": struct({"owner": OWNER}),
    "call": struct({"db": DB_ID, "key": KEY, "call": RECORD_CALL}, {"stable": BOOL}),
    "commit": struct({"db": DB_ID, "reads": TX_READS, "writes": TX_WRITES}),
    "attach": struct({"name": DB_NAME, "kind": DB_KIND}),
    "wipe": struct({"db": DB_ID}),
    "withdraw": struct({"db": DB_ID, "key": KEY, "owner": OWNER}),
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
            "numbered": U64,
            "incarnation": U64,
            "flags": FLAGS,
            "dbs": list_of(row(DB_NAME, DB_KIND, U64, HISTORY)),
        }
    ),
    # the sender installed every snapshot it needed in the round of `view_id`
    "synced": struct({"view_id": U64}),
    "snapshot": struct(
        {
            "view_id": U64,
            "name": DB_NAME,
            "kind": DB_KIND,
            "unchanged": BOOL,
            "records": WIRE_RECORDS,
            "recoveries": U32,
            "locks": list_of(
                row(
                    STORED_KEY,
                    list_of(row(PNN, U64, text(choices=("lock", "store")), nullable(VALUE))),
                )
            ),
            # the source's keys whose latest write is not stable yet:
            # [key, origin, seq, members of the view it was applied in]
            "dirty": list_of(row(STORED_KEY, PNN, U64, list_of(PNN))),
        },
    ),
}

# -- the messages ---------------------------------------------------------------------------

ReqId = Annotated[int, U64]
DbId = Annotated[int, DB_ID]
Key = Annotated[bytes, KEY]
Value = Annotated[bytes, VALUE]
Generation = Annotated[int, GENERATION]
Rsn = Annotated[int, RSN]
Pnn = Annotated[int, PNN]
Op = Annotated[str, text(64)]


@dataclass(slots=True)
class Control:
    """Ask a node to do something and reply (`reqid` matches the reply)."""

    TYPE: ClassVar[int] = 1
    ARGS: ClassVar[Mapping[str, Check]] = {op: spec.args for op, spec in CONTROLS.items()}
    reqid: ReqId
    op: Op
    args: dict[str, Any]


@dataclass(slots=True)
class ControlReply:
    """The answer to a `Control`; its result is checked by `check_reply`."""

    TYPE: ClassVar[int] = 2
    reqid: ReqId
    code: Annotated[int, schema.integer(0, 65535)]  # 0 = success, else an ErrorCode
    result: Any


@dataclass(slots=True)
class Call:
    """`origin` wants to become dmaster of a volatile record.

    Sent to the lmaster, which forwards it to the dmaster; a node that turns
    out not to be the dmaster bounces it back to the lmaster (`hops` counts).
    """

    TYPE: ClassVar[int] = 3
    db_id: DbId
    key: Key
    generation: Generation
    origin: Pnn
    hops: Annotated[int, U32]


@dataclass(slots=True)
class DmasterRequest:
    """The old dmaster hands the record to the lmaster for `new_dmaster`."""

    TYPE: ClassVar[int] = 4
    db_id: DbId
    key: Key
    generation: Generation
    new_dmaster: Pnn
    rsn: Rsn
    value: Value


@dataclass(slots=True)
class DmasterReply:
    """The lmaster hands the record to its new dmaster."""

    TYPE: ClassVar[int] = 5
    db_id: DbId
    key: Key
    generation: Generation
    rsn: Rsn
    value: Value


@dataclass(slots=True)
class ClientMessage:
    """A message for the clients of the target node registered on `srvid`."""

    TYPE: ClassVar[int] = 6
    SENDER: ClassVar[str] = "src"
    srvid: Annotated[int, U64]
    data: Annotated[bytes, CLIENT_DATA]
    src: Pnn


@dataclass(slots=True)
class Ordered:
    """An operation broadcast in agreed order (total-order transports only).

    Every node applies `op` at the same position of the stream; the node that
    sent it answers its client when it delivers its own message.
    """

    TYPE: ClassVar[int] = 7
    SENDER: ClassVar[str] = "origin"
    ARGS: ClassVar[Mapping[str, Check]] = ORDERED
    origin: Pnn
    seq: Annotated[int, U64]
    op: Op
    args: dict[str, Any]


@dataclass(slots=True)
class NodeState:
    """What a node tells every peer about itself, on change and with each keepalive.

    `stamp` is the sender's clock when it sent this, `seen` the latest stamp
    it received from each peer: echoed stamps confirm a node's lease to serve
    (see `ctdb.server.lease`).
    """

    TYPE: ClassVar[int] = 8
    SENDER: ClassVar[str] = "pnn"
    pnn: Pnn
    flags: Annotated[int, FLAGS]
    generation: Generation
    recovery_mode: Annotated[int, schema.integer(0, 1)]
    leader: Annotated[int, schema.pnn_or(-1)]
    stamp: Annotated[float, STAMP]
    seen: Annotated[dict[int, float], schema.map_of(PNN, STAMP)]


@dataclass(slots=True)
class RemoteCall:
    """Run a function on a volatile record at its dmaster; the result goes to `origin`.

    Routed like `Call` (lmaster, then dmaster), but the record stays where
    it is: only `RemoteCallReply` comes back. `reqid` is the origin's, so a
    re-sent call gets the reply its first sending would have had.
    """

    TYPE: ClassVar[int] = 9
    db_id: DbId
    key: Key
    generation: Generation
    origin: Pnn
    reqid: ReqId
    hops: Annotated[int, U32]
    call: Annotated[dict[str, Any], RECORD_CALL]


@dataclass(slots=True)
class RemoteCallReply:
    """The dmaster's answer to a `RemoteCall`: `code` 0 and the answer, or an error."""

    TYPE: ClassVar[int] = 10
    reqid: ReqId
    generation: Generation
    code: Annotated[int, schema.integer(0, 65535)]  # 0 = success, else an ErrorCode
    message: Annotated[str, text(1024)]
    answer: Annotated[dict[str, Any] | None, nullable(RECORD_ANSWER)]


Message = (
    Control
    | ControlReply
    | Call
    | DmasterRequest
    | DmasterReply
    | ClientMessage
    | Ordered
    | NodeState
    | RemoteCall
    | RemoteCallReply
)
MESSAGE_TYPES: tuple[type[Message], ...] = typing.get_args(Message)

# -- checking ---------------------------------------------------------------------------


class DecodeError(CtdbError):
    """A node message that is not valid: the sender breaks the protocol."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.PROTOCOL, message)


def wire_limits(nodes: Sequence[object]) -> Limits:
    """What node messages are checked against: the nodes list and the size ceilings."""
    return Limits(nodes, WIRE_SIZES)


#: The check for a field annotated with a plain type.
_PLAIN: dict[object, Check] = {
    int: schema.integer(-(2**63), schema.U64_MAX),  # what msgpack carries
    bytes: CLIENT_DATA,
    str: text(4096),
    bool: BOOL,
    float: NUMBER,
    Any: ANY,
    dict[str, Any]: schema.MAP,  # then checked by the op's row in the class's ARGS
}


@dataclass(frozen=True)
class Layout:
    """How to check one message class, worked out once from its annotations."""

    cls: type
    names: tuple[str, ...]
    checks: tuple[Check, ...]
    sender: int | None  # index of the field naming the sender
    op: int | None  # index of `op` when the class has an ARGS table
    args: int | None

    def first_invalid(self, values: list[Any], limits: Limits) -> str:
        for name, check, value in zip(self.names, self.checks, values, strict=True):
            try:
                check(value, limits)
            except schema.SchemaError:
                return name
        return "?"


def _build_layout(cls: type) -> Layout:
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls)]
    checks = []
    for name in names:
        hint = hints[name]
        if typing.get_origin(hint) is Annotated:
            checks.append(hint.__metadata__[0])
        else:
            checks.append(_PLAIN[hint])
    sender = getattr(cls, "SENDER", None)
    has_ops = hasattr(cls, "ARGS")
    return Layout(
        cls,
        tuple(names),
        tuple(checks),
        names.index(sender) if sender else None,
        names.index("op") if has_ops else None,
        names.index("args") if has_ops else None,
    )


_LAYOUTS: dict[int, Layout] = {cls.TYPE: _build_layout(cls) for cls in MESSAGE_TYPES}
_FIELDS = {layout.cls: layout.names for layout in _LAYOUTS.values()}


def layout(cls: type[Message]) -> Layout:
    """The fields of message class `cls` and their checks (for tools and tests)."""
    return _LAYOUTS[cls.TYPE]


def encode(msg: Message) -> bytes:
    names = _FIELDS[type(msg)]
    return msgpack.packb([msg.TYPE, *[getattr(msg, n) for n in names]], use_bin_type=True)


def decode(data: bytes, limits: Limits, sender: int | None = None) -> Message:
    """A checked message from `sender`'s bytes, or `DecodeError` saying what is wrong."""
    try:
        items = schema.unpack(data)
    except Exception as exc:
        raise DecodeError(f"undecodable node message: {type(exc).__name__}: {exc}") from None
    if type(items) is not list or not items or type(items[0]) is not int:
        raise DecodeError("a node message is an array starting with its type number")
    form = _LAYOUTS.get(items[0])
    if form is None:
        raise DecodeError(f"unknown node message type {items[0]}")
    name = form.cls.__name__
    if len(items) != len(form.names) + 1:
        raise DecodeError(f"{name} needs {len(form.names)} fields, got {len(items) - 1}")
    values = items[1:]
    try:
        for check, value in zip(form.checks, values, strict=True):
            check(value, limits)
    except schema.SchemaError as exc:
        # which field failed is worked out only on this error path
        raise DecodeError(f"{name}.{exc.at(form.first_invalid(values, limits)).message}") from None
    if form.op is not None:
        assert form.args is not None
        op = values[form.op]
        args_check = form.cls.ARGS.get(op)  # type: ignore[attr-defined]
        if args_check is None:
            raise DecodeError(f"{name}: unknown op {schema.short(op)}")
        try:
            args_check(values[form.args], limits)
        except schema.SchemaError as exc:
            raise DecodeError(f"{name}.{exc.at(f'{op}.args').message}") from None
    if sender is not None and form.sender is not None and values[form.sender] != sender:
        field = form.names[form.sender]
        raise DecodeError(f"{name}.{field} is {values[form.sender]}, but node {sender} sent it")
    msg: Message = form.cls(*values)
    return msg


def check_reply(op: str, reply: ControlReply, limits: Limits) -> Any:
    """The result of a reply to control `op`, checked; `DecodeError` if malformed."""
    if reply.code:
        if type(reply.result) is not str:
            raise DecodeError(f"error reply to {op} carries no message")
        return reply.result
    try:
        CONTROLS[op].result(reply.result, limits)
    except schema.SchemaError as exc:
        raise DecodeError(f"reply to {op}: {exc.message}") from None
    return reply.result
