"""Reading a run folder into plain data for the pages: the run, its cuts, their neurons and the
export's manifest (the trigger-free aids that choose a cut are in ``dashboard/aids.py``).

No Streamlit here and no training: everything is read from the files the worker wrote
(``defenses.runs.folder``), or computed from the scores with cheap array arithmetic, so the slider
path never evaluates a model. The Streamlit caches that wrap these live in ``dashboard/cache.py``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from defenses.runs.folder import list_runs, load_tensors, read_json, read_status


def runs_dir() -> Path:
    """The runs directory, read from the environment at call time (tests point it at a
    temporary folder after the engine was imported)."""
    return Path(os.environ.get("PRUNESCOPE_RUNS", "runs"))


def run_path(run_id: str) -> Path:
    return runs_dir() / run_id


def is_finished(run_dir: Path) -> bool:
    """A run is explorable once its sweep is written (a run cancelled during trigger recovery
    already has its scores and sweep, and nothing computed should be hidden)."""
    return (Path(run_dir) / "sweep.json").exists() and (Path(run_dir) / "result.json").exists()


def model_label(config: dict) -> str:
    """What model a run was on, for grouping runs: the sample name or the checkpoint's name."""
    m = config.get("model", {})
    if "sample" in m:
        return m["sample"]
    return f"{m.get('architecture', '?')} · {Path(str(m.get('checkpoint', '?'))).name}"


def short_run(run_id: str) -> str:
    """``12-05 08:19 · 9744`` for ``20261205-081921-rnp-mine-9744``: a table column that leaves room
    for the numbers (a whole run id took a 1000 px wide table's width)."""
    parts = run_id.split("-")
    if len(parts) >= 4 and len(parts[0]) == 8 and len(parts[1]) == 6 and parts[0].isdigit():
        return f"{parts[0][4:6]}-{parts[0][6:]} {parts[1][:2]}:{parts[1][2:4]} · {parts[-1]}"
    return run_id


def describe_run(run: dict, state: bool = True) -> str:
    """A run for a picker; ``state=False`` where the picker is not redrawn as the run moves on
    (the Defend page shows the live state beside it)."""
    cfg, st = run["config"], run["status"]
    text = f"{run['run_id']}  ·  {cfg.get('defense', '?')} on {model_label(cfg)}"
    return text + (f"  ·  {st.get('state', '?')}" if state else "")


def explorable_runs() -> list[dict]:
    return [r for r in list_runs(runs_dir()) if is_finished(r["path"])]


# ---------------------------------------------------------------- a finished run


@dataclass(frozen=True)
class Count:
    """A cut beyond the threshold grid: the ``n`` most suspicious neurons, ties in layer order (the
    engine's count sweep; pruning by number). Offered only where the mildest threshold prunes
    neurons that all tie (RNP's masks at exactly 0, see :attr:`FinishedRun.tie`): no threshold
    cuts between them, and without these points the slider could not prune fewer."""
    n: int


def cut_text(cut) -> str:
    """A cut as text for the URL, file names and keys: ``0.3`` (a threshold), ``n16`` (a count)."""
    return f"n{cut.n}" if isinstance(cut, Count) else f"{cut:g}"


def cut_words(cut) -> str:
    """A cut for a sentence: "threshold 0.2", "the 16 most suspicious neurons (ties in layer order)"."""
    if isinstance(cut, Count):
        return f"the {cut.n} most suspicious neuron{'s' * (cut.n != 1)} (ties in layer order)"
    return f"threshold {cut:g}"


def threshold_of(cut) -> float | None:
    """The cut's threshold, or None for a count: the charts whose x axis is the score draw no marker then."""
    return None if isinstance(cut, Count) else cut


def parse_cut(text) -> "float | Count":
    """The inverse of :func:`cut_text`; ValueError on anything else (a hand-edited URL)."""
    text = str(text).strip()
    return Count(int(text[1:])) if text[:1] == "n" else float(text)


@dataclass
class FinishedRun:
    run_id: str
    path: Path
    config: dict
    status: dict
    result: dict
    sweep: dict  # {"threshold": [rows], "count": [rows]}
    scores: dict[str, np.ndarray]  # in the order of result["layers"]
    recovery: dict | None  # triggers/recovery.json, when trigger recovery ran
    oracle: dict | None = None  # oracle.json, when the trigger-aware oracle ran

    @property
    def suspicious(self) -> str:
        return self.result.get("suspicious", "low")

    @property
    def rows(self) -> list[dict]:
        return self.sweep.get("threshold", [])

    @property
    def thresholds(self) -> list[float]:
        return [r["threshold"] for r in self.rows]

    @cached_property
    def tie(self) -> dict | None:
        """``{"n": how many, "score": their score}`` when every neuron the mildest threshold (the
        one pruning fewest) prunes shares one score, so no threshold cuts between them (RNP's
        masks at exactly 0); else None."""
        if not self.rows:
            return None
        mildest = min(self.rows, key=lambda r: r["n_pruned"])
        if not mildest["n_pruned"]:
            return None
        units = sweep_units(self.scores, self.suspicious)
        sel = selected(units, mildest["threshold"], self.suspicious)
        tied = np.concatenate([units[k][sel[k]] for k in units])
        if tied.size == 0 or tied.min() != tied.max():
            return None
        return {"n": int(mildest["n_pruned"]), "score": float(tied[0])}

    @property
    def below_grid(self) -> list[dict]:
        """The count sweep's points that prune fewer neurons than the mildest threshold when its
        neurons tie (see :attr:`tie`), fewest first; else none."""
        if self.tie is None:
            return []
        return sorted((r for r in self.sweep.get("count", []) if r["n_pruned"] < self.tie["n"]),
                      key=lambda r: r["n_pruned"])

    @property
    def cuts(self) -> list:
        """The slider's points in its order: the counts below the grid sit beside the mildest
        threshold (left of threshold 0 for masks, right of the largest u for constants)."""
        counts = [Count(r["n_pruned"]) for r in self.below_grid]
        return counts + self.thresholds if self.suspicious == "low" else self.thresholds + counts[::-1]

    def row(self, cut) -> dict:
        """The precomputed sweep point of a cut (a threshold off the grid: the nearest one)."""
        if isinstance(cut, Count):
            return next(r for r in self.sweep.get("count", []) if r["n_pruned"] == cut.n)
        return row_at(self.rows, cut)

    def slider_text(self, cut) -> str:
        """A slider point: "0.2 · 12 pruned", or below the grid "16 pruned (of 48 tied at 0)"."""
        if isinstance(cut, Count):
            return f"{cut.n} pruned (of {self.tie['n']} tied at {self.tie['score']:g})"
        return f"{cut:g} · {self.row(cut)['n_pruned']} pruned"

    def cut_rows(self) -> list[dict]:
        """Every slider point's sweep row, with its cut (``"cut"``), its text for a chart's click
        (``"key"``) and its name in a sentence (``"label"``)."""
        below = [dict(r, cut=Count(r["n_pruned"]), key=cut_text(Count(r["n_pruned"])),
                      label=f"{r['n_pruned']} of the {self.tie['n']} neurons tied at {self.tie['score']:g}")
                 for r in self.below_grid]
        return below + [dict(r, cut=r["threshold"], key=cut_text(r["threshold"]), label=cut_words(r["threshold"]))
                        for r in self.rows]

    @property
    def asr_known(self) -> bool:
        return any(r.get("asr") is not None and r["asr"] == r["asr"] for r in self.rows)

    @property
    def defense(self) -> str:
        return self.result.get("defense") or self.config.get("defense", "?")


def load_finished(run_dir: Path) -> FinishedRun:
    run_dir = Path(run_dir)
    result = read_json(run_dir / "result.json")
    sweep = read_json(run_dir / "sweep.json")
    if result is None or sweep is None:
        raise FileNotFoundError(f"Run {run_dir.name} has no results yet; wait for it to finish.")
    raw = {k: v.numpy() for k, v in load_tensors(run_dir / "scores.safetensors").items()}
    order = [l["name"] for l in result.get("layers", []) if l["name"] in raw]
    scores = {k: raw[k] for k in order + sorted(set(raw) - set(order))}
    recovery = read_json(run_dir / "triggers" / "recovery.json")
    for rows in sweep.values():  # JSON has no NaN: the engine writes null for an unknown ASR
        for r in rows:
            if r.get("asr") is None:
                r["asr"] = float("nan")
    return FinishedRun(run_dir.name, run_dir, read_json(run_dir / "config.json", {}), read_status(run_dir), result,
                       sweep, scores, recovery, load_oracle(run_dir))


def load_oracle(run_dir: Path) -> dict | None:
    """oracle.json, with the neurons of the oracle's smallest cut under "cut_neurons": its lowest
    masks, as many as the cut prunes (the ones the backdoor needs and the clean task can spare).
    Found once here, since the cached run is read on every rerun; empty without the masks' file."""
    oracle = read_json(run_dir / "oracle.json")
    if oracle is None:
        return None
    path, cut = run_dir / "oracle_scores.safetensors", oracle.get("smallest_cut")
    oracle["cut_neurons"] = set()
    if cut and path.exists():
        ranked = sorted((float(v), layer, i) for layer, s in load_tensors(path).items() for i, v in enumerate(s))
        oracle["cut_neurons"] = {(layer, i) for _, layer, i in ranked[:cut["n_pruned"]]}
    return oracle


def oracle_cut_neurons(run: FinishedRun) -> set[tuple[str, int]]:
    return (run.oracle or {}).get("cut_neurons", set())


def oracle_overlap(run: FinishedRun, cut) -> tuple[int, int]:
    """(how many of the oracle's cut the chosen cut prunes, the size of that cut)."""
    wanted = oracle_cut_neurons(run)
    pruned = {(n["layer"], n["index"]) for n in pruned_neurons(run, cut)}
    return len(wanted & pruned), len(wanted)


def sweep_units(scores: dict[str, np.ndarray], suspicious: str) -> dict[str, np.ndarray]:
    """The scores on the sweep's scale: masks as they are; constants standardized per layer, so
    a threshold is CLP's ``u``. Computed by the engine's own function, in float32 as in the
    sweep, so a neuron on the edge falls on the same side here as in sweep.json."""
    from defenses.evaluation import sweep_scores

    units = sweep_scores({k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in scores.items()}, suspicious)
    return {k: v.numpy() for k, v in units.items()}


def score_label(suspicious: str) -> str:
    return "mask value (low = suspicious)" if suspicious == "low" else "u = std-devs above the layer mean"


def selected(units: dict[str, np.ndarray], threshold: float, suspicious: str) -> dict[str, np.ndarray]:
    """Boolean arrays of the neurons a threshold prunes, by the engine's rule (``<=`` for masks,
    ``>`` for constants, compared in float32)."""
    from defenses.neurons import selection_by_threshold

    sel = selection_by_threshold({k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in units.items()},
                                 float(threshold), suspicious)
    return {k: v.numpy() for k, v in sel.items()}


def cut_selection(run: FinishedRun, cut) -> dict[str, np.ndarray]:
    """Boolean arrays of the neurons a cut prunes: a threshold by :func:`selected`, a count by the
    engine's count rule (the same neurons as its count sweep)."""
    units = sweep_units(run.scores, run.suspicious)
    if not isinstance(cut, Count):
        return selected(units, cut, run.suspicious)
    from defenses.neurons import selection_by_count

    sel = selection_by_count({k: torch.as_tensor(v) for k, v in units.items()}, cut.n, run.suspicious)
    return {k: v.numpy() for k, v in sel.items()}


def row_at(rows: list[dict], threshold: float) -> dict:
    """The precomputed sweep point of a threshold (the nearest one if it is not on the grid)."""
    return min(rows, key=lambda r: abs(r["threshold"] - threshold))


def threshold_from_selection(event) -> "float | Count | None":
    """The cut of the first clicked point of a Plotly selection event (the sweep charts carry
    each point's threshold, or a count's text ``n16``, in ``customdata``); None when nothing
    usable was clicked."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for p in points or []:
        data = p.get("customdata") if hasattr(p, "get") else None
        if isinstance(data, (list, tuple)):
            data = data[0] if data else None
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            return float(data)
        if isinstance(data, str):
            try:
                return parse_cut(data)
            except ValueError:
                continue
    return None


def nearest(options: list[float], value: float) -> float:
    return min(options, key=lambda o: abs(o - value))


def default_threshold(run: FinishedRun) -> float:
    """Where the slider starts: the defense's own cut when it is one number, else ``u`` from the
    config, else the grid point pruning about as many neurons as the default cut."""
    options = run.thresholds
    t = run.result.get("threshold")
    if isinstance(t, (int, float)):
        return nearest(options, float(t))
    u = run.result.get("config", {}).get("u")
    if isinstance(u, (int, float)):
        return nearest(options, float(u))
    n = run.result.get("default", {}).get("n_pruned", 0)
    return min(run.rows, key=lambda r: (abs(r["n_pruned"] - n), r["threshold"]))["threshold"]


def starting_threshold(run: FinishedRun, saved=None, from_url=None):
    """Where a run's slider starts: the cut chosen for it earlier in this session, else the one in
    the URL (a reload or a shared link), else the defense's own cut; always one of ``run.cuts``."""
    if saved in run.cuts:
        return saved
    try:
        cut = parse_cut(from_url) if from_url is not None else default_threshold(run)
    except ValueError:  # a hand-edited URL: start from the defense's own cut
        return default_threshold(run)
    if isinstance(cut, Count):
        return cut if cut in run.cuts else default_threshold(run)
    return nearest(run.thresholds, cut)


def suspicious_table(run: FinishedRun, cut, top: int = 20) -> list[dict]:
    """The ``top`` most suspicious neurons over all layers, and whether the cut prunes them."""
    units = sweep_units(run.scores, run.suspicious)
    sel = cut_selection(run, cut)
    rows = []
    for layer, s in run.scores.items():
        for i, (v, u) in enumerate(zip(np.asarray(s, dtype=float), units[layer])):
            rows.append({"layer": layer, "index": i, "score": float(v), "u": float(u), "pruned": bool(sel[layer][i])})
    rows.sort(key=lambda r: r["u"], reverse=run.suspicious == "high")
    rows = rows[:top]
    oracle = oracle_cut_neurons(run)
    if oracle:
        for r in rows:
            r["in the oracle's cut"] = (r["layer"], r["index"]) in oracle
    if run.suspicious == "low":  # for masks the sweep value is the score itself
        for r in rows:
            r.pop("u")
    return rows


def neuron_from_histogram_click(event, shown: dict[str, np.ndarray], suspicious: str) -> tuple[str, int] | None:
    """The most suspicious neuron under a clicked bar of the score histogram (one trace per layer
    in ``shown``'s order; a bar's points are the positions of its neurons among the layer's finite
    scores), or None when nothing usable was clicked."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return None
    layers = list(shown)
    for p in points or []:
        curve = p.get("curve_number") if hasattr(p, "get") else None
        members = p.get("point_indices") or ([p["point_index"]] if p.get("point_index") is not None else [])
        if not isinstance(curve, int) or not 0 <= curve < len(layers) or not members:
            continue
        v = np.asarray(shown[layers[curve]], dtype=float)
        idx = np.flatnonzero(np.isfinite(v))[[int(m) for m in members if 0 <= int(m) < np.isfinite(v).sum()]]
        if idx.size:
            best = idx[np.argmax(v[idx])] if suspicious == "high" else idx[np.argmin(v[idx])]
            return layers[curve], int(best)
    return None


def pruned_neurons(run: FinishedRun, cut) -> list[dict]:
    sel = cut_selection(run, cut)
    return [{"layer": layer, "index": int(i), "score": float(run.scores[layer][i])}
            for layer, mask in sel.items() for i in np.flatnonzero(mask)]


def manifest(run: FinishedRun, cut) -> dict:
    """What the exported model is: which run, which cut, which neurons, and its ACC/ASR before
    and after, all from the run folder. A count below the grid has no threshold (``None``)."""
    row = run.row(cut)
    neurons = pruned_neurons(run, cut)
    base = run.result.get("baseline", {})
    return {
        "run_id": run.run_id,
        "defense": run.defense,
        "model": run.config.get("model"),
        "threshold": None if isinstance(cut, Count) else cut,
        **({"count": cut.n, "count_rule": "the most suspicious neurons, ties in layer order"}
           if isinstance(cut, Count) else {}),
        "threshold_units": "mask value" if run.suspicious == "low" else "u (std-devs above the layer mean)",
        "suspicious": run.suspicious,
        "rule": run.result.get("prune_rule"),
        "n_pruned": len(neurons),
        "pruned": neurons,
        "before": {"acc": base.get("acc"), "asr": _num(base.get("asr"))},
        "after": {"acc": row["acc"], "asr": _num(row["asr"])},
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _num(v):
    return None if v is None or v != v else float(v)


def points_delta(after, before) -> str | None:
    """"+1.5 pts", or "±0.0 pts" when the change rounds to nothing (the page colours only real
    changes); None when either side is unknown."""
    if after is None or before is None or after != after or before != before:
        return None
    d = round(100 * (after - before), 1)
    return "±0.0 pts" if d == 0 else f"{d:+.1f} pts"


COSTLY_CUT = 0.05  # clean accuracy a cut may cost (5 points) before the pages say so in a sentence


def neurons(n) -> str:
    """'1 neuron', '3 neurons' (a student reads "prunes 1 neurons" as a bug)."""
    return f"{n} neuron" if n == 1 else f"{n} neurons"


def fmt_rate(v) -> str:
    """A rate as a percentage, 'n/a' when unknown (None or NaN)."""
    return "n/a" if v is None or v != v else f"{100 * v:.1f}%"


def cut_cost_warning(baseline_acc, cut: dict | None, rows: list[dict], within: float = COSTLY_CUT,
                     choose: str = "choose it on Explore") -> str | None:
    """A sentence when the defense's own cut costs more than ``within`` of clean accuracy (a red
    delta alone was the only warning when RNP's cut took ACC from 98.3% to 37.7%): it names the
    swept cut that keeps ACC within ``within`` with the lowest ASR, or says no swept cut does.
    ``choose``: how to get there from the page that shows the sentence."""
    if baseline_acc is None or not cut or cut.get("acc") is None or baseline_acc - cut["acc"] <= within:
        return None
    head = (f"The defense's own cut prunes {neurons(cut['n_pruned'])} and costs "
            f"{100 * (baseline_acc - cut['acc']):.1f} points of clean accuracy")
    kept = [r for r in rows if r.get("acc") is not None and r["n_pruned"] > 0 and baseline_acc - r["acc"] <= within]
    if kept:
        best = min(kept, key=lambda r: (r["asr"] if r.get("asr") is not None and r["asr"] == r["asr"] else 2.0,
                                        -r["acc"]))
        where = (f"pruning {best['label']} (a cut below the lowest threshold, by count)"
                 if isinstance(best.get("cut"), Count) else
                 f"threshold {best['threshold']:g} prunes {best['n_pruned']} and")
        return (head + f": {where} keeps ACC {fmt_rate(best['acc'])} (ASR {fmt_rate(best.get('asr'))}), so {choose} "
                "rather than the own cut.")
    fewest = min((r for r in rows if r.get("acc") is not None and r["n_pruned"] > 0), key=lambda r: r["n_pruned"],
                 default=None)
    low = (f" (the fewest neurons swept, {fewest['n_pruned']}, already leave ACC {fmt_rate(fewest['acc'])})"
           if fewest else "")
    return (head + f", and no swept cut keeps ACC within {100 * within:.0f} points{low}: run the defense again "
            "with gentler settings, such as the Defend page's demo budget.")


def cached_effects(run_dir: Path) -> dict:
    """The neuron inspector's prune/keep evaluations already made for this run (run folder)."""
    return read_json(Path(run_dir) / "inspect" / "effects.json", {}) or {}


def is_change(delta: str | None) -> bool:
    return delta is not None and not delta.startswith("±")


def read_manifest_bytes(m: dict) -> bytes:
    return json.dumps(m, indent=1).encode()
