"""The Zoo page's plain helpers: the words, the table and the charts of a zoo scan
(``defenses.scan.zoo``: ``<runs_dir>/zoos/<zoo_id>/`` with zoo.json, status.json, summary.csv).
No Streamlit calls here and no Ray: the page only reads the folders the command line writes.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from defenses.scan.calibrate import roc_auc
from defenses.scan.report import THRESHOLD
from defenses.scan.zoo import truth_and_scores

from .figures import LEGEND_BELOW, TOP, _title

HOWTO = ("A zoo scan scans every model of a manifest from the command line: "
         "`prunescope scan --zoo models.csv`, with one row per model as below; the README's "
         "\"Scan a whole zoo\" section says more.")
EXAMPLE = ("name,arch,checkpoint,arch_kwargs,backdoored,target\n"
           "suspect_a,cnn,models/a.safetensors,\"{\"\"width\"\": 32}\",yes,0\n"
           "control_b,cnn,models/b.safetensors,,no,\n")
STOPPED = ("The zoo's command stopped before it finished; run the same command again to resume — "
           "finished models are kept.")
ENDED = {"cancelled": "The zoo scan was cancelled before it finished; run the same command again to resume — "
                      "finished models are kept.",
         "failed": "The zoo's command failed before it finished; run the same command again to resume — "
                   "finished models are kept.",
         "stopped": STOPPED}
# summary.csv's column -> the table's label; "file" is left out (the name says which model).
LABELS = {"name": "Model", "state": "State", "probability": "P(backdoor)", "verdict": "Verdict",
          "suspected_label": "Suspected label", "label_confidence": "Label confidence",
          "clean_accuracy": "Clean accuracy", "seconds": "Seconds", "backdoored": "Truth: backdoored",
          "target": "Truth: target", "error": "Error"}
OPEN = "Open"
TRUTH_COLORS = {"backdoored": "#d62728", "clean": "#2ca02c", "unknown": "#7f7f7f"}


def describe_zoo(z: dict) -> str:
    """A zoo for the picker: "zoo.csv · done · 68 models"."""
    status = z.get("status") or {}
    name = Path(z["config"].get("manifest") or z["zoo_id"]).name
    total = status.get("total", len(z["config"].get("rows") or []))
    return f"{name}  ·  {status.get('state', '?')}  ·  {total} model{'s' if total != 1 else ''}"


def pick_zoo(ids: list[str], wanted: str | None) -> str | None:
    """The zoo in the URL (a link or a reload), else the newest."""
    return wanted if wanted in ids else (ids[0] if ids else None)


def finished_count(status: dict) -> int:
    return int(status.get("done") or 0) + int(status.get("failed") or 0)


def progress(status: dict) -> tuple[float, str]:
    """(fraction finished, "N done · N failed · N running · about M min left")."""
    total = int(status.get("total") or 0)
    fraction = finished_count(status) / total if total else 0.0
    left = status.get("seconds_left")
    if left is None or (isinstance(left, float) and math.isnan(left)):
        eta = "time left not known yet"
    else:  # rounded up: "about 0 min left" while models still run would read as done
        eta = f"about {max(1, math.ceil(float(left) / 60))} min left"
    text = (f"{int(status.get('done') or 0)} done · {int(status.get('failed') or 0)} failed · "
            f"{int(status.get('running') or 0)} running · {eta}")
    return min(1.0, fraction), text


def ended_line(status: dict) -> str:
    """A zoo that no longer runs: "60 of 68 models scanned, 8 failed"."""
    total, done, failed = int(status.get("total") or 0), int(status.get("done") or 0), int(status.get("failed") or 0)
    return f"{done} of {total} models scanned, {failed} failed"


def done_line(status: dict) -> str:
    """A finished zoo: "Finished in 12 min: 60 of 68 models scanned, 8 failed."."""
    took = ""
    if status.get("started") and status.get("finished"):
        took = f" in {max(1, round((status['finished'] - status['started']) / 60))} min"
    return f"Finished{took}: {ended_line(status)}."


def outcome(row: dict) -> str:
    """What the filter offers: a finished model's verdict, else its state. One value per row, so
    choosing several keeps the rows with any of them (a state and a verdict never overlap)."""
    if row.get("state") == "done":
        return row.get("verdict") or "?"
    return row.get("state") or "?"


def outcomes(rows: list[dict]) -> list[str]:
    return sorted({outcome(r) for r in rows})


def _number(v, kind=float):
    try:
        return kind(float(v)) if v not in ("", None) else None
    except (TypeError, ValueError):
        return None


def table(rows: list[dict], name_part: str = "", chosen: list[str] | None = None) -> pd.DataFrame:
    """The rows the filters keep, with the page's labels and typed columns (numbers sort as numbers),
    and the "Open" link to each model's Scan page (a relative URL: the app's own /scan page)."""
    keep = [r for r in rows if name_part.lower() in r.get("name", "").lower() and (not chosen or outcome(r) in chosen)]
    out = []
    for r in keep:
        d = {LABELS[k]: r.get(k, "") for k in LABELS}
        for k in ("probability", "label_confidence", "clean_accuracy", "seconds"):
            d[LABELS[k]] = _number(r.get(k))
        for k in ("suspected_label", "target"):
            d[LABELS[k]] = _number(r.get(k), int)
        d[OPEN] = f"scan?scan={r['scan_id']}" if r.get("scan_id") else None
        out.append(d)
    frame = pd.DataFrame(out, columns=[*LABELS.values(), OPEN])
    for k in ("suspected_label", "target"):  # whole numbers with gaps: pandas' nullable integers
        frame[LABELS[k]] = frame[LABELS[k]].astype("Int64")
    return frame


def failures(rows: list[dict]) -> list[tuple[str, str]]:
    return [(r["name"], r.get("error") or "no reason recorded") for r in rows if r.get("state") == "failed"]


def truth_of(row: dict) -> str:
    return {"yes": "backdoored", "no": "clean"}.get(row.get("backdoored"), "unknown")


def scored(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("state") == "done" and _number(r.get("probability")) is not None]


def histogram(rows: list[dict]) -> go.Figure:
    """The finished models' probabilities, stacked by ground truth where the manifest gives it."""
    fig = go.Figure()
    done = scored(rows)
    tallest = max(Counter(min(int(float(r["probability"]) / 0.05), 19) for r in done).values(), default=1)
    for truth, color in TRUTH_COLORS.items():
        ps = [float(r["probability"]) for r in done if truth_of(r) == truth]
        if ps:
            fig.add_trace(go.Histogram(x=ps, name=f"{truth} ({len(ps)})", marker_color=color,
                                       xbins=dict(start=0, end=1.0001, size=0.05),
                                       hovertemplate="p %{x}: %{y} models<extra></extra>"))
    # the line is named in the legend, not by an annotation: at the top of the plot one runs into the bars
    fig.add_vline(x=THRESHOLD, line_dash="dash", line_color="#444444")
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=dict(dash="dash", color="#444444"),
                             name=f"decision at {THRESHOLD}"))
    fig.update_layout(title=_title(f"P(backdoor) of {len(done)} models"), barmode="stack",
                      xaxis=dict(title="P(backdoor)", range=[0, 1]),
                      # whole models on the axis (Plotly would tick 0.2 steps when no bin holds two)
                      yaxis=dict(title="models", tick0=0, dtick=max(1, math.ceil(tallest / 6))), height=380,
                      legend=dict(LEGEND_BELOW, traceorder="normal"), margin=dict(l=55, r=20, t=TOP, b=90))
    return fig


def roc_points(y: list[int], p: list[float]) -> tuple[list[float], list[float]]:
    """(FPR, TPR) as the threshold falls through the scores; tied scores move both at once (the
    diagonal step that ``roc_auc`` counts as half)."""
    pos, neg = sum(y), len(y) - sum(y)
    fpr, tpr, tp, fp = [0.0], [0.0], 0, 0
    for s in sorted(set(p), reverse=True):
        tp += sum(1 for yi, pi in zip(y, p) if pi == s and yi)
        fp += sum(1 for yi, pi in zip(y, p) if pi == s and not yi)
        fpr.append(fp / neg)
        tpr.append(tp / pos)
    return fpr, tpr


def roc(rows: list[dict]) -> tuple[go.Figure | None, float | None, str]:
    """(figure, AUC, the line under it); no figure, and the reason as the line, without both classes."""
    y, p = truth_and_scores(rows)
    b, c = sum(y), len(y) - sum(y)
    if not y:
        return None, None, ("No ROC curve: no finished model has ground truth (a manifest's backdoored column, "
                            "yes or no, gives it).")
    if not b or not c:
        which = "backdoored" if b else "clean"
        return None, None, (f"No ROC curve: the {len(y)} finished models with ground truth are all {which}, and a "
                            "ROC curve needs both backdoored and clean ones.")
    auc = roc_auc(y, p)
    fpr, tpr = roc_points(y, p)
    fig = go.Figure(go.Scatter(x=fpr, y=tpr, mode="lines+markers", line=dict(color="#1f77b4"), name="scan",
                               hovertemplate="FPR %{x:.2f}, TPR %{y:.2f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="#999999"),
                             name="chance", hoverinfo="skip"))
    fig.update_layout(title=_title(f"ROC curve · AUC {auc:.2f}"),
                      xaxis=dict(title="false positive rate", range=[-0.02, 1.02]),
                      yaxis=dict(title="true positive rate", range=[-0.02, 1.02]), height=380, showlegend=False,
                      margin=dict(l=55, r=20, t=TOP, b=90))
    line = (f"AUC over {len(y)} models with ground truth ({b} backdoored, {c} clean); the scan's probability was "
            "calibrated on the development zoo (docs/scan.md), so a zoo of other architectures or attacks can "
            "score lower.")
    return fig, auc, line


def workers_line(figures: list[dict]) -> str | None:
    """One line on the workers that scanned the models (workers.jsonl), when there is one."""
    if not figures:
        return None
    procs = {(f.get("host"), f.get("pid")) for f in figures}
    hosts = {f.get("host") for f in figures}
    peak = max((f.get("peak_rss_mb") or 0) for f in figures)
    return (f"{len(figures)} models scanned by {len(procs)} worker process{'es' if len(procs) != 1 else ''} on "
            f"{len(hosts)} host{'s' if len(hosts) != 1 else ''} · peak memory of a worker {peak:.0f} MB.")
