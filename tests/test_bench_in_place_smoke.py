"""Smoke test of the in-place benchmark: its quick mode (1-second windows, one
round, 1 and 3 clients) against Samba's ctdbd and pyctdb over tcp writes every
output, reports every row of every configuration (measured, or failing with
its error), the Python in-place rows measure positive rates, and every
counter of the pyctdb Python rows ends at the increments acknowledged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_bench
from tools import ctdb_test_programs
from tools.samba_ctdbd import available as samba_available

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        ctdb_test_programs.program("fetch_loop_key") is None or not samba_available(),
        reason="needs CTDB's test programs (tools/build_ctdb_tests.sh) and Samba's ctdbd",
    ),
]


def test_in_place_quick(tmp_path: Path) -> None:
    from bench.in_place import BASELINE, IN_PLACE, ROWS, VIA_DAEMON, WORKLOADS

    out = tmp_path / "in_place"
    proc = run_bench(["bench.in_place", "--quick", "--out", str(out)], timeout=240)
    assert "[in_place" in proc.stderr  # progress goes to stderr
    assert (out / "in_place.png").stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert "| workload | clients |" in summary and "Command: `" in summary
    r = json.loads((out / "results.json").read_text())
    assert r["quick"] is True and r["rounds"] == 1 and r["clients"] == [1, 3]

    configs = {(w, n) for w in WORKLOADS for n in (1, 3)}
    rows = {(x["workload"], x["clients"], x["row"]): x for x in r["summary"]}
    assert set(rows) == {(w, n, row) for w, n in configs for row in ROWS}
    assert set(r["runs"]) == {f"{w}/{n}" for w, n in configs}
    for config, per_row in r["runs"].items():
        workload, clients = config.split("/")[0], int(config.split("/")[1])
        for row in ROWS:
            (entry,) = per_row[row]
            where = (workload, clients, row)
            assert (entry["rate"] is None) == bool(entry.get("error")), (where, entry)
            if row in (IN_PLACE, VIA_DAEMON):
                assert entry["rate"] is not None, (where, entry.get("error"))
                assert len(entry["per_client"]) == clients, where
                assert sum(entry["per_client"]) == entry["acquisitions"] > 0, where
                assert entry["counter_ok"] is True, (where, entry["counters"])
                assert 0 < entry["p50_us"] <= entry["p99_us"], where
                assert entry["migrations_per_acquisition"] is not None, where
                if row == IN_PLACE:
                    assert entry["rate"] > 0, where
    for (workload, clients, row), x in rows.items():
        if row == BASELINE and x["rate"] is not None:
            assert x["ratio_to_samba"] == 1.0
        if row in (IN_PLACE, VIA_DAEMON):
            assert x["counter_ok"] is True, (workload, clients, row)
