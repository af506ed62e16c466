"""Smoke test of the foundation benchmark: `--quick` runs end to end and
reports a positive number for every metric (nothing skipped)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tests.conftest import run_bench


def test_foundation_quick(tmp_path: Path) -> None:
    out = tmp_path / "foundation"
    run_bench(["bench.foundation", "--quick", "--out", str(out), "--base", "127.0.78"], timeout=120)
    results = json.loads((out / "results.json").read_text())
    from bench.foundation import BASELINE_LABELS, METRICS

    assert {m.name for m in METRICS} <= set(results["metrics"])
    for m in METRICS:
        entry = results["metrics"][m.name]
        value = entry["value"]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, m.name
        if m.target is not None:
            assert isinstance(entry["met"], bool), m.name
    for name in BASELINE_LABELS:
        base = results["baselines"][name]
        assert math.isfinite(base) and base > 0, name
    for name in ("tdb_fetch_per_s", "tdb_store_per_s"):
        assert results["baselines"][name] > 0
    assert results["details"]["ring"]["counter_consistent"], results["details"]["ring"]
    assert results["command"] and results["machine"]["cpus"]
    assert (out / "foundation.png").stat().st_size > 10_000
    assert "| metric |" in (out / "summary.md").read_text()
