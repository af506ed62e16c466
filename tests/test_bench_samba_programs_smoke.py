"""Smoke test of the CTDB test-programs benchmark: its quick mode (one round of
1-second runs, 2 s for the two programs whose rate needs them) of the four
programs against Samba's ctdbd and both pyctdb transports writes every
output, and every program on every daemon is either measured or reported as
failing with its error, never left out. Rates are only asserted non-zero
where the daemon serves what the program needs: message_ring everywhere, the
REQ_CALL programs on Samba's ctdbd and pyctdb over tcp (vs answers REQ_CALL
and TRANS3_COMMIT with -1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_bench
from tools import ctdb_test_programs
from tools.samba_ctdbd import available as samba_available

PROGRAMS = ("message_ring", "fetch_ring", "transaction_loop", "fetch_loop_key")
DAEMONS = ("samba ctdbd", "pyctdb tcp", "pyctdb vs")

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        ctdb_test_programs.program("message_ring") is None or not samba_available(),
        reason="needs CTDB's test programs (tools/build_ctdb_tests.sh) and Samba's ctdbd",
    ),
]


def test_samba_programs_quick(tmp_path: Path) -> None:
    out = tmp_path / "samba_programs"
    run_bench(["bench.samba_programs", "--quick", "--out", str(out)], timeout=280)
    r = json.loads((out / "results.json").read_text())
    assert list(r["summary"]) == list(PROGRAMS)
    for program in PROGRAMS:
        row = r["summary"][program]
        for daemon in DAEMONS:
            (entry,) = r["runs"][daemon][program]
            assert (entry["rate"] is None) == (entry["error"] is not None), entry
            assert row[daemon]["rounds_ok"] + row[daemon]["rounds_failed"] == 1
    ring = r["summary"]["message_ring"]
    assert ring["samba ctdbd"]["ratio_to_samba"] == 1.0
    for daemon in DAEMONS:
        assert ring[daemon]["median_rate"] > 0, r["runs"][daemon]["message_ring"]
    for program in ("fetch_ring", "transaction_loop", "fetch_loop_key"):
        assert r["summary"][program]["samba ctdbd"]["median_rate"] > 0, r["runs"]["samba ctdbd"]
    # pyctdb over tcp serves them all (its commits may all starve in a 1-second run: a
    # rate of 0 is a rate, a lost commit or a failed run is not)
    for program in ("fetch_ring", "transaction_loop", "fetch_loop_key"):
        assert r["summary"][program]["pyctdb tcp"]["median_rate"] is not None, r["runs"][
            "pyctdb tcp"
        ]
    assert r["summary"]["fetch_ring"]["pyctdb tcp"]["median_rate"] > 0
    assert (out / "samba_programs.png").stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert all(f"`{program}`" in summary for program in PROGRAMS)
