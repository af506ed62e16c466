"""`ptrans` of N records into a persistent database: Samba's ctdbd against pyctdb, same run.

Issue 13's last target: a persistent transaction that rewrites records with
identical data costs next to nothing, as in Samba (`ptrans` of the same 10k
records again: <= 2x ctdbd). Samba's `ctdb ptrans` reads each record from its
node's local copy of the database and leaves an unchanged one out, so a
transaction with nothing changed commits nothing. This benchmark measures
that, and the transactions around it, against Samba's ctdbd started in the
same run (3 nodes, `tools/samba_ctdbd.py`) and a 3-node pyctdb cluster over
tcp. Each configuration attaches a fresh persistent database per round and
times the wall clock of the tool's process for:

* (a) the first `ptrans` of N records `"k<i>" "v<i>"` (one transaction);
* (b) `ptrans` of the very same N records again: identical data, nothing
  to commit;
* (c) `ptrans` of the N records with 1% of the values changed.

Configurations: `samba ctdbd` (Samba's `ctdb ptrans`, the baseline);
`pyctdb` (`ctdbtool ptrans`); `pyctdb + samba ctdb` (Samba's `ctdb ptrans`
against pyctdb's CTDB-protocol socket). At these sizes process start-up is
part of every figure, so each tool's `pnn` alone is timed too. The sequence
number (`getdbseqnum`) after each step shows whether (b) committed anything;
after (c) a few changed keys (and one unchanged) are read back with `pfetch`
on another node. Rounds rotate the order of the configurations; medians are
reported, with ratios to `samba ctdbd`. Nothing is asserted: a step that
fails is reported with its error.

    .venv/bin/python -m bench.ptrans [--records 10000] [--rounds 3] [--quick] [--out DIR]

Writes results.json, ptrans.png and summary.md into --out; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import report
from bench.foundation import ctdbtool_cmd, load_warning, machine_info
from ctdb.common.config import CTDB_SOCKET_NAME
from tools.cluster import free_port
from tools.samba_ctdbd import CTDB as SAMBA_CTDB
from tools.samba_ctdbd import SambaCluster
from tools.samba_ctdbd import available as samba_available

REPO = Path(__file__).resolve().parent.parent
NODES = 3
PYCTDB_BASE = "127.0.154"
CONFIGS = ("samba ctdbd", "pyctdb", "pyctdb + samba ctdb")
BASELINE = CONFIGS[0]
PHASES = {"first": "(a) first", "identical": "(b) same again", "changed": "(c) 1% changed"}
STARTUP_LAUNCHES = 3  # `pnn` launches per configuration and round
CHECKED = 5  # changed keys read back after (c), plus one unchanged
TARGET_RATIO = 2.0  # issue 13: (b) on pyctdb <= 2x Samba's ctdbd
TIMEOUT = 600.0


say = report.progress("ptrans")


@dataclass(frozen=True)
class Config:
    name: str
    tool: str
    #: pnn -> the tool's command line up to its subcommand, and its environment
    command: Callable[[int], list[str]]
    env: Callable[[int], dict[str, str]]
    ours: bool  # ctdbtool (reads through --json) rather than Samba's `ctdb`


class StepFailed(RuntimeError):
    pass


def launch(cfg: Config, pnn: int, *args: str) -> tuple[float, str]:
    """Run the tool once; its wall time and stdout, or StepFailed."""
    cmd = cfg.command(pnn)
    if cfg.ours and args[0] in ("getdbseqnum", "pfetch"):
        cmd = [*cmd, "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*cmd, *args], env=cfg.env(pnn), cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [""]
        raise StepFailed(f"{cfg.tool} {' '.join(args[:2])} exited {proc.returncode}: {said[0]}")
    return wall, proc.stdout


def seqnum(cfg: Config, db: str) -> int:
    out = launch(cfg, 0, "getdbseqnum", db)[1]
    return int(json.loads(out)["seqnum"]) if cfg.ours else int(out.strip(), 16)


def pfetch(cfg: Config, pnn: int, db: str, key: str) -> str | None:
    out = launch(cfg, pnn, "pfetch", db, key)[1]
    if cfg.ours:
        value: str | None = json.loads(out)["value"]
        return value
    return out.rstrip("\n") or None


def _configs(samba: SambaCluster, pyctdb: Any, workdir: Path) -> dict[str, Config]:
    # ctdbtool runs with its bytecode cached (in a private prefix), as installed.
    ours = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    ours["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    tool = ctdbtool_cmd()

    def door(pnn: int) -> dict[str, str]:
        socket = str(pyctdb.node_dir(pnn) / CTDB_SOCKET_NAME)
        return {**os.environ, "CTDB_SOCKET": socket, "CTDB_BASE": str(pyctdb.directory)}

    return {
        "samba ctdbd": Config(
            "samba ctdbd", "ctdb", lambda p: [str(SAMBA_CTDB)], samba.env, ours=False
        ),
        "pyctdb": Config(
            "pyctdb",
            "ctdbtool",
            lambda p: [*tool, "--socket", pyctdb.socket(p)],
            lambda p: ours,
            ours=True,
        ),
        "pyctdb + samba ctdb": Config(
            "pyctdb + samba ctdb", "ctdb", lambda p: [str(SAMBA_CTDB)], door, ours=False
        ),
    }


def changed_keys(records: int) -> list[int]:
    return list(range(0, records, 100))


def write_records(workdir: Path, records: int) -> tuple[Path, Path]:
    first, changed = workdir / "records.txt", workdir / "changed.txt"
    first.write_text("".join(f'"k{i}" "v{i}"\n' for i in range(records)))
    new = set(changed_keys(records))
    changed.write_text("".join(f'"k{i}" "{"w" if i in new else "v"}{i}"\n' for i in range(records)))
    return first, changed


def one_round(cfg: Config, tag: str, files: tuple[Path, Path], records: int) -> dict[str, Any]:
    """Start-up, attach, (a), (b), (c) and the read-back for one configuration."""
    db = f"ptrans_{tag}_{CONFIGS.index(cfg.name)}.tdb"
    entry: dict[str, Any] = {
        "tool": cfg.tool,
        "db": db,
        "startup_s": [],
        "seqnum": {},
        "errors": [],
    }
    entry.update({f"{phase}_s": None for phase in PHASES})
    try:
        entry["startup_s"] = [launch(cfg, 0, "pnn")[0] for _ in range(STARTUP_LAUNCHES)]
        launch(cfg, 0, "attach", db, "persistent")
        entry["seqnum"]["attached"] = seqnum(cfg, db)
        for phase, file in zip(PHASES, (files[0], files[0], files[1]), strict=True):
            entry[f"{phase}_s"] = launch(cfg, 0, "ptrans", db, str(file))[0]
            entry["seqnum"][phase] = seqnum(cfg, db)
        new = changed_keys(records)
        checked = new[:: max(1, len(new) // CHECKED)][:CHECKED]
        want = {f"k{i}": f"w{i}" for i in checked} | {"k1": "v1"}
        wrong = {}
        for key, value in want.items():
            got = pfetch(cfg, 1, db, key)
            if got != value:
                wrong[key] = got
        entry["check"] = {"node": 1, "keys": sorted(want), "ok": not wrong, "wrong": wrong}
    except (StepFailed, subprocess.TimeoutExpired, ValueError, KeyError) as exc:
        entry["errors"].append(f"{type(exc).__name__}: {exc}")
    entry.setdefault("check", {"ok": None})
    seq = entry["seqnum"]
    entry["identical_committed"] = seq["identical"] != seq["first"] if "identical" in seq else None
    return entry


def measure(records: int, rounds: int, workdir: Path) -> dict[str, list[dict[str, Any]]]:
    from tools.cluster import LocalCluster

    files = write_records(workdir, records)
    samba: SambaCluster | None = None
    pyctdb: LocalCluster | None = None
    try:
        say("starting Samba's ctdbd and pyctdb over tcp (3 nodes each), side by side")
        addresses = [f"{PYCTDB_BASE}.{i + 1}" for i in range(NODES)]
        pyctdb = LocalCluster(
            workdir / "pyctdb",
            size=NODES,
            transport="tcp",
            port=free_port(addresses),
            base=PYCTDB_BASE,
            log_level="WARNING",
        )
        # Start-up is not measured: pyctdb comes up while Samba's nodes wait
        # for their first election.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            samba_f = pool.submit(SambaCluster.start, workdir / "samba", NODES)
            try:
                pyctdb.up(timeout=90)
            finally:
                samba = samba_f.result()
        configs = _configs(samba, pyctdb, workdir)
        for cfg in configs.values():  # warm-up launch (and ctdbtool's bytecode cache)
            launch(cfg, 0, "pnn")
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
        for r in range(rounds):
            order = CONFIGS[r % len(CONFIGS) :] + CONFIGS[: r % len(CONFIGS)]
            for name in order:
                entry = one_round(configs[name], f"r{r + 1}", files, records)
                entry["round"] = r + 1
                runs[name].append(entry)
                times = ", ".join(f"{p} {_ms(entry[f'{p}_s'])}" for p in PHASES)
                say(
                    f"round {r + 1}: {name}: {times}, seqnum {_seqs(entry['seqnum'])}, "
                    f"read-back {_ok(entry['check']['ok'])}"
                    + (f" - {'; '.join(entry['errors'])}" if entry["errors"] else "")
                )
        return runs
    finally:
        if samba is not None:
            samba.down()
        if pyctdb is not None and pyctdb.directory.exists():
            pyctdb.down()


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for name in CONFIGS:
        entries = runs[name]
        s: dict[str, Any] = {
            "startup_s": _median([w for e in entries for w in e["startup_s"]]),
            **{f"{p}_s": _median([e[f"{p}_s"] for e in entries]) for p in PHASES},
            "identical_committed": [e["identical_committed"] for e in entries],
            "seqnums": [e["seqnum"] for e in entries],
            "checks_ok": sum(e["check"]["ok"] is True for e in entries),
            "errors": list(dict.fromkeys(err for e in entries for err in e["errors"])),
        }
        b, start = s["identical_s"], s["startup_s"]
        s["identical_minus_startup_s"] = None if b is None or start is None else b - start
        summary[name] = s
    for s in summary.values():
        s["ratio_to_samba"] = {
            p: None
            if s[f"{p}_s"] is None or not summary[BASELINE][f"{p}_s"]
            else s[f"{p}_s"] / summary[BASELINE][f"{p}_s"]
            for p in ("startup", *PHASES)
        }
    return summary


def run(ns: argparse.Namespace) -> dict[str, Any]:
    if not samba_available():
        raise SystemExit(f"Samba's ctdbd and ctdb are needed as the baseline ({SAMBA_CTDB})")
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    load_at_start = list(os.getloadavg())
    workdir = Path(tempfile.mkdtemp(prefix="ctdb-bench-ptrans-"))
    try:
        runs = measure(ns.records, ns.rounds, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = summarize(runs)
    ratio = summary["pyctdb"]["ratio_to_samba"]["identical"]
    return {
        "started": started,
        "command": " ".join(["python -m bench.ptrans", *sys.argv[1:]]),
        "records": ns.records,
        "rounds": ns.rounds,
        "quick": ns.quick,
        "nodes": NODES,
        "machine": {**machine_info(), "loadavg_at_start": load_at_start},
        "runs": runs,
        "summary": summary,
        "target": {
            "ratio": TARGET_RATIO,
            "value": ratio,
            "met": None if ratio is None else ratio <= TARGET_RATIO,
        },
    }


def _rounds(r: dict[str, Any]) -> str:
    return f"{r['rounds']} round{'s' if r['rounds'] != 1 else ''}"


def _ms(value: float | None) -> str:
    return "failed" if value is None else f"{value * 1e3:,.0f} ms"


def _ok(ok: bool | None) -> str:
    return {True: "ok", False: "WRONG", None: "not made"}[ok]


def _seqs(seq: dict[str, int]) -> str:
    return " -> ".join(str(seq[k]) for k in ("attached", *PHASES) if k in seq) or "-"


def _cell(s: dict[str, Any], key: str) -> str:
    text = _ms(s[f"{key}_s"])
    ratio = s["ratio_to_samba"][key]
    return text if ratio is None else f"{text} ({ratio:.2f}x)"


def write_summary(path: Path, r: dict[str, Any]) -> None:
    m, summary, target = r["machine"], r["summary"], r["target"]
    loads = ", ".join(f"{x:.2f}" for x in m["loadavg_at_start"])
    lines = [
        "# `ptrans` into a persistent database: Samba's ctdbd against pyctdb",
        "",
        f"{r['started']} - {r['nodes']} nodes - {r['records']:,} records, {_rounds(r)}"
        f"{' - quick' if r['quick'] else ''} - {m['cpus']} CPUs ({m['cpu']}), "
        f"Python {m['python']}, commit {m.get('git_commit', '')[:7]}",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Load average at start {loads}.",
        "",
        *load_warning(m),
        "Wall time of the tool's process, median over the rounds; ratios to Samba's ctdbd. "
        "Sequence numbers: after attach -> (a) -> (b) -> (c), per round.",
        "",
        "| configuration | tool | start-up (`pnn`) | "
        + " | ".join(PHASES.values())
        + " | seqnum | read-back |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in CONFIGS:
        s = summary[name]
        tool = r["runs"][name][0]["tool"] if r["runs"][name] else ""
        seqs = "; ".join(dict.fromkeys(_seqs(seq) for seq in s["seqnums"]))
        if len(s["seqnums"]) > 1 and "; " not in seqs:
            seqs += " (every round)"
        lines.append(
            f"| {name} | `{tool}` | {_cell(s, 'startup')} | "
            + " | ".join(_cell(s, p) for p in PHASES)
            + f" | {seqs} | {s['checks_ok']}/{r['rounds']} ok |"
        )
    net = ", ".join(f"{n} {_ms(summary[n]['identical_minus_startup_s'])}" for n in CONFIGS)
    met = {True: "met", False: "**not met**", None: "not measured"}[target["met"]]
    value = "-" if target["value"] is None else f"{target['value']:.2f}x"
    lines += [
        "",
        f"(b) minus the tool's start-up: {net}.",
        "",
        f"Target (issue 13): (b) with `ctdbtool` on pyctdb <= {target['ratio']:g}x Samba's "
        f"ctdbd: {value}, {met}.",
        "",
        "Read-back: after (c), `pfetch` on node 1 of "
        f"{CHECKED} changed keys and one unchanged, with the configuration's own tool.",
    ]
    errors = [f"* {n}: " + "; ".join(f"`{e}`" for e in summary[n]["errors"]) for n in CONFIGS]
    errors = [e for n, e in zip(CONFIGS, errors, strict=True) if summary[n]["errors"]]
    lines += ["", "## Errors", "", *(errors or ["None."]), ""]
    path.write_text("\n".join(lines))


def plot(path: Path, r: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["startup", *PHASES]
    labels = ["start-up (pnn)", *PHASES.values()]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.8 / len(CONFIGS)
    colors = ("tab:gray", "tab:blue", "tab:orange")
    for i, (name, color) in enumerate(zip(CONFIGS, colors, strict=True)):
        s = r["summary"][name]
        xs = [k + (i - 1) * width for k in range(len(keys))]
        ms = [(s[f"{k}_s"] or 0.0) * 1e3 for k in keys]
        ax.bar(xs, ms, width, color=color, label=name)
        for x, k, v in zip(xs, keys, ms, strict=True):
            ratio = s["ratio_to_samba"][k]
            text = f"{v:.0f}" + (f"\n{ratio:.1f}x" if ratio is not None and i else "")
            text = text if s[f"{k}_s"] is not None else "failed"
            ax.annotate(text, (x, v or 1), ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(range(len(keys)), labels)
    ax.set_ylabel("wall time of the tool (ms, log)")
    ax.set_title(
        f"ptrans of {r['records']:,} records, 3 nodes, median of {_rounds(r)} ({r['started']})"
    )
    ax.legend(fontsize=8)
    ax.margins(y=0.2)
    report.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = report.parser(
        "ptrans",
        __doc__,
        epilog="Times (a) the first ptrans of N records into a fresh persistent database, "
        "(b) the very same records again (nothing to commit), (c) 1%% of the values changed, "
        "on Samba's ctdbd with `ctdb`, on pyctdb with `ctdbtool` and on pyctdb with Samba's "
        "`ctdb`, all in one run. Writes results.json, ptrans.png and summary.md; progress "
        "goes to stderr.",
    )
    parser.add_argument("--records", type=int, default=10_000, help="records per ptrans (10000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians reported (3)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1,000 records, 1 round (overrides both)"
    )
    ns = parser.parse_args(argv)
    if ns.quick:
        ns.records, ns.rounds = 1_000, 1
    r = run(ns)
    report.write(ns.out, "ptrans", r, write_summary, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
