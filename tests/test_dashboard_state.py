"""The dashboard's state across run switches, reloads and pages (AppTest), the Defend page's preflight
and demo budget, and the live view's status and charts. A reload is a fresh AppTest given the URL's
query parameters, as a browser would send them."""
from __future__ import annotations

import json

import pytest

from dashboard import liveview, rundata
from defenses.base import all_defenses, config_from_dict
from test_dashboard_app import app, make_run, metric, no_exception, one_sentence, open_tab, threshold_slider

ANP_RUN = "20260101-000000-anp-cnn_badnets-aaaa"
CLP_RUN = "20260101-000001-clp-cnn_badnets-bbbb"


@pytest.fixture
def two_runs(runs):
    make_run(runs, ANP_RUN)
    make_run(runs, CLP_RUN, defense="clp", suspicious="high", triggers=False)
    return runs


def shown(at) -> tuple[str, str, str]:
    """The slider's label for its value, and the metrics under it."""
    s = threshold_slider(at)
    rows = {r["threshold"]: r for r in json.loads((rundata.run_path(at.session_state["explore_run"]) /
                                                   "sweep.json").read_text())["threshold"]}
    return f"{s.value:g} · {rows[s.value]['n_pruned']} pruned", metric(at, "Neurons pruned"), metric(at, "ACC after pruning")


def agrees(at) -> None:
    """The slider, the metrics and the export all describe the same sweep point."""
    label, pruned, acc = shown(at)
    n = int(label.split("· ")[1].split()[0])
    assert pruned.startswith(f"{n} /"), (label, pruned)
    row = rundata.row_at(rundata.load_finished(rundata.run_path(at.session_state["explore_run"])).rows,
                         threshold_slider(at).value)
    assert acc == f"{100 * row['acc']:.1f}%"
    open_tab(at, "Suspicious neurons & export")
    assert threshold_slider(at).value == row["threshold"]  # opening a tab moves nothing
    assert any(f"lists the {n} pruned neurons" in c.value for c in at.caption), "the export follows the slider"
    open_tab(at, "Sweep")


def test_switching_runs_and_reloading_keep_slider_metrics_and_export_together(two_runs):
    at = app().run()
    at.switch_page("views/explore.py").run()
    at.selectbox(key="explore_run").set_value(ANP_RUN).run()
    assert threshold_slider(at).value == 0.2  # ANP's own cut
    threshold_slider(at).set_value(0.95).run()
    agrees(at)
    at.selectbox(key="explore_run").set_value(CLP_RUN).run()
    no_exception(at, "explore clp")
    assert threshold_slider(at).value == 3.0  # CLP's own u, not ANP's grid point carried over
    agrees(at)
    at.selectbox(key="explore_run").set_value(ANP_RUN).run()
    assert threshold_slider(at).value == 0.95  # the choice made for this run is kept
    agrees(at)
    assert at.query_params["run"] == ANP_RUN and at.query_params["t"] == "0.95"

    reloaded = app()  # a reload: a new session with the URL's query parameters
    reloaded.query_params["run"], reloaded.query_params["t"] = ANP_RUN, "0.95"
    reloaded.run()
    reloaded.switch_page("views/explore.py")
    reloaded.query_params["run"], reloaded.query_params["t"] = ANP_RUN, "0.95"
    reloaded.run()
    no_exception(reloaded, "explore reloaded")
    assert reloaded.selectbox(key="explore_run").value == ANP_RUN
    assert threshold_slider(reloaded).value == 0.95
    agrees(reloaded)


def test_a_hand_edited_threshold_in_the_url_falls_back_to_the_defense_cut(two_runs):
    at = app()
    at.switch_page("views/explore.py")
    at.query_params["run"], at.query_params["t"] = CLP_RUN, "lots"
    at.run()
    no_exception(at, "explore bad t")
    assert threshold_slider(at).value == 3.0
    agrees(at)


def test_scores_tab_opens_with_every_layer_chosen(two_runs):
    at = app().run()
    at.switch_page("views/explore.py").run()
    open_tab(at, "Scores")
    for run_id in (ANP_RUN, CLP_RUN):
        at.selectbox(key="explore_run").set_value(run_id).run()
        layers = list(rundata.load_finished(rundata.run_path(run_id)).scores)
        assert at.multiselect(key=f"dist_layers_{run_id}").value == layers
        assert not any("Choose at least one layer" in c.value for c in at.caption)


def test_sidebar_names_the_model_just_chosen(runs):
    at = app().run()
    at.selectbox(key="sample").set_value("cnn_clean").run()
    captions = [c.value for c in at.sidebar.caption]
    assert any("Model for new runs" in c and "(cnn_clean)" in c for c in captions), captions
    assert at.query_params["sample"] == "cnn_clean"
    reloaded = app()
    reloaded.query_params["sample"] = "cnn_clean"
    reloaded.run()
    assert reloaded.selectbox(key="sample").value == "cnn_clean"  # the choice survives a reload


def test_explore_sidebar_names_the_run_shown(two_runs):
    at = app().run()
    at.switch_page("views/explore.py").run()
    at.selectbox(key="explore_run").set_value(CLP_RUN).run()
    assert any(CLP_RUN in c.value for c in at.sidebar.caption)
    # Explore's URL names the run it shows, not the model new runs are on (read as the run's model)
    assert at.query_params["run"] == CLP_RUN and "sample" not in at.query_params and "model" not in at.query_params


ROWS = [{"threshold": 0.1, "n_pruned": 3, "acc": 0.97, "asr": 0.40},
        {"threshold": 0.2, "n_pruned": 9, "acc": 0.95, "asr": 0.05},
        {"threshold": 0.5, "n_pruned": 62, "acc": 0.377, "asr": 0.0}]


def test_a_costly_own_cut_gets_a_sentence_naming_the_cut_that_keeps_accuracy():
    cut = {"n_pruned": 62, "acc": 0.377, "asr": 0.0}
    assert rundata.cut_cost_warning(0.983, {**cut, "acc": 0.95}, ROWS) is None  # 3.3 points: no warning
    msg = rundata.cut_cost_warning(0.983, cut, ROWS)
    assert msg == ("The defense's own cut prunes 62 neurons and costs 60.6 points of clean accuracy: threshold 0.2 "
                   "prunes 9 and keeps ACC 95.0% (ASR 5.0%), so choose it on Explore rather than the own cut.")
    assert one_sentence(msg)
    assert rundata.cut_cost_warning(0.983, {**cut, "n_pruned": 1}, ROWS).startswith(
        "The defense's own cut prunes 1 neuron and costs")  # not "1 neurons"
    # the RNP case of the tour: the lowest sweep point already costs too much
    msg = rundata.cut_cost_warning(0.983, cut, [{**ROWS[2], "n_pruned": 37, "acc": 0.84}, ROWS[2]])
    assert "no swept cut keeps ACC within 5 points (the fewest neurons swept, 37, already leave ACC 84.0%)" in msg
    assert one_sentence(msg)


def test_explore_warns_when_the_own_cut_costs_accuracy(runs):
    make_run(runs, ANP_RUN)
    make_run(runs, CLP_RUN, defense="clp", suspicious="high", triggers=False)
    result = json.loads((runs / ANP_RUN / "result.json").read_text())
    result["default"]["acc"] = 0.5  # the own cut of this run costs 49 points
    (runs / ANP_RUN / "result.json").write_text(json.dumps(result))
    at = app().run()
    at.switch_page("views/explore.py").run()
    at.selectbox(key="explore_run").set_value(CLP_RUN).run()
    assert not [w for w in at.warning if "points of clean accuracy" in w.value]  # a cheap own cut: no sentence
    at.selectbox(key="explore_run").set_value(ANP_RUN).run()
    warned = [w.value for w in at.warning if "points of clean accuracy" in w.value]
    assert warned and "so move the slider there rather than the own cut" in warned[0], [w.value for w in at.warning]


# ---------------------------------------------------------------- the Defend page


def test_holder_without_a_head_is_refused_before_it_starts(runs):
    at = app().run()
    at.switch_page("views/defend.py").run()
    at.selectbox(key="defense").set_value("holder").run()
    no_exception(at, "defend holder")
    assert len(at.error) == 1 and one_sentence(at.error[0].value), [e.value for e in at.error]
    assert "MLP head" in at.error[0].value
    assert at.button(key="start").disabled
    assert not list(runs.iterdir())  # nothing started, nothing to clutter the run lists


def test_every_defense_in_the_registry_gets_labelled_widgets(runs):
    at = app().run()
    at.switch_page("views/defend.py").run()
    for name, info in all_defenses().items():
        at.selectbox(key="defense").set_value(name).run()
        no_exception(at, f"defend {name}")
        labels = [w.label for w in at.number_input] + [w.label for w in at.text_input]
        assert not any("_" in lab for lab in labels), (name, labels)  # words, not config keys
        if name == "holder":
            continue  # refused on the default sample (the test above)
        assert not at.error, f"{name}: {[e.value for e in at.error]}"
        assert not at.button(key="start").disabled


@pytest.mark.parametrize("name", [n for n, i in all_defenses().items() if i.demo])
def test_demo_button_sets_the_demo_budget_and_says_it_is_below_the_paper(runs, name):
    info = all_defenses()[name]
    config_from_dict(info.config_cls, info.demo)  # a valid config
    at = app().run()
    at.switch_page("views/defend.py").run()
    at.selectbox(key="defense").set_value(name).run()
    at.button(key="demo").click().run()
    no_exception(at, f"defend demo {name}")
    for field, value in info.demo.items():
        assert at.session_state[f"cfg_{name}_{field}"] == value
    assert any("below the paper's" in i.value for i in at.info), [i.value for i in at.info]
    assert any("Tuned on the showcase" in c.value for c in at.caption)


def test_a_finished_run_shows_its_own_cut_one_status_word_and_no_empty_charts(runs):
    d = make_run(runs, CLP_RUN, defense="clp", suspicious="high", triggers=False)
    events = [json.loads(line) for line in (d / "events.jsonl").read_text().splitlines()]
    for ev in events:  # CLP's steps carry counts, not losses, and it writes no probes or snapshots
        if ev["type"] == "step":
            ev["metrics"] = {"scored": 1.0}
    (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events if e["type"] not in ("probe",)))
    for f in (d / "snapshots").iterdir():
        f.unlink()
    at = app().run()
    at.switch_page("views/defend.py").run()
    no_exception(at, "defend finished clp")
    assert at.get("progress")[0].proto.text == "done"
    assert metric(at, "ACC, own cut") and metric(at, "ASR, own cut")
    assert not at.get("plotly_chart"), "no chart without data"
    assert not any("appear" in c.value for c in at.caption)
    links = at.get("page_link")
    assert [p.proto.page for p in links] == ["explore"] and links[0].proto.icon == ":material/query_stats:"


def test_status_line_is_one_word_and_what_the_run_does():
    view = liveview.LiveView(state="running", error=None, stage="defense", step_stage="anp", step=9, total=150)
    assert liveview.status_line(view) == "running · anp 9/150"
    assert liveview.status_line(liveview.LiveView("done", None, "done", "sweep", 11, 11)) == "done"
    assert liveview.status_line(liveview.LiveView("queued", None, "queued", "", 0, 0)) == "queued"
    assert liveview.status_line(liveview.LiveView("running", None, "loading", "", 0, 0)) == \
        "running · loading the model and data"
    sweeping = liveview.status_line(liveview.LiveView("running", None, "sweep", "sweep", 3, 20))
    assert sweeping.startswith("running · sweeping the cut (ACC and ASR") and sweeping.endswith("3/20")


def test_the_status_line_estimates_the_time_left_after_a_few_steps():
    assert liveview.stage_eta([(1, 100.0)], 150) is None  # one step: no pace yet
    assert liveview.stage_eta([(1, 100.0), (11, 105.0)], 150) == pytest.approx(0.5 * 139)
    view = liveview.LiveView("running", None, "defense", "anp", 11, 150, eta_s=69.5)
    assert liveview.status_line(view) == "running · anp 11/150 · about 70 s left in this stage"
    assert liveview.status_line(liveview.LiveView("running", None, "defense", "anp", 149, 150, eta_s=0.2)) == \
        "running · anp 149/150 · about 1 s left in this stage"


def test_no_change_is_not_coloured():
    assert rundata.points_delta(0.5, 0.5) == "±0.0 pts" and not rundata.is_change("±0.0 pts")
    assert rundata.points_delta(0.51, 0.5) == "+1.0 pts" and rundata.is_change("+1.0 pts")
    assert rundata.points_delta(float("nan"), 0.5) is None


def test_a_showcase_measured_off_the_papers_values_puts_both_one_click_away(runs):
    at = app()
    at.query_params["sample"] = "cnn_blend_subnet"
    at.run()
    at.switch_page("views/defend.py").run()
    at.selectbox(key="defense").set_value("rnp").run()
    at.button(key="measured").click().run()
    no_exception(at, "defend measured")
    assert at.session_state["cfg_rnp_unlearn_lr"] == 0.001  # the unlearning rate the showcase claim used
    assert any("measured with unlearning learning rate 0.001" in c.value for c in at.caption)
    at.button(key="paper").click().run()
    assert at.session_state["cfg_rnp_unlearn_lr"] == 0.01  # the paper's
    at.selectbox(key="defense").set_value("clp").run()  # CLP's claim uses its defaults: nothing to offer
    assert not [b for b in at.button if b.key == "measured"]


def test_a_trigger_recovery_claim_reads_as_a_sentence_with_its_settings():
    from sample_models import recovery_sentence

    claim = {"settings": {"rnp": {"unlearn_lr": 0.001}, "nc": {"steps": 150}}, "flagged": [0], "anomaly": 3.1234,
             "asr_original": 0.8784}
    assert recovery_sentence({"target": 0}, claim) == (
        "Neural Cleanse (150 steps per label) on RNP's unlearned model (unlearning learning rate 0.001) flags label 0, "
        "the attacker's target (anomaly index 3.12), and the trigger it recovers for it flips 87.8% of the original "
        "model's clean images to 0.")
    missed = recovery_sentence({"target": 3}, {**claim, "settings": {"rnp": {}}})
    assert missed.startswith("Neural Cleanse on RNP's unlearned model does not flag label 3")


def test_a_sample_with_a_recovery_claim_offers_its_rnp_settings_and_says_what_they_found(runs):
    from sample_models import catalog, recovery_claim

    claim = recovery_claim(catalog()["cnn_badnets"])
    at = app()
    at.query_params["sample"] = "cnn_badnets"
    at.run()
    no_exception(at, "model page")
    assert any(m.value.startswith("**Trigger recovery.** Neural Cleanse (150 steps per label) on RNP's unlearned model")
               for m in at.markdown)
    at.switch_page("views/defend.py").run()
    at.selectbox(key="defense").set_value("rnp").run()
    at.checkbox(key="recover_triggers_rnp").uncheck().run()  # the click ticks it again, as the claim ran
    at.button(key="measured").click().run()
    no_exception(at, "defend measured")
    assert at.session_state["cfg_rnp_unlearn_lr"] == claim["settings"]["rnp"]["unlearn_lr"]
    # the Neural Cleanse settings the claim was measured with go with it, and the widget shows them
    assert at.number_input(key="recovery_steps").value == claim["settings"]["nc"]["steps"] == 150
    assert at.checkbox(key="recover_triggers_rnp").value and at.radio(key="recover_on").value == "unlearned"
    assert not at.warning  # no Streamlit warning about widgets set through Session State
    assert any(c.value.startswith("Trigger recovery on this sample: Neural Cleanse") for c in at.caption)
    at.button(key="paper").click().run()
    assert at.session_state["cfg_rnp_unlearn_lr"] == 0.01
    assert at.number_input(key="recovery_steps").value == 300
    at.selectbox(key="defense").set_value("anp").run()  # no claim for ANP on the hard case
    assert not [b for b in at.button if b.key == "measured"]
