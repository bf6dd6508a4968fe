"""ANP finds the planted backdoor neuron of the tiny hand-built network."""
import torch

from defenses.anp import ANP, ANPConfig
from planted import PLANTED, build_planted, clean_and_test


def test_anp_scores_the_planted_neuron_as_the_most_suspicious():
    model = build_planted()
    clean, _ = clean_and_test()
    scores = ANP(ANPConfig(iterations=100)).run(model, clean).scores["fc1"]
    others = torch.cat([scores[:PLANTED], scores[PLANTED + 1:]])
    assert int(scores.argmin()) == PLANTED, scores
    assert float(scores[PLANTED]) < float(others.min()), scores
