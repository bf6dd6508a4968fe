"""The time estimate before Start: each stage measured on a few of its own steps, then multiplied
by the steps the settings ask for; the probe leaves the model as it was."""
import pytest

from defenses.runs import estimate as est
from defenses.runs.estimate import _StepClock, _steps_cost, estimate, human_seconds
from defenses.runs.folder import RunRequest

SAMPLE = {"sample": "cnn_badnets_centre"}
DATA = {"dataset": "mnist5k", "clean_count": 200, "seed": 0}


def clock(begin: float, times: list[float], total: int) -> _StepClock:
    c = _StepClock(steps=3, budget_s=1.0)
    c.t_begin, c.times, c.total = begin, times, total
    return c


def test_cost_is_setup_plus_the_time_between_steps_times_the_steps():
    # set-up 2 s (first step at 2.5 s, steps 0.5 s apart), 100 steps: 2 + 100 x 0.5
    assert _steps_cost(clock(0.0, [2.5, 3.0, 3.5], 100), None) == pytest.approx(52.0)
    # one step only (a large model): that step with its set-up, for every step: an upper bound
    assert _steps_cost(clock(0.0, [6.0], 10), None) == pytest.approx(60.0)
    # a stage that finished within the probe costs what it took
    assert _steps_cost(clock(0.0, [0.1], 5), 0.7) == 0.7


def test_the_probe_stops_after_its_steps_and_after_one_long_first_step():
    now = iter([0.0, 1.0, 1.1, 1.2, 1.3])
    c = _StepClock(steps=3, budget_s=10.0, now=lambda: next(now))
    c.begin(50)
    c.step("s", 1, 50, {})
    c.step("s", 2, 50, {})
    with pytest.raises(est._Measured):
        c.step("s", 3, 50, {})
    assert c.per_step() == pytest.approx(0.1)
    slow = iter([0.0, est.ONE_STEP_S + 1])
    c = _StepClock(steps=3, budget_s=1.0, now=lambda: next(slow))
    c.begin(2000)
    with pytest.raises(est._Measured):
        c.step("anp", 1, 2000, {})


def test_human_seconds():
    assert [human_seconds(s) for s in (0.2, 45, 200, 3900, 7190, 9000)] == \
        ["under a second", "45 s", "3 min", "1 h 5 min", "2 h 0 min", "2 h 30 min"]


def test_rnp_with_recovery_names_each_stage_and_leaves_the_model_untouched():
    from sample_models import load_sample

    request = RunRequest(defense="rnp", params={}, model=SAMPLE, data=DATA, recover_triggers=True,
                         recovery_params={"steps": 40})
    stages = estimate(request)
    assert [s.kind for s in stages] == ["loading", "baseline", "defense", "sweeps", "recovery"]
    by = {s.kind: s for s in stages}
    # RNP at the paper's 20 unlearning and 20 recovering epochs, on 200 clean images in batches of 128
    assert by["defense"].name == "RNP (unlearn 40, recover 40 steps), then its own cut", by["defense"].name
    assert by["recovery"].name == "trigger recovery, 10 labels x 40 steps"
    assert by["sweeps"].upper_bound and all(s.seconds > 0 for s in stages)
    # the recovery stage is gone when the run would not recover (an ANP run recovers only on the original)
    anp = estimate(RunRequest(defense="anp", params={"iterations": 30}, model=SAMPLE, data=DATA))
    assert [s.kind for s in anp] == ["loading", "baseline", "defense", "sweeps"]
    assert anp[2].name == "ANP (30 steps), then its own cut"


def test_clp_names_its_layers_and_no_recovery_unless_on_the_original():
    stages = estimate(RunRequest(defense="clp", params={}, model=SAMPLE, data=DATA))
    assert [s.name for s in stages[2:]] == ["CLP (5 steps), then its own cut", "the sweeps (up to 30 evaluations)"]
    stages = estimate(RunRequest(defense="clp", params={}, model=SAMPLE, data=DATA, recover_on="original",
                                 recovery_params={"steps": 20}))
    assert stages[-1].kind == "recovery"
