"""Client operations' argument schemas (no I/O).

Every operation of the client socket has a schema (`ctdb.server.client_ops.op`). These
tests check that valid arguments pass, anything else gives a `CtdbError`
(never another exception), and that what a client may ask a node to forward
always fits the control the other node checks it against.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctdb.common.config import WIRE_SIZES, tunable_defaults
from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol import message_codec as codec
from ctdb.protocol.message_fields import DB_NAME
from ctdb.protocol.op_schemas import CONTROLS
from ctdb.protocol.schema import Limits
from ctdb.server import clients as server
from tools import wiregen

NODES = ["n0", "n1", "n2"]
LIMITS = Limits(NODES, tunable_defaults())
WIRE = codec.wire_limits(NODES)

#: client operations forwarded as the control of the same name
FORWARDED = ["pnn", "uptime", "status", "getdbmap", "statistics", "listvars", "getvar", "setvar"]


def valid_args(op: str, seed: int) -> dict[str, Any]:
    _, check = server.OPS[op]
    args: dict[str, Any] = wiregen.value(check, wiregen.RandomSource(random.Random(seed)), LIMITS)
    return args


@pytest.mark.parametrize("op", sorted(server.OPS))
def test_generated_valid_arguments_pass(op: str) -> None:
    _, check = server.OPS[op]
    for seed in range(50):
        check(valid_args(op, seed), LIMITS)


@pytest.mark.parametrize("op", FORWARDED)
def test_forwarded_arguments_fit_the_control_the_other_node_checks(op: str) -> None:
    for seed in range(50):
        args = valid_args(op, seed)
        args.pop("pnn", None)
        CONTROLS[op].args(args, WIRE)


def test_ban_seconds_a_client_may_give_fit_the_ban_control() -> None:
    _, check = server.OPS["ban"]
    for seed in range(200):
        args = valid_args("ban", seed)
        assert args["seconds"] > 0
        CONTROLS["ban"].args({"seconds": args["seconds"]}, WIRE)


def test_what_a_client_may_store_every_node_accepts() -> None:
    """The client limits' upper bounds are the node-message ceilings."""
    for name in ("MaxKeySize", "MaxValueSize"):
        assert WIRE_SIZES[name] >= LIMITS.sizes[name]


ANYTHING = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.binary(max_size=12),
        st.text(max_size=12),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)


@given(
    op=st.sampled_from(sorted(server.OPS)),
    seed=st.integers(0, 10_000),
    name=st.one_of(st.text(max_size=8), st.sampled_from(["db", "key", "value", "pnn", "tx"])),
    replacement=ANYTHING,
)
@settings(max_examples=600, deadline=None)
def test_any_argument_change_passes_or_gives_a_ctdb_error(
    op: str, seed: int, name: str, replacement: Any
) -> None:
    _, check = server.OPS[op]
    args = valid_args(op, seed)
    args[name] = replacement
    try:
        check(args, LIMITS)
    except CtdbError as exc:
        assert exc.code in (ErrorCode.INVALID, ErrorCode.TOO_BIG, ErrorCode.NOT_FOUND)
        assert exc.message


@pytest.mark.parametrize(
    ("op", "args", "code", "words"),
    [
        ("store", {"db": "d", "key": 5, "value": b"v"}, ErrorCode.INVALID, "key: must be bytes"),
        ("store", {"db": "d", "key": b"", "value": b"v"}, ErrorCode.INVALID, "key: must not be"),
        ("store", {"db": "d", "key": b"k"}, ErrorCode.INVALID, "missing argument 'value'"),
        (
            "store",
            {"db": "d", "key": b"k", "value": b"v", "vlaue": 1},
            ErrorCode.INVALID,
            "'vlaue'",
        ),
        ("store", {"db": 3.5, "key": b"k", "value": b"v"}, ErrorCode.INVALID, "db:"),
        ("fetch", {"db": -1, "key": b"k"}, ErrorCode.INVALID, "db:"),
        ("fetch", {"db": "d", "key": b"k" * 65537}, ErrorCode.TOO_BIG, "MaxKeySize (65536)"),
        ("status", {"pnn": 3}, ErrorCode.NOT_FOUND, "no node with pnn 3"),
        ("status", {"pnn": None}, None, ""),
        ("ban", {"seconds": float("nan")}, ErrorCode.INVALID, "seconds: must be finite"),
        ("ban", {"seconds": float("inf")}, ErrorCode.INVALID, "seconds: must be finite"),
        ("ban", {"seconds": -3}, ErrorCode.INVALID, "above 0"),
        ("ban", {"seconds": 0}, ErrorCode.INVALID, "above 0"),
        ("ban", {"seconds": 2**33}, ErrorCode.INVALID, "at most 4294967295"),
        ("ban", {"seconds": 0.5}, None, ""),
        ("register_srvid", {"srvid": -1}, ErrorCode.INVALID, "srvid"),
        ("register_srvid", {"srvid": 2**64 - 1}, None, ""),
        ("hello", {"version": "1"}, ErrorCode.INVALID, "version: must be an integer"),
        (
            "restoredb",
            {"db": "d", "records": [[b"k", b"v"], [b"", b"v"]]},
            ErrorCode.INVALID,
            "records[1][0]: must not be empty",
        ),
        (
            "restoredb",
            {"db": "d", "records": [[b"k", b"v" * (8 * 1024 * 1024 + 1)]]},
            ErrorCode.TOO_BIG,
            "records[0][1]: 8388609 bytes exceeds MaxValueSize",
        ),
        ("restoredb", {"db": "d", "records": [[b"k", "v"]]}, ErrorCode.INVALID, "records[0][1]"),
        ("restoredb", {"db": "d", "records": [[b"k", b"v"]]}, None, ""),
    ],
)
def test_argument_errors_name_the_field(
    op: str, args: dict[str, Any], code: ErrorCode | None, words: str
) -> None:
    _, check = server.OPS[op]
    if code is None:
        check(args, LIMITS)
        return
    with pytest.raises(CtdbError) as info:
        check(args, LIMITS)
    assert info.value.code == code
    assert words in info.value.message


def test_limits_follow_the_tunables() -> None:
    tunables = tunable_defaults()
    limits = Limits(NODES, tunables)
    _, check = server.OPS["store"]
    args = {"db": "d", "key": b"k" * 100, "value": b"v"}
    check(args, limits)
    tunables["MaxKeySize"] = 99  # setvar changes the dict the server's limits hold
    with pytest.raises(CtdbError, match="MaxKeySize \\(99\\)"):
        check(args, limits)


def test_map_of_checks_every_key_and_value() -> None:
    from ctdb.protocol.schema_combinators import map_of, struct
    from ctdb.protocol.schema_scalars import U64

    check = map_of(DB_NAME, struct({"seqnum": U64}))
    check({"a": {"seqnum": 1}, "b": {"seqnum": 2}}, WIRE)
    with pytest.raises(CtdbError, match=r"^INVALID: b: missing argument 'seqnum'$"):
        check({"a": {"seqnum": 1}, "b": {}}, WIRE)
    with pytest.raises(CtdbError, match="key ''"):
        check({"": {"seqnum": 1}}, WIRE)
    with pytest.raises(CtdbError, match="must be a map"):
        check([("a", {"seqnum": 1})], WIRE)
    for seed in range(20):
        src = wiregen.RandomSource(random.Random(seed))
        check(wiregen.value(check, src, WIRE), WIRE)
