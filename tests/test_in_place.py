"""Clients that use this node's records in their own process (`ctdb.client.in_place`).

The published serving state is pure code, tested alone; the rest runs real
daemons: records used in place stay consistent with what the daemons and
the other nodes see, survive forced recoveries like the daemon's own writes
(issue 8's first loss, rerun in place), stop being written once a stopped
daemon's lease has run out, and follow a daemon that restarted.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable

import pytest

from ctdb.client import AsyncClient, Client
from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol import serving_state
from ctdb.protocol.serving_state import NOT_SERVING, ServingState
from tests.conftest import cluster_logs, recovered, run_ctdbtool, unique, wait_for
from tests.test_acknowledged_writes import increments_under_recoveries
from tools.cluster import LocalCluster

pytestmark = pytest.mark.timeout(180)

tcp_only = pytest.mark.parametrize("transport", ["tcp"], indirect=True)
vs_only = pytest.mark.parametrize("transport", ["vs"], indirect=True)


# -- the published state (no I/O) --------------------------------------------------------


def test_a_published_state_reads_back() -> None:
    buf = bytearray(serving_state.SIZE)
    assert serving_state.read(buf) == NOT_SERVING
    for state in (ServingState(123.5, 7, 2), ServingState(float("inf"), 1 << 40, 3), NOT_SERVING):
        serving_state.write(buf, state)
        assert serving_state.read(buf) == state


def test_a_state_being_written_reads_as_not_serving() -> None:
    """A reader never takes a half-written block for a serving node."""
    buf = bytearray(serving_state.SIZE)
    serving_state.write(buf, ServingState(99.0, 5, 1))
    seq = int.from_bytes(buf[:8], "little")
    buf[:8] = (seq | 1).to_bytes(8, "little")  # a writer stopped half-way
    assert serving_state.read(buf) == NOT_SERVING
    serving_state.write(buf, ServingState(98.0, 5, 1))  # the next write mends it
    assert serving_state.read(buf) == ServingState(98.0, 5, 1)


# -- real daemons --------------------------------------------------------------------------


def _requests(c: LocalCluster, pnn: int) -> int:
    with c.client(pnn) as cl:
        stats = cl.call("statistics")
    return int(stats["client_requests"])


@tcp_only
def test_records_this_node_holds_are_used_in_place(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    """Increments in place reach the daemon only to migrate; every node reads them."""
    c = cluster_factory(size=3)
    db, key = unique("ip"), b"counter"
    with c.client(0, in_place=True) as fast, c.client(1) as other:
        fast.attach(db)
        fast.store(db, key, b"0")  # a new record: through the daemon
        before = _requests(c, 0)
        for _ in range(200):
            fast.store_unlock(db, key, b"%d" % (int(fast.fetch_lock(db, key) or b"0") + 1))
        # 200 increments, and the two statistics calls (theirs and ours)
        assert _requests(c, 0) - before <= 5
        assert other.fetch(db, key) == b"200"  # migrated to node 1 through the daemons
        for _ in range(50):  # taking turns: each increment migrates the record
            other.store_unlock(db, key, b"%d" % (int(other.fetch_lock(db, key) or b"0") + 1))
            fast.store_unlock(db, key, b"%d" % (int(fast.fetch_lock(db, key) or b"0") + 1))
        assert fast.fetch(db, key) == b"300"
    values = {c.client(p).fetch(db, key) for p in range(3)}
    assert values == {b"300"}, values


@tcp_only
def test_clients_of_one_process_never_hold_a_record_together(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    """Four threads of one process increment one record in place: none is lost.

    libtdb would count a second client's chain lock on the shared handle as
    nested (both "holding" the record); one client at a time uses the file
    and the others go through the daemon.
    """
    c = cluster_factory(size=3)
    db, key = unique("ip"), b"counter"
    with c.client(0) as cl:
        cl.attach(db)
        cl.store(db, key, b"0")
    per_thread = 300
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with c.client(0, in_place=True) as fast:
                for _ in range(per_thread):
                    value = int(fast.fetch_lock(db, key) or b"0")
                    fast.store_unlock(db, key, b"%d" % (value + 1))
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    with c.client(2) as cl:
        assert cl.fetch(db, key) == b"%d" % (4 * per_thread)


@tcp_only
def test_a_lock_in_place_is_the_clients_as_through_the_daemon(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    """Locking a record the client holds gives it again (the daemon's rule:
    the lock is the connection's); a store under the lock nests; one
    `store_unlock` releases the record for everyone else."""
    c = cluster_factory(size=3)
    db, key = unique("ip"), b"k"
    with c.client(0, in_place=True) as fast, c.client(0, timeout=5) as plain:
        fast.attach(db)
        fast.store(db, key, b"1")  # through the daemon: the record is new
        assert fast.fetch_lock(db, key) == b"1"
        assert fast.fetch_lock(db, key) == b"1"
        fast.store(db, key, b"2")
        assert fast.fetch(db, key) == b"2"
        fast.store_unlock(db, key, b"3")
        # Taken through the daemon (another connection): no chain left locked.
        assert plain.fetch_lock(db, key) == b"3"
        plain.store_unlock(db, key, b"4")
        assert fast.fetch(db, key) == b"4"


@tcp_only
def test_increments_in_place_during_forced_recoveries_are_kept(
    cluster_factory: Callable[..., LocalCluster], transport: str
) -> None:
    """Issue 8's first loss, with every client using records in place: a
    freezing daemon first tells its clients it does not serve, then holds
    every chain, so nothing is written in place between pull and push."""
    increments_under_recoveries(cluster_factory(size=3), transport, in_place=True)


#: Failure detection in 1.2 s, the lease 0.8 s (KeepaliveInterval x (limit - 1)).
SLOW_LEASE = {"KeepaliveInterval": 0.4, "KeepaliveLimit": 3}


@tcp_only
@pytest.mark.parametrize("node0_limit", [None, 20], ids=["same tunables", "node 0 set apart"])
def test_a_stopped_daemon_stops_its_clients_at_the_end_of_its_lease(
    cluster_factory: Callable[..., LocalCluster], node0_limit: int | None
) -> None:
    """SIGSTOP node 0 while a client increments in place there.

    The client goes on in place at most until node 0's lease ends (0.8 s
    here, before nodes 1 and 2 recover without it); after that it asks the
    stopped daemon and gets no answer. Acknowledging writes in place after
    the others took the record over would lose them when node 0 returns.

    With KeepaliveLimit 20 set on node 0 alone (a 7.6 s lease of its own),
    node 0's lease still ends with the others' 0.8 s, which they announce:
    they drop it after 1.2 s of silence whatever it runs.
    """
    c = cluster_factory(size=3, tunables=SLOW_LEASE)
    if node0_limit is not None:
        run_ctdbtool(c.socket(0), "setvar", "KeepaliveLimit", str(node0_limit))
    db, key = unique("ip"), b"counter"
    with c.client(0) as cl:
        cl.attach(db)
        cl.store(db, key, b"0")
    acked: list[float] = []
    failures: list[str] = []
    stop = threading.Event()
    generation = c.status(1)["generation"]

    def work() -> None:
        fast: Client | None = None
        while not stop.is_set():
            try:
                if fast is None:
                    fast = c.client(0, timeout=0.5, in_place=True)
                value = int(fast.fetch_lock(db, key) or b"0")
                fast.store_unlock(db, key, b"%d" % (value + 1))
                acked.append(time.monotonic())
            except CtdbError as exc:  # the stopped daemon does not answer
                failures.append(exc.message)
                if fast is not None:
                    fast.close()
                fast = None
        if fast is not None:
            fast.close()

    thread = threading.Thread(target=work)
    thread.start()
    try:
        wait_for("increments in place", lambda: len(acked) > 100, 20, c)
        c.signal_node(0, signal.SIGSTOP)
        stopped = time.monotonic()
        wait_for("recovery over [1, 2]", lambda: recovered(c, [1, 2], generation), 20, c)
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(60)  # before node 0 continues: what counts is acknowledged while it was stopped
        c.signal_node(0, signal.SIGCONT)
    last = max(acked)
    lease = SLOW_LEASE["KeepaliveInterval"] * (SLOW_LEASE["KeepaliveLimit"] - 1)
    assert last - stopped < lease + 0.3, (
        f"an increment was acknowledged in place {last - stopped:.2f}s after node 0 stopped "
        f"(its lease lasts {lease}s)\n{cluster_logs(c)}"
    )
    assert failures, "the client never noticed that node 0 stopped"


@tcp_only
def test_a_client_follows_a_daemon_that_restarted(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    """kill -9 and restart node 0: the client opens the new file (the old one
    was recreated) and goes on in place, consistently with the other nodes."""
    c = cluster_factory(size=3)
    db, key = unique("ip"), b"k"
    with c.client(0, in_place=True) as fast:
        fast.attach(db)
        fast.store(db, key, b"before")
        fast.store(db, key, b"in place")
        c.kill_node(0)
        c.start_node(0)
        c.wait_healthy(30)
        fast_again = c.client(0, in_place=True)
        with fast_again:
            fast_again.store(db, key, b"after")  # wherever the record is now
            fast_again.store(db, key, b"after, in place")
            assert fast_again.fetch(db, key) == b"after, in place"
    for p in range(3):
        with c.client(p) as cl:
            assert cl.fetch(db, key) == b"after, in place"


def _in_background(c: LocalCluster, op: str, db: str) -> tuple[threading.Thread, list[object]]:
    """Client operation `op` on `db` through node 0 in a thread; the list gets
    its outcome (the result, or the error)."""
    outcome: list[object] = []

    def run() -> None:
        with c.client(0) as cl:
            try:
                outcome.append(cl.call(op, db=db))
            except CtdbError as exc:
                outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


@tcp_only
@pytest.mark.parametrize("op", ["wipedb", "traverse"])
@pytest.mark.parametrize("holder", ["in place", "through the daemon"])
def test_a_whole_file_operation_waits_for_a_locked_record_and_the_daemon_keeps_serving(
    cluster_factory: Callable[..., LocalCluster], holder: str, op: str
) -> None:
    """A wipe or a traverse of a file clients share waits for a record a
    client holds locked.

    Before, libtdb waited for the chain an in-place client held on the
    daemon's event loop (the daemon answered nothing until the client let
    go: for ever if it waited for the daemon), and the wipe refused at once,
    as an I/O error ("Locking error"), while the daemon itself kept the
    chain for a lock taken through it.
    """
    c = cluster_factory(size=3)
    db, key = unique("whole"), b"k"
    with c.client(0, in_place=True) as fast, c.client(0, timeout=10) as other:
        fast.attach(db)
        fast.store(db, key, b"1")
        other.store(db, b"other", b"2")
        assert other.call("in_place", db=db) is not None  # the file is shared from here on
        holding = fast if holder == "in place" else other
        assert holding.fetch_lock(db, key) == b"1"
        running, outcome = _in_background(c, op, db)
        # The daemon serves while the operation waits (before: a statistics
        # call timed out behind libtdb blocked in place, or the wipe failed).
        with c.client(0, timeout=10) as watcher:
            wait_for(
                f"the {op} to wait for the lock",
                lambda: watcher.call("statistics").get("whole_file_waits", 0) == 1,
                20,
                c,
            )
        assert running.is_alive() and not outcome, outcome  # still waiting for the lock
        holding.store_unlock(db, key, b"3")
        running.join(30)
    wiped = op == "wipedb"
    assert outcome == ([None] if wiped else [[[b"k", b"3"], [b"other", b"2"]]]), outcome
    for p in range(3):
        with c.client(p) as cl:
            found = (cl.fetch(db, key), cl.fetch(db, b"other"))
            assert found == ((None, None) if wiped else (b"3", b"2"))


@tcp_only
def test_a_wipe_that_a_lock_outlasts_fails_busy_and_wipes_nothing_here(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    """A client that keeps its lock makes the wipe fail with BUSY after half a
    CallTimeout, a clear error instead of a daemon stopped or an I/O error."""
    c = cluster_factory(size=1, tunables={"CallTimeout": 2})
    db, key = unique("wipe"), b"k"
    with c.client(0, in_place=True) as fast, c.client(0) as other:
        fast.attach(db)
        fast.store(db, key, b"1")
        other.store(db, b"other", b"2")
        assert fast.fetch_lock(db, key) == b"1"
        started = time.monotonic()
        with pytest.raises(CtdbError) as raised:
            other.call("wipedb", db=db)
        assert raised.value.code is ErrorCode.BUSY, raised.value
        assert "locked" in raised.value.message
        assert 0.9 <= time.monotonic() - started < 10
        assert other.fetch(db, b"other") == b"2"  # nothing wiped
        fast.store_unlock(db, key, b"3")
        assert other.fetch(db, key) == b"3"


@vs_only
def test_on_vs_every_record_goes_through_the_daemon(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    """vs writes enter the ordered stream: the daemon offers nothing in place."""
    c = cluster_factory(size=3)
    db, key = unique("ip"), b"k"
    with c.client(0, in_place=True) as fast, c.client(1) as other:
        fast.attach(db)
        assert fast.call("in_place", db=db) is None
        fast.store(db, key, b"v")
        assert fast.fetch_lock(db, key) == b"v"
        fast.store_unlock(db, key, b"w")
        assert other.fetch(db, key) == b"w"


@tcp_only
def test_the_asyncio_client_uses_records_in_place_too(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    c = cluster_factory(size=3)
    db, key = unique("ip"), b"counter"

    async def increments() -> bytes | None:
        client = await AsyncClient.connect(c.socket(0), in_place=True)
        try:
            await client.attach(db)
            await client.store(db, key, b"0")
            for _ in range(100):
                value = int(await client.fetch_lock(db, key) or b"0")
                await client.store_unlock(db, key, b"%d" % (value + 1))
            return await client.fetch(db, key)
        finally:
            await client.close()

    before = _requests(c, 0)
    assert asyncio.run(increments()) == b"100"
    assert _requests(c, 0) - before < 20  # attach, the first store, in_place: not 200 more
    with c.client(1) as other:
        assert other.fetch(db, key) == b"100"
