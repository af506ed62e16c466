"""The cluster key: `ctdbtool keygen`, loading it, and real nodes that do or do not share it."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest

from ctdb.common import config
from ctdb.common.errors import CtdbError, ErrorCode
from ctdb.common.keyfile import CLUSTER_KEY_SIZE, create_key, load_key
from tests.conftest import (
    random_base,
    random_port,
    run_ctdbd,
    run_ctdbtool,
    start_cluster,
    unique,
)
from tools.cluster import LocalCluster
from transport import tcp
from transport.base import TransportOptions

WAIT = 30.0


# -- key files -------------------------------------------------------------------------------


def test_keygen_writes_a_private_random_key(tmp_path: Path) -> None:
    first, second = tmp_path / "a.key", tmp_path / "b.key"
    result = run_ctdbtool(None, "keygen", str(first))
    assert str(first) in result.stdout
    run_ctdbtool(None, "keygen", str(second))
    assert first.stat().st_mode & 0o777 == 0o600
    assert len(first.read_bytes()) == CLUSTER_KEY_SIZE
    assert first.read_bytes() != second.read_bytes()
    assert load_key(first) == first.read_bytes()


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    create_key(path)
    key = path.read_bytes()
    result = run_ctdbtool(None, "keygen", str(path), check=False)
    assert result.returncode == ErrorCode.EXISTS
    assert "not overwriting" in result.stderr and result.stderr.count("\n") == 1
    assert path.read_bytes() == key


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "cluster.key"
    create_key(path)
    path.chmod(mode)
    with pytest.raises(CtdbError) as err:
        load_key(path)
    assert err.value.code == ErrorCode.INVALID
    assert f"readable by group or others (mode {mode:04o})" in err.value.message
    assert f"chmod 600 {path}" in err.value.message


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"short", "holds 5 bytes"), (b"", "holds 0 bytes"), (b"x" * 5000, "holds 4097 bytes")],
)
def test_a_key_of_the_wrong_size_is_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "cluster.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(CtdbError, match=message):
        load_key(path)


def test_a_missing_key_or_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CtdbError) as err:
        load_key(tmp_path / "nope")
    assert err.value.code == ErrorCode.NOT_FOUND
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(CtdbError, match="not a regular file"):
        load_key(directory)


def write_config(tmp_path: Path, extra: str) -> Path:
    (tmp_path / "nodes").write_text("127.0.0.1\n127.0.0.2\n")
    conf = tmp_path / "ctdb.conf"
    conf.write_text(f"[cluster]\nnodes = nodes\naddress = 127.0.0.1\n{extra}\n")
    return conf


def test_config_reads_the_key_and_frame_option(tmp_path: Path) -> None:
    create_key(tmp_path / "cluster.key")
    cfg = config.load(write_config(tmp_path, "key file = cluster.key\nauthenticate frames = yes"))
    assert cfg.key_file == tmp_path / "cluster.key"
    assert cfg.cluster_key == (tmp_path / "cluster.key").read_bytes()
    assert cfg.authenticate_frames is True
    plain = config.load(write_config(tmp_path, ""))
    assert plain.cluster_key is None and plain.authenticate_frames is False


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("authenticate frames = yes", "authenticate frames needs a key file"),
        ("key file = cluster.key\nauthenticate frames = perhaps", "Not a boolean"),
    ],
)
def test_config_errors(tmp_path: Path, extra: str, message: str) -> None:
    create_key(tmp_path / "cluster.key")
    with pytest.raises(CtdbError, match=message):
        config.load(write_config(tmp_path, extra))


def test_ctdbd_refuses_to_start_with_a_world_readable_key(tmp_path: Path) -> None:
    key = tmp_path / "cluster.key"
    create_key(key)
    key.chmod(0o644)
    conf = write_config(tmp_path, "key file = cluster.key")
    proc = run_ctdbd(conf)
    assert proc.returncode == 2
    assert f"key file {key} is readable by group or others (mode 0644)" in proc.stderr


# -- refusal log --------------------------------------------------------------------------------


def test_refusal_log_is_rate_limited_and_counts_what_it_skipped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    monkeypatch.setattr(tcp.time, "monotonic", lambda: now[0])
    t = tcp.TcpTransport(0, ["127.0.0.1", "127.0.0.2"], TransportOptions())
    caplog.set_level(logging.WARNING, logger="transport.tcp")
    for _ in range(5):
        t._refused("127.0.0.9", "address is not another node's in the nodes file")
        now[0] += 1
    t._refused("127.0.0.8", "other")
    now[0] += tcp.REFUSAL_LOG_INTERVAL
    t._refused("127.0.0.9", "again")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "refused node connection with 127.0.0.9: address is not another node's in the nodes file",
        "refused node connection with 127.0.0.8: other",
        "refused node connection with 127.0.0.9: again (4 more since the last report)",
    ]
    for i in range(3 * tcp.REFUSAL_MEMORY):
        t._refused(f"10.0.{i // 256}.{i % 256}", "flood")
    assert len(t._refusals) <= tcp.REFUSAL_MEMORY


# -- real nodes ------------------------------------------------------------------------------------


def log_since(c: LocalCluster, pnn: int, offset: int) -> str:
    return c.log_path(pnn).read_text()[offset:]


def wait_for_log(c: LocalCluster, pnn: int, offset: int, pattern: str) -> str:
    """Until node `pnn` logs a line matching `pattern` after `offset`; returns the line."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        match = re.search(f".*{pattern}.*", log_since(c, pnn, offset))
        if match:
            return match.group(0)
        time.sleep(0.05)
    tail = log_since(c, pnn, offset)[-2000:]
    raise AssertionError(f"node {pnn} never logged {pattern!r}; its log since:\n{tail}")


def restart_with(c: LocalCluster, pnn: int, edit: dict[str, str | None]) -> int:
    """Restart node `pnn` with `[cluster]` options replaced (None: removed); returns log offset."""
    c.stop_node(pnn)
    lines = []
    for line in c.config_path(pnn).read_text().splitlines():
        name = line.split("=", 1)[0].strip()
        if name in edit:
            continue
        lines.append(line)
        if line == "[cluster]":
            lines += [f"{k} = {v}" for k, v in edit.items() if v is not None]
    c.config_path(pnn).write_text("\n".join(lines) + "\n")
    offset = c.log_path(pnn).stat().st_size
    c.start_node(pnn)
    return offset


def test_nodes_must_share_the_key_and_the_frame_setting(tmp_path: Path) -> None:
    """A cluster with frame MACs serves; node 2 with another key, no key, or frame MACs off
    is refused (each side says why) while 0 and 1 keep serving; with the right settings it
    joins again."""
    c = start_cluster(tmp_path, "tcp", authenticate_frames=True)
    try:
        assert "every frame MAC'd" in c.log_path(0).read_text()
        db = unique("keyed")
        with c.client(0) as a, c.client(2) as b:
            a.attach(db)
            a.store(db, b"k", b"through MAC'd frames")
            assert b.fetch(db, b"k") == b"through MAC'd frames"

        wrong = tmp_path / "wrong.key"
        create_key(wrong)
        offset = restart_with(c, 2, {"key file": str(wrong)})
        wait_for_log(c, 2, offset, "node 0 could not prove the cluster key")
        c.wait_healthy(WAIT, nodes=[0, 1])

        offset = restart_with(c, 2, {"key file": None, "authenticate frames": None})
        wait_for_log(c, 2, offset, "the peer has a cluster key and this node has none")
        assert "node links are UNAUTHENTICATED" in log_since(c, 2, offset)
        c.wait_healthy(WAIT, nodes=[0, 1])

        key_line = f"{c.key_path}"
        offset = restart_with(c, 2, {"key file": key_line, "authenticate frames": "no"})
        wait_for_log(c, 2, offset, "authenticate frames differs: peer yes, this node no")
        c.wait_healthy(WAIT, nodes=[0, 1])

        for pnn in (0, 1):
            assert re.search(r"refused node connection with \S+: ", c.log_path(pnn).read_text())
        with c.client(0) as a:
            a.store(db, b"k", b"while node 2 was locked out")

        restart_with(c, 2, {"key file": key_line, "authenticate frames": "yes"})
        c.wait_healthy(WAIT)
        with c.client(2) as b:
            assert b.fetch(db, b"k") == b"while node 2 was locked out"
    finally:
        c.down()


def test_a_cluster_without_a_key_runs_and_says_so(tmp_path: Path) -> None:
    c = start_cluster(tmp_path, "tcp", size=2, cluster_key=False)
    try:
        assert not c.key_path.exists()
        for pnn in range(2):
            text = c.log_path(pnn).read_text()
            assert "WARNING: node links are UNAUTHENTICATED" in text
            assert "key file = " not in c.config_path(pnn).read_text()
        db = unique("keyless")
        with c.client(0) as a, c.client(1) as b:
            a.attach(db)
            a.store(db, b"k", b"v")
            assert b.fetch(db, b"k") == b"v"
    finally:
        c.down()


def test_cluster_up_creates_a_key_and_uses_it(tmp_path: Path) -> None:
    """`ctdbtool cluster up`: one private key per cluster, every node configured with it."""
    directory = tmp_path / "cl"
    result = run_ctdbtool(
        None,
        "cluster",
        "up",
        "--nodes",
        "2",
        "--dir",
        str(directory),
        "--base",
        random_base(),
        "--port",
        str(random_port()),
        timeout=120,
        check=False,
    )
    try:
        assert result.returncode == 0, result.stderr
        key = directory / "cluster.key"
        assert f"cluster key: {key}" in result.stdout
        assert key.stat().st_mode & 0o777 == 0o600
        for pnn in range(2):
            assert f"key file = {key}" in (directory / f"node{pnn}" / "ctdb.conf").read_text()
            log = (directory / f"node{pnn}" / "ctdbd.log").read_text()
            assert f"node links authenticated with the cluster key in {key}" in log
    finally:
        run_ctdbtool(None, "cluster", "down", "--dir", str(directory), check=False)
