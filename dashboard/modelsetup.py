"""Choosing a model, a dataset and a trigger; accepting an uploaded checkpoint safely.

Plain functions (no Streamlit) so every bad input can be unit-tested with bytes: each raises an
exception whose message is one sentence for the user (see :func:`user_message`).

Security: uploaded bytes are only ever read by ``defenses.readers.checkpoints.load_state_dict`` (safetensors,
or ``torch.load(weights_only=True)``), so nothing in a file is executed; there is deliberately no
option to trust pickles. A valid upload is re-saved as safetensors under
``<runs_dir>/uploads/<sha256, 16 digits>/<the file's own name>.safetensors`` and the run refers to it
by path: titles and run ids show the user's name for it, the folder its identity.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from defenses.base import ConfigError
from defenses.readers.checkpoints import CheckpointError, check_finite, human_size, load_state_dict, save_safetensors
from defenses.readers.data import DataError
from defenses.readers.models import ARCHITECTURES, ModelError
from defenses.readers.triggers import TriggerError, TriggerSpec

try:  # neurons may not be importable in odd states of the engine; its error is still a ValueError
    from defenses.neurons import NeuronError
except ImportError:  # pragma: no cover
    NeuronError = ValueError

# The library's one-sentence errors, and the plain ones it lets through; the app shows them with
# st.error and keeps running.
USER_ERRORS = (CheckpointError, DataError, ModelError, TriggerError, ConfigError, NeuronError, ValueError, KeyError,
               FileNotFoundError, OSError)

DEFAULT_MAX_UPLOAD_MB = 200
DATASETS = ("mnist5k", "cifar10", "mnist", "gtsrb", "npz", "folder")
POSITIONS = ("bottom_right", "bottom_left", "top_right", "top_left", "center")


class UploadError(ValueError):
    """An upload was refused; one sentence."""


def user_message(e: BaseException) -> str:
    """One sentence for any error the library raises: its first line, quotes around KeyError
    messages stripped, and a full stop at the end."""
    text = str(e).strip().splitlines()[0].strip().strip("'\"") if str(e).strip() else ""
    if not text:
        text = f"{type(e).__name__} without a message"
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.strerror:
        text = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return text if text.endswith((".", "?", "!")) else text + "."


@dataclass(frozen=True)
class Upload:
    path: Path
    sha256: str
    tensors: int
    parameters: int
    size: int

    def describe(self) -> str:
        return f"{self.tensors} tensors, {self.parameters:,} numbers, {human_size(self.size)} (sha256 {self.sha256[:12]}…)"


def safe_stem(name: str) -> str:
    """The file's name without its extension, as a file name and a run id can hold it."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or "model"
    return stem[:48]


def accept_upload(data: bytes, filename: str, runs_dir: str | Path, max_bytes: int) -> Upload:
    """Check an uploaded checkpoint and store it re-saved as safetensors; raises UploadError or
    CheckpointError with one sentence. Nothing in the file is executed."""
    name = Path(filename or "upload").name
    if len(data) > max_bytes:
        raise UploadError(f"{name} is {human_size(len(data))}, over the {human_size(max_bytes)} upload limit; "
                          f"give its path on this machine instead or raise server.maxUploadSize.")
    if not name.lower().endswith((".safetensors", ".pt", ".pth", ".bin", ".ckpt")):
        raise UploadError(f"{name} is not a weights file; upload a .safetensors, .pt or .pth state dict.")
    try:
        state = load_state_dict(bytes(data))  # CheckpointError: empty, corrupt, TorchScript, pickled module, ...
    except CheckpointError as e:  # name the file rather than "the upload"
        raise CheckpointError(str(e).replace("the upload", name, 1)) from None
    check_finite(state, name)
    digest = hashlib.sha256(data).hexdigest()
    folder = Path(runs_dir) / "uploads" / digest[:16]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{safe_stem(name)}.safetensors"
    if not path.exists():
        save_safetensors(state, str(path), metadata={"original_name": name})
    return Upload(path.resolve(), digest, len(state), sum(int(v.numel()) for v in state.values()), len(data))


def stored_upload(path: str | Path, runs_dir: str | Path) -> Upload | None:
    """The Upload for weights already stored under ``<runs_dir>/uploads/<hash>/`` (the model in use,
    shown in the form), or None for any other path; stored once, not again under a new hash (the
    re-saved safetensors' bytes differ from the upload's)."""
    path = Path(path).resolve()
    if path.parent.parent != (Path(runs_dir) / "uploads").resolve() or not path.is_file():
        return None
    state = load_state_dict(str(path))
    return Upload(path, path.parent.name, len(state), sum(int(v.numel()) for v in state.values()), path.stat().st_size)


def accept_poisoned_upload(data: bytes, filename: str, runs_dir: str | Path, max_bytes: int) -> Path:
    """Store an uploaded poisoned test set (an .npz of x_bd, y_bd) under the runs folder by its
    hash; it is read later with ``allow_pickle=False``, so nothing in it is executed."""
    name = Path(filename or "upload").name
    if len(data) > max_bytes:
        raise UploadError(f"{name} is {human_size(len(data))}, over the {human_size(max_bytes)} upload limit; "
                          "give its path on this machine instead.")
    if not name.lower().endswith(".npz"):
        raise UploadError(f"{name} is not an .npz file; save the poisoned images with numpy.savez(path, x_bd=..., "
                          "y_bd=...).")
    folder = Path(runs_dir) / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"poisoned-{hashlib.sha256(data).hexdigest()}.npz"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path.resolve()


def parse_kwargs(text: str) -> dict:
    """The architecture's keyword arguments, typed as a JSON object."""
    text = (text or "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError('The architecture arguments must be JSON, for example {"width": 32}.') from None
    if not isinstance(value, dict):
        raise ConfigError('The architecture arguments must be a JSON object, for example {"width": 32}.')
    return value


def architecture_name(choice: str, tv_name: str = "", local_class: str = "") -> str:
    """The engine's architecture string from the page's three ways of naming one."""
    if choice == "tv:NAME":
        if not tv_name.strip():
            raise ModelError("Type the torchvision model's name, for example resnet18.")
        return f"tv:{tv_name.strip()}"
    if choice == "local class":
        spec = local_class.strip()
        if ".py:" not in spec:
            raise ModelError("Give your class as path/to/file.py:ClassName.")
        return spec
    if choice not in ARCHITECTURES:
        raise ModelError(f"Unknown architecture {choice!r}; choose one of {', '.join(ARCHITECTURES)}.")
    return choice


def data_spec(dataset: str, location: str = "", clean_count: int = 500, seed: int = 0) -> dict:
    """The RunRequest's data spec: a name, a local root for torchvision sets, or a path."""
    location = (location or "").strip()
    if dataset in ("npz", "folder"):
        if not location:
            raise DataError(f"Give the path of the {dataset} dataset on this machine.")
        spec = {"dataset": f"{dataset}:{location}"}
    elif dataset in ("cifar10", "mnist", "gtsrb"):
        if not location:
            raise DataError(f"Give the local folder that holds {dataset} (this machine is offline).")
        spec = {"dataset": dataset, "root": location}
    elif dataset == "mnist5k":
        spec = {"dataset": "mnist5k"}
    else:
        raise DataError(f"Unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}.")
    if isinstance(clean_count, bool) or not isinstance(clean_count, int) or clean_count < 10:
        raise DataError(f"The clean set needs at least 10 images, got {clean_count}.")
    spec.update(clean_count=int(clean_count), seed=int(seed))
    return spec


def spec_choice(path: str, location: str = "", clean_count: int = 500, dataset: str = "") -> dict:
    """The page's model choice from a model spec (``prunescope import``'s spec.json): its model,
    its dataset (or the one given instead, e.g. npz:PATH) and its poisoned test set."""
    from defenses.readers.modelspec import read_spec

    if not (path or "").strip():
        raise ValueError("Give the path of the spec.json that `prunescope import` wrote (or its folder).")
    spec = read_spec(path.strip())
    name = (dataset or "").strip() or spec.dataset or ""
    kind, _, rest = name.partition(":")
    if kind in ("npz", "folder") and rest:
        data = data_spec(kind, rest, clean_count)
    elif name in ("cifar10", "mnist", "gtsrb", "mnist5k"):
        data = data_spec(name, location, clean_count)
    else:
        raise DataError(f"The spec's dataset {name or '(none)'} is not one prunescope loads by name; give it as "
                        "npz:PATH or folder:PATH.")
    if spec.image_size_for(name):
        data["image_size"] = spec.image_size_for(name)
    source = spec.source.get("model_name") or spec.model["architecture"]
    return {"model": spec.model, "data": data, "trigger": spec.trigger(), "spec": spec.path,
            "label": f"{source} · {Path(spec.path).parent.name}/{Path(spec.path).name}"}


def normalization_spec(choice: str, custom: str = ""):
    """The model spec's ``normalize`` from the form: None, a preset name, or mean/std from
    "m1,m2,m3 / s1,s2,s3"; one sentence for text that is not that."""
    from defenses.readers.normalization import resolve

    if choice == "none":
        return None
    if choice != "custom":
        return choice
    parts = [p.strip() for p in (custom or "").split("/")]
    try:
        spec = {"mean": [float(v) for v in parts[0].split(",")], "std": [float(v) for v in parts[1].split(",")]}
    except (ValueError, IndexError):
        raise ValueError(f"Write the custom normalisation as mean values / std values, e.g. 0.49,0.48,0.45 / "
                         f"0.25,0.24,0.26, got {custom!r}.") from None
    resolve(spec)
    return spec


def trigger_spec(kind: str, **fields) -> dict | None:
    """A TriggerSpec dict from the page's fields, or None when the trigger is unknown; for a
    poisoned test set, ``{"kind": "poisoned", "path": ...}`` (read by ``defenses.readers.poisoned``)."""
    if kind == "unknown":
        return None
    if kind == "poisoned":
        if not fields.get("path"):
            raise TriggerError("Upload the poisoned test set (.npz with x_bd and y_bd) or give its path first.")
        from defenses.readers.poisoned import poisoned_trigger

        return poisoned_trigger(fields["path"])
    keep = {"badnets": ("target", "size", "position", "color"), "blend": ("target", "alpha", "seed", "image")}
    if kind not in keep:
        raise TriggerError(f"Unknown trigger kind {kind!r}; choose badnets, blend or unknown.")
    values = {k: fields[k] for k in keep[kind] if k in fields and fields[k] not in (None, "")}
    return TriggerSpec(kind=kind, **values).to_dict()


def check_choice(model_spec: dict, data: dict, trigger: dict | None):
    """Build everything a run will need, once, to refuse a bad choice before a worker starts:
    the model with its weights, the dataset, the fit between them, and the trigger (the worker's
    own ``load_inputs``). Returns (model, bundle, trigger or None, description)."""
    from defenses.runs.inputs import load_inputs

    bundle, model, _, built, title = load_inputs(model_spec, data, trigger)
    return model, bundle, built, title
