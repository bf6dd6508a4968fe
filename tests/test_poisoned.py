"""ASR from a poisoned test set (x_bd, y_bd arrays): the same numbers as the trigger recipe when
the arrays are that recipe's images, everywhere a trigger is accepted; bad files get one sentence."""
import re

import numpy as np
import pytest
import torch

from defenses.readers.data import DataError
from defenses.evaluation import asr_split, evaluate, sweep
from defenses.neurons import find_neurons
from defenses.readers.poisoned import PoisonedSet, load_poisoned, triggered_images
from defenses.runs.inputs import preflight
from defenses.runs.folder import RunRequest, create_run, read_json
from defenses.runs.worker import execute
from planted import build_planted, clean_and_test, stamp


def write_npz(path, x, y, **extra):
    np.savez(path, x_bd=x, y_bd=y, **extra)
    return path


def stamped_npz(tmp_path, split, stamp_fn, target, layout="nhwc", with_true=True):
    """The recipe's own triggered test images, saved as an attack would: uint8 H x W x C."""
    victims = asr_split(split, target)
    x = (stamp_fn(victims.images()) * 255).round().to(torch.uint8).numpy()
    if layout == "nhwc":
        x = x.transpose(0, 2, 3, 1)
    extra = {"y_true": victims.y.numpy()} if with_true else {}
    return write_npz(tmp_path / "bd_test.npz", x, np.full(len(x), target), **extra), victims


class Stamp:
    """The planted net's trigger as a Trigger-like recipe."""
    target = 0

    def apply(self, x):
        return stamp(x)


def test_asr_and_a_sweep_from_the_arrays_equal_the_recipe_s(tmp_path):
    model = build_planted()
    _, test = clean_and_test()
    path, victims = stamped_npz(tmp_path, test, stamp, 0)
    poisoned = load_poisoned(path, (1, 4, 4), 2)
    assert len(poisoned) == len(victims) and poisoned.target == 0
    by_recipe, by_arrays = evaluate(model, test, Stamp()), evaluate(model, test, poisoned)
    assert by_recipe["asr"] > 0.8 and by_arrays == by_recipe
    nmap = find_neurons(model, (1, 4, 4))
    scores = {"fc1": torch.linspace(0.1, 1, 12).flip(0)}  # the planted neuron (the last) cut first
    rows = [sweep(model, nmap, scores, "low", test, t, values=[0.0, 0.15, 0.5]) for t in (Stamp(), poisoned)]
    assert rows[0] == rows[1]
    assert rows[1][0].asr > 0.8 and rows[1][1].n_pruned == 1 and rows[1][1].asr < 0.05  # PLANTED pruned


def test_layouts_and_pixel_scales_are_read_as_the_same_images(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    a = load_poisoned(write_npz(tmp_path / "a.npz", x, np.zeros(5)), (3, 8, 8), 10)
    b = load_poisoned(write_npz(tmp_path / "b.npz", x.transpose(0, 3, 1, 2) / 255.0, np.zeros(5, int)), (3, 8, 8), 10)
    assert torch.equal(a.split.x, b.split.x) and a.split.x.shape == (5, 3, 8, 8)
    gray = load_poisoned(write_npz(tmp_path / "g.npz", x[..., 0], np.arange(5) % 2), (1, 8, 8), 10)
    assert gray.split.x.shape == (5, 1, 8, 8) and gray.target is None  # all-to-all: no single target


def test_rows_already_of_their_attack_label_are_dropped(tmp_path):
    x = np.zeros((4, 4, 4, 1), np.uint8)
    p = load_poisoned(write_npz(tmp_path / "p.npz", x, [1, 1, 1, 1], y_true=[0, 1, 2, 1]), (1, 4, 4), 3)
    assert len(p) == 2 and p.true_labels.tolist() == [0, 2]
    even, odd = p.halves()
    assert even.true_labels.tolist() == [0] and odd.true_labels.tolist() == [2]


@pytest.mark.parametrize("arrays,fragment", [
    ({"x": np.zeros((2, 4, 4, 1), np.uint8), "y_bd": [0, 0]}, "lacks x_bd (it holds x, y_bd)"),
    ({"x_bd": np.zeros((2, 5, 5, 1), np.uint8), "y_bd": [0, 0]}, "its images are (5, 5, 1)"),
    ({"x_bd": np.zeros((2, 4, 4, 1), np.uint8), "y_bd": [0, 7]}, "labels from 0 to 7, but the dataset has 3"),
    ({"x_bd": np.zeros((2, 4, 4, 1), np.uint8), "y_bd": [0]}, "one whole-number label per image (2)"),
    ({"x_bd": np.linspace(-1.5, 2, 32).reshape(2, 4, 4, 1), "y_bd": [0, 0]}, "pixels run from -1.5 to 2"),
    ({"x_bd": np.zeros((2, 4, 4, 1), np.uint8), "y_bd": [1, 1], "y_true": [1, 1]}, "no poisoned image whose"),
])
def test_a_bad_poisoned_set_gets_one_sentence(tmp_path, arrays, fragment):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=re.escape(fragment)):
        load_poisoned(path, (1, 4, 4), 3)


def test_a_pickled_or_broken_file_is_refused_without_being_run(tmp_path):
    pickled = tmp_path / "obj.npz"
    np.savez(pickled, x_bd=np.array([{"not": "an image"}], dtype=object), y_bd=[0])
    with pytest.raises(DataError, match="pickled Python objects, which are never loaded"):
        load_poisoned(pickled, (1, 4, 4), 3)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="broken.npz is not an .npz archive"):
        load_poisoned(broken, (1, 4, 4), 3)
    with pytest.raises(DataError, match="No poisoned test set at"):
        load_poisoned(tmp_path / "missing.npz", (1, 4, 4), 3)


def test_triggered_images_of_a_poisoned_set_are_its_own_from_start():
    from defenses.readers.data import ArraySplit

    x = torch.arange(3, dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 1, 2, 2).contiguous()
    p = PoisonedSet(ArraySplit(x, torch.zeros(3, dtype=torch.long)))
    got = triggered_images(p, torch.zeros(2, 1, 2, 2), start=2)
    assert got[:, 0, 0, 0].mul(255).round().tolist() == [2, 0]  # wraps round


def test_a_run_measures_asr_on_the_poisoned_set_and_its_oracle_learns_on_half(tmp_path, mnist5k, runs):
    """The sample's own trigger saved as arrays: the run's baseline ASR is the recipe's, and the
    oracle (which needs the true labels) learns on one half and is measured on the other; the
    Explore and Neuron pages show the run."""
    from sample_models import load_sample

    sample = load_sample("cnn_blend")
    trigger = sample.spec.build(mnist5k.shape)
    path, _ = stamped_npz(tmp_path, mnist5k.test, trigger.apply, trigger.target)
    expected = evaluate(sample.model, mnist5k.test, trigger)["asr"]
    request = RunRequest(defense="clp", params={}, model={"sample": "cnn_blend"}, data={"dataset": "mnist5k"},
                         trigger={"kind": "poisoned", "path": str(path)}, recover_triggers=False, oracle=True,
                         oracle_iterations=20)
    preflight(request)
    run_dir = create_run(request, runs)
    assert execute(run_dir) == "done", read_json(run_dir / "status.json")
    result = read_json(run_dir / "result.json")
    assert result["baseline"]["asr"] == pytest.approx(expected, abs=1e-9) and expected > 0.9
    oracle = read_json(run_dir / "oracle.json")
    assert oracle["asr_on"].startswith("the poisoned test images it did not learn on")
    assert oracle["rows"][0]["asr"] > 0.9

    from test_dashboard_app import app, no_exception, open_tab

    at = app(300).run()
    at.switch_page("views/explore.py").run()
    open_tab(at, "Sweep")
    no_exception(at, "explore")
    assert any("measured on the other half" in c.value for c in at.caption), [c.value for c in at.caption]
    nmap = read_json(run_dir / "result.json")["layers"][0]
    at = app(300)
    at.switch_page("views/neuron.py")
    at.query_params.update(run=run_dir.name, layer=nmap["name"], index="0")
    at.run()
    no_exception(at, "neuron page")
    assert at.title[0].value == "Neuron inspector"


def test_the_oracle_refuses_a_poisoned_set_without_true_labels(tmp_path, mnist5k):
    from sample_models import load_sample

    trigger = load_sample("cnn_blend").spec.build(mnist5k.shape)
    path, _ = stamped_npz(tmp_path, mnist5k.test, trigger.apply, trigger.target, with_true=False)
    request = RunRequest(defense="clp", params={}, model={"sample": "cnn_blend"}, data={"dataset": "mnist5k"},
                         trigger={"kind": "poisoned", "path": str(path)}, oracle=True)
    with pytest.raises(ValueError, match="The oracle needs each poisoned image's true label"):
        preflight(request)


def test_the_cli_takes_a_poisoned_test_set(tmp_path, mnist5k, capsys):
    from defenses.cli import build_request, make_parser

    path = write_npz(tmp_path / "bd.npz", np.zeros((2, 28, 28), np.uint8), np.zeros(2, int))
    args = make_parser().parse_args(["run", "--defense", "clp", "--model", "cnn_blend", "--poisoned-test", str(path)])
    trigger = build_request(args).trigger
    assert trigger["kind"] == "poisoned" and trigger["path"] == str(path) and len(trigger["sha256"]) == 64
    from defenses.readers.poisoned import build_trigger

    assert len(build_trigger(trigger, (1, 28, 28), 10)) == 2
    write_npz(path, np.zeros((3, 28, 28), np.uint8), np.zeros(3, int))  # the file changes after the run chose it
    with pytest.raises(DataError, match="bd.npz has changed since it was chosen"):
        build_trigger(trigger, (1, 28, 28), 10)
    missing = make_parser().parse_args(["run", "--defense", "clp", "--model", "cnn_blend", "--poisoned-test",
                                        str(tmp_path / "gone.npz")])
    with pytest.raises(DataError, match="No poisoned test set at"):
        build_request(missing)
    both = make_parser().parse_args(["run", "--defense", "clp", "--model", "cnn_blend", "--poisoned-test", "x.npz",
                                     "--trigger", '{"kind": "badnets"}'])
    with pytest.raises(ValueError, match="not both"):
        build_request(both)


def test_the_model_page_takes_a_poisoned_test_set(tmp_path, runs, mnist5k):
    """The Model page: a sample's weights as one's own, and its trigger given as poisoned arrays
    (uploaded): the page's ASR is the recipe's; a file without x_bd gets its one sentence."""
    from sample_models import HERE, catalog, load_sample
    from test_dashboard_app import app, metric, no_exception

    entry = catalog()["cnn_blend"]
    trigger = load_sample("cnn_blend").spec.build(mnist5k.shape)
    path, _ = stamped_npz(tmp_path, mnist5k.test, trigger.apply, trigger.target)
    expected = evaluate(load_sample("cnn_blend").model, mnist5k.test, trigger)["asr"]
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 28, 28), np.uint8))
    at = app(300).run()
    at.radio(key="model_source").set_value("Your own weights").run()
    at.text_input(key="weights_path").set_value(str(HERE / entry["weights"]))
    at.text_input(key="arch_kwargs").set_value(__import__("json").dumps(entry["arch_kwargs"]))
    at.radio(key="trigger_kind").set_value("poisoned").run()
    at.text_input(key="poisoned_path").set_value(str(bad))
    at.button(key="use_own").click().run()
    no_exception(at, "model page")
    assert len(at.error) == 1 and "lacks x_bd and y_bd (it holds images)" in at.error[0].value
    at.file_uploader(key="poisoned_upload").set_value(("bd_test.npz", path.read_bytes(), "application/octet-stream"))
    at.button(key="use_own").click().run()
    no_exception(at, "model page")
    assert not at.error, [e.value for e in at.error]
    trig = at.session_state["choice"]["trigger"]
    assert trig["kind"] == "poisoned" and trig["path"].startswith(str((runs / "uploads").resolve()))
    assert metric(at, "Attack success rate (ASR)") == f"{100 * expected:.1f}%"


def test_a_non_npz_or_oversized_file_gets_one_sentence(tmp_path, monkeypatch):
    import defenses.readers.poisoned as poisoned

    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(DataError, match="a.npy is not an .npz archive"):
        load_poisoned(tmp_path / "a.npy", (1, 4, 4), 3)
    path = write_npz(tmp_path / "p.npz", np.zeros((8, 4, 4, 1), np.uint8), np.zeros(8, int))
    monkeypatch.setattr(poisoned, "MAX_UNPACKED", 100)  # read from the headers, before unpacking
    with pytest.raises(DataError, match=r"would unpack into 0.0 GiB of arrays, over the 0 GiB limit"):
        load_poisoned(path, (1, 4, 4), 3)


def test_the_oracle_learns_on_a_small_half(tmp_path):
    """A run checks the whole poisoned set (at least 4 images); each half may then be small."""
    from defenses.methods.oracle import check_oracle_trigger, oracle_scores

    model = build_planted()
    clean, test = clean_and_test()
    path, _ = stamped_npz(tmp_path, test.subset(torch.arange(12)), stamp, 0)
    p = load_poisoned(path, (1, 4, 4), 2).head(5)
    assert len(p) == 5 and p.true_labels.tolist() == [1] * 5
    check_oracle_trigger(p)
    learn, measure = p.halves()
    masks = oracle_scores(model, clean, learn, iterations=3)  # 3 images: fine
    assert masks["fc1"].shape == (12,)
    with pytest.raises(ValueError, match="at least 4 poisoned test images"):
        check_oracle_trigger(measure)
