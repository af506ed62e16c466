"""Smoke test of the transport benchmark: `--quick` runs every backend and
baseline end to end and reports a positive, finite number for every figure."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

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
    proc = subprocess.run(
        [sys.executable, "-m", "bench.transports", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
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
