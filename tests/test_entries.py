"""The entry-list record value of conditional append: its exact layout, round
trips, bounds, and a stable error for every kind of malformed value."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.storage.entries import (
    CLIENT_MAX,
    MAX_ENTRIES,
    MAX_PAYLOAD,
    PNN_MAX,
    Entry,
    decode_entries,
    encode_entries,
)

entries_st = st.lists(
    st.builds(
        Entry,
        pnn=st.integers(0, PNN_MAX),
        client=st.integers(0, CLIENT_MAX),
        payload=st.binary(max_size=64),
    ),
    max_size=20,
)


def header(
    count: int, magic: bytes = b"CTEL", version: int = 1, reserved: bytes = bytes(3)
) -> bytes:
    return magic + bytes([version]) + reserved + struct.pack("<I", count)


def entry_bytes(pnn: int, client: int, payload: bytes, length: int | None = None) -> bytes:
    announced = len(payload) if length is None else length
    return struct.pack("<IIQ", pnn, announced, client) + payload


def test_layout_is_the_documented_one() -> None:
    value = encode_entries([Entry(1, 0x0102030405060708, b"ab"), Entry(0xFFFFFFFF, 0, b"")])
    assert value == (
        b"CTEL\x01\x00\x00\x00"  # magic, version 1, reserved
        + b"\x02\x00\x00\x00"  # count u32
        + b"\x01\x00\x00\x00"  # pnn u32
        + b"\x02\x00\x00\x00"  # payload length u32
        + bytes([8, 7, 6, 5, 4, 3, 2, 1])  # client u64
        + b"ab"
        + b"\xff\xff\xff\xff"
        + b"\x00\x00\x00\x00"
        + bytes(8)
    )


def test_no_entries_is_the_empty_value() -> None:
    """The empty value is CTDB's deletion marker: the last removal deletes the record."""
    assert encode_entries([]) == b""
    assert decode_entries(b"") == []


@given(entries_st)
def test_round_trip(entries: list[Entry]) -> None:
    value = encode_entries(entries)
    assert decode_entries(value) == entries
    assert encode_entries(decode_entries(value)) == value


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_give_a_ctdb_error(value: bytes) -> None:
    """Never a crash; and what decodes is canonical (re-encodes to the same bytes)."""
    try:
        entries = decode_entries(value)
    except CtdbError as exc:
        assert exc.code in (ErrorCode.INVALID, ErrorCode.NOT_SUPPORTED, ErrorCode.TOO_BIG)
    else:
        assert encode_entries(entries) == value


@given(entries_st.filter(bool), st.data())
def test_every_truncation_is_invalid(entries: list[Entry], data: st.DataObject) -> None:
    value = encode_entries(entries)
    cut = data.draw(st.integers(1, len(value) - 1))
    with pytest.raises(CtdbError) as info:
        decode_entries(value[:cut])
    assert info.value.code == ErrorCode.INVALID


ONE = entry_bytes(3, 7, b"x" * 20)
MALFORMED = [
    # (what is wrong, value, code, words of the message)
    ("shorter than the header", b"CTEL\x01", ErrorCode.INVALID, "too short"),
    ("a plain value", b"hello, a value written with writekey", ErrorCode.INVALID, "magic"),
    ("wrong magic", header(1, magic=b"CTDB") + ONE, ErrorCode.INVALID, "magic"),
    ("a later version", header(1, version=2) + ONE, ErrorCode.NOT_SUPPORTED, "version 2"),
    ("version 0", header(1, version=0) + ONE, ErrorCode.NOT_SUPPORTED, "version 0"),
    ("reserved bytes set", header(1, reserved=b"\0\1\0") + ONE, ErrorCode.INVALID, "reserved"),
    ("a header announcing zero entries", header(0), ErrorCode.INVALID, "zero entries"),
    ("too many entries", header(MAX_ENTRIES + 1), ErrorCode.TOO_BIG, "at most"),
    ("a count the bytes cannot hold", header(1000) + ONE, ErrorCode.INVALID, "cannot fit"),
    ("a truncated entry header", header(2) + ONE + bytes(10), ErrorCode.INVALID, "entry 1"),
    (
        "a payload above the bound",
        header(1) + entry_bytes(0, 0, b"", length=MAX_PAYLOAD + 1) + bytes(MAX_PAYLOAD + 1),
        ErrorCode.INVALID,
        "payload",
    ),
    (
        "a payload longer than the bytes",
        header(1) + entry_bytes(0, 0, b"abc", length=4),
        ErrorCode.INVALID,
        "truncated",
    ),
    ("bytes after the last entry", header(1) + ONE + b"\0", ErrorCode.INVALID, "follow"),
]


@pytest.mark.parametrize(
    ("value", "code", "words"), [row[1:] for row in MALFORMED], ids=[row[0] for row in MALFORMED]
)
def test_malformed_values_give_a_stable_error(value: bytes, code: ErrorCode, words: str) -> None:
    with pytest.raises(CtdbError, match=words) as info:
        decode_entries(value)
    assert info.value.code == code


def test_bounds() -> None:
    full = [Entry(0, i, b"") for i in range(MAX_ENTRIES)]
    assert decode_entries(encode_entries(full)) == full
    with pytest.raises(CtdbError) as info:
        encode_entries([*full, Entry(0, MAX_ENTRIES, b"")])
    assert info.value.code == ErrorCode.TOO_BIG

    big = Entry(0, 0, bytes(MAX_PAYLOAD))
    assert decode_entries(encode_entries([big])) == [big]
    with pytest.raises(CtdbError) as info:
        Entry(0, 0, bytes(MAX_PAYLOAD + 1))
    assert info.value.code == ErrorCode.TOO_BIG


@pytest.mark.parametrize(
    ("pnn", "client", "payload"),
    [
        (-1, 0, b""),
        (PNN_MAX + 1, 0, b""),
        (0, -1, b""),
        (0, CLIENT_MAX + 1, b""),
        (True, 0, b""),
        ("0", 0, b""),
        (0, 0, "text"),
        (0, 0, bytearray(b"x")),
    ],
)
def test_an_entry_that_cannot_be_encoded_is_refused(
    pnn: object, client: object, payload: object
) -> None:
    with pytest.raises(CtdbError) as info:
        Entry(pnn, client, payload)  # type: ignore[arg-type]
    assert info.value.code == ErrorCode.INVALID
