"""The Defend page's live view of a run, read from its folder: status, stage, step, losses,
snapshots and probes, in one status line and a few numbers. No Streamlit and no training here;
``dashboard/rundata.py`` reads finished runs."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from defenses.runs.estimate import human_seconds
from defenses.runs.folder import FINAL, list_snapshots, load_tensors, read_events, read_json, read_status

from .rundata import score_label

@dataclass
class LiveView:
    """What the live charts show, parsed from status.json and events.jsonl."""

    state: str
    error: str | None
    stage: str  # the run's phase from its stage events: loading, defense, sweep, trigger recovery, done
    step_stage: str  # the name the latest progress step carries (e.g. "anp", "recover", "sweep")
    step: int
    total: int
    stages_seen: list[str] = field(default_factory=list)
    defense_steps: list[dict] = field(default_factory=list)
    probes: list[dict] = field(default_factory=list)
    baseline: dict | None = None
    snapshots: list[int] = field(default_factory=list)
    eta_s: float | None = None  # seconds left in the current stage, from its steps so far

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0

    @property
    def finished(self) -> bool:
        return self.state in FINAL


def live_view(run_dir: Path) -> LiveView:
    status = read_status(run_dir)
    events = read_events(run_dir)
    prog = status.get("progress") or {}
    step_stage, step, total = prog.get("stage", ""), prog.get("step", 0), prog.get("total", 0)
    stages, defense_steps, probes, baseline = [], [], [], None
    current, timed = "", []
    for ev in events:
        kind = ev.get("type")
        if kind == "step" and ev.get("stage") == step_stage and isinstance(ev.get("t"), (int, float)):
            timed.append((ev["step"], ev["t"]))
        if kind == "stage":
            current = ev["stage"]
            stages.append(current)
        elif kind == "step" and current == "defense":
            defense_steps.append(ev)
        elif kind == "probe":
            probes.append(ev)
        elif kind == "baseline":
            baseline = {"acc": ev.get("acc"), "asr": ev.get("asr")}
    return LiveView(state=status.get("state", "?"), error=status.get("error"), stage=stages[-1] if stages else "queued",
                    step_stage=str(step_stage), step=int(step or 0),
                    total=int(total or 0), stages_seen=stages, defense_steps=defense_steps, probes=probes,
                    baseline=baseline, snapshots=[s for s, _ in list_snapshots(run_dir)],
                    eta_s=stage_eta(timed, int(total or 0)))


def stage_eta(timed: list[tuple[int, float]], total: int) -> float | None:
    """Seconds left in a stage at the pace of its steps so far ((step, time) pairs), once it has
    taken a few steps; None before that."""
    if len(timed) < 2 or total <= 0:
        return None
    (s0, t0), (s1, t1) = timed[0], timed[-1]
    if s1 <= s0 or s1 < 3:
        return None
    return max(0.0, (t1 - t0) / (s1 - s0) * (total - s1))


STAGE_WORDS = {"loading": "loading the model and data", "defense": "defense", "sweep": "sweeping the threshold",
               "trigger recovery": "recovering triggers", "oracle": "oracle"}
MASK_DEFENSES = ("anp", "rnp")  # their scores are masks in [0, 1], low = suspicious


def status_line(view: LiveView) -> str:
    """One status word for the run, and while it runs what it is doing: "running · anp 9/150"."""
    if view.state != "running":
        return view.state
    doing = view.step_stage if view.total else STAGE_WORDS.get(view.stage, view.stage)
    if view.step_stage == "sweep" and view.total:  # the wait after a fast defense (CLP) is this: say what it is
        doing = "sweeping the cut (ACC and ASR of the pruned model, one pass over the test split per cut)"
    eta = f" · about {human_seconds(max(1.0, view.eta_s))} left in this stage" if view.eta_s is not None else ""
    return f"running · {doing}" + (f" {view.step}/{view.total}" if view.total else "") + eta


def live_score_label(defense: str | None) -> str:
    """The live histogram's axis: masks for ANP/RNP, raw constants (not yet standardized) otherwise."""
    return score_label("low") if defense in MASK_DEFENSES else "constant (high = suspicious)"


def finished_cut(run_dir: Path) -> dict | None:
    """The defense's own cut of a finished run (``n_pruned``, ``acc``, ``asr``), from result.json."""
    d = (read_json(Path(run_dir) / "result.json") or {}).get("default")
    if not d or d.get("acc") is None:
        return None
    return {"n_pruned": d.get("n_pruned", 0), "acc": d["acc"],
            "asr": float("nan") if d.get("asr") is None else d["asr"]}


def snapshot_scores(run_dir: Path, step: int) -> dict[str, np.ndarray]:
    path = Path(run_dir) / "snapshots" / f"{step:07d}.safetensors"
    return {k: v.numpy() for k, v in load_tensors(path).items()}
