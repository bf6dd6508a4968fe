"""The run's worker: the process that runs one defense into its run folder.

``python -m defenses.runs.worker work RUN_DIR`` (started by :func:`defenses.runs.folder.start_run` in a new
session, below the server's priority) reads ``config.json``, loads the inputs, runs the defense
with a callback that writes progress, snapshots and probes into the folder, then the sweeps, the
oracle and trigger recovery when asked, and records the final state. Every failure is kept in the
folder (``error.txt`` and a one-sentence ``status.json``); nothing reaches the web server.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import torch

from ..base import NullCallback, config_from_dict, get_defense
from .inputs import load_inputs
from ..readers.poisoned import PoisonedSet
from .folder import jsonable, list_runs, read_json, resolve_device_name, save_tensors, write_json

PROBE_IMAGES = 300  # test images in each live probe of the pruned model's ACC/ASR

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
        self._events.write(json.dumps(event, default=jsonable) + "\n")
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
    from ..evaluation import evaluate, selection_key, sweep
    from ..neurons import count_selected, find_neurons, prune, selection_by_threshold

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
        from ..methods.oracle import oracle_scores, oracle_sweep, smallest_cut

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
        from ..readers.checkpoints import save_safetensors

        save_safetensors(unlearned, str(run_dir / "unlearned.safetensors"))
    on = cfg.get("recover_on", "unlearned")
    subject = model if on == "original" else unlearned
    if cfg.get("recover_triggers", True) and subject is not None:
        cb.emit(type="stage", stage="trigger recovery")
        from ..methods.trigger_recovery import TriggerRecovery, TriggerRecoveryConfig, save_recovery

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
    print("usage: python -m defenses.runs.worker work RUN_DIR", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
