"""Attribution maps from captum, for the Triggers page: where does the model look?

Read-only on the model (no hooks left, no parameter changed); the maps are reduced to one
channel (sum of absolute values) and scaled to [0, 1] per image so that before/after pruning
compare by shape rather than by magnitude.
"""
from __future__ import annotations

import numpy as np
import torch

METHODS = ("Saliency", "IntegratedGradients")


def attribution_maps(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, method: str = "Saliency",
                     steps: int = 32) -> np.ndarray:
    """N x H x W maps in [0, 1] of ``model``'s evidence for ``target`` on inputs ``x``."""
    from captum.attr import IntegratedGradients, Saliency

    if method not in METHODS:
        raise ValueError(f"Unknown attribution method {method!r}; choose {' or '.join(METHODS)}.")
    was = model.training
    model.eval()
    try:
        x = x.clone().requires_grad_(True)
        if method == "Saliency":
            a = Saliency(model).attribute(x, target=target, abs=True)
        else:
            a = IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=steps,
                                                     internal_batch_size=len(x) * 8)
    finally:
        model.train(was)
    a = a.detach().abs().sum(1)
    peak = a.flatten(1).max(1).values.clamp_min(1e-12).view(-1, 1, 1)
    return (a / peak).cpu().numpy()


@torch.no_grad()
def predictions(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        return model(x).argmax(1)
    finally:
        model.train(was)
