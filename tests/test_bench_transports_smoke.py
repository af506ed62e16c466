"""Smoke test of the transport benchmark: `--quick` runs every backend and
baseline end to end and reports a positive, finite number for every figure."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_bench

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="corosync CPG clients must be root"),
    pytest.mark.skipif(
        shutil.which("corosync") is None and not Path("/usr/sbin/corosync").exists(),
        reason="corosync is not installed",
    ),
]


def positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_transports_quick(tmp_path: Path) -> None:
    out = tmp_path / "transports"
    run_bench(["bench.transports", "--quick", "--out", str(out)], timeout=180)
    from bench.transports import BASELINE_OF, KINDS, SIZES

    results = json.loads((out / "results.json").read_text())
    assert results["sizes"] == SIZES
    for kind in KINDS:
        backend = results["backends"][kind]
        for size in SIZES:
            rtt = backend["rtt"][str(size)]
            tput = backend["tput"][str(size)]
            for key in ("p50_us", "p99_us"):
                assert positive(rtt[key]), (kind, size, key, rtt)
            assert rtt["p99_us"] >= rtt["p50_us"], (kind, size, rtt)
            for key in ("msg_per_s", "mb_per_s"):
                assert positive(tput[key]), (kind, size, key, tput)
    for kind, base in BASELINE_OF.items():
        rows = results["ratios"][f"{kind}/{base}"]
        for size in SIZES:
            for key in ("rtt_p50", "rtt_p99", "tput"):
                assert positive(rows[str(size)][key]), (kind, size, key)
    assert results["duration_s"] < 60, results["duration_s"]
    assert (out / "transports.png").stat().st_size > 10_000
    summary = (out / "summary.md").read_text()
    assert "| backend | size |" in summary and "tcp/raw" in summary and "vs/cpg" in summary
