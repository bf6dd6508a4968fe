"""Every chart of the dashboard, built by pure functions from plain data.

Each builder takes lists, dicts and numpy arrays (never a run folder, a model or Streamlit) and
returns a ``plotly.graph_objects.Figure``, so the charts are unit-tested without a browser
(tests/test_figures.py). Conventions that the tests rely on:

- a threshold is drawn as a vertical line shape (``fig.layout.shapes``) at its x value, except in
  violin plots, where scores are on the y axis and the line is horizontal;
- curves that need the attacker's trigger (ASR) are dashed, red, and say "test trigger" in their
  name, so they stand apart from the trigger-free aids;
- clickable charts carry the threshold of every point in ``customdata``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

ACC_COLOR = "#1f77b4"
ASR_COLOR = "#d62728"
AID_COLOR = "#2ca02c"
THRESHOLD_COLOR = "#444444"
ASR_NAME = "ASR (uses the test trigger)"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
           "#d62728")


# Below the plot: above it, a legend runs into the title once a chart is half a page wide.
LEGEND_BELOW = dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0.0)


# The title sits just above the plot area, in a top margin tall enough that Plotly's toolbar (at the
# very top right) and the title never share a line, at 1400 px and at 1000 px; titles are short
# enough for half a 1000 px page.
TOP = 84


def _title(text: str) -> dict:
    return dict(text=text, x=0.02, xref="container", xanchor="left", y=1, yref="paper", yanchor="bottom",
                pad=dict(b=12))


def _grid_title(text: str, height: int) -> dict:
    """A title for a grid of panels with column titles (which sit where :func:`_title` would put
    it): at the top of the figure, just below the toolbar, in the figure's own pixels."""
    return dict(text=text, x=0.02, xref="container", xanchor="left", y=1 - 40 / height, yref="container",
                yanchor="top")


def _base(title: str, x_title: str, y_title: str, height: int = 360) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=_title(title), height=height, margin=dict(l=50, r=20, t=TOP, b=90), legend=LEGEND_BELOW)
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title)
    return fig


def _vline(fig: go.Figure, x: float, text: str, color: str = THRESHOLD_COLOR, dash: str = "dash", **kw) -> None:
    fig.add_vline(x=float(x), line_dash=dash, line_color=color, annotation_text=text,
                  annotation_position="top right", **kw)


def _finite(values) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    return a[np.isfinite(a)]


def _has_values(values) -> bool:
    return _finite(values).size > 0


# ---------------------------------------------------------------- live view


def _metric_label(stage: str, name: str) -> str:
    """"anp", "natural_loss" -> "ANP natural loss" (a legend, not a config key)."""
    stage = stage.upper() if stage in ("anp", "rnp", "clp") else stage.capitalize()
    return f"{stage} {name.replace('_', ' ')}".strip()


def loss_curve(steps: Sequence[Mapping]) -> go.Figure:
    """Losses over training steps, one line per loss-like metric (``*loss*``) and stage.

    ``steps``: step events ``{"stage", "step", "metrics": {...}}`` as read from events.jsonl."""
    fig = _base("Loss", "step", "loss")
    series: dict[str, tuple[list, list]] = {}
    for ev in steps:
        for name, value in (ev.get("metrics") or {}).items():
            if "loss" in name and isinstance(value, (int, float)):
                xs, ys = series.setdefault(_metric_label(ev.get("stage", ""), name), ([], []))
                xs.append(ev["step"])
                ys.append(value)
    for i, (name, (xs, ys)) in enumerate(series.items()):
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name, line=dict(color=PALETTE[i % len(PALETTE)])))
    return fig


def snapshot_histogram(snapshots: Mapping[str, Sequence[float]], threshold: float | None = None,
                       score_label: str = "mask value", bins: int = 40) -> go.Figure:
    """Overlaid histograms of all neurons' scores at a few snapshots (e.g. first vs latest), to
    watch the distribution move while the defense runs."""
    fig = _base("Score distribution over the run", score_label, "neurons")
    values = [_finite(v) for v in snapshots.values()]
    lo = min((v.min() for v in values if v.size), default=0.0)
    hi = max((v.max() for v in values if v.size), default=1.0)
    size = (hi - lo) / bins if hi > lo else 1.0 / bins
    for i, (name, v) in enumerate(zip(snapshots, values)):
        fig.add_trace(go.Histogram(x=v, name=name, opacity=0.6, marker_color=PALETTE[i % len(PALETTE)],
                                   xbins=dict(start=lo, end=hi + size, size=size)))
    # log counts: the few neurons under the cut are the point, and a linear axis peaking at 200
    # hid 10 of them
    fig.update_layout(barmode="overlay")
    fig.update_yaxes(type="log", title_text="neurons (log scale)")
    if threshold is not None:
        _vline(fig, threshold, f"cut {threshold:g}")
    return fig


def probe_figure(probes: Sequence[Mapping]) -> go.Figure:
    """ACC and ASR of the model pruned at the default cut, probed at each snapshot."""
    fig = _base("Pruned at the own cut, during the run", "step", "rate")
    probes = [p for p in probes if "acc" in p]
    steps = [p["step"] for p in probes]
    fig.add_trace(go.Scatter(x=steps, y=[p["acc"] for p in probes], mode="lines+markers", name="ACC",
                             line=dict(color=ACC_COLOR)))
    asr = [p.get("asr") for p in probes]
    if any(a is not None and a == a for a in asr):
        fig.add_trace(go.Scatter(x=steps, y=asr, mode="lines+markers", name=ASR_NAME,
                                 line=dict(color=ASR_COLOR, dash="dash")))
    fig.update_yaxes(range=[-0.02, 1.02])
    return fig


# ---------------------------------------------------------------- score distributions


def score_distribution(scores: Mapping[str, Sequence[float]], kind: str = "histogram", threshold: float | None = None,
                       score_label: str = "mask value", bins: int = 40) -> go.Figure:
    """Scores per layer as overlaid histograms, violins or ECDFs (one trace per layer), with
    the cut drawn where it applies to every layer (masks: one threshold; constants: ``u``)."""
    if kind not in ("histogram", "violin", "ecdf"):
        raise ValueError(f"Unknown distribution kind {kind!r}; use histogram, violin or ecdf.")
    if kind == "violin":
        fig = _base("Scores per layer", "layer", score_label, height=420)
    else:
        fig = _base("Scores per layer", score_label, "neurons" if kind == "histogram" else "fraction of neurons ≤ x",
                    height=420)
    for i, (layer, v) in enumerate(scores.items()):
        v = _finite(v)
        color = PALETTE[i % len(PALETTE)]
        if kind == "histogram":
            fig.add_trace(go.Histogram(x=v, name=layer, opacity=0.55, nbinsx=bins, marker_color=color))
        elif kind == "violin":
            fig.add_trace(go.Violin(y=v, name=layer, box_visible=True, points="outliers", line_color=color))
        else:
            xs = np.sort(v)
            ys = np.arange(1, len(xs) + 1) / max(len(xs), 1)
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=layer, line=dict(shape="hv", color=color)))
    if kind == "histogram":
        fig.update_layout(barmode="overlay")
    if threshold is not None:
        if kind == "violin":
            fig.add_hline(y=float(threshold), line_dash="dash", line_color=THRESHOLD_COLOR,
                          annotation_text=f"cut {threshold:g}")
        else:
            _vline(fig, threshold, f"cut {threshold:g}")
    return fig


def density_figure(x: Sequence[float], y: Sequence[float], cut: float | None, rule: str = "",
                   constants: Sequence[float] | None = None, layer: str = "") -> go.Figure:
    """A kernel density of one layer's Hölder constants with the threshold drawn on it; the
    constants themselves as a rug below the axis."""
    fig = _base(f"Hölder-constant density{f' of {layer}' if layer else ''}", "Hölder constant", "density")
    fig.add_trace(go.Scatter(x=list(x), y=list(y), mode="lines", name="density", fill="tozeroy",
                             line=dict(color=ACC_COLOR)))
    if constants is not None and len(constants):
        c = _finite(constants)
        fig.add_trace(go.Scatter(x=c, y=np.zeros_like(c), mode="markers", name="neurons",
                                 marker=dict(symbol="line-ns-open", size=12, color="#555")))
    if cut is not None:
        _vline(fig, cut, f"cut {cut:.3g}" + (f" ({rule})" if rule else ""), color=ASR_COLOR)
    return fig


def neuron_noise_figure(points: Sequence[Mapping], label: int | None = None) -> go.Figure:
    """Error rate under ANP's neuron noise against its bound, and the share of the errors that go
    to ``label`` (by default the label receiving most of them), against the even share."""
    fig = _base("Neuron noise: errors, and where they go", "noise bound eps", "fraction")
    eps = [p["eps"] for p in points]
    fig.add_trace(go.Scatter(x=eps, y=[p["error"] for p in points], mode="lines+markers", name="error rate",
                             line=dict(color=ACC_COLOR)))
    totals = np.sum([p["errors_to"] for p in points if p["eps"] > 0] or [[0]], axis=0)
    if label is None and totals.sum() > 0:
        label = int(np.argmax(totals))
    if label is not None:
        share = [p["errors_to"][label] / sum(p["errors_to"]) if sum(p["errors_to"]) else None for p in points]
        fig.add_trace(go.Scatter(x=eps, y=share, mode="lines+markers", name=f"share of errors to label {label}",
                                 line=dict(color=ASR_COLOR)))
    fig.add_trace(go.Scatter(x=eps, y=[p["even_share"] for p in points], mode="lines", name="even share",
                             line=dict(color="#888", dash="dot")))
    fig.update_yaxes(range=[0, 1.02])
    return fig


# ---------------------------------------------------------------- sweeps


def sweep_figure(rows: Sequence[Mapping], selected: float | None = None, x_title: str = "threshold",
                 show_count: bool = True) -> go.Figure:
    """ACC and ASR of the pruned model at every precomputed threshold, and the number of neurons
    pruned on a second axis; the chosen threshold as a vertical line. Points carry their
    threshold in ``customdata`` so a click can select it."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.update_layout(title=_title("Sweep over the threshold"), height=430,
                      margin=dict(l=50, r=50, t=TOP, b=90), legend=LEGEND_BELOW)
    t = [r["threshold"] for r in rows]
    fig.add_trace(go.Scatter(x=t, y=[r["acc"] for r in rows], customdata=t, mode="lines+markers", name="ACC",
                             line=dict(color=ACC_COLOR)), secondary_y=False)
    asr = [r.get("asr") for r in rows]
    if _has_values([a if a is not None else np.nan for a in asr]):
        fig.add_trace(go.Scatter(x=t, y=asr, customdata=t, mode="lines+markers", name=ASR_NAME,
                                 line=dict(color=ASR_COLOR, dash="dash")), secondary_y=False)
    if show_count:
        fig.add_trace(go.Scatter(x=t, y=[r["n_pruned"] for r in rows], customdata=t, mode="lines",
                                 name="neurons pruned", line=dict(color="#999", width=1)), secondary_y=True)
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text="rate", range=[-0.02, 1.02], secondary_y=False)
    # The count axis spans 0..max with the rate axis's padding, so "0 pruned" sits on "rate 0";
    # left to itself it drew ticks such as -6.7 and 202.7.
    top = max([r["n_pruned"] for r in rows] + [1])
    fig.update_yaxes(title_text="neurons pruned", secondary_y=True, showgrid=False, range=[-0.02 * top, 1.02 * top],
                     tickmode="auto", tickformat="d", rangemode="normal")
    if selected is not None:
        _vline(fig, selected, f"{selected:g}")
    return fig


ASR_FLOOR = 0.001  # ASR 0 on the tradeoff chart's log axis: drawn at 0.1%


def tradeoff_figure(rows: Sequence[Mapping], selected: float | None = None, acc_window: float = 0.25) -> go.Figure:
    """ACC against ASR, one point per threshold (labelled with it); the chosen point ringed.
    This whole chart needs the test trigger: a defender without it cannot draw it. A row may name
    its cut for a click (``key``, e.g. ``n16`` below the threshold grid), a person (``label``)
    and the comparison with ``selected`` (``cut``); plain sweep rows use their threshold.

    ASR on a log axis and ACC zoomed to the best ``acc_window``: on linear axes every good cut
    (ASR 0-3%, ACC within a point or two) sat in one 10 px corner, and a click there picked a
    neighbour. Points below the window are left out of the view (zoom out to see them)."""
    t = [r.get("key", r["threshold"]) for r in rows]
    names = [r.get("label", f"threshold {r['threshold']:g}") for r in rows]
    asr = [r["asr"] for r in rows]
    acc = [r["acc"] for r in rows]
    top = max((a for a in acc if a is not None), default=1.0)
    hidden = sum(1 for a in acc if a is not None and a < top - acc_window)
    fig = _base("ACC vs ASR (test trigger)", "ASR (test trigger), log scale", "ACC", height=400)
    if hidden:  # inside the plot: in the title it was cut off at half width
        fig.add_annotation(text=f"{hidden} cut{'s' * (hidden != 1)} below ACC {100 * (top - acc_window):.0f}% not shown",
                           xref="paper", yref="paper", x=1, y=0, xanchor="right", yanchor="bottom", showarrow=False,
                           font=dict(size=11, color="gray"))
    shown = [max(a, ASR_FLOOR) if a is not None else None for a in asr]
    fig.add_trace(go.Scatter(x=shown, y=acc, customdata=t,
                             mode="lines+markers", name="thresholds",
                             hovertext=[f"{v}<br>ASR {100 * a:.1f}%<br>ACC {100 * c:.1f}%"
                                        if a is not None and c is not None else v for v, a, c in zip(names, asr, acc)],
                             hoverinfo="text", line=dict(color=ASR_COLOR, dash="dash")))
    def is_selected(r) -> bool:
        cut = r.get("cut", r["threshold"])
        if isinstance(cut, (int, float)) and isinstance(selected, (int, float)):
            return bool(np.isclose(cut, selected))
        return cut == selected

    chosen = [i for i, r in enumerate(rows) if selected is not None and is_selected(r)]
    if chosen:
        i = chosen[0]
        fig.add_trace(go.Scatter(x=[shown[i]], y=[acc[i]], customdata=[t[i]], mode="markers",
                                 name=f"chosen ({names[i]})",
                                 marker=dict(size=16, color="rgba(0,0,0,0)", line=dict(width=3, color="black"))))
    # four ticks a decade apart (more overlapped at half width); 0 is drawn at 0.1%
    fig.update_xaxes(type="log", range=[np.log10(ASR_FLOOR) - 0.1, 0.05], tickvals=[ASR_FLOOR, 0.01, 0.1, 1.0],
                     ticktext=["≤0.1%", "1%", "10%", "100%"])
    fig.update_yaxes(range=[top - acc_window - 0.01, top + 0.01], tickformat=".0%")
    return fig


def acc_budget_figure(rows: Sequence[Mapping], baseline_acc: float, budget: float, chosen: float | None = None,
                      x_title: str = "threshold") -> go.Figure:
    """A trigger-free aid: ACC at each threshold, the floor ``baseline - budget`` as a horizontal
    line, and the largest cut that stays above it as a vertical line."""
    fig = _base("ACC-drop budget (no trigger)", x_title, "ACC")
    t = [r["threshold"] for r in rows]
    fig.add_trace(go.Scatter(x=t, y=[r["acc"] for r in rows], customdata=t, mode="lines+markers", name="ACC",
                             line=dict(color=AID_COLOR)))
    floor = baseline_acc - budget
    # the floor's label at the bottom left, the cut's at the top right: they never meet
    fig.add_hline(y=floor, line_dash="dot", line_color=AID_COLOR, annotation_text=f"floor {floor:.3f}",
                  annotation_position="bottom left")
    if chosen is not None:
        _vline(fig, chosen, f"largest cut {chosen:g}", color=AID_COLOR)
    return fig


def sorted_scores_figure(values: Sequence[float], gap_index: int | None = None, knee_index: int | None = None,
                         score_label: str = "score") -> go.Figure:
    """A trigger-free aid: every neuron's score sorted from most to least suspicious, with the
    largest gap and the knee marked (prune the neurons left of a mark)."""
    fig = _base("Sorted scores, most suspicious first", "rank", score_label)
    v = np.asarray(values, dtype=float)
    fig.add_trace(go.Scatter(x=np.arange(len(v)), y=v, mode="lines+markers", name="scores",
                             marker=dict(size=4), line=dict(color=AID_COLOR)))
    if gap_index is not None:
        _vline(fig, gap_index + 0.5, f"largest gap: {gap_index + 1}", color="#9467bd")
    if knee_index is not None:
        _vline(fig, knee_index + 0.5, f"knee: {knee_index + 1}", color="#8c564b", dash="dot",
               annotation_y=0.85)
    return fig


def compare_sweeps(runs: Sequence[Mapping]) -> go.Figure:
    """Sweeps by number of neurons pruned, overlaid for several runs: ACC on the left panel and
    ASR (test trigger) on the right; one colour per run. ``runs``: ``{"label", "rows"}``."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("ACC", ASR_NAME), shared_xaxes=False)
    fig.update_layout(title="Sweeps by number of neurons pruned", height=420, margin=dict(l=50, r=20, t=TOP, b=45))
    for i, run in enumerate(runs):
        color = PALETTE[i % len(PALETTE)]
        n = [r["n_pruned"] for r in run["rows"]]
        fig.add_trace(go.Scatter(x=n, y=[r["acc"] for r in run["rows"]], mode="lines+markers", name=run["label"],
                                 legendgroup=run["label"], line=dict(color=color)), row=1, col=1)
        fig.add_trace(go.Scatter(x=n, y=[r["asr"] for r in run["rows"]], mode="lines+markers", name=run["label"],
                                 legendgroup=run["label"], showlegend=False, line=dict(color=color, dash="dash")),
                      row=1, col=2)
    for col in (1, 2):
        fig.update_xaxes(title_text="neurons pruned", row=1, col=col)
        fig.update_yaxes(title_text="rate", range=[-0.02, 1.02], row=1, col=col)
    return fig


# ---------------------------------------------------------------- images


def _image_trace(img: np.ndarray, colorscale: str = "gray", zmin: float = 0.0, zmax: float = 1.0):
    """One image as a trace: C x H x W (or H x W) floats in [0, 1]; colour as go.Image, one
    channel as a heatmap (so a mask can use a colour scale)."""
    img = np.asarray(img, dtype=float)
    if img.ndim == 3 and img.shape[0] == 3:
        return go.Image(z=np.clip(img.transpose(1, 2, 0) * 255, 0, 255).astype(np.uint8), hoverinfo="skip")
    if img.ndim == 3:
        img = img.mean(0)
    return go.Heatmap(z=img, colorscale=colorscale, zmin=zmin, zmax=zmax, showscale=False, hoverinfo="skip")


def _image_axes(fig: go.Figure, rows: int, cols: int) -> None:
    fig.update_xaxes(visible=False, showticklabels=False)
    fig.update_yaxes(visible=False, showticklabels=False, autorange="reversed")
    for i in range(1, rows * cols + 1):  # square pixels in every panel
        suffix = "" if i == 1 else str(i)
        fig.layout[f"yaxis{suffix}"].update(scaleanchor=f"x{suffix}", scaleratio=1)


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, ncols: int = 4,
               title: str = "", colorscale: str = "gray") -> go.Figure:
    """Images (each C x H x W or H x W, floats in [0, 1]) in a grid, one panel each."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    titles = list(titles or [""] * n)
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=titles + [""] * (nrows * ncols - n),
                        horizontal_spacing=0.02, vertical_spacing=0.08)
    for i, img in enumerate(images):
        fig.add_trace(_image_trace(img, colorscale), row=i // ncols + 1, col=i % ncols + 1)
    _image_axes(fig, nrows, ncols)
    height = 40 + 170 * nrows + (TOP if title else 0)
    fig.update_layout(title=_grid_title(title, height) if title else None, height=height,
                      margin=dict(l=10, r=10, t=TOP + 20 if title else 30, b=10))
    return fig


def trigger_grid(labels: Sequence[int], masks: np.ndarray, patterns: np.ndarray, flagged: Sequence[int] = (),
                 true_mask: np.ndarray | None = None, true_pattern: np.ndarray | None = None,
                 attacked: bool = True) -> go.Figure:
    """Recovered triggers: columns are labels (plus the true trigger when known), rows are the
    mask M, the pattern P and M x P. Flagged labels are starred in the column title.
    ``attacked=False``: a clean model, whose known trigger is the test trigger ASR is measured with
    (no attacker planted it), so its column is "test", not "true"."""
    masks = np.asarray(masks, dtype=float)
    patterns = np.asarray(patterns, dtype=float)
    # Short column titles (the label alone): eleven columns at 1000 px leave about 80 px each.
    cols = [(f"{'★' if t in flagged else ''}{t}", masks[i], patterns[i]) for i, t in enumerate(labels)]
    if true_mask is not None and true_pattern is not None:
        cols.append(("true" if attacked else "test", np.asarray(true_mask, dtype=float), np.asarray(true_pattern, dtype=float)))
    ncols = len(cols)
    row_names = ("mask M", "pattern P", "M × P")
    fig = make_subplots(rows=3, cols=ncols, column_titles=[c[0] for c in cols], row_titles=list(row_names),
                        horizontal_spacing=0.01, vertical_spacing=0.03)
    for j, (_, m, p) in enumerate(cols, 1):
        m2 = m.mean(0) if m.ndim == 3 else m
        fig.add_trace(_image_trace(m2, "Viridis"), row=1, col=j)
        fig.add_trace(_image_trace(p), row=2, col=j)
        fig.add_trace(_image_trace(m2[None] * p if p.ndim == 3 else m2 * p), row=3, col=j)
    _image_axes(fig, 3, ncols)
    height = 140 + 3 * max(90, 1100 // max(ncols, 1))
    known = ("; true: the attacker's trigger" if attacked else
             "; test: the trigger ASR is measured with, which this clean model was not trained on")
    fig.update_layout(title=_grid_title(f"Recovered triggers per label (★ flagged{known if true_mask is not None else ''})",
                                        height), height=height, margin=dict(l=10, r=40, t=TOP + 20, b=10))
    return fig


def anomaly_bar(labels: Sequence[int], anomaly: Sequence[float], flagged: Sequence[int] = (),
                threshold: float = 2.0) -> go.Figure:
    """Neural Cleanse's anomaly index per label; the threshold as a horizontal line and flagged
    labels in red (a label above the line has a suspiciously small trigger)."""
    fig = _base("Anomaly index per label", "label", "anomaly index")
    colors = [ASR_COLOR if t in flagged else "#7f7f7f" for t in labels]
    fig.add_trace(go.Bar(x=[str(t) for t in labels], y=list(anomaly), marker_color=colors, name="anomaly index"))
    fig.add_hline(y=threshold, line_dash="dash", line_color=THRESHOLD_COLOR, annotation_text=f"threshold {threshold:g}")
    fig.update_xaxes(type="category")
    return fig


def attribution_figure(images: np.ndarray, before: np.ndarray, after: np.ndarray,
                       titles: Sequence[str] | None = None, method: str = "Saliency") -> go.Figure:
    """Inputs (row 1) and their attribution maps before (row 2) and after pruning (row 3);
    ``images`` N x C x H x W in [0, 1], maps N x H x W scaled to [0, 1]."""
    n = len(images)
    fig = make_subplots(rows=3, cols=n, column_titles=list(titles or [""] * n),
                        row_titles=["input", f"{method}, before", f"{method}, after"],
                        horizontal_spacing=0.01, vertical_spacing=0.03)
    for j in range(n):
        fig.add_trace(_image_trace(images[j]), row=1, col=j + 1)
        fig.add_trace(_image_trace(before[j], "Hot"), row=2, col=j + 1)
        fig.add_trace(_image_trace(after[j], "Hot"), row=3, col=j + 1)
    _image_axes(fig, 3, n)
    height = 140 + 3 * max(90, 1100 // max(n, 1))
    fig.update_layout(title=_grid_title(f"{method} attributions", height), height=height,
                      margin=dict(l=10, r=40, t=TOP + 20, b=10))
    return fig
