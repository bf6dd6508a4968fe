"""CLP: Channel Lipschitzness-based Pruning.

Runkai Zheng, Rongjun Tang, Jianze Li and Li Liu, "Data-free Backdoor Removal based on Channel
Lipschitzness", ECCV 2022 (reference code: rkteddy/channel-Lipschitzness-based-pruning).

Data-free. For each BatchNorm channel k fed by a Conv2d with filter W_k (C_in x kh x kw), the
upper bound of the channel's Lipschitz constant (UCLC) is

    UCLC_k = sigma_max(W_k reshaped to C_in x (kh * kw)) * |gamma_k| / sqrt(running_var_k + eps)

and, within each layer, channels with UCLC_k > mean + u * std (unbiased std, u = 3) are pruned
(gamma and beta zeroed). High is suspicious.

Deliberate deviations and choices:
- **eps is included** in the denominator (the BN's own ``eps``): the reference code and the
  paper's formula use ``sqrt(running_var)``. With eps the constant is the channel's actual
  scale as the BN computes it, and a dead channel (running_var = 0) gives a finite constant
  instead of inf/NaN, which would poison the layer's mean and std. For any channel whose
  running variance is well above eps (1e-5 by default) the two agree to a few parts in 1e5.
- **pairing from the traced graph**, not module order: a BN's convolution is the Conv2d whose
  output tensor *is* the BN's input in a forward pass (``neurons.find_neurons``). The
  reference pairs each BN with the previous Conv2d in ``named_modules()`` order, which is wrong
  for pre-activation ResNets, where a block's ``bn1`` normalises the residual sum. A BN whose
  input is not a Conv2d/Linear output (a residual sum, a pooled or concatenated tensor) is
  refused: left out of the scores and named with a one-sentence reason in
  ``extras["refused"]``. The same holds for a BN that keeps no running statistics, and for
  GroupNorm, LayerNorm and InstanceNorm neurons: they normalise each image with its own
  statistics, so the paper's fold of the norm into the filter has no fixed factor.
- **Linear layers**: a neuron's constant is the L2 norm of its weight row (the spectral norm of
  a 1 x C_in matrix), times |gamma| / sqrt(running_var + eps) when a BatchNorm1d follows (the
  BN channel is then the neuron, as for conv layers). The reference has only a commented-out
  variant of this.
- **Conv2d without BN** (neurons of kind ``conv``, in nets with no BatchNorm2d): sigma_max(W_k),
  i.e. the UCLC with gamma / std = 1. The paper only treats conv + BN.
- a layer of one neuron has std 0, so its cut is its mean and nothing in it is pruned.

The clean data is used only for its image shape, to trace the graph; ``clean_data`` may also be
given as a shape tuple (C, H, W).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..base import Callback, DefenseResult, NullCallback, check_range, progress, register, resolve_device
from ..neurons import NeuronLayer, NeuronMap, find_neurons
from ..norms import NORM_LABELS

_BN = nn.modules.batchnorm._BatchNorm


@dataclass(frozen=True)
class CLPConfig:
    u: float = 3.0  # prune channels whose UCLC exceeds the layer mean by u standard deviations

    def __post_init__(self):
        check_range("u", self.u, 0, 100)


def input_shape_of(clean_data) -> tuple[int, ...]:
    """The (C, H, W) image shape of an ArraySplit, or a shape given directly."""
    if clean_data is None:
        raise ValueError("CLP needs example images (or their shape) to trace the model, even though it uses no data.")
    if isinstance(clean_data, (tuple, list, torch.Size)):
        return tuple(int(v) for v in clean_data)
    return tuple(clean_data.x.shape[1:])


def bn_scale(bn: _BN) -> torch.Tensor:
    """|gamma| / sqrt(running_var + eps): the factor a BN in eval mode multiplies a channel by."""
    return bn.weight.detach().abs() / torch.sqrt(bn.running_var.detach() + bn.eps)


def conv_channel_norms(conv: nn.Conv2d) -> torch.Tensor:
    """sigma_max of each output filter reshaped to C_in x (kh * kw), all filters in one call."""
    w = conv.weight.detach()
    return torch.linalg.matrix_norm(w.reshape(w.shape[0], w.shape[1], -1).double(), ord=2).float()


def linear_row_norms(linear: nn.Linear) -> torch.Tensor:
    return linear.weight.detach().double().norm(dim=1).float()


def source_norms(module: nn.Module) -> torch.Tensor | None:
    if isinstance(module, nn.Conv2d):
        return conv_channel_norms(module)
    if isinstance(module, nn.Linear):
        return linear_row_norms(module)
    return None


def layer_constants(model: nn.Module, layer: NeuronLayer) -> tuple[torch.Tensor | None, str]:
    """(constants, "") for a layer CLP can score, else (None, the reason it cannot)."""
    mod = model.get_submodule(layer.name)
    if layer.is_norm:
        if layer.kind != "bn":
            return None, (f"it is a {NORM_LABELS[layer.kind]}, which normalises each image with its own statistics, "
                          "so no fixed scale can be folded into the filter.")
        if layer.source is None:
            return None, ("its input is not the output of a Conv2d or Linear layer (it is, for instance, a "
                          "residual sum), so no filter can be paired with it.")
        if mod.running_var is None:
            return None, "it keeps no running variance, so its scale cannot be folded into the filter."
        norms = source_norms(model.get_submodule(layer.source))
        if norms is None or norms.numel() != layer.size:
            return None, f"its input layer {layer.source} is not a Conv2d or Linear with {layer.size} outputs."
        # Both factors on the CPU: the filter norms are computed where the model lives (a GPU, say).
        return norms.cpu() * bn_scale(mod).cpu(), ""
    norms = source_norms(mod)
    if norms is None:
        return None, "it is neither a Conv2d nor a Linear layer."
    return norms.cpu(), ""


def no_layer_message(refused: dict[str, str]) -> str:
    """One sentence naming the layers CLP had to refuse, when it can score none of them."""
    names = list(refused)
    if not names:
        return "CLP found no layer it can score: the model has no BatchNorm, Conv2d or Linear neuron layer."
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    first = refused[names[0]].split(": ", 1)[-1]  # "<name> is left out: <reason>"
    if len(names) == 1:
        return f"CLP found no layer it can score: {names[0]} is left out because {first}"
    return f"CLP found no layer it can score: {shown} are left out ({names[0]} because {first.rstrip('.')})."


def mean_plus_u_std(scores: torch.Tensor, u: float) -> float:
    """mean + u * std (unbiased); a single neuron has std 0."""
    s = scores.double()
    std = float(s.std()) if s.numel() > 1 else 0.0
    return float(s.mean()) + u * std


def check_scorable(model: nn.Module, nmap: NeuronMap, config=None) -> None:
    """Refuse, before a run starts, a model in which CLP can score no layer."""
    refused = {}
    for layer in nmap.layers:
        constants, reason = layer_constants(model, layer)
        if constants is not None:
            return
        refused[layer.name] = f"{layer.name} is left out: {reason}"
    raise ValueError(no_layer_message(refused))


@register("clp", "CLP: channel Lipschitzness-based pruning", CLPConfig, needs_data=False, summary=(
    "Data-free: scores each channel by an upper bound of its Lipschitz constant (filter spectral "
    "norm times the BN scale) and prunes channels u standard deviations above their layer's mean."),
    check=check_scorable,
    demo_note=("Data-free and done in about a second, so there is no budget to shorten. On the conv-net samples CLP "
               "leaves the backdoor in (cnn_badnets_centre: 1 neuron pruned, ASR 94.2%): it is the baseline the "
               "data-driven defenses are measured against. On mlp_head_subnet, whose backdoor sits in a few "
               "implanted neurons with outsized weights, it prunes the same 1 neuron as Hölder (ASR 0.3%)."))
class CLP:
    def __init__(self, config: CLPConfig | None = None, **kwargs):
        self.config = config if config is not None else CLPConfig(**kwargs)

    def run(self, model, clean_data, callback: Callback | None = None, device=None) -> DefenseResult:
        cfg = self.config
        callback = callback or NullCallback()
        t0 = time.perf_counter()
        # CLP only reads parameters, so it works where the model lives; ``device`` is accepted
        # for the common signature. The trace hooks the caller's model for one forward and
        # removes its hooks itself.
        nmap = find_neurons(model, input_shape_of(clean_data), resolve_device(model, None))
        total = len(nmap.layers)
        with progress(callback, total, {"clp": total}):
            scores, thresholds, refused, pairing = {}, {}, {}, {}
            with torch.no_grad():
                for i, layer in enumerate(nmap.layers, 1):
                    constants, reason = layer_constants(model, layer)
                    if constants is None:
                        refused[layer.name] = f"{layer.name} is left out: {reason}"
                    else:
                        scores[layer.name] = constants.detach().float().cpu()
                        thresholds[layer.name] = mean_plus_u_std(scores[layer.name], cfg.u)
                        pairing[layer.name] = layer.source if layer.is_norm else layer.name
                    callback.step("clp", i, total, {"scored": float(len(scores)), "refused": float(len(refused))})
            if not scores:
                raise ValueError(no_layer_message(refused))
            if math.isnan(sum(float(s.sum()) for s in scores.values())):
                raise ValueError("CLP constants are NaN: the model's weights or BatchNorm statistics contain NaN.")
        elapsed = time.perf_counter() - t0
        n_pruned = {k: int((scores[k] > thresholds[k]).sum()) for k in scores}
        return DefenseResult(
            defense="clp", scores=scores, suspicious="high", prune_rule="both", threshold=thresholds,
            config=dataclasses.asdict(cfg), timings={"total_s": elapsed},
            extras={"refused": refused, "pairing": pairing, "n_pruned": n_pruned, "rule": "mean+u*std"},
        )
