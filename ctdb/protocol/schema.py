"""Declarative checks for decoded wire data: types, ranges and sizes.

msgpack hands back whatever a peer sent: an int where bytes were meant (and
`bytes(n)` then allocates n bytes), a key of a gigabyte, a pnn of -7, a map
without the key a handler indexes. So every node message and every client
request is checked against a schema when it is decoded, and the code that
handles it can trust every field. A schema is data (a table row), not a
series of ifs in the handler, so adding a message or an operation means
adding a row.

A check is a function `(value, limits) -> None` that raises `SchemaError`,
whose message names the offending field by its path (`records[3][0]`). It
never copies or converts what it checks: decoding runs on every message, so
checks are kept cheap. `Limits` carries what depends on the node: how many
nodes exist (a pnn must name one) and how big keys and values may be.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgpack

from ctdb.common.errors import CtdbError, ErrorCode

Check = Callable[[Any, "Limits"], None]

U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1


class SchemaError(CtdbError):
    """A field has the wrong type, range or size; `path` says which field."""

    def __init__(self, problem: str, code: ErrorCode = ErrorCode.INVALID) -> None:
        super().__init__(code, problem)
        self.problem = problem
        self.path: list[str | int] = []

    def at(self, part: str | int) -> SchemaError:
        """Prefix the path while the error travels out of a container."""
        self.path.insert(0, part)
        self.message = f"{self.where}: {self.problem}"
        self.args = (self.message,)
        return self

    @property
    def where(self) -> str:
        out = ""
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
        return out


class Limits:
    """What checks depend on at run time: the node count and the size tunables.

    Holds references, not copies: the nodes list grows with `reloadnodes`
    and tunables change with `setvar`, and every check sees the current value.
    """

    __slots__ = ("nodes", "sizes")

    def __init__(self, nodes: Sequence[object], sizes: Mapping[str, float]) -> None:
        self.nodes = nodes
        self.sizes = sizes


#: Arrays and maps a frame of n bytes may hold: n / 6. Python makes a 64-byte
#: object of each one-byte empty array, so a 16 MiB frame of them would take
#: 1.2 GB (measured); every valid message spends 6 bytes or more per container
#: (the smallest is a [key, value] row of a one-byte key and an empty value).
CONTAINER_BYTES = 6
#: Frames up to this size are decoded without counting their containers: at
#: most 64 bytes of objects per byte, 256 KiB, whatever they hold. Counting
#: costs a callback per container, half the decoding time of a request.
SMALL_FRAME = 4096


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def unpack(data: bytes) -> Any:
    """msgpack from a peer, decoded within bounds set by the frame's own size.

    msgpack already refuses a length that exceeds the bytes at hand; on top,
    extension types are refused (no handler expects one) and so is a frame
    above SMALL_FRAME holding more containers than its size allows
    (`CONTAINER_BYTES`).
    Raises ValueError (or msgpack's own errors) on anything else.
    """
    if len(data) <= SMALL_FRAME:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_no_ext)
    budget = len(data) // CONTAINER_BYTES + 16
    made = 0

    def counted(obj: Any) -> Any:
        nonlocal made
        made += 1
        if made > budget:
            raise ValueError(f"{len(data)} bytes holding more than {budget} arrays and maps")
        return obj

    return msgpack.unpackb(
        data,
        raw=False,
        strict_map_key=False,
        ext_hook=_no_ext,
        list_hook=counted,
        object_hook=counted,
    )


def described(check: Check, *shape: Any) -> Check:
    """Attach what a check accepts as data (`("int", lo, hi)`, `("struct", ...)`).

    The shape lets tools build valid values from a schema: the property
    tests and the fuzzer generate every message and op from the very tables
    the daemon checks against, so a new row is fuzzed without more code.
    """
    check.shape = shape  # type: ignore[attr-defined]
    return check


def shape_of(check: Check) -> tuple[Any, ...]:
    shape: tuple[Any, ...] = check.shape  # type: ignore[attr-defined]
    return shape


def _type_name(value: object) -> str:
    return "nil" if value is None else type(value).__name__


def short(value: object, limit: int = 40) -> str:
    """A repr fit for an error message, however large the value a peer sent."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- scalars --------------------------------------------------------------------------
# (`type(v) is int` rather than isinstance: a bool is an int subclass, and is
# not a number here)


def integer(lo: int, hi: int) -> Check:
    def check(value: Any, limits: Limits) -> None:
        if type(value) is not int:
            raise SchemaError(f"must be an integer, not {_type_name(value)}")
        if not lo <= value <= hi:
            raise SchemaError(f"{value} is outside {lo}..{hi}")

    return described(check, "int", lo, hi)


U32 = integer(0, U32_MAX)
U64 = integer(0, U64_MAX)


def _pnn(value: Any, limits: Limits) -> None:
    if type(value) is not int:
        raise SchemaError(f"must be a node number, not {_type_name(value)}")
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
            raise SchemaError(f"must be a number, not {_type_name(value)}")
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
            raise SchemaError(f"must be an integer, not {_type_name(value)}")
        if value < 0 or value & ~mask:
            raise SchemaError(f"0x{value:x} has bits outside 0x{mask:x}")

    return described(check, "bits", mask)


def _bool(value: Any, limits: Limits) -> None:
    if type(value) is not bool:
        raise SchemaError(f"must be a boolean, not {_type_name(value)}")


BOOL: Check = described(_bool, "bool")


def text(max_len: int = 255, *, min_len: int = 0, choices: Sequence[str] = ()) -> Check:
    def check(value: Any, limits: Limits) -> None:
        if type(value) is not str:
            raise SchemaError(f"must be a string, not {_type_name(value)}")
        if not min_len <= len(value) <= max_len:
            raise SchemaError(f"string of {len(value)} characters (allowed {min_len}..{max_len})")
        if choices and value not in choices:
            raise SchemaError(f"{short(value)} is not one of {', '.join(choices)}")

    return described(check, "text", min_len, max_len, tuple(choices))


def blob(max_len: int) -> Check:
    """Bytes of a fixed maximum size."""

    def check(value: Any, limits: Limits) -> None:
        if type(value) is not bytes:
            raise SchemaError(f"must be bytes, not {_type_name(value)}")
        if len(value) > max_len:
            raise SchemaError(f"{len(value)} bytes exceeds {max_len}", ErrorCode.TOO_BIG)

    return described(check, "blob", max_len)


def sized(tunable: str, *, min_len: int = 0) -> Check:
    """Bytes no longer than the size tunable `tunable` (MaxKeySize, MaxValueSize)."""

    def check(value: Any, limits: Limits) -> None:
        if type(value) is not bytes:
            raise SchemaError(f"must be bytes, not {_type_name(value)}")
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
        raise SchemaError(f"must be nil, not {_type_name(value)}")


NONE: Check = described(_none, "none")


def _anything(value: Any, limits: Limits) -> None:
    """Plain decoded data passed on untouched (a status map shown to a user)."""


ANY: Check = described(_anything, "any")


def _map(value: Any, limits: Limits) -> None:
    if type(value) is not dict:
        raise SchemaError(f"must be a map, not {_type_name(value)}")


#: A map whose contents another check looks at (an op's arguments, by op).
MAP: Check = described(_map, "map")


# -- combinators ------------------------------------------------------------------------


def nullable(inner: Check) -> Check:
    def check(value: Any, limits: Limits) -> None:
        if value is not None:
            inner(value, limits)

    return described(check, "nullable", inner)


def one_of(*checks: Check) -> Check:
    """Any of the checks accepts the value (e.g. a number or a string)."""

    def check(value: Any, limits: Limits) -> None:
        errors = []
        for inner in checks:
            try:
                inner(value, limits)
                return
            except SchemaError as exc:
                errors.append(exc.problem)
        raise SchemaError(" or ".join(errors))

    return described(check, "one_of", checks)


def list_of(item: Check, *, min_len: int = 0) -> Check:
    def check(value: Any, limits: Limits) -> None:
        if type(value) is not list:
            raise SchemaError(f"must be a list, not {_type_name(value)}")
        if len(value) < min_len:
            raise SchemaError(f"needs at least {min_len} items")
        i = 0
        try:
            for i, v in enumerate(value):  # noqa: B007 - i names the failing item
                item(v, limits)
        except SchemaError as exc:
            raise exc.at(i) from None

    return described(check, "list", item, min_len)


def map_of(key: Check, value: Check) -> Check:
    """A map whose keys all pass `key` and values all pass `value` (name -> info)."""

    def check(data: Any, limits: Limits) -> None:
        if type(data) is not dict:
            raise SchemaError(f"must be a map, not {_type_name(data)}")
        for k, v in data.items():
            try:
                key(k, limits)
            except SchemaError as exc:
                raise SchemaError(f"key {short(k)}: {exc.problem}") from None
            try:
                value(v, limits)
            except SchemaError as exc:
                raise exc.at(k if type(k) is str else short(k)) from None

    return described(check, "map_of", key, value)


def row(*items: Check) -> Check:
    """A fixed-length list whose positions have their own checks ([key, rsn, ...])."""
    n = len(items)

    def check(value: Any, limits: Limits) -> None:
        if type(value) is not list or len(value) != n:
            what = f"{len(value)} items" if type(value) is list else _type_name(value)
            raise SchemaError(f"must be a list of {n} items, not {what}")
        i = 0
        try:
            for i, inner in enumerate(items):  # noqa: B007 - i names the failing item
                inner(value[i], limits)
        except SchemaError as exc:
            raise exc.at(i) from None

    return described(check, "row", items)


def struct(required: Mapping[str, Check], optional: Mapping[str, Check] | None = None) -> Check:
    """A map with string keys: every required key, any optional ones, nothing else.

    An unknown key is an error, so a misspelt argument is reported rather
    than silently ignored. An optional key may be nil, which handlers read
    as absent (`args.get(name)`); clients send `pnn=None` for "this node".
    """
    req = tuple(required.items())
    opt = dict(optional or {})
    names = ", ".join(sorted([*required, *opt])) or "none"
    n_required = len(req)

    def check(value: Any, limits: Limits) -> None:
        if type(value) is not dict:
            raise SchemaError(f"must be a map, not {_type_name(value)}")
        name = ""
        try:
            for name, inner in req:  # noqa: B007 - name names the failing field
                inner(value[name], limits)
        except KeyError:
            raise SchemaError(f"missing argument {name!r}") from None
        except SchemaError as exc:
            raise exc.at(name) from None
        if len(value) == n_required:
            return
        for name, v in value.items():
            if name in required:
                continue
            extra = opt.get(name) if type(name) is str else None
            if extra is None:
                raise SchemaError(f"unknown argument {short(name)} (expected: {names})")
            if v is not None:
                try:
                    extra(v, limits)
                except SchemaError as exc:
                    raise exc.at(name) from None

    return described(check, "struct", dict(required), opt)


#: No arguments at all.
EMPTY = struct({})


# -- bulk record lists ------------------------------------------------------------------
# Recovery moves whole databases (100k records) in one message: composing the
# checks above costs a function call per cell, several times the decoding
# itself. These loop over the rows in one function and fall back to the
# composed check only to say what is wrong.


def _records(value: Any, limits: Limits) -> None:
    """[[key, rsn, dmaster, value], ...], as recovery and snapshots carry them."""
    max_key, max_value = limits.sizes["MaxKeySize"], limits.sizes["MaxValueSize"]
    if type(value) is list:
        for rec in value:
            if type(rec) is not list or len(rec) != 4:
                break
            k, rsn, dmaster, v = rec
            if not (
                type(k) is bytes
                and len(k) <= max_key
                and type(rsn) is int
                and 0 <= rsn <= U64_MAX
                and type(dmaster) is int
                and 0 <= dmaster <= U32_MAX
                and type(v) is bytes
                and len(v) <= max_value
            ):
                break
        else:
            return
    _records_explained(value, limits)


_records_explained = list_of(row(STORED_KEY, U64, U32, VALUE))
RECORDS: Check = described(_records, *shape_of(_records_explained))


def key_values(*, min_key: int = 0) -> Check:
    """[[key, value], ...], as a traverse returns them and a restore takes them."""
    explained = list_of(row(sized("MaxKeySize", min_len=min_key), VALUE))

    def check(value: Any, limits: Limits) -> None:
        max_key, max_value = limits.sizes["MaxKeySize"], limits.sizes["MaxValueSize"]
        if type(value) is list:
            for rec in value:
                if type(rec) is not list or len(rec) != 2:
                    break
                k, v = rec
                if not (
                    type(k) is bytes
                    and min_key <= len(k) <= max_key
                    and type(v) is bytes
                    and len(v) <= max_value
                ):
                    break
            else:
                return
        explained(value, limits)

    return described(check, *shape_of(explained))
