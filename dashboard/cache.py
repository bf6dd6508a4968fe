"""The Streamlit caches: read-only models in ``st.cache_resource``; arrays and tables in
``st.cache_data``. Every cached function takes plain, hashable keys (JSON strings, paths and
modification times), so a finished run is read from disk once, and a run that gains files (trigger
recovery ending after the sweep) is read again.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from defenses.readers.poisoned import PoisonedSet, triggered_images

from . import liveview, rundata
from .modelsetup import check_choice


def _key(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _mtime(path: Path) -> float:
    try:
        return Path(path).stat().st_mtime
    except FileNotFoundError:
        return 0.0


# ---------------------------------------------------------------- models (read-only)


@st.cache_resource(max_entries=6, show_spinner=False)
def _model(spec_key: str, shape_key: str, num_classes: int | None):
    from defenses.runs.inputs import load_model

    model, _, _ = load_model(json.loads(spec_key), json.loads(shape_key), num_classes)
    model.eval()
    model.requires_grad_(False)  # read-only: shared by every session
    return model


def run_model(run: rundata.FinishedRun) -> torch.nn.Module:
    """The run's original model, shared read-only; prune a copy, never this one."""
    return _model(_key(run.config["model"]), _key(run.result.get("input_shape")), run.result.get("num_classes"))


# ---------------------------------------------------------------- the Model page


@st.cache_data(max_entries=16, show_spinner="Checking the model on the test split ...")
def model_summary(choice_key: str, n_examples: int = 6) -> dict:
    """Baseline ACC/ASR, the description, and a few clean and triggered test images with the
    model's predictions, for a model/data/trigger choice (JSON). Raises one-sentence errors."""
    from defenses.evaluation import evaluate

    choice = json.loads(choice_key)
    model, bundle, trigger, title = check_choice(choice["model"], choice["data"], choice.get("trigger"))
    base = evaluate(model, bundle.test, trigger)
    idx = torch.arange(min(n_examples, len(bundle.test)))
    x = bundle.test.images(idx)
    with torch.no_grad():
        pred = model(x).argmax(1)
        xt = triggered_images(trigger, x) if trigger is not None else None
        pred_t = model(xt).argmax(1) if xt is not None else None
    return {
        "title": title, "data": bundle.describe(), "num_classes": bundle.num_classes, "shape": list(bundle.shape),
        "acc": base["acc"], "asr": base["asr"], "target": None if trigger is None else trigger.target,
        "clean": x.numpy(), "labels": bundle.test.y[idx].tolist(), "pred": pred.tolist(),
        "triggered": None if xt is None else xt.numpy(), "pred_triggered": None if pred_t is None else pred_t.tolist(),
        "poisoned": isinstance(trigger, PoisonedSet),
    }


@st.cache_data(max_entries=16, show_spinner="Perturbing the neurons ...")
def neuron_noise(choice_key: str, images: int = 512) -> dict:
    """The neuron-noise curve (ANP's premise) of a model choice on its first test images."""
    from defenses.methods.perturbation import neuron_noise_curve, suspect_label

    choice = json.loads(choice_key)
    model, bundle, _, _ = check_choice(choice["model"], choice["data"], choice.get("trigger"))
    points = neuron_noise_curve(model, bundle.test, images=images)
    return {"points": [p.to_dict() for p in points], "suspect": suspect_label(points),
            "images": min(images, len(bundle.test))}


# ---------------------------------------------------------------- run folders


@st.cache_data(max_entries=32, show_spinner=False)
def _finished(path: str, sweep_mtime: float, triggers_mtime: float, oracle_mtime: float) -> rundata.FinishedRun:
    return rundata.load_finished(Path(path))


def finished_run(run_id: str) -> rundata.FinishedRun:
    # Trigger recovery and the oracle write their files after the sweep: their times are in the key.
    path = rundata.run_path(run_id)
    return _finished(str(path), _mtime(path / "sweep.json"), _mtime(path / "triggers" / "recovery.json"),
                     _mtime(path / "oracle.json"))


@st.cache_data(max_entries=256, show_spinner=False)
def snapshot(path: str, step: int) -> dict[str, np.ndarray]:
    """One snapshot's scores (snapshot files never change once written)."""
    return liveview.snapshot_scores(Path(path), step)


@st.cache_data(max_entries=16, show_spinner=False)
def recovered_triggers(path: str, mtime: float) -> dict | None:
    from defenses.methods.trigger_recovery import load_recovery

    rec = load_recovery(Path(path) / "triggers")
    if rec is None:
        return None
    return {"labels": list(rec.labels), "masks": rec.masks.numpy(), "patterns": rec.patterns.numpy(),
            "anomaly": list(rec.anomaly), "flagged": list(rec.flagged), "l1": list(rec.l1),
            "asr_on_model": rec.asr_on_model, "asr_on_original": rec.asr_on_original,
            "threshold": rec.config.get("anomaly_threshold", 2.0), "recovered_on": rec.recovered_on,
            "steps": rec.config.get("steps")}


@st.cache_data(max_entries=8, show_spinner=False)
def true_trigger(trigger_key: str, shape_key: str) -> tuple[np.ndarray, np.ndarray] | None:
    from defenses.readers.triggers import TriggerSpec

    spec = json.loads(trigger_key)
    if not spec or spec.get("kind") == "poisoned":  # a poisoned test set has no pattern and mask
        return None
    t = TriggerSpec.from_dict(spec).build(tuple(json.loads(shape_key)))
    return t.mask.numpy(), t.pattern.numpy()


# ---------------------------------------------------------------- pruning (no evaluation)


@st.cache_data(max_entries=16, show_spinner=False)
def _neuron_map(path: str, _run: rundata.FinishedRun):
    from defenses.neurons import find_neurons

    return find_neurons(run_model(_run), tuple(_run.result["input_shape"]))


def pruned_model(run: rundata.FinishedRun, cut) -> torch.nn.Module:
    """A pruned copy of the run's model at a cut of its sweep (zeroing weights; no evaluation)."""
    from defenses.neurons import prune

    model = run_model(run)
    nmap = _neuron_map(str(run.path), run)
    sel = rundata.cut_selection(run, cut)
    return prune(model, nmap, {k: torch.from_numpy(np.asarray(v)) for k, v in sel.items()},
                 run.result.get("prune_rule", "gamma"))


def pruned_model_bytes(run: rundata.FinishedRun, cut, manifest: dict) -> bytes:
    from defenses.readers.checkpoints import safetensors_bytes

    meta = {"prunescope_manifest": json.dumps({k: v for k, v in manifest.items() if k != "pruned"})}
    return safetensors_bytes(pruned_model(run, cut), metadata=meta)


@st.cache_data(max_entries=16, show_spinner="Computing attributions ...")
def attributions(run_id: str, cut, method: str, n: int = 4) -> dict:
    """Attribution maps of the original and the pruned model on ``n`` clean and ``n`` triggered
    test images (the first test images whose label is not the target)."""
    from defenses.inspector import victim_indices

    from .attributions import attribution_maps, predictions

    run = finished_run(run_id)
    bundle, trigger = run_inputs(run_id, str(run.path.resolve()))
    idx = victim_indices(bundle.test, trigger, n)
    x = bundle.test.images(idx)
    # short titles: eight columns at 1000 px leave about 60 px each
    inputs, titles = [x], [f"clean {int(y)}" for y in bundle.test.y[idx]]
    if trigger is not None:
        inputs.append(triggered_images(trigger, x))
        if isinstance(trigger, PoisonedSet):  # its own images, not these scenes stamped
            titles += [f"poisoned {i + 1}" for i in range(len(x))]
        else:
            titles += [f"trig. {int(y)}" for y in bundle.test.y[idx]]
    x_all = torch.cat(inputs)
    before_model, after_model = run_model(run), pruned_model(run, cut)
    out = {"images": x_all.numpy(), "titles": titles}
    for name, model in (("before", before_model), ("after", after_model)):
        pred = predictions(model, x_all)
        out[name] = attribution_maps(model, x_all, pred, method)
        out[f"pred_{name}"] = pred.tolist()
    return out


# ---------------------------------------------------------------- the Defend page


@st.cache_data(max_entries=64, show_spinner="Checking that this defense can run on this model ...")
def preflight_message(request_key: str) -> str | None:
    """What ``prunescope run`` would refuse this run for, in one sentence (None: it can start).
    The same check as the command line's, so a run the worker would fail never starts."""
    from defenses.runs.inputs import preflight
    from defenses.runs.folder import RunRequest

    from .modelsetup import USER_ERRORS, user_message

    try:
        preflight(RunRequest(**json.loads(request_key)))
    except USER_ERRORS as e:
        return user_message(e)
    return None


@st.cache_data(max_entries=32, show_spinner=False)
def run_estimate(request_key: str) -> list[dict]:
    """Each stage of the run and its measured seconds (defenses.runs.estimate: a few steps of each stage
    on this model and machine), once per request."""
    from dataclasses import asdict

    from defenses.runs.estimate import estimate
    from defenses.runs.folder import RunRequest

    return [asdict(s) for s in estimate(RunRequest(**json.loads(request_key)))]


@st.cache_data(max_entries=32, show_spinner=False)
def recovery_estimate(config_key: str, params_key: str) -> dict:
    """Trigger recovery's measured cost for a finished run's model (its config.json, as JSON)."""
    from dataclasses import asdict

    from defenses.runs.estimate import estimate_recovery

    cfg = json.loads(config_key)
    return asdict(estimate_recovery(cfg["model"], cfg["data"], cfg.get("trigger"), json.loads(params_key),
                                    cfg.get("device", "auto")))


def request_key(request) -> str:
    return _key(request.to_dict())


# ---------------------------------------------------------------- the neuron inspector


@st.cache_resource(max_entries=4, show_spinner=False)
def run_inputs(run_id: str, folder: str):
    """(the run's data bundle, its trigger or None), loaded once per run and shared read-only.
    ``folder``: the run folder's absolute path, part of the cache key (a run id names one run only
    within its runs folder)."""
    from defenses.readers.poisoned import build_trigger
    from defenses.runs.inputs import load_data

    run = finished_run(run_id)
    bundle = load_data(run.config["data"])
    return bundle, build_trigger(run.result.get("trigger"), bundle.shape, bundle.num_classes)


@st.cache_data(max_entries=4, show_spinner="Reading every neuron's activation on the test split (once per run) ...")
def neuron_activations(run_id: str, folder: str) -> dict:
    """Every neuron's activation on up to 1,000 test images, clean and triggered, and each
    neuron's gap; one forward pass over them, then every card of the run reads from here."""
    from defenses.inspector import activation_gap, layer_activations, victim_indices
    from defenses.methods.trigger_recovery import RecoveredTrigger

    run = finished_run(run_id)
    bundle, trigger = run_inputs(run_id, folder)
    model, nmap = run_model(run), _neuron_map(str(run.path), run)
    acts = layer_activations(model, nmap, bundle.test, trigger)
    out = {"acts": acts, "gaps": activation_gap(acts), "images": victim_indices(bundle.test, trigger, 1000).numpy()}
    rec_path = run.path / "triggers" / "recovery.json"
    if trigger is None and rec_path.exists():  # no true trigger: the one Neural Cleanse recovered, on the same images
        rec = recovered_triggers(str(run.path), rec_path.stat().st_mtime)
        label = rec["flagged"][0] if rec["flagged"] else rec["labels"][int(np.argmax(rec["anomaly"]))]
        i = rec["labels"].index(label)
        stamp = RecoveredTrigger(torch.from_numpy(rec["masks"][i]), torch.from_numpy(rec["patterns"][i]))
        recovered = layer_activations(model, nmap, bundle.test, stamp)
        out["recovered"] = {k: v["triggered"] for k, v in recovered.items()}
        out["recovered_label"] = int(label)
    return out


@st.cache_data(max_entries=32, show_spinner="Computing the neuron's maps ...")
def neuron_maps(run_id: str, layer: str, index: int, method: str, image: int, folder: str) -> dict:
    """Feature maps and attributions of one neuron on one clean test image and its triggered
    version (rows: clean, triggered)."""
    from defenses.inspector import feature_maps, neuron_attribution, share_on_trigger

    run = finished_run(run_id)
    bundle, trigger = run_inputs(run_id, folder)
    x = bundle.test.images(torch.tensor([image]))
    if trigger is not None:
        x = torch.cat([x, triggered_images(trigger, x, image)])
    model = run_model(run)
    out = {"images": x.numpy(), "feature": feature_maps(model, layer, index, x),
           "attribution": neuron_attribution(model, layer, index, x, method)}
    share = share_on_trigger(out["attribution"][-1], trigger) if trigger is not None else None
    if share is not None:
        out["on_trigger"] = share
    return out


def neuron_effect(run: rundata.FinishedRun, layer: str, index: int, cut) -> dict:
    """ACC/ASR with this neuron alone pruned and with the cut (a threshold or a count) but this neuron
    kept: two evaluations on the test split the first time, then read from the run folder
    (``inspect/effects.json``), so a second look, in any session, is instant."""
    from defenses.inspector import single_neuron_effect
    from defenses.runs.folder import read_json, write_json

    path = run.path / "inspect" / "effects.json"
    key = f"{layer}:{index}:{rundata.cut_text(cut)}"
    done = read_json(path, {}) or {}
    if key not in done:
        bundle, trigger = run_inputs(run.run_id, str(run.path.resolve()))
        sel = {k: torch.from_numpy(np.asarray(v)) for k, v in rundata.cut_selection(run, cut).items()}
        got = single_neuron_effect(run_model(run), _neuron_map(str(run.path), run), layer, index, bundle.test,
                                   trigger, sel, run.result.get("prune_rule", "gamma"))
        done = read_json(path, {}) or {}  # another session may have added some meanwhile
        done[key] = {k: {m: (None if v != v else v) for m, v in r.items()} for k, r in got.items()}
        path.parent.mkdir(exist_ok=True)
        write_json(path, done)
    return done[key]
