"""One neuron at a time: what it responds to, what drives it, and what cutting it does.

A *neuron* is what the neuron finder calls one (``defenses.neurons``): a BatchNorm channel, a
conv channel or a Linear unit; its activation is that module's output, averaged over the spatial
map for a channel. Every function reads the model and never changes it: activations come from
forward hooks that are removed in ``finally``; attributions from captum's neuron methods on the
module; prune-and-keep evaluations from a pruned copy (``Pruner``).

- :func:`layer_activations`: each neuron's activation on clean test images and on the same
  images with the trigger, for every neuron layer, in one pass (the cost of one evaluation);
- :func:`activation_gap`: how far the trigger moves each neuron, in clean standard deviations;
- :func:`feature_maps` and :func:`neuron_attribution`: a channel's map over the image, and which
  pixels make the neuron fire (``NeuronGradient`` or ``NeuronIntegratedGradients``);
- :func:`neuron_card`: score, ranks and whether the cut prunes it, from a run's scores;
- :func:`single_neuron_effect`: ACC/ASR with this neuron alone pruned, and with the cut but this
  neuron kept.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .readers.data import ArraySplit
from .evaluation import evaluate
from .neurons import NeuronMap, Pruner, selection_by_threshold
from .readers.poisoned import triggered_images

ATTRIBUTIONS = ("NeuronGradient", "NeuronIntegratedGradients")


def victim_indices(split: ArraySplit, trigger=None, max_images: int | None = None) -> torch.Tensor:
    """The images a trigger is measured on: those whose label is not its target (every image
    without a trigger, or for one with no target), the first ``max_images`` of them."""
    keep = torch.arange(len(split))
    if getattr(trigger, "target", None) is not None:
        keep = (split.y != trigger.target).nonzero().flatten()
    return keep if max_images is None else keep[:max_images]


def share_on_trigger(attribution: np.ndarray, trigger) -> float | None:
    """The fraction of an (H, W) attribution map that lies on the trigger's pixels; None for a
    poisoned test set, whose trigger has no mask to measure it on."""
    if getattr(trigger, "mask", None) is None:
        return None
    mask = trigger.mask.numpy()
    mask = mask.max(0) if mask.ndim == 3 else mask
    return float((attribution * (mask > 0)).sum() / max(float(attribution.sum()), 1e-12))


def _per_neuron(output: torch.Tensor) -> torch.Tensor:
    """(N, C): a Linear output as it is, a channel map averaged over its positions."""
    return output.flatten(2).mean(2) if output.ndim > 2 else output


@torch.no_grad()
def layer_activations(model: nn.Module, neuron_map: NeuronMap, split: ArraySplit, trigger=None,
                      max_images: int = 1000, batch_size: int = 250) -> dict[str, dict[str, np.ndarray]]:
    """``{layer: {"clean": (N, C), "triggered": (N, C) or absent}}`` over the first ``max_images``
    images of ``split`` whose label is not the trigger's target (all images without a trigger),
    so that clean and triggered rows are the same images (for a poisoned test set, its own
    images: the same number, other scenes)."""
    keep = victim_indices(split, trigger, max_images)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    out: dict[str, dict[str, list]] = {l.name: {"clean": [], "triggered": []} for l in neuron_map.layers}
    current = {"key": "clean"}
    handles = []
    for layer in neuron_map.layers:
        def hook(mod, inputs, output, name=layer.name):
            out[name][current["key"]].append(_per_neuron(output.detach()).float().cpu())
        handles.append(model.get_submodule(layer.name).register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        for start in range(0, len(keep), batch_size):
            x = split.images(keep[start:start + batch_size])
            triggered = triggered_images(trigger, x, start) if trigger is not None else None
            for key, batch in (("clean", x), ("triggered", triggered)):
                if batch is not None:
                    current["key"] = key
                    model(batch.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return {name: {k: torch.cat(v).numpy() for k, v in d.items() if v} for name, d in out.items()}


def activation_gap(acts: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per neuron: (mean triggered - mean clean) / std clean; NaN without triggered images. A
    backdoor neuron is one the trigger moves far outside its clean range."""
    gaps = {}
    for name, d in acts.items():
        clean = d["clean"]
        if "triggered" not in d:
            gaps[name] = np.full(clean.shape[1], np.nan)
            continue
        std = clean.std(0)
        gaps[name] = (d["triggered"].mean(0) - clean.mean(0)) / np.where(std > 1e-8, std, 1e-8)
    return gaps


@torch.no_grad()
def feature_maps(model: nn.Module, layer: str, index: int, x: torch.Tensor) -> np.ndarray | None:
    """(N, H, W) map of a channel neuron over the images ``x``; None for a Linear neuron."""
    got = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: got.setdefault("out", o.detach()))
    was = model.training
    model.eval()
    try:
        model(x.to(next((p.device for p in model.parameters()), torch.device("cpu"))))
    finally:
        handle.remove()
        model.train(was)
    out = got["out"]
    return out[:, index].float().cpu().numpy() if out.ndim == 4 else None


def neuron_attribution(model: nn.Module, layer: str, index: int, x: torch.Tensor,
                       method: str = "NeuronGradient", steps: int = 32) -> np.ndarray:
    """(N, H, W): |attribution| of the neuron's activation (a channel's spatial mean) to each
    input pixel, summed over the input channels."""
    from captum.attr import NeuronGradient, NeuronIntegratedGradients

    if method not in ATTRIBUTIONS:
        raise ValueError(f"Unknown neuron attribution {method!r}; choose {' or '.join(ATTRIBUTIONS)}.")
    module = model.get_submodule(layer)

    def selector(output):  # captum calls it with the layer's output: one number per image
        return _per_neuron(output)[:, index]

    was = model.training
    model.eval()
    try:
        x = x.clone().requires_grad_(True)
        if method == "NeuronGradient":
            a = NeuronGradient(model, module).attribute(x, neuron_selector=selector)
        else:
            a = NeuronIntegratedGradients(model, module).attribute(x, neuron_selector=selector,
                                                                    baselines=torch.zeros_like(x), n_steps=steps)
    finally:
        model.train(was)
    return a.detach().abs().sum(1).cpu().numpy()


def neuron_card(scores: dict[str, np.ndarray], suspicious: str, threshold, layer: str, index: int,
                units: dict[str, np.ndarray] | None = None) -> dict:
    """Score, rank among all neurons and in its layer (1 = most suspicious), and whether the cut
    prunes it. ``threshold``: a threshold on the sweep's scale, or the cut itself as boolean
    arrays per layer (a count, which no threshold expresses). ``units``: the scores on the
    sweep's scale when they differ (constants as u)."""
    units = units if units is not None else scores
    if layer not in scores or not 0 <= index < len(scores[layer]):
        raise KeyError(f"No neuron {layer}[{index}] in this run; its layers are {', '.join(scores)}.")
    sign = -1.0 if suspicious == "high" else 1.0  # rank 1 is the most suspicious
    mine = sign * float(units[layer][index])
    everyone = np.concatenate([sign * np.asarray(u, dtype=float) for u in units.values()])
    in_layer = sign * np.asarray(units[layer], dtype=float)
    sel = threshold if isinstance(threshold, dict) else selection_by_threshold(
        {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in units.items()}, threshold, suspicious)
    return {"layer": layer, "index": int(index), "score": float(scores[layer][index]),
            "unit": float(units[layer][index]), "rank": int((everyone < mine).sum()) + 1, "of": int(everyone.size),
            "rank_in_layer": int((in_layer < mine).sum()) + 1, "layer_size": int(in_layer.size),
            "pruned": bool(sel[layer][index])}


def single_neuron_effect(model: nn.Module, neuron_map: NeuronMap, layer: str, index: int, test: ArraySplit,
                         trigger=None, cut: dict[str, torch.Tensor] | None = None, rule: str = "gamma") -> dict:
    """``{"alone": ACC/ASR with only this neuron pruned, "cut_kept": ACC/ASR of ``cut`` with this
    neuron kept}`` on the test split (two evaluations; one when there is no cut)."""
    pruner = Pruner(model, neuron_map)
    empty = {l.name: torch.zeros(l.size, dtype=torch.bool) for l in neuron_map.layers}
    alone = {k: v.clone() for k, v in empty.items()}
    alone[layer][index] = True
    out = {"alone": evaluate(pruner.apply(alone, rule), test, trigger)}
    if cut is not None:
        kept = {k: torch.as_tensor(v, dtype=torch.bool).clone() for k, v in cut.items()}
        kept.setdefault(layer, empty[layer].clone())[index] = False
        out["cut_kept"] = evaluate(pruner.apply(kept, rule), test, trigger)
    return out


def neuron_report(run_dir, layer: str, index: int, evaluate: bool = False, method: str = "NeuronGradient") -> dict:
    """The card's numbers for one neuron of a finished run, from its run folder: what
    ``prunescope neuron RUN_ID LAYER INDEX`` prints (``evaluate``: the two prune/keep evaluations)."""
    import dataclasses
    from pathlib import Path

    from .evaluation import sweep_scores
    from .neurons import find_neurons
    from .runs.inputs import load_inputs
    from .runs.folder import load_tensors, read_json

    run_dir = Path(run_dir)
    result, config = read_json(run_dir / "result.json"), read_json(run_dir / "config.json")
    if result is None or config is None:
        raise FileNotFoundError(f"Run {run_dir.name} has no results yet; wait for it to finish.")
    scores = load_tensors(run_dir / "scores.safetensors")
    suspicious = result.get("suspicious", "low")
    units = sweep_scores(scores, suspicious)
    t = result.get("threshold")
    threshold = float(t) if isinstance(t, (int, float)) else float((result.get("config") or {}).get("u", 3.0))
    card = neuron_card({k: v.numpy() for k, v in scores.items()}, suspicious, threshold, layer, index,
                       {k: v.numpy() for k, v in units.items()})
    data, model, _, trigger, _ = load_inputs(config["model"], config["data"], config.get("trigger"))
    nmap = find_neurons(model, data.shape)
    info = nmap.layer(layer)
    card.update(kind=info.kind, source=info.source, threshold=threshold, suspicious=suspicious)
    one = dataclasses.replace(nmap, layers=(info,))
    acts = layer_activations(model, one, data.test, trigger)[layer]
    card["clean_mean"], card["clean_std"] = float(acts["clean"][:, index].mean()), float(acts["clean"][:, index].std())
    card["gap"] = float(activation_gap({layer: acts})[layer][index])
    if "triggered" in acts:
        card["triggered_mean"] = float(acts["triggered"][:, index].mean())
        victim = victim_indices(data.test, trigger, 1)
        a = neuron_attribution(model, layer, index, triggered_images(trigger, data.test.images(victim)), method)[0]
        share = share_on_trigger(a, trigger)
        if share is not None:  # a poisoned test set has no trigger pixels to measure it on
            card["on_trigger"], card["method"] = share, method
    if evaluate:
        cut = selection_by_threshold(units, threshold, suspicious)
        card["effect"] = single_neuron_effect(model, nmap, layer, index, data.test, trigger, cut,
                                              result.get("prune_rule", "gamma"))
    return card
