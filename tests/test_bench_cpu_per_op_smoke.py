"""Smoke test of the CPU-per-operation benchmark: `--quick` against HEAD itself
(a revision every clone has) runs both checkouts and writes every output with
sane numbers; no timing is asserted, and the base's worktree is removed (and
on vs the corosync the benchmark started for both checkouts)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from tests.conftest import base_checkouts, run_bench
from transport.corosync import pid_alive

pytestmark = pytest.mark.timeout(240)


@pytest.mark.parametrize("transport", ["tcp", "vs"])
def test_cpu_per_op_quick_against_head(transport: str, tmp_path: Path, bench_tmpdir: Path) -> None:
    out = tmp_path / "cpu"
    proc = run_bench(
        ["bench.cpu_per_op", "--quick", "--rounds", "1"]
        + ["--transport", transport, "--base", "HEAD", "--port", "39840", "--out", str(out)],
        timeout=230,
        tmpdir=bench_tmpdir,
    )
    assert base_checkouts(bench_tmpdir) == ([], [])  # the base worktree is gone, and its dir
    started = re.search(r"started a corosync for both checkouts \(pid (\d+)\)", proc.stderr)
    if started is not None:
        assert not pid_alive(int(started.group(1)))  # stopped again
    if transport == "vs":  # one corosync for both checkouts, either way
        assert started is not None or "using the corosync already running" in proc.stderr
    r = json.loads((out / "results.json").read_text())
    assert r["transport"] == transport
    assert r["base"] == r["head"] and r["rounds"] == 1
    assert set(r["figures"]) == {"ping", "ring", "store", "fetch", "crowd"}
    for work, e in r["figures"].items():
        for side in ("base", "head"):
            cpu = e[side]["cpu_us_per_op"]
            assert math.isfinite(cpu) and 0 < cpu < 100_000, (work, side, cpu)
            assert e[side]["per_s"] > 0, (work, side)
            coro = e[side]["corosync_cpu_us_per_op"]
            if started is not None:  # what the corosync it started spent per operation
                assert coro is not None and coro > 0 and e[side]["corosync_sleeps_per_op"] > 0
            elif transport == "tcp":
                assert coro is None
        ratio = e["head"]["cpu_us_per_op"] / e["base"]["cpu_us_per_op"]
        assert e["cpu_ratio_head_to_base"] == ratio, work
    assert (out / "cpu_per_op.png").stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert "| ring |" in summary
    if started is not None or transport == "tcp":
        assert ("corosync per operation" in summary) == (transport == "vs")
