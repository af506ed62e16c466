"""How a client operation is declared: its handler and the schema of its arguments.

Every operation a client may ask the daemon is registered with `op`, with
the schema of its arguments, which the session that read the request checks
before the handler runs (`ctdb.server.sessions`): types, ranges (a pnn
names a node), sizes (keys within MaxKeySize, values within MaxValueSize)
and no unknown names. Those checks are at least as strict as the ones other
nodes apply to node messages (`ctdb.protocol.message_codec`), so nothing a
client sends can make this node send a peer something it refuses. The
operations themselves are in `record_ops` and `admin_ops`; `clients` gathers
them.

A handler returns its result, or a coroutine of it (see `sessions.Session`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ctdb.engines.record_calls import Owner
from ctdb.engines.transactions import Transaction
from ctdb.protocol.message_fields import DB_ID, DB_NAME
from ctdb.protocol.schema import Check
from ctdb.protocol.schema_combinators import EMPTY, one_of, struct
from ctdb.protocol.schema_scalars import KEY, PNN, U64, VALUE
from ctdb.server.node import Node
from ctdb.storage.database import Database


class ClientSession(Protocol):
    """What a handler uses of the session that runs it (`sessions.Session`).

    The session itself is the owner of the record locks its client takes.
    """

    node: Node
    #: the client said hello in a protocol version we speak
    greeted: bool
    #: its open persistent transactions, by id
    transactions: dict[int, Transaction]
    #: the message ids it registered for
    srvids: set[int]
    #: who it is in entry lists (None until it first appends)
    entry_owner: Owner | None
    #: the records it appended to (db id, key): their entries go when it goes
    appended: set[tuple[int, bytes]]

    def database(self, args: dict[str, Any]) -> Database:
        """The database `args["db"]` names (by name or id)."""

    def transaction(self, args: dict[str, Any]) -> Transaction:
        """The open transaction `args["tx"]` names."""

    def on_message(self, srvid: int, src: int, data: bytes) -> None:
        """Push a message sent to one of its srvids."""

    def fence(self, why: str) -> None:
        """Close the connection, telling the client why."""


Handler = Callable[[ClientSession, dict[str, Any]], Any]
#: op name -> (handler, schema of its arguments)
OPS: dict[str, tuple[Handler, Check]] = {}


def op(name: str, args: Check = EMPTY) -> Callable[[Handler], Handler]:
    """Register a client operation and the schema its arguments must fit."""

    def register(fn: Handler) -> Handler:
        OPS[name] = (fn, args)
        return fn

    return register


# -- argument schemas --------------------------------------------------------------------

#: A database, by name or by id.
DB = one_of(DB_NAME, DB_ID)
TX = U64
#: Admin operations address node `pnn` (`ctdbtool -n PNN`); this one when absent.
ON_NODE = {"pnn": PNN}


def admin(required: dict[str, Check] | None = None) -> Check:
    return struct(required or {}, ON_NODE)


ON_DB = struct({"db": DB})
ON_RECORD = struct({"db": DB, "key": KEY})
WRITE = struct({"db": DB, "key": KEY, "value": VALUE})
