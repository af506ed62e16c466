"""Where things live: database ids and record lmasters (pure functions).

Every node must compute the same answers from the same vnnmap, so these are
deterministic and independent of Python's per-process hash seed.
"""

from __future__ import annotations

import zlib


def db_id(name: str) -> int:
    """A database's cluster-wide id, derived from its name as CTDB does."""
    return zlib.crc32(name.encode()) & 0xFFFFFFFF


def lmaster(key: bytes, vnnmap: list[int]) -> int:
    """The node that always knows who holds `key` (its location master)."""
    return vnnmap[zlib.crc32(key) % len(vnnmap)]
