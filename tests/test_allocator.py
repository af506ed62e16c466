"""ctdbd's heap settings take effect: large blocks from the heap, free space kept at its top.

Each check runs in a fresh interpreter: the settings are process-wide, and the
control run without them shows what the check would see if they were lost.
"""

from __future__ import annotations

import json
import subprocess
import sys

from ctdb.common.allocator import MMAP_THRESHOLD, TOP_PAD

PROBE = r"""
import ctypes, ctypes.util, json, sys

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
applied = None
if sys.argv[1] == "steady":
    from ctdb.common.allocator import steady_heap
    applied = steady_heap()
before = libc.mallinfo2().hblks
block = libc.malloc(2 * 1024 * 1024)
mapped = libc.mallinfo2().hblks - before
libc.free(block)
print(json.dumps({"applied": applied, "mapped": mapped, "keep": libc.mallinfo2().keepcost}))
"""


def probe(mode: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)


def test_steady_heap_serves_large_blocks_from_the_heap_and_keeps_its_top() -> None:
    steady = probe("steady")
    assert steady["applied"] is True
    assert steady["mapped"] == 0  # 2 MiB < MMAP_THRESHOLD: no mmap of its own
    assert isinstance(steady["keep"], int) and steady["keep"] >= TOP_PAD  # top kept, not trimmed
    assert 2 * 1024 * 1024 < MMAP_THRESHOLD  # what the probe relies on


def test_without_it_glibc_maps_the_same_block_and_trims_its_top() -> None:
    """The control: the probe tells the two apart."""
    default = probe("default")
    assert default["mapped"] == 1
    assert isinstance(default["keep"], int) and default["keep"] < TOP_PAD
