"""Images on disk: a folder with one sub-folder of images per class (``folder:PATH``), and the
decoding of image files with PIL into uint8 N x C x H x W tensors (GTSRB's files too). Every
failure is one sentence in a :class:`~defenses.readers.splits.DataError`.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .splits import ArraySplit, DataError

FOLDER_TEST_FRACTION = 0.2  # image folders without train/ and test/ are split 80/20
GRAYSCALE_MODES = ("1", "L", "LA", "La")


def reason(e: BaseException) -> str:
    """A short, single-clause description of an exception, fit to go in parentheses."""
    text = str(getattr(e, "reason", None) or e).strip().splitlines()
    text = text[0] if text else ""
    for stop in (". ", "; "):
        text = text.split(stop)[0]
    text = text.rstrip(".").strip()[:160]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def labels_tensor(values, label: str) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(values, dtype=np.int64).reshape(-1))
    if len(y) and int(y.min()) < 0:
        raise DataError(f"The {label} labels include a negative class index ({int(y.min())}).")
    return y


def _image_folder(directory: Path):
    from torchvision.datasets import ImageFolder

    class _Folder(ImageFolder):
        def find_classes(self, d):  # skip hidden folders such as .ipynb_checkpoints
            classes = sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith("."))
            if not classes:
                raise FileNotFoundError(d)
            return classes, {c: i for i, c in enumerate(classes)}

    # a loader that never decodes: only the file list and the labels are needed here
    return _Folder(str(directory), loader=lambda p: p, allow_empty=True)


def _folder_samples(directory: Path, where: str, allow_empty: bool):
    """(class names, [(path, label)]) of an image folder, via torchvision's ImageFolder."""
    try:
        ds = _image_folder(directory)
    except FileNotFoundError:
        raise DataError(f"{where} has no class sub-folders; put each class's images in a sub-folder named after "
                        f"the class.") from None
    except OSError as e:
        raise DataError(f"Could not list the images in {where} ({reason(e)}).") from None
    if not allow_empty:
        empty = sorted(set(ds.classes) - {ds.classes[t] for _, t in ds.samples})
        if empty:
            from torchvision.datasets.folder import IMG_EXTENSIONS

            raise DataError(f"The class folder(s) {', '.join(empty[:5])} in {where} hold no images "
                            f"({', '.join(IMG_EXTENSIONS[:4])}, ...); add images or remove the folders.")
    return ds.classes, ds.samples


def load_folder(path: str, size: int, seed: int):
    if not path.strip():
        raise DataError("The folder dataset needs a path, as in folder:/data/my_images.")
    directory = Path(os.path.expanduser(path))
    if not directory.exists():
        raise DataError(f"No folder at {directory}; give folder:PATH the path of a folder with one sub-folder "
                        f"of images per class.")
    if not directory.is_dir():
        raise DataError(f"{directory} is a file, not a folder; give folder:PATH a folder with one sub-folder of "
                        f"images per class.")
    test_dir = next((directory / n for n in ("test", "val") if (directory / n).is_dir()), None)
    if (directory / "train").is_dir() and test_dir is not None:
        classes, train_samples = _folder_samples(directory / "train", str(directory / "train"), False)
        test_classes, test_samples = _folder_samples(test_dir, str(test_dir), True)
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise DataError(f"The classes {', '.join(unknown[:5])} in {test_dir} have no folder in "
                            f"{directory / 'train'}; the test classes must be training classes.")
        index = {c: i for i, c in enumerate(classes)}
        test_samples = [(p, index[test_classes[t]]) for p, t in test_samples]
        if not test_samples:
            raise DataError(f"The test folder {test_dir} holds no images.")
    else:
        pool = directory / "train" if (directory / "train").is_dir() else directory
        classes, samples = _folder_samples(pool, str(pool), False)
        train_samples, test_samples = _split_samples(samples, seed)
    if len(classes) < 2:
        raise DataError(f"{directory} holds a single class ({classes[0]}); a classifier needs at least two "
                        f"class sub-folders.")
    paths = [p for p, _ in train_samples] + [p for p, _ in test_samples]
    mode = "L" if all(image_mode(p) in GRAYSCALE_MODES for p in paths) else "RGB"
    x = read_images(paths, mode, size)
    n = len(train_samples)
    train = ArraySplit(x[:n], labels_tensor([t for _, t in train_samples], "folder"))
    test = ArraySplit(x[n:], labels_tensor([t for _, t in test_samples], "folder"))
    return train, test, classes


def _split_samples(samples, seed: int):
    """A stratified, reproducible 80/20 split: every class keeps at least one training image and
    gives at least one test image when it has two or more."""
    g = torch.Generator().manual_seed(int(seed))
    by_class: dict[int, list] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    train, test = [], []
    for label in sorted(by_class):
        items = by_class[label]
        n = len(items)
        n_test = min(n - 1, max(1 if n >= 2 else 0, int(round(FOLDER_TEST_FRACTION * n))))
        order = torch.randperm(n, generator=g).tolist()
        test += [items[i] for i in order[:n_test]]
        train += [items[i] for i in order[n_test:]]
    if not test:
        raise DataError("The image folder is too small to hold out a test split; give each class at least two "
                        "images, or use train/ and test/ sub-folders.")
    return train, test


def image_mode(path: str) -> str:
    from PIL import Image

    try:
        with Image.open(path) as im:  # reads the header only
            return im.mode
    except Exception as e:
        raise DataError(f"Could not read the image {path} ({reason(e)}); remove or replace it.") from None


def read_images(paths: list[str], mode: str, size: int) -> torch.Tensor:
    """Decode images with PIL into one uint8 N x C x size x size tensor (threads: PIL releases the GIL)."""
    from PIL import Image

    c = 1 if mode == "L" else 3
    out = np.empty((len(paths), size, size) if c == 1 else (len(paths), size, size, 3), dtype=np.uint8)

    def read(i):
        try:
            with Image.open(paths[i]) as im:
                im = im.convert(mode)
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                out[i] = np.asarray(im, dtype=np.uint8)
        except Exception as e:
            raise DataError(f"Could not read the image {paths[i]} ({reason(e)}); remove or replace it.") from None

    workers = max(1, min(8, os.cpu_count() or 1))
    if workers == 1 or len(paths) < 64:
        for i in range(len(paths)):
            read(i)
    else:
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(read, range(len(paths)), chunksize=64):
                pass
    x = torch.from_numpy(out)
    return x[:, None].contiguous() if c == 1 else x.permute(0, 3, 1, 2).contiguous()
