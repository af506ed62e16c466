"""Run seeded fault schedules of the cluster logic on the simulated network.

`python -m tools.simulate --mode tcp --seeds 0:500` runs 500 schedules and
prints each failing seed with what was violated; `--seed N -v` replays one
schedule exactly and prints its event trace.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from ctdb.simulation import Outcome, simulate


def _seeds(text: str) -> range:
    start, _, stop = text.partition(":")
    return range(int(start), int(stop)) if stop else range(int(start), int(start) + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.simulate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["tcp", "vs"], default="tcp",
                        help="tcp: point-to-point engine; vs: total-order engine")
    parser.add_argument("--seeds", type=_seeds, default=range(0, 100),
                        help="START:STOP (default 0:100)")
    parser.add_argument("--seed", type=int, help="replay this one seed")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the event trace")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if ns.verbose else logging.CRITICAL)
    seeds = range(ns.seed, ns.seed + 1) if ns.seed is not None else ns.seeds
    failed: list[Outcome] = []
    started = time.perf_counter()
    for i, seed in enumerate(seeds, 1):
        outcome = simulate(seed, ns.mode)
        if ns.verbose:
            print("\n".join(outcome.trace))
        if not outcome.ok:
            failed.append(outcome)
            print(f"seed {seed}: FAILED: {'; '.join(outcome.violations)}", flush=True)
        if i % 50 == 0:
            print(f"{i}/{len(seeds)} schedules, {len(failed)} failed", file=sys.stderr, flush=True)
    print(f"{len(seeds)} schedules ({ns.mode}) in {time.perf_counter() - started:.1f}s: "
          f"{len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
