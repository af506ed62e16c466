"""TDB files for simulated nodes: small hash tables and injected I/O errors.

The nodes use the real `LocalDb` on real TDB files (in /dev/shm: the crash
model is a process crash, so fsync adds nothing). Two things differ, both
installed from outside the product code for the duration of a simulation
(`simulated_storage`):

* a hash table of 131 buckets instead of 100,003: a schedule touches a
  dozen keys, and opening, clearing and starting transactions on the large
  table (and its mutex area) cost most of a schedule's time;
* a `Disk` per node that can make TDB writes fail (`store`, `delete`,
  `clear`, `transaction_prepare_commit` raise the error python-tdb raises
  for TDB_ERR_IO), so the simulator can check what a node does when its
  local storage refuses a write;
* chains that clients of other processes (Samba's) hold in a file
  (`SimLocalDb.others`): the node's own attempts to lock such a chain, or
  the whole file, fail as libtdb's non-blocking locks would. Every node
  lives in one process, where real chain locks would not conflict (POSIX
  locks belong to a process).
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from ctdb.storage import database
from ctdb.storage.ltdb import LocalDb

SIM_HASH_SIZE = 131
#: python-tdb raises RuntimeError((tdb error code, message)); 2 is TDB_ERR_IO.
TDB_ERR_IO = 2


class CrashedProcessWrite(RuntimeError):
    """A write by what is left of a crashed node's code (it must have no effect)."""


class Disk:
    """One node's storage, shared by its incarnations; fails writes on demand."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        #: probability that a write fails (0: healthy)
        self.failure_rate = 0.0
        #: the node crashed: what is left of its process must not write
        self.dead = False
        self.errors: Counter[str] = Counter()

    def write(self, what: str) -> None:
        if self.dead:
            raise CrashedProcessWrite(TDB_ERR_IO, f"{what} by a crashed process")
        if self.failure_rate and self.random.random() < self.failure_rate:
            self.errors[what] += 1
            raise RuntimeError(TDB_ERR_IO, f"simulated I/O error in {what}")


class _FaultyTdb:
    """A python-tdb handle whose writes ask the node's `Disk` first."""

    def __init__(self, real: Any, disk: Disk) -> None:
        self._real = real
        self._disk = disk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def __contains__(self, key: bytes) -> bool:
        return key in self._real

    def store(self, *args: Any) -> Any:
        self._disk.write("store")
        return self._real.store(*args)

    def delete(self, *args: Any) -> Any:
        self._disk.write("delete")
        return self._real.delete(*args)

    def clear(self) -> Any:
        self._disk.write("clear")
        return self._real.clear()

    def transaction_prepare_commit(self) -> Any:
        self._disk.write("prepare_commit")
        return self._real.transaction_prepare_commit()


class SimLocalDb(LocalDb):
    """`LocalDb` with a small hash table, writing through the node's `Disk`,
    whose chains clients of other processes may hold (`others`)."""

    #: state directory of a simulated node -> its disk
    disks: ClassVar[dict[Path, Disk]] = {}
    #: Clients holding chains here are simulated (`others`), not processes a
    #: helper could queue behind: waits poll.
    queueable = False

    def __init__(self, path: Path, *, persistent: bool, hash_size: int = SIM_HASH_SIZE) -> None:
        super().__init__(path, persistent=persistent, hash_size=hash_size)
        # <state dir>/<kind>/<name>.<pnn>
        disk = self.disks.get(path.parent.parent)
        if disk is not None:
            self._tdb = _FaultyTdb(self._tdb, disk)
        #: the chains this node holds now, so that no other process takes one
        self.own_chains: Counter[bytes] = Counter()
        #: the chains clients of other processes hold in this file (None: every
        #: chain, as a traverse holds them); a node that restarts opens a new
        #: file, which they do not hold
        self.others: Counter[bytes | None] = Counter()

    def held_elsewhere(self, key: bytes | None) -> bool:
        """Another process holds `key`'s chain (None: any chain of this file)."""
        others = self.others
        if not others:
            return False
        return key is None or key in others or None in others

    def try_lock_chain(self, key: bytes) -> bool:
        if self.held_elsewhere(key) or not super().try_lock_chain(key):
            return False
        self.own_chains[key] += 1
        return True

    def unlock_chain(self, key: bytes) -> None:
        super().unlock_chain(key)
        self.own_chains[key] -= 1
        if self.own_chains[key] <= 0:
            del self.own_chains[key]

    def try_lock_all(self) -> bool:
        if not self.whole_locked and self.held_elsewhere(None):
            return False
        return super().try_lock_all()


@contextlib.contextmanager
def simulated_storage() -> Iterator[None]:
    """Make every database a node opens meanwhile a `SimLocalDb`."""
    original = database.LocalDb
    database.LocalDb = SimLocalDb  # type: ignore[misc]
    try:
        yield
    finally:
        database.LocalDb = original  # type: ignore[misc]
