"""Stability: a write counts once every member of the view has applied it.

Agreed delivery at the origin does not mean every member has the message,
so each member tells the others (an `applied` message, one per burst) the
highest seq of each origin it applied, and every member can tell which
writes every member holds. Until then a write is not acknowledged to its
client (`unstable`) and no local read returns it (`dirty`): a failure can
still take it back. No I/O and no event loop: what becomes stable is
answered through an `Answers`, the `applied` messages go to a broadcast
callback, and a burst ends when the clock's `call_soon` runs its callback.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from ctdb.engines.answers import Answers
from ctdb.engines.host import Clock
from ctdb.protocol.messages import Ordered
from transport.base import View

#: A write in the stream: (origin, seq, the members of the view it was applied in).
Write = tuple[int, int, frozenset[int]]
#: A record: (database id, key).
Ref = tuple[int, bytes]

#: Writes acknowledged only once stable (see the package docstring); a
#: volatile write is when its origin asks (`"stable"` in its arguments).
#: An attach too: once it returns, a client of any member may use the
#: database, as over tcp, where every node attaches it before the answer
#: (a client on another node found it unknown, under load, in the suite).
STABLE_OPS = frozenset({"commit", "wipe", "attach"})


class Stability:
    def __init__(
        self,
        pnn: int,
        broadcast: Callable[[Ordered], None],
        configured: Callable[[], int],
        answers: Answers,
        clock: Clock,
    ) -> None:
        self._pnn = pnn
        self._broadcast = broadcast
        #: how many nodes the cluster has (its nodes file)
        self._configured = configured
        self._answers = answers
        #: its call_soon runs a callback once what is being handled now is done
        self._clock = clock
        #: our writes delivered but not yet stable: seq -> (result, the
        #: members that delivered it with us)
        self.unstable: dict[int, tuple[Any, frozenset[int]]] = {}
        #: member -> origin -> the highest seq of that origin's writes the
        #: member applied (its `applied` messages; ours as we apply them)
        self.applied_by: dict[int, dict[int, int]] = {}
        #: origin -> highest seq of theirs we applied and have yet to announce
        self._to_confirm: dict[int, int] = {}
        #: the write being applied, which `touched` marks the keys it writes with
        self.applying: Write | None = None
        #: record -> the latest write to it that is not yet stable
        self.dirty: dict[Ref, Write] = {}
        #: dirty keys and our unstable writes as of the last plan (see `plan_done`)
        self.pre_plan: dict[Ref, Write] = {}
        self.pre_plan_seqs: set[int] = set()
        #: readers waiting for a key's writes to become stable: their key -> the record
        self.waiters: dict[Hashable, Ref] = {}

    def confirm(self, origin: int, seq: int) -> None:
        """Note that we applied `origin`'s writes up to `seq`; tell everyone once per loop turn."""
        mine = self.applied_by.setdefault(self._pnn, {})
        mine[origin] = max(seq, mine.get(origin, seq))
        if not self._to_confirm:
            self._clock.call_soon(self._send_confirmations)
        self._to_confirm[origin] = max(seq, self._to_confirm.get(origin, seq))

    def _send_confirmations(self) -> None:
        pending, self._to_confirm = self._to_confirm, {}
        if pending:
            upto = [[origin, seq] for origin, seq in sorted(pending.items())]
            self._broadcast(Ordered(self._pnn, 0, "applied", {"upto": upto}))

    def on_applied(self, msg: Ordered) -> bool:
        """A member's `applied` message; whether it may have made anything stable."""
        if msg.origin == self._pnn:
            return False  # noted as we applied them
        seen = self.applied_by.setdefault(msg.origin, {})
        for origin, seq in msg.args["upto"]:
            seen[int(origin)] = max(int(seq), seen.get(int(origin), 0))
        return True

    def forget(self, view: View) -> None:
        """Members that left no longer count."""
        self.applied_by = {p: seen for p, seen in self.applied_by.items() if p in view}

    def stable(self, write: Write, view: View, settling: bool) -> bool:
        """Every member of the write's view that is still with us applied it,
        and they are a majority of the cluster.

        A member that left the view no longer counts: virtual synchrony
        makes the survivors deliver what it did. But the survivors must
        still be a majority, so that every later quorate view holds one of
        them: a write applied in {0, 1} by node 1 alone (node 0 failed to
        apply it and left) is not stable in a view {1, 2} until node 2 has
        it too (the round that brings node 2 in sync; `plan_done`), or a
        hang of node 1 lets {0, 2} go on without it (simulator, vs seed
        1049952: an acknowledged commit lost).

        `settling`: a state transfer is in progress, or a member of the view
        still catches up: it does not hold the write yet (the snapshot it
        waits for does), so nothing is stable until it does.
        """
        if settling:
            return False
        origin, seq, members = write
        holders = [p for p in members if p in view]
        if 2 * len(holders) <= self._configured():
            return False
        return all(self.applied_by.get(p, {}).get(origin, 0) >= seq for p in holders)

    def check(self, view: View, settling: bool) -> None:
        """Acknowledge our writes, and wake the readers of keys, that are stable now."""
        me = self._pnn
        for seq, (result, members) in list(self.unstable.items()):
            if self.stable((me, seq, members), view, settling):
                del self.unstable[seq]
                self._answers.answer(seq, result)
        if self.dirty:
            self.dirty = {
                ref: w for ref, w in self.dirty.items() if not self.stable(w, view, settling)
            }
        if self.waiters:
            for key, ref in list(self.waiters.items()):
                if ref not in self.dirty:
                    del self.waiters[key]
                    self._answers.answer(key, None)

    def touched(self, ref: Ref) -> None:
        """The write being applied wrote `ref`: not stable until every member applied it."""
        if self.applying is not None:
            self.dirty[ref] = self.applying

    def wait(self, key: Hashable, ref: Ref) -> None:
        """`key`'s waiter is answered (None) once `ref` holds only stable
        writes, or on `drop`; it calls `unwait(key)` if it gives up first."""
        self.waiters[key] = ref

    def unwait(self, key: Hashable) -> None:
        self.waiters.pop(key, None)

    def drop(self) -> None:
        """Our pending writes failed: none of them will be acknowledged. Readers
        waiting for a write to settle look again (wait_serving tells them why
        they cannot read now)."""
        self.unstable.clear()
        waiters, self.waiters = self.waiters, {}
        for key in waiters:
            self._answers.answer(key, None)

    def mark_plan(self) -> None:
        """A state-transfer plan was made: remember what was unstable at it."""
        self.pre_plan, self.pre_plan_seqs = dict(self.dirty), set(self.unstable)

    def plan_done(self) -> None:
        """Every member now holds the plan's copies: what they held is stable.

        A write applied before the plan (on members in sync, or in the copy
        a snapshot brought) is held by every member once the last member
        that needed snapshots said it installed them (`synced`, the same
        position everywhere), though no member that took a snapshot ever
        confirms the writes in it.
        """
        for ref, write in self.pre_plan.items():
            if self.dirty.get(ref) == write:
                del self.dirty[ref]
        for seq in sorted(self.pre_plan_seqs & self.unstable.keys()):
            result, _ = self.unstable.pop(seq)
            self._answers.answer(seq, result)
        self.pre_plan, self.pre_plan_seqs = {}, set()
