"""The trigger-aware pruning oracle (defenses/methods/oracle.py) on one shipped sample, from the shell.

    python -m bench.oracle resnet_badnets [--head-only] [--iterations 400]

prints the oracle's sweep by count (about 4 minutes on a 2-core CPU).
"""
from __future__ import annotations

import argparse

from defenses.evaluation import SweepRow
from defenses.neurons import find_neurons
from defenses.methods.oracle import oracle_scores, oracle_sweep, smallest_cut


def main(argv=None) -> list[SweepRow]:
    from defenses.readers.data import load_dataset
    from defenses.methods.holder_constants import head_layers
    from sample_models import catalog, load_sample

    ap = argparse.ArgumentParser(description="The trigger-aware pruning oracle on one shipped sample model.")
    ap.add_argument("sample", choices=sorted(catalog()))
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--head-only", action="store_true", help="only the MLP head's neurons (Hölder's scope)")
    args = ap.parse_args(argv)
    data = load_dataset("mnist5k")
    sample = load_sample(args.sample)
    nmap = find_neurons(sample.model, data.shape)
    try:
        layers = tuple(head_layers(nmap)) if args.head_only else None
    except ValueError as e:
        ap.error(str(e))
    scores = oracle_scores(sample.model, data.clean, sample.trigger, iterations=args.iterations, layers=layers)
    rows = oracle_sweep(sample.model, nmap, scores, data.test, sample.trigger)
    print("| neurons pruned | ACC (%) | ASR (%) |\n|---:|---:|---:|")
    for r in rows:
        print(f"| {r.n_pruned} | {100 * r.acc:.1f} | {100 * r.asr:.1f} |")
    cut = smallest_cut(rows)
    print(f"\nFewest neurons for ASR < 5%: {cut.n_pruned if cut else f'none of up to {rows[-1].n_pruned}'}.")
    return rows


if __name__ == "__main__":
    main()
