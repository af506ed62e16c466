"""Entry lists are linearizable on real daemons: concurrent appends under random
conditions, removals and reads from clients on every node, checked by the
simulator's history checker (tools/sim/linearizability.py), on both transports."""

from __future__ import annotations

import math
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctdb.client import Client
from ctdb.common.errors import CtdbError
from tests.conftest import unique
from tools.cluster import LocalCluster
from tools.sim.history import Kind, Op
from tools.sim.linearizability import check

KEYS = ["q0", "q1"]
CLIENTS = 6  # two on each node

#: One step of a client's program: (what, key index, condition, argument).
Step = tuple[str, int, str, int | None]
steps = st.tuples(
    st.sampled_from(["append", "append", "append", "remove", "entries"]),
    st.integers(0, len(KEYS) - 1),
    st.sampled_from(["always", "empty", "max_entries"]),
    st.integers(1, 3),
)
programs = st.lists(st.lists(steps, min_size=5, max_size=25), min_size=CLIENTS, max_size=CLIENTS)


def run_client(
    c: Client, db: str, name: str, program: list[Step], ops: list[Op], lock: threading.Lock
) -> None:
    for n, (what, k, condition, arg) in enumerate(program):
        key = f"{db}:{KEYS[k]}"
        invoke = time.monotonic()
        op = Op(0, name, key, Kind.ENTRIES, None, invoke)
        try:
            if what == "append":
                payload = f"{name}.{n}"
                cond_arg = arg if condition == "max_entries" else None
                op.kind, op.value, op.arg = Kind.APPEND, payload, (condition, cond_arg)
                r = c.cond_append(db, KEYS[k], payload, condition, cond_arg)
                listed = " ".join(e.payload.decode() for e in r.entries or [])
                op.answer = f"appended {r.index}" if r.appended else f"conflict {listed}"
            elif what == "remove":
                op.kind, op.arg = Kind.REMOVE, name
                op.answer = f"removed {c.remove_entries(db, KEYS[k])}"
            else:
                found = c.entries(db, KEYS[k]).entries
                op.answer = " ".join(e.payload.decode() for e in found)
            op.response = time.monotonic()
        except CtdbError as exc:  # outcome unknown: a write stays optional, a read goes
            op.response, op.note = math.inf, str(exc)
            if op.kind is Kind.ENTRIES:
                continue
        with lock:
            op.id = len(ops)
            ops.append(op)


@pytest.mark.parametrize("kind", ["volatile", "persistent"])
@given(programs)
@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_concurrent_entry_lists_are_linearizable(
    cluster: LocalCluster, kind: str, program: list[list[Step]]
) -> None:
    db = unique()
    clients = [cluster.client(i % 3) for i in range(CLIENTS)]
    try:
        clients[0].attach(db, kind)
        ops: list[Op] = []
        lock = threading.Lock()
        threads = [
            threading.Thread(
                target=run_client, args=(c, db, f"c{i}@{i % 3}", program[i], ops, lock)
            )
            for i, c in enumerate(clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
            assert not t.is_alive()
        # Every node's final view of every list is part of the history too.
        for pnn, c in enumerate(clients[:3]):
            for key in KEYS:
                invoke = time.monotonic()
                answer = " ".join(e.payload.decode() for e in c.entries(db, key).entries)
                op = Op(len(ops), f"final@{pnn}", f"{db}:{key}", Kind.ENTRIES, None, invoke)
                op.response, op.answer = time.monotonic(), answer
                ops.append(op)
        assert sum(o.kind is Kind.APPEND for o in ops) > 0
        by_key: dict[str, list[Op]] = {}
        for op in ops:
            by_key.setdefault(op.key, []).append(op)
        violations = check(by_key)
        assert not violations, "\n".join(v.describe() for v in violations)
    finally:
        for c in clients:
            c.close()
