"""ASR from a poisoned test set: triggered images given as arrays, not as a trigger recipe.

Many attacks (WaNet, input-aware, SSBA, clean-label, ...) have no pattern-plus-mask that could be
stamped on a clean image; what a researcher has is the attack's own poisoned test images. An
``.npz`` file with ``x_bd`` (the triggered images) and ``y_bd`` (the label the attack wants for
each) is accepted wherever a trigger is: the ASR is the fraction of ``x_bd`` the model puts in
``y_bd``, and sweeps, the oracle and the attributions read these images.

- ``x_bd``: N x H x W x C or N x C x H x W (or N x H x W for one channel), uint8 in 0..255 or
  floats in [0, 1], in pixel space like every image here (the model's normalisation is applied
  in front of the model, ``defenses.readers.normalization``);
- ``y_bd``: N integer labels (one target for all-to-one attacks, per image for all-to-all);
- ``y_true`` (optional): each image's true label. Rows whose true label is already their attack
  label are dropped (they say nothing about the backdoor, as ASR excludes the target class), and
  the oracle needs it to learn what the poisoned images should be.

The file is read with ``allow_pickle=False``: an npz holding Python objects is refused.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass

import numpy as np
import torch

from .data import ArraySplit, DataError


@dataclass
class PoisonedSet:
    split: ArraySplit  # the poisoned images and, as labels, the label the attack wants (y_bd)
    true_labels: torch.Tensor | None = None
    source: str = ""

    @property
    def target(self) -> int | None:
        """The attack's one target label (all-to-one), or None when the labels differ (all-to-all)."""
        labels = torch.unique(self.split.y)
        return int(labels[0]) if len(labels) == 1 else None

    def __len__(self) -> int:
        return len(self.split)

    def images(self, start: int, n: int) -> torch.Tensor:
        """n poisoned images from ``start`` on (wrapping round), as floats in [0, 1]."""
        idx = (torch.arange(n) + start) % len(self.split)
        return self.split.images(idx)

    def _take(self, idx: torch.Tensor) -> "PoisonedSet":
        labels = None if self.true_labels is None else self.true_labels[idx]
        return PoisonedSet(self.split.subset(idx), labels, self.source)

    def head(self, n: int) -> "PoisonedSet":
        """The first n poisoned images (a run's live probes measure on a slice, as on the test split)."""
        return self._take(torch.arange(min(n, len(self))))

    def halves(self) -> tuple["PoisonedSet", "PoisonedSet"]:
        """(even rows, odd rows): one half for the oracle to learn on, the other to measure it on."""
        return self._take(torch.arange(0, len(self), 2)), self._take(torch.arange(1, len(self), 2))


def triggered_images(trigger, x: torch.Tensor, start: int = 0) -> torch.Tensor:
    """The triggered counterpart of a clean batch: ``x`` stamped with a trigger recipe, or, for a
    poisoned test set, as many of its own images from ``start`` on (other scenes than ``x``:
    clean and triggered rows then compare in their means, not image by image)."""
    if isinstance(trigger, PoisonedSet):
        return trigger.images(start, len(x))
    return trigger.apply(x)


def _require_file(path: str) -> None:
    if not os.path.isfile(path):
        raise DataError(f"No poisoned test set at {path}; give an .npz file with x_bd and y_bd.")


def _as_nchw_uint8(x: np.ndarray, shape: tuple[int, int, int], label: str) -> torch.Tensor:
    c, h, w = shape
    if x.ndim == 3 and c == 1:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"{label}: x_bd must hold N images of {c}x{h}x{w}, got an array of shape {x.shape}.")
    if x.shape[1:] == (h, w, c) and x.shape[1:] != (c, h, w):
        x = x.transpose(0, 3, 1, 2)
    if x.shape[1:] != (c, h, w):
        raise DataError(f"{label}: its images are {x.shape[1:]} but the dataset's are {c}x{h}x{w} "
                        "(channels, height, width); give poisoned images of the dataset's size.")
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x))
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise DataError(f"{label}: x_bd holds {x.dtype} values; give uint8 pixels or floats in [0, 1].")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{label}: x_bd has NaN or infinite pixels.")
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if np.issubdtype(x.dtype, np.floating) and hi <= 1.0 and lo >= 0.0:
        x = x * 255.0
    elif lo < 0 or hi > 255:
        raise DataError(f"{label}: x_bd's pixels run from {lo:g} to {hi:g}; give them in pixel space (0..255 or "
                        "0..1), before any normalisation.")
    return torch.from_numpy(np.ascontiguousarray(np.round(x).astype(np.uint8)))


def _labels(arr: np.ndarray, n: int, num_classes: int, key: str, label: str) -> torch.Tensor:
    arr = np.asarray(arr).reshape(-1)
    if len(arr) != n or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"{label}: {key} must hold one whole-number label per image ({n}), got {arr.shape} "
                        f"{arr.dtype}.")
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.mod(arr, 1) == 0):
        raise DataError(f"{label}: {key} holds fractional labels; give whole class numbers.")
    arr = arr.astype(np.int64)
    if n and (arr.min() < 0 or arr.max() >= num_classes):
        raise DataError(f"{label}: {key} has labels from {arr.min()} to {arr.max()}, but the dataset has "
                        f"{num_classes} classes (0 to {num_classes - 1}).")
    return torch.from_numpy(arr)


MAX_UNPACKED = 4 << 30  # bytes: a compressed upload must not unpack into more than this


def _check_unpacked_size(f, label: str) -> None:
    """Refuse, from the array headers alone, arrays that would unpack into more than MAX_UNPACKED
    bytes (a small compressed file can hold a huge array of zeros)."""
    total = 0
    for key in ("x_bd", "y_bd", "y_true"):
        if f"{key}.npy" not in f.zip.namelist():
            continue
        with f.zip.open(f"{key}.npy") as member:
            version = np.lib.format.read_magic(member)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(member, max_header_size=1 << 20)
        total += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if total > MAX_UNPACKED:
        raise DataError(f"{label} would unpack into {total / (1 << 30):.1f} GiB of arrays, over the "
                        f"{MAX_UNPACKED >> 30} GiB limit; give fewer poisoned images.")


def load_poisoned(path, shape: tuple[int, int, int], num_classes: int) -> PoisonedSet:
    """Read an npz of poisoned test images for a dataset of ``shape`` (C, H, W) and classes."""
    path = os.fspath(path)
    label = os.path.basename(path)
    _require_file(path)
    if not zipfile.is_zipfile(path):
        raise DataError(f"{label} is not an .npz archive; save the poisoned images with numpy.savez(path, x_bd=..., "
                        "y_bd=...).")
    try:
        with np.load(path, allow_pickle=False) as f:
            names = list(f.files)
            missing = [k for k in ("x_bd", "y_bd") if k not in names]
            if missing:
                raise DataError(f"{label} lacks {' and '.join(missing)} (it holds {', '.join(names) or 'no arrays'}); "
                                "save the poisoned images as x_bd and their attack labels as y_bd.")
            _check_unpacked_size(f, label)
            arrays = {k: f[k] for k in ("x_bd", "y_bd", "y_true") if k in names}  # only these are unpacked
    except DataError:
        raise
    except ValueError as e:
        if "pickle" in str(e):
            raise DataError(f"{label} holds pickled Python objects, which are never loaded; save plain arrays with "
                            "numpy.savez(path, x_bd=..., y_bd=...).") from None
        raise DataError(f"{label} is not a readable .npz file ({e}).") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{label} is not a readable .npz file ({type(e).__name__}); save it with "
                        "numpy.savez(path, x_bd=..., y_bd=...).") from None
    x = _as_nchw_uint8(arrays["x_bd"], tuple(shape), label)
    y = _labels(arrays["y_bd"], len(x), num_classes, "y_bd", label)
    true = _labels(arrays["y_true"], len(x), num_classes, "y_true", label) if "y_true" in arrays else None
    if true is not None:
        keep = (true != y).nonzero().flatten()
        x, y, true = x[keep], y[keep], true[keep]
    if len(x) == 0:
        raise DataError(f"{label} has no poisoned image whose true label differs from its attack label, so no ASR "
                        "can be measured.")
    return PoisonedSet(ArraySplit(x, y), true, path)


def file_digest(path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def poisoned_trigger(path) -> dict:
    """A run's trigger entry for a poisoned test set: its absolute path and its sha256, so a run
    that reads it again later (the Neuron page, the attributions) knows if the file changed."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    _require_file(path)
    return {"kind": "poisoned", "path": path, "sha256": file_digest(path)}


def build_trigger(trigger_dict: dict | None, shape: tuple[int, int, int], num_classes: int):
    """A run's trigger from its config: None (unknown), a poisoned test set
    (``{"kind": "poisoned", "path": ...}``) or a stamped trigger recipe (``TriggerSpec``)."""
    from .triggers import TriggerSpec

    if not trigger_dict:
        return None
    if trigger_dict.get("kind") == "poisoned":
        path = trigger_dict.get("path", "")
        want = trigger_dict.get("sha256")
        if want and os.path.isfile(path) and file_digest(path) != want:
            raise DataError(f"The poisoned test set {os.path.basename(path)} has changed since it was chosen (its "
                            "sha256 differs); choose it again, or restore the file the run measured.")
        return load_poisoned(path, shape, num_classes)
    trigger = TriggerSpec.from_dict(trigger_dict).build(shape)
    if not 0 <= trigger.target < num_classes:  # else ASR silently reads 0
        raise ValueError(f"The target label {trigger.target} is not one of the dataset's {num_classes} classes "
                         f"(0 to {num_classes - 1}).")
    return trigger
