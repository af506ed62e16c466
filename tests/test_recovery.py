"""Failure detection and recovery with real daemons (one private cluster per test).

Every test starts its own 3-node cluster on a random loopback base address
and port (cheap: ~0.4 s) because it kills, stops, bans or restarts nodes.
Tunables are tight (KeepaliveInterval 0.2 s x KeepaliveLimit 3) so failures
are noticed in well under a second. The transport is a parameter: add "vs"
to `TRANSPORTS` to run everything on the virtual-synchrony backend too.

Notes on what is measured: a kill -9 on loopback closes the TCP connections
at once (the kernel sends RST/FIN), so it is detected in milliseconds; a
*silent* peer (SIGSTOP: sockets stay open, nothing is sent) is what exercises
the keepalive timeout, and is used for the KeepaliveInterval/Limit test.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ctdb.common.config import TUNABLES as DEFAULTS
from ctdb.common.errors import CtdbError, ErrorCode
from tests.conftest import recovered, wait_for
from tools.cluster import LocalCluster

pytestmark = pytest.mark.timeout(120)

#: Transports every test here runs on.
TRANSPORTS = ["tcp", "vs"]

REPO = Path(__file__).resolve().parents[1]
CTDBTOOL = REPO / ".venv" / "bin" / "ctdbtool"
KA_INTERVAL = 0.2
KA_LIMIT = 3
TUNABLES = {"KeepaliveInterval": KA_INTERVAL, "KeepaliveLimit": KA_LIMIT}
#: What a start-up stall costs (TUNABLES leaves it at its default).
RECOVER_TIMEOUT = DEFAULTS["RecoverTimeout"].default
#: Failure detection bound from the brief: interval x limit + 1 s.
DETECT_BOUND = KA_INTERVAL * KA_LIMIT + 1.0

DISCONNECTED = 0x01
DISABLED = 0x04
BANNED = 0x08
STOPPED = 0x20


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    if request.param == "vs":
        request.getfixturevalue("host_corosync")  # shared corosync from conftest.py
    return str(request.param)


@pytest.fixture
def make_cluster(transport: str, tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """`make_cluster(**tunables)` -> a started 3-node cluster, always torn down."""
    started: list[LocalCluster] = []

    def make(**tunables: float) -> LocalCluster:
        last: Exception | None = None
        for attempt in range(3):  # a random port may clash with someone else's
            c = LocalCluster(
                tmp_path / f"c{attempt}_{random.randint(0, 1 << 30):x}",
                size=3,
                transport=transport,
                port=random.randint(20000, 60000),
                base=f"127.{random.randint(10, 250)}.{random.randint(0, 250)}",
                tunables={**TUNABLES, **tunables},
            )
            started.append(c)
            try:
                c.up(timeout=30)
                return c
            except Exception as exc:  # noqa: BLE001 - retried, then re-raised
                last = exc
                c.down()
        raise RuntimeError(f"cluster did not come up: {last}")

    try:
        yield make
    finally:
        for c in started:
            c.down()


@pytest.fixture
def cluster(make_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    return make_cluster()


# -- helpers ----------------------------------------------------------------------------


def seconds_until(what: str, cond: Callable[[], Any], timeout: float) -> float:
    """How long `cond` took to hold (`wait_for`, polled every 10 ms)."""
    start = time.monotonic()
    wait_for(what, cond, timeout, interval=0.01)
    return time.monotonic() - start


def flags_on(c: LocalCluster, observer: int, pnn: int) -> int:
    return int(c.status(observer)["nodes"][pnn]["flags"])


def wait_flags(
    c: LocalCluster, pnn: int, flags: int, observers: list[int], timeout: float = 5.0
) -> None:
    """Until every observer shows exactly `flags` for node `pnn`."""
    for obs in observers:
        wait_for(
            f"node {obs} to show flags 0x{flags:x} for node {pnn}",
            lambda obs=obs: flags_on(c, obs, pnn) == flags,  # type: ignore[misc]
            timeout,
        )


def nodestatus(c: LocalCluster, pnn: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CTDBTOOL), "--socket", c.socket(pnn), "nodestatus"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )


# -- kill -9 of one daemon ------------------------------------------------------------


def test_kill9_detect_recover_and_serve(cluster: LocalCluster) -> None:
    c = cluster
    vdb, pdb = _name("vol"), _name("per")
    clients = [c.client(p, timeout=20) for p in range(3)]
    clients[0].attach(vdb)
    clients[0].attach(pdb, "persistent")
    # Volatile keys written from every node (each writer becomes dmaster).
    written: dict[int, dict[str, str]] = {p: {} for p in range(3)}
    for p in range(3):
        for i in range(30):
            key, value = f"k{p}_{i}", f"v{p}_{i}"
            clients[p].store(vdb, key, value)
            written[p][key] = value
    persistent: dict[str, str] = {}
    for p in range(3):  # commits started on every node, each acknowledged
        items = {f"p{p}_{i}": f"pv{p}_{i}" for i in range(20)}
        clients[p].transact(pdb, items)
        persistent.update(items)
    old_gen = c.status(0)["generation"]
    for cl in clients:
        cl.close()

    killed_at = time.monotonic()
    c.kill_node(2)
    for obs in (0, 1):
        wait_for(
            f"node {obs} to mark node 2 DISCONNECTED",
            lambda obs=obs: flags_on(c, obs, 2) & DISCONNECTED,  # type: ignore[misc]
            DETECT_BOUND,
        )
    detected = time.monotonic() - killed_at
    assert detected < DETECT_BOUND
    st = wait_for("recovery over [0, 1]", lambda: recovered(c, [0, 1], old_gen), 10)
    assert st["vnnmap"] == [0, 1] and st["generation"] != old_gen
    assert st["leader"] in (0, 1)

    for p in (0, 1):
        with c.client(p, timeout=20) as cl:
            # Keys whose dmaster survived keep their latest value.
            for writer in (0, 1):
                for key, value in written[writer].items():
                    assert cl.fetch(vdb, key) == value.encode(), (p, key)
            # Keys whose dmaster died are served again (value may be lost: CTDB semantics).
            for key, value in written[2].items():
                got = cl.fetch(vdb, key)
                assert got in (None, value.encode()), (p, key, got)
            # Every acknowledged persistent write survived.
            for key, value in persistent.items():
                assert cl.fetch(pdb, key) == value.encode(), (p, key)
            # And the survivors accept new writes of both kinds.
            cl.store(vdb, f"after{p}", "x")
            cl.transact(pdb, {f"after{p}": "y"})
    with c.client(1) as cl:
        assert cl.fetch(vdb, "after0") == b"x"
        assert cl.fetch(pdb, "after0") == b"y"


# -- volatile data across forced recoveries ----------------------------------------------


def force_recovery(c: LocalCluster, via: int, nodes: list[int], target: int | None = None) -> None:
    """`recover` sent through node `via` to node `target` (default: the leader)."""
    st = c.status(via)
    if target is None:
        target = st["leader"]
    with c.client(via) as cl:
        cl.call("recover", pnn=target)
    wait_for(f"recovery forced on node {target}", lambda: recovered(c, nodes, st["generation"]), 10)


def test_volatile_latest_value_survives_recoveries(cluster: LocalCluster) -> None:
    c = cluster
    db = _name("vol")
    with c.client(0) as cl:
        cl.attach(db)
        cl.store(db, "key", "value1")
        cl.store(db, "gone", "soon deleted")
        cl.store(db, "moved", "m1")
    with c.client(2) as cl:
        assert cl.fetch(db, "moved") == b"m1"  # migrates to node 2
        cl.store(db, "moved", "m2")
    with c.client(0) as cl:
        cl.delete(db, "gone")
    force_recovery(c, 1, [0, 1, 2])
    with c.client(1) as cl:  # written from another node than the first time
        cl.store(db, "key", "value2")
    force_recovery(c, 2, [0, 1, 2])
    for p in range(3):
        with c.client(p) as cl:
            assert cl.fetch(db, "key") == b"value2", p
            assert cl.fetch(db, "gone") is None, p
            assert cl.fetch(db, "moved") == b"m2", p
    # Deleted before a recovery stays deleted after another one too.
    force_recovery(c, 0, [0, 1, 2])
    for p in range(3):
        with c.client(p) as cl:
            assert cl.fetch(db, "gone") is None, p
            traversed = dict(cl.traverse(db))
            assert b"gone" not in traversed
            assert traversed[b"key"] == b"value2"


@pytest.mark.parametrize("target", [1, 2])
def test_recover_on_a_non_leader_node_recovers_the_cluster(
    cluster: LocalCluster, target: int
) -> None:
    """`ctdbtool -n 2 recover` (or `recover` on node 2's socket) must trigger a recovery.

    The node freezes itself; the leader must notice (or be told) and run a
    recovery, else that node stays in RECOVERY and serves nothing.
    """
    c = cluster
    assert c.status(0)["leader"] == 0
    force_recovery(c, target, [0, 1, 2], target=target)


# -- persistent data while a node is away -------------------------------------------------


def _persistent_while_away(
    c: LocalCluster, away: Callable[[], object], back: Callable[[], object]
) -> None:
    db = _name("per")
    with c.client(0) as cl:
        cl.attach(db, "persistent")
        cl.transact(db, {"before": "1"})
    old_gen = c.status(0)["generation"]
    away()
    wait_for("recovery without node 2", lambda: recovered(c, [0, 1], old_gen), 10)
    expected = {"before": "1"}
    for p in (0, 1):
        with c.client(p) as cl:
            for i in range(5):
                items = {f"n{p}_{i}": f"v{p}_{i}", "shared": f"{p}_{i}"}
                cl.transact(db, items)
                expected.update(items)
    back()
    c.wait_healthy(15, nodes=[0, 1, 2])
    for p in range(3):
        with c.client(p) as cl:
            for key, value in expected.items():
                assert cl.fetch(db, key) == value.encode(), (p, key)
            seq = cl.call("getdbseqnum", db=db)
            assert seq == 11, (p, seq)  # 1 before + 10 while node 2 was away


def test_persistent_commits_while_node_stopped(cluster: LocalCluster) -> None:
    c = cluster

    def away() -> None:
        with c.client(0) as cl:
            cl.call("stop", pnn=2)
        wait_flags(c, 2, STOPPED, [0, 1, 2])

    def back() -> None:
        with c.client(2) as cl:
            cl.call("continue")

    _persistent_while_away(c, away, back)


def test_persistent_commits_while_node_killed(cluster: LocalCluster) -> None:
    c = cluster
    _persistent_while_away(c, lambda: c.kill_node(2), lambda: c.start_node(2))


# -- administrative node states --------------------------------------------------------------


def _check_state(c: LocalCluster, pnn: int, flags: int, in_vnnmap: bool) -> None:
    wait_flags(c, pnn, flags, [0, 1, 2])
    want = [0, 1, 2] if in_vnnmap else [p for p in range(3) if p != pnn]
    wait_for(f"vnnmap {want}", lambda: recovered(c, want), 10)
    result = nodestatus(c, pnn)
    if flags:
        assert result.returncode != 0, result
    else:
        assert result.returncode == 0, result
        assert "OK" in result.stdout


def test_a_stopped_node_is_frozen_rather_than_waited_for(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """A recovery that leaves out a node it can still reach freezes it instead
    of waiting out the lease the others confirmed it (tcp:
    `ctdb.engines.recovery_flow.leases_run_out`). With these tunables that lease
    is 10 s; waiting it out made `stop` take 4 s with the defaults."""
    c = make_cluster(KeepaliveInterval=5.0, KeepaliveLimit=3)
    with c.client(0) as cl:
        cl.call("stop", pnn=2)
    took = seconds_until("vnnmap [0, 1]", lambda: recovered(c, [0, 1]), 8.0)
    assert took < 5.0, f"the recovery without the stopped node took {took:.1f}s"
    with c.client(2) as cl:
        cl.call("continue")
    wait_for("vnnmap [0, 1, 2]", lambda: recovered(c, [0, 1, 2]), 15.0)


def test_a_killed_node_is_not_waited_for(make_cluster: Callable[..., LocalCluster]) -> None:
    """A node that died is out of every member's view, so none reports a
    lease it confirmed it (`Liveness.leases_granted`) and the recovery does
    not wait: with a 10 s lease, waiting made kill -9 take 3-4 s with the
    default tunables."""
    c = make_cluster(KeepaliveInterval=5.0, KeepaliveLimit=3)
    c.kill_node(2)
    took = seconds_until("vnnmap [0, 1]", lambda: recovered(c, [0, 1]), 8.0)
    assert took < 5.0, f"the recovery without the killed node took {took:.1f}s"


def test_a_node_killed_under_load_is_not_waited_for(
    make_cluster: Callable[..., LocalCluster],
) -> None:
    """As above, with every node busy: frames the others sent the killed node
    sat unread in its sockets, so its kernel resets their connections to
    it, and the FIN of its own connections may come after the reset. Only
    that FIN tells a death from a failed link (`Transport.left_in_order`:
    tcp keeps the dead node's connection unread to find it,
    `TcpTransport._linger`); taken for a failed link, the recovery waits
    out a 10 s lease."""
    c = make_cluster(KeepaliveInterval=5.0, KeepaliveLimit=3)
    db = _name("vol")
    with c.client(0) as cl:
        cl.attach(db)
    stop = threading.Event()
    stores = [0, 0, 0]

    def load(pnn: int) -> None:
        with c.client(pnn, timeout=20) as cl:
            while not stop.is_set():
                try:
                    cl.store(db, f"k{stores[pnn] % 16}", f"{pnn}".encode() * 4000)
                    stores[pnn] += 1
                except (CtdbError, OSError):
                    if pnn == 2:
                        return

    threads = [threading.Thread(target=load, args=(p,), daemon=True) for p in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for("stores on every node", lambda: min(stores) >= 50, 30.0)
        c.kill_node(2)
        took = seconds_until("vnnmap [0, 1]", lambda: recovered(c, [0, 1]), 12.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert took < 5.0, f"the recovery without the node killed under load took {took:.1f}s"


def test_stop_continue_flags_and_vnnmap(cluster: LocalCluster) -> None:
    c = cluster
    db = _name("vol")
    with c.client(0) as cl:
        cl.attach(db)
        cl.call("stop", pnn=1)
    _check_state(c, 1, STOPPED, in_vnnmap=False)
    assert "STOPPED" in nodestatus(c, 1).stdout
    with c.client(1, timeout=20) as cl:
        cl.call("setvar", name="WaitForQuorum", value=0)
        with pytest.raises(CtdbError) as err:
            cl.store(db, "k", "v")
        assert err.value.code in (ErrorCode.RETRY, ErrorCode.NO_QUORUM)
        # With WaitForQuorum=1 the client waits, and is served once the node continues.
        cl.call("setvar", name="WaitForQuorum", value=1)
        result: dict[str, Any] = {}

        def waiting_store() -> None:
            with c.client(1, timeout=20) as waiter:
                try:
                    waiter.store(db, "waited", "yes")
                    result["ok"] = time.monotonic()
                except CtdbError as exc:
                    result["error"] = exc

        t = threading.Thread(target=waiting_store)
        t.start()
        time.sleep(0.5)
        assert not result, "a stopped node must not serve"
        cl.call("continue")
        t.join(15)
        assert "ok" in result, result
    _check_state(c, 1, 0, in_vnnmap=True)
    with c.client(2) as cl:
        assert cl.fetch(db, "waited") == b"yes"


def test_disable_enable_flags(cluster: LocalCluster) -> None:
    c = cluster
    db = _name("vol")
    with c.client(2) as cl:
        cl.attach(db)
        cl.call("disable")
    # DISABLED is not inactive: the node stays in the vnnmap and keeps serving.
    _check_state(c, 2, DISABLED, in_vnnmap=True)
    assert "DISABLED" in nodestatus(c, 2).stdout
    with c.client(2) as cl:
        cl.store(db, "k", "v")
        cl.call("enable")
    _check_state(c, 2, 0, in_vnnmap=True)
    with c.client(0) as cl:
        assert cl.fetch(db, "k") == b"v"


def test_ban_expires_and_unban(cluster: LocalCluster) -> None:
    c = cluster
    db = _name("vol")
    with c.client(0) as cl:
        cl.attach(db)
        cl.call("ban", seconds=2.0, pnn=2)
    banned_at = time.monotonic()
    _check_state(c, 2, BANNED, in_vnnmap=False)
    assert "BANNED" in nodestatus(c, 2).stdout
    with c.client(2, timeout=20) as cl:
        cl.call("setvar", name="WaitForQuorum", value=0)
        with pytest.raises(CtdbError) as err:
            cl.fetch(db, "k")
        assert err.value.code in (ErrorCode.RETRY, ErrorCode.NO_QUORUM)
    # The ban lifts itself after 2 s.
    wait_flags(c, 2, 0, [0, 1, 2], timeout=6)
    assert time.monotonic() - banned_at >= 1.8
    wait_for("node 2 back in the vnnmap", lambda: recovered(c, [0, 1, 2]), 10)
    with c.client(2) as cl:
        cl.store(db, "k", "v")  # node 2 serves again
    with c.client(0) as cl:
        # Move the record to a node that stays active: a banned node's volatile
        # records are dropped when it rejoins (CTDB semantics, see ctdb/engines/merge.py).
        assert cl.fetch(db, "k") == b"v"
    # A long ban lifted early by unban.
    with c.client(1) as cl:
        cl.call("ban", seconds=600.0, pnn=2)
    _check_state(c, 2, BANNED, in_vnnmap=False)
    with c.client(0) as cl:
        cl.call("unban", pnn=2)
    _check_state(c, 2, 0, in_vnnmap=True)
    with c.client(0) as cl:
        assert cl.fetch(db, "k") == b"v"


# -- keepalive tunables at run time -----------------------------------------------------------


def _silent_detection(c: LocalCluster, victim: int) -> float:
    """SIGSTOP `victim` (sockets stay open, nothing sent); seconds until node 0 sees it gone."""
    assert flags_on(c, 0, victim) == 0
    start = time.monotonic()
    c.signal_node(victim, signal.SIGSTOP)
    try:
        took = seconds_until(
            f"node 0 to mark node {victim} DISCONNECTED",
            lambda: flags_on(c, 0, victim) & DISCONNECTED,
            15,
        )
        took = time.monotonic() - start
    finally:
        c.signal_node(victim, signal.SIGCONT)
    c.wait_healthy(15, nodes=[0, 1, 2])
    return took


def test_setvar_keepalive_changes_detection_time(cluster: LocalCluster) -> None:
    c = cluster
    fast = _silent_detection(c, 2)
    assert KA_INTERVAL * KA_LIMIT * 0.8 <= fast < DETECT_BOUND, fast
    for p in range(3):
        with c.client(0) as cl:
            cl.call("setvar", name="KeepaliveInterval", value=0.4, pnn=p)
            cl.call("setvar", name="KeepaliveLimit", value=5, pnn=p)
            assert cl.call("getvar", name="KeepaliveLimit", pnn=p) == 5
    slow = _silent_detection(c, 2)
    assert 0.4 * 5 * 0.9 <= slow < 0.4 * 5 + 1.5, slow
    assert slow > fast + 0.8, (fast, slow)


# -- a client stream during a kill -9 ---------------------------------------------------------


def test_acknowledged_writes_survive_kill_during_stream(cluster: LocalCluster) -> None:
    c = cluster
    vdb, pdb = _name("vol"), _name("per")
    with c.client(0) as cl:
        cl.attach(vdb)
        cl.attach(pdb, "persistent")
    acked_persistent: dict[str, str] = {}
    acked_volatile = [0]  # last acknowledged value of the volatile counter
    violations: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        with c.client(0, timeout=30) as cl:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    cl.store(vdb, "ctr", str(i))
                    acked_volatile[0] = i
                except CtdbError as exc:
                    errors.append(f"store {i}: {exc}")
                try:
                    with cl.transaction(pdb) as tx:
                        tx.store(f"p{i}", str(i))
                        tx.store("pctr", str(i))
                    acked_persistent[f"p{i}"] = str(i)
                    acked_persistent["pctr"] = str(i)
                except CtdbError as exc:
                    errors.append(f"commit {i}: {exc}")

    def reader(pnn: int) -> None:
        with c.client(pnn, timeout=30) as cl:
            while not stop.is_set():
                floor = acked_volatile[0]
                try:
                    got = cl.fetch(vdb, "ctr")
                except CtdbError:
                    continue
                value = int(got) if got else 0
                if value < floor:
                    violations.append(f"node {pnn} read {value} after {floor} was acknowledged")
                time.sleep(0.005)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader, args=(p,)) for p in (0, 1)
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        before_kill = len(acked_persistent)
        c.kill_node(2)
        time.sleep(2.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert before_kill > 0 and len(acked_persistent) > before_kill, (before_kill, errors[:5])
    wait_for("recovery over [0, 1]", lambda: recovered(c, [0, 1]), 10)
    assert not violations, violations[:5]
    last = acked_volatile[0]
    for p in (0, 1):
        with c.client(p) as cl:
            got = cl.fetch(vdb, "ctr")
            assert got is not None and int(got) >= last, (p, got, last)
            assert dict(cl.traverse(pdb)).keys() >= {k.encode() for k in acked_persistent}
            for key, value in acked_persistent.items():
                if key == "pctr":
                    assert int(cl.fetch(pdb, key) or b"0") >= int(value), p
                else:
                    assert cl.fetch(pdb, key) == value.encode(), (p, key)


# -- quorum: 2 of 3 daemons killed --------------------------------------------------------------


def test_survivor_without_quorum_stops_serving(cluster: LocalCluster) -> None:
    c = cluster
    vdb, pdb = _name("vol"), _name("per")
    with c.client(0) as cl:
        cl.attach(vdb)
        cl.attach(pdb, "persistent")
        for i in range(20):
            cl.store(vdb, f"k{i}", f"v{i}")
        cl.transact(pdb, {f"k{i}": f"v{i}" for i in range(20)})
        cl.call("setvar", name="WaitForQuorum", value=0)
    c.kill_node(1)
    c.kill_node(2)
    # Node 1's death alone already freezes node 0 (with quorum): wait for both.
    st = wait_for(
        "node 0 in RECOVERY without quorum",
        lambda: (s := c.status(0))["recovery_mode"] == "RECOVERY" and s["quorum"] is False and s,
        DETECT_BOUND,
    )
    assert st["nodes"][1]["flags"] & DISCONNECTED and st["nodes"][2]["flags"] & DISCONNECTED
    time.sleep(0.5)  # it must stay frozen, not recover on its own
    assert c.status(0)["recovery_mode"] == "RECOVERY"
    with c.client(0, timeout=20) as cl:
        with pytest.raises(CtdbError) as err:
            cl.store(vdb, "k0", "split brain")
        assert err.value.code == ErrorCode.NO_QUORUM, err.value
        with pytest.raises(CtdbError) as err:
            with cl.transaction(pdb) as tx:
                tx.store("k0", "split brain")
        assert err.value.code == ErrorCode.NO_QUORUM, err.value
    c.start_node(1)
    c.start_node(2)
    c.wait_healthy(20, nodes=[0, 1, 2])
    for p in range(3):
        with c.client(p) as cl:
            for i in range(20):
                assert cl.fetch(vdb, f"k{i}") == f"v{i}".encode(), (p, i)
                assert cl.fetch(pdb, f"k{i}") == f"v{i}".encode(), (p, i)


# -- start-up: the first recovery must not stall ------------------------------------------------


def test_cold_starts_recover_without_control_timeouts(transport: str, tmp_path: Path) -> None:
    """Eight cold starts of a 3-node cluster; each must be healthy within RecoverTimeout.

    Exposes a start-up race (seen in ~15% of cold starts): the leader's
    first `freeze` control reaches a peer that has not yet registered its
    own outgoing connection to the leader, so the peer's view lacks the
    leader and `Node._answer_control` drops the reply; the leader then waits
    the whole RecoverTimeout (5 s) before retrying. Probabilistic by nature:
    with eight starts it fails in most runs while the race exists.
    """
    slow = []
    for n in range(8):
        c = LocalCluster(
            tmp_path / f"cold{n}",
            size=3,
            transport=transport,
            port=random.randint(20000, 60000),
            base=f"127.{random.randint(10, 250)}.{random.randint(0, 250)}",
            tunables=TUNABLES,
        )
        try:
            started = time.monotonic()
            c.up(timeout=30)
            took = time.monotonic() - started
        finally:
            c.down()
        stalls = [
            line
            for p in range(3)
            for line in c.log_path(p).read_text(errors="replace").splitlines()
            if "did not answer" in line
        ]
        # The race costs a whole RecoverTimeout on top of a normal start (a
        # tighter bound would measure the machine's load).
        if took > RECOVER_TIMEOUT or stalls:
            slow.append((n, round(took, 2), stalls[:2]))
    assert not slow, slow
