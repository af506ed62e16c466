"""Chain locks on the daemon's own TDB handle, through libtdb (ctypes).

Samba's clients open a volatile database's file themselves, take a record's
chain lock and write the record in place when this node is its dmaster
(`../shared/reference/ctdb-wire-protocol.md` §7). The daemon must take the
same locks to read, decide and write a record atomically with respect to
them, and must never *wait* for one: a client may hold a chain lock while it
waits for the daemon (ctdb's `deletekey` waits for SCHEDULE_FOR_DELETION's
reply under its lock), and python-tdb blocks holding the GIL. So only the
non-blocking calls are offered; the callers requeue.

python-tdb has no chain-lock call, and a process may open a TDB file only
once (fcntl locks are per process, and closing any descriptor of the file
drops all of them), so these calls run on python-tdb's own TDB_CONTEXT:
pytdb's object is `{PyObject_HEAD; TDB_CONTEXT *ctx; bool closed}`
(lib/tdb/pytdb.c). The pointer is checked against the file's name before
it is used, and a mismatch refuses to go on rather than lock a stray
address.

Chain locks are robust mutexes in volatile files (TDB_MUTEX_LOCKING), owned
by the thread that took them: lock and unlock on the same thread (the event
loop), and never across an `await`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from ctdb.common.errors import CtdbError, ErrorCode

#: what a non-blocking lock sets errno to when another process holds the lock
_BUSY = frozenset({errno.EAGAIN, errno.EACCES, errno.EBUSY, errno.EWOULDBLOCK})


class _TdbData(ctypes.Structure):
    """TDB_DATA, passed by value: {unsigned char *dptr; size_t dsize}."""

    _fields_ = [("dptr", ctypes.c_char_p), ("dsize", ctypes.c_size_t)]


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL("libtdb.so.1", use_errno=True)
    ctx = ctypes.c_void_p
    lib.tdb_name.restype = ctypes.c_char_p
    lib.tdb_name.argtypes = [ctx]
    for name in (
        "tdb_chainlock",
        "tdb_chainlock_nonblock",
        "tdb_chainunlock",
        "tdb_chainlock_mark",
        "tdb_chainlock_unmark",
    ):
        func = getattr(lib, name)
        func.restype = ctypes.c_int
        func.argtypes = [ctx, _TdbData]
    for name in ("tdb_lockall_nonblock", "tdb_unlockall"):
        func = getattr(lib, name)
        func.restype = ctypes.c_int
        func.argtypes = [ctx]
    return lib


def _context(handle: object, path: Path) -> int:
    """python-tdb's TDB_CONTEXT pointer, checked: libtdb must name it `path`."""
    address = ctypes.c_void_p.from_address(id(handle) + object.__basicsize__).value
    if not address:
        raise CtdbError(ErrorCode.IO, f"the TDB handle of {path} is closed")
    name = _lib().tdb_name(address)
    if name != os.fsencode(path):
        raise CtdbError(
            ErrorCode.IO,
            f"python-tdb's object layout is not the one expected (TDB_CONTEXT of {path} "
            f"names {name!r}): chain locks are not available",
        )
    return address


@contextlib.contextmanager
def blocking_chainlock(handle: object, path: Path, key: bytes) -> Iterator[bool]:
    """Hold `key`'s chain on python-tdb `handle`, waiting for it (True; False if
    libtdb failed the call). Only for `chain_helper`, a process of its own:
    the daemon never waits for a lock."""
    lib, ctx, data = _lib(), _context(handle, path), _TdbData(key, len(key))
    held = lib.tdb_chainlock(ctx, data) == 0
    try:
        yield held
    finally:
        if held:
            lib.tdb_chainunlock(ctx, data)


class ChainLocks:
    """Non-blocking chain locks and all-record locks on one open TDB handle."""

    def __init__(self, handle: object, path: Path) -> None:
        self.path = path
        self._ctx: int | None = _context(handle, path)
        #: the keys of the chains this handle holds, once per lock (locks nest)
        self._held: list[bytes] = []
        #: chains a helper process holds for us (`hold_for`): key -> its release
        self._marked: dict[bytes, Callable[[], None]] = {}
        lib = _lib()
        self._calls = {
            name: getattr(lib, name)
            for name in (
                "tdb_chainlock_nonblock",
                "tdb_chainunlock",
                "tdb_chainlock_mark",
                "tdb_chainlock_unmark",
                "tdb_lockall_nonblock",
                "tdb_unlockall",
            )
        }

    def close(self) -> None:
        """The handle is about to close: release the chains it still holds.

        libtdb's close unmaps a mutex file's mutexes without unlocking them,
        and a robust mutex left locked stays linked into this thread's
        robust list: the next chain lock on any file writes through that
        stale link, into unmapped memory or into another file's mapping
        (`tests/test_chainlocks.py`; a process that lives on after closing
        a file: the simulator, the tests, a client).
        """
        for key in reversed(self._held):
            with contextlib.suppress(CtdbError):  # nothing better to do while closing
                self.unlock(key)
        self._ctx = None

    def _call(self, name: str, *args: object) -> bool:
        """Run a libtdb lock call: True if done, False if another process holds the lock."""
        if self._ctx is None:
            raise CtdbError(ErrorCode.IO, f"{self.path} is closed")
        ctypes.set_errno(0)
        if self._calls[name](self._ctx, *args) == 0:
            return True
        err = ctypes.get_errno()
        if err in _BUSY:
            return False
        why = os.strerror(err) if err else "the lock was not held"
        raise CtdbError(ErrorCode.IO, f"{name} on {self.path} failed: {why}")

    def try_lock(self, key: bytes) -> bool:
        """Lock `key`'s hash chain if nobody else holds it (nested locks count)."""
        if not self._call("tdb_chainlock_nonblock", _TdbData(key, len(key))):
            return False
        self._held.append(key)
        return True

    def hold_for(self, key: bytes, release: Callable[[], None]) -> None:
        """A helper process holds `key`'s chain for us (`chain_helper`): count it
        as held by this handle (libtdb marks it, and our own calls on the
        record then lock nothing), until `unlock` calls `release`."""
        self._call("tdb_chainlock_mark", _TdbData(key, len(key)))
        self._held.append(key)
        self._marked[key] = release

    def unlock(self, key: bytes) -> None:
        if key in self._marked and self._held.count(key) == 1:
            # The outermost hold of a chain a helper holds for us: unmark it,
            # and let the helper go.
            release = self._marked.pop(key)
            self._held.remove(key)
            try:
                self._call("tdb_chainlock_unmark", _TdbData(key, len(key)))
            finally:
                release()
            return
        self._call("tdb_chainunlock", _TdbData(key, len(key)))
        if key in self._held:
            self._held.remove(key)

    @property
    def holding(self) -> bool:
        """This handle holds a chain (for a lock of the daemon's clients, or a helper's)."""
        return bool(self._held)

    def try_lock_all(self) -> bool:
        """Lock every chain (CTDB's freeze), if no other process holds any.

        libtdb refuses it (an error, not "busy") while this handle holds a
        chain: `LocalDb.try_lock_all` asks `holding` first."""
        return self._call("tdb_lockall_nonblock")

    def unlock_all(self) -> None:
        self._call("tdb_unlockall")
