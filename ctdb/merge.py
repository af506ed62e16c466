"""Recovery decisions as pure functions of what the nodes reported.

Kept apart from the recovery driver so that the rules that protect data (the
newest copy wins, a delete stays a delete, persistent data comes from the
most advanced node) can be tested exhaustively without a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ctdb.ltdb import Record

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
    beats the value it deleted. Among equal RSNs the node that believed itself
    dmaster wins, then the lowest pnn, so every run decides alike. The
    winner's holder stays dmaster: a record locked by a client there keeps
    its lock across the recovery.
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

    A commit is acknowledged only after every active node applied it, so the
    highest sequence number holds every acknowledged transaction.
    """
    return max(sorted(seqnums), key=lambda pnn: seqnums[pnn])


def newest_epoch_members(epochs: Mapping[int, int]) -> list[int]:
    """Nodes that took part in the latest recovery; only their volatile data counts.

    A node that rejoins (restarted, unbanned, healed from a partition) missed
    what happened meanwhile: as in CTDB its volatile records are discarded
    instead of being merged, since an old copy could carry a higher RSN than
    the version the others rebuilt after losing the record's dmaster.
    """
    top = max(epochs.values())
    return sorted(p for p, e in epochs.items() if e == top)
