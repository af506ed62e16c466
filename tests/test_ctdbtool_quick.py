"""`ctdbtool pnn`'s quick path (`tools/ctdbtool/quick.py`) without a cluster.

What it answers, what it leaves to the full tool, and that whatever a
daemon (or something else listening on the socket) answers, it either
prints a pnn it was given or steps aside. Against real daemons it runs in
`tests/test_ctdbtool.py` (`test_pnn`, `test_a_pnn_launch_loads_neither_click_nor_the_client`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest

from ctdb.common.errors import ErrorCode
from ctdb.protocol import client as protocol
from tests.conftest import PYTHON, REPO
from tools.ctdbtool import quick
from transport.framing import frame


def test_hello_is_the_client_protocols_first_request() -> None:
    assert quick.HELLO == protocol.encode_request(1, "hello", {"version": protocol.VERSION})


@pytest.mark.parametrize(
    ("argv", "path"),
    [
        (["pnn"], "/from/env.sock"),
        (["--socket", "/s.sock", "pnn"], "/s.sock"),
        (["-s", "/s.sock", "pnn"], "/s.sock"),
        (["--socket=/s.sock", "pnn"], "/s.sock"),
        (["--socket", "", "pnn"], "/from/env.sock"),
    ],
)
def test_the_command_lines_it_answers(
    argv: list[str], path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CTDB_SOCKET", "/from/env.sock")
    assert quick.pnn_socket(argv) == path


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["status"],
        ["-n", "1", "pnn"],
        ["--json", "pnn"],
        ["pnn", "--help"],
        ["--socket", "/s.sock", "pnn", "extra"],
        ["--socket"],
        ["-s/s.sock", "pnn"],
    ],
)
def test_every_other_command_line_goes_to_the_full_tool(argv: list[str]) -> None:
    assert quick.pnn_socket(argv) is None
    assert quick.answer(argv) is False


Reply = Callable[[socket.socket], object]


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Iterator[Callable[[Reply], str]]:
    """A Unix socket whose one connection is answered by `reply` (bad input for the quick path)."""
    servers: list[tuple[socket.socket, threading.Thread]] = []

    def start(reply: Reply) -> str:
        path = str(tmp_path / f"fake{len(servers)}.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(1)
        server.settimeout(10)  # a test that never connects must not leave the thread behind

        def serve() -> None:
            try:
                conn, _ = server.accept()
            except OSError:  # timed out, or closed by the fixture
                return
            with conn:
                conn.recv(4096)
                reply(conn)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        servers.append((server, thread))
        return path

    yield start
    for server, thread in servers:
        server.close()
        thread.join(timeout=5)


def _reply(obj: object) -> Reply:
    return lambda conn: conn.sendall(frame(msgpack.packb(obj, use_bin_type=True)))


def test_a_well_formed_answer_is_read_in_pieces(
    fake_daemon: Callable[[Reply], str],
) -> None:
    data = frame(msgpack.packb([1, 0, {"version": 1, "pnn": 7}], use_bin_type=True))

    def trickle(conn: socket.socket) -> None:
        for i in range(len(data)):
            conn.sendall(data[i : i + 1])

    assert quick.ask_pnn(fake_daemon(trickle)) == 7


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(_reply([1, int(ErrorCode.PROTOCOL), "unsupported version"]), id="refused"),
        pytest.param(_reply([2, 0, {"pnn": 1}]), id="another-request-id"),
        pytest.param(_reply([1, 0, {"pnn": "1"}]), id="pnn-not-an-int"),
        pytest.param(_reply([1, 0, {}]), id="no-pnn"),
        pytest.param(_reply({"pnn": 1}), id="not-a-reply"),
        pytest.param(lambda conn: conn.sendall(frame(b"\xc1")), id="not-msgpack"),
        pytest.param(lambda conn: conn.sendall(b"\xff\xff\xff\xff"), id="frame-too-large"),
        pytest.param(lambda conn: conn.sendall(b"\x00\x00"), id="closed-mid-frame"),
        pytest.param(lambda conn: None, id="closed-at-once"),
    ],
)
def test_an_unexpected_answer_leaves_the_command_to_the_full_tool(
    reply: Reply, fake_daemon: Callable[[Reply], str]
) -> None:
    assert quick.ask_pnn(fake_daemon(reply)) is None


def test_a_daemon_that_does_not_answer_is_left_after_the_reply_wait(
    fake_daemon: Callable[[Reply], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    answered = threading.Event()
    monkeypatch.setattr(quick, "REPLY_WAIT", 0.2)
    path = fake_daemon(lambda conn: answered.wait(10))
    try:
        assert quick.ask_pnn(path) is None
    finally:
        answered.set()


def test_without_a_daemon_the_full_tool_reports_the_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-daemon.sock")
    assert quick.answer(["--socket", missing, "pnn"]) is False
    result = subprocess.run(
        [PYTHON, "-m", "tools.ctdbtool", "--socket", missing, "pnn"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == ErrorCode.DISCONNECTED, result
    assert result.stdout == ""
    assert result.stderr.startswith("ctdbtool: DISCONNECTED: cannot connect to ctdbd at ")


def test_a_reader_that_left_gets_exit_status_1_and_no_traceback(
    fake_daemon: Callable[[Reply], str],
) -> None:
    """As click does for every other command (`ctdbtool pnn | true` in a script)."""
    path = fake_daemon(_reply([1, 0, {"version": 1, "pnn": 3}]))
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [PYTHON, "-m", "tools.ctdbtool", "--socket", path, "pnn"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (1, "")
