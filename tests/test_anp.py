"""ANP finds the planted backdoor neuron of the tiny hand-built network, and cuts the backdoor
of the sample model trained with the papers' recipe."""
import pytest
import torch

from defenses.methods.anp import ANP, ANPConfig
from defenses.evaluation import sweep
from defenses.neurons import find_neurons
from sample_models import load_sample
from planted import PLANTED, build_planted, clean_and_test


def test_anp_scores_the_planted_neuron_as_the_most_suspicious():
    model = build_planted()
    clean, _ = clean_and_test()
    scores = ANP(ANPConfig(iterations=100)).run(model, clean).scores["fc1"]
    others = torch.cat([scores[:PLANTED], scores[PLANTED + 1:]])
    assert int(scores.argmin()) == PLANTED, scores
    assert float(scores[PLANTED]) < float(others.min()), scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_anp_scores_the_planted_bn_neuron_as_the_most_suspicious(seed):
    """The 10-class BatchNorm network that RNP is tested on (tests/test_rnp.py). Measured over
    seeds 0-7 at 100 iterations: the planted mask is the lowest, alone, in 7 of 8 (not in seed 3,
    where it ends at 0.72)."""
    from planted import BN_PLANTED, build_planted_bn

    model, clean, _ = build_planted_bn(seed)
    masks = ANP(ANPConfig(iterations=100)).run(model, clean).scores["bn"]
    others = torch.cat([masks[:BN_PLANTED], masks[BN_PLANTED + 1:]])
    assert float(masks[BN_PLANTED]) < float(others.min()), masks


@pytest.mark.slow
def test_anp_cuts_the_backdoor_of_the_sample_trained_as_in_the_papers(mnist5k):
    """On cnn_badnets_sgd (SGD, weight decay, 100 epochs) a short ANP run already prunes neurons
    at the paper's threshold that carry the backdoor: measured at 150 iterations, 13 of 320
    pruned, ACC 98.9% -> 97.2%, ASR 100% -> 69.9%. (The Adam-trained cnn_badnets keeps ASR at
    99.9% under the same budget, and neither reaches the paper's ASR < 5%; see docs/benchmark.md.)"""
    s = load_sample("cnn_badnets_sgd")
    result = ANP(ANPConfig(iterations=150)).run(s.model, mnist5k.clean)
    (row,) = sweep(s.model, find_neurons(s.model, mnist5k.shape), result.scores, "low", mnist5k.test, s.trigger,
                   values=[0.2])
    assert row.n_pruned >= 5, row
    assert row.asr < 0.8, row
    assert row.acc >= s.entry["acc"] - 0.03, row
