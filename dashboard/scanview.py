"""The Scan page's plain helpers: which scan to show, starting or resuming one, and the words and
rows the page draws. No Streamlit calls here (the page and the Defend page pass their session state in).

A scan is a folder under ``<runs_dir>/scans`` (``defenses.scan.folder``); the dashboard uses the
same runs folder as its runs (``rundata.runs_dir``).
"""
from __future__ import annotations

import json
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from defenses.runs.folder import stop_worker
from defenses.scan import all_signals
from defenses.scan.folder import create_scan, read_scan_status, scan_key, scans_with_key, start_scan
from defenses.scan.report import THRESHOLD, mads, verdict_sentence

from .rundata import runs_dir

# Session-state keys the Scan page sets for the Defend page: the suspected target, the model it
# was suspected for (``model_key``) and the scan's probability.
SCAN_TARGET = "scan_target"
SCAN_TARGET_MODEL = "scan_target_model"
SCAN_TARGET_PROBABILITY = "scan_target_probability"
FINAL = ("done", "failed", "cancelled")
DURATION = ("A scan runs its signals on the model in use one after the other, in a process of its own: about "
            "30-90 s on 2 CPU cores for an MNIST-size model such as the samples, longer for bigger models and "
            "datasets (much less on a GPU). You can leave this page meanwhile; the scan keeps its folder.")


def model_key(model_spec: dict) -> str:
    return json.dumps(model_spec, sort_keys=True, default=str)


def choice_scan_key(choice: dict, settings: dict | None = None) -> str | None:
    """The scan key of the model and data in use (None when the weights file is gone)."""
    ckpt = choice["model"].get("checkpoint")
    stamp = None
    if ckpt:
        try:
            s = Path(ckpt).stat()
            stamp = (s.st_mtime_ns, s.st_size)
        except OSError:
            return None
    return _key(model_key(choice["model"]), json.dumps(choice["data"], sort_keys=True),
                json.dumps(settings or {}, sort_keys=True), stamp)


@lru_cache(maxsize=64)
def _key(model: str, data: str, settings: str, stamp) -> str:  # stamp: a changed file is hashed again
    return scan_key(json.loads(model), json.loads(data), json.loads(settings))


def scans_for_key(key: str | None, root=None) -> list[Path]:
    """Every scan folder (any state) for a scan key, newest first."""
    return scans_with_key(key, runs_dir() if root is None else root)


def start_or_resume(choice: dict, device: str = "auto", settings: dict | None = None, root=None) -> tuple[Path, str]:
    """Scan the model in use: (folder, what happened), one of "done" (already scanned), "running"
    (already under way), "resumed" (a failed or cancelled scan started again: it keeps the signals it
    had finished) or "started"."""
    root = runs_dir() if root is None else root
    settings = settings or {}
    folder = create_scan(choice["model"], choice["data"], settings, root, device=device,
                         label=choice.get("label", ""))
    status = read_scan_status(folder)
    state = status.get("state")
    if state == "done" and (folder / "verdict.json").exists():
        return folder, "done"
    if state in ("queued", "running") and status.get("pid"):
        return folder, "running"
    start_scan(folder)
    return folder, "resumed" if state in ("failed", "cancelled", "running") else "started"


def cancel_scan(folder) -> bool:
    """Ask the scan's worker to stop (it keeps the signals already done); False if none is alive."""
    return stop_worker(read_scan_status(folder))


def pick_scan(ids: list[str], wanted: str | None, remembered: dict | None, choice: dict | None) -> str | None:
    """The scan to show: the one in the URL (a link or a reload), else the one this session last showed
    for the model in use, else the newest scan of the model in use, else none."""
    if wanted in ids:
        return wanted
    mkey = model_key(choice["model"]) if choice else None
    if remembered and remembered.get("model") == mkey and remembered.get("id") in ids:
        return remembered["id"]
    if choice:
        for d in scans_for_key(choice_scan_key(choice)):
            if d.name in ids:
                return d.name
    return None


def describe_scan(row: dict) -> str:
    """A scan for the picker: its id, model, state and probability."""
    cfg, v = row["config"], row.get("verdict")
    state = row["status"].get("state", "?")
    text = f"{row['scan_id']}  ·  {cfg.get('label') or cfg.get('model', {}).get('sample', '?')}  ·  {state}"
    return text + (f"  ·  p = {v['probability']:.2f}" if v else "")


def signal_order(cfg: dict) -> list[str]:
    return list((cfg.get("settings") or {}).get("signals") or all_signals())


def progress(status: dict, cfg: dict) -> tuple[float, str]:
    """(fraction done, the line under the bar): which signal is running, done/total."""
    titles = {n: i.title for n, i in all_signals().items()}
    state = status.get("state", "queued")
    p = status.get("progress") or {}
    order = signal_order(cfg)
    total = int(p.get("total") or len(order) or 1)
    done = int(p.get("done") or 0)
    if state == "done":
        return 1.0, f"done: {total} of {total} signals"
    if state in ("failed", "cancelled"):
        return done / total, f"{state} after {done} of {total} signals"
    if not p:
        if state == "queued" and not status.get("pid"):
            return 0.0, "queued, but no worker has started it: Scan this model (the same model) starts it"
        return 0.0, "loading the model and the clean images…" if state == "running" else "waiting for the worker…"
    nxt = order[done] if done < len(order) else None
    running = f"running {titles.get(nxt, nxt)}" if nxt else "combining the signals"
    return done / total, f"{running} · {done} of {total} signals done"


def headline(verdict) -> str:
    """The verdict sentence without its notes (the page shows each note as a warning of its own)."""
    return verdict_sentence(replace(verdict, notes=[]))


def likely(verdict) -> bool:
    return verdict.probability >= THRESHOLD


def signal_rows(verdict) -> list[dict]:
    info = all_signals()
    rows = []
    for n, r in verdict.signals.items():
        rows.append({"signal": info[n].title if n in info else n, "suspected label": r.label,
                     "outlier score (MADs)": mads(r.score),
                     "p-value": "" if r.p_value is None else f"{r.p_value:.3g}",
                     "paper's own rule": "" if r.own_rule is None else ("flags" if r.own_rule else "no"),
                     "seconds": round(r.seconds, 1)})
    return rows


def defend_label(verdict, in_use: bool = True) -> str:
    """The Scan page's button to the Defend page; a scan of another model makes its model the one in use."""
    what = "Defend this model" if in_use else "Use this model and defend it"
    return (f"{what} (suspected target {verdict.label})" if likely(verdict) else
            f"{what} anyway (most suspicious label {verdict.label})")


def remember_target(state, verdict, model_spec: dict) -> None:
    state[SCAN_TARGET] = int(verdict.label)
    state[SCAN_TARGET_MODEL] = model_key(model_spec)
    state[SCAN_TARGET_PROBABILITY] = float(verdict.probability)


def defend_hint(state, choice: dict | None) -> str | None:
    """The Defend page's line about the scan, when the Scan page sent the model in use there."""
    if not choice or state.get(SCAN_TARGET) is None or state.get(SCAN_TARGET_MODEL) != model_key(choice["model"]):
        return None
    n, p = state[SCAN_TARGET], state.get(SCAN_TARGET_PROBABILITY)
    if p is not None and p < THRESHOLD:
        return (f"The scan found no evidence of a backdoor (p = {p:.2f}); its most suspicious label is {n}, which "
                "RNP's flagged label and the Triggers page can check.")
    return (f"The scan suspects label {n}" + (f" (p = {p:.2f})" if p is not None else "") +
            ": RNP's flagged label and the Triggers page can confirm it.")


def choice_from_scan(cfg: dict) -> dict:
    """The Model page's choice for a scan's model (no trigger: a scan never has one)."""
    if "sample" in cfg.get("model", {}):
        from .common import sample_choice

        return sample_choice(cfg["model"]["sample"], int(cfg.get("data", {}).get("clean_count", 500)))
    return {"model": cfg["model"], "data": cfg["data"], "trigger": None, "label": cfg.get("label") or "scanned model"}


__all__ = ["DURATION", "FINAL", "SCAN_TARGET", "SCAN_TARGET_MODEL", "SCAN_TARGET_PROBABILITY", "cancel_scan",
           "choice_from_scan", "choice_scan_key", "defend_hint", "defend_label", "describe_scan", "headline", "likely",
           "model_key", "pick_scan", "progress", "remember_target", "scans_for_key", "signal_order", "signal_rows",
           "start_or_resume"]
