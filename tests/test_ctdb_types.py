"""CTDB structs (ctdb_types, ctdb_scalars, ctdb_records) against bytes written out by hand.

Expected bytes follow the spec's §4 offsets and protocol_types.c, written as
little-endian hex here, never produced by the code under test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol.ctdb_records import LtdbHeader, RecBuffer, RecData
from ctdb.protocol.ctdb_scalars import (
    decode_cstring,
    decode_stringn,
    decode_u32,
    encode_cstring,
    encode_i32,
    encode_stringn,
    encode_u32,
    encode_u64,
)
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


# rsn 0x0102030405060708, dmaster 2, reserved1 0, flags AUTOMATIC (0x40000), 4 pad
HEADER_BYTES = hx("0807060504030201 02000000 00000000 00000400 00000000")
HEADER = LtdbHeader(0x0102030405060708, 2, 0x40000)

# key "k1", data = header + "v": length 16 + 2 + 25 = 43 (0x2b), reqid 7
REC_BYTES = hx("2b000000 07000000 02000000 19000000 6b31") + HEADER_BYTES + b"v"
REC = RecData(7, b"k1", HEADER_BYTES + b"v")

# 127.0.0.1 port 4379 (0x111b): AF_INET 2 in host order, port and address in network order
V4_BYTES = hx("0200 111b 7f000001") + bytes(20)
# fe80::1 port 0: AF_INET6 10, port, flowinfo 0, address, scope id 0
V6_BYTES = hx("0a00 0000 00000000 fe800000000000000000000000000001 00000000")

TABLE: list[tuple[str, Any, bytes, Callable[[bytes], Any]]] = [
    ("ltdb header", HEADER, HEADER_BYTES, LtdbHeader.decode),
    ("rec_data", REC, REC_BYTES, RecData.decode),
    (
        "rec_buffer, two records",
        RecBuffer(0x7A19D84D, (REC, RecData(0, b"", b""))),
        hx("4dd8197a 02000000") + REC_BYTES + hx("10000000 00000000 00000000 00000000"),
        RecBuffer.decode,
    ),
    ("rec_buffer, empty", RecBuffer(5), hx("05000000 00000000"), RecBuffer.decode),
    ("sock_addr v4", SockAddr("127.0.0.1", 4379), V4_BYTES, SockAddr.decode),
    ("sock_addr v6", SockAddr("fe80::1"), V6_BYTES, SockAddr.decode),
    (
        "node map",
        NodeMap(
            (
                NodeAndFlags(0, 0, SockAddr("127.0.0.1", 4379)),
                NodeAndFlags(1, 0x1, SockAddr("fe80::1")),
            )
        ),
        hx("02000000") + hx("00000000 00000000") + V4_BYTES + hx("01000000 01000000") + V6_BYTES,
        NodeMap.decode,
    ),
    (
        "vnn map",
        VnnMap(0x12345678, (0, 1, 2)),
        hx("78563412 03000000 00000000 01000000 02000000"),
        VnnMap.decode,
    ),
    (
        "dbid map",
        DbidMap((Dbid(0x7A19D84D, 0), Dbid(0x7132C184, 0x01))),
        hx("02000000 4dd8197a 00 000000 84c13271 01 000000"),
        DbidMap.decode,
    ),
    (
        "uptime",
        Uptime((1700000000, 5), (1600000000, 0), (0, 0), (-1, 999999)),
        hx(
            "00f1536500000000 0500000000000000 00105e5f00000000 0000000000000000"
            "0000000000000000 0000000000000000 ffffffffffffffff 3f420f0000000000"
        ),
        Uptime.decode,
    ),
    (
        "tunable (SET_TUNABLE)",
        Tunable("SeqnumInterval", 1000),
        hx("e8030000 0f000000") + b"SeqnumInterval\0",
        Tunable.decode,
    ),
    (
        "var list",
        VarList(("SeqnumInterval", "ControlTimeout")),
        hx("1e000000") + b"SeqnumInterval:ControlTimeout\0",
        VarList.decode,
    ),
]


@pytest.mark.parametrize(("name", "value", "raw", "decode"), TABLE, ids=[t[0] for t in TABLE])
def test_structs_encode_and_decode(
    name: str, value: Any, raw: bytes, decode: Callable[[bytes], Any]
) -> None:
    assert value.encode() == raw
    assert decode(raw) == value


@pytest.mark.parametrize(("name", "value", "raw", "decode"), TABLE, ids=[t[0] for t in TABLE])
def test_trailing_garbage_and_truncation_are_invalid(
    name: str, value: Any, raw: bytes, decode: Callable[[bytes], Any]
) -> None:
    for bad in (raw + b"\0", raw[:-1]):
        with pytest.raises(CtdbError) as info:
            decode(bad)
        assert info.value.code == ErrorCode.INVALID


def test_scalars_and_strings() -> None:
    assert encode_u32(0x7A19D84D) == hx("4dd8197a")
    assert decode_u32(hx("4dd8197a")) == 0x7A19D84D
    assert encode_i32(0x1C41) == hx("411c0000") and encode_i32(-1) == hx("ffffffff")
    assert encode_u64(1) == hx("0100000000000000")
    assert encode_cstring("locking.tdb") == b"locking.tdb\0"
    assert decode_cstring(b"locking.tdb\0") == "locking.tdb"
    # GET_TUNABLE's request: u32 length with the NUL, then the name
    assert encode_stringn("ControlTimeout") == hx("0f000000") + b"ControlTimeout\0"
    assert decode_stringn(hx("0f000000") + b"ControlTimeout\0") == "ControlTimeout"


@pytest.mark.parametrize(
    ("decode", "raw"),
    [
        (decode_u32, b"\1\0\0"),
        (decode_u32, b"\1\0\0\0\0"),
        (decode_cstring, b"no nul"),
        (decode_cstring, b"two\0nuls\0"),
        (decode_cstring, b"\xff\0"),
        (decode_stringn, hx("10000000") + b"ControlTimeout\0"),
        (LtdbHeader.decode, HEADER_BYTES[:23]),
        (SockAddr.decode, hx("0100") + bytes(26)),  # AF_UNIX means nothing here
        (NodeMap.decode, hx("ffffffff")),  # a count the bytes cannot hold
        (VnnMap.decode, hx("01000000 02000000 00000000")),
        (RecData.decode, hx("2c000000") + REC_BYTES[4:]),  # length disagrees with the lengths
        (RecBuffer.decode, hx("05000000 01000000")),  # one record promised, none present
        (RecBuffer.decode, hx("05000000 00000000") + REC_BYTES),  # a record not counted
        (Tunable.decode, hx("e8030000 ff000000") + b"x\0"),
    ],
)
def test_malformed_structs_are_invalid(decode: Callable[[bytes], Any], raw: bytes) -> None:
    with pytest.raises(CtdbError) as info:
        decode(raw)
    assert info.value.code == ErrorCode.INVALID


def test_ltdb_header_split() -> None:
    assert LtdbHeader.split(HEADER_BYTES + b"data") == (HEADER, b"data")
    assert LtdbHeader.split(HEADER_BYTES) == (HEADER, b"")
    with pytest.raises(CtdbError):
        LtdbHeader.split(HEADER_BYTES[:20])


def test_var_list_reads_the_real_daemons_leading_colon() -> None:
    # ctdbd writes ":SeqnumInterval:ControlTimeout" (common/tunable.c); strtok skips empties
    raw = hx("1f000000") + b":SeqnumInterval:ControlTimeout\0"
    assert VarList.decode(raw) == VarList(("SeqnumInterval", "ControlTimeout"))


def test_encoding_refuses_what_cannot_be_represented() -> None:
    for make in (
        lambda: encode_cstring("a\0b"),
        lambda: VarList(("a:b",)).encode(),
    ):
        with pytest.raises(CtdbError) as info:
            make()
        assert info.value.code == ErrorCode.INVALID


# -- round trips --------------------------------------------------------------------------

u8 = st.integers(min_value=0, max_value=255)
u16 = st.integers(min_value=0, max_value=2**16 - 1)
u32 = st.integers(min_value=0, max_value=2**32 - 1)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
i64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
name = st.text(st.characters(codec="utf-8", exclude_characters="\0:"), min_size=1)
addrs = st.builds(SockAddr, st.ip_addresses().map(str), u16)
recs = st.builds(RecData, u32, st.binary(max_size=40), st.binary(max_size=40))
timevals = st.tuples(i64, i64)

structs = st.one_of(
    st.builds(LtdbHeader, u64, u32, u32, u32),
    recs,
    st.builds(RecBuffer, u32, st.lists(recs, max_size=5).map(tuple)),
    addrs,
    st.builds(NodeMap, st.lists(st.builds(NodeAndFlags, u32, u32, addrs), max_size=5).map(tuple)),
    st.builds(VnnMap, u32, st.lists(u32, max_size=8).map(tuple)),
    st.builds(DbidMap, st.lists(st.builds(Dbid, u32, u8), max_size=8).map(tuple)),
    st.builds(Uptime, timevals, timevals, timevals, timevals),
    st.builds(Tunable, name, u32),
    st.builds(VarList, st.lists(name, max_size=8).map(tuple)),
)


@given(structs)
def test_structs_round_trip(value: Any) -> None:
    assert type(value).decode(value.encode()) == value


@given(st.binary(max_size=120))
def test_arbitrary_bytes_decode_or_fail_invalid(data: bytes) -> None:
    for decode in (RecBuffer.decode, NodeMap.decode, VnnMap.decode, DbidMap.decode, VarList.decode):
        try:
            decode(data)
        except CtdbError as exc:
            assert exc.code == ErrorCode.INVALID
