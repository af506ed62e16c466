"""Local storage: CTDB record headers in TDB files."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import tdb

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.storage.ltdb import HEADER_SIZE, CorruptFile, LocalDb, Record
from tests.conftest import tmpfs


def raw_value(path: Path, key: bytes) -> bytes | None:
    """The bytes TDB stores for `key`, read without our code."""
    t = tdb.Tdb(str(path), 0, tdb.DEFAULT, os.O_RDONLY)
    try:
        return t.get(key)
    finally:
        t.close()


def test_header_is_24_bytes_little_endian() -> None:
    assert HEADER_SIZE == 24
    rec = Record(rsn=0x0102030405060708, dmaster=0x0A0B0C0D, value=b"payload", flags=0x11223344)
    data = rec.pack()
    assert len(data) == 24 + len(b"payload")
    assert data[:8] == bytes([8, 7, 6, 5, 4, 3, 2, 1])  # rsn u64 LE
    assert data[8:12] == bytes([0x0D, 0x0C, 0x0B, 0x0A])  # dmaster u32 LE
    assert data[12:16] == b"\0\0\0\0"  # reserved u32
    assert data[16:20] == bytes([0x44, 0x33, 0x22, 0x11])  # flags u32 LE
    assert data[20:24] == b"\0\0\0\0"  # pad u32
    assert data[24:] == b"payload"
    assert data[:24] == struct.pack("<QIIII", rec.rsn, rec.dmaster, 0, rec.flags, 0)


def test_header_unpack_round_trip_and_ignores_reserved_fields() -> None:
    data = struct.pack("<QIIII", 99, 3, 0xDEAD, 5, 0xBEEF) + b"v"
    rec = Record.unpack(data)
    assert rec == Record(99, 3, b"v", 5)
    assert Record.unpack(Record(2**64 - 1, 2**32 - 1, b"").pack()).rsn == 2**64 - 1


def test_short_record_is_an_io_error() -> None:
    with pytest.raises(CtdbError) as info:
        Record.unpack(b"\0" * 23)
    assert info.value.code == ErrorCode.IO
    assert "23" in info.value.message


def test_empty_value_is_a_deletion_marker() -> None:
    assert Record(5, 0, b"").deleted
    assert not Record(5, 0, b"x").deleted


def test_file_holds_header_then_value(tmp_path: Path) -> None:
    path = tmp_path / "p.tdb"
    db = LocalDb(path, persistent=True)
    db.put(b"key", Record(42, 2, b"value"))
    db.close()
    raw = raw_value(path, b"key")
    assert raw == struct.pack("<QIIII", 42, 2, 0, 0, 0) + b"value"


@pytest.mark.parametrize("persistent", [True, False])
def test_basic_operations(tmp_path: Path, persistent: bool) -> None:
    db = LocalDb(tmp_path / "db.tdb", persistent=persistent)
    try:
        assert db.get(b"a") is None
        db.put(b"a", Record(1, 0, b"1"))
        db.put(b"b", Record(2, 1, b"2"))
        db.put(b"a", Record(3, 0, b"one"))
        assert db.get(b"a") == Record(3, 0, b"one")
        assert len(db) == 2
        assert dict(db.items()) == {b"a": Record(3, 0, b"one"), b"b": Record(2, 1, b"2")}
        db.remove(b"a")
        db.remove(b"missing")  # no error
        assert db.get(b"a") is None
        db.clear()
        assert len(db) == 0
    finally:
        db.close()


def test_volatile_is_wiped_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "v.tdb"
    db = LocalDb(path, persistent=False)
    db.put(b"k", Record(1, 0, b"v"))
    assert db.get(b"k") is not None
    db.close()
    db = LocalDb(path, persistent=False)
    try:
        assert db.get(b"k") is None
        assert len(db) == 0
    finally:
        db.close()


def test_persistent_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "p.tdb"
    db = LocalDb(path, persistent=True)
    db.put(b"k", Record(7, 1, b"v"))
    db.write_batch({b"x": Record(1, 0, b"X"), b"y": Record(1, 0, b"Y")})
    db.close()
    db = LocalDb(path, persistent=True)
    try:
        assert db.get(b"k") == Record(7, 1, b"v")
        assert db.get(b"x") == Record(1, 0, b"X")
        assert len(db) == 3
    finally:
        db.close()


def test_write_batch_puts_and_removes(tmp_path: Path) -> None:
    db = LocalDb(tmp_path / "p.tdb", persistent=True)
    try:
        db.put(b"old", Record(1, 0, b"o"))
        db.write_batch({b"old": None, b"new": Record(2, 0, b"n"), b"never": None})
        assert db.get(b"old") is None
        assert db.get(b"new") == Record(2, 0, b"n")
        db.write_batch({b"only": Record(1, 0, b"1")}, replace_all=True)
        assert dict(db.items()) == {b"only": Record(1, 0, b"1")}
    finally:
        db.close()


@pytest.mark.parametrize("replace_all", [False, True])
def test_write_batch_is_atomic(tmp_path: Path, replace_all: bool) -> None:
    path = tmp_path / "p.tdb"
    db = LocalDb(path, persistent=True)
    db.put(b"keep", Record(1, 0, b"kept"))
    bad = Record(-1, 0, b"cannot pack a negative rsn")
    with pytest.raises(struct.error):
        db.write_batch(
            {b"first": Record(1, 0, b"1"), b"keep": None, b"bad": bad}, replace_all=replace_all
        )
    assert db.get(b"first") is None
    assert db.get(b"keep") == Record(1, 0, b"kept")
    # and the handle is usable afterwards (no transaction left open)
    db.write_batch({b"after": Record(1, 0, b"a")})
    db.close()
    db = LocalDb(path, persistent=True)
    try:
        assert dict(db.items()) == {b"keep": Record(1, 0, b"kept"), b"after": Record(1, 0, b"a")}
    finally:
        db.close()


def test_prepare_then_commit(tmp_path: Path) -> None:
    path = tmp_path / "p.tdb"
    db = LocalDb(path, persistent=True)
    db.put(b"gone", Record(1, 0, b"x"))
    db.prepare({b"a": Record(1, 0, b"A"), b"gone": None})
    db.commit_prepared()
    db.close()
    db = LocalDb(path, persistent=True)
    try:
        assert db.get(b"a") == Record(1, 0, b"A")
        assert db.get(b"gone") is None
    finally:
        db.close()


def test_prepare_then_cancel(tmp_path: Path) -> None:
    path = tmp_path / "p.tdb"
    db = LocalDb(path, persistent=True)
    db.put(b"stay", Record(1, 0, b"x"))
    db.prepare({b"a": Record(1, 0, b"A"), b"stay": None})
    db.cancel_prepared()
    assert db.get(b"a") is None
    assert db.get(b"stay") == Record(1, 0, b"x")
    db.close()
    db = LocalDb(path, persistent=True)
    try:
        assert db.get(b"a") is None
        assert db.get(b"stay") == Record(1, 0, b"x")
    finally:
        db.close()


def test_readers_see_only_committed_data_while_a_commit_is_prepared(tmp_path: Path) -> None:
    """The open TDB transaction shows its writes to its own handle: no dirty reads."""
    db = LocalDb(tmp_path / "p.tdb", persistent=True)
    try:
        db.put(b"changed", Record(1, 0, b"old"))
        db.put(b"deleted", Record(1, 0, b"here"))
        committed = dict(db.items())
        db.prepare(
            {
                b"changed": Record(2, 0, b"new"),
                b"deleted": None,
                b"created": Record(1, 0, b"c"),
            }
        )
        assert db.get(b"changed") == Record(1, 0, b"old")
        assert db.get(b"deleted") == Record(1, 0, b"here")
        assert db.get(b"created") is None
        assert dict(db.items()) == committed
        db.cancel_prepared()
        assert dict(db.items()) == committed
        db.prepare({b"changed": Record(2, 0, b"new"), b"deleted": None})
        assert db.get(b"changed") == Record(1, 0, b"old")
        db.commit_prepared()
        assert dict(db.items()) == {b"changed": Record(2, 0, b"new")}
    finally:
        db.close()


def test_prepared_but_never_committed_is_lost_on_close(tmp_path: Path) -> None:
    path = tmp_path / "p.tdb"
    db = LocalDb(path, persistent=True)
    db.prepare({b"a": Record(1, 0, b"A")})
    db.close()
    db = LocalDb(path, persistent=True)
    try:
        assert db.get(b"a") is None
    finally:
        db.close()


def test_failed_prepare_leaves_no_transaction_open(tmp_path: Path) -> None:
    db = LocalDb(tmp_path / "p.tdb", persistent=True)
    try:
        with pytest.raises(struct.error):
            db.prepare({b"a": Record(1, 0, b"A"), b"b": Record(-1, 0, b"B")})
        assert db.get(b"a") is None
        db.prepare({b"c": Record(1, 0, b"C")})
        db.commit_prepared()
        assert db.get(b"c") == Record(1, 0, b"C")
    finally:
        db.close()


def test_an_unopenable_path_is_a_local_os_error(tmp_path: Path) -> None:
    """An OSError, not a CtdbError: the ordered stream takes a CtdbError for a
    refusal every member makes alike, so a node that could not open a file
    in an attach would have gone on without the database, silently."""
    with pytest.raises(OSError) as info:
        LocalDb(tmp_path / "no" / "such" / "dir" / "x.tdb", persistent=True)
    assert info.value.errno == errno.ENOENT
    assert "cannot open" in str(info.value)


# -- a persistent file that is not what it should be ------------------------------------------


def make_persistent(path: Path, n: int = 500) -> None:
    db = LocalDb(path, persistent=True)
    try:
        db.write_batch({f"key{i}".encode(): Record(i + 1, 0, b"v" * 40) for i in range(n)})
    finally:
        db.close()


def refused(path: Path, *words: str) -> CorruptFile:
    before = path.read_bytes()
    with pytest.raises(CorruptFile) as info:
        LocalDb(path, persistent=True)
    assert info.value.code == ErrorCode.IO
    assert str(path) in info.value.message  # names the file
    for word in words:
        assert word in info.value.message
    assert path.read_bytes() == before  # and left it exactly as it was
    return info.value


def test_a_truncated_persistent_file_is_refused_by_name(tmp_path: Path) -> None:
    plain = tmp_path / "plain.tdb"
    t = tdb.Tdb(str(plain), 100003, tdb.DEFAULT, os.O_RDWR | os.O_CREAT, 0o600)
    for i in range(500):
        t.store(f"key{i}".encode(), Record(1, 0, b"v" * 40).pack(), tdb.REPLACE)
    t.close()
    data = plain.read_bytes()
    # python-tdb alone would open this and show some of the records, silently
    plain.write_bytes(data[: len(data) - 200])
    t = tdb.Tdb(str(plain), 0, tdb.DEFAULT, os.O_RDWR)
    assert 0 < len(list(t.keys())) < 500
    t.close()
    refused(plain, "corrupt or truncated", "cannot be read")


def test_a_persistent_file_cut_inside_its_records_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.tdb"
    make_persistent(path)
    path.write_bytes(path.read_bytes()[: 100003 * 4 + 5000])
    refused(path, "cannot open it as a TDB")


@pytest.mark.parametrize("garbage", [b"", b"\0" * 4096, bytes(range(256)) * 8], ids=len)
def test_a_file_that_is_not_a_tdb_is_refused_not_recreated(tmp_path: Path, garbage: bytes) -> None:
    """libtdb with O_CREAT would silently initialise it as an empty database."""
    path = tmp_path / "p.tdb"
    path.write_bytes(garbage)
    refused(path, "cannot open it as a TDB")


def test_a_record_without_its_ctdb_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.tdb"
    make_persistent(path, 10)
    t = tdb.Tdb(str(path), 0, tdb.DEFAULT, os.O_RDWR)
    t.store(b"short", b"12345", tdb.REPLACE)
    t.close()
    refused(path, "no CTDB header")


def test_a_broken_record_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.tdb"
    make_persistent(path)
    data = bytearray(path.read_bytes())
    # TDB's own record header (next, rec_len, key_len, data_len, full_hash,
    # magic: 24 bytes) sits just before the key; overwrite it.
    at = data.index(b"key250") - 24
    data[at : at + 24] = b"\xff" * 24
    path.write_bytes(bytes(data))
    refused(path, "cannot be read")


def test_a_cancelled_prepared_commit_is_not_corruption(tmp_path: Path) -> None:
    """An aborted two-phase commit leaves a file tdb_check calls corrupt; it is not."""
    path = tmp_path / "p.tdb"
    make_persistent(path, 20)
    db = LocalDb(path, persistent=True)
    db.prepare({b"new": Record(1, 0, b"N")})
    db.cancel_prepared()
    db.close()
    db = LocalDb(path, persistent=True)
    try:
        assert len(db) == 20 and db.get(b"new") is None
    finally:
        db.close()


def test_a_volatile_file_is_recreated_whatever_it_held(tmp_path: Path) -> None:
    path = tmp_path / "v.tdb"
    path.write_bytes(b"garbage")
    db = LocalDb(path, persistent=False)
    try:
        assert len(db) == 0
    finally:
        db.close()


def test_replace_all_writes_only_what_differs(tmp_path: Path) -> None:
    """A copy installed over one that is mostly current rewrites only the
    difference: TDB's sequence number, bumped by every write, shows it."""
    db = LocalDb(tmp_path / "p.tdb", persistent=True)
    try:
        db.enable_tdb_seqnum()
        same = {b"a": Record(1, 0, b"A"), b"b": Record(2, 1, b"B"), b"c": Record(3, 2, b"C")}
        db.write_batch(same)
        before = db.tdb_seqnum
        db.write_batch(dict(same), replace_all=True)
        assert db.tdb_seqnum == before
        assert dict(db.items()) == same
        new = {b"a": Record(1, 0, b"A"), b"b": Record(3, 1, b"B2"), b"d": Record(1, 0, b"D")}
        db.write_batch(new, replace_all=True)
        assert dict(db.items()) == new
        # b rewritten, c removed, d added: three writes, a left alone
        assert db.tdb_seqnum == before + 3
    finally:
        db.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs, as a full disk."""
    with tmpfs(tmp_path / "disk", "3m") as disk:
        yield disk


def test_a_copy_installed_over_a_current_one_needs_room_for_the_difference_only(
    small_disk: Path,
) -> None:
    """chaos, vs seed 1630: a node whose disk had room for its copy and for
    what it lacked failed every state transfer, since wiping and rewriting
    the file in one TDB transaction needs room for two copies."""
    db = LocalDb(small_disk / "p.tdb", persistent=True)
    try:
        copy = {b"k%d" % i: Record(1, 0, b"x" * 300) for i in range(3000)}
        db.write_batch(copy)
        assert os.path.getsize(small_disk / "p.tdb") > 1_000_000  # more than a third of the disk
        newer = dict(copy)
        newer.update({b"k%d" % i: Record(2, 1, b"y" * 300) for i in range(50)})
        newer.update({b"n%d" % i: Record(1, 1, b"z" * 300) for i in range(50)})
        del newer[b"k2999"]
        db.write_batch(newer, replace_all=True)
        assert dict(db.items()) == newer
    finally:
        db.close()


def test_a_write_the_disk_cannot_take_is_an_os_error_that_says_so(small_disk: Path) -> None:
    """Not python-tdb's RuntimeError with libtdb's stale code ("Record does
    not exist"): the replicated stream must see a local failure, and the
    log must say which file and how much room was left."""
    path = small_disk / "p.tdb"
    db = LocalDb(path, persistent=True)
    try:
        kept = {b"k%d" % i: Record(1, 0, b"x" * 300) for i in range(3000)}
        db.write_batch(kept)
        too_much = {b"j%d" % i: Record(1, 0, b"y" * 300) for i in range(6000)}
        with pytest.raises(OSError) as failed:
            db.write_batch(too_much, replace_all=True)
        assert str(path) in str(failed.value)
        assert "bytes free on its file system" in str(failed.value)
        assert dict(db.items()) == kept  # nothing of it written, and no transaction left open
        db.write_batch({b"after": Record(1, 0, b"a")})
        assert db.get(b"after") == Record(1, 0, b"a")
    finally:
        db.close()


def test_a_volatile_file_the_disk_has_no_room_for_is_refused_not_a_crash(
    small_disk: Path,
) -> None:
    """libtdb maps a new file's mutex area (4.4 MB for the default 100,003
    chains) after only sizing it: on a 3 MiB disk the daemon died of SIGBUS."""
    with pytest.raises(OSError) as refused:
        LocalDb(small_disk / "v.tdb", persistent=False)
    assert refused.value.errno == errno.ENOSPC
    assert "v.tdb" in str(refused.value) and "are free" in str(refused.value)


def test_a_store_outside_a_transaction_the_disk_cannot_take_is_an_os_error_too(
    small_disk: Path,
) -> None:
    """A volatile file's single writes fail as a transaction's do: an OSError
    naming the file, which the daemon logs in one line and the client gets
    as an I/O error, not python-tdb's RuntimeError (an "internal error")."""
    path = small_disk / "v.tdb"
    db = LocalDb(path, persistent=False, hash_size=1009)
    try:
        stored = 0
        with pytest.raises(OSError) as failed:
            for i in range(20_000):
                db.put(b"k%d" % i, Record(1, 0, b"x" * 300))
                stored += 1
        assert 1000 < stored < 20_000
        assert str(path) in str(failed.value)
        assert "bytes free on its file system" in str(failed.value)
        assert db.get(b"k%d" % (stored - 1)) == Record(1, 0, b"x" * 300)
        db.remove(b"k0")  # a removal needs no room
        assert db.get(b"k0") is None
    finally:
        db.close()
