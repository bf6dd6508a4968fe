"""Trigger recovery for a run that has finished without it.

The tour ran the ANP demo, opened Triggers, and was told to start a new run: recovery was only a
stage of a run asked for before Start. This recovers triggers into an existing run's folder
(``triggers/``, as the worker's own stage writes it) on the run's original model, or on RNP's
unlearned model when the run kept one, in a process of its own:

    python -m defenses.runs.recover_run RUN_DIR

reads ``triggers/job.json`` (written by :func:`start_recovery`: where to recover and Neural
Cleanse's settings) and keeps its state and progress there; the run's own ``status.json`` is left
as it is, so the run stays finished and explorable throughout.
"""
from __future__ import annotations

import copy
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from ..base import NullCallback, config_from_dict
from .folder import RECOVER_ON, read_json, read_state, spawn_worker, stop_worker, write_json

JOB = "job.json"


def job_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "triggers" / JOB


def recovery_subjects(run_dir: str | Path) -> list[str]:
    """Where recovery can run for this run: the original model always, RNP's unlearned model when
    the run saved one."""
    return [on for on in RECOVER_ON if on == "original" or (Path(run_dir) / "unlearned.safetensors").exists()]


def start_recovery(run_dir: str | Path, on: str = "original", params: dict | None = None) -> None:
    """Start recovering triggers for a finished run, in a process of its own; returns at once.
    Raises ValueError with one sentence for a run that cannot have it."""
    from ..methods.trigger_recovery import TriggerRecoveryConfig

    run_dir = Path(run_dir)
    status = read_json(run_dir / "status.json", {})
    if status.get("state") != "done":
        raise ValueError(f"The run {run_dir.name} has not finished; recover its triggers once it is done.")
    if on not in recovery_subjects(run_dir):
        raise ValueError(f"The run {run_dir.name} kept no unlearned model (only RNP runs do); recover on the "
                         "original model instead.")
    config_from_dict(TriggerRecoveryConfig, params or {})  # ConfigError, one sentence, before anything starts
    if recovery_state(run_dir).get("state") in ("queued", "running"):
        raise ValueError(f"Triggers are already being recovered for {run_dir.name}.")
    job_path(run_dir).parent.mkdir(exist_ok=True)
    write_json(job_path(run_dir), {"state": "queued", "on": on, "params": params or {}, "created": time.time()})
    proc = spawn_worker(["defenses.runs.recover_run", str(run_dir)], run_dir / "triggers" / "recovery.log")
    job = read_json(job_path(run_dir), {})
    if job.get("state") == "queued":
        job["pid"] = proc.pid
        write_json(job_path(run_dir), job)


def recovery_state(run_dir: str | Path) -> dict:
    """``{"state": queued|running|done|failed|cancelled, "step", "total", "error"}`` of the last
    recovery started for this run, or ``{}`` when none was; a dead process is reported failed."""
    return read_state(job_path(run_dir), "The recovery process ended unexpectedly (killed, or out of memory).")


def cancel_recovery(run_dir: str | Path) -> bool:
    """Ask a recovery in progress to stop (SIGTERM); it records ``cancelled``. False if none runs."""
    return stop_worker(recovery_state(run_dir))


class _JobCallback(NullCallback):
    def __init__(self, run_dir: Path, every: float = 0.5):
        self.run_dir, self.every, self._last = run_dir, every, 0.0

    def step(self, stage, step, total, metrics):
        now = time.monotonic()
        if step >= total or now - self._last >= self.every:
            self._last = now
            job = read_json(job_path(self.run_dir), {})
            job.update(step=int(step), total=int(total), updated=time.time())
            write_json(job_path(self.run_dir), job)


class _Cancelled(BaseException):
    pass


def execute(run_dir: str | Path) -> str:
    """Recover the triggers ``triggers/job.json`` asks for into the run folder; returns the state."""
    from ..readers.checkpoints import load_state_dict
    from .inputs import load_inputs
    from .folder import resolve_device_name
    from ..methods.trigger_recovery import TriggerRecovery, TriggerRecoveryConfig, save_recovery
    from .worker import one_sentence

    run_dir = Path(run_dir)
    job = read_json(job_path(run_dir), {})
    job.update(state="running", pid=os.getpid(), started=time.time())
    write_json(job_path(run_dir), job)

    def on_term(signum, frame):
        raise _Cancelled()

    signal.signal(signal.SIGTERM, on_term)
    try:
        cfg = read_json(run_dir / "config.json")
        device = resolve_device_name(cfg.get("device", "auto"))
        data, model, _, _, _ = load_inputs(cfg["model"], cfg["data"], cfg.get("trigger"))
        model.to(device).eval()
        subject = model
        if job.get("on") == "unlearned":
            subject = copy.deepcopy(model)
            subject.load_state_dict(load_state_dict(str(run_dir / "unlearned.safetensors")))
        recovery = TriggerRecovery(config_from_dict(TriggerRecoveryConfig, job.get("params") or {}))
        rec = recovery.run(subject, data.clean, callback=_JobCallback(run_dir), device=device, original_model=model)
        rec.recovered_on = job.get("on", "original")
        save_recovery(run_dir / "triggers", rec)
        final = {"state": "done"}
    except _Cancelled:
        final = {"state": "cancelled"}
    except BaseException as e:  # kept in the folder; the server never sees it
        (run_dir / "triggers" / "error.txt").write_text(traceback.format_exc())
        final = {"state": "failed", "error": one_sentence(e)}
    job = read_json(job_path(run_dir), {})
    job.update(final, finished=time.time())
    write_json(job_path(run_dir), job)
    return job["state"]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m defenses.runs.recover_run RUN_DIR", file=sys.stderr)
        sys.exit(2)
    from .worker import _lower_priority

    _lower_priority()  # below the web server, as a run's worker
    sys.exit(0 if execute(argv[0]) == "done" else 1)


if __name__ == "__main__":
    main()
