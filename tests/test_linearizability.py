"""The simulator's linearizability checker, on hand-written histories.

A checker that cannot fail proves nothing, and one that fails correct
histories hides real failures behind noise: both directions are tested.
Soundness (a history produced by a real register at random linearization
points always passes) is checked with hypothesis; the known failure shapes
(lost update, dirty read, stale read, a loss outside its window) must fail
and shrink to the operations that matter.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.sim import linearizability as lin
from tools.sim.history import Kind, Op
from tools.sim.linearizability import check, linearizable, minimize

INF = math.inf
_ids = iter(range(1_000_000))


def op(
    kind: Kind,
    invoke: float,
    response: float,
    value: str | None = None,
    old: str | None = None,
    client: str = "c",
) -> Op:
    return Op(next(_ids), client, "k", kind, value, invoke, response, old=old)


def W(i: float, r: float, v: str | None, c: str = "c") -> Op:  # noqa: N802
    return op(Kind.WRITE, i, r, v, client=c)


def R(i: float, r: float, v: str | None, c: str = "c") -> Op:  # noqa: N802
    return op(Kind.READ, i, r, v, client=c)


def RA(i: float, r: float, v: str | None) -> Op:  # noqa: N802
    return op(Kind.READ_ANY, i, r, v)


def RMW(i: float, r: float, old: str | None, new: str) -> Op:  # noqa: N802
    return op(Kind.RMW, i, r, new, old=old)


def LOSS(i: float, r: float) -> Op:  # noqa: N802
    return op(Kind.LOSS, i, r)


def test_sequential_register() -> None:
    assert linearizable([W(0, 1, "a"), R(2, 3, "a"), W(4, 5, "b"), R(6, 7, "b")])
    assert linearizable([R(0, 1, None), W(2, 3, None), R(4, 5, None)])
    assert not linearizable([W(0, 1, "a"), W(2, 3, "b"), R(4, 5, "a")])
    assert not linearizable([R(0, 1, "never written")])


def test_concurrent_operations_may_take_effect_in_either_order() -> None:
    assert linearizable([W(0, 10, "a"), R(1, 2, None), R(3, 4, "a"), R(5, 6, "a")])
    # Once a read saw the new value, a later one cannot see the old again.
    assert not linearizable([W(0, 10, "a"), R(1, 2, "a"), R(3, 4, None)])
    # Equal times count as concurrent: no false order is invented.
    assert linearizable([W(0, 1, "a"), R(1, 1, None)])


def test_lost_update_under_a_lock() -> None:
    """Two increments both read the same value: one of them was lost."""
    assert linearizable([RMW(0, 1, None, "a"), RMW(2, 3, "a", "b"), R(4, 5, "b")])
    assert not linearizable([RMW(0, 1, None, "a"), RMW(2, 3, None, "b")])


def test_a_failed_write_may_or_may_not_have_happened() -> None:
    assert linearizable([W(0, INF, "a"), R(5, 6, None), R(7, 8, None)])
    assert linearizable([W(0, INF, "a"), R(5, 6, "a"), R(7, 8, "a")])
    assert linearizable([W(0, INF, "a"), R(5, 6, None), R(7, 8, "a")])
    # ...but it cannot happen and then un-happen.
    assert not linearizable([W(0, INF, "a"), R(5, 6, "a"), R(7, 8, None)])
    # Nor take effect before it was issued.
    assert not linearizable([R(0, 1, "a"), W(2, INF, "a")])


def test_a_local_read_may_lag_but_never_invent() -> None:
    history = [W(0, 1, "a"), W(2, 3, "b")]
    assert linearizable([*history, RA(4, 5, "a")])  # stale is allowed
    assert linearizable([*history, RA(4, 5, None)])  # so is from before the first write
    assert not linearizable([*history, RA(4, 5, "z")])


def test_dirty_read_of_an_aborted_commit() -> None:
    """A transaction read `x` and failed; a reader saw its value, yet the next
    increment builds on `x`: the failed commit never happened, so the read
    returned data that was never committed (issue 8, scenario 4)."""
    history = [
        W(0, 1, "x"),
        RMW(2, INF, "x", "dirty"),  # failed: maybe applied
        RA(3, 3, "dirty"),
        RMW(5, 6, "x", "y"),
    ]
    assert not linearizable(history)
    assert linearizable(history[:3])  # without the later evidence it may have been applied


def test_loss_windows() -> None:
    """Inside a loss window a key may fall back to an earlier value, not outside."""
    assert linearizable([W(0, 1, "a"), W(2, 3, "b"), LOSS(4, 5), R(6, 7, "a")])
    assert linearizable([W(0, 1, "a"), LOSS(2, 3), R(4, 5, None)])
    assert not linearizable([W(0, 1, "a"), W(2, 3, "b"), R(6, 7, "a")])
    assert not linearizable([W(0, 1, "a"), W(2, 3, "b"), LOSS(4, 5), R(6, 7, "z")])
    # The loss happens within its window, not after it.
    assert not linearizable([W(0, 1, "a"), LOSS(2, 3), W(4, 5, "b"), R(6, 7, "a")])
    # A loss reverts; it cannot undo the revert afterwards.
    assert not linearizable([W(0, 1, "a"), W(2, 3, "b"), LOSS(4, 5), R(6, 7, "a"), R(8, 9, "b")])


def test_minimal_counterexample_keeps_only_what_fails() -> None:
    noise = [W(10 * i, 10 * i + 1, f"n{i}", c="noise") for i in range(1, 8)]
    noise += [R(10 * i + 2, 10 * i + 3, f"n{i}", c="noise") for i in range(1, 8)]
    lost = [RMW(100, 101, "n7", "a"), RMW(102, 103, "n7", "b")]
    history = noise + lost
    assert not linearizable(history)
    small = minimize(history)
    assert not linearizable(small)
    # The two increments and the write they both read from; nothing else.
    assert sorted(o.value or "" for o in small) == ["a", "b", "n7"]
    # Minimal: dropping any one operation (with its readers) makes it pass.
    for drop in small:
        rest = [o for o in small if o is not drop and o.old != drop.value]
        assert linearizable(rest)
    (violation,) = check({"k": history})
    text = violation.describe()
    assert "minimal counterexample of 3" in text and "'n7' -> 'b'" in text


@st.composite
def register_runs(draw: st.DrawFn) -> list[Op]:
    """Operations on a real register: each takes effect at a random instant
    inside its interval (or, if it failed, perhaps never)."""
    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(1, 14))
    events = []
    for i in range(n):
        start = rnd.uniform(0, 10)
        end = start + rnd.uniform(0, 3)
        at = rnd.uniform(start, end)
        kind = rnd.choice([Kind.WRITE, Kind.READ, Kind.RMW, Kind.READ_ANY])
        failed = kind in (Kind.WRITE, Kind.RMW) and rnd.random() < 0.2
        applied = not failed or rnd.random() < 0.5
        events.append((at, i, kind, start, end, failed, applied))
    value: str | None = None
    past: list[str | None] = [None]
    ops = []
    for _at, i, kind, start, end, failed, applied in sorted(events):
        response = INF if failed else end
        if kind is Kind.WRITE:
            new = f"v{i}" if rnd.random() < 0.8 else None
            ops.append(W(start, response, new))
            if applied:
                past.append(value)
                value = new
        elif kind is Kind.RMW:
            ops.append(RMW(start, response, value, f"v{i}"))
            if applied:
                past.append(value)
                value = f"v{i}"
        elif kind is Kind.READ:
            ops.append(R(start, end, value))
        else:
            ops.append(RA(start, end, rnd.choice([*past, value])))
    return ops


@settings(max_examples=300, deadline=None)
@given(register_runs())
def test_histories_of_a_real_register_always_pass(ops: list[Op]) -> None:
    assert linearizable(ops)


def test_minimization_keeps_the_delete_a_read_of_missing_came_from() -> None:
    """Found on a replica that missed a write under a lock: the counterexample
    must keep the delete the lock holder read, not blame an older write."""
    history = [
        RMW(0, 1, None, "a"),
        W(2, 3, None),  # a delete
        RMW(4, 10, None, "b"),  # acknowledged under a lock
        R(11, 12, "b"),
        R(13, 14, None),  # ...but another node never applied it
    ]
    small = minimize(history)
    assert [(o.kind, o.value) for o in small] == [
        (Kind.WRITE, None),
        (Kind.RMW, "b"),
        (Kind.READ, None),
    ]


# -- entry lists (conditional append) ---------------------------------------------------


Cond = tuple[str, int | None]


def APPEND(i: float, r: float, payload: str, cond: Cond, answer: str | None) -> Op:  # noqa: N802
    o = op(Kind.APPEND, i, r, payload)
    o.arg, o.answer = cond, answer
    return o


def ENTRIES(i: float, r: float, answer: str) -> Op:  # noqa: N802
    o = op(Kind.ENTRIES, i, r)
    o.answer = answer
    return o


def REMOVE(i: float, r: float, client: str, answer: str | None) -> Op:  # noqa: N802
    o = op(Kind.REMOVE, i, r)
    o.arg, o.answer = client, answer
    return o


def PURGE(i: float, r: float, pnn: int) -> Op:  # noqa: N802
    o = op(Kind.PURGE, i, r)
    o.arg = pnn
    return o


ALWAYS, EMPTY = ("always", None), ("empty", None)


def test_entry_lists_sequential() -> None:
    assert linearizable(
        [
            APPEND(0, 1, "c1@0.1", EMPTY, "appended 0"),
            APPEND(2, 3, "c2@1.1", EMPTY, "conflict c1@0.1"),
            APPEND(4, 5, "c2@1.2", ALWAYS, "appended 1"),
            ENTRIES(6, 7, "c1@0.1 c2@1.2"),
            REMOVE(8, 9, "c1@0", "removed 1"),
            ENTRIES(10, 11, "c2@1.2"),
            APPEND(12, 13, "c3@2.1", ("max_entries", 1), "conflict c2@1.2"),
            APPEND(14, 15, "c3@2.2", ("max_entries", 2), "appended 1"),
        ]
    )
    # Two winners of one exclusive lock.
    assert not linearizable(
        [
            APPEND(0, 1, "c1@0.1", EMPTY, "appended 0"),
            APPEND(2, 3, "c2@1.1", EMPTY, "appended 0"),
        ]
    )
    # A removal that removed nothing of what the client holds.
    assert not linearizable(
        [APPEND(0, 1, "c1@0.1", ALWAYS, "appended 0"), REMOVE(2, 3, "c1@0", "removed 0")]
    )


def test_concurrent_appends_take_either_order_but_one() -> None:
    a = APPEND(0, 3, "c1@0.1", ALWAYS, "appended 0")
    b = APPEND(1, 2, "c2@1.1", ALWAYS, "appended 1")
    assert linearizable([a, b, ENTRIES(4, 5, "c1@0.1 c2@1.1")])
    assert not linearizable([a, b, ENTRIES(4, 5, "c2@1.1 c1@0.1")])


def test_unknown_append_is_optional_and_entries_go_only_in_a_purge_window() -> None:
    unknown = APPEND(0, INF, "c1@0.1", ALWAYS, None)
    assert linearizable([unknown, ENTRIES(2, 3, "")])
    assert linearizable([unknown, ENTRIES(2, 3, "c1@0.1")])
    held = APPEND(0, 1, "c1@0.1", ALWAYS, "appended 0")
    assert not linearizable([held, ENTRIES(4, 5, "")])
    assert linearizable([held, PURGE(2, 6, 0), ENTRIES(4, 5, "")])
    # A purge takes only its node's clients' entries.
    assert not linearizable([held, PURGE(2, 6, 1), ENTRIES(4, 5, "")])


def test_copies_of_a_window_do_not_blow_up_the_search() -> None:
    """Faults open several identical windows per key (seed 358 of the vs
    campaign had 39 on one entry list); they must not make the search explode."""
    ops = [APPEND(0.1, 0.2, "c3@2.3", EMPTY, "appended 0")]
    # As the simulator records them on an entry list: one group per node and
    # one of losses, each of three copies, from the first fault on.
    for pnn in (0, 1, 2):
        ops += [PURGE(0.3, 2.0, pnn) for _ in range(3)]
    ops += [LOSS(0.3, 2.0) for _ in range(3)]
    ops.append(APPEND(1.0, 1.1, "c4@0.10", ("max_entries", 1), "conflict c3@2.3"))
    ops.append(ENTRIES(2.5, 2.6, ""))
    assert linearizable(ops)
    ops.append(ENTRIES(2.7, 2.8, "c4@0.10"))  # never appended: no window explains it
    assert not linearizable(ops)


def test_a_history_too_large_to_decide_is_reported_not_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lin, "BUDGET", 3)
    history = [W(0, 1, "a"), W(2, 3, "b"), R(4, 5, "b"), R(6, 7, "b"), R(8, 9, "b")]
    [violation] = check({"k": history})
    assert "could not be checked" in violation.describe()
