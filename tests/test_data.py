"""Dataset loading, offline: every torchvision-backed dataset is exercised on a tiny copy that the
test writes in the dataset's real on-disk format (CIFAR-10 python batches, MNIST idx files, the
GTSRB folder tree and CSV, an image folder of PNGs, an npz archive), then read back through
``defenses.readers.data.load_dataset`` and compared pixel for pixel."""
from __future__ import annotations

import gzip
import hashlib
import pickle
import re
import struct
import urllib.error
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from defenses.readers.data import DATASET_NAMES, DataError, load_dataset

# --------------------------------------------------------------------------------------------
# helpers


def assert_one_sentence(msg: str, *fragments: str) -> None:
    """A DataError message: one line, one sentence (no '. X' inside), ending in a full stop,
    and saying what the test expects it to say."""
    assert "\n" not in msg, msg
    assert msg.endswith("."), msg
    assert not re.search(r"[.!?]\s+[A-Z]", msg[:-1]), f"more than one sentence: {msg}"
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"


def data_error(fn, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        fn()
    msg = str(info.value)
    assert_one_sentence(msg, *fragments)
    return msg


def keyed(x: torch.Tensor, y: torch.Tensor) -> Counter:
    return Counter((xi.numpy().tobytes(), int(yi)) for xi, yi in zip(x, y))


def assert_partition(x: np.ndarray, y: np.ndarray, *splits) -> None:
    """The splits together hold exactly the images and labels written, pixel for pixel."""
    got = Counter()
    for s in splits:
        assert s.x.dtype == torch.uint8 and s.y.dtype == torch.int64
        got += keyed(s.x, s.y)
    assert got == keyed(torch.from_numpy(x), torch.from_numpy(y))


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# CIFAR-10: python batches


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 byte strings (SHORT_BINSTRING/BINSTRING), as Python 2's
    cPickle did when the real CIFAR-10 batches were made (keys, label names and numpy's raw pixel
    buffer alike): torchvision unpickles them with encoding="latin1" and gets str keys ("data",
    "labels"), while encoding="bytes" (the CIFAR web page's recipe) gets b"data", b"labels"."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str


def py2_pickle(obj, path) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(root, per_batch=4, n_test=6, seed=0):
    """cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}; returns the NCHW arrays
    written and the MD5 of every file."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    xs, ys = [], []
    for i, n in enumerate([per_batch] * 5 + [n_test]):
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, n).tolist()
        name = f"data_batch_{i + 1}" if i < 5 else "test_batch"
        # rows are 3072 bytes: 1024 red, 1024 green, 1024 blue, each row-major, as in the real files
        py2_pickle({"batch_label": f"{name} of 6", "labels": y, "data": x.reshape(n, 3072),
                    "filenames": [f"img_{i}_{j}.png" for j in range(n)]}, base / name)
        xs.append(x)
        ys.append(np.array(y, dtype=np.int64))
    py2_pickle({"num_cases_per_batch": per_batch, "label_names": CIFAR_CLASSES, "num_vis": 3072},
               base / "batches.meta")
    sums = {p.name: md5(p) for p in base.iterdir()}
    return (np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5]), sums


def register_md5(monkeypatch, sums) -> None:
    """torchvision's CIFAR10 hard-codes the MD5 of the official files (train_list, test_list,
    meta["md5"]) and will not unpickle anything else; the loader keeps that check on purpose
    (it is what makes unpickling the batches safe). Tiny files written here cannot match the
    official sums, so the test registers their own sums in the class: torchvision's real
    integrity check (check_integrity -> calculate_md5) still runs on every file."""
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", sums[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", sums["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names",
                                          "md5": sums["batches.meta"]})


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    arrays, sums = write_cifar10(tmp_path / "data")
    register_md5(monkeypatch, sums)
    return tmp_path / "data", arrays


def test_cifar10_files_are_in_the_real_format(tmp_path):
    write_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert {b"data", b"labels", b"batch_label", b"filenames"} <= set(raw)
    assert raw[b"data"].shape == (4, 3072) and raw[b"data"].dtype == np.uint8
    with open(tmp_path / "cifar-10-batches-py" / "batches.meta", "rb") as f:
        assert pickle.load(f, encoding="bytes")[b"label_names"][0] == b"airplane"


def test_cifar10_loads_exactly(cifar):
    root, (x_train, y_train, x_test, y_test) = cifar
    b = load_dataset("cifar10", str(root), clean_count=5, seed=0)
    assert b.shape == (3, 32, 32) and b.num_classes == 10 and b.classes == CIFAR_CLASSES
    assert b.augment == "crop_flip"
    assert (len(b.train), len(b.clean), len(b.test)) == (15, 5, 6)
    assert torch.equal(b.test.x, torch.from_numpy(x_test)) and torch.equal(b.test.y, torch.from_numpy(y_test))
    assert_partition(x_train, y_train, b.train, b.clean)
    # download=True finds intact files and downloads nothing (these machines are offline)
    assert torch.equal(load_dataset("cifar10", root, download=True, clean_count=5).test.x, b.test.x)


def test_cifar10_root_may_be_the_batches_folder(cifar):
    root, _ = cifar
    b = load_dataset("cifar10", str(root / "cifar-10-batches-py"), clean_count=5)
    assert len(b.test) == 6


def test_cifar10_resized(cifar):
    root, _ = cifar
    b = load_dataset("cifar10", root, clean_count=5, image_size=16)
    assert b.shape == (3, 16, 16) and b.train.x.dtype == torch.uint8


def test_cifar10_checksum_mismatch(tmp_path):
    write_cifar10(tmp_path)  # official MD5s left in place: these files are not the real CIFAR-10
    data_error(lambda: load_dataset("cifar10", tmp_path, clean_count=5), "do not match the official checksums")


def test_cifar10_tampered_file(cifar):
    root, _ = cifar
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-1] + b"\x00")
    data_error(lambda: load_dataset("cifar10", root, clean_count=5), "checksums", "download=True")


def test_cifar10_missing_files(tmp_path, cifar):
    root, _ = cifar
    data_error(lambda: load_dataset("cifar10", tmp_path / "elsewhere"),
               f"No CIFAR-10 files under {tmp_path / 'elsewhere'}", "download=True", "cifar-10-batches-py")
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    data_error(lambda: load_dataset("cifar10", root), "lacks test_batch")
    data_error(lambda: load_dataset("cifar10", None), "CIFAR-10 needs a root folder")


def test_cifar10_download_failure(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    data_error(lambda: load_dataset("cifar10", tmp_path, download=True), "Could not download CIFAR-10", "no network")


# --------------------------------------------------------------------------------------------
# MNIST: idx files


def write_idx(path, array: np.ndarray, magic: int | None = None) -> None:
    """The idx format: a big-endian magic (0x0000 08 ndim: 2051 for images, 2049 for labels),
    big-endian sizes, then the uint8 values."""
    magic = (0x0800 | array.ndim) if magic is None else magic
    path.write_bytes(struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes())


def write_mnist(root, n_train=12, n_test=5, seed=0, gz=False):
    """MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, which is what torchvision reads
    (it only unpacks the .gz archives when downloading)."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    out = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.int64)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        out += [x, y]
    if gz:
        for p in list(raw.iterdir()):
            (raw / (p.name + ".gz")).write_bytes(gzip.compress(p.read_bytes()))
            p.unlink()
    return out


def test_mnist_idx_headers(tmp_path):
    write_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    assert struct.unpack(">4I", (raw / "train-images-idx3-ubyte").read_bytes()[:16]) == (2051, 12, 28, 28)
    assert struct.unpack(">2I", (raw / "t10k-labels-idx1-ubyte").read_bytes()[:8]) == (2049, 5)


def test_mnist_loads_exactly(tmp_path):
    x_train, y_train, x_test, y_test = write_mnist(tmp_path)
    b = load_dataset("mnist", str(tmp_path), clean_count=4)
    assert b.shape == (1, 28, 28) and b.num_classes == 10 and b.augment == "none"
    assert (len(b.train), len(b.clean), len(b.test)) == (8, 4, 5)
    assert torch.equal(b.test.x, torch.from_numpy(x_test)[:, None])
    assert torch.equal(b.test.y, torch.from_numpy(y_test))
    assert_partition(x_train[:, None], y_train, b.train, b.clean)
    assert torch.equal(load_dataset("mnist", tmp_path, download=True, clean_count=4).test.x, b.test.x)
    # root may also be the MNIST or MNIST/raw folder itself
    assert len(load_dataset("mnist", tmp_path / "MNIST" / "raw", clean_count=4).test) == 5


def test_mnist_bad_files(tmp_path):
    data_error(lambda: load_dataset("mnist", tmp_path, clean_count=4), "No MNIST files under", "download=True")
    write_mnist(tmp_path / "gz", gz=True)
    data_error(lambda: load_dataset("mnist", tmp_path / "gz", clean_count=4), "still gzipped")
    write_mnist(tmp_path / "partial")
    (tmp_path / "partial" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    data_error(lambda: load_dataset("mnist", tmp_path / "partial", clean_count=4), "lacks t10k-labels-idx1-ubyte")
    write_mnist(tmp_path / "corrupt")
    write_idx(tmp_path / "corrupt" / "MNIST" / "raw" / "train-images-idx3-ubyte",
              np.zeros((12, 28, 28), np.uint8), magic=0x12345678)
    data_error(lambda: load_dataset("mnist", tmp_path / "corrupt", clean_count=4),
               "Could not read the MNIST training files")


# --------------------------------------------------------------------------------------------
# GTSRB: gtsrb/GTSRB/Training/<class>/*.ppm and Final_Test/Images + GT-final_test.csv

GTSRB_CSV_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"


def write_gtsrb(root, classes=(0, 1, 5), per_class=3, n_test=4, size=(32, 32), seed=0):
    rng = np.random.default_rng(seed)
    base = root / "gtsrb"
    images = base / "GTSRB" / "Final_Test" / "Images"
    images.mkdir(parents=True)
    xs, ys = [], []
    for c in classes:
        folder = base / "GTSRB" / "Training" / f"{c:05d}"
        folder.mkdir(parents=True)
        rows = [GTSRB_CSV_HEADER]
        for j in range(per_class):
            x = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            name = f"00000_{j:05d}.ppm"
            Image.fromarray(x).save(folder / name)  # binary PPM (P6), like the real files
            rows.append(f"{name};{size[1]};{size[0]};1;1;{size[1] - 1};{size[0] - 1};{c}")
            xs.append(x)
            ys.append(c)
        (folder / f"GT-{c:05d}.csv").write_text("\n".join(rows) + "\n")
    rows = [GTSRB_CSV_HEADER]
    tx, ty = [], []
    for j in range(n_test):
        c = classes[j % len(classes)]
        x = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(x).save(images / f"{j:05d}.ppm")
        rows.append(f"{j:05d}.ppm;{size[1]};{size[0]};1;1;{size[1] - 1};{size[0] - 1};{c}")
        tx.append(x)
        ty.append(c)
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    nchw = lambda a: np.stack(a).transpose(0, 3, 1, 2)  # noqa: E731
    return nchw(xs), np.array(ys), nchw(tx), np.array(ty)


def test_gtsrb_loads_exactly(tmp_path):
    x_train, y_train, x_test, y_test = write_gtsrb(tmp_path)
    b = load_dataset("gtsrb", str(tmp_path), clean_count=3)
    assert b.shape == (3, 32, 32) and b.num_classes == 43 and len(b.classes) == 43
    assert b.augment == "none"  # no flips for traffic signs
    assert (len(b.train), len(b.clean), len(b.test)) == (6, 3, 4)
    assert torch.equal(b.test.x, torch.from_numpy(x_test)) and b.test.y.tolist() == y_test.tolist()
    # class 5's folder is 00005 even though classes 2-4 are absent: labels come from the folder names
    assert_partition(x_train, y_train, b.train, b.clean)


def test_gtsrb_resized(tmp_path):
    write_gtsrb(tmp_path, size=(41, 37))
    b = load_dataset("gtsrb", tmp_path, clean_count=3)
    assert b.shape == (3, 32, 32)
    assert load_dataset("gtsrb", tmp_path, clean_count=3, image_size=20).shape == (3, 20, 20)


def test_gtsrb_bad_files(tmp_path):
    data_error(lambda: load_dataset("gtsrb", tmp_path), "No GTSRB files under", "download=True")
    write_gtsrb(tmp_path)
    (tmp_path / "gtsrb" / "GT-final_test.csv").unlink()
    data_error(lambda: load_dataset("gtsrb", tmp_path, clean_count=3), "lacks the test labels")
    (tmp_path / "gtsrb" / "GT-final_test.csv").write_text("Name;Class\n00000.ppm;0\n")
    data_error(lambda: load_dataset("gtsrb", tmp_path, clean_count=3), "not a valid GTSRB label file")


# --------------------------------------------------------------------------------------------
# image folders


def write_folder(root, classes=("cat", "dog", "fish"), per_class=5, mode="RGB", size=(32, 32), seed=0,
                 gray_classes=()):
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for i, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for j in range(per_class):
            m = "L" if c in gray_classes else mode
            x = rng.integers(0, 256, size if m == "L" else (*size, 3), dtype=np.uint8)
            Image.fromarray(x, m).save(root / c / f"{j}.png")
            xs.append(x)
            ys.append(i)
    return xs, np.array(ys)


def test_folder_colour_split_80_20(tmp_path):
    xs, ys = write_folder(tmp_path / "imgs")
    b = load_dataset(f"folder:{tmp_path / 'imgs'}", clean_count=3, seed=0)
    assert b.shape == (3, 32, 32) and b.num_classes == 3 and b.classes == ["cat", "dog", "fish"]
    assert (len(b.train), len(b.clean), len(b.test)) == (9, 3, 3)
    assert sorted(b.test.y.tolist()) == [0, 1, 2]  # stratified: one of each class's five held out
    assert_partition(np.stack(xs).transpose(0, 3, 1, 2), ys, b.train, b.clean, b.test)
    again = load_dataset(f"folder:{tmp_path / 'imgs'}", clean_count=3, seed=0)
    assert torch.equal(again.test.x, b.test.x) and torch.equal(again.clean.x, b.clean.x)
    other = load_dataset(f"folder:{tmp_path / 'imgs'}", clean_count=3, seed=1)
    assert not torch.equal(other.test.x, b.test.x)


def test_folder_grayscale_and_mixed(tmp_path):
    xs, ys = write_folder(tmp_path / "gray", mode="L")
    b = load_dataset(f"folder:{tmp_path / 'gray'}", clean_count=2)
    assert b.shape == (1, 32, 32)
    assert_partition(np.stack(xs)[:, None], ys, b.train, b.clean, b.test)
    write_folder(tmp_path / "mixed", gray_classes=("dog",))
    m = load_dataset(f"folder:{tmp_path / 'mixed'}", clean_count=2)
    assert m.shape == (3, 32, 32)
    dog = torch.cat([m.train.x[m.train.y == 1], m.test.x[m.test.y == 1], m.clean.x[m.clean.y == 1]])
    assert torch.equal(dog[:, 0], dog[:, 1]) and torch.equal(dog[:, 1], dog[:, 2])  # grey as RGB


def test_folder_train_test_and_resize(tmp_path):
    write_folder(tmp_path / "d" / "train", per_class=3, size=(20, 24))
    write_folder(tmp_path / "d" / "test", classes=("dog",), per_class=2, size=(20, 24), seed=1)
    (tmp_path / "d" / "train" / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    b = load_dataset(f"folder:{tmp_path / 'd'}", clean_count=2, image_size=16)
    assert b.shape == (3, 16, 16) and b.classes == ["cat", "dog", "fish"]
    assert (len(b.train), len(b.clean), len(b.test)) == (7, 2, 2)
    assert b.test.y.tolist() == [1, 1]  # "dog" keeps the training folder's class index


def test_folder_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    data_error(lambda: load_dataset(f"folder:{tmp_path / 'empty'}"), "has no class sub-folders")
    data_error(lambda: load_dataset(f"folder:{tmp_path / 'nowhere'}"), "No folder at")
    write_folder(tmp_path / "hole", per_class=2)
    (tmp_path / "hole" / "bird").mkdir()
    data_error(lambda: load_dataset(f"folder:{tmp_path / 'hole'}", clean_count=1), "bird", "hold no images")
    write_folder(tmp_path / "bad", per_class=2)
    (tmp_path / "bad" / "cat" / "broken.png").write_bytes(b"not a png")
    data_error(lambda: load_dataset(f"folder:{tmp_path / 'bad'}", clean_count=1), "broken.png", "remove or replace")
    write_folder(tmp_path / "one", classes=("cat",), per_class=4)
    data_error(lambda: load_dataset(f"folder:{tmp_path / 'one'}", clean_count=1), "at least two")
    data_error(lambda: load_dataset(f"folder:{tmp_path / 'hole'}", image_size=0), "image size")


# --------------------------------------------------------------------------------------------
# npz archives


@pytest.mark.parametrize("layout", ["NCHW", "NHWC", "NHW", "float"])
def test_npz_layouts(tmp_path, layout):
    rng = np.random.default_rng(0)
    c = 1 if layout == "NHW" else 3
    x = rng.integers(0, 256, (40, c, 8, 8), dtype=np.uint8)
    xt = rng.integers(0, 256, (10, c, 8, 8), dtype=np.uint8)
    y, yt = rng.integers(0, 4, 40), rng.integers(0, 4, 10)
    store = {"NCHW": lambda a: a, "NHWC": lambda a: a.transpose(0, 2, 3, 1), "NHW": lambda a: a[:, 0],
             "float": lambda a: a.astype(np.float32) / 255}[layout]
    np.savez(tmp_path / "d.npz", x_train=store(x), y_train=y, x_test=store(xt), y_test=yt)
    b = load_dataset(f"npz:{tmp_path / 'd.npz'}", clean_count=10)
    assert b.shape == (c, 8, 8) and b.num_classes == int(max(y.max(), yt.max())) + 1
    assert torch.equal(b.test.x, torch.from_numpy(xt)) and b.test.y.tolist() == yt.tolist()
    assert_partition(x, y, b.train, b.clean)


@pytest.fixture
def npz40(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=rng.integers(0, 256, (40, 1, 4, 4), dtype=np.uint8), y_train=np.arange(40) % 3,
             x_test=np.zeros((5, 1, 4, 4), np.uint8), y_test=np.zeros(5, np.int64))
    return f"npz:{path}"


def test_clean_split_by_count_and_fraction(npz40):
    b = load_dataset(npz40, clean_count=7, seed=3)
    assert (len(b.clean), len(b.train)) == (7, 33)
    f = load_dataset(npz40, clean_fraction=0.25, seed=3)
    assert (len(f.clean), len(f.train)) == (10, 30)
    same = load_dataset(npz40, clean_count=7, seed=3)
    assert torch.equal(same.clean.x, b.clean.x) and torch.equal(same.train.y, b.train.y)
    other = load_dataset(npz40, clean_count=7, seed=4)
    assert not torch.equal(other.clean.x, b.clean.x)


def test_clean_split_bad_sizes(npz40):
    data_error(lambda: load_dataset(npz40), "Asked for 500 clean images but the pool has 40")
    data_error(lambda: load_dataset(npz40, clean_count=41), "41", "40")
    data_error(lambda: load_dataset(npz40, clean_fraction=0), "clean fraction must be in (0, 1]")
    data_error(lambda: load_dataset(npz40, clean_fraction=1.5), "clean fraction must be in (0, 1]", "1.5")
    data_error(lambda: load_dataset(npz40, clean_count=2.5), "whole number")


def test_npz_bad_files(tmp_path):
    (tmp_path / "garbage.npz").write_bytes(b"this is not an archive at all")
    data_error(lambda: load_dataset(f"npz:{tmp_path / 'garbage.npz'}"), "not a readable .npz archive")
    np.savez(tmp_path / "ok.npz", x_train=np.zeros((4, 1, 2, 2), np.uint8))
    whole = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(whole[: len(whole) // 2])
    data_error(lambda: load_dataset(f"npz:{tmp_path / 'truncated.npz'}"), "not a readable .npz archive")
    (tmp_path / "empty.npz").write_bytes(b"")
    data_error(lambda: load_dataset(f"npz:{tmp_path / 'empty.npz'}"), "not a readable .npz archive")
    data_error(lambda: load_dataset(f"npz:{tmp_path / 'ok.npz'}"), "lacks the arrays y_train, x_test, y_test")
    data_error(lambda: load_dataset(f"npz:{tmp_path / 'missing.npz'}"), "No dataset file at")
    np.save(tmp_path / "single.npy", np.zeros(3))
    data_error(lambda: load_dataset(f"npz:{tmp_path / 'single.npy'}"), "single array")
    np.savez(tmp_path / "labels.npz", x_train=np.zeros((4, 1, 2, 2), np.uint8), y_train=np.array([0, 1, -1, 2]),
             x_test=np.zeros((2, 1, 2, 2), np.uint8), y_test=np.zeros(2))
    data_error(lambda: load_dataset(f"npz:{tmp_path / 'labels.npz'}", clean_count=1), "y_train", "from 0 up")
    np.savez(tmp_path / "nan.npz", x_train=np.full((4, 1, 2, 2), np.nan), y_train=np.zeros(4, int),
             x_test=np.zeros((2, 1, 2, 2)), y_test=np.zeros(2, int))
    data_error(lambda: load_dataset(f"npz:{tmp_path / 'nan.npz'}", clean_count=1), "NaN")


# --------------------------------------------------------------------------------------------
# names and the offline default


def test_unknown_name():
    msg = data_error(lambda: load_dataset("imagenet"), "Unknown dataset 'imagenet'")
    for name in DATASET_NAMES:
        assert name in msg


def test_mnist5k_offline():
    b = load_dataset("mnist5k", seed=0)
    assert (len(b.train), len(b.clean), len(b.test)) == (3500, 500, 1000)
    assert b.num_classes == 10 and b.shape == (1, 28, 28) and b.augment == "none"
    keys = [set(keyed(s.x, s.y)) for s in (b.train, b.clean, b.test)]
    assert sum(map(len, keys)) == 5000  # the 5,000 images are distinct, so the splits are disjoint
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    for s in (b.train, b.clean, b.test):
        assert set(s.y.unique().tolist()) == set(range(10))
    assert torch.equal(load_dataset("mnist5k", seed=0).clean.x, b.clean.x)
    assert not torch.equal(load_dataset("mnist5k", seed=1).clean.x, b.clean.x)
    r = load_dataset("mnist5k", seed=0, clean_count=200)
    assert (len(r.train), len(r.clean), len(r.test)) == (3800, 200, 1000)


def test_folder_many_images_keep_their_labels(tmp_path):
    # enough images for the threaded reader; every image is a flat grey level that encodes its class
    for label, name in enumerate(("a", "b")):
        (tmp_path / "many" / name).mkdir(parents=True)
        for j in range(40):
            Image.fromarray(np.full((8, 8), 100 * label + j, np.uint8), "L").save(tmp_path / "many" / name / f"{j}.png")
    b = load_dataset(f"folder:{tmp_path / 'many'}", clean_count=10, image_size=8)
    assert (len(b.train), len(b.clean), len(b.test)) == (54, 10, 16) and b.shape == (1, 8, 8)
    for s in (b.train, b.clean, b.test):
        assert torch.equal(s.x[:, 0, 0, 0].long() // 100, s.y)
    only_train = tmp_path / "only"  # a train/ folder without test/: split 80/20 like a flat folder
    only_train.mkdir()
    (tmp_path / "many").rename(only_train / "train")
    assert len(load_dataset(f"folder:{only_train}", clean_count=10, image_size=8).test) == 16
    data_error(lambda: load_dataset(f"folder:{only_train / 'train' / 'a' / '0.png'}"), "is a file, not a folder")
