"""Backdoors written into a trained clean head (sample_models/implant.py): subnet replacement
trains only its own path and leaves every clean weight as it was; fine-tuning trains them all."""
import torch

from defenses.readers.data import ArraySplit
from defenses.readers.models import build_model
from sample_models.implant import path_layers
from sample_models.train import implant


def tiny_head_and_data(seed=0):
    torch.manual_seed(seed)
    model = build_model("mlp_head", 3, 1, 28, width=4, hidden=(16, 8)).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (96, 1, 28, 28), generator=g, dtype=torch.uint8)
    return model, ArraySplit(x, torch.randint(0, 3, (96,), generator=g))


def test_subnet_replacement_trains_only_its_own_path():
    model, split = tiny_head_and_data()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    chosen = implant(model, split, subnet=2, epochs=3, lr=0.01, seed=0, log=lambda m: None)
    (l1, _), (l2, _), (out, _) = path_layers(model)
    assert [len(c) for c in chosen] == [2, 2]
    s1, s2 = chosen
    c1 = torch.ones(16, dtype=torch.bool)
    c1[s1] = False
    c2 = torch.ones(8, dtype=torch.bool)
    c2[s2] = False
    # every clean neuron's weights and bias as they were, the extractor untouched
    assert torch.equal(l1.weight[c1], before["head.1.weight"][c1])
    assert torch.equal(l1.bias[c1], before["head.1.bias"][c1])
    assert torch.equal(l2.weight[c2][:, c1], before["head.3.weight"][c2][:, c1])
    assert torch.equal(out.weight[:, c2], before["head.5.weight"][:, c2])
    assert torch.equal(out.bias, before["head.5.bias"])
    for n, p in model.extractor.named_parameters():
        assert torch.equal(p, before[f"extractor.{n}"])
    # the subnet reads nothing clean and nothing clean reads it
    assert torch.count_nonzero(l2.weight[s2][:, c1]) == 0
    assert torch.count_nonzero(l2.weight[c2][:, s1]) == 0
    # and its own weights trained
    assert not torch.equal(l1.weight[s1], before["head.1.weight"][s1])
    assert not torch.equal(out.weight[:, s2], before["head.5.weight"][:, s2])


def test_fine_tuning_trains_every_head_layer():
    model, split = tiny_head_and_data(1)
    before = {n: p.detach().clone() for n, p in model.head.named_parameters()}
    assert implant(model, split, subnet=0, epochs=2, lr=0.01, seed=0, log=lambda m: None) == []
    for n, p in model.head.named_parameters():
        assert not torch.equal(p, before[n]), n  # every layer trains (a ReLU dead on all 96 images does not)
    assert (model.head[5].bias != before["5.bias"]).all()


def test_subnet_replacement_in_a_bn_cnn_keeps_the_clean_channels_and_their_statistics():
    torch.manual_seed(2)
    model = build_model("cnn", 3, 1, 28, width=4, hidden=8).eval()
    _, split = tiny_head_and_data(2)
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    chosen = implant(model, split, subnet=1, epochs=2, lr=0.01, seed=0, log=lambda m: None)
    assert [len(c) for c in chosen] == [1, 1, 1, 1, 1]  # four conv layers and the hidden Linear
    path = path_layers(model)
    for j, ((layer, bn), c) in enumerate(zip(path, chosen + [None])):
        if c is None:  # the classifier: the clean neurons' columns as they were
            keep = torch.ones(layer.in_features, dtype=torch.bool)
            keep[chosen[-1]] = False
            assert torch.equal(layer.weight[:, keep], before["classifier.4.weight"][:, keep])
            continue
        clean = torch.ones(len(layer.weight), dtype=torch.bool)
        clean[c] = False
        name = [n for n, m in model.named_modules() if m is layer][0]
        if j == 0:  # the first layer's clean channels as they were
            assert torch.equal(layer.weight[clean], before[f"{name}.weight"][clean])
        else:  # clean rows keep their clean inputs; links to the subnet below are zero
            below = path[j - 1][0]
            n_below = below.weight.shape[0]
            rep = layer.weight.shape[1] // n_below
            sub_cols = torch.zeros(n_below, dtype=torch.bool)
            sub_cols[chosen[j - 1]] = True
            sub_cols = sub_cols.repeat_interleave(rep)
            assert torch.equal(layer.weight[clean][:, ~sub_cols], before[f"{name}.weight"][clean][:, ~sub_cols])
            assert torch.count_nonzero(layer.weight[clean][:, sub_cols]) == 0
            assert torch.count_nonzero(layer.weight[c][:, ~sub_cols]) == 0
        bn_name = [n for n, m in model.named_modules() if m is bn][0]
        for stat in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(bn, stat)
            assert torch.equal(t[clean], before[f"{bn_name}.{stat}"][clean]), (bn_name, stat)
        assert not torch.equal(bn.running_mean[c], before[f"{bn_name}.running_mean"][c])  # its statistics trained


def test_repair_retrains_the_clean_neurons_and_a_target_alone_reads_the_subnet():
    torch.manual_seed(3)
    model = build_model("cnn", 3, 1, 28, width=4, hidden=8).eval()
    _, split = tiny_head_and_data(3)
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    chosen = implant(model, split, subnet=1, epochs=2, lr=0.01, seed=0, target=2, repair=2, clean=split,
                     log=lambda m: None)
    out = model.classifier[4]
    sub_cols = torch.zeros(8, dtype=torch.bool)
    sub_cols[chosen[-1]] = True
    assert torch.count_nonzero(out.weight[2, sub_cols]) == 1  # the target's logit reads the subnet
    others = torch.arange(3) != 2
    assert torch.count_nonzero(out.weight[others][:, sub_cols]) == 0  # no other class does
    clean = torch.ones(4, dtype=torch.bool)
    clean[chosen[0]] = False
    first = model.features[0].weight
    assert not torch.equal(first[clean], before["features.0.weight"][clean])  # the clean neurons retrained
    assert not torch.equal(out.weight[:, ~sub_cols], before["classifier.4.weight"][:, ~sub_cols])
