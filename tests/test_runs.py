"""The run folder: complete artefacts, live events, cancel, a killed worker, isolation."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from defenses.runs.folder import (RunRequest, cancel_run, create_run, list_runs, list_snapshots, load_tensors, read_events,
                           read_json, read_status, start_run, write_json)
from defenses.runs.worker import execute, fair_threads

SAMPLE = {"sample": "cnn_blend"}  # the smallest sample keeps these tests quick
DATA = {"dataset": "mnist5k"}


def anp_request(iterations=12, **kw):
    return RunRequest(defense="anp", params={"iterations": iterations, "snapshot_every": 4}, model=SAMPLE, data=DATA, **kw)


def wait_for(run_dir, states, timeout=240):
    end = time.time() + timeout
    while time.time() < end:
        st = read_status(run_dir)
        if st.get("state") in states:
            return st
        time.sleep(0.2)
    raise AssertionError(f"run did not reach {states}: {read_status(run_dir)}")


def test_a_run_writes_every_artefact(tmp_path):
    run_dir = create_run(anp_request(), tmp_path)
    assert execute(run_dir) == "done"
    st = read_status(run_dir)
    assert st["state"] == "done" and st["progress"]["step"] == st["progress"]["total"]
    events = read_events(run_dir)
    kinds = [e["type"] for e in events]
    assert kinds.count("begin") >= 1 and "baseline" in kinds and "probe" in kinds and kinds[-1] == "stage"
    assert [s for s, _ in list_snapshots(run_dir)] == [4, 8, 12]  # the final masks too
    scores = load_tensors(run_dir / "scores.safetensors")
    result = read_json(run_dir / "result.json")
    assert set(scores) == {l["name"] for l in result["layers"]}
    assert result["baseline"]["asr"] > 0.95 and result["suspicious"] == "low"
    sweep = read_json(run_dir / "sweep.json")
    assert [r["threshold"] for r in sweep["threshold"]][:3] == [0.0, 0.05, 0.1] and len(sweep["threshold"]) == 20
    assert sweep["count"][0]["n_pruned"] == 0 and sweep["count"][0]["acc"] == pytest.approx(result["baseline"]["acc"])
    assert list_runs(tmp_path)[0]["run_id"] == run_dir.name
    # each distinct pruned model of the run is evaluated once: both sweeps share, and reuse the
    # baseline (nothing pruned) and the defense's own cut
    from defenses.evaluation import selection_key, sweep_scores
    from defenses.neurons import selection_by_count, selection_by_threshold

    units = sweep_scores(scores, "low")
    keys = {selection_key(selection_by_threshold(units, r["threshold"], "low")) for r in sweep["threshold"]}
    keys |= {selection_key(selection_by_count(units, r["threshold"], "low")) for r in sweep["count"]}
    keys -= {selection_key({k: torch.zeros(v.numel(), dtype=torch.bool) for k, v in scores.items()}),
             selection_key(selection_by_threshold(scores, result["threshold"], "low"))}
    timings = read_json(run_dir / "timings.json")
    assert timings["evaluations"] == len(keys)
    assert {"loading_s", "baseline_s", "defense_s", "own_cut_s", "sweeps_s"} <= set(timings)


def test_a_failed_run_records_one_sentence(tmp_path):
    req = RunRequest(defense="anp", params={"iterations": 5},
                     model={"architecture": "cnn", "checkpoint": str(tmp_path / "missing.safetensors")}, data=DATA)
    run_dir = create_run(req, tmp_path)
    assert execute(run_dir) == "failed"
    st = read_status(run_dir)
    assert st["error"].startswith("No checkpoint at") and "\n" not in st["error"]
    assert "Traceback" in (run_dir / "error.txt").read_text()


def test_bad_hyperparameters_are_refused_before_a_folder_is_made(tmp_path):
    from defenses.base import ConfigError

    with pytest.raises(ConfigError, match="eps must be at most 1, got 5"):
        create_run(RunRequest(defense="anp", params={"eps": 5}, model=SAMPLE, data=DATA), tmp_path)
    with pytest.raises(ConfigError, match="has no setting bogus"):
        create_run(RunRequest(defense="anp", params={"bogus": 1}, model=SAMPLE, data=DATA), tmp_path)
    assert list_runs(tmp_path) == []


def test_cancel_a_running_worker(tmp_path):
    run_dir = start_run(anp_request(iterations=100000), tmp_path)
    wait_for(run_dir, ("running",))
    end = time.time() + 120
    while not read_events(run_dir) or read_events(run_dir)[-1].get("type") != "step":
        assert time.time() < end
        time.sleep(0.2)
    assert cancel_run(run_dir)
    assert wait_for(run_dir, ("cancelled", "failed"))["state"] == "cancelled"


def test_a_killed_worker_is_marked_failed_and_other_runs_stay_intact(tmp_path):
    done = create_run(anp_request(iterations=4), tmp_path)
    execute(done)
    victim = start_run(anp_request(iterations=100000), tmp_path)
    st = wait_for(victim, ("running",))
    os.kill(st["pid"], signal.SIGKILL)
    time.sleep(0.5)
    st = wait_for(victim, ("failed",), timeout=30)
    assert "ended unexpectedly" in st["error"]
    assert read_status(done)["state"] == "done"
    assert {r["run_id"]: r["status"]["state"] for r in list_runs(tmp_path)} == {done.name: "done", victim.name: "failed"}


def test_two_runs_at_once_stay_isolated(tmp_path):
    a = start_run(anp_request(iterations=8), tmp_path)
    b = start_run(RunRequest(defense="rnp", params={"unlearn_epochs": 2, "recover_epochs": 2}, model=SAMPLE,
                             data=DATA, recover_triggers=False), tmp_path)
    assert wait_for(a, ("done", "failed"))["state"] == "done"
    assert wait_for(b, ("done", "failed"))["state"] == "done"
    assert read_json(a / "config.json")["defense"] == "anp" and read_json(b / "config.json")["defense"] == "rnp"
    assert (b / "unlearned.safetensors").exists() and not (a / "unlearned.safetensors").exists()
    # a server restart is a fresh process listing the folder: every run is found
    out = subprocess.run([sys.executable, "-c", "from defenses.runs.folder import list_runs; import sys;"
                          f"print(len(list_runs({str(tmp_path)!r})))"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2"


def test_a_run_adds_the_oracle_sweep_on_the_defense_s_own_counts(tmp_path):
    run_dir = create_run(anp_request(iterations=4, oracle=True, oracle_iterations=30, recover_triggers=False), tmp_path)
    assert execute(run_dir) == "done"
    oracle = read_json(run_dir / "oracle.json")
    counts = [r["n_pruned"] for r in read_json(run_dir / "sweep.json")["count"]]
    assert [r["n_pruned"] for r in oracle["rows"]] == counts and oracle["iterations"] == 30
    assert oracle["rows"][0]["asr"] > 0.95  # nothing pruned: the backdoor is there
    cut = oracle["smallest_cut"]
    assert cut is None or (cut["asr"] < 0.05 and cut == min((r for r in oracle["rows"] if r["asr"] < 0.05),
                                                            key=lambda r: r["n_pruned"]))
    assert any(e["type"] == "stage" and e["stage"] == "oracle" for e in read_events(run_dir))
    masks = load_tensors(run_dir / "oracle_scores.safetensors")  # the oracle's own masks, for the neuron table
    scores = load_tensors(run_dir / "scores.safetensors")
    assert {k: v.shape for k, v in masks.items()} == {k: v.shape for k, v in scores.items()}
    assert all(((v > 0) & (v < 1)).all() for v in masks.values())


def test_the_oracle_is_refused_without_a_trigger(tmp_path):
    from defenses.runs.inputs import preflight
    from sample_models import HERE, catalog

    entry = catalog()["cnn_blend"]
    model = {"architecture": "cnn", "arch_kwargs": entry["arch_kwargs"], "checkpoint": str(HERE / entry["weights"])}
    request = RunRequest(defense="clp", params={}, model=model, data=DATA, oracle=True)
    with pytest.raises(ValueError, match="The oracle needs the trigger"):
        preflight(request)
    preflight(RunRequest(defense="clp", params={}, model=model, data=DATA))  # without the oracle: fine


def test_any_run_can_recover_triggers_on_the_original_model(tmp_path):
    from defenses.methods.trigger_recovery import load_recovery

    request = RunRequest(defense="clp", params={}, model=SAMPLE, data=DATA, recover_on="original",
                         recovery_params={"steps": 3, "labels": [0, 3]})
    run_dir = create_run(request, tmp_path)
    assert execute(run_dir) == "done"
    rec = load_recovery(run_dir / "triggers")
    assert rec.recovered_on == "original" and rec.labels == [0, 3] and rec.config["steps"] == 3
    assert tuple(rec.masks.shape) == (2, 1, 28, 28)
    assert rec.asr_on_model == rec.asr_on_original  # recovered on the original, measured on it
    assert not (run_dir / "unlearned.safetensors").exists()


@pytest.mark.parametrize("settings, fragment", [
    ({"recover_on": "backdoored"}, "Trigger recovery runs on the 'unlearned' or the 'original' model, not 'backdoored'."),
    ({"recovery_params": {"step": 3}}, "TriggerRecoveryConfig has no setting step"),
    ({"recovery_params": {"steps": 0}}, "steps"),
])
def test_bad_recovery_settings_are_refused_before_a_folder_exists(tmp_path, settings, fragment):
    from defenses.base import ConfigError

    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        create_run(RunRequest(defense="clp", params={}, model=SAMPLE, data=DATA, **settings), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_running_worker_gives_a_core_back_while_a_second_run_works(tmp_path):
    first = start_run(anp_request(iterations=100000), tmp_path)
    wait_for(first, ("running",))
    alone = read_status(first)["threads"]
    shared = min(alone, max(1, (os.cpu_count() or 1) // 2))  # half the cores, never more than torch allows
    if shared == alone:
        pytest.skip("one core (or one thread allowed): there is nothing to share")
    second = start_run(anp_request(iterations=100000), tmp_path)
    try:
        assert wait_for_threads(first, shared) == shared
        wait_for(second, ("running",))
        assert read_status(second)["threads"] == shared
        cancel_run(second)
        wait_for(second, ("cancelled", "failed"))
        assert wait_for_threads(first, alone) == alone  # alone again: it takes its cores back
        assert any(e["type"] == "threads" for e in read_events(first))
    finally:
        cancel_run(second)
        cancel_run(first)
    assert wait_for(first, ("cancelled", "failed"))["state"] == "cancelled"


def wait_for_threads(run_dir, threads, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        if read_status(run_dir).get("threads") == threads:
            return threads
        time.sleep(0.2)
    return read_status(run_dir).get("threads")


def test_live_runs_share_the_cores(tmp_path):
    me = tmp_path / "me"
    me.mkdir()
    write_json(me / "status.json", {"state": "queued"})
    assert fair_threads(me, cores=8) == 8  # alone: every core
    live = os.getpid()  # this test's own process stands in for a live worker
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for name, state, pid in [("a", "running", live), ("b", "queued", live), ("c", "done", live),
                             ("d", "failed", live), ("e", "queued", None), ("f", "running", int(ended.stdout))]:
        (tmp_path / name).mkdir()
        write_json(tmp_path / name / "config.json", {"defense": "anp"})
        write_json(tmp_path / name / "status.json", {"state": state, "pid": pid})
    # only a and b have a live worker: not a finished run, a run never started, or a dead worker
    assert fair_threads(me, cores=8) == 8 // 3
    assert fair_threads(me, cores=2) == 1
    assert read_status(tmp_path / "f")["state"] == "failed"


@pytest.mark.parametrize("set_by_user", [None, "ACTIVE"])
def test_workers_start_with_sleeping_openmp_threads_unless_the_user_chose(tmp_path, monkeypatch, set_by_user):
    """spawn_worker, which starts every run, recovery and scan worker, gives OpenMP's waiting
    threads the PASSIVE policy (bench.omp_wait: spinning ones slowed a worker beside a light load
    and two workers at once); a policy already in the environment is left as it is."""
    from defenses.runs.folder import spawn_worker

    (tmp_path / "envprobe.py").write_text("import os\nprint(os.environ.get('OMP_WAIT_POLICY'))\n")
    monkeypatch.chdir(tmp_path)
    if set_by_user:
        monkeypatch.setenv("OMP_WAIT_POLICY", set_by_user)
    else:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    proc = spawn_worker(["envprobe"], tmp_path / "probe.log")
    proc.wait(timeout=60)
    assert (tmp_path / "probe.log").read_text().strip() == (set_by_user or "PASSIVE")
    assert os.environ.get("OMP_WAIT_POLICY") == set_by_user  # the caller's own environment is untouched
