"""How long a run will take, stage by stage, measured before it starts.

Each stage's cost is measured on the run's own model, data and device by running the stage itself
for its first steps (a defense, the oracle, trigger recovery) or timing one evaluation of the
test split (the sweeps), then multiplied by the number of steps the run's settings ask for. The
tour found a run whose trigger recovery took 30 of its 31 minutes with nothing before Start saying
so; a few seconds of measuring says it.

What it cannot know: threads the worker will share with other runs (it measures with the threads
this process has), stages after the first of a defense (RNP's recovery, Hölder's constants) are
taken to cost what the first stage's steps cost, and the sweeps' evaluations are an upper bound
(points that prune the same neurons share one evaluation).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..base import NullCallback, config_from_dict, get_defense


# A first step (with the stage's set-up) this long is measured alone: a full-width ResNet on a CPU
# takes about 14 s per ANP iteration, and a second one would double the wait for the estimate.
ONE_STEP_S = 5.0


class _Measured(BaseException):
    """Raised from the callback once enough steps are timed; a BaseException so that no stage's
    own ``except Exception`` takes it for a failure."""


class _StepClock(NullCallback):
    def __init__(self, steps: int, budget_s: float, now=time.perf_counter):
        self.steps, self.budget_s, self.now = steps, budget_s, now
        self.times: list[float] = []
        self.total, self.stages = 0, {}

    def begin(self, total, stages=None):
        self.total, self.stages = int(total), dict(stages or {})
        self.t_begin = self.now()

    def step(self, stage, step, total, metrics):
        self.times.append(self.now())
        timed = self.times[-1] - self.times[0]  # between steps, the stage's set-up left out
        if (len(self.times) >= self.steps or (len(self.times) >= 2 and timed >= self.budget_s)
                or self.times[0] - self.t_begin >= ONE_STEP_S):  # a large model: one step says enough
            raise _Measured()

    def per_step(self) -> float:
        """Seconds per step: between steps when two or more were timed (the first carries the
        stage's set-up), else the first step with its set-up (an upper bound)."""
        if len(self.times) >= 2:
            return (self.times[-1] - self.times[0]) / (len(self.times) - 1)
        return self.times[0] - self.t_begin if self.times else 0.0


def _clocked(work, steps: int = 3, budget_s: float = 1.0) -> tuple[_StepClock, float]:
    """Run ``work(callback)`` until ``steps`` steps (or ``budget_s`` seconds after the first one);
    returns the clock and the seconds it took when the work finished on its own (else None)."""
    clock = _StepClock(steps, budget_s)
    t0 = time.perf_counter()
    try:
        work(clock)
    except _Measured:
        return clock, None
    return clock, time.perf_counter() - t0


@dataclass(frozen=True)
class Stage:
    kind: str  # loading, baseline, defense, sweeps, oracle, recovery: the worker's stages in order
    name: str  # a person's words: "ANP (anp 2000 steps)"
    seconds: float
    upper_bound: bool = False  # "up to": the sweeps


def _steps_cost(clock: _StepClock, finished_s: float | None) -> float:
    if finished_s is not None:  # it finished within the probe: that is its cost
        return finished_s
    setup = (clock.times[0] - clock.t_begin) - clock.per_step() if clock.times else 0.0
    return max(0.0, setup) + clock.per_step() * clock.total


def estimate(request, steps: int = 5, budget_s: float = 2.0) -> list[Stage]:
    """The stages a run of ``request`` (a RunRequest) will go through, each with its measured cost
    in seconds on this machine now. Costs a few of each stage's steps (about a second each here
    for the samples; one step of each for a large model on a CPU)."""
    from ..evaluation import default_thresholds, evaluate
    from .inputs import load_inputs
    from ..neurons import find_neurons
    from ..readers.poisoned import PoisonedSet
    from .folder import resolve_device_name
    from .worker import PROBE_IMAGES

    device = resolve_device_name(request.device)
    t0 = time.perf_counter()
    data, model, _, trigger, _ = load_inputs(request.model, request.data, request.trigger)
    model.to(device)
    find_neurons(model, data.shape, device)  # a model the run could not prune fails here, in one sentence
    stages = [Stage("loading", "loading the model and data", time.perf_counter() - t0)]

    # One evaluation of the test split (ACC and ASR), from a slice of it
    n = min(500, len(data.test))
    head = trigger.head(n) if isinstance(trigger, PoisonedSet) else trigger
    t1 = time.perf_counter()
    evaluate(model, data.test.subset(torch.arange(n)), head, device=device)
    one_eval = (time.perf_counter() - t1) * len(data.test) / n
    stages.append(Stage("baseline", "the model before pruning (one evaluation)", one_eval))

    info = get_defense(request.defense)
    config = config_from_dict(info.config_cls, request.params)
    clock, done = _clocked(lambda cb: info.cls(config).run(model, data.clean, callback=cb, device=device),
                           steps, budget_s)
    # then the worker's live probes (ANP and RNP: ACC/ASR of the pruned model on a slice of the test
    # split at each snapshot) and its evaluation of the defense's own cut
    probe_s = _live_probes(request.defense, config) * one_eval * min(PROBE_IMAGES, len(data.test)) / len(data.test)
    stages.append(Stage("defense", f"{info.title.split(':')[0]}{_budget(clock)}, then its own cut",
                        _steps_cost(clock, done) + probe_s + one_eval))

    # Both sweeps: 20 thresholds and 11 counts, less the two points the run already evaluated
    # (nothing pruned; the own cut); points that prune the same neurons share an evaluation.
    evaluations = len(default_thresholds("low")) + 11 - 2 + 1  # + 1: the own cut
    stages.append(Stage("sweeps", f"the sweeps (up to {evaluations} evaluations)", evaluations * one_eval, upper_bound=True))

    if request.oracle and trigger is not None:
        from ..methods.oracle import oracle_scores

        learn_on = trigger.halves()[0] if isinstance(trigger, PoisonedSet) else trigger
        iterations = request.oracle_iterations
        clock, done = _clocked(lambda cb: oracle_scores(model, data.clean, learn_on, iterations=iterations,
                                                        device=device, callback=cb), steps, budget_s)
        stages.append(Stage("oracle", f"the oracle, {iterations} iterations", _steps_cost(clock, done) + 11 * one_eval))

    # the worker recovers on RNP's unlearned model, or on the original when asked (defenses.runs.worker)
    if request.recover_triggers and (request.recover_on == "original" or request.defense == "rnp"):
        # the unlearned model RNP leaves has the original's architecture: the same cost per step
        stages.append(_recovery_stage(model, data, request.recovery_params, device, steps, budget_s))
    return stages


def _live_probes(defense: str, config) -> int:
    """How many live probes the worker makes during the defense (defenses.runs.worker: ANP and RNP, at
    each snapshot: every ``snapshot_every`` ANP iterations and the last; each RNP recovery epoch)."""
    if defense == "anp":
        return math.ceil(config.iterations / config.snapshot_every)
    if defense == "rnp":
        return int(config.recover_epochs)
    return 0


def _recovery_stage(model, data, params: dict | None, device, steps: int, budget_s: float) -> Stage:
    from ..methods.trigger_recovery import TriggerRecovery, TriggerRecoveryConfig

    rec = TriggerRecovery(config_from_dict(TriggerRecoveryConfig, params or {}))
    clock, done = _clocked(lambda cb: rec.run(model, data.clean, callback=cb, device=device), steps, budget_s)
    labels = data.num_classes if rec.config.labels is None else len(rec.config.labels)
    return Stage("recovery", f"trigger recovery, {labels} labels x {rec.config.steps} steps", _steps_cost(clock, done))


def estimate_recovery(model_spec: dict, data_spec: dict, trigger: dict | None = None, params: dict | None = None,
                      device: str = "auto", steps: int = 5, budget_s: float = 2.0) -> Stage:
    """Trigger recovery alone, for a run that finished without it (defenses.runs.recover_run)."""
    from .inputs import load_inputs
    from .folder import resolve_device_name

    device = resolve_device_name(device)
    data, model, _, _, _ = load_inputs(model_spec, data_spec, trigger)
    model.to(device)
    return _recovery_stage(model, data, params, device, steps, budget_s)


def _budget(clock: _StepClock) -> str:
    """`` (unlearn 40, recover 800 steps)``: the defense's own stages, as its progress names them."""
    parts = [f"{stage} {steps}" for stage, steps in clock.stages.items() if steps]
    if len(parts) == 1:
        return f" ({clock.total} steps)"
    return f" ({', '.join(parts)} steps)" if parts else ""


def human_seconds(seconds: float) -> str:
    """``45 s``, ``3 min``, ``1 h 5 min``: rounded as a person says a wait."""
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"{seconds:.0f} s"
    hours, minutes = divmod(round(seconds / 60), 60)  # 7190 s is "2 h 0 min", never "1 h 60 min"
    return f"{minutes} min" if not hours else f"{hours} h {minutes} min"
