"""Unit tests of every figure builder in dashboard/figures.py and dashboard/neuron_figures.py: plain
data in, plotly figure out."""
import inspect

import numpy as np
import plotly.graph_objects as go
import pytest

from dashboard import figures, neuron_figures

ROWS = [
    {"threshold": 0.0, "n_pruned": 0, "acc": 0.99, "asr": 1.0},
    {"threshold": 0.2, "n_pruned": 3, "acc": 0.98, "asr": 0.40},
    {"threshold": 0.4, "n_pruned": 9, "acc": 0.95, "asr": 0.02},
    {"threshold": 0.6, "n_pruned": 30, "acc": 0.60, "asr": 0.0},
]


def vlines(fig):
    return [s for s in fig.layout.shapes if s.x0 == s.x1 and s.type == "line"]


def hlines(fig):
    return [s for s in fig.layout.shapes if s.y0 == s.y1 and s.type == "line"]


def names(fig):
    return [t.name for t in fig.data]


def test_every_builder_is_tested():
    """A new builder must come with a test here (by name)."""
    src = open(__file__).read()
    for module, prefix in ((figures, "figures."), (neuron_figures, "neuron_figures.")):
        builders = {n for n, f in inspect.getmembers(module, inspect.isfunction)
                    if not n.startswith("_") and f.__module__ == module.__name__}
        assert {b for b in builders if f"{prefix}{b}(" not in src} == set(), module.__name__


def test_loss_curve_one_line_per_loss_metric():
    steps = [{"stage": "anp", "step": i, "metrics": {"loss": 1.0 / i, "natural_loss": 0.5 / i, "natural_acc": 0.9}}
             for i in range(1, 6)]
    fig = figures.loss_curve(steps)
    assert len(fig.data) == 2  # the two losses; accuracy is not a loss
    assert names(fig) == ["ANP loss", "ANP natural loss"]  # legends in words, not config keys
    assert list(fig.data[0].x) == [1, 2, 3, 4, 5]
    assert fig.data[0].y[1] == pytest.approx(0.5)
    assert fig.layout.xaxis.title.text == "step" and fig.layout.yaxis.title.text == "loss"


def test_loss_curve_empty_is_a_figure():
    assert isinstance(figures.loss_curve([]), go.Figure)
    assert len(figures.loss_curve([]).data) == 0


def test_snapshot_histogram_overlays_and_draws_cut():
    fig = figures.snapshot_histogram({"step 10": [1, 1, 0.9], "step 30": [0.1, 0.95, 1.0]}, threshold=0.2)
    assert len(fig.data) == 2 and all(isinstance(t, go.Histogram) for t in fig.data)
    assert names(fig) == ["step 10", "step 30"]
    assert fig.layout.barmode == "overlay"
    assert [s.x0 for s in vlines(fig)] == [0.2]
    assert fig.layout.xaxis.title.text == "mask value" and fig.layout.yaxis.type == "log"
    assert list(fig.data[1].x) == [0.1, 0.95, 1.0]
    # the same bins for every snapshot so they compare
    assert fig.data[0].xbins.size == fig.data[1].xbins.size


def test_snapshot_histogram_without_threshold_has_no_line():
    assert vlines(figures.snapshot_histogram({"a": [0.5]})) == []


def test_probe_figure_marks_asr_as_trigger_based():
    probes = [{"step": 10, "acc": 0.99, "asr": 1.0, "n_pruned": 0}, {"step": 20, "acc": 0.97, "asr": 0.1, "n_pruned": 4}]
    fig = figures.probe_figure(probes)
    assert len(fig.data) == 2
    assert fig.data[1].name == figures.ASR_NAME and fig.data[1].line.dash == "dash"
    assert list(fig.data[0].y) == [0.99, 0.97]
    # an unknown trigger: no ASR line at all
    unknown = [{"step": 10, "acc": 0.99, "asr": float("nan")}]
    assert len(figures.probe_figure(unknown).data) == 1
    assert len(figures.probe_figure([{"step": 5}]).data) == 1  # probes without numbers (no rule yet) are skipped


@pytest.mark.parametrize("kind", ["histogram", "violin", "ecdf"])
def test_score_distribution_one_trace_per_layer(kind):
    scores = {"features.1": np.linspace(0, 1, 32), "classifier.2": np.array([0.1, 0.9, np.nan])}
    fig = figures.score_distribution(scores, kind, threshold=0.3, score_label="mask value (low = suspicious)")
    assert len(fig.data) == 2
    assert names(fig) == ["features.1", "classifier.2"]
    if kind == "violin":
        assert [s.y0 for s in hlines(fig)] == [0.3]
        assert fig.layout.yaxis.title.text == "mask value (low = suspicious)"
        assert fig.layout.xaxis.title.text == "layer"
    else:
        assert [s.x0 for s in vlines(fig)] == [0.3]
        assert fig.layout.xaxis.title.text == "mask value (low = suspicious)"
    if kind == "ecdf":
        assert fig.data[1].y[-1] == pytest.approx(1.0)  # NaNs dropped, the ECDF reaches 1
        assert list(fig.data[1].x) == [0.1, 0.9]


def test_score_distribution_rejects_unknown_kind():
    with pytest.raises(ValueError, match="histogram, violin or ecdf"):
        figures.score_distribution({"a": [1.0]}, "pie")


def test_density_figure_draws_cut_and_rug():
    x = np.linspace(0, 5, 50)
    y = np.exp(-x)
    fig = figures.density_figure(x, y, cut=2.5, rule="first minimum", constants=[0.1, 0.2, 4.0], layer="head.1")
    assert len(fig.data) == 2  # density and the constants' rug
    assert [s.x0 for s in vlines(fig)] == [2.5]
    assert "first minimum" in fig.layout.annotations[0].text
    assert fig.layout.xaxis.title.text == "Hölder constant" and fig.layout.yaxis.title.text == "density"
    assert "head.1" in fig.layout.title.text
    assert len(figures.density_figure(x, y, cut=None).data) == 1


def test_sweep_figure_traces_axes_and_selected_line():
    fig = figures.sweep_figure(ROWS, selected=0.4, x_title="mask threshold")
    assert names(fig) == ["ACC", figures.ASR_NAME, "neurons pruned"]
    assert list(fig.data[0].y) == [r["acc"] for r in ROWS]
    assert list(fig.data[0].customdata) == [r["threshold"] for r in ROWS]  # clicks give the threshold
    assert fig.data[1].line.dash == "dash" and fig.data[1].line.color == figures.ASR_COLOR
    assert fig.data[2].yaxis == "y2"
    assert [s.x0 for s in vlines(fig)] == [0.4]
    assert fig.layout.xaxis.title.text == "mask threshold"
    assert fig.layout.yaxis2.title.text == "neurons pruned"
    # "0 pruned" sits on "rate 0" and the most pruned on "rate 1": the two axes share their padding
    (lo, hi), (lo2, hi2) = fig.layout.yaxis.range, fig.layout.yaxis2.range
    top = max(r["n_pruned"] for r in ROWS)
    assert (0 - lo) / (hi - lo) == pytest.approx((0 - lo2) / (hi2 - lo2))
    assert (1 - lo) / (hi - lo) == pytest.approx((top - lo2) / (hi2 - lo2))


def test_sweep_figure_without_trigger_has_no_asr():
    rows = [dict(r, asr=float("nan")) for r in ROWS]
    fig = figures.sweep_figure(rows, show_count=False)
    assert names(fig) == ["ACC"]
    assert vlines(fig) == []


def test_tradeoff_figure_rings_the_chosen_point():
    fig = figures.tradeoff_figure(ROWS, selected=0.2)
    assert len(fig.data) == 2
    # ASR on a log axis, 0 drawn at 0.1%; the threshold is what a click reads back
    assert list(fig.data[0].x) == [1.0, 0.40, 0.02, 0.001] and list(fig.data[0].y) == [r["acc"] for r in ROWS]
    assert list(fig.data[0].customdata) == [r["threshold"] for r in ROWS]
    assert (fig.data[1].x[0], fig.data[1].y[0]) == (0.40, 0.98)
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis.title.text.startswith("ASR (test trigger")
    assert list(fig.layout.xaxis.ticktext) == ["≤0.1%", "1%", "10%", "100%"]
    # zoomed to ACC within 25 points of the best: the 60% cut is off the chart, and the title says so
    assert fig.layout.yaxis.range[0] == pytest.approx(0.73) and fig.layout.annotations[0].text == "1 cut below ACC 74% not shown"
    assert "test trigger" in fig.layout.title.text
    assert len(figures.tradeoff_figure(ROWS, selected=None).data) == 1


def test_acc_budget_figure_floor_and_cut():
    fig = figures.acc_budget_figure(ROWS, baseline_acc=0.99, budget=0.05, chosen=0.4)
    assert len(fig.data) == 1
    assert hlines(fig)[0].y0 == pytest.approx(0.94)
    assert [s.x0 for s in vlines(fig)] == [0.4]
    assert "no trigger" in fig.layout.title.text  # a trigger-free aid says so
    assert fig.layout.yaxis.title.text == "ACC"


def test_sorted_scores_figure_marks_gap_and_knee():
    values = [0.05, 0.1, 0.9, 0.92, 0.95, 0.97]
    fig = figures.sorted_scores_figure(values, gap_index=1, knee_index=2, score_label="mask value")
    assert len(fig.data) == 1 and list(fig.data[0].y) == values
    assert sorted(s.x0 for s in vlines(fig)) == [1.5, 2.5]  # between the neurons ranked 2 and 3, 3 and 4
    assert fig.layout.xaxis.title.text == "rank" and fig.layout.yaxis.title.text == "mask value"


def test_compare_sweeps_two_panels_per_run():
    runs = [{"label": "anp · ab12", "rows": ROWS}, {"label": "clp · cd34", "rows": ROWS[:2]}]
    fig = figures.compare_sweeps(runs)
    assert len(fig.data) == 4
    assert [t.xaxis for t in fig.data] == ["x", "x2", "x", "x2"]
    assert list(fig.data[1].y) == [r["asr"] for r in ROWS]
    assert fig.data[1].line.dash == "dash"
    assert fig.layout.xaxis.title.text == "neurons pruned" and fig.layout.xaxis2.title.text == "neurons pruned"
    assert figures.ASR_NAME in [a.text for a in fig.layout.annotations]


def test_image_grid_gray_and_colour():
    gray = np.random.default_rng(0).random((3, 1, 8, 8))
    fig = figures.image_grid(list(gray), ["a", "b", "c"], ncols=2, title="examples")
    assert len(fig.data) == 3 and all(isinstance(t, go.Heatmap) for t in fig.data)
    assert np.allclose(np.asarray(fig.data[0].z), gray[0, 0])
    assert [a.text for a in fig.layout.annotations][:3] == ["a", "b", "c"]
    colour = figures.image_grid([np.ones((3, 4, 4)) * 0.5], ["rgb"])
    assert isinstance(colour.data[0], go.Image)
    assert np.asarray(colour.data[0].z).shape == (4, 4, 3)
    assert np.asarray(colour.data[0].z)[0, 0, 0] == 127


def test_trigger_grid_three_rows_per_label_plus_truth():
    k, h = 3, 6
    masks = np.zeros((k, 1, h, h))
    masks[1, :, -2:, -2:] = 1
    patterns = np.ones((k, 1, h, h))
    fig = figures.trigger_grid([0, 1, 2], masks, patterns, flagged=[1], true_mask=masks[1], true_pattern=patterns[1])
    assert len(fig.data) == 3 * (k + 1)
    titles = [a.text for a in fig.layout.annotations]
    assert "★1" in titles and "0" in titles and "true" in titles  # short: eleven columns fit at 1000 px
    assert {"mask M", "pattern P", "M × P"} <= set(titles)
    # row 3 is M x P
    mp = np.asarray(fig.data[3 * 1 + 2].z)
    assert mp.sum() == pytest.approx(4.0)
    assert len(figures.trigger_grid([0, 1, 2], masks, patterns).data) == 9


def test_anomaly_bar_threshold_and_flagged_colour():
    fig = figures.anomaly_bar([0, 1, 2], [3.1, 0.2, -0.5], flagged=[0], threshold=2.0)
    assert len(fig.data) == 1
    assert list(fig.data[0].y) == [3.1, 0.2, -0.5]
    assert fig.data[0].marker.color[0] == figures.ASR_COLOR and fig.data[0].marker.color[1] != figures.ASR_COLOR
    assert hlines(fig)[0].y0 == 2.0
    assert fig.layout.xaxis.title.text == "label" and fig.layout.yaxis.title.text == "anomaly index"


def test_attribution_figure_rows():
    imgs = np.random.default_rng(1).random((2, 1, 5, 5))
    before = np.random.default_rng(2).random((2, 5, 5))
    after = np.zeros((2, 5, 5))
    fig = figures.attribution_figure(imgs, before, after, ["clean", "triggered"], method="Saliency")
    assert len(fig.data) == 6
    titles = [a.text for a in fig.layout.annotations]
    assert {"clean", "triggered", "input", "Saliency, before", "Saliency, after"} <= set(titles)
    assert np.allclose(np.asarray(fig.data[1].z), before[0])
    assert fig.data[1].colorscale != fig.data[0].colorscale  # a heat map over the attribution, gray for the input


def test_neuron_noise_figure_shares_of_the_label_with_most_errors():
    points = [{"eps": 0.0, "error": 0.01, "errors_to": [0, 1, 0], "even_share": 0.5},
              {"eps": 0.4, "error": 0.10, "errors_to": [0, 2, 8], "even_share": 0.5},
              {"eps": 0.6, "error": 0.20, "errors_to": [0, 0, 0], "even_share": 0.5}]
    fig = figures.neuron_noise_figure(points)
    assert names(fig) == ["error rate", "share of errors to label 2", "even share"]
    assert list(fig.data[1].y) == [0.0, 0.8, None]  # no errors: no share, not a zero
    assert list(fig.data[0].y) == [0.01, 0.10, 0.20]
    assert names(figures.neuron_noise_figure(points, label=1))[1] == "share of errors to label 1"


def test_network_map_of_a_full_width_resnet18():
    # the neuron layers of a full-width ResNet-18: 4,800 BN channels in 20 layers
    widths = [64] * 5 + [128] * 5 + [256] * 5 + [512] * 5
    rng = np.random.default_rng(0)
    units = {f"layer{i}.bn": rng.random(w) for i, w in enumerate(widths)}
    pruned = {k: v < 0.01 for k, v in units.items()}
    fig = neuron_figures.network_map(units, pruned, "low", chosen=("layer19.bn", 7))
    cells = fig.data[0]
    assert len(cells.x) == sum(widths) == 4800
    assert list(fig.layout.yaxis.categoryarray) == list(units)  # execution order, top to bottom
    outlined = int((np.asarray(cells.marker.line.width) > 0).sum())
    assert outlined == sum(int(p.sum()) for p in pruned.values())
    k = 64 * 5 + 3  # the fourth neuron of the first 128-wide layer
    assert list(cells.customdata[k]) == ["layer5.bn", 3] and cells.y[k] == "layer5.bn" and cells.x[k] == 3
    assert list(fig.data[1].x) == [7] and list(fig.data[1].y) == ["layer19.bn"]  # the chosen neuron, ringed


def test_activation_histogram_and_mask_history():
    fig = neuron_figures.activation_histogram([0.0, 0.1, 0.2], [2.0, 2.1], gap=12.3)
    assert [t.name for t in fig.data] == ["clean", "with the trigger"] and "+12.3" in fig.layout.title.text
    assert len(neuron_figures.activation_histogram([0.0, 1.0]).data) == 1  # no trigger: clean only
    fig = neuron_figures.mask_history([10, 20], [0.9, 0.1], [0.95, 0.9])
    assert list(fig.data[0].y) == [0.9, 0.1] and fig.data[1].name == "layer median"


def test_neuron_maps_figure_rows_per_kind():
    images = np.zeros((2, 1, 4, 4))
    fig = neuron_figures.neuron_maps_figure(images, np.ones((2, 4, 4)), np.ones((2, 4, 4)), ["clean", "with the trigger"],
                                     "NeuronGradient")
    assert len(fig.data) == 6  # input, feature map, attribution, for both images
    assert len(neuron_figures.neuron_maps_figure(images, None, np.ones((2, 4, 4)), ["a", "b"], "NeuronGradient").data) == 4
