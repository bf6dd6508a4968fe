"""Backdoor triggers: BadNets patches, Blend, and any trigger given as pattern + mask.

Every trigger is the same operation in [0, 1] pixel space::

    x' = (1 - mask) * x + mask * pattern

BadNets is a mask of ones on a small patch with a solid or checkerboard pattern; Blend is a mask
equal to ``alpha`` everywhere with a random (fixed seed) or user-given image as pattern. The
attack is all-to-one: every triggered image should be classified as ``target``.
A :class:`TriggerSpec` is the plain, JSON-able description; ``spec.build(shape)`` makes the
tensors for an image shape (C, H, W).
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

import numpy as np
import torch


class TriggerError(ValueError):
    """A trigger description is invalid; the message is one sentence."""


@dataclass
class Trigger:
    pattern: torch.Tensor  # C x H x W in [0, 1]
    mask: torch.Tensor  # 1 x H x W or C x H x W in [0, 1]
    target: int = 0

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Stamp the trigger on a float batch N x C x H x W in [0, 1]."""
        if x.shape[-2:] != self.pattern.shape[-2:]:
            raise TriggerError(f"The trigger is {tuple(self.pattern.shape[-2:])} pixels but the images are {tuple(x.shape[-2:])}.")
        m = self.mask.to(x.device, x.dtype)
        p = self.pattern.to(x.device, x.dtype)
        if p.shape[0] != x.shape[1]:
            if p.shape[0] == 3 and x.shape[1] == 1:
                p = p.mean(0, keepdim=True)
            elif p.shape[0] == 1:
                p = p.expand(x.shape[1], -1, -1)
            else:
                raise TriggerError(f"The trigger has {p.shape[0]} channels but the images have {x.shape[1]}.")
        if m.shape[0] not in (1, x.shape[1]):
            m = m.mean(0, keepdim=True)
        return (1 - m) * x + m * p

    def poison_labels(self, y: torch.Tensor) -> torch.Tensor:
        return torch.full_like(y, self.target)

    def visual(self) -> torch.Tensor:
        """mask * pattern, the part of the image the trigger writes."""
        return self.mask * self.pattern


def _parse_position(position, h, w, size):
    """(row, col) of the patch's top-left pixel. Named positions keep a one-pixel margin from the
    image border when the patch leaves room for it."""
    if isinstance(position, str):
        rows = {"top": min(1, h - size), "bottom": max(0, h - size - 1), "center": (h - size) // 2}
        cols = {"left": min(1, w - size), "right": max(0, w - size - 1), "center": (w - size) // 2}
        if position == "center":
            return rows["center"], cols["center"]
        try:
            r, c = position.split("_")
            return rows[r], cols[c]
        except (ValueError, KeyError):
            raise TriggerError(f"Unknown patch position {position!r}; use e.g. 'bottom_right', 'top_left', 'center' or [row, col].") from None
    try:
        r, c = position
        if any(isinstance(v, bool) or float(v) != int(v) for v in (r, c)):
            raise ValueError
        return int(r), int(c)
    except (TypeError, ValueError, OverflowError):
        raise TriggerError(f"Unknown patch position {position!r}; use e.g. 'bottom_right', 'top_left', 'center' or [row, col].") from None


def _number(value, what: str) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise TriggerError(f"The {what} must be a number, got {value!r}.") from None


@dataclass(frozen=True)
class TriggerSpec:
    """JSON-able description of a trigger.

    kind: ``badnets`` (size, position, color: a grey level in [0, 1], ``checkerboard``, or ``noise``:
    a fixed random grey pattern drawn from ``seed``),
    ``blend`` (alpha, seed for a random pattern, or ``image`` a path to an image file), or
    ``pattern`` (``image`` an .npy/.png pattern and ``mask_image`` an .npy/.png mask).
    """

    kind: str = "badnets"
    target: int = 0
    size: int = 3
    position: str | tuple = "bottom_right"
    color: float | str = 1.0
    alpha: float = 0.2
    seed: int = 0
    image: str | None = None
    mask_image: str | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if isinstance(d["position"], tuple):
            d["position"] = list(d["position"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TriggerSpec":
        if not isinstance(d, dict):
            raise TriggerError(f"A trigger is described by a dict of settings, got {type(d).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TriggerError(f"Unknown trigger settings {', '.join(unknown)}.")
        d = dict(d)
        if isinstance(d.get("position"), list):
            d["position"] = tuple(d["position"])
        return cls(**d)

    def describe(self) -> str:
        if self.kind == "badnets":
            return f"BadNets {self.size}x{self.size} {self.color} patch at {self.position}, target {self.target}"
        if self.kind == "blend":
            src = self.image or f"random pattern (seed {self.seed})"
            return f"Blend of {src}, alpha {self.alpha}, target {self.target}"
        return f"pattern {self.image} with mask {self.mask_image}, target {self.target}"

    def build(self, shape: tuple[int, int, int]) -> Trigger:
        c, h, w = shape
        if isinstance(self.target, bool) or not isinstance(self.target, numbers.Integral) or self.target < 0:
            raise TriggerError(f"The target label must be a non-negative whole number, got {self.target!r}.")
        if self.kind == "badnets":
            size = _number(self.size, "patch size")
            if not 1 <= size <= min(h, w) or size != int(size):
                raise TriggerError(f"The patch size must be a whole number from 1 to {min(h, w)} pixels, "
                                   f"got {self.size}.")
            s = int(size)
            r, col = _parse_position(self.position, h, w, s)
            if not (0 <= r <= h - s and 0 <= col <= w - s):
                raise TriggerError(f"A {s}-pixel patch at ({r}, {col}) does not fit in a {h}x{w} image.")
            mask = torch.zeros(1, h, w)
            mask[:, r:r + s, col:col + s] = 1.0
            pattern = torch.zeros(c, h, w)
            if self.color == "checkerboard":
                ii, jj = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
                pattern[:, r:r + s, col:col + s] = ((ii + jj + 1) % 2).float()
            elif self.color == "noise":
                g = torch.Generator().manual_seed(int(self.seed))
                pattern[:, r:r + s, col:col + s] = torch.rand(c, s, s, generator=g)
            else:
                level = float(self.color) if isinstance(self.color, numbers.Real) and not isinstance(self.color, bool) \
                    else float("nan")
                if not 0 <= level <= 1:
                    raise TriggerError(f"The patch colour must be a grey level in [0, 1], 'checkerboard' or 'noise', got {self.color!r}.")
                pattern[:, r:r + s, col:col + s] = level
            return Trigger(pattern, mask, self.target)
        if self.kind == "blend":
            if not 0 < _number(self.alpha, "blend alpha") <= 1:
                raise TriggerError(f"The blend alpha must be in (0, 1], got {self.alpha}.")
            if self.image:
                pattern = load_image_tensor(self.image, (c, h, w))
            else:
                pattern = torch.rand(c, h, w, generator=torch.Generator().manual_seed(int(self.seed)))
            return Trigger(pattern, torch.full((1, h, w), float(self.alpha)), self.target)
        if self.kind == "pattern":
            if not (self.image and self.mask_image):
                raise TriggerError("A pattern trigger needs both a pattern image and a mask image.")
            pattern = load_image_tensor(self.image, (c, h, w))
            mask = load_image_tensor(self.mask_image, (1, h, w))
            return Trigger(pattern, mask, self.target)
        raise TriggerError(f"Unknown trigger kind {self.kind!r}; use 'badnets', 'blend' or 'pattern'.")


def load_image_tensor(path: str, shape: tuple[int, int, int]) -> torch.Tensor:
    """An image (.png/.jpg) or array (.npy) as a float tensor of ``shape`` in [0, 1]."""
    c, h, w = shape
    try:
        if str(path).endswith(".npy"):
            arr = np.load(path, allow_pickle=False).astype(np.float32)
            if arr.max(initial=0) > 1:
                arr = arr / 255.0
            t = torch.from_numpy(arr)
            if t.ndim == 2:
                t = t[None]
            elif t.ndim == 3 and t.shape[-1] in (1, 3) and t.shape[0] not in (1, 3):
                t = t.permute(2, 0, 1)
            if t.ndim != 3 or not torch.isfinite(t).all():
                raise ValueError("not an image array")
        else:
            from PIL import Image

            with Image.open(path) as im:
                im = im.convert("L" if c == 1 else "RGB").resize((w, h))
                t = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
            t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    except FileNotFoundError:
        raise TriggerError(f"No trigger image at {path}.") from None
    except IsADirectoryError:
        raise TriggerError(f"{path} is a folder, not a trigger image.") from None
    except Exception as e:  # PIL and numpy raise many kinds on a bad file
        raise TriggerError(f"Could not read the trigger image {path} ({type(e).__name__}).") from None
    if tuple(t.shape[-2:]) != (h, w):
        t = torch.nn.functional.interpolate(t[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    if t.shape[0] != c:
        t = t.mean(0, keepdim=True).expand(c, -1, -1).clone() if c in (1, 3) else t
    return t.clamp(0, 1)


def poison(x: torch.Tensor, y: torch.Tensor, trigger: Trigger, rate: float, seed: int = 0):
    """Stamp the trigger on a ``rate`` fraction of a float batch and relabel it to the target.
    Returns (x, y, poisoned_index)."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate <= 1:
        raise TriggerError(f"The poison rate must be a fraction in [0, 1], got {rate!r}.")
    g = torch.Generator().manual_seed(seed)
    n = len(y)
    k = int(round(rate * n))
    idx = torch.randperm(n, generator=g)[:k]
    x = x.clone()
    y = y.clone()
    x[idx] = trigger.apply(x[idx])
    y[idx] = trigger.target
    return x, y, idx
