"""Conditional append on real daemons, both transports: the same answers everywhere."""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable

import msgpack
import pytest

from ctdb.client import Client
from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.engines.conditions import (
    FILE_READ_DATA,
    FILE_SHARE_READ,
    FILE_WRITE_DATA,
    WRITE_LOCK,
    byte_range_payload,
    share_mode_payload,
)
from ctdb.protocol import client as protocol
from ctdb.protocol.client import ENTRY_HEAD_SRVID
from ctdb.storage.placement import db_id, lmaster
from tests.conftest import unique, wait_for
from tools.cluster import LocalCluster


def homed_at(pnn: int) -> bytes:
    """A key whose lmaster (on tcp, a volatile list's home) is node `pnn`."""
    return next(k for k in (f"R{i}".encode() for i in range(100)) if lmaster(k, [0, 1, 2]) == pnn)


def queue_then_kill(
    cluster: LocalCluster, db: str, key: bytes, doomed: int, rest: dict[int, Client]
) -> None:
    """A client of node `doomed` appends first, then the clients of `rest` (by
    node) in order, each with its node's pnn as payload; then node `doomed` is
    killed with SIGKILL."""
    victim = cluster.client(doomed)
    for pnn, c in {doomed: victim, **rest}.items():
        assert c.cond_append(db, key, b"%d" % pnn, "always").appended
    cluster.kill_node(doomed)
    victim.close()


def payloads(c: Client, db: str, key: bytes) -> list[bytes]:
    """The list's payloads as `c`'s node sees it; [] while the cluster recovers."""
    try:
        return [e.payload for e in c.entries(db, key).entries]
    except CtdbError as exc:
        if exc.code in (ErrorCode.RETRY, ErrorCode.TIMEOUT, ErrorCode.NO_QUORUM):
            return []
        raise


@pytest.mark.parametrize("kind", ["volatile", "persistent"])
def test_lock_by_empty_condition_has_one_winner_on_every_node(
    cluster: LocalCluster, kind: str
) -> None:
    db = unique()
    clients = [cluster.client(p) for p in range(3)]
    try:
        clients[0].attach(db, kind)
        results = [c.cond_append(db, "R1", f"node{i}", "empty") for i, c in enumerate(clients)]
        winners = [r for r in results if r.appended]
        assert len(winners) == 1
        for r in results:
            if not r.appended:
                assert r.reason and r.entries is not None
                assert [e.owner for e in r.entries] == [winners[0].owner]
        views = [c.entries(db, "R1") for c in clients]
        assert all(v == views[0] for v in views)
        assert [e.owner for e in views[0].entries] == [winners[0].owner]
    finally:
        for c in clients:
            c.close()


@pytest.mark.parametrize("kind", ["volatile", "persistent"])
def test_fifo_queue_order_is_the_same_on_every_node(cluster: LocalCluster, kind: str) -> None:
    db = unique()
    clients = [cluster.client(p % 3) for p in range(6)]
    try:
        clients[0].attach(db, kind)
        barrier = threading.Barrier(len(clients))
        owners: dict[tuple[int, int], Client] = {}

        def join(c: Client) -> None:
            barrier.wait()
            r = c.cond_append(db, "queue", b"waiting", "always")
            assert r.appended
            owners[r.owner] = c

        threads = [threading.Thread(target=join, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(owners) == len(clients)
        views = [c.entries(db, "queue") for c in clients[:3]]
        assert all(v == views[0] for v in views)
        assert sorted(e.owner for e in views[0].entries) == sorted(owners)
        # The head leaves: everyone sees the same next holder.
        head = views[0].entries[0].owner
        assert owners[head].remove_entries(db, "queue") == 1
        after = [c.entries(db, "queue") for c in clients[:3]]
        assert all(v == after[0] for v in after)
        assert [e.owner for e in after[0].entries] == [e.owner for e in views[0].entries[1:]]
        # The next in line is told, on its own node.
        notice = owners[after[0].entries[0].owner].wait_message(timeout=30)
        assert notice.srvid == ENTRY_HEAD_SRVID
        assert msgpack.unpackb(notice.data)[1] == b"queue"
    finally:
        for c in clients:
            c.close()


def test_rsn_equals_and_max_entries(cluster: LocalCluster) -> None:
    db = unique()
    with cluster.client(0) as c0, cluster.client(1) as c1:
        c0.attach(db)
        first = c0.cond_append(db, "k", b"a", "rsn_equals", 0)
        assert first.appended and first.index == 0
        stale = c1.cond_append(db, "k", b"b", "rsn_equals", 0)
        assert not stale.appended and stale.rsn == first.rsn
        fresh = c1.cond_append(db, "k", b"b", "rsn_equals", str(first.rsn))
        assert fresh.appended and fresh.index == 1
        full = c0.cond_append(db, "k", b"c", "max_entries", 2)
        assert not full.appended
        # Appending what this client already holds is idempotent.
        again = c0.cond_append(db, "k", b"a", "always")
        assert again.appended and again.index == 0 and again.rsn == fresh.rsn


def test_share_modes_and_byte_ranges_follow_samba(cluster: LocalCluster) -> None:
    db = unique()
    with cluster.client(0) as c0, cluster.client(2) as c2:
        c0.attach(db)
        reader = share_mode_payload(FILE_READ_DATA, FILE_SHARE_READ)
        writer = share_mode_payload(FILE_WRITE_DATA, FILE_SHARE_READ)
        assert c0.cond_append(db, "file", reader, "share_mode").appended
        assert c2.cond_append(db, "file", reader, "share_mode").appended
        denied = c2.cond_append(db, "file", writer, "share_mode")
        assert not denied.appended and denied.index == 0
        lock = byte_range_payload(0, 100, WRITE_LOCK)
        assert c0.cond_append(db, "brl", lock, "byte_range").appended
        overlapping = byte_range_payload(50, 10, WRITE_LOCK)
        assert not c2.cond_append(db, "brl", overlapping, "byte_range").appended
        beyond = byte_range_payload(100, 10, WRITE_LOCK)
        assert c2.cond_append(db, "brl", beyond, "byte_range").appended


def test_bad_requests_get_clear_errors(cluster: LocalCluster) -> None:
    db = unique()
    with cluster.client(1) as c:
        c.attach(db)
        with pytest.raises(CtdbError) as unknown:
            c.cond_append(db, "k", b"x", "no_such_condition")
        assert unknown.value.code == ErrorCode.NOT_SUPPORTED
        with pytest.raises(CtdbError) as bad_arg:
            c.cond_append(db, "k", b"x", "max_entries", "many")
        assert bad_arg.value.code == ErrorCode.INVALID
        with pytest.raises(CtdbError) as bad_payload:
            c.cond_append(db, "k", b"short", "share_mode")
        assert bad_payload.value.code == ErrorCode.INVALID
        c.store(db, "plain", b"not an entry list")
        with pytest.raises(CtdbError) as not_entries:
            c.cond_append(db, "plain", b"x", "always")
        assert not_entries.value.code == ErrorCode.INVALID
        with pytest.raises(CtdbError) as unknown_db:
            c.entries(unique("missing"), "k")
        assert unknown_db.value.code == ErrorCode.NOT_FOUND
        # Nobody listens in on the nodes' notices of who comes first.
        with pytest.raises(CtdbError) as reserved:
            c.register_srvid(ENTRY_HEAD_SRVID)
        assert reserved.value.code == ErrorCode.INVALID
        # The daemon serves on.
        assert c.cond_append(db, "k", b"x", "always").appended


@pytest.mark.parametrize("kind", ["volatile", "persistent"])
def test_a_disconnected_client_loses_its_entries(cluster: LocalCluster, kind: str) -> None:
    db = unique()
    with cluster.client(0) as keeper, cluster.client(1) as watcher:
        keeper.attach(db, kind)
        leaving = cluster.client(2)
        assert leaving.cond_append(db, "lock", b"mine", "empty").appended
        assert keeper.cond_append(db, "queue", b"k", "always").appended
        assert leaving.cond_append(db, "queue", b"l", "always").appended
        leaving.close()
        wait_for(
            "the departed client's lock entry to go",
            lambda: not watcher.entries(db, "lock").entries,
            30,
        )
        wait_for(
            "the departed client's queue entry to go",
            lambda: [e.payload for e in watcher.entries(db, "queue").entries] == [b"k"],
            30,
        )
        assert watcher.cond_append(db, "lock", b"next", "empty").appended
        # An administrator removes another client's entries by owner id.
        held = watcher.entries(db, "lock").entries[0]
        assert keeper.remove_entries(db, "lock", owner=held.owner) == 1
        assert not watcher.entries(db, "lock").entries


def test_a_killed_node_loses_its_entries_and_the_queue_moves_on(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    """On tcp the list lives at its dmaster (the key's lmaster: appends never
    migrate it), and a volatile record dies with its dmaster as in CTDB; so
    the key is one node 0 masters, and node 2 only holds entries."""
    cluster = cluster_factory()
    db = unique()
    key = homed_at(0)
    with cluster.client(0) as c0, cluster.client(1) as c1:
        c0.attach(db)
        queue_then_kill(cluster, db, key, 2, {0: c0, 1: c1})
        wait_for("node 2's entry to go", lambda: payloads(c0, db, key) == [b"0", b"1"], 30)
        assert payloads(c1, db, key) == [b"0", b"1"]


def test_a_persistent_list_outlives_any_node(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    """Each append to a persistent list is a commit every node made before its
    answer, so the list survives the kill -9 of the node a volatile list would
    die with (the key's home, which also holds an entry). Its clients' entries
    are purged, the next in line is told, and the node, restarted, holds the
    survivors' list."""
    cluster = cluster_factory()
    db = unique()
    key = homed_at(0)
    with cluster.client(1) as c1, cluster.client(2) as c2:
        c1.attach(db, "persistent")
        queue_then_kill(cluster, db, key, 0, {1: c1, 2: c2})
        wait_for("node 0's entry to be purged", lambda: payloads(c1, db, key) == [b"1", b"2"], 30)
        assert payloads(c2, db, key) == [b"1", b"2"]
        notice = c1.wait_message(timeout=30)
        assert notice.srvid == ENTRY_HEAD_SRVID
        assert msgpack.unpackb(notice.data) == [db_id(db), key]
        cluster.start_node(0)
        cluster.wait_healthy(timeout=60)
        with cluster.client(0) as c0:
            # Its recovery must not have left node 2 out (and purged its
            # entry) for having met node 1 first.
            wait_for("node 0's copy", lambda: payloads(c0, db, key) == [b"1", b"2"], 30)
            assert c0.entries(db, key) == c1.entries(db, key) == c2.entries(db, key)


@pytest.mark.parametrize("kind", ["volatile", "persistent"])
def test_a_client_that_leaves_mid_append_leaves_no_entry(cluster: LocalCluster, kind: str) -> None:
    """Clients that hang up right after sending appends (to lists whose home is
    another node) leave nothing behind: the daemon removes their entries only
    once those appends have ended, so none lands after its removal."""
    db = unique()
    with cluster.client(0) as watcher:
        watcher.attach(db, kind)
        keys = [f"L{i}".encode() for i in range(6)]
        for n in range(4):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(cluster.socket(1))
            requests = [protocol.encode_request(1, "hello", {"version": protocol.VERSION})]
            requests += [
                protocol.encode_request(
                    2 + i,
                    "cond_append",
                    {"db": db, "key": k, "condition": "always", "payload": b"%d" % n},
                )
                for i, k in enumerate(keys)
            ]
            sock.sendall(b"".join(requests))
            # Hang up once the first append is answered: the others are on their way.
            decoder, answered = protocol.ReplyDecoder(1 << 20), 0
            while answered < 2:
                answered += len(decoder.feed(sock.recv(1 << 16)))
            sock.close()

        def lists() -> list[list[bytes]]:
            return [[e.payload for e in watcher.entries(db, k).entries] for k in keys]

        wait_for("the departed clients' entries to go", lambda: not any(lists()), 30)


def test_a_restarted_cluster_keeps_no_entry_of_its_past_clients(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    """A persistent list outlives the whole cluster; the entries of clients of
    the daemons' previous runs do not (they carry the run in their owner id)."""
    cluster = cluster_factory()
    db = unique()
    c = cluster.client(1)
    c.attach(db, "persistent")
    assert c.cond_append(db, "L", b"old", "always").appended
    for pnn in range(3):
        cluster.kill_node(pnn)  # before the client's hang-up could remove anything
    c.close()
    for pnn in range(3):
        cluster.start_node(pnn)
    cluster.wait_healthy(timeout=60)
    with cluster.client(2) as fresh:
        assert fresh.cond_append(db, "L", b"new", "always").appended
        wait_for("the old entry to go", lambda: payloads(fresh, db, b"L") == [b"new"], 30)


def test_a_node_left_out_fences_its_entry_owners(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    """Node 2 hangs; the others carry on without it and purge its client's entry,
    so the lock that entry held passes on. When node 2 continues, its client must
    not go on believing it holds the lock: its connection is closed with the
    reason, and its next request says so."""
    cluster = cluster_factory(tunables={"KeepaliveInterval": 0.2, "KeepaliveLimit": 3})
    db = unique()
    with cluster.client(0) as c0:
        c0.attach(db, "persistent")
        c2 = cluster.client(2)
        try:
            assert c2.cond_append(db, "L", b"2", "empty").appended  # c2 holds lock L
            cluster.signal_node(2, signal.SIGSTOP)
            try:

                def took_over() -> bool:
                    try:
                        return c0.cond_append(db, "L", b"0", "empty").appended
                    except CtdbError as exc:
                        if exc.code in (ErrorCode.RETRY, ErrorCode.TIMEOUT, ErrorCode.NO_QUORUM):
                            return False
                        raise

                wait_for("node 0's client to take lock L", took_over, 30)
            finally:
                cluster.signal_node(2, signal.SIGCONT)

            def refused() -> CtdbError | None:
                try:
                    payloads(c2, db, b"L")
                except CtdbError as exc:
                    return exc
                return None

            fenced = wait_for("node 2 to fence c2", refused, 30)
            assert fenced.code == ErrorCode.DISCONNECTED
            assert "out of the cluster" in fenced.message
        finally:
            c2.close()
        cluster.wait_healthy(timeout=60)
        with cluster.client(2) as again:
            assert payloads(again, db, b"L") == [b"0"]
