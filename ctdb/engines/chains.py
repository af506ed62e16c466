"""Engine work on records Samba's clients share: under their chain lock, never waiting.

A volatile database's file is shared with Samba's clients (smbd, the `ctdb`
tool, CTDB's test programs), which lock a record's hash chain and write the
record in place while this node is its dmaster. The engine must read,
decide and write such a record under the same lock, or a client's write
could land between its read and its write and be lost (a hand-over would
carry the old value away). And it must never wait for the lock on the event
loop: a client may hold it while it waits for this very daemon (ctdb's
`deletekey` waits for SCHEDULE_FOR_DELETION's reply under the lock; smbd
asks for one record while holding another), and python-tdb blocks holding
the GIL. As ctdbd does (`ctdb_ltdb_lock_requeue`), a busy chain requeues
the work and tries again a few milliseconds later.

Work for one record runs in the order it came, also when some of it had to
wait: a hand-over message waiting for the chain holds back the messages
about the same record that follow it (the migration's reasoning relies on
each link being FIFO), and nothing else.

Persistent and replicated files are not written in place by clients (their
writes go through transactions), so their work runs at once; so does the
work on a volatile file that no Samba client has attached (`Database.shared`):
nobody else takes its locks, and each lock is a few microseconds of ctypes.

A retry touches the file only while the node is in a generation (`ready`):
during a recovery the handles belong to its bulk work, which runs in
another thread (TDB handles are not thread-safe), and work that waited
belongs to the generation the recovery ends anyway.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import subprocess
import sys
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ctdb.common.errors import CtdbError
from ctdb.engines.host import Cancellable, Clock
from ctdb.storage.chain_helper import LOCKED
from ctdb.storage.database import Database
from ctdb.storage.ltdb import LocalDb

log = logging.getLogger("ctdb.engines.chains")

#: How often work that waits for a client's chain lock tries again, in
#: seconds. Clients hold chain locks for microseconds unless they wait for
#: something, but a client in a loop takes the lock again at once: CTDB's
#: `transaction_loop` on three nodes (g_lock pollers holding the record's
#: chain across a PROCESS_EXISTS) made 13-34 commits in 4 s when retries
#: backed off to 50 ms, 49-72 at a steady 2 ms. A retry is one non-blocking
#: lock call, so polling costs next to nothing while it lasts.
RETRY = 0.002
#: where the `ctdb` package is, for a chain helper's `python -m`
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
#: How long `wait_in_queue` polls before it starts a helper, in seconds.
QUEUE_AFTER = 0.02
#: At most this many chain helpers at once (waiting, or let go and not yet
#: reaped); past it a wait polls, as before helpers.
MAX_HELPERS = 16


async def poll(take: Callable[[], bool], deadline: float) -> bool:
    """Call `take` every RETRY seconds until it succeeds (True) or `deadline`
    (loop time) passes (False)."""
    loop = asyncio.get_running_loop()
    while not take():
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(RETRY, remaining))
    return True


async def wait_in_queue(local: LocalDb, key: bytes, deadline: float) -> bool:
    """`key`'s chain held by us, taken in the lock's queue rather than polled
    for, so that clients who come later do not get it first: a helper
    process blocks in the lock for us (`ctdb.storage.chain_helper`).
    True once held (release it with `local.unlock_chain` before the next
    await), False at `deadline`. For taking records back from Samba's
    clients when the others may go on without this node."""
    loop = asyncio.get_running_loop()
    take = functools.partial(local.try_lock_chain, key)
    # Most holds last microseconds: a helper (a process) only for one that lasts.
    if await poll(take, min(deadline, loop.time() + QUEUE_AFTER)):
        return True
    if loop.time() >= deadline:
        return False
    _HELPERS.reap()
    if not local.queueable or _HELPERS.busy() >= MAX_HELPERS:
        return await poll(take, deadline)
    try:
        helper = subprocess.Popen(
            [sys.executable, "-m", "ctdb.storage.chain_helper"]
            + [str(local.path), str(local.tdb_flags), key.hex()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": _PACKAGE_ROOT},
        )
    except OSError as exc:
        log.warning("cannot start a chain helper: %s", exc)
        return await poll(take, deadline)
    _HELPERS.waiting += 1
    handed_over = False
    try:
        said = await _first_line(helper, deadline)
        if said is None:
            return False
        if said != LOCKED:
            # The helper could not wait for us (it says why): poll instead.
            log.warning("chain helper for %s: %s", local.path, said)
            return await poll(take, deadline)
        local.chains.hold_for(key, lambda: _HELPERS.let_go(helper))
        handed_over = True
        return True
    finally:
        _HELPERS.waiting -= 1
        if not handed_over:
            _HELPERS.let_go(helper, kill=True)


async def _first_line(helper: subprocess.Popen[bytes], deadline: float) -> str | None:
    """The helper's first line, once it has said it (None at `deadline`): read
    when its pipe is readable, never blocking the loop."""
    assert helper.stdout is not None
    loop = asyncio.get_running_loop()
    fd = helper.stdout.fileno()
    said: asyncio.Future[str] = loop.create_future()
    got = bytearray()

    def readable() -> None:
        chunk = os.read(fd, 256)
        got.extend(chunk)
        if (not chunk or b"\n" in got) and not said.done():
            loop.remove_reader(fd)
            said.set_result(got.split(b"\n")[0].decode(errors="replace").strip())

    loop.add_reader(fd, readable)
    try:
        timeout = None if deadline == math.inf else max(deadline - loop.time(), 0.0)
        return await asyncio.wait_for(said, timeout)
    except TimeoutError:
        return None
    finally:
        loop.remove_reader(fd)


@dataclass
class _Helpers:
    """This process's chain helpers: how many wait in a queue, and the ones
    let go that have yet to exit and be reaped."""

    waiting: int = 0
    ended: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def busy(self) -> int:
        return self.waiting + len(self.ended)

    def let_go(self, helper: subprocess.Popen[bytes], *, kill: bool = False) -> None:
        """End a helper: its input ends, so it unlocks and exits (killed if
        it may still be waiting in the queue); reaped later."""
        if kill and helper.poll() is None:
            helper.kill()
        for pipe in (helper.stdin, helper.stdout):
            if pipe is not None:
                pipe.close()
        self.ended.append(helper)

    def reap(self) -> None:
        self.ended = [helper for helper in self.ended if helper.poll() is None]


_HELPERS = _Helpers()


def try_hold(db: Database, key: bytes) -> bool:
    """Take `key`'s chain lock now unless a client holds it (False); a file
    clients do not share has nothing to take. Release it with `release`
    before the next `await`."""
    return not db.shared or db.local.try_lock_chain(key)


def release(db: Database, key: bytes) -> None:
    """End what `try_hold` began, or a driver's wait for an `effects.Chain`."""
    if db.shared:
        db.local.unlock_chain(key)


class ChainGate:
    """Runs work on shared records under their chain lock, requeued while a client holds it."""

    def __init__(
        self,
        stats: Counter[str],
        ready: Callable[[], bool],
        failed: Callable[[], None],
        clock: Clock,
    ) -> None:
        #: the node's counters: "chain_waits" counts work that found a chain held
        self.stats = stats
        #: whether the files may be touched now (not during a recovery)
        self.ready = ready
        #: requeued work raised (a write failed half-way): the node's copies are suspect
        self.failed = failed
        #: work that waits for a chain, by record, in arrival order
        self._waiting: dict[tuple[int, bytes], deque[Callable[[], None]]] = {}
        self.clock = clock
        self._timers: dict[tuple[int, bytes], Cancellable] = {}

    def waiting(self) -> int:
        """Records whose work waits for a client to release a chain lock."""
        return len(self._waiting)

    def run(self, db: Database, key: bytes, work: Callable[[], None]) -> None:
        """Run `work` holding `key`'s chain lock: now, or once no client holds it,
        after the work for the same record that waits already."""
        if not db.shared:
            work()
            return
        ref = (db.id, key)
        queue = self._waiting.get(ref)
        if queue is not None:
            queue.append(work)
            return
        if db.local.try_lock_chain(key):
            try:
                work()
            finally:
                db.local.unlock_chain(key)
            return
        self._waiting[ref] = deque([work])
        self.stats["chain_waits"] += 1
        self._later(db, key)

    def _later(self, db: Database, key: bytes) -> None:
        self._timers[(db.id, key)] = self.clock.call_later(RETRY, self._retry, db, key)

    def _retry(self, db: Database, key: bytes) -> None:
        ref = (db.id, key)
        self._timers.pop(ref, None)
        queue = self._waiting[ref]
        try:
            if not self.ready() or not db.local.try_lock_chain(key):
                self._later(db, key)
                return
        except CtdbError as exc:  # the file closed under us (the node stops)
            log.info("dropping %d requests on %r: %s", len(queue), key, exc.message)
            del self._waiting[ref]
            return
        try:
            while queue:  # work it queues for the same record runs here too
                work = queue.popleft()
                try:
                    work()
                except Exception:
                    log.exception("requeued work on record %r failed", key)
                    self.failed()
        finally:
            db.local.unlock_chain(key)
            del self._waiting[ref]

    def close(self) -> None:
        """The node stops: forget the work that waits."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._waiting.clear()
