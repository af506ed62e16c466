"""bench.foundation, this checkout against an older revision: paired rounds, paired ratios.

Issue 8 asks that its fixes cost no speed "beyond noise" in bench.foundation.
On a shared 2-core machine one run of it differs from the next by a fifth or
more (the host's other work; over vs, corosync's token, which takes a CPU
of its own while messages flow), so two runs made at different times say
little. This runs each checkout's own `python -m bench.foundation` (a
worktree of `--base`, then this checkout: each drives its own client and
daemons, and the parts measured are the same in both) alternately,
`--rounds` times, the first of each round alternating, over vs on one
corosync (`bench.checkouts` says why), and compares every figure round by
round:

* speed, head against base, per round: rates head/base, times base/head,
  so that above 1 the head is faster; the median over the rounds (and the
  geometric mean, whose side of 1 is what the test below tests);
* a paired sign-flip test of the log ratios: how often a sum at least as far
  from 0 comes out when, in every round, which checkout ran as which is a
  coin toss. Exact over every sign pattern up to 12 rounds, else 20,000
  seeded draws. With n rounds the smallest p is 2 / 2**n: it takes 6
  rounds to tell anything at p < 0.05.

A figure slower with p < 0.05 is reported as a regression, faster with
p < 0.05 as faster, and otherwise as within noise. Nothing here asserts.

`--busy N` keeps N CPUs busy (one spinning process each) throughout, for
both checkouts alike: a host with no CPU to spare, made on purpose rather
than found. The vs ring is at par with b7714d4 where a CPU is free and
slower where none is (the README's performance history), and a figure
measured on a machine whose load nobody chose says neither.

    .venv/bin/python -m bench.regression [--base REV] [--transport tcp|vs]
        [--rounds 8] [--quick] [--busy N] [--address 127.0.79] [--out DIR]

Writes results.json, regression.png and summary.md into --out; progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import checkouts, report

say = report.progress("regression")

#: above this many rounds the sign patterns are sampled, not enumerated
EXACT_ROUNDS = 12
SAMPLED_PATTERNS = 20_000
SIGNIFICANT = 0.05
#: the first line of summary.md
TITLE = "bench.foundation: this checkout against an older revision"


def speed_ratio(figure: str, base: float, head: float) -> float:
    """How much faster the head is on `figure`: rates (`*_per_s`) head/base,
    times base/head."""
    return head / base if figure.endswith("_per_s") else base / head


def sign_flip_p(ratios: list[float]) -> float:
    """Two-sided p of a paired sign-flip test on log(ratios) (see the module docstring)."""
    logs = [math.log(r) for r in ratios]
    observed = abs(sum(logs)) - 1e-12  # (a pattern that ties counts as at least as far)
    if len(logs) <= EXACT_ROUNDS:
        patterns: Any = itertools.product((1, -1), repeat=len(logs))
        total = 2 ** len(logs)
    else:
        rng = random.Random(0)
        patterns = ([rng.choice((1, -1)) for _ in logs] for _ in range(SAMPLED_PATTERNS))
        total = SAMPLED_PATTERNS
    extreme = sum(
        abs(sum(s * x for s, x in zip(signs, logs, strict=True))) >= observed for signs in patterns
    )
    return extreme / total


def verdict(geomean_ratio: float, p: float) -> str:
    """By the direction the test measured (the mean log ratio), if significant."""
    if p >= SIGNIFICANT:
        return "within noise"
    return "faster" if geomean_ratio > 1 else "regression"


def compare(samples: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Every figure both checkouts reported in every round, round by round."""
    rounds = list(zip(samples["base"], samples["head"], strict=True))
    common = set.intersection(*(set(b) & set(h) for b, h in rounds))
    out: dict[str, dict[str, Any]] = {}
    for figure in sorted(common):
        pairs = [(b[figure], h[figure]) for b, h in rounds]
        if not all(b > 0 and h > 0 for b, h in pairs):
            continue  # a figure a run could not measure: nothing to compare
        ratios = [speed_ratio(figure, b, h) for b, h in pairs]
        geomean = statistics.geometric_mean(ratios)
        p = sign_flip_p(ratios)
        out[figure] = {
            "kind": "rate" if figure.endswith("_per_s") else "time",
            "base_median": statistics.median(b for b, _ in pairs),
            "head_median": statistics.median(h for _, h in pairs),
            "speed_ratios": ratios,
            "speed_ratio_median": statistics.median(ratios),
            "speed_ratio_geomean": geomean,
            "p": p,
            "verdict": verdict(geomean, p),
        }
    return out


@contextlib.contextmanager
def cpu_hogs(count: int) -> Iterator[list[int]]:
    """`count` processes that each keep a CPU busy until the block ends: their pids."""
    spin = "while True:\n    pass"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(count)]
    try:
        yield [proc.pid for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def _foundation(tree: Path, ns: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One `python -m bench.foundation` of the checkout in `tree`: its results."""
    cmd = [sys.executable, "-m", "bench.foundation", "--transport", ns.transport]
    cmd += ["--base", ns.address, "--out", str(out)] + (["--quick"] if ns.quick else [])
    proc = subprocess.run(
        cmd,
        cwd=tree,
        env=dict(os.environ, PYTHONPATH=str(tree)),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench.foundation of {tree} failed:\n{proc.stderr[-3000:]}")
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    return results


def run(ns: argparse.Namespace, base: str) -> dict[str, Any]:
    """`ns.rounds` paired rounds against revision `base` (a short commit id)."""
    record = {**checkouts.run_record("regression", ns, base), "busy_cpus": ns.busy}
    say(f"worktree of {base} (base) beside this checkout ({record['head']}), {ns.rounds} rounds")
    samples: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
    loads: dict[str, list[float]] = {"base": [], "head": []}
    with contextlib.ExitStack() as stack:
        if ns.transport == "vs":
            stack.enter_context(checkouts.shared_corosync(say))
        trees = {"base": stack.enter_context(checkouts.worktree(base)), "head": checkouts.REPO}
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ctdb-regr-")))
        if ns.busy:
            hogs = stack.enter_context(cpu_hogs(ns.busy))
            say(f"{ns.busy} CPU(s) kept busy throughout (pids {', '.join(map(str, hogs))})")
        for r in range(ns.rounds):
            for name in ("base", "head") if r % 2 == 0 else ("head", "base"):
                results = _foundation(trees[name], ns, scratch / f"{name}-{r}")
                figures = {
                    k: float(v)
                    for k, v in results["figures"].items()
                    if isinstance(v, int | float)  # (a figure a run could not measure: None)
                }
                samples[name].append(figures)
                loads[name].append(float(results["machine"]["loadavg"][0]))
                say(
                    f"round {r + 1}/{ns.rounds} {name}: "
                    f"ring {figures.get('ring_increments_per_s', 0):,.0f}/s, "
                    f"store 8c {figures.get('store_8c_per_s', 0):,.0f}/s, "
                    f"fetch 8c {figures.get('fetch_8c_per_s', 0):,.0f}/s"
                )
    return {
        **record,
        "loadavg_at_end": os.getloadavg()[0],
        "loadavg_after_each_run": loads,
        "samples": samples,
        "comparison": compare(samples),
    }


def write_summary(path: Path, results: dict[str, Any]) -> None:
    busy = results.get("busy_cpus", 0)
    hogs = [f"{busy} CPU(s) kept busy throughout by spinning processes (`--busy`).", ""]
    lines = [
        *checkouts.summary_head(TITLE, results),
        *(hogs if busy else []),
        "| figure | base (median) | head (median) | head's speed (median) | p | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for figure, c in results["comparison"].items():
        lines.append(
            f"| {figure} | {c['base_median']:.4g} | {c['head_median']:.4g} "
            f"| {c['speed_ratio_median']:.3f}x | {c['p']:.3f} | {c['verdict']} |"
        )
    lines += [
        "",
        "Speed: rates head/base, times base/head, per round; above 1.000x the head is faster. "
        "p: paired sign-flip test over the rounds (the smallest possible is "
        f"{2 / 2 ** results['rounds']:.3f} with {results['rounds']} rounds); a figure is a "
        f"regression or faster only at p < {SIGNIFICANT}.",
        "",
    ]
    path.write_text("\n".join(lines))


def plot(path: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = list(results["comparison"])
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(figures)), 5))
    colours = {"regression": "tab:red", "faster": "tab:green", "within noise": "tab:gray"}
    for x, figure in enumerate(figures):
        c = results["comparison"][figure]
        ax.scatter([x] * len(c["speed_ratios"]), c["speed_ratios"], s=12, color="tab:blue")
        ax.scatter([x], [c["speed_ratio_median"]], marker="_", s=400, color=colours[c["verdict"]])
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(figures)), figures, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("head's speed against base, per round (log)")
    ax.set_title(
        f"bench.foundation over {results['transport']}: {results['head']} against "
        f"{results['base']}, {results['rounds']} paired rounds (bar: median, red: regression)",
        fontsize=10,
    )
    report.save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = report.parser("regression", __doc__)
    p.add_argument(
        "--base",
        default=checkouts.DEFAULT_BASE,
        help=f"revision to compare ({checkouts.DEFAULT_BASE}, before issue 8's fixes)",
    )
    p.add_argument("--transport", choices=["tcp", "vs"], default="tcp", help="(tcp)")
    p.add_argument("--rounds", type=int, default=8, help="paired rounds (8)")
    p.add_argument("--quick", action="store_true", help="bench.foundation --quick in every run")
    p.add_argument(
        "--busy",
        type=int,
        default=0,
        metavar="N",
        help="keep N CPUs busy throughout, for both checkouts alike: a host with no CPU "
        "to spare (0)",
    )
    p.add_argument(
        "--address",
        default="127.0.79",
        help="first three octets of the clusters' node addresses (127.0.79)",
    )
    ns = p.parse_args(argv)
    if ns.rounds < 1:
        p.error("--rounds must be at least 1")
    if not 0 <= ns.busy <= (os.cpu_count() or 1):
        p.error(f"--busy must be between 0 and the {os.cpu_count()} CPUs of this machine")
    try:
        base = checkouts.short_rev(ns.base)
    except ValueError as exc:
        p.error(str(exc))
    results = run(ns, base)
    report.write(ns.out, "regression", results, write_summary, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
