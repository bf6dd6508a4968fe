"""RNP's unlearned model: which label does a network that has forgotten the clean task still call?

Li et al., "Reconstructive Neuron Pruning for Backdoor Defense", ICML 2023: unlearning the clean
task by gradient ascent on the defender's clean set leaves the backdoor standing, and the paper
notes the unlearned model serves "backdoor label detection". The unlearned model (RNP's own
unlearning, ``RNP.unlearn``, at the paper's rate 0.01 until the clean accuracy falls to 0.2)
classifies the clean images; on the shipped ``cnn_badnets`` it calls 47.6% of digits 0, the
target. Evidence per class: log of its share (plus one image, so an empty class is finite). The
p-value is a binomial tail of the top count against the even share 1/K, Bonferroni-corrected;
like the noise signal's it is anti-conservative, and the paper gives no decision rule of its own.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..base import check_range
from ..evaluation import predict
from ..methods.rnp import RNP, RNPConfig
from .base import from_evidence, register_signal
from .noise import binomial_p


@dataclass(frozen=True)
class UnlearnConfig:
    unlearn_lr: float = 0.01  # RNP's; the showcase study found 0.001 gentler on small nets
    unlearn_epochs: int = 20
    clean_threshold: float = 0.2
    seed: int = 0

    def __post_init__(self):
        check_range("unlearn_lr", self.unlearn_lr, 0, 10, low_open=True)


@register_signal("unlearn", "RNP unlearned label shares", UnlearnConfig, needs_data=True, paper=(
    "Li et al., Reconstructive Neuron Pruning for Backdoor Defense, ICML 2023"),
    measures="which label a copy of the model still predicts after it has unlearned the clean task: the backdoor's "
             "target survives")
class UnlearnedShares:
    def __init__(self, config: UnlearnConfig | None = None, **kwargs):
        self.config = config if config is not None else UnlearnConfig(**kwargs)

    def run(self, model, clean_data, callback=None, device=None, input_shape=None, num_classes=None):
        cfg = self.config
        t0 = time.perf_counter()
        rnp = RNP(RNPConfig(unlearn_lr=cfg.unlearn_lr, unlearn_epochs=cfg.unlearn_epochs,
                            clean_threshold=cfg.clean_threshold, seed=cfg.seed))
        unlearned, log, reached = rnp.unlearn(model, clean_data, device=device)
        pred = predict(unlearned.eval(), clean_data)
        if num_classes is None:  # called on its own: the model's output width
            with torch.no_grad():
                num_classes = unlearned(clean_data.images(torch.arange(1)).to(
                    next(unlearned.parameters()).device)).shape[1]
        counts = torch.bincount(pred.cpu(), minlength=num_classes)
        k = num_classes
        n = len(pred)
        top = int(counts.argmax())
        evidence = [math.log((float(c) + 1) / (n + k)) for c in counts]
        return from_evidence(self.name, evidence, p_value=binomial_p(int(counts[top]), n, 1 / k, k), own_rule=None,
                             seconds=time.perf_counter() - t0,
                             details={"shares": (counts.float() / n).tolist(), "unlearn_epochs": len(log),
                                      "reached_threshold": reached})
