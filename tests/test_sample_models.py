"""The catalog's numbers are re-measured from the committed weights."""
import pytest

from defenses.evaluation import evaluate
from sample_models import catalog, load_sample, training_summary


def test_catalog_covers_the_required_samples():
    cat = catalog()
    attacks = {(e["architecture"], e["attack"]) for e in cat.values()}
    assert {("cnn", "badnets"), ("cnn", "blend"), ("cnn", "none"), ("mlp_head", "badnets")} <= attacks
    assert any(a.endswith("resnet18") for a, _ in attacks)
    for e in cat.values():
        assert {"architecture", "dataset", "trigger", "target", "poison_rate", "seed", "acc", "asr"} <= set(e)


@pytest.mark.parametrize("name", list(catalog()))
def test_catalog_numbers_are_reproduced(name, mnist5k):
    s = load_sample(name)
    m = evaluate(s.model, mnist5k.test, s.trigger)
    assert m["acc"] == pytest.approx(s.entry["acc"], abs=0.002)
    assert m["asr"] == pytest.approx(s.entry["asr"], abs=0.002)
    assert m["acc"] >= 0.95
    if s.backdoored:
        assert m["asr"] >= 0.95
    else:  # the clean control: ASR near the base rate of the target class
        assert m["asr"] <= 0.05


def test_unknown_sample_names_the_choices():
    with pytest.raises(KeyError, match="choose one of cnn_badnets"):
        load_sample("nope")


def test_training_summary_names_each_recipe():
    assert training_summary(catalog()["cnn_badnets"]) == "Adam, 12 epochs"
    assert training_summary(catalog()["cnn_badnets_sgd"]) == "SGD with weight decay 0.0005, 100 epochs"
    assert training_summary({}) == "Adam"  # a catalog entry from before the field was recorded
