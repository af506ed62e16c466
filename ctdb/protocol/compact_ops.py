"""The ordered stream's hottest operations in a fixed binary layout (no I/O).

Stores, lock requests and unlocks are most of what the ordered stream
carries, and every member decodes and checks every one of them. As a
msgpack array holding a map of arguments, a store cost each member some
370 bytecode instructions in the generic decoder and the per-field checks:
a third of a member's work per store. In a fixed layout, as CTDB's own
packets are, a field's width is its range and its place is its name, so
decoding is one `struct` call and what is left to check is a few bounds:
the pnns against the nodes list, the key and value against the size
limits, the lock-queue bound against its tunable's range.

A compact payload starts with 0xC1, a byte msgpack never uses, so it is
never mistaken for the array every other message is. Its fields, all
little-endian, after the marker:

    op u8 | origin u32 | seq u64 | db u32 | owner pnn u32 | owner id u64 |
    present u8 | waiters u32 | req u64 | key length u32 | key | value

`present` says which optional arguments the operation carries (a field it
does not carry is zero) and whether the value is there (`VALUE`, the rest
of the payload) or nil (`NIL_VALUE`, an unlock that writes nothing).

`encode` uses this layout only for an operation whose arguments are
exactly what the layout holds, with the types it holds; anything else goes
as msgpack (`message_codec`) and is checked there as before. `decode`
builds the same `Ordered` the msgpack path builds (the owner as a list, as
msgpack returns it), so no handler can tell which form a message came in,
and it refuses what the msgpack checks refuse (`tests/test_compact_ops.py`
compares the two).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from ctdb.common.config import TUNABLES
from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol.messages import Ordered
from ctdb.protocol.schema import Limits

#: The first byte of a compact payload: one msgpack never uses.
MARK = 0xC1
#: ... as what a payload starts with
PREFIX = bytes([MARK])

_HEAD = struct.Struct("<BBIQIIQBIQI")
HEAD_SIZE = _HEAD.size

# `present` bits
WAITERS = 0x01
REQ = 0x02
STABLE = 0x04
STABLE_TRUE = 0x08
VALUE = 0x10
NIL_VALUE = 0x20

_WAITERS_LO = int(TUNABLES["MaxLockWaiters"].lo)
_WAITERS_HI = int(TUNABLES["MaxLockWaiters"].hi)


@dataclass(frozen=True)
class Form:
    """What one operation carries: always db, key and owner; the rest as said."""

    op: str
    code: int
    #: "bytes": a value always; "nullable": a value or nil; "": none
    value: str
    #: the optional arguments it may carry (`present` bits)
    optional: int

    @property
    def required(self) -> frozenset[str]:
        return frozenset({"db", "key", "owner"} | ({"value"} if self.value else set()))

    @property
    def allowed(self) -> frozenset[str]:
        return self.required | {name for bit, name in _OPTIONAL if self.optional & bit}


_OPTIONAL = ((WAITERS, "waiters"), (REQ, "req"), (STABLE, "stable"))

FORMS = (
    Form("store", 1, "bytes", WAITERS | STABLE),
    Form("lock", 2, "", WAITERS | REQ),
    Form("unlock", 3, "nullable", STABLE),
)
_BY_CODE = {form.code: form for form in FORMS}
#: op -> its form and the arguments it may carry
_BY_OP = {form.op: (form, form.allowed) for form in FORMS}


class CompactError(CtdbError):
    """A compact payload that is not valid (`message_codec` reports it as a DecodeError)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.PROTOCOL, f"compact ordered operation: {message}")


def encode(msg: Ordered) -> bytes | None:
    """`msg` in the compact layout, or None if it does not fit it exactly."""
    found = _BY_OP.get(msg.op)
    if found is None:
        return None
    form, allowed = found
    args = msg.args
    if not args.keys() <= allowed:
        return None
    try:
        db, key, owner = args["db"], args["key"], args["owner"]
        pnn, sid = owner
        value = args["value"] if form.value else None
    except (KeyError, TypeError, ValueError):  # a required one missing, an owner not a pair
        return None
    present, tail = 0, b""
    if type(value) is bytes:
        present, tail = VALUE, value
    elif value is None and form.value == "nullable":
        present = NIL_VALUE
    elif form.value:
        return None
    if "waiters" in args:
        present |= WAITERS
    if "req" in args:
        present |= REQ
    stable = args.get("stable", False)
    if "stable" in args:
        present |= (STABLE | STABLE_TRUE) if stable else STABLE
    waiters, req = args.get("waiters", 0), args.get("req", 0)
    if (
        type(key) is not bytes
        or type(owner) not in (list, tuple)
        or type(stable) is not bool
        or not type(db) is type(pnn) is type(sid) is type(waiters) is type(req) is int
    ):
        return None
    try:
        head = _HEAD.pack(
            MARK, form.code, msg.origin, msg.seq, db, pnn, sid, present, waiters, req, len(key)
        )
    except struct.error:  # a number wider than its field, or negative
        return None
    return head + key + tail


def decode(data: bytes, limits: Limits, sender: int | None) -> Ordered:
    """The operation in compact payload `data` from node `sender`, checked;
    CompactError if it is not valid."""
    try:
        _, code, origin, seq, db, pnn, sid, present, waiters, req, key_len = _HEAD.unpack_from(data)
    except struct.error:
        raise CompactError(f"{len(data)} bytes is shorter than its header") from None
    shape = _SHAPES.get(code << 8 | present)
    if shape is None:
        form = _BY_CODE.get(code)
        if form is None:
            raise CompactError(f"unknown op code {code}")
        raise CompactError(f"{form.op} carries no such arguments ({present:#x})")
    nodes = len(limits.nodes)
    if origin >= nodes or pnn >= nodes:
        raise CompactError(f"no node with pnn {max(origin, pnn)}")
    if sender is not None and origin != sender:
        raise CompactError(f"origin is {origin}, but node {sender} sent it")
    end = HEAD_SIZE + key_len
    rest = len(data) - end
    if not 0 < key_len <= limits.sizes["MaxKeySize"] or rest < 0:
        raise CompactError(f"a key of {key_len} bytes does not fit")
    args: dict[str, Any] = {"db": db, "key": data[HEAD_SIZE:end], "owner": [pnn, sid]}
    if shape.value is _BYTES:
        if rest > limits.sizes["MaxValueSize"]:
            raise CompactError(f"a value of {rest} bytes exceeds MaxValueSize")
        args["value"] = data[end:]
    elif rest:
        raise CompactError(f"{rest} bytes past its end")
    elif shape.value is _NIL:
        args["value"] = None
    if shape.waiters:
        if not _WAITERS_LO <= waiters <= _WAITERS_HI:
            raise CompactError(f"waiters {waiters} is outside {_WAITERS_LO}..{_WAITERS_HI}")
        args["waiters"] = waiters
    elif waiters:
        raise CompactError("waiters set but not present")
    if shape.req:
        args["req"] = req
    elif req:
        raise CompactError("req set but not present")
    if shape.stable is not None:
        args["stable"] = shape.stable
    return Ordered(origin, seq, shape.op, args)


# -- what each op code and `present` byte may say ---------------------------------------------

_BYTES = "bytes"
_NIL = "nil"


@dataclass(frozen=True, slots=True)
class _Shape:
    """The arguments one valid (op code, `present`) pair carries."""

    op: str
    value: str | None  # _BYTES, _NIL, or None: none
    waiters: bool
    req: bool
    stable: bool | None  # None: not carried


def _shapes() -> dict[int, _Shape]:
    """Every valid (op code << 8 | present), and what it carries."""
    shapes = {}
    for form in FORMS:
        values = {"bytes": [(VALUE, _BYTES)], "nullable": [(VALUE, _BYTES), (NIL_VALUE, _NIL)]}
        for value_bits, value in values.get(form.value, [(0, None)]):
            for optional in range(form.optional + 1):
                if optional & ~form.optional:
                    continue
                stables = [(STABLE, False), (STABLE | STABLE_TRUE, True)]
                for stable_bits, stable in stables if optional & STABLE else [(0, None)]:
                    present = value_bits | (optional & ~STABLE) | stable_bits
                    waiters, req = bool(optional & WAITERS), bool(optional & REQ)
                    shape = _Shape(form.op, value, waiters, req, stable)
                    shapes[form.code << 8 | present] = shape
    return shapes


_SHAPES = _shapes()
