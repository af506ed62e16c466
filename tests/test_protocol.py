"""The client protocol and the shared framing, without sockets (sans-IO)."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol import client as protocol
from transport.framing import FrameReader, FrameTooLarge, frame


def raw_frame(obj: object) -> bytes:
    return frame(msgpack.packb(obj, use_bin_type=True))


# -- framing -----------------------------------------------------------------------------


def test_frame_is_big_endian_length_prefix() -> None:
    assert frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert frame(b"") == b"\x00\x00\x00\x00"


def test_partial_feeds_byte_by_byte() -> None:
    payloads = [b"hello", b"", b"x" * 300, bytes(range(256))]
    stream = b"".join(frame(p) for p in payloads)
    reader = FrameReader(1024)
    out: list[bytes] = []
    for i in range(len(stream)):
        got = reader.feed(stream[i : i + 1])
        out.extend(got)
    assert out == payloads
    assert reader.buffered == 0


def test_frame_completed_only_by_its_last_byte() -> None:
    data = frame(b"abcdef")
    reader = FrameReader(100)
    assert reader.feed(data[:-1]) == []
    assert reader.buffered == len(data) - 1
    assert reader.feed(data[-1:]) == [b"abcdef"]
    assert reader.buffered == 0


def test_multiple_frames_in_one_feed_and_a_trailing_partial() -> None:
    reader = FrameReader(100)
    data = frame(b"one") + frame(b"two") + frame(b"three") + frame(b"four")[:5]
    assert reader.feed(data) == [b"one", b"two", b"three"]
    assert reader.buffered == 5
    assert reader.feed(frame(b"four")[5:] + frame(b"five")) == [b"four", b"five"]
    assert reader.buffered == 0


def test_frame_at_the_limit_is_accepted() -> None:
    reader = FrameReader(10)
    assert reader.feed(frame(b"0123456789")) == [b"0123456789"]


def test_oversized_frame_raises_on_its_header_before_any_payload() -> None:
    reader = FrameReader(10)
    with pytest.raises(FrameTooLarge) as info:
        reader.feed(struct.pack("!I", 11))  # only the header: nothing to buffer yet
    assert info.value.size == 11
    assert info.value.limit == 10
    assert "11" in str(info.value) and "10" in str(info.value)


def test_oversized_frame_raises_even_when_split_in_the_header() -> None:
    reader = FrameReader(1000)
    header = struct.pack("!I", 1 << 30)
    assert reader.feed(header[:2]) == []
    with pytest.raises(FrameTooLarge):
        reader.feed(header[2:])
    # It never waited for (or kept) the gigabyte it announced.
    assert reader.buffered <= 4


def test_oversized_frame_after_good_ones_in_the_same_feed() -> None:
    reader = FrameReader(10)
    with pytest.raises(FrameTooLarge):
        reader.feed(frame(b"ok") + struct.pack("!I", 5000) + b"x" * 10)


@given(
    payloads=st.lists(st.binary(max_size=200), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=30),
)
@settings(max_examples=300, deadline=None)
def test_random_byte_splits_give_the_same_frames(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame(p) for p in payloads)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    reader = FrameReader(200)
    out: list[bytes] = []
    for a, b in zip(points, points[1:], strict=False):
        out.extend(reader.feed(stream[a:b]))
    assert out == payloads
    assert reader.buffered == 0


# -- request parsing ---------------------------------------------------------------------


def decode_one(data: bytes) -> protocol.Request | CtdbError:
    out = protocol.RequestDecoder().feed(data)
    assert len(out) == 1
    return out[0]


def test_request_round_trip() -> None:
    req = decode_one(protocol.encode_request(7, "store", {"db": "x", "key": b"k", "value": b"v"}))
    assert isinstance(req, protocol.Request)
    assert (req.reqid, req.op, req.args) == (7, "store", {"db": "x", "key": b"k", "value": b"v"})
    # bytes stay bytes and strings stay strings
    assert isinstance(req.args["key"], bytes) and isinstance(req.args["db"], str)


NOT_MSGPACK = [
    b"\xc1",  # a byte msgpack never uses
    b"\x93\x01\xa5hello",  # truncated array
    b"\x01\x02",  # two objects in one frame
    b"",  # empty frame
]


@pytest.mark.parametrize("payload", NOT_MSGPACK, ids=repr)
def test_frame_that_is_not_msgpack(payload: bytes) -> None:
    err = decode_one(frame(payload))
    assert isinstance(err, CtdbError)
    assert err.code == ErrorCode.PROTOCOL
    assert not getattr(err, "reqid", 0)  # nothing to answer: the connection must close


UNANSWERABLE = [
    {"reqid": 1, "op": "hello"},  # a map, not an array
    42,
    "hello",
    None,
    [],
    [1, "hello"],  # too short
    [1, "hello", {}, "extra"],  # too long
    [0, "hello", {}],  # reqid 0 is the event id
    [-5, "hello", {}],
    ["1", "hello", {}],
    [1.5, "hello", {}],
    [None, "hello", {}],
    [True, "hello", {}],  # a boolean is not a request id
]


@pytest.mark.parametrize("obj", UNANSWERABLE, ids=repr)
def test_malformed_request_without_a_usable_reqid(obj: object) -> None:
    err = decode_one(raw_frame(obj))
    assert isinstance(err, CtdbError), f"{obj!r} was accepted as {err!r}"
    assert err.code == ErrorCode.PROTOCOL
    assert not getattr(err, "reqid", 0)
    assert err.message


ANSWERABLE = [
    [9, 17, {}],  # op not a string
    [9, b"hello", {}],  # op as bytes
    [9, None, {}],
    [9, "hello", []],  # args not a map
    [9, "hello", None],
    [9, "hello", "version=1"],
    [9, "hello", 1],
]


@pytest.mark.parametrize("obj", ANSWERABLE, ids=repr)
def test_malformed_request_with_a_readable_reqid_is_answerable(obj: list[object]) -> None:
    err = decode_one(raw_frame(obj))
    assert isinstance(err, protocol.BadRequest)
    assert err.code == ErrorCode.PROTOCOL
    assert err.reqid == 9
    # and the answer carries that reqid
    reply = protocol.ReplyDecoder().feed(protocol.encode_error(err.reqid, err))[0]
    assert reply.reqid == 9 and reply.code == ErrorCode.PROTOCOL


def test_good_and_bad_requests_in_one_feed_keep_their_order() -> None:
    data = (
        protocol.encode_request(1, "pnn", {})
        + raw_frame([2, 5, {}])
        + frame(b"\xc1")
        + protocol.encode_request(3, "status", {})
    )
    out = protocol.RequestDecoder().feed(data)
    assert len(out) == 4
    assert isinstance(out[0], protocol.Request) and out[0].reqid == 1
    assert isinstance(out[1], protocol.BadRequest) and out[1].reqid == 2
    assert isinstance(out[2], CtdbError) and not getattr(out[2], "reqid", 0)
    assert isinstance(out[3], protocol.Request) and out[3].op == "status"


def test_request_decoder_oversized_frame_is_too_big() -> None:
    dec = protocol.RequestDecoder(max_frame=64)
    with pytest.raises(CtdbError) as info:
        dec.feed(struct.pack("!I", 65))
    assert info.value.code == ErrorCode.TOO_BIG
    assert "64" in info.value.message


@given(
    reqs=st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=2**63 - 1),
            st.text(min_size=1, max_size=12),
            st.dictionaries(
                st.text(max_size=8),
                st.one_of(st.binary(max_size=40), st.integers(-(2**63), 2**63 - 1), st.none()),
                max_size=4,
            ),
        ),
        max_size=10,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
@settings(max_examples=200, deadline=None)
def test_requests_survive_random_splits(
    reqs: list[tuple[int, str, dict[str, object]]], cuts: list[int]
) -> None:
    stream = b"".join(protocol.encode_request(r, op, a) for r, op, a in reqs)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    dec = protocol.RequestDecoder()
    out: list[protocol.Request | CtdbError] = []
    for a, b in zip(points, points[1:], strict=False):
        out.extend(dec.feed(stream[a:b]))
    assert [(r.reqid, r.op, r.args) for r in out if isinstance(r, protocol.Request)] == reqs
    assert len(out) == len(reqs)


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_any_frame_payload_yields_a_request_or_a_protocol_error(payload: bytes) -> None:
    out = protocol.RequestDecoder().feed(frame(payload))
    assert len(out) == 1
    item = out[0]
    if isinstance(item, CtdbError):
        assert item.code == ErrorCode.PROTOCOL
    else:
        assert isinstance(item.reqid, int) and item.reqid > 0
        assert isinstance(item.op, str) and isinstance(item.args, dict)


# -- replies and events --------------------------------------------------------------------


def test_reply_error_and_event_decoding() -> None:
    data = (
        protocol.encode_reply(1, {"pnn": 2})
        + protocol.encode_error(2, CtdbError(ErrorCode.NOT_FOUND, "no such db"))
        + protocol.encode_event(77, 0, b"payload")
    )
    dec = protocol.ReplyDecoder()
    out: list[protocol.Reply] = []
    for i in range(len(data)):
        out.extend(dec.feed(data[i : i + 1]))
    assert [r.reqid for r in out] == [1, 2, protocol.EVENT_REQID]
    assert protocol.raise_for(out[0]) == {"pnn": 2}
    with pytest.raises(CtdbError) as info:
        protocol.raise_for(out[1])
    assert info.value.code == ErrorCode.NOT_FOUND
    assert info.value.message == "no such db"
    assert out[2].result == {"srvid": 77, "src": 0, "data": b"payload"}


def test_reply_decoder_rejects_a_malformed_reply() -> None:
    with pytest.raises(CtdbError) as info:
        protocol.ReplyDecoder().feed(raw_frame({"not": "a reply"}))
    assert info.value.code == ErrorCode.PROTOCOL


def test_ctdb_error_str_names_the_code() -> None:
    err = CtdbError(ErrorCode.TOO_BIG, "key too long")
    assert str(err) == "TOO_BIG: key too long"
    assert CtdbError(int(ErrorCode.BUSY), "x").code is ErrorCode.BUSY
    assert CtdbError(9999, "odd").code == 9999  # unknown codes survive as ints


def test_reply_decoder_keeps_the_code_of_a_fatal_error() -> None:
    """The daemon answers an unanswerable frame with [0, code, text] before hanging up.

    Events also use reqid 0 (as [0, "message", {...}]), so the decoder must tell
    them apart by the second element and keep the error code.
    """
    err = CtdbError(ErrorCode.TOO_BIG, "frame of 99 bytes exceeds the maximum of 10")
    (reply,) = protocol.ReplyDecoder().feed(protocol.encode_error(0, err))
    assert reply.code == ErrorCode.TOO_BIG
    with pytest.raises(CtdbError) as info:
        protocol.raise_for(reply)
    assert info.value.code == ErrorCode.TOO_BIG


# -- anything a peer may send (sans-IO fuzzing) -----------------------------------------------


@given(st.lists(st.binary(max_size=60), max_size=12), st.integers(8, 400))
@settings(max_examples=400, deadline=None)
def test_any_byte_stream_yields_requests_or_ctdb_errors(chunks: list[bytes], limit: int) -> None:
    """Raw chunks, length prefixes included: requests, CtdbErrors, or TOO_BIG raised."""
    dec = protocol.RequestDecoder(max_frame=limit)
    for chunk in chunks:
        try:
            out = dec.feed(chunk)
        except CtdbError as exc:
            assert exc.code == ErrorCode.TOO_BIG
            return  # the connection closes here
        for item in out:
            assert isinstance(item, protocol.Request | CtdbError)
        # never more buffered than one frame that could still be legal
        assert dec._frames.buffered <= limit + 4


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_any_reply_bytes_yield_replies_or_a_ctdb_error(payload: bytes) -> None:
    """The client library's decoder: a broken daemon gives a CtdbError, not a crash."""
    try:
        replies = protocol.ReplyDecoder().feed(frame(payload))
    except CtdbError as exc:
        assert exc.code == ErrorCode.PROTOCOL
        return
    for reply in replies:
        assert isinstance(reply.reqid, int) and isinstance(reply.code, int)


def test_operation_names_are_short() -> None:
    (err,) = protocol.RequestDecoder().feed(raw_frame([4, "x" * 65, {}]))
    assert isinstance(err, protocol.BadRequest) and err.reqid == 4
    assert "1..64" in err.message
    (req,) = protocol.RequestDecoder().feed(raw_frame([4, "x" * 64, {}]))
    assert isinstance(req, protocol.Request)


def test_extension_types_are_refused() -> None:
    (err,) = protocol.RequestDecoder().feed(raw_frame([4, "pnn", {"x": msgpack.ExtType(1, b"")}]))
    assert isinstance(err, CtdbError) and err.code == ErrorCode.PROTOCOL
    assert "extension type 1" in err.message


def test_a_frame_of_empty_arrays_is_refused_before_it_costs_a_gigabyte() -> None:
    """16 MiB of one-byte empty arrays would make 16M Python lists (1.2 GB)."""
    n = 4 * 1024 * 1024
    payload = b"\xdd" + struct.pack(">I", n) + b"\x90" * n
    (err,) = protocol.RequestDecoder(8 * 1024 * 1024).feed(frame(payload))
    assert isinstance(err, CtdbError) and err.code == ErrorCode.PROTOCOL
    assert "arrays and maps" in err.message


def test_the_densest_valid_records_still_decode() -> None:
    """[key, value] rows of a one-byte key and an empty value: 6 bytes each."""
    rows = [[bytes([i % 256]), b""] for i in range(100_000)]
    data = protocol.encode_request(3, "restoredb", {"db": "d", "records": rows})
    (req,) = protocol.RequestDecoder().feed(data)
    assert isinstance(req, protocol.Request) and len(req.args["records"]) == 100_000
