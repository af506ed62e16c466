"""REQ_CALL on the CTDB-protocol door: a record brought here for Samba's clients.

Served for volatile databases. Over tcp the record is migrated here
(`ctdb.engines.shared_calls`); over vs, where every node holds every record
and every write enters the ordered stream, it is lent to this node's Samba
clients through the record's replicated lock and taken back, with what they
wrote in place, when another request wants it
(`ctdb.engines.ordered.samba_grants`). Then the call id runs on it
(NULL_FUNC: no data; FETCH_FUNC: its value; FETCH_WITH_HEADER_FUNC: CTDB's
24-byte header and the value) and the reply says status 0. What cannot be
served is answered -1 at once, as ctdbd answers a call it cannot run (an
unknown database gets -1 too, where ctdbd would leave the client waiting):
so is anything not done within CallTimeout. A client that goes away
mid-call cancels it; the record stays wherever the migration got it to.

Persistent and replicated databases are not served: every node holds every
record and writes go through transactions; clients read their local copy
without asking (ctdbd runs REQ_CALL there only for read-only delegations).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.migration import MigrationEngine
from ctdb.engines.ordered.engine import OrderedEngine
from ctdb.engines.shared_calls import migrate_here
from ctdb.protocol.ctdb_opcodes import FETCH_FUNC, FETCH_WITH_HEADER_FUNC, NULL_FUNC
from ctdb.protocol.ctdb_wire import ReqCall
from ctdb.server.node import Node
from ctdb.storage.database import Database
from ctdb.storage.ltdb import Record

log = logging.getLogger("ctdb.server.ctdb_calls")

CALL_IDS = frozenset({NULL_FUNC, FETCH_FUNC, FETCH_WITH_HEADER_FUNC})
#: what ctdbd answers a call it cannot run
FAILED = -1


class NotServed(CtdbError):
    """A call this daemon does not serve; `kind` names the reason for a log line once."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(ErrorCode.NOT_SUPPORTED, message)
        self.kind = kind


def answer(
    node: Node, req: ReqCall, once: Callable[[str, str], None]
) -> tuple[int, bytes] | Awaitable[tuple[int, bytes]]:
    """REQ_CALL's status and reply data: at once if it cannot be served, else
    once the record is here. `once(kind, message)` logs a kind of failure once."""
    try:
        engine, db = _servable(node, req)
    except NotServed as exc:
        once(f"call {exc.kind}", exc.message)
        return FAILED, b""

    async def answered() -> tuple[int, bytes]:
        try:
            if isinstance(engine, MigrationEngine):
                migrated = migrate_here(engine, db, req.key)
            else:
                migrated = engine.samba.migrate_here(db, req.key)
            rec = await asyncio.wait_for(migrated, node.tunable("CallTimeout"))
            return 0, reply_data(req.callid, rec)
        except TimeoutError:
            once("call timeout", f"a record call on {req.key!r} timed out (CallTimeout)")
        except CtdbError as exc:
            once(f"call failed {exc.code}", f"a record call failed: {exc.message}")
        except Exception as exc:  # a bug costs this call, not the connection
            log.error("a record call failed", exc_info=exc)
        return FAILED, b""

    return answered()


def _servable(node: Node, req: ReqCall) -> tuple[MigrationEngine | OrderedEngine, Database]:
    """The engine and database that serve `req`; NotServed if it cannot be served."""
    db = node.dbs.get(req.db_id)
    if db is None:
        raise NotServed("unknown db", f"a call on unknown database id 0x{req.db_id:08x}")
    engine = node.records
    assert isinstance(engine, MigrationEngine | OrderedEngine)
    if db.replicated:
        raise NotServed(
            f"{db.kind.value}",
            f"record calls on {db.kind.value} databases are not served "
            "(every node holds every record; writes go through transactions)",
        )
    if req.callid not in CALL_IDS:
        raise NotServed(f"call id {req.callid:#x}", f"call id {req.callid:#x} is not served")
    if not req.key:
        raise NotServed("empty key", "a call with an empty key")
    return engine, db


def reply_data(callid: int, rec: Record) -> bytes:
    """What the call id answers from the record (ctdb_ltdb.c's fetch functions)."""
    if callid == FETCH_FUNC:
        return rec.value
    if callid == FETCH_WITH_HEADER_FUNC:
        return rec.pack()
    return b""
