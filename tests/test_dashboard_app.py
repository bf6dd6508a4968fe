"""The dashboard through streamlit.testing.v1.AppTest: every page renders, widgets are driven by key,
and one real defense runs in a worker process from the Defend page to the Explore page.

Also every bad upload, through the plain upload function and once through the page, gives one
sentence and keeps the previous choice. The runs folder is a temporary one (PRUNESCOPE_RUNS).
"""
from __future__ import annotations

import io
import json
import os
import pickle
import random
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from dashboard import rundata
from dashboard.modelsetup import UploadError, accept_upload, check_choice, user_message
from defenses.readers.checkpoints import CheckpointError, safetensors_bytes
from defenses.readers.models import build_model
from defenses.runs.folder import RunRequest, create_run, read_status, save_tensors, write_json
from defenses.methods.trigger_recovery import RecoveredTriggers, save_recovery

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")
PAGES = ["model", "scan", "zoo", "defend", "explore", "compare", "triggers", "learn"]
CNN_LAYERS = {"features.1": 32, "features.4": 32, "features.8": 64, "features.11": 64, "classifier.2": 128}
SAMPLE_DATA = {"dataset": "mnist5k", "clean_count": 500, "seed": 0}
MB = 1024 * 1024


def one_sentence(msg: str) -> bool:
    """A single line ending in a full stop, with no second sentence starting inside it."""
    return "\n" not in msg and msg.endswith(".") and not re.search(r"[.!?] +[A-Z]", msg[:-1])


# ---------------------------------------------------------------- a finished run without training


def make_run(runs_dir: Path, run_id: str, defense: str = "anp", suspicious: str = "low", triggers: bool = True,
             density: bool = False) -> Path:
    """A complete run folder for the cnn_badnets sample, written with the engine's own writers,
    with made-up scores and sweep (so pages can be tested without waiting for a defense)."""
    rng = np.random.default_rng(0)
    d = Path(runs_dir) / run_id
    (d / "snapshots").mkdir(parents=True)
    if suspicious == "low":
        scores = {k: torch.tensor(np.clip(rng.normal(0.9, 0.08, n), 0, 1), dtype=torch.float32)
                  for k, n in CNN_LAYERS.items()}
        scores["features.8"][3] = 0.02  # two planted backdoor neurons
        scores["classifier.2"][7] = 0.1
        thresholds = [round(0.05 * i, 4) for i in range(20)]
        cut = 0.2
    else:
        scores = {k: torch.tensor(rng.gamma(4.0, 1.0, n), dtype=torch.float32) for k, n in CNN_LAYERS.items()}
        scores["features.8"][3] = 60.0
        thresholds = [round(0.25 * i, 4) for i in range(20)]
        cut = {k: float(v.mean() + 3 * v.std()) for k, v in scores.items()}
    units = rundata.sweep_units({k: v.numpy() for k, v in scores.items()}, suspicious)
    rows = []
    for t in thresholds:
        n = int(sum(rundata.selected(units, t, suspicious)[k].sum() for k in units))
        rows.append({"threshold": t, "n_pruned": n, "acc": round(0.99 - 0.0015 * n, 4),
                     "asr": 1.0 if n == 0 else round(max(0.0, 0.9 - 0.25 * n), 4)})
    counts = [{"threshold": c, "n_pruned": c, "acc": 0.99 - 0.0015 * c, "asr": max(0.0, 1 - 0.3 * c)}
              for c in (0, 16, 32, 64, 128, 160)]
    extras = {}
    if density:
        x = np.linspace(0, 20, 64)
        extras["density"] = {k: {"x": x.tolist(), "y": np.exp(-((x - 4) ** 2) / 4).tolist(), "cut": 9.0,
                                 "rule": "first minimum"} for k in CNN_LAYERS}
    default_rows = [r for r in rows if r["threshold"] == (cut if suspicious == "low" else 3.0)]
    default = dict(default_rows[0]) if default_rows else dict(rows[0])
    default.pop("threshold")
    write_json(d / "config.json", {"run_id": run_id, "created": time.time(), "defense": defense, "params": {},
                                   "model": {"sample": "cnn_badnets"}, "data": SAMPLE_DATA, "trigger": None,
                                   "device": "cpu", "recover_triggers": triggers, "label": "test"})
    write_json(d / "status.json", {"state": "done", "created": time.time(), "finished": time.time()})
    events = [{"type": "stage", "stage": "loading"}, {"type": "baseline", "acc": 0.99, "asr": 1.0},
              {"type": "stage", "stage": "defense"}, {"type": "begin", "total": 20, "stages": {defense: 20}}]
    events += [{"type": "step", "stage": defense, "step": i, "total": 20, "metrics": {"loss": 1 / i}} for i in (1, 10, 20)]
    events += [{"type": "snapshot", "step": 10}, {"type": "probe", "step": 10, "acc": 0.98, "asr": 0.5, "n_pruned": 2},
               {"type": "end", "error": None}, {"type": "stage", "stage": "done"}]
    (d / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    save_tensors(d / "snapshots" / "0000010.safetensors", scores)
    save_tensors(d / "scores.safetensors", scores)
    trigger = {"kind": "badnets", "target": 0, "size": 4, "position": "bottom_right", "color": 1.0, "alpha": 0.2,
               "seed": 0, "image": None, "mask_image": None}
    write_json(d / "result.json", {
        "defense": defense, "suspicious": suspicious, "prune_rule": "gamma" if suspicious == "low" else "both",
        "threshold": cut, "config": {"u": 3.0} if suspicious == "high" else {"threshold": cut}, "timings": {"total_s": 1.0},
        "baseline": {"acc": 0.99, "asr": 1.0}, "default": default,
        "layers": [{"name": k, "kind": "bn", "size": n, "source": None, "has_bias": True} for k, n in CNN_LAYERS.items()],
        "title": "BN CNN + BadNets", "trigger": trigger, "trigger_known": True, "num_classes": 10,
        "input_shape": [1, 28, 28], "extras": extras, "device": "cpu"})
    write_json(d / "sweep.json", {"threshold": rows, "count": counts})
    if triggers:
        masks = torch.full((10, 1, 28, 28), 0.02)
        masks[0, :, -5:-1, -5:-1] = 1.0
        l1 = [float(m.sum()) for m in masks]
        save_recovery(d / "triggers", RecoveredTriggers(
            labels=list(range(10)), masks=masks, patterns=torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(0)),
            l1=l1, anomaly=[-0.3 if i else 4.2 for i in range(10)], flagged=[0], asr_on_model=[0.95] + [0.1] * 9,
            asr_on_original=[0.97] + [0.05] * 9, config={"anomaly_threshold": 2.0}, timings={}))
    return d


def app(timeout: float = 120) -> AppTest:
    return AppTest.from_file(APP, default_timeout=timeout)


def no_exception(at: AppTest, page: str) -> None:
    assert not at.exception, f"{page}: {[e.value for e in at.exception]}"


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def open_tab(at: AppTest, name: str) -> AppTest:
    """Open one of Explore's tabs (lazy tabs: only the open one runs), as a click on it would."""
    at.session_state["explore_tab"] = name
    return at.run()


def threshold_slider(at: AppTest):
    """Explore's threshold slider: one per run, keyed by the run shown."""
    return at.select_slider(key=f"threshold_{at.session_state['explore_run']}")


# ---------------------------------------------------------------- every page renders


def test_every_page_renders_with_no_runs(runs):
    at = app().run()
    no_exception(at, "model")
    # the first BadNets showcase, where a first click shows a defense working
    assert at.metric and at.session_state["choice"]["model"] == {"sample": "cnn_badnets_centre"}
    assert any("Showcase" in s.value for s in at.success), [s.value for s in at.success]
    for page in PAGES[1:]:
        at.switch_page(f"views/{page}.py").run()
        no_exception(at, page)
        assert not at.error, f"{page}: {[e.value for e in at.error]}"


def test_every_page_renders_each_page_file_alone(runs):
    make_run(runs, "20260101-000000-anp-cnn_badnets-aaaa")
    for page in PAGES:
        at = AppTest.from_file(str(Path(APP).parent / "views" / f"{page}.py"), default_timeout=120).run()
        no_exception(at, page)


def test_every_page_renders_with_finished_runs(runs):
    make_run(runs, "20260101-000000-anp-cnn_badnets-aaaa")
    make_run(runs, "20260101-000001-holder-cnn_badnets-bbbb", defense="holder", suspicious="high", triggers=False,
             density=True)
    at = app().run()
    for page in PAGES[1:]:
        at.switch_page(f"views/{page}.py").run()
        no_exception(at, page)
        assert not at.error, f"{page}: {[e.value for e in at.error]}"
    # Explore links the run with recovered triggers to the Triggers page
    at.switch_page("views/explore.py").run()
    at.selectbox(key="explore_run").set_value("20260101-000000-anp-cnn_badnets-aaaa").run()
    open_tab(at, "Triage without the trigger")
    assert "triggers" in [p.proto.page for p in at.get("page_link")]
    # Explore shows the density of a Hölder run, and each distribution kind renders
    at.selectbox(key="explore_run").set_value("20260101-000001-holder-cnn_badnets-bbbb").run()
    no_exception(at, "explore holder")
    open_tab(at, "Scores")
    assert at.selectbox(key="density_layer").options
    for kind in ("violin", "ecdf"):
        at.radio(key="dist_kind").set_value(kind).run()
        no_exception(at, f"explore {kind}")
    open_tab(at, "Triage without the trigger")
    at.button(key="use_u").click().run()  # CLP's u rule moves the threshold to u = 3
    assert threshold_slider(at).value == 3.0
    # Compare shows both runs of the same model in one table
    at.switch_page("views/compare.py").run()
    assert len(at.dataframe[0].value) == 2
    # Triggers: the grid and attributions for the run that has recovered triggers, both methods
    at.switch_page("views/triggers.py").run()
    assert at.selectbox(key="triggers_run").value == "20260101-000000-anp-cnn_badnets-aaaa"
    at.radio(key="attr_method").set_value("IntegratedGradients").run()
    no_exception(at, "triggers IG")


def test_compare_opens_on_the_model_with_the_most_finished_runs(runs):
    make_run(runs, "20260101-000000-anp-cnn_badnets-aaaa")
    make_run(runs, "20260101-000001-holder-cnn_badnets-bbbb", defense="holder", suspicious="high", triggers=False)
    newest = make_run(runs, "20260101-000002-anp-cnn_blend-cccc")  # newer, but alone on its model
    cfg = json.loads((newest / "config.json").read_text())
    cfg["model"] = {"sample": "cnn_blend"}
    (newest / "config.json").write_text(json.dumps(cfg))
    at = app().run()
    at.switch_page("views/compare.py").run()
    assert at.selectbox(key="compare_model").value == "cnn_badnets"
    assert len(at.dataframe[0].value) == 2


# ---------------------------------------------------------------- the threshold path


def test_threshold_slider_reads_precomputed_points_only(runs, monkeypatch):
    make_run(runs, "20260101-000000-anp-cnn_badnets-aaaa")
    at = app().run()
    at.switch_page("views/explore.py").run()
    slider = threshold_slider(at)
    assert slider.value == 0.2  # the defense's own cut
    before = (metric(at, "ACC after pruning"), metric(at, "Neurons pruned"))

    import defenses.evaluation

    def no_evaluation(*a, **k):
        raise AssertionError("the slider path must not evaluate a model")

    monkeypatch.setattr(defenses.evaluation, "evaluate", no_evaluation)
    monkeypatch.setattr(defenses.evaluation, "sweep", no_evaluation)
    t0 = time.perf_counter()
    threshold_slider(at).set_value(0.95).run()
    elapsed = time.perf_counter() - t0
    no_exception(at, "explore")
    after = (metric(at, "ACC after pruning"), metric(at, "Neurons pruned"))
    assert after != before
    sweep = json.loads((runs / "20260101-000000-anp-cnn_badnets-aaaa" / "sweep.json").read_text())["threshold"]
    row = next(r for r in sweep if r["threshold"] == 0.95)
    assert metric(at, "ACC after pruning") == f"{100 * row['acc']:.1f}%"
    assert metric(at, "Neurons pruned").startswith(f"{row['n_pruned']} /")
    print(f"\nthreshold change -> updated ACC/ASR: {elapsed:.2f} s (AppTest rerun)")
    # the choice survives a trip to another page
    at.switch_page("views/learn.py").run()
    at.switch_page("views/explore.py").run()
    assert threshold_slider(at).value == 0.95


def test_trigger_free_aids_move_the_threshold(runs):
    make_run(runs, "20260101-000000-anp-cnn_badnets-aaaa")
    at = app().run()
    at.switch_page("views/explore.py").run()
    open_tab(at, "Triage without the trigger")
    at.slider(key="budget").set_value(0.5).run()
    at.button(key="use_budget").click().run()
    no_exception(at, "explore")
    sweep = json.loads((runs / "20260101-000000-anp-cnn_badnets-aaaa" / "sweep.json").read_text())["threshold"]
    ok = [r for r in sweep if r["acc"] >= 0.99 - 0.005]
    assert threshold_slider(at).value == max(ok, key=lambda r: r["n_pruned"])["threshold"]
    at.button(key="use_gap").click().run()  # the planted neurons sit far below the rest
    assert threshold_slider(at).value in (0.1, 0.15)  # nearest grid point to the gap cut (0.1)
    assert any("flags label(s) 0" in s.value for s in at.success)  # RNP's flagged label, no trigger needed


def test_click_selection_gives_the_threshold():
    event = {"selection": {"points": [{"curve_number": 0, "point_index": 3, "x": 0.15, "y": 0.9, "customdata": 0.15}]}}
    assert rundata.threshold_from_selection(event) == 0.15
    assert rundata.threshold_from_selection({"selection": {"points": [{"customdata": [0.4]}]}}) == 0.4
    assert rundata.threshold_from_selection({"selection": {"points": []}}) is None
    assert rundata.threshold_from_selection(None) is None
    assert rundata.nearest([0.0, 0.05, 0.1], 0.07) == 0.05


def test_manifest_and_pruned_model_export(runs):
    d = make_run(runs, "20260101-000000-anp-cnn_badnets-aaaa")
    run = rundata.load_finished(d)
    m = rundata.manifest(run, 0.2)
    assert m["run_id"] == run.run_id and m["defense"] == "anp" and m["rule"] == "gamma"
    assert {(p["layer"], p["index"]) for p in m["pruned"]} == {("features.8", 3), ("classifier.2", 7)}
    assert m["before"] == {"acc": 0.99, "asr": 1.0} and m["after"]["acc"] == rundata.row_at(run.rows, 0.2)["acc"]
    from dashboard import cache
    from safetensors import safe_open

    blob = cache.pruned_model_bytes(run, 0.2, m)
    path = d / "pruned.safetensors"
    path.write_bytes(blob)
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["prunescope_manifest"])["n_pruned"] == 2
        gamma = f.get_tensor("features.8.weight")
    assert gamma[3] == 0 and (gamma != 0).sum() == 63


# ---------------------------------------------------------------- the main flow, with a real worker


def wait_until_final(run_dir: Path, timeout: float = 900, read=read_status) -> dict:
    """The run's final status (or a job's, with ``read`` its state reader), polled until it ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read(run_dir)
        if status.get("state") in ("done", "failed", "cancelled"):
            return status
        time.sleep(0.5)
    raise AssertionError(f"it did not finish within {timeout} s: {read(run_dir)}")


def test_main_flow_sample_defend_watch_explore(runs):
    t0 = time.perf_counter()
    at = app().run()
    no_exception(at, "model")
    first_chart = time.perf_counter() - t0
    at.selectbox(key="sample").set_value("cnn_blend").run()
    at.switch_page("views/defend.py").run()
    at.selectbox(key="defense").set_value("anp").run()
    at.number_input(key="cfg_anp_iterations").set_value(30)
    at.number_input(key="cfg_anp_snapshot_every").set_value(10)
    at.button(key="start").click().run()
    no_exception(at, "defend")
    run_id = at.session_state["run_id"]
    run_dir = runs / run_id
    config = json.loads((run_dir / "config.json").read_text())
    assert config["params"] == {"iterations": 30, "snapshot_every": 10}  # only what was changed
    assert config["model"] == {"sample": "cnn_blend"}
    if read_status(run_dir)["state"] in ("queued", "running"):  # the form folds: the live charts come up near Start
        assert any("a run is going" in e.label for e in at.expander), [e.label for e in at.expander]
    at.run()  # the live view while it runs (or after)
    no_exception(at, "defend live")
    assert at.get("progress")
    status = wait_until_final(run_dir)
    assert status["state"] == "done", status
    at.run()
    no_exception(at, "defend finished")
    assert at.get("progress")[0].proto.text == "done"  # one status word
    assert metric(at, "ASR, own cut")  # the finished run's result, not only its baseline
    # a real link to Explore, not the plain-text fallback that a wrong page path falls back to
    assert [p.proto.page for p in at.get("page_link")] == ["explore"]
    at.switch_page("views/explore.py").run()
    no_exception(at, "explore")
    assert at.selectbox(key="explore_run").value == run_id
    options = threshold_slider(at).options
    assert len(options) == 20
    threshold_slider(at).set_value(0.0).run()
    low = (metric(at, "ACC after pruning"), metric(at, "ASR after pruning"), metric(at, "Neurons pruned"))
    threshold_slider(at).set_value(0.95).run()
    high = (metric(at, "ACC after pruning"), metric(at, "ASR after pruning"), metric(at, "Neurons pruned"))
    assert low != high
    print(f"\ncold start to the first chart (AppTest, Model page, default sample): {first_chart:.1f} s")


def test_cancel_from_the_defend_page(runs):
    at = app().run()
    at.switch_page("views/defend.py").run()
    at.selectbox(key="defense").set_value("anp").run()
    at.number_input(key="cfg_anp_iterations").set_value(100000)
    at.button(key="start").click().run()
    run_dir = runs / at.session_state["run_id"]
    deadline = time.monotonic() + 300
    while read_status(run_dir).get("state") == "queued" and time.monotonic() < deadline:
        time.sleep(0.3)
    at.run()
    at.button(key="cancel").click().run()
    status = wait_until_final(run_dir, 120)
    assert status["state"] in ("cancelled", "failed")  # failed only if it was killed before its handler was set
    at.run()
    no_exception(at, "defend cancelled")


def test_runs_from_the_command_line_are_listed(runs):
    make_run(runs, "20260101-000000-anp-cnn_badnets-aaaa")  # as `prunescope run` would leave it
    at = app().run()
    at.switch_page("views/defend.py").run()
    assert any("20260101-000000-anp-cnn_badnets-aaaa" in o for o in at.selectbox[-1].options)


def test_bad_hyperparameter_is_one_sentence_and_start_is_disabled(runs):
    at = app().run()
    at.switch_page("views/defend.py").run()
    at.selectbox(key="defense").set_value("anp").run()
    at.number_input(key="cfg_anp_batch_size").set_value(1).run()
    assert len(at.error) == 1 and one_sentence(at.error[0].value), at.error[0].value
    assert "batch_size" in at.error[0].value
    assert at.button(key="start").disabled


# ---------------------------------------------------------------- bad uploads


def cnn_state(classes=10, channels=1):
    torch.manual_seed(0)
    return build_model("cnn", classes, channels, 28).state_dict()


def refused(data: bytes, name: str, runs_dir: Path, max_bytes: int = 200 * MB) -> str:
    with pytest.raises((CheckpointError, UploadError)) as e:
        accept_upload(data, name, runs_dir, max_bytes)
    msg = user_message(e.value)
    assert one_sentence(msg), msg
    return msg


class Payload:
    """Unpickling this would create a file: the loader must refuse before that."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_empty_and_random_and_truncated_files(tmp_path):
    assert "empty" in refused(b"", "w.pt", tmp_path)
    assert "not a readable" in refused(random.Random(1).randbytes(4096), "w.pt", tmp_path)
    good = safetensors_bytes(cnn_state())
    assert "damaged or truncated" in refused(good[: len(good) // 2], "w.safetensors", tmp_path)
    buf = io.BytesIO()
    torch.save(cnn_state(), buf)
    assert "not a readable" in refused(buf.getvalue()[:3000], "w.pt", tmp_path)
    assert not (tmp_path / "uploads").exists() or not list((tmp_path / "uploads").iterdir())


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_payload_is_never_run(tmp_path):
    marker = tmp_path / "pwned"
    Payload.marker = str(marker)
    buf = io.BytesIO()
    torch.save({"weight": Payload()}, buf)
    msg = refused(buf.getvalue(), "evil.pt", tmp_path)
    assert "pickled Python objects" in msg
    assert "never" in msg or "safety" in msg
    refused(pickle.dumps({"weight": Payload()}), "evil.pth", tmp_path)  # a plain (legacy) pickle as well
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated, but such files still exist
def test_torchscript_and_pickled_module_are_refused(tmp_path):
    model = build_model("cnn", 10, 1, 28).eval()
    buf = io.BytesIO()
    torch.jit.save(torch.jit.trace(model, torch.rand(2, 1, 28, 28)), buf)
    assert "TorchScript" in refused(buf.getvalue(), "model.pt", tmp_path)
    buf = io.BytesIO()
    torch.save(model, buf)
    assert "pickled Python objects" in refused(buf.getvalue(), "model.pt", tmp_path)


def test_nan_weights_and_size_cap_and_wrong_extension(tmp_path):
    state = cnn_state()
    state["features.0.weight"][0, 0, 0, 0] = float("nan")
    assert "NaN" in refused(safetensors_bytes(state), "nan.safetensors", tmp_path)
    msg = refused(b"x" * 2048, "big.pt", tmp_path, max_bytes=1024)
    assert "upload limit" in msg
    assert "not a weights file" in refused(b"abc", "notes.txt", tmp_path)


def test_valid_upload_is_stored_as_safetensors_under_its_name_in_a_folder_named_by_hash(tmp_path):
    buf = io.BytesIO()
    torch.save(cnn_state(), buf)
    up = accept_upload(buf.getvalue(), "my good model!.pt", tmp_path, 200 * MB)
    assert up.path.parent == (tmp_path / "uploads" / up.sha256[:16]).resolve() and up.path.suffix == ".safetensors"
    assert up.path.stem == "my_good_model" and up.tensors == len(cnn_state())
    spec = {"architecture": "cnn", "checkpoint": str(up.path), "arch_kwargs": {}, "num_classes": None,
            "input_shape": None}
    model, bundle, trigger, title = check_choice(spec, SAMPLE_DATA, None)
    assert bundle.num_classes == 10 and trigger is None and title == "cnn from my_good_model.safetensors"
    # the run id carries the user's name for it, not the hash
    run = create_run(RunRequest(defense="clp", params={}, model=spec, data=SAMPLE_DATA), tmp_path / "runs")
    assert "-clp-my_good_model-" in run.name and up.sha256[:8] not in run.name and len(run.name) < 50


def choice_error(tmp_path, state, **spec) -> str:
    up = accept_upload(safetensors_bytes(state), "w.safetensors", tmp_path, 200 * MB)
    model_spec = {"architecture": "cnn", "checkpoint": str(up.path), "arch_kwargs": {}, "num_classes": None,
                  "input_shape": None, **spec}
    with pytest.raises(ValueError) as e:
        check_choice(model_spec, SAMPLE_DATA, None)
    msg = user_message(e.value)
    assert one_sentence(msg), msg
    return msg


def test_wrong_architecture_classes_and_channels(tmp_path):
    vgg = build_model("vgg11_bn", 10, 1, 28, width=0.125).state_dict()
    msg = choice_error(tmp_path, vgg)
    assert "does not fit this architecture" in msg
    assert "its parameter names fit vgg11_bn (another width)" in msg  # tried, and named
    assert "43 classes" in choice_error(tmp_path, cnn_state(classes=43))
    msg = choice_error(tmp_path, cnn_state(channels=3))  # a colour model on grayscale digits
    assert "features.0.weight (32, 3, 3, 3) vs (32, 1, 3, 3)" in msg
    # a colour model whose weights fit, on the grayscale dataset: refused by the forward check
    msg = choice_error(tmp_path, cnn_state(channels=3), input_shape=[3, 28, 28])
    assert "grayscale vs colour" in msg


def test_bad_upload_in_the_page_keeps_the_previous_choice(runs):
    at = app().run()
    before = at.session_state["choice"]
    at.radio(key="model_source").set_value("Your own weights").run()
    at.file_uploader(key="upload").set_value(("random.pt", random.Random(2).randbytes(1000), "application/octet-stream")).run()
    at.button(key="use_own").click().run()
    no_exception(at, "model")
    assert len(at.error) == 1 and one_sentence(at.error[0].value) and "not a readable" in at.error[0].value
    assert at.session_state["choice"] == before
    assert at.metric  # what was shown before is still shown


def test_good_upload_in_the_page_becomes_the_choice(runs):
    buf = io.BytesIO()
    torch.save(cnn_state(), buf)
    at = app().run()
    at.radio(key="model_source").set_value("Your own weights").run()
    at.file_uploader(key="upload").set_value(("mine.pt", buf.getvalue(), "application/octet-stream")).run()
    at.radio(key="trigger_kind").set_value("badnets").run()
    at.button(key="use_own").click().run()
    no_exception(at, "model")
    assert not at.error, [e.value for e in at.error]
    choice = at.session_state["choice"]
    assert choice["model"]["architecture"] == "cnn" and choice["model"]["input_shape"] == [1, 28, 28]
    assert Path(choice["model"]["checkpoint"]).parent.parent == (runs / "uploads").resolve()
    assert choice["label"] == "cnn · mine.pt · 4 px patch bottom right, target 0"
    assert choice["trigger"]["kind"] == "badnets"
    # a valid request for the engine (not started: no training here)
    RunRequest(defense="clp", params={}, model=choice["model"], data=choice["data"], trigger=choice["trigger"])


def test_own_model_is_kept_by_the_form_across_pages_and_by_disk_across_reloads(runs):
    """The tour's finding: a page switch emptied the form, and checking it again silently dropped the
    trigger; a reload went back to the showcase sample."""
    buf = io.BytesIO()
    torch.save(build_model("cnn", 10, 1, 28, width=16, hidden=64).state_dict(), buf)
    at = app().run()
    at.radio(key="model_source").set_value("Your own weights").run()
    at.file_uploader(key="upload").set_value(("narrow.pt", buf.getvalue(), "application/octet-stream")).run()
    at.text_input(key="arch_kwargs").set_value('{"width": 16, "hidden": 64}').run()
    at.radio(key="trigger_kind").set_value("badnets").run()
    at.button(key="use_own").click().run()
    no_exception(at, "model")
    chosen = at.session_state["choice"]
    assert chosen["label"] == "cnn · narrow.pt · 4 px patch bottom right, target 0", chosen["label"]
    assert any("Now measuring" in s.value and "instead of" in s.value for s in at.success)
    assert at.query_params["model"] == chosen["key"] and "sample" not in at.query_params

    at.switch_page("views/defend.py").run()
    assert chosen["label"] in " ".join(c.value for c in at.sidebar.caption)
    at.switch_page("views/model.py").run()
    no_exception(at, "model")
    assert at.radio(key="model_source").value == "Your own weights"
    assert at.text_input(key="weights_path").value == chosen["model"]["checkpoint"]  # the weights in use
    assert json.loads(at.text_input(key="arch_kwargs").value) == {"width": 16, "hidden": 64}
    assert at.radio(key="trigger_kind").value == "badnets" and at.number_input(key="trigger_size").value == 4
    at.button(key="use_own").click().run()  # checking the shown form again measures the same thing
    no_exception(at, "model")
    assert not at.error and at.session_state["choice"] == chosen
    assert any("nothing changed" in s.value for s in at.success)

    at.radio(key="trigger_kind").set_value("unknown").run()  # a change of what is measured is said
    at.button(key="use_own").click().run()
    now = at.session_state["choice"]
    assert now["trigger"] is None and now["label"] == "cnn · narrow.pt · trigger unknown"
    assert any(f"instead of {chosen['label']}" in s.value for s in at.success)
    assert metric(at, "Attack success rate (ASR)") == "n/a"
    assert now["label"] in " ".join(c.value for c in at.sidebar.caption)

    reload = app()  # a reload: a new session with the page's URL
    reload.query_params["model"] = chosen["key"]
    reload.run()
    assert reload.session_state["choice"]["label"] == chosen["label"]
    fresh = app().run()  # a link without a model: the last one chosen, kept on disk
    assert fresh.session_state["choice"]["label"] == now["label"]
    fresh.radio(key="model_source").set_value("Your own weights").run()
    assert sorted(fresh.selectbox(key="used_before").options) == sorted([chosen["label"], now["label"]])
    fresh.selectbox(key="used_before").set_value(chosen["label"]).run()
    fresh.button(key="use_again").click().run()
    assert fresh.session_state["choice"]["trigger"] == chosen["trigger"]
    assert fresh.radio(key="trigger_kind").value == "badnets"  # the form follows the model taken again
    from dashboard import choices
    assert choices.recall("../../etc", runs) is None and choices.recall(chosen["key"], runs)["label"] == chosen["label"]


def test_neuron_noise_check_on_the_model_page_names_the_target(runs):
    at = app().run()
    assert "noise_chart" not in [c.key for c in at.get("plotly_chart")]  # only on demand: it costs seconds
    at.button(key="noise_check").click().run()
    no_exception(at, "model")
    assert any("pile onto label 0" in w.value for w in at.warning), [w.value for w in at.warning]
    at.run()  # a rerun (a slider elsewhere moved) keeps the chart without a new click
    assert any("pile onto label 0" in w.value for w in at.warning)
    at.switch_page("views/defend.py").run()
    at.switch_page("views/model.py").run()  # leaving the page keeps the result (it took seconds)
    assert "noise_chart" in [c.key for c in at.get("plotly_chart")]


def test_defend_page_sends_the_trigger_recovery_choice(runs):
    from defenses.runs.folder import cancel_run

    at = app().run()
    at.switch_page("views/defend.py").run()
    at.selectbox(key="defense").set_value("clp").run()
    assert at.checkbox(key="recover_triggers_clp").value is False  # slow: off unless asked for
    assert not [r for r in at.radio if r.key == "recover_on"]  # only RNP has an unlearned model
    at.checkbox(key="recover_triggers_clp").check().run()
    assert at.number_input(key="recovery_batch").value == 128  # Neural Cleanse's defaults shown
    at.number_input(key="recovery_steps").set_value(20)
    at.number_input(key="recovery_batch").set_value(32)
    at.number_input(key="recovery_lam").set_value(0.02)
    at.button(key="start").click().run()
    no_exception(at, "defend")
    run_dir = runs / at.session_state["run_id"]
    cancel_run(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["recover_triggers"], config["recover_on"], config["recovery_params"]) == (True, "original",
                                                                                           {"steps": 20, "batch_size": 32,
                                                                                            "lam": 0.02})
    at.selectbox(key="defense").set_value("rnp").run()
    assert at.checkbox(key="recover_triggers_rnp").value is True
    assert at.radio(key="recover_on").value == "unlearned"
    assert config["oracle"] is False  # the oracle is off unless asked for


def test_defend_page_sends_the_oracle_choice_and_explore_draws_it(runs):
    from defenses.runs.folder import cancel_run

    at = app().run()
    at.switch_page("views/defend.py").run()
    at.selectbox(key="defense").set_value("clp").run()
    assert not at.checkbox(key="oracle").disabled  # a sample's trigger is on record
    at.checkbox(key="oracle").check().run()
    at.button(key="start").click().run()
    no_exception(at, "defend")
    run_dir = runs / at.session_state["run_id"]
    cancel_run(run_dir)
    assert json.loads((run_dir / "config.json").read_text())["oracle"] is True

    done = make_run(runs, "20260101-000000-anp-cnn_badnets-aaaa")
    at.switch_page("views/explore.py").run()
    at.selectbox(key="explore_run").set_value(done.name).run()
    assert "oracle_chart" not in [c.key for c in at.get("plotly_chart")]  # no oracle.json: no chart
    rows = [{"threshold": c, "n_pruned": c, "acc": 0.99 - 0.001 * c, "asr": 0.0 if c else 1.0} for c in (0, 16, 32)]
    # the oracle's lowest masks: the run's two planted neurons and, third, one the run's cut keeps
    masks = {k: torch.ones(n) for k, n in CNN_LAYERS.items()}
    masks["features.8"][3], masks["classifier.2"][7], masks["features.1"][0] = 0.01, 0.02, 0.03
    save_tensors(done / "oracle_scores.safetensors", masks)
    cut = dict(rows[1], n_pruned=3)
    (done / "oracle.json").write_text(json.dumps({"iterations": 400, "seconds": 1.0, "rows": rows,
                                                  "smallest_cut": cut}))
    at.run()  # the oracle's file came after the sweep's (as in a run): the page reads it
    no_exception(at, "explore oracle")
    assert "oracle_chart" in [c.key for c in at.get("plotly_chart")]
    text = " ".join(c.value for c in at.caption)
    assert "under 5% with 3 neurons" in text and "this defense prunes 2 of those 3" in text, text
    open_tab(at, "Suspicious neurons & export")
    table = at.dataframe[0].value
    marked = set(zip(table.loc[table["in the oracle's cut"], "layer"], table.loc[table["in the oracle's cut"], "index"]))
    assert {("features.8", 3), ("classifier.2", 7)} <= marked
    at.switch_page("views/compare.py").run()  # Compare draws it beside the defense's curve
    no_exception(at, "compare oracle")
    assert any("An oracle curve knows the trigger" in c.value for c in at.caption)
