"""Recovery merge rules (pure functions)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ctdb.engines.merge import (
    VolatilePlan,
    freshest_copy,
    from_wire,
    merge_volatile,
    newest_epoch_members,
    persistent_source,
    persistent_targets,
    to_wire,
    volatile_plan,
)
from ctdb.engines.transactions import next_version
from ctdb.storage.database import Database, DbKind
from ctdb.storage.ltdb import Record


def test_highest_rsn_wins() -> None:
    merged = merge_volatile(
        {
            0: {b"k": Record(3, 0, b"old")},
            1: {b"k": Record(9, 1, b"new")},
            2: {b"k": Record(5, 2, b"mid")},
        }
    )
    assert merged[b"k"].value == b"new"
    assert merged[b"k"].rsn == 9
    assert merged[b"k"].dmaster == 1  # the holder of the winning copy stays dmaster


def test_higher_rsn_wins_even_from_a_node_that_is_not_dmaster() -> None:
    # node 0 gave the record away (its copy says dmaster 1) with a higher rsn
    merged = merge_volatile({0: {b"k": Record(8, 1, b"given")}, 1: {b"k": Record(7, 1, b"stale")}})
    assert merged[b"k"].value == b"given"
    assert merged[b"k"].rsn == 8
    assert merged[b"k"].dmaster == 0


def test_tombstone_beats_older_value() -> None:
    merged = merge_volatile({0: {b"k": Record(4, 0, b"alive")}, 1: {b"k": Record(5, 1, b"")}})
    assert merged[b"k"].deleted
    assert merged[b"k"].rsn == 5


def test_newer_value_beats_older_tombstone() -> None:
    merged = merge_volatile({0: {b"k": Record(6, 0, b"again")}, 1: {b"k": Record(5, 1, b"")}})
    assert merged[b"k"].value == b"again"


def test_tie_prefers_the_node_that_claims_dmaster() -> None:
    copies = {0: {b"k": Record(5, 2, b"from0")}, 2: {b"k": Record(5, 2, b"from2")}}
    merged = merge_volatile(copies)
    assert merged[b"k"].value == b"from2"
    assert merged[b"k"].dmaster == 2


def test_tie_without_a_claimed_dmaster_prefers_the_lowest_pnn() -> None:
    copies = {2: {b"k": Record(5, 7, b"from2")}, 1: {b"k": Record(5, 7, b"from1")}}
    merged = merge_volatile(copies)
    assert merged[b"k"].value == b"from1"
    assert merged[b"k"].dmaster == 1


def test_keys_present_on_one_node_only_are_kept() -> None:
    merged = merge_volatile({0: {b"a": Record(1, 0, b"A")}, 1: {b"b": Record(1, 1, b"B")}, 2: {}})
    assert {k: r.value for k, r in merged.items()} == {b"a": b"A", b"b": b"B"}
    assert merged[b"b"].dmaster == 1


def test_no_copies_merge_to_nothing() -> None:
    assert merge_volatile({}) == {}
    assert merge_volatile({0: {}, 1: {}}) == {}


records = st.builds(
    Record,
    rsn=st.integers(0, 6),
    dmaster=st.integers(0, 3),
    value=st.sampled_from([b"", b"a", b"b", b"c"]),
)
copies_strategy = st.dictionaries(
    st.integers(0, 3), st.dictionaries(st.sampled_from([b"k1", b"k2", b"k3"]), records), max_size=4
)


@given(copies=copies_strategy, data=st.data())
@settings(max_examples=300, deadline=None)
def test_merge_is_deterministic_and_independent_of_order(copies, data) -> None:  # type: ignore[no-untyped-def]
    merged = merge_volatile(copies)
    order = data.draw(st.permutations(list(copies)))
    shuffled = {p: dict(reversed(list(copies[p].items()))) for p in order}
    assert merge_volatile(shuffled) == merged
    for key, rec in merged.items():
        holders = [p for p in copies if key in copies[p]]
        assert rec.rsn == max(copies[p][key].rsn for p in holders)
        assert rec.dmaster in holders
        winner = copies[rec.dmaster][key]
        assert (winner.rsn, winner.value) == (rec.rsn, rec.value)
    assert set(merged) == {k for c in copies.values() for k in c}


def test_wire_round_trip() -> None:
    items = {b"a": Record(1, 2, b"x"), b"b": Record(2**40, 0, b"")}
    wire = to_wire(items.items())
    assert wire == [[b"a", 1, 2, b"x"], [b"b", 2**40, 0, b""]]
    assert from_wire(wire) == items


def test_persistent_source_picks_highest_seqnum() -> None:
    assert persistent_source({0: 3, 1: 10, 2: 7}) == 1
    assert persistent_source({0: 0}) == 0
    assert persistent_source({4: 2, 1: 1}) == 4


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 1, 0], [1, 2, 0]])
def test_persistent_source_tie_is_deterministic(order: list[int]) -> None:
    seqnums = {p: {0: 5, 1: 9, 2: 9}[p] for p in order}
    assert persistent_source(seqnums) == 1  # lowest pnn among the most advanced


def test_newest_epoch_members() -> None:
    assert newest_epoch_members({0: 3, 1: 3, 2: 1}) == [0, 1]
    assert newest_epoch_members({2: 0, 0: 0}) == [0, 2]
    assert newest_epoch_members({5: 7}) == [5]
    # a node that missed the latest recoveries does not count next to the others
    assert newest_epoch_members({0: 0, 1: 4, 2: 4}) == [1, 2]


def test_persistent_targets_skip_members_that_hold_the_source_copy() -> None:
    a, b = b"\x01" * 16, b"\x02" * 16
    # Same sequence number and history: identical copies, nothing to push,
    # whatever epoch a node is at (it may have restarted or missed a recovery).
    assert persistent_targets({0: (9, a), 1: (9, a), 2: (9, a)}, source=0) == []
    # A node that missed the last commit gets the copy.
    assert persistent_targets({0: (9, a), 1: (8, b), 2: (9, a)}, source=0) == [1]
    # The same sequence number reached through another commit is another copy.
    assert persistent_targets({0: (9, a), 1: (9, b), 2: (9, a)}, source=2) == [1]
    # Empty databases are equal; a copy without a history cannot be compared.
    assert persistent_targets({0: (0, b""), 1: (0, b"")}, source=0) == []
    assert persistent_targets({0: (3, b""), 1: (3, b""), 2: (3, b"")}, source=1) == [0, 2]


def test_the_history_digest_tells_two_copies_of_one_sequence_number_apart(
    tmp_path: Path,
) -> None:
    one = Database.open(tmp_path / "one", "p", DbKind.PERSISTENT, 0)
    two = Database.open(tmp_path / "two", "p", DbKind.PERSISTENT, 0)
    try:
        for db, value in ((one, b"x"), (two, b"y")):
            seqnum, records = next_version(db, [], [[b"k", value]], 0)
            db.local.write_batch(Database.commit_puts(records))
        assert one.seqnum() == two.seqnum() == 1
        assert one.history() != two.history()
        # Order and deletion are part of the history too.
        seqnum, records = next_version(one, [], [[b"k", None]], 0)
        one.local.write_batch(Database.commit_puts(records))
        assert one.local.get(b"k") is None
        assert len(one.history()) == 16
        assert [k for k, _ in one.live_items()] == []  # meta records are no client data
    finally:
        one.local.close()
        two.local.close()


def test_volatile_plan_without_a_base_moves_everything() -> None:
    plan = volatile_plan({0: None, 1: None, 2: None}, leader=0)
    assert plan == VolatilePlan(None, [], [0, 1, 2], None)


def test_volatile_plan_uses_the_latest_base_and_prefers_the_leader() -> None:
    bases = {0: (3, 77), 1: (3, 77), 2: (2, 5), 3: None}
    plan = volatile_plan(bases, leader=1)
    assert plan == VolatilePlan((3, 77), [0, 1], [2, 3], 1)
    # A leader without the base: the lowest holder provides.
    plan = volatile_plan({0: None, 1: (4, 1), 2: (4, 1)}, leader=0)
    assert plan == VolatilePlan((4, 1), [1, 2], [0], 1)


_records = st.dictionaries(
    st.sampled_from([b"a", b"b", b"c", b"d", b"e"]),
    st.builds(Record, st.integers(1, 20), st.integers(0, 3), st.sampled_from([b"", b"x", b"y"])),
)


@settings(max_examples=300)
@given(base=_records, changes=st.lists(_records, min_size=3, max_size=3), stale=_records)
def test_merging_only_changed_keys_gives_what_a_full_merge_gives(
    base: dict[bytes, Record], changes: list[dict[bytes, Record]], stale: dict[bytes, Record]
) -> None:
    """Holders 0-2 started from `base` and changed some keys; node 3 kept a stale copy."""
    # A version is its RSN: a stale copy at the base's RSN is that very
    # version (two values at one RSN would be a split brain, which the
    # merge does not settle alike whichever copies it is given).
    stale = {
        k: Record(r.rsn, r.dmaster, base[k].value) if k in base and r.rsn == base[k].rsn else r
        for k, r in stale.items()
    }
    holders: dict[int, dict[bytes, Record]] = {}
    changed: dict[int, dict[bytes, Record]] = {}
    for p, change in enumerate(changes):
        # A change is a newer version: its RSN is above the base version's.
        bumped = {
            k: Record(r.rsn + base[k].rsn if k in base else r.rsn, r.dmaster, r.value)
            for k, r in change.items()
        }
        holders[p] = {**base, **bumped}
        changed[p] = bumped
    full = merge_volatile({**holders, 3: stale})

    plan = volatile_plan({0: (1, 1), 1: (1, 1), 2: (1, 1), 3: None}, leader=0)
    assert plan.provider == 0
    copies: dict[int, dict[bytes, Record]] = {**changed, 3: stale}
    keys = {k for copy in copies.values() for k in copy}
    copies[plan.provider] = {k: holders[0][k] for k in keys if k in holders[0]}
    diff = merge_volatile(copies)
    for p in plan.holders:
        result = {**holders[p], **diff}
        assert {k: (r.rsn, r.value) for k, r in result.items()} == {
            k: (r.rsn, r.value) for k, r in full.items()
        }


@pytest.mark.parametrize(
    ("marks", "source"),
    [
        # (epoch, sound, position in the epoch, sequence number) per member
        ({0: (3, True, 9, 5), 1: (4, True, 0, 1)}, 1),  # the epoch first
        ({0: (4, False, 9, 9), 2: (4, True, 1, 1)}, 2),  # then a sound copy over a damaged one
        ({0: (4, True, 3, 5), 1: (4, True, 8, 5)}, 1),  # then the longest part of the epoch
        ({0: (4, True, 8, 5), 1: (4, True, 8, 7)}, 1),  # then the sequence number
        ({1: (4, True, 8, 5), 2: (4, True, 8, 5)}, 1),  # then the lowest pnn
        ({0: (5, False, 0, 0), 1: (4, True, 9, 9)}, 0),  # a damaged copy of a later epoch wins
    ],
)
def test_freshest_volatile_copy_ranks_epoch_soundness_position_then_sequence(
    marks: dict[int, tuple[int, bool, int, int]], source: int
) -> None:
    assert freshest_copy(marks, replicated=False) == source


@pytest.mark.parametrize(
    ("marks", "source"),
    [
        ({0: (3, True, 9, 9), 1: (4, True, 0, 1)}, 1),  # the epoch first
        # then the sequence number, which a restart keeps and the position
        # does not (vs seed 1040214: node 0 restarted, node 1 stopped) ...
        ({0: (1, True, 0, 9), 1: (1, True, 29, 8)}, 0),
        # ... and which a failed write does not move (vs seed 1097342:
        # node 1's writes failed, node 0 was expelled early)
        ({0: (1, True, 26, 4), 1: (1, False, 27, 5)}, 1),
        ({0: (4, False, 9, 5), 2: (4, True, 1, 5)}, 2),  # then a sound copy
        ({0: (4, True, 3, 5), 1: (4, True, 8, 5)}, 1),  # then the position
        ({1: (4, True, 8, 5), 2: (4, True, 8, 5)}, 1),  # then the lowest pnn
    ],
)
def test_freshest_persistent_copy_ranks_epoch_sequence_soundness_then_position(
    marks: dict[int, tuple[int, bool, int, int]], source: int
) -> None:
    assert freshest_copy(marks, replicated=True) == source
