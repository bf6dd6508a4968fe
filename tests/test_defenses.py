"""The contract every registered defense keeps, checked by enumerating the registry: result
shapes and keys, the caller's model untouched, no hooks left behind (also after an error),
progress reaching its total, and the same seed giving the same scores."""
from __future__ import annotations

import copy
import os

import pytest
import torch

from defenses.base import DefenseResult, NullCallback, RecordingCallback, all_defenses
from defenses.neurons import find_neurons
from planted import build_planted, clean_and_test

DEFENSES = sorted(all_defenses())


# bench/gpu.py runs this contract on the GPU (PRUNESCOPE_TEST_DEVICE=cuda); CI runs it on the CPU.
DEVICE = os.environ.get("PRUNESCOPE_TEST_DEVICE", "cpu")


@pytest.fixture(scope="module")
def planted():
    model = build_planted().to(DEVICE)
    clean, _ = clean_and_test()
    return model, clean


def make(name: str):
    info = all_defenses()[name]
    return info.cls(info.config_cls(**info.quick))


def hook_count(model: torch.nn.Module) -> int:
    n = 0
    for m in model.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        n += len(getattr(m, "parametrizations", {}) or {})
    return n


def test_the_registry_holds_the_four_defenses():
    assert set(DEFENSES) == {"anp", "rnp", "clp", "holder"}
    for name, info in all_defenses().items():
        assert info.title and info.summary
        info.config_cls()  # the paper's defaults are valid
        info.config_cls(**info.quick)


@pytest.mark.parametrize("name", DEFENSES)
def test_result_shapes_model_unchanged_progress_complete(name, planted):
    model, clean = planted
    model.eval()
    before = copy.deepcopy(model.state_dict())
    hooks = hook_count(model)
    rec = RecordingCallback()
    result = make(name).run(model, clean, callback=rec)

    assert isinstance(result, DefenseResult) and result.defense == name
    expected = {l.name: l.size for l in find_neurons(model, (1, 4, 4)).layers}
    scored = {k: v.shape for k, v in result.scores.items()}
    assert set(scored) <= set(expected) and scored, scored
    for layer, shape in scored.items():
        assert shape == (expected[layer],) and torch.isfinite(result.scores[layer]).all()
    assert result.suspicious in ("low", "high")
    assert result.prune_rule in ("gamma", "both")

    assert not model.training  # mode restored
    assert hook_count(model) == hooks
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{name} changed the caller's {k}"

    assert rec.ended and rec.error is None
    assert rec.total is not None and rec.steps, "no progress reported"
    assert rec.steps[-1][1] == rec.total, f"progress stopped at {rec.steps[-1][1]} of {rec.total}"
    assert all(step <= rec.total for _, step, _, _ in rec.steps)


class Boom(NullCallback):
    """A callback that raises on the second step, as a cancelled or crashing caller would."""

    def __init__(self):
        self.steps = 0
        self.error = None

    def step(self, stage, step, total, metrics):
        self.steps += 1
        if self.steps == 2:
            raise RuntimeError("boom")

    def end(self, error=None):
        self.error = error


@pytest.mark.parametrize("name", DEFENSES)
def test_no_hooks_and_model_intact_after_an_error(name, planted):
    model, clean = planted
    before = copy.deepcopy(model.state_dict())
    hooks = hook_count(model)
    cb = Boom()
    try:
        make(name).run(model, clean, callback=cb)
    except RuntimeError as e:
        assert str(e) == "boom"
        assert isinstance(cb.error, RuntimeError)  # end() was told why the run stopped
    else:  # a defense that finishes in a single step never reaches the raising call
        assert cb.steps < 2
    assert hook_count(model) == hooks and not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("name", DEFENSES)
def test_same_seed_same_scores(name, planted):
    model, clean = planted
    a = make(name).run(model, clean)
    b = make(name).run(model, clean)
    for k in a.scores:
        assert torch.equal(a.scores[k], b.scores[k]), k
