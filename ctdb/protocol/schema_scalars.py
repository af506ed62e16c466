"""Scalar checks: integers, node numbers, numbers, flags, strings, bytes, nil.

The leaves every schema is built of (see `schema` for what a check is).
Each is `described` with its shape, so tools can generate valid values
from the same tables the daemon checks against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ctdb.common.errors import ErrorCode
from ctdb.protocol.schema import (
    U32_MAX,
    U64_MAX,
    Check,
    Limits,
    SchemaError,
    described,
    short,
    type_name,
)

# (`type(v) is int` rather than isinstance: a bool is an int subclass, and is
# not a number here)


def integer(lo: int, hi: int) -> Check:
    def check(value: Any, limits: Limits) -> None:
        if type(value) is not int:
            raise SchemaError(f"must be an integer, not {type_name(value)}")
        if not lo <= value <= hi:
            raise SchemaError(f"{value} is outside {lo}..{hi}")

    return described(check, "int", lo, hi)


U32 = integer(0, U32_MAX)
U64 = integer(0, U64_MAX)


def _pnn(value: Any, limits: Limits) -> None:
    if type(value) is not int:
        raise SchemaError(f"must be a node number, not {type_name(value)}")
    if not 0 <= value < len(limits.nodes):
        message = f"no node with pnn {value} (there are {len(limits.nodes)})"
        raise SchemaError(message, ErrorCode.NOT_FOUND)


#: A node number: an index into the nodes file.
PNN: Check = described(_pnn, "pnn")


def pnn_or(none: int) -> Check:
    """A pnn, or the sentinel `none` (e.g. -1: no leader yet)."""

    def check(value: Any, limits: Limits) -> None:
        if value != none or type(value) is not int:
            _pnn(value, limits)

    return described(check, "pnn_or", none)


def number(lo: float, hi: float, *, above: bool = False) -> Check:
    """A finite number in [lo, hi] (or (lo, hi] with `above`), int or float."""

    def check(value: Any, limits: Limits) -> None:
        if type(value) is not int and type(value) is not float:
            raise SchemaError(f"must be a number, not {type_name(value)}")
        if not math.isfinite(value):
            raise SchemaError(f"must be finite, not {value}")
        if value < lo or value > hi or (above and value == lo):
            low = f"above {lo:.15g}" if above else f"at least {lo:.15g}"
            raise SchemaError(f"{value:.15g} is out of range ({low}, at most {hi:.15g})")

    return described(check, "number", lo, hi, above)


def bits(mask: int) -> Check:
    """A flag word using only the bits of `mask`."""

    def check(value: Any, limits: Limits) -> None:
        if type(value) is not int:
            raise SchemaError(f"must be an integer, not {type_name(value)}")
        if value < 0 or value & ~mask:
            raise SchemaError(f"0x{value:x} has bits outside 0x{mask:x}")

    return described(check, "bits", mask)


def _bool(value: Any, limits: Limits) -> None:
    if type(value) is not bool:
        raise SchemaError(f"must be a boolean, not {type_name(value)}")


BOOL: Check = described(_bool, "bool")


def text(max_len: int = 255, *, min_len: int = 0, choices: Sequence[str] = ()) -> Check:
    def check(value: Any, limits: Limits) -> None:
        if type(value) is not str:
            raise SchemaError(f"must be a string, not {type_name(value)}")
        if not min_len <= len(value) <= max_len:
            raise SchemaError(f"string of {len(value)} characters (allowed {min_len}..{max_len})")
        if choices and value not in choices:
            raise SchemaError(f"{short(value)} is not one of {', '.join(choices)}")

    return described(check, "text", min_len, max_len, tuple(choices))


def blob(max_len: int) -> Check:
    """Bytes of a fixed maximum size."""

    def check(value: Any, limits: Limits) -> None:
        if type(value) is not bytes:
            raise SchemaError(f"must be bytes, not {type_name(value)}")
        if len(value) > max_len:
            raise SchemaError(f"{len(value)} bytes exceeds {max_len}", ErrorCode.TOO_BIG)

    return described(check, "blob", max_len)


def sized(tunable: str, *, min_len: int = 0) -> Check:
    """Bytes no longer than the size tunable `tunable` (MaxKeySize, MaxValueSize)."""

    def check(value: Any, limits: Limits) -> None:
        if type(value) is not bytes:
            raise SchemaError(f"must be bytes, not {type_name(value)}")
        n = len(value)
        if n > limits.sizes[tunable]:
            limit = int(limits.sizes[tunable])
            raise SchemaError(f"{n} bytes exceeds {tunable} ({limit})", ErrorCode.TOO_BIG)
        if n < min_len:
            raise SchemaError("must not be empty")

    return described(check, "sized", tunable, min_len)


#: A record key as a client names it: never empty.
KEY = sized("MaxKeySize", min_len=1)
#: A key inside a bulk record list (recovery, snapshots): as stored.
STORED_KEY = sized("MaxKeySize")
VALUE = sized("MaxValueSize")


def _none(value: Any, limits: Limits) -> None:
    if value is not None:
        raise SchemaError(f"must be nil, not {type_name(value)}")


NONE: Check = described(_none, "none")


def _anything(value: Any, limits: Limits) -> None:
    """Plain decoded data passed on untouched (a status map shown to a user)."""


ANY: Check = described(_anything, "any")


def _map(value: Any, limits: Limits) -> None:
    if type(value) is not dict:
        raise SchemaError(f"must be a map, not {type_name(value)}")


#: A map whose contents another check looks at (an op's arguments, by op).
MAP: Check = described(_map, "map")
