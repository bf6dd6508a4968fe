"""Explore page: a finished run's scores, its threshold sweep, the trigger-free aids, the export.

Moving the threshold (slider or a click on the sweep) only looks up the precomputed sweep point:
no model is evaluated on that path, so the ACC/ASR update at once.
"""
import json

import pandas as pd
import streamlit as st

from dashboard import aids, cache, figures, rundata
from dashboard.common import fmt_rate, page_link, pick_finished_run, save_threshold, saved_threshold
from defenses.evaluation import acc_budget_cut
from defenses.readers.normalization import chance_warning

st.title("Explore a finished run")
url_run, url_t = st.query_params.get("run"), st.query_params.get("t")  # a link or a reload: ?run=ID&t=0.3
run_id, run = pick_finished_run("explore_run")
res = run.result
options = run.cuts
if not options:
    st.warning("This run's sweep is empty.")
    st.stop()
if run.status.get("state") != "done":
    st.warning(f"This run is {run.status.get('state')} ({run.status.get('error') or 'after its sweep was written'}); "
               "what it computed is shown below.")
units_name = "mask value" if run.suspicious == "low" else "u, standard deviations above the layer's mean"
axis_name = "mask value" if run.suspicious == "low" else "u (std-devs above layer mean)"  # fits a half-width chart
RULE_WORDS = {"gamma": "a pruned neuron's BatchNorm scale is set to 0",
              "both": "a pruned neuron's scale and shift are set to 0"}
st.caption(f"{res.get('title', '')} · {run.defense} · scores: {rundata.score_label(run.suspicious)} · "
           f"{RULE_WORDS.get(res.get('prune_rule'), 'pruning rule ' + str(res.get('prune_rule')))}")

# ---------------------------------------------------------------- the threshold


# One source of truth per run: the slider's own state (one key per run, so switching runs never
# carries a grid point of one run over to another), mirrored into the session's saved thresholds
# (kept across pages) and the URL (kept across a reload). The metrics and the export read the
# value the slider returns, never a second copy.
THRESHOLD_KEY = f"threshold_{run_id}"


def _remember(cut) -> None:
    save_threshold(run_id, cut)
    st.query_params["run"], st.query_params["t"] = run_id, rundata.cut_text(cut)


def _set_threshold(value) -> None:
    """Snap any proposed cut (a click, an aid) to the precomputed grid and move the slider."""
    if value is None or (isinstance(value, rundata.Count) and value not in options):
        return
    cut = value if isinstance(value, rundata.Count) else rundata.nearest(run.thresholds, float(value))
    st.session_state[THRESHOLD_KEY] = cut
    _remember(cut)


def _on_click(chart_key: str) -> None:
    _set_threshold(rundata.threshold_from_selection(st.session_state.get(chart_key)))


if st.session_state.get(THRESHOLD_KEY) not in options:
    st.session_state[THRESHOLD_KEY] = rundata.starting_threshold(run, saved_threshold(run_id),
                                                                 url_t if url_run == run_id else None)
# the chosen cut: a threshold on the sweep's scale, or a rundata.Count below the lowest one
threshold = st.select_slider(
    f"Prune every neuron {'at or below' if run.suspicious == 'low' else 'above'} this {units_name}"
    + (", or a number of the neurons tied beyond the mildest threshold" if run.tie else ""),
    options=options, key=THRESHOLD_KEY, help="ACC and ASR below were measured when the run swept this cut, so "
                                             "moving the slider shows them at once.",
    format_func=run.slider_text)
_remember(threshold)
row = run.row(threshold)
if isinstance(threshold, rundata.Count):
    st.caption(f"Beyond the mildest threshold: the {run.tie['n']} most suspicious neurons share one score "
               f"({units_name} {run.tie['score']:g}), so no threshold cuts between them. This point prunes "
               f"{threshold.n} of them, the first in layer order, as pruning by number does (RNP's code too): which "
               "of the tied neurons go is arbitrary.")
base = res.get("baseline", {})
m1, m2, m3 = st.columns(3)
acc_delta = rundata.points_delta(row["acc"], base.get("acc"))
m1.metric("ACC after pruning", fmt_rate(row["acc"]), delta=acc_delta, delta_color="normal" if rundata.is_change(acc_delta) else "off")
asr_delta = rundata.points_delta(row["asr"], base.get("asr")) if run.asr_known else None
m2.metric("ASR after pruning", fmt_rate(row["asr"]), delta=asr_delta,
          delta_color="inverse" if rundata.is_change(asr_delta) else "off",
          help="Attack success rate with the attacker's trigger on the test split, or on the poisoned test set given "
               "(a real defender cannot measure it).")
m3.metric("Neurons pruned", f"{row['n_pruned']} / {sum(v.size for v in run.scores.values())}")
d = res.get("default", {})
# a line, not a fourth metric: "ACC / ASR" in a metric's large type is cut off at 1000 px
near_chance = chance_warning(base.get("acc", 1.0), res.get("num_classes") or 0)
if near_chance:
    st.warning(near_chance, icon=":material/warning:")
costly = rundata.cut_cost_warning(base.get("acc"), d, run.cut_rows(), choose="move the slider there")
if costly:
    st.warning(costly, icon=":material/content_cut:")
st.caption(f"The defense's own cut prunes {rundata.neurons(d.get('n_pruned'))}: ACC {fmt_rate(d.get('acc'))}, "
           f"ASR {fmt_rate(d.get('asr'))}; before pruning ACC {fmt_rate(base.get('acc'))}, "
           f"ASR {fmt_rate(base.get('asr'))}.")

def _oracle_overlap(run, threshold) -> str:
    found, wanted = rundata.oracle_overlap(run, threshold)
    return (f" At the chosen cut this defense prunes {found} of those {wanted} (the table of suspicious "
            f"neurons marks them)." if wanted else "")


def _open_neuron(row: dict) -> None:
    """Open a neuron of this run in the inspector (the page reads the run and neuron from the URL)."""
    st.session_state["neuron_run"] = run_id
    st.session_state[f"neuron_layer_{run_id}"], st.session_state[f"neuron_index_{run_id}"] = row["layer"], row["index"]
    st.switch_page("views/neuron.py", query_params={"run": run_id, "layer": row["layer"], "index": str(row["index"])})


def _sweep_tab():
    st.caption("Click a point on either chart to move the threshold there. Red dashed curves use the **test ASR**, "
               "which needs the attacker's trigger: a real defender cannot draw them. The aids that need no trigger "
               "are on the *Triage* tab.")
    left, right = st.columns(2)
    with left:
        st.plotly_chart(figures.sweep_figure(run.rows, rundata.threshold_of(threshold),
                                             x_title=axis_name), key="sweep_chart",
                        on_select=lambda: _on_click("sweep_chart"), selection_mode="points")
    with right:
        if run.asr_known:
            st.plotly_chart(figures.tradeoff_figure(run.cut_rows(), threshold), key="tradeoff_chart",
                            on_select=lambda: _on_click("tradeoff_chart"), selection_mode="points")
        else:
            st.info("The trigger is unknown, so there is no ASR curve; use the trigger-free aids.")
    if run.oracle:
        cut = run.oracle.get("smallest_cut")
        st.plotly_chart(figures.compare_sweeps([
            {"label": run.defense, "rows": run.sweep.get("count", [])},
            {"label": "oracle (knows the trigger)", "rows": run.oracle["rows"]}]), key="oracle_chart")
        st.caption("The oracle learns, knowing the trigger, which neurons the backdoor needs and the clean task can "
                   "spare: no pruning defense can do much better than its curve. " +
                   (f"It brings ASR under 5% with {rundata.neurons(cut['n_pruned'])}, at ACC {fmt_rate(cut['acc'])}."
                    if cut else "No count in its sweep brings ASR under 5%: this backdoor resists pruning.") +
                   _oracle_overlap(run, threshold) +
                   (" With a poisoned test set it learns on one half of its images and its ASR is measured on the "
                    "other half." if "poisoned" in str(run.oracle.get("asr_on", "")) else ""))

def _scores_tab():
    kind = st.radio("Show as", ["histogram", "violin", "ecdf"], horizontal=True, key="dist_kind")
    layers = list(run.scores)
    # one key per run: a run's layer names are not another's, and a stale choice would leave it empty
    chosen = st.multiselect("Layers", layers, default=layers, key=f"dist_layers_{run_id}")
    if not chosen:
        st.caption("Choose at least one layer to draw its scores.")
    else:
        units = rundata.sweep_units(run.scores, run.suspicious)
        shown = {k: units[k] for k in chosen}
        fig = figures.score_distribution(shown, kind, rundata.threshold_of(threshold),
                                         rundata.score_label(run.suspicious))
        if kind != "histogram":
            st.plotly_chart(fig, key="dist_chart")
        else:
            event = st.plotly_chart(fig, key="dist_chart", on_select="rerun", selection_mode="points")
            st.caption("Click a bar to open its most suspicious neuron in the neuron inspector.")
            picked = rundata.neuron_from_histogram_click(event, shown, run.suspicious)
            if picked:
                _open_neuron({"layer": picked[0], "index": picked[1]})
    density = (res.get("extras") or {}).get("density")
    if density:
        st.markdown("**Hölder-constant density per layer, with the cut the defense chose** "
                    "(assumes a clean, frozen feature extractor)")
        layer = st.selectbox("Layer", list(density), key="density_layer")
        dd = density[layer]
        st.plotly_chart(figures.density_figure(dd["x"], dd["y"], dd.get("cut"), dd.get("rule", ""),
                                               run.scores.get(layer), layer), key="density_chart")

def _aids_tab():
    st.caption("A real defender does not know the trigger. These aids choose a cut from the scores and the clean "
               "accuracy alone; **Use** moves the slider to the nearest precomputed cut.")
    a1, a2 = st.columns(2)
    with a1:
        budget = st.slider("ACC-drop budget (points)", 0.0, 20.0, 2.0, 0.5, key="budget") / 100
        cut = acc_budget_cut(run.cut_rows(), base.get("acc", 1.0), budget)
        if cut is not None and not cut["n_pruned"]:  # the unpruned model: no cut to offer
            cut = None
            st.caption("No swept cut that prunes anything keeps ACC within this budget.")
        below = cut is not None and isinstance(cut["cut"], rundata.Count)
        st.plotly_chart(figures.acc_budget_figure(run.rows, base.get("acc", 1.0), budget,
                                                  cut["threshold"] if cut and not below else None, axis_name),
                        key="budget_chart")
        if cut:
            st.button(f"Use {cut['label'] if below else format(cut['threshold'], 'g')} "
                      f"({rundata.neurons(cut['n_pruned'])}, ACC {fmt_rate(cut['acc'])})",
                      key="use_budget", on_click=_set_threshold, args=(cut["cut"],))
    with a2:
        values = aids.sorted_suspicious(run)
        gap, kn = aids.largest_gap(values), aids.knee(values)
        st.plotly_chart(figures.sorted_scores_figure(values, gap, kn, rundata.score_label(run.suspicious)),
                        key="sorted_chart")
        for label, idx, key in (("largest gap", gap, "use_gap"), ("knee", kn, "use_knee")):
            if idx is not None:  # the swept cut pruning the nearest number of neurons (fewer on a tie)
                near = min(run.cut_rows(), key=lambda r: (abs(r["n_pruned"] - (idx + 1)), r["n_pruned"]))
                st.button(f"Use the {label}: {rundata.neurons(idx + 1)}; nearest swept cut: {near['label']}, "
                          f"{near['n_pruned']} pruned", key=key, on_click=_set_threshold, args=(near["cut"],))
    u = st.number_input("CLP's u rule: flag neurons more than u std-devs from their layer's mean", 0.0, 10.0, 3.0,
                        0.5, key="u_rule")
    n_u = aids.u_rule_count(run, u)
    if run.suspicious == "high":
        st.button(f"Use u = {u:g} ({rundata.neurons(n_u)})", key="use_u", on_click=_set_threshold, args=(u,))
    else:
        st.caption(f"The u rule flags {rundata.neurons(n_u)} whose mask is more than {u:g} std-devs below their layer's mean "
                   "(masks share one scale, so the sweep itself cuts one global threshold).")
    aid = aids.rnp_aid(run)
    if aid:
        flagged = aid["flagged"]
        if flagged:
            asr = ", ".join(f"label {t}: {fmt_rate(aid['asr'].get(t))}" for t in flagged)
            st.success(f"Trigger recovery flags label(s) {', '.join(map(str, flagged))} as the backdoor target; "
                       f"its recovered trigger flips the original model on {asr} of clean images.")
        else:
            st.info(f"Trigger recovery flags no label (largest anomaly index {aid['anomaly']:.2f} for label "
                    f"{aid['most_anomalous']}, threshold 2).")
        short = aids.short_recovery_warning(run.recovery)
        if short:
            st.warning(short, icon=":material/warning:")
        page_link("views/triggers.py", "See the recovered triggers →", ":material/target:")

def _export_tab():
    top = st.slider("How many neurons", 5, 100, 20, 5, key="top_n")
    table = rundata.suspicious_table(run, threshold, top)
    event = st.dataframe(pd.DataFrame(table), hide_index=True, width="stretch", key="suspicious_table",
                         on_select="rerun", selection_mode="single-row",
                         column_config={"score": st.column_config.NumberColumn("score", format="%.4f"),
                                        "u": st.column_config.NumberColumn("u", format="%.2f")})
    st.caption("Click a row to open that neuron in the neuron inspector.")
    rows = event.selection.rows if event is not None else []
    if rows:  # the table is not drawn on the inspector's page, so its selection is gone when one comes back
        _open_neuron(table[rows[0]])
    manifest = rundata.manifest(run, threshold)
    e1, e2 = st.columns(2)
    stem = f"{run_id}-{'' if isinstance(threshold, rundata.Count) else 't'}{rundata.cut_text(threshold)}"
    e1.download_button("Download the pruned model (.safetensors)", key="download_model",
                       data=lambda: cache.pruned_model_bytes(run, threshold, manifest),
                       file_name=f"{stem}.safetensors", mime="application/octet-stream")
    e2.download_button("Download the manifest (.json)", key="download_manifest",
                       data=json.dumps(manifest, indent=1), file_name=f"{stem}.json", mime="application/json")
    st.caption(f"The manifest lists the {manifest['n_pruned']} pruned neurons with their scores, the rule and the "
               "ACC/ASR before and after; the model file carries it in its metadata too.")


# Only the open tab runs (lazy tabs): a slider step redraws the charts the user sees, not all four
# tabs' (measured in tests/test_browser.py). Its key keeps the open tab across reruns.
TABS = {"Sweep": _sweep_tab, "Scores": _scores_tab, "Triage without the trigger": _aids_tab,
        "Suspicious neurons & export": _export_tab}
for tab, draw_tab in zip(st.tabs(list(TABS), key="explore_tab", on_change="rerun"), TABS.values()):
    with tab:
        if tab.open:
            draw_tab()
