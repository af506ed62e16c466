"""Did two clients hold one record's lock at once? Loss windows hide it.

The linearizability model lets a fault's loss window reset a volatile key
to a value it held before (CTDB loses the latest versions of a record whose
dmaster crashed or was cut off). A few resets in one window also explain a
split brain: two nodes each serving its own copy of the record, the history
of one side discarded afterwards. This check tells the two apart.

A client holds a record's lock from when `fetch_lock` returned to when it
sent `store_unlock`, and the daemon held it for that client over a longer
span (it granted before the client heard, it released after the store
arrived). If the spans of two acknowledged increments overlap, and each
was granted and acknowledged in one view of its node, two nodes served the
record at the same time. Rolled-back versions never overlap this way:
their node stopped serving before the survivors' node started.

Holds across a view change of the holder's node are not checked. On vs a
lock survives its holder's node leaving and coming back when the members
that released it lost their state meanwhile (a crash): that node's state,
lock included, is the one that goes on, and the store is acknowledged in
the new view (simulator seeds vs 243, 4203834: a stopped or partitioned
holder, the others restarted). That is a loss window's business, not two
sides serving at once.
"""

from __future__ import annotations

from tools.sim.history import Op

Hold = tuple[float, float, Op]


def check(by_key: dict[str, list[Op]]) -> list[str]:
    """One line per key whose lock two acknowledged increments held at once."""
    found = []
    for key, ops in by_key.items():
        pairs = _overlapping(ops)
        if pairs:
            (a0, a1, a), (b0, b1, b) = pairs[0]
            found.append(
                f"key {key}: {len(pairs)} acknowledged increments held the record's lock while "
                f"another did (two sides served), e.g. {b.describe()} held it from {b0:.4f} "
                f"to {b1:.4f}, within {a.describe()} (held {a0:.4f} to {a1:.4f})"
            )
    return found


def _overlapping(ops: list[Op]) -> list[tuple[Hold, Hold]]:
    """(earlier, later) for each acknowledged hold that began before an earlier one ended."""
    holds = sorted(
        ((op.held[0], op.held[1], op) for op in ops if op.known and op.held is not None),
        key=lambda hold: hold[:2],
    )
    pairs: list[tuple[Hold, Hold]] = []
    longest: Hold | None = None  # the hold that ends last among those begun so far
    for hold in holds:
        if longest is not None and hold[0] < longest[1]:
            pairs.append((longest, hold))
        if longest is None or hold[1] > longest[1]:
            longest = hold
    return pairs
