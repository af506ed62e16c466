"""The foundation's acceptance list, on real daemons."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from ctdb.client import Client
from ctdb.common.errors import CtdbError, ErrorCode
from tests.conftest import unique
from tools.cluster import LocalCluster


def run_threads(targets: list[Callable[[], None]], timeout: float = 120.0) -> None:
    """Run the callables in threads; re-raise the first failure."""
    errors: list[BaseException] = []

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a worker thread hung"
    if errors:
        raise errors[0]


def ptrans_retry(client: Client, db: str, body: Callable[..., None], attempts: int = 200) -> int:
    """Run `body(tx)` in a transaction until its commit succeeds."""
    for _ in range(attempts):
        tx = client.transaction(db)
        body(tx)
        try:
            return tx.commit()
        except CtdbError as exc:
            if exc.code not in (ErrorCode.BUSY, ErrorCode.RETRY):
                raise
    raise AssertionError(f"transaction never committed after {attempts} attempts")


# -- volatile records ---------------------------------------------------------------------


def test_value_written_on_node0_is_read_on_node2(cluster: LocalCluster) -> None:
    db = unique()
    with cluster.client(0) as c0, cluster.client(2) as c2:
        c0.attach(db)
        c0.store(db, b"greeting", b"hello from node 0")
        assert c2.fetch(db, b"greeting") == b"hello from node 0"
        assert c2.fetch(db, b"absent") is None
        # and back again after the record moved
        c0.store(db, b"greeting", b"second")
        assert c2.fetch(db, b"greeting") == b"second"
        c2.delete(db, b"greeting")
        assert c0.fetch(db, b"greeting") is None


def test_record_ping_pongs_1000_times(cluster: LocalCluster) -> None:
    db = unique()
    with cluster.client(1) as a, cluster.client(2) as b:
        a.attach(db)
        a.store(db, b"ball", b"0")
        sides = [b, a]
        for i in range(1, 1001):
            side = sides[i % 2]
            seen = side.fetch_lock(db, b"ball")
            assert seen == str(i - 1).encode(), f"round {i} on node {side.pnn} saw {seen!r}"
            side.store_unlock(db, b"ball", str(i).encode())
        with cluster.client(0) as c:
            assert c.fetch(db, b"ball") == b"1000"


def test_three_nodes_increment_one_counter_under_fetch_lock(cluster: LocalCluster) -> None:
    db = unique()
    with cluster.client(0) as c:
        c.attach(db)

    def worker(pnn: int) -> Callable[[], None]:
        def run() -> None:
            with cluster.client(pnn) as c:
                for _ in range(200):
                    value = c.fetch_lock(db, b"counter")
                    n = int(value) if value else 0
                    c.store_unlock(db, b"counter", str(n + 1).encode())

        return run

    run_threads([worker(0), worker(1), worker(2)])
    for pnn in range(3):
        with cluster.client(pnn) as c:
            assert c.fetch(db, b"counter") == b"600"


def test_traverse_sees_records_from_all_nodes(cluster: LocalCluster) -> None:
    db = unique()
    expected = {}
    clients = [cluster.client(p) for p in range(3)]
    try:
        clients[0].attach(db)
        for pnn, c in enumerate(clients):
            for i in range(5):
                key, value = f"n{pnn}-k{i}".encode(), f"v{pnn}.{i}".encode()
                c.store(db, key, value)
                expected[key] = value
        clients[0].delete(db, b"n2-k4")  # migrates to node 0 as a deletion
        del expected[b"n2-k4"]
        for c in clients:
            assert dict(c.traverse(db)) == expected
    finally:
        for c in clients:
            c.close()


# -- persistent transactions -------------------------------------------------------------


def test_persistent_commit_is_visible_everywhere(cluster: LocalCluster) -> None:
    db = unique("p")
    clients = [cluster.client(p) for p in range(3)]
    try:
        clients[0].attach(db, "persistent")
        before = [c.call("getdbseqnum", db=db) for c in clients]
        with clients[0].transaction(db) as tx:
            tx.store(b"a", b"1")
            tx.store(b"b", b"2")
            assert tx.fetch(b"a") == b"1"  # reads its own writes
        for c in clients:
            assert c.fetch(db, b"a") == b"1"
            assert c.fetch(db, b"b") == b"2"
        after = [c.call("getdbseqnum", db=db) for c in clients]
        assert len(set(after)) == 1
        assert after[0] == before[0] + 1

        tx = clients[1].transaction(db)
        tx.store(b"c", b"3")
        tx.delete(b"a")
        tx.cancel()
        for c in clients:
            assert c.fetch(db, b"c") is None
            assert c.fetch(db, b"a") == b"1"
            assert c.call("getdbseqnum", db=db) == after[0]

        # a persistent database refuses volatile writes
        with pytest.raises(CtdbError) as info:
            clients[2].store(db, b"x", b"y")
        assert info.value.code == ErrorCode.INVALID
    finally:
        for c in clients:
            c.close()


def test_concurrent_conflicting_transactions_both_commit(cluster: LocalCluster) -> None:
    db = unique("p")
    with cluster.client(0) as c:
        c.attach(db, "persistent")
    rounds = 40

    def worker(pnn: int) -> Callable[[], None]:
        def run() -> None:
            with cluster.client(pnn) as c:
                for _ in range(rounds):

                    def body(tx, pnn=pnn) -> None:  # type: ignore[no-untyped-def]
                        value = tx.fetch(b"counter")
                        tx.store(b"counter", str(int(value or b"0") + 1).encode())
                        tx.store(f"last-{pnn}".encode(), b"x")

                    ptrans_retry(c, db, body)

        return run

    run_threads([worker(0), worker(1)])
    values = set()
    seqnums = set()
    for pnn in range(3):
        with cluster.client(pnn) as c:
            values.add(c.fetch(db, b"counter"))
            seqnums.add(c.call("getdbseqnum", db=db))
            assert c.fetch(db, b"last-0") == b"x" and c.fetch(db, b"last-1") == b"x"
    assert values == {str(2 * rounds).encode()}
    assert len(seqnums) == 1


def test_stale_read_is_rejected_with_busy(cluster: LocalCluster) -> None:
    db = unique("p")
    with cluster.client(0) as a, cluster.client(1) as b:
        a.attach(db, "persistent")
        tx = a.transaction(db)
        assert tx.fetch(b"k") is None
        tx.store(b"k", b"from-a")
        with b.transaction(db) as other:
            other.store(b"k", b"from-b")
        with pytest.raises(CtdbError) as info:
            tx.commit()
        assert info.value.code == ErrorCode.BUSY
        for c in (a, b):
            assert c.fetch(db, b"k") == b"from-b"


# -- restart ---------------------------------------------------------------------------


def test_full_restart_keeps_persistent_and_drops_volatile(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    c = cluster_factory()
    with c.client(0) as cl:
        cl.attach("vol")
        cl.attach("pers", "persistent")
        cl.store("vol", b"k", b"volatile value")
        with cl.transaction("pers") as tx:
            tx.store(b"k", b"persistent value")
        seqnum = cl.call("getdbseqnum", db="pers")
    with c.client(2) as cl:
        cl.store("vol", b"k2", b"on node 2")
    for pnn in range(3):
        c.stop_node(pnn)
    for pnn in range(3):
        assert not c.alive(pnn)
    for pnn in range(3):
        c.start_node(pnn)
    c.wait_healthy(30)
    for pnn in range(3):
        with c.client(pnn) as cl:
            names = {d["name"]: d["kind"] for d in cl.call("getdbmap")}
            assert names.get("pers") == "persistent"
            assert cl.fetch("pers", b"k") == b"persistent value"
            assert cl.call("getdbseqnum", db="pers") == seqnum
            cl.attach("vol")
            assert cl.fetch("vol", b"k") is None
            assert cl.fetch("vol", b"k2") is None
            assert cl.traverse("vol") == []


# -- the files are real TDB files -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["volatile", "persistent"])
def test_samba_tools_read_our_files(cluster: LocalCluster, kind: str, transport: str) -> None:
    db = unique("samba")
    key, value = b"samba-key-" + kind.encode(), b"samba-value-0123456789"
    with cluster.client(1) as c:
        info = c.attach(db, kind)
        if kind == "volatile":
            c.store(db, key, value)
        else:
            with c.transaction(db) as tx:
                tx.store(key, value)
    # node 1 now holds the record (volatile: it is dmaster; persistent: everyone)
    path = Path(cluster.node_dir(1)) / "state" / kind / f"{db}.1"
    assert info["path"].endswith(f"{db}.1") or Path(info["path"]).exists()
    assert path.exists(), f"{path} missing"

    dump = subprocess.run(
        ["ltdbtool", "dump", "-p", str(path)], capture_output=True, text=True, timeout=30
    )
    assert dump.returncode == 0, dump.stderr
    # ltdbtool strips a 24-byte header: the data it shows is exactly our value
    assert f'key({len(key)}) = "{key.decode()}"' in dump.stdout
    assert f'data({len(value)}) = "{value.decode()}"' in dump.stdout
    block = dump.stdout.split(key.decode(), 1)[1].split("}", 1)[0]
    # vs: no node is a volatile record's dmaster (CTDB_UNKNOWN_PNN, shown as -1),
    # so that Samba's clients never write it in place outside the ordered stream
    dmaster = -1 if transport == "vs" and kind == "volatile" else 1
    assert f"dmaster: {dmaster}\n" in block
    assert "rsn: " in block and "rsn: 0\n" not in block

    tdbdump = subprocess.run(["tdbdump", str(path)], capture_output=True, text=True, timeout=30)
    assert tdbdump.returncode == 0, tdbdump.stderr
    assert key.decode() in tdbdump.stdout
    assert value.decode() in tdbdump.stdout


# -- messaging -----------------------------------------------------------------------------


def test_messages_to_one_node_and_to_all(cluster: LocalCluster) -> None:
    srvid = 0xC0FFEE
    with cluster.client(2) as listener, cluster.client(1) as bystander, cluster.client(0) as s:
        listener.register_srvid(srvid)
        bystander.register_srvid(srvid + 1)  # a different srvid: must not get it
        s.send_message(2, srvid, b"to node 2")
        msg = listener.wait_message(timeout=10)
        assert (msg.srvid, msg.src, msg.data) == (srvid, 0, b"to node 2")

        s.send_message(None, srvid, b"to all")
        msg = listener.wait_message(timeout=10)
        assert (msg.srvid, msg.src, msg.data) == (srvid, 0, b"to all")

        s.send_message(1, srvid + 1, b"for the bystander")
        msg = bystander.wait_message(timeout=10)
        assert msg.data == b"for the bystander"
        assert not bystander.messages
        assert not listener.messages
