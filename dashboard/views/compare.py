"""Compare page: finished runs of different defenses on the same model, side by side."""
import pandas as pd
import streamlit as st

from dashboard import cache, figures, rundata
from dashboard.common import USER_ERRORS, fmt_rate, show_error

st.title("Compare defenses")
runs = rundata.explorable_runs()
if not runs:
    st.info("No finished run yet: start one on the Defend page.")
    st.stop()

groups: dict[str, list[dict]] = {}
for r in runs:
    groups.setdefault(rundata.model_label(r["config"]), []).append(r)
# The model with the most finished runs first (a stable sort keeps the newest first among equals):
# comparing needs at least two.
models = sorted(groups, key=lambda m: -len(groups[m]))
model = st.selectbox("Model", models, key="compare_model",
                     format_func=lambda m: f"{m} ({len(groups[m])} finished run{'s' * (len(groups[m]) > 1)})")
ids = [r["run_id"] for r in groups[model]]
chosen = st.multiselect("Runs", ids, default=ids[:6], key="compare_runs",
                        format_func=lambda i: rundata.describe_run(next(r for r in groups[model] if r["run_id"] == i)))
if not chosen:
    st.stop()

loaded, table, with_oracle = [], [], False
for run_id in chosen:
    try:
        run = cache.finished_run(run_id)
    except USER_ERRORS as e:
        show_error(e)
        continue
    loaded.append({"label": f"{run.defense} · {run_id[-4:]}", "rows": run.sweep.get("count", [])})
    if run.oracle:  # the yardstick of what pruning could do, on this run's neuron layers
        loaded.append({"label": f"oracle · {run_id[-4:]}", "rows": run.oracle["rows"]})
        with_oracle = True
    b, d = run.result.get("baseline", {}), run.result.get("default", {})
    thr = run.result.get("threshold")
    table.append({"defense": run.defense,
                  "default cut": f"{thr:g}" if isinstance(thr, (int, float)) else "per layer",  # one type per column (Arrow)
                  "neurons pruned": d.get("n_pruned"), "ACC before": fmt_rate(b.get("acc")),
                  "ACC after": fmt_rate(d.get("acc")), "ASR before": fmt_rate(b.get("asr")),
                  "ASR after": fmt_rate(d.get("asr")),
                  "time (s)": round(run.result.get("timings", {}).get("total_s", float("nan")), 1),
                  "run": rundata.short_run(run_id)})  # last and short: the numbers are what is compared
st.dataframe(pd.DataFrame(table), hide_index=True, width="stretch")
st.caption("Defenses score on different scales (masks vs. constants), so the overlay uses the sweep by number of "
           "neurons pruned. The right panel needs the test trigger." +
           (" An oracle curve knows the trigger: it is the yardstick of what pruning could do (see Learn)."
            if with_oracle else ""))
st.plotly_chart(figures.compare_sweeps(loaded), key="compare_chart")
