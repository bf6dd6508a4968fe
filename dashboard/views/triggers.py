"""Triggers page: RNP's recovered triggers per label, the anomaly index, and captum attributions."""
import json

import streamlit as st

from dashboard import aids, cache, figures, rundata
from dashboard.attributions import METHODS
from defenses.runs.estimate import human_seconds
from dashboard.recovery_form import recovery_settings
from defenses.runs.recover_run import cancel_recovery, recovery_state, recovery_subjects, start_recovery
from sample_models import catalog
from dashboard.common import (RECOVERED_ON, USER_ERRORS, fmt_rate, save_threshold, saved_threshold,
                              show_error)

st.title("Recovered triggers")
st.caption("Neural Cleanse reverse-engineers, for every label, the smallest mask and pattern that turn clean images "
           "into that label; a backdoor target's comes out much smaller than the others. After RNP it runs by "
           "default on the *unlearned* model, which has lost its clean features but kept the backdoor; any run can "
           "instead recover triggers on the original model.")


def recover_for_a_finished_run(finished: list[dict]) -> None:
    """Recovery for a run that finished without it (the ANP demo, say): started here, in a process
    of its own (defenses.runs.recover_run), into the run's folder; its progress is drawn live."""
    without = [r for r in finished if not (r["path"] / "triggers" / "recovery.json").exists()]
    if not without:
        st.caption("Every finished run has its triggers recovered.")
        return
    by = {r["run_id"]: r for r in without}
    pick = st.selectbox("Finished run", list(by), key="recover_run_pick",
                        format_func=lambda i: rundata.describe_run(by[i], state=False))
    run_dir = by[pick]["path"]
    job = recovery_state(run_dir)
    if job.get("state") in ("queued", "running"):
        watch_recovery(str(run_dir))
        return
    if job.get("state") in ("failed", "cancelled"):
        st.error(f"The last recovery for this run {job['state']}" + (f": {job['error']}" if job.get("error") else "."))
    subjects = recovery_subjects(run_dir)
    on = st.radio("Recover on", subjects, horizontal=True, key="recover_run_on", format_func=RECOVERED_ON.get,
                  index=subjects.index("unlearned") if "unlearned" in subjects else 0)
    params = recovery_settings("recover_run")
    cfg = by[pick]["config"]
    try:
        with st.spinner("Measuring a few recovery steps to estimate the time…"):
            cost = cache.recovery_estimate(json.dumps({k: cfg.get(k) for k in ("model", "data", "trigger", "device")},
                                                      sort_keys=True), json.dumps(params, sort_keys=True))
        st.caption(f":material/schedule: About **{human_seconds(cost['seconds'])}** on this machine now "
                   f"({cost['name']}).")
    except USER_ERRORS as e:
        show_error(e)
    if st.button("Recover the triggers", type="primary", key="recover_run_start", icon=":material/target:"):
        try:
            start_recovery(run_dir, on, params)
        except USER_ERRORS as e:
            show_error(e)
        else:
            st.rerun()


@st.fragment(run_every=1)
def watch_recovery(run_dir: str) -> None:
    job = recovery_state(run_dir)
    if job.get("state") not in ("queued", "running"):
        st.rerun()  # ended: the whole page again, with the triggers (or the reason it failed)
    step, total = int(job.get("step") or 0), int(job.get("total") or 0)
    left = ""
    if step and total and job.get("started") and job.get("updated"):
        pace = (job["updated"] - job["started"]) / step
        left = f" · about {human_seconds(max(1.0, pace * (total - step)))} left"
    st.progress(step / total if total else 0.0,
                text=f"Recovering triggers: step {step} of {total or '?'}{left}" if total else "Loading the run's model ...")
    if st.button("Cancel the recovery", key="recover_run_cancel") and job.get("pid"):
        cancel_recovery(run_dir)


finished = rundata.explorable_runs()
runs = [r for r in finished if (r["path"] / "triggers" / "recovery.json").exists()]
if not runs:
    st.info("No run has recovered triggers yet. Recover them for a finished run here, or tick trigger recovery "
            "on the Defend page before Start." if finished else
            "No finished run yet: start one on the Defend page, with trigger recovery ticked or not.")
    if finished:
        recover_for_a_finished_run(finished)
    st.stop()
with st.expander("Recover triggers for another finished run"):
    recover_for_a_finished_run(finished)
ids = [r["run_id"] for r in runs]
by_id = {r["run_id"]: r for r in runs}
if st.session_state.get("triggers_run") not in ids:
    st.session_state["triggers_run"] = st.session_state.get("run_id") if st.session_state.get("run_id") in ids else ids[0]
run_id = st.selectbox("Run", ids, key="triggers_run", format_func=lambda i: rundata.describe_run(by_id[i]))

try:
    run = cache.finished_run(run_id)
    rec = cache.recovered_triggers(str(run.path), (run.path / "triggers" / "recovery.json").stat().st_mtime)
    shape = run.result.get("input_shape")
    truth = cache.true_trigger(json.dumps(run.result.get("trigger")), json.dumps(shape)) if shape else None
except USER_ERRORS as e:
    show_error(e)
    st.stop()

on = RECOVERED_ON.get(rec.get("recovered_on"))
if on:
    st.caption(f"Recovered on {on}.")
# a clean control (attack "none") has a test trigger for its ASR, but no attacker's trigger
attacked = catalog().get(run.config.get("model", {}).get("sample"), {}).get("attack") != "none"
st.plotly_chart(figures.trigger_grid(rec["labels"], rec["masks"], rec["patterns"], rec["flagged"],
                                     *(truth if truth else (None, None)), attacked=attacked), key="trigger_grid")
left, right = st.columns(2)
with left:
    st.plotly_chart(figures.anomaly_bar(rec["labels"], rec["anomaly"], rec["flagged"], rec["threshold"]),
                    key="anomaly_chart")
with right:
    asr = rec.get("asr_on_original") or [None] * len(rec["labels"])
    # short column names: the whole table fits beside the chart at 1000 px
    st.dataframe([{"label": t, "L1": round(rec["l1"][i], 1), "anomaly": round(rec["anomaly"][i], 2),
                   "flips orig.": fmt_rate(asr[i])}  # flagged labels: the red bars and ★ above
                  for i, t in enumerate(rec["labels"])], hide_index=True, width="stretch",
                 column_config={"L1": st.column_config.NumberColumn("L1", help="The recovered mask's size (L1 norm)."),
                                "flips orig.": st.column_config.TextColumn(
                                    "flips orig.", help="How often the recovered trigger flips the original model "
                                                        "to this label. A large mask flips almost any model (an "
                                                        "adversarial patch), so read it beside L1: the attacker's "
                                                        "trigger is a small mask that flips it.")})
short = aids.short_recovery_warning(rec)
if short:
    st.warning(short, icon=":material/warning:")

st.subheader("Where the model looks, before and after pruning")
# the methods in one row above the slider: in a narrow column "IntegratedGradients" wrapped at 1000 px
method = st.radio("Attribution", METHODS, key="attr_method", horizontal=True)
options = run.cuts
start = saved_threshold(run_id) if saved_threshold(run_id) in options else rundata.default_threshold(run)
attr_key = f"attr_threshold_{run_id}"  # one per run, as on Explore: a grid point of one run is not another's
if st.session_state.get(attr_key) not in options:
    st.session_state[attr_key] = start
cut = st.select_slider("Pruned at", options=options, key=attr_key, format_func=run.slider_text)
save_threshold(run_id, cut)
try:
    maps = cache.attributions(run_id, cut, method)
except USER_ERRORS as e:
    show_error(e)
    st.stop()
titles = [f"{t}<br>→ {a} / {b}" for t, a, b in zip(maps["titles"], maps["pred_before"], maps["pred_after"])]
st.plotly_chart(figures.attribution_figure(maps["images"], maps["before"], maps["after"], titles, method),
                key="attr_chart")
st.caption("Column titles give the true label (clean or triggered image; for a poisoned test set, its own images, "
           "numbered) and the prediction before / after pruning. On a backdoored model the triggered inputs' "
           "evidence sits on the trigger; after a good cut it moves back to the digit.")
