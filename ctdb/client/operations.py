"""What each client operation sends and what its caller gets back (no I/O).

Both front ends, `ctdb.client.Client` (blocking) and
`ctdb.client.AsyncClient` (asyncio), are built from these definitions, so
an operation is written once: its name and arguments on the wire, and how
the daemon's reply becomes its result. Keys and values are bytes; `str` is
accepted and encoded as UTF-8.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ctdb.common.errors import CtdbError, ErrorCode

if TYPE_CHECKING:
    from ctdb.client.in_place import InPlaceRecords

T = TypeVar("T")
Key = bytes | str
#: Writes of one transaction: key -> value (None deletes). Keys all bytes or all str.
Writes = Mapping[bytes, Key | None] | Mapping[str, Key | None]


def to_bytes(data: Key) -> bytes:
    return data.encode() if isinstance(data, str) else data


def _as_is(result: Any) -> Any:
    return result


@dataclass(slots=True)  # not frozen: one is built per request, and frozen costs a microsecond
class Op(Generic[T]):
    """One request: the operation, its arguments, and how its result is shaped.

    `local`, for record operations of a volatile database: how to do it in
    the client's process when this node holds the record
    (`ctdb.client.in_place`); it answers (done, result).
    """

    name: str
    args: dict[str, Any]
    shape: Callable[[Any], T] = _as_is
    local: Callable[[InPlaceRecords], tuple[bool, Any]] | None = None


@dataclass(frozen=True)
class Message:
    """A message another client sent to a srvid this client registered."""

    srvid: int
    src: int
    data: bytes


# -- records ---------------------------------------------------------------------------


def attach(name: str, kind: str = "volatile") -> Op[dict[str, Any]]:
    """Attach a database (volatile, persistent or replicated) on every node."""
    return Op("attach", {"name": name, "kind": kind})


def fetch(db: str, key: Key) -> Op[bytes | None]:
    """The record's value, or None if it does not exist."""
    k = to_bytes(key)
    return Op("fetch", {"db": db, "key": k}, local=lambda here: here.fetch(db, k))


def store(db: str, key: Key, value: Key) -> Op[None]:
    """Write a volatile record."""
    k, v = to_bytes(key), to_bytes(value)
    return Op("store", {"db": db, "key": k, "value": v}, local=lambda here: here.store(db, k, v))


def delete(db: str, key: Key) -> Op[None]:
    """Delete a volatile record."""
    return Op("delete", {"db": db, "key": to_bytes(key)})


def fetch_lock(db: str, key: Key) -> Op[bytes | None]:
    """Lock a volatile record for this client and return its value."""
    k = to_bytes(key)
    return Op("fetch_lock", {"db": db, "key": k}, local=lambda here: here.fetch_lock(db, k))


def store_unlock(db: str, key: Key, value: Key) -> Op[None]:
    """Write the record this client locked, then release the lock."""
    k, v = to_bytes(key), to_bytes(value)
    args = {"db": db, "key": k, "value": v}
    return Op("store_unlock", args, local=lambda here: here.store_unlock(db, k, v))


def unlock(db: str, key: Key) -> Op[None]:
    """Release the lock without writing."""
    k = to_bytes(key)
    return Op("unlock", {"db": db, "key": k}, local=lambda here: here.unlock(db, k))


def _pairs(records: Any) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in records]


def in_place(db: str) -> Op[dict[str, Any] | None]:
    """What using the database's records in this process takes (`ctdb.client.in_place`)."""
    return Op("in_place", {"db": db})


def traverse(db: str) -> Op[list[tuple[bytes, bytes]]]:
    """Every live record of the database, from every node, sorted by key."""
    return Op("traverse", {"db": db}, _pairs)


def getdbseqnum(db: str) -> Op[int]:
    """A persistent database's sequence number."""
    return Op("getdbseqnum", {"db": db})


# -- entry lists (conditional append) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a record's entry list: its owner (pnn, client id) and payload."""

    pnn: int
    client: int
    payload: bytes

    @property
    def owner(self) -> tuple[int, int]:
        return (self.pnn, self.client)


@dataclass(frozen=True, slots=True)
class Entries:
    """A record's entry list as it is where the record lives, and its RSN."""

    rsn: int
    entries: list[Entry]


@dataclass(frozen=True, slots=True)
class Appended:
    """What `cond_append` did.

    `appended`: the entry is in the list, at `index` (it was there already
    if this client had appended the same payload before). Otherwise the
    condition did not hold: `reason` says why, `index` names the blocking
    entry (None if no single one), and `entries` is the list it was
    evaluated on. `rsn` is the record's RSN after the call, `owner` this
    client's owner id.
    """

    appended: bool
    rsn: int
    owner: tuple[int, int]
    index: int | None = None
    reason: str | None = None
    entries: list[Entry] | None = None


def _entries(wire: Any) -> list[Entry]:
    return [Entry(int(p), int(c), bytes(payload)) for p, c, payload in wire]


def _appended(answer: dict[str, Any]) -> Appended:
    wire = answer.get("entries")
    return Appended(
        appended=bool(answer["appended"]),
        rsn=int(answer["rsn"]),
        owner=(int(answer["owner"][0]), int(answer["owner"][1])),
        index=answer.get("index"),
        reason=answer.get("reason"),
        entries=None if wire is None else _entries(wire),
    )


def cond_append(
    db: str, key: Key, payload: Key, condition: str = "always", arg: int | str | None = None
) -> Op[Appended]:
    """Append an entry owned by this client if `condition` (with `arg`) holds.

    Conditions: always, empty, rsn_equals N, max_entries N, share_mode,
    byte_range (see ctdb.engines.conditions). The record does not move.
    """
    args: dict[str, Any] = {"db": db, "key": to_bytes(key), "condition": condition}
    args["payload"] = to_bytes(payload)
    if arg is not None:
        args["arg"] = arg
    return Op("cond_append", args, _appended)


def entries(db: str, key: Key) -> Op[Entries]:
    """The record's entries and RSN, read where the record lives."""

    def shape(answer: dict[str, Any]) -> Entries:
        return Entries(int(answer["rsn"]), _entries(answer["entries"]))

    return Op("entries", {"db": db, "key": to_bytes(key)}, shape)


def remove_entries(
    db: str, key: Key, match: Key | None = None, owner: tuple[int, int] | None = None
) -> Op[int]:
    """Remove this client's entries (only those with payload `match`); how many went.

    `owner` (pnn, client id) removes another client's instead (administration).
    """
    args: dict[str, Any] = {"db": db, "key": to_bytes(key)}
    if match is not None:
        args["match"] = to_bytes(match)
    if owner is not None:
        args["owner"] = list(owner)
    return Op("remove_entries", args, lambda answer: int(answer["removed"]))


# -- persistent transactions ---------------------------------------------------------


def trans_start(db: str) -> Op[int]:
    return Op("trans_start", {"db": db})


def trans_fetch(tx: int, key: Key) -> Op[bytes | None]:
    return Op("trans_fetch", {"tx": tx, "key": to_bytes(key)})


def trans_store(tx: int, key: Key, value: Key) -> Op[None]:
    return Op("trans_store", {"tx": tx, "key": to_bytes(key), "value": to_bytes(value)})


def trans_delete(tx: int, key: Key) -> Op[None]:
    return Op("trans_delete", {"tx": tx, "key": to_bytes(key)})


def trans_write(tx: int, writes: list[tuple[bytes, bytes | None]]) -> Op[None]:
    """Several writes in one request (None deletes)."""
    return Op("trans_write", {"tx": tx, "writes": [list(w) for w in writes]})


def trans_commit(tx: int) -> Op[int]:
    """Commit on every node; the database's new sequence number."""
    return Op("trans_commit", {"tx": tx})


def trans_cancel(tx: int) -> Op[None]:
    return Op("trans_cancel", {"tx": tx})


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Listen:
    """A pause of up to `seconds` that a message to `srvid` ends early.

    The plan receives that message (taken off the client's messages), or
    None when the time ran out; messages to other srvids stay queued for
    the caller. A message is a hint to look again, never proof of anything.
    """

    srvid: int
    seconds: float


#: An operation made of several requests: it yields each request (or a
#: pause) and receives its result, or has its error thrown in. Both front
#: ends run plans, so the logic lives here once.
Plan = Generator[Op[Any] | Sleep | Listen, Any, T]


def transact(db: str, writes: Writes, attempts: int = 50) -> Plan[int]:
    """Commit `writes` (None deletes) in one transaction, retried on conflict.

    BUSY (another commit got there first) and RETRY (a recovery cut the
    commit short) are safe to retry: the commit re-validates what the
    transaction read. The pauses add up to about 2.3 s, the length of a
    recovery; after `attempts` the last error is raised. Returns the
    database's new sequence number.
    """
    batches = _batches(
        [(to_bytes(k), None if v is None else to_bytes(v)) for k, v in writes.items()]
    )
    for attempt in range(attempts):
        tx = yield trans_start(db)
        for batch in batches:
            yield trans_write(tx, batch)
        try:
            seqnum: int = yield trans_commit(tx)
            return seqnum
        except CtdbError as exc:
            if exc.code not in (ErrorCode.BUSY, ErrorCode.RETRY) or attempt == attempts - 1:
                raise
            yield Sleep(min(0.05, 0.01 * (attempt + 1)))
    raise ValueError("attempts must be at least 1")


#: What one `trans_write` request carries at most, in bytes of keys and values:
#: far below any MaxFrameSize, and few round trips for a big transaction.
BATCH_BYTES = 1 << 20


def _batches(
    writes: list[tuple[bytes, bytes | None]],
) -> list[list[tuple[bytes, bytes | None]]]:
    batches: list[list[tuple[bytes, bytes | None]]] = [[]]
    size = 0
    for key, value in writes:
        cost = len(key) + len(value or b"") + 16
        if batches[-1] and size + cost > BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append((key, value))
        size += cost
    return batches


# -- messaging ---------------------------------------------------------------------------


def register_srvid(srvid: int) -> Op[None]:
    """Receive the messages sent to `srvid` on this node."""
    return Op("register_srvid", {"srvid": srvid})


def deregister_srvid(srvid: int) -> Op[None]:
    return Op("deregister_srvid", {"srvid": srvid})


def send_message(pnn: int | None, srvid: int, data: Key) -> Op[None]:
    """To the clients of node `pnn` registered on `srvid` (every node's if None)."""
    return Op("send_message", {"pnn": pnn, "srvid": srvid, "data": to_bytes(data)})
