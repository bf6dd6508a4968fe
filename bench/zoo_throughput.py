"""How fast does a zoo scan run on Ray, and what does Ray cost? Writes docs/zoo.md.

    python -m bench.zoo_throughput                 # 8 development-zoo models, every signal (~15 min on 2 cores)
    python -m bench.zoo_throughput --models 4 --signals weights,mmbd   # a quick look

Measured in one run, on the same models, each time into an empty runs folder (nothing resumed):

- **Ray's start-up**: ``ray.init`` of a local Ray with 2 CPUs plus the first task's round trip,
  and the shutdown (median of 3);
- **throughput**: the zoo scan (``defenses.scan.zoo.scan_zoo``) with 1 worker and with 2 workers,
  wall time from the call to the last result (Ray's start included), in models per minute and the
  ratio; beside them the plain loop without Ray (``execute_scan`` one model after another in this
  process, torch on every core), which is what ``prunescope scan`` does for one model;
- **memory**: each task's worker's peak resident memory (``ru_maxrss``), and Ray's own processes
  (raylet, GCS, the idle workers) read from /proc while the 2-worker Ray is up.

The models are the development zoo's (``python -m bench.zoo``), the first N usable MNIST ones in
round-robin over the architectures so the mix is the zoo's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from . import zoo as devzoo

REPORT = Path(__file__).resolve().parent.parent / "docs" / "zoo.md"
MARKER = "<!-- Everything below is written by `python -m bench.zoo_throughput`; the text above by hand. -->"


def pick(n: int) -> list[dict]:
    usable = [t for t in devzoo.zoo(cifar=False) if not t["backdoored"] or t["took"]]
    by_arch: dict[str, list] = {}
    for t in usable:
        by_arch.setdefault(json.dumps([t["architecture"], t["arch_kwargs"]]), []).append(t)
    out, lists = [], list(by_arch.values())
    while len(out) < n and any(lists):
        for lst in lists:
            if lst and len(out) < n:
                out.append(lst.pop(0))
    return out


def ray_rss_mb() -> dict[str, float]:
    """Resident memory of Ray's processes now, by kind (Linux /proc)."""
    kinds: dict[str, float] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:")) / 1024
        except (OSError, StopIteration, ValueError):
            continue
        if "raylet" in cmd:
            kind = "raylet"
        elif "gcs_server" in cmd:
            kind = "GCS server"
        elif "default_worker.py" in cmd or cmd.startswith("ray::"):
            kind = "workers (idle pool and task workers)"
        elif "ray" in cmd and ("dashboard" in cmd or "log_monitor" in cmd or "monitor.py" in cmd):
            kind = "monitors"
        else:
            continue
        kinds[kind] = kinds.get(kind, 0) + rss
    return kinds


def startup_seconds(repeats: int = 3) -> tuple[float, float]:
    import ray

    from defenses.runs.parallel import _connect

    ups, downs = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _connect(2, None)
        ray.get(ray.remote(lambda: 1).remote())
        ups.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ray.shutdown()
        downs.append(time.perf_counter() - t0)
    return statistics.median(ups), statistics.median(downs)


def write_manifest(truths: list[dict], path: Path) -> None:
    devzoo.write_manifest(truths, path)


def zoo_run(manifest: Path, settings: dict, workers: int) -> dict:
    import ray

    from defenses.runs.parallel import _connect
    from defenses.scan.zoo import scan_zoo, worker_figures

    runs = Path(tempfile.mkdtemp(prefix="zoo-bench-"))
    try:
        t0 = time.perf_counter()
        _connect(workers, None)  # kept up across scan_zoo so its processes can be read afterwards
        d = scan_zoo(manifest, settings, runs_dir=runs, workers=workers)
        wall = time.perf_counter() - t0
        rss = ray_rss_mb()
        ray.shutdown()
        figs = worker_figures(d)
        from defenses.scan.zoo import read_summary

        rows = read_summary(d)
        return {"workers": workers, "wall": wall, "models": len(rows), "failed": sum(r["state"] != "done" for r in rows),
                "task_seconds": [f["seconds"] for f in figs], "peak_rss_mb": [f["peak_rss_mb"] for f in figs],
                "pids": len({f["pid"] for f in figs}), "ray_rss_mb": rss,
                "probabilities": {r["name"]: r["probability"] for r in rows}}
    finally:
        shutil.rmtree(runs, ignore_errors=True)


def plain_loop(truths: list[dict], settings: dict) -> dict:
    from defenses.scan.folder import create_scan, execute_scan
    from defenses.scan.manifest import read_manifest

    runs = Path(tempfile.mkdtemp(prefix="zoo-bench-"))
    try:
        m = runs / "m.csv"
        write_manifest(truths, m)
        t0 = time.perf_counter()
        probs = {}
        for row in read_manifest(m):
            v = execute_scan(create_scan(row.model, row.data, settings, runs), report=False)
            probs[row.name] = f"{v.probability:.4f}"
        return {"wall": time.perf_counter() - t0, "models": len(probs), "probabilities": probs}
    finally:
        shutil.rmtree(runs, ignore_errors=True)


def per_min(run: dict) -> float:
    return run["models"] / run["wall"] * 60


def render(res: dict) -> str:
    one, two, loop = res["runs"][1], res["runs"][2], res["plain"]
    per_model = statistics.median(one["task_seconds"])
    overhead = (two["wall"] - res["startup"]) - sum(two["task_seconds"]) / 2
    lines = [MARKER, "",
             f"Measured {time.strftime('%Y-%m-%d')} on {res['machine']}: {res['n']} development-zoo models, signals "
             f"{res['signals']}; Ray {res['ray']}, torch {torch.__version__}. Each run into an empty runs folder.", "",
             "| how | workers × threads | wall s | models / min | vs 1 worker | vs plain loop |",
             "|---|---|---|---|---|---|",
             f"| plain loop, no Ray (as `prunescope scan`, one model after another) | 1 × {res['threads']} | "
             f"{loop['wall']:.0f} | {per_min(loop):.2f} | | 1.00x |",
             f"| zoo scan on local Ray | 1 × 1 | {one['wall']:.0f} | {per_min(one):.2f} | 1.00x | "
             f"{per_min(one) / per_min(loop):.2f}x |",
             f"| zoo scan on local Ray | 2 × 1 | {two['wall']:.0f} | {per_min(two):.2f} | "
             f"**{per_min(two) / per_min(one):.2f}x** | {per_min(two) / per_min(loop):.2f}x |", "",
             f"- **Ray's start-up** (local, 2 CPUs, to the first task's result): {res['startup']:.1f} s; shutdown "
             f"{res['shutdown']:.1f} s (median of 3).",
             f"- **Per model** (one task on one thread, median over the 1-worker run): {per_model:.1f} s; with 2 "
             f"workers busy at once: {statistics.median(two['task_seconds']):.1f} s.",
             f"- **Overhead per model on Ray** (2-worker wall less start-up, less half the summed task time, "
             f"per model): {overhead / two['models']:.2f} s.",
             f"- **Memory per worker** (peak resident, per task's worker): median "
             f"{statistics.median(two['peak_rss_mb']):.0f} MB, largest {max(two['peak_rss_mb']):.0f} MB. Ray's own "
             "processes while the 2-worker Ray was up: "
             + ", ".join(f"{k} {v:.0f} MB" for k, v in sorted(two["ray_rss_mb"].items())) + ".",
             f"- **Same answers**: the probabilities of the 1-worker and 2-worker runs are "
             f"{'identical' if one['probabilities'] == two['probabilities'] else 'NOT identical'}; against the "
             f"plain loop (torch on {res['threads']} threads) they agree to "
             f"{max(abs(float(one['probabilities'][k]) - float(v)) for k, v in loop['probabilities'].items()):.4f}.",
             ""]
    return "\n".join(lines)


def write(res: dict) -> None:
    old = REPORT.read_text() if REPORT.exists() else ""
    top = old.split(MARKER)[0] if MARKER in old else "# Zoo scans on Ray, measured\n\n(findings to be written)\n\n"
    REPORT.write_text(top + render(res))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=int, default=8)
    p.add_argument("--signals", default="weights,mmbd,noise,unlearn,cleanse")
    p.add_argument("--out", default=str(REPORT.with_suffix(".json")), help="the raw figures as JSON")
    args = p.parse_args(argv)
    import ray

    truths = pick(args.models)
    settings = {"signals": [s.strip() for s in args.signals.split(",")]}
    work = Path(tempfile.mkdtemp(prefix="zoo-manifest-"))
    manifest = work / "bench.csv"
    write_manifest(truths, manifest)
    startup, shutdown = startup_seconds()
    print(f"Ray start-up {startup:.1f} s, shutdown {shutdown:.1f} s", flush=True)
    res = {"n": len(truths), "signals": args.signals, "ray": ray.__version__, "threads": torch.get_num_threads(),
           "machine": f"{os.cpu_count()} cores, {platform.machine()}", "startup": startup, "shutdown": shutdown,
           "runs": {}}
    res["plain"] = plain_loop(truths, settings)
    print(f"plain loop: {res['plain']['wall']:.0f} s", flush=True)
    for w in (1, 2):
        res["runs"][w] = zoo_run(manifest, settings, w)
        print(f"{w} worker(s): {res['runs'][w]['wall']:.0f} s", flush=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    write(res)
    print(render(res))


if __name__ == "__main__":
    main()
