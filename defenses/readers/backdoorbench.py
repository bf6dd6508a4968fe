"""Import a BackdoorBench attack result: ``prunescope import PATH/attack_result.pt OUT_DIR``.

BackdoorBench (SCLBD/BackdoorBench) saves each attack as ``record/<name>/attack_result.pt``: a
dict with ``model_name``, ``num_classes``, ``model`` (the state dict, ``module.`` prefixed under
DataParallel), ``img_size`` (H, W, C), ``clean_data`` (the dataset's name), ``data_path`` and the
poisoned sets ``bd_train`` and ``bd_test``. Its models take ``Normalize(mean, std)`` inputs with
the dataset's statistics (``get_dataset_normalization``). The import writes, into OUT_DIR:

- ``model.safetensors``: the state dict, prefixes removed, checked to fit the architecture key
  for key (its ``preactresnet18`` is ours with ``final_bn=False``: no BatchNorm before the
  pooling; its ``resnet18``, ``vgg19_bn`` and the others are torchvision's own constructors, as
  BackdoorBench calls them, so ``tv:NAME`` here);
- ``bd_test.npz``: its poisoned test images (``x_bd``, ``y_bd``, ``y_true``), the run's ASR set
  (``defenses.readers.poisoned``), when they can be read without BackdoorBench installed. Three layouts
  are known: the current one keeps the images as PNG files beside the .pt
  (``bd_test_dataset/<label>/<index>.png``, listed in ``bd_data_container["data_dict"]``); older
  ones hold ``{"x", "y"}`` in the file itself (a tensor, or PIL images);
- ``spec.json``: architecture, class count, input shape, the dataset's normalisation and name,
  and the poisoned set (``defenses.readers.modelspec``), read by ``prunescope run --spec`` and the
  dashboard.

The file is read with ``torch.load(weights_only=True)`` and an explicit allowlist of numpy's
array, dtype and scalar types; a file with any other Python object in it (PIL images, a class of
BackdoorBench's) is refused unless the user passes ``--trust-pickle`` on the command line for a
file they vouch for. The web page never offers that.
"""
from __future__ import annotations

import io
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoints import CheckpointError, check_finite, fit_report, save_safetensors
from .modelspec import write_spec

# BackdoorBench's model_name -> (our architecture, its keyword arguments).
MODELS = {
    "preactresnet18": ("preact_resnet18", {"final_bn": False}),
    "resnet18": ("tv:resnet18", {}),
    "resnet34": ("tv:resnet34", {}),
    "vgg19": ("tv:vgg19", {}),
    "vgg19_bn": ("tv:vgg19_bn", {}),
    "densenet161": ("tv:densenet161", {}),
    "mobilenet_v3_large": ("tv:mobilenet_v3_large", {}),
    "efficientnet_b3": ("tv:efficientnet_b3", {}),
    "convnext_tiny": ("tv:convnext_tiny", {}),
}
# BackdoorBench's dataset -> (our dataset name or None, its Normalize mean and std).
DATASETS = {
    "cifar10": ("cifar10", (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    "cifar100": (None, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "gtsrb": ("gtsrb", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "mnist": ("mnist", (0.5,), (0.5,)),
    "tiny": (None, (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
    "celeba": (None, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def _numpy_allowlist() -> list:
    """numpy's array, dtype and scalar reconstructors, under numpy 2's module names and numpy 1's
    (the names a file pickled with numpy 1 refers to)."""
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct, scalar
    allowed = [np.ndarray, np.dtype]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(_reconstruct, f"{module}._reconstruct"), (scalar, f"{module}.scalar")]
    for code in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"):
        allowed.append(type(np.dtype(code)))  # numpy >= 1.25 pickles a dtype by its class (Float64DType, ...)
    return allowed


def read_attack_result(path, *, trust_pickle: bool = False) -> dict:
    """The attack result as a dict, read safely (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No BackdoorBench attack result at {path}; give the path of its attack_result.pt.")
    data = path.read_bytes()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if trust_pickle:  # the user vouched for this file on the command line
                obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
            else:
                with torch.serialization.safe_globals(_numpy_allowlist()):
                    obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():
            raise CheckpointError(f"{path.name} is not a readable PyTorch file (it is corrupt or truncated).") \
                from None
        others = _unsafe_names(data)
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise CheckpointError(f"{path.name} holds Python objects besides tensors and numpy arrays ({shown or 'code'}), "
                              "which are never loaded unasked; if you trust the file, run `prunescope import` with "
                              "--trust-pickle.") from None
    except Exception as e:
        raise CheckpointError(f"{path.name} is not a readable PyTorch file ({type(e).__name__}).") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        keys = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path.name} is not a BackdoorBench attack result: it has no 'model' state dict "
                              f"(it holds {keys[:200]}).")
    return obj


def _unsafe_names(data: bytes) -> list[str]:
    allowed = {"numpy.ndarray", "numpy.dtype"}
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    except Exception:
        return []
    return [g for g in found if g not in allowed and "multiarray" not in g and not g.startswith("numpy.dtypes.")]


def state_dict_of(result: dict) -> dict[str, torch.Tensor]:
    state = {k: v for k, v in result["model"].items() if isinstance(v, torch.Tensor)}
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


# ---------------------------------------------------------------- the poisoned test images


def _image_file(entry_path: str, folder: Path) -> Path | None:
    """Where a PNG listed in the data dict is now: as recorded, beside the .pt, or at the same
    ``bd_test_dataset/<label>/<file>`` under the .pt's folder (the record folder was moved)."""
    p = Path(str(entry_path))
    for candidate in (p, folder / p, folder / Path(*p.parts[-3:])):
        if candidate.is_file():
            return candidate
    return None


def _as_array(image, channels: int) -> np.ndarray:
    from PIL import Image

    mode = "RGB" if channels == 3 else "L"
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return np.asarray(im.convert(mode))
    return np.asarray(image.convert(mode) if isinstance(image, Image.Image) else image)


def poisoned_arrays(bd_test, folder: Path, channels: int) -> tuple[dict | None, str]:
    """({"x_bd", "y_bd", "y_true"}, "") from a result's ``bd_test``, or (None, why not)."""
    try:
        return _poisoned_arrays(bd_test, folder, channels)
    except (TypeError, ValueError, KeyError, IndexError, OSError) as e:  # a damaged layout or image
        return None, f"its bd_test could not be read ({type(e).__name__}: {str(e)[:120]})"


def _poisoned_arrays(bd_test, folder: Path, channels: int) -> tuple[dict | None, str]:
    if not isinstance(bd_test, dict):
        return None, "the file has no poisoned test set (bd_test)"
    if "x" in bd_test and "y" in bd_test:  # the early layouts: the images in the file
        x = bd_test["x"]
        x = x.numpy() if isinstance(x, torch.Tensor) else np.stack([_as_array(im, channels) for im in x])
        y = np.asarray(bd_test["y"].numpy() if isinstance(bd_test["y"], torch.Tensor) else bd_test["y"])
        if x.dtype != np.uint8:  # floats: 0..255 in the early layout, or 0..1; kept as pixels
            x = np.clip(np.round(x * 255 if float(x.max(initial=0)) <= 1.0 else x), 0, 255).astype(np.uint8)
        out = {"x_bd": x, "y_bd": y}
        if bd_test.get("original_targets") is not None:
            out["y_true"] = np.asarray(bd_test["original_targets"])
        return out, ""
    container = bd_test.get("bd_data_container")
    entries = container.get("data_dict") if isinstance(container, dict) else None
    if not isinstance(entries, dict):
        return None, "its bd_test is in a layout prunescope does not know"
    entries = {int(k): v for k, v in entries.items()}
    order = bd_test.get("original_index_array")
    order = [int(i) for i in order if int(i) in entries] if order is not None else sorted(entries)
    images, y_bd, y_true, missing = [], [], [], 0
    for i in order:
        e = entries[i]
        if isinstance(e, dict) and "path" in e:
            where = _image_file(e["path"], folder)
            if where is None:
                missing += 1
                continue
            image, (bd_label, true_label) = where, tuple(e.get("other_info", (None, None)))[:2]
        elif isinstance(e, (tuple, list)) and len(e) >= 3:  # kept in memory: (image, bd label, label)
            image, bd_label, true_label = e[0], e[1], e[2]
        else:
            return None, "its bd_test is in a layout prunescope does not know"
        images.append(_as_array(image, channels))
        y_bd.append(int(bd_label))
        y_true.append(int(true_label))
    if not images:
        return None, (f"its {missing} poisoned test images (bd_test_dataset/<label>/<index>.png) are not beside the "
                      "file; copy the record folder whole")
    return {"x_bd": np.stack(images), "y_bd": np.array(y_bd), "y_true": np.array(y_true)}, ""


# ---------------------------------------------------------------- the import


@dataclass
class ImportSummary:
    spec: Path
    architecture: str
    num_classes: int
    input_shape: tuple[int, int, int]
    dataset: str
    poisoned: int = 0  # poisoned test images written
    notes: list[str] = field(default_factory=list)


def import_attack_result(path, out_dir, *, trust_pickle: bool = False) -> ImportSummary:
    from .models import build_model

    path, out = Path(path), Path(out_dir)
    result = read_attack_result(path, trust_pickle=trust_pickle)
    name = str(result.get("model_name", ""))
    if name not in MODELS:
        raise CheckpointError(f"{path.name} holds a {name or 'unnamed'} model, which prunescope cannot rebuild; it "
                              f"imports {', '.join(MODELS)}.")
    arch, kwargs = MODELS[name]
    classes = int(result.get("num_classes") or 0)
    h, w, c = (tuple(int(v) for v in result["img_size"]) if result.get("img_size") is not None else (32, 32, 3))
    dataset = str(result.get("clean_data") or "")
    state = state_dict_of(result)
    if classes <= 0:
        raise CheckpointError(f"{path.name} does not say its number of classes (num_classes).")
    model = build_model(arch, classes, c, h, **kwargs)
    report = fit_report(model, state)
    if report:
        raise CheckpointError(f"{path.name}'s {name} weights do not match BackdoorBench's {name}: {report}")
    check_finite(state, path.name)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"Cannot write into {out} ({type(e).__name__}); choose another output folder.") from None
    save_safetensors(state, str(out / "model.safetensors"), metadata={"source": str(path), "model_name": name})
    notes = []
    ours, mean, std = DATASETS.get(dataset, (None, None, None))
    if mean is None:
        notes.append(f"its dataset {dataset or '(unnamed)'} has no normalisation on record here: give --normalize "
                     "or --mean/--std when you run it")
    if ours is None:
        notes.append(f"prunescope does not load {dataset or 'its dataset'} by name: give --dataset npz:PATH or "
                     "folder:PATH when you run it")
    identity = mean is not None and all(m == 0 for m in mean) and all(s == 1 for s in std)
    normalize = None if mean is None or identity else {"mean": list(mean), "std": list(std)}
    arrays, why = poisoned_arrays(result.get("bd_test"), path.parent, c)
    poisoned = 0
    if arrays is not None:
        np.savez_compressed(out / "bd_test.npz", **arrays)
        poisoned = len(arrays["y_bd"])
    else:
        notes.append(f"no ASR set was written: {why}; give a trigger or --poisoned-test when you run it")
    spec = write_spec(out, architecture=arch, checkpoint="model.safetensors", arch_kwargs=kwargs, num_classes=classes,
                      input_shape=(c, h, w), normalize=normalize, dataset=ours or dataset or None, image_size=h,
                      poisoned_test="bd_test.npz" if arrays is not None else None,
                      source={"backdoorbench": str(path.resolve()), "model_name": name, "clean_data": dataset,
                              "data_path": str(result.get("data_path", ""))})
    return ImportSummary(spec, arch, classes, (c, h, w), ours or dataset, poisoned, notes)
