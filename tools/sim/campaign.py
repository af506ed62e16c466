"""Many schedules: sequentially or in worker processes, with a progress bar
and a summary (schedules per second, faults injected per kind, failures).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

from tools.sim.cluster import remove_files
from tools.sim.schedule import DEFAULT_VARIANT, Outcome, Variant, simulate


@dataclass
class Result:
    """What a worker sends back: an outcome without its (long) trace."""

    seed: int
    violations: list[str]
    faults: Counter[str]
    ops: int
    failed: int
    virtual_time: float
    strict: bool


@dataclass
class Summary:
    mode: str
    schedules: int = 0
    seconds: float = 0.0
    faults: Counter[str] = field(default_factory=Counter)
    ops: int = 0
    failed_ops: int = 0
    virtual_time: float = 0.0
    strict: int = 0
    failures: list[Result] = field(default_factory=list)

    def add(self, result: Result) -> None:
        self.schedules += 1
        self.strict += result.strict
        self.faults.update(result.faults)
        self.ops += result.ops
        self.failed_ops += result.failed
        self.virtual_time += result.virtual_time
        if result.violations:
            self.failures.append(result)

    def report(self, jobs: int) -> str:
        rate = self.schedules / self.seconds if self.seconds else 0.0
        lines = [
            f"{self.schedules} schedules ({self.mode}) in {self.seconds:.1f}s: "
            f"{rate:.1f} schedules/s with {jobs} job(s) ({rate / jobs:.1f}/s per job), "
            f"{self.virtual_time:.0f} virtual seconds; {self.strict} drew only faults "
            "that may lose nothing",
            f"client operations: {self.ops} completed, {self.failed_ops} failed with an error",
            "faults injected: "
            + ", ".join(f"{kind} {n}" for kind, n in sorted(self.faults.items())),
            f"failed schedules: {len(self.failures)}",
        ]
        for result in sorted(self.failures, key=lambda r: r.seed):
            first = result.violations[0].splitlines()[0]
            more = f" (+{len(result.violations) - 1} more)" if len(result.violations) > 1 else ""
            lines.append(f"  seed {result.seed}: {first}{more}")
        return "\n".join(lines)


def _run(job: tuple[int, str, dict[str, int] | None, Variant]) -> Result:
    seed, mode, kinds, variant = job
    outcome: Outcome = simulate(seed, mode, kinds, variant=variant)
    return Result(
        seed,
        outcome.violations,
        outcome.faults,
        outcome.ops,
        outcome.failed,
        outcome.virtual_time,
        outcome.strict,
    )


def _worker_init() -> None:
    logging.basicConfig(level=logging.CRITICAL)
    logging.getLogger().setLevel(logging.CRITICAL)
    # Ctrl-C is for the parent, which stops the pool and prints its summary;
    # the pool stops workers with SIGTERM, and they leave no files behind.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop_worker)


def _stop_worker(signum: int, frame: object) -> None:
    remove_files()
    os._exit(1)


def results(
    seeds: Iterable[int],
    mode: str,
    kinds: dict[str, int] | None,
    jobs: int,
    variant: Variant = DEFAULT_VARIANT,
) -> Iterator[Result]:
    work = ((seed, mode, kinds, variant) for seed in seeds)
    if jobs <= 1:
        yield from map(_run, work)
        return
    # fork: workers inherit the imported modules; each schedule is independent.
    pool = multiprocessing.get_context("fork").Pool(jobs, initializer=_worker_init)
    try:
        yield from pool.imap_unordered(_run, work, chunksize=4)
        # Done: let the workers finish on their own. The pool's __exit__
        # would terminate them, and a worker signalled while it waited for
        # the task queue's lock once stayed there, with the campaign
        # joining it for ever.
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


#: Set to stop a running campaign after the schedules in progress (see
#: `tools.simulate`): a KeyboardInterrupt raised at a random point can land
#: in a weakref callback or a destructor, where Python prints and drops it.
STOP = threading.Event()


def campaign(
    seeds: range,
    mode: str,
    *,
    kinds: dict[str, int] | None = None,
    jobs: int = 1,
    variant: Variant = DEFAULT_VARIANT,
    progress: TextIO | None = sys.stderr,
) -> Summary:
    summary = Summary(mode)
    started = time.perf_counter()
    total = len(seeds)
    try:
        work = results(seeds, mode, kinds, jobs, variant)
        _collect(summary, work, total, started, progress)
    except KeyboardInterrupt:
        # Stopped early: what ran so far still deserves its summary.
        remove_files()  # of a schedule cut short in this process (--jobs 1)
        if progress is not None:
            progress.write("\ninterrupted\n")
    summary.seconds = time.perf_counter() - started
    return summary


def _collect(
    summary: Summary,
    results: Iterator[Result],
    total: int,
    started: float,
    progress: TextIO | None,
) -> None:
    for done, result in enumerate(results, 1):
        summary.add(result)
        if STOP.is_set():
            raise KeyboardInterrupt
        if result.violations and progress is not None:
            first = result.violations[0].splitlines()[0]
            progress.write(f"\rseed {result.seed}: FAILED: {first}\n")
        if progress is not None and (done % 10 == 0 or done == total):
            elapsed = time.perf_counter() - started
            width = 30
            filled = width * done // total
            progress.write(
                f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
                f"{done / elapsed:.1f}/s, {len(summary.failures)} failed "
            )
            progress.flush()
    if progress is not None:
        progress.write("\n")
