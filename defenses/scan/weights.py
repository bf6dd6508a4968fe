"""The final layer's weights: does one class's weight row stand out? Data-free, instant.

A backdoor must give its target a logit that beats every clean feature's vote on triggered
images, and training often does it by growing that class's weights in the classifier: Fields et
al. ("Trojan Signatures in DNN Weights", ICCV Workshops 2021) find the target's row of the final
layer an outlier among the classes' rows (their statistic: the row's maximum; here the rows'
L2 norm and maximum are both kept, the norm used as evidence, the maximum shown beside it). A
model with no linear classifier at the end (nothing to read) is refused in one sentence.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from .base import SignalError, from_evidence, register_signal


def final_linear(model: nn.Module) -> nn.Linear:
    last = None
    for _, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise SignalError("The model has no linear classifier layer whose weights could be read.")
    return last


@dataclass(frozen=True)
class WeightsConfig:
    statistic: str = "norm"  # "norm": each class row's L2 norm (evidence); "max": its largest weight


@register_signal("weights", "Final-layer weights", WeightsConfig, needs_data=False,
                 paper="Fields et al., Trojan Signatures in DNN Weights, ICCV Workshops 2021",
                 measures="whether one class's row of weights in the last layer is larger than the other classes'")
class FinalWeights:
    def __init__(self, config: WeightsConfig | None = None, **kwargs):
        self.config = config if config is not None else WeightsConfig(**kwargs)

    def run(self, model, clean_data=None, callback=None, device=None, input_shape=None, num_classes=None):
        t0 = time.perf_counter()
        w = final_linear(model).weight.detach().float().cpu()
        norms, maxima = w.norm(dim=1), w.max(dim=1).values
        evidence = norms if self.config.statistic == "norm" else maxima
        return from_evidence(self.name, evidence.tolist(), seconds=time.perf_counter() - t0,
                             details={"norm": norms.tolist(), "max": maxima.tolist()})
