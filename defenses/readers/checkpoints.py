"""Safe loading and saving of model weights.

Only two formats are read: ``.safetensors`` and PyTorch state dicts loaded with
``torch.load(..., weights_only=True)``, so nothing in a file is ever executed. Full pickled
modules and TorchScript archives are refused with one sentence saying how to export a state
dict instead. A state dict that does not fit the chosen architecture is refused with the keys
and shapes that do not fit.
"""
from __future__ import annotations

import io
import json
import math
import os
import pickle
import warnings
import zipfile

import torch
from torch import nn

MAX_LISTED = 6


class CheckpointError(ValueError):
    """A checkpoint is unreadable, unsafe or does not fit the model; one sentence for the user."""


def _read_bytes(source) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), "the upload"
    path = os.fspath(source)
    if not os.path.exists(path):
        raise CheckpointError(f"No checkpoint at {path}.")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder; give the path of a .safetensors or .pt file.")
    with open(path, "rb") as f:
        return f.read(), os.path.basename(path)


def _is_torchscript(data: bytes) -> bool:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return False
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return any(n.endswith("/constants.pkl") or n.endswith("/code/") or "/code/__torch__" in n for n in z.namelist())


def _is_safetensors(data: bytes) -> bool:
    if len(data) < 10:
        return False
    n = int.from_bytes(data[:8], "little")
    return 2 <= n <= len(data) - 8 and data[8:9] == b"{"


def load_state_dict(source, *, map_location="cpu") -> dict[str, torch.Tensor]:
    """Read a state dict from a path or bytes (.safetensors, or .pt/.pth with weights_only)."""
    data, label = _read_bytes(source)
    if len(data) == 0:
        raise CheckpointError(f"{label} is empty (0 bytes); choose the saved weights file.")
    if _is_safetensors(data):
        from safetensors.torch import load as st_load

        try:
            state = st_load(data)
        except Exception as e:
            raise CheckpointError(f"{label} looks like safetensors but is damaged or truncated ({type(e).__name__}).") from None
        return {k: v.to(map_location) for k, v in state.items()}
    if _is_torchscript(data):
        raise CheckpointError(f"{label} is a TorchScript archive, which is code; save `model.state_dict()` "
                              "with torch.save or safetensors and load that instead.")
    try:
        with warnings.catch_warnings():
            # Random bytes often start like a pickle of an odd protocol; torch warns before failing.
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        # Only a pickle that names a Python global (a class or a function) is "code"; anything
        # else the weights-only unpickler rejects is a damaged file.
        if "Unsupported global" in msg or "GLOBAL" in msg:
            raise CheckpointError(f"{label} holds pickled Python objects (a whole model or code), which are never "
                                  "loaded for safety; save `model.state_dict()` instead.") from None
        raise CheckpointError(f"{label} is not a readable PyTorch checkpoint (it is corrupt or truncated).") from None
    except Exception:
        # The weights-only unpickler is a byte interpreter: damaged input can end in KeyError,
        # struct.error, IndexError, ... (fuzzed in test_checkpoints). None of it is code.
        raise CheckpointError(f"{label} is not a readable PyTorch checkpoint (it is corrupt, truncated or not a "
                              "weights file).") from None
    return _as_state_dict(obj, label)


def _as_state_dict(obj, label: str) -> dict[str, torch.Tensor]:
    # Common wrappers: {"state_dict": ...}, {"model": ...}, {"net": ...} (BackdoorBench's converted files).
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model_state_dict", "model", "net", "model_state"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{label} does not hold a state dict (a mapping of parameter names to tensors).")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        nested = [k for k, v in obj.items() if isinstance(v, dict) and any(isinstance(t, torch.Tensor)
                                                                          for t in v.values())]
        found = f"it holds the keys {_list(map(str, obj))}"
        if nested:  # an unknown wrapper, e.g. {"student": state_dict}: say where the tensors are
            raise CheckpointError(f"{label} is a wrapper prunescope does not know ({found}); the tensors are under "
                                  f"{_list(repr(k) for k in nested)}: save that entry alone, as in "
                                  f"`torch.save(ckpt[{nested[0]!r}], 'weights.pt')`.")
        raise CheckpointError(f"{label} holds a mapping with no tensors in it ({found}); save `model.state_dict()`.")
    # DataParallel / torch.compile prefixes
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def check_finite(state: dict[str, torch.Tensor], label: str = "the checkpoint") -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{label} has NaN or infinite values in {_list(bad)}; it cannot be analysed.")


def _list(items) -> str:
    items = list(items)
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def fit_report(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """None when ``state`` fits ``model``; else one sentence naming what does not fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    parts = []
    if wrong:
        parts.append(f"shapes differ (file vs model) for {_list(wrong)}")
    if missing:
        parts.append(f"the file lacks {_list(missing)}")
    if unexpected:
        parts.append(f"the model has no {_list(unexpected)}")
    if not parts:
        return None
    last = _last_linear(model)
    key = f"{last}.weight"
    classes_differ = bool(last) and key in state and key in expected and state[key].shape[0] != expected[key].shape[0]
    hint = (f" (the file has {state[key].shape[0]} classes, the model {expected[key].shape[0]})"
            if classes_differ else "")
    return f"The checkpoint does not fit this architecture{hint}: " + "; ".join(parts) + "."


def _last_linear(model: nn.Module) -> str:
    last = ""
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = name
    return last


def load_into(model: nn.Module, source, *, label: str | None = None) -> nn.Module:
    """Load a checkpoint into ``model`` (in place) after checking that it fits and is finite."""
    state = load_state_dict(source)
    label = label or (os.path.basename(os.fspath(source)) if not isinstance(source, (bytes, bytearray)) else "the upload")
    report = fit_report(model, state)
    if report:
        raise CheckpointError(report)
    check_finite(state, label)
    model.load_state_dict(state, strict=False)
    return model


def save_safetensors(model_or_state, path: str, metadata: dict | None = None) -> None:
    """Save a state dict as safetensors (atomically: a reader never sees half a file)."""
    from safetensors.torch import save_file

    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    tmp = f"{path}.tmp"
    save_file(state, tmp, metadata=meta)
    os.replace(tmp, path)


def safetensors_bytes(model_or_state, metadata: dict | None = None) -> bytes:
    from safetensors.torch import save

    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    return save(state, metadata=meta)


def human_size(n: int) -> str:
    if n <= 0:
        return "0 B"
    k = min(int(math.log(n, 1024)), 3)
    return f"{n / 1024 ** k:.1f} {['B', 'KiB', 'MiB', 'GiB'][k]}"
