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
    for name in ("tdb_chainlock_nonblock", "tdb_chainunlock"):
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


class ChainLocks:
    """Non-blocking chain locks and all-record locks on one open TDB handle."""

    def __init__(self, handle: object, path: Path) -> None:
        self.path = path
        self._ctx: int | None = _context(handle, path)
        #: the keys of the chains this handle holds, once per lock (locks nest)
        self._held: list[bytes] = []
        lib = _lib()
        self._calls = {
            name: getattr(lib, name)
            for name in (
                "tdb_chainlock_nonblock",
                "tdb_chainunlock",
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

    def unlock(self, key: bytes) -> None:
        self._call("tdb_chainunlock", _TdbData(key, len(key)))
        if key in self._held:
            self._held.remove(key)

    def try_lock_all(self) -> bool:
        """Lock every chain (CTDB's freeze), if no other process holds any."""
        return self._call("tdb_lockall_nonblock")

    def unlock_all(self) -> None:
        self._call("tdb_unlockall")
