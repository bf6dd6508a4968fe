import torch
from torch import nn

from defenses.readers.models import build_model, MLPHeadModel
from defenses.neurons import (NeuronError, Pruner, find_neurons, masked_forward, prune, selection_by_count,
                              selection_by_threshold, standardize)

import pytest


ARCHS = [("cnn", (1, 28, 28), {}), ("preact_resnet18", (3, 32, 32), {"width": 0.125}),
         ("resnet18", (3, 32, 32), {"width": 0.125}), ("vgg11_bn", (3, 32, 32), {"width": 0.125}),
         ("mlp_head", (1, 28, 28), {"width": 4, "hidden": (16, 8)}), ("tv:resnet18", (3, 32, 32), {})]


@pytest.mark.parametrize("arch,shape,kw", ARCHS)
def test_every_architecture_has_neurons_and_no_classifier(arch, shape, kw):
    model = build_model(arch, 10, shape[0], shape[1], **kw)
    nmap = find_neurons(model, shape)
    assert nmap.classifier is not None
    assert nmap.classifier not in nmap.names()
    assert nmap.total > 0
    mods = dict(model.named_modules())
    for layer in nmap.layers:
        mod = mods[layer.name]
        assert layer.size == mod.weight.shape[0]
    for mod in model.modules():  # the trace removed its hooks
        assert not mod._forward_hooks


def test_resnet_shortcut_bns_are_neurons_and_pair_with_their_convs():
    model = build_model("resnet18", 10, 3, 32, width=0.125)
    nmap = find_neurons(model, (3, 32, 32))
    shortcut = nmap.layer("layer2.0.shortcut.1")
    assert shortcut.kind == "bn" and shortcut.source == "layer2.0.shortcut.0"
    assert nmap.layer("layer1.0.bn2").source == "layer1.0.conv2"
    assert len(nmap.layers) == 20


def test_preact_pairing_follows_the_graph_not_module_order():
    model = build_model("preact_resnet18", 10, 3, 32, width=0.125)
    nmap = find_neurons(model, (3, 32, 32))
    assert nmap.layer("layer1.0.bn1").source == "conv1"
    assert nmap.layer("layer1.0.bn2").source == "layer1.0.conv1"
    assert nmap.layer("layer2.0.bn1").source is None  # its input is a residual sum


class UserNet(nn.Module):
    """A class the library has never seen: functional ops, a Conv without BN, an MLP head."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 5, 3)
        self.l1 = nn.Linear(5, 7)
        self.out = nn.Linear(7, 3)

    def forward(self, x):
        h = torch.relu(self.c1(x)).mean((2, 3))
        return self.out(torch.tanh(self.l1(h)))


def test_user_class_without_bn_uses_conv_and_linear_channels():
    nmap = find_neurons(UserNet(), (1, 6, 6))
    assert [(l.name, l.kind, l.size) for l in nmap.layers] == [("c1", "conv", 5), ("l1", "linear", 7)]
    assert nmap.classifier == "out"


def test_a_model_that_fails_on_the_input_gets_one_sentence():
    with pytest.raises(NeuronError, match="Running the model on a"):
        find_neurons(UserNet(), (3, 6, 6))


def test_masked_forward_equals_scaling_the_weights_by_hand():
    torch.manual_seed(0)
    model = UserNet().eval()
    nmap = find_neurons(model, (1, 6, 6))
    x = torch.rand(4, 1, 6, 6)
    m = torch.tensor([1.0, 0.0, 0.5, 1.0, 2.0])
    out = masked_forward(model, x, nmap, {"c1": m})
    manual = UserNet().eval()
    manual.load_state_dict(model.state_dict())
    with torch.no_grad():
        manual.c1.weight.mul_(m.view(-1, 1, 1, 1))
    assert torch.allclose(out, manual(x), atol=1e-6)


def test_prune_rules_on_bn_and_linear():
    model = MLPHeadModel(10, 1, 28, width=4, hidden=(8,)).eval()
    nmap = find_neurons(model, (1, 28, 28))
    sel = {"extractor.1": torch.tensor([True, False, False, False]), "head.1": torch.zeros(8, dtype=torch.bool)}
    sel["head.1"][3] = True
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = prune(model, nmap, sel, "gamma")
    assert g.extractor[1].weight[0] == 0 and g.extractor[1].bias[0] == before["extractor.1.bias"][0]
    assert (g.head[1].weight[3] == 0).all() and g.head[1].bias[3] == 0  # no BN: row and bias go
    b = prune(model, nmap, sel, "both")
    assert b.extractor[1].weight[0] == 0 and b.extractor[1].bias[0] == 0
    for k, v in model.state_dict().items():  # the original is untouched
        assert torch.equal(v, before[k])


def test_pruner_restores_between_selections():
    model = UserNet().eval()
    nmap = find_neurons(model, (1, 6, 6))
    pruner = Pruner(model, nmap)
    pruner.apply({"c1": torch.ones(5, dtype=torch.bool)})
    restored = pruner.apply({})
    assert torch.equal(restored.c1.weight, model.c1.weight)


def test_selections():
    scores = {"a": torch.tensor([0.1, 0.5, 0.9]), "b": torch.tensor([0.05, 0.95])}
    low = selection_by_threshold(scores, 0.1, "low")
    assert low["a"].tolist() == [True, False, False] and low["b"].tolist() == [True, False]
    high = selection_by_threshold(scores, {"a": 0.6}, "high")
    assert high["a"].tolist() == [False, False, True] and high["b"].tolist() == [False, False]
    top = selection_by_count(scores, 2, "high")
    assert top["a"].tolist() == [False, False, True] and top["b"].tolist() == [False, True]
    z = standardize({"a": torch.tensor([1.0, 2.0, 3.0]), "c": torch.tensor([4.0])})
    assert torch.allclose(z["a"], torch.tensor([-1.0, 0.0, 1.0])) and z["c"].tolist() == [0.0]


# ---------------------------------------------------------------- norm layers besides BatchNorm


class NormNet(nn.Module):
    """conv -> norm -> relu, twice, then a linear head; ``norm`` builds the norm for C channels."""

    def __init__(self, norm, c=8):
        super().__init__()
        self.conv1, self.n1 = nn.Conv2d(1, c, 3, padding=1), norm(c)
        self.conv2, self.n2 = nn.Conv2d(c, c, 3, padding=1), norm(c)
        self.fc = nn.Linear(c, 3)

    def forward(self, x):
        x = torch.relu(self.n2(self.conv2(torch.relu(self.n1(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))


class LayerNormMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.ln = nn.Linear(16, 12), nn.LayerNorm(12)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.ln(self.fc1(x.flatten(1)))))


def n1_output(model, x) -> torch.Tensor:
    """What ``model.n1`` puts out when the model runs on ``x`` (hook removed after)."""
    seen = {}
    hook = model.n1.register_forward_hook(lambda m, i, o: seen.update(out=o))
    try:
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
    return seen["out"]


@pytest.mark.parametrize("norm,kind", [(lambda c: nn.GroupNorm(2, c), "groupnorm"),
                                       (lambda c: nn.InstanceNorm2d(c, affine=True), "instancenorm"),
                                       (lambda c: nn.LayerNorm([c, 6, 6]), "layernorm")])
def test_norm_channels_are_the_neurons_and_pruning_one_silences_it(norm, kind):
    torch.manual_seed(0)
    model = NormNet(norm).eval()
    nmap = find_neurons(model, (1, 6, 6))
    assert [(l.name, l.kind, l.size, l.source) for l in nmap.layers] == [("n1", kind, 8, "conv1"),
                                                                         ("n2", kind, 8, "conv2")]
    label = {"groupnorm": "GroupNorm", "instancenorm": "InstanceNorm", "layernorm": "LayerNorm"}[kind]
    assert dict(nmap.left_out)["conv1"].startswith(f"covered by the {label} after it (n1)")
    pruned = prune(model, nmap, {"n1": torch.arange(8) == 3})
    channel = n1_output(pruned, torch.rand(16, 1, 6, 6))[:, 3]
    # the norm's beta alone, the same for every image (its bias kept, as for BN)
    assert torch.allclose(channel, pruned.n1.bias[3].detach().expand_as(channel))
    assert float(channel.std(0).max()) < 1e-6
    masked = masked_forward(model, torch.rand(4, 1, 6, 6), nmap, {"n1": torch.ones(8) * 0.5})
    assert masked.shape == (4, 3)


def test_zeroing_the_conv_before_a_groupnorm_is_undone_which_is_why_the_norm_is_the_neuron():
    torch.manual_seed(0)
    model = NormNet(lambda c: nn.GroupNorm(2, c)).eval()
    with torch.no_grad():
        model.conv1.weight[3] = 0
        model.conv1.bias[3] = 0
    assert float(n1_output(model, torch.rand(16, 1, 6, 6))[:, 3].abs().mean()) > 0.05  # the group's mean and std move it off zero


def test_layernorm_over_features_in_an_mlp():
    nmap = find_neurons(LayerNormMLP(), (1, 4, 4))
    assert [(l.name, l.kind, l.size, l.source) for l in nmap.layers] == [("ln", "layernorm", 12, "fc1")]


@pytest.mark.parametrize("norm,words", [(lambda c: nn.GroupNorm(2, c, affine=False), "a GroupNorm without"),
                                        (lambda c: nn.InstanceNorm2d(c), "an InstanceNorm without"),
                                        (lambda c: nn.LayerNorm([c, 6, 6], elementwise_affine=False),
                                         "a LayerNorm without"),
                                        (lambda c: nn.LayerNorm([6, 6]), "a LayerNorm over (6, 6)")])
def test_a_norm_that_undoes_pruning_is_refused_in_one_sentence(norm, words):
    with pytest.raises(NeuronError) as e:
        find_neurons(NormNet(norm), (1, 6, 6))
    msg = str(e.value)
    assert msg.startswith(f"n1 is {words}") and msg.count(". ") == 0 and msg.endswith("such a layer.")
