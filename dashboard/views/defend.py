"""Defend page: choose a defense and its hyperparameters, start it in a worker process, watch it."""
import dataclasses

import streamlit as st
import torch

from dashboard import cache, figures
from dashboard.common import RECOVERED_ON, USER_ERRORS, current_choice, fmt_rate, page_link, show_error
from dashboard.modelsetup import user_message
from dashboard.recovery_form import recovery_settings, use_recovery_settings
from dashboard.config_form import below_paper, paper_defaults, render, widget_key
from dashboard.liveview import finished_cut, live_score_label, live_view, status_line
from dashboard.rundata import cut_cost_warning, describe_run, is_finished, neurons, run_path, runs_dir
from dashboard.scanview import defend_hint
from defenses.base import all_defenses, config_from_dict
from defenses.runs.estimate import human_seconds
from defenses.labels import describe_settings
from defenses.runs.folder import RECOVER_ON, RunRequest, cancel_run, list_runs, read_status, start_run
from sample_models import catalog, describe_recovery, measured_settings, recovery_claim, recovery_sentence

st.title("Defend")
choice = current_choice()
if choice is None:
    st.warning("Choose a model on the Model page first.")
    st.stop()
st.caption(f"Model: **{choice['label']}** (change it on the Model page). Each run works in its own process and "
           "writes a run folder, so reloading this page, opening a second tab or restarting the server loses nothing.")
scan_hint = defend_hint(st.session_state, choice)  # set by the Scan page's "Defend this model"
if scan_hint:
    st.info(scan_hint, icon=":material/radar:")

defenses = all_defenses()
names = list(defenses)
name = st.selectbox("Defense", names, key="defense", format_func=lambda n: defenses[n].title)
info = defenses[name]
st.caption(info.summary + ("" if info.needs_data else " It needs no data."))


def _use_preset(defense: str, preset: dict) -> None:
    for field, value in preset.items():
        st.session_state[widget_key(defense, field)] = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) \
            else value


def _use_claim(defense: str, preset: dict, recovery: dict | None, claim: bool = False) -> None:
    """A claim's settings; for a trigger-recovery claim, the Neural Cleanse settings it was measured
    with too (``{}``: the defaults; None: leave them), and with ``claim`` recovery ticked, on the
    unlearned model, as the claim ran it."""
    _use_preset(defense, preset)
    if recovery is not None:
        use_recovery_settings(recovery)
    if claim:
        st.session_state[f"recover_triggers_{defense}"] = True
        st.session_state["recover_on"] = "unlearned"


def show_estimate(request: RunRequest, recover: bool, recovery_cost) -> None:
    """The time of each stage, measured on a few of its steps before Start; trigger recovery's
    beside its tick, ticked or not (it was 30 of a 31-minute run, with nothing saying so)."""
    probe = dataclasses.replace(request, recover_triggers=True)
    try:
        with st.spinner("Measuring a few steps of each stage to estimate the time…"):
            stages = cache.run_estimate(cache.request_key(probe))
    except USER_ERRORS as e:
        st.caption(f"No time estimate: {user_message(e)}")
        return
    rec = next((s for s in stages if s["kind"] == "recovery"), None)
    if rec:
        recovery_cost.caption(f":material/schedule: {'Takes' if recover else 'Would add'} about "
                              f"**{human_seconds(rec['seconds'])}** here ({rec['name']}).")
    counted = [s for s in stages if s["kind"] != "recovery" or recover]
    parts = " · ".join(f"{s['name']}: {'up to ' if s['upper_bound'] else ''}{human_seconds(s['seconds'])}"
                       for s in counted)
    st.caption(f":material/schedule: Estimated time on this machine now: **about "
               f"{human_seconds(sum(s['seconds'] for s in counted))}** ({parts}). Measured on a few steps of "
               "each stage; runs going at the same time slow it down.")


params = None
# Folded while the watched run works: open, the form put the live charts 400 px below Start.
_watched = st.session_state.get("run_id")
_working = bool(_watched) and read_status(run_path(_watched)).get("state") in ("queued", "running")
with st.expander("Hyperparameters (defaults are the paper's)" + (" · a run is going, see below" if _working else ""),
                 expanded=not _working):
    if info.demo:
        st.button(f"Use the demo budget ({describe_settings(info.demo)})",
                  key="demo", on_click=_use_preset, args=(name, info.demo), icon=":material/bolt:")
    if info.demo_note:
        st.caption(info.demo_note)
    entry = catalog().get(choice.get("model", {}).get("sample"), {})
    measured = measured_settings(entry, name)
    claim = recovery_claim(entry) if name == "rnp" and not measured else None
    if claim:  # the sample's trigger-recovery claim names the RNP settings its unlearned model had
        measured = claim["settings"].get("rnp") or None
    claim_nc = (claim["settings"].get("nc") or {}) if claim else None  # and its Neural Cleanse settings
    if measured:  # a claim measured off the paper's values: both one click away
        paper = {k: v for k, v in paper_defaults(info.config_cls).items() if k in measured}
        # one under the other, full width: side by side their labels are cut at 1000 px
        said = describe_settings(measured) + (f"; Neural Cleanse {describe_recovery(claim_nc)}" if claim_nc else "")
        st.button(f"Use this sample's measured settings ({said})", key="measured", on_click=_use_claim,
                  args=(name, measured, claim_nc, bool(claim)), icon=":material/verified:")
        paper_said = describe_settings(paper) + ("; Neural Cleanse's defaults" if claim else "")
        st.button(f"Back to the paper's ({paper_said})", key="paper", on_click=_use_claim,
                  args=(name, paper, {} if claim else None), icon=":material/menu_book:")
        st.caption(f"Trigger recovery on this sample: {recovery_sentence(entry, claim)}" if claim else
                   f"The Model page's efficacy table for this sample was measured with {describe_settings(measured)}.")
    try:
        params = render(name, info.config_cls)
        config_from_dict(info.config_cls, params)  # one sentence now rather than a failed run later
    except USER_ERRORS as e:
        show_error(e)
        params = None
    lower = below_paper(info.config_cls, params or {})
    if lower:
        st.info(f"This budget is below the paper's ({'; '.join(lower)}): results can differ from the published "
                "ones, and the defense's own cut may miss the backdoor; the sweep on Explore shows every cut.",
                icon=":material/speed:")

# The optional stages first, full width (their labels are cut off in a column at 1000 px), then
# the device and Start on one row.
with st.container():
    # Its starting value in Session State, not ``value``: a claim's one click ticks it before it exists.
    st.session_state.setdefault(f"recover_triggers_{name}", name == "rnp")
    recover = st.checkbox("Then recover the trigger per label (Neural Cleanse)", key=f"recover_triggers_{name}",
                          help="Slow on a CPU: a mask and pattern are optimised for every label in turn.")
    recovery_cost = st.empty()  # its measured cost, once the estimate below is made
    recover_on, recovery_params = "original", {}
    if recover:
        recovery_params = recovery_settings(measured=claim_nc)
    if recover and name == "rnp":
        recover_on = st.radio("Recover it on", RECOVER_ON, horizontal=True, key="recover_on",
                              format_func=RECOVERED_ON.get,
                              help="The unlearned model has lost the clean task but kept the backdoor (RNP's "
                                   "suggestion); the original model is Neural Cleanse's own setting.")
    # A sample's trigger is in the catalog; for one's own weights only when it was given.
    trigger_known = choice.get("trigger") is not None or "sample" in choice["model"]
    oracle = st.checkbox(
        "Then the trigger-aware oracle (a yardstick, not a defense)", value=False, key="oracle",
        disabled=not trigger_known,
        help="Learns which neurons the trigger needs and the clean task can spare, knowing the trigger, which no "
             "defense does; the Explore page then draws this defense's sweep against the best pruning could do. "
             "About as slow as 400 ANP iterations." if trigger_known else "Needs the trigger, which this model "
             "has none on record for.")
c1, _, c3 = st.columns([1, 2, 1], vertical_alignment="bottom")
devices = (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]
device = c1.selectbox("Device", devices, key="device")
request, refusal = None, None
if params is not None:
    request = RunRequest(defense=name, params=params, model=choice["model"], data=choice["data"],
                         trigger=choice.get("trigger"), device=device, recover_triggers=recover, recover_on=recover_on,
                         recovery_params=recovery_params, oracle=oracle and trigger_known, label=choice["label"])
    # the command line's preflight, before anything starts: a run the worker would refuse never starts
    refusal = cache.preflight_message(cache.request_key(request))
if refusal:
    st.error(refusal, icon=":material/block:")
elif request is not None:
    show_estimate(request, recover, recovery_cost)
if c3.button("Start", type="primary", key="start", disabled=request is None or refusal is not None, width="stretch",
             help=refusal):
    try:
        run_dir = start_run(request, runs_dir())
        st.session_state["run_id"] = run_dir.name
        st.toast(f"Started {run_dir.name}")
    except USER_ERRORS as e:
        show_error(e)
    else:
        st.rerun()  # the page again with the form folded, so the live charts come up near Start

# ---------------------------------------------------------------- runs and the live view

st.divider()
runs = list_runs(runs_dir())
if not runs:
    st.info("No runs yet in this runs folder; start one above (or with `prunescope run` on the command line).")
    st.stop()
ids = [r["run_id"] for r in runs]
by_id = {r["run_id"]: r for r in runs}
current = st.session_state.get("run_id")
watched = st.selectbox("Run to watch (newest first; runs started from the command line are here too)", ids,
                       index=ids.index(current) if current in ids else 0, format_func=lambda i: describe_run(by_id[i], state=False))
st.session_state["run_id"] = watched  # its state is the one status line below, kept live


def draw(run_id: str) -> bool:
    """Redraw the live charts from the run folder; returns whether the run has ended. A chart is
    drawn only once it has data (no empty axes for a defense without losses or snapshots)."""
    run_dir = run_path(run_id)
    view = live_view(run_dir)
    done = view.state == "done"
    st.progress(1.0 if done else view.fraction, text=status_line(view))
    if view.state == "failed":
        st.error(f"The run failed: {view.error or 'no reason recorded'}")
    elif view.state == "cancelled":
        st.warning("The run was cancelled." + (" Its sweep was finished first: explore it." if
                                               (run_dir / "sweep.json").exists() else ""))
    if not view.finished and st.button("Cancel the run", key="cancel"):
        cancel_run(run_dir)
        st.toast("Cancel sent; the worker stops at its next step.")
    cut = finished_cut(run_dir) if view.finished else None
    if view.baseline or cut:
        b1, b2, b3, b4 = st.columns(4)
        if view.baseline:
            b1.metric("Baseline ACC", fmt_rate(view.baseline["acc"]))
            b2.metric("Baseline ASR", fmt_rate(view.baseline["asr"]))
        if cut:
            b3.metric("ACC, own cut", fmt_rate(cut["acc"]), help=f"At the defense's own cut: {neurons(cut['n_pruned'])} pruned.")
            b4.metric("ASR, own cut", fmt_rate(cut["asr"]), help=f"At the defense's own cut: {neurons(cut['n_pruned'])} pruned.")
    if cut:
        st.caption(f"The defense's own cut prunes {neurons(cut['n_pruned'])}; every other cut is on Explore.")
        rows = cache.finished_run(run_id).cut_rows() if is_finished(run_dir) else []  # counts below the grid too
        costly = cut_cost_warning((view.baseline or {}).get("acc"), cut, rows)
        if costly:
            st.warning(costly, icon=":material/content_cut:")
        page_link("views/explore.py", "Explore it →", ":material/query_stats:")
    loss = figures.loss_curve(view.defense_steps)
    snaps = {}
    if view.snapshots:
        first, last = view.snapshots[0], view.snapshots[-1]
        snaps[f"step {first}"] = _flat(cache.snapshot(str(run_dir), first))
        if last != first:
            snaps[f"step {last}"] = _flat(cache.snapshot(str(run_dir), last))
    probes = figures.probe_figure(view.probes) if view.probes else None
    charts = []  # (key, figure), only those with data
    if loss.data:
        charts.append(("live_loss", loss))
    if snaps:
        defense = by_id.get(run_id, {}).get("config", {}).get("defense")
        charts.append(("live_hist", figures.snapshot_histogram(snaps, _default_cut(by_id.get(run_id)),
                                                               live_score_label(defense))))
    if probes is not None and probes.data:
        charts.append(("live_probes", probes))
    if charts:
        for col, (key, fig) in zip(st.columns(2), charts[:2]):
            with col:
                st.plotly_chart(fig, key=key)
        for key, fig in charts[2:]:
            st.plotly_chart(fig, key=key)
    elif not view.finished:
        st.caption("The live charts appear with the defense's first steps.")
    return view.finished


def _default_cut(run: dict | None):
    """The run's own fixed cut on mask values (ANP/RNP ``threshold``), for the live histogram."""
    if not run:
        return None
    cfg = run["config"]
    t = cfg.get("params", {}).get("threshold")
    if t is None and cfg.get("defense") in defenses:
        t = getattr(defenses[cfg["defense"]].config_cls(), "threshold", None)
    return t if isinstance(t, (int, float)) and not isinstance(t, bool) else None


def _flat(scores: dict):
    import numpy as np

    return np.concatenate([np.ravel(v) for v in scores.values()]) if scores else np.zeros(0)


@st.fragment(run_every=1)
def live(run_id: str) -> None:
    if draw(run_id):
        st.rerun()  # the run ended: redraw the whole page once, without the timer


try:
    if live_view(run_path(watched)).finished:
        draw(watched)
    else:
        live(watched)
except USER_ERRORS as e:
    show_error(e)
