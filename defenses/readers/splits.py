"""The in-memory dataset types every loader returns, and the defender's clean split.

Images are uint8 ``(N, C, H, W)`` with int64 labels; batches come out as float tensors in [0, 1].
These live apart from :mod:`defenses.readers.data` (which names datasets and loads them) so that the
torchvision loaders can use them without importing the module that imports them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

# The names :func:`defenses.readers.data.load_dataset` understands, for error messages in every loader.
DATASET_NAMES = ("mnist5k", "cifar10", "mnist", "gtsrb", "folder:PATH", "npz:PATH")

class DataError(ValueError):
    """A dataset could not be loaded or is unusable; the message is one sentence."""


@dataclass
class ArraySplit:
    """Images (uint8, N x C x H x W) and labels (int64, N)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self):
        if self.x.dtype != torch.uint8:
            raise DataError(f"Images must be stored as uint8, got {self.x.dtype}.")
        if self.x.ndim != 4:
            raise DataError(f"Images must be N x C x H x W, got shape {tuple(self.x.shape)}.")
        if len(self.x) != len(self.y):
            raise DataError(f"{len(self.x)} images but {len(self.y)} labels.")
        self.y = self.y.long()

    def __len__(self) -> int:
        return len(self.y)

    def images(self, idx=None) -> torch.Tensor:
        x = self.x if idx is None else self.x[idx]
        return x.float().div_(255.0)

    def subset(self, idx) -> "ArraySplit":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return ArraySplit(self.x[idx], self.y[idx])

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                augment: str = "none") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over the split in batches of float images in [0, 1]."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield augment_batch(self.images(idx), augment, generator), self.y[idx]

    def sample(self, batch_size: int, generator: torch.Generator, augment: str = "none"):
        """A batch drawn with replacement (ANP's sampling)."""
        idx = torch.randint(0, len(self), (batch_size,), generator=generator)
        return augment_batch(self.images(idx), augment, generator), self.y[idx]


@dataclass
class DataBundle:
    """A dataset split three ways: the attacker's/owner's training set, the defender's small
    clean set, and the held-out test split on which ACC, ASR and sweeps are measured."""

    name: str
    train: ArraySplit
    clean: ArraySplit
    test: ArraySplit
    num_classes: int
    classes: list[str] = field(default_factory=list)
    augment: str = "none"  # the dataset's training augmentation: "none" or "crop_flip"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.test.x.shape[1:])

    def describe(self) -> str:
        c, h, w = self.shape
        return (f"{self.name}: {len(self.train)} train / {len(self.clean)} clean / {len(self.test)} test, "
                f"{c}x{h}x{w}, {self.num_classes} classes")


def augment_batch(x: torch.Tensor, augment: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """The usual CIFAR augmentation (pad-4 random crop, horizontal flip) on a batch; identity for
    digits, whose orientation carries the label."""
    if augment == "none":
        return x
    if augment != "crop_flip":
        raise DataError(f"Unknown augmentation {augment!r}; use 'none' or 'crop_flip'.")
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator)
    dx = torch.randint(0, 9, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def to_uint8_nchw(x: np.ndarray) -> torch.Tensor:
    """Accept NHW, NCHW or NHWC arrays, uint8 or float in [0, 1]; return uint8 NCHW."""
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating) or x.dtype == np.bool_):
        raise DataError(f"Image arrays must hold numbers, got {x.dtype} values.")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"Image arrays must have 3 or 4 dimensions, got shape {x.shape}.")
    if x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.dtype != np.uint8:
        x = x.astype(np.float64)
        if not np.isfinite(x).all():
            raise DataError("Image arrays contain NaN or infinite values.")
        if x.max(initial=0) <= 1.0:
            x = x * 255.0
        x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(x))


def split_clean(pool: ArraySplit, count: int | None = None, fraction: float | None = None,
                seed: int = 0) -> tuple[ArraySplit, ArraySplit]:
    """Take the defender's clean subset out of ``pool`` by count or by fraction, reproducibly;
    return (clean, rest)."""
    n = len(pool)
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.integer, np.floating)) \
                or not 0 < fraction <= 1:
            raise DataError(f"The clean fraction must be in (0, 1], got {fraction}.")
        count = max(1, int(round(fraction * n)))
    if count is None:
        count = 500
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
        raise DataError(f"The clean count must be a whole number of images, got {count!r}.")
    count = int(count)
    if not 0 < count <= n:
        raise DataError(f"Asked for {count} clean images but the pool has {n}; choose a count from 1 to {n}.")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return pool.subset(perm[:count]), pool.subset(perm[count:])
