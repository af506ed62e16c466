"""Smoke test of `python -m tools.r1` (Dake's R1 scenario) on both transports."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO


def our_processes(directory: str) -> list[int]:
    """PIDs whose command line names `directory` (the tool's cluster lives there)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if directory.encode() in cmdline:
            found.append(int(proc.name))
    return found


@pytest.mark.parametrize(
    ("transport", "options"),
    [("tcp", []), ("tcp", ["--spare-home"]), ("tcp", ["--persistent"]), ("vs", [])],
)
def test_r1_hands_the_lock_over_after_a_kill(transport: str, options: list[str]) -> None:
    done = subprocess.run(
        [PYTHON, "-m", "tools.r1", "--transport", transport, "--json", *options],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    queues = summary["queues"]
    assert sorted(queues) == ["A", "B", "C"]
    order = queues["A"]
    assert sorted(order) == ["A", "B", "C"]
    assert queues["B"] == order and queues["C"] == order, queues
    assert summary["winner"] == order[0]
    assert summary["next"] in order[1:] and summary["last"] in order[1:]
    assert summary["next"] != summary["last"]
    assert summary["decided_ms"] > 0 and summary["handover_after_kill_ms"] > 0
    assert summary["handover_after_release_ms"] > 0
    if transport == "vs" or options:
        # vs and --persistent: every node holds the list; tcp --spare-home: the
        # holder is not its home.
        assert summary["queue_lost"] is False
    else:
        assert summary["queue_lost"] == (summary["winner"] == summary["home"])
    if not summary["queue_lost"]:
        assert summary["next_in_line"] is True and summary["next"] == order[1]
    story = done.stderr
    assert f"kill -9 node {order[0]} (the holder)" in story
    directory = re.search(r" in (/\S+)", story)
    assert directory is not None
    assert not Path(directory.group(1)).exists()
    assert our_processes(directory.group(1)) == []


def test_r1_cleans_up_when_interrupted() -> None:
    proc = subprocess.Popen(
        [PYTHON, "-m", "tools.r1", "--transport", "tcp"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env=dict(os.environ),
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        directory = re.search(r" in (/\S+)", first)
        assert directory is not None, first
        deadline = time.monotonic() + 60
        while not our_processes(directory.group(1) + "/node"):
            assert time.monotonic() < deadline, "no daemon started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 130, out
        assert "interrupted; the cluster is stopped" in out
        assert our_processes(directory.group(1)) == []
        assert not Path(directory.group(1)).exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
