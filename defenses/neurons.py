"""The neurons of any ``nn.Module``: find them, mask and perturb them, prune them.

A neuron is one output channel (see SPEC-defenses.md):
- every channel of every normalisation layer with a per-channel affine: BatchNorm (shortcut BNs
  included), GroupNorm and InstanceNorm with ``affine=True``, and LayerNorm with an elementwise
  affine over the channels (``normalized_shape`` of one dimension, or the whole C x H x W);
- every output channel of a Conv2d or Linear whose output does not feed such a norm directly,
  except (a) the final classifier, never a neuron, and (b) Conv2d layers in a network whose
  conv features are normalised per channel: there the norm channels are the neurons, as in ANP
  and RNP, and a residual conv whose output goes into an addition is covered by the next norm.

A GroupNorm, LayerNorm or InstanceNorm *without* a learnable per-channel scale is refused with
one sentence: it normalises each image with its own statistics, so a channel zeroed (or scaled
by a mask) before it is undone or rescaled by it (a zeroed conv channel before a GroupNorm still
fired at mean |activation| 0.068), and no channel of it can be pruned. A BatchNorm without
affine is not refused: in eval mode it applies fixed running statistics, so it keeps a pruned
channel pruned; it is only left out.

Neurons are found by running one forward pass with hooks and matching tensor identities: a BN
"follows" a layer when its input *is* that layer's output tensor. The same trace gives the
Conv/Linear that feeds each BN (CLP's pairing) and the final classifier (the module whose output
is the model's output). Hooks live only for the trace and are removed in ``finally``.

Masks and noise never edit a model: :func:`effective_params` computes the scaled weights and
:func:`masked_forward` runs the model with them through ``torch.func.functional_call``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from .norms import NORM_KINDS, NORM_LABELS, NORMS, norm_kind

_BN = nn.modules.batchnorm._BatchNorm


class NeuronError(ValueError):
    """The model's neurons could not be found; the message is one sentence."""


@dataclass(frozen=True)
class NeuronLayer:
    name: str  # the module's name in named_modules()
    kind: str  # "bn", "groupnorm", "layernorm", "instancenorm", "conv" or "linear"
    size: int  # number of neurons
    source: str | None = None  # for a norm: the Conv2d/Linear whose output it normalises, if any
    has_bias: bool = True

    @property
    def is_norm(self) -> bool:
        """A normalisation layer's per-channel affine: gamma is the weight, beta is kept on pruning."""
        return self.kind in NORM_KINDS


@dataclass(frozen=True)
class NeuronMap:
    layers: tuple[NeuronLayer, ...]
    classifier: str | None
    order: tuple[str, ...]  # every traced module in execution order
    left_out: tuple[tuple[str, str], ...] = ()  # (module, why it is not a neuron layer), for `prunescope neurons`

    @property
    def total(self) -> int:
        return sum(layer.size for layer in self.layers)

    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def layer(self, name: str) -> NeuronLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)


def _example_input(model: nn.Module, input_shape, device):
    if input_shape is None:
        raise NeuronError("The input shape (channels, height, width) is needed to trace the model.")
    return torch.rand(2, *input_shape, device=device)


def find_neurons(model: nn.Module, input_shape: tuple[int, ...], device=None) -> NeuronMap:
    """Trace one forward pass (eval mode, no grad) and return the model's neuron layers."""
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    names = {m: n for n, m in model.named_modules()}
    calls: list[tuple[str, nn.Module, int, int, tuple]] = []  # name, module, id(input), id(output), input shape
    keep_alive = []  # holding the tensors keeps their ids unique during the trace

    def hook(mod, inputs, output):
        if not inputs or not isinstance(inputs[0], torch.Tensor) or not isinstance(output, torch.Tensor):
            return
        keep_alive.extend((inputs[0], output))
        calls.append((names[mod], mod, id(inputs[0]), id(output), tuple(inputs[0].shape)))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear, *NORMS))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out = model(_example_input(model, input_shape, device))
    except Exception as e:
        raise NeuronError(f"Running the model on a {tuple(input_shape)} input failed ({type(e).__name__}: {e}).") from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not calls:
        raise NeuronError("The model has no Conv2d, Linear or normalisation layer to prune.")

    first_call = {}
    for name, mod, in_id, out_id, shape in calls:
        first_call.setdefault(name, (mod, in_id, out_id, shape))
    out_owner = {out_id: name for name, (mod, _, out_id, _) in first_call.items() if not isinstance(mod, NORMS)}

    classifier = next((n for n, (m, _, o, _) in first_call.items() if o == id(out)), None)
    if classifier is None:  # output made by a functional op: fall back to the last Linear/Conv called
        classifier = next((n for n, m, _, _, _ in reversed(calls) if isinstance(m, (nn.Linear, nn.Conv2d))), None)
    if classifier is not None and isinstance(first_call[classifier][0], NORMS):
        classifier = None

    norms = {n: (m, shape) for n, (m, _, _, shape) in first_call.items() if isinstance(m, NORMS)}
    kinds = {}
    for n, (m, shape) in norms.items():
        kind, reason = norm_kind(m, shape)
        if reason:
            raise NeuronError(f"{n} is {reason}; prunescope cannot prune a model with such a layer.")
        kinds[n] = kind
    norm_of = {first_call[n][1]: n for n in norms}  # the tensor each norm reads -> the norm
    has_norm2d = any(len(shape) == 4 and kinds[n] is not None for n, (_, shape) in norms.items())
    layers, left_out = [], []
    for name, (mod, in_id, out_id, _) in first_call.items():
        if name in norms:
            if kinds[name] is not None:
                layers.append(NeuronLayer(name, kinds[name], int(mod.weight.shape[0]), out_owner.get(in_id), True))
            else:
                left_out.append((name, "a BatchNorm without a learnable scale and shift"))
            continue
        if name == classifier:
            left_out.append((name, "the final classifier (its outputs are the classes)"))
            continue
        if out_id in norm_of and kinds[norm_of[out_id]] is not None:
            norm = norm_of[out_id]
            left_out.append((name, f"covered by the {NORM_LABELS[kinds[norm]]} after it ({norm}), whose channels "
                                   "are the neurons"))
            continue
        if isinstance(mod, nn.Conv2d):
            if has_norm2d:
                left_out.append((name, "a Conv2d with no norm layer after it in a network whose conv channels are "
                                       "normalised (e.g. a shortcut); its channels are read through the next norm"))
                continue
            layers.append(NeuronLayer(name, "conv", mod.out_channels, None, mod.bias is not None))
        elif isinstance(mod, nn.Linear):
            layers.append(NeuronLayer(name, "linear", mod.out_features, None, mod.bias is not None))
    if not layers:
        raise NeuronError("The model has no neurons to prune besides its final classifier.")
    return NeuronMap(tuple(layers), classifier, tuple(first_call), tuple(left_out))


# ---------------------------------------------------------------- masks and perturbations


def _scale(weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return weight * s.view(-1, *([1] * (weight.ndim - 1)))


def effective_params(model: nn.Module, neuron_map: NeuronMap, weight_scale: dict[str, torch.Tensor],
                     bias_scale: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Parameters with each neuron layer's weight rows (BN gamma) multiplied by ``weight_scale``
    and biases (BN beta) by ``bias_scale``; for ``functional_call``. Layers not named keep theirs."""
    params = {}
    bias_scale = bias_scale or {}
    for layer in neuron_map.layers:
        mod = model.get_submodule(layer.name)
        if layer.name in weight_scale:
            params[f"{layer.name}.weight"] = _scale(mod.weight, weight_scale[layer.name])
        if layer.name in bias_scale and mod.bias is not None:
            params[f"{layer.name}.bias"] = _scale(mod.bias, bias_scale[layer.name])
    return params


def masked_forward(model: nn.Module, x: torch.Tensor, neuron_map: NeuronMap, weight_scale, bias_scale=None):
    return functional_call(model, effective_params(model, neuron_map, weight_scale, bias_scale), (x,), strict=False)


def working_copy(model: nn.Module, device) -> nn.Module:
    """A deep copy on ``device`` whose own parameters are frozen: defenses train only masks."""
    clone = copy.deepcopy(model).to(device)
    clone.requires_grad_(False)
    return clone


# ---------------------------------------------------------------- pruning


def selection_by_threshold(scores: dict[str, torch.Tensor], threshold: float | dict[str, float],
                           suspicious: str) -> dict[str, torch.Tensor]:
    """Boolean masks of the neurons to prune: ``score <= t`` when low is suspicious (masks),
    ``score > t`` when high is suspicious (constants). ``threshold`` may be one number or one per
    layer (CLP's and Hölder's cuts are per layer); a layer missing from the dict is not pruned."""
    out = {}
    for k, s in scores.items():
        t = threshold.get(k) if isinstance(threshold, dict) else threshold
        if t is None:
            out[k] = torch.zeros_like(s, dtype=torch.bool)
        else:
            out[k] = s <= t if suspicious == "low" else s > t
    return out


def standardize(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-layer (s - mean) / std (unbiased): a global cut ``u`` on these is CLP's rule
    ``s > mean + u * std`` in every layer at once. A layer of one neuron, or of equal scores,
    standardizes to zeros."""
    out = {}
    for k, s in scores.items():
        s = s.float()
        std = s.std() if s.numel() > 1 else torch.tensor(0.0)
        out[k] = (s - s.mean()) / std if float(std) > 0 else torch.zeros_like(s)
    return out


def selection_by_count(scores: dict[str, torch.Tensor], count: int, suspicious: str) -> dict[str, torch.Tensor]:
    """The ``count`` most suspicious neurons over all layers (ties broken by layer order)."""
    names = list(scores)
    flat = torch.cat([scores[n].flatten().float() for n in names]) if names else torch.zeros(0)
    count = max(0, min(int(count), flat.numel()))
    order = torch.sort(flat, descending=suspicious == "high", stable=True).indices[:count]
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[order] = True
    out, start = {}, 0
    for n in names:
        k = scores[n].numel()
        out[n] = chosen[start:start + k]
        start += k
    return out


def count_selected(selection: dict[str, torch.Tensor]) -> int:
    return int(sum(int(s.sum()) for s in selection.values()))


class Pruner:
    """Applies pruning selections to one working copy, restoring the original parameters before
    each selection, so a sweep costs one copy in all rather than one per point."""

    def __init__(self, model: nn.Module, neuron_map: NeuronMap, device=None):
        self.model = copy.deepcopy(model)
        if device is not None:
            self.model.to(device)
        self.model.eval()
        self.map = neuron_map
        self._orig = {}
        for layer in neuron_map.layers:
            mod = self.model.get_submodule(layer.name)
            self._orig[layer.name] = (mod.weight.detach().clone(),
                                      None if mod.bias is None else mod.bias.detach().clone())

    @torch.no_grad()
    def apply(self, selection: dict[str, torch.Tensor], rule: str = "gamma") -> nn.Module:
        if rule not in ("gamma", "both"):
            raise ValueError(f"Unknown pruning rule {rule!r}; use 'gamma' or 'both'.")
        for layer in self.map.layers:
            mod = self.model.get_submodule(layer.name)
            w, b = self._orig[layer.name]
            mod.weight.copy_(w)
            if b is not None:
                mod.bias.copy_(b)
            sel = selection.get(layer.name)
            if sel is None or not bool(sel.any()):
                continue
            idx = sel.nonzero().flatten().to(w.device)
            mod.weight[idx] = 0
            # ANP/RNP keep BN beta; a neuron without a norm loses weight row and bias under both rules.
            if mod.bias is not None and (rule == "both" or not layer.is_norm):
                mod.bias[idx] = 0
        return self.model


def prune(model: nn.Module, neuron_map: NeuronMap, selection: dict[str, torch.Tensor], rule: str = "gamma") -> nn.Module:
    """A pruned copy of ``model``; the model itself is not changed."""
    return Pruner(model, neuron_map).apply(selection, rule)
