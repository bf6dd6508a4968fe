"""Would the suite's claims still hold at smaller budgets, and what would that save?

    python -m bench.claim_budgets                      # writes the table into docs/suite.md
    python -m bench.claim_budgets --anp-iterations 500 --nc-steps 150 200 300

Why: the suite re-measures every claim the catalog records, and those runs are about half of its
CPU (docs/suite.md); shorter claims are the one way left under 20 minutes on 2 cores. This puts
numbers on that choice (docs/suite.md says what was chosen from them):

- each ANP claim run to ``--anp-iterations``, with its masks taken every 100 iterations on the way
  (ANP's trajectory does not depend on the total: a constant learning rate, one batch drawn per
  iteration), and each snapshot's cuts measured as the claim measures them;
- the trigger-recovery claim with Neural Cleanse at each of ``--nc-steps`` Adam steps per label,
  each a run of its own (the labels draw their images one after another, so a shorter run draws
  other images).

The row at the catalog's recorded budget is marked. Two torch threads, as the suite; one run on
this machine, seconds of this run.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from defenses.base import NullCallback, config_from_dict
from defenses.evaluation import defense_cuts
from defenses.methods.anp import ANP, ANPConfig
from defenses.methods.trigger_recovery import TriggerRecoveryConfig
from defenses.neurons import find_neurons
from defenses.readers.data import load_dataset
from sample_models import catalog, load_sample, recovery_claim
from sample_models.efficacy import BUDGET, measure_recovery, meets_bar, recovery_meets_bar

from . import write_between

DOC = Path(__file__).resolve().parent.parent / "docs" / "suite.md"
START, END = "<!-- claim_budgets table: python -m bench.claim_budgets -->", "<!-- end claim_budgets table -->"


class Snapshots(NullCallback):
    def __init__(self):
        self.masks: dict[int, dict[str, torch.Tensor]] = {}

    def snapshot(self, scores, step):
        self.masks[step] = scores


def anp_rows(name: str, iterations: int, data) -> list[str]:
    entry, sample = catalog()[name], load_sample(name)
    recorded = entry["efficacy"]["anp"]["settings"]
    cut = entry["works"]["anp"]
    cfg = config_from_dict(ANPConfig, {**recorded, "iterations": iterations, "snapshot_every": 100})
    snaps = Snapshots()
    t0 = time.perf_counter()
    result = ANP(cfg).run(sample.model, data.clean, callback=snaps)
    seconds = time.perf_counter() - t0
    nmap = find_neurons(sample.model, data.shape)
    rows = []
    for it, masks in sorted(snaps.masks.items()):
        c = defense_cuts(sample.model, nmap, dataclasses.replace(result, scores=masks), data.clean, data.test,
                         sample.trigger, budget=BUDGET)[cut]
        ok = "yes" if meets_bar(entry, c) else "**no**"
        mark = " (the catalog's)" if it == recorded.get("iterations", ANPConfig().iterations) else ""
        rows.append(f"| {name}, ANP, {cut} cut | {it} iterations{mark} | {c['pruned']} | {100 * c['acc']:.1f}% | "
                    f"{100 * c['asr']:.1f}% | {ok} | {seconds * it / cfg.iterations:.0f} s |")
        print(rows[-1], flush=True)
    return rows


def recovery_rows(name: str, steps: list[int], data) -> list[str]:
    entry = catalog()[name]
    recorded = recovery_claim(entry)["settings"]
    nc = recorded.get("nc") or {}
    rows = []
    for n in steps:
        got = measure_recovery(name, {**recorded, "nc": {**nc, "steps": n}}, data)
        ok = "yes" if recovery_meets_bar(entry, got) else "**no**"
        mark = " (the catalog's)" if n == nc.get("steps", TriggerRecoveryConfig().steps) else ""
        secs = got["seconds"]["unlearn"] + got["seconds"]["recovery"]
        rows.append(f"| {name}, trigger recovery | Neural Cleanse {n} steps per label{mark} | flagged {got['flagged']}, "
                    f"anomaly {got['anomaly']:.2f} | - | flips {100 * got['asr_original']:.1f}% | {ok} | {secs:.0f} s |")
        print(rows[-1], flush=True)
    return rows


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--anp-iterations", type=int, default=500, help="how far to run each ANP claim")
    p.add_argument("--nc-steps", type=int, nargs="*", default=[150, 200, 300],
                   help="Neural Cleanse steps per label to try for the recovery claim")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    data = load_dataset("mnist5k")
    cat = catalog()
    rows = []
    for name, e in cat.items():
        if "anp" in e.get("works", {}):
            rows += anp_rows(name, args.anp_iterations, data)
    for name, e in cat.items():
        if recovery_claim(e):
            rows += recovery_rows(name, args.nc_steps, data)
    table = "\n".join([
        START, "",
        "One run of `python -m bench.claim_budgets`, two torch threads, idle cores. ANP's seconds at fewer "
        "iterations are the full run's, pro rata; every row's cut is measured as the claim's test measures it, and "
        "\"the catalog's\" marks the budget the catalog records. "
        "The bar: ASR at most 2% with ACC within 2 points of the model's (trigger recovery: the target flagged and "
        "its trigger flipping at least half of the original model's clean images).", "",
        "| claim | budget | pruned (recovery: what it flags) | ACC | ASR | meets the bar | seconds |",
        "|---|---|---|---|---|---|---|", *rows, "", END])
    write_between(DOC, START, END, table)
    print(table)
    return table


if __name__ == "__main__":
    main()
