"""torchvision-backed datasets: CIFAR-10, MNIST, GTSRB and image folders, read from a local root
(image folders and the decoding of image files are in ``data_images``).

:func:`load` is what :func:`defenses.readers.data.load_dataset` calls for every name other than
``mnist5k`` and ``npz:PATH``. Everything comes back as a :class:`~defenses.readers.splits.DataBundle` of
uint8 N x C x H x W tensors: CIFAR-10 and MNIST straight from the arrays torchvision reads (no
per-image PIL round trip), GTSRB and image folders decoded with PIL and resized to
``image_size`` x ``image_size`` (default 32). The defender's clean set is drawn from the training
split with :func:`defenses.readers.splits.split_clean`; the test split is the dataset's own.

Every failure is a :class:`~defenses.readers.splits.DataError` whose message is one sentence saying what
was wrong and what to do; no raw torchvision ``RuntimeError`` or ``FileNotFoundError`` escapes.

Security note: CIFAR-10's python batches are pickles. torchvision only unpickles them after their
MD5 sums match the official files, and this module keeps that check, so a tampered or foreign
``cifar-10-batches-py`` folder is refused rather than unpickled. Modified CIFAR data belongs in an
``npz:PATH`` archive, which is read with ``allow_pickle=False``.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch

from .data_images import labels_tensor, load_folder, read_images, reason
from .splits import DATASET_NAMES, ArraySplit, DataBundle, DataError, split_clean

DEFAULT_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 1024

CIFAR10_FOLDER = "cifar-10-batches-py"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
GTSRB_TEST_CSV = "GT-final_test.csv"
GTSRB_CLASSES = [
    "Speed limit (20km/h)", "Speed limit (30km/h)", "Speed limit (50km/h)", "Speed limit (60km/h)",
    "Speed limit (70km/h)", "Speed limit (80km/h)", "End of speed limit (80km/h)", "Speed limit (100km/h)",
    "Speed limit (120km/h)", "No passing", "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection", "Priority road", "Yield", "Stop", "No vehicles",
    "Vehicles over 3.5 metric tons prohibited", "No entry", "General caution", "Dangerous curve to the left",
    "Dangerous curve to the right", "Double curve", "Bumpy road", "Slippery road", "Road narrows on the right",
    "Road work", "Traffic signals", "Pedestrians", "Children crossing", "Bicycles crossing", "Beware of ice/snow",
    "Wild animals crossing", "End of all speed and passing limits", "Turn right ahead", "Turn left ahead",
    "Ahead only", "Go straight or right", "Go straight or left", "Keep right", "Keep left",
    "Roundabout mandatory", "End of no passing", "End of no passing by vehicles over 3.5 metric tons",
]


def load(name: str, root: str | os.PathLike | None, *, download: bool = False, clean_count: int | None = 500,
         clean_fraction: float | None = None, seed: int = 0, image_size: int | None = None) -> DataBundle:
    """Load ``cifar10``, ``mnist``, ``gtsrb`` or ``folder:PATH`` and draw the defender's clean set
    (``clean_count`` images, or ``clean_fraction`` of them when given) from its training split."""
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"Unknown dataset {name!r}; use one of {', '.join(DATASET_NAMES)}.")
    size = _check_image_size(image_size)
    key = name.strip().lower()
    if key == "cifar10":
        where = _need_root(root, "CIFAR-10", f"a folder holding {CIFAR10_FOLDER}")
        train, test, classes = _load_cifar10(where, download)
        train, test = _resize_split(train, size), _resize_split(test, size)
        augment = "crop_flip"
    elif key == "mnist":
        train, test, classes = _load_mnist(_need_root(root, "MNIST", "a folder holding MNIST/raw"), download)
        train, test = _resize_split(train, size), _resize_split(test, size)
        augment = "none"
    elif key == "gtsrb":
        train, test, classes = _load_gtsrb(_need_root(root, "GTSRB", "a folder holding gtsrb/GTSRB"), download,
                                           size or DEFAULT_IMAGE_SIZE)
        augment = "none"  # traffic signs must not be flipped (left/right turns swap meaning)
    elif name.startswith("folder:"):
        train, test, classes = load_folder(name[len("folder:"):], size or DEFAULT_IMAGE_SIZE, seed)
        augment = "none"
    else:
        raise DataError(f"Unknown dataset {name!r}; use one of {', '.join(DATASET_NAMES)}.")
    clean, rest = split_clean(train, clean_count if clean_fraction is None else None, clean_fraction, seed)
    label = name if name.startswith("folder:") else key
    return DataBundle(label, rest, clean, test, len(classes), list(classes), augment)


# --------------------------------------------------------------------------------------------
# helpers


def _check_image_size(image_size) -> int | None:
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) \
            or not 1 <= int(image_size) <= MAX_IMAGE_SIZE:
        raise DataError(f"The image size must be a whole number of pixels from 1 to {MAX_IMAGE_SIZE}, "
                        f"got {image_size!r}.")
    return int(image_size)


def _need_root(root, label: str, holding: str) -> Path:
    if root is None or (isinstance(root, str) and not root.strip()):
        raise DataError(f"{label} needs a root folder; pass root as {holding} "
                        f"(or as the folder where download=True should save it).")
    return Path(os.path.expanduser(os.fspath(root)))


def _download_error(label: str, root: Path, e: BaseException, holding: str) -> DataError:
    return DataError(f"Could not download {label} into {root} ({reason(e)}); check the internet connection, "
                     f"or download it by hand and point root at {holding}.")


def _resize_split(split: ArraySplit, size: int | None) -> ArraySplit:
    """Resize a uint8 split to size x size (antialiased bilinear); identity when it already fits."""
    if size is None or tuple(split.x.shape[-2:]) == (size, size):
        return split
    out = torch.empty((len(split), split.x.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(split), 4096):
        chunk = split.x[start:start + 4096].float()
        r = torch.nn.functional.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False,
                                            antialias=True)
        out[start:start + 4096] = r.round_().clamp_(0, 255).to(torch.uint8)
    return ArraySplit(out, split.y)


def _step_up(root: Path, marker: str, *names: str) -> Path:
    """Let users point root at the dataset's own folder: when ``root / marker`` does not exist but
    root ends in ``names`` (e.g. .../MNIST/raw) and the folder above them holds ``marker``, use that."""
    if (root / marker).exists():
        return root
    parts = [p.lower() for p in root.parts]
    tail = [n.lower() for n in names]
    for k in range(len(tail), 0, -1):
        if len(parts) > k and parts[-k:] == tail[:k]:
            up = Path(*root.parts[:-k])
            if (up / marker).exists():
                return up
    return root


# --------------------------------------------------------------------------------------------
# CIFAR-10


def _load_cifar10(root: Path, download: bool):
    from torchvision.datasets import CIFAR10

    root = _step_up(root, CIFAR10_FOLDER, CIFAR10_FOLDER)
    base = root / CIFAR10.base_folder
    files = [f for f, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    hint = f"a folder holding {CIFAR10_FOLDER}"
    if download:
        try:  # downloads unless the files are there and intact; the test split is the cheap one to load
            CIFAR10(str(root), train=False, download=True)
        except Exception as e:  # URLError, socket errors, a failed archive checksum
            if not all((base / f).is_file() for f in files):
                raise _download_error("CIFAR-10", root, e, hint) from None
    missing = [f for f in files if not (base / f).is_file()]
    if len(missing) == len(files):
        raise DataError(f"No CIFAR-10 files under {root}; download them with download=True (needs internet) "
                        f"or point root at {hint}.")
    if missing:
        raise DataError(f"The CIFAR-10 folder {base} lacks {', '.join(missing)}; download it again with "
                        f"download=True (needs internet).")
    try:
        train_ds = CIFAR10(str(root), train=True, download=False)
        test_ds = CIFAR10(str(root), train=False, download=False)
    except RuntimeError:  # torchvision's "Dataset not found or corrupted": the MD5 sums do not match
        raise DataError(f"The CIFAR-10 files under {base} do not match the official checksums (corrupt or modified); "
                        f"download them again with download=True (needs internet), or save modified data as an "
                        f".npz and load it as npz:PATH.") from None
    except Exception as e:
        raise DataError(f"Could not read the CIFAR-10 files under {base} ({reason(e)}); download them again "
                        f"with download=True (needs internet).") from None
    classes = [str(c) for c in train_ds.classes]
    return _cifar_split(train_ds, "CIFAR-10 training"), _cifar_split(test_ds, "CIFAR-10 test"), classes


def _cifar_split(ds, label: str) -> ArraySplit:
    data = np.asarray(ds.data)
    if data.dtype != np.uint8 or data.ndim != 4 or data.shape[-1] != 3:
        raise DataError(f"The {label} batches hold arrays of shape {data.shape} and type {data.dtype} instead of "
                        f"uint8 N x 32 x 32 x 3 images.")
    x = torch.from_numpy(np.ascontiguousarray(data.transpose(0, 3, 1, 2)))  # NHWC -> NCHW, no PIL
    return ArraySplit(x, labels_tensor(ds.targets, label))


# --------------------------------------------------------------------------------------------
# MNIST


def _load_mnist(root: Path, download: bool):
    from torchvision.datasets import MNIST

    root = _step_up(root, "MNIST", "MNIST", "raw")
    raw = root / "MNIST" / "raw"
    processed = root / "MNIST" / "processed"
    legacy = all((processed / f).is_file() for f in (MNIST.training_file, MNIST.test_file))
    hint = "a folder holding MNIST/raw"
    if download and not legacy:
        try:  # downloads (or unpacks intact .gz archives) unless the files are there
            MNIST(str(root), train=False, download=True)
        except Exception as e:
            if not all((raw / f).is_file() for f in MNIST_FILES):
                raise _download_error("MNIST", root, e, hint) from None
    if not legacy:
        missing = [f for f in MNIST_FILES if not (raw / f).is_file()]
        if missing and all((raw / (f + ".gz")).is_file() for f in missing):
            raise DataError(f"The MNIST files under {raw} are still gzipped; unpack them with gunzip, or load with "
                            f"download=True, which unpacks intact archives without downloading.")
        if len(missing) == len(MNIST_FILES):
            raise DataError(f"No MNIST files under {root}; download them with download=True (needs internet) "
                            f"or point root at {hint}.")
        if missing:
            raise DataError(f"The MNIST folder {raw} lacks {', '.join(missing)}; download it again with "
                            f"download=True (needs internet).")
    splits = []
    for train in (True, False):
        label = "MNIST training" if train else "MNIST test"
        try:
            ds = MNIST(str(root), train=train, download=False)
        except Exception as e:  # a bad idx header trips asserts, TypeError, ValueError or RuntimeError
            raise DataError(f"Could not read the {label} files under {raw} ({reason(e)}); they are not valid "
                            f"idx files, so download them again with download=True (needs internet).") from None
        data = torch.as_tensor(ds.data)
        if data.dtype != torch.uint8 or data.ndim != 3 or len(data) != len(ds.targets):
            raise DataError(f"The {label} files hold {len(ds.targets)} labels and images of shape "
                            f"{tuple(data.shape)} and type {data.dtype} instead of matching uint8 N x 28 x 28 images.")
        splits.append(ArraySplit(data[:, None].contiguous(), labels_tensor(ds.targets, label)))  # N x 28 x 28 -> NCHW
    return splits[0], splits[1], [str(c) for c in MNIST.classes]


# --------------------------------------------------------------------------------------------
# GTSRB


def _load_gtsrb(root: Path, download: bool, size: int):
    from torchvision.datasets import GTSRB

    root = _step_up(root, "gtsrb", "gtsrb", "GTSRB")
    base = root / "gtsrb"
    train_dir = base / "GTSRB" / "Training"
    test_dir = base / "GTSRB" / "Final_Test" / "Images"
    test_csv = base / GTSRB_TEST_CSV
    hint = "a folder holding gtsrb/GTSRB"
    if download:
        for split in ("train", "test"):
            try:
                GTSRB(str(root), split=split, download=True)
            except Exception as e:
                raise _download_error("GTSRB", root, e, hint) from None
    if not train_dir.is_dir() and not test_dir.is_dir():
        raise DataError(f"No GTSRB files under {root}; download them with download=True (needs internet) "
                        f"or point root at {hint}.")
    for path, what in ((train_dir, "training images"), (test_dir, "test images"), (test_csv, "test labels")):
        if not path.exists():
            raise DataError(f"The GTSRB folder {base} lacks the {what} ({path.relative_to(root)}); download it "
                            f"again with download=True (needs internet).")
    splits = []
    for split in ("train", "test"):
        try:
            ds = GTSRB(str(root), split=split, download=False)
            samples = list(ds._samples)
        except FileNotFoundError:  # torchvision's make_dataset: no class folders, or one without .ppm images
            raise DataError(f"The GTSRB training folder {train_dir} lacks class folders of .ppm images; download "
                            f"the training set again with download=True (needs internet).") from None
        except (KeyError, ValueError, TypeError, csv.Error) as e:
            if split == "test":  # the CSV lacks the columns, or a ClassId is not a number
                raise DataError(f"{test_csv} is not a valid GTSRB label file ({reason(e)}); it needs ';'-separated "
                                f"Filename and ClassId columns.") from None
            raise DataError(f"Could not read the GTSRB {split} split under {base} ({reason(e)}).") from None
        except Exception as e:
            raise DataError(f"Could not read the GTSRB {split} split under {base} ({reason(e)}).") from None
        if split == "train":
            # torchvision numbers the class folders it finds 0, 1, 2, ...; the folder names (00000 to 00042)
            # are the real class ids, which matters when some class folders are absent.
            samples = [(p, _gtsrb_class_of(p, t)) for p, t in samples]
        bad = sorted({t for _, t in samples if not 0 <= t < len(GTSRB_CLASSES)})
        if bad:
            raise DataError(f"The GTSRB {split} split has class ids {bad[:5]} outside 0 to {len(GTSRB_CLASSES) - 1}.")
        if not samples:
            raise DataError(f"The GTSRB {split} split under {base} holds no images; download it again with "
                            f"download=True (needs internet).")
        x = read_images([p for p, _ in samples], "RGB", size)
        splits.append(ArraySplit(x, labels_tensor([t for _, t in samples], f"GTSRB {split}")))
    return splits[0], splits[1], list(GTSRB_CLASSES)


def _gtsrb_class_of(path: str, fallback: int) -> int:
    name = Path(path).parent.name
    return int(name) if name.isdigit() else fallback
