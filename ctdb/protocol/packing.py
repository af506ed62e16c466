"""msgpack out: the client frames and node messages we send are packed here.

`msgpack.packb` makes a new `Packer` for each call, which allocates a
256 KiB buffer: three quarters of the cost of packing a node message (1.7 µs
against 0.5 µs with a packer kept, measured), and a migration step packs
five. So each thread keeps one packer (a packer is not thread-safe, and
recovery packs in worker threads). A packer's buffer grows to the largest
object it packed and never shrinks, so one that packed something large is
dropped rather than kept holding a recovery's worth of memory.
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack

#: A packer that made more bytes than this is not kept (its buffer grew).
KEEP_BELOW = 256 * 1024

_local = threading.local()


def pack(obj: Any) -> bytes:
    """`obj` as msgpack (bytes as bin, str as str); TypeError for what msgpack cannot pack."""
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    try:
        data: bytes = packer.pack(obj)
    except BaseException:  # its buffer may have grown before the error
        _local.packer = None
        raise
    if len(data) >= KEEP_BELOW:
        _local.packer = None
    return data
