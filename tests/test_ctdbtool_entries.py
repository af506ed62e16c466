"""`ctdbtool append`, `entries` and `unappend` as an admin runs them, on both transports.

An appended entry lives as long as the tool's connection, so a holding
`append` is a background process here; every one a test starts is stopped
by the `holders` fixture, also when the test fails.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import pytest

from ctdb.common.errors import ErrorCode
from tests.conftest import PYTHON, REPO, ToolResult, unique
from tools.cluster import LocalCluster

Tool = Callable[..., ToolResult]
CONFLICT = 3


def _lines(pipe: IO[str]) -> queue.Queue[str]:
    """The pipe's lines as they come (a thread reads it; the queue never blocks the tool)."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in pipe:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return lines


@dataclass
class Holder:
    """A running `ctdbtool append` that holds its entry."""

    proc: subprocess.Popen[str]
    stdout: queue.Queue[str]
    stderr: queue.Queue[str]

    def line(self, stream: str = "stdout", timeout: float = 30.0) -> str:
        try:
            return str(getattr(self, stream).get(timeout=timeout))
        except queue.Empty:
            raise AssertionError(f"no {stream} line from the holder in {timeout}s") from None

    def wait_for_line(self, text: str, stream: str = "stderr", timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = getattr(self, stream).get(timeout=deadline - time.monotonic())
            except queue.Empty:
                break
            if text in line:
                return
            seen.append(line)
        raise AssertionError(f"{text!r} not in the holder's {stream}: {seen}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture
def holders(cluster: LocalCluster) -> Iterator[Callable[..., Holder]]:
    started: list[Holder] = []

    def start(*args: str, node: int = 0) -> Holder:
        proc = subprocess.Popen(
            [PYTHON, "-m", "tools.ctdbtool", "--socket", cluster.socket(node), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=dict(os.environ),
        )
        assert proc.stdout is not None and proc.stderr is not None
        holder = Holder(proc, _lines(proc.stdout), _lines(proc.stderr))
        started.append(holder)
        return holder

    try:
        yield start
    finally:
        for holder in started:
            if holder.proc.poll() is None:
                holder.proc.kill()
                holder.proc.wait(30)


def entries_json(ctdbtool: Tool, db: str, key: str, node: int = 0) -> Any:
    return ctdbtool("--json", "entries", db, key, node=node).json()


def wait_entries(
    ctdbtool: Tool, db: str, key: str, want: Callable[[list[Any]], bool], node: int = 0
) -> list[Any]:
    deadline = time.monotonic() + 30
    while True:
        found: list[Any] = entries_json(ctdbtool, db, key, node)["entries"]
        if want(found):
            return found
        assert time.monotonic() < deadline, f"entries of {key} stayed {found}"
        time.sleep(0.1)


def test_a_held_lock_conflicts_until_its_holder_stops(
    ctdbtool: Tool, holders: Callable[..., Holder]
) -> None:
    db = unique()
    ctdbtool("attach", db)
    holder = holders("append", db, "R1", "me", "--if", "empty", node=0)
    first = holder.line()
    assert first.startswith("appended at index 0, owner 0:"), first
    client = int(first.split("owner 0:")[1].split(",")[0])
    holder.wait_for_line("holding the entry")

    view = entries_json(ctdbtool, db, "R1", node=2)
    assert set(view) == {"key", "rsn", "entries"}
    assert view["key"] == "R1" and view["rsn"] > 0
    assert view["entries"] == [{"pnn": 0, "client": client, "payload": "me"}]
    table = ctdbtool("entries", db, "R1", node=1).stdout
    assert f"    0    0 {client:>20}  me" in table

    denied = ctdbtool("append", db, "R1", "you", "--if", "empty", "--once", node=1, check=False)
    assert denied.returncode == CONFLICT
    assert denied.stdout.startswith("conflict: the record is not empty (blocked by entry 0)")
    assert f"{client:>20}  me" in denied.stdout
    as_json = ctdbtool(
        "--json", "append", db, "R1", "you", "--if", "empty", "--once", node=2, check=False
    )
    assert as_json.returncode == CONFLICT
    answer = as_json.json()
    assert answer["appended"] is False and answer["index"] == 0 and answer["key"] == "R1"
    assert answer["owner"]["pnn"] == 2 and answer["reason"] == "the record is not empty"
    assert answer["entries"] == view["entries"]

    assert holder.stop() == 0
    holder.wait_for_line("released")
    wait_entries(ctdbtool, db, "R1", lambda found: found == [], node=1)
    taken = ctdbtool("--json", "append", db, "R1", "you", "--if", "empty", "--once", node=1)
    assert taken.json()["appended"] is True and taken.json()["index"] == 0


def test_once_appends_and_the_entry_goes_with_the_tool(ctdbtool: Tool) -> None:
    db = unique()
    ctdbtool("attach", db)
    out = ctdbtool("--json", "append", db, "k", "x", "--once", node=1).json()
    assert out["appended"] is True and out["index"] == 0 and out["owner"]["pnn"] == 1
    assert set(out) == {"key", "appended", "rsn", "owner", "index"}
    wait_entries(ctdbtool, db, "k", lambda found: found == [])


def test_a_queued_entry_is_told_when_it_becomes_first(
    ctdbtool: Tool, holders: Callable[..., Holder]
) -> None:
    db = unique()
    ctdbtool("attach", db)
    head = holders("append", db, "Q", "a", node=0)
    assert head.line().startswith("appended at index 0")
    waiter = holders("append", db, "Q", "b", node=1)
    assert waiter.line().startswith("appended at index 1")
    waiter.wait_for_line("holding the entry (index 1")
    assert [e["payload"] for e in entries_json(ctdbtool, db, "Q")["entries"]] == ["a", "b"]
    assert head.stop() == 0
    waiter.wait_for_line("the entry is now the first of the list")
    assert [e["payload"] for e in entries_json(ctdbtool, db, "Q", node=2)["entries"]] == ["b"]
    assert waiter.stop() == 0


def test_share_mode_and_byte_range_payloads(ctdbtool: Tool, holders: Callable[..., Holder]) -> None:
    db = unique()
    ctdbtool("attach", db)
    reader = holders("append", db, "file", "--share-mode", "r,r", node=0)
    assert reader.line().startswith("appended at index 0")
    # Binary payloads show as hex: access FILE_READ_DATA, share FILE_SHARE_READ, <II.
    view = entries_json(ctdbtool, db, "file", node=1)
    assert [e["payload"] for e in view["entries"]] == ["0100000001000000"]
    second = ctdbtool("append", db, "file", "--share-mode", "r,rw", "--once", node=1)
    assert second.stdout.startswith("appended at index 1")
    writer = ctdbtool("append", db, "file", "--share-mode", "w,r", "--once", node=2, check=False)
    assert writer.returncode == CONFLICT and "sharing violation" in writer.stdout
    numeric = ctdbtool("append", db, "file", "--share-mode", "0x2,1", "--once", check=False)
    assert numeric.returncode == CONFLICT

    lock = holders("append", db, "brl", "--byte-range", "0,100,write", node=2)
    assert lock.line().startswith("appended at index 0")
    overlap = ctdbtool("append", db, "brl", "--byte-range", "50,10,read", "--once", check=False)
    assert overlap.returncode == CONFLICT and "lock not granted" in overlap.stdout
    beyond = ctdbtool("append", db, "brl", "--byte-range", "100,10,write", "--once", node=1)
    assert beyond.stdout.startswith("appended at index 1")
    # A condition with an argument, after a built payload: ARG follows KEY.
    capped = ctdbtool(
        "append",
        db,
        "brl",
        "2",
        "--byte-range",
        "200,1,read",
        "--if",
        "max_entries",
        "--once",
        check=False,
    )
    assert capped.returncode == 0, capped.stderr
    full = ctdbtool(
        "append",
        db,
        "brl",
        "1",
        "--byte-range",
        "300,1,read",
        "--if",
        "max_entries",
        "--once",
        check=False,
    )
    assert full.returncode == CONFLICT and "the limit is 1" in full.stdout


def test_hex_payloads_and_unappend_by_owner(ctdbtool: Tool, holders: Callable[..., Holder]) -> None:
    db = unique()
    ctdbtool("attach", db)
    holder = holders("append", db, "k", "00ff", "--hex", node=1)
    assert holder.line().startswith("appended at index 0, owner 1:")
    other = holders("append", db, "k", "text", node=1)
    assert other.line().startswith("appended at index 1, owner 1:")
    found = entries_json(ctdbtool, db, "k")["entries"]
    assert [e["payload"] for e in found] == ["00ff", "text"]
    owner = f"{found[0]['pnn']}:{found[0]['client']}"

    miss = ctdbtool("--json", "unappend", db, "k", "--owner", owner, "--match", "text", node=2)
    assert miss.json() == {"key": "k", "removed": 0}
    gone = ctdbtool("unappend", db, "k", "--owner", owner, "--match", "00ff", "--hex", node=2)
    assert gone.stdout.strip() == "removed 1 entries"
    assert [e["payload"] for e in entries_json(ctdbtool, db, "k")["entries"]] == ["text"]
    assert holder.proc.poll() is None  # the tool holds on; its entry was taken away

    no_owner = ctdbtool("unappend", db, "k", check=False)
    assert no_owner.returncode == 2 and "--owner" in no_owner.stderr
    bad_owner = ctdbtool("unappend", db, "k", "--owner", "me", check=False)
    assert bad_owner.returncode == 2 and "PNN:CLIENT" in bad_owner.stderr


def test_bad_append_requests_get_one_line_errors(ctdbtool: Tool) -> None:
    db = unique()
    ctdbtool("attach", db)
    cases: list[tuple[list[str], int, str]] = [
        (["k", "x", "--if", "no_such"], ErrorCode.NOT_SUPPORTED, "unknown condition"),
        (["k", "x", "--if", "max_entries"], ErrorCode.INVALID, "max_entries"),
        (["k", "0g", "--hex"], ErrorCode.INVALID, "is not hex"),
        (["k", "--share-mode", "q,r"], ErrorCode.INVALID, "letters are"),
        (["k", "--share-mode", "r"], ErrorCode.INVALID, "2 comma-separated fields"),
        (["k", "--byte-range", "0,1,both"], ErrorCode.INVALID, "not read or write"),
        (["k", "x", "--byte-range", "0,1,read"], ErrorCode.INVALID, "no PAYLOAD"),
        (["k"], ErrorCode.INVALID, "missing PAYLOAD"),
        (["k", "x", "--if", "share_mode"], ErrorCode.INVALID, "not a share_mode entry"),
    ]
    for args, code, text in cases:
        out = ctdbtool("append", db, *args, "--once", check=False)
        assert out.returncode == code, (args, out)
        assert out.stderr.startswith("ctdbtool: ") and text in out.stderr, (args, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    missing = ctdbtool("entries", unique("missing"), "k", check=False)
    assert missing.returncode == ErrorCode.NOT_FOUND
