"""A model spec: one JSON file that says how to rebuild a model and measure it.

``prunescope import`` writes one beside the weights it converts; ``prunescope run --spec`` and the
dashboard's Model page read it, so a research model needs no flags to be examined correctly:

    {"prunescope_spec": 1,
     "architecture": "preact_resnet18", "arch_kwargs": {"final_bn": false},
     "checkpoint": "model.safetensors",          # relative to the spec's folder
     "num_classes": 10, "input_shape": [3, 32, 32],
     "normalize": {"mean": [...], "std": [...]},  # or a preset name, or null (pixels in [0, 1])
     "dataset": "cifar10", "image_size": 32,      # what to load the clean and test images from
     "poisoned_test": "bd_test.npz",              # the attack's poisoned test images, or null
     "source": {...}}                             # where it came from, for the record

Only data is read from it: nothing in a spec is executed, and an architecture given as
``path/to/file.py:Class`` is refused here, since a spec may come from someone else.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

VERSION = 1
FILENAME = "spec.json"


class SpecError(ValueError):
    """A model spec is missing, unreadable or incomplete; the message is one sentence."""


@dataclass
class ModelSpec:
    model: dict  # what defenses.runs.folder.load_model takes (architecture, checkpoint as an absolute path, ...)
    dataset: str | None = None
    image_size: int | None = None
    poisoned_test: str | None = None  # absolute path of the poisoned test set, if the spec has one
    source: dict = field(default_factory=dict)
    path: str = ""

    def image_size_for(self, dataset: str) -> int | None:
        """The image size to load ``dataset`` at: the spec's, when it is the spec's own dataset."""
        return int(self.image_size) if self.image_size and dataset == self.dataset else None

    def trigger(self) -> dict | None:
        """The run's trigger from the spec: its poisoned test set, else unknown."""
        if not self.poisoned_test:
            return None
        from .poisoned import poisoned_trigger

        return poisoned_trigger(self.poisoned_test)


def spec_path(path) -> Path:
    """A spec file, or a folder holding ``spec.json``."""
    p = Path(path).expanduser()
    return p / FILENAME if p.is_dir() else p


def read_spec(path) -> ModelSpec:
    p = spec_path(path)
    if not p.is_file():
        raise SpecError(f"No model spec at {p}; give the spec.json that `prunescope import` wrote, or its folder.")
    try:
        raw = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"{p.name} is not a JSON model spec ({type(e).__name__}).") from None
    if not isinstance(raw, dict) or raw.get("prunescope_spec") != VERSION:
        raise SpecError(f"{p.name} is not a prunescope model spec (it lacks \"prunescope_spec\": {VERSION}).")
    missing = [k for k in ("architecture", "checkpoint") if not raw.get(k)]
    if missing:
        raise SpecError(f"{p.name} lacks {' and '.join(missing)}.")
    wrong = [k for k, kind in (("architecture", str), ("checkpoint", str), ("arch_kwargs", dict),
                               ("dataset", str), ("poisoned_test", str)) if raw.get(k) is not None
             and not isinstance(raw[k], kind)]
    if wrong:
        raise SpecError(f"{p.name} has {', '.join(wrong)} of the wrong kind (a text, or for arch_kwargs an object).")
    if ".py:" in str(raw["architecture"]):
        raise SpecError(f"{p.name} names a Python file as its architecture, which a spec may not run; give it "
                        "with --arch on the command line if it is your own.")
    folder = p.parent.resolve()

    def local(name):
        return str((folder / name).resolve()) if name else None

    model = {"architecture": raw["architecture"], "checkpoint": local(raw["checkpoint"]),
             "arch_kwargs": dict(raw.get("arch_kwargs") or {}), "num_classes": raw.get("num_classes"),
             "input_shape": raw.get("input_shape")}
    if raw.get("normalize") not in (None, "", "none"):
        model["normalize"] = raw["normalize"]
    return ModelSpec(model, raw.get("dataset"), raw.get("image_size"), local(raw.get("poisoned_test")),
                     dict(raw.get("source") or {}), str(p))


def write_spec(folder, *, architecture: str, checkpoint: str, arch_kwargs: dict | None = None,
               num_classes: int | None = None, input_shape=None, normalize=None, dataset: str | None = None,
               image_size: int | None = None, poisoned_test: str | None = None, source: dict | None = None) -> Path:
    path = Path(folder) / FILENAME
    spec = {"prunescope_spec": VERSION, "architecture": architecture, "arch_kwargs": arch_kwargs or {},
            "checkpoint": checkpoint, "num_classes": num_classes,
            "input_shape": list(input_shape) if input_shape else None, "normalize": normalize, "dataset": dataset,
            "image_size": image_size, "poisoned_test": poisoned_test, "source": source or {}}
    path.write_text(json.dumps(spec, indent=1) + "\n")
    return path
