"""Smoke test of the CTDB test-programs benchmark: one short round against Samba's
ctdbd and both pyctdb transports writes every output (rates only asserted non-zero:
message_ring measures nothing in runs shorter than about two seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools import ctdb_test_programs
from tools.samba_ctdbd import available as samba_available

REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        ctdb_test_programs.program("message_ring") is None or not samba_available(),
        reason="needs CTDB's test programs (tools/build_ctdb_tests.sh) and Samba's ctdbd",
    ),
]


def test_samba_programs_one_round(tmp_path: Path) -> None:
    out = tmp_path / "samba_programs"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.samba_programs", "--seconds", "3", "--rounds", "1"]
        + ["--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    ring = r["summary"]["message_ring"]
    assert ring["samba ctdbd"]["ratio_to_samba"] == 1.0
    for daemon in ("pyctdb tcp", "pyctdb vs"):
        assert ring[daemon]["median_rate"] > 0, r["runs"][daemon]["message_ring"]
    assert (out / "samba_programs.png").stat().st_size > 0
    assert "message_ring" in (out / "summary.md").read_text()
