"""A process that waits in a record's chain lock queue for the daemon, as CTDB's lock helper does.

The daemon never waits for a chain lock itself: a client may hold the lock
while it waits for the daemon (`chainlocks`). So it polls, and a poll loses
to every client already blocked on the lock: when the holder lets go, the
kernel wakes one of them, which finds the record as the daemon left it.
Mostly that is harmless, but not when the daemon is taking a record back
from Samba's clients because the others may soon go on without this node
(its lease ends, a minority view, a resync): a `ctdb pfetch` that queued
behind a client holding the lent g_lock then read this node's persistent
copy in place after the others had committed past it
(`tests/test_samba_queued_take_back.py`).

So a wait that lasts (`ctdb.engines.chains.wait_in_queue`) starts this
helper: it opens the file, blocks in `tdb_chainlock` (in the queue, ahead
of whoever comes later), says "locked" and holds the lock until its input
ends. Meanwhile the daemon marks the chain as held on its own handle
(`ChainLocks.hold_for`, libtdb's `tdb_chainlock_mark`) and works on the
record as under its own lock; its unlock ends the helper's input. A helper
killed while it holds the lock leaves a robust mutex that the next locker
recovers (libtdb handles EOWNERDEAD).

Run as `python -m ctdb.storage.chain_helper PATH FLAGS KEYHEX`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import tdb

from ctdb.storage.chainlocks import blocking_chainlock

#: What the helper prints once it holds the lock.
LOCKED = "locked"


def main(argv: list[str]) -> int:
    path, flags, key = Path(argv[0]), int(argv[1]), bytes.fromhex(argv[2])
    try:
        handle = tdb.Tdb(str(path), 0, flags, os.O_RDWR)
    except (OSError, RuntimeError) as exc:
        print(f"cannot open {path}: {exc}", flush=True)
        return 1
    with blocking_chainlock(handle, path, key) as held:
        if not held:
            print(f"tdb_chainlock on {path} failed", flush=True)
            return 1
        print(LOCKED, flush=True)
        sys.stdin.read()  # until the daemon lets go (or dies)
    handle.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
