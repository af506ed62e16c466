"""Garbage on the client socket: a clear error for the sender, nobody else notices."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from ctdb.client import Client
from ctdb.common.config import tunable_default
from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.protocol import client as protocol
from tests.conftest import unique
from tools.cluster import LocalCluster
from transport.framing import FrameReader, frame


class Raw:
    """A client socket that sends whatever bytes a test wants."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        # Decoded by hand, not by ReplyDecoder: these tests check the wire itself.
        self.frames = FrameReader(64 * 1024 * 1024)
        self.replies: list[protocol.Reply] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, reqid: int, op: str, **args: Any) -> None:
        self.send(protocol.encode_request(reqid, op, args))

    def hello(self) -> None:
        self.request(1, "hello", version=protocol.VERSION)
        reply = self.reply()
        assert reply.reqid == 1 and reply.code == 0, reply

    def reply(self) -> protocol.Reply:
        while not self.replies:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("daemon closed the connection")
            for raw in self.frames.feed(data):
                reqid, code, result = msgpack.unpackb(raw, raw=False)
                self.replies.append(protocol.Reply(reqid, code, result))
        return self.replies.pop(0)

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True if the daemon hangs up (after any replies already read)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    return True
        except (TimeoutError, OSError):
            return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(cluster: LocalCluster) -> Iterator[Raw]:
    r = Raw(cluster.socket(0))
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(scope="module")
def witness_db(cluster: LocalCluster) -> str:
    name = unique("witness")
    with cluster.client(0) as c:
        c.attach(name)
        c.store(name, b"k", b"v")
    return name


@pytest.fixture
def witness(cluster: LocalCluster, witness_db: str) -> Iterator[Client]:
    """A well-behaved client on the same node, connected before the garbage arrives."""
    c = cluster.client(0, timeout=10)
    try:
        yield c
        # after the test: it is still served, and so is a brand-new client
        assert c.call("pnn") == 0
        assert c.fetch(witness_db, b"k") == b"v"
        with cluster.client(0, timeout=10) as fresh:
            assert fresh.fetch(witness_db, b"k") == b"v"
    finally:
        c.close()


def assert_error(reply: protocol.Reply, reqid: int, code: ErrorCode, *words: str) -> None:
    assert reply.reqid == reqid, reply
    assert reply.code == code, f"expected {code.name}, got {reply}"
    assert isinstance(reply.result, str) and reply.result
    for w in words:
        assert w in reply.result, f"{w!r} not in {reply.result!r}"


# -- frames the stream cannot recover from -------------------------------------------------


def test_frame_that_is_not_msgpack(raw: Raw, witness: Client) -> None:
    raw.hello()
    raw.send(frame(b"\xc1\xc1\xc1"))
    assert_error(raw.reply(), 0, ErrorCode.PROTOCOL, "msgpack")
    assert raw.closed_by_peer()


def test_non_array_request(raw: Raw, witness: Client) -> None:
    raw.hello()
    raw.send(frame(msgpack.packb({"reqid": 2, "op": "pnn"})))
    assert_error(raw.reply(), 0, ErrorCode.PROTOCOL, "array")
    assert raw.closed_by_peer()


def test_non_array_request_as_the_first_frame(raw: Raw, witness: Client) -> None:
    raw.send(frame(msgpack.packb("hello")))
    assert_error(raw.reply(), 0, ErrorCode.PROTOCOL)
    assert raw.closed_by_peer()


def test_frame_above_max_frame_size(raw: Raw, witness: Client) -> None:
    raw.hello()
    limit = int(tunable_default("MaxFrameSize"))
    raw.send(struct.pack("!I", limit + 1))  # the header alone is enough to refuse it
    assert_error(raw.reply(), 0, ErrorCode.TOO_BIG, str(limit + 1))
    assert raw.closed_by_peer()


def test_client_library_reports_a_fatal_error_as_ctdb_error(cluster: LocalCluster) -> None:
    """A frame above MaxFrameSize makes the daemon answer [0, TOO_BIG, text] and hang up;
    the library must raise that as a CtdbError, not crash on it as if it were an event."""
    with cluster.client(0, timeout=10) as admin:
        admin.call("setvar", name="MaxFrameSize", value=1024)
        try:
            small = cluster.client(0, timeout=10)  # its connection gets the 1 KiB limit
        finally:
            admin.call("setvar", name="MaxFrameSize", value=int(tunable_default("MaxFrameSize")))
    with small:
        with pytest.raises(CtdbError) as info:
            small.call("pnn", padding=b"x" * 2000)
        assert info.value.code == ErrorCode.TOO_BIG
        assert "1024" in info.value.message


def test_good_requests_before_the_bad_frame_are_answered(raw: Raw, witness: Client) -> None:
    raw.hello()
    raw.send(protocol.encode_request(2, "listnodes", {}) + frame(b"\xc1"))
    first = raw.reply()
    assert (first.reqid, first.code) == (2, 0)
    assert [n["pnn"] for n in first.result] == [0, 1, 2]
    assert_error(raw.reply(), 0, ErrorCode.PROTOCOL)
    assert raw.closed_by_peer()


# -- requests that are answered, on a connection that stays usable ----------------------------


def test_malformed_request_with_readable_reqid_is_answered(raw: Raw, witness: Client) -> None:
    raw.hello()
    raw.send(frame(msgpack.packb([5, 17, {}])))
    assert_error(raw.reply(), 5, ErrorCode.PROTOCOL, "operation")
    raw.send(frame(msgpack.packb([6, "pnn", ["not", "a", "map"]])))
    assert_error(raw.reply(), 6, ErrorCode.PROTOCOL, "map")
    raw.request(7, "pnn")
    reply = raw.reply()
    assert (reply.reqid, reply.code, reply.result) == (7, 0, 0)


def test_requests_before_hello_are_refused(raw: Raw, witness: Client) -> None:
    raw.request(3, "pnn")
    assert_error(raw.reply(), 3, ErrorCode.PROTOCOL, "hello")
    raw.request(4, "status")
    assert_error(raw.reply(), 4, ErrorCode.PROTOCOL, "hello")
    raw.request(5, "hello", version=protocol.VERSION + 1)
    assert_error(raw.reply(), 5, ErrorCode.PROTOCOL, "protocol")
    raw.request(6, "pnn")  # a refused hello greets nobody
    assert_error(raw.reply(), 6, ErrorCode.PROTOCOL, "hello")
    raw.request(7, "hello", version=protocol.VERSION)
    assert raw.reply().code == 0
    raw.request(8, "pnn")
    assert raw.reply().result == 0


@pytest.mark.parametrize("key", [5, "text-key", None, [b"k"]], ids=repr)
def test_wrong_typed_key(witness: Client, witness_db: str, key: object) -> None:
    with pytest.raises(CtdbError) as info:
        witness.call("fetch", db=witness_db, key=key)
    assert info.value.code == ErrorCode.INVALID
    assert "key" in info.value.message


def test_wrong_typed_value_and_db(witness: Client, witness_db: str) -> None:
    with pytest.raises(CtdbError) as info:
        witness.call("store", db=witness_db, key=b"k", value="text")
    assert info.value.code == ErrorCode.INVALID and "value" in info.value.message
    with pytest.raises(CtdbError) as info:
        witness.call("fetch", db=3.5, key=b"k")
    assert info.value.code == ErrorCode.INVALID and "db" in info.value.message
    with pytest.raises(CtdbError) as info:
        witness.call("fetch", db=witness_db, key=b"")
    assert info.value.code == ErrorCode.INVALID
    assert witness.fetch(witness_db, b"k") == b"v"  # the store did not happen


def test_unknown_op(witness: Client) -> None:
    with pytest.raises(CtdbError) as info:
        witness.call("frobnicate", x=1)
    assert info.value.code == ErrorCode.NOT_SUPPORTED
    assert "frobnicate" in info.value.message


def test_unknown_database(witness: Client) -> None:
    name = unique("nosuch")
    for op, extra in [("fetch", {}), ("store", {"value": b"v"}), ("fetch_lock", {})]:
        with pytest.raises(CtdbError) as info:
            witness.call(op, db=name, key=b"k", **extra)
        assert info.value.code == ErrorCode.NOT_FOUND, op
        assert name in info.value.message
    with pytest.raises(CtdbError) as info:
        witness.call("traverse", db=name)
    assert info.value.code == ErrorCode.NOT_FOUND


def test_oversized_key_and_value(witness: Client, witness_db: str) -> None:
    max_key = int(tunable_default("MaxKeySize"))
    max_value = int(tunable_default("MaxValueSize"))
    with pytest.raises(CtdbError) as info:
        witness.store(witness_db, b"k" * (max_key + 1), b"v")
    assert info.value.code == ErrorCode.TOO_BIG and "MaxKeySize" in info.value.message
    with pytest.raises(CtdbError) as info:
        witness.fetch(witness_db, b"k" * (max_key + 1))
    assert info.value.code == ErrorCode.TOO_BIG
    with pytest.raises(CtdbError) as info:
        witness.store(witness_db, b"big", b"v" * (max_value + 1))
    assert info.value.code == ErrorCode.TOO_BIG and "MaxValueSize" in info.value.message
    assert witness.fetch(witness_db, b"big") is None
    # exactly at the limits is fine
    witness.store(witness_db, b"K" * max_key, b"x")
    assert witness.fetch(witness_db, b"K" * max_key) == b"x"


# -- clients that go away ------------------------------------------------------------------------


def test_half_a_frame_then_disconnect(cluster: LocalCluster, witness: Client) -> None:
    data = protocol.encode_request(1, "hello", {"version": protocol.VERSION})
    r = Raw(cluster.socket(0))
    r.send(data[: len(data) // 2])
    r.close()
    # one that stalls half-way and stays connected does not block anyone either
    stalled = Raw(cluster.socket(0))
    try:
        stalled.hello()
        stalled.send(protocol.encode_request(2, "pnn", {})[:6])
        assert witness.call("pnn") == 0
        # and it is answered once the rest arrives
        stalled.send(protocol.encode_request(2, "pnn", {})[6:])
        assert stalled.reply().result == 0
    finally:
        stalled.close()


def test_disconnect_while_holding_a_fetch_lock(cluster: LocalCluster) -> None:
    db = unique("lock")
    with cluster.client(0) as c:
        c.attach(db)
        c.store(db, b"rec", b"initial")
    holder = cluster.client(1)
    assert holder.fetch_lock(db, b"rec") == b"initial"

    got: dict[str, Any] = {}

    def remote_waiter() -> None:
        try:
            with cluster.client(2, timeout=30) as c:
                got["value"] = c.fetch_lock(db, b"rec")
                got["at"] = time.monotonic()
                c.store_unlock(db, b"rec", b"from node 2")
        except BaseException as exc:  # noqa: BLE001 - checked below
            got["error"] = exc

    t = threading.Thread(target=remote_waiter, daemon=True)
    t.start()
    time.sleep(0.5)
    assert "value" not in got and "error" not in got, "lock was not held"
    closed_at = time.monotonic()
    holder.close()  # vanishes without unlocking
    t.join(15)
    assert not t.is_alive()
    assert "error" not in got, got.get("error")
    assert got["value"] == b"initial"
    assert got["at"] - closed_at < 5.0  # released at disconnect, not by a timeout

    # and a client on the holder's own node gets it too
    with cluster.client(1, timeout=15) as c:
        assert c.fetch_lock(db, b"rec") == b"from node 2"
        c.store_unlock(db, b"rec", b"from node 1")
    with cluster.client(0) as c:
        assert c.fetch(db, b"rec") == b"from node 1"


def test_disconnect_while_holding_a_lock_same_node(cluster: LocalCluster) -> None:
    db = unique("lock")
    with cluster.client(0) as c:
        c.attach(db)
    holder = cluster.client(0)
    holder.fetch_lock(db, b"r")
    holder.close()
    with cluster.client(0, timeout=5) as c:
        assert c.fetch_lock(db, b"r") is None
        c.store_unlock(db, b"r", b"mine")
        assert c.fetch(db, b"r") == b"mine"


def test_store_unlock_without_the_lock(witness: Client, witness_db: str) -> None:
    with pytest.raises(CtdbError) as info:
        witness.store_unlock(witness_db, b"k", b"x")
    assert info.value.code == ErrorCode.NOT_LOCKED
    with pytest.raises(CtdbError) as info:
        witness.unlock(witness_db, b"k")
    assert info.value.code == ErrorCode.NOT_LOCKED


def test_disconnect_while_waiting_for_a_lock_leaves_no_ghost_in_the_queue(
    cluster: LocalCluster,
) -> None:
    """A client that vanishes while its fetch_lock waits must not hold up the next one."""
    db = unique("lock")
    with cluster.client(0) as c:
        c.attach(db)
    holder = cluster.client(0)
    holder.fetch_lock(db, b"r")
    ghost = Raw(cluster.socket(1))
    ghost.hello()
    ghost.request(2, "fetch_lock", db=db, key=b"r")  # waits: node 0's client holds it
    time.sleep(0.3)
    ghost.close()  # gone with its request in flight
    time.sleep(0.3)
    holder.store_unlock(db, b"r", b"released")
    holder.close()
    started = time.monotonic()
    with cluster.client(2, timeout=30) as c:
        assert c.fetch_lock(db, b"r") == b"released"
        c.unlock(db, b"r")
    assert time.monotonic() - started < 5.0  # not after a timeout
