"""The trigger-free aids: ways a defender who does not know the trigger can choose a cut from a
finished run's scores alone (a gap or a knee in the sorted scores, CLP's u rule) or from RNP's
own evidence (the label its trigger recovery flags). Plain arrays, no Streamlit."""
from __future__ import annotations

import numpy as np

from dashboard.rundata import FinishedRun, sweep_units


def sorted_suspicious(run: FinishedRun) -> np.ndarray:
    """Every neuron's sweep value, most suspicious first."""
    units = sweep_units(run.scores, run.suspicious)
    flat = np.concatenate([v.ravel().astype(float) for v in units.values()]) if units else np.zeros(0)
    return np.sort(flat)[::-1] if run.suspicious == "high" else np.sort(flat)


def largest_gap(values: np.ndarray, within: float = 0.5) -> int | None:
    """Index i of the largest jump between sorted values i and i+1 among the most suspicious
    ``within`` fraction: pruning the first i+1 neurons cuts the scores at that gap."""
    v = np.asarray(values, dtype=float)
    n = max(1, int(len(v) * within))
    if len(v) < 2:
        return None
    gaps = np.abs(np.diff(v[:n + 1]))
    return int(np.argmax(gaps)) if gaps.size and gaps.max() > 0 else None


def knee(values: np.ndarray) -> int | None:
    """The knee of the sorted curve: the point farthest from the straight line joining its ends
    (Kneedle's idea, on the normalised curve)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 3 or v.max() == v.min():
        return None
    x = np.linspace(0, 1, len(v))
    y = (v - v.min()) / (v.max() - v.min())
    d = np.abs((y[-1] - y[0]) * x - (x[-1] - x[0]) * y + x[-1] * y[0] - y[-1] * x[0])
    return int(np.argmax(d))


def u_rule_count(run: FinishedRun, u: float = 3.0) -> int:
    """How many neurons CLP's rule flags: more than ``u`` std-devs from the layer mean on the
    suspicious side (above for constants, below for masks)."""
    z = sweep_units(run.scores, "high")  # standardized, whatever the direction
    if run.suspicious == "high":
        return int(sum(int((v > u).sum()) for v in z.values()))
    return int(sum(int((v < -u).sum()) for v in z.values()))


def rnp_aid(run: FinishedRun) -> dict | None:
    """RNP's own evidence: the flagged label and how often its recovered trigger flips the
    original model (no true trigger needed)."""
    rec = run.recovery
    if not rec:
        return None
    labels = rec["labels"]
    asr = rec.get("asr_on_original") or rec.get("asr_on_model") or [None] * len(labels)
    flagged = rec.get("flagged", [])
    best = int(np.argmax(rec["anomaly"])) if rec.get("anomaly") else None
    return {"flagged": flagged, "most_anomalous": labels[best] if best is not None else None,
            "anomaly": rec["anomaly"][best] if best is not None else None,
            "asr": {t: asr[i] for i, t in enumerate(labels)}}


def short_recovery_warning(recovery: dict | None) -> str | None:
    """A sentence when trigger recovery ran fewer steps per label than Neural Cleanse's default:
    an unfinished trigger can flag the wrong label, or none."""
    from defenses.methods.trigger_recovery import TriggerRecoveryConfig

    recovery = recovery or {}  # recovery.json (its "config") or the Triggers page's cached copy ("steps")
    steps, paper = recovery.get("steps", (recovery.get("config") or {}).get("steps")), TriggerRecoveryConfig().steps
    if isinstance(steps, int) and steps < paper:
        return (f"Trigger recovery ran {steps} steps per label, below Neural Cleanse's {paper}: an unfinished "
                "trigger can flag the wrong label, or none.")
    return None
