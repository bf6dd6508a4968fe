"""Loading what a run needs: the model (a sample or a checkpoint with its architecture), the
dataset, the trigger, checked to fit one another, and the preflight that refuses bad input in one
sentence before a run folder or a worker exists.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..base import get_defense
from .folder import RunRequest, resolve_device_name

def load_model(model_spec: dict, data_shape=None, num_classes=None):
    """(model, trigger spec dict or None from the sample catalog, description). The spec's
    ``normalize`` (a preset name or mean/std) goes in front of the model (defenses.readers.normalization)."""
    from ..readers.normalization import attach as attach_normalization

    if "sample" in model_spec:
        from ..readers.sources import source

        model, trigger, title = source("sample").load_for_run(model_spec["sample"])
        attach_normalization(model, model_spec.get("normalize"), (data_shape or (1,))[0])
        return model, trigger, title
    from ..readers.checkpoints import CheckpointError, load_into, load_state_dict
    from ..readers.models import architectures_fitting, build_model

    arch = model_spec["architecture"]
    c, h, _ = model_spec.get("input_shape") or data_shape
    kwargs = dict(model_spec.get("arch_kwargs") or {})
    # the class count and channels given as architecture keywords win over the dataset's (no clash)
    classes = kwargs.pop("num_classes", None) or model_spec.get("num_classes") or num_classes
    c = kwargs.pop("in_channels", None) or c
    h = kwargs.pop("image_size", None) or h
    model = build_model(arch, classes, c, h, **kwargs)
    try:
        load_into(model, model_spec["checkpoint"])
    except CheckpointError as e:
        if "does not fit" not in str(e):
            raise
        # Name the architectures the file's keys do fit, tried here, rather than leave the user to guess.
        fits = architectures_fitting(load_state_dict(model_spec["checkpoint"]), classes, c, h, skip=arch)
        if not fits:
            raise
        raise CheckpointError(f"{str(e).rstrip('.')}; its parameter names fit {', '.join(fits)}: choose that "
                              "architecture.") from None
    attach_normalization(model, model_spec.get("normalize"), c)  # in front of the model, never inside it
    model.eval()
    return model, None, f"{arch} from {Path(model_spec['checkpoint']).name}"


def load_data(data_spec: dict):
    from ..readers.data import load_dataset

    spec = dict(data_spec)
    name = spec.pop("dataset", "mnist5k")
    return load_dataset(name, **spec)


def check_model_fits_data(model, data) -> None:
    """One forward pass on two test images; a channel or class mismatch becomes one sentence."""
    from ..readers.data import DataError

    x = data.test.images(torch.arange(min(2, len(data.test))))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            out = model(x.to(device))
            model.train(was)
    except RuntimeError as e:
        c = data.shape[0]
        raise DataError(f"The model cannot take this dataset's {c}-channel {data.shape[1]}x{data.shape[2]} images "
                        f"(grayscale vs colour or size mismatch: {str(e).splitlines()[0][:120]}).") from None
    if out.ndim != 2 or out.shape[1] != data.num_classes:
        raise DataError(f"The model outputs {tuple(out.shape[1:])} scores per image but the dataset has "
                        f"{data.num_classes} classes; choose the matching dataset or number of classes.")


def load_inputs(model_spec: dict, data_spec: dict, trigger_dict: dict | None):
    """(data, model, trigger dict, trigger, title): the run's inputs loaded and checked to fit;
    the trigger is the one asked for (a recipe or a poisoned test set), else the sample's own,
    else None."""
    from ..readers.poisoned import build_trigger

    data = load_data(data_spec)
    model, sample_trigger, title = load_model(model_spec, data.shape, data.num_classes)
    check_model_fits_data(model, data)
    trigger_dict = trigger_dict if trigger_dict is not None else sample_trigger
    trigger = build_trigger(trigger_dict, data.shape, data.num_classes)
    return data, model, trigger_dict, trigger, title


def preflight(request: RunRequest) -> None:
    """Load the run's inputs here, before a run folder or a worker exists, so bad input (a broken
    checkpoint, the wrong dataset, a clean set too small, a trigger that does not fit) is refused
    in one sentence instead of becoming a failed run."""
    from ..base import check_clean_data

    from ..base import config_from_dict
    from ..neurons import find_neurons

    resolve_device_name(request.device)
    info = get_defense(request.defense)
    config = config_from_dict(info.config_cls, request.params)
    data, model, trigger_dict, trigger, _ = load_inputs(request.model, request.data, request.trigger)
    if info.check is not None:  # a model this defense cannot handle (e.g. Hölder without an MLP head)
        info.check(model, find_neurons(model, data.shape), config)
    if info.needs_data or request.oracle:
        check_clean_data(data.clean, info.title.split(":")[0] if info.needs_data else "The oracle")
    if request.oracle and trigger_dict is None:
        raise ValueError("The oracle needs the trigger, and this model has none on record: give one or leave the "
                         "oracle off.")
    if request.oracle:
        from ..methods.oracle import check_oracle_trigger

        check_oracle_trigger(trigger)

