"""The cursor every CTDB struct is read with, and the scalars and strings (sans-IO).

`Reader` is where the rules of `ctdb_types` are enforced for every struct
decoder (`ctdb_types`, `ctdb_records`, `ctdb_control_structs`,
`ctdb_statistics`): it refuses to read past the end, checks a count against
the bytes present before anything is allocated for it, and refuses bytes
left over, all with `CtdbError(INVALID)`. Integers are little endian, as in
`ctdb_wire`; strings are UTF-8 C strings, as Samba's protocol_basic.c
marshals them.
"""

from __future__ import annotations

import struct
from typing import Any

from ctdb.common.errors import CtdbError, ErrorCode

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")


def invalid(message: str) -> CtdbError:
    return CtdbError(ErrorCode.INVALID, message)


class Reader:
    """A cursor over one struct's bytes that refuses to read past the end
    and, at `done`, refuses bytes left over."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = bytes(data)
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise invalid(
                f"{self.what} truncated: needs {n} more bytes at offset {self.pos}, "
                f"has {len(self.data) - self.pos}"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, layout: struct.Struct) -> tuple[Any, ...]:
        return layout.unpack(self.take(layout.size))

    def u32(self) -> int:
        return int(self.unpack(_U32)[0])

    def count(self, item_size: int) -> int:
        """A u32 count of fixed-size items, refused if the rest cannot hold them."""
        n = self.u32()
        if n * item_size > len(self.data) - self.pos:
            raise invalid(
                f"{self.what} claims {n} entries, too many for its {len(self.data)} bytes"
            )
        return n

    def done(self) -> None:
        if self.pos != len(self.data):
            raise invalid(f"{self.what} has {len(self.data) - self.pos} trailing bytes")


# -- scalars and strings ------------------------------------------------------------------


def encode_u32(value: int) -> bytes:
    return _U32.pack(value)


def decode_u32(data: bytes, what: str = "uint32") -> int:
    r = Reader(data, what)
    value = r.u32()
    r.done()
    return value


def encode_i32(value: int) -> bytes:
    """Status-like results (DB_OPEN_FLAGS' tdb flags) are C ints."""
    return _I32.pack(value)


def encode_u64(value: int) -> bytes:
    return _U64.pack(value)


def encode_cstring(text: str) -> bytes:
    """A C string as CTDB sends one: UTF-8, NUL-terminated, the NUL counted
    in every length (`ctdb_string_len`, protocol_basic.c)."""
    raw = text.encode()
    if b"\0" in raw:
        raise invalid("a CTDB string cannot hold a NUL byte")
    return raw + b"\0"


def decode_cstring(data: bytes, what: str = "string") -> str:
    """DB_ATTACH's name, GETDBPATH's path...: exactly one NUL, at the end."""
    if not data.endswith(b"\0") or b"\0" in data[:-1]:
        raise invalid(f"{what} must be one NUL-terminated string")
    try:
        return data[:-1].decode()
    except UnicodeDecodeError as exc:
        raise invalid(f"{what} is not UTF-8: {exc}") from None


def encode_stringn(text: str) -> bytes:
    """u32 length (with the NUL) then the C string: GET_TUNABLE's request."""
    raw = encode_cstring(text)
    return _U32.pack(len(raw)) + raw


def decode_stringn(data: bytes, what: str = "stringn") -> str:
    r = Reader(data, what)
    text = decode_cstring(r.take(r.u32()), what)
    r.done()
    return text
