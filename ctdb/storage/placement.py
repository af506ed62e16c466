"""Where things live: database ids and record lmasters (pure functions).

Every node must compute the same answers from the same vnnmap, so these are
deterministic and independent of Python's per-process hash seed.
"""

from __future__ import annotations

import zlib

_MASK = 0xFFFFFFFF


def db_id(name: str) -> int:
    """A database's cluster-wide id, as CTDB derives it: tdb's Jenkins hash of
    the name with its trailing NUL (so Samba's tools see the ids ctdbd gives)."""
    return jenkins_hash(name.encode() + b"\0")


def lmaster(key: bytes, vnnmap: list[int]) -> int:
    """The node that always knows who holds `key` (its location master).

    CTDB hashes the key with Jenkins' hash here too; this is crc32, which no
    client sees (only the daemons place records), and changing it would move
    every simulated schedule.
    """
    return vnnmap[zlib.crc32(key) % len(vnnmap)]


def jenkins_hash(data: bytes) -> int:
    """Bob Jenkins' lookup3 `hashlittle` with initval 0: tdb's `tdb_jenkins_hash`."""
    a = b = c = (0xDEADBEEF + len(data)) & _MASK
    rest = data
    while len(rest) > 12:
        a = (a + int.from_bytes(rest[0:4], "little")) & _MASK
        b = (b + int.from_bytes(rest[4:8], "little")) & _MASK
        c = (c + int.from_bytes(rest[8:12], "little")) & _MASK
        a, b, c = _mix(a, b, c)
        rest = rest[12:]
    if not rest:
        return c
    tail = rest.ljust(12, b"\0")
    a = (a + int.from_bytes(tail[0:4], "little")) & _MASK
    b = (b + int.from_bytes(tail[4:8], "little")) & _MASK
    c = (c + int.from_bytes(tail[8:12], "little")) & _MASK
    return _final(a, b, c)


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = ((a - c) & _MASK) ^ _rot(c, 4)
    c = (c + b) & _MASK
    b = ((b - a) & _MASK) ^ _rot(a, 6)
    a = (a + c) & _MASK
    c = ((c - b) & _MASK) ^ _rot(b, 8)
    b = (b + a) & _MASK
    a = ((a - c) & _MASK) ^ _rot(c, 16)
    c = (c + b) & _MASK
    b = ((b - a) & _MASK) ^ _rot(a, 19)
    a = (a + c) & _MASK
    c = ((c - b) & _MASK) ^ _rot(b, 4)
    b = (b + a) & _MASK
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    c = ((c ^ b) - _rot(b, 14)) & _MASK
    a = ((a ^ c) - _rot(c, 11)) & _MASK
    b = ((b ^ a) - _rot(a, 25)) & _MASK
    c = ((c ^ b) - _rot(b, 16)) & _MASK
    a = ((a ^ c) - _rot(c, 4)) & _MASK
    b = ((b ^ a) - _rot(a, 14)) & _MASK
    c = ((c ^ b) - _rot(b, 24)) & _MASK
    return c
