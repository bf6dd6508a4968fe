"""Backdoors written into an already trained clean model: fine-tuning and subnet replacement.

The pruning defenses assume the backdoor lives in a few neurons (Hölder pruning: "concentrates
in a few head neurons"). A model trained on poisoned data from scratch spreads it instead
(docs/study.md: the oracle needs 8-24 neurons and often several ACC points). These are two ways
an attacker who receives a clean model writes a backdoor into it, and so two tests of that
premise:

- **fine-tuning** (``subnet=0``): every trainable weight trains on the poisoned split for a few
  epochs at a small learning rate, the classic "backdoor by fine-tuning" a downloaded model;
- **subnet replacement** (``subnet=k``, after Qi et al., "Towards Practical Deployment-Stage
  Backdoor Attack on Deep Neural Networks", CVPR 2022): k neurons (channels) of each hidden
  layer are re-initialised and become a narrow path of their own: they read only the input (the
  first layer) or the k subnet neurons below them, no clean neuron reads them, and the output
  layer reads them through its k columns. Only those weights (and their BN affine and
  statistics) train on the poisoned split; every clean weight stays as it was. Deviation from the
  paper: it trains the subnet apart and scales it before inserting it; here it trains in place
  with the rest frozen, which needs no scale to choose.

In a narrow net the neurons a subnet takes over were doing clean work: taking 4 channels per
layer of the width-32 CNN costs it 14-26 ACC points (three draws). So ``train.implant``, which
trains either kind, can first retrain the clean neurons on clean data with the subnet silent
(``repair`` epochs), as an attacker with clean data would, and only then train the subnet.
Models: an ``mlp_head`` (the subnet lives in the head) and the BN ``cnn`` (four conv layers, the
BatchNorm1d hidden layer, the output).
"""
from __future__ import annotations

import torch
from torch import nn


def path_layers(model: nn.Module) -> list[tuple[nn.Module, nn.Module | None]]:
    """The weight layers a subnet runs through, in forward order, each with the BN after it (or
    None); the last one is the classifier."""
    if hasattr(model, "head"):
        return [(m, None) for m in model.head if isinstance(m, nn.Linear)]
    mods = list(model.features) + list(model.classifier)
    out = []
    for i, m in enumerate(mods):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            bn = mods[i + 1] if i + 1 < len(mods) and isinstance(mods[i + 1], nn.modules.batchnorm._BatchNorm) else None
            out.append((m, bn))
    return out


def _width(layer: nn.Module, side: str) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features if side == "out" else layer.in_features
    return layer.out_channels if side == "out" else layer.in_channels


def subnet_neurons(model: nn.Module, k: int, seed: int) -> list[torch.Tensor]:
    """The k neurons of each hidden layer the subnet takes, drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed + 1000)
    return [torch.randperm(_width(l, "out"), generator=g)[:k].sort().values for l, _ in path_layers(model)[:-1]]


def _units(n: int, chosen: torch.Tensor | None) -> torch.Tensor:
    """A boolean mask over n units: the chosen ones, or all of them when ``chosen`` is None."""
    if chosen is None:
        return torch.ones(n, dtype=torch.bool)
    m = torch.zeros(n, dtype=torch.bool)
    m[chosen] = True
    return m


def _block(layer: nn.Module, rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks the shape of ``layer.weight``: the subnet's block (rows x cols) and the links
    between it and the clean neurons (one side in the subnet, the other not). A Linear reading a
    flattened conv output has ``in_features`` a multiple of the channels: each channel's block."""
    w = layer.weight
    cols = cols.repeat_interleave(w.shape[1] // len(cols))
    kernel = (1,) * (w.dim() - 2)  # a conv weight's spatial dimensions
    r, c = rows.view(-1, 1, *kernel), cols.view(1, -1, *kernel)
    return (r & c).expand_as(w).clone(), (r ^ c).expand_as(w).clone()


def _init_subnet(path, masks, zero):
    """PyTorch's default init over the fan-in the subnet really has (k channels below the first
    layer), so its neurons start alive: over the full fan-in a k-input ReLU block starts near zero
    and may never fire. BN channels start as a fresh BN."""
    with torch.no_grad():
        for j, (layer, bn) in enumerate(path):
            w = layer.weight
            fan_in = int(masks[w].reshape(len(w), -1).sum(1).max())  # the inputs a subnet neuron reads
            bound = 1 / fan_in ** 0.5  # nn.Linear's and nn.Conv2d's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            w.copy_(torch.where(masks[w], torch.empty_like(w).uniform_(-bound, bound), w))
            if w in zero:
                w.masked_fill_(zero[w], 0.0)
            if layer.bias is not None and layer.bias in masks:
                layer.bias.copy_(torch.where(masks[layer.bias], torch.empty_like(layer.bias).uniform_(-bound, bound),
                                             layer.bias))
            if bn is not None:
                rows = masks[bn.weight]
                bn.weight.masked_fill_(rows, 1.0)
                bn.bias.masked_fill_(rows, 0.0)
                bn.running_mean.masked_fill_(rows, 0.0)
                bn.running_var.masked_fill_(rows, 1.0)


def _subnet_masks(path, chosen, target=None):
    """Per parameter (and BN statistic), True where the subnet's entries are: the only ones that
    train. The links between the subnet and the clean neurons are zeroed and stay zero; with a
    ``target``, so are the classifier's links from the subnet to every other class."""
    masks, zero = {}, {}
    for j, (layer, bn) in enumerate(path):
        last = j == len(path) - 1
        rows = _units(_width(layer, "out"), None if last else chosen[j])
        if last and target is not None:
            rows = _units(len(rows), torch.tensor([target]))
        cols = _units(_width(layer, "in"), None) if j == 0 else _units(_width(path[j - 1][0], "out"), chosen[j - 1])
        masks[layer.weight], links = _block(layer, rows, cols)
        if j and not last:  # the classifier reads clean and subnet neurons alike
            zero[layer.weight] = links
        if last and target is not None:
            zero[layer.weight] = _block(layer, ~rows, cols)[0]
        if layer.bias is not None:
            masks[layer.bias] = torch.zeros_like(rows) if last else rows
        if bn is not None:
            for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                masks[t] = rows
    return masks, zero


class Subnet:
    """Room for a subnet of ``k`` neurons per hidden layer in the trained ``model``: chosen from
    ``seed``, re-initialised and cut off from the clean neurons (nothing when ``k`` is 0). With a
    ``target``, the classifier reads the subnet only into that class's logit, as in Qi et al.;
    without one, into every logit.

    ``keep_clean()`` and ``keep_subnet()`` each snapshot one side now and return the function
    ``train.implant`` runs after every optimiser step to put that side back as it was: the
    subnet trains with the clean weights held, the clean neurons retrain with the subnet held."""

    def __init__(self, model: nn.Module, k: int, seed: int, target: int | None = None):
        torch.manual_seed(seed)
        self.path = path_layers(model)
        self.chosen, self.masks, self.zero = [], {}, {}
        if k:
            self.chosen = subnet_neurons(model, k, seed)
            self.masks, self.zero = _subnet_masks(self.path, self.chosen, target)
            _init_subnet(self.path, self.masks, self.zero)

    @torch.no_grad()
    def silence(self):
        """Zero the classifier's columns that read the subnet: the model is then the clean one
        without the subnet's neurons."""
        out = self.path[-1][0].weight
        if out in self.masks:
            out.masked_fill_(self.masks[out], 0.0)

    def _hold(self, held: dict):
        frozen = {t: t.detach().clone() for t in held}

        @torch.no_grad()
        def restore():
            for t, m in held.items():
                t.copy_(torch.where(m, frozen[t], t))

        return restore

    def keep_clean(self):
        """Every entry outside the subnet (the zeroed links among them) held as it is now."""
        return self._hold({t: ~m for t, m in self.masks.items()})

    def keep_subnet(self):
        """The subnet's entries and the zeroed links held as they are now."""
        return self._hold({t: m | self.zero[t] if t in self.zero else m for t, m in self.masks.items()})
