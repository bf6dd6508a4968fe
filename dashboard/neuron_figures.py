"""The neuron inspector's charts (the Neuron page), pure builders like those of ``figures``, whose
conventions and helpers they share: plain data in, a Plotly figure out, tested in
tests/test_figures.py."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .figures import ACC_COLOR, ASR_COLOR, TOP, _base, _finite, _grid_title, _image_axes, _image_trace, _title


def network_map(units: Mapping[str, Sequence[float]], pruned: Mapping[str, Sequence[bool]], suspicious: str = "low",
                chosen: tuple[str, int] | None = None) -> go.Figure:
    """Every neuron of the network: one row per neuron layer in execution order (top to bottom),
    one cell per neuron coloured by its score on the sweep's scale, the suspicious end red; cells
    the current cut prunes are outlined in black, the chosen neuron ringed. Each cell carries
    ``[layer, index]`` in ``customdata`` so a click picks it. A scatter of square markers, not a
    heatmap, because a click selects scatter points (WebGL: 4,800 neurons draw at once)."""
    layers = list(units)
    xs, ys, zs, data, line, pruned_cells = [], [], [], [], [], []
    for name in layers:
        u = np.asarray(units[name], dtype=float)
        p = np.asarray(pruned.get(name, np.zeros(len(u), bool)), dtype=bool)
        xs.extend(range(len(u)))
        ys.extend([name] * len(u))
        zs.extend(u.tolist())
        data.extend([name, i] for i in range(len(u)))
        line.extend(np.where(p, 1.0, 0.0).tolist())
        pruned_cells.extend(p.tolist())
    widest = max((len(units[n]) for n in layers), default=1)
    size = float(np.clip(900 / max(widest, 1), 3, 14))
    # pruned cells drawn larger, so a few among 512 in a row still show their colour and edge
    sizes = np.where(np.asarray(pruned_cells, dtype=bool), max(2 * size, 8.0), size).tolist()
    fig = go.Figure(go.Scattergl(
        x=xs, y=ys, mode="markers", customdata=data, name="neurons",
        marker=dict(symbol="square", size=sizes, color=zs, colorscale="RdBu" if suspicious == "low" else "RdBu_r",
                    line=dict(width=line, color="black"),
                    colorbar=dict(title="score" if suspicious == "low" else "u", thickness=12)),
        hovertemplate="%{y}[%{x}]<br>score %{marker.color:.4g}<extra></extra>"))
    if chosen is not None and chosen[0] in units:
        fig.add_trace(go.Scatter(x=[chosen[1]], y=[chosen[0]], mode="markers", name="chosen", hoverinfo="skip",
                                 marker=dict(symbol="square-open", size=size + 8, color="#111111", line=dict(width=3))))
    fig.update_layout(title=_title("Network map: every neuron, by layer (click one; black edge: pruned)"),
                      height=TOP + 60 + 22 * len(layers), margin=dict(l=110, r=20, t=TOP, b=40), showlegend=False)
    fig.update_yaxes(categoryorder="array", categoryarray=layers, autorange="reversed", title_text="")
    fig.update_xaxes(title_text="neuron index", range=[-1, widest])
    return fig


def activation_histogram(clean: Sequence[float], triggered: Sequence[float] | None = None, gap: float | None = None,
                         bins: int = 40, recovered: Sequence[float] | None = None) -> go.Figure:
    """A neuron's activation over the test images, clean and (overlaid) with the trigger, or with
    the trigger Neural Cleanse recovered when the true one is unknown."""
    # short: half a 1000 px page; the caption under the chart says it in words
    title = "Activation" + (f" ({gap:+.1f} std-devs)" if gap is not None and gap == gap else "")
    fig = _base(title, "activation", "images")
    series = [("clean", clean, ACC_COLOR)] + ([("with the trigger", triggered, ASR_COLOR)] if triggered is not None
                                              else []) + \
        ([("with the recovered trigger", recovered, "#9467bd")] if recovered is not None else [])
    values = [_finite(v) for _, v, _ in series]
    lo = min(v.min() for v in values if v.size) if any(v.size for v in values) else 0.0
    hi = max(v.max() for v in values if v.size) if any(v.size for v in values) else 1.0
    size = (hi - lo) / bins if hi > lo else 1.0
    for (name, _, color), v in zip(series, values):
        fig.add_trace(go.Histogram(x=v, name=name, opacity=0.6, marker_color=color,
                                   xbins=dict(start=lo, end=hi + size, size=size)))
    fig.update_layout(barmode="overlay")
    return fig


def mask_history(steps: Sequence[int], values: Sequence[float], medians: Sequence[float]) -> go.Figure:
    """A neuron's mask over the run's snapshots, beside its layer's median."""
    fig = _base("Its mask during the run", "step", "mask value")
    fig.add_trace(go.Scatter(x=list(steps), y=list(values), mode="lines+markers", name="this neuron",
                             line=dict(color=ASR_COLOR)))
    fig.add_trace(go.Scatter(x=list(steps), y=list(medians), mode="lines", name="layer median",
                             line=dict(color="#7f7f7f", dash="dot")))
    fig.update_yaxes(range=[-0.02, 1.02])
    return fig


def neuron_maps_figure(images: np.ndarray, feature: np.ndarray | None, attribution: np.ndarray,
                       titles: Sequence[str], method: str) -> go.Figure:
    """Columns: a clean image and its triggered version. Rows: the input, the neuron's feature map
    (a channel neuron only) and its attribution; each row on one scale for both columns, so clean
    and triggered compare by strength."""
    rows = [("input", None)] + ([("feature map", feature)] if feature is not None else []) + [(method, attribution)]
    n = len(images)
    fig = make_subplots(rows=len(rows), cols=n, column_titles=list(titles), row_titles=[r[0] for r in rows],
                        horizontal_spacing=0.02, vertical_spacing=0.04)
    for i, (_, maps) in enumerate(rows, 1):
        if maps is not None:
            maps = np.asarray(maps, dtype=float)
            lo, hi = float(maps.min()), float(maps.max())
            maps = (maps - lo) / (hi - lo) if hi > lo else np.zeros_like(maps)
        for j in range(n):
            fig.add_trace(_image_trace(images[j]) if maps is None else _image_trace(maps[j], "Hot"), row=i, col=j + 1)
    _image_axes(fig, len(rows), n)
    height = 120 + 220 * len(rows)
    fig.update_layout(title=_grid_title("Where it fires, and which pixels drive it", height), height=height,
                      margin=dict(l=10, r=40, t=TOP + 20, b=10))
    return fig
