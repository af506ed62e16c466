"""The deterministic scheduler and the memory network it drives.

Simulation-based tests of the engines are only worth anything if a failing
seed can be replayed exactly, so determinism is tested first; then the
network-level guarantees that the conformance suite cannot reach with real
timing (partition/heal, random cuts on crash) are checked across many seeds.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tools.sim.scheduler import SimScheduler
from transport.base import TransportOptions, View
from transport.memory import MemoryTransport
from transport.memory_network import MemoryNetwork

Event = tuple[str, int, object]


def make_cluster(
    n: int,
    seed: int,
    *,
    total_order: bool = False,
    trace: bool = False,
    agreed_only: bool = False,
    ring_timeout: float = 0.0,
) -> tuple[SimScheduler, MemoryNetwork, list[MemoryTransport], list[list[Event]]]:
    """N joined transports on a fresh simulated network, each logging what it sees."""
    sched = SimScheduler(seed, trace=trace)
    net = MemoryNetwork(
        sched,
        total_order=total_order,
        latency=(0.001, 0.010),
        agreed_only=agreed_only,
        ring_timeout=ring_timeout,
    )
    nodes = [f"n{i}" for i in range(n)]
    eps: list[MemoryTransport] = []
    logs: list[list[Event]] = []
    for pnn in range(n):
        ep = MemoryTransport(pnn, nodes, TransportOptions(), network=net)
        log: list[Event] = []

        def on_message(src: int, payload: bytes, log: list[Event] = log) -> None:
            log.append(("msg", src, payload))

        def on_view(view: View, log: list[Event] = log) -> None:
            log.append(("view", view.view_id, view.members))

        ep.on_message = on_message
        ep.on_view = on_view
        ep.join()
        eps.append(ep)
        logs.append(log)
    sched.run_until_idle()
    return sched, net, eps, logs


def chatter(seed: int, total_order: bool = False) -> list[str]:
    """A busy run with a crash in the middle; returns the trace."""
    sched, net, eps, _ = make_cluster(4, seed, total_order=total_order, trace=True)
    for i in range(20):
        for ep in eps:
            ep.broadcast(f"b{ep.pnn}.{i}".encode())
            ep.send((ep.pnn + 1) % 4, f"s{ep.pnn}.{i}".encode())
        sched.run_for(0.002)
        if i == 10:
            net.crash(3)
    sched.run_until_idle()
    assert sched.trace is not None
    return sched.trace


def test_scheduler_orders_by_time_then_insertion() -> None:
    sched = SimScheduler(1)
    out: list[str] = []
    sched.call_later(0.5, out.append, "late")
    for tag in "abc":
        sched.call_later(0.1, out.append, tag)
    handle = sched.call_later(0.1, out.append, "cancelled")
    sched.call_soon(out.append, "soon")
    handle.cancel()
    assert sched.run_until_idle() == 5
    assert out == ["soon", "a", "b", "c", "late"]
    assert sched.time() == 0.5


def test_run_for_advances_clock_and_stops_at_the_limit() -> None:
    sched = SimScheduler(1)
    out: list[float] = []
    for t in (0.1, 0.2, 0.3):
        sched.call_later(t, lambda: out.append(sched.time()))
    sched.run_for(0.25)
    assert out == [0.1, 0.2]
    assert sched.time() == 0.25
    sched.run_for(1.0)
    assert out == [0.1, 0.2, 0.3]
    assert sched.time() == 1.25


def test_same_seed_same_trace() -> None:
    for total_order in (False, True):
        first = chatter(7, total_order)
        assert len(first) > 100
        assert chatter(7, total_order) == first


def test_different_seed_different_trace() -> None:
    for total_order in (False, True):
        traces = {tuple(chatter(seed, total_order)) for seed in range(4)}
        assert len(traces) > 1


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_fifo_per_pair_under_random_delay(seed: int) -> None:
    """Latency is random per message, yet no message overtakes an earlier one on its link."""
    sched, _, eps, logs = make_cluster(3, seed)
    for i in range(50):
        for ep in eps:
            for dst in range(3):
                ep.send(dst, f"{ep.pnn}>{dst}:{i}".encode())
        sched.run_for(sched.random.uniform(0, 0.003))
    sched.run_until_idle()
    for dst, log in enumerate(logs):
        for src in range(3):
            got = [p for kind, s, p in log if kind == "msg" and s == src]
            assert got == [f"{src}>{dst}:{i}".encode() for i in range(50)]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_crash_cuts_each_link_after_a_prefix(seed: int) -> None:
    """FIFO mode: survivors may get different amounts of the dead node's tail,
    but always a prefix, and always before the view change."""
    sched, net, eps, logs = make_cluster(3, seed)
    for i in range(30):
        eps[2].broadcast(f"{i}".encode())
    sched.run_for(sched.random.uniform(0, 0.02))
    net.crash(2)
    sched.run_until_idle()
    for log in logs[:2]:
        got = [p for kind, s, p in log if kind == "msg" and s == 2]
        assert got == [f"{i}".encode() for i in range(len(got))]
        last_view = max(i for i, e in enumerate(log) if e[0] == "view")
        assert log[last_view][2] == (0, 1)
        assert all(not (e[0] == "msg" and e[1] == 2) for e in log[last_view:])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_vs_crash_all_or_nothing(seed: int) -> None:
    """VS mode: identical streams on the survivors, view change at the same spot."""
    sched, net, eps, logs = make_cluster(3, seed, total_order=True)
    for i in range(30):
        for ep in eps:
            ep.broadcast(f"{ep.pnn}:{i}".encode())
        if i == 15:
            sched.run_for(sched.random.uniform(0, 0.02))
            net.crash(2)
    sched.run_until_idle()
    # Node 0 joined first and saw a singleton view; compare from the full view on.
    full = [next(i for i, e in enumerate(log) if e[2] == (0, 1, 2)) for log in logs[:2]]
    tails = [log[i:] for log, i in zip(logs, full, strict=False)]
    assert tails[0] == tails[1]
    views = [e for e in logs[0] if e[0] == "view"]
    assert views[-1][2] == (0, 1)
    for src in range(2):
        got = [p for kind, s, p in logs[0] if kind == "msg" and s == src]
        assert got == [f"{src}:{i}".encode() for i in range(30)]


def _crash_after_own_delivery(seed: int) -> tuple[list[list[Event]], int]:
    """Agreed order: node 2 broadcasts, then crashes at a random moment."""
    sched, net, eps, logs = make_cluster(3, seed, total_order=True, agreed_only=True)
    for i in range(10):
        eps[2].broadcast(f"2:{i}".encode())
        eps[0].broadcast(f"0:{i}".encode())
    sched.run_for(sched.random.uniform(0, 0.02))
    own = [p for kind, s, p in logs[2] if kind == "msg" and s == 2]
    net.crash(2)
    sched.run_until_idle()
    return logs, len(own)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_vs_agreed_only_survivors_agree_on_a_prefix(seed: int) -> None:
    """With `agreed_only`, survivors that go on together still deliver the
    same stream, in which the crashed node's messages are a prefix of what it
    sent, and their own messages are all there."""
    logs, _ = _crash_after_own_delivery(seed)
    full = [next(i for i, e in enumerate(log) if e[2] == (0, 1, 2)) for log in logs[:2]]
    tails = [log[i:] for log, i in zip(logs, full, strict=False)]
    assert tails[0] == tails[1]
    got = [p for kind, s, p in tails[0] if kind == "msg" and s == 2]
    assert got == [f"2:{i}".encode() for i in range(len(got))]
    assert [p for kind, s, p in tails[0] if kind == "msg" and s == 0] == [
        f"0:{i}".encode() for i in range(10)
    ]


def test_vs_agreed_only_a_sender_may_deliver_what_the_survivors_never_get() -> None:
    """What the stability acks are for: the crashed sender delivered (and
    could have acknowledged) messages that no survivor ever delivers."""
    lost = []
    for seed in range(300):  # rare: the sender's own link must be the faster one
        logs, own = _crash_after_own_delivery(seed)
        got = sum(1 for kind, s, _p in logs[0] if kind == "msg" and s == 2)
        if got < own:
            lost.append(seed)
    assert lost


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_vs_a_crash_during_a_cut_that_heals_in_time_loses_the_same_for_all(seed: int) -> None:
    """vs seed 44091179: node 2 crashes while the link 0-1 is cut, and the cut
    heals before the broken ring re-forms, so nodes 0 and 1 go on together:
    they must have delivered the same of node 2's messages (the crash cut
    was decided per side of the cut, and the two sides went into one view
    with different streams)."""
    sched, net, eps, logs = make_cluster(
        3, seed, total_order=True, agreed_only=True, ring_timeout=0.05
    )
    for i in range(10):
        eps[2].broadcast(f"2:{i}".encode())
        eps[0].broadcast(f"0:{i}".encode())
    sched.run_for(sched.random.uniform(0, 0.02))
    net.cut(0, 1)
    net.crash(2)
    sched.run_for(sched.random.uniform(0, 0.04))
    net.restore(0, 1)
    sched.run_until_idle()
    assert eps[0].view == eps[1].view and eps[0].view.members == (0, 1)
    full = [next(i for i, e in enumerate(log) if e[2] == (0, 1, 2)) for log in logs[:2]]
    tails = [log[i:] for log, i in zip(logs, full, strict=False)]
    assert tails[0] == tails[1]


def test_vs_a_restarted_member_sends_nothing_its_old_run_left_in_a_broken_ring() -> None:
    """What a broken ring held back of a member that crashed is its old run's:
    a new run that joins before the ring re-forms must not send it as its own."""
    for seed in range(10):
        sched, net, eps, logs = make_cluster(3, seed, total_order=True, ring_timeout=0.05)
        net.cut(0, 1)  # the ring is broken: what node 2 sends now waits
        for i in range(5):
            eps[2].broadcast(f"old:{i}".encode())
        sched.run_for(0.02)
        net.crash(2)
        new = MemoryTransport(2, ["n0", "n1", "n2"], TransportOptions(), network=net)
        got: list[tuple[int, bytes]] = []

        def on_message(src: int, payload: bytes, got: list[tuple[int, bytes]] = got) -> None:
            got.append((src, payload))

        new.on_message = on_message
        new.join()
        sched.run_until_idle()
        assert eps[0].view.members == new.view.members == (0, 2)  # 0-1 still cut
        old = [f"old:{i}".encode() for i in range(5)]
        stale = [p for log in logs[:2] for kind, _, p in log if kind == "msg" and p in old]
        assert not [m for m in got if m[1] in old] and not stale, (seed, got, stale)


def test_vs_a_joiner_that_reaches_part_of_a_view_splits_it_after_the_consensus_time() -> None:
    """vs seed 40067098, on the network alone: node 0 restarts while cut
    from node 2, so the view [1, 2] must split. corosync puts the ring in
    gather at the join and counts node 2 failed once its consensus timeout
    has passed; meanwhile the old ring orders nothing. The network used to
    split it at once, while node 2's lease (three quarters of the shortest
    re-forming time after its last message that came back) still let it
    serve."""
    for seed in range(5):
        sched, net, eps, logs = make_cluster(3, seed, total_order=True, ring_timeout=0.22)
        net.crash(0)
        sched.run_until_idle()
        assert eps[1].view.members == eps[2].view.members == (1, 2)
        split_at: list[float] = []

        def timed(
            view: View,
            at: list[float] = split_at,
            clock: SimScheduler = sched,
            seen: Any = eps[1].on_view,
        ) -> None:
            at.append(clock.time())
            seen(view)

        eps[1].on_view = timed
        net.cut(0, 2)
        joined = sched.time()
        new = MemoryTransport(0, ["n0", "n1", "n2"], TransportOptions(), network=net)
        new.join()
        sched.run_for(0.01)
        eps[2].broadcast(b"during")
        sched.run_until_idle()
        assert eps[1].view.members == new.view.members == (0, 1), seed
        assert eps[2].view.members == (2,), seed
        # Split after the consensus time (0.12 s of the 0.22 s), not the cut's.
        assert len(split_at) == 1 and 0.12 <= split_at[0] - joined < 0.15, (seed, split_at)
        assert ("msg", 2, b"during") not in logs[1], seed  # never ordered in [1, 2]


def test_partition_and_heal() -> None:
    for total_order in (False, True):
        sched, net, eps, logs = make_cluster(4, 3, total_order=total_order)
        assert all(ep.view.members == (0, 1, 2, 3) for ep in eps)
        net.partition([{0, 1}, {2, 3}])
        sched.run_until_idle()
        assert [ep.view.members for ep in eps] == [(0, 1), (0, 1), (2, 3), (2, 3)]
        start = [len(log) for log in logs]
        eps[0].broadcast(b"left")
        eps[2].broadcast(b"right")
        eps[0].send(2, b"across")  # not in the view: silently dropped
        sched.run_until_idle()
        new = [log[n:] for log, n in zip(logs, start, strict=True)]
        assert new[0] == new[1] == [("msg", 0, b"left")]
        assert new[2] == new[3] == [("msg", 2, b"right")]
        net.heal()
        sched.run_until_idle()
        assert all(ep.view.members == (0, 1, 2, 3) for ep in eps)
        if total_order:
            assert len({ep.view.view_id for ep in eps}) == 1
        eps[3].broadcast(b"all")
        sched.run_until_idle()
        assert all(log[-1] == ("msg", 3, b"all") for log in logs)


def test_view_ids_grow_and_agree_in_vs_mode() -> None:
    sched, net, eps, logs = make_cluster(3, 5, total_order=True)
    net.crash(1)
    sched.run_until_idle()
    v0 = [e for e in logs[0] if e[0] == "view"]
    v2 = [e for e in logs[2] if e[0] == "view"]
    assert v0[-1] == v2[-1]
    ids = [e[1] for e in v0]
    assert ids == sorted(set(ids))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), total_order=st.booleans())
def test_restarted_member_gets_nothing_of_its_old_incarnation(seed: int, total_order: bool) -> None:
    """A crash followed by a quick restart of the same pnn must still look
    like a departure and a join to the others, and the new incarnation must
    never receive traffic meant for (or sent by) the old one."""
    sched, net, eps, logs = make_cluster(3, seed, total_order=total_order)
    for i in range(10):
        eps[2].broadcast(b"old%d" % i)
    sched.run_for(sched.random.uniform(0, 0.01))
    net.crash(2)
    sched.run_for(sched.random.uniform(0, 0.01))
    new = MemoryTransport(2, ["a", "b", "c"], TransportOptions(), network=net)
    got: list[bytes] = []
    new.on_message = lambda src, payload: got.append(payload)
    new.join()
    sched.run_until_idle()
    assert [ep.view.members for ep in (eps[0], eps[1], new)] == [(0, 1, 2)] * 3
    for log in logs[:2]:
        assert (0, 1) in [e[2] for e in log if e[0] == "view"], "the crash went unnoticed"
    eps[0].broadcast(b"hello")
    sched.run_until_idle()
    assert got == [b"hello"]


# -- faults the simulator needs beyond crashes and clean partitions -------------------


def views(eps: list[MemoryTransport]) -> list[tuple[int, ...]]:
    return [ep.view.members for ep in eps]


def test_non_transitive_cut() -> None:
    """{0,2} and {1,2} connected, 0-1 cut: over FIFO links every endpoint has
    its own view (as with TCP); VS installs views of mutually connected groups."""
    sched, net, eps, _ = make_cluster(3, 1)
    net.cut(0, 1)
    sched.run_until_idle()
    assert views(eps) == [(0, 2), (1, 2), (0, 1, 2)]
    net.restore(0, 1)
    sched.run_until_idle()
    assert views(eps) == [(0, 1, 2)] * 3

    sched, net, eps, _ = make_cluster(3, 1, total_order=True)
    net.cut(0, 1)
    sched.run_until_idle()
    assert views(eps) == [(0, 2), (1,), (0, 2)]
    net.heal()
    sched.run_until_idle()
    assert views(eps) == [(0, 1, 2)] * 3


def test_one_end_of_a_cut_may_notice_it_late() -> None:
    """`noticed_late`: node 1 keeps node 0 in its view for that long, while
    node 0 has dropped it at once and nothing crosses the cut either way."""
    sched, net, eps, logs = make_cluster(3, 2)
    net.cut(0, 1, noticed_late=(1, 0.25))
    sched.run_for(0.1)
    assert views(eps) == [(0, 2), (0, 1, 2), (0, 1, 2)]
    eps[1].send(0, b"lost")
    sched.run_for(0.2)
    assert views(eps)[1] == (1, 2)
    assert ("msg", 1, b"lost") not in logs[0]
    net.restore(0, 1)
    sched.run_until_idle()
    assert views(eps) == [(0, 1, 2)] * 3
    net.cut(0, 1)  # the lag was for one cut only
    sched.run_for(0.05)
    assert views(eps) == [(0, 2), (1, 2), (0, 1, 2)]


def test_one_way_loss_is_held_until_detected() -> None:
    """Restored before the keepalive limit, a one-way loss only delays traffic;
    after it, the pair is cut and what waited is lost."""
    sched, net, eps, logs = make_cluster(2, 3)
    net.cut_oneway(0, 1, detect_after=1.0)
    eps[0].send(1, b"late")
    eps[1].send(0, b"back")
    sched.run_for(0.5)
    assert ("msg", 0, b"late") not in logs[1] and ("msg", 1, b"back") in logs[0]
    net.restore(0, 1)
    sched.run_until_idle()
    assert ("msg", 0, b"late") in logs[1]
    assert views(eps) == [(0, 1)] * 2

    sched, net, eps, logs = make_cluster(2, 3)
    net.cut_oneway(0, 1, detect_after=1.0)
    eps[0].send(1, b"lost")
    sched.run_for(0.9)
    assert views(eps) == [(0, 1)] * 2
    sched.run_for(0.2)
    sched.run_until_idle()
    assert views(eps) == [(0,), (1,)]
    assert ("msg", 0, b"lost") not in logs[1]
    net.restore(0, 1)
    sched.run_until_idle()
    assert views(eps) == [(0, 1)] * 2


def test_hung_node_is_dropped_after_the_keepalive_limit() -> None:
    """FIFO mode: peers give up on a silent node after `detect_after`, and
    take it back when it continues; a short hang goes unnoticed."""
    sched, net, eps, _ = make_cluster(3, 4)
    limit = net.detect_after()
    net.hang(2)
    sched.run_for(limit * 0.9)
    net.resume(2)
    sched.run_until_idle()
    assert views(eps) == [(0, 1, 2)] * 3
    net.hang(2)
    sched.run_for(limit * 1.1)
    sched.run_until_idle()
    assert views(eps)[:2] == [(0, 1), (0, 1)]
    net.resume(2)
    sched.run_until_idle()
    assert views(eps) == [(0, 1, 2)] * 3


def test_view_change_marker_survives_a_later_cut() -> None:
    """A view waits for a marker behind the departed peer's traffic; a second
    cut of the same link must not lose the marker (the view would never come)."""
    for seed in range(20):
        sched, net, eps, _ = make_cluster(3, seed)
        for i in range(5):
            eps[1].broadcast(b"%d" % i)
        net.cut(1, 2)
        net.crash(1)
        sched.run_until_idle()
        assert views(eps)[0] == (0, 2) and views(eps)[2] == (0, 2)


def test_slow_links() -> None:
    sched, net, eps, logs = make_cluster(2, 5)
    net.slow(1, (0.5, 0.5))
    eps[0].send(1, b"slow")
    sched.run_for(0.4)
    assert ("msg", 0, b"slow") not in logs[1]
    sched.run_for(0.2)
    assert ("msg", 0, b"slow") in logs[1]
