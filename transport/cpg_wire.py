"""What the members of a CPG group send each other and agree on.

Why a module of its own: the I/O shell (`transport.cpg_connection`) writes
these messages and the pure state machine (`transport.cpg_group`) reads
them, so their vocabulary lives apart from both: the header every message
carries and the message kinds, how members are named, the events corosync's
callbacks report, and the agreed state that a joiner receives as its
snapshot (STATE).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

# Wire header of every CPG message: kind, flags, logical id, destination pnn.
HDR = struct.Struct("<BBHi")
K_HELLO, K_DATA, K_STATE, K_BYE, K_MERGE, K_ALIVE, K_EXPEL, K_FOUND = 1, 2, 3, 4, 5, 6, 7, 8
F_MORE = 1  # more fragments of this message follow
#: a DATA message that holds several, sent in one loop turn: each is its
#: ITEM header (destination pnn, length) and its payload. One CPG message
#: instead of several costs the sender one call into corosync, corosync one
#: message to order and hand to every member, and every member one dispatch.
F_BATCH = 2
ITEM = struct.Struct("<iI")
#: ALIVE's payload: the silence (seconds) after which its sender expels a
#: member, which the others' leases depend on (`CpgStream.confirmed_until`)
SILENCE = struct.Struct("<d")
BROADCAST = -1

Member = tuple[int, int]  # CPG member: (nodeid, pid)
Logical = tuple[int, int, int]  # logical member: (nodeid, pid, lid)

# Events as the CPG callbacks report them (the group is the connection's).
# (members, left, joined, joined by a partition merge: reason NODEUP)
Confchg = tuple[list[Member], list[Member], list[Member], list[Member]]
# (sender, message)
Deliver = tuple[Member, bytes]
Event = Confchg | Deliver


@dataclass
class Agreed:
    """What every synced member agrees on at a given stream position."""

    members: dict[Logical, int] = field(default_factory=dict)  # -> pnn
    view_id: int = 0
    view: tuple[int, ...] = ()
    synced: set[Member] = field(default_factory=set)
    # joiner -> snapshot at its join position, until its STATE is delivered
    pending: dict[Member, dict[str, Any]] = field(default_factory=dict)
    # processes expelled for silence, until corosync reports that they left
    expelled: set[Member] = field(default_factory=set)
    # the silence after which each process expels another, as its HELLO or
    # latest ALIVE said (the members' leases depend on the shortest)
    silences: dict[Member, float] = field(default_factory=dict)
    #: how many merges of each set of processes this state has seen (see
    #: `transport.cpg_group`: a MERGE names the merge it answers). One entry
    #: per partition merge, kept for good: a process of the set may come
    #: back from a partition with its count, so no side can drop it alone;
    #: merges are rare, an entry is a few hundred bytes.
    merges: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        """A msgpack-able copy; pending joiners' snapshots are nested one level deep."""
        return {
            "members": [[n, p, lid, pnn] for (n, p, lid), pnn in sorted(self.members.items())],
            "view_id": self.view_id,
            "view": list(self.view),
            "synced": [list(m) for m in sorted(self.synced)],
            "pending": [[list(m), {**s, "pending": []}] for m, s in sorted(self.pending.items())],
            "expelled": [list(m) for m in sorted(self.expelled)],
            "silences": [[n, p, s] for (n, p), s in sorted(self.silences.items())],
            "merges": [[key, n] for key, n in sorted(self.merges.items())],
        }

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> Agreed:
        return cls(
            members={(n, p, lid): pnn for n, p, lid, pnn in snap["members"]},
            view_id=snap["view_id"],
            view=tuple(snap["view"]),
            synced={(m[0], m[1]) for m in snap["synced"]},
            pending={(m[0], m[1]): s for m, s in snap["pending"]},
            expelled={(m[0], m[1]) for m in snap["expelled"]},
            silences={(n, p): s for n, p, s in snap.get("silences", [])},
            merges={str(key): int(n) for key, n in snap.get("merges", [])},
        )


def batch_message(lid: int, items: list[tuple[int, bytes]]) -> bytes:
    """One DATA message of logical member `lid` holding `items`, (destination,
    payload) in order (`batch_items` reads them back)."""
    parts = [HDR.pack(K_DATA, F_BATCH, lid, BROADCAST)]
    for dest, payload in items:
        parts += (ITEM.pack(dest, len(payload)), payload)
    return b"".join(parts)


def batch_items(payload: bytes) -> list[tuple[int, bytes]]:
    """The (destination, payload) pairs of an F_BATCH message's payload, in
    order; a malformed tail (none of our processes sends one) is dropped,
    alike on every member, since every member reads the same bytes."""
    items: list[tuple[int, bytes]] = []
    off, end = 0, len(payload)
    while off + ITEM.size <= end:
        dest, n = ITEM.unpack_from(payload, off)
        off += ITEM.size
        if off + n > end:
            break
        items.append((dest, payload[off : off + n]))
        off += n
    return items
