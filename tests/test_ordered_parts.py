"""The ordered engine's pure parts, without a stream or a socket: the
state-transfer plan every member computes from the offers, the stability
bookkeeping that decides when a write may be acknowledged, this node's
requests from sending to their answer, the replicated lock queues, and the
bounded waits on the event loop."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable
from typing import Any

import pytest

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import flows
from ctdb.engines.answers import Answers
from ctdb.engines.ordered.barriers import ReadBarriers
from ctdb.engines.ordered.locks import LockQueue, QueueFull
from ctdb.engines.ordered.requests import Requests
from ctdb.engines.ordered.rounds import split_new_databases
from ctdb.engines.ordered.stability import Stability, Write
from ctdb.engines.ordered.sync import NO_COPY, make_plan
from ctdb.engines.waiting import Answer, Waiting
from ctdb.protocol.messages import Ordered
from ctdb.storage.placement import db_id
from tests.clocks import ManualClock
from tests.recording import Recorded
from transport.base import View


def offer(
    *,
    synced: bool,
    dbs: dict[str, tuple[int, bytes]],
    epoch: int = 1,
    numbered: int = 1,
    damaged: bool = False,
    position: int = 0,
    kind: str = "persistent",
) -> dict[str, Any]:
    return {
        "synced": synced,
        "damaged": damaged,
        "epoch": epoch,
        "position": position,
        "numbered": numbered,
        "flags": 0,
        "dbs": [[name, kind, seq, hist] for name, (seq, hist) in dbs.items()],
    }


# -- the plan ---------------------------------------------------------------------------


def test_a_joiner_takes_every_database_from_the_lowest_member_in_sync() -> None:
    offers = {
        0: offer(synced=True, dbs={"a": (5, b"x"), "b": (2, b"y")}, epoch=4, numbered=6),
        1: offer(synced=True, dbs={"a": (5, b"x"), "b": (2, b"y")}, epoch=4, numbered=4),
        2: offer(synced=False, dbs={"a": (3, b"old")}, epoch=2, numbered=2),
    }
    plan = make_plan(offers)
    assert plan.sources == {"a": 0, "b": 0}
    assert plan.needs == {0: set(), 1: set(), 2: {"a", "b"}}
    assert plan.epoch == 7  # above every number any member saw handed out
    assert plan.receivers("a", (0, 1, 2)) == [2]
    assert plan.offered("a", [2]) == [(3, b"old")]
    assert plan.offered("b", [2]) == [NO_COPY]  # it holds no copy of b


def test_a_member_in_sync_needs_only_the_databases_it_lacks() -> None:
    offers = {
        0: offer(synced=True, dbs={"a": (1, b"")}),
        1: offer(synced=True, dbs={"b": (1, b"")}),
    }
    plan = make_plan(offers)
    assert plan.sources == {"a": 0, "b": 1}
    assert plan.needs == {0: {"b"}, 1: {"a"}}
    assert plan.receivers("b", (0, 1)) == [0]


@pytest.mark.parametrize(
    ("marks", "source"),
    [
        # (epoch, damaged, position, sequence number) per member -> the copy taken
        ({0: (3, False, 7, 1), 1: (4, False, 0, 0)}, 1),  # the highest epoch first
        ({0: (4, True, 7, 9), 1: (4, False, 0, 2)}, 1),  # then a copy without failed writes
        # then the longest part of the epoch's stream: a volatile write moves
        # no sequence number (vs seed 40044864)
        ({0: (4, False, 3, 2), 1: (4, False, 5, 2)}, 1),
        ({0: (4, False, 5, 2), 1: (4, False, 5, 9)}, 1),  # then the highest sequence number
        ({0: (4, False, 5, 9), 1: (4, False, 5, 9)}, 0),  # a tie: the lowest member
    ],
)
def test_with_nobody_in_sync_the_freshest_volatile_copy_wins(
    marks: dict[int, tuple[int, bool, int, int]], source: int
) -> None:
    _freshest_copy_wins(marks, source, "volatile")


@pytest.mark.parametrize(
    ("marks", "source"),
    [
        # (epoch, damaged, position, sequence number) per member -> the copy taken
        ({0: (3, False, 7, 9), 1: (4, True, 0, 0)}, 1),  # the highest epoch first
        # then the highest sequence number: every commit moves it, or
        # changes nothing (vs seeds 1040214 and 1097342)
        ({0: (4, True, 0, 9), 1: (4, False, 7, 2)}, 0),
        ({0: (4, True, 7, 9), 1: (4, False, 0, 9)}, 1),  # then a copy without failed writes
        ({0: (4, False, 3, 9), 1: (4, False, 5, 9)}, 1),  # then the position
        ({0: (4, False, 5, 9), 1: (4, False, 5, 9)}, 0),  # a tie: the lowest member
    ],
)
def test_with_nobody_in_sync_the_freshest_persistent_copy_wins(
    marks: dict[int, tuple[int, bool, int, int]], source: int
) -> None:
    _freshest_copy_wins(marks, source, "persistent")


def _freshest_copy_wins(
    marks: dict[int, tuple[int, bool, int, int]], source: int, kind: str
) -> None:
    offers = {
        p: offer(
            synced=False,
            dbs={"a": (seq, b"")},
            epoch=epoch,
            numbered=epoch,
            damaged=bad,
            position=position,
            kind=kind,
        )
        for p, (epoch, bad, position, seq) in marks.items()
    }
    plan = make_plan(offers)
    assert plan.sources == {"a": source}
    other = 1 - source
    assert plan.needs == {source: set(), other: {"a"}}


# -- stability ----------------------------------------------------------------------------


def test_a_joiner_keeps_what_the_stream_did_to_a_database_attached_after_the_offers() -> None:
    """No offer names it, so no snapshot carries it; members in sync applied it."""
    new, old = db_id("new"), db_id("old")
    backlog = [
        Ordered(1, 1, "store", {"db": old, "key": b"a"}),  # in old's snapshot
        Ordered(1, 2, "attach", {"name": "new", "kind": "volatile"}),
        Ordered(2, 1, "lock", {"db": new, "key": b"k"}),
        Ordered(1, 3, "attach", {"name": "old", "kind": "persistent"}),  # offered: a no-op
        Ordered(2, 2, "unlock", {"db": new, "key": b"k", "value": b"v"}),
        Ordered(0, 1, "recover", {}),
    ]
    offers = {0: offer(synced=False, dbs={}), 1: offer(synced=True, dbs={"old": (3, b"h")})}
    kept, dropped = split_new_databases(backlog, offers)
    assert kept == [backlog[1], backlog[2], backlog[4]]
    assert dropped == [backlog[0], backlog[3], backlog[5]]
    # With nobody in sync, nobody applied them: all are dropped.
    offers[1] = offer(synced=False, dbs={"old": (3, b"h")})
    assert split_new_databases(backlog, offers) == ([], backlog)


def stability(
    pnn: int, sent: list[Ordered] | None = None
) -> tuple[Stability, Recorded, ManualClock]:
    """A Stability of a 3-node cluster with its answers and its deferred callbacks."""
    told, clock = Recorded(), ManualClock()
    s = Stability(pnn, (sent if sent is not None else []).append, lambda: 3, told, clock)
    return s, told, clock


def test_a_write_is_stable_once_every_member_of_its_view_still_here_applied_it() -> None:
    s, _, _ = stability(0)
    write: Write = (0, 7, frozenset({0, 1, 2}))
    view = View(3, (0, 1, 2))
    s.applied_by = {0: {0: 7}, 1: {0: 7}, 2: {0: 6}}
    assert not s.stable(write, view, settling=False)  # node 2 has not applied it
    assert s.stable(write, View(4, (0, 1)), settling=False)  # node 2 left: it no longer counts
    s.applied_by[2] = {0: 9}
    assert s.stable(write, view, settling=False)
    assert not s.stable(write, view, settling=True)  # a joiner catching up counts too


def test_a_write_whose_remaining_holders_are_a_minority_of_the_cluster_is_not_stable() -> None:
    """vs seed 1049952: applied in {0, 1}, node 0 failed to apply it and left;
    in the view {1, 2} node 1 alone holds it, and a hang of node 1 would let
    {0, 2} go on without it: it waits for node 2 to get it (plan_done)."""
    s, _, _ = stability(1)
    write: Write = (1, 5, frozenset({0, 1}))
    s.applied_by = {1: {1: 5}}
    assert not s.stable(write, View(21, (1, 2)), settling=False)
    assert not s.stable(write, View(24, (1,)), settling=False)
    s.applied_by[0] = {1: 5}
    assert s.stable(write, View(20, (0, 1)), settling=False)  # two of three hold it


def test_check_acknowledges_stable_writes_and_wakes_their_readers() -> None:
    s, told, _ = stability(0)
    view = View(1, (0, 1))
    s.unstable[5] = ("result", frozenset({0, 1}))
    s.applying = (0, 5, frozenset({0, 1}))
    s.touched((1, b"k"))
    s.applying = None
    s.touched((1, b"other"))  # outside an apply: nothing is marked
    assert s.dirty == {(1, b"k"): (0, 5, frozenset({0, 1}))}
    s.wait("reader", (1, b"k"))
    s.wait("gave up", (1, b"k"))
    s.unwait("gave up")
    s.applied_by = {0: {0: 5}, 1: {0: 4}}
    s.check(view, settling=False)
    assert told.told == []
    s.applied_by[1] = {0: 5}
    s.check(view, settling=False)
    assert told.told == [(5, "result"), ("reader", None)]
    assert not s.dirty and not s.unstable and not s.waiters


def test_applied_counters_go_out_once_per_burst() -> None:
    sent: list[Ordered] = []
    s, _, clock = stability(2, sent)
    s.confirm(1, 10)
    s.confirm(0, 3)
    s.confirm(1, 12)
    assert not sent and clock.pending() == 1  # once the burst is handled
    clock.advance(0)
    assert [(m.origin, m.op, m.args) for m in sent] == [(2, "applied", {"upto": [[0, 3], [1, 12]]})]
    assert s.applied_by[2] == {1: 12, 0: 3}
    # Another member's counters are noted; our own echo is not news.
    assert s.on_applied(Ordered(1, 0, "applied", {"upto": [[2, 4]]}))
    assert not s.on_applied(sent[0])
    assert s.applied_by[1] == {2: 4}


def test_a_plan_makes_what_was_unstable_at_it_stable_once_everyone_synced() -> None:
    s, told, _ = stability(0)
    s.unstable[3] = (1, frozenset({0, 1}))
    s.dirty[(1, b"k")] = (1, 8, frozenset({0, 1}))
    s.mark_plan()
    s.unstable[4] = (2, frozenset({0, 1}))  # delivered after the plan
    s.dirty[(1, b"j")] = (1, 9, frozenset({0, 1}))  # written after the plan
    s.plan_done()
    assert told.told == [(3, 1)]
    assert s.dirty == {(1, b"j"): (1, 9, frozenset({0, 1}))}
    assert list(s.unstable) == [4]


# -- this node's requests in the stream ---------------------------------------------------


def requests(pnn: int = 0) -> tuple[Requests, Stability, Recorded]:
    s, told, _ = stability(pnn)
    return Requests(pnn, 7, s, told, Counter()), s, told


def test_a_request_is_answered_when_the_stream_delivers_it_to_its_origin() -> None:
    r, _, told = requests(0)
    msg = r.message("store", {"k": 1})
    assert msg.origin == 0 and msg.seq == (7 << 32) + 1  # above any earlier run's numbers
    other = Ordered(1, msg.seq, "store", {})  # the same number from another node
    assert not r.deliver(other, "theirs", None, None)
    assert not r.deliver(msg, "result", None, None)
    assert told.told == [(msg.seq, "result")]
    assert not r.pending
    # Delivered twice (it cannot be) or after its waiter gave up: nobody is told.
    assert not r.deliver(msg, "again", None, None)
    late = r.message("lock", {})
    r.forget(late.seq)
    r.deliver(late, "late", None, None)
    assert told.told == [(msg.seq, "result")]
    assert r.unanswered("release", {}).seq not in r.pending
    r.forget(late.seq)  # twice: harmless


def test_a_failed_request_is_answered_with_its_error() -> None:
    r, _, told = requests()
    msg = r.message("lock", {})
    r.deliver(msg, None, CtdbError(ErrorCode.BUSY, "queue full"), None)
    assert told.told == [(msg.seq, ErrorCode.BUSY)]


def test_a_write_that_must_be_stable_is_answered_only_once_it_is() -> None:
    r, s, told = requests(0)
    msg = r.message("commit", {})
    assert r.deliver(msg, 42, None, frozenset({0, 1}))  # the caller checks stability now
    assert told.told == [] and s.unstable == {msg.seq: (42, frozenset({0, 1}))}
    s.applied_by = {0: {0: msg.seq}, 1: {0: msg.seq}}
    s.check(View(1, (0, 1)), settling=False)
    assert told.told == [(msg.seq, 42)]


def test_leaving_the_stream_fails_every_request_delivered_or_not() -> None:
    r, s, told = requests(0)
    waiting, unstable = r.message("store", {}), r.message("commit", {})
    r.deliver(unstable, 3, None, frozenset({0, 1}))
    s.wait("reader", (1, b"k"))
    r.fail_all(CtdbError(ErrorCode.RETRY, "left the group"))
    assert told.told == [
        (waiting.seq, ErrorCode.RETRY),
        (unstable.seq, ErrorCode.RETRY),
        ("reader", None),  # it looks again, and learns why it cannot read
    ]
    assert not r.pending and not s.unstable and not s.waiters


def test_a_dropped_backlog_fails_only_our_requests_in_it() -> None:
    r, _, told = requests(0)
    ours, kept = r.message("store", {}), r.message("store", {})
    r.drop([Ordered(1, ours.seq, "store", {}), ours])
    assert told.told == [(ours.seq, ErrorCode.RETRY)]
    assert list(r.pending) == [kept.seq]


# -- read barriers -----------------------------------------------------------------------


def barriers() -> tuple[ReadBarriers, Requests, list[Ordered], Recorded]:
    """Read barriers over a node's requests: the barriers sent, the readers' answers."""
    r, _, _ = requests(0)
    sent: list[Ordered] = []
    readers = Recorded()

    def send(to: Answers) -> int:
        sent.append(r.barrier(to))
        return sent[-1].seq

    return ReadBarriers(send, readers), r, sent, readers


def test_readers_share_barriers_one_in_flight_and_one_collecting() -> None:
    b, r, sent, readers = barriers()
    b.join("a")
    assert len(sent) == 1 and (sent[0].op, sent[0].args) == ("sync", {})
    b.join("b")
    b.join("c")  # they ride the next barrier: the first may be ordered before their reads
    b.leave("c")  # gave up: nobody answers it
    assert len(sent) == 1
    r.deliver(sent[0], None, None, None)
    assert readers.told == [("a", None)] and len(sent) == 2  # the next one went out
    r.deliver(sent[1], None, None, None)
    assert readers.told == [("a", None), ("b", None)]
    assert len(sent) == 2 and r.stats["read_barriers"] == 2
    b.join("d")  # nothing in flight: a new barrier at once
    assert len(sent) == 3


def test_a_failed_barrier_fails_its_readers_and_those_waiting_for_the_next() -> None:
    b, r, sent, readers = barriers()
    b.join("a")
    b.join("b")
    r.fail_all(CtdbError(ErrorCode.NO_QUORUM, "no quorum"))
    assert readers.told == [("a", ErrorCode.NO_QUORUM), ("b", ErrorCode.NO_QUORUM)]
    b.join("c")  # a later reader gets a barrier of its own
    assert len(sent) == 2 and sent[1].seq in r.pending


def test_waiting_turns_answers_into_outcomes_within_a_deadline() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        w = Waiting()
        wait = w.expect(1)
        loop.call_soon(w.answer, 1, "done")
        assert await w.until(wait, loop.time() + 5, "one") == "done"
        wait = w.expect(2)
        loop.call_soon(w.fail, 2, CtdbError(ErrorCode.RETRY, "left the group"))
        with pytest.raises(CtdbError) as info:
            await w.until(wait, loop.time() + 5, "two")
        assert info.value.code == ErrorCode.RETRY
        wait = w.expect(3)
        started = loop.time()
        with pytest.raises(CtdbError) as info:
            await w.until(wait, started + 0.05, "three was not delivered")
        assert info.value.code == ErrorCode.TIMEOUT and "three" in info.value.message
        assert loop.time() >= started + 0.05
        newer = w.expect(3)  # the key waited for again (a client asks anew)
        w.forget(3, wait)  # the old waiter's clean-up leaves the new one alone
        w.answer(3, "again")
        assert newer.outcome() == "again"
        w.forget(3, newer)
        w.answer(3, "late")  # nobody waits: nothing happens
        # Waiting at most a while fails nothing: the answer may still come.
        wait = w.expect(4)
        assert not await Waiting.settled(wait, 0.01)
        loop.call_soon(w.answer, 4, "later")
        assert await Waiting.settled(wait, 5) and wait.outcome() == "later"
        # A wait under a key of its own: registered before, forgotten after.
        registered: dict[object, None] = {}

        def answer_all() -> None:
            for key in list(registered):
                w.answer(key, "seen")

        loop.call_soon(answer_all)
        seen = w.registered(registered.setdefault, registered.pop, loop.time() + 5, "x")
        assert await flows.drive(seen, until) == "seen"
        with pytest.raises(CtdbError) as info:
            nobody = w.registered(registered.setdefault, registered.pop, loop.time() + 0.01, "y")
            await flows.drive(nobody, until)
        assert info.value.code == ErrorCode.TIMEOUT and not registered

    asyncio.run(scenario())


def until(effect: Answer) -> Awaitable[Any]:
    """How a driver carries out an `Answer`."""
    return Waiting.until(effect.wait, effect.deadline, effect.what)


def test_an_answer_given_before_anyone_awaits_it_is_kept_without_a_loop() -> None:
    """The parts answer with no event loop running; the waiter reads it later."""
    w = Waiting()
    wait = w.expect("k")
    assert not wait.done
    w.fail("k", CtdbError(ErrorCode.NOT_LOCKED, "gone"))
    w.answer("k", "too late")  # the first answer counts
    assert wait.done
    with pytest.raises(CtdbError) as info:
        wait.outcome()
    assert info.value.code == ErrorCode.NOT_LOCKED


# -- lock queues -------------------------------------------------------------------------


def test_a_lock_queue_is_a_fifo_whose_head_holds_and_whose_stores_wait_in_line() -> None:
    q = LockQueue()
    bound = {"waiters": 8}
    a, b, c = (0, 1), (1, 1), (2, 1)
    q.queue(a, None, bound, b"k")
    q.queue(b, b"from b", bound, b"k")  # a store behind a holder waits its turn
    q.queue(c, None, bound, b"k")
    assert q.holder == a and q.head_store() is None
    q.pop()  # a unlocks
    assert q.holder is None and q.head_store() == (b, b"from b")
    q.pop()  # the store was written
    assert q.holder == c
    assert LockQueue.from_wire(q.to_wire()) == q  # as a state transfer carries it


def test_withdraw_and_purge_drop_lock_requests_but_never_a_queued_store() -> None:
    q = LockQueue()
    bound = {"waiters": 8}
    a, b = (0, 1), (1, 1)
    q.queue(a, None, bound, b"k")
    q.queue(b, None, bound, b"k")
    q.queue(b, b"v", bound, b"k")
    q.withdraw(b)
    assert [(o, kind) for o, kind, _, _ in q.entries] == [(a, "lock"), (b, "store")]
    assert q.purge(lambda owner: owner[0] == 0)  # node 0 left
    assert q.head_store() == (b, b"v") and q.holder is None
    assert not q.purge(lambda owner: owner[0] == 1)  # its store stays


def test_a_queue_refuses_past_the_bound_its_origin_sent() -> None:
    q = LockQueue()
    q.queue((0, 1), None, {"waiters": 1}, b"k")  # the holder does not count
    q.queue((0, 2), None, {"waiters": 1}, b"k")
    with pytest.raises(QueueFull) as info:
        q.queue((0, 3), None, {"waiters": 1}, b"k")
    assert info.value.code == ErrorCode.BUSY
    assert len(q.entries) == 2  # nothing queued
