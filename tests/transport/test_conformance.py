"""Transport conformance: the same tests against every backend.

The engine relies on exactly what a backend's `capabilities` promise, so each
test checks one promise and is skipped (with the reason) only where the
backend does not make it. Backends: "memory" (FIFO mode), "memory-vs" (total
order + virtual synchrony), "tcp" and "vs" (corosync CPG), the last two as
separate processes (see member.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.transport.conftest import Cluster, Member, wait_until

N = 3
TIMEOUT = 30.0


def run(cluster: Cluster, body: Callable[[], Awaitable[None]]) -> None:
    """Run `body` in a fresh loop and always shut the members down inside it."""

    async def main() -> None:
        try:
            await body()
        finally:
            await cluster.aclose()

    asyncio.run(main())


async def formed(members: list[Member], expect: list[int] | None = None) -> None:
    """Wait until every member's latest view is `expect` (default: all of them)."""
    want = expect if expect is not None else sorted(m.pnn for m in members)
    await wait_until(
        lambda: all(m.last_members() == want for m in members),
        TIMEOUT,
        lambda: f"view {want} on all; have {[m.last_members() for m in members]}",
    )


def labels(events: list[dict[str, Any]]) -> list[str]:
    return [e["label"] for e in events]


def numbered(prefix: str, count: int, start: int = 1) -> list[str]:
    return [f"{prefix}:{i}" for i in range(start, start + count)]


def stream_from_full_view(member: Member, n: int) -> list[tuple[Any, ...]]:
    """A member's deliveries and views from the first view holding all `n` nodes."""
    events = member.events
    first = next(
        i for i, e in enumerate(events) if e["ev"] == "view" and e["members"] == list(range(n))
    )
    out: list[tuple[Any, ...]] = []
    for e in events[first:]:
        if e["ev"] == "view":
            out.append(("view", e["id"], tuple(e["members"])))
        elif e["ev"] == "msg":
            out.append(("msg", e["src"], e["label"]))
    return out


def test_view_forms_with_all_members(cluster: Cluster) -> None:
    async def body() -> None:
        members = await cluster.start(N)
        await formed(members)
        if cluster.capabilities.virtual_synchrony:
            ids = {m.views()[-1]["id"] for m in members}
            assert len(ids) == 1, f"members disagree on the view id: {ids}"
        for m in members:
            seen = [v["id"] for v in m.views()]
            assert seen == sorted(set(seen)), f"view ids of {m.pnn} do not grow: {seen}"

    run(cluster, body)


def test_send_is_fifo_per_pair_and_reaches_only_its_target(cluster: Cluster) -> None:
    async def body() -> None:
        members = await cluster.start(N)
        await formed(members)
        await asyncio.gather(
            members[0].command({"cmd": "send", "dst": 1, "prefix": "s01", "count": 300}),
            members[2].command({"cmd": "send", "dst": 1, "prefix": "s21", "count": 300}),
            members[1].command({"cmd": "send", "dst": 0, "prefix": "s10", "count": 300}),
        )
        await wait_until(
            lambda: len(members[1].msgs()) >= 600 and len(members[0].msgs()) >= 300,
            TIMEOUT,
            lambda: f"600/300 messages; have {len(members[1].msgs())}/{len(members[0].msgs())}",
        )
        # A stray copy would come through the same links as the real ones;
        # give it a moment to show up before checking it did not.
        await asyncio.sleep(0.2)
        assert labels(members[1].msgs(src=0)) == numbered("s01", 300)
        assert labels(members[1].msgs(src=2)) == numbered("s21", 300)
        assert labels(members[0].msgs(src=1)) == numbered("s10", 300)
        assert len(members[1].msgs()) == 600
        assert len(members[0].msgs()) == 300
        assert members[2].msgs() == [], "send() reached a node it was not addressed to"

    run(cluster, body)


def test_broadcast_reaches_all_including_self(cluster: Cluster) -> None:
    async def body() -> None:
        members = await cluster.start(N)
        await formed(members)
        await asyncio.gather(
            *(m.command({"cmd": "broadcast", "prefix": f"b{m.pnn}", "count": 100}) for m in members)
        )
        await wait_until(
            lambda: all(len(m.msgs()) >= 100 * N for m in members),
            TIMEOUT,
            lambda: f"{100 * N} each; have {[len(m.msgs()) for m in members]}",
        )
        await asyncio.sleep(0.1)
        for m in members:
            assert len(m.msgs()) == 100 * N, f"duplicates at {m.pnn}"
            for src in range(N):
                assert labels(m.msgs(src=src)) == numbered(f"b{src}", 100), (m.pnn, src)

    run(cluster, body)


def test_total_order_across_concurrent_broadcasters(cluster: Cluster) -> None:
    cluster.require("total_order")

    async def body() -> None:
        members = await cluster.start(N)
        await formed(members)
        await asyncio.gather(
            *(
                m.command(
                    {
                        "cmd": "broadcast",
                        "prefix": f"t{m.pnn}",
                        "count": 300,
                        "pause_every": 7,
                        "pause": 0.0005,
                    }
                )
                for m in members
            )
        )
        await wait_until(
            lambda: all(len(m.msgs()) >= 300 * N for m in members),
            TIMEOUT,
            lambda: f"{300 * N} each; have {[len(m.msgs()) for m in members]}",
        )
        orders = [labels(m.msgs()) for m in members]
        for other in orders[1:]:
            assert other == orders[0], "members delivered broadcasts in different orders"
        interleaved = [label.split(":")[0] for label in orders[0]]
        switches = sum(1 for a, b in zip(interleaved, interleaved[1:], strict=False) if a != b)
        assert switches > N, "broadcasters did not actually overlap; the test proved nothing"

    run(cluster, body)


def test_a_send_takes_its_place_in_the_total_order(cluster: Cluster) -> None:
    """What a read barrier relies on: a message a node sends (here to itself)
    after some member delivered broadcast B is delivered after B, even when
    the sender has not read B yet (it was stopped while B went round)."""
    cluster.require("total_order")
    rounds, burst = 3, 3000  # many turns of a member's loop (vs reads 256 events a turn)

    async def body() -> None:
        members = await cluster.start(N, keepalive=2.0)  # held, not expelled
        await formed(members)
        for r in range(1, rounds + 1):
            members[2].hold()
            try:
                await members[0].command({"cmd": "broadcast", "prefix": f"w{r}", "count": burst})
                at_1 = burst * r
                await wait_until(
                    lambda: len(members[1].msgs()) == at_1,  # noqa: B023 (awaited here)
                    TIMEOUT,
                    lambda: f"{at_1} broadcasts at node 1; have {len(members[1].msgs())}",  # noqa: B023
                )
                # node 2 reads this command and the broadcasts at once when it goes on
                await members[2].command(
                    {"cmd": "send", "dst": 2, "prefix": "b", "start": r}, wait=False
                )
            finally:
                members[2].release()
            at_2 = (burst + 1) * r
            await wait_until(
                lambda: len(members[2].msgs()) == at_2,  # noqa: B023 (awaited here)
                TIMEOUT,
                lambda: f"{at_2} messages at node 2; have {len(members[2].msgs())}",  # noqa: B023
            )
        position = {label: i for i, label in enumerate(labels(members[2].msgs()))}
        for r in range(1, rounds + 1):
            barrier = position[f"b:{r}"]
            late = [w for w in numbered(f"w{r}", burst) if position[w] > barrier]
            assert not late, f"b:{r} was delivered at node 2 before {late[:5]}"
        assert members[0].msgs(prefix="b") == members[1].msgs(prefix="b") == []

    run(cluster, body)


def test_large_messages_arrive_intact(cluster: Cluster) -> None:
    size = 1024 * 1024
    if cluster.capabilities.max_message_size < size:
        import pytest

        pytest.skip(f"{cluster.backend} max_message_size is below 1 MiB")

    async def body() -> None:
        members = await cluster.start(N)
        await formed(members)
        await members[0].command(
            {"cmd": "broadcast", "prefix": "big", "count": 4, "size": size, "drain": True}
        )
        await members[2].command(
            {"cmd": "send", "dst": 1, "prefix": "bigp", "count": 3, "size": size, "drain": True}
        )
        await wait_until(
            lambda: (
                all(len(m.msgs(prefix="big")) >= 4 for m in members)
                and len(members[1].msgs(prefix="bigp")) >= 3
            ),
            TIMEOUT,
            lambda: f"large messages; have {[len(m.msgs()) for m in members]}",
        )
        for m in members:
            got = m.msgs(prefix="big")
            assert labels(got) == numbered("big", 4)
            assert all(e["ok"] and e["size"] == size for e in got), got
        got = members[1].msgs(prefix="bigp")
        assert labels(got) == numbered("bigp", 3)
        assert all(e["ok"] and e["size"] == size for e in got), got

    run(cluster, body)


def test_back_pressure_bounds_memory_and_loses_nothing(cluster: Cluster) -> None:
    count, size = 1024, 64 * 1024  # 64 MiB through drain() after every send

    async def body() -> None:
        members = await cluster.start(2)
        await formed(members)
        result = await members[0].command(
            {"cmd": "flood", "dst": 1, "prefix": "f", "count": count, "size": size}
        )
        await wait_until(
            lambda: len(members[1].msgs()) >= count,
            TIMEOUT * 2,
            lambda: f"{count} messages; have {len(members[1].msgs())}",
        )
        got = members[1].msgs()
        assert labels(got) == numbered("f", count)
        assert all(e["ok"] for e in got)
        if cluster.network is not None:
            # In-process: the network knows exactly what the sender has queued.
            from transport.memory import HIGH_WATER

            assert result["max_pending"] <= HIGH_WATER + size, result
        else:
            # A sender that ignored drain() would grow by the whole 64 MiB.
            assert result["rss_growth_kb"] < 32 * 1024, result

    run(cluster, body)


def test_member_failure_mid_stream(cluster: Cluster) -> None:
    """The classic scenario: A, B, C each broadcast m1..m4; C dies mid-stream.

    With virtual synchrony every survivor must deliver the identical sequence,
    view change included at the same position; otherwise (TCP) each survivor
    must still get all of the other survivor's messages, in order, and the
    view change.
    """

    async def body() -> None:
        members = await cluster.start(N)
        a, b, c = members
        await formed(members)
        await asyncio.gather(
            a.command({"cmd": "broadcast", "prefix": "A", "count": 2}),
            b.command({"cmd": "broadcast", "prefix": "B", "count": 2}),
            c.command({"cmd": "broadcast", "prefix": "C", "count": 2}),
        )
        # C keeps streaming m3, m4, ... so that it dies with messages in flight.
        await c.command(
            {
                "cmd": "broadcast",
                "prefix": "C",
                "start": 3,
                "count": 1_000_000,
                "pause_every": 5,
                "pause": 0.0005,
            },
            wait=False,
        )
        await wait_until(
            lambda: len(a.msgs(src=2)) >= 30 and len(b.msgs(src=2)) >= 30,
            TIMEOUT,
            lambda: f"C's stream to arrive; have {len(a.msgs(src=2))}/{len(b.msgs(src=2))}",
        )
        await asyncio.gather(
            a.command({"cmd": "broadcast", "prefix": "A", "start": 3, "count": 2}),
            b.command({"cmd": "broadcast", "prefix": "B", "start": 3, "count": 2}),
            c.kill(),
        )
        survivors = [a, b]
        await formed(survivors, [0, 1])
        # A fence: once both ends are in, everything sent before them is too.
        await asyncio.gather(
            a.command({"cmd": "broadcast", "prefix": "A", "start": 5, "count": 1}),
            b.command({"cmd": "broadcast", "prefix": "B", "start": 5, "count": 1}),
        )
        await wait_until(
            lambda: all("A:5" in labels(m.msgs()) and "B:5" in labels(m.msgs()) for m in survivors),
            TIMEOUT,
            lambda: "the fence messages",
        )
        await asyncio.sleep(0.1)
        for m in survivors:
            assert labels(m.msgs(prefix="A")) == numbered("A", 5), m.pnn
            assert labels(m.msgs(prefix="B")) == numbered("B", 5), m.pnn
            from_c = labels(m.msgs(prefix="C"))
            assert from_c == numbered("C", len(from_c)), f"C's stream at {m.pnn} has a gap"
            assert len(from_c) >= 30
            last = m.views()[-1]
            assert last["members"] == [0, 1]
            # Nothing from C after the view that removed it.
            idx = m.events.index(last)
            assert all(e.get("src") != 2 for e in m.events[idx:] if e["ev"] == "msg")
        if cluster.capabilities.virtual_synchrony:
            sa, sb = (stream_from_full_view(m, N) for m in survivors)
            assert sa == sb, _first_difference(sa, sb)

    run(cluster, body)


def _first_difference(x: list[tuple[Any, ...]], y: list[tuple[Any, ...]]) -> str:
    for i, (p, q) in enumerate(zip(x, y, strict=False)):
        if p != q:
            context = x[max(0, i - 3) : i + 3]
            return f"survivors' streams differ at {i}: {p} vs {q}; context {context}"
    return f"survivors' streams differ in length: {len(x)} vs {len(y)}"


@pytest.mark.parametrize("cluster", ["memory", "tcp"], indirect=True)
def test_a_member_that_died_left_in_order_one_cut_off_did_not(cluster: Cluster) -> None:
    """What lets a tcp recovery skip the lease the survivors granted a dead
    node, and only a dead one (`Transport.left_in_order`): after a kill -9
    the survivors say the member closed its end; after it was taken away
    without closing (memory: a partition; tcp: SIGSTOP until its silence
    drops it) they do not, since it may still believe it serves. The vs
    engine keeps no such lease: its backends answer False throughout."""

    async def body() -> None:
        members = await cluster.start(N)
        await formed(members)
        survivors, gone = members[:2], members[2]
        if cluster.network is not None:
            cluster.network.partition([[0, 1], [2]])
        else:
            gone.hold()
        try:
            await formed(survivors, [0, 1])
            for m in survivors:  # asked before it is back: in the view, it has not left
                assert await left_in_order(m, 2) == [], m.pnn
        finally:
            if cluster.network is not None:
                cluster.network.heal()
            else:
                gone.release()
        await formed(members)
        await gone.kill()
        await formed(survivors, [0, 1])
        for m in survivors:
            assert await left_in_order(m, 2) == [2], m.pnn

    run(cluster, body)


async def left_in_order(member: Member, *peers: int) -> list[int]:
    reply = await member.command({"cmd": "left_in_order", "peers": list(peers)})
    return list(reply["left_in_order"])
