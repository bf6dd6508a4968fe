"""The scan: every signal on one model, combined into one verdict. A plain function of
(model, data, config), so that it can be shipped to a worker or a Ray task.

The combination is a logistic calibration of the signals' outlier scores fitted on the
development zoo (``python -m bench.scan`` fits it, measures it with one attack kind held out at a
time, and writes ``calibration.json`` beside this module); the suspected target is the class with
the largest calibrated sum of the signals' per-class outlier scores.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..base import Callback, NullCallback, progress
from ..readers.data import ArraySplit, DataError
from .base import SignalError, SignalResult, all_signals, outlier_scores

CALIBRATION = Path(__file__).resolve().parent / "calibration.json"
MIN_IMAGES = 20


@dataclass(frozen=True)
class ScanConfig:
    signals: tuple[str, ...] | None = None  # default: every registered signal (the probability reads the calibration's)
    settings: dict = field(default_factory=dict)  # per signal: {name: {field: value}}
    seed: int = 0


@dataclass
class Verdict:
    probability: float  # that the model carries a backdoor
    label: int  # the suspected target
    label_confidence: float  # softmax of the combined per-class evidence
    signals: dict[str, SignalResult]
    seconds: float
    calibration: dict  # what the probability was fitted on and how it measured (docs/scan.md)
    clean_accuracy: float | None = None  # on the clean set the scan used (None: data-free)
    notes: list[str] = field(default_factory=list)  # why the numbers may say less than they seem to

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["signals"] = {k: v.to_dict() for k, v in self.signals.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Verdict":
        sig = {k: SignalResult(**v) for k, v in d["signals"].items()}
        return cls(d["probability"], d["label"], d["label_confidence"], sig, d["seconds"], d["calibration"],
                   d.get("clean_accuracy"), d.get("notes", []))


def load_calibration(path: Path = CALIBRATION) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    # Before any fit: equal weights on every signal, a logistic centred on an outlier score of 3.
    names = list(all_signals())
    return {"signals": names, "weights": [1.0] * len(names), "bias": -3.0 * len(names), "scale": [1.0] * len(names),
            "fitted_on": "nothing (uncalibrated default)", "measured": {}}


def combine(results: dict[str, SignalResult], calibration: dict) -> tuple[float, int, float]:
    """(probability, suspected label, its confidence) from the signals' results."""
    names = [n for n in calibration["signals"] if n in results]
    w = {n: calibration["weights"][calibration["signals"].index(n)] for n in names}
    s = {n: calibration["scale"][calibration["signals"].index(n)] for n in names}
    logit = calibration["bias"] + sum(w[n] * clip_score(results[n].score) / s[n] for n in names)
    probability = 1 / (1 + math.exp(-max(-50.0, min(50.0, logit))))
    per_class = sum(max(w[n], 0.0) / s[n] * outlier_scores(results[n].evidence).clamp(-10, 10) for n in names)
    if not isinstance(per_class, torch.Tensor):  # no signal with a weight
        per_class = sum(outlier_scores(r.evidence) for r in results.values())
    label = int(torch.argmax(per_class))
    conf = float(torch.softmax(per_class, 0)[label])
    return probability, label, conf


def clip_score(score: float) -> float:
    """Outlier scores beyond 20 MADs say the same thing; clipping keeps one runaway from dominating."""
    return max(-20.0, min(20.0, float(score)))


def check_scan_input(model, clean_data: ArraySplit | None, needs_data: bool, input_shape=None) -> int:
    """One sentence for input a scan cannot use; returns the number of classes."""
    shape = tuple(clean_data.x.shape[1:]) if clean_data is not None else tuple(input_shape or ())
    if not shape:
        raise DataError("A data-free scan needs the model's input shape (channels, height, width).")
    if needs_data and (clean_data is None or len(clean_data) < MIN_IMAGES):
        n = 0 if clean_data is None else len(clean_data)
        raise DataError(f"The scan needs a clean set of at least {MIN_IMAGES} labelled images (about 500 is usual), "
                        f"but got {n}; give more, or choose only the data-free signals (mmbd, weights).")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(2, *shape, device=device))
    except RuntimeError as e:
        raise SignalError(f"The model does not accept {shape[0]}x{shape[1]}x{shape[2]} images "
                          f"({str(e).splitlines()[0][:120]}); check the architecture and the dataset.") from None
    finally:
        model.train(was)
    if out.ndim != 2 or out.shape[1] < 3:
        raise SignalError(f"The model gives {tuple(out.shape[1:])} outputs per image; a scan needs a classifier "
                          f"with at least 3 classes to compare one label against the others.")
    if clean_data is not None:
        if int(clean_data.y.max()) >= out.shape[1]:
            raise DataError(f"The clean set has label {int(clean_data.y.max())} but the model has {out.shape[1]} classes.")
    return int(out.shape[1])


def scan(model, clean_data: ArraySplit | None, config: ScanConfig | None = None, callback: Callback | None = None,
         device=None, input_shape=None, calibration: dict | None = None, previous: dict | None = None,
         on_signal=None) -> Verdict:
    """Run every signal and combine them. ``clean_data`` may be None for a data-free scan (the
    signals that need data are then skipped and the calibration's probability is computed from the
    rest, which it was not fitted for: the verdict says so). ``previous`` holds signals already
computed (a resumed scan), reused as they are; ``on_signal(result)`` is called as each finishes."""
    config = config or ScanConfig()
    callback = callback or NullCallback()
    calibration = calibration or load_calibration()
    registry = all_signals()
    names = list(config.signals or registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise SignalError(f"Unknown scan signal {unknown[0]!r}; choose from {', '.join(registry)}.")
    if clean_data is None:
        names = [n for n in names if not registry[n].needs_data]
    num_classes = check_scan_input(model, clean_data, any(registry[n].needs_data for n in names), input_shape)
    t0 = time.perf_counter()
    results = {}
    with progress(callback, len(names), {n: 1 for n in names}):
        for i, n in enumerate(names, 1):
            if previous and n in previous:
                results[n] = previous[n]
                callback.step(n, i, len(names), {"score": results[n].score, "seconds": results[n].seconds})
                continue
            info = registry[n]
            cfg = info.config_cls(**{"seed": config.seed, **config.settings.get(n, {})}) \
                if "seed" in {f.name for f in dataclasses.fields(info.config_cls)} else \
                info.config_cls(**config.settings.get(n, {}))
            signal = info.cls(cfg)
            results[n] = signal.run(model, clean_data, device=device, input_shape=input_shape,
                                    num_classes=num_classes)
            if on_signal is not None:
                on_signal(results[n])
            callback.step(n, i, len(names), {"score": results[n].score, "seconds": results[n].seconds})
    probability, label, conf = combine(results, calibration)
    notes, acc = [], None
    if clean_data is None:
        notes.append("A data-free scan runs only the signals that need no images; its probability comes from a "
                     "calibration fitted with every signal, so it is weaker evidence than a full scan; and without "
                     "images it cannot check the input normalisation: a model trained on normalised images needs "
                     "it given (--normalize), or MM-BD explores inputs the model never saw.")
    else:
        from ..evaluation import accuracy

        acc = accuracy(model, clean_data, device=device)
        if acc < 2 / num_classes:
            notes.append(f"The model gets only {100 * acc:.0f}% of the clean images right, near chance for "
                         f"{num_classes} classes: it may need its input normalisation (--normalize) or another "
                         f"dataset, and then the signals read noise.")
    return Verdict(probability, label, conf, results, time.perf_counter() - t0, calibration, acc, notes)
