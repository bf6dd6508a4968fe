"""Is the Defend page's time estimate right? Writes docs/estimate.md and docs/estimate.json.

    python -m bench.estimate            # four runs on the showcase sample, about 6 minutes on 2 cores

For each setting: ``defenses.runs.estimate.estimate`` (what the Defend page shows before Start, and how
long the estimate itself took), then the same request run to the end in this process by the worker
(``defenses.runs.worker.execute``, as the dashboard's worker process does); each stage's measured time
is read from the run's ``timings.json`` and, for trigger recovery, its stage events. The table
gives estimate / measured per stage and for the whole run, all measured in one run of this script.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from defenses.runs.estimate import estimate, human_seconds
from defenses.runs.folder import RunRequest, create_run, read_json
from defenses.runs.worker import execute

DOCS = Path(__file__).resolve().parent.parent / "docs"
SAMPLE = {"sample": "cnn_badnets_centre"}
DATA = {"dataset": "mnist5k", "clean_count": 500, "seed": 0}
SETTINGS = [
    ("ANP, 300 iterations", dict(defense="anp", params={"iterations": 300}, recover_triggers=False)),
    ("RNP, the paper's settings, then trigger recovery (100 steps, 32 images) on its unlearned model",
     dict(defense="rnp", params={}, recover_triggers=True, recovery_params={"steps": 100, "batch_size": 32})),
    ("CLP (data-free; the sweeps are the wait)", dict(defense="clp", params={}, recover_triggers=False)),
    ("ANP, 100 iterations, with the oracle (400 iterations)",
     dict(defense="anp", params={"iterations": 100}, recover_triggers=False, oracle=True)),
]


def measured_stages(run_dir: Path) -> dict[str, float]:
    timings = read_json(run_dir / "timings.json", {})
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    starts = {e["stage"]: e["t"] for e in events if e.get("type") == "stage"}
    order = sorted(starts, key=starts.get)
    span = {s: starts[order[i + 1]] - starts[s] for i, s in enumerate(order[:-1])}
    return {"loading": timings.get("loading_s", 0.0), "baseline": timings.get("baseline_s", 0.0),
            "defense": timings.get("defense_s", 0.0) + timings.get("own_cut_s", 0.0),
            "sweeps": timings.get("sweeps_s", 0.0), "oracle": span.get("oracle", 0.0),
            "recovery": span.get("trigger recovery", 0.0)}


def measure(label: str, kw: dict, runs: Path) -> dict:
    request = RunRequest(model=SAMPLE, data=DATA, device="cpu", **kw)
    t0 = time.perf_counter()
    stages = estimate(request)
    estimate_s = time.perf_counter() - t0
    run_dir = create_run(request, runs)
    t1 = time.perf_counter()
    state = execute(run_dir)
    wall = time.perf_counter() - t1
    if state != "done":
        raise SystemExit(f"{label}: the run ended {state}: {read_json(run_dir / 'status.json', {}).get('error')}")
    got = measured_stages(run_dir)
    rows = [{"stage": s.name, "kind": s.kind, "estimated_s": s.seconds, "upper_bound": s.upper_bound,
             "measured_s": got.get(s.kind, 0.0)} for s in stages]
    return {"setting": label, "estimate_took_s": estimate_s, "rows": rows, "wall_s": wall,
            "estimated_total_s": sum(s.seconds for s in stages)}


def render(res: dict) -> str:
    out = ["# How right is the time estimate before Start?", "",
           "Written by `python -m bench.estimate` (one run; "
           f"{res['machine']}, torch {res['torch']} on {res['threads']} threads, the sample `cnn_badnets_centre`, "
           "500 clean images). The Defend page measures a few steps of each stage on the run's own model and "
           "multiplies by the steps the settings ask for (`defenses/runs/estimate.py`); here each estimate is set "
           "beside the same request run to the end by the worker.", "",
           "| setting | stage | estimated | measured | estimated / measured |", "|---|---|---|---|---|"]
    for r in res["results"]:
        for i, row in enumerate(r["rows"]):
            ratio = row["estimated_s"] / row["measured_s"] if row["measured_s"] > 0.05 else float("nan")
            out.append(f"| {r['setting'] if i == 0 else ''} | {row['stage']} | "
                       f"{'up to ' if row['upper_bound'] else ''}{row['estimated_s']:.1f} s | {row['measured_s']:.1f} s | "
                       f"{ratio:.2f} |")
        ratio = r["estimated_total_s"] / r["wall_s"]
        out.append(f"| | **whole run** (the estimate took {r['estimate_took_s']:.1f} s) | "
                   f"**{r['estimated_total_s']:.0f} s** ({human_seconds(r['estimated_total_s'])}) | "
                   f"**{r['wall_s']:.0f} s** | **{ratio:.2f}** |")
    out += ["", "The sweeps' estimate is an upper bound: 30 evaluations, where cuts that prune the same neurons "
            "share one (the measured sweeps made fewer). Stages other than a defense's first (RNP's mask recovery) "
            "are taken to cost what the first stage's steps cost. Loading measures 0 s here because this one "
            "process has the sample cached after the first run; a worker process loads it afresh (the estimate's "
            "own loading time is that). Timings on a loaded machine differ: a first run of this script beside the "
            "test suite gave ratios from 0.5 to 4, the estimate and the run each slowed by whatever ran beside "
            "them.", ""]
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", type=int, nargs="*", help="indices of SETTINGS to run (default: all)")
    ap.add_argument("--render", action="store_true", help="rewrite docs/estimate.md from docs/estimate.json only")
    args = ap.parse_args(argv)
    if args.render:
        (DOCS / "estimate.md").write_text(render(json.loads((DOCS / "estimate.json").read_text())))
        return
    torch.manual_seed(0)
    picked = [SETTINGS[i] for i in args.only] if args.only else SETTINGS
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(label, kw, Path(tmp)) for label, kw in picked]
    res = {"machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores", "torch": torch.__version__,
           "threads": torch.get_num_threads(), "results": results}
    (DOCS / "estimate.json").write_text(json.dumps(res, indent=1))
    (DOCS / "estimate.md").write_text(render(res))
    print(render(res))


if __name__ == "__main__":
    main()
