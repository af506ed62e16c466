"""The conditions of CTDB_REQ_CONDITIONAL_APPEND: named, pure, deterministic.

`cond_append` appends an entry to a record's entry list only when a named
condition holds on the record as it is. Every node that applies the append
(the dmaster on tcp, every member on vs) must reach the same decision from
the same record, so a condition is a pure function of the record (its RSN
and entries), the new entry and the request's argument: no clock, no node
state, no randomness.

A condition returns None when the entry may be appended and a `Conflict`
when it may not. A conflict is an answer, not an error: the client is told
"conflict" with the current entries and may wait and retry, just as smbd
answers NT_STATUS_SHARING_VIOLATION or NT_STATUS_LOCK_NOT_GRANTED. Returning
it keeps the two outcomes of a well-formed request apart from a malformed
one, which raises `CtdbError`: NOT_SUPPORTED for a condition this node does
not know, INVALID for a bad argument or a payload the condition cannot read.

A condition reads the new entry's payload before the record's entries,
so that `check_request` can refuse a malformed one against an empty record.
Adding a condition is one function and its decorator::

    @condition("max_entries", arg=count)
    def _max_entries(record: RecordView, new: Entry, limit: int) -> Conflict | None:
        ...

The engine calls `check_request` where the request enters (so a bad one is
refused before it is routed or broadcast) and `evaluate` where it is
applied.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.storage.entries import MAX_ENTRIES, Entry

U64_MAX = 2**64 - 1


@dataclass(frozen=True, slots=True)
class RecordView:
    """What a condition may look at: the record's RSN and its entries.

    The RSN is the one in the record's CTDB header, 0 for a record that
    does not exist (no entries).
    """

    rsn: int
    entries: Sequence[Entry]


@dataclass(frozen=True, slots=True)
class Conflict:
    """Why the entry was not appended.

    `index` is the position of the existing entry that blocks it (Samba
    remembers "who blocked us" the same way), None when no single entry
    does (an RSN or a count).
    """

    reason: str
    index: int | None = None


Check = Callable[[RecordView, Entry, Any], "Conflict | None"]
ArgParser = Callable[[str, object], Any]


@dataclass(frozen=True, slots=True)
class Condition:
    name: str
    check: Check
    parse_arg: ArgParser


REGISTRY: dict[str, Condition] = {}


def condition(name: str, *, arg: ArgParser) -> Callable[[Check], Check]:
    """Register `check` under `name`, its argument read by `arg`."""

    def register(check: Check) -> Check:
        if name in REGISTRY:
            raise ValueError(f"condition {name!r} registered twice")
        REGISTRY[name] = Condition(name, check, arg)
        return check

    return register


def lookup(name: object) -> Condition:
    found = REGISTRY.get(name) if isinstance(name, str) else None
    if found is None:
        raise CtdbError(
            ErrorCode.NOT_SUPPORTED,
            f"unknown condition {name!r} (known: {', '.join(sorted(REGISTRY))})",
        )
    return found


def check_request(name: object, arg: object, new: Entry) -> None:
    """Refuse a request that no record could accept (CtdbError), where it enters.

    Runs the condition against an empty record: every condition reads the
    new entry's payload before the record's entries, so a payload it
    cannot read is refused here rather than on every node that applies it.
    """
    cond = lookup(name)
    cond.check(RecordView(0, ()), new, cond.parse_arg(cond.name, arg))


def evaluate(name: object, arg: object, record: RecordView, new: Entry) -> Conflict | None:
    """None if `new` may be appended to `record` under the condition, else why not."""
    cond = lookup(name)
    return cond.check(record, new, cond.parse_arg(cond.name, arg))


# Arguments. They come from msgpack (the client library) or from the
# command line as text, and the client side does not know which condition
# takes what: an integer argument is therefore an int or its decimal text.


def no_arg(name: str, arg: object) -> None:
    if arg is not None:
        raise CtdbError(ErrorCode.INVALID, f"condition {name} takes no argument, got {arg!r}")


def _integer(name: str, arg: object, top: int) -> int:
    # 20 digits hold any u64; the bound also keeps int() off huge strings.
    if isinstance(arg, str) and arg.isascii() and arg.isdigit() and len(arg) <= 20:
        arg = int(arg)
    if type(arg) is not int or not 0 <= arg <= top:
        raise CtdbError(
            ErrorCode.INVALID, f"condition {name} takes an integer 0..{top}, got {arg!r}"
        )
    return arg


def rsn(name: str, arg: object) -> int:
    return _integer(name, arg, U64_MAX)


def count(name: str, arg: object) -> int:
    return _integer(name, arg, MAX_ENTRIES)


def _payload(struct_: struct.Struct, what: str, entry: Entry, index: int | None) -> tuple[Any, ...]:
    """Unpack an entry's payload, or INVALID naming the entry (`index` None: the new one)."""
    if len(entry.payload) != struct_.size:
        raise CtdbError(
            ErrorCode.INVALID,
            f"{_which(index)} is not a {what} entry: its payload has {len(entry.payload)} bytes, "
            f"not {struct_.size}",
        )
    return struct_.unpack(entry.payload)


def _which(index: int | None) -> str:
    return "the new entry" if index is None else f"entry {index} of the record"


# The simple conditions.


@condition("always", arg=no_arg)
def _always(record: RecordView, new: Entry, arg: None) -> Conflict | None:
    """Append unconditionally: a FIFO queue whose head holds the lock."""
    return None


@condition("empty", arg=no_arg)
def _empty(record: RecordView, new: Entry, arg: None) -> Conflict | None:
    """Append only to an empty record: an exclusive lock."""
    return Conflict("the record is not empty", 0) if record.entries else None


@condition("rsn_equals", arg=rsn)
def _rsn_equals(record: RecordView, new: Entry, expected: int) -> Conflict | None:
    """Append only if the record is unchanged since the client saw it at this RSN."""
    if record.rsn != expected:
        return Conflict(f"the record's RSN is {record.rsn}, not {expected}")
    return None


@condition("max_entries", arg=count)
def _max_entries(record: RecordView, new: Entry, limit: int) -> Conflict | None:
    """Append only while the record holds fewer than `limit` entries (a counting semaphore)."""
    if len(record.entries) >= limit:
        return Conflict(f"the record holds {len(record.entries)} entries, the limit is {limit}")
    return None


# share_mode: Samba's open semantics.

#: Payload of a share_mode entry: access_mask u32, share_access u32 (little-endian),
#: the NT values of the open (SMB2 CREATE's DesiredAccess and ShareAccess) with
#: generic rights already mapped to specific ones, as smbd stores them.
SHARE_MODE = struct.Struct("<II")

FILE_READ_DATA = 0x0001
FILE_WRITE_DATA = 0x0002
FILE_APPEND_DATA = 0x0004
FILE_EXECUTE = 0x0020
DELETE_ACCESS = 0x00010000
FILE_SHARE_READ = 0x1
FILE_SHARE_WRITE = 0x2
FILE_SHARE_DELETE = 0x4

#: The access bits share modes are about; an open with none of them (a
#: "stat open": attributes, synchronize, read control) conflicts with nothing.
_DATA_ACCESS = FILE_WRITE_DATA | FILE_APPEND_DATA | FILE_READ_DATA | FILE_EXECUTE | DELETE_ACCESS
#: (access bits, the share bit the other open must grant for them), in
#: the order of share_conflict()'s checks.
_SHARE_RULES = (
    (FILE_WRITE_DATA | FILE_APPEND_DATA, FILE_SHARE_WRITE),
    (FILE_READ_DATA | FILE_EXECUTE, FILE_SHARE_READ),
    (DELETE_ACCESS, FILE_SHARE_DELETE),
)


def share_mode_payload(access_mask: int, share_access: int) -> bytes:
    return SHARE_MODE.pack(access_mask, share_access)


def share_conflict(
    entry_access: int, entry_share: int, access_mask: int, share_access: int
) -> bool:
    """Whether a new open conflicts with an existing one, as Samba decides.

    Mirrors `share_conflict()` in Samba's source3/smbd/open.c (called for
    every existing open by `open_mode_check()`): no conflict if either open
    has none of the data access bits (read/write/append data, execute,
    delete); otherwise a conflict if either open wants write/append while
    the other does not share write, read/execute while the other does not
    share read, or delete while the other does not share delete (checked
    in both directions). Samba applies it to the same process's own opens
    too, so the owner does not matter here. (Samba also passes over the
    opens of disconnected durable handles and of dead processes; here the
    entries of a client or node that is gone are removed instead.)
    """
    if not entry_access & _DATA_ACCESS or not access_mask & _DATA_ACCESS:
        return False
    for access, share in _SHARE_RULES:
        if entry_access & access and not share_access & share:
            return True
        if access_mask & access and not entry_share & share:
            return True
    return False


@condition("share_mode", arg=no_arg)
def _share_mode(record: RecordView, new: Entry, arg: None) -> Conflict | None:
    """Append an open unless it conflicts with an existing one (NT_STATUS_SHARING_VIOLATION)."""
    access_mask, share_access = _payload(SHARE_MODE, "share_mode", new, None)
    for index, entry in enumerate(record.entries):
        e_access, e_share = _payload(SHARE_MODE, "share_mode", entry, index)
        if share_conflict(e_access, e_share, access_mask, share_access):
            return Conflict(
                f"sharing violation: open {index} (access {e_access:#x}, share {e_share:#x}) "
                f"against access {access_mask:#x}, share {share_access:#x}",
                index,
            )
    return None


# byte_range: Samba's byte-range locks (Windows flavour).

#: Payload of a byte_range entry: start u64, size u64, type u8 (little-endian);
#: type is Samba's enum brl_type: READ_LOCK 0, WRITE_LOCK 1.
BYTE_RANGE = struct.Struct("<QQB")
READ_LOCK = 0
WRITE_LOCK = 1


def byte_range_payload(start: int, size: int, lock_type: int) -> bytes:
    return BYTE_RANGE.pack(start, size, lock_type)


def byte_range_valid(start: int, size: int) -> bool:
    """[MS-FSA]'s rule, as Samba's byte_range_valid(): the last byte must not pass 2**64 - 1."""
    return size == 0 or size - 1 <= U64_MAX - start


def byte_range_overlap(start1: int, size1: int, start2: int, size2: int) -> bool:
    """Samba's byte_range_overlap() (source3/locking/brlock.c, [MS-FSA] 2.1.4.10).

    A range's last byte is start + size - 1 (an invalid range runs to
    2**64 - 1), so a zero-size range at s has its last byte at s - 1: it
    overlaps a range only strictly inside it (start < s < start + size),
    never another zero-size range, never a range that starts or ends at s.
    Samba tests for {0, 0} first because its last byte wraps to 2**64 - 1
    in C; with Python's integers it is -1, which overlaps nothing as is.
    """
    last1 = start1 + size1 - 1 if byte_range_valid(start1, size1) else U64_MAX
    last2 = start2 + size2 - 1 if byte_range_valid(start2, size2) else U64_MAX
    return not (start1 > last2 or start2 > last1)


@dataclass(frozen=True, slots=True)
class Lock:
    """A byte-range lock as brl_conflict() sees it: its owner stands for Samba's
    lock context and file handle (one client, one handle)."""

    owner: tuple[int, int]
    start: int
    size: int
    type: int

    @classmethod
    def of(cls, entry: Entry, index: int | None) -> Lock:
        start, size, lock_type = _payload(BYTE_RANGE, "byte_range", entry, index)
        if lock_type not in (READ_LOCK, WRITE_LOCK):
            raise CtdbError(
                ErrorCode.INVALID,
                f"{_which(index)} has lock type {lock_type}, not {READ_LOCK} or {WRITE_LOCK}",
            )
        return cls(entry.owner, start, size, lock_type)

    def __str__(self) -> str:
        kind = "read" if self.type == READ_LOCK else "write"
        return f"{kind} lock of {self.owner} at {self.start} size {self.size}"


def brl_conflict(held: Lock, new: Lock) -> bool:
    """Whether `new` may not be added while `held` is: Samba's brl_conflict().

    Two read locks never conflict. A read lock stacks on a write lock of
    the same context and file handle (here: the same owner). Every other
    pair conflicts when the ranges overlap, so an owner's new write lock
    does conflict with its own read or write locks (Windows semantics).
    """
    if held.type == READ_LOCK and new.type == READ_LOCK:
        return False
    if held.type == WRITE_LOCK and new.type == READ_LOCK and held.owner == new.owner:
        return False
    return byte_range_overlap(held.start, held.size, new.start, new.size)


@condition("byte_range", arg=no_arg)
def _byte_range(record: RecordView, new: Entry, arg: None) -> Conflict | None:
    """Append a lock unless a held one conflicts (NT_STATUS_LOCK_NOT_GRANTED).

    As Samba's brl_lock_windows_default(): the new range must be valid
    (else NT_STATUS_INVALID_LOCK_RANGE, here INVALID), then brl_conflict()
    runs against every held lock; held ranges are not re-validated. Samba
    drops a conflicting lock whose process is dead; here the entries of a
    client or node that is gone are removed instead. POSIX-flavour locks
    (brl_lock_posix: same context never conflicts, ranges split and merge)
    are not modelled: an append cannot rewrite the entries it stacks on.
    """
    lock = Lock.of(new, None)
    if not byte_range_valid(lock.start, lock.size):
        raise CtdbError(
            ErrorCode.INVALID,
            f"invalid lock range: start {lock.start} size {lock.size} "
            "passes the end of 64-bit space",
        )
    for index, entry in enumerate(record.entries):
        held = Lock.of(entry, index)
        if brl_conflict(held, lock):
            return Conflict(f"lock not granted: {held} overlaps {lock}", index)
    return None
