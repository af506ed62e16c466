"""Smoke test of the recovery benchmark: `--quick` runs and reports every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(300)


def _positive(where: str, value: Any) -> None:
    assert isinstance(value, int | float) and value > 0, f"{where} = {value!r}"


def test_quick_run_writes_every_metric(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.recovery", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[recovery" in proc.stderr  # progress goes to stderr
    assert (out / "recovery.png").stat().st_size > 1000
    summary = (out / "summary.md").read_text()
    assert "## Targets" in summary and "raw tdb" in summary
    r = json.loads((out / "results.json").read_text())

    for name in ("default", "tuned"):
        d = r["detection"][name]
        for how in ("kill9", "hang"):
            for stat in ("median", "min", "max"):
                _positive(f"detection.{name}.{how}.{stat}", d[how][stat])
    # The keepalive timeout is what the tunables change: 1 s x 5 vs 0.1 s x 3.
    assert r["detection"]["default"]["hang"]["median"] > r["detection"]["tuned"]["hang"]["median"]
    for section, fields in (
        ("kill_to_served", ("served", "normal")),
        ("forced", ("wall", "daemon")),
    ):
        for f in fields:
            _positive(f"{section}.{f}.median", r[section][f]["median"])
    assert [e["records"] for e in r["sizes"]["volatile"]] == [1000, 10000]
    assert [e["records"] for e in r["sizes"]["persistent"]] == [1000]
    for kind, entries in r["sizes"].items():
        for e in entries:
            assert e["completed"], e
            for f in ("wall", "daemon", "load_s", "baseline_copy", "baseline_recovery_io"):
                _positive(f"sizes.{kind}[{e['records']}].{f}", e[f])
    names = [t["name"] for t in r["targets"]]
    assert len(names) == 4
    for t in r["targets"]:
        if t["target_s"] is not None:
            _positive(t["name"], t["measured_s"])
            assert t["met"] in (True, False)
