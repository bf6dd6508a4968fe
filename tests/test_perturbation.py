"""ANP's premise as a curve: under neuron noise a backdoored model's errors pile onto its target."""
import pytest
import torch

from defenses.methods.perturbation import neuron_noise_curve, suspect_label
from planted import build_planted, clean_and_test


def test_without_noise_the_errors_are_the_models_own():
    model = build_planted()
    _, test = clean_and_test()
    point = neuron_noise_curve(model, test, [0.0], images=300, batch_size=100)[0]
    with torch.no_grad():
        pred = model(test.images(torch.arange(300))).argmax(1)
    wrong = pred != test.y[:300]
    assert point.error == pytest.approx(float(wrong.float().mean()))
    assert point.errors_to == torch.bincount(pred[wrong], minlength=2).tolist()
    assert point.even_share == 1.0


def test_noise_bounds_are_checked():
    model = build_planted()
    _, test = clean_and_test()
    with pytest.raises(ValueError, match=r"Noise bounds must lie in \[0, 1\]"):
        neuron_noise_curve(model, test, [0.4, 1.5])


def test_the_callers_model_is_untouched_and_stays_in_eval_mode():
    model = build_planted()
    _, test = clean_and_test()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    neuron_noise_curve(model, test, [0.4], images=200)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_backdoored_errors_go_to_the_target_and_the_clean_controls_do_not(mnist5k):
    from sample_models import load_sample

    eps = [0.2, 0.4, 0.6]
    bad = neuron_noise_curve(load_sample("cnn_badnets").model, mnist5k.test, eps)
    clean = neuron_noise_curve(load_sample("cnn_clean").model, mnist5k.test, eps)
    for b, c in zip(bad, clean):
        assert b.error > 0 and c.error > 0
        # measured: 38-53% of the backdoored model's errors go to label 0, against an even 11%
        assert b.top_label == 0 and b.top_share >= 2.5 * b.even_share, b
        assert c.errors_to[0] / sum(c.errors_to) < 0.25, c
    assert suspect_label(bad) == 0 and suspect_label(clean) is None


def _point(eps, errors_to):
    from defenses.methods.perturbation import NoisePoint

    total = sum(errors_to)
    top = max(range(len(errors_to)), key=errors_to.__getitem__)
    return NoisePoint(eps, total / 100, errors_to, top, errors_to[top] / total, 1 / (len(errors_to) - 1))


def test_a_suspect_label_must_top_every_noisy_point_by_a_wide_margin():
    from defenses.methods.perturbation import suspect_label

    piled = [_point(0.0, [0, 5, 0, 0, 0]), _point(0.2, [8, 1, 1, 1, 1]), _point(0.4, [9, 2, 1, 1, 1])]
    assert suspect_label(piled) == 0  # eps 0 is the model's own errors and does not count
    spread = [_point(0.2, [3, 2, 2, 2, 1]), _point(0.4, [4, 3, 3, 3, 3])]
    assert suspect_label(spread) is None
    wandering = [_point(0.2, [8, 1, 1, 0, 0]), _point(0.4, [1, 8, 1, 0, 0])]
    assert suspect_label(wandering) is None
    assert suspect_label([_point(0.0, [0, 1])]) is None
