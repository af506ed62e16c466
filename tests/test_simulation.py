"""The cluster logic under 1,000 seeded fault schedules on the simulated network.

Each schedule runs real `Node`s on the memory transport in a virtual-time
event loop, with crashes, restarts and partitions, and checks convergence and
that no acknowledged persistent write is lost (see ctdb/simulation.py).
A failing seed is replayed with `python -m tools.simulate --mode M --seed N -v`.
"""

from __future__ import annotations

import logging

import pytest

from ctdb.simulation import simulate

SEEDS_PER_MODE = 500


@pytest.fixture(autouse=True)
def _quiet_logs():
    logging.getLogger("ctdb").setLevel(logging.CRITICAL)
    logging.getLogger("transport").setLevel(logging.CRITICAL)
    yield
    logging.getLogger("ctdb").setLevel(logging.NOTSET)
    logging.getLogger("transport").setLevel(logging.NOTSET)


@pytest.mark.parametrize("mode", ["tcp", "vs"])
def test_seeded_fault_schedules_keep_every_invariant(mode: str) -> None:
    failures = []
    faults = 0
    for seed in range(SEEDS_PER_MODE):
        outcome = simulate(seed, mode)
        faults += outcome.crashes + outcome.partitions
        if not outcome.ok:
            failures.append(f"seed {seed}: {outcome.violations}")
    assert not failures, f"{len(failures)} schedules failed:\n" + "\n".join(failures[:10])
    # The schedules must really inject faults, or they prove nothing.
    assert faults > SEEDS_PER_MODE


@pytest.mark.parametrize("mode", ["tcp", "vs"])
def test_same_seed_same_trace(mode: str) -> None:
    first, second = simulate(7, mode), simulate(7, mode)
    assert first.trace == second.trace
    assert len(first.trace) > 50
    assert simulate(8, mode).trace != first.trace


def test_checks_can_fail() -> None:
    """A node that silently drops committed records must be caught.

    Node 0 is the lowest pnn, so recovery copies its (damaged) persistent
    database to the others: the loss must show up as a lost write.
    """
    from ctdb import transactions

    original = transactions.TransactionEngine.prepare

    def lossy(self, db, records, commit_id, generation):  # type: ignore[no-untyped-def]
        if self.node.pnn == 0:
            records = [r for r in records if not bytes(r[0]).startswith(b"w")]
        return original(self, db, records, commit_id, generation)

    transactions.TransactionEngine.prepare = lossy  # type: ignore[method-assign]
    try:
        outcomes = [simulate(seed, "tcp") for seed in range(5)]
    finally:
        transactions.TransactionEngine.prepare = original  # type: ignore[method-assign]
    caught = [v for o in outcomes for v in o.violations if "differ" in v or "lost" in v]
    assert caught, "a node dropping committed records went unnoticed"
