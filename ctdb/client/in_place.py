"""Records used in the client's own process while this node is their dmaster.

Samba's clients do not ask the daemon for a record this node holds: they
lock the record's chain in the node's TDB file, read or write it there, and
unlock; the daemon is asked only to migrate a record here (CTDB's
`dbwrap_ctdb`). A round trip to a Python daemon costs some 60 µs; the
chain lock and the TDB calls cost a few. `Client(in_place=True)` does the
same for volatile databases on a tcp cluster:

* `fetch`, `fetch_lock` / `store_unlock` / `unlock` and `store` run here
  when the record exists with this node as its dmaster, its chain is free,
  and the node serves; anything else goes to the daemon, which migrates the
  record and answers, and the next operation finds it here.
* A new version is stamped as the daemon stamps it: dmaster = this node,
  RSN = max(old + 1, epoch << 32).
* Whether the node serves is read, under the chain lock, from the file the
  daemon publishes (`ctdb.protocol.serving_state`): a freezing daemon says
  "not serving" before it takes every chain, and a daemon whose lease runs
  out (cut off, stopped) stops its clients with it, before the rest of the
  cluster recovers without it.
* A chain is only ever tried, never waited for: when the daemon or another
  client holds it, the operation goes to the daemon, which queues it fairly
  with the others.

Left to the daemon: databases of other kinds, vs clusters (every write
must enter the ordered stream there), and records this node is not dmaster
of. A client must not ask the daemon about a record it holds locked here:
the daemon would wait for the chain the client holds.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from pathlib import Path
from typing import Any

import tdb

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol import serving_state
from ctdb.storage.chainlocks import ChainLocks
from ctdb.storage.ltdb import Record, next_rsn


class _File:
    """A TDB file as this process has it open: once, whoever uses it.

    A process opens each TDB file once (fcntl locks belong to the process,
    and closing any descriptor of a file drops all of them; libtdb refuses a
    second open), so every `Client` of the process shares the handle. libtdb
    counts a chain lock taken again through the same handle as nested, not
    as taken: two clients would both "hold" a record. So one client at a
    time uses a file in place (`enter`); another asks the daemon meanwhile.
    """

    def __init__(self, path: str, tdb_flags: int, run: int) -> None:
        # Never CLEAR_IF_FIRST: a client alone with the file would wipe it.
        self.handle: Any = tdb.Tdb(path, 0, tdb_flags & ~tdb.CLEAR_IF_FIRST, os.O_RDWR)
        self.chains = ChainLocks(self.handle, Path(path))
        #: the daemon's run that created the file (a restarted daemon recreates it)
        self.run = run
        #: the daemon has restarted since: reopen once nobody uses it
        self.stale = False
        self._guard = threading.Lock()
        self._user: object | None = None
        self._depth = 0

    def enter(self, user: object) -> bool:
        """Whether `user` may use the file now (nested: once per `leave`)."""
        with self._guard:
            if self._user is not None and self._user is not user:
                return False
            self._user = user
            self._depth += 1
            return True

    def claim(self, user: object) -> bool:
        """`enter`, only if nobody (not even `user`) is using the file."""
        with self._guard:
            if self._user is not None:
                return False
            self._user = user
            self._depth = 1
            return True

    def leave(self) -> None:
        with self._guard:
            self._depth -= 1
            if not self._depth:
                self._user = None

    def close(self) -> None:
        self.chains.close()
        self.handle.close()


_FILES: dict[str, _File] = {}
#: held while a thread opens or reopens a file: two threads of a process
#: that both found it unopened would open it twice (libtdb refuses: EBUSY)
_OPENING = threading.Lock()
_SERVING: dict[str, mmap.mmap] = {}


def _open_serving(path: str) -> mmap.mmap:
    found = _SERVING.get(path)
    if found is None:
        fd = os.open(path, os.O_RDONLY)
        try:
            found = _SERVING[path] = mmap.mmap(fd, serving_state.SIZE, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
    return found


class InPlaceDb:
    """One volatile database's file, as the daemon of node `pnn` described it,
    used by one client (`owner`: the file's user while it holds a chain)."""

    def __init__(
        self, path: str, tdb_flags: int, serving_path: str, pnn: int, owner: object
    ) -> None:
        self.path = path
        self.tdb_flags = tdb_flags
        self.pnn = pnn
        self.owner = owner
        self._serving = _open_serving(serving_path)
        #: the RSN of each record held locked here, as read under its chain
        self._rsn: dict[bytes, int] = {}

    def _enter(self) -> _File | None:
        """The file, ours to use now; None: ask the daemon."""
        with _OPENING:
            file = _FILES.get(self.path)
            if file is None or file.stale:
                # First use, or a daemon that restarted recreated its files: open
                # the file of its current run, unless a client still uses the old one.
                if file is not None and not file.claim(self.owner):
                    return None
                state = serving_state.read(self._serving)
                if state.until <= time.monotonic():
                    if file is not None:
                        file.leave()
                    return None
                if file is not None:
                    del _FILES[self.path]
                    file.close()
                file = _FILES[self.path] = _File(self.path, self.tdb_flags, state.run)
        return file if file.enter(self.owner) else None

    def _state(self, file: _File) -> serving_state.ServingState | None:
        """The node's published state if `file` may be used now: the node
        serves, and the file is the one of its current run."""
        state = serving_state.read(self._serving)
        if state.until <= time.monotonic():
            return None
        if state.run != file.run:
            file.stale = True
            return None
        return state

    def lock(self, key: bytes) -> tuple[bool, bytes | None]:
        """(True, value) holding the record's chain; (False, None): ask the daemon."""
        file = self._enter()
        if file is None:
            return False, None
        try:
            if file.chains.try_lock(key):
                try:
                    found = self._mine(file, key)
                except BaseException:
                    file.chains.unlock(key)
                    raise
                if found[0]:
                    return found  # the chain, and the file, stay ours until unlocked
                file.chains.unlock(key)
        except BaseException:
            file.leave()
            raise
        file.leave()
        return False, None

    def _mine(self, file: _File, key: bytes) -> tuple[bool, bytes | None]:
        """Under the record's chain: (True, value) if this node serves and is its
        dmaster. A freezing daemon has said by now that it does not serve, or
        waits for the chain we hold."""
        if self._state(file) is None:
            return False, None
        data = file.handle.get(key)
        if data is None:
            return False, None
        rec = Record.unpack(data)
        if rec.dmaster != self.pnn:
            return False, None
        self._rsn[key] = rec.rsn  # nobody can change it while we hold the chain
        return True, rec.value or None

    def value(self, key: bytes) -> bytes | None:
        """The value of a record held locked here."""
        data = _FILES[self.path].handle.get(key)
        return None if data is None else Record.unpack(data).value or None

    def store_locked(self, key: bytes, value: bytes) -> None:
        """Write the record `lock` holds, then release it."""
        file = _FILES[self.path]
        try:
            old = self._rsn.pop(key, None)
            if old is None:  # locked twice here, and the inner unlock forgot it
                old = Record.unpack(file.handle.get(key)).rsn
            state = self._state(file)
            if state is None:
                raise CtdbError(
                    ErrorCode.RETRY,
                    f"node {self.pnn} stopped serving while {key!r} was locked: nothing written",
                )
            rsn = next_rsn(old, state.epoch)
            file.handle.store(key, Record(rsn, self.pnn, value).pack(), tdb.REPLACE)
        finally:
            file.chains.unlock(key)
            file.leave()

    def unlock(self, key: bytes) -> None:
        file = _FILES[self.path]
        self._rsn.pop(key, None)
        try:
            file.chains.unlock(key)
        finally:
            file.leave()

    def fetch(self, key: bytes) -> tuple[bool, bytes | None]:
        """(True, value) if read here; (False, None): ask the daemon."""
        found = self.lock(key)
        if found[0]:
            self.unlock(key)
        return found

    def store(self, key: bytes, value: bytes) -> bool:
        """Write the record here if this node is its dmaster (False: ask the daemon)."""
        if not self.lock(key)[0]:
            return False
        self.store_locked(key, value)
        return True


class InPlaceRecords:
    """One client's use of records in place: its databases' files (learnt from
    the daemon's `in_place` reply, once per database) and what it holds locked.

    Each method answers (True, result) when done here, and (False, None)
    when the front end must send the operation to the daemon. As through the
    daemon, a lock belongs to the client: locking a record it holds already
    gives the record again.
    """

    def __init__(self) -> None:
        self._dbs: dict[str, InPlaceDb | None] = {}
        #: records locked in place, (db, key)
        self._held: set[tuple[str, bytes]] = set()

    def knows(self, db: str) -> bool:
        return db in self._dbs

    def learn(self, db: str, info: dict[str, Any] | None) -> None:
        """The daemon's `in_place` reply for `db` (None: never in place)."""
        if info is None:
            self._dbs[db] = None
            return
        path = info["path"]
        # One per file, whatever names the client uses for the database.
        same = next((d for d in self._dbs.values() if d is not None and d.path == path), None)
        self._dbs[db] = same or InPlaceDb(
            path, int(info["tdb_flags"]), info["serving"], int(info["pnn"]), self
        )

    def fetch(self, db: str, key: bytes) -> tuple[bool, bytes | None]:
        local = self._dbs.get(db)
        return (False, None) if local is None else local.fetch(key)

    def store(self, db: str, key: bytes, value: bytes) -> tuple[bool, None]:
        local = self._dbs.get(db)
        return (local is not None and local.store(key, value)), None

    def fetch_lock(self, db: str, key: bytes) -> tuple[bool, bytes | None]:
        local = self._dbs.get(db)
        if local is None:
            return False, None
        if (db, key) in self._held:
            return True, local.value(key)
        found = local.lock(key)
        if found[0]:
            self._held.add((db, key))
        return found

    def store_unlock(self, db: str, key: bytes, value: bytes) -> tuple[bool, None]:
        local = self._dbs.get(db)
        if local is None or (db, key) not in self._held:
            return False, None
        self._held.discard((db, key))
        local.store_locked(key, value)
        return True, None

    def unlock(self, db: str, key: bytes) -> tuple[bool, None]:
        local = self._dbs.get(db)
        if local is None or (db, key) not in self._held:
            return False, None
        self._held.discard((db, key))
        local.unlock(key)
        return True, None

    def release_all(self) -> None:
        """The client closes: what it holds locked here is released unchanged."""
        for db, key in self._held:
            local = self._dbs.get(db)
            if local is not None:
                local.unlock(key)
        self._held.clear()
