"""CTDB's client packets (ctdb.protocol.ctdb_wire) against bytes written out by hand.

Every expected byte string below was derived from the spec's offsets
(/work/shared/reference/ctdb-wire-protocol.md §1) and Samba's marshalling
(protocol_call.c, protocol_message.c, protocol_control.c), not produced by
the code under test: little-endian uint32s, the magic as bytes 42 44 54 43.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol.ctdb_opcodes import CURRENT_NODE, NULL_FUNC, Control, Operation
from ctdb.protocol.ctdb_wire import (
    BadPacket,
    Header,
    Packet,
    PacketDecoder,
    ReplyCall,
    ReplyControl,
    ReqCall,
    ReqControl,
    ReqMessage,
    UnknownPacket,
    decode_packet,
)


def hx(text: str) -> bytes:
    return bytes.fromhex(text)


# header words, little endian
MAGIC_VERSION = "42445443 01000000"
CURRENT = "010000f0"

# -- table: packets as Samba's clients send them, and as the daemon must send them ----------

# The new client (`ctdb` CLI) asks GET_PNN: 60 bytes padded to 64, length 64.
GET_PNN_NEW_CLIENT = hx(
    "40000000" + MAGIC_VERSION + "00000000 07000000" + CURRENT + "00000000 01000000"
    "23000000 00000000 0000000000000000 00000000 00000000 00000000"
    "00000000"
)
# smbd does not pad: DB_OPEN_FLAGS with the 4-byte db_id of locking.tdb, length 64
# only because 60 + 4 is; dest 0, src 0, reqid 9.
DB_OPEN_FLAGS_SMBD = hx(
    "40000000" + MAGIC_VERSION + "00000000 07000000 00000000 00000000 09000000"
    "95000000 00000000 0000000000000000 00000000 00000000 04000000"
    "4dd8197a"
)
# smbd REGISTER_SRVID with NOREPLY unset and no data: 60 bytes, not a multiple of 8.
REGISTER_SRVID_SMBD = hx(
    "3c000000" + MAGIC_VERSION + "00000000 07000000 00000000 00000000 02000000"
    "17000000 00000000 00000000000001f1 00000000 00000000 00000000"
)
# smbd migrates key "abc": REQ_CALL flags IMMEDIATE_MIGRATION, callid NULL_FUNC, 59 bytes.
REQ_CALL_SMBD = hx(
    "3b000000" + MAGIC_VERSION + "00000000 00000000 00000000 00000000 03000000"
    "01000000 4dd8197a 010000ff 00000000 03000000 00000000"
    "616263"
)
# smbd broadcasts a 3-byte message to SAMBA_PROCESS, generation 1, length 47.
REQ_MESSAGE_SMBD = hx(
    "2f000000" + MAGIC_VERSION + "01000000 05000000 040000f0 00000000 00000000"
    "020000000000 00fe 03000000"
    "78797a"
)

TABLE: list[tuple[str, bytes, Packet]] = [
    (
        "GET_PNN from the ctdb tool",
        GET_PNN_NEW_CLIENT,
        ReqControl(Header(1, CURRENT_NODE, 0, 0), Control.GET_PNN),
    ),
    (
        "DB_OPEN_FLAGS from smbd",
        DB_OPEN_FLAGS_SMBD,
        ReqControl(Header(9, 0, 0, 0), Control.DB_OPEN_FLAGS, hx("4dd8197a")),
    ),
    (
        "REGISTER_SRVID from smbd",
        REGISTER_SRVID_SMBD,
        ReqControl(Header(2, 0, 0, 0), Control.REGISTER_SRVID, srvid=0xF101000000000000),
    ),
    (
        "REQ_CALL from smbd",
        REQ_CALL_SMBD,
        ReqCall(Header(3, 0, 0, 0), flags=1, db_id=0x7A19D84D, callid=NULL_FUNC, key=b"abc"),
    ),
    (
        "REQ_MESSAGE from smbd",
        REQ_MESSAGE_SMBD,
        ReqMessage(Header(0, 0xF0000004, 0, 1), 0xFE00000000000002, b"xyz"),
    ),
]


@pytest.mark.parametrize(("name", "raw", "packet"), TABLE, ids=[t[0] for t in TABLE])
def test_client_packets_decode(name: str, raw: bytes, packet: Packet) -> None:
    assert decode_packet(raw) == packet
    assert PacketDecoder().feed(raw) == [packet]


def test_the_new_clients_padded_control_is_what_encode_gives() -> None:
    packet = TABLE[0][2]
    assert isinstance(packet, ReqControl)
    assert packet.encode() == GET_PNN_NEW_CLIENT


DAEMON_TABLE: list[tuple[str, Packet, bytes]] = [
    (
        # 40 bytes of REPLY_CALL, raised to sizeof(ctdb_reply_call_old) = 44, padded to 48
        "REPLY_CALL, no data",
        ReplyCall(Header(3, 0, 5, 0x1234), 0),
        hx(
            "30000000" + MAGIC_VERSION + "34120000 01000000 00000000 05000000 03000000"
            "00000000 00000000 0000000000000000"
        ),
    ),
    (
        "REPLY_CALL, 5 bytes of data",
        ReplyCall(Header(3, 0, 5, 0x1234), 0, b"hello"),
        hx(
            "30000000" + MAGIC_VERSION + "34120000 01000000 00000000 05000000 03000000"
            "00000000 05000000 68656c6c6f 000000"
        ),
    ),
    (
        "REPLY_CALL failing",
        ReplyCall(Header(3), -1),
        hx(
            "30000000" + MAGIC_VERSION + "00000000 01000000" + CURRENT + "00000000 03000000"
            "ffffffff 00000000 0000000000000000"
        ),
    ),
    (
        # the leader broadcast: srvid CTDB_SRVID_LEADER, data = u32 pnn 2; 44 + 4 = 48
        "REQ_MESSAGE leader",
        ReqMessage(Header(0, 0, 2, 7), 0xF101000000000000, hx("02000000")),
        hx(
            "30000000" + MAGIC_VERSION + "07000000 05000000 00000000 02000000 00000000"
            "00000000000001f1 04000000 02000000"
        ),
    ),
    (
        # GET_PNN's answer is in status: 44 bytes raised to the old struct's 48
        "REPLY_CONTROL status only",
        ReplyControl(Header(1, 0, 2, 7), 2),
        hx(
            "30000000" + MAGIC_VERSION + "07000000 08000000 00000000 02000000 01000000"
            "02000000 00000000 00000000 00000000"
        ),
    ),
    (
        "REPLY_CONTROL with data",
        ReplyControl(Header(1, 0, 2, 7), 0, hx("4dd8197a")),
        hx(
            "30000000" + MAGIC_VERSION + "07000000 08000000 00000000 02000000 01000000"
            "00000000 04000000 00000000 4dd8197a"
        ),
    ),
    (
        # errmsg without NUL right after the (empty) data: 44 + 33 = 77, padded to 80
        "REPLY_CONTROL failing with a message",
        ReplyControl(Header(4, 0, 2, 7), -1, errmsg=b"ctdb_control to disconnected node"),
        hx(
            "50000000" + MAGIC_VERSION + "07000000 08000000 00000000 02000000 04000000"
            "ffffffff 00000000 21000000"
        )
        + b"ctdb_control to disconnected node"
        + bytes(3),
    ),
]


@pytest.mark.parametrize(("name", "packet", "raw"), DAEMON_TABLE, ids=[t[0] for t in DAEMON_TABLE])
def test_daemon_packets_encode(name: str, packet: Packet, raw: bytes) -> None:
    assert isinstance(packet, ReplyCall | ReqMessage | ReplyControl)
    assert packet.encode() == raw
    assert decode_packet(raw) == packet


def test_a_failing_control_reply_cannot_carry_data() -> None:
    with pytest.raises(CtdbError) as info:
        ReplyControl(Header(1), -1, b"data").encode()
    assert info.value.code == ErrorCode.INVALID


def test_noreply_flag() -> None:
    assert ReqControl(Header(1), Control.TCP_CLIENT, flags=0x1).noreply
    assert not ReqControl(Header(1), Control.TCP_CLIENT, flags=0x20000).noreply


# -- what the codec does not model --------------------------------------------------------


def test_unknown_operations_decode_as_unknown_packets() -> None:
    dmaster = hx("28000000" + MAGIC_VERSION + "00000000 02000000 00000000 00000000 0b000000")
    dmaster += hx("0102030405060708")
    never = hx("20000000" + MAGIC_VERSION + "00000000 63000000 00000000 00000000 0c000000")
    out = PacketDecoder().feed(dmaster + never)
    assert out == [
        UnknownPacket(Header(11, 0, 0, 0), Operation.REQ_DMASTER, hx("0102030405060708")),
        UnknownPacket(Header(12, 0, 0, 0), 99, b""),
    ]


def test_unknown_control_opcode_still_decodes() -> None:
    raw = ReqControl(Header(5), 4242, b"xx").encode()
    (packet,) = PacketDecoder().feed(raw)
    assert isinstance(packet, ReqControl) and packet.opcode == 4242 and packet.data == b"xx"


# -- malformed input ----------------------------------------------------------------------


def expect_error(code: ErrorCode, decoder: PacketDecoder, data: bytes) -> CtdbError:
    with pytest.raises(CtdbError) as info:
        decoder.feed(data)
    assert info.value.code == code
    return info.value


def test_short_header_in_a_whole_packet() -> None:
    with pytest.raises(CtdbError) as info:
        decode_packet(GET_PNN_NEW_CLIENT[:31])
    assert info.value.code == ErrorCode.PROTOCOL


def test_length_field_disagreeing_with_a_whole_packet() -> None:
    with pytest.raises(CtdbError) as info:
        decode_packet(GET_PNN_NEW_CLIENT + bytes(8))
    assert info.value.code == ErrorCode.PROTOCOL


def test_bad_magic() -> None:
    raw = bytearray(GET_PNN_NEW_CLIENT)
    raw[4] = 0x41
    expect_error(ErrorCode.PROTOCOL, PacketDecoder(), bytes(raw[:12]))


def test_wrong_version() -> None:
    raw = bytearray(GET_PNN_NEW_CLIENT)
    raw[8] = 2
    err = expect_error(ErrorCode.PROTOCOL, PacketDecoder(), bytes(raw))
    assert "version 2" in err.message


@pytest.mark.parametrize("length", [0, 4, 31])
def test_length_below_the_header_is_refused_from_its_four_bytes(length: int) -> None:
    expect_error(ErrorCode.PROTOCOL, PacketDecoder(), struct.pack("<I", length))


def test_length_above_the_maximum_is_refused_before_buffering() -> None:
    decoder = PacketDecoder(max_packet=1024)
    expect_error(ErrorCode.TOO_BIG, decoder, struct.pack("<I", 1025))
    assert decoder.buffered == 0
    decoder = PacketDecoder(max_packet=1024)
    assert decoder.feed(ReqMessage(Header(1), 7, bytes(1024 - 44)).encode()) != []


def test_a_failed_decoder_stays_failed() -> None:
    decoder = PacketDecoder()
    expect_error(ErrorCode.PROTOCOL, decoder, struct.pack("<I", 3))
    expect_error(ErrorCode.PROTOCOL, decoder, GET_PNN_NEW_CLIENT)


def test_truncated_body_is_a_bad_packet_and_the_stream_goes_on() -> None:
    # REQ_CONTROL declaring 100 bytes of data in a 64-byte packet
    lying = bytearray(GET_PNN_NEW_CLIENT)
    lying[56:60] = struct.pack("<I", 100)
    # REQ_CALL too short for its fixed part (40 bytes: header + 8)
    short_call = hx("28000000" + MAGIC_VERSION + "00000000 00000000 00000000 00000000 06000000")
    short_call += bytes(8)
    out = PacketDecoder().feed(bytes(lying) + short_call + GET_PNN_NEW_CLIENT)
    assert len(out) == 3
    first, second, third = out
    assert isinstance(first, BadPacket) and first.code == ErrorCode.PROTOCOL
    assert first.header == Header(1, CURRENT_NODE, 0, 0) and first.operation == 7
    assert isinstance(second, BadPacket) and second.header.reqid == 6
    assert second.operation == Operation.REQ_CALL
    assert third == TABLE[0][2]


@pytest.mark.parametrize(
    "packet",
    [
        ReqCall(Header(1), 0, 1, NULL_FUNC, b"key", b"calldata++"),
        ReplyCall(Header(1), 0, b"0123456789"),
        ReqMessage(Header(1), 5, b"0123456789"),
        ReplyControl(Header(1), 0, b"data", b"error text"),
    ],
)
def test_each_body_refuses_payloads_longer_than_the_packet(packet: Packet) -> None:
    assert isinstance(packet, ReqCall | ReplyCall | ReqMessage | ReplyControl)
    raw = bytearray(packet.encode())
    struct.pack_into("<I", raw, 0, len(raw) - 8)  # drop the last payload bytes
    out = decode_packet(bytes(raw[:-8]))
    assert isinstance(out, BadPacket) and "declares" in out.message


# -- streaming ----------------------------------------------------------------------------

STREAM = b"".join(t[1] for t in TABLE) + b"".join(t[2] for t in DAEMON_TABLE)
EXPECTED = [t[2] for t in TABLE] + [t[1] for t in DAEMON_TABLE]


def test_one_byte_at_a_time_gives_the_same_packets() -> None:
    decoder = PacketDecoder()
    out: list[Packet | BadPacket] = []
    for i in range(len(STREAM)):
        out.extend(decoder.feed(STREAM[i : i + 1]))
    assert out == EXPECTED == PacketDecoder().feed(STREAM)
    assert decoder.buffered == 0


@given(st.lists(st.integers(min_value=1, max_value=len(STREAM)), max_size=20))
def test_any_chunking_gives_the_same_packets(cuts: list[int]) -> None:
    decoder = PacketDecoder()
    out: list[Packet | BadPacket] = []
    bounds = [0, *sorted(cuts), len(STREAM)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        out.extend(decoder.feed(STREAM[start:end]))
    assert out == EXPECTED


# -- round trips --------------------------------------------------------------------------

u32 = st.integers(min_value=0, max_value=2**32 - 1)
i32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
blob = st.binary(max_size=64)
headers = st.builds(Header, u32, u32, u32, u32)

packets = st.one_of(
    st.builds(ReqCall, headers, u32, u32, u32, blob, blob, u32),
    st.builds(ReplyCall, headers, i32, blob),
    st.builds(ReqMessage, headers, u64, blob),
    st.builds(ReqControl, headers, u32, blob, u64, u32),
    st.builds(ReplyControl, headers, st.just(0), blob, blob),
    st.builds(ReplyControl, headers, i32.filter(bool), st.just(b""), blob),
)


@settings(max_examples=300)
@given(st.lists(packets, max_size=5))
def test_packets_round_trip_through_the_stream(items: list[Packet]) -> None:
    encoded = []
    for p in items:
        assert not isinstance(p, UnknownPacket)
        raw = p.encode()
        assert len(raw) % 8 == 0 and struct.unpack_from("<I", raw)[0] == len(raw)
        encoded.append(raw)
    assert PacketDecoder().feed(b"".join(encoded)) == items


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_packets_or_a_ctdb_error(data: bytes) -> None:
    try:
        PacketDecoder(max_packet=4096).feed(data)
    except CtdbError as exc:
        assert exc.code in (ErrorCode.PROTOCOL, ErrorCode.TOO_BIG)
