"""The zoo scan on Ray: the manifest's rows, a real local cluster started with `ray start --head`,
a worker killed mid-task, Ctrl-C and the resume, and a changed checkpoint scanned again."""
from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("ray")

# Cheap signals: the point here is the plumbing, each model's scan takes a few seconds.
CHEAP = ["--signals", "weights,mmbd", "--set", "mmbd.steps=10", "--set", "mmbd.restarts=2"]
SLOW = ["--signals", "weights,mmbd", "--set", "mmbd.steps=400", "--set", "mmbd.restarts=4"]
# Ctrl-C must land between the first model's result and the last one's: the Ctrl-C test scans a
# tiny model first and the two sample models after it (about 7 s each at 200 steps), so the scan
# runs on for about 15 s after the first result (at CHEAP's 10 steps the rest took 1.3 s).
CTRL_C_STEPS = 200
CTRL_C = ["--signals", "weights,mmbd", "--set", f"mmbd.steps={CTRL_C_STEPS}", "--set", "mmbd.restarts=2"]


def tiny_checkpoint(path: Path, seed: int) -> Path:
    from defenses.readers.checkpoints import save_safetensors
    from defenses.readers.models import build_model

    torch.manual_seed(seed)
    save_safetensors(build_model("cnn", 10, 1, 28, width=4, hidden=16), str(path))
    return path


def write_manifest(folder: Path, rows: list[dict]) -> Path:
    cols = ["name", "model", "arch", "checkpoint", "arch_kwargs", "backdoored", "target"]
    path = folder / "zoo.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def zoo(tmp_path):
    """Two shipped samples with their truth, two tiny checkpoints of our own, one broken row."""
    tiny_checkpoint(tmp_path / "a.safetensors", 1)
    tiny_checkpoint(tmp_path / "b.safetensors", 2)
    kw = json.dumps({"width": 4, "hidden": 16})
    return write_manifest(tmp_path, [
        {"name": "clean", "model": "cnn_clean", "backdoored": "no"},
        {"name": "centre", "model": "cnn_badnets_centre", "backdoored": "yes", "target": 0},
        {"name": "a", "arch": "cnn", "checkpoint": "a.safetensors", "arch_kwargs": kw},
        {"name": "b", "arch": "cnn", "checkpoint": "b.safetensors", "arch_kwargs": kw},
        {"name": "wrong", "arch": "cnn", "checkpoint": "a.safetensors"},  # the default width does not fit
    ])


def summary(runs: Path) -> dict[str, dict]:
    from defenses.scan.zoo import list_zoos, read_summary

    (z,) = list_zoos(runs)
    return {r["name"]: r for r in read_summary(z["path"])}


def prunescope(*args, **kw) -> subprocess.Popen:
    """The command line in a child process that takes Ctrl-C as a terminal user's would: a runner
    started as a background job without job control (``cmd &`` in a script) ignores SIGINT, every
    child inherits that, and Python then never raises KeyboardInterrupt (three fresh-clone CI runs
    started that way failed the Ctrl-C test with exit 0)."""
    return subprocess.Popen([sys.executable, "-m", "defenses.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kw)


# ----------------------------------------------------------------- the manifest, no Ray needed


def test_manifest_rows_each_broken_row_gets_its_sentence(tmp_path):
    from defenses.scan.manifest import read_manifest

    tiny_checkpoint(tmp_path / "a.safetensors", 0)
    (tmp_path / "m.csv").write_text(
        "name,arch,checkpoint,arch_kwargs,backdoored,colour\n"
        "ok,cnn,a.safetensors,\"{\"\"width\"\": 4}\",yes,\n"
        "badjson,cnn,a.safetensors,{width: 4},no,\n"
        "nomodel,,,,no,\n"
        "badtruth,cnn,a.safetensors,,maybe,\n"
        "extra,cnn,a.safetensors,,no,red\n")
    rows = {r.name: r for r in read_manifest(tmp_path / "m.csv")}
    assert rows["ok"].error is None and rows["ok"].truth == {"backdoored": True}
    assert rows["ok"].model["checkpoint"] == str((tmp_path / "a.safetensors").resolve())  # relative to the manifest
    assert rows["ok"].model["arch_kwargs"] == {"width": 4} and rows["ok"].data["dataset"] == "mnist5k"
    assert rows["badjson"].error.startswith("row 3: --arch-kwargs is not valid JSON")
    assert rows["nomodel"].error.startswith("row 4: Give a sample with --model NAME")
    assert rows["badtruth"].error == "row 5: backdoored is 'maybe'; write yes or no."
    assert rows["extra"].error.startswith("row 6 has columns a manifest does not know: colour")
    (tmp_path / "m.json").write_text(json.dumps({"models": [{"name": "s", "model": "cnn_clean", "backdoored": 0},
                                                            {"name": "s", "model": "cnn_blend"}, 7]}))
    js = read_manifest(tmp_path / "m.json")
    assert js[0].model == {"sample": "cnn_clean"} and js[0].truth == {"backdoored": False}
    assert js[1].error == "The name s is used twice in the manifest; give each model its own."
    assert js[2].error == "model 3 is not an object of model options."
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        read_manifest(tmp_path / "bad.json")


def test_a_folder_of_imported_models_is_a_manifest(tmp_path):
    from defenses.scan.manifest import read_manifest

    for name, bd in (("m1", True), ("m2", None)):
        (tmp_path / name).mkdir()
        tiny_checkpoint(tmp_path / name / "model.safetensors", 0)
        (tmp_path / name / "spec.json").write_text(json.dumps(
            {"prunescope_spec": 1, "architecture": "cnn", "checkpoint": "model.safetensors",
             "arch_kwargs": {"width": 4, "hidden": 16}, "num_classes": 10, "dataset": "mnist5k"}))
        if bd is not None:
            (tmp_path / name / "truth.json").write_text(json.dumps({"backdoored": bd, "target": 3}))
    rows = read_manifest(tmp_path)
    assert [r.name for r in rows] == ["m1", "m2"] and all(r.error is None for r in rows)
    assert rows[0].truth == {"backdoored": True, "target": 3} and rows[1].truth is None
    assert rows[0].model["checkpoint"] == str((tmp_path / "m1" / "model.safetensors").resolve())


# ----------------------------------------------------------------- a real cluster


@pytest.fixture(scope="module")
def cluster():
    """A Ray head on 127.0.0.1, in its own temporary folder, stopped afterwards (its process group,
    not `ray stop`, which would stop every Ray of this user)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="rz", dir="/tmp")  # Ray's socket paths must stay short
    # The cluster's own token, given to the head and to every driver: a fresh machine has no
    # ~/.ray/auth_token, and `ray start` in token mode refuses to start without one.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen(["ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
                             "--num-cpus", "2", "--temp-dir", temp, "--include-dashboard=false",
                             "--disable-usage-stats"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert head.poll() is None and time.time() < deadline, "ray start --head did not come up"
        time.sleep(0.5)
    time.sleep(2)
    yield address, env
    os.killpg(head.pid, signal.SIGTERM)
    try:  # `ray start --block` took over 30 s to stop on SIGTERM (its teardown in pytest --durations)
        head.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    shutil.rmtree(temp, ignore_errors=True)


def test_a_zoo_on_a_real_cluster_equals_the_in_process_scans(cluster, zoo, tmp_path):
    from defenses.scan.folder import create_scan, execute_scan
    from defenses.scan.manifest import read_manifest

    address, env = cluster
    runs = tmp_path / "runs"
    p = prunescope("--runs-dir", str(runs), "scan", "--zoo", str(zoo), *CHEAP, "--address", address, env=env)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    got = summary(runs)
    assert [r["state"] for r in got.values()] == ["done"] * 4 + ["failed"]
    assert got["wrong"]["error"] and "Traceback" not in got["wrong"]["error"]
    assert "5 models: 4 scanned, 1 failed" in out and "ROC-AUC against the manifest's ground truth" in out
    # the same models scanned here, one thread like a Ray worker: the same numbers
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        settings = {"signals": ["weights", "mmbd"], "settings": {"mmbd": {"steps": 10, "restarts": 2}}}
        for row in read_manifest(zoo)[:4]:
            v = execute_scan(create_scan(row.model, row.data, settings, tmp_path / "here"), report=False)
            assert float(got[row.name]["probability"]) == pytest.approx(v.probability, abs=1e-4)
            assert int(got[row.name]["suspected_label"]) == v.label
    finally:
        torch.set_num_threads(threads)


def test_a_worker_killed_mid_task_is_retried_and_the_zoo_completes(cluster, zoo, tmp_path):
    address, env = cluster
    runs = tmp_path / "runs"
    p = prunescope("--runs-dir", str(runs), "scan", "--zoo", str(zoo), *SLOW, "--address", address, env=env)
    killed, deadline = None, time.time() + 120
    while killed is None and time.time() < deadline and p.poll() is None:
        for st in runs.glob("scans/*/status.json"):
            status = json.loads(st.read_text() or "{}")
            if status.get("state") == "running" and status.get("pid") not in (None, p.pid):
                os.kill(status["pid"], signal.SIGKILL)  # the worker process by its PID
                killed = (st.parent, status["pid"])
                break
        time.sleep(0.1)
    assert killed, "no task was seen running"
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    got = summary(runs)
    assert [r["state"] for r in got.values()] == ["done"] * 4 + ["failed"]
    retried = json.loads((killed[0] / "status.json").read_text())
    assert retried["state"] == "done" and retried["pid"] != killed[1]


def test_ctrl_c_keeps_what_finished_and_the_next_run_resumes(zoo, tmp_path):
    rows = list(csv.DictReader(zoo.read_text().splitlines()))
    zoo = write_manifest(tmp_path, [rows[2], rows[0], rows[1], rows[3], rows[4]])  # a, clean, centre, b, wrong
    runs = tmp_path / "runs"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = time.time()
    p = prunescope("--runs-dir", str(runs), "scan", "--zoo", str(zoo), *CTRL_C, "--workers", "1", env=env)
    states = []
    while time.time() < start + 180 and p.poll() is None:
        states = [r["state"] for r in summary(runs).values()] if (runs / "zoos").exists() else []
        if "done" in states:
            break
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    sent = f"SIGINT after {time.time() - start:.1f} s with the rows {states}"
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, sent + "\n" + err[-2000:]
    assert "cancelled" in err
    first = summary(runs)
    finished = {n for n, r in first.items() if r["state"] == "done"}
    assert finished and {r["state"] for n, r in first.items() if n not in finished} <= {"cancelled", "failed"}
    scans_before = {d.name for d in (runs / "scans").iterdir()}

    # resume: the finished models are not scanned again, the rest are
    p = prunescope("--runs-dir", str(runs), "scan", "--zoo", str(zoo), *CTRL_C, "--workers", "2", env=env)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    second = summary(runs)
    assert [r["state"] for r in second.values()] == ["done"] * 4 + ["failed"]
    for n in finished:
        assert second[n]["probability"] == first[n]["probability"] and second[n]["scan_id"] == first[n]["scan_id"]
    assert {d.name for d in (runs / "scans").iterdir()} == scans_before  # the same folders, resumed

    # a changed checkpoint is scanned again, the others are skipped
    tiny_checkpoint(zoo.parent / "b.safetensors", 99)
    from defenses.scan.zoo import list_zoos, scan_zoo

    calls = []
    scan_zoo(zoo, {"signals": ["weights", "mmbd"], "settings": {"mmbd": {"steps": CTRL_C_STEPS, "restarts": 2}}},
             runs_dir=runs, workers=1, progress=lambda t, d: calls.append(t.total))
    third = summary(runs)
    assert calls[-1] == 2  # two tasks: model b, and the failed row, which every invocation tries again
    assert third["b"]["scan_id"] != second["b"]["scan_id"] and third["b"]["state"] == "done"
    assert all(third[n]["scan_id"] == second[n]["scan_id"] for n in ("clean", "centre", "a"))
    assert list_zoos(runs)[0]["status"]["skipped"] == 3
