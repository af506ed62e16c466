"""The simulator's event loop: virtual time, and stopping one node (SIGSTOP).

Whatever a stopped node would run (its timers, its tasks, what the network
delivers to it) waits and then runs in its original order; everybody else
carries on. Over VS, a stopped member must not block the group's view
changes: corosync, not the process, takes part in the membership protocol.
"""

from __future__ import annotations

import asyncio
import contextvars
import random

from tools.sim.loop import NODE, VirtualTimeLoop
from transport.base import TransportOptions, View
from transport.memory import MemoryTransport
from transport.memory_network import MemoryNetwork


def node_context(pnn: int) -> contextvars.Context:
    ctx = contextvars.copy_context()
    ctx.run(NODE.set, pnn)
    return ctx


def test_virtual_time_costs_nothing() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(600)
        return loop.time()

    loop = VirtualTimeLoop()
    try:
        assert loop.run_until_complete(main()) == 600
    finally:
        loop.close()


def test_a_stopped_node_runs_nothing_until_it_continues() -> None:
    seen: list[tuple[str, float]] = []

    async def ticker(name: str) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(3):
            await asyncio.sleep(1.0)
            seen.append((name, loop.time()))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        one = loop.create_task(ticker("one"), context=node_context(1))
        two = loop.create_task(ticker("two"), context=node_context(2))
        await asyncio.sleep(0.5)
        loop.stop_node(1)
        await asyncio.sleep(2.0)
        assert loop.is_stopped(1)
        loop.cont_node(1)
        await asyncio.gather(one, two)

    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert [t for n, t in seen if n == "two"] == [1.0, 2.0, 3.0]
    # Node 1's first tick was due at 1.0 but ran when it continued, at 2.5.
    assert [t for n, t in seen if n == "one"] == [2.5, 3.5, 4.5]


def test_vs_view_changes_do_not_wait_for_a_stopped_member() -> None:
    views: dict[int, list[tuple[int, ...]]] = {0: [], 1: [], 2: []}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        net = MemoryNetwork(seed=1, total_order=True)
        eps = []
        for pnn in range(3):
            ep = MemoryTransport(pnn, ["a", "b", "c"], TransportOptions(), network=net)

            def on_view(view: View, pnn: int = pnn) -> None:
                views[pnn].append(view.members)

            ep.on_view = on_view
            await loop.create_task(ep.start(), context=node_context(pnn))
            eps.append(ep)
        await asyncio.sleep(1)
        loop.stop_node(2)
        net.hang(2)
        net.crash(0)
        await asyncio.sleep(1)
        assert views[1][-1] == (1, 2), "a stopped member held the view change back"
        assert views[2][-1] == (0, 1, 2), "a stopped member processed a view"
        loop.cont_node(2)
        net.resume(2)
        await asyncio.sleep(1)
        assert views[2][-1] == (1, 2)

    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_vs_expels_a_stopped_member_unless_told_to_keep_it() -> None:
    """The vs transport expels a member that stops reading after the keepalive
    limit; corosync alone (`expel_stopped=False`) keeps it in every view."""
    for expel in (True, False):
        views: dict[int, list[tuple[int, ...]]] = {0: [], 1: [], 2: []}

        async def main(expel: bool = expel, views: dict = views) -> None:
            loop = asyncio.get_running_loop()
            assert isinstance(loop, VirtualTimeLoop)
            net = MemoryNetwork(seed=2, total_order=True, expel_stopped=expel)
            for pnn in range(3):
                ep = MemoryTransport(pnn, ["a", "b", "c"], TransportOptions(), network=net)

                def on_view(view: View, pnn: int = pnn) -> None:
                    views[pnn].append(view.members)

                ep.on_view = on_view
                await loop.create_task(ep.start(), context=node_context(pnn))
            await asyncio.sleep(1)
            loop.stop_node(2)
            net.hang(2)
            await asyncio.sleep(net.detect_after() + 1)
            assert views[0][-1] == ((0, 1) if expel else (0, 1, 2))
            loop.cont_node(2)
            net.resume(2)
            await asyncio.sleep(1)
            assert views[0][-1] == views[2][-1] == (0, 1, 2)
            if expel:  # it saw itself expelled before it came back
                assert (2,) in views[2]

        loop = VirtualTimeLoop()
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()


def _ran(interleave: random.Random | None) -> list[tuple[int, int]]:
    """The order in which ten callbacks of each of three nodes, made in turn, ran."""
    ran: list[tuple[int, int]] = []
    loop = VirtualTimeLoop(interleave)
    try:
        for i in range(10):
            for pnn in range(3):
                loop.call_soon(ran.append, (pnn, i), context=node_context(pnn))
        loop.run_until_complete(asyncio.sleep(0.1))
    finally:
        loop.close()
    return ran


def test_interleaving_reorders_nodes_but_never_one_nodes_callbacks() -> None:
    made = [(pnn, i) for i in range(10) for pnn in range(3)]
    assert _ran(None) == made  # without interleaving: creation order
    orders = [_ran(random.Random(seed)) for seed in range(5)]
    for ran in orders:
        assert sorted(ran) == sorted(made)
        for pnn in range(3):  # each node's callbacks in the order they were made
            assert [i for p, i in ran if p == pnn] == list(range(10))
    assert any(ran != made for ran in orders)
    assert len({tuple(ran) for ran in orders}) > 1  # the seed decides
    assert _ran(random.Random(3)) == orders[3]  # and decides alike every time


def _resumed(interleave: random.Random | None) -> list[str]:
    """The order in which a stopped node ran, once continued, three deliveries
    and three other callbacks that came due in turn while it was stopped."""
    ran: list[str] = []

    class Link:  # what `backlog` recognises, as SimCluster recognises its network
        def deliver(self, what: str) -> None:
            ran.append(what)

    link = Link()
    loop = VirtualTimeLoop(interleave)
    try:
        loop.stop_node(1)
        for i in range(3):
            loop.call_soon(link.deliver, f"delivery {i}", context=node_context(1))
            loop.call_soon(ran.append, f"request {i}", context=node_context(1))
        loop.run_until_complete(asyncio.sleep(0.1))
        assert ran == []
        loop.cont_node(1, backlog=lambda h: getattr(h._callback, "__self__", None) is link)  # type: ignore[attr-defined]
        loop.run_until_complete(asyncio.sleep(0.1))
    finally:
        loop.close()
    return ran


def test_a_resumed_node_takes_its_backlog_among_its_other_work() -> None:
    """A resumed process reads its sockets in the order the kernel reports them
    and a batch of its corosync backlog per turn: a request that came in last
    may be handled before a view change queued first (tools.chaos, vs seed 503)."""
    made = [f"{what} {i}" for i in range(3) for what in ("delivery", "request")]
    assert _resumed(None) == made  # without interleaving: as they came due
    orders = [_resumed(random.Random(seed)) for seed in range(8)]
    for ran in orders:
        assert sorted(ran) == sorted(made)
        for what in ("delivery", "request"):  # each source keeps its order
            assert [r for r in ran if r.startswith(what)] == [f"{what} {i}" for i in range(3)]
    # Some request runs before a delivery that was queued before it.
    assert any(ran.index("request 2") < ran.index("delivery 2") for ran in orders)
    assert _resumed(random.Random(5)) == orders[5]


def test_vs_memory_lease_lapses_while_stopped_and_returns_with_a_tick() -> None:
    """`MemoryTransport.confirmed_until`, as the vs transport's: an idle member
    stays confirmed by its ticks; a stopped one's lease runs out, and once it
    continues it is confirmed again only after it has seen itself expelled
    and rejoined, never from before."""
    seen: list[tuple[str, float | None, tuple[int, ...]]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        net = MemoryNetwork(seed=3, total_order=True)
        options = TransportOptions(keepalive_interval=0.1, keepalive_limit=3)
        eps = []
        for pnn in range(3):
            ep = MemoryTransport(pnn, ["a", "b", "c"], options, network=net)
            await loop.create_task(ep.start(), context=node_context(pnn))
            eps.append(ep)
        await asyncio.sleep(2)  # idle: only ticks
        for ep in eps:
            until = ep.confirmed_until()
            assert until is not None and loop.time() < until <= loop.time() + 0.2
        loop.stop_node(2)
        net.hang(2)
        await asyncio.sleep(1)
        until = eps[2].confirmed_until()
        assert until is not None and until < loop.time()  # stale: must not serve

        def probe() -> None:
            seen.append(("probe", eps[2].confirmed_until(), eps[2].view.members))

        loop.call_soon(probe, context=node_context(2))  # parked behind its backlog
        loop.cont_node(2)
        net.resume(2)
        await asyncio.sleep(1)
        assert seen and seen[0][1] is not None and seen[0][1] < loop.time() - 1
        assert eps[2].view.members == (0, 1, 2)
        assert loop.time() < (eps[2].confirmed_until() or 0.0)

    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def _cut_off_member(seed: int, heal_after: float | None) -> dict[str, object]:
    """Three vs members on a network whose ring re-forms 0.2 s after a cut;
    the link 0-2 is cut (and restored after `heal_after`), and member 0
    broadcasts during the cut. What each saw, and when."""
    seen: dict[str, object] = {"views": [], "got": []}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        net = MemoryNetwork(seed=seed, total_order=True, ring_timeout=0.2)
        options = TransportOptions(keepalive_interval=0.1, keepalive_limit=5)
        eps: list[MemoryTransport] = []
        for pnn in range(3):
            ep = MemoryTransport(pnn, ["a", "b", "c"], options, network=net)

            def on_view(view: View, pnn: int = pnn) -> None:
                seen["views"].append((pnn, view.members, loop.time()))  # type: ignore[attr-defined]
                if pnn == 2:  # the send time of its latest tick that came back
                    seen["confirmed2"] = eps[2]._confirmed_sent

            def on_message(src: int, payload: bytes, pnn: int = pnn) -> None:
                seen["got"].append((pnn, payload, loop.time()))  # type: ignore[attr-defined]

            ep.on_view, ep.on_message = on_view, on_message
            await loop.create_task(ep.start(), context=node_context(pnn))
            eps.append(ep)
        await asyncio.sleep(1)  # idle: only ticks
        seen["views"].clear()  # type: ignore[attr-defined]
        seen["cut"] = loop.time()
        net.cut(0, 2)
        seen["lease2"] = eps[2].confirmed_until()
        await asyncio.sleep(0.05)
        eps[0].broadcast(b"during the cut")
        if heal_after is not None:
            await asyncio.sleep(heal_after - 0.05)
            net.restore(0, 2)
        await asyncio.sleep(1)
        seen["lease2 after"] = eps[2].confirmed_until()

    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return seen


def test_vs_memory_cut_changes_views_only_once_every_cut_off_lease_ran_out() -> None:
    """As corosync: a cut breaks the ring, which then orders nothing and
    changes no view until it re-forms (`MemoryNetwork.ring_timeout`, its
    token and consensus timeouts). The member cut off can no longer renew
    its lease, and it runs out before the others' view leaves it out
    (`transport.base.lease_timing`): tools.simulate, vs seed 40067098, found
    a stale read when views changed at once."""
    for seed in range(6):
        seen = _cut_off_member(seed, heal_after=None)
        cut, lease = seen["cut"], seen["lease2"]
        assert isinstance(cut, float) and isinstance(lease, float)
        views = seen["views"]
        assert isinstance(views, list)
        without_2 = [t for pnn, members, t in views if pnn in (0, 1) and 2 not in members]
        assert len(without_2) == 2, views
        assert lease < cut + 0.2 <= min(without_2), (lease, cut, views)
        assert (2, (2,)) in [(pnn, members) for pnn, members, _ in views]
        # Nothing member 2 sent after the cut came back before it saw itself
        # alone: the broken ring ordered none of it.
        confirmed = seen["confirmed2"]
        assert isinstance(confirmed, float) and confirmed < cut, (confirmed, cut)
        # The broadcast waited for the ring: member 1 got it in the new view.
        got = [(pnn, t) for pnn, payload, t in seen["got"] if payload == b"during the cut"]  # type: ignore[attr-defined]
        assert sorted(pnn for pnn, _ in got) == [0, 1], got
        view_01 = min(t for pnn, members, t in views if pnn == 1 and members == (0, 1))
        assert dict(got)[1] > view_01, (got, views)


def test_vs_memory_cut_healed_before_the_ring_timeout_changes_nothing() -> None:
    for seed in range(6):
        seen = _cut_off_member(seed, heal_after=0.1)
        assert seen["views"] == []
        got = sorted(pnn for pnn, payload, _ in seen["got"] if payload == b"during the cut")  # type: ignore[attr-defined]
        assert got == [0, 1, 2]
        after = seen["lease2 after"]
        assert isinstance(after, float) and after > seen["cut"] + 1  # type: ignore[operator]
