"""Hölder pruning on the shipped ``mlp_head_badnets`` sample: scoring time against ANP on the
same head layers, and ACC/ASR after pruning at the density threshold for several alphas.

    python -m bench.holder_alpha [--anp-iterations 200] [--repeats 3]

Prints markdown tables. The timing is ``bench.suite.holder_vs_anp``'s: ANP restricted to the head's neuron layers, and
both on the head alone over features extracted once (the reviewers' point: compare on the head
only, not against a baseline run on the whole network); ANP is timed for ``--anp-iterations``
iterations and scaled linearly to its default 2000, which the output says.
Both defenses see the same 500-image clean set on the same CPU threads. ACC and ASR are
measured on the held-out test split. The alpha table is given for two choices of the samples
u_n (the clean set, and the poisoned training split the head was trained on, the SPEC's first
choice).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.suite import Case, holder_vs_anp
from defenses.readers.data import load_dataset
from defenses.evaluation import evaluate
from defenses.methods.holder import Holder, HolderConfig
from defenses.methods.holder_constants import head_layers
from defenses.neurons import find_neurons, prune, selection_by_threshold
from sample_models import load_sample
from sample_models.train import poisoned_train_split

SAMPLE = "mlp_head_badnets"
ALPHAS = (0.25, 0.5, 1.0)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--anp-iterations", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    data = load_dataset("mnist5k")
    sample = load_sample(SAMPLE)
    model, trigger = sample.model, sample.trigger
    nmap = find_neurons(model, data.shape)
    head = tuple(head_layers(nmap))
    n_head = sum(nmap.layer(n).size for n in head)
    train = poisoned_train_split(data.train, sample.spec, sample.entry["poison_rate"], sample.entry["seed"])

    # ------------------------------------------------------------ timing (the suite's comparison)
    Holder(HolderConfig()).run(model, data.clean)  # warm-up (imports, allocator)
    holder_s, holder = timed(lambda: Holder(HolderConfig()).run(model, data.clean), args.repeats)
    case = Case(SAMPLE, model, data, trigger)
    rows = holder_vs_anp(case, model, holder, False, args.anp_iterations, torch.device("cpu"), lambda m: None,
                         holder_s=holder_s)
    print(f"## Hölder vs ANP on the head of `{SAMPLE}`\n")
    print(f"Head layers: {', '.join(head)} ({n_head} neurons); clean set {len(data.clean)} images; "
          f"torch threads {torch.get_num_threads()}; Hölder median of {args.repeats} runs.\n")
    print("| comparison | ANP, 2000 it. (s) | Hölder (s) | ratio | note |")
    print("|---|---:|---:|---:|---|")
    for _, what, anp_s, h_s, note in rows:
        print(f"| {what} | {anp_s:.1f} | {h_s:.3f} | {anp_s / h_s:.0f}x | {note} |")
    print()

    # ------------------------------------------------------------ alpha table
    base = evaluate(model, data.test, trigger)
    print(f"## Density-threshold pruning by alpha (test split, {len(data.test)} images)\n")
    print(f"Before pruning: ACC {base['acc']:.3f}, ASR {base['asr']:.3f}.\n")
    print("| u_n from | alpha | pruned (" + " / ".join(head) + ") | cut rule | ACC | ASR | ACC drop |")
    print("|---|---:|---|---|---:|---:|---:|")
    for label, split in ((f"clean set ({len(data.clean)})", data.clean),
                         (f"poisoned train ({len(train)})", train)):
        for alpha in ALPHAS:
            r = Holder(HolderConfig(alpha=alpha)).run(model, split)
            sel = selection_by_threshold(r.scores, r.threshold, r.suspicious)
            m = evaluate(prune(model, nmap, sel, r.prune_rule), data.test, trigger)
            counts = " / ".join(str(int(sel[n].sum())) for n in head)
            rules = " / ".join(r.extras["density"][n]["rule"] for n in head)
            print(f"| {label} | {alpha:g} | {counts} | {rules} | {m['acc']:.3f} | {m['asr']:.3f} | "
                  f"{100 * (base['acc'] - m['acc']):.1f} pt |")


if __name__ == "__main__":
    main()
