"""The Zoo page through streamlit.testing.v1.AppTest, on zoo folders written here the way
``defenses.scan.zoo`` writes them (zoo.json, status.json, summary.csv by ``write_summary``), so no
Ray and no scan runs: the list and the URL, the table and its filters, the ROC curve's AUC against
``roc_auc``, the failed models' sentences, a running zoo's progress, a stopped one's sentence, and
the how-to with no zoo. The runs folder is a temporary one (PRUNESCOPE_RUNS).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from dashboard import zooview
from defenses.runs.folder import write_json
from defenses.scan.calibrate import roc_auc
from defenses.scan.zoo import read_summary, truth_and_scores, write_summary, zoos_dir

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard" / "app.py")
PAGE = str(ROOT / "dashboard" / "views" / "zoo.py")
ERROR = "model wrong: the checkpoint's weights do not fit a cnn of width 32 (conv1 has 16 channels)."


def row(name: str, p: float | None = None, truth: str = "", target="", state: str = "done", error: str = "") -> dict:
    """One summary.csv row as ``scan_zoo`` writes it (a failed one has no scan and no probability)."""
    out = {"name": name, "state": state, "backdoored": truth, "target": target, "file": f"{name}.safetensors",
           "scan_id": "" if state == "failed" else f"20260101-000000-{name}", "error": error}
    if p is not None:
        out.update(probability=p, verdict="backdoor likely" if p >= 0.5 else "no evidence", suspected_label=3,
                   label_confidence=0.41, clean_accuracy=0.985, seconds=42.5)
    return out


def make_zoo(runs: Path, rows: list[dict], zoo_id: str = "zoo-aaaaaaaa", state: str = "done", manifest: str = "zoo.csv",
             created: float | None = None, **status) -> Path:
    d = zoos_dir(runs) / zoo_id
    d.mkdir(parents=True)
    write_json(d / "zoo.json", {"zoo_id": zoo_id, "manifest": f"/data/{manifest}", "created": created or time.time(),
                                "settings": {}, "device": "cpu", "address": "local",
                                "rows": [{"name": r["name"]} for r in rows]})
    write_json(d / "status.json", {"state": state, "pid": os.getpid(), "host": socket.gethostname(),
                                   "started": time.time() - 600, "finished": time.time(), "total": len(rows),
                                   "skipped": 0, "done": sum(r["state"] == "done" for r in rows),
                                   "failed": sum(r["state"] == "failed" for r in rows), "running": 0,
                                   "seconds_left": 0, **status})
    write_summary(d, rows)
    return d


SIX = [row("bd_a", 0.93, "yes", 0), row("bd_b", 0.81, "yes", 3), row("bd_c", 0.88, "yes", 7),
       row("clean_a", 0.12, "no"), row("clean_b", 0.2, "no"), row("broken", state="failed", truth="yes", error=ERROR)]


def no_exception(at: AppTest, where: str) -> None:
    assert not at.exception, f"{where}: {[e.value for e in at.exception]}"


def zoo_page(query: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    at.switch_page("views/zoo.py").run()
    no_exception(at, "zoo")
    return at


def chart(at: AppTest, key_part: str) -> dict:
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if key_part in c.proto.id]
    assert len(specs) == 1, [c.proto.id for c in at.get("plotly_chart")]
    return specs[0]


def texts(at: AppTest) -> list[str]:
    return [e.value for kind in ("error", "info", "success", "warning", "caption", "markdown") for e in getattr(at, kind)]


def test_no_zoo_says_how_to_start_one(runs):
    at = zoo_page()
    assert not at.error
    (info,) = at.info
    assert "prunescope scan --zoo models.csv" in info.value and "Scan a whole zoo" in info.value
    assert at.code[0].value.splitlines()[0] == "name,arch,checkpoint,arch_kwargs,backdoored,target"
    assert len(at.code[0].value.splitlines()) == 3
    assert any("Runs folder" in c.value for c in at.sidebar.caption)  # the page does not stop before the sidebar
    alone = AppTest.from_file(PAGE, default_timeout=60).run()  # the page file on its own, as the app test does
    no_exception(alone, "zoo page alone")


def test_finished_zoo_table_roc_and_failures(runs):
    d = make_zoo(runs, SIX)
    at = zoo_page()
    assert not at.error, [e.value for e in at.error]
    assert "Finished in 10 min: 5 of 6 models scanned, 1 failed." in texts(at)
    picker = at.selectbox(key="zoo_pick")
    assert picker.value == d.name and picker.options == ["zoo.csv  ·  done  ·  6 models"]
    assert at.query_params["zoo"] == d.name
    frame = at.dataframe[0].value
    assert list(frame[zooview.LABELS["name"]]) == [r["name"] for r in SIX]
    assert list(frame.columns) == [*zooview.LABELS.values(), zooview.OPEN]
    assert list(frame[zooview.OPEN][:5]) == [f"scan?scan={r['scan_id']}" for r in SIX[:5]]
    assert frame[zooview.OPEN].isna()[5]  # the failed model has no scan to open
    assert frame["P(backdoor)"].dtype.kind == "f"  # numbers, so a click on the header sorts them as numbers
    # the ROC curve's AUC is the calibration module's, on the finished rows with ground truth
    y, p = truth_and_scores(read_summary(d))
    assert (y, len(p)) == ([1, 1, 1, 0, 0], 5)
    assert roc_auc(y, p) == 1.0
    assert chart(at, "zoo_roc")["layout"]["title"]["text"] == "ROC curve · AUC 1.00"
    assert any(t.startswith("AUC over 5 models with ground truth (3 backdoored, 2 clean)") for t in texts(at))
    hist = chart(at, "zoo_histogram")
    assert [t["name"] for t in hist["data"]] == ["backdoored (3)", "clean (2)", "decision at 0.5"]
    assert hist["layout"]["shapes"][0]["x0"] == 0.5  # the decision line
    (failed,) = [e for e in at.expander if e.label.startswith("Failed models (1)")]
    assert [m.value for m in failed.markdown] == [f"`broken`: {ERROR}"]


def test_filters_keep_the_matching_rows(runs):
    d = make_zoo(runs, SIX)
    at = zoo_page()
    at.text_input(key=f"zoo_name_{d.name}").set_value("clean").run()
    no_exception(at, "name filter")
    assert list(at.dataframe[0].value["Model"]) == ["clean_a", "clean_b"]
    at.text_input(key=f"zoo_name_{d.name}").set_value("").run()
    ms = at.multiselect(key=f"zoo_outcome_{d.name}")
    assert ms.options == ["backdoor likely", "failed", "no evidence"]
    ms.set_value(["failed", "no evidence"]).run()
    no_exception(at, "outcome filter")
    assert list(at.dataframe[0].value["Model"]) == ["clean_a", "clean_b", "broken"]


def test_auc_by_construction_and_ties(runs):
    # backdoored 0.9 and 0.3 against clean 0.5 and 0.1: 3 of the 4 pairs ordered right, AUC 0.75
    rows = [row("b1", 0.9, "yes"), row("b2", 0.3, "yes"), row("c1", 0.5, "no"), row("c2", 0.1, "no"),
            row("u1", 0.7)]  # no truth: in the histogram as unknown, not in the ROC
    make_zoo(runs, rows)
    at = zoo_page()
    assert chart(at, "zoo_roc")["layout"]["title"]["text"] == "ROC curve · AUC 0.75"
    names = [t["name"] for t in chart(at, "zoo_histogram")["data"]]
    assert names == ["backdoored (2)", "clean (2)", "unknown (1)", "decision at 0.5"]
    # the drawn curve's area is roc_auc's, ties included (a tie is a diagonal step, counted half)
    for y, p in (([1, 1, 0, 0], [0.9, 0.3, 0.5, 0.1]), ([1, 0, 1, 0], [0.6, 0.6, 0.2, 0.2]),
                 ([1, 0, 0, 1, 0], [0.8, 0.8, 0.4, 0.1, 0.9])):
        fpr, tpr = zooview.roc_points(y, p)
        area = sum((fpr[i + 1] - fpr[i]) * (tpr[i + 1] + tpr[i]) / 2 for i in range(len(fpr) - 1))
        assert abs(area - roc_auc(y, p)) < 1e-9 and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert roc_auc([1, 0, 1, 0], [0.6, 0.6, 0.2, 0.2]) == 0.5


def test_one_class_says_why_there_is_no_roc(runs):
    make_zoo(runs, [row("b1", 0.9, "yes"), row("b2", 0.4, "yes"), row("x", 0.3)])
    at = zoo_page()
    assert not at.get("plotly_chart") or all("zoo_roc" not in c.proto.id for c in at.get("plotly_chart"))
    assert any("No ROC curve: the 2 finished models with ground truth are all backdoored" in i.value for i in at.info)


def test_running_zoo_shows_progress_and_a_dead_one_the_stopped_sentence(runs):
    rows = [row("a", 0.9, "yes"), row("b", 0.1, "no"), row("c", state="failed", error=ERROR),
            row("d", state="pending"), row("e", state="pending")]
    d = make_zoo(runs, rows, state="running", running=2, seconds_left=75, finished=None)
    at = zoo_page()
    bar = at.get("progress")[0].proto
    assert bar.text == "2 done · 1 failed · 2 running · about 2 min left", bar.text
    assert bar.value == 60  # 3 of 5 finished
    assert not at.warning
    # the driver dies: its pid is gone on this host, so read_zoo_status says "stopped"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    status = json.loads((d / "status.json").read_text())
    write_json(d / "status.json", {**status, "pid": dead.pid})
    at = zoo_page()
    assert [w.value for w in at.warning] == [zooview.STOPPED]
    assert at.get("progress")[0].proto.text == "2 of 5 models scanned, 1 failed"
    assert at.selectbox(key="zoo_pick").options == ["zoo.csv  ·  stopped  ·  5 models"]


def test_the_zoo_in_the_url_is_shown_and_a_pick_goes_into_the_url(runs):
    old = make_zoo(runs, SIX, zoo_id="old-11111111", manifest="old.csv", created=time.time() - 3600)
    new = make_zoo(runs, SIX[:2], zoo_id="new-22222222", manifest="new.json")
    at = zoo_page()
    assert at.selectbox(key="zoo_pick").options[0].startswith("new.json")  # newest first
    assert at.selectbox(key="zoo_pick").value == new.name
    at = zoo_page({"zoo": old.name})
    assert at.selectbox(key="zoo_pick").value == old.name and len(at.dataframe[0].value) == 6
    at.selectbox(key="zoo_pick").set_value(new.name).run()
    no_exception(at, "zoo picked")
    assert at.query_params["zoo"] == new.name and len(at.dataframe[0].value) == 2


def test_the_page_imports_no_ray():
    code = ("import sys; import dashboard.zooview, dashboard.rundata, defenses.scan.zoo; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
