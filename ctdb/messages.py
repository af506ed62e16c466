"""Node-to-node messages: dataclasses and their msgpack codec (no I/O).

Two families travel between daemons. Record migration (`Call`,
`DmasterRequest`, `DmasterReply`) is CTDB's data path over a point-to-point
transport. Everything else is a `Control` with a `ControlReply`, as in CTDB:
recovery steps, persistent-transaction phases and the admin commands a tool
addresses to another node with `-n PNN`.

Every message is encoded as a msgpack array `[type, field, field, ...]` in
field order; adding a message means adding a dataclass with a new `TYPE`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack


@dataclass(slots=True)
class Control:
    """Ask a node to do something and reply (`reqid` matches the reply)."""

    TYPE: ClassVar[int] = 1
    reqid: int
    op: str
    args: dict[str, Any]


@dataclass(slots=True)
class ControlReply:
    TYPE: ClassVar[int] = 2
    reqid: int
    code: int  # 0 = success, else an ErrorCode
    result: Any


@dataclass(slots=True)
class Call:
    """`origin` wants to become dmaster of a volatile record.

    Sent to the lmaster, which forwards it to the dmaster; a node that turns
    out not to be the dmaster bounces it back to the lmaster (`hops` counts).
    """

    TYPE: ClassVar[int] = 3
    db_id: int
    key: bytes
    generation: int
    origin: int
    hops: int


@dataclass(slots=True)
class DmasterRequest:
    """The old dmaster hands the record to the lmaster for `new_dmaster`."""

    TYPE: ClassVar[int] = 4
    db_id: int
    key: bytes
    generation: int
    new_dmaster: int
    rsn: int
    value: bytes


@dataclass(slots=True)
class DmasterReply:
    """The lmaster hands the record to its new dmaster."""

    TYPE: ClassVar[int] = 5
    db_id: int
    key: bytes
    generation: int
    rsn: int
    value: bytes


@dataclass(slots=True)
class ClientMessage:
    """A message for the clients of the target node registered on `srvid`."""

    TYPE: ClassVar[int] = 6
    srvid: int
    data: bytes
    src: int


@dataclass(slots=True)
class Ordered:
    """An operation broadcast in agreed order (total-order transports only).

    Every node applies `op` at the same position of the stream; the node that
    sent it answers its client when it delivers its own message.
    """

    TYPE: ClassVar[int] = 7
    origin: int
    seq: int
    op: str
    args: dict[str, Any]


@dataclass(slots=True)
class NodeState:
    """What a node tells every peer about itself, on change and with each keepalive.

    `stamp` is the sender's clock when it sent this, `seen` the latest stamp
    it received from each peer: echoed stamps confirm a node's lease to serve
    (see `ctdb.lease`).
    """

    TYPE: ClassVar[int] = 8
    pnn: int
    flags: int
    generation: int
    recovery_mode: int
    leader: int
    stamp: float
    seen: dict[int, float]


Message = (
    Control
    | ControlReply
    | Call
    | DmasterRequest
    | DmasterReply
    | ClientMessage
    | Ordered
    | NodeState
)

_TYPES: dict[int, tuple[type, tuple[str, ...]]] = {
    cls.TYPE: (cls, tuple(f.name for f in dataclasses.fields(cls)))
    for cls in (
        Control,
        ControlReply,
        Call,
        DmasterRequest,
        DmasterReply,
        ClientMessage,
        Ordered,
        NodeState,
    )
}
_FIELDS = {cls: names for cls, names in _TYPES.values()}


class DecodeError(ValueError):
    pass


def encode(msg: Message) -> bytes:
    names = _FIELDS[type(msg)]
    return msgpack.packb([msg.TYPE, *[getattr(msg, n) for n in names]], use_bin_type=True)


def decode(data: bytes) -> Message:
    try:
        items = msgpack.unpackb(data, raw=False, strict_map_key=False)
        cls, names = _TYPES[items[0]]
        if len(items) != len(names) + 1:
            raise DecodeError(f"{cls.__name__} needs {len(names)} fields, got {len(items) - 1}")
        msg: Message = cls(*items[1:])
        return msg
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"undecodable node message: {exc}") from exc
