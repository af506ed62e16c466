"""The compact layout of stores, lock requests and unlocks (`ctdb.protocol.compact_ops`)
decodes to the message the msgpack form decodes to, and refuses what it refuses."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctdb.common.config import TUNABLES
from ctdb.protocol import compact_ops, packing
from ctdb.protocol import message_codec as codec
from ctdb.protocol.messages import Ordered

LIMITS = codec.wire_limits(["n0", "n1", "n2"])
MAX_KEY = int(LIMITS.sizes["MaxKeySize"])
WAITERS_HI = int(TUNABLES["MaxLockWaiters"].hi)


def as_msgpack(msg: Ordered) -> bytes:
    """`msg` in the generic form, which every message could always take."""
    return packing.pack([Ordered.TYPE, msg.origin, msg.seq, msg.op, msg.args])


def outcome(data: bytes, sender: int | None) -> Ordered | str:
    try:
        return codec.decode(data, LIMITS, sender)  # type: ignore[return-value]
    except codec.DecodeError:
        return "refused"


def op(name: str, origin: int = 0, seq: int = 1, /, **args: Any) -> Ordered:
    return Ordered(origin, seq, name, args)


STORE: dict[str, Any] = {"db": 7, "key": b"k", "value": b"v", "owner": (0, 3)}

USUAL = [
    op("store", 0, 5, db=7, key=b"k", value=b"v" * 64, owner=(0, 3), waiters=1000),
    op("store", 1, 2**64 - 1, db=2**32 - 1, key=b"k", value=b"", owner=[2, 2**64 - 1], stable=True),
    op("lock", 2, 9, db=7, key=b"k" * 9, owner=(2, 1), waiters=1, req=44),
    op("unlock", db=7, key=b"k", owner=(0, 1), value=None),
    op("unlock", db=7, key=b"k", owner=(0, 1), value=b"new", stable=False),
]


@pytest.mark.parametrize("msg", USUAL, ids=lambda m: m.op)
def test_what_the_engine_sends_goes_compact_and_decodes_as_its_msgpack_form(msg: Ordered) -> None:
    data = codec.encode(msg)
    assert data[0] == compact_ops.MARK
    got = codec.decode(data, LIMITS, msg.origin)
    assert got == codec.decode(as_msgpack(msg), LIMITS, msg.origin)
    assert isinstance(got, Ordered)
    assert type(got.args["owner"]) is list  # as msgpack returns a row


@pytest.mark.parametrize(
    "msg",
    [
        op("store", **STORE, extra=1),
        op("store", **{**STORE, "value": None}),
        op("store", **{k: v for k, v in STORE.items() if k != "value"}),
        op("store", **{**STORE, "key": "k"}),
        op("store", **{**STORE, "db": True}),
        op("store", **{**STORE, "db": -1}),
        op("store", **{**STORE, "db": 2**32}),
        op("store", **{**STORE, "owner": b"\x00\x03"}),
        op("store", **{**STORE, "owner": (0, 3, 4)}),
        op("store", **STORE, stable=1),
        op("store", **STORE, waiters=None),
        op("lock", **STORE),
        op("sync"),
    ],
)
def test_what_does_not_fit_the_layout_goes_as_msgpack_and_is_checked_there(msg: Ordered) -> None:
    assert compact_ops.encode(msg) is None
    data = codec.encode(msg)
    assert data == as_msgpack(msg)


# -- the two forms decide alike ---------------------------------------------------------------

#: Numbers at and past every field's edges, and anywhere in 64 bits.
INTS = st.one_of(
    st.sampled_from([0, 1, 2, 3, 999, 1000, 1_000_000, 1_000_001, 2**32 - 1, 2**32, 2**64 - 1]),
    st.integers(min_value=0, max_value=2**64 - 1),
)
#: Mostly what a valid message holds in the field, else anything of INTS:
#: so that both forms' acceptances get compared, not only their refusals.
PNNS = st.one_of(st.integers(0, 2), st.integers(0, 2), INTS)
U32S = st.one_of(st.integers(0, 2**32 - 1), INTS)
WAITERS = st.one_of(st.integers(1, 1_000_000), INTS)
BLOBS = st.one_of(
    st.binary(min_size=1, max_size=8),
    st.binary(max_size=8),
    st.sampled_from([b"", b"k" * MAX_KEY, b"k" * (MAX_KEY + 1)]),
)


@st.composite
def ordered_ops(draw: st.DrawFn) -> Ordered:
    form = draw(st.sampled_from(compact_ops.FORMS))
    args: dict[str, Any] = {"db": draw(U32S), "key": draw(BLOBS)}
    args["owner"] = [draw(PNNS), draw(INTS)]
    if form.value:
        args["value"] = draw(st.one_of(BLOBS, st.none()))
    if form.optional & compact_ops.WAITERS and draw(st.booleans()):
        args["waiters"] = draw(WAITERS)
    if form.optional & compact_ops.REQ and draw(st.booleans()):
        args["req"] = draw(INTS)
    if form.optional & compact_ops.STABLE and draw(st.booleans()):
        args["stable"] = draw(st.booleans())
    return Ordered(draw(PNNS), draw(INTS), form.op, args)


@settings(max_examples=800, deadline=None)
@given(ordered_ops(), st.sampled_from([None, 0, 1, 2]))
def test_a_compact_message_is_accepted_exactly_when_its_msgpack_form_is(
    msg: Ordered, sender: int | None
) -> None:
    data = compact_ops.encode(msg)
    if data is not None:
        assert outcome(data, sender) == outcome(as_msgpack(msg), sender)


def _compact(msg: Ordered) -> bytes:
    data = compact_ops.encode(msg)
    assert data is not None
    return data


SAMPLE = _compact(USUAL[0])


@settings(max_examples=600, deadline=None)
@given(st.data())
def test_any_mangled_compact_payload_is_refused_or_is_a_message_the_msgpack_checks_accept(
    data: Any,
) -> None:
    """Truncated, extended or with bytes changed: what still decodes is a
    valid operation, the same one its msgpack form gives."""
    base = bytearray(data.draw(st.sampled_from([_compact(m) for m in USUAL])))
    for _ in range(data.draw(st.integers(0, 4))):
        at = data.draw(st.integers(1, len(base) - 1))
        base[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(base) + 4))
    payload = bytes(base[:cut]) + data.draw(st.binary(max_size=4))
    got = outcome(payload, None)
    if got != "refused":
        assert isinstance(got, Ordered)
        assert outcome(as_msgpack(got), None) == got


@pytest.mark.parametrize(
    "change, error",
    [
        (lambda b: b[:20], "shorter than its header"),
        (lambda b: b[:1] + b"\x09" + b[2:], "unknown op code 9"),
        (lambda b: _patch(b, 2, "<I", 3), "no node with pnn 3"),
        (lambda b: _patch(b, 18, "<I", 7), "no node with pnn 7"),
        (lambda b: _patch(b, 30, "<B", 0x10 | 0x40), "carries no such arguments"),
        (lambda b: _patch(b, 30, "<B", 0x10 | 0x02), "carries no such arguments"),
        (lambda b: _patch(b, 30, "<B", 0x10), "waiters set but not present"),
        (lambda b: _patch(b, 31, "<I", 0), "waiters 0 is outside"),
        (lambda b: _patch(b, 31, "<I", WAITERS_HI + 1), "is outside"),
        (lambda b: _patch(b, 30, "<B", 0x01), "store carries no such arguments"),
        (lambda b: _patch(b, 30, "<B", 0x01 | 0x20), "store carries no such arguments"),
        (lambda b: _patch(b, 43, "<I", 0), "a key of 0 bytes"),
        (lambda b: _patch(b, 43, "<I", 2**31), "does not fit"),
    ],
)
def test_a_bad_compact_payload_is_refused_saying_why(change: Any, error: str) -> None:
    with pytest.raises(codec.DecodeError, match=error):
        codec.decode(change(SAMPLE), LIMITS, None)


def test_the_origin_must_be_the_sender() -> None:
    with pytest.raises(codec.DecodeError, match="origin is 0, but node 1 sent it"):
        codec.decode(SAMPLE, LIMITS, 1)


def test_a_lock_request_has_no_bytes_past_its_key() -> None:
    lock = _compact(USUAL[2])
    with pytest.raises(codec.DecodeError, match="1 bytes past its end"):
        codec.decode(lock + b"x", LIMITS, None)


def test_a_value_above_the_largest_max_value_size_is_refused() -> None:
    big = int(LIMITS.sizes["MaxValueSize"]) + 1
    data = _compact(op("store", **{**STORE, "value": b"v" * big}))
    with pytest.raises(codec.DecodeError, match="exceeds MaxValueSize"):
        codec.decode(data, LIMITS, None)


def _patch(data: bytes, at: int, fmt: str, value: int) -> bytes:
    size = struct.calcsize(fmt)
    return data[:at] + struct.pack(fmt, value) + data[at + size :]
