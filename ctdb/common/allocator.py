"""Steady heap behaviour for processes that move large frames: glibc's `mallopt`.

Why: glibc hands memory at the top of the heap back to the kernel whenever
more than a (dynamically adjusted) threshold of it is free, and serves large
blocks with a fresh `mmap` each. A process that reads a socket in 256 KiB
chunks and frees each frame right after delivering it (a node receiving a
recovery push, a stream of 64 KiB records) can land in a pattern where
nearly every read shrinks and regrows the heap, so each read pays page faults
and the kernel zeroing fresh pages. Whether it lands there depends on what
else happens to sit at the top of the heap, which is why the same code ran
three to five times slower after an unrelated change (a class moved to
another module) and fast again under strace.

Measured with `python -m bench.transports --only raw,tcp --sizes 65536,1048576`
(2 CPUs): 64 KiB frames 9.7k -> 48.7k msg/s on the tcp transport and
16.3k -> 53.0k on a bare socket; 1 MiB frames 1.3k -> 5.2k msg/s.

What it costs: up to `TOP_PAD` bytes of free memory kept at the top of the
heap, and blocks below `MMAP_THRESHOLD` served from the heap, where a freed
one that is not at the top stays in the process for reuse instead of going
back to the kernel at once.
"""

from __future__ import annotations

import ctypes
import ctypes.util

#: Free bytes glibc keeps at the top of the heap when it grows or trims it.
TOP_PAD = 4 * 1024 * 1024
#: Blocks from this size up get an `mmap` of their own (the default is 128 KiB, raised by glibc
#: on its own as big blocks are freed; a fixed value keeps the behaviour from depending on history).
MMAP_THRESHOLD = 32 * 1024 * 1024

_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def steady_heap() -> bool:
    """Set glibc's heap parameters once, at process start; False where there is no glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # musl, or not a C library we know
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_TOP_PAD, TOP_PAD)) and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
