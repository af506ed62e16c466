"""What a client may ask the daemon: one handler per operation, each with the
schema of its arguments.

Every operation is registered with the schema of its arguments (`op`), and
the arguments are checked against it before the handler runs (by the session
that read the request, `ctdb.server.sessions`): types, ranges (a pnn names a
node), sizes (keys within MaxKeySize, values within MaxValueSize) and no
unknown names. Those checks are at least as strict as the ones other nodes
apply to node messages (`ctdb.protocol.messages`), so nothing a client sends
can make this node send a peer something it refuses.

A handler returns its result, or a coroutine of it (see `sessions.Session`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.base import resolved
from ctdb.engines.record_calls import Append, Owner, Read, RecordCall, Remove
from ctdb.engines.transactions import Transaction
from ctdb.protocol import client as protocol
from ctdb.protocol.message_fields import (
    CLIENT_DATA,
    DB_ID,
    DB_NAME,
    OWNER,
    PAYLOAD,
    TUNABLE_VALUE,
)
from ctdb.protocol.schema import U32_MAX, Check
from ctdb.protocol.schema_combinators import EMPTY, key_values, nullable, one_of, struct
from ctdb.protocol.schema_scalars import KEY, PNN, U32, U64, VALUE, number, text
from ctdb.server import serving
from ctdb.server.node import Node
from ctdb.server.state import NodeFlags
from ctdb.storage.database import Database, DbKind
from ctdb.storage.entries import Entry
from ctdb.storage.ltdb import live_value


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


# -- operations ---------------------------------------------------------------------------


@op("hello", struct({"version": U32}))
def _hello(s: ClientSession, args: dict[str, Any]) -> dict[str, Any]:
    version = args["version"]
    if version != protocol.VERSION:
        raise CtdbError(
            ErrorCode.PROTOCOL,
            f"client speaks protocol {version}, daemon speaks {protocol.VERSION}",
        )
    s.greeted = True
    return {"version": protocol.VERSION, "pnn": s.node.pnn, "nodes": len(s.node.nodes)}


def _target(s: ClientSession, args: dict[str, Any]) -> int:
    """The node an admin operation addresses (`-n PNN`), this one by default."""
    pnn: int | None = args.get("pnn")
    return s.node.pnn if pnn is None else pnn


def _remote_or_local(control: str) -> Handler:
    """An admin query: answered here, or forwarded to node `pnn` like `ctdb -n PNN`."""

    def handler(s: ClientSession, args: dict[str, Any]) -> Any:
        control_args = {name: value for name, value in args.items() if name != "pnn"}
        return s.node.control(_target(s, args), control, control_args)

    return handler


for _name, _args in {
    "pnn": admin(),
    "uptime": admin(),
    "status": admin(),
    "getdbmap": admin(),
    "statistics": admin(),
    "listvars": admin(),
    "getvar": admin({"name": text(64)}),
    "setvar": admin({"name": text(64), "value": TUNABLE_VALUE}),
}.items():
    op(_name, _args)(_remote_or_local(_name))


@op("recover", admin())
def _recover(s: ClientSession, args: dict[str, Any]) -> Any:
    """Returns when the recovery has finished (the node bounds it by RecoverTimeout)."""
    node = s.node
    timeout = max(node.tunable("CallTimeout"), node.tunable("RecoverTimeout") + 1)
    return node.control(_target(s, args), "recover", {}, timeout=timeout)


@op("ping", admin())
async def _ping(s: ClientSession, args: dict[str, Any]) -> dict[str, Any]:
    """Round trip to node `pnn` measured inside the daemon, as `ctdb ping` does."""
    target = _target(s, args)
    started = time.perf_counter()  # uvloop's loop.time() has only millisecond resolution
    await s.node.control(target, "ping", {})
    return {"pnn": target, "rtt": time.perf_counter() - started}


@op("listnodes")
def _listnodes(s: ClientSession, args: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"pnn": p, "address": a} for p, a in enumerate(s.node.nodes)]


@op("attach", struct({"name": DB_NAME}, {"kind": text(32)}))
async def _attach(s: ClientSession, args: dict[str, Any]) -> dict[str, Any]:
    kind = DbKind.parse(args.get("kind") or "volatile")
    db = await s.node.records.attach(args["name"], kind)
    return db.info()


ON_DB = struct({"db": DB})
ON_RECORD = struct({"db": DB, "key": KEY})
WRITE = struct({"db": DB, "key": KEY, "value": VALUE})


@op("fetch", ON_RECORD)
def _fetch(s: ClientSession, args: dict[str, Any]) -> Any:
    db, key = s.database(args), args["key"]
    if db.replicated:
        return serving.read_local(s.node, db, key, lambda: live_value(db.local.get(key)))
    return s.node.records.fetch(db, key, s)


def _volatile(s: ClientSession, args: dict[str, Any]) -> Database:
    db = s.database(args)
    if db.replicated:
        raise CtdbError(
            ErrorCode.INVALID,
            f"database {db.name} is {db.kind.value}: use a transaction (pstore/ptrans)",
        )
    return db


@op("store", WRITE)
def _store(s: ClientSession, args: dict[str, Any]) -> Any:
    return s.node.records.store(_volatile(s, args), args["key"], args["value"], s)


@op("delete", ON_RECORD)
def _delete(s: ClientSession, args: dict[str, Any]) -> Any:
    return s.node.records.store(_volatile(s, args), args["key"], b"", s)


@op("fetch_lock", ON_RECORD)
def _fetch_lock(s: ClientSession, args: dict[str, Any]) -> Any:
    return s.node.records.lock(_volatile(s, args), args["key"], s)


@op("unlock", ON_RECORD)
def _unlock(s: ClientSession, args: dict[str, Any]) -> Any:
    return s.node.records.unlock(_volatile(s, args), args["key"], s, None)


@op("store_unlock", WRITE)
def _store_unlock(s: ClientSession, args: dict[str, Any]) -> Any:
    return s.node.records.unlock(_volatile(s, args), args["key"], s, args["value"])


@op("traverse", ON_DB)
async def _traverse(s: ClientSession, args: dict[str, Any]) -> list[list[bytes]]:
    """Every live record of the database, from every node that holds some."""
    return [[key, rec.value] for key, rec in await s.node.records.traverse(s.database(args))]


@op("getdbseqnum", ON_DB)
def _getdbseqnum(s: ClientSession, args: dict[str, Any]) -> int:
    return s.database(args).seqnum()


# -- entry lists: conditional append (ctdb.engines.record_calls) -------------------------

#: A condition's argument: an integer, or its decimal text (from a command line).
CONDITION_ARG = nullable(one_of(U64, text(20)))


def _owner(s: ClientSession) -> Owner:
    if s.entry_owner is None:
        s.entry_owner = s.node.owners.new_client(s.on_message, s.fence)
    return s.entry_owner


def _call(s: ClientSession, args: dict[str, Any], call: RecordCall) -> Any:
    """Run `call` on the record; the answer names the client's owner id."""
    db, key = s.database(args), args["key"]
    owner = _owner(s)
    if not isinstance(call, Read):
        s.appended.add((db.id, key))
    result = s.node.records.call(db, key, call)
    if isinstance(result, dict):
        return {**result, "owner": list(owner)}
    return _with_owner(result, owner)


async def _with_owner(result: Any, owner: Owner) -> dict[str, Any]:
    return {**(await result), "owner": list(owner)}


@op(
    "cond_append",
    struct(
        {"db": DB, "key": KEY, "condition": text(64), "payload": PAYLOAD},
        {"arg": CONDITION_ARG},
    ),
)
def _cond_append(s: ClientSession, args: dict[str, Any]) -> Any:
    """Append an entry if the named condition holds (CTDB_REQ_CONDITIONAL_APPEND)."""
    entry = Entry(*_owner(s), args["payload"])
    return _call(s, args, Append(args["condition"], args.get("arg"), entry))


@op("entries", ON_RECORD)
def _entries(s: ClientSession, args: dict[str, Any]) -> Any:
    """The record's RSN and entries, read where it lives (it does not move)."""
    return _call(s, args, Read())


@op(
    "remove_entries",
    struct({"db": DB, "key": KEY}, {"match": PAYLOAD, "owner": OWNER}),
)
def _remove_entries(s: ClientSession, args: dict[str, Any]) -> Any:
    """Remove this client's entries (only those with payload `match`, if given).

    With `owner` (pnn, client id), another client's: an administrator's
    clean-up (`ctdbtool unappend --owner`); the socket is the owner's only.
    """
    wire = args.get("owner")
    owner = _owner(s) if wire is None else (int(wire[0]), int(wire[1]))
    return _call(s, args, Remove(owner, args.get("match")))


# -- persistent transactions ------------------------------------------------------------


@op("trans_start", ON_DB)
def _trans_start(s: ClientSession, args: dict[str, Any]) -> int:
    tx = s.node.transactions.begin(s.database(args))
    s.transactions[tx.id] = tx
    return tx.id


@op("trans_fetch", struct({"tx": TX, "key": KEY}))
def _trans_fetch(s: ClientSession, args: dict[str, Any]) -> Any:
    tx, key = s.transaction(args), args["key"]
    return serving.read_local(s.node, tx.db, key, lambda: tx.fetch(key))


@op("trans_store", struct({"tx": TX, "key": KEY, "value": VALUE}))
def _trans_store(s: ClientSession, args: dict[str, Any]) -> None:
    s.transaction(args).writes[args["key"]] = args["value"]


@op("trans_delete", struct({"tx": TX, "key": KEY}))
def _trans_delete(s: ClientSession, args: dict[str, Any]) -> None:
    s.transaction(args).writes[args["key"]] = None


@op("trans_cancel", struct({"tx": TX}))
def _trans_cancel(s: ClientSession, args: dict[str, Any]) -> None:
    s.transactions.pop(s.transaction(args).id)


@op("trans_commit", struct({"tx": TX}))
async def _trans_commit(s: ClientSession, args: dict[str, Any]) -> int:
    tx = s.transactions.pop(s.transaction(args).id)
    return await s.node.records.commit(tx)


# -- whole-database admin operations ------------------------------------------------------


@op("wipedb", ON_DB)
async def _wipedb(s: ClientSession, args: dict[str, Any]) -> None:
    await s.node.records.wipe(s.database(args))


@op("backupdb", ON_DB)
async def _backupdb(s: ClientSession, args: dict[str, Any]) -> dict[str, Any]:
    db = s.database(args)
    records = await _traverse(s, args)
    return {"name": db.name, "kind": db.kind.value, "seqnum": db.seqnum(), "records": records}


@op("restoredb", struct({"db": DB, "records": key_values(min_key=1)}))
async def _restoredb(s: ClientSession, args: dict[str, Any]) -> int:
    """Replace a database's contents with a backup (a transaction for persistent ones).

    Each record was checked like a client's store (a non-empty key within
    MaxKeySize, a value within MaxValueSize) before anything is wiped.
    """
    db = s.database(args)
    records: list[list[bytes]] = args["records"]
    if db.replicated:
        tx = s.node.transactions.begin(db)
        for key, _ in await _traverse(s, {"db": args["db"]}):
            tx.writes[key] = None
        for key, value in records:
            tx.writes[key] = value
        await s.node.records.commit(tx)
        return len(records)
    await _wipedb(s, {"db": args["db"]})
    for key, value in records:
        await resolved(s.node.records.store(db, key, value, s))
    return len(records)


# -- messaging and node administration ---------------------------------------------------

SRVID = struct({"srvid": U64})


@op("register_srvid", SRVID)
def _register_srvid(s: ClientSession, args: dict[str, Any]) -> None:
    srvid = args["srvid"]
    if srvid == protocol.ENTRY_HEAD_SRVID:
        # Nodes tell each other whose entry came first there; each client
        # hears only of its own (ctdb.server.owners).
        raise CtdbError(ErrorCode.INVALID, f"srvid {srvid:#x} is reserved for entry-list notices")
    if srvid not in s.srvids:
        s.srvids.add(srvid)
        s.node.messaging.register(srvid, s.on_message)


@op("deregister_srvid", SRVID)
def _deregister_srvid(s: ClientSession, args: dict[str, Any]) -> None:
    srvid = args["srvid"]
    if srvid in s.srvids:
        s.srvids.discard(srvid)
        s.node.messaging.deregister(srvid, s.on_message)


@op("send_message", struct({"srvid": U64, "data": CLIENT_DATA}, ON_NODE))
def _send_message(s: ClientSession, args: dict[str, Any]) -> None:
    """To node `pnn`'s clients, or to every connected node's without one."""
    s.node.messaging.send(args.get("pnn"), args["srvid"], args["data"])


_FLAG_OPS = {
    "stop": (NodeFlags.STOPPED, 0),
    "continue": (0, NodeFlags.STOPPED),
    "disable": (NodeFlags.DISABLED, 0),
    "enable": (0, NodeFlags.DISABLED),
}


def _flag_op(set_bits: int, clear_bits: int) -> Handler:
    def handler(s: ClientSession, args: dict[str, Any]) -> Any:
        return s.node.control(_target(s, args), "setflags", {"set": set_bits, "clear": clear_bits})

    return handler


for _name, (_set, _clear) in _FLAG_OPS.items():
    op(_name, admin())(_flag_op(_set, _clear))


#: A ban lasts a finite, positive time (CTDB's is a u32 of seconds).
BAN_SECONDS = number(0, U32_MAX, above=True)


@op("ban", admin({"seconds": BAN_SECONDS}))
def _ban(s: ClientSession, args: dict[str, Any]) -> Any:
    return s.node.control(_target(s, args), "ban", {"seconds": args["seconds"]})


@op("unban", admin())
def _unban(s: ClientSession, args: dict[str, Any]) -> Any:
    return s.node.control(_target(s, args), "ban", {"seconds": 0})


@op("reloadnodes")
async def _reloadnodes(s: ClientSession, args: dict[str, Any]) -> dict[str, Any]:
    """Every connected node re-reads its nodes file, this one last (as CTDB does)."""
    node = s.node
    others = [p for p in node.transport.view.members if p != node.pnn]
    for p in others:
        await node.control(p, "reloadnodes", {})
    added = await node.control(node.pnn, "reloadnodes", {})
    return {"added": added, "nodes": list(node.nodes)}


@op("shutdown", admin())
def _shutdown(s: ClientSession, args: dict[str, Any]) -> Any:
    return s.node.control(_target(s, args), "shutdown", {})
