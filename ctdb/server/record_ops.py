"""What a client may do with records: the hand-shake, attaching, reading and
writing records, entry lists (conditional append) and persistent transactions.

Each operation is registered with the schema of its arguments (`client_ops.op`).
"""

from __future__ import annotations

from typing import Any

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.record_calls import Append, Owner, Read, RecordCall, Remove
from ctdb.protocol import client as protocol
from ctdb.protocol.message_fields import DB_NAME, OWNER, PAYLOAD, TX_WRITES
from ctdb.protocol.schema_combinators import nullable, one_of, struct
from ctdb.protocol.schema_scalars import KEY, U32, U64, VALUE, text
from ctdb.server import serving
from ctdb.server.client_ops import (
    DB,
    ON_DB,
    ON_RECORD,
    TX,
    WRITE,
    ClientSession,
    op,
)
from ctdb.storage.database import Database, DbKind
from ctdb.storage.entries import Entry
from ctdb.storage.ltdb import live_value


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


@op("attach", struct({"name": DB_NAME}, {"kind": text(32)}))
async def _attach(s: ClientSession, args: dict[str, Any]) -> dict[str, Any]:
    kind = DbKind.parse(args.get("kind") or "volatile")
    db = await s.node.records.attach(args["name"], kind)
    return db.info()


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


@op("in_place", ON_DB)
async def _in_place(s: ClientSession, args: dict[str, Any]) -> dict[str, Any] | None:
    """What a client needs to use the records of a volatile database in place
    (`ctdb.client.in_place`); None where it may not (vs, other kinds)."""
    db = s.database(args)
    serving_file = s.node.serving_file
    if (
        db.kind is not DbKind.VOLATILE
        or not s.node.membership.records_in_place
        or serving_file is None
    ):
        return None
    await serving.share(s.node, db)
    return {
        "path": str(db.path),
        "tdb_flags": db.local.tdb_flags,
        "serving": str(serving_file.path),
        "pnn": s.node.pnn,
    }


@op("traverse", ON_DB)
async def traverse(s: ClientSession, args: dict[str, Any]) -> list[list[bytes]]:
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


@op("trans_write", struct({"tx": TX, "writes": TX_WRITES}))
def _trans_write(s: ClientSession, args: dict[str, Any]) -> None:
    s.transaction(args).writes.update((key, value or None) for key, value in args["writes"])


@op("trans_cancel", struct({"tx": TX}))
def _trans_cancel(s: ClientSession, args: dict[str, Any]) -> None:
    s.transactions.pop(s.transaction(args).id)


@op("trans_commit", struct({"tx": TX}))
async def _trans_commit(s: ClientSession, args: dict[str, Any]) -> int:
    tx = s.transactions.pop(s.transaction(args).id)
    return await s.node.records.commit(tx)
