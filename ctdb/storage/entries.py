"""Entry lists: the record value of CTDB_REQ_CONDITIONAL_APPEND.

A record used with conditional append holds a list of entries, each an
owner (the pnn of the client's node and the client's id on that node) and
an opaque payload: a share-mode open, a byte-range lock, a place in a lock
queue. The list is the value after CTDB's 24-byte record header (see
`ltdb.Record`), so an empty value, which is CTDB's deletion marker, is the
empty list: removing the last entry deletes the record.

Encoding, version 1 (all integers little-endian, as in CTDB's header)::

    offset  size  field
         0     4  magic     b"CTEL" (CTDB entry list)
         4     1  version   1
         5     3  reserved  zero
         8     4  count     number of entries, at most MAX_ENTRIES
        12        `count` entries, one after the other, each:
                  4  pnn       u32
                  4  length    u32, payload bytes, at most MAX_PAYLOAD
                  8  client    u64
             length  payload

Why this layout and not msgpack, which the wire protocols use: the bytes
sit in TDB files that Samba's tools dump and that a C reader should be
able to walk with a dozen lines and no library; fixed-width fields give one
encoding per list (msgpack lets an encoder pick an integer's width), so
every node that applies the same appends holds byte-identical records; and
a reader checks every announced length against the bytes it actually has
before it slices, so a corrupt value can cost no more memory than itself.
The magic tells an entry list from a plain value written to the same key;
the version byte lets a later layout coexist (a reader refuses one it does
not know instead of misreading it); the reserved bytes must be zero so that
version 1 stays one exact format.

Bounds: at most MAX_ENTRIES entries of at most MAX_PAYLOAD bytes each, so
the largest list (about 4.2 MB) fits the default MaxValueSize tunable
(8 MiB) and every node can hold what any node accepted. Share-mode and
byte-range payloads are 8 and 17 bytes; the payload bound leaves room for
a lock queue's small per-waiter data, not for bulk values.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from ctdb.common.config import MAX_ENTRIES
from ctdb.common.config import MAX_ENTRY_PAYLOAD as MAX_PAYLOAD
from ctdb.common.errors import CtdbError, ErrorCode

MAGIC = b"CTEL"
VERSION = 1
PNN_MAX = 2**32 - 1
CLIENT_MAX = 2**64 - 1

_HEADER = struct.Struct("<4sB3sI")
_ENTRY = struct.Struct("<IIQ")
_RESERVED = b"\0\0\0"


@dataclass(frozen=True, slots=True)
class Entry:
    """One owner's entry. Checked when built, so any Entry can be encoded."""

    pnn: int
    client: int
    payload: bytes

    def __post_init__(self) -> None:
        for name, value, top in (("pnn", self.pnn, PNN_MAX), ("client", self.client, CLIENT_MAX)):
            if type(value) is not int or not 0 <= value <= top:
                raise CtdbError(
                    ErrorCode.INVALID, f"entry {name} must be an integer 0..{top}, not {value!r}"
                )
        if type(self.payload) is not bytes:
            raise CtdbError(
                ErrorCode.INVALID, f"entry payload must be bytes, not {type(self.payload).__name__}"
            )
        if len(self.payload) > MAX_PAYLOAD:
            raise CtdbError(
                ErrorCode.TOO_BIG,
                f"entry payload of {len(self.payload)} bytes is above {MAX_PAYLOAD}",
            )

    @property
    def owner(self) -> tuple[int, int]:
        return (self.pnn, self.client)


def encode_entries(entries: Iterable[Entry]) -> bytes:
    """The record value holding `entries`; no entries is the empty value."""
    entries = list(entries)
    if not entries:
        return b""
    if len(entries) > MAX_ENTRIES:
        raise CtdbError(
            ErrorCode.TOO_BIG, f"{len(entries)} entries in one record, at most {MAX_ENTRIES}"
        )
    parts = [_HEADER.pack(MAGIC, VERSION, _RESERVED, len(entries))]
    for entry in entries:
        parts.append(_ENTRY.pack(entry.pnn, len(entry.payload), entry.client))
        parts.append(entry.payload)
    return b"".join(parts)


def decode_entries(value: bytes) -> list[Entry]:
    """The entries of a record value; a value that is not an entry list is refused.

    Errors: INVALID for a value that is not a well-formed version-1 list
    (bad magic, truncated, trailing bytes, reserved bytes set, a payload
    above MAX_PAYLOAD), NOT_SUPPORTED for another version, TOO_BIG for a
    count above MAX_ENTRIES. A count is checked against the bytes present
    before any entry is read, so no value makes this allocate more than its
    own size.
    """
    if not value:
        return []
    if len(value) < _HEADER.size:
        raise _malformed(f"{len(value)} bytes are too short for the {_HEADER.size}-byte header")
    magic, version, reserved, count = _HEADER.unpack_from(value)
    if magic != MAGIC:
        raise _malformed(f"it starts with {magic!r}, not the magic {MAGIC!r}")
    if version != VERSION:
        raise CtdbError(
            ErrorCode.NOT_SUPPORTED,
            f"record holds an entry list of version {version}; this node reads version {VERSION}",
        )
    if reserved != _RESERVED:
        raise _malformed(f"reserved header bytes are {reserved.hex()}, not zero")
    if count == 0:
        raise _malformed("it announces zero entries (no entries is the empty value)")
    if count > MAX_ENTRIES:
        raise CtdbError(
            ErrorCode.TOO_BIG, f"record announces {count} entries, at most {MAX_ENTRIES}"
        )
    if count * _ENTRY.size > len(value) - _HEADER.size:
        raise _malformed(f"{count} entries cannot fit in {len(value)} bytes")
    entries = []
    offset = _HEADER.size
    for index in range(count):
        if offset + _ENTRY.size > len(value):
            raise _malformed(f"entry {index} is truncated at byte {offset}")
        pnn, length, client = _ENTRY.unpack_from(value, offset)
        offset += _ENTRY.size
        if length > MAX_PAYLOAD:
            raise _malformed(f"entry {index} announces a {length}-byte payload (max {MAX_PAYLOAD})")
        if offset + length > len(value):
            raise _malformed(f"entry {index} payload of {length} bytes is truncated")
        entries.append(Entry(pnn, client, value[offset : offset + length]))
        offset += length
    if offset != len(value):
        raise _malformed(f"{len(value) - offset} bytes follow the last entry")
    return entries


def _malformed(why: str) -> CtdbError:
    return CtdbError(ErrorCode.INVALID, f"record value is not an entry list: {why}")
