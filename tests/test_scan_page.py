"""The Scan page through streamlit.testing.v1.AppTest: it renders with its button, a real finished
scan (three cheap signals on the shipped clean sample) draws its verdict and leads to the Defend
page in one click, a running scan shows its progress and a failed one its one sentence, and the
Learn page's Scan tab names every signal. The runs folder is a temporary one (PRUNESCOPE_RUNS).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import scanview
from defenses.runs.folder import read_json, write_json
from defenses.scan import all_signals
from defenses.scan.folder import create_scan, execute_scan, load_verdict

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")
PAGE = str(Path(APP).parent / "views" / "scan.py")
DATA = {"dataset": "mnist5k", "clean_count": 500, "seed": 0}
CHEAP = {"signals": ["weights", "mmbd", "noise"], "settings": {"mmbd": {"steps": 10, "restarts": 2}}}


def no_exception(at: AppTest, where: str) -> None:
    assert not at.exception, f"{where}: {[e.value for e in at.exception]}"


def texts(at: AppTest) -> list[str]:
    return [e.value for kind in ("error", "info", "success", "warning") for e in getattr(at, kind)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A real scan folder, done: the clean sample with three cheap signals (seconds on a CPU)."""
    root = tmp_path_factory.mktemp("scanruns")
    folder = create_scan({"sample": "cnn_clean"}, DATA, CHEAP, root, device="cpu", label="clean control (cnn_clean)")
    execute_scan(folder)
    assert read_json(folder / "status.json")["state"] == "done"
    return root, folder


def test_scan_page_renders_with_its_button(runs):
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("views/scan.py").run()
    no_exception(at, "scan")
    assert not at.error, [e.value for e in at.error]
    assert at.button(key="scan_start").label == "Scan this model"
    assert any("30-90 s" in t for t in texts(at))  # how long it takes, said before the button
    assert any("No scan of this model yet" in t for t in texts(at))
    alone = AppTest.from_file(PAGE, default_timeout=120).run()  # the page file on its own, as the app test does
    no_exception(alone, "scan page alone")


def test_finished_scan_shows_its_verdict_and_leads_to_defend(finished, monkeypatch):
    root, folder = finished
    monkeypatch.setenv("PRUNESCOPE_RUNS", str(root))
    verdict = load_verdict(folder)
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["scan"] = folder.name
    at.run()
    at.switch_page("views/scan.py").run()
    no_exception(at, "scan verdict")
    assert at.selectbox(key="scan_pick").value == folder.name  # the scan in the URL is the one shown
    sentence = scanview.headline(verdict)
    assert sentence.startswith(("Backdoor likely", "No evidence of a backdoor found"))
    box = at.error if scanview.likely(verdict) else at.info
    assert sentence in [e.value for e in box], texts(at)
    assert [w.value for w in at.warning] == verdict.notes  # each note once, as a warning
    titles = [all_signals()[n].title for n in CHEAP["signals"]]
    assert list(at.dataframe[0].value["signal"]) == titles
    charts = at.get("plotly_chart")
    assert len(charts) == 2 + len(CHEAP["signals"])  # the gauge, the outlier chart, one per signal
    assert at.get("download_button")  # report.html, written by execute_scan
    # the one click to the next step: this scan's model is not the one in use, so it becomes the one in use
    defend = at.button(key="scan_defend")
    assert str(verdict.label) in defend.label
    defend.click().run()
    no_exception(at, "defend after scan")
    assert at.session_state["choice"]["model"] == {"sample": "cnn_clean"}
    assert at.session_state[scanview.SCAN_TARGET] == verdict.label
    hint = scanview.defend_hint(at.session_state, at.session_state["choice"])
    assert hint and f"label {verdict.label}" in hint.replace("label is", "label")
    assert hint in [i.value for i in at.info], [i.value for i in at.info]  # the Defend page's line


def test_scan_button_starts_then_shows_the_same_scan(runs, monkeypatch):
    """The click creates the folder and starts its worker (faked here: the real one runs every signal)."""
    started = []

    def fake_start(d):
        started.append(Path(d))
        status = read_json(Path(d) / "status.json", {})
        write_json(Path(d) / "status.json", {**status, "state": "running", "pid": os.getpid(),
                                               "progress": {"done": 1, "total": 5, "stage": "weights"}})

    monkeypatch.setattr(scanview, "start_scan", fake_start)
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("views/scan.py").run()
    at.button(key="scan_start").click().run()
    no_exception(at, "scan started")
    assert len(started) == 1 and started[0].parent == runs / "scans"
    bar = at.get("progress")[0].proto
    assert "running MM-BD maximum margin" in bar.text and "1 of 5" in bar.text, bar.text
    at.button(key="scan_start").click().run()  # already under way: not started twice
    assert len(started) == 1
    status = read_json(started[0] / "status.json")
    write_json(started[0] / "status.json", {**status, "state": "failed", "error": "The model fell over."})
    at.run()
    no_exception(at, "scan failed")
    assert any("The model fell over." in e.value for e in at.error), [e.value for e in at.error]
    at.button(key="scan_start").click().run()  # a failed scan is started again in the same folder
    assert started == [started[0], started[0]]
    # an earlier scan of another model, opened from the list, goes into the URL
    other = create_scan({"sample": "cnn_clean"}, DATA, CHEAP, runs, label="clean control (cnn_clean)")
    at.run()
    at.selectbox(key="scan_pick").set_value(other.name).run()
    no_exception(at, "scan picked")
    assert at.query_params["scan"] == other.name
    assert "cnn_clean" in at.subheader[0].value


def test_learn_scan_tab_names_every_signal(runs):
    at = AppTest.from_file(str(Path(APP).parent / "views" / "learn.py"), default_timeout=60).run()
    no_exception(at, "learn")
    assert [t.label for t in at.tabs][-1] == "Scan"
    scan_tab = "\n".join(m.value for m in at.tabs[-1].markdown)
    for info in all_signals().values():
        assert info.title in scan_tab and info.paper in scan_tab
    assert "never that the model is clean" in scan_tab


def test_defend_hint_only_for_the_model_in_use():
    verdict = type("V", (), {"label": 3, "probability": 0.9})()
    choice = {"model": {"sample": "cnn_badnets"}}
    state = {}
    assert scanview.defend_hint(state, choice) is None
    scanview.remember_target(state, verdict, {"sample": "cnn_badnets"})
    assert scanview.defend_hint(state, choice).startswith("The scan suspects label 3")
    assert scanview.defend_hint(state, {"model": {"sample": "cnn_blend"}}) is None
