"""tcp: the leader's recovery as a flow, answered by hand (`ctdb.engines.recovery_flow`).

Each test resumes the flow with made-up replies and checks what it asks
for next: which member is pulled, what is merged, where it is pushed, in
which order the vnnmap, the leases' end and the thaw come. No loop, no
socket, no peer. The last tests run `flows.drive`, the loop's side.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines import flows
from ctdb.engines.controls import Control, Controls
from ctdb.engines.effects import Pause
from ctdb.engines.recovery_flow import (
    NOW,
    Drain,
    Effect,
    Merge,
    NodeFailed,
    recovery,
)
from ctdb.storage.placement import db_id
from tests.flow_steps import Stepped
from tests.test_recovery_plan import persistent, reply, volatile

MEMBERS = [0, 1, 2]
GEN = 77


class Run(Stepped[Effect]):
    """The recovery of `members`, resumed by hand."""

    def __init__(self, members: list[int] = MEMBERS, leader: int = 0) -> None:
        self.members = members
        super().__init__(recovery(members, GEN, leader))

    def frozen(self, replies: dict[int, dict[str, Any]], now: float = 100.0) -> Effect | None:
        assert self.effect == Controls.on_all(self.members, "freeze", {"generation": GEN})
        assert self.answer([replies[p] for p in self.members]) == NOW
        return self.answer(now)

    def pushed(self, targets: list[int], dbid: int, records: list[Any], replace_all: bool) -> None:
        """The flow drains the links, then pushes `records` to `targets`."""
        assert self.effect == Drain()
        push = self.answer()
        assert isinstance(push, Controls)
        assert [c.pnn for c in push.calls] == targets
        for c in push.calls:
            assert c.op == "push"
            assert c.args["db_id"] == dbid and c.args["generation"] == GEN
            assert c.args["records"] == records and c.args["replace_all"] is replace_all
        self.answer([None] * len(targets))

    def ends(self, epoch: int) -> None:
        """The vnnmap of the new generation on every member, then the thaw."""
        assert isinstance(self.effect, Controls)
        assert {c.op for c in self.effect.calls} == {"set_vnnmap"}
        vnnmap = self.effect.calls[0].args
        assert vnnmap["generation"] == GEN and vnnmap["epoch"] == epoch
        assert vnnmap["vnnmap"] == self.members
        assert self.answer([None] * len(self.members)) == Controls.on_all(
            self.members, "thaw", {"generation": GEN}
        )
        assert self.answer([None] * len(self.members)) is None


def rec(key: bytes, rsn: int, dmaster: int, value: bytes = b"v") -> list[Any]:
    return [key, rsn, dmaster, value]


def test_a_recovery_freezes_everyone_then_installs_the_generation_and_thaws() -> None:
    run = Run()
    run.frozen({p: reply() for p in MEMBERS})
    run.ends(epoch=4)
    assert run.result == 0


def test_the_thaw_waits_for_the_leases_of_nodes_left_out() -> None:
    """Node 1 confirmed node 2's lease moments ago: the new generation may
    not thaw before that lease runs out, counted from when the replies came,
    unless node 2 says it froze for this generation before that."""
    members = [0, 1]
    run = Run(members)
    run.frozen({0: reply(), 1: reply(leases=((2, 0.75),))}, now=100.0)
    assert isinstance(run.effect, Controls) and run.effect.calls[0].op == "set_vnnmap"
    assert run.answer([None, None]) == NOW
    fence = run.answer(100.25)
    assert fence == Controls([Control(2, "freeze", {"generation": GEN}, timeout=0.5)], True)
    unreachable = CtdbError(ErrorCode.TIMEOUT, "node 2 did not answer")
    assert run.answer([unreachable]) == NOW
    assert run.answer(100.5) == Pause(0.25)  # until 100.75
    assert run.answer() == Controls.on_all(members, "thaw", {"generation": GEN})


def test_a_node_left_out_that_freezes_for_the_new_generation_is_not_waited_for() -> None:
    members = [0, 1]
    run = Run(members)
    run.frozen({0: reply(), 1: reply(leases=((2, 0.75), (3, 0.25)))}, now=100.0)
    run.answer([None, None])
    fences = run.answer(100.0)
    assert isinstance(fences, Controls) and fences.failures
    assert [(c.pnn, c.op, c.timeout) for c in fences.calls] == [
        (2, "freeze", 0.75),
        (3, "freeze", 0.25),
    ]
    unreachable = CtdbError(ErrorCode.TIMEOUT, "node 3 did not answer")
    assert run.answer([None, unreachable]) == NOW  # node 2 froze: only node 3's lease counts
    assert run.answer(100.5) == Controls.on_all(members, "thaw", {"generation": GEN})


def test_databases_a_member_lacks_are_attached_one_at_a_time_before_any_record_moves() -> None:
    run = Run()
    have = {"a.tdb": volatile(None), "p.tdb": persistent(0, b"")}
    run.frozen({0: reply(dbs=have), 1: reply(dbs={"a.tdb": volatile(None)}), 2: reply()})
    attaches = []
    while isinstance(run.effect, Control) and run.effect.op == "attach":
        attaches.append((run.effect.pnn, run.effect.args["name"], run.effect.args["kind"]))
        run.answer()
    assert sorted(attaches) == [
        (1, "p.tdb", "persistent"),
        (2, "a.tdb", "volatile"),
        (2, "p.tdb", "persistent"),
    ]
    assert isinstance(run.effect, Controls) and run.effect.calls[0].op == "pull"


def test_a_persistent_copy_comes_from_the_newest_epoch_and_goes_only_where_it_differs() -> None:
    """Node 2 missed the last recovery (thawed 2): its higher sequence number
    counts for nothing. Of the others node 1 is ahead; node 0 and node 2
    differ from it, so they get its copy."""
    dbid = db_id("p.tdb")
    run = Run()
    run.frozen(
        {
            0: reply(thawed=3, dbs={"p.tdb": persistent(5, b"h5")}),
            1: reply(thawed=3, dbs={"p.tdb": persistent(7, b"h7")}),
            2: reply(thawed=2, dbs={"p.tdb": persistent(9, b"h9")}),
        }
    )
    assert run.effect == Control(1, "pull", {"db_id": dbid, "generation": GEN})
    records = [rec(b"k", 7, 1)]
    run.answer(records)
    run.pushed([0, 2], dbid, records, replace_all=True)
    run.ends(epoch=4)
    assert run.result == 2


def test_a_persistent_copy_every_member_already_holds_moves_nowhere() -> None:
    run = Run()
    same = {"p.tdb": persistent(5, b"h5")}
    run.frozen({p: reply(dbs=same) for p in MEMBERS})
    run.ends(epoch=4)
    assert run.result == 0


def test_a_volatile_database_nobody_tracked_is_merged_from_every_copy() -> None:
    """No member holds the last recovery's copy (a whole cluster restarted):
    every member sends everything, and gets the whole merge back."""
    dbid = db_id("v.tdb")
    run = Run()
    run.frozen({p: reply(dbs={"v.tdb": volatile(None)}) for p in MEMBERS})
    assert run.effect == Controls(
        [Control(p, "pull", {"db_id": dbid, "generation": GEN}) for p in MEMBERS]
    )
    copies = [[rec(b"a", 1, 0)], [rec(b"a", 2, 1)], [rec(b"b", 1, 2)]]
    assert run.answer(copies) == Merge(dict(zip(MEMBERS, copies, strict=True)))
    merged = [rec(b"a", 2, 1), rec(b"b", 1, 2)]
    run.answer(merged)
    run.pushed(MEMBERS, dbid, merged, replace_all=True)
    run.ends(epoch=4)
    assert run.result == 3 + 2 * 3


def test_a_volatile_database_moves_only_the_keys_the_holders_changed() -> None:
    """Nodes 0 and 1 hold the last recovery's copy; node 2 restarted (no
    base). The holders name the keys they changed and send only those; the
    provider (the leader, a holder) also sends its copy of the keys only
    node 2 has. The holders get the merged keys; node 2 gets the provider's
    whole database after the merge."""
    dbid = db_id("v.tdb")
    base = (3, 50)
    run = Run()
    run.frozen(
        {
            0: reply(dbs={"v.tdb": volatile(base)}),
            1: reply(dbs={"v.tdb": volatile(base)}),
            2: reply(dbs={"v.tdb": volatile(None)}),
        }
    )
    at = {"db_id": dbid, "generation": GEN}
    assert run.effect == Controls(
        [Control(0, "changed", at), Control(1, "changed", at), Control(2, "pull", at)]
    )
    full_of_2 = [rec(b"x", 1, 2), rec(b"k1", 1, 2)]
    assert run.answer([[b"k1"], [b"k2"]] + [full_of_2]) == Controls(
        [
            Control(0, "pull", {**at, "keys": [b"k1", b"k2", b"x"]}),
            Control(1, "pull", {**at, "keys": [b"k1", b"k2"]}),
        ]
    )
    of_0 = [rec(b"k1", 5, 0), rec(b"x", 3, 0)]
    of_1 = [rec(b"k2", 6, 1)]
    assert run.answer([of_0, of_1]) == Merge({2: full_of_2, 0: of_0, 1: of_1})
    diff = [rec(b"k1", 5, 0), rec(b"k2", 6, 1), rec(b"x", 3, 0)]
    run.answer(diff)
    run.pushed([0, 1], dbid, diff, replace_all=False)
    assert run.effect == Control(0, "pull", at)
    whole = diff + [rec(b"y", 1, 0)]
    run.answer(whole)
    run.pushed([2], dbid, whole, replace_all=True)
    run.ends(epoch=4)
    assert run.result == (2 + 2 + 1) + 3 * 2 + 4 * 2


def test_a_failed_control_ends_the_recovery_before_any_member_thaws() -> None:
    run = Run()
    run.frozen({p: reply(dbs={"v.tdb": volatile(None)}) for p in MEMBERS})
    assert isinstance(run.effect, Controls) and run.effect.calls[0].op == "pull"
    failure = NodeFailed(2, "pull", CtdbError(ErrorCode.IO, "disk gone"))
    with pytest.raises(NodeFailed) as ended:
        run.fail(failure)
    assert ended.value.pnn == 2 and ended.value.code == ErrorCode.IO
    with pytest.raises(StopIteration):
        next(run.flow)  # nothing more: no set_vnnmap, no thaw


def test_a_member_that_does_not_see_every_other_makes_the_recovery_retry_at_once() -> None:
    run = Run()
    with pytest.raises(CtdbError) as failed:
        run.frozen({0: reply(), 1: reply(view=(0, 1)), 2: reply()})
    assert failed.value.code == ErrorCode.RETRY


# -- the driver -------------------------------------------------------------------


def test_drive_raises_an_effects_failure_inside_the_flow_which_may_handle_it() -> None:
    def flow() -> flows.Flow[str, list[Any]]:
        seen: list[Any] = [(yield "first")]
        try:
            yield "fails"
        except CtdbError as exc:
            seen.append(exc.code)
        seen.append((yield "last"))
        return seen

    async def carry_out(effect: str) -> str:
        if effect == "fails":
            raise CtdbError(ErrorCode.TIMEOUT, "no reply")
        return effect.upper()

    assert asyncio.run(flows.drive(flow(), carry_out)) == ["FIRST", ErrorCode.TIMEOUT, "LAST"]


def test_drive_closes_the_flow_when_its_task_is_cancelled() -> None:
    closed: list[str] = []

    def flow() -> flows.Flow[str, None]:
        try:
            yield "wait forever"
        finally:
            closed.append("closed")

    async def main() -> None:
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def carry_out(effect: str) -> None:
            await never

        task = asyncio.ensure_future(flows.drive(flow(), carry_out))
        await asyncio.sleep(0)
        assert closed == []
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert closed == ["closed"]
