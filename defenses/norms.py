"""Which normalisation layers hold neurons, and which undo pruning (for ``defenses.neurons``).

A norm with a per-channel affine (BatchNorm, GroupNorm and InstanceNorm with ``affine=True``,
LayerNorm over one dimension or the whole C x H x W) has one neuron per channel: its gamma is the
weight a mask scales and pruning zeroes, its beta is kept. A GroupNorm, InstanceNorm or LayerNorm
without that scale normalises each image with its own statistics, so a channel zeroed or scaled
before it is undone or rescaled: it is refused.
"""
from __future__ import annotations

from torch import nn

_BN = nn.modules.batchnorm._BatchNorm
_IN = nn.modules.instancenorm._InstanceNorm
NORMS = (_BN, nn.GroupNorm, nn.LayerNorm, _IN)
NORM_LABELS = {"bn": "BatchNorm", "groupnorm": "GroupNorm", "layernorm": "LayerNorm", "instancenorm": "InstanceNorm"}
NORM_KINDS = tuple(NORM_LABELS)


def norm_kind(mod: nn.Module, in_shape: tuple) -> tuple[str | None, str]:
    """(kind, "") for a norm whose channels are neurons; (None, "") for a BatchNorm without affine
    (left out, harmless); (None, why) for a norm that undoes pruning before it (refused)."""
    if isinstance(mod, _BN):
        return ("bn" if mod.affine else None), ""
    per_sample = "it normalises each image with its own statistics, so a channel pruned before it is undone"
    if isinstance(mod, nn.GroupNorm):
        if not mod.affine:
            return None, f"a GroupNorm without a learnable per-channel scale (affine=False): {per_sample}"
        return "groupnorm", ""
    if isinstance(mod, _IN):
        if not mod.affine:
            return None, f"an InstanceNorm without a learnable per-channel scale (affine=False): {per_sample}"
        return "instancenorm", ""
    # LayerNorm: its affine must be per channel, i.e. over one dimension or the whole C x H x W.
    if mod.weight is None:
        return None, f"a LayerNorm without a learnable scale (elementwise_affine=False): {per_sample}"
    shape = tuple(mod.normalized_shape)
    if len(shape) > 1 and shape != tuple(in_shape[1:]):
        return None, (f"a LayerNorm over {shape} of a {tuple(in_shape[1:])} input, whose scale is not one per "
                      "channel")
    return "layernorm", ""
