"""The written-out checks (`ctdb.protocol.schema_inline`) accept and refuse
exactly what the composed checks do, with the same error, for every node
message layout and every struct in the request, control and ordered tables."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctdb.common.config import tunable_defaults
from ctdb.protocol import message_codec as codec
from ctdb.protocol import schema_inline
from ctdb.protocol.op_schemas import CONTROLS, ORDERED
from ctdb.protocol.schema import Check, Limits, SchemaError, shape_of
from ctdb.protocol.schema_combinators import composed_list_of, composed_struct, row
from ctdb.protocol.schema_scalars import PNN, U32, integer, text
from ctdb.server import clients as server
from tools import wiregen

LIMITS = Limits(["n0", "n1", "n2"], tunable_defaults())

#: Values on and just past the edges of every scalar check, and of other types.
ODD: list[Any] = [
    None, True, False, 0, 1, 2, 3, -1, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63,
    2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 0.5, math.nan, math.inf, "", "x", "volatile",
    "x" * 64, "x" * 65, "x" * 255, "x" * 256, b"", b"k", b"k" * 1024, b"k" * 1025, [], {},
    [1, 2], {"k": "v"},
]  # fmt: skip


def _walk(check: Check) -> Iterator[Check]:
    """`check` and every check inside it."""
    yield check
    kind, *p = shape_of(check)
    if kind == "struct":
        for inner in [*p[0].values(), *p[1].values()]:
            yield from _walk(inner)
    elif kind in ("nullable", "list"):
        yield from _walk(p[0])
    elif kind in ("one_of", "row"):
        for inner in p[0]:
            yield from _walk(inner)
    elif kind == "map_of":
        yield from _walk(p[1])


def _all(kind: str) -> list[Check]:
    """Every check of shape `kind` in the request, control and ordered tables
    and the node messages' fields."""
    roots = [check for _, check in server.OPS.values()]
    roots += [spec.args for spec in CONTROLS.values()] + [spec.result for spec in CONTROLS.values()]
    roots += list(ORDERED.values())
    roots += [c for form in codec._LAYOUTS.values() for c in form.checks]
    found: dict[int, Check] = {}
    for root in roots:
        for check in _walk(root):
            if shape_of(check)[0] == kind:
                found[id(check)] = check
    return list(found.values())


STRUCTS = _all("struct")
ROW_LISTS = [c for c in _all("list") if shape_of(shape_of(c)[1])[0] == "row"]
LAYOUTS = sorted(codec._LAYOUTS.values(), key=lambda form: form.cls.__name__)


def _outcome(check: Any, value: Any) -> tuple[int, str] | None:
    try:
        check(value, LIMITS)
    except SchemaError as exc:
        return int(exc.code), exc.message
    return None


def _decoded(form: codec.Layout, values: list[Any], sender: int | None) -> Any:
    """What the field-by-field path makes of `values`: the message, or its error."""
    try:
        return codec.checked(form, values, LIMITS, sender)
    except codec.DecodeError as exc:
        return exc.message


def test_there_is_something_to_compare() -> None:
    assert len(STRUCTS) > 50 and len(LAYOUTS) >= 10 and len(ROW_LISTS) >= 5


@pytest.mark.parametrize("form", LAYOUTS, ids=lambda form: form.cls.__name__)
def test_a_layout_written_out_decides_as_its_field_checks(form: codec.Layout) -> None:
    """`accept` takes every valid message itself, and of the rest only what
    the field-by-field path takes too, as the same message."""
    rng = random.Random(form.cls.__name__)
    src = wiregen.RandomSource(rng)
    for _ in range(200):
        sender = rng.randrange(len(LIMITS.nodes))
        msg = wiregen.message(form.cls, src, LIMITS, sender)
        values = list(codec._FIELDS[form.cls](msg))
        assert form.accept([msg.TYPE, *values], LIMITS, sender) == msg
        i = rng.randrange(len(values))
        values[i] = rng.choice(ODD)
        for who in (None, sender, (sender + 1) % len(LIMITS.nodes)):
            fast = form.accept([msg.TYPE, *values], LIMITS, who)
            assert fast is None or fast == _decoded(form, values, who)


@given(data=st.data())
@settings(max_examples=400, deadline=None)
def test_a_struct_written_out_decides_as_the_composed_one(data: st.DataObject) -> None:
    check = data.draw(st.sampled_from(STRUCTS))
    _, required, optional = shape_of(check)
    composed = composed_struct(required, optional)
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    value = wiregen.value(check, wiregen.RandomSource(rng), LIMITS)
    assert _outcome(check, value) is None
    names = [*required, *optional, "unknown", 7]
    for _ in range(data.draw(st.integers(1, 3))):
        name = data.draw(st.sampled_from(names))
        if data.draw(st.booleans()) and name in value:
            del value[name]
        else:
            value[name] = data.draw(st.sampled_from(ODD))
    assert _outcome(check, value) == _outcome(composed, value)
    assert _outcome(check, [value]) == _outcome(composed, [value])


@given(data=st.data())
@settings(max_examples=300, deadline=None)
def test_a_list_of_rows_written_out_decides_as_the_composed_one(data: st.DataObject) -> None:
    check = data.draw(st.sampled_from(ROW_LISTS))
    _, item, min_len = shape_of(check)
    composed = composed_list_of(item, min_len)
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    value = wiregen.value(check, wiregen.RandomSource(rng), LIMITS)
    assert _outcome(check, value) is None
    if value and data.draw(st.booleans()):
        row = value[data.draw(st.integers(0, len(value) - 1))]
        row[data.draw(st.integers(0, len(row) - 1))] = data.draw(st.sampled_from(ODD))
    else:
        value.append(data.draw(st.sampled_from(ODD + [[b"k", 1], [b"k"], []])))
    assert _outcome(check, value) == _outcome(composed, value)


@pytest.mark.parametrize(
    "check",
    [U32, PNN, integer(-5, 5), text(8, min_len=2), text(choices=("a", "b")), row(PNN, U32)],
)
def test_a_condition_holds_only_for_accepted_values(check: Check) -> None:
    cond = schema_inline.condition(check, "v")
    assert cond is not None
    rows: list[Any] = [[0, 0], [2, 2**32 - 1], [3, 0], [0, 2**32], [0], [0, 0, 0], (0, 0)]
    held = 0
    for v in ODD + ["a", "b", "ab", -5, 5, -6, 6] + rows:
        inline = eval(cond, {"limits": LIMITS, "sizes": LIMITS.sizes, "v": v})  # noqa: S307
        assert not inline or _outcome(check, v) is None, v
        held += bool(inline)
    assert held  # and it holds for some: it is not merely always false
