"""The CPG group's state machine (transport.cpg_group) without corosync.

A small in-test bus plays corosync: one agreed order of deliveries and
configuration changes, delivered to the processes in the group at each
position. Every process runs the real `Group` machine; the checks are the
virtual-synchrony promises the vs transport makes: the same views with the
same ids at the same positions everywhere, joiners brought up to date by a
state transfer, silent members expelled everywhere at once, and partitions
merged into one view."""

from __future__ import annotations

import itertools
import math
from collections import deque

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transport.base import View
from transport.cpg_group import Group
from transport.cpg_wire import (
    BROADCAST,
    HDR,
    K_ALIVE,
    K_DATA,
    K_EXPEL,
    K_FOUND,
    K_HELLO,
    K_MERGE,
    K_STATE,
    SILENCE,
    Event,
    Member,
    batch_message,
)


class Proc:
    """One process on the bus with one logical member, and what it was told."""

    def __init__(self, bus: Bus, nodeid: int, pnn: int, pid: int | None = None) -> None:
        self.bus = bus
        self.me: Member = (nodeid, 1000 + nodeid if pid is None else pid)
        self.pnn = pnn
        self.lid = 1
        self.machine = Group(self.me, self, {self.lid: pnn})
        self.views: list[View] = []
        self.delivered: list[tuple[int, bytes]] = []
        self.was_expelled = False
        #: why the machine asked this process to start over, if it did
        self.started_over: str | None = None
        #: what the machine told of the silence after which each member expels
        self.silences: dict[Member, float] = {}
        #: what our HELLO says of ours (None: nothing, as before HELLO carried it)
        self.silence: float | None = None
        #: the id of the last view this process saw before it (re)joined
        self.last_view_id = 0

    # -- GroupPort ---------------------------------------------------------------------
    def multicast(self, kind: int, lid: int, dest: int, payload: bytes) -> None:
        self.bus.send(self.me, HDR.pack(kind, 0, lid, dest) + payload)

    def deliver(self, lid: int, src: int, payload: bytes) -> None:
        self.delivered.append((src, payload))

    def new_view(self, lid: int, view: View, *, first: bool) -> None:
        self.views.append(view)

    def expelled(self) -> None:
        self.was_expelled = True

    def start_over(self, why: str) -> None:
        self.started_over = why
        self.bus.leave(self)

    def founded(self) -> None:
        self.hello()

    def found(self) -> None:
        """Multicast FOUND as the I/O shell does when every older process is silent."""
        m = self.machine
        body = {"members": [list(x) for x in m.cpg_members], "older": [list(x) for x in m.older]}
        self.multicast(K_FOUND, 0, BROADCAST, msgpack.packb(body))

    def members_changed(
        self, members: list[Member], left: list[Member], joined: list[Member]
    ) -> None:
        pass

    def expel_applied(self, member: Member) -> None:
        pass

    def silence_announced(self, member: Member, seconds: float) -> None:
        self.silences[member] = seconds

    def hello(self) -> None:
        body: dict[str, float] = {"pnn": self.pnn, "last_view_id": self.last_view_id}
        if self.silence is not None:
            body["silence"] = self.silence
        self.multicast(K_HELLO, self.lid, BROADCAST, msgpack.packb(body))


class Bus:
    """corosync, reduced to one agreed order of events."""

    def __init__(self) -> None:
        self.members: list[Proc] = []
        #: the processes the next event is delivered to
        self.current: list[Proc] = []
        #: (event for every recipient, or per recipient, the members after it)
        self.queue: deque[tuple[dict[Member, Event] | Event, list[Proc]]] = deque()
        #: stopped processes: what corosync queued for each while it does not read
        self.stopped: dict[Member, list[Event]] = {}

    def send(self, src: Member, msg: bytes) -> None:
        self.queue.append(((src, msg), []))

    def confchg(self, members: list[Proc], left: list[Proc], joined: list[Proc]) -> None:
        mems = [p.me for p in members]
        ev: Event = (mems, [p.me for p in left], [p.me for p in joined], [])
        self.queue.append((ev, members))

    def join(self, p: Proc) -> None:
        self.confchg([*self.members, p], [], [p])
        self.members = [*self.members, p]
        p.hello()  # sent at connect: delivered after the join

    def leave(self, p: Proc) -> None:
        """`p`'s process leaves the group (it starts over, or dies)."""
        rest = [q for q in self.members if q is not p]
        self.confchg(rest, [p], [])
        self.members = rest

    def run(self) -> None:
        while self.step():
            pass

    def step(self) -> bool:
        """Deliver the next event; False if there was none."""
        if not self.queue:
            return False
        ev, after = self.queue.popleft()
        if after or is_confchg(ev):  # (the last process may leave: after it, nobody)
            self.current = after
        for p in list(self.current):
            one = ev[p.me] if isinstance(ev, dict) else ev
            if p.me in self.stopped:
                self.stopped[p.me].append(one)
            elif self.reads(p):
                p.machine.event(one)
        return True

    def reads(self, p: Proc) -> bool:
        """Whether `p` still reads the group (one that was told to start over does not)."""
        return p.started_over is None

    def resume(self, p: Proc) -> None:
        """A stopped process reads its backlog, then what follows."""
        backlog = self.stopped.pop(p.me)
        for ev in backlog:
            if p.started_over is None and not p.was_expelled:
                p.machine.event(ev)
        self.run()


def is_confchg(ev: object) -> bool:
    return isinstance(ev, dict) or (isinstance(ev, tuple) and len(ev) == 4)


def three() -> tuple[Bus, list[Proc]]:
    bus = Bus()
    procs = [Proc(bus, n, pnn=n) for n in range(3)]
    for p in procs:
        bus.join(p)
    bus.run()
    return bus, procs


def test_members_joining_one_by_one_end_with_the_same_views_everywhere() -> None:
    _, procs = three()
    final = View(procs[0].views[-1].view_id, (0, 1, 2))
    assert all(p.views[-1] == final for p in procs)
    assert all(p.machine.synced for p in procs)
    # Joiners got the state transfer: the same agreed state as the founder.
    assert all(p.machine.state.snapshot() == procs[0].machine.state.snapshot() for p in procs)
    # The founder saw every view since its own; the others from their join on.
    assert [v.members for v in procs[0].views] == [(0,), (0, 1), (0, 1, 2)]
    assert [v.members for v in procs[2].views] == [(0, 1, 2)]


def test_a_broadcast_reaches_every_member_with_its_senders_pnn() -> None:
    bus, procs = three()
    procs[1].multicast(K_DATA, 1, BROADCAST, b"hello")
    procs[2].multicast(K_DATA, 1, 0, b"to node 0 only")
    bus.run()
    assert procs[0].delivered == [(1, b"hello"), (2, b"to node 0 only")]
    assert procs[1].delivered == procs[2].delivered == [(1, b"hello")]


def test_a_batch_is_delivered_as_its_messages_would_be_one_by_one() -> None:
    bus, procs = three()
    items = [(BROADCAST, b"one"), (2, b"for node 2"), (BROADCAST, b""), (0, b"for node 0")]
    bus.send(procs[1].me, batch_message(1, items))
    procs[2].multicast(K_DATA, 1, BROADCAST, b"after")
    bus.run()
    assert procs[0].delivered == [(1, b"one"), (1, b""), (1, b"for node 0"), (2, b"after")]
    assert procs[1].delivered == [(1, b"one"), (1, b""), (2, b"after")]
    assert procs[2].delivered == [(1, b"one"), (1, b"for node 2"), (1, b""), (2, b"after")]


def test_a_batch_cut_short_delivers_its_whole_messages_alike_everywhere() -> None:
    bus, procs = three()
    whole = batch_message(1, [(BROADCAST, b"kept"), (BROADCAST, b"cut short")])
    bus.send(procs[1].me, whole[:-3])
    bus.run()
    assert all(p.delivered == [(1, b"kept")] for p in procs)


def test_a_departure_gives_every_survivor_the_same_view_at_the_same_position() -> None:
    bus, procs = three()
    bus.confchg(procs[:2], [procs[2]], [])
    procs[0].multicast(K_DATA, 1, BROADCAST, b"after")
    bus.run()
    for p in procs[:2]:
        assert p.views[-1].members == (0, 1)
        assert p.delivered == [(0, b"after")]
    assert procs[0].views[-1] == procs[1].views[-1]


def test_an_expelled_member_leaves_every_view_and_learns_it_from_its_own_backlog() -> None:
    bus, procs = three()
    victim = procs[2]
    procs[0].multicast(K_EXPEL, 0, BROADCAST, msgpack.packb(list(victim.me)))
    # What it sends after its EXPEL is ignored, also a HELLO that would add it back.
    victim.multicast(K_DATA, 1, BROADCAST, b"too late")
    victim.hello()
    bus.run()
    assert procs[0].views[-1] == procs[1].views[-1]
    assert procs[0].views[-1].members == (0, 1)
    assert victim.was_expelled
    assert not procs[0].delivered and not procs[1].delivered


def test_every_member_learns_the_silence_after_which_each_other_expels() -> None:
    """A member's lease depends on the shortest expel silence in the group
    (`CpgStream.confirmed_until`): HELLO and ALIVE carry it (an empty ALIVE,
    as sent before they did, says nothing), a joiner gets all of it in its
    snapshot, and a member that leaves takes its own along."""
    bus, procs = three()
    procs[0].multicast(K_ALIVE, 0, BROADCAST, SILENCE.pack(0.3))
    procs[1].multicast(K_ALIVE, 0, BROADCAST, b"")
    procs[1].multicast(K_ALIVE, 0, BROADCAST, SILENCE.pack(5.0))
    for nonsense in (-1.0, 0.0, math.nan, math.inf):  # said nothing
        procs[2].multicast(K_ALIVE, 0, BROADCAST, SILENCE.pack(nonsense))
    bus.run()
    said = {procs[0].me: 0.3, procs[1].me: 5.0}
    for p in procs:
        assert p.machine.state.silences == said
        assert p.silences == said  # each new value told to the port once
    joiner = Proc(bus, 3, pnn=3)
    joiner.silence = 2.0
    bus.join(joiner)
    bus.run()
    for p in [*procs, joiner]:
        assert p.machine.synced
        assert p.machine.state.silences == {**said, joiner.me: 2.0}
    bus.confchg(procs[1:] + [joiner], [procs[0]], [])
    bus.members = procs[1:] + [joiner]
    bus.run()
    assert joiner.machine.state.silences == {procs[1].me: 5.0, joiner.me: 2.0}


def merge(one: list[Proc], other: list[Proc]) -> tuple[dict[Member, Event], list[Proc]]:
    """The confchg of two rings that meet: each side sees the other's members
    join, as merged ones (corosync's NODEUP)."""
    everyone = [p.me for p in one + other]
    per: dict[Member, Event] = {}
    for side, far in ((one, other), (other, one)):
        joined = [p.me for p in far]
        for p in side:
            per[p.me] = (everyone, [], joined, joined)
    return per, one + other


def test_two_groups_formed_apart_merge_into_one_view_with_a_higher_id() -> None:
    left, right = Bus(), Bus()
    a, b = Proc(left, 0, 0), Proc(left, 1, 1)
    c = Proc(right, 2, 2)
    for p in (a, b):
        left.join(p)
    left.run()
    right.join(c)
    right.run()
    ids = [a.views[-1].view_id, c.views[-1].view_id]
    merged = Bus()
    merged.members = merged.current = [a, b, c]
    for p in (a, b, c):
        p.bus = merged
    merged.queue.append(merge([a, b], [c]))
    merged.run()
    assert a.views[-1] == b.views[-1] == c.views[-1]
    assert a.views[-1].members == (0, 1, 2)
    assert a.views[-1].view_id > max(ids)


def test_a_member_whose_hello_comes_during_a_merge_never_sees_a_view_id_again() -> None:
    """A process that saw view 9 before (its corosync was killed, it went
    solo) reconnects and founds a group of its own; its ring merges with the
    others' before its HELLO is delivered. Its first view must come after 9,
    or it sees id 9 twice (seen in test_vs_netns: view ids [1, 2, 3, 4, 4, 5])."""
    left = Bus()
    a, b = Proc(left, 0, 0), Proc(left, 1, 1)
    for p in (a, b):
        left.join(p)
    left.run()
    merged = Bus()
    d = Proc(merged, 3, 3)
    d.last_view_id = 9
    for p in (a, b):
        p.bus = merged
    # d founds its own group alone, and its ring merges with the others'
    # before its HELLO (sent at connect) is delivered.
    merged.queue.append((([d.me], [], [d.me], []), [d]))
    merged.queue.append(merge([a, b], [d]))
    d.hello()
    merged.run()
    ids = [v.view_id for v in d.views]
    assert ids and ids[0] > 9 and ids == sorted(set(ids)), ids
    assert a.views[-1] == b.views[-1] == d.views[-1]
    assert a.views[-1].members == (0, 1, 3)


@pytest.mark.parametrize("order", list(itertools.permutations(["hello", "merge", "state"])))
def test_a_joiner_whose_ring_merges_before_its_state_sees_only_views_the_others_see(
    order: tuple[str, ...],
) -> None:
    """Node 2 joins node 0's ring while node 1 is cut off on its own; the
    rings merge around node 2's HELLO and the STATE node 0 sends it, in any
    order (chaos, vs seed 1305: node 2 reported view 17 as [0, 2] while
    nodes 0 and 1 installed 17 as [0, 1, 2], and served a stale persistent
    copy). Every view names its receiver, one view id is one membership
    everywhere, and all end in the same view."""
    side_a, side_b = Bus(), Bus()
    p0, p1 = Proc(side_a, 0, 0), Proc(side_b, 1, 1)
    side_a.join(p0)
    side_a.run()
    side_b.join(p1)
    side_b.run()
    bus = Bus()
    p0.bus = p1.bus = bus
    p2 = Proc(bus, 2, 2)
    # node 2 joins node 0's ring; node 0 sends it the STATE at once
    join: Event = ([p0.me, p2.me], [], [p2.me], [])
    for p in (p0, p2):
        p.machine.event(join)
    bus.current = [p0, p2]
    state = bus.queue.popleft()
    body = msgpack.packb({"pnn": 2, "last_view_id": 0})
    hello: Event = (p2.me, HDR.pack(K_HELLO, 0, 1, BROADCAST) + body)
    data: Event = (p0.me, HDR.pack(K_DATA, 0, 1, BROADCAST) + b"during the merge")
    items: dict[str, tuple[dict[Member, Event] | Event, list[Proc]]] = {
        "hello": (hello, []),
        "merge": merge([p0, p2], [p1]),
        "state": state,
    }
    for i, name in enumerate(order):
        bus.queue.append(items[name])
        if {"merge", "hello"} <= set(order[: i + 1]) and name != "state":
            # node 0 sends once both are out, before the MERGEs end the merge
            bus.queue.append((data, []))
    before = {p.pnn: len(p.views) for p in (p0, p1, p2)}  # each side's views so far
    bus.run()
    seen: dict[int, tuple[int, ...]] = {}
    for p in (p0, p1, p2):
        for v in p.views[before[p.pnn] :]:
            assert p.pnn in v.members, (p.pnn, v)
            assert seen.setdefault(v.view_id, v.members) == v.members, (p.pnn, v, seen)
    assert p0.views[-1] == p1.views[-1] == p2.views[-1]
    assert p2.views[-1].members == (0, 1, 2)
    # What came before node 2's first view is not delivered to it.
    got_it = (0, b"during the merge") in p2.delivered
    assert got_it == (len(p2.views) > 1), (p2.views, p2.delivered)


def _two_sides_and_a_joiner() -> tuple[Bus, Proc, Proc, Proc]:
    """Node 0 and node 1 each alone in a ring of its own (formed apart), both
    now on one bus, and node 2, not joined yet."""
    side_a, side_b = Bus(), Bus()
    p0, p1 = Proc(side_a, 0, 0), Proc(side_b, 1, 1)
    for side, p in ((side_a, p0), (side_b, p1)):
        side.join(p)
        side.run()
    bus = Bus()
    p0.bus = p1.bus = bus
    p2 = Proc(bus, 2, 2)
    bus.members = bus.current = [p0, p1, p2]
    return bus, p0, p1, p2


def _one_membership_per_view_id_and_one_last_view(procs: list[Proc], since: dict[int, int]) -> None:
    seen: dict[int, tuple[int, ...]] = {}
    for p in procs:
        for v in p.views[since.get(p.pnn, 0) :]:
            assert p.pnn in v.members, (p.pnn, v)
            assert seen.setdefault(v.view_id, v.members) == v.members, (p.pnn, v, seen)
    assert all(p.machine.synced for p in procs)
    assert len({p.views[-1] for p in procs}) == 1, [p.views[-1] for p in procs]
    assert procs[0].views[-1].members == (0, 1, 2)


@pytest.mark.parametrize("merges_before_the_join", [0, 1])
def test_a_joiner_whose_join_comes_during_a_merge_takes_part_in_it(
    merges_before_the_join: int,
) -> None:
    """The rings of nodes 0 and 1 merge; node 2 joins before every MERGE is
    delivered. Its snapshot carries the merge in progress, and it finishes
    it from its buffer with the others (chaos, vs seed 1463: a node
    restarted during a merge ignored the MERGEs and reported view 19 as
    [0, 1] where the others installed [0, 1, 2]; Samba's pfetch read a
    persistent record 16 commits old there)."""
    bus, p0, p1, p2 = _two_sides_and_a_joiner()
    since = {p.pnn: len(p.views) for p in (p0, p1)}
    per, _ = merge([p0], [p1])
    for p in (p0, p1):
        p.machine.event(per[p.me])  # each multicasts its MERGE
    join: Event = ([p0.me, p1.me, p2.me], [], [p2.me], [])
    bus.queue.insert(merges_before_the_join, (join, [p0, p1, p2]))
    p2.hello()
    bus.run()
    _one_membership_per_view_id_and_one_last_view([p0, p1, p2], since)


def test_a_joiner_whose_join_is_reported_with_a_merge_takes_part_in_it() -> None:
    """The same when corosync reports node 2's join in the confchg of the merge."""
    bus, p0, p1, p2 = _two_sides_and_a_joiner()
    since = {p.pnn: len(p.views) for p in (p0, p1)}
    everyone = [p0.me, p1.me, p2.me]
    per: dict[Member, Event] = {
        p0.me: (everyone, [], [p1.me, p2.me], [p1.me]),
        p1.me: (everyone, [], [p0.me, p2.me], [p0.me]),
        p2.me: (everyone, [], [p1.me, p2.me], [p1.me]),
    }
    bus.queue.append((per, [p0, p1, p2]))
    p2.hello()
    bus.run()
    _one_membership_per_view_id_and_one_last_view([p0, p1, p2], since)


# -- founding the state anew: every process that could send it is stopped -------------


def _restart_under_a_stopped_member() -> tuple[Bus, Proc, list[Proc]]:
    """Nodes 0 and 1 die while node 2 is stopped, and come back as new
    processes: node 2, stopped, is the only one left with the group's state."""
    bus, (p0, p1, p2) = three()
    bus.stopped[p2.me] = []
    bus.confchg([p2], [p0, p1], [])
    bus.members = [p2]
    joiners = [Proc(bus, 10, pnn=0), Proc(bus, 11, pnn=1)]
    for j in joiners:
        bus.join(j)
    bus.run()
    assert not any(j.machine.synced for j in joiners)  # nobody sends their STATE
    return bus, p2, joiners


def test_joiners_whose_older_members_are_all_stopped_found_the_state_anew() -> None:
    """(vs, chaos-like: SIGSTOP node 2, kill -9 and restart nodes 0 and 1: the
    restarted daemons exited with "no view within 11.2s".)"""
    bus, p2, (j0, j1) = _restart_under_a_stopped_member()
    assert j0.machine.older == {p2.me}
    assert j1.machine.older == {p2.me, j0.me}
    j0.found()
    bus.run()
    for j in (j0, j1):
        assert j.machine.synced and j.started_over is None
        assert j.views[-1].members == (0, 1)
        assert j.machine.state.expelled == {p2.me}
    assert j0.views[-1] == j1.views[-1]
    assert j0.machine.state.snapshot() == j1.machine.state.snapshot()
    # Node 2 resumes: it sends the joiners their STATEs late (ignored: it is
    # expelled), reaches the FOUND in its backlog and starts over.
    p2.multicast(K_DATA, 1, BROADCAST, b"from the stopped one")
    bus.resume(p2)
    assert p2.started_over is not None
    assert not j0.delivered and not j1.delivered
    # It joins again as a fresh process, and the founders' leader brings it in.
    bus.run()
    back = Proc(bus, 2, pnn=2, pid=5000)  # a new process: corosync names it anew
    bus.join(back)
    bus.run()
    assert back.machine.synced
    assert j0.views[-1] == j1.views[-1] == back.views[-1]
    assert back.views[-1].members == (0, 1, 2)


def test_a_found_sent_by_a_joiner_that_got_its_state_meanwhile_changes_nothing() -> None:
    bus, procs = three()
    j = Proc(bus, 3, pnn=3)
    bus.join(j)
    bus.run()  # its STATE arrives
    assert j.machine.synced
    j.found()  # written before the STATE came
    before = [p.machine.state.snapshot() for p in [*procs, j]]
    bus.run()
    assert [p.machine.state.snapshot() for p in [*procs, j]] == before
    assert all(p.started_over is None for p in [*procs, j])


def test_processes_with_state_start_over_at_a_found_from_a_process_without() -> None:
    """Whoever has state when a FOUND takes effect starts over (here, every
    synced process: a joiner that judged them all silent), the founders being
    the processes its sender saw, less the older ones."""
    bus, procs = three()
    j = Proc(bus, 3, pnn=3)
    bus.stopped = {p.me: [] for p in procs}  # nobody sends its STATE
    bus.join(j)
    bus.run()
    j.found()
    bus.run()
    assert j.machine.synced and j.views[-1].members == (3,)
    for p in procs:
        bus.resume(p)
        assert p.started_over is not None


def test_a_joiner_the_found_does_not_name_starts_over() -> None:
    bus, p2, (j0, j1) = _restart_under_a_stopped_member()
    j0.found()  # written before the next joiner came
    late = Proc(bus, 12, pnn=2)
    found = bus.queue.pop()
    bus.join(late)
    bus.queue.append(found)
    bus.run()
    assert late.started_over is not None
    assert j0.machine.synced and j1.machine.synced
    assert j0.views[-1].members == (0, 1)
    assert late.me not in j0.machine.state.synced


def test_a_joiner_that_saw_an_expel_since_its_join_starts_over_rather_than_guess() -> None:
    bus, p2, (j0, j1) = _restart_under_a_stopped_member()
    j1.multicast(K_EXPEL, 0, BROADCAST, msgpack.packb(list(j0.me)))  # not synced: no effect
    j0.found()
    bus.run()
    # j0 saw the EXPEL too, and cannot tell whether it took effect for those with state
    assert j0.started_over is not None and j1.started_over is not None


# -- control messages that a buggy member got wrong -----------------------------------------

MALFORMED = [
    (K_HELLO, b"\xc1"),
    (K_HELLO, msgpack.packb({"pnn": "1", "last_view_id": 0})),
    (K_HELLO, msgpack.packb([1, 2])),
    (K_EXPEL, msgpack.packb(5)),
    (K_EXPEL, msgpack.packb(["a", "b"])),
    (K_EXPEL, msgpack.packb([1, 2, 3])),
    (K_STATE, msgpack.packb({"target": 3})),
    (K_STATE, msgpack.packb({"target": [9, 9], "snapshot": {"members": "all"}})),
    (K_MERGE, msgpack.packb(1)),
    (K_MERGE, msgpack.packb({"tag": [], "members": [[1]]})),
    (K_FOUND, msgpack.packb({"members": [[1, 2]]})),
    (K_FOUND, b""),
]


@pytest.mark.parametrize(("kind", "body"), MALFORMED)
def test_a_malformed_control_message_is_ignored_alike_and_the_stream_goes_on(
    kind: int, body: bytes
) -> None:
    bus, procs = three()
    before = procs[0].machine.state.snapshot()
    procs[1].multicast(kind, 0, BROADCAST, body)
    procs[2].multicast(K_DATA, 1, BROADCAST, b"after it")
    bus.run()  # (it raised inside the machine, on every member)
    for p in procs:
        assert p.machine.state.snapshot() == before
        assert p.delivered[-1] == (2, b"after it")
        assert p.started_over is None and not p.was_expelled


def test_a_joiner_ignores_a_malformed_state_and_installs_the_next() -> None:
    bus, procs = three()
    joiner = Proc(bus, 3, pnn=3)
    bus.join(joiner)
    bad = {"target": list(joiner.me), "snapshot": {"members": "all"}}
    procs[0].multicast(K_STATE, 0, BROADCAST, msgpack.packb(bad))  # before the leader's
    bus.run()
    assert joiner.machine.synced
    everyone = [*procs, joiner]
    assert all(p.machine.state.snapshot() == procs[0].machine.state.snapshot() for p in everyone)
    assert all(p.views[-1].members == (0, 1, 2, 3) for p in everyone)


_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=5)
    | st.binary(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from([K_HELLO, K_EXPEL, K_STATE, K_MERGE, K_FOUND, K_ALIVE]),
    body=st.one_of(st.binary(max_size=40), _msgpack_values.map(msgpack.packb)),
)
def test_whatever_a_member_sends_every_member_ends_in_the_same_state(
    kind: int, body: bytes
) -> None:
    bus, procs = three()
    procs[1].multicast(kind, 0, BROADCAST, body)
    procs[2].multicast(K_DATA, 1, BROADCAST, b"after it")
    bus.run()
    alive = [p for p in procs if p.started_over is None and not p.was_expelled]
    assert alive, "one control message stopped the whole group"
    for p in alive:
        assert p.machine.state.snapshot() == alive[0].machine.state.snapshot()
        assert p.delivered[-1] == (2, b"after it")
