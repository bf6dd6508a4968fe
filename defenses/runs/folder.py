"""The run folder: what joins the engine and the dashboard.

A run is a folder ``<runs_dir>/<run_id>/`` holding

- ``config.json``: what was asked (model, data, trigger, defense and its hyperparameters, device);
- ``status.json``: ``queued`` / ``running`` / ``done`` / ``failed`` (with the error) / ``cancelled``,
  the worker's pid and the latest progress;
- ``events.jsonl``: progress lines appended live (begin, step, probe, stage, end);
- ``snapshots/NNNNNNN.safetensors``: the scores while the defense runs;
- at the end ``scores.safetensors``, ``result.json`` (baseline and default-cut ACC/ASR, timings,
  the defense's JSON-able extras), ``sweep.json`` (by threshold and by count), and for RNP
  ``unlearned.safetensors`` and ``triggers/`` (recovered masks and patterns, anomaly index).

Every file except the appended event log is written atomically (temporary name, then rename),
so a reader never sees half a file; a reader skips a torn last event line.
Each run executes in its own process (``python -m defenses.runs.worker work RUN_DIR``, :mod:`defenses.runs.worker`) in a new session,
so a crash or cancel never touches the web server, and the run outlives a server restart.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..base import check_range, config_from_dict, get_defense

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL = ("done", "failed", "cancelled")
DEFAULT_RUNS_DIR = os.environ.get("PRUNESCOPE_RUNS", "runs")


# ---------------------------------------------------------------- atomic files


def write_json(path: Path, obj) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=jsonable))
    os.replace(tmp, path)


def read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def jsonable(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, float) and o != o:
        return None
    return str(o)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from ..readers.checkpoints import save_safetensors

    save_safetensors({k: v.detach().float().cpu() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# ---------------------------------------------------------------- the request


@dataclass
class RunRequest:
    """What to run. ``model`` is ``{"sample": NAME}`` or ``{"architecture": ARCH, "checkpoint":
    PATH, "arch_kwargs": {...}}``; ``data`` is ``{"dataset": NAME, "root": ..., "clean_count": ...,
    "clean_fraction": ..., "seed": ...}``; ``trigger`` a TriggerSpec dict or None (unknown)."""

    defense: str
    params: dict[str, Any]
    model: dict[str, Any]
    data: dict[str, Any]
    trigger: dict[str, Any] | None = None
    device: str = "auto"
    recover_triggers: bool = True  # Neural Cleanse after the defense, on the model recover_on names
    recover_on: str = "unlearned"  # "unlearned": RNP's unlearned model (RNP runs only); "original": any run
    recovery_params: dict[str, Any] = dataclasses.field(default_factory=dict)  # TriggerRecoveryConfig settings
    oracle: bool = False  # then the trigger-aware oracle's sweep by count, a yardstick (needs the trigger)
    oracle_iterations: int = 400
    label: str = ""

    def to_dict(self):
        return dataclasses.asdict(self)


def resolve_device_name(name: str) -> str:
    if name in ("auto", "", None):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("A GPU was asked for but none is available here; choose the CPU.")
    return name


RECOVER_ON = ("unlearned", "original")  # RNP's unlearned model (RNP runs only), or the original (any run)


def check_recovery(request: RunRequest) -> None:
    """Refuse, in one sentence, trigger-recovery settings that cannot work."""
    from ..base import ConfigError
    from ..methods.trigger_recovery import TriggerRecoveryConfig

    if request.recover_on not in RECOVER_ON:
        raise ConfigError(f"Trigger recovery runs on the 'unlearned' or the 'original' model, "
                          f"not {request.recover_on!r}.")
    config_from_dict(TriggerRecoveryConfig, request.recovery_params or {})


def create_run(request: RunRequest, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Path:
    """Validate the request (the defense's config must build) and write the run folder."""
    info = get_defense(request.defense)
    config_from_dict(info.config_cls, request.params)  # raises ConfigError with one sentence
    check_recovery(request)
    check_range("oracle_iterations", request.oracle_iterations, 1, 1_000_000, integer=True)
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    # the sample's or the file's own name, cut short: a run id is read in pickers and typed in commands
    model_label = request.model.get("sample") or Path(str(request.model.get("checkpoint", "model"))).stem
    model_label = re.sub(r"[^A-Za-z0-9_-]+", "_", model_label).strip("_")[:24] or "model"
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{request.defense}-{model_label}-{secrets.token_hex(2)}"
    run_dir = runs_dir / run_id
    (run_dir / "snapshots").mkdir(parents=True)
    write_json(run_dir / "config.json", {"run_id": run_id, "created": time.time(), **request.to_dict()})
    write_json(run_dir / "status.json", {"state": "queued", "created": time.time()})
    return run_dir


def start_run(request: RunRequest, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Path:
    """Create the run folder and start its worker process; returns at once."""
    run_dir = create_run(request, runs_dir)
    proc = spawn_worker(["defenses.runs.worker", "work", str(run_dir)], run_dir / "worker.log")
    status = read_json(run_dir / "status.json", {})
    if status.get("state") == "queued":
        status["pid"] = proc.pid
        write_json(run_dir / "status.json", status)
    return run_dir


def spawn_worker(module_args: list[str], log_path: Path) -> subprocess.Popen:
    """``python -m module_args...`` in its own session, output appended to ``log_path``, reaped when
    it ends. Its OpenMP threads sleep while they wait (``OMP_WAIT_POLICY=PASSIVE`` unless the
    environment sets a policy): a worker shares the cores with the web server, the browser and
    other workers, and beside a light load spinning threads made ANP 14% slower, and two workers
    at once 2.4 times slower, than sleeping ones (``python -m bench.omp_wait``, docs/suite.md)."""
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", *module_args], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=os.getcwd(), env=env)
    reap(proc)
    return proc


def reap(proc: subprocess.Popen) -> None:
    """Wait for a worker in a daemon thread: a finished worker otherwise stays a zombie child of
    the web server (until Python happens to start another process)."""
    threading.Thread(target=proc.wait, daemon=True, name=f"reap-{proc.pid}").start()


def cancel_run(run_dir: str | Path) -> bool:
    """Ask a running worker to stop (SIGTERM); it records ``cancelled``. False if not running."""
    return stop_worker(read_status(run_dir))


def stop_worker(state: dict) -> bool:
    """SIGTERM to the worker a state file names while it is queued or running; False otherwise
    (each worker turns SIGTERM into its ``cancelled`` state)."""
    if state.get("state") not in ("queued", "running") or not state.get("pid"):
        return False
    try:
        os.kill(int(state["pid"]), signal.SIGTERM)
    except (OSError, ValueError):  # gone, not ours, or a garbled pid
        return False
    return True


def _alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as dead
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def read_state(path: str | Path, died: str, default: dict | None = None, persist: bool = False) -> dict:
    """A worker's state file (a run's status, a scan's, a recovery's job). One whose process died
    without a word reads as failed with ``died``; ``persist`` writes that down (with the time)."""
    path = Path(path)
    state = read_json(path, default if default is not None else {})
    if state.get("state") in ("running", "queued") and state.get("pid") and not _alive(state["pid"]):
        time.sleep(0.05)  # the worker may be writing its last state right now
        state = read_json(path, state)
        if state.get("state") in ("running", "queued"):
            state = {**state, "state": "failed", "error": died}
            if persist:
                state["finished"] = time.time()
                write_json(path, state)
    return state


def read_status(run_dir: str | Path) -> dict:
    """The run's status; a run whose worker died without a word is marked failed here."""
    return read_state(Path(run_dir) / "status.json",
                      "The worker process ended unexpectedly (killed, or out of memory); start the run again.",
                      default={"state": "failed", "error": "The run folder has no status file."}, persist=True)


def read_events(run_dir: str | Path, since: int = 0) -> list[dict]:
    """Event lines from line ``since`` on; a torn last line (being written) is skipped."""
    out = []
    try:
        with open(Path(run_dir) / "events.jsonl") as f:
            for i, line in enumerate(f):
                if i < since:
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    break
    except FileNotFoundError:
        pass
    return out


def list_snapshots(run_dir: str | Path) -> list[tuple[int, Path]]:
    snaps = []
    for p in sorted((Path(run_dir) / "snapshots").glob("*.safetensors")):
        try:
            snaps.append((int(p.stem), p))
        except ValueError:
            continue
    return snaps


def list_runs(runs_dir: str | Path = DEFAULT_RUNS_DIR) -> list[dict]:
    """Every readable run, newest first: {"run_id", "path", "config", "status"}."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    runs = []
    for d in runs_dir.iterdir():
        cfg = read_json(d / "config.json") if d.is_dir() else None
        if cfg:
            runs.append({"run_id": d.name, "path": d, "config": cfg, "status": read_status(d)})
    runs.sort(key=lambda r: r["config"].get("created", 0), reverse=True)
    return runs
