"""Profiles behind the foundation benchmark's misses.

* CPU per fetch in the daemon and in the client (from /proc, no profiler);
* the 1-client fetch path: py-spy samples node 0's daemon while one
  `ctdb.client.Client` fetches a local record in a loop; cProfile on the
  client side of the same loop;
* `ctdbtool pnn` start-up: `python -X importtime`, heaviest imports (each
  module's minimum over several runs, since the host may be busy).

    .venv/bin/python -m bench.profile_foundation [--seconds 8] [--native] [--out DIR]

Needs py-spy (`.venv/bin/pip install py-spy`) and ptrace rights (root).
Writes profile.txt (and py-spy's raw stacks) into --out.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.foundation import (
    DB,
    N_CLIENTS,
    N_KEYS,
    REPO,
    concurrent,
    keys,
    say,
    value,
)
from tools.cluster import free_port

DEFAULT_OUT = REPO / "bench" / "results" / "foundation"


def _frame(f: str) -> str:
    """'func (path/file.py:123)' -> 'func (file.py)'."""
    if " (" not in f:
        return f
    name, where = f.split(" (", 1)
    return f"{name} ({where.split(':')[0].rsplit('/', 1)[-1].rstrip(')')})"


def fold(raw: Path, top: int = 25) -> str:
    """Self and inclusive sample shares from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        total += count
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    out = [f"{total} samples", "", "self %  function (file)"]
    out += [f"{100 * c / total:6.1f}  {f}" for f, c in own.most_common(top)]
    out += ["", "inclusive %  function (file)"]
    out += [f"{100 * c / total:6.1f}  {f}" for f, c in incl.most_common(top)]
    return "\n".join(out)


def importtime(cmd: list[str], env: dict[str, str], top: int = 25, runs: int = 7) -> str:
    best: dict[str, tuple[int, int]] = {}
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", *cmd],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        for line in proc.stderr.splitlines():
            if not line.startswith("import time:") or "cumulative" in line:
                continue
            parts = line[len("import time:") :].split("|")
            self_us, cum_us, name = int(parts[0]), int(parts[1]), parts[2].rstrip()
            old = best.get(name)
            best[name] = (
                (cum_us, self_us) if old is None else (min(old[0], cum_us), min(old[1], self_us))
            )
    rows = sorted(((c, s, n) for n, (c, s) in best.items()), reverse=True)
    total = sum(c for c, _, n in rows if not n.startswith("  "))
    out = [
        f"sum of top-level imports {total / 1e3:.1f} ms (cumulative, min of {runs} runs)",
        "",
        "cumul ms  self ms  module",
    ]
    out += [f"{c / 1e3:8.1f} {s / 1e3:8.1f}  {n}" for c, s, n in rows[:top]]
    return "\n".join(out)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_per_fetch(client: Any, daemon_pid: int, seconds: float) -> str:
    ks = keys()
    fetch = client.fetch
    d0, c0, t0 = cpu_seconds(daemon_pid), os.times(), time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < seconds:
        for i in range(500):
            fetch(DB, ks[i % N_KEYS])
        n += 500
    elapsed = time.perf_counter() - t0
    d1, c1 = cpu_seconds(daemon_pid), os.times()
    us = 1e6 / n
    return "\n".join(
        [
            f"{n} fetches in {elapsed:.2f} s = {n / elapsed:,.0f}/s, {elapsed * us:.1f} us each",
            f"daemon CPU per fetch: user {(d1[0] - d0[0]) * us:.1f} us, "
            f"system {(d1[1] - d0[1]) * us:.1f} us",
            f"client CPU per fetch: user {(c1.user - c0.user) * us:.1f} us, "
            f"system {(c1.system - c0.system) * us:.1f} us",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    from tools.cluster import LocalCluster

    parser = argparse.ArgumentParser(prog="python -m bench.profile_foundation")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--base", default="127.0.79")
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames)")
    ns = parser.parse_args(argv)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    ns.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="ctdb-bench-profile-"))
    addresses = [f"{ns.base}.{i + 1}" for i in range(3)]
    cluster = LocalCluster(
        workdir / "cluster", size=3, port=free_port(addresses), base=ns.base, log_level="WARNING"
    )
    report: list[str] = []
    try:
        cluster.up(timeout=60, progress=lambda m: say(f"  {m}"))
        ks, v = keys(), value()
        daemon = cluster.pids[0]
        with cluster.client(0) as c:
            c.attach(DB)
            for k in ks:
                c.store(DB, k, v)
            say("CPU accounting of 1-client fetches (no profiler)")
            report += [
                "# CPU per fetch, 1 client, no profiler",
                "",
                cpu_per_fetch(c, daemon, ns.seconds / 2),
                "",
            ]
            raw = ns.out / "profile_daemon_fetch.raw.txt"
            say(f"py-spy on node 0 (pid {daemon}) for {ns.seconds} s of 1-client fetches")
            cmd = [pyspy, "record", "-p", str(daemon), "-d", str(int(ns.seconds))]
            cmd += ["-r", "1000", "-f", "raw", "-o", str(raw)]
            cmd += ["--native"] if ns.native else []
            spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            prof = cProfile.Profile()
            n = 0
            deadline = time.perf_counter() + ns.seconds - 2
            prof.enable()
            while time.perf_counter() < deadline:
                for i in range(500):
                    c.fetch(DB, ks[i % N_KEYS])
                n += 500
            prof.disable()
            spy.wait(60)
            say(f"  {n} fetches under the profilers")
        report += ["# Daemon, 1-client fetch path (py-spy, node 0)", "", fold(raw), ""]
        raw8 = ns.out / "profile_daemon_fetch_8c.raw.txt"
        say(f"py-spy on node 0 during {N_CLIENTS}-client fetches")
        cmd = [pyspy, "record", "-p", str(daemon), "-d", str(int(ns.seconds)), "-r", "1000"]
        cmd += ["-f", "raw", "-o", str(raw8), *(["--native"] if ns.native else [])]
        d0 = cpu_seconds(daemon)
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r8 = concurrent([("fetch_8c", "fetch", cluster.socket(0))], ns.seconds - 3, 1)
        spy.wait(60)
        d1 = cpu_seconds(daemon)
        report += [
            f"# Daemon, {N_CLIENTS}-client fetches (py-spy, node 0)",
            "",
            f"{r8['fetch_8c']['best']:,.0f} fetches/s; daemon CPU over the whole capture: "
            f"user {d1[0] - d0[0]:.2f} s, system {d1[1] - d0[1]:.2f} s",
            "",
            fold(raw8),
            "",
        ]
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
        report += ["# Client side of the same loop (cProfile, tottime)", "", buf.getvalue()]
        env = dict(os.environ, CTDB_SOCKET=cluster.socket(0), PYTHONPATH=str(REPO))
        tool = str(Path(sys.executable).parent / "ctdbtool")
        report += [
            "# ctdbtool pnn start-up (-X importtime)",
            "",
            importtime([tool, "pnn"], env),
            "",
            "# python -c pass (-X importtime)",
            "",
            importtime(["-c", "pass"], env, top=8),
            "",
        ]
    finally:
        cluster.down()
        shutil.rmtree(workdir, ignore_errors=True)
    text = "\n".join(report)
    (ns.out / "profile.txt").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
