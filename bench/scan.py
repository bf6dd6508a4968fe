"""How well does the scan tell backdoored models from clean ones? Scored like the field.

    python -m bench.scan            # scan every zoo model (cached), fit, score, write docs/scan.md
    python -m bench.scan --render   # refit and rewrite docs/scan.md from the cached signal rows

Every usable zoo model (``bench/zoo.py``: clean, or backdoored with ASR >= 80%) is scanned once
with every signal (rows cached in ``bench/cache/scan/rows.jsonl``, keyed by the signals'
settings). The combination (a logistic calibration of the signals' outlier scores,
``defenses/scan/calibrate.py``) is then measured with **one attack kind held out**: the
backdoored models of that kind and a matching share of the clean models are scored by a fit on
everything else. Those out-of-fold probabilities give the headline: ROC-AUC with a bootstrap 95%
interval, TrojAI's cross-entropy, TPR at 5% FPR, the target label's accuracy on the flagged
backdoored models. The fit on the whole MNIST zoo (shown beside, in-sample) is what the product
ships (``defenses/scan/calibration.json``), and the CIFAR-10 models are scored by it untouched.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path

import torch

from defenses.readers.data import load_dataset
from defenses.scan import all_signals
from defenses.scan.scanner import CALIBRATION, ScanConfig, scan

from . import zoo

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache" / "scan"
ROWS = CACHE / "rows.jsonl"
REPORT = HERE.parent / "docs" / "scan.md"


def settings_key() -> str:
    cfgs = {n: dataclasses.asdict(i.config_cls()) for n, i in all_signals().items()}
    return hashlib.sha256(json.dumps(cfgs, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cached_rows() -> list[dict]:
    if not ROWS.exists():
        return []
    key = settings_key()
    return [r for r in map(json.loads, ROWS.read_text().splitlines()) if r["key"] == key]


def scan_row(truth: dict, data) -> dict:
    model = zoo.load(truth)
    t0, c0 = time.perf_counter(), time.process_time()
    verdict = scan(model, data.clean, ScanConfig(signals=tuple(all_signals())))
    signals = {}
    for n, r in verdict.signals.items():
        d = r.to_dict()
        d["details"] = {k: v for k, v in d["details"].items() if k not in ("mask", "pattern", "points")}
        signals[n] = d
    return {"key": settings_key(), "name": truth["name"], "truth": truth, "signals": signals,
            "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def usable(truth: dict) -> bool:
    return not truth["backdoored"] or truth["took"]


def _scan_task(truth: dict) -> dict:
    return scan_row(truth, zoo.dataset(truth["dataset"]))


def collect(log=print, workers: int | None = None, address: str | None = None) -> list[dict]:
    """Scan every usable zoo model not cached yet, one Ray task each (``defenses.runs.parallel``)."""
    from defenses.runs.parallel import run_all

    CACHE.mkdir(parents=True, exist_ok=True)
    done = {r["name"] for r in cached_rows()}
    truths = [t for t in zoo.zoo(log=log, workers=workers, address=address) if usable(t)]
    todo = [t for t in truths if t["name"] not in done]

    def landed(o, t):
        if o.error:
            raise RuntimeError(f"{o.item['name']}: {o.error}")
        row = o.value
        with ROWS.open("a") as f:
            f.write(json.dumps(row) + "\n")
        left = t.seconds_left() or 0
        log(f"[{t.finished}/{t.total}] {row['name']}: " + ", ".join(
            f"{n} {s['score']:.1f}->{s['label']}" for n, s in row["signals"].items())
            + f" ({row['wall_s']:.1f} s; about {left / 60:.0f} min left)")

    run_all(_scan_task, todo, workers=workers, address=address, gpus_per_task=0, on_result=landed)
    names = {t["name"] for t in truths}
    return [r for r in cached_rows() if r["name"] in names]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--render", action="store_true", help="only refit and rewrite the report from cached rows")
    p.add_argument("--workers", type=int, help="models scanned at once on this machine (default: one per core)")
    p.add_argument("--address", help="an existing Ray cluster (auto or HOST:PORT) instead of a local one")
    args = p.parse_args(argv)
    from .scan_report import write

    rows = cached_rows() if args.render else collect(workers=args.workers, address=args.address)
    write(rows)


if __name__ == "__main__":
    main()
