"""The CPG group machine under random joins, departures, splits, merges and expels.

`test_cpg_group` checks the cases someone thought of; a merge that a
process joined in the middle of was not one of them until chaos found it
(vs seed 1463), and a joiner's STATE sent by a leader already expelled
was found here (`Group._counts`). Here seeded random schedules drive several rings of real
`Group` machines: processes join a ring and leave it, rings split and
merge (each side sees the other join as merged, as corosync reports a
partition merge), synced members expel others, and each ring delivers its
agreed order one event at a time, interleaved with all of that. A joiner
left without any process that could send its state founds it anew, as
the I/O shell does once they have been silent for its limit.

In the end every ring merges into one and drains. Then the virtual
synchrony the vs transport promises must hold: every process in the
group is synced, they agree on the state and on the last view, which
names every one of them, and one view id is one membership everywhere
after the rings became one. A failure names its seed and the schedule.
"""

from __future__ import annotations

import random

import msgpack
import pytest

from tests.transport.test_cpg_group import Bus, Proc
from transport.cpg_wire import BROADCAST, K_DATA, K_EXPEL, Event, Member

PNNS = 4


class Ring(Bus):
    """One partition's agreed order (a `Bus` whose processes are this ring's)."""

    def __init__(self, name: int) -> None:
        super().__init__()
        self.name = name

    def step(self) -> bool:
        """Deliver the next event of this ring; False if there was none."""
        if not self.queue:
            return False
        ev, after = self.queue.popleft()
        if after or _is_confchg(ev):  # (a ring's last process may leave it)
            self.current = after
        for p in list(self.current):
            one = ev[p.me] if isinstance(ev, dict) else ev
            if p.started_over is None and not p.was_expelled:
                p.machine.event(one)
        return True


class World:
    """Rings of processes, one schedule of what happens to them."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.rings: list[Ring] = []
        self.pids = iter(range(2000, 100000))
        self.log: list[str] = []
        #: joiners that sent a FOUND (the shell sends one per join)
        self.founding: set[Member] = set()
        #: how many views each process had at the last split or merge: from
        #: then on, rings that were apart install no views, and the one ring
        #: one id per membership
        self.since: dict[Member, int] = {}
        self.names = iter(range(1000))

    def live(self) -> list[Proc]:
        return [p for r in self.rings for p in r.members]

    def ring_of(self, p: Proc) -> Ring:
        return next(r for r in self.rings if p in r.members)

    def new_ring(self) -> Ring:
        ring = Ring(next(self.names))
        self.rings.append(ring)
        return ring

    # -- what can happen -------------------------------------------------------------

    def join(self) -> None:
        taken = {p.pnn for p in self.live()}
        free = [n for n in range(PNNS) if n not in taken]
        if not free:
            return
        pnn = self.rng.choice(free)
        ring = self.rng.choice(self.rings) if self.rings and self.rng.random() < 0.8 else None
        ring = ring or self.new_ring()
        p = Proc(ring, nodeid=10 + pnn, pnn=pnn, pid=next(self.pids))
        self.log.append(f"join pnn {pnn} {p.me} to ring {ring.name}")
        ring.join(p)

    def leave(self, p: Proc) -> None:
        ring = self.ring_of(p)
        self.log.append(f"leave {p.me} from ring {ring.name}")
        ring.leave(p)
        if p.started_over is None and not p.was_expelled:
            p.started_over = "died"  # it reads nothing more, and sends nothing
        if not ring.members and not ring.queue:
            self.rings.remove(ring)

    def split(self, ring: Ring) -> None:
        """The ring's members part: what was sent before reaches the sender's
        side, and the other side up to some point (what crossed before the cut)."""
        procs = list(ring.members)
        self.rng.shuffle(procs)
        cut = self.rng.randint(1, len(procs) - 1)
        one, other = procs[:cut], procs[cut:]
        self.log.append(f"split ring {ring.name}: {[p.me for p in one]} | {[p.me for p in other]}")
        self.since = {p.me: len(p.views) for p in self.live()}
        pending = list(ring.queue)
        crossed = self.rng.randint(0, len(pending))
        sides = []
        for side, far in ((one, other), (other, one)):
            new = self.new_ring()
            new.members = list(side)
            new.current = list(side)
            current = ring.current
            for i, (ev, after) in enumerate(pending):
                current = after if after or _is_confchg(ev) else current  # as `step` says
                to = [p for p in current if p in side]
                sender = _sender(ev)
                crosses = i < crossed or sender is None or any(sender == p.me for p in side)
                if to and crosses:
                    new.queue.append((ev, to))
            far_mes = [p.me for p in far]
            new.queue.append(
                (([p.me for p in side], far_mes, [], []), list(side))
            )  # the others left
            sides.append(new)
        for new, side in zip(sides, (one, other), strict=True):
            for p in side:
                p.bus = new
        self.rings.remove(ring)

    def merge(self, a: Ring, b: Ring) -> None:
        """Two rings meet: each side drains what it had, then sees the other's
        processes join as merged ones (corosync's NODEUP)."""
        self.log.append(f"merge rings {a.name} and {b.name}")
        for r in (a, b):
            self.drain(r)
        self.since = {p.me: len(p.views) for p in self.live()}
        everyone = [p.me for p in a.members + b.members]
        per: dict[Member, Event] = {}
        for side, far in ((a, b), (b, a)):
            joined = [p.me for p in far.members]
            for p in side.members:
                per[p.me] = (everyone, [], joined, joined)
        merged = self.new_ring()
        merged.members = a.members + b.members
        merged.queue.append((per, list(merged.members)))
        for p in merged.members:
            p.bus = merged
        self.rings.remove(a)
        self.rings.remove(b)

    def expel(self, ring: Ring) -> None:
        synced = [p for p in ring.members if p.machine.synced]
        if not synced or len(ring.members) < 2:
            return
        by = self.rng.choice(synced)
        victim = self.rng.choice([p for p in ring.members if p is not by])
        self.log.append(f"{by.me} expels {victim.me} in ring {ring.name}")
        by.multicast(K_EXPEL, 0, BROADCAST, msgpack.packb(list(victim.me)))

    def send(self, ring: Ring) -> None:
        p = self.rng.choice(ring.members)
        p.multicast(K_DATA, p.lid, BROADCAST, b"data")

    def housekeeping(self) -> None:
        """What the I/O shell does on its own: a process told to start over or
        expelled leaves (the driver may start it again later), and a joiner
        whose older processes are all gone from its ring founds the state."""
        for p in self.live():
            if (p.started_over is not None or p.was_expelled) and p in self.ring_of(p).members:
                self.leave(p)
        for ring in self.rings:
            if ring.queue:
                continue
            for p in ring.members:
                m = p.machine
                here = {q.me for q in ring.members}
                if m.joined and not m.synced and not (m.older & here) and p.me not in self.founding:
                    self.founding.add(p.me)
                    self.log.append(f"{p.me} founds (older {sorted(m.older)} gone)")
                    p.found()

    def drain(self, ring: Ring) -> None:
        for _ in range(10_000):
            if not ring.step():
                self.housekeeping()
                if not ring.queue:
                    return
        raise AssertionError("a ring never drained")

    def run(self, actions: int) -> None:
        for _ in range(actions):
            self.housekeeping()
            rings = [r for r in self.rings if r.members]
            roll = self.rng.random()
            if roll < 0.15 or not rings:
                self.join()
            elif roll < 0.22:
                self.leave(self.rng.choice(self.live()))
            elif roll < 0.3 and any(len(r.members) > 1 for r in rings):
                self.split(self.rng.choice([r for r in rings if len(r.members) > 1]))
            elif roll < 0.38 and len(rings) > 1:
                a, b = self.rng.sample(rings, 2)
                self.merge(a, b)
            elif roll < 0.42:
                self.expel(self.rng.choice(rings))
            elif roll < 0.55:
                self.send(self.rng.choice(rings))
            else:
                ring = self.rng.choice(self.rings)
                for _ in range(self.rng.randint(1, 4)):
                    ring.step()
        # The end: everything delivered, every ring merged into one.
        for _ in range(50):
            for ring in list(self.rings):
                self.drain(ring)
            self.rings = [r for r in self.rings if r.members]
            if len(self.rings) <= 1:
                break
            self.merge(self.rings[0], self.rings[1])
        for ring in list(self.rings):
            self.drain(ring)


def _is_confchg(ev: object) -> bool:
    return isinstance(ev, dict) or (isinstance(ev, tuple) and len(ev) == 4)


def _sender(ev: object) -> Member | None:
    if isinstance(ev, tuple) and len(ev) == 2:
        return ev[0]  # type: ignore[no-any-return]
    return None


def _check(world: World) -> None:
    procs = world.live()
    if not procs:
        return
    assert all(p.machine.synced for p in procs), [(p.me, p.machine.synced) for p in procs]
    last = {p.views[-1] for p in procs if p.views}
    assert len(last) == 1, last
    view = last.pop()
    assert view.members == tuple(sorted(p.pnn for p in procs)), (view, [p.pnn for p in procs])
    snaps = {msgpack.packb(p.machine.state.snapshot()) for p in procs}
    assert len(snaps) == 1, [p.machine.state.snapshot() for p in procs]
    seen: dict[int, tuple[int, ...]] = {}
    for p in procs:
        for v in p.views[world.since.get(p.me, 0) :]:
            assert seen.setdefault(v.view_id, v.members) == v.members, (p.me, v, seen)


#: seeds of 80 actions that found a defect (see `Group._counts`)
FOUND = [2251, 4574]


@pytest.mark.parametrize(
    ("seed", "actions"), [(seed, 60) for seed in range(500)] + [(seed, 80) for seed in FOUND]
)
def test_random_schedules_keep_virtual_synchrony(seed: int, actions: int) -> None:
    world = World(seed)
    world.run(actions)
    try:
        _check(world)
    except AssertionError as exc:
        schedule = "\n  ".join(world.log)
        raise AssertionError(f"seed {seed}: {exc}\nschedule:\n  {schedule}") from None
