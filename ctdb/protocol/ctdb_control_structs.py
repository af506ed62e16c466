"""The rest of the structs CTDB control data carries (sans-IO), beside `ctdb_types`.

`ctdb_types` and `ctdb_records` hold the structs every client needs (node
map, db map, records...); this module holds the ones only some controls use: traverse
requests and the record messages that answer them, SCHEDULE_FOR_DELETION's
key, CHECK_PID_SRVID's pair, TCP_CLIENT's connection, the public-IP and
interface lists and the full tunable list (the statistics have a module of
their own, `ctdb_statistics`).

Layouts follow `/work/shared/reference/ctdb-wire-protocol.md` §3-4 and were
checked against Samba's ctdb/protocol/protocol_types.c and protocol.h; the
rules are `ctdb_types`' own (little endian, exact lengths, counts checked
against the bytes present before anything is allocated, `CtdbError(INVALID)`
for anything else). Padding is written as zeros and ignored when read, as
Samba's `ctdb_padding_pull` does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from ctdb.protocol.ctdb_records import LtdbHeader, RecData
from ctdb.protocol.ctdb_scalars import Reader, invalid
from ctdb.protocol.ctdb_types import SockAddr

_U32 = struct.Struct("<I")

# -- traverses -----------------------------------------------------------------------------

_TRAVERSE_START = struct.Struct("<IIQ")


@dataclass(frozen=True, slots=True)
class TraverseStart:
    """`ctdb_traverse_start`, 16 bytes (TRAVERSE_START, smbd): db_id, reqid,
    srvid. The daemon answers with one REQ_MESSAGE to `srvid` per record."""

    db_id: int
    reqid: int
    srvid: int

    def encode(self) -> bytes:
        return _TRAVERSE_START.pack(self.db_id, self.reqid, self.srvid)

    @classmethod
    def decode(cls, data: bytes) -> TraverseStart:
        r = Reader(data, "traverse_start")
        db_id, reqid, srvid = r.unpack(_TRAVERSE_START)
        r.done()
        return cls(db_id, reqid, srvid)


_TRAVERSE_START_EXT = struct.Struct("<IIQB7x")


@dataclass(frozen=True, slots=True)
class TraverseStartExt:
    """`ctdb_traverse_start_ext`, 24 bytes (TRAVERSE_START_EXT, `ctdb
    catdb`): db_id, reqid, srvid, a bool byte, 7 pad. The byte must be 0 or
    1: Samba's `ctdb_bool_pull` refuses anything else with EINVAL."""

    db_id: int
    reqid: int
    srvid: int
    withemptyrecords: bool = False

    def encode(self) -> bytes:
        return _TRAVERSE_START_EXT.pack(
            self.db_id, self.reqid, self.srvid, int(self.withemptyrecords)
        )

    @classmethod
    def decode(cls, data: bytes) -> TraverseStartExt:
        r = Reader(data, "traverse_start_ext")
        db_id, reqid, srvid, empty = r.unpack(_TRAVERSE_START_EXT)
        r.done()
        if empty not in (0, 1):
            raise invalid(f"traverse_start_ext withemptyrecords byte is {empty}, not 0 or 1")
        return cls(db_id, reqid, srvid, bool(empty))


def traverse_record(reqid: int, key: bytes, value: bytes) -> bytes:
    """One traverse answer: a REQ_MESSAGE's data holding one rec_data whose
    data is the raw TDB value, ltdb header first (ctdb_traverse.c). An
    empty key would read as the end marker, so it is refused."""
    if not key:
        raise invalid("a traversed record needs a non-empty key")
    return RecData(reqid, key, value).encode()


def traverse_end(reqid: int) -> bytes:
    """The last traverse message: a rec_data with no key and no data, which
    both the new client (client_db.c) and smbd (ctdbd_conn.c) stop at."""
    return RecData(reqid, b"", b"").encode()


def decode_traverse_message(data: bytes) -> RecData | None:
    """A traverse message as a record, or None for the end marker."""
    rec = RecData.decode(data)
    return None if not rec.key and not rec.data else rec


# -- SCHEDULE_FOR_DELETION, CHECK_PID_SRVID, TCP_CLIENT ------------------------------------

_KEY_DATA = struct.Struct("<I4x")


@dataclass(frozen=True, slots=True)
class KeyData:
    """`ctdb_key_data` (SCHEDULE_FOR_DELETION): db_id, 4 pad, the record's
    ltdb header, then the key as u32 length and bytes: 36 + keylen, the
    same bytes as smbd's `ctdb_control_schedule_for_deletion`."""

    db_id: int
    header: LtdbHeader
    key: bytes

    def encode(self) -> bytes:
        return (
            _KEY_DATA.pack(self.db_id) + self.header.encode() + _U32.pack(len(self.key)) + self.key
        )

    @classmethod
    def decode(cls, data: bytes) -> KeyData:
        r = Reader(data, "key_data")
        (db_id,) = r.unpack(_KEY_DATA)
        header = LtdbHeader.decode(r.take(LtdbHeader.SIZE))
        key = r.take(r.u32())
        r.done()
        return cls(db_id, header, key)


_PID_SRVID = struct.Struct("<iQ")


@dataclass(frozen=True, slots=True)
class PidSrvid:
    """`ctdb_pid_srvid` (CHECK_PID_SRVID): pid_t then u64 srvid at offset 4,
    12 bytes, not the 16 of the padded C struct (protocol_types.c; the real
    daemon checks for 12)."""

    pid: int
    srvid: int

    def encode(self) -> bytes:
        return _PID_SRVID.pack(self.pid, self.srvid)

    @classmethod
    def decode(cls, data: bytes) -> PidSrvid:
        r = Reader(data, "pid_srvid")
        pid, srvid = r.unpack(_PID_SRVID)
        r.done()
        return cls(pid, srvid)


@dataclass(frozen=True, slots=True)
class Connection:
    """`ctdb_connection` (TCP_CLIENT), 56 bytes: the SMB connection's
    server-side address, then the client's, each a 28-byte sock_addr."""

    src: SockAddr
    dst: SockAddr

    def encode(self) -> bytes:
        return self.src.encode() + self.dst.encode()

    @classmethod
    def decode(cls, data: bytes) -> Connection:
        r = Reader(data, "connection")
        src, dst = r.take(28), r.take(28)
        r.done()
        return cls(SockAddr.decode(src), SockAddr.decode(dst))


# -- public IPs and interfaces -------------------------------------------------------------

_PUBLIC_IP = struct.Struct("<I28s")


@dataclass(frozen=True, slots=True)
class PublicIp:
    """`ctdb_public_ip`, 32 bytes: the pnn hosting the address, the address."""

    pnn: int
    addr: SockAddr


@dataclass(frozen=True, slots=True)
class PublicIpList:
    """`ctdb_public_ip_list` (GET_PUBLIC_IPS' reply): u32 num, num × 32
    bytes. pyctdb manages no public addresses, so it sends the empty list,
    4 zero bytes, which smbd reads as "no multi-channel addresses"."""

    ips: tuple[PublicIp, ...] = ()

    def encode(self) -> bytes:
        return _U32.pack(len(self.ips)) + b"".join(
            _PUBLIC_IP.pack(ip.pnn, ip.addr.encode()) for ip in self.ips
        )

    @classmethod
    def decode(cls, data: bytes) -> PublicIpList:
        r = Reader(data, "public ip list")
        ips = []
        for _ in range(r.count(_PUBLIC_IP.size)):
            pnn, addr = r.unpack(_PUBLIC_IP)
            ips.append(PublicIp(pnn, SockAddr.decode(addr)))
        r.done()
        return cls(tuple(ips))


_IFACE = struct.Struct("<18sHI")


@dataclass(frozen=True, slots=True)
class Iface:
    """`ctdb_iface`, 24 bytes: name in 18 NUL-padded bytes (IFNAMSIZ + 2,
    the last always NUL: Samba's `ctdb_chararray_pull` forces it), link
    state u16, references u32."""

    name: str
    link_state: int = 1
    references: int = 0

    def encode(self) -> bytes:
        raw = self.name.encode()
        if len(raw) > 17 or b"\0" in raw:
            raise invalid(f"interface name {self.name!r} does not fit 17 bytes without NUL")
        return _IFACE.pack(raw, self.link_state, self.references)


@dataclass(frozen=True, slots=True)
class IfaceList:
    """`ctdb_iface_list` (GET_IFACES' reply): u32 num, num × 24 bytes.
    `ctdb status` asks every node for it; pyctdb answers with none."""

    ifaces: tuple[Iface, ...] = ()

    def encode(self) -> bytes:
        return _U32.pack(len(self.ifaces)) + b"".join(i.encode() for i in self.ifaces)

    @classmethod
    def decode(cls, data: bytes) -> IfaceList:
        r = Reader(data, "iface list")
        ifaces = []
        for _ in range(r.count(_IFACE.size)):
            raw, link_state, references = r.unpack(_IFACE)
            try:
                name = raw[:17].split(b"\0", 1)[0].decode()
            except UnicodeDecodeError as exc:
                raise invalid(f"interface name is not UTF-8: {exc}") from None
            ifaces.append(Iface(name, link_state, references))
        r.done()
        return cls(tuple(ifaces))


# -- the full tunable list -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TunableList:
    """`ctdb_tunable_list` (GET_ALL_TUNABLES' reply): 62 u32 in the C
    struct's order (`FIELDS`, protocol.h), 248 bytes. That order is not the
    order LIST_TUNABLES names them in, and it keeps obsolete tunables."""

    FIELDS: ClassVar[tuple[str, ...]] = (
        *("max_redirect_count seqnum_interval control_timeout traverse_timeout".split()),
        *("keepalive_interval keepalive_limit recover_timeout recover_interval".split()),
        *("election_timeout takeover_timeout monitor_interval tickle_update_interval".split()),
        *("script_timeout monitor_timeout_count script_unhealthy_on_timeout".split()),
        *("recovery_grace_period recovery_ban_period database_hash_size".split()),
        *("database_max_dead rerecovery_timeout enable_bans deterministic_public_ips".split()),
        *("reclock_ping_period no_ip_failback disable_ip_failover".split()),
        *("verbose_memory_names recd_ping_timeout recd_ping_failcount log_latency_ms".split()),
        *("reclock_latency_ms recovery_drop_all_ips verify_recovery_lock".split()),
        *("vacuum_interval vacuum_max_run_time repack_limit vacuum_limit".split()),
        *("max_queue_depth_drop_msg allow_unhealthy_db_read stat_history_interval".split()),
        *("deferred_attach_timeout vacuum_fast_path_count lcp2_public_ip_assignment".split()),
        *("allow_client_db_attach recover_pdb_by_seqnum deferred_rebalance_on_node_add".split()),
        *("fetch_collapse hopcount_make_sticky sticky_duration sticky_pindown".split()),
        *("no_ip_takeover db_record_count_warn db_record_size_warn db_size_warn".split()),
        *("pulldb_preallocation_size no_ip_host_on_all_disabled samba3_hack".split()),
        *("mutex_enabled lock_processes_per_db rec_buffer_size_limit".split()),
        *("queue_buffer_size ip_alloc_algorithm allow_mixed_versions".split()),
    )
    values: tuple[int, ...]

    def encode(self) -> bytes:
        if len(self.values) != len(self.FIELDS):
            raise invalid(f"tunable list needs {len(self.FIELDS)} values, got {len(self.values)}")
        return struct.pack(f"<{len(self.values)}I", *self.values)

    @classmethod
    def decode(cls, data: bytes) -> TunableList:
        r = Reader(data, "tunable list")
        values = tuple(r.u32() for _ in cls.FIELDS)
        r.done()
        return cls(values)
