"""How small can a demo budget be and still show the backdoor going? Measured on the showcase.

    python -m bench.demo                       # writes docs/demo.md
    python -m bench.demo --sample cnn_badnets_centre --iterations 300

Hypothesis: ANP's masks on the showcase separate the backdoor neurons early, so a run of a few
hundred iterations (a minute on 2 cores, with the dashboard's sweeps) already removes the
backdoor at some fixed threshold or at the trigger-free budget cut. ANP's learning rate has no
schedule, so the masks at iteration k of one run equal those of a k-iteration run with the same
seed: one run, with a snapshot every 50 iterations, measures every budget up to its length.

RNP has no showcase (docs/study.md: at the paper's 20 recovery epochs its masks over-prune). Second
hypothesis: its masks rank the backdoor neurons first after a few recovery epochs, before they
drift, so a short recovery cut at a high threshold shows most of the backdoor going. RNP's
recovery has no schedule either, and it snapshots after every epoch: one run of 8 recovery
epochs measures each shorter one. The paper's settings and a gentler unlearning rate are rows too.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from defenses.methods.anp import ANP, ANPConfig
from defenses.base import NullCallback
from defenses.readers.data import load_dataset
from defenses.evaluation import budget_cut, evaluate
from defenses.neurons import Pruner, count_selected, find_neurons, selection_by_count, selection_by_threshold
from defenses.methods.rnp import RNP, RNPConfig
from sample_models import load_sample

OUT = Path(__file__).resolve().parent.parent / "docs" / "demo.md"
THRESHOLDS = (0.2, 0.3, 0.4, 0.5)
RNP_THRESHOLDS = (0.2, 0.6, 0.7, 0.8, 0.9)


class Snapshots(NullCallback):
    def __init__(self):
        self.seen: dict[int, dict[str, torch.Tensor]] = {}

    def snapshot(self, scores, step):
        self.seen[int(step)] = {k: v.detach().clone() for k, v in scores.items()}


def cuts(model, nmap, scores, data, trigger, thresholds=THRESHOLDS) -> list[tuple[str, int, dict]]:
    """(cut name, neurons pruned, test ACC/ASR) at each fixed threshold and at the budget cut."""
    pruner = Pruner(model, nmap)
    out = []
    for t in thresholds:
        sel = selection_by_threshold(scores, t, "low")
        out.append((f"mask <= {t}", count_selected(sel), evaluate(pruner.apply(sel), data.test, trigger)))
    n, _ = budget_cut(model, nmap, scores, "low", data.clean)
    sel = selection_by_count(scores, n, "low")
    out.append(("budget (clean ACC within 2 pts)", n, evaluate(pruner.apply(sel), data.test, trigger)))
    return out


def decision() -> list[str]:
    """What the tables decided: the demo budget each defense registers, with the note the Defend
    page shows beside it (tests/test_demo.py reruns each and checks the quoted numbers)."""
    from defenses.base import all_defenses

    out = ["", "## Decision: the Defend page's demo budgets", ""]
    for name, info in all_defenses().items():
        budget = ", ".join(f"{k}={v}" for k, v in info.demo.items()) or "none"
        out.append(f"- **{info.title}** (demo: {budget}). {info.demo_note}")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sample", default="cnn_badnets_centre")
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--every", type=int, default=50)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = load_dataset("mnist5k")
    sample = load_sample(args.sample)
    model, trigger = sample.model, sample.trigger
    nmap = find_neurons(model, data.shape)
    base = evaluate(model, data.test, trigger)
    hypotheses = [p.replace("\n", " ") for p in __doc__.split("\n\n")[2:4]]
    lines = [f"# Demo budgets on `{args.sample}`", "", "Written by `python -m bench.demo`.", "",
             *[x for h in hypotheses for x in (h, "")],
             f"Before pruning: ACC {100 * base['acc']:.1f}%, ASR {100 * base['asr']:.1f}%.", "",
             "## ANP", "", "| iterations | seconds (ANP alone) | cut | pruned | ACC % | ASR % |", "|---|---|---|---|---|---|"]
    rec = Snapshots()
    t0 = time.perf_counter()
    ANP(ANPConfig(iterations=args.iterations, snapshot_every=args.every)).run(model, data.clean, callback=rec)
    seconds = time.perf_counter() - t0
    for step in sorted(rec.seen):
        for name, n, m in cuts(model, nmap, rec.seen[step], data, trigger):
            lines.append(f"| {step} | {seconds * step / args.iterations:.0f} | {name} | {n} | {100 * m['acc']:.1f} | "
                         f"{100 * m['asr']:.1f} |")
        print("\n".join(lines[-len(THRESHOLDS) - 1:]), flush=True)
    lines += ["", "Seconds for fewer iterations are scaled from the full run's (ANP's cost per iteration is constant).",
              "", "## RNP", "", "Unlearning 3 epochs, then recovery for 1 to 8 epochs (one run, a snapshot per epoch); "
              "then the paper's settings and unlearning lr 0.001, each a run of its own.", "",
              "| settings | seconds | cut | pruned | ACC % | ASR % |", "|---|---|---|---|---|---|"]
    rec = Snapshots()
    t0 = time.perf_counter()
    RNP(RNPConfig(unlearn_epochs=3, recover_epochs=8)).run(model, data.clean, callback=rec)
    s = time.perf_counter() - t0
    for epoch, step in enumerate(sorted(rec.seen), 1):
        for name, n, m in cuts(model, nmap, rec.seen[step], data, trigger, RNP_THRESHOLDS):
            lines.append(f"| unlearn 3, recover {epoch} | {s * epoch / 8:.0f} (scaled) | {name} | {n} | "
                         f"{100 * m['acc']:.1f} | {100 * m['asr']:.1f} |")
        print("\n".join(lines[-len(RNP_THRESHOLDS) - 1:]), flush=True)
    for label, cfg in (("paper", RNPConfig()), ("unlearning lr 0.001", RNPConfig(unlearn_lr=0.001))):
        t0 = time.perf_counter()
        res = RNP(cfg).run(model, data.clean)
        s = time.perf_counter() - t0
        for name, n, m in cuts(model, nmap, res.scores, data, trigger, RNP_THRESHOLDS):
            lines.append(f"| {label} | {s:.0f} | {name} | {n} | {100 * m['acc']:.1f} | {100 * m['asr']:.1f} |")
        print("\n".join(lines[-len(RNP_THRESHOLDS) - 1:]), flush=True)
    lines += decision()
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
