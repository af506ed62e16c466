"""Functions that run on a record where it lives: conditional append and its kin.

CTDB's design runs a *call* (a registered function) on a record at its
dmaster and sends back only the result, instead of migrating the record to
the caller. The calls here are the operations on entry lists
(`ctdb.storage.entries`): `Append` (CTDB_REQ_CONDITIONAL_APPEND: add an
entry if a named condition holds), `Remove` (drop an owner's entries) and
`Read` (the entries and the RSN, without moving the record).

Both engines run the very same function on the same record and get the same
answer: the tcp engine at the record's dmaster (one request, one reply, no
migration), the ordered engine on every member at the call's position in
the stream. So `run` is pure: a record in, the value to write (if any) and
the client's answer out. The engine writes the value (bumping the RSN its
own way) and puts the new RSN into the answer. In a persistent database
the write is a transaction, which moves the database's sequence number:
over tcp a one-key commit (`persistent_calls`), over vs a stable ordered
operation.

A call may reach its record twice (tcp re-sends a call whose reply a
recovery lost), so every call is idempotent: an owner's entry equal to one
it already holds counts as appended again, at its position, and a removal
of what is gone removes nothing. An owner therefore holds an entry at most
once; a client that wants two equal entries makes their payloads differ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.conditions import RecordView, check_request, evaluate
from ctdb.storage.entries import MAGIC, MAX_ENTRIES, Entry, decode_entries, encode_entries
from ctdb.storage.ltdb import Record

#: An entry's owner: (pnn, client id on that node).
Owner = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Append:
    """Append `entry` if `condition` (with `arg`) holds on the record's entries."""

    condition: str
    arg: int | str | None
    entry: Entry


@dataclass(frozen=True, slots=True)
class Remove:
    """Remove the entries of `owner` (only those whose payload is `match`, if given)."""

    owner: Owner
    match: bytes | None = None


@dataclass(frozen=True, slots=True)
class Read:
    """The record's RSN and entries, read where the record lives."""


RecordCall = Append | Remove | Read


@dataclass(frozen=True, slots=True)
class Outcome:
    """What running a call gives: a value to write (None: write nothing) and the answer.

    The answer is plain data for the client; the engine adds the RSN of
    what it wrote (`with_rsn`).
    """

    value: bytes | None
    answer: dict[str, Any]

    def with_rsn(self, rsn: int) -> dict[str, Any]:
        return {**self.answer, "rsn": rsn}


def check(call: RecordCall) -> None:
    """Refuse, where it enters, a call no record could accept (CtdbError)."""
    if isinstance(call, Append):
        check_request(call.condition, call.arg, call.entry)


def run(call: RecordCall, rec: Record | None) -> Outcome:
    """Run `call` on `rec` (None: the record does not exist).

    A record whose value is not an entry list refuses every call (INVALID):
    it was written with `store` and belongs to someone else's protocol.
    """
    rsn = rec.rsn if rec is not None else 0
    entries = decode_entries(rec.value) if rec is not None else []
    if isinstance(call, Read):
        return Outcome(None, {"rsn": rsn, "entries": entries_to_wire(entries)})
    if isinstance(call, Remove):
        kept = [e for e in entries if not _owned(e, call.owner, call.match)]
        removed = len(entries) - len(kept)
        value = encode_entries(kept) if removed else None
        return Outcome(value, {"removed": removed, "rsn": rsn})
    new = call.entry
    if new in entries:
        return Outcome(None, {"appended": True, "index": entries.index(new), "rsn": rsn})
    conflict = evaluate(call.condition, call.arg, RecordView(rsn, entries), new)
    if conflict is not None:
        return Outcome(
            None,
            {
                "appended": False,
                "reason": conflict.reason,
                "index": conflict.index,
                "rsn": rsn,
                "entries": entries_to_wire(entries),
            },
        )
    if len(entries) >= MAX_ENTRIES:
        raise CtdbError(ErrorCode.TOO_BIG, f"the record holds {MAX_ENTRIES} entries already")
    return Outcome(encode_entries([*entries, new]), {"appended": True, "index": len(entries)})


def purge(rec: Record, gone: Callable[[Entry], bool]) -> bytes | None:
    """The value of `rec` without the entries of owners `gone`; None if nothing goes.

    Used when owners disappear (a client disconnects, a node leaves): a value
    that is not an entry list is left alone.
    """
    try:
        entries = decode_entries(rec.value)
    except CtdbError:
        return None
    kept = [e for e in entries if not gone(e)]
    if len(kept) == len(entries):
        return None
    return encode_entries(kept)


def purged(
    records: Iterable[tuple[bytes, Record]], gone: Callable[[Entry], bool]
) -> dict[bytes, tuple[Record, bytes]]:
    """The entry lists among `records` that lose entries of owners `gone`:
    key -> (the record, its value without them)."""
    changed = {}
    for key, rec in records:
        if may_hold_entries(rec):
            value = purge(rec, gone)
            if value is not None:
                changed[key] = (rec, value)
    return changed


def departed(owners: Mapping[int, int]) -> Callable[[Entry], bool]:
    """Whether an entry's owner is gone: its node is not among `owners` (pnn ->
    incarnation), or has restarted since (a client id carries its node's run
    in its high 32 bits, `ctdb.server.owners`)."""

    def gone(entry: Entry) -> bool:
        return owners.get(entry.pnn) != entry.client >> 32

    return gone


def new_head(before: Record | None, after: bytes) -> Owner | None:
    """The owner whose entry became the first of the list, if a removal made one.

    Who holds a FIFO lock changed: that owner is told (`Host.entry_head`).
    """
    try:
        old = decode_entries(before.value) if before is not None else []
        new = decode_entries(after)
    except CtdbError:
        return None
    if not old or not new or old[0].owner == new[0].owner:
        return None  # an append to an empty list: its client knows from the answer
    return new[0].owner


def changes(call: RecordCall) -> bool:
    """Whether the call may change the record (running it twice is then not the same)."""
    return not isinstance(call, Read)


def may_hold_entries(rec: Record) -> bool:
    """A cheap test before `purge`: only entry lists start with the magic."""
    return rec.value[: len(MAGIC)] == MAGIC


def _owned(entry: Entry, owner: Owner, match: bytes | None) -> bool:
    return entry.owner == owner and (match is None or entry.payload == match)


# -- wire form: node messages and client answers carry plain data ---------------------------


def entries_to_wire(entries: list[Entry]) -> list[list[Any]]:
    return [[e.pnn, e.client, e.payload] for e in entries]


def to_wire(call: RecordCall) -> dict[str, Any]:
    if isinstance(call, Append):
        e = call.entry
        return {
            "fn": "append",
            "condition": call.condition,
            "arg": call.arg,
            "owner": [e.pnn, e.client],
            "payload": e.payload,
        }
    if isinstance(call, Remove):
        return {"fn": "remove", "owner": list(call.owner), "match": call.match}
    return {"fn": "read"}


def from_wire(wire: dict[str, Any]) -> RecordCall:
    """The call a checked message carries (`ctdb.protocol.message_fields.RECORD_CALL`)."""
    fn = wire["fn"]
    if fn == "read":
        return Read()
    owner = (int(wire["owner"][0]), int(wire["owner"][1]))
    if fn == "remove":
        match = wire.get("match")
        return Remove(owner, None if match is None else bytes(match))
    return Append(str(wire["condition"]), wire.get("arg"), Entry(*owner, bytes(wire["payload"])))
