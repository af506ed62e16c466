"""A lock holder on a node the others went on without never reads the replaced value.

A client that holds a record's lock reads it from its node's copy, without
asking anyone (`ctdb.engines.ordered.reads`; tcp: its node is the record's
dmaster). Once the others have declared that node gone, they take the
record over and write it. So a node may answer such a read alone only
while the others cannot have gone on without it: its lease
(`ctdb.server.lease`; vs: it also ends before corosync can re-form the
ring without it, `transport.base.lease_timing`), and on vs only while its
corosync has not said otherwise.

Here the holder's daemon is stopped (SIGSTOP) while the others go on
without it, and a new value is acknowledged on node 0. Only then does the
holder ask for the record, and its daemon runs again: the answer must be
the new value or an error, never the old one. Three ways to lose a node:

* tcp: its network is cut; the others wait out their keepalives, and the
  daemon that runs again has heard nothing since: only its lease stops it;
* vs: the whole node pauses, corosync too (a VM paused, a node swapping):
  the others re-form the ring after token and consensus, and the daemon
  that runs again finds nothing from its corosync, still paused: again
  only its lease stops it (with the lease's check removed, it reads "old");
* vs: its corosync is shut down cleanly: the others re-form the ring at
  once (in 0.1 s), far inside the lease, so only the order in which the
  daemon learns things keeps the read right: its closed CPG connection
  was ready before the client's request, and is handled first.

Real daemons in network namespaces (`tools.netns_ctdb`), a corosync per
namespace on vs.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from ctdb.client import Client
from ctdb.common.errors import CtdbError
from tools import netns
from tools.netns_ctdb import NetnsCtdb, healthy, netns_ctdb, wait_for

OK, WHY = netns.available()
pytestmark = [
    pytest.mark.skipif(not OK, reason=f"network namespaces unavailable: {WHY}"),
    pytest.mark.timeout(180),
]

#: A failure detector (2 s) slower than vs's lease under the netns corosync's
#: token (1.6 s), so that the lease, not the keepalives, bounds what the
#: stopped node may answer; reads give up after 3 s.
TUNABLES = {"KeepaliveInterval": 0.5, "KeepaliveLimit": 4, "CallTimeout": 3.0}


@pytest.fixture(scope="module", autouse=True)
def _sweep() -> Iterator[None]:
    netns.sweep_stale()
    yield


def _holder(ctdb: NetnsCtdb, db: str) -> Client:
    """A client of node 2 holding the lock of `db`'s record "k", which is "old"."""
    with ctdb.client(0) as c:
        c.attach(db)
        c.store(db, "k", "old")
    holder = ctdb.client(2, timeout=30.0)
    holder.attach(db)
    assert holder.fetch_lock(db, "k") == b"old"
    return holder


def _store_new(ctdb: NetnsCtdb, db: str) -> float:
    """Store "new" through node 0 until it is acknowledged; when it was."""
    deadline = time.monotonic() + 30.0
    with ctdb.client(0, timeout=10.0) as c:
        while True:
            try:
                c.store(db, "k", "new")
                return time.monotonic()
            except CtdbError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)


def _holder_reads_after(ctdb: NetnsCtdb, holder: Client, db: str) -> bytes | CtdbError:
    """The holder asks for the record (now: after the new value's acknowledgement),
    then node 2's daemon runs again; what it answers."""
    got: list[bytes | CtdbError | None] = []

    def read() -> None:
        try:
            got.append(holder.fetch(db, "k"))
        except CtdbError as exc:
            got.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.05)  # (its request waits in the socket either way)
    ctdb.signal_node(2, signal.SIGCONT)
    reader.join(30.0)
    assert not reader.is_alive(), "the holder's read did not end"
    assert len(got) == 1 and got[0] is not None
    return got[0]


def _agree_on_new(ctdb: NetnsCtdb, db: str) -> None:
    wait_for("all three nodes healthy again", lambda: healthy(ctdb, [0, 1, 2]), 60.0, ctdb)
    for pnn in range(3):
        with ctdb.client(pnn) as c:
            assert c.fetch(db, "k") == b"new", pnn


@pytest.mark.parametrize("transport", ["tcp", "vs"])
def test_a_holder_whose_node_was_left_behind_does_not_read_the_replaced_value(
    transport: str,
) -> None:
    db = f"cut_{uuid.uuid4().hex[:6]}"
    with netns_ctdb(transport, "hold", TUNABLES) as ctdb:
        holder = _holder(ctdb, db)
        try:
            ctdb.signal_node(2, signal.SIGSTOP)
            if transport == "tcp":
                ctdb.net.cut(2)
            else:
                ctdb.corosyncs[2].send_signal(signal.SIGSTOP)
            _store_new(ctdb, db)
            answer = _holder_reads_after(ctdb, holder, db)
            assert answer != b"old", "the holder read a value the others had replaced"
            assert isinstance(answer, CtdbError) or answer == b"new", answer
            if transport == "tcp":
                ctdb.net.heal(2)
            else:
                ctdb.corosyncs[2].send_signal(signal.SIGCONT)
            _agree_on_new(ctdb, db)
        finally:
            ctdb.signal_node(2, signal.SIGCONT)
            if transport == "vs":
                ctdb.corosyncs[2].send_signal(signal.SIGCONT)
            holder.close()


def test_vs_a_holder_whose_corosync_left_while_stopped_does_not_read_the_replaced_value() -> None:
    db = f"left_{uuid.uuid4().hex[:6]}"
    with netns_ctdb("vs", "left", TUNABLES) as ctdb:
        holder = _holder(ctdb, db)
        try:
            ctdb.signal_node(2, signal.SIGSTOP)
            stopped = time.monotonic()
            corosync = ctdb.corosyncs[2]
            corosync.terminate()  # a clean shutdown: it leaves the ring
            corosync.wait(10)
            acknowledged = _store_new(ctdb, db)
            answer = _holder_reads_after(ctdb, holder, db)
            print(f"new value acknowledged {acknowledged - stopped:.2f}s after the stop")
            assert answer != b"old", "the holder read a value the others had replaced"
            assert isinstance(answer, CtdbError) or answer == b"new", answer
            ctdb.start_corosync(2)
            _agree_on_new(ctdb, db)
        finally:
            ctdb.signal_node(2, signal.SIGCONT)
            holder.close()
