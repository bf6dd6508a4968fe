"""ANP's neuron noise: under small adversarial noise on every neuron, where do the errors go?

Wu and Wang, "Adversarial Neuron Pruning Purifies Backdoored Deep Models", NeurIPS 2021 (Fig. 1):
a backdoored network under neuron noise misclassifies clean images mostly *into the target*.
``defenses.methods.perturbation.neuron_noise_curve`` measures the errors and their destinations at each
noise bound; this signal sums the destinations over the bounds > 0. Evidence per class: log(1 +
errors sent to it). The p-value tests the top class against the even share 1 / (K - 1) with a
binomial tail, Bonferroni-corrected for K classes; it is anti-conservative (a clean network's
errors also prefer some classes, e.g. 4 -> 9), which is why the combination reads the robust
outlier score instead. The own rule is the product's existing suspect rule
(``perturbation.suspect_label``: top at every bound, at least 2.5 times the even share).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import math

import torch

from ..base import check_range
from ..methods.perturbation import neuron_noise_curve, suspect_label
from .base import from_evidence, register_signal


@dataclass(frozen=True)
class NoiseConfig:
    eps: tuple[float, ...] = (0.2, 0.4)  # noise bounds (the Model page's check uses 0.1 ... 0.6)
    images: int = 500
    seed: int = 0

    def __post_init__(self):
        check_range("images", self.images, 1, 100_000, integer=True)


def binomial_p(count: int, total: int, share: float, classes: int) -> float:
    from scipy.stats import binom

    if total == 0:
        return 1.0
    return min(1.0, classes * float(binom.sf(count - 1, total, share)))


@register_signal("noise", "ANP neuron noise", NoiseConfig, needs_data=True, paper=(
    "Wu and Wang, Adversarial Neuron Pruning Purifies Backdoored Deep Models, NeurIPS 2021"),
    measures="where clean images' errors go when every neuron is slightly perturbed: a backdoored network's pile onto "
             "its target")
class NeuronNoise:
    def __init__(self, config: NoiseConfig | None = None, **kwargs):
        self.config = config if config is not None else NoiseConfig(**kwargs)

    def run(self, model, clean_data, callback=None, device=None, input_shape=None, num_classes=None):
        cfg = self.config
        t0 = time.perf_counter()
        points = neuron_noise_curve(model, clean_data, (0.0, *cfg.eps), images=cfg.images, seed=cfg.seed,
                                    device=device)
        counts = torch.tensor([p.errors_to for p in points if p.eps > 0]).sum(0)
        total = int(counts.sum())
        k = len(counts)
        top = int(counts.argmax())
        p = binomial_p(int(counts[top]), total, 1 / max(1, k - 1), k)
        evidence = [math.log1p(float(c)) for c in counts]
        return from_evidence(self.name, evidence, p_value=p, own_rule=suspect_label(points) is not None,
                             seconds=time.perf_counter() - t0,
                             details={"errors_to": counts.tolist(), "points": [q.to_dict() for q in points]})
