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
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "suite.md"
START, END = "<!-- omp_wait table: python -m bench.omp_wait -->", "<!-- end omp_wait table -->"

CHILD = """
import os, sys, time, torch
if len(sys.argv) > 2:
    os.nice(int(sys.argv[2]))
torch.set_num_threads(2)
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


def _runs(n: int, iterations: int, policy: str | None, nice: int | None = None,
          load: bool = False) -> tuple[list[float], list[float], float]:
    """``n`` ANP processes started together (at ``nice``, beside the light ``load`` when asked):
    each one's ANP seconds and mask sum, and the wall time."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    background = subprocess.Popen([sys.executable, "-c", LOAD]) if load else None
    t0 = time.perf_counter()
    args = [str(iterations)] + ([str(nice)] if nice is not None else [])
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, *args], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(n)]
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
    cases = [("alone, spinning (the default)", 1, None, None, False),
             ("alone, sleeping (PASSIVE)", 1, "PASSIVE", None, False),
             ("two at once, spinning (the default)", 2, None, None, False),
             ("two at once, sleeping (PASSIVE)", 2, "PASSIVE", None, False),
             ("a worker (nice 10) beside a light load, spinning", 1, None, 10, True),
             ("a worker (nice 10) beside a light load, sleeping (PASSIVE)", 1, "PASSIVE", 10, True),
             ("two workers (nice 10) beside a light load, spinning", 2, None, 10, True),
             ("two workers (nice 10) beside a light load, sleeping (PASSIVE)", 2, "PASSIVE", 10, True)]
    rows, sums = [], set()
    for label, n, policy, nice, load in cases:
        secs, mask_sums, wall = _runs(n, args.iterations, policy, nice, load)
        sums.update(round(s, 6) for s in mask_sums)
        rows.append((label, secs, wall))
        print(label, [round(s, 1) for s in secs], round(wall, 1), flush=True)
    alone = rows[0][1][0]
    lines = [START, "",
             f"ANP, {args.iterations} iterations on `cnn_badnets_centre`, two torch threads per process, one run of "
             f"`python -m bench.omp_wait` on idle cores ({os.cpu_count()} here). The masks were "
             f"{'the same in every case' if len(sums) == 1 else 'NOT the same: ' + str(sorted(sums))}.", "",
             "| processes | ANP seconds, each | per run vs alone | wall for all |", "|---|---|---|---|"]
    for label, secs, wall in rows:
        lines.append(f"| {label} | {', '.join(f'{s:.1f}' for s in secs)} | "
                     f"{max(secs) / alone:.2f}x | {wall:.1f} s |")
    lines += ["", END]
    table = "\n".join(lines)
    text = DOC.read_text() if DOC.exists() else ""
    text = (re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: table, text, flags=re.S)
            if START in text else text + ("\n" if text else "") + table + "\n")
    DOC.write_text(text)
    print(table)
    return table


if __name__ == "__main__":
    main()
