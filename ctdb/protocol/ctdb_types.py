"""The structs inside CTDB control data and records (sans-IO), as Samba 4.17 marshals them.

Layouts follow `/work/shared/reference/ctdb-wire-protocol.md` §4, checked
against ctdb/protocol/protocol_types.c and protocol.h; host byte order is
little endian, as in `ctdb_wire`. Samba's own pullers mostly accept trailing
bytes; these decoders do not: control data has an exact length that every
Samba client sends, so anything else is a broken or hostile peer, and
failing with `CtdbError(INVALID)` lets the daemon answer with a failing
status instead of acting on half a struct. Counts are checked against the
bytes present before anything is allocated for them.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Any

from ctdb.common.errors import CtdbError, ErrorCode

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")


def invalid(message: str) -> CtdbError:
    return CtdbError(ErrorCode.INVALID, message)


class Reader:
    """A cursor over one struct's bytes that refuses to read past the end
    and, at `done`, refuses bytes left over."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = bytes(data)
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise invalid(
                f"{self.what} truncated: needs {n} more bytes at offset {self.pos}, "
                f"has {len(self.data) - self.pos}"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, layout: struct.Struct) -> tuple[Any, ...]:
        return layout.unpack(self.take(layout.size))

    def u32(self) -> int:
        return int(self.unpack(_U32)[0])

    def count(self, item_size: int) -> int:
        """A u32 count of fixed-size items, refused if the rest cannot hold them."""
        n = self.u32()
        if n * item_size > len(self.data) - self.pos:
            raise invalid(
                f"{self.what} claims {n} entries, too many for its {len(self.data)} bytes"
            )
        return n

    def done(self) -> None:
        if self.pos != len(self.data):
            raise invalid(f"{self.what} has {len(self.data) - self.pos} trailing bytes")


# -- scalars and strings ------------------------------------------------------------------


def encode_u32(value: int) -> bytes:
    return _U32.pack(value)


def decode_u32(data: bytes, what: str = "uint32") -> int:
    r = Reader(data, what)
    value = r.u32()
    r.done()
    return value


def encode_i32(value: int) -> bytes:
    """Status-like results (DB_OPEN_FLAGS' tdb flags) are C ints."""
    return _I32.pack(value)


def encode_u64(value: int) -> bytes:
    return _U64.pack(value)


def encode_cstring(text: str) -> bytes:
    """A C string as CTDB sends one: UTF-8, NUL-terminated, the NUL counted
    in every length (`ctdb_string_len`, protocol_basic.c)."""
    raw = text.encode()
    if b"\0" in raw:
        raise invalid("a CTDB string cannot hold a NUL byte")
    return raw + b"\0"


def decode_cstring(data: bytes, what: str = "string") -> str:
    """DB_ATTACH's name, GETDBPATH's path...: exactly one NUL, at the end."""
    if not data.endswith(b"\0") or b"\0" in data[:-1]:
        raise invalid(f"{what} must be one NUL-terminated string")
    try:
        return data[:-1].decode()
    except UnicodeDecodeError as exc:
        raise invalid(f"{what} is not UTF-8: {exc}") from None


def encode_stringn(text: str) -> bytes:
    """u32 length (with the NUL) then the C string: GET_TUNABLE's request."""
    raw = encode_cstring(text)
    return _U32.pack(len(raw)) + raw


def decode_stringn(data: bytes, what: str = "stringn") -> str:
    r = Reader(data, what)
    text = decode_cstring(r.take(r.u32()), what)
    r.done()
    return text


# -- record header and marshalled records --------------------------------------------------

_LTDB_HEADER = struct.Struct("<QIII4x")


@dataclass(frozen=True, slots=True)
class LtdbHeader:
    """`ctdb_ltdb_header` (protocol.h), the 24 bytes in front of every value
    in a CTDB TDB: rsn u64, dmaster u32, reserved1 u32, flags u32, 4 pad."""

    SIZE = _LTDB_HEADER.size
    rsn: int
    dmaster: int
    flags: int = 0
    reserved1: int = 0

    def encode(self) -> bytes:
        return _LTDB_HEADER.pack(self.rsn, self.dmaster, self.reserved1, self.flags)

    @classmethod
    def decode(cls, data: bytes) -> LtdbHeader:
        r = Reader(data, "ltdb header")
        rsn, dmaster, reserved1, flags = r.unpack(_LTDB_HEADER)
        r.done()
        return cls(rsn, dmaster, flags, reserved1)

    @classmethod
    def split(cls, value: bytes) -> tuple[LtdbHeader, bytes]:
        """A stored value (or a record's data) as header and user data."""
        if len(value) < cls.SIZE:
            raise invalid(f"value of {len(value)} bytes has no 24-byte ltdb header")
        return cls.decode(value[: cls.SIZE]), bytes(value[cls.SIZE :])


_REC_DATA = struct.Struct("<IIII")


@dataclass(frozen=True, slots=True)
class RecData:
    """`ctdb_rec_data` (protocol_types.c; old ctdb_rec_data_old): length
    (= 16 + keylen + datalen, no padding), reqid, keylen, datalen, key,
    data. In traverse messages and TRANS3_COMMIT `data` starts with the
    record's ltdb header; `LtdbHeader.split` takes it apart."""

    reqid: int
    key: bytes
    data: bytes

    def encode(self) -> bytes:
        length = _REC_DATA.size + len(self.key) + len(self.data)
        return (
            _REC_DATA.pack(length, self.reqid, len(self.key), len(self.data)) + self.key + self.data
        )

    @classmethod
    def decode(cls, data: bytes) -> RecData:
        r = Reader(data, "rec_data")
        rec = cls._read(r)
        r.done()
        return rec

    @classmethod
    def _read(cls, r: Reader) -> RecData:
        length, reqid, keylen, datalen = r.unpack(_REC_DATA)
        if length != _REC_DATA.size + keylen + datalen:
            # Samba's old walker steps by `length`, the new one by the two
            # lengths; only a record where they agree means the same to both.
            raise invalid(f"rec_data length {length} is not 16 + {keylen} + {datalen}")
        return cls(reqid, r.take(keylen), r.take(datalen))


_REC_BUFFER = struct.Struct("<II")


@dataclass(frozen=True, slots=True)
class RecBuffer:
    """`ctdb_rec_buffer` == `ctdb_marshall_buffer`: db_id, count, then
    `count` rec_data back to back, filling the rest of the control data
    (TRANS3_COMMIT's request)."""

    db_id: int
    records: tuple[RecData, ...] = ()

    def encode(self) -> bytes:
        return _REC_BUFFER.pack(self.db_id, len(self.records)) + b"".join(
            rec.encode() for rec in self.records
        )

    @classmethod
    def decode(cls, data: bytes) -> RecBuffer:
        r = Reader(data, "rec_buffer")
        db_id = r.u32()
        count = r.count(_REC_DATA.size)
        records = tuple(RecData._read(r) for _ in range(count))
        r.done()
        return cls(db_id, records)


# -- addresses and the node map ------------------------------------------------------------

_SOCK_ADDR_SIZE = 28  # union of sockaddr, sockaddr_in, sockaddr_in6 on Linux


@dataclass(frozen=True, slots=True)
class SockAddr:
    """`ctdb_sock_addr`, 28 bytes copied raw (protocol_types.c): sa_family
    u16 in host order, port u16 and the address in network order, zeros
    after. Only AF_INET and AF_INET6 mean anything to CTDB."""

    ip: str
    port: int = 0

    def encode(self) -> bytes:
        addr = ipaddress.ip_address(self.ip)
        if addr.version == 4:
            raw = struct.pack("<H", socket.AF_INET) + struct.pack("!H", self.port) + addr.packed
        else:  # sockaddr_in6: family, port, flowinfo 0, address, scope id 0
            raw = struct.pack("<H", socket.AF_INET6) + struct.pack("!HI", self.port, 0)
            raw += addr.packed
        return raw + bytes(_SOCK_ADDR_SIZE - len(raw))

    @classmethod
    def decode(cls, data: bytes) -> SockAddr:
        if len(data) != _SOCK_ADDR_SIZE:
            raise invalid(f"sock_addr is {_SOCK_ADDR_SIZE} bytes, got {len(data)}")
        (family,) = struct.unpack_from("<H", data)
        (port,) = struct.unpack_from("!H", data, 2)
        if family == socket.AF_INET:
            return cls(str(ipaddress.IPv4Address(data[4:8])), port)
        if family == socket.AF_INET6:
            return cls(str(ipaddress.IPv6Address(data[8:24])), port)
        raise invalid(f"sock_addr family {family} is neither AF_INET nor AF_INET6")


_NODE = struct.Struct("<II28s")


@dataclass(frozen=True, slots=True)
class NodeAndFlags:
    """`ctdb_node_and_flags`, 36 bytes: pnn, flags (NODE_FLAGS_*), address."""

    pnn: int
    flags: int
    addr: SockAddr


@dataclass(frozen=True, slots=True)
class NodeMap:
    """`ctdb_node_map` (GET_NODEMAP's reply): u32 num, then num nodes of
    36 bytes from offset 4, no padding."""

    nodes: tuple[NodeAndFlags, ...]

    def encode(self) -> bytes:
        return _U32.pack(len(self.nodes)) + b"".join(
            _NODE.pack(n.pnn, n.flags, n.addr.encode()) for n in self.nodes
        )

    @classmethod
    def decode(cls, data: bytes) -> NodeMap:
        r = Reader(data, "node map")
        nodes = []
        for _ in range(r.count(_NODE.size)):
            pnn, flags, addr = r.unpack(_NODE)
            nodes.append(NodeAndFlags(pnn, flags, SockAddr.decode(addr)))
        r.done()
        return cls(tuple(nodes))


# -- vnn map, db map, uptime ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VnnMap:
    """`ctdb_vnn_map` (GETVNNMAP's reply): generation, size, size × pnn."""

    generation: int
    map: tuple[int, ...]

    def encode(self) -> bytes:
        return struct.pack(f"<II{len(self.map)}I", self.generation, len(self.map), *self.map)

    @classmethod
    def decode(cls, data: bytes) -> VnnMap:
        r = Reader(data, "vnn map")
        generation = r.u32()
        size = r.count(_U32.size)
        vnn = tuple(r.u32() for _ in range(size))
        r.done()
        return cls(generation, vnn)


_DBID = struct.Struct("<IB3x")


@dataclass(frozen=True, slots=True)
class Dbid:
    """`ctdb_dbid`, 8 bytes: db_id, flags u8 (CTDB_DB_FLAGS_*), 3 pad."""

    db_id: int
    flags: int


@dataclass(frozen=True, slots=True)
class DbidMap:
    """`ctdb_dbid_map` (GET_DBMAP's reply): u32 num, then num Dbid."""

    dbs: tuple[Dbid, ...]

    def encode(self) -> bytes:
        return _U32.pack(len(self.dbs)) + b"".join(_DBID.pack(d.db_id, d.flags) for d in self.dbs)

    @classmethod
    def decode(cls, data: bytes) -> DbidMap:
        r = Reader(data, "dbid map")
        dbs = tuple(Dbid(*r.unpack(_DBID)) for _ in range(r.count(_DBID.size)))
        r.done()
        return cls(dbs)


_UPTIME = struct.Struct("<8q")


@dataclass(frozen=True, slots=True)
class Uptime:
    """`ctdb_uptime` (UPTIME's reply): four `struct timeval` of two int64
    (seconds, microseconds), 64 bytes. Kept as (sec, usec) pairs so that a
    value survives the round trip bit for bit."""

    current_time: tuple[int, int]
    ctdbd_start_time: tuple[int, int]
    last_recovery_started: tuple[int, int]
    last_recovery_finished: tuple[int, int]

    def encode(self) -> bytes:
        return _UPTIME.pack(
            *self.current_time,
            *self.ctdbd_start_time,
            *self.last_recovery_started,
            *self.last_recovery_finished,
        )

    @classmethod
    def decode(cls, data: bytes) -> Uptime:
        r = Reader(data, "uptime")
        v = r.unpack(_UPTIME)
        r.done()
        return cls((v[0], v[1]), (v[2], v[3]), (v[4], v[5]), (v[6], v[7]))


# -- tunables ------------------------------------------------------------------------------

_TUNABLE = struct.Struct("<II")


@dataclass(frozen=True, slots=True)
class Tunable:
    """`ctdb_tunable` (SET_TUNABLE's request): value u32, name length u32
    (with the NUL), name. GET_TUNABLE's request is a bare `stringn`."""

    name: str
    value: int

    def encode(self) -> bytes:
        raw = encode_cstring(self.name)
        return _TUNABLE.pack(self.value, len(raw)) + raw

    @classmethod
    def decode(cls, data: bytes) -> Tunable:
        r = Reader(data, "tunable")
        value, length = r.unpack(_TUNABLE)
        name = decode_cstring(r.take(length), "tunable name")
        r.done()
        return cls(name, value)


@dataclass(frozen=True, slots=True)
class VarList:
    """`ctdb_var_list` (LIST_TUNABLES' reply): u32 length (with the NUL),
    then the names joined by ':' as one C string.

    Encoded without the leading ':' the real daemon writes, as Samba's own
    marshaller does; clients split with strtok, so both read the same, and
    decoding likewise skips empty names."""

    names: tuple[str, ...]

    def encode(self) -> bytes:
        if any(":" in name for name in self.names):
            raise invalid("a tunable name cannot contain ':'")
        raw = encode_cstring(":".join(self.names))
        return _U32.pack(len(raw)) + raw

    @classmethod
    def decode(cls, data: bytes) -> VarList:
        r = Reader(data, "var list")
        text = decode_cstring(r.take(r.u32()), "var list")
        r.done()
        return cls(tuple(name for name in text.split(":") if name))
