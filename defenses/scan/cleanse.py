"""Neural Cleanse on the original model: is one label's trigger abnormally small?

Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural Networks",
IEEE S&P 2019, run through ``defenses.methods.trigger_recovery`` (one mask and pattern per label, the
smallest mask that sends clean images to it). The paper's rule flags a label whose anomaly index
of the raw mask L1 exceeds 2 (``own_rule``). The scan's evidence is -log(L1): on a log scale a
13-fold outlier stands out even when the other labels' masks spread widely (the product's run on
RNP's unlearned ``cnn_badnets_centre``: L1 6.6 against 88.6-299.5, raw anomaly index 1.68).

Deliberate deviation for a scan's budget: ``steps`` 40 Adam steps per label (the product's
trigger recovery 300; Neural Cleanse optimises for many epochs with an adaptive lambda).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from ..base import check_range
from ..methods.trigger_recovery import TriggerRecovery, TriggerRecoveryConfig
from .base import from_evidence, register_signal


@dataclass(frozen=True)
class CleanseConfig:
    steps: int = 40  # per label (Neural Cleanse: many epochs; the product's trigger recovery: 300)
    batch_size: int = 64
    lam: float = 0.01
    anomaly_threshold: float = 2.0  # the paper's rule
    seed: int = 0

    def __post_init__(self):
        check_range("steps", self.steps, 1, 100_000, integer=True)


@register_signal("cleanse", "Neural Cleanse trigger sizes", CleanseConfig, needs_data=True, paper=(
    "Wang et al., Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural Networks, IEEE S&P 2019"),
    measures="the smallest patch that sends clean images to each label: a backdoor's target needs an abnormally small "
             "one")
class Cleanse:
    def __init__(self, config: CleanseConfig | None = None, **kwargs):
        self.config = config if config is not None else CleanseConfig(**kwargs)

    def run(self, model, clean_data, callback=None, device=None, input_shape=None, num_classes=None):
        cfg = self.config
        t0 = time.perf_counter()
        rec = TriggerRecovery(TriggerRecoveryConfig(steps=cfg.steps, batch_size=cfg.batch_size, lam=cfg.lam,
                                                    anomaly_threshold=cfg.anomaly_threshold, seed=cfg.seed)
                              ).run(model, clean_data, device=device, num_classes=num_classes)
        evidence = [-math.log(max(v, 1e-6)) for v in rec.l1]
        result = from_evidence(self.name, evidence, own_rule=bool(rec.flagged), seconds=time.perf_counter() - t0,
                               details={"l1": rec.l1, "anomaly_index": rec.anomaly, "flagged": rec.flagged,
                                        "asr": rec.asr_on_model})
        t = result.label
        result.details["mask"] = rec.masks[t, 0].tolist()
        result.details["pattern"] = rec.patterns[t].tolist()
        return result
