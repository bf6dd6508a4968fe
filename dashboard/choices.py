"""The model the dashboard measures, kept on disk: what the Model page chose survives a reload.

A choice is ``{"model", "data", "trigger", "label"}`` as the RunRequest wants them. One that is not
a shipped sample (the user's weights, a model spec) is written to ``<runs_dir>/models/<key>.json``,
where the key is a short hash of the choice; the page's URL carries ``?model=<key>`` the way it
carries ``?sample=NAME``, and ``models/last.json`` names the last choice made, so that a reload of a
page whose URL carries neither (Explore, Neuron: their URL names a run) keeps it too.

Plain functions, no Streamlit, so the round trips are unit-tested.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

KEY_CHARS = 10


def trigger_words(trigger: dict | None) -> str:
    """The trigger in a few words, for a title: the trigger is part of what is measured (ASR)."""
    if not trigger:
        return "trigger unknown"
    kind = trigger.get("kind")
    if kind == "poisoned":
        return f"poisoned test set {Path(str(trigger.get('path', ''))).name}"
    target = trigger.get("target")
    if kind == "badnets":
        return f"{trigger.get('size')} px patch {str(trigger.get('position', '')).replace('_', ' ')}, target {target}"
    if kind == "blend":
        return f"blend alpha {trigger.get('alpha')}, target {target}"
    return f"{kind} trigger, target {target}"


def own_label(model_spec: dict, file_name: str, trigger: dict | None) -> str:
    """``cnn · mine.pt · 4 px patch bottom right, target 0``: the file's own name, not its hash,
    and the trigger, so that a change of either changes the title and the sidebar."""
    return f"{model_spec['architecture']} · {Path(file_name).name} · {trigger_words(trigger)}"


def choice_key(choice: dict) -> str:
    body = {k: v for k, v in choice.items() if k != "key"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:KEY_CHARS]


def _folder(runs_dir: str | Path) -> Path:
    return Path(runs_dir) / "models"


def _write(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    tmp.replace(path)  # atomic: a reader never sees half a file


def remember(choice: dict, runs_dir: str | Path) -> dict:
    """Keep a choice on disk; returns it with its ``key`` (own models) set. A sample is named by
    the catalog and needs no file, but it does become the last choice."""
    choice = dict(choice)
    if "sample" not in choice.get("model", {}):
        choice["key"] = choice_key(choice)
        _write(_folder(runs_dir) / f"{choice['key']}.json", {**choice, "saved": time.time()})
    _write(_folder(runs_dir) / "last.json", {**choice, "saved": time.time()})
    return choice


def _read(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # gone or damaged: the caller falls back to a sample
    if not isinstance(value, dict) or not {"model", "data", "label"} <= set(value):
        return None
    value.pop("saved", None)
    return value


def recall(key: str, runs_dir: str | Path) -> dict | None:
    """The choice saved under ``key``, or None when there is none (or its weights are gone)."""
    if not key or not all(c in "0123456789abcdef" for c in key):
        return None  # a URL is user input: never a path
    choice = _read(_folder(runs_dir) / f"{key}.json")
    return choice if choice and usable(choice) else None


def last(runs_dir: str | Path) -> dict | None:
    choice = _read(_folder(runs_dir) / "last.json")
    return choice if choice and usable(choice) else None


def usable(choice: dict) -> bool:
    """Whether the files a saved choice names are still there (the uploads folder may be cleaned)."""
    ckpt = choice.get("model", {}).get("checkpoint")
    return ckpt is None or Path(ckpt).is_file()


def saved(runs_dir: str | Path) -> list[dict]:
    """Every own model chosen before, newest first, whose weights are still there."""
    out = []
    for path in _folder(runs_dir).glob("*.json"):
        if path.name == "last.json":
            continue
        choice = _read(path)
        if choice and usable(choice):
            out.append((path.stat().st_mtime, choice))
    return [c for _, c in sorted(out, key=lambda t: -t[0])]


def form_values(choice: dict) -> dict:
    """The own-weights form's widget values that rebuild ``choice``: the form shows what is in use
    (a page switch clears Streamlit's widgets, and pressing the button on an empty form would
    replace the model by the same weights without its trigger)."""
    m, d, t = choice["model"], choice["data"], choice.get("trigger") or {}
    values = {"weights_path": m.get("checkpoint", ""), "arch_kwargs": json.dumps(m.get("arch_kwargs") or {}),
              "num_classes": int(m.get("num_classes") or 0), "own_clean_count": int(d.get("clean_count", 500))}
    arch = m.get("architecture", "")
    if arch.startswith("tv:"):
        values.update(arch="tv:NAME", tv_name=arch[3:])
    elif ".py:" in arch:
        values.update(arch="local class", local_class=arch)
    else:
        values["arch"] = arch
    norm = m.get("normalize")
    if isinstance(norm, dict):
        values.update(normalize="custom", norm_custom=" / ".join(",".join(str(v) for v in norm[k]) for k in ("mean", "std")))
    else:
        values["normalize"] = norm or "none"
    name = str(d.get("dataset", "mnist5k"))
    kind, _, rest = name.partition(":")
    if kind in ("npz", "folder"):
        values.update(dataset=kind, data_location=rest)
    else:
        values.update(dataset=name, data_location=d.get("root", ""))
    values["trigger_kind"] = t.get("kind", "unknown") if t.get("kind") in ("badnets", "blend", "poisoned") else "unknown"
    if values["trigger_kind"] == "poisoned":
        values["poisoned_path"] = t.get("path", "")
    elif t:
        values["trigger_target"] = int(t.get("target", 0))
        if t["kind"] == "badnets":
            values.update(trigger_size=int(t.get("size", 4)), trigger_color=str(t.get("color", 1.0)))
            if isinstance(t.get("position"), str):
                values["trigger_position"] = t["position"]
        else:
            values.update(trigger_alpha=float(t.get("alpha", 0.2)), trigger_seed=int(t.get("seed", 0)),
                          trigger_image=t.get("image") or "")
    return values
