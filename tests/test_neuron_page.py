"""The neuron inspector page (AppTest) and `prunescope neuron`: a table row opens its card, the
URL holds the neuron, the prune/keep evaluations are kept in the run folder."""
import time

import numpy as np

from dashboard import rundata
from defenses.cli import main
from test_dashboard_app import app, make_run, metric, no_exception, open_tab

RUN = "20260101-000000-anp-cnn_badnets-aaaa"


def neuron_page(**query):
    at = app(300)
    at.switch_page("views/neuron.py")
    at.query_params.update(query)
    return at.run()


def test_choosing_a_table_row_opens_the_card_of_that_neuron(runs):
    make_run(runs, RUN)
    at = app(300).run()
    at.switch_page("views/explore.py").run()
    open_tab(at, "Suspicious neurons & export")
    table = at.dataframe[0].value
    assert (table.loc[1, "layer"], table.loc[1, "index"]) == ("classifier.2", 7)  # the second planted neuron
    at.session_state["suspicious_table"] = {"selection": {"rows": [1], "columns": [], "cells": []}}  # a click on row 2
    at.run()
    no_exception(at, "neuron from the table")
    assert at.title[0].value == "Neuron inspector"
    assert at.selectbox(key=f"neuron_layer_{RUN}").value == "classifier.2"
    assert at.number_input(key=f"neuron_index_{RUN}").value == 7
    assert metric(at, "Rank overall") == "2 of 320" and metric(at, "At the chosen cut") == "pruned"


def test_the_neuron_round_trips_through_the_url(runs):
    make_run(runs, RUN)
    at = neuron_page(run=RUN, layer="features.8", index="3")
    no_exception(at, "neuron from the url")
    assert metric(at, "Rank overall") == "1 of 320" and metric(at, "Score") == "0.02"
    t0 = time.perf_counter()
    at.number_input(key=f"neuron_index_{RUN}").set_value(4).run()
    card_s = time.perf_counter() - t0
    no_exception(at, "another neuron")
    assert at.query_params["layer"] == "features.8" and at.query_params["index"] == "4"
    assert metric(at, "At the chosen cut") == "kept"
    print(f"\nopening another neuron's card on the sample (AppTest rerun, activations cached): {card_s:.2f} s")
    bad = neuron_page(run=RUN, layer="no.such.layer", index="x")  # a hand-edited link: the most suspicious neuron
    no_exception(bad, "bad neuron url")
    assert metric(bad, "Rank overall") == "1 of 320"


def test_prune_and_keep_are_evaluated_once_and_kept_in_the_run_folder(runs, monkeypatch):
    d = make_run(runs, RUN)
    at = neuron_page(run=RUN, layer="features.8", index="3")
    at.button(key="neuron_effect").click().run()
    no_exception(at, "effect")
    alone = metric(at, "Only this neuron pruned: ACC / ASR")
    assert "%" in alone and rundata.cached_effects(d)  # written to inspect/effects.json

    import defenses.inspector

    def no_evaluation(*a, **k):
        raise AssertionError("a second look must read the run folder")

    monkeypatch.setattr(defenses.inspector, "evaluate", no_evaluation)
    again = neuron_page(run=RUN, layer="features.8", index="3")  # a new session: shown without a click
    no_exception(again, "effect again")
    assert metric(again, "Only this neuron pruned: ACC / ASR") == alone


def test_cli_prints_the_card(runs, capfd):
    make_run(runs, RUN)
    assert main(["--runs-dir", str(runs), "neuron", RUN, "features.8", "3", "--evaluate"]) == 0
    out = capfd.readouterr().out
    assert "features.8[3] (bn, 64 neurons; normalises features.7)" in out
    assert "rank 1 of 320, 1 of 64 in its layer; pruned at threshold 0.2" in out
    assert "clean std-devs" in out and "on the trigger's pixels" in out and "pruned alone: ACC" in out
    assert main(["--runs-dir", str(runs), "neuron", RUN, "features.8", "99"]) == 2
    assert "No neuron features.8[99]" in capfd.readouterr().err


def test_a_click_on_a_histogram_bar_opens_its_most_suspicious_neuron(runs):
    make_run(runs, RUN)
    at = app(300).run()
    at.switch_page("views/explore.py").run()
    open_tab(at, "Scores")
    layers = list(rundata.load_finished(runs / RUN).scores)
    bar = {"curve_number": layers.index("features.8"), "point_indices": [10, 3, 20]}  # a bar holding features.8[3]
    at.session_state["dist_chart"] = {"selection": {"points": [bar], "point_indices": [10, 3, 20], "box": [],
                                                    "lasso": []}}
    at.run()
    no_exception(at, "neuron from the histogram")
    assert at.title[0].value == "Neuron inspector"
    assert (at.selectbox(key=f"neuron_layer_{RUN}").value, at.number_input(key=f"neuron_index_{RUN}").value) == \
        ("features.8", 3)


def test_histogram_click_without_a_bar_picks_nothing():
    shown = {"a": np.array([0.5, 0.1, np.nan, 0.3])}
    assert rundata.neuron_from_histogram_click(None, shown, "low") is None
    assert rundata.neuron_from_histogram_click({"selection": {"points": []}}, shown, "low") is None
    # positions count finite scores only: position 2 is a[3]
    event = {"selection": {"points": [{"curve_number": 0, "point_indices": [0, 2]}]}}
    assert rundata.neuron_from_histogram_click(event, shown, "low") == ("a", 3)
    assert rundata.neuron_from_histogram_click(event, shown, "high") == ("a", 0)


def test_without_a_trigger_the_recovered_one_is_stamped_instead(runs):
    import json

    d = make_run(runs, RUN)  # with recovered triggers on disk (label 0 flagged)
    result = json.loads((d / "result.json").read_text())
    result.update(trigger=None, trigger_known=False)  # a user's model whose trigger no one knows
    (d / "result.json").write_text(json.dumps(result))
    at = neuron_page(run=RUN, layer="features.8", index="3")
    no_exception(at, "neuron without a trigger")
    assert any("recovered for label 0" in c.value for c in at.caption), [c.value for c in at.caption]
    assert not any("of its attribution on the triggered image" in c.value for c in at.caption)


def test_a_click_on_the_network_map_opens_that_neuron_and_the_pickers_stay_free(runs):
    make_run(runs, RUN)
    at = neuron_page(run=RUN, layer="features.8", index="3")
    at.session_state["network_map"] = {"selection": {"points": [{"curve_number": 0, "customdata": ["classifier.2", 7]}],
                                                     "point_indices": [], "box": [], "lasso": []}}
    at.run()
    no_exception(at, "map click")
    assert (at.selectbox(key=f"neuron_layer_{RUN}").value, at.number_input(key=f"neuron_index_{RUN}").value) == \
        ("classifier.2", 7)
    assert metric(at, "Rank overall") == "2 of 320"
    at.number_input(key=f"neuron_index_{RUN}").set_value(8).run()  # the same click does not pull it back
    assert at.number_input(key=f"neuron_index_{RUN}").value == 8 and at.query_params["index"] == "8"
