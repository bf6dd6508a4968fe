"""The scan's charts, one per signal, each showing *why* it says what it says; pure functions from
a verdict to Plotly figures, shared by the dashboard's Scan page and the HTML report."""
from __future__ import annotations

import plotly.graph_objects as go

from .base import outlier_scores
from .scanner import Verdict

SUSPECT, OTHER = "#d62728", "#7f7f7f"


def _bars(values, label: int, title: str, yaxis: str, line=None, line_name: str = "") -> go.Figure:
    colors = [SUSPECT if i == label else OTHER for i in range(len(values))]
    fig = go.Figure(go.Bar(x=[str(i) for i in range(len(values))], y=values, marker_color=colors,
                           hovertemplate="label %{x}: %{y:.3g}<extra></extra>"))
    if line is not None:
        fig.add_hline(y=line, line_dash="dash", line_color="#1f77b4", annotation_text=line_name,
                      annotation_position="top left")
    # short titles in a small font: two charts share a row, and Plotly's toolbar sits top right
    fig.update_layout(title=dict(text=title, font=dict(size=13)), xaxis_title="label", yaxis_title=yaxis, height=300,
                      margin=dict(l=50, r=45, t=50, b=40), showlegend=False, modebar=dict(orientation="v"))
    return fig


def probability_gauge(verdict: Verdict) -> go.Figure:
    p = verdict.probability
    fig = go.Figure(go.Indicator(
        mode="gauge+number", value=100 * p, number={"suffix": "%", "valueformat": ".0f"},
        title={"text": "P(backdoor)"},
        gauge={"axis": {"range": [0, 100]}, "bar": {"color": SUSPECT if p >= 0.5 else "#2ca02c"},
               "steps": [{"range": [0, 50], "color": "#eef6ee"}, {"range": [50, 100], "color": "#fbeaea"}],
               "threshold": {"line": {"color": "black", "width": 2}, "value": 50}}))
    fig.update_layout(height=230, margin=dict(l=30, r=30, t=50, b=10))
    return fig


def mmbd_figure(r) -> go.Figure:
    stats = r.details["max_margin"]
    null = r.details["null"]
    fig = _bars(stats, r.label, f"MM-BD: max margin (p = {r.p_value:.2g})", "max margin")
    try:
        from scipy.stats import gamma

        q = float(gamma.ppf(0.95, null["shape"], loc=null["loc"], scale=null["scale"]))
        fig.add_hline(y=q, line_dash="dash", line_color="#1f77b4",
                      annotation_text="null 95%", annotation_position="top left")
    except Exception:  # a degenerate fit: the bars alone
        pass
    return fig


def noise_figure(r) -> go.Figure:
    errors = r.details["errors_to"]
    even = sum(errors) / max(1, len(errors))
    return _bars(errors, r.label, "Neuron noise: errors per label", "errors into the label", even, "even share")


def cleanse_figure(r) -> go.Figure:
    l1 = r.details["l1"]
    import statistics

    med = statistics.median(l1)
    fig = _bars(l1, r.label, "Neural Cleanse: trigger size", "mask L1, log (dashed: median)")
    fig.update_yaxes(type="log")
    # the line in data units; no annotation: an annotation on a log axis takes log10 units and, given
    # the median itself, stretched the axis to 1e90
    fig.add_hline(y=med, line_dash="dash", line_color="#1f77b4")
    return fig


def unlearn_figure(r) -> go.Figure:
    shares = [100 * s for s in r.details["shares"]]
    return _bars(shares, r.label, "Unlearned model: label shares", "% of clean images",
                 100 / len(shares), "even share")


def weights_figure(r) -> go.Figure:
    return _bars(r.details["norm"], r.label, "Final layer: weight-row norms", "L2 norm of the row")


def outlier_figure(verdict: Verdict) -> go.Figure:
    """Every signal's outlier score per label on one chart: do they point at the same label?"""
    fig = go.Figure()
    for name, r in verdict.signals.items():
        z = outlier_scores(r.evidence).clamp(-10, 20).tolist()
        fig.add_trace(go.Scatter(x=[str(i) for i in range(len(z))], y=z, mode="lines+markers", name=name))
    fig.add_vline(x=str(verdict.label), line_color=SUSPECT, line_dash="dot")
    fig.update_layout(title=dict(text="Every signal's outlier score per label", font=dict(size=13)), height=320,
                      xaxis_title="label", yaxis_title="outlier score", margin=dict(l=50, r=20, t=50, b=40),
                      modebar=dict(orientation="v"))
    return fig


def trigger_figure(r) -> go.Figure | None:
    """The recovered trigger for the suspected label: mask x pattern, as an image."""
    if "mask" not in r.details:
        return None
    import torch

    mask = torch.tensor(r.details["mask"])
    pattern = torch.tensor(r.details["pattern"])
    img = (mask[None] * pattern)
    if img.shape[0] == 1:
        fig = go.Figure(go.Heatmap(z=img[0].flip(0).tolist(), colorscale="gray", showscale=False))
    else:
        fig = go.Figure(go.Image(z=(img.permute(1, 2, 0) * 255).round().tolist()))
    fig.update_layout(title=dict(text=f"Trigger, label {r.label}", font=dict(size=13)), height=300, width=300,
                      margin=dict(l=10, r=45, t=40, b=10), modebar=dict(orientation="v"), xaxis_visible=False, yaxis_visible=False)
    return fig


FIGURES = {"mmbd": mmbd_figure, "noise": noise_figure, "cleanse": cleanse_figure, "unlearn": unlearn_figure,
           "weights": weights_figure}


def signal_figure(r) -> go.Figure:
    return FIGURES[r.name](r)
