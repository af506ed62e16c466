"""Records used in place by the client, against Samba's ctdbd: issue 13's table.

Samba's clients lock a record's chain in the node's TDB file and use the
record there while their node is its dmaster, asking ctdbd only to migrate
it; `Client(in_place=True)` does the same for pyctdb (`ctdb.client.in_place`).
What that buys, next to Samba's ctdbd in the same run, with every client
looping fetch_lock, +1, store_unlock on its key (client i on node i % 3):

* one client, one key: no migration; an increment is a chain lock and two
  TDB calls in the client (in place) or two round trips to the daemon;
* 3 and 6 clients, one shared key: the record migrates between the nodes;
  how often, and how many increments a node makes meanwhile, decides;
* distinct keys, 1, 3 and 6 clients: each client its own key, uncontended.

Rows: Samba's ctdbd with Samba's own C client (CTDB's test program
`fetch_loop_key`, unmodified: the baseline of every ratio); the same program
against pyctdb's CTDB-protocol sockets; `ctdb.client` in place (one Python
process per client); `ctdb.client` through the daemon (`in_place=False`, the
behaviour before issue 13). Both 3-node clusters (pyctdb on tcp) are up
together; each round runs the four rows of a configuration back to back in
rotating order; the median of `--rounds` is reported. Each measurement has a
database of its own, its counters put first at 0 (fetch_loop_key's 4-byte
counter; ASCII decimal for the Python clients).

fetch_loop_key prints only its view of the counter, once a second: its rate
is the counter's growth (distinct keys: summed over the instances); counts
per client and latency are not measured. The Python rows also give acquire
latency (the fetch_lock call), fairness (per-client counts, min/max), record
migrations per acquisition (the daemons' `calls_sent`) and a check that every
counter ends at the increments acknowledged.

    .venv/bin/python -m bench.in_place [--seconds 5] [--rounds 3] [--quick] [--out DIR]

--quick: 1-second windows, one round, 1 and 3 clients (under a minute).
Writes results.json, in_place.png and summary.md into --out (default
bench/results/in_place); progress goes to stderr; nothing here asserts.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import itertools
import multiprocessing as mp
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench import report
from bench.foundation import load_warning, machine_info, pct
from ctdb.client import Client
from ctdb.common.config import CTDB_SOCKET_NAME
from ctdb.common.errors import CtdbError, ErrorCode
from tools import ctdb_test_programs
from tools.cluster import LocalCluster, free_port
from tools.samba_ctdbd import SambaCluster, random_base
from tools.samba_ctdbd import available as samba_available

REPO = Path(__file__).resolve().parent.parent
NODES = 3
BASELINE = "samba ctdbd"
SAMBA_CLIENT = "pyctdb, Samba's client"
IN_PLACE = "pyctdb, ctdb.client in place"
VIA_DAEMON = "pyctdb, ctdb.client via the daemon"
ROWS = (BASELINE, SAMBA_CLIENT, IN_PLACE, VIA_DAEMON)
WORKLOADS = ("one key", "distinct keys")
#: Latencies a worker keeps at most (every k-th acquisition, k doubling as needed).
SAMPLE_LIMIT = 20_000
#: Errors after which a worker simply tries again (a recovery, a busy daemon).
TRANSIENT = {ErrorCode.RETRY, ErrorCode.BUSY, ErrorCode.TIMEOUT}
#: A measurement still running this long after its window is abandoned.
GRACE = 60.0
#: fetch_loop_key exits at the end of its window; one still running this much later is killed.
PROGRAM_GRACE = 10.0


say = report.progress("in_place")


def keys_for(workload: str, clients: int) -> list[str]:
    """Client i's key: the same for all (one key) or its own."""
    return ["counter" if workload == "one key" else f"counter-{i}" for i in range(clients)]


# -- Samba's fetch_loop_key ---------------------------------------------------------------


def run_program(sockets: list[Path], db: str, keys: list[str], seconds: int) -> dict[str, Any]:
    """fetch_loop_key, instance i on sockets[i] looping on keys[i] (counters start at 0).

    An instance sometimes does not exit after its window (with two per node on one
    key, on either daemon: it waits in tdb_chainlock for good); what it printed in
    its window counts, and it is killed after PROGRAM_GRACE and noted."""
    path = ctdb_test_programs.program("fetch_loop_key")
    assert path is not None  # checked at the start
    procs = [
        subprocess.Popen(
            [str(path), "-n", str(len(sockets)), "-t", str(seconds), "-s", str(sock)]
            + ["-D", db, "-k", key],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for sock, key in zip(sockets, keys, strict=True)
    ]
    outputs: list[str] = []
    killed: list[int] = []
    deadline = time.monotonic() + seconds + PROGRAM_GRACE
    try:
        for i, proc in enumerate(procs):
            try:  # at least 1 s each: one that has exited still has its output to give
                outputs.append(proc.communicate(timeout=max(1, deadline - time.monotonic()))[0])
            except subprocess.TimeoutExpired:
                killed += [i] if proc.poll() is None else []
                proc.kill()
                outputs.append(proc.communicate()[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # each instance's view of its counter, once a second of its window
    views = [[int(n) for n in re.findall(r"^Locks:(\d+)$", out, re.M)][:seconds] for out in outputs]
    codes = [p.returncode for p in procs]
    entry: dict[str, Any] = {"returncodes": codes, "views": views, "rate": None}
    bad = [i for i, v in enumerate(views) if (codes[i] and i not in killed) or len(v) < seconds]
    stalls = [
        f"instance {i}'s counter stood still {n} of {seconds - 1} s"
        for i, v in enumerate(views)
        if (n := sum(a == b for a, b in itertools.pairwise(v)))
    ]
    if killed:
        stalls.append(f"instance(s) {killed} did not exit after the window: killed")
    entry["note"] = "; ".join(stalls) or None
    if bad:
        said = " / ".join(outputs[bad[0]].strip().splitlines()[-3:])
        entry["error"] = f"instance {bad[0]} exited {codes[bad[0]]}: {said[:240]}"
    elif any(v != sorted(v) for v in views):
        entry["error"] = "an instance saw its counter go back"
    else:  # one key: the shared counter's growth, as the latest view saw it
        entry["increments"] = (max if len(set(keys)) == 1 else sum)(v[-1] for v in views)
        entry["rate"] = entry["increments"] / seconds
    return entry


# -- ctdb.client in worker processes ------------------------------------------------------


def _tell(conn: Connection, message: dict[str, Any]) -> None:
    try:
        conn.send(message)
    except OSError:  # the parent gave up on us
        pass


def worker(
    socket: str, db: str, key: bytes, in_place: bool, seconds: float, conn: Connection
) -> None:
    """One client process: connect, say ready, wait for the start time, loop, report."""
    try:
        client = Client(socket, timeout=GRACE, in_place=in_place)
    except Exception as exc:
        _tell(conn, {"error": f"connect: {exc}"})
        return
    try:
        conn.send({"ready": True})
        start: float = conn.recv()
        time.sleep(max(0.0, start - time.monotonic()))
        deadline = start + seconds
        count, every, errors = 0, 1, 0
        sample: list[int] = []
        clock = time.perf_counter_ns
        while time.monotonic() < deadline:
            try:
                t0 = clock()
                value = client.fetch_lock(db, key)
                held = clock()
                client.store_unlock(db, key, b"%d" % (int(value or b"0") + 1))
            except CtdbError as exc:
                if exc.code not in TRANSIENT:
                    raise
                errors += 1
                continue
            count += 1
            if count % every == 0:
                sample.append(held - t0)
                if len(sample) >= SAMPLE_LIMIT:
                    del sample[1::2]
                    every *= 2
        elapsed = time.monotonic() - start
        _tell(conn, {"count": count, "elapsed": elapsed, "sample_ns": sample, "errors": errors})
    except EOFError:  # the parent gave up before the start
        pass
    except Exception as exc:
        _tell(conn, {"error": f"{type(exc).__name__}: {exc}"})
    finally:
        client.close()


def calls_sent(cluster: LocalCluster) -> int:
    """Record migrations the nodes started so far (each node's `calls_sent`)."""
    total = 0
    for pnn in range(cluster.size):
        with cluster.client(pnn) as c:
            total += int(c.call("statistics").get("calls_sent", 0))
    return total


def run_python(
    cluster: LocalCluster, db: str, keys: list[str], seconds: int, in_place: bool
) -> dict[str, Any]:
    """One process per client (spawned: no shared GIL), all starting at once."""
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    results: list[dict[str, Any]] = []
    try:
        for i, key in enumerate(keys):
            ours, theirs = ctx.Pipe()
            args = (cluster.socket(i % NODES), db, key.encode(), in_place, seconds, theirs)
            procs.append(ctx.Process(target=worker, args=args, daemon=True))
            pipes.append(ours)
            procs[-1].start()
            theirs.close()
        replies: list[dict[str, Any]] = [
            p.recv() if p.poll(GRACE) else {"error": "no answer"} for p in pipes
        ]
        failed = [r["error"] for r in replies if "error" in r]
        if failed:
            return {"rate": None, "error": failed[0]}
        before = calls_sent(cluster)
        start = time.monotonic() + 0.2
        for p in pipes:
            p.send(start)
        results += [p.recv() if p.poll(seconds + GRACE) else {"error": "timed out"} for p in pipes]
        calls = calls_sent(cluster) - before
    finally:
        for pipe in pipes:
            pipe.close()  # a worker still waiting for its start time gives up
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
    failed = [r["error"] for r in results if "error" in r]
    if failed:
        return {"rate": None, "error": failed[0]}
    counts = [r["count"] for r in results]
    total = sum(counts)
    with cluster.client(0) as c:
        finals = {k: int(c.fetch(db, k) or b"0") for k in set(keys)}
    wanted = {k: sum(n for key, n in zip(keys, counts, strict=True) if key == k) for k in finals}
    sample = [x / 1000 for r in results for x in r["sample_ns"]]
    return {
        "rate": total / max(r["elapsed"] for r in results),
        "acquisitions": total,
        "per_client": counts,
        "fairness": min(counts) / max(counts) if max(counts) else 0.0,
        "migrations_per_acquisition": calls / total if total else None,
        "p50_us": pct(sample, 50),
        "p99_us": pct(sample, 99),
        "latency_samples": len(sample),
        "counters": finals,
        "counter_ok": finals == wanted,
        "transient_errors": sum(r["errors"] for r in results),
    }


# -- the run ----------------------------------------------------------------------------


def start_clusters(workdir: Path) -> tuple[SambaCluster, LocalCluster]:
    """Samba's ctdbd and pyctdb (tcp), 3 nodes each, started side by side."""
    base = random_base()
    cluster = LocalCluster(
        workdir / "pyctdb",
        size=NODES,
        transport="tcp",
        port=free_port([f"{base}.{i + 1}" for i in range(NODES)]),
        base=base,
        log_level="WARNING",
    )

    def pyctdb_up() -> LocalCluster:
        try:
            cluster.up(timeout=90)
        except BaseException:
            cluster.down()
            raise
        return cluster

    pool = concurrent.futures.ThreadPoolExecutor(2)
    samba_f = pool.submit(SambaCluster.start, workdir / "samba", NODES)
    pyctdb_f = pool.submit(pyctdb_up)
    try:
        return samba_f.result(), pyctdb_f.result()
    except BaseException:
        pool.shutdown(wait=True)  # then stop whichever came up
        for f in (samba_f, pyctdb_f):
            if f.exception() is None:
                f.result().down()
        raise
    finally:
        pool.shutdown(wait=False)


def measure_one(
    row: str, samba: SambaCluster, cluster: LocalCluster, keys: list[str], seconds: int, tag: str
) -> dict[str, Any]:
    db = f"inplace_{tag}.tdb"
    if row == BASELINE:
        samba.attach(db)
        for key in set(keys):
            samba.ctdb(0, "writekey", db, key, "0x00000000")
        sockets = [samba.socket(i % NODES) for i in range(len(keys))]
        return run_program(sockets, db, keys, seconds)
    with cluster.client(0) as c:
        c.attach(db)
        for key in set(keys):
            c.store(db, key, b"\0\0\0\0" if row == SAMBA_CLIENT else b"0")
    if row == SAMBA_CLIENT:
        before = calls_sent(cluster)
        doors = [cluster.node_dir(i % NODES) / CTDB_SOCKET_NAME for i in range(len(keys))]
        entry = run_program(doors, db, keys, seconds)
        if entry.get("increments"):
            entry["migrations_per_acquisition"] = (calls_sent(cluster) - before) / entry[
                "increments"
            ]
        return entry
    return run_python(cluster, db, keys, seconds, in_place=row == IN_PLACE)


def log_errors(paths: list[Path], pattern: str) -> dict[str, Any]:
    """How many log lines match `pattern`, and the first few."""
    found: list[str] = []
    for path in paths:
        if path.exists():
            found += [
                f"{path.parent.name}: {line}"
                for line in path.read_text(errors="replace").splitlines()
                if re.search(pattern, line)
            ]
    return {"count": len(found), "first": found[:5]}


def measure(ns: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """(workload, clients) -> row -> one entry per round."""
    say("starting Samba's ctdbd and pyctdb over tcp (3 nodes each)")
    samba, cluster = start_clusters(workdir)
    configs = [(w, n) for w in WORKLOADS for n in ns.clients]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        f"{w}/{n}": {row: [] for row in ROWS} for w, n in configs
    }
    try:
        say("both clusters are up")
        for r in range(ns.rounds):
            for c, (workload, clients) in enumerate(configs):
                shift = (r + c) % len(ROWS)
                for row in ROWS[shift:] + ROWS[:shift]:
                    tag = f"r{r}_{workload.split()[0]}_{clients}c_{ROWS.index(row)}"
                    started = time.monotonic()
                    try:
                        entry = measure_one(
                            row, samba, cluster, keys_for(workload, clients), ns.seconds, tag
                        )
                    except Exception as exc:  # reported, not fatal
                        entry = {"rate": None, "error": f"{type(exc).__name__}: {exc}"}
                    entry.update(round=r + 1, wall_s=round(time.monotonic() - started, 2))
                    runs[f"{workload}/{clients}"][row].append(entry)
                    shown = entry.get("error") or f"{entry['rate']:,.0f}/s"
                    say(f"round {r + 1}: {workload}, {clients} clients, {row}: {shown}")
        logs = {
            "samba ctdbd": log_errors([samba.log_path(p) for p in range(NODES)], r"ERROR"),
            "pyctdb": log_errors([cluster.log_path(p) for p in range(NODES)], r"ERROR|CRITICAL"),
        }
    finally:
        say("stopping the clusters")
        cluster.down()
        samba.down()
    return {"runs": runs, "daemon_log_errors": logs}


def _median(entries: list[dict[str, Any]], field: str) -> float | None:
    values = [e[field] for e in entries if e.get(field) is not None]
    return statistics.median(values) if values else None


def summarize(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    table: list[dict[str, Any]] = []
    for config, rows in runs.items():
        workload, clients = config.split("/")
        baseline = _median(rows[BASELINE], "rate")
        for row, entries in rows.items():
            rate = _median(entries, "rate")
            checks = [e["counter_ok"] for e in entries if "counter_ok" in e]
            table.append(
                {
                    "workload": workload,
                    "clients": int(clients),
                    "row": row,
                    "rate": rate,
                    "ratio_to_samba": rate / baseline if rate is not None and baseline else None,
                    "migrations_per_acquisition": _median(entries, "migrations_per_acquisition"),
                    "fairness": _median(entries, "fairness"),
                    "p50_us": _median(entries, "p50_us"),
                    "p99_us": _median(entries, "p99_us"),
                    "counter_ok": all(checks) if checks else None,
                    "rounds_failed": sum(e["rate"] is None for e in entries),
                    "errors": sorted({e["error"] for e in entries if e.get("error")}),
                    "notes": [f"round {e['round']}: {e['note']}" for e in entries if e.get("note")],
                }
            )
    return table


def _fmt(value: float | None, spec: str = ",.0f", none: str = "n/m") -> str:
    return none if value is None else format(value, spec)


def write_summary(path: Path, r: dict[str, Any]) -> None:
    m = r["machine"]
    lines = [
        "# Records in place: ctdb.client against Samba's ctdbd (issue 13)",
        "",
        f"{r['started']} - {NODES} nodes each - {r['seconds']} s windows, {r['rounds']} rounds "
        f"(median) - {m['cpus']} CPUs ({m['cpu']}), Python {m['python']}, "
        f"commit {m.get('git_commit', '')[:7]}",
        "",
        f"Command: `{r['command']}`",
        "",
        *load_warning(m),
        "Increments/s (fetch_lock, +1, store_unlock); ratios to Samba's ctdbd with its own "
        "client in the same configuration. n/m: not measured (fetch_loop_key prints only "
        "its counter). Migrations/acq: the daemons' `calls_sent` per increment (well below 1: "
        "a node's clients use the record many times between migrations). Fairness: min/max "
        "of the per-client counts. Counter ok: every counter ends at the increments "
        "acknowledged. Latency: the fetch_lock call.",
        "",
        "| workload | clients | row | incr/s | x ctdbd | migrations/acq | fairness "
        "| p50 / p99 us | counter ok |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["summary"]:
        rate = "failed" if x["rate"] is None else _fmt(x["rate"])
        if x["rounds_failed"] and x["rate"] is not None:
            rate += f" ({x['rounds_failed']} failed)"
        lines.append(
            f"| {x['workload']} | {x['clients']} | {x['row']} | {rate} "
            f"| {_fmt(x['ratio_to_samba'], '.3g', '-')} "
            f"| {_fmt(x['migrations_per_acquisition'], '.2g')} | {_fmt(x['fairness'], '.2f')} "
            f"| {_fmt(x['p50_us'], '.0f')} / {_fmt(x['p99_us'], '.0f')} "
            f"| {'n/m' if x['counter_ok'] is None else str(x['counter_ok']).lower()} |"
        )
    errors = [
        f"* {x['workload']}, {x['clients']}, {x['row']}: {e}"
        for x in r["summary"]
        for e in x["errors"]
    ]
    notes = [
        f"* {x['workload']}, {x['clients']}, {x['row']}: {n}"
        for x in r["summary"]
        for n in x["notes"]
    ]
    logs = r["daemon_log_errors"]
    lines += ["", "Failures: " + ("none." if not errors else ""), *errors, ""]
    lines += ["Notes (not failures): " + ("none." if not notes else ""), *notes, ""]
    lines += [f"Daemon log lines with errors: {d} {v['count']}." for d, v in logs.items()]
    lines.append("")
    path.write_text("\n".join(lines))


def plot(path: Path, r: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(WORKLOADS), figsize=(12, 4.6), sharey=True)
    colors = ["tab:gray", "tab:purple", "tab:green", "tab:orange"]
    width = 0.8 / len(ROWS)
    for ax, workload in zip(axes, WORKLOADS, strict=True):
        xs = [x for x in r["summary"] if x["workload"] == workload]
        clients = sorted({x["clients"] for x in xs})
        for j, (row, color) in enumerate(zip(ROWS, colors, strict=True)):
            got = {x["clients"]: x for x in xs if x["row"] == row}
            pos = [i + (j - 1.5) * width for i in range(len(clients))]
            bars = ax.bar(pos, [got[n]["rate"] or 0.0 for n in clients], width, color=color)
            bars.set_label(row)
            labels = [_fmt(got[n]["ratio_to_samba"], ".2g", "fail") + "x" for n in clients]
            ax.bar_label(bars, labels=labels, fontsize=7, rotation=90, padding=2)
        ax.set_yscale("log")
        ax.set_ylim(top=max(x["rate"] or 1.0 for x in r["summary"]) * 20)
        ax.set_xticks(range(len(clients)), [f"{n} client{'s' * (n > 1)}" for n in clients])
        ax.set_title(workload)
        ax.set_ylabel("increments/s (log); ratio to samba ctdbd")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(ROWS), fontsize=8)
    fig.suptitle(f"fetch_lock +1 store_unlock, 3 nodes, median of {r['rounds']} ({r['started']})")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(ns: argparse.Namespace) -> dict[str, Any]:
    if not samba_available():
        raise SystemExit("Samba's ctdbd and ctdb are needed as the baseline (Debian: ctdb)")
    if ctdb_test_programs.program("fetch_loop_key") is None:
        raise SystemExit("fetch_loop_key is not built; run tools/build_ctdb_tests.sh")
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    load_at_start = list(os.getloadavg())
    workdir = Path(tempfile.mkdtemp(prefix="ctdb-bench-in-place-"))
    try:
        measured = measure(ns, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "started": started,
        "command": " ".join(["python -m bench.in_place", *sys.argv[1:]]),
        "seconds": ns.seconds,
        "rounds": ns.rounds,
        "clients": list(ns.clients),
        "quick": ns.quick,
        "nodes": NODES,
        "rows": list(ROWS),
        "machine": {**machine_info(), "loadavg_at_start": load_at_start},
        **measured,
        "summary": summarize(measured["runs"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = report.parser("in_place", __doc__)
    parser.add_argument("--seconds", type=int, default=5, help="window of each measurement (5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, median reported (3)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 s windows, 1 round, 1 and 3 clients"
    )
    ns = parser.parse_args(argv)
    ns.clients = (1, 3, 6)
    if ns.quick:
        ns.seconds, ns.rounds, ns.clients = 1, 1, (1, 3)
    r = run(ns)
    report.write(ns.out, "in_place", r, write_summary, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
