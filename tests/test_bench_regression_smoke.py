"""The foundation-against-a-revision benchmark: its statistics on made-up
rounds, then `--quick --rounds 1` against HEAD itself, end to end (both
checkouts' bench.foundation run, every output written, the worktree gone).
Over vs it differs only in `bench.checkouts.shared_corosync`, which the
cpu_per_op smoke test runs."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest

from bench.regression import compare, cpu_hogs, main, sign_flip_p, speed_ratio, verdict
from tests.conftest import base_checkouts, run_bench


def test_speed_is_head_over_base_for_rates_and_base_over_head_for_times() -> None:
    assert speed_ratio("ring_increments_per_s", 100.0, 150.0) == 1.5
    assert speed_ratio("ring_p50_s", 0.002, 0.001) == 2.0


def test_every_round_one_way_is_as_significant_as_the_rounds_allow() -> None:
    assert sign_flip_p([1.2] * 6) == pytest.approx(2 / 64)
    assert sign_flip_p([0.8] * 6) == pytest.approx(2 / 64)
    assert sign_flip_p([1.0] * 5) == 1.0  # no difference at all
    assert sign_flip_p([1.25, 0.8, 1.25, 0.8]) == 1.0  # as much each way


def test_many_rounds_are_sampled_and_come_out_alike() -> None:
    sampled = sign_flip_p([1.1] * 13)  # past EXACT_ROUNDS: seeded draws (exact: 2 / 2**13)
    assert sampled < 0.005 and sampled == sign_flip_p([1.1] * 13)
    assert sign_flip_p([1.25, 0.8] * 7) > 0.5


def test_verdicts_follow_the_tested_direction() -> None:
    assert verdict(0.9, 0.01) == "regression"
    assert verdict(1.1, 0.01) == "faster"
    assert verdict(0.5, 0.2) == "within noise"


def test_compare_pairs_rounds_and_skips_what_a_run_could_not_measure() -> None:
    base = [{"ring_increments_per_s": 100.0, "ring_p50_s": 0.002, "gone_per_s": 0.0}] * 6
    head = [{"ring_increments_per_s": 80.0, "ring_p50_s": 0.001, "gone_per_s": 5.0}] * 6
    c = compare({"base": base, "head": head})
    assert set(c) == {"ring_increments_per_s", "ring_p50_s"}
    ring, p50 = c["ring_increments_per_s"], c["ring_p50_s"]
    assert ring["kind"] == "rate" and ring["verdict"] == "regression"
    assert ring["speed_ratio_median"] == pytest.approx(0.8)
    assert ring["speed_ratio_geomean"] == pytest.approx(0.8)
    assert p50["kind"] == "time" and p50["verdict"] == "faster"
    assert p50["speed_ratios"] == [2.0] * 6


@pytest.mark.timeout(200)
def test_regression_quick_against_head(tmp_path: Path, bench_tmpdir: Path) -> None:
    out = tmp_path / "regression"
    proc = run_bench(
        ["bench.regression", "--quick", "--rounds", "1", "--base", "HEAD"]
        + ["--transport", "tcp", "--address", "127.0.81", "--out", str(out)],
        timeout=190,
        tmpdir=bench_tmpdir,
    )
    assert base_checkouts(bench_tmpdir) == ([], [])  # the base worktree is gone, and its dir
    assert "round 1/1 base" in proc.stderr and "round 1/1 head" in proc.stderr
    r = json.loads((out / "results.json").read_text())
    assert r["base"] == r["head"] and r["rounds"] == 1 and r["transport"] == "tcp"
    assert r["busy_cpus"] == 0
    c = r["comparison"]
    for figure in ("ring_increments_per_s", "store_8c_per_s", "fetch_1c_per_s", "ring_p50_s"):
        e = c[figure]
        assert len(e["speed_ratios"]) == 1 and math.isfinite(e["speed_ratio_median"]), figure
        assert e["p"] == 1.0 and e["verdict"] == "within noise", figure  # one round tells nothing
    assert (out / "regression.png").stat().st_size > 0
    assert "| ring_increments_per_s |" in (out / "summary.md").read_text()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_busy_cpus_spin_while_the_rounds_run_and_are_gone_after() -> None:
    with cpu_hogs(1) as pids:
        (pid,) = pids
        deadline = time.monotonic() + 30
        while _cpu_seconds(pid) < 0.2:  # it spins: its CPU time grows (bounded wait)
            assert time.monotonic() < deadline, "the hog used no CPU"
            time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped


def test_busy_is_bounded_by_the_cpus(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--busy", str((os.cpu_count() or 1) + 1)])
    assert exited.value.code == 2
    assert "--busy must be between 0 and" in capsys.readouterr().err
