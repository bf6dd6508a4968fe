"""Cuts below the threshold grid (issue 27 §2): when the lowest threshold already prunes neurons
that all tie (RNP's masks at exactly 0), Explore offers the count sweep's smaller cuts, and the
slider, metrics, URL, export, neuron inspector and cost warning all follow them.

The run folder is a real one for the cnn_badnets sample: its scores are made up with 37 masks at
exactly 0, and its count sweep is the engine's own, so the exported model can be checked against
the ACC/ASR the sweep recorded.
"""
from __future__ import annotations


import numpy as np
import pytest
import torch

from dashboard import cache, rundata
from dashboard.rundata import Count
from defenses.evaluation import evaluate, sweep
from defenses.neurons import selection_by_count
from defenses.runs.folder import save_tensors, write_json
from test_dashboard_app import CNN_LAYERS, app, make_run, metric, no_exception, open_tab, threshold_slider

RUN = "20260101-000000-rnp-cnn_badnets-tied"
TIED = 37


def tie_masks(d) -> dict[str, torch.Tensor]:
    """Rewrite a made-up run's scores so the 37 lowest masks are exactly 0, and its count sweep
    as the engine computes it on the real sample model and test split."""
    rng = np.random.default_rng(1)
    scores = {k: torch.tensor(rng.uniform(0.3, 1.0, n), dtype=torch.float32) for k, n in CNN_LAYERS.items()}
    flat = [(k, i) for k, n in CNN_LAYERS.items() for i in range(n)]
    for j in rng.choice(len(flat), TIED, replace=False):
        k, i = flat[j]
        scores[k][i] = 0.0
    save_tensors(d / "scores.safetensors", scores)
    run = rundata.load_finished(d)
    model = cache.run_model(run)
    from defenses.neurons import find_neurons

    nmap = find_neurons(model, tuple(run.result["input_shape"]))
    bundle, trigger = cache.run_inputs(run.run_id, str(d.resolve()))
    counts = sweep(model, nmap, scores, "low", bundle.test, trigger, by="count", values=[0, 16, 32, 48, 64])
    units = rundata.sweep_units({k: v.numpy() for k, v in scores.items()}, "low")
    rows = []
    for t in [round(0.05 * i, 4) for i in range(20)]:
        n = int(sum(rundata.selected(units, t, "low")[k].sum() for k in units))
        rows.append({"threshold": t, "n_pruned": n, "acc": 0.5, "asr": 0.01})
    write_json(d / "sweep.json", {"threshold": rows, "count": [r.to_dict() for r in counts]})
    return scores


@pytest.fixture
def tied_run(runs):
    d = make_run(runs, RUN, defense="rnp")
    scores = tie_masks(d)
    return d, scores


def test_the_slider_reaches_below_the_masks_tied_at_zero(tied_run):
    d, scores = tied_run
    run = rundata.load_finished(d)
    assert run.rows[0]["threshold"] == 0 and run.rows[0]["n_pruned"] == TIED
    assert run.cuts[:3] == [Count(0), Count(16), Count(32)]  # 48 and 64 prune more than the tie: not offered
    assert run.cuts[3:] == run.thresholds
    # a count cut prunes exactly the engine's count selection: tied neurons only, in layer order
    sel = rundata.cut_selection(run, Count(16))
    engine = selection_by_count(scores, 16, "low")
    assert all(np.array_equal(sel[k], engine[k].numpy()) for k in scores)
    assert sum(int(v.sum()) for v in sel.values()) == 16
    assert all(float(scores[k][i]) == 0.0 for k, v in sel.items() for i in np.flatnonzero(v))
    assert rundata.starting_threshold(run, from_url="n16") == Count(16)
    assert rundata.starting_threshold(run, from_url="n17") == rundata.default_threshold(run)  # not a point
    assert rundata.starting_threshold(run, from_url="nx") == rundata.default_threshold(run)
    assert rundata.parse_cut(rundata.cut_text(Count(16))) == Count(16)
    assert rundata.parse_cut(rundata.cut_text(0.35)) == 0.35


def test_the_export_at_a_count_is_the_model_the_count_sweep_measured(tied_run):
    d, _ = tied_run
    run = rundata.load_finished(d)
    m = rundata.manifest(run, Count(16))
    row = next(r for r in run.sweep["count"] if r["n_pruned"] == 16)
    assert m["threshold"] is None and m["count"] == 16 and m["n_pruned"] == 16
    assert m["after"] == {"acc": row["acc"], "asr": row["asr"]}
    bundle, trigger = cache.run_inputs(run.run_id, str(d.resolve()))
    got = evaluate(cache.pruned_model(run, Count(16)), bundle.test, trigger)
    assert got["acc"] == pytest.approx(row["acc"], abs=1e-9) and got["asr"] == pytest.approx(row["asr"], abs=1e-9)
    assert len(rundata.suspicious_table(run, Count(16), 40)) == 40
    assert sum(r["pruned"] for r in rundata.suspicious_table(run, Count(16), 40)) == 16


def test_the_cost_warning_names_a_count_when_every_threshold_costs_too_much(tied_run):
    d, _ = tied_run
    run = rundata.load_finished(d)
    below = run.cut_rows()[1]  # 16 of the 37 tied
    base = below["acc"] + 0.01  # made up: only the count cuts keep ACC within 5 points
    own = {"n_pruned": 62, "acc": base - 0.6, "asr": 0.0}
    text = rundata.cut_cost_warning(base, own, run.cut_rows(), choose="move the slider there")
    assert text is not None and "below the lowest threshold" in text and "costs 60.0 points" in text
    assert text.startswith("The defense's own cut prunes 62 neurons")
    # without the count points, as before: no swept cut keeps ACC (all thresholds score 0.5 here)
    assert "no swept cut" in rundata.cut_cost_warning(base, own, run.rows)


def test_explore_follows_a_count_from_the_url_to_the_export(tied_run):
    at = app()  # a reload of a shared link: ?run=ID&t=n16
    at.switch_page("views/explore.py")
    at.query_params["run"], at.query_params["t"] = RUN, "n16"
    at.run()
    no_exception(at, "explore")
    s = threshold_slider(at)
    assert s.value == Count(16)
    assert metric(at, "Neurons pruned") == f"16 / {sum(CNN_LAYERS.values())}"
    run = rundata.load_finished(tied_run[0])
    assert metric(at, "ACC after pruning") == f"{100 * run.row(Count(16))['acc']:.1f}%"
    assert any("no threshold cuts between them" in c.value for c in at.caption)
    assert at.query_params["t"] == "n16"
    open_tab(at, "Suspicious neurons & export")
    no_exception(at, "explore export")
    assert any("lists the 16 pruned neurons" in c.value for c in at.caption)
    threshold_slider(at).set_value(0.35).run()
    no_exception(at, "explore")
    assert metric(at, "Neurons pruned").startswith(f"{run.row(0.35)['n_pruned']} /")


def test_the_neuron_and_triggers_pages_follow_a_count_chosen_on_explore(tied_run):
    at = app()
    at.switch_page("views/explore.py")
    at.query_params["run"], at.query_params["t"] = RUN, "n16"
    at.run()
    run = rundata.load_finished(tied_run[0])
    first = next((k, int(i)) for k, v in rundata.cut_selection(run, Count(16)).items() for i in np.flatnonzero(v))
    at.switch_page("views/neuron.py")
    at.query_params["run"], at.query_params["layer"], at.query_params["index"] = RUN, first[0], str(first[1])
    at.run()
    no_exception(at, "neuron")
    assert any("the 16 most suspicious neurons (ties in layer order) as chosen on Explore" in c.value
               for c in at.caption)
    assert metric(at, "At the chosen cut") == "pruned"
    assert any(f"It ties with {TIED - 1} others" in c.value for c in at.caption)
    at.switch_page("views/triggers.py").run()
    no_exception(at, "triggers")
    assert at.select_slider(key=f"attr_threshold_{RUN}").value == Count(16)


def test_constants_tied_above_the_largest_u_get_counts_after_it():
    """For constants (high = suspicious) the mildest threshold is the largest u: the counts that
    prune fewer of its tied neurons come after it on the slider, fewest last."""
    from pathlib import Path

    scores = {"a": np.r_[np.zeros(200), np.full(3, 100.0)].astype(np.float32)}
    units = rundata.sweep_units(scores, "high")
    thresholds = [round(0.25 * i, 4) for i in range(20)]
    rows = [{"threshold": t, "n_pruned": int(rundata.selected(units, t, "high")["a"].sum()), "acc": 0.9, "asr": 0.5}
            for t in thresholds]
    counts = [{"threshold": float(c), "n_pruned": c, "acc": 0.9, "asr": 0.5} for c in (0, 1, 2, 10)]
    run = rundata.FinishedRun("r", Path("."), {}, {}, {"suspicious": "high"}, {"threshold": rows, "count": counts},
                              scores, None)
    assert rows[-1]["n_pruned"] == 3 and run.tie == {"n": 3, "score": pytest.approx(float(units["a"][-1]))}
    assert run.cuts == thresholds + [Count(2), Count(1), Count(0)]
    assert run.slider_text(Count(1)).startswith("1 pruned (of 3 tied at ")
    sel = rundata.cut_selection(run, Count(2))["a"]
    assert sel.sum() == 2 and sel[-3:].sum() == 2  # two of the three tied constants, none of the zeros
