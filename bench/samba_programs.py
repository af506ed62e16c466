"""CTDB's own test programs against Samba's ctdbd and pyctdb, in the same run.

The programs are Samba 4.17's, unmodified (`tools/build_ctdb_tests.sh`
builds them from the Debian source of the installed `ctdb`). Each runs on
every node of a 3-node cluster at once, as Samba's test suite runs them
(`tools/ctdb_test_programs.py`), against Samba's ctdbd started the way its
tests start it (`tools/samba_ctdbd.py`), pyctdb over tcp and pyctdb over vs
(the corosync `cluster up` starts: knet with crypto). The three clusters are
up together; each round runs every program on each of them in turn (the
order of the daemons rotates from round to round), `--rounds` times, so that
each sees the same machine load:

* `message_ring`: messages passed around the ring of nodes (srvid
  registrations, REQ_MESSAGE): messages/s per node, mean of the nodes;
* `fetch_ring`: one record passed around the ring, each node in turn taking
  it (REQ_CALL when it is elsewhere, chain locks on the shared TDB file),
  appending a line in place and messaging the next: increments/s per node,
  mean of the nodes. Checked: the record every node reads at the end holds
  its lines in ring order, each node's count one more than at its last turn;
* `transaction_loop`: persistent transactions on one record (g_lock.tdb
  through REQ_CALL, the commit through TRANS3_COMMIT), each node bumping
  its own counter in it: commits/s, all nodes together. Checked: every
  node's copy of the record holds, for every node, the count that node
  printed as its own (a lost commit fails the run; it is not a rate);
* `fetch_loop_key`: every node loops fetch_lock, increment, store on one
  key: fetches/s, all nodes together (the shared counter's growth over the
  seconds the program prints it, mean of the nodes' views). Checked: no
  node sees the counter go back.

Each run uses a database of its own. A program that fails on a daemon (an
instance exits non-zero or times out, or a check fails) is reported as
failing with its error, never left out. Over vs a record a program asks
for with REQ_CALL is lent to its node through the record's replicated lock
(`ctdb.engines.ordered.samba_grants`).

    .venv/bin/python -m bench.samba_programs [--seconds 5] [--rounds 3] [--quick] [--out DIR]

Writes results.json, samba_programs.png and summary.md into --out; progress
goes to stderr.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import itertools
import os
import re
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import report
from bench.foundation import load_warning, machine_info
from ctdb.common.config import CTDB_SOCKET_NAME
from tools import ctdb_test_programs
from tools.cluster import free_port
from tools.ctdb_test_programs import Run
from tools.samba_ctdbd import SambaCluster
from tools.samba_ctdbd import available as samba_available

REPO = Path(__file__).resolve().parent.parent
NODES = 3
DAEMONS = ("samba ctdbd", "pyctdb tcp", "pyctdb vs")
#: A run still going this long after its time limit is killed and reported as timed out.
GRACE = 60.0


say = report.progress("samba_programs")


@dataclass
class Backend:
    """One cluster the programs run against."""

    name: str
    cluster: Any
    sockets: list[Path]
    #: (db, key) -> the record's value on each node (None: not there)
    stored: Callable[[str, bytes], list[bytes | None]]


@dataclass
class Outcome:
    """What one run of a program on one daemon gave."""

    rate: float | None  # None: the run failed
    per_node: list[float]
    error: str | None = None
    #: Worth knowing but no failure (a node starved, say).
    note: str | None = None


def _samba(workdir: Path) -> Backend:
    import tdb

    samba = SambaCluster.start(workdir / "samba", size=NODES)

    def stored(db: str, key: bytes) -> list[bytes | None]:
        values: list[bytes | None] = []
        for pnn in range(NODES):
            path = samba.node_dir(pnn) / "db" / "persistent" / f"{db}.{pnn}"
            handle = tdb.open(str(path), flags=os.O_RDONLY)
            try:
                data = handle.get(key)
            finally:
                handle.close()
            values.append(None if data is None else data[24:])  # CTDB's record header
        return values

    return Backend("samba ctdbd", samba, [samba.socket(p) for p in range(NODES)], stored)


def _pyctdb(workdir: Path, transport: str) -> Backend:
    from ctdb.common.errors import CtdbError
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

    def stored(db: str, key: bytes) -> list[bytes | None]:
        values: list[bytes | None] = []
        for pnn in range(NODES):
            with cluster.client(pnn) as client:
                try:
                    values.append(client.call("fetch", db=db, key=key))
                except CtdbError:
                    values.append(None)
        return values

    doors = [cluster.node_dir(p) / CTDB_SOCKET_NAME for p in range(NODES)]
    return Backend(f"pyctdb {transport}", cluster, doors, stored)


# -- the programs: arguments, rate, checks ----------------------------------------------


def _message_ring(run: Run, seconds: int, backend: Backend, db: str) -> Outcome:
    rates = run.rates
    if len(rates) != NODES or not all(rate > 0 for rate in rates):
        return Outcome(None, rates, f"rates printed: {rates}")
    return Outcome(statistics.mean(rates), rates)


def _fetch_ring(run: Run, seconds: int, backend: Backend, db: str) -> Outcome:
    rates = run.rates
    if len(rates) != NODES or not all(rate > 0 for rate in rates):
        return Outcome(None, rates, f"rates printed: {rates}")
    for pnn, output in enumerate(run.outputs):
        if "DATA:\n" not in output:
            return Outcome(None, rates, f"node {pnn} printed no final record")
        data = output.rsplit("DATA:\n", 1)[1]
        lines = [
            (int(c), int(p)) for c, p in re.findall(r"^msg_count=(\d+) on node (\d+)$", data, re.M)
        ]
        if not lines:
            return Outcome(None, rates, f"node {pnn} read a record with no update in it")
        for (count, node), (next_count, next_node) in itertools.pairwise(lines):
            if next_node != (node + 1) % NODES or next_count != count + (next_node == 0):
                return Outcome(
                    None,
                    rates,
                    f"node {pnn} read updates out of ring order: "
                    f"count {count} on node {node} then {next_count} on node {next_node}",
                )
    return Outcome(statistics.mean(rates), rates)


_TRANSACTION = re.compile(r"^Transaction\[(\d+)\]:((?:\s+\d+)+)\s*$", re.M)


def _transaction_loop(run: Run, seconds: int, backend: Backend, db: str) -> Outcome:
    own: dict[int, int] = {}
    for output in run.outputs:
        found = _TRANSACTION.findall(output)
        if found:
            pnn, counts = int(found[-1][0]), [int(n) for n in found[-1][1].split()]
            own[pnn] = counts[pnn]
    if sorted(own) != list(range(NODES)):
        return Outcome(None, [], f"final counts printed by nodes {sorted(own)} only")
    per_node = [own[p] / seconds for p in range(NODES)]
    idle = [p for p in range(NODES) if not own[p]]
    note = f"node(s) {idle} committed nothing" if idle else None
    want = [own[p] for p in range(NODES)]
    for pnn, value in enumerate(backend.stored(db, b"counters")):
        if value is None:  # never written: right only if nothing was committed
            have: list[int] | None = [0] * NODES
        elif len(value) == 4 * NODES:
            have = list(struct.unpack(f"<{NODES}I", value))
        else:
            have = None
        if have != want:
            return Outcome(
                None,
                per_node,
                f"lost commit: node {pnn} stores counters {have}, the nodes acknowledged {want}",
            )
    return Outcome(sum(own.values()) / seconds, per_node, note=note)


def _fetch_loop_key(run: Run, seconds: int, backend: Backend, db: str) -> Outcome:
    per_node: list[float] = []
    stalls: list[str] = []
    for pnn, output in enumerate(run.outputs):
        counts = [int(n) for n in re.findall(r"^Locks:(\d+)$", output, re.M)]
        if len(counts) < 2:
            return Outcome(None, per_node, f"node {pnn} printed the counter {len(counts)} times")
        if counts != sorted(counts):
            return Outcome(None, per_node, f"node {pnn} saw the counter go back: {counts}")
        per_node.append((counts[-1] - counts[0]) / (len(counts) - 1))
        still = sum(a == b for a, b in itertools.pairwise(counts))
        if still:
            stalls.append(f"node {pnn} saw it stand still {still} of {len(counts) - 1} s")
    if not any(per_node):
        return Outcome(None, per_node, f"the counter did not grow: {per_node}")
    return Outcome(statistics.mean(per_node), per_node, note="; ".join(stalls) or None)


@dataclass(frozen=True)
class Program:
    unit: str
    #: run tag (unique per run) -> (database, extra arguments)
    args: Callable[[str], tuple[str, tuple[str, ...]]]
    evaluate: Callable[[Run, int, Backend, str], Outcome]
    #: The shortest run that gives a rate: message_ring and fetch_loop_key
    #: report once a second and need two reports (a 1-second run gives none).
    min_seconds: int = 1


PROGRAMS: dict[str, Program] = {
    "message_ring": Program("messages/s per node", lambda t: ("", ()), _message_ring, 2),
    "fetch_ring": Program(
        "increments/s per node",
        lambda t: (f"fetch_ring_{t}.tdb", ("-D", f"fetch_ring_{t}.tdb", "-k", "ring", "-i")),
        _fetch_ring,
    ),
    "transaction_loop": Program(
        "commits/s, all nodes",
        lambda t: (
            f"tloop_{t}.tdb",
            ("-T", "persistent", "-D", f"tloop_{t}.tdb", "-k", "counters"),
        ),
        _transaction_loop,
    ),
    # Last in each round: it exits with the record's chain still locked (the
    # TDB is closed with a fetch_lock outstanding), on Samba's ctdbd as on
    # pyctdb; its own database keeps that from every other run.
    "fetch_loop_key": Program(
        "fetches/s, all nodes",
        lambda t: (f"loop_{t}.tdb", ("-D", f"loop_{t}.tdb", "-k", "counter")),
        _fetch_loop_key,
        2,
    ),
}


def _failure(run: Run, timeout: float) -> str:
    """One line: which instance failed and what it said last."""
    failing = [i for i, rc in enumerate(run.returncodes) if rc != 0]
    pnn = failing[0] if failing else 0
    codes = sorted({run.returncodes[i] for i in failing})
    head = f"node{'s' if len(failing) > 1 else ''} {', '.join(map(str, failing))} exited "
    head += ", ".join(map(str, codes))
    if run.timed_out:
        head = f"timed out after {timeout:.0f} s ({head})"
    said = [
        line.strip()
        for line in run.outputs[pnn].splitlines()
        if line.strip()
        and line.strip() != "Waiting for cluster"
        and "msgs/sec" not in line
        and not line.startswith(("Locks:", "Transaction[", "DATA:", "msg_count=", "Test data"))
    ]
    said = list(dict.fromkeys(said))[:3]
    text = " / ".join(said)
    text = text if len(text) <= 240 else text[:237] + "..."
    return f"{head}: {text}" if text else head


def run_once(program: str, backend: Backend, seconds: int, tag: str) -> dict[str, Any]:
    spec = PROGRAMS[program]
    seconds = max(seconds, spec.min_seconds)
    db, args = spec.args(tag)
    timeout = seconds + GRACE
    started = time.monotonic()
    run = ctdb_test_programs.run_on_cluster(
        program, backend.sockets, seconds, *args, timeout=timeout
    )
    wall = time.monotonic() - started
    if run.timed_out or not run.ok:
        outcome = Outcome(None, run.rates, _failure(run, timeout))
    else:
        try:
            outcome = spec.evaluate(run, seconds, backend, db)
        except Exception as exc:  # a check that could not be made fails the run
            outcome = Outcome(None, [], f"check failed: {type(exc).__name__}: {exc}")
    entry: dict[str, Any] = {
        "rate": outcome.rate,
        "per_node": outcome.per_node,
        "error": outcome.error,
        "note": outcome.note,
        "returncodes": run.returncodes,
        "seconds": seconds,
        "wall_s": round(wall, 2),
    }
    entry["output_tails"] = [out[-(1200 if outcome.rate is None else 300) :] for out in run.outputs]
    return entry


def start_backends(workdir: Path) -> dict[str, Backend]:
    """The three clusters, started side by side (start-up is not measured)."""
    starters: dict[str, Callable[[], Backend]] = {
        "samba ctdbd": lambda: _samba(workdir),
        "pyctdb tcp": lambda: _pyctdb(workdir, "tcp"),
        "pyctdb vs": lambda: _pyctdb(workdir, "vs"),
    }
    say("starting Samba's ctdbd, pyctdb over tcp and pyctdb over vs (3 nodes each)")
    backends: dict[str, Backend] = {}
    errors: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(len(starters)) as pool:
        futures = {pool.submit(start): name for name, start in starters.items()}
        for future in concurrent.futures.as_completed(futures):
            try:
                backends[futures[future]] = future.result()
                say(f"{futures[future]} is up")
            except Exception as exc:
                errors.append(f"{futures[future]}: {exc}")
    if errors:
        for backend in backends.values():
            backend.cluster.down()
        raise RuntimeError("a cluster did not come up: " + "; ".join(errors))
    return backends


def measure(seconds: int, rounds: int, workdir: Path) -> dict[str, dict[str, list[Any]]]:
    """daemon -> program -> one entry per round (rate None: that run failed)."""
    backends = start_backends(workdir)
    try:
        results: dict[str, dict[str, list[Any]]] = {d: {p: [] for p in PROGRAMS} for d in DAEMONS}
        for r in range(rounds):
            order = DAEMONS[r % len(DAEMONS) :] + DAEMONS[: r % len(DAEMONS)]
            for program in PROGRAMS:
                for daemon in order:
                    entry = run_once(program, backends[daemon], seconds, f"r{r}")
                    entry["round"] = r + 1
                    results[daemon][program].append(entry)
                    shown = _rate(entry["rate"]) if entry["error"] is None else entry["error"]
                    shown += f" [{entry['note']}]" if entry["note"] else ""
                    say(f"round {r + 1}: {program} on {daemon}: {shown} ({entry['wall_s']} s)")
        return results
    finally:
        for backend in backends.values():
            backend.cluster.down()


def _same_error(error: str) -> str:
    """An error without what differs from run to run (database names, hashes, numbers)."""
    return re.sub(r"0x[0-9a-f]+|_r\d+\.tdb|\d+", "#", error)


def _summarize(entries: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [e["rate"] for e in entries if e["rate"] is not None]
    errors: dict[str, str] = {}  # one of each kind, as the first run said it
    for e in entries:
        if e["rate"] is None:
            errors.setdefault(_same_error(e["error"]), e["error"])
    return {
        "median_rate": statistics.median(rates) if rates else None,
        "rounds_ok": len(rates),
        "rounds_failed": len(entries) - len(rates),
        "errors": list(errors.values()),
        "notes": [f"round {e['round']}: {e['note']}" for e in entries if e.get("note")],
    }


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
    for program, spec in PROGRAMS.items():
        baseline = _summarize(measured["samba ctdbd"][program])["median_rate"]
        summary[program] = {"unit": spec.unit}
        for daemon in DAEMONS:
            s = _summarize(measured[daemon][program])
            median = s["median_rate"]
            s["ratio_to_samba"] = None if median is None or not baseline else median / baseline
            summary[program][daemon] = s
    return {
        "started": started,
        "command": " ".join(["python -m bench.samba_programs", *sys.argv[1:]]),
        "seconds": ns.seconds,
        "rounds": ns.rounds,
        "quick": ns.quick,
        "nodes": NODES,
        "machine": {**machine_info(), "loadavg_at_start": load_at_start},
        "runs": measured,
        "summary": summary,
    }


def _number(value: float) -> str:
    return f"{value:,.1f}" if value < 10 else f"{value:,.0f}"


def _rate(value: float | None) -> str:
    return "failed" if value is None else f"{_number(value)}/s"


def _loads(values: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in values)


def _cell(e: dict[str, Any]) -> str:
    if e["median_rate"] is None:
        return "fails"
    text = _rate(e["median_rate"])
    if e["ratio_to_samba"] is not None:
        text += f" ({e['ratio_to_samba']:.2f}x)"
    if e["rounds_failed"]:
        text += f", failed {e['rounds_failed']} of {e['rounds_ok'] + e['rounds_failed']} rounds"
    return text


def write_summary(path: Path, r: dict[str, Any]) -> None:
    m = r["machine"]
    longer = ", ".join(
        f"`{name}` {spec.min_seconds} s"
        for name, spec in PROGRAMS.items()
        if spec.min_seconds > r["seconds"]
    )
    lines = [
        "# CTDB's test programs: Samba's ctdbd against pyctdb",
        "",
        f"{r['started']} - {r['nodes']} nodes - {r['seconds']} s per run"
        f"{f' ({longer})' if longer else ''}, {r['rounds']} rounds "
        f"- {m['cpus']} CPUs ({m['cpu']}), Python {m['python']}, "
        f"commit {m.get('git_commit', '')[:7]}",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Load average (1, 5, 15 min) at start {_loads(m['loadavg_at_start'])}, "
        f"at end {_loads(m['loadavg'])}.",
        "",
        *load_warning(m),
        "Median over the rounds (daemons taking turns, the same program on each in a row); "
        "ratios are pyctdb / Samba's ctdbd.",
        "",
        "| program | unit | " + " | ".join(DAEMONS) + " |",
        "|---|---|" + "---|" * len(DAEMONS),
    ]
    for program, row in r["summary"].items():
        cells = [_cell(row[daemon]) for daemon in DAEMONS]
        lines.append(f"| `{program}` | {row['unit']} | " + " | ".join(cells) + " |")
    failures = [
        f"* `{program}` on {daemon} ({row[daemon]['rounds_failed']} of {r['rounds']} rounds): "
        + "; ".join(f"`{err}`" for err in row[daemon]["errors"])
        for program, row in r["summary"].items()
        for daemon in DAEMONS
        if row[daemon]["rounds_failed"]
    ]
    lines += ["", "## Failures", ""] + (failures or ["None."])
    notes = [
        f"* `{program}` on {daemon}: " + "; ".join(row[daemon]["notes"])
        for program, row in r["summary"].items()
        for daemon in DAEMONS
        if row[daemon]["notes"]
    ]
    if notes:
        lines += ["", "## Notes (not failures)", "", *notes]
    lines += [
        "",
        "Checks: `fetch_ring`'s final record holds its updates in ring order on every node; "
        "every node's copy of `transaction_loop`'s record holds each node's acknowledged "
        "count (a lost commit is a failure); `fetch_loop_key`'s shared counter never goes "
        "back on any node. Over vs, REQ_CALL lends the record to the asking node through "
        "its replicated lock, and takes it back, with what was written in place, when "
        "another node asks.",
        "",
    ]
    path.write_text("\n".join(lines))


def plot(path: Path, r: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    programs = list(r["summary"])
    fig, axes = plt.subplots(1, len(programs), figsize=(4.2 * len(programs), 3.6))
    colors = ["tab:gray", "tab:blue", "tab:orange"]
    for ax, program in zip(axes, programs, strict=True):
        row = r["summary"][program]
        rates = [row[d]["median_rate"] or 0.0 for d in DAEMONS]
        ax.bar(range(len(DAEMONS)), rates, color=colors)
        ax.set_xticks(range(len(DAEMONS)), [d.replace(" ", "\n") for d in DAEMONS])
        ax.set_ylabel(row["unit"])
        ax.set_title(program)
        for i, daemon in enumerate(DAEMONS):
            e = row[daemon]
            if e["median_rate"] is None:
                label = "fails"
            elif e["ratio_to_samba"] is not None and i:
                label = f"{_number(e['median_rate'])}\n{e['ratio_to_samba']:.2f}x"
            else:
                label = _number(e["median_rate"])
            ax.annotate(label, (i, rates[i]), ha="center", va="bottom", fontsize=8)
        ax.margins(y=0.25)
    fig.suptitle(f"CTDB's test programs, 3 nodes, median of {r['rounds']} rounds ({r['started']})")
    report.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = report.parser("samba_programs", __doc__)
    parser.add_argument("--seconds", type=int, default=5, help="time limit of each run (5)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per program and daemon (3)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 s runs (2 s where a program needs them), 1 round (overrides both)",
    )
    ns = parser.parse_args(argv)
    if ns.quick:
        ns.seconds, ns.rounds = 1, 1
    r = run(ns)
    report.write(ns.out, "samba_programs", r, write_summary, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
