"""Control data (ctdb_controls, ctdb_control_structs) against bytes written out by hand.

Every expected byte string follows the spec's §3.1 and §4 offsets and Samba's
protocol_control.c / protocol_types.c, written as little-endian hex here,
never produced by the code under test.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol.ctdb_control_structs import (
    Connection,
    Iface,
    IfaceList,
    KeyData,
    PidSrvid,
    PublicIp,
    PublicIpList,
    TraverseStart,
    TraverseStartExt,
    TunableList,
    decode_traverse_message,
    traverse_end,
    traverse_record,
)
from ctdb.protocol.ctdb_controls import CONTROLS, HEALTH, NONE, codec_for
from ctdb.protocol.ctdb_opcodes import Control
from ctdb.protocol.ctdb_records import LtdbHeader, RecBuffer, RecData
from ctdb.protocol.ctdb_statistics import LatencyCounter, Statistics
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


def hx(text: str) -> bytes:
    return bytes.fromhex(text)


LOCKING = hx("4dd8197a")  # db_id of locking.tdb, tdb's Jenkins hash (spec §3.2)
SECRETS = hx("84c13271")  # secrets.tdb
# rsn 0x0102030405060708, dmaster 2, reserved1 0, flags AUTOMATIC (0x40000), 4 pad
HEADER_BYTES = hx("0807060504030201 02000000 00000000 00000400 00000000")
HEADER = LtdbHeader(0x0102030405060708, 2, 0x40000)
CLI_SRVID = 0xBE00000000001234  # CTDB_SRVID_CLIENT_RANGE | pid 0x1234, as `ctdb catdb` uses
CLI_SRVID_BYTES = hx("3412000000 0000be")

# sock_addrs: AF_INET 2 in host order, then port and address in network order, zeros to 28
SMB_SERVER = hx("0200 01bd 7f000001") + bytes(20)  # 127.0.0.1:445
SMB_CLIENT = hx("0200 c350 7f000002") + bytes(20)  # 127.0.0.2:50000
NODE0 = hx("0200 0000 0a000001") + bytes(20)  # 10.0.0.1, port 0

TRAVERSE_START = TraverseStart(0x7A19D84D, 7, CLI_SRVID)
TRAVERSE_START_BYTES = LOCKING + hx("07000000") + CLI_SRVID_BYTES
TRAVERSE_EXT = TraverseStartExt(0x7A19D84D, 7, CLI_SRVID, True)
TRAVERSE_EXT_BYTES = TRAVERSE_START_BYTES + hx("01 00000000000000")
TCP_CLIENT = Connection(SockAddr("127.0.0.1", 445), SockAddr("127.0.0.2", 50000))
# SCHEDULE_FOR_DELETION of key "abc": db_id, 4 pad, header, keylen 3, key: 36 + 3 bytes
KEY_DATA_BYTES = LOCKING + hx("00000000") + HEADER_BYTES + hx("03000000") + b"abc"
# CHECK_PID_SRVID: pid 4242 (0x1092), srvid CTDB_SRVID_RELEASE_IP at offset 4, 12 bytes
PID_SRVID_BYTES = hx("92100000 00000000000000f3")
IFACE_BYTES = hx("01000000") + b"eth0" + bytes(14) + hx("0100 02000000")
PUBLIC_IP_BYTES = hx("01000000 01000000") + NODE0
# TRANS3_COMMIT of key "k" with header + "v" into g_lock.tdb: length 16 + 1 + 25 = 42
TRANS3_BYTES = hx("2b432a4d 01000000 2a000000 00000000 01000000 19000000 6b") + HEADER_BYTES
TRANS3_BYTES += b"v"
TRANS3 = RecBuffer(0x4D2A432B, (RecData(0, b"k", HEADER_BYTES + b"v"),))
UPTIME = Uptime((1700000000, 5), (1600000000, 0), (0, 0), (0, 0))
UPTIME_BYTES = hx(
    "00f1536500000000 0500000000000000 00105e5f00000000 0000000000000000"
    "0000000000000000 0000000000000000 0000000000000000 0000000000000000"
)
ALL_TUNABLES = tuple(range(100, 162))
ALL_TUNABLES_BYTES = b"".join(struct.pack("<I", v) for v in ALL_TUNABLES)


def stats_bytes() -> bytes:
    """488 bytes with a distinct value at each offset of the spec's §4.7 table."""
    raw = bytearray(488)
    for offset, value in [
        (0, 3), (32, 9), (36, 0x11), (68, 0x19), (72, 0x21), (84, 0x24), (96, 0x33),
        (168, 0x41), (180, 0x44), (216, 0x51), (276, 0x5F), (280, 0x61), (304, 0x67),
        (308, 0x71), (368, 0x7F), (440, 4), (480, 0x81), (484, 0x82),
    ]:  # fmt: skip
        struct.pack_into("<I", raw, offset, value)
    struct.pack_into("<i4xddd", raw, 104, 1, 0.5, 2.0, 2.5)  # reclock.ctdbd
    struct.pack_into("<i", raw, 136, 2)  # reclock.recd.num
    struct.pack_into("<i", raw, 184, 5)  # locks.latency.num
    struct.pack_into("<i4xddd", raw, 376, 7, 0.0, 0.0, 1.25)  # call_latency
    struct.pack_into("<i", raw, 408, 8)  # childwrite_latency.num
    struct.pack_into("<qqqq", raw, 448, 1700000000, 5, 1700000100, 6)
    return bytes(raw)


STATS = Statistics(
    num_clients=3,
    keepalive_packets_recv=9,
    node=(0x11, 0, 0, 0, 0, 0, 0, 0, 0x19),
    client=(0x21, 0, 0, 0x24),
    timeouts=(0, 0, 0x33),
    reclock_ctdbd=LatencyCounter(1, 0.5, 2.0, 2.5),
    reclock_recd=LatencyCounter(2),
    locks=(0x41, 0, 0, 0x44),
    locks_latency=LatencyCounter(5),
    locks_buckets=(0x51,) + (0,) * 14 + (0x5F,),
    counters=(0x61, 0, 0, 0, 0, 0, 0x67),
    hop_count_bucket=(0x71,) + (0,) * 14 + (0x7F,),
    call_latency=LatencyCounter(7, total=1.25),
    childwrite_latency=LatencyCounter(8),
    num_recoveries=4,
    statistics_start_time=(1700000000, 5),
    statistics_current_time=(1700000100, 6),
    total_ro_delegations=0x81,
    total_ro_revokes=0x82,
)

# opcode, request value, request bytes, reply value, reply bytes: one row per control
ROWS: list[tuple[Control, Any, bytes, Any, bytes]] = [
    (Control.PROCESS_EXISTS, 4242, hx("92100000"), None, b""),
    (Control.STATISTICS, None, b"", STATS, stats_bytes()),
    (Control.PING, None, b"", None, b""),
    (Control.GETDBPATH, 0x7A19D84D, LOCKING, "/v/locking.tdb.0", b"/v/locking.tdb.0\0"),
    (Control.GETVNNMAP, None, b"", VnnMap(2, (0,)), hx("02000000 01000000 00000000")),
    (
        Control.GET_DBMAP,
        None,
        b"",
        DbidMap((Dbid(0x7A19D84D, 0),)),
        hx("01000000") + LOCKING + bytes(4),
    ),
    (Control.GET_RECMODE, None, b"", None, b""),
    (Control.SET_RECMODE, 1, hx("01000000"), None, b""),
    (Control.DB_ATTACH, "locking.tdb", b"locking.tdb\0", 0x7A19D84D, LOCKING),
    (Control.TRAVERSE_START, TRAVERSE_START, TRAVERSE_START_BYTES, None, b""),
    (Control.REGISTER_SRVID, None, b"", None, b""),
    (Control.DEREGISTER_SRVID, None, b"", None, b""),
    (Control.GET_DBNAME, 0x7A19D84D, LOCKING, "locking.tdb", b"locking.tdb\0"),
    (Control.ENABLE_SEQNUM, 0x7A19D84D, LOCKING, None, b""),
    (Control.UPDATE_SEQNUM, 0x7A19D84D, LOCKING, None, b""),
    (Control.GET_PID, None, b"", None, b""),
    (Control.GET_PNN, None, b"", None, b""),
    (Control.TCP_CLIENT, TCP_CLIENT, SMB_SERVER + SMB_CLIENT, None, b""),
    (
        Control.SET_TUNABLE,
        Tunable("RecoverTimeout", 30),
        hx("1e000000 0f000000") + b"RecoverTimeout\0",
        None,
        b"",
    ),
    (
        Control.GET_TUNABLE,
        "ControlTimeout",
        hx("0f000000") + b"ControlTimeout\0",
        60,
        hx("3c000000"),
    ),
    (
        Control.LIST_TUNABLES,
        None,
        b"",
        VarList(("SeqnumInterval",)),
        hx("0f000000") + b"SeqnumInterval\0",
    ),
    (Control.GET_ALL_TUNABLES, None, b"", TunableList(ALL_TUNABLES), ALL_TUNABLES_BYTES),
    (Control.DB_ATTACH_PERSISTENT, "secrets.tdb", b"secrets.tdb\0", 0x7132C184, SECRETS),
    (Control.UPTIME, None, b"", UPTIME, UPTIME_BYTES),
    (Control.GET_CAPABILITIES, None, b"", 0x00030003, hx("03000300")),
    (Control.GET_PUBLIC_IPS, None, b"", PublicIpList(), hx("00000000")),
    (
        Control.GET_NODEMAP,
        None,
        b"",
        NodeMap((NodeAndFlags(0, 0, SockAddr("10.0.0.1")),)),
        hx("01000000 00000000 00000000") + NODE0,
    ),
    (Control.TRANS3_COMMIT, TRANS3, TRANS3_BYTES, None, b""),
    (Control.GET_DB_SEQNUM, 0x7132C184, SECRETS + hx("00000000"), 5, hx("0500000000000000")),
    (Control.DB_GET_HEALTH, 0x7A19D84D, LOCKING, None, b""),
    (Control.GET_IFACES, None, b"", IfaceList(), hx("00000000")),
    (Control.SCHEDULE_FOR_DELETION, KeyData(0x7A19D84D, HEADER, b"abc"), KEY_DATA_BYTES, None, b""),
    (Control.SET_DB_READONLY, 0x7A19D84D, LOCKING, None, b""),
    (Control.TRAVERSE_START_EXT, TRAVERSE_EXT, TRAVERSE_EXT_BYTES, None, b""),
    (Control.SET_DB_STICKY, 0x7A19D84D, LOCKING, None, b""),
    (Control.GET_RUNSTATE, None, b"", 5, hx("05000000")),
    (Control.DB_OPEN_FLAGS, 0x7A19D84D, LOCKING, 0x1C41, hx("411c0000")),
    (Control.DB_ATTACH_REPLICATED, "rep.tdb", b"rep.tdb\0", 0x12345678, hx("78563412")),
    (Control.CHECK_PID_SRVID, PidSrvid(4242, 0xF300000000000000), PID_SRVID_BYTES, None, b""),
]
IDS = [row[0].name for row in ROWS]


def test_every_control_has_a_codec_and_a_row_here() -> None:
    assert set(CONTROLS) == set(Control)
    assert [row[0] for row in ROWS] == list(Control)


@pytest.mark.parametrize(("opcode", "req", "req_raw", "rep", "rep_raw"), ROWS, ids=IDS)
def test_control_data_encodes_and_decodes(
    opcode: Control, req: Any, req_raw: bytes, rep: Any, rep_raw: bytes
) -> None:
    codec = codec_for(opcode)
    assert codec.request.encode(req) == req_raw
    assert codec.request.decode(req_raw) == req
    assert codec.reply.encode(rep) == rep_raw
    assert codec.reply.decode(rep_raw) == rep


@pytest.mark.parametrize(("opcode", "req", "req_raw", "rep", "rep_raw"), ROWS, ids=IDS)
def test_trailing_garbage_and_truncation_are_invalid(
    opcode: Control, req: Any, req_raw: bytes, rep: Any, rep_raw: bytes
) -> None:
    codec = codec_for(opcode)
    for side, raw in ((codec.request, req_raw), (codec.reply, rep_raw)):
        bad = [raw[:-1]] if raw else []
        if raw or side is NONE:  # one NUL is a valid (unhealthy) reason for DB_GET_HEALTH
            bad.append(raw + b"\0")
        for data in bad:
            with pytest.raises(CtdbError) as info:
                side.decode(data)
            assert info.value.code == ErrorCode.INVALID, (opcode, data)


def test_status_carries_the_answer_of_exactly_these_controls() -> None:
    in_status = {op for op, codec in CONTROLS.items() if codec.result_in_status}
    assert in_status == {
        Control.PROCESS_EXISTS,
        Control.PING,
        Control.GET_RECMODE,
        Control.GET_PID,
        Control.GET_PNN,
        Control.CHECK_PID_SRVID,
    }
    assert all(CONTROLS[op].reply is NONE for op in in_status)


@pytest.mark.parametrize("opcode", [31, 2, 999, -1])  # GET_RECMASTER (obsolete), unassigned
def test_an_opcode_outside_the_table_is_not_supported(opcode: int) -> None:
    with pytest.raises(CtdbError) as info:
        codec_for(opcode)
    assert info.value.code == ErrorCode.NOT_SUPPORTED


def test_health_is_no_data_when_healthy_and_a_string_otherwise() -> None:
    assert HEALTH.encode(None) == b"" and HEALTH.decode(b"") is None
    assert HEALTH.encode("wiped") == b"wiped\0" and HEALTH.decode(b"wiped\0") == "wiped"


def test_statistics_and_tunable_list_sizes() -> None:
    assert Statistics.SIZE == 488 and Statistics().encode() == bytes(488)
    # explicit pads at 100, 372 and 444 are ignored when read
    padded = bytearray(stats_bytes())
    for offset in (100, 372, 444):
        padded[offset : offset + 4] = b"\xff" * 4
    assert Statistics.decode(bytes(padded)) == STATS
    assert len(TunableList.FIELDS) == 62 and len(ALL_TUNABLES_BYTES) == 248
    # struct order differs from LIST_TUNABLES' order (spec §4.6)
    assert TunableList.FIELDS[:2] == ("max_redirect_count", "seqnum_interval")
    assert TunableList.FIELDS[39:43] == (
        "deferred_attach_timeout",
        "vacuum_fast_path_count",
        "lcp2_public_ip_assignment",
        "allow_client_db_attach",
    )
    assert TunableList.FIELDS[-1] == "allow_mixed_versions"


def test_lists_with_entries() -> None:
    public = PublicIpList((PublicIp(1, SockAddr("10.0.0.1")),))
    assert public.encode() == PUBLIC_IP_BYTES and PublicIpList.decode(PUBLIC_IP_BYTES) == public
    ifaces = IfaceList((Iface("eth0", 1, 2),))
    assert ifaces.encode() == IFACE_BYTES and IfaceList.decode(IFACE_BYTES) == ifaces


def test_traverse_messages() -> None:
    # key "k1", data = header + "v": length 16 + 2 + 25 = 43 (0x2b), reqid 7
    rec_bytes = hx("2b000000 07000000 02000000 19000000 6b31") + HEADER_BYTES + b"v"
    assert traverse_record(7, b"k1", HEADER_BYTES + b"v") == rec_bytes
    assert decode_traverse_message(rec_bytes) == RecData(7, b"k1", HEADER_BYTES + b"v")
    end = hx("10000000 07000000 00000000 00000000")
    assert traverse_end(7) == end
    assert decode_traverse_message(end) is None
    with pytest.raises(CtdbError) as info:
        traverse_record(7, b"", HEADER_BYTES)
    assert info.value.code == ErrorCode.INVALID


@pytest.mark.parametrize(
    ("decode", "raw"),
    [
        (TraverseStartExt.decode, TRAVERSE_START_BYTES + hx("02 00000000000000")),  # bool 2
        (TraverseStart.decode, TRAVERSE_EXT_BYTES),
        (KeyData.decode, KEY_DATA_BYTES[:32] + hx("ffffffff") + b"abc"),  # keylen lies
        (KeyData.decode, KEY_DATA_BYTES[:32] + hx("02000000") + b"abc"),
        (PidSrvid.decode, PID_SRVID_BYTES + bytes(4)),  # the 16-byte C struct
        (Connection.decode, SMB_SERVER + hx("0100") + bytes(26)),  # AF_UNIX client
        (PublicIpList.decode, hx("ffffffff")),  # a count the bytes cannot hold
        (PublicIpList.decode, hx("02000000") + PUBLIC_IP_BYTES[4:]),
        (IfaceList.decode, hx("ffffffff") + IFACE_BYTES[4:]),
        (IfaceList.decode, hx("01000000") + b"\xff" + bytes(17) + hx("0100 02000000")),
        (Statistics.decode, bytes(487)),
        (TunableList.decode, ALL_TUNABLES_BYTES[:-4]),
        (codec_for(Control.GET_DB_SEQNUM).request.decode, SECRETS),  # the 8-byte form only
        (codec_for(Control.DB_OPEN_FLAGS).reply.decode, hx("411c000000000000")),
    ],
)
def test_malformed_structs_are_invalid(decode: Any, raw: bytes) -> None:
    with pytest.raises(CtdbError) as info:
        decode(raw)
    assert info.value.code == ErrorCode.INVALID


def test_encoding_refuses_what_cannot_be_represented() -> None:
    for make in (
        lambda: Iface("a-very-long-ifname").encode(),  # 18 bytes, no room for the NUL
        lambda: Statistics(node=(1, 2)).encode(),
        lambda: TunableList((1,) * 61).encode(),
        lambda: codec_for(Control.PING).request.encode(b"x"),
    ):
        with pytest.raises(CtdbError) as info:
            make()
        assert info.value.code == ErrorCode.INVALID


# -- round trips and arbitrary bytes ---------------------------------------------------------

u16 = st.integers(min_value=0, max_value=2**16 - 1)
u32 = st.integers(min_value=0, max_value=2**32 - 1)
i32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
i64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
addrs = st.builds(SockAddr, st.ip_addresses().map(str), u16)
headers = st.builds(LtdbHeader, u64, u32, u32, u32)
ifname = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=4)
floats = st.floats(allow_nan=False)
latencies = st.builds(LatencyCounter, i32, floats, floats, floats)


def u32s(n: int) -> st.SearchStrategy[tuple[int, ...]]:
    return st.tuples(*[u32] * n)


statistics = st.builds(
    Statistics,
    *[u32] * 9,
    node=u32s(9),
    client=u32s(4),
    timeouts=u32s(3),
    reclock_ctdbd=latencies,
    reclock_recd=latencies,
    locks=u32s(4),
    locks_latency=latencies,
    locks_buckets=u32s(16),
    counters=u32s(7),
    hop_count_bucket=u32s(16),
    call_latency=latencies,
    childwrite_latency=latencies,
    num_recoveries=u32,
    statistics_start_time=st.tuples(i64, i64),
    statistics_current_time=st.tuples(i64, i64),
    total_ro_delegations=u32,
    total_ro_revokes=u32,
)

structs = st.one_of(
    st.builds(TraverseStart, u32, u32, u64),
    st.builds(TraverseStartExt, u32, u32, u64, st.booleans()),
    st.builds(KeyData, u32, headers, st.binary(max_size=40)),
    st.builds(PidSrvid, i32, u64),
    st.builds(Connection, addrs, addrs),
    st.builds(PublicIpList, st.lists(st.builds(PublicIp, u32, addrs), max_size=4).map(tuple)),
    st.builds(IfaceList, st.lists(st.builds(Iface, ifname, u16, u32), max_size=4).map(tuple)),
    statistics,
    st.builds(TunableList, u32s(62)),
)


@given(structs)
def test_structs_round_trip(value: Any) -> None:
    assert type(value).decode(value.encode()) == value


@given(st.sampled_from(list(Control)), st.binary(max_size=600))
def test_arbitrary_control_data_decodes_or_fails_invalid(opcode: Control, data: bytes) -> None:
    codec = codec_for(opcode)
    for side in (codec.request, codec.reply):
        try:
            value = side.decode(data)
        except CtdbError as exc:
            assert exc.code == ErrorCode.INVALID
        else:  # whatever decodes is canonical: it encodes back to itself or fails cleanly
            assert side.decode(side.encode(value)) == value


@given(st.binary(min_size=488, max_size=488))
def test_any_488_bytes_are_statistics(data: bytes) -> None:
    stats = Statistics.decode(data)
    assert stats.encode()[:100] == data[:100]
