"""What every scan signal returns, the signal registry, and the robust outlier statistic they share.

A signal is one measurement of "does one label stand out?": it computes one number per class (its
*evidence* that the class is a backdoor target, larger = more suspicious), and the scan reads it
through the same robust outlier score, the anomaly index of Neural Cleanse generalised: how many
median absolute deviations the most suspicious class stands above the median class. Each signal
also reports its paper's own test (a p-value where the paper has one), for the anchors in
docs/scan.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..methods.trigger_recovery import MAD_CONSTANT  # makes the MAD of a normal sample estimate its standard deviation


class SignalError(ValueError):
    """A signal cannot run on this model or data; the message is one sentence."""


@dataclass
class SignalResult:
    name: str
    evidence: list[float]  # one value per class; larger = more like a backdoor target
    score: float  # the top class's robust outlier score (``outlier_scores``), what the combination reads
    label: int  # the most suspicious class
    p_value: float | None  # the paper's own test, where it has one (small = backdoor)
    own_rule: bool | None  # the paper's own decision rule (e.g. anomaly index > 2, p <= 0.05)
    seconds: float
    details: dict = field(default_factory=dict)  # what the chart needs (null fit, per-class raw values, ...)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def outlier_scores(evidence) -> torch.Tensor:
    """(v - median) / (1.4826 * MAD) per class: large positive values stand out on the suspicious
    side. Medians average the two middle values (numpy's rule, as Neural Cleanse's code); a zero MAD
    (every class alike but the outliers) is floored at a small fraction of the spread so that one
    clear outlier does not become infinite."""
    v = torch.as_tensor(evidence, dtype=torch.float64)
    med = torch.quantile(v, 0.5)
    mad = MAD_CONSTANT * torch.quantile((v - med).abs(), 0.5)
    floor = 1e-3 * float((v.max() - v.min()).abs()) + 1e-9
    return (v - med) / max(float(mad), floor)


def from_evidence(name: str, evidence, *, p_value=None, own_rule=None, seconds=0.0, details=None) -> SignalResult:
    z = outlier_scores(evidence)
    label = int(torch.argmax(z))
    return SignalResult(name, [float(v) for v in evidence], float(z[label]), label, p_value, own_rule, seconds,
                        details or {})


@dataclass(frozen=True)
class SignalInfo:
    name: str
    title: str  # what a person reads
    cls: type
    config_cls: type
    needs_data: bool
    paper: str
    measures: str  # one sentence: what it measures, for the Learn page and the report


SIGNALS: dict[str, SignalInfo] = {}
ORDER = ("weights", "mmbd", "noise", "unlearn", "cleanse")  # cheap ones first


def register_signal(name: str, title: str, config_cls: type, *, needs_data: bool, paper: str,
                    measures: str) -> Callable[[type], type]:
    def deco(cls):
        SIGNALS[name] = SignalInfo(name, title, cls, config_cls, needs_data, paper, measures)
        cls.name = name
        return cls

    return deco


def all_signals() -> dict[str, SignalInfo]:
    # The package's __init__ imports every signal module, which fills SIGNALS; importing this module
    # imports the package first, so the registry is full by the time anyone calls this.
    # A fixed order, whatever order the modules happened to be imported in
    return {n: SIGNALS[n] for n in sorted(SIGNALS, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))}
