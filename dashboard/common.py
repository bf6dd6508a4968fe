"""What every page shares: the session's choices, the default sample, errors in one sentence.

Session state holds ids and choices only:
- ``choice``: the model/data/trigger choice, ``{"model", "data", "trigger", "label"}`` as the
  RunRequest wants them (set on the Model page; the first BadNets sample until then);
- ``run_id``: the run being watched or explored (the run itself lives in the runs folder);
- ``thresholds``: the chosen threshold per run id, kept across pages.
"""
from __future__ import annotations

import streamlit as st

from sample_models import catalog

from . import choices
from .modelsetup import USER_ERRORS, user_message
from .rundata import fmt_rate, runs_dir

APP_TITLE = "prunescope"
TAGLINE = "Neuron-pruning defenses against backdoors, live"
# The words for defenses.runs.folder.RECOVER_ON, shared by the Defend page's choice and the Triggers page.
RECOVERED_ON = {"unlearned": "RNP's unlearned model", "original": "the original model"}


def default_sample() -> str | None:
    """The first BadNets showcase in the catalog, where a first click shows a defense working (else
    the first BadNets sample, else the first sample)."""
    cat = catalog()
    for want in (lambda e: e.get("attack") == "badnets" and e.get("role") == "showcase",
                 lambda e: e.get("attack") == "badnets"):
        for name, entry in cat.items():
            if want(entry):
                return name
    return next(iter(cat), None)


def sample_choice(name: str, clean_count: int = 500) -> dict:
    entry = catalog()[name]
    return {"model": {"sample": name},
            "data": {"dataset": entry.get("dataset", "mnist5k"), "clean_count": int(clean_count), "seed": 0},
            "trigger": None,  # None: the worker uses the sample's own trigger from the catalog
            "label": f"{entry['title']} ({name})"}


def current_choice() -> dict | None:
    """The model new runs are on: the session's choice; in a new session (a reload, a link) the own
    model or sample its URL names, else the last one chosen (kept on disk), else the default."""
    choice = st.session_state.get("choice")
    if choice is None:
        wanted = st.query_params.get("sample")
        choice = (choices.recall(st.query_params.get("model", ""), runs_dir())
                  or (sample_choice(wanted) if wanted in catalog() else None)
                  or choices.last(runs_dir()))
        if choice and "sample" in choice["model"] and choice["model"]["sample"] not in catalog():
            choice = None  # the last sample chosen was removed from the catalog
        if choice is None:
            name = default_sample()
            choice = sample_choice(name) if name else None
        if choice is not None:
            st.session_state["choice"] = choice
    return choice


def set_choice(new: dict) -> str | None:
    """Make ``new`` the model new runs are on, kept on disk for a reload. Returns the label of the
    model it replaced when what is measured changed (another model, data or trigger), else None."""
    old = st.session_state.get("choice")
    same = old is not None and {k: v for k, v in old.items() if k != "key"} == {k: v for k, v in new.items() if k != "key"}
    if same:
        return None
    st.session_state["choice"] = choices.remember(new, runs_dir())
    return old["label"] if old else None


# The pages whose work is on the chosen model; the others show a run, and their URL names that run
# (a model there would read as the model of the run shown).
CHOICE_PAGES = ("model", "scan", "defend")


def keep_choice_in_url(page: str = "model") -> None:
    """Write the chosen model into the URL of the pages that work on it: Streamlit clears query
    parameters on a page switch, and a reload or a shared link must open the same model."""
    choice = current_choice() if page in CHOICE_PAGES else None
    model = (choice or {}).get("model", {})
    want = {"sample": model.get("sample"), "model": None if model.get("sample") else (choice or {}).get("key")}
    for name, value in want.items():
        if value:
            st.query_params[name] = value
        elif name in st.query_params:
            del st.query_params[name]


def pick_finished_run(key: str):
    """The finished-run picker of Explore and Neuron: starts at the run in the URL (a link or a
    reload), else the session's run, else the newest. Returns (run id, the loaded run); stops the
    page, saying why, when there is none or it cannot be read."""
    from .cache import finished_run
    from .rundata import describe_run, explorable_runs

    runs = explorable_runs()
    if not runs:
        st.info("No finished run yet: start one on the Defend page (or `prunescope run` on the command line).")
        st.stop()
    ids = [r["run_id"] for r in runs]
    by_id = {r["run_id"]: r for r in runs}
    if st.session_state.get(key) not in ids:  # first visit, or the widget was cleared by a page switch
        st.session_state[key] = next((i for i in (st.query_params.get("run"), st.session_state.get("run_id"))
                                      if i in ids), ids[0])
    run_id = st.selectbox("Run", ids, key=key, format_func=lambda i: describe_run(by_id[i]))
    st.session_state["run_id"] = run_id
    try:
        return run_id, finished_run(run_id)
    except USER_ERRORS as e:
        show_error(e)
        st.stop()


def show_error(e: BaseException) -> None:
    """One sentence in red; the app keeps running and keeps what it has."""
    st.error(user_message(e))


def page_link(page: str, label: str, icon: str | None = None) -> None:
    """A link to another page; plain text when the page runs on its own (outside st.navigation,
    as in a test of one page file), where Streamlit knows no other page."""
    from streamlit.errors import StreamlitAPIException

    try:
        st.page_link(page, label=label, icon=icon)
    except StreamlitAPIException:
        st.caption(label.rstrip(" →") + f" ({page}).")


def saved_threshold(run_id: str):
    return st.session_state.get("thresholds", {}).get(run_id)


def save_threshold(run_id: str, value: float) -> None:
    st.session_state.setdefault("thresholds", {})[run_id] = value


def sidebar() -> None:
    """The sidebar's captions, drawn where the caller is (the entry point puts them in the sidebar)."""
    st.caption(f"**{APP_TITLE}** · {TAGLINE}")
    choice = current_choice()
    if choice:
        # the Model page's choice, which Defend starts runs on; Explore may show a run of another model
        st.caption(f"Model for new runs: {choice['label']}")
    if st.session_state.get("run_id"):
        st.caption(f"Run: `{st.session_state['run_id']}`")
    st.caption(f"Runs folder: `{runs_dir()}`")


__all__ = ["USER_ERRORS", "APP_TITLE", "TAGLINE", "current_choice", "default_sample", "fmt_rate", "keep_choice_in_url",
           "page_link", "pick_finished_run", "sample_choice", "save_threshold", "set_choice", "saved_threshold", "show_error", "sidebar"]
