"""Recovery decisions as pure functions of what the nodes reported.

Kept apart from the recovery driver so that the rules that protect data (the
newest copy wins, a delete stays a delete, persistent data comes from the
most advanced node) can be tested exhaustively without a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ctdb.storage.ltdb import Record

#: A pulled record on the wire: [key, rsn, dmaster, value].
WireRecord = list


def to_wire(items: Iterable[tuple[bytes, Record]]) -> list[WireRecord]:
    return [[key, rec.rsn, rec.dmaster, rec.value] for key, rec in items]


def from_wire(records: Iterable[WireRecord]) -> dict[bytes, Record]:
    return {bytes(k): Record(int(rsn), int(dm), bytes(v)) for k, rsn, dm, v in records}


def merge_volatile(copies: Mapping[int, Mapping[bytes, Record]]) -> dict[bytes, Record]:
    """One authoritative copy per key, taken from the pulled copies of every node.

    The highest RSN wins: every migration and every update bumps it, so it is
    the newest version, and a deletion (an empty value with a higher RSN)
    beats the value it deleted. RSNs carry the epoch of the recovery they
    were written after in their high bits, so this holds across nodes that
    missed recoveries too: a copy a partitioned node kept cannot outrank a
    version the others wrote after recovering without it, and where nobody
    wrote since, its copy is the newest acknowledged one and comes back.
    Among equal RSNs the node that believed itself dmaster wins, then the
    lowest pnn, so every run decides alike. The winner's holder stays
    dmaster.
    """
    best: dict[bytes, tuple[int, int, int, Record]] = {}
    for pnn in sorted(copies):
        for key, rec in copies[pnn].items():
            rank = (rec.rsn, 1 if rec.dmaster == pnn else 0, -pnn)
            old = best.get(key)
            if old is None or rank > old[:3]:
                best[key] = (*rank, rec)
    merged = {}
    for key, (_rsn, _own, neg_pnn, rec) in best.items():
        merged[key] = Record(rec.rsn, -neg_pnn, rec.value)
    return merged


def persistent_source(seqnums: Mapping[int, int]) -> int:
    """The node whose persistent copy recovery distributes: highest sequence number.

    Called with the nodes that served the latest epoch only
    (`newest_epoch_members` of each node's durable *thawed* epoch). Why that
    copy holds every acknowledged commit, whatever restarted:

    * A recovery pushes one copy to every member, stores the new epoch on
      each, then thaws them; a member stores the epoch it thaws in durably
      (`ctdb.storage.durable.Epochs.thaw`). A member's thawed epoch E
      certifies: "my copy is the one recovery E distributed, plus the commits
      I applied since".
    * A commit in epoch E is acknowledged only after every member of E's
      vnnmap committed it (fsync'd), and only once they all thawed in E. Every
      node that thawed in E is such a member, so each of them holds every
      commit acknowledged in epoch E, in the order the leader serialised
      them; they differ at most by the last, unacknowledged commit, which the
      highest sequence number settles (all-or-nothing becomes all).
    * Thawed, not stored: a leader stopped in the middle of its recovery may
      have stored that recovery's epoch on some members (itself) and not
      thawed them, while the others, meanwhile, recovered and served a
      generation they numbered the same (tcp seed 3244027: a hung leader's
      own stored epoch 3 beside the others' served 3, all at sequence number
      8, and its copy without their last acknowledged commit was taken). Two
      served generations never share a number: each recovery numbers above
      the epochs its members stored, and the members of two quorate
      generations overlap.
    * A node with an older thawed epoch missed a recovery, and any commits
      after it: its sequence number means nothing next to the others' (it may
      even hold a commit nobody acknowledged at a number the others also
      reached), so it is not asked. A node that crashed and restarted keeps
      its thawed epoch and its fsync'd file, so it still counts; one that was
      hung (SIGSTOP) while the others recovered has an older one, however long
      it slept.
    """
    return max(sorted(seqnums), key=lambda pnn: seqnums[pnn])


def freshest_copy(marks: Mapping[int, tuple[int, bool, int, int]], *, replicated: bool) -> int:
    """vs: when no member is in sync, whose copy a database is taken from.

    A mark is (epoch, sound, position, sequence number). A member's epoch
    grows with every quorate view it went through in sync, so the highest
    epoch followed the stream longest. Two copies of one epoch followed one
    history: a round's epoch is adopted only once every member of its view
    numbered it, so no later round numbers it again (vs seed 1009198: a
    member that adopted an epoch only it had numbered offered a stale copy
    under the number a later round gave another history, and won). A
    member whose local write failed
    (not sound) left the group without the operation it could not apply,
    which the others then acknowledged, and its files may have lost more: at
    the same epoch a sound copy is taken first. Among those, the position
    (operations applied in sync since the epoch began) decides: members of
    one epoch applied prefixes of one total order, so the longest prefix
    holds every write any of them applied. That matters for what was
    acknowledged before it was stable (a volatile write with
    StableVolatileWrites=0, acknowledged on its origin's delivery): members
    stalled by Samba's clients, which left to resync, hold less of the
    epoch than the origin (tools.simulate, vs seed 40044864, took a stalled
    member's copy when only the epoch and the sequence number counted, and
    a volatile write does not move the sequence number). The sequence
    number, then the lowest pnn, settle the rest.

    Except in a replicated (persistent) database, where every write is a
    transaction that moves the sequence number, durably, or changes
    nothing: a copy of the epoch, damaged or not, holds a prefix of its
    commits, and the highest sequence number the longest. It decides right
    after the epoch there, before the position, which a restart sets back
    to 0 (vs seed 1040214: a member restarted in the epoch, holding an
    acknowledged commit at sequence number 9, lost to one that had applied
    more of the epoch before it stopped, at 8), and before soundness (vs
    seed 1097342: a member expelled early in the epoch, sound, at 4 won
    over one whose writes failed after it had applied two more commits,
    one acknowledged). A restarted member's volatile copies are gone.
    """

    def rank(pnn: int) -> tuple[int, ...]:
        epoch, sound, position, seqnum = marks[pnn]
        if replicated:
            return (epoch, seqnum, sound, position)
        return (epoch, sound, position, seqnum)

    return max(sorted(marks), key=rank)


def newest_epoch_members(epochs: Mapping[int, int]) -> list[int]:
    """Nodes that took part in the latest recovery; only their persistent copies count.

    A node that rejoins after missing a recovery (unbanned, continued after a
    hang, healed from a partition) may lack commits the others acknowledged
    meanwhile (see `persistent_source`). Epochs are durable, so a node that
    merely restarted is still current.
    """
    top = max(epochs.values())
    return sorted(p for p, e in epochs.items() if e == top)


#: What identifies a persistent copy: (sequence number, history digest).
Mark = tuple[int, bytes]


def same_copy(mine: Mark, source: Mark) -> bool:
    """True if a copy certainly equals the source's, so nothing must be sent.

    The history digest is chained over the writes of every commit (see
    `Database.history_record`) and travels with the copy when recovery
    pushes it, so equal marks mean the same commits applied in the same
    order to the same start, whatever happened to the node in between (a
    restart, a hang, a missed recovery). Only an empty database has no
    history to compare.
    """
    seqnum, history = mine
    return mine == source and (bool(history) or seqnum == 0)


def persistent_targets(marks: Mapping[int, Mark], source: int) -> list[int]:
    """Members that need the source's persistent copy pushed to them (the whole copy).

    A forced recover, the loss of a node, or the restart of one that missed
    no commit therefore move no persistent data at all.
    """
    return sorted(p for p in marks if p != source and not same_copy(marks[p], marks[source]))


@dataclass(frozen=True)
class VolatilePlan:
    """How one volatile database is merged without moving what nobody changed.

    Every member that received the previous recovery's copy (`base`) and
    kept track since holds that copy plus the keys it changed: `holders`
    name those keys (written or removed) and each sends its copy of every
    key any holder named, since holders may differ there. The others
    (restarted, rejoining, wiped) send everything they have; for a key only
    they have, `provider`, a holder, adds its copy, which stands for the
    unchanged base copy of that key on all holders. Holders then receive
    the merged keys only; the others the provider's whole database once the
    merge is applied to it.
    Without any holder (first recovery, whole cluster restarted) everybody
    sends and receives everything.
    """

    base: tuple[int, int] | None
    holders: list[int]
    others: list[int]
    provider: int | None


def volatile_plan(bases: Mapping[int, tuple[int, int] | None], leader: int) -> VolatilePlan:
    known = [b for b in bases.values() if b is not None]
    if not known:
        return VolatilePlan(None, [], sorted(bases), None)
    base = max(known)  # the latest recovery's copy
    holders = sorted(p for p, b in bases.items() if b == base)
    others = sorted(p for p in bases if p not in holders)
    return VolatilePlan(base, holders, others, leader if leader in holders else holders[0])
