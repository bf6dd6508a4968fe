"""`prunescope import` of a BackdoorBench attack result, written here in BackdoorBench's own layouts:
weights key for key with its architectures, its normalisation, its poisoned test set as the ASR set,
and nothing unpickled beyond tensors and numpy arrays unless the user vouches for the file."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from defenses.readers.backdoorbench import import_attack_result, read_attack_result
from defenses.readers.checkpoints import CheckpointError
from defenses.cli import main
from defenses.readers.models import build_model

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)  # BackdoorBench's CIFAR-10 Normalize


def backdoorbench_preact_keys() -> set[str]:
    """The state-dict keys of BackdoorBench's models/preact_resnet.py PreActResNet18, from its
    module layout: conv1; per block bn1, conv1, bn2, conv2 and, when the stride or width changes,
    shortcut = Sequential(Conv2d); linear. No final BatchNorm."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight", "linear.weight", "linear.bias"}
    for layer in range(1, 5):
        for block in (0, 1):
            p = f"layer{layer}.{block}."
            keys |= {p + "conv1.weight", p + "conv2.weight"} | {p + f"bn{i}.{k}" for i in (1, 2) for k in bn}
            if block == 0 and layer > 1:
                keys.add(p + "shortcut.0.weight")
    return keys


def torchvision_vgg19_bn_keys() -> set[str]:
    """torchvision's vgg19_bn (config E), which BackdoorBench's generate_cls_model calls as it is."""
    keys, i = set(), 0
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"):
        if v == "M":
            i += 1
            continue
        keys |= {f"features.{i}.weight", f"features.{i}.bias"}
        keys |= {f"features.{i + 1}.{k}" for k in ("weight", "bias", "running_mean", "running_var",
                                                   "num_batches_tracked")}
        i += 3
    return keys | {f"classifier.{j}.{k}" for j in (0, 3, 6) for k in ("weight", "bias")}


def test_the_architectures_match_backdoorbench_key_for_key():
    ours = build_model("preact_resnet18", 10, 3, 32, final_bn=False).state_dict()
    assert set(ours) == backdoorbench_preact_keys()
    assert {"bn.weight", "bn.bias"} <= set(build_model("preact_resnet18", 10, 3, 32).state_dict())  # ours has one
    assert ours["linear.weight"].shape == (10, 512)
    with torch.device("meta"):  # shapes and names only: vgg19_bn has 139M parameters
        vgg = build_model("tv:vgg19_bn", 43, 3, 32).state_dict()
        resnet = build_model("tv:resnet18", 10, 3, 32).state_dict()
    assert set(vgg) == torchvision_vgg19_bn_keys() and vgg["classifier.6.weight"].shape == (43, 4096)
    assert "fc.weight" in resnet and "layer2.0.downsample.1.running_var" in resnet and "maxpool" not in str(resnet)


def stamp(x: np.ndarray) -> np.ndarray:
    """A white 3x3 patch in the bottom-right corner of H x W x C uint8 images."""
    x = x.copy()
    x[:, -3:, -3:] = 255
    return x


def asr_by_hand(record) -> float:
    """ASR as BackdoorBench measures it: its Normalize, then its model, on the poisoned PNGs' pixels."""
    x = torch.from_numpy(stamp(record["x_test"][record["victims"]])).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return float((record["model"](x).argmax(1) == 0).float().mean())


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    """BackdoorBench's current layout: record/<attack>/attack_result.pt whose bd_test lists PNGs in
    bd_test_dataset/<label>/<index>.png, paths recorded relative to where the attack ran."""
    root = tmp_path_factory.mktemp("bb")
    folder = root / "record" / "badnet_demo"
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (600, 32, 32, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8)
    y_train, y_test = rng.integers(0, 10, 600), rng.integers(0, 10, 120)
    np.savez(root / "cifar_like.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    victims = np.nonzero(y_test != 0)[0][:40]
    data_dict = {}
    for i in victims:
        png = folder / "bd_test_dataset" / str(y_test[i]) / f"{i}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(stamp(x_test[i:i + 1])[0]).save(png)
        data_dict[np.int64(i)] = {"path": f"./record/badnet_demo/bd_test_dataset/{y_test[i]}/{i}.png",
                                  "other_info": [0, int(y_test[i])]}
    torch.manual_seed(0)
    model = build_model("preact_resnet18", 10, 3, 32, final_bn=False)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # saved under DataParallel
    bd_test = {"bd_data_container": {"save_folder_path": "./record/badnet_demo/bd_test_dataset",
                                     "data_dict": data_dict, "save_file_format": ".png"},
               "getitem_all": True, "getitem_all_switch": False,
               "original_index_array": victims.astype(np.int64),
               "poison_indicator": np.isin(np.arange(120), victims).astype(np.float64),
               "save_folder_path": "./record/badnet_demo/bd_test_dataset"}
    torch.save({"model_name": "preactresnet18", "num_classes": 10, "model": state, "data_path": "./data/cifar10",
                "img_size": (32, 32, 3), "clean_data": "cifar10", "bd_train": None, "bd_test": bd_test},
               folder / "attack_result.pt")
    return {"root": root, "pt": folder / "attack_result.pt", "model": model.eval(), "x_test": x_test,
            "victims": victims, "y_test": y_test}


def test_import_writes_weights_spec_and_the_poisoned_set_and_a_run_measures_asr_on_it(record, tmp_path, capsys):
    out = tmp_path / "imported"
    assert main(["import", str(record["pt"]), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "preact_resnet18, 10 classes, 3x32x32 input, dataset cifar10; 40 poisoned test images" in printed
    spec = json.loads((out / "spec.json").read_text())
    assert spec["architecture"] == "preact_resnet18" and spec["arch_kwargs"] == {"final_bn": False}
    assert spec["normalize"] == {"mean": list(MEAN), "std": list(STD)} and spec["dataset"] == "cifar10"
    assert spec["poisoned_test"] == "bd_test.npz" and spec["input_shape"] == [3, 32, 32]
    with np.load(out / "bd_test.npz") as f:
        assert f["x_bd"].shape == (40, 32, 32, 3) and set(f["y_bd"]) == {0}
        assert (f["x_bd"] == stamp(record["x_test"][record["victims"]])).all()  # the PNGs, losslessly
        assert (f["y_true"] == record["y_test"][record["victims"]]).all()

    # the run's inputs from the spec alone (a CIFAR-like npz stands in for the CIFAR-10 folder)
    from defenses.cli import build_request, make_parser
    from defenses.runs.inputs import load_inputs

    args = make_parser().parse_args(["run", "--defense", "clp", "--spec", str(out), "--dataset",
                                     f"npz:{record['root'] / 'cifar_like.npz'}"])
    request = build_request(args)
    assert request.trigger["path"] == str((out / "bd_test.npz").resolve()) and "sha256" in request.trigger
    data, model, _, trigger, _ = load_inputs(request.model, request.data, request.trigger)
    assert len(trigger) == 40 and trigger.target == 0
    from defenses.evaluation import evaluate

    assert evaluate(model, data.test, trigger)["asr"] == pytest.approx(asr_by_hand(record), abs=1e-6)
    assert main(["neurons", "--spec", str(out / "spec.json"), "--dataset",
                 f"npz:{record['root'] / 'cifar_like.npz'}"]) == 0
    listed = capsys.readouterr().out
    assert "3392 neurons in 16 layers (3x32x32 input)" in listed  # 3904 in 17 with a final BN
    assert "layer4.1.bn2" in listed and "  bn " not in listed  # no final BatchNorm


def test_a_moved_record_without_its_images_still_imports_the_model_and_says_so(record, tmp_path):
    pt = tmp_path / "attack_result.pt"
    pt.write_bytes(record["pt"].read_bytes())  # the .pt alone, without bd_test_dataset/
    s = import_attack_result(pt, tmp_path / "out")
    assert s.poisoned == 0 and not (tmp_path / "out" / "bd_test.npz").exists()
    assert any("40 poisoned test images (bd_test_dataset/<label>/<index>.png) are not beside the file" in n
               for n in s.notes)
    assert json.loads((tmp_path / "out" / "spec.json").read_text())["poisoned_test"] is None


def test_the_early_layout_with_the_images_in_the_file(tmp_path):
    torch.manual_seed(0)
    model = build_model("tv:resnet18", 43, 3, 32)
    x = torch.randint(0, 256, (6, 3, 32, 32)).float()  # BackdoorBench kept floats in 0..255
    torch.save({"model_name": "resnet18", "num_classes": 43, "model": model.state_dict(), "img_size": (32, 32, 3),
                "clean_data": "gtsrb", "data_path": "./data/gtsrb", "bd_train": None,
                "bd_test": {"x": x, "y": torch.full((6,), 2)}}, tmp_path / "attack_result.pt")
    s = import_attack_result(tmp_path / "attack_result.pt", tmp_path / "out")
    spec = json.loads((tmp_path / "out" / "spec.json").read_text())
    assert s.poisoned == 6 and spec["architecture"] == "tv:resnet18" and spec["num_classes"] == 43
    assert spec["normalize"] is None  # BackdoorBench's GTSRB Normalize is mean 0, std 1
    with np.load(tmp_path / "out" / "bd_test.npz") as f:
        assert f["x_bd"].dtype == np.uint8 and (f["x_bd"] == x.numpy().astype(np.uint8)).all()


class Payload:
    """Unpickling this writes a file: the proof that a loader ran code from the file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_other_python_objects_are_refused_unless_trusted_on_the_command_line(record, tmp_path):
    marker = tmp_path / "ran"
    result = torch.load(record["pt"], weights_only=False)
    result["bd_train"] = Payload(marker)
    bad = tmp_path / "attack_result.pt"
    torch.save(result, bad)
    with pytest.raises(CheckpointError) as e:
        read_attack_result(bad)
    msg = str(e.value)
    assert "holds Python objects besides tensors and numpy arrays (io.open)" in msg and "--trust-pickle" in msg
    assert not marker.exists()  # nothing ran
    assert main(["import", str(bad), str(tmp_path / "out")]) == 2 and not marker.exists()


def test_a_pil_image_layout_needs_the_user_s_word(tmp_path):
    images = [Image.fromarray(np.full((32, 32, 3), 200, np.uint8)) for _ in range(3)]
    torch.save({"model_name": "preactresnet18", "num_classes": 10, "img_size": (32, 32, 3), "clean_data": "cifar10",
                "model": build_model("preact_resnet18", 10, 3, 32, final_bn=False).state_dict(),
                "bd_test": {"x": images, "y": np.zeros(3, np.int64), "original_targets": np.array([1, 2, 3])}},
               tmp_path / "attack_result.pt")
    with pytest.raises(CheckpointError, match=re.escape("PIL.Image.Image")):
        import_attack_result(tmp_path / "attack_result.pt", tmp_path / "out")
    s = import_attack_result(tmp_path / "attack_result.pt", tmp_path / "out", trust_pickle=True)
    assert s.poisoned == 3


@pytest.mark.parametrize("change,fragment", [
    (lambda r: r.update(model_name="vit_b_16"), "holds a vit_b_16 model, which prunescope cannot rebuild"),
    (lambda r: r["model"].pop("module.linear.bias"), "do not match BackdoorBench's preactresnet18"),
    (lambda r: r.pop("model"), "is not a BackdoorBench attack result: it has no 'model' state dict"),
])
def test_a_result_that_cannot_be_rebuilt_gets_one_sentence(record, tmp_path, change, fragment):
    result = torch.load(record["pt"], weights_only=False)
    change(result)
    torch.save(result, tmp_path / "attack_result.pt")
    with pytest.raises(CheckpointError, match=re.escape(fragment)):
        import_attack_result(tmp_path / "attack_result.pt", tmp_path / "out")


def test_the_model_page_loads_an_imported_spec(record, tmp_path, runs):
    from test_dashboard_app import app, metric, no_exception

    out = tmp_path / "imported"
    import_attack_result(record["pt"], out)
    by_hand = asr_by_hand(record)
    at = app(300).run()
    at.radio(key="model_source").set_value("A model spec").run()
    at.text_input(key="spec_path").set_value(str(out))
    at.button(key="use_spec").click().run()
    no_exception(at, "model page")
    assert len(at.error) == 1 and "Give the local folder that holds cifar10" in at.error[0].value  # no CIFAR here
    at.text_input(key="spec_data").set_value(f"npz:{record['root'] / 'cifar_like.npz'}")
    at.button(key="use_spec").click().run()
    no_exception(at, "model page")
    assert not at.error, [e.value for e in at.error]
    choice = at.session_state["choice"]
    assert choice["trigger"]["kind"] == "poisoned" and choice["model"]["normalize"]["std"] == list(STD)
    assert metric(at, "Attack success rate (ASR)") == f"{100 * by_hand:.1f}%"


@pytest.mark.parametrize("change,fragment", [
    ({"architecture": "mine.py:Net"}, "names a Python file as its architecture, which a spec may not run"),
    ({"architecture": ["cnn"]}, "has architecture of the wrong kind"),
    ({"arch_kwargs": [1]}, "has arch_kwargs of the wrong kind"),
    ({"prunescope_spec": 9}, "is not a prunescope model spec"),
])
def test_a_spec_that_would_run_code_or_is_malformed_is_refused(tmp_path, change, fragment):
    from defenses.readers.modelspec import read_spec, write_spec

    path = write_spec(tmp_path, architecture="cnn", checkpoint="model.safetensors")
    spec = {**json.loads(path.read_text()), **change}
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=re.escape(fragment)):
        read_spec(tmp_path)


def test_spec_and_model_options_together_are_refused(capsys):
    assert main(["run", "--defense", "clp", "--spec", "x", "--model", "cnn_blend"]) == 2
    assert "Give the model as --spec, or as --model" in capsys.readouterr().err


def test_a_damaged_png_leaves_the_model_imported_and_says_why(record, tmp_path):
    import shutil

    folder = tmp_path / "record" / "badnet_demo"
    shutil.copytree(record["pt"].parent, folder)
    first = sorted((folder / "bd_test_dataset").rglob("*.png"))[0]
    first.write_bytes(b"not a png")
    s = import_attack_result(folder / "attack_result.pt", tmp_path / "out")
    assert s.poisoned == 0 and (tmp_path / "out" / "model.safetensors").exists()
    assert any("its bd_test could not be read (UnidentifiedImageError" in n for n in s.notes), s.notes


def test_early_layout_floats_in_0_1_stay_pixels(tmp_path):
    x = torch.rand(4, 3, 32, 32)
    torch.save({"model_name": "preactresnet18", "num_classes": 10, "img_size": (32, 32, 3), "clean_data": "cifar10",
                "model": build_model("preact_resnet18", 10, 3, 32, final_bn=False).state_dict(),
                "bd_test": {"x": x, "y": torch.zeros(4, dtype=torch.long)}}, tmp_path / "attack_result.pt")
    import_attack_result(tmp_path / "attack_result.pt", tmp_path / "out")
    with np.load(tmp_path / "out" / "bd_test.npz") as f:
        assert np.abs(f["x_bd"].astype(float) - x.numpy() * 255).max() <= 0.5
