"""Where things live: database ids and record lmasters (pure functions).

Every node must compute the same answers from the same vnnmap, so these are
deterministic and independent of Python's per-process hash seed.
"""

from __future__ import annotations

import zlib
from functools import lru_cache

_MASK = 0xFFFFFFFF


@lru_cache(maxsize=1024)
def db_id(name: str) -> int:
    """A database's cluster-wide id, as CTDB derives it: tdb's Jenkins hash of
    the name with its trailing NUL (so Samba's tools see the ids ctdbd gives).

    Cached: every client request names its database, and the hash in pure
    Python cost about a tenth of the daemon's CPU per local fetch. Bounded,
    since clients may send any names.
    """
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


#: lookup3's rotations; step i changes word i mod 3 (a, b, c) using the word before it
_MIX_ROTATIONS = (4, 6, 8, 16, 19, 4)
#: `final` steps on c, a, b, c, a, b, c, each using the word before it
_FINAL_ROTATIONS = (14, 11, 25, 16, 4, 14, 24)


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    """x -= s; x ^= rot(s, r); s += next, for x = a, b, c, a, b, c (s: the word before x)."""
    w = [a, b, c]
    for i, r in enumerate(_MIX_ROTATIONS):
        x, s = i % 3, (i + 2) % 3
        w[x] = ((w[x] - w[s]) & _MASK) ^ _rot(w[s], r)
        w[s] = (w[s] + w[(i + 1) % 3]) & _MASK
    return w[0], w[1], w[2]


def _final(a: int, b: int, c: int) -> int:
    """x ^= s; x -= rot(s, r), for x = c, a, b, c, a, b, c (s: the word before x)."""
    w = [a, b, c]
    for i, r in enumerate(_FINAL_ROTATIONS):
        x = (i + 2) % 3
        s = (x + 2) % 3
        w[x] = ((w[x] ^ w[s]) - _rot(w[s], r)) & _MASK
    return w[2]
