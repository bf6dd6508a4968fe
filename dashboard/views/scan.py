"""Scan page: is the model in use backdoored, and which label? Starts a scan in a worker process
(``defenses.scan.folder``), follows it live, and draws its verdict and every signal's chart."""
import streamlit as st
import torch

from dashboard import scanview as sv
from dashboard.common import USER_ERRORS, current_choice, page_link, set_choice, show_error
from dashboard.rundata import runs_dir
from defenses.scan import all_signals
from defenses.scan.figures import outlier_figure, probability_gauge, signal_figure, trigger_figure
from defenses.scan.folder import list_scans, load_verdict, read_scan_status

st.title("Scan: is this model backdoored, and which label?")
st.caption("Five tests from the literature, each asking whether one label stands out, combined into one probability "
           "and one suspected target. None of them needs the trigger.")
page_link("views/learn.py", "What each signal measures (Learn, Scan tab) →", ":material/school:")

choice = current_choice()
if choice is None:
    st.warning("Choose a model on the Model page first.")
else:
    st.caption(f"Model: **{choice['label']}** (change it on the Model page), with its "
               f"{choice['data'].get('clean_count', '?')} clean images.")
    st.info(sv.DURATION, icon=":material/timer:")
    c1, _, c3 = st.columns([2, 1, 2], vertical_alignment="bottom")
    devices = (["cuda"] if torch.cuda.is_available() else []) + ["cpu"]
    device = c1.selectbox("Device", devices, key="scan_device")
    if c3.button("Scan this model", type="primary", key="scan_start", width="stretch", icon=":material/radar:"):
        try:
            folder, what = sv.start_or_resume(choice, device)
            st.session_state["scan_shown"] = {"model": sv.model_key(choice["model"]), "id": folder.name}
            st.query_params["scan"] = folder.name
            st.toast({"done": "This model was scanned already: its verdict is below.",
                      "running": "This scan is already under way.",
                      "resumed": "Resumed the scan from the signals it had finished.",
                      "started": f"Started {folder.name}."}[what])
        except USER_ERRORS as e:
            show_error(e)

# ---------------------------------------------------------------- which scan to show

scans = list_scans(runs_dir())
ids = [r["scan_id"] for r in scans]
by_id = {r["scan_id"]: r for r in scans}
shown = sv.pick_scan(ids, st.query_params.get("scan"), st.session_state.get("scan_shown"), choice)


def _open_picked() -> None:
    picked = st.session_state.get("scan_pick")
    if picked:
        st.query_params["scan"] = picked
        st.session_state["scan_shown"] = {"model": sv.model_key(choice["model"]) if choice else None, "id": picked}


if scans:
    with st.expander(f"Earlier scans ({len(scans)}), newest first; scans from the command line are here too"):
        st.session_state["scan_pick"] = shown
        st.selectbox("Open a scan", ids, key="scan_pick", format_func=lambda i: sv.describe_scan(by_id[i]),
                     placeholder="Choose a scan", on_change=_open_picked)
if shown is None:
    if "scan" in st.query_params:
        del st.query_params["scan"]
    st.info("No scan of this model yet: start one above." if choice else "No scan to show yet.")
    st.stop()
st.query_params["scan"] = shown  # a reload, or a link, opens the same scan

row = by_id[shown]
folder, cfg = row["path"], row["config"]
st.divider()
st.subheader(f"Scan of {cfg.get('label') or cfg['model']}")
st.caption(f"`{shown}` · data: {cfg.get('data')} · folder: `{folder}`")


@st.fragment(run_every=1)
def live() -> None:
    """The running scan's progress, read from its folder every second."""
    status = read_scan_status(folder)
    if status.get("state") in sv.FINAL:
        st.rerun()  # it ended: redraw the whole page once, without the timer
    fraction, text = sv.progress(status, cfg)
    st.progress(fraction, text=text)
    if st.button("Cancel the scan", key="scan_cancel"):
        if sv.cancel_scan(folder):
            st.toast("Cancel sent; the signals already done are kept, and a new scan resumes from them.")


def verdict_card(v) -> None:
    gauge, words = st.columns([1, 2], vertical_alignment="center")
    gauge.plotly_chart(probability_gauge(v), key="scan_gauge")
    with words:
        # no evidence is not "clean": blue, not green
        (st.error if sv.likely(v) else st.info)(sv.headline(v),
                                                 icon=":material/gpp_bad:" if sv.likely(v) else ":material/gpp_maybe:")
        if sv.likely(v):
            st.metric("Suspected target label", v.label, help=f"Confidence {v.label_confidence:.2f}: the softmax of "
                                                                "the signals' combined per-label evidence.")
        else:
            st.caption(f"The most suspicious label is {v.label} (confidence {v.label_confidence:.2f}), "
                       "below the scan's threshold for a backdoor.")
        acc = "" if v.clean_accuracy is None else f" · clean accuracy {100 * v.clean_accuracy:.1f}%"
        st.caption(f"{len(v.signals)} signals in {v.seconds:.0f} s{acc} · calibration: "
                   f"{v.calibration.get('fitted_on', 'unknown')}.")
    for note in v.notes:
        st.warning(note, icon=":material/warning:")


def next_step(v) -> None:
    same = choice is not None and sv.model_key(choice["model"]) == sv.model_key(cfg["model"])
    if st.button(sv.defend_label(v, same), key="scan_defend", type="primary" if sv.likely(v) else "secondary", icon=":material/shield:"):
        if not same:
            set_choice(sv.choice_from_scan(cfg))
        sv.remember_target(st.session_state, v, cfg["model"])
        st.switch_page("views/defend.py")


def charts(v) -> None:
    st.dataframe(sv.signal_rows(v), hide_index=True, width="stretch")
    st.caption("Outlier score: how many median absolute deviations the most suspicious label stands above the "
               "median label (over 20 says no more). Paper's own rule: the signal's paper's test on its own.")
    st.plotly_chart(outlier_figure(v), key="scan_outliers")
    info = all_signals()
    results = list(v.signals.values())
    for i in range(0, len(results), 2):
        for col, r in zip(st.columns(2), results[i:i + 2]):
            with col:
                st.plotly_chart(signal_figure(r), key=f"scan_signal_{r.name}")
                if r.name in info:
                    st.caption(f"{info[r.name].title} measures {info[r.name].measures} ({info[r.name].paper}).")
    trig = trigger_figure(v.signals["cleanse"]) if "cleanse" in v.signals else None
    if trig is not None:
        left, right = st.columns([1, 2], vertical_alignment="center")
        left.plotly_chart(trig, key="scan_trigger")
        right.caption("Neural Cleanse's smallest mask and pattern that send clean images to the suspected label, "
                      "found without the trigger: a real backdoor's often looks like the attacker's patch.")


status = read_scan_status(folder)
state = status.get("state", "queued")
if state not in sv.FINAL:
    live()
    st.stop()
if state == "failed":
    reason = (status.get("error") or "no reason recorded").rstrip(".")
    st.error(f"The scan failed: {reason}. Scan the model again to resume from the signals it had finished.",
             icon=":material/error:")
    st.stop()
if state == "cancelled":
    st.warning("The scan was cancelled. Scan the model again to resume from the signals it had finished.",
               icon=":material/cancel:")
    st.stop()
try:
    verdict = load_verdict(folder)
    if verdict is None:
        raise FileNotFoundError(f"The scan {shown} is marked done but has no verdict.json.")
    verdict_card(verdict)
    next_step(verdict)
    charts(verdict)
except USER_ERRORS as e:
    show_error(e)
    st.stop()
report = folder / "report.html"
if report.exists():
    st.download_button("Download the report (one HTML file, opens offline)", data=report.read_bytes(),
                       file_name=f"{shown}-report.html", mime="text/html", key="scan_report",
                       icon=":material/download:")
