"""The pieces the pruning study (bench/study.py) is built from: the trigger-free budget cut, the
random-noise patch, RNP's unlearning step count, and head training on cached features."""
import pytest
import torch

from defenses.evaluation import accuracy, budget_cut
from defenses.neurons import find_neurons, prune, selection_by_count
from defenses.readers.triggers import TriggerSpec
from planted import PLANTED, build_planted, clean_and_test


def test_budget_cut_is_the_largest_grid_count_within_the_clean_acc_budget():
    model = build_planted()
    clean, _ = clean_and_test()
    nmap = find_neurons(model, (1, 4, 4))
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(12, generator=g) * 0.5 + 0.5
    masks[PLANTED] = 0.0  # the planted neuron is pruned first
    scores = {"fc1": masks}
    counts = (1, 2, 3, 4, 6, 8, 10, 12)
    n, rows = budget_cut(model, nmap, scores, "low", clean, budget=0.02, counts=counts, rule="both")
    base = accuracy(model, clean)
    direct = {0: base}
    for c in counts:
        direct[c] = accuracy(prune(model, nmap, selection_by_count(scores, c, "low"), "both"), clean)
    assert [r.n_pruned for r in rows] == [0, *counts]
    assert [r.acc for r in rows] == pytest.approx([direct[c] for c in (0, *counts)])
    assert n == max(c for c, a in direct.items() if a >= base - 0.02 - 1e-9)
    assert n >= 1  # the planted neuron costs the clean task nothing
    assert n < 12  # pruning every hidden neuron is never within budget


def test_noise_patch_is_a_seeded_random_grey_pattern_inside_the_patch():
    t = TriggerSpec(kind="badnets", size=4, position="center", color="noise", seed=3).build((1, 28, 28))
    inside = t.pattern[:, 12:16, 12:16]
    assert t.mask.sum() == 16 and t.mask[0, 12:16, 12:16].all()
    assert torch.equal(t.pattern != 0, t.mask.bool()) and len(inside.unique()) == 16
    again = TriggerSpec(kind="badnets", size=4, position="center", color="noise", seed=3).build((1, 28, 28))
    other = TriggerSpec(kind="badnets", size=4, position="center", color="noise", seed=4).build((1, 28, 28))
    assert torch.equal(t.pattern, again.pattern) and not torch.equal(t.pattern, other.pattern)


def test_rnp_reports_the_unlearning_steps_it_took():
    from defenses.methods.rnp import RNP, RNPConfig
    from planted import build_planted_bn

    model, clean, _ = build_planted_bn(0)
    full = RNP(RNPConfig(unlearn_epochs=1, clean_threshold=0.0, recover_epochs=1)).run(model, clean)
    assert full.extras["reached_threshold"] is False
    assert full.extras["unlearn_steps"] == -(-len(clean) // 128)  # one whole epoch of batches of 128
    stopped = RNP(RNPConfig(recover_epochs=1)).run(model, clean)
    assert stopped.extras["reached_threshold"] is True and 0 < stopped.extras["unlearn_steps"] < 80


def test_head_training_on_cached_features_matches_training_through_the_extractor():
    from defenses.readers.data import ArraySplit
    from defenses.readers.models import build_model
    from sample_models.train import train_model

    g = torch.Generator().manual_seed(0)
    split = ArraySplit(torch.randint(0, 256, (200, 1, 28, 28), generator=g, dtype=torch.uint8),
                       torch.randint(0, 10, (200,), generator=g))
    models = []
    for cache in (True, False):
        torch.manual_seed(1)
        m = build_model("mlp_head", 10, 1, 28, width=4, hidden=(16,))
        frozen = {k: v.clone() for k, v in m.extractor.state_dict().items()}
        train_model(m, split, 2, 0, log=lambda _: None, cache_features=cache)
        assert all(torch.equal(v, m.extractor.state_dict()[k]) for k, v in frozen.items())
        models.append(m)
    for a, b in zip(models[0].head.parameters(), models[1].head.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
