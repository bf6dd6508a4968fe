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
Each run executes in its own process (``python -m defenses.runs work RUN_DIR``) in a new session,
so a crash or cancel never touches the web server, and the run outlives a server restart.
"""
from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .base import NullCallback, check_range, config_from_dict, get_defense
from .poisoned import PoisonedSet

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL = ("done", "failed", "cancelled")
DEFAULT_RUNS_DIR = os.environ.get("PRUNESCOPE_RUNS", "runs")
PROBE_IMAGES = 300


# ---------------------------------------------------------------- atomic files


def write_json(path: Path, obj) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_jsonable))
    os.replace(tmp, path)


def read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def _jsonable(o):
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
    from .checkpoints import save_safetensors

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
    from .base import ConfigError
    from .trigger_recovery import TriggerRecoveryConfig

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
    model_label = request.model.get("sample") or Path(str(request.model.get("checkpoint", "model"))).stem
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{request.defense}-{model_label}-{secrets.token_hex(2)}"
    run_dir = runs_dir / run_id
    (run_dir / "snapshots").mkdir(parents=True)
    write_json(run_dir / "config.json", {"run_id": run_id, "created": time.time(), **request.to_dict()})
    write_json(run_dir / "status.json", {"state": "queued", "created": time.time()})
    return run_dir


def start_run(request: RunRequest, runs_dir: str | Path = DEFAULT_RUNS_DIR) -> Path:
    """Create the run folder and start its worker process; returns at once."""
    run_dir = create_run(request, runs_dir)
    log = open(run_dir / "worker.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "defenses.runs", "work", str(run_dir)], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=os.getcwd())
    log.close()
    status = read_json(run_dir / "status.json", {})
    if status.get("state") == "queued":
        status["pid"] = proc.pid
        write_json(run_dir / "status.json", status)
    return run_dir


def cancel_run(run_dir: str | Path) -> bool:
    """Ask a running worker to stop (SIGTERM); it records ``cancelled``. False if not running."""
    status = read_status(run_dir)
    pid = status.get("pid")
    if status.get("state") not in ("queued", "running") or not pid:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
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


def read_status(run_dir: str | Path) -> dict:
    """The run's status; a run whose worker died without a word is marked failed here."""
    run_dir = Path(run_dir)
    status = read_json(run_dir / "status.json", {"state": "failed", "error": "The run folder has no status file."})
    if status.get("state") in ("running", "queued") and status.get("pid") and not _alive(status["pid"]):
        time.sleep(0.05)  # the worker may be writing its last status right now
        status = read_json(run_dir / "status.json", status)
        if status.get("state") in ("running", "queued"):
            status.update(state="failed", finished=time.time(),
                          error="The worker process ended unexpectedly (killed, or out of memory); start the run again.")
            write_json(run_dir / "status.json", status)
    return status


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


# ---------------------------------------------------------------- loading what a run needs


def load_model(model_spec: dict, data_shape=None, num_classes=None):
    """(model, trigger spec dict or None from the sample catalog, description). The spec's
    ``normalize`` (a preset name or mean/std) goes in front of the model (defenses.normalization)."""
    from .normalization import attach as attach_normalization

    if "sample" in model_spec:
        from sample_models import load_sample

        s = load_sample(model_spec["sample"])
        attach_normalization(s.model, model_spec.get("normalize"), (data_shape or (1,))[0])
        return s.model, (s.spec.to_dict() if s.spec else None), s.entry["title"]
    from .checkpoints import CheckpointError, load_into, load_state_dict
    from .models import architectures_fitting, build_model

    arch = model_spec["architecture"]
    c, h, _ = model_spec.get("input_shape") or data_shape
    kwargs = dict(model_spec.get("arch_kwargs") or {})
    # the class count and channels given as architecture keywords win over the dataset's (no clash)
    classes = kwargs.pop("num_classes", None) or model_spec.get("num_classes") or num_classes
    c = kwargs.pop("in_channels", None) or c
    h = kwargs.pop("image_size", None) or h
    model = build_model(arch, classes, c, h, **kwargs)
    try:
        load_into(model, model_spec["checkpoint"])
    except CheckpointError as e:
        if "does not fit" not in str(e):
            raise
        # Name the architectures the file's keys do fit, tried here, rather than leave the user to guess.
        fits = architectures_fitting(load_state_dict(model_spec["checkpoint"]), classes, c, h, skip=arch)
        if not fits:
            raise
        raise CheckpointError(f"{str(e).rstrip('.')}; its parameter names fit {', '.join(fits)}: choose that "
                              "architecture.") from None
    attach_normalization(model, model_spec.get("normalize"), c)  # in front of the model, never inside it
    model.eval()
    return model, None, f"{arch} from {Path(model_spec['checkpoint']).name}"


def load_data(data_spec: dict):
    from .data import load_dataset

    spec = dict(data_spec)
    name = spec.pop("dataset", "mnist5k")
    return load_dataset(name, **spec)


def check_model_fits_data(model, data) -> None:
    """One forward pass on two test images; a channel or class mismatch becomes one sentence."""
    from .data import DataError

    x = data.test.images(torch.arange(min(2, len(data.test))))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            out = model(x.to(device))
            model.train(was)
    except RuntimeError as e:
        c = data.shape[0]
        raise DataError(f"The model cannot take this dataset's {c}-channel {data.shape[1]}x{data.shape[2]} images "
                        f"(grayscale vs colour or size mismatch: {str(e).splitlines()[0][:120]}).") from None
    if out.ndim != 2 or out.shape[1] != data.num_classes:
        raise DataError(f"The model outputs {tuple(out.shape[1:])} scores per image but the dataset has "
                        f"{data.num_classes} classes; choose the matching dataset or number of classes.")


def load_inputs(model_spec: dict, data_spec: dict, trigger_dict: dict | None):
    """(data, model, trigger dict, trigger, title): the run's inputs loaded and checked to fit;
    the trigger is the one asked for (a recipe or a poisoned test set), else the sample's own,
    else None."""
    from .poisoned import build_trigger

    data = load_data(data_spec)
    model, sample_trigger, title = load_model(model_spec, data.shape, data.num_classes)
    check_model_fits_data(model, data)
    trigger_dict = trigger_dict if trigger_dict is not None else sample_trigger
    trigger = build_trigger(trigger_dict, data.shape, data.num_classes)
    return data, model, trigger_dict, trigger, title


def preflight(request: RunRequest) -> None:
    """Load the run's inputs here, before a run folder or a worker exists, so bad input (a broken
    checkpoint, the wrong dataset, a clean set too small, a trigger that does not fit) is refused
    in one sentence instead of becoming a failed run."""
    from .base import check_clean_data

    from .base import config_from_dict
    from .neurons import find_neurons

    resolve_device_name(request.device)
    info = get_defense(request.defense)
    config = config_from_dict(info.config_cls, request.params)
    data, model, trigger_dict, trigger, _ = load_inputs(request.model, request.data, request.trigger)
    if info.check is not None:  # a model this defense cannot handle (e.g. Hölder without an MLP head)
        info.check(model, find_neurons(model, data.shape), config)
    if info.needs_data or request.oracle:
        check_clean_data(data.clean, info.title.split(":")[0] if info.needs_data else "The oracle")
    if request.oracle and trigger_dict is None:
        raise ValueError("The oracle needs the trigger, and this model has none on record: give one or leave the "
                         "oracle off.")
    if request.oracle:
        from .oracle import check_oracle_trigger

        check_oracle_trigger(trigger)


# ---------------------------------------------------------------- the worker


class Cancelled(BaseException):
    pass


class RunFolderCallback(NullCallback):
    """Writes progress into the run folder: throttled step events and status, every snapshot,
    and at each snapshot a probe of the pruned model's ACC/ASR on a slice of the test split."""

    def __init__(self, run_dir: Path, stage_offset: int = 0, probe=None, every: float = 0.5, share=None,
                 share_every: float = 2.0):
        self.run_dir = Path(run_dir)
        self.every = every
        self.probe = probe
        self.share = share  # () -> this worker's fair number of threads now; None: keep what it has
        self.share_every = share_every
        self._last = 0.0
        self._last_share = time.monotonic()
        self._events = open(self.run_dir / "events.jsonl", "a")

    def emit(self, **event):
        event.setdefault("t", time.time())
        self._events.write(json.dumps(event, default=_jsonable) + "\n")
        self._events.flush()

    def begin(self, total, stages=None):
        self.emit(type="begin", total=total, stages=stages or {})
        self._progress("begin", 0, total)

    def step(self, stage, step, total, metrics):
        now = time.monotonic()
        if step >= total or now - self._last >= self.every:
            self._last = now
            if self.share is not None and now - self._last_share >= self.share_every:
                self._last_share = now
                self._rebalance()
            self.emit(type="step", stage=stage, step=step, total=total, metrics=metrics)
            self._progress(stage, step, total)

    def _rebalance(self):
        """Runs start and end while this one works: take the share of the cores it has now, so a
        run started alone gives a core back when a second one starts, and takes it back after."""
        threads = self.share()
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
            self.emit(type="threads", threads=threads)

    def snapshot(self, scores, step):
        save_tensors(self.run_dir / "snapshots" / f"{step:07d}.safetensors", scores)
        self.emit(type="snapshot", step=step)
        if self.probe is not None:
            self.emit(type="probe", step=step, **self.probe(scores))

    def end(self, error=None):
        self.emit(type="end", error=None if error is None else f"{type(error).__name__}: {error}")

    def _progress(self, stage, step, total):
        status = read_json(self.run_dir / "status.json", {})
        status["progress"] = {"stage": stage, "step": step, "total": total}
        status["threads"] = torch.get_num_threads()
        write_json(self.run_dir / "status.json", status)

    def close(self):
        self._events.close()


def one_sentence(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, (ValueError, KeyError, FileNotFoundError)):
        return msg.strip("'\"")
    return f"{type(e).__name__}: {msg}"


def fair_threads(run_dir: str | Path, cores: int | None = None) -> int:
    """CPU threads for this run's worker: the cores shared evenly with the other live runs in the
    same folder. Two workers with a thread per core each fight over the cores, and both ran more
    than twice as slowly as with one thread each (measured: 47 s against 21 s for an ANP and an
    RNP run together on 2 cores). A worker asks again every few seconds (RunFolderCallback)."""
    run_dir = Path(run_dir)
    cores = cores or os.cpu_count() or 1
    # list_runs reads each status through read_status, so a dead worker's run counts as failed
    others = sum(1 for r in list_runs(run_dir.parent) if r["path"] != run_dir and r["status"].get("pid")
                 and r["status"].get("state") in ("queued", "running"))
    return max(1, cores // (1 + others))


def execute(run_dir: str | Path) -> str:
    """Run the defense described in ``run_dir`` in this process and fill the folder.
    Returns the final state."""
    run_dir = Path(run_dir)
    cfg = read_json(run_dir / "config.json")
    status = read_json(run_dir / "status.json", {})
    allowed = torch.get_num_threads()  # never more than the user allowed

    def share() -> int:
        return min(allowed, fair_threads(run_dir))

    threads = share()
    torch.set_num_threads(threads)
    status.update(state="running", pid=os.getpid(), started=time.time(), threads=threads)
    write_json(run_dir / "status.json", status)

    def on_term(signum, frame):
        raise Cancelled()

    signal.signal(signal.SIGTERM, on_term)
    cb = None
    try:
        cb = RunFolderCallback(run_dir, share=share)
        state = _execute(run_dir, cfg, cb)
        final = {"state": state}
    except Cancelled:
        final = {"state": "cancelled"}
    except BaseException as e:  # the worker records every failure; the server never sees it
        (run_dir / "error.txt").write_text(traceback.format_exc())
        final = {"state": "failed", "error": one_sentence(e)}
    finally:
        if cb is not None:
            cb.close()
    status = read_json(run_dir / "status.json", {})
    status.update(final, finished=time.time())
    write_json(run_dir / "status.json", status)
    return status["state"]


def _execute(run_dir: Path, cfg: dict, cb: RunFolderCallback) -> str:
    from .evaluation import evaluate, selection_key, sweep
    from .neurons import count_selected, find_neurons, prune, selection_by_threshold

    device = resolve_device_name(cfg.get("device", "auto"))
    torch.manual_seed(cfg["params"].get("seed", 0))
    cb.emit(type="stage", stage="loading")
    t0 = time.perf_counter()
    data, model, trigger_dict, trigger, title = load_inputs(cfg["model"], cfg["data"], cfg.get("trigger"))
    model.to(device)
    nmap = find_neurons(model, data.shape, device)
    t1 = time.perf_counter()
    baseline = evaluate(model, data.test, trigger, device=device)
    cb.emit(type="baseline", **baseline)
    # Where a run's time goes (timings.json): the worker's start-up is the time before "loading".
    timings = {"loading_s": t1 - t0, "baseline_s": time.perf_counter() - t1}

    info = get_defense(cfg["defense"])
    config = config_from_dict(info.config_cls, cfg["params"])
    defense = info.cls(config)
    probe_split = data.test.subset(torch.arange(min(PROBE_IMAGES, len(data.test))))
    probe_trigger = trigger.head(PROBE_IMAGES) if isinstance(trigger, PoisonedSet) else trigger
    suspicious_rule = {}

    def probe(scores):
        if "threshold" not in suspicious_rule:
            return {}
        sel = selection_by_threshold(scores, suspicious_rule["threshold"], suspicious_rule["suspicious"])
        m = evaluate(prune(model, nmap, sel, suspicious_rule["rule"]), probe_split, probe_trigger, device=device)
        return {"n_pruned": count_selected(sel), **m}

    # ANP and RNP masks are low-is-suspicious with a fixed threshold, known before the run ends.
    if hasattr(config, "threshold") and cfg["defense"] in ("anp", "rnp"):
        suspicious_rule.update(threshold=config.threshold, suspicious="low", rule="gamma")
    cb.probe = probe
    cb.emit(type="stage", stage="defense")
    t2 = time.perf_counter()
    result = defense.run(model, data.clean, callback=cb, device=device)
    save_tensors(run_dir / "scores.safetensors", result.scores)
    t3 = time.perf_counter()
    timings["defense_s"] = t3 - t2

    default_sel = selection_by_threshold(result.scores, result.threshold, result.suspicious)
    default = evaluate(prune(model, nmap, default_sel, result.prune_rule), data.test, trigger, device=device)
    default["n_pruned"] = count_selected(default_sel)
    timings["own_cut_s"] = time.perf_counter() - t3

    extras = {k: v for k, v in result.extras.items() if _is_plain(v)}
    layers = [dataclasses.asdict(l) for l in nmap.layers if l.name in result.scores]
    summary = {"defense": result.defense, "suspicious": result.suspicious, "prune_rule": result.prune_rule,
               "threshold": result.threshold, "config": result.config, "timings": result.timings,
               "baseline": baseline, "default": default, "layers": layers, "title": title,
               "trigger": trigger_dict, "trigger_known": trigger_dict is not None,
               "num_classes": data.num_classes, "input_shape": list(data.shape), "extras": extras,
               "device": device}
    write_json(run_dir / "result.json", summary)

    cb.emit(type="stage", stage="sweep")
    t_sweep = time.perf_counter()
    # One evaluation per distinct pruned model in the whole run: both sweeps share them, starting
    # with the two already made (nothing pruned: the baseline; the defense's own cut).
    empty = {k: torch.zeros(v.numel(), dtype=torch.bool) for k, v in result.scores.items()}
    evaluations = {selection_key(empty): baseline,
                   selection_key(default_sel): {"acc": default["acc"], "asr": default["asr"]}}
    seeded = len(evaluations)  # 1 when the own cut prunes nothing
    sweeps = {}
    for by in ("threshold", "count"):
        rows = sweep(model, nmap, result.scores, result.suspicious, data.test, trigger, rule=result.prune_rule,
                     by=by, callback=cb, device=device, evaluations=evaluations)
        sweeps[by] = [r.to_dict() for r in rows]
    write_json(run_dir / "sweep.json", sweeps)
    timings["sweeps_s"], timings["evaluations"] = time.perf_counter() - t_sweep, len(evaluations) - seeded
    write_json(run_dir / "timings.json", timings)

    if cfg.get("oracle") and trigger is not None:
        cb.emit(type="stage", stage="oracle")
        from .oracle import oracle_scores, oracle_sweep, smallest_cut

        t0 = time.perf_counter()
        iterations = cfg.get("oracle_iterations", 400)
        # A poisoned test set: the oracle learns on one half of its images and is measured on the other.
        learn_on, measure_on = trigger.halves() if isinstance(trigger, PoisonedSet) else (trigger, trigger)
        masks = oracle_scores(model, data.clean, learn_on, iterations=iterations, layers=tuple(result.scores),
                              device=device, callback=cb)
        # the defense's own counts, so both curves share their points
        rows = oracle_sweep(model, nmap, masks, data.test, measure_on,
                            counts=[r["n_pruned"] for r in sweeps["count"]], device=device)
        cut = smallest_cut(rows)
        save_tensors(run_dir / "oracle_scores.safetensors", masks)
        # oracle.json last: its presence says the oracle is complete
        write_json(run_dir / "oracle.json", {"iterations": iterations, "seconds": time.perf_counter() - t0,
                                             "asr_on": "the poisoned test images it did not learn on (one in two)"
                                             if measure_on is not trigger else "the test split, triggered",
                                             "rows": [r.to_dict() for r in rows],
                                             "smallest_cut": cut.to_dict() if cut else None})

    unlearned = result.extras.get("unlearned_model")
    if unlearned is not None:
        from .checkpoints import save_safetensors

        save_safetensors(unlearned, str(run_dir / "unlearned.safetensors"))
    on = cfg.get("recover_on", "unlearned")
    subject = model if on == "original" else unlearned
    if cfg.get("recover_triggers", True) and subject is not None:
        cb.emit(type="stage", stage="trigger recovery")
        from .trigger_recovery import TriggerRecovery, TriggerRecoveryConfig, save_recovery

        recovery = TriggerRecovery(config_from_dict(TriggerRecoveryConfig, cfg.get("recovery_params") or {}))
        rec = recovery.run(subject, data.clean, callback=cb, device=device, original_model=model)
        rec.recovered_on = on
        save_recovery(run_dir / "triggers", rec)
    cb.emit(type="stage", stage="done")
    return "done"


def _is_plain(v) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


WORKER_NICE = 10


def _lower_priority() -> None:
    """Run workers below the dashboard's server: on 2 busy cores a slider step waited 2-3 s for
    the CPU while a defense ran at the same priority. The defense loses little (the server is idle
    most of the time); only the worker process is lowered, never the caller of :func:`execute`."""
    try:
        os.nice(WORKER_NICE)
    except (AttributeError, OSError):  # no nice on this platform, or not permitted: run as it is
        pass


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "work":
        _lower_priority()
        state = execute(argv[1])
        sys.exit(0 if state == "done" else 1)
    print("usage: python -m defenses.runs work RUN_DIR", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
