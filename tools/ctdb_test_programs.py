"""CTDB's own test programs (Samba 4.17, unmodified), run against any CTDB-protocol daemon.

`tools/build_ctdb_tests.sh` builds them from the Debian source of the
installed `ctdb` package into a cache outside the checkout; this finds them
and runs one on every node of a cluster at once, as Samba's test suite does
(each instance gets the node count and its node's socket; they wait for
each other, run for the time limit and print their rate), so the same code
measures Samba's ctdbd and pyctdb.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PROGRAMS = ("message_ring", "fetch_ring", "fetch_loop_key", "transaction_loop")
#: "Ring[1]: 1441.80 msgs/sec (+ve=3607 -ve=3603)", "Fetch[0]: 812.3 msgs/sec"
_RATE = re.compile(r"^(\w+)\[(\d+)\]: ([\d.]+) msgs/sec", re.M)


def directory() -> Path:
    return Path(os.environ.get("PYCTDB_CACHE", "/var/cache/pyctdb")) / "ctdb-tests"


def program(name: str) -> Path | None:
    """The built program, or None if `tools/build_ctdb_tests.sh` has not built it."""
    path = directory() / name
    return path if os.access(path, os.X_OK) else None


@dataclass
class Run:
    """One program run on every node: exit codes, outputs, and each node's rate."""

    returncodes: list[int]
    outputs: list[str]
    #: The time limit passed before every instance had exited (those left were killed).
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return all(rc == 0 for rc in self.returncodes)

    @property
    def rates(self) -> list[float]:
        """Each node's rate as the program printed it (msgs/sec), in node order."""
        found: dict[int, float] = {}
        for out in self.outputs:
            for _, pnn, rate in _RATE.findall(out):
                found[int(pnn)] = float(rate)
        return [found[p] for p in sorted(found)]


def run_on_cluster(
    name: str, sockets: list[Path], seconds: int, *args: str, timeout: float = 120.0
) -> Run:
    """Run program `name` on every node at once (node i through `sockets[i]`).

    An instance still running `timeout` seconds after the start is killed
    (its output so far is kept, its return code is negative) and the run
    says `timed_out`, rather than raise."""
    path = program(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not built: run tools/build_ctdb_tests.sh")
    procs = [
        subprocess.Popen(
            [str(path), "-n", str(len(sockets)), "-t", str(seconds), "-s", str(sock), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for sock in sockets
    ]
    outputs, codes = [], []
    deadline = time.monotonic() + timeout
    timed_out = False
    try:
        for proc in procs:
            try:
                out, _ = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
                proc.kill()
                out, _ = proc.communicate()
            outputs.append(out)
            codes.append(proc.returncode)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return Run(codes, outputs, timed_out)
