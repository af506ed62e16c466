"""Admin input against real daemons: tunables, bans, restores and files on disk.

An admin's typo must get a clear error, not a cluster-wide outage:
`setvar KeepaliveInterval 0` used to make every node drop every peer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

from ctdb.client import Client
from ctdb.common.config import TUNABLES
from ctdb.common.errors import CtdbError, ErrorCode
from tests.conftest import ToolResult, run_ctdbd, unique
from tools.cluster import LocalCluster


def healthy_and_unchanged(c: LocalCluster) -> None:
    c.wait_healthy(30)
    for pnn in range(c.size):
        with c.client(pnn) as cl:
            for name, t in TUNABLES.items():
                assert cl.call("getvar", name=name) == t.default, name


# -- setvar ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KeepaliveInterval", "0"),
        ("KeepaliveInterval", "-1"),
        ("KeepaliveInterval", "nan"),
        ("KeepaliveInterval", "inf"),
        ("KeepaliveLimit", "1"),
        ("CallTimeout", "0"),
        ("RecoverTimeout", "1e9"),
        ("MaxKeySize", "0"),
        ("MaxKeySize", str(2**21)),
        ("MaxValueSize", str(2**40)),
        ("MaxFrameSize", "100"),
        ("WaitForQuorum", "2"),
        ("LocalReads", "-1"),
        ("MaxKeySize", "1.5"),
        ("CallTimeout", "soon"),
    ],
)
def test_setvar_out_of_range_is_refused_with_a_clear_error(
    cluster: LocalCluster, ctdbtool: Callable[..., ToolResult], name: str, value: str
) -> None:
    for node_args in ([], ["-n", "1"]):  # here, and forwarded to another node
        result = ctdbtool(*node_args, "setvar", "--", name, value, check=False)
        assert result.returncode == ErrorCode.INVALID, result
        assert name in result.stderr and len(result.stderr.splitlines()) == 1
        t = TUNABLES[name]
        assert f"between {t.lo:g} and {t.hi:g}" in result.stderr or "number" in result.stderr
    healthy_and_unchanged(cluster)


def test_setvar_keepalive_interval_zero_says_why(ctdbtool: Callable[..., ToolResult]) -> None:
    result = ctdbtool("setvar", "KeepaliveInterval", "0", check=False)
    assert result.stderr.strip().endswith(
        "tunable KeepaliveInterval must be between 0.05 and 3600, got '0'"
    ), result.stderr


def test_setvar_within_range_still_works(cluster: LocalCluster) -> None:
    with cluster.client(0) as cl:
        cl.call("setvar", name="CallTimeout", value="12.5", pnn=2)
        try:
            assert cl.call("getvar", name="CallTimeout", pnn=2) == 12.5
        finally:
            cl.call("setvar", name="CallTimeout", value=TUNABLES["CallTimeout"].default, pnn=2)


def test_a_config_file_with_an_out_of_range_tunable_does_not_start(tmp_path: Path) -> None:
    (tmp_path / "nodes").write_text("127.0.0.1\n")
    config = tmp_path / "ctdb.conf"
    config.write_text("[cluster]\naddress = 127.0.0.1\n[tunables]\nKeepaliveInterval = 0\n")
    proc = run_ctdbd(config)
    assert proc.returncode == 2
    assert "tunable KeepaliveInterval must be between 0.05 and 3600" in proc.stderr
    assert not (tmp_path / "run").exists()  # it never got as far as its socket


# -- ban ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", ["nan", "inf", "-inf", "-5", "0", "1e10"])
def test_ban_takes_finite_positive_seconds(
    cluster: LocalCluster, ctdbtool: Callable[..., ToolResult], seconds: str
) -> None:
    result = ctdbtool("-n", "2", "ban", "--", seconds, check=False)
    assert result.returncode == ErrorCode.INVALID, result
    assert "seconds" in result.stderr
    with cluster.client(0) as cl:
        assert cl.call("status")["nodes"][2]["state"] == "OK"


# -- restoredb ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "code", "words"),
    [
        ([[b"k", b"v"], [b"", b"v"]], ErrorCode.INVALID, "records[1][0]: must not be empty"),
        ([[b"k" * (64 * 1024 + 1), b"v"]], ErrorCode.TOO_BIG, "MaxKeySize (65536)"),
        ([[b"k", b"v" * (8 * 1024 * 1024 + 1)]], ErrorCode.TOO_BIG, "MaxValueSize (8388608)"),
        ([[b"k", "v"]], ErrorCode.INVALID, "records[0][1]: must be bytes"),
        ([[b"k"]], ErrorCode.INVALID, "records[0]: must be a list of 2 items"),
    ],
)
@pytest.mark.parametrize("kind", ["volatile", "persistent"])
def test_restoredb_checks_every_record_before_wiping_anything(
    cluster: LocalCluster, records: list[list[bytes]], code: ErrorCode, words: str, kind: str
) -> None:
    db = unique("restore")
    with Client(cluster.socket(0), timeout=60) as cl:
        cl.attach(db, kind)
        if kind == "volatile":
            cl.store(db, b"keep", b"me")
        else:
            cl.transact(db, {b"keep": b"me"})
        with pytest.raises(CtdbError) as info:
            cl.call("restoredb", db=db, records=records)
        assert info.value.code == code and words in info.value.message
        assert cl.traverse(db) == [(b"keep", b"me")]


def test_ctdbtool_restoredb_of_a_doctored_backup_fails_cleanly(
    cluster: LocalCluster, ctdbtool: Callable[..., ToolResult], tmp_path: Path
) -> None:
    db = unique("restore")
    with cluster.client(0) as cl:
        cl.attach(db)
        cl.store(db, b"keep", b"me")
    backup = tmp_path / "b.msgpack"
    ctdbtool("backupdb", db, str(backup))
    data = msgpack.unpackb(backup.read_bytes(), raw=False)
    data["records"].append([b"", b"empty key"])
    backup.write_bytes(msgpack.packb(data, use_bin_type=True))
    result = ctdbtool("restoredb", str(backup), check=False)
    assert result.returncode == ErrorCode.INVALID and "must not be empty" in result.stderr
    with cluster.client(1) as cl:
        assert cl.fetch(db, b"keep") == b"me"


# -- a corrupt persistent database file at start-up ---------------------------------------------


def test_a_node_with_a_corrupt_database_file_does_not_start_until_it_is_moved_away(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    c = cluster_factory()
    db = unique("pers")
    records = {f"k{i}".encode(): f"v{i}".encode() for i in range(200)}
    with c.client(0) as cl:
        cl.attach(db, "persistent")
        cl.transact(db, records)
    c.stop_node(2)
    path = c.node_dir(2) / "state" / "persistent" / f"{db}.2"
    data = path.read_bytes()
    # a disk that lost the end of the file, from the middle of its records on
    path.write_bytes(data[: data.index(b"k100") + 2])

    pid = c.start_node(2)
    assert _wait_exit(pid, 60), "the node started with a truncated database file"
    stderr = (c.node_dir(2) / "ctdbd.stderr").read_text()
    assert str(path) in stderr and "corrupt or truncated" in stderr, stderr[-2000:]
    del c.pids[2]
    c.wait_healthy(30, nodes=[0, 1])  # the others carry on

    # The operator moves the file away; the node starts and takes the cluster's copy.
    path.rename(path.with_suffix(".corrupt"))
    c.start_node(2)
    c.wait_healthy(60)
    with c.client(2) as cl:
        for key, value in records.items():
            assert cl.fetch(db, key) == value


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return True
        time.sleep(0.05)
    return False
