"""What a client may ask of the cluster rather than of records: node queries
and administration (`ctdbtool -n PNN ...`), whole-database operations
(wipe, backup, restore) and messages between clients.

Each operation is registered with the schema of its arguments (`client_ops.op`).
"""

from __future__ import annotations

import time
from typing import Any

from ctdb.engines.base import resolved
from ctdb.protocol.message_fields import CLIENT_DATA, TUNABLE_VALUE
from ctdb.protocol.schema import U32_MAX
from ctdb.protocol.schema_combinators import key_values, struct
from ctdb.protocol.schema_scalars import U64, number, text
from ctdb.server.client_ops import DB, ON_DB, ON_NODE, ClientSession, Handler, admin, op
from ctdb.server.record_ops import traverse
from ctdb.server.state import NodeFlags


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


# -- whole-database admin operations ------------------------------------------------------


@op("wipedb", ON_DB)
async def _wipedb(s: ClientSession, args: dict[str, Any]) -> None:
    await s.node.records.wipe(s.database(args))


@op("backupdb", ON_DB)
async def _backupdb(s: ClientSession, args: dict[str, Any]) -> dict[str, Any]:
    db = s.database(args)
    records = await traverse(s, args)
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
        for key, _ in await traverse(s, {"db": args["db"]}):
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
    if srvid not in s.srvids:
        s.node.messaging.register_client(srvid, s.on_message)
        s.srvids.add(srvid)


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
