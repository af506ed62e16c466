"""CTDB's own test programs against Samba's ctdbd and pyctdb, in the same run.

The programs are Samba 4.17's, unmodified (`tools/build_ctdb_tests.sh`
builds them from the Debian source of the installed `ctdb`). Each runs on
every node of a 3-node cluster at once, as Samba's test suite runs them
(`tools/ctdb_test_programs.py`), against Samba's ctdbd started the way its
tests start it (`tools/samba_ctdbd.py`), then pyctdb over tcp, then pyctdb
over vs (the corosync `cluster up` starts: knet with crypto), `--rounds`
times in turn so that each sees the same machine load:

* `message_ring`: messages passed around the ring of nodes (srvid
  registrations, REQ_MESSAGE), messages/s per node;
* `fetch_ring`: the record migrates around the ring (REQ_CALL with chain
  locks on the shared TDB file); pyctdb does not serve REQ_CALL yet, so it
  is run and reported as failing rather than left out.

    .venv/bin/python -m bench.samba_programs [--seconds 5] [--rounds 3] [--out DIR]

Writes results.json, samba_programs.png and summary.md into --out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.foundation import free_port, load_warning, machine_info
from ctdb.common.config import CTDB_SOCKET_NAME
from tools import ctdb_test_programs
from tools.samba_ctdbd import SambaCluster
from tools.samba_ctdbd import available as samba_available

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "samba_programs"
NODES = 3
DAEMONS = ("samba ctdbd", "pyctdb tcp", "pyctdb vs")
#: program -> extra arguments
PROGRAMS: dict[str, tuple[str, ...]] = {
    "message_ring": (),
    "fetch_ring": ("-D", "fetch_ring.tdb", "-k", "ring-key"),
}


def say(msg: str) -> None:
    print(f"[samba_programs {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _pyctdb(workdir: Path, transport: str) -> Any:
    from tools.cluster import LocalCluster

    base = "127.0.151" if transport == "tcp" else "127.0.152"
    cluster = LocalCluster(
        workdir / f"pyctdb-{transport}",
        size=NODES,
        transport=transport,
        port=free_port([f"{base}.{i + 1}" for i in range(NODES)]),
        base=base,
        log_level="WARNING",
    )
    cluster.up(timeout=90)
    return cluster


def measure(seconds: int, rounds: int, workdir: Path) -> dict[str, dict[str, list[Any]]]:
    """daemon -> program -> one entry per round: the mean rate of the nodes, or None."""
    clusters: dict[str, Any] = {}
    try:
        say("starting Samba's ctdbd (3 nodes)")
        samba = SambaCluster.start(workdir / "samba", size=NODES)
        clusters["samba ctdbd"] = samba
        sockets = {"samba ctdbd": [samba.socket(p) for p in range(NODES)]}
        for transport in ("tcp", "vs"):
            say(f"starting pyctdb over {transport} (3 nodes)")
            c = _pyctdb(workdir, transport)
            clusters[f"pyctdb {transport}"] = c
            doors = [c.node_dir(p) / CTDB_SOCKET_NAME for p in range(NODES)]
            sockets[f"pyctdb {transport}"] = doors
        results: dict[str, dict[str, list[Any]]] = {d: {p: [] for p in PROGRAMS} for d in DAEMONS}
        for r in range(rounds):
            for program, args in PROGRAMS.items():
                for daemon in DAEMONS:
                    run = ctdb_test_programs.run_on_cluster(
                        program, sockets[daemon], seconds, *args, timeout=seconds + 90
                    )
                    rate = statistics.mean(run.rates) if run.ok and run.rates else None
                    say(f"round {r + 1}: {program} on {daemon}: {_rate(rate)}")
                    entry: dict[str, Any] = {"rate": rate, "per_node": run.rates}
                    entry["returncodes"] = run.returncodes
                    if rate is None:
                        entry["output"] = run.outputs[0][-400:]
                    results[daemon][program].append(entry)
        return results
    finally:
        for cluster in clusters.values():
            cluster.down()


def _median(entries: list[dict[str, Any]]) -> float | None:
    rates = [e["rate"] for e in entries if e["rate"] is not None]
    return statistics.median(rates) if len(rates) == len(entries) and rates else None


def run(ns: argparse.Namespace) -> dict[str, Any]:
    if not samba_available():
        raise SystemExit("Samba's ctdbd and ctdb are needed as the baseline (Debian: ctdb)")
    missing = [p for p in PROGRAMS if ctdb_test_programs.program(p) is None]
    if missing:
        raise SystemExit(f"not built: {', '.join(missing)}; run tools/build_ctdb_tests.sh")
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    load_at_start = list(os.getloadavg())
    workdir = Path(tempfile.mkdtemp(prefix="ctdb-bench-samba-programs-"))
    try:
        measured = measure(ns.seconds, ns.rounds, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary: dict[str, dict[str, Any]] = {}
    for program in PROGRAMS:
        baseline = _median(measured["samba ctdbd"][program])
        summary[program] = {}
        for daemon in DAEMONS:
            median = _median(measured[daemon][program])
            ratio = None if median is None or not baseline else median / baseline
            summary[program][daemon] = {"median_rate": median, "ratio_to_samba": ratio}
    return {
        "started": started,
        "command": " ".join(["python -m bench.samba_programs", *sys.argv[1:]]),
        "seconds": ns.seconds,
        "rounds": ns.rounds,
        "nodes": NODES,
        "machine": {**machine_info(), "loadavg_at_start": load_at_start},
        "runs": measured,
        "summary": summary,
    }


def _rate(value: float | None) -> str:
    return "failed" if value is None else f"{value:,.0f}/s"


def write_summary(path: Path, r: dict[str, Any]) -> None:
    lines = [
        "# CTDB's test programs: Samba's ctdbd against pyctdb",
        "",
        f"{r['started']} - {r['nodes']} nodes - {r['seconds']} s per run, {r['rounds']} rounds "
        f"- {r['machine']['cpus']} CPUs ({r['machine']['cpu']}), Python {r['machine']['python']}",
        "",
        f"Command: `{r['command']}`",
        "",
        *load_warning(r["machine"]),
        "Median over the rounds of the mean rate of the nodes (each program prints its own).",
        "",
        "| program | " + " | ".join(DAEMONS) + " |",
        "|---|" + "---|" * len(DAEMONS),
    ]
    for program, row in r["summary"].items():
        cells = []
        for daemon in DAEMONS:
            e = row[daemon]
            ratio = "" if e["ratio_to_samba"] is None else f" ({e['ratio_to_samba']:.2f}x)"
            cells.append(_rate(e["median_rate"]) + ratio)
        lines.append(f"| `{program}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        "`fetch_ring` needs REQ_CALL (record migration for clients that lock the shared TDB "
        "file themselves), which pyctdb does not serve yet: there it fails at once, and the "
        "table says so rather than leave the row out.",
        "",
    ]
    path.write_text("\n".join(lines))


def plot(path: Path, r: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    programs = list(r["summary"])
    fig, axes = plt.subplots(1, len(programs), figsize=(5 * len(programs), 3.5))
    for ax, program in zip(axes, programs, strict=True):
        rates = [r["summary"][program][d]["median_rate"] or 0.0 for d in DAEMONS]
        colors = ["tab:gray", "tab:blue", "tab:orange"]
        ax.bar(range(len(DAEMONS)), rates, color=colors)
        ax.set_xticks(range(len(DAEMONS)), [d.replace(" ", "\n") for d in DAEMONS])
        ax.set_ylabel("messages/s per node")
        ax.set_title(program)
        for i, rate in enumerate(rates):
            ax.annotate("failed" if rate == 0 else f"{rate:,.0f}", (i, rate), ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.samba_programs",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Writes results.json, samba_programs.png and summary.md; progress goes to stderr.",
    )
    parser.add_argument("--seconds", type=int, default=5, help="time limit of each run (5)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per program and daemon (3)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    ns = parser.parse_args(argv)
    r = run(ns)
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "results.json").write_text(json.dumps(r, indent=2))
    write_summary(ns.out / "summary.md", r)
    plot(ns.out / "samba_programs.png", r)
    say(f"wrote {ns.out}/results.json, summary.md, samba_programs.png")
    print((ns.out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
