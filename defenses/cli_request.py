"""From command-line arguments to a RunRequest: the model, data and trigger options that `run`
and `neurons` share, and how they become a request (for ``defenses.cli``)."""
from __future__ import annotations

import argparse
import json
import os

from .runs.folder import RunRequest


def _parse_value(text: str):
    try:
        v = json.loads(text)
    except json.JSONDecodeError:
        return text
    return tuple(v) if isinstance(v, list) else v


def _parse_sets(pairs, flag: str = "--set") -> dict:
    params = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"{flag} takes NAME=VALUE, got {pair!r}.")
        k, v = pair.split("=", 1)
        params[k.strip()] = _parse_value(v.strip())
    return params


def _json_arg(flag: str, text: str | None, default=None):
    if not text:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{flag} is not valid JSON ({e.msg} at character {e.pos}); "
                         f"write it like '{{\"key\": 1}}' with double quotes.") from None


def _normalization(args):
    """--normalize NAME, or --mean and --std as comma-separated numbers; None: pixels in [0, 1]."""
    if getattr(args, "mean", None) or getattr(args, "std", None):
        if not (args.mean and args.std):
            raise ValueError("Give both --mean and --std (comma-separated, one value per channel), or --normalize NAME.")
        try:
            spec = {"mean": [float(v) for v in args.mean.split(",")], "std": [float(v) for v in args.std.split(",")]}
        except ValueError:
            raise ValueError(f"--mean and --std take comma-separated numbers, got {args.mean!r} and {args.std!r}.") \
                from None
    else:
        spec = getattr(args, "normalize", None)
    from .readers.normalization import resolve

    resolve(spec)  # one sentence now for a bad one
    return None if spec in (None, "", "none") else spec


def build_request(args) -> RunRequest:
    from .base import get_defense

    info = get_defense(args.defense)
    if args.demo and not info.demo:
        raise ValueError(f"{info.title.split(':')[0]} has no demo budget; run it without --demo.")
    params = {**(info.demo if args.demo else {}), **_parse_sets(args.set)}  # --set wins over the demo
    model, data, spec = model_and_data(args)
    trigger = _json_arg("--trigger", args.trigger)
    if getattr(args, "poisoned_test", None):
        if trigger is not None:
            raise ValueError("Give the trigger as --trigger or as --poisoned-test, not both.")
        from .readers.poisoned import poisoned_trigger

        trigger = poisoned_trigger(args.poisoned_test)
    if trigger is None and spec is not None:
        trigger = spec.trigger()  # the spec's poisoned test set
    return RunRequest(defense=info.name, params=params, model=model, data=data, trigger=trigger, device=args.device,
                      recover_triggers=not args.no_trigger_recovery, recover_on=args.recover_on,
                      recovery_params=_parse_sets(args.recovery_set, "--recovery-set"), oracle=args.oracle,
                      oracle_iterations=args.oracle_iterations)


def model_and_data(args) -> tuple[dict, dict, object]:
    """(model spec, data spec, the model spec file or None) from the options `run`, `neurons` and
    `scan` share."""
    normalize = _normalization(args)
    spec = None
    if getattr(args, "spec", None):
        from .readers.modelspec import read_spec

        if args.model or args.arch or args.checkpoint or args.arch_kwargs or args.num_classes:
            raise ValueError("Give the model as --spec, or as --model / --arch and --checkpoint, not both (a spec "
                             "holds its architecture, arguments and class count).")
        spec = read_spec(args.spec)
    if spec is not None:
        model = dict(spec.model)
    elif args.model:
        model = {"sample": args.model}
    elif args.checkpoint and args.arch:
        model = {"architecture": args.arch, "checkpoint": os.path.abspath(args.checkpoint),
                 "arch_kwargs": _json_arg("--arch-kwargs", args.arch_kwargs, {})}
        if args.num_classes:
            model["num_classes"] = args.num_classes
    else:
        raise ValueError("Give a sample with --model NAME, or your own weights with --arch ARCH --checkpoint FILE.")
    if normalize is not None:
        model["normalize"] = normalize
    data = {"dataset": args.dataset or (spec.dataset if spec else None) or "mnist5k", "seed": args.seed}
    if spec is not None and spec.image_size_for(data["dataset"]):
        data["image_size"] = spec.image_size_for(data["dataset"])
    if args.root:
        data["root"] = os.path.abspath(args.root)
    if args.clean_fraction is not None:
        data["clean_fraction"] = args.clean_fraction
    else:
        data["clean_count"] = args.clean_count
    return model, data, spec


def model_and_data_args(p: argparse.ArgumentParser) -> None:
    """The options that say which model, on which data, shared by `run` and `neurons`."""
    p.add_argument("--model", help="a shipped sample model (see `prunescope samples`)")
    p.add_argument("--spec", help="a model spec (spec.json, or its folder) as `prunescope import` writes it")
    p.add_argument("--arch", help="architecture name, tv:NAME, or path/to/file.py:ClassName")
    p.add_argument("--arch-kwargs", help="JSON keyword arguments for the architecture")
    p.add_argument("--checkpoint", help=".safetensors or .pt state dict")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--dataset", help="mnist5k (the default), cifar10, mnist, gtsrb, folder:PATH, npz:PATH; a spec's own "
                                     "dataset otherwise")
    p.add_argument("--root", help="local folder of the torchvision dataset")
    p.add_argument("--clean-count", type=int, default=500)
    p.add_argument("--clean-fraction", type=float)
    p.add_argument("--seed", type=int, default=0, help="seed of the data split")
    p.add_argument("--normalize", metavar="PRESET",
                   help="the input normalisation the model was trained with: cifar10, cifar100, gtsrb, imagenet, "
                        "mnist or none (the default: pixels in [0, 1])")
    p.add_argument("--mean", help="or the normalisation's per-channel mean, comma-separated (with --std)")
    p.add_argument("--std", help="and its per-channel std, comma-separated")
    p.add_argument("--device", default="auto")
