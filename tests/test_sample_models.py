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


def changed_victims(split, trigger, least: float = 0.1):
    """The test images (true label not the target) on which the trigger moves the pixels it writes
    by at least ``least`` of the way to its pattern, on average: a white patch over a white stroke changes nothing, and
    no backdoor can fire on an image its trigger leaves as it was (3.1% of the victims for the
    centred 4x4 patch, none for the corner patch)."""
    from defenses.evaluation import asr_split

    victims = asr_split(split, trigger.target)
    x = victims.images()
    mask = trigger.mask.expand_as(x[0])
    written = mask > 0
    change = ((trigger.apply(x) - x).abs() / mask.clamp_min(1e-6))[:, written].mean(1)
    return victims.subset((change >= least).nonzero().flatten())


@pytest.mark.parametrize("name", list(catalog()))
def test_catalog_numbers_are_reproduced(name, mnist5k):
    s = load_sample(name)
    m = evaluate(s.model, mnist5k.test, s.trigger)
    assert m["acc"] == pytest.approx(s.entry["acc"], abs=0.002)
    assert m["asr"] == pytest.approx(s.entry["asr"], abs=0.002)
    assert m["acc"] >= 0.95
    if s.backdoored:  # a strong backdoor: it fires on 95% of the images its trigger changes
        from defenses.evaluation import attack_success_rate

        assert attack_success_rate(s.model, changed_victims(mnist5k.test, s.trigger), s.trigger) >= 0.95
    else:  # the clean control: ASR near the base rate of the target class
        assert m["asr"] <= 0.05


def test_unknown_sample_names_the_choices():
    with pytest.raises(KeyError, match="choose one of cnn_badnets"):
        load_sample("nope")


def test_training_summary_names_each_recipe():
    assert training_summary(catalog()["cnn_badnets"]) == "Adam, 12 epochs"
    assert training_summary(catalog()["cnn_badnets_sgd"]) == "SGD with weight decay 0.0005, 100 epochs"
    assert training_summary({}) == "Adam"  # a catalog entry from before the field was recorded
    assert training_summary(catalog()["mlp_head_subnet"]) == (
        "Adam, 20 epochs on clean data, then a subnet of 8 neurons per layer on poisoned data (Adam 0.01, 30 epochs)")
    assert training_summary(catalog()["cnn_blend_subnet"]) == (
        "Adam, 12 epochs on clean data, then a subnet of 4 neurons per layer taken over, the rest retrained for 5 "
        "epochs, and the subnet trained on poisoned data (Adam 0.01, 10 epochs)")


def test_the_efficacy_table_names_each_defense_and_its_settings_as_a_person_reads_them():
    from sample_models import efficacy_rows

    rows = efficacy_rows(catalog()["cnn_blend_subnet"])
    rnp = [r for r in rows if r["Defense"] == "RNP"]
    assert {r["Settings"] for r in rnp} == {"unlearning learning rate 0.001"}  # not the config key unlearn_lr=0.001
    assert [r["Removed"] for r in rnp if r["Cut"] == "the defense's threshold"] == ["yes"]
    assert {r["Settings"] for r in rows if r["Defense"] == "CLP"} == {"the paper's"}
