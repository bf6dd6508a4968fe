"""Measure the defenses on the shipped samples and write the numbers into each catalog entry.

    python -m sample_models.efficacy                  # every sample
    python -m sample_models.efficacy cnn_badnets_centre
    python -m sample_models.efficacy cnn_badnets --only recovery   # one claim; the rest stay as recorded

Each entry's ``defenses`` names the defenses measured on it and the settings used (the paper's
defaults except what is named, e.g. ANP's iteration count). For each, ``efficacy`` records
the neurons pruned and test ACC/ASR at the defense's own cut and at the trigger-free budget
cut (the most neurons whose pruning keeps ACC on the defender's clean set within 2 points),
and the seconds it took on this machine. An entry's ``recovery`` names the RNP and Neural Cleanse
settings of a trigger-recovery claim (Neural Cleanse on RNP's unlearned model); its measured
numbers are written beside them. The test suite re-measures the showcase claims
(tests/test_showcase.py) from the committed weights.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

from defenses.base import all_defenses, config_from_dict, get_defense
from defenses.readers.data import load_dataset
from defenses.evaluation import defense_cuts
from defenses.neurons import find_neurons

from . import CATALOG_PATH, catalog, load_sample

BUDGET = 0.02


def defense_data(sample, defense: str, data):
    """Hölder scores the defender's poisoned training samples (the SPEC's first choice, and how the
    sample was trained); every other defense learns from the clean set."""
    if defense != "holder":
        return data.clean
    from .train import poisoned_train_split

    return poisoned_train_split(data.train, sample.spec, sample.entry["poison_rate"], sample.entry["seed"])


def measure(name: str, defense: str, settings: dict | None = None, data=None) -> dict:
    """One defense on one sample: its result's cuts, as plain numbers."""
    data = data or load_dataset("mnist5k")
    sample = load_sample(name)
    info = get_defense(defense)
    cfg = config_from_dict(info.config_cls, dict(settings or {}))
    t0 = time.perf_counter()
    result = info.cls(cfg).run(sample.model, defense_data(sample, defense, data))
    seconds = time.perf_counter() - t0
    nmap = find_neurons(sample.model, data.shape)
    cuts = defense_cuts(sample.model, nmap, result, data.clean, data.test, sample.trigger, budget=BUDGET)
    out = {"settings": dict(settings or {}), "seconds": round(seconds, 1)}
    for label, c in cuts.items():
        out[label] = {"pruned": c["pruned"], "acc": round(c["acc"], 4), "asr": round(c["asr"], 4)}
    return out


def unlearn(model, rnp_settings: dict, clean):
    """RNP at these settings, for its unlearned model (``extras["unlearned_model"]``) alone.

    Unlearning comes first and draws its batches first, so the unlearned model does not depend on
    the recovery's length: one recovery epoch instead of the paper's 20 saves time, nothing else."""
    from defenses.methods.rnp import RNP, RNPConfig

    cfg = config_from_dict(RNPConfig, dict(rnp_settings or {}))
    return RNP(dataclasses.replace(cfg, recover_epochs=1)).run(model, clean)


def measure_recovery(name: str, settings: dict, data=None) -> dict:
    """Neural Cleanse on RNP's unlearned model, as a run with trigger recovery does it: which labels
    it flags, and how often the target's recovered trigger flips the original model (clean set)."""
    from defenses.methods.trigger_recovery import TriggerRecovery, TriggerRecoveryConfig

    data = data or load_dataset("mnist5k")
    sample = load_sample(name)
    t0 = time.perf_counter()
    unlearned = unlearn(sample.model, settings.get("rnp"), data.clean).extras["unlearned_model"]
    t1 = time.perf_counter()
    rec = TriggerRecovery(config_from_dict(TriggerRecoveryConfig, settings.get("nc") or {})).run(
        unlearned, data.clean, original_model=sample.model)
    i = rec.labels.index(sample.spec.target)
    return {"settings": settings, "flagged": rec.flagged, "anomaly": round(rec.anomaly[i], 2),
            "l1": round(rec.l1[i], 1), "asr_unlearned": round(rec.asr_on_model[i], 4),
            "asr_original": round(rec.asr_on_original[i], 4),
            "seconds": {"unlearn": round(t1 - t0, 1), "recovery": round(time.perf_counter() - t1, 1)}}


def recovery_meets_bar(entry: dict, rec: dict, asr: float = 0.5) -> bool:
    """The trigger-recovery bar: the true target flagged, and its recovered trigger flipping at least
    half of the original model's clean images of other labels to it."""
    return entry["target"] in rec["flagged"] and rec["asr_original"] >= asr


def meets_bar(entry: dict, cut: dict, asr: float = 0.02, drop: float = 0.02) -> bool:
    """The showcase bar: ASR <= 2% with test ACC within 2 points of the unpruned model's."""
    return cut["asr"] <= asr and cut["acc"] >= entry["acc"] - drop - 1e-9


def main(argv=None):
    p = argparse.ArgumentParser(description="Measure the defenses on the shipped samples into the catalog.")
    p.add_argument("names", nargs="*", help="samples (default: every one)")
    p.add_argument("--only", choices=[*all_defenses(), "recovery"],
                   help="re-measure this one claim of each sample and keep the rest as recorded")
    args = p.parse_args(argv)
    only = args.only
    unknown = sorted(set(args.names) - set(catalog()))
    if unknown:
        p.error(f"no sample named {', '.join(unknown)}")
    names = args.names or list(catalog())
    data = load_dataset("mnist5k")
    entries = dict(catalog())
    for name in names:
        entry = dict(entries[name])
        eff = {} if only is None else dict(entry.get("efficacy") or {})
        for defense, settings in entry.get("defenses", {}).items():
            if only not in (None, defense):
                continue
            eff[defense] = measure(name, defense, settings, data)
            print(f"{name} {defense}: {eff[defense]}", flush=True)
        entry["efficacy"] = eff
        if entry.get("recovery") and only in (None, "recovery"):
            entry["recovery"] = measure_recovery(name, entry["recovery"]["settings"], data)
            print(f"{name} trigger recovery: {entry['recovery']}", flush=True)
        entries[name] = entry
        tmp = CATALOG_PATH.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries, indent=2) + "\n")
        tmp.replace(CATALOG_PATH)


if __name__ == "__main__":
    main()
