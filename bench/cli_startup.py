"""Start-up cost of a one-shot `ctdbtool pnn`, against Samba's `ctdb pnn` in the same run.

Admins and event scripts run the admin tool in loops, so what they feel is
the cost of one launch, nearly all of it spent before the first byte is
sent. Every command below is launched `--runs` times, taking turns
(`bench.foundation.bench_oneshot`), so each sees the same machine load:

* `python -c pass`: the floor any Python tool pays;
* `python -c "import _socket, msgpack"`: the floor of any Python client of
  the daemon's protocol, what `ctdbtool pnn` loads (`tools/ctdbtool/quick.py`);
* `python -c "import click"`, `python -c "import ctdb.client"`: what every
  other command loads (the argument parser, the client library);
* `ctdbtool pnn` and `ctdbtool status` against a local pyctdb cluster
  (`--nodes`, on loopback), through the installed script when there is one;
* Samba's `ctdb pnn` against Samba's own ctdbd (`tools/samba_ctdbd.py`),
  the baseline. (`ctdb status` waits about a second for the leader's
  broadcast, so it measures no start-up and is left out.)

Python runs with its bytecode cached (in a private prefix), as an installed
tool does. The target (issue 10): `ctdbtool pnn` p50 <= 3x Samba's `ctdb pnn` p50.

    .venv/bin/python -m bench.cli_startup [--runs N] [--nodes 1|3] [--quick] [--out DIR]

Writes results.json, cli_startup.png and summary.md into --out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import report
from bench.foundation import bench_oneshot, ctdbtool_cmd, load_warning, machine_info
from tools.cluster import free_port
from tools.samba_ctdbd import CTDB as SAMBA_CTDB
from tools.samba_ctdbd import SambaCluster
from tools.samba_ctdbd import available as samba_available

REPO = Path(__file__).resolve().parent.parent
TARGET_RATIO = 3.0
BASELINE = "samba ctdb pnn"


say = report.progress("cli_startup")


def commands(pyctdb_socket: str) -> dict[str, list[str]]:
    """What is launched, by the name it is reported under."""
    tool = ctdbtool_cmd() + ["--socket", pyctdb_socket]
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "import _socket, msgpack": [sys.executable, "-c", "import _socket, msgpack"],
        "import click": [sys.executable, "-c", "import click"],
        "import ctdb.client": [sys.executable, "-c", "import ctdb.client"],
        "ctdbtool pnn": [*tool, "pnn"],
        "ctdbtool status": [*tool, "status"],
        BASELINE: [str(SAMBA_CTDB), "pnn"],
    }


def measure(runs: int, nodes: int, base: str, workdir: Path) -> dict[str, dict[str, Any]]:
    from tools.cluster import LocalCluster

    pyctdb = LocalCluster(
        workdir / "pyctdb",
        size=nodes,
        transport="tcp",
        port=free_port([f"{base}.{i + 1}" for i in range(nodes)]),
        base=base,
        log_level="WARNING",
    )
    samba: SambaCluster | None = None
    try:
        say(f"starting a {nodes}-node pyctdb cluster on {base}.1-{nodes}")
        pyctdb.up(timeout=60)
        say(f"starting a {nodes}-node Samba ctdbd cluster")
        samba = SambaCluster.start(workdir / "samba", size=nodes)
        # One environment for all: Samba's `ctdb` finds its node through it,
        # ctdbtool is given its socket. Bytecode is cached, as when installed.
        env = {k: v for k, v in samba.env(0).items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
        cmds = commands(pyctdb.socket(0))
        say(f"launching {len(cmds)} commands x{runs}, taking turns")
        results = bench_oneshot(list(cmds.values()), runs, env)
        return dict(zip(cmds, results, strict=True))
    finally:
        if samba is not None:
            samba.down()
        pyctdb.down()


def run(ns: argparse.Namespace) -> dict[str, Any]:
    if not samba_available():
        raise SystemExit(f"Samba's ctdbd and ctdb are needed as the baseline ({SAMBA_CTDB})")
    runs = 5 if ns.quick else ns.runs
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    load_at_start = list(os.getloadavg())
    workdir = Path(tempfile.mkdtemp(prefix="ctdb-bench-cli-startup-"))
    try:
        measured = measure(runs, ns.nodes, ns.base, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    samba_p50 = measured[BASELINE]["p50_s"]
    for entry in measured.values():
        entry["ratio_to_samba"] = entry["p50_s"] / samba_p50
    ratio = measured["ctdbtool pnn"]["ratio_to_samba"]
    return {
        "started": started,
        "command": " ".join(["python -m bench.cli_startup", *sys.argv[1:]]),
        "quick": ns.quick,
        "runs": runs,
        "nodes": ns.nodes,
        "machine": {**machine_info(), "loadavg_at_start": load_at_start},
        "commands": measured,
        "target": {"ratio": TARGET_RATIO, "value": ratio, "met": ratio <= TARGET_RATIO},
    }


def write_summary(path: Path, r: dict[str, Any]) -> None:
    target = r["target"]
    lines = [
        "# One-shot admin tool start-up",
        "",
        f"{r['started']} - {r['nodes']}-node clusters - {r['runs']} launches per command"
        f"{' - quick' if r['quick'] else ''} - {r['machine']['cpus']} CPUs "
        f"({r['machine']['cpu']}), Python {r['machine']['python']}",
        "",
        f"Command: `{r['command']}`",
        "",
        *load_warning(r["machine"]),
        "| command | p50 | p90 | p50 / Samba's `ctdb pnn` |",
        "|---|---|---|---|",
    ]
    for name, e in r["commands"].items():
        lines.append(
            f"| `{name}` | {e['p50_s'] * 1e3:.1f} ms | {e['p90_s'] * 1e3:.1f} ms "
            f"| {e['ratio_to_samba']:.2f}x |"
        )
    lines += [
        "",
        f"Target: `ctdbtool pnn` p50 <= {target['ratio']:g}x Samba's `ctdb pnn` p50: "
        f"{target['value']:.2f}x, {'met' if target['met'] else '**not met**'}.",
        "",
        "The `import` rows are bare interpreters importing only those modules: "
        "`_socket, msgpack` is the least any Python client of the daemon's protocol loads "
        "(and what `ctdbtool pnn` loads), `click` and `ctdb.client` are what the argument "
        "parser and the client library of every other command cost on their own (they "
        "share some of the standard library, so they do not add up).",
        "",
    ]
    path.write_text("\n".join(lines))


def plot(path: Path, r: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(r["commands"])
    p50 = [r["commands"][n]["p50_s"] * 1e3 for n in names]
    p90 = [r["commands"][n]["p90_s"] * 1e3 for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1.5))
    ys = range(len(names))
    colors = ["tab:gray" if n == BASELINE else "tab:blue" for n in names]
    ax.barh(ys, p50, color=colors, label="p50")
    ax.scatter(p90, ys, marker="|", s=200, color="black", label="p90", zorder=3)
    limit = r["commands"][BASELINE]["p50_s"] * 1e3 * r["target"]["ratio"]
    ax.axvline(
        limit, color="tab:red", linestyle="--", label=f"target: {r['target']['ratio']:g}x Samba"
    )
    ax.set_yticks(list(ys), names)
    ax.invert_yaxis()
    ax.set_xlabel("wall time per launch (ms)")
    ax.set_title(
        f"ctdbtool pnn = {r['target']['value']:.2f}x Samba's ctdb pnn "
        f"({r['nodes']}-node clusters, {r['runs']} launches each)"
    )
    ax.legend(loc="lower right")
    report.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = report.parser("cli_startup", __doc__)
    parser.add_argument("--runs", type=int, default=30, help="launches per command (30)")
    parser.add_argument("--nodes", type=int, choices=[1, 3], default=1, help="cluster size (1)")
    parser.add_argument("--quick", action="store_true", help="5 launches per command")
    parser.add_argument(
        "--base", default="127.0.79", help="first three octets of pyctdb's addresses (127.0.79)"
    )
    ns = parser.parse_args(argv)

    results = run(ns)
    report.write(ns.out, "cli_startup", results, write_summary, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
