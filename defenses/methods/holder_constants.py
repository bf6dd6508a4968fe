"""Hölder pruning's arithmetic: which layers form the MLP head, which activation follows each,
and the closed-form Hölder ratios in layer space (the definition is in ``holder.py``'s docstring
and SPEC-defenses.md). Plain functions of tensors and modules; the defense is ``holder.Holder``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..neurons import NeuronMap

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
               nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
               nn.Tanhshrink, nn.LogSigmoid)


# ---------------------------------------------------------------- head and activations


def head_layers(nmap: NeuronMap) -> list[str]:
    """The neuron layers Hölder pruning scores: Linear layers with no BN after them, in order."""
    names = [l.name for l in nmap.layers if l.kind == "linear"]
    if not names:
        raise ValueError("Hölder pruning needs an MLP head on a frozen feature extractor: this model has no Linear "
                         "layer (without BatchNorm after it) besides its final classifier.")
    return names


def find_activations(model: nn.Module, layers: list[str], example: torch.Tensor) -> dict[str, nn.Module | None]:
    """The elementwise activation module applied directly to each layer's output, if any,
    found by tensor identity in one traced forward (hooks removed in ``finally``)."""
    names = {m: n for n, m in model.named_modules()}
    outputs, consumers, keep = {}, {}, []

    def out_hook(mod, inputs, output):
        keep.append(output)
        outputs.setdefault(names[mod], id(output))

    def act_hook(mod, inputs):
        if inputs and isinstance(inputs[0], torch.Tensor):
            keep.append(inputs[0])
            consumers.setdefault(id(inputs[0]), mod)

    handles = [model.get_submodule(n).register_forward_hook(out_hook) for n in layers]
    handles += [m.register_forward_pre_hook(act_hook) for m in model.modules() if isinstance(m, ACTIVATIONS)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return {n: consumers.get(outputs.get(n)) for n in layers}


def apply_phi(phi: nn.Module | None, z: torch.Tensor) -> torch.Tensor:
    # A clone, because activation modules may work in place (nn.ReLU(inplace=True)).
    return z if phi is None else phi(z.clone())


def phi_sign_slope(phi: nn.Module | None, z: torch.Tensor) -> torch.Tensor:
    """sign(phi'(z)) elementwise (0 where the activation is flat, e.g. an inactive ReLU)."""
    if phi is None:
        return torch.ones_like(z)
    with torch.enable_grad():
        zz = z.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(apply_phi(phi, zz).sum(), zz)
    return g.sign()


# ---------------------------------------------------------------- the constants


def layer_space_ratios(u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, phi: nn.Module | None,
                       radii: torch.Tensor, alpha: float, step: str) -> torch.Tensor:
    """Closed-form Hölder ratios, (K radii, N samples, H neurons), of a_i = phi(w_i . u + b_i).

    The gradient of a_i is phi'(z) w_i, so the step d moves z by sign(phi') * eps * |w_i|_2
    (L2 step, |d|_2 = eps) or sign(phi') * eps * |w_i|_1 (sign step, |d|_inf = eps). Where
    phi' = 0 the step is 0 and so is the ratio: the dead-unit convention."""
    z = u @ weight.T
    if bias is not None:
        z = z + bias
    s = phi_sign_slope(phi, z)
    row = weight.norm(p=2 if step == "l2" else 1, dim=1)
    shift = radii.view(-1, 1, 1) * (s * row).unsqueeze(0)  # K x N x H
    a0 = apply_phi(phi, z)
    a1 = apply_phi(phi, (z.unsqueeze(0) + shift).reshape(-1, z.shape[-1])).reshape(shift.shape)
    return (a1 - a0.unsqueeze(0)).abs() / radii.view(-1, 1, 1) ** alpha


def ratios_to_max(ratios: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max over radii and samples of (K, N, H) ratios, and which radius gave it (H,)."""
    per_radius = ratios.amax(dim=1)  # K x H
    best, which = per_radius.max(dim=0)
    return best, which


# ---------------------------------------------------------------- reporting


def radius_scale(norms: torch.Tensor) -> float:
    """median(|u|_2 / sqrt(dim u)); the mean if that is 0; 1 if both are."""
    med = float(norms.median()) if norms.numel() else 0.0
    if med > 0:
        return med
    mean = float(norms.mean()) if norms.numel() else 0.0
    return mean if mean > 0 else 1.0


def win_counts(which: torch.Tensor, best: torch.Tensor, k: int) -> list[int]:
    """How many (non-zero) neurons of a layer reached their maximum at each radius."""
    return torch.bincount(which[best > 0], minlength=k).tolist()


def describe_activation(module: nn.Module | None, activation: str) -> str:
    if activation == "pre":
        return "pre-activation (identity)"
    if module is None:
        return "no activation module found after this layer: pre-activation (identity) used"
    return type(module).__name__
