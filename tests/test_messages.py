"""Node-to-node message codec and its checks (no I/O).

Valid messages are generated from the same schema tables the daemon checks
against (`tools.wiregen`), so every message type and every op is covered,
including ops added later.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctdb.common.config import WIRE_SIZES
from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.ordered.engine import OrderedEngine
from ctdb.engines.ordered.replica import Replica
from ctdb.protocol import message_codec as codec
from ctdb.protocol import messages as m
from ctdb.protocol.op_schemas import CONTROLS, ORDERED
from ctdb.protocol.schema import Limits
from ctdb.server.admin import NodeControls
from ctdb.server.ctdb_sessions import CtdbProtocolServer
from ctdb.server.recovery_member import RecoveryMember
from ctdb.server.stream import StreamMembership
from tools import wiregen

NODES = ["n0", "n1", "n2"]
LIMITS = codec.wire_limits(NODES)


class HypothesisSource:
    """wiregen's randomness drawn from hypothesis, so failures shrink."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def real(self, lo: float, hi: float) -> float:
        return self.data.draw(st.floats(lo, hi, allow_nan=False, allow_infinity=False))

    def choice(self, items: Any) -> Any:
        return self.data.draw(st.sampled_from(list(items)))

    def blob(self, n: int) -> bytes:
        return self.data.draw(st.binary(min_size=n, max_size=n))


def valid_message(data: st.DataObject, cls: type[m.Message] | None = None) -> m.Message:
    src = HypothesisSource(data)
    sender = src.integer(0, len(NODES) - 1)
    if cls is None:
        return wiregen.any_message(src, LIMITS, sender)
    return wiregen.message(cls, src, LIMITS, sender)


def sender_of(msg: m.Message) -> int | None:
    form = codec.layout(type(msg))
    return None if form.sender is None else getattr(msg, form.names[form.sender])


# -- round trips ---------------------------------------------------------------------------


@given(st.data())
@settings(max_examples=400, deadline=None)
def test_every_valid_message_round_trips(data: st.DataObject) -> None:
    msg = valid_message(data)
    back = codec.decode(codec.encode(msg), LIMITS, sender_of(msg))
    assert type(back) is type(msg)
    assert back == msg


@pytest.mark.parametrize("op", sorted(CONTROLS))
@given(data=st.data())
@settings(max_examples=8, deadline=None)
def test_every_control_op_round_trips(op: str, data: st.DataObject) -> None:
    src = HypothesisSource(data)
    args = wiregen.value(CONTROLS[op].args, src, LIMITS)
    msg = m.Control(src.integer(0, 2**64 - 1), op, args)
    assert codec.decode(codec.encode(msg), LIMITS, 1) == msg
    result = wiregen.value(CONTROLS[op].result, src, LIMITS)
    reply = codec.decode(codec.encode(m.ControlReply(msg.reqid, 0, result)), LIMITS, 1)
    assert isinstance(reply, m.ControlReply)
    assert codec.check_reply(op, reply, LIMITS) == result


@pytest.mark.parametrize("op", sorted(ORDERED))
@given(data=st.data())
@settings(max_examples=8, deadline=None)
def test_every_ordered_op_round_trips(op: str, data: st.DataObject) -> None:
    src = HypothesisSource(data)
    msg = m.Ordered(2, src.integer(0, 2**64 - 1), op, wiregen.value(ORDERED[op], src, LIMITS))
    assert codec.decode(codec.encode(msg), LIMITS, 2) == msg


def test_every_message_type_has_a_distinct_type_number() -> None:
    assert len({c.TYPE for c in m.MESSAGE_TYPES}) == len(m.MESSAGE_TYPES) == 10


def test_wire_layout_is_type_then_fields_in_order() -> None:
    msg = m.Call(db_id=5, key=b"k", generation=9, origin=2, hops=1)
    assert msgpack.unpackb(codec.encode(msg), raw=False) == [3, 5, b"k", 9, 2, 1]
    names = [f.name for f in dataclasses.fields(m.Call)]
    assert names == ["db_id", "key", "generation", "origin", "hops"]


def test_bytes_and_strings_stay_apart() -> None:
    msg = m.Control(1, "getvar", {"name": "MaxKeySize"})
    back = codec.decode(codec.encode(msg), LIMITS)
    assert isinstance(back, m.Control) and isinstance(back.args["name"], str)
    with pytest.raises(codec.DecodeError, match=r"getvar\.args\.name: must be a string, not bytes"):
        codec.decode(codec.encode(m.Control(1, "getvar", {"name": b"MaxKeySize"})), LIMITS)


# -- the tables cover every handler ------------------------------------------------------------


def test_every_control_handler_has_a_schema_row_and_every_row_a_handler() -> None:
    handlers = {
        name.removeprefix("ctl_")
        for part in (NodeControls, RecoveryMember, StreamMembership, CtdbProtocolServer)
        for name, _ in inspect.getmembers(part)
        if name.startswith("ctl_")
    }
    assert handlers == set(CONTROLS)


def test_every_ordered_op_has_a_schema_row_and_every_row_an_applier() -> None:
    # handled before the _apply_<op> dispatch
    special = {"applied", "offer", "numbered", "snapshot", "synced"}
    appliers = {n.removeprefix("_apply_") for n in dir(OrderedEngine) if n.startswith("_apply_")}
    in_replica = {n.removeprefix("_apply_") for n in dir(Replica) if n.startswith("_apply_")}
    assert in_replica == Replica.OPS
    assert not appliers & in_replica
    assert appliers | in_replica | special == set(ORDERED)


# -- what is refused, and why ------------------------------------------------------------------


def packed(*items: Any) -> bytes:
    return msgpack.packb(list(items), use_bin_type=True)


BAD: list[tuple[bytes, str]] = [
    (b"\xd9", "undecodable"),
    (b"\xc1", "compact ordered operation: 1 bytes is shorter than its header"),
    (b"", "undecodable"),
    (msgpack.packb(42), "array"),
    (msgpack.packb([]), "array"),
    (msgpack.packb({"0": 1}), "array"),
    (packed([1], 2), "array"),
    (packed(99, 1, 2), "unknown node message type 99"),
    (packed(3, 1, b"k", 9), "Call needs 5 fields, got 3"),
    (packed(3, 1, b"k", 9, 2, 1, "extra"), "Call needs 5 fields, got 6"),
    # types and ranges
    (packed(3, 1, "k", 9, 2, 1), "Call.key: must be bytes, not str"),
    (packed(3, 1, b"", 9, 2, 1), "Call.key: must not be empty"),
    (packed(3, -1, b"k", 9, 2, 1), "Call.db_id: -1 is outside"),
    (packed(3, 2**32, b"k", 9, 2, 1), "Call.db_id"),
    (packed(3, 1, b"k", 9, 3, 1), "Call.origin: no node with pnn 3"),
    (packed(3, 1, b"k", 9, -1, 1), "Call.origin"),
    (packed(3, 1, b"k", 9, True, 1), "Call.origin: must be a node number, not bool"),
    (packed(3, 1, b"k", 9, 2, -5), "Call.hops"),
    (packed(3, 1, b"k", -9, 2, 1), "Call.generation"),
    (packed(4, 1, b"k", 9, 0, -1, b"v"), "DmasterRequest.rsn"),
    (packed(4, 1, b"k", 9, 7, 1, b"v"), "DmasterRequest.new_dmaster"),
    (packed(5, 1, b"k", 9, 1, 5), "DmasterReply.value: must be bytes, not int"),
    (packed(6, -1, b"d", 0), "ClientMessage.srvid"),
    (packed(8, 0, 0x40, 1, 0, -1, 0.0, {}, 4.0), "NodeState.flags: 0x40 has bits outside"),
    (packed(8, 0, 0, 1, 2, -1, 0.0, {}, 4.0), "NodeState.recovery_mode"),
    (packed(8, 0, 0, 1, 0, -2, 0.0, {}, 4.0), "NodeState.leader"),
    (packed(8, 0, 0, 1, 0, -1, -1.0, {}, 4.0), "NodeState.stamp"),
    (packed(8, 0, 0, 1, 0, -1, 0.0, {7: 1.0}, 4.0), "NodeState.seen"),
    (packed(8, 0, 0, 1, 0, -1, 0.0, {}, 0.0), "NodeState.lease"),
    (packed(8, 0, 0, 1, 0, -1, 0.0, {}, 1e7), "NodeState.lease"),
    (packed(2, 1, -3, None), "ControlReply.code"),
    # sizes
    (packed(3, 1, b"k" * (2**20 + 1), 9, 2, 1), "Call.key: 1048577 bytes exceeds MaxKeySize"),
    # op tables
    (packed(1, 1, "frobnicate", {}), "Control: unknown op 'frobnicate'"),
    (packed(1, 1, 5, {}), "Control.op: must be a string"),
    (packed(1, 1, "ping", []), "Control.args: must be a map"),
    (packed(1, 1, "pull", {"db_id": 1}), "Control.pull.args: missing argument 'generation'"),
    (packed(1, 1, "pull", {"db_id": 1, "generation": 2, "x": 1}), "unknown argument 'x'"),
    (packed(1, 1, "ping", {1: 2}), "Control.ping.args: unknown argument 1"),
    (
        packed(1, 1, "push", {"db_id": 1, "generation": 2, "records": [[b"k", 1, 0, "v"]]}),
        "Control.push.args.records[0][3]: must be bytes, not str",
    ),
    (
        packed(1, 1, "push", {"db_id": 1, "generation": 2, "records": [[b"k", 1, 0]]}),
        "Control.push.args.records[0]: must be a list of 4 items",
    ),
    (
        packed(
            1,
            1,
            "set_vnnmap",
            {
                "generation": 1,
                "vnnmap": [],
                "leader": 0,
                "epoch": 1,
                "served": 0,
                "incarnations": [],
            },
        ),
        "set_vnnmap.args.vnnmap: needs at least 1 items",
    ),
    (packed(1, 1, "ban", {"seconds": float("nan")}), "Control.ban.args.seconds: must be finite"),
    (packed(1, 1, "ban", {"seconds": -1}), "Control.ban.args.seconds"),
    (packed(7, 0, 1, "nope", {}), "Ordered: unknown op 'nope'"),
    (
        packed(7, 0, 1, "store", {"db": 1, "key": b"k", "value": b"v", "owner": [0, "a"]}),
        "Ordered.store.args.owner[1]: must be an integer, not str",
    ),
    (
        packed(7, 0, 1, "store", {"db": 1, "key": 2**40, "value": b"v", "owner": [0, 1]}),
        "Ordered.store.args.key: must be bytes, not int",  # never bytes(2**40)
    ),
    (packed(7, 0, 1, "applied", {"upto": -1}), "Ordered.applied.args.upto"),
    # msgpack extension types are data no handler expects
    (packed(2, 1, 0, msgpack.ExtType(5, b"x")), "extension type 5"),
    # nesting beyond msgpack's stack
    (b"\x91" * 5000, "undecodable"),
    (b"\xdd\xff\xff\xff\xff", "undecodable"),  # an array announcing 4G items: nothing allocated
    # a megabyte of one-byte empty arrays: 64 MB of Python lists
    (b"\xdd\x00\x10\x00\x00" + b"\x90" * 2**20, "arrays and maps"),
]


@pytest.mark.parametrize(("data", "why"), BAD, ids=[why for _, why in BAD])
def test_malformed_messages_raise_decode_error_saying_why(data: bytes, why: str) -> None:
    with pytest.raises(codec.DecodeError) as info:
        codec.decode(data, LIMITS, 0)
    assert why in info.value.message
    assert info.value.code == ErrorCode.PROTOCOL
    assert isinstance(info.value, CtdbError)


@pytest.mark.parametrize(
    ("msg", "sender", "field"),
    [
        (m.NodeState(1, 0, 5, 0, 0, 0.0, {}, 4.0), 2, "NodeState.pnn is 1, but node 2 sent it"),
        (m.ClientMessage(7, b"hi", 0), 1, "ClientMessage.src is 0, but node 1 sent it"),
        (m.Ordered(0, 1, "sync", {}), 2, "Ordered.origin is 0, but node 2 sent it"),
    ],
)
def test_a_node_cannot_speak_for_another(msg: m.Message, sender: int, field: str) -> None:
    with pytest.raises(codec.DecodeError, match=field):
        codec.decode(codec.encode(msg), LIMITS, sender)
    assert codec.decode(codec.encode(msg), LIMITS, sender_of(msg)) == msg


def test_a_forwarded_call_keeps_its_origin() -> None:
    """A Call's origin is the node that wants the record, not the one forwarding it."""
    msg = m.Call(1, b"k", 9, origin=0, hops=2)
    assert codec.decode(codec.encode(msg), LIMITS, 2) == msg


def test_pnn_checks_follow_the_nodes_list() -> None:
    nodes = ["a", "b"]
    limits = codec.wire_limits(nodes)
    data = codec.encode(m.Call(1, b"k", 9, origin=2, hops=0))
    with pytest.raises(codec.DecodeError, match="no node with pnn 2"):
        codec.decode(data, limits)
    nodes.append("c")  # reloadnodes appends in place
    assert codec.decode(data, limits) == m.Call(1, b"k", 9, 2, 0)


def test_sizes_are_checked_against_the_ceilings_every_node_shares() -> None:
    ceiling = int(WIRE_SIZES["MaxValueSize"])
    ok = m.DmasterReply(1, b"k", 9, 1, b"v" * ceiling)
    assert codec.decode(codec.encode(ok), LIMITS) == ok
    with pytest.raises(codec.DecodeError, match="exceeds MaxValueSize"):
        codec.decode(codec.encode(m.DmasterReply(1, b"k", 9, 1, b"v" * (ceiling + 1))), LIMITS)


# -- control replies -------------------------------------------------------------------------


def test_reply_results_are_checked_against_the_op_asked() -> None:
    db = {"kind": "persistent", "seqnum": 4, "history": b"h" * 16, "base": None}
    frozen = {
        "epoch": 3,
        "incarnation": 2,
        "served": 2,
        "thawed": 2,
        "generation": 7,
        "view": [0, 1],
        "leases": [[2, 0.4]],
        "dbs": {"secrets.tdb": db},
    }
    good = m.ControlReply(1, 0, frozen)
    assert codec.check_reply("freeze", good, LIMITS) == good.result
    for bad in [
        frozen | {"epoch": "3"},
        {k: v for k, v in frozen.items() if k != "epoch"},
        frozen | {"view": [0, 5]},
        frozen | {"leases": [[2, -1.0]]},
        frozen | {"leases": [[2]]},
        frozen | {"dbs": {"secrets.tdb": db | {"base": [1]}}},
        frozen | {"dbs": {"secrets.tdb": db | {"kind": "eternal"}}},
        [1, 2],
    ]:
        with pytest.raises(codec.DecodeError, match="reply to freeze"):
            codec.check_reply("freeze", m.ControlReply(1, 0, bad), LIMITS)
    with pytest.raises(codec.DecodeError, match="reply to pull: \\[0\\]"):
        codec.check_reply("pull", m.ControlReply(1, 0, [[b"k", 1, 0]]), LIMITS)
    with pytest.raises(codec.DecodeError, match="error reply to ping carries no message"):
        codec.check_reply("ping", m.ControlReply(1, int(ErrorCode.IO), None), LIMITS)
    assert codec.check_reply("ping", m.ControlReply(1, int(ErrorCode.IO), "disk on fire"), LIMITS)


# -- anything else -------------------------------------------------------------------------------


def _decode_or_decode_error(data: bytes, sender: int | None) -> None:
    try:
        msg = codec.decode(data, LIMITS, sender)
    except codec.DecodeError:
        return
    assert dataclasses.is_dataclass(msg)
    # whatever was accepted round-trips (compared encoded: a NaN result is not == itself)
    again = codec.encode(msg)
    assert codec.encode(codec.decode(again, LIMITS, sender)) == again


@given(st.binary(max_size=200), st.one_of(st.none(), st.integers(0, 2)))
@settings(max_examples=300, deadline=None)
def test_random_bytes_give_a_message_or_decode_error(data: bytes, sender: int | None) -> None:
    _decode_or_decode_error(data, sender)


PLAIN = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.binary(max_size=20),
        st.text(max_size=10),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(-9, 9)), inner, max_size=5),
    ),
    max_leaves=20,
)


@given(st.integers(0, 10), st.lists(PLAIN, max_size=8), st.one_of(st.none(), st.integers(0, 2)))
@settings(max_examples=300, deadline=None)
def test_random_well_formed_msgpack_gives_a_message_or_decode_error(
    kind: int, fields: list[Any], sender: int | None
) -> None:
    _decode_or_decode_error(packed(kind, *fields), sender)


@given(st.data())
@settings(max_examples=300, deadline=None)
def test_mutated_valid_messages_give_a_message_or_decode_error(data: st.DataObject) -> None:
    """One field of a valid message replaced by anything: the closest misses."""
    msg = valid_message(data)
    # the msgpack form, which a store, lock or unlock could take too (see compact_ops)
    fields = [getattr(msg, name) for name in codec.layout(type(msg)).names]
    items = msgpack.unpackb(packed(msg.TYPE, *fields), raw=False, strict_map_key=False)
    where = data.draw(st.integers(1, len(items) - 1))
    target = items
    # descend into the args map now and then, to hit the op rows' fields
    if isinstance(items[where], dict) and items[where] and data.draw(st.booleans()):
        target, where = items[where], data.draw(st.sampled_from(sorted(items[where])))
    target[where] = data.draw(PLAIN)
    _decode_or_decode_error(packed(*items), sender_of(msg))


def test_limits_are_shared_references() -> None:
    sizes = {"MaxKeySize": 4, "MaxValueSize": 4}
    limits = Limits(["a"], sizes)
    data = codec.encode(m.Call(1, b"12345", 9, 0, 0))
    with pytest.raises(codec.DecodeError, match="exceeds MaxKeySize \\(4\\)"):
        codec.decode(data, limits)
    sizes["MaxKeySize"] = 5
    assert codec.decode(data, limits).key == b"12345"  # type: ignore[union-attr]
