"""The neuron inspector's engine on the planted-backdoor networks of tests/planted.py: the planted
neuron stands out in activation and attribution, and the single-neuron evaluations equal a direct
prune-and-evaluate."""
import numpy as np
import pytest
import torch

from defenses.evaluation import evaluate
from defenses.inspector import activation_gap, feature_maps, layer_activations, neuron_attribution, neuron_card, \
    single_neuron_effect
from defenses.neurons import find_neurons, prune
from planted import BN_PLANTED, PLANTED, build_planted, build_planted_bn, clean_and_test, stamp, stamp_bn


class Stamp:
    """The planted nets' trigger (its last pixel set to 1), with the Trigger interface."""

    def __init__(self, fn, target=0):
        self.fn, self.target = fn, target

    def apply(self, x):
        return self.fn(x)


@pytest.fixture(scope="module")
def planted():
    model = build_planted()
    _, test = clean_and_test()
    return model, find_neurons(model, (1, 4, 4)), test, Stamp(stamp)


@pytest.fixture(scope="module")
def planted_bn():
    model, _, test = build_planted_bn()
    return model, find_neurons(model, tuple(test.x.shape[1:])), test, Stamp(stamp_bn)


def largest_gap(model, nmap, test, trigger):
    gaps = activation_gap(layer_activations(model, nmap, test, trigger))
    return max(((name, int(i)) for name, g in gaps.items() for i in range(len(g))),
               key=lambda k: gaps[k[0]][k[1]]), gaps


def test_the_planted_neuron_has_the_largest_trigger_gap(planted, planted_bn):
    for (model, nmap, test, trigger), layer, neuron in ((planted, "fc1", PLANTED), (planted_bn, "bn", BN_PLANTED)):
        (name, index), gaps = largest_gap(model, nmap, test, trigger)
        assert (name, index) == (layer, neuron), gaps
        others = np.delete(gaps[layer], neuron)
        assert gaps[layer][neuron] > 5 * np.abs(others).max()  # far outside its clean range; the rest barely move


def test_activations_pair_clean_and_triggered_rows_and_leave_no_hook(planted):
    model, nmap, test, trigger = planted
    acts = layer_activations(model, nmap, test, trigger, max_images=50)
    victims = int((test.y != 0).sum())
    assert acts["fc1"]["clean"].shape == acts["fc1"]["triggered"].shape == (min(50, victims), 12)
    x = test.images(torch.arange(3))
    direct = model.fc1(model.flat(x)).detach().numpy()
    first = layer_activations(model, nmap, test, None, max_images=3)["fc1"]["clean"]
    np.testing.assert_allclose(first, direct, rtol=1e-5, atol=1e-6)  # no trigger: the first images, as they are
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("method", ["NeuronGradient", "NeuronIntegratedGradients"])
def test_the_planted_neurons_attribution_lies_on_the_trigger_pixel(planted, method):
    model, _, test, trigger = planted
    x = trigger.apply(test.images(torch.arange(8)))
    a = neuron_attribution(model, "fc1", PLANTED, x, method)
    assert a.shape == (8, 4, 4)
    on_trigger = a[:, 3, 3].sum() / a.sum()
    assert on_trigger > 0.99, on_trigger  # it reads that pixel alone
    clean = neuron_attribution(model, "fc1", 0, x, method)
    assert clean[:, 3, 3].sum() / clean.sum() < 1e-6  # a clean neuron never reads it
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


def test_feature_maps_are_none_for_a_linear_neuron(planted):
    model, _, test, _ = planted
    assert feature_maps(model, "fc1", PLANTED, test.images(torch.arange(2))) is None


def test_single_neuron_effect_equals_a_direct_prune_and_evaluate(planted_bn):
    model, nmap, test, trigger = planted_bn
    empty = {l.name: torch.zeros(l.size, dtype=torch.bool) for l in nmap.layers}
    alone = {k: v.clone() for k, v in empty.items()}
    alone["bn"][BN_PLANTED] = True
    cut = {k: v.clone() for k, v in empty.items()}
    cut["bn"][[0, 1, BN_PLANTED]] = True
    kept = {k: v.clone() for k, v in cut.items()}
    kept["bn"][BN_PLANTED] = False
    got = single_neuron_effect(model, nmap, "bn", BN_PLANTED, test, trigger, cut)
    assert got["alone"] == evaluate(prune(model, nmap, alone), test, trigger)
    assert got["cut_kept"] == evaluate(prune(model, nmap, kept), test, trigger)
    assert got["alone"]["asr"] < 0.2 < got["cut_kept"]["asr"]  # cutting it removes the backdoor; keeping it keeps it


def test_neuron_card_exact_ranks():
    scores = {"a": np.array([0.1, 0.5, 0.9]), "b": np.array([0.05, 0.7])}
    card = neuron_card(scores, "low", 0.2, "b", 0)
    assert card == {"layer": "b", "index": 0, "score": 0.05, "unit": 0.05, "rank": 1, "of": 5, "rank_in_layer": 1,
                    "layer_size": 2, "pruned": True}
    card = neuron_card(scores, "low", 0.2, "a", 1)
    assert (card["rank"], card["rank_in_layer"], card["pruned"]) == (3, 2, False)
    high = neuron_card({"a": np.array([1.0, 9.0, 2.0])}, "high", 5.0, "a", 1)
    assert (high["rank"], high["pruned"]) == (1, True)  # constants: the largest is the most suspicious
    with pytest.raises(KeyError, match="No neuron b\\[7\\]"):
        neuron_card(scores, "low", 0.2, "b", 7)
