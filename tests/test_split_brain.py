"""The simulator's split-brain check (tools/sim/split_brain.py), on hand-written histories.

Both directions: the shape of a non-transitive cut served on both sides
(seen on real daemons, tests/test_partition_nontransitive.py) must be
found, and the shapes CTDB allows (a cut-off dmaster's last versions
rolled back, even twice in a row) must pass, although the linearizability
model accepts all of them inside loss windows.
"""

from __future__ import annotations

import math
from itertools import count

from tools.sim import linearizability, split_brain
from tools.sim.history import Kind, Op

_ids = count()


def incr(client: str, held: tuple[float, float], old: str | None, value: str) -> Op:
    """An increment under the lock: invoked a little before the grant, acked a little after."""
    start, sent = held
    op = Op(next(_ids), client, "k", Kind.RMW, value, start - 0.01, sent + 0.01, old=old)
    op.held = held
    return op


def write(value: str) -> Op:
    return Op(next(_ids), "c0", "k", Kind.WRITE, value, 0.0, 0.1)


def final(value: str, at: float = 10.0) -> Op:
    return Op(next(_ids), "final@0", "k", Kind.READ, value, at, at + 0.01)


def losses(n: int, invoke: float = 0.5, response: float = 5.0) -> list[Op]:
    """A fault opens a window per way a record may fall back (tools/sim/faults.py)."""
    return [Op(next(_ids), "loss", "k", Kind.LOSS, None, invoke, response) for _ in range(n)]


def test_two_sides_incrementing_at_once_is_found() -> None:
    history = [
        write("a"),
        incr("c1", (0.20, 0.30), "a", "b"),  # node 1 goes on serving its copy...
        incr("c0", (1.00, 1.10), "a", "x"),  # ...while node 0 serves the older one
        incr("c1", (1.05, 1.15), "b", "c"),
        incr("c0", (1.20, 1.30), "x", "y"),
        *losses(3),
        final("y"),
    ]
    by_key = {"k": history}
    assert linearizability.check(by_key) == []  # the loss windows explain it...
    found = split_brain.check(by_key)  # ...but not two holds at once
    assert len(found) == 1
    assert "1 acknowledged increments" in found[0] and "'b' -> 'c'" in found[0], found


def test_a_rolled_back_dmaster_twice_over_is_not_a_split_brain() -> None:
    history = [
        write("a"),
        incr("c2", (0.20, 0.30), "a", "b"),  # node 2 is cut off after this: b rolls back
        incr("c1", (1.00, 1.10), "a", "x"),  # node 1 is cut off after this: x rolls back,
        incr("c0", (2.00, 2.10), "b", "y"),  # and b, on node 2 again, survives
        *losses(2),
        final("y"),
    ]
    by_key = {"k": history}
    assert linearizability.check(by_key) == []
    assert split_brain.check(by_key) == []


def test_an_unacknowledged_store_held_nothing_for_sure() -> None:
    lost = incr("c1", (0.20, 0.50), "a", "b")
    lost.response = math.inf  # its node stopped serving: the store failed
    history = [write("a"), lost, incr("c0", (0.30, 0.40), "a", "x"), final("x")]
    assert split_brain.check({"k": history}) == []
