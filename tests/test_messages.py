"""Node-to-node message codec (no I/O)."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctdb import messages as m

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
small = st.integers(-(2**31), 2**31)
leaf = st.one_of(st.none(), st.booleans(), small, st.binary(max_size=30), st.text(max_size=20))
value = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
args = st.dictionaries(st.text(max_size=10), value, max_size=5)

MESSAGES = st.one_of(
    st.builds(m.Control, reqid=u64, op=st.text(max_size=20), args=args),
    st.builds(m.ControlReply, reqid=u64, code=st.integers(0, 200), result=value),
    st.builds(
        m.Call,
        db_id=u32,
        key=st.binary(max_size=64),
        generation=u32,
        origin=u32,
        hops=st.integers(0, 100),
    ),
    st.builds(
        m.DmasterRequest,
        db_id=u32,
        key=st.binary(max_size=64),
        generation=u32,
        new_dmaster=u32,
        rsn=u64,
        value=st.binary(max_size=200),
    ),
    st.builds(
        m.DmasterReply,
        db_id=u32,
        key=st.binary(max_size=64),
        generation=u32,
        rsn=u64,
        value=st.binary(max_size=200),
    ),
    st.builds(m.ClientMessage, srvid=u64, data=st.binary(max_size=200), src=u32),
    st.builds(m.Ordered, origin=u32, seq=u64, op=st.text(max_size=20), args=args),
    st.builds(
        m.NodeState,
        pnn=u32,
        flags=st.integers(0, 0x3F),
        generation=u32,
        recovery_mode=st.integers(0, 1),
        leader=st.integers(-1, 64),
    ),
)


@given(MESSAGES)
@settings(max_examples=500, deadline=None)
def test_encode_decode_round_trip(msg: m.Message) -> None:
    data = m.encode(msg)
    back = m.decode(data)
    assert type(back) is type(msg)
    assert back == msg


def test_every_message_type_has_a_distinct_type_number() -> None:
    classes = [
        m.Control,
        m.ControlReply,
        m.Call,
        m.DmasterRequest,
        m.DmasterReply,
        m.ClientMessage,
        m.Ordered,
        m.NodeState,
    ]
    assert len({c.TYPE for c in classes}) == len(classes)


def test_wire_layout_is_type_then_fields_in_order() -> None:
    msg = m.Call(db_id=5, key=b"k", generation=9, origin=2, hops=1)
    assert msgpack.unpackb(m.encode(msg), raw=False) == [3, 5, b"k", 9, 2, 1]
    names = [f.name for f in dataclasses.fields(m.Call)]
    assert names == ["db_id", "key", "generation", "origin", "hops"]


def test_bytes_and_strings_stay_apart() -> None:
    msg = m.Control(1, "op", {"b": b"bytes", "s": "text"})
    back = m.decode(m.encode(msg))
    assert isinstance(back, m.Control)
    assert back.args == {"b": b"bytes", "s": "text"}
    assert isinstance(back.args["b"], bytes) and isinstance(back.args["s"], str)


BAD = [
    b"\xc1",  # not msgpack
    msgpack.packb(42),  # not an array
    msgpack.packb([]),  # no type
    msgpack.packb([99, 1, 2]),  # unknown type
    msgpack.packb([3, 1, b"k", 9]),  # Call with too few fields
    msgpack.packb([3, 1, b"k", 9, 2, 1, "extra"]),  # too many
    msgpack.packb([[1], 2]),  # unhashable type field
    msgpack.packb({"0": 1}),
    b"",
]


@pytest.mark.parametrize("data", BAD, ids=repr)
def test_malformed_messages_raise_decode_error(data: bytes) -> None:
    with pytest.raises(m.DecodeError):
        m.decode(data)


def test_field_count_error_names_the_message() -> None:
    with pytest.raises(m.DecodeError, match="Call needs 5 fields, got 3"):
        m.decode(msgpack.packb([3, 1, b"k", 9]))


@given(st.binary(max_size=100))
@settings(max_examples=500, deadline=None)
def test_random_bytes_never_raise_anything_but_decode_error(data: bytes) -> None:
    try:
        msg = m.decode(data)
    except m.DecodeError:
        return
    assert dataclasses.is_dataclass(msg)
