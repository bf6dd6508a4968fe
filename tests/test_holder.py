"""Hölder pruning (defenses/methods/holder.py) against SPEC-defenses.md, "Hölder pruning".

Tiny hand-built models (a frozen 1x1-conv extractor and a one-layer MLP head) with expected
values computed by hand or by an independent brute-force evaluation of the SPEC's formula
(autograd gradient, explicit L2 step, the model's own modules), then the shipped
``mlp_head_badnets`` sample end to end.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from defenses.base import DefenseResult, get_defense
from defenses.readers.data import ArraySplit
from defenses.methods.holder import Holder, HolderConfig
from defenses.methods.holder_density import density_threshold
from defenses.neurons import find_neurons, prune, selection_by_threshold

IMAGE = (1, 2, 2)  # features: 2 channels x 2 x 2 = 8


class HeadNet(nn.Module):
    """A frozen extractor (1x1 conv with fixed weights 1 and 0.5, ReLU, flatten: u = [x, x / 2])
    and a head: fc -> act -> out (the classifier, never scored)."""

    def __init__(self, hidden: int, act: nn.Module):
        super().__init__()
        self.extractor = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.ReLU(), nn.Flatten())
        with torch.no_grad():
            self.extractor[0].weight.copy_(torch.tensor([1.0, 0.5]).view(2, 1, 1, 1))
        self.extractor.requires_grad_(False)
        self.fc = nn.Linear(8, hidden)
        self.act = act
        self.out = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.out(self.act(self.fc(self.extractor(x))))


def features(model: HeadNet, split: ArraySplit) -> torch.Tensor:
    with torch.no_grad():
        return model.extractor(split.images()).double()


def random_split(n: int = 24, seed: int = 0, equal_first_two: bool = False) -> ArraySplit:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *IMAGE), generator=g, dtype=torch.uint8)
    if equal_first_two:  # pixel (0, 1) = pixel (0, 0): u_0 - u_1 = 0 on every sample
        x[:, 0, 0, 1] = x[:, 0, 0, 0]
    return ArraySplit(x, torch.randint(0, 2, (n,), generator=g))


def hand_scale(u: torch.Tensor) -> float:
    """The SPEC's radius unit: the median over samples of |u_n|_2 / sqrt(dim u)."""
    return float((u.norm(dim=1) / math.sqrt(u.shape[1])).median())


def brute_force_holder(model: HeadNet, split: ArraySplit, alpha: float, radii) -> torch.Tensor:
    """H_i(alpha) = max_{n,k} |a_i(u_n + d) - a_i(u_n)| / |d|_2^alpha, d = eps_k g / |g|_2, g the
    autograd gradient of a_i at u_n; one neuron, one sample, one radius at a time."""
    m = copy.deepcopy(model).double()
    u_all = features(model, split)
    eps = [r * hand_scale(u_all) for r in radii]
    a = lambda u: m.act(m.fc(u))
    out = torch.zeros(m.fc.out_features, dtype=torch.float64)
    for i in range(m.fc.out_features):
        for u in u_all:
            u = u.clone().requires_grad_(True)
            a0 = a(u)[i]
            (g,) = torch.autograd.grad(a0, u)
            if float(g.norm()) == 0:
                continue  # no direction: the dead-unit convention, ratio 0
            for e in eps:
                d = e * g / g.norm()
                with torch.no_grad():
                    ratio = (a(u + d)[i] - a0).abs() / d.norm() ** alpha
                out[i] = max(out[i], ratio)
    return out


# ---------------------------------------------------------------- 1. alpha = 1 is the row norm


def test_alpha_one_l2_pre_activation_constant_is_the_weight_row_norm():
    torch.manual_seed(0)
    model = HeadNet(6, nn.ReLU()).eval()
    clean = random_split()
    r = Holder(HolderConfig(alpha=1.0, step="l2", activation="pre")).run(model, clean)
    expected = model.fc.weight.detach().double().norm(dim=1)
    assert list(r.scores) == ["fc"]
    torch.testing.assert_close(r.scores["fc"].double(), expected, rtol=0, atol=1e-5)
    # the same constant as CLP's for a Linear neuron: "at alpha = 1 the method reduces to CLP"
    from defenses.methods.clp import CLP

    torch.testing.assert_close(CLP().run(model, clean).scores["fc"].double(), expected, rtol=0, atol=1e-6)


def test_alpha_one_sign_step_constant_is_the_l1_row_norm():
    torch.manual_seed(1)
    model = HeadNet(5, nn.ReLU()).eval()
    r = Holder(HolderConfig(alpha=1.0, step="fgsm", activation="pre")).run(model, random_split())
    torch.testing.assert_close(r.scores["fc"].double(), model.fc.weight.detach().double().abs().sum(1),
                               rtol=0, atol=1e-5)


def test_relu_post_activation_matches_brute_force_and_dead_units_score_zero():
    torch.manual_seed(2)
    model = HeadNet(6, nn.ReLU()).eval()
    with torch.no_grad():
        model.fc.bias[0] = -100.0  # off on every image: gradient 0, constant 0
    clean = random_split()
    cfg = HolderConfig(alpha=0.5)
    r = Holder(cfg).run(model, clean)
    ref = brute_force_holder(model, clean, 0.5, cfg.radii)
    torch.testing.assert_close(r.scores["fc"].double(), ref, rtol=1e-5, atol=1e-7)
    assert float(r.scores["fc"][0]) == 0.0 and r.extras["inactive"]["fc"] >= 1


# ---------------------------------------------------------------- 2. alpha and the radii


def test_single_radius_alpha_only_rescales_and_keeps_the_ranking():
    torch.manual_seed(3)
    model = HeadNet(8, nn.Tanh()).eval()
    clean = random_split()
    scale = hand_scale(features(model, clean))
    runs = {a: Holder(HolderConfig(alpha=a, radii=(0.3,))).run(model, clean).scores["fc"].double()
            for a in (0.25, 0.5, 1.0)}
    eps = 0.3 * scale
    for a, s in runs.items():
        assert torch.equal(torch.argsort(s), torch.argsort(runs[1.0]))
        # H(a) = H(1) * eps^(1 - a): one factor for the whole layer
        torch.testing.assert_close(s, runs[1.0] * eps ** (1 - a), rtol=1e-5, atol=0)


def test_several_radii_let_alpha_change_the_ranking_of_a_saturating_neuron():
    # Both neurons read w . u with w along u_0 - u_1, which is 0 on every sample, so z is the bias:
    # neuron 0 is steep (|w| = 30) and sits at z = 2, close to tanh's ceiling; neuron 1 is gentle
    # (|w| = 1) at z = 0 and keeps rising over the whole grid. By hand:
    #   H_0(alpha) = max_k (tanh(2 + 30 eps_k) - tanh 2) / eps_k^alpha,  H_1 = max_k tanh(eps_k) / eps_k^alpha.
    model = HeadNet(2, nn.Tanh()).eval()
    direction = torch.zeros(8)
    direction[0], direction[1] = 1 / math.sqrt(2), -1 / math.sqrt(2)
    with torch.no_grad():
        model.fc.weight.copy_(torch.stack([30 * direction, direction]))
        model.fc.bias.copy_(torch.tensor([2.0, 0.0]))
    clean = random_split(equal_first_two=True)
    radii = HolderConfig().radii  # the SPEC's default grid
    eps = np.array(radii) * hand_scale(features(model, clean))
    expected, scores = {}, {}
    for alpha in (0.25, 1.0):
        h0 = np.max((np.tanh(2 + 30 * eps) - np.tanh(2)) / eps ** alpha)
        h1 = np.max(np.tanh(eps) / eps ** alpha)
        expected[alpha] = torch.tensor([h0, h1])
        r = Holder(HolderConfig(alpha=alpha)).run(model, clean)
        scores[alpha] = r.scores["fc"]
        torch.testing.assert_close(r.scores["fc"].double(), expected[alpha], rtol=1e-5, atol=0)
        torch.testing.assert_close(r.scores["fc"].double(), brute_force_holder(model, clean, alpha, radii),
                                   rtol=1e-5, atol=0)
        assert r.extras["radii"]["fc"] == pytest.approx(eps.tolist(), rel=1e-6)
    assert expected[1.0][0] > expected[1.0][1]  # Lipschitz: the steep neuron is the more sensitive
    assert expected[0.25][0] < expected[0.25][1]  # alpha = 0.25: the saturating one drops below
    assert torch.argsort(scores[1.0]).tolist() == [1, 0] and torch.argsort(scores[0.25]).tolist() == [0, 1]


# ---------------------------------------------------------------- 3. the threshold


def test_density_cut_of_a_bimodal_vector_lies_at_the_kde_minimum_between_the_modes():
    from scipy.optimize import minimize_scalar
    from scipy.stats import gaussian_kde

    values = torch.tensor(np.r_[np.linspace(0.9, 1.1, 40), np.linspace(2.9, 3.1, 5)])
    d = density_threshold(values)
    assert d["rule"] == "kde-minimum"
    assert 1.1 < d["cut"] < 2.9
    kde = gaussian_kde(values.numpy(), bw_method="scott")
    best = minimize_scalar(kde, bounds=(1.1, 2.9), method="bounded", options={"xatol": 1e-9})
    grid_step = (d["x"][-1] - d["x"][0]) / (len(d["x"]) - 1)
    assert abs(d["cut"] - best.x) <= grid_step
    assert int((values > d["cut"]).sum()) == 5
    np.testing.assert_allclose(d["y"], kde(np.array(d["x"])), rtol=1e-12)


def test_density_cut_of_a_unimodal_vector_falls_back_to_mean_plus_three_std():
    from scipy.stats import norm

    v = 1.0 + 0.1 * norm.ppf(np.linspace(0.02, 0.98, 50))
    d = density_threshold(torch.tensor(v))
    assert d["rule"] == "mean+u*std"
    assert d["cut"] == pytest.approx(v.mean() + 3 * v.std(ddof=1), rel=1e-12)
    assert density_threshold(torch.tensor(v), u=1.5)["cut"] == pytest.approx(v.mean() + 1.5 * v.std(ddof=1))


def test_top_p_prunes_the_top_fraction():
    v = torch.tensor([0.5, 3.0, 1.0, 2.0, 0.1, 4.0, 0.7, 0.2, 0.3, 0.4])
    d = density_threshold(v, top_p=0.2)
    assert d["rule"] == "top-p" and d["cut"] == pytest.approx(2.5)
    assert (v > d["cut"]).nonzero().flatten().tolist() == [1, 5]
    assert int((v > density_threshold(v, top_p=1.0)["cut"]).sum()) == 10


def test_run_uses_the_density_cut_per_layer_and_top_p_from_the_config():
    torch.manual_seed(4)
    model = HeadNet(10, nn.Tanh()).eval()
    clean = random_split()
    r = Holder(HolderConfig(top_p=0.3)).run(model, clean)
    s = r.scores["fc"]
    assert int((s > r.threshold["fc"]).sum()) == 3
    assert set(torch.topk(s, 3).indices.tolist()) == set((s > r.threshold["fc"]).nonzero().flatten().tolist())
    r = Holder().run(model, clean)
    assert r.threshold["fc"] == density_threshold(r.scores["fc"])["cut"]


# ---------------------------------------------------------------- 4. the shipped sample


@pytest.mark.slow
def test_density_threshold_prunes_the_implanted_subnet_of_mlp_head_subnet(mnist5k):
    """The showcase: a backdoor written into 8 neurons per layer of a clean head (subnet
    replacement, sample_models/implant.py). Hölder's own density cut prunes only subnet neurons
    and removes the backdoor (ASR <= 2%, ACC within 2 points). Its hard-case twin,
    mlp_head_badnets (the head trained on poisoned data from scratch), spreads the backdoor over
    24 head neurons and no cut finds it (docs/study.md, finding 8)."""
    from defenses.evaluation import evaluate
    from defenses.methods.holder_constants import head_layers
    from sample_models import load_sample
    from sample_models.efficacy import meets_bar
    from sample_models.train import poisoned_train_split

    sample = load_sample("mlp_head_subnet")
    # u_n: the defender's poisoned training samples (the SPEC's first choice), as the subnet was trained
    train = poisoned_train_split(mnist5k.train, sample.spec, sample.entry["poison_rate"], sample.entry["seed"])
    result = Holder().run(sample.model, train)
    nmap = find_neurons(sample.model, mnist5k.shape)
    sel = selection_by_threshold(result.scores, result.threshold, "high")
    cut = {(layer, int(i)) for layer, m in sel.items() for i in m.nonzero().flatten()}
    subnet = {(layer, i) for layer, idx in zip(head_layers(nmap), sample.entry["implant"]["neurons"]) for i in idx}
    assert cut and cut <= subnet, (sorted(cut), sorted(subnet))
    after = evaluate(prune(sample.model, nmap, sel, "both"), mnist5k.test, sample.trigger)
    assert meets_bar(sample.entry, after), (after, sample.entry["acc"], sample.entry["asr"])


# ---------------------------------------------------------------- 6. registry and result shape


def test_registry_and_result_shape_on_an_mlp_head_model():
    from defenses.readers.models import build_model

    info = get_defense("holder")
    assert info.cls is Holder and info.config_cls is HolderConfig and info.needs_data
    torch.manual_seed(5)
    model = build_model("mlp_head", 10, 1, 28, width=4, hidden=(16, 8)).eval()
    g = torch.Generator().manual_seed(0)
    clean = ArraySplit(torch.randint(0, 256, (20, 1, 28, 28), generator=g, dtype=torch.uint8),
                       torch.randint(0, 10, (20,), generator=g))
    r = info.cls(info.config_cls()).run(model, clean)
    assert isinstance(r, DefenseResult) and r.defense == "holder" and r.suspicious == "high"
    assert r.prune_rule == "both"
    nmap = find_neurons(model, (1, 28, 28))
    head = [l for l in nmap.layers if l.kind == "linear"]  # the head: every other layer is the frozen extractor
    assert [l.name for l in head] == ["head.1", "head.3"]
    assert list(r.scores) == [l.name for l in head]
    for layer in head:
        assert r.scores[layer.name].shape == (layer.size,) and r.scores[layer.name].dtype == torch.float32
        assert isinstance(r.threshold[layer.name], float)
    assert r.extras["assumption"] and r.extras["extractor_frozen"] is True
