"""Neuron page: pick one neuron of a finished run and see why it is suspicious.

Its card (score, ranks, whether the cut prunes it, its mask during the run), what it responds to
(activation clean vs triggered, its feature map, the test images that excite it most), what drives
it (a captum neuron attribution), and what cutting it does (two evaluations, on demand, kept in
the run folder). The run and the neuron are in the URL (``?run=ID&layer=NAME&index=I``).
"""
import json

import numpy as np
import streamlit as st

from dashboard import cache, figures, neuron_figures, rundata
from dashboard.common import USER_ERRORS, fmt_rate, pick_finished_run, saved_threshold, show_error
from defenses.inspector import ATTRIBUTIONS, neuron_card
from defenses.runs.folder import list_snapshots

st.title("Neuron inspector")
url = {k: st.query_params.get(k) for k in ("run", "layer", "index", "t")}
run_id, run = pick_finished_run("neuron_run")

cut = rundata.starting_threshold(run, saved_threshold(run_id), url.get("t") if url["run"] == run_id else None)
units = rundata.sweep_units(run.scores, run.suspicious)
pruned = rundata.cut_selection(run, cut)
layers = list(run.scores)
LAYER_KEY, INDEX_KEY = f"neuron_layer_{run_id}", f"neuron_index_{run_id}"
FOLDER = str(run.path.resolve())  # the caches' key with the run id


def _choose(layer: str, index: int) -> None:
    st.session_state[LAYER_KEY], st.session_state[INDEX_KEY] = layer, int(index)


def _map_click() -> tuple[str, int] | None:
    """The neuron of a new click on the network map (read before the pickers are drawn, so it can
    move them); a click already handled returns None, so the pickers stay free to move on."""
    points = ((st.session_state.get("network_map") or {}).get("selection") or {}).get("points") or []
    seen = json.dumps(points, sort_keys=True, default=str)
    if seen == st.session_state.get("network_map_handled"):
        return None
    st.session_state["network_map_handled"] = seen
    for p in points:
        data = p.get("customdata") if hasattr(p, "get") else None
        if isinstance(data, (list, tuple)) and len(data) == 2 and data[0] in run.scores:
            return str(data[0]), int(data[1])
    return None


if st.session_state.get(LAYER_KEY) not in layers:  # a link, else the most suspicious neuron of the run
    top = rundata.suspicious_table(run, cut, 1)[0]
    wanted = url["layer"] if url["layer"] in layers and url["run"] == run_id else top["layer"]
    try:
        index = int(url["index"]) if wanted == url["layer"] else top["index"]
    except (TypeError, ValueError):
        index = 0
    _choose(wanted, min(max(index, 0), len(run.scores[wanted]) - 1))
clicked = _map_click()
if clicked:
    _choose(*clicked)

c1, c2 = st.columns([3, 1])
layer = c1.selectbox("Layer", layers, key=LAYER_KEY)
index = int(c2.number_input("Index", min_value=0, max_value=len(run.scores[layer]) - 1, step=1, key=INDEX_KEY))
st.query_params["run"], st.query_params["layer"], st.query_params["index"] = run_id, layer, str(index)
st.plotly_chart(neuron_figures.network_map(units, pruned, run.suspicious, (layer, index)), key="network_map",
                on_select="rerun", selection_mode="points")

# ---------------------------------------------------------------- its card

card = neuron_card(run.scores, run.suspicious, pruned, layer, index, units)
kind = next((l.get("kind") for l in run.result.get("layers", []) if l["name"] == layer), "?")
KINDS = {"bn": "BN channel", "groupnorm": "GroupNorm channel", "layernorm": "LayerNorm channel",
         "instancenorm": "InstanceNorm channel", "conv": "conv channel", "linear": "linear unit"}
m1, m2, m3, m4 = st.columns(4)
m1.metric("Score", f"{card['score']:.4g}", help=rundata.score_label(run.suspicious))
m2.metric("Rank overall", f"{card['rank']} of {card['of']}", help="1 is the most suspicious neuron of the run.")
m3.metric("Rank in its layer", f"{card['rank_in_layer']} of {card['layer_size']}")
m4.metric("At the chosen cut", "pruned" if card["pruned"] else "kept")  # the cut is named in the caption below
tied = (f" It ties with {run.tie['n'] - 1} others at the most suspicious score; the count takes the first "
        f"{cut.n} in layer order." if isinstance(cut, rundata.Count) and run.tie and card["unit"] == run.tie["score"]
        else "")
st.caption(f"{layer}[{index}], a {KINDS.get(kind, kind)}; {rundata.cut_words(cut)} as chosen on Explore.{tied}")

if run.suspicious == "low":
    steps = [step for step, _ in list_snapshots(run.path)]
    if len(steps) > 1:  # a line needs two snapshots
        snaps = [cache.snapshot(str(run.path), s) for s in steps]
        st.plotly_chart(neuron_figures.mask_history(steps, [float(s[layer][index]) for s in snaps],
                                             [float(np.median(s[layer])) for s in snaps]), key="mask_history")

# ---------------------------------------------------------------- what it responds to, what drives it

st.subheader("What it responds to")
try:
    acts = cache.neuron_activations(run_id, FOLDER)
except USER_ERRORS as e:
    show_error(e)
    st.stop()
a = acts["acts"][layer]
gap = float(acts["gaps"][layer][index])
left, right = st.columns(2)
with left:
    recovered = acts.get("recovered", {}).get(layer)
    st.plotly_chart(neuron_figures.activation_histogram(
        a["clean"][:, index], a["triggered"][:, index] if "triggered" in a else None, gap,
        recovered=None if recovered is None else recovered[:, index]), key="activation_hist")
    gaps = np.concatenate([np.abs(g) for g in acts["gaps"].values()])
    if gap == gap:
        st.caption(f"The trigger moves this neuron by {gap:+.1f} of its clean standard deviations; "
                   f"{int((gaps > abs(gap)).sum())} neurons of the run move more.")
    elif recovered is not None:
        st.caption(f"No trigger is known for this run; the purple bars stamp the trigger Neural Cleanse recovered "
                   f"for label {acts['recovered_label']} (Triggers page).")
    else:
        st.caption("No trigger is known for this run: clean activations only.")
with right:
    bundle, trigger = cache.run_inputs(run_id, FOLDER)
    top = acts["images"][np.argsort(-a["clean"][:, index])[:8]]
    st.plotly_chart(figures.image_grid([bundle.test.images(np.asarray([i]))[0].numpy() for i in top],
                                       [f"#{int(i)}" for i in top], ncols=4,
                                       title="The 8 clean images exciting it most"), key="top_images")

method = st.radio("Attribution", ATTRIBUTIONS, horizontal=True, key="neuron_attr",
                  help="Which input pixels make this neuron fire (captum), on one clean test image and, when the "
                       "trigger is known, on the same image with it.")
maps = cache.neuron_maps(run_id, layer, index, method, int(acts["images"][0]), FOLDER)
titles = ["clean", "with the trigger"][:len(maps["images"])]
st.plotly_chart(neuron_figures.neuron_maps_figure(maps["images"], maps["feature"], maps["attribution"], titles, method),
                key="neuron_maps")
if "on_trigger" in maps:
    st.caption(f"{100 * maps['on_trigger']:.0f}% of its attribution on the triggered image lies on the trigger's "
               "pixels.")

# ---------------------------------------------------------------- what cutting it does

st.subheader("What cutting it does")
if st.button("Evaluate: this neuron alone pruned, and the cut with it kept (two passes over the test split)",
             key="neuron_effect"):
    st.session_state[f"effect_{run_id}_{layer}_{index}_{rundata.cut_text(cut)}"] = True
if st.session_state.get(f"effect_{run_id}_{layer}_{index}_{rundata.cut_text(cut)}") or \
        f"{layer}:{index}:{rundata.cut_text(cut)}" in rundata.cached_effects(run.path):
    try:
        eff = cache.neuron_effect(run, layer, index, cut)
    except USER_ERRORS as e:
        show_error(e)
        st.stop()
    e1, e2 = st.columns(2)
    e1.metric("Only this neuron pruned: ACC / ASR", f"{fmt_rate(eff['alone']['acc'])} / {fmt_rate(eff['alone']['asr'])}")
    e2.metric("The cut, this neuron kept: ACC / ASR",
              f"{fmt_rate(eff['cut_kept']['acc'])} / {fmt_rate(eff['cut_kept']['asr'])}")
