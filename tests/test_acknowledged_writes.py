"""No acknowledged write is ever lost, nor an unacknowledged one ever read (issue 8).

Black-box tests on real daemons, driven the way a user would drive them:
`ctdbtool` for administration and reads, `ctdb.client` for the workload.
Each test reproduces one of the losses issue 8 reported against main, and
fails there (see each test's docstring for how it fails and how often):

1. tcp: a `store_unlock` acknowledged during a forced recovery is undone by
   the recovery's push (also run on vs, where it must hold as well).
2. tcp: a persistent commit acknowledged while node 2 hung is lost when
   node 2 comes back after the others restarted.
3. vs: a node that joins while a record is locked keeps the old value after
   the holder's `store_unlock` (also run on tcp, where it must hold as well).
4. tcp: a reader sees the value of a two-phase commit that is then cancelled,
   or, while a recovery pushes a persistent database, a committed key as missing.

The non-transitive partition of issue 8 needs network namespaces: see
tests/test_partition_nontransitive.py.
"""

from __future__ import annotations

import random
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from ctdb.common.errors import CtdbError, ErrorCode
from tests.conftest import cluster_logs, recovered, run_ctdbtool, unique, wait_for
from tools.cluster import LocalCluster

pytestmark = pytest.mark.timeout(180)

#: Failure detection in 0.6 s (as in tests/test_recovery.py).
FAST = {"KeepaliveInterval": 0.2, "KeepaliveLimit": 3}
DISCONNECTED = 0x01

tcp_only = pytest.mark.parametrize("transport", ["tcp"], indirect=True)
vs_only = pytest.mark.parametrize("transport", ["vs"], indirect=True)


# -- helpers ----------------------------------------------------------------------------


def force_recovery(c: LocalCluster, via: int) -> None:
    """`ctdbtool recover` on node `via` (which returns once the recovery has
    finished there), then until every node serves the new generation."""
    before = c.status(via)["generation"]
    run_ctdbtool(c.socket(via), "recover")
    everyone = list(range(c.size))
    wait_for(f"the recovery forced on node {via}", lambda: recovered(c, everyone, before), 20, c)


def tool(c: LocalCluster, pnn: int, *args: str, check: bool = True) -> Any:
    """`ctdbtool --json ARGS` against node `pnn`; returns the decoded output."""
    result = run_ctdbtool(c.socket(pnn), "--json", *args, check=check)
    return result.json() if result.returncode == 0 and result.stdout.strip() else result


def read_everywhere(c: LocalCluster, command: str, db: str, key: str) -> list[str | None]:
    """`ctdbtool readkey/pfetch DB KEY` on every node: the value each one reads."""
    return [tool(c, p, command, db, key)["value"] for p in range(c.size)]


# -- 1. store_unlock acknowledged during a forced recovery --------------------------------

#: Workload of test 1. Found by measurement on main (see the docstring): two
#: clients per node on one counter, each holding the record lock for up to
#: HOLD seconds, make a lock held across a freeze (and an unlock landing
#: between the recovery's pull and push) an event of every few seconds.
CLIENTS_PER_NODE = 2
HOLD = 0.02
RECOVER_EVERY = 0.25
#: 20 s when the failure rates below were measured; 15 s keeps the suite in its time
DURATION = 15.0


def test_increments_acknowledged_during_forced_recoveries_are_kept(
    cluster_factory: Callable[..., LocalCluster], transport: str
) -> None:
    """Six clients increment one counter under fetch_lock while `recover` runs every 0.25 s.

    Afterwards every node reads the same counter, and it lies between the
    number of acknowledged increments and the number attempted (a failed
    `store_unlock` may or may not have applied).

    On main (tcp) the counter ends below the acknowledged count (an unlock
    written while the node is frozen, between the leader's pull and push,
    is overwritten by the push), or a recovery never finishes (the unlock's
    write collides with the push's TDB transaction in the offload thread:
    "Invalid parameter" / "IO Error" in the logs, and the leader waits
    forever for its own push). Measured on main (b7714d4), 2-CPU shared
    host, 20-s runs: 15 of 15 failed (13 lost 1-5 acknowledged increments, one
    left the cluster stuck in recovery, one stalled at 93 increments). With
    one client per node and no hold time, as in the issue, 2 of 4 15-s runs
    lost one increment. vs passed 3 of 3.
    """
    increments_under_recoveries(cluster_factory(size=3), transport, in_place=False)


def increments_under_recoveries(c: LocalCluster, transport: str, *, in_place: bool) -> None:
    """The workload and checks of the test above; `in_place`: the clients use
    the records this node holds in their own process (`ctdb.client.in_place`)."""
    db, key = unique("ctr"), "counter"
    with c.client(0) as cl:
        cl.attach(db)
    stop = threading.Event()
    lock = threading.Lock()
    counts = {"acked": 0, "attempted": 0, "errors": 0}
    crashed: list[BaseException] = []

    def incrementer(pnn: int, seed: int) -> None:
        rng = random.Random(seed)
        cl = c.client(pnn, timeout=30, in_place=in_place)
        try:
            while not stop.is_set():
                try:
                    value = int(cl.fetch_lock(db, key) or b"0")
                    time.sleep(rng.uniform(0, HOLD))  # a client working under the lock
                    with lock:
                        counts["attempted"] += 1
                    cl.store_unlock(db, key, str(value + 1))
                    with lock:
                        counts["acked"] += 1
                except CtdbError:
                    # Outcome unknown: start afresh (a new connection holds no lock).
                    with lock:
                        counts["errors"] += 1
                    cl.close()
                    cl = c.client(pnn, timeout=30, in_place=in_place)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            crashed.append(exc)
        finally:
            cl.close()

    recovers = [0]

    def recoverer() -> None:
        rng = random.Random()
        while not stop.is_set():
            started = time.monotonic()
            # Today `recover` returns at once; once it waits for the recovery
            # the cadence is simply that of the recoveries.
            run_ctdbtool(c.socket(rng.randrange(c.size)), "recover", check=False)
            recovers[0] += 1
            time.sleep(max(0.0, RECOVER_EVERY - (time.monotonic() - started)))

    threads = [
        threading.Thread(target=incrementer, args=(p, 10 * p + i), daemon=True)
        for p in range(c.size)
        for i in range(CLIENTS_PER_NODE)
    ] + [threading.Thread(target=recoverer, daemon=True)]
    for t in threads:
        t.start()
    try:
        time.sleep(DURATION)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    assert not crashed, crashed
    print(f"{transport} (in place: {in_place}): {counts}, {recovers[0]} forced recoveries")
    try:
        c.wait_healthy(30)
    except TimeoutError as exc:
        problem = f"the cluster did not settle after the load ({counts}): {exc}"
        raise AssertionError(f"{problem}\n{cluster_logs(c)}") from None
    # The race needs increments and recoveries interleaved (the machine is shared: be modest).
    assert counts["acked"] >= 20 and recovers[0] >= 10, (counts, recovers)
    values = read_everywhere(c, "readkey", db, key)
    assert len(set(values)) == 1, f"nodes disagree on the counter: {values}"
    final = int(values[0] or 0)
    assert counts["acked"] <= final <= counts["attempted"], (
        f"counter {final}, acknowledged increments {counts['acked']}, "
        f"attempted {counts['attempted']}: {counts['acked'] - final} acknowledged lost"
    )


# -- 2. a persistent commit acknowledged while a node hung ---------------------------------


@pytest.mark.parametrize("transport", ["vs", "tcp"], indirect=True)
def test_commit_acknowledged_while_a_node_hung_survives_its_return(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    """Hung node 2 comes back after nodes 0 and 1 restarted: the commit must stay.

    Node 2 has the highest recovery epoch (three forced recoveries, then
    it hangs); nodes 0 and 1 commit a key without it, are killed and
    restarted (their epoch, held only in memory, restarts low); node 2
    resumes. On main the recovery takes node 2's copy, which lacks the key:
    every node then reads it as missing. Measured on main: 6 of 6 runs failed.

    On vs the restarted nodes find node 2, stopped, the only process left
    with the CPG group's state: they found it anew without it (FOUND, see
    `transport.cpg_group`); before, both exited with "no view within 11.2s".
    """
    c = cluster_factory(size=3, tunables=FAST)
    db = unique("per")
    tool(c, 0, "attach", db, "persistent")
    run_ctdbtool(c.socket(0), "pstore", db, "before", "b")
    for i in range(3):
        force_recovery(c, i)

    generation = c.status(0)["generation"]
    c.signal_node(2, signal.SIGSTOP)
    try:
        wait_for(
            "nodes 0 and 1 to report node 2 DISCONNECTED",
            lambda: all(c.status(p)["nodes"][2]["flags"] & DISCONNECTED for p in (0, 1)),
            10,
            c,
        )
        wait_for("recovery over [0, 1]", lambda: recovered(c, [0, 1], generation), 20, c)
        run_ctdbtool(c.socket(0), "pstore", db, "acked", "while 2 hung")  # exit 0: acknowledged
        assert tool(c, 1, "pfetch", db, "acked")["value"] == "while 2 hung"

        for p in (0, 1):
            c.kill_node(p)
        for p in (0, 1):
            c.start_node(p)
        c.wait_healthy(30, nodes=[0, 1])
        for p in (0, 1):  # on disk, so still there
            assert tool(c, p, "pfetch", db, "acked")["value"] == "while 2 hung", p
    finally:
        c.signal_node(2, signal.SIGCONT)
    c.wait_healthy(30, nodes=[0, 1, 2])
    assert read_everywhere(c, "pfetch", db, "acked") == ["while 2 hung"] * 3
    assert read_everywhere(c, "pfetch", db, "before") == ["b"] * 3


# -- 3. a node joins while a record is locked ----------------------------------------------


@pytest.mark.parametrize("transport", ["vs", "tcp"], indirect=True)
def test_unlock_after_a_join_reaches_the_joined_node(
    cluster_factory: Callable[..., LocalCluster], transport: str
) -> None:
    """Node 2 restarts while a client on node 0 holds a record lock; then it stores.

    Every node, the restarted one included, must read the stored value. On
    main (vs) the state transfer does not carry the lock queues, so node 2
    rejects the holder's unlock and reads the old value forever. Measured
    on main: vs 6 of 6 runs failed; tcp passed 6 of 6 (a regression guard).

    If the fix makes a lock taken before the join unusable (a retryable
    error at `store_unlock`), the client takes the lock again and stores
    again, as a client must; the acknowledged value is what every node
    must read.
    """
    c = cluster_factory(size=3, tunables=FAST)
    db, key = unique("vol"), "record"
    with c.client(0) as cl:
        cl.attach(db)
        cl.store(db, key, "old")
    c.kill_node(2)
    wait_for("recovery over [0, 1]", lambda: recovered(c, [0, 1]), 20, c)

    with c.client(0, timeout=30) as holder:
        assert holder.fetch_lock(db, key) == b"old"
        c.start_node(2)
        c.wait_healthy(30, nodes=[0, 1, 2])
        try:
            holder.store_unlock(db, key, "new")
        except CtdbError as exc:
            assert exc.code in (ErrorCode.RETRY, ErrorCode.NOT_LOCKED), exc
            print(f"{transport}: store_unlock after the join refused ({exc}); locking again")
            assert holder.fetch_lock(db, key) is not None
            holder.store_unlock(db, key, "new")
    values = read_everywhere(c, "readkey", db, key)
    assert values == ["new"] * 3, f"values read on nodes 0, 1, 2: {values}"
    # And the record stays usable everywhere: lock it on the joined node.
    with c.client(2, timeout=30) as cl:
        assert cl.fetch_lock(db, key) == b"new"
        cl.store_unlock(db, key, "newer")
    assert read_everywhere(c, "readkey", db, key) == ["newer"] * 3


# -- 4. dirty reads during a two-phase commit ---------------------------------------------


@tcp_only
def test_readers_never_see_a_commit_that_is_then_cancelled(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    """A commit prepares on nodes 0 and 1 and is cancelled because node 2 hangs.

    Node 2 is SIGSTOPped just before a client commits: the leader prepares
    the commit on nodes 0 and 1 and waits for node 2 until the keepalives
    declare it gone (2 s here), then the commit is cancelled. Meanwhile
    readers on nodes 0 and 1 read the key in a loop, with persistent `fetch`
    and with `Transaction.fetch`. Every value a reader saw must be a
    committed one: the value from before, or the new value if (and only
    if) the commit took effect in the end. On main both kinds of read
    return the prepared, uncommitted value (a prepared TDB transaction is
    open on the handle they read), and readers on the leader also read the
    key as missing while the recovery's push rewrites the file. Measured
    on main: 6 of 6 runs failed (every reader saw the cancelled value).

    vs has no two-phase commit (a commit is one ordered message every node
    applies in one local transaction), so this scenario is tcp only.
    """
    c = cluster_factory(size=3, tunables={"KeepaliveInterval": 0.5, "KeepaliveLimit": 4})
    db, key = unique("per"), "k"
    cancelled = f"cancelled-{uuid.uuid4().hex[:8]}"
    with c.client(0) as cl:
        cl.attach(db, "persistent")
        cl.transact(db, {key: "committed"})
    stop = threading.Event()
    seen: dict[str, set[bytes | None]] = {}
    reads = [0]
    crashed: list[BaseException] = []

    def reader(pnn: int, how: str) -> None:
        values = seen.setdefault(f"node {pnn} {how}", set())
        try:
            with c.client(pnn, timeout=30) as cl:
                while not stop.is_set():
                    try:
                        if how == "fetch":
                            values.add(cl.fetch(db, key))
                        else:
                            tx = cl.transaction(db)
                            values.add(tx.fetch(key))
                            tx.cancel()
                        reads[0] += 1
                    except CtdbError:
                        time.sleep(0.01)  # frozen for the recovery
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            crashed.append(exc)

    threads = [
        threading.Thread(target=reader, args=(p, how), daemon=True)
        for p in (0, 1)
        for how in ("fetch", "trans_fetch")
    ]
    for t in threads:
        t.start()
    outcome: str
    try:
        time.sleep(0.3)
        generation = c.status(0)["generation"]
        c.signal_node(2, signal.SIGSTOP)
        try:
            with c.client(1, timeout=30) as writer:
                tx = writer.transaction(db)
                tx.store(key, cancelled)
                try:
                    tx.commit()  # no retry: one attempt, cancelled when node 2 is declared gone
                    outcome = "acknowledged"
                except CtdbError as exc:
                    outcome = f"failed: {exc}"
            wait_for("recovery over [0, 1]", lambda: recovered(c, [0, 1], generation), 20, c)
            time.sleep(0.3)  # readers read the recovered copy too
        finally:
            c.signal_node(2, signal.SIGCONT)
        c.wait_healthy(30, nodes=[0, 1, 2])
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not crashed, crashed
    final = read_everywhere(c, "pfetch", db, key)
    print(f"commit {outcome}; final {final}; {reads[0]} reads; seen {seen}")
    assert len(set(final)) == 1, final
    assert reads[0] > 100
    if outcome == "acknowledged":
        assert final == [cancelled] * 3, "an acknowledged commit must be on every node"
    committed = {b"committed", final[0].encode() if final[0] is not None else None}
    dirty = {who: values - committed for who, values in seen.items() if values - committed}
    assert not dirty, f"readers saw values that were never committed: {dirty} (commit {outcome})"


def test_persistent_reads_during_recoveries_return_committed_values(
    cluster_factory: Callable[..., LocalCluster], transport: str
) -> None:
    """Readers on every node read a persistent database while `recover` runs every 0.25 s.

    Nothing is written meanwhile, so every read must return the value
    committed before. On main (tcp) persistent `fetch` and
    `Transaction.fetch` are served while the node is frozen, from the
    handle on which the recovery's push has an open TDB transaction that
    first wipes the file: readers see keys as missing. Found while testing
    scenario 4 (whose test also catches it, less often). Measured: main
    b7714d4 5 of 5 runs failed (17-66 of ~15-25k reads returned None), and
    so did main acd0f49 (the first fixes of issue 8) 3 of 3; main 2d14033
    passed 3 of 3; vs passed 5 of 5.
    """
    c = cluster_factory(size=3)
    db = unique("per")
    # 2,000 records: a push that takes a while.
    expected: dict[str, bytes | str | None] = {f"k{i:04d}": f"v{i}" for i in range(2000)}
    with c.client(0) as cl:
        cl.attach(db, "persistent")
        cl.transact(db, expected)
    stop = threading.Event()
    wrong: list[str] = []
    reads = [0]
    crashed: list[BaseException] = []

    def reader(pnn: int, seed: int) -> None:
        rng = random.Random(seed)
        keys = sorted(str(k) for k in expected)
        try:
            with c.client(pnn, timeout=30) as cl:
                while not stop.is_set():
                    key = rng.choice(keys)
                    try:
                        if rng.random() < 0.5:
                            got = cl.fetch(db, key)
                        else:
                            tx = cl.transaction(db)
                            got = tx.fetch(key)
                            tx.cancel()
                    except CtdbError:
                        time.sleep(0.01)  # refusing to read while frozen is fine
                        continue
                    reads[0] += 1
                    if got != str(expected[key]).encode():
                        wrong.append(f"node {pnn} read {key}={got!r}")
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            crashed.append(exc)

    threads = [threading.Thread(target=reader, args=(p, p), daemon=True) for p in range(c.size)]
    for t in threads:
        t.start()
    recovers = 0
    try:
        deadline = time.monotonic() + 25.0  # ctdbtool starts slowly next to busy readers
        while recovers < 12 and time.monotonic() < deadline:
            started = time.monotonic()
            run_ctdbtool(c.socket(recovers % c.size), "recover", check=False)
            recovers += 1
            time.sleep(max(0.0, RECOVER_EVERY - (time.monotonic() - started)))
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not crashed, crashed
    c.wait_healthy(30)
    print(f"{transport}: {reads[0]} reads, {recovers} forced recoveries, {len(wrong)} wrong")
    assert reads[0] > 100 and recovers >= 8
    assert not wrong, f"{len(wrong)} reads returned uncommitted data, e.g. {wrong[:5]}"


# -- 6. a vs member that was stopped answers nothing from its copy ------------------------


@vs_only
@pytest.mark.parametrize("own_limit", [None, 50], ids=["same_limits", "node2_expels_later"])
def test_a_resumed_member_reads_no_commit_older_than_one_acknowledged_while_it_was_stopped(
    cluster_factory: Callable[..., LocalCluster], transport: str, own_limit: int | None
) -> None:
    """SIGSTOP node 2; the others expel it and acknowledge a commit without it;
    a read sent to node 2 while it is stopped is answered once it resumes.

    Node 2 learns that it was expelled only when it reaches the expel in the
    backlog corosync kept for it, behind the stores made while it was stopped
    (it reads 256 events per loop turn). Before the fix it answered the read
    from its copy in its first turn: the value before the commit (found by
    `tools.chaos --netns`, vs seed 503; here 7 of 8 runs). It must answer
    the committed value, or an error, never the older one.

    `node2_expels_later`: node 2 alone waits 50 ticks before it expels (setvar);
    its lease must still end by the others' shorter silence, which they
    announce, not by its own (a lease by its own would last 10 s here).
    """
    c = cluster_factory(size=3, tunables=FAST)
    if own_limit is not None:
        run_ctdbtool(c.socket(2), "setvar", "KeepaliveLimit", str(own_limit))
    pdb, vdb = unique("per"), unique("vol")
    with c.client(0) as admin:
        admin.attach(pdb, "persistent")
        admin.attach(vdb)
        admin.transact(pdb, {"k": "old"})
    reader = c.client(2, timeout=30.0)
    answer: list[object] = []
    try:
        assert reader.fetch(pdb, "k") == b"old"
        c.signal_node(2, signal.SIGSTOP)
        try:
            # A backlog for node 2 ahead of its expel: stores until the others dropped it.
            with c.client(0) as writer:
                i = 0
                while c.status(0)["vnnmap"] != [0, 1]:
                    writer.store(vdb, f"s{i % 50}", f"{i}")
                    i += 1
                writer.transact(pdb, {"k": "new"})  # acknowledged by nodes 0 and 1

            def read() -> None:
                try:
                    answer.append(reader.fetch(pdb, "k"))
                except CtdbError as exc:
                    answer.append(exc)

            thread = threading.Thread(target=read)
            thread.start()
            time.sleep(0.2)  # the request is in node 2's socket before it runs again
        finally:
            c.signal_node(2, signal.SIGCONT)
        thread.join(40)
    finally:
        reader.close()
    assert answer and answer[0] != b"old", (
        f"node 2 answered {answer} after the commit of 'new'\n{cluster_logs(c, 60)}"
    )
    c.wait_healthy(30)
    assert read_everywhere(c, "pfetch", pdb, "k") == ["new"] * 3
