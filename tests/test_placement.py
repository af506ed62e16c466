"""Database ids are tdb's Jenkins hash of the name (with its NUL), as ctdbd's:
checked against libtdb's own `tdb_jenkins_hash`, through ctypes."""

from __future__ import annotations

import ctypes

from hypothesis import given
from hypothesis import strategies as st

from ctdb.storage.placement import db_id, jenkins_hash


class TdbData(ctypes.Structure):
    _fields_ = [("dptr", ctypes.c_char_p), ("dsize", ctypes.c_size_t)]


LIBTDB = ctypes.CDLL("libtdb.so.1")
LIBTDB.tdb_jenkins_hash.restype = ctypes.c_uint
LIBTDB.tdb_jenkins_hash.argtypes = [ctypes.POINTER(TdbData)]


def libtdb_hash(data: bytes) -> int:
    buffer = ctypes.create_string_buffer(data, len(data) or 1)
    return int(
        LIBTDB.tdb_jenkins_hash(
            ctypes.byref(TdbData(ctypes.cast(buffer, ctypes.c_char_p), len(data)))
        )
    )


@given(st.binary(max_size=64))
def test_jenkins_hash_is_libtdbs(data: bytes) -> None:
    assert jenkins_hash(data) == libtdb_hash(data)


def test_every_length_around_the_12_byte_blocks() -> None:
    for n in range(0, 50):
        data = bytes(range(7, 7 + n))
        assert jenkins_hash(data) == libtdb_hash(data), n


def test_db_id_hashes_the_name_with_its_nul() -> None:
    assert db_id("locking.tdb") == libtdb_hash(b"locking.tdb\0")
    assert db_id("locking.tdb") != db_id("brlock.tdb")
