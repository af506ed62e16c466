"""vs: a member process that stops reading (SIGSTOP) is expelled and comes back.

corosync keeps a stopped process in its CPG group for ever and queues the
group's traffic for it; the transport notices the silence itself (see
transport/cpg.py, "Hung members"). Members are separate `member.py`
processes on the suite's private corosync (its own network namespace, so
what we stop disturbs nobody else), with keepalive 0.2 s x 5: a member
silent for 1 s is expelled.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.transport.conftest import (
    MEMBER,
    PYTHON,
    Cluster,
    Member,
    ProcessMember,
    wait_until,
)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="corosync CPG needs root"),
    pytest.mark.timeout(180),
]

KEEPALIVE = 0.2
LIMIT = 5  # member.py keeps the default KeepaliveLimit
SILENCE = KEEPALIVE * LIMIT
TIMEOUT = 30.0
NODES = [f"127.0.0.{i + 1}" for i in range(4)]


class HungCluster(Cluster):
    """vs members started one by one (a joiner comes later), any of them stoppable."""

    group: str = ""
    stopped: set[int]

    async def spawn(self, pnn: int) -> ProcessMember:
        argv = [
            PYTHON, str(MEMBER), "--transport", "vs", "--pnn", str(pnn),
            "--nodes", ",".join(NODES), "--keepalive", str(KEEPALIVE),
            "--extra", f"group={self.group}",
        ]  # fmt: skip
        argv = ["nsenter", "-t", str(self.corosync.holder_pid), "--net", "--", *argv]
        member = await ProcessMember.spawn(pnn, argv, self.tmp / f"member{pnn}.stderr")
        self.pids.append(member.proc.pid)
        self.members.append(member)
        await member.ready(TIMEOUT)
        return member

    def pause(self, m: ProcessMember) -> float:
        m.proc.send_signal(signal.SIGSTOP)
        self.stopped.add(m.proc.pid)
        return time.monotonic()

    def resume(self, m: ProcessMember) -> None:
        m.proc.send_signal(signal.SIGCONT)
        self.stopped.discard(m.proc.pid)

    def cleanup(self) -> None:
        for pid in self.stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        super().cleanup()


@pytest.fixture
def hung(private_corosync: Any, tmp_path: Path) -> Iterator[HungCluster]:
    c = HungCluster("vs", tmp_path, private_corosync)
    c.group = f"hung{os.getpid()}x{time.monotonic_ns()}"
    c.stopped = set()
    try:
        yield c
    finally:
        c.cleanup()


def run(cluster: HungCluster, body: Any) -> None:
    async def main() -> None:
        try:
            await body()
        finally:
            for pid in list(cluster.stopped):
                os.kill(pid, signal.SIGCONT)
            await cluster.aclose()

    asyncio.run(main())


async def formed(members: Sequence[Member], want: list[int]) -> float:
    start = time.monotonic()
    await wait_until(
        lambda: all(m.last_members() == want for m in members),
        TIMEOUT,
        lambda: f"view {want} on all; have {[m.last_members() for m in members]}",
    )
    return time.monotonic() - start


def stream(member: Member, until_view: list[int] | None = None) -> list[tuple[Any, ...]]:
    """Messages (src, label) from the first full view on, up to the view `until_view`."""
    out: list[tuple[Any, ...]] = []
    started = False
    for e in member.events:
        if e["ev"] == "view":
            if started and e["members"] == until_view:
                return out
            started = started or len(e["members"]) >= 3
        elif started and e["ev"] == "msg":
            out.append((e["src"], e["label"]))
    return out


async def received(m: Member, counts: dict[str, int]) -> None:
    """Until `m` delivered exactly `counts[prefix]` messages of each prefix."""
    await wait_until(
        lambda: all(len(m.msgs(prefix=p)) == n for p, n in counts.items()),
        TIMEOUT,
        lambda: f"member {m.pnn} to deliver {counts}; have {labels(m)}",
    )


def labels(m: Member) -> list[str]:
    return [e["label"] for e in m.msgs()]


def test_stopped_member_is_expelled_at_one_position_and_rejoins(hung: HungCluster) -> None:
    async def body() -> None:
        a, b, c = [await hung.spawn(p) for p in range(3)]
        await formed([a, b, c], [0, 1, 2])
        # Everyone streams, so C stops with messages in flight both ways.
        for m, prefix in ((a, "A"), (b, "B"), (c, "C")):
            await m.command(
                {"cmd": "broadcast", "prefix": prefix, "count": 1_000_000,
                 "pause_every": 5, "pause": 0.002},
                wait=False,
            )  # fmt: skip
        await wait_until(lambda: len(a.msgs(src=2)) >= 20, TIMEOUT, lambda: "C's stream to arrive")
        stopped_at = hung.pause(c)
        await formed([a, b], [0, 1])
        took = time.monotonic() - stopped_at
        # Not before its silence exceeds the limit; then within a few ticks.
        assert SILENCE * 0.9 <= took < SILENCE + 5.0, took

        # The survivors delivered the same stream up to the expulsion, and the
        # stopped member delivers exactly that prefix once it runs again.
        before_a, before_b = stream(a, [0, 1]), stream(b, [0, 1])
        assert before_a == before_b
        hung.resume(c)
        await wait_until(
            lambda: [2] in [v["members"] for v in c.views()],
            TIMEOUT,
            lambda: f"C to report that it is alone; views {c.views()}",
        )
        assert stream(c, [2]) == before_a
        took = await formed([a, b, c], [0, 1, 2])
        # Nothing C sent between its expulsion and its new join was delivered,
        # and after it C's stream reaches the survivors again.
        for m in (a, b):
            out = next(i for i, e in enumerate(m.events) if e.get("members") == [0, 1])
            back = next(
                i
                for i, e in enumerate(m.events)
                if i > out and e["ev"] == "view" and e["members"] == [0, 1, 2]
            )
            assert not [e for e in m.events[out:back] if e["ev"] == "msg" and e["src"] == 2]
        seen = len(a.msgs(src=2))
        await wait_until(
            lambda: len(a.msgs(src=2)) > seen + 10 and len(b.msgs(src=2)) > seen + 10,
            TIMEOUT,
            lambda: "C's messages after its rejoin",
        )

    run(hung, body)


def test_join_completes_while_the_state_sender_is_stopped(hung: HungCluster) -> None:
    """A joiner's state comes from the lowest synced member: here a stopped one.

    It must get it from the next member once the stopped one is expelled,
    instead of giving up (``no view within ...``).
    """

    async def body() -> None:
        members = [await hung.spawn(p) for p in range(3)]
        await formed(members, [0, 1, 2])
        # The member with the lowest pid is the one that sends a joiner its state.
        a = min(members, key=lambda m: m.proc.pid)
        b, c = (m for m in members if m is not a)
        hung.pause(a)
        d = await hung.spawn(3)
        await formed([b, c, d], sorted([b.pnn, c.pnn, 3]))
        await b.command({"cmd": "broadcast", "prefix": "B", "count": 3})
        await d.command({"cmd": "broadcast", "prefix": "D", "count": 3})
        for m in (b, c, d):
            await received(m, {"B": 3, "D": 3})
        hung.resume(a)
        await formed([a, b, c, d], [0, 1, 2, 3])
        await a.command({"cmd": "broadcast", "prefix": "A", "count": 2})
        for m in (b, c, d):
            await received(m, {"A": 2})

    run(hung, body)
