"""Local storage: one TDB file per database per node, CTDB-compatible.

Every value starts with CTDB's 24-byte record header so that Samba's
`ltdbtool dump` and `tdbdump` read our files. The header carries what the
cluster logic needs per record: the RSN (bumped on every migration or
update, so the highest RSN is the newest copy) and the dmaster (which node
holds the authoritative copy). A record with a header and no data is a
deletion marker: it must outlive a recovery so the delete is not undone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import tdb

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.storage.chainlocks import ChainLocks

HEADER = struct.Struct("<QIIII")
HEADER_SIZE = HEADER.size  # 24
#: TDB_MUTEX_LOCKING; python-tdb exposes no constant for it.
TDB_MUTEX_LOCKING = 4096
#: tdb.h TDB_SEQNUM
TDB_SEQNUM = 0x80
#: Measured: the default hash size is ~7x slower than this at 100k records.
DEFAULT_HASH_SIZE = 100003
#: Bytes a new file with mutex locking takes per hash chain, rounded up:
#: libtdb's mutex (40 on x86-64 glibc, 48 on arm64) and the chain's offset.
MUTEX_BYTES_PER_CHAIN = 64
#: The dmaster of a record no node is dmaster of (CTDB_UNKNOWN_PNN): a
#: volatile record over vs, where every member holds every record and every
#: write must enter the ordered stream. Samba's clients write a record in
#: place only where its header names their node, so they must ask instead.
NO_DMASTER = 0xFFFFFFFF


@dataclass(slots=True)
class Record:
    """One version of a record: its CTDB header fields and its value.

    A value, never changed once made (a new version is a new `Record`). Not
    frozen only because a frozen dataclass sets each field through
    `object.__setattr__`, four calls per record read: records are read and
    made several times per migration step. So it is not hashable either.
    """

    rsn: int
    dmaster: int
    value: bytes
    flags: int = 0

    @property
    def deleted(self) -> bool:
        return not self.value

    def pack(self) -> bytes:
        return HEADER.pack(self.rsn, self.dmaster, 0, self.flags, 0) + self.value

    @classmethod
    def unpack(cls, data: bytes) -> Record:
        if len(data) < HEADER_SIZE:
            raise NoHeader(len(data))
        rsn, dmaster, _reserved, flags, _pad = HEADER.unpack_from(data)
        return cls(rsn, dmaster, data[HEADER_SIZE:], flags)


class NoHeader(CtdbError):
    """A stored value too short for CTDB's record header: not a record our
    daemon or a Samba client wrote, but a foreign writer's of the shared file."""

    def __init__(self, size: int) -> None:
        super().__init__(ErrorCode.IO, f"record of {size} bytes has no CTDB header")


def next_rsn(old_rsn: int, epoch: int) -> int:
    """The RSN of a record's next version written by its dmaster: above the
    old one and stamped with the epoch (the daemon's writes and a client's in
    place alike)."""
    return max(old_rsn + 1, epoch << 32)


def live_value(rec: Record | None) -> bytes | None:
    """What a client reads: a missing record and a deletion marker are both None."""
    return None if rec is None or rec.deleted else rec.value


@functools.cache
def _libtdb() -> ctypes.CDLL:
    """libtdb itself: python-tdb's traversal hides read errors (it just stops)."""
    lib = ctypes.CDLL("libtdb.so.1", use_errno=True)
    lib.tdb_open.restype = ctypes.c_void_p
    lib.tdb_open.argtypes = [
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_uint,
    ]
    lib.tdb_traverse_read.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.tdb_close.argtypes = [ctypes.c_void_p]
    return lib


class CorruptFile(CtdbError):
    """A database file on disk that must not be used as it is."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(
            ErrorCode.IO,
            f"database file {path} is corrupt or truncated ({why}); this node will not "
            "use it: restore it from a backup, or move it away so that the node takes "
            "the cluster's copy at its next recovery",
        )
        self.path = path


def check_file(path: Path) -> None:
    """Refuse an existing TDB file that is corrupt or truncated (`CorruptFile`).

    Opening proves little. Asked to create (O_CREAT), libtdb re-initialises a
    file whose header it does not recognise, wiping it; and python-tdb's key
    iteration over a truncated file simply stops at the first broken hash
    chain, losing the rest in silence. So an existing file is opened without
    O_CREAT, read-write (an interrupted transaction is rolled back from its
    recovery area, as on any open), and every hash chain is walked with
    libtdb's own traverse, which reports a record it cannot read. (tdb_check
    is stricter but also rejects a sound file whose last prepared
    transaction was cancelled, which an aborted commit leaves behind.)
    """
    lib = _libtdb()
    handle = lib.tdb_open(os.fsencode(path), 0, 0, os.O_RDWR, 0)
    if not handle:
        raise CorruptFile(path, f"cannot open it as a TDB: {os.strerror(ctypes.get_errno())}")
    try:
        if lib.tdb_traverse_read(handle, None, None) < 0:
            raise CorruptFile(path, "a hash chain leads to a record that cannot be read")
    finally:
        lib.tdb_close(handle)


def _free_bytes(directory: Path) -> int:
    """Room left for an unprivileged writer on `directory`'s file system."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def _room_for_mutexes(path: Path, hash_size: int) -> None:
    """Refuse to create a file with mutex locking that the disk has no room for.

    libtdb sizes a new file's mutex area with ftruncate and initialises it
    through a mapping, so on a disk without room for it the first touch of
    a page kills the process with SIGBUS instead of failing the open
    (measured: 100,003 chains, 4.4 MB, on a 3 MiB tmpfs). Room can still
    vanish between this look and the open; this closes all but that race.
    """
    need = hash_size * MUTEX_BYTES_PER_CHAIN
    free = _free_bytes(path.parent)
    if free < need:
        raise OSError(
            errno.ENOSPC,
            f"cannot create {path}: its {hash_size:,} chain locks need about "
            f"{need:,} bytes, and {free:,} are free on its file system",
        )


class LocalDb:
    """A TDB file holding records with CTDB headers.

    `persistent` files are durable: writes go through TDB transactions with
    fsync. An existing one is checked before it is used (`check_file`, and
    every record must carry its CTDB header). Volatile files are recreated
    empty at open (CTDB wipes them when the daemon starts) and use mutex
    locking plus NOSYNC, since a crash loses them anyway.
    """

    #: Another process can wait in this file's chain lock queue for us
    #: (`ctdb.engines.chains.wait_in_queue`).
    queueable = True

    def __init__(self, path: Path, *, persistent: bool, hash_size: int = DEFAULT_HASH_SIZE):
        self.path = path
        self.persistent = persistent
        flags = tdb.DEFAULT if persistent else tdb.NOSYNC | TDB_MUTEX_LOCKING
        #: what another process must open the file with (CTDB's DB_OPEN_FLAGS)
        self.tdb_flags = flags
        existing = path.exists()
        if existing and not persistent:
            path.unlink()
            existing = False
        if existing:
            check_file(path)
        open_flags = os.O_RDWR if existing else os.O_RDWR | os.O_CREAT
        if flags & TDB_MUTEX_LOCKING:
            _room_for_mutexes(path, hash_size)
        try:
            self._tdb = tdb.Tdb(str(path), hash_size, flags, open_flags, 0o600)
        except (OSError, RuntimeError) as exc:
            # An OSError, as a failed write is (`_write_failed`): a file this
            # node cannot open is its own trouble, never a refusal every
            # member of the ordered stream would make alike.
            code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
            raise OSError(code, f"cannot open {path}: {exc}") from exc
        #: the chain locks Samba's clients take too, on this very handle
        self.chains = ChainLocks(self._tdb, path)
        #: how often this process locked the whole file (`try_lock_all`), nested
        self._whole = 0
        #: While a two-phase commit is prepared: the committed value of every
        #: key it writes (None: absent). The open TDB transaction shows its
        #: own uncommitted writes to this handle; readers must not see them.
        self._committed: dict[bytes, bytes | None] | None = None
        #: Keys written since `track_changes` (None: not tracked). Recovery
        #: uses it to ship only what changed since the copy it distributed.
        self.changed: set[bytes] | None = None
        if existing:
            self._check_headers()

    def _check_headers(self) -> None:
        try:
            for _ in self.items():
                pass
        except CtdbError as exc:
            self.close()
            raise CorruptFile(self.path, exc.message) from None

    def close(self) -> None:
        # Release the whole-file lock first: libtdb unmaps the mutex area at
        # close without unlocking, and a robust mutex still held there stays
        # on this thread's robust list, which the next lock walks (a crash in
        # the simulator, where killed nodes live on in one process).
        if self._whole:
            self.chains.unlock_all()
            self._whole = 0
        self.chains.close()
        self._tdb.close()

    def try_lock_chain(self, key: bytes) -> bool:
        """Lock `key`'s chain unless another process holds it. Release it with
        `unlock_chain` before the next `await`: the lock belongs to the thread."""
        return self.chains.try_lock(key)

    def unlock_chain(self, key: bytes) -> None:
        self.chains.unlock(key)

    # -- TDB's own sequence number, which Samba's clients watch (ENABLE_SEQNUM) --

    def enable_tdb_seqnum(self) -> None:
        """From now on this handle's writes bump the file's number (TDB_SEQNUM):
        a flag on the handle, no I/O."""
        if not self.tdb_flags & TDB_SEQNUM:
            self._tdb.enable_seqnum()
            self.tdb_flags |= TDB_SEQNUM

    @property
    def tdb_seqnum(self) -> int:
        return int(self._tdb.seqnum)

    def bump_tdb_seqnum(self) -> None:
        """Tell the file's watchers that something changed (another node wrote)."""
        self._tdb.increment_seqnum_nonblock()

    @property
    def whole_locked(self) -> bool:
        """This process holds every chain (`try_lock_all`)."""
        return self._whole > 0

    def try_lock_all(self) -> bool:
        """Lock every chain unless another process holds one, or this one
        does (for a lock of its clients: libtdb refuses to combine the two,
        as an error); True if held now. Nests: each success needs its
        `unlock_all`."""
        if self._whole or (not self.chains.holding and self.chains.try_lock_all()):
            self._whole += 1
            return True
        return False

    def unlock_all(self) -> None:
        if self._whole == 1:
            self.chains.unlock_all()
        self._whole = max(self._whole - 1, 0)

    def get(self, key: bytes) -> Record | None:
        """Committed data only, also while a prepared commit is open."""
        if self._committed is not None and key in self._committed:
            data = self._committed[key]
        else:
            data = self._tdb.get(key)
        return None if data is None else Record.unpack(data)

    def put(self, key: bytes, record: Record) -> None:
        try:
            self._tdb.store(key, record.pack(), tdb.REPLACE)
        except RuntimeError as exc:
            raise self._write_failed(exc) from None
        if self.changed is not None:
            self.changed.add(key)

    def track_changes(self) -> None:
        """Start remembering which keys change from here on."""
        self.changed = set()

    def remove(self, key: bytes) -> None:
        if key in self._tdb:
            try:
                self._tdb.delete(key)
            except RuntimeError as exc:
                raise self._write_failed(exc) from None
            if self.changed is not None:
                self.changed.add(key)

    def _keys(self) -> list[bytes]:
        keys = list(self._tdb.keys())
        if self._committed is not None:
            # Keys the prepared commit deletes are still committed data.
            keys += [k for k, v in self._committed.items() if v is not None and k not in self._tdb]
        return keys

    def items(self) -> Iterator[tuple[bytes, Record]]:
        yield from self.items_of(self._keys())

    def sound_items(
        self, keys: Iterable[bytes] | None = None
    ) -> tuple[list[tuple[bytes, Record]], list[bytes]]:
        """The records of `keys` (default: all) that carry their CTDB header,
        and the keys of those that do not (`NoHeader`), which `items` stops at."""
        found, headerless = [], []
        for key in self._keys() if keys is None else keys:
            try:
                rec = self.get(key)
            except NoHeader:
                headerless.append(key)
                continue
            if rec is not None:
                found.append((key, rec))
        return found, headerless

    def items_of(self, keys: Iterable[bytes]) -> Iterator[tuple[bytes, Record]]:
        """The records of `keys` that exist."""
        for key in keys:
            rec = self.get(key)
            if rec is not None:
                yield key, rec

    def __len__(self) -> int:
        return sum(1 for _ in self.items())

    def clear(self) -> None:
        try:
            self._tdb.clear()
        except RuntimeError as exc:
            raise self._write_failed(exc) from None
        self.changed = None  # everything changed

    def write_batch(
        self, puts: Mapping[bytes, Record | None], *, replace_all: bool = False
    ) -> None:
        """Apply many changes atomically (one TDB transaction).

        `None` removes the key; with `replace_all` the file ends holding
        exactly `puts`, which is how recovery and a state transfer install a
        database pulled from another node. Only what differs is written: a
        TDB transaction keeps the old contents of every region it rewrites
        until it commits, so wiping and rewriting a copy that is mostly
        current needed twice the database's size free on the disk (chaos,
        vs seed 1630: a node whose disk had room for its copy and what it
        lacked, not for two copies, failed its state transfer for good).
        """
        if self.whole_locked:
            self._write_in_place(puts, replace_all=replace_all)
            return
        self._prepare(puts, replace_all=replace_all)
        self._tdb.transaction_commit()

    def _write_in_place(self, puts: Mapping[bytes, Record | None], *, replace_all: bool) -> None:
        """`write_batch` under the whole-file lock, which TDB transactions refuse."""
        if self.persistent:
            raise CtdbError(ErrorCode.IO, f"{self.path} is durable: written by transaction only")
        self._apply(puts, replace_all=replace_all)

    def _apply(self, puts: Mapping[bytes, Record | None], *, replace_all: bool) -> None:
        """Write `puts` (None: delete); with `replace_all` also remove every
        key `puts` does not name, and leave alone a record it names with
        the bytes the file holds already."""
        t = self._tdb
        if replace_all:
            for key in [key for key in t.keys() if key not in puts]:
                t.delete(key)
        for key, rec in puts.items():
            if rec is None:
                if key in t:
                    t.delete(key)
            else:
                data = rec.pack()
                if not replace_all or t.get(key) != data:
                    t.store(key, data, tdb.REPLACE)

    # Two-phase commit for persistent transactions: prepare writes everything
    # and fsyncs the recovery area, so the final commit cannot fail for space.
    # Until it is committed, readers of this handle see the committed values.

    def prepare(self, puts: Mapping[bytes, Record | None]) -> None:
        """Write `puts` in an open, prepared TDB transaction (commit or cancel it next)."""
        committed = {key: self._tdb.get(key) for key in puts}
        self._prepare(puts, replace_all=False)
        self._committed = committed

    def _prepare(self, puts: Mapping[bytes, Record | None], *, replace_all: bool) -> None:
        t = self._tdb
        t.transaction_start()
        try:
            self._apply(puts, replace_all=replace_all)
            t.transaction_prepare_commit()
        except BaseException as exc:
            # A prepare that failed has cancelled the transaction itself, and
            # cancelling again fails: the first error is the one to report.
            with contextlib.suppress(RuntimeError):
                t.transaction_cancel()
            if isinstance(exc, RuntimeError):
                raise self._write_failed(exc) from None
            raise

    def _write_failed(self, exc: RuntimeError) -> RuntimeError | OSError:
        """python-tdb's error for a failed write, as the disk error it is.

        libtdb's code after a failed transaction is often stale (a full
        disk reads "Record does not exist"), so the free space is said too.
        An OSError, not a CtdbError: the replicated stream takes a
        CtdbError for a refusal every member makes alike, and a local
        failure must make this node leave and rejoin instead. A subclass
        is not libtdb's (the simulator's write by a crashed node): as it is.
        """
        if type(exc) is not RuntimeError:
            return exc
        what = exc.args[-1] if exc.args else exc
        try:
            free = f"{_free_bytes(self.path.parent):,} bytes free on its file system"
        except OSError:
            free = "free space unknown"
        return OSError(errno.EIO, f"writing {self.path} failed (libtdb: {what}; {free})")

    def commit_prepared(self) -> None:
        self._committed = None
        self._tdb.transaction_commit()

    def cancel_prepared(self) -> None:
        self._committed = None
        self._tdb.transaction_cancel()
