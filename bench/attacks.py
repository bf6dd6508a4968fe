"""The attacks the development zoo plants (bench only: the product never needs to make a backdoor).

Every attack is the same two operations on float images in [0, 1]: ``stamp(x, gen)`` writes the
trigger, ``relabel(y)`` gives the label the attacker wants. ``poison_train`` applies them to a
share of the training set; ``poisoned_test`` writes the poisoned test set (``x_bd``, ``y_bd``,
``y_true``) that ``defenses.readers.poisoned`` reads, so the ASR of an attack with no pattern-plus-mask
recipe (a warp, a random position, a clean-label signal) is measured the way a user's would be.

- ``badnets``: Gu et al. 2017, a patch (size, position, solid / checkerboard / noise).
- ``blend``: Chen et al. 2017, a random pattern blended at alpha.
- ``wanet``: Nguyen and Tran, ICLR 2021, a smooth warp field (k control points, strength s),
  no patch. Deviation: no "noise mode" (random warps kept at their labels), which the paper adds
  to hide the warp from human inspection, not to make it learnable.
- ``sig``: Barni et al. 2019, a horizontal sinusoid added to *target-class* images only, their
  labels unchanged (clean-label); at test time the signal is added to other classes' images.
- ``random_patch``: a patch at a random position per image (the trigger has no fixed place).
- ``all_to_all``: a BadNets patch that sends label y to y + 1 (mod K): no single target.
- the subnet implant (Qi et al. 2022) reuses ``badnets``/``blend`` and ``sample_models.train.implant``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from defenses.readers.triggers import TriggerSpec


@dataclass(frozen=True)
class Attack:
    kind: str  # badnets, blend, wanet, sig, random_patch, all_to_all
    target: int | None = 0  # None for all-to-all
    rate: float = 0.1  # share of the training set poisoned (for sig: share of the target class)
    params: dict = field(default_factory=dict)

    def trigger_spec(self) -> TriggerSpec | None:
        """A pattern-plus-mask recipe where one exists (badnets, blend), else None."""
        p = self.params
        if self.kind == "badnets":
            return TriggerSpec(kind="badnets", target=self.target, size=p.get("size", 4),
                               position=tuple(p["position"]) if isinstance(p.get("position"), list) else
                               p.get("position", "bottom_right"), color=p.get("color", 1.0), seed=p.get("seed", 0))
        if self.kind == "blend":
            return TriggerSpec(kind="blend", target=self.target, alpha=p.get("alpha", 0.2), seed=p.get("seed", 0))
        return None

    def stamp(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        c, h, w = x.shape[1:]
        spec = self.trigger_spec()
        if spec is not None:
            return spec.build((c, h, w)).apply(x)
        if self.kind == "all_to_all":
            return TriggerSpec(kind="badnets", target=0, size=self.params.get("size", 4),
                               position=self.params.get("position", "bottom_right"),
                               color=self.params.get("color", 1.0)).build((c, h, w)).apply(x)
        if self.kind == "wanet":
            return x.clamp(0, 1) if x.numel() == 0 else F.grid_sample(
                x, self._warp_grid(h, w).expand(len(x), -1, -1, -1), align_corners=True).clamp(0, 1)
        if self.kind == "sig":
            j = torch.arange(w, dtype=x.dtype)
            signal = self.params.get("delta", 0.2) * torch.sin(2 * math.pi * j * self.params.get("freq", 6) / w)
            return (x + signal.view(1, 1, 1, w)).clamp(0, 1)
        if self.kind == "random_patch":
            s = self.params.get("size", 4)
            g = torch.Generator().manual_seed(self.params.get("seed", 0))
            patch = torch.rand(c, s, s, generator=g) if self.params.get("color") == "noise" else \
                ((torch.arange(s).view(-1, 1) + torch.arange(s) + 1) % 2).float().expand(c, s, s)
            out = x.clone()
            rows = torch.randint(0, h - s + 1, (len(x),), generator=gen)
            cols = torch.randint(0, w - s + 1, (len(x),), generator=gen)
            for i in range(len(x)):
                out[i, :, rows[i]:rows[i] + s, cols[i]:cols[i] + s] = patch
            return out
        raise ValueError(f"Unknown attack kind {self.kind!r}.")

    def _warp_grid(self, h: int, w: int) -> torch.Tensor:
        k, s = self.params.get("k", 4), self.params.get("s", 0.5)
        g = torch.Generator().manual_seed(self.params.get("seed", 0))
        ins = torch.rand(1, 2, k, k, generator=g) * 2 - 1
        ins = ins / ins.abs().mean()
        noise = F.interpolate(ins, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        identity = torch.stack((xs, ys), 2)[None]
        return (identity + s * noise / h).clamp(-1, 1)

    def relabel(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        if self.kind == "all_to_all":
            return (y + 1) % num_classes
        if self.kind == "sig":
            return y.clone()  # clean-label: the poisoned images keep their (target) labels
        return torch.full_like(y, self.target)

    def poison_train(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int):
        """(x, y) with the attack written into its share of the images."""
        gen = torch.Generator().manual_seed(seed)
        pool = torch.nonzero(y == self.target).flatten() if self.kind == "sig" else torch.arange(len(y))
        idx = pool[torch.randperm(len(pool), generator=gen)[:int(round(self.rate * len(pool)))]]
        x, y = x.clone(), y.clone()
        if len(idx):
            x[idx] = self.stamp(x[idx], gen)
            y[idx] = self.relabel(y[idx], num_classes)
        return x, y

    def poisoned_test(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int = 1) -> dict:
        """The poisoned test set as ``defenses.readers.poisoned`` reads it: images whose attack label
        differs from their true label, stamped, as uint8 N x C x H x W."""
        y_bd = self.relabel(y, num_classes) if self.kind != "sig" else torch.full_like(y, self.target)
        keep = y_bd != y
        xb = self.stamp(x[keep], torch.Generator().manual_seed(seed))
        return {"x_bd": (xb * 255).round().clamp(0, 255).to(torch.uint8).numpy(),
                "y_bd": y_bd[keep].numpy().astype(np.int64), "y_true": y[keep].numpy().astype(np.int64)}
