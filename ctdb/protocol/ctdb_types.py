"""CTDB control structs that describe the cluster (sans-IO), as Samba 4.17 marshals them.

Addresses and the node map, the vnn map, the db map, uptime and tunables:
what `ctdb status` and its siblings ask every node for. Records are in
`ctdb_records`, the structs only some controls use in `ctdb_control_structs`
and `ctdb_statistics`, and the cursor they are all read with, with the
scalars and strings, in `ctdb_scalars`.

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

from ctdb.protocol.ctdb_scalars import Reader, decode_cstring, encode_cstring, invalid

_U32 = struct.Struct("<I")

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
