"""The daemon's client socket: sessions, argument checking and operation dispatch.

This is the thin I/O shell around `ctdb.protocol` (framing and parsing) and
`ctdb.node` (the logic). Each operation is a handler that either returns its
result at once (the fast path: a record this node holds, a status query) or
returns a coroutine that the session runs as a task, so one slow request
(a record migrating from another node) never holds up the others.

A client that sends garbage gets an error reply (or, when the stream cannot
be resynchronised, a closed connection) and nobody else notices. A client
that disconnects loses its record locks, open transactions and message
registrations.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from ctdb import protocol
from ctdb.database import Database, DbKind
from ctdb.errors import CtdbError, ErrorCode
from ctdb.ltdb import live_value
from ctdb.node import Node as ClusterNode
from ctdb.node import NodeFlags
from ctdb.transactions import Transaction

log = logging.getLogger("ctdb.server")

Handler = Callable[["Session", dict[str, Any]], Any]
OPS: dict[str, Handler] = {}


def op(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        OPS[name] = fn
        return fn

    return register


# -- argument checking -----------------------------------------------------------------


def arg(args: dict[str, Any], name: str, kind: type, *, default: Any = ...) -> Any:
    if name not in args or args[name] is None:
        if default is not ...:
            return default
        raise CtdbError(ErrorCode.INVALID, f"missing argument {name!r}")
    value = args[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CtdbError(
            ErrorCode.INVALID,
            f"argument {name!r} must be {kind.__name__}, not {type(value).__name__}",
        )
    return value


class Session:
    """One connected client."""

    def __init__(self, server: ClientServer, transport: asyncio.Transport) -> None:
        self.server = server
        self.node = server.node
        self.transport = transport
        self.greeted = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.transactions: dict[int, Transaction] = {}
        self.srvids: set[int] = set()
        self.closed = False

    # -- helpers used by the handlers ---------------------------------------------

    def database(self, args: dict[str, Any]) -> Database:
        ref = args.get("db")
        if isinstance(ref, int) and not isinstance(ref, bool):
            return self.node.db(ref)
        if isinstance(ref, str):
            return self.node.db_by_name(ref)
        raise CtdbError(ErrorCode.INVALID, "argument 'db' must be a database name or id")

    def key(self, args: dict[str, Any]) -> bytes:
        key: bytes = arg(args, "key", bytes)
        if len(key) > self.node.tunable("MaxKeySize"):
            raise CtdbError(ErrorCode.TOO_BIG, f"key of {len(key)} bytes exceeds MaxKeySize")
        if not key:
            raise CtdbError(ErrorCode.INVALID, "key must not be empty")
        return key

    def value(self, args: dict[str, Any]) -> bytes:
        value: bytes = arg(args, "value", bytes)
        if len(value) > self.node.tunable("MaxValueSize"):
            raise CtdbError(ErrorCode.TOO_BIG, f"value of {len(value)} bytes exceeds MaxValueSize")
        return value

    def transaction(self, args: dict[str, Any]) -> Transaction:
        txid = arg(args, "tx", int)
        try:
            return self.transactions[txid]
        except KeyError:
            raise CtdbError(ErrorCode.NOT_FOUND, f"no open transaction {txid}") from None

    def on_message(self, srvid: int, src: int, data: bytes) -> None:
        if not self.closed:
            self.transport.write(protocol.encode_event(srvid, src, data))

    # -- request handling ---------------------------------------------------------

    def handle(self, requests: list[protocol.Request | CtdbError]) -> None:
        out: list[bytes] = []
        for req in requests:
            if isinstance(req, CtdbError):
                reqid = getattr(req, "reqid", 0)
                if reqid:
                    out.append(protocol.encode_error(reqid, req))
                    continue
                # No request id to answer: the client is broken; tell it why and hang up.
                self.transport.write(b"".join(out) + protocol.encode_error(0, req))
                self.transport.close()
                return
            out.append(self._run(req))
        if out:
            self.transport.write(b"".join(out))

    def _run(self, req: protocol.Request) -> bytes:
        """Run one request; returns the reply bytes now, or b"" if it went async."""
        self.node.stats["client_requests"] += 1
        try:
            if not self.greeted and req.op != "hello":
                raise CtdbError(ErrorCode.PROTOCOL, "the first request must be 'hello'")
            handler = OPS.get(req.op)
            if handler is None:
                raise CtdbError(ErrorCode.NOT_SUPPORTED, f"unknown operation {req.op!r}")
            result = handler(self, req.args)
            if inspect.iscoroutine(result):
                task = asyncio.get_running_loop().create_task(self._finish(req.reqid, result))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                return b""
            return protocol.encode_reply(req.reqid, result)
        except CtdbError as exc:
            return protocol.encode_error(req.reqid, exc)
        except Exception as exc:
            log.exception("operation %s failed", req.op)
            return protocol.encode_error(req.reqid, _internal(exc))

    async def _finish(self, reqid: int, coro: Any) -> None:
        try:
            data = protocol.encode_reply(reqid, await coro)
        except CtdbError as exc:
            data = protocol.encode_error(reqid, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("operation failed")
            data = protocol.encode_error(reqid, _internal(exc))
        if not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        """The client went away: release everything it held."""
        if self.closed:
            return
        self.closed = True
        for task in list(self.tasks):
            task.cancel()
        self.node.records.release_all(self)
        self.transactions.clear()
        for srvid in self.srvids:
            callbacks = self.node.srvids.get(srvid, [])
            if self.on_message in callbacks:
                callbacks.remove(self.on_message)
            if not callbacks:
                self.node.srvids.pop(srvid, None)
        self.server.sessions.discard(self)


def _internal(exc: Exception) -> CtdbError:
    return CtdbError(ErrorCode.IO, f"internal error: {type(exc).__name__}: {exc}")


class _Protocol(asyncio.Protocol):
    def __init__(self, server: ClientServer) -> None:
        self.server = server
        self.decoder = protocol.RequestDecoder(int(server.node.tunable("MaxFrameSize")))
        self.session: Session | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.session = Session(self.server, cast(asyncio.Transport, transport))
        self.server.sessions.add(self.session)

    def data_received(self, data: bytes) -> None:
        assert self.session is not None
        try:
            requests = self.decoder.feed(data)
        except CtdbError as exc:
            log.warning("closing client connection: %s", exc)
            self.session.transport.write(protocol.encode_error(0, exc))
            self.session.transport.close()
            return
        self.session.handle(requests)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.session.close()


class ClientServer:
    def __init__(self, node: ClusterNode, path: Path, mode: int = 0o600) -> None:
        self.node = node
        self.path = path
        self.mode = mode
        self.sessions: set[Session] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        old_umask = os.umask(0o077)
        try:
            self._server = await asyncio.get_running_loop().create_unix_server(
                lambda: _Protocol(self), str(self.path)
            )
        finally:
            os.umask(old_umask)
        os.chmod(self.path, self.mode)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for session in list(self.sessions):
                session.transport.abort()
                session.close()
            # uvloop waits for every connection to be gone; never hang shutdown on it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        if self.path.exists():
            self.path.unlink()


# -- operations ---------------------------------------------------------------------------


@op("hello")
def _hello(s: Session, args: dict[str, Any]) -> dict[str, Any]:
    version = arg(args, "version", int)
    if version != protocol.VERSION:
        raise CtdbError(
            ErrorCode.PROTOCOL,
            f"client speaks protocol {version}, daemon speaks {protocol.VERSION}",
        )
    s.greeted = True
    return {"version": protocol.VERSION, "pnn": s.node.pnn, "nodes": len(s.node.nodes)}


def _target(s: Session, args: dict[str, Any]) -> int:
    """The node an admin operation addresses (`-n PNN`), this one by default."""
    target: int = arg(args, "pnn", int, default=s.node.pnn)
    if not 0 <= target < len(s.node.nodes):
        raise CtdbError(ErrorCode.NOT_FOUND, f"no node with pnn {target}")
    return target


def _remote_or_local(control: str) -> Handler:
    """An admin query: answered here, or forwarded to node `pnn` like `ctdb -n PNN`."""

    def handler(s: Session, args: dict[str, Any]) -> Any:
        return s.node.control(_target(s, args), control, args)

    return handler


for _name in (
    "pnn",
    "uptime",
    "status",
    "getdbmap",
    "statistics",
    "listvars",
    "getvar",
    "setvar",
):
    op(_name)(_remote_or_local(_name))


@op("recover")
def _recover(s: Session, args: dict[str, Any]) -> Any:
    """Returns when the recovery has finished (the node bounds it by RecoverTimeout)."""
    node = s.node
    timeout = max(node.tunable("CallTimeout"), node.tunable("RecoverTimeout") + 1)
    return node.control(_target(s, args), "recover", args, timeout=timeout)


@op("ping")
async def _ping(s: Session, args: dict[str, Any]) -> dict[str, Any]:
    """Round trip to node `pnn` measured inside the daemon, as `ctdb ping` does."""
    target = _target(s, args)
    started = time.perf_counter()  # uvloop's loop.time() has only millisecond resolution
    await s.node.control(target, "ping", {})
    return {"pnn": target, "rtt": time.perf_counter() - started}


@op("listnodes")
def _listnodes(s: Session, args: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"pnn": p, "address": a} for p, a in enumerate(s.node.nodes)]


@op("attach")
async def _attach(s: Session, args: dict[str, Any]) -> dict[str, Any]:
    name = arg(args, "name", str)
    kind = DbKind.parse(arg(args, "kind", str, default="volatile"))
    db = await s.node.records.attach(name, kind)
    return db.info()


@op("fetch")
def _fetch(s: Session, args: dict[str, Any]) -> Any:
    db, key = s.database(args), s.key(args)
    if db.replicated:
        return _local_read(s, lambda: live_value(db.local.get(key)))
    return s.node.records.fetch(db, key, s)


def _local_read(s: Session, read: Callable[[], Any]) -> Any:
    """Persistent data is read from the local copy, but not while a recovery rewrites it."""
    if s.node.serving:
        return read()

    async def when_serving() -> Any:
        loop = asyncio.get_running_loop()
        await s.node.wait_serving(loop.time() + s.node.tunable("CallTimeout"))
        return read()

    return when_serving()


def _volatile(s: Session, args: dict[str, Any]) -> Database:
    db = s.database(args)
    if db.replicated:
        raise CtdbError(
            ErrorCode.INVALID,
            f"database {db.name} is {db.kind.value}: use a transaction (pstore/ptrans)",
        )
    return db


@op("store")
def _store(s: Session, args: dict[str, Any]) -> Any:
    db, key, value = _volatile(s, args), s.key(args), s.value(args)
    return s.node.records.store(db, key, value, s)


@op("delete")
def _delete(s: Session, args: dict[str, Any]) -> Any:
    db, key = _volatile(s, args), s.key(args)
    return s.node.records.store(db, key, b"", s)


@op("fetch_lock")
def _fetch_lock(s: Session, args: dict[str, Any]) -> Any:
    db, key = _volatile(s, args), s.key(args)
    return s.node.records.lock(db, key, s)


@op("unlock")
def _unlock(s: Session, args: dict[str, Any]) -> Any:
    return s.node.records.unlock(_volatile(s, args), s.key(args), s, None)


@op("store_unlock")
def _store_unlock(s: Session, args: dict[str, Any]) -> Any:
    db, key, value = _volatile(s, args), s.key(args), s.value(args)
    return s.node.records.unlock(db, key, s, value)


@op("traverse")
async def _traverse(s: Session, args: dict[str, Any]) -> list[list[bytes]]:
    """Every live record of the database, from every node that holds some."""
    return await s.node.records.traverse(s.database(args))


@op("getdbseqnum")
def _getdbseqnum(s: Session, args: dict[str, Any]) -> int:
    return s.database(args).seqnum()


# -- persistent transactions ------------------------------------------------------------


@op("trans_start")
def _trans_start(s: Session, args: dict[str, Any]) -> int:
    tx = s.node.transactions.begin(s.database(args))
    s.transactions[tx.id] = tx
    return tx.id


@op("trans_fetch")
def _trans_fetch(s: Session, args: dict[str, Any]) -> Any:
    tx, key = s.transaction(args), s.key(args)
    return _local_read(s, lambda: tx.fetch(key))


@op("trans_store")
def _trans_store(s: Session, args: dict[str, Any]) -> None:
    s.transaction(args).writes[s.key(args)] = s.value(args)


@op("trans_delete")
def _trans_delete(s: Session, args: dict[str, Any]) -> None:
    s.transaction(args).writes[s.key(args)] = None


@op("trans_cancel")
def _trans_cancel(s: Session, args: dict[str, Any]) -> None:
    s.transactions.pop(s.transaction(args).id)


@op("trans_commit")
async def _trans_commit(s: Session, args: dict[str, Any]) -> int:
    tx = s.transactions.pop(s.transaction(args).id)
    return await s.node.records.commit(tx)


# -- whole-database admin operations ------------------------------------------------------


@op("wipedb")
async def _wipedb(s: Session, args: dict[str, Any]) -> None:
    await s.node.records.wipe(s.database(args))


@op("backupdb")
async def _backupdb(s: Session, args: dict[str, Any]) -> dict[str, Any]:
    db = s.database(args)
    records = await _traverse(s, args)
    return {"name": db.name, "kind": db.kind.value, "seqnum": db.seqnum(), "records": records}


@op("restoredb")
async def _restoredb(s: Session, args: dict[str, Any]) -> int:
    """Replace a database's contents with a backup (a transaction for persistent ones)."""
    db = s.database(args)
    records = arg(args, "records", list)
    for item in records:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], bytes)
            and isinstance(item[1], bytes)
        ):
            raise CtdbError(ErrorCode.INVALID, "records must be [key, value] pairs of bytes")
    if db.replicated:
        tx = s.node.transactions.begin(db)
        for key, _ in await _traverse(s, args):
            tx.writes[key] = None
        for key, value in records:
            tx.writes[key] = value
        await s.node.records.commit(tx)
        return len(records)
    await _wipedb(s, args)
    for key, value in records:
        result = s.node.records.store(db, key, value, s)
        if inspect.isawaitable(result):
            await result
    return len(records)


# -- messaging and node administration ---------------------------------------------------


@op("register_srvid")
def _register_srvid(s: Session, args: dict[str, Any]) -> None:
    srvid = arg(args, "srvid", int)
    if srvid not in s.srvids:
        s.srvids.add(srvid)
        s.node.srvids.setdefault(srvid, []).append(s.on_message)


@op("deregister_srvid")
def _deregister_srvid(s: Session, args: dict[str, Any]) -> None:
    srvid = arg(args, "srvid", int)
    if srvid in s.srvids:
        s.srvids.discard(srvid)
        callbacks = s.node.srvids.get(srvid, [])
        callbacks.remove(s.on_message)
        if not callbacks:
            s.node.srvids.pop(srvid, None)


@op("send_message")
def _send_message(s: Session, args: dict[str, Any]) -> None:
    target = arg(args, "pnn", int, default=None)
    s.node.send_message(target, arg(args, "srvid", int), arg(args, "data", bytes))


_FLAG_OPS = {
    "stop": (NodeFlags.STOPPED, 0),
    "continue": (0, NodeFlags.STOPPED),
    "disable": (NodeFlags.DISABLED, 0),
    "enable": (0, NodeFlags.DISABLED),
}


def _flag_op(set_bits: int, clear_bits: int) -> Handler:
    def handler(s: Session, args: dict[str, Any]) -> Any:
        return s.node.control(_target(s, args), "setflags", {"set": set_bits, "clear": clear_bits})

    return handler


for _name, (_set, _clear) in _FLAG_OPS.items():
    op(_name)(_flag_op(_set, _clear))


@op("ban")
def _ban(s: Session, args: dict[str, Any]) -> Any:
    return s.node.control(_target(s, args), "ban", {"seconds": arg(args, "seconds", float)})


@op("unban")
def _unban(s: Session, args: dict[str, Any]) -> Any:
    return s.node.control(_target(s, args), "ban", {"seconds": 0})


@op("reloadnodes")
async def _reloadnodes(s: Session, args: dict[str, Any]) -> dict[str, Any]:
    """Every connected node re-reads its nodes file, this one last (as CTDB does)."""
    node = s.node
    others = [p for p in node.transport.view.members if p != node.pnn]
    for p in others:
        await node.control(p, "reloadnodes", {})
    added = await node.control(node.pnn, "reloadnodes", {})
    return {"added": added, "nodes": list(node.nodes)}


@op("shutdown")
def _shutdown(s: Session, args: dict[str, Any]) -> Any:
    return s.node.control(_target(s, args), "shutdown", {})
