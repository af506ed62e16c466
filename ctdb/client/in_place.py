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
from ctdb.storage.ltdb import Record

#: TDB_CLEAR_IF_FIRST: never ours to ask for (a client alone with the file would wipe it)
_CLEAR_IF_FIRST = 1


class _File:
    """A TDB file as this process has it open: once, whoever uses it.

    A process opens each TDB file once (fcntl locks belong to the process,
    and closing any descriptor of a file drops all of them; libtdb refuses a
    second open), so every `Client` of the process shares the handle. libtdb
    counts a chain lock taken again through the same handle as nested, not
    as taken: two clients would both "hold" a record. So one client at a
    time uses a file in place (`enter`); another asks the daemon meanwhile.
    """

    def __init__(self, path: str, tdb_flags: int) -> None:
        self.handle: Any = tdb.Tdb(path, 0, tdb_flags & ~_CLEAR_IF_FIRST, os.O_RDWR)
        self.chains = ChainLocks(self.handle, Path(path))
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

    def leave(self) -> None:
        with self._guard:
            self._depth -= 1
            if not self._depth:
                self._user = None

    def close(self) -> None:
        self.chains.close()
        self.handle.close()


_FILES: dict[str, _File] = {}
_SERVING: dict[str, mmap.mmap] = {}


def _forget_file(path: str) -> None:
    found = _FILES.pop(path, None)
    if found is not None:
        found.close()


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
    """One volatile database's file, as the daemon of node `pnn` described it
    to one client (the file's user while it holds a chain, see `_File`)."""

    def __init__(self, path: str, tdb_flags: int, serving_path: str, pnn: int) -> None:
        self.path = path
        self.tdb_flags = tdb_flags
        self.pnn = pnn
        self._serving = _open_serving(serving_path)
        #: the daemon's run our file belongs to (0: none open yet)
        self._run = 0
        #: the RSN of each record held locked here, as read under its chain
        self._rsn: dict[bytes, int] = {}

    def _state(self) -> serving_state.ServingState | None:
        """The node's published state if our file may be used now: the node
        serves, and the file is the one of its current run."""
        state = serving_state.read(self._serving)
        if state.until <= time.monotonic() or state.run != self._run:
            return None
        return state

    def _enter(self) -> _File | None:
        """The file, ours to use now; None: ask the daemon."""
        file = _FILES.get(self.path) if self._run else None
        if file is None:
            # First use, or a daemon that restarted recreated its files: open the
            # file of its current run (unless another client still works in the old one).
            state = serving_state.read(self._serving)
            if state.until <= time.monotonic():
                return None
            old = _FILES.get(self.path)
            if old is not None and not old.enter(self):
                return None
            _forget_file(self.path)
            file = _FILES[self.path] = _File(self.path, self.tdb_flags)
            self._run = state.run
        return file if file.enter(self) else None

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
        state = serving_state.read(self._serving)
        if state.until <= time.monotonic():
            return False, None
        if state.run != self._run:
            self._run = 0  # the daemon restarted: reopen at the next use
            return False, None
        data = file.handle.get(key)
        if data is None:
            return False, None
        rec = Record.unpack(data)
        if rec.dmaster != self.pnn:
            return False, None
        self._rsn[key] = rec.rsn  # nobody can change it while we hold the chain
        return True, rec.value or None

    def store_locked(self, key: bytes, value: bytes) -> None:
        """Write the record `lock` holds, then release it."""
        file = _FILES[self.path]
        try:
            old = self._rsn.pop(key, None)
            if old is None:  # locked twice here, and the inner unlock forgot it
                old = Record.unpack(file.handle.get(key)).rsn
            state = self._state()
            if state is None:
                raise CtdbError(
                    ErrorCode.RETRY,
                    f"node {self.pnn} stopped serving while {key!r} was locked: nothing written",
                )
            rsn = max(old + 1, state.epoch << 32)
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
    when the front end must send the operation to the daemon.
    """

    def __init__(self) -> None:
        self._dbs: dict[str, InPlaceDb | None] = {}
        #: records locked in place, (db, key)
        self._held: set[tuple[str, bytes]] = set()

    def knows(self, db: str) -> bool:
        return db in self._dbs

    def learn(self, db: str, info: dict[str, Any] | None) -> None:
        """The daemon's `in_place` reply for `db` (None: never in place)."""
        self._dbs[db] = (
            None
            if info is None
            else InPlaceDb(info["path"], int(info["tdb_flags"]), info["serving"], int(info["pnn"]))
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
