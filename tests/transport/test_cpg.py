"""The VS transport on a real, private corosync (no mocks).

Every test runs against a corosync started for this module in its own network
and mount namespace (so it cannot collide with any other corosync on the
host); the test thread enters that namespace for the duration of each test.
Processes and directories are cleaned up on every exit path.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from transport import libcpg
from transport.base import TransportOptions, View, transport_class
from transport.corosync import PrivateCorosync, cleanup_stale_shm
from transport.cpg import CpgTransport
from transport.cpg_wire import HDR, K_DATA

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="corosync CPG needs root (clients must be root or in uidgid)"
)

ROOT = Path(__file__).resolve().parents[2]
NODES = ["n0", "n1", "n2", "n3"]

# A group member in its own process: logs its stream, broadcasts a counter
# every 2 ms, and dumps its log as JSON when told to on stdin.
MEMBER = r"""
import asyncio, json, sys
from transport.base import TransportOptions
from transport.cpg import CpgTransport

async def main(group, pnn):
    t = CpgTransport(pnn, ["n0", "n1", "n2", "n3"], TransportOptions(extra={"group": group}))
    log = []
    t.on_view = lambda v: log.append(["view", v.view_id, list(v.members)])
    t.on_message = lambda s, p: log.append(["msg", s, p.decode()])
    await t.start()
    print("ready", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(), done.set)
    seq = 0
    while not done.is_set():
        t.broadcast(f"{pnn}:{seq}".encode())
        seq += 1
        try:
            await asyncio.wait_for(done.wait(), 0.002)
        except TimeoutError:
            pass
    await t.stop()
    print(json.dumps(log), flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


@pytest.fixture(scope="module")
def corosync() -> Iterator[PrivateCorosync]:
    with tempfile.TemporaryDirectory(prefix="cpgtest-") as d:
        cs = PrivateCorosync(Path(d), isolate=True, token_ms=300)
        try:
            cs.start()
            yield cs
        finally:
            cs.stop()


def run(cs: PrivateCorosync, coro_fn: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Run a coroutine in a fresh loop, inside corosync's network namespace."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro_fn(), timeout)

    with cs.netns():
        return asyncio.run(bounded())


async def until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.005)


class Recorder:
    """Logs one transport's stream (views and messages, in delivery order)."""

    def __init__(self, t: CpgTransport) -> None:
        self.t = t
        self.log: list[tuple[Any, ...]] = []
        self.views: list[View] = []
        t.on_view = self._view
        t.on_message = self._msg

    def _view(self, v: View) -> None:
        self.views.append(v)
        self.log.append(("view", v.view_id, v.members))

    def _msg(self, src: int, payload: bytes) -> None:
        self.log.append(("msg", src, payload))

    def msgs(self) -> list[tuple[int, bytes]]:
        return [(e[1], e[2]) for e in self.log if e[0] == "msg"]


def make(group: str, pnns: list[int], **extra: str) -> list[CpgTransport]:
    return [CpgTransport(p, NODES, TransportOptions(extra={"group": group, **extra})) for p in pnns]


async def stop_all(ts: list[CpgTransport]) -> None:
    for t in ts:
        await t.stop()


async def spawn_member(group: str, pnn: int) -> subprocess.Popen[str]:
    """Start a member process; the loop keeps running (our members must answer it)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", MEMBER, group, str(pnn)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
    if line.strip() != "ready":
        proc.kill()
        proc.wait()
        raise AssertionError(f"member {pnn} did not start: {line!r}")
    return proc


def reap(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    cleanup_stale_shm([p.pid for p in procs])


# -- tests ----------------------------------------------------------------------


def test_registry_and_capabilities() -> None:
    cls = transport_class("vs")
    assert cls is CpgTransport
    assert cls.capabilities.total_order and cls.capabilities.virtual_synchrony
    assert cls.capabilities.max_message_size >= 1 << 20


def test_binding_smoke(corosync: PrivateCorosync) -> None:
    got: list[tuple[int, int, bytes]] = []
    changes: list[list[libcpg.CpgAddress]] = []
    with corosync.netns():
        h = libcpg.CpgHandle(
            lambda n, p, m: got.append((n, p, m)), lambda m, left, j: changes.append(m)
        )
    try:
        assert h.local_nodeid() == 1
        assert h.max_atomic_msgsize() > 64 * 1024
        assert h.fd() >= 0
        h.join("smoke")
        h.mcast(b"hello ", b"world")
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            h.dispatch()
            time.sleep(0.002)
        assert got == [(1, os.getpid(), b"hello world")]
        assert changes and changes[0][0].member == (1, os.getpid())
        with pytest.raises(libcpg.CpgError) as info:
            h.join("smoke")  # one pid, one membership per group
        assert info.value.error_name == "CS_ERR_EXIST"
        h.leave("smoke")
    finally:
        h.finalize()
        h.finalize()  # idempotent
    with pytest.raises(libcpg.CpgError):
        h.fd()


def test_view_of_three(corosync: PrivateCorosync) -> None:
    async def body() -> None:
        ts = make("view3", [0, 1, 2])
        recs = [Recorder(t) for t in ts]
        try:
            for t in ts:
                await t.start()
            await until(lambda: all(t.view.members == (0, 1, 2) for t in ts), what="view of 3")
            # Same view id everywhere, and the final view was installed by all.
            assert len({t.view.view_id for t in ts}) == 1
            assert all(r.views[-1] == ts[0].view for r in recs)
            # The lease is bounded by what corosync says of its ring (token
            # 300 ms, consensus 360 ms: re-formed without a member after
            # 0.36 s at the soonest), not by the default 5 s silence.
            await asyncio.sleep(0.5)
            now = asyncio.get_running_loop().time()
            for t in ts:
                assert t._conn is not None and t._conn.reform == pytest.approx(0.36)
                until_ = t.confirmed_until()
                assert until_ is not None and now < until_ <= now + 0.75 * 0.36
        finally:
            await stop_all(ts)

    run(corosync, body)


def test_total_order_three_senders(corosync: PrivateCorosync) -> None:
    async def body() -> None:
        ts = make("order", [0, 1, 2])
        recs = [Recorder(t) for t in ts]
        try:
            for t in ts:
                await t.start()
            await until(lambda: all(t.view.members == (0, 1, 2) for t in ts))
            n = 300

            async def sender(t: CpgTransport) -> None:
                for i in range(n):
                    t.broadcast(f"{t.pnn}:{i}".encode())
                    if i % 7 == 0:
                        await asyncio.sleep(0)
                await t.drain()

            await asyncio.gather(*(sender(t) for t in ts))
            await until(lambda: all(len(r.msgs()) == 3 * n for r in recs), what="all messages")
            seqs = [r.msgs() for r in recs]
            assert seqs[0] == seqs[1] == seqs[2]
            for p in range(3):  # FIFO per sender
                mine = [m for s, m in seqs[0] if s == p]
                assert mine == [f"{p}:{i}".encode() for i in range(n)]
        finally:
            await stop_all(ts)

    run(corosync, body)


def test_one_mib_round_trip(corosync: PrivateCorosync) -> None:
    async def body() -> None:
        ts = make("big", [0, 1])
        recs = [Recorder(t) for t in ts]
        try:
            for t in ts:
                await t.start()
            await until(lambda: all(t.view.members == (0, 1) for t in ts))
            big = os.urandom(1 << 20)
            ts[0].broadcast(big)
            ts[1].broadcast(b"small")
            ts[0].broadcast(big[::-1] + b"x")
            await until(lambda: all(len(r.msgs()) == 3 for r in recs), what="big messages")
            assert recs[0].msgs() == recs[1].msgs()
            assert (0, big) in recs[1].msgs() and (0, big[::-1] + b"x") in recs[1].msgs()
        finally:
            await stop_all(ts)

    run(corosync, body)


def test_back_pressure_try_again(corosync: PrivateCorosync) -> None:
    """A burst far beyond corosync's queue: TRY_AGAIN is absorbed by our queue,
    drain() waits it out, and nothing is lost or reordered."""

    async def body() -> None:
        ts = make("burst", [0, 1], high_water=str(1 << 20))
        recs = [Recorder(t) for t in ts]
        try:
            for t in ts:
                await t.start()
            await until(lambda: all(t.view.members == (0, 1) for t in ts))
            blob = b"z" * (256 * 1024)
            n = 128  # 32 MiB in one go
            for i in range(n):
                ts[0].broadcast(i.to_bytes(4, "big") + blob)
            conn = ts[0]._conn
            assert conn is not None and conn.out_bytes > (1 << 20)  # really queued
            await ts[0].drain()
            assert conn.out_bytes < (1 << 20)
            await until(lambda: len(recs[1].msgs()) == n, 30, what="burst delivered")
            assert [int.from_bytes(m[:4], "big") for _, m in recs[1].msgs()] == list(range(n))
        finally:
            await stop_all(ts)

    run(corosync, body)


def test_send_reaches_only_destination(corosync: PrivateCorosync) -> None:
    async def body() -> None:
        ts = make("unicast", [0, 1, 2])
        recs = [Recorder(t) for t in ts]
        try:
            for t in ts:
                await t.start()
            await until(lambda: all(t.view.members == (0, 1, 2) for t in ts))
            ts[0].send(2, b"for two")
            ts[0].send(3, b"not in view")  # dropped silently
            ts[1].send(1, b"to self")
            ts[2].broadcast(b"marker")
            await until(lambda: all((2, b"marker") in r.msgs() for r in recs))
            assert recs[0].msgs() == [(2, b"marker")]
            assert recs[1].msgs() == [(1, b"to self"), (2, b"marker")]
            assert recs[2].msgs() == [(0, b"for two"), (2, b"marker")]
        finally:
            await stop_all(ts)

    run(corosync, body)


def test_what_one_loop_turn_sends_goes_out_in_two_cpg_messages(
    corosync: PrivateCorosync,
) -> None:
    """A daemon answering many clients sends many small messages in one
    turn: while one of ours is on its way, the others cost corosync and
    every member one message, not one each, and still arrive in order, each
    only where it was sent."""

    async def body() -> None:
        ts = make("batch", [0, 1, 2])
        recs = [Recorder(t) for t in ts]
        try:
            for t in ts:
                await t.start()
            await until(lambda: all(t.view.members == (0, 1, 2) for t in ts))
            conn = ts[0]._conn
            assert conn is not None and conn.handle is not None
            calls: list[bytes] = []  # DATA messages (not the ticks' ALIVEs)
            real_mcast = conn.handle.mcast

            def counting_mcast(*parts: bytes, **kw: Any) -> None:
                msg = b"".join(parts)
                if HDR.unpack_from(msg)[0] == K_DATA:
                    calls.append(msg)
                real_mcast(*parts, **kw)

            conn.handle.mcast = counting_mcast  # type: ignore[method-assign]
            await until(lambda: not conn.own_sent)  # (a tick's ALIVE came back)
            ts[0].broadcast(b"first")
            assert len(calls) == 1  # with nothing of ours on its way, at once
            ts[0].broadcast(b"second")
            ts[0].send(2, b"for two")
            ts[0].send(0, b"to self")
            ts[0].broadcast(b"last")
            assert len(calls) == 1  # the first on its way: the others wait for the turn's end
            await until(lambda: all((0, b"last") in r.msgs() for r in recs))
            assert len(calls) == 2  # and go out as one
            everyone = [(0, b"first"), (0, b"second")]
            assert recs[0].msgs() == [*everyone, (0, b"to self"), (0, b"last")]
            assert recs[1].msgs() == [*everyone, (0, b"last")]
            assert recs[2].msgs() == [*everyone, (0, b"for two"), (0, b"last")]
        finally:
            await stop_all(ts)

    run(corosync, body)


def test_stop_is_a_view_change(corosync: PrivateCorosync) -> None:
    async def body() -> None:
        ts = make("leave", [0, 1, 2])
        recs = [Recorder(t) for t in ts]
        try:
            for t in ts:
                await t.start()
            await until(lambda: all(t.view.members == (0, 1, 2) for t in ts))
            await ts[1].stop()
            await until(lambda: all(t.view.members == (0, 2) for t in (ts[0], ts[2])))
            assert ts[0].view == ts[2].view
            await ts[1].stop()  # idempotent
        finally:
            await stop_all(ts)
        assert recs[0].views[-1].members == (0, 2)

    run(corosync, body)


def test_a_failure_of_the_group_machine_makes_the_process_join_again(
    corosync: PrivateCorosync, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in the group's state machine on one event: the process starts
    over (a fresh join and state transfer) rather than go on with a state
    nobody knows, having lost the rest of its dispatch batch."""

    async def body() -> None:
        ts = make("machinebug", [0, 1, 2])
        recs = [Recorder(t) for t in ts]
        try:
            for t in ts:
                await t.start()
            await until(lambda: all(t.view.members == (0, 1, 2) for t in ts), what="view of 3")
            conn = ts[0]._conn
            assert conn is not None and conn.machine is not None
            broken = conn.machine

            def event(ev: object) -> None:
                raise RuntimeError("a bug")

            broken.event = event  # type: ignore[method-assign]
            ts[1].send(0, b"the event it fails on")
            await until(lambda: conn.machine is not broken, what="the process starting over")
            await until(lambda: all(t.view.members == (0, 1, 2) for t in ts), what="view of 3")
            ts[2].broadcast(b"after it")
            await until(lambda: all((2, b"after it") in r.msgs() for r in recs), what="delivery")
        finally:
            await stop_all(ts)
        assert "the group's state machine failed on an event" in caplog.text
        assert [v.members for v in recs[0].views].count((0,)) >= 1  # solo meanwhile

    run(corosync, body)


def test_member_killed_same_position(corosync: PrivateCorosync) -> None:
    """SIGKILL one member process: both survivors (in different processes)
    see the same stream and the view change at the same position."""
    group = "killed"
    procs: list[subprocess.Popen[str]] = []

    async def body() -> tuple[list[list[Any]], list[Any]]:
        (t0,) = make(group, [0])
        rec = Recorder(t0)
        try:
            await t0.start()
            procs.append(await spawn_member(group, 1))  # survivor
            procs.append(await spawn_member(group, 2))  # victim
            await until(lambda: t0.view.members == (0, 1, 2), what="view of 3")
            await until(lambda: sum(1 for s, _ in rec.msgs() if s == 2) > 20, what="traffic")
            procs[1].send_signal(signal.SIGKILL)
            procs[1].wait()
            await until(lambda: t0.view.members == (0, 1), what="view without the victim")
            await until(lambda: _after_view(rec) > 20, what="traffic after the change")
            assert procs[0].stdin is not None and procs[0].stdout is not None
            procs[0].stdin.write("dump\n")
            procs[0].stdin.flush()
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(None, procs[0].stdout.readline)
            mine = [[e[0], e[1], list(e[2]) if e[0] == "view" else e[2].decode()] for e in rec.log]
            return json.loads(out), mine
        finally:
            await t0.stop()

    try:
        theirs, mine = run(corosync, body)
    finally:
        reap(procs)
    # Align on the survivor's first view (it joined after us).
    first = theirs[0]
    assert first[0] == "view"
    start = mine.index(first)
    mine = mine[start:]
    n = min(len(mine), len(theirs))
    assert n > 40
    assert mine[:n] == theirs[:n]
    pos_mine = _departure(mine)
    pos_theirs = _departure(theirs)
    assert pos_mine == pos_theirs < n
    assert mine[pos_mine] == theirs[pos_theirs]  # same view id too
    # Nothing from the victim after the view change on either side.
    assert not any(e[0] == "msg" and e[1] == 2 for e in mine[pos_mine:n])


def _departure(log: list[Any]) -> int:
    """Index of the view that removed pnn 2 from a view that had it."""
    had = False
    for i, e in enumerate(log):
        if e[0] == "view":
            if 2 in e[2]:
                had = True
            elif had:
                return i
    raise AssertionError("no departure of pnn 2 in the log")


def _after_view(rec: Recorder) -> int:
    """Messages delivered since the last view change."""
    for i in range(len(rec.log) - 1, -1, -1):
        if rec.log[i][0] == "view":
            return len(rec.log) - 1 - i
    return 0


@pytest.fixture
def own_corosync() -> Iterator[PrivateCorosync]:
    """A corosync only this test may kill."""
    with tempfile.TemporaryDirectory(prefix="cpgkill-") as d:
        cs = PrivateCorosync(Path(d), isolate=True, token_ms=300)
        try:
            cs.start()
            yield cs
        finally:
            cs.stop()


def test_corosync_killed_and_restarted(own_corosync: PrivateCorosync) -> None:
    cs = own_corosync

    async def body() -> None:
        ts = make("restart", [0, 1, 2])
        recs = [Recorder(t) for t in ts]
        try:
            for t in ts:
                await t.start()
            await until(lambda: all(t.view.members == (0, 1, 2) for t in ts))
            before = [t.view.view_id for t in ts]
            cs.kill()
            await until(lambda: all(t.view.members == (t.pnn,) for t in ts), what="solo views")
            assert all(t.view.view_id > b for t, b in zip(ts, before, strict=True))
            # Alone, a broadcast still reaches self, and nothing crashes.
            for t in ts:
                t.broadcast(b"alone")
                t.send(t.pnn, b"self")
                t.send((t.pnn + 1) % 3, b"dropped")
                await t.drain()
            await until(lambda: all((r.t.pnn, b"self") in r.msgs() for r in recs))
            assert all(r.msgs()[-2:] == [(r.t.pnn, b"alone"), (r.t.pnn, b"self")] for r in recs)
            solo_ids = [t.view.view_id for t in ts]
            cs.start()
            await until(lambda: all(t.view.members == (0, 1, 2) for t in ts), 15, what="rejoin")
            assert len({t.view.view_id for t in ts}) == 1
            assert all(t.view.view_id > s for t, s in zip(ts, solo_ids, strict=True))
            ts[1].broadcast(b"again")
            await until(lambda: all((1, b"again") in r.msgs() for r in recs))
        finally:
            await stop_all(ts)

    run(cs, body)


def test_start_without_corosync_fails_cleanly() -> None:
    async def body() -> None:
        (t,) = make("nocorosync", [0])
        with pytest.raises(Exception) as info:
            await t.start()
        assert "CPG" in str(info.value) or "corosync" in str(info.value)
        await t.stop()

    with tempfile.TemporaryDirectory(prefix="cpgnone-") as d:
        cs = PrivateCorosync(Path(d), isolate=True)
        cs._start_holder()  # an empty namespace: no corosync in it
        try:
            run(cs, body)
        finally:
            cs.stop()
