"""The VS transport on a real 3-host corosync cluster (network namespaces).

The conformance suite runs every vs member on one shared corosync, where a
"member failure" is a process death seen by a single daemon. Here each member
has a host of its own: three network namespaces on a virtual LAN
(`tools.netns.NetnsCluster`), one corosync per namespace (udpu, nodelist of the
three namespace addresses, `token: 300` so a dead daemon is noticed in well
under a second) and one `member.py` process per namespace started with
``private_run=True`` so it reaches its own node's corosync.  That makes the
totem protocol between daemons part of what is tested: total order across
hosts, the view change position when a member process dies, when a whole
daemon dies (and comes back), and when a host is cut off the network and
healed.

Corosync settings (from `transport.corosync.render_config`): ``transport:
udpu``, ``token: 300`` (consensus defaults to 1.2 x token), no crypto,
votequorum with ``expected_votes: 3``, state dir and log file in
``node_dir(i)/state``.  Before members start, each test waits until every
daemon reports 3 total votes, so the members join one already-formed ring.

Measured here: a SIGKILLed member is dropped in milliseconds; a killed
daemon or a cut host after ~2.1 s (with three nodes corosync stretches the
token to 300 + 650 ms token_coefficient = 950 ms, then waits 1140 ms
consensus).

Groups that formed apart (a cut host, or a restarted corosync whose member
reconnected before its ring merged) must merge into one view with one id:
the heal half of the partition test and the corosync restart test check it.

Skipped only when `tools.netns.available()` says namespaces cannot be made
here.  Every test builds and removes its own cluster (`NetnsCluster.down`
kills whatever still runs in the namespaces), also when it fails.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.transport.conftest import ProcessMember, wait_until
from tools import netns
from tools.netns_ctdb import start_corosync, votes

MEMBER = Path(__file__).resolve().with_name("member.py")
PYTHON = sys.executable
N = 3
TIMEOUT = 20.0
VICTIM_STREAM = 3000
MERGE_TIMEOUT = 8.0

_ok, _why = netns.available()
pytestmark = pytest.mark.skipif(not _ok, reason=f"network namespaces unavailable: {_why}")


class VsNet:
    """A NetnsCluster with one corosync and (later) one vs member per node."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.net = netns.NetnsCluster(N, prefix=netns.unique_prefix("vs"))
        self.daemons: dict[int, subprocess.Popen[bytes]] = {}
        self.members: list[ProcessMember] = []
        self.group = f"vsnetns{int(time.time() * 1000) % 10**9}"

    # -- corosync ------------------------------------------------------------
    def start_corosync(self, i: int) -> None:
        self.daemons[i] = start_corosync(self.net, i)

    def kill_corosync(self, i: int) -> None:
        proc = self.daemons[i]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def wait_votes(self, want: dict[int, int], timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while (got := {i: votes(self.net, i) for i in want}) != want:
            if time.monotonic() > deadline:
                raise AssertionError(f"corosync votes {got}, want {want}; {self.logs()}")
            time.sleep(0.1)

    def logs(self, lines: int = 15) -> str:
        out = []
        for i in range(N):
            path = self.net.node_dir(i) / "state" / "corosync.log"
            try:
                tail = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                tail = ["(no log)"]
            out.append(f"--- corosync {i} ---\n" + "\n".join(tail))
        return "\n".join(out)

    # -- members -------------------------------------------------------------
    async def start_member(self, i: int) -> ProcessMember:
        argv = self.net.command(
            i,
            [
                PYTHON,
                str(MEMBER),
                "--transport",
                "vs",
                "--pnn",
                str(i),
                "--nodes",
                ",".join(self.net.addresses()),
                "--extra",
                f"group={self.group}",
                "--extra",
                "join_timeout=15",
            ],
            private_run=True,
        )
        member = await ProcessMember.spawn(i, argv, self.tmp / f"member{i}.stderr")
        self.members.append(member)
        return member

    async def start_members(self) -> list[ProcessMember]:
        members = [await self.start_member(i) for i in range(N)]
        for m in members:
            await m.ready(30)
        return members

    # -- lifecycle -----------------------------------------------------------
    def up(self) -> VsNet:
        self.net.up()
        for i in range(N):
            self.start_corosync(i)
        self.wait_votes(dict.fromkeys(range(N), N))
        return self

    async def aclose(self) -> None:
        await asyncio.gather(*(m.close() for m in self.members), return_exceptions=True)

    def down(self) -> None:
        for m in self.members:
            if m.proc.returncode is None:
                try:
                    m.proc.send_signal(signal.SIGKILL)
                except ProcessLookupError:
                    pass
        # Kills every process left in our namespaces (daemons included) and
        # removes the node directories with libqb's /dev/shm leftovers.
        self.net.down()
        for proc in self.daemons.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def vsnet(tmp_path: Path) -> Iterator[VsNet]:
    net = VsNet(tmp_path)
    try:
        net.up()
        yield net
    finally:
        net.down()


def run(net: VsNet, body: Callable[[], Awaitable[None]]) -> None:
    """Run `body` in a fresh loop; members are shut down inside it, always."""

    async def main() -> None:
        try:
            await body()
        finally:
            await net.aclose()

    asyncio.run(main())


# -- helpers -------------------------------------------------------------------


def labels(events: list[dict[str, Any]]) -> list[str]:
    return [e["label"] for e in events]


def numbered(prefix: str, count: int, start: int = 1) -> list[str]:
    return [f"{prefix}:{i}" for i in range(start, start + count)]


def show_views(members: list[ProcessMember]) -> str:
    return "; ".join(
        f"{m.pnn}: {[(v['id'], v['members']) for v in m.views()][-4:]}" for m in members
    )


async def formed(
    members: list[ProcessMember], want: list[int], net: VsNet, timeout: float = TIMEOUT
) -> int:
    """Wait until every member's latest view is `want` with one view id; return the id."""

    def ok() -> bool:
        last = [m.views()[-1] if m.views() else None for m in members]
        return (
            all(v is not None and v["members"] == want for v in last)
            and len({v["id"] for v in last if v is not None}) == 1
        )

    await wait_until(
        ok, timeout, lambda: f"view {want} with one id; have {show_views(members)}\n{net.logs()}"
    )
    return int(members[0].views()[-1]["id"])


async def merged(members: list[ProcessMember], net: VsNet) -> int:
    """After corosync reports all N votes: one N-member view with one id.

    Once the daemons have merged their rings, CPG reports it within
    milliseconds, so MERGE_TIMEOUT is generous.
    """
    return await formed(members, list(range(N)), net, timeout=MERGE_TIMEOUT)


def stream_from(member: ProcessMember, view_id: int) -> list[tuple[Any, ...]]:
    """Deliveries and views of `member` from the view with id `view_id` on."""
    events = member.events
    first = next(i for i, e in enumerate(events) if e["ev"] == "view" and e["id"] == view_id)
    out: list[tuple[Any, ...]] = []
    for e in events[first:]:
        if e["ev"] == "view":
            out.append(("view", e["id"], tuple(e["members"])))
        elif e["ev"] == "msg":
            out.append(("msg", e["src"], e["label"]))
    return out


def first_difference(x: list[tuple[Any, ...]], y: list[tuple[Any, ...]]) -> str:
    for i, (p, q) in enumerate(zip(x, y, strict=False)):
        if p != q:
            return f"streams differ at {i}: {p} vs {q}; context {x[max(0, i - 3) : i + 3]}"
    return f"streams differ in length: {len(x)} vs {len(y)}"


async def fence(survivors: list[ProcessMember], tag: str) -> None:
    """Each survivor broadcasts one marker; once all have all, earlier traffic is in."""
    await asyncio.gather(
        *(m.command({"cmd": "broadcast", "prefix": f"{tag}{m.pnn}", "count": 1}) for m in survivors)
    )
    want = {f"{tag}{m.pnn}:1" for m in survivors}
    await wait_until(
        lambda: all(want <= set(labels(m.msgs())) for m in survivors),
        TIMEOUT,
        lambda: f"fence {tag} on {[m.pnn for m in survivors]}",
    )
    await asyncio.sleep(0.1)


async def stream_and_fail(
    members: list[ProcessMember], victim: int, fail: Callable[[], Awaitable[None]]
) -> None:
    """All broadcast; the victim's stream (P<victim>:3..) is still going when `fail()` hits.

    The stream is bounded (VICTIM_STREAM messages, at most ~2,500/s), so a
    victim that survives alone finishes it before the test heals anything.
    """
    v = members[victim]
    others = [m for m in members if m.pnn != victim]
    await asyncio.gather(
        *(m.command({"cmd": "broadcast", "prefix": f"P{m.pnn}", "count": 2}) for m in members)
    )
    await v.command(
        {
            "cmd": "broadcast",
            "prefix": f"P{victim}",
            "start": 3,
            "count": VICTIM_STREAM,
            "pause_every": 5,
            "pause": 0.002,
        },
        wait=False,
    )
    await wait_until(
        lambda: all(len(m.msgs(src=victim)) >= 30 for m in others),
        TIMEOUT,
        lambda: f"the victim's stream; have {[len(m.msgs(src=victim)) for m in others]}",
    )
    await asyncio.gather(
        *(
            m.command({"cmd": "broadcast", "prefix": f"P{m.pnn}", "start": 3, "count": 2})
            for m in others
        ),
        fail(),
    )


async def stream_finished(lone: ProcessMember) -> None:
    """Wait until a victim that lives on alone has delivered its whole stream to itself."""
    last = f"P{lone.pnn}:{VICTIM_STREAM + 2}"
    await wait_until(
        lambda: last in labels(lone.msgs(src=lone.pnn)),
        TIMEOUT,
        lambda: f"{last} on {lone.pnn}; have {len(lone.msgs(src=lone.pnn))} of its own",
    )
    # In order and without duplicates. Not gap-free when its corosync was
    # killed: chunks that daemon had taken but not yet ordered die with it
    # (the host crashed, as far as the ring is concerned).
    mine = [int(label.split(":")[1]) for label in labels(lone.msgs(prefix=f"P{lone.pnn}"))]
    assert mine == sorted(set(mine)), "the lone member's own stream is out of order"


def check_survivors(survivors: list[ProcessMember], victim: int, full_view_id: int) -> None:
    """Virtual synchrony on the survivors after `victim` left view `full_view_id`."""
    for m in survivors:
        for s in survivors:
            assert labels(m.msgs(prefix=f"P{s.pnn}")) == numbered(f"P{s.pnn}", 4), (m.pnn, s.pnn)
        from_v = labels(m.msgs(prefix=f"P{victim}"))
        assert from_v == numbered(f"P{victim}", len(from_v)), f"gap in the stream at {m.pnn}"
        assert len(from_v) >= 30
        views = [v for v in m.views() if v["id"] >= full_view_id]
        assert [v["members"] for v in views][:1] == [list(range(N))], views
        after = views[1:]
        assert after and all(victim not in v["members"] for v in after), views
        idx = m.events.index(after[0])
        assert all(e.get("src") != victim for e in m.events[idx:] if e["ev"] == "msg"), (
            f"{m.pnn} delivered the victim's message after the view that removed it"
        )
    streams = [stream_from(m, full_view_id) for m in survivors]
    for stream in streams[1:]:
        assert stream == streams[0], first_difference(streams[0], stream)


# -- tests ---------------------------------------------------------------------


def test_three_hosts_form_one_view_and_agree_on_total_order(vsnet: VsNet) -> None:
    count = 300

    async def body() -> None:
        members = await vsnet.start_members()
        vid = await formed(members, [0, 1, 2], vsnet)
        for m in members:
            seen = [v["id"] for v in m.views()]
            assert seen == sorted(set(seen)), f"view ids of {m.pnn} do not grow: {seen}"
        await asyncio.gather(
            *(
                m.command(
                    {
                        "cmd": "broadcast",
                        "prefix": f"t{m.pnn}",
                        "count": count,
                        "pause_every": 7,
                        "pause": 0.0005,
                    }
                )
                for m in members
            )
        )
        await wait_until(
            lambda: all(len(m.msgs()) >= count * N for m in members),
            TIMEOUT,
            lambda: f"{count * N} each; have {[len(m.msgs()) for m in members]}",
        )
        await asyncio.sleep(0.1)
        orders = [labels(m.msgs()) for m in members]
        for m, order in zip(members, orders, strict=True):
            assert len(order) == count * N, f"duplicates at {m.pnn}"
            for src in range(N):
                assert labels(m.msgs(src=src)) == numbered(f"t{src}", count), (m.pnn, src)
            assert order == orders[0], f"{m.pnn} and 0 delivered in different orders"
        hosts = [label.split(":")[0] for label in orders[0]]
        switches = sum(1 for a, b in zip(hosts, hosts[1:], strict=False) if a != b)
        assert switches > N, "the hosts' broadcasts did not overlap; the test proved nothing"
        assert all(m.views()[-1]["id"] == vid for m in members), "a view changed meanwhile"

    run(vsnet, body)


def test_member_killed_mid_stream_on_its_own_host(vsnet: VsNet) -> None:
    """The classic scenario across hosts: C's member process dies by SIGKILL."""

    async def body() -> None:
        members = await vsnet.start_members()
        vid = await formed(members, [0, 1, 2], vsnet)
        await stream_and_fail(members, 2, members[2].kill)
        survivors = members[:2]
        await formed(survivors, [0, 1], vsnet)
        await fence(survivors, "F")
        check_survivors(survivors, 2, vid)

    run(vsnet, body)


def test_killed_corosync_drops_its_host_and_it_rejoins_after_restart(vsnet: VsNet) -> None:
    async def body() -> None:
        members = await vsnet.start_members()
        vid = await formed(members, [0, 1, 2], vsnet)
        t0 = time.monotonic()

        async def kill_daemon() -> None:
            nonlocal t0
            t0 = time.monotonic()
            vsnet.kill_corosync(2)

        await stream_and_fail(members, 2, kill_daemon)
        survivors, lone = members[:2], members[2]
        await formed(survivors, [0, 1], vsnet)
        detected = time.monotonic() - t0
        await wait_until(
            lambda: lone.last_members() == [2],
            TIMEOUT,
            lambda: f"a solo view on node 2; have {show_views([lone])}",
        )
        await fence(survivors, "F")
        check_survivors(survivors, 2, vid)
        # The orphaned member did not crash and still works alone.
        assert lone.proc.returncode is None, lone.tail()
        await stream_finished(lone)
        await fence([lone], "solo")
        assert lone.proc.returncode is None, lone.tail()

        vsnet.start_corosync(2)
        vsnet.wait_votes(dict.fromkeys(range(N), N))
        # A restarted corosync first forms a ring of its own and merges a few
        # ms later; a member that reconnects inside that window founds a
        # group of its own, which must then merge (about 1 run in 15).
        rejoined = await merged(members, vsnet)
        assert rejoined > vid
        for m in members:
            seen = [v["id"] for v in m.views()]
            assert seen == sorted(set(seen)), f"view ids of {m.pnn} do not grow: {seen}"
        # Total order holds again in the merged view.
        await asyncio.gather(
            *(m.command({"cmd": "broadcast", "prefix": f"R{m.pnn}", "count": 50}) for m in members)
        )
        await wait_until(
            lambda: all(len(m.msgs(prefix=f"R{s}")) >= 50 for m in members for s in range(N)),
            TIMEOUT,
            lambda: f"the R round; have {[len(m.msgs()) for m in members]}",
        )
        streams = [stream_from(m, rejoined) for m in members]
        for s in streams[1:]:
            assert s == streams[0], first_difference(streams[0], s)
        print(f"corosync kill noticed by the survivors after {detected:.2f}s")

    run(vsnet, body)


def test_cut_host_is_dropped_and_views_merge_after_heal(vsnet: VsNet) -> None:
    """Partition: node 2 loses the network mid-stream, then comes back.

    Survivors agree, the cut node goes solo, and after the heal the two
    groups merge into one view with one id.
    """

    async def body() -> None:
        members = await vsnet.start_members()
        vid = await formed(members, [0, 1, 2], vsnet)
        t0 = time.monotonic()

        async def cut() -> None:
            nonlocal t0
            t0 = time.monotonic()
            vsnet.net.cut(2)

        await stream_and_fail(members, 2, cut)
        survivors, lone = members[:2], members[2]
        await formed(survivors, [0, 1], vsnet)
        detected = time.monotonic() - t0
        await wait_until(
            lambda: lone.last_members() == [2],
            TIMEOUT,
            lambda: f"a solo view on node 2; have {show_views([lone])}",
        )
        await fence(survivors, "F")
        check_survivors(survivors, 2, vid)
        await stream_finished(lone)
        mine = labels(lone.msgs(prefix="P2"))
        assert mine == numbered("P2", len(mine)), "the cut member's own stream has a gap"
        assert lone.proc.returncode is None, lone.tail()
        print(f"cut noticed by the survivors after {detected:.2f}s")

        vsnet.net.heal(2)
        vsnet.wait_votes(dict.fromkeys(range(N), N))
        merged_id = await merged(members, vsnet)
        assert merged_id > vid
        await fence(members, "H")
        streams = [stream_from(m, merged_id) for m in members]
        for s in streams[1:]:
            assert s == streams[0], first_difference(streams[0], s)

    run(vsnet, body)
