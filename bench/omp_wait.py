"""Two-thread ANP runs side by side, with OpenMP's waiting threads spinning or sleeping.

    python -m bench.omp_wait               # writes the table into docs/suite.md
    python -m bench.omp_wait --iterations 40

Why: the test suite runs on two workers (pytest-xdist), each torch process on two threads (the
claims reproduce bit for bit on two). With OpenMP's default wait policy a thread that reaches a
barrier first spins, taking the core the other process needs. This measures ANP on the showcase
sample, in fresh processes: alone, two at once spinning (the default), two at once with
``OMP_WAIT_POLICY=PASSIVE``; and checks the masks are the same in every case. Idle cores only:
the numbers are wall seconds of this machine in this one run.

The same question for a dashboard run's worker, which runs at nice 10 beside the Streamlit server
and the browser: one ANP process at nice 10 beside a light, bursty load at normal priority (one
thread, 30 ms of work every 100 ms, about what a page redrawing its live charts costs), spinning
and sleeping.

Two hypotheses of the suite's time (docs/suite.md), each refuted or not by its rows: a short spin
(``GOMP_SPINCOUNT``, libgomp's spin before it sleeps) keeps spinning's speed alone without its cost
beside a second process; and one thread for the tests that reproduce no recorded claim would leave
a two-thread claim beside them more of the cores than a second two-thread process does.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from . import write_between

DOC = Path(__file__).resolve().parent.parent / "docs" / "suite.md"
START, END = "<!-- omp_wait table: python -m bench.omp_wait -->", "<!-- end omp_wait table -->"

CHILD = """
import os, sys, time, torch
if len(sys.argv) > 2:
    os.nice(int(sys.argv[2]))
torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
from sample_models import load_sample
from defenses.readers.data import load_dataset
from defenses.methods.anp import ANP, ANPConfig
d, s = load_dataset("mnist5k"), load_sample("cnn_badnets_centre")
t = time.perf_counter()
r = ANP(ANPConfig(iterations=int(sys.argv[1]))).run(s.model, d.clean)
print(time.perf_counter() - t, float(sum(v.double().sum() for v in r.scores.values())))
"""


# One thread busy 30 ms in every 100 ms, until killed: a page redrawing its charts, roughly.
LOAD = """
import time
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < 0.03:
        sum(i * i for i in range(1000))
    time.sleep(0.07)
"""


class Case(NamedTuple):
    label: str
    threads: tuple[int, ...]  # one ANP process per entry, with that many torch threads
    policy: str | None = None  # OMP_WAIT_POLICY; None: libgomp's default (spin, then sleep)
    spincount: int | None = None  # GOMP_SPINCOUNT
    nice: int | None = None
    load: bool = False  # beside the light, bursty load


def _runs(case: Case, iterations: int) -> tuple[list[float], list[float], float]:
    """The case's ANP processes started together: each one's ANP seconds and mask sum, and the wall time."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if case.policy:
        env["OMP_WAIT_POLICY"] = case.policy
    if case.spincount is not None:
        env["GOMP_SPINCOUNT"] = str(case.spincount)
    background = subprocess.Popen([sys.executable, "-c", LOAD]) if case.load else None
    t0 = time.perf_counter()
    args = [str(iterations)] + ([str(case.nice)] if case.nice is not None else [])
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, *args], env={**env, "BENCH_THREADS": str(t)},
                              stdout=subprocess.PIPE, text=True) for t in case.threads]
    outs = [p.communicate()[0].split() for p in procs]
    wall = time.perf_counter() - t0
    if background is not None:
        background.kill()
        background.wait()
    if any(p.returncode for p in procs):
        raise SystemExit("an ANP process failed")
    return [float(o[0]) for o in outs], [float(o[1]) for o in outs], wall


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=40)
    args = p.parse_args(argv)
    two = (2, 2)
    cases = [Case("alone, spinning (the default)", (2,)),
             Case("alone, sleeping (PASSIVE)", (2,), "PASSIVE"),
             Case("two at once, spinning (the default)", two),
             Case("two at once, sleeping (PASSIVE)", two, "PASSIVE"),
             Case("a worker (nice 10) beside a light load, spinning", (2,), nice=10, load=True),
             Case("a worker (nice 10) beside a light load, sleeping (PASSIVE)", (2,), "PASSIVE", nice=10, load=True),
             Case("two workers (nice 10) beside a light load, spinning", two, nice=10, load=True),
             Case("two workers (nice 10) beside a light load, sleeping (PASSIVE)", two, "PASSIVE", nice=10, load=True),
             Case("two at once, a short spin (GOMP_SPINCOUNT=1000)", two, spincount=1000),
             Case("two at once, a short spin (GOMP_SPINCOUNT=10000)", two, spincount=10000),
             Case("one thread alone, sleeping (PASSIVE)", (1,), "PASSIVE"),
             Case("two threads beside one thread, sleeping (PASSIVE)", (2, 1), "PASSIVE"),
             Case("one thread beside one thread, sleeping (PASSIVE)", (1, 1), "PASSIVE")]
    rows, sums = [], {}
    for case in cases:
        secs, mask_sums, wall = _runs(case, args.iterations)
        for t, m in zip(case.threads, mask_sums):
            sums.setdefault(t, set()).add(round(m, 6))
        rows.append((case, secs, wall))
        print(case.label, [round(s, 1) for s in secs], round(wall, 1), flush=True)
    alone = rows[0][1][0]
    if all(len(v) == 1 for v in sums.values()):  # one sum per thread count; another count sums in another order
        masks = "the same in every case of the same thread count (sums: " + ", ".join(
            f"{t} thread{'s' * (t != 1)} {min(v):.6f}" for t, v in sorted(sums.items())) + ")"
    else:
        masks = f"NOT the same: {sums}"
    lines = [START, "",
             f"ANP, {args.iterations} iterations on `cnn_badnets_centre`, two torch threads per process unless the row "
             f"says one, one run of `python -m bench.omp_wait` on idle cores ({os.cpu_count()} here). "
             f"The masks were {masks}.",
             "", "| processes | ANP seconds, each | the two-thread run vs alone | wall for all |", "|---|---|---|---|"]
    for case, secs, wall in rows:
        two_thread = [s for t, s in zip(case.threads, secs) if t == 2]
        ratio = f"{max(two_thread) / alone:.2f}x" if two_thread else "-"
        lines.append(f"| {case.label} | {', '.join(f'{s:.1f}' for s in secs)} | {ratio} | {wall:.1f} s |")
    lines += ["", END]
    table = "\n".join(lines)
    write_between(DOC, START, END, table)
    print(table)
    return table


if __name__ == "__main__":
    main()
