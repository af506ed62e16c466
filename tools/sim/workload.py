"""Simulated clients: each talks to its node's engines as `ctdb.server.clients` does.

A client runs a random mix of operations on a few keys until the workload's
deadline and records each in the `History`: volatile stores, deletes,
linearizable fetches and increments under `fetch_lock`/`store_unlock`
(read-modify-write), persistent local reads (`pfetch`, linearizable too: a
node answers from its copy only while it knows it is current), blind
transactions over one or two keys and increments in transactions; and on
entry lists (other keys, of the volatile or the persistent database)
conditional appends under `always`, `empty` or `max_entries N`, removals of
the client's own entries and reads of the list, as record calls. Every
write writes a value of its own (`<client>.<n>`), so the checker can tell
every write apart; an entry's payload is such a value too, so the checker
knows whose entry it is and on which node its client runs.

A client is a process of its own (`Workload.start_client`): it goes on
while its node is stopped, and each request runs as the node's code, so a
request sent to a stopped node waits and may be handled before what the
network queued for the node meanwhile.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import random
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ctdb.common.errors import CtdbError
from ctdb.engines.record_calls import Append, Read, RecordCall, Remove
from ctdb.server import serving
from ctdb.server.node import Node
from ctdb.storage.database import Database, DbKind
from ctdb.storage.entries import Entry
from ctdb.storage.ltdb import live_value
from tools.sim.cluster import SimCluster
from tools.sim.history import History, Kind, Op
from tools.sim.storage import TDB_ERR_IO

T = TypeVar("T")

VOLATILE, PERSISTENT = "v", "p"
KEYS = [f"k{i}" for i in range(4)]
#: Volatile keys that hold entry lists (conditional append) only.
ENTRY_KEYS = ["q0", "q1"]

#: operation -> weight
MIX = {
    "vwrite": 2,
    "vdelete": 1,
    "vread": 2,
    "vincr": 4,
    "pread": 3,
    "ptx": 2,
    "pincr": 3,
    "qappend": 3,
    "qremove": 1,
    "qread": 1,
}
#: The conditions entry-list appends use, with their argument's range.
CONDITIONS = [("always", None), ("empty", None), ("max_entries", (1, 3))]


class Session:
    """Stands in for a client connection (engines key locks on its identity)."""

    def __init__(self, name: str) -> None:
        self.name = name
        #: who it is in entry lists, once it has appended: (pnn, client id)
        self.owner: tuple[int, int] | None = None
        #: picks the database of each entry-list operation, apart from the
        #: client's other draws (which stay as they were before lists could
        #: be persistent, and so do the schedules of earlier seeds)
        self.lists = random.Random(name)


async def call(result: Any) -> Any:
    """Engine methods answer at once or return an awaitable; normalise."""
    if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
        return await result
    return result


def text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def hkey(db: str, key: str) -> str:
    """The history's name of a record."""
    return f"{db}:{key}"


class Workload:
    def __init__(
        self,
        cluster: SimCluster,
        history: History,
        deadline: float,
        log: Callable[[str], None],
        complain: Callable[[str], None],
        *,
        apart: bool = True,
    ) -> None:
        self.cluster = cluster
        #: clients run as processes of their own (`start_client`)
        self.apart = apart
        self.history = history
        self.deadline = deadline
        self.log = log
        #: report something no client should ever see (a bug, not a fault)
        self.complain = complain
        self._clients = 0
        self.ops = 0
        self.failed = 0
        #: how requests failed: error code (or exception type) -> count
        self.errors: Counter[str] = Counter()
        self.tasks: list[asyncio.Task[None]] = []
        #: client name -> (what it is doing, since when), while it waits for a reply
        self.busy: dict[str, tuple[str, float]] = {}

    def start_client(self, pnn: int) -> asyncio.Task[None]:
        """A new client on node `pnn` (also after each restart of the node)."""
        self._clients += 1
        name = f"c{self._clients}@{pnn}"
        rng = random.Random(self.cluster.seed * 1009 + self._clients)
        if self.apart:
            # A process of its own: it runs on while its node is stopped, and
            # only its requests wait for the node (`_request`).
            task = asyncio.get_running_loop().create_task(
                self._run(pnn, name, rng), context=contextvars.Context()
            )
        else:
            task = self.cluster.spawn(pnn, self._run(pnn, name, rng))
        self.tasks.append(task)
        return task

    async def _run(self, pnn: int, name: str, rng: random.Random) -> None:
        node = self.cluster.nodes[pnn]
        session = Session(name)
        kinds, weights = list(MIX), list(MIX.values())
        loop = asyncio.get_running_loop()
        serial = 0
        try:
            # As a Samba process does when it opens a database: attach it.
            while loop.time() < self.deadline:
                if not self._connected(pnn, node):
                    return
                if await self._request(pnn, self.attach(node, session)):
                    break
                await asyncio.sleep(0.05)
            while loop.time() < self.deadline and self._connected(pnn, node):
                kind = rng.choices(kinds, weights)[0]
                serial += 1
                self.busy[name] = (f"{kind} (#{serial})", loop.time())
                key = rng.choice(ENTRY_KEYS if kind.startswith("q") else KEYS)
                await self._request(
                    pnn, self.one(node, session, kind, key, f"{name}.{serial}", rng)
                )
                del self.busy[name]
                await asyncio.sleep(rng.uniform(0, 0.06))
        finally:
            self.busy.pop(name, None)

    def _connected(self, pnn: int, node: Node) -> bool:
        """A client's connection ends with the incarnation of its node it was made to."""
        return self.cluster.nodes.get(pnn) is node

    async def _request(self, pnn: int, handling: Coroutine[Any, Any, T]) -> T:
        """A request as the node handles it: its code, which waits while the
        node is stopped (a request sent meanwhile may be handled before the
        traffic queued for the node: `tools.sim.loop.VirtualTimeLoop.cont_node`)
        and dies with it (the client then ends too)."""
        if not self.apart:
            return await handling
        return await self.cluster.spawn(pnn, handling)

    async def attach(self, node: Node, session: Session) -> bool:
        try:
            await call(node.records.attach(VOLATILE, DbKind.VOLATILE))
            await call(node.records.attach(PERSISTENT, DbKind.PERSISTENT))
            if self.cluster.samba:
                # As Samba's clients attach through the CTDB door: from now on
                # the node takes the chain locks they take (`Database.shared`).
                await serving.share(node, node.db_by_name(VOLATILE))
        except CtdbError as exc:
            self.log(f"{session.name} attach: {why(exc)}")
            return False
        return True

    async def one(
        self, node: Node, session: Session, kind: str, key: str, unique: str, rng: random.Random
    ) -> None:
        """Run one operation and record it (its value: `unique`)."""
        h = self.history
        client = session.name
        op: Op | None = None
        try:
            v, p = node.db_by_name(VOLATILE), node.db_by_name(PERSISTENT)
            if kind == "vwrite":
                op = h.invoke(client, hkey(VOLATILE, key), Kind.WRITE, unique)
                await call(node.records.store(v, key.encode(), unique.encode(), session))
                h.ok(op)
            elif kind == "vdelete":
                op = h.invoke(client, hkey(VOLATILE, key), Kind.WRITE, None)
                await call(node.records.store(v, key.encode(), b"", session))
                h.ok(op)
            elif kind == "vread":
                op = h.invoke(client, hkey(VOLATILE, key), Kind.READ)
                h.ok(op, text(await call(node.records.fetch(v, key.encode(), session))))
            elif kind == "vincr":
                await self.locked_update(node, session, key, unique, rng)
            elif kind == "pread":
                # What the server's `fetch` does on a persistent database.
                op = h.invoke(client, hkey(PERSISTENT, key), Kind.READ)
                raw = key.encode()
                read = serving.read_local(node, p, raw, lambda: live_value(p.local.get(raw)))
                h.ok(op, text(await call(read)))
            elif kind == "ptx":
                keys = sorted(set(rng.sample(KEYS, rng.choice([1, 2]))))
                tx = node.transactions.begin(p)
                ops = [h.invoke(client, hkey(PERSISTENT, k), Kind.WRITE, unique) for k in keys]
                for k in keys:
                    tx.writes[k.encode()] = unique.encode()
                try:
                    await node.records.commit(tx)
                except BaseException as exc:
                    for each in ops:
                        h.failed(each, why(exc))
                    raise
                for each in ops:
                    h.ok(each)
            elif kind in ("qappend", "qremove", "qread"):
                dbname = session.lists.choice([VOLATILE, PERSISTENT])
                listed, key = key, hkey(dbname, key)  # the history's name, in the log too
                await self.entries_op(
                    node, session, kind, node.db_by_name(dbname), listed, key, unique, rng
                )
            elif kind == "pincr":
                tx = node.transactions.begin(p)
                now = h.now()
                raw = key.encode()
                # What the server's `trans_fetch` does: wait while the key is unsettled.
                old = text(await call(serving.read_local(node, p, raw, lambda: tx.fetch(raw))))
                op = h.invoke(client, hkey(PERSISTENT, key), Kind.RMW, unique, old=old)
                op.invoke = now
                tx.writes[key.encode()] = unique.encode()
                await node.records.commit(tx)
                h.ok(op)
            else:  # pragma: no cover - MIX is closed
                raise ValueError(kind)
            self.ops += 1
            self.log(f"{client} {kind} {key} ok")
        except (CtdbError, RuntimeError, OSError) as exc:
            self.failed += 1
            self.errors[why(exc)] += 1
            if op is not None:
                h.failed(op, why(exc))
            self.log(f"{client} {kind} {key} {why(exc)}")
            if not isinstance(exc, CtdbError) and not _io_error(exc):
                self.complain(f"{client} {kind} {key}: unexpected {exc!r}")

    async def entries_op(
        self,
        node: Node,
        session: Session,
        kind: str,
        db: Database,
        key: str,
        where: str,
        unique: str,
        rng: random.Random,
    ) -> None:
        """An append (payload `unique`), a removal of our entries, or a read of the
        list `key` of `db`, which the history calls `where`."""
        h, raw = self.history, key.encode()
        if session.owner is None:
            session.owner = node.owners.new_client(lambda *message: None, lambda why: None)
        name, bounds = rng.choice(CONDITIONS)
        arg = None if bounds is None else rng.randint(*bounds)
        request: RecordCall
        if kind == "qappend":
            op = h.invoke(session.name, where, Kind.APPEND, unique)
            op.arg = (name, arg)
            request = Append(name, arg, Entry(*session.owner, unique.encode()))
        elif kind == "qremove":
            op = h.invoke(session.name, where, Kind.REMOVE)
            op.arg = session.name
            request = Remove(session.owner)
        else:
            op = h.invoke(session.name, where, Kind.ENTRIES)
            request = Read()
        try:
            answer = await call(node.records.call(db, raw, request))
        except BaseException as exc:
            h.failed(op, why(exc))
            raise
        h.ok(op, answer=_answer(kind, answer))

    async def locked_update(
        self, node: Node, session: Session, key: str, unique: str, rng: random.Random
    ) -> None:
        """fetch_lock, think, store_unlock: an increment as Samba does it."""
        h = self.history
        v = node.db_by_name(VOLATILE)
        started = h.now()
        old = text(await node.records.lock(v, key.encode(), session))
        op = h.invoke(session.name, hkey(VOLATILE, key), Kind.RMW, unique, old=old)
        op.invoke, granted, view = started, op.invoke, node.transport.view.view_id
        try:
            # Mostly a moment; sometimes long, so that faults and joins happen under it.
            long = rng.random() < 0.05
            await asyncio.sleep(rng.uniform(0.3, 1.5) if long else rng.uniform(0, 0.03))
            sent = h.now()
            await call(node.records.unlock(v, key.encode(), session, unique.encode()))
        except BaseException as exc:
            node.records.release_all(session)
            h.failed(op, why(exc))
            raise
        h.ok(op)
        if node.transport.view.view_id == view:  # see tools.sim.split_brain
            op.held = (granted, sent)


def _answer(kind: str, answer: dict[str, Any]) -> str:
    """A record call's answer as the history writes it (see tools.sim.history.Kind)."""
    listed = " ".join(bytes(e[2]).decode() for e in answer.get("entries", ()))
    if kind == "qappend":
        return f"appended {answer['index']}" if answer["appended"] else f"conflict {listed}"
    if kind == "qremove":
        return f"removed {answer['removed']}"
    return listed


def why(exc: BaseException) -> str:
    """A short name for what went wrong: the error code, or the exception type."""
    if isinstance(exc, CtdbError):
        return getattr(exc.code, "name", str(exc.code))
    return type(exc).__name__


def _io_error(exc: Exception) -> bool:
    """A local write that failed: `LocalDb`'s OSError, or python-tdb's own error
    (TDB_ERR_IO) where no `LocalDb` call stood between (a crashed process's write)."""
    if isinstance(exc, OSError):
        return exc.errno == errno.EIO
    return isinstance(exc, RuntimeError) and bool(exc.args) and exc.args[0] == TDB_ERR_IO
