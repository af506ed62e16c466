"""How a node tells the clients that use its records in place until when they may.

A client of a tcp cluster reads and writes the records this node is
dmaster of in the node's own TDB file, under the record's chain lock
(`ctdb.client.in_place`), as Samba's clients do. The chain locks keep it
apart from the daemon and from recovery (a frozen daemon holds every chain),
but not from a daemon that has stopped serving without freezing: a daemon
cut off from the others, or stopped, whose lease ran out
(`ctdb.server.lease`) while the rest of the cluster recovers without it.
Its clients must stop with it, so the daemon publishes, in a small file
of its state directory, the moment its lease ends (0 while it does not
serve) and the epoch that new record versions are stamped with; a client
checks both under the chain lock before it uses a record.

The block is 32 bytes, host byte order, read and written through mmap:

    seq u64 | until f64 | epoch u64 | run u64

`until` is in CLOCK_MONOTONIC seconds (`time.monotonic`), which every
process of the host shares. `run` numbers the daemon's runs: a daemon
that restarted recreated its volatile files, so a client that sees a new
run opens them again. `seq` is a sequence lock: odd while the daemon
writes, so a reader that sees it odd or changed reads again.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

#: anything mapped or in memory: the daemon writes through mmap, tests use a bytearray
Buffer = bytearray | memoryview | mmap.mmap

BLOCK = struct.Struct("=QdQQ")
SIZE = BLOCK.size
_SEQ = struct.Struct("=Q")


@dataclass(frozen=True, slots=True)
class ServingState:
    #: CLOCK_MONOTONIC second at which the node's lease ends (0: not serving)
    until: float
    #: the epoch new record versions are stamped with (RSN = max(old + 1, epoch << 32))
    epoch: int
    #: which run of the daemon published it
    run: int


NOT_SERVING = ServingState(0.0, 0, 0)


def write(buf: Buffer, state: ServingState) -> None:
    """Publish `state` into `buf` (one writer only)."""
    (seq,) = _SEQ.unpack_from(buf)
    seq |= 1  # odd: being written (also after a writer that died mid-way)
    _SEQ.pack_into(buf, 0, seq)
    BLOCK.pack_into(buf, 0, seq, state.until, state.epoch, state.run)
    _SEQ.pack_into(buf, 0, seq + 1)


def read(buf: Buffer, tries: int = 100) -> ServingState:
    """The state last published in `buf`; NOT_SERVING if no steady copy was read."""
    for _ in range(tries):
        seq, until, epoch, run = BLOCK.unpack_from(buf)
        if seq & 1 or _SEQ.unpack_from(buf)[0] != seq:
            continue
        return ServingState(until, epoch, run)
    return NOT_SERVING
