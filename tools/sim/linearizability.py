"""Is a per-key history linearizable? A Wing-Gong search, memoised as in
Lowe's and Porcupine's versions, with a nondeterministic register model.

Linearizability is compositional (P-compositionality), so each key is
checked alone. The search places operations one at a time in an order that
respects real time (an operation may go next only if no pending operation
finished before it began) and that the model accepts, remembering the
(placed set, model state) pairs already explored. Operations whose outcome
is unknown are optional: they may be placed (they took effect) or left out.

The model is a register whose state is its current value plus, when the
history needs it, every value it held before: a READ_ANY may return one of
those (a local read that lags), and a LOSS may reset the register to one
of them or to missing. Reads and RMWs name the exact value they saw, and
every write writes a value of its own, so a lost or invented write shows.

Entry lists (conditional append) use the same search with a second model:
the state is the list of entries, an append answers "appended at i" or
"conflict" exactly as its condition says on that list, a removal answers
how many entries went, a read the whole list; a PURGE window lets the
entries of one node's clients go (its node left the view or the vnnmap).
That model is written here, apart from `ctdb.engines.conditions`, so that a
wrong condition in the daemon shows as a history the model rejects.

A failing history is shrunk to a minimal failing sub-history (no single
operation can be removed and still fail), keeping with every read the
write it read from, and printed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tools.sim.history import WINDOWS, Kind, Op

#: (current value, earlier values or None when the history needs none)
State = tuple[str | None, frozenset[str | None] | None]

#: Search steps per check before giving up (a pathological history).
BUDGET = 2_000_000


class CheckBudgetExceeded(RuntimeError):
    pass


def step(state: State, op: Op) -> Iterator[State]:
    """The states after `op` from `state` (none: `op` cannot happen here)."""
    cur, past = state
    kind = op.kind
    if kind is Kind.READ:
        if cur == op.value:
            yield state
    elif kind is Kind.READ_ANY:
        if cur == op.value or (past is not None and op.value in past):
            yield state
    elif kind is Kind.WRITE:
        yield op.value, _with(past, cur)
    elif kind is Kind.RMW:
        if cur == op.old:
            yield op.value, _with(past, cur)
    elif kind is Kind.LOSS:
        yield state
        assert past is not None
        for earlier in sorted(past | {None}, key=_order):
            if earlier != cur:
                yield earlier, past | {cur}
    elif kind is Kind.APPEND:
        new, answer = _append(cur, str(op.value), op.arg)
        if not op.known or answer == op.answer:
            yield (new, _with(past, cur)) if new != cur else state
    elif kind is Kind.REMOVE:
        entries = _entries(cur)
        kept = [e for e in entries if _client_of(e) != op.arg]
        new = _joined(kept)
        if not op.known or f"removed {len(entries) - len(kept)}" == op.answer:
            yield (new, _with(past, cur)) if new != cur else state
    elif kind is Kind.ENTRIES:
        if op.answer == (cur or ""):
            yield state
    elif kind is Kind.PURGE:
        yield state
        new = _joined([e for e in _entries(cur) if _node_of(e) != op.arg])
        if new != cur:
            yield new, _with(past, cur)
    else:  # pragma: no cover - Kind is closed
        raise ValueError(kind)


# The entry-list model, written apart from ctdb.engines (so that a bug there
# is not copied into the model): a record's state is its entries' payloads,
# space-separated, in list order (None: no entries). A payload is
# `<client>.<n>` and a client `c<i>@<pnn>`, which names the owner and its node.


def _entries(state: str | None) -> list[str]:
    return state.split(" ") if state else []


def _joined(entries: list[str]) -> str | None:
    return " ".join(entries) or None


def _client_of(payload: str) -> str:
    return payload.rsplit(".", 1)[0]


def _node_of(payload: str) -> int:
    return int(_client_of(payload).rsplit("@", 1)[1])


def _append(cur: str | None, payload: str, cond: object) -> tuple[str | None, str]:
    """The state after appending `payload` under `cond` (name, argument), and the answer."""
    entries = _entries(cur)
    if payload in entries:  # the same owner and payload: appended already
        return cur, f"appended {entries.index(payload)}"
    assert isinstance(cond, tuple)
    name, arg = cond
    if name == "always":
        holds = True
    elif name == "empty":
        holds = not entries
    elif name == "max_entries":
        holds = len(entries) < arg
    else:  # pragma: no cover - the workload's conditions
        raise ValueError(name)
    if not holds:
        return cur, f"conflict {cur or ''}"
    return _joined([*entries, payload]), f"appended {len(entries)}"


def _with(past: frozenset[str | None] | None, value: str | None) -> frozenset[str | None] | None:
    return None if past is None else past | {value}


def _order(value: str | None) -> str:
    return "" if value is None else "+" + value


def linearizable(ops: list[Op]) -> bool:
    """True if `ops` (one key's history) has a linearization the model accepts."""
    ops = sorted(_relevant(ops), key=lambda o: (o.invoke, o.id))
    n = len(ops)
    needs_past = any(o.kind in (Kind.READ_ANY, Kind.LOSS) for o in ops)
    start: State = (None, frozenset() if needs_past else None)
    required = 0
    for i, op in enumerate(ops):
        if op.known:
            required |= 1 << i
    by_response = sorted((op.response, i) for i, op in enumerate(ops) if op.known)
    twin = _twins(ops)
    seen: set[tuple[int, State]] = set()
    stack: list[tuple[int, State]] = [(0, start)]
    steps = 0
    while stack:
        placed, state = stack.pop()
        if placed & required == required:
            return True
        if (placed, state) in seen:
            continue
        seen.add((placed, state))
        steps += 1
        if steps > BUDGET:
            raise CheckBudgetExceeded(f"more than {BUDGET} search steps on {n} operations")
        # An operation may go next only if no pending one finished before it began.
        horizon = next(r for r, i in by_response if not placed >> i & 1)
        i = (~placed & (placed + 1)).bit_length() - 1  # the first one not placed
        while i < n and ops[i].invoke <= horizon:
            if not placed >> i & 1 and (twin[i] < 0 or placed >> twin[i] & 1):
                for nxt in step(state, ops[i]):
                    stack.append((placed | 1 << i, nxt))
            i += 1
    return False


def _twins(ops: list[Op]) -> list[int]:
    """For each window, the index of the previous window it is a copy of (-1: none).

    A fault opens several identical windows (a record may fall back, or a
    node's entries go, more than once). Which copy goes first makes no
    difference, so copies are placed in order: without that, the search
    explores every subset of them, and a schedule with many faults on one
    key exceeds any budget.
    """
    last: dict[tuple[object, ...], int] = {}
    twin = []
    for i, op in enumerate(ops):
        if op.kind not in WINDOWS:
            twin.append(-1)
            continue
        shape = (op.kind, op.arg, op.invoke, op.response)
        twin.append(last.get(shape, -1))
        last[shape] = i
    return twin


def _relevant(ops: list[Op]) -> list[Op]:
    """Leave out writes of unknown outcome whose value nobody saw: leaving an
    optional operation out is always allowed, and placing one that nobody
    observed can only make later reads harder to explain."""
    seen = {o.old if o.kind is Kind.RMW else o.value for o in ops if o.kind is not Kind.WRITE}
    return [
        o
        for o in ops
        if o.known or o.kind not in (Kind.WRITE, Kind.RMW) or o.value is None or o.value in seen
    ]


def _closure(ops: list[Op], drop: Op) -> list[Op]:
    """`ops` without `drop` and without every operation that saw a value it wrote.

    Dropping a write can only make the rest easier to explain, except for the
    reads of its value; dropping those too (all of them, also for a delete:
    a read of "missing" may have come from it) keeps a failing sub-history
    failing for a reason it contains itself.
    """
    gone = {drop.id}
    lost = [drop]
    while lost:
        op = lost.pop()
        if op.kind not in (Kind.WRITE, Kind.RMW, Kind.APPEND):
            continue
        for other in ops:
            if other.id in gone:
                continue
            if op.kind is Kind.APPEND:
                saw_it = op.value in (other.answer or "").split(" ")
            else:
                saw = other.old if other.kind is Kind.RMW else other.value
                saw_it = other.kind in (Kind.READ, Kind.READ_ANY, Kind.RMW) and saw == op.value
            if saw_it:
                gone.add(other.id)
                lost.append(other)
    return [o for o in ops if o.id not in gone]


def minimize(ops: list[Op]) -> list[Op]:
    """A failing sub-history from which no client operation can be dropped (with
    what read from it). Loss and purge windows stay: they are the model's, not the clients'.

    On an entry list only reads are dropped: dropping a removal (or an append,
    whose index later appends count on) can make the rest fail for a reason
    the real history did not have.
    """
    current = sorted(ops, key=lambda o: (o.invoke, o.id))
    entry_list = any(o.kind in (Kind.APPEND, Kind.REMOVE) for o in current)
    shrunk = True
    while shrunk:
        shrunk = False
        for op in reversed(current):
            if op.kind in WINDOWS or (entry_list and op.kind is not Kind.ENTRIES):
                continue
            smaller = _closure(current, op)
            if not linearizable(smaller):
                current = smaller
                shrunk = True
                break
    # Show only the windows that overlap what is left.
    clients = [o for o in current if o.kind not in WINDOWS]
    if not clients:
        return current
    start = min(o.invoke for o in clients)
    end = max(o.response if o.known else o.invoke for o in clients)
    return [
        o for o in current if o.kind not in WINDOWS or (o.invoke <= end and o.response >= start)
    ]


@dataclass
class Violation:
    key: str
    ops: list[Op]
    counterexample: list[Op]
    #: why the history failed, when it is not a counterexample
    problem: str = ""

    def describe(self) -> str:
        if self.problem:
            return f"key {self.key}: {self.problem}"
        lines = [
            f"key {self.key}: not linearizable ({len(self.ops)} operations); "
            f"minimal counterexample of {len(self.counterexample)}:"
        ]
        shown: list[tuple[str, int]] = []
        for op in self.counterexample:
            text = op.describe()
            if shown and shown[-1][0] == text and op.kind in WINDOWS:
                shown[-1] = (text, shown[-1][1] + 1)  # the same window's steps
            else:
                shown.append((text, 1))
        lines += [f"    {text}" + (f" x{n}" if n > 1 else "") for text, n in shown]
        return "\n".join(lines)


def check(by_key: dict[str, list[Op]]) -> list[Violation]:
    """Every key whose history is not linearizable, with a minimal counterexample.

    A history the search cannot decide within its budget is reported too
    (with no counterexample): unchecked is not the same as correct.
    """
    bad = []
    for key, ops in by_key.items():
        try:
            if not linearizable(ops):
                bad.append(Violation(key, ops, minimize(ops)))
        except CheckBudgetExceeded as exc:
            bad.append(Violation(key, ops, [], f"could not be checked: {exc}"))
    return bad
