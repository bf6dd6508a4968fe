"""Input normalisation a model expects, applied in front of it and never inside it.

Nearly every CIFAR training script feeds its network ``Normalize(mean, std)`` images, while
prunescope's data and triggers live in [0, 1] pixel space. Fed raw pixels, such a model is judged
on inputs it never saw, and its ACC/ASR, and every defense's, are silently wrong (a CIFAR net
measured at ACC 40.2% read 14.3%). The normalisation is a forward pre-hook on the model's root
module: the model's modules and state-dict keys stay exactly the user's, so the neuron finder,
the pruned export and a user's own class see what they expect, and triggers are still stamped in
pixel space before it. Deep copies (defenses' working copies, the pruner) keep the hook.
"""
from __future__ import annotations

import math

import torch
from torch import nn

# The usual per-channel statistics of each dataset's training images.
PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "gtsrb": ((0.3403, 0.3121, 0.3214), (0.2724, 0.2608, 0.2669)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "mnist": ((0.1307,), (0.3081,)),
}
NONE = ("", "none", None)


def resolve(spec) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) from a preset name, ``{"mean": [...], "std": [...]}``, or None for pixels as
    they are; one sentence for anything else."""
    if spec in NONE:
        return None
    if isinstance(spec, str):
        if spec.lower() not in PRESETS:
            raise ValueError(f"Unknown input normalisation {spec!r}; choose one of {', '.join(PRESETS)}, none, "
                             "or give a mean and a std.")
        return PRESETS[spec.lower()]
    if not isinstance(spec, dict) or set(spec) != {"mean", "std"}:
        raise ValueError(f"An input normalisation is a preset name or {{'mean': [...], 'std': [...]}}, got {spec!r}.")
    try:
        mean, std = tuple(float(v) for v in spec["mean"]), tuple(float(v) for v in spec["std"])
    except (TypeError, ValueError):
        raise ValueError(f"The normalisation's mean and std must be lists of numbers, got {spec!r}.") from None
    if not mean or len(mean) != len(std):
        raise ValueError(f"The normalisation needs as many std values as mean values, got {len(mean)} and "
                         f"{len(std)}.")
    if not all(math.isfinite(v) for v in mean) or not all(math.isfinite(v) and v > 0 for v in std):
        raise ValueError(f"The normalisation's std values must be positive numbers, got {list(std)}.")
    return mean, std


def attach(model: nn.Module, spec, channels: int) -> nn.Module:
    """Give ``model`` the input normalisation ``spec`` (see :func:`resolve`) for ``channels``-channel
    images, as a forward pre-hook; returns the model. A no-op for None."""
    norm = resolve(spec)
    if norm is None:
        return model
    mean, std = norm
    if len(mean) not in (1, channels):
        raise ValueError(f"The normalisation has {len(mean)} channel values but the images have {channels} "
                         "channels.")
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)

    def normalise(module, args):
        x = args[0]
        return ((x - m.to(x.device, x.dtype)) / s.to(x.device, x.dtype),) + tuple(args[1:])

    model.register_forward_pre_hook(normalise)
    model.prunescope_normalization = {"mean": list(mean), "std": list(std)}  # for a summary or a manifest
    return model


def chance_warning(acc: float, num_classes: int) -> str | None:
    """A sentence when clean ACC is close to chance, where a wrong normalisation or architecture
    is the usual reason, rather than numbers that look like a result."""
    if num_classes and acc == acc and acc < 2.0 / num_classes:
        return (f"Clean ACC {100 * acc:.1f}% is close to chance for {num_classes} classes: check the input "
                "normalisation the model was trained with (e.g. --normalize cifar10) and its architecture.")
    return None
