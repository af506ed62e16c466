"""Node messages to bytes and back, checked field by field (no I/O).

Every message is encoded as a msgpack array `[type, field, field, ...]` in
field order, so adding a message means adding a dataclass with a new `TYPE`
(`ctdb.protocol.messages`) and nothing here. The exceptions are the ordered
stream's stores, lock requests and unlocks, which every member decodes and
which go in a fixed binary layout when their arguments fit it
(`compact_ops`): they decode to the same messages, checked alike.

Nothing a peer sends is trusted. `decode` checks every field against its
annotation (an `Annotated` check, or the plain type), the arguments of a
`Control` and of an `Ordered` operation against the op's row in `CONTROLS` /
`ORDERED` (`ctdb.protocol.op_schemas`), and that a field naming the sender
(`SENDER`) is the node the transport says sent it. `check_reply` does the
same for a control's result, which depends on the op that was asked. So no
handler (`Node.ctl_*`, `OrderedEngine._apply_*`, `MigrationEngine.on_*`)
ever sees a wrong type, a missing key, a pnn outside the nodes list or a key
above the size limits. Sizes are checked against the largest limits any
node may set (`config.WIRE_SIZES`), so every node decides alike.
"""

from __future__ import annotations

import dataclasses
import operator
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from ctdb.common.config import WIRE_SIZES
from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol import compact_ops, packing, schema
from ctdb.protocol.bounded_msgpack import unpack
from ctdb.protocol.message_fields import CLIENT_DATA, NUMBER
from ctdb.protocol.messages import MESSAGE_TYPES, ControlReply, Message, Ordered
from ctdb.protocol.op_schemas import CONTROLS
from ctdb.protocol.schema import Check, Limits
from ctdb.protocol.schema_inline import Accept
from ctdb.protocol.schema_inline import accept as inline_accept
from ctdb.protocol.schema_scalars import ANY, BOOL, MAP, integer, text


class DecodeError(CtdbError):
    """A node message that is not valid: the sender breaks the protocol."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.PROTOCOL, message)


def wire_limits(nodes: Sequence[object]) -> Limits:
    """What node messages are checked against: the nodes list and the size ceilings."""
    return Limits(nodes, WIRE_SIZES)


#: The check for a field annotated with a plain type.
_PLAIN: dict[object, Check] = {
    int: integer(-(2**63), schema.U64_MAX),  # what msgpack carries
    bytes: CLIENT_DATA,
    str: text(4096),
    bool: BOOL,
    float: NUMBER,
    Any: ANY,
    dict[str, Any]: MAP,  # then checked by the op's row in the class's ARGS
}


@dataclass(frozen=True)
class Layout:
    """How to check one message class, worked out once from its annotations."""

    cls: type
    names: tuple[str, ...]
    checks: tuple[Check, ...]
    sender: int | None  # index of the field naming the sender
    op: int | None  # index of `op` when the class has an ARGS table
    args: int | None
    #: the whole check and the message in one call, in the usual case (`schema_inline`)
    accept: Accept


def _build_layout(cls: type) -> Layout:
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls)]
    checks = []
    for name in names:
        hint = hints[name]
        if typing.get_origin(hint) is Annotated:
            checks.append(hint.__metadata__[0])
        else:
            checks.append(_PLAIN[hint])
    sender = names.index(cls.SENDER) if hasattr(cls, "SENDER") else None
    ops = (names.index("op"), names.index("args")) if hasattr(cls, "ARGS") else None
    op, args = ops or (None, None)
    accept = inline_accept(checks, cls, sender, ops)
    return Layout(cls, tuple(names), tuple(checks), sender, op, args, accept)


_LAYOUTS: dict[int, Layout] = {cls.TYPE: _build_layout(cls) for cls in MESSAGE_TYPES}


def _getter(names: tuple[str, ...]) -> Callable[[Message], tuple[Any, ...]]:
    """A message's field values in wire order, read in one call (attrgetter
    returns a tuple only for two names or more)."""
    get = operator.attrgetter(*names)
    return get if len(names) > 1 else lambda msg: (get(msg),)


_FIELDS = {layout.cls: _getter(layout.names) for layout in _LAYOUTS.values()}


def layout(cls: type[Message]) -> Layout:
    """The fields of message class `cls` and their checks (for tools and tests)."""
    return _LAYOUTS[cls.TYPE]


def encode(msg: Message) -> bytes:
    if type(msg) is Ordered:
        data = compact_ops.encode(msg)
        if data is not None:
            return data
    return packing.pack([msg.TYPE, *_FIELDS[type(msg)](msg)])


def decode(data: bytes, limits: Limits, sender: int | None = None) -> Message:
    """A checked message from `sender`'s bytes, or `DecodeError` saying what is wrong."""
    if data[:1] == compact_ops.PREFIX:
        try:
            return compact_ops.decode(data, limits, sender)
        except compact_ops.CompactError as exc:
            raise DecodeError(exc.message) from None
    try:
        items = unpack(data)
    except Exception as exc:
        raise DecodeError(f"undecodable node message: {type(exc).__name__}: {exc}") from None
    if type(items) is not list or not items or type(items[0]) is not int:
        raise DecodeError("a node message is an array starting with its type number")
    form = _LAYOUTS.get(items[0])
    if form is None:
        raise DecodeError(f"unknown node message type {items[0]}")
    if len(items) != len(form.names) + 1:
        name = form.cls.__name__
        raise DecodeError(f"{name} needs {len(form.names)} fields, got {len(items) - 1}")
    msg: Message | None = form.accept(items, limits, sender)
    if msg is None:
        msg = checked(form, items[1:], limits, sender)
    return msg


def checked(form: Layout, values: list[Any], limits: Limits, sender: int | None) -> Message:
    """`decode` field by field: what `form.accept` leaves to it (an error, or a
    value only a field's own check accepts), with the error saying where."""
    for name, check, value in zip(form.names, form.checks, values, strict=True):
        try:
            check(value, limits)
        except schema.SchemaError as exc:
            raise DecodeError(f"{form.cls.__name__}.{exc.at(name).message}") from None
    if form.op is not None:
        assert form.args is not None
        op = values[form.op]
        args_check = form.cls.ARGS.get(op)  # type: ignore[attr-defined]
        if args_check is None:
            raise DecodeError(f"{form.cls.__name__}: unknown op {schema.short(op)}")
        try:
            args_check(values[form.args], limits)
        except schema.SchemaError as exc:
            raise DecodeError(f"{form.cls.__name__}.{exc.at(f'{op}.args').message}") from None
    if sender is not None and form.sender is not None and values[form.sender] != sender:
        where = f"{form.cls.__name__}.{form.names[form.sender]}"
        raise DecodeError(f"{where} is {values[form.sender]}, but node {sender} sent it")
    msg: Message = form.cls(*values)
    return msg


def check_reply(op: str, reply: ControlReply, limits: Limits) -> Any:
    """The result of a reply to control `op`, checked; `DecodeError` if malformed."""
    if reply.code:
        if type(reply.result) is not str:
            raise DecodeError(f"error reply to {op} carries no message")
        return reply.result
    try:
        CONTROLS[op].result(reply.result, limits)
    except schema.SchemaError as exc:
        raise DecodeError(f"reply to {op}: {exc.message}") from None
    return reply.result
