"""Zoo page: a zoo scan (``prunescope scan --zoo MANIFEST``, many models in one command), followed
live while it runs, its table with a link to each model's Scan page, and how well the scan
separated the manifest's ground truth. It only reads the zoo's folder; the command line runs it."""
import time

import streamlit as st

from dashboard import zooview as zv
from dashboard.rundata import runs_dir
from defenses.scan.zoo import list_zoos, read_summary, read_zoo_status, worker_figures

st.title("Zoo: many models scanned, one table")
st.caption("Each model of a manifest gets the Scan page's scan, in a scan folder of its own; the zoo's table opens "
           "any of them on the Scan page.")
# No st.stop on this page: a stopped page loses the sidebar that the entry point draws after it.


def pick(zoos: list[dict]) -> dict:
    """The zoo in the URL (a link or a reload), else the newest; a pick goes into the URL."""
    ids = [z["zoo_id"] for z in zoos]
    by_id = {z["zoo_id"]: z for z in zoos}
    shown = zv.pick_zoo(ids, st.query_params.get("zoo"))

    def _open_picked() -> None:
        st.query_params["zoo"] = st.session_state["zoo_pick"]

    st.session_state["zoo_pick"] = shown  # the URL decides; a pick writes the URL before the rerun
    st.selectbox(f"Zoo scan ({len(zoos)}, newest first)", ids, key="zoo_pick", on_change=_open_picked,
                 format_func=lambda i: zv.describe_zoo(by_id[i]))
    st.query_params["zoo"] = shown
    with st.expander("Start another zoo scan"):
        st.markdown(zv.HOWTO)
        st.code(zv.EXAMPLE, language="csv")
    return by_id[shown]


def where(folder, cfg: dict) -> None:
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(cfg.get("created", 0)))
    signals = (cfg.get("settings") or {}).get("signals")
    st.caption(f"Manifest `{cfg.get('manifest')}` · started {started} · Ray: {cfg.get('address', 'local')}"
               + (f" · signals: {', '.join(signals)}" if signals else "") + f" · folder `{folder}`")


@st.fragment(run_every=2)
def live(folder, drawn: int) -> None:
    """The running zoo's progress, read every 2 s; the whole page is drawn again when a result lands
    (the table and the charts) or the zoo ends (without this timer)."""
    now = read_zoo_status(folder)
    if now.get("state") != "running" or zv.finished_count(now) != drawn:
        st.rerun()
    fraction, text = zv.progress(now)
    st.progress(fraction, text=text)


def progress(folder) -> None:
    status = read_zoo_status(folder)
    state = status.get("state", "?")
    if state == "running":
        live(folder, zv.finished_count(status))
    elif state in zv.ENDED:  # stopped, cancelled or failed: the bar where it stopped, and how to resume
        fraction, _ = zv.progress(status)
        st.progress(fraction, text=zv.ended_line(status))
        st.warning(zv.ENDED[state], icon=":material/pause_circle:")
    else:
        st.caption(zv.done_line(status))


def table(rows: list[dict], zoo_id: str) -> None:
    c1, c2 = st.columns([2, 3])
    name_part = c1.text_input("Filter by model name", key=f"zoo_name_{zoo_id}", placeholder="part of a name")
    chosen = c2.multiselect("Show only", zv.outcomes(rows), key=f"zoo_outcome_{zoo_id}",
                            placeholder="every state and verdict")
    frame = zv.table(rows, name_part, chosen)
    L = zv.LABELS
    # The columns a reader compares first lead (the verdict beside the truth); the name and its link
    # stay pinned while the rest scrolls sideways, as it does at 1000 px; the widths let the verdict fit there.
    order = [L["name"], zv.OPEN, *(L[k] for k in ("state", "probability", "verdict", "backdoored", "suspected_label",
                                                  "target", "label_confidence", "clean_accuracy", "seconds", "error"))]
    st.dataframe(frame, hide_index=True, width="stretch", key=f"zoo_table_{zoo_id}", column_order=order,
                 placeholder="", height=35 * (min(len(frame), 15) + 1) + 3,  # up to 15 rows without an inner scroll
                 column_config={
                     L["name"]: st.column_config.TextColumn(pinned=True),
                     zv.OPEN: st.column_config.LinkColumn(zv.OPEN, display_text="Open", pinned=True, width=50,
                                                          help="This model's scan on the Scan page, every signal's chart"),
                     # red above the scan's 0.5 decision, green below, as on the Scan page's gauge
                     L["probability"]: st.column_config.ProgressColumn(L["probability"], min_value=0.0, max_value=1.0,
                                                                       format="%.2f", color="auto-inverse", width=110),
                     L["state"]: st.column_config.TextColumn(width=70),
                     L["label_confidence"]: st.column_config.NumberColumn(format="%.2f"),
                     L["clean_accuracy"]: st.column_config.NumberColumn(format="percent"),
                     L["seconds"]: st.column_config.NumberColumn(format="%.0f"),
                     L["error"]: st.column_config.TextColumn(width="large"),
                 })
    st.caption(f"{len(frame)} of {len(rows)} models shown · click a column's header to sort.")


def failures(rows: list[dict]) -> None:
    fails = zv.failures(rows)
    if fails:
        with st.expander(f"Failed models ({len(fails)}), each with its reason"):
            for name, error in fails:
                st.markdown(f"`{name}`: {error}")


def charts(rows: list[dict]) -> None:
    if not zv.scored(rows):
        st.info("No model has finished yet: the charts appear with the first result.")
        return
    left, right = st.columns(2)
    left.plotly_chart(zv.histogram(rows), key="zoo_histogram")
    fig, _, sentence = zv.roc(rows)
    with right:
        if fig is None:
            st.info(sentence, icon=":material/info:")
        else:
            st.plotly_chart(fig, key="zoo_roc")
            st.caption(sentence)


zoos = list_zoos(runs_dir())
if not zoos:
    if "zoo" in st.query_params:
        del st.query_params["zoo"]
    st.info("No zoo scan yet. " + zv.HOWTO, icon=":material/grid_view:")
    st.code(zv.EXAMPLE, language="csv")
else:
    zoo = pick(zoos)
    where(zoo["path"], zoo["config"])
    progress(zoo["path"])
    summary = read_summary(zoo["path"])
    if not summary:
        st.info("The zoo's summary is not written yet: its first rows appear in a few seconds.")
    else:
        table(summary, zoo["zoo_id"])
        line = zv.workers_line(worker_figures(zoo["path"]))
        if line:
            st.caption(line)
        failures(summary)
        charts(summary)
