"""Small backdoored (and one clean) models trained by ``python -m sample_models.train`` from a
fixed seed on the mnist5k digits, with their weights (safetensors) and a catalog of measured
ACC and ASR. ``load_sample(name)`` is the one call that gives a ready model."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from defenses.readers.checkpoints import load_into
from defenses.labels import describe_settings
from defenses.readers.models import build_model
from defenses.readers.triggers import Trigger, TriggerSpec

HERE = Path(__file__).resolve().parent
CATALOG_PATH = HERE / "catalog.json"


@dataclass
class Sample:
    name: str
    model: nn.Module
    entry: dict
    spec: TriggerSpec | None  # the trigger used (for the clean control: the probe trigger)
    trigger: Trigger | None

    @property
    def backdoored(self) -> bool:
        return self.entry["attack"] != "none"


@lru_cache(maxsize=1)
def _catalog_cached(mtime: float) -> dict[str, dict]:
    return json.loads(CATALOG_PATH.read_text())


def catalog() -> dict[str, dict]:
    """Every sample's recipe and measured numbers, by name."""
    if not CATALOG_PATH.exists():
        return {}
    return _catalog_cached(CATALOG_PATH.stat().st_mtime)


def sample_names() -> list[str]:
    return list(catalog())


def training_summary(entry: dict) -> str:
    """How a sample was trained, for a caption: "Adam, 12 epochs" or "SGD with weight decay 0.0005, 100 epochs"."""
    o = entry.get("optimizer") or {"name": "adam"}
    how = "SGD" if o["name"] == "sgd" else "Adam"
    if o.get("weight_decay"):
        how += f" with weight decay {o['weight_decay']:g}"
    how = f"{how}, {entry['epochs']} epochs" if entry.get("epochs") else how
    imp = entry.get("implant")
    if imp:  # sample_models/implant.py: a clean model first, the backdoor written in after
        what = f"a subnet of {imp['subnet']} neurons per layer" if imp["subnet"] else "every weight fine-tuned"
        if imp.get("repair"):
            what = f"{what} taken over, the rest retrained for {imp['repair']} epochs, and the subnet trained"
        how = f"{how} on clean data, then {what} on poisoned data (Adam {imp['lr']:g}, {imp['epochs']} epochs)"
    return how


def measured_settings(entry: dict, defense: str) -> dict | None:
    """The settings a showcase's claim for ``defense`` was measured with (e.g. RNP's unlearning
    rate 0.001 on ``cnn_blend_subnet``), when the catalog says the defense works on the sample
    and names any; else None."""
    settings = (entry.get("defenses") or {}).get(defense)
    return dict(settings) if settings and defense in (entry.get("works") or {}) else None


def recovery_claim(entry: dict) -> dict | None:
    """A sample's measured trigger-recovery claim (Neural Cleanse on RNP's unlearned model: its
    settings, the labels flagged, the target's anomaly index and how often its recovered trigger
    flips the original model), when the catalog records one; else None."""
    rec = entry.get("recovery")
    return dict(rec) if rec and "flagged" in rec else None


def describe_recovery(nc: dict) -> str:
    """"150 steps per label": Neural Cleanse's settings as a person reads them."""
    parts = [f"{nc['steps']} steps per label"] if "steps" in nc else []
    parts += [f"{nc['batch_size']} images per step"] if "batch_size" in nc else []
    parts += [f"mask size weight {nc['lam']:g}"] if "lam" in nc else []
    return ", ".join(parts)


def recovery_sentence(entry: dict, claim: dict) -> str:
    """A sample's trigger-recovery claim as a sentence, with its RNP and Neural Cleanse settings as a
    person reads them."""
    rnp = claim["settings"].get("rnp") or {}
    how = f" ({describe_settings(rnp)})" if rnp else ""
    nc = describe_recovery(claim["settings"].get("nc") or {})
    nc = f" ({nc})" if nc else ""
    target = entry["target"]
    found = ("flags" if target in claim["flagged"] else "does not flag") + f" label {target}, the attacker's target"
    return (f"Neural Cleanse{nc} on RNP's unlearned model{how} {found} (anomaly index {claim['anomaly']:.2f}), and the "
            f"trigger it recovers for it flips {100 * claim['asr_original']:.1f}% of the original model's clean "
            f"images to {target}.")


def build_sample_model(entry: dict) -> nn.Module:
    c, h, _ = entry["input_shape"]
    return build_model(entry["architecture"], entry["num_classes"], c, h, **entry.get("arch_kwargs", {}))


def load_sample(name: str, device: str | torch.device = "cpu") -> Sample:
    """A shipped sample model in eval mode, with its trigger."""
    cat = catalog()
    if name not in cat:
        raise KeyError(f"No sample model {name!r}; choose one of {', '.join(cat) or '(none trained yet)'}.")
    entry = cat[name]
    model = build_sample_model(entry)
    load_into(model, HERE / entry["weights"])
    model.to(device).eval()
    spec = TriggerSpec.from_dict(entry["trigger"]) if entry.get("trigger") else None
    trigger = spec.build(tuple(entry["input_shape"])) if spec else None
    return Sample(name, model, entry, spec, trigger)


def load_for_run(name: str):
    """(model, trigger spec dict or None, title): a sample as a run loads it; ``defenses`` calls this
    through the ``prunescope.model_sources`` entry point (defenses/readers/sources.py)."""
    s = load_sample(name)
    return s.model, (s.spec.to_dict() if s.spec else None), s.entry["title"]


# Words a student reads (the Model page's caption says more): the defense's own threshold, and the
# deepest cut that keeps clean accuracy, which needs no trigger to find.
CUT_LABELS = {"own": "the defense's threshold", "budget": "most pruning that keeps ACC"}


def efficacy_rows(entry: dict) -> list[dict]:
    """What each defense measured on this sample did (``python -m sample_models.efficacy``), one
    row per defense and cut, with labels a person reads."""
    from defenses.base import get_defense

    from .efficacy import meets_bar

    rows = []
    for defense, eff in (entry.get("efficacy") or {}).items():
        settings = describe_settings(eff.get("settings", {})) or "the paper's"
        for cut in ("own", "budget"):
            c = eff.get(cut)
            if not c:
                continue
            rows.append({
                "Defense": get_defense(defense).title.split(':')[0].split(' (')[0], "Settings": settings,
                "Cut": CUT_LABELS[cut],
                "Pruned": c["pruned"], "ACC": f"{100 * c['acc']:.1f}%", "ASR": f"{100 * c['asr']:.1f}%",
                "Removed": "yes" if meets_bar(entry, c) else "no",
                "Seconds": eff.get("seconds"),
            })
    return rows
