"""CLP (defenses/methods/clp.py) against SPEC-defenses.md, "CLP": the BN/conv pairing from the traced
graph, the UCLC value computed by hand, the u rule, the Linear case and the refusals."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from defenses.base import DefenseResult, get_defense
from defenses.methods.clp import CLP, CLPConfig
from defenses.readers.models import build_model
from defenses.neurons import find_neurons, selection_by_threshold

SHAPE = (3, 32, 32)


def preact(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("preact_resnet18", 10, 3, 32, width=0.25).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # BN statistics and scales as after training, not the init's 1 and 1
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                n = mod.num_features
                mod.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                mod.running_mean.copy_(torch.randn(n, generator=g))
                mod.weight.copy_(torch.randn(n, generator=g))  # negative gammas too: |gamma| is used
                mod.bias.copy_(torch.randn(n, generator=g))
    return model


def is_one_sentence(msg: str) -> bool:
    # Layer names contain dots ("layer1.0.bn1"), so a sentence end is a period followed by a space.
    return msg.endswith(".") and not re.search(r"[.!?]\s", msg)


BLOCKS = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]


# ---------------------------------------------------------------- 5. pairing from the graph


def test_preact_every_bn_is_paired_with_the_conv_whose_output_it_normalises():
    model = preact()
    r = CLP().run(model, SHAPE)
    # By hand, from PreActBlock.forward: bn2 normalises conv1's output; a block's bn1 normalises the
    # block's input, which is the stem conv for layer1.0 and a residual sum (conv2 + shortcut) for
    # every later block; the final bn also reads a residual sum.
    expected = {"layer1.0.bn1": "conv1", **{f"{b}.bn2": f"{b}.conv1" for b in BLOCKS}}
    assert r.extras["pairing"] == expected
    assert set(r.extras["refused"]) == {f"{b}.bn1" for b in BLOCKS[1:]} | {"bn"}
    for name, msg in r.extras["refused"].items():
        assert msg.startswith(name) and "residual sum" in msg and is_one_sentence(msg), msg
    # The reference code's rule (previous Conv2d in module order) would pair, e.g., layer1.1.bn1 with
    # layer1.0.conv2 and layer2.1.bn1 with layer2.0's shortcut conv; neither pairing is a real one.
    previous, module_order = None, {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            previous = name
        elif isinstance(mod, nn.BatchNorm2d):
            module_order[name] = previous
    assert module_order["layer1.1.bn1"] == "layer1.0.conv2"
    assert module_order["layer2.1.bn1"] == "layer2.0.shortcut.0"
    assert "layer1.1.bn1" not in r.scores and "layer2.1.bn1" not in r.scores


class Swapped(nn.Module):
    """Modules registered in the opposite order to the one the forward uses them in."""

    def __init__(self):
        super().__init__()
        self.bn_a = nn.BatchNorm2d(4)
        self.conv_b = nn.Conv2d(4, 6, 3, padding=1, bias=False)
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.bn_a(self.conv_a(x)))
        h = torch.relu(self.bn_b(self.conv_b(h)))
        return self.fc(h.mean((2, 3)))


def test_pairing_comes_from_the_traced_graph_not_module_order():
    r = CLP().run(Swapped().eval(), SHAPE)
    # module order would give bn_a no conv at all and bn_b the wrong one (conv_a, 4 channels)
    assert r.extras["pairing"] == {"bn_a": "conv_a", "bn_b": "conv_b"}
    assert r.extras["refused"] == {}


# ---------------------------------------------------------------- 5. the UCLC by hand


@pytest.mark.parametrize("bn,conv,k", [("layer2.0.bn2", "layer2.0.conv1", 5), ("layer1.0.bn1", "conv1", 0),
                                       ("layer4.1.bn2", "layer4.1.conv1", 100)])
def test_uclc_of_one_channel_by_hand(bn, conv, k):
    model = preact()
    r = CLP().run(model, SHAPE)
    w = model.get_submodule(conv).weight.detach().double()[k]  # C_in x kh x kw
    sigma_max = torch.linalg.svdvals(w.reshape(w.shape[0], -1))[0]  # C_in x (kh * kw)
    b = model.get_submodule(bn)
    gamma, var = b.weight.detach().double()[k], b.running_var.double()[k]
    spec_value = float(sigma_max * gamma.abs() / var.sqrt())
    # the SPEC's formula; clp.py folds the BN's eps (1e-5) into the variance, a relative change of
    # at most eps / (2 * var) = 1e-5 here (running_var >= 0.5)
    assert float(r.scores[bn][k]) == pytest.approx(spec_value, rel=2e-5)
    assert float(r.scores[bn][k]) == pytest.approx(float(sigma_max * gamma.abs() / (var + b.eps).sqrt()), rel=1e-6)


def test_u_rule_selects_exactly_the_planted_channel():
    model = preact()
    layer, planted = "layer3.0.bn2", 17
    with torch.no_grad():
        model.get_submodule(layer).weight[planted] = 50.0  # a channel with a huge Lipschitz bound
    r = CLP().run(model, SHAPE)
    s = r.scores[layer].double()
    mean, std = s.mean(), s.std(unbiased=True)
    assert r.threshold[layer] == pytest.approx(float(mean + 3 * std), rel=1e-6)
    sel = selection_by_threshold(r.scores, r.threshold, "high")
    assert sel[layer].nonzero().flatten().tolist() == [planted]
    assert r.extras["n_pruned"][layer] == 1 and r.extras["rule"] == "mean+u*std"
    # u is the number of (unbiased) standard deviations: a larger u spares the planted channel too
    z = float((s[planted] - mean) / std)
    r_high = CLP(CLPConfig(u=z + 0.01)).run(model, SHAPE)
    assert r_high.extras["n_pruned"][layer] == 0


# ---------------------------------------------------------------- 5. Linear layers


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(12, 7)
        self.fc2 = nn.Linear(7, 5, bias=False)
        self.bn = nn.BatchNorm1d(5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.fc2(torch.relu(self.fc1(self.flat(x)))))))


def test_linear_neurons_score_their_weight_row_norm_times_the_folded_bn_scale():
    torch.manual_seed(0)
    model = MLP().eval()
    with torch.no_grad():
        model.bn.running_var.copy_(torch.tensor([0.5, 1.0, 2.0, 4.0, 0.25]))
        model.bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0]))
    r = CLP().run(model, (1, 3, 4))
    assert list(r.scores) == ["fc1", "bn"] and r.extras["pairing"] == {"fc1": "fc1", "bn": "fc2"}
    w1 = model.fc1.weight.detach().double()
    torch.testing.assert_close(r.scores["fc1"].double(), w1.norm(dim=1), rtol=1e-6, atol=0)
    w2 = model.fc2.weight.detach().double()
    by_hand = torch.tensor([w2[i].norm() * abs(g) / (v + 1e-5) ** 0.5 for i, (g, v) in
                            enumerate(zip([1.0, -2.0, 0.5, 3.0, -1.0], [0.5, 1.0, 2.0, 4.0, 0.25]))],
                           dtype=torch.float64)
    torch.testing.assert_close(r.scores["bn"].double(), by_hand, rtol=1e-6, atol=0)


# ---------------------------------------------------------------- 5. refusal


class SumThenBN(nn.Module):
    """The only BN reads a residual sum: no single conv's filter can be paired with it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.b = nn.Conv2d(3, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.a(x) + self.b(x))).mean((2, 3)))


def test_a_layer_whose_pairing_cannot_be_established_is_refused_in_one_sentence():
    with pytest.raises(ValueError) as info:
        CLP().run(SumThenBN().eval(), SHAPE)
    msg = str(info.value)
    assert is_one_sentence(msg), msg
    assert "bn" in msg and "residual sum" in msg


def test_a_bn_without_running_statistics_is_refused():
    model = Swapped().eval()
    model.bn_b = nn.BatchNorm2d(6, track_running_stats=False)
    r = CLP().run(model, SHAPE)
    assert list(r.scores) == ["bn_a"]
    assert "running variance" in r.extras["refused"]["bn_b"] and is_one_sentence(r.extras["refused"]["bn_b"])


# ---------------------------------------------------------------- 6. registry and result shape


@pytest.mark.parametrize("arch,shape,kw", [("cnn", (1, 28, 28), {"width": 4, "hidden": 8}),
                                           ("resnet18", SHAPE, {"width": 0.125}),
                                           ("mlp_head", (1, 28, 28), {"width": 4, "hidden": (16, 8)})])
def test_registry_and_one_score_per_neuron_layer(arch, shape, kw):
    info = get_defense("clp")
    assert info.cls is CLP and info.config_cls is CLPConfig and not info.needs_data
    torch.manual_seed(0)
    model = build_model(arch, 10, shape[0], shape[1], **kw).eval()
    r = info.cls(info.config_cls()).run(model, shape)
    assert isinstance(r, DefenseResult) and r.defense == "clp" and r.suspicious == "high" and r.prune_rule == "both"
    nmap = find_neurons(model, shape)
    assert list(r.scores) == nmap.names() and r.extras["refused"] == {}
    for layer in nmap.layers:
        assert r.scores[layer.name].shape == (layer.size,) and r.scores[layer.name].dtype == torch.float32
        assert isinstance(r.threshold[layer.name], float)


def test_preact_scores_and_refusals_cover_every_neuron_layer():
    model = preact()
    r = CLP().run(model, SHAPE)
    nmap = find_neurons(model, SHAPE)
    assert sorted([*r.scores, *r.extras["refused"]]) == sorted(nmap.names())
    for name, s in r.scores.items():
        assert s.shape == (nmap.layer(name).size,)


def test_the_callers_model_is_left_unchanged():
    model = preact()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    CLP().run(model, SHAPE)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())


def test_clp_refuses_groupnorm_channels_with_its_reason():
    from test_neurons import NormNet

    with pytest.raises(ValueError, match="GroupNorm, which normalises each image with its own statistics"):
        CLP().run(NormNet(lambda c: nn.GroupNorm(2, c)).eval(), (1, 6, 6))
