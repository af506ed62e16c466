"""What each CTDB control carries, as one table (sans-IO): opcode → request and reply codecs.

A REQ_CONTROL's `data` and a successful REPLY_CONTROL's `data` mean
something different for every opcode (`ctdb_req_control_data_push` and
`ctdb_reply_control_data_push` in Samba's ctdb/protocol/protocol_control.c;
spec §3.1). Keeping that knowledge in one table lets the daemon's CTDB front
door decode any request and encode any answer by lookup, and lets a test
prove that no opcode in `Control` is left without one.

Decoding is strict, as in `ctdb_types`: data of the wrong length or shape is
`CtdbError(INVALID)`, which the front door turns into a failing status (it
never needs to guess at half a struct). An opcode outside the table is
`CtdbError(NOT_SUPPORTED)`: the real daemon answers those with status −1.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol.ctdb_control_structs import (
    Connection,
    IfaceList,
    KeyData,
    PidSrvid,
    PublicIpList,
    TraverseStart,
    TraverseStartExt,
    TunableList,
)
from ctdb.protocol.ctdb_opcodes import Control
from ctdb.protocol.ctdb_records import RecBuffer
from ctdb.protocol.ctdb_scalars import (
    Reader,
    decode_cstring,
    decode_stringn,
    encode_cstring,
    encode_i32,
    encode_stringn,
    encode_u32,
    encode_u64,
)
from ctdb.protocol.ctdb_statistics import Statistics
from ctdb.protocol.ctdb_types import DbidMap, NodeMap, Tunable, Uptime, VarList, VnnMap

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Codec(Generic[T]):
    """One side of a control's data: its bytes ↔ a Python value."""

    what: str
    decode: Callable[[bytes], T]
    encode: Callable[[T], bytes]


@dataclass(frozen=True, slots=True)
class ControlCodec:
    """A control's request data and successful reply data.

    `result_in_status` marks the controls whose answer is the reply's
    status itself, with no data (GET_PNN's pnn, PING's client count,
    PROCESS_EXISTS' 0 / −1...; spec §1.3): the front door must put the
    value there, and a client reads it there."""

    request: Codec[Any]
    reply: Codec[Any]
    result_in_status: bool = False


# -- the codecs the table is made of -------------------------------------------------------


def _decode_empty(data: bytes) -> None:
    if data:
        raise CtdbError(ErrorCode.INVALID, f"control takes no data, got {len(data)} bytes")


def _encode_empty(value: None) -> bytes:
    """Refuses a value: a daemon bug, not something to drop on the floor."""
    if value is not None:
        raise CtdbError(ErrorCode.INVALID, f"control takes no data, got {value!r}")
    return b""


def _scalar(what: str, fmt: str, encode: Callable[[int], bytes]) -> Codec[int]:
    """A lone scalar of exactly its size: u32 ids, the i32 pid and tdb flags, u64 seqnum."""
    layout = struct.Struct(fmt)

    def decode(data: bytes) -> int:
        r = Reader(data, what)
        (value,) = r.unpack(layout)
        r.done()
        return int(value)

    return Codec(what, decode, encode)


def _decode_db_seqnum_request(data: bytes) -> int:
    """GET_DB_SEQNUM's 8 bytes: db_id, then a u32 Samba writes as 0 and its
    own puller skips without looking; the real daemon insists on 8 bytes."""
    r = Reader(data, "GET_DB_SEQNUM request")
    db_id = r.u32()
    r.u32()
    r.done()
    return db_id


def _encode_db_seqnum_request(db_id: int) -> bytes:
    return encode_u32(db_id) + encode_u32(0)


def _decode_health(data: bytes) -> str | None:
    """DB_GET_HEALTH: no data means healthy (Samba's `ctdb_string_pull`
    reads a zero-length string as NULL); any string, even "", is a reason
    the database is unhealthy and makes the new client's attach fail."""
    return None if not data else decode_cstring(data, "health reason")


def _encode_health(reason: str | None) -> bytes:
    return b"" if reason is None else encode_cstring(reason)


def _of(cls: Any) -> Codec[Any]:
    """A struct class with `encode` and a `decode` classmethod."""
    return Codec(cls.__name__, cls.decode, cls.encode)


NONE: Codec[None] = Codec("no data", _decode_empty, _encode_empty)
U32 = _scalar("u32", "<I", encode_u32)
DB_ID = _scalar("u32 db_id", "<I", encode_u32)
I32 = _scalar("i32", "<i", encode_i32)
PID = _scalar("pid_t", "<i", encode_i32)
U64 = _scalar("u64", "<Q", encode_u64)
CSTRING: Codec[str] = Codec("string", decode_cstring, encode_cstring)
STRINGN: Codec[str] = Codec("stringn", decode_stringn, encode_stringn)
DB_SEQNUM_REQUEST: Codec[int] = Codec(
    "u32 db_id + u32 0", _decode_db_seqnum_request, _encode_db_seqnum_request
)
HEALTH: Codec[str | None] = Codec("health reason", _decode_health, _encode_health)


def _status(request: Codec[Any]) -> ControlCodec:
    return ControlCodec(request, NONE, result_in_status=True)


# -- the table: every opcode of `Control`, in protocol.h order -----------------------------

CONTROLS: dict[int, ControlCodec] = {
    # status 0 if a connected client has this peer pid, else -1
    Control.PROCESS_EXISTS: _status(PID),
    Control.STATISTICS: ControlCodec(NONE, _of(Statistics)),
    # status = number of connected clients
    Control.PING: _status(NONE),
    Control.GETDBPATH: ControlCodec(DB_ID, CSTRING),
    Control.GETVNNMAP: ControlCodec(NONE, _of(VnnMap)),
    Control.GET_DBMAP: ControlCodec(NONE, _of(DbidMap)),
    # status = 0 NORMAL / 1 ACTIVE
    Control.GET_RECMODE: _status(NONE),
    Control.SET_RECMODE: ControlCodec(U32, NONE),
    Control.DB_ATTACH: ControlCodec(CSTRING, DB_ID),
    Control.TRAVERSE_START: ControlCodec(_of(TraverseStart), NONE),
    # the srvid travels in the REQ_CONTROL header, not in the data
    Control.REGISTER_SRVID: ControlCodec(NONE, NONE),
    Control.DEREGISTER_SRVID: ControlCodec(NONE, NONE),
    Control.GET_DBNAME: ControlCodec(DB_ID, CSTRING),
    Control.ENABLE_SEQNUM: ControlCodec(DB_ID, NONE),
    # node to node (ctdbd: NOREPLY, to every active node): a record of the
    # database changed there, bump this node's TDB sequence number
    Control.UPDATE_SEQNUM: ControlCodec(DB_ID, NONE),
    # status = the daemon's pid
    Control.GET_PID: _status(NONE),
    # status = this node's pnn; every client's first request
    Control.GET_PNN: _status(NONE),
    # smbd sends it with NOREPLY: decoded, then dropped without an answer
    Control.TCP_CLIENT: ControlCodec(_of(Connection), NONE),
    # status 0 set, 1 obsolete tunable, -1 unknown name
    Control.SET_TUNABLE: ControlCodec(_of(Tunable), NONE),
    Control.GET_TUNABLE: ControlCodec(STRINGN, U32),
    Control.LIST_TUNABLES: ControlCodec(NONE, _of(VarList)),
    Control.GET_ALL_TUNABLES: ControlCodec(NONE, _of(TunableList)),
    Control.DB_ATTACH_PERSISTENT: ControlCodec(CSTRING, DB_ID),
    Control.UPTIME: ControlCodec(NONE, _of(Uptime)),
    Control.GET_CAPABILITIES: ControlCodec(NONE, U32),
    # request flags may carry CTDB_PUBLIC_IP_FLAGS_ONLY_AVAILABLE, data is empty
    Control.GET_PUBLIC_IPS: ControlCodec(NONE, _of(PublicIpList)),
    Control.GET_NODEMAP: ControlCodec(NONE, _of(NodeMap)),
    # each record's data starts with its ltdb header
    Control.TRANS3_COMMIT: ControlCodec(_of(RecBuffer), NONE),
    Control.GET_DB_SEQNUM: ControlCodec(DB_SEQNUM_REQUEST, U64),
    Control.DB_GET_HEALTH: ControlCodec(DB_ID, HEALTH),
    Control.GET_IFACES: ControlCodec(NONE, _of(IfaceList)),
    Control.SCHEDULE_FOR_DELETION: ControlCodec(_of(KeyData), NONE),
    Control.SET_DB_READONLY: ControlCodec(DB_ID, NONE),
    Control.TRAVERSE_START_EXT: ControlCodec(_of(TraverseStartExt), NONE),
    Control.SET_DB_STICKY: ControlCodec(DB_ID, NONE),
    # u32 runstate, RUNNING = 5
    Control.GET_RUNSTATE: ControlCodec(NONE, U32),
    # exactly 4 bytes of int: smbd refuses any other size
    Control.DB_OPEN_FLAGS: ControlCodec(DB_ID, I32),
    Control.DB_ATTACH_REPLICATED: ControlCodec(CSTRING, DB_ID),
    # status 0 if a client with that pid registered that srvid, else -1
    Control.CHECK_PID_SRVID: _status(_of(PidSrvid)),
}


def codec_for(opcode: int) -> ControlCodec:
    """The codecs of `opcode`, or NOT_SUPPORTED for one this daemon does not
    serve (the front door answers those with status −1, as ctdbd does)."""
    codec = CONTROLS.get(opcode)  # an IntEnum key is found by its number
    if codec is None:
        raise CtdbError(ErrorCode.NOT_SUPPORTED, f"unsupported CTDB control {opcode}")
    return codec
