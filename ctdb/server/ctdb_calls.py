"""REQ_CALL on the CTDB-protocol door: a record brought here for Samba's clients.

Served for volatile databases over tcp (`ctdb.engines.shared_calls`): the
record is migrated here, the call id runs on it (NULL_FUNC: no data;
FETCH_FUNC: its value; FETCH_WITH_HEADER_FUNC: CTDB's 24-byte header and
the value) and the reply says status 0. What cannot be served is answered
-1 at once, as ctdbd answers a call it cannot run (an unknown database gets
-1 too, where ctdbd would leave the client waiting): so is anything not
done within CallTimeout. A client that goes away mid-call cancels it; the
record stays wherever the migration got it to.

Not served, and why:

* Persistent and replicated databases: every node holds every record and
  writes go through transactions; clients read their local copy without
  asking (ctdbd runs REQ_CALL there only for read-only delegations).
* The vs engine. There every node applies one ordered stream and holds
  every record; a client writing in place would change one node's copy
  outside the stream, and the others would never see it. The design it
  would take: REQ_CALL enters this node's request for the record's
  replicated lock queue (`ctdb.engines.ordered.locks`) into the stream and
  replies once that request heads the queue; only then does the file show
  dmaster == this node. When the lock is to move (another request is next,
  or the holder's node leaves the view), this node first reads the value the
  client left in its file, under the chain lock, and broadcasts it as one
  ordered write, so every member applies it before the next holder reads,
  and marks its copy as nobody's (a dmaster no node has). Until then vs
  answers -1. Tried (2026-12-03): lending worked for `ctdb` readkey,
  writekey, deletekey, `fetch_ring` and `fetch_loop_key`, but
  `transaction_loop` deadlocked the daemon. Clients that hold a lent
  record's chain may wait for the daemon (g_lock holders ask PROCESS_EXISTS
  under it), while the vs engine applies the stream with blocking TDB
  calls. The apply would have to stall the stream (and the view changes in
  it) while a client holds a chain it needs, as the tcp engine requeues.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.migration import MigrationEngine
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
            migrated = migrate_here(engine, db, req.key)
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


def _servable(node: Node, req: ReqCall) -> tuple[MigrationEngine, Database]:
    """The engine and database that serve `req`; NotServed if it cannot be served."""
    db = node.dbs.get(req.db_id)
    if db is None:
        raise NotServed("unknown db", f"a call on unknown database id 0x{req.db_id:08x}")
    engine = node.records
    if not isinstance(engine, MigrationEngine):
        raise NotServed(
            "vs",
            "record calls are not served on the vs transport: a client's write in place "
            "would bypass the ordered stream (see ctdb.server.ctdb_calls)",
        )
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
