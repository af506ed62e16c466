"""A CTDB record on the wire (sans-IO): its ltdb header, one rec_data, a rec_buffer of many.

Every value in a CTDB TDB starts with a 24-byte ltdb header, and records
travel between client and daemon as rec_data: one per traverse message,
many in TRANS3_COMMIT's rec_buffer. Layouts follow
`/work/shared/reference/ctdb-wire-protocol.md` §4 and Samba's
ctdb/protocol/protocol_types.c; the rules are `ctdb_types`' own.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ctdb.protocol.ctdb_scalars import Reader, invalid

_LTDB_HEADER = struct.Struct("<QIII4x")


@dataclass(frozen=True, slots=True)
class LtdbHeader:
    """`ctdb_ltdb_header` (protocol.h), the 24 bytes in front of every value
    in a CTDB TDB: rsn u64, dmaster u32, reserved1 u32, flags u32, 4 pad."""

    SIZE = _LTDB_HEADER.size
    rsn: int
    dmaster: int
    flags: int = 0
    reserved1: int = 0

    def encode(self) -> bytes:
        return _LTDB_HEADER.pack(self.rsn, self.dmaster, self.reserved1, self.flags)

    @classmethod
    def decode(cls, data: bytes) -> LtdbHeader:
        r = Reader(data, "ltdb header")
        rsn, dmaster, reserved1, flags = r.unpack(_LTDB_HEADER)
        r.done()
        return cls(rsn, dmaster, flags, reserved1)

    @classmethod
    def split(cls, value: bytes) -> tuple[LtdbHeader, bytes]:
        """A stored value (or a record's data) as header and user data."""
        if len(value) < cls.SIZE:
            raise invalid(f"value of {len(value)} bytes has no 24-byte ltdb header")
        return cls.decode(value[: cls.SIZE]), bytes(value[cls.SIZE :])


_REC_DATA = struct.Struct("<IIII")


@dataclass(frozen=True, slots=True)
class RecData:
    """`ctdb_rec_data` (protocol_types.c; old ctdb_rec_data_old): length
    (= 16 + keylen + datalen, no padding), reqid, keylen, datalen, key,
    data. In traverse messages and TRANS3_COMMIT `data` starts with the
    record's ltdb header; `LtdbHeader.split` takes it apart."""

    reqid: int
    key: bytes
    data: bytes

    def encode(self) -> bytes:
        length = _REC_DATA.size + len(self.key) + len(self.data)
        return (
            _REC_DATA.pack(length, self.reqid, len(self.key), len(self.data)) + self.key + self.data
        )

    @classmethod
    def decode(cls, data: bytes) -> RecData:
        r = Reader(data, "rec_data")
        rec = cls._read(r)
        r.done()
        return rec

    @classmethod
    def _read(cls, r: Reader) -> RecData:
        length, reqid, keylen, datalen = r.unpack(_REC_DATA)
        if length != _REC_DATA.size + keylen + datalen:
            # Samba's old walker steps by `length`, the new one by the two
            # lengths; only a record where they agree means the same to both.
            raise invalid(f"rec_data length {length} is not 16 + {keylen} + {datalen}")
        return cls(reqid, r.take(keylen), r.take(datalen))


_REC_BUFFER = struct.Struct("<II")


@dataclass(frozen=True, slots=True)
class RecBuffer:
    """`ctdb_rec_buffer` == `ctdb_marshall_buffer`: db_id, count, then
    `count` rec_data back to back, filling the rest of the control data
    (TRANS3_COMMIT's request)."""

    db_id: int
    records: tuple[RecData, ...] = ()

    def encode(self) -> bytes:
        return _REC_BUFFER.pack(self.db_id, len(self.records)) + b"".join(
            rec.encode() for rec in self.records
        )

    @classmethod
    def decode(cls, data: bytes) -> RecBuffer:
        r = Reader(data, "rec_buffer")
        db_id = r.u32()
        count = r.count(_REC_DATA.size)
        records = tuple(RecData._read(r) for _ in range(count))
        r.done()
        return cls(db_id, records)
