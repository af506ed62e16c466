"""The cluster logic under 1,000 seeded fault schedules on the simulated network.

Each schedule runs real `Node`s on the memory transport in a virtual-time
event loop with clients recording their history, under crashes, restarts
of a majority, hangs, partitions (also non-transitive and one-way), joins
under a held lock, admin recoveries, latency spikes, I/O errors and chains
held by Samba's clients in the nodes' files; then
it checks linearizability per key, convergence, durability of persistent
commits and liveness (see tools/sim/). A failing seed is replayed with
`python -m tools.simulate --mode M --seed N -v`; `tools/sim/FOUND.md` lists
the seeds that found the losses of issue 8.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ctdb.engines import conditions, dmaster_calls, migration, transactions
from ctdb.engines.ordered import engine, replica
from ctdb.server import liveness, stream
from tools.sim.campaign import campaign
from tools.sim.faults import FAULTS, SAMBA_FAULTS
from tools.sim.schedule import Variant, simulate
from transport.memory import MemoryTransport

REPO = Path(__file__).resolve().parent.parent
SEEDS_PER_MODE = 500
#: Fault-free schedules a deliberately broken engine is run on.
MUTANT_SEEDS = range(16)


@pytest.fixture(autouse=True)
def _quiet_logs() -> Iterator[None]:
    for name in ("ctdb", "transport"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    yield
    for name in ("ctdb", "transport"):
        logging.getLogger(name).setLevel(logging.NOTSET)


@pytest.mark.parametrize("mode", ["tcp", "vs"])
def test_seeded_fault_schedules_keep_every_invariant(mode: str) -> None:
    summary = campaign(range(SEEDS_PER_MODE), mode, jobs=2, progress=None)
    failures = [
        f"seed {r.seed} (python -m tools.simulate --mode {mode} --seed {r.seed} -v): "
        + r.violations[0].splitlines()[0]
        for r in summary.failures
    ]
    assert not failures, f"{len(failures)} schedules failed:\n" + "\n".join(failures[:20])
    # The schedules must really inject every kind of fault, or they prove nothing.
    assert not {*FAULTS, *SAMBA_FAULTS} - set(summary.faults), summary.faults
    assert summary.faults["hang_short"] and summary.faults["hang_long"]
    assert summary.strict > SEEDS_PER_MODE // 5
    assert summary.ops > 20 * SEEDS_PER_MODE


#: Seeds of the long campaigns that broke an invariant before their fix
#: (tools/sim/FOUND.md says what each broke and what fixed it).
FOUND = [
    ("vs", 22721),  # acknowledged volatile write lost: queued write left its queue unwritten
    ("vs", 32581),  # acknowledged commit rolled back: an epoch number handed out twice
    ("vs", 21579),  # member left in RECOVERY: a snapshot delivered in the next view
    ("vs", 32301),  # diverged replica: a round completed after its member's apply failed
    ("vs", 8606),  # dirty read of a commit that failed and was rolled back
    ("vs", 22242),
    ("vs", 1387),
    ("vs", 91395),  # acknowledged commit lost: a joiner still catching up did not count
    ("vs", 76634),  # (the same, volatile)
    ("tcp", 21475),  # a key nobody was dmaster of after a vacuum cut short by a crash
    ("tcp", 51058),  # a key nobody was dmaster of: two members cut apart during a recovery
    ("tcp", 1598),  # an append re-sent across a recovery that purged it took effect twice
    ("vs", 6080),  # a minority view purged the majority's entries, and its copy was taken
    ("vs", 3216605),  # a database attached after its member's offer: joiners dropped it
    ("tcp", 3244027),  # acknowledged commit lost: a hung leader's stored epoch matched theirs
    ("tcp", 3234633),  # liveness: a healthy node banned for a failure a stopped leader read late
    ("tcp", 3526429),  # a hand-over after a reserved record's clients failed outside any guard
    ("vs", 8615281),  # two generations in one view: a joiner dropped a forced recovery
    ("vs", 40044864),  # volatile write lost: a stalled member's copy taken over its origin's
    ("tcp", 1287932),  # stale read: a grant to a peer dropped on an error on our side only
    ("tcp", 1333952),  # (the same, a purged queue entry read)
    ("vs", 1588045),  # the checker: overlapping chain holds made a node leave, purging entries
    ("tcp", 174),  # a dead client's entry kept for good: a pushed list not purged
]


@pytest.mark.parametrize(("mode", "seed"), FOUND)
def test_seeds_that_found_bugs_pass(mode: str, seed: int) -> None:
    """As they were found (callbacks in creation order; or interleaved, clients
    inside their node; no Samba clients; views changed at once), and as
    campaigns run schedules now."""
    old = " --no-samba --all-or-none --instant-views"
    variants = (
        (Variant(fifo=True, samba=False, agreed=False, reform=False), " --fifo" + old),
        (Variant(apart=False, samba=False, agreed=False, reform=False), " --clients-inside" + old),
        (Variant(reform=False), " --instant-views"),
        (Variant(), ""),
    )
    for variant, flag in variants:
        outcome = simulate(seed, mode, variant=variant)
        assert outcome.ok, (
            f"python -m tools.simulate --mode {mode} --seed {seed}{flag} -v",
            outcome.violations,
        )


#: vs seeds that pass only on the network as it is now (corosync's ring
#: re-forms after its timeouts; `--instant-views` replays the old one).
AS_CAMPAIGNS_RUN_NOW = [
    # A stale read by a member cut off from the others, found while the
    # network changed views at once: the model's error as much as the
    # lease's. The lease now ends before the ring re-forms
    # (`transport.base.lease_timing`); with views at once any lease fails.
    40067098,
    40099512,
    # The model's own: a crash during a cut that healed in time left two
    # members of one view with different streams (`ViewLayer._crash_cut`).
    44091179,
]


@pytest.mark.parametrize("seed", AS_CAMPAIGNS_RUN_NOW)
def test_seeds_found_on_the_re_forming_ring_pass(seed: int) -> None:
    outcome = simulate(seed, "vs")
    assert outcome.ok, (f"python -m tools.simulate --mode vs --seed {seed} -v", outcome.violations)


@pytest.mark.parametrize("mode", ["tcp", "vs"])
def test_same_seed_same_trace(mode: str) -> None:
    first, second = simulate(7, mode), simulate(7, mode)
    assert first.trace == second.trace
    assert first.violations == second.violations
    assert len(first.trace) > 30 and any("fault:" in line for line in first.trace)
    assert simulate(8, mode).trace != first.trace


def _trace_in_new_process(mode: str, seed: int, hash_seed: int) -> list[str]:
    code = (
        "import json, sys\n"
        "from tools.sim.schedule import simulate\n"
        "print(json.dumps(simulate(int(sys.argv[2]), sys.argv[1]).trace))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, mode, str(seed)],
        env={**os.environ, "PYTHONHASHSEED": str(hash_seed)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    trace: list[str] = json.loads(proc.stdout.splitlines()[-1])
    return trace


@pytest.mark.parametrize(("mode", "seed"), [("tcp", 23), ("vs", 7)])
def test_a_seed_replays_alike_in_any_process(mode: str, seed: int) -> None:
    """A replayed seed must reproduce what the campaign saw, in another process,
    whose hash seed (and so the order a set of bytes iterates in) differs:
    tcp seed 23 diverged while vacuuming kept its candidates in a set."""
    first = _trace_in_new_process(mode, seed, 1)
    assert first == _trace_in_new_process(mode, seed, 2)
    assert len(first) > 30


def _caught(mode: str, expected: str) -> list[str]:
    """Violations of fault-free schedules mentioning `expected`."""
    found = []
    for seed in MUTANT_SEEDS:
        found += [v for v in simulate(seed, mode, {}).violations if expected in v]
    return found


def test_fault_free_schedules_pass() -> None:
    """The control for the mutants below: unbroken engines pass these schedules."""
    for mode in ("tcp", "vs"):
        for seed in MUTANT_SEEDS:
            outcome = simulate(seed, mode, {})
            assert outcome.ok, (mode, seed, outcome.violations)
            assert outcome.ops > 10 and not outcome.faults


def test_a_lost_store_unlock_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """tcp: `store_unlock` acknowledged without storing breaks the increments."""
    original = migration.MigrationEngine.unlock

    def forgetful(self: Any, db: Any, key: bytes, session: object, value: Any) -> None:
        return original(self, db, key, session, None)

    monkeypatch.setattr(migration.MigrationEngine, "unlock", forgetful)
    assert _caught("tcp", "not linearizable")


@pytest.mark.parametrize("mode", ["tcp", "vs"])
def test_a_node_that_stops_itself_is_caught(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug the daemon would exit on (`Node.fail`: here node 1's handling of a
    view change) is a violation, although the node catches it and the
    transport's callback no longer raises."""
    on_view = liveness.Liveness.on_view

    def broken(self: liveness.Liveness, view: Any) -> None:
        if self.node.pnn == 1:
            raise RuntimeError("a bug")
        on_view(self, view)

    monkeypatch.setattr(liveness.Liveness, "on_view", broken)
    assert _caught(mode, "node 1 stopped itself: handling view")


def test_entries_of_departed_runs_left_after_the_faults_are_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tcp: a purge that never runs leaves dead clients' entries in the lists;
    the history allows a purge to be left out, the final check does not."""
    monkeypatch.setattr(dmaster_calls.DmasterCalls, "purge", lambda self, owners, pushed: 0)
    caught = [v for v in simulate(174, "tcp").violations if "entries of departed runs" in v]
    assert caught


def test_a_replica_skipping_writes_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """vs: one node that does not apply stores from the ordered stream diverges."""
    original = replica.Replica._apply_store

    def skipping(self: Any, origin: int, args: dict[str, Any]) -> None:
        if self.pnn != 2:
            original(self, origin, args)

    monkeypatch.setattr(replica.Replica, "_apply_store", skipping)
    caught = _caught("vs", "differs between nodes")
    assert caught and any("not linearizable" in v for v in _caught("vs", "key v:"))


def test_a_node_dropping_committed_records_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """tcp: a node whose two-phase commit silently drops records loses acknowledged
    commits: its copy differs and reads through it miss them."""
    original = transactions.TransactionEngine.prepare

    def lossy(self: Any, db: Any, records: Any, commit_id: int, generation: int) -> None:
        if self.node.pnn == 0:
            records = records[-1:]  # only the sequence number
        original(self, db, records, commit_id, generation)

    monkeypatch.setattr(transactions.TransactionEngine, "prepare", lossy)
    assert _caught("tcp", "p database differs between nodes")
    assert _caught("tcp", "key p:")


def test_persistent_lists_written_outside_a_commit_are_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """vs: a change of a persistent list is a transaction (the sequence number and
    the history, which recovery compares, move); a member that writes it as a
    plain record diverges."""
    original = replica.Replica._write_entries

    def plain(self: Any, db: Any, key: bytes, before: Any, value: bytes, origin: int) -> Any:
        if self.pnn == 2 and db.replicated:
            return self.write(db, key, value, origin)
        return original(self, db, key, before, value, origin)

    monkeypatch.setattr(replica.Replica, "_write_entries", plain)
    assert _caught("vs", "p database differs between nodes")


@pytest.mark.parametrize("mode", ["tcp", "vs"])
def test_a_broken_condition_is_caught(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An off-by-one in `max_entries` (one entry too many) breaks the entry lists'
    history: the simulator's own model of the conditions disagrees."""
    original = conditions.REGISTRY["max_entries"]

    def lenient(record: conditions.RecordView, new: Any, limit: int) -> Any:
        return original.check(record, new, limit + 1)

    broken = dataclasses.replace(original, check=lenient)
    monkeypatch.setitem(conditions.REGISTRY, "max_entries", broken)
    assert _caught(mode, ":q")  # an entry list, volatile (v:) or persistent (p:)


#: vs schedules of hangs alone in which a member resumed after its expel gets
#: a persistent read before it reaches the expel in its backlog.
RESUMED_READ_SEEDS = [13000005, 13000022, 13000049]


def test_a_resumed_member_answering_from_its_stale_copy_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """vs: without its lease (`confirmed_until`) a member resumed after the others
    expelled it answers a persistent read from its copy, older than commits
    they acknowledged meanwhile: `tools.chaos` found it on real daemons
    (FOUND.md); the simulator finds it since clients run apart from their node."""
    for seed in RESUMED_READ_SEEDS:
        outcome = simulate(seed, "vs", {"hang": 1})
        assert outcome.ok, (seed, outcome.violations)
    monkeypatch.setattr(MemoryTransport, "confirmed_until", lambda self: None)
    caught = [
        v
        for seed in RESUMED_READ_SEEDS
        for v in simulate(seed, "vs", {"hang": 1}).violations
        if v.startswith("key p:") and "not linearizable" in v
    ]
    assert caught


#: vs schedules (chain holds and hangs) in which a member resumed after an
#: expel rejoined while a Samba client held a chain of its file
GATED_VIEW_SEEDS = (20000974, 20001866)


def test_a_member_serving_a_view_its_engine_has_not_applied_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """vs: a view change waits in the stream gate while a Samba client holds a
    chain; a member expelled meanwhile rejoins at once, and its lease alone
    would let it answer persistent reads from the view before, older than
    commits the others acknowledged without it. `tools.chaos` found it on
    real daemons (FOUND.md); the simulator finds it since its clients hold
    chains (`faults.Faults._chain_hold`), and `StreamMembership.confirmed`'s
    view check is what stops it."""
    kinds = {"chain_hold": 1, "hang": 1}
    for seed in GATED_VIEW_SEEDS:
        outcome = simulate(seed, "vs", kinds)
        assert outcome.ok, (seed, outcome.violations)

    def lease_only(self: stream.StreamMembership) -> bool:
        until = self.node.transport.confirmed_until()
        return until is None or self.node.now() < until

    monkeypatch.setattr(stream.StreamMembership, "confirmed", lease_only)
    for seed in GATED_VIEW_SEEDS:
        caught = [
            v
            for v in simulate(seed, "vs", kinds).violations
            if v.startswith("key p:") and "not linearizable" in v
        ]
        assert caught, seed


#: vs schedules of crashes in which a node crashed right after delivering its
#: own volatile write, which no survivor got (`faults._at_delivery`)
AT_DELIVERY_SEEDS = (48, 92)


def test_volatile_writes_acknowledged_before_they_are_stable_are_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """vs with StableVolatileWrites=1: a volatile write acknowledged on its
    origin's delivery (not once every member applied it) is lost when the
    origin crashes before the others got it, which corosync's agreed order
    allows and the memory network now does (`ViewLayer._lose_suffix`). The
    simulator finds it since half its crashes strike right after the node
    delivered its own broadcast."""
    for seed in AT_DELIVERY_SEEDS:
        outcome = simulate(seed, "vs", {"crash": 1})
        assert outcome.ok, (seed, outcome.violations)
    monkeypatch.setattr(engine.OrderedEngine, "_volatile_write", lambda self, args: args)
    for seed in AT_DELIVERY_SEEDS:
        violations = simulate(seed, "vs", {"crash": 1}).violations
        assert any(v.startswith("key v:") and "not linearizable" in v for v in violations), seed
