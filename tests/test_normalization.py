"""Input normalisation: a model trained on normalised images is measured right only with its
normalisation, which sits in front of the model (its keys and neurons unchanged, triggers still in
pixel space); bad settings and a target outside the classes get one sentence."""
import copy

import pytest
import torch

from defenses.readers.checkpoints import save_safetensors
from defenses.cli import main
from defenses.evaluation import evaluate
from defenses.neurons import find_neurons, prune
from defenses.readers.normalization import PRESETS, attach, chance_warning, resolve
from defenses.runs.inputs import load_inputs
from sample_models import catalog, load_sample

STD = 0.25  # the folded model expects x / 0.25: Normalize(mean=0, std=0.25), exact with zero padding


@pytest.fixture(scope="module")
def normalised_checkpoint(tmp_path_factory):
    """The showcase sample, refolded to expect Normalize(0, 0.25) inputs, as a user's checkpoint:
    its first conv's weights scaled by the std, so model'(x / std) == model(x)."""
    state = {k: v.clone() for k, v in load_sample("cnn_badnets_centre").model.state_dict().items()}
    state["features.0.weight"] *= STD
    path = tmp_path_factory.mktemp("ckpt") / "normalised.safetensors"
    save_safetensors(state, str(path))
    entry = catalog()["cnn_badnets_centre"]
    spec = {"architecture": "cnn", "checkpoint": str(path), "arch_kwargs": entry["arch_kwargs"]}
    return spec, entry


def measured(spec, trigger):
    data, model, _, built, _ = load_inputs(spec, {"dataset": "mnist5k"}, trigger)
    return model, data, built, evaluate(model, data.test, built)


def test_a_normalised_model_reads_right_only_with_its_normalisation(normalised_checkpoint):
    spec, entry = normalised_checkpoint
    model, data, trigger, right = measured({**spec, "normalize": {"mean": [0.0], "std": [STD]}}, entry["trigger"])
    assert right["acc"] == pytest.approx(entry["acc"], abs=0.002)  # the sample's own numbers, trigger in pixels
    assert right["asr"] == pytest.approx(entry["asr"], abs=0.005)
    _, _, _, raw = measured(spec, entry["trigger"])  # the silently wrong reading this setting exists for
    assert abs(raw["acc"] - entry["acc"]) > 0.05 or abs(raw["asr"] - entry["asr"]) > 0.05, raw


def test_the_normalisation_leaves_the_model_its_own_keys_and_neurons(normalised_checkpoint):
    spec, entry = normalised_checkpoint
    plain, data, trigger, _ = measured(spec, entry["trigger"])
    model, _, _, right = measured({**spec, "normalize": {"mean": [0.0], "std": [STD]}}, entry["trigger"])
    assert list(model.state_dict()) == list(plain.state_dict())  # the export's keys are the user's
    assert find_neurons(model, data.shape).names() == find_neurons(plain, data.shape).names()
    nmap = find_neurons(model, data.shape)
    none = {l.name: torch.zeros(l.size, dtype=torch.bool) for l in nmap.layers}
    assert evaluate(prune(model, nmap, none), data.test, trigger) == right  # copies keep the normalisation
    assert evaluate(copy.deepcopy(model), data.test, trigger) == right


def test_presets_and_bad_settings():
    assert resolve("cifar10") == PRESETS["cifar10"] and resolve("none") is None and resolve(None) is None
    for bad, words in (("cifar11", "Unknown input normalisation 'cifar11'"),
                       ({"mean": [0.5], "std": [0.0]}, "std values must be positive"),
                       ({"mean": [0.5, 0.5], "std": [0.2]}, "as many std values as mean values"),
                       ({"mean": "x", "std": [1]}, "lists of numbers")):
        with pytest.raises(ValueError, match=words):
            resolve(bad)
    with pytest.raises(ValueError, match="3 channel values but the images have 1 channels"):
        attach(torch.nn.Conv2d(1, 1, 1), "cifar10", channels=1)
    assert chance_warning(0.143, 10).startswith("Clean ACC 14.3% is close to chance for 10 classes")
    assert chance_warning(0.9, 10) is None


@pytest.mark.parametrize("args,words", [
    (["--normalize", "cifar11"], "Unknown input normalisation 'cifar11'"),
    (["--mean", "0.5"], "Give both --mean and --std"),
    (["--mean", "0.5", "--std", "a"], "comma-separated numbers"),
    (["--mean", "0.5,0.5,0.5", "--std", "0.2,0.2,0.2"], "3 channel values but the images have 1 channels"),
    (["--trigger", '{"kind": "badnets", "target": 12}'], "target label 12 is not one of the dataset's 10 classes"),
])
def test_cli_refuses_in_one_sentence(args, words, tmp_path, capfd):
    assert main(["--runs-dir", str(tmp_path), "run", "--defense", "clp", "--model", "cnn_badnets", *args]) == 2
    err = capfd.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err
    assert not any(tmp_path.iterdir()), "refused before a run folder exists"


@pytest.mark.parametrize("norm,acc,warned", [("custom", "98.2%", False), ("none", "16.9%", True)])
def test_the_model_page_takes_the_normalisation(normalised_checkpoint, runs, norm, acc, warned):
    import json

    from test_dashboard_app import app, metric, no_exception

    spec, entry = normalised_checkpoint
    at = app(300).run()
    at.radio(key="model_source").set_value("Your own weights").run()
    at.text_input(key="weights_path").set_value(spec["checkpoint"])
    at.text_input(key="arch_kwargs").set_value(json.dumps(entry["arch_kwargs"]))
    at.selectbox(key="normalize").set_value(norm).run()
    if norm == "custom":
        at.text_input(key="norm_custom").set_value("0 / 0.25")
    at.button(key="use_own").click().run()
    no_exception(at, "model page")
    assert not at.error, [e.value for e in at.error]
    assert metric(at, "Clean accuracy (ACC)") == acc
    assert at.session_state["choice"]["model"].get("normalize") == ({"mean": [0.0], "std": [0.25]} if norm == "custom"
                                                                   else None)
    assert any("close to chance" in w.value for w in at.warning) == warned
