"""Node-to-node messages: the dataclasses daemons send one another (no I/O).

Two families travel between daemons. Record migration (`Call`,
`DmasterRequest`, `DmasterReply`) is CTDB's data path over a point-to-point
transport. Everything else is a `Control` with a `ControlReply`, as in CTDB:
recovery steps, persistent-transaction phases and the admin commands a tool
addresses to another node with `-n PNN`. Over a total-order transport,
records travel as `Ordered` operations instead.

A field's annotation says what is valid in it: an `Annotated` check (see
`message_fields`), or the plain type. `ARGS` points a class whose `args`
depend on its `op` at the op's table (`op_schemas`), and `SENDER` names
the field that must be the node the transport says sent the message.
`message_codec` encodes messages and checks all of this when it decodes
one. A new message is a dataclass with a new `TYPE` whose annotations say
what is valid.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from ctdb.protocol.message_fields import (
    CLIENT_DATA,
    DB_ID,
    FLAGS,
    GENERATION,
    LEASE_SECONDS,
    RECORD_ANSWER,
    RECORD_CALL,
    RSN,
    STAMP,
)
from ctdb.protocol.op_schemas import CONTROLS, ORDERED
from ctdb.protocol.schema import Check
from ctdb.protocol.schema_combinators import map_of, nullable
from ctdb.protocol.schema_scalars import KEY, PNN, U32, U64, VALUE, integer, pnn_or, text

#: The version of what daemons say to one another: these messages, the
#: ordered operations and their arguments, state transfers. Raise it with
#: any change a daemon of the previous revision would misread or refuse.
#: Daemons of different versions never talk (`TransportOptions.protocol`):
#: a tcp link between them is refused in its handshake, and over vs each
#: joins the CPG group of its own version. Each side counts the other's
#: nodes as disconnected, and only a side with a majority of the nodes
#: serves (README, "Upgrading"). 2 is what the tcp handshake of every
#: earlier revision announced.
NODE_PROTOCOL = 3

ReqId = Annotated[int, U64]
DbId = Annotated[int, DB_ID]
Key = Annotated[bytes, KEY]
Value = Annotated[bytes, VALUE]
Generation = Annotated[int, GENERATION]
Rsn = Annotated[int, RSN]
Pnn = Annotated[int, PNN]
Op = Annotated[str, text(64)]


@dataclass(slots=True)
class Control:
    """Ask a node to do something and reply (`reqid` matches the reply)."""

    TYPE: ClassVar[int] = 1
    ARGS: ClassVar[Mapping[str, Check]] = {op: spec.args for op, spec in CONTROLS.items()}
    reqid: ReqId
    op: Op
    args: dict[str, Any]


@dataclass(slots=True)
class ControlReply:
    """The answer to a `Control`; its result is checked by `check_reply`."""

    TYPE: ClassVar[int] = 2
    reqid: ReqId
    code: Annotated[int, integer(0, 65535)]  # 0 = success, else an ErrorCode
    result: Any


@dataclass(slots=True)
class Call:
    """`origin` wants to become dmaster of a volatile record.

    Sent to the lmaster, which forwards it to the dmaster; a node that turns
    out not to be the dmaster bounces it back to the lmaster (`hops` counts).
    """

    TYPE: ClassVar[int] = 3
    db_id: DbId
    key: Key
    generation: Generation
    origin: Pnn
    hops: Annotated[int, U32]


@dataclass(slots=True)
class DmasterRequest:
    """The old dmaster hands the record to the lmaster for `new_dmaster`."""

    TYPE: ClassVar[int] = 4
    db_id: DbId
    key: Key
    generation: Generation
    new_dmaster: Pnn
    rsn: Rsn
    value: Value


@dataclass(slots=True)
class DmasterReply:
    """The lmaster hands the record to its new dmaster."""

    TYPE: ClassVar[int] = 5
    db_id: DbId
    key: Key
    generation: Generation
    rsn: Rsn
    value: Value


@dataclass(slots=True)
class ClientMessage:
    """A message for the clients of the target node registered on `srvid`."""

    TYPE: ClassVar[int] = 6
    SENDER: ClassVar[str] = "src"
    srvid: Annotated[int, U64]
    data: Annotated[bytes, CLIENT_DATA]
    src: Pnn


@dataclass(slots=True)
class Ordered:
    """An operation broadcast in agreed order (total-order transports only).

    Every node applies `op` at the same position of the stream; the node that
    sent it answers its client when it delivers its own message.
    """

    TYPE: ClassVar[int] = 7
    SENDER: ClassVar[str] = "origin"
    ARGS: ClassVar[Mapping[str, Check]] = ORDERED
    origin: Pnn
    seq: Annotated[int, U64]
    op: Op
    args: dict[str, Any]


@dataclass(slots=True)
class NodeState:
    """What a node tells every peer about itself, on change and with each keepalive.

    `stamp` is the sender's clock when it sent this, `seen` the latest stamp
    it received from each peer: echoed stamps confirm a node's lease to serve,
    and `lease` is how long the sender's lease lasts (see `ctdb.server.lease`).
    """

    TYPE: ClassVar[int] = 8
    SENDER: ClassVar[str] = "pnn"
    pnn: Pnn
    flags: Annotated[int, FLAGS]
    generation: Generation
    recovery_mode: Annotated[int, integer(0, 1)]
    leader: Annotated[int, pnn_or(-1)]
    stamp: Annotated[float, STAMP]
    seen: Annotated[dict[int, float], map_of(PNN, STAMP)]
    lease: Annotated[float, LEASE_SECONDS]


@dataclass(slots=True)
class RemoteCall:
    """Run a function on a volatile record at its dmaster; the result goes to `origin`.

    Routed like `Call` (lmaster, then dmaster), but the record stays where
    it is: only `RemoteCallReply` comes back. `reqid` is the origin's, so a
    re-sent call gets the reply its first sending would have had.
    """

    TYPE: ClassVar[int] = 9
    db_id: DbId
    key: Key
    generation: Generation
    origin: Pnn
    reqid: ReqId
    hops: Annotated[int, U32]
    call: Annotated[dict[str, Any], RECORD_CALL]


@dataclass(slots=True)
class RemoteCallReply:
    """The dmaster's answer to a `RemoteCall`: `code` 0 and the answer, or an error."""

    TYPE: ClassVar[int] = 10
    reqid: ReqId
    generation: Generation
    code: Annotated[int, integer(0, 65535)]  # 0 = success, else an ErrorCode
    message: Annotated[str, text(1024)]
    answer: Annotated[dict[str, Any] | None, nullable(RECORD_ANSWER)]


Message = (
    Control
    | ControlReply
    | Call
    | DmasterRequest
    | DmasterReply
    | ClientMessage
    | Ordered
    | NodeState
    | RemoteCall
    | RemoteCallReply
)
MESSAGE_TYPES: tuple[type[Message], ...] = typing.get_args(Message)
